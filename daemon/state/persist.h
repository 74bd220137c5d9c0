/* daemon/state/: what outlives the process, and the kernel.
 * Owns: the journal by layer (journal_codec.c: the record codec, CRC-32C
 * and validation; journal_file.c: the memfd file, appends, walking and
 * replay; journal_model.c: the model a replay builds; journal_compact.c:
 * compaction), persistence
 * across a restart (persist.c: the journal hooks, snapshots and the entry
 * points; restore.c: the replay that rebuilds the model and re-adopts every
 * kernel object; fdstore.c: systemd's fd store), and the host-handoff engine
 * (handoff.c: the same snapshot and restore across a kexec, through a
 * preserver).
 * May call: core/ (to rebuild the model at restore), backend/ (adoption
 * through the core's objects; the preserver of backend/preserve/),
 * policy/, util/. The journal's files call nothing but util/. The sessions are
 * reached only through struct state_host (host.h), which the server fills
 * in: state/ holds no struct server.
 * Never calls: server/, mgmt/.
 * Circles inside: none (handoff.c -> persist.c -> restore.c -> fdstore.c;
 * persist.c -> journal_compact.c -> journal_model.c -> journal_file.c ->
 * journal_codec.c).
 */

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

#include "state/host.h"
#include "util/err.h"

struct jrnl;

/* Fds systemd passed that are not the listening socket. */
struct stored_fds {
	size_t n;
	int *fd;
	char **name;
};

struct persist {
	const struct state_host *host;
	bool enabled;
	struct jrnl *j;
	uint64_t generation;       /* of the stored journal's name, jrnl.<generation> */
	uint64_t watermark;       /* ids below are journaled as used */
	uint64_t appends;         /* since the last compaction check */
	bool broken;              /* an append failed: mutations are refused */
	struct event *ev_grace;
	uint32_t handoff;         /* enum jrnl_handoff, as journaled */
	bool hold_releases;       /* prepared for a handoff: no grace-period release */
	uint64_t restored_contexts, restored_mappings, remapped, stray, lost;
};

/* Sets up persistence: restores from `stored` when it holds a journal,
 * else starts a fresh journal. Takes the stored fds (closes what it does not
 * use). Returns 0 (also when persistence is off), or a negative errno when
 * the stored state could not be read at all. */
int persist_init(struct persist *p, const struct state_host *host, struct stored_fds *stored,
		 struct dmb_err *e);
/* A new client connection: its fd goes to the store, when there is room.
 * True when it was stored. */
bool persist_session_new(struct persist *p, uint64_t id, int fd);
/* Clean stop with a successor: backends prepare (type1 invalidates vaddrs).
 * Returns true when the daemon must exit WITHOUT tearing anything down. */
bool persist_handover(struct persist *p);
void persist_fini(struct persist *p);

/* ---- host handoff (daemon/core/handoff.c) ---- */

struct dmb_ctx;
struct dmb_region;
/* Which contexts a snapshot holds and under which name each region's memfd
 * is found again (default "region.<id>"). */
struct persist_snapshot_filter {
	void *opaque;
	bool (*keep)(void *opaque, struct dmb_ctx *ctx);
	void (*region_name)(void *opaque, const struct dmb_region *r, char *buf, size_t len);
};
/* A fresh journal of the model as it is now (f: which part), with the
 * handoff state recorded when not normal. Not stored anywhere. */
int persist_snapshot(struct persist *p, const struct persist_snapshot_filter *f, uint32_t handoff,
		     struct jrnl **out, struct dmb_err *e);
/* Journals a handoff state (and remembers it for later snapshots). */
int persist_set_handoff(struct persist *p, uint32_t state, struct dmb_err *e);
/* Where a fresh restore gets each region's memfd: fd(opaque, name) with the
 * name the journal gives; returns a new fd (taken) or -1 (logged by it; the
 * context is then degraded). Called while the contexts are rebuilt. */
struct persist_fetch {
	void *opaque;
	int (*fd)(void *opaque, const char *name);
};
/* After a kexec: rebuilds every context of the journal in jfd (taken) with
 * new backend objects: devices opened by BDF, mappings made again, regions
 * from fetch. One pass over the journal. Nothing is journaled or stored:
 * persist_store_everything and persist_resnapshot follow. */
int persist_restore_fresh(struct persist *p, const struct persist_fetch *fetch, int jfd,
			  struct dmb_err *e);
/* Puts every object's fds in the fd store (after persist_restore_fresh). */
int persist_store_everything(struct persist *p, struct dmb_err *e);
/* Replaces the live journal with a snapshot of the model. */
int persist_resnapshot(struct persist *p, struct dmb_err *e);
/* The fd store, for the handoff's session fd. */
int persist_store_fd(const char *name, int fd);
void persist_unstore(const char *name);
