/* daemon/mgmt/: the management surfaces over a running server.
 *
 * Owns: the D-Bus object (bus.c), the Prometheus metrics file (metrics.c),
 * sd_notify's READY/STATUS/watchdog (notify.c), and this file, which starts
 * them and hangs them on the server (struct server_watch).
 * May call: server/ (the admin operations of server/admin.c, totals,
 * revoke, reload), core/ (handoff_prepare/abort/status), policy/, util/.
 * Never called by: server/, core/, state/, backend/ (they reach management
 * only through the server_watch hooks). Inside: notify.c -> bus.c (STATUS
 * and PropertiesChanged share a tick), no circle. */
#pragma once

#include "mgmt/bus.h"

struct server;

/* Starts metrics, the bus (of this kind) and sd_notify for srv, and installs
 * the hooks through which the server tells them what changed; server_fini()
 * stops them. Before the sandbox: the bus connection and the metrics
 * directory are opened now. */
int mgmt_attach(struct server *srv, enum bus_kind kind);
