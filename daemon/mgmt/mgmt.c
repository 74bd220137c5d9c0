/* Management over the server: see mgmt.h. */
#include "mgmt/mgmt.h"

#include <stdbool.h>

#include "mgmt/bus.h"
#include "mgmt/metrics.h"
#include "mgmt/notify.h"
#include "server/server.h"

static void on_handoff_state_changed(struct server *srv)
{
	bus_emit_handoff_state_changed(srv, server_handoff_state(srv));
	notify_status_now(srv);
}

static void on_mappings_revoked(struct server *srv, uint64_t context, uint64_t device,
				uint64_t count)
{
	bus_emit_mappings_revoked(srv, context, device, count);
}

static void on_stop(struct server *srv)
{
	notify_fini(srv);
	bus_fini(srv);
	metrics_fini(srv, true);
}

static const struct server_watch watch = {
	.handoff_state_changed = on_handoff_state_changed,
	.mappings_revoked = on_mappings_revoked,
	.stop = on_stop,
};

int mgmt_attach(struct server *srv, enum bus_kind kind)
{
	srv->watch = &watch;
	int r = metrics_init(srv);
	if (r >= 0)
		r = bus_init(srv, kind);
	if (r >= 0)
		r = notify_init(srv);
	return r;
}
