/* The host handoff (issue 6): dmabroker's side of a kernel update by kexec.
 *
 *   normal --prepare--> prepared --(kexec)--> restoring --> reclaiming --> normal
 *   prepared --abort--> normal
 *
 * prepare: every context that can be preserved (handoff_preservable) is
 * written into a fresh snapshot journal, and that journal plus every region
 * memfd is preserved in one preserver session (daemon/backend/preserve/preserver.h)
 * under [handoff] session_name. From then on mutating requests are refused
 * with UNAVAILABLE (reads work) until the kexec or an abort. The session fd
 * is kept open (closing it aborts the session) and sits in the fd store as
 * "handoff.session", so a daemon restart while prepared stays prepared.
 *
 * After the kexec the new daemon finds the incoming session at start-up,
 * stores its fd as "handoff.incoming" at once (a session can be retrieved
 * only once), rebuilds every context from the preserved snapshot (new
 * backend objects, devices opened again by BDF, every mapping made again at
 * its IOVA from the retrieved memfds, P2P mappings whose peer decodes), and
 * waits for the VMMs to take their contexts back with their reclaim tokens.
 * Contexts nobody reclaims within [handoff] grace_period_s are released;
 * then the session is finished and the broker is normal again.
 *
 * Every transition is journaled (JRNL_HANDOFF_STATE), logged once, sent to
 * every client as a HANDOFF event and shown in the sd_notify STATUS line.
 * The crash rules (what the next start does in each state) are in
 * docs/journal.md, "Host handoff".
 *
 * The functions below are the whole API: the socket's requests
 * (server/rpc.c) and the D-Bus object (mgmt/bus.c) call them. Plain C, no
 * protobuf. The engine reaches the sessions (HANDOFF events, whether a
 * worker call is running) only through struct state_host (host.h). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state/host.h"
#include "state/journal.h"
#include "util/err.h"

struct persist;
struct stored_fds;
struct dmb_ctx;
struct dmb_preserver;
struct event;

#define HANDOFF_LEFT_OUT_MAX 64

/* Names of the fd-store entries that hold the preserver session. */
#define HANDOFF_FD_OUTGOING "handoff.session"
#define HANDOFF_FD_INCOMING "handoff.incoming"

struct handoff_left_out {
	uint64_t context_id;
	char name[65];
	char reason[160];
};

struct handoff_status {
	const char *state;            /* handoff_state_name() */
	const char *preserver;        /* "luo", "sim", "none" */
	bool available;               /* prepare could start now */
	char message[320];            /* why not / what happens next */
	char session_name[64];
	uint64_t since_ms;            /* in this state, this process */
	uint32_t contexts, regions, devices;
	uint64_t mappings, bytes;
	uint32_t unclaimed, degraded; /* reclaiming */
	uint64_t grace_remaining_ms;  /* reclaiming */
	size_t n_left_out;
	struct handoff_left_out left_out[HANDOFF_LEFT_OUT_MAX];
	size_t n_left_out_total;      /* may exceed HANDOFF_LEFT_OUT_MAX */
};

struct handoff_restored {
	uint64_t id;
	bool claimed;
	bool kept; /* past the grace period, kept for its stranded memfds */
};

struct handoff {
	const struct state_host *host;
	struct persist *persist;
	struct dmb_preserver *pv;     /* NULL: none (or it could not be opened) */
	char pv_name[16];
	char pv_error[480];           /* why there is no preserver */
	uint32_t state;               /* enum jrnl_handoff */
	uint64_t since_ms;
	int session_fd;               /* outgoing (prepared) or incoming (restoring, reclaiming) */
	int stored_out, stored_in;    /* from the fd store at start-up, -1 if none */
	struct handoff_status sum;    /* prepared: what was preserved */
	struct handoff_restored *restored;
	size_t n_restored;
	uint64_t deadline_ms;         /* reclaiming: unclaimed contexts go then */
	struct event *ev_tick;
};

/* "normal", "prepared", "restoring", "reclaiming". */
const char *handoff_state_name(uint32_t state);

/* Start-up, before persist_init: takes the handoff.* fds out of `stored`. */
void handoff_take_stored(struct handoff *h, struct stored_fds *stored);
/* Start-up, after persist_init: opens the preserver, then completes or rolls
 * back what a previous process left (see docs/journal.md) or, when the
 * preserver holds an incoming session of our name, restores from it.
 * Failures are logged; the broker then starts normal. */
int handoff_init(struct handoff *h, const struct state_host *host, struct persist *persist,
		 struct dmb_err *e);
void handoff_fini(struct handoff *h);

int handoff_status(struct handoff *h, struct handoff_status *out);
/* Admin: normal -> prepared. On success *out (optional) is the summary. */
int handoff_prepare(struct handoff *h, bool force, struct handoff_status *out, struct dmb_err *e);
/* Admin: prepared -> normal (nothing stays preserved). */
int handoff_abort(struct handoff *h, struct dmb_err *e);

/* rpc.c: true (and e filled with UNAVAILABLE) while mutations are refused. */
bool handoff_refuses(const struct handoff *h, const char *what, struct dmb_err *e);
/* rpc.c: a context was reclaimed (reclaiming: maybe the last one). */
void handoff_reclaimed(struct handoff *h, uint64_t ctx_id);
/* Whether a context can be carried across a kexec; reason says why not. */
bool handoff_preservable(struct dmb_ctx *ctx, char *reason, size_t len);
