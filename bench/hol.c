/* Head-of-line: one client's small maps while another client maps a huge
 * range, against the same small maps with the other client idle. The daemon
 * runs with --sim-populate, so a map costs what pinning costs: one fault per
 * page of the range. The huge client punches the memfd's pages out after
 * each unmap so that every huge map faults its pages in again.
 *
 * The small client issues a map (then its unmap) every PACE_US on a fixed
 * schedule and measures each map from the time it was due, not from when it
 * could be sent: a client stuck behind a huge map is not allowed to hide the
 * requests it could not send (coordinated omission). Ticks the stall
 * swallowed are recorded with the latency they would have seen. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bclient.h"
#include "inproc.h"

#define PACE_NS UINT64_C(200000) /* one small map every 200 us */
#define MAX_HUGE 4096
#define MAX_TICKS 400000u
#define HUGE_IOVA (UINT64_C(1) << 40)

struct hol_shared {
	_Atomic int ready;
	_Atomic int stop;
	_Atomic unsigned n_huge;
	uint64_t start[MAX_HUGE], end[MAX_HUGE];
	unsigned passes, failures;
	char err[300];
};

struct ticks {
	uint64_t *at;  /* when the map was due (or sent, if the client was on time) */
	uint64_t *lat; /* ns */
	size_t n, cap;
};

static void ticks_add(struct ticks *t, uint64_t at, uint64_t lat)
{
	if (t->n < t->cap) {
		t->at[t->n] = at;
		t->lat[t->n] = lat;
		t->n++;
	}
}

/* Small maps on a fixed schedule from now until `len_ns` later. */
static void paced(struct bsession *s, uint64_t len_ns, struct ticks *t, unsigned *errors)
{
	uint64_t due = now_ns(), end = due + len_ns, prev_done = 0;
	for (unsigned j = 0; due < end && t->n < t->cap && j < MAX_TICKS; j++) {
		uint64_t start;
		if (prev_done > due) {
			start = due; /* late because the broker was: count from due */
		} else {
			sleep_until_ns(due);
			start = now_ns();
		}
		uint64_t page = j % 64;
		struct dmb_map_entry e = { s->region, page * PG, BENCH_IOVA_BASE + page * PG, PG,
					   DMB_READ | DMB_WRITE };
		int r = dmb_map(s->c, s->ctx, &e);
		uint64_t t1 = now_ns();
		int u = r < 0 ? r : dmb_unmap(s->c, s->ctx, e.iova, PG, NULL);
		uint64_t t2 = now_ns();
		if (r < 0 || u < 0) {
			(*errors)++;
			if (*errors > 100)
				break;
		}
		ticks_add(t, start, t1 - start);
		/* Ticks that fell due while this pair was in flight. */
		uint64_t next = due + PACE_NS;
		while (next < t2 && next < end) {
			ticks_add(t, next, t2 - next);
			next += PACE_NS;
		}
		due = next;
		prev_done = t2;
	}
}

/* The huge client: map the whole memfd, check both ends, unmap, punch. */
static void huge_client(const char *sock, uint64_t huge, int go_fd, struct hol_shared *sh,
			uint64_t max_ns)
{
	/* The counters came with fork(): report only this process's checks. */
	unsigned pass0 = check_passes(), fail0 = check_failures();
	struct bsession a;
	if (bsession_open(&a, sock, "bench-hol-huge", huge, 14, 0) < 0) {
		snprintf(sh->err, sizeof(sh->err), "huge client: no session");
		atomic_store(&sh->ready, -1);
		_exit(1);
	}
	atomic_store(&sh->ready, 1);
	char ch;
	if (read(go_fd, &ch, 1) < 0) /* EOF: go */
		_exit(1);
	uint64_t last = huge / PG - 1, deadline = now_ns() + max_ns;
	for (unsigned it = 0; it < MAX_HUGE && !atomic_load(&sh->stop) && now_ns() < deadline; it++) {
		uint64_t v0 = page_tag(14, 0), v1 = page_tag(14, last);
		if (pwrite(a.memfd, &v0, 8, 0) != 8 || pwrite(a.memfd, &v1, 8, (off_t)(last * PG)) != 8)
			break;
		struct dmb_map_entry e = { a.region, 0, HUGE_IOVA, huge, DMB_READ | DMB_WRITE };
		uint64_t t0 = now_ns();
		int r = dmb_map(a.c, a.ctx, &e);
		uint64_t t1 = now_ns();
		if (r < 0) {
			snprintf(sh->err, sizeof(sh->err), "huge map: %s", dmb_last_error(a.c)->message);
			check_fail("%s", sh->err);
			break;
		}
		unsigned k = atomic_load(&sh->n_huge);
		sh->start[k] = t0;
		sh->end[k] = t1;
		atomic_store(&sh->n_huge, k + 1);
		if (it == 0) {
			check_mapped(&a, HUGE_IOVA, 0, "huge map, first page");
			check_mapped(&a, HUGE_IOVA + last * PG, last, "huge map, last page");
		}
		if (dmb_unmap(a.c, a.ctx, HUGE_IOVA, huge, NULL) < 0) {
			check_fail("huge unmap: %s", dmb_last_error(a.c)->message);
			break;
		}
		if (it == 0)
			check_unmapped(&a, HUGE_IOVA, "huge unmap");
		/* Give the pages back, so the next map faults them in again. */
		fallocate(a.memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)huge);
	}
	sh->passes = check_passes() - pass0;
	sh->failures = check_failures() - fail0;
	bsession_close(&a);
	_exit(0);
}

static bool during(const struct hol_shared *sh, unsigned n, uint64_t at)
{
	/* Intervals are in time order; n is small (a few per second). */
	for (unsigned k = 0; k < n; k++)
		if (at >= sh->start[k] && at < sh->end[k])
			return true;
	return false;
}

static void run_placement(const struct bench_opts *o, struct bdaemon *d, uint64_t huge,
			  bool pinned)
{
	const char *place = pinned ? "pinned" : "unpinned";
	uint64_t window = (o->smoke ? 1500 : o->quick ? 4000 : 10000) * UINT64_C(1000000);
	uint64_t base_len = (o->smoke ? 500 : o->quick ? 1500 : 3000) * UINT64_C(1000000);
	int cpu = pinned ? pin_cpu() : -1;

	struct bsession s;
	if (bsession_open(&s, d->sock, "bench-hol-small", 64 * PG, 15, 64) < 0) {
		check_fail("hol: no session");
		return;
	}
	struct hol_shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		check_fail("hol: mmap: %s", strerror(errno));
		bsession_close(&s);
		return;
	}
	memset(sh, 0, sizeof(*sh));
	int go[2];
	if (pipe2(go, O_CLOEXEC) < 0) {
		check_fail("hol: pipe: %s", strerror(errno));
		munmap(sh, sizeof(*sh));
		bsession_close(&s);
		return;
	}
	pid_t a = fork();
	if (a == 0) {
		close(go[1]);
		huge_client(d->sock, huge, go[0], sh, window + 60 * UINT64_C(1000000000));
	}
	close(go[0]);
	for (int i = 0; i < 3000 && atomic_load(&sh->ready) == 0; i++)
		sleep_ms(10);

	set_affinity(0, cpu);
	set_affinity_all_threads(d->pid, cpu);
	if (a > 0)
		set_affinity(a, cpu);

	struct ticks base = { malloc(MAX_TICKS * 8), malloc(MAX_TICKS * 8), 0, MAX_TICKS };
	struct ticks win = { malloc(MAX_TICKS * 8), malloc(MAX_TICKS * 8), 0, MAX_TICKS };
	unsigned errors = 0;
	if (!base.at || !base.lat || !win.at || !win.lat || a < 0 || atomic_load(&sh->ready) != 1) {
		check_fail("hol: set-up failed %s", sh->err);
		close(go[1]);
		goto out;
	}

	/* The same small maps with the huge client connected but idle. */
	paced(&s, base_len, &base, &errors);

	char perf_name[32];
	snprintf(perf_name, sizeof(perf_name), "hol-%s", place);
	pid_t pids[1] = { d->pid };
	pid_t perf = perf_start(o, perf_name, pids, 1);
	close(go[1]); /* go */
	paced(&s, window, &win, &errors);
	atomic_store(&sh->stop, 1);
	perf_stop(perf);
	if (errors)
		check_fail("hol (%s): %u small map errors: %s", place, errors,
			   dmb_last_error(s.c)->message);

out:
	if (a > 0) {
		int st = 0;
		pid_t w = 0;
		for (int i = 0; i < 6000 && w == 0; i++) {
			w = waitpid(a, &st, WNOHANG);
			if (w == 0)
				sleep_ms(10);
		}
		if (w == 0) {
			kill(a, SIGKILL);
			waitpid(a, &st, 0);
			check_fail("hol: the huge client did not finish");
		}
		check_merge(sh->passes, sh->failures);
	}
	set_affinity(0, -1);
	set_affinity_all_threads(d->pid, -1);

	unsigned nh = atomic_load(&sh->n_huge);
	if (nh > MAX_HUGE)
		nh = MAX_HUGE;
	struct samples sb, sd, sw, hm;
	samples_init(&sb, base.n);
	samples_init(&sd, win.n);
	samples_init(&sw, win.n);
	samples_init(&hm, nh);
	for (size_t i = 0; i < base.n; i++)
		samples_add(&sb, base.lat[i]);
	for (size_t i = 0; i < win.n; i++) {
		samples_add(&sw, win.lat[i]);
		if (during(sh, nh, win.at[i]))
			samples_add(&sd, win.lat[i]);
	}
	for (unsigned k = 0; k < nh; k++)
		samples_add(&hm, sh->end[k] - sh->start[k]);

	if (nh == 0 && !o->smoke)
		check_fail("hol (%s): no huge map completed in the window", place);
	const char *B = "head-of-line";
	char bn[72];
	snprintf(bn, sizeof(bn), "other client idle");
	struct result *r = result_add(B, "small map p50 during huge map", place,
				      samples_pct(&sd, 50) / 1e3, "us", samples_pct(&sb, 50) / 1e3, bn);
	result_note(r, "%zu ticks due while one of %u huge maps ran (of %zu in the window)", sd.n, nh,
		    sw.n);
	r = result_add(B, "small map p99 during huge map", place, samples_pct(&sd, 99) / 1e3, "us",
		       samples_pct(&sb, 99) / 1e3, bn);
	result_target_max(r, 2000, "p99 < 2 ms");
	result_note(r, "idle-client baseline: p99.9 %.0f us, max %.1f ms", samples_pct(&sb, 99.9) / 1e3,
		    samples_max(&sb) / 1e6);
	r = result_add(B, "small map p99, whole window", place, samples_pct(&sw, 99) / 1e3, "us",
		       samples_pct(&sb, 99) / 1e3, bn);
	result_note(r, "max %.0f ms; one small map every %llu us, latency from when it was due",
		    samples_max(&sw) / 1e6, (unsigned long long)(PACE_NS / 1000));
	char name[64];
	if (huge >= UINT64_C(1) << 30)
		snprintf(name, sizeof(name), "huge map %.0f GiB (populate) p50", (double)huge / (1 << 30));
	else
		snprintf(name, sizeof(name), "huge map %.0f MiB (populate) p50", (double)huge / (1 << 20));
	/* The baseline is set by bench_hol once the floor is measured. */
	result_add(B, name, place, samples_pct(&hm, 50) / 1e6, "ms", -1, "sim ops->map direct");

	samples_free(&sb);
	samples_free(&sd);
	samples_free(&sw);
	samples_free(&hm);
	free(base.at);
	free(base.lat);
	free(win.at);
	free(win.lat);
	munmap(sh, sizeof(*sh));
	bsession_close(&s);
}

void bench_hol(const struct bench_opts *o)
{
	uint64_t huge = o->smoke ? UINT64_C(64) << 20 : o->quick ? UINT64_C(2) << 30 : UINT64_C(4) << 30;
	struct bdaemon d;
	if (bdaemon_start(&d, o, true) < 0) {
		check_fail("hol: the daemon did not start");
		return;
	}
	/* The huge-map rows get their floor afterwards. */
	size_t first = results_count();
	run_placement(o, &d, huge, true);
	run_placement(o, &d, huge, false);
	bdaemon_stop(&d);

	/* The floor for the huge map: the sim's populate called directly, after
	 * the broker's runs, so that both fault in pages the host has backed
	 * already (first touch of fresh guest memory is slower in a VM); best of
	 * two. */
	double floor_ms = 0;
	for (int i = 0; i < 2; i++) {
		struct direct_result dr = { 0, 0, 0, 0, 0 };
		if (inproc_direct_huge(huge, &dr) < 0)
			check_fail("hol: the direct huge map failed");
		else if (floor_ms == 0 || dr.huge_ms < floor_ms)
			floor_ms = dr.huge_ms;
	}
	for (size_t i = first; i < results_count(); i++) {
		struct result *r = result_at(i);
		if (r && !strncmp(r->name, "huge map", 8))
			result_set_base(r, floor_ms);
	}
}
