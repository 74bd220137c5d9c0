/* Persistence across a daemon restart: the state journal plus systemd's
 * file-descriptor store.
 *
 * While running, every change of the model is journaled (daemon/state) and
 * every fd that holds kernel state — contexts, devices, regions, the
 * journal itself, and each client's connection — sits in the fd store under
 * a stable name:
 *
 *   jrnl.<generation>      the journal memfd (the highest generation wins)
 *   ctx.<id>.<name>        a context's backend fds (container, group.N, …)
 *   dev.<id>.<name>        a device's backend fds
 *   region.<id>            a region's memfd
 *   session.<id>           a client connection
 *
 * A restart (SIGTERM, a crash, an upgrade) hands all of it to the next
 * process, which replays the journal and re-adopts every object without
 * issuing a single unmap: DMA never stops, and clients keep their
 * connections (they get a RESTARTED event). Without systemd (no
 * NOTIFY_SOCKET) persistence is off and a stop unmaps everything cleanly.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

struct server;
struct jrnl;

/* Fds systemd passed that are not the listening socket. */
struct stored_fds {
	size_t n;
	int *fd;
	char **name;
};

struct persist {
	struct server *srv;
	bool enabled;
	struct jrnl *j;
	uint64_t generation;       /* of the stored journal's name, jrnl.<generation> */
	uint64_t watermark;       /* ids below are journaled as used */
	uint64_t appends;         /* since the last compaction check */
	bool broken;              /* an append failed: mutations are refused */
	struct event *ev_grace;
	uint64_t restored_contexts, restored_mappings, remapped, stray, lost;
};

/* Sets up persistence: restores from `stored` when it holds a journal,
 * else starts a fresh journal. Takes the stored fds (closes what it does not
 * use). Returns 0 (also when persistence is off), or a negative errno when
 * the stored state could not be read at all. */
int persist_init(struct persist *p, struct server *srv, struct stored_fds *stored,
		 struct dmb_err *e);
/* A new client connection: its fd goes to the store. */
void persist_session_new(struct persist *p, uint64_t id, int fd);
/* Clean stop with a successor: backends prepare (type1 invalidates vaddrs).
 * Returns true when the daemon must exit WITHOUT tearing anything down. */
bool persist_handover(struct persist *p);
void persist_fini(struct persist *p);
