/* Persistence: journal + fd store (see persist.h for the names and the
 * contract, docs/journal.md for the journal, docs/operations.md for what an
 * operator sees).
 *
 * Ordering, the one rule everything hangs on: a journal record that adds
 * something is written before the kernel call, one that removes something
 * after it. So after a crash at any instant the journal never misses a
 * mapping the kernel holds; at worst it names one the kernel does not have
 * yet, and the restore maps it (the backend's map_adopt answers -ENOENT).
 *
 * A failed append (the memfd cannot grow) leaves the journal behind the
 * model: from then on mutations are refused (`broken`), reads keep working,
 * and the log says why. */
#include "state/persist.h"

#include <errno.h>
#include <fcntl.h>
#include <event2/event.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"
#include "core/core.h"
#include "policy/config.h"
#include "state/fdstore.h"
#include "state/journal.h"
#include "state/restore.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/macro.h"

#define ID_BLOCK 1024
#define COMPACT_CHECK_EVERY 4096

/* ------------------------------------------------------------ journal */

static int append_failed(struct persist *p, int r, const struct dmb_err *je, struct dmb_err *e)
{
	if (!p->broken)
		log_error("the state journal cannot take more records (%s): mutations are refused "
			  "until the broker restarts", je->msg[0] ? je->msg : strerror(-r));
	p->broken = true;
	return dmb_fail(e, DMB_E_UNAVAILABLE, -r,
			"the broker cannot record this change (state journal: %s); retry later",
			je->msg[0] ? je->msg : strerror(-r));
}

static void maybe_compact(struct persist *p);

#define APPEND(p, e, call)                                                  \
	({                                                                  \
		struct dmb_err _je = { 0 };                                 \
		int _r = (p)->broken ? -EIO : (call);                       \
		if (_r < 0)                                                 \
			_r = append_failed((p), _r, &_je, (e));             \
		else                                                        \
			maybe_compact(p);                                   \
		_r;                                                         \
	})
/* The same without compacting: for records written before the model has
 * the change (a compaction now would snapshot the model without it and
 * lose the record); the next append compacts. */
#define APPEND_NC(p, e, call)                                               \
	({                                                                  \
		struct dmb_err _je = { 0 };                                 \
		int _r = (p)->broken ? -EIO : (call);                       \
		if (_r < 0)                                                 \
			_r = append_failed((p), _r, &_je, (e));             \
		_r;                                                         \
	})
/* For records of things that already happened: nothing to refuse. */
#define APPEND_AFTER(p, call) ((void)APPEND(p, NULL, call))

static int h_ctx_create(void *o, struct dmb_ctx *ctx, struct dmb_err *e)
{
	struct persist *p = o;
	int r = fdstore_put_ctx(ctx);
	if (r < 0)
		return fdstore_refused(r, "context", ctx->id, e);
	uint32_t flags = (ctx->persistent ? JRNL_CTX_PERSISTENT : 0) |
			 (ctx->noiommu ? JRNL_CTX_NOIOMMU : 0);
	return APPEND(p, e, jrnl_append_ctx_create(p->j, ctx->id, ctx->owner->session_id,
						    ctx->owner->uid, ctx->owner->gid, flags, ctx->name,
						    ctx->token, &_je));
}

static void h_ctx_destroy(void *o, struct dmb_ctx *ctx)
{
	struct persist *p = o;
	APPEND_AFTER(p, jrnl_append_ctx_destroy(p->j, ctx->id, &_je));
	fdstore_remove_set("ctx", ctx->id, &ctx->stored);
}

static void h_ctx_reclaim(void *o, struct dmb_ctx *ctx)
{
	struct persist *p = o;
	APPEND_AFTER(p, jrnl_append_ctx_reclaim(p->j, ctx->id, ctx->owner->session_id,
						 ctx->owner->uid, ctx->owner->gid, ctx->token, &_je));
}

static int h_region_add(void *o, struct dmb_region *r, struct dmb_err *e)
{
	struct persist *p = o;
	char name[64];
	snprintf(name, sizeof(name), "region.%" PRIu64, r->id);
	/* The store keeps one fd per open file description: the same memfd
	 * registered in two contexts (one description, passed twice) would be
	 * dropped as a duplicate. Store a fresh description of the same file. */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", r->fd);
	int own = open(path, (r->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (own < 0)
		return dmb_fail(e, DMB_E_INTERNAL, errno,
				"cannot reopen region %" PRIu64 " for the fd store: %m", r->id);
	int sr = fdstore_put(name, own);
	close(own);
	if (sr < 0)
		return fdstore_refused(sr, "region", r->id, e);
	uint32_t flags = (r->writable ? JRNL_REGION_WRITABLE : 0) | (r->hugetlb ? JRNL_REGION_HUGETLB : 0);
	int ret = APPEND(p, e, jrnl_append_region_add(p->j, r->ctx->id, r->id, r->size, r->page_size,
						      flags, name, &_je));
	if (ret < 0)
		fdstore_remove(name);
	return ret;
}

static void h_region_remove(void *o, struct dmb_region *r)
{
	struct persist *p = o;
	APPEND_AFTER(p, jrnl_append_region_remove(p->j, r->ctx->id, r->id, &_je));
	char name[64];
	snprintf(name, sizeof(name), "region.%" PRIu64, r->id);
	fdstore_remove(name);
}

/* A MAP entry's flags: a granular mapping's granule. */
static uint32_t map_flags_of(const struct dmb_map_req *q)
{
	return q->granule ? JRNL_MAP_GRANULE(__builtin_ctzll(q->granule)) : 0;
}

static int h_convert(void *o, struct dmb_ctx *ctx, const struct dmb_range *r, size_t n,
		     bool discard, struct dmb_err *e)
{
	struct persist *p = o;
	int ret = 0;
	for (size_t i = 0; i < n && ret == 0; i += JRNL_BATCH_MAX) {
		size_t k = n - i < JRNL_BATCH_MAX ? n - i : JRNL_BATCH_MAX;
		ret = APPEND_NC(p, e, jrnl_append_convert(p->j, ctx->id, discard,
						       (const struct jrnl_range *)(r + i), (uint32_t)k,
						       &_je));
	}
	/* Tests: a crash after a discard is journaled and before its kernel
	 * calls; the next start must take those granules out of the IOMMU. */
	const char *crash = getenv("DMABROKERD_TEST_CRASH");
	if (ret == 0 && discard && crash && !strcmp(crash, "discard-journaled")) {
		log_notice("DMABROKERD_TEST_CRASH=discard-journaled: crashing after the discard is "
			   "journaled, before the kernel unmaps it");
		raise(SIGKILL);
	}
	return ret;
}

static void h_converted(void *o)
{
	maybe_compact(o);
}

static int h_map_add(void *o, struct dmb_ctx *ctx, const struct dmb_map_req *q, size_t n,
		     struct dmb_err *e)
{
	struct persist *p = o;
	if (n == 1)
		return APPEND(p, e, jrnl_append_map(p->j, ctx->id, q->iova, q->length, q->region_id,
						    q->offset, q->prot, map_flags_of(q), &_je));
	_cleanup_free_ struct jrnl_map_entry *ents = malloc(n * sizeof(*ents));
	if (!ents)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		ents[i] = (struct jrnl_map_entry){ q[i].iova, q[i].length, q[i].region_id,
						   q[i].offset, q[i].prot, map_flags_of(&q[i]) };
	return APPEND(p, e, jrnl_append_map_batch(p->j, ctx->id, ents, (uint32_t)n, &_je));
}

static int h_p2p_add(void *o, struct dmb_ctx *ctx, const struct dmb_map_peer_req *q,
		     struct dmb_err *e)
{
	struct persist *p = o;
	return APPEND(p, e, jrnl_append_map(p->j, ctx->id, q->iova, q->length, q->peer->id,
					    q->offset, q->prot, JMAP_MMIO | (q->bar << 8), &_je));
}

static void h_unmap(void *o, struct dmb_ctx *ctx, const struct dmb_range *r, size_t n)
{
	struct persist *p = o;
	if (n == 1) {
		APPEND_AFTER(p, jrnl_append_unmap(p->j, ctx->id, r->iova, r->length, &_je));
		return;
	}
	for (size_t i = 0; i < n; i += JRNL_BATCH_MAX) {
		size_t k = n - i < JRNL_BATCH_MAX ? n - i : JRNL_BATCH_MAX;
		/* struct dmb_range and struct jrnl_range are both {iova, length} */
		_Static_assert(sizeof(struct dmb_range) == sizeof(struct jrnl_range), "range layout");
		APPEND_AFTER(p, jrnl_append_unmap_ranges(p->j, ctx->id,
							 (const struct jrnl_range *)(r + i),
							 (uint32_t)k, &_je));
	}
}

static void h_unmap_all(void *o, struct dmb_ctx *ctx)
{
	struct persist *p = o;
	APPEND_AFTER(p, jrnl_append_unmap_all(p->j, ctx->id, &_je));
}

static int h_device_add(void *o, struct dmb_device *d, struct dmb_err *e)
{
	struct persist *p = o;
	const struct dmb_backend_ops *ops = d->ctx->core->be->ops;
	struct dmb_fdset fds = { 0 };
	int r = 0;
	if (ops->dev_fds && ops->dev_fds(d->bdev, &fds) == 0)
		r = fdstore_put_set("dev", d->id, &fds, &d->stored);
	int rc = fdstore_put_ctx(d->ctx); /* type1: a new group */
	if (r < 0 || rc < 0)
		return fdstore_refused(r < 0 ? r : rc, "device", d->id, e);
	return APPEND(p, e, jrnl_append_device_add(p->j, d->ctx->id, d->id, d->bdf, &_je));
}

static void h_device_remove(void *o, struct dmb_device *d)
{
	struct persist *p = o;
	APPEND_AFTER(p, jrnl_append_device_remove(p->j, d->ctx->id, d->id, &_je));
	fdstore_remove_set("dev", d->id, &d->stored);
}

static void h_session_end(void *o, uint64_t session_id)
{
	struct persist *p = o;
	APPEND_AFTER(p, jrnl_append_session_end(p->j, session_id, &_je));
	char name[64];
	snprintf(name, sizeof(name), "session.%" PRIu64, session_id);
	fdstore_remove(name);
}

static void h_id_used(void *o, uint64_t id)
{
	struct persist *p = o;
	if (id < p->watermark)
		return;
	p->watermark = id + ID_BLOCK;
	APPEND_AFTER(p, jrnl_append_id_watermark(p->j, p->watermark, &_je));
}

static const struct dmb_journal_hooks hooks_template = {
	.ctx_create = h_ctx_create,
	.ctx_destroy = h_ctx_destroy,
	.ctx_reclaim = h_ctx_reclaim,
	.region_add = h_region_add,
	.region_remove = h_region_remove,
	.map_add = h_map_add,
	.p2p_add = h_p2p_add,
	.unmap = h_unmap,
	.convert = h_convert,
	.converted = h_converted,
	.unmap_all = h_unmap_all,
	.device_add = h_device_add,
	.device_remove = h_device_remove,
	.session_end = h_session_end,
	.id_used = h_id_used,
};

/* ------------------------------------------------------------ snapshots */

/* A fresh journal holding the model as it is now: one record per object.
 * Written at start-up after a restore and when the journal has grown far
 * beyond the live state. */
static int snapshot(struct persist *p, const struct persist_snapshot_filter *f, uint32_t handoff,
		    struct jrnl **out, struct dmb_err *e)
{
	struct dmb_core *core = p->host->core;
	struct jrnl *j;
	int r = jrnl_create(&j, e);
	if (r < 0)
		return r;
	uint64_t wm = core->next_id + ID_BLOCK;
	r = jrnl_append_id_watermark(j, wm, e);
	if (r == 0 && handoff != JRNL_HANDOFF_NORMAL)
		r = jrnl_append_handoff(j, handoff, e);
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		if (r < 0)
			break;
		if (f && f->keep && !f->keep(f->opaque, ctx))
			continue;
		const struct dmb_owner *o = ctx->owner;
		uint32_t flags = (ctx->persistent ? JRNL_CTX_PERSISTENT : 0) | (o ? 0 : JRNL_CTX_DETACHED) |
				 (ctx->noiommu ? JRNL_CTX_NOIOMMU : 0);
		/* A detached context keeps its last session (0: nobody since a
		 * host handoff's restore), as a replay of the live journal does,
		 * and the uid it is charged to. */
		r = jrnl_append_ctx_create(j, ctx->id, o ? o->session_id : ctx->last_session,
					   ctx->acct->uid, o ? o->gid : 0, flags, ctx->name, ctx->token, e);
		struct dmb_region *reg;
		RB_FOREACH(reg, dmb_region_tree, &ctx->regions) {
			if (r < 0)
				break;
			char name[64];
			snprintf(name, sizeof(name), "region.%" PRIu64, reg->id);
			if (f && f->region_name)
				f->region_name(f->opaque, reg, name, sizeof(name));
			uint32_t rf = (reg->writable ? JRNL_REGION_WRITABLE : 0) |
				      (reg->hugetlb ? JRNL_REGION_HUGETLB : 0);
			r = jrnl_append_region_add(j, ctx->id, reg->id, reg->size, reg->page_size, rf,
						   name, e);
		}
		struct dmb_device *d;
		TAILQ_FOREACH(d, &ctx->devices, link) {
			if (r < 0)
				break;
			r = jrnl_append_device_add(j, ctx->id, d->id, d->bdf, e);
		}
	}
	/* Mappings after every device exists (P2P entries name peers). */
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		if (f && f->keep && !f->keep(f->opaque, ctx))
			continue;
		struct dmb_mapping *m;
		for (m = map_first_from(ctx, 0); m && r == 0; m = map_next(ctx, m)) {
			if (map_is_mmio(m)) {
				const struct dmb_p2p *pp = dmb_container_of(m, struct dmb_p2p, m);
				r = jrnl_append_map(j, ctx->id, m->iova, m->length, pp->peer->id, m->offset,
						    map_prot(m), JMAP_MMIO | (pp->bar << 8), e);
			} else {
				const struct dmb_gran *g = gran_of(ctx, m);
				uint32_t mf = g ? JRNL_MAP_GRANULE(__builtin_ctzll(g->granule)) : 0;
				r = jrnl_append_map(j, ctx->id, m->iova, m->length, m->region->id, m->offset,
						    map_prot(m), mf, e);
				if (r == 0 && g && g->discarded)
					r = jrnl_snapshot_discards(j, ctx->id, m->iova, m->length,
								   g->granule, g->bits, e);
			}
		}
	}
	if (r < 0) {
		jrnl_close(j);
		return r;
	}
	if (!f)
		p->watermark = wm;
	*out = j;
	return 0;
}

static int write_snapshot(struct persist *p, struct jrnl **out, struct dmb_err *e)
{
	return snapshot(p, NULL, p->handoff, out, e);
}

int persist_snapshot(struct persist *p, const struct persist_snapshot_filter *f, uint32_t handoff,
		     struct jrnl **out, struct dmb_err *e)
{
	static const struct persist_snapshot_filter all = { 0 };
	return snapshot(p, f ? f : &all, handoff, out, e);
}

/* Replaces the journal with a snapshot: the new one is stored before the
 * old one is removed, so a crash in between finds both and keeps the
 * higher generation (a snapshot starts at generation 1: we name them by
 * our own counter, carried in the name). If the store does not take the new
 * journal, the old one stays in use (and fresh is closed). */
static int swap_journal(struct persist *p, struct jrnl *fresh)
{
	char newname[64], oldname[64];
	snprintf(newname, sizeof(newname), "jrnl.%" PRIu64, p->generation + 1);
	snprintf(oldname, sizeof(oldname), "jrnl.%" PRIu64, p->generation);
	int r = fdstore_put(newname, jrnl_fd(fresh));
	if (r < 0) {
		jrnl_close(fresh);
		return r;
	}
	p->generation++;
	if (p->j)
		fdstore_remove(oldname);
	jrnl_close(p->j);
	p->j = fresh;
	p->appends = 0;
	return 0;
}

static void maybe_compact(struct persist *p)
{
	if (++p->appends < COMPACT_CHECK_EVERY)
		return;
	p->appends = 0;
	struct dmb_core *core = p->host->core;
	uint64_t live = jrnl_snapshot_estimate(core->n_contexts, core->n_regions, core->n_devices,
					       core->n_mappings);
	if (!jrnl_should_compact(p->j, live))
		return;
	struct jrnl *fresh;
	struct dmb_err e = { 0 };
	if (write_snapshot(p, &fresh, &e) < 0) {
		log_warning("journal compaction failed (the journal keeps growing): %s", e.msg);
		return;
	}
	if (swap_journal(p, fresh) < 0)
		return; /* the old journal goes on; the next check tries again */
	log_info("journal compacted to %" PRIu64 " bytes (%" PRIu64 " mappings)",
		 jrnl_committed(p->j), core->n_mappings);
}

/* ------------------------------------------------------------ grace */

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct persist *p = arg;
	struct dmb_core *core = p->host->core;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	uint64_t grace = (uint64_t)p->host->cfg->grace_period_s * 1000;
	if (p->hold_releases)
		return; /* prepared for a handoff: what is preserved stays as it is */
	struct dmb_ctx *c, *next;
	for (c = RB_MIN(dmb_ctx_tree, &core->contexts); c; c = next) {
		next = RB_NEXT(dmb_ctx_tree, &core->contexts, c);
		if (!c->owner && c->detached_ms && now - c->detached_ms >= grace) {
			log_notice("context %" PRIu64 " '%s' released: not reclaimed within %u s", c->id,
				   c->name, p->host->cfg->grace_period_s);
			ctx_destroy(c);
		}
	}
}

/* ------------------------------------------------------------ entry points */

static int parse_gen(const char *name, uint64_t *gen)
{
	return name && sscanf(name, "jrnl.%" SCNu64, gen) == 1 ? 0 : -1;
}

/* systemd drops an fd beyond FileDescriptorStoreMax= with a log line of its
 * own and tells us nothing, so an object journaled with such an fd would be
 * lost at the next restart. The store's capacity is known instead: $FDSTORE
 * where systemd sets it (v254+), else [persist] fd_store_max (the unit's
 * value); objects beyond it are refused (core/account.c) and a connection
 * beyond it is not stored. */
static void store_budget(struct dmb_fd_budget *b, const struct dmb_config *cfg)
{
	const char *v = getenv("FDSTORE");
	char *end;
	unsigned long long n = v ? strtoull(v, &end, 10) : 0;
	bool from_env = v && *v && !*end && n > 0;
	b->store_max = from_env ? n : cfg->fd_store_max;
	b->store_limit = b->store_max > DMB_FDSTORE_RESERVE ? b->store_max - DMB_FDSTORE_RESERVE : 0;
	log_info("fd store: %" PRIu64 " entries (%s), %u kept for the journal and the host handoff",
		 b->store_max, from_env ? "$FDSTORE" : "[persist] fd_store_max", DMB_FDSTORE_RESERVE);
}

int persist_init(struct persist *p, const struct state_host *host, struct stored_fds *st,
		 struct dmb_err *e)
{
	memset(p, 0, sizeof(*p));
	p->host = host;
	struct dmb_core *core = host->core;
	const char *ns = getenv("NOTIFY_SOCKET");
	if (!ns || !*ns) {
		log_info("no NOTIFY_SOCKET: running without an fd store; a restart unmaps everything");
		for (size_t i = 0; i < st->n; i++)
			safe_close(st->fd[i]);
		return 0;
	}

	/* The journal: the highest generation present. */
	int jfd = -1;
	uint64_t best = 0;
	for (size_t i = 0; i < st->n; i++) {
		uint64_t g;
		if (parse_gen(st->name[i], &g) == 0 && g >= best) {
			best = g;
			jfd = st->fd[i];
		}
	}
	p->generation = best;
	p->enabled = true;
	store_budget(&core->fds, host->cfg);
	core->jh = NULL; /* restoring journals nothing */
	int r = 0;
	if (jfd >= 0) {
		/* Older generations: a compaction was interrupted. */
		for (size_t i = 0; i < st->n; i++) {
			uint64_t g;
			if (parse_gen(st->name[i], &g) == 0 && st->fd[i] != jfd) {
				fdstore_remove(st->name[i]);
				st->fd[i] = safe_close(st->fd[i]);
				free(st->name[i]);
				st->name[i] = NULL;
			}
		}
		uint64_t t0 = dmb_now_ms();
		r = restore_journal(p, st, jfd, false, NULL, e);
		if (r < 0) {
			log_error("the state journal could not be read (%s): starting empty; the old "
				  "kernel objects are released as their fds close", e->msg);
			for (size_t i = 0; i < st->n; i++)
				if (st->fd[i] != jfd && st->fd[i] >= 0) {
					fdstore_remove(st->name[i] ? st->name[i] : "");
					safe_close(st->fd[i]);
				}
		} else {
			log_notice("restored %" PRIu64 " context(s) and %" PRIu64 " mapping(s) in %" PRIu64
				   " ms without unmapping (%" PRIu64 " mapped again, %" PRIu64
				   " stray removed, %" PRIu64 " context(s) lost)",
				   p->restored_contexts, p->restored_mappings, dmb_now_ms() - t0,
				   p->remapped, p->stray, p->lost);
		}
	} else {
		for (size_t i = 0; i < st->n; i++) {
			log_info("fd store: dropping '%s' (no journal)", st->name[i] ? st->name[i] : "?");
			fdstore_remove(st->name[i] ? st->name[i] : "");
			safe_close(st->fd[i]);
		}
	}

	/* Non-persistent contexts whose session ended while we were down go
	 * now, before the snapshot (which then does not know them). */
	struct dmb_ctx *c, *next;
	for (c = RB_MIN(dmb_ctx_tree, &core->contexts); c; c = next) {
		next = RB_NEXT(dmb_ctx_tree, &core->contexts, c);
		if (!c->owner && !c->persistent) {
			log_info("context %" PRIu64 " released: its session ended while the broker was "
				 "down", c->id);
			/* Not journaled (the snapshot comes next), but its fds must
			 * leave the store, or systemd keeps its kernel objects. */
			fdstore_remove_set("ctx", c->id, &c->stored);
			struct dmb_device *d;
			TAILQ_FOREACH(d, &c->devices, link)
				fdstore_remove_set("dev", d->id, &d->stored);
			struct dmb_region *reg;
			RB_FOREACH(reg, dmb_region_tree, &c->regions) {
				char name[64];
				snprintf(name, sizeof(name), "region.%" PRIu64, reg->id);
				fdstore_remove(name);
			}
			ctx_destroy(c);
		}
	}

	/* Journal from now on: a snapshot of the model as it stands. */
	struct jrnl *fresh;
	struct dmb_err se = { 0 };
	struct jrnl *old = r == 0 ? p->j : NULL;
	p->j = NULL;
	if (write_snapshot(p, &fresh, &se) < 0) {
		jrnl_close(old);
		p->enabled = false;
		return dmb_fail(e, DMB_E_INTERNAL, ENOMEM, "cannot start a state journal: %s", se.msg);
	}
	p->j = old;
	int sr = swap_journal(p, fresh);
	if (sr < 0 && !p->j) {
		p->enabled = false;
		log_error("the state journal could not be put in the fd store (%s): persistence is "
			  "off, and a restart will unmap everything", strerror(-sr));
		return 0;
	}
	if (sr < 0)
		log_warning("the start-up snapshot could not be put in the fd store (%s); the restored "
			    "journal stays in use", strerror(-sr));

	static struct dmb_journal_hooks hooks;
	hooks = hooks_template;
	hooks.opaque = p;
	core->jh = &hooks;

	/* Sessions adopted from the store: tell them, so a request in flight
	 * at the restart can be retried. */
	host->restarted(host->opaque);

	/* Persistent contexts nobody holds: released after the grace period. */
	p->ev_grace = event_new(host->base, -1, EV_PERSIST, grace_cb, p);
	struct timeval tv = { 1, 0 };
	if (p->ev_grace)
		event_add(p->ev_grace, &tv);

	return 0;
}

bool persist_session_new(struct persist *p, uint64_t id, int fd)
{
	if (!p->enabled)
		return false;
	/* A connection that could not be stored still works; it just ends with
	 * this process (the log says why). */
	struct dmb_fd_budget *b = &p->host->core->fds;
	if (b->store_used >= b->store_limit) {
		log_ratelimited(LOG_WARNING, "session %" PRIu64 ": not kept in the fd store, which is "
				"full (%" PRIu64 " entries): this connection ends with the process", id,
				b->store_max);
		return false;
	}
	char name[64];
	snprintf(name, sizeof(name), "session.%" PRIu64, id);
	if (fdstore_put(name, fd) < 0)
		return false;
	b->store_used++;
	return true;
}

bool persist_handover(struct persist *p)
{
	if (!p->enabled)
		return false;
	struct dmb_core *core = p->host->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct dmb_ctx *c;
	RB_FOREACH(c, dmb_ctx_tree, &core->contexts) {
		struct dmb_err e = { 0 };
		if (ops->ctx_prepare_handover && ops->ctx_prepare_handover(c->bctx, &e) < 0)
			log_error("context %" PRIu64 ": handover preparation failed: %s", c->id, e.msg);
	}
	log_notice("stopping with %u context(s) and %" PRIu64 " mapping(s) kept in the fd store for "
		   "the next process", core->n_contexts, core->n_mappings);
	return true;
}

void persist_fini(struct persist *p)
{
	if (p->ev_grace)
		event_free(p->ev_grace);
	p->ev_grace = NULL;
	if (p->host)
		p->host->core->jh = NULL;
	jrnl_close(p->j);
	p->j = NULL;
}

/* ------------------------------------------------------------ host handoff */

int persist_set_handoff(struct persist *p, uint32_t state, struct dmb_err *e)
{
	uint32_t old = p->handoff;
	p->handoff = state;
	if (!p->enabled || !p->j)
		return 0;
	int r = APPEND(p, e, jrnl_append_handoff(p->j, state, &_je));
	if (r < 0)
		p->handoff = old;
	return r;
}

int persist_restore_fresh(struct persist *p, const struct persist_fetch *fetch, int jfd,
			  struct dmb_err *e)
{
	const struct dmb_journal_hooks *jh = p->host->core->jh;
	p->host->core->jh = NULL; /* journaled at once, by the snapshot that follows */
	p->restored_contexts = p->restored_mappings = p->lost = 0;
	struct stored_fds none = { 0 };
	int r = restore_journal(p, &none, jfd, true, fetch, e);
	p->host->core->jh = jh;
	return r;
}

int persist_store_everything(struct persist *p, struct dmb_err *e)
{
	if (!p->enabled)
		return 0;
	struct dmb_core *core = p->host->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		int r = fdstore_put_ctx(ctx);
		if (r < 0)
			return fdstore_refused(r, "context", ctx->id, e);
		struct dmb_device *d;
		TAILQ_FOREACH(d, &ctx->devices, link) {
			struct dmb_fdset fds = { 0 };
			if (ops->dev_fds && ops->dev_fds(d->bdev, &fds) == 0 &&
			    (r = fdstore_put_set("dev", d->id, &fds, &d->stored)) < 0)
				return fdstore_refused(r, "device", d->id, e);
		}
		struct dmb_region *reg;
		RB_FOREACH(reg, dmb_region_tree, &ctx->regions) {
			char name[64], path[64];
			snprintf(name, sizeof(name), "region.%" PRIu64, reg->id);
			snprintf(path, sizeof(path), "/proc/self/fd/%d", reg->fd);
			int own = open(path, (reg->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
			if (own < 0)
				return dmb_fail(e, DMB_E_INTERNAL, errno,
						"cannot reopen region %" PRIu64 " for the fd store: %m", reg->id);
			r = fdstore_put(name, own);
			close(own);
			if (r < 0)
				return fdstore_refused(r, "region", reg->id, e);
		}
	}
	return 0;
}

int persist_resnapshot(struct persist *p, struct dmb_err *e)
{
	if (!p->enabled)
		return 0;
	struct jrnl *fresh;
	int r = write_snapshot(p, &fresh, e);
	if (r < 0)
		return r;
	r = swap_journal(p, fresh);
	if (r < 0)
		return dmb_fail(e, DMB_E_UNAVAILABLE, -r,
				"the state journal could not be put in the fd store (%s)", strerror(-r));
	return 0;
}

int persist_store_fd(const char *name, int fd)
{
	return fdstore_put(name, fd);
}

void persist_unstore(const char *name)
{
	fdstore_remove(name);
}
