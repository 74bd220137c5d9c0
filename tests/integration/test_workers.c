/* Long backend calls off the event loop (daemon/server/worker.h): with
 * --sim-populate a map costs one page fault per page, as pinning does, so a
 * 1 GiB map keeps a worker busy long enough to watch what the rest of the
 * daemon does meanwhile. Every check is about order, never about time: a
 * huge map is known to be in flight because the daemon's totals already
 * count it (it was accepted) while its reply has not arrived; without the
 * worker pool the loop is inside that map and answers nothing, so the
 * totals only come after the reply and every test here fails.
 *
 *   - another client's small map is answered, and moves bytes, meanwhile;
 *   - a request of another session naming the busy context (an admin's
 *     ListMappings) waits for the map, and the owner's own next request is
 *     answered after it, in order;
 *   - the client SIGKILLed mid-map: its context goes once the call is
 *     finished, and nothing stays pinned;
 *   - a restart (SIGTERM, fd store) mid-map: the old process finishes and
 *     answers the map, hands over, and the new one serves it (bytes move). */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fdstore.h"
#include "wire.h"

#define PG 4096ull
#define HUGE (1024ull * 1024 * 1024)
#define HUGE_IOVA 0x100000000ull
#define SMALL_IOVA 0x10000000ull

static const char *const populate_args[] = { "--sim-populate", NULL };
/* Two workers whatever the machine; small maps stay on the loop. */
static const char workers_config[] = "[daemon]\nworkers = 2\nworker_min_bytes = 1M\n";

/* A sealed memfd of `size` bytes whose pages do not exist yet (the daemon's
 * populate allocates them, as pinning would), with a tag at a few offsets. */
static int huge_memfd(uint64_t size)
{
	int fd = memfd_create("guest-ram-huge", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	return fd;
}

static void expect_mapped(Dmb__Reply *r, uint64_t id)
{
	assert_non_null(r);
	if (r->error)
		fail_msg("request %llu failed: %s", (unsigned long long)r->id, r->error->message);
	assert_int_equal(r->id, id);
	assert_int_equal(r->body_case, DMB__REPLY__BODY_MAP);
	dmb__reply__free_unpacked(r, NULL);
}

/* Waits until the daemon has accepted the huge map (its totals count it).
 * Without workers the daemon answers this only after the map. */
static void wait_accepted(const struct daemon *d, uint64_t bytes)
{
	for (int i = 0; i < 12000; i++) {
		if (daemon_totals(d).mapped_bytes >= bytes)
			return;
		usleep(10000);
	}
	fail_msg("the huge map was never accepted");
}

struct huge {
	struct dmb_client *c;
	uint64_t ctx, region;
	int fd;
};

static void huge_setup(struct huge *h, const struct daemon *d, const char *name)
{
	h->c = client_connect(d, name);
	assert_ok(h->c, dmb_context_create(h->c, "huge", &h->ctx));
	h->fd = huge_memfd(HUGE);
	uint8_t tag[64];
	fill_pattern(tag, sizeof(tag), 77);
	fd_write(h->fd, HUGE / 2, tag, sizeof(tag));
	struct dmb_region_info ri;
	assert_ok(h->c, dmb_region_register(h->c, h->ctx, h->fd, 0, &ri));
	h->region = ri.region;
}

/* A small client: context, 1 MiB region, one 4 KiB map (on the loop),
 * proven by moving bytes both ways. */
struct small {
	struct dmb_client *c;
	uint64_t ctx;
	int fd;
};

static void small_map_and_prove(struct small *s, const struct daemon *d)
{
	s->c = client_connect(d, "small");
	assert_ok(s->c, dmb_context_create(s->c, "small", &s->ctx));
	s->fd = make_memfd(1024 * 1024, 5);
	struct dmb_region_info ri;
	assert_ok(s->c, dmb_region_register(s->c, s->ctx, s->fd, 0, &ri));
	struct dmb_map_entry e = { ri.region, 8 * PG, SMALL_IOVA, PG, DMB_READ | DMB_WRITE };
	assert_ok(s->c, dmb_map(s->c, s->ctx, &e));
	check_dma(s->c, s->ctx, s->fd, 8 * PG, SMALL_IOVA, 256, 9);
}

static void small_close(struct small *s)
{
	dmb_close(s->c);
	close(s->fd);
}

/* Bounded wait for no contexts and no pins (a GiB to unpin takes a while). */
static void wait_idle_long(const struct daemon *d)
{
	for (int i = 0; i < 6000; i++) {
		struct dmb_stats t = daemon_totals(d);
		if (t.contexts == 0 && t.pinned_bytes == 0 && t.mappings == 0 && t.regions == 0)
			return;
		usleep(10000);
	}
	struct dmb_stats t = daemon_totals(d);
	fail_msg("daemon not idle: %u contexts, %llu mappings, %llu bytes pinned", t.contexts,
		 (unsigned long long)t.mappings, (unsigned long long)t.pinned_bytes);
}

static void test_small_map_while_huge_runs(void **state)
{
	struct daemon d;
	daemon_start_args(&d, workers_config, populate_args);
	struct huge h;
	huge_setup(&h, &d, "huge");
	raw_send_map(h.c, 1001, h.ctx, h.region, HUGE_IOVA, HUGE);
	wait_accepted(&d, HUGE);

	struct small s;
	small_map_and_prove(&s, &d);
	/* The small map was answered and moved bytes while the huge one is
	 * still running: its reply has not come. */
	Dmb__Reply *early = raw_reply(h.c, true);
	if (early)
		fail_msg("the huge map was answered before another client's small map: "
			 "it did not run off the event loop");

	expect_mapped(raw_reply(h.c, false), 1001);
	uint8_t want[64], got[64];
	fill_pattern(want, sizeof(want), 77);
	assert_ok(h.c, dmb_sim_dma_read(h.c, h.ctx, HUGE_IOVA + HUGE / 2, got, sizeof(got)));
	assert_memory_equal(got, want, sizeof(got));
	check_dma(h.c, h.ctx, h.fd, HUGE - PG, HUGE_IOVA + HUGE - PG, 128, 3);
	assert_int_equal(daemon_totals(&d).pinned_bytes, HUGE + PG);

	small_close(&s);
	dmb_close(h.c);
	close(h.fd);
	wait_idle_long(&d);
	daemon_stop(&d);
}

static void test_same_context_waits_in_order(void **state)
{
	struct daemon d;
	daemon_start_args(&d, workers_config, populate_args);
	struct huge h;
	huge_setup(&h, &d, "huge");
	/* The huge map, then (pipelined) a small one on the same context. */
	raw_send_map(h.c, 2001, h.ctx, h.region, HUGE_IOVA, HUGE);
	raw_send_map(h.c, 2002, h.ctx, h.region, SMALL_IOVA, PG);
	wait_accepted(&d, HUGE);

	/* Another session (admin) naming the busy context waits for the map:
	 * by the time its answer comes, the map's reply has been sent. */
	struct dmb_client *admin = client_connect(&d, "admin");
	struct dmb_mapping_info mi[16];
	size_t n = 0;
	bool more = false;
	uint64_t next = 0;
	assert_ok(admin, dmb_list_mappings(admin, h.ctx, 0, mi, 16, &n, &more, &next));
	Dmb__Reply *first = raw_reply(h.c, true);
	if (!first)
		fail_msg("ListMappings of a context with a map in flight was answered before the map");
	expect_mapped(first, 2001);
	assert_true(n >= 1);
	bool seen_huge = false;
	for (size_t i = 0; i < n; i++)
		seen_huge |= mi[i].iova == HUGE_IOVA && mi[i].length == HUGE;
	assert_true(seen_huge);
	/* The owner's next request comes after, in order. */
	expect_mapped(raw_reply(h.c, false), 2002);
	check_dma(h.c, h.ctx, h.fd, 0, SMALL_IOVA, 128, 4);
	check_dma(h.c, h.ctx, h.fd, HUGE / 4, HUGE_IOVA + HUGE / 4, 128, 5);

	dmb_close(admin);
	dmb_close(h.c);
	close(h.fd);
	wait_idle_long(&d);
	daemon_stop(&d);
}

/* A request of another session naming a context whose map runs on a worker
 * waits, parked with its packet (a session's own next request is not even
 * read until its call is answered). Of the 200 fds a RegionRegister carried,
 * the parked request holds only the one it names: known to be parked while
 * the daemon's fd count is read, as the map's reply is not there yet after
 * the read. Replayed after the map, it is answered (NOT_FOUND: not that
 * session's context) and its fd goes too. */
static void test_parked_request_keeps_one_fd(void **state)
{
	struct daemon d;
	daemon_start_args(&d, workers_config, populate_args);
	struct huge h;
	huge_setup(&h, &d, "huge");
	struct dmb_client *other = client_connect(&d, "other");
	int before = daemon_fd_count(&d);
	raw_send_map(h.c, 3001, h.ctx, h.region, HUGE_IOVA, HUGE);
	wait_accepted(&d, HUGE);

	int small = make_memfd(1024 * 1024, 8);
	enum { NFDS = 200 };
	int fds[NFDS];
	for (int i = 0; i < NFDS; i++)
		fds[i] = small;
	Dmb__RegionRegister rr = DMB__REGION_REGISTER__INIT;
	rr.context_id = h.ctx;
	rr.fd_index = 7;
	Dmb__Request req = DMB__REQUEST__INIT;
	req.id = 3002;
	req.body_case = DMB__REQUEST__BODY_REGION_REGISTER;
	req.region_register = &rr;
	uint8_t buf[64];
	size_t n = dmb__request__pack(&req, buf);
	assert_int_equal(wire_send(dmb_socket(other), buf, n, fds, NFDS, false), 0);

	/* Parked: the daemon holds one fd more than before (the kept one). */
	int now = before, most = before;
	for (int i = 0; i < 6000 && now != before + 1; i++) {
		usleep(5000);
		now = daemon_fd_count(&d);
		most = now > most ? now : most;
	}
	if (now != before + 1)
		fail_msg("the parked request never held exactly one fd: the daemon held up to %d "
			 "more than before", most - before);
	Dmb__Reply *early = raw_reply(h.c, true);
	if (early)
		fail_msg("the huge map was answered before the parked request could be observed "
			 "(fd count %d, before %d)", now, before);
	assert_int_equal(now, before + 1);

	expect_mapped(raw_reply(h.c, false), 3001);
	Dmb__Reply *r = raw_reply(other, false);
	assert_non_null(r);
	assert_int_equal(r->id, 3002);
	assert_non_null(r->error);
	assert_int_equal(r->error->code, DMB__ERROR_CODE__NOT_FOUND);
	dmb__reply__free_unpacked(r, NULL);
	assert_int_equal(daemon_fd_count(&d), before);
	check_dma(h.c, h.ctx, h.fd, HUGE / 2, HUGE_IOVA + HUGE / 2, 64, 7);

	dmb_close(other);
	dmb_close(h.c);
	close(h.fd);
	close(small);
	wait_idle_long(&d);
	daemon_stop(&d);
}

static void test_client_killed_mid_map(void **state)
{
	struct daemon d;
	daemon_start_args(&d, workers_config, populate_args);
	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		struct dmb_client *c = NULL;
		uint64_t ctx;
		struct dmb_region_info ri;
		int fd = memfd_create("guest-ram-huge", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		if (fd < 0 || ftruncate(fd, (off_t)HUGE) < 0 ||
		    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0 ||
		    dmb_connect(d.sock, "doomed", &c) < 0 || dmb_context_create(c, "doomed", &ctx) < 0 ||
		    dmb_region_register(c, ctx, fd, 0, &ri) < 0)
			_exit(1);
		raw_send_map(c, 3001, ctx, ri.region, HUGE_IOVA, HUGE);
		(void)!write(pfd[1], "x", 1);
		for (;;)
			pause();
	}
	close(pfd[1]);
	char x;
	assert_int_equal(read(pfd[0], &x, 1), 1);
	close(pfd[0]);
	wait_accepted(&d, HUGE);
	/* Killed while its map runs; the daemon keeps serving others. */
	assert_int_equal(kill(pid, SIGKILL), 0);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	struct small s;
	small_map_and_prove(&s, &d);
	small_close(&s);
	/* Its context goes once the worker is done: nothing stays pinned. */
	wait_idle_long(&d);
	daemon_stop(&d);
}

/* ------------------------------------------------------------ restart */

static struct fds H;

static void test_restart_mid_map(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.quiet = true;
	o.stop_timeout_ms = 120000;
	assert_int_equal(fds_init(&H, &o), 0);
	if (fds_start_dmabrokerd(&H, workers_config, populate_args) < 0) {
		fds_dump_log(&H);
		fail_msg("dmabrokerd did not start under the fd-store harness");
	}
	struct daemon d = { .pid = H.pid };
	snprintf(d.sock, sizeof(d.sock), "%s", H.sock);
	snprintf(d.dir, sizeof(d.dir), "%s", H.dir);

	struct huge h;
	huge_setup(&h, &d, "huge");
	raw_send_map(h.c, 4001, h.ctx, h.region, HUGE_IOVA, HUGE);
	wait_accepted(&d, HUGE);
	struct small s;
	small_map_and_prove(&s, &d);
	if (raw_reply(h.c, true))
		fail_msg("the huge map was answered before another client's small map");
	/* SIGTERM while the worker runs: the old process finishes the map,
	 * journals and answers it, then hands everything over. */
	int r = fds_restart(&H, SIGTERM);
	if (r < 0 || fds_log_has(&H, "Sanitizer") || fds_log_has(&H, "runtime error:")) {
		fds_dump_log(&H);
		fail_msg("restart mid-map failed (%d) or a sanitizer spoke", r);
	}
	d.pid = H.pid;
	expect_mapped(raw_reply(h.c, false), 4001);
	/* Both clients' mappings survived and move bytes in the new process. */
	(void)dmb_dispatch(h.c, NULL, NULL);
	(void)dmb_dispatch(s.c, NULL, NULL);
	uint8_t want[64], got[64];
	fill_pattern(want, sizeof(want), 77);
	assert_ok(h.c, dmb_sim_dma_read(h.c, h.ctx, HUGE_IOVA + HUGE / 2, got, sizeof(got)));
	assert_memory_equal(got, want, sizeof(got));
	check_dma(h.c, h.ctx, h.fd, HUGE - PG, HUGE_IOVA + HUGE - PG, 128, 6);
	check_dma(s.c, s.ctx, s.fd, 8 * PG, SMALL_IOVA, 128, 7);
	assert_int_equal(daemon_totals(&d).pinned_bytes, HUGE + PG);
	if (!fds_log_has(&H, "0 mapped again")) {
		fds_dump_log(&H);
		fail_msg("the restart mapped something again: the map was not finished first");
	}

	small_close(&s);
	dmb_close(h.c);
	close(h.fd);
	wait_idle_long(&d);
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	fds_destroy(&H);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_small_map_while_huge_runs),
		cmocka_unit_test(test_same_context_waits_in_order),
		cmocka_unit_test(test_parked_request_keeps_one_fd),
		cmocka_unit_test(test_client_killed_mid_map),
		cmocka_unit_test(test_restart_mid_map),
	};
	return cmocka_run_group_tests_name("workers", tests, NULL, NULL);
}
