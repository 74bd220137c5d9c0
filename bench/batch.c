/* Batch map and unmap throughput through the broker (MapBatch/UnmapBatch of
 * 1, 64 and 4096 entries of 4 KiB) against the same mappings made by calling
 * the sim backend's ops->map / ops->unmap directly in a loop: the floor for
 * the work itself. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bclient.h"
#include "dmabroker.pb-c.h"
#include "inproc.h"

#define BATCH_PAGES 4096u /* 16 MiB region; entry i maps page i % pages */

struct batch_rate {
	double map, unmap;         /* entries/s, wall clock */
	double map_cpu, unmap_cpu; /* the daemon's CPU ns per entry (schedstat) */
	double cmap_cpu, cunmap_cpu; /* the client's (this thread's) CPU ns per entry */
};

static int run_broker(struct bsession *s, pid_t daemon, size_t b, uint64_t n,
		      struct batch_rate *out, uint64_t budget_ns)
{
	struct dmb_map_entry *e = malloc(b * sizeof(*e));
	struct dmb_range *rg = malloc(b * sizeof(*rg));
	if (!e || !rg) {
		free(e);
		free(rg);
		return -1;
	}
	uint64_t deadline = now_ns() + budget_ns, done = 0;
	int r = 0;
	uint64_t d0 = proc_cpu_ns(daemon), k0 = thread_cpu_ns(), t0 = now_ns();
	while (done < n && r == 0 && now_ns() < deadline) {
		size_t k = n - done < b ? (size_t)(n - done) : b;
		for (size_t j = 0; j < k; j++) {
			uint64_t i = done + j;
			e[j] = (struct dmb_map_entry){ s->region, (i % BATCH_PAGES) * PG,
						       BENCH_IOVA_BASE + i * PG, PG, DMB_READ | DMB_WRITE };
		}
		r = dmb_map_batch(s->c, s->ctx, e, k);
		if (r == 0)
			done += k;
	}
	uint64_t t1 = now_ns(), d1 = proc_cpu_ns(daemon), k1 = thread_cpu_ns();
	if (r < 0)
		check_fail("batch %zu map: %s", b, dmb_last_error(s->c)->message);
	uint64_t mapped = done;
	for (uint64_t k = 0; k < 4 && mapped; k++) {
		uint64_t i = (mapped - 1) * k / 3;
		check_mapped(s, BENCH_IOVA_BASE + i * PG, i % BATCH_PAGES, "batch map");
	}

	done = 0;
	deadline = now_ns() + budget_ns;
	uint64_t d2 = proc_cpu_ns(daemon), k2 = thread_cpu_ns(), t2 = now_ns();
	while (done < mapped && r == 0 && now_ns() < deadline) {
		size_t k = mapped - done < b ? (size_t)(mapped - done) : b;
		for (size_t j = 0; j < k; j++)
			rg[j] = (struct dmb_range){ BENCH_IOVA_BASE + (done + j) * PG, PG };
		r = dmb_unmap_batch(s->c, s->ctx, rg, k, NULL);
		if (r == 0)
			done += k;
	}
	uint64_t t3 = now_ns(), d3 = proc_cpu_ns(daemon), k3 = thread_cpu_ns();
	if (r < 0)
		check_fail("batch %zu unmap: %s", b, dmb_last_error(s->c)->message);
	if (mapped)
		check_unmapped(s, BENCH_IOVA_BASE, "batch unmap");
	if (done < mapped) /* out of time: leave the context empty */
		dmb_unmap_all(s->c, s->ctx, NULL);
	out->map = (double)mapped / ((double)(t1 - t0) / 1e9);
	out->unmap = (double)done / ((double)(t3 - t2) / 1e9);
	out->map_cpu = mapped ? (double)(d1 - d0) / (double)mapped : 0;
	out->unmap_cpu = done ? (double)(d3 - d2) / (double)done : 0;
	out->cmap_cpu = mapped ? (double)(k1 - k0) / (double)mapped : 0;
	out->cunmap_cpu = done ? (double)(k3 - k2) / (double)done : 0;
	free(e);
	free(rg);
	return r;
}

/* The protobuf codec's share of a MapBatch, in-process: what libdmabroker's
 * dmb_map_batch builds and packs, and what the daemon's rpc.c unpacks and
 * frees; ns per entry. */
static double codec_batch_ns(size_t b, unsigned reps)
{
	Dmb__MapEntry *arr = malloc(b * sizeof(*arr));
	Dmb__MapEntry **ptrs = malloc(b * sizeof(*ptrs));
	uint8_t *buf = malloc(b * 40 + 64);
	double best = 0;
	if (!arr || !ptrs || !buf)
		goto out;
	for (unsigned rep = 0; rep < reps; rep++) {
		uint64_t t0 = now_ns();
		for (size_t i = 0; i < b; i++) {
			dmb__map_entry__init(&arr[i]);
			arr[i].region_id = 2;
			arr[i].offset = (i % BATCH_PAGES) * PG;
			arr[i].iova = BENCH_IOVA_BASE + i * PG;
			arr[i].length = PG;
			arr[i].prot = 3;
			ptrs[i] = &arr[i];
		}
		Dmb__Request req = DMB__REQUEST__INIT;
		Dmb__MapBatch mb = DMB__MAP_BATCH__INIT;
		mb.context_id = 1;
		mb.n_entries = b;
		mb.entries = ptrs;
		req.id = 1000 + rep;
		req.body_case = DMB__REQUEST__BODY_MAP_BATCH;
		req.map_batch = &mb;
		size_t len = dmb__request__get_packed_size(&req);
		dmb__request__pack(&req, buf);
		Dmb__Request *in = dmb__request__unpack(NULL, len, buf);
		if (!in || in->map_batch->n_entries != b)
			goto out;
		dmb__request__free_unpacked(in, NULL);
		double ns = (double)(now_ns() - t0) / (double)b;
		if (best == 0 || ns < best)
			best = ns;
	}
out:
	free(arr);
	free(ptrs);
	free(buf);
	return best;
}

static int dbl_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

void bench_batch(const struct bench_opts *o)
{
	struct bdaemon d;
	if (bdaemon_start(&d, o, false) < 0) {
		check_fail("batch: the daemon did not start");
		return;
	}
	struct bsession s;
	if (bsession_open(&s, d.sock, "bench-batch", BATCH_PAGES * PG, 12, BATCH_PAGES) < 0) {
		check_fail("batch: no session");
		bdaemon_stop(&d);
		return;
	}
	static const size_t sizes[] = { 1, 64, 4096 };
	unsigned reps = o->smoke ? 1 : o->quick ? 3 : 5;
	uint64_t budget = (o->smoke ? 5 : 30) * UINT64_C(1000000000);
	for (size_t si = 0; si < 3; si++) {
		size_t b = sizes[si];
		uint64_t n = b == 1 ? (o->smoke ? 500 : o->quick ? 5000 : 20000)
			   : b == 64 ? (o->smoke ? 64 * 8 : o->quick ? 64 * 200 : 64 * 1000)
				     : (o->smoke ? 4096 * 2 : 4096 * 32);
		double bm[5], bu[5], dm[5], du[5], cm[5], cu[5];
		double bmc[5], buc[5], dmc[5], duc[5], cmc[5], cuc[5], kmc[5], kuc[5];
		pid_t perf = 0;
		if (b == 4096) {
			pid_t pids[2] = { d.pid, getpid() };
			perf = perf_start(o, "batch-4096", pids, 2);
		}
		/* Broker and floor alternate, so both see the same machine. */
		for (unsigned rep = 0; rep < reps; rep++) {
			struct batch_rate br = { 0, 0, 0, 0, 0, 0 };
			struct direct_result dr = { 0, 0, 0, 0, 0 }, cr = { 0, 0, 0, 0, 0 };
			run_broker(&s, d.pid, b, n, &br, budget);
			if (inproc_direct(n, BATCH_PAGES, 1, &dr) < 0)
				check_fail("batch: direct backend floor failed");
			if (inproc_core_batch(n, b, &cr) < 0)
				check_fail("batch: in-process core failed");
			cm[rep] = cr.map_rate;
			cu[rep] = cr.unmap_rate;
			bmc[rep] = br.map_cpu;
			buc[rep] = br.unmap_cpu;
			dmc[rep] = dr.map_cpu;
			duc[rep] = dr.unmap_cpu;
			cmc[rep] = cr.map_cpu;
			cuc[rep] = cr.unmap_cpu;
			kmc[rep] = br.cmap_cpu;
			kuc[rep] = br.cunmap_cpu;
			bm[rep] = br.map;
			bu[rep] = br.unmap;
			dm[rep] = dr.map_rate;
			du[rep] = dr.unmap_rate;
		}
		perf_stop(perf);
		qsort(bm, reps, sizeof(double), dbl_cmp);
		qsort(bu, reps, sizeof(double), dbl_cmp);
		qsort(dm, reps, sizeof(double), dbl_cmp);
		qsort(du, reps, sizeof(double), dbl_cmp);
		qsort(cm, reps, sizeof(double), dbl_cmp);
		qsort(cu, reps, sizeof(double), dbl_cmp);
		double *cpu[] = { bmc, buc, dmc, duc, cmc, cuc, kmc, kuc };
		for (size_t k = 0; k < 8; k++)
			qsort(cpu[k], reps, sizeof(double), dbl_cmp);
		char name[64];
		snprintf(name, sizeof(name), "batch %zu map", b);
		struct result *r = result_add("batch throughput", name, "unpinned", bm[reps / 2],
					      "entries/s", dm[reps / 2], "sim ops->map direct");
		result_note(r, "%llu entries in batches of %zu, median of %u runs; the core's map_batch "
			    "in-process (no socket, no codec): %.2f M/s", (unsigned long long)n, b, reps,
			    cm[reps / 2] / 1e6);
		if (b == 4096)
			result_target_min(r, 1e6, ">= 1 M/s");
		snprintf(name, sizeof(name), "batch %zu unmap", b);
		r = result_add("batch throughput", name, "unpinned", bu[reps / 2], "entries/s", du[reps / 2],
			       "sim ops->unmap direct");
		result_note(r, "the core's unmap_ranges in-process: %.2f M/s", cu[reps / 2] / 1e6);
		/* CPU per entry: what the work costs, whatever other tenants do. */
		snprintf(name, sizeof(name), "batch %zu map: daemon CPU/entry", b);
		r = result_add("batch throughput", name, "unpinned", bmc[reps / 2], "ns", cmc[reps / 2],
			       "core map_batch in-process");
		result_note(r, "client %.0f ns/entry; CPU-bound rate 1/(daemon+client) = %.2f M/s; "
			    "sim ops->map alone %.0f ns", kmc[reps / 2],
			    1e3 / (bmc[reps / 2] + kmc[reps / 2]), dmc[reps / 2]);
		snprintf(name, sizeof(name), "batch %zu unmap: daemon CPU/entry", b);
		r = result_add("batch throughput", name, "unpinned", buc[reps / 2], "ns", cuc[reps / 2],
			       "core unmap_ranges in-process");
		result_note(r, "client %.0f ns/entry; CPU-bound rate 1/(daemon+client) = %.2f M/s; "
			    "sim ops->unmap alone %.0f ns", kuc[reps / 2],
			    1e3 / (buc[reps / 2] + kuc[reps / 2]), duc[reps / 2]);
	}
	double codec = codec_batch_ns(4096, o->smoke ? 3 : 50);
	struct result *r = result_add("batch throughput", "protobuf codec per entry (batch 4096)", "",
				      codec, "ns", -1, NULL);
	result_note(r, "in-process, best of runs: client build+size+pack, daemon unpack+free");
	bsession_close(&s);
	bdaemon_stop(&d);
}
