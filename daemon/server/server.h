/* daemon/server/: the part that talks to clients.
 * Owns: the listening socket and the sessions (server.c, session.c), the
 * request table and its handlers (rpc.c, with rpc.h), the allocator
 * requests are decoded into (arena.c), the admin operations both the
 * socket and D-Bus use (admin.c), and the scheduling of long calls: the
 * worker pool (worker.c), worker calls, context gates, parking and replay
 * (sched.c).
 * May call: core/ (the model), state/ (persist, the handoff engine),
 * policy/, proto/, util/; backend/ only through the core.
 * Never calls: mgmt/ (management hears it through struct server_watch).
 * Circles inside, as designed: server.c <-> session.c <-> rpc.c <-> sched.c
 * (a session hands each packet to rpc_handle(), which replies through the
 * session; sched.c runs the long maps and unmaps, parks the requests that
 * name a gated context and replays them through rpc_handle()); admin.c
 * serves rpc.c and is called back by server.c (the core's events, handoff
 * state changes). state/ reaches the
 * sessions only through the struct state_host that server.c installs.
 */

/* The listening socket (server.c), per-connection sessions (session.c) and
 * request dispatch (rpc.c).
 *
 * A session reads one packet at a time, hands it to rpc_handle(), and queues
 * the encoded reply. Writes are non-blocking; when the peer does not read,
 * replies wait in a bounded per-session queue. Above a high-water mark the
 * session stops reading requests (backpressure); above the hard limit (only
 * reachable through server-pushed events) it is disconnected.
 *
 * Long backend calls (maps and unmaps of at least worker_min_bytes) run on
 * a worker thread (worker.h) in three phases: sched.c prepares them on the
 * loop (checks, model, journal), a worker makes the backend call, and the
 * loop finishes them (model, journal, reply). Meanwhile:
 *   - the requesting session reads nothing more (its replies stay in
 *     request order); it keeps receiving events;
 *   - the context is gated (struct ctx_gate): a request of any session that
 *     names it is parked, with its bytes and fds, in arrival order, and
 *     replayed through rpc_handle() once the call is finished; its session
 *     reads nothing more until then either;
 *   - a session whose client goes away is not freed until its call is
 *     finished (its contexts go then), and a P2P revocation reaching the
 *     context waits for the call (dmb_core.ctx_quiesce);
 *   - a stop or a restart handover first waits for every call and replays
 *     what was parked (server_stop, server_fini).
 * Every other context and session goes on. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "policy/config.h"
#include "state/handoff.h"
#include "state/persist.h"
#include "protocol.h"
#include "core/core.h"
#include "dmabroker.pb-c.h"
#include "wire.h"
#include "server/worker.h"

struct event_base;
struct event;
struct bus;
struct metrics;
struct notify;

struct outpkt {
	STAILQ_ENTRY(outpkt) link;
	size_t len;
	size_t nfds;
	int *fds;               /* malloc'ed when nfds > 0 */
	uint8_t data[];
};

struct rpc_job;
struct ctx_gate;

/* A request that named a gated context: the packet as received, replayed
 * when the gate opens. Owns its fds. */
struct parked {
	STAILQ_ENTRY(parked) link;
	struct session *s;
	struct ctx_gate *gate;
	size_t len;
	size_t nfds;
	int fds[DMB_MAX_FDS];
	uint8_t data[];
};

/* A context with a backend call on a worker, or requests still waiting to
 * be replayed after one. By id: a context destroyed meanwhile leaves a gate
 * that only drains its waiters. */
struct ctx_gate {
	LIST_ENTRY(ctx_gate) link;
	uint64_t ctx_id;
	struct rpc_job *job;          /* in flight, or NULL */
	STAILQ_HEAD(, parked) waiters;
};

struct session {
	TAILQ_ENTRY(session) link;
	struct server *srv;
	uint64_t id;
	int fd;
	struct event *ev_read;
	struct event *ev_write;
	struct ucred cred;
	char name[65];
	bool hello_done;
	bool admin;
	bool read_paused;       /* backpressure: too much output queued */
	bool reading;           /* ev_read is added */
	bool closing;
	bool stored;            /* its connection is in the fd store */
	struct rpc_job *inflight; /* its request running on a worker */
	struct parked *parked;    /* its request waiting for a gated context */
	uint32_t event_mask;
	uint64_t event_seq;
	struct dmb_owner *owner;

	STAILQ_HEAD(, outpkt) outq;
	size_t outq_bytes;

	uint64_t n_requests;
	uint32_t n_bad_packets;
	uint64_t start_ms;      /* accepted (or adopted) at, dmb_now_ms() */
};

/* Bump allocator for decoding requests: everything a request's decode
 * allocates is dropped at once when the request is done, so the hot path
 * does no malloc/free per field (protobuf-c takes it as its allocator). */
struct arena_big;
struct arena {
	uint8_t *buf;
	size_t cap;
	size_t used;
	struct arena_big *big;   /* allocations that did not fit */
};

struct server {
	struct event_base *base;
	struct dmb_config *cfg;
	struct dmb_core core;
	bool mem_encrypted;     /* host memory encryption active (policy/hostmem.c) */
	int listen_fd;
	bool listen_owned;      /* we created (and unlink) the socket path */
	struct event *ev_listen;
	struct event *ev_listen_retry; /* out of fds: try accepting again */
	bool listen_paused;     /* ev_listen is off: accept() said EMFILE/ENFILE */
	bool fd_starved;        /* logged that; cleared by the next accept */
	struct event *ev_poll;  /* P2P watcher */
	TAILQ_HEAD(, session) sessions;
	uint32_t n_sessions;
	uint64_t start_ms;
	uint8_t *rxbuf;         /* DMB_MAX_PACKET + 1 */
	uint8_t *txbuf;         /* DMB_MAX_PACKET */
	struct arena arena;
	uint64_t n_disconnects_abuse;
	struct persist persist;
	const char *config_path;  /* what a reload reads; NULL: built-in defaults */
	/* [daemon] socket and backend as the configuration said at start, before
	 * the command line: a reload warns only when the file changes them. */
	char file_socket[108];
	char file_backend[16];
	uint64_t start_realtime_s;
	/* management (mgmt/: bus.c, metrics.c, notify.c); NULL when off. The
	 * server only holds them: it calls out to management through watch. */
	const struct server_watch *watch;
	struct bus *bus;
	struct metrics *metrics;
	struct notify *notify;
	/* requests handled, by Request body case, and failures by wire code */
	uint64_t n_requests_kind[64];
	uint64_t n_errors_code[16];
	struct handoff handoff;
	struct state_host host;       /* what persist and handoff reach of us */
	struct worker_pool pool;
	LIST_HEAD(, ctx_gate) gates;
	uint32_t n_gates;
	struct ctx_gate *replaying;   /* the gate whose waiter is being replayed */
	struct event *ev_replay;      /* replays parked requests (never nested) */
};

/* What the management surfaces (mgmt/) hear from the server: set by
 * mgmt_attach(), each hook optional. The server never calls into mgmt/
 * otherwise, so management stays a layer above it. */
struct server_watch {
	/* The host-handoff state changed (server_handoff_state() tells it). */
	void (*handoff_state_changed)(struct server *srv);
	/* A P2P revocation took `count` mappings of a context out of the IOMMU. */
	void (*mappings_revoked)(struct server *srv, uint64_t context, uint64_t device,
				 uint64_t count);
	/* The server is being torn down (server_fini): close the surfaces. */
	void (*stop)(struct server *srv);
};

/* Totals the management interfaces publish (D-Bus properties, STATUS=,
 * metrics); one snapshot so that all three agree. */
struct server_totals {
	uint32_t clients;
	uint32_t contexts;
	uint32_t devices;
	uint32_t regions;
	uint64_t mappings;
	uint64_t mapped_bytes;
	uint64_t pinned_bytes;    /* the backend's own accounting */
	uint64_t p2p_mappings;
	uint64_t revocations;
	uint64_t restorations;
	uint32_t noiommu_contexts; /* of contexts: no-IOMMU ones (no isolation) */
};

/* server.c */
/* Takes the fds systemd passed (LISTEN_FDS): the listening socket is served,
 * the rest is persisted state (persist.h). */
int server_init(struct server *srv, struct event_base *base, struct dmb_config *cfg,
		struct dmb_backend *be);
/* Stop: true when state was handed over to the fd store and the process
 * must exit without tearing anything down (no unmap); false: call
 * server_fini. */
bool server_stop(struct server *srv);
void server_fini(struct server *srv);
/* Re-reads the configuration (main file and drop-ins) and applies its policy
 * to every session; existing mappings stay. A bad file changes nothing. */
int server_reload(struct server *srv, const char *path, struct dmb_err *e);
/* An fd was freed: accept again if running out of them had stopped it. */
void server_listen_resume(struct server *srv);

/* admin.c: what the admin requests (socket and D-Bus) do, in one place. */
void server_totals(const struct server *srv, struct server_totals *t);
/* The host-handoff state as the management interfaces name it ("normal",
 * "prepared", ...); the handoff engine's every transition reaches
 * server_handoff_state_changed() (through struct state_host). */
const char *server_handoff_state(const struct server *srv);
void server_handoff_state_changed(struct server *srv);
struct server_revoke {
	uint64_t context_id;
	uint64_t unmapped, unmapped_bytes;
	uint32_t devices;
	uint64_t owner_session;   /* 0: detached */
	uint32_t owner_uid;
};
/* Kills a context for an administrator (`who` names them in the log and in
 * the owner's CONTEXT_LOST event): unmaps everything, closes its devices
 * (their P2P importers are revoked for good), releases its regions. */
int server_revoke_context(struct server *srv, uint64_t id, const char *who,
			  struct server_revoke *out, struct dmb_err *e);
/* server_reload() with the daemon's own configuration path. */
int server_reload_policy(struct server *srv, struct dmb_err *e);
/* Events from the core: to the owner's session, and to D-Bus. */
void server_event_cb(void *opaque, struct dmb_owner *owner, const struct dmb_event *ev);

/* session.c */
struct session *session_new(struct server *srv, int fd);
/* A connection from the fd store after a restart: same id, handshake done. */
struct session *session_adopt(struct server *srv, int fd, uint64_t id);
void session_send_restarted(struct session *s);
void session_free(struct session *s);
/* Queues (or sends) a reply; fds are borrowed (dup'ed if they must wait). */
void session_send_reply(struct session *s, Dmb__Reply *reply, const int *fds, size_t nfds);
void session_event_cb(void *opaque, struct dmb_owner *owner, const struct dmb_event *ev);
/* Starts or stops reading requests from s as its state now allows (not
 * closing, no backpressure, nothing in flight or parked). */
void session_update_reading(struct session *s);

/* sched.c: worker calls, gates, parking and replay. */
int sched_init(struct server *srv);
void sched_fini(struct server *srv);
struct ctx_gate *server_gate_find(struct server *srv, uint64_t ctx_id);
/* The gate of ctx_id, created if missing; NULL when out of memory. */
struct ctx_gate *server_gate_get(struct server *srv, uint64_t ctx_id);
/* True when a request naming this context must wait. */
bool server_gate_blocks(struct server *srv, uint64_t ctx_id);
/* Replays parked requests from the loop, soon (never from inside a request). */
void server_schedule_replay(struct server *srv);
/* Waits for every worker call and replays every parked request, until
 * nothing is left (stop and handover). */
void server_quiesce(struct server *srv);

/* arena.c */
int arena_init(struct arena *a, size_t cap);
void arena_fini(struct arena *a);
/* Drops everything allocated since the last reset. */
void arena_reset(struct arena *a);
/* The arena as protobuf-c's allocator. */
ProtobufCAllocator arena_allocator(struct arena *a);

/* rpc.c: handles one received packet (fds in rx are consumed or closed). */
void rpc_handle(struct session *s, const uint8_t *buf, struct wire_rx *rx);
/* The name of a Request body case ("map", "status"), NULL if not served. */
const char *rpc_request_name(size_t kind);
#define RPC_MAX_KIND 64
/* sched.c: a parked request is dropped (its session is going away). */
void rpc_parked_free(struct parked *p);
/* sched.c: waits for a call on a worker and finishes it now (reply included). */
void rpc_job_wait(struct server *srv, struct rpc_job *job);
