/* What an administrator may do to the running server, shared by the socket's
 * admin requests (rpc.c) and the D-Bus object (mgmt/bus.c): totals, the
 * handoff state, revoking a context, reloading the policy; and the core's
 * events on their way out. What management must hear goes through
 * srv->watch, never by a call into mgmt/. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "protocol.h"
#include "state/handoff.h"
#include "server/server.h"
#include "util/log.h"

void server_totals(const struct server *srv, struct server_totals *t)
{
	const struct dmb_core *core = &srv->core;
	*t = (struct server_totals){
		.clients = srv->n_sessions,
		.contexts = core->n_contexts,
		.devices = core->n_devices,
		.regions = core->n_regions,
		.mappings = core->n_mappings,
		.mapped_bytes = core->mapped_bytes,
		.pinned_bytes = core_pinned_bytes(core),
		.p2p_mappings = core->p2p_mappings,
		.revocations = core->revocations,
		.restorations = core->restorations,
		.noiommu_contexts = core->n_noiommu,
	};
}

/* The host-handoff state (handoff.c) as the management interfaces name it. */
const char *server_handoff_state(const struct server *srv)
{
	return handoff_state_name(srv->handoff.state);
}

/* Every handoff transition, after handoff.c logged it once (state_host). */
void server_handoff_state_changed(struct server *srv)
{
	if (srv->watch && srv->watch->handoff_state_changed)
		srv->watch->handoff_state_changed(srv);
}

int server_revoke_context(struct server *srv, uint64_t id, const char *who,
			  struct server_revoke *out, struct dmb_err *e)
{
	struct dmb_ctx *ctx = ctx_lookup_any(&srv->core, id);
	if (!ctx)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "context %" PRIu64 " not found", id);
	/* A map or unmap of this context running on a worker finishes (and is
	 * answered) first: the backend context must not go away under it. */
	core_quiesce(ctx);
	struct dmb_owner *owner = ctx->owner;
	*out = (struct server_revoke){
		.context_id = id,
		.unmapped = ctx->n_mappings,
		.unmapped_bytes = ctx->mapped_bytes,
		.devices = ctx->n_devices,
		.owner_session = owner ? owner->session_id : 0,
		.owner_uid = owner ? (uint32_t)owner->uid : 0,
	};
	char name[65];
	snprintf(name, sizeof(name), "%s", ctx->name);
	bool persistent = ctx->persistent;
	/* Unmaps everything, closes the devices (revoking P2P importers of
	 * their BARs for good, with events to those owners), releases the
	 * regions and the pins, and journals the removal. */
	ctx_destroy(ctx);
	if (owner)
		log_notice("context %" PRIu64 " '%s' of session %" PRIu64 " (uid %u pid %d) revoked by %s: "
			   "%" PRIu64 " mappings (%" PRIu64 " bytes) unmapped, %u devices closed",
			   id, name, owner->session_id, (unsigned)owner->uid, (int)owner->pid, who,
			   out->unmapped, out->unmapped_bytes, out->devices);
	else
		log_notice("context %" PRIu64 " '%s' (%s, no session) revoked by %s: %" PRIu64
			   " mappings (%" PRIu64 " bytes) unmapped, %u devices closed",
			   id, name, persistent ? "persistent" : "detached", who, out->unmapped,
			   out->unmapped_bytes, out->devices);
	if (owner) {
		char msg[160];
		snprintf(msg, sizeof(msg), "context %" PRIu64 " was revoked by %s: its mappings, "
			 "devices and regions are gone", id, who);
		struct dmb_event ev = {
			.kind = DMB_EVENT_CONTEXT_LOST, .context_id = id, .message = msg,
			.permanent = true,
		};
		core_emit(&srv->core, owner, &ev);
	}
	return 0;
}

int server_reload_policy(struct server *srv, struct dmb_err *e)
{
	return server_reload(srv, srv->config_path, e);
}

void server_event_cb(void *opaque, struct dmb_owner *owner, const struct dmb_event *ev)
{
	struct server *srv = opaque;
	if (ev->kind == DMB_EVENT_MAPPINGS_REVOKED && srv->watch && srv->watch->mappings_revoked)
		srv->watch->mappings_revoked(srv, ev->context_id, ev->device_id, ev->n_ranges);
	if (owner)
		session_event_cb(srv, owner, ev);
}
