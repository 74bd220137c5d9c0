#include "core/core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "util/log.h"
#include "util/macro.h"

/* Gives back what a context was charged (its own fds, one context). */
static void ctx_unaccount(struct dmb_ctx *ctx)
{
	acct_release(ctx->acct, DMB_FD_CTX);
	ctx->acct->contexts--;
	acct_put(TAKE_PTR(ctx->acct));
}

int ctx_create(struct dmb_owner *owner, const char *name, bool persistent, struct dmb_ctx **out,
	       struct dmb_err *e)
{
	return ctx_create_kind(owner, name, persistent, false, out, e);
}

int ctx_create_kind(struct dmb_owner *owner, const char *name, bool persistent, bool noiommu,
		    struct dmb_ctx **out, struct dmb_err *e)
{
	struct dmb_core *core = owner->core;

	if (noiommu && !owner->pol.noiommu)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
				"no-IOMMU contexts give no isolation and are not granted to uid %u: "
				"the policy setting `noiommu = yes` (in [default], [gid N] or [uid N]) "
				"grants them",
				(unsigned)owner->uid);
	if (noiommu && !core->be->ops->ctx_set_noiommu)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend has no no-IOMMU contexts", core->be->ops->name);
	if (persistent && !core->jh)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EOPNOTSUPP,
				"persistent contexts need the broker's state to survive it: it runs "
				"without a file-descriptor store (not under systemd)");
	int r = acct_check_contexts(owner->acct, &owner->pol.limits, e);
	if (r < 0)
		return r;
	struct dmb_ctx *ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	/* Its fds are charged before the backend opens any. */
	r = acct_charge(owner->acct, &owner->pol.limits, DMB_FD_CTX, e);
	if (r < 0) {
		free(ctx);
		return r;
	}
	ctx->acct = owner->acct;
	ctx->acct->refs++;
	ctx->acct->contexts++;
	ctx->core = core;
	ctx->persistent = persistent;
	snprintf(ctx->name, sizeof(ctx->name), "%s", name ? name : "");
	RB_INIT(&ctx->maps);
	RB_INIT(&ctx->grans);
	RB_INIT(&ctx->regions);
	TAILQ_INIT(&ctx->devices);

	r = core->be->ops->ctx_open(core->be, &ctx->bctx, e);
	if (r < 0) {
		ctx_unaccount(ctx);
		free(ctx);
		return dmb_fail(e, dmb_code_from_errno(r), -r, "could not open a backend context: %s",
				strerror(-r));
	}
	if (noiommu) {
		r = core->be->ops->ctx_set_noiommu(ctx->bctx, e);
		if (r < 0) {
			core->be->ops->ctx_close(ctx->bctx);
			ctx_unaccount(ctx);
			free(ctx);
			if (!e || !e->msg[0])
				dmb_fail(e, dmb_code_from_errno(r), -r,
					 "the %s backend cannot make a no-IOMMU context: %s",
					 core->be->ops->name, strerror(-r));
			return r;
		}
	}

	if (persistent && getrandom(ctx->token, sizeof(ctx->token), 0) != (ssize_t)sizeof(ctx->token)) {
		core->be->ops->ctx_close(ctx->bctx);
		ctx_unaccount(ctx);
		free(ctx);
		return dmb_fail(e, DMB_E_INTERNAL, errno, "no random bytes for the reclaim token");
	}

	ctx->id = core_new_id(core);
	if (!ctx->id) {
		core->be->ops->ctx_close(ctx->bctx);
		ctx_unaccount(ctx);
		free(ctx);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	/* Commit: from here on the context is visible. */
	ctx->noiommu = noiommu;
	if (noiommu)
		core->n_noiommu++;
	ctx->owner = owner;
	ctx->last_session = owner->session_id;
	RB_INSERT(dmb_ctx_tree, &core->contexts, ctx);
	core->n_contexts++;
	TAILQ_INSERT_TAIL(&owner->contexts, ctx, owner_link);
	owner->n_contexts++;
	ctx_refresh_iova(ctx);
	if (core->jh) {
		r = core->jh->ctx_create(core->jh->opaque, ctx, e);
		if (r < 0) {
			ctx_destroy(ctx);
			return r;
		}
	}
	if (noiommu)
		log_warning("context %" PRIu64 " '%s' of uid %u is a no-IOMMU context: its devices "
			    "reach all of memory, it gives NO isolation",
			    ctx->id, ctx->name, (unsigned)owner->uid);
	*out = ctx;
	return 0;
}

int ctx_adopt_noiommu(struct dmb_core *core, struct dmb_bctx *bctx, struct dmb_err *e)
{
	if (!core->be->ops->ctx_set_noiommu)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend has no no-IOMMU contexts", core->be->ops->name);
	return core->be->ops->ctx_set_noiommu(bctx, e);
}

void ctx_mark_noiommu(struct dmb_ctx *ctx)
{
	if (ctx->noiommu)
		return;
	ctx->noiommu = true;
	ctx->core->n_noiommu++;
	log_warning("context %" PRIu64 " '%s' (adopted) is a no-IOMMU context: its devices reach "
		    "all of memory, it gives NO isolation",
		    ctx->id, ctx->name);
}

int ctx_phys_ranges(struct dmb_ctx *ctx, uint64_t iova, uint64_t length,
		    struct dmb_phys_range *out, size_t max, size_t *n, bool *more,
		    uint64_t *next_iova, struct dmb_err *e)
{
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	*n = 0;
	*more = false;
	*next_iova = 0;
	if (!ctx->noiommu)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EINVAL,
				"context %" PRIu64 " is not a no-IOMMU context: its devices use IOVAs "
				"through the IOMMU, physical addresses are for no-IOMMU contexts only",
				ctx->id);
	if (length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "length must not be 0");
	uint64_t last;
	if (!dmb_range_last(iova, length, &last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW, "iova + length overflows");
	if (max == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "no room for a range");
	/* The whole range must be mapped RAM before the backend is asked. */
	uint64_t at = iova;
	for (;;) {
		struct dmb_mapping *m = map_find(ctx, at);
		if (!m || map_is_mmio(m))
			return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
					"IOVA 0x%" PRIx64 " of context %" PRIu64 " is not mapped%s: "
					"[0x%" PRIx64 ", 0x%" PRIx64 "] must be mapped RAM throughout",
					at, ctx->id, m ? " RAM (a peer BAR)" : "", iova, last);
		uint64_t m_last = m->iova + m->length - 1;
		if (m_last >= last)
			break;
		at = m_last + 1;
	}
	if (!ops->phys)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend cannot tell physical addresses", ops->name);
	at = iova;
	while (*n < max) {
		/* not 0: length > 0 and iova + length did not overflow */
		uint64_t phys = 0, len = 0, want = last - at + 1;
		int r = ops->phys(ctx->bctx, at, want, &phys, &len, e);
		if (r < 0) {
			if (r == -EOPNOTSUPP && (!e || !e->msg[0] || ctx->n_devices == 0))
				return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EOPNOTSUPP,
						"context %" PRIu64 " has no device yet: the physical "
						"addresses are known once a device without an IOMMU is "
						"attached (DeviceOpen)",
						ctx->id);
			if (!e || !e->msg[0])
				dmb_fail(e, dmb_code_from_errno(r), -r,
					 "the backend could not tell the physical address of IOVA "
					 "0x%" PRIx64 ": %s",
					 at, strerror(-r));
			*n = 0;
			return r;
		}
		if (len == 0 || len > want)
			return dmb_fail(e, DMB_E_INTERNAL, EPROTO,
					"the backend answered %" PRIu64 " bytes for IOVA 0x%" PRIx64, len,
					at);
		/* Coalesce with the previous range when both continue. */
		if (*n && out[*n - 1].iova + out[*n - 1].length == at &&
		    out[*n - 1].phys + out[*n - 1].length == phys)
			out[*n - 1].length += len;
		else
			out[(*n)++] = (struct dmb_phys_range){ at, phys, len };
		if (len == want || at + len - 1 == last)
			return 0;
		at += len;
	}
	*more = true;
	*next_iova = at;
	return 0;
}

struct dmb_ctx *ctx_adopt(struct dmb_core *core, struct dmb_owner *owner, uid_t uid, uint64_t id,
			  const char *name, bool persistent, const uint8_t *token,
			  struct dmb_bctx *bctx)
{
	struct dmb_ctx *ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return NULL;
	/* Charged to its uid whether or not a session holds it: what it held
	 * before the restart, so no limit refuses it. */
	ctx->acct = owner ? owner->acct : acct_get(core, uid);
	if (!ctx->acct) {
		free(ctx);
		return NULL;
	}
	if (owner)
		ctx->acct->refs++;
	ctx->acct->contexts++;
	acct_force(ctx->acct, DMB_FD_CTX);
	ctx->core = core;
	ctx->id = id;
	ctx->persistent = persistent;
	ctx->bctx = bctx;
	if (token)
		memcpy(ctx->token, token, sizeof(ctx->token));
	snprintf(ctx->name, sizeof(ctx->name), "%s", name ? name : "");
	RB_INIT(&ctx->maps);
	RB_INIT(&ctx->grans);
	RB_INIT(&ctx->regions);
	TAILQ_INIT(&ctx->devices);
	RB_INSERT(dmb_ctx_tree, &core->contexts, ctx);
	core->n_contexts++;
	if (owner) {
		ctx->owner = owner;
		ctx->last_session = owner->session_id;
		TAILQ_INSERT_TAIL(&owner->contexts, ctx, owner_link);
		owner->n_contexts++;
	}
	(void)core_claim_id(core, id);
	ctx_refresh_iova(ctx);
	return ctx;
}

int ctx_reclaim(struct dmb_owner *owner, uint64_t id, const uint8_t *token, size_t token_len,
		struct dmb_ctx **out, struct dmb_err *e)
{
	struct dmb_core *core = owner->core;
	struct dmb_ctx *ctx = ctx_lookup_any(core, id);
	/* One answer for "no such context", "not persistent" and "wrong
	 * token": nothing about other clients' contexts leaks. */
	bool ok = ctx && ctx->persistent && token_len == sizeof(ctx->token);
	if (ok) {
		unsigned char diff = 0; /* constant time */
		for (size_t i = 0; i < sizeof(ctx->token); i++)
			diff |= ctx->token[i] ^ token[i];
		ok = diff == 0;
	}
	if (!ok)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EACCES,
				"no persistent context %" PRIu64 " with this reclaim token (a token "
				"works once; the last reclaim returned a new one)", id);
	if (ctx->owner == owner)
		return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
				"context %" PRIu64 " already belongs to this session", id);
	uint8_t fresh[sizeof(ctx->token)];
	if (getrandom(fresh, sizeof(fresh), 0) != (ssize_t)sizeof(fresh))
		return dmb_fail(e, DMB_E_INTERNAL, errno, "no random bytes for the reclaim token");
	/* The same uid already counts it; another takes it only within its
	 * own limits. */
	int r = acct_move_ctx(ctx, owner->acct, &owner->pol.limits, e);
	if (r < 0)
		return r;
	uint64_t pinned = ctx_pinned_bytes(ctx);
	if (ctx->owner) {
		/* Taken from a live session (a VMM whose successor reclaims
		 * before the old session has noticed it is dead). */
		TAILQ_REMOVE(&ctx->owner->contexts, ctx, owner_link);
		ctx->owner->n_contexts--;
		ctx->owner->pinned_bytes -= pinned;
	}
	owner->pinned_bytes += pinned;
	memcpy(ctx->token, fresh, sizeof(fresh));
	ctx->owner = owner;
	ctx->last_session = owner->session_id;
	ctx->detached_ms = 0;
	TAILQ_INSERT_TAIL(&owner->contexts, ctx, owner_link);
	owner->n_contexts++;
	if (core->jh)
		core->jh->ctx_reclaim(core->jh->opaque, ctx);
	log_info("context %" PRIu64 " reclaimed by session %" PRIu64 " (uid %u pid %d)", id,
		 owner->session_id, (unsigned)owner->uid, (int)owner->pid);
	*out = ctx;
	return 0;
}

struct dmb_ctx *ctx_lookup_any(struct dmb_core *core, uint64_t id)
{
	struct dmb_ctx key = { .id = id };
	return RB_FIND(dmb_ctx_tree, &core->contexts, &key);
}

struct dmb_ctx *ctx_lookup(struct dmb_owner *owner, uint64_t id)
{
	struct dmb_ctx *c = ctx_lookup_any(owner->core, id);
	return c && c->owner == owner ? c : NULL;
}

void ctx_destroy(struct dmb_ctx *ctx)
{
	if (!ctx)
		return;
	struct dmb_core *core = ctx->core;

	/* Mappings go first, while the devices still hold the IOMMU domain
	 * (type1 drops its IOMMU with the last group), then the devices, then
	 * the backend context itself. */
	if (ctx->n_mappings) {
		uint64_t bytes = 0, count = 0;
		struct dmb_err e = { 0 };
		if (unmap_all(ctx, &bytes, &count, &e) < 0)
			log_error("context %" PRIu64 ": unmap-all at destruction failed: %s", ctx->id,
				  e.msg);
	}
	map_forget_all(ctx);
	struct dmb_device *d;
	while ((d = TAILQ_FIRST(&ctx->devices)))
		device_close(d);
	core->be->ops->ctx_close(ctx->bctx);
	ctx->bctx = NULL;

	struct dmb_region *r;
	while ((r = RB_MIN(dmb_region_tree, &ctx->regions))) {
		/* region_free gives its fds back. */
		RB_REMOVE(dmb_region_tree, &ctx->regions, r);
		if (core->jh)
			core->jh->region_remove(core->jh->opaque, r);
		region_free(r);
		core->n_regions--;
	}

	if (core->jh)
		core->jh->ctx_destroy(core->jh->opaque, ctx);
	RB_REMOVE(dmb_ctx_tree, &core->contexts, ctx);
	core->n_contexts--;
	if (ctx->noiommu)
		core->n_noiommu--;
	if (ctx->owner) {
		TAILQ_REMOVE(&ctx->owner->contexts, ctx, owner_link);
		ctx->owner->n_contexts--;
	}
	ctx_unaccount(ctx);
	core_release_id(core, ctx->id);
	for (size_t i = 0; i < ctx->n_stranded; i++)
		close(ctx->stranded[i].fd);
	free(ctx->stranded);
	free(ctx);
}

void ctx_strand(struct dmb_ctx *ctx, uint64_t region_id, uint64_t size, int fd)
{
	struct dmb_stranded *n = realloc(ctx->stranded, (ctx->n_stranded + 1) * sizeof(*n));
	if (!n) {
		log_error("context %" PRIu64 ": out of memory keeping the memfd of region %" PRIu64
			  "; its memory is freed when the handoff ends", ctx->id, region_id);
		close(fd);
		return;
	}
	ctx->stranded = n;
	n[ctx->n_stranded++] = (struct dmb_stranded){ region_id, size, fd };
}

void ctx_refresh_iova(struct dmb_ctx *ctx)
{
	struct dmb_err e = { 0 };
	memset(&ctx->iova, 0, sizeof(ctx->iova));
	ctx->iova_err = ctx->core->be->ops->iova_info(ctx->bctx, &ctx->iova, &e);
	if (ctx->iova_err < 0) {
		snprintf(ctx->iova_msg, sizeof(ctx->iova_msg), "%s",
			 e.msg[0] ? e.msg : strerror(-ctx->iova_err));
		ctx->iova.n = 0;
	} else {
		ctx->iova_msg[0] = '\0';
		if (ctx->iova.alignment == 0)
			ctx->iova.alignment = 1;
	}
}

int ctx_check_iova(struct dmb_ctx *ctx, uint64_t iova, uint64_t last, struct dmb_err *e)
{
	if (ctx->iova_err < 0)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -ctx->iova_err,
				"context %" PRIu64 " has no usable IOVA space yet: %s", ctx->id,
				ctx->iova_msg);
	for (size_t i = 0; i < ctx->iova.n; i++)
		if (iova >= ctx->iova.ranges[i].start && last <= ctx->iova.ranges[i].last)
			return 0;
	return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
			"IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] is not inside one usable IOVA "
			"range of the context (see IovaRanges)", iova, last);
}

int ctx_sim_dma(struct dmb_ctx *ctx, uint64_t iova, void *buf, size_t len, bool to_memory,
		struct dmb_err *e)
{
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	if (!ops->dma)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend has no simulated DMA engine", ops->name);
	return ops->dma(ctx->bctx, iova, buf, len, to_memory, e);
}
