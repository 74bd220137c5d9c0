#include "core.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"

static int ctx_cmp(const struct dmb_ctx *a, const struct dmb_ctx *b)
{
	return a->id < b->id ? -1 : a->id > b->id;
}
RB_GENERATE(dmb_ctx_tree, dmb_ctx, node, ctx_cmp)

void core_init(struct dmb_core *core, struct dmb_backend *be, const struct dmb_limits *limits)
{
	memset(core, 0, sizeof(*core));
	core->be = be;
	core->limits = *limits;
	core->next_id = 1;
	RB_INIT(&core->contexts);
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
}

uint64_t core_new_id(struct dmb_core *core)
{
	uint64_t id = core->next_id++;
	if (core->jh)
		core->jh->id_used(core->jh->opaque, id);
	return id;
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
