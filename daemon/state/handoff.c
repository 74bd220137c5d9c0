/* The host handoff state machine (handoff.h has the overview; docs/journal.md
 * "Host handoff" the crash rules; docs/operations.md the runbook).
 *
 * What a preserved session holds (tokens are ours, recorded in the snapshot):
 *   token 0          a snapshot journal of every preserved context, written
 *                    at prepare and never appended to (the preserver
 *                    freezes its size), handoff state PREPARED
 *   token <region>   each distinct region memfd, under the id of the first
 *                    region that uses it; the snapshot names it "luo.<token>"
 *                    (one file registered twice is preserved once)
 * The live journal stays in the fd store and goes on recording what still
 * happens while prepared (a client leaving, a P2P revocation); none of that
 * changes what is preserved: mutations are refused, and grace-period
 * releases wait (persist.hold_releases). */
#include "state/handoff.h"

#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "backend/preserve/preserver.h"
#include "protocol.h"
#include "core/core.h"
#include "policy/config.h"
#include "state/persist.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/macro.h"

#define TOKEN_JOURNAL 0
#define TICK_MS 250

const char *handoff_state_name(uint32_t state)
{
	switch (state) {
	case JRNL_HANDOFF_NORMAL: return "normal";
	case JRNL_HANDOFF_PREPARED: return "prepared";
	case JRNL_HANDOFF_RESTORING: return "restoring";
	case JRNL_HANDOFF_RECLAIMING: return "reclaiming";
	default: return "unknown";
	}
}

/* ------------------------------------------------------------ transitions */

/* The new state is in force (already journaled): log it once, tell every
 * client, update the STATUS line. */
static void announce(struct handoff *h, uint32_t state, const char *sentence)
{
	h->state = state;
	h->since_ms = dmb_now_ms();
	h->persist->hold_releases = state == JRNL_HANDOFF_PREPARED;
	log_notice("host handoff: %s: %s", handoff_state_name(state), sentence);
	struct dmb_event ev = {
		.kind = DMB_EVENT_HANDOFF,
		.message = sentence,
		.handoff_state = handoff_state_name(state),
	};
	h->host->handoff_changed(h->host->opaque, &ev);
}

/* Journals the state, then announces it. */
static int set_state(struct handoff *h, uint32_t state, const char *sentence, struct dmb_err *e)
{
	int r = persist_set_handoff(h->persist, state, e);
	if (r < 0)
		return r;
	announce(h, state, sentence);
	return 0;
}

/* ------------------------------------------------------------ what can be preserved */

bool handoff_preservable(struct dmb_ctx *ctx, char *reason, size_t len)
{
	if (!ctx->persistent) {
		snprintf(reason, len, "it is not persistent (no reclaim token), so nobody could take "
			 "it back after the kexec");
		return false;
	}
	struct dmb_region *reg;
	RB_FOREACH(reg, dmb_region_tree, &ctx->regions) {
		if (reg->hugetlb || strcmp(reg->kind ? reg->kind : "", "memfd") != 0) {
			snprintf(reason, len, "region %" PRIu64 " is a %s file; LUO preserves only "
				 "plain (not hugetlb) memfds", reg->id,
				 reg->kind ? reg->kind : "non-memfd");
			return false;
		}
	}
	return true;
}

/* Counts what would be preserved and lists what cannot be. */
static void survey(struct handoff *h, struct handoff_status *sum)
{
	struct dmb_core *core = h->host->core;
	sum->contexts = sum->regions = sum->devices = 0;
	sum->mappings = sum->bytes = 0;
	sum->n_left_out = sum->n_left_out_total = 0;
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		char why[160];
		if (!handoff_preservable(ctx, why, sizeof(why))) {
			if (sum->n_left_out < HANDOFF_LEFT_OUT_MAX) {
				struct handoff_left_out *l = &sum->left_out[sum->n_left_out++];
				l->context_id = ctx->id;
				snprintf(l->name, sizeof(l->name), "%s", ctx->name);
				snprintf(l->reason, sizeof(l->reason), "%s", why);
			}
			sum->n_left_out_total++;
			continue;
		}
		sum->contexts++;
		sum->regions += ctx->n_regions;
		sum->devices += ctx->n_devices;
		sum->mappings += ctx->n_mappings;
		struct dmb_region *reg;
		RB_FOREACH(reg, dmb_region_tree, &ctx->regions)
			sum->bytes += reg->size;
	}
}

/* ------------------------------------------------------------ prepare / abort */

struct token_map {
	size_t n;
	struct {
		uint64_t region, token;
		dev_t dev;
		ino_t ino;
	} *e;
};

static bool keep_ctx(void *o, struct dmb_ctx *ctx)
{
	char why[8];
	return handoff_preservable(ctx, why, sizeof(why));
}

static void region_name(void *o, const struct dmb_region *r, char *buf, size_t len)
{
	const struct token_map *tm = o;
	for (size_t i = 0; i < tm->n; i++)
		if (tm->e[i].region == r->id) {
			snprintf(buf, len, "luo.%" PRIu64, tm->e[i].token);
			return;
		}
}

static const char *busy_hint(uint32_t state)
{
	switch (state) {
	case JRNL_HANDOFF_PREPARED:
		return "go on with the kexec, or abort it first (dmabrokerctl handoff abort)";
	case JRNL_HANDOFF_RECLAIMING:
		return "wait until every restored context is reclaimed or released";
	default:
		return "wait until it is done";
	}
}

static int no_preserver(struct handoff *h, struct dmb_err *e)
{
	return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EOPNOTSUPP, "%s; nothing was changed",
			h->pv_error);
}

/* Preserves every memfd of the kept contexts (one token per distinct
 * file) and fills tm. */
static int preserve_regions(struct handoff *h, int sfd, struct token_map *tm, struct dmb_err *e)
{
	struct dmb_core *core = h->host->core;
	tm->e = calloc(core->n_regions + 1, sizeof(*tm->e));
	if (!tm->e)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		if (!keep_ctx(NULL, ctx))
			continue;
		struct dmb_region *reg;
		RB_FOREACH(reg, dmb_region_tree, &ctx->regions) {
			struct stat st;
			if (fstat(reg->fd, &st) < 0)
				return dmb_fail(e, DMB_E_INTERNAL, errno, "region %" PRIu64 ": fstat: %m",
						reg->id);
			uint64_t token = reg->id;
			for (size_t i = 0; i < tm->n; i++)
				if (tm->e[i].dev == st.st_dev && tm->e[i].ino == st.st_ino)
					token = tm->e[i].token;
			if (token == reg->id) {
				struct dmb_err pe = { 0 };
				int r = h->pv->ops->preserve_fd(h->pv, sfd, reg->fd, token, &pe);
				if (r < 0)
					return dmb_fail(e, r == -EBUSY ? DMB_E_UNAVAILABLE : DMB_E_FAILED_PRECONDITION,
							-r, "context %" PRIu64 " region %" PRIu64 " could not be "
							"preserved: %s; nothing was changed", ctx->id, reg->id,
							pe.msg[0] ? pe.msg : strerror(-r));
			}
			tm->e[tm->n].region = reg->id;
			tm->e[tm->n].token = token;
			tm->e[tm->n].dev = st.st_dev;
			tm->e[tm->n].ino = st.st_ino;
			tm->n++;
		}
	}
	return 0;
}

static int prepare(struct handoff *h, bool force, struct handoff_status *out, struct dmb_err *e)
{
	if (h->state != JRNL_HANDOFF_NORMAL)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EALREADY,
				"a host handoff is already under way (state %s); %s",
				handoff_state_name(h->state), busy_hint(h->state));
	if (!h->pv)
		return no_preserver(h, e);
	if (h->persist->broken)
		return dmb_fail(e, DMB_E_UNAVAILABLE, EIO,
				"the state journal is not taking records; restart the broker, then "
				"prepare again");
	/* A long map or unmap on a worker (and requests waiting behind it)
	 * would change the model after the snapshot: refuse rather than wait
	 * on the loop; mutations already in flight finish within seconds. */
	uint32_t busy = h->host->busy_contexts(h->host->opaque);
	if (busy) {
		e->retry_after_ms = 1000;
		return dmb_fail(e, DMB_E_UNAVAILABLE, EBUSY,
				"%u context(s) have a long map or unmap running; nothing was changed, "
				"retry in a moment",
				busy);
	}
	struct dmb_err pe = { 0 };
	int r = h->pv->ops->probe(h->pv, &pe);
	if (r < 0)
		return dmb_fail(e, r == -EBUSY ? DMB_E_UNAVAILABLE : DMB_E_FAILED_PRECONDITION, -r,
				"%s; nothing was changed", pe.msg[0] ? pe.msg : strerror(-r));

	struct handoff_status *sum = calloc(1, sizeof(*sum));
	if (!sum)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	survey(h, sum);
	if (sum->n_left_out_total && !force) {
		char list[200] = "";
		size_t used = 0;
		for (size_t i = 0; i < sum->n_left_out && used < sizeof(list); i++)
			used += (size_t)snprintf(list + used, sizeof(list) - used, "%scontext %" PRIu64 " '%s': %s",
						 i ? "; " : "", sum->left_out[i].context_id,
						 sum->left_out[i].name, sum->left_out[i].reason);
		r = dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPERM,
			     "%zu context(s) cannot be preserved (%s); nothing was changed; prepare with "
			     "force to leave them out (they keep working until the kexec but do not "
			     "come back)", sum->n_left_out_total, list);
		free(sum);
		return r;
	}

	const char *name = h->host->cfg->handoff_session;
	int sfd = -1;
	dmb_err_clear(&pe);
	r = h->pv->ops->create_session(h->pv, name, &sfd, &pe);
	if (r < 0) {
		free(sum);
		return dmb_fail(e, r == -EBUSY ? DMB_E_UNAVAILABLE : DMB_E_FAILED_PRECONDITION, -r,
				"%s; nothing was changed", pe.msg[0] ? pe.msg : strerror(-r));
	}
	/* The session fd goes to the fd store first: from here on a restart
	 * finds it (and rolls back or goes on, by the journal's state). */
	bool stored = false;
	if (h->persist->enabled) {
		r = persist_store_fd(HANDOFF_FD_OUTGOING, sfd);
		if (r < 0) {
			close(sfd);
			free(sum);
			return dmb_fail(e, DMB_E_UNAVAILABLE, -r,
					"the preserver session could not be kept in the fd store (%s); "
					"nothing was changed; retry", strerror(-r));
		}
		stored = true;
	}

	struct token_map tm = { 0 };
	struct jrnl *snap = NULL;
	r = preserve_regions(h, sfd, &tm, e);
	if (r == 0) {
		struct persist_snapshot_filter f = { .opaque = &tm, .keep = keep_ctx,
						     .region_name = region_name };
		r = persist_snapshot(h->persist, &f, JRNL_HANDOFF_PREPARED, &snap, e);
	}
	if (r == 0) {
		dmb_err_clear(&pe);
		r = h->pv->ops->preserve_fd(h->pv, sfd, jrnl_fd(snap), TOKEN_JOURNAL, &pe);
		if (r < 0)
			dmb_fail(e, DMB_E_FAILED_PRECONDITION, -r,
				 "the state snapshot could not be preserved: %s; nothing was changed",
				 pe.msg[0] ? pe.msg : strerror(-r));
	}
	jrnl_close(snap);
	free(tm.e);
	/* Tests: a crash after everything is preserved and the session is in
	 * the fd store, before the state is journaled. */
	const char *crash = getenv("DMABROKERD_TEST_HANDOFF_CRASH");
	if (r == 0 && crash && !strcmp(crash, "prepare")) {
		log_notice("host handoff: DMABROKERD_TEST_HANDOFF_CRASH=prepare: crashing before the "
			   "state is journaled");
		raise(SIGKILL);
	}
	char sentence[240];
	snprintf(sentence, sizeof(sentence),
		 "prepared for a kernel update: %u context(s), %" PRIu64 " mapping(s), %" PRIu64
		 " bytes preserved%s; changes are refused until the kexec or an abort", sum->contexts,
		 sum->mappings, sum->bytes, sum->n_left_out_total ? " (some left out: forced)" : "");
	if (r == 0)
		r = set_state(h, JRNL_HANDOFF_PREPARED, sentence, e);
	if (r < 0) {
		/* Closing the session aborts it: nothing stays preserved. */
		if (stored)
			persist_unstore(HANDOFF_FD_OUTGOING);
		close(sfd);
		free(sum);
		return r;
	}
	h->session_fd = sfd;
	snprintf(sum->session_name, sizeof(sum->session_name), "%s", name);
	h->sum = *sum;
	for (size_t i = 0; i < sum->n_left_out; i++)
		log_warning("host handoff: context %" PRIu64 " '%s' left out (forced): %s",
			    sum->left_out[i].context_id, sum->left_out[i].name, sum->left_out[i].reason);
	if (out)
		(void)handoff_status(h, out);
	free(sum);
	return 0;
}

/* The one place a refused prepare is logged, whoever asked (socket, D-Bus). */
int handoff_prepare(struct handoff *h, bool force, struct handoff_status *out, struct dmb_err *e)
{
	int r = prepare(h, force, out, e);
	if (r < 0)
		log_notice("host handoff: prepare refused: %s", e->msg);
	return r;
}

int handoff_abort(struct handoff *h, struct dmb_err *e)
{
	if (h->state != JRNL_HANDOFF_PREPARED)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EINVAL,
				"no host handoff is prepared (state %s); nothing to abort",
				handoff_state_name(h->state));
	/* Out of the store first: a crash from here on finds no session and
	 * rolls back to normal. Then closing the session unpreserves. */
	if (h->persist->enabled)
		persist_unstore(HANDOFF_FD_OUTGOING);
	h->session_fd = safe_close(h->session_fd);
	/* Tests: a crash between the two (journal prepared, no session). */
	const char *crash = getenv("DMABROKERD_TEST_HANDOFF_CRASH");
	if (crash && !strcmp(crash, "abort")) {
		log_notice("host handoff: DMABROKERD_TEST_HANDOFF_CRASH=abort: crashing before the "
			   "abort is journaled");
		raise(SIGKILL);
	}
	struct dmb_err je = { 0 };
	if (persist_set_handoff(h->persist, JRNL_HANDOFF_NORMAL, &je) < 0)
		log_warning("host handoff: the abort could not be journaled (%s); the next start "
			    "rolls back to normal anyway (no session in the fd store)", je.msg);
	memset(&h->sum, 0, sizeof(h->sum));
	announce(h, JRNL_HANDOFF_NORMAL, "the host handoff was aborted: nothing is preserved, "
		 "changes are accepted again");
	return 0;
}

bool handoff_refuses(const struct handoff *h, const char *what, struct dmb_err *e)
{
	if (h->state != JRNL_HANDOFF_PREPARED)
		return false;
	dmb_fail(e, DMB_E_UNAVAILABLE, EAGAIN,
		 "%s is refused: the host is prepared for a kernel update (host handoff); reads "
		 "work, changes are accepted again after the update or an abort; retry later", what);
	if (e)
		e->retry_after_ms = 5000;
	return true;
}

/* ------------------------------------------------------------ status */

static struct handoff_restored *restored_find(struct handoff *h, uint64_t id)
{
	for (size_t i = 0; i < h->n_restored; i++)
		if (h->restored[i].id == id)
			return &h->restored[i];
	return NULL;
}

int handoff_status(struct handoff *h, struct handoff_status *out)
{
	uint64_t now = dmb_now_ms();
	memset(out, 0, sizeof(*out));
	out->state = handoff_state_name(h->state);
	out->preserver = h->pv ? h->pv->ops->name : "none";
	snprintf(out->session_name, sizeof(out->session_name), "%s", h->host->cfg->handoff_session);
	out->since_ms = now - h->since_ms;
	switch (h->state) {
	case JRNL_HANDOFF_NORMAL: {
		if (!h->pv) {
			/* What a prepare would carry, so an operator can check it
			 * before installing a kernel with a preserver. */
			survey(h, out);
			snprintf(out->message, sizeof(out->message),
				 "%.230s (with one: %u context(s) preservable, %zu left out)", h->pv_error,
				 out->contexts, out->n_left_out_total);
			break;
		}
		struct dmb_err pe = { 0 };
		int r = h->pv->ops->probe(h->pv, &pe);
		out->available = r == 0;
		survey(h, out);
		if (r < 0)
			snprintf(out->message, sizeof(out->message), "%s",
				 pe.msg[0] ? pe.msg : strerror(-r));
		else if (out->n_left_out_total)
			snprintf(out->message, sizeof(out->message),
				 "ready; %zu context(s) cannot be preserved: prepare refuses, or leaves "
				 "them out with force", out->n_left_out_total);
		else
			snprintf(out->message, sizeof(out->message),
				 "ready; prepare preserves %u context(s)", out->contexts);
		break;
	}
	case JRNL_HANDOFF_PREPARED: {
		struct handoff_status keep = h->sum;
		keep.state = out->state;
		keep.preserver = out->preserver;
		keep.since_ms = out->since_ms;
		snprintf(keep.session_name, sizeof(keep.session_name), "%s", out->session_name);
		snprintf(keep.message, sizeof(keep.message),
			 "prepared; load the new kernel (kexec -s -l) and run kexec -e, or abort; "
			 "changes are refused meanwhile");
		*out = keep;
		break;
	}
	case JRNL_HANDOFF_RESTORING:
		snprintf(out->message, sizeof(out->message), "restoring from the previous kernel");
		break;
	case JRNL_HANDOFF_RECLAIMING: {
		for (size_t i = 0; i < h->n_restored; i++) {
			struct dmb_ctx *ctx = ctx_lookup_any(h->host->core, h->restored[i].id);
			if (!ctx)
				continue;
			out->contexts++;
			out->regions += ctx->n_regions;
			out->devices += ctx->n_devices;
			out->mappings += ctx->n_mappings;
			out->degraded += ctx->degraded[0] != 0;
			out->unclaimed += !h->restored[i].claimed;
		}
		out->grace_remaining_ms = h->deadline_ms > now ? h->deadline_ms - now : 0;
		snprintf(out->message, sizeof(out->message),
			 "waiting for %u context(s) to be reclaimed; unclaimed ones are released in "
			 "%" PRIu64 " s", out->unclaimed, out->grace_remaining_ms / 1000);
		break;
	}
	}
	return 0;
}

/* ------------------------------------------------------------ reclaiming */

static void finish(struct handoff *h)
{
	if (h->pv && h->session_fd >= 0) {
		struct dmb_err pe = { 0 };
		int r = h->pv->ops->finish(h->pv, h->session_fd, &pe);
		if (r == -EBUSY) {
			log_ratelimited(LOG_NOTICE, "host handoff: the preserver cannot finish the session "
					"yet (%s); retrying", pe.msg);
			return;
		}
		if (r < 0)
			log_error("host handoff: finishing the preserver session failed (%s); what it "
				  "still holds stays reserved until the next kernel update",
				  pe.msg[0] ? pe.msg : strerror(-r));
	}
	struct dmb_err je = { 0 };
	if (persist_set_handoff(h->persist, JRNL_HANDOFF_NORMAL, &je) < 0)
		log_warning("host handoff: the end could not be journaled: %s", je.msg);
	if (h->persist->enabled)
		persist_unstore(HANDOFF_FD_INCOMING);
	h->session_fd = safe_close(h->session_fd);
	free(h->restored);
	h->restored = NULL;
	h->n_restored = 0;
	announce(h, JRNL_HANDOFF_NORMAL, "every restored context was reclaimed or released; the "
		 "preserver session is finished and the host update is complete");
}

static void reclaim_check(struct handoff *h)
{
	if (h->state != JRNL_HANDOFF_RECLAIMING)
		return;
	uint64_t now = dmb_now_ms();
	unsigned unclaimed = 0;
	for (size_t i = 0; i < h->n_restored; i++) {
		struct handoff_restored *r = &h->restored[i];
		if (r->claimed)
			continue;
		struct dmb_ctx *ctx = ctx_lookup_any(h->host->core, r->id);
		if (!ctx) {
			r->claimed = true; /* gone: nothing to wait for */
			continue;
		}
		if (now >= h->deadline_ms && ctx->n_stranded) {
			/* Its memfds are the only copy of that guest memory: never
			 * freed by a timer, nor by finishing the session. */
			if (!r->kept)
				log_error("host handoff: context %" PRIu64 " '%s' holds %zu memfd(s) of "
					  "guest memory that could not be re-adopted; it is kept, and the "
					  "preserver session stays open, until its owner reclaims it (the "
					  "memfds come back with the reclaim) or an admin revokes it",
					  ctx->id, ctx->name, ctx->n_stranded);
			r->kept = true;
			unclaimed++;
			continue;
		}
		if (now >= h->deadline_ms) {
			log_notice("host handoff: context %" PRIu64 " '%s' released: not reclaimed within "
				   "%u s after the host update", ctx->id, ctx->name,
				   h->host->cfg->handoff_grace_s);
			ctx_destroy(ctx);
			r->claimed = true;
			continue;
		}
		unclaimed++;
	}
	if (unclaimed == 0)
		finish(h);
}

void handoff_reclaimed(struct handoff *h, uint64_t ctx_id)
{
	struct handoff_restored *r = restored_find(h, ctx_id);
	if (!r || h->state != JRNL_HANDOFF_RECLAIMING)
		return;
	r->claimed = true;
	reclaim_check(h);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	reclaim_check(arg);
}

static void start_reclaiming(struct handoff *h)
{
	struct dmb_core *core = h->host->core;
	free(h->restored);
	h->restored = calloc(core->n_contexts + 1, sizeof(*h->restored));
	h->n_restored = 0;
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &core->contexts) {
		/* Reclaimed since the restore (even if its VMM left again): an
		 * ordinary persistent context, under [persist] grace_period_s. */
		if (ctx->owner || ctx->last_session || !h->restored)
			continue;
		h->restored[h->n_restored++] = (struct handoff_restored){ .id = ctx->id };
		ctx->detached_ms = 0; /* ours to release, not the restart grace period's */
	}
	h->deadline_ms = dmb_now_ms() + (uint64_t)h->host->cfg->handoff_grace_s * 1000;
	if (!h->ev_tick)
		h->ev_tick = event_new(h->host->base, -1, EV_PERSIST, tick_cb, h);
	struct timeval tv = { 0, TICK_MS * 1000 };
	if (h->ev_tick)
		event_add(h->ev_tick, &tv);
}

/* ------------------------------------------------------------ restore */

/* persist_fetch: the memfd the snapshot names "luo.<token>". */
static int fetch_region(void *opaque, const char *name)
{
	struct handoff *h = opaque;
	uint64_t token;
	char end;
	if (sscanf(name, "luo.%" SCNu64 "%c", &token, &end) != 1) {
		log_error("host handoff: a region names no preserved file ('%s')", name);
		return -1;
	}
	int fd = -1;
	struct dmb_err pe = { 0 };
	int r = h->pv->ops->retrieve_fd(h->pv, h->session_fd, token, &fd, &pe);
	if (r < 0) {
		log_error("host handoff: the memfd of token %" PRIu64 " could not be retrieved: %s",
			  token, pe.msg[0] ? pe.msg : strerror(-r));
		return -1;
	}
	return fd;
}

/* Everything of the incoming session h->session_fd: the snapshot, every
 * memfd it names; contexts rebuilt; then stored and journaled at once.
 * Returns <0 only when nothing could be restored at all. */
static int restore_incoming(struct handoff *h, struct dmb_err *e)
{
	uint64_t t0 = dmb_now_ms();
	struct dmb_err pe = { 0 };
	int jfd = -1;
	int r = h->pv->ops->retrieve_fd(h->pv, h->session_fd, TOKEN_JOURNAL, &jfd, &pe);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r, "the preserved state journal could not be "
				"retrieved: %s", pe.msg[0] ? pe.msg : strerror(-r));
	/* One pass: each region's memfd is retrieved as its context is
	 * rebuilt (retrieving a token again gives the same file, so a restart
	 * of an interrupted restore does the same). */
	struct persist_fetch fetch = { .opaque = h, .fd = fetch_region };
	r = persist_restore_fresh(h->persist, &fetch, jfd, e);
	if (r < 0)
		return r;

	/* Tests: a crash in the middle of a restore (objects rebuilt, half of
	 * them stored, nothing journaled). */
	const char *crash = getenv("DMABROKERD_TEST_HANDOFF_CRASH");
	struct dmb_err se = { 0 };
	if (crash && !strcmp(crash, "restoring")) {
		(void)persist_store_everything(h->persist, &se);
		log_notice("host handoff: DMABROKERD_TEST_HANDOFF_CRASH=restoring: crashing mid-restore");
		raise(SIGKILL);
	}
	if (persist_store_everything(h->persist, &se) < 0)
		log_error("host handoff: %s; a broker restart before the contexts are reclaimed would "
			  "lose them", se.msg);
	h->persist->handoff = JRNL_HANDOFF_RECLAIMING;
	dmb_err_clear(&se);
	if (persist_resnapshot(h->persist, &se) < 0) {
		log_error("host handoff: the restored state could not be journaled (%s)", se.msg);
		struct dmb_err je = { 0 };
		(void)persist_set_handoff(h->persist, JRNL_HANDOFF_RECLAIMING, &je);
	}
	unsigned degraded = 0;
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &h->host->core->contexts)
		if (ctx->degraded[0]) {
			degraded++;
			log_warning("host handoff: context %" PRIu64 " '%s' is degraded: %s", ctx->id,
				    ctx->name, ctx->degraded);
		}
	log_notice("host handoff: restored %u context(s), %" PRIu64 " mapping(s), %u device(s) from "
		   "the previous kernel in %" PRIu64 " ms (%u degraded)", h->host->core->n_contexts,
		   h->host->core->n_mappings, h->host->core->n_devices, dmb_now_ms() - t0, degraded);
	start_reclaiming(h);
	char sentence[200];
	snprintf(sentence, sizeof(sentence),
		 "restored %u context(s) after a host kernel update; reclaim them with their tokens "
		 "within %u s", h->host->core->n_contexts, h->host->cfg->handoff_grace_s);
	announce(h, JRNL_HANDOFF_RECLAIMING, sentence);
	return 0;
}

/* Nothing could be restored: back to normal. The session is closed
 * unfinished (the kernel then tries to finish it itself); what it holds is
 * the operator's to recover (docs/operations.md). */
static void restore_failed(struct handoff *h, struct dmb_err *e)
{
	log_error("host handoff: the restore failed: %s", e->msg);
	dmb_err_clear(e);
	struct dmb_err je = { 0 };
	(void)persist_set_handoff(h->persist, JRNL_HANDOFF_NORMAL, &je);
	if (h->persist->enabled)
		persist_unstore(HANDOFF_FD_INCOMING);
	h->session_fd = safe_close(h->session_fd);
	h->state = JRNL_HANDOFF_NORMAL;
	h->host->handoff_changed(h->host->opaque, NULL);
}

static void destroy_all(struct handoff *h)
{
	struct dmb_core *core = h->host->core;
	struct dmb_ctx *c;
	while ((c = RB_MIN(dmb_ctx_tree, &core->contexts)))
		ctx_destroy(c);
}

/* ------------------------------------------------------------ start-up */

void handoff_take_stored(struct handoff *h, struct stored_fds *st)
{
	memset(h, 0, sizeof(*h));
	h->session_fd = h->stored_out = h->stored_in = -1;
	size_t k = 0;
	for (size_t i = 0; i < st->n; i++) {
		const char *nm = st->name[i];
		int *slot = NULL;
		if (nm && !strcmp(nm, HANDOFF_FD_OUTGOING))
			slot = &h->stored_out;
		else if (nm && !strcmp(nm, HANDOFF_FD_INCOMING))
			slot = &h->stored_in;
		if (slot) {
			if (*slot >= 0) /* one is enough; systemd keeps duplicates apart */
				close(*slot);
			*slot = st->fd[i];
			free(st->name[i]);
			continue;
		}
		st->fd[k] = st->fd[i];
		st->name[k] = st->name[i];
		k++;
	}
	st->n = k;
}

static void open_preserver(struct handoff *h)
{
	const char *spec = h->host->cfg->handoff_preserver;
	struct dmb_err pe = { 0 };
	int r = preserver_open(spec, &h->pv, &pe);
	if (r < 0) {
		h->pv = NULL;
		snprintf(h->pv_error, sizeof(h->pv_error), "the preserver '%.60s' could not be opened: %.170s",
			 spec, pe.msg[0] ? pe.msg : strerror(-r));
		log_warning("host handoff: %s", h->pv_error);
	} else if (!h->pv && !strcmp(spec, "auto")) {
		char why[400];
		preserver_luo_absent(why, sizeof(why));
		snprintf(h->pv_error, sizeof(h->pv_error), "/dev/liveupdate is missing: %.400s", why);
	} else if (!h->pv) {
		snprintf(h->pv_error, sizeof(h->pv_error),
			 "no preserver is configured ([handoff] preserver = none), so the host "
			 "handoff is off");
	}
	snprintf(h->pv_name, sizeof(h->pv_name), "%s", h->pv ? h->pv->ops->name : "none");
}

int handoff_init(struct handoff *h, const struct state_host *host, struct persist *persist,
		 struct dmb_err *e)
{
	h->host = host;
	h->persist = persist;
	h->since_ms = dmb_now_ms();
	h->state = h->persist->handoff;
	open_preserver(h);
	struct dmb_err je = { 0 };

	switch (h->state) {
	case JRNL_HANDOFF_PREPARED:
		if (h->stored_out >= 0) {
			h->session_fd = h->stored_out;
			h->stored_out = -1;
			survey(h, &h->sum);
			snprintf(h->sum.session_name, sizeof(h->sum.session_name), "%s",
				 h->host->cfg->handoff_session);
			h->persist->hold_releases = true;
			log_notice("host handoff: still prepared after a broker restart (the preserver "
				   "session came back from the fd store); changes stay refused");
		} else {
			log_warning("host handoff: the journal says prepared but the preserver session is "
				    "gone (closing it aborted it): rolled back to normal; prepare again");
			(void)persist_set_handoff(h->persist, JRNL_HANDOFF_NORMAL, &je);
			/* Clients that came back with the fd store were told
			 * "prepared": they hear the end of it. */
			announce(h, JRNL_HANDOFF_NORMAL, "the host handoff was rolled back after a broker "
				 "restart (its preserver session was gone): nothing is preserved, changes "
				 "are accepted again");
		}
		break;
	case JRNL_HANDOFF_RESTORING:
		if (h->stored_in >= 0 && h->pv) {
			log_notice("host handoff: a restore was interrupted; starting it again from the "
				   "preserver session kept in the fd store");
			destroy_all(h);
			h->session_fd = h->stored_in;
			h->stored_in = -1;
			if (restore_incoming(h, e) < 0)
				restore_failed(h, e);
		} else {
			log_error("host handoff: a restore was interrupted and the preserver session is "
				  "%s: nothing can be restored", h->pv ? "gone" : "unreachable (no preserver)");
			(void)persist_set_handoff(h->persist, JRNL_HANDOFF_NORMAL, &je);
			h->state = JRNL_HANDOFF_NORMAL;
		}
		break;
	case JRNL_HANDOFF_RECLAIMING:
		if (h->stored_in >= 0) {
			h->session_fd = h->stored_in;
			h->stored_in = -1;
			start_reclaiming(h);
			log_notice("host handoff: still reclaiming after a broker restart: %zu context(s) "
				   "unclaimed; the grace period starts again (%u s)", h->n_restored,
				   h->host->cfg->handoff_grace_s);
		} else {
			log_warning("host handoff: reclaiming, but the preserver session is gone: back to "
				    "normal (unclaimed contexts are released by the restart grace period)");
			(void)persist_set_handoff(h->persist, JRNL_HANDOFF_NORMAL, &je);
			h->state = JRNL_HANDOFF_NORMAL;
		}
		break;
	default:
		h->state = JRNL_HANDOFF_NORMAL;
		break;
	}

	/* Leftovers: a prepare that died before it was journaled (closing the
	 * session aborts it), a finish that died before the fd left the store. */
	if (h->stored_out >= 0) {
		log_notice("host handoff: an interrupted prepare was rolled back (its session is closed)");
		persist_unstore(HANDOFF_FD_OUTGOING);
		h->stored_out = safe_close(h->stored_out);
	}
	if (h->stored_in >= 0) {
		persist_unstore(HANDOFF_FD_INCOMING);
		h->stored_in = safe_close(h->stored_in);
	}

	/* A new kernel with a session of ours waiting: restore from it. */
	if (h->state == JRNL_HANDOFF_NORMAL && h->pv) {
		int sfd = -1;
		struct dmb_err pe = { 0 };
		int r = h->pv->ops->retrieve_session(h->pv, h->host->cfg->handoff_session, &sfd, &pe);
		if (r == 0) {
			/* Into the store at once: a session is retrieved only once. */
			if (h->persist->enabled && persist_store_fd(HANDOFF_FD_INCOMING, sfd) < 0)
				log_warning("host handoff: the retrieved session could not be kept in the fd "
					    "store; a crash during the restore would lose it");
			h->session_fd = sfd;
			if (set_state(h, JRNL_HANDOFF_RESTORING, "restoring from the previous kernel", &je) < 0)
				log_warning("host handoff: the restore could not be journaled (%s)", je.msg);
			if (restore_incoming(h, e) < 0)
				restore_failed(h, e);
		} else if (r != -ENOENT) {
			log_warning("host handoff: looking for a session from the previous kernel failed: "
				    "%s", pe.msg[0] ? pe.msg : strerror(-r));
		}
	}
	if (h->state != JRNL_HANDOFF_NORMAL)
		h->persist->hold_releases = h->state == JRNL_HANDOFF_PREPARED;
	return 0;
}

void handoff_fini(struct handoff *h)
{
	if (h->ev_tick)
		event_free(h->ev_tick);
	h->ev_tick = NULL;
	free(h->restored);
	h->restored = NULL;
	h->n_restored = 0;
	/* The session fd is not closed on purpose when prepared: closing it
	 * aborts the session, and a clean stop with the fd store keeps it
	 * there; without the fd store, a stop ends the handoff. */
	h->session_fd = safe_close(h->session_fd);
	h->stored_out = safe_close(h->stored_out);
	h->stored_in = safe_close(h->stored_in);
	preserver_close(h->pv);
	h->pv = NULL;
}
