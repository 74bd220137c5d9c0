#include "core/core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "util/log.h"

static int ctx_cmp(const struct dmb_ctx *a, const struct dmb_ctx *b)
{
	return a->id < b->id ? -1 : a->id > b->id;
}
RB_GENERATE(dmb_ctx_tree, dmb_ctx, node, ctx_cmp)

/* Ids: sessions, contexts, regions and devices draw from one space of
 * random numbers in [1, 2^28), unique among the live objects: four bytes
 * of varint, so a 10,000-entry MapBatch still fits a packet, and room for
 * far more live objects than the fd budget allows. A counter would tell a client, from the gaps between its
 * own ids, how busy the others are. Journaled ids stay what they were
 * (core_claim_id); next_id only keeps rising for the journal's watermark,
 * which an older daemon reading this journal still relies on. */
static int id_cmp(const struct dmb_id *a, const struct dmb_id *b)
{
	return a->id < b->id ? -1 : a->id > b->id;
}
RB_GENERATE(dmb_id_tree, dmb_id, node, id_cmp)


const char *core_backend_name(const struct dmb_core *core)
{
	return core->be->ops->name;
}

const char *const *core_backend_features(const struct dmb_core *core)
{
	static const char *const none[] = { NULL };
	return core->be->features ? core->be->features : none;
}

uint64_t core_pinned_bytes(const struct dmb_core *core)
{
	return core->be->ops->pinned_bytes(core->be);
}

void core_init(struct dmb_core *core, struct dmb_backend *be, const struct dmb_limits *limits)
{
	memset(core, 0, sizeof(*core));
	core->be = be;
	core->limits = *limits;
	core->next_id = 1;
	RB_INIT(&core->contexts);
	RB_INIT(&core->ids);
	LIST_INIT(&core->accts);
	/* Not budgeted until the server says what RLIMIT_NOFILE and the fd
	 * store allow (in-process users: tests, benchmarks). */
	core->fds.limit = core->fds.store_limit = UINT64_MAX;
}

void core_fini(struct dmb_core *core)
{
	struct dmb_ctx *c;
	while ((c = RB_MIN(dmb_ctx_tree, &core->contexts)))
		ctx_destroy(c);
	struct dmb_id *n;
	while ((n = RB_MIN(dmb_id_tree, &core->ids))) {
		RB_REMOVE(dmb_id_tree, &core->ids, n);
		free(n);
	}
}

#define ID_MASK ((UINT64_C(1) << 28) - 1)

bool core_claim_id(struct dmb_core *core, uint64_t id)
{
	struct dmb_id *n = malloc(sizeof(*n));
	if (!n)
		return false;
	n->id = id;
	if (RB_INSERT(dmb_id_tree, &core->ids, n)) {
		free(n);
		return false;
	}
	if (core->next_id <= id)
		core->next_id = id + 1;
	return true;
}

void core_release_id(struct dmb_core *core, uint64_t id)
{
	struct dmb_id key = { .id = id };
	struct dmb_id *n = RB_FIND(dmb_id_tree, &core->ids, &key);
	if (n) {
		RB_REMOVE(dmb_id_tree, &core->ids, n);
		free(n);
	}
}

uint64_t core_new_id(struct dmb_core *core)
{
	for (int tries = 0; tries < 64; tries++) {
		uint64_t x;
		if (getrandom(&x, sizeof(x), 0) != (ssize_t)sizeof(x))
			return 0;
		x &= ID_MASK;
		if (x && core_claim_id(core, x))
			return x;
	}
	return 0;
}

void core_emit(struct dmb_core *core, struct dmb_owner *owner, const struct dmb_event *ev)
{
	/* owner NULL: a detached persistent context; the server still wants
	 * to know (D-Bus signals), the sessions do not. */
	if (core->event_fn)
		core->event_fn(core->event_opaque, owner, ev);
}

struct dmb_owner *owner_new(struct dmb_core *core, uint64_t session_id, uid_t uid, gid_t gid,
			    pid_t pid, const struct dmb_client_policy *pol, void *opaque)
{
	struct dmb_owner *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->acct = acct_get(core, uid);
	if (!o->acct) {
		free(o);
		return NULL;
	}
	o->core = core;
	o->session_id = session_id;
	o->uid = uid;
	o->gid = gid;
	o->pid = pid;
	if (pol) {
		o->pol = *pol;
	} else {
		/* No policy given (in-process users: tests, benchmarks): the
		 * core's limits, no devices, no admin. */
		o->pol = (struct dmb_client_policy){
			.limits = core->limits, .p2p = true, .p2p_cross_context = true,
		};
	}
	o->admin = o->pol.admin;
	o->opaque = opaque;
	TAILQ_INIT(&o->contexts);
	return o;
}

void owner_free(struct dmb_owner *o)
{
	if (!o)
		return;
	struct dmb_ctx *c, *tmp;
	TAILQ_FOREACH_SAFE(c, &o->contexts, owner_link, tmp) {
		if (c->persistent) {
			/* Outlives the session; reclaimed later with its token,
			 * released after the grace period otherwise. */
			TAILQ_REMOVE(&o->contexts, c, owner_link);
			c->owner = NULL;
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			c->detached_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 + 1;
			log_info("context %llu of session %llu (uid %u pid %d) kept: persistent, "
				 "waiting for a reclaim", (unsigned long long)c->id,
				 (unsigned long long)o->session_id, (unsigned)o->uid, (int)o->pid);
			continue;
		}
		log_info("context %llu of session %llu (uid %u pid %d) destroyed: session ended",
			 (unsigned long long)c->id, (unsigned long long)o->session_id,
			 (unsigned)o->uid, (int)o->pid);
		ctx_destroy(c);
	}
	if (o->core->jh)
		o->core->jh->session_end(o->core->jh->opaque, o->session_id);
	acct_put(o->acct);
	free(o);
}
