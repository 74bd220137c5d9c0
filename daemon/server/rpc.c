/* Request dispatch: decode -> check session state -> authorize -> call the
 * core -> reply. rpc.c never touches the kernel (the core and the backend
 * do) and is the one place where a struct dmb_err becomes a wire Error.
 *
 * Every request kind has one row in rpc_table: its handler, whether it is
 * allowed before the handshake, whether it needs an admin session, and
 * whether it may carry fds. A kind not in the table gets UNIMPLEMENTED.
 *
 * Not here: the scheduling of long maps and unmaps, the gates and the
 * parking of requests behind them (sched.c), and the allocator a request
 * is decoded into (arena.c). */
#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dmb-build.h"
#include "fastcodec.h"
#include "protocol.h"
#include "server/rpc.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/macro.h"

typedef int (*rpc_fn)(struct rpc_call *c, struct dmb_err *e);

enum {
	RPC_PRE_HELLO = 1u << 0, /* allowed before the handshake */
	RPC_ADMIN = 1u << 1,     /* admin sessions only */
	RPC_FDS = 1u << 2,       /* may carry fds */
	RPC_MUTATES = 1u << 3,   /* changes state (refused while a host handoff is prepared) */
};

struct rpc_entry {
	const char *name;
	rpc_fn fn;
	unsigned flags;
};

static void *rpc_alloc(struct rpc_call *c, size_t size)
{
	if (c->n_heap >= DMB_ARRAY_SIZE(c->heap))
		return NULL;
	void *p = calloc(1, size ? size : 1);
	if (p)
		c->heap[c->n_heap++] = p;
	return p;
}

/* Free-text names end up in logs and in other people's terminals: at most
 * DMB_MAX_NAME bytes of printable ASCII or well-formed UTF-8, no control
 * characters. */
static int check_name(const char *what, const char *s, struct dmb_err *e)
{
	size_t n = strlen(s);
	if (n > DMB_MAX_NAME)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "%s is longer than %u bytes", what,
				DMB_MAX_NAME);
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned char b = p[i];
		size_t extra;
		bool ok = true;
		if (b < 0x20 || b == 0x7f)
			ok = false;
		else if (b < 0x80)
			extra = 0;
		else if (b >= 0xc2 && b <= 0xdf)
			extra = 1;
		else if ((b & 0xf0) == 0xe0)
			extra = 2;
		else if (b >= 0xf0 && b <= 0xf4)
			extra = 3;
		else
			ok = false;
		if (ok && i + extra >= n && extra)
			ok = false;
		for (size_t j = 1; ok && j <= extra; j++)
			ok = (p[i + j] & 0xc0) == 0x80;
		if (ok && b == 0xc2 && p[i + 1] < 0xa0)
			ok = false; /* C1 control characters */
		if (!ok)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"%s must be printable UTF-8 without control characters", what);
		i += extra + 1;
	}
	return 0;
}

static struct dmb_ctx *need_ctx(struct rpc_call *c, uint64_t id, struct dmb_err *e)
{
	struct dmb_ctx *ctx = ctx_lookup(c->s->owner, id);
	if (!ctx)
		dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "context %" PRIu64 " not found", id);
	return ctx;
}

/* need_ctx for the read-only requests an admin session may make of any
 * client's context (ListMappings, PhysRanges). */
static struct dmb_ctx *need_ctx_or_admin(struct rpc_call *c, uint64_t id, struct dmb_err *e)
{
	struct dmb_ctx *ctx = ctx_lookup(c->s->owner, id);
	if (!ctx && c->s->admin)
		ctx = ctx_lookup_any(&c->s->srv->core, id);
	if (!ctx)
		dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "context %" PRIu64 " not found", id);
	return ctx;
}

#define SET_BODY(c, field, CASE)                                   \
	do {                                                       \
		(c)->reply.body_case = DMB__REPLY__BODY_##CASE;    \
		(c)->reply.field = &(c)->body.field;               \
	} while (0)

/* ------------------------------------------------------------ handshake */

static size_t count_features(const char *const *f)
{
	size_t n = 0;
	while (f && f[n])
		n++;
	return n;
}

static int rpc_hello(struct rpc_call *c, struct dmb_err *e)
{
	struct session *s = c->s;
	const Dmb__Hello *h = c->req->hello;
	const struct dmb_core *core = &s->srv->core;

	if (s->hello_done)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EALREADY, "the handshake was already done");
	if (h->protocol_version != DMB_PROTOCOL_VERSION)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPROTONOSUPPORT,
				"protocol version %u is not supported; this server speaks version %u",
				h->protocol_version, DMB_PROTOCOL_VERSION);
	if (check_name("client_name", h->client_name, e) < 0)
		return -EINVAL;

	s->hello_done = true;
	snprintf(s->name, sizeof(s->name), "%s", h->client_name);
	log_info("session %" PRIu64 " (uid %u pid %d): hello from '%s'%s", s->id, (unsigned)s->cred.uid,
		 (int)s->cred.pid, s->name, s->admin ? " (admin)" : "");

	Dmb__HelloReply *r = &c->body.hello;
	dmb__hello_reply__init(r);
	r->protocol_version = DMB_PROTOCOL_VERSION;
	r->server_version = (char *)DMB_VERSION;
	r->backend = (char *)core_backend_name(core);
	r->n_features = count_features(core_backend_features(core));
	r->features = (char **)core_backend_features(core);
	r->max_packet_bytes = DMB_MAX_PACKET;
	r->max_fds_per_packet = DMB_MAX_FDS;
	r->max_batch = DMB_MAX_BATCH;
	r->session_id = s->id;
	r->admin = s->admin;
	SET_BODY(c, hello, HELLO);
	return 0;
}

/* ------------------------------------------------------------ contexts */

static int rpc_context_create(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__ContextCreate *q = c->req->context_create;
	int r = check_name("name", q->name, e);
	if (r < 0)
		return r;
	struct dmb_ctx *ctx;
	r = ctx_create_kind(c->s->owner, q->name, q->persistent, q->noiommu, &ctx, e);
	if (r < 0) {
		if (q->noiommu)
			log_notice("session %" PRIu64 " (uid %u pid %d): no-IOMMU context refused: %s",
				   c->s->id, (unsigned)c->s->cred.uid, (int)c->s->cred.pid,
				   e ? e->msg : "");
		return r;
	}
	log_info("session %" PRIu64 " (uid %u pid %d): context %" PRIu64 " '%s' created%s", c->s->id,
		 (unsigned)c->s->cred.uid, (int)c->s->cred.pid, ctx->id, ctx->name,
		 ctx->noiommu ? " (no-IOMMU: no isolation)" : "");
	Dmb__ContextCreateReply *b = &c->body.context_create;
	dmb__context_create_reply__init(b);
	b->context_id = ctx->id;
	if (ctx->persistent) {
		b->reclaim_token.data = ctx->token;
		b->reclaim_token.len = sizeof(ctx->token);
	}
	SET_BODY(c, context_create, CONTEXT_CREATE);
	return 0;
}

static int rpc_context_destroy(struct rpc_call *c, struct dmb_err *e)
{
	struct dmb_ctx *ctx = need_ctx(c, c->req->context_destroy->context_id, e);
	if (!ctx)
		return -ENOENT;
	log_info("session %" PRIu64 " (uid %u pid %d): context %" PRIu64 " destroyed (%" PRIu64
		 " mappings)", c->s->id, (unsigned)c->s->cred.uid, (int)c->s->cred.pid, ctx->id,
		 ctx->n_mappings);
	ctx_destroy(ctx);
	return 0;
}

static int rpc_context_reclaim(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__ContextReclaim *q = c->req->context_reclaim;
	struct dmb_ctx *ctx;
	int r = ctx_reclaim(c->s->owner, q->context_id, q->token.data, q->token.len, &ctx, e);
	if (r < 0) {
		log_ratelimited(LOG_NOTICE, "session %" PRIu64 " (uid %u pid %d): reclaim of context %"
				PRIu64 " refused", c->s->id, (unsigned)c->s->cred.uid, (int)c->s->cred.pid,
				q->context_id);
		return r;
	}
	Dmb__ContextReclaimReply *b = &c->body.context_reclaim;
	dmb__context_reclaim_reply__init(b);
	b->context_id = ctx->id;
	b->reclaim_token.data = ctx->token;
	b->reclaim_token.len = sizeof(ctx->token);
	b->mappings = ctx->n_mappings;

	size_t nr = ctx->n_regions + ctx->n_stranded, nd = ctx->n_devices;
	Dmb__ReclaimedRegion *ra = rpc_alloc(c, nr * sizeof(*ra));
	Dmb__ReclaimedRegion **rp = rpc_alloc(c, nr * sizeof(*rp));
	Dmb__ReclaimedDevice *da = rpc_alloc(c, nd * sizeof(*da));
	Dmb__ReclaimedDevice **dp = rpc_alloc(c, nd * sizeof(*dp));
	if (!ra || !rp || !da || !dp)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	size_t i = 0;
	struct dmb_region *reg;
	RB_FOREACH(reg, dmb_region_tree, &ctx->regions) {
		dmb__reclaimed_region__init(&ra[i]);
		ra[i].region_id = reg->id;
		ra[i].size = reg->size;
		ra[i].fd_index = -1;
		if (q->want_fds && c->n_out_fds < DMB_MAX_FDS) {
			c->out_fds[c->n_out_fds] = reg->fd; /* borrowed: the send copies it */
			ra[i].fd_index = (int32_t)c->n_out_fds++;
		}
		rp[i] = &ra[i];
		i++;
	}
	/* Memfds a kexec handed back that could not become regions again: the
	 * guest's memory all the same (struct dmb_ctx). */
	for (size_t k = 0; k < ctx->n_stranded; k++) {
		dmb__reclaimed_region__init(&ra[i]);
		ra[i].region_id = ctx->stranded[k].region_id;
		ra[i].size = ctx->stranded[k].size;
		ra[i].stranded = true;
		ra[i].fd_index = -1;
		if (q->want_fds && c->n_out_fds < DMB_MAX_FDS) {
			c->out_fds[c->n_out_fds] = ctx->stranded[k].fd; /* borrowed */
			ra[i].fd_index = (int32_t)c->n_out_fds++;
		}
		rp[i] = &ra[i];
		i++;
	}
	b->n_regions = i;
	b->regions = rp;
	i = 0;
	struct dmb_device *d;
	TAILQ_FOREACH(d, &ctx->devices, link) {
		dmb__reclaimed_device__init(&da[i]);
		da[i].device_id = d->id;
		da[i].bdf = d->bdf;
		da[i].fd_index = -1;
		int fd = core_device_fd(d);
		if (q->want_fds && fd >= 0 && c->n_out_fds < DMB_MAX_FDS) {
			c->out_fds[c->n_out_fds] = fd;
			da[i].fd_index = (int32_t)c->n_out_fds++;
		}
		dp[i] = &da[i];
		i++;
	}
	b->n_devices = i;
	b->devices = dp;
	if (ctx->degraded[0]) {
		/* Restored after a host handoff with something missing. */
		b->degraded = true;
		b->message = ctx->degraded;
	} else if (q->want_fds && c->n_out_fds == DMB_MAX_FDS && nr + nd > DMB_MAX_FDS) {
		b->degraded = true;
		b->message = (char *)"more regions and devices than one packet carries fds for";
	}
	SET_BODY(c, context_reclaim, CONTEXT_RECLAIM);
	handoff_reclaimed(&c->s->srv->handoff, ctx->id);
	return 0;
}

/* ------------------------------------------------------------ regions */

static int rpc_region_register(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__RegionRegister *q = c->req->region_register;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	if (q->fd_index < 0 || (size_t)q->fd_index >= c->rx->nfds)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF,
				"fd_index %d does not name one of the %zu fds in this packet", q->fd_index,
				c->rx->nfds);
	int fd = wire_take_fd(c->rx, q->fd_index);
	if (fd < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF, "fd_index %d was already used",
				q->fd_index);
	struct dmb_region *reg;
	int r = region_register(ctx, fd, q->size, &reg, e);
	if (r < 0)
		return r;
	Dmb__RegionRegisterReply *b = &c->body.region_register;
	dmb__region_register_reply__init(b);
	b->region_id = reg->id;
	b->size = reg->size;
	b->writable = reg->writable;
	b->kind = (char *)reg->kind;
	b->page_size = reg->page_size;
	SET_BODY(c, region_register, REGION_REGISTER);
	return 0;
}

static int rpc_region_unregister(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__RegionUnregister *q = c->req->region_unregister;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	return region_unregister(ctx, q->region_id, e);
}

/* ------------------------------------------------------------ IOVA space */

static int rpc_iova_ranges(struct rpc_call *c, struct dmb_err *e)
{
	/* Only the owner's: refreshing asks the backend, and the answer is the
	 * owner's business (dmabrokerctl says so for other contexts). */
	struct dmb_ctx *ctx = need_ctx(c, c->req->iova_ranges->context_id, e);
	if (!ctx)
		return -ENOENT;
	ctx_refresh_iova(ctx);
	if (ctx->iova_err < 0)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -ctx->iova_err, "%s", ctx->iova_msg);

	size_t n = ctx->iova.n;
	Dmb__IovaRange *arr = rpc_alloc(c, n * sizeof(*arr));
	Dmb__IovaRange **ptrs = rpc_alloc(c, n * sizeof(*ptrs));
	if (!arr || !ptrs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		dmb__iova_range__init(&arr[i]);
		arr[i].start = ctx->iova.ranges[i].start;
		arr[i].last = ctx->iova.ranges[i].last;
		ptrs[i] = &arr[i];
	}
	Dmb__IovaRangesReply *b = &c->body.iova_ranges;
	dmb__iova_ranges_reply__init(b);
	b->n_ranges = n;
	b->ranges = ptrs;
	b->alignment = ctx->iova.alignment;
	b->max_mappings = ctx->iova.max_mappings;
	b->mappings_available = ctx->iova.mappings_available;
	SET_BODY(c, iova_ranges, IOVA_RANGES);
	return 0;
}

/* ------------------------------------------------------------ mappings */

static void req_from_entry(struct dmb_map_req *q, const Dmb__MapEntry *m)
{
	*q = (struct dmb_map_req){
		.region_id = m->region_id, .offset = m->offset, .iova = m->iova,
		.length = m->length, .prot = m->prot, .granule = m->granule,
	};
}

int rpc_reply_mapped(struct rpc_call *c, struct dmb_ctx *ctx, const uint64_t *iovas, size_t stride,
		     uint32_t n)
{
	Dmb__MapReply *b = &c->body.map;
	dmb__map_reply__init(b);
	b->mapped = n;
	/* Each new mapping's IOMMU page size, in request order. */
	uint64_t *ps = n == 1 ? &c->page_size : rpc_alloc(c, n * sizeof(*ps));
	if (ps) {
		for (uint32_t i = 0; i < n; i++) {
			uint64_t iova = *(const uint64_t *)(const void *)((const char *)iovas + i * stride);
			struct dmb_mapping *m = map_find(ctx, iova);
			ps[i] = m ? map_page_size(ctx, m) : 0;
		}
		b->n_page_sizes = n;
		b->page_sizes = ps;
	}
	SET_BODY(c, map, MAP);
	return 0;
}

static int rpc_map(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__Map *q = c->req->map;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	if (!q->entry)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "Map has no entry");
	struct dmb_map_req mr;
	req_from_entry(&mr, q->entry);
	return sched_map(c, ctx, &mr, 1, e);
}

static int rpc_map_batch(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__MapBatch *q = c->req->map_batch;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	if (q->n_entries == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "MapBatch has no entries");
	if (q->n_entries > DMB_MAX_BATCH)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG, "MapBatch has %zu entries; the limit is %u",
				q->n_entries, DMB_MAX_BATCH);
	struct dmb_map_req one, *reqs = &one;
	if (q->n_entries > 1) {
		reqs = malloc(q->n_entries * sizeof(*reqs));
		if (!reqs)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < q->n_entries; i++)
		req_from_entry(&reqs[i], q->entries[i]);
	return sched_map(c, ctx, reqs, q->n_entries, e);
}

int rpc_reply_unmapped(struct rpc_call *c, uint64_t bytes, uint64_t count)
{
	Dmb__UnmapReply *b = &c->body.unmap;
	dmb__unmap_reply__init(b);
	b->unmapped_bytes = bytes;
	b->unmapped_count = (uint32_t)count;
	SET_BODY(c, unmap, UNMAP);
	return 0;
}

static int rpc_unmap(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__Unmap *q = c->req->unmap;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	if (!q->range)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "Unmap has no range");
	struct dmb_range rg = { q->range->iova, q->range->length };
	return sched_unmap(c, ctx, &rg, 1, false, e);
}

static int rpc_unmap_batch(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__UnmapBatch *q = c->req->unmap_batch;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	if (q->n_ranges == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "UnmapBatch has no ranges");
	if (q->n_ranges > DMB_MAX_BATCH)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG, "UnmapBatch has %zu ranges; the limit is %u",
				q->n_ranges, DMB_MAX_BATCH);
	struct dmb_range one, *rg = &one;
	if (q->n_ranges > 1) {
		rg = malloc(q->n_ranges * sizeof(*rg));
		if (!rg)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < q->n_ranges; i++)
		rg[i] = (struct dmb_range){ q->ranges[i]->iova, q->ranges[i]->length };
	return sched_unmap(c, ctx, rg, q->n_ranges, false, e);
}

/* Discard / Populate: granules of granular mappings (core/granule.c). */
static int rpc_convert(struct rpc_call *c, const Dmb__Convert *q, bool discard, struct dmb_err *e)
{
	const char *what = discard ? "Discard" : "Populate";
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	if (q->n_ranges == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "%s has no ranges", what);
	if (q->n_ranges > DMB_MAX_BATCH)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG, "%s has %zu ranges; the limit is %u",
				what, q->n_ranges, DMB_MAX_BATCH);
	struct dmb_range one, *rg = &one;
	if (q->n_ranges > 1) {
		rg = rpc_alloc(c, q->n_ranges * sizeof(*rg));
		if (!rg)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < q->n_ranges; i++) {
		if (!q->ranges[i]) {
			if (e)
				e->index = (uint32_t)i;
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "range %zu is empty", i);
		}
		rg[i] = (struct dmb_range){ q->ranges[i]->iova, q->ranges[i]->length };
	}
	struct dmb_convert_result res;
	int r = map_convert(ctx, rg, q->n_ranges, discard, &res, e);
	if (r < 0)
		return r;
	Dmb__ConvertReply *b = &c->body.convert;
	dmb__convert_reply__init(b);
	b->granules = res.granules;
	b->bytes = res.bytes;
	b->unchanged = res.unchanged;
	b->pinned_bytes = ctx_pinned_bytes(ctx);
	if (discard) {
		c->reply.body_case = DMB__REPLY__BODY_DISCARD;
		c->reply.discard = b;
	} else {
		c->reply.body_case = DMB__REPLY__BODY_POPULATE;
		c->reply.populate = b;
	}
	return 0;
}

static int rpc_discard(struct rpc_call *c, struct dmb_err *e)
{
	return rpc_convert(c, c->req->discard, true, e);
}

static int rpc_populate(struct rpc_call *c, struct dmb_err *e)
{
	return rpc_convert(c, c->req->populate, false, e);
}

static int rpc_unmap_all(struct rpc_call *c, struct dmb_err *e)
{
	struct dmb_ctx *ctx = need_ctx(c, c->req->unmap_all->context_id, e);
	if (!ctx)
		return -ENOENT;
	return sched_unmap(c, ctx, NULL, 0, true, e);
}

/* ------------------------------------------------------------ devices */

static int rpc_device_open(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__DeviceOpen *q = c->req->device_open;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	struct dmb_device *d;
	int r = device_open(ctx, q->bdf, &d, e);
	if (r < 0)
		return r;
	Dmb__DeviceOpenReply *b = &c->body.device_open;
	dmb__device_open_reply__init(b);
	b->device_id = d->id;
	b->fd_index = -1;
	b->vendor_id = d->info.vendor;
	b->device_id_pci = d->info.device;
	b->group = d->info.group;
	b->viable = d->info.viable;
	if (q->want_fd) {
		int fd = core_device_fd(d);
		if (fd < 0) {
			device_close(d);
			return dmb_fail(e, DMB_E_UNIMPLEMENTED, -fd,
					"the backend cannot hand out a device fd");
		}
		c->out_fds[c->n_out_fds] = fd; /* borrowed: the send dups or copies it */
		b->fd_index = (int32_t)c->n_out_fds++;
	}
	SET_BODY(c, device_open, DEVICE_OPEN);
	return 0;
}

static int rpc_device_close(struct rpc_call *c, struct dmb_err *e)
{
	struct dmb_device *d = device_lookup(c->s->owner, c->req->device_close->device_id);
	if (!d)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "device %" PRIu64 " not found",
				c->req->device_close->device_id);
	device_close(d);
	return 0;
}

/* ------------------------------------------------------------ P2P */

static struct dmb_device *need_device(struct rpc_call *c, uint64_t id, struct dmb_err *e)
{
	struct dmb_device *d = device_lookup(c->s->owner, id);
	if (!d)
		dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "device %" PRIu64 " not found", id);
	return d;
}

static int rpc_map_peer(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__MapPeer *q = c->req->map_peer;
	struct dmb_ctx *ctx = need_ctx(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	bool by_id = q->peer_device_id != 0, by_bdf = q->peer_bdf && q->peer_bdf[0];
	if (by_id == by_bdf)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"name the peer by exactly one of peer_device_id and peer_bdf");
	struct dmb_device *peer;
	if (by_id) {
		peer = need_device(c, q->peer_device_id, e);
		if (!peer)
			return -ENOENT;
	} else {
		if (!device_bdf_valid(q->peer_bdf))
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"peer_bdf is not a PCI address dddd:bb:dd.f");
		peer = device_find_bdf(&c->s->srv->core, q->peer_bdf);
		if (!peer)
			return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "no open device %s", q->peer_bdf);
		if (peer->ctx->owner != c->s->owner && !c->s->owner->pol.p2p_cross_client) {
			log_ratelimited(LOG_NOTICE, "session %" PRIu64 " (uid %u pid %d): P2P to %s of another client refused",
				   c->s->id, (unsigned)c->s->cred.uid, (int)c->s->cred.pid, peer->bdf);
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
					"%s belongs to another client and the policy does not allow "
					"P2P across clients", q->peer_bdf);
		}
	}
	struct dmb_map_peer_req mr = {
		.peer = peer, .bar = q->bar, .offset = q->offset, .iova = q->iova,
		.length = q->length, .prot = q->prot,
	};
	int r = p2p_map(ctx, &mr, e);
	if (r < 0)
		return r;
	rpc_reply_mapped(c, ctx, &mr.iova, 0, 1);
	c->body.map.attr = (Dmb__MemAttr)c->s->srv->core.be->p2p_attr;
	return 0;
}

static int reply_device_state(struct rpc_call *c, struct dmb_device *d)
{
	Dmb__DeviceStateReply *b = &c->body.device_state;
	dmb__device_state_reply__init(b);
	b->command = d->command;
	b->memory = (d->command & DMB_PCI_COMMAND_MEMORY) != 0;
	b->bus_master = (d->command & DMB_PCI_COMMAND_MASTER) != 0;
	b->importers = d->n_importers;
	b->revoked = d->n_revoked;
	b->revocations = d->revocations;
	b->restorations = d->restorations;
	SET_BODY(c, device_state, DEVICE_STATE);
	return 0;
}

static int rpc_device_set_command(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__DeviceSetCommand *q = c->req->device_set_command;
	struct dmb_device *d = need_device(c, q->device_id, e);
	if (!d)
		return -ENOENT;
	if (q->set_bits > 0xffff || q->clear_bits > 0xffff)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "command bits are 16 bits wide");
	int r = p2p_set_command(d, (uint16_t)q->set_bits, (uint16_t)q->clear_bits, e);
	return r < 0 ? r : reply_device_state(c, d);
}

static int rpc_device_reset(struct rpc_call *c, struct dmb_err *e)
{
	struct dmb_device *d = need_device(c, c->req->device_reset->device_id, e);
	if (!d)
		return -ENOENT;
	int r = p2p_reset(d, e);
	return r < 0 ? r : reply_device_state(c, d);
}

static int rpc_list_devices(struct rpc_call *c, struct dmb_err *e)
{
	struct dmb_core *core = &c->s->srv->core;
	bool all = c->req->list_devices->all;
	if (all && !c->s->admin)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
				"listing every client's devices needs an admin session");
	size_t n = 0, nimp = 0;
	struct dmb_ctx *ctx;
	struct dmb_device *d;
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		if (!all && ctx->owner != c->s->owner)
			continue;
		TAILQ_FOREACH(d, &ctx->devices, link) {
			n++;
			nimp += d->n_importers;
		}
	}
	Dmb__DeviceListing *arr = rpc_alloc(c, n * sizeof(*arr));
	Dmb__DeviceListing **ptrs = rpc_alloc(c, n * sizeof(*ptrs));
	Dmb__Importer *imp = rpc_alloc(c, nimp * sizeof(*imp));
	Dmb__Importer **iptrs = rpc_alloc(c, nimp * sizeof(*iptrs));
	if (!arr || !ptrs || !imp || !iptrs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	size_t i = 0, k = 0;
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		if (!all && ctx->owner != c->s->owner)
			continue;
		TAILQ_FOREACH(d, &ctx->devices, link) {
			uint16_t cmd;
			struct dmb_err e2 = { 0 };
			if (!d->in_reset)
				(void)p2p_read_command(d, &cmd, &e2);
			Dmb__DeviceListing *o = &arr[i];
			dmb__device_listing__init(o);
			o->device_id = d->id;
			o->bdf = d->bdf;
			o->group = d->info.group;
			o->context_id = ctx->id;
			o->owner_uid = ctx->owner ? ctx->owner->uid : 0;
			o->vendor_id = d->info.vendor;
			o->device_id_pci = d->info.device;
			o->command = d->command;
			o->memory = (d->command & DMB_PCI_COMMAND_MEMORY) != 0;
			o->bus_master = (d->command & DMB_PCI_COMMAND_MASTER) != 0;
			o->in_reset = d->in_reset;
			o->revocations = d->revocations;
			o->restorations = d->restorations;
			o->importers = &iptrs[k];
			struct dmb_p2p *p;
			TAILQ_FOREACH(p, &d->importers, peer_link) {
				Dmb__Importer *m = &imp[k];
				dmb__importer__init(m);
				m->context_id = p->ctx->id;
				m->iova = p->m.iova;
				m->length = p->m.length;
				m->bar = p->bar;
				m->offset = p->m.offset;
				m->revoked = p->revoked;
				m->owner_uid = p->ctx->owner ? p->ctx->owner->uid : 0;
				m->attr = (Dmb__MemAttr)p->attr;
				iptrs[k++] = m;
				o->n_importers++;
			}
			ptrs[i++] = o;
		}
	}
	Dmb__ListDevicesReply *b = &c->body.list_devices;
	dmb__list_devices_reply__init(b);
	b->n_devices = i;
	b->devices = ptrs;
	SET_BODY(c, list_devices, LIST_DEVICES);
	return 0;
}

/* One simulated DMA: through a context's page table (ctx) or by a device's
 * engine (dev). Both request kinds share the checks and the reply. */
static int sim_dma(struct rpc_call *c, const char *what, struct dmb_ctx *ctx, struct dmb_device *dev,
		   uint64_t iova, uint32_t length, bool to_memory, const ProtobufCBinaryData *data,
		   struct dmb_err *e)
{
	if (length == 0 || length > DMB_MAX_SIM_DMA)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "%s length must be 1..%u bytes",
				what, DMB_MAX_SIM_DMA);
	uint64_t last;
	if (!dmb_range_last(iova, length, &last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW, "iova + length overflows");
	Dmb__SimDmaReply *b = &c->body.sim_dma;
	dmb__sim_dma_reply__init(b);
	uint8_t *buf = data->data;
	if (to_memory) {
		if (data->len != length)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"%s to memory carries %zu bytes of data but length %u", what,
					data->len, length);
	} else {
		buf = rpc_alloc(c, length);
		if (!buf)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	int r = dev ? device_sim_dma(dev, iova, buf, length, to_memory, e)
		    : ctx_sim_dma(ctx, iova, buf, length, to_memory, e);
	if (r < 0)
		return r;
	if (!to_memory) {
		b->data.data = buf;
		b->data.len = length;
	}
	SET_BODY(c, sim_dma, SIM_DMA);
	return 0;
}

static int rpc_sim_device_dma(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__SimDeviceDma *q = c->req->sim_device_dma;
	struct dmb_device *d = need_device(c, q->device_id, e);
	if (!d)
		return -ENOENT;
	return sim_dma(c, "SimDeviceDma", NULL, d, q->iova, q->length, q->to_memory, &q->data, e);
}

/* ------------------------------------------------------------ sim DMA */

static int rpc_sim_dma(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__SimDma *q = c->req->sim_dma;
	struct dmb_ctx *ctx = ctx_lookup(c->s->owner, q->context_id);
	/* An admin may drive the engine through a context nobody holds (one
	 * restored after a host handoff, before its reclaim): that is how a
	 * restore is checked by moving bytes. */
	if (!ctx && c->s->admin) {
		ctx = ctx_lookup_any(&c->s->srv->core, q->context_id);
		if (ctx && ctx->owner)
			ctx = NULL;
	}
	if (!ctx)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "context %" PRIu64 " not found",
				q->context_id);
	return sim_dma(c, "SimDma", ctx, NULL, q->iova, q->length, q->to_memory, &q->data, e);
}

/* ------------------------------------------------------------ no-IOMMU */

static int rpc_phys_ranges(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__PhysRanges *q = c->req->phys_ranges;
	/* An admin may ask of any context (dmabrokerctl phys-ranges). */
	struct dmb_ctx *ctx = need_ctx_or_admin(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	struct dmb_phys_range *ranges = rpc_alloc(c, DMB_MAX_LIST * sizeof(*ranges));
	Dmb__PhysRange *arr = rpc_alloc(c, DMB_MAX_LIST * sizeof(*arr));
	Dmb__PhysRange **ptrs = rpc_alloc(c, DMB_MAX_LIST * sizeof(*ptrs));
	if (!ranges || !arr || !ptrs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	size_t n = 0;
	bool more = false;
	uint64_t next = 0;
	int r = ctx_phys_ranges(ctx, q->iova, q->length, ranges, DMB_MAX_LIST, &n, &more, &next, e);
	if (r < 0)
		return r;
	Dmb__PhysRangesReply *b = &c->body.phys_ranges;
	dmb__phys_ranges_reply__init(b);
	for (size_t i = 0; i < n; i++) {
		dmb__phys_range__init(&arr[i]);
		arr[i].iova = ranges[i].iova;
		arr[i].phys = ranges[i].phys;
		arr[i].length = ranges[i].length;
		ptrs[i] = &arr[i];
	}
	b->n_ranges = n;
	b->ranges = ptrs;
	b->more = more;
	b->next_iova = next;
	SET_BODY(c, phys_ranges, PHYS_RANGES);
	return 0;
}

/* ------------------------------------------------------------ events, stats */

static int rpc_subscribe(struct rpc_call *c, struct dmb_err *e)
{
	uint32_t m = c->req->subscribe->mask;
	if (m & ~(uint32_t)DMB_EVENT_ALL)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "unknown event kinds in mask 0x%x", m);
	c->s->event_mask = m ? m : DMB_EVENT_ALL;
	return 0;
}

static void stats_add_ctx(Dmb__StatsReply *st, const struct dmb_ctx *ctx)
{
	st->contexts++;
	st->noiommu_contexts += ctx->noiommu;
	st->regions += ctx->n_regions;
	st->mappings += ctx->n_mappings;
	st->mapped_bytes += ctx->mapped_bytes;
	st->pinned_bytes += ctx_pinned_bytes(ctx);
	st->devices += ctx->n_devices;
	st->p2p_mappings += ctx->p2p_mappings;
	st->p2p_bytes += ctx->p2p_bytes;
	struct dmb_device *d;
	TAILQ_FOREACH(d, &ctx->devices, link) {
		st->revocations += d->revocations;
		st->restorations += d->restorations;
	}
}

static int rpc_stats(struct rpc_call *c, struct dmb_err *e)
{
	uint64_t id = c->req->stats->context_id;
	Dmb__StatsReply *st = &c->body.stats;
	dmb__stats_reply__init(st);
	if (id) {
		struct dmb_ctx *ctx = need_ctx(c, id, e);
		if (!ctx)
			return -ENOENT;
		stats_add_ctx(st, ctx);
	} else {
		struct dmb_ctx *ctx;
		TAILQ_FOREACH(ctx, &c->s->owner->contexts, owner_link)
			stats_add_ctx(st, ctx);
	}
	SET_BODY(c, stats, STATS);
	return 0;
}

/* ------------------------------------------------------------ admin */

static int rpc_status(struct rpc_call *c, struct dmb_err *e)
{
	struct server *srv = c->s->srv;
	struct dmb_core *core = &srv->core;
	Dmb__StatusReply *b = &c->body.status;
	dmb__status_reply__init(b);
	b->server_version = (char *)DMB_VERSION;
	b->backend = (char *)core_backend_name(core);
	b->n_features = count_features(core_backend_features(core));
	b->features = (char **)core_backend_features(core);
	b->uptime_ms = dmb_now_ms() - srv->start_ms;
	b->sessions = srv->n_sessions;
	b->pid = (uint32_t)getpid();
	dmb__stats_reply__init(&c->totals);
	c->totals.contexts = core->n_contexts;
	c->totals.noiommu_contexts = core->n_noiommu;
	c->totals.regions = core->n_regions;
	c->totals.mappings = core->n_mappings;
	c->totals.mapped_bytes = core->mapped_bytes;
	c->totals.pinned_bytes = core_pinned_bytes(core);
	c->totals.devices = core->n_devices;
	c->totals.p2p_mappings = core->p2p_mappings;
	c->totals.p2p_bytes = core->p2p_bytes;
	c->totals.revocations = core->revocations;
	c->totals.restorations = core->restorations;
	b->totals = &c->totals;
	SET_BODY(c, status, STATUS);
	return 0;
}

static int rpc_list_contexts(struct rpc_call *c, struct dmb_err *e)
{
	struct dmb_core *core = &c->s->srv->core;
	bool all = c->req->list_contexts->all;
	if (all && !c->s->admin)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EPERM,
				"listing every client's contexts needs an admin session");
	size_t n = all ? core->n_contexts : c->s->owner->n_contexts;
	Dmb__ContextInfo *arr = rpc_alloc(c, n * sizeof(*arr));
	Dmb__ContextInfo **ptrs = rpc_alloc(c, n * sizeof(*ptrs));
	if (!arr || !ptrs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	size_t i = 0;
	struct dmb_ctx *ctx;
#define FILL(ctx)                                                         \
	do {                                                              \
		Dmb__ContextInfo *ci = &arr[i];                           \
		dmb__context_info__init(ci);                              \
		ci->context_id = (ctx)->id;                               \
		ci->name = (ctx)->name;                                   \
		ci->owner_uid = (ctx)->owner ? (ctx)->owner->uid : 0;     \
		ci->owner_pid = (ctx)->owner ? (uint32_t)(ctx)->owner->pid : 0; \
		ci->session_id = (ctx)->owner ? (ctx)->owner->session_id : 0; \
		ci->persistent = (ctx)->persistent;                       \
		ci->regions = (ctx)->n_regions;                           \
		ci->mappings = (ctx)->n_mappings;                         \
		ci->mapped_bytes = (ctx)->mapped_bytes;                   \
		ci->devices = (ctx)->n_devices;                           \
		ci->noiommu = (ctx)->noiommu;                             \
		ptrs[i] = ci;                                             \
		i++;                                                      \
	} while (0)
	if (all) {
		RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts)
			FILL(ctx);
	} else {
		TAILQ_FOREACH(ctx, &c->s->owner->contexts, owner_link)
			FILL(ctx);
	}
#undef FILL
	Dmb__ListContextsReply *b = &c->body.list_contexts;
	dmb__list_contexts_reply__init(b);
	b->n_contexts = i;
	b->contexts = ptrs;
	SET_BODY(c, list_contexts, LIST_CONTEXTS);
	return 0;
}

static int rpc_list_mappings(struct rpc_call *c, struct dmb_err *e)
{
	const Dmb__ListMappings *q = c->req->list_mappings;
	struct dmb_ctx *ctx = need_ctx_or_admin(c, q->context_id, e);
	if (!ctx)
		return -ENOENT;
	uint32_t max = q->max_entries ? q->max_entries : DMB_MAX_LIST;
	if (max > DMB_MAX_LIST)
		max = DMB_MAX_LIST;
	size_t cap = ctx->n_mappings < max ? ctx->n_mappings : max;
	Dmb__MappingInfo *arr = rpc_alloc(c, cap * sizeof(*arr));
	Dmb__MappingInfo **ptrs = rpc_alloc(c, cap * sizeof(*ptrs));
	if (!arr || !ptrs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	Dmb__ListMappingsReply *b = &c->body.list_mappings;
	dmb__list_mappings_reply__init(b);
	size_t i = 0;
	struct dmb_mapping *m = map_first_from(ctx, q->start_iova);
	for (; m && i < cap; m = map_next(ctx, m), i++) {
		dmb__mapping_info__init(&arr[i]);
		arr[i].iova = m->iova;
		arr[i].length = m->length;
		arr[i].offset = m->offset;
		arr[i].prot = map_prot(m);
		if (map_is_mmio(m)) {
			const struct dmb_p2p *p = dmb_container_of(m, struct dmb_p2p, m);
			arr[i].mmio = true;
			arr[i].peer_device_id = p->peer ? p->peer->id : 0;
			arr[i].bar = p->bar;
			arr[i].revoked = (map_flags(m) & DMB_MAP_REVOKED) != 0;
			arr[i].attr = (Dmb__MemAttr)p->attr;
		} else {
			arr[i].region_id = m->region->id;
			arr[i].attr = DMB__MEM_ATTR__MEM_ATTR_CACHEABLE;
			const struct dmb_gran *g = gran_of(ctx, m);
			if (g) {
				arr[i].granule = g->granule;
				arr[i].discarded = g->discarded;
			}
		}
		arr[i].page_size = map_page_size(ctx, m);
		ptrs[i] = &arr[i];
	}
	b->n_mappings = i;
	b->mappings = ptrs;
	if (m) {
		b->more = true;
		b->next_iova = m->iova;
	}
	SET_BODY(c, list_mappings, LIST_MAPPINGS);
	return 0;
}

static int rpc_list_clients(struct rpc_call *c, struct dmb_err *e)
{
	struct server *srv = c->s->srv;
	size_t n = srv->n_sessions;
	Dmb__ClientInfo *arr = rpc_alloc(c, n * sizeof(*arr));
	Dmb__ClientInfo **ptrs = rpc_alloc(c, n * sizeof(*ptrs));
	if (!arr || !ptrs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	uint64_t now = dmb_now_ms();
	size_t i = 0;
	struct session *s;
	TAILQ_FOREACH(s, &srv->sessions, link) {
		if (i == n)
			break;
		Dmb__ClientInfo *ci = &arr[i];
		dmb__client_info__init(ci);
		ci->session_id = s->id;
		ci->uid = (uint32_t)s->cred.uid;
		ci->gid = (uint32_t)s->cred.gid;
		ci->pid = (uint32_t)s->cred.pid;
		ci->name = s->name;
		ci->admin = s->admin;
		ci->contexts = s->owner->n_contexts;
		ci->pinned_bytes = s->owner->pinned_bytes;
		ci->requests = s->n_requests;
		ci->connected_ms = now - s->start_ms;
		struct dmb_ctx *ctx;
		TAILQ_FOREACH(ctx, &s->owner->contexts, owner_link) {
			ci->mappings += ctx->n_mappings;
			ci->devices += ctx->n_devices;
		}
		ptrs[i++] = ci;
	}
	Dmb__ListClientsReply *b = &c->body.list_clients;
	dmb__list_clients_reply__init(b);
	b->n_clients = i;
	b->clients = ptrs;
	SET_BODY(c, list_clients, LIST_CLIENTS);
	return 0;
}

static int rpc_revoke_context(struct rpc_call *c, struct dmb_err *e)
{
	struct session *s = c->s;
	char who[96];
	snprintf(who, sizeof(who), "an administrator (uid %u pid %d, session %" PRIu64 ")",
		 (unsigned)s->cred.uid, (int)s->cred.pid, s->id);
	struct server_revoke out;
	int r = server_revoke_context(s->srv, c->req->revoke_context->context_id, who, &out, e);
	if (r < 0)
		return r;
	Dmb__RevokeContextReply *b = &c->body.revoke_context;
	dmb__revoke_context_reply__init(b);
	b->context_id = out.context_id;
	b->unmapped = out.unmapped;
	b->unmapped_bytes = out.unmapped_bytes;
	b->devices = out.devices;
	b->owner_session_id = out.owner_session;
	b->owner_uid = out.owner_uid;
	SET_BODY(c, revoke_context, REVOKE_CONTEXT);
	return 0;
}

static int rpc_reload_policy(struct rpc_call *c, struct dmb_err *e)
{
	struct server *srv = c->s->srv;
	log_info("session %" PRIu64 " (uid %u pid %d): policy reload requested", c->s->id,
		 (unsigned)c->s->cred.uid, (int)c->s->cred.pid);
	int r = server_reload_policy(srv, e);
	if (r < 0)
		return r;
	Dmb__ReloadPolicyReply *b = &c->body.reload_policy;
	dmb__reload_policy_reply__init(b);
	b->sessions = srv->n_sessions;
	b->policy_sections = (uint32_t)srv->cfg->n_rules;
	b->path = (char *)(srv->config_path ? srv->config_path : "");
	SET_BODY(c, reload_policy, RELOAD_POLICY);
	return 0;
}

/* ------------------------------------------------------------ host handoff */

static Dmb__HandoffLeftOut **left_out_pb(struct rpc_call *c, const struct handoff_status *st)
{
	Dmb__HandoffLeftOut *arr = rpc_alloc(c, st->n_left_out * sizeof(*arr));
	Dmb__HandoffLeftOut **ptrs = rpc_alloc(c, st->n_left_out * sizeof(*ptrs));
	if (!arr || !ptrs)
		return NULL;
	for (size_t i = 0; i < st->n_left_out; i++) {
		dmb__handoff_left_out__init(&arr[i]);
		arr[i].context_id = st->left_out[i].context_id;
		arr[i].name = (char *)st->left_out[i].name;
		arr[i].reason = (char *)st->left_out[i].reason;
		ptrs[i] = &arr[i];
	}
	return ptrs;
}

static int handoff_status_reply(struct rpc_call *c, const struct handoff_status *st,
				struct dmb_err *e)
{
	Dmb__HandoffStatusReply *b = &c->body.handoff_status;
	dmb__handoff_status_reply__init(b);
	b->state = (char *)st->state;
	b->preserver = (char *)st->preserver;
	b->available = st->available;
	b->message = (char *)st->message;
	b->session_name = (char *)st->session_name;
	b->since_ms = st->since_ms;
	b->contexts = st->contexts;
	b->mappings = st->mappings;
	b->bytes = st->bytes;
	b->devices = st->devices;
	b->unclaimed = st->unclaimed;
	b->degraded = st->degraded;
	b->grace_remaining_ms = st->grace_remaining_ms;
	b->left_out = left_out_pb(c, st);
	if (!b->left_out)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	b->n_left_out = st->n_left_out;
	return 0;
}

static int rpc_handoff_status(struct rpc_call *c, struct dmb_err *e)
{
	struct handoff_status *st = rpc_alloc(c, sizeof(*st));
	if (!st)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	handoff_status(&c->s->srv->handoff, st);
	int r = handoff_status_reply(c, st, e);
	if (r < 0)
		return r;
	SET_BODY(c, handoff_status, HANDOFF_STATUS);
	return 0;
}

static int rpc_handoff_prepare(struct rpc_call *c, struct dmb_err *e)
{
	struct handoff_status *st = rpc_alloc(c, sizeof(*st));
	if (!st)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	bool force = c->req->handoff_prepare->force;
	log_notice("session %" PRIu64 " (uid %u pid %d): host handoff prepare%s requested", c->s->id,
		   (unsigned)c->s->cred.uid, (int)c->s->cred.pid, force ? " (force)" : "");
	int r = handoff_prepare(&c->s->srv->handoff, force, st, e);
	if (r < 0)
		return r;
	Dmb__HandoffPrepareReply *b = &c->body.handoff_prepare;
	dmb__handoff_prepare_reply__init(b);
	b->state = (char *)st->state;
	b->session_name = st->session_name;
	b->preserver = (char *)st->preserver;
	b->contexts = st->contexts;
	b->regions = st->regions;
	b->mappings = st->mappings;
	b->bytes = st->bytes;
	b->devices = st->devices;
	b->left_out = left_out_pb(c, st);
	b->n_left_out = b->left_out ? st->n_left_out : 0;
	SET_BODY(c, handoff_prepare, HANDOFF_PREPARE);
	return 0;
}

static int rpc_handoff_abort(struct rpc_call *c, struct dmb_err *e)
{
	struct handoff *h = &c->s->srv->handoff;
	int r = handoff_abort(h, e);
	if (r < 0)
		return r;
	struct handoff_status *st = rpc_alloc(c, sizeof(*st));
	if (!st)
		return 0; /* aborted; the reply just has no body */
	handoff_status(h, st);
	if (handoff_status_reply(c, st, e) < 0)
		return 0;
	c->reply.body_case = DMB__REPLY__BODY_HANDOFF_ABORT;
	c->reply.handoff_abort = &c->body.handoff_status;
	return 0;
}

/* ------------------------------------------------------------ dispatch */

#define ROW(CASE, nm, fn, fl) [DMB__REQUEST__BODY_##CASE] = { nm, fn, fl }
static const struct rpc_entry rpc_table[] = {
	ROW(HELLO, "hello", rpc_hello, RPC_PRE_HELLO),
	ROW(CONTEXT_CREATE, "context-create", rpc_context_create, RPC_MUTATES),
	ROW(CONTEXT_DESTROY, "context-destroy", rpc_context_destroy, RPC_MUTATES),
	ROW(CONTEXT_RECLAIM, "context-reclaim", rpc_context_reclaim, RPC_MUTATES),
	ROW(REGION_REGISTER, "region-register", rpc_region_register, RPC_MUTATES | RPC_FDS),
	ROW(REGION_UNREGISTER, "region-unregister", rpc_region_unregister, RPC_MUTATES),
	ROW(IOVA_RANGES, "iova-ranges", rpc_iova_ranges, 0),
	ROW(MAP, "map", rpc_map, RPC_MUTATES),
	ROW(MAP_BATCH, "map-batch", rpc_map_batch, RPC_MUTATES),
	ROW(UNMAP, "unmap", rpc_unmap, RPC_MUTATES),
	ROW(UNMAP_BATCH, "unmap-batch", rpc_unmap_batch, RPC_MUTATES),
	ROW(UNMAP_ALL, "unmap-all", rpc_unmap_all, RPC_MUTATES),
	ROW(STATS, "stats", rpc_stats, 0),
	ROW(SUBSCRIBE, "subscribe", rpc_subscribe, 0),
	ROW(DEVICE_OPEN, "device-open", rpc_device_open, RPC_MUTATES),
	ROW(DEVICE_CLOSE, "device-close", rpc_device_close, RPC_MUTATES),
	ROW(SIM_DMA, "sim-dma", rpc_sim_dma, 0),
	ROW(MAP_PEER, "map-peer", rpc_map_peer, RPC_MUTATES),
	ROW(DEVICE_SET_COMMAND, "device-set-command", rpc_device_set_command, RPC_MUTATES),
	ROW(DEVICE_RESET, "device-reset", rpc_device_reset, RPC_MUTATES),
	ROW(SIM_DEVICE_DMA, "sim-device-dma", rpc_sim_device_dma, 0),
	ROW(STATUS, "status", rpc_status, RPC_ADMIN),
	ROW(LIST_CONTEXTS, "list-contexts", rpc_list_contexts, 0),
	ROW(LIST_MAPPINGS, "list-mappings", rpc_list_mappings, 0),
	ROW(LIST_DEVICES, "list-devices", rpc_list_devices, 0),
	ROW(HANDOFF_PREPARE, "handoff-prepare", rpc_handoff_prepare, RPC_ADMIN),
	ROW(HANDOFF_ABORT, "handoff-abort", rpc_handoff_abort, RPC_ADMIN),
	ROW(HANDOFF_STATUS, "handoff-status", rpc_handoff_status, RPC_ADMIN),
	ROW(LIST_CLIENTS, "list-clients", rpc_list_clients, RPC_ADMIN),
	ROW(REVOKE_CONTEXT, "revoke-context", rpc_revoke_context, RPC_ADMIN | RPC_MUTATES),
	ROW(RELOAD_POLICY, "reload-policy", rpc_reload_policy, RPC_ADMIN),
	ROW(PHYS_RANGES, "phys-ranges", rpc_phys_ranges, 0),
	ROW(DISCARD, "discard", rpc_discard, RPC_MUTATES),
	ROW(POPULATE, "populate", rpc_populate, RPC_MUTATES),
};
_Static_assert(DMB_ARRAY_SIZE(rpc_table) <= RPC_MAX_KIND, "RPC_MAX_KIND is too small");
_Static_assert((int)DMB_MEM_CACHEABLE == (int)DMB__MEM_ATTR__MEM_ATTR_CACHEABLE &&
		       (int)DMB_MEM_MMIO == (int)DMB__MEM_ATTR__MEM_ATTR_MMIO,
	       "enum dmb_mem_attr is the wire's MemAttr");

const char *rpc_request_name(size_t kind)
{
	return kind < DMB_ARRAY_SIZE(rpc_table) && rpc_table[kind].fn ? rpc_table[kind].name : NULL;
}
#undef ROW

void rpc_reply_error(struct rpc_call *c, const struct dmb_err *e, Dmb__Error *err)
{
	dmb__error__init(err);
	err->code = (Dmb__ErrorCode)(e->code ? e->code : DMB_E_INTERNAL);
	err->sys_errno = e->sys_errno;
	err->message = (char *)(e->msg[0] ? e->msg : dmb_code_name(err->code));
	err->index = e->index;
	err->retry_after_ms = e->retry_after_ms;
	c->reply.error = err;
	c->reply.body_case = DMB__REPLY__BODY__NOT_SET;
}

/* A packet that cannot be answered by id (too big, garbage) is answered
 * with id 0. Repeated abuse ends the session: see session.c. */
static void reply_bad_packet(struct session *s, uint64_t id, const struct dmb_err *e)
{
	struct rpc_call c = { .s = s };
	Dmb__Error err;
	dmb__reply__init(&c.reply);
	c.reply.id = id;
	rpc_reply_error(&c, e, &err);
	s->n_bad_packets++;
	session_send_reply(s, &c.reply, NULL, 0);
}

static uint32_t first_unknown_field(const Dmb__Request *req)
{
	for (unsigned i = 0; i < req->base.n_unknown_fields; i++)
		if (req->base.unknown_fields[i].tag >= 10)
			return req->base.unknown_fields[i].tag;
	return 0;
}

void rpc_handle(struct session *s, const uint8_t *buf, struct wire_rx *rx)
{
	struct dmb_err e = { 0 };

	if (rx->truncated) {
		dmb_fail(&e, DMB_E_INVALID_ARGUMENT, EMSGSIZE,
			 "packet larger than the limit of %u bytes; split the work into batches",
			 DMB_MAX_PACKET);
		reply_bad_packet(s, 0, &e);
		wire_close_fds(rx);
		return;
	}
	if (rx->fds_truncated) {
		/* The kernel dropped fds that did not fit: the request cannot be
		 * what the client meant. */
		dmb_fail(&e, DMB_E_INVALID_ARGUMENT, EMSGSIZE,
			 "packet carried more fds than the limit of %u", DMB_MAX_FDS);
		reply_bad_packet(s, 0, &e);
		wire_close_fds(rx);
		return;
	}

	struct arena *ar = &s->srv->arena;
	ProtobufCAllocator alloc = arena_allocator(ar);
	/* Map and Unmap, the hot path, by the fast codec; all else by protobuf-c. */
	struct fc_request fast;
	Dmb__Request *req = !rx->nfds && fc_request_unpack(buf, rx->len, &fast)
				    ? &fast.req : dmb__request__unpack(&alloc, rx->len, buf);
	if (!req) {
		arena_reset(ar);
		dmb_fail(&e, DMB_E_INVALID_ARGUMENT, EBADMSG,
			 "malformed packet: not a dmabroker Request message (%zu bytes)", rx->len);
		reply_bad_packet(s, 0, &e);
		wire_close_fds(rx);
		return;
	}

	struct rpc_call c = { .s = s, .req = req, .rx = rx };
	Dmb__Error err;
	dmb__reply__init(&c.reply);
	c.reply.id = req->id;
	s->n_requests++;

	const struct rpc_entry *ent = NULL;
	if ((size_t)req->body_case < DMB_ARRAY_SIZE(rpc_table) && rpc_table[req->body_case].fn)
		ent = &rpc_table[req->body_case];

	int r;
	uint64_t gated;
	if (!ent) {
		uint32_t tag = first_unknown_field(req);
		r = tag ? dmb_fail(&e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				   "unknown request kind (field %u); this server speaks protocol %u",
				   tag, DMB_PROTOCOL_VERSION)
			: dmb_fail(&e, DMB_E_INVALID_ARGUMENT, EINVAL, "request has no body");
	} else if (!s->hello_done && !(ent->flags & RPC_PRE_HELLO)) {
		r = dmb_fail(&e, DMB_E_FAILED_PRECONDITION, EPROTO,
			     "%s before the handshake: send Hello first", ent->name);
	} else if ((ent->flags & RPC_ADMIN) && !s->admin) {
		log_ratelimited(LOG_NOTICE, "session %" PRIu64 " (uid %u pid %d): admin request %s refused", s->id,
			   (unsigned)s->cred.uid, (int)s->cred.pid, ent->name);
		r = dmb_fail(&e, DMB_E_PERMISSION_DENIED, EPERM, "%s needs an admin session", ent->name);
	} else if (rx->nfds && !(ent->flags & RPC_FDS)) {
		r = dmb_fail(&e, DMB_E_INVALID_ARGUMENT, EBADF,
			     "%s takes no fds but the packet carried %zu (they were closed)", ent->name,
			     rx->nfds);
	} else if ((ent->flags & RPC_MUTATES) && handoff_refuses(&s->srv->handoff, ent->name, &e)) {
		r = -EAGAIN;
	} else if (s->srv->n_gates && (gated = sched_blocking_ctx(&c)) != 0 && sched_park(&c, buf, gated) == 0) {
		/* Answered when it is replayed (and counted then). */
		s->n_requests--;
		arena_reset(ar);
		return;
	} else {
		r = ent->fn(&c, &e);
	}

	if (ent)
		s->srv->n_requests_kind[req->body_case]++;
	if (c.deferred) {
		/* A worker runs it; job_done replies. */
		wire_close_fds(rx);
		arena_reset(ar);
		return;
	}
	if (r < 0) {
		rpc_reply_error(&c, &e, &err);
		if ((size_t)err.code < DMB_ARRAY_SIZE(s->srv->n_errors_code))
			s->srv->n_errors_code[err.code]++;
	}
	/* Whatever the handler did not take is closed now, before the reply. */
	wire_close_fds(rx);
	session_send_reply(s, &c.reply, c.out_fds, c.n_out_fds);

	for (size_t i = 0; i < c.n_heap; i++)
		free(c.heap[i]);
	arena_reset(ar); /* frees the request */
}
