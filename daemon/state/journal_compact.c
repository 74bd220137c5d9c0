/* Compaction (journal.h): a fresh journal holding only the records that
 * rebuild the state model as it is, the next generation of the old one. */
#include "state/journal.h"
#include "state/journal_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/macro.h"

static uint64_t rec_bytes(uint64_t payload)
{
	return align8(REC_OVERHEAD + payload);
}

/* What jrnl_snapshot_discards writes for m: DISCARD records of up to
 * JRNL_BATCH_MAX ranges, one range per run of adjacent discarded granules. */
static uint64_t discard_bytes(const struct jrnl_map *m)
{
	uint64_t g = jrnl_map_granule(m->flags), ng = m->length / g, runs = 0;
	for (uint64_t i = 0; i < ng; i++) {
		bool d = (m->discarded[i / 64] >> (i % 64)) & 1;
		bool prev = i && ((m->discarded[(i - 1) / 64] >> ((i - 1) % 64)) & 1);
		runs += d && !prev;
	}
	uint64_t full = runs / JRNL_BATCH_MAX, rest = runs % JRNL_BATCH_MAX;
	return full * rec_bytes(16 + (uint64_t)RANGE_SIZE * JRNL_BATCH_MAX) +
	       (rest ? rec_bytes(16 + RANGE_SIZE * rest) : 0);
}

uint64_t jrnl_state_snapshot_bytes(const struct jrnl_state *s)
{
	uint64_t n = rec_bytes(8) + rec_bytes(8); /* watermark, handoff */
	for (struct jrnl_ctx *c = jrnl_state_ctx_first(s); c; c = jrnl_state_ctx_next(c)) {
		n += rec_bytes(64 + strlen(c->name));
		for (struct jrnl_region *r = jrnl_ctx_region_first(c); r; r = jrnl_ctx_region_next(r))
			n += rec_bytes(40 + strlen(r->fd_name));
		for (struct jrnl_dev *d = jrnl_ctx_dev_first(c); d; d = jrnl_ctx_dev_next(d))
			n += rec_bytes(18 + strlen(d->bdf));
		for (struct jrnl_map *m = jrnl_ctx_map_first(c); m; m = jrnl_ctx_map_next(m))
			if (m->n_discarded) /* one range per run of discarded granules */
				n += discard_bytes(m);
		uint64_t full = c->n_maps / SNAP_BATCH, rest = c->n_maps % SNAP_BATCH;
		n += full * rec_bytes(16 + (uint64_t)MAP_ENTRY_SIZE * SNAP_BATCH);
		if (rest)
			n += rec_bytes(16 + MAP_ENTRY_SIZE * rest);
	}
	return n;
}

uint64_t jrnl_snapshot_estimate(uint64_t contexts, uint64_t regions, uint64_t devices,
				uint64_t mappings)
{
	return rec_bytes(8) * 2 + contexts * (rec_bytes(64 + JRNL_NAME_MAX) + rec_bytes(16)) +
	       regions * rec_bytes(40 + JRNL_FDNAME_MAX) + devices * rec_bytes(18 + JRNL_BDF_MAX) +
	       mappings * MAP_ENTRY_SIZE + (mappings / SNAP_BATCH + 1) * rec_bytes(16);
}

bool jrnl_should_compact(const struct jrnl *j, uint64_t live_bytes)
{
	uint64_t committed = jrnl_committed(j);
	if (j->damage)
		return true;
	return committed > (UINT64_C(1) << 20) && committed / 4 > live_bytes;
}

/* DISCARD records for the discarded granules of m, a run of adjacent
 * granules per range, JRNL_BATCH_MAX ranges per record. */
int jrnl_snapshot_discards(struct jrnl *n, uint64_t ctx, uint64_t iova, uint64_t length,
			   uint64_t granule, const uint64_t *bits, struct dmb_err *e)
{
	uint64_t ng = length / granule;
	_cleanup_free_ struct jrnl_range *rg = malloc(JRNL_BATCH_MAX * sizeof(*rg));
	if (!rg)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	uint32_t k = 0;
	for (uint64_t i = 0; i < ng;) {
		if (!((bits[i / 64] >> (i % 64)) & 1)) {
			i++;
			continue;
		}
		uint64_t j = i + 1;
		while (j < ng && ((bits[j / 64] >> (j % 64)) & 1))
			j++;
		rg[k++] = (struct jrnl_range){ iova + i * granule, (j - i) * granule };
		i = j;
		if (k == JRNL_BATCH_MAX) {
			int r = jrnl_append_convert(n, ctx, true, rg, k, e);
			if (r < 0)
				return r;
			k = 0;
		}
	}
	return k ? jrnl_append_convert(n, ctx, true, rg, k, e) : 0;
}

static int snapshot(struct jrnl *n, const struct jrnl_state *s, struct dmb_err *e)
{
	int r;
	if ((r = jrnl_append_id_watermark(n, s->next_id, e)) < 0 ||
	    (r = jrnl_append_handoff(n, s->handoff, e)) < 0)
		return r;
	_cleanup_free_ struct jrnl_map_entry *ents = malloc(SNAP_BATCH * sizeof(*ents));
	if (!ents)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	for (struct jrnl_ctx *c = jrnl_state_ctx_first(s); c; c = jrnl_state_ctx_next(c)) {
		uint32_t flags = (c->persistent ? JRNL_CTX_PERSISTENT : 0) |
				 (c->detached ? JRNL_CTX_DETACHED : 0) |
				 (c->noiommu ? JRNL_CTX_NOIOMMU : 0);
		if ((r = jrnl_append_ctx_create(n, c->id, c->session, c->uid, c->gid, flags, c->name,
						c->token, e)) < 0)
			return r;
		for (struct jrnl_region *g = jrnl_ctx_region_first(c); g; g = jrnl_ctx_region_next(g))
			if ((r = jrnl_append_region_add(n, c->id, g->id, g->size, g->page_size, g->flags,
							g->fd_name, e)) < 0)
				return r;
		for (struct jrnl_dev *d = jrnl_ctx_dev_first(c); d; d = jrnl_ctx_dev_next(d))
			if ((r = jrnl_append_device_add(n, c->id, d->id, d->bdf, e)) < 0)
				return r;
		uint32_t k = 0;
		for (struct jrnl_map *m = jrnl_ctx_map_first(c); m; m = jrnl_ctx_map_next(m)) {
			ents[k++] = (struct jrnl_map_entry){ m->iova, m->length, m->region, m->offset,
							     m->prot, m->flags };
			if (k == SNAP_BATCH || !jrnl_ctx_map_next(m)) {
				if ((r = jrnl_append_map_batch(n, c->id, ents, k, e)) < 0)
					return r;
				k = 0;
			}
		}
		for (struct jrnl_map *m = jrnl_ctx_map_first(c); m; m = jrnl_ctx_map_next(m))
			if (m->n_discarded &&
			    (r = jrnl_snapshot_discards(n, c->id, m->iova, m->length,
							jrnl_map_granule(m->flags), m->discarded, e)) < 0)
				return r;
	}
	return 0;
}

int jrnl_compact(struct jrnl *j, const struct jrnl_state *s, struct jrnl **out,
		 struct dmb_err *e)
{
	struct jrnl_state own;
	int r;
	jrnl_state_init(&own);
	if (!s) {
		/* A damaged journal compacts to its valid prefix: that is the repair. */
		struct dmb_err ignored = { 0 };
		r = jrnl_state_replay(j, &own, NULL, &ignored);
		if (r < 0 && r != -EBADMSG) {
			jrnl_state_fini(&own);
			return dmb_fail(e, ignored.code, ignored.sys_errno, "%s", ignored.msg);
		}
		s = &own;
	}
	uint64_t need = JRNL_HEADER_SIZE + jrnl_state_snapshot_bytes(s);
	uint64_t size = INITIAL_SIZE;
	while (size < 2 * need && size < FILE_MAX)
		size *= 2;
	struct jrnl *n = NULL;
	r = jrnl_new(j->generation + 1, j->next_seq, size, &n, e);
	if (r >= 0)
		r = snapshot(n, s, e);
	jrnl_state_fini(&own);
	if (r < 0) {
		jrnl_close(n);
		return r;
	}
	*out = n;
	return 0;
}
