/* sd_notify: READY, STATUS and the watchdog (notify.h). */
#include "mgmt/notify.h"

#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "mgmt/bus.h"
#include "text.h"
#include "server/server.h"
#include "util/log.h"

struct notify {
	struct server *srv;
	struct event *ev_tick;
	struct event *ev_watchdog;
	uint64_t watchdog_usec;
	char last[256];
};

/* "64.0 MiB": binary units, one decimal. */
void notify_format_status(const struct server_totals *t, const char *handoff, char *buf,
			  size_t len)
{
	char pinned[32];
	dmb_common_fmt_bytes(t->pinned_bytes, pinned, sizeof(pinned));
	snprintf(buf, len,
		 "%" PRIu32 " client%s, %" PRIu32 " context%s, %" PRIu64 " mapping%s, %s pinned; "
		 "handoff %s",
		 t->clients, t->clients == 1 ? "" : "s", t->contexts, t->contexts == 1 ? "" : "s",
		 t->mappings, t->mappings == 1 ? "" : "s", pinned, handoff);
}

static void send_status(struct notify *n, const struct server_totals *t, bool force)
{
	char line[256];
	notify_format_status(t, server_handoff_state(n->srv), line, sizeof(line));
	if (!force && strcmp(line, n->last) == 0)
		return;
	snprintf(n->last, sizeof(n->last), "%s", line);
	(void)sd_notifyf(0, "STATUS=%s", line);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct notify *n = arg;
	struct server_totals t;
	server_totals(n->srv, &t);
	send_status(n, &t, false);
	bus_counts_changed(n->srv, &t);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)sd_notify(0, "WATCHDOG=1");
}

int notify_init(struct server *srv)
{
	struct notify *n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->srv = srv;
	srv->notify = n;
	n->ev_tick = event_new(srv->base, -1, EV_PERSIST, tick_cb, n);
	if (!n->ev_tick)
		return -ENOMEM;
	struct timeval sec = { 1, 0 };
	event_add(n->ev_tick, &sec);

	uint64_t usec = 0;
	int r = sd_watchdog_enabled(0, &usec);
	if (r < 0)
		log_warning("watchdog: WATCHDOG_USEC is not valid (%s); not pinging", strerror(-r));
	if (r > 0 && usec > 0) {
		n->watchdog_usec = usec;
		n->ev_watchdog = event_new(srv->base, -1, EV_PERSIST, watchdog_cb, n);
		if (!n->ev_watchdog)
			return -ENOMEM;
		uint64_t half = usec / 2;
		struct timeval tv = { (time_t)(half / 1000000u), (suseconds_t)(half % 1000000u) };
		event_add(n->ev_watchdog, &tv);
		log_info("watchdog: pinging every %" PRIu64 " ms (WatchdogSec=%" PRIu64 " ms)",
			 half / 1000, usec / 1000);
	}
	return 0;
}

void notify_ready(struct server *srv)
{
	struct notify *n = srv->notify;
	struct server_totals t;
	server_totals(srv, &t);
	char line[256];
	notify_format_status(&t, server_handoff_state(srv), line, sizeof(line));
	if (n)
		snprintf(n->last, sizeof(n->last), "%s", line);
	(void)sd_notifyf(0, "READY=1\nSTATUS=%s", line);
	if (n && n->watchdog_usec)
		(void)sd_notify(0, "WATCHDOG=1");
}

void notify_status_now(struct server *srv)
{
	struct notify *n = srv->notify;
	if (!n)
		return;
	struct server_totals t;
	server_totals(srv, &t);
	send_status(n, &t, true);
}

void notify_fini(struct server *srv)
{
	struct notify *n = srv->notify;
	if (!n)
		return;
	if (n->ev_tick)
		event_free(n->ev_tick);
	if (n->ev_watchdog)
		event_free(n->ev_watchdog);
	free(n);
	srv->notify = NULL;
}
