/* No-IOMMU contexts on the sim backend: a simulated function declared
 * without an IOMMU ([sim] noiommu_devices) is opened in a no-IOMMU context,
 * its DMA engine is programmed with the physical addresses PhysRanges
 * returned and moves the right bytes both ways; unmapping unpins, and the
 * old physical addresses fault. The policy grants the context kind per
 * uid (default off, reload works); every bad input gets its error. */
#include "harness.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define PG 4096ull
#define CHUNK (4 * PG)
#define BDF_IOMMU "0000:01:00.0"
#define BDF_NOIOMMU "0000:05:00.0"
#define IOVA 0x100000ull
#define UID_OTHER 4242
#define MAX_LIST 4096 /* ranges per PhysRangesReply (docs/protocol.md) */

static const char policy[] = "[sim]\nnoiommu_devices = " BDF_NOIOMMU "\n"
			     "[devices]\nallow = " BDF_IOMMU ", 0000:02:00.0, " BDF_NOIOMMU "\n"
			     "[uid 0]\nnoiommu = yes\n";

static void write_config(const char *extra)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/dmabroker.conf", g_daemon.dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "[daemon]\nsocket = %s\nsocket_mode = 0666\nbackend = sim\nlog_level = debug\n%s%s",
		g_daemon.sock, policy, extra);
	fclose(f);
}

static int group_setup(void **state)
{
	(void)state;
	daemon_start(&g_daemon, policy);
	chmod(g_daemon.dir, 0755); /* clients of other uids reach the socket */
	return 0;
}

/* A no-IOMMU context holding the no-IOMMU device (bus master on) and a
 * region of size bytes mapped at IOVA. */
struct fx {
	struct dmb_client *c;
	uint64_t ctx, dev, region;
	int memfd;
	size_t size;
};

static void fx_open(struct fx *f, size_t size, bool map)
{
	memset(f, 0, sizeof(*f));
	f->c = client_connect(&g_daemon, "noiommu");
	f->size = size;
	assert_ok(f->c, dmb_context_create_flags(f->c, "bare", DMB_CONTEXT_NOIOMMU, &f->ctx, NULL));
	struct dmb_device_info di;
	assert_ok(f->c, dmb_device_open(f->c, f->ctx, BDF_NOIOMMU, NULL, &di));
	f->dev = di.device;
	assert_ok(f->c, dmb_device_set_command(f->c, f->dev, DMB_PCI_BUS_MASTER, 0, NULL));
	f->memfd = make_memfd(size, 3);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, f->memfd, 0, &ri));
	f->region = ri.region;
	if (map) {
		struct dmb_map_entry me = { f->region, 0, IOVA, size, DMB_READ | DMB_WRITE };
		assert_ok(f->c, dmb_map(f->c, f->ctx, &me));
	}
}

static void fx_close(struct fx *f)
{
	assert_ok(f->c, dmb_context_destroy(f->c, f->ctx));
	dmb_close(f->c);
	close(f->memfd);
}

/* dmabrokerctl's output for args (against the test daemon) contains want. */
static bool ctl_says(const char *args, const char *want)
{
	const char *ctl = getenv("DMABROKERCTL");
	assert_non_null(ctl);
	char cmd[512], line[512];
	snprintf(cmd, sizeof(cmd), "%s --socket %s %s 2>&1", ctl, g_daemon.sock, args);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	bool found = false;
	while (fgets(line, sizeof(line), p))
		found |= strstr(line, want) != NULL;
	assert_int_equal(pclose(p), 0);
	return found;
}

/* Every range of [iova, iova+len), paged, into out (cap entries). */
static size_t all_ranges(struct dmb_client *c, uint64_t ctx, uint64_t iova, uint64_t len,
			 struct dmb_phys_range *out, size_t cap)
{
	size_t total = 0;
	uint64_t end = iova + len;
	for (;;) {
		size_t n = 0;
		bool more = false;
		uint64_t next = 0;
		assert_ok(c, dmb_phys_ranges(c, ctx, iova, end - iova, out + total, cap - total, &n,
					     &more, &next));
		assert_true(n > 0);
		total += n;
		if (!more)
			return total;
		assert_true(next > iova && next < end);
		iova = next;
	}
}

/* The bytes reach the file at the offsets behind the IOVAs, both ways, by
 * the device's DMA engine at the physical addresses. */
static void test_moves_bytes_at_phys(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f, 64 * 1024, true);
	struct dmb_phys_range r[64];
	size_t n = all_ranges(f.c, f.ctx, IOVA, f.size, r, 64);
	/* pinned pages are scattered: several ranges, in IOVA order, covering it */
	assert_true(n > 1);
	uint64_t at = IOVA;
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(r[i].iova, at);
		assert_true(r[i].length > 0);
		assert_true(r[i].phys != r[i].iova);
		at += r[i].length;
		if (i)
			assert_true(r[i].phys != r[i - 1].phys + r[i - 1].length);
	}
	assert_int_equal(at, IOVA + f.size);

	uint8_t *want = malloc(f.size), *got = malloc(f.size);
	for (size_t i = 0; i < n; i++) {
		uint64_t off = r[i].iova - IOVA;
		size_t len = (size_t)r[i].length;
		/* memory -> device */
		fill_pattern(want, len, 100 + (unsigned)i);
		fd_write(f.memfd, off, want, len);
		assert_ok(f.c, dmb_sim_device_dma_read(f.c, f.dev, r[i].phys, got, len));
		assert_memory_equal(got, want, len);
		/* device -> memory */
		fill_pattern(want, len, 200 + (unsigned)i);
		assert_ok(f.c, dmb_sim_device_dma_write(f.c, f.dev, r[i].phys, want, len));
		fd_read(f.memfd, off, got, len);
		assert_memory_equal(got, want, len);
	}
	/* A sub-range starting mid-page and a single byte. */
	struct dmb_phys_range one;
	size_t k;
	bool more;
	assert_ok(f.c, dmb_phys_ranges(f.c, f.ctx, IOVA + 3 * PG + 100, 1, &one, 1, &k, &more, NULL));
	assert_int_equal(k, 1);
	assert_false(more);
	assert_int_equal(one.length, 1);
	assert_int_equal(one.phys, r[0].phys + 3 * PG + 100);
	/* The device's IOVA means nothing to it: no IOMMU translates. */
	assert_true(dmb_sim_device_dma_read(f.c, f.dev, IOVA, got, 64) < 0);
	assert_int_equal(dmb_last_error(f.c)->sys_errno, EFAULT);

	/* Marked everywhere it appears. */
	struct dmb_context_info *ci;
	size_t nc;
	assert_ok(f.c, dmb_list_contexts(f.c, false, &ci, &nc));
	assert_int_equal(nc, 1);
	assert_true(ci[0].noiommu);
	free(ci);
	struct dmb_stats st;
	assert_ok(f.c, dmb_stats(f.c, 0, &st));
	assert_int_equal(st.noiommu_contexts, 1);
	assert_int_equal(st.pinned_bytes, f.size);
	struct dmb_status ss;
	assert_ok(f.c, dmb_status(f.c, &ss));
	assert_int_equal(ss.totals.noiommu_contexts, 1);
	assert_int_equal(ss.totals.pinned_bytes, f.size);
	assert_true(daemon_log_count(&g_daemon, "gives NO isolation") >= 1);
	assert_true(ctl_says("list contexts", "NONE(no-IOMMU)"));
	assert_true(ctl_says("list contexts", "1 no-IOMMU context"));
	assert_true(ctl_says("--json list contexts", "\"noiommu\": true"));
	assert_true(ctl_says("status", "(1 no-IOMMU: NO isolation)"));
	assert_true(ctl_says("--json status", "\"noiommu_contexts\": 1"));
	char cmd[64], hex[32];
	snprintf(cmd, sizeof(cmd), "phys-ranges %llu", (unsigned long long)f.ctx);
	snprintf(hex, sizeof(hex), "0x%016llx", (unsigned long long)r[1].phys);
	assert_true(ctl_says(cmd, hex));
	char line[64];
	snprintf(line, sizeof(line), "%zu physically contiguous ranges", n);
	assert_true(ctl_says(cmd, line));

	/* Unmapping unpins: the old physical addresses fault, nothing moves. */
	uint64_t bytes = 0;
	assert_ok(f.c, dmb_unmap(f.c, f.ctx, IOVA, f.size, &bytes));
	assert_int_equal(bytes, f.size);
	assert_ok(f.c, dmb_status(f.c, &ss));
	assert_int_equal(ss.totals.pinned_bytes, 0);
	fd_read(f.memfd, 0, want, f.size);
	for (size_t i = 0; i < n; i++) {
		assert_true(dmb_sim_device_dma_read(f.c, f.dev, r[i].phys, got, 64) < 0);
		assert_int_equal(dmb_last_error(f.c)->sys_errno, EFAULT);
		fill_pattern(got, 64, 7);
		assert_true(dmb_sim_device_dma_write(f.c, f.dev, r[i].phys, got, 64) < 0);
	}
	fd_read(f.memfd, 0, got, f.size);
	assert_memory_equal(got, want, f.size);
	assert_code(f.c, dmb_phys_ranges(f.c, f.ctx, IOVA, PG, &one, 1, &k, &more, NULL),
		    DMB_NOT_FOUND);
	free(want);
	free(got);
	fx_close(&f);
	assert_true(daemon_wait_idle(&g_daemon));
}

/* A device without an IOMMU only in a no-IOMMU context, a device with one
 * only in a normal context: each refusal says why. */
static void test_device_kind(void **state)
{
	(void)state;
	struct dmb_client *c = client_connect(&g_daemon, "kind");
	uint64_t normal, bare;
	struct dmb_device_info di;
	assert_ok(c, dmb_context_create(c, "normal", &normal));
	assert_ok(c, dmb_context_create_flags(c, "bare", DMB_CONTEXT_NOIOMMU, &bare, NULL));
	assert_code(c, dmb_device_open(c, normal, BDF_NOIOMMU, NULL, &di), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(c)->message, "has no IOMMU"));
	assert_code(c, dmb_device_open(c, bare, BDF_IOMMU, NULL, &di), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(c)->message, "has an IOMMU"));
	/* Both still work the right way round. */
	assert_ok(c, dmb_device_open(c, normal, BDF_IOMMU, NULL, &di));
	assert_ok(c, dmb_device_open(c, bare, BDF_NOIOMMU, NULL, &di));
	struct dmb_context_info *ci;
	size_t nc;
	assert_ok(c, dmb_list_contexts(c, false, &ci, &nc));
	assert_int_equal(nc, 2);
	for (size_t i = 0; i < nc; i++)
		assert_int_equal(ci[i].noiommu, ci[i].context == bare);
	free(ci);
	dmb_close(c);
	assert_true(daemon_wait_idle(&g_daemon));
}

/* fn as a client of uid (client_run_as): 0 = every check passed, else the
 * failing line. */
static int run_as(uid_t uid, int (*fn)(struct dmb_client *c))
{
	return client_run_as(&g_daemon, uid, uid, "other", fn);
}

#define CHECK(x)                                                                   \
	do {                                                                       \
		if (!(x))                                                          \
			return __LINE__ & 0xff ? __LINE__ & 0xff : 1;              \
	} while (0)

static int refused(struct dmb_client *c)
{
	uint64_t ctx;
	CHECK(dmb_context_create_flags(c, "bare", DMB_CONTEXT_NOIOMMU, &ctx, NULL) < 0);
	CHECK(dmb_last_error(c)->code == DMB_PERMISSION_DENIED);
	CHECK(strstr(dmb_last_error(c)->message, "noiommu = yes") != NULL);
	/* A normal context is still fine. */
	CHECK(dmb_context_create(c, "normal", &ctx) == 0);
	return 0;
}

static int granted(struct dmb_client *c)
{
	uint64_t ctx;
	CHECK(dmb_context_create_flags(c, "bare", DMB_CONTEXT_NOIOMMU, &ctx, NULL) == 0);
	struct dmb_stats st;
	CHECK(dmb_stats(c, 0, &st) == 0 && st.noiommu_contexts == 1);
	return 0;
}

/* Default off: only the uid the policy names gets it; a reload grants and
 * takes it away again. */
static void test_policy_grant_and_reload(void **state)
{
	(void)state;
	assert_int_equal(run_as(UID_OTHER, refused), 0);
	struct dmb_client *admin = client_connect(&g_daemon, "admin");
	write_config("[uid 4242]\nnoiommu = yes\n");
	assert_ok(admin, dmb_reload_policy(admin, NULL));
	assert_int_equal(run_as(UID_OTHER, granted), 0);
	write_config("");
	assert_ok(admin, dmb_reload_policy(admin, NULL));
	assert_int_equal(run_as(UID_OTHER, refused), 0);
	/* The refusal is in the log, with the setting. */
	assert_true(daemon_log_count(&g_daemon, "no-IOMMU context refused") >= 2);
	dmb_close(admin);
	assert_true(daemon_wait_idle(&g_daemon));
}

/* Another (non-admin) client: another's context is NOT_FOUND, the same
 * sentence as one that never existed. */
static uint64_t g_victim;
static int wrong_owner(struct dmb_client *c)
{
	struct dmb_phys_range r;
	size_t n;
	bool more;
	CHECK(dmb_phys_ranges(c, g_victim, IOVA, PG, &r, 1, &n, &more, NULL) < 0);
	CHECK(dmb_last_error(c)->code == DMB_NOT_FOUND);
	char want[64];
	snprintf(want, sizeof(want), "context %llu not found", (unsigned long long)g_victim);
	CHECK(strcmp(dmb_last_error(c)->message, want) == 0);
	return 0;
}

/* PhysRanges and ContextCreate{noiommu}: every bad input its error, the
 * session and the daemon unharmed. */
static void test_bad_input(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f, 64 * 1024, true);
	struct dmb_phys_range r[4];
	size_t n;
	bool more;
	struct dmb_client *c = f.c;

	/* zero length; a range that wraps */
	assert_code(c, dmb_phys_ranges(c, f.ctx, IOVA, 0, r, 4, &n, &more, NULL),
		    DMB_INVALID_ARGUMENT);
	assert_code(c, dmb_phys_ranges(c, f.ctx, UINT64_MAX - PG + 1, 2 * PG, r, 4, &n, &more, NULL),
		    DMB_INVALID_ARGUMENT);
	/* oversized: past the mapping; unmapped; a hole in the middle */
	assert_code(c, dmb_phys_ranges(c, f.ctx, IOVA, f.size + PG, r, 4, &n, &more, NULL),
		    DMB_NOT_FOUND);
	assert_non_null(strstr(dmb_last_error(c)->message, "is not mapped"));
	assert_code(c, dmb_phys_ranges(c, f.ctx, IOVA - PG, 2 * PG, r, 4, &n, &more, NULL),
		    DMB_NOT_FOUND);
	assert_code(c, dmb_phys_ranges(c, f.ctx, 0x7f0000000000ull, PG, r, 4, &n, &more, NULL),
		    DMB_NOT_FOUND);
	assert_code(c, dmb_phys_ranges(c, f.ctx, UINT64_MAX, 1, r, 4, &n, &more, NULL),
		    DMB_NOT_FOUND);
	struct dmb_map_entry me = { f.region, 0, IOVA + f.size + 2 * PG, PG, DMB_READ };
	assert_ok(c, dmb_map(c, f.ctx, &me));
	assert_code(c, dmb_phys_ranges(c, f.ctx, IOVA, f.size + 3 * PG, r, 4, &n, &more, NULL),
		    DMB_NOT_FOUND);
	/* out-of-range / unknown context; another client's context */
	assert_code(c, dmb_phys_ranges(c, 0, IOVA, PG, r, 4, &n, &more, NULL), DMB_NOT_FOUND);
	assert_code(c, dmb_phys_ranges(c, UINT64_MAX, IOVA, PG, r, 4, &n, &more, NULL),
		    DMB_NOT_FOUND);
	g_victim = f.ctx;
	assert_int_equal(run_as(UID_OTHER, wrong_owner), 0);
	/* an admin session (root) may ask of any context, as ListMappings */
	struct dmb_client *other = client_connect(&g_daemon, "other");
	assert_ok(other, dmb_phys_ranges(other, f.ctx, IOVA, PG, r, 4, &n, &more, NULL));
	/* a normal context */
	uint64_t normal;
	assert_ok(other, dmb_context_create(other, "normal", &normal));
	int memfd = make_memfd(PG, 1);
	struct dmb_region_info ri;
	assert_ok(other, dmb_region_register(other, normal, memfd, 0, &ri));
	struct dmb_map_entry ne = { ri.region, 0, IOVA, PG, DMB_READ };
	assert_ok(other, dmb_map(other, normal, &ne));
	assert_code(other, dmb_phys_ranges(other, normal, IOVA, PG, r, 4, &n, &more, NULL),
		    DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(other)->message, "not a no-IOMMU context"));
	/* a no-IOMMU context without a device yet */
	uint64_t bare;
	assert_ok(other, dmb_context_create_flags(other, "bare", DMB_CONTEXT_NOIOMMU, &bare, NULL));
	assert_ok(other, dmb_region_register(other, bare, memfd, 0, &ri));
	ne.region = ri.region;
	assert_ok(other, dmb_map(other, bare, &ne));
	assert_code(other, dmb_phys_ranges(other, bare, IOVA, PG, r, 4, &n, &more, NULL),
		    DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(other)->message, "no device yet"));
	close(memfd);

	/* ContextCreate{noiommu}: a name too long; persistent without an fd store */
	char name[80];
	memset(name, 'x', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	uint64_t ctx;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
	assert_code(c, dmb_context_create_flags(c, name, DMB_CONTEXT_NOIOMMU, &ctx, NULL),
		    DMB_INVALID_ARGUMENT);
	assert_code(c, dmb_context_create_flags(c, "p", DMB_CONTEXT_NOIOMMU | DMB_CONTEXT_PERSISTENT,
						&ctx, token),
		    DMB_FAILED_PRECONDITION);

	/* wrong fd: PhysRanges takes none */
	Dmb__PhysRanges q = DMB__PHYS_RANGES__INIT;
	q.context_id = f.ctx;
	q.iova = IOVA;
	q.length = PG;
	Dmb__Request req = DMB__REQUEST__INIT;
	req.body_case = DMB__REQUEST__BODY_PHYS_RANGES;
	req.phys_ranges = &q;
	Dmb__Reply *rep = NULL;
	int fd = make_memfd(PG, 2);
	assert_int_equal(dmb_call(c, &req, &fd, 1, &rep, NULL, NULL), 0);
	assert_non_null(rep->error);
	assert_int_equal(rep->error->code, DMB_INVALID_ARGUMENT);
	dmb__reply__free_unpacked(rep, NULL);
	close(fd);
	/* malformed: the PhysRanges submessage cut short (a length past the end) */
	uint8_t pkt[64];
	size_t len = dmb__request__pack(&req, pkt);
	assert_true(len > 4 && len <= sizeof(pkt));
	rep = NULL;
	assert_int_equal(dmb_call_bytes(c, pkt, len - 3, NULL, 0, &rep), 0);
	assert_non_null(rep->error);
	assert_int_equal(rep->error->code, DMB_INVALID_ARGUMENT);
	dmb__reply__free_unpacked(rep, NULL);

	/* after all that, the session still answers */
	assert_ok(c, dmb_phys_ranges(c, f.ctx, IOVA, f.size, r, 4, &n, &more, NULL));
	assert_true(n >= 1);
	dmb_close(other);
	fx_close(&f);
	assert_true(daemon_wait_idle(&g_daemon));
}

/* More ranges than one reply holds: 4096 per reply, `more` and `next_iova`
 * page on, and the pages join up exactly. */
static void test_paging(void **state)
{
	(void)state;
	struct fx f;
	size_t chunks = MAX_LIST + 6;
	fx_open(&f, chunks * CHUNK, true);
	struct dmb_phys_range *r = calloc(chunks + 1, sizeof(*r));
	size_t n;
	bool more;
	uint64_t next;
	assert_ok(f.c, dmb_phys_ranges(f.c, f.ctx, IOVA, f.size, r, chunks + 1, &n, &more, &next));
	assert_int_equal(n, MAX_LIST);
	assert_true(more);
	assert_int_equal(next, r[n - 1].iova + r[n - 1].length);
	size_t total = all_ranges(f.c, f.ctx, IOVA, f.size, r, chunks + 1);
	assert_int_equal(total, chunks);
	/* a cap below the reply's ranges pages on from the last one kept */
	assert_ok(f.c, dmb_phys_ranges(f.c, f.ctx, IOVA, f.size, r, 3, &n, &more, &next));
	assert_int_equal(n, 3);
	assert_true(more);
	assert_int_equal(next, IOVA + 3 * CHUNK);
	free(r);
	fx_close(&f);
	assert_true(daemon_wait_idle(&g_daemon));
}

/* A client that dies with PhysRanges requests in flight: nothing leaks,
 * the daemon goes on. */
static void test_client_dies_mid_request(void **state)
{
	(void)state;
	int before = daemon_quiet_fd_count(&g_daemon, 0);
	for (int round = 0; round < 8; round++) {
		struct fx f;
		fx_open(&f, 64 * 1024, true);
		Dmb__PhysRanges q = DMB__PHYS_RANGES__INIT;
		q.context_id = f.ctx;
		q.iova = IOVA;
		q.length = f.size;
		Dmb__Request req = DMB__REQUEST__INIT;
		req.body_case = DMB__REQUEST__BODY_PHYS_RANGES;
		req.phys_ranges = &q;
		uint8_t pkt[64];
		for (int i = 0; i < 16; i++) {
			req.id = 1000 + (uint64_t)i;
			size_t len = dmb__request__pack(&req, pkt);
			assert_int_equal(send(dmb_socket(f.c), pkt, len, 0), (ssize_t)len);
		}
		/* and ContextCreate{noiommu} requests, whose contexts die with it */
		Dmb__ContextCreate cc = DMB__CONTEXT_CREATE__INIT;
		cc.noiommu = true;
		cc.name = (char *)"dying";
		Dmb__Request creq = DMB__REQUEST__INIT;
		creq.body_case = DMB__REQUEST__BODY_CONTEXT_CREATE;
		creq.context_create = &cc;
		for (int i = 0; i < 4; i++) {
			creq.id = 2000 + (uint64_t)i;
			size_t len = dmb__request__pack(&creq, pkt);
			assert_int_equal(send(dmb_socket(f.c), pkt, len, 0), (ssize_t)len);
		}
		dmb_close(f.c); /* the context dies with the session */
		close(f.memfd);
	}
	assert_true(daemon_wait_idle(&g_daemon));
	assert_int_equal(daemon_wait_fd_count(&g_daemon, before, 0), before);
	struct dmb_client *c = client_connect(&g_daemon, "after");
	struct dmb_stats st;
	assert_ok(c, dmb_stats(c, 0, &st));
	dmb_close(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_moves_bytes_at_phys),
		cmocka_unit_test(test_device_kind),
		cmocka_unit_test(test_policy_grant_and_reload),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_paging),
		cmocka_unit_test(test_client_dies_mid_request),
	};
	return cmocka_run_group_tests_name("noiommu", tests, group_setup, group_stop_daemon);
}
