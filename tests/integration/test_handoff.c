/* The host handoff on the sim backend with the simulated preserver
 * (tools/dmb-sim-preserver), under the harness that plays systemd's fd
 * store (fdstore.h). A simulated kexec is as harsh as a real one: the
 * daemon is killed, every fd-store entry (so every sim backend object) is
 * thrown away, the VMM-like clients are closed, and only what the preserver
 * kept survives into the "new kernel" daemon. Every mapping is proved by
 * moving bytes with the sim DMA engine, never by the daemon's tables. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fdstore.h"

#define PG 4096ull
#define MiB (1ull << 20)
#define BDF_A "0000:01:00.0"
#define BDF_B "0000:02:00.0"
#define P2P_IOVA 0x40000000ull

static struct fds H;
static char pv_sock[160];
static pid_t pv_pid;
static char cfg_text[512];

static struct daemon as_daemon(void)
{
	struct daemon d = { .pid = H.pid };
	snprintf(d.sock, sizeof(d.sock), "%s", H.sock);
	snprintf(d.dir, sizeof(d.dir), "%s", H.dir);
	return d;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void check_log_clean(void)
{
	if (fds_log_has(&H, "Sanitizer") || fds_log_has(&H, "runtime error:")) {
		fds_dump_log(&H);
		fail_msg("sanitizer report in the daemon's log");
	}
}

static void start(void)
{
	int r = fds_start_dmabrokerd(&H, cfg_text, NULL);
	if (r < 0) {
		fds_dump_log(&H);
		fail_msg("dmabrokerd did not start: %s", strerror(-r));
	}
	check_log_clean();
}

static struct dmb_client *conn(const char *name)
{
	struct dmb_client *c = NULL;
	int r = dmb_connect(H.sock, name, &c);
	if (r < 0) {
		fds_dump_log(&H);
		fail_msg("connect: %s", strerror(-r));
	}
	return c;
}

/* ------------------------------------------------------------ the preserver */

static int run_tool(const char *verb, const char *arg)
{
	const char *bin = getenv("DMB_SIM_PRESERVER");
	pid_t pid = fork();
	if (pid == 0) {
		execl(bin, bin, verb, pv_sock, arg, (char *)NULL);
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* `dmb-sim-preserver status` (the simulated kernel's view, not the
 * daemon's), into buf. */
static void preserver_status(char *buf, size_t len)
{
	const char *bin = getenv("DMB_SIM_PRESERVER");
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		close(p[0]);
		execl(bin, bin, "status", pv_sock, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	size_t n = 0;
	ssize_t k;
	while (n + 1 < len && (k = read(p[0], buf + n, len - 1 - n)) > 0)
		n += (size_t)k;
	buf[n] = '\0';
	close(p[0]);
	int st;
	waitpid(pid, &st, 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void preserver_start(void)
{
	snprintf(pv_sock, sizeof(pv_sock), "%s/preserver.sock", H.dir);
	pv_pid = sim_preserver_start(pv_sock);
}

static void preserver_stop(void)
{
	sim_preserver_stop(pv_pid);
	pv_pid = 0;
}

/* The simulated kexec: the daemon dies, the preserver freezes its sessions
 * into incoming ones, the fd store (every sim object with it) is gone. */
static void kexec(int sig)
{
	assert_true(fds_stop(&H, sig) >= 0);
	assert_int_equal(run_tool("kexec", NULL), 0);
	fds_store_clear(&H);
}

static void use_config(const char *extra)
{
	snprintf(cfg_text, sizeof(cfg_text),
		 "[handoff]\npreserver = sim:%s\ngrace_period_s = 3\n[persist]\ngrace_period_s = 600\n"
		 "[devices]\nallow = " BDF_A " " BDF_B "\n[p2p]\nallow = yes\n%s",
		 pv_sock, extra ? extra : "");
}

/* ------------------------------------------------------------ helpers */

struct vmm {
	struct dmb_client *c;
	uint64_t ctx;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
	uint64_t region;
	size_t size;
	unsigned seed;
};

static void vmm_create(struct vmm *v, const char *name, size_t size, unsigned seed)
{
	v->c = conn(name);
	v->size = size;
	v->seed = seed;
	assert_ok(v->c, dmb_context_create_persistent(v->c, name, &v->ctx, v->token));
	int m = make_memfd(size, seed);
	uint8_t *pat = malloc(size);
	fill_pattern(pat, size, seed);
	fd_write(m, 0, pat, size);
	free(pat);
	struct dmb_region_info ri;
	assert_ok(v->c, dmb_region_register(v->c, v->ctx, m, 0, &ri));
	v->region = ri.region;
	close(m); /* the broker holds it; after the kexec only the preserver does */
}

static void vmm_map(struct vmm *v, uint64_t off, uint64_t iova, uint64_t len)
{
	struct dmb_map_entry e = { v->region, off, iova, len, DMB_READ | DMB_WRITE };
	assert_ok(v->c, dmb_map(v->c, v->ctx, &e));
}

/* Reads `len` bytes at iova through context ctx (c: the owner, or an admin
 * for an ownerless one) and compares them with the pattern make_memfd(seed)
 * wrote at file offset off. */
static void expect_pattern(struct dmb_client *c, uint64_t ctx, uint64_t iova, uint64_t off,
			   size_t len, unsigned seed, size_t size)
{
	uint8_t *all = malloc(size), *got = malloc(len);
	fill_pattern(all, size, seed);
	assert_ok(c, dmb_sim_dma_read(c, ctx, iova, got, len));
	assert_memory_equal(got, all + off, len);
	free(all);
	free(got);
}

static bool has_handoff_event(struct dmb_client *c, const char *state);

struct evstate {
	const char *want;
	bool seen;
};

static void on_event(const struct dmb_event *ev, void *opaque)
{
	struct evstate *s = opaque;
	if (ev->kind == DMB_EV_HANDOFF && ev->handoff_state && !strcmp(ev->handoff_state, s->want) &&
	    ev->message && ev->message[0])
		s->seen = true;
}

static bool has_handoff_event(struct dmb_client *c, const char *state)
{
	struct evstate s = { state, false };
	for (int i = 0; i < 100 && !s.seen; i++) {
		assert_true(dmb_dispatch(c, on_event, &s) >= 0);
		if (!s.seen)
			sleep_ms(10);
	}
	return s.seen;
}

static void expect_state(struct dmb_client *admin, const char *state)
{
	struct dmb_handoff_info hi;
	assert_ok(admin, dmb_handoff_status(admin, &hi));
	if (strcmp(hi.state, state)) {
		fds_dump_log(&H);
		fail_msg("handoff state is %s, expected %s (%s)", hi.state, state, hi.message);
	}
}

static bool wait_state(const char *state, int ms)
{
	for (int i = 0; i < ms / 50; i++) {
		struct dmb_client *a = conn("poll");
		struct dmb_handoff_info hi;
		int r = dmb_handoff_status(a, &hi);
		dmb_close(a);
		if (r == 0 && !strcmp(hi.state, state))
			return true;
		sleep_ms(50);
	}
	return false;
}

/* ------------------------------------------------------------ the whole handoff */

static void test_full_handoff(void **state)
{
	preserver_start();
	use_config(NULL);
	start();
	struct daemon d = as_daemon();

	/* Three VMMs: A with two RAM mappings, two devices and a P2P mapping
	 * into B's BAR; B with one mapping; C with one, never reclaimed. */
	struct vmm a, b, c;
	vmm_create(&a, "vm-a", MiB, 11);
	vmm_map(&a, 0, 0x100000, 256 * 1024);
	vmm_map(&a, 512 * 1024, 0x800000, 64 * 1024);
	struct dmb_device_info da, db;
	assert_ok(a.c, dmb_device_open(a.c, a.ctx, BDF_A, NULL, &da));
	assert_ok(a.c, dmb_device_open(a.c, a.ctx, BDF_B, NULL, &db));
	struct dmb_device_state ds;
	assert_ok(a.c, dmb_device_set_command(a.c, da.device, DMB_PCI_MEMORY | DMB_PCI_BUS_MASTER, 0, &ds));
	assert_ok(a.c, dmb_device_set_command(a.c, db.device, DMB_PCI_MEMORY, 0, &ds));
	assert_ok(a.c, dmb_map_peer(a.c, a.ctx, db.device, NULL, 0, 0, P2P_IOVA, 64 * 1024,
				    DMB_READ | DMB_WRITE));
	vmm_create(&b, "vm-b", 512 * 1024, 22);
	vmm_map(&b, 0, 0x200000, 512 * 1024);
	vmm_create(&c, "vm-c", 64 * 1024, 33);
	vmm_map(&c, 0, 0x10000, 64 * 1024);

	struct dmb_client *adm = conn("admin");
	expect_state(adm, "normal");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_prepare(adm, false, &hi));
	assert_string_equal(hi.state, "prepared");
	assert_int_equal(hi.contexts, 3);
	assert_int_equal(hi.regions, 3);
	assert_int_equal(hi.mappings, 5);
	assert_int_equal(hi.devices, 2);
	assert_int_equal(hi.bytes, MiB + 512 * 1024 + 64 * 1024);
	assert_int_equal(hi.n_left_out, 0);
	assert_true(has_handoff_event(a.c, "prepared"));
	assert_true(has_handoff_event(c.c, "prepared"));

	/* Mutations: retry later; reads work. */
	struct dmb_map_entry e = { a.region, 0, 0x900000, PG, DMB_READ | DMB_WRITE };
	assert_code(a.c, dmb_map(a.c, a.ctx, &e), DMB_UNAVAILABLE);
	assert_true(dmb_last_error(a.c)->retry_after_ms > 0);
	assert_non_null(strstr(dmb_last_error(a.c)->message, "retry later"));
	uint64_t ctx2;
	assert_code(b.c, dmb_context_create(b.c, "new", &ctx2), DMB_UNAVAILABLE);
	struct dmb_stats st;
	assert_ok(a.c, dmb_stats(a.c, a.ctx, &st));
	assert_int_equal(st.mappings, 3);
	expect_pattern(a.c, a.ctx, 0x100000, 0, 4096, a.seed, a.size);
	/* Wrong state. */
	assert_code(adm, dmb_handoff_prepare(adm, false, NULL), DMB_FAILED_PRECONDITION);

	/* A broker crash while prepared: it comes back prepared. */
	assert_int_equal(fds_restart(&H, SIGKILL), 0);
	dmb_close(adm);
	adm = conn("admin");
	expect_state(adm, "prepared");
	assert_code(a.c, dmb_map(a.c, a.ctx, &e), DMB_UNAVAILABLE);
	char line[256];
	assert_int_equal(fds_status(&H, line, sizeof(line)), 0);
	assert_non_null(strstr(line, "; handoff prepared"));

	/* The kexec. Every client goes too. */
	dmb_close(adm);
	dmb_close(a.c);
	dmb_close(b.c);
	dmb_close(c.c);
	kexec(SIGTERM);
	start();
	d.pid = H.pid;
	adm = conn("admin");
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	assert_int_equal(hi.contexts, 3);
	assert_int_equal(hi.unclaimed, 3);
	assert_int_equal(hi.degraded, 0);
	/* Wrong state for both while reclaiming. */
	assert_code(adm, dmb_handoff_prepare(adm, true, NULL), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(adm)->message, "state reclaiming"));
	assert_code(adm, dmb_handoff_abort(adm, NULL), DMB_FAILED_PRECONDITION);
	expect_state(adm, "reclaiming");

	/* Before any reclaim: every RAM mapping moves the right bytes at its
	 * old IOVA (admin-driven sim DMA through the ownerless contexts). */
	expect_pattern(adm, a.ctx, 0x100000, 0, 64 * 1024, a.seed, a.size);
	expect_pattern(adm, a.ctx, 0x100000 + 256 * 1024 - PG, 256 * 1024 - PG, PG, a.seed, a.size);
	expect_pattern(adm, a.ctx, 0x800000, 512 * 1024, 64 * 1024, a.seed, a.size);
	expect_pattern(adm, b.ctx, 0x200000, 0, 512 * 1024 > 65536 ? 65536 : 512 * 1024, b.seed, b.size);
	expect_pattern(adm, b.ctx, 0x200000 + 448 * 1024, 448 * 1024, 64 * 1024, b.seed, b.size);
	expect_pattern(adm, c.ctx, 0x10000, 0, 64 * 1024, c.seed, c.size);
	/* Nothing else is mapped: the hole between A's mappings faults. */
	uint8_t buf[64];
	assert_int_equal(dmb_sim_dma_read(adm, a.ctx, 0x400000, buf, sizeof(buf)) < 0, 1);

	/* A reclaims: its memfd and both devices come back; it continues. */
	struct dmb_client *a2 = conn("vm-a-again");
	struct dmb_reclaim_info ri;
	assert_ok(a2, dmb_context_reclaim(a2, a.ctx, a.token, &ri));
	assert_false(ri.degraded);
	assert_int_equal(ri.n_regions, 1);
	assert_int_equal(ri.n_devices, 2);
	if (ri.mappings != 3) {
		fds_dump_log(&H);
		fail_msg("context A came back with %llu mappings, not 3", (unsigned long long)ri.mappings);
	}
	int amem = ri.regions[0].fd;
	assert_true(amem >= 0);
	check_dma(a2, a.ctx, amem, 0, 0x100000, PG, 101);
	check_dma(a2, a.ctx, amem, 512 * 1024, 0x800000, PG, 102);
	struct dmb_map_entry more = { a.region, 768 * 1024, 0x900000, 64 * 1024, DMB_READ | DMB_WRITE };
	assert_ok(a2, dmb_map(a2, a.ctx, &more));
	check_dma(a2, a.ctx, amem, 768 * 1024, 0x900000, PG, 103);
	/* P2P: the devices came back reset (decoding off), so the mapping is
	 * revoked; once A's VMM turns decoding on it is live again. */
	uint64_t dev_a = 0, dev_b = 0;
	for (size_t i = 0; i < ri.n_devices; i++) {
		if (!strcmp(ri.devices[i].bdf, BDF_A))
			dev_a = ri.devices[i].device;
		if (!strcmp(ri.devices[i].bdf, BDF_B))
			dev_b = ri.devices[i].device;
		if (ri.devices[i].fd >= 0)
			close(ri.devices[i].fd);
	}
	assert_int_equal(dev_a, da.device);
	assert_int_equal(dev_b, db.device);
	assert_ok(a2, dmb_device_set_command(a2, dev_a, DMB_PCI_MEMORY | DMB_PCI_BUS_MASTER, 0, &ds));
	assert_ok(a2, dmb_device_set_command(a2, dev_b, DMB_PCI_MEMORY, 0, &ds));
	uint8_t want[256], got[256];
	fill_pattern(want, sizeof(want), 7);
	assert_ok(a2, dmb_sim_device_dma_write(a2, dev_a, P2P_IOVA + 256, want, sizeof(want)));
	assert_ok(a2, dmb_sim_device_dma_read(a2, dev_a, P2P_IOVA + 256, got, sizeof(got)));
	assert_memory_equal(got, want, sizeof(want));

	/* A broker crash while reclaiming: it goes on reclaiming. */
	assert_int_equal(fds_restart(&H, SIGKILL), 0);
	d.pid = H.pid;
	dmb_close(adm);
	adm = conn("admin");
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	assert_int_equal(hi.unclaimed, 2);

	/* B reclaims; a spent or wrong token is refused. */
	struct dmb_client *b2 = conn("vm-b-again");
	uint8_t wrong[DMB_RECLAIM_TOKEN_SIZE];
	memcpy(wrong, b.token, sizeof(wrong));
	wrong[3] ^= 0x40;
	assert_code(b2, dmb_context_reclaim(b2, b.ctx, wrong, NULL), DMB_PERMISSION_DENIED);
	assert_ok(b2, dmb_context_reclaim(b2, b.ctx, b.token, &ri));
	int bmem = ri.regions[0].fd;
	check_dma(b2, b.ctx, bmem, 128 * 1024, 0x200000 + 128 * 1024, PG, 104);

	/* C is never reclaimed: released after the grace period (3 s), then
	 * the session is finished and the broker is normal. */
	if (!wait_state("normal", 10000)) {
		fds_dump_log(&H);
		fail_msg("the handoff did not finish after the grace period");
	}
	assert_true(fds_log_has(&H, "not reclaimed within 3 s after the host update"));
	struct dmb_stats tot = daemon_totals(&d);
	assert_int_equal(tot.contexts, 2);
	/* A: 256K + 64K + 64K of RAM, B: 512K (P2P is not pinned). */
	assert_int_equal(tot.pinned_bytes, 256 * 1024 + 64 * 1024 + 64 * 1024 + 512 * 1024);
	assert_code(adm, dmb_sim_dma_read(adm, c.ctx, 0x10000, buf, 64), DMB_NOT_FOUND);
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_true(hi.available);
	/* Mutations are accepted again. */
	assert_ok(a2, dmb_context_destroy(a2, a.ctx));
	assert_ok(b2, dmb_context_destroy(b2, b.ctx));
	close(amem);
	close(bmem);
	dmb_close(a2);
	dmb_close(b2);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d)); /* no pin leaked */
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ no-IOMMU */

/* A persistent no-IOMMU context across a host handoff: it comes back as a
 * no-IOMMU context with its device without an IOMMU, its memory at the
 * same physical addresses, and the device moves bytes through them. */
static void test_noiommu_handoff(void **state)
{
	preserver_start();
	use_config("[devices]\nallow = 0000:05:00.0, " BDF_A "\n"
		   "[sim]\nnoiommu_devices = 0000:05:00.0\n[default]\nnoiommu = yes\n");
	start();
	struct daemon d = as_daemon();
	struct dmb_client *c = conn("bare");
	uint64_t ctx;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
	assert_ok(c, dmb_context_create_flags(c, "bare", DMB_CONTEXT_NOIOMMU | DMB_CONTEXT_PERSISTENT,
					      &ctx, token));
	struct dmb_device_info di;
	assert_ok(c, dmb_device_open(c, ctx, "0000:05:00.0", NULL, &di));
	int m = make_memfd(64 * 1024, 9);
	struct dmb_region_info reg;
	assert_ok(c, dmb_region_register(c, ctx, m, 0, &reg));
	close(m);
	struct dmb_map_entry e = { reg.region, 0, 0x100000, 64 * 1024, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &e));
	struct dmb_phys_range before[16], after[16];
	size_t n, n2;
	bool more;
	assert_ok(c, dmb_phys_ranges(c, ctx, 0x100000, 64 * 1024, before, 16, &n, &more, NULL));
	assert_true(n > 1);

	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_prepare(adm, false, &hi));
	assert_int_equal(hi.contexts, 1);
	assert_int_equal(hi.devices, 1);
	dmb_close(adm);
	dmb_close(c);
	kexec(SIGTERM);
	start();
	d.pid = H.pid;

	struct dmb_client *c2 = conn("bare-again");
	struct dmb_reclaim_info ri;
	assert_ok(c2, dmb_context_reclaim(c2, ctx, token, &ri));
	assert_false(ri.degraded);
	assert_int_equal(ri.mappings, 1);
	assert_int_equal(ri.n_devices, 1);
	assert_int_equal(ri.devices[0].device, di.device);
	if (ri.devices[0].fd >= 0)
		close(ri.devices[0].fd);
	int mem = ri.regions[0].fd;
	assert_true(mem >= 0);
	struct dmb_context_info *ci;
	size_t nc;
	assert_ok(c2, dmb_list_contexts(c2, false, &ci, &nc));
	assert_int_equal(nc, 1);
	assert_true(ci[0].noiommu);
	free(ci);
	struct dmb_device_info other;
	assert_code(c2, dmb_device_open(c2, ctx, BDF_A, NULL, &other), DMB_FAILED_PRECONDITION);
	assert_ok(c2, dmb_phys_ranges(c2, ctx, 0x100000, 64 * 1024, after, 16, &n2, &more, NULL));
	assert_int_equal(n2, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(after[i].iova, before[i].iova);
		assert_int_equal(after[i].phys, before[i].phys);
		assert_int_equal(after[i].length, before[i].length);
	}
	/* the device came back reset: bus mastering on again, then DMA */
	assert_ok(c2, dmb_device_set_command(c2, di.device, DMB_PCI_BUS_MASTER, 0, NULL));
	uint8_t want[512], got[512];
	for (size_t i = 0; i < n; i++) {
		uint64_t off = after[i].iova - 0x100000;
		fill_pattern(want, sizeof(want), 40 + (unsigned)i);
		assert_ok(c2, dmb_sim_device_dma_write(c2, di.device, after[i].phys, want, sizeof(want)));
		fd_read(mem, off, got, sizeof(got));
		assert_memory_equal(got, want, sizeof(want));
		fill_pattern(want, sizeof(want), 60 + (unsigned)i);
		fd_write(mem, off, want, sizeof(want));
		assert_ok(c2, dmb_sim_device_dma_read(c2, di.device, after[i].phys, got, sizeof(got)));
		assert_memory_equal(got, want, sizeof(want));
	}
	assert_ok(c2, dmb_context_destroy(c2, ctx));
	close(mem);
	dmb_close(c2);
	assert_true(daemon_wait_idle(&d));
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ refusals, force, abort */

static int nonadmin_checks(void)
{
	if (setgroups(0, NULL) < 0 || setgid(4242) < 0 || setuid(4242) < 0)
		return 250;
	struct dmb_client *c;
	if (dmb_connect(H.sock, "not-admin", &c) < 0)
		return 251;
	struct dmb_handoff_info hi;
	int fails = 0;
	fails += dmb_handoff_status(c, &hi) != -EPERM;
	fails += dmb_handoff_prepare(c, true, &hi) != -EPERM;
	fails += dmb_handoff_abort(c, &hi) != -EPERM;
	fails += dmb_last_error(c)->code != DMB_PERMISSION_DENIED;
	dmb_close(c);
	return fails;
}

/* A granular mapping with discarded granules across a host handoff: the
 * restore maps only the populated granules again. Before and after the
 * reclaim populated granules move the preserved bytes, discarded ones
 * fault; discard and populate work on the reclaimed context, and the
 * pins are exact. */
static void test_granular_handoff(void **state)
{
	preserver_start();
	use_config(NULL);
	start();
	struct vmm v;
	const unsigned ng = 16;
	vmm_create(&v, "vm-g", ng * PG, 44);
	struct dmb_map_entry e = { v.region, 0, 0x100000, ng * PG, DMB_READ | DMB_WRITE };
	assert_ok(v.c, dmb_map_granular(v.c, v.ctx, &e, DMB_GRANULE_4K, NULL));
	struct dmb_range dr[] = { { 0x100000 + 2 * PG, 3 * PG }, { 0x100000 + 9 * PG, PG } };
	assert_ok(v.c, dmb_discard(v.c, v.ctx, dr, 2, NULL));
	bool disc[16] = { 0 };
	disc[2] = disc[3] = disc[4] = disc[9] = true;

	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_prepare(adm, false, &hi));
	assert_int_equal(hi.mappings, 1);
	/* while prepared, conversions wait like every mutation */
	assert_code(v.c, dmb_populate(v.c, v.ctx, dr, 1, NULL), DMB_UNAVAILABLE);
	dmb_close(adm);
	dmb_close(v.c);
	kexec(SIGTERM);
	start();
	struct daemon d = as_daemon();
	adm = conn("admin");
	for (unsigned i = 0; i < ng; i++) {
		uint8_t buf[64];
		if (disc[i])
			assert_true(dmb_sim_dma_read(adm, v.ctx, 0x100000 + i * PG, buf, sizeof(buf)) < 0);
		else
			expect_pattern(adm, v.ctx, 0x100000 + i * PG, i * PG, PG, v.seed, v.size);
	}
	assert_int_equal(daemon_totals(&d).pinned_bytes, (ng - 4) * PG);

	struct dmb_client *v2 = conn("vm-g-again");
	struct dmb_reclaim_info ri;
	assert_ok(v2, dmb_context_reclaim(v2, v.ctx, v.token, &ri));
	assert_false(ri.degraded);
	assert_int_equal(ri.mappings, 1);
	int mem = ri.regions[0].fd;
	for (unsigned i = 0; i < ng; i++) {
		if (disc[i])
			check_dma_faults(v2, v.ctx, mem, i * PG, 0x100000 + i * PG, 256);
		else
			check_dma(v2, v.ctx, mem, i * PG + 128, 0x100000 + i * PG + 128, 256, i);
	}
	struct dmb_mapping_info mi;
	size_t n = 0;
	bool more;
	assert_ok(v2, dmb_list_mappings(v2, v.ctx, 0, &mi, 1, &n, &more, NULL));
	assert_int_equal(mi.granule, PG);
	assert_int_equal(mi.discarded, 4);
	/* populate 2..4, discard 0: bytes follow */
	assert_ok(v2, dmb_populate(v2, v.ctx, dr, 1, NULL));
	struct dmb_range d0 = { 0x100000, PG };
	assert_ok(v2, dmb_discard(v2, v.ctx, &d0, 1, NULL));
	check_dma(v2, v.ctx, mem, 3 * PG, 0x100000 + 3 * PG, 256, 77);
	check_dma_faults(v2, v.ctx, mem, 0, 0x100000, 256);
	assert_int_equal(daemon_totals(&d).pinned_bytes, (ng - 2) * PG);
	close(mem);
	dmb_close(v2);
	dmb_close(adm);
	check_log_clean();
}

static void test_refuse_force_abort(void **state)
{
	preserver_start();
	use_config(NULL);
	start();
	struct daemon d = as_daemon();
	struct vmm ok;
	vmm_create(&ok, "vm-ok", 64 * 1024, 5);
	vmm_map(&ok, 0, 0x100000, 64 * 1024);
	/* Not preservable: not persistent (two of them; regions are always
	 * sealed memfds, as the broker accepts nothing else). */
	uint64_t plain, named;
	assert_ok(ok.c, dmb_context_create(ok.c, "vm-plain", &plain));
	assert_ok(ok.c, dmb_context_create(ok.c, "vm-plain-2", &named));

	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_int_equal(hi.n_left_out, 2);
	/* Refused, with the list, and nothing changed. */
	assert_code(adm, dmb_handoff_prepare(adm, false, &hi), DMB_FAILED_PRECONDITION);
	const char *msg = dmb_last_error(adm)->message;
	assert_non_null(strstr(msg, "2 context(s) cannot be preserved"));
	assert_non_null(strstr(msg, "not persistent"));
	assert_non_null(strstr(msg, "vm-plain"));
	expect_state(adm, "normal");
	vmm_map(&ok, 32 * 1024, 0x200000, PG);

	/* Wrong state: nothing to abort. */
	assert_code(adm, dmb_handoff_abort(adm, NULL), DMB_FAILED_PRECONDITION);
	/* Non-admin: refused for all three. */
	assert_int_equal(chmod(H.dir, 0711), 0); /* the socket is 0666; its directory too */
	pid_t pid = fork();
	if (pid == 0)
		_exit(nonadmin_checks());
	int wst;
	waitpid(pid, &wst, 0);
	assert_true(WIFEXITED(wst));
	assert_int_equal(WEXITSTATUS(wst), 0);
	/* Malformed: fds on a request that takes none. */
	Dmb__HandoffStatus q = DMB__HANDOFF_STATUS__INIT;
	Dmb__Request req = DMB__REQUEST__INIT;
	req.body_case = DMB__REQUEST__BODY_HANDOFF_STATUS;
	req.handoff_status = &q;
	Dmb__Reply *rep = NULL;
	int one = make_memfd(PG, 1);
	assert_int_equal(dmb_call(adm, &req, &one, 1, &rep, NULL, NULL), 0);
	assert_non_null(rep->error);
	assert_int_equal(rep->error->code, DMB_INVALID_ARGUMENT);
	dmb__reply__free_unpacked(rep, NULL);
	close(one);

	/* Forced: those two are left out, listed. */
	assert_ok(adm, dmb_handoff_prepare(adm, true, &hi));
	assert_int_equal(hi.contexts, 1);
	assert_int_equal(hi.n_left_out, 2);
	assert_int_equal(hi.mappings, 2);
	/* Reads keep working. */
	expect_pattern(ok.c, ok.ctx, 0x100000, 0, PG, ok.seed, ok.size);
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "prepared");
	assert_int_equal(hi.n_left_out, 2);
	struct dmb_map_entry e = { ok.region, 0, 0x300000, PG, DMB_READ };
	assert_code(ok.c, dmb_map(ok.c, ok.ctx, &e), DMB_UNAVAILABLE);

	/* Abort: nothing preserved, mutations accepted again. */
	assert_ok(adm, dmb_handoff_abort(adm, &hi));
	assert_string_equal(hi.state, "normal");
	assert_true(has_handoff_event(ok.c, "normal"));
	assert_ok(ok.c, dmb_map(ok.c, ok.ctx, &e));
	expect_pattern(ok.c, ok.ctx, 0x300000, 0, PG, ok.seed, ok.size);
	/* The session is gone: a kexec now carries nothing, and the next daemon
	 * starts normal with nothing restored. */
	assert_ok(ok.c, dmb_context_destroy(ok.c, ok.ctx));
	assert_ok(ok.c, dmb_context_destroy(ok.c, named));
	assert_ok(ok.c, dmb_context_destroy(ok.c, plain));
	dmb_close(ok.c);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d));
	kexec(SIGTERM);
	start();
	d.pid = H.pid;
	adm = conn("admin");
	expect_state(adm, "normal");
	assert_int_equal(daemon_totals(&d).contexts, 0);
	dmb_close(adm);
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ no preserver, busy */

static void test_no_preserver_and_busy(void **state)
{
	snprintf(cfg_text, sizeof(cfg_text), "[handoff]\npreserver = none\n");
	start();
	struct daemon d = as_daemon();
	struct vmm v;
	vmm_create(&v, "vm", 64 * 1024, 9);
	vmm_map(&v, 0, 0x100000, 64 * 1024);
	uint64_t plain;
	assert_ok(v.c, dmb_context_create(v.c, "vm-plain", &plain));
	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.preserver, "none");
	assert_false(hi.available);
	/* What would be preserved, as with a preserver: checkable before a
	 * kernel with one is installed. */
	assert_int_equal(hi.contexts, 1);
	assert_int_equal(hi.mappings, 1);
	assert_int_equal(hi.bytes, 64 * 1024);
	assert_int_equal(hi.n_left_out, 1);
	assert_int_equal(hi.left_out[0].context, plain);
	assert_non_null(strstr(hi.left_out[0].reason, "not persistent"));
	assert_non_null(strstr(hi.message, "no preserver is configured"));
	assert_non_null(strstr(hi.message, "1 context(s) preservable, 1 left out"));
	assert_code(adm, dmb_handoff_prepare(adm, true, &hi), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(adm)->message, "no preserver is configured"));
	assert_non_null(strstr(dmb_last_error(adm)->message, "nothing was changed"));
	expect_state(adm, "normal");
	vmm_map(&v, 0, 0x200000, PG); /* mutations unaffected */
	expect_pattern(v.c, v.ctx, 0x200000, 0, PG, v.seed, v.size);
	dmb_close(adm);
	assert_ok(v.c, dmb_context_destroy(v.c, v.ctx));
	assert_ok(v.c, dmb_context_destroy(v.c, plain));
	dmb_close(v.c);
	assert_true(daemon_wait_idle(&d));
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	fds_store_clear(&H);

	/* The preserver's device held by someone else: EBUSY, said so. */
	preserver_start();
	use_config(NULL);
	start();
	d.pid = H.pid;
	pid_t holder = fork();
	if (holder == 0) {
		const char *bin = getenv("DMB_SIM_PRESERVER");
		execl(bin, bin, "hold", pv_sock, (char *)NULL);
		_exit(127);
	}
	adm = conn("admin");
	bool busy = false;
	for (int i = 0; i < 100 && !busy; i++) {
		int r = dmb_handoff_prepare(adm, false, &hi);
		if (r == 0) /* before the holder got there */
			assert_ok(adm, dmb_handoff_abort(adm, NULL));
		busy = r < 0 && dmb_last_error(adm)->code == DMB_UNAVAILABLE;
		if (!busy)
			sleep_ms(20);
	}
	assert_true(busy);
	assert_non_null(strstr(dmb_last_error(adm)->message, "EBUSY"));
	expect_state(adm, "normal");
	kill(holder, SIGTERM);
	waitpid(holder, NULL, 0);
	dmb_close(adm);
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* A preserver whose memfd preservation loses seals (Linux 6.19, played by
 * `dmb-sim-preserver serve --memfd-v1`): after the kexec no region could be
 * re-adopted (an unsealable memfd is refused) and the guests' memory would
 * be lost when the session is finished. So prepare is refused before
 * anything is preserved, forced or not, saying why; nothing changes. */
static void test_seals_lost_refused(void **state)
{
	snprintf(pv_sock, sizeof(pv_sock), "%s/preserver.sock", H.dir);
	pv_pid = sim_preserver_start_opt(pv_sock, "--memfd-v1");
	use_config(NULL);
	start();
	struct daemon d = as_daemon();
	struct vmm v;
	vmm_create(&v, "vm", 64 * 1024, 5);
	vmm_map(&v, 0, 0x100000, 64 * 1024);
	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	for (int force = 0; force <= 1; force++) {
		assert_code(adm, dmb_handoff_prepare(adm, force, &hi), DMB_FAILED_PRECONDITION);
		const char *m = dmb_last_error(adm)->message;
		assert_non_null(strstr(m, "without their seals"));
		assert_non_null(strstr(m, "Linux 7.3+"));
		assert_non_null(strstr(m, "nothing was changed"));
	}
	expect_state(adm, "normal");
	/* Nothing was preserved: the simulated kernel holds no session. */
	char st[4096];
	preserver_status(st, sizeof(st));
	assert_non_null(strstr(st, "sessions: 0\n"));
	vmm_map(&v, 0, 0x200000, PG); /* mutations unaffected */
	expect_pattern(v.c, v.ctx, 0x100000, 0, 64 * 1024, v.seed, v.size);
	expect_pattern(v.c, v.ctx, 0x200000, 0, PG, v.seed, v.size);
	dmb_close(adm);
	assert_ok(v.c, dmb_context_destroy(v.c, v.ctx));
	dmb_close(v.c);
	assert_true(daemon_wait_idle(&d));
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* A kexec into a kernel that re-creates the preserved memfds without their
 * seals (the simulated 6.19, `kexec --memfd-v1`): no region can be
 * re-adopted, but the memfd is the only copy of that guest memory. The
 * context comes back degraded and is not released when the grace period
 * ends, the preserver session is not finished (the simulated kernel still
 * holds it), and the owner's reclaim hands the memfd back, stranded, with
 * every byte; only then is the handoff over. */
static void test_stranded_memfd_kept(void **state)
{
	preserver_start();
	use_config(NULL); /* [handoff] grace_period_s = 3 */
	start();
	struct daemon d = as_daemon();
	struct vmm v;
	vmm_create(&v, "vm", 64 * 1024, 44);
	vmm_map(&v, 0, 0x100000, 64 * 1024);
	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_prepare(adm, false, &hi));
	dmb_close(adm);
	dmb_close(v.c);
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	assert_int_equal(run_tool("kexec", "--memfd-v1"), 0);
	fds_store_clear(&H);
	start();
	d.pid = H.pid;
	adm = conn("admin");
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	assert_int_equal(hi.degraded, 1);
	/* The grace period ends: the context is kept, the log says why. */
	assert_true(fds_wait_log(&H, "it is kept, and the preserver session stays open", 60000));
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	assert_int_equal(hi.unclaimed, 1);
	char st[4096];
	preserver_status(st, sizeof(st));
	assert_non_null(strstr(st, "sessions: 1\n"));
	/* The owner reclaims: the memfd comes back with the guest's bytes. */
	struct dmb_client *v2 = conn("vm-again");
	struct dmb_reclaim_info ri;
	assert_ok(v2, dmb_context_reclaim(v2, v.ctx, v.token, &ri));
	assert_true(ri.degraded);
	assert_int_equal(ri.mappings, 0);
	assert_int_equal(ri.n_regions, 1);
	assert_true(ri.regions[0].stranded);
	assert_int_equal(ri.regions[0].region, v.region);
	assert_int_equal(ri.regions[0].size, v.size);
	assert_true(ri.regions[0].fd >= 0);
	uint8_t *want = malloc(v.size), *got = malloc(v.size);
	fill_pattern(want, v.size, v.seed);
	assert_int_equal(pread(ri.regions[0].fd, got, v.size, 0), (ssize_t)v.size);
	assert_memory_equal(got, want, v.size);
	free(want);
	free(got);
	close(ri.regions[0].fd);
	assert_true(wait_state("normal", 30000));
	preserver_status(st, sizeof(st));
	assert_non_null(strstr(st, "sessions: 0\n"));
	assert_ok(v2, dmb_context_destroy(v2, v.ctx));
	dmb_close(v2);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d));
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ crash mid-restore */

static void test_crash_mid_restore(void **state)
{
	preserver_start();
	use_config(NULL);
	start();
	struct daemon d = as_daemon();
	struct vmm v, w;
	vmm_create(&v, "vm-1", 256 * 1024, 41);
	vmm_map(&v, 0, 0x100000, 256 * 1024);
	vmm_create(&w, "vm-2", 64 * 1024, 42);
	vmm_map(&w, 0, 0x100000, 64 * 1024);
	struct dmb_client *adm = conn("admin");
	assert_ok(adm, dmb_handoff_prepare(adm, false, NULL));
	dmb_close(adm);
	dmb_close(v.c);
	dmb_close(w.c);
	kexec(SIGKILL);

	/* The new daemon dies in the middle of its restore ... */
	setenv("DMABROKERD_TEST_HANDOFF_CRASH", "restoring", 1);
	int r = fds_start_dmabrokerd(&H, cfg_text, NULL);
	unsetenv("DMABROKERD_TEST_HANDOFF_CRASH");
	assert_int_equal(r, -ECHILD);
	assert_true(fds_log_has(&H, "crashing mid-restore"));
	/* ... and the next start (same fd store) restores it all again. */
	start();
	d.pid = H.pid;
	assert_true(fds_log_has(&H, "a restore was interrupted"));
	adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	assert_int_equal(hi.contexts, 2);
	assert_int_equal(daemon_totals(&d).contexts, 2); /* nothing twice */
	expect_pattern(adm, v.ctx, 0x100000, 0, 64 * 1024, v.seed, v.size);
	expect_pattern(adm, w.ctx, 0x100000, 0, 64 * 1024, w.seed, w.size);
	struct dmb_client *v2 = conn("vm-1-again"), *w2 = conn("vm-2-again");
	struct dmb_reclaim_info ri;
	assert_ok(v2, dmb_context_reclaim(v2, v.ctx, v.token, &ri));
	close(ri.regions[0].fd);
	assert_ok(w2, dmb_context_reclaim(w2, w.ctx, w.token, &ri));
	close(ri.regions[0].fd);
	/* Everything reclaimed: finished at once. */
	assert_true(wait_state("normal", 5000));
	assert_ok(v2, dmb_context_destroy(v2, v.ctx));
	assert_ok(w2, dmb_context_destroy(w2, w.ctx));
	dmb_close(v2);
	dmb_close(w2);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d));
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ crash rules */

/* Sends a HandoffPrepare or HandoffAbort without waiting: the daemon is
 * about to die in the middle of it (its connection stays in the fd store,
 * so no reply and no hang-up would ever come). */
static void send_handoff_raw(struct dmb_client *c, bool prepare)
{
	Dmb__HandoffPrepare hp = DMB__HANDOFF_PREPARE__INIT;
	Dmb__HandoffAbort ha = DMB__HANDOFF_ABORT__INIT;
	Dmb__Request req = DMB__REQUEST__INIT;
	req.id = 900;
	if (prepare) {
		req.body_case = DMB__REQUEST__BODY_HANDOFF_PREPARE;
		req.handoff_prepare = &hp;
	} else {
		req.body_case = DMB__REQUEST__BODY_HANDOFF_ABORT;
		req.handoff_abort = &ha;
	}
	uint8_t buf[64];
	size_t n = dmb__request__pack(&req, buf);
	assert_int_equal(send(dmb_socket(c), buf, n, 0), (ssize_t)n);
}

/* The daemon ends by itself (a test crash hook): SIGKILLed. */
static void expect_crashed(const char *needle)
{
	int st = fds_stop(&H, 0);
	if (!(st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) || !fds_log_has(&H, needle)) {
		fds_dump_log(&H);
		fail_msg("the daemon did not crash at '%s' (wait status %d)", needle, st);
	}
}

/* The journal says prepared, the session fd is gone (an abort that died
 * between taking the session out of the fd store, which aborts it, and
 * journaling normal): the next start rolls back, says so to the clients
 * that came back with the fd store, and accepts changes again. */
static void test_crash_prepared_session_gone(void **state)
{
	preserver_start();
	use_config(NULL);
	setenv("DMABROKERD_TEST_HANDOFF_CRASH", "abort", 1);
	start();
	unsetenv("DMABROKERD_TEST_HANDOFF_CRASH");
	struct daemon d = as_daemon();
	struct vmm v;
	vmm_create(&v, "vm-1", 256 * 1024, 61);
	vmm_map(&v, 0, 0x100000, 64 * 1024);
	struct dmb_client *adm = conn("admin");
	assert_ok(adm, dmb_handoff_prepare(adm, false, NULL));
	assert_true(has_handoff_event(v.c, "prepared"));
	char out[4096];
	preserver_status(out, sizeof(out));
	assert_non_null(strstr(out, "sessions: 1"));

	send_handoff_raw(adm, false);
	expect_crashed("crashing before the abort is journaled");
	/* The session went with the fd-store entry: the kernel aborted it. */
	preserver_status(out, sizeof(out));
	if (!strstr(out, "sessions: 0"))
		fail_msg("the preserver still holds a session:\n%s", out);

	assert_int_equal(fds_restart(&H, SIGTERM), 0);
	d.pid = H.pid;
	check_log_clean();
	assert_true(fds_log_has(&H, "the preserver session is gone (closing it aborted it): rolled "
				"back to normal"));
	dmb_close(adm);
	adm = conn("admin");
	expect_state(adm, "normal");
	/* The VMM (its connection kept in the fd store) hears it ... */
	assert_true(has_handoff_event(v.c, "normal"));
	/* ... and its changes are accepted again; the old mapping still
	 * moves bytes. */
	expect_pattern(v.c, v.ctx, 0x100000, 0, 4096, v.seed, v.size);
	vmm_map(&v, 128 * 1024, 0x400000, 64 * 1024);
	expect_pattern(v.c, v.ctx, 0x400000, 128 * 1024, 64 * 1024, v.seed, v.size);
	char line[256];
	assert_int_equal(fds_status(&H, line, sizeof(line)), 0);
	assert_null(strstr(line, "handoff prepared"));
	/* Nothing is preserved: a prepare starts from scratch and works. */
	preserver_status(out, sizeof(out));
	assert_non_null(strstr(out, "sessions: 0"));
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_prepare(adm, false, &hi));
	assert_int_equal(hi.mappings, 2);
	assert_ok(adm, dmb_handoff_abort(adm, NULL));
	assert_ok(v.c, dmb_context_destroy(v.c, v.ctx));
	dmb_close(v.c);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d));
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* The session fd in the store while the journal says normal (a prepare
 * that died after everything was preserved, before it was journaled): the
 * next start closes the session (the kernel aborts it), nothing stays
 * preserved, and a kexec then carries nothing. */
static void test_crash_prepare_not_journaled(void **state)
{
	preserver_start();
	use_config(NULL);
	setenv("DMABROKERD_TEST_HANDOFF_CRASH", "prepare", 1);
	start();
	unsetenv("DMABROKERD_TEST_HANDOFF_CRASH");
	struct daemon d = as_daemon();
	struct vmm v;
	vmm_create(&v, "vm-1", 128 * 1024, 71);
	vmm_map(&v, 0, 0x100000, 128 * 1024);
	struct dmb_client *adm = conn("admin");
	send_handoff_raw(adm, true);
	expect_crashed("crashing before the state is journaled");
	/* The crash point is real: the session with the memfd and the
	 * snapshot is preserved, held only by the fd store. */
	char out[4096];
	preserver_status(out, sizeof(out));
	if (!strstr(out, "sessions: 1") || !strstr(out, " outgoing, 2 file(s)"))
		fail_msg("not what a prepare leaves before it is journaled:\n%s", out);
	assert_int_equal(fds_store_count_name(&H, "handoff.session"), 1);

	assert_int_equal(fds_restart(&H, SIGTERM), 0);
	d.pid = H.pid;
	check_log_clean();
	assert_true(fds_log_has(&H, "an interrupted prepare was rolled back"));
	assert_int_equal(fds_store_count_name(&H, "handoff.session"), 0);
	preserver_status(out, sizeof(out));
	if (!strstr(out, "sessions: 0"))
		fail_msg("the interrupted prepare's session is still preserved:\n%s", out);
	dmb_close(adm);
	adm = conn("admin");
	expect_state(adm, "normal");
	vmm_map(&v, 0, 0x400000, PG);
	expect_pattern(v.c, v.ctx, 0x400000, 0, PG, v.seed, v.size);
	expect_pattern(v.c, v.ctx, 0x100000 + 64 * 1024, 64 * 1024, 64 * 1024, v.seed, v.size);
	/* A kexec now carries nothing: the next daemon restores nothing. */
	dmb_close(adm);
	dmb_close(v.c);
	kexec(SIGTERM);
	start();
	d.pid = H.pid;
	adm = conn("admin");
	expect_state(adm, "normal");
	assert_int_equal(daemon_totals(&d).contexts, 0);
	dmb_close(adm);
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ restart while reclaiming */

/* A context reclaimed after the kexec whose VMM then left is an ordinary
 * detached persistent context: a broker restart while reclaiming does not
 * count it as unclaimed again, the handoff's grace period (3 s) does not
 * release it, [persist] grace_period_s (600 s) governs it. Only the never
 * reclaimed one is waited for, and released. */
static void test_restart_while_reclaiming(void **state)
{
	preserver_start();
	use_config(NULL);
	start();
	struct daemon d = as_daemon();
	struct vmm x, y;
	vmm_create(&x, "vm-x", 128 * 1024, 91);
	vmm_map(&x, 0, 0x100000, 128 * 1024);
	vmm_create(&y, "vm-y", 64 * 1024, 92);
	vmm_map(&y, 0, 0x200000, 64 * 1024);
	struct dmb_client *adm = conn("admin");
	assert_ok(adm, dmb_handoff_prepare(adm, false, NULL));
	dmb_close(adm);
	dmb_close(x.c);
	dmb_close(y.c);
	kexec(SIGTERM);
	start();
	d.pid = H.pid;

	/* X is reclaimed, then its VMM goes away again. */
	struct dmb_client *x2 = conn("vm-x-again");
	struct dmb_reclaim_info ri;
	assert_ok(x2, dmb_context_reclaim(x2, x.ctx, x.token, &ri));
	close(ri.regions[0].fd);
	dmb_close(x2);
	adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	assert_int_equal(hi.unclaimed, 1);

	/* Wait until the broker has seen X's session end, then crash it. */
	bool detached = false;
	for (int i = 0; i < 200 && !detached; i++) {
		detached = fds_log_has(&H, "kept: persistent, waiting for a reclaim");
		if (!detached)
			sleep_ms(10);
	}
	assert_true(detached);
	dmb_close(adm);
	assert_int_equal(fds_restart(&H, SIGKILL), 0);
	d.pid = H.pid;
	adm = conn("admin");
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	if (hi.unclaimed != 1) {
		fds_dump_log(&H);
		fail_msg("after a restart %u context(s) count as unclaimed, not 1 (Y only)",
			 hi.unclaimed);
	}
	assert_int_equal(hi.contexts, 1);

	/* Y goes after the handoff's grace period; X stays. */
	if (!wait_state("normal", 10000)) {
		fds_dump_log(&H);
		fail_msg("the handoff did not finish after the grace period");
	}
	uint8_t buf[64];
	assert_code(adm, dmb_sim_dma_read(adm, y.ctx, 0x200000, buf, sizeof(buf)), DMB_NOT_FOUND);
	assert_int_equal(daemon_totals(&d).contexts, 1);
	expect_pattern(adm, x.ctx, 0x100000, 0, 64 * 1024, x.seed, x.size);
	/* The token the reclaim returned takes it back. */
	struct dmb_client *x3 = conn("vm-x-third");
	assert_ok(x3, dmb_context_reclaim(x3, x.ctx, x.token, &ri));
	check_dma(x3, x.ctx, ri.regions[0].fd, 64 * 1024, 0x100000 + 64 * 1024, PG, 93);
	close(ri.regions[0].fd);
	assert_ok(x3, dmb_context_destroy(x3, x.ctx));
	dmb_close(x3);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d));
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ bad prepare / abort requests */

/* A Request { id = 7, <field> = body } packed by hand, so the body can
 * carry what protobuf-c would not write (unknown fields). */
static size_t request_bytes(uint8_t *out, unsigned field, const uint8_t *body, size_t blen)
{
	size_t n = 0;
	out[n++] = 0x08;
	out[n++] = 7;
	uint32_t tag = (field << 3) | 2u;
	while (tag >= 0x80) {
		out[n++] = (uint8_t)(tag | 0x80);
		tag >>= 7;
	}
	out[n++] = (uint8_t)tag;
	out[n++] = (uint8_t)blen;
	if (blen)
		memcpy(out + n, body, blen);
	return n + blen;
}

/* Sends the bytes (with fds), returns the reply's error code (-1: none). */
static int bytes_code(struct dmb_client *c, const uint8_t *buf, size_t len, const int *fds,
		      size_t nfds, char *msg, size_t msglen)
{
	Dmb__Reply *rep = NULL;
	if (dmb_call_bytes(c, buf, len, fds, nfds, &rep) < 0)
		fail_msg("transport failed: %s", dmb_last_error(c)->message);
	int code = rep->error ? (int)rep->error->code : -1;
	if (msg)
		snprintf(msg, msglen, "%s", rep->error ? rep->error->message : "");
	dmb__reply__free_unpacked(rep, NULL);
	return code;
}

static void expect_nothing_preserved(struct dmb_client *adm)
{
	expect_state(adm, "normal");
	char out[4096];
	preserver_status(out, sizeof(out));
	if (!strstr(out, "sessions: 0"))
		fail_msg("a refused request left a session in the preserver:\n%s", out);
}

static void test_bad_prepare_abort(void **state)
{
	preserver_start();
	use_config(NULL);
	start();
	struct daemon d = as_daemon();
	struct vmm ok;
	vmm_create(&ok, "vm-ok", 64 * 1024, 5);
	vmm_map(&ok, 0, 0x100000, 64 * 1024);
	uint64_t plain; /* not preservable: a prepare without force refuses */
	assert_ok(ok.c, dmb_context_create(ok.c, "vm-plain", &plain));
	struct dmb_client *adm = conn("admin");
	const unsigned F_PREPARE = 44, F_ABORT = 45;
	uint8_t pkt[64];
	char msg[256];

	/* Truncated: prepare { force = true } cut by one byte (its body
	 * claims two bytes, one came); abort cut inside its length. */
	const uint8_t forced[] = { 0x08, 0x01 };
	size_t n = request_bytes(pkt, F_PREPARE, forced, sizeof(forced));
	assert_int_equal(bytes_code(adm, pkt, n - 1, NULL, 0, msg, sizeof(msg)), DMB_INVALID_ARGUMENT);
	assert_non_null(strstr(msg, "malformed"));
	expect_nothing_preserved(adm);
	n = request_bytes(pkt, F_ABORT, NULL, 0);
	assert_int_equal(bytes_code(adm, pkt, n - 1, NULL, 0, msg, sizeof(msg)), DMB_INVALID_ARGUMENT);
	expect_nothing_preserved(adm);

	/* Unknown fields are ignored (docs/protocol.md): a prepare with
	 * force = false and an unknown field 15 is a plain prepare, refused
	 * for the non-persistent context; the unknown field did not force. */
	const uint8_t unforced_unknown[] = { 0x08, 0x00, 0x78, 0x01 };
	n = request_bytes(pkt, F_PREPARE, unforced_unknown, sizeof(unforced_unknown));
	assert_int_equal(bytes_code(adm, pkt, n, NULL, 0, msg, sizeof(msg)), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(msg, "cannot be preserved"));
	expect_nothing_preserved(adm);
	/* An abort with an unknown field, in the wrong state. */
	const uint8_t unknown[] = { 0x78, 0x01 };
	n = request_bytes(pkt, F_ABORT, unknown, sizeof(unknown));
	assert_int_equal(bytes_code(adm, pkt, n, NULL, 0, msg, sizeof(msg)), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(msg, "nothing to abort"));

	/* Fds attached: refused and closed; nothing prepared. */
	int one = make_memfd(PG, 1);
	n = request_bytes(pkt, F_PREPARE, forced, sizeof(forced));
	assert_int_equal(bytes_code(adm, pkt, n, &one, 1, msg, sizeof(msg)), DMB_INVALID_ARGUMENT);
	assert_non_null(strstr(msg, "takes no fds"));
	expect_nothing_preserved(adm);

	/* A forced prepare with an unknown field works (ignored) ... */
	const uint8_t forced_unknown[] = { 0x08, 0x01, 0x78, 0x05 };
	n = request_bytes(pkt, F_PREPARE, forced_unknown, sizeof(forced_unknown));
	assert_int_equal(bytes_code(adm, pkt, n, NULL, 0, NULL, 0), -1);
	expect_state(adm, "prepared");
	/* ... an abort with fds attached or cut short changes nothing ... */
	n = request_bytes(pkt, F_ABORT, NULL, 0);
	assert_int_equal(bytes_code(adm, pkt, n, &one, 1, msg, sizeof(msg)), DMB_INVALID_ARGUMENT);
	assert_int_equal(bytes_code(adm, pkt, n - 1, NULL, 0, NULL, 0), DMB_INVALID_ARGUMENT);
	/* ... nor does a second prepare, forced or not. */
	n = request_bytes(pkt, F_PREPARE, forced, sizeof(forced));
	assert_int_equal(bytes_code(adm, pkt, n, NULL, 0, msg, sizeof(msg)), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(msg, "already under way (state prepared)"));
	expect_state(adm, "prepared");
	char out[4096];
	preserver_status(out, sizeof(out));
	assert_non_null(strstr(out, "sessions: 1"));
	struct dmb_map_entry e = { ok.region, 0, 0x300000, PG, DMB_READ };
	assert_code(ok.c, dmb_map(ok.c, ok.ctx, &e), DMB_UNAVAILABLE);
	/* The abort with an unknown field is an abort. */
	n = request_bytes(pkt, F_ABORT, unknown, sizeof(unknown));
	assert_int_equal(bytes_code(adm, pkt, n, NULL, 0, NULL, 0), -1);
	expect_nothing_preserved(adm);
	assert_ok(ok.c, dmb_map(ok.c, ok.ctx, &e));
	expect_pattern(ok.c, ok.ctx, 0x300000, 0, PG, ok.seed, ok.size);
	close(one);

	assert_ok(ok.c, dmb_context_destroy(ok.c, ok.ctx));
	assert_ok(ok.c, dmb_context_destroy(ok.c, plain));
	dmb_close(ok.c);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d));
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ prepare vs a long map */

#define HUGE (1024ull * 1024 * 1024)
#define HUGE_IOVA 0x100000000ull

/* A 1 GiB map on a worker (--sim-populate: one fault per page, as pinning)
 * is known to be in flight because the daemon's totals count it while its
 * reply has not come. A prepare then must refuse (UNAVAILABLE, retry
 * after), and its answer comes before the map's; after the map's reply the
 * same prepare works. Order, never time. */
static void test_prepare_during_long_map(void **state)
{
	static const char *const populate_args[] = { "--sim-populate", NULL };
	preserver_start();
	use_config("[daemon]\nworkers = 2\nworker_min_bytes = 1M\n");
	int r = fds_start_dmabrokerd(&H, cfg_text, populate_args);
	if (r < 0) {
		fds_dump_log(&H);
		fail_msg("dmabrokerd did not start: %s", strerror(-r));
	}
	struct daemon d = as_daemon();
	struct dmb_client *c = conn("vm-huge");
	uint64_t ctx;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
	assert_ok(c, dmb_context_create_persistent(c, "vm-huge", &ctx, token));
	int fd = memfd_create("guest-ram-huge", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)HUGE), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	uint8_t tag[64];
	fill_pattern(tag, sizeof(tag), 77);
	fd_write(fd, HUGE / 2, tag, sizeof(tag));
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, fd, 0, &ri));

	raw_send_map(c, 3001, ctx, ri.region, HUGE_IOVA, HUGE);
	bool accepted = false;
	for (int i = 0; i < 12000 && !accepted; i++) {
		accepted = daemon_totals(&d).mapped_bytes >= HUGE;
		if (!accepted)
			usleep(10000);
	}
	assert_true(accepted);

	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_code(adm, dmb_handoff_prepare(adm, false, &hi), DMB_UNAVAILABLE);
	const struct dmb_error *err = dmb_last_error(adm);
	assert_true(err->retry_after_ms > 0);
	assert_non_null(strstr(err->message, "long map or unmap running"));
	assert_non_null(strstr(err->message, "nothing was changed"));
	/* The refusal came while the map was still running. */
	Dmb__Reply *early = raw_reply(c, true);
	if (early)
		fail_msg("the 1 GiB map was answered before the prepare: nothing proves the prepare "
			 "saw it running");
	expect_state(adm, "normal");
	char out[4096];
	preserver_status(out, sizeof(out));
	assert_non_null(strstr(out, "sessions: 0"));

	Dmb__Reply *rep = raw_reply(c, false);
	if (rep->error)
		fail_msg("the huge map failed: %s", rep->error->message);
	assert_int_equal(rep->id, 3001);
	dmb__reply__free_unpacked(rep, NULL);
	/* Retried after the map: prepared, with it. */
	assert_ok(adm, dmb_handoff_prepare(adm, false, &hi));
	assert_int_equal(hi.mappings, 1);
	assert_int_equal(hi.bytes, HUGE);
	uint8_t got[64];
	assert_ok(c, dmb_sim_dma_read(c, ctx, HUGE_IOVA + HUGE / 2, got, sizeof(got)));
	assert_memory_equal(got, tag, sizeof(got));
	assert_ok(adm, dmb_handoff_abort(adm, NULL));
	assert_ok(c, dmb_context_destroy(c, ctx));
	close(fd);
	dmb_close(c);
	dmb_close(adm);
	for (int i = 0; i < 6000 && daemon_totals(&d).contexts; i++)
		usleep(10000);
	assert_int_equal(daemon_totals(&d).pinned_bytes, 0);
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

/* ------------------------------------------------------------ a client dies while prepared */

/* The VMM (a child process) sends a refused change and a read, and is
 * SIGKILLed before it reads either reply. Nothing preserved changes: the
 * broker stays prepared, and after the kexec its context comes back with
 * its bytes and is reclaimed with the token. */
static void test_client_dies_while_prepared(void **state)
{
	preserver_start();
	use_config(NULL);
	start();
	struct daemon d = as_daemon();
	int up[2], go[2];
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(go), 0);
	pid_t vmm = fork();
	if (vmm == 0) {
		close(up[0]);
		close(go[1]);
		struct vmm v;
		vmm_create(&v, "vm-dies", 128 * 1024, 81);
		vmm_map(&v, 0, 0x100000, 128 * 1024);
		if (write(up[1], &v, sizeof(v)) != (ssize_t)sizeof(v))
			_exit(2);
		char b;
		if (read(go[0], &b, 1) != 1)
			_exit(3);
		/* Mid-request: a map (refused while prepared) and a list, never
		 * read; then it says so and waits to be killed. */
		raw_send_map(v.c, 4001, v.ctx, v.region, 0x900000, PG);
		Dmb__ListMappings lm = DMB__LIST_MAPPINGS__INIT;
		lm.context_id = v.ctx;
		Dmb__Request req = DMB__REQUEST__INIT;
		req.id = 4002;
		req.body_case = DMB__REQUEST__BODY_LIST_MAPPINGS;
		req.list_mappings = &lm;
		uint8_t buf[64];
		size_t n = dmb__request__pack(&req, buf);
		if (send(dmb_socket(v.c), buf, n, 0) != (ssize_t)n)
			_exit(4);
		if (write(up[1], "x", 1) != 1)
			_exit(5);
		for (;;)
			pause();
	}
	close(up[1]);
	close(go[0]);
	struct vmm v;
	assert_int_equal(read(up[0], &v, sizeof(v)), (ssize_t)sizeof(v));
	struct dmb_client *adm = conn("admin");
	struct dmb_handoff_info hi;
	assert_ok(adm, dmb_handoff_prepare(adm, false, &hi));
	assert_int_equal(hi.contexts, 1);
	assert_int_equal(write(go[1], "g", 1), 1);
	char b;
	assert_int_equal(read(up[0], &b, 1), 1);
	kill(vmm, SIGKILL);
	int st;
	waitpid(vmm, &st, 0);
	assert_true(WIFSIGNALED(st));
	close(up[0]);
	close(go[1]);
	/* Its session is gone (the context detached, not destroyed). */
	bool detached = false;
	for (int i = 0; i < 200 && !detached; i++) {
		detached = fds_log_has(&H, "kept: persistent, waiting for a reclaim");
		if (!detached)
			sleep_ms(10);
	}
	assert_true(detached);
	expect_state(adm, "prepared");
	assert_int_equal(daemon_totals(&d).contexts, 1);
	expect_pattern(adm, v.ctx, 0x100000, 0, 64 * 1024, v.seed, v.size);

	dmb_close(adm);
	kexec(SIGTERM);
	start();
	d.pid = H.pid;
	adm = conn("admin");
	assert_ok(adm, dmb_handoff_status(adm, &hi));
	assert_string_equal(hi.state, "reclaiming");
	assert_int_equal(hi.contexts, 1);
	expect_pattern(adm, v.ctx, 0x100000, 0, 128 * 1024 > 65536 ? 65536 : 128 * 1024, v.seed, v.size);
	struct dmb_client *v2 = conn("vm-dies-again");
	struct dmb_reclaim_info ri;
	assert_ok(v2, dmb_context_reclaim(v2, v.ctx, v.token, &ri));
	assert_int_equal(ri.mappings, 1);
	check_dma(v2, v.ctx, ri.regions[0].fd, 64 * 1024, 0x100000 + 64 * 1024, PG, 82);
	close(ri.regions[0].fd);
	/* Nothing of the refused map came through. */
	uint8_t buf[64];
	assert_true(dmb_sim_dma_read(v2, v.ctx, 0x900000, buf, sizeof(buf)) < 0);
	assert_true(wait_state("normal", 5000));
	assert_ok(v2, dmb_context_destroy(v2, v.ctx));
	dmb_close(v2);
	dmb_close(adm);
	assert_true(daemon_wait_idle(&d));
	check_log_clean();
	assert_true(fds_stop(&H, SIGTERM) >= 0);
	preserver_stop();
}

static int setup(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.quiet = true;
	return fds_init(&H, &o) < 0 ? -1 : 0;
}

static int teardown(void **state)
{
	fds_destroy(&H);
	preserver_stop();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_full_handoff, setup, teardown),
		cmocka_unit_test_setup_teardown(test_granular_handoff, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noiommu_handoff, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuse_force_abort, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_preserver_and_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seals_lost_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stranded_memfd_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_mid_restore, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_prepared_session_gone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_prepare_not_journaled, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_while_reclaiming, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_prepare_abort, setup, teardown),
		cmocka_unit_test_setup_teardown(test_prepare_during_long_map, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_dies_while_prepared, setup, teardown),
	};
	return cmocka_run_group_tests_name("handoff", tests, NULL, NULL);
}
