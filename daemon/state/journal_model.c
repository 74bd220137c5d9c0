/* The state model (journal.h, struct jrnl_state): what a replay of the
 * journal builds and what the daemon re-adopts from. Every record is "make
 * it so" (jrnl_state_apply), so a replay is idempotent. It knows the
 * records (struct jrnl_rec), never their bytes: the codec and the file are
 * journal_file.c's. */
#include "state/journal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ctx_cmp(const struct jrnl_ctx *a, const struct jrnl_ctx *b)
{
	return a->id < b->id ? -1 : a->id > b->id;
}
static int region_cmp(const struct jrnl_region *a, const struct jrnl_region *b)
{
	return a->id < b->id ? -1 : a->id > b->id;
}
static int dev_cmp(const struct jrnl_dev *a, const struct jrnl_dev *b)
{
	return a->id < b->id ? -1 : a->id > b->id;
}
static int jmap_cmp(const struct jrnl_map *a, const struct jrnl_map *b)
{
	return a->iova < b->iova ? -1 : a->iova > b->iova;
}
RB_GENERATE_INTERNAL(jrnl_ctx_tree, jrnl_ctx, node, ctx_cmp, __attribute__((unused)) static)
RB_GENERATE_INTERNAL(jrnl_region_tree, jrnl_region, node, region_cmp,
		     __attribute__((unused)) static)
RB_GENERATE_INTERNAL(jrnl_dev_tree, jrnl_dev, node, dev_cmp, __attribute__((unused)) static)
RB_GENERATE_INTERNAL(jrnl_map_tree, jrnl_map, node, jmap_cmp, __attribute__((unused)) static)

static inline uint64_t map_last(const struct jrnl_map *m)
{
	return m->iova + (m->length - 1);
}

void jrnl_state_init(struct jrnl_state *s)
{
	*s = (struct jrnl_state){ .next_id = 1 };
	RB_INIT(&s->ctxs);
}

static void anomaly(struct jrnl_state *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void anomaly(struct jrnl_state *s, const char *fmt, ...)
{
	if (s->anomalies++ == 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(s->anomaly, sizeof(s->anomaly), fmt, ap);
		va_end(ap);
	}
}

static void see_id(struct jrnl_state *s, uint64_t id)
{
	if (id >= s->next_id && id != UINT64_MAX)
		s->next_id = id + 1;
}

static void map_remove(struct jrnl_state *s, struct jrnl_ctx *c, struct jrnl_map *m)
{
	RB_REMOVE(jrnl_map_tree, &c->maps, m);
	struct jrnl_region *r = (m->flags & JRNL_MAP_MMIO) ? NULL : jrnl_ctx_region(c, m->region);
	if (r)
		r->map_refs--;
	c->n_maps--;
	c->mapped_bytes -= m->length;
	s->n_maps--;
	free(m->discarded);
	free(m);
}

static void ctx_free(struct jrnl_state *s, struct jrnl_ctx *c)
{
	struct jrnl_map *m, *mt;
	RB_FOREACH_SAFE(m, jrnl_map_tree, &c->maps, mt) {
		RB_REMOVE(jrnl_map_tree, &c->maps, m);
		free(m->discarded);
		free(m);
	}
	s->n_maps -= c->n_maps;
	struct jrnl_region *r, *rt;
	RB_FOREACH_SAFE(r, jrnl_region_tree, &c->regions, rt) {
		RB_REMOVE(jrnl_region_tree, &c->regions, r);
		free(r);
	}
	struct jrnl_dev *d, *dt;
	RB_FOREACH_SAFE(d, jrnl_dev_tree, &c->devs, dt) {
		RB_REMOVE(jrnl_dev_tree, &c->devs, d);
		free(d);
	}
	RB_REMOVE(jrnl_ctx_tree, &s->ctxs, c);
	s->n_ctxs--;
	free(c);
}

void jrnl_state_fini(struct jrnl_state *s)
{
	if (!s)
		return;
	struct jrnl_ctx *c, *ct;
	RB_FOREACH_SAFE(c, jrnl_ctx_tree, &s->ctxs, ct)
		ctx_free(s, c);
	jrnl_state_init(s);
}

struct jrnl_ctx *jrnl_state_ctx(const struct jrnl_state *s, uint64_t id)
{
	struct jrnl_ctx key = { .id = id };
	return RB_FIND(jrnl_ctx_tree, (struct jrnl_ctx_tree *)&s->ctxs, &key);
}
struct jrnl_ctx *jrnl_state_ctx_first(const struct jrnl_state *s)
{
	return RB_MIN(jrnl_ctx_tree, (struct jrnl_ctx_tree *)&s->ctxs);
}
struct jrnl_ctx *jrnl_state_ctx_next(struct jrnl_ctx *c)
{
	return jrnl_ctx_tree_RB_NEXT(c);
}
struct jrnl_region *jrnl_ctx_region(const struct jrnl_ctx *c, uint64_t id)
{
	struct jrnl_region key = { .id = id };
	return RB_FIND(jrnl_region_tree, (struct jrnl_region_tree *)&c->regions, &key);
}
struct jrnl_region *jrnl_ctx_region_first(const struct jrnl_ctx *c)
{
	return RB_MIN(jrnl_region_tree, (struct jrnl_region_tree *)&c->regions);
}
struct jrnl_region *jrnl_ctx_region_next(struct jrnl_region *r)
{
	return jrnl_region_tree_RB_NEXT(r);
}
struct jrnl_map *jrnl_ctx_map_first(const struct jrnl_ctx *c)
{
	return RB_MIN(jrnl_map_tree, (struct jrnl_map_tree *)&c->maps);
}
struct jrnl_map *jrnl_ctx_map_next(struct jrnl_map *m)
{
	return jrnl_map_tree_RB_NEXT(m);
}
struct jrnl_dev *jrnl_ctx_dev_first(const struct jrnl_ctx *c)
{
	return RB_MIN(jrnl_dev_tree, (struct jrnl_dev_tree *)&c->devs);
}
struct jrnl_dev *jrnl_ctx_dev_next(struct jrnl_dev *d)
{
	return jrnl_dev_tree_RB_NEXT(d);
}

/* The first mapping at or after iova, and the one before it. */
static struct jrnl_map *map_from(const struct jrnl_ctx *c, uint64_t iova, struct jrnl_map **before)
{
	struct jrnl_map key = { .iova = iova };
	struct jrnl_map_tree *t = (struct jrnl_map_tree *)&c->maps;
	struct jrnl_map *n = RB_NFIND(jrnl_map_tree, t, &key);
	*before = n ? RB_PREV(jrnl_map_tree, t, n) : RB_MAX(jrnl_map_tree, t);
	return n;
}

struct jrnl_map *jrnl_ctx_map_find(const struct jrnl_ctx *c, uint64_t iova)
{
	struct jrnl_map *p, *n = map_from(c, iova, &p);
	if (n && n->iova == iova)
		return n;
	return p && map_last(p) >= iova ? p : NULL;
}

static int apply_map(struct jrnl_state *s, struct jrnl_ctx *c, const struct jrnl_map_entry *e)
{
	/* A P2P (MMIO) entry names its peer device in `region`: no region. */
	bool mmio = e->flags & JRNL_MAP_MMIO;
	struct jrnl_region *r = mmio ? NULL : jrnl_ctx_region(c, e->region);
	if (!r && !mmio) {
		anomaly(s, "MAP at 0x%" PRIx64 " in context %" PRIu64 " names unknown region %" PRIu64,
			e->iova, c->id, e->region);
		return 0;
	}
	uint64_t last = e->iova + (e->length - 1);
	struct jrnl_map *p, *n = map_from(c, e->iova, &p);
	if (n && n->iova == e->iova && n->length == e->length && n->region == e->region &&
	    n->offset == e->offset && n->prot == e->prot && n->flags == e->flags)
		return 0; /* already there */
	if (p && map_last(p) >= e->iova) {
		anomaly(s, "MAP at 0x%" PRIx64 " in context %" PRIu64 " evicts the mapping at 0x%" PRIx64,
			e->iova, c->id, p->iova);
		map_remove(s, c, p);
	}
	while (n && n->iova <= last) {
		struct jrnl_map *next = RB_NEXT(jrnl_map_tree, &c->maps, n);
		anomaly(s, "MAP at 0x%" PRIx64 " in context %" PRIu64 " evicts the mapping at 0x%" PRIx64,
			e->iova, c->id, n->iova);
		map_remove(s, c, n);
		n = next;
	}
	struct jrnl_map *m = malloc(sizeof(*m));
	if (!m)
		return -ENOMEM;
	*m = (struct jrnl_map){ .iova = e->iova, .length = e->length, .region = e->region,
				.offset = e->offset, .prot = e->prot, .flags = e->flags };
	if (RB_INSERT(jrnl_map_tree, &c->maps, m)) { /* cannot happen: evicted above */
		free(m);
		return -EEXIST;
	}
	if (r)
		r->map_refs++;
	c->n_maps++;
	c->mapped_bytes += m->length;
	s->n_maps++;
	return 0;
}

static void apply_unmap(struct jrnl_state *s, struct jrnl_ctx *c, const struct jrnl_range *rg)
{
	uint64_t last = rg->iova + (rg->length - 1);
	struct jrnl_map *p, *n = map_from(c, rg->iova, &p);
	if (p && map_last(p) >= rg->iova)
		anomaly(s, "UNMAP of [0x%" PRIx64 ", +0x%" PRIx64 ") in context %" PRIu64
			" cuts the mapping at 0x%" PRIx64, rg->iova, rg->length, c->id, p->iova);
	while (n && n->iova <= last) {
		struct jrnl_map *next = RB_NEXT(jrnl_map_tree, &c->maps, n);
		if (map_last(n) <= last)
			map_remove(s, c, n);
		else
			anomaly(s, "UNMAP of [0x%" PRIx64 ", +0x%" PRIx64 ") in context %" PRIu64
				" cuts the mapping at 0x%" PRIx64, rg->iova, rg->length, c->id, n->iova);
		n = next;
	}
}

/* DISCARD / POPULATE of one range: every granule in it, mapping by
 * mapping; what is not inside a granular mapping, granule aligned, is an
 * anomaly and stays as it is. */
static int apply_convert(struct jrnl_state *s, struct jrnl_ctx *c, const struct jrnl_range *rg,
			 bool discard)
{
	const char *what = discard ? "DISCARD" : "POPULATE";
	uint64_t last = rg->iova + (rg->length - 1), cur = rg->iova;
	for (;;) {
		struct jrnl_map *m = jrnl_ctx_map_find(c, cur);
		uint64_t g = m ? jrnl_map_granule(m->flags) : 0;
		if (!m || !g || (m->flags & JRNL_MAP_MMIO)) {
			anomaly(s, "%s of [0x%" PRIx64 ", +0x%" PRIx64 ") in context %" PRIu64
				" reaches 0x%" PRIx64 ", which is in no granular mapping", what,
				rg->iova, rg->length, c->id, cur);
			return 0;
		}
		uint64_t end = map_last(m) < last ? map_last(m) : last;
		if ((cur - m->iova) % g || (end - m->iova + 1) % g) {
			anomaly(s, "%s of [0x%" PRIx64 ", +0x%" PRIx64 ") in context %" PRIu64
				" is not aligned to the granules of the mapping at 0x%" PRIx64, what,
				rg->iova, rg->length, c->id, m->iova);
			return 0;
		}
		uint64_t n = m->length / g;
		if (!m->discarded && discard) {
			m->discarded = calloc((size_t)((n + 63) / 64), sizeof(uint64_t));
			if (!m->discarded)
				return -ENOMEM;
		}
		if (m->discarded) {
			/* a word at a time: bits [i, k] */
			uint64_t i = (cur - m->iova) / g, k = (end - m->iova) / g;
			for (uint64_t w = i / 64; w <= k / 64; w++) {
				uint64_t lo = w == i / 64 ? i % 64 : 0, hi = w == k / 64 ? k % 64 : 63;
				uint64_t mask = (hi == 63 ? ~UINT64_C(0) : (UINT64_C(1) << (hi + 1)) - 1) &
						~((UINT64_C(1) << lo) - 1);
				uint64_t old = m->discarded[w];
				uint64_t neu = discard ? old | mask : old & ~mask;
				uint64_t diff = (uint64_t)__builtin_popcountll(old ^ neu);
				m->discarded[w] = neu;
				if (discard)
					m->n_discarded += diff;
				else
					m->n_discarded -= diff;
			}
			if (m->n_discarded == 0) {
				free(m->discarded);
				m->discarded = NULL;
			}
		}
		if (end == last)
			return 0;
		cur = end + 1;
	}
}

static struct jrnl_ctx *need_ctx(struct jrnl_state *s, uint64_t id, const char *what)
{
	struct jrnl_ctx *c = jrnl_state_ctx(s, id);
	if (!c)
		anomaly(s, "%s names unknown context %" PRIu64, what, id);
	return c;
}

int jrnl_state_apply(struct jrnl_state *s, const struct jrnl_rec *rec)
{
	struct jrnl_ctx *c;
	switch (rec->type) {
	case JRNL_CONTEXT_CREATE: {
		const __typeof__(rec->u.ctx_create) *a = &rec->u.ctx_create;
		c = jrnl_state_ctx(s, a->ctx);
		if (!c) {
			if (!(c = calloc(1, sizeof(*c))))
				return -ENOMEM;
			c->id = a->ctx;
			RB_INIT(&c->regions);
			RB_INIT(&c->maps);
			RB_INIT(&c->devs);
			RB_INSERT(jrnl_ctx_tree, &s->ctxs, c);
			s->n_ctxs++;
		}
		c->session = a->session;
		c->uid = a->uid;
		c->gid = a->gid;
		c->persistent = a->flags & JRNL_CTX_PERSISTENT;
		c->detached = a->flags & JRNL_CTX_DETACHED;
		c->noiommu = a->flags & JRNL_CTX_NOIOMMU;
		memcpy(c->token, a->token, JRNL_TOKEN_SIZE);
		snprintf(c->name, sizeof(c->name), "%s", a->name);
		see_id(s, a->ctx);
		see_id(s, a->session);
		return 0;
	}
	case JRNL_CONTEXT_DESTROY:
		if ((c = jrnl_state_ctx(s, rec->u.ctx_destroy.ctx)))
			ctx_free(s, c);
		return 0;
	case JRNL_CONTEXT_RECLAIM: {
		const __typeof__(rec->u.ctx_reclaim) *a = &rec->u.ctx_reclaim;
		if (!(c = need_ctx(s, a->ctx, "CONTEXT_RECLAIM")))
			return 0;
		c->session = a->session;
		c->uid = a->uid;
		c->gid = a->gid;
		c->detached = false;
		memcpy(c->token, a->token, JRNL_TOKEN_SIZE);
		see_id(s, a->session);
		return 0;
	}
	case JRNL_REGION_ADD: {
		const __typeof__(rec->u.region_add) *a = &rec->u.region_add;
		if (!(c = need_ctx(s, a->ctx, "REGION_ADD")))
			return 0;
		struct jrnl_region *r = jrnl_ctx_region(c, a->region);
		if (!r) {
			if (!(r = calloc(1, sizeof(*r))))
				return -ENOMEM;
			r->id = a->region;
			RB_INSERT(jrnl_region_tree, &c->regions, r);
			c->n_regions++;
		}
		r->size = a->size;
		r->page_size = a->page_size;
		r->flags = a->flags;
		snprintf(r->fd_name, sizeof(r->fd_name), "%s", a->fd_name);
		see_id(s, a->region);
		return 0;
	}
	case JRNL_REGION_REMOVE: {
		c = jrnl_state_ctx(s, rec->u.region_remove.ctx);
		struct jrnl_region *r = c ? jrnl_ctx_region(c, rec->u.region_remove.region) : NULL;
		if (!r)
			return 0;
		if (r->map_refs) {
			anomaly(s, "REGION_REMOVE of region %" PRIu64 " in context %" PRIu64
				" while %" PRIu64 " mappings use it", r->id, c->id, r->map_refs);
			struct jrnl_map *m, *mt;
			RB_FOREACH_SAFE(m, jrnl_map_tree, &c->maps, mt)
				if (m->region == r->id)
					map_remove(s, c, m);
		}
		RB_REMOVE(jrnl_region_tree, &c->regions, r);
		c->n_regions--;
		free(r);
		return 0;
	}
	case JRNL_MAP:
		if (!(c = need_ctx(s, rec->u.map.ctx, "MAP")))
			return 0;
		for (uint32_t i = 0; i < rec->u.map.n; i++) {
			int r = apply_map(s, c, &rec->u.map.e[i]);
			if (r < 0)
				return r;
		}
		return 0;
	case JRNL_UNMAP:
		if ((c = jrnl_state_ctx(s, rec->u.unmap.ctx)))
			for (uint32_t i = 0; i < rec->u.unmap.n; i++)
				apply_unmap(s, c, &rec->u.unmap.r[i]);
		return 0;
	case JRNL_DISCARD:
	case JRNL_POPULATE:
		if (!(c = need_ctx(s, rec->u.convert.ctx, rec->type == JRNL_DISCARD ? "DISCARD"
										    : "POPULATE")))
			return 0;
		for (uint32_t i = 0; i < rec->u.convert.n; i++) {
			int r = apply_convert(s, c, &rec->u.convert.r[i], rec->type == JRNL_DISCARD);
			if (r < 0)
				return r;
		}
		return 0;
	case JRNL_UNMAP_ALL:
		if ((c = jrnl_state_ctx(s, rec->u.unmap_all.ctx))) {
			struct jrnl_map *m, *mt;
			RB_FOREACH_SAFE(m, jrnl_map_tree, &c->maps, mt)
				map_remove(s, c, m);
		}
		return 0;
	case JRNL_DEVICE_ADD: {
		const __typeof__(rec->u.device_add) *a = &rec->u.device_add;
		if (!(c = need_ctx(s, a->ctx, "DEVICE_ADD")))
			return 0;
		struct jrnl_dev key = { .id = a->device };
		struct jrnl_dev *d = RB_FIND(jrnl_dev_tree, &c->devs, &key);
		if (!d) {
			if (!(d = calloc(1, sizeof(*d))))
				return -ENOMEM;
			d->id = a->device;
			RB_INSERT(jrnl_dev_tree, &c->devs, d);
			c->n_devs++;
		}
		snprintf(d->bdf, sizeof(d->bdf), "%s", a->bdf);
		see_id(s, a->device);
		return 0;
	}
	case JRNL_DEVICE_REMOVE: {
		c = jrnl_state_ctx(s, rec->u.device_remove.ctx);
		struct jrnl_dev key = { .id = rec->u.device_remove.device };
		struct jrnl_dev *d = c ? RB_FIND(jrnl_dev_tree, &c->devs, &key) : NULL;
		if (d) {
			RB_REMOVE(jrnl_dev_tree, &c->devs, d);
			c->n_devs--;
			free(d);
		}
		return 0;
	}
	case JRNL_SESSION_END: {
		struct jrnl_ctx *ct;
		RB_FOREACH_SAFE(c, jrnl_ctx_tree, &s->ctxs, ct) {
			if (c->session != rec->u.session_end.session || c->detached)
				continue;
			if (c->persistent)
				c->detached = true;
			else
				ctx_free(s, c);
		}
		see_id(s, rec->u.session_end.session);
		return 0;
	}
	case JRNL_ID_WATERMARK:
		if (rec->u.id_watermark.next_id > s->next_id)
			s->next_id = rec->u.id_watermark.next_id;
		return 0;
	case JRNL_HANDOFF_STATE:
		s->handoff = rec->u.handoff.state;
		return 0;
	default:
		anomaly(s, "unknown record type %" PRIu32, rec->type);
		return 0;
	}
}

static int state_visit(void *opaque, const struct jrnl_rec *rec)
{
	return jrnl_state_apply(opaque, rec);
}

const struct jrnl_ops jrnl_state_ops = { .record = state_visit };

int jrnl_state_replay(struct jrnl *j, struct jrnl_state *s, struct jrnl_replay_result *res,
		      struct dmb_err *e)
{
	return jrnl_replay(j, &jrnl_state_ops, s, res, e);
}

#define DIFF(...) (snprintf(why, why_size, __VA_ARGS__), false)

static bool ctx_equal(const struct jrnl_ctx *a, const struct jrnl_ctx *b, char *why,
		      size_t why_size)
{
	if (a->session != b->session || a->uid != b->uid || a->gid != b->gid ||
	    a->persistent != b->persistent || a->detached != b->detached ||
	    a->noiommu != b->noiommu || memcmp(a->token, b->token, JRNL_TOKEN_SIZE) || strcmp(a->name, b->name))
		return DIFF("context %" PRIu64 ": attributes differ", a->id);
	if (a->n_regions != b->n_regions || a->n_maps != b->n_maps || a->n_devs != b->n_devs ||
	    a->mapped_bytes != b->mapped_bytes)
		return DIFF("context %" PRIu64 ": counts differ (regions %u/%u, mappings %" PRIu64
			    "/%" PRIu64 ", devices %u/%u)", a->id, a->n_regions, b->n_regions,
			    a->n_maps, b->n_maps, a->n_devs, b->n_devs);
	for (struct jrnl_region *x = jrnl_ctx_region_first(a), *y = jrnl_ctx_region_first(b); x;
	     x = jrnl_ctx_region_next(x), y = jrnl_ctx_region_next(y))
		if (x->id != y->id || x->size != y->size || x->page_size != y->page_size ||
		    x->flags != y->flags || x->map_refs != y->map_refs || strcmp(x->fd_name, y->fd_name))
			return DIFF("context %" PRIu64 ": region %" PRIu64 " differs", a->id, x->id);
	for (struct jrnl_map *x = jrnl_ctx_map_first(a), *y = jrnl_ctx_map_first(b); x;
	     x = jrnl_ctx_map_next(x), y = jrnl_ctx_map_next(y))
		if (x->iova != y->iova || x->length != y->length || x->region != y->region ||
		    x->offset != y->offset || x->prot != y->prot || x->flags != y->flags ||
		    x->n_discarded != y->n_discarded ||
		    (x->n_discarded &&
		     memcmp(x->discarded, y->discarded,
			    (size_t)((x->length / jrnl_map_granule(x->flags) + 63) / 64) * 8)))
			return DIFF("context %" PRIu64 ": mapping at 0x%" PRIx64 " differs", a->id,
				    x->iova);
	for (struct jrnl_dev *x = jrnl_ctx_dev_first(a), *y = jrnl_ctx_dev_first(b); x;
	     x = jrnl_ctx_dev_next(x), y = jrnl_ctx_dev_next(y))
		if (x->id != y->id || strcmp(x->bdf, y->bdf))
			return DIFF("context %" PRIu64 ": device %" PRIu64 " differs", a->id, x->id);
	return true;
}

bool jrnl_state_equal(const struct jrnl_state *a, const struct jrnl_state *b, char *why,
		      size_t why_size)
{
	char dummy[1];
	if (!why) {
		why = dummy;
		why_size = sizeof(dummy);
	}
	if (a->n_ctxs != b->n_ctxs || a->n_maps != b->n_maps)
		return DIFF("counts differ: contexts %u/%u, mappings %" PRIu64 "/%" PRIu64,
			    a->n_ctxs, b->n_ctxs, a->n_maps, b->n_maps);
	if (a->next_id != b->next_id)
		return DIFF("next id differs: %" PRIu64 "/%" PRIu64, a->next_id, b->next_id);
	if (a->handoff != b->handoff)
		return DIFF("handoff state differs: %u/%u", a->handoff, b->handoff);
	for (struct jrnl_ctx *x = jrnl_state_ctx_first(a), *y = jrnl_state_ctx_first(b); x;
	     x = jrnl_state_ctx_next(x), y = jrnl_state_ctx_next(y)) {
		if (x->id != y->id)
			return DIFF("context %" PRIu64 " / %" PRIu64 ": different ids", x->id, y->id);
		if (!ctx_equal(x, y, why, why_size))
			return false;
	}
	return true;
}
#undef DIFF
