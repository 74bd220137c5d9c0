/* What state/ (persist.c, handoff.c) holds of the server that runs it: the
 * loop, the configuration, the model, and a few calls that reach the
 * sessions. server.c fills it in once and hands it to persist_init() and
 * handoff_init(); state/ holds no struct server and includes no server/
 * header. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct dmb_config;
struct dmb_core;
struct dmb_owner;
struct dmb_event;

struct state_host {
	struct event_base *base;
	const struct dmb_config *cfg;
	struct dmb_core *core;
	void *opaque;   /* the server, for the calls below */
	/* The owner of the live session `session_id`, or NULL. */
	struct dmb_owner *(*session_owner)(void *opaque, uint64_t session_id);
	/* A client connection from the fd store comes back as a session (same
	 * id, handshake done). False: it could not (the fd is the caller's). */
	bool (*adopt_session)(void *opaque, int fd, uint64_t session_id);
	/* Every session is told the broker restarted (a RESTARTED event). */
	void (*restarted)(void *opaque);
	/* A host-handoff transition: every session gets ev (a HANDOFF event;
	 * NULL: the clients are not told), and management hears the state
	 * changed. */
	void (*handoff_changed)(void *opaque, const struct dmb_event *ev);
	/* Contexts with a backend call on a worker (or requests parked behind
	 * one): a handoff prepare refuses while there are any. */
	uint32_t (*busy_contexts)(void *opaque);
};
