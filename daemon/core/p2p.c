/* Peer-to-peer mappings and BAR-state tracking.
 *
 * A P2P mapping makes device A's DMA reach device B's BAR. While B's memory
 * decoding is off, B is being reset, or B is gone, no IOMMU entry may point
 * at B's BAR: on real hardware a DMA there is an Unsupported Request that can
 * take the host down, and VFIO type1 would keep the stale entry. So:
 *
 *   mediated change   revoke every importer of B (all contexts) -> change
 *                     the command register / reset -> restore when decoding
 *                     is back on, at the same IOVAs
 *   behind our back   the watcher (p2p_poll, run on a timer for devices with
 *                     importers) sees decoding off -> revoke; on -> restore
 *   release           B closed or its context destroyed -> unmap for good
 *
 * A revoked mapping stays in its context's tree with p->revoked: the
 * IOVA range stays reserved for it, lists show it, unmap removes it. Owners
 * of affected mappings get MAPPINGS_REVOKED / MAPPINGS_RESTORED events, queued
 * before the reply to the request that caused them. */
#include "core/core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "util/log.h"
#include "util/macro.h"

#define EVENT_MAX_RANGES 4096

int p2p_read_command(struct dmb_device *d, uint16_t *cmd, struct dmb_err *e)
{
	const struct dmb_backend_ops *ops = d->ctx->core->be->ops;
	uint8_t b[2];
	if (!ops->dev_config_read)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend cannot read device config space", ops->name);
	int r = ops->dev_config_read(d->bdev, DMB_PCI_COMMAND, b, 2, e);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r, "reading the command register of %s failed: %s",
				d->bdf, strerror(-r));
	*cmd = (uint16_t)(b[0] | b[1] << 8);
	d->command = *cmd;
	return 0;
}

static int write_command(struct dmb_device *d, uint16_t cmd, struct dmb_err *e)
{
	const struct dmb_backend_ops *ops = d->ctx->core->be->ops;
	uint8_t b[2] = { (uint8_t)cmd, (uint8_t)(cmd >> 8) };
	if (!ops->dev_config_write)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend cannot write device config space", ops->name);
	int r = ops->dev_config_write(d->bdev, DMB_PCI_COMMAND, b, 2, e);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r, "writing the command register of %s failed: %s",
				d->bdf, strerror(-r));
	d->command = cmd;
	return 0;
}

/* Events: one per importing context, listing its affected ranges. */
struct hit {
	struct dmb_ctx *ctx;
	struct dmb_range range;
};

static int hit_cmp(const void *a, const void *b)
{
	const struct hit *x = a, *y = b;
	if (x->ctx->id != y->ctx->id)
		return x->ctx->id < y->ctx->id ? -1 : 1;
	return x->range.iova < y->range.iova ? -1 : x->range.iova > y->range.iova;
}

static void emit_hits(struct dmb_core *core, struct dmb_device *d, struct hit *h, size_t n,
		      uint32_t kind, bool permanent, const char *why)
{
	if (n == 0)
		return;
	qsort(h, n, sizeof(*h), hit_cmp);
	struct dmb_range *rg = malloc(sizeof(*rg) * (n < EVENT_MAX_RANGES ? n : EVENT_MAX_RANGES));
	if (!rg)
		return;
	char msg[200];
	snprintf(msg, sizeof(msg), "P2P mappings of %s %s: %s", d->bdf,
		 kind == DMB_EVENT_MAPPINGS_RESTORED ? "restored" : permanent ? "revoked for good" : "revoked",
		 why);
	for (size_t i = 0; i < n;) {
		struct dmb_ctx *ctx = h[i].ctx;
		size_t k = 0;
		while (i < n && h[i].ctx == ctx && k < EVENT_MAX_RANGES)
			rg[k++] = h[i++].range;
		struct dmb_event ev = {
			.kind = kind, .context_id = ctx->id, .device_id = d->id, .message = msg,
			.ranges = rg, .n_ranges = k, .permanent = permanent,
		};
		core_emit(core, ctx->owner, &ev);
	}
	free(rg);
}

/* Takes every live importer of d out of the IOMMU. Returns how many could
 * not be removed (0 = all gone). */
static size_t revoke_all(struct dmb_device *d, const char *why)
{
	struct dmb_core *core = d->ctx->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct hit *h = calloc(d->n_importers + 1, sizeof(*h));
	size_t n = 0, failed = 0;
	struct dmb_p2p *p;

	TAILQ_FOREACH(p, &d->importers, peer_link) {
		if (p->revoked)
			continue;
		uint64_t got = 0;
		struct dmb_err e = { 0 };
		core_quiesce(p->ctx);
		int r = ops->unmap(p->ctx->bctx, p->m.iova, p->m.length, &got, &e);
		if (r < 0 && r != -ENOENT) {
			failed++;
			log_error("P2P mapping 0x%" PRIx64 " of context %" PRIu64 " -> %s could not be "
				  "revoked: %s", p->m.iova, p->ctx->id, d->bdf,
				  e.msg[0] ? e.msg : strerror(-r));
			continue;
		}
		p->revoked = true;
		d->n_revoked++;
		d->revocations++;
		core->revocations++;
		if (h)
			h[n++] = (struct hit){ p->ctx, { p->m.iova, p->m.length } };
	}
	if (h) {
		emit_hits(core, d, h, n, DMB_EVENT_MAPPINGS_REVOKED, false, why);
		free(h);
	}
	if (n)
		log_notice("%s: %zu P2P mapping(s) revoked: %s", d->bdf, n, why);
	return failed;
}

static void restore_all(struct dmb_device *d, const char *why)
{
	struct dmb_core *core = d->ctx->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct hit *h = calloc(d->n_revoked + 1, sizeof(*h));
	size_t n = 0;
	struct dmb_p2p *p;

	TAILQ_FOREACH(p, &d->importers, peer_link) {
		if (!p->revoked)
			continue;
		struct dmb_err e = { 0 };
		core_quiesce(p->ctx);
		int r = ops->map_bar(p->ctx->bctx, d->bdev, p->bar, p->m.offset, p->m.iova,
				     p->m.length, map_prot(&p->m), &e);
		if (r < 0) {
			log_error("P2P mapping 0x%" PRIx64 " of context %" PRIu64 " -> %s could not be "
				  "restored (stays revoked): %s", p->m.iova, p->ctx->id, d->bdf,
				  e.msg[0] ? e.msg : strerror(-r));
			continue;
		}
		p->revoked = false;
		d->n_revoked--;
		d->restorations++;
		core->restorations++;
		if (h)
			h[n++] = (struct hit){ p->ctx, { p->m.iova, p->m.length } };
	}
	if (h) {
		emit_hits(core, d, h, n, DMB_EVENT_MAPPINGS_RESTORED, false, why);
		free(h);
	}
	if (n)
		log_notice("%s: %zu P2P mapping(s) restored: %s", d->bdf, n, why);
}

int p2p_map(struct dmb_ctx *ctx, const struct dmb_map_peer_req *q, struct dmb_err *e)
{
	struct dmb_core *core = ctx->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct dmb_device *peer = q->peer;
	uint64_t last, blast;

	const struct dmb_client_policy *pol = &ctx->owner->pol;
	if (!pol->p2p)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
				"the broker's policy does not allow this client P2P mappings");
	if (peer->ctx != ctx && peer->ctx->owner == ctx->owner && !pol->p2p_cross_context)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
				"%s is attached to another context and the policy does not allow P2P "
				"across contexts", peer->bdf);
	if (!ops->map_bar || !ops->dev_bar_info)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend cannot map a peer device's BAR (no P2P support)", ops->name);
	if (core->be->p2p_attr == DMB_MEM_CACHEABLE &&
	    core->p2p_cacheable == DMB_P2P_CACHEABLE_REFUSE) {
		log_ratelimited(LOG_NOTICE, "context %" PRIu64 ": P2P mapping of %s refused: the %s "
				"backend maps a peer BAR with cacheable attributes and [p2p] type1 is "
				"refuse", ctx->id, peer->bdf, ops->name);
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
				"the %s backend would map BAR %u of %s as cacheable, not MMIO, and "
				"[p2p] type1 refuses that on this host; iommufd maps BARs as MMIO "
				"(Linux 6.19+, VFIO_PCI_DMABUF)", ops->name, q->bar, peer->bdf);
	}
	if (q->prot == 0 || (q->prot & ~(uint32_t)(DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"prot 0x%x is not valid: use READ (1), WRITE (2) or both", q->prot);
	if (q->length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "mapping length is zero");
	if (!dmb_range_last(q->iova, q->length, &last) || !dmb_range_last(q->offset, q->length, &blast))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW, "iova/offset + length overflows");
	if (q->bar >= DMB_PCI_NUM_BARS)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "BAR %u does not exist (0..5)", q->bar);

	struct dmb_bar_info bi = { 0 };
	int r = ops->dev_bar_info(peer->bdev, q->bar, &bi, e);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r, "BAR %u of %s: %s", q->bar, peer->bdf,
				strerror(-r));
	if (bi.size == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, ENOENT, "BAR %u of %s is not implemented",
				q->bar, peer->bdf);
	if (!bi.mmio)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"BAR %u of %s is I/O port space; only memory BARs can be mapped", q->bar,
				peer->bdf);
	if (!bi.mappable)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"BAR %u of %s cannot be mapped (the kernel does not allow mmap of it)",
				q->bar, peer->bdf);
	if (blast >= bi.size)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"range [0x%" PRIx64 ", 0x%" PRIx64 "] is past the end of BAR %u of %s "
				"(0x%" PRIx64 " bytes)", q->offset, blast, q->bar, peer->bdf, bi.size);
	uint64_t align = ctx->iova.alignment > 4096 ? ctx->iova.alignment : 4096;
	if (!dmb_is_aligned(q->iova, align) || !dmb_is_aligned(q->length, align) ||
	    !dmb_is_aligned(q->offset, align))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"iova 0x%" PRIx64 ", offset 0x%" PRIx64 " and length 0x%" PRIx64
				" must be multiples of 0x%" PRIx64, q->iova, q->offset, q->length, align);
	r = ctx_check_iova(ctx, q->iova, last, e);
	if (r < 0)
		return r;
	r = map_check_free(ctx, q->iova, last, e);
	if (r < 0)
		return r;
	if (ctx->n_mappings >= ctx->owner->pol.limits.mappings_per_context)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"limit mappings_per_context (%" PRIu64 ") reached",
				ctx->owner->pol.limits.mappings_per_context);
	if (peer->in_reset)
		return dmb_fail(e, DMB_E_UNAVAILABLE, EAGAIN, "%s is being reset; retry", peer->bdf);
	uint16_t cmd;
	r = p2p_read_command(peer, &cmd, e);
	if (r < 0)
		return r;
	if (!(cmd & DMB_PCI_COMMAND_MEMORY))
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EFAULT,
				"%s has memory decoding off (command register 0x%04x); its BAR cannot be "
				"mapped until it is enabled", peer->bdf, cmd);

	struct dmb_p2p *p = calloc(1, sizeof(*p));
	if (!p)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	const struct dmb_journal_hooks *jh = core->jh;
	if (jh) {
		r = jh->p2p_add(jh->opaque, ctx, q, e);
		if (r < 0) {
			free(p);
			return r;
		}
	}
	r = ops->map_bar(ctx->bctx, peer->bdev, q->bar, q->offset, q->iova, q->length, q->prot, e);
	if (r < 0) {
		free(p);
		if (jh) {
			struct dmb_range rg = { q->iova, q->length };
			jh->unmap(jh->opaque, ctx, &rg, 1);
		}
		return dmb_fail(e, dmb_code_from_errno(r), -r,
				"the backend refused to map BAR %u of %s at iova 0x%" PRIx64 ": %s",
				q->bar, peer->bdf, q->iova, strerror(-r));
	}
	p->m = (struct dmb_mapping){ .iova = q->iova, .length = q->length, .offset = q->offset };
	map_set_prot(&p->m, q->prot);
	p->ctx = ctx;
	p->peer = peer;
	p->bar = q->bar;
	p->attr = core->be->p2p_attr;
	TAILQ_INSERT_TAIL(&peer->importers, p, peer_link);
	peer->n_importers++;
	map_insert(ctx, &p->m);
	if (p->attr == DMB_MEM_CACHEABLE && core->p2p_cacheable == DMB_P2P_CACHEABLE_WARN)
		log_ratelimited(LOG_WARNING, "context %" PRIu64 ": P2P mapping [0x%" PRIx64 ", 0x%"
				PRIx64 "] -> %s BAR %u is mapped with cacheable IOMMU attributes, not "
				"as MMIO (the %s backend cannot do otherwise; [p2p] type1 = warn)",
				ctx->id, q->iova, last, peer->bdf, q->bar, ops->name);
	log_info("context %" PRIu64 ": P2P mapping [0x%" PRIx64 ", 0x%" PRIx64 "] -> %s BAR %u +0x%" PRIx64,
		 ctx->id, q->iova, last, peer->bdf, q->bar, q->offset);
	return 0;
}

void p2p_unlink(struct dmb_p2p *p)
{
	struct dmb_device *d = p->peer;
	if (!d)
		return;
	TAILQ_REMOVE(&d->importers, p, peer_link);
	d->n_importers--;
	if (p->revoked)
		d->n_revoked--;
	p->peer = NULL;
}

int p2p_set_command(struct dmb_device *d, uint16_t set, uint16_t clear, struct dmb_err *e)
{
	const uint16_t allowed = DMB_PCI_COMMAND_MEMORY | DMB_PCI_COMMAND_MASTER;
	if ((set | clear) & ~allowed)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"only the memory-space (0x2) and bus-master (0x4) bits can be changed");
	if (set & clear)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "a bit cannot be both set and cleared");
	if (d->in_reset)
		return dmb_fail(e, DMB_E_UNAVAILABLE, EAGAIN, "%s is being reset; retry", d->bdf);

	uint16_t old;
	int r = p2p_read_command(d, &old, e);
	if (r < 0)
		return r;
	uint16_t cmd = (uint16_t)((old | set) & ~clear);
	char why[96];
	snprintf(why, sizeof(why), "memory decoding turned off at the request of session %" PRIu64,
		 d->ctx->owner ? d->ctx->owner->session_id : 0);

	/* Revoke first: no IOMMU entry may reach a BAR that stops decoding. */
	if (!(cmd & DMB_PCI_COMMAND_MEMORY) && revoke_all(d, why) > 0)
		return dmb_fail(e, DMB_E_INTERNAL, EIO,
				"some P2P mappings of %s could not be revoked; the command register "
				"was not changed", d->bdf);
	r = write_command(d, cmd, e);
	if (r < 0)
		return r;
	if ((cmd & DMB_PCI_COMMAND_MEMORY) && d->n_revoked)
		restore_all(d, "memory decoding is back on");
	const struct dmb_owner *o = d->ctx->owner;
	log_info("%s: command register 0x%04x -> 0x%04x (mediated, session %" PRIu64 " uid %u pid %d)",
		 d->bdf, old, cmd, o ? o->session_id : 0, o ? (unsigned)o->uid : 0u, o ? (int)o->pid : 0);
	return 0;
}

int p2p_reset(struct dmb_device *d, struct dmb_err *e)
{
	const struct dmb_backend_ops *ops = d->ctx->core->be->ops;
	if (!ops->dev_reset)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP, "the %s backend cannot reset devices",
				ops->name);
	if (d->in_reset)
		return dmb_fail(e, DMB_E_UNAVAILABLE, EAGAIN, "%s is already being reset", d->bdf);
	d->in_reset = true;
	if (revoke_all(d, "the device is being reset") > 0) {
		d->in_reset = false;
		return dmb_fail(e, DMB_E_INTERNAL, EIO,
				"some P2P mappings of %s could not be revoked; the device was not reset",
				d->bdf);
	}
	int r = ops->dev_reset(d->bdev, e);
	d->in_reset = false;
	if (r < 0)
		dmb_fail(e, dmb_code_from_errno(r), -r, "resetting %s failed: %s", d->bdf, strerror(-r));
	else
		log_info("%s: reset (mediated, session %" PRIu64 " uid %u pid %d)", d->bdf,
			 d->ctx->owner ? d->ctx->owner->session_id : 0,
			 d->ctx->owner ? (unsigned)d->ctx->owner->uid : 0u,
			 d->ctx->owner ? (int)d->ctx->owner->pid : 0);
	/* Whether or not the reset worked, restore what decoding allows. */
	uint16_t cmd;
	struct dmb_err e2 = { 0 };
	if (p2p_read_command(d, &cmd, &e2) == 0 && (cmd & DMB_PCI_COMMAND_MEMORY) && d->n_revoked)
		restore_all(d, "the reset completed and memory decoding is on");
	return r;
}

bool p2p_poll(struct dmb_device *d)
{
	if (d->in_reset || d->n_importers == 0)
		return false;
	uint16_t before = d->command, cmd;
	struct dmb_err e = { 0 };
	if (p2p_read_command(d, &cmd, &e) < 0) {
		/* Cannot see the device: assume the worst. */
		return revoke_all(d, "its command register cannot be read") == 0 && d->n_revoked;
	}
	bool on = cmd & DMB_PCI_COMMAND_MEMORY;
	if (!on && d->n_revoked < d->n_importers) {
		const struct dmb_owner *o = d->ctx->owner;
		log_warning("%s: memory decoding turned off behind the broker's back (command 0x%04x -> "
			    "0x%04x; device held by session %" PRIu64 ", uid %u, pid %d); revoking",
			    d->bdf, before, cmd, o ? o->session_id : 0, o ? (unsigned)o->uid : 0,
			    o ? (int)o->pid : 0);
		revoke_all(d, "memory decoding was turned off outside the broker");
		return true;
	}
	if (on && d->n_revoked) {
		restore_all(d, "memory decoding is back on");
		return true;
	}
	return false;
}

void p2p_release(struct dmb_device *d)
{
	struct dmb_core *core = d->ctx->core;
	const struct dmb_backend_ops *ops = core->be->ops;
	struct hit *h = calloc(d->n_importers + 1, sizeof(*h));
	size_t n = 0;
	struct dmb_p2p *p;

	while ((p = TAILQ_FIRST(&d->importers))) {
		struct dmb_ctx *ctx = p->ctx;
		core_quiesce(ctx);
		if (!p->revoked) {
			uint64_t got;
			struct dmb_err e = { 0 };
			int r = ops->unmap(ctx->bctx, p->m.iova, p->m.length, &got, &e);
			if (r < 0 && r != -ENOENT)
				log_error("P2P mapping 0x%" PRIx64 " of context %" PRIu64 " -> %s: unmap "
					  "at release failed: %s", p->m.iova, ctx->id, d->bdf,
					  e.msg[0] ? e.msg : strerror(-r));
			d->revocations++;
			core->revocations++;
		}
		if (h)
			h[n++] = (struct hit){ ctx, { p->m.iova, p->m.length } };
		if (core->jh) {
			struct dmb_range rg = { p->m.iova, p->m.length };
			core->jh->unmap(core->jh->opaque, ctx, &rg, 1);
		}
		map_remove(ctx, &p->m); /* unlinks and frees p */
	}
	if (h) {
		emit_hits(core, d, h, n, DMB_EVENT_MAPPINGS_REVOKED, true, "the device was released");
		free(h);
	}
	if (n)
		log_notice("%s released: %zu P2P mapping(s) removed for good", d->bdf, n);
}

int p2p_adopt_record(struct dmb_ctx *ctx, struct dmb_device *peer, unsigned bar, uint64_t offset,
		     uint64_t iova, uint64_t length, uint32_t prot, bool revoked)
{
	struct dmb_p2p *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->m = (struct dmb_mapping){ .iova = iova, .length = length, .offset = offset };
	map_set_prot(&p->m, prot);
	p->revoked = revoked;
	p->ctx = ctx;
	p->peer = peer;
	p->bar = bar;
	p->attr = ctx->core->be->p2p_attr;
	TAILQ_INSERT_TAIL(&peer->importers, p, peer_link);
	peer->n_importers++;
	if (revoked)
		peer->n_revoked++;
	map_insert(ctx, &p->m);
	return 0;
}
