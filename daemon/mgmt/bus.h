/* bus: the D-Bus management object (sd-bus on the libevent loop).
 *
 *   well-known name  org.dmabroker.Broker1
 *   object           /org/dmabroker/Broker1
 *   interface        org.dmabroker.Broker1
 *
 * Properties (anyone may read): Version, Backend, Features, HandoffState,
 * Clients, Contexts, Devices, Mappings, PinnedBytes, Revocations. Methods
 * (root, or a uid/gid the policy makes admin): ListClients, ListContexts,
 * ListDevices, RevokeContext, ReloadPolicy. Signals: MappingsRevoked,
 * HandoffStateChanged. docs/operations.md has the introspection XML.
 *
 * The connection is opened before the sandbox is applied (connect(2) is not
 * in the seccomp allow-list); a bus that goes away later is not reconnected:
 * the daemon serves on without it and says so in the log. */
#pragma once

#include <stdint.h>

struct server;
struct server_totals;

#define BUS_NAME "org.dmabroker.Broker1"
#define BUS_PATH "/org/dmabroker/Broker1"
#define BUS_IFACE "org.dmabroker.Broker1"

enum bus_kind {
	BUS_AUTO,   /* the system bus when started by systemd ($INVOCATION_ID), else none */
	BUS_NONE,
	BUS_SYSTEM,
	BUS_USER,   /* $DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus (tests) */
};

/* "auto", "none", "system", "user"; -EINVAL otherwise. */
int bus_parse_kind(const char *s);
/* Connects, takes the name and exports the object. With BUS_AUTO a failure
 * is logged and the daemon goes on without the bus (returns 0); with an
 * explicit bus it is fatal (negative errno). */
int bus_init(struct server *srv, enum bus_kind kind);
void bus_fini(struct server *srv);

/* Signals; no-ops without a bus. */
void bus_emit_mappings_revoked(struct server *srv, uint64_t context, uint64_t device,
			       uint64_t count);
void bus_emit_handoff_state_changed(struct server *srv, const char *state);
/* PropertiesChanged for the counts that changed since the last call (the
 * once-a-second tick in notify.c calls it). */
void bus_counts_changed(struct server *srv, const struct server_totals *t);
