/* File descriptors as a budgeted resource (docs/security.md, "Resource
 * model"):
 *
 * test_uid_fd_limit: a uid with `fds = 21` gets exactly what 21 fds buy
 * (one context and ten two-fd sim regions), summed over all its sessions,
 * then RESOURCE_EXHAUSTED naming the limit; meanwhile a client of another
 * uid connects and maps, proven by DMA.
 *
 * test_broker_budget: a daemon whose RLIMIT_NOFILE leaves it a budget of a
 * few dozen fds refuses objects past it with RESOURCE_EXHAUSTED naming the
 * budget (never a hang, never a sentence about packets), refuses a
 * non-admin connection at once, still lets the admin in, and serves again
 * once fds are given back.
 *
 * test_accept_out_of_fds: connections beyond what the fd table holds wait
 * in the backlog while the daemon stays idle (its CPU time from /proc, not
 * wall time) and logs it once; when sessions close it accepts again. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ull
#define UID_HOG 4545
#define UID_OTHER 4646

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Runs fn as uid in a child; its exit status (0: every check passed). */
typedef int (*as_fn)(const struct daemon *d);
static int run_as(const struct daemon *d, uid_t uid, as_fn fn)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0)
			_exit(250);
		_exit(fn(d));
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

#define CHECK(c, x)                                                                              \
	do {                                                                                     \
		if (!(x)) {                                                                      \
			fprintf(stderr, "check failed at line %d: %s (%s)\n", __LINE__, #x,      \
				(c) ? dmb_last_error(c)->message : "");                          \
			return __LINE__ % 250;                                                   \
		}                                                                                \
	} while (0)

/* Registers one-page regions in ctx until refused; returns how many. */
static int fill_regions(struct dmb_client *c, uint64_t ctx, int max)
{
	int m = make_memfd(PG, 7), n = 0;
	struct dmb_region_info ri;
	while (n < max && dmb_region_register(c, ctx, m, 0, &ri) == 0)
		n++;
	close(m);
	return n;
}

static int hog(const struct daemon *d)
{
	struct dmb_client *a, *b;
	if (dmb_connect(d->sock, "hog-a", &a) < 0 || dmb_connect(d->sock, "hog-b", &b) < 0)
		return 251;
	uint64_t ctx, other;
	CHECK(a, dmb_context_create(a, "hog", &ctx) == 0);
	/* 1 (context) + 10 x 2 (sim regions) = 21 */
	int n = fill_regions(a, ctx, 100);
	CHECK(a, n == 10);
	CHECK(a, dmb_last_error(a)->code == DMB_RESOURCE_EXHAUSTED);
	CHECK(a, strstr(dmb_last_error(a)->message, "limit fds (21) of uid 4545"));
	/* The uid's other session gets nothing more either. */
	CHECK(b, dmb_context_create(b, "hog", &other) < 0);
	CHECK(b, dmb_last_error(b)->code == DMB_RESOURCE_EXHAUSTED);
	CHECK(b, strstr(dmb_last_error(b)->message, "limit fds (21)"));
	dmb_close(a);
	dmb_close(b);
	return 0;
}

static int served(const struct daemon *d)
{
	struct dmb_client *c;
	if (dmb_connect(d->sock, "other", &c) < 0)
		return 251;
	uint64_t ctx;
	CHECK(c, dmb_context_create(c, "other", &ctx) == 0);
	int m = make_memfd(16 * PG, 3);
	struct dmb_region_info ri;
	CHECK(c, dmb_region_register(c, ctx, m, 0, &ri) == 0);
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 16 * PG, DMB_READ | DMB_WRITE };
	CHECK(c, dmb_map(c, ctx, &e) == 0);
	check_dma(c, ctx, m, 0, 0x100000, PG, 5);
	close(m);
	dmb_close(c);
	return 0;
}

static void test_uid_fd_limit(void **state)
{
	struct daemon d;
	daemon_start(&d, "[uid 4545]\nfds = 21\n");
	chmod(d.dir, 0755); /* clients of other uids reach the socket */
	assert_int_equal(run_as(&d, UID_HOG, hog), 0);
	assert_int_equal(run_as(&d, UID_OTHER, served), 0);
	assert_true(daemon_wait_idle(&d));
	daemon_stop(&d);
}

/* A non-admin past the budget: refused at once (connect or Hello fails),
 * not left waiting. */
static int refused(const struct daemon *d)
{
	struct dmb_client *c = NULL;
	struct dmb_error why;
	int r = dmb_connect_error(d->sock, "late", &c, &why);
	if (r == 0) {
		dmb_close(c);
		return 1;
	}
	return r == -ETIMEDOUT ? 2 : 0;
}

static void test_broker_budget(void **state)
{
	struct daemon d;
	/* 448 - 384 (the reserve) = 64 fds for sessions and objects */
	daemon_start_nofile(&d, "", 448);
	chmod(d.dir, 0755);
	assert_int_equal(daemon_log_count(&d, "fd budget: 64 of RLIMIT_NOFILE 448"), 1);
	struct dmb_client *c = client_connect(&d, "big");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "big", &ctx));
	int n = fill_regions(c, ctx, 1000);
	assert_true(n > 10 && n < 40);
	assert_int_equal(dmb_last_error(c)->code, DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(c)->message, "fd budget"));
	/* Another uid is refused at once; the admin still gets in. */
	assert_int_equal(run_as(&d, UID_OTHER, refused), 0);
	struct dmb_stats t = daemon_totals(&d);
	assert_int_equal(t.regions, (uint64_t)n);
	/* Fds given back serve others again. */
	assert_ok(c, dmb_context_destroy(c, ctx));
	assert_int_equal(run_as(&d, UID_OTHER, served), 0);
	dmb_close(c);
	assert_true(daemon_wait_idle(&d));
	daemon_stop(&d);
}

static int raw_connect(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -errno;
	}
	return fd;
}

static void test_accept_out_of_fds(void **state)
{
	struct daemon d;
	/* Admin sessions may use the reserve: root's connections run the
	 * daemon out of fds for real. */
	daemon_start_nofile(&d, "", 448);
	static int fds[600];
	int n = 0, refused = 0;
	bool out = false;
	/* Connect until the daemon says it is out of fds. A connect may fail
	 * while the backlog is full of connections it has not taken yet (a
	 * loaded machine): then wait for it to catch up. Bounded. */
	for (int tries = 0; !out && tries < 3000; tries++) {
		int fd = n < 600 ? raw_connect(d.sock) : -EMFILE;
		if (fd >= 0)
			fds[n++] = fd;
		else
			refused++;
		if (fd < 0 || n % 16 == 0) {
			out = daemon_log_count(&d, "out of file descriptors") > 0;
			if (!out && fd < 0)
				sleep_ms(10);
		}
	}
	if (!out)
		fprintf(stderr, "fds: %d connections, %d refused, daemon holds %d fds\n", n, refused,
			daemon_fd_count(&d));
	assert_true(out);
	/* Connections wait in the backlog; the daemon must not spin on
	 * accept() meanwhile. A busy loop takes most of a CPU, even on a
	 * loaded machine; an idle daemon next to nothing. */
	long hz = sysconf(_SC_CLK_TCK);
	unsigned long long t0 = daemon_cpu_ticks(&d);
	sleep_ms(2000);
	unsigned long long used = daemon_cpu_ticks(&d) - t0;
	fprintf(stderr, "fds: %d connections; daemon CPU while out of fds: %llu ticks in 2 s "
		"(%ld ticks/s)\n", n, used, hz);
	assert_true(used < (unsigned long long)hz / 2);
	assert_int_equal(daemon_log_count(&d, "out of file descriptors"), 1);
	/* Sessions go: it accepts again and serves a new client. */
	for (int i = 0; i < n; i++)
		close(fds[i]);
	struct dmb_client *c = client_connect(&d, "after");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "after", &ctx));
	dmb_close(c);
	assert_true(daemon_log_count(&d, "accepting connections again") >= 1);
	assert_true(daemon_wait_idle(&d));
	daemon_stop(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uid_fd_limit),
		cmocka_unit_test(test_broker_budget),
		cmocka_unit_test(test_accept_out_of_fds),
	};
	return cmocka_run_group_tests_name("fds", tests, NULL, NULL);
}
