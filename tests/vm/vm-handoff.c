/* SPDX-License-Identifier: MIT */
/*
 * vm-handoff - the guest side of the vm7-handoff test: the host handoff across a real
 * kexec, twice in a row, on Linux 7.x booted with kho=on liveupdate=on, with the
 * iommufd backend. tests/vm/handoff-init.sh runs one phase per boot:
 *
 *   vm-handoff phase1|phase2|phase3 DMABROKERD CONFIG STATE_DIR BDF_A BDF_B
 *
 * Each phase plays systemd for the daemon (tests/integration's fd-store harness: after a
 * kexec the store is empty, as a new boot's would be), and drives it as a VMM and an
 * admin would. The bytes are proven by edu DMA, never by asking the daemon.
 *
 * phase1: a VMM session makes three persistent contexts: A (a 2 MiB memfd holding a
 *   known pattern, mapped as two 1 MiB mappings at IOVA 0x100000 and 0x800000, edu A
 *   attached, and a P2P mapping of edu B's BAR0 at 0x4000000), B (edu B) and C (a 1 MiB
 *   memfd at 0x100000, no device: nobody will reclaim it). edu A moves bytes through A's
 *   mappings and reads B's ID register through the P2P mapping. Refusals first: a
 *   context holding a hugetlb memfd (LUO preserves only plain memfds) makes prepare
 *   refuse naming it; prepare --force leaves it out and says why; abort; everything still
 *   mapped and edu DMA right; the context goes. Then `prepare` for real. The memfds'
 *   bytes, the tokens and ids go to STATE_DIR (packed into the next kernel's initramfs),
 *   and "ready" is written there: the init then kexecs, the daemon still running.
 * phase2: the daemon restores from the preserved memfds and journal. Before any
 *   reclaim, edu A -- driven through sysfs, since no VFIO user hands out its fd yet --
 *   copies bytes from one restored mapping to the other and reads B's ID register
 *   through the restored P2P mapping (memory decoding of B switched on through sysfs if
 *   the reboot left it off: both are handled, the log says which). The VMM reclaims A
 *   and B with their tokens: every byte of the memfd is what phase 1 left plus exactly
 *   what those DMAs wrote; edu DMA through the device fd; a new region is mapped. C, not
 *   reclaimed, is released after the grace period, the LUO session finished and the
 *   handoff state back to normal. Then the second prepare, by `dmabrokerctl handoff
 *   prepare`, of contexts the kernel re-created (memfds with an empty name), and
 *   "ready" again.
 * phase3: the same restore checks and reclaim with the second tokens; both regions'
 *   bytes are right; all reclaimed, so the session finishes and the state is normal.
 *
 * No DMAR fault line may appear in any phase. Prints "vm-handoff: ok: ..." per step,
 * "vm-handoff: FAIL: ..." (and the daemon's log) on the first failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dmabroker.h"
#include "edu.h"
#include "fdstore.h"

#define MiB (1ull << 20)
#define RA_SIZE (2 * MiB) /* context A: [0, 1M) at IOVA_A1, [1M, 2M) at IOVA_A2 */
#define IOVA_A1 0x100000ull
#define IOVA_A2 0x800000ull
#define RC_SIZE MiB        /* context C, never reclaimed */
#define IOVA_C 0x100000ull
#define RN_SIZE MiB        /* the region phase 2 adds to A */
#define IOVA_N 0x2000000ull
#define P2P_IOVA 0x4000000ull
#define P2P_SLOT 0x20000ull /* memfd offset where P2P reads of B's ID land */
#define XFER 4095u
#define WAIT_MS 120000
#define CLIENT_TIMEOUT_MS 60000

static struct fds H;
static const char *state_dir;
static int phase;

static void ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void ok(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("vm-handoff: phase %d: ok: ", phase);
	vprintf(fmt, ap);
	putchar('\n');
	fflush(stdout);
	va_end(ap);
}

static int fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("vm-handoff: phase %d: FAIL: ", phase);
	vprintf(fmt, ap);
	putchar('\n');
	fflush(stdout);
	va_end(ap);
	return -1;
}

/* "call: errno [broker: CODE: sentence]" and -1. */
static int bfail(struct dmb_client *c, int r, const char *what)
{
	const struct dmb_error *e = c ? dmb_last_error(c) : NULL;
	return fail("%s: %s [broker: %s: %s]", what, strerror(-r),
		    e ? dmb_error_code_name(e->code) : "-", e ? e->message : "-");
}

#define CHECK(c, call, what)                                                                 \
	do {                                                                                 \
		int r_ = (call);                                                             \
		if (r_ < 0)                                                                  \
			return bfail((c), r_, (what));                                      \
	} while (0)

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static uint8_t pattern(unsigned seed, size_t i)
{
	return (uint8_t)(i * 7 + 13 + (i >> 9) + seed * 31);
}

/* ---- state across the kexec: small files in STATE_DIR ------------------------------ */

static int state_write(const char *name, const void *buf, size_t len)
{
	char path[512], tmp[520];
	snprintf(path, sizeof(path), "%s/%s", state_dir, name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return fail("create %s: %s", tmp, strerror(errno));
	bool good = write(fd, buf, len) == (ssize_t)len && fsync(fd) == 0;
	close(fd);
	if (!good || rename(tmp, path) < 0)
		return fail("write %s failed", path);
	return 0;
}

static int state_read(const char *name, void *buf, size_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", state_dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail("open %s (state from the previous kernel): %s", path, strerror(errno));
	ssize_t n = read(fd, buf, len);
	close(fd);
	if (n != (ssize_t)len)
		return fail("%s: %zd bytes, want %zu", path, n, len);
	return 0;
}

/* What one phase hands the next: ids and tokens. The memfds' bytes go to files of
 * their own (ra.bin, rn.bin). */
struct saved {
	uint64_t ctx_a, ctx_b, ctx_c;
	uint64_t dev_a, dev_b;
	uint8_t tok_a[DMB_RECLAIM_TOKEN_SIZE], tok_b[DMB_RECLAIM_TOKEN_SIZE],
		tok_c[DMB_RECLAIM_TOKEN_SIZE];
	bool has_rn;
};

/* ---- memfds ----------------------------------------------------------------------- */

struct ram {
	int fd;
	uint8_t *p;
	size_t size;
};

static int ram_map(struct ram *m, int fd, size_t size)
{
	m->fd = fd;
	m->size = size;
	m->p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m->p == MAP_FAILED) {
		m->p = NULL;
		return fail("mmap of a %zu-byte memfd: %s", size, strerror(errno));
	}
	return 0;
}

static int ram_new(struct ram *m, size_t size, unsigned seed, bool huge)
{
	int fd = memfd_create("vm-handoff", MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB : 0));
	if (fd < 0)
		return fail("memfd_create%s: %s", huge ? " (MFD_HUGETLB)" : "", strerror(errno));
	if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		close(fd);
		return fail("ftruncate/F_SEAL_SHRINK: %s", strerror(errno));
	}
	if (ram_map(m, fd, size) < 0)
		return -1;
	for (size_t i = 0; i < size; i++)
		m->p[i] = pattern(seed, i);
	return 0;
}

static void ram_free(struct ram *m)
{
	if (m->p)
		munmap(m->p, m->size);
	if (m->fd >= 0)
		close(m->fd);
	m->p = NULL;
	m->fd = -1;
}

/* ---- edu --------------------------------------------------------------------------- */

/* RAM at src -> edu buffer -> RAM at dst, n bytes. */
static int edu_copy(const struct edu *e, uint64_t src, uint64_t dst, uint32_t n)
{
	int r = edu_dma_to_device(e, src, 0, n, 0);
	if (r == 0)
		r = edu_dma_from_device(e, 0, dst, n, 0);
	return r < 0 ? fail("edu DMA 0x%" PRIx64 " -> edu -> 0x%" PRIx64 ": %s", src, dst,
			    strerror(-r))
		     : 0;
}

/* edu A reads B's ID register through the P2P mapping into RAM at dst (4 bytes). */
static int edu_p2p_read(const struct edu *e, uint64_t dst)
{
	return edu_copy(e, P2P_IOVA, dst, 4);
}

/* No DMAR line in the kernel log since boot. */
static int no_dmar_since_boot(const char *when)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return fail("open /dev/kmsg: %s", strerror(errno));
	char rec[8192];
	unsigned n = 0;
	for (;;) {
		ssize_t k = read(fd, rec, sizeof(rec) - 1);
		if (k < 0 && errno == EPIPE)
			continue;
		if (k <= 0)
			break;
		rec[k] = '\0';
		const char *msg = strchr(rec, ';');
		if (msg && strstr(msg, "DMAR") && strstr(msg, "fault addr")) {
			printf("vm-handoff: kernel: %s", msg + 1);
			n++;
		}
	}
	close(fd);
	if (n)
		return fail("%s: %u DMAR fault line(s) in the kernel log (above)", when, n);
	ok("%s: no DMAR fault since boot", when);
	return 0;
}

/* ---- the daemon and its sessions ---------------------------------------------------- */

static int daemon_start(const char *dmabrokerd, const char *config)
{
	static const char *argv[5];
	argv[0] = dmabrokerd;
	argv[1] = "--backend=iommufd";
	argv[2] = "--config";
	argv[3] = config;
	argv[4] = NULL;
	struct fds_opts o = fds_default_opts();
	o.start_timeout_ms = WAIT_MS; /* TCG; a restore comes before READY */
	o.stop_timeout_ms = WAIT_MS;
	int r = fds_init(&H, &o);
	if (r < 0)
		return fail("fds_init: %s", strerror(-r));
	r = fds_start(&H, argv);
	if (r < 0)
		return fail("dmabrokerd did not become ready: %s (exit status 0x%x)", strerror(-r),
			    fds_exit_status(&H));
	ok("dmabrokerd pid %d ready under the fd-store harness", (int)H.pid);
	return 0;
}

static int session(const char *name, struct dmb_client **c)
{
	int r = dmb_connect(H.sock, name, c);
	if (r < 0) {
		*c = NULL;
		return fail("dmb_connect %s: %s", H.sock, strerror(-r));
	}
	dmb_set_timeout(*c, CLIENT_TIMEOUT_MS);
	const struct dmb_server_info *si = dmb_server_info(*c);
	if (strcmp(si->backend, "iommufd") != 0)
		return fail("the broker's backend is %s, not iommufd", si->backend);
	return 0;
}

static int handoff_state(struct dmb_client *adm, const char *want, struct dmb_handoff_info *hi)
{
	int r = dmb_handoff_status(adm, hi);
	if (r < 0)
		return bfail(adm, r, "dmb_handoff_status");
	return strcmp(hi->state, want) == 0 ? 0 : 1;
}

/* Waits (bounded) for the handoff state `want`. */
static int wait_state(struct dmb_client *adm, const char *want)
{
	struct dmb_handoff_info hi;
	int64_t end = mono_ms() + WAIT_MS;
	int r;
	while ((r = handoff_state(adm, want, &hi)) == 1) {
		if (mono_ms() > end)
			return fail("the handoff state stays %s (%s), want %s", hi.state, hi.message,
				    want);
		sleep_ms(200);
	}
	if (r < 0)
		return -1;
	ok("handoff state %s: %s", hi.state, hi.message);
	return 0;
}

static bool context_exists(struct dmb_client *adm, uint64_t id)
{
	struct dmb_context_info *ci = NULL;
	size_t n = 0;
	if (dmb_list_contexts(adm, true, &ci, &n) < 0)
		return true;
	bool found = false;
	for (size_t i = 0; i < n; i++)
		found |= ci[i].context == id;
	free(ci);
	return found;
}

/* The P2P mapping at P2P_IOVA of context ctx: 1 live, 0 revoked, -1 absent/error. */
static int p2p_live(struct dmb_client *c, uint64_t ctx)
{
	struct dmb_mapping_info mi[16];
	size_t n = 0;
	bool more = false;
	uint64_t next = 0;
	if (dmb_list_mappings(c, ctx, P2P_IOVA, mi, 16, &n, &more, &next) < 0)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (mi[i].iova == P2P_IOVA && mi[i].mmio)
			return mi[i].revoked ? 0 : 1;
	return -1;
}

static int wait_p2p_live(struct dmb_client *c, uint64_t ctx)
{
	int64_t end = mono_ms() + WAIT_MS;
	int l;
	while ((l = p2p_live(c, ctx)) != 1) {
		if (l < 0)
			return fail("context %" PRIu64 " has no P2P mapping at 0x%llx", ctx, P2P_IOVA);
		if (mono_ms() > end)
			return fail("the P2P mapping stays revoked");
		sleep_ms(50);
	}
	return 0;
}

/* ---- phase 1 ---------------------------------------------------------------------- */

static int open_edu(struct dmb_client *c, uint64_t ctx, const char *bdf, struct edu *e,
		    int *fd, uint64_t *dev)
{
	struct dmb_device_info di;
	CHECK(c, dmb_device_open(c, ctx, bdf, fd, &di), "dmb_device_open");
	int r = edu_open(e, *fd);
	if (r == 0)
		r = edu_enable(e);
	if (r < 0)
		return fail("edu %s: %s", bdf, strerror(-r));
	*dev = di.device;
	return 0;
}

static int refusals(struct dmb_client *vmm, struct dmb_client *adm, const struct ram *ra,
		    const struct edu *ea)
{
	/* A context LUO cannot preserve: its memory is a hugetlb memfd. */
	struct ram h = { .fd = -1 };
	uint64_t ctx_h, reg_h;
	uint8_t tok[DMB_RECLAIM_TOKEN_SIZE];
	struct dmb_region_info ri;
	if (ram_new(&h, 2 * MiB, 9, true) < 0)
		return -1;
	CHECK(vmm, dmb_context_create_persistent(vmm, "vm-huge", &ctx_h, tok), "create vm-huge");
	CHECK(vmm, dmb_region_register(vmm, ctx_h, h.fd, 0, &ri), "register a hugetlb memfd");
	reg_h = ri.region;
	struct dmb_map_entry me = { reg_h, 0, 0x200000, 2 * MiB, DMB_READ | DMB_WRITE };
	CHECK(vmm, dmb_map(vmm, ctx_h, &me), "map the hugetlb memfd");
	ram_free(&h);

	struct dmb_handoff_info hi;
	int r = dmb_handoff_prepare(adm, false, &hi);
	const struct dmb_error *e = dmb_last_error(adm);
	if (r >= 0 || e->code != DMB_FAILED_PRECONDITION || !strstr(e->message, "vm-huge") ||
	    !strstr(e->message, "hugetlb") || !strstr(e->message, "nothing was changed"))
		return fail("prepare with a hugetlb context: %d [%s: %s], want a refusal naming it", r,
			    dmb_error_code_name(e->code), e->message);
	ok("prepare refused: %s", e->message);

	CHECK(adm, dmb_handoff_prepare(adm, true, &hi), "dmb_handoff_prepare(force)");
	bool listed = false;
	for (size_t i = 0; i < hi.n_left_out; i++)
		listed |= hi.left_out[i].context == ctx_h && strstr(hi.left_out[i].reason, "hugetlb");
	if (!listed || strcmp(hi.state, "prepared") != 0)
		return fail("prepare --force: state %s, %zu left out, vm-huge not listed with its "
			    "reason", hi.state, hi.n_left_out);
	ok("prepare --force: %u context(s) preserved, vm-huge left out: %s", hi.contexts,
	   hi.left_out[0].reason);
	/* Prepared: DMA goes on, mutations wait. */
	if (edu_copy(ea, IOVA_A1 + 0x100, IOVA_A2 + 0x10000, 100) < 0)
		return -1;
	if (memcmp(ra->p + MiB + 0x10000, ra->p + 0x100, 100) != 0)
		return fail("while prepared, edu's copy through A's mappings moved the wrong bytes");
	struct dmb_map_entry more = { reg_h, 0, 0x600000, 2 * MiB, DMB_READ };
	r = dmb_map(vmm, ctx_h, &more);
	if (r != -EAGAIN)
		return fail("a map while prepared answered %d, want -EAGAIN (UNAVAILABLE)", r);
	CHECK(adm, dmb_handoff_abort(adm, &hi), "dmb_handoff_abort");
	if (strcmp(hi.state, "normal") != 0)
		return fail("after abort the state is %s", hi.state);
	/* Everything still mapped: DMA right; mutations accepted again. */
	if (edu_copy(ea, IOVA_A2 + 0x20000, IOVA_A1 + 0x30000, XFER) < 0)
		return -1;
	if (memcmp(ra->p + 0x30000, ra->p + MiB + 0x20000, XFER) != 0)
		return fail("after abort, edu's copy through A's mappings moved the wrong bytes");
	ok("abort: back to normal, edu DMA through A's mappings still right");
	CHECK(vmm, dmb_context_destroy(vmm, ctx_h), "destroy vm-huge");
	return 0;
}

static int phase1(const char *bdf_a, const char *bdf_b)
{
	struct dmb_client *vmm = NULL, *adm = NULL;
	struct saved s = { 0 };
	struct ram ra = { .fd = -1 }, rc = { .fd = -1 };
	struct edu ea = { .device_fd = -1 }, eb = { .device_fd = -1 };
	int fda = -1, fdb = -1;
	struct dmb_region_info ri;

	if (session("vm-a", &vmm) < 0 || session("admin", &adm) < 0)
		return -1;
	CHECK(vmm, dmb_context_create_persistent(vmm, "vm-a", &s.ctx_a, s.tok_a), "create vm-a");
	CHECK(vmm, dmb_context_create_persistent(vmm, "vm-b", &s.ctx_b, s.tok_b), "create vm-b");
	CHECK(vmm, dmb_context_create_persistent(vmm, "vm-c", &s.ctx_c, s.tok_c), "create vm-c");
	if (open_edu(vmm, s.ctx_a, bdf_a, &ea, &fda, &s.dev_a) < 0 ||
	    open_edu(vmm, s.ctx_b, bdf_b, &eb, &fdb, &s.dev_b) < 0)
		return -1;
	if (ram_new(&ra, RA_SIZE, 1, false) < 0 || ram_new(&rc, RC_SIZE, 3, false) < 0)
		return -1;
	CHECK(vmm, dmb_region_register(vmm, s.ctx_a, ra.fd, 0, &ri), "register A's memfd");
	struct dmb_map_entry m[2] = {
		{ ri.region, 0, IOVA_A1, MiB, DMB_READ | DMB_WRITE },
		{ ri.region, MiB, IOVA_A2, MiB, DMB_READ | DMB_WRITE },
	};
	CHECK(vmm, dmb_map_batch(vmm, s.ctx_a, m, 2), "map A");
	CHECK(vmm, dmb_region_register(vmm, s.ctx_c, rc.fd, 0, &ri), "register C's memfd");
	struct dmb_map_entry mc = { ri.region, 0, IOVA_C, RC_SIZE, DMB_READ | DMB_WRITE };
	CHECK(vmm, dmb_map(vmm, s.ctx_c, &mc), "map C");
	CHECK(vmm, dmb_map_peer(vmm, s.ctx_a, s.dev_b, NULL, 0, 0, P2P_IOVA, MiB, DMB_READ | DMB_WRITE),
	      "P2P map of B's BAR0 into A");

	/* The device writes too: what is preserved is what it wrote. */
	if (edu_copy(&ea, IOVA_A1, IOVA_A2 + 0x1000, XFER) < 0)
		return -1;
	if (memcmp(ra.p + MiB + 0x1000, ra.p, XFER) != 0)
		return fail("edu's copy A1 -> A2 moved the wrong bytes");
	if (edu_p2p_read(&ea, IOVA_A1 + P2P_SLOT) < 0)
		return -1;
	uint32_t id;
	memcpy(&id, ra.p + P2P_SLOT, 4);
	if (id != EDU_ID_VALUE)
		return fail("edu A read 0x%08" PRIx32 " through the P2P mapping, want B's ID", id);
	ok("3 persistent contexts; edu A moved %u bytes through A's mappings and read B's ID "
	   "0x%08" PRIx32 " through the P2P mapping", XFER, id);

	if (refusals(vmm, adm, &ra, &ea) < 0)
		return -1;

	struct dmb_handoff_info hi;
	CHECK(adm, dmb_handoff_prepare(adm, false, &hi), "dmb_handoff_prepare");
	if (strcmp(hi.state, "prepared") != 0 || hi.contexts != 3 || hi.n_left_out != 0)
		return fail("prepare: state %s, %u contexts, %zu left out", hi.state, hi.contexts,
			    hi.n_left_out);
	ok("prepared: %u context(s), %" PRIu64 " mapping(s), %u memfd(s), %" PRIu64 " bytes, "
	   "%u device(s) preserved", hi.contexts, hi.mappings, hi.regions, hi.bytes, hi.devices);
	if (no_dmar_since_boot("before the kexec") < 0)
		return -1;
	if (state_write("ra.bin", ra.p, RA_SIZE) < 0 || state_write("saved", &s, sizeof(s)) < 0)
		return -1;
	edu_close(&ea);
	edu_close(&eb);
	return 0;
}

/* ---- after a kexec ---------------------------------------------------------------- */

/* Before any reclaim: edu A through sysfs copies the saved bytes from one restored
 * mapping of A to the other and reads B's ID through the restored P2P mapping. Fills
 * exp (the expected contents of A's memfd) with what those DMAs wrote. */
static int before_reclaim(struct dmb_client *adm, const struct saved *s, const char *bdf_a,
			  const char *bdf_b, uint8_t *exp)
{
	struct edu ea, eb;
	int cfa = -1, cfb = -1, r;
	uint16_t cmd_a = 0, cmd_b = 0;

	if ((r = edu_open_sysfs(&ea, bdf_a, &cfa)) < 0 || (r = edu_open_sysfs(&eb, bdf_b, &cfb)) < 0)
		return fail("edu through sysfs: %s", strerror(-r));
	edu_get_command(&ea, &cmd_a);
	edu_get_command(&eb, &cmd_b);
	ok("after the kexec: edu A command 0x%04x, edu B command 0x%04x (memory decoding %s)",
	   cmd_a, cmd_b, (cmd_b & EDU_CMD_MEMORY) ? "on" : "off");
	/* B's memory back on (behind the broker's back, as a new kernel's driver would):
	 * the broker restores the P2P mapping when it sees it. */
	if ((r = edu_enable(&ea)) < 0 || (r = edu_enable(&eb)) < 0)
		return fail("enabling memory + bus master through sysfs: %s", strerror(-r));
	if (wait_p2p_live(adm, s->ctx_a) < 0)
		return -1;
	uint64_t src = (uint64_t)phase * 0x1000 + 7, dst = (uint64_t)phase * 0x3000 + 1;
	if (edu_copy(&ea, IOVA_A1 + src, IOVA_A2 + dst, XFER) < 0)
		return -1;
	memcpy(exp + MiB + dst, exp + src, XFER);
	uint64_t slot = P2P_SLOT + 8 * (uint64_t)phase;
	if (edu_p2p_read(&ea, IOVA_A1 + slot) < 0)
		return -1;
	uint32_t id = EDU_ID_VALUE;
	memcpy(exp + slot, &id, 4);
	edu_close(&ea);
	edu_close(&eb);
	close(cfa);
	close(cfb);
	ok("before any reclaim: edu A copied %u bytes between A's restored mappings and read "
	   "B's ID through the restored P2P mapping (checked after the reclaim)", XFER);
	return 0;
}

/* Reclaims ctx with tok (updated to the next token); the region fds and device fds. */
static int reclaim(struct dmb_client *vmm, uint64_t ctx, uint8_t *tok, struct dmb_reclaim_info *ri,
		   const char *what)
{
	CHECK(vmm, dmb_context_reclaim(vmm, ctx, tok, ri), what);
	if (ri->degraded)
		return fail("%s: the context came back degraded", what);
	ok("%s: %" PRIu64 " mapping(s), %zu region(s), %zu device(s)", what, ri->mappings,
	   ri->n_regions, ri->n_devices);
	return 0;
}

static int expect_bytes(const uint8_t *got, const uint8_t *want, size_t len, const char *what)
{
	for (size_t i = 0; i < len; i++)
		if (got[i] != want[i])
			return fail("%s: byte +0x%zx is 0x%02x, want 0x%02x", what, i, got[i], want[i]);
	ok("%s: all %zu bytes right", what, len);
	return 0;
}

static int after_kexec(const char *bdf_a, const char *bdf_b)
{
	struct dmb_client *vmm = NULL, *adm = NULL;
	struct saved s;
	struct dmb_handoff_info hi;
	uint8_t *exp_a = malloc(RA_SIZE), *exp_n = malloc(RN_SIZE);
	if (!exp_a || !exp_n)
		return fail("out of memory");
	if (state_read("saved", &s, sizeof(s)) < 0 || state_read("ra.bin", exp_a, RA_SIZE) < 0 ||
	    (s.has_rn && state_read("rn.bin", exp_n, RN_SIZE) < 0))
		return -1;
	if (session("admin", &adm) < 0)
		return -1;
	if (handoff_state(adm, "reclaiming", &hi) != 0)
		return fail("after the kexec the handoff state is %s (%s), want reclaiming", hi.state,
			    hi.message);
	unsigned want = phase == 2 ? 3 : 2;
	if (hi.contexts != want || hi.degraded != 0)
		return fail("restored %u context(s) (%u degraded), want %u", hi.contexts, hi.degraded,
			    want);
	ok("restored %u context(s), %" PRIu64 " mapping(s), %u degraded, %u unclaimed", hi.contexts,
	   hi.mappings, hi.degraded, hi.unclaimed);
	if (before_reclaim(adm, &s, bdf_a, bdf_b, exp_a) < 0)
		return -1;

	if (session("vm-a", &vmm) < 0)
		return -1;
	struct dmb_reclaim_info ria, rib;
	if (reclaim(vmm, s.ctx_a, s.tok_a, &ria, "reclaim vm-a") < 0 ||
	    reclaim(vmm, s.ctx_b, s.tok_b, &rib, "reclaim vm-b") < 0)
		return -1;
	if (ria.n_regions != (s.has_rn ? 2u : 1u) || ria.n_devices != 1 || rib.n_devices != 1)
		return fail("reclaimed %zu region(s) and %zu+%zu device(s)", ria.n_regions,
			    ria.n_devices, rib.n_devices);
	struct ram ra = { .fd = -1 }, rn = { .fd = -1 };
	for (size_t i = 0; i < ria.n_regions; i++) {
		struct ram *m = ria.regions[i].size == RA_SIZE ? &ra : &rn;
		if (ria.regions[i].fd < 0 || ram_map(m, ria.regions[i].fd, ria.regions[i].size) < 0)
			return fail("region %" PRIu64 " came back without a usable memfd",
				    ria.regions[i].region);
		int seals = fcntl(m->fd, F_GET_SEALS);
		if (seals < 0 || !(seals & F_SEAL_SHRINK))
			return fail("region %" PRIu64 "'s memfd came back without F_SEAL_SHRINK (seals %#x)",
				    ria.regions[i].region, seals);
	}
	if (!ra.p || (s.has_rn && !rn.p))
		return fail("the reclaimed regions are not A's");
	if (expect_bytes(ra.p, exp_a, RA_SIZE, "A's memfd after the kexec") < 0 ||
	    (s.has_rn && expect_bytes(rn.p, exp_n, RN_SIZE, "the added memfd after the kexec") < 0))
		return -1;

	/* The VMM drives edu through its reclaimed device fds. */
	struct edu ea, eb;
	int r = edu_open(&ea, ria.devices[0].fd);
	if (r == 0)
		r = edu_open(&eb, rib.devices[0].fd);
	if (r == 0)
		r = edu_enable(&ea);
	if (r < 0)
		return fail("edu through the reclaimed device fds: %s", strerror(-r));
	if (edu_copy(&ea, IOVA_A2 + 0x40000, IOVA_A1 + 0x50000, XFER) < 0)
		return -1;
	if (memcmp(ra.p + 0x50000, ra.p + MiB + 0x40000, XFER) != 0)
		return fail("edu's copy through the reclaimed context moved the wrong bytes");
	if (edu_p2p_read(&ea, IOVA_A1 + P2P_SLOT + 0x100) < 0)
		return -1;
	uint32_t id;
	memcpy(&id, ra.p + P2P_SLOT + 0x100, 4);
	if (id != EDU_ID_VALUE)
		return fail("P2P read after the reclaim: 0x%08" PRIx32, id);
	ok("edu through the reclaimed device fds: RAM copy right, B's ID through the P2P mapping");

	if (phase == 2) {
		/* More work in the reclaimed context: a new region, mapped, DMA-proven. */
		struct dmb_region_info ri;
		if (ram_new(&rn, RN_SIZE, 5, false) < 0)
			return -1;
		CHECK(vmm, dmb_region_register(vmm, s.ctx_a, rn.fd, 0, &ri), "register a new memfd");
		struct dmb_map_entry m = { ri.region, 0, IOVA_N, RN_SIZE, DMB_READ | DMB_WRITE };
		CHECK(vmm, dmb_map(vmm, s.ctx_a, &m), "map the new memfd");
		if (edu_copy(&ea, IOVA_A1 + 0x60000, IOVA_N + 0x2000, XFER) < 0)
			return -1;
		if (memcmp(rn.p + 0x2000, ra.p + 0x60000, XFER) != 0)
			return fail("edu's copy into the new mapping moved the wrong bytes");
		ok("a new memfd mapped at 0x%llx in the reclaimed context; edu moved bytes into it",
		   IOVA_N);
		/* C was not reclaimed: released after the grace period, then the session is
		 * finished and the state is normal. */
		if (wait_state(adm, "normal") < 0)
			return -1;
		if (context_exists(adm, s.ctx_c))
			return fail("context vm-c (%" PRIu64 ") was not released", s.ctx_c);
		if (!fds_log_has(&H, "was not reclaimed") && !fds_log_has(&H, "not reclaimed within"))
			return fail("no line in the daemon's log about releasing vm-c");
		if (!fds_log_has(&H, "preserver session is finished"))
			return fail("no line in the daemon's log about finishing the LUO session");
		ok("vm-c, never reclaimed, released after the grace period; LUO session finished");

		/* The second handoff, of contexts whose memfds the kernel re-created, as
		 * an operator starts it: dmabrokerctl. */
		char cmd[256];
		snprintf(cmd, sizeof(cmd), "dmabrokerctl --socket %s handoff prepare", H.sock);
		int st = system(cmd);
		if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			return fail("'%s' failed (wait status 0x%x)", cmd, st);
		if (handoff_state(adm, "prepared", &hi) != 0 || hi.contexts != 2 || hi.n_left_out != 0)
			return fail("after dmabrokerctl handoff prepare: state %s, %u context(s), %zu left "
				    "out", hi.state, hi.contexts, hi.n_left_out);
		ok("prepared again: %u context(s), %" PRIu64 " mapping(s), %u memfd(s)", hi.contexts,
		   hi.mappings, hi.regions);
		s.has_rn = true;
		if (no_dmar_since_boot("before the second kexec") < 0)
			return -1;
		if (state_write("ra.bin", ra.p, RA_SIZE) < 0 || state_write("rn.bin", rn.p, RN_SIZE) < 0 ||
		    state_write("saved", &s, sizeof(s)) < 0)
			return -1;
		return 0;
	}
	/* phase 3: everything reclaimed: the session is finished, the state normal. */
	if (wait_state(adm, "normal") < 0)
		return -1;
	if (no_dmar_since_boot("after the second kexec") < 0)
		return -1;
	dmb_close(vmm);
	dmb_close(adm);
	int st = fds_stop(&H, SIGTERM);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return fail("dmabrokerd did not stop cleanly (0x%x)", st);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 7 || strncmp(argv[1], "phase", 5) != 0) {
		fprintf(stderr, "usage: vm-handoff phase1|phase2|phase3 DMABROKERD CONFIG STATE_DIR "
				"BDF_A BDF_B\n");
		return 2;
	}
	phase = atoi(argv[1] + 5);
	state_dir = argv[4];
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (daemon_start(argv[2], argv[3]) < 0) {
		fds_dump_log(&H);
		return 1;
	}
	int r = phase == 1 ? phase1(argv[5], argv[6]) : after_kexec(argv[5], argv[6]);
	if (r < 0) {
		fds_dump_log(&H);
		return 1;
	}
	if (phase == 3) {
		ok("done");
		return 0;
	}
	/* The daemon stays up, prepared: the init kexecs now. */
	if (state_write("ready", "1", 1) < 0)
		return 1;
	ok("ready for the kexec");
	for (;;)
		pause();
}
