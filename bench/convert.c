/* Conversions of a confidential guest's memory: 4 KiB granules of a
 * granular mapping discarded and populated per second through the broker
 * (Discard / Populate of 1, 64 and 4096 one-granule ranges per request),
 * beside plain UnmapBatch / MapBatch of the same number of 4 KiB mappings in
 * batches of the same sizes, in the same run against the same daemon: the
 * ratio says what a granule costs over an ordinary mapping. Every run
 * proves the conversions by DMA: a discarded granule faults, a populated one
 * reads its page's tag. */
#include <stdlib.h>
#include <string.h>

#include "bclient.h"

#define CONV_PAGES 16384u /* 64 MiB region: one granular mapping of all of it */

struct conv_rate {
	double discard, populate; /* granules/s */
	double unmap, map;        /* plain mappings/s, the baseline */
};

/* Discard then populate every granule of the granular mapping at `iova`, b
 * one-granule ranges per request. */
static int run_convert(struct bsession *s, uint64_t iova, uint64_t n, size_t b,
		       struct conv_rate *out, uint64_t budget_ns)
{
	struct dmb_range *rg = malloc(b * sizeof(*rg));
	if (!rg)
		return -1;
	int r = 0;
	for (int pass = 0; pass < 2 && r == 0; pass++) {
		bool discard = pass == 0;
		uint64_t done = 0, deadline = now_ns() + budget_ns, t0 = now_ns();
		while (done < n && r == 0 && now_ns() < deadline) {
			size_t k = n - done < b ? (size_t)(n - done) : b;
			for (size_t j = 0; j < k; j++)
				rg[j] = (struct dmb_range){ iova + (done + j) * PG, PG };
			struct dmb_convert_info ci;
			r = discard ? dmb_discard(s->c, s->ctx, rg, k, &ci)
				    : dmb_populate(s->c, s->ctx, rg, k, &ci);
			if (r == 0 && ci.granules != k) {
				check_fail("convert %zu: %s changed %llu granules, not %zu",
					   b, discard ? "discard" : "populate",
					   (unsigned long long)ci.granules, k);
				r = -1;
			}
			if (r == 0)
				done += k;
		}
		double rate = (double)done / ((double)(now_ns() - t0) / 1e9);
		if (r < 0) {
			check_fail("convert %zu %s: %s", b, discard ? "discard" : "populate",
				   dmb_last_error(s->c)->message);
			break;
		}
		if (done == 0)
			break;
		if (discard) {
			/* out of time: populate what was discarded */
			n = done;
		} else if (done < n) {
			/* out of time: leave every granule populated for the next run */
			struct dmb_range rest = { iova + done * PG, (n - done) * PG };
			dmb_populate(s->c, s->ctx, &rest, 1, NULL);
		}
		if (discard) {
			out->discard = rate;
			check_unmapped(s, iova, "discarded granule");
			check_unmapped(s, iova + (done - 1) * PG, "discarded granule");
		} else {
			out->populate = rate;
			check_mapped(s, iova, 0, "populated granule");
			check_mapped(s, iova + (done - 1) * PG, done - 1, "populated granule");
		}
	}
	free(rg);
	return r;
}

/* The baseline: n ordinary 4 KiB mappings made and removed in batches of b. */
static int run_plain(struct bsession *s, uint64_t iova, uint64_t n, size_t b,
		     struct conv_rate *out, uint64_t budget_ns)
{
	struct dmb_map_entry *e = malloc(b * sizeof(*e));
	struct dmb_range *rg = malloc(b * sizeof(*rg));
	int r = 0;
	if (!e || !rg) {
		r = -1;
		goto out;
	}
	uint64_t done = 0, deadline = now_ns() + budget_ns, t0 = now_ns();
	while (done < n && r == 0 && now_ns() < deadline) {
		size_t k = n - done < b ? (size_t)(n - done) : b;
		for (size_t j = 0; j < k; j++)
			e[j] = (struct dmb_map_entry){ s->region, (done + j) * PG, iova + (done + j) * PG,
						       PG, DMB_READ | DMB_WRITE };
		r = dmb_map_batch(s->c, s->ctx, e, k);
		if (r == 0)
			done += k;
	}
	out->map = (double)done / ((double)(now_ns() - t0) / 1e9);
	if (r < 0) {
		check_fail("plain map %zu: %s", b, dmb_last_error(s->c)->message);
		goto out;
	}
	check_mapped(s, iova + (done - 1) * PG, done - 1, "plain map");
	uint64_t mapped = done;
	done = 0;
	deadline = now_ns() + budget_ns;
	t0 = now_ns();
	while (done < mapped && r == 0 && now_ns() < deadline) {
		size_t k = mapped - done < b ? (size_t)(mapped - done) : b;
		for (size_t j = 0; j < k; j++)
			rg[j] = (struct dmb_range){ iova + (done + j) * PG, PG };
		r = dmb_unmap_batch(s->c, s->ctx, rg, k, NULL);
		if (r == 0)
			done += k;
	}
	out->unmap = (double)done / ((double)(now_ns() - t0) / 1e9);
	if (r < 0)
		check_fail("plain unmap %zu: %s", b, dmb_last_error(s->c)->message);
	else
		check_unmapped(s, iova, "plain unmap");
	if (done < mapped)
		dmb_unmap_all(s->c, s->ctx, NULL);
out:
	free(e);
	free(rg);
	return r;
}

static int dbl_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

void bench_convert(const struct bench_opts *o)
{
	struct bdaemon d;
	if (bdaemon_start(&d, o, false) < 0) {
		check_fail("convert: the daemon did not start");
		return;
	}
	struct bsession s;
	if (bsession_open(&s, d.sock, "bench-convert", CONV_PAGES * PG, 13, CONV_PAGES) < 0) {
		check_fail("convert: no session");
		bdaemon_stop(&d);
		return;
	}
	const uint64_t n = o->smoke ? 2048 : o->quick ? 8192 : CONV_PAGES;
	const uint64_t giova = BENCH_IOVA_BASE, piova = BENCH_IOVA_BASE + (UINT64_C(1) << 32);
	unsigned reps = o->smoke ? 1 : 3;
	uint64_t budget = (o->smoke ? 5 : 30) * UINT64_C(1000000000);

	/* The granular mapping itself: n kernel areas in one Map. */
	struct dmb_map_entry ge = { s.region, 0, giova, n * PG, DMB_READ | DMB_WRITE };
	uint64_t ps = 0, t0 = now_ns();
	int r = dmb_map_granular(s.c, s.ctx, &ge, 4096, &ps);
	double tmap = (double)(now_ns() - t0) / 1e6;
	if (r < 0) {
		check_fail("convert: granular map: %s", dmb_last_error(s.c)->message);
		goto out;
	}
	check_mapped(&s, giova + (n / 2) * PG, n / 2, "granular map");
	struct result *row = result_add("conversions", "granular map (4 KiB granules)", "unpinned",
					(double)n / (tmap / 1e3), "granules/s", -1, NULL);
	result_note(row, "one Map of %llu granules (%llu kernel areas), %.1f ms; page size %llu",
		    (unsigned long long)n, (unsigned long long)n, tmap, (unsigned long long)ps);

	static const size_t sizes[] = { 1, 64, 4096 };
	for (size_t si = 0; si < 3; si++) {
		size_t b = sizes[si];
		uint64_t cnt = b == 1 ? (o->smoke ? 256 : o->quick ? 2048 : 8192) : n;
		double dis[3], pop[3], unm[3], map[3];
		for (unsigned rep = 0; rep < reps; rep++) {
			struct conv_rate cr = { 0, 0, 0, 0 };
			/* alternate, so both see the same machine */
			run_convert(&s, giova, cnt, b, &cr, budget);
			run_plain(&s, piova, cnt, b, &cr, budget);
			dis[rep] = cr.discard;
			pop[rep] = cr.populate;
			unm[rep] = cr.unmap;
			map[rep] = cr.map;
		}
		qsort(dis, reps, sizeof(double), dbl_cmp);
		qsort(pop, reps, sizeof(double), dbl_cmp);
		qsort(unm, reps, sizeof(double), dbl_cmp);
		qsort(map, reps, sizeof(double), dbl_cmp);
		char name[64];
		snprintf(name, sizeof(name), "discard, batch %zu", b);
		row = result_add("conversions", name, "unpinned", dis[reps / 2], "granules/s",
				 unm[reps / 2], "UnmapBatch of 4 KiB mappings");
		result_note(row, "%llu granules, %zu one-granule ranges per Discard, median of %u",
			    (unsigned long long)cnt, b, reps);
		snprintf(name, sizeof(name), "populate, batch %zu", b);
		row = result_add("conversions", name, "unpinned", pop[reps / 2], "granules/s",
				 map[reps / 2], "MapBatch of 4 KiB mappings");
		result_note(row, "%llu granules, %zu one-granule ranges per Populate, median of %u",
			    (unsigned long long)cnt, b, reps);
	}
out:
	bsession_close(&s);
	bdaemon_stop(&d);
}
