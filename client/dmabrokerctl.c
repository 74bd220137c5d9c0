/* dmabrokerctl — the operator's view of dmabrokerd.
 *
 *   dmabrokerctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND
 *
 *   status                    server version, backend, features, uptime, totals (admin)
 *   list contexts [--all]     contexts; --all (every client's) is the default for admins;
 *                             ISOLATION says NONE(no-IOMMU) for no-IOMMU contexts
 *   list mappings CONTEXT     the mappings of one context (admins: any client's),
 *                             P2P (peer BAR) mappings marked as such
 *   list devices [--all]      open devices: command register, reset, revocation
 *                             counters and the P2P mappings importing their BARs
 *   list clients              connected sessions with identity and usage (admin)
 *   revoke CONTEXT            kill any client's context; its owner is told (admin)
 *   reload                    re-read the broker's configuration, as SIGHUP (admin)
 *   iova-ranges CONTEXT       usable IOVA ranges, alignment and the backend's mapping limit
 *   phys-ranges CONTEXT       a no-IOMMU context: the physical ranges behind its RAM
 *                             mappings (admins: any client's context)
 *   handoff status            where a host handoff (kernel update by kexec) stands (admin)
 *   handoff prepare [--force] preserve every context for the next kernel; --force leaves
 *                             out the contexts that cannot be preserved (admin)
 *   handoff abort             undo prepare (admin)
 *   policy check FILE [--uid N --gid N]
 *                             validates a configuration file and its FILE.d/ drop-ins
 *                             with the daemon's own parser, without a daemon
 *
 * Humans get aligned tables with sizes in binary units; --json prints exactly
 * one JSON document on stdout with raw integers (bytes, milliseconds), and
 * nothing on stdout when the command fails.
 *
 * The socket is --socket, else $DMABROKER_SOCKET, else DMB_DEFAULT_SOCKET_PATH.
 *
 * Exit codes (a stable contract for scripts; repeated in --help):
 *   0  success
 *   1  the broker refused the request; stderr has
 *      "dmabrokerctl: <code-name>: <message>" (code names as in dmb_error_code_name);
 *      policy check: the file is invalid, stderr has "file:line: reason"
 *   2  usage error
 *   3  cannot connect to the broker, the connection failed or timed out, or the
 *      output could not be written
 *
 * The CLI's session is a client like any other: the contexts it lists belong
 * to other sessions, and they live only as long as those sessions do.
 */
#include <errno.h>
#include <getopt.h>
#include <sys/stat.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl-output.h"
#include "ctl-policy.h"
#include "dmabroker-internal.h"
#include "protocol.h"

#define DEFAULT_TIMEOUT_S 30u

struct ctl {
	const char *socket;
	bool json;
	bool all;
	bool force;              /* handoff prepare --force */
	unsigned timeout_s;
	bool have_uid, have_gid; /* policy check --uid/--gid */
	struct ctl_ident ident;
	uint64_t context;        /* the CONTEXT operand, if the command takes one */
	const char *file;        /* the FILE operand of policy check */
	struct dmb_client *c;
};

/* ------------------------------------------------------------ helpers */

static const char *prot_name(uint32_t prot)
{
	static const char *const names[] = { "--", "r-", "-w", "rw" };
	return names[prot & (DMB_READ | DMB_WRITE)];
}

/* ------------------------------------------------------------ errors */

/* Turns a failed library call into the exit code, saying why on stderr. */
static int call_failed(const struct ctl *ctl, int r, const char *what)
{
	const struct dmb_error *e = dmb_last_error(ctl->c);

	if (e->code != DMB_OK) {
		fprintf(stderr, PROG ": %s: %s\n", dmb_error_code_name(e->code),
			e->message[0] ? e->message : strerror(-r));
		return EXIT_REFUSED;
	}
	if (e->message[0] && e->sys_errno == -r)
		fprintf(stderr, PROG ": %s: %s\n", what, e->message);
	else
		fprintf(stderr, PROG ": %s: %s\n", what, strerror(-r));
	return EXIT_TRANSPORT;
}

/* ------------------------------------------------------------ connection */

static const char *socket_path(const struct ctl *ctl)
{
	const char *env = getenv("DMABROKER_SOCKET");

	if (ctl->socket)
		return ctl->socket;
	if (env && env[0])
		return env;
	return DMB_DEFAULT_SOCKET_PATH;
}

/* Connects in two steps (the internal API) so that the timeout covers the
 * handshake and a refused handshake is reported with the broker's words. */
static int ctl_connect(struct ctl *ctl)
{
	const char *path = socket_path(ctl);
	int r = dmb_connect_raw(path, &ctl->c);

	if (r < 0) {
		struct stat st;
		/* connect(2) says ECONNREFUSED for a path that is no socket at all. */
		if (stat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
			fprintf(stderr, PROG ": cannot connect to %s: it is a %s, not a socket "
					"(the broker's socket is %s unless configured otherwise)\n",
				path, S_ISDIR(st.st_mode) ? "directory" : "file",
				DMB_DEFAULT_SOCKET_PATH);
		else
			fprintf(stderr, PROG ": cannot connect to %s: %s%s\n", path, strerror(-r),
				r == -ENOENT || r == -ECONNREFUSED ? " (is dmabrokerd running?)" : "");
		return EXIT_TRANSPORT;
	}
	/* A broker that accepts but never answers must not hang a script: every
	 * call, the handshake included, gives up after the timeout (-ETIMEDOUT,
	 * exit 3). */
	if (ctl->timeout_s && (r = dmb_set_timeout(ctl->c, (int)ctl->timeout_s * 1000)) < 0)
		return call_failed(ctl, r, "setting the timeout");
	r = dmb_hello(ctl->c, DMB_PROTOCOL_VERSION, PROG);
	if (r < 0)
		return call_failed(ctl, r, "handshake");
	return EXIT_OK;
}

static int parse_context(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	if (!s[0] || s[0] == '-' || s[0] == '+')
		return -EINVAL;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

/* ------------------------------------------------------------ status */

static void status_json(const struct ctl *ctl, const struct dmb_status *st)
{
	struct json j = { .f = stdout };
	const struct dmb_stats *t = &st->totals;

	json_open(&j, NULL, '{');
	json_str(&j, "server_version", st->server_version);
	json_u64(&j, "protocol_version", dmb_server_info(ctl->c)->protocol_version);
	json_u64(&j, "pid", st->pid);
	json_str(&j, "backend", st->backend);
	json_words(&j, "features", st->features);
	json_u64(&j, "uptime_ms", st->uptime_ms);
	json_u64(&j, "sessions", st->sessions);
	json_open(&j, "totals", '{');
	json_u64(&j, "contexts", t->contexts);
	json_u64(&j, "noiommu_contexts", t->noiommu_contexts);
	json_u64(&j, "regions", t->regions);
	json_u64(&j, "mappings", t->mappings);
	json_u64(&j, "mapped_bytes", t->mapped_bytes);
	json_u64(&j, "pinned_bytes", t->pinned_bytes);
	json_u64(&j, "devices", t->devices);
	/* Not p2p_bytes: the broker's Status does not fill it (Stats does). */
	json_u64(&j, "p2p_mappings", t->p2p_mappings);
	json_u64(&j, "revocations", t->revocations);
	json_u64(&j, "restorations", t->restorations);
	json_close(&j, '}');
	json_close(&j, '}');
}

static void status_human(const struct ctl *ctl, const struct dmb_status *st)
{
	const struct dmb_stats *t = &st->totals;
	char b1[32], b2[32], up[48];

	printf("Server:    dmabrokerd %s (pid %" PRIu32 ", protocol %" PRIu32 ")\n",
	       st->server_version, st->pid, dmb_server_info(ctl->c)->protocol_version);
	printf("Backend:   %s%s\n", st->backend,
	       strcmp(st->backend, "sim") == 0 ? " (simulated IOMMU: no device is protected)" : "");
	printf("Features:  %s\n", st->features[0] ? st->features : "(none)");
	printf("Uptime:    %s\n", fmt_uptime(st->uptime_ms, up, sizeof(up)));
	printf("Sessions:  %" PRIu32 "\n", st->sessions);
	if (t->noiommu_contexts)
		printf("Contexts:  %" PRIu32 " (%" PRIu32 " no-IOMMU: NO isolation)\n", t->contexts,
		       t->noiommu_contexts);
	else
		printf("Contexts:  %" PRIu32 "\n", t->contexts);
	printf("Regions:   %" PRIu32 "\n", t->regions);
	printf("Mappings:  %" PRIu64 "\n", t->mappings);
	printf("Mapped:    %s (%" PRIu64 " bytes)\n", fmt_bytes(t->mapped_bytes, b1, sizeof(b1)),
	       t->mapped_bytes);
	printf("Pinned:    %s (%" PRIu64 " bytes)\n", fmt_bytes(t->pinned_bytes, b2, sizeof(b2)),
	       t->pinned_bytes);
	printf("Devices:   %" PRIu32 "\n", t->devices);
	printf("P2P:       %" PRIu64 " mapping%s (peer BARs; also counted in Mappings)\n",
	       t->p2p_mappings, t->p2p_mappings == 1 ? "" : "s");
	printf("Revoked:   %" PRIu64 " revocation%s, %" PRIu64 " restoration%s (since start)\n",
	       t->revocations, t->revocations == 1 ? "" : "s", t->restorations,
	       t->restorations == 1 ? "" : "s");
}

static int cmd_status(struct ctl *ctl)
{
	struct dmb_status st;
	int r = dmb_status(ctl->c, &st);

	if (r < 0) {
		int rc = call_failed(ctl, r, "status");
		if (r == -EPERM)
			fprintf(stderr, PROG ": hint: status needs a uid listed in [admin] uids= "
					"of the broker's configuration\n");
		return rc;
	}
	if (ctl->json)
		status_json(ctl, &st);
	else
		status_human(ctl, &st);
	return finish_output();
}

/* ------------------------------------------------------------ list contexts */

static void context_row(const void *rows, size_t i, char cells[][CELL_MAX])
{
	const struct dmb_context_info *x = (const struct dmb_context_info *)rows + i;

	snprintf(cells[0], CELL_MAX, "%" PRIu64, x->context);
	text_sanitize(cells[1], CELL_MAX, x->name[0] ? x->name : "-");
	snprintf(cells[2], CELL_MAX, "%" PRIu32, x->owner_uid);
	snprintf(cells[3], CELL_MAX, "%" PRIu32, x->owner_pid);
	snprintf(cells[4], CELL_MAX, "%" PRIu64, x->session);
	snprintf(cells[5], CELL_MAX, "%" PRIu32, x->regions);
	snprintf(cells[6], CELL_MAX, "%" PRIu64, x->mappings);
	fmt_bytes(x->mapped_bytes, cells[7], CELL_MAX);
	snprintf(cells[8], CELL_MAX, "%" PRIu32, x->devices);
	snprintf(cells[9], CELL_MAX, "%s", x->noiommu ? "NONE(no-IOMMU)" : "iommu");
}

static void contexts_json(const struct dmb_context_info *v, size_t n, bool all)
{
	struct json j = { .f = stdout };

	json_open(&j, NULL, '{');
	json_bool(&j, "all", all);
	json_open(&j, "contexts", '[');
	for (size_t i = 0; i < n; i++) {
		json_open(&j, NULL, '{');
		json_u64(&j, "id", v[i].context);
		json_str(&j, "name", v[i].name);
		json_u64(&j, "owner_uid", v[i].owner_uid);
		json_u64(&j, "owner_pid", v[i].owner_pid);
		json_u64(&j, "session", v[i].session);
		json_bool(&j, "persistent", v[i].persistent);
		json_u64(&j, "regions", v[i].regions);
		json_u64(&j, "mappings", v[i].mappings);
		json_u64(&j, "mapped_bytes", v[i].mapped_bytes);
		json_u64(&j, "devices", v[i].devices);
		json_bool(&j, "noiommu", v[i].noiommu);
		json_close(&j, '}');
	}
	json_close(&j, ']');
	json_close(&j, '}');
}

static int cmd_list_contexts(struct ctl *ctl)
{
	static const struct column cols[] = {
		{ "ID", true }, { "NAME", false }, { "UID", true },
		{ "PID", true }, { "SESSION", true }, { "REGIONS", true },
		{ "MAPPINGS", true }, { "MAPPED", true }, { "DEVICES", true },
		{ "ISOLATION", true },
	};
	bool admin = dmb_server_info(ctl->c)->admin;
	bool all = ctl->all || admin;
	struct dmb_context_info *v = NULL;
	size_t n = 0;
	int r = dmb_list_contexts(ctl->c, all, &v, &n);

	if (r < 0)
		return call_failed(ctl, r, "list contexts");
	if (!all)
		fprintf(stderr, PROG ": note: not an admin session: only this session's own "
				"contexts are listed\n");
	if (ctl->json) {
		contexts_json(v, n, all);
	} else {
		table_print(cols, sizeof(cols) / sizeof(cols[0]), v, n, context_row, NULL, NULL);
		printf("\n%zu context%s\n", n, n == 1 ? "" : "s");
		size_t bare = 0;
		for (size_t i = 0; i < n; i++)
			bare += v[i].noiommu;
		if (bare)
			printf("%zu no-IOMMU context%s: %s devices reach all of memory (no "
			       "isolation)\n",
			       bare, bare == 1 ? "" : "s", bare == 1 ? "its" : "their");
	}
	free(v);
	return finish_output();
}

/* ------------------------------------------------------------ list mappings */

struct mapping_list {
	struct dmb_mapping_info *v;
	size_t n, cap;
};

/* Room for `more` elements of `size` bytes after the n in the array *vp
 * (capacity *cap), doubling from 256. */
static int vec_reserve(void *vp, size_t *cap, size_t n, size_t more, size_t size)
{
	void **v = vp;
	if (*cap - n >= more)
		return 0;
	size_t c = *cap ? *cap : 256;
	while (c - n < more) {
		if (c > SIZE_MAX / 2 / size)
			return -ENOMEM;
		c *= 2;
	}
	void *p = realloc(*v, c * size);
	if (!p)
		return -ENOMEM;
	*v = p;
	*cap = c;
	return 0;
}

static int mapping_list_reserve(struct mapping_list *l, size_t more)
{
	return vec_reserve(&l->v, &l->cap, l->n, more, sizeof(*l->v));
}

/* Pages through ListMappings until the broker says there is no more. The
 * whole list is collected first so that a failure on a later page prints
 * nothing on stdout, and the table can size its columns. */
static int fetch_mappings(struct ctl *ctl, uint64_t context, struct mapping_list *l)
{
	uint64_t start = 0;

	for (;;) {
		size_t got = 0;
		bool more = false;
		uint64_t next = 0;
		if (mapping_list_reserve(l, DMB_MAX_LIST) < 0) {
			fprintf(stderr, PROG ": list mappings: out of memory after %zu mappings\n", l->n);
			return EXIT_TRANSPORT;
		}
		int r = dmb_list_mappings(ctl->c, context, start, l->v + l->n, DMB_MAX_LIST, &got,
					  &more, &next);
		if (r < 0)
			return call_failed(ctl, r, "list mappings");
		l->n += got;
		if (!more)
			return EXIT_OK;
		/* The broker must make progress; a page that does not would loop forever. */
		if (got == 0 || next <= l->v[l->n - 1].iova) {
			fprintf(stderr, PROG ": list mappings: the broker's paging did not advance "
					"(next 0x%" PRIx64 ")\n", next);
			return EXIT_TRANSPORT;
		}
		start = next;
	}
}

/* The IOMMU attributes of a mapping, as 'list mappings' and 'list devices'
 * print them. */
static const char *attr_name(uint32_t attr)
{
	return attr == DMB_ATTR_MMIO ? "mmio" : attr == DMB_ATTR_CACHEABLE ? "cacheable" : "-";
}

/* Which optional columns the table has (mappings_human). */
static bool mapping_cols_granular, mapping_cols_p2p;

/* A P2P mapping's REGION cell names the peer's BAR ("bar0@dev7": BAR 0 of the
 * broker's device 7, as in 'list devices'); OFFSET is then into the BAR. */
static void mapping_row(const void *rows, size_t i, char cells[][CELL_MAX])
{
	const struct dmb_mapping_info *m = (const struct dmb_mapping_info *)rows + i;

	snprintf(cells[0], CELL_MAX, "0x%016" PRIx64 "-0x%016" PRIx64, m->iova,
		 m->iova + m->length - 1);
	fmt_bytes(m->length, cells[1], CELL_MAX);
	if (m->mmio)
		snprintf(cells[2], CELL_MAX, "bar%" PRIu32 "@dev%" PRIu64, m->bar, m->peer_device);
	else
		snprintf(cells[2], CELL_MAX, "%" PRIu64, m->region);
	snprintf(cells[3], CELL_MAX, "0x%" PRIx64, m->offset);
	snprintf(cells[4], CELL_MAX, "%s", prot_name(m->prot));
	if (m->page_size)
		fmt_bytes(m->page_size, cells[5], CELL_MAX);
	else
		snprintf(cells[5], CELL_MAX, "-");
	size_t k = 6;
	if (mapping_cols_granular) {
		if (m->granule) {
			fmt_bytes(m->granule, cells[k++], CELL_MAX);
			snprintf(cells[k++], CELL_MAX, "%" PRIu64 "/%" PRIu64, m->discarded,
				 m->length / m->granule);
		} else {
			snprintf(cells[k++], CELL_MAX, "-");
			snprintf(cells[k++], CELL_MAX, "-");
		}
	}
	if (mapping_cols_p2p) {
		if (m->mmio)
			snprintf(cells[k++], CELL_MAX, "%s %s", m->revoked ? "revoked" : "live",
				 attr_name(m->attr));
		else
			snprintf(cells[k++], CELL_MAX, "-");
	}
}

static void mappings_json(uint64_t context, const struct mapping_list *l)
{
	struct json j = { .f = stdout };

	json_open(&j, NULL, '{');
	json_u64(&j, "context", context);
	json_open(&j, "mappings", '[');
	for (size_t i = 0; i < l->n; i++) {
		const struct dmb_mapping_info *m = &l->v[i];
		json_open(&j, NULL, '{');
		json_u64(&j, "iova", m->iova);
		json_u64(&j, "last", m->iova + m->length - 1);
		json_u64(&j, "length", m->length);
		json_u64(&j, "region", m->region); /* 0 for P2P */
		json_u64(&j, "offset", m->offset); /* into the region, or the BAR */
		json_str(&j, "prot", prot_name(m->prot));
		json_bool(&j, "mmio", m->mmio);
		json_u64(&j, "peer_device", m->peer_device); /* P2P only, else 0 */
		json_u64(&j, "bar", m->bar);                 /* P2P only, else 0 */
		json_bool(&j, "revoked", m->revoked);
		json_str(&j, "attr", attr_name(m->attr)); /* mmio, cacheable */
		json_u64(&j, "page_size", m->page_size);   /* largest IOMMU page it allows */
		json_u64(&j, "granule", m->granule);       /* 0: not a granular mapping */
		json_u64(&j, "discarded", m->discarded);   /* granules discarded now */
		json_close(&j, '}');
	}
	json_close(&j, ']');
	json_close(&j, '}');
}

/* PAGE is the largest IOMMU page size the mapping allows. The GRANULE and
 * DISCARDED columns appear only when the context has granular mappings, the
 * P2P column only when it has P2P mappings, so a plain VMM's table stays
 * short. */
static void mappings_human(const struct mapping_list *l)
{
	struct column cols[9] = {
		{ "IOVA", false }, { "LENGTH", true }, { "REGION", true },
		{ "OFFSET", true }, { "PROT", false }, { "PAGE", true },
	};
	uint64_t total = 0, discarded = 0;
	size_t p2p = 0, revoked = 0, granular = 0, n = 6;
	char b[32], d[32];

	for (size_t i = 0; i < l->n; i++) {
		total += l->v[i].length;
		p2p += l->v[i].mmio;
		revoked += l->v[i].mmio && l->v[i].revoked;
		granular += l->v[i].granule != 0;
		discarded += l->v[i].discarded * l->v[i].granule;
	}
	mapping_cols_granular = granular != 0;
	mapping_cols_p2p = p2p != 0;
	if (granular) {
		cols[n++] = (struct column){ "GRANULE", true };
		cols[n++] = (struct column){ "DISCARDED", true };
	}
	if (p2p)
		cols[n++] = (struct column){ "P2P", false };
	table_print(cols, n, l->v, l->n, mapping_row, NULL, NULL);
	printf("\n%zu mapping%s, %s", l->n, l->n == 1 ? "" : "s", fmt_bytes(total, b, sizeof(b)));
	if (p2p)
		printf(" (%zu P2P, %zu revoked)", p2p, revoked);
	if (granular)
		printf(" (%zu granular, %s discarded)", granular, fmt_bytes(discarded, d, sizeof(d)));
	putchar('\n');
}

static int cmd_list_mappings(struct ctl *ctl)
{
	struct mapping_list l = { 0 };
	int rc = fetch_mappings(ctl, ctl->context, &l);

	if (rc == EXIT_OK) {
		if (ctl->json)
			mappings_json(ctl->context, &l);
		else
			mappings_human(&l);
		rc = finish_output();
	}
	free(l.v);
	return rc;
}

/* ------------------------------------------------------------ phys-ranges */

struct phys_list {
	struct dmb_phys_range *v;
	size_t n, cap;
};

static int phys_list_reserve(struct phys_list *l, size_t more)
{
	return vec_reserve(&l->v, &l->cap, l->n, more, sizeof(*l->v));
}

static void phys_row(const void *rows, size_t i, char cells[][CELL_MAX])
{
	const struct dmb_phys_range *x = (const struct dmb_phys_range *)rows + i;
	snprintf(cells[0], CELL_MAX, "0x%016" PRIx64, x->iova);
	snprintf(cells[1], CELL_MAX, "0x%016" PRIx64, x->phys);
	fmt_bytes(x->length, cells[2], CELL_MAX);
}

/* The physical ranges behind every RAM mapping of a no-IOMMU context, all
 * collected before anything is printed. */
static int cmd_phys_ranges(struct ctl *ctl)
{
	static const struct column cols[] = {
		{ "IOVA", false }, { "PHYS", false }, { "LENGTH", true },
	};
	struct mapping_list m = { 0 };
	struct phys_list l = { 0 };
	int rc = fetch_mappings(ctl, ctl->context, &m);

	for (size_t i = 0; rc == EXIT_OK && i < m.n; i++) {
		if (m.v[i].mmio)
			continue;
		uint64_t iova = m.v[i].iova, end = m.v[i].iova + m.v[i].length;
		while (rc == EXIT_OK && iova < end) {
			size_t got = 0;
			bool more = false;
			uint64_t next = 0;
			if (phys_list_reserve(&l, DMB_MAX_LIST) < 0) {
				fprintf(stderr, PROG ": phys-ranges: out of memory\n");
				rc = EXIT_TRANSPORT;
				break;
			}
			int r = dmb_phys_ranges(ctl->c, ctl->context, iova, end - iova, l.v + l.n,
						DMB_MAX_LIST, &got, &more, &next);
			if (r < 0) {
				rc = call_failed(ctl, r, "phys-ranges");
				break;
			}
			l.n += got;
			if (!more)
				break;
			if (got == 0 || next <= iova || next >= end) {
				fprintf(stderr, PROG ": phys-ranges: the broker's paging did not "
						"advance (next 0x%" PRIx64 ")\n", next);
				rc = EXIT_TRANSPORT;
				break;
			}
			iova = next;
		}
	}
	if (rc == EXIT_OK && ctl->json) {
		struct json j = { .f = stdout };
		json_open(&j, NULL, '{');
		json_u64(&j, "context", ctl->context);
		json_open(&j, "ranges", '[');
		for (size_t i = 0; i < l.n; i++) {
			json_open(&j, NULL, '{');
			json_u64(&j, "iova", l.v[i].iova);
			json_u64(&j, "phys", l.v[i].phys);
			json_u64(&j, "length", l.v[i].length);
			json_close(&j, '}');
		}
		json_close(&j, ']');
		json_close(&j, '}');
	} else if (rc == EXIT_OK) {
		table_print(cols, sizeof(cols) / sizeof(cols[0]), l.v, l.n, phys_row, NULL, NULL);
		printf("\n%zu physically contiguous range%s (no-IOMMU context: its devices use "
		       "these addresses, no isolation)\n",
		       l.n, l.n == 1 ? "" : "s");
	}
	if (rc == EXIT_OK)
		rc = finish_output();
	free(m.v);
	free(l.v);
	return rc;
}

/* ------------------------------------------------------------ list devices */

/* "0x0006 mem+ bm+": the command register and its two mediated bits. */
static void command_cell(const struct dmb_device_state *st, char *buf, size_t cap)
{
	snprintf(buf, cap, "0x%04x mem%c bm%c", st->command, st->memory ? '+' : '-',
		 st->bus_master ? '+' : '-');
}

static void device_row(const void *rows, size_t i, char cells[][CELL_MAX])
{
	const struct dmb_device_listing *d = (const struct dmb_device_listing *)rows + i;

	snprintf(cells[0], CELL_MAX, "%" PRIu64, d->device);
	text_sanitize(cells[1], CELL_MAX, d->bdf);
	snprintf(cells[2], CELL_MAX, "%04x:%04x", d->vendor_id, d->device_id);
	text_sanitize(cells[3], CELL_MAX, d->group[0] ? d->group : "-");
	snprintf(cells[4], CELL_MAX, "%" PRIu64, d->context);
	snprintf(cells[5], CELL_MAX, "%" PRIu32, d->owner_uid);
	command_cell(&d->state, cells[6], CELL_MAX);
	snprintf(cells[7], CELL_MAX, "%s", d->in_reset ? "in-reset" : "-");
	snprintf(cells[8], CELL_MAX, "%" PRIu64, d->state.revocations);
	snprintf(cells[9], CELL_MAX, "%" PRIu64, d->state.restorations);
}

/* Importers are printed as indented rows under their device, aligned with
 * each other across the whole listing:
 *     importer  context 3  uid 1000  0x...-0x...  64.0 KiB  bar0+0x10000  live */
#define IMP_COLS 6

static const struct column importer_cols[IMP_COLS] = {
	{ "", false }, { "", false }, { "", false }, { "", true }, { "", false }, { "", false },
};

static void importer_cells(const struct dmb_importer *m, char cells[][CELL_MAX])
{
	snprintf(cells[0], CELL_MAX, "context %" PRIu64, m->context);
	snprintf(cells[1], CELL_MAX, "uid %" PRIu32, m->owner_uid);
	snprintf(cells[2], CELL_MAX, "0x%016" PRIx64 "-0x%016" PRIx64, m->iova,
		 m->iova + m->length - 1);
	fmt_bytes(m->length, cells[3], CELL_MAX);
	snprintf(cells[4], CELL_MAX, "bar%" PRIu32 "+0x%" PRIx64, m->bar, m->offset);
	snprintf(cells[5], CELL_MAX, "%s %s", m->revoked ? "revoked" : "live", attr_name(m->attr));
}

static void device_importers(const void *rows, size_t i, void *opaque)
{
	const struct dmb_device_listing *d = (const struct dmb_device_listing *)rows + i;
	const size_t *width = opaque;
	char cells[IMP_COLS][CELL_MAX];

	for (size_t k = 0; k < d->n_importers; k++) {
		importer_cells(&d->importers[k], cells);
		fputs("    importer  ", stdout);
		table_line(importer_cols, IMP_COLS, width, cells);
	}
}

static void devices_human(const struct dmb_device_listing *v, size_t n)
{
	static const struct column cols[] = {
		{ "ID", true }, { "BDF", false }, { "PCI-ID", false }, { "GROUP", false },
		{ "CONTEXT", true }, { "UID", true }, { "COMMAND", false }, { "RESET", false },
		{ "REVOCATIONS", true }, { "RESTORATIONS", true },
	};
	size_t width[IMP_COLS] = { 0 }, nimp = 0, revoked = 0;
	char cells[IMP_COLS][CELL_MAX];

	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < v[i].n_importers; k++) {
			importer_cells(&v[i].importers[k], cells);
			table_widen(IMP_COLS, width, cells);
			nimp++;
			revoked += v[i].importers[k].revoked;
		}
	table_print(cols, sizeof(cols) / sizeof(cols[0]), v, n, device_row, device_importers, width);
	printf("\n%zu device%s, %zu P2P importer%s (%zu revoked)\n", n, n == 1 ? "" : "s", nimp,
	       nimp == 1 ? "" : "s", revoked);
}

static void devices_json(const struct dmb_device_listing *v, size_t n, bool all)
{
	struct json j = { .f = stdout };

	json_open(&j, NULL, '{');
	json_bool(&j, "all", all);
	json_open(&j, "devices", '[');
	for (size_t i = 0; i < n; i++) {
		const struct dmb_device_listing *d = &v[i];
		json_open(&j, NULL, '{');
		json_u64(&j, "id", d->device);
		json_str(&j, "bdf", d->bdf);
		json_u64(&j, "vendor_id", d->vendor_id);
		json_u64(&j, "pci_device_id", d->device_id);
		json_str(&j, "group", d->group);
		json_u64(&j, "context", d->context);
		json_u64(&j, "owner_uid", d->owner_uid);
		json_u64(&j, "command", d->state.command);
		json_bool(&j, "memory", d->state.memory);
		json_bool(&j, "bus_master", d->state.bus_master);
		json_bool(&j, "in_reset", d->in_reset);
		json_u64(&j, "revocations", d->state.revocations);
		json_u64(&j, "restorations", d->state.restorations);
		json_open(&j, "importers", '[');
		for (size_t k = 0; k < d->n_importers; k++) {
			const struct dmb_importer *m = &d->importers[k];
			json_open(&j, NULL, '{');
			json_u64(&j, "context", m->context);
			json_u64(&j, "owner_uid", m->owner_uid);
			json_u64(&j, "iova", m->iova);
			json_u64(&j, "last", m->iova + m->length - 1);
			json_u64(&j, "length", m->length);
			json_u64(&j, "bar", m->bar);
			json_u64(&j, "offset", m->offset);
			json_bool(&j, "revoked", m->revoked);
			json_str(&j, "attr", attr_name(m->attr));
			json_close(&j, '}');
		}
		json_close(&j, ']');
		json_close(&j, '}');
	}
	json_close(&j, ']');
	json_close(&j, '}');
}

static int cmd_list_devices(struct ctl *ctl)
{
	bool all = ctl->all || dmb_server_info(ctl->c)->admin;
	struct dmb_device_listing *v = NULL;
	size_t n = 0;
	int r = dmb_list_devices(ctl->c, all, &v, &n);

	if (r < 0)
		return call_failed(ctl, r, "list devices");
	if (!all)
		fprintf(stderr, PROG ": note: not an admin session: only this session's own "
				"devices are listed (none: the CLI opens no devices)\n");
	if (ctl->json)
		devices_json(v, n, all);
	else
		devices_human(v, n);
	free(v);
	return finish_output();
}

/* ------------------------------------------------------------ iova-ranges */

static void iova_json(uint64_t context, const struct dmb_iova_info *info)
{
	struct json j = { .f = stdout };

	json_open(&j, NULL, '{');
	json_u64(&j, "context", context);
	json_open(&j, "ranges", '[');
	for (size_t i = 0; i < info->n; i++) {
		json_open(&j, NULL, '{');
		json_u64(&j, "start", info->ranges[i].start);
		json_u64(&j, "last", info->ranges[i].last);
		json_close(&j, '}');
	}
	json_close(&j, ']');
	json_u64(&j, "alignment", info->alignment);
	json_u64(&j, "max_mappings", info->max_mappings); /* 0: no backend limit */
	json_u64(&j, "mappings_available", info->mappings_available);
	json_close(&j, '}');
}

static void iova_row(const void *rows, size_t i, char cells[][CELL_MAX])
{
	const struct dmb_iova_range *g = (const struct dmb_iova_range *)rows + i;
	snprintf(cells[0], CELL_MAX, "0x%016" PRIx64, g->start);
	snprintf(cells[1], CELL_MAX, "0x%016" PRIx64, g->last);
	if (g->start == 0 && g->last == UINT64_MAX) /* its size does not fit in 64 bits */
		snprintf(cells[2], CELL_MAX, "16.0 EiB");
	else
		fmt_bytes(g->last - g->start + 1, cells[2], CELL_MAX);
}

static void iova_human(const struct dmb_iova_info *info)
{
	static const struct column cols[] = {
		{ "START", false }, { "LAST", false }, { "SIZE", true },
	};
	char b[32];

	table_print(cols, sizeof(cols) / sizeof(cols[0]), info->ranges, info->n, iova_row, NULL,
		    NULL);
	printf("\nAlignment: %" PRIu64 " (%s)\n", info->alignment,
	       fmt_bytes(info->alignment, b, sizeof(b)));
	if (info->max_mappings)
		printf("Mappings:  %" PRIu32 " available of the backend's limit of %" PRIu32 "\n",
		       info->mappings_available, info->max_mappings);
}

static int cmd_iova_ranges(struct ctl *ctl)
{
	struct dmb_iova_info info;
	int r = dmb_iova_ranges(ctl->c, ctl->context, &info);
	if (r < 0) {
		int rc = call_failed(ctl, r, "iova-ranges");
		if (r == -ENOENT)
			fprintf(stderr, PROG ": note: the broker answers iova-ranges only for "
					"contexts of the asking session\n");
		return rc;
	}
	if (ctl->json)
		iova_json(ctl->context, &info);
	else
		iova_human(&info);
	return finish_output();
}

/* ------------------------------------------------------------ list clients */

static void client_row(const void *rows, size_t i, char cells[][CELL_MAX])
{
	const struct dmb_client_info *x = (const struct dmb_client_info *)rows + i;

	snprintf(cells[0], CELL_MAX, "%" PRIu64, x->session);
	text_sanitize(cells[1], CELL_MAX, x->name[0] ? x->name : "-");
	snprintf(cells[2], CELL_MAX, "%" PRIu32, x->uid);
	snprintf(cells[3], CELL_MAX, "%" PRIu32, x->gid);
	snprintf(cells[4], CELL_MAX, "%" PRIu32, x->pid);
	snprintf(cells[5], CELL_MAX, "%s", x->admin ? "yes" : "-");
	snprintf(cells[6], CELL_MAX, "%" PRIu32, x->contexts);
	snprintf(cells[7], CELL_MAX, "%" PRIu64, x->mappings);
	fmt_bytes(x->pinned_bytes, cells[8], CELL_MAX);
	snprintf(cells[9], CELL_MAX, "%" PRIu32, x->devices);
	snprintf(cells[10], CELL_MAX, "%" PRIu64, x->requests);
	fmt_uptime(x->connected_ms, cells[11], CELL_MAX);
}

static void clients_json(const struct dmb_client_info *v, size_t n)
{
	struct json j = { .f = stdout };

	json_open(&j, NULL, '{');
	json_open(&j, "clients", '[');
	for (size_t i = 0; i < n; i++) {
		json_open(&j, NULL, '{');
		json_u64(&j, "session", v[i].session);
		json_str(&j, "name", v[i].name);
		json_u64(&j, "uid", v[i].uid);
		json_u64(&j, "gid", v[i].gid);
		json_u64(&j, "pid", v[i].pid);
		json_bool(&j, "admin", v[i].admin);
		json_u64(&j, "contexts", v[i].contexts);
		json_u64(&j, "mappings", v[i].mappings);
		json_u64(&j, "pinned_bytes", v[i].pinned_bytes);
		json_u64(&j, "devices", v[i].devices);
		json_u64(&j, "requests", v[i].requests);
		json_u64(&j, "connected_ms", v[i].connected_ms);
		json_close(&j, '}');
	}
	json_close(&j, ']');
	json_close(&j, '}');
}

static int cmd_list_clients(struct ctl *ctl)
{
	static const struct column cols[] = {
		{ "SESSION", true }, { "NAME", false }, { "UID", true }, { "GID", true },
		{ "PID", true }, { "ADMIN", false }, { "CONTEXTS", true }, { "MAPPINGS", true },
		{ "PINNED", true }, { "DEVICES", true }, { "REQUESTS", true }, { "CONNECTED", true },
	};
	struct dmb_client_info *v = NULL;
	size_t n = 0;
	int r = dmb_list_clients(ctl->c, &v, &n);

	if (r < 0) {
		int rc = call_failed(ctl, r, "list clients");
		if (r == -EPERM)
			fprintf(stderr, PROG ": hint: list clients needs an admin session\n");
		return rc;
	}
	if (ctl->json) {
		clients_json(v, n);
	} else {
		table_print(cols, sizeof(cols) / sizeof(cols[0]), v, n, client_row, NULL, NULL);
		printf("\n%zu client%s\n", n, n == 1 ? "" : "s");
	}
	free(v);
	return finish_output();
}

/* ------------------------------------------------------------ revoke, reload */

static int cmd_revoke(struct ctl *ctl)
{
	struct dmb_revoke_info info;
	int r = dmb_revoke_context(ctl->c, ctl->context, &info);
	char b[32];

	if (r < 0)
		return call_failed(ctl, r, "revoke");
	if (ctl->json) {
		struct json j = { .f = stdout };
		json_open(&j, NULL, '{');
		json_u64(&j, "context", info.context);
		json_u64(&j, "unmapped", info.unmapped);
		json_u64(&j, "unmapped_bytes", info.unmapped_bytes);
		json_u64(&j, "devices_closed", info.devices);
		json_u64(&j, "owner_session", info.owner_session); /* 0: none */
		json_u64(&j, "owner_uid", info.owner_uid);
		json_close(&j, '}');
	} else {
		printf("Context %" PRIu64 " revoked: %" PRIu64 " mapping%s (%s) unmapped, %" PRIu32
		       " device%s closed; ",
		       info.context, info.unmapped, info.unmapped == 1 ? "" : "s",
		       fmt_bytes(info.unmapped_bytes, b, sizeof(b)), info.devices,
		       info.devices == 1 ? "" : "s");
		if (info.owner_session)
			printf("session %" PRIu64 " (uid %" PRIu32 ") was told.\n", info.owner_session,
			       info.owner_uid);
		else
			printf("it had no session.\n");
	}
	return finish_output();
}

static int cmd_reload(struct ctl *ctl)
{
	struct dmb_reload_info info;
	int r = dmb_reload_policy(ctl->c, &info);

	if (r < 0)
		return call_failed(ctl, r, "reload");
	if (ctl->json) {
		struct json j = { .f = stdout };
		json_open(&j, NULL, '{');
		json_str(&j, "path", info.path);
		json_u64(&j, "policy_sections", info.policy_sections);
		json_u64(&j, "sessions", info.sessions);
		json_close(&j, '}');
	} else {
		printf("Policy reloaded from %s: %" PRIu32 " policy section%s, %" PRIu32
		       " session%s updated; mappings unchanged.\n",
		       info.path[0] ? info.path : "(built-in defaults)", info.policy_sections,
		       info.policy_sections == 1 ? "" : "s", info.sessions,
		       info.sessions == 1 ? "" : "s");
	}
	return finish_output();
}

/* ------------------------------------------------------------ policy check */

static int cmd_policy_check(struct ctl *ctl)
{
	return ctl_policy_check(ctl->file, ctl->json, ctl->have_uid ? &ctl->ident : NULL);
}

/* ------------------------------------------------------------ handoff */

static void handoff_json(const struct dmb_handoff_info *h, bool with_status)
{
	struct json j = { .f = stdout };

	json_open(&j, NULL, '{');
	json_str(&j, "state", h->state);
	json_str(&j, "preserver", h->preserver);
	json_str(&j, "session_name", h->session_name);
	if (with_status) {
		json_bool(&j, "available", h->available);
		json_str(&j, "message", h->message);
		json_u64(&j, "since_ms", h->since_ms);
		json_u64(&j, "unclaimed", h->unclaimed);
		json_u64(&j, "degraded", h->degraded);
		json_u64(&j, "grace_remaining_ms", h->grace_remaining_ms);
	} else {
		json_u64(&j, "regions", h->regions);
	}
	json_u64(&j, "contexts", h->contexts);
	json_u64(&j, "mappings", h->mappings);
	json_u64(&j, "bytes", h->bytes);
	json_u64(&j, "devices", h->devices);
	json_open(&j, "left_out", '[');
	for (size_t i = 0; i < h->n_left_out; i++) {
		json_open(&j, NULL, '{');
		json_u64(&j, "context", h->left_out[i].context);
		json_str(&j, "name", h->left_out[i].name);
		json_str(&j, "reason", h->left_out[i].reason);
		json_close(&j, '}');
	}
	json_close(&j, ']');
	json_close(&j, '}');
}

static void handoff_left_out_human(const struct dmb_handoff_info *h, const char *title)
{
	char name[80];

	if (!h->n_left_out)
		return;
	printf("%s\n", title);
	for (size_t i = 0; i < h->n_left_out; i++) {
		text_sanitize(name, sizeof(name), h->left_out[i].name[0] ? h->left_out[i].name : "-");
		printf("  context %" PRIu64 " '%s': %s\n", h->left_out[i].context, name,
		       h->left_out[i].reason);
	}
}

static int handoff_refused(const struct ctl *ctl, int r, const char *what)
{
	int rc = call_failed(ctl, r, what);
	if (r == -EPERM)
		fprintf(stderr, PROG ": hint: the host handoff needs a uid listed in [admin] uids= of "
				"the broker's configuration\n");
	return rc;
}

static int cmd_handoff_status(struct ctl *ctl)
{
	struct dmb_handoff_info h;
	char b[32];
	int r = dmb_handoff_status(ctl->c, &h);

	if (r < 0)
		return handoff_refused(ctl, r, "handoff status");
	if (ctl->json) {
		handoff_json(&h, true);
		return finish_output();
	}
	printf("State:      %s (for %" PRIu64 " s)\n", h.state, h.since_ms / 1000);
	printf("Preserver:  %s%s, session '%s'\n", h.preserver,
	       strcmp(h.state, "normal") ? "" : h.available ? " (available)" : " (not available)",
	       h.session_name);
	printf("            %s\n", h.message);
	printf("Contexts:   %" PRIu32 "%s\n", h.contexts,
	       !strcmp(h.state, "normal") ? " (would be preserved)" : "");
	printf("Mappings:   %" PRIu64 "\n", h.mappings);
	printf("Memory:     %s (%" PRIu64 " bytes)\n", fmt_bytes(h.bytes, b, sizeof(b)), h.bytes);
	printf("Devices:    %" PRIu32 "\n", h.devices);
	if (!strcmp(h.state, "reclaiming")) {
		printf("Unclaimed:  %" PRIu32 " (released in %" PRIu64 " s)\n", h.unclaimed,
		       h.grace_remaining_ms / 1000);
		printf("Degraded:   %" PRIu32 "\n", h.degraded);
	}
	handoff_left_out_human(&h, !strcmp(h.state, "normal") ? "Cannot be preserved:" : "Left out:");
	return finish_output();
}

static int cmd_handoff_prepare(struct ctl *ctl)
{
	struct dmb_handoff_info h;
	char b[32];
	int r = dmb_handoff_prepare(ctl->c, ctl->force, &h);

	if (r < 0)
		return handoff_refused(ctl, r, "handoff prepare");
	if (ctl->json) {
		handoff_json(&h, false);
		return finish_output();
	}
	printf("Prepared: %" PRIu32 " context%s, %" PRIu32 " memfd%s, %" PRIu64 " mapping%s, %s, "
	       "%" PRIu32 " device%s preserved in session '%s' (%s)\n",
	       h.contexts, h.contexts == 1 ? "" : "s", h.regions, h.regions == 1 ? "" : "s",
	       h.mappings, h.mappings == 1 ? "" : "s", fmt_bytes(h.bytes, b, sizeof(b)), h.devices,
	       h.devices == 1 ? "" : "s", h.session_name, h.preserver);
	handoff_left_out_human(&h, "Left out (they work until the kexec but do not come back):");
	printf("Changes are refused until the kexec or 'handoff abort'. Next: kexec -s -l ... ; "
	       "kexec -e\n");
	return finish_output();
}

static int cmd_handoff_abort(struct ctl *ctl)
{
	struct dmb_handoff_info h;
	int r = dmb_handoff_abort(ctl->c, &h);

	if (r < 0)
		return handoff_refused(ctl, r, "handoff abort");
	if (ctl->json) {
		handoff_json(&h, true);
		return finish_output();
	}
	printf("Aborted: nothing is preserved; the broker accepts changes again (state %s)\n",
	       h.state);
	return finish_output();
}

/* ------------------------------------------------------------ dispatch */

enum operand { OP_NONE, OP_CONTEXT, OP_FILE };

struct command {
	const char *words[2]; /* the command's fixed words; words[1] may be NULL */
	enum operand operand; /* at most one operand after the words */
	bool takes_all;
	bool offline;         /* runs without a broker */
	int (*fn)(struct ctl *ctl);
};

static const struct command commands[] = {
	{ { "status", NULL }, OP_NONE, false, false, cmd_status },
	{ { "list", "contexts" }, OP_NONE, true, false, cmd_list_contexts },
	{ { "list", "mappings" }, OP_CONTEXT, false, false, cmd_list_mappings },
	{ { "list", "devices" }, OP_NONE, true, false, cmd_list_devices },
	{ { "list", "clients" }, OP_NONE, false, false, cmd_list_clients },
	{ { "revoke", NULL }, OP_CONTEXT, false, false, cmd_revoke },
	{ { "reload", NULL }, OP_NONE, false, false, cmd_reload },
	{ { "iova-ranges", NULL }, OP_CONTEXT, false, false, cmd_iova_ranges },
	{ { "phys-ranges", NULL }, OP_CONTEXT, false, false, cmd_phys_ranges },
	{ { "policy", "check" }, OP_FILE, false, true, cmd_policy_check },
	{ { "handoff", "status" }, OP_NONE, false, false, cmd_handoff_status },
	{ { "handoff", "prepare" }, OP_NONE, false, false, cmd_handoff_prepare },
	{ { "handoff", "abort" }, OP_NONE, false, false, cmd_handoff_abort },
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " [OPTIONS] COMMAND\n"
		"Inspect dmabrokerd, the IOMMU DMA-mapping broker.\n\n"
		"Commands:\n"
		"  status                  server version, backend, features, uptime, totals with\n"
		"                          P2P mappings and revocations (admin)\n"
		"  list contexts [--all]   contexts with owner, regions, mappings, mapped bytes;\n"
		"                          --all (every client's, admin) is the default for admins\n"
		"  list mappings CONTEXT   the mappings of a context: IOVA range, length, region,\n"
		"                          offset, prot; P2P ones as REGION barN@devID with their\n"
		"                          state, live or revoked (admins: any client's context)\n"
		"  list devices [--all]    open devices: BDF, PCI ids, group, context, owner,\n"
		"                          command register (mem+/- bm+/-), reset, revocations,\n"
		"                          restorations, and the P2P mappings importing their BARs;\n"
		"                          --all (every client's, admin) is the default for admins\n"
		"  list clients            connected sessions: uid, gid, pid, name, admin, contexts,\n"
		"                          mappings, pinned bytes, devices, requests (admin)\n"
		"  revoke CONTEXT          kill any client's context: unmap everything, close its\n"
		"                          devices, release its memory; its owner is told (admin)\n"
		"  reload                  re-read the broker's configuration, as SIGHUP; a bad\n"
		"                          file changes nothing (admin)\n"
		"  iova-ranges CONTEXT     usable IOVA ranges, alignment, backend mapping limit\n"
		"  phys-ranges CONTEXT     a no-IOMMU context: the physical ranges behind its RAM\n"
		"                          mappings (admins: any client's context)\n"
		"                          (only contexts of this session)\n"
		"  handoff status          where a host handoff (kernel update by kexec) stands:\n"
		"                          state, preserver, what is (or would be) preserved (admin)\n"
		"  handoff prepare [--force]\n"
		"                          preserve every context for the next kernel; changes are\n"
		"                          refused until the kexec or an abort; --force leaves out\n"
		"                          the contexts that cannot be preserved (admin)\n"
		"  handoff abort           undo prepare: nothing stays preserved (admin)\n"
		"  policy check FILE [--uid N --gid N]\n"
		"                          validate a configuration and its FILE.d/*.conf drop-ins\n"
		"                          with the daemon's parser (no broker needed); with --uid\n"
		"                          and --gid, show what that client would be granted\n\n"
		"Options:\n"
		"  -s, --socket=PATH       broker socket (default $DMABROKER_SOCKET, else %s)\n"
		"  -j, --json              print one JSON document with raw integers\n"
		"  -a, --all               with 'list contexts' / 'list devices': every client's\n"
		"  -f, --force             with 'handoff prepare': leave out what cannot be preserved\n"
		"  -t, --timeout=SECONDS   give up on a silent broker (default %u; 0: wait forever)\n"
		"      --uid=N, --gid=N    with 'policy check': the client to resolve the policy for\n"
		"  -V, --version           print the version and exit\n"
		"  -h, --help              this text\n\n"
		"Exit status:\n"
		"  0  success\n"
		"  1  the broker refused the request (stderr: '" PROG ": <code>: <message>');\n"
		"     policy check: the file is invalid (stderr: 'file:line: reason')\n"
		"  2  usage error\n"
		"  3  cannot connect, the connection failed or timed out, or output failed\n",
		DMB_DEFAULT_SOCKET_PATH, DEFAULT_TIMEOUT_S);
}

static int parse_id(const char *s, uint32_t *out)
{
	char *end;

	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	/* (uid_t)-1 means "no id" to the kernel; the daemon refuses it too. */
	if (!s[0] || s[0] == '-' || s[0] == '+' || errno || *end || v >= UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int parse_timeout(const char *s, unsigned *out)
{
	char *end;

	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (!s[0] || s[0] == '-' || errno || *end || v > 86400)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

/* Returns -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, struct ctl *ctl)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "all", no_argument, NULL, 'a' },
		{ "force", no_argument, NULL, 'f' },
		{ "timeout", required_argument, NULL, 't' },
		{ "uid", required_argument, NULL, 'U' },
		{ "gid", required_argument, NULL, 'G' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	/* getopt reports a bad option under argv[0], the path the binary was run
	 * by: every other message says PROG. */
	argv[0] = (char *)PROG;
	while ((c = getopt_long(argc, argv, "s:jaft:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (!optarg[0])
				return usage_error("--socket needs a path");
			ctl->socket = optarg;
			break;
		case 'j': ctl->json = true; break;
		case 'a': ctl->all = true; break;
		case 'f': ctl->force = true; break;
		case 't':
			if (parse_timeout(optarg, &ctl->timeout_s) < 0)
				return usage_error("--timeout takes seconds from 0 to 86400, not '%s'",
						   optarg);
			break;
		case 'U':
			if (parse_id(optarg, &ctl->ident.uid) < 0)
				return usage_error("--uid takes a number, not '%s'", optarg);
			ctl->have_uid = true;
			break;
		case 'G':
			if (parse_id(optarg, &ctl->ident.gid) < 0)
				return usage_error("--gid takes a number, not '%s'", optarg);
			ctl->have_gid = true;
			break;
		case 'V': printf(PROG " (libdmabroker, protocol %u)\n", DMB_PROTOCOL_VERSION); return EXIT_OK;
		case 'h': usage(stdout); return finish_output();
		default:
			fputs("Try '" PROG " --help'.\n", stderr);
			return EXIT_USAGE;
		}
	}
	return -1;
}

static const struct command *find_command(int argc, char **argv, char ***args)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		const struct command *cmd = &commands[i];
		size_t nw = cmd->words[1] ? 2 : 1;
		if ((size_t)argc < nw || strcmp(argv[0], cmd->words[0]) ||
		    (nw == 2 && strcmp(argv[1], cmd->words[1])))
			continue;
		*args = argv + nw;
		return cmd;
	}
	return NULL;
}

static int run(int argc, char **argv)
{
	struct ctl ctl = { .timeout_s = DEFAULT_TIMEOUT_S };
	int rc = parse_options(argc, argv, &ctl);
	char **args;

	if (rc >= 0)
		return rc;
	argc -= optind;
	argv += optind;
	if (argc == 0)
		return usage_error("no command given");
	const struct command *cmd = find_command(argc, argv, &args);
	/* A known first word: name the second one it was given, if any. */
	const char *what = argc > 1 ? argv[1] : NULL;
	if (!cmd && strcmp(argv[0], "list") == 0)
		return usage_error("%s%s%s'list clients', 'list contexts', 'list mappings "
				   "CONTEXT' or 'list devices'", what ? "unknown list '" : "list what? ",
				   what ? what : "", what ? "': use " : "");
	if (!cmd && strcmp(argv[0], "handoff") == 0)
		return usage_error("%s%s%s'handoff status', 'handoff prepare [--force]' or "
				   "'handoff abort'", what ? "unknown handoff command '" : "handoff what? ",
				   what ? what : "", what ? "': use " : "");
	if (!cmd && strcmp(argv[0], "policy") == 0)
		return usage_error("%s%s%s'policy check FILE'",
				   what ? "unknown policy command '" : "policy what? ", what ? what : "",
				   what ? "': use " : "");
	if (!cmd)
		return usage_error("unknown command '%s'", argv[0]);
	size_t given = (size_t)argc - (size_t)(args - argv), want = cmd->operand != OP_NONE;
	if (given != want)
		return usage_error("'%s%s%s' takes %zu operand%s, got %zu", cmd->words[0],
				   cmd->words[1] ? " " : "", cmd->words[1] ? cmd->words[1] : "",
				   want, want == 1 ? "" : "s", given);
	if (ctl.all && !cmd->takes_all)
		return usage_error("--all only goes with 'list contexts' and 'list devices'");
	if (ctl.force && cmd->fn != cmd_handoff_prepare)
		return usage_error("--force only goes with 'handoff prepare'");
	if ((ctl.have_uid || ctl.have_gid) && cmd->fn != cmd_policy_check)
		return usage_error("--uid and --gid only go with 'policy check'");
	if (ctl.have_uid != ctl.have_gid)
		return usage_error("--uid and --gid go together: the policy matches both");
	/* Operands are checked before connecting: a usage error is never 3. */
	if (cmd->operand == OP_CONTEXT && parse_context(args[0], &ctl.context) < 0)
		return usage_error("'%s' is not a context id", args[0]);
	if (cmd->operand == OP_FILE) {
		if (!args[0][0])
			return usage_error("'%s%s%s' needs a file name", cmd->words[0], " ",
					   cmd->words[1]);
		ctl.file = args[0];
	}
	if (cmd->offline)
		return cmd->fn(&ctl);

	rc = ctl_connect(&ctl);
	if (rc == EXIT_OK)
		rc = cmd->fn(&ctl);
	dmb_close(ctl.c);
	return rc;
}

int main(int argc, char **argv)
{
	return run(argc, argv);
}
