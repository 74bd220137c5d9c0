/* notify: what systemd hears from a running daemon (sd_notify).
 *
 *   READY=1     once, after the sandbox is applied (main.c calls notify_ready)
 *   STATUS=     "N clients, N contexts, N mappings, X pinned; handoff STATE",
 *               re-sent at most once a second, only when it changed
 *   WATCHDOG=1  at half of WatchdogSec= (sd_watchdog_enabled), from a timer
 *               of the event loop: a loop that is stuck stops pinging and
 *               systemd restarts the daemon (the fd store keeps the state)
 *
 * The same one-second tick sends D-Bus PropertiesChanged for the counts. */
#pragma once

#include <stddef.h>

struct server;
struct server_totals;

int notify_init(struct server *srv);
void notify_fini(struct server *srv);
/* READY=1 with the first STATUS= line. */
void notify_ready(struct server *srv);
/* Re-sends STATUS= now (a handoff transition must not wait for the tick). */
void notify_status_now(struct server *srv);
/* The STATUS= text (without "STATUS="). */
void notify_format_status(const struct server_totals *t, const char *handoff, char *buf,
			  size_t len);
