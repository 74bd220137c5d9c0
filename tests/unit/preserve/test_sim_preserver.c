/* The simulated preserver end to end: the real dmb-sim-preserver program
 * ($DMB_SIM_PRESERVER) spawned per test, driven through preserve/sim.c and
 * its command line: create / preserve / kexec / retrieve / finish with the
 * bytes and seals of the files carried over, abort by closing the session,
 * each kernel rule it copies (EEXIST, ENOENT, EINVAL, ENOSPC, EBUSY, EIO,
 * the frozen size), and packets that must not bring it down. Each test ends
 * by checking that the server is still there and exits cleanly. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend/preserve/preserver.h"
#include "backend/preserve/sim_proto.h"

static struct {
	char dir[64];
	char sock[128];
	pid_t server;
	struct dmb_preserver *p;
} t;

static const char *program(void)
{
	const char *p = getenv("DMB_SIM_PRESERVER");
	if (!p)
		fail_msg("DMB_SIM_PRESERVER is not set (meson sets it)");
	return p;
}

/* Runs the program with args; returns its exit status, stdout in out. */
static int run(char *out, size_t n, const char *a1, const char *a2)
{
	int pfd[2];
	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(pfd[1], 1);
		execl(program(), "dmb-sim-preserver", a1, t.sock, a2, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	size_t used = 0;
	ssize_t k;
	while (used + 1 < n && (k = read(pfd[0], out + used, n - 1 - used)) > 0)
		used += (size_t)k;
	out[used] = '\0';
	close(pfd[0]);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static void kexec_ok(void)
{
	char out[256];
	assert_int_equal(run(out, sizeof(out), "kexec", NULL), 0);
	assert_non_null(strstr(out, "simulated kexec done"));
}

static char *status_json(void)
{
	static char out[65536];
	assert_int_equal(run(out, sizeof(out), "status", "--json"), 0);
	return out;
}

static int setup(void **state)
{
	(void)state;
	memset(&t, 0, sizeof(t));
	snprintf(t.dir, sizeof(t.dir), "/tmp/dmbpXXXXXX");
	assert_non_null(mkdtemp(t.dir));
	snprintf(t.sock, sizeof(t.sock), "%s/preserver.sock", t.dir);
	int pfd[2];
	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	t.server = fork();
	assert_true(t.server >= 0);
	if (t.server == 0) {
		dup2(pfd[1], 1);
		execl(program(), "dmb-sim-preserver", "serve", t.sock, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	char line[256] = "";
	FILE *f = fdopen(pfd[0], "r");
	assert_non_null(fgets(line, sizeof(line), f)); /* "listening on ..." */
	fclose(f);
	assert_non_null(strstr(line, "listening on"));
	char spec[160];
	snprintf(spec, sizeof(spec), "sim:%s", t.sock);
	struct dmb_err e = {0};
	assert_int_equal(preserver_open(spec, &t.p, &e), 0);
	assert_string_equal(t.p->ops->name, "sim");
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	preserver_close(t.p);
	/* still serving, and it exits cleanly when asked */
	int st = 0;
	assert_int_equal(waitpid(t.server, &st, WNOHANG), 0);
	kill(t.server, SIGTERM);
	assert_int_equal(waitpid(t.server, &st, 0), t.server);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t.dir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

/* A memfd of size bytes: byte i = (i * 13 + seed). */
static int pattern_memfd(size_t size, unsigned seed, unsigned flags)
{
	int fd = memfd_create("guest", MFD_CLOEXEC | flags);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	for (size_t i = 0; i < size; i++)
		m[i] = (uint8_t)(i * 13 + seed);
	munmap(m, size);
	return fd;
}

static void check_pattern(int fd, size_t size, unsigned seed)
{
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, size);
	uint8_t *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	for (size_t i = 0; i < size; i++)
		if (m[i] != (uint8_t)(i * 13 + seed))
			fail_msg("byte %zu is %#x, expected %#x", i, m[i], (uint8_t)(i * 13 + seed));
	munmap(m, size);
}

static int create(const char *name)
{
	struct dmb_err e = {0};
	int sfd = -1;
	if (t.p->ops->create_session(t.p, name, &sfd, &e) < 0)
		fail_msg("create %s: %s", name, e.msg);
	return sfd;
}

static int retrieve(const char *name)
{
	struct dmb_err e = {0};
	int sfd = -1;
	if (t.p->ops->retrieve_session(t.p, name, &sfd, &e) < 0)
		fail_msg("retrieve %s: %s", name, e.msg);
	return sfd;
}

static void preserve(int sfd, int fd, uint64_t token)
{
	struct dmb_err e = {0};
	if (t.p->ops->preserve_fd(t.p, sfd, fd, token, &e) < 0)
		fail_msg("preserve %#llx: %s", (unsigned long long)token, e.msg);
}

static int get_fd(int sfd, uint64_t token)
{
	struct dmb_err e = {0};
	int fd = -1;
	if (t.p->ops->retrieve_fd(t.p, sfd, token, &fd, &e) < 0)
		fail_msg("retrieve fd %#llx: %s", (unsigned long long)token, e.msg);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	return fd;
}

static void test_handoff_roundtrip(void **state)
{
	(void)state;
	struct dmb_err e = {0};
	assert_int_equal(t.p->ops->probe(t.p, &e), 0);

	int sfd = create("dmabroker");
	int a = pattern_memfd(65536, 1, MFD_ALLOW_SEALING);
	assert_int_equal(fcntl(a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	int b = pattern_memfd(4096, 2, 0); /* carries F_SEAL_SEAL */
	int c = pattern_memfd(8192, 3, 0);
	preserve(sfd, a, 1);
	preserve(sfd, b, 2);
	preserve(sfd, c, 3);
	/* written after PRESERVE_FD: the same pages go over */
	uint8_t *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
	assert_true(m != MAP_FAILED);
	assert_non_null(strstr(status_json(), "\"name\":\"dmabroker\",\"state\":\"outgoing\""));

	/* a dup (the fd store's copy) keeps the session when the daemon's
	 * own fd goes */
	int store = dup(sfd);
	close(sfd);
	kexec_ok();
	/* The old world is gone: the daemon, its memfds, the fd store. */
	int r = t.p->ops->preserve_fd(t.p, store, a, 9, &e);
	assert_true(r == -EPIPE || r == -ECONNRESET);
	assert_non_null(strstr(e.msg, "is closed"));
	close(store);
	memcpy(m, "written after preserve", 22);
	munmap(m, 4096);
	close(a);
	close(b);
	close(c);
	assert_non_null(strstr(status_json(), "\"name\":\"dmabroker\",\"state\":\"incoming\""));

	/* The next daemon. */
	sfd = retrieve("dmabroker");
	int ra = get_fd(sfd, 1);
	check_pattern(ra, 65536, 1);
	assert_int_equal(fcntl(ra, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW);
	int rb = get_fd(sfd, 2);
	assert_int_equal(fcntl(rb, F_GET_SEALS), F_SEAL_SEAL);
	char buf[22];
	assert_int_equal(pread(rb, buf, sizeof(buf), 0), 22);
	assert_memory_equal(buf, "written after preserve", 22);
	/* RETRIEVE_FD is repeatable */
	int ra2 = get_fd(sfd, 1);
	check_pattern(ra2, 65536, 1);
	/* a second retrieval of the session is EINVAL */
	int other = -1;
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->retrieve_session(t.p, "dmabroker", &other, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "already retrieved"));
	assert_non_null(strstr(status_json(), "\"state\":\"retrieved\""));

	/* FINISH: token 3 was never retrieved and is discarded with it */
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->finish(t.p, sfd, &e), 0);
	assert_non_null(strstr(status_json(), "\"sessions\":[]"));
	/* the retrieved files stay the caller's */
	check_pattern(ra, 65536, 1);
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->retrieve_session(t.p, "dmabroker", &other, &e), -ENOENT);
	close(ra);
	close(ra2);
	close(rb);
	close(sfd);

	/* one more kexec carries nothing over */
	kexec_ok();
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->retrieve_session(t.p, "dmabroker", &other, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "no incoming handoff session named \"dmabroker\""));
}

static void test_abort_by_close(void **state)
{
	(void)state;
	int sfd = create("a");
	int fd = pattern_memfd(4096, 5, 0);
	preserve(sfd, fd, 1);
	close(sfd); /* its last reference: the session is aborted */
	assert_non_null(strstr(status_json(), "\"sessions\":[]"));
	/* the name is free again */
	sfd = create("a");
	close(sfd);
	kexec_ok();
	struct dmb_err e = {0};
	int other = -1;
	assert_int_equal(t.p->ops->retrieve_session(t.p, "a", &other, &e), -ENOENT);
	close(fd);
}

static void test_unretrieved_not_carried(void **state)
{
	(void)state;
	int sfd = create("x");
	int fd = pattern_memfd(4096, 6, 0);
	preserve(sfd, fd, 1);
	kexec_ok(); /* x is incoming now */
	close(sfd);
	kexec_ok(); /* nobody retrieved it: gone */
	struct dmb_err e = {0};
	int other = -1;
	assert_int_equal(t.p->ops->retrieve_session(t.p, "x", &other, &e), -ENOENT);

	/* a retrieved session closed without FINISH is finished by the close */
	sfd = create("y");
	preserve(sfd, fd, 1);
	kexec_ok();
	close(sfd);
	sfd = retrieve("y");
	close(sfd);
	assert_non_null(strstr(status_json(), "\"sessions\":[]"));
	close(fd);
}

static void test_kernel_rules(void **state)
{
	(void)state;
	struct dmb_err e = {0};
	int sfd = create("rules"), other = -1;
	/* EEXIST: duplicate outgoing name */
	assert_int_equal(t.p->ops->create_session(t.p, "rules", &other, &e), -EEXIST);
	assert_int_equal(e.code, DMB_E_ALREADY_EXISTS);
	/* ENOENT: unknown incoming name (an outgoing one does not count) */
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->retrieve_session(t.p, "rules", &other, &e), -ENOENT);
	assert_int_equal(e.code, DMB_E_NOT_FOUND);
	/* EEXIST: duplicate token */
	int fd = pattern_memfd(4096, 7, 0);
	preserve(sfd, fd, 77);
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->preserve_fd(t.p, sfd, fd, 77, &e), -EEXIST);
	assert_non_null(strstr(e.msg, "token 0x4d is already used"));
	/* RETRIEVE_FD and FINISH are for incoming sessions */
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->retrieve_fd(t.p, sfd, 77, &other, &e), -EINVAL);
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->finish(t.p, sfd, &e), -EINVAL);
	/* ENOSPC at 128 files */
	for (uint64_t tok = 100; tok < 227; tok++) { /* 127 more */
		int m = memfd_create("f", MFD_CLOEXEC);
		preserve(sfd, m, tok);
		close(m); /* the preserver holds its own reference */
	}
	int m = memfd_create("f", MFD_CLOEXEC);
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->preserve_fd(t.p, sfd, m, 9999, &e), -ENOSPC);
	assert_non_null(strstr(e.msg, "128 files"));
	close(m);
	kexec_ok();
	close(sfd);
	sfd = retrieve("rules");
	/* ENOENT: unknown token */
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->retrieve_fd(t.p, sfd, 9999, &other, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "no file with token 0x270f"));
	/* PRESERVE_FD into an incoming session */
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->preserve_fd(t.p, sfd, fd, 5000, &e), -EINVAL);
	int got = get_fd(sfd, 77);
	check_pattern(got, 4096, 7);
	close(got);
	close(sfd);
	close(fd);
}

static void expect_refused(int sfd, int fd, const char *what)
{
	static uint64_t token = 1000;
	struct dmb_err e = {0};
	int r = t.p->ops->preserve_fd(t.p, sfd, fd, token++, &e);
	if (r != -ENOENT)
		fail_msg("%s: %d (%s), expected ENOENT", what, r, e.msg);
	assert_non_null(strstr(e.msg, "cannot be preserved"));
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
}

static void test_file_types(void **state)
{
	(void)state;
	int sfd = create("types");
	/* a named tmpfs file: refused; the same file unlinked: accepted */
	char path[128];
	snprintf(path, sizeof(path), "/dev/shm/dmbp-%d", getpid());
	int named = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(named >= 0);
	assert_int_equal(ftruncate(named, 4096), 0);
	expect_refused(sfd, named, "named tmpfs file");
	assert_int_equal(unlink(path), 0);
	preserve(sfd, named, 1);
	close(named);
	/* a pipe, a socket, a directory, /dev/null */
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	expect_refused(sfd, p[0], "pipe");
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	expect_refused(sfd, s, "socket");
	int d = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	expect_refused(sfd, d, "directory");
	int n = open("/dev/null", O_RDWR | O_CLOEXEC);
	expect_refused(sfd, n, "/dev/null");
	close(p[0]);
	close(p[1]);
	close(s);
	close(d);
	close(n);
	/* an fd the caller does not have */
	struct dmb_err e = {0};
	assert_int_equal(t.p->ops->preserve_fd(t.p, sfd, -1, 2, &e), -EBADF);
	close(sfd);
}

static void test_hugetlb_refused(void **state)
{
	(void)state;
	int h = memfd_create("huge", MFD_CLOEXEC | MFD_HUGETLB);
	if (h < 0)
		skip(); /* no hugetlbfs in this kernel: nothing to refuse */
	int sfd = create("huge");
	expect_refused(sfd, h, "hugetlb memfd");
	close(h);
	close(sfd);
}

static void test_size_frozen(void **state)
{
	(void)state;
	int sfd = create("frozen");
	int fd = pattern_memfd(8192, 8, 0);
	preserve(sfd, fd, 1);
	assert_int_equal(ftruncate(fd, 16384), 0); /* the kernel would say EPERM */
	char out[512];
	assert_int_equal(run(out, sizeof(out), "kexec", NULL), 1);
	/* nothing changed: still outgoing, the kexec can be retried */
	char *js = status_json();
	assert_non_null(strstr(js, "\"state\":\"outgoing\""));
	assert_non_null(strstr(js, "\"size\":8192,\"size_now\":16384"));
	assert_non_null(strstr(js, "\"kexecs\":0"));
	assert_int_equal(ftruncate(fd, 8192), 0);
	kexec_ok();
	close(sfd);
	sfd = retrieve("frozen");
	int got = get_fd(sfd, 1);
	check_pattern(got, 8192, 8);
	close(got);
	close(sfd);
	close(fd);
}

static void test_kexec_failure_message(void **state)
{
	(void)state;
	int sfd = create("msg");
	int fd = pattern_memfd(4096, 9, 0);
	preserve(sfd, fd, 0x10);
	assert_int_equal(ftruncate(fd, 0), 0);
	/* the reason goes to stderr: run through a shell to catch it */
	char cmd[512], out[512] = "";
	snprintf(cmd, sizeof(cmd), "'%s' kexec '%s' 2>&1", program(), t.sock);
	FILE *f = popen(cmd, "r");
	assert_non_null(f);
	size_t k = fread(out, 1, sizeof(out) - 1, f);
	out[k] = '\0';
	int st = pclose(f);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	assert_non_null(strstr(out, "token 0x10 changed size from 4096 to 0"));
	close(sfd);
	close(fd);
}

static void test_hold_busy(void **state)
{
	(void)state;
	int pfd[2];
	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	pid_t holder = fork();
	assert_true(holder >= 0);
	if (holder == 0) {
		dup2(pfd[1], 1);
		execl(program(), "dmb-sim-preserver", "hold", t.sock, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	char line[256] = "";
	FILE *f = fdopen(pfd[0], "r");
	assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	assert_non_null(strstr(line, "holding"));
	assert_non_null(strstr(status_json(), "\"held\":true"));

	struct dmb_err e = {0};
	int sfd = -1;
	assert_int_equal(t.p->ops->create_session(t.p, "busy", &sfd, &e), -EBUSY);
	assert_int_equal(e.code, DMB_E_UNAVAILABLE);
	assert_non_null(strstr(e.msg, "is held by another process (EBUSY)"));
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->retrieve_session(t.p, "busy", &sfd, &e), -EBUSY);
	/* a second holder is refused too */
	char out[256];
	assert_int_equal(run(out, sizeof(out), "hold", NULL), 1);

	kill(holder, SIGTERM);
	int st;
	assert_int_equal(waitpid(holder, &st, 0), holder);
	sfd = create("busy");
	close(sfd);
}

static void test_incompatible(void **state)
{
	(void)state;
	int sfd = create("inc");
	int fd = pattern_memfd(4096, 10, 0);
	preserve(sfd, fd, 1);
	char out[256];
	assert_int_equal(run(out, sizeof(out), "kexec", "--incompatible"), 0);
	close(sfd);
	struct dmb_err e = {0};
	int other = -1;
	assert_int_equal(t.p->ops->retrieve_session(t.p, "inc", &other, &e), -EIO);
	assert_non_null(strstr(e.msg, "could not read the handoff data"));
	dmb_err_clear(&e);
	assert_int_equal(t.p->ops->create_session(t.p, "new", &other, &e), -EIO);
	/* the kernel after the next kexec reads its data again */
	kexec_ok();
	sfd = create("new");
	close(sfd);
	close(fd);
}

static void test_not_listening(void **state)
{
	(void)state;
	struct dmb_preserver *p = NULL;
	struct dmb_err e = {0};
	assert_int_equal(preserver_open("sim:/nonexistent/dmbp.sock", &p, &e), 0);
	assert_int_equal(p->ops->probe(p, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "is not listening"));
	assert_non_null(strstr(e.msg, "dmb-sim-preserver serve /nonexistent/dmbp.sock"));
	int sfd = -1;
	dmb_err_clear(&e);
	assert_int_equal(p->ops->create_session(p, "x", &sfd, &e), -ENOENT);
	preserver_close(p);
}

static int raw_connect(void)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	assert_true(strlen(t.sock) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, t.sock, strlen(t.sock) + 1);
	assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return s;
}

/* Sends len bytes of buf with nfds copies of fd attached. */
static void raw_send(int s, const void *buf, size_t len, int fd, int nfds)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 16)];
	} cm;
	memset(&cm, 0, sizeof(cm));
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		mh.msg_control = cm.b;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		for (int i = 0; i < nfds; i++)
			memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
	}
	assert_int_equal(sendmsg(s, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

static int raw_reply(int s)
{
	struct simp_reply rep;
	assert_int_equal(recv(s, &rep, sizeof(rep), 0), sizeof(rep));
	return rep.result;
}

static void test_garbage(void **state)
{
	(void)state;
	int s = raw_connect();
	/* short, long, wrong magic, wrong version, reserved set */
	raw_send(s, "abc", 3, -1, 0);
	assert_int_equal(raw_reply(s), -EBADMSG);
	char big[4096];
	memset(big, 0xff, sizeof(big));
	raw_send(s, big, sizeof(big), -1, 0);
	assert_int_equal(raw_reply(s), -EBADMSG);
	struct simp_req q = { .magic = SIMP_MAGIC ^ 1, .version = SIMP_VERSION, .op = SIMP_PING };
	raw_send(s, &q, sizeof(q), -1, 0);
	assert_int_equal(raw_reply(s), -EBADMSG);
	q.magic = SIMP_MAGIC;
	q.version = 99;
	raw_send(s, &q, sizeof(q), -1, 0);
	assert_int_equal(raw_reply(s), -EBADMSG);
	q.version = SIMP_VERSION;
	q.reserved = 1;
	raw_send(s, &q, sizeof(q), -1, 0);
	assert_int_equal(raw_reply(s), -EBADMSG);
	q.reserved = 0;
	/* unknown op; fds where none belong (closed by the server); too many */
	q.op = 999;
	raw_send(s, &q, sizeof(q), -1, 0);
	assert_int_equal(raw_reply(s), -EINVAL);
	int m = memfd_create("g", MFD_CLOEXEC);
	q.op = SIMP_PING;
	raw_send(s, &q, sizeof(q), m, 2);
	assert_int_equal(raw_reply(s), -EINVAL);
	raw_send(s, &q, sizeof(q), m, 12); /* more than the server takes: truncated */
	assert_int_equal(raw_reply(s), -EBADMSG);
	/* PRESERVE_FD on a connection that is no session; a name without NUL */
	q.op = SIMP_PRESERVE_FD;
	raw_send(s, &q, sizeof(q), m, 1);
	assert_int_equal(raw_reply(s), -EINVAL);
	q.op = SIMP_CREATE;
	memset(q.name, 'z', sizeof(q.name));
	raw_send(s, &q, sizeof(q), -1, 0);
	assert_int_equal(raw_reply(s), -EINVAL);
	q.name[0] = '\0';
	raw_send(s, &q, sizeof(q), -1, 0);
	assert_int_equal(raw_reply(s), -EINVAL);
	close(s);

	/* a client that never reads its replies */
	s = raw_connect();
	q.op = SIMP_PING;
	for (int i = 0; i < 2000; i++) {
		struct iovec iov = { .iov_base = &q, .iov_len = sizeof(q) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (sendmsg(s, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
			break;
	}
	close(s);
	/* and one that hangs up mid-request */
	s = raw_connect();
	raw_send(s, &q, sizeof(q), -1, 0);
	close(s);
	close(m);

	struct dmb_err e = {0};
	assert_int_equal(t.p->ops->probe(t.p, &e), 0);
}

/* A restarted daemon goes on with a session fd whose predecessor sent a
 * request and died before reading the reply. */
static void test_stale_reply_skipped(void **state)
{
	(void)state;
	int sfd = create("stale");
	struct simp_req q = { .magic = SIMP_MAGIC, .version = SIMP_VERSION, .op = SIMP_FINISH,
			      .id = 12345 };
	raw_send(sfd, &q, sizeof(q), -1, 0); /* answered EINVAL, never read */
	int fd = pattern_memfd(4096, 11, 0);
	preserve(sfd, fd, 1);
	kexec_ok();
	close(sfd);
	sfd = retrieve("stale");
	int got = get_fd(sfd, 1);
	check_pattern(got, 4096, 11);
	close(got);
	close(sfd);
	close(fd);
}

static void test_status_text(void **state)
{
	(void)state;
	int sfd = create("shown");
	int fd = pattern_memfd(4096, 12, 0);
	preserve(sfd, fd, 0xabc);
	char out[4096];
	assert_int_equal(run(out, sizeof(out), "status", NULL), 0);
	assert_non_null(strstr(out, "session \"shown\" outgoing, 1 file(s)"));
	assert_non_null(strstr(out, "token 0xabc size 4096"));
	assert_non_null(strstr(out, "device: free"));
	assert_int_equal(run(out, sizeof(out), "status", "--yaml"), 2);
	assert_int_equal(run(out, sizeof(out), "frobnicate", NULL), 2);
	close(sfd);
	close(fd);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_handoff_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abort_by_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unretrieved_not_carried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kernel_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_types, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hugetlb_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_size_frozen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kexec_failure_message, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hold_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incompatible, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_listening, setup, teardown),
		cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_reply_skipped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_text, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
