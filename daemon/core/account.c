/* Accounts: what each principal holds, and the broker's fd budget.
 *
 * A principal is a uid. Its account sums every session of that uid and every
 * persistent context it created that outlived its session, so the limits of
 * the [uid N] / [gid N] / [default] section that applies bound the uid, not
 * each of its connections: a compromised VMM gains nothing by opening more
 * sessions. A request is checked against the requesting session's resolved
 * limits and its uid's totals, before any kernel work.
 *
 * Fds are budgeted like pinned bytes. Each context, region and device costs
 * the daemon a fixed number of fds (the backend says how many: struct
 * dmb_fd_cost, an upper bound; a region's includes the fd the core keeps) and
 * of fd store entries under systemd. The cost is charged to the owner's
 * account against its `fds` limit, and to the broker against what
 * RLIMIT_NOFILE and the fd store leave once the reserve is set aside
 * (struct dmb_fd_budget); it is released when the object goes, whatever
 * the kernel did meanwhile, so charges and releases always match. */
#include "core/core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

static const char *const kind_name[] = {
	[DMB_FD_CTX] = "a context",
	[DMB_FD_REGION] = "a region",
	[DMB_FD_DEVICE] = "a device",
};

struct dmb_acct *acct_get(struct dmb_core *core, uid_t uid)
{
	struct dmb_acct *a;
	LIST_FOREACH(a, &core->accts, link)
		if (a->uid == uid) {
			a->refs++;
			return a;
		}
	a = calloc(1, sizeof(*a));
	if (!a)
		return NULL;
	a->core = core;
	a->uid = uid;
	a->refs = 1;
	LIST_INSERT_HEAD(&core->accts, a, link);
	return a;
}

void acct_put(struct dmb_acct *a)
{
	if (!a || --a->refs)
		return;
	LIST_REMOVE(a, link);
	free(a);
}

int acct_check_contexts(const struct dmb_acct *a, const struct dmb_limits *lim, struct dmb_err *e)
{
	if (a->contexts >= lim->contexts_per_owner)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"limit contexts_per_client (%u) of uid %u reached: it holds %u context(s) "
				"over all its sessions", lim->contexts_per_owner, (unsigned)a->uid,
				a->contexts);
	return 0;
}

int acct_check_pinned(const struct dmb_acct *a, const struct dmb_limits *lim, uint64_t want,
		      struct dmb_err *e)
{
	if (lim->pinned_bytes && (a->pinned_bytes + want > lim->pinned_bytes ||
				  a->pinned_bytes + want < want))
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
				"limit pinned_bytes (%" PRIu64 ") of uid %u would be exceeded: it has "
				"%" PRIu64 " bytes mapped over all its sessions and asks for %" PRIu64
				" more", lim->pinned_bytes, (unsigned)a->uid, a->pinned_bytes, want);
	return 0;
}

/* The fds and store entries n objects of each kind cost. */
static void cost_of(const struct dmb_core *core, const uint32_t n[DMB_FD_KINDS], uint64_t *fds,
		    uint64_t *stored)
{
	const struct dmb_fd_cost *c = &core->be->ops->fd_cost;
	*fds = 0;
	*stored = 0;
	for (int k = 0; k < DMB_FD_KINDS; k++) {
		*fds += (uint64_t)n[k] * c->fds[k];
		*stored += (uint64_t)n[k] * c->stored[k];
	}
}

static int check_fds(const struct dmb_acct *a, const struct dmb_limits *lim, uint64_t fds,
		     uint64_t stored, const char *what, struct dmb_err *e)
{
	const struct dmb_fd_budget *b = &a->core->fds;
	if (lim->fds && a->fds + fds > lim->fds)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, EMFILE,
				"limit fds (%" PRIu64 ") of uid %u reached: it holds %" PRIu64 " of the "
				"broker's fds over all its sessions and %s needs %" PRIu64 " more",
				lim->fds, (unsigned)a->uid, a->fds, what, fds);
	if (b->used + fds > b->limit)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, EMFILE,
				"the broker's fd budget (%" PRIu64 " fds: RLIMIT_NOFILE %" PRIu64
				" less a reserve) is used up; %s needs %" PRIu64 " more",
				b->limit, b->nofile, what, fds);
	if (b->store_used + stored > b->store_limit)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"the fd store is full (fd_store_max %" PRIu64 " less a reserve): %s "
				"needs %" PRIu64 " more entries and could not survive a restart",
				b->store_max, what, stored);
	return 0;
}

static void add_fds(struct dmb_acct *a, uint64_t fds, uint64_t stored)
{
	struct dmb_fd_budget *b = &a->core->fds;
	a->fds += fds;
	a->stored += stored;
	b->used += fds;
	b->store_used += stored;
}

static void sub_fds(struct dmb_acct *a, uint64_t fds, uint64_t stored)
{
	struct dmb_fd_budget *b = &a->core->fds;
	a->fds -= fds;
	a->stored -= stored;
	b->used -= fds;
	b->store_used -= stored;
}

int acct_charge(struct dmb_acct *a, const struct dmb_limits *lim, enum dmb_fd_kind kind,
		struct dmb_err *e)
{
	uint32_t n[DMB_FD_KINDS] = { 0 };
	uint64_t fds, stored;
	n[kind] = 1;
	cost_of(a->core, n, &fds, &stored);
	int r = check_fds(a, lim, fds, stored, kind_name[kind], e);
	if (r == 0)
		add_fds(a, fds, stored);
	return r;
}

void acct_force(struct dmb_acct *a, enum dmb_fd_kind kind)
{
	uint32_t n[DMB_FD_KINDS] = { 0 };
	uint64_t fds, stored;
	n[kind] = 1;
	cost_of(a->core, n, &fds, &stored);
	add_fds(a, fds, stored);
}

void acct_release(struct dmb_acct *a, enum dmb_fd_kind kind)
{
	uint32_t n[DMB_FD_KINDS] = { 0 };
	uint64_t fds, stored;
	n[kind] = 1;
	cost_of(a->core, n, &fds, &stored);
	sub_fds(a, fds, stored);
}

/* What a context holds in fds, store entries and pins. */
static void ctx_usage(const struct dmb_ctx *ctx, uint64_t *fds, uint64_t *stored, uint64_t *pinned)
{
	uint32_t n[DMB_FD_KINDS] = { 1, ctx->n_regions, ctx->n_devices };
	cost_of(ctx->core, n, fds, stored);
	*pinned = ctx_pinned_bytes(ctx);
}

int acct_move_ctx(struct dmb_ctx *ctx, struct dmb_acct *to, const struct dmb_limits *lim,
		  struct dmb_err *e)
{
	struct dmb_acct *from = ctx->acct;
	if (from == to)
		return 0;
	uint64_t fds, stored, pinned;
	ctx_usage(ctx, &fds, &stored, &pinned);
	int r = acct_check_contexts(to, lim, e);
	if (r == 0)
		r = acct_check_pinned(to, lim, pinned, e);
	/* The broker's totals do not change: only the principal's. */
	if (r == 0 && lim->fds && to->fds + fds > lim->fds)
		r = dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, EMFILE,
			     "limit fds (%" PRIu64 ") of uid %u reached: it holds %" PRIu64 " fds and "
			     "context %" PRIu64 " holds %" PRIu64, lim->fds, (unsigned)to->uid, to->fds,
			     ctx->id, fds);
	if (r < 0)
		return r;
	from->fds -= fds;
	from->stored -= stored;
	from->pinned_bytes -= pinned;
	from->contexts--;
	to->fds += fds;
	to->stored += stored;
	to->pinned_bytes += pinned;
	to->contexts++;
	to->refs++;
	ctx->acct = to;
	acct_put(from);
	return 0;
}
