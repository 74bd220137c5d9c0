/* fdstore-probe: a tiny Type=notify service for test_fdstore. It talks to
 * the fdstore harness through the real libsystemd (sd_listen_fds_with_names,
 * sd_pid_notify_with_fds, sd_notify_barrier), so the harness is checked
 * against systemd's own client code.
 *
 * It runs its arguments as commands, in order; "name/param" pairs use '/'.
 *   fds=N0:N1:...     first: what was passed. N0 must come first (the
 *                     listener), the rest in any order; "-" = nothing. Also
 *                     checks LISTEN_PID, FD_CLOEXEC clear on exactly 3..,
 *                     no other fd open, fd 3 a listening SEQPACKET socket
 *                     when N0 is dmabroker.socket. fds=* checks all that
 *                     but the names after the first (dmabroker.socket).
 *   env=VAR/value     $VAR is value ("-": unset)
 *   ready | status=T | raw=A|B   READY=1, STATUS=T, "A\nB"
 *   store=N/k         k new memfds ("N#i" inside) in one FDSTORE=1 message;
 *                     N "-": no FDNAME=
 *   storeeach=N/k     the same, one message each
 *   redo=N            the first fd held as N again: itself twice and a dup()
 *   rename=N/M        the first fd held as N again, named M
 *   remove=N          FDSTOREREMOVE=1 FDNAME=N
 *   storeremove=N     FDSTORE=1 and FDSTOREREMOVE=1 for N, with a new memfd
 *   storesp=N[/np]    one end of a socketpair (np: FDPOLL=0); keeps the peer
 *   write=N/T         T into the first fd held as N
 *   check=N/T         every received fd named N begins with T
 *   count=N/k         k received fds are named N
 *   accept            accepts one queued connection on fd 3, sends "hello"
 *   barrier           sd_notify_barrier() succeeds
 *   watchdog          sd_watchdog_enabled() sees WATCHDOG_USEC/WATCHDOG_PID
 *   child=A|B         a forked child sends "A\nB" with a memfd
 *   loop=N            until killed (30 s at most): stores memfds as N, one
 *                     per message, counting them in the fd held as "journal";
 *                     at a full store ($FDSTORE) says STATUS=full and
 *                     stores no more
 *   journal=N         the received N fds number the journal's count or one
 *                     more (killed between a store and its count)
 *   ignoreterm | sleep=ms | hang (30 s at most, then exit 4) | exit=n
 * A failed check: STATUS=FAIL: <why> and exit status 1. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#define MAX_HELD 8192

struct held {
	int fd;
	bool received; /* passed at start, else made by this instance */
	char name[256];
};
static struct held held[MAX_HELD];
static size_t nheld;
static unsigned made; /* memfds made by this instance, for their content */

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "probe %d: FAIL: %s\n", (int)getpid(), msg);
	sd_notifyf(0, "STATUS=FAIL: %s", msg);
	exit(1);
}

static void hold(int fd, const char *name, bool received)
{
	if (nheld == MAX_HELD)
		fail("too many fds");
	held[nheld].fd = fd;
	held[nheld].received = received;
	snprintf(held[nheld].name, sizeof(held[nheld].name), "%s", name);
	nheld++;
}

static struct held *first_held_entry(const char *name)
{
	for (size_t i = 0; i < nheld; i++)
		if (strcmp(held[i].name, name) == 0)
			return &held[i];
	fail("no fd named %s is held", name);
}

static int first_held(const char *name)
{
	return first_held_entry(name)->fd;
}

/* "name/param": splits at the last '/'. */
static char *split(char *arg, char **param)
{
	char *slash = arg ? strrchr(arg, '/') : NULL;
	if (!slash)
		fail("\"%s\": want name/param", arg ? arg : "");
	*slash = '\0';
	*param = slash + 1;
	return arg;
}

static void bars_to_newlines(char *s)
{
	for (; *s; s++)
		if (*s == '|')
			*s = '\n';
}

static int new_memfd(const char *name)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		fail("memfd_create: %s", strerror(errno));
	char content[300];
	int len = snprintf(content, sizeof(content), "%s#%u", name, made++);
	if (pwrite(fd, content, (size_t)len + 1, 0) != len + 1)
		fail("pwrite: %s", strerror(errno));
	return fd;
}

static void notify_fds(const char *msg, const int *fds, unsigned n)
{
	int r = sd_pid_notify_with_fds(0, 0, msg, fds, n);
	if (r <= 0)
		fail("sd_pid_notify_with_fds(%s): %s", msg, r < 0 ? strerror(-r) : "no NOTIFY_SOCKET");
}

static void notify(const char *msg)
{
	notify_fds(msg, NULL, 0);
}

static void store(const char *name, unsigned k, bool each)
{
	char msg[300];
	if (strcmp(name, "-") == 0)
		snprintf(msg, sizeof(msg), "FDSTORE=1");
	else
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
	int fds[64];
	if (k > 64)
		fail("store: at most 64");
	for (unsigned i = 0; i < k; i++) {
		fds[i] = new_memfd(strcmp(name, "-") == 0 ? "stored" : name);
		hold(fds[i], strcmp(name, "-") == 0 ? "stored" : name, false);
		if (each)
			notify_fds(msg, &fds[i], 1);
	}
	if (!each)
		notify_fds(msg, fds, k);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void check_passed(char *want)
{
	const char *e = getenv("LISTEN_PID");
	if (strcmp(want, "-") != 0 && (!e || atol(e) != (long)getpid()))
		fail("LISTEN_PID=%s, my pid is %d", e ? e : "(unset)", (int)getpid());
	e = getenv("LISTEN_FDS");
	int n_env = e ? atoi(e) : 0;
	/* Before sd_listen_fds() sets FD_CLOEXEC: exactly 3..3+n-1 inherited. */
	for (int fd = 3; fd < 3 + n_env; fd++) {
		int fl = fcntl(fd, F_GETFD);
		if (fl < 0 || (fl & FD_CLOEXEC))
			fail("fd %d: %s", fd, fl < 0 ? "not open" : "FD_CLOEXEC set");
	}
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		fail("opendir /proc/self/fd: %s", strerror(errno));
	struct dirent *de;
	while ((de = readdir(d))) {
		int fd = atoi(de->d_name);
		if (de->d_name[0] != '.' && fd >= 3 + n_env && fd != dirfd(d))
			fail("fd %d is open but was not passed", fd);
	}
	closedir(d);

	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);
	if (n < 0)
		fail("sd_listen_fds_with_names: %s", strerror(-n));
	if (getenv("LISTEN_FDS") || getenv("LISTEN_PID") || getenv("LISTEN_FDNAMES"))
		fail("sd_listen_fds(unset) left LISTEN_* set");

	char *exp[MAX_HELD];
	int m = 0;
	if (strcmp(want, "*") == 0) {
		if (n < 1 || strcmp(names[0], "dmabroker.socket") != 0)
			fail("the listener is not passed first");
		static char listener[] = "dmabroker.socket";
		exp[m++] = listener;
		for (; m < n && m < MAX_HELD; m++)
			exp[m] = names[m];
	} else if (strcmp(want, "-") != 0)
		for (char *save = NULL, *t = strtok_r(want, ":", &save); t && m < MAX_HELD;
		     t = strtok_r(NULL, ":", &save))
			exp[m++] = t;
	if (n != m)
		fail("passed %d fds, want %d", n, m);
	for (int i = 0; i < n; i++)
		hold(SD_LISTEN_FDS_START + i, names[i], true);
	if (n > 0 && strcmp(names[0], exp[0]) != 0)
		fail("first fd named %s, want %s", names[0], exp[0]);
	if (n > 0 && strcmp(exp[0], "dmabroker.socket") == 0) {
		if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_SEQPACKET, 1, NULL, 0) <= 0)
			fail("fd 3 is not a listening SOCK_SEQPACKET unix socket");
		if (!(fcntl(SD_LISTEN_FDS_START, F_GETFL) & O_NONBLOCK))
			fail("fd 3 is blocking (systemd's listeners are O_NONBLOCK)");
	}
	/* qsort's array must not be NULL even for zero elements (UBSan). */
	if (n > 1)
		qsort(names + 1, (size_t)(n - 1), sizeof(char *), cmp_str);
	if (m > 1)
		qsort(exp + 1, (size_t)(m - 1), sizeof(char *), cmp_str);
	for (int i = 1; i < n; i++)
		if (strcmp(names[i], exp[i]) != 0)
			fail("passed names differ at sorted position %d: %s, want %s", i, names[i],
			     exp[i]);
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static void do_accept(void)
{
	int lfd = SD_LISTEN_FDS_START;
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	if (poll(&p, 1, 5000) != 1)
		fail("no connection queued on fd 3");
	int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		fail("accept: %s", strerror(errno));
	if (send(c, "hello", 5, MSG_NOSIGNAL) != 5)
		fail("send: %s", strerror(errno));
	close(c);
}

static void do_child(char *msg)
{
	bars_to_newlines(msg);
	pid_t pid = fork();
	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = memfd_create("child", MFD_CLOEXEC);
		_exit(sd_pid_notify_with_fds(0, 0, msg, &fd, 1) > 0 ? 0 : 1);
	}
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("the child could not notify");
}

static uint64_t journal_read(int fd)
{
	uint64_t v = 0;
	if (pread(fd, &v, sizeof(v), 0) != (ssize_t)sizeof(v))
		v = 0;
	return v;
}

static void journal_write(int fd, uint64_t v)
{
	if (pwrite(fd, &v, sizeof(v), 0) != (ssize_t)sizeof(v))
		fail("journal pwrite: %s", strerror(errno));
}

/* As the daemon must: an fd is journaled only if the store can keep it.
 * systemd drops an fd beyond FileDescriptorStoreMax with a log line of its
 * own and tells the service nothing, so a service that journals past
 * $FDSTORE journals objects the next instance will not get. What the store
 * holds now is what this instance was passed plus what it stored since. */
static size_t store_room(void)
{
	const char *v = getenv("FDSTORE");
	if (!v)
		fail("loop: no $FDSTORE, so no known store capacity");
	/* Every held fd is in the store but the socket-activation listener. */
	size_t cap = strtoul(v, NULL, 10), used = 0;
	for (size_t i = 0; i < nheld; i++)
		used += !(held[i].received && strcmp(held[i].name, "dmabroker.socket") == 0);
	return cap > used ? cap - used : 0;
}

static void do_loop(const char *name)
{
	struct held *j = first_held_entry("journal");
	int journal = j->fd;
	uint64_t count = j->received ? journal_read(journal) : 0;
	journal_write(journal, count);
	char msg[300];
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
	size_t room = store_room();
	bool full = false;
	time_t end = time(NULL) + 30;
	notify("STATUS=looping");
	while (time(NULL) < end) {
		if (room == 0) { /* full: store nothing more, wait to be killed */
			if (!full)
				notify("STATUS=full");
			full = true;
			usleep(10000);
			continue;
		}
		int fd = new_memfd(name);
		notify_fds(msg, &fd, 1);
		close(fd);
		room--;
		journal_write(journal, ++count);
		usleep(300);
	}
	exit(4);
}

static void do_journal(const char *name)
{
	int journal = first_held("journal");
	uint64_t k = journal_read(journal), m = 0;
	for (size_t i = 0; i < nheld; i++)
		m += held[i].received && strcmp(held[i].name, name) == 0;
	if (m != k && m != k + 1)
		fail("journal counts %" PRIu64 " stored %s, %" PRIu64 " were passed", k, name, m);
	sd_notifyf(0, "STATUS=journal %" PRIu64 " passed %" PRIu64, k, m);
	journal_write(journal, m);
}

static void run(char *cmd)
{
	char *arg = strchr(cmd, '='), *param;
	if (arg)
		*arg++ = '\0';
	else
		arg = cmd + strlen(cmd); /* "" */
	if (!strcmp(cmd, "fds")) {
		check_passed(arg);
	} else if (!strcmp(cmd, "env")) {
		char *var = split(arg, &param);
		const char *v = getenv(var);
		if (strcmp(param, "-") == 0 ? v != NULL : !v || strcmp(v, param) != 0)
			fail("$%s is %s, want %s", var, v ? v : "unset", param);
	} else if (!strcmp(cmd, "ready")) {
		notify("READY=1");
	} else if (!strcmp(cmd, "status")) {
		sd_notifyf(0, "STATUS=%s", arg);
	} else if (!strcmp(cmd, "raw")) {
		bars_to_newlines(arg);
		notify(arg);
	} else if (!strcmp(cmd, "store") || !strcmp(cmd, "storeeach")) {
		char *name = split(arg, &param);
		store(name, (unsigned)atoi(param), cmd[5] == 'e');
	} else if (!strcmp(cmd, "redo")) {
		int fd = first_held(arg), fds[3] = { fd, fd, dup(fd) };
		char msg[300];
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", arg);
		notify_fds(msg, fds, 3);
		close(fds[2]);
	} else if (!strcmp(cmd, "rename")) {
		char *name = split(arg, &param), msg[300];
		int fd = first_held(name);
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", param);
		notify_fds(msg, &fd, 1);
	} else if (!strcmp(cmd, "remove")) {
		char msg[300];
		snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", arg);
		notify(msg);
	} else if (!strcmp(cmd, "storeremove")) {
		char msg[300];
		int fd = new_memfd(arg);
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDSTOREREMOVE=1\nFDNAME=%s", arg);
		notify_fds(msg, &fd, 1);
		close(fd);
	} else if (!strcmp(cmd, "storesp")) {
		char *name = arg, *slash = strchr(arg, '/'), msg[300];
		param = NULL;
		if (slash) {
			*slash = '\0';
			param = slash + 1;
		}
		int sp[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
			fail("socketpair: %s", strerror(errno));
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s%s", name,
			 param && !strcmp(param, "np") ? "\nFDPOLL=0" : "");
		notify_fds(msg, &sp[0], 1);
		close(sp[0]);
		hold(sp[1], name, false);
	} else if (!strcmp(cmd, "write")) {
		char *name = split(arg, &param);
		if (pwrite(first_held(name), param, strlen(param) + 1, 0) < 0)
			fail("write %s: %s", name, strerror(errno));
	} else if (!strcmp(cmd, "check")) {
		char *name = split(arg, &param);
		unsigned seen = 0;
		for (size_t i = 0; i < nheld; i++) {
			if (!held[i].received || strcmp(held[i].name, name) != 0)
				continue;
			char buf[300] = "";
			if (pread(held[i].fd, buf, sizeof(buf) - 1, 0) < 0 ||
			    strncmp(buf, param, strlen(param)) != 0)
				fail("fd %d (%s) holds \"%s\", want \"%s...\"", held[i].fd, name, buf,
				     param);
			seen++;
		}
		if (!seen)
			fail("check: no fd named %s was passed", name);
	} else if (!strcmp(cmd, "count")) {
		char *name = split(arg, &param);
		unsigned k = 0;
		for (size_t i = 0; i < nheld; i++)
			k += held[i].received && strcmp(held[i].name, name) == 0;
		if (k != (unsigned)atoi(param))
			fail("%u fds named %s were passed, want %s", k, name, param);
	} else if (!strcmp(cmd, "accept")) {
		do_accept();
	} else if (!strcmp(cmd, "barrier")) {
		int r = sd_notify_barrier(0, 5 * 1000000ULL);
		if (r < 0)
			fail("sd_notify_barrier: %s", strerror(-r));
	} else if (!strcmp(cmd, "watchdog")) {
		uint64_t usec = 0;
		if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
			fail("sd_watchdog_enabled: no watchdog for this pid");
	} else if (!strcmp(cmd, "child")) {
		do_child(arg);
	} else if (!strcmp(cmd, "loop")) {
		do_loop(arg);
	} else if (!strcmp(cmd, "journal")) {
		do_journal(arg);
	} else if (!strcmp(cmd, "ignoreterm")) {
		signal(SIGTERM, SIG_IGN);
	} else if (!strcmp(cmd, "sleep")) {
		usleep((useconds_t)atoi(arg) * 1000);
	} else if (!strcmp(cmd, "hang")) {
		for (int i = 0; i < 300; i++)
			usleep(100000);
		exit(4);
	} else if (!strcmp(cmd, "exit")) {
		exit(atoi(arg));
	} else {
		fail("unknown command %s", cmd);
	}
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		run(argv[i]);
	return 0;
}
