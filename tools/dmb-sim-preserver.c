/* dmb-sim-preserver — plays the kernel's Live Update Orchestrator for tests.
 *
 *   dmb-sim-preserver serve SOCKET [--memfd-v1]
 *                                          serve in the foreground;
 *                                          --memfd-v1 plays Linux 6.19's memfd
 *                                          preservation, which loses seals
 *   dmb-sim-preserver kexec SOCKET [--incompatible|--memfd-v1]
 *                                          the simulated kexec (--memfd-v1: into
 *                                          a "kernel" that re-creates retrieved
 *                                          memfds without their seals)
 *   dmb-sim-preserver status SOCKET [--json]
 *   dmb-sim-preserver hold SOCKET          hold the "device" until killed
 *
 * The daemon's preserve/sim.c is its client; the wire and the meaning of a
 * connection are in daemon/backend/preserve/sim_proto.h. The rules copied from the
 * kernel (include/uapi/linux/liveupdate.h, kernel/liveupdate/, mm/memfd_luo.c):
 *   - CREATE: EEXIST for a duplicate outgoing name, ENOMEM past 819
 *     sessions; RETRIEVE: ENOENT for an unknown incoming name, EINVAL the
 *     second time; both EBUSY while another connection HOLDs the device, EIO
 *     after a kexec whose data the new "kernel" could not read.
 *   - PRESERVE_FD: EEXIST duplicate token, ENOSPC past 128 files, ENOENT
 *     for files the kernel has no handler for (anything but a regular file
 *     on tmpfs with no links: memfds without MFD_HUGETLB, unlinked tmpfs
 *     files), EOPNOTSUPP for seals outside the six known ones.
 *   - RETRIEVE_FD: ENOENT unknown token; repeatable.
 *   - FINISH: incoming sessions only; discards never-retrieved files.
 *   - hang-up of a session connection (its last reference closed): an
 *     outgoing session is aborted, a retrieved one finished.
 *   - kexec: every outgoing session becomes incoming, incoming sessions
 *     are dropped (never carried forward), every connection is closed.
 * Where the simulation differs from the kernel:
 *   - The kernel freezes a preserved memfd's size (ftruncate, fallocate and
 *     growing writes get EPERM). This program cannot refuse another
 *     process's ftruncate, so it records the size at PRESERVE_FD and the
 *     simulated kexec fails -- as a failed freeze fails reboot(), leaving
 *     every session as it was -- when a size changed.
 *   - A retrieved fd is the very file that was preserved (same open file
 *     description), not a new memfd with the same pages: contents, size and
 *     seals carry over as in the kernel, and so do the name and the file
 *     position.
 *   - FINISH on an outgoing session is refused (EINVAL); the kernel would
 *     run its post-kexec cleanup on it. Never do that to either.
 *
 * It must survive any client: every packet is checked for its exact size
 * and header, fds that arrive where none belong are closed, a client that
 * does not read its replies is disconnected, and nothing a client sends can
 * make it exit. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>

#include "backend/preserve/sim_proto.h"

#define MAX_CONNS 256
/* The six seals memfd-v2 records; F_SEAL_EXEC (0x0020, Linux 6.3) is spelled
 * out because 6.1 headers lack it. */
#define KNOWN_SEALS \
	(F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | 0x0020)

enum sess_state { S_OUTGOING, S_INCOMING, S_RETRIEVED };

struct file {
	uint64_t token;
	int fd;
	off_t size; /* at PRESERVE_FD: frozen while preserved */
	bool retrieved;
	bool recreated; /* --memfd-v1: fd is the unsealable copy */
};

struct session {
	char name[SIMP_NAME_LEN];
	enum sess_state state;
	struct conn *conn; /* the session fd; NULL for an incoming session */
	struct file files[SIMP_MAX_FILES];
	unsigned nfiles;
	struct session *next;
};

enum conn_kind { C_FRESH, C_SESSION, C_HOLD, C_DONE };

struct conn {
	int fd;
	enum conn_kind kind;
	struct session *s; /* C_SESSION */
	bool close_after_reply;
};

static struct {
	int listen_fd;
	struct conn conns[MAX_CONNS];
	unsigned nconns;
	struct session *sessions;
	struct conn *holder;
	bool incompatible;
	bool memfd_v1; /* --memfd-v1: retrieved memfds come back unsealable */
	unsigned kexecs;
} S = { .listen_fd = -1 };

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("dmb-sim-preserver: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- sessions ---- */

static unsigned count_sessions(void)
{
	unsigned n = 0;
	for (struct session *s = S.sessions; s; s = s->next)
		n++;
	return n;
}

static struct session *find_session(const char *name, bool outgoing)
{
	for (struct session *s = S.sessions; s; s = s->next)
		if ((s->state == S_OUTGOING) == outgoing && strcmp(s->name, name) == 0)
			return s;
	return NULL;
}

/* Closes its files and unlinks it; its connection (if any) is told. */
static void drop_session(struct session *s)
{
	for (unsigned i = 0; i < s->nfiles; i++)
		close(s->files[i].fd);
	for (struct session **pp = &S.sessions; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	if (s->conn) {
		s->conn->s = NULL;
		s->conn->kind = C_DONE;
	}
	free(s);
}

/* ---- requests ---- */

static int valid_name(const struct simp_req *q)
{
	size_t n = strnlen(q->name, sizeof(q->name));
	return n > 0 && n < sizeof(q->name);
}

static int op_open_session(struct conn *c, const struct simp_req *q)
{
	if (S.holder && S.holder != c)
		return -EBUSY;
	if (S.incompatible)
		return -EIO;
	if (c->kind != C_FRESH || !valid_name(q))
		return -EINVAL;
	struct session *s;
	if (q->op == SIMP_CREATE) {
		if (find_session(q->name, true))
			return -EEXIST;
		if (count_sessions() >= SIMP_MAX_SESSIONS)
			return -ENOMEM;
		s = calloc(1, sizeof(*s));
		if (!s)
			return -ENOMEM;
		memcpy(s->name, q->name, sizeof(s->name));
		s->state = S_OUTGOING;
		s->next = S.sessions;
		S.sessions = s;
	} else {
		s = find_session(q->name, false);
		if (!s)
			return -ENOENT;
		if (s->state == S_RETRIEVED)
			return -EINVAL;
		s->state = S_RETRIEVED;
	}
	s->conn = c;
	c->kind = C_SESSION;
	c->s = s;
	return 0;
}

/* The kernel's memfd handler accepts shmem files without links. */
static int preservable(int fd, off_t *size)
{
	struct stat st;
	struct statfs sfs;
	if (fstat(fd, &st) < 0 || fstatfs(fd, &sfs) < 0)
		return -EBADF;
	if (!S_ISREG(st.st_mode) || sfs.f_type != TMPFS_MAGIC || st.st_nlink != 0)
		return -ENOENT;
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals > 0 && (seals & ~KNOWN_SEALS))
		return -EOPNOTSUPP;
	*size = st.st_size;
	return 0;
}

static int op_preserve(struct conn *c, const struct simp_req *q, int *fd)
{
	if (c->kind != C_SESSION || c->s->state != S_OUTGOING)
		return -EINVAL;
	struct session *s = c->s;
	for (unsigned i = 0; i < s->nfiles; i++)
		if (s->files[i].token == q->token)
			return -EEXIST;
	if (s->nfiles >= SIMP_MAX_FILES)
		return -ENOSPC;
	if (*fd < 0)
		return -EBADF;
	off_t size;
	int r = preservable(*fd, &size);
	if (r < 0)
		return r;
	s->files[s->nfiles++] = (struct file){ .token = q->token, .fd = *fd, .size = size };
	*fd = -1; /* the session holds it now */
	return 0;
}

static off_t size_now(int fd);

/* Linux 6.19 (memfd-v1) re-creates a retrieved memfd with the same pages but
 * no seals, and unsealable (F_SEAL_SEAL): here, a copy of the contents in a
 * memfd created without MFD_ALLOW_SEALING, with an empty name as the
 * kernel's. The copy replaces the preserved file, so a second retrieve gets
 * the same new file. */
static int v1_recreate(struct file *f)
{
	int nfd = memfd_create("", MFD_CLOEXEC);
	if (nfd < 0)
		return -errno;
	off_t size = size_now(f->fd);
	if (size < 0 || ftruncate(nfd, size) < 0) {
		close(nfd);
		return -EIO;
	}
	char buf[65536];
	for (off_t off = 0; off < size;) {
		ssize_t n = pread(f->fd, buf, sizeof(buf), off);
		if (n <= 0 || pwrite(nfd, buf, (size_t)n, off) != n) {
			close(nfd);
			return -EIO;
		}
		off += n;
	}
	close(f->fd);
	f->fd = nfd;
	f->recreated = true;
	return 0;
}

static int op_retrieve_fd(struct conn *c, const struct simp_req *q, int *out)
{
	if (c->kind != C_SESSION || c->s->state != S_RETRIEVED)
		return -EINVAL;
	for (unsigned i = 0; i < c->s->nfiles; i++)
		if (c->s->files[i].token == q->token) {
			struct file *f = &c->s->files[i];
			if (S.memfd_v1 && !f->recreated) {
				int r = v1_recreate(f);
				if (r < 0)
					return r;
			}
			f->retrieved = true;
			*out = f->fd;
			return 0;
		}
	return -ENOENT;
}

static int op_finish(struct conn *c)
{
	if (c->kind != C_SESSION || c->s->state != S_RETRIEVED)
		return -EINVAL;
	drop_session(c->s); /* the conn stays, as the kernel's session fd */
	return 0;
}

static int op_hold(struct conn *c)
{
	if (S.holder && S.holder != c)
		return -EBUSY;
	if (c->kind != C_FRESH && c->kind != C_HOLD)
		return -EINVAL;
	S.holder = c;
	c->kind = C_HOLD;
	return 0;
}

/* ---- status ---- */

static const char *state_name(enum sess_state st)
{
	return st == S_OUTGOING ? "outgoing" : st == S_INCOMING ? "incoming" : "retrieved";
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static off_t size_now(int fd)
{
	struct stat st;
	return fstat(fd, &st) < 0 ? -1 : st.st_size;
}

static void write_status(FILE *f, bool json)
{
	if (json) {
		fprintf(f, "{\"kexecs\":%u,\"held\":%s,\"incompatible\":%s,\"sessions\":[", S.kexecs,
			S.holder ? "true" : "false", S.incompatible ? "true" : "false");
		for (struct session *s = S.sessions; s; s = s->next) {
			fputs("{\"name\":", f);
			json_string(f, s->name);
			fprintf(f, ",\"state\":\"%s\",\"files\":[", state_name(s->state));
			for (unsigned i = 0; i < s->nfiles; i++)
				fprintf(f,
					"%s{\"token\":%" PRIu64 ",\"size\":%jd,\"size_now\":%jd,"
					"\"retrieved\":%s}",
					i ? "," : "", s->files[i].token, (intmax_t)s->files[i].size,
					(intmax_t)size_now(s->files[i].fd),
					s->files[i].retrieved ? "true" : "false");
			fprintf(f, "]}%s", s->next ? "," : "");
		}
		fputs("]}\n", f);
		return;
	}
	fprintf(f, "kexecs: %u\ndevice: %s\nincoming data: %s\nsessions: %u\n", S.kexecs,
		S.holder ? "held" : "free", S.incompatible ? "unreadable (EIO)" : "readable",
		count_sessions());
	for (struct session *s = S.sessions; s; s = s->next) {
		fprintf(f, "session \"%s\" %s, %u file(s)\n", s->name, state_name(s->state),
			s->nfiles);
		for (unsigned i = 0; i < s->nfiles; i++) {
			off_t now = size_now(s->files[i].fd);
			fprintf(f, "  token %#" PRIx64 " size %jd%s%s\n", s->files[i].token,
				(intmax_t)s->files[i].size,
				now != s->files[i].size ? " (CHANGED)" : "",
				s->files[i].retrieved ? " retrieved" : "");
		}
	}
}

/* A memfd holding the report (the reply carries it). */
static int op_status(const struct simp_req *q, int *out)
{
	int fd = memfd_create("dmb-sim-preserver-status", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	FILE *f = fdopen(dup(fd), "w");
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	write_status(f, q->flags & SIMP_STATUS_JSON);
	if (fclose(f) != 0) {
		close(fd);
		return -EIO;
	}
	*out = fd;
	return 0;
}

/* ---- the simulated kexec ---- */

static int op_kexec(const struct simp_req *q, char *why, size_t n)
{
	/* The freeze: every outgoing file's size must be what was preserved.
	 * A failure changes nothing (reboot() returns, no kexec). */
	for (struct session *s = S.sessions; s; s = s->next) {
		if (s->state != S_OUTGOING)
			continue;
		for (unsigned i = 0; i < s->nfiles; i++) {
			off_t now = size_now(s->files[i].fd);
			if (now != s->files[i].size) {
				snprintf(why, n,
					 "session \"%s\": token %#" PRIx64
					 " changed size from %jd to %jd while preserved (the "
					 "kernel refuses that change with EPERM)",
					 s->name, s->files[i].token, (intmax_t)s->files[i].size,
					 (intmax_t)now);
				return -EPERM;
			}
		}
	}
	/* Incoming sessions are never carried forward. */
	struct session *s = S.sessions, *next;
	for (; s; s = next) {
		next = s->next;
		if (s->state != S_OUTGOING || (q->flags & SIMP_KEXEC_INCOMPATIBLE))
			drop_session(s);
	}
	for (s = S.sessions; s; s = s->next) {
		s->state = S_INCOMING;
		for (unsigned i = 0; i < s->nfiles; i++)
			s->files[i].retrieved = false;
	}
	S.incompatible = q->flags & SIMP_KEXEC_INCOMPATIBLE;
	if (q->flags & SIMP_KEXEC_MEMFD_V1)
		S.memfd_v1 = true;
	S.kexecs++;
	return 0;
}

/* ---- connections ---- */

static void close_conn(struct conn *c)
{
	if (c->kind == C_SESSION && c->s) {
		struct session *s = c->s;
		s->conn = NULL;
		if (s->state == S_OUTGOING || s->state == S_RETRIEVED)
			drop_session(s); /* abort, or the kernel's implicit finish */
	}
	if (S.holder == c)
		S.holder = NULL;
	close(c->fd);
	unsigned idx = (unsigned)(c - S.conns);
	S.conns[idx] = S.conns[--S.nconns];
	if (idx < S.nconns && S.conns[idx].s)
		S.conns[idx].s->conn = &S.conns[idx];
	if (S.holder == &S.conns[S.nconns])
		S.holder = &S.conns[idx];
}

static void close_all_conns(void)
{
	while (S.nconns)
		close_conn(&S.conns[S.nconns - 1]);
}

static int send_reply(struct conn *c, const struct simp_req *q, int result, int fd,
		      const char *text)
{
	struct simp_reply rep;
	memset(&rep, 0, sizeof(rep));
	rep.magic = SIMP_MAGIC;
	rep.version = SIMP_VERSION;
	rep.op = q ? q->op : 0;
	rep.id = q ? q->id : 0;
	rep.result = result;
	if (q && q->op == SIMP_PING && result == 0)
		rep.flags = S.memfd_v1 ? 0 : SIMP_CAP_MEMFD_SEALS;
	if (text)
		snprintf(rep.text, sizeof(rep.text), "%s", text);
	struct iovec iov = { .iov_base = &rep, .iov_len = sizeof(rep) };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	memset(&cm, 0, sizeof(cm));
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fd >= 0) {
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(h), &fd, sizeof(int));
	}
	ssize_t n = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	return n == (ssize_t)sizeof(rep) ? 0 : -1;
}

/* Handles one packet; false when the connection must go. */
static bool handle(struct conn *c)
{
	struct simp_req q;
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} cm;
	struct iovec iov = { .iov_base = &q, .iov_len = sizeof(q) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
			     .msg_controllen = sizeof(cm.buf) };
	memset(&q, 0, sizeof(q));
	ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR;
	if (n == 0)
		return false;

	int fds[8];
	unsigned nfds = 0;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k && nfds < 8; i++)
			memcpy(&fds[nfds++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
	}

	int result, out_fd = -1, in_fd = -1;
	bool close_out = false;
	char why[512] = "";
	if ((size_t)n != sizeof(q) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
	    q.magic != SIMP_MAGIC || q.version != SIMP_VERSION || q.reserved != 0) {
		result = -EBADMSG;
		snprintf(why, sizeof(why), "malformed request (%zd bytes)", n);
	} else if (nfds > (q.op == SIMP_PRESERVE_FD ? 1u : 0u)) {
		result = -EINVAL;
		snprintf(why, sizeof(why), "unexpected file descriptors with request %u", q.op);
	} else {
		if (nfds == 1) {
			in_fd = fds[0];
			nfds = 0;
		}
		switch (q.op) {
		case SIMP_PING:
			result = c->kind == C_FRESH ? 0 : -EINVAL;
			break;
		case SIMP_CREATE:
		case SIMP_RETRIEVE:
			result = op_open_session(c, &q);
			break;
		case SIMP_PRESERVE_FD:
			result = op_preserve(c, &q, &in_fd);
			break;
		case SIMP_RETRIEVE_FD:
			result = op_retrieve_fd(c, &q, &out_fd);
			break;
		case SIMP_FINISH:
			result = op_finish(c);
			break;
		case SIMP_HOLD:
			result = op_hold(c);
			break;
		case SIMP_STATUS:
			result = c->kind == C_FRESH ? op_status(&q, &out_fd) : -EINVAL;
			close_out = true;
			break;
		case SIMP_KEXEC:
			result = c->kind == C_FRESH ? op_kexec(&q, why, sizeof(why)) : -EINVAL;
			break;
		default:
			result = -EINVAL;
			snprintf(why, sizeof(why), "unknown request %u", q.op);
			break;
		}
	}
	for (unsigned i = 0; i < nfds; i++)
		close(fds[i]);
	if (in_fd >= 0)
		close(in_fd);
	bool ok = send_reply(c, result == -EBADMSG ? NULL : &q, result, result < 0 ? -1 : out_fd,
			     why) == 0;
	if (close_out && out_fd >= 0)
		close(out_fd);
	if (result == 0 && q.op == SIMP_KEXEC) {
		logmsg("simulated kexec #%u: %u session(s) carried over%s", S.kexecs,
		       count_sessions(), S.incompatible ? ", unreadable by the new kernel" : "");
		close_all_conns(); /* the old kernel's world is gone */
		return true;
	}
	return ok;
}

static int serve(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		logmsg("socket path %s is too long", path);
		return 1;
	}
	strcpy(sa.sun_path, path);
	S.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (S.listen_fd < 0) {
		logmsg("socket: %s", strerror(errno));
		return 1;
	}
	int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		logmsg("another preserver already serves %s", path);
		return 1;
	}
	if (probe >= 0)
		close(probe);
	unlink(path); /* a stale socket of a preserver that is gone */
	if (bind(S.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(S.listen_fd, 64) < 0) {
		logmsg("cannot listen on %s: %s", path, strerror(errno));
		return 1;
	}
	struct sigaction act = { .sa_handler = on_signal };
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGINT, &act, NULL);
	signal(SIGPIPE, SIG_IGN);
	printf("listening on %s\n", path);
	fflush(stdout);

	struct pollfd pfds[MAX_CONNS + 1];
	while (!stop) {
		pfds[0] = (struct pollfd){ .fd = S.listen_fd, .events = POLLIN };
		unsigned n = S.nconns;
		for (unsigned i = 0; i < n; i++)
			pfds[i + 1] = (struct pollfd){ .fd = S.conns[i].fd, .events = POLLIN };
		if (poll(pfds, n + 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			break;
		}
		/* Connections first, from the last: close_conn moves the last
		 * entry into the gap, which was handled already. A kexec closes
		 * them all; the remaining revents are then stale. */
		unsigned kexecs = S.kexecs;
		for (unsigned i = n; i-- > 0 && S.kexecs == kexecs;) {
			if (i >= S.nconns || !pfds[i + 1].revents)
				continue;
			struct conn *c = &S.conns[i];
			bool keep = true;
			if (pfds[i + 1].revents & POLLIN)
				keep = handle(c);
			else if (pfds[i + 1].revents & (POLLHUP | POLLERR | POLLNVAL))
				keep = false;
			if (!keep && S.kexecs == kexecs)
				close_conn(c);
		}
		if (pfds[0].revents & POLLIN) {
			int fd = accept4(S.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
			if (fd >= 0 && S.nconns >= MAX_CONNS) {
				logmsg("refusing a connection: %d are open", MAX_CONNS);
				close(fd);
			} else if (fd >= 0) {
				S.conns[S.nconns++] = (struct conn){ .fd = fd, .kind = C_FRESH };
			}
		}
	}
	close_all_conns();
	while (S.sessions)
		drop_session(S.sessions);
	close(S.listen_fd);
	unlink(path);
	return 0;
}

/* ---- the client commands ---- */

static int connect_to(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		logmsg("socket path %s is too long", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		logmsg("cannot connect to %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* One request; the reply's fd (if any) in *fd. */
static int roundtrip(int sock, uint16_t op, uint32_t flags, struct simp_reply *rep, int *fd)
{
	struct simp_req q = { .magic = SIMP_MAGIC, .version = SIMP_VERSION, .op = op, .id = 1,
			      .flags = flags };
	if (send(sock, &q, sizeof(q), MSG_NOSIGNAL) != (ssize_t)sizeof(q))
		return -errno;
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	struct iovec iov = { .iov_base = rep, .iov_len = sizeof(*rep) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
			     .msg_controllen = sizeof(cm.buf) };
	ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	if (n != (ssize_t)sizeof(*rep))
		return n < 0 ? -errno : -EPROTO;
	rep->text[sizeof(rep->text) - 1] = '\0';
	*fd = -1;
	struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
	if (h && h->cmsg_type == SCM_RIGHTS)
		memcpy(fd, CMSG_DATA(h), sizeof(int));
	return 0;
}

static int cmd_simple(const char *path, uint16_t op, uint32_t flags)
{
	int sock = connect_to(path);
	if (sock < 0)
		return 1;
	struct simp_reply rep;
	int fd = -1;
	int r = roundtrip(sock, op, flags, &rep, &fd);
	if (r < 0) {
		logmsg("no answer from %s: %s", path, strerror(-r));
		return 1;
	}
	if (rep.result < 0) {
		logmsg("%s (%s)", rep.text[0] ? rep.text : strerror(-rep.result),
		       strerrorname_np(-rep.result));
		return 1;
	}
	if (op == SIMP_STATUS) {
		char buf[65536];
		ssize_t k;
		off_t off = 0;
		while ((k = pread(fd, buf, sizeof(buf), off)) > 0) {
			fwrite(buf, 1, (size_t)k, stdout);
			off += k;
		}
		close(fd);
	} else if (op == SIMP_KEXEC) {
		printf("simulated kexec done\n");
	} else if (op == SIMP_HOLD) {
		printf("holding %s\n", path);
		fflush(stdout);
		for (;;)
			pause(); /* until killed: the hang-up releases the hold */
	}
	close(sock);
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: dmb-sim-preserver serve SOCKET [--memfd-v1]\n"
			"       dmb-sim-preserver kexec SOCKET [--incompatible|--memfd-v1]\n"
			"       dmb-sim-preserver status SOCKET [--json]\n"
			"       dmb-sim-preserver hold SOCKET\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return usage();
	const char *cmd = argv[1], *path = argv[2];
	const char *opt = argc > 3 ? argv[3] : NULL;
	if (argc > 4)
		return usage();
	if (strcmp(cmd, "serve") == 0 && (!opt || strcmp(opt, "--memfd-v1") == 0)) {
		S.memfd_v1 = opt != NULL;
		return serve(path);
	}
	if (strcmp(cmd, "kexec") == 0 && (!opt || strcmp(opt, "--incompatible") == 0 ||
					   strcmp(opt, "--memfd-v1") == 0))
		return cmd_simple(path, SIMP_KEXEC,
				  !opt ? 0
				  : strcmp(opt, "--incompatible") == 0 ? SIMP_KEXEC_INCOMPATIBLE
								       : SIMP_KEXEC_MEMFD_V1);
	if (strcmp(cmd, "status") == 0 && (!opt || strcmp(opt, "--json") == 0))
		return cmd_simple(path, SIMP_STATUS, opt ? SIMP_STATUS_JSON : 0);
	if (strcmp(cmd, "hold") == 0 && !opt)
		return cmd_simple(path, SIMP_HOLD, 0);
	return usage();
}
