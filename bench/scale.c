/* Scale: 1,000,000 mappings in one context, inserted through the broker in
 * batches of 4096; then single overlap checks (a map that must fail with
 * ALREADY_EXISTS), unmaps and maps into holes at 1M against the same at 1K
 * mappings, the daemon's bytes per mapping from its RSS, and the same
 * questions asked of the core in-process (map_find, map_check_free, heap per
 * mapping from mallinfo2), where no socket hides an O(n). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bclient.h"
#include "inproc.h"

#define SC_PAGES 16384u /* 64 MiB region, mapped over and over */
#define SC_STRIDE 2u    /* every other page: the holes take single maps */
#define SC_BATCH 4096u

static uint64_t sc_iova(uint64_t i)
{
	return BENCH_IOVA_BASE + i * SC_STRIDE * PG;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

struct sc_fill {
	double rate, first_rate, last_rate;
	uint64_t done;
};

static int sc_fill(struct bsession *s, uint64_t n, struct sc_fill *f, uint64_t budget_ns)
{
	struct dmb_map_entry *e = malloc(SC_BATCH * sizeof(*e));
	if (!e)
		return -ENOMEM;
	uint64_t nb = (n + SC_BATCH - 1) / SC_BATCH, fns = 0, lns = 0, fn = 0, ln = 0;
	uint64_t deadline = now_ns() + budget_ns;
	int r = 0;
	memset(f, 0, sizeof(*f));
	uint64_t t0 = now_ns();
	for (uint64_t b = 0; b < nb && r == 0 && now_ns() < deadline; b++) {
		size_t k = n - b * SC_BATCH < SC_BATCH ? (size_t)(n - b * SC_BATCH) : SC_BATCH;
		for (size_t j = 0; j < k; j++) {
			uint64_t i = b * SC_BATCH + j;
			e[j] = (struct dmb_map_entry){ s->region, (i % SC_PAGES) * PG, sc_iova(i), PG,
						       DMB_READ | DMB_WRITE };
		}
		uint64_t a = now_ns();
		r = dmb_map_batch(s->c, s->ctx, e, k);
		uint64_t z = now_ns();
		if (r < 0) {
			check_fail("scale: map batch at %llu: %s", (unsigned long long)f->done,
				   dmb_last_error(s->c)->message);
			break;
		}
		f->done += k;
		if (b < 16) {
			fns += z - a;
			fn += k;
		}
		if (b + 16 >= nb) {
			lns += z - a;
			ln += k;
		}
	}
	uint64_t t1 = now_ns();
	free(e);
	f->rate = (double)f->done / ((double)(t1 - t0) / 1e9);
	f->first_rate = fns ? (double)fn / ((double)fns / 1e9) : 0;
	f->last_rate = lns ? (double)ln / ((double)lns / 1e9) : 0;
	return r;
}

struct sc_ops {
	double overlap_p50, unmap_p50, hole_p50;
};

/* Single-request latencies against a context holding n mappings. */
static void sc_single_ops(struct bsession *s, uint64_t n, unsigned k, struct sc_ops *out)
{
	struct samples ov, un, ho;
	samples_init(&ov, k);
	samples_init(&un, k);
	samples_init(&ho, k);
	uint64_t seed = 0x2545f4914f6cdd1du + n;
	unsigned bad = 0;
	uint64_t deadline = now_ns() + 20 * UINT64_C(1000000000);
	for (unsigned j = 0; j < k && now_ns() < deadline; j++) {
		uint64_t i = rnd(&seed) % n;
		/* A map on top of mapping i: must fail ALREADY_EXISTS. */
		struct dmb_map_entry e = { s->region, 0, sc_iova(i), PG, DMB_READ };
		uint64_t t0 = now_ns();
		int r = dmb_map(s->c, s->ctx, &e);
		uint64_t t1 = now_ns();
		if (r != -EEXIST || dmb_last_error(s->c)->code != DMB_ALREADY_EXISTS)
			bad++;
		samples_add(&ov, t1 - t0);

		/* Unmap mapping i, then put it back (untimed). */
		t0 = now_ns();
		r = dmb_unmap(s->c, s->ctx, sc_iova(i), PG, NULL);
		t1 = now_ns();
		bad += r != 0;
		samples_add(&un, t1 - t0);
		e = (struct dmb_map_entry){ s->region, (i % SC_PAGES) * PG, sc_iova(i), PG,
					    DMB_READ | DMB_WRITE };
		bad += dmb_map(s->c, s->ctx, &e) != 0;

		/* A map into the hole after mapping i (unmapped again, untimed). */
		e.iova = sc_iova(i) + PG;
		t0 = now_ns();
		r = dmb_map(s->c, s->ctx, &e);
		t1 = now_ns();
		bad += r != 0;
		samples_add(&ho, t1 - t0);
		bad += dmb_unmap(s->c, s->ctx, e.iova, PG, NULL) != 0;
	}
	if (bad)
		check_fail("scale: %u single operations at %llu mappings misbehaved (last: %s)", bad,
			   (unsigned long long)n, dmb_last_error(s->c)->message);
	else
		check_pass();
	out->overlap_p50 = samples_pct(&ov, 50) / 1e3;
	out->unmap_p50 = samples_pct(&un, 50) / 1e3;
	out->hole_p50 = samples_pct(&ho, 50) / 1e3;
	samples_free(&ov);
	samples_free(&un);
	samples_free(&ho);
}

static double sc_unmap_all_batches(struct bsession *s, uint64_t n)
{
	struct dmb_range *rg = malloc(SC_BATCH * sizeof(*rg));
	if (!rg)
		return 0;
	uint64_t done = 0, deadline = now_ns() + 60 * UINT64_C(1000000000);
	int r = 0;
	uint64_t t0 = now_ns();
	while (done < n && r == 0 && now_ns() < deadline) {
		size_t k = n - done < SC_BATCH ? (size_t)(n - done) : SC_BATCH;
		for (size_t j = 0; j < k; j++)
			rg[j] = (struct dmb_range){ sc_iova(done + j), PG };
		r = dmb_unmap_batch(s->c, s->ctx, rg, k, NULL);
		if (r == 0)
			done += k;
	}
	uint64_t t1 = now_ns();
	if (r < 0)
		check_fail("scale: unmap batch: %s", dmb_last_error(s->c)->message);
	free(rg);
	return (double)done / ((double)(t1 - t0) / 1e9);
}

/* RssShmem of pid in kB: the sim's table memfds (its model of the kernel's
 * page-table state, which with a real backend lives in the kernel). */
static long proc_shmem_kb(pid_t pid)
{
	return proc_status_kb(pid, "RssShmem");
}

void bench_scale(const struct bench_opts *o)
{
	const uint64_t big = o->smoke ? 20000 : 1000000, small = 1000;
	const unsigned k = o->smoke ? 200 : o->quick ? 2000 : 5000;
	const char *bigname = o->smoke ? "20K" : "1M";
	char name[64], base[72];

	struct bdaemon d;
	if (bdaemon_start(&d, o, false) < 0) {
		check_fail("scale: the daemon did not start");
		return;
	}
	struct bsession s, s1k;
	if (bsession_open(&s, d.sock, "bench-scale", SC_PAGES * PG, 13, SC_PAGES) < 0) {
		check_fail("scale: no session");
		bdaemon_stop(&d);
		return;
	}
	if (bsession_open(&s1k, d.sock, "bench-scale-1k", SC_PAGES * PG, 13, SC_PAGES) < 0) {
		check_fail("scale: no second session");
		bsession_close(&s);
		bdaemon_stop(&d);
		return;
	}

	/* Warm the daemon's buffers and allocator with one full batch each way,
	 * and fill the 1K context, before the RSS baseline. */
	struct sc_fill f1k, fbig;
	sc_fill(&s, SC_BATCH, &fbig, 10 * UINT64_C(1000000000));
	sc_unmap_all_batches(&s, SC_BATCH);
	sc_fill(&s1k, small, &f1k, 10 * UINT64_C(1000000000));
	long rss0 = proc_rss_kb(d.pid), shm0 = proc_shmem_kb(d.pid);

	pid_t pids[2] = { d.pid, getpid() };
	pid_t perf = perf_start(o, "scale-insert", pids, 2);
	sc_fill(&s, big, &fbig, 120 * UINT64_C(1000000000));
	perf_stop(perf);
	long rss1 = proc_rss_kb(d.pid), shm1 = proc_shmem_kb(d.pid);
	for (uint64_t j = 0; j < 4 && fbig.done; j++) {
		uint64_t i = (fbig.done - 1) * j / 3;
		check_mapped(&s, sc_iova(i), i % SC_PAGES, "scale map");
	}
	if (fbig.done < big) {
		check_fail("scale: only %llu of %llu mappings inserted", (unsigned long long)fbig.done,
			   (unsigned long long)big);
		bsession_close(&s1k);
		bsession_close(&s);
		bdaemon_stop(&d);
		return;
	}

	struct sc_ops at_big, at_small;
	sc_single_ops(&s, big, k, &at_big);
	sc_single_ops(&s1k, small, k, &at_small);
	double unmap_rate = sc_unmap_all_batches(&s, big);
	check_unmapped(&s, sc_iova(big / 2), "scale unmap");
	long rss2 = proc_rss_kb(d.pid);

	bsession_close(&s1k);
	bsession_close(&s);
	bdaemon_stop(&d);

	/* The floors, and the same questions asked in-process. */
	struct direct_result dr = { 0, 0, 0, 0, 0 };
	inproc_direct(big, SC_PAGES, SC_STRIDE, &dr);
	struct scale_result ib, is;
	int rb = inproc_scale(big, k * 20, &ib);
	int rs = inproc_scale(small, k * 20, &is);

	const char *B = "scale";
	snprintf(name, sizeof(name), "insert %s (batches of 4096)", bigname);
	struct result *r = result_add(B, name, "unpinned", fbig.rate, "entries/s", dr.map_rate,
				      "sim ops->map direct");
	result_note(r, "broker; the core's map_batch in-process: %.2f M/s", ib.insert_rate / 1e6);
	snprintf(name, sizeof(name), "insert rate, last 64K of %s", bigname);
	result_add(B, name, "unpinned", fbig.last_rate, "entries/s", fbig.first_rate,
		   "first 64K (near-empty tree)");
	snprintf(name, sizeof(name), "unmap %s (batches of 4096)", bigname);
	result_add(B, name, "unpinned", unmap_rate, "entries/s", dr.unmap_rate, "sim ops->unmap direct");

	snprintf(base, sizeof(base), "same at 1K mappings");
	snprintf(name, sizeof(name), "overlap map RTT p50 at %s", bigname);
	r = result_add(B, name, "unpinned", at_big.overlap_p50, "us", at_small.overlap_p50, base);
	result_note(r, "a map on an existing mapping: ALREADY_EXISTS; O(n) would be ~1000x");
	snprintf(name, sizeof(name), "unmap RTT p50 at %s", bigname);
	result_add(B, name, "unpinned", at_big.unmap_p50, "us", at_small.unmap_p50, base);
	snprintf(name, sizeof(name), "map-into-hole RTT p50 at %s", bigname);
	result_add(B, name, "unpinned", at_big.hole_p50, "us", at_small.hole_p50, base);

	if (rb == 0 && rs == 0) {
		snprintf(name, sizeof(name), "map_find at %s (in-process)", bigname);
		r = result_add(B, name, "", ib.find_ns, "ns", is.find_ns, base);
		result_note(r, "random hits; log2(1M)/log2(1K) = 2, the rest is cache misses");
		snprintf(name, sizeof(name), "map_check_free at %s (in-process)", bigname);
		result_add(B, name, "", ib.check_free_ns, "ns", is.check_free_ns, base);
		snprintf(name, sizeof(name), "overlap map_batch at %s (in-process)", bigname);
		r = result_add(B, name, "", ib.overlap_ns, "ns", is.overlap_ns, base);
		result_note(r, "fails EEXIST; includes formatting the error sentence");
		snprintf(name, sizeof(name), "unmap_ranges at %s (in-process)", bigname);
		result_add(B, name, "", ib.unmap_ns, "ns", is.unmap_ns, base);
	} else {
		check_fail("scale: in-process measurement failed");
	}

	double per_rss = (double)(rss1 - rss0) * 1024.0 / (double)fbig.done;
	snprintf(name, sizeof(name), "daemon RSS per mapping at %s", bigname);
	r = result_add(B, name, "", per_rss, "B", -1, NULL);
	result_target_max(r, 128, "<= 128 B/mapping");
	result_note(r, "VmRSS %ld -> %ld kB (%ld kB after unmapping all); core + sim nodes + sim table",
		    rss0, rss1, rss2);
	double per_shm = (double)(shm1 - shm0) * 1024.0 / (double)fbig.done;
	snprintf(name, sizeof(name), "  of it shared (sim table) at %s", bigname);
	r = result_add(B, name, "", per_shm, "B", -1, NULL);
	result_note(r, "RssShmem %ld -> %ld kB: the sim's per-context table memfd (32 B slots), its "
		    "model of the kernel's state; private memory: %.1f B/mapping", shm0, shm1,
		    per_rss - per_shm);
	snprintf(name, sizeof(name), "heap per mapping at %s (core+sim)", bigname);
	r = result_add(B, name, "", ib.heap_per_mapping, "B", -1, NULL);
	result_note(r, "mallinfo2 in-use delta: struct dmb_mapping + the sim's struct sim_area (slabs)");
	snprintf(name, sizeof(name), "heap per mapping at %s (core only)", bigname);
	r = result_add(B, name, "", ib.core_per_mapping, "B", -1, NULL);
	result_note(r, "sizeof(struct dmb_mapping) = %zu B, from slabs (backend keeping nothing)",
		    ib.sizeof_mapping);
}
