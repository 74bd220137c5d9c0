/* Granular mappings: a RAM mapping made of granule-sized kernel areas
 * (4 KiB or 2 MiB), whose granules a confidential guest's VMM discards
 * (removes from the IOMMU when the guest converts them to private) and
 * populates again (when they become shared), any set of them at a time.
 *
 * The kernel's rule (iommufd's IOMMU_IOAS_UNMAP, type1's
 * VFIO_IOMMU_UNMAP_DMA) is that an unmap removes whole areas: it never
 * splits one. A granular mapping is therefore mapped as one area per
 * granule (map_kernel in mapping.c), a discard unmaps exactly the areas of
 * its granules and a populate maps them again: no request ever needs the
 * kernel to split an area, on any backend.
 *
 * The mapping stays one struct dmb_mapping in the context's tree (its IOVA
 * stays reserved while granules are discarded, and a plain Unmap removes it
 * whole); a struct dmb_gran beside it, in ctx->grans, holds the granule and
 * a bitmap of the discarded granules. Discarded granules are mapped but not
 * pinned: ctx->discarded_bytes is subtracted from every pinned count.
 *
 * Journal order: a discard is journaled before the kernel call (after a
 * crash in between the restore unmaps the granule: the journal is right),
 * a populate after it (after a crash in between the granule is discarded
 * again at restore, and the client, told of the restart, retries). Either
 * way a granule the journal names discarded is never left in the IOMMU. */
#include "core/core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/macro.h"

static int gran_cmp(const struct dmb_gran *a, const struct dmb_gran *b)
{
	return a->m->iova < b->m->iova ? -1 : a->m->iova > b->m->iova;
}
RB_GENERATE(dmb_gran_tree, dmb_gran, node, gran_cmp)

struct dmb_gran *gran_of(struct dmb_ctx *ctx, const struct dmb_mapping *m)
{
	if (!ctx->n_grans || map_is_mmio(m))
		return NULL;
	struct dmb_mapping km = { .iova = m->iova };
	struct dmb_gran key = { .m = &km };
	return RB_FIND(dmb_gran_tree, &ctx->grans, &key);
}

uint64_t map_pinned_bytes(struct dmb_ctx *ctx, const struct dmb_mapping *m)
{
	if (map_is_mmio(m))
		return 0;
	struct dmb_gran *g = gran_of(ctx, m);
	return g ? m->length - g->discarded * g->granule : m->length;
}

/* Pinned bytes of the context change by +add -sub (granules populated or
 * discarded): the broker's, the principal's and the session's counts. */
static void pin_adjust(struct dmb_ctx *ctx, uint64_t add, uint64_t sub)
{
	ctx->core->pinned_bytes = ctx->core->pinned_bytes + add - sub;
	ctx->acct->pinned_bytes = ctx->acct->pinned_bytes + add - sub;
	if (ctx->owner)
		ctx->owner->pinned_bytes = ctx->owner->pinned_bytes + add - sub;
	ctx->discarded_bytes = ctx->discarded_bytes + sub - add;
}

int gran_attach(struct dmb_ctx *ctx, struct dmb_mapping *m, uint64_t granule,
		const uint64_t *discarded)
{
	uint64_t n = m->length / granule;
	size_t words = (size_t)((n + 63) / 64);
	struct dmb_gran *g = calloc(1, sizeof(*g) + words * sizeof(uint64_t));
	if (!g)
		return -ENOMEM;
	g->m = m;
	g->granule = granule;
	g->n = n;
	if (discarded) {
		memcpy(g->bits, discarded, words * sizeof(uint64_t));
		if (n % 64)
			g->bits[words - 1] &= (UINT64_C(1) << (n % 64)) - 1;
		for (size_t w = 0; w < words; w++)
			g->discarded += (uint64_t)__builtin_popcountll(g->bits[w]);
	}
	RB_INSERT(dmb_gran_tree, &ctx->grans, g);
	ctx->n_grans++;
	ctx->gran_areas += n;
	pin_adjust(ctx, 0, g->discarded * granule);
	return 0;
}

void gran_detach(struct dmb_ctx *ctx, struct dmb_gran *g)
{
	/* map_remove then takes the whole length off the pinned counts. */
	pin_adjust(ctx, g->discarded * g->granule, 0);
	ctx->gran_areas -= g->n;
	ctx->n_grans--;
	RB_REMOVE(dmb_gran_tree, &ctx->grans, g);
	free(g);
}

uint64_t map_page_size(struct dmb_ctx *ctx, const struct dmb_mapping *m)
{
	static const uint64_t sizes[] = { UINT64_C(1) << 30, UINT64_C(1) << 21, UINT64_C(1) << 12 };
	uint64_t caps = ctx->iova.pgsizes ? ctx->iova.pgsizes : sizes[0] | sizes[1] | sizes[2];
	uint64_t limit = UINT64_MAX;
	if (!map_is_mmio(m)) {
		limit = m->region->page_size;
		struct dmb_gran *g = gran_of(ctx, m);
		if (g && g->granule < limit)
			limit = g->granule;
	}
	uint64_t bits = m->iova | m->offset | m->length;
	for (size_t i = 0; i < DMB_ARRAY_SIZE(sizes); i++)
		if ((caps & sizes[i]) && sizes[i] <= limit && !(bits & (sizes[i] - 1)))
			return sizes[i];
	/* Below 4 KiB alignment (never for a mapping the core accepted) or an
	 * IOMMU without 4 KiB pages: its smallest page. */
	return caps & -caps;
}

/* ------------------------------------------------------------ convert */

/* One walk of a request's kernel calls: the granules whose state it changes
 * (discarded != discard), each unmapped (discard) or mapped again
 * (populate), or the inverse when undoing. The bitmaps change only after
 * the walk succeeded, so the undo walk visits the same granules in the
 * same order. */
struct conv {
	struct dmb_ctx *ctx;
	bool discard;
	bool undo;          /* the rollback: the inverse operation */
	struct dmb_err *e;
};

static int conv_one(struct conv *cv, struct dmb_gran *g, uint64_t i)
{
	struct dmb_ctx *ctx = cv->ctx;
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	struct dmb_mapping *m = g->m;
	uint64_t iova = m->iova + i * g->granule;
	bool remove = cv->discard != cv->undo;
	int r;
	if (remove) {
		uint64_t got = 0;
		r = ops->unmap(ctx->bctx, iova, g->granule, &got, cv->e);
	} else {
		r = ops->map(ctx->bctx, m->region->breg, m->offset + i * g->granule, iova, g->granule,
			     map_prot(m), cv->e);
	}
	if (r < 0 && cv->e && !cv->undo)
		dmb_fail(cv->e, dmb_code_from_errno(r), -r,
			 "the backend refused to %s the granule at iova 0x%" PRIx64 ": %s",
			 remove ? "unmap" : "map", iova, cv->e->msg[0] ? cv->e->msg : strerror(-r));
	return r;
}

/* Walks the granules of [iova, last] that change, calling conv_one on at
 * most *budget of them (UINT64_MAX: all); stops at the first failure. */
static int conv_walk(struct conv *cv, uint64_t iova, uint64_t last, uint64_t *budget)
{
	struct dmb_ctx *ctx = cv->ctx;
	uint64_t cur = iova;
	for (;;) {
		struct dmb_mapping *m = map_find(ctx, cur);
		struct dmb_gran *g = gran_of(ctx, m);
		uint64_t mlast = m->iova + (m->length - 1);
		uint64_t end = mlast < last ? mlast : last;
		for (uint64_t i = (cur - m->iova) / g->granule, k = (end - m->iova) / g->granule;
		     i <= k; i++) {
			if (gran_bit(g, i) == cv->discard)
				continue;
			if (*budget == 0)
				return 0;
			int r = conv_one(cv, g, i);
			if (r < 0)
				return r;
			(*budget)--;
		}
		if (end == last)
			return 0;
		cur = end + 1;
	}
}

/* Checks one range against the model; counts the granules it changes. */
static int conv_check(struct dmb_ctx *ctx, const struct dmb_range *rg, bool discard,
		      uint64_t *change, uint64_t *change_bytes, uint64_t *same, struct dmb_err *e)
{
	uint64_t last;
	if (rg->length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "range length is zero");
	if (!dmb_range_last(rg->iova, rg->length, &last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				"iova 0x%" PRIx64 " + length 0x%" PRIx64 " overflows", rg->iova,
				rg->length);
	uint64_t cur = rg->iova;
	for (;;) {
		struct dmb_mapping *m = map_find(ctx, cur);
		if (!m)
			return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
					"no mapping at iova 0x%" PRIx64 " (range [0x%" PRIx64
					", 0x%" PRIx64 "])", cur, rg->iova, last);
		struct dmb_gran *g = gran_of(ctx, m);
		if (!g)
			return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
					"the mapping at [0x%" PRIx64 ", 0x%" PRIx64 "] is not a granular "
					"mapping; only granular mappings have granules to %s",
					m->iova, m->iova + (m->length - 1), discard ? "discard" : "populate");
		uint64_t mlast = m->iova + (m->length - 1);
		uint64_t end = mlast < last ? mlast : last;
		if ((cur - m->iova) % g->granule || (end - m->iova + 1) % g->granule)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"range [0x%" PRIx64 ", 0x%" PRIx64 "] is not aligned to the "
					"0x%" PRIx64 "-byte granules of the mapping at 0x%" PRIx64,
					rg->iova, last, g->granule, m->iova);
		for (uint64_t i = (cur - m->iova) / g->granule, k = (end - m->iova) / g->granule;
		     i <= k; i++) {
			if (gran_bit(g, i) == discard) {
				(*same)++;
			} else {
				(*change)++;
				*change_bytes += g->granule;
			}
		}
		if (end == last)
			return 0;
		cur = end + 1;
	}
}

static void conv_flip(struct dmb_ctx *ctx, const struct dmb_range *rg, bool discard)
{
	uint64_t last = rg->iova + (rg->length - 1), cur = rg->iova;
	for (;;) {
		struct dmb_mapping *m = map_find(ctx, cur);
		struct dmb_gran *g = gran_of(ctx, m);
		uint64_t mlast = m->iova + (m->length - 1);
		uint64_t end = mlast < last ? mlast : last;
		uint64_t flipped = 0;
		for (uint64_t i = (cur - m->iova) / g->granule, k = (end - m->iova) / g->granule;
		     i <= k; i++) {
			if (gran_bit(g, i) == discard)
				continue;
			g->bits[i / 64] ^= UINT64_C(1) << (i % 64);
			flipped++;
		}
		if (discard) {
			g->discarded += flipped;
			pin_adjust(ctx, 0, flipped * g->granule);
		} else {
			g->discarded -= flipped;
			pin_adjust(ctx, flipped * g->granule, 0);
		}
		if (end == last)
			return;
		cur = end + 1;
	}
}

/* Runs the kernel calls of every range; on a failure undoes the calls
 * already made (in the same order) and returns the failure. A failed undo
 * leaves the kernel and the model apart: logged, and the granule's state
 * is whatever the kernel holds (the caller re-reads nothing; rare enough
 * to report as INTERNAL). */
static int conv_kernel(struct dmb_ctx *ctx, const struct dmb_range *ranges, size_t n,
		       bool discard, struct dmb_err *e)
{
	struct conv cv = { .ctx = ctx, .discard = discard, .e = e };
	uint64_t budget = UINT64_MAX;
	int r = 0;
	size_t i = 0;
	for (; i < n; i++) {
		r = conv_walk(&cv, ranges[i].iova, ranges[i].iova + (ranges[i].length - 1), &budget);
		if (r < 0)
			break;
	}
	if (r == 0)
		return 0;
	if (e)
		e->index = (uint32_t)i;
	/* Undo the UINT64_MAX - budget granules done, in the same order. */
	uint64_t done = UINT64_MAX - budget;
	struct dmb_err e2 = { 0 };
	struct conv un = { .ctx = ctx, .discard = discard, .undo = true, .e = &e2 };
	for (size_t k = 0; k <= i && done; k++) {
		int r2 = conv_walk(&un, ranges[k].iova, ranges[k].iova + (ranges[k].length - 1),
				   &done);
		if (r2 < 0) {
			log_error("context %" PRIu64 ": undoing a %s failed: %s; the IOMMU and the "
				  "broker's records of range %zu disagree", ctx->id,
				  discard ? "discard" : "populate", e2.msg[0] ? e2.msg : strerror(-r2),
				  k);
			break;
		}
	}
	return r;
}

int map_convert(struct dmb_ctx *ctx, const struct dmb_range *ranges, size_t n, bool discard,
		struct dmb_convert_result *res, struct dmb_err *e)
{
	memset(res, 0, sizeof(*res));
	if (n == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "the request has no ranges");
	/* 1. Every range against the model before anything changes. Disjoint
	 * first (cheap): then the walks below visit each granule of the
	 * context at most once, however many ranges the request has. */
	for (size_t i = 0; i < n; i++) {
		uint64_t last;
		if (ranges[i].length == 0 || !dmb_range_last(ranges[i].iova, ranges[i].length, &last)) {
			if (e)
				e->index = (uint32_t)i;
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, ranges[i].length ? EOVERFLOW : EINVAL,
					"range %zu (iova 0x%" PRIx64 ", length 0x%" PRIx64 ") is empty "
					"or wraps", i, ranges[i].iova, ranges[i].length);
		}
	}
	size_t a, b;
	if (!map_ranges_disjoint(ranges, n, &a, &b)) {
		if (e)
			e->index = (uint32_t)b;
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "ranges %zu and %zu overlap", a, b);
	}
	uint64_t change = 0, bytes = 0, same = 0;
	for (size_t i = 0; i < n; i++) {
		int r = conv_check(ctx, &ranges[i], discard, &change, &bytes, &same, e);
		if (r < 0) {
			if (e)
				e->index = (uint32_t)i;
			return r;
		}
	}
	res->granules = change;
	res->bytes = bytes;
	res->unchanged = same;
	if (change == 0)
		return 0;
	if (!discard) {
		/* Populating pins again: the same limits as a map. */
		const struct dmb_limits *lim = ctx->owner ? &ctx->owner->pol.limits : &ctx->core->limits;
		int r = acct_check_pinned(ctx->acct, lim, bytes, e);
		if (r < 0)
			return r;
		uint64_t glim = ctx->core->pinned_bytes_limit;
		if (glim && (ctx->core->pinned_bytes + bytes > glim ||
			     ctx->core->pinned_bytes + bytes < bytes))
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
					"limit pinned_bytes_total (%" PRIu64 ") of the broker would be "
					"exceeded", glim);
	}
	const struct dmb_journal_hooks *jh = ctx->core->jh;
	/* 2. A discard is journaled first. */
	if (jh && discard) {
		int r = jh->convert(jh->opaque, ctx, ranges, n, true, e);
		if (r < 0)
			return r;
	}
	/* 3. The kernel, all or nothing. */
	int r = conv_kernel(ctx, ranges, n, discard, e);
	if (r < 0) {
		if (jh && discard) {
			struct dmb_err e2 = { 0 };
			if (jh->convert(jh->opaque, ctx, ranges, n, false, &e2) < 0)
				log_error("context %" PRIu64 ": a failed discard could not be taken back "
					  "in the journal: %s", ctx->id, e2.msg);
			jh->converted(jh->opaque);
		}
		memset(res, 0, sizeof(*res));
		return r;
	}
	/* 4. A populate is journaled once the kernel holds it; if that is
	 * refused, the kernel is put back. */
	if (jh && !discard) {
		r = jh->convert(jh->opaque, ctx, ranges, n, false, e);
		if (r < 0) {
			struct dmb_err e2 = { 0 };
			uint64_t all = UINT64_MAX;
			struct conv un = { .ctx = ctx, .discard = false, .undo = true, .e = &e2 };
			for (size_t k = 0; k < n; k++)
				if (conv_walk(&un, ranges[k].iova, ranges[k].iova + (ranges[k].length - 1),
					      &all) < 0)
					log_error("context %" PRIu64 ": undoing an unjournaled populate "
						  "failed: %s", ctx->id, e2.msg);
			memset(res, 0, sizeof(*res));
			return r;
		}
	}
	for (size_t i = 0; i < n; i++)
		conv_flip(ctx, &ranges[i], discard);
	if (jh)
		jh->converted(jh->opaque);
	return 0;
}
