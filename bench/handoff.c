/* Host handoff restore time (issue 6): the whole simulated kexec of the
 * integration tier (tests/integration/test_handoff.c), timed. dmabrokerd
 * runs under the fd-store harness of the integration tests
 * (tests/integration/fdstore.c: systemd's socket, notify socket and fd
 * store) with [handoff] preserver = sim:SOCKET, the socket of a
 * tools/dmb-sim-preserver this benchmark serves for the run.
 *
 * One round, for N mappings (one persistent context; two of N/2 above
 * 65,536; every context its own 16 MiB memfd, mapped page by page over and
 * over with a hole after every mapping):
 *   1. a fresh daemon (empty fd store): start -> READY=1 (the fixed cost of
 *      any start, the baseline of the per-mapping figures);
 *   2. (c) the N mappings created through the broker in MapBatch requests of
 *      4096 entries: the same-run baseline of everything below;
 *   3. (a) HandoffPrepare, request to reply (snapshot journal of every
 *      mapping, every memfd and the journal preserved in one session);
 *   4. the simulated kexec, as harsh as a real one: the VMM-like client
 *      closes (its memfds were closed right after registering), the daemon
 *      gets SIGTERM, `dmb-sim-preserver kexec` turns the session into an
 *      incoming one, the fd store is emptied (every sim backend object goes
 *      with it);
 *   5. (b) the new daemon: start -> READY=1, by which time it has retrieved
 *      the session, rebuilt every context and mapped every mapping again at
 *      its IOVA from the retrieved memfds. Phases from its own log (info
 *      level, ms timestamps): "backend sim:" (the process is up), "host
 *      handoff: restored C context(s), M mapping(s), D device(s) from the
 *      previous kernel in T ms" (T measured inside the daemon), "... ready
 *      (pid ...)" right after READY=1.
 * Then, before any reclaim, checked (the run fails otherwise): the log line
 * names every context and mapping and nothing degraded; the status is
 * reclaiming with every context unclaimed; 16 sampled mappings per context
 * move the right bytes through the sim DMA engine (dmb_sim_dma_read on the
 * ownerless context, as an admin) and a hole between mappings faults. Then
 * each context is reclaimed by a new client with its token: the reply
 * counts every mapping and hands back the memfd, a tag written into that
 * memfd now is read back through a mapping (the mapping is the retrieved
 * file, live), the last reclaim ends the handoff (state normal), and a
 * mutation (destroying the context) is accepted again.
 *
 * Rounds alternate nothing: each is a whole cycle from an empty daemon, so
 * the fresh baseline and the restore are measured the same number of times,
 * interleaved. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bclient.h"
#include "fdstore.h"

#ifndef DMB_BENCH_SIM_PRESERVER
#define DMB_BENCH_SIM_PRESERVER "dmb-sim-preserver"
#endif

#define HO_PAGES 4096u    /* a 16 MiB memfd per context, mapped over and over */
#define HO_STRIDE 2u      /* a hole after every mapping */
#define HO_PER_CTX 65536u /* more than this: another context */
#define HO_MAX_CTX 4u
#define HO_SEED 31u
#define HO_MAX_ROUNDS 16u
#define HO_BATCH 4096u

struct ho_ctx {
	uint64_t id, region, n;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
};

struct ho {
	const struct bench_opts *o;
	struct fds h;
	char cfg[128];
	const char *argv[10];
	char script[512];
	const char *pv_bin;
	char pv_sock[160];
	char pv_log[160]; /* the preserver's stderr (serve and every verb) */
	pid_t pv_pid;
	struct ho_ctx ctx[HO_MAX_CTX];
	size_t nctx;
	uint64_t n;
};

/* One round. Log phases are < 0 when their line was not found. */
struct ho_one {
	double empty_ms;   /* fresh start, empty store -> READY=1 */
	double map_ms;     /* (c) */
	double prepare_ms; /* (a) */
	double kexec_ms;   /* stop + dmb-sim-preserver kexec + store cleared */
	double restore_ms; /* (b) start -> READY=1 */
	double up_ms, in_daemon_ms, to_ready_ms;
};

static uint64_t ho_iova(uint64_t i)
{
	return BENCH_IOVA_BASE + i * HO_STRIDE * PG;
}

/* ------------------------------------------------------------ the preserver */

/* dmb-sim-preserver VERB SOCKET [ARG]: its exit status (128 + the signal),
 * its stdout in out (may be NULL), its stderr in the preserver's log. */
static int pv_tool(struct ho *x, const char *verb, const char *arg, char *out, size_t cap)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0) {
		close(p[0]);
		close(p[1]);
		return -errno;
	}
	if (pid == 0) {
		int lf = open(x->pv_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (lf >= 0)
			dup2(lf, 2);
		dup2(p[1], 1);
		execl(x->pv_bin, x->pv_bin, verb, x->pv_sock, arg, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	size_t used = 0;
	char sink[512];
	for (;;) {
		char *dst = out && used + 1 < cap ? out + used : sink;
		size_t room = out && used + 1 < cap ? cap - 1 - used : sizeof(sink);
		ssize_t k = read(p[0], dst, room);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		if (dst != sink)
			used += (size_t)k;
	}
	close(p[0]);
	if (out && cap)
		out[used] = '\0';
	int st;
	if (waitpid(pid, &st, 0) < 0)
		return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* The preserver's log to stderr (after a failure). */
static void pv_dump_log(const struct ho *x)
{
	FILE *f = fopen(x->pv_log, "r");
	if (!f)
		return;
	char line[512];
	fprintf(stderr, "---- %s ----\n", x->pv_log);
	while (fgets(line, sizeof(line), f))
		fputs(line, stderr);
	fclose(f);
}

static int pv_start(struct ho *x)
{
	snprintf(x->pv_sock, sizeof(x->pv_sock), "%s/preserver.sock", x->h.dir);
	snprintf(x->pv_log, sizeof(x->pv_log), "%s/preserver.log", x->h.dir);
	if (access(x->pv_bin, X_OK) < 0) {
		check_fail("handoff: cannot run the simulated preserver %s: %s (build tools/, or set "
			   "DMB_SIM_PRESERVER)", x->pv_bin, strerror(errno));
		return -errno;
	}
	x->pv_pid = fork();
	if (x->pv_pid < 0) {
		check_fail("handoff: fork: %s", strerror(errno));
		x->pv_pid = 0;
		return -EAGAIN;
	}
	if (x->pv_pid == 0) {
		int nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
		int lf = open(x->pv_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (nul >= 0)
			dup2(nul, 1);
		if (lf >= 0)
			dup2(lf, 2);
		execl(x->pv_bin, x->pv_bin, "serve", x->pv_sock, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 1000 && access(x->pv_sock, F_OK) < 0; i++) {
		if (waitpid(x->pv_pid, NULL, WNOHANG) == x->pv_pid) {
			x->pv_pid = 0;
			break;
		}
		sleep_ms(10);
	}
	if (access(x->pv_sock, F_OK) < 0) {
		check_fail("handoff: %s serve %s did not create its socket", x->pv_bin, x->pv_sock);
		return -ENOENT;
	}
	return 0;
}

static void pv_stop(struct ho *x)
{
	if (x->pv_pid <= 0)
		return;
	kill(x->pv_pid, SIGTERM);
	int st;
	if (waitpid(x->pv_pid, &st, 0) == x->pv_pid && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
		check_fail("handoff: the simulated preserver did not exit cleanly (status 0x%x)", st);
	x->pv_pid = 0;
}

/* ------------------------------------------------------------ the daemon */

/* Parses the log written since offset `from`; times relative to t0 (wall
 * ms of day when the start began). */
static void parse_log(struct ho *x, long from, double t0, struct ho_one *one,
		      unsigned long long *ctxs, unsigned long long *maps, unsigned long long *degraded,
		      char *restored_line, size_t cap)
{
	one->up_ms = one->in_daemon_ms = one->to_ready_ms = -1;
	restored_line[0] = '\0';
	FILE *f = fopen(x->h.log, "r");
	if (!f)
		return;
	fseek(f, from, SEEK_SET);
	char line[1200];
	double t_up = -1, t_restored = -1, t_ready = -1;
	for (unsigned i = 0; i < 100000 && fgets(line, sizeof(line), f); i++) {
		double t;
		if (!bench_log_line_ms(line, &t))
			continue;
		const char *msg = strchr(line, ']');
		msg = msg ? msg + 2 : line;
		if (t_up < 0 && strstr(msg, "backend sim:"))
			t_up = t;
		const char *p = strstr(msg, "host handoff: restored ");
		unsigned long long c, m, d, ms, dg;
		if (p && sscanf(p,
				"host handoff: restored %llu context(s), %llu mapping(s), %llu device(s) "
				"from the previous kernel in %llu ms (%llu degraded)",
				&c, &m, &d, &ms, &dg) == 5) {
			t_restored = t;
			one->in_daemon_ms = (double)ms;
			*ctxs = c;
			*maps = m;
			*degraded = dg;
			snprintf(restored_line, cap, "%s", line);
			restored_line[strcspn(restored_line, "\n")] = '\0';
		}
		if (strstr(msg, " ready (pid "))
			t_ready = t;
	}
	fclose(f);
	if (t_up >= 0)
		one->up_ms = t_up - t0;
	if (t_restored >= 0 && t_ready >= 0)
		one->to_ready_ms = t_ready - t_restored;
}

static int ho_start(struct ho *x, double *ms)
{
	uint64_t a = now_ns();
	int r = fds_start(&x->h, x->argv);
	*ms = (double)(now_ns() - a) / 1e6;
	if (r < 0) {
		check_fail("handoff: dmabrokerd did not start under the fd-store harness: %s (log %s)",
			   strerror(-r), x->h.log);
		fds_dump_log(&x->h);
	}
	return r;
}

static bool ho_stop(struct ho *x, const char *when)
{
	int st = fds_stop(&x->h, SIGTERM);
	if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
		check_fail("handoff: the daemon did not exit cleanly on SIGTERM %s (status 0x%x)", when,
			   st);
		return false;
	}
	return true;
}

static struct dmb_client *ho_connect(struct ho *x, const char *name)
{
	struct dmb_client *c = NULL;
	int r = dmb_connect(x->h.sock, name, &c);
	if (r < 0) {
		check_fail("handoff: connect as %s: %s", name, strerror(-r));
		return NULL;
	}
	return c;
}

static int ho_fill(struct dmb_client *c, struct ho_ctx *hc)
{
	struct dmb_map_entry *e = malloc(HO_BATCH * sizeof(*e));
	if (!e)
		return -ENOMEM;
	int r = 0;
	for (uint64_t done = 0; done < hc->n && r == 0;) {
		size_t k = hc->n - done < HO_BATCH ? (size_t)(hc->n - done) : HO_BATCH;
		for (size_t j = 0; j < k; j++) {
			uint64_t i = done + j;
			e[j] = (struct dmb_map_entry){ hc->region, (i % HO_PAGES) * PG, ho_iova(i), PG,
						       DMB_READ | DMB_WRITE };
		}
		r = dmb_map_batch(c, hc->id, e, k);
		if (r < 0)
			check_fail("handoff: map batch at %llu of context %llu: %s",
				   (unsigned long long)done, (unsigned long long)hc->id,
				   dmb_last_error(c)->message);
		done += k;
	}
	free(e);
	return r;
}

/* 16 sampled mappings per context read their page's tag through the sim
 * DMA engine, and a hole between mappings faults. c: the owner, or an
 * admin for an ownerless (not yet reclaimed) context. */
static void ho_verify(struct ho *x, struct dmb_client *c, const char *when)
{
	for (size_t i = 0; i < x->nctx; i++) {
		struct ho_ctx *hc = &x->ctx[i];
		const unsigned K = 16;
		unsigned bad = 0, tried = 0;
		char first[400] = "";
		for (unsigned k = 0; k < K && hc->n; k++) {
			uint64_t j = k == K - 1 ? hc->n - 1 : (hc->n * k) / K + k % 7;
			if (j >= hc->n)
				j = hc->n - 1;
			uint64_t got = 0, want = page_tag(HO_SEED + (unsigned)i, j % HO_PAGES);
			int r = dmb_sim_dma_read(c, hc->id, ho_iova(j), &got, sizeof(got));
			tried++;
			if (r < 0 || got != want) {
				if (!bad++)
					snprintf(first, sizeof(first),
						 "mapping %llu (iova 0x%llx): %s 0x%llx, want 0x%llx",
						 (unsigned long long)j, (unsigned long long)ho_iova(j),
						 r < 0 ? dmb_last_error(c)->message : "read",
						 (unsigned long long)got, (unsigned long long)want);
			}
		}
		if (bad)
			check_fail("handoff: %s: %u of %u sampled mappings of context %llu did not move "
				   "the right bytes; first: %s", when, bad, tried,
				   (unsigned long long)hc->id, first);
		else if (tried)
			check_pass();
		uint64_t got;
		uint64_t hole = ho_iova(hc->n / 2) + PG;
		if (dmb_sim_dma_read(c, hc->id, hole, &got, sizeof(got)) == 0)
			check_fail("handoff: %s: the hole at 0x%llx of context %llu reads", when,
				   (unsigned long long)hole, (unsigned long long)hc->id);
		else
			check_pass();
	}
}

/* Polls the handoff status (new connections, as an operator would) until
 * it says `state`; at most ms. */
static bool ho_wait_state(struct ho *x, const char *state, int ms, char *last, size_t cap)
{
	snprintf(last, cap, "?");
	for (int i = 0; i <= ms / 20; i++) {
		struct dmb_client *a = NULL;
		if (dmb_connect(x->h.sock, "bench-handoff-poll", &a) == 0) {
			struct dmb_handoff_info hi;
			int r = dmb_handoff_status(a, &hi);
			if (r == 0)
				snprintf(last, cap, "%s (%s)", hi.state, hi.message);
			else
				snprintf(last, cap, "status failed: %s", dmb_last_error(a)->message);
			dmb_close(a);
			if (r == 0 && !strcmp(hi.state, state))
				return true;
		}
		sleep_ms(20);
	}
	return false;
}

/* After the restore: reclaim every context with its token from a new
 * client, prove the mapping is the handed-back memfd, end the handoff,
 * and destroy the contexts (a mutation accepted again). */
static bool ho_reclaim_all(struct ho *x)
{
	struct dmb_client *vc[HO_MAX_CTX] = { 0 };
	bool ok = true;
	for (size_t i = 0; i < x->nctx && ok; i++) {
		struct ho_ctx *hc = &x->ctx[i];
		vc[i] = ho_connect(x, "bench-handoff-vmm-again");
		if (!vc[i]) {
			ok = false;
			break;
		}
		struct dmb_reclaim_info *ri = calloc(1, sizeof(*ri));
		if (!ri) {
			check_fail("handoff: out of memory");
			ok = false;
			break;
		}
		if (dmb_context_reclaim(vc[i], hc->id, hc->token, ri) < 0) {
			check_fail("handoff: reclaim of context %llu: %s", (unsigned long long)hc->id,
				   dmb_last_error(vc[i])->message);
			free(ri);
			ok = false;
			break;
		}
		int mfd = ri->n_regions >= 1 ? ri->regions[0].fd : -1;
		if (ri->mappings != hc->n || ri->degraded || ri->n_regions != 1 || mfd < 0) {
			check_fail("handoff: reclaim of context %llu: %llu mappings (want %llu), degraded %d, "
				   "%zu region(s) (want 1), memfd %d", (unsigned long long)hc->id,
				   (unsigned long long)ri->mappings, (unsigned long long)hc->n,
				   (int)ri->degraded, ri->n_regions, mfd);
			ok = false;
		} else {
			check_pass();
			/* A new tag in the handed-back memfd, read through the
			 * mapping of that page: the mapping is that file. */
			uint64_t j = hc->n / 3, page = j % HO_PAGES;
			uint64_t tag = page_tag(HO_SEED + 100 + (unsigned)i, page), got = 0;
			if (pwrite(mfd, &tag, sizeof(tag), (off_t)(page * PG)) != (ssize_t)sizeof(tag)) {
				check_fail("handoff: writing into the reclaimed memfd: %s", strerror(errno));
				ok = false;
			} else if (dmb_sim_dma_read(vc[i], hc->id, ho_iova(j), &got, sizeof(got)) < 0 ||
				   got != tag) {
				check_fail("handoff: after reclaim, mapping %llu of context %llu read 0x%llx, "
					   "want 0x%llx written into the reclaimed memfd (%s)",
					   (unsigned long long)j, (unsigned long long)hc->id,
					   (unsigned long long)got, (unsigned long long)tag,
					   dmb_last_error(vc[i])->message);
				ok = false;
			} else {
				check_pass();
			}
			/* The tag back as it was, for the next sample. */
			uint64_t old = page_tag(HO_SEED + (unsigned)i, page);
			if (pwrite(mfd, &old, sizeof(old), (off_t)(page * PG)) != (ssize_t)sizeof(old))
				ok = false;
		}
		for (size_t k = 0; k < ri->n_regions; k++)
			if (ri->regions[k].fd >= 0)
				close(ri->regions[k].fd);
		for (size_t k = 0; k < ri->n_devices; k++)
			if (ri->devices[k].fd >= 0)
				close(ri->devices[k].fd);
		free(ri);
	}
	char last[400];
	if (ok) {
		if (!ho_wait_state(x, "normal", 10000, last, sizeof(last))) {
			check_fail("handoff: every context reclaimed, but the handoff did not end: %s", last);
			ok = false;
		} else {
			check_pass();
		}
	}
	for (size_t i = 0; i < x->nctx; i++) {
		if (!vc[i])
			continue;
		if (ok && dmb_context_destroy(vc[i], x->ctx[i].id) < 0) {
			check_fail("handoff: destroying reclaimed context %llu: %s",
				   (unsigned long long)x->ctx[i].id, dmb_last_error(vc[i])->message);
			ok = false;
		}
		dmb_close(vc[i]);
	}
	return ok;
}

/* One whole cycle from an empty daemon. */
static bool ho_round(struct ho *x, struct ho_one *one, bool first)
{
	memset(one, 0, sizeof(*one));
	bool ok = false;
	struct dmb_client *vmm = NULL, *adm = NULL;
	fds_store_clear(&x->h);
	if (ho_start(x, &one->empty_ms) < 0)
		return false;
	vmm = ho_connect(x, "bench-handoff-vmm");
	if (!vmm)
		goto out;
	for (size_t i = 0; i < x->nctx; i++) {
		struct ho_ctx *hc = &x->ctx[i];
		hc->n = x->n / x->nctx + (i < x->n % x->nctx);
		int m = bench_memfd(HO_PAGES * PG, HO_SEED + (unsigned)i, HO_PAGES);
		if (m < 0) {
			check_fail("handoff: memfd: %s", strerror(-m));
			goto out;
		}
		struct dmb_region_info ri;
		int r = dmb_context_create_persistent(vmm, "bench-handoff", &hc->id, hc->token);
		if (r == 0)
			r = dmb_region_register(vmm, hc->id, m, 0, &ri);
		/* The broker holds its own reference; after the kexec only the
		 * preserver does. */
		close(m);
		if (r < 0) {
			check_fail("handoff: persistent context/region: %s", dmb_last_error(vmm)->message);
			goto out;
		}
		hc->region = ri.region;
	}
	/* (c) the same mappings, fresh. */
	uint64_t a = now_ns();
	for (size_t i = 0; i < x->nctx; i++)
		if (ho_fill(vmm, &x->ctx[i]) < 0)
			goto out;
	one->map_ms = (double)(now_ns() - a) / 1e6;
	if (first)
		ho_verify(x, vmm, "after mapping");

	/* (a) prepare. */
	adm = ho_connect(x, "bench-handoff-admin");
	if (!adm)
		goto out;
	struct dmb_handoff_info hi;
	a = now_ns();
	int r = dmb_handoff_prepare(adm, false, &hi);
	one->prepare_ms = (double)(now_ns() - a) / 1e6;
	if (r < 0) {
		check_fail("handoff: prepare with %llu mapping(s): %s", (unsigned long long)x->n,
			   dmb_last_error(adm)->message);
		goto out;
	}
	if (strcmp(hi.state, "prepared") || hi.contexts != x->nctx || hi.mappings != x->n ||
	    hi.n_left_out) {
		check_fail("handoff: prepare said state %s, %u context(s), %llu mapping(s), %zu left "
			   "out; want prepared, %zu, %llu, 0", hi.state, hi.contexts,
			   (unsigned long long)hi.mappings, hi.n_left_out, x->nctx,
			   (unsigned long long)x->n);
		goto out;
	}
	check_pass();
	/* The preserver holds one session: every memfd and the journal. */
	char pst[2048], want[96];
	snprintf(want, sizeof(want), "session \"dmabroker\" outgoing, %zu file(s)", x->nctx + 1);
	r = pv_tool(x, "status", NULL, pst, sizeof(pst));
	if (r != 0 || !strstr(pst, "sessions: 1\n") || !strstr(pst, want)) {
		check_fail("handoff: after prepare the preserver should hold %s; status exit %d: %s",
			   want, r, pst);
		goto out;
	}
	check_pass();

	/* The simulated kexec: clients gone, daemon stopped, sessions frozen
	 * into incoming ones, the fd store (every sim object) thrown away. */
	dmb_close(adm);
	dmb_close(vmm);
	adm = vmm = NULL;
	a = now_ns();
	if (!ho_stop(x, "while prepared"))
		goto out;
	r = pv_tool(x, "kexec", NULL, NULL, 0);
	if (r != 0) {
		check_fail("handoff: dmb-sim-preserver kexec exited with %d", r);
		pv_dump_log(x);
		goto out;
	}
	fds_store_clear(&x->h);
	one->kexec_ms = (double)(now_ns() - a) / 1e6;

	/* (b) the restore. */
	long from = bench_file_size(x->h.log);
	double w0 = bench_wall_ms_of_day();
	if (ho_start(x, &one->restore_ms) < 0)
		goto out;
	/* Before any reclaim: the state, and bytes through the mappings. */
	adm = ho_connect(x, "bench-handoff-admin");
	if (!adm)
		goto out;
	if (dmb_handoff_status(adm, &hi) < 0) {
		check_fail("handoff: status after the restore: %s", dmb_last_error(adm)->message);
		goto out;
	}
	if (strcmp(hi.state, "reclaiming") || hi.contexts != x->nctx || hi.unclaimed != x->nctx ||
	    hi.degraded) {
		check_fail("handoff: status after the restore: %s, %u context(s), %u unclaimed, %u "
			   "degraded; want reclaiming, %zu, %zu, 0 (%s)", hi.state, hi.contexts,
			   hi.unclaimed, hi.degraded, x->nctx, x->nctx, hi.message);
		goto out;
	}
	check_pass();
	/* The log after the first reply: the daemon writes its "ready" line
	 * right after READY=1, before it serves anything. */
	unsigned long long lc = 0, lm = 0, ldg = 0;
	char line[1200];
	parse_log(x, from, w0, one, &lc, &lm, &ldg, line, sizeof(line));
	if (!line[0]) {
		check_fail("handoff: no \"host handoff: restored ...\" line in the log after the kexec "
			   "(%s)", x->h.log);
		fds_dump_log(&x->h);
		goto out;
	}
	if (lc != x->nctx || lm != x->n || ldg) {
		check_fail("handoff: after a kexec with %llu mapping(s) in %zu context(s) the daemon "
			   "said: %s", (unsigned long long)x->n, x->nctx, line);
		goto out;
	}
	check_pass();
	if (bench_verbose)
		bench_log("handoff %llu mappings: map %.1f ms, prepare %.1f ms, kexec %.1f ms, restore "
			  "%.1f ms; %s", (unsigned long long)x->n, one->map_ms, one->prepare_ms,
			  one->kexec_ms, one->restore_ms, line);
	ho_verify(x, adm, "after the restore, before any reclaim");
	dmb_close(adm);
	adm = NULL;
	ok = ho_reclaim_all(x);
	/* The session was finished: the preserver keeps nothing. */
	if (ok) {
		r = pv_tool(x, "status", NULL, pst, sizeof(pst));
		if (r != 0 || !strstr(pst, "sessions: 0\n")) {
			check_fail("handoff: after the handoff ended the preserver still holds a session; "
				   "status exit %d: %s", r, pst);
			ok = false;
		} else {
			check_pass();
		}
	}
out:
	if (adm)
		dmb_close(adm);
	if (vmm)
		dmb_close(vmm);
	if (x->h.pid)
		ok = ho_stop(x, "after the round") && ok;
	return ok;
}

struct ho_sum {
	double empty, map, prepare, kexec, restore, up, in_daemon, to_ready, lo, hi;
	size_t n;
};

static void summarize(const struct ho_one *v, size_t n, struct ho_sum *s)
{
	double a[HO_MAX_ROUNDS];
	memset(s, 0, sizeof(*s));
	s->n = n;
	if (n == 0)
		return;
#define MED(field, out)                          \
	do {                                     \
		for (size_t i = 0; i < n; i++)   \
			a[i] = v[i].field;       \
		s->out = bench_median(a, n);           \
	} while (0)
	MED(empty_ms, empty);
	MED(map_ms, map);
	MED(prepare_ms, prepare);
	MED(kexec_ms, kexec);
	MED(restore_ms, restore);
	MED(up_ms, up);
	MED(in_daemon_ms, in_daemon);
	MED(to_ready_ms, to_ready);
#undef MED
	s->lo = s->hi = v[0].restore_ms;
	for (size_t i = 1; i < n; i++) {
		s->lo = v[i].restore_ms < s->lo ? v[i].restore_ms : s->lo;
		s->hi = v[i].restore_ms > s->hi ? v[i].restore_ms : s->hi;
	}
}

static bool ho_run(const struct bench_opts *o, uint64_t n, size_t rounds, struct ho_sum *sum)
{
	memset(sum, 0, sizeof(*sum));
	struct ho *x = calloc(1, sizeof(*x));
	if (!x) {
		check_fail("handoff: out of memory");
		return false;
	}
	bool ok = false;
	x->o = o;
	x->n = n;
	x->pv_bin = getenv("DMB_SIM_PRESERVER") ? getenv("DMB_SIM_PRESERVER") : DMB_BENCH_SIM_PRESERVER;
	x->nctx = n > HO_PER_CTX ? (size_t)((n + HO_PER_CTX - 1) / HO_PER_CTX) : 1;
	if (x->nctx > HO_MAX_CTX)
		x->nctx = HO_MAX_CTX;
	struct fds_opts fo = fds_default_opts();
	fo.start_timeout_ms = 120000;
	fo.stop_timeout_ms = 60000;
	fo.quiet = !o->verbose;
	int r = fds_init(&x->h, &fo);
	if (r < 0) {
		check_fail("handoff: the fd-store harness could not start: %s", strerror(-r));
		free(x);
		return false;
	}
	if (pv_start(x) < 0)
		goto out;
	snprintf(x->cfg, sizeof(x->cfg), "%s/dmabroker.conf", x->h.dir);
	FILE *f = fopen(x->cfg, "we");
	if (!f) {
		check_fail("handoff: cannot write %s", x->cfg);
		goto out;
	}
	/* Info level: the phases are read from the log. Grace periods far
	 * beyond a round: nothing is released while the bench looks. */
	fprintf(f,
		"[daemon]\nsocket = %s\nsocket_mode = 0600\nbackend = sim\nlog_level = info\n"
		"[limits]\nmappings_per_context = 4194304\n[persist]\ngrace_period_s = 600\n"
		"[handoff]\npreserver = sim:%s\ngrace_period_s = 600\n",
		x->h.sock, x->pv_sock);
	fclose(f);
	if (o->daemon_prefix || o->daemon_args) {
		snprintf(x->script, sizeof(x->script), "exec %s \"$@\" %s",
			 o->daemon_prefix ? o->daemon_prefix : "", o->daemon_args ? o->daemon_args : "");
		const char *argv[] = { "/bin/sh", "-c", x->script, "sh", o->daemon, "--config", x->cfg, NULL };
		memcpy(x->argv, argv, sizeof(argv));
	} else {
		const char *argv[] = { o->daemon, "--config", x->cfg, NULL };
		memcpy(x->argv, argv, sizeof(argv));
	}

	struct ho_one one[HO_MAX_ROUNDS];
	size_t done = 0;
	for (size_t i = 0; i < rounds && i < HO_MAX_ROUNDS; i++) {
		if (!ho_round(x, &one[done], i == 0))
			goto out;
		done++;
	}
	summarize(one, done, sum);
	ok = true;
out:
	if (x->h.pid)
		ho_stop(x, "at the end");
	if (fds_log_has(&x->h, "Sanitizer") || fds_log_has(&x->h, "runtime error:")) {
		check_fail("handoff: sanitizer report in the daemon's log");
		fds_dump_log(&x->h);
		ok = false;
	}
	pv_stop(x);
	fds_destroy(&x->h);
	free(x);
	return ok;
}

static void ho_report(uint64_t n, size_t nctx, const struct ho_sum *s)
{
	char name[64], base[72], nn[24];
	bench_count_name(nn, sizeof(nn), n);
	snprintf(base, sizeof(base), "mapping %s fresh (batches 4096)", nn);
	snprintf(name, sizeof(name), "handoff prepare %s mappings", nn);
	struct result *r = result_add("handoff", name, "", s->prepare, "ms", s->map, base);
	result_note(r, "request to reply: snapshot + %zu memfd(s) and the journal preserved; %.0f ns "
		    "per mapping", nctx, s->prepare * 1e6 / (double)n);
	snprintf(name, sizeof(name), "handoff restore %s mappings", nn);
	r = result_add("handoff", name, "", s->restore, "ms", s->map, base);
	result_note(r, "start to READY=1: up %.0f, restore %.0f (log), %.0f more to ready; empty "
		    "start %.1f; %zu runs %.0f-%.0f", s->up, s->in_daemon, s->to_ready, s->empty, s->n,
		    s->lo, s->hi);
}

void bench_handoff(const struct bench_opts *o)
{
	const uint64_t sizes[2] = { o->smoke ? 1000 : o->quick ? 4000 : 10000,
				    o->smoke ? 5000 : o->quick ? 40000 : 100000 };
	const size_t rounds[2] = { o->smoke ? 1 : o->quick ? 3 : 5, o->smoke ? 1 : o->quick ? 3 : 5 };
	struct ho_sum s[2];
	size_t nctx[2];
	for (size_t i = 0; i < 2; i++) {
		nctx[i] = sizes[i] > HO_PER_CTX ? (size_t)((sizes[i] + HO_PER_CTX - 1) / HO_PER_CTX) : 1;
		if (!ho_run(o, sizes[i], rounds[i], &s[i]))
			return;
		ho_report(sizes[i], nctx[i], &s[i]);
	}
	/* Per mapping, above the empty start: 100K against 10K (1.0x =
	 * linear), and against mapping them fresh. */
	char name[96], m1[24], m2[24], base[72];
	bench_count_name(m1, sizeof(m1), sizes[0]);
	bench_count_name(m2, sizeof(m2), sizes[1]);
	double p1 = (s[0].restore - s[0].empty) * 1e6 / (double)sizes[0];
	double p2 = (s[1].restore - s[1].empty) * 1e6 / (double)sizes[1];
	snprintf(name, sizeof(name), "handoff restore per mapping at %s", m2);
	snprintf(base, sizeof(base), "same at %s (1.0x = linear)", m1);
	struct result *r = result_add("handoff", name, "", p2, "ns", p1 > 1 ? p1 : 1, base);
	result_note(r, "above the empty start; in-daemon restore (log): %.0f ns at %s, %.0f ns at %s",
		    s[0].in_daemon * 1e6 / (double)sizes[0], m1, s[1].in_daemon * 1e6 / (double)sizes[1],
		    m2);
	snprintf(name, sizeof(name), "handoff vs fresh, per mapping at %s", m2);
	snprintf(base, sizeof(base), "mapping it fresh (batches 4096)");
	r = result_add("handoff", name, "", p2, "ns", s[1].map * 1e6 / (double)sizes[1], base);
	result_note(r, "prepare %.0f ns/mapping at %s (%.0f at %s); stop + preserver kexec %.1f ms",
		    s[1].prepare * 1e6 / (double)sizes[1], m2, s[0].prepare * 1e6 / (double)sizes[0],
		    m1, s[1].kexec);
}
