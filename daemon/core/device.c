/* Devices: PCI functions opened by the broker and attached to a context.
 * Which BDFs a client may open is the policy's decision (device_allowed). */
#include "core/core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/config.h"
#include "util/log.h"
#include "util/macro.h"

int device_open(struct dmb_ctx *ctx, const char *bdf, struct dmb_device **out, struct dmb_err *e)
{
	struct dmb_core *core = ctx->core;
	const struct dmb_backend_ops *ops = core->be->ops;

	if (!device_bdf_valid(bdf))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%.16s' is not a PCI address of the form dddd:bb:dd.f (lower-case hex)",
				bdf ? bdf : "");
	if (!core->device_allowed || !core->device_allowed(core->policy_opaque, ctx->owner, bdf)) {
		log_ratelimited(LOG_NOTICE, "session %" PRIu64 " (uid %u pid %d): device %s denied by policy",
			   ctx->owner->session_id, (unsigned)ctx->owner->uid, (int)ctx->owner->pid, bdf);
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
				"device %s is not allowed for this client by the broker's policy", bdf);
	}
	if (!ops->dev_open)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP, "the %s backend has no devices",
				ops->name);
	uint32_t max_devices = ctx->owner->pol.limits.devices_per_context;
	if (ctx->n_devices >= max_devices)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"limit devices_per_context (%u) reached", max_devices);

	/* One broker-wide opener per device: the kernel would refuse a second
	 * group open anyway, with a less helpful errno. */
	struct dmb_device *other = device_find_bdf(core, bdf);
	if (other) {
		bool mine = other->ctx->owner == ctx->owner;
		return dmb_fail(e, mine ? DMB_E_ALREADY_EXISTS : DMB_E_FAILED_PRECONDITION, EBUSY,
				"device %s is already open%s", bdf,
				mine ? " in one of your contexts" : " by another client");
	}

	_cleanup_free_ struct dmb_device *d = calloc(1, sizeof(*d));
	if (!d)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	/* Its fds are charged before the backend opens any; device_close
	 * gives them back. */
	int r = acct_charge(ctx->acct, &ctx->owner->pol.limits, DMB_FD_DEVICE, e);
	if (r < 0)
		return r;
	r = ops->dev_open(ctx->bctx, bdf, &d->bdev, &d->info, e);
	if (r < 0) {
		acct_release(ctx->acct, DMB_FD_DEVICE);
		return dmb_fail(e, dmb_code_from_errno(r), -r, "could not open device %s: %s", bdf,
				strerror(-r));
	}

	d->id = core_new_id(core);
	if (!d->id) {
		ops->dev_close(d->bdev);
		acct_release(ctx->acct, DMB_FD_DEVICE);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	d->ctx = ctx;
	snprintf(d->bdf, sizeof(d->bdf), "%s", bdf);
	TAILQ_INIT(&d->importers);
	TAILQ_INSERT_TAIL(&ctx->devices, d, link);
	ctx->n_devices++;
	core->n_devices++;
	/* Attaching a device changes the usable IOVA space (reserved regions,
	 * the aperture; type1 only has an IOMMU from the first group on). */
	ctx_refresh_iova(ctx);
	if (core->jh) {
		r = core->jh->device_add(core->jh->opaque, d, e);
		if (r < 0) {
			device_close(TAKE_PTR(d));
			return r;
		}
	}
	log_info("session %" PRIu64 " (uid %u pid %d): device %s [%04x:%04x] attached to context %" PRIu64,
		 ctx->owner->session_id, (unsigned)ctx->owner->uid, (int)ctx->owner->pid, bdf,
		 d->info.vendor, d->info.device, ctx->id);
	*out = TAKE_PTR(d);
	return 0;
}

struct dmb_device *device_adopt(struct dmb_ctx *ctx, uint64_t id, const char *bdf,
				struct dmb_bdev *bdev, const struct dmb_dev_info *info)
{
	struct dmb_device *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->id = id;
	d->ctx = ctx;
	d->bdev = bdev;
	d->info = *info;
	acct_force(ctx->acct, DMB_FD_DEVICE);
	snprintf(d->bdf, sizeof(d->bdf), "%s", bdf);
	TAILQ_INIT(&d->importers);
	TAILQ_INSERT_TAIL(&ctx->devices, d, link);
	ctx->n_devices++;
	ctx->core->n_devices++;
	(void)core_claim_id(ctx->core, id);
	uint16_t cmd;
	struct dmb_err e = { 0 };
	(void)p2p_read_command(d, &cmd, &e);
	ctx_refresh_iova(ctx);
	return d;
}

struct dmb_device *device_find_bdf(struct dmb_core *core, const char *bdf)
{
	struct dmb_ctx *c;
	RB_FOREACH(c, dmb_ctx_tree, &core->contexts) {
		struct dmb_device *d;
		TAILQ_FOREACH(d, &c->devices, link)
			if (strcmp(d->bdf, bdf) == 0)
				return d;
	}
	return NULL;
}

struct dmb_device *device_lookup(struct dmb_owner *owner, uint64_t id)
{
	struct dmb_ctx *c;
	TAILQ_FOREACH(c, &owner->contexts, owner_link) {
		struct dmb_device *d;
		TAILQ_FOREACH(d, &c->devices, link)
			if (d->id == id)
				return d;
	}
	return NULL;
}

int core_device_fd(const struct dmb_device *d)
{
	const struct dmb_backend_ops *ops = d->ctx->core->be->ops;
	return ops->dev_fd ? ops->dev_fd(d->bdev) : -EOPNOTSUPP;
}

void device_close(struct dmb_device *d)
{
	if (!d)
		return;
	struct dmb_ctx *ctx = d->ctx;
	/* Nothing may point at its BARs once it is gone. */
	p2p_release(d);
	if (ctx->core->jh)
		ctx->core->jh->device_remove(ctx->core->jh->opaque, d);
	TAILQ_REMOVE(&ctx->devices, d, link);
	ctx->n_devices--;
	ctx->core->n_devices--;
	ctx->core->be->ops->dev_close(d->bdev);
	acct_release(ctx->acct, DMB_FD_DEVICE);
	core_release_id(ctx->core, d->id);
	if (ctx->owner)
		log_info("session %" PRIu64 " (uid %u pid %d): device %s detached from context %" PRIu64,
			 ctx->owner->session_id, (unsigned)ctx->owner->uid, (int)ctx->owner->pid, d->bdf,
			 ctx->id);
	else
		log_info("device %s detached from context %" PRIu64 " (no session)", d->bdf, ctx->id);
	free(d);
	ctx_refresh_iova(ctx);
}

int device_sim_dma(struct dmb_device *d, uint64_t iova, void *buf, size_t len, bool to_memory,
		   struct dmb_err *e)
{
	const struct dmb_backend_ops *ops = d->ctx->core->be->ops;
	if (!ops->dev_dma)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"the %s backend has no simulated device DMA engine", ops->name);
	return ops->dev_dma(d->bdev, iova, buf, len, to_memory, e);
}
