/* libdmabroker: see dmabroker.h. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "dmabroker-internal.h"
#include "fastcodec.h"
#include "protocol.h"
#include "text.h"
#include "wire.h"

#define EVQ_MAX 4096

struct evq_item {
	struct evq_item *next;
	Dmb__Event *ev;
};

struct dmb_client {
	int fd;
	uint64_t next_id;
	struct dmb_error err;
	struct dmb_server_info info;
	uint8_t *buf;                 /* DMB_MAX_PACKET */
	struct evq_item *evq_head, *evq_tail;
	size_t evq_len;
	uint64_t events_dropped;
	int timeout_ms;               /* per call; 0: wait forever (dmb_set_timeout) */
	bool restart_lost;            /* a RESTARTED event: nothing of ours was queued */
	uint64_t probe_id;            /* the probe sent to tell lost from late */
	/* A Map/Unmap reply read by the fast codec lives here, not on the heap,
	 * until reply_free(); while it is in use, replies go to protobuf-c. */
	struct fc_reply fast;
	bool fast_busy;
};

const char *dmb_error_code_name(int code)
{
	return dmb_common_code_name(code, "ok");
}

static int errno_of_code(int code)
{
	switch (code) {
	case DMB_OK: return 0;
	case DMB_INVALID_ARGUMENT: return -EINVAL;
	case DMB_PERMISSION_DENIED: return -EPERM;
	case DMB_NOT_FOUND: return -ENOENT;
	case DMB_ALREADY_EXISTS: return -EEXIST;
	case DMB_RESOURCE_EXHAUSTED: return -ENOSPC;
	case DMB_FAILED_PRECONDITION: return -EBUSY;
	case DMB_UNAVAILABLE: return -EAGAIN;
	case DMB_UNIMPLEMENTED: return -EOPNOTSUPP;
	case DMB_OUT_OF_RANGE: return -ERANGE;
	default: return -EIO;
	}
}

static int transport_error(struct dmb_client *c, int r, const char *what)
{
	c->err.code = 0;
	c->err.sys_errno = -r;
	c->err.index = 0;
	if (r == -ECONNRESET || r == -EPIPE)
		/* The broker's end closed: it stopped, or a restart without an fd
		 * store ended every session. */
		snprintf(c->err.message, sizeof(c->err.message),
			 "%s: the broker closed the connection (dmabrokerd stopped or restarted)",
			 what);
	else
		snprintf(c->err.message, sizeof(c->err.message), "%s: %s", what, strerror(-r));
	return r;
}

/* The broker answered, but with a body of another kind than the request's
 * (or none): a broken or foreign server. Reported like a transport error. */
static int bad_body(struct dmb_client *c, const Dmb__Reply *rep, const char *what)
{
	c->err = (struct dmb_error){ .code = 0, .sys_errno = EBADMSG };
	snprintf(c->err.message, sizeof(c->err.message),
		 "the broker answered %s with a reply of the wrong kind (body %d)", what,
		 (int)rep->body_case);
	return -EBADMSG;
}

static int timed_out(struct dmb_client *c, const char *what)
{
	c->err = (struct dmb_error){ .code = 0, .sys_errno = ETIMEDOUT };
	snprintf(c->err.message, sizeof(c->err.message), "%s: no answer from the broker within %d ms",
		 what, c->timeout_ms);
	return -ETIMEDOUT;
}

const struct dmb_error *dmb_last_error(const struct dmb_client *c)
{
	return &c->err;
}

const struct dmb_server_info *dmb_server_info(const struct dmb_client *c)
{
	return &c->info;
}

int dmb_fd(const struct dmb_client *c)
{
	return c->fd;
}

int dmb_socket(const struct dmb_client *c)
{
	return c->fd;
}

int dmb_set_timeout(struct dmb_client *c, int ms)
{
	if (ms < 0)
		return -EINVAL;
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return transport_error(c, -errno, "setting the socket timeouts");
	c->timeout_ms = ms;
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int dmb_connect_raw(const char *path, struct dmb_client **out)
{
	if (!path)
		path = getenv("DMABROKER_SOCKET");
	if (!path)
		path = DMB_DEFAULT_SOCKET_PATH;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);

	struct dmb_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->buf = malloc(DMB_MAX_PACKET);
	c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	c->next_id = 1;
	if (!c->buf || c->fd < 0) {
		int r = c->buf ? -errno : -ENOMEM;
		dmb_close(c);
		return r;
	}
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		dmb_close(c);
		return r;
	}
	wire_size_buffers(c->fd);
	*out = c;
	return 0;
}

void dmb_close(struct dmb_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	while (c->evq_head) {
		struct evq_item *it = c->evq_head;
		c->evq_head = it->next;
		dmb__event__free_unpacked(it->ev, NULL);
		free(it);
	}
	free(c->buf);
	free(c);
}

static void evq_push(struct dmb_client *c, Dmb__Event *ev)
{
	struct evq_item *it = NULL;
	if (c->evq_len < EVQ_MAX)
		it = malloc(sizeof(*it));
	if (!it) {
		c->events_dropped++;
		dmb__event__free_unpacked(ev, NULL);
		return;
	}
	it->ev = ev;
	it->next = NULL;
	if (c->evq_tail)
		c->evq_tail->next = it;
	else
		c->evq_head = it;
	c->evq_tail = it;
	c->evq_len++;
}

/* Releases a reply from recv_one(): the fast codec's, or protobuf-c's. */
static void reply_free(struct dmb_client *c, Dmb__Reply *rep)
{
	if (rep == &c->fast.reply)
		c->fast_busy = false;
	else
		dmb__reply__free_unpacked(rep, NULL);
}

/* Receives one ServerMessage; events are queued, a reply is returned (free
 * it with reply_free). fast: a Map or Unmap reply may be read by the fast
 * codec into c->fast (callers that hand the reply out of the library, which
 * promises a protobuf-c one, say false). */
static int recv_one(struct dmb_client *c, bool nonblock, bool fast, Dmb__Reply **reply,
		    int *rfds, size_t *nrfds)
{
	struct wire_rx rx;
	*reply = NULL;
	int r = wire_recv(c->fd, c->buf, DMB_MAX_PACKET, &rx, nonblock);
	if (r < 0)
		return r;
	if (rx.eof)
		return -ECONNRESET;
	if (fast && !c->fast_busy && !rx.nfds && fc_reply_unpack(c->buf, rx.len, &c->fast)) {
		c->fast_busy = true;
		*reply = &c->fast.reply;
		if (nrfds)
			*nrfds = 0;
		return 0;
	}
	Dmb__ServerMessage *m = dmb__server_message__unpack(NULL, rx.len, c->buf);
	if (!m) {
		wire_close_fds(&rx);
		return -EBADMSG;
	}
	if (m->kind_case == DMB__SERVER_MESSAGE__KIND_EVENT) {
		if ((m->event->kind & 32u) && !m->event->requests_pending)
			c->restart_lost = true;
		evq_push(c, m->event);
		m->event = NULL;
		m->kind_case = DMB__SERVER_MESSAGE__KIND__NOT_SET;
		wire_close_fds(&rx);
	} else if (m->kind_case == DMB__SERVER_MESSAGE__KIND_REPLY) {
		*reply = m->reply;
		m->reply = NULL;
		m->kind_case = DMB__SERVER_MESSAGE__KIND__NOT_SET;
		size_t cap = nrfds ? *nrfds : 0, k = 0;
		for (size_t i = 0; i < rx.nfds; i++) {
			if (k < cap)
				rfds[k++] = wire_take_fd(&rx, (int64_t)i);
		}
		if (nrfds)
			*nrfds = k;
		wire_close_fds(&rx);
	} else {
		wire_close_fds(&rx);
	}
	dmb__server_message__free_unpacked(m, NULL);
	return 0;
}

/* With a timeout, the whole wait (events that arrive meanwhile included) is
 * bounded by one deadline; SO_RCVTIMEO is the backstop for each receive. */
static int lost_in_restart(struct dmb_client *c)
{
	c->err = (struct dmb_error){ .code = DMB_UNAVAILABLE, .sys_errno = EAGAIN };
	snprintf(c->err.message, sizeof(c->err.message),
		 "the broker restarted while handling this request; it may or may not have been "
		 "applied: retry it");
	return -EAGAIN;
}

static int wait_reply(struct dmb_client *c, uint64_t id, bool any, bool fast, Dmb__Reply **reply,
		      int *rfds, size_t *nrfds)
{
	size_t cap = nrfds ? *nrfds : 0;
	int64_t deadline = c->timeout_ms ? now_ms() + c->timeout_ms : 0;
	for (;;) {
		size_t n = cap;
		Dmb__Reply *rep;
		if (deadline) {
			int64_t left = deadline - now_ms();
			struct pollfd p = { .fd = c->fd, .events = POLLIN };
			int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
			if (pr < 0 && errno == EINTR)
				continue;
			if (pr < 0)
				return transport_error(c, -errno, "waiting for the reply");
			if (pr == 0)
				return timed_out(c, "waiting for the reply");
		}
		int r = recv_one(c, false, fast, &rep, rfds, nrfds ? &n : NULL);
		if ((r == -EAGAIN || r == -EWOULDBLOCK) && c->timeout_ms)
			return timed_out(c, "waiting for the reply");
		if (r < 0)
			return transport_error(c, r, "receiving the reply");
		if (!rep && c->restart_lost && !any && !c->probe_id) {
			/* The broker restarted and found nothing of ours queued: our
			 * request was either lost with the old process, or sent after
			 * the new one started (and will be answered). Tell which with
			 * a probe: requests are answered in order, so if the probe's
			 * reply comes first, ours is not coming. */
			c->restart_lost = false;
			Dmb__Request pr = DMB__REQUEST__INIT;
			Dmb__Stats ps = DMB__STATS__INIT;
			pr.body_case = DMB__REQUEST__BODY_STATS;
			pr.stats = &ps;
			pr.id = c->next_id++;
			uint8_t pbuf[64];
			size_t plen = dmb__request__pack(&pr, pbuf);
			if (wire_send(c->fd, pbuf, plen, NULL, 0, false) == 0)
				c->probe_id = pr.id;
			else
				return lost_in_restart(c);
			continue;
		}
		if (!rep)
			continue;
		if (c->probe_id && rep->id == c->probe_id) {
			c->probe_id = 0;
			reply_free(c, rep);
			return lost_in_restart(c);
		}
		/* id 0 answers a packet the broker could not read at all. */
		if (any || rep->id == id || rep->id == 0) {
			c->probe_id = 0; /* its reply, if any, comes later and is dropped */
			if (nrfds)
				*nrfds = n;
			*reply = rep;
			return 0;
		}
		for (size_t i = 0; i < n; i++)
			close(rfds[i]);
		reply_free(c, rep);
	}
}

/* dmb_call; fast: the reply may be the fast codec's (free it with
 * reply_free). Map and Unmap requests are encoded by the fast codec. */
static int call(struct dmb_client *c, Dmb__Request *req, const int *fds, size_t nfds, bool fast,
		Dmb__Reply **reply, int *rfds, size_t *nrfds)
{
	c->restart_lost = false; /* only a restart during this call counts */
	c->probe_id = 0;
	req->id = c->next_id++;
	size_t len = fc_request_pack(req, c->buf, DMB_MAX_PACKET);
	if (!len) {
		len = dmb__request__get_packed_size(req);
		if (len > DMB_MAX_PACKET) {
			c->err = (struct dmb_error){ .code = DMB_INVALID_ARGUMENT,
						     .sys_errno = EMSGSIZE };
			snprintf(c->err.message, sizeof(c->err.message),
				 "request of %zu bytes exceeds the packet limit of %u; use smaller "
				 "batches", len, DMB_MAX_PACKET);
			return -EMSGSIZE;
		}
		dmb__request__pack(req, c->buf);
	}
	int r = wire_send(c->fd, c->buf, len, fds, nfds, false);
	if ((r == -EAGAIN || r == -EWOULDBLOCK) && c->timeout_ms)
		return timed_out(c, "sending the request");
	if (r < 0)
		return transport_error(c, r, "sending the request");
	return wait_reply(c, req->id, false, fast, reply, rfds, nrfds);
}

int dmb_call(struct dmb_client *c, Dmb__Request *req, const int *fds, size_t nfds,
	     Dmb__Reply **reply, int *rfds, size_t *nrfds)
{
	return call(c, req, fds, nfds, false, reply, rfds, nrfds);
}

int dmb_call_bytes(struct dmb_client *c, const void *buf, size_t len, const int *fds, size_t nfds,
		   Dmb__Reply **reply)
{
	int r = wire_send(c->fd, buf, len, fds, nfds, false);
	if ((r == -EAGAIN || r == -EWOULDBLOCK) && c->timeout_ms)
		return timed_out(c, "sending the request");
	if (r < 0)
		return transport_error(c, r, "sending the request");
	return wait_reply(c, 0, true, false, reply, NULL, NULL);
}

int dmb_reply_status(struct dmb_client *c, const Dmb__Reply *reply)
{
	if (!reply->error) {
		memset(&c->err, 0, sizeof(c->err));
		return 0;
	}
	c->err.code = reply->error->code;
	c->err.sys_errno = reply->error->sys_errno;
	c->err.index = reply->error->index;
	c->err.retry_after_ms = reply->error->retry_after_ms;
	snprintf(c->err.message, sizeof(c->err.message), "%s",
		 reply->error->message ? reply->error->message : "");
	return errno_of_code(reply->error->code);
}

/* One call with no fds in or out: returns the status, and the reply in
 * *keep when the caller wants to read its body (free it). */
static int simple_call(struct dmb_client *c, Dmb__Request *req, Dmb__Reply **keep)
{
	Dmb__Reply *rep;
	int r = call(c, req, NULL, 0, true, &rep, NULL, NULL);
	if (r < 0)
		return r;
	r = dmb_reply_status(c, rep);
	if (r == 0 && keep)
		*keep = rep;
	else
		reply_free(c, rep);
	return r;
}

static void copy_features(char *dst, size_t cap, char **f, size_t n)
{
	dst[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i)
			strncat(dst, " ", cap - strlen(dst) - 1);
		strncat(dst, f[i], cap - strlen(dst) - 1);
	}
}

int dmb_hello(struct dmb_client *c, uint32_t version, const char *name)
{
	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__Hello h = DMB__HELLO__INIT;
	h.protocol_version = version;
	h.client_name = (char *)(name ? name : "");
	req.body_case = DMB__REQUEST__BODY_HELLO;
	req.hello = &h;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_HELLO) {
		r = bad_body(c, rep, "Hello");
	} else {
		Dmb__HelloReply *hr = rep->hello;
		struct dmb_server_info *i = &c->info;
		i->protocol_version = hr->protocol_version;
		snprintf(i->server_version, sizeof(i->server_version), "%s", hr->server_version);
		snprintf(i->backend, sizeof(i->backend), "%s", hr->backend);
		copy_features(i->features, sizeof(i->features), hr->features, hr->n_features);
		i->max_packet_bytes = hr->max_packet_bytes;
		i->max_fds = hr->max_fds_per_packet;
		i->max_batch = hr->max_batch;
		i->session_id = hr->session_id;
		i->admin = hr->admin;
	}
	reply_free(c, rep);
	return r;
}

int dmb_connect_error(const char *path, const char *client_name, struct dmb_client **out,
		      struct dmb_error *err)
{
	struct dmb_client *c;
	struct dmb_error scratch;
	if (!err)
		err = &scratch;
	memset(err, 0, sizeof(*err));
	*out = NULL;
	int r = dmb_connect_raw(path, &c);
	if (r < 0) {
		const char *p = path ? path : getenv("DMABROKER_SOCKET");
		err->sys_errno = -r;
		snprintf(err->message, sizeof(err->message), "cannot connect to %s: %s",
			 p ? p : DMB_DEFAULT_SOCKET_PATH, strerror(-r));
		return r;
	}
	r = dmb_hello(c, DMB_PROTOCOL_VERSION, client_name);
	if (r < 0) {
		*err = c->err;
		dmb_close(c);
		return r;
	}
	*out = c;
	return 0;
}

int dmb_connect(const char *path, const char *client_name, struct dmb_client **out)
{
	return dmb_connect_error(path, client_name, out, NULL);
}

int dmb_dispatch(struct dmb_client *c, dmb_event_cb cb, void *opaque)
{
	/* Pull whatever is waiting without blocking. */
	for (;;) {
		Dmb__Reply *rep;
		int r = recv_one(c, true, true, &rep, NULL, NULL);
		if (r == -EAGAIN)
			break;
		if (r < 0)
			return transport_error(c, r, "receiving events");
		if (rep)
			reply_free(c, rep); /* nobody waits for it */
	}
	int n = 0;
	while (c->evq_head) {
		struct evq_item *it = c->evq_head;
		c->evq_head = it->next;
		if (!c->evq_head)
			c->evq_tail = NULL;
		c->evq_len--;
		Dmb__Event *e = it->ev;
		free(it);
		struct dmb_range one, *rg = &one;
		size_t nr = e->n_ranges;
		if (nr > 1 && !(rg = malloc(nr * sizeof(*rg)))) {
			rg = &one;
			nr = 0; /* out of memory: the event comes without its ranges */
		}
		for (size_t i = 0; i < nr; i++)
			rg[i] = (struct dmb_range){ e->ranges[i]->iova, e->ranges[i]->length };
		struct dmb_event ev = {
			.seq = e->seq, .kind = e->kind, .context = e->context_id,
			.device = e->device_id, .n_ranges = nr, .ranges = rg,
			.message = e->message, .permanent = e->permanent,
			.handoff_state = e->handoff_state,
		};
		if (cb)
			cb(&ev, opaque);
		if (rg != &one)
			free(rg);
		dmb__event__free_unpacked(e, NULL);
		n++;
	}
	return n;
}

#define REQ(var, CASE, field, Type, TYPE_INIT) \
	Dmb__Request req = DMB__REQUEST__INIT; \
	Type var = TYPE_INIT;                  \
	req.body_case = DMB__REQUEST__BODY_##CASE; \
	req.field = &var

int dmb_subscribe(struct dmb_client *c, uint32_t mask)
{
	REQ(q, SUBSCRIBE, subscribe, Dmb__Subscribe, DMB__SUBSCRIBE__INIT);
	q.mask = mask;
	return simple_call(c, &req, NULL);
}

int dmb_context_create(struct dmb_client *c, const char *name, uint64_t *context)
{
	REQ(q, CONTEXT_CREATE, context_create, Dmb__ContextCreate, DMB__CONTEXT_CREATE__INIT);
	q.name = (char *)(name ? name : "");
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case == DMB__REPLY__BODY_CONTEXT_CREATE)
		*context = rep->context_create->context_id;
	else
		r = bad_body(c, rep, "ContextCreate");
	reply_free(c, rep);
	return r;
}

int dmb_context_destroy(struct dmb_client *c, uint64_t context)
{
	REQ(q, CONTEXT_DESTROY, context_destroy, Dmb__ContextDestroy, DMB__CONTEXT_DESTROY__INIT);
	q.context_id = context;
	return simple_call(c, &req, NULL);
}

int dmb_region_register(struct dmb_client *c, uint64_t context, int fd, uint64_t size,
			struct dmb_region_info *out)
{
	REQ(q, REGION_REGISTER, region_register, Dmb__RegionRegister, DMB__REGION_REGISTER__INIT);
	q.context_id = context;
	q.fd_index = 0;
	q.size = size;
	Dmb__Reply *rep;
	int r = dmb_call(c, &req, &fd, 1, &rep, NULL, NULL);
	if (r < 0)
		return r;
	r = dmb_reply_status(c, rep);
	if (r == 0 && rep->body_case != DMB__REPLY__BODY_REGION_REGISTER)
		r = bad_body(c, rep, "RegionRegister");
	if (r == 0 && out) {
		Dmb__RegionRegisterReply *b = rep->region_register;
		out->region = b->region_id;
		out->size = b->size;
		out->writable = b->writable;
		snprintf(out->kind, sizeof(out->kind), "%s", b->kind);
		out->page_size = b->page_size;
	}
	reply_free(c, rep);
	return r;
}

int dmb_region_unregister(struct dmb_client *c, uint64_t context, uint64_t region)
{
	REQ(q, REGION_UNREGISTER, region_unregister, Dmb__RegionUnregister,
	    DMB__REGION_UNREGISTER__INIT);
	q.context_id = context;
	q.region_id = region;
	return simple_call(c, &req, NULL);
}

int dmb_iova_ranges(struct dmb_client *c, uint64_t context, struct dmb_iova_info *out)
{
	REQ(q, IOVA_RANGES, iova_ranges, Dmb__IovaRanges, DMB__IOVA_RANGES__INIT);
	q.context_id = context;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	memset(out, 0, sizeof(*out));
	if (rep->body_case != DMB__REPLY__BODY_IOVA_RANGES) {
		r = bad_body(c, rep, "IovaRanges");
	} else {
		Dmb__IovaRangesReply *b = rep->iova_ranges;
		size_t max = sizeof(out->ranges) / sizeof(out->ranges[0]);
		out->n = b->n_ranges < max ? b->n_ranges : max;
		for (size_t i = 0; i < out->n; i++)
			out->ranges[i] = (struct dmb_iova_range){ b->ranges[i]->start, b->ranges[i]->last };
		out->alignment = b->alignment;
		out->max_mappings = b->max_mappings;
		out->mappings_available = b->mappings_available;
	}
	reply_free(c, rep);
	return r;
}

static void entry_to_pb(Dmb__MapEntry *m, const struct dmb_map_entry *e)
{
	dmb__map_entry__init(m);
	m->region_id = e->region;
	m->offset = e->offset;
	m->iova = e->iova;
	m->length = e->length;
	m->prot = e->prot;
}

int dmb_map(struct dmb_client *c, uint64_t context, const struct dmb_map_entry *e)
{
	REQ(q, MAP, map, Dmb__Map, DMB__MAP__INIT);
	Dmb__MapEntry m;
	entry_to_pb(&m, e);
	q.context_id = context;
	q.entry = &m;
	return simple_call(c, &req, NULL);
}

int dmb_map_batch(struct dmb_client *c, uint64_t context, const struct dmb_map_entry *e, size_t n)
{
	REQ(q, MAP_BATCH, map_batch, Dmb__MapBatch, DMB__MAP_BATCH__INIT);
	Dmb__MapEntry *arr = malloc(n * sizeof(*arr) + 1);
	Dmb__MapEntry **ptrs = malloc(n * sizeof(*ptrs) + 1);
	if (!arr || !ptrs) {
		free(arr);
		free(ptrs);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		entry_to_pb(&arr[i], &e[i]);
		ptrs[i] = &arr[i];
	}
	q.context_id = context;
	q.n_entries = n;
	q.entries = ptrs;
	int r = simple_call(c, &req, NULL);
	free(arr);
	free(ptrs);
	return r;
}

int dmb_map_granular(struct dmb_client *c, uint64_t context, const struct dmb_map_entry *e,
		     uint64_t granule, uint64_t *page_size)
{
	REQ(q, MAP, map, Dmb__Map, DMB__MAP__INIT);
	Dmb__MapEntry m;
	entry_to_pb(&m, e);
	m.granule = granule;
	q.context_id = context;
	q.entry = &m;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_MAP)
		r = bad_body(c, rep, "Map");
	else if (page_size)
		*page_size = rep->map->n_page_sizes ? rep->map->page_sizes[0] : 0;
	reply_free(c, rep);
	return r;
}

/* The protobuf form of n ranges: n pointers followed by the n messages they
 * point to, one block for free(). NULL when out of memory. */
static Dmb__Range **pb_ranges(const struct dmb_range *r, size_t n)
{
	Dmb__Range **ptrs = malloc(n * (sizeof(*ptrs) + sizeof(Dmb__Range)) + 1);
	if (!ptrs)
		return NULL;
	Dmb__Range *arr = (Dmb__Range *)(void *)(ptrs + n);
	for (size_t i = 0; i < n; i++) {
		dmb__range__init(&arr[i]);
		arr[i].iova = r[i].iova;
		arr[i].length = r[i].length;
		ptrs[i] = &arr[i];
	}
	return ptrs;
}

static int convert_call(struct dmb_client *c, uint64_t context, const struct dmb_range *rg,
			size_t n, bool discard, struct dmb_convert_info *out)
{
	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__Convert q = DMB__CONVERT__INIT;
	if (discard) {
		req.body_case = DMB__REQUEST__BODY_DISCARD;
		req.discard = &q;
	} else {
		req.body_case = DMB__REQUEST__BODY_POPULATE;
		req.populate = &q;
	}
	Dmb__Range **ptrs = pb_ranges(rg, n);
	if (!ptrs)
		return -ENOMEM;
	q.context_id = context;
	q.n_ranges = n;
	q.ranges = ptrs;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	free(ptrs);
	if (r < 0)
		return r;
	const Dmb__ConvertReply *b = discard ? rep->discard : rep->populate;
	if (rep->body_case != (discard ? DMB__REPLY__BODY_DISCARD : DMB__REPLY__BODY_POPULATE) || !b)
		r = bad_body(c, rep, discard ? "Discard" : "Populate");
	else if (out)
		*out = (struct dmb_convert_info){ b->granules, b->bytes, b->unchanged, b->pinned_bytes };
	reply_free(c, rep);
	return r;
}

int dmb_discard(struct dmb_client *c, uint64_t context, const struct dmb_range *r, size_t n,
		struct dmb_convert_info *out)
{
	return convert_call(c, context, r, n, true, out);
}

int dmb_populate(struct dmb_client *c, uint64_t context, const struct dmb_range *r, size_t n,
		 struct dmb_convert_info *out)
{
	return convert_call(c, context, r, n, false, out);
}

static int unmapped_reply(struct dmb_client *c, Dmb__Request *req, uint64_t *bytes)
{
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_UNMAP)
		r = bad_body(c, rep, "Unmap");
	else if (bytes)
		*bytes = rep->unmap->unmapped_bytes;
	reply_free(c, rep);
	return r;
}

int dmb_unmap(struct dmb_client *c, uint64_t context, uint64_t iova, uint64_t length,
	      uint64_t *unmapped_bytes)
{
	REQ(q, UNMAP, unmap, Dmb__Unmap, DMB__UNMAP__INIT);
	Dmb__Range rg = DMB__RANGE__INIT;
	rg.iova = iova;
	rg.length = length;
	q.context_id = context;
	q.range = &rg;
	return unmapped_reply(c, &req, unmapped_bytes);
}

int dmb_unmap_batch(struct dmb_client *c, uint64_t context, const struct dmb_range *r, size_t n,
		    uint64_t *unmapped_bytes)
{
	REQ(q, UNMAP_BATCH, unmap_batch, Dmb__UnmapBatch, DMB__UNMAP_BATCH__INIT);
	Dmb__Range **ptrs = pb_ranges(r, n);
	if (!ptrs)
		return -ENOMEM;
	q.context_id = context;
	q.n_ranges = n;
	q.ranges = ptrs;
	int ret = unmapped_reply(c, &req, unmapped_bytes);
	free(ptrs);
	return ret;
}

int dmb_unmap_all(struct dmb_client *c, uint64_t context, uint64_t *unmapped_bytes)
{
	REQ(q, UNMAP_ALL, unmap_all, Dmb__UnmapAll, DMB__UNMAP_ALL__INIT);
	q.context_id = context;
	return unmapped_reply(c, &req, unmapped_bytes);
}

int dmb_device_open(struct dmb_client *c, uint64_t context, const char *bdf, int *fd_out,
		    struct dmb_device_info *out)
{
	REQ(q, DEVICE_OPEN, device_open, Dmb__DeviceOpen, DMB__DEVICE_OPEN__INIT);
	q.context_id = context;
	q.bdf = (char *)bdf;
	q.want_fd = fd_out != NULL;
	Dmb__Reply *rep;
	int fds[4];
	size_t nfds = 4;
	int r = dmb_call(c, &req, NULL, 0, &rep, fds, &nfds);
	if (r < 0)
		return r;
	r = dmb_reply_status(c, rep);
	int keep = -1;
	if (r == 0 && rep->body_case != DMB__REPLY__BODY_DEVICE_OPEN)
		r = bad_body(c, rep, "DeviceOpen");
	if (r == 0) {
		Dmb__DeviceOpenReply *b = rep->device_open;
		if (out) {
			memset(out, 0, sizeof(*out));
			out->device = b->device_id;
			out->vendor_id = (uint16_t)b->vendor_id;
			out->device_id = (uint16_t)b->device_id_pci;
			snprintf(out->group, sizeof(out->group), "%s", b->group);
			out->viable = b->viable;
		}
		if (fd_out && b->fd_index >= 0 && (size_t)b->fd_index < nfds) {
			keep = fds[b->fd_index];
			fds[b->fd_index] = -1;
		}
		if (fd_out)
			*fd_out = keep;
	}
	for (size_t i = 0; i < nfds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	reply_free(c, rep);
	return r;
}

int dmb_device_close(struct dmb_client *c, uint64_t device)
{
	REQ(q, DEVICE_CLOSE, device_close, Dmb__DeviceClose, DMB__DEVICE_CLOSE__INIT);
	q.device_id = device;
	return simple_call(c, &req, NULL);
}

int dmb_sim_dma_read(struct dmb_client *c, uint64_t context, uint64_t iova, void *buf, size_t len)
{
	REQ(q, SIM_DMA, sim_dma, Dmb__SimDma, DMB__SIM_DMA__INIT);
	q.context_id = context;
	q.iova = iova;
	q.length = (uint32_t)len;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_SIM_DMA || rep->sim_dma->data.len != len)
		r = bad_body(c, rep, "SimDma");
	else
		memcpy(buf, rep->sim_dma->data.data, len);
	reply_free(c, rep);
	return r;
}

int dmb_sim_dma_write(struct dmb_client *c, uint64_t context, uint64_t iova, const void *buf,
		      size_t len)
{
	REQ(q, SIM_DMA, sim_dma, Dmb__SimDma, DMB__SIM_DMA__INIT);
	q.context_id = context;
	q.iova = iova;
	q.length = (uint32_t)len;
	q.to_memory = true;
	q.data.data = (uint8_t *)buf;
	q.data.len = len;
	return simple_call(c, &req, NULL);
}

static void stats_from_pb(struct dmb_stats *o, const Dmb__StatsReply *s)
{
	memset(o, 0, sizeof(*o));
	if (!s)
		return;
	o->contexts = s->contexts;
	o->regions = s->regions;
	o->mappings = s->mappings;
	o->mapped_bytes = s->mapped_bytes;
	o->pinned_bytes = s->pinned_bytes;
	o->devices = s->devices;
	o->p2p_mappings = s->p2p_mappings;
	o->p2p_bytes = s->p2p_bytes;
	o->revocations = s->revocations;
	o->restorations = s->restorations;
	o->noiommu_contexts = s->noiommu_contexts;
}

int dmb_stats(struct dmb_client *c, uint64_t context, struct dmb_stats *out)
{
	REQ(q, STATS, stats, Dmb__Stats, DMB__STATS__INIT);
	q.context_id = context;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_STATS)
		r = bad_body(c, rep, "Stats");
	else
		stats_from_pb(out, rep->stats);
	reply_free(c, rep);
	return r;
}

int dmb_status(struct dmb_client *c, struct dmb_status *out)
{
	REQ(q, STATUS, status, Dmb__Status, DMB__STATUS__INIT);
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	memset(out, 0, sizeof(*out));
	if (rep->body_case != DMB__REPLY__BODY_STATUS) {
		r = bad_body(c, rep, "Status");
	} else {
		Dmb__StatusReply *s = rep->status;
		snprintf(out->server_version, sizeof(out->server_version), "%s", s->server_version);
		snprintf(out->backend, sizeof(out->backend), "%s", s->backend);
		copy_features(out->features, sizeof(out->features), s->features, s->n_features);
		out->uptime_ms = s->uptime_ms;
		out->sessions = s->sessions;
		out->pid = s->pid;
		stats_from_pb(&out->totals, s->totals);
	}
	reply_free(c, rep);
	return r;
}

int dmb_list_contexts(struct dmb_client *c, bool all, struct dmb_context_info **out, size_t *n)
{
	REQ(q, LIST_CONTEXTS, list_contexts, Dmb__ListContexts, DMB__LIST_CONTEXTS__INIT);
	q.all = all;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_LIST_CONTEXTS) {
		r = bad_body(c, rep, "ListContexts");
		reply_free(c, rep);
		return r;
	}
	size_t k = rep->list_contexts->n_contexts;
	struct dmb_context_info *arr = calloc(k + 1, sizeof(*arr));
	if (!arr) {
		reply_free(c, rep);
		return -ENOMEM;
	}
	for (size_t i = 0; i < k; i++) {
		const Dmb__ContextInfo *ci = rep->list_contexts->contexts[i];
		arr[i] = (struct dmb_context_info){
			.context = ci->context_id, .owner_uid = ci->owner_uid,
			.owner_pid = ci->owner_pid, .session = ci->session_id,
			.persistent = ci->persistent, .regions = ci->regions,
			.mappings = ci->mappings, .mapped_bytes = ci->mapped_bytes,
			.devices = ci->devices, .noiommu = ci->noiommu,
		};
		snprintf(arr[i].name, sizeof(arr[i].name), "%s", ci->name);
	}
	*out = arr;
	*n = k;
	reply_free(c, rep);
	return 0;
}

int dmb_list_mappings(struct dmb_client *c, uint64_t context, uint64_t start,
		      struct dmb_mapping_info *out, size_t cap, size_t *n, bool *more,
		      uint64_t *next)
{
	REQ(q, LIST_MAPPINGS, list_mappings, Dmb__ListMappings, DMB__LIST_MAPPINGS__INIT);
	q.context_id = context;
	q.start_iova = start;
	q.max_entries = cap > DMB_MAX_LIST ? DMB_MAX_LIST : (uint32_t)cap;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	*n = 0;
	*more = false;
	if (rep->body_case != DMB__REPLY__BODY_LIST_MAPPINGS) {
		r = bad_body(c, rep, "ListMappings");
	} else {
		Dmb__ListMappingsReply *b = rep->list_mappings;
		for (size_t i = 0; i < b->n_mappings && i < cap; i++) {
			const Dmb__MappingInfo *m = b->mappings[i];
			out[i] = (struct dmb_mapping_info){
				.iova = m->iova, .length = m->length, .region = m->region_id,
				.offset = m->offset, .prot = m->prot, .mmio = m->mmio,
				.peer_device = m->peer_device_id, .bar = m->bar, .revoked = m->revoked,
				.attr = (uint32_t)m->attr,
				.granule = m->granule, .page_size = m->page_size,
				.discarded = m->discarded,
			};
			(*n)++;
		}
		*more = b->more;
		if (next)
			*next = b->next_iova;
	}
	reply_free(c, rep);
	return r;
}

int dmb_map_peer(struct dmb_client *c, uint64_t context, uint64_t peer_device,
		 const char *peer_bdf, unsigned bar, uint64_t offset, uint64_t iova,
		 uint64_t length, uint32_t prot)
{
	return dmb_map_peer_attr(c, context, peer_device, peer_bdf, bar, offset, iova, length,
				 prot, NULL);
}

int dmb_map_peer_attr(struct dmb_client *c, uint64_t context, uint64_t peer_device,
		      const char *peer_bdf, unsigned bar, uint64_t offset, uint64_t iova,
		      uint64_t length, uint32_t prot, uint32_t *attr)
{
	REQ(q, MAP_PEER, map_peer, Dmb__MapPeer, DMB__MAP_PEER__INIT);
	q.context_id = context;
	q.peer_device_id = peer_device;
	q.peer_bdf = (char *)(peer_bdf ? peer_bdf : "");
	q.bar = bar;
	q.offset = offset;
	q.iova = iova;
	q.length = length;
	q.prot = prot;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_MAP)
		r = bad_body(c, rep, "MapPeer");
	else if (attr)
		*attr = (uint32_t)rep->map->attr;
	reply_free(c, rep);
	return r;
}

static void state_from_pb(struct dmb_device_state *o, const Dmb__DeviceStateReply *s)
{
	memset(o, 0, sizeof(*o));
	o->command = (uint16_t)s->command;
	o->memory = s->memory;
	o->bus_master = s->bus_master;
	o->importers = s->importers;
	o->revoked = s->revoked;
	o->revocations = s->revocations;
	o->restorations = s->restorations;
}

static int device_state_call(struct dmb_client *c, Dmb__Request *req, struct dmb_device_state *out)
{
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_DEVICE_STATE)
		r = bad_body(c, rep, "a device-state request");
	else if (out)
		state_from_pb(out, rep->device_state);
	reply_free(c, rep);
	return r;
}

int dmb_device_set_command(struct dmb_client *c, uint64_t device, uint16_t set_bits,
			   uint16_t clear_bits, struct dmb_device_state *out)
{
	REQ(q, DEVICE_SET_COMMAND, device_set_command, Dmb__DeviceSetCommand,
	    DMB__DEVICE_SET_COMMAND__INIT);
	q.device_id = device;
	q.set_bits = set_bits;
	q.clear_bits = clear_bits;
	return device_state_call(c, &req, out);
}

int dmb_device_reset(struct dmb_client *c, uint64_t device, struct dmb_device_state *out)
{
	REQ(q, DEVICE_RESET, device_reset, Dmb__DeviceReset, DMB__DEVICE_RESET__INIT);
	q.device_id = device;
	return device_state_call(c, &req, out);
}

int dmb_list_devices(struct dmb_client *c, bool all, struct dmb_device_listing **out, size_t *n)
{
	REQ(q, LIST_DEVICES, list_devices, Dmb__ListDevices, DMB__LIST_DEVICES__INIT);
	q.all = all;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_LIST_DEVICES) {
		r = bad_body(c, rep, "ListDevices");
		reply_free(c, rep);
		return r;
	}
	size_t k = rep->list_devices->n_devices, nimp = 0;
	for (size_t i = 0; i < k; i++)
		nimp += rep->list_devices->devices[i]->n_importers;
	struct dmb_device_listing *arr =
		calloc(1, (k + 1) * sizeof(*arr) + (nimp + 1) * sizeof(struct dmb_importer));
	if (!arr) {
		reply_free(c, rep);
		return -ENOMEM;
	}
	struct dmb_importer *imp = (struct dmb_importer *)(arr + k + 1);
	for (size_t i = 0; i < k; i++) {
		const Dmb__DeviceListing *d = rep->list_devices->devices[i];
		struct dmb_device_listing *o = &arr[i];
		o->device = d->device_id;
		snprintf(o->bdf, sizeof(o->bdf), "%s", d->bdf);
		snprintf(o->group, sizeof(o->group), "%s", d->group);
		o->context = d->context_id;
		o->owner_uid = d->owner_uid;
		o->vendor_id = (uint16_t)d->vendor_id;
		o->device_id = (uint16_t)d->device_id_pci;
		o->state.command = (uint16_t)d->command;
		o->state.memory = d->memory;
		o->state.bus_master = d->bus_master;
		o->state.importers = (uint32_t)d->n_importers;
		o->state.revocations = d->revocations;
		o->state.restorations = d->restorations;
		o->in_reset = d->in_reset;
		o->importers = imp;
		o->n_importers = d->n_importers;
		for (size_t j = 0; j < d->n_importers; j++, imp++) {
			const Dmb__Importer *m = d->importers[j];
			*imp = (struct dmb_importer){ m->context_id, m->iova, m->length, m->bar,
						      m->offset, m->revoked, m->owner_uid, (uint32_t)m->attr };
			if (m->revoked)
				o->state.revoked++;
		}
	}
	*out = arr;
	*n = k;
	reply_free(c, rep);
	return 0;
}

static int sim_device_dma(struct dmb_client *c, uint64_t device, uint64_t iova, void *rbuf,
			  const void *wbuf, size_t len)
{
	REQ(q, SIM_DEVICE_DMA, sim_device_dma, Dmb__SimDeviceDma, DMB__SIM_DEVICE_DMA__INIT);
	q.device_id = device;
	q.iova = iova;
	q.length = (uint32_t)len;
	q.to_memory = wbuf != NULL;
	q.data.data = (uint8_t *)wbuf;
	q.data.len = wbuf ? len : 0;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rbuf) {
		if (rep->body_case != DMB__REPLY__BODY_SIM_DMA || rep->sim_dma->data.len != len)
			r = bad_body(c, rep, "SimDeviceDma");
		else
			memcpy(rbuf, rep->sim_dma->data.data, len);
	}
	reply_free(c, rep);
	return r;
}

int dmb_sim_device_dma_read(struct dmb_client *c, uint64_t device, uint64_t iova, void *buf,
			    size_t len)
{
	return sim_device_dma(c, device, iova, buf, NULL, len);
}

int dmb_sim_device_dma_write(struct dmb_client *c, uint64_t device, uint64_t iova,
			     const void *buf, size_t len)
{
	return sim_device_dma(c, device, iova, NULL, buf, len);
}

int dmb_context_create_persistent(struct dmb_client *c, const char *name, uint64_t *context,
				  uint8_t token[DMB_RECLAIM_TOKEN_SIZE])
{
	REQ(q, CONTEXT_CREATE, context_create, Dmb__ContextCreate, DMB__CONTEXT_CREATE__INIT);
	q.name = (char *)(name ? name : "");
	q.persistent = true;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_CONTEXT_CREATE ||
	    rep->context_create->reclaim_token.len != DMB_RECLAIM_TOKEN_SIZE) {
		r = bad_body(c, rep, "ContextCreate");
	} else {
		*context = rep->context_create->context_id;
		memcpy(token, rep->context_create->reclaim_token.data, DMB_RECLAIM_TOKEN_SIZE);
	}
	reply_free(c, rep);
	return r;
}

int dmb_context_create_flags(struct dmb_client *c, const char *name, unsigned flags,
			     uint64_t *context, uint8_t token[DMB_RECLAIM_TOKEN_SIZE])
{
	if ((flags & ~(DMB_CONTEXT_PERSISTENT | DMB_CONTEXT_NOIOMMU)) ||
	    ((flags & DMB_CONTEXT_PERSISTENT) && !token))
		return -EINVAL;
	REQ(q, CONTEXT_CREATE, context_create, Dmb__ContextCreate, DMB__CONTEXT_CREATE__INIT);
	q.name = (char *)(name ? name : "");
	q.persistent = flags & DMB_CONTEXT_PERSISTENT;
	q.noiommu = flags & DMB_CONTEXT_NOIOMMU;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_CONTEXT_CREATE ||
	    (q.persistent && rep->context_create->reclaim_token.len != DMB_RECLAIM_TOKEN_SIZE)) {
		r = bad_body(c, rep, "ContextCreate");
	} else {
		*context = rep->context_create->context_id;
		if (q.persistent)
			memcpy(token, rep->context_create->reclaim_token.data,
			       DMB_RECLAIM_TOKEN_SIZE);
	}
	reply_free(c, rep);
	return r;
}

int dmb_phys_ranges(struct dmb_client *c, uint64_t context, uint64_t iova, uint64_t length,
		    struct dmb_phys_range *out, size_t cap, size_t *n, bool *more, uint64_t *next)
{
	REQ(q, PHYS_RANGES, phys_ranges, Dmb__PhysRanges, DMB__PHYS_RANGES__INIT);
	q.context_id = context;
	q.iova = iova;
	q.length = length;
	*n = 0;
	*more = false;
	if (next)
		*next = 0;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_PHYS_RANGES) {
		r = bad_body(c, rep, "PhysRanges");
	} else {
		Dmb__PhysRangesReply *b = rep->phys_ranges;
		for (size_t i = 0; i < b->n_ranges && i < cap; i++) {
			out[i] = (struct dmb_phys_range){ .iova = b->ranges[i]->iova,
							  .phys = b->ranges[i]->phys,
							  .length = b->ranges[i]->length };
			(*n)++;
		}
		*more = b->more;
		if (next)
			*next = b->next_iova;
		if (*n < b->n_ranges) { /* cut to cap: go on after the last one kept */
			*more = true;
			if (next)
				*next = *n ? out[*n - 1].iova + out[*n - 1].length : iova;
		}
	}
	reply_free(c, rep);
	return r;
}

int dmb_context_reclaim(struct dmb_client *c, uint64_t context,
			uint8_t token[DMB_RECLAIM_TOKEN_SIZE], struct dmb_reclaim_info *out)
{
	REQ(q, CONTEXT_RECLAIM, context_reclaim, Dmb__ContextReclaim, DMB__CONTEXT_RECLAIM__INIT);
	q.context_id = context;
	q.token.data = token;
	q.token.len = DMB_RECLAIM_TOKEN_SIZE;
	q.want_fds = out != NULL;
	Dmb__Reply *rep;
	int fds[DMB_MAX_FDS];
	size_t nfds = DMB_MAX_FDS;
	int r = dmb_call(c, &req, NULL, 0, &rep, fds, &nfds);
	if (r < 0)
		return r;
	r = dmb_reply_status(c, rep);
	if (r == 0 && (rep->body_case != DMB__REPLY__BODY_CONTEXT_RECLAIM ||
		       rep->context_reclaim->reclaim_token.len != DMB_RECLAIM_TOKEN_SIZE))
		r = bad_body(c, rep, "ContextReclaim");
	if (r == 0) {
		const Dmb__ContextReclaimReply *b = rep->context_reclaim;
		memcpy(token, b->reclaim_token.data, DMB_RECLAIM_TOKEN_SIZE);
		if (out) {
			memset(out, 0, sizeof(*out));
			out->mappings = b->mappings;
			out->degraded = b->degraded;
			for (size_t i = 0; i < b->n_regions && out->n_regions < DMB_RECLAIM_MAX; i++) {
				int32_t k = b->regions[i]->fd_index;
				int fd = k >= 0 && (size_t)k < nfds ? fds[k] : -1;
				if (fd >= 0)
					fds[k] = -1;
				out->regions[out->n_regions++] = (struct dmb_reclaimed_region){
					b->regions[i]->region_id, b->regions[i]->size, fd,
					b->regions[i]->stranded };
			}
			for (size_t i = 0; i < b->n_devices && out->n_devices < DMB_RECLAIM_MAX; i++) {
				int32_t k = b->devices[i]->fd_index;
				int fd = k >= 0 && (size_t)k < nfds ? fds[k] : -1;
				if (fd >= 0)
					fds[k] = -1;
				struct dmb_reclaimed_device *d = &out->devices[out->n_devices++];
				d->device = b->devices[i]->device_id;
				d->fd = fd;
				snprintf(d->bdf, sizeof(d->bdf), "%s", b->devices[i]->bdf);
			}
		}
	}
	for (size_t i = 0; i < nfds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	reply_free(c, rep);
	return r;
}

int dmb_list_clients(struct dmb_client *c, struct dmb_client_info **out, size_t *n)
{
	REQ(q, LIST_CLIENTS, list_clients, Dmb__ListClients, DMB__LIST_CLIENTS__INIT);
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_LIST_CLIENTS) {
		r = bad_body(c, rep, "ListClients");
		dmb__reply__free_unpacked(rep, NULL);
		return r;
	}
	size_t k = rep->list_clients->n_clients;
	struct dmb_client_info *arr = calloc(k + 1, sizeof(*arr));
	if (!arr) {
		dmb__reply__free_unpacked(rep, NULL);
		return -ENOMEM;
	}
	for (size_t i = 0; i < k; i++) {
		const Dmb__ClientInfo *ci = rep->list_clients->clients[i];
		arr[i] = (struct dmb_client_info){
			.session = ci->session_id, .uid = ci->uid, .gid = ci->gid, .pid = ci->pid,
			.admin = ci->admin, .contexts = ci->contexts, .mappings = ci->mappings,
			.pinned_bytes = ci->pinned_bytes, .devices = ci->devices,
			.requests = ci->requests, .connected_ms = ci->connected_ms,
		};
		snprintf(arr[i].name, sizeof(arr[i].name), "%s", ci->name);
	}
	*out = arr;
	*n = k;
	dmb__reply__free_unpacked(rep, NULL);
	return 0;
}

int dmb_revoke_context(struct dmb_client *c, uint64_t context, struct dmb_revoke_info *out)
{
	REQ(q, REVOKE_CONTEXT, revoke_context, Dmb__RevokeContext, DMB__REVOKE_CONTEXT__INIT);
	q.context_id = context;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_REVOKE_CONTEXT) {
		r = bad_body(c, rep, "RevokeContext");
	} else if (out) {
		const Dmb__RevokeContextReply *b = rep->revoke_context;
		*out = (struct dmb_revoke_info){
			.context = b->context_id, .unmapped = b->unmapped,
			.unmapped_bytes = b->unmapped_bytes, .devices = b->devices,
			.owner_session = b->owner_session_id, .owner_uid = b->owner_uid,
		};
	}
	dmb__reply__free_unpacked(rep, NULL);
	return r;
}

int dmb_reload_policy(struct dmb_client *c, struct dmb_reload_info *out)
{
	REQ(q, RELOAD_POLICY, reload_policy, Dmb__ReloadPolicy, DMB__RELOAD_POLICY__INIT);
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_RELOAD_POLICY) {
		r = bad_body(c, rep, "ReloadPolicy");
	} else if (out) {
		const Dmb__ReloadPolicyReply *b = rep->reload_policy;
		memset(out, 0, sizeof(*out));
		out->sessions = b->sessions;
		out->policy_sections = b->policy_sections;
		snprintf(out->path, sizeof(out->path), "%s", b->path);
	}
	dmb__reply__free_unpacked(rep, NULL);
	return r;
}

/* ------------------------------------------------------------ host handoff */

static void left_out_from_pb(struct dmb_handoff_info *out, Dmb__HandoffLeftOut **l, size_t n)
{
	out->n_left_out = n < DMB_HANDOFF_LEFT_OUT_MAX ? n : DMB_HANDOFF_LEFT_OUT_MAX;
	for (size_t i = 0; i < out->n_left_out; i++) {
		out->left_out[i].context = l[i]->context_id;
		snprintf(out->left_out[i].name, sizeof(out->left_out[i].name), "%s", l[i]->name);
		snprintf(out->left_out[i].reason, sizeof(out->left_out[i].reason), "%s", l[i]->reason);
	}
}

static void handoff_from_status(struct dmb_handoff_info *out, const Dmb__HandoffStatusReply *s)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->state, sizeof(out->state), "%s", s->state);
	snprintf(out->preserver, sizeof(out->preserver), "%s", s->preserver);
	out->available = s->available;
	snprintf(out->message, sizeof(out->message), "%s", s->message);
	snprintf(out->session_name, sizeof(out->session_name), "%s", s->session_name);
	out->since_ms = s->since_ms;
	out->contexts = s->contexts;
	out->mappings = s->mappings;
	out->bytes = s->bytes;
	out->devices = s->devices;
	out->unclaimed = s->unclaimed;
	out->degraded = s->degraded;
	out->grace_remaining_ms = s->grace_remaining_ms;
	left_out_from_pb(out, s->left_out, s->n_left_out);
}

int dmb_handoff_status(struct dmb_client *c, struct dmb_handoff_info *out)
{
	REQ(q, HANDOFF_STATUS, handoff_status, Dmb__HandoffStatus, DMB__HANDOFF_STATUS__INIT);
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_HANDOFF_STATUS)
		r = bad_body(c, rep, "HandoffStatus");
	else
		handoff_from_status(out, rep->handoff_status);
	dmb__reply__free_unpacked(rep, NULL);
	return r;
}

int dmb_handoff_prepare(struct dmb_client *c, bool force, struct dmb_handoff_info *out)
{
	REQ(q, HANDOFF_PREPARE, handoff_prepare, Dmb__HandoffPrepare, DMB__HANDOFF_PREPARE__INIT);
	q.force = force;
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != DMB__REPLY__BODY_HANDOFF_PREPARE) {
		r = bad_body(c, rep, "HandoffPrepare");
	} else if (out) {
		const Dmb__HandoffPrepareReply *b = rep->handoff_prepare;
		memset(out, 0, sizeof(*out));
		snprintf(out->state, sizeof(out->state), "%s", b->state);
		snprintf(out->preserver, sizeof(out->preserver), "%s", b->preserver);
		snprintf(out->session_name, sizeof(out->session_name), "%s", b->session_name);
		out->contexts = b->contexts;
		out->regions = b->regions;
		out->mappings = b->mappings;
		out->bytes = b->bytes;
		out->devices = b->devices;
		left_out_from_pb(out, b->left_out, b->n_left_out);
	}
	dmb__reply__free_unpacked(rep, NULL);
	return r;
}

int dmb_handoff_abort(struct dmb_client *c, struct dmb_handoff_info *out)
{
	REQ(q, HANDOFF_ABORT, handoff_abort, Dmb__HandoffAbort, DMB__HANDOFF_ABORT__INIT);
	Dmb__Reply *rep = NULL;
	int r = simple_call(c, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case == DMB__REPLY__BODY_HANDOFF_ABORT) {
		if (out)
			handoff_from_status(out, rep->handoff_abort);
	} else if (rep->body_case != DMB__REPLY__BODY__NOT_SET) {
		r = bad_body(c, rep, "HandoffAbort");
	} else if (out) {
		memset(out, 0, sizeof(*out));
		snprintf(out->state, sizeof(out->state), "normal");
	}
	dmb__reply__free_unpacked(rep, NULL);
	return r;
}
