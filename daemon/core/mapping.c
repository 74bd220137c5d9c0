/* Mappings: [iova, iova+length) of a context -> a range of a region.
 *
 * Each context keeps its mappings in a red-black tree ordered by IOVA
 * (libbsd <sys/tree.h>); mappings never overlap, so "the mapping before x"
 * and "the first mapping at or after x" answer every question in O(log n):
 * overlap checks, split checks and lookups.
 *
 * The core checks a request completely against its own model before it asks
 * the backend, so what reaches the kernel is well-formed and an unmap is
 * all-or-nothing (the kernel's own IOMMU_IOAS_UNMAP may remove earlier areas
 * and then fail on a straddling one). */
#include "core/core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/macro.h"

static int map_cmp(const struct dmb_mapping *a, const struct dmb_mapping *b)
{
	return a->iova < b->iova ? -1 : a->iova > b->iova;
}
DMB_RB_GENERATE(dmb_map_tree, dmb_mapping, node, map_cmp, )

#define SLAB_BYTES (64u * 1024u)
struct dmb_map_slab {
	struct dmb_map_slab *next;
	uint32_t used;
	struct dmb_mapping nodes[];
};
#define SLAB_NODES ((SLAB_BYTES - sizeof(struct dmb_map_slab)) / sizeof(struct dmb_mapping))

static struct dmb_mapping *node_alloc(struct dmb_core *core)
{
	struct dmb_mapping *m = core->map_free;
	if (m) {
		core->map_free = m->node.rbe_left;
	} else {
		struct dmb_map_slab *sl = core->slabs;
		if (!sl || sl->used == SLAB_NODES) {
			sl = malloc(SLAB_BYTES);
			if (!sl)
				return NULL;
			sl->used = 0;
			sl->next = core->slabs;
			core->slabs = sl;
		}
		m = &sl->nodes[sl->used++];
	}
	core->map_live++;
	return m;
}

static void node_free(struct dmb_core *core, struct dmb_mapping *m)
{
	m->node.rbe_left = core->map_free;
	core->map_free = m;
	if (--core->map_live == 0) {
		/* Nothing mapped anywhere: give every slab back. */
		while (core->slabs) {
			struct dmb_map_slab *sl = core->slabs;
			core->slabs = sl->next;
			free(sl);
		}
		core->map_free = NULL;
	}
}

static inline uint64_t m_last(const struct dmb_mapping *m)
{
	return m->iova + (m->length - 1);
}

struct dmb_mapping *map_first_from(struct dmb_ctx *ctx, uint64_t start)
{
	struct dmb_mapping key = { .iova = start };
	return RB_NFIND(dmb_map_tree, &ctx->maps, &key);
}

struct dmb_mapping *map_next(struct dmb_ctx *ctx, struct dmb_mapping *m)
{
	return RB_NEXT(dmb_map_tree, &ctx->maps, m);
}

/* The last mapping that starts before `iova`, or NULL. */
static struct dmb_mapping *map_before(struct dmb_ctx *ctx, uint64_t iova,
				      struct dmb_mapping *first_from)
{
	if (first_from)
		return RB_PREV(dmb_map_tree, &ctx->maps, first_from);
	return RB_MAX(dmb_map_tree, &ctx->maps);
}

struct dmb_mapping *map_find(struct dmb_ctx *ctx, uint64_t iova)
{
	struct dmb_mapping *n = map_first_from(ctx, iova);
	if (n && n->iova == iova)
		return n;
	struct dmb_mapping *p = map_before(ctx, iova, n);
	return p && m_last(p) >= iova ? p : NULL;
}

int map_check_free(struct dmb_ctx *ctx, uint64_t iova, uint64_t last, struct dmb_err *e)
{
	struct dmb_mapping *n = map_first_from(ctx, iova);
	struct dmb_mapping *hit = NULL;
	if (n && n->iova <= last)
		hit = n;
	else {
		struct dmb_mapping *p = map_before(ctx, iova, n);
		if (p && m_last(p) >= iova)
			hit = p;
	}
	if (hit)
		return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
				"IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] overlaps the mapping at "
				"[0x%" PRIx64 ", 0x%" PRIx64 "]", iova, last, hit->iova, m_last(hit));
	return 0;
}

static int map_validate(struct dmb_ctx *ctx, const struct dmb_map_req *q, struct dmb_region **out,
			struct dmb_err *e)
{
	uint64_t last, rlast;

	if (q->prot == 0 || (q->prot & ~(uint32_t)(DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"prot 0x%x is not valid: use READ (1), WRITE (2) or both", q->prot);
	if (q->length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "mapping length is zero");
	if (!dmb_range_last(q->iova, q->length, &last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				"iova 0x%" PRIx64 " + length 0x%" PRIx64 " overflows", q->iova, q->length);
	if (!dmb_range_last(q->offset, q->length, &rlast))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				"offset 0x%" PRIx64 " + length 0x%" PRIx64 " overflows", q->offset,
				q->length);

	struct dmb_region *r = region_lookup(ctx, q->region_id);
	if (!r)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "region %" PRIu64 " not found in context %" PRIu64,
				q->region_id, ctx->id);

	/* The IOMMU's granularity, and never less than the region's page size
	 * (hugetlbfs regions map in whole huge pages). */
	uint64_t align = ctx->iova.alignment > r->page_size ? ctx->iova.alignment : r->page_size;
	if (!dmb_is_aligned(q->iova, align) || !dmb_is_aligned(q->length, align) ||
	    !dmb_is_aligned(q->offset, align))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"iova 0x%" PRIx64 ", offset 0x%" PRIx64 " and length 0x%" PRIx64
				" must be multiples of 0x%" PRIx64, q->iova, q->offset, q->length, align);
	if (rlast >= r->size)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"range [0x%" PRIx64 ", 0x%" PRIx64 "] is past the end of region %" PRIu64
				" (0x%" PRIx64 " bytes)", q->offset, rlast, r->id, r->size);
	if (q->granule) {
		/* A granular mapping is one kernel area per granule: each must be
		 * a whole number of the IOMMU's and the region's pages. */
		if (q->granule != DMB_GRANULE_4K && q->granule != DMB_GRANULE_2M)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"granule 0x%" PRIx64 " is not valid: use 4096 or 2097152", q->granule);
		if (q->granule < align)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"granule 0x%" PRIx64 " is smaller than the 0x%" PRIx64 "-byte pages "
					"this region and IOMMU map in", q->granule, align);
		if (q->length / q->granule > DMB_GRANULES_MAX)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG,
					"a granular mapping has at most %" PRIu64 " granules, not %" PRIu64
					": split it into several", DMB_GRANULES_MAX, q->length / q->granule);
		if (!dmb_is_aligned(q->iova, q->granule) || !dmb_is_aligned(q->length, q->granule) ||
		    !dmb_is_aligned(q->offset, q->granule))
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"iova 0x%" PRIx64 ", offset 0x%" PRIx64 " and length 0x%" PRIx64
					" of a granular mapping must be multiples of its granule 0x%" PRIx64,
					q->iova, q->offset, q->length, q->granule);
	}
	if ((q->prot & DMB_PROT_WRITE) && !r->writable)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EACCES,
				"region %" PRIu64 " is read-only (fd opened read-only or write-sealed); "
				"map it with prot READ", r->id);

	int ret = ctx_check_iova(ctx, q->iova, last, e);
	if (ret < 0)
		return ret;
	ret = map_check_free(ctx, q->iova, last, e);
	if (ret < 0)
		return ret;
	*out = r;
	return 0;
}

void map_insert(struct dmb_ctx *ctx, struct dmb_mapping *m)
{
	RB_INSERT(dmb_map_tree, &ctx->maps, m);
	if (map_is_mmio(m)) {
		ctx->p2p_mappings++;
		ctx->p2p_bytes += m->length;
		ctx->core->p2p_mappings++;
		ctx->core->p2p_bytes += m->length;
	} else {
		m->region->map_refs++;
		ctx->core->pinned_bytes += m->length;
		ctx->acct->pinned_bytes += m->length;
		if (ctx->owner)
			ctx->owner->pinned_bytes += m->length;
	}
	ctx->n_mappings++;
	ctx->mapped_bytes += m->length;
	ctx->core->n_mappings++;
	ctx->core->mapped_bytes += m->length;
}

void map_remove(struct dmb_ctx *ctx, struct dmb_mapping *m)
{
	struct dmb_gran *g = gran_of(ctx, m);
	if (g)
		gran_detach(ctx, g);
	RB_REMOVE(dmb_map_tree, &ctx->maps, m);
	ctx->n_mappings--;
	ctx->mapped_bytes -= m->length;
	ctx->core->n_mappings--;
	ctx->core->mapped_bytes -= m->length;
	if (map_is_mmio(m)) {
		struct dmb_p2p *p = dmb_container_of(m, struct dmb_p2p, m);
		ctx->p2p_mappings--;
		ctx->p2p_bytes -= m->length;
		ctx->core->p2p_mappings--;
		ctx->core->p2p_bytes -= m->length;
		p2p_unlink(p);
		free(p);
		return;
	}
	m->region->map_refs--;
	ctx->core->pinned_bytes -= m->length;
	ctx->acct->pinned_bytes -= m->length;
	if (ctx->owner)
		ctx->owner->pinned_bytes -= m->length;
	node_free(ctx->core, m);
}

/* Forget entries [from, to) of a batch that never reached the kernel. */
static void map_drop_pending(struct dmb_ctx *ctx, struct dmb_mapping **nodes, size_t from,
			     size_t to)
{
	for (size_t i = from; i < to; i++)
		map_remove(ctx, nodes[i]);
}

static int range_idx_cmp(const void *x, const void *y, void *base)
{
	const struct dmb_range *rg = base;
	uint64_t a = rg[*(const size_t *)x].iova, b = rg[*(const size_t *)y].iova;
	return a < b ? -1 : a > b;
}

/* True when no two of the (valid, non-empty) ranges intersect; otherwise
 * names two that do. O(n) for a sorted batch, O(n log n) otherwise. */
bool map_ranges_disjoint(const struct dmb_range *rg, size_t n, size_t *a, size_t *b)
{
	bool sorted = true;
	for (size_t i = 1; i < n && sorted; i++)
		sorted = rg[i - 1].iova + (rg[i - 1].length - 1) < rg[i].iova;
	if (sorted)
		return true;

	size_t *idx = malloc(n * sizeof(*idx));
	if (!idx) {
		*a = 0;
		*b = 0;
		return false;
	}
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	qsort_r(idx, n, sizeof(*idx), range_idx_cmp, (void *)rg);
	bool ok = true;
	for (size_t i = 1; i < n && ok; i++) {
		const struct dmb_range *p = &rg[idx[i - 1]], *q = &rg[idx[i]];
		if (p->iova + (p->length - 1) >= q->iova) {
			ok = false;
			*a = idx[i - 1] < idx[i] ? idx[i - 1] : idx[i];
			*b = idx[i - 1] < idx[i] ? idx[i] : idx[i - 1];
		}
	}
	free(idx);
	return ok;
}

/* A map runs in three phases so that the kernel call can run on a worker
 * thread (daemon/server/worker.h) while the model stays with the event loop:
 * map_prepare (loop: check, reserve, journal), map_kernel (any thread: the
 * backend calls only, on a context nobody else touches meanwhile), and
 * map_finish (loop: keep or drop the reserved records). */
int map_prepare(struct map_op *op, struct dmb_ctx *ctx, const struct dmb_map_req *reqs,
		size_t n, struct dmb_err *e)
{
	const struct dmb_limits *lim = &ctx->owner->pol.limits;
	uint64_t limit = lim->mappings_per_context;

	memset(op, 0, sizeof(*op));
	op->ctx = ctx;
	op->reqs = reqs;
	op->n = n;
	op->nodes = &op->one_node;
	op->failed_at = n;
	/* A granular mapping counts as its kernel areas: one per granule. */
	uint64_t areas = ctx->n_mappings - ctx->n_grans + ctx->gran_areas, add = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t k = reqs[i].granule && reqs[i].length >= reqs[i].granule
				     ? reqs[i].length / reqs[i].granule : 1;
		add = add + k < add ? UINT64_MAX : add + k;
	}
	if (areas + add > limit || areas + add < areas)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"limit mappings_per_context (%" PRIu64 ") would be exceeded (a granular "
				"mapping counts one per granule)", limit);
	/* Pinned-memory limits, per client and for the whole broker, before
	 * any kernel work. */
	uint64_t want = 0;
	for (size_t i = 0; i < n; i++) {
		if (want + reqs[i].length < want)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW, "batch length overflows");
		want += reqs[i].length;
	}
	int r = acct_check_pinned(ctx->acct, lim, want, e);
	if (r < 0)
		return r;
	uint64_t glim = ctx->core->pinned_bytes_limit;
	if (glim && (ctx->core->pinned_bytes + want > glim || ctx->core->pinned_bytes + want < want))
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
				"limit pinned_bytes_total (%" PRIu64 ") of the broker would be exceeded",
				glim);

	/* 1. Check every entry in order against the model, which includes the
	 * entries before it (recorded as pending), before anything is journaled
	 * or reaches the kernel. nodes[] keeps the pending records so the later
	 * steps need no second lookup; kept[] (batches only) is where the
	 * kernel phase says which of them a failed rollback left mapped. */
	if (n > 1) {
		op->nodes = malloc(n * (sizeof(*op->nodes) + 1));
		if (!op->nodes) {
			op->nodes = &op->one_node;
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
		}
		op->kept = (uint8_t *)(op->nodes + n);
		memset(op->kept, 0, n);
	}
	size_t done = 0;
	for (; done < n; done++) {
		struct dmb_region *reg = NULL;
		r = map_validate(ctx, &reqs[done], &reg, e);
		if (r < 0)
			break;
		struct dmb_mapping *m = node_alloc(ctx->core);
		if (!m) {
			r = dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
			break;
		}
		*m = (struct dmb_mapping){
			.iova = reqs[done].iova, .length = reqs[done].length, .offset = reqs[done].offset,
			.region = reg,
		};
		map_set_prot(m, reqs[done].prot);
		map_insert(ctx, m);
		op->nodes[done] = m;
		if (reqs[done].granule && gran_attach(ctx, m, reqs[done].granule, NULL) < 0) {
			map_remove(ctx, m);
			r = dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
			break;
		}
	}
	if (r < 0) {
		if (e)
			e->index = (uint32_t)done;
		map_drop_pending(ctx, op->nodes, 0, done);
		map_op_release(op);
		return r;
	}

	/* 2. Journal additions before the kernel sees them: after a crash the
	 * journal may name a mapping the kernel lacks (redone at restart), never
	 * the reverse. */
	const struct dmb_journal_hooks *jh = ctx->core->jh;
	if (jh) {
		r = jh->map_add(jh->opaque, ctx, reqs, n, e);
		if (r < 0) {
			map_drop_pending(ctx, op->nodes, 0, n);
			map_op_release(op);
			return r;
		}
	}
	op->prepared = true;
	return 0;
}

uint64_t map_op_bytes(const struct map_op *op)
{
	uint64_t b = 0;
	for (size_t i = 0; i < op->n; i++)
		b += op->reqs[i].length;
	return b;
}

/* 3. The kernel, in order; all or nothing. Touches no model state: reads
 * the reserved records (nobody changes them meanwhile) and calls the
 * backend on this context only. A failure unmaps the entries before it
 * again (their records go in map_finish). */
void map_kernel(struct map_op *op)
{
	struct dmb_ctx *ctx = op->ctx;
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	for (size_t i = 0; i < op->n; i++) {
		const struct dmb_map_req *q = &op->reqs[i];
		int r = 0;
		if (q->granule) {
			/* One area per granule (granule.c): a discard never splits
			 * one. A failure unmaps the granules before it. */
			uint64_t k = 0, ng = q->length / q->granule;
			for (; k < ng && r == 0; k++)
				r = ops->map(ctx->bctx, op->nodes[i]->region->breg,
					     q->offset + k * q->granule, q->iova + k * q->granule,
					     q->granule, q->prot, &op->e);
			if (r < 0 && k > 1) {
				uint64_t got = 0;
				struct dmb_err e2 = { 0 };
				int r2 = ops->unmap(ctx->bctx, q->iova, (k - 1) * q->granule, &got, &e2);
				if (r2 < 0)
					log_error("context %" PRIu64 ": rollback of the granules of mapping "
						  "0x%" PRIx64 " failed: %s", ctx->id, q->iova,
						  e2.msg[0] ? e2.msg : strerror(-r2));
			}
		} else {
			r = ops->map(ctx->bctx, op->nodes[i]->region->breg, q->offset, q->iova, q->length,
				     q->prot, &op->e);
		}
		if (r == 0)
			continue;
		dmb_fail(&op->e, dmb_code_from_errno(r), -r,
			 "the backend refused to map 0x%" PRIx64 " bytes at iova 0x%" PRIx64 ": %s",
			 q->length, q->iova, strerror(-r));
		op->e.index = (uint32_t)i;
		op->r = r;
		op->failed_at = i;
		for (size_t k = i; k-- > 0;) {
			const struct dmb_mapping *m = op->nodes[k];
			uint64_t bytes = 0;
			struct dmb_err e2 = { 0 };
			int r2 = ops->unmap(ctx->bctx, m->iova, m->length, &bytes, &e2);
			if (r2 < 0) {
				/* The mapping is still in the IOMMU: its record must
				 * stay visible (and be unmapped with the context). */
				op->kept[k] = 1;
				log_error("context %" PRIu64 ": rollback of mapping 0x%" PRIx64
					  " failed: %s", ctx->id, m->iova,
					  e2.msg[0] ? e2.msg : strerror(-r2));
			}
		}
		return;
	}
}

int map_finish(struct map_op *op, struct dmb_err *e)
{
	struct dmb_ctx *ctx = op->ctx;
	int r = op->r;
	if (r < 0) {
		if (e) {
			*e = op->e;
		}
		size_t i = op->failed_at;
		for (size_t k = 0; k < i; k++)
			if (!op->kept[k])
				map_remove(ctx, op->nodes[k]);
		map_drop_pending(ctx, op->nodes, i, op->n);
		const struct dmb_journal_hooks *jh = ctx->core->jh;
		if (jh) {
			/* The batch was journaled whole: take it back whole. Its
			 * ranges overlap nothing else (checked in step 1). */
			size_t n = op->n;
			_cleanup_free_ struct dmb_range *rg = malloc(n * sizeof(*rg));
			if (rg) {
				for (size_t k = 0; k < n; k++)
					rg[k] = (struct dmb_range){ op->reqs[k].iova, op->reqs[k].length };
				jh->unmap(jh->opaque, ctx, rg, n);
			}
		}
	}
	map_op_release(op);
	return r;
}

void map_op_release(struct map_op *op)
{
	if (op->nodes != &op->one_node)
		free(op->nodes);
	op->nodes = &op->one_node;
	op->kept = NULL;
}

int map_batch(struct dmb_ctx *ctx, const struct dmb_map_req *reqs, size_t n, struct dmb_err *e)
{
	struct map_op op;
	int r = map_prepare(&op, ctx, reqs, n, e);
	if (r < 0)
		return r;
	map_kernel(&op);
	return map_finish(&op, e);
}

/* Checks that [iova, last] holds at least one mapping and splits none;
 * returns the first mapping inside. */
static int unmap_check(struct dmb_ctx *ctx, uint64_t iova, uint64_t last,
		       struct dmb_mapping **first, struct dmb_err *e)
{
	struct dmb_mapping *n = map_first_from(ctx, iova);
	struct dmb_mapping *p = map_before(ctx, iova, n);
	if (p && m_last(p) >= iova)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
				"unmapping [0x%" PRIx64 ", 0x%" PRIx64 "] would split the mapping at "
				"[0x%" PRIx64 ", 0x%" PRIx64 "]; a mapping is removed whole or not at all",
				iova, last, p->iova, m_last(p));
	if (!n || n->iova > last)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				"no mapping inside [0x%" PRIx64 ", 0x%" PRIx64 "]", iova, last);
	/* Only the last mapping that starts inside the range can straddle its
	 * end: find it in O(log n) through the successor of `last`. */
	struct dmb_mapping *after = map_first_from(ctx, last);
	struct dmb_mapping *tail = (after && after->iova == last) ? after
								   : map_before(ctx, last, after);
	if (tail && tail->iova >= iova && m_last(tail) > last)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
				"unmapping [0x%" PRIx64 ", 0x%" PRIx64 "] would split the mapping at "
				"[0x%" PRIx64 ", 0x%" PRIx64 "]; a mapping is removed whole or not at all",
				iova, last, tail->iova, m_last(tail));
	*first = n;
	return 0;
}

/* Removes the records of mappings in [iova, last] after the backend did. */
static void unmap_forget(struct dmb_ctx *ctx, struct dmb_mapping *first, uint64_t last,
			 uint64_t *bytes, uint64_t *count)
{
	struct dmb_mapping *m = first;
	while (m && m->iova <= last) {
		struct dmb_mapping *next = map_next(ctx, m);
		*bytes += m->length;
		(*count)++;
		map_remove(ctx, m);
		m = next;
	}
}

/* The backend failed on a whole range although the model said it was
 * fine. Fall back to one call per mapping so that the model stays exactly
 * what the IOMMU holds: a mapping the backend no longer knows is gone. */
static int unmap_one_by_one(struct dmb_ctx *ctx, struct dmb_mapping *first, uint64_t last,
			    uint64_t *bytes, uint64_t *count, struct dmb_err *e)
{
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	int ret = 0;
	struct dmb_mapping *m = first;
	while (m && m->iova <= last) {
		struct dmb_mapping *next = map_next(ctx, m);
		uint64_t got = 0;
		struct dmb_err e2 = { 0 };
		int r = ops->unmap(ctx->bctx, m->iova, m->length, &got, &e2);
		if (r == 0 || r == -ENOENT) {
			*bytes += m->length;
			(*count)++;
			map_remove(ctx, m);
		} else if (ret == 0) {
			ret = dmb_fail(e, dmb_code_from_errno(r), -r,
				       "the backend failed to unmap iova 0x%" PRIx64 ": %s", m->iova,
				       e2.msg[0] ? e2.msg : strerror(-r));
		}
		m = next;
	}
	return ret;
}

/* Unmaps, like maps, run in three phases (see map_prepare): unmap_prepare
 * checks everything against the model (all or nothing), unmap_kernel calls
 * the backend for each range in order and stops at the first failure,
 * unmap_finish forgets what the backend removed and journals it. A range
 * the backend refused is retried mapping by mapping on the loop thread
 * (unmap_one_by_one), and the ranges after it follow there too: an error
 * path, not worth a thread. */
int unmap_prepare(struct unmap_op *op, struct dmb_ctx *ctx, const struct dmb_range *ranges,
		  size_t n, struct dmb_err *e)
{
	uint64_t last = 0;

	memset(op, 0, sizeof(*op));
	op->ctx = ctx;
	op->ranges = ranges;
	op->n = n;
	/* The first mapping of each range, found once by the checks: removing
	 * one range's mappings leaves the others' nodes where they are (the
	 * ranges are disjoint). */
	op->firsts = &op->one_first;
	if (n > 1) {
		op->firsts = malloc(n * sizeof(*op->firsts));
		if (!op->firsts) {
			op->firsts = &op->one_first;
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
		}
	}
	/* Validate everything first: all-or-nothing. */
	for (size_t i = 0; i < n; i++) {
		struct dmb_mapping *first = NULL;
		int r;
		if (ranges[i].length == 0)
			r = dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "unmap length is zero");
		else if (!dmb_range_last(ranges[i].iova, ranges[i].length, &last))
			r = dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				     "iova 0x%" PRIx64 " + length 0x%" PRIx64 " overflows",
				     ranges[i].iova, ranges[i].length);
		else
			r = unmap_check(ctx, ranges[i].iova, last, &first, e);
		if (r < 0) {
			if (e)
				e->index = (uint32_t)i;
			unmap_op_release(op);
			return r;
		}
		op->firsts[i] = first;
	}
	/* Ranges of one batch must be disjoint, or a later one would find
	 * nothing left to remove. */
	size_t a, b;
	if (!map_ranges_disjoint(ranges, n, &a, &b)) {
		if (e)
			e->index = (uint32_t)b;
		unmap_op_release(op);
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "unmap ranges %zu and %zu overlap",
				a, b);
	}
	return 0;
}

int unmap_all_prepare(struct unmap_op *op, struct dmb_ctx *ctx)
{
	memset(op, 0, sizeof(*op));
	op->ctx = ctx;
	op->all = true;
	op->firsts = &op->one_first;
	return 0;
}

uint64_t unmap_op_bytes(const struct unmap_op *op)
{
	if (op->all)
		return op->ctx->mapped_bytes;
	uint64_t b = 0;
	for (size_t i = 0; i < op->n; i++)
		b += op->ranges[i].length;
	return b;
}

void unmap_kernel(struct unmap_op *op)
{
	struct dmb_ctx *ctx = op->ctx;
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	if (op->all) {
		uint64_t got = 0;
		if (op->ctx->n_mappings)
			op->r = ops->unmap_all(ctx->bctx, &got, &op->e);
		return;
	}
	for (; op->done < op->n; op->done++) {
		uint64_t got = 0;
		int r = ops->unmap(ctx->bctx, op->ranges[op->done].iova, op->ranges[op->done].length,
				   &got, NULL);
		if (r < 0) {
			op->r = r;
			return;
		}
	}
}

int unmap_finish(struct unmap_op *op, uint64_t *bytes, uint64_t *count, struct dmb_err *e)
{
	struct dmb_ctx *ctx = op->ctx;
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	const struct dmb_journal_hooks *jh = ctx->core->jh;
	uint64_t last = 0;
	int ret = 0;

	*bytes = *count = 0;
	if (op->all) {
		if (ctx->n_mappings == 0)
			goto out;
		if (op->r < 0)
			ret = unmap_one_by_one(ctx, RB_MIN(dmb_map_tree, &ctx->maps), UINT64_MAX, bytes,
					       count, e);
		else
			unmap_forget(ctx, RB_MIN(dmb_map_tree, &ctx->maps), UINT64_MAX, bytes, count);
		if (jh)
			jh->unmap_all(jh->opaque, ctx);
		goto out;
	}

	const struct dmb_range *ranges = op->ranges;
	for (size_t i = 0; i < op->n; i++) {
		struct dmb_mapping *first = op->firsts[i];
		dmb_range_last(ranges[i].iova, ranges[i].length, &last);
		int r = 0;
		if (i > op->done) { /* after a refused range: the loop thread goes on */
			uint64_t got = 0;
			r = ops->unmap(ctx->bctx, ranges[i].iova, ranges[i].length, &got, NULL);
		} else if (i == op->done) {
			r = op->r;
		}
		if (r < 0) {
			r = unmap_one_by_one(ctx, first, last, bytes, count, e);
			if (r < 0) {
				if (e)
					e->index = (uint32_t)i;
				/* Journal what is certainly gone: the ranges before. */
				if (jh && i)
					jh->unmap(jh->opaque, ctx, ranges, i);
				ret = r;
				goto out;
			}
			continue;
		}
		unmap_forget(ctx, first, last, bytes, count);
	}
	if (jh)
		jh->unmap(jh->opaque, ctx, ranges, op->n);
out:
	unmap_op_release(op);
	return ret;
}

void unmap_op_release(struct unmap_op *op)
{
	if (op->firsts != &op->one_first)
		free(op->firsts);
	op->firsts = &op->one_first;
}

int unmap_ranges(struct dmb_ctx *ctx, const struct dmb_range *ranges, size_t n,
		 uint64_t *bytes, uint64_t *count, struct dmb_err *e)
{
	struct unmap_op op;
	*bytes = *count = 0;
	int r = unmap_prepare(&op, ctx, ranges, n, e);
	if (r < 0)
		return r;
	unmap_kernel(&op);
	return unmap_finish(&op, bytes, count, e);
}

int unmap_all(struct dmb_ctx *ctx, uint64_t *bytes, uint64_t *count, struct dmb_err *e)
{
	struct unmap_op op;
	unmap_all_prepare(&op, ctx);
	unmap_kernel(&op);
	return unmap_finish(&op, bytes, count, e);
}

int map_adopt_record(struct dmb_ctx *ctx, struct dmb_region *r, uint64_t iova, uint64_t length,
		     uint64_t offset, uint32_t prot, uint64_t granule, const uint64_t *discarded)
{
	struct dmb_mapping *m = node_alloc(ctx->core);
	if (!m)
		return -ENOMEM;
	*m = (struct dmb_mapping){ .iova = iova, .length = length, .offset = offset, .region = r };
	map_set_prot(m, prot);
	map_insert(ctx, m);
	if (granule && gran_attach(ctx, m, granule, discarded) < 0) {
		map_remove(ctx, m);
		return -ENOMEM;
	}
	return 0;
}

void map_forget_all(struct dmb_ctx *ctx)
{
	uint64_t bytes = 0, count = 0;
	unmap_forget(ctx, RB_MIN(dmb_map_tree, &ctx->maps), UINT64_MAX, &bytes, &count);
}
