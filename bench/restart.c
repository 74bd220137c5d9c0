/* Restart time (issue 5): dmabrokerd under the fd-store harness of the
 * integration tests (tests/integration/fdstore.c plays systemd: the
 * listening socket, NOTIFY_SOCKET with FDSTORE=1, LISTEN_FDS on the next
 * start) holding 0, 10,000 and 100,000 mappings (one context; two for
 * 100K), mapped through the broker in batches of 4096. Each restart is
 * timed from the stop signal to READY=1 of the next process: SIGTERM (a
 * clean handover: the daemon exits without unmapping) and SIGKILL (a crash:
 * the journal as the last process left it).
 *
 * Baselines, same run: creating the same mappings fresh through the broker
 * (what a restart that unmapped everything would cost the client), and for 0
 * mappings a fresh start with an empty fd store.
 *
 * What dominates is read from the daemon's own log (info level, timestamps
 * in ms): "backend sim: ..." (the process is up, the configuration read),
 * "restored C context(s) and M mapping(s) in T ms ..." (journal replay plus
 * adoption of every object; T measured inside the daemon) and "... ready
 * (pid ...)" right after READY=1 (between the two: the fresh journal
 * snapshot, the sandbox, the RESTARTED events).
 *
 * Checked after every restart: the client's connection survived (it gets a
 * RESTARTED event), the per-context mapping counts match, a sample of
 * mappings moves the right bytes (dmb_sim_dma_read against the memfd's page
 * tags), a hole between mappings still faults, and the log line says all N
 * were restored with nothing mapped again, removed as stray or lost. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bclient.h"
#include "fdstore.h"

#define RS_PAGES 4096u    /* a 16 MiB region per context, mapped over and over */
#define RS_STRIDE 2u      /* a hole after every mapping */
#define RS_PER_CTX 65536u /* more than this: another context */
#define RS_MAX_CTX 4u
#define RS_SEED 23u
#define RS_MAX_ROUNDS 16u

struct rs_ctx {
	uint64_t id, region;
	uint64_t n;
	int memfd; /* ours; -1 when it is another context's */
};

struct rs {
	const struct bench_opts *o;
	struct fds h;
	char cfg[128];
	const char *argv[10];
	char script[512];
	struct dmb_client *c;
	struct rs_ctx ctx[RS_MAX_CTX];
	bool shared; /* every context registers the first context's memfd */
	size_t nctx;
	uint64_t n;
	unsigned restarted_events;
};

/* What one restart cost, and what the daemon said about it. */
struct rs_one {
	double stop_ms, start_ms, total_ms, first_req_ms;
	/* from the log; < 0 when the line was not found */
	double up_ms;        /* stop signal -> "backend sim" line of the new process */
	double restore_ms;   /* T of the "restored" line */
	double to_ready_ms;  /* "restored" line -> "ready" line */
	uint64_t restored_ctx, restored_maps, remapped, stray, lost;
	bool have_restored;
};

static uint64_t rs_iova(uint64_t i)
{
	return BENCH_IOVA_BASE + i * RS_STRIDE * PG;
}

/* Parses the log written since offset `from`; times relative to t0 (wall
 * ms of day when the stop signal was sent). */
static void parse_log(struct rs *x, long from, double t0, struct rs_one *one, char *restored_line,
		      size_t cap)
{
	one->up_ms = one->restore_ms = one->to_ready_ms = -1;
	one->have_restored = false;
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
		const char *p = strstr(msg, "restored ");
		unsigned long long c, m, ms, re, st, lo;
		if (p && sscanf(p,
				"restored %llu context(s) and %llu mapping(s) in %llu ms without unmapping "
				"(%llu mapped again, %llu stray removed, %llu context(s) lost)",
				&c, &m, &ms, &re, &st, &lo) == 6) {
			t_restored = t;
			one->have_restored = true;
			one->restored_ctx = c;
			one->restored_maps = m;
			one->restore_ms = (double)ms;
			one->remapped = re;
			one->stray = st;
			one->lost = lo;
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

static void on_event(const struct dmb_event *ev, void *opaque)
{
	struct rs *x = opaque;
	if (ev->kind == DMB_EV_RESTARTED)
		x->restarted_events++;
}

static int rs_fill(struct rs *x, struct rs_ctx *c)
{
	struct dmb_map_entry *e = malloc(4096 * sizeof(*e));
	if (!e)
		return -ENOMEM;
	int r = 0;
	for (uint64_t done = 0; done < c->n && r == 0;) {
		size_t k = c->n - done < 4096 ? (size_t)(c->n - done) : 4096;
		for (size_t j = 0; j < k; j++) {
			uint64_t i = done + j;
			e[j] = (struct dmb_map_entry){ c->region, (i % RS_PAGES) * PG, rs_iova(i), PG,
						       DMB_READ | DMB_WRITE };
		}
		r = dmb_map_batch(x->c, c->id, e, k);
		if (r < 0)
			check_fail("restart: map batch at %llu of context %llu: %s",
				   (unsigned long long)done, (unsigned long long)c->id,
				   dmb_last_error(x->c)->message);
		done += k;
	}
	free(e);
	return r;
}

static int rs_unmap_all(struct rs *x, struct rs_ctx *c)
{
	struct dmb_range *rg = malloc(4096 * sizeof(*rg));
	if (!rg)
		return -ENOMEM;
	int r = 0;
	for (uint64_t done = 0; done < c->n && r == 0;) {
		size_t k = c->n - done < 4096 ? (size_t)(c->n - done) : 4096;
		for (size_t j = 0; j < k; j++)
			rg[j] = (struct dmb_range){ rs_iova(done + j), PG };
		r = dmb_unmap_batch(x->c, c->id, rg, k, NULL);
		if (r < 0)
			check_fail("restart: unmap batch: %s", dmb_last_error(x->c)->message);
		done += k;
	}
	free(rg);
	return r;
}

/* Counts, a sample of mappings moving bytes, and a hole that faults. */
static void rs_verify(struct rs *x, const char *when)
{
	for (size_t i = 0; i < x->nctx; i++) {
		struct rs_ctx *c = &x->ctx[i];
		struct dmb_stats st;
		if (dmb_stats(x->c, c->id, &st) < 0) {
			check_fail("restart: %s: stats of context %llu: %s", when,
				   (unsigned long long)c->id, dmb_last_error(x->c)->message);
			continue;
		}
		if (st.mappings != c->n && x->shared && i > 0)
			check_fail("restart: %s: context %llu has %llu mappings, want %llu: its region "
				   "%llu is the memfd context %llu registered too (the same open file), and "
				   "the fd store keeps one fd per open file (systemd drops duplicates)",
				   when, (unsigned long long)c->id, (unsigned long long)st.mappings,
				   (unsigned long long)c->n, (unsigned long long)c->region,
				   (unsigned long long)x->ctx[0].id);
		else if (st.mappings != c->n)
			check_fail("restart: %s: context %llu has %llu mappings, want %llu", when,
				   (unsigned long long)c->id, (unsigned long long)st.mappings,
				   (unsigned long long)c->n);
		else
			check_pass();
		const unsigned K = 16;
		unsigned bad = 0, tried = 0;
		char first[400] = "";
		for (unsigned k = 0; k < K && c->n; k++) {
			uint64_t j = k == K - 1 ? c->n - 1 : (c->n * k) / K + k % 7;
			if (j >= c->n)
				j = c->n - 1;
			uint64_t got = 0, want = page_tag(RS_SEED, j % RS_PAGES);
			int r = dmb_sim_dma_read(x->c, c->id, rs_iova(j), &got, sizeof(got));
			tried++;
			if (r < 0 || got != want) {
				if (!bad++)
					snprintf(first, sizeof(first),
						 "mapping %llu (iova 0x%llx): %s 0x%llx, want 0x%llx",
						 (unsigned long long)j, (unsigned long long)rs_iova(j),
						 r < 0 ? dmb_last_error(x->c)->message : "read",
						 (unsigned long long)got, (unsigned long long)want);
			}
		}
		if (bad)
			check_fail("restart: %s: %u of %u sampled mappings of context %llu did not move "
				   "the right bytes; first: %s", when, bad, tried,
				   (unsigned long long)c->id, first);
		else if (tried)
			check_pass();
		uint64_t got;
		uint64_t hole = rs_iova(c->n / 2) + PG;
		if (dmb_sim_dma_read(x->c, c->id, hole, &got, sizeof(got)) == 0)
			check_fail("restart: %s: the hole at 0x%llx of context %llu reads", when,
				   (unsigned long long)hole, (unsigned long long)c->id);
		else
			check_pass();
	}
}

static int rs_start(struct rs *x, double *ms)
{
	uint64_t a = now_ns();
	int r = fds_start(&x->h, x->argv);
	*ms = (double)(now_ns() - a) / 1e6;
	if (r < 0) {
		check_fail("restart: dmabrokerd did not start under the fd-store harness: %s (log %s)",
			   strerror(-r), x->h.log);
		fds_dump_log(&x->h);
	}
	return r;
}

/* One restart with sig; fills *one. */
static bool rs_restart(struct rs *x, int sig, struct rs_one *one)
{
	memset(one, 0, sizeof(*one));
	long from = bench_file_size(x->h.log);
	double w0 = bench_wall_ms_of_day();
	uint64_t a = now_ns();
	int st = fds_stop(&x->h, sig);
	uint64_t b = now_ns();
	int r = fds_start(&x->h, x->argv);
	uint64_t z = now_ns();
	const char *sn = sig == SIGKILL ? "SIGKILL" : "SIGTERM";
	if (sig == SIGTERM && !(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0))
		check_fail("restart: the daemon did not exit cleanly on SIGTERM (status 0x%x)", st);
	if (r < 0) {
		check_fail("restart: no READY=1 after %s: %s (log %s)", sn, strerror(-r), x->h.log);
		return false;
	}
	one->stop_ms = (double)(b - a) / 1e6;
	one->start_ms = (double)(z - b) / 1e6;
	one->total_ms = (double)(z - a) / 1e6;

	/* The RESTARTED event is in the socket before READY=1. Read it first,
	 * as a client polling its fd would: libdmabroker takes a RESTARTED
	 * event that arrives while a call waits (even one queued before the
	 * call was sent) as "your request was lost" and returns -EAGAIN,
	 * although the new process goes on to carry the request out. */
	x->restarted_events = 0;
	if (dmb_dispatch(x->c, on_event, x) < 0 || x->restarted_events != 1)
		check_fail("restart: %u RESTARTED events after %s, want 1", x->restarted_events, sn);
	/* The first request the new process serves on the old connection. */
	struct dmb_stats s;
	uint64_t c0 = now_ns();
	int q = dmb_stats(x->c, 0, &s);
	one->first_req_ms = (double)(now_ns() - c0) / 1e6;
	if (q < 0)
		check_fail("restart: first request after %s: %s", sn, dmb_last_error(x->c)->message);

	char line[1200];
	parse_log(x, from, w0, one, line, sizeof(line));
	if (!one->have_restored)
		check_fail("restart: no \"restored ... mapping(s)\" line in the log after %s (%s)", sn,
			   x->h.log);
	else if (one->restored_maps != x->n || one->restored_ctx != x->nctx || one->remapped ||
		 one->stray || one->lost)
		check_fail("restart: after %s with %llu mapping(s) in %zu context(s) the daemon said: %s",
			   sn, (unsigned long long)x->n, x->nctx, line);
	else
		check_pass();
	if (bench_verbose)
		bench_log("restart %s, %llu mappings: stop %.1f ms, start %.1f ms; %s", sn,
			  (unsigned long long)x->n, one->stop_ms, one->start_ms, line);
	rs_verify(x, sig == SIGKILL ? "after SIGKILL" : "after SIGTERM");
	return true;
}

/* Medians of the restarts of one kind. */
struct rs_sum {
	double total, stop, start, up, restore, to_ready, first_req, lo, hi;
	size_t n;
};

static void summarize(const struct rs_one *v, size_t n, struct rs_sum *s)
{
	double a[RS_MAX_ROUNDS];
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
	MED(total_ms, total);
	MED(stop_ms, stop);
	MED(start_ms, start);
	MED(up_ms, up);
	MED(restore_ms, restore);
	MED(to_ready_ms, to_ready);
	MED(first_req_ms, first_req);
#undef MED
	s->lo = s->hi = v[0].total_ms;
	for (size_t i = 1; i < n; i++) {
		s->lo = v[i].total_ms < s->lo ? v[i].total_ms : s->lo;
		s->hi = v[i].total_ms > s->hi ? v[i].total_ms : s->hi;
	}
}

struct rs_result {
	uint64_t n;
	size_t nctx;
	double fresh_start_ms;  /* median fresh start, empty store */
	double map_ms, remap_ms, unmap_ms;
	struct rs_sum term, kill;
	bool ok;
};

/* shared: two contexts register one memfd (n mappings in all). */
static void rs_run(const struct bench_opts *o, uint64_t n, size_t rounds, bool shared,
		   struct rs_result *res)
{
	memset(res, 0, sizeof(*res));
	res->n = n;
	struct rs *x = calloc(1, sizeof(*x));
	if (!x) {
		check_fail("restart: out of memory");
		return;
	}
	x->o = o;
	x->n = n;
	x->shared = shared;
	for (size_t i = 0; i < RS_MAX_CTX; i++)
		x->ctx[i].memfd = -1;
	struct fds_opts fo = fds_default_opts();
	fo.start_timeout_ms = 120000;
	fo.stop_timeout_ms = 60000;
	fo.quiet = !o->verbose;
	int r = fds_init(&x->h, &fo);
	if (r < 0) {
		check_fail("restart: the fd-store harness could not start: %s", strerror(-r));
		free(x);
		return;
	}
	snprintf(x->cfg, sizeof(x->cfg), "%s/dmabroker.conf", x->h.dir);
	FILE *f = fopen(x->cfg, "we");
	if (!f) {
		check_fail("restart: cannot write %s", x->cfg);
		goto out;
	}
	/* Info level: the phases are read from the log (nothing on the map
	 * path logs at info). socket= is the harness's listener. */
	fprintf(f,
		"[daemon]\nsocket = %s\nsocket_mode = 0600\nbackend = sim\nlog_level = info\n"
		"[limits]\nmappings_per_context = 4194304\n[persist]\ngrace_period_s = 600\n",
		x->h.sock);
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

	/* Baseline for 0: fresh starts with an empty store. */
	double fresh[RS_MAX_ROUNDS];
	size_t nf = 0;
	for (size_t i = 0; i < rounds; i++) {
		if (i > 0) {
			fds_stop(&x->h, SIGTERM);
			fds_store_clear(&x->h);
		}
		if (rs_start(x, &fresh[nf]) < 0)
			goto out;
		nf++;
	}
	res->fresh_start_ms = bench_median(fresh, nf);

	r = dmb_connect(x->h.sock, "bench-restart", &x->c);
	if (r < 0) {
		check_fail("restart: connect: %s", strerror(-r));
		goto out;
	}
	x->nctx = shared ? 2 : n > RS_PER_CTX ? (size_t)((n + RS_PER_CTX - 1) / RS_PER_CTX) : 1;
	if (x->nctx > RS_MAX_CTX)
		x->nctx = RS_MAX_CTX;
	res->nctx = x->nctx;
	for (size_t i = 0; i < x->nctx; i++) {
		struct rs_ctx *c = &x->ctx[i];
		c->n = n / x->nctx + (i < n % x->nctx);
		/* Every context its own memfd: a memfd registered in two contexts
		 * does not survive a restart (the shared run checks that). */
		if (i == 0 || !shared) {
			c->memfd = bench_memfd(RS_PAGES * PG, RS_SEED, RS_PAGES);
			if (c->memfd < 0) {
				check_fail("restart: memfd: %s", strerror(-c->memfd));
				goto out;
			}
		}
		struct dmb_region_info ri;
		if (dmb_context_create(x->c, "bench-restart", &c->id) < 0 ||
		    dmb_region_register(x->c, c->id, c->memfd >= 0 ? c->memfd : x->ctx[0].memfd, 0,
					&ri) < 0) {
			check_fail("restart: context/region: %s", dmb_last_error(x->c)->message);
			goto out;
		}
		c->region = ri.region;
	}
	uint64_t a = now_ns();
	for (size_t i = 0; i < x->nctx; i++)
		if (rs_fill(x, &x->ctx[i]) < 0)
			goto out;
	res->map_ms = (double)(now_ns() - a) / 1e6;
	rs_verify(x, "after mapping");

	/* SIGKILL first: the journal as the mapping left it; then pairs. */
	struct rs_one term[RS_MAX_ROUNDS], kill[RS_MAX_ROUNDS];
	size_t nt = 0, nk = 0;
	for (size_t i = 0; i < rounds; i++) {
		/* The shared run: one clean handover shows it (a crash loses the
		 * same). */
		if (!shared && !rs_restart(x, SIGKILL, &kill[nk]))
			goto out;
		nk += !shared;
		if (!rs_restart(x, SIGTERM, &term[nt]))
			goto out;
		nt++;
	}
	summarize(term, nt, &res->term);
	summarize(kill, nk, &res->kill);

	if (shared) {
		res->ok = true;
		goto out;
	}
	/* The restarted daemon maps as fast as the first one. */
	a = now_ns();
	for (size_t i = 0; i < x->nctx; i++)
		if (rs_unmap_all(x, &x->ctx[i]) < 0)
			goto out;
	uint64_t b = now_ns();
	for (size_t i = 0; i < x->nctx; i++)
		if (rs_fill(x, &x->ctx[i]) < 0)
			goto out;
	res->unmap_ms = (double)(b - a) / 1e6;
	res->remap_ms = (double)(now_ns() - b) / 1e6;
	rs_verify(x, "after unmapping and mapping again");
	res->ok = true;
out:
	if (x->c)
		dmb_close(x->c);
	for (size_t i = 0; i < RS_MAX_CTX; i++)
		if (x->ctx[i].memfd >= 0)
			close(x->ctx[i].memfd);
	if (x->h.pid) {
		int st = fds_stop(&x->h, SIGTERM);
		if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0))
			check_fail("restart: the last daemon did not exit cleanly (status 0x%x)", st);
	}
	if (fds_log_has(&x->h, "Sanitizer") || fds_log_has(&x->h, "runtime error:")) {
		check_fail("restart: sanitizer report in the daemon's log");
		fds_dump_log(&x->h);
	}
	fds_destroy(&x->h);
	free(x);
}

static void rs_report(const struct rs_result *res)
{
	const char *B = "restart";
	char name[64], base[72], nn[24];
	bench_count_name(nn, sizeof(nn), res->n);
	for (int k = 0; k < 2; k++) {
		const struct rs_sum *s = k ? &res->kill : &res->term;
		const char *sn = k ? "SIGKILL" : "SIGTERM";
		snprintf(name, sizeof(name), "restart %s mappings, %s", nn, sn);
		double bv;
		if (res->n == 0) {
			bv = res->fresh_start_ms;
			snprintf(base, sizeof(base), "fresh start, empty fd store");
		} else {
			bv = res->map_ms;
			snprintf(base, sizeof(base), "mapping %s fresh (batches 4096)", nn);
		}
		struct result *r = result_add(B, name, "", s->total, "ms", bv, base);
		result_note(r, "stop %.1f + start %.1f ms: up %.0f, restore %.0f (log), %.0f more to ready; "
			    "1st request %.2f; %zu runs %.0f-%.0f",
			    s->stop, s->start, s->up, s->restore, s->to_ready, s->first_req, s->n, s->lo,
			    s->hi);
	}
}

void bench_restart(const struct bench_opts *o)
{
	const uint64_t sizes[3] = { 0, o->smoke ? 2000 : o->quick ? 4000 : 10000,
				    o->smoke ? 20000 : o->quick ? 40000 : 100000 };
	const size_t rounds = o->smoke ? 1 : o->quick ? 3 : 7;
	struct rs_result res[3];
	for (size_t i = 0; i < 3; i++) {
		rs_run(o, sizes[i], rounds, false, &res[i]);
		if (res[i].ok)
			rs_report(&res[i]);
	}
	/* Correctness only: one memfd registered in two contexts (guest RAM
	 * that two contexts map), 16 mappings, one restart of each kind. */
	struct rs_result sh;
	rs_run(o, 16, 1, true, &sh);
	if (!res[0].ok || !res[1].ok || !res[2].ok)
		return;
	/* Linear in mappings: the cost per mapping above the empty restart is
	 * the same at 10K and at 100K. */
	char name[96], m1[24], m2[24], base[72];
	bench_count_name(m1, sizeof(m1), sizes[1]);
	bench_count_name(m2, sizeof(m2), sizes[2]);
	for (int k = 0; k < 2; k++) {
		const struct rs_sum *s0 = k ? &res[0].kill : &res[0].term;
		const struct rs_sum *s1 = k ? &res[1].kill : &res[1].term;
		const struct rs_sum *s2 = k ? &res[2].kill : &res[2].term;
		double p1 = (s1->total - s0->total) * 1e6 / (double)sizes[1];
		double p2 = (s2->total - s0->total) * 1e6 / (double)sizes[2];
		snprintf(name, sizeof(name), "restart per mapping at %s, %s", m2, k ? "SIGKILL" : "SIGTERM");
		snprintf(base, sizeof(base), "same at %s (1.0x = linear)", m1);
		struct result *r = result_add("restart", name, "", p2, "ns", p1 > 1 ? p1 : 1, base);
		result_note(r, "above the empty restart (%.1f ms); in-daemon restore (log): %.0f ns at %s, "
			    "%.0f ns at %s", s0->total, s1->restore * 1e6 / (double)sizes[1], m1,
			    s2->restore * 1e6 / (double)sizes[2], m2);
	}
	/* Per mapping, against mapping it fresh. */
	const struct rs_result *big = &res[2];
	snprintf(name, sizeof(name), "restart vs fresh, per mapping at %s", m2);
	snprintf(base, sizeof(base), "mapping it fresh (batches 4096)");
	struct result *r = result_add("restart", name, "", (big->term.total - res[0].term.total) * 1e6 /
				      (double)big->n, "ns", big->map_ms * 1e6 / (double)big->n, base);
	result_note(r, "SIGTERM, above the empty restart; after the restarts: unmap %.0f ms, map again "
		    "%.0f ms (first map %.0f ms)", big->unmap_ms, big->remap_ms, big->map_ms);
}
