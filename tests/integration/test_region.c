/* Region registration and context requests over the wire: every kind of
 * wrong fd, sizes, unregister rules, limits. Each refusal leaves the daemon
 * holding no extra fd. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define PG 4096ull

struct fx {
	struct dmb_client *c;
	uint64_t ctx;
	int base_fds;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->c = client_connect(&g_daemon, "regions");
	assert_ok(f->c, dmb_context_create(f->c, "r", &f->ctx));
	f->base_fds = daemon_quiet_fd_count(&g_daemon, 1);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	dmb_close(f->c);
	free(f);
	assert_true(daemon_wait_idle(&g_daemon));
	return 0;
}

static void refused(struct fx *f, int fd, uint64_t size, int code, const char *why)
{
	struct dmb_region_info ri;
	int r = dmb_region_register(f->c, f->ctx, fd, size, &ri);
	assert_code(f->c, r, code);
	if (why && !strstr(dmb_last_error(f->c)->message, why))
		fail_msg("expected '%s' in: %s", why, dmb_last_error(f->c)->message);
	assert_int_equal(daemon_wait_fd_count(&g_daemon, f->base_fds, 1), f->base_fds);
}

static void test_wrong_kinds_of_fd(void **state)
{
	struct fx *f = *state;
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	refused(f, p[0], 0, DMB_INVALID_ARGUMENT, "pipe");
	close(p[0]);
	close(p[1]);

	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	refused(f, sv[0], 0, DMB_INVALID_ARGUMENT, "socket");
	close(sv[0]);
	close(sv[1]);

	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	refused(f, null, 0, DMB_INVALID_ARGUMENT, "character device");
	close(null);

	int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	refused(f, dir, 0, DMB_INVALID_ARGUMENT, "directory");
	close(dir);

	int m = make_memfd(PG, 0);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", m);
	int opath = open(path, O_PATH | O_CLOEXEC);
	refused(f, opath, 0, DMB_INVALID_ARGUMENT, "O_PATH");
	close(opath);
	int wronly = open(path, O_WRONLY | O_CLOEXEC);
	refused(f, wronly, 0, DMB_INVALID_ARGUMENT, "write-only");
	close(wronly);
	close(m);

	/* A regular file on a disk filesystem (the test binary itself). */
	int exe = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	refused(f, exe, 0, DMB_INVALID_ARGUMENT, "filesystem");
	close(exe);

	/* A plain tmpfs file cannot be sealed against shrinking. */
	char shm[] = "/dev/shm/dmb-test-XXXXXX";
	int t = mkstemp(shm);
	if (t >= 0) {
		unlink(shm);
		assert_int_equal(ftruncate(t, PG), 0);
		refused(f, t, 0, DMB_INVALID_ARGUMENT, "sealed");
		close(t);
	}
}

static void test_seals_and_sizes(void **state)
{
	struct fx *f = *state;
	/* Not sealed against shrinking */
	int u = memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_int_equal(ftruncate(u, 16 * PG), 0);
	refused(f, u, 0, DMB_INVALID_ARGUMENT, "F_SEAL_SHRINK");
	close(u);
	/* Cannot be sealed at all (no MFD_ALLOW_SEALING) */
	u = memfd_create("nosealing", MFD_CLOEXEC);
	assert_int_equal(ftruncate(u, 16 * PG), 0);
	refused(f, u, 0, DMB_INVALID_ARGUMENT, "sealed");
	close(u);

	int m = make_memfd(16 * PG, 0);
	refused(f, m, 32 * PG, DMB_OUT_OF_RANGE, "past the end");
	refused(f, m, 17 * PG, DMB_OUT_OF_RANGE, "past the end");
	refused(f, m, PG + 1, DMB_INVALID_ARGUMENT, "page size");
	struct dmb_region_info ri;
	/* A prefix of the file is fine */
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, m, 8 * PG, &ri));
	assert_int_equal(ri.size, 8 * PG);
	assert_string_equal(ri.kind, "memfd");
	f->base_fds = daemon_quiet_fd_count(&g_daemon, 1);
	/* ... and a mapping past the prefix is refused */
	struct dmb_map_entry e = { ri.region, 8 * PG, 0x100000, PG, DMB_READ };
	assert_code(f->c, dmb_map(f->c, f->ctx, &e), DMB_OUT_OF_RANGE);
	close(m);

	int empty = make_memfd(0, 0);
	refused(f, empty, 0, DMB_INVALID_ARGUMENT, "empty");
	close(empty);

	/* Write-sealed memory registers read-only. */
	int w = make_memfd(4 * PG, 0);
	assert_int_equal(fcntl(w, F_ADD_SEALS, F_SEAL_WRITE), 0);
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, w, 0, &ri));
	assert_false(ri.writable);
	e = (struct dmb_map_entry){ ri.region, 0, 0x200000, PG, DMB_READ | DMB_WRITE };
	assert_code(f->c, dmb_map(f->c, f->ctx, &e), DMB_PERMISSION_DENIED);
	close(w);
}

static void test_unregister_rules(void **state)
{
	struct fx *f = *state;
	int m = make_memfd(4 * PG, 0);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 4 * PG, DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map(f->c, f->ctx, &e));
	/* In use: refused, mapping intact */
	assert_code(f->c, dmb_region_unregister(f->c, f->ctx, ri.region), DMB_FAILED_PRECONDITION);
	check_dma(f->c, f->ctx, m, 0, 0x100000, 4 * PG, 1);
	assert_ok(f->c, dmb_unmap(f->c, f->ctx, 0x100000, 4 * PG, NULL));
	assert_ok(f->c, dmb_region_unregister(f->c, f->ctx, ri.region));
	assert_code(f->c, dmb_region_unregister(f->c, f->ctx, ri.region), DMB_NOT_FOUND);
	assert_code(f->c, dmb_region_unregister(f->c, f->ctx, 0), DMB_NOT_FOUND);
	assert_int_equal(daemon_wait_fd_count(&g_daemon, f->base_fds, 1), f->base_fds);
	close(m);
}

static void test_context_requests(void **state)
{
	struct fx *f = *state;
	char name[100];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0;
	uint64_t ctx;
	assert_code(f->c, dmb_context_create(f->c, name, &ctx), DMB_INVALID_ARGUMENT);
	/* Names reach logs and terminals: printable UTF-8 only. */
	assert_code(f->c, dmb_context_create(f->c, "evil\033[2J", &ctx), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_context_create(f->c, "bad\xff", &ctx), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_context_create(f->c, "trunc\xc3", &ctx), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_context_create(f->c, "c1\xc2\x85", &ctx), DMB_INVALID_ARGUMENT);
	assert_ok(f->c, dmb_context_create(f->c, "vm-\xc3\xa9t\xc3\xa9", &ctx));
	assert_ok(f->c, dmb_context_destroy(f->c, ctx));
	assert_code(f->c, dmb_context_destroy(f->c, 0), DMB_NOT_FOUND);
	assert_code(f->c, dmb_context_destroy(f->c, UINT64_MAX), DMB_NOT_FOUND);

	/* Persistent contexts need an fd store; this daemon runs without
	 * systemd: a clear refusal. */
	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__ContextCreate cc = DMB__CONTEXT_CREATE__INIT;
	cc.persistent = true;
	cc.name = (char *)"p";
	req.body_case = DMB__REQUEST__BODY_CONTEXT_CREATE;
	req.context_create = &cc;
	Dmb__Reply *rep;
	assert_int_equal(dmb_call(f->c, &req, NULL, 0, &rep, NULL, NULL), 0);
	assert_non_null(rep->error);
	assert_int_equal(rep->error->code, DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(rep->error->message, "file-descriptor store"));
	dmb__reply__free_unpacked(rep, NULL);

	/* Destroying a context with mappings unmaps them (DMA faults). */
	int m = make_memfd(4 * PG, 0);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_context_create(f->c, "d", &ctx));
	assert_ok(f->c, dmb_region_register(f->c, ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 4 * PG, DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map(f->c, ctx, &e));
	check_dma(f->c, ctx, m, 0, 0x100000, PG, 2);
	assert_ok(f->c, dmb_context_destroy(f->c, ctx));
	assert_code(f->c, dmb_sim_dma_read(f->c, ctx, 0x100000, name, 8), DMB_NOT_FOUND);
	assert_int_equal(daemon_totals(&g_daemon).pinned_bytes, 0);
	close(m);
}

static void test_limits(void **state)
{
	struct fx *f = *state;
	/* contexts_per_client = 4 (this file's config): this session has one. */
	uint64_t ctx[3], extra;
	for (int i = 0; i < 3; i++)
		assert_ok(f->c, dmb_context_create(f->c, "l", &ctx[i]));
	assert_code(f->c, dmb_context_create(f->c, "over", &extra), DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(f->c)->message, "contexts_per_client"));
	/* The limit is the uid's: another session of it gets no more. */
	struct dmb_client *o = client_connect(&g_daemon, "other");
	assert_code(o, dmb_context_create(o, "o", &extra), DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(o)->message, "contexts_per_client"));
	/* Once this session gives one back, the other may have it. */
	assert_ok(f->c, dmb_context_destroy(f->c, ctx[2]));
	assert_ok(o, dmb_context_create(o, "o", &extra));
	dmb_close(o);
	assert_ok(f->c, dmb_context_create(f->c, "l", &ctx[2]));

	/* regions_per_context = 3 */
	int m = make_memfd(PG, 0);
	struct dmb_region_info ri;
	for (int i = 0; i < 3; i++)
		assert_ok(f->c, dmb_region_register(f->c, ctx[0], m, 0, &ri));
	assert_code(f->c, dmb_region_register(f->c, ctx[0], m, 0, &ri), DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(f->c)->message, "regions_per_context"));

	/* mappings_per_context = 100 */
	struct dmb_map_entry e[101];
	for (int i = 0; i < 101; i++)
		e[i] = (struct dmb_map_entry){ ri.region, 0, 0x100000 + (uint64_t)i * PG, PG, DMB_READ };
	assert_code(f->c, dmb_map_batch(f->c, ctx[0], e, 101), DMB_RESOURCE_EXHAUSTED);
	assert_ok(f->c, dmb_map_batch(f->c, ctx[0], e, 100));
	assert_code(f->c, dmb_map(f->c, ctx[0], &e[100]), DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(f->c)->message, "mappings_per_context"));
	close(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_wrong_kinds_of_fd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seals_and_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unregister_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_context_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
	};
	setenv("DMB_TEST_EXTRA_CONFIG",
	       "[limits]\ncontexts_per_client = 4\nregions_per_context = 3\nmappings_per_context = 100\n",
	       1);
	return cmocka_run_group_tests_name("region", tests, group_start_daemon, group_stop_daemon);
}
