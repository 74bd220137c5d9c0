/* Policy: per-uid/gid sections, limits enforced before kernel work, admin,
 * P2P permission, drop-in files, and reload on SIGHUP without disturbing
 * existing mappings (a bad file keeps the old policy). Clients of other
 * uids are forked children that drop to that uid. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PG 4096ull
#define UID_A 4242
#define UID_B 4343

static const char base_policy[] =
	"[devices]\nallow =\n"
	"[default]\ncontexts = 2\npinned_bytes = 1M\n"
	"[gid 5000]\ncontexts = 3\n"
	"[uid 4242]\ndevices = 0000:01:00.0\npinned_bytes = 64K\n"
	"[uid 4343]\ncontexts = 5\ndevices = 0000:02:00.0\np2p = yes\n";

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void write_config(const char *policy)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/dmabroker.conf", g_daemon.dir);
	char text[4096];
	snprintf(text, sizeof(text),
		 "[daemon]\nsocket = %s\nsocket_mode = 0666\nbackend = sim\nlog_level = debug\n%s",
		 g_daemon.sock, policy);
	write_file(path, text);
}

/* fn as a client of uid/gid (client_run_as): 0 = every check in it passed,
 * else the line of the failing one. */
static int run_as(uid_t uid, gid_t gid, int (*fn)(struct dmb_client *c))
{
	return client_run_as(&g_daemon, uid, gid, "policy", fn);
}

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "check failed at line %d: %s (%s)\n", __LINE__, #x, dmb_last_error(c)->message); return __LINE__ % 250; } } while (0)

static int uid_a_checks(struct dmb_client *c)
{
	uint64_t ctx[3];
	/* [default] contexts = 2 applies (uid 4242 does not override it) */
	CHECK(dmb_context_create(c, "a", &ctx[0]) == 0);
	CHECK(dmb_context_create(c, "a", &ctx[1]) == 0);
	CHECK(dmb_context_create(c, "a", &ctx[2]) < 0 && dmb_last_error(c)->code == DMB_RESOURCE_EXHAUSTED);
	CHECK(strstr(dmb_last_error(c)->message, "contexts_per_client"));
	/* not admin */
	struct dmb_status st;
	CHECK(dmb_status(c, &st) < 0 && dmb_last_error(c)->code == DMB_PERMISSION_DENIED);
	/* its device and no other */
	CHECK(dmb_device_open(c, ctx[0], "0000:02:00.0", NULL, NULL) < 0 &&
	      dmb_last_error(c)->code == DMB_PERMISSION_DENIED);
	struct dmb_device_info di;
	CHECK(dmb_device_open(c, ctx[0], "0000:01:00.0", NULL, &di) == 0);
	/* pinned_bytes = 64K, checked before any kernel work */
	int m = memfd_create("a", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(ftruncate(m, 1 << 20) == 0 && fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	struct dmb_region_info ri;
	CHECK(dmb_region_register(c, ctx[0], m, 0, &ri) == 0);
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 64 * 1024, DMB_READ | DMB_WRITE };
	CHECK(dmb_map(c, ctx[0], &e) == 0);
	e.iova = 0x200000;
	e.length = PG;
	CHECK(dmb_map(c, ctx[0], &e) < 0 && dmb_last_error(c)->code == DMB_RESOURCE_EXHAUSTED);
	CHECK(strstr(dmb_last_error(c)->message, "pinned_bytes"));
	/* P2P is off by default */
	CHECK(dmb_map_peer(c, ctx[0], di.device, NULL, 0, 0, 0x400000, PG, DMB_READ) < 0 &&
	      dmb_last_error(c)->code == DMB_PERMISSION_DENIED);
	/* the mapping that was allowed works */
	uint8_t buf[16];
	CHECK(dmb_sim_dma_read(c, ctx[0], 0x100000, buf, 16) == 0);
	close(m);
	return 0;
}

static int uid_b_checks(struct dmb_client *c)
{
	uint64_t ctx[5];
	for (int i = 0; i < 5; i++)
		CHECK(dmb_context_create(c, "b", &ctx[i]) == 0);
	CHECK(dmb_context_create(c, "b", &ctx[0]) < 0);
	struct dmb_device_info di;
	CHECK(dmb_device_open(c, ctx[0], "0000:02:00.0", NULL, &di) == 0);
	struct dmb_device_state st;
	CHECK(dmb_device_set_command(c, di.device, DMB_PCI_MEMORY, 0, &st) == 0);
	CHECK(dmb_map_peer(c, ctx[1], di.device, NULL, 0, 0, 0x400000, PG, DMB_READ) == 0);
	return 0;
}

static int gid_checks(struct dmb_client *c)
{
	uint64_t ctx[4];
	for (int i = 0; i < 3; i++)
		CHECK(dmb_context_create(c, "g", &ctx[i]) == 0);
	CHECK(dmb_context_create(c, "g", &ctx[3]) < 0);
	return 0;
}

/* Three sessions of uid 4242 ([default] contexts = 2, pinned_bytes = 64K)
 * share that grant: limits bound the uid, not each connection. */
static int uid_a_sessions(struct dmb_client *c)
{
	struct dmb_client *s2, *s3;
	CHECK(dmb_connect(g_daemon.sock, "second", &s2) == 0);
	CHECK(dmb_connect(g_daemon.sock, "third", &s3) == 0);
	uint64_t c1, c2, c3;
	int m = memfd_create("a", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(ftruncate(m, 1 << 20) == 0 && fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	struct dmb_region_info r1, r2;
	CHECK(dmb_context_create(c, "a", &c1) == 0);
	CHECK(dmb_region_register(c, c1, m, 0, &r1) == 0);
	struct dmb_map_entry e = { r1.region, 0, 0x100000, 32 * 1024, DMB_READ };
	CHECK(dmb_map(c, c1, &e) == 0);
	CHECK(dmb_context_create(s2, "a", &c2) == 0);
	CHECK(dmb_region_register(s2, c2, m, 0, &r2) == 0);
	e.region = r2.region;
	CHECK(dmb_map(s2, c2, &e) == 0);
	/* Two contexts and 64K pinned between them: the third session gets
	 * neither a context nor the second one another page. */
	CHECK(dmb_context_create(s3, "a", &c3) < 0 && dmb_last_error(s3)->code == DMB_RESOURCE_EXHAUSTED);
	CHECK(strstr(dmb_last_error(s3)->message, "contexts_per_client (2) of uid 4242"));
	e.iova = 0x200000;
	e.length = PG;
	CHECK(dmb_map(s2, c2, &e) < 0 && dmb_last_error(s2)->code == DMB_RESOURCE_EXHAUSTED);
	CHECK(strstr(dmb_last_error(s2)->message, "pinned_bytes (65536) of uid 4242"));
	/* What one session gives back, another may take. */
	CHECK(dmb_context_destroy(c, c1) == 0);
	CHECK(dmb_map(s2, c2, &e) == 0);
	CHECK(dmb_context_create(s3, "a", &c3) == 0);
	close(m);
	dmb_close(s2);
	dmb_close(s3);
	return 0;
}

static void test_limits_span_sessions(void **state)
{
	assert_int_equal(run_as(UID_A, UID_A, uid_a_sessions), 0);
	assert_true(daemon_wait_idle(&g_daemon));
}

static void test_sections_resolve_per_client(void **state)
{
	assert_int_equal(run_as(UID_A, UID_A, uid_a_checks), 0);
	assert_int_equal(run_as(UID_B, UID_B, uid_b_checks), 0);
	assert_int_equal(run_as(4444, 5000, gid_checks), 0);
	assert_true(daemon_wait_idle(&g_daemon));
}

static bool wait_log(const char *needle)
{
	for (int i = 0; i < 500; i++) {
		FILE *f = fopen(g_daemon.log, "r");
		char line[2048];
		bool hit = false;
		while (f && !hit && fgets(line, sizeof(line), f))
			hit = strstr(line, needle) != NULL;
		if (f)
			fclose(f);
		if (hit)
			return true;
		usleep(10000);
	}
	return false;
}

static void test_reload_keeps_mappings(void **state)
{
	/* root is admin and [default] limits apply to it: 2 contexts, 1M */
	struct dmb_client *c = client_connect(&g_daemon, "reload");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "r", &ctx));
	int m = make_memfd(1 << 20, 0);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 256 * 1024, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &e));

	/* A bad policy: refused with file:line, the old one stays. */
	write_config("[default]\ncontexts = 2\npinned_bytes = lots\n");
	kill(g_daemon.pid, SIGHUP);
	assert_true(wait_log("pinned_bytes must be a size"));
	assert_true(wait_log("the old policy stays in force"));
	e.iova = 0x200000;
	assert_ok(c, dmb_map(c, ctx, &e)); /* 512K of 1M: still allowed */

	/* A tighter policy via a drop-in: new requests obey it at once ... */
	write_config(base_policy);
	char dir[256], drop[300];
	snprintf(dir, sizeof(dir), "%s/dmabroker.conf.d", g_daemon.dir);
	mkdir(dir, 0755);
	snprintf(drop, sizeof(drop), "%s/50-tight.conf", dir);
	write_file(drop, "[uid 0]\npinned_bytes = 256K\nadmin = yes\n");
	kill(g_daemon.pid, SIGHUP);
	assert_true(wait_log("policy reloaded"));
	e.iova = 0x300000;
	assert_code(c, dmb_map(c, ctx, &e), DMB_RESOURCE_EXHAUSTED);
	/* ... and the mappings made before stay, and move bytes. */
	check_dma(c, ctx, m, 0, 0x100000, 4096, 1);
	check_dma(c, ctx, m, 0, 0x200000, 4096, 2);
	struct dmb_stats st;
	assert_ok(c, dmb_stats(c, ctx, &st));
	assert_int_equal(st.mappings, 2);
	unlink(drop);
	rmdir(dir);
	dmb_close(c);
	close(m);
	assert_true(daemon_wait_idle(&g_daemon));
}

static int group_setup(void **state)
{
	char extra[2048];
	snprintf(extra, sizeof(extra), "%s", base_policy);
	setenv("DMB_TEST_EXTRA_CONFIG", extra, 1);
	int r = group_start_daemon(state);
	chmod(g_daemon.dir, 0755); /* clients of other uids reach the socket */
	return r;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sections_resolve_per_client),
		cmocka_unit_test(test_limits_span_sessions),
		cmocka_unit_test(test_reload_keeps_mappings),
	};
	return cmocka_run_group_tests_name("policy", tests, group_setup, group_stop_daemon);
}
