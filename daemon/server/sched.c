/* The scheduling of long calls (server.h explains what waits meanwhile):
 * a map or unmap of at least worker_min_bytes runs its backend call on a
 * worker (worker.c); its context is gated, and every request naming that
 * context is parked on the gate and replayed through rpc_handle() once the
 * call is finished. The request table (rpc.c) calls sched_map() and
 * sched_unmap() for its map and unmap rows, and asks sched_blocking_ctx()
 * and sched_park() before running any row. */
#include "server/rpc.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"
#include "util/macro.h"

/* ------------------------------------------------------------ gates
 * Contexts with a backend call on a worker, or requests still waiting to be
 * replayed after one. */


struct ctx_gate *server_gate_find(struct server *srv, uint64_t ctx_id)
{
	struct ctx_gate *g;
	LIST_FOREACH(g, &srv->gates, link)
		if (g->ctx_id == ctx_id)
			return g;
	return NULL;
}

struct ctx_gate *server_gate_get(struct server *srv, uint64_t ctx_id)
{
	struct ctx_gate *g = server_gate_find(srv, ctx_id);
	if (g)
		return g;
	g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->ctx_id = ctx_id;
	STAILQ_INIT(&g->waiters);
	LIST_INSERT_HEAD(&srv->gates, g, link);
	srv->n_gates++;
	return g;
}

bool server_gate_blocks(struct server *srv, uint64_t ctx_id)
{
	if (!srv->n_gates)
		return false;
	struct ctx_gate *g = server_gate_find(srv, ctx_id);
	/* Behind a call in flight, or behind requests parked earlier (unless
	 * this is the one being replayed from that gate). */
	return g && (g->job || (!STAILQ_EMPTY(&g->waiters) && g != srv->replaying));
}

void server_schedule_replay(struct server *srv)
{
	if (srv->ev_replay)
		event_active(srv->ev_replay, EV_TIMEOUT, 0);
}

/* Replays the waiters of every open gate in arrival order, until the gate
 * closes again (a replayed request started a new call) or is empty; frees
 * idle gates. Only this function frees gates, so the walk is safe. */
static void replay_parked(struct server *srv)
{
	struct ctx_gate *g = LIST_FIRST(&srv->gates), *next;
	for (; g; g = next) {
		struct parked *p;
		while (!g->job && (p = STAILQ_FIRST(&g->waiters))) {
			STAILQ_REMOVE_HEAD(&g->waiters, link);
			struct session *s = p->s;
			s->parked = NULL;
			struct wire_rx *rx = calloc(1, sizeof(*rx));
			if (!rx) {
				/* Cannot replay it: the client sees no reply; end the
				 * session rather than answer out of order. */
				rpc_parked_free(p);
				s->closing = true;
				event_active(s->ev_write, EV_WRITE, 0);
				continue;
			}
			rx->len = p->len;
			rx->nfds = p->nfds;
			memcpy(rx->fds, p->fds, p->nfds * sizeof(int));
			p->nfds = 0; /* rx owns them now */

			srv->replaying = g;
			rpc_handle(s, p->data, rx);
			srv->replaying = NULL;
			free(rx);
			rpc_parked_free(p);
			session_update_reading(s); /* level-triggered: what waits is read */
		}
		next = LIST_NEXT(g, link);
		if (!g->job && STAILQ_EMPTY(&g->waiters)) {
			LIST_REMOVE(g, link);
			srv->n_gates--;
			free(g);
		}
	}
}

static void replay_cb(evutil_socket_t fd, short what, void *arg)
{
	replay_parked(arg);
}

/* dmb_core.ctx_quiesce: a P2P revocation (or restoration, or release)
 * reaches a context whose call is on a worker: wait for it and finish it
 * now. Its parked requests are replayed later, from the loop. */
static void ctx_quiesce_cb(void *opaque, struct dmb_ctx *ctx)
{
	struct server *srv = opaque;
	if (!srv->n_gates)
		return;
	struct ctx_gate *g = server_gate_find(srv, ctx->id);
	if (g && g->job)
		rpc_job_wait(srv, g->job);
}

void server_quiesce(struct server *srv)
{
	for (;;) {
		worker_drain(&srv->pool);
		if (!srv->n_gates)
			break;
		replay_parked(srv);
		if (!srv->n_gates && !srv->pool.n_jobs)
			break;
	}
	/* Sessions whose client went away while their call ran. */
	struct session *s, *next;
	for (s = TAILQ_FIRST(&srv->sessions); s; s = next) {
		next = TAILQ_NEXT(s, link);
		if (s->closing && !s->inflight)
			session_free(s);
	}
}

/* Installs the scheduling on a new server: the worker pool, the replay
 * event, the core's quiesce hook. */
int sched_init(struct server *srv)
{
	srv->core.ctx_quiesce = ctx_quiesce_cb;
	srv->core.quiesce_opaque = srv;
	LIST_INIT(&srv->gates);
	unsigned nw = srv->cfg->workers == DMB_WORKERS_AUTO ? worker_default_threads() : srv->cfg->workers;
	if (worker_pool_init(&srv->pool, srv->base, nw) < 0)
		return log_error_errno(-ENOMEM, "cannot set up the worker pool");
	srv->ev_replay = event_new(srv->base, -1, 0, replay_cb, srv);
	if (!srv->ev_replay)
		return -ENOMEM;
	return 0;
}

/* After server_quiesce() and the sessions are gone: what gates are left. */
void sched_fini(struct server *srv)
{
	struct ctx_gate *g;
	while ((g = LIST_FIRST(&srv->gates))) {
		LIST_REMOVE(g, link);
		free(g);
	}
	srv->n_gates = 0;
	if (srv->ev_replay)
		event_free(srv->ev_replay);
	srv->ev_replay = NULL;
}

/* ------------------------------------------------------------ worker calls
 *
 * A map or unmap of at least worker_min_bytes runs its backend call on a
 * worker (server.h explains what waits meanwhile). The request's entries
 * move into the job (the arena is reset when rpc_handle returns); the reply
 * is built and sent by job_done on the loop thread. */

struct rpc_job {
	struct worker_job w;
	struct server *srv;
	struct session *s;
	struct ctx_gate *gate;
	uint64_t req_id;
	bool is_map;
	struct map_op mop;
	struct unmap_op uop;
	void *owned;                 /* the entries, when on the heap */
	union {
		struct dmb_map_req req;
		struct dmb_range range;
	} one;
};

static void job_run(struct worker_job *w)
{
	struct rpc_job *j = dmb_container_of(w, struct rpc_job, w);
	if (j->is_map)
		map_kernel(&j->mop);
	else
		unmap_kernel(&j->uop);
}

static void job_done(struct worker_job *w)
{
	struct rpc_job *j = dmb_container_of(w, struct rpc_job, w);
	struct session *s = j->s;
	struct server *srv = j->srv;
	struct dmb_err e = { 0 };
	struct rpc_call c = { .s = s };
	Dmb__Error err;
	dmb__reply__init(&c.reply);
	c.reply.id = j->req_id;
	int r;
	if (j->is_map) {
		uint32_t n = (uint32_t)j->mop.n;
		struct dmb_ctx *ctx = j->mop.ctx;
		const struct dmb_map_req *reqs = j->mop.reqs;
		r = map_finish(&j->mop, &e);
		if (r >= 0)
			rpc_reply_mapped(&c, ctx, &reqs->iova, sizeof(*reqs), n);
	} else {
		uint64_t bytes, count;
		r = unmap_finish(&j->uop, &bytes, &count, &e);
		if (r >= 0)
			rpc_reply_unmapped(&c, bytes, count);
	}
	if (r < 0) {
		rpc_reply_error(&c, &e, &err);
		if ((size_t)err.code < DMB_ARRAY_SIZE(srv->n_errors_code))
			srv->n_errors_code[err.code]++;
	}
	session_send_reply(s, &c.reply, NULL, 0); /* nothing if the session is closing */
	for (size_t i = 0; i < c.n_heap; i++)
		free(c.heap[i]);
	j->gate->job = NULL;
	s->inflight = NULL;
	free(j->owned);
	free(j);
	server_schedule_replay(srv);
	if (s->closing)
		event_active(s->ev_write, EV_WRITE, 0); /* frees it: its contexts go now */
	else
		session_update_reading(s);
}

void rpc_job_wait(struct server *srv, struct rpc_job *job)
{
	worker_wait(&srv->pool, &job->w);
}

static bool offload_wanted(struct server *srv, uint64_t bytes)
{
	return srv->pool.n_threads && !srv->pool.start_failed &&
	       bytes >= srv->cfg->worker_min_bytes;
}

/* Hands a prepared job to a worker; -EAGAIN: the caller runs it inline. */
static int job_start(struct rpc_call *c, struct rpc_job *j, struct dmb_ctx *ctx)
{
	struct server *srv = c->s->srv;
	struct ctx_gate *g = server_gate_get(srv, ctx->id);
	if (!g)
		return -EAGAIN;
	j->w.run = job_run;
	j->w.done = job_done;
	j->srv = srv;
	j->s = c->s;
	j->gate = g;
	j->req_id = c->req->id;
	g->job = j;
	if (worker_submit(&srv->pool, &j->w) < 0) {
		g->job = NULL;
		server_schedule_replay(srv); /* frees the gate if idle */
		return -EAGAIN;
	}
	c->s->inflight = j;
	session_update_reading(c->s);
	c->deferred = true;
	return 0;
}

/* Maps reqs[0..n) (takes reqs when n > 1: a heap array). */
int sched_map(struct rpc_call *c, struct dmb_ctx *ctx, struct dmb_map_req *reqs, size_t n,
	      struct dmb_err *e)
{
	uint64_t bytes = 0;
	for (size_t i = 0; i < n; i++)
		bytes = reqs[i].length > UINT64_MAX - bytes ? UINT64_MAX : bytes + reqs[i].length;
	struct rpc_job *j = offload_wanted(c->s->srv, bytes) ? calloc(1, sizeof(*j)) : NULL;
	if (!j) {
		int r = map_batch(ctx, reqs, n, e);
		if (r >= 0)
			rpc_reply_mapped(c, ctx, &reqs->iova, sizeof(*reqs), (uint32_t)n);
		if (n > 1)
			free(reqs);
		return r;
	}
	j->is_map = true;
	const struct dmb_map_req *q = reqs;
	if (n == 1) {
		j->one.req = reqs[0];
		q = &j->one.req;
	} else {
		j->owned = reqs;
	}
	int r = map_prepare(&j->mop, ctx, q, n, e);
	if (r < 0)
		goto out;
	if (job_start(c, j, ctx) == 0)
		return 0;
	map_kernel(&j->mop);
	r = map_finish(&j->mop, e);
	if (r >= 0)
		rpc_reply_mapped(c, ctx, &q->iova, sizeof(*q), (uint32_t)n);
out:
	free(j->owned);
	free(j);
	return r;
}

/* Unmaps ranges[0..n) (takes ranges when n > 1), or everything (all). The
 * backend calls of a context with P2P mappings stay on the loop: a
 * revocation may reach those mappings at any time. */
int sched_unmap(struct rpc_call *c, struct dmb_ctx *ctx, struct dmb_range *ranges, size_t n,
		bool all, struct dmb_err *e)
{
	uint64_t bytes = 0;
	if (all)
		bytes = ctx->mapped_bytes;
	for (size_t i = 0; i < n; i++)
		bytes = ranges[i].length > UINT64_MAX - bytes ? UINT64_MAX : bytes + ranges[i].length;
	struct rpc_job *j = !ctx->p2p_mappings && offload_wanted(c->s->srv, bytes)
				    ? calloc(1, sizeof(*j)) : NULL;
	uint64_t got, count;
	int r;
	if (!j) {
		r = all ? unmap_all(ctx, &got, &count, e) : unmap_ranges(ctx, ranges, n, &got, &count, e);
		if (n > 1)
			free(ranges);
		return r < 0 ? r : rpc_reply_unmapped(c, got, count);
	}
	if (all) {
		r = unmap_all_prepare(&j->uop, ctx);
	} else {
		const struct dmb_range *q = ranges;
		if (n == 1) {
			j->one.range = ranges[0];
			q = &j->one.range;
		} else {
			j->owned = ranges;
		}
		r = unmap_prepare(&j->uop, ctx, q, n, e);
	}
	if (r < 0)
		goto out;
	if (job_start(c, j, ctx) == 0)
		return 0;
	unmap_kernel(&j->uop);
	r = unmap_finish(&j->uop, &got, &count, e);
	if (r >= 0)
		rpc_reply_unmapped(c, got, count);
out:
	free(j->owned);
	free(j);
	return r;
}

/* ------------------------------------------------------------ parking */

static uint64_t gated_device(struct rpc_call *c, uint64_t dev_id)
{
	struct dmb_device *d = device_lookup(c->s->owner, dev_id);
	return d && server_gate_blocks(c->s->srv, d->ctx->id) ? d->ctx->id : 0;
}

static uint64_t gated_ctx(struct rpc_call *c, uint64_t id)
{
	return server_gate_blocks(c->s->srv, id) ? id : 0;
}

/* The gated context this request must wait for, or 0: every context the
 * request names, directly or through a device. */
uint64_t sched_blocking_ctx(struct rpc_call *c)
{
	const Dmb__Request *q = c->req;
	switch (q->body_case) {
	case DMB__REQUEST__BODY_CONTEXT_DESTROY:
		return gated_ctx(c, q->context_destroy->context_id);
	case DMB__REQUEST__BODY_CONTEXT_RECLAIM:
		return gated_ctx(c, q->context_reclaim->context_id);
	case DMB__REQUEST__BODY_REGION_REGISTER:
		return gated_ctx(c, q->region_register->context_id);
	case DMB__REQUEST__BODY_REGION_UNREGISTER:
		return gated_ctx(c, q->region_unregister->context_id);
	case DMB__REQUEST__BODY_IOVA_RANGES:
		return gated_ctx(c, q->iova_ranges->context_id);
	case DMB__REQUEST__BODY_MAP:
		return gated_ctx(c, q->map->context_id);
	case DMB__REQUEST__BODY_MAP_BATCH:
		return gated_ctx(c, q->map_batch->context_id);
	case DMB__REQUEST__BODY_UNMAP:
		return gated_ctx(c, q->unmap->context_id);
	case DMB__REQUEST__BODY_UNMAP_BATCH:
		return gated_ctx(c, q->unmap_batch->context_id);
	case DMB__REQUEST__BODY_UNMAP_ALL:
		return gated_ctx(c, q->unmap_all->context_id);
	case DMB__REQUEST__BODY_DISCARD:
		return gated_ctx(c, q->discard->context_id);
	case DMB__REQUEST__BODY_POPULATE:
		return gated_ctx(c, q->populate->context_id);
	case DMB__REQUEST__BODY_DEVICE_OPEN:
		return gated_ctx(c, q->device_open->context_id);
	case DMB__REQUEST__BODY_SIM_DMA:
		return gated_ctx(c, q->sim_dma->context_id);
	case DMB__REQUEST__BODY_LIST_MAPPINGS:
		return gated_ctx(c, q->list_mappings->context_id);
	case DMB__REQUEST__BODY_STATS: {
		if (q->stats->context_id)
			return gated_ctx(c, q->stats->context_id);
		struct dmb_ctx *ctx;
		TAILQ_FOREACH(ctx, &c->s->owner->contexts, owner_link)
			if (gated_ctx(c, ctx->id))
				return ctx->id;
		return 0;
	}
	case DMB__REQUEST__BODY_DEVICE_CLOSE:
		return gated_device(c, q->device_close->device_id);
	case DMB__REQUEST__BODY_DEVICE_SET_COMMAND:
		return gated_device(c, q->device_set_command->device_id);
	case DMB__REQUEST__BODY_DEVICE_RESET:
		return gated_device(c, q->device_reset->device_id);
	case DMB__REQUEST__BODY_SIM_DEVICE_DMA:
		return gated_device(c, q->sim_device_dma->device_id);
	case DMB__REQUEST__BODY_MAP_PEER: {
		const Dmb__MapPeer *m = q->map_peer;
		uint64_t id = gated_ctx(c, m->context_id);
		if (id)
			return id;
		if (m->peer_device_id)
			return gated_device(c, m->peer_device_id);
		struct dmb_device *d = m->peer_bdf && m->peer_bdf[0]
					       ? device_find_bdf(&c->s->srv->core, m->peer_bdf) : NULL;
		return d ? gated_ctx(c, d->ctx->id) : 0;
	}
	default:
		return 0;
	}
}

/* Keeps the packet on the context's gate; the session reads nothing more
 * until it has been replayed. Of its fds it keeps only the one the request
 * names (RegionRegister's fd_index; the others would be closed unused when
 * it runs): a parked request holds at most one fd, as its session holds
 * one, so packets of 253 fds parked in many sessions cannot fill the
 * broker's fd table. (Refusing one here would answer it out of order.)
 * -ENOMEM: not parked (run it now). */
int sched_park(struct rpc_call *c, const uint8_t *buf, uint64_t ctx_id)
{
	struct session *s = c->s;
	struct wire_rx *rx = c->rx;
	int64_t keep = -1;
	if (c->req->body_case == DMB__REQUEST__BODY_REGION_REGISTER && c->req->region_register)
		keep = c->req->region_register->fd_index;
	for (size_t i = 0; i < rx->nfds; i++)
		if ((int64_t)i != keep && rx->fds[i] >= 0) {
			close(rx->fds[i]);
			rx->fds[i] = -1;
		}
	struct ctx_gate *g = server_gate_find(s->srv, ctx_id);
	struct parked *p = g ? malloc(sizeof(*p) + c->rx->len) : NULL;
	if (!p)
		return -ENOMEM;
	p->s = s;
	p->gate = g;
	p->len = c->rx->len;
	memcpy(p->data, buf, c->rx->len);
	p->nfds = c->rx->nfds;
	for (size_t i = 0; i < p->nfds; i++) {
		p->fds[i] = c->rx->fds[i];
		c->rx->fds[i] = -1;
	}
	c->rx->nfds = 0;
	STAILQ_INSERT_TAIL(&g->waiters, p, link);
	s->parked = p;
	session_update_reading(s);
	return 0;
}

void rpc_parked_free(struct parked *p)
{
	if (!p)
		return;

	for (size_t i = 0; i < p->nfds; i++)
		if (p->fds[i] >= 0)
			close(p->fds[i]);
	free(p);
}
