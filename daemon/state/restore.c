/* Restore (state/restore.h): the journal replayed into the core, and every
 * kernel object it names taken back -- from the fd store after a restart,
 * or made anew after a kexec (fresh), each region's memfd fetched from the
 * preserver. Called by persist.c at start-up and for a host handoff; calls
 * the core, the journal's model and the fd store, never persist.c. */
#include "state/restore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "core/core.h"
#include "state/fdstore.h"
#include "state/journal.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/macro.h"

struct restore {
	struct persist *p;
	struct stored_fds *st;
	bool *used;
	/* After a kexec: nothing of the old kernel objects exists; every
	 * context, device and mapping is made anew (same ids, IOVAs, tokens). */
	bool fresh;
	/* fresh: where each region's memfd comes from, by its journaled name. */
	const struct persist_fetch *fetch;
};

/* Restored with something missing: the owner hears it on reclaim. */
static void degrade(struct dmb_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void degrade(struct dmb_ctx *ctx, const char *fmt, ...)
{
	size_t used = strlen(ctx->degraded);
	if (used + 4 >= sizeof(ctx->degraded))
		return;
	if (used)
		used += (size_t)snprintf(ctx->degraded + used, sizeof(ctx->degraded) - used, "; ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx->degraded + used, sizeof(ctx->degraded) - used, fmt, ap);
	va_end(ap);
}

static int take_named(struct restore *rs, const char *name)
{
	for (size_t i = 0; i < rs->st->n; i++)
		if (!rs->used[i] && rs->st->name[i] && !strcmp(rs->st->name[i], name)) {
			rs->used[i] = true;
			return rs->st->fd[i];
		}
	return -1;
}

/* Every stored fd named <prefix>.<id>.<x> as a backend fdset (x = name). */
static void take_set(struct restore *rs, const char *prefix, uint64_t id, struct dmb_fdset *out)
{
	char pre[64];
	int n = snprintf(pre, sizeof(pre), "%s.%" PRIu64 ".", prefix, id);
	out->n = 0;
	for (size_t i = 0; i < rs->st->n && out->n < DMB_MAX_OBJ_FDS; i++) {
		const char *nm = rs->st->name[i];
		if (rs->used[i] || !nm || strncmp(nm, pre, (size_t)n))
			continue;
		rs->used[i] = true;
		out->e[out->n].fd = rs->st->fd[i];
		snprintf(out->e[out->n].name, sizeof(out->e[0].name), "%s", nm + n);
		out->n++;
	}
}

static void close_set(struct dmb_fdset *s)
{
	for (size_t i = 0; i < s->n; i++)
		safe_close(s->e[i].fd);
	s->n = 0;
}

static struct dmb_device *find_device(struct dmb_core *core, uint64_t id)
{
	struct dmb_ctx *c;
	RB_FOREACH(c, dmb_ctx_tree, &core->contexts) {
		struct dmb_device *d;
		TAILQ_FOREACH(d, &c->devices, link)
			if (d->id == id)
				return d;
	}
	return NULL;
}

static void restore_ctx(struct restore *rs, struct jrnl_ctx *jc)
{
	struct persist *p = rs->p;
	struct dmb_core *core = p->host->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct dmb_err e = { 0 };

	struct dmb_fdset fds = { 0 };
	struct dmb_bctx *bctx = NULL;
	int r;
	if (rs->fresh) {
		r = ops->ctx_open(core->be, &bctx, &e);
	} else {
		take_set(rs, "ctx", jc->id, &fds);
		r = ops->ctx_adopt ? ops->ctx_adopt(core->be, &fds, &bctx, &e) : -EOPNOTSUPP;
	}
	if (r == 0 && jc->noiommu) {
		/* Before any device comes back: it must be one without an IOMMU. */
		r = ctx_adopt_noiommu(core, bctx, &e);
		if (r < 0) {
			ops->ctx_close(bctx);
			bctx = NULL;
			fds.n = 0; /* the backend context had taken them */
		}
	}
	if (r < 0) {
		log_error("context %" PRIu64 " could not be re-adopted (%s); it is lost and its "
			  "mappings go with the old kernel objects", jc->id, e.msg[0] ? e.msg : strerror(-r));
		close_set(&fds);
		p->lost++;
		return;
	}
	struct dmb_owner *o = jc->detached ? NULL : p->host->session_owner(p->host->opaque, jc->session);
	struct dmb_ctx *ctx = ctx_adopt(core, o, jc->uid, jc->id, jc->name, jc->persistent,
					jc->token, bctx);
	if (!ctx) {
		ops->ctx_close(bctx);
		p->lost++;
		return;
	}
	if (jc->noiommu)
		ctx_mark_noiommu(ctx);
	for (size_t i = 0; i < fds.n; i++) {
		ctx->stored.e[i].fd = -1;
		snprintf(ctx->stored.e[i].name, sizeof(ctx->stored.e[0].name), "%s", fds.e[i].name);
	}
	ctx->stored.n = fds.n;
	if (!o && !rs->fresh)
		ctx->last_session = jc->session;
	if (!o && jc->persistent && !rs->fresh) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ctx->detached_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 + 1;
	}

	for (struct jrnl_region *jr = jrnl_ctx_region_first(jc); jr; jr = jrnl_ctx_region_next(jr)) {
		int fd = rs->fetch ? rs->fetch->fd(rs->fetch->opaque, jr->fd_name)
				   : take_named(rs, jr->fd_name);
		/* After a kexec the memfd is all that is left of that guest memory:
		 * one that cannot be adopted is kept for its owner (ctx_strand). */
		int keep = rs->fetch && fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
		struct dmb_region *reg;
		struct dmb_err re = { 0 };
		if (fd < 0 || region_adopt(ctx, jr->id, fd, jr->size, &reg, &re) < 0) {
			log_error("context %" PRIu64 ": region %" PRIu64 " could not be re-adopted: %s%s",
				  jc->id, jr->id, fd < 0 ? "its memfd was not kept" : re.msg,
				  keep >= 0 ? "; its memfd is kept for the owner's reclaim" : "");
			degrade(ctx, "region %" PRIu64 " was not restored (%s)%s", jr->id,
				fd < 0 ? "its memfd was not kept" : re.msg,
				keep >= 0 ? "; its memfd comes back with the reclaim" : "");
			if (keep >= 0)
				ctx_strand(ctx, jr->id, jr->size, keep);
			keep = -1;
		}
		if (keep >= 0)
			close(keep);
	}
	for (struct jrnl_dev *jd = jrnl_ctx_dev_first(jc); jd; jd = jrnl_ctx_dev_next(jd)) {
		struct dmb_fdset dfds = { 0 };
		struct dmb_bdev *bdev = NULL;
		struct dmb_dev_info info = { 0 };
		struct dmb_err de = { 0 };
		if (rs->fresh) {
			r = -ENOENT; /* opened again by BDF below: devices come back reset */
		} else {
			take_set(rs, "dev", jd->id, &dfds);
			r = ops->dev_adopt ? ops->dev_adopt(bctx, jd->bdf, &dfds, &bdev, &info, &de)
					   : -EOPNOTSUPP;
		}
		if (r == -ENOENT && ops->dev_open) {
			/* Detached from the backend just before the crash: attach it
			 * again, under its journaled id. */
			close_set(&dfds);
			dmb_err_clear(&de);
			r = ops->dev_open(bctx, jd->bdf, &bdev, &info, &de);
		}
		if (r < 0) {
			log_error("context %" PRIu64 ": device %s could not be re-adopted: %s", jc->id,
				  jd->bdf, de.msg[0] ? de.msg : strerror(-r));
			degrade(ctx, "device %s is missing (%s)", jd->bdf, de.msg[0] ? de.msg : strerror(-r));
			close_set(&dfds);
			continue;
		}
		struct dmb_device *d = device_adopt(ctx, jd->id, jd->bdf, bdev, &info);
		if (d) {
			d->stored = dfds;
			for (size_t i = 0; i < d->stored.n; i++)
				d->stored.e[i].fd = -1;
		}
	}
}

/* The discarded granules of the context's granular mappings are unmapped
 * first, before anything of the context is adopted: a no-op unless the old
 * process died between journaling a discard and its kernel call, and then
 * the granule the journal names discarded leaves the IOMMU. (First, so
 * that a backend that counts what it unmaps against what it adopted has
 * adopted nothing yet to miscount.) */
static void restore_discards(struct restore *rs, struct dmb_ctx *ctx, struct jrnl_ctx *jc)
{
	const struct dmb_backend_ops *ops = rs->p->host->core->be->ops;
	if (rs->fresh)
		return; /* a new kernel: nothing is mapped yet */
	for (struct jrnl_map *jm = jrnl_ctx_map_first(jc); jm; jm = jrnl_ctx_map_next(jm)) {
		uint64_t g = jrnl_map_granule(jm->flags), n = g ? jm->length / g : 0;
		for (uint64_t i = 0; jm->discarded && i < n; i++) {
			if (!((jm->discarded[i / 64] >> (i % 64)) & 1))
				continue;
			uint64_t got = 0;
			ops->unmap(ctx->bctx, jm->iova + i * g, g, &got, NULL);
		}
	}
}

/* A granular mapping: one kernel area per populated granule, adopted (or
 * mapped again: after a kexec, or journaled but never made); its discarded
 * granules stay out (restore_discards). All or nothing per mapping. */
static int restore_granular(struct restore *rs, struct dmb_ctx *ctx, struct dmb_region *reg,
			    const struct jrnl_map *jm, struct dmb_err *e)
{
	struct persist *p = rs->p;
	const struct dmb_backend_ops *ops = p->host->core->be->ops;
	uint64_t g = jrnl_map_granule(jm->flags), n = jm->length / g;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t iova = jm->iova + i * g, off = jm->offset + i * g;
		if (jm->discarded && ((jm->discarded[i / 64] >> (i % 64)) & 1))
			continue;
		int r = rs->fresh ? -ENOENT
		      : ops->map_adopt ? ops->map_adopt(ctx->bctx, reg->breg, off, iova, g, jm->prot, e)
				       : -EOPNOTSUPP;
		if (r == -ENOENT) {
			r = ops->map(ctx->bctx, reg->breg, off, iova, g, jm->prot, e);
			p->remapped += r == 0 && !rs->fresh;
		}
		if (r < 0) {
			uint64_t got = 0;
			if (i)
				ops->unmap(ctx->bctx, jm->iova, i * g, &got, NULL);
			return r;
		}
	}
	return map_adopt_record(ctx, reg, jm->iova, jm->length, jm->offset, jm->prot, g,
				jm->discarded);
}

static void restore_maps(struct restore *rs, struct jrnl_ctx *jc)
{
	struct persist *p = rs->p;
	struct dmb_core *core = p->host->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct dmb_ctx *ctx = ctx_lookup_any(core, jc->id);
	if (!ctx)
		return;
	restore_discards(rs, ctx, jc);
	for (struct jrnl_map *jm = jrnl_ctx_map_first(jc); jm; jm = jrnl_ctx_map_next(jm)) {
		struct dmb_err e = { 0 };
		int r;
		if (jm->flags & JMAP_MMIO) {
			struct dmb_device *peer = find_device(core, jm->region);
			unsigned bar = JMAP_BAR(jm->flags);
			if (!peer) {
				log_error("context %" PRIu64 ": P2P mapping 0x%" PRIx64 " dropped: its peer "
					  "device %" PRIu64 " is gone", jc->id, jm->iova, jm->region);
				degrade(ctx, "P2P mapping 0x%" PRIx64 " dropped (its peer device is missing)",
					jm->iova);
				continue;
			}
			uint16_t cmd = 0;
			bool on = p2p_read_command(peer, &cmd, &e) == 0 && (cmd & DMB_PCI_COMMAND_MEMORY);
			if (rs->fresh)
				r = -ENOENT;
			else
				r = ops->map_bar_adopt ? ops->map_bar_adopt(ctx->bctx, peer->bdev, bar,
									    jm->offset, jm->iova, jm->length,
									    jm->prot, &e)
						       : -ENOENT;
			if (r == 0 && !on) {
				/* The kernel still maps a BAR that no longer decodes. */
				uint64_t got;
				ops->unmap(ctx->bctx, jm->iova, jm->length, &got, NULL);
			} else if (r == -ENOENT && on) {
				r = ops->map_bar(ctx->bctx, peer->bdev, bar, jm->offset, jm->iova, jm->length,
						 jm->prot, &e);
				p->remapped += r == 0;
			} else if (r == -ENOENT) {
				r = 0;
			}
			if (r < 0) {
				log_error("context %" PRIu64 ": P2P mapping 0x%" PRIx64 " could not be "
					  "restored: %s", jc->id, jm->iova, e.msg);
				degrade(ctx, "P2P mapping 0x%" PRIx64 " could not be restored (%s)", jm->iova,
					e.msg);
				continue;
			}
			p2p_adopt_record(ctx, peer, bar, jm->offset, jm->iova, jm->length, jm->prot, !on);
			p->restored_mappings++;
			continue;
		}
		struct dmb_region *reg = region_lookup(ctx, jm->region);
		if (!reg) {
			log_error("context %" PRIu64 ": mapping 0x%" PRIx64 " dropped: its region %" PRIu64
				  " was not restored", jc->id, jm->iova, jm->region);
			continue;
		}
		if (jrnl_map_granule(jm->flags)) {
			r = restore_granular(rs, ctx, reg, jm, &e);
			if (r < 0) {
				log_error("context %" PRIu64 ": granular mapping [0x%" PRIx64 ", +0x%" PRIx64
					  "] could not be restored: %s", jc->id, jm->iova, jm->length,
					  e.msg[0] ? e.msg : strerror(-r));
				degrade(ctx, "granular mapping 0x%" PRIx64 " could not be made again (%s)",
					jm->iova, e.msg[0] ? e.msg : strerror(-r));
				continue;
			}
			p->restored_mappings++;
			continue;
		}
		if (rs->fresh)
			r = -ENOENT;
		else
			r = ops->map_adopt ? ops->map_adopt(ctx->bctx, reg->breg, jm->offset, jm->iova,
							    jm->length, jm->prot, &e)
					   : -EOPNOTSUPP;
		if (r == -ENOENT) {
			/* Journaled, but the old process died before the kernel
			 * call: do it now. */
			r = ops->map(ctx->bctx, reg->breg, jm->offset, jm->iova, jm->length, jm->prot, &e);
			p->remapped += r == 0 && !rs->fresh;
		}
		if (r < 0) {
			log_error("context %" PRIu64 ": mapping [0x%" PRIx64 ", +0x%" PRIx64 "] could not be "
				  "restored: %s", jc->id, jm->iova, jm->length, e.msg[0] ? e.msg : strerror(-r));
			degrade(ctx, "mapping 0x%" PRIx64 " could not be made again (%s)", jm->iova,
				e.msg[0] ? e.msg : strerror(-r));
			continue;
		}
		map_adopt_record(ctx, reg, jm->iova, jm->length, jm->offset, jm->prot, 0, NULL);
		p->restored_mappings++;
	}
	uint64_t stray = 0;
	struct dmb_err e = { 0 };
	if (!rs->fresh && ops->adopt_finish && ops->adopt_finish(ctx->bctx, &stray, &e) == 0 && stray) {
		log_notice("context %" PRIu64 ": %" PRIu64 " mapping(s) the journal did not name were "
			   "removed", ctx->id, stray);
		p->stray += stray;
	}
	p->restored_contexts++;
}

int restore_journal(struct persist *p, struct stored_fds *st, int jfd, bool fresh,
		   const struct persist_fetch *fetch, struct dmb_err *e)
{
	struct dmb_core *core = p->host->core;
	struct jrnl *j;
	struct jrnl_state state;
	struct jrnl_replay_result res;
	jrnl_state_init(&state);
	/* One walk: the records are validated (CRC, seq, payload) while they
	 * are replayed, not once to open and again to replay. */
	int r = jrnl_open_replay_fd(jfd, &jrnl_state_ops, &state, &res, &j, e);
	if (r < 0 && r != -EBADMSG) {
		jrnl_state_fini(&state);
		safe_close(jfd); /* consumed either way */
		return r;
	}
	if (res.stop != JRNL_STOP_END)
		log_warning("journal: replay stopped early (%s): everything before it is restored",
			    res.why);
	core->next_id = state.next_id > core->next_id ? state.next_id : core->next_id;
	if (!fresh)
		p->handoff = state.handoff;

	_cleanup_free_ bool *used = calloc(st->n + 1, sizeof(*used));
	if (!used) {
		jrnl_state_fini(&state);
		jrnl_close(j);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	struct restore rs = { .p = p, .st = st, .used = used, .fresh = fresh, .fetch = fetch };
	for (size_t i = 0; i < st->n; i++)
		if (st->fd[i] == jfd)
			used[i] = true;

	/* Clients first: their connections, then what they own. */
	for (size_t i = 0; i < st->n; i++) {
		uint64_t sid;
		if (used[i] || !st->name[i] || sscanf(st->name[i], "session.%" SCNu64, &sid) != 1)
			continue;
		used[i] = true;
		if (sid >= core->next_id)
			core->next_id = sid + 1;
		if (!p->host->adopt_session(p->host->opaque, st->fd[i], sid))
			safe_close(st->fd[i]);
	}
	for (struct jrnl_ctx *jc = jrnl_state_ctx_first(&state); jc; jc = jrnl_state_ctx_next(jc))
		restore_ctx(&rs, jc);
	for (struct jrnl_ctx *jc = jrnl_state_ctx_first(&state); jc; jc = jrnl_state_ctx_next(jc))
		restore_maps(&rs, jc);
	jrnl_state_fini(&state);

	/* What nobody claimed belonged to objects the journal no longer has. */
	for (size_t i = 0; i < st->n; i++)
		if (!used[i]) {
			if (!fresh) {
				log_info("fd store: dropping '%s' (no longer in the journal)",
					 st->name[i] ? st->name[i] : "?");
				fdstore_remove(st->name[i] ? st->name[i] : "");
			}
			st->fd[i] = safe_close(st->fd[i]);
		}
	if (fresh) {
		jrnl_close(j);
		return 0;
	}

	/* The old journal's generation name goes; a snapshot of what was
	 * really restored replaces it. */
	p->j = j;
	return 0;
}
