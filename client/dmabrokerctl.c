/* dmabrokerctl — the operator's view of dmabrokerd.
 *
 *   dmabrokerctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND
 *
 *   status                    server version, backend, features, uptime, totals (admin)
 *   list contexts [--all]     contexts; --all (every client's) is the default for admins
 *   list mappings CONTEXT     the mappings of one context (admins: any client's)
 *   iova-ranges CONTEXT       usable IOVA ranges, alignment and the backend's mapping limit
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
 *      "dmabrokerctl: <code-name>: <message>" (code names as in dmb_error_code_name)
 *   2  usage error
 *   3  cannot connect to the broker, the connection failed or timed out, or the
 *      output could not be written
 *
 * The CLI's session is a client like any other: the contexts it lists belong
 * to other sessions, and they live only as long as those sessions do.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "dmabroker-internal.h"
#include "protocol.h"

enum {
	EXIT_OK = 0,
	EXIT_REFUSED = 1,
	EXIT_USAGE = 2,
	EXIT_TRANSPORT = 3,
};

#define PROG "dmabrokerctl"
#define DEFAULT_TIMEOUT_S 30u

struct ctl {
	const char *socket;
	bool json;
	bool all;
	unsigned timeout_s;
	uint64_t context; /* the CONTEXT operand, if the command takes one */
	struct dmb_client *c;
};

/* ------------------------------------------------------------ text helpers */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if s does not start
 * one (stray continuation, overlong form, surrogate, > U+10FFFF, cut short). */
static size_t utf8_seq_len(const unsigned char *s)
{
	unsigned char c = s[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/* Copies untrusted text (another client's context name) into a table cell:
 * control characters (C0, DEL, C1) and invalid UTF-8 become '?', so a name
 * cannot move the cursor or recolour the operator's terminal. */
static void sanitize(char *dst, size_t cap, const char *src)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t o = 0;

	while (*s && o + 1 < cap) {
		size_t n = utf8_seq_len(s);
		bool bad = n == 0 || s[0] < 0x20 || s[0] == 0x7f || (s[0] == 0xc2 && s[1] < 0xa0);
		if (bad) {
			dst[o++] = '?';
			s++;
			continue;
		}
		if (o + n >= cap)
			break;
		memcpy(dst + o, s, n);
		o += n;
		s += n;
	}
	dst[o] = '\0';
}

/* Display width of valid UTF-8: one column per code point. */
static size_t text_width(const char *s)
{
	size_t w = 0;
	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			w++;
	return w;
}

static const char *fmt_bytes(uint64_t v, char *buf, size_t cap)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double d = (double)v;
	size_t u = 0;

	if (v < 1024) {
		snprintf(buf, cap, "%" PRIu64 " B", v);
		return buf;
	}
	/* 1023.97 KiB would print as "1024.0 KiB": move up a unit first. */
	while (d >= 1024.0 - 0.05 && u + 1 < sizeof(units) / sizeof(units[0])) {
		d /= 1024.0;
		u++;
	}
	snprintf(buf, cap, "%.1f %s", d, units[u]);
	return buf;
}

static const char *fmt_uptime(uint64_t ms, char *buf, size_t cap)
{
	uint64_t s = ms / 1000, d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60;

	if (d)
		snprintf(buf, cap, "%" PRIu64 "d %02" PRIu64 "h %02" PRIu64 "m", d, h, m);
	else if (h)
		snprintf(buf, cap, "%" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s", h, m, s % 60);
	else if (m)
		snprintf(buf, cap, "%" PRIu64 "m %02" PRIu64 "s", m, s % 60);
	else
		snprintf(buf, cap, "%" PRIu64 ".%03" PRIu64 "s", s, ms % 1000);
	return buf;
}

static const char *prot_name(uint32_t prot)
{
	static const char *const names[] = { "--", "r-", "-w", "rw" };
	return names[prot & (DMB_READ | DMB_WRITE)];
}

/* ------------------------------------------------------------ JSON emitter */

/* Writes one JSON document, pretty-printed with two-space indents. Strings
 * are escaped per RFC 8259; bytes that are not valid UTF-8 become U+FFFD so
 * the output is always valid JSON whatever a client named its context. */
#define JSON_MAX_DEPTH 8

struct json {
	FILE *f;
	int depth;
	bool used[JSON_MAX_DEPTH]; /* the container at this depth has a member */
};

static void json_string(FILE *f, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	fputc('"', f);
	while (*s) {
		size_t n = utf8_seq_len(s);
		if (n == 0) {
			fputs("\\ufffd", f);
			s++;
			continue;
		}
		switch (*s) {
		case '"': fputs("\\\"", f); break;
		case '\\': fputs("\\\\", f); break;
		case '\b': fputs("\\b", f); break;
		case '\f': fputs("\\f", f); break;
		case '\n': fputs("\\n", f); break;
		case '\r': fputs("\\r", f); break;
		case '\t': fputs("\\t", f); break;
		default:
			if (*s < 0x20 || *s == 0x7f)
				fprintf(f, "\\u%04x", *s);
			else
				fwrite(s, 1, n, f);
		}
		s += n;
	}
	fputc('"', f);
}

/* Separator, newline, indent and "key": for the next member (key NULL in arrays). */
static void json_member(struct json *j, const char *key)
{
	if (j->depth > 0) {
		fputs(j->used[j->depth] ? ",\n" : "\n", j->f);
		j->used[j->depth] = true;
		fprintf(j->f, "%*s", 2 * j->depth, "");
	}
	if (key) {
		json_string(j->f, key);
		fputs(": ", j->f);
	}
}

static void json_open(struct json *j, const char *key, char bracket)
{
	json_member(j, key);
	fputc(bracket, j->f);
	if (j->depth + 1 < JSON_MAX_DEPTH)
		j->depth++;
	j->used[j->depth] = false;
}

static void json_close(struct json *j, char bracket)
{
	bool had_members = j->used[j->depth];
	if (j->depth > 0)
		j->depth--;
	if (had_members)
		fprintf(j->f, "\n%*s", 2 * j->depth, "");
	fputc(bracket, j->f);
	if (j->depth == 0)
		fputc('\n', j->f);
}

static void json_u64(struct json *j, const char *key, uint64_t v)
{
	json_member(j, key);
	fprintf(j->f, "%" PRIu64, v);
}

static void json_bool(struct json *j, const char *key, bool v)
{
	json_member(j, key);
	fputs(v ? "true" : "false", j->f);
}

static void json_str(struct json *j, const char *key, const char *s)
{
	json_member(j, key);
	json_string(j->f, s);
}

/* A space-separated list (server features) as an array of strings. */
static void json_words(struct json *j, const char *key, const char *words)
{
	char buf[256];
	char *save = NULL;

	snprintf(buf, sizeof(buf), "%s", words);
	json_open(j, key, '[');
	for (char *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
		json_str(j, NULL, w);
	json_close(j, ']');
}

/* ------------------------------------------------------------ tables */

#define TABLE_MAX_COLS 10
#define CELL_MAX 128

struct column {
	const char *header;
	bool right; /* numbers are right-aligned */
};

/* Fills the cells of row i. */
typedef void (*row_fn)(const void *rows, size_t i, char cells[][CELL_MAX]);

static void table_line(const struct column *cols, size_t ncols, const size_t *width,
		       char cells[][CELL_MAX])
{
	for (size_t k = 0; k < ncols; k++) {
		size_t pad = width[k] - text_width(cells[k]);
		const char *sep = k + 1 < ncols ? "  " : "";
		if (cols[k].right)
			printf("%*s%s%s", (int)pad, "", cells[k], sep);
		else if (k + 1 < ncols)
			printf("%s%*s%s", cells[k], (int)pad, "", sep);
		else
			fputs(cells[k], stdout); /* no trailing blanks */
	}
	putchar('\n');
}

/* Two passes over the rows: widths first, then the lines. */
static void table_print(const struct column *cols, size_t ncols, const void *rows, size_t nrows,
			row_fn fill)
{
	char cells[TABLE_MAX_COLS][CELL_MAX];
	size_t width[TABLE_MAX_COLS];

	for (size_t k = 0; k < ncols; k++) {
		snprintf(cells[k], CELL_MAX, "%s", cols[k].header);
		width[k] = text_width(cells[k]);
	}
	for (size_t i = 0; i < nrows; i++) {
		fill(rows, i, cells);
		for (size_t k = 0; k < ncols; k++) {
			size_t w = text_width(cells[k]);
			if (w > width[k])
				width[k] = w;
		}
	}
	for (size_t k = 0; k < ncols; k++)
		snprintf(cells[k], CELL_MAX, "%s", cols[k].header);
	table_line(cols, ncols, width, cells);
	for (size_t i = 0; i < nrows; i++) {
		fill(rows, i, cells);
		table_line(cols, ncols, width, cells);
	}
}

/* ------------------------------------------------------------ errors */

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry '" PROG " --help'.\n", stderr);
	return EXIT_USAGE;
}

/* Turns a failed library call into the exit code, saying why on stderr. */
static int call_failed(const struct ctl *ctl, int r, const char *what)
{
	const struct dmb_error *e = dmb_last_error(ctl->c);

	if (e->code != DMB_OK) {
		fprintf(stderr, PROG ": %s: %s\n", dmb_error_code_name(e->code),
			e->message[0] ? e->message : strerror(-r));
		return EXIT_REFUSED;
	}
	if (r == -EAGAIN || r == -EWOULDBLOCK)
		fprintf(stderr, PROG ": %s: no reply from the broker within %u s\n", what,
			ctl->timeout_s);
	else if (e->message[0] && e->sys_errno == -r)
		fprintf(stderr, PROG ": %s: %s\n", what, e->message);
	else
		fprintf(stderr, PROG ": %s: %s\n", what, strerror(-r));
	return EXIT_TRANSPORT;
}

static int finish_output(void)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, PROG ": writing the output: %s\n", strerror(errno));
		return EXIT_TRANSPORT;
	}
	return EXIT_OK;
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

/* A broker that accepts but never answers must not hang a script: every
 * send and receive gives up after the timeout (the library then reports
 * -EAGAIN as a transport error). */
static void set_timeouts(const struct ctl *ctl)
{
	struct timeval tv = { .tv_sec = ctl->timeout_s };
	int fd = dmb_socket(ctl->c);

	if (!ctl->timeout_s)
		return;
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Connects in two steps (the internal API) so that the timeout covers the
 * handshake and a refused handshake is reported with the broker's words. */
static int ctl_connect(struct ctl *ctl)
{
	const char *path = socket_path(ctl);
	int r = dmb_connect_raw(path, &ctl->c);

	if (r < 0) {
		fprintf(stderr, PROG ": cannot connect to %s: %s%s\n", path, strerror(-r),
			r == -ENOENT || r == -ECONNREFUSED ? " (is dmabrokerd running?)" : "");
		return EXIT_TRANSPORT;
	}
	set_timeouts(ctl);
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
	json_u64(&j, "regions", t->regions);
	json_u64(&j, "mappings", t->mappings);
	json_u64(&j, "mapped_bytes", t->mapped_bytes);
	json_u64(&j, "pinned_bytes", t->pinned_bytes);
	json_u64(&j, "devices", t->devices);
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
	printf("Contexts:  %" PRIu32 "\n", t->contexts);
	printf("Regions:   %" PRIu32 "\n", t->regions);
	printf("Mappings:  %" PRIu64 "\n", t->mappings);
	printf("Mapped:    %s (%" PRIu64 " bytes)\n", fmt_bytes(t->mapped_bytes, b1, sizeof(b1)),
	       t->mapped_bytes);
	printf("Pinned:    %s (%" PRIu64 " bytes)\n", fmt_bytes(t->pinned_bytes, b2, sizeof(b2)),
	       t->pinned_bytes);
	printf("Devices:   %" PRIu32 "\n", t->devices);
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
	sanitize(cells[1], CELL_MAX, x->name[0] ? x->name : "-");
	snprintf(cells[2], CELL_MAX, "%" PRIu32, x->owner_uid);
	snprintf(cells[3], CELL_MAX, "%" PRIu32, x->owner_pid);
	snprintf(cells[4], CELL_MAX, "%" PRIu64, x->session);
	snprintf(cells[5], CELL_MAX, "%" PRIu32, x->regions);
	snprintf(cells[6], CELL_MAX, "%" PRIu64, x->mappings);
	fmt_bytes(x->mapped_bytes, cells[7], CELL_MAX);
	snprintf(cells[8], CELL_MAX, "%" PRIu32, x->devices);
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
	if (ctl->json)
		contexts_json(v, n, all);
	else
		table_print(cols, sizeof(cols) / sizeof(cols[0]), v, n, context_row);
	free(v);
	return finish_output();
}

/* ------------------------------------------------------------ list mappings */

struct mapping_list {
	struct dmb_mapping_info *v;
	size_t n, cap;
};

static int mapping_list_reserve(struct mapping_list *l, size_t more)
{
	if (l->cap - l->n >= more)
		return 0;
	size_t cap = l->cap ? l->cap : 256;
	while (cap - l->n < more) {
		if (cap > SIZE_MAX / 2 / sizeof(*l->v))
			return -ENOMEM;
		cap *= 2;
	}
	void *p = realloc(l->v, cap * sizeof(*l->v));
	if (!p)
		return -ENOMEM;
	l->v = p;
	l->cap = cap;
	return 0;
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

static void mapping_row(const void *rows, size_t i, char cells[][CELL_MAX])
{
	const struct dmb_mapping_info *m = (const struct dmb_mapping_info *)rows + i;

	snprintf(cells[0], CELL_MAX, "0x%016" PRIx64 "-0x%016" PRIx64, m->iova,
		 m->iova + m->length - 1);
	fmt_bytes(m->length, cells[1], CELL_MAX);
	snprintf(cells[2], CELL_MAX, "%" PRIu64, m->region);
	snprintf(cells[3], CELL_MAX, "0x%" PRIx64, m->offset);
	snprintf(cells[4], CELL_MAX, "%s", prot_name(m->prot));
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
		json_u64(&j, "region", m->region);
		json_u64(&j, "offset", m->offset);
		json_str(&j, "prot", prot_name(m->prot));
		json_close(&j, '}');
	}
	json_close(&j, ']');
	json_close(&j, '}');
}

static void mappings_human(const struct mapping_list *l)
{
	static const struct column cols[] = {
		{ "IOVA", false }, { "LENGTH", true }, { "REGION", true },
		{ "OFFSET", true }, { "PROT", false },
	};
	uint64_t total = 0;
	char b[32];

	table_print(cols, sizeof(cols) / sizeof(cols[0]), l->v, l->n, mapping_row);
	for (size_t i = 0; i < l->n; i++)
		total += l->v[i].length;
	printf("\n%zu mapping%s, %s\n", l->n, l->n == 1 ? "" : "s", fmt_bytes(total, b, sizeof(b)));
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

	table_print(cols, sizeof(cols) / sizeof(cols[0]), info->ranges, info->n, iova_row);
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

/* ------------------------------------------------------------ dispatch */

struct command {
	const char *words[2]; /* the command's fixed words; words[1] may be NULL */
	size_t nargs;          /* operands after the words: 0, or 1 for CONTEXT */
	bool takes_all;
	int (*fn)(struct ctl *ctl);
};

static const struct command commands[] = {
	{ { "status", NULL }, 0, false, cmd_status },
	{ { "list", "contexts" }, 0, true, cmd_list_contexts },
	{ { "list", "mappings" }, 1, false, cmd_list_mappings },
	{ { "iova-ranges", NULL }, 1, false, cmd_iova_ranges },
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " [OPTIONS] COMMAND\n"
		"Inspect dmabrokerd, the IOMMU DMA-mapping broker.\n\n"
		"Commands:\n"
		"  status                  server version, backend, features, uptime, totals (admin)\n"
		"  list contexts [--all]   contexts with owner, regions, mappings, mapped bytes;\n"
		"                          --all (every client's, admin) is the default for admins\n"
		"  list mappings CONTEXT   the mappings of a context: IOVA range, length, region,\n"
		"                          offset, prot (admins may name any client's context)\n"
		"  iova-ranges CONTEXT     usable IOVA ranges, alignment, backend mapping limit\n"
		"                          (only contexts of this session)\n\n"
		"Options:\n"
		"  -s, --socket=PATH       broker socket (default $DMABROKER_SOCKET, else %s)\n"
		"  -j, --json              print one JSON document with raw integers\n"
		"  -a, --all               with 'list contexts': every client's contexts\n"
		"  -t, --timeout=SECONDS   give up on a silent broker (default %u; 0: wait forever)\n"
		"  -V, --version           print the version and exit\n"
		"  -h, --help              this text\n\n"
		"Exit status:\n"
		"  0  success\n"
		"  1  the broker refused the request (stderr: '" PROG ": <code>: <message>')\n"
		"  2  usage error\n"
		"  3  cannot connect, the connection failed or timed out, or output failed\n",
		DMB_DEFAULT_SOCKET_PATH, DEFAULT_TIMEOUT_S);
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
		{ "timeout", required_argument, NULL, 't' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "s:jat:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (!optarg[0])
				return usage_error("--socket needs a path");
			ctl->socket = optarg;
			break;
		case 'j': ctl->json = true; break;
		case 'a': ctl->all = true; break;
		case 't':
			if (parse_timeout(optarg, &ctl->timeout_s) < 0)
				return usage_error("--timeout takes seconds from 0 to 86400, not '%s'",
						   optarg);
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
	if (!cmd && strcmp(argv[0], "list") == 0)
		return usage_error("list what? 'list contexts' or 'list mappings CONTEXT'");
	if (!cmd)
		return usage_error("unknown command '%s'", argv[0]);
	size_t given = (size_t)argc - (size_t)(args - argv);
	if (given != cmd->nargs)
		return usage_error("'%s%s%s' takes %zu operand%s, got %zu", cmd->words[0],
				   cmd->words[1] ? " " : "", cmd->words[1] ? cmd->words[1] : "",
				   cmd->nargs, cmd->nargs == 1 ? "" : "s", given);
	if (ctl.all && !cmd->takes_all)
		return usage_error("--all only goes with 'list contexts'");
	/* Operands are checked before connecting: a usage error is never 3. */
	if (cmd->nargs == 1 && parse_context(args[0], &ctl.context) < 0)
		return usage_error("'%s' is not a context id", args[0]);

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
