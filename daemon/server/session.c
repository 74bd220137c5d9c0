/* One client connection: identity, framing, the bounded output queue. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>

#include "fastcodec.h"
#include "protocol.h"
#include "server/server.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/macro.h"

/* Stop reading requests while this much output waits; resume below half. */
#define OUTQ_HIGH_WATER (256u * 1024u)
/* Packets handled per wake-up. One: the event loop is level-triggered, so a
 * session with more queued is woken again at once, after the others had
 * their turn; and a request/reply client costs no extra recvmsg that would
 * only say EAGAIN. */
#define READ_BUDGET 1
/* Consecutive undecodable packets before the session is dropped. */
#define MAX_BAD_PACKETS 64

static void session_read_cb(evutil_socket_t fd, short what, void *arg);
static void session_write_cb(evutil_socket_t fd, short what, void *arg);

static struct session *session_create(struct server *srv, int fd, uint64_t id)
{
	struct session *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->srv = srv;
	s->fd = fd;
	s->id = id;
	s->event_mask = DMB_EVENT_ALL;
	s->start_ms = dmb_now_ms();
	STAILQ_INIT(&s->outq);

	socklen_t len = sizeof(s->cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &s->cred, &len) < 0) {
		log_error("session: SO_PEERCRED failed: %m");
		free(s);
		return NULL;
	}
	struct dmb_client_policy pol;
	config_resolve(srv->cfg, s->cred.uid, s->cred.gid, &pol);
	s->admin = pol.admin;
	s->owner = owner_new(&srv->core, s->id, s->cred.uid, s->cred.gid, s->cred.pid, &pol, s);
	s->ev_read = event_new(srv->base, fd, EV_READ | EV_PERSIST, session_read_cb, s);
	s->ev_write = event_new(srv->base, fd, EV_WRITE | EV_PERSIST, session_write_cb, s);
	if (!s->owner || !s->ev_read || !s->ev_write) {
		owner_free(s->owner);
		if (s->ev_read)
			event_free(s->ev_read);
		if (s->ev_write)
			event_free(s->ev_write);
		free(s);
		return NULL;
	}
	wire_size_buffers(fd);
	event_add(s->ev_read, NULL);
	s->reading = true;
	TAILQ_INSERT_TAIL(&srv->sessions, s, link);
	srv->n_sessions++;
	srv->core.fds.used++; /* its socket */
	log_debug("session %" PRIu64 ": connected (uid %u gid %u pid %d)", s->id,
		  (unsigned)s->cred.uid, (unsigned)s->cred.gid, (int)s->cred.pid);
	return s;
}

struct session *session_new(struct server *srv, int fd)
{
	uint64_t id = core_new_id(&srv->core);
	struct session *s = id ? session_create(srv, fd, id) : NULL;
	if (s)
		s->stored = persist_session_new(&srv->persist, s->id, fd);
	else if (id)
		core_release_id(&srv->core, id);
	return s;
}

struct session *session_adopt(struct server *srv, int fd, uint64_t id)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	(void)core_claim_id(&srv->core, id);
	struct session *s = session_create(srv, fd, id);
	if (s) {
		s->stored = true;
		srv->core.fds.store_used++;
		s->hello_done = true;
		snprintf(s->name, sizeof(s->name), "(adopted)");
		log_info("session %" PRIu64 " (uid %u pid %d) adopted from the fd store", id,
			 (unsigned)s->cred.uid, (int)s->cred.pid);
	} else {
		core_release_id(&srv->core, id);
	}
	return s;
}

void session_send_restarted(struct session *s)
{
	/* Whether this client's requests are still waiting in the socket (then
	 * they will be answered) or not (one in flight was lost: retry). */
	int queued = 0;
	(void)ioctl(s->fd, SIOCINQ, &queued);
	struct dmb_event ev = {
		.kind = DMB_EVENT_RESTARTED,
		.message = queued ? "the broker restarted; your queued requests will be answered"
				  : "the broker restarted; a request in flight was not answered: retry it",
		.requests_pending = queued > 0,
	};
	session_event_cb(s->srv, s->owner, &ev);
}

static void outpkt_free(struct outpkt *p)
{
	for (size_t i = 0; i < p->nfds; i++)
		close(p->fds[i]);
	free(p->fds);
	free(p);
}

void session_free(struct session *s)
{
	if (!s)
		return;
	struct server *srv = s->srv;
	if (s->inflight) {
		/* A worker is running its request on one of its contexts: the
		 * contexts go when the call is finished (sched.c frees the session
		 * from its write callback then). Until then it reads nothing
		 * and is sent nothing. */
		s->closing = true;
		s->reading = false;
		event_del(s->ev_read);
		event_del(s->ev_write);
		return;
	}
	if (s->parked) {
		struct parked *p = s->parked;
		STAILQ_REMOVE(&p->gate->waiters, p, parked, link);
		rpc_parked_free(p);
		s->parked = NULL;
		server_schedule_replay(srv); /* the gate may be idle now */
	}
	TAILQ_REMOVE(&srv->sessions, s, link);
	srv->n_sessions--;
	srv->core.fds.used--;
	srv->core.fds.store_used -= s->stored;
	event_free(s->ev_read);
	event_free(s->ev_write);
	/* The client is gone: its non-persistent contexts go with it, which
	 * unmaps their mappings and returns their pins. */
	owner_free(s->owner);
	struct outpkt *p;
	while ((p = STAILQ_FIRST(&s->outq))) {
		STAILQ_REMOVE_HEAD(&s->outq, link);
		outpkt_free(p);
	}
	close(s->fd);
	log_debug("session %" PRIu64 " (uid %u pid %d '%s'): closed after %" PRIu64 " requests", s->id,
		  (unsigned)s->cred.uid, (int)s->cred.pid, s->name, s->n_requests);
	core_release_id(&srv->core, s->id);
	free(s);
	server_listen_resume(srv);
}

void session_update_reading(struct session *s)
{
	bool want = !s->closing && !s->read_paused && !s->inflight && !s->parked;
	if (want == s->reading)
		return;
	s->reading = want;
	if (want)
		event_add(s->ev_read, NULL);
	else
		event_del(s->ev_read);
}

static void session_update_events(struct session *s)
{
	if (STAILQ_EMPTY(&s->outq))
		event_del(s->ev_write);
	else
		event_add(s->ev_write, NULL);

	if (!s->read_paused && s->outq_bytes > OUTQ_HIGH_WATER)
		s->read_paused = true;
	else if (s->read_paused && s->outq_bytes <= OUTQ_HIGH_WATER / 2)
		s->read_paused = false;
	session_update_reading(s);
}

/* Sends what it can of the queue. Returns <0 if the session must close. */
static int session_flush(struct session *s)
{
	struct outpkt *p;
	while ((p = STAILQ_FIRST(&s->outq))) {
		int r = wire_send(s->fd, p->data, p->len, p->fds, p->nfds, true);
		if (r == -EAGAIN || r == -ENOBUFS)
			break;
		if (r < 0)
			return r;
		STAILQ_REMOVE_HEAD(&s->outq, link);
		s->outq_bytes -= p->len;
		outpkt_free(p);
	}
	session_update_events(s);
	return 0;
}

/* Marks the session for closing. Its own callbacks free it; when this runs
 * elsewhere (an event pushed from another session's request), the write
 * callback is woken to do it. */
static void session_doom(struct session *s)
{
	if (!s->closing) {
		s->closing = true;
		event_active(s->ev_write, EV_WRITE, 0);
	}
}

static void session_queue(struct session *s, const uint8_t *buf, size_t len, const int *fds,
			  size_t nfds)
{
	if (s->closing)
		return;
	/* Fast path: nothing waiting, the socket takes it now. */
	if (STAILQ_EMPTY(&s->outq)) {
		int r = wire_send(s->fd, buf, len, fds, nfds, true);
		if (r == 0)
			return;
		if (r != -EAGAIN && r != -ENOBUFS) {
			log_debug("session %" PRIu64 ": send failed: %s", s->id, strerror(-r));
			session_doom(s);
			return;
		}
	}
	if (s->outq_bytes + len > s->srv->cfg->session_queue_bytes) {
		log_ratelimited(LOG_WARNING, "session %" PRIu64 " (uid %u pid %d): %zu bytes of output not read by the "
			    "client; disconnecting it", s->id, (unsigned)s->cred.uid, (int)s->cred.pid,
			    s->outq_bytes);
		s->srv->n_disconnects_abuse++;
		session_doom(s);
		return;
	}
	struct outpkt *p = malloc(sizeof(*p) + len);
	if (!p) {
		session_doom(s);
		return;
	}
	p->len = len;
	p->nfds = 0;
	p->fds = nfds ? malloc(nfds * sizeof(int)) : NULL;
	if (nfds && !p->fds) {
		free(p);
		session_doom(s);
		return;
	}
	memcpy(p->data, buf, len);
	for (size_t i = 0; i < nfds; i++) {
		int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
		if (d < 0) {
			outpkt_free(p);
			session_doom(s);
			return;
		}
		p->fds[p->nfds++] = d;
	}
	STAILQ_INSERT_TAIL(&s->outq, p, link);
	s->outq_bytes += len;
	session_update_events(s);
}

/* Packs m in one pass into the server's txbuf (spilling to the heap only if
 * it is larger); returns the length, the bytes in *out (free *spill after). */
static size_t pack_message(struct session *s, const Dmb__ServerMessage *m, uint8_t **out,
			   uint8_t **spill)
{
	/* Map and Unmap replies, the hot path, by the fast codec. */
	size_t n = fc_server_message_pack(m, s->srv->txbuf, DMB_MAX_PACKET);
	if (n) {
		*out = s->srv->txbuf;
		*spill = NULL;
		return n;
	}
	ProtobufCBufferSimple b = {
		.base = { protobuf_c_buffer_simple_append },
		.alloced = DMB_MAX_PACKET,
		.data = s->srv->txbuf,
	};
	dmb__server_message__pack_to_buffer(m, &b.base);
	*out = b.data;
	*spill = b.must_free_data ? b.data : NULL;
	return b.len;
}

void session_send_reply(struct session *s, Dmb__Reply *reply, const int *fds, size_t nfds)
{
	Dmb__ServerMessage m = DMB__SERVER_MESSAGE__INIT;
	m.kind_case = DMB__SERVER_MESSAGE__KIND_REPLY;
	m.reply = reply;
	uint8_t *buf, *spill;
	size_t len = pack_message(s, &m, &buf, &spill);
	if (len > DMB_MAX_PACKET) {
		/* A reply we cannot send is our bug; say so rather than drop it. */
		free(spill);
		Dmb__Error err = DMB__ERROR__INIT;
		err.code = DMB__ERROR_CODE__INTERNAL;
		err.message = (char *)"reply too large for one packet";
		reply->error = &err;
		reply->body_case = DMB__REPLY__BODY__NOT_SET;
		nfds = 0;
		log_error("session %" PRIu64 ": reply to request %" PRIu64 " too large", s->id, reply->id);
		len = pack_message(s, &m, &buf, &spill);
	}
	session_queue(s, buf, len, fds, nfds);
	free(spill);
}

void session_event_cb(void *opaque, struct dmb_owner *owner, const struct dmb_event *ev)
{
	struct session *s = owner ? owner->opaque : NULL;
	if (!s || !(s->event_mask & ev->kind))
		return;
	Dmb__Event e = DMB__EVENT__INIT;
	e.seq = ++s->event_seq;
	e.kind = ev->kind;
	e.context_id = ev->context_id;
	e.device_id = ev->device_id;
	e.message = (char *)(ev->message ? ev->message : "");
	e.permanent = ev->permanent;
	e.requests_pending = ev->requests_pending;
	e.handoff_state = (char *)(ev->handoff_state ? ev->handoff_state : "");
	Dmb__Range rg[64], *rp[64];
	Dmb__Range *rgh = NULL;
	Dmb__Range **rph = NULL;
	Dmb__Range *ra = rg;
	Dmb__Range **rpa = rp;
	if (ev->n_ranges > 64) {
		rgh = malloc(ev->n_ranges * sizeof(*rgh));
		rph = malloc(ev->n_ranges * sizeof(*rph));
		if (!rgh || !rph) {
			free(rgh);
			free(rph);
			return;
		}
		ra = rgh;
		rpa = rph;
	}
	for (size_t i = 0; i < ev->n_ranges; i++) {
		dmb__range__init(&ra[i]);
		ra[i].iova = ev->ranges[i].iova;
		ra[i].length = ev->ranges[i].length;
		rpa[i] = &ra[i];
	}
	e.n_ranges = ev->n_ranges;
	e.ranges = rpa;
	Dmb__ServerMessage m = DMB__SERVER_MESSAGE__INIT;
	m.kind_case = DMB__SERVER_MESSAGE__KIND_EVENT;
	m.event = &e;
	uint8_t *buf, *spill;
	size_t len = pack_message(s, &m, &buf, &spill);
	if (len <= DMB_MAX_PACKET)
		session_queue(s, buf, len, NULL, 0);
	free(spill);
	free(rgh);
	free(rph);
}

static void session_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	struct server *srv = s->srv;

	for (int budget = READ_BUDGET;
	     budget > 0 && !s->closing && !s->read_paused && !s->inflight && !s->parked;
	     budget--) {
		struct wire_rx rx;
		int r = wire_recv(fd, srv->rxbuf, DMB_MAX_PACKET, &rx, true);
		if (r == -EAGAIN)
			break;
		if (r < 0) {
			log_debug("session %" PRIu64 ": receive failed: %s", s->id, strerror(-r));
			s->closing = true;
			break;
		}
		if (rx.eof) {
			s->closing = true;
			break;
		}
		uint32_t bad_before = s->n_bad_packets;
		rpc_handle(s, srv->rxbuf, &rx);
		if (s->n_bad_packets == bad_before)
			s->n_bad_packets = 0;
		else if (s->n_bad_packets >= MAX_BAD_PACKETS) {
			log_ratelimited(LOG_WARNING, "session %" PRIu64 " (uid %u pid %d): %u malformed packets in a row; "
				    "disconnecting it", s->id, (unsigned)s->cred.uid, (int)s->cred.pid,
				    s->n_bad_packets);
			srv->n_disconnects_abuse++;
			s->closing = true;
		}
	}
	if (s->closing)
		session_free(s);
}

static void session_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	if (session_flush(s) < 0)
		s->closing = true;
	if (s->closing)
		session_free(s);
}
