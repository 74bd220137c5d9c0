/* Clients are isolated: B's ids in every request kind get NOT_FOUND from A
 * (the same answer as an id that never existed), nothing of B changes, and
 * B's bytes never move through A's requests. Also: contexts die with their
 * session, and so do their pins and fds. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096ull

static void test_other_clients_ids_are_not_found(void **state)
{
	struct dmb_client *a = client_connect(&g_daemon, "A");
	struct dmb_client *b = client_connect(&g_daemon, "B");
	uint64_t ca, cb;
	assert_ok(a, dmb_context_create(a, "a", &ca));
	assert_ok(b, dmb_context_create(b, "b", &cb));
	int ma = make_memfd(1 << 20, 1), mb = make_memfd(1 << 20, 2);
	struct dmb_region_info ra, rb;
	assert_ok(a, dmb_region_register(a, ca, ma, 0, &ra));
	assert_ok(b, dmb_region_register(b, cb, mb, 0, &rb));
	struct dmb_map_entry eb = { rb.region, 0, 0x100000, 16 * PG, DMB_READ | DMB_WRITE };
	assert_ok(b, dmb_map(b, cb, &eb));

	/* Every request kind that names a context, with B's context. */
	uint64_t x;
	struct dmb_iova_info ii;
	struct dmb_stats st;
	struct dmb_region_info ri;
	uint8_t buf[PG];
	struct dmb_map_entry e = { rb.region, 0, 0x400000, PG, DMB_READ };
	struct dmb_range rg = { 0x100000, 16 * PG };
	assert_code(a, dmb_context_destroy(a, cb), DMB_NOT_FOUND);
	assert_code(a, dmb_region_register(a, cb, ma, 0, &ri), DMB_NOT_FOUND);
	assert_code(a, dmb_region_unregister(a, cb, rb.region), DMB_NOT_FOUND);
	assert_code(a, dmb_iova_ranges(a, cb, &ii), DMB_NOT_FOUND);
	assert_code(a, dmb_map(a, cb, &e), DMB_NOT_FOUND);
	assert_code(a, dmb_map_batch(a, cb, &e, 1), DMB_NOT_FOUND);
	assert_code(a, dmb_unmap(a, cb, 0x100000, 16 * PG, &x), DMB_NOT_FOUND);
	assert_code(a, dmb_unmap_batch(a, cb, &rg, 1, &x), DMB_NOT_FOUND);
	assert_code(a, dmb_unmap_all(a, cb, &x), DMB_NOT_FOUND);
	assert_code(a, dmb_stats(a, cb, &st), DMB_NOT_FOUND);
	assert_code(a, dmb_sim_dma_read(a, cb, 0x100000, buf, PG), DMB_NOT_FOUND);
	assert_code(a, dmb_sim_dma_write(a, cb, 0x100000, buf, PG), DMB_NOT_FOUND);
	assert_code(a, dmb_device_open(a, cb, "0000:01:00.0", NULL, NULL), DMB_NOT_FOUND);
	/* The sentence for B's id is the same as for an id nobody has. */
	char msg_b[256], msg_none[256];
	assert_code(a, dmb_unmap_all(a, cb, &x), DMB_NOT_FOUND);
	snprintf(msg_b, sizeof(msg_b), "%s", dmb_last_error(a)->message);
	assert_code(a, dmb_unmap_all(a, 999999, &x), DMB_NOT_FOUND);
	snprintf(msg_none, sizeof(msg_none), "%s", dmb_last_error(a)->message);
	char *pb = strstr(msg_b, " not found"), *pn = strstr(msg_none, " not found");
	assert_non_null(pb);
	assert_non_null(pn);
	assert_string_equal(pb, pn);

	/* B's region handle in A's own context. */
	assert_code(a, dmb_map(a, ca, &e), DMB_NOT_FOUND);
	assert_code(a, dmb_region_unregister(a, ca, rb.region), DMB_NOT_FOUND);

	/* Listing: A sees only its own context. */
	struct dmb_context_info *ci;
	size_t n;
	assert_ok(a, dmb_list_contexts(a, false, &ci, &n));
	assert_int_equal(n, 1);
	assert_int_equal(ci[0].context, ca);
	free(ci);

	/* B is untouched: its mapping still moves bytes. */
	check_dma(b, cb, mb, 0, 0x100000, 16 * PG, 3);
	assert_ok(b, dmb_stats(b, cb, &st));
	assert_int_equal(st.mappings, 1);
	assert_int_equal(st.regions, 1);

	/* A's DMA at the same IOVA reaches nothing of B's. */
	check_dma_faults(a, ca, mb, 0, 0x100000, PG);

	dmb_close(a);
	dmb_close(b);
	close(ma);
	close(mb);
	assert_true(daemon_wait_idle(&g_daemon));
}

/* Ids say nothing about other clients: with one counter for every object,
 * the gap between two of a client's ids counted what the others created
 * meanwhile. A's contexts and regions, created while B creates some of its
 * own, must not come out as small steps of a sequence. */
static void test_ids_tell_nothing_about_others(void **state)
{
	struct dmb_client *a = client_connect(&g_daemon, "a");
	struct dmb_client *b = client_connect(&g_daemon, "b");
	int m = make_memfd(PG, 1);
	uint64_t ids[32], other;
	size_t n = 0;
	for (int i = 0; i < 16; i++) {
		struct dmb_region_info ri;
		assert_ok(a, dmb_context_create(a, "a", &ids[n]));
		assert_ok(a, dmb_region_register(a, ids[n], m, 0, &ri));
		ids[n + 1] = ri.region;
		n += 2;
		if (i % 2)
			assert_ok(b, dmb_context_create(b, "b", &other));
	}
	unsigned close_steps = 0;
	for (size_t i = 1; i < n; i++) {
		uint64_t d = ids[i] > ids[i - 1] ? ids[i] - ids[i - 1] : ids[i - 1] - ids[i];
		close_steps += d <= 1024;
	}
	fprintf(stderr, "ids: %u of %zu steps between a client's ids are within 1024\n",
		close_steps, n - 1);
	assert_true(close_steps < 4);
	close(m);
	dmb_close(a);
	dmb_close(b);
	assert_true(daemon_wait_idle(&g_daemon));
}

static void test_session_end_destroys_contexts(void **state)
{
	int base = daemon_quiet_fd_count(&g_daemon, 0);
	struct dmb_client *c = client_connect(&g_daemon, "short-lived");
	uint64_t ctx[3];
	int mfd = make_memfd(4 << 20, 1);
	for (int i = 0; i < 3; i++) {
		struct dmb_region_info ri;
		assert_ok(c, dmb_context_create(c, "x", &ctx[i]));
		assert_ok(c, dmb_region_register(c, ctx[i], mfd, 0, &ri));
		struct dmb_map_entry e = { ri.region, 0, 0x100000, 4 << 20, DMB_READ | DMB_WRITE };
		assert_ok(c, dmb_map(c, ctx[i], &e));
	}
	struct dmb_stats t = daemon_totals(&g_daemon);
	assert_int_equal(t.contexts, 3);
	assert_int_equal(t.pinned_bytes, 3ull * (4 << 20));
	dmb_close(c);
	assert_true(daemon_wait_idle(&g_daemon));
	assert_int_equal(daemon_wait_fd_count(&g_daemon, base, 0), base);
	close(mfd);
}

/* A client that sends a burst of requests and dies without reading a
 * single reply: its contexts go, pins and fds return to their baseline. */
static void test_client_dies_mid_request(void **state)
{
	int base = daemon_quiet_fd_count(&g_daemon, 0);
	for (int round = 0; round < 5; round++) {
		int ready[2];
		assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(ready[0]);
			struct dmb_client *c;
			if (dmb_connect(g_daemon.sock, "doomed", &c) < 0)
				_exit(1);
			uint64_t ctx;
			struct dmb_region_info ri;
			int mfd = make_memfd(8 << 20, 1);
			if (dmb_context_create(c, "d", &ctx) < 0 ||
			    dmb_region_register(c, ctx, mfd, 0, &ri) < 0)
				_exit(2);
			/* Fire map requests without waiting for replies. */
			int s = dmb_socket(c);
			for (int i = 0; i < 2000; i++) {
				Dmb__Request req = DMB__REQUEST__INIT;
				Dmb__Map m = DMB__MAP__INIT;
				Dmb__MapEntry me = DMB__MAP_ENTRY__INIT;
				me.region_id = ri.region;
				me.offset = (uint64_t)(i % 2048) * PG;
				me.iova = 0x10000000 + (uint64_t)i * PG;
				me.length = PG;
				me.prot = DMB_READ | DMB_WRITE;
				m.context_id = ctx;
				m.entry = &me;
				req.id = 1000 + (uint64_t)i;
				req.body_case = DMB__REQUEST__BODY_MAP;
				req.map = &m;
				uint8_t buf[128];
				size_t len = dmb__request__pack(&req, buf);
				if (send(s, buf, len, MSG_DONTWAIT) < 0)
					break;
				if (i == 100 && write(ready[1], "r", 1) != 1)
					_exit(3);
			}
			pause();
			_exit(0);
		}
		close(ready[1]);
		char ch;
		assert_int_equal(read(ready[0], &ch, 1), 1);
		close(ready[0]);
		kill(pid, SIGKILL);
		int st;
		waitpid(pid, &st, 0);
		assert_true(WIFSIGNALED(st));
		assert_true(daemon_wait_idle(&g_daemon));
		assert_int_equal(daemon_wait_fd_count(&g_daemon, base, 0), base);
	}
	/* and it still serves */
	struct dmb_client *ok = client_connect(&g_daemon, "after");
	uint64_t ctx;
	assert_ok(ok, dmb_context_create(ok, "after", &ctx));
	dmb_close(ok);
}

/* A client that sends requests and never reads replies cannot stall the
 * daemon: the daemon stops reading from it, and another client is served
 * meanwhile. */
static void test_client_that_never_reads(void **state)
{
	struct dmb_client *lazy = client_connect(&g_daemon, "never-reads");
	int s = dmb_socket(lazy);
	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__Stats q = DMB__STATS__INIT;
	req.body_case = DMB__REQUEST__BODY_STATS;
	req.stats = &q;
	uint8_t buf[64];
	size_t len = dmb__request__pack(&req, buf);
	int sent = 0;
	for (int i = 0; i < 200000; i++) {
		if (send(s, buf, len, MSG_DONTWAIT) < 0) {
			assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
			break;
		}
		sent++;
	}
	assert_true(sent > 0);
	/* The daemon keeps serving others while the lazy one is stuck. */
	struct dmb_client *busy = client_connect(&g_daemon, "busy");
	uint64_t ctx;
	for (int i = 0; i < 100; i++) {
		assert_ok(busy, dmb_context_create(busy, "b", &ctx));
		assert_ok(busy, dmb_context_destroy(busy, ctx));
	}
	dmb_close(busy);
	dmb_close(lazy);
	assert_true(daemon_wait_idle(&g_daemon));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_other_clients_ids_are_not_found),
		cmocka_unit_test(test_ids_tell_nothing_about_others),
		cmocka_unit_test(test_session_end_destroys_contexts),
		cmocka_unit_test(test_client_dies_mid_request),
		cmocka_unit_test(test_client_that_never_reads),
	};
	return cmocka_run_group_tests_name("isolation", tests, group_start_daemon, group_stop_daemon);
}
