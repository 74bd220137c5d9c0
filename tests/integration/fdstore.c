/* fdstore — systemd's socket unit, notify socket and fd store, for tests.
 * What is emulated and what is not: see fdstore.h.
 *
 * Threads and locking: the test thread calls the fds_* functions; one pump
 * thread receives notify messages and stored-fd hang-ups. Everything in
 * struct fds_state below `lock` is guarded by it; the pump thread receives
 * only while holding it, so a drain under the lock sees every message whole.
 * Only the test thread forks, waits for and signals the service. */
#include "fdstore.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#ifndef F_DUPFD_QUERY
#define F_DUPFD_QUERY 1027 /* F_LINUX_SPECIFIC_BASE + 3, Linux 6.10 */
#endif

#define NOTIFY_BUFFER_MAX 4096 /* systemd: PIPE_BUF; longer messages are dropped */
#define NOTIFY_FD_MAX 768      /* systemd: control space for this many fds */
#define FDNAME_MAX 255
#define LINES_KEPT 8192 /* notify lines kept for fds_wait_notify() */
#define EXIT_EXEC 203   /* systemd's exit status when execve() fails */
#define MAX_ENV_ADD 8

struct entry {
	int fd;
	bool polled; /* in the epoll set (FDPOLL not 0, and pollable) */
	uint64_t id; /* epoll cookie: entries move within the array */
	char name[FDNAME_MAX + 1];
};

struct line {
	unsigned instance;
	char *text;
};

struct fds_state {
	struct fds_opts o;
	bool debug; /* $FDSTORE_DEBUG: also systemd's debug-level lines */
	int notify_fd, listen_fd, epoll_fd, wake[2];
	struct rlimit nofile; /* the test's own, restored in the service */
	pthread_t thread;
	bool thread_started;

	/* Test thread only. */
	pid_t child;       /* forked and not yet collected by fds_stop() */
	bool reaped;       /* child ended and was waited for */
	int exit_status;   /* of the last instance that ended, -1 if none */
	char **argv;       /* for fds_restart() */

	pthread_mutex_t lock;
	pthread_cond_t cond; /* events changed */
	uint64_t events;     /* bumped whenever the pump thread processed something */
	/* The store in the order of storing; passed newest first. */
	struct entry *store;
	size_t n_store, cap_store;
	uint64_t next_id;
	/* The instance. */
	pid_t main_pid; /* accepted sender; kept until its messages are drained */
	unsigned instance;
	bool ready, stopping;
	char *status;
	int status_errno;
	pid_t mainpid_field;
	/* Accepted lines, seq % LINES_KEPT; cursor: fds_wait_notify's start. */
	struct line ring[LINES_KEPT];
	uint64_t next_seq, cursor;
	struct fds_counters c;
};

__attribute__((format(printf, 2, 3))) static void say(const struct fds_state *s, const char *fmt, ...)
{
	if (s->o.quiet)
		return;
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "fdstore: %s\n", buf);
}

#define debug(s, ...)                                                                              \
	do {                                                                                       \
		if ((s)->debug)                                                                    \
			say((s), __VA_ARGS__);                                                     \
	} while (0)

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void close_fds(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
}

/* systemd's fdname_is_valid(): printable ASCII but ':', at most 255 chars,
 * the empty name included. */
static bool fdname_is_valid(const char *p)
{
	size_t n = 0;
	for (; p[n]; n++)
		if ((unsigned char)p[n] < ' ' || (unsigned char)p[n] >= 127 || p[n] == ':')
			return false;
	return n <= FDNAME_MAX;
}

static bool utf8_is_valid(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	while (*u) {
		int len = *u < 0x80 ? 1 : (*u & 0xe0) == 0xc0 ? 2 : (*u & 0xf0) == 0xe0 ? 3
			: (*u & 0xf8) == 0xf0 ? 4 : 0;
		if (len == 0 || (len == 2 && *u < 0xc2))
			return false;
		for (int i = 1; i < len; i++)
			if ((u[i] & 0xc0) != 0x80)
				return false;
		u += len;
	}
	return true;
}

/* systemd's same_fd(): the same open file description? F_DUPFD_QUERY, else
 * kcmp(), else: same inode, not a device node, same F_GETFL flags (so two
 * open()s of one file with the same flags count as one, and two fds of one
 * device node never do). */
static int same_fd(const struct fds_state *s, int a, int b)
{
	if (a == b)
		return 1;
	if (s->o.compare == FDS_CMP_AUTO) {
		int r = fcntl(a, F_DUPFD_QUERY, b);
		if (r >= 0)
			return r > 0;
		if (errno != EINVAL && errno != EBADF && errno != EPERM && errno != EACCES)
			return -errno;
		r = (int)syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, a, b);
		if (r >= 0)
			return r == 0;
		if (errno != ENOSYS && errno != EPERM && errno != EACCES && errno != EOPNOTSUPP)
			return -errno;
	}
	struct stat sa, sb;
	if (fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
		return -errno;
	if (sa.st_dev != sb.st_dev || sa.st_ino != sb.st_ino ||
	    (sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT))
		return 0;
	if (S_ISCHR(sa.st_mode) || S_ISBLK(sa.st_mode))
		return 0;
	int fa = fcntl(a, F_GETFL), fb = fcntl(b, F_GETFL);
	if (fa < 0 || fb < 0)
		return -errno;
	return fa == fb;
}

/* ---- the store (lock held) ---- */

static void entry_drop_locked(struct fds_state *s, size_t i)
{
	struct entry *e = &s->store[i];
	if (e->polled)
		epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, e->fd, NULL);
	close(e->fd);
	memmove(e, e + 1, (s->n_store - i - 1) * sizeof(*e));
	s->n_store--;
}

/* service_add_fd_store(): always consumes fd. 1 stored, 0 duplicate,
 * -EXFULL over the limit (checked first, as systemd does). */
static int store_add_locked(struct fds_state *s, int fd, const char *name, bool do_poll)
{
	if (s->n_store >= s->o.store_max) {
		debug(s, "Hit fd store limit.");
		close(fd);
		return -EXFULL;
	}
	for (size_t i = 0; i < s->n_store; i++) {
		int r = same_fd(s, s->store[i].fd, fd);
		if (r < 0) {
			close(fd);
			return r;
		}
		if (r > 0) {
			debug(s, "Suppressing duplicate fd %d in fd store (already stored as \"%s\").",
			      fd, s->store[i].name);
			s->c.duplicates++;
			close(fd);
			return 0;
		}
	}
	if (s->n_store == s->cap_store) {
		size_t cap = s->cap_store ? 2 * s->cap_store : 64;
		struct entry *n = realloc(s->store, cap * sizeof(*n));
		if (!n) {
			close(fd);
			return -ENOMEM;
		}
		s->store = n;
		s->cap_store = cap;
	}
	struct entry *e = &s->store[s->n_store];
	memset(e, 0, sizeof(*e));
	e->fd = fd;
	e->id = ++s->next_id;
	snprintf(e->name, sizeof(e->name), "%s", name ? name : "stored");
	if (do_poll) {
		/* events 0: EPOLLHUP and EPOLLERR are always reported. */
		struct epoll_event ev = { .events = 0, .data.u64 = e->id };
		if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, fd, &ev) == 0)
			e->polled = true;
		else if (errno != EPERM) { /* EPERM: not pollable (a regular file), fine */
			int r = -errno;
			close(fd);
			return r;
		}
	}
	s->n_store++;
	s->c.stored++;
	debug(s, "Added fd %d (%s) to fd store.", fd, e->name);
	return 1;
}

/* service_add_fd_store_set(): takes fds[] (set to -1). */
static void store_add_set_locked(struct fds_state *s, int *fds, size_t n, const char *name,
				 bool do_poll)
{
	for (size_t i = 0; i < n; i++) {
		int fd = fds[i];
		fds[i] = -1;
		int r = store_add_locked(s, fd, name, do_poll);
		if (r == -EXFULL) {
			say(s, "Cannot store more fds than FileDescriptorStoreMax=%u, closing remaining.",
			    s->o.store_max);
			s->c.refused_full += (unsigned)(n - i);
			close_fds(fds + i + 1, n - i - 1);
			return;
		}
		if (r < 0) {
			say(s, "Failed to add fd to store: %s", strerror(-r));
			return; /* the rest is closed as extra, as in systemd */
		}
	}
}

static void store_remove_locked(struct fds_state *s, const char *name)
{
	for (size_t i = 0; i < s->n_store;) {
		if (strcmp(s->store[i].name, name) != 0) {
			i++;
			continue;
		}
		debug(s, "Got explicit request to remove fd %d (%s), closing.", s->store[i].fd, name);
		entry_drop_locked(s, i);
		s->c.removed++;
	}
}

static void hangups_locked(struct fds_state *s)
{
	struct epoll_event ev[32];
	int n = epoll_wait(s->epoll_fd, ev, 32, 0);
	for (int k = 0; k < n; k++)
		for (size_t i = 0; i < s->n_store; i++)
			if (s->store[i].id == ev[k].data.u64) {
				debug(s, "Received %s on stored fd %d (%s), closing.",
				      ev[k].events & EPOLLERR ? "EPOLLERR" : "EPOLLHUP",
				      s->store[i].fd, s->store[i].name);
				entry_drop_locked(s, i);
				s->c.hangups++;
				break;
			}
}

/* ---- notify messages (lock held) ---- */

static const char *field(char *const *tags, size_t n, const char *key)
{
	size_t kl = strlen(key);
	for (size_t i = 0; i < n; i++)
		if (strncmp(tags[i], key, kl) == 0)
			return tags[i] + kl; /* the first one wins (strv_find_startswith) */
	return NULL;
}

static bool has(char *const *tags, size_t n, const char *tag)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(tags[i], tag) == 0)
			return true;
	return false;
}

static void record_line_locked(struct fds_state *s, const char *text)
{
	struct line *l = &s->ring[s->next_seq % LINES_KEPT];
	free(l->text);
	l->text = strdup(text);
	l->instance = s->instance;
	s->next_seq++;
}

/* service_notify_message(), for the fields we emulate. */
static void interpret_locked(struct fds_state *s, char *const *tags, size_t n, int *fds,
			     size_t nfds)
{
	const char *e = field(tags, n, "MAINPID=");
	if (e) {
		char *end;
		long pid = strtol(e, &end, 10);
		if (*e && !*end && pid > 0)
			s->mainpid_field = (pid_t)pid;
		else
			say(s, "Failed to parse MAINPID=%s field in notification message, ignoring", e);
	}
	if (has(tags, n, "STOPPING=1"))
		s->stopping = true;
	else if (has(tags, n, "READY=1"))
		s->ready = true;

	e = field(tags, n, "STATUS=");
	if (e) {
		free(s->status);
		s->status = NULL;
		if (*e && !utf8_is_valid(e))
			say(s, "Status message in notification message is not UTF-8 clean, ignoring.");
		else if (*e)
			s->status = strdup(e);
	}
	e = field(tags, n, "ERRNO=");
	if (e) {
		char *end;
		long v = strtol(e, &end, 10);
		if (*e && !*end && v >= 0 && v <= 4095)
			s->status_errno = (int)v;
		else
			say(s, "Failed to parse ERRNO= field value '%s' in notification message", e);
	}
	e = field(tags, n, "WATCHDOG=");
	if (e) {
		if (strcmp(e, "1") == 0)
			s->c.watchdog++;
		else if (strcmp(e, "trigger") == 0)
			say(s, "Watchdog request (last status: %s)! (not emulated: the service keeps running)",
			    s->status ? s->status : "<unset>");
		else
			say(s, "Passed WATCHDOG= field is invalid, ignoring.");
	}

	if (has(tags, n, "FDSTOREREMOVE=1")) {
		const char *name = field(tags, n, "FDNAME=");
		if (!name || !fdname_is_valid(name))
			say(s, "FDSTOREREMOVE=1 requested, but no valid file descriptor name passed, ignoring.");
		else
			store_remove_locked(s, name);
	} else if (has(tags, n, "FDSTORE=1")) {
		const char *name = field(tags, n, "FDNAME=");
		if (name && !fdname_is_valid(name)) {
			say(s, "Passed FDNAME= name is invalid, ignoring.");
			name = NULL;
		}
		store_add_set_locked(s, fds, nfds, name, !has(tags, n, "FDPOLL=0"));
	}
}

/* One datagram: 1 processed (or dropped), 0 nothing queued, <0 error. */
static int receive_one_locked(struct fds_state *s)
{
	char buf[NOTIFY_BUFFER_MAX + 1];
	union {
		struct cmsghdr align;
		uint8_t b[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * NOTIFY_FD_MAX)];
	} control;
	struct iovec iov = { .iov_base = buf, .iov_len = NOTIFY_BUFFER_MAX };
	struct msghdr m = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = &control,
		.msg_controllen = sizeof(control),
	};
	ssize_t n = recvmsg(s->notify_fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
	if (n < 0)
		return errno == EAGAIN ? 0 : errno == EINTR ? 1 : -errno;

	int fds[NOTIFY_FD_MAX + 1];
	size_t nfds = 0;
	struct ucred cred = { 0 };
	bool have_cred = false;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level != SOL_SOCKET)
			continue;
		if (c->cmsg_type == SCM_RIGHTS) {
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k && nfds < NOTIFY_FD_MAX; i++)
				memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		} else if (c->cmsg_type == SCM_CREDENTIALS &&
			   c->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
			memcpy(&cred, CMSG_DATA(c), sizeof(cred));
			have_cred = true;
		}
	}
	s->c.fds_received += (unsigned)nfds;

	const char *why = NULL;
	if (m.msg_flags & MSG_CTRUNC)
		why = "its control data was truncated (too many fds)";
	else if (!have_cred || cred.pid <= 0)
		why = "it has no valid credentials";
	else if (n > NOTIFY_BUFFER_MAX || (m.msg_flags & MSG_TRUNC))
		why = "it exceeded the maximum size";
	else if (n > 1 && memchr(buf, 0, (size_t)n - 1))
		why = "it has embedded NUL bytes";
	else if (s->o.notify_access == FDS_NOTIFY_MAIN && cred.pid != s->main_pid)
		why = s->main_pid ? "reception is only permitted for the main pid"
				  : "reception is only permitted for the main pid, which is not known";
	if (why) {
		say(s, "Got notification message from PID %d, ignoring: %s.", (int)cred.pid, why);
		s->c.ignored++;
		s->c.extra_closed += (unsigned)nfds;
		close_fds(fds, nfds);
		return 1;
	}
	buf[n] = '\0';
	s->c.messages++;

	/* strv_split(buf, "\n\r"): empty lines are dropped. */
	char *tags[NOTIFY_BUFFER_MAX / 2 + 1];
	size_t nt = 0;
	for (char *save = NULL, *t = strtok_r(buf, "\n\r", &save); t; t = strtok_r(NULL, "\n\r", &save))
		tags[nt++] = t;
	for (size_t i = 0; i < nt; i++)
		record_line_locked(s, tags[i]);

	bool barrier = nt == 1 && strcmp(tags[0], "BARRIER=1") == 0;
	if (!barrier)
		interpret_locked(s, tags, nt, fds, nfds);

	size_t left = 0;
	for (size_t i = 0; i < nfds; i++)
		left += fds[i] >= 0;
	if (left && !barrier) {
		say(s, "Got %zu extra auxiliary fds with notification message, closing them.", left);
		s->c.extra_closed += (unsigned)left;
	}
	close_fds(fds, nfds); /* a barrier's fd: closing it answers the barrier */
	return 1;
}

static void drain_locked(struct fds_state *s)
{
	int r;
	while ((r = receive_one_locked(s)) > 0)
		;
	if (r < 0)
		say(s, "Failed to receive notification message: %s", strerror(-r));
}

static void *pump(void *arg)
{
	struct fds_state *s = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	struct pollfd p[3] = {
		{ .fd = s->notify_fd, .events = POLLIN },
		{ .fd = s->epoll_fd, .events = POLLIN },
		{ .fd = s->wake[0], .events = POLLIN },
	};
	for (;;) {
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			say(s, "poll: %s; the notify socket is no longer served", strerror(errno));
			return NULL;
		}
		if (p[2].revents)
			return NULL;
		pthread_mutex_lock(&s->lock);
		if (p[0].revents & POLLIN)
			drain_locked(s);
		if (p[1].revents & POLLIN)
			hangups_locked(s);
		s->events++;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
}

/* Waits until the pump thread processed something after `seen`, ms at most. */
static void wait_events(struct fds_state *s, uint64_t seen, int ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_nsec += (long)ms * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&s->lock);
	while (s->events == seen)
		if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&s->lock);
}

/* ---- the service process (test thread) ---- */

/* True once the instance ended. Reaps it (waiting timeout_ms at most): kills
 * what is left of its process group, processes what it sent before it died
 * (systemd handles the notify socket before SIGCHLD), then forgets its pid. */
static bool reap(struct fds *h, int timeout_ms)
{
	struct fds_state *s = h->s;
	if (!s->child)
		return false;
	if (s->reaped)
		return true;
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		int r = waitid(P_PID, (id_t)s->child, &si, WEXITED | WNOHANG | WNOWAIT);
		if (r == 0 && si.si_pid == s->child)
			break;
		if (r < 0 && errno == ECHILD) {
			say(s, "pid %d vanished (reaped by someone else?)", (int)s->child);
			break;
		}
		if (now_ms() >= deadline)
			return false;
		sleep_ms(2);
	}
	kill(-s->child, SIGKILL); /* its group, while the zombie keeps the pgid alive */
	int st = -1;
	if (waitpid(s->child, &st, 0) < 0)
		st = -1;
	pthread_mutex_lock(&s->lock);
	drain_locked(s);
	s->main_pid = 0;
	s->events++;
	pthread_mutex_unlock(&s->lock);
	s->reaped = true;
	s->exit_status = st;
	h->pid = 0;
	return true;
}

static void fmt_uint(char *out, unsigned long v)
{
	char tmp[24];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*out++ = tmp[--n];
	*out = '\0';
}

struct spawn {
	char **argv, **envp;
	int *src, *tmp;
	size_t n;
	int null_fd, log_fd;
	char *listen_pid, *watchdog_pid; /* "LISTEN_PID=" + room, filled in the child */
	struct rlimit nofile;
};

/* After fork: async-signal-safe calls only. */
__attribute__((noreturn)) static void child_exec(struct spawn *sp)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL);
	setsid();
	if (dup2(sp->null_fd, 0) < 0 || dup2(sp->log_fd, 1) < 0 || dup2(sp->log_fd, 2) < 0)
		_exit(EXIT_EXEC);
	/* Out of the way first (a source may sit where another goes), then into
	 * place: dup2 clears FD_CLOEXEC on exactly the passed fds. */
	int first_free = 3 + (int)sp->n;
	for (size_t i = 0; i < sp->n; i++)
		if ((sp->tmp[i] = fcntl(sp->src[i], F_DUPFD_CLOEXEC, first_free)) < 0)
			_exit(EXIT_EXEC);
	for (size_t i = 0; i < sp->n; i++)
		if (dup2(sp->tmp[i], 3 + (int)i) < 0)
			_exit(EXIT_EXEC);
#ifdef SYS_close_range
	if (syscall(SYS_close_range, (unsigned)first_free, ~0u, 0) < 0)
#endif
	{
		struct rlimit cur;
		if (getrlimit(RLIMIT_NOFILE, &cur) < 0 || cur.rlim_cur > 1048576)
			cur.rlim_cur = 1048576;
		for (rlim_t fd = (rlim_t)first_free; fd < cur.rlim_cur; fd++)
			close((int)fd);
	}
	/* The test's own limit, but room for what is passed (the unit's
	 * LimitNOFILE= would give that). */
	setrlimit(RLIMIT_NOFILE, &sp->nofile);
	if (sp->listen_pid)
		fmt_uint(sp->listen_pid + strlen("LISTEN_PID="), (unsigned long)getpid());
	if (sp->watchdog_pid)
		fmt_uint(sp->watchdog_pid + strlen("WATCHDOG_PID="), (unsigned long)getpid());
	execve(sp->argv[0], sp->argv, sp->envp);
	_exit(EXIT_EXEC);
}

static bool env_is_ours(const char *e)
{
	static const char *const ours[] = { "NOTIFY_SOCKET=", "LISTEN_FDS=", "LISTEN_PID=",
					    "LISTEN_FDNAMES=", "FDSTORE=", "WATCHDOG_USEC=",
					    "WATCHDOG_PID=", "MAINPID=" };
	for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
		if (strncmp(e, ours[i], strlen(ours[i])) == 0)
			return true;
	return false;
}

static int spawn(struct fds *h)
{
	struct fds_state *s = h->s;
	struct spawn sp = { .argv = s->argv, .null_fd = -1, .log_fd = -1, .nofile = s->nofile };
	char *added[MAX_ENV_ADD] = { 0 };
	size_t nadd = 0;
	char *names = NULL;
	int r = 0;

	sp.log_fd = open(h->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	sp.null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (sp.log_fd < 0 || sp.null_fd < 0) {
		r = -errno;
		goto out;
	}

	/* The lock stays held across fork so the pump thread can't close a
	 * stored fd between this snapshot and the child's dup. */
	pthread_mutex_lock(&s->lock);
	sp.n = (s->listen_fd >= 0) + s->n_store;
	if (sp.nofile.rlim_cur < 3 + sp.n + 256)
		sp.nofile.rlim_cur = sp.nofile.rlim_max == RLIM_INFINITY || sp.nofile.rlim_max > 3 + sp.n + 256
					     ? 3 + sp.n + 256
					     : sp.nofile.rlim_max;
	sp.src = calloc(sp.n + 1, sizeof(int));
	sp.tmp = calloc(sp.n + 1, sizeof(int));
	size_t nlen = 1;
	for (size_t i = 0; i < s->n_store; i++)
		nlen += strlen(s->store[i].name) + 1;
	names = malloc(nlen + sizeof(FDS_LISTEN_NAME) + 32);
	size_t nenv = 0;
	while (environ[nenv])
		nenv++;
	sp.envp = calloc(nenv + MAX_ENV_ADD + 1, sizeof(char *));
	if (!sp.src || !sp.tmp || !names || !sp.envp) {
		pthread_mutex_unlock(&s->lock);
		r = -ENOMEM;
		goto out;
	}
	size_t k = 0;
	char *p = stpcpy(names, "LISTEN_FDNAMES=");
	if (s->listen_fd >= 0) {
		sp.src[k++] = s->listen_fd;
		p = stpcpy(p, FDS_LISTEN_NAME);
	}
	for (size_t i = s->n_store; i-- > 0;) { /* newest first: systemd prepends */
		if (k)
			*p++ = ':';
		sp.src[k++] = s->store[i].fd;
		p = stpcpy(p, s->store[i].name);
	}

	size_t ne = 0;
	for (size_t i = 0; i < nenv; i++)
		if (!env_is_ours(environ[i]))
			sp.envp[ne++] = environ[i];
	if (asprintf(&added[nadd++], "NOTIFY_SOCKET=%s", h->notify) < 0)
		added[--nadd] = NULL;
	if (sp.n) {
		if (asprintf(&added[nadd++], "LISTEN_FDS=%zu", sp.n) < 0)
			added[--nadd] = NULL;
		added[nadd++] = names;
		names = NULL;
		if ((added[nadd] = calloc(1, 40))) {
			strcpy(added[nadd], "LISTEN_PID=");
			sp.listen_pid = added[nadd++];
		}
	}
	if (s->o.store_max > 0 && asprintf(&added[nadd++], "FDSTORE=%u", s->o.store_max) < 0)
		added[--nadd] = NULL;
	if (s->o.watchdog_usec) {
		if (asprintf(&added[nadd++], "WATCHDOG_USEC=%llu",
			     (unsigned long long)s->o.watchdog_usec) < 0)
			added[--nadd] = NULL;
		if ((added[nadd] = calloc(1, 40))) {
			strcpy(added[nadd], "WATCHDOG_PID=");
			sp.watchdog_pid = added[nadd++];
		}
	}
	size_t want = 1 + (sp.n ? 3 : 0) + (s->o.store_max > 0) + (s->o.watchdog_usec ? 2 : 0);
	if (nadd != want) {
		pthread_mutex_unlock(&s->lock);
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nadd; i++)
		sp.envp[ne++] = added[i];

	s->instance++;
	dprintf(sp.log_fd, "---- fdstore: start %u: %s, %zu fds ----\n", s->instance, s->argv[0],
		sp.n);
	pid_t pid = fork();
	if (pid == 0)
		child_exec(&sp);
	if (pid < 0) {
		r = -errno;
		pthread_mutex_unlock(&s->lock);
		goto out;
	}
	s->child = pid;
	s->reaped = false;
	h->pid = pid;
	s->main_pid = pid;
	s->ready = s->stopping = false;
	free(s->status);
	s->status = NULL;
	s->status_errno = 0;
	s->mainpid_field = 0;
	s->cursor = s->next_seq;
	s->c.starts++;
	pthread_mutex_unlock(&s->lock);
	debug(s, "started %s as pid %d with %zu fds", s->argv[0], (int)pid, sp.n);
out:
	for (size_t i = 0; i < nadd; i++)
		free(added[i]);
	free(names);
	free(sp.envp);
	free(sp.src);
	free(sp.tmp);
	if (sp.log_fd >= 0)
		close(sp.log_fd);
	if (sp.null_fd >= 0)
		close(sp.null_fd);
	return r;
}

static void free_argv(char **argv)
{
	for (size_t i = 0; argv && argv[i]; i++)
		free(argv[i]);
	free(argv);
}

int fds_set_argv(struct fds *h, const char *const *argv)
{
	if (!h->s || !argv || !argv[0])
		return -EINVAL;
	size_t n = 0;
	while (argv[n])
		n++;
	char **copy = calloc(n + 1, sizeof(char *));
	if (!copy)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (!(copy[i] = strdup(argv[i]))) {
			free_argv(copy);
			return -ENOMEM;
		}
	free_argv(h->s->argv);
	h->s->argv = copy;
	return 0;
}

static int start_and_wait(struct fds *h)
{
	struct fds_state *s = h->s;
	if (fds_running(h))
		return -EBUSY;
	s->child = 0; /* an ended instance nobody collected */
	int r = spawn(h);
	if (r < 0) {
		say(s, "cannot start %s: %s", s->argv[0], strerror(-r));
		return r;
	}
	int64_t deadline = now_ms() + s->o.start_timeout_ms;
	for (;;) {
		pthread_mutex_lock(&s->lock);
		bool ready = s->ready;
		uint64_t seen = s->events;
		pthread_mutex_unlock(&s->lock);
		if (ready)
			return 0;
		if (reap(h, 0)) {
			pthread_mutex_lock(&s->lock);
			ready = s->ready; /* READY=1 sent just before it ended */
			pthread_mutex_unlock(&s->lock);
			if (ready)
				return 0;
			int st = s->exit_status;
			say(s, "%s (pid %d) ended before READY=1: %s %d", s->argv[0], (int)s->child,
			    WIFSIGNALED(st) ? "signal" : "exit status",
			    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
			return -ECHILD;
		}
		if (now_ms() >= deadline) {
			say(s, "%s (pid %d): no READY=1 within %d ms, terminating", s->argv[0],
			    (int)s->child, s->o.start_timeout_ms);
			fds_stop(h, SIGTERM);
			return -ETIMEDOUT;
		}
		wait_events(s, seen, 10);
	}
}

int fds_start(struct fds *h, const char *const *argv)
{
	if (!h->s)
		return -EINVAL;
	if (fds_running(h))
		return -EBUSY;
	int r = fds_set_argv(h, argv);
	return r < 0 ? r : start_and_wait(h);
}

int fds_restart(struct fds *h, int sig)
{
	if (!h->s || !h->s->argv)
		return -EINVAL;
	if (h->s->child)
		fds_stop(h, sig);
	return start_and_wait(h);
}

int fds_stop(struct fds *h, int sig)
{
	struct fds_state *s = h->s;
	if (!s || !s->child)
		return -ESRCH;
	bool timed_out = false;
	if (!s->reaped) {
		if (sig) {
			kill(-s->child, sig);
			kill(s->child, sig);
			if (sig == SIGTERM) { /* systemd follows SIGTERM with SIGCONT */
				kill(-s->child, SIGCONT);
				kill(s->child, SIGCONT);
			}
		}
		if (!reap(h, s->o.stop_timeout_ms)) {
			say(s, "pid %d did not end within %d ms (signal %d sent), sending SIGKILL",
			    (int)s->child, s->o.stop_timeout_ms, sig);
			kill(-s->child, SIGKILL);
			kill(s->child, SIGKILL);
			timed_out = true;
			if (!reap(h, 10000))
				say(s, "pid %d survives SIGKILL; abandoning it", (int)s->child);
		}
	}
	s->child = 0;
	h->pid = 0;
	return timed_out ? -ETIMEDOUT : s->exit_status;
}

bool fds_running(struct fds *h)
{
	return h->s && h->s->child && !reap(h, 0);
}

int fds_exit_status(const struct fds *h)
{
	return h->s ? h->s->exit_status : -1;
}

int fds_start_dmabrokerd(struct fds *h, const char *extra_config, const char *const *args)
{
	const char *bin = getenv("DMABROKERD");
	if (!h->s)
		return -EINVAL;
	if (!bin)
		return -ENOENT;
	char cfg[sizeof(h->dir) + 32];
	snprintf(cfg, sizeof(cfg), "%s/dmabroker.conf", h->dir);
	FILE *f = fopen(cfg, "we");
	if (!f)
		return -errno;
	/* socket= is the path the listener serves: the daemon uses the
	 * inherited fd and, not owning the path, leaves it alone. */
	fprintf(f, "[daemon]\nsocket = %s\nsocket_mode = 0666\nbackend = sim\nlog_level = debug\n%s\n",
		h->sock, extra_config ? extra_config : "");
	if (fclose(f) != 0)
		return -EIO;
	const char *argv[20] = { bin, "--config", cfg };
	size_t n = 3;
	for (size_t i = 0; args && args[i]; i++) {
		if (n + 1 >= sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = args[i];
	}
	return fds_start(h, argv);
}

/* ---- set-up and tear-down ---- */

struct fds_opts fds_default_opts(void)
{
	return (struct fds_opts){
		.store_max = FDS_DEFAULT_STORE_MAX,
		.notify_access = FDS_NOTIFY_MAIN,
		.compare = FDS_CMP_AUTO,
		.listen = true,
		.start_timeout_ms = 10000,
		.stop_timeout_ms = 10000,
	};
}

static int bind_unix(int type, const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(a.sun_path))
		return -ENAMETOOLONG;
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

int fds_init(struct fds *h, const struct fds_opts *o)
{
	memset(h, 0, sizeof(*h));
	struct fds_state *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	h->s = s;
	s->o = o ? *o : fds_default_opts();
	if (s->o.start_timeout_ms <= 0 || s->o.stop_timeout_ms <= 0) {
		free(s);
		h->s = NULL;
		return -EINVAL;
	}
	s->debug = getenv("FDSTORE_DEBUG") != NULL;
	s->notify_fd = s->listen_fd = s->epoll_fd = s->wake[0] = s->wake[1] = -1;
	s->exit_status = -1;
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cond, &ca);
	pthread_condattr_destroy(&ca);

	int r;
	snprintf(h->dir, sizeof(h->dir), "/tmp/dmb-fds-XXXXXX");
	if (!mkdtemp(h->dir)) {
		r = -errno;
		h->dir[0] = '\0';
		goto fail;
	}
	snprintf(h->sock, sizeof(h->sock), "%s/sock", h->dir);
	snprintf(h->notify, sizeof(h->notify), "%s/notify", h->dir);
	snprintf(h->log, sizeof(h->log), "%s/log", h->dir);

	if ((r = s->notify_fd = bind_unix(SOCK_DGRAM, h->notify)) < 0)
		goto fail;
	int one = 1, rcvbuf = 8 << 20; /* systemd enlarges its receive buffer too */
	if (setsockopt(s->notify_fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0) {
		r = -errno;
		goto fail;
	}
	setsockopt(s->notify_fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (s->o.listen) {
		if ((r = s->listen_fd = bind_unix(SOCK_SEQPACKET, h->sock)) < 0)
			goto fail;
		if (chmod(h->sock, 0666) < 0 || listen(s->listen_fd, SOMAXCONN) < 0) {
			r = -errno;
			goto fail;
		}
	}
	if ((s->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		r = -errno;
		goto fail;
	}
	/* Like the service manager, hold many fds; the service gets the test's
	 * own limit back. */
	getrlimit(RLIMIT_NOFILE, &s->nofile);
	struct rlimit raised = { s->nofile.rlim_max, s->nofile.rlim_max };
	setrlimit(RLIMIT_NOFILE, &raised);

	if ((r = -pthread_create(&s->thread, NULL, pump, s)) < 0)
		goto fail;
	s->thread_started = true;
	return 0;
fail:
	say(s, "fds_init: %s", strerror(-r));
	fds_destroy(h);
	return r;
}

void fds_destroy(struct fds *h)
{
	struct fds_state *s = h ? h->s : NULL;
	if (!s)
		return;
	if (s->child) {
		int st = fds_stop(h, SIGTERM);
		if (st != -ESRCH && st != 0 && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM))
			debug(s, "the service ended with status 0x%x", st);
	}
	if (s->thread_started) {
		(void)!write(s->wake[1], "x", 1);
		pthread_join(s->thread, NULL);
	}
	for (size_t i = 0; i < s->n_store; i++)
		close(s->store[i].fd);
	free(s->store);
	int fds[] = { s->notify_fd, s->listen_fd, s->epoll_fd, s->wake[0], s->wake[1] };
	close_fds(fds, sizeof(fds) / sizeof(fds[0]));
	for (size_t i = 0; i < LINES_KEPT; i++)
		free(s->ring[i].text);
	free(s->status);
	free_argv(s->argv);
	if (s->nofile.rlim_cur)
		setrlimit(RLIMIT_NOFILE, &s->nofile);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	if (h->dir[0]) {
		char cfg[sizeof(h->dir) + 32];
		snprintf(cfg, sizeof(cfg), "%s/dmabroker.conf", h->dir);
		unlink(cfg);
		unlink(h->sock);
		unlink(h->notify);
		unlink(h->log);
		rmdir(h->dir);
	}
	free(s);
	h->s = NULL;
	h->pid = 0;
}

/* ---- accessors ---- */

void fds_store_clear(struct fds *h)
{
	struct fds_state *s = h ? h->s : NULL;
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	debug(s, "stopped for good: closing %zu stored fds", s->n_store);
	while (s->n_store)
		entry_drop_locked(s, s->n_store - 1);
	pthread_mutex_unlock(&s->lock);
}

unsigned fds_store_count(struct fds *h)
{
	pthread_mutex_lock(&h->s->lock);
	unsigned n = (unsigned)h->s->n_store;
	pthread_mutex_unlock(&h->s->lock);
	return n;
}

unsigned fds_store_count_name(struct fds *h, const char *name)
{
	struct fds_state *s = h->s;
	unsigned n = 0;
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->n_store; i++)
		n += strcmp(s->store[i].name, name) == 0;
	pthread_mutex_unlock(&s->lock);
	return n;
}

char *fds_store_names(struct fds *h)
{
	struct fds_state *s = h->s;
	pthread_mutex_lock(&s->lock);
	size_t len = 1;
	for (size_t i = 0; i < s->n_store; i++)
		len += strlen(s->store[i].name) + 1;
	char *out = malloc(len), *p = out;
	if (out) {
		*p = '\0';
		for (size_t i = s->n_store; i-- > 0;) {
			if (p != out)
				*p++ = ':';
			p = stpcpy(p, s->store[i].name);
		}
	}
	pthread_mutex_unlock(&s->lock);
	return out;
}

int fds_store_dup(struct fds *h, const char *name, unsigned nth)
{
	struct fds_state *s = h->s;
	int r = -ENOENT;
	pthread_mutex_lock(&s->lock);
	for (size_t i = s->n_store; i-- > 0;)
		if (strcmp(s->store[i].name, name) == 0 && nth-- == 0) {
			r = fcntl(s->store[i].fd, F_DUPFD_CLOEXEC, 3);
			if (r < 0)
				r = -errno;
			break;
		}
	pthread_mutex_unlock(&s->lock);
	return r;
}

bool fds_ready(struct fds *h)
{
	pthread_mutex_lock(&h->s->lock);
	bool r = h->s->ready;
	pthread_mutex_unlock(&h->s->lock);
	return r;
}

bool fds_stopping(struct fds *h)
{
	pthread_mutex_lock(&h->s->lock);
	bool r = h->s->stopping;
	pthread_mutex_unlock(&h->s->lock);
	return r;
}

int fds_status(struct fds *h, char *buf, size_t len)
{
	struct fds_state *s = h->s;
	int r = -ENOENT;
	pthread_mutex_lock(&s->lock);
	if (s->status) {
		snprintf(buf, len, "%s", s->status);
		r = 0;
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

int fds_errno(struct fds *h)
{
	pthread_mutex_lock(&h->s->lock);
	int r = h->s->status_errno;
	pthread_mutex_unlock(&h->s->lock);
	return r;
}

pid_t fds_mainpid(struct fds *h)
{
	pthread_mutex_lock(&h->s->lock);
	pid_t r = h->s->mainpid_field;
	pthread_mutex_unlock(&h->s->lock);
	return r;
}

void fds_counters(struct fds *h, struct fds_counters *c)
{
	pthread_mutex_lock(&h->s->lock);
	*c = h->s->c;
	pthread_mutex_unlock(&h->s->lock);
}

int fds_wait_notify(struct fds *h, const char *pattern, int timeout_ms, char *line, size_t len)
{
	struct fds_state *s = h->s;
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		pthread_mutex_lock(&s->lock);
		uint64_t oldest = s->next_seq > LINES_KEPT ? s->next_seq - LINES_KEPT : 0;
		if (s->cursor < oldest)
			s->cursor = oldest;
		for (uint64_t q = s->cursor; q < s->next_seq; q++) {
			const struct line *l = &s->ring[q % LINES_KEPT];
			if (l->instance == s->instance && l->text && fnmatch(pattern, l->text, 0) == 0) {
				if (line && len)
					snprintf(line, len, "%s", l->text);
				s->cursor = q + 1;
				pthread_mutex_unlock(&s->lock);
				return 0;
			}
		}
		uint64_t seen = s->events;
		pthread_mutex_unlock(&s->lock);
		/* Ended: reap() drained what it sent, so one more scan decides. */
		bool ended = !s->child || s->reaped;
		if (ended)
			return -ECHILD;
		if (reap(h, 0))
			continue;
		if (now_ms() >= deadline)
			return -ETIMEDOUT;
		wait_events(s, seen, 10);
	}
}

void fds_dump_log(const struct fds *h)
{
	FILE *f = fopen(h->log, "re");
	if (!f)
		return;
	char buf[1024];
	fprintf(stderr, "---- service log %s ----\n", h->log);
	while (fgets(buf, sizeof(buf), f))
		fputs(buf, stderr);
	fprintf(stderr, "---- end of service log ----\n");
	fclose(f);
}

bool fds_log_has(const struct fds *h, const char *needle)
{
	FILE *f = fopen(h->log, "re");
	if (!f)
		return false;
	char buf[4096];
	bool hit = false;
	while (!hit && fgets(buf, sizeof(buf), f))
		hit = strstr(buf, needle) != NULL;
	fclose(f);
	return hit;
}

bool fds_wait_log(const struct fds *h, const char *needle, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	while (!fds_log_has(h, needle)) {
		if (now_ms() >= deadline)
			return false;
		struct timespec ts = { 0, 20 * 1000000L };
		nanosleep(&ts, NULL);
	}
	return true;
}
