/* sim.c — the simulated preserver, client side: each operation is one
 * request to tools/dmb-sim-preserver over the unix socket it serves (wire:
 * sim_proto.h). A session fd is a connection to it, so everything the
 * kernel does when a session fd is closed the program does on hang-up.
 *
 * Calls are synchronous with a bound: a preserver that does not answer
 * within SIM_TIMEOUT_MS fails the operation (ETIMEDOUT) instead of
 * stalling the daemon. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "backend/preserve/impl.h"
#include "backend/preserve/sim_proto.h"
#include "util/macro.h"

#define SIM_TIMEOUT_MS 10000

struct simp {
	struct dmb_preserver base;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char dev[sizeof(((struct sockaddr_un *)0)->sun_path) + 40];
};

static struct simp *to_simp(struct dmb_preserver *p)
{
	return dmb_container_of(p, struct simp, base);
}

/* Request ids: this process's pid in the high half, so a reply meant for a
 * predecessor that shared the session connection never matches. */
static uint64_t next_id(void)
{
	static uint32_t counter;
	return ((uint64_t)(uint32_t)getpid() << 32) | ++counter;
}

static void close_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

/* Sends req (with send_fd when >= 0) and waits for its reply; *recv_fd
 * gets the fd a reply carried (else -1). Returns 0 when the exchange
 * worked (rep->result holds the answer), else a negative errno of the
 * transport. */
static int call(int sock, struct simp_req *req, int send_fd, struct simp_reply *rep, int *recv_fd)
{
	*recv_fd = -1;
	req->magic = SIMP_MAGIC;
	req->version = SIMP_VERSION;
	req->id = next_id();

	struct iovec iov = { .iov_base = req, .iov_len = sizeof(*req) };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 4)];
	} cm;
	memset(&cm, 0, sizeof(cm));
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (send_fd >= 0) {
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &send_fd, sizeof(int));
	}
	ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	if ((size_t)n != sizeof(*req))
		return -EPROTO;

	for (;;) {
		struct pollfd pfd = { .fd = sock, .events = POLLIN };
		int pr = poll(&pfd, 1, SIM_TIMEOUT_MS);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0)
			return -errno;
		if (pr == 0)
			return -ETIMEDOUT;

		iov = (struct iovec){ .iov_base = rep, .iov_len = sizeof(*rep) };
		memset(&cm, 0, sizeof(cm));
		mh = (struct msghdr){ .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
				      .msg_controllen = sizeof(cm.buf) };
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;

		int fds[4];
		size_t nfds = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k && nfds < DMB_ARRAY_SIZE(fds); i++)
				memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		}
		if ((mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) || (size_t)n != sizeof(*rep) ||
		    rep->magic != SIMP_MAGIC || rep->version != SIMP_VERSION || nfds > 1) {
			close_fds(fds, nfds);
			return -EPROTO;
		}
		if (rep->id != req->id) { /* a reply a predecessor never read */
			close_fds(fds, nfds);
			continue;
		}
		rep->text[sizeof(rep->text) - 1] = '\0';
		if (nfds == 1) {
			if (rep->result < 0) {
				close(fds[0]);
				return -EPROTO;
			}
			*recv_fd = fds[0];
		}
		return 0;
	}
}

/* A transport failure on a session connection. */
static int explain_transport(struct simp *s, int err, struct dmb_err *e)
{
	if (err == -ECONNRESET || err == -EPIPE || err == -ENOTCONN)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -err,
				"the handoff session's connection to %s is closed (%s): a simulated "
				"kexec ended it, or the preserver exited",
				s->dev, strerrorname_np(-err) ? strerrorname_np(-err) : "E?");
	if (err == -ETIMEDOUT)
		return dmb_fail(e, DMB_E_UNAVAILABLE, ETIMEDOUT,
				"%s did not answer within %d s (ETIMEDOUT)", s->dev,
				SIM_TIMEOUT_MS / 1000);
	if (err == -EPROTO)
		return dmb_fail(e, DMB_E_INTERNAL, EPROTO,
				"%s answered with a malformed message (EPROTO)", s->dev);
	return dmb_fail(e, dmb_code_from_errno(err), -err, "talking to %s failed (%s): %s", s->dev,
			strerrorname_np(-err) ? strerrorname_np(-err) : "E?", strerror(-err));
}

/* The "device open": a new connection. */
static int sim_connect(struct simp *s, struct dmb_err *e)
{
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return dmb_fail(e, dmb_code_from_errno(-errno), errno,
				"cannot create a socket for %s: %s", s->dev, strerror(errno));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, s->path, strlen(s->path));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = errno;
		if (err == ENOENT || err == ECONNREFUSED)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err,
					"%s is not listening (%s): start dmb-sim-preserver serve %s",
					s->dev, strerrorname_np(err), s->path);
		return dmb_fail(e, dmb_code_from_errno(-err), err, "connecting to %s failed (%s): %s",
				s->dev, strerrorname_np(err) ? strerrorname_np(err) : "E?",
				strerror(err));
	}
	return TAKE_FD(fd);
}

/* One request on conn; the answer is explained as op. */
static int request(struct simp *s, int conn, enum simp_op op, enum preserve_op pop,
		   const char *name, uint64_t token, int send_fd, int *recv_fd, struct dmb_err *e)
{
	struct simp_req req = { .op = (uint16_t)op, .token = token };
	struct simp_reply rep;
	int got = -1;
	if (name)
		memcpy(req.name, name, strnlen(name, DMB_PRESERVE_NAME_MAX));
	int r = call(conn, &req, send_fd, &rep, &got);
	if (r < 0)
		return explain_transport(s, r, e);
	if (rep.result < 0)
		return preserve_explain(e, s->dev, pop, rep.result, name, token);
	if (recv_fd)
		*recv_fd = got;
	else if (got >= 0)
		close(got);
	if (recv_fd && *recv_fd < 0)
		return dmb_fail(e, DMB_E_INTERNAL, EPROTO, "%s answered without a file descriptor",
				s->dev);
	return 0;
}

static int sim_probe(struct dmb_preserver *p, struct dmb_err *e)
{
	struct simp *s = to_simp(p);
	_cleanup_close_ int conn = sim_connect(s, e);
	if (conn < 0)
		return conn;
	struct simp_req req = { .op = SIMP_PING };
	struct simp_reply rep;
	int got = -1;
	int r = call(conn, &req, -1, &rep, &got);
	if (got >= 0)
		close(got);
	if (r < 0)
		return explain_transport(s, r, e);
	if (rep.result < 0)
		return preserve_explain(e, s->dev, PRESERVE_OP_OPEN, rep.result, NULL, 0);
	/* As the LUO preserver judges the kernel (preserve/luo.c). */
	if (!(rep.flags & SIMP_CAP_MEMFD_SEALS))
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EOPNOTSUPP,
				"the simulated kernel re-creates preserved memfds without their seals "
				"(as Linux 6.19): no region could be re-adopted after the kexec and guest "
				"memory would be lost; a handoff needs Linux 7.3+");
	return 0;
}

static int open_session(struct simp *s, enum simp_op op, enum preserve_op pop, const char *name,
			int *session_fd, struct dmb_err *e)
{
	int r = preserve_check_name(name, e);
	if (r < 0)
		return r;
	_cleanup_close_ int conn = sim_connect(s, e);
	if (conn < 0)
		return conn;
	r = request(s, conn, op, pop, name, 0, -1, NULL, e);
	if (r < 0)
		return r;
	*session_fd = TAKE_FD(conn);
	return 0;
}

static int sim_create_session(struct dmb_preserver *p, const char *name, int *session_fd,
			      struct dmb_err *e)
{
	return open_session(to_simp(p), SIMP_CREATE, PRESERVE_OP_CREATE, name, session_fd, e);
}

static int sim_retrieve_session(struct dmb_preserver *p, const char *name, int *session_fd,
				struct dmb_err *e)
{
	return open_session(to_simp(p), SIMP_RETRIEVE, PRESERVE_OP_RETRIEVE, name, session_fd, e);
}

static int sim_preserve_fd(struct dmb_preserver *p, int session_fd, int fd, uint64_t token,
			   struct dmb_err *e)
{
	if (fd < 0) /* SCM_RIGHTS cannot carry it: the kernel's answer */
		return preserve_explain(e, to_simp(p)->dev, PRESERVE_OP_PRESERVE_FD, -EBADF, NULL,
					token);
	return request(to_simp(p), session_fd, SIMP_PRESERVE_FD, PRESERVE_OP_PRESERVE_FD, NULL,
		       token, fd, NULL, e);
}

static int sim_retrieve_fd(struct dmb_preserver *p, int session_fd, uint64_t token, int *fd,
			   struct dmb_err *e)
{
	return request(to_simp(p), session_fd, SIMP_RETRIEVE_FD, PRESERVE_OP_RETRIEVE_FD, NULL,
		       token, -1, fd, e);
}

static int sim_finish(struct dmb_preserver *p, int session_fd, struct dmb_err *e)
{
	return request(to_simp(p), session_fd, SIMP_FINISH, PRESERVE_OP_FINISH, NULL, 0, -1, NULL,
		       e);
}

static void sim_destroy(struct dmb_preserver *p)
{
	free(to_simp(p));
}

static const struct dmb_preserver_ops sim_ops = {
	.name = "sim",
	.probe = sim_probe,
	.create_session = sim_create_session,
	.retrieve_session = sim_retrieve_session,
	.preserve_fd = sim_preserve_fd,
	.retrieve_fd = sim_retrieve_fd,
	.finish = sim_finish,
	.destroy = sim_destroy,
};

int sim_preserver_new(const char *sock_path, struct dmb_preserver **out, struct dmb_err *e)
{
	struct simp *s = calloc(1, sizeof(*s));
	if (!s)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	size_t len = strlen(sock_path);
	if (len == 0 || len >= sizeof(s->path)) {
		free(s);
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, ENAMETOOLONG,
				"the simulated preserver's socket path must be 1 to %zu bytes",
				sizeof(s->path) - 1);
	}
	memcpy(s->path, sock_path, len + 1);
	snprintf(s->dev, sizeof(s->dev), "the simulated preserver at %s", s->path);
	s->base.ops = &sim_ops;
	*out = &s->base;
	return 0;
}
