/* The systemd emulation of fdstore.[ch], checked with fdstore-probe (which
 * speaks through the real libsystemd) and once with the real dmabrokerd:
 * store / dedupe / remove / limits / hang-ups / restart with the right fds,
 * names and memfd contents / SIGKILL mid-way / notify fields / failures. */
#include "fdstore.h"
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

struct fx {
	struct fds h;
	int open_before;
};

static int count_open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the directory's own fd */
}

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	fx->open_before = count_open_fds();
	*state = fx;
	return 0;
}

/* fds_destroy() closes everything: the test process holds what it held. */
static int teardown(void **state)
{
	struct fx *fx = *state;
	fds_destroy(&fx->h);
	int after = count_open_fds();
	int before = fx->open_before;
	free(fx);
	if (after != before) {
		fprintf(stderr, "fd leak: %d open before the harness, %d after fds_destroy\n",
			before, after);
		return -1;
	}
	return 0;
}

static const char *probe(void)
{
	const char *p = getenv("FDSTORE_PROBE");
	if (!p)
		fail_msg("FDSTORE_PROBE is not set (run through meson test)");
	return p;
}

#define P(...) ((const char *const[]){ probe(), __VA_ARGS__, NULL })

static struct fds *init(void **state, const struct fds_opts *o)
{
	struct fx *fx = *state;
	int r = fds_init(&fx->h, o);
	if (r < 0)
		fail_msg("fds_init: %s", strerror(-r));
	return &fx->h;
}

static void start_ok(struct fds *h, const char *const *argv)
{
	int r = fds_start(h, argv);
	if (r != 0) {
		fds_dump_log(h);
		fail_msg("fds_start: %s", strerror(-r));
	}
}

static void restart_ok(struct fds *h, int sig, const char *const *argv)
{
	assert_int_equal(fds_set_argv(h, argv), 0);
	int r = fds_restart(h, sig);
	if (r != 0) {
		fds_dump_log(h);
		fail_msg("fds_restart: %s", strerror(-r));
	}
}

/* Waits for the instance to end by itself with this exit status. */
static void expect_exit(struct fds *h, int code)
{
	int st = fds_stop(h, 0);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != code) {
		char status[256] = "";
		fds_status(h, status, sizeof(status));
		fds_dump_log(h);
		fail_msg("the service ended with 0x%x (want exit %d); last STATUS=%s", st, code,
			 status);
	}
}

static void assert_names(struct fds *h, const char *want)
{
	char *names = fds_store_names(h), got[1024];
	assert_non_null(names);
	snprintf(got, sizeof(got), "%s", names);
	free(names);
	assert_string_equal(got, want);
}

static void assert_status(struct fds *h, const char *want)
{
	char status[256];
	assert_int_equal(fds_status(h, status, sizeof(status)), 0);
	assert_string_equal(status, want);
}

/* What the store holds, read through a dup of the stored fd. */
static void assert_stored_content(struct fds *h, const char *name, const char *want)
{
	int fd = fds_store_dup(h, name, 0);
	assert_true(fd >= 0);
	char buf[64] = "";
	assert_true(pread(fd, buf, sizeof(buf) - 1, 0) > 0);
	close(fd);
	assert_string_equal(buf, want);
}

/* Stores, dedupes, renames and removes; the next instance gets exactly the
 * listener first, then the stored fds with their names, and a memfd written
 * after it was stored has its content. A client that connected while no
 * instance ran is served by the next. */
static void test_restart_roundtrip(void **state)
{
	struct fds *h = init(state, NULL);
	start_ok(h, P("fds=dmabroker.socket", "env=FDSTORE/4096", "ready", "store=journal/1",
		      "store=ctx/3", "storeeach=dev/1", "store=gone/2", "redo=journal",
		      "rename=ctx/other", "remove=gone", "write=journal/marker-1", "barrier",
		      "status=stored", "exit=0"));
	expect_exit(h, 0);
	assert_status(h, "stored");
	assert_true(fds_ready(h));
	/* Newest first, a message's fds in the order sent. */
	assert_names(h, "dev:ctx:ctx:ctx:journal");
	assert_int_equal(fds_store_count(h), 5);
	assert_int_equal(fds_store_count_name(h, "ctx"), 3);
	assert_int_equal(fds_store_count_name(h, "other"), 0);
	assert_stored_content(h, "journal", "marker-1");
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.stored, 7);
	assert_int_equal(c.duplicates, 4); /* redo: itself twice and a dup; rename */
	assert_int_equal(c.removed, 2);
	assert_int_equal(c.ignored, 0);
	assert_int_equal(c.refused_full, 0);

	/* Nobody serves the socket now: the connection queues. */
	int cl = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(cl >= 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, h->sock);
	assert_int_equal(connect(cl, (struct sockaddr *)&a, sizeof(a)), 0);
	struct timeval tv = { 5, 0 };
	setsockopt(cl, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

	restart_ok(h, SIGTERM,
		   P("fds=dmabroker.socket:journal:ctx:ctx:ctx:dev", "check=journal/marker-1",
		     "check=ctx/ctx#", "check=dev/dev#", "count=ctx/3", "accept", "ready",
		     "status=checked", "exit=0"));
	expect_exit(h, 0);
	assert_status(h, "checked");
	char buf[16] = "";
	assert_int_equal(recv(cl, buf, sizeof(buf), 0), 5);
	assert_memory_equal(buf, "hello", 5);
	close(cl);
	/* Passing the store does not empty it; a third start gets it again. */
	assert_int_equal(fds_store_count(h), 5);
	restart_ok(h, SIGTERM,
		   P("fds=dmabroker.socket:journal:ctx:ctx:ctx:dev", "check=journal/marker-1",
		     "ready", "exit=0"));
	expect_exit(h, 0);
	fds_counters(h, &c);
	assert_int_equal(c.starts, 3);
}

/* SIGKILL while the service stores one fd per message and counts them in a
 * journal memfd (stored first): each next instance gets the count or one
 * more (killed between its store and its count), nothing sent before the
 * kill is lost, nothing is dropped as coming from an unknown pid. */
static void test_sigkill_midway(void **state)
{
	/* A small store: the probe, like the daemon, never journals an fd past
	 * $FDSTORE (systemd would drop it with only a log line), so whether a
	 * kill finds it mid-loop or holding a full store, the journal counts
	 * what the store kept. The last round waits for the full store. */
	struct fds_opts o = fds_default_opts();
	o.store_max = 512;
	struct fds *h = init(state, &o);
	start_ok(h, P("fds=dmabroker.socket", "store=journal/1", "ready", "loop=item"));
	srand((unsigned)time(NULL));
	for (int round = 0; round < 6; round++) {
		assert_int_equal(fds_wait_notify(h, "STATUS=looping", 30000, NULL, 0), 0);
		struct timespec ts = { 0, (20 + rand() % 60) * 1000000L };
		nanosleep(&ts, NULL);
		restart_ok(h, SIGKILL, P("fds=*", "journal=item", "ready", "loop=item"));
		int st = fds_exit_status(h);
		assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
		char line[128];
		assert_int_equal(fds_wait_notify(h, "STATUS=journal *", 30000, line, sizeof(line)), 0);
		fprintf(stderr, "round %d: %s (store: %u item)\n", round, line,
			fds_store_count_name(h, "item"));
	}
	assert_int_equal(fds_wait_notify(h, "STATUS=full", 30000, NULL, 0), 0);
	restart_ok(h, SIGKILL, P("fds=*", "journal=item", "ready", "loop=item"));
	assert_int_equal(fds_wait_notify(h, "STATUS=journal *", 30000, NULL, 0), 0);
	assert_int_equal(fds_store_count_name(h, "item"), 512 - 1);
	assert_int_equal(fds_store_count_name(h, "journal"), 1);
	assert_true(fds_store_count_name(h, "item") > 0);
	int st = fds_stop(h, SIGTERM);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.ignored, 0);
	assert_int_equal(c.refused_full, 0);
	assert_int_equal(c.extra_closed, 0);
}

/* FileDescriptorStoreMax=4: the message that crosses it keeps what fits and
 * closes the rest; a full store refuses even a duplicate (the limit is
 * checked first); removal makes room again. */
static void test_store_limit(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.store_max = 4;
	struct fds *h = init(state, &o);
	start_ok(h, P("fds=dmabroker.socket", "env=FDSTORE/4", "ready", "store=a/3", "store=b/3",
		      "redo=a", "barrier", "exit=0"));
	expect_exit(h, 0);
	assert_int_equal(fds_store_count(h), 4);
	assert_int_equal(fds_store_count_name(h, "a"), 3);
	assert_int_equal(fds_store_count_name(h, "b"), 1);
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.refused_full, 2 + 3);
	assert_int_equal(c.duplicates, 0);

	restart_ok(h, SIGTERM, P("fds=dmabroker.socket:a:a:a:b", "check=b/b#", "check=a/a#",
				 "remove=a", "store=c/2", "barrier", "ready", "exit=0"));
	expect_exit(h, 0);
	assert_names(h, "c:c:b");
}

/* FileDescriptorStoreMax=0 (systemd's default): no $FDSTORE, nothing kept. */
static void test_store_disabled(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.store_max = 0;
	struct fds *h = init(state, &o);
	start_ok(h, P("fds=dmabroker.socket", "env=FDSTORE/-", "ready", "store=x/2", "barrier",
		      "exit=0"));
	expect_exit(h, 0);
	assert_int_equal(fds_store_count(h), 0);
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.refused_full, 2);
}

/* FDSTOREREMOVE=1 closes every fd of that name, from any number of
 * messages; an unknown name is a no-op, a missing name is refused; with
 * FDSTORE=1 in the same message only the removal happens. */
static void test_remove_name_with_several_fds(void **state)
{
	struct fds *h = init(state, NULL);
	start_ok(h, P("fds=dmabroker.socket", "ready", "storeeach=x/3", "store=y/1", "store=x/2",
		      "barrier", "status=stored", "remove=x", "remove=nope", "raw=FDSTOREREMOVE=1",
		      "store=z/2", "storeremove=z", "barrier", "exit=0"));
	expect_exit(h, 0);
	assert_names(h, "y");
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.stored, 8);
	assert_int_equal(c.removed, 7);
	assert_int_equal(c.extra_closed, 1); /* storeremove's memfd */

	restart_ok(h, SIGTERM, P("fds=dmabroker.socket:y", "check=y/y#", "ready", "exit=0"));
	expect_exit(h, 0);
}

/* The same file stored again - the same fd twice in one message, a dup(),
 * under another name - is kept once under its first name; FDNAME= missing
 * or invalid gives "stored". */
static void dedupe(void **state, enum fds_compare cmp)
{
	struct fds_opts o = fds_default_opts();
	o.compare = cmp;
	struct fds *h = init(state, &o);
	start_ok(h, P("fds=dmabroker.socket", "ready", "store=j/1", "redo=j", "rename=j/k",
		      "store=-/1", "store=bad:name/1", "barrier", "exit=0"));
	expect_exit(h, 0);
	assert_names(h, "stored:stored:j");
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.duplicates, 4);
	restart_ok(h, SIGTERM,
		   P("fds=dmabroker.socket:j:stored:stored", "check=j/j#0", "ready", "exit=0"));
	expect_exit(h, 0);
}

static void test_dedupe(void **state)
{
	dedupe(state, FDS_CMP_AUTO);
}

static void test_dedupe_fstat_fallback(void **state)
{
	dedupe(state, FDS_CMP_FSTAT);
}

/* A stored socket whose peer closes is dropped (EPOLLHUP), unless it was
 * stored with FDPOLL=0. */
static void test_fdpoll(void **state)
{
	struct fds *h = init(state, NULL);
	start_ok(h, P("fds=dmabroker.socket", "ready", "storesp=sp", "storesp=keep/np",
		      "status=stored", "sleep=100", "exit=0"));
	assert_int_equal(fds_wait_notify(h, "STATUS=stored", 30000, NULL, 0), 0);
	assert_int_equal(fds_store_count(h), 2); /* their peers are open */
	expect_exit(h, 0); /* its peers close with it */
	for (int i = 0; i < 200 && fds_store_count_name(h, "sp"); i++)
		usleep(10000);
	assert_names(h, "keep");
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.hangups, 1);
}

/* READY, STATUS (first of a message wins), ERRNO, WATCHDOG, MAINPID,
 * STOPPING, BARRIER; a forked child's message is refused under
 * NotifyAccess=main and its fd closed. */
static void test_notify_fields(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.watchdog_usec = 30000000;
	struct fds *h = init(state, &o);
	start_ok(h, P("fds=dmabroker.socket", "env=WATCHDOG_USEC/30000000", "watchdog",
		      "status=one", "ready", "raw=WATCHDOG=1", "raw=WATCHDOG=1|ERRNO=17",
		      "raw=MAINPID=4242", "child=STATUS=from-child|FDSTORE=1|FDNAME=kid",
		      "raw=STATUS=two|STATUS=three", "barrier", "raw=STOPPING=1", "exit=0"));
	char line[64];
	assert_int_equal(fds_wait_notify(h, "STATUS=one", 30000, NULL, 0), 0);
	assert_int_equal(fds_wait_notify(h, "STATUS=t*", 30000, line, sizeof(line)), 0);
	assert_string_equal(line, "STATUS=two");
	expect_exit(h, 0);
	assert_status(h, "two");
	assert_true(fds_ready(h));
	assert_true(fds_stopping(h));
	assert_int_equal(fds_errno(h), 17);
	assert_int_equal(fds_mainpid(h), 4242);
	assert_int_equal(fds_store_count(h), 0);
	struct fds_counters c;
	fds_counters(h, &c);
	assert_int_equal(c.watchdog, 2);
	assert_int_equal(c.ignored, 1);
	assert_int_equal(c.extra_closed, 1); /* the child's memfd (the barrier's is silent) */
	/* Refused lines are not seen, and the instance is over. */
	assert_int_equal(fds_wait_notify(h, "STATUS=from-child", 100, NULL, 0), -ECHILD);
}

/* NotifyAccess=all: a child of the service may store too. */
static void test_notify_access_all(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.notify_access = FDS_NOTIFY_ALL;
	struct fds *h = init(state, &o);
	start_ok(h, P("fds=dmabroker.socket", "ready", "child=FDSTORE=1|FDNAME=kid", "barrier",
		      "exit=0"));
	expect_exit(h, 0);
	assert_names(h, "kid");
}

/* Exit before READY=1, no READY=1 in time, SIGTERM ignored, exec failure:
 * bounded, reported, and the store survives all of them. */
static void test_start_failures(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.start_timeout_ms = 500;
	o.stop_timeout_ms = 500;
	struct fds *h = init(state, &o);

	assert_int_equal(fds_start(h, P("fds=dmabroker.socket", "store=s/1", "exit=3")), -ECHILD);
	assert_false(fds_running(h));
	int st = fds_stop(h, SIGTERM); /* collects the ended instance */
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 3);
	assert_int_equal(fds_stop(h, SIGTERM), -ESRCH);
	assert_int_equal(fds_store_count(h), 1);

	assert_int_equal(fds_start(h, P("hang")), -ETIMEDOUT);
	st = fds_exit_status(h);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);

	start_ok(h, P("ignoreterm", "ready", "hang"));
	assert_true(fds_running(h));
	assert_int_equal(fds_start(h, P("ready")), -EBUSY);
	assert_int_equal(fds_stop(h, SIGTERM), -ETIMEDOUT);
	st = fds_exit_status(h);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

	const char *const missing[] = { "/nonexistent/dmabrokerd", NULL };
	assert_int_equal(fds_start(h, missing), -ECHILD);
	st = fds_exit_status(h);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 203);

	start_ok(h, P("fds=dmabroker.socket:s", "check=s/s#0", "ready", "exit=0"));
	expect_exit(h, 0);
}

/* A stop for good closes the store; without a listener only stored fds
 * are passed, from fd 3. */
static void test_store_clear_and_no_listener(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.listen = false;
	struct fds *h = init(state, &o);
	start_ok(h, P("env=LISTEN_FDS/-", "fds=-", "store=q/1", "store=m/2", "ready", "exit=0"));
	expect_exit(h, 0);
	assert_int_equal(fds_store_count(h), 3);
	restart_ok(h, SIGTERM, P("fds=m:m:q", "check=q/q#0", "ready", "exit=0"));
	expect_exit(h, 0);
	fds_store_clear(h);
	assert_int_equal(fds_store_count(h), 0);
	restart_ok(h, SIGTERM, P("fds=-", "ready", "exit=0"));
	expect_exit(h, 0);
}

/* The real daemon through the harness (socket activation only; its own fd
 * store support is not required): a client that connects while it is down
 * is served by the next instance, after SIGTERM and after SIGKILL. */
static void test_dmabrokerd(void **state)
{
	struct fds *h = init(state, NULL);
	int r = fds_start_dmabrokerd(h, NULL, NULL);
	if (r != 0) {
		fds_dump_log(h);
		fail_msg("dmabrokerd did not become ready: %s", strerror(-r));
	}
	char status[256];
	assert_int_equal(fds_status(h, status, sizeof(status)), 0);
	/* notify.c's line: "N clients, N contexts, N mappings, X pinned; handoff STATE" */
	assert_non_null(strstr(status, " clients, "));
	assert_non_null(strstr(status, "; handoff normal"));

	struct dmb_client *c = NULL;
	assert_int_equal(dmb_connect(h->sock, "fds", &c), 0);
	struct dmb_status st;
	assert_ok(c, dmb_status(c, &st));
	dmb_close(c);

	const int sigs[] = { SIGTERM, SIGKILL, SIGTERM };
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		int ws = fds_stop(h, sigs[i]);
		if (sigs[i] == SIGTERM && !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0)) {
			fds_dump_log(h);
			fail_msg("dmabrokerd ended with 0x%x after SIGTERM", ws);
		}
		struct dmb_client *q = NULL;
		assert_int_equal(dmb_connect_raw(h->sock, &q), 0); /* queued */
		assert_int_equal(dmb_set_timeout(q, 10000), 0);
		r = fds_restart(h, 0);
		if (r != 0) {
			fds_dump_log(h);
			fail_msg("restart: %s", strerror(-r));
		}
		assert_ok(q, dmb_hello(q, DMB_PROTOCOL_VERSION, "queued"));
		assert_ok(q, dmb_status(q, &st));
		dmb_close(q);
	}
	int ws = fds_stop(h, SIGTERM);
	bool sanitizer = fds_log_has(h, "Sanitizer") || fds_log_has(h, "runtime error:");
	if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0 || sanitizer) {
		fds_dump_log(h);
		fail_msg("dmabrokerd ended with 0x%x%s", ws, sanitizer ? " (sanitizer report)" : "");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_restart_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sigkill_midway, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_disabled, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remove_name_with_several_fds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedupe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedupe_fstat_fallback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fdpoll, setup, teardown),
		cmocka_unit_test_setup_teardown(test_notify_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_notify_access_all, setup, teardown),
		cmocka_unit_test_setup_teardown(test_start_failures, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_clear_and_no_listener, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dmabrokerd, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
