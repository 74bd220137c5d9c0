/* SPDX-License-Identifier: MIT */
/*
 * broker-client - the guest side of the vm-broker test: a VMM-like client of the real
 * dmabrokerd (VFIO type1 backend) that proves every mapping by moving bytes with edu.
 *
 * Runs inside the test VM (tests/vm/broker-init.sh), as root (uid 0 is the broker's
 * default admin, which only matters for the status print), against a daemon whose
 * allow-list holds the two edu devices. One scenario per invocation, one session each:
 *
 * The backend must be $VMTEST_WANT_BACKEND (vfio-type1 when unset); the pins a killed
 * client leaves are read where that backend charges them (VmLck or VmPin).
 *
 *   broker-client info  SOCK BDF    server info (backend as above), IOVA
 *                                   ranges and the DMA-mapping limit, after opening BDF
 *   broker-client ram   SOCK BDF    memfd (F_SEAL_SHRINK) registered, mapped twice;
 *                                   edu round trips RAM -> edu -> RAM at several IOVAs,
 *                                   the last page (last byte) of each mapping included
 *   broker-client unmap SOCK BDF    a working DMA faults after dmb_unmap: DMAR line for
 *                                   that IOVA on /dev/kmsg, destination untouched; the
 *                                   other mapping still works
 *   broker-client kill  SOCK BDF    a forked client maps + DMAs, is SIGKILLed; the
 *                                   kernel unpins its pages (dmabrokerd's VmLck); a new
 *                                   session opens BDF again: the old IOVA faults and moves
 *                                   no bytes into the dead client's memfd; then maps
 *                                   and DMAs fine (the daemon keeps serving)
 *   broker-client range SOCK BDF    maps outside dmb_iova_ranges (the MSI window
 *                                   0xfee00000-0xfeefffff, past the aperture) are refused
 *                                   with DMB_OUT_OF_RANGE; the kernel's DMA-mapping count
 *                                   moves only for the accepted map
 *   broker-client granular SOCK BDF a granular mapping (4 KiB granules): bytes move
 *                                   through it; discarded granules fault (DMAR line)
 *                                   and are unpinned while their neighbours still
 *                                   work; populated again they pin and move bytes
 *   broker-client deny  SOCK DENIED_BDF ALLOWED_BDF
 *                                   DENIED_BDF refused with DMB_PERMISSION_DENIED; the
 *                                   allowed one opens
 *   broker-client p2p   SOCK BDF_A BDF_B POLL_MS
 *                                   A (context 1) reads B's ID register (B in context 2)
 *                                   through a broker P2P mapping of B's BAR0; the mapping
 *                                   is revoked (DMAR fault, MAPPINGS_REVOKED queued
 *                                   before the reply) and restored (ID again,
 *                                   MAPPINGS_RESTORED) around a mediated memory-disable
 *                                   and a mediated reset; a memory-disable written
 *                                   through sysfs by another process is revoked by the
 *                                   watcher (which polls every POLL_MS, the daemon's
 *                                   [p2p] poll_interval_ms) and restored when the bit is
 *                                   back (written through the client's own device fd);
 *                                   closing B revokes for good (permanent event,
 *                                   fault, mapping gone from the listing)
 *
 *   broker-client noiommu SOCK BDF  a machine without an IOMMU (Linux 7.3, iommufd's
 *                                   no-IOMMU mode): BDF (noiommu-vfioN) is refused in a
 *                                   normal context, saying why; opened in a no-IOMMU
 *                                   context (listed and counted as one), a memfd
 *                                   mapped there pins (VmPin), PhysRanges tells its
 *                                   physical ranges, and edu, programmed with those
 *                                   physical addresses, moves the right bytes both ways,
 *                                   page to page and across a contiguous range; an
 *                                   unmapped or partly mapped range is refused; the
 *                                   unmap unpins (VmPin back) and the range is gone
 *
 * Prints "broker-client: ok: ..." per step, "broker-client: FAIL: ..." on the first
 * failure, and exits 0 only if every step passed. Never reads stdin.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "dmabroker.h"
#include "edu.h"

#define MiB (1ull << 20)
#define XFER 4095u /* largest transfer QEMU 7.2's edu accepts */
#define FAULT_WAIT_MS 3000
#define CHILD_READY_MS 30000
#define MSI_START 0xfee00000ull
#define MSI_LAST 0xfeefffffull
#define P2P_IOVA 0x4000000ull  /* B's BAR0 in A's context (edu: IOVAs below 256 MiB) */
#define P2P_RAM_IOVA 0x100000ull
#define P2P_SLOT 0x100u          /* A's buffer slot and RAM offset of the word read */
#define P2P_SENTINEL 0xc3c3c3c3u
/*
 * DMAR fault lines are rate limited by a fixed 5 s window of 10 tokens (Linux 6.1
 * dmar_fault()), and each fault costs 3: the "handling fault status" line, the fault
 * record, and the loop's last pass that finds no more records. So only the first 3
 * faults of a window are reported (the earlier checks' faults count too: a 4th one
 * here showed its "handling" line and no fault line). This scenario provokes 3, each
 * after the window of the last DMAR line logged so far has ended, so each opens a
 * fresh window (one window for all three lost the third's record line on a slow run).
 */
#define DMAR_WINDOW_MS 5000
#define P2P_MAX_FAULTS 4
#define P2P_WATCH_WAIT_MS 5000

static const char *prog_step = "";

static void ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bfail(struct dmb_client *c, int r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void ok(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("broker-client%s: ok: ", prog_step);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	fflush(stdout);
	va_end(ap);
}

/* Prints the failure and returns -1; r is a negative errno or 0 (no errno to show). */
static int fail(int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fflush(stdout);
	printf("broker-client%s: FAIL: ", prog_step);
	vprintf(fmt, ap);
	if (r < 0)
		printf(": %s", strerror(-r));
	fputc('\n', stdout);
	fflush(stdout);
	va_end(ap);
	return -1;
}

/* A libdmabroker call failed with r: prints the broker's code, errno and sentence. */
static int bfail(struct dmb_client *c, int r, const char *fmt, ...)
{
	const struct dmb_error *e = c ? dmb_last_error(c) : NULL;
	va_list ap;

	va_start(ap, fmt);
	fflush(stdout);
	printf("broker-client%s: FAIL: ", prog_step);
	vprintf(fmt, ap);
	printf(": %s", strerror(-r));
	if (e)
		printf(" [broker: %s, errno %d: %s]", dmb_error_code_name(e->code), e->sys_errno,
		       e->message);
	fputc('\n', stdout);
	fflush(stdout);
	va_end(ap);
	return -1;
}

/* ---- guest RAM ------------------------------------------------------------------- */

struct ram {
	int fd;
	uint8_t *p;
	size_t size;
};

/* A memfd sealed against shrinking (what the broker demands), mapped here so the test
 * sees exactly the bytes the device reads and writes. */
static int ram_new(struct ram *m, size_t size, const char *name)
{
	m->fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	m->p = NULL;
	m->size = size;
	if (m->fd < 0)
		return fail(-errno, "memfd_create");
	if (ftruncate(m->fd, (off_t)size) < 0)
		return fail(-errno, "ftruncate memfd to %zu bytes", size);
	if (fcntl(m->fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		return fail(-errno, "F_ADD_SEALS F_SEAL_SHRINK");
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (p == MAP_FAILED)
		return fail(-errno, "mmap memfd");
	m->p = p;
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

static uint8_t pattern(uint32_t seed, size_t i)
{
	return (uint8_t)(i * 7 + 13 + (i >> 8) + seed * 31);
}

/* ---- kernel log ------------------------------------------------------------------ */

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Opens /dev/kmsg positioned after every record logged so far. */
static int kmsg_open(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return fail(-errno, "open /dev/kmsg");
	if (lseek(fd, 0, SEEK_END) < 0) {
		int r = -errno;

		close(fd);
		return fail(r, "seek /dev/kmsg");
	}
	return fd;
}

/* "fault addr 0x<iova>" as a whole word: 0x200000 must not match 0x2000000. */
static bool has_fault_addr(const char *msg, uint64_t iova)
{
	char want[48];
	size_t n;

	n = (size_t)snprintf(want, sizeof(want), "fault addr 0x%" PRIx64, iova);
	for (const char *p = strstr(msg, want); p; p = strstr(p + 1, want)) {
		char next = p[n];

		if (!((next >= '0' && next <= '9') || (next >= 'a' && next <= 'f') ||
		      (next >= 'A' && next <= 'F')))
			return true;
	}
	return false;
}

/* "0000:01:00.0" -> "01:00.0]": the DMAR fault message names the device "[01:00.0]"
 * on Linux 6.x and "[0000:01:00.0]" on 7.x; both end so. */
static void dmar_dev(const char *bdf, char *out, size_t outsz)
{
	size_t n = strlen(bdf);

	snprintf(out, outsz, "%s]", n > 7 ? bdf + n - 7 : bdf);
}

/*
 * Waits up to FAULT_WAIT_MS for a new kernel log record with "DMAR", the device and
 * "fault addr 0x<iova>". Copies the message into line. Returns 0 if found.
 */
static int kmsg_wait_fault(int fd, const char *bdf, uint64_t iova, char *line, size_t linesz)
{
	int64_t deadline = mono_ms() + FAULT_WAIT_MS;
	char rec[8192], dev[24];

	dmar_dev(bdf, dev, sizeof(dev));
	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);

		if (n < 0 && errno == EPIPE)
			continue; /* records overwritten under us: keep reading */
		if (n < 0 && errno != EAGAIN)
			return -errno;
		if (n > 0) {
			char *msg, *nl;

			rec[n] = '\0';
			msg = strchr(rec, ';'); /* "prio,seq,usec,flags;text\n" */
			msg = msg ? msg + 1 : rec;
			nl = strchr(msg, '\n');
			if (nl)
				*nl = '\0';
			if (strstr(msg, "DMAR") && strstr(msg, dev) && has_fault_addr(msg, iova)) {
				size_t len = strnlen(msg, linesz - 1);

				memcpy(line, msg, len);
				line[len] = '\0';
				return 0;
			}
			continue;
		}
		int left = (int)(deadline - mono_ms());
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, left < 50 ? left : 50);
	}
}

/* ---- the backend under test and the kernel's pin accounting ---------------------- */

/* The backend the daemon must be running: $VMTEST_WANT_BACKEND (the guest's /init sets
 * it from the kernel command line), vfio-type1 by default. */
static const char *want_backend(void)
{
	const char *b = getenv("VMTEST_WANT_BACKEND");

	return b && *b ? b : "vfio-type1";
}

/* Where the kernel charges the pages a backend pins for the daemon, as a
 * /proc/PID/status field. VFIO type1 charges the mapping process's locked_vm (VmLck);
 * iommufd charges the mm's pinned_vm (VmPin) and, for a task without CAP_IPC_LOCK,
 * the user's locked_vm, which /proc does not show per process. */
static const char *pin_field(void)
{
	return strcmp(want_backend(), "iommufd") == 0 ? "VmPin" : "VmLck";
}

/* The daemon's pin_field() in kB, or -1. */
static long vm_locked_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	size_t fl = strlen(pin_field());
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, pin_field(), fl) == 0 && line[fl] == ':') {
			kb = strtol(line + fl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kb;
}

/* The daemon's pid, from an admin status request on a session of its own. */
static pid_t daemon_pid(const char *sock)
{
	struct dmb_client *c = NULL;
	struct dmb_status st;
	int r;

	r = dmb_connect(sock, "vm-broker-status", &c);
	if (r < 0)
		return fail(r, "dmb_connect %s", sock);
	r = dmb_status(c, &st);
	if (r < 0) {
		bfail(c, r, "dmb_status");
		dmb_close(c);
		return -1;
	}
	dmb_close(c);
	return (pid_t)st.pid;
}

/* The daemon's pin_field() must be base_kb + delta_kb. */
static int expect_locked(pid_t dpid, long base_kb, long delta_kb, const char *when)
{
	long kb = vm_locked_kb(dpid);

	if (kb < 0)
		return fail(0, "cannot read %s of dmabrokerd (pid %d)", pin_field(), (int)dpid);
	if (kb != base_kb + delta_kb)
		return fail(0, "%s: dmabrokerd %s is %ld kB, want %ld kB", when, pin_field(), kb,
			    base_kb + delta_kb);
	ok("%s: dmabrokerd %s %ld kB (pinned by %s: %+ld kB)", when, pin_field(), kb,
	   want_backend(), delta_kb);
	return 0;
}

/* ---- a broker session with one edu ----------------------------------------------- */

struct sess {
	struct dmb_client *c;
	uint64_t ctx;
	int dev_fd;
	struct dmb_device_info dev;
	struct edu e;
	const char *bdf;
};

#define SESS_INIT { .dev_fd = -1, .e = { .device_fd = -1 } }

static void sess_close(struct sess *s)
{
	edu_close(&s->e);
	if (s->dev_fd >= 0)
		close(s->dev_fd);
	s->dev_fd = -1;
	if (s->c)
		dmb_close(s->c);
	s->c = NULL;
}

/* connect (backend must be want_backend()) + context; no device yet. */
static int sess_connect(struct sess *s, const char *sock, const char *name)
{
	const struct dmb_server_info *si;
	int r;

	memset(s, 0, sizeof(*s));
	s->dev_fd = -1;
	s->e.device_fd = -1;
	r = dmb_connect(sock, name, &s->c);
	if (r < 0) {
		s->c = NULL;
		return fail(r, "dmb_connect %s", sock);
	}
	si = dmb_server_info(s->c);
	if (strcmp(si->backend, want_backend()) != 0)
		return fail(0, "broker backend is '%s', not %s", si->backend, want_backend());
	r = dmb_context_create(s->c, name, &s->ctx);
	if (r < 0)
		return bfail(s->c, r, "dmb_context_create");
	return 0;
}

/* Opens bdf in the context with its device fd handed back; enables memory + bus master
 * through the fd's config region and checks the edu answers. */
static int sess_open_edu(struct sess *s, const char *bdf)
{
	uint16_t cmd = 0;
	uint32_t id = 0;
	int r;

	s->bdf = bdf;
	r = dmb_device_open(s->c, s->ctx, bdf, &s->dev_fd, &s->dev);
	if (r < 0) {
		s->dev_fd = -1;
		return bfail(s->c, r, "dmb_device_open %s", bdf);
	}
	if (s->dev_fd < 0)
		return fail(0, "dmb_device_open %s handed back no device fd", bdf);
	if (s->dev.vendor_id != EDU_VENDOR_ID || s->dev.device_id != EDU_DEVICE_ID)
		return fail(0, "broker says %s is %04x:%04x, not an edu", bdf, s->dev.vendor_id,
			    s->dev.device_id);
	r = edu_open(&s->e, s->dev_fd);
	if (r < 0)
		return fail(r, "edu_open on the broker's device fd");
	r = edu_enable(&s->e);
	if (r == 0)
		r = edu_get_command(&s->e, &cmd);
	if (r < 0 || (cmd & (EDU_CMD_MEMORY | EDU_CMD_MASTER)) != (EDU_CMD_MEMORY | EDU_CMD_MASTER))
		return fail(r, "enable memory + bus master (command 0x%04x)", cmd);
	r = edu_read_id(&s->e, &id);
	if (r < 0 || id != EDU_ID_VALUE)
		return fail(r, "edu ID register reads 0x%08" PRIx32, id);
	ok("context %" PRIu64 ": device %s opened (id %" PRIu64 ", group %s, fd %d), command 0x%04x, ID 0x%08" PRIx32,
	   s->ctx, bdf, s->dev.device, s->dev.group, s->dev_fd, cmd, id);
	return 0;
}

static int sess_start(struct sess *s, const char *sock, const char *name, const char *bdf)
{
	if (sess_connect(s, sock, name) < 0)
		return -1;
	return sess_open_edu(s, bdf);
}

static int reg(struct sess *s, const struct ram *m, uint64_t *region)
{
	struct dmb_region_info ri;
	int r = dmb_region_register(s->c, s->ctx, m->fd, 0, &ri);

	if (r < 0)
		return bfail(s->c, r, "dmb_region_register memfd (%zu bytes)", m->size);
	if (ri.size != m->size || !ri.writable)
		return fail(0, "region %" PRIu64 ": size %" PRIu64 ", writable %d", ri.region,
			    ri.size, ri.writable);
	*region = ri.region;
	ok("region %" PRIu64 ": %s, %" PRIu64 " bytes, page %" PRIu64 ", writable", ri.region,
	   ri.kind, ri.size, ri.page_size);
	return 0;
}

static int map(struct sess *s, uint64_t region, uint64_t off, uint64_t iova, uint64_t len)
{
	struct dmb_map_entry me = {
		.region = region, .offset = off, .iova = iova, .length = len,
		.prot = DMB_READ | DMB_WRITE,
	};
	int r = dmb_map(s->c, s->ctx, &me);

	if (r < 0)
		return bfail(s->c, r, "dmb_map region %" PRIu64 "+0x%" PRIx64 " at IOVA 0x%" PRIx64
			     " (0x%" PRIx64 " bytes)", region, off, iova, len);
	ok("mapped region %" PRIu64 "+0x%" PRIx64 " at IOVA [0x%" PRIx64 ", 0x%" PRIx64 ")",
	   region, off, iova, iova + len);
	return 0;
}

/*
 * edu copies count bytes RAM -> its buffer -> RAM: from src_iova (memfd offset src_off)
 * to dst_iova (memfd offset dst_off of dst). Every destination byte must match and the
 * bytes just around the destination must be untouched.
 */
static int roundtrip(const struct sess *s, struct ram *src, uint64_t src_iova, size_t src_off,
		     struct ram *dst, uint64_t dst_iova, size_t dst_off, uint32_t count,
		     uint32_t seed)
{
	size_t lo = dst_off > 0 ? dst_off - 1 : 0;
	size_t hi = dst_off + count < dst->size ? dst_off + count + 1 : dst->size;
	int r;

	for (size_t i = 0; i < count; i++)
		src->p[src_off + i] = pattern(seed, i);
	memset(dst->p + lo, 0xa5, hi - lo);
	r = edu_dma_to_device(&s->e, src_iova, 0, count, 0);
	if (r == 0)
		r = edu_dma_from_device(&s->e, 0, dst_iova, count, 0);
	if (r < 0)
		return fail(r, "edu DMA 0x%" PRIx64 " -> edu -> 0x%" PRIx64, src_iova, dst_iova);
	for (size_t i = 0; i < count; i++)
		if (dst->p[dst_off + i] != pattern(seed, i))
			return fail(0, "round trip 0x%" PRIx64 " -> 0x%" PRIx64 ": byte %zu is 0x%02x, want 0x%02x",
				    src_iova, dst_iova, i, dst->p[dst_off + i], pattern(seed, i));
	for (size_t i = lo; i < hi; i++)
		if ((i < dst_off || i >= dst_off + count) && dst->p[i] != 0xa5)
			return fail(0, "DMA to 0x%" PRIx64 " changed memfd byte 0x%zx outside its range",
				    dst_iova, i);
	ok("DMA RAM 0x%" PRIx64 " -> edu -> RAM 0x%" PRIx64 ": %u bytes identical (memfd +0x%zx -> +0x%zx)",
	   src_iova, dst_iova, count, src_off, dst_off);
	return 0;
}

/*
 * edu writes count bytes from its buffer to iova, which must not be mapped: the guest
 * kernel must log a DMAR fault for that IOVA from this device, and none of the bytes
 * at memfd offset watch_off of watch (what the IOVA was or would be backed by) change.
 */
static int expect_fault(const struct sess *s, uint64_t iova, struct ram *watch, size_t watch_off,
			uint32_t count)
{
	char line[512];
	int kfd, r;

	memset(watch->p + watch_off, 0x3c, count);
	kfd = kmsg_open();
	if (kfd < 0)
		return -1;
	r = edu_dma_from_device(&s->e, 0, iova, count, 0);
	if (r < 0) {
		close(kfd);
		return fail(r, "edu DMA to unmapped IOVA 0x%" PRIx64 " did not complete", iova);
	}
	r = kmsg_wait_fault(kfd, s->bdf, iova, line, sizeof(line));
	close(kfd);
	if (r < 0)
		return fail(r == -ETIMEDOUT ? 0 : r,
			    "no DMAR fault for IOVA 0x%" PRIx64 " from %s in the kernel log within %d ms",
			    iova, s->bdf, FAULT_WAIT_MS);
	ok("kernel: %s", line);
	for (size_t i = 0; i < count; i++)
		if (watch->p[watch_off + i] != 0x3c)
			return fail(0, "DMA to unmapped IOVA 0x%" PRIx64 " changed memfd byte +0x%zx to 0x%02x",
				    iova, watch_off + i, watch->p[watch_off + i]);
	ok("DMA to unmapped IOVA 0x%" PRIx64 " faulted and moved no bytes", iova);
	return 0;
}

static int get_ranges(struct sess *s, struct dmb_iova_info *ii, bool print)
{
	int r = dmb_iova_ranges(s->c, s->ctx, ii);

	if (r < 0)
		return bfail(s->c, r, "dmb_iova_ranges");
	if (!print)
		return 0;
	for (size_t i = 0; i < ii->n; i++)
		ok("IOVA range %zu: [0x%" PRIx64 ", 0x%" PRIx64 "]", i, ii->ranges[i].start,
		   ii->ranges[i].last);
	ok("IOVA alignment 0x%" PRIx64 ", DMA-mapping limit: max_mappings %" PRIu32
	   ", mappings_available %" PRIu32, ii->alignment, ii->max_mappings, ii->mappings_available);
	return 0;
}

/* ---- scenarios ------------------------------------------------------------------- */

static int run_info(const char *sock, const char *bdf)
{
	const struct dmb_server_info *si;
	struct dmb_iova_info ii;
	struct dmb_status st;
	struct sess s = SESS_INIT;
	int r, ret = -1;

	if (sess_connect(&s, sock, "vm-broker-info") < 0)
		goto out;
	si = dmb_server_info(s.c);
	ok("server %s, protocol %" PRIu32 ", backend %s, features [%s], max packet %" PRIu32
	   ", max fds %" PRIu32 ", max batch %" PRIu32 ", session %" PRIu64 "%s",
	   si->server_version, si->protocol_version, si->backend, si->features,
	   si->max_packet_bytes, si->max_fds, si->max_batch, si->session_id,
	   si->admin ? ", admin" : "");
	/* On iommufd P2P goes through VFIO dma-buf export (7.x): a VMM must see it in the
	 * features of its first Hello, before any device is open. */
	if (strcmp(want_backend(), "iommufd") == 0) {
		const char *f = strstr(si->features, "p2p-dmabuf");

		if (!f) {
			fail(0, "features [%s] of a fresh session lack p2p-dmabuf", si->features);
			goto out;
		}
		ok("p2p-dmabuf announced before any device was opened");
	}
	if (sess_open_edu(&s, bdf) < 0)
		goto out;
	if (get_ranges(&s, &ii, true) < 0)
		goto out;
	if (ii.n == 0) {
		fail(0, "the broker reports no IOVA ranges with %s attached", bdf);
		goto out;
	}
	if (ii.max_mappings == 0)
		ok("note: the backend reports no DMA-mapping limit");
	r = dmb_status(s.c, &st);
	if (r < 0) {
		bfail(s.c, r, "dmb_status");
		goto out;
	}
	ok("status: pid %" PRIu32 ", backend %s, %" PRIu32 " session(s), %" PRIu32 " context(s), %" PRIu32 " device(s), pinned %" PRIu64 " bytes",
	   st.pid, st.backend, st.sessions, st.totals.contexts, st.totals.devices,
	   st.totals.pinned_bytes);
	ret = 0;
out:
	sess_close(&s);
	return ret;
}

static int run_ram(const char *sock, const char *bdf)
{
	/* One 2 MiB memfd, two 1 MiB mappings far apart: A = [0, 1M) at 0x100000,
	 * B = [1M, 2M) at 0x800000. */
	const uint64_t ia = 0x100000, ib = 0x800000, len = MiB;
	const size_t oa = 0, ob = MiB;
	struct ram m = { .fd = -1 };
	struct sess s = SESS_INIT;
	uint64_t region;
	int ret = -1;

	if (ram_new(&m, 2 * MiB, "vm-broker-ram") < 0)
		goto out;
	if (sess_start(&s, sock, "vm-broker-ram", bdf) < 0)
		goto out;
	if (reg(&s, &m, &region) < 0 || map(&s, region, oa, ia, len) < 0 ||
	    map(&s, region, ob, ib, len) < 0)
		goto out;
	/* first pages: A -> B and B -> A */
	if (roundtrip(&s, &m, ia, oa, &m, ib, ob, XFER, 1) < 0 ||
	    roundtrip(&s, &m, ib + 0x3000, ob + 0x3000, &m, ia + 0x5000, oa + 0x5000, XFER, 2) < 0)
		goto out;
	/* across a page boundary, inside each mapping */
	if (roundtrip(&s, &m, ia + 0x7800, oa + 0x7800, &m, ib + 0x40800, ob + 0x40800, XFER, 3) < 0)
		goto out;
	/* the last page of each mapping, up to and including its last byte */
	if (roundtrip(&s, &m, ia + len - XFER, oa + len - XFER, &m, ib + len - XFER,
		      ob + len - XFER, XFER, 4) < 0)
		goto out;
	ret = 0;
out:
	sess_close(&s);
	ram_free(&m);
	return ret;
}

static int run_unmap(const char *sock, const char *bdf)
{
	const uint64_t ia = 0x100000, ib = 0x800000, len = MiB;
	const size_t oa = 0, ob = MiB;
	struct ram m = { .fd = -1 };
	uint64_t region, unmapped = 0;
	struct sess s = SESS_INIT;
	int r, ret = -1;

	if (ram_new(&m, 2 * MiB, "vm-broker-unmap") < 0)
		goto out;
	if (sess_start(&s, sock, "vm-broker-unmap", bdf) < 0)
		goto out;
	if (reg(&s, &m, &region) < 0 || map(&s, region, oa, ia, len) < 0 ||
	    map(&s, region, ob, ib, len) < 0)
		goto out;
	/* the DMA works while B is mapped ... */
	if (roundtrip(&s, &m, ia, oa, &m, ib + 0x2000, ob + 0x2000, XFER, 5) < 0)
		goto out;
	r = dmb_unmap(s.c, s.ctx, ib, len, &unmapped);
	if (r < 0) {
		bfail(s.c, r, "dmb_unmap 0x%" PRIx64 "+0x%" PRIx64, ib, len);
		goto out;
	}
	if (unmapped != len) {
		fail(0, "dmb_unmap 0x%" PRIx64 ": %" PRIu64 " bytes unmapped, want %" PRIu64, ib,
		     unmapped, len);
		goto out;
	}
	ok("dmb_unmap IOVA 0x%" PRIx64 ": %" PRIu64 " bytes", ib, unmapped);
	/* ... and the same DMA faults after the unmap (edu still holds the bytes) */
	if (expect_fault(&s, ib + 0x2000, &m, ob + 0x2000, XFER) < 0)
		goto out;
	/* A, not unmapped, still works */
	if (roundtrip(&s, &m, ia + 0x1000, oa + 0x1000, &m, ia + 0x20000, oa + 0x20000, XFER, 6) < 0)
		goto out;
	ret = 0;
out:
	sess_close(&s);
	ram_free(&m);
	return ret;
}

/* The child of run_kill: maps old_iova, proves it with a DMA, says 'R', waits to die. */
static void kill_child(const char *sock, const char *bdf, struct ram *m, uint64_t old_iova,
		       int wfd)
{
	struct sess s = SESS_INIT;
	uint64_t region;
	char c = 'F';

	prog_step = "[child]";
	if (sess_start(&s, sock, "vm-broker-victim", bdf) == 0 && reg(&s, m, &region) == 0 &&
	    map(&s, region, 0, old_iova, m->size) == 0 &&
	    roundtrip(&s, m, old_iova, 0, m, old_iova + 0x10000, 0x10000, XFER, 7) == 0)
		c = 'R';
	if (write(wfd, &c, 1) != 1)
		_exit(3);
	if (c != 'R')
		_exit(1);
	for (;;)
		pause(); /* until SIGKILL; the parent bounds this */
}

static int run_kill(const char *sock, const char *bdf)
{
	const uint64_t old_iova = 0x200000, new_iova = 0x2000000;
	struct ram m = { .fd = -1 }, m2 = { .fd = -1 };
	struct sess s = SESS_INIT;
	struct dmb_iova_info ii;
	struct dmb_stats stats;
	int pfd[2] = { -1, -1 }, status = 0, ret = -1, r;
	pid_t pid = -1, dpid;
	uint64_t region;
	long base_kb;
	char c = 0;

	/* The victim's guest memory is created here and shared with the child, so this
	 * process can still watch its bytes after the child is gone. */
	if (ram_new(&m, MiB, "vm-broker-victim") < 0)
		goto out;
	dpid = daemon_pid(sock);
	if (dpid <= 0)
		goto out;
	base_kb = vm_locked_kb(dpid);
	if (expect_locked(dpid, base_kb, 0, "before the first client") < 0)
		goto out;
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		fail(-errno, "pipe2");
		goto out;
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		fail(-errno, "fork");
		goto out;
	}
	if (pid == 0) {
		close(pfd[0]);
		kill_child(sock, bdf, &m, old_iova, pfd[1]);
		_exit(2);
	}
	close(pfd[1]);
	pfd[1] = -1;

	struct pollfd p = { .fd = pfd[0], .events = POLLIN };
	r = poll(&p, 1, CHILD_READY_MS);
	if (r <= 0 || read(pfd[0], &c, 1) != 1 || c != 'R') {
		fail(r < 0 ? -errno : 0, "the first client did not get ready (%s)",
		     r == 0 ? "timed out" : c == 'F' ? "it failed" : "it died");
		goto out;
	}
	if (expect_locked(dpid, base_kb, (long)(m.size >> 10), "first client mapped") < 0)
		goto out;
	if (kill(pid, SIGKILL) < 0 || waitpid(pid, &status, 0) != pid) {
		fail(-errno, "kill/wait pid %d", (int)pid);
		goto out;
	}
	pid = -1;
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
		fail(0, "the first client ended with status 0x%x, not by SIGKILL", status);
		goto out;
	}
	ok("first client (IOVA 0x%" PRIx64 " mapped, DMA proven) killed with SIGKILL", old_iova);

	/* A second client: new session, new context, the same device again. */
	if (sess_start(&s, sock, "vm-broker-survivor", bdf) < 0)
		goto out;
	r = dmb_stats(s.c, s.ctx, &stats);
	if (r < 0) {
		bfail(s.c, r, "dmb_stats");
		goto out;
	}
	if (get_ranges(&s, &ii, false) < 0)
		goto out;
	ok("new context: %" PRIu64 " mappings, %" PRIu64 " pinned bytes; kernel DMA mappings available %" PRIu32 "/%" PRIu32,
	   stats.mappings, stats.pinned_bytes, ii.mappings_available, ii.max_mappings);
	/* The device open above needed the first session's device closed: its context
	 * is gone, and the kernel unpinned its pages. */
	if (expect_locked(dpid, base_kb, 0, "first client killed") < 0)
		goto out;
	if (stats.mappings != 0) {
		fail(0, "the new context starts with %" PRIu64 " mappings", stats.mappings);
		goto out;
	}
	if (ii.max_mappings != 0 && ii.mappings_available != ii.max_mappings) {
		fail(0, "the kernel counts %" PRIu32 " DMA mappings in a fresh container",
		     ii.max_mappings - ii.mappings_available);
		goto out;
	}
	/* The dead client's IOVA: faults, and nothing lands in its memfd. */
	if (expect_fault(&s, old_iova, &m, 0, XFER) < 0)
		goto out;
	/* The daemon keeps serving: map the same IOVA (free now) and another, and move
	 * bytes through them; the dead client's memfd stays untouched. */
	if (ram_new(&m2, 2 * MiB, "vm-broker-survivor") < 0 || reg(&s, &m2, &region) < 0 ||
	    map(&s, region, 0, old_iova, MiB) < 0 || map(&s, region, MiB, new_iova, MiB) < 0)
		goto out;
	if (expect_locked(dpid, base_kb, (long)(m2.size >> 10), "second client mapped") < 0)
		goto out;
	memset(m.p, 0x3c, XFER);
	if (roundtrip(&s, &m2, new_iova, MiB, &m2, old_iova, 0, XFER, 8) < 0)
		goto out;
	for (size_t i = 0; i < XFER; i++)
		if (m.p[i] != 0x3c) {
			fail(0, "a DMA of the second client changed the dead client's memfd (+0x%zx)", i);
			goto out;
		}
	ok("daemon still serving: second client mapped and moved bytes; dead client's memory untouched");
	ret = 0;
out:
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	sess_close(&s);
	ram_free(&m2);
	ram_free(&m);
	return ret;
}

static bool in_ranges(const struct dmb_iova_info *ii, uint64_t first, uint64_t last)
{
	for (size_t i = 0; i < ii->n; i++)
		if (first >= ii->ranges[i].start && last <= ii->ranges[i].last)
			return true;
	return false;
}

static bool overlaps_ranges(const struct dmb_iova_info *ii, uint64_t first, uint64_t last)
{
	for (size_t i = 0; i < ii->n; i++)
		if (first <= ii->ranges[i].last && last >= ii->ranges[i].start)
			return true;
	return false;
}

/* A map that must be refused with DMB_OUT_OF_RANGE. */
static int expect_out_of_range(struct sess *s, uint64_t region, uint64_t iova, uint64_t len,
			       const char *what)
{
	struct dmb_map_entry me = {
		.region = region, .offset = 0, .iova = iova, .length = len,
		.prot = DMB_READ | DMB_WRITE,
	};
	const struct dmb_error *e;
	int r = dmb_map(s->c, s->ctx, &me);

	if (r == 0)
		return fail(0, "dmb_map at IOVA 0x%" PRIx64 " (%s) was accepted", iova, what);
	e = dmb_last_error(s->c);
	if (r != -ERANGE || e->code != DMB_OUT_OF_RANGE)
		return bfail(s->c, r, "dmb_map at IOVA 0x%" PRIx64 " (%s) refused, but not with out-of-range",
			     iova, what);
	ok("map [0x%" PRIx64 ", 0x%" PRIx64 "] (%s) refused: %s: \"%s\"", iova, iova + len - 1,
	   what, dmb_error_code_name(e->code), e->message);
	return 0;
}

static int run_range(const char *sock, const char *bdf)
{
	struct ram m = { .fd = -1 };
	struct dmb_iova_info ii, ii2;
	struct dmb_stats stats;
	uint64_t region, top = 0;
	struct sess s = SESS_INIT;
	int r, ret = -1;

	if (ram_new(&m, 2 * MiB, "vm-broker-range") < 0)
		goto out;
	if (sess_start(&s, sock, "vm-broker-range", bdf) < 0)
		goto out;
	if (get_ranges(&s, &ii, true) < 0)
		goto out;
	if (overlaps_ranges(&ii, MSI_START, MSI_LAST)) {
		fail(0, "the reported IOVA ranges include part of the MSI window [0x%llx, 0x%llx]",
		     MSI_START, MSI_LAST);
		goto out;
	}
	ok("the MSI window [0x%llx, 0x%llx] is outside every reported range", MSI_START, MSI_LAST);
	if (reg(&s, &m, &region) < 0)
		goto out;
	if (expect_out_of_range(&s, region, MSI_START, MiB, "inside the MSI window") < 0 ||
	    expect_out_of_range(&s, region, MSI_START - MiB, 2 * MiB, "straddling the MSI window start") < 0)
		goto out;
	for (size_t i = 0; i < ii.n; i++)
		if (ii.ranges[i].last > top)
			top = ii.ranges[i].last;
	if (top < UINT64_MAX - 2 * MiB) {
		if (expect_out_of_range(&s, region, top + 1, MiB, "past the top of the IOVA space") < 0)
			goto out;
	} else {
		ok("note: the ranges reach 0x%" PRIx64 ": no IOVA above them to try", top);
	}
	/* An IOVA inside the ranges is accepted, and the kernel's own count of DMA mappings
	 * moves by exactly that one map: none of the refused ones reached it. */
	if (!in_ranges(&ii, 0x100000, 0x100000 + 2 * MiB - 1)) {
		fail(0, "0x100000 is not inside the reported ranges");
		goto out;
	}
	if (map(&s, region, 0, 0x100000, 2 * MiB) < 0 || get_ranges(&s, &ii2, false) < 0)
		goto out;
	r = dmb_stats(s.c, s.ctx, &stats);
	if (r < 0) {
		bfail(s.c, r, "dmb_stats");
		goto out;
	}
	if (stats.mappings != 1) {
		fail(0, "the context holds %" PRIu64 " mappings after one accepted map", stats.mappings);
		goto out;
	}
	if (ii.max_mappings != 0) {
		if (ii2.mappings_available + 1 != ii.mappings_available) {
			fail(0, "kernel DMA mappings available went %" PRIu32 " -> %" PRIu32
			     " for one accepted map", ii.mappings_available, ii2.mappings_available);
			goto out;
		}
		ok("kernel DMA mappings available %" PRIu32 " -> %" PRIu32 " (max %" PRIu32 ")",
		   ii.mappings_available, ii2.mappings_available, ii2.max_mappings);
	}
	ret = 0;
out:
	sess_close(&s);
	ram_free(&m);
	return ret;
}

static int run_deny(const char *sock, const char *denied, const char *allowed)
{
	struct dmb_device_info di;
	const struct dmb_error *e;
	struct sess s = SESS_INIT;
	int fd = -1, r, ret = -1;

	if (sess_connect(&s, sock, "vm-broker-deny") < 0)
		goto out;
	r = dmb_device_open(s.c, s.ctx, denied, &fd, &di);
	if (r == 0) {
		fail(0, "dmb_device_open %s (not in the allow-list) succeeded, fd %d", denied, fd);
		if (fd >= 0)
			close(fd);
		goto out;
	}
	e = dmb_last_error(s.c);
	if (r != -EPERM || e->code != DMB_PERMISSION_DENIED) {
		bfail(s.c, r, "dmb_device_open %s refused, but not with permission-denied", denied);
		goto out;
	}
	ok("dmb_device_open %s refused: %s: \"%s\"", denied, dmb_error_code_name(e->code), e->message);
	/* The allow-list does let the listed device in, on the same session. */
	if (sess_open_edu(&s, allowed) < 0)
		goto out;
	ret = 0;
out:
	sess_close(&s);
	return ret;
}


/* ---- p2p ------------------------------------------------------------------------- */

struct evrec {
	uint32_t kind;
	uint64_t context, device;
	bool permanent;
	size_t n_ranges;
	struct dmb_range r0;
	int64_t at_ms;
	char msg[200];
};

struct evlog {
	size_t n;
	struct evrec ev[16];
};

static void ev_collect(const struct dmb_event *ev, void *opaque)
{
	struct evlog *l = opaque;

	if (l->n >= sizeof(l->ev) / sizeof(l->ev[0]))
		return;
	struct evrec *r = &l->ev[l->n++];
	memset(r, 0, sizeof(*r));
	r->kind = ev->kind;
	r->context = ev->context;
	r->device = ev->device;
	r->permanent = ev->permanent;
	r->n_ranges = ev->n_ranges;
	if (ev->n_ranges)
		r->r0 = ev->ranges[0];
	r->at_ms = mono_ms();
	snprintf(r->msg, sizeof(r->msg), "%s", ev->message ? ev->message : "");
}

static const char *ev_name(uint32_t kind)
{
	switch (kind) {
	case DMB_EV_MAPPINGS_REVOKED:
		return "MAPPINGS_REVOKED";
	case DMB_EV_MAPPINGS_RESTORED:
		return "MAPPINGS_RESTORED";
	case DMB_EV_CONTEXT_LOST:
		return "CONTEXT_LOST";
	case DMB_EV_DEVICE_STATE:
		return "DEVICE_STATE";
	default:
		return "?";
	}
}

struct p2p {
	struct sess a;          /* session; context 1 with edu A */
	uint64_t ctx_b;         /* context 2 with edu B */
	uint64_t dev_b;
	int fd_b;               /* our duplicate of B's device fd */
	struct edu eb;
	struct ram m;           /* A's RAM at P2P_RAM_IOVA */
	const char *bdf_b;
	int faults;             /* provoked so far (at most P2P_MAX_FAULTS) */
};

/* Monotonic ms of the last DMAR record in the kernel log, 0 if there is none. Kernel
 * log timestamps are the local clock, close enough to CLOCK_MONOTONIC here. */
static int64_t kmsg_last_dmar_ms(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	char rec[8192];
	int64_t last = 0;

	if (fd < 0)
		return 0;
	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);
		unsigned long long usec;
		char *msg;

		if (n < 0 && errno == EPIPE)
			continue;
		if (n <= 0)
			break;
		rec[n] = '\0';
		msg = strchr(rec, ';');
		if (msg && strstr(msg, "DMAR") && sscanf(rec, "%*u,%*u,%llu", &usec) == 1)
			last = (int64_t)(usec / 1000);
	}
	close(fd);
	return last;
}

/* Waits until the kernel's DMAR rate-limit window of the last DMAR line has ended
 * (a fixed window of DMAR_WINDOW_MS from its first line; waiting that long after
 * the last line is past it), so the next fault's lines are all printed. */
static void dmar_window_wait(void)
{
	int64_t quiet = kmsg_last_dmar_ms();

	if (quiet > 0 && quiet + DMAR_WINDOW_MS + 200 > mono_ms()) {
		int64_t wait = quiet + DMAR_WINDOW_MS + 200 - mono_ms();

		ok("waiting %" PRId64 " ms for the DMAR rate-limit window of the last fault to end", wait);
		usleep((useconds_t)wait * 1000);
	}
}


/*
 * The events of the call that just returned: libdmabroker queues the events that
 * arrive while a call waits for its reply, so with the socket idle now, whatever
 * dmb_dispatch delivers was sent before the reply.
 */
static int events_before_reply(struct p2p *t, struct evlog *l, const char *call)
{
	struct pollfd p = { .fd = dmb_fd(t->a.c), .events = POLLIN };
	int r = poll(&p, 1, 0);

	if (r != 0)
		return fail(r < 0 ? -errno : 0, "%s: the socket has more data right after the reply; "
			    "cannot tell which events came before it", call);
	memset(l, 0, sizeof(*l));
	r = dmb_dispatch(t->a.c, ev_collect, l);
	if (r < 0)
		return bfail(t->a.c, r, "dmb_dispatch after %s", call);
	return 0;
}

/* Waits up to wait_ms for an event of `kind` (dispatching whatever comes). */
static int wait_event(struct p2p *t, struct evlog *l, uint32_t kind, int wait_ms)
{
	int64_t deadline = mono_ms() + wait_ms;

	memset(l, 0, sizeof(*l));
	for (;;) {
		int r = dmb_dispatch(t->a.c, ev_collect, l);

		if (r < 0)
			return bfail(t->a.c, r, "dmb_dispatch");
		for (size_t i = 0; i < l->n; i++)
			if (l->ev[i].kind == kind)
				return (int)i;
		int left = (int)(deadline - mono_ms());
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = dmb_fd(t->a.c), .events = POLLIN };
		poll(&p, 1, left);
	}
}

/* ev must be `kind` for A's context, device B, B's whole BAR0 range at P2P_IOVA. */
static int check_event(const struct p2p *t, const struct evrec *ev, uint32_t kind, bool permanent)
{
	if (ev->kind != kind || ev->context != t->a.ctx || ev->device != t->dev_b ||
	    ev->permanent != permanent || ev->n_ranges != 1 || ev->r0.iova != P2P_IOVA ||
	    ev->r0.length != MiB)
		return fail(0, "event %s (context %" PRIu64 ", device %" PRIu64 ", %zu range(s), first [0x%" PRIx64 ", +0x%" PRIx64 "), permanent %d) is not %s%s for context %" PRIu64 ", device %" PRIu64 ", [0x%llx, +0x%llx)",
			    ev_name(ev->kind), ev->context, ev->device, ev->n_ranges, ev->r0.iova,
			    ev->r0.length, ev->permanent, permanent ? "permanent " : "",
			    ev_name(kind), t->a.ctx, t->dev_b, P2P_IOVA, MiB);
	ok("event %s%s: context %" PRIu64 ", device %" PRIu64 ", [0x%" PRIx64 ", +0x%" PRIx64 "): \"%s\"",
	   permanent ? "(permanent) " : "", ev_name(kind), ev->context, ev->device, ev->r0.iova,
	   ev->r0.length, ev->msg);
	return 0;
}

/* Exactly the listed kinds, in order, all about B's mapping in A's context. */
static int expect_events(const struct p2p *t, const struct evlog *l, const char *call,
			 uint32_t k1, uint32_t k2, bool permanent)
{
	size_t want = k2 ? 2 : 1;

	if (l->n != want) {
		fail(0, "%s: %zu event(s) came with the reply, want %zu (%s%s%s)", call, l->n, want,
		     ev_name(k1), k2 ? " then " : "", k2 ? ev_name(k2) : "");
		for (size_t i = 0; i < l->n; i++)
			printf("  event %zu: %s \"%s\"\n", i, ev_name(l->ev[i].kind), l->ev[i].msg);
		return -1;
	}
	if (check_event(t, &l->ev[0], k1, permanent) < 0)
		return -1;
	if (k2 && check_event(t, &l->ev[1], k2, permanent) < 0)
		return -1;
	ok("%s: %s%s%s queued before the reply", call, ev_name(k1), k2 ? " then " : "",
	   k2 ? ev_name(k2) : "");
	return 0;
}

/* A reads 4 bytes at P2P_IOVA (B's ID register) into its buffer, then writes them to
 * its RAM; returns the word that landed in RAM (P2P_SENTINEL if nothing did). */
static int p2p_read(struct p2p *t, uint32_t *word)
{
	volatile uint32_t *w = (volatile uint32_t *)(t->m.p + P2P_SLOT);
	int r;

	*w = P2P_SENTINEL;
	r = edu_dma_to_device(&t->a.e, P2P_IOVA + EDU_REG_ID, P2P_SLOT, 4, 0);
	if (r == 0)
		r = edu_dma_from_device(&t->a.e, P2P_SLOT, P2P_RAM_IOVA + P2P_SLOT, 4, 0);
	if (r < 0)
		return fail(r, "edu A DMA from IOVA 0x%llx", P2P_IOVA);
	*word = *w;
	return 0;
}

static int expect_p2p_id(struct p2p *t, const char *when)
{
	uint32_t word = 0;

	if (p2p_read(t, &word) < 0)
		return -1;
	if (word != EDU_ID_VALUE)
		return fail(0, "%s: A's DMA read of B's ID register through IOVA 0x%llx gave 0x%08" PRIx32 ", want 0x%08x",
			    when, P2P_IOVA, word, EDU_ID_VALUE);
	ok("%s: edu A read B's ID register through the P2P mapping at IOVA 0x%llx: 0x%08" PRIx32,
	   when, P2P_IOVA, word);
	return 0;
}

/* The same DMA must fault in the IOMMU: a DMAR line for P2P_IOVA from A, and no ID. */
static int expect_p2p_fault(struct p2p *t, const char *when)
{
	char line[512];
	uint32_t word = 0;
	int kfd, r;

	if (++t->faults > P2P_MAX_FAULTS)
		return fail(0, "%s: more than %d DMAR faults would be rate limited", when,
			    P2P_MAX_FAULTS);
	/* Each fault in a rate-limit window of its own: three faults in one window fit
	 * its budget only when nothing else took from it, and a slow (loaded, or
	 * single-vCPU) run has seen the third one's record line suppressed. */
	dmar_window_wait();
	kfd = kmsg_open();
	if (kfd < 0)
		return -1;
	r = p2p_read(t, &word);
	if (r == 0)
		r = kmsg_wait_fault(kfd, t->a.bdf, P2P_IOVA + EDU_REG_ID, line, sizeof(line));
	close(kfd);
	if (r == -ETIMEDOUT)
		return fail(0, "%s: no DMAR fault for IOVA 0x%llx from %s within %d ms (DMA read 0x%08" PRIx32 ")",
			    when, P2P_IOVA, t->a.bdf, FAULT_WAIT_MS, word);
	if (r < 0)
		return -1;
	ok("%s: kernel: %s", when, line);
	if (word == EDU_ID_VALUE)
		return fail(0, "%s: the DMA faulted but still read B's ID", when);
	ok("%s: A's DMA from IOVA 0x%llx faulted in the IOMMU (read 0x%08" PRIx32 ", not the ID)",
	   when, P2P_IOVA, word);
	return 0;
}

/* The IOMMU attributes this kernel path gives a peer BAR: iommufd maps the
 * dma-buf as MMIO, type1 maps the BAR's mmap like RAM (cacheable). */
static uint32_t want_p2p_attr(void)
{
	return strcmp(want_backend(), "iommufd") == 0 ? DMB_ATTR_MMIO : DMB_ATTR_CACHEABLE;
}

static const char *attr_str(uint32_t a)
{
	return a == DMB_ATTR_MMIO ? "mmio" : a == DMB_ATTR_CACHEABLE ? "cacheable" : "unspecified";
}

/* Writes (text) or removes (NULL) the drop-in of the daemon's configuration
 * (broker-init.sh runs it with --config=VM_CONF) and has the broker reload it. */
#define VM_CONF_D "/etc/dmabroker/vm-broker.conf.d"
static int policy_dropin(struct p2p *t, const char *text)
{
	struct dmb_reload_info ri;
	int r;

	if (text) {
		FILE *f;

		if (mkdir(VM_CONF_D, 0755) < 0 && errno != EEXIST)
			return fail(-errno, "mkdir %s", VM_CONF_D);
		f = fopen(VM_CONF_D "/50-p2p.conf", "we");
		if (!f)
			return fail(-errno, "fopen %s/50-p2p.conf", VM_CONF_D);
		fputs(text, f);
		if (fclose(f) != 0)
			return fail(-errno, "write %s/50-p2p.conf", VM_CONF_D);
	} else if (unlink(VM_CONF_D "/50-p2p.conf") < 0) {
		return fail(-errno, "unlink %s/50-p2p.conf", VM_CONF_D);
	}
	r = dmb_reload_policy(t->a.c, &ri);
	if (r < 0)
		return bfail(t->a.c, r, "dmb_reload_policy");
	ok("policy reloaded %s the drop-in %s/50-p2p.conf", text ? "with" : "without", VM_CONF_D);
	return 0;
}

/* type1 maps a peer BAR with cacheable attributes: with [p2p] type1 = refuse (a
 * drop-in and a reload), MapPeer is refused with the sentence and nothing reaches
 * the IOMMU (A's DMA at the IOVA faults); back to the default after. */
static int expect_policy_refuses(struct p2p *t)
{
	const struct dmb_error *err;
	uint32_t attr = 0;
	int r;

	if (policy_dropin(t, "[p2p]\ntype1 = refuse\n") < 0)
		return -1;
	r = dmb_map_peer_attr(t->a.c, t->a.ctx, t->dev_b, NULL, 0, 0, P2P_IOVA, MiB,
			      DMB_READ | DMB_WRITE, &attr);
	err = dmb_last_error(t->a.c);
	if (r >= 0)
		return fail(0, "step 0: MapPeer with [p2p] type1 = refuse succeeded (attributes %s)",
			    attr_str(attr));
	if (err->code != DMB_PERMISSION_DENIED || !strstr(err->message, "[p2p] type1"))
		return fail(r, "step 0: MapPeer with [p2p] type1 = refuse: code %d, '%s'; want "
			    "PERMISSION_DENIED naming [p2p] type1", err->code, err->message);
	ok("step 0: MapPeer refused with [p2p] type1 = refuse: %s", err->message);
	if (expect_p2p_fault(t, "step 0 (refused by policy)") < 0)
		return -1;
	return policy_dropin(t, NULL);
}

/* The P2P mapping as dmb_list_mappings of A's context shows it (found: false if
 * it is not listed). */
static int p2p_listed(struct p2p *t, bool *found, struct dmb_mapping_info *out)
{
	struct dmb_mapping_info mi[16];
	size_t n = 0;
	bool more = false;
	uint64_t next = 0;
	int r = dmb_list_mappings(t->a.c, t->a.ctx, 0, mi, 16, &n, &more, &next);

	if (r < 0)
		return bfail(t->a.c, r, "dmb_list_mappings");
	*found = false;
	for (size_t i = 0; i < n; i++)
		if (mi[i].iova == P2P_IOVA) {
			*found = true;
			*out = mi[i];
		}
	return 0;
}

static int expect_listed(struct p2p *t, bool revoked)
{
	struct dmb_mapping_info mi;
	bool found;

	if (p2p_listed(t, &found, &mi) < 0)
		return -1;
	if (found && mi.attr != want_p2p_attr())
		return fail(0, "dmb_list_mappings: IOVA 0x%llx has attributes %s, want %s (%s backend)",
			    P2P_IOVA, attr_str(mi.attr), attr_str(want_p2p_attr()), want_backend());
	if (!found || !mi.mmio || mi.peer_device != t->dev_b || mi.bar != 0 || mi.length != MiB ||
	    mi.revoked != revoked)
		return fail(0, "dmb_list_mappings: IOVA 0x%llx %s (mmio %d, peer %" PRIu64 ", BAR %u, length 0x%" PRIx64 ", revoked %d), want an MMIO mapping of BAR0 of device %" PRIu64 ", revoked %d",
			    P2P_IOVA, found ? "listed" : "not listed", found && mi.mmio,
			    found ? mi.peer_device : 0, found ? mi.bar : 0, found ? mi.length : 0,
			    found && mi.revoked, t->dev_b, revoked);
	ok("dmb_list_mappings: IOVA 0x%llx is an MMIO mapping of BAR0 of device %" PRIu64 ", %s",
	   P2P_IOVA, t->dev_b, revoked ? "revoked" : "live");
	return 0;
}

static int set_command(struct p2p *t, uint16_t set, uint16_t clear, const char *call,
		       uint32_t k1, uint32_t k2)
{
	struct dmb_device_state st;
	struct evlog l;
	int64_t t0 = mono_ms();
	int r = dmb_device_set_command(t->a.c, t->dev_b, set, clear, &st);

	if (r < 0)
		return bfail(t->a.c, r, "%s", call);
	ok("%s: %" PRId64 " ms; command 0x%04x, importers %" PRIu32 ", revoked %" PRIu32 ", revocations %" PRIu64 ", restorations %" PRIu64,
	   call, mono_ms() - t0, st.command, st.importers, st.revoked, st.revocations, st.restorations);
	if (st.importers != 1 || st.revoked != (k1 == DMB_EV_MAPPINGS_REVOKED && !k2 ? 1u : 0u) ||
	    st.memory != !!(set & DMB_PCI_MEMORY))
		return fail(0, "%s: the reply says memory %d, %" PRIu32 " importer(s), %" PRIu32 " revoked",
			    call, st.memory, st.importers, st.revoked);
	if (events_before_reply(t, &l, call) < 0 || expect_events(t, &l, call, k1, k2, false) < 0)
		return -1;
	return 0;
}

/* Another process (a forked child) writes B's command register through sysfs
 * (/sys/bus/pci/devices/BDF/config), as an operator's setpci would: neither the broker
 * nor any of its device fds is involved. Returns 0 when the child wrote it. */
static int sysfs_update_command(const char *bdf, uint16_t set, uint16_t clear)
{
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char path[128];
		uint16_t cmd;
		int fd;

		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/config", bdf);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0 || pread(fd, &cmd, 2, 4) != 2)
			_exit(1);
		cmd = (uint16_t)((cmd | set) & ~clear);
		_exit(pwrite(fd, &cmd, 2, 4) == 2 ? 0 : 2);
	}
	int st;

	if (waitpid(pid, &st, 0) < 0)
		return -errno;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

/* Writes B's command register behind the broker's back -- through sysfs from another
 * process when via_sysfs, else through our own device fd -- and waits for the watcher's
 * event (its latency is printed, never judged: timing is the bench's business). */
static int behind_back(struct p2p *t, uint16_t set, uint16_t clear, uint32_t kind,
		       int poll_ms, bool via_sysfs)
{
	struct evlog l;
	uint16_t cmd = 0;
	int64_t t0;
	int i, r;

	/* Nothing may be pending before the write. */
	memset(&l, 0, sizeof(l));
	if (dmb_dispatch(t->a.c, ev_collect, &l) < 0 || l.n)
		return fail(0, "%zu unexpected event(s) pending before the write", l.n);
	r = via_sysfs ? sysfs_update_command(t->bdf_b, set, clear) : edu_update_command(&t->eb, set, clear);
	t0 = mono_ms();
	if (r == 0)
		r = edu_get_command(&t->eb, &cmd);
	if (r < 0)
		return fail(r, "write of B's command register %s",
			    via_sysfs ? "through sysfs by another process" : "through the client's device fd");
	ok("B's command register written %s: 0x%04x",
	   via_sysfs ? "through sysfs by another process" : "through the client's own device fd", cmd);
	i = wait_event(t, &l, kind, P2P_WATCH_WAIT_MS);
	if (i == -ETIMEDOUT)
		return fail(0, "no %s within %d ms of the write (poll_interval_ms %d)",
			    ev_name(kind), P2P_WATCH_WAIT_MS, poll_ms);
	if (i < 0)
		return -1;
	int64_t lat = l.ev[i].at_ms - t0;
	if (check_event(t, &l.ev[i], kind, false) < 0)
		return -1;
	if (l.n != 1)
		return fail(0, "%zu events came, want only %s", l.n, ev_name(kind));
	ok("the watcher caught it: %s %" PRId64 " ms after the write (poll_interval_ms %d)",
	   ev_name(kind), lat, poll_ms);
	return 0;
}

static int print_device(struct p2p *t)
{
	struct dmb_device_listing *dl = NULL;
	size_t n = 0;
	int r = dmb_list_devices(t->a.c, false, &dl, &n);

	if (r < 0)
		return bfail(t->a.c, r, "dmb_list_devices");
	for (size_t i = 0; i < n; i++) {
		if (dl[i].device != t->dev_b)
			continue;
		ok("dmb_list_devices: %s (device %" PRIu64 ", context %" PRIu64 "): command 0x%04x, %zu importer(s), revocations %" PRIu64 ", restorations %" PRIu64,
		   dl[i].bdf, dl[i].device, dl[i].context, dl[i].state.command, dl[i].n_importers,
		   dl[i].state.revocations, dl[i].state.restorations);
		for (size_t k = 0; k < dl[i].n_importers; k++)
			ok("  importer: context %" PRIu64 ", IOVA [0x%" PRIx64 ", +0x%" PRIx64 "), BAR %u +0x%" PRIx64 "%s",
			   dl[i].importers[k].context, dl[i].importers[k].iova,
			   dl[i].importers[k].length, dl[i].importers[k].bar,
			   dl[i].importers[k].offset, dl[i].importers[k].revoked ? ", revoked" : "");
	}
	free(dl);
	return 0;
}

static int run_p2p(const char *sock, const char *bdf_a, const char *bdf_b, int poll_ms)
{
	struct p2p t = { .a = SESS_INIT, .fd_b = -1, .eb = { .device_fd = -1 },
			 .m = { .fd = -1 }, .bdf_b = bdf_b };
	struct dmb_device_info di;
	struct dmb_device_state st;
	struct dmb_mapping_info mi;
	struct evlog l;
	uint64_t region;
	uint32_t id = 0;
	bool found;
	int64_t t0;
	int r, ret = -1;

	if (ram_new(&t.m, MiB, "vm-broker-p2p") < 0)
		goto out;
	dmar_window_wait();
	if (sess_start(&t.a, sock, "vm-broker-p2p", bdf_a) < 0)
		goto out;
	if (reg(&t.a, &t.m, &region) < 0 || map(&t.a, region, 0, P2P_RAM_IOVA, MiB) < 0)
		goto out;

	/* B in a context of its own (its own type1 container), same session. */
	r = dmb_context_create(t.a.c, "vm-broker-p2p-b", &t.ctx_b);
	if (r < 0) {
		bfail(t.a.c, r, "dmb_context_create for B");
		goto out;
	}
	r = dmb_device_open(t.a.c, t.ctx_b, bdf_b, &t.fd_b, &di);
	if (r < 0) {
		t.fd_b = -1;
		bfail(t.a.c, r, "dmb_device_open %s", bdf_b);
		goto out;
	}
	t.dev_b = di.device;
	r = edu_open(&t.eb, t.fd_b);
	if (r < 0) {
		fail(r, "edu_open on B's device fd");
		goto out;
	}
	r = dmb_device_set_command(t.a.c, t.dev_b, DMB_PCI_MEMORY, 0, &st);
	if (r < 0) {
		bfail(t.a.c, r, "dmb_device_set_command B +memory");
		goto out;
	}
	r = edu_read_id(&t.eb, &id);
	if (r < 0 || id != EDU_ID_VALUE) {
		fail(r, "B's ID register reads 0x%08" PRIx32 " through its own BAR mmap", id);
		goto out;
	}
	ok("context %" PRIu64 ": device %s opened (id %" PRIu64 ", group %s), command 0x%04x, ID 0x%08" PRIx32,
	   t.ctx_b, bdf_b, t.dev_b, di.group, st.command, id);

	/* 0. type1 only: the [p2p] type1 policy can refuse such a mapping. */
	if (want_p2p_attr() == DMB_ATTR_CACHEABLE && expect_policy_refuses(&t) < 0)
		goto out;

	/* 1. A reads B's ID register through a broker P2P mapping of B's BAR0. */
	uint32_t attr = 0;
	r = dmb_map_peer_attr(t.a.c, t.a.ctx, t.dev_b, NULL, 0, 0, P2P_IOVA, MiB,
			      DMB_READ | DMB_WRITE, &attr);
	if (r < 0) {
		bfail(t.a.c, r, "dmb_map_peer BAR0 of %s at IOVA 0x%llx", bdf_b, P2P_IOVA);
		goto out;
	}
	ok("dmb_map_peer: BAR0 of %s (device %" PRIu64 ", context %" PRIu64 ") at IOVA [0x%llx, 0x%llx) of context %" PRIu64 ", attributes %s",
	   bdf_b, t.dev_b, t.ctx_b, P2P_IOVA, P2P_IOVA + MiB, t.a.ctx, attr_str(attr));
	if (attr != want_p2p_attr()) {
		fail(0, "the MapPeer reply says the BAR is mapped %s; the %s backend maps it %s",
		     attr_str(attr), want_backend(), attr_str(want_p2p_attr()));
		goto out;
	}
	if (expect_listed(&t, false) < 0 || print_device(&t) < 0 ||
	    expect_p2p_id(&t, "step 1 (mapped)") < 0)
		goto out;

	/* 2. Memory decoding off at the client's request: revoked before the reply. */
	if (set_command(&t, 0, DMB_PCI_MEMORY, "step 2: dmb_device_set_command(B, -memory)",
			DMB_EV_MAPPINGS_REVOKED, 0) < 0 ||
	    expect_listed(&t, true) < 0 || expect_p2p_fault(&t, "step 2 (memory off)") < 0)
		goto out;

	/* 3. On again: restored at the same IOVA. */
	if (set_command(&t, DMB_PCI_MEMORY, 0, "step 3: dmb_device_set_command(B, +memory)",
			DMB_EV_MAPPINGS_RESTORED, 0) < 0 ||
	    expect_listed(&t, false) < 0 || expect_p2p_id(&t, "step 3 (memory on)") < 0)
		goto out;

	/* 4. A mediated reset: revoked, reset, restored, all before the reply. */
	t0 = mono_ms();
	r = dmb_device_reset(t.a.c, t.dev_b, &st);
	if (r < 0) {
		bfail(t.a.c, r, "step 4: dmb_device_reset(B)");
		goto out;
	}
	ok("step 4: dmb_device_reset(B): %" PRId64 " ms; command 0x%04x, importers %" PRIu32 ", revoked %" PRIu32 ", revocations %" PRIu64 ", restorations %" PRIu64,
	   mono_ms() - t0, st.command, st.importers, st.revoked, st.revocations, st.restorations);
	if (st.revoked != 0 || !st.memory) {
		fail(0, "step 4: after the reset memory %d, %" PRIu32 " revoked", st.memory, st.revoked);
		goto out;
	}
	if (events_before_reply(&t, &l, "step 4: dmb_device_reset(B)") < 0 ||
	    expect_events(&t, &l, "step 4: dmb_device_reset(B)", DMB_EV_MAPPINGS_REVOKED,
			  DMB_EV_MAPPINGS_RESTORED, false) < 0 ||
	    expect_listed(&t, false) < 0 || expect_p2p_id(&t, "step 4 (after the reset)") < 0)
		goto out;
	r = edu_read_id(&t.eb, &id);
	if (r < 0 || id != EDU_ID_VALUE) {
		fail(r, "B's ID through its own BAR mmap after the reset: 0x%08" PRIx32, id);
		goto out;
	}

	/* 5. Behind the broker's back: the client clears the bit through its own fd. */
	if (behind_back(&t, 0, EDU_CMD_MEMORY, DMB_EV_MAPPINGS_REVOKED, poll_ms, true) < 0 ||
	    expect_listed(&t, true) < 0 || expect_p2p_fault(&t, "step 5 (memory off behind the broker's back)") < 0)
		goto out;
	/* ... and sets it again the same way: restored by the watcher. */
	if (behind_back(&t, EDU_CMD_MEMORY, 0, DMB_EV_MAPPINGS_RESTORED, poll_ms, false) < 0 ||
	    expect_listed(&t, false) < 0 || expect_p2p_id(&t, "step 5 (memory back on)") < 0)
		goto out;
	if (print_device(&t) < 0)
		goto out;

	/* 6. Closing B revokes for good. */
	edu_close(&t.eb);
	close(t.fd_b);
	t.fd_b = -1;
	r = dmb_device_close(t.a.c, t.dev_b);
	if (r < 0) {
		bfail(t.a.c, r, "step 6: dmb_device_close(B)");
		goto out;
	}
	ok("step 6: dmb_device_close(B)");
	if (events_before_reply(&t, &l, "step 6: dmb_device_close(B)") < 0 ||
	    expect_events(&t, &l, "step 6: dmb_device_close(B)", DMB_EV_MAPPINGS_REVOKED, 0,
			  true) < 0 ||
	    expect_p2p_fault(&t, "step 6 (B closed)") < 0)
		goto out;
	if (p2p_listed(&t, &found, &mi) < 0)
		goto out;
	if (found) {
		fail(0, "step 6: IOVA 0x%llx is still listed after B was closed (revoked %d)",
		     P2P_IOVA, mi.revoked);
		goto out;
	}
	ok("step 6: IOVA 0x%llx is gone from dmb_list_mappings", P2P_IOVA);
	/* The RAM mapping beside it was never touched. */
	if (roundtrip(&t.a, &t.m, P2P_RAM_IOVA + 0x1000, 0x1000, &t.m, P2P_RAM_IOVA + 0x20000,
		      0x20000, XFER, 9) < 0)
		goto out;
	ret = 0;
out:
	edu_close(&t.eb);
	if (t.fd_b >= 0)
		close(t.fd_b);
	sess_close(&t.a);
	ram_free(&t.m);
	return ret;
}

/* ---- host handoff without LUO --------------------------------------------------- */

static int handoff_normal(struct sess *s, const char *when)
{
	struct dmb_handoff_info h;
	int r = dmb_handoff_status(s->c, &h);

	if (r < 0)
		return bfail(s->c, r, "dmb_handoff_status %s", when);
	if (strcmp(h.state, "normal") != 0 || h.available)
		return fail(0, "handoff status %s: state '%s', available %d (want normal, 0): %s",
			    when, h.state, h.available, h.message);
	if (!strstr(h.message, "Live Update Orchestrator"))
		return fail(0, "handoff status %s does not say why it is unavailable: '%s'", when,
			    h.message);
	ok("handoff status %s: normal, unavailable (preserver '%s'): %s", when, h.preserver,
	   h.message);
	return 0;
}

/* The guest's 6.1 kernel has no /dev/liveupdate: prepare (forced or not) is refused
 * with the sentence that says what is missing, and nothing changes -- the mapping still
 * moves the right bytes by edu DMA, mutations are still accepted. */
static int run_handoff(const char *sock, const char *bdf)
{
	const uint64_t ia = 0x100000, ib = 0x800000, len = MiB;
	const size_t oa = 0, ob = MiB;
	struct ram m = { .fd = -1 };
	struct sess s = SESS_INIT;
	uint64_t region, unmapped = 0;
	int r, ret = -1;

	if (access("/dev/liveupdate", F_OK) == 0) {
		fail(0, "this guest kernel has /dev/liveupdate: the check needs one without LUO");
		goto out;
	}
	if (ram_new(&m, 2 * MiB, "vm-broker-handoff") < 0)
		goto out;
	if (sess_start(&s, sock, "vm-broker-handoff", bdf) < 0)
		goto out;
	if (reg(&s, &m, &region) < 0 || map(&s, region, oa, ia, len) < 0)
		goto out;
	if (roundtrip(&s, &m, ia, oa, &m, ia + 0x40000, oa + 0x40000, XFER, 21) < 0)
		goto out;
	if (handoff_normal(&s, "before prepare") < 0)
		goto out;

	for (int force = 0; force <= 1; force++) {
		struct dmb_handoff_info h;
		const struct dmb_error *e;

		r = dmb_handoff_prepare(s.c, force, &h);
		e = dmb_last_error(s.c);
		if (r >= 0) {
			fail(0, "dmb_handoff_prepare(force=%d) succeeded on a kernel without LUO",
			     force);
			goto out;
		}
		if (e->code != DMB_FAILED_PRECONDITION || !strstr(e->message, "Live Update Orchestrator") ||
		    !strstr(e->message, "6.19") || !strstr(e->message, "liveupdate=on") ||
		    !strstr(e->message, "nothing was changed")) {
			bfail(s.c, r, "dmb_handoff_prepare(force=%d) refused, but not with the sentence "
				      "that says LUO is missing", force);
			goto out;
		}
		ok("dmb_handoff_prepare(force=%d) refused: %s [%s]", force, e->message,
		   dmb_error_code_name(e->code));
	}

	/* nothing changed: status, the mapping's bytes, mutations */
	if (handoff_normal(&s, "after the refused prepare") < 0)
		goto out;
	if (roundtrip(&s, &m, ia + 0x2000, oa + 0x2000, &m, ia + 0x80000, oa + 0x80000, XFER, 22) < 0)
		goto out;
	if (map(&s, region, ob, ib, len) < 0)
		goto out;
	if (roundtrip(&s, &m, ia + 0x3000, oa + 0x3000, &m, ib + 0x1000, ob + 0x1000, XFER, 23) < 0)
		goto out;
	r = dmb_unmap(s.c, s.ctx, ib, len, &unmapped);
	if (r < 0 || unmapped != len) {
		bfail(s.c, r, "dmb_unmap 0x%" PRIx64 " after the refused prepare (%" PRIu64 " bytes)",
		      ib, unmapped);
		goto out;
	}
	ok("mutations accepted after the refused prepare (map, DMA, unmap)");
	ret = 0;
out:
	sess_close(&s);
	ram_free(&m);
	return ret;
}

/* ---- no-IOMMU ---------------------------------------------------------------------- */

#define NOIOMMU_IOVA 0x100000ull
#define NOIOMMU_PAGES 16u
#define PG 4096ull

/* The physical address behind NOIOMMU_IOVA + off, from the ranges PhysRanges gave. */
static uint64_t phys_at(const struct dmb_phys_range *r, size_t n, uint64_t off)
{
	uint64_t iova = NOIOMMU_IOVA + off;
	for (size_t i = 0; i < n; i++)
		if (iova >= r[i].iova && iova - r[i].iova < r[i].length)
			return r[i].phys + (iova - r[i].iova);
	return UINT64_MAX;
}

static int expect_code(struct dmb_client *c, int r, int code, const char *what)
{
	if (r >= 0)
		return fail(0, "%s succeeded; want %s", what, dmb_error_code_name(code));
	if (dmb_last_error(c)->code != code)
		return bfail(c, r, "%s: want %s", what, dmb_error_code_name(code));
	ok("%s refused: %s: %s", what, dmb_error_code_name(code), dmb_last_error(c)->message);
	return 0;
}

static int run_noiommu(const char *sock, const char *bdf)
{
	const size_t len = NOIOMMU_PAGES * PG;
	struct dmb_phys_range pr[NOIOMMU_PAGES + 1];
	struct ram m = { .fd = -1 };
	struct sess s = SESS_INIT;
	struct dmb_device_info di;
	uint64_t region, normal, next, unmapped = 0;
	size_t n = 0;
	bool more = false;
	int fd = -1, r, ret = -1;

	pid_t dpid = daemon_pid(sock);
	if (dpid <= 0)
		goto out;
	long base = vm_locked_kb(dpid);
	if (base < 0) {
		fail(0, "cannot read %s of dmabrokerd", pin_field());
		goto out;
	}
	if (sess_connect(&s, sock, "vm-noiommu") < 0)
		goto out;
	normal = s.ctx;
	/* A normal context: the device has no IOMMU, and the broker says so (not that it
	 * has no cdev). */
	r = dmb_device_open(s.c, normal, bdf, &fd, &di);
	if (expect_code(s.c, r, DMB_FAILED_PRECONDITION, "opening the no-IOMMU device in a normal context") < 0)
		goto out;
	if (!strstr(dmb_last_error(s.c)->message, "has no IOMMU") ||
	    strstr(dmb_last_error(s.c)->message, "no VFIO device cdev")) {
		fail(0, "the refusal does not say the device has no IOMMU");
		goto out;
	}
	r = dmb_context_create_flags(s.c, "vm-noiommu", DMB_CONTEXT_NOIOMMU, &s.ctx, NULL);
	if (r < 0) {
		bfail(s.c, r, "dmb_context_create_flags NOIOMMU");
		goto out;
	}
	if (sess_open_edu(&s, bdf) < 0)
		goto out;
	if (strncmp(s.dev.group, "noiommu-vfio", 12) != 0) {
		fail(0, "the device's cdev is %s, not noiommu-vfioN", s.dev.group);
		goto out;
	}
	struct dmb_context_info *ci = NULL;
	size_t nc = 0;
	bool marked = false;
	r = dmb_list_contexts(s.c, false, &ci, &nc);
	for (size_t i = 0; r == 0 && i < nc; i++)
		marked |= ci[i].context == s.ctx && ci[i].noiommu;
	free(ci);
	struct dmb_stats st;
	if (r == 0)
		r = dmb_stats(s.c, 0, &st);
	if (r < 0 || !marked || st.noiommu_contexts != 1) {
		fail(r, "the context is not listed and counted as a no-IOMMU one");
		goto out;
	}
	ok("context %" PRIu64 " listed and counted as a no-IOMMU context", s.ctx);

	if (ram_new(&m, len, "vm-noiommu") < 0 || reg(&s, &m, &region) < 0 ||
	    map(&s, region, 0, NOIOMMU_IOVA, len) < 0)
		goto out;
	if (expect_locked(dpid, base, (long)(len / 1024), "after the map") < 0)
		goto out;
	r = dmb_phys_ranges(s.c, s.ctx, NOIOMMU_IOVA, len, pr, NOIOMMU_PAGES + 1, &n, &more, &next);
	if (r < 0) {
		bfail(s.c, r, "dmb_phys_ranges");
		goto out;
	}
	uint64_t at = NOIOMMU_IOVA;
	size_t widest = 0;
	for (size_t i = 0; i < n; i++) {
		ok("IOVA [0x%" PRIx64 ", +0x%" PRIx64 ") is physical 0x%" PRIx64, pr[i].iova,
		   pr[i].length, pr[i].phys);
		if (pr[i].iova != at || pr[i].length == 0 || pr[i].phys == 0) {
			fail(0, "range %zu does not continue the IOVA range", i);
			goto out;
		}
		if (pr[i].phys + pr[i].length > EDU_DMA_MASK_LIMIT) {
			fail(0, "physical 0x%" PRIx64 " is past edu's DMA mask (boot with mem=)",
			     pr[i].phys);
			goto out;
		}
		if (pr[i].length > pr[widest].length)
			widest = i;
		at += pr[i].length;
	}
	if (more || at != NOIOMMU_IOVA + len) {
		fail(0, "the ranges cover up to 0x%" PRIx64 " (more %d), not the mapping", at, more);
		goto out;
	}
	/* edu at the physical addresses: every page to another, both ways. */
	for (unsigned i = 0; i < NOIOMMU_PAGES; i++) {
		unsigned j = (i + 5) % NOIOMMU_PAGES;
		if (roundtrip(&s, &m, phys_at(pr, n, i * PG), i * PG, &m, phys_at(pr, n, j * PG),
			      j * PG, XFER, 40 + i) < 0)
			goto out;
	}
	/* across a page boundary, inside a physically contiguous range */
	if (pr[widest].length >= 2 * PG) {
		uint64_t off = pr[widest].iova - NOIOMMU_IOVA + PG - 2000;
		uint64_t dst = (off + 4 * PG) % len & ~(PG - 1);
		if (roundtrip(&s, &m, pr[widest].phys + PG - 2000, off, &m, phys_at(pr, n, dst), dst,
			      XFER, 77) < 0)
			goto out;
	} else {
		ok("no two physically contiguous pages in this mapping (%zu ranges)", n);
	}
	/* bad ranges */
	r = dmb_phys_ranges(s.c, s.ctx, NOIOMMU_IOVA + len, PG, pr, 1, &n, &more, NULL);
	if (expect_code(s.c, r, DMB_NOT_FOUND, "PhysRanges of an unmapped IOVA") < 0)
		goto out;
	r = dmb_phys_ranges(s.c, s.ctx, NOIOMMU_IOVA, len + PG, pr, 1, &n, &more, NULL);
	if (expect_code(s.c, r, DMB_NOT_FOUND, "PhysRanges past the mapping") < 0)
		goto out;
	r = dmb_phys_ranges(s.c, normal, NOIOMMU_IOVA, PG, pr, 1, &n, &more, NULL);
	if (expect_code(s.c, r, DMB_FAILED_PRECONDITION, "PhysRanges of a normal context") < 0)
		goto out;
	/* the unmap unpins */
	r = dmb_unmap(s.c, s.ctx, NOIOMMU_IOVA, len, &unmapped);
	if (r < 0 || unmapped != len) {
		bfail(s.c, r < 0 ? r : -EIO, "dmb_unmap (unmapped %" PRIu64 ")", unmapped);
		goto out;
	}
	if (expect_locked(dpid, base, 0, "after the unmap") < 0)
		goto out;
	r = dmb_phys_ranges(s.c, s.ctx, NOIOMMU_IOVA, PG, pr, 1, &n, &more, NULL);
	if (expect_code(s.c, r, DMB_NOT_FOUND, "PhysRanges after the unmap") < 0)
		goto out;
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	sess_close(&s);
	ram_free(&m);
	return ret;
}

/*
 * Granular mappings (confidential guests): 64 granules of 4 KiB at GRAN_IOVA, made by
 * the broker as one kernel area each. Bytes move through them; discarding granules
 * 3-4 and 40 unpins their pages (where the backend charges them) and removes them from
 * the IOMMU: edu DMA into granule 3 faults (DMAR line) and moves nothing while the
 * granules beside it still move bytes; populating them again pins them again and
 * bytes move through them again. The map reply's page size is 4 KiB (a memfd), the
 * listing shows the granule and the discarded count.
 */
#define GRAN_IOVA 0x2000000ull
#define GRAN_N 64u

static int gran_listed(struct sess *s, uint64_t want_discarded)
{
	struct dmb_mapping_info mi;
	size_t n = 0;
	bool more = false;
	int r = dmb_list_mappings(s->c, s->ctx, GRAN_IOVA, &mi, 1, &n, &more, NULL);

	if (r < 0)
		return bfail(s->c, r, "dmb_list_mappings");
	if (n != 1 || mi.iova != GRAN_IOVA || mi.granule != 4096 || mi.page_size != 4096 ||
	    mi.discarded != want_discarded)
		return fail(0, "listed: %zu mapping(s), iova 0x%" PRIx64 ", granule %" PRIu64
			    ", page size %" PRIu64 ", %" PRIu64 " discarded; want one at 0x%llx, "
			    "granule 4096, page 4096, %" PRIu64 " discarded", n, mi.iova, mi.granule,
			    mi.page_size, mi.discarded, GRAN_IOVA, want_discarded);
	ok("listed: granule %" PRIu64 ", page size %" PRIu64 ", %" PRIu64 " of %u granules discarded",
	   mi.granule, mi.page_size, mi.discarded, GRAN_N);
	return 0;
}

static int run_granular(const char *sock, const char *bdf)
{
	const uint64_t G = 4096, iova = GRAN_IOVA;
	const struct dmb_range conv[] = { { iova + 3 * G, 2 * G }, { iova + 40 * G, G } };
	struct dmb_convert_info ci;
	struct ram m = { .fd = -1 };
	struct sess s = SESS_INIT;
	uint64_t region, ps = 0, unmapped = 0;
	pid_t dpid;
	long base;
	int r, ret = -1;

	dpid = daemon_pid(sock);
	if (dpid <= 0)
		goto out;
	if (ram_new(&m, GRAN_N * G, "vm-broker-granular") < 0)
		goto out;
	if (sess_start(&s, sock, "vm-broker-granular", bdf) < 0 || reg(&s, &m, &region) < 0)
		goto out;
	base = vm_locked_kb(dpid);
	if (base < 0) {
		fail(0, "cannot read %s of dmabrokerd", pin_field());
		goto out;
	}
	struct dmb_map_entry me = { region, 0, iova, GRAN_N * G, DMB_READ | DMB_WRITE };
	r = dmb_map_granular(s.c, s.ctx, &me, DMB_GRANULE_4K, &ps);
	if (r < 0) {
		bfail(s.c, r, "dmb_map_granular of %u granules at 0x%" PRIx64, GRAN_N, iova);
		goto out;
	}
	if (ps != G) {
		fail(0, "the map reply's page size is %" PRIu64 ", want 4096 (memfd)", ps);
		goto out;
	}
	ok("granular mapping: %u granules of 4 KiB at IOVA 0x%" PRIx64 ", page size %" PRIu64,
	   GRAN_N, iova, ps);
	if (expect_locked(dpid, base, GRAN_N * 4, "granular map") < 0 || gran_listed(&s, 0) < 0)
		goto out;
	/* granule 2 -> 3, 4 -> 5 and 40 -> 41: each one used below, working */
	if (roundtrip(&s, &m, iova + 2 * G, 2 * G, &m, iova + 3 * G + 0x80, 3 * G + 0x80, 1024, 21) < 0 ||
	    roundtrip(&s, &m, iova + 4 * G, 4 * G, &m, iova + 5 * G, 5 * G, 1024, 22) < 0 ||
	    roundtrip(&s, &m, iova + 40 * G, 40 * G, &m, iova + 41 * G, 41 * G, 1024, 23) < 0)
		goto out;

	r = dmb_discard(s.c, s.ctx, conv, 2, &ci);
	if (r < 0) {
		bfail(s.c, r, "dmb_discard granules 3-4 and 40");
		goto out;
	}
	if (ci.granules != 3 || ci.unchanged != 0) {
		fail(0, "discard changed %" PRIu64 " granules (%" PRIu64 " unchanged), want 3",
		     ci.granules, ci.unchanged);
		goto out;
	}
	ok("discarded granules 3-4 and 40");
	if (expect_locked(dpid, base, (GRAN_N - 3) * 4, "after the discard") < 0 ||
	    gran_listed(&s, 3) < 0)
		goto out;
	/* the neighbours still move bytes */
	if (roundtrip(&s, &m, iova + 2 * G, 2 * G, &m, iova + 5 * G + 0x200, 5 * G + 0x200, 1024, 24) < 0 ||
	    roundtrip(&s, &m, iova + 39 * G, 39 * G, &m, iova + 41 * G + 0x100, 41 * G + 0x100, 1024, 25) < 0)
		goto out;
	/* a discarded granule faults and moves nothing (the DMAR line names the page) */
	dmar_window_wait();
	if (expect_fault(&s, iova + 3 * G, &m, 3 * G, 1024) < 0)
		goto out;

	r = dmb_populate(s.c, s.ctx, conv, 2, &ci);
	if (r < 0) {
		bfail(s.c, r, "dmb_populate granules 3-4 and 40");
		goto out;
	}
	if (ci.granules != 3) {
		fail(0, "populate changed %" PRIu64 " granules, want 3", ci.granules);
		goto out;
	}
	ok("populated granules 3-4 and 40 again");
	if (expect_locked(dpid, base, GRAN_N * 4, "after the populate") < 0 || gran_listed(&s, 0) < 0)
		goto out;
	if (roundtrip(&s, &m, iova + 2 * G, 2 * G, &m, iova + 3 * G + 0x80, 3 * G + 0x80, 1024, 26) < 0 ||
	    roundtrip(&s, &m, iova + 40 * G + 0x400, 40 * G + 0x400, &m, iova + 4 * G, 4 * G, 1024, 27) < 0)
		goto out;
	r = dmb_unmap(s.c, s.ctx, iova, GRAN_N * G, &unmapped);
	if (r < 0 || unmapped != GRAN_N * G) {
		if (r < 0)
			bfail(s.c, r, "dmb_unmap of the granular mapping");
		else
			fail(0, "dmb_unmap of the granular mapping: %" PRIu64 " bytes", unmapped);
		goto out;
	}
	if (expect_locked(dpid, base, 0, "after the unmap") < 0)
		goto out;
	ret = 0;
out:
	sess_close(&s);
	ram_free(&m);
	return ret;
}

static int usage(void)
{
	fputs("usage: broker-client info|ram|unmap|kill|range|handoff|noiommu|granular SOCKET BDF\n"
	      "       broker-client deny SOCKET DENIED_BDF ALLOWED_BDF\n"
	      "       broker-client p2p SOCKET BDF_A BDF_B POLL_MS\n",
	      stderr);
	return 2;
}

int main(int argc, char **argv)
{
	int r;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (argc == 4 && strcmp(argv[1], "info") == 0)
		r = run_info(argv[2], argv[3]);
	else if (argc == 4 && strcmp(argv[1], "ram") == 0)
		r = run_ram(argv[2], argv[3]);
	else if (argc == 4 && strcmp(argv[1], "unmap") == 0)
		r = run_unmap(argv[2], argv[3]);
	else if (argc == 4 && strcmp(argv[1], "kill") == 0)
		r = run_kill(argv[2], argv[3]);
	else if (argc == 4 && strcmp(argv[1], "range") == 0)
		r = run_range(argv[2], argv[3]);
	else if (argc == 4 && strcmp(argv[1], "handoff") == 0)
		r = run_handoff(argv[2], argv[3]);
	else if (argc == 4 && strcmp(argv[1], "noiommu") == 0)
		r = run_noiommu(argv[2], argv[3]);
	else if (argc == 4 && strcmp(argv[1], "granular") == 0)
		r = run_granular(argv[2], argv[3]);
	else if (argc == 5 && strcmp(argv[1], "deny") == 0)
		r = run_deny(argv[2], argv[3], argv[4]);
	else if (argc == 6 && strcmp(argv[1], "p2p") == 0 && atoi(argv[5]) > 0)
		r = run_p2p(argv[2], argv[3], argv[4], atoi(argv[5]));
	else
		return usage();
	return r == 0 ? 0 : 1;
}
