/* What the request table (rpc.c) and the scheduling of its long calls
 * (sched.c) share, inside server/: the request being handled, and the
 * calls each makes of the other. Not for other parts. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "dmabroker.pb-c.h"
#include "server/server.h"
#include "util/err.h"

struct rpc_call {
	struct session *s;
	Dmb__Request *req;
	struct wire_rx *rx;
	Dmb__Reply reply;
	int out_fds[DMB_MAX_FDS];
	size_t n_out_fds;
	/* heap blocks the reply points into; freed after it is sent */
	void *heap[8];
	size_t n_heap;
	union {
		Dmb__HelloReply hello;
		Dmb__ContextCreateReply context_create;
		Dmb__RegionRegisterReply region_register;
		Dmb__IovaRangesReply iova_ranges;
		Dmb__MapReply map;
		Dmb__UnmapReply unmap;
		Dmb__StatsReply stats;
		Dmb__DeviceOpenReply device_open;
		Dmb__SimDmaReply sim_dma;
		Dmb__StatusReply status;
		Dmb__ListContextsReply list_contexts;
		Dmb__ListMappingsReply list_mappings;
		Dmb__DeviceStateReply device_state;
		Dmb__ListDevicesReply list_devices;
		Dmb__ContextReclaimReply context_reclaim;
		Dmb__ListClientsReply list_clients;
		Dmb__RevokeContextReply revoke_context;
		Dmb__ReloadPolicyReply reload_policy;
		Dmb__HandoffPrepareReply handoff_prepare;
		Dmb__HandoffStatusReply handoff_status;
		Dmb__PhysRangesReply phys_ranges;
		Dmb__ConvertReply convert;
	} body;
	uint64_t page_size;   /* MapReply.page_sizes of a single map */
	Dmb__StatsReply totals;
	bool deferred; /* a worker runs it; the reply comes from job_done */
};

/* rpc.c: the reply of a request, filled in place of its body. */
/* n new mappings of ctx, at the IOVAs at iovas[0], then every `stride`
 * bytes (the iova member of an array of structs). */
int rpc_reply_mapped(struct rpc_call *c, struct dmb_ctx *ctx, const uint64_t *iovas, size_t stride,
		     uint32_t n);
int rpc_reply_unmapped(struct rpc_call *c, uint64_t bytes, uint64_t count);
void rpc_reply_error(struct rpc_call *c, const struct dmb_err *e, Dmb__Error *err);

/* sched.c: a map of reqs[0..n) (takes reqs when n > 1: a heap array), on
 * the loop or, when it is long, on a worker (c->deferred: the reply comes
 * later). */
int sched_map(struct rpc_call *c, struct dmb_ctx *ctx, struct dmb_map_req *reqs, size_t n,
	      struct dmb_err *e);
/* Unmaps ranges[0..n) (takes ranges when n > 1), or everything (all), the
 * same way. */
int sched_unmap(struct rpc_call *c, struct dmb_ctx *ctx, struct dmb_range *ranges, size_t n,
		bool all, struct dmb_err *e);
/* The gated context this request must wait for, or 0. */
uint64_t sched_blocking_ctx(struct rpc_call *c);
/* Keeps the packet (and the one fd it names, closing the others) on the
 * context's gate until it is replayed; -ENOMEM: it could not. */
int sched_park(struct rpc_call *c, const uint8_t *buf, uint64_t ctx_id);
