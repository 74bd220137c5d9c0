/* SPDX-License-Identifier: MIT */
/*
 * vfio-sanity - proves that the VM testbed itself works, without the broker.
 *
 * Runs inside the test VM (tests/vm/sanity-init.sh), as root, against edu devices bound
 * to vfio-pci, using VFIO type1 directly:
 *
 *   vfio-sanity ram BDF GROUP
 *       container + group + TYPE1v2; MAP_DMA of a memfd at IOVA 0x100000; edu copies
 *       RAM -> device -> RAM at another IOVA and the bytes are compared one by one;
 *       UNMAP_DMA; a DMA to the unmapped IOVA must raise a DMAR fault in the guest
 *       kernel log and leave the destination bytes untouched.
 *
 *   vfio-sanity p2p BDF_A GROUP_A BDF_B GROUP_B
 *       both groups in one container; B's BAR0 mmap mapped at IOVA 0x4000000; A reads
 *       B's ID register and writes B's liveness register by DMA; after UNMAP_DMA the
 *       same read faults; VFIO_DEVICE_RESET of B succeeds and B still answers.
 *
 * Prints one "vfio-sanity: ok: ..." line per step, "vfio-sanity: FAIL: ..." on the first
 * failure, and exits 0 only if every step passed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <linux/vfio.h>

#include "edu.h"

#define RAM_IOVA 0x100000ull
#define RAM_SIZE (2ull << 20)
#define RAM_DST_OFF (1ull << 20) /* destination half of the RAM buffer */
#define P2P_IOVA 0x4000000ull
#define XFER 4095u /* largest transfer QEMU 7.2's edu accepts */
#define FAULT_WAIT_MS 3000

static void ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void ok(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("vfio-sanity: ok: ", stdout);
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
	fputs("vfio-sanity: FAIL: ", stdout);
	vprintf(fmt, ap);
	if (r < 0)
		printf(": %s", strerror(-r));
	fputc('\n', stdout);
	fflush(stdout);
	va_end(ap);
	return -1;
}

/* ---- VFIO type1 ------------------------------------------------------------------ */

struct vfio {
	int container;
	int groups[2];
	int ngroups;
};

static void vfio_close(struct vfio *v)
{
	for (int i = 0; i < v->ngroups; i++)
		close(v->groups[i]);
	if (v->container >= 0)
		close(v->container);
	v->ngroups = 0;
	v->container = -1;
}

static int vfio_open(struct vfio *v)
{
	v->ngroups = 0;
	v->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (v->container < 0)
		return fail(-errno, "open /dev/vfio/vfio");
	if (ioctl(v->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		return fail(0, "VFIO_GET_API_VERSION is not %d", VFIO_API_VERSION);
	if (ioctl(v->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1)
		return fail(0, "VFIO_TYPE1v2_IOMMU not supported");
	return 0;
}

/* Adds /dev/vfio/GROUP to the container (setting the IOMMU type after the first one)
 * and returns a device fd for bdf. */
static int vfio_add_device(struct vfio *v, const char *group, const char *bdf)
{
	struct vfio_group_status st = { .argsz = sizeof(st) };
	char path[64];
	int g, dev;

	snprintf(path, sizeof(path), "/dev/vfio/%s", group);
	g = open(path, O_RDWR | O_CLOEXEC);
	if (g < 0)
		return fail(-errno, "open %s", path);
	v->groups[v->ngroups++] = g;
	if (ioctl(g, VFIO_GROUP_GET_STATUS, &st) < 0)
		return fail(-errno, "VFIO_GROUP_GET_STATUS %s", path);
	if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE))
		return fail(0, "group %s is not viable", group);
	if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &v->container) < 0)
		return fail(-errno, "VFIO_GROUP_SET_CONTAINER %s", path);
	if (v->ngroups == 1 && ioctl(v->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0)
		return fail(-errno, "VFIO_SET_IOMMU(TYPE1v2)");
	dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (dev < 0)
		return fail(-errno, "VFIO_GROUP_GET_DEVICE_FD %s", bdf);
	return dev;
}

static int map_dma(const struct vfio *v, const volatile void *vaddr, uint64_t iova,
		   uint64_t size)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uint64_t)(uintptr_t)vaddr,
		.iova = iova,
		.size = size,
	};

	return ioctl(v->container, VFIO_IOMMU_MAP_DMA, &m) < 0 ? -errno : 0;
}

/* Returns the number of bytes unmapped, or a negative errno. */
static int64_t unmap_dma(const struct vfio *v, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u),
		.iova = iova,
		.size = size,
	};

	if (ioctl(v->container, VFIO_IOMMU_UNMAP_DMA, &u) < 0)
		return -errno;
	return (int64_t)u.size;
}

/* ---- guest RAM and kernel log ---------------------------------------------------- */

static uint8_t *alloc_ram(size_t size)
{
	void *p;
	int fd;

	fd = memfd_create("vfio-sanity", MFD_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (ftruncate(fd, (off_t)size) < 0) {
		close(fd);
		return NULL;
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return p == MAP_FAILED ? NULL : p;
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

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Waits up to FAULT_WAIT_MS for a new kernel log record that contains "DMAR", "fault"
 * and every string in need[]. Copies the message text into line. Returns 0 if found.
 */
static int kmsg_wait_fault(int fd, const char *const *need, size_t nneed, char *line,
			   size_t linesz)
{
	int64_t deadline = mono_ms() + FAULT_WAIT_MS;
	char rec[8192];

	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);

		if (n < 0 && errno == EPIPE)
			continue; /* records overwritten under us: keep reading */
		if (n < 0 && errno != EAGAIN)
			return -errno;
		if (n > 0) {
			char *msg, *nl;
			bool all = true;

			rec[n] = '\0';
			msg = strchr(rec, ';'); /* "prio,seq,usec,flags;text\n" */
			msg = msg ? msg + 1 : rec;
			nl = strchr(msg, '\n');
			if (nl)
				*nl = '\0';
			if (!strstr(msg, "DMAR") || !strstr(msg, "fault"))
				continue;
			for (size_t i = 0; i < nneed; i++)
				all = all && strstr(msg, need[i]);
			if (all) {
				size_t len = strnlen(msg, linesz - 1);

				memcpy(line, msg, len); /* truncation is fine */
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

/* "0000:01:00.0" -> "01:00.0", the form the DMAR fault message uses. */
static const char *short_bdf(const char *bdf)
{
	size_t n = strlen(bdf);

	return n > 7 ? bdf + n - 7 : bdf;
}

/* ---- scenarios ------------------------------------------------------------------- */

static uint8_t pattern(size_t i)
{
	return (uint8_t)(i * 7 + 13 + (i >> 8));
}

static int run_ram(const char *bdf, const char *group)
{
	struct vfio v = { .container = -1 };
	struct edu e = { .device_fd = -1 };
	char want_addr[64], line[512];
	int dev = -1, kfd = -1, r = -1, ret = -1;
	uint8_t *ram, *src, *dst;
	uint16_t cmd = 0;
	uint32_t id = 0;
	int64_t un;

	ram = alloc_ram(RAM_SIZE);
	if (!ram)
		return fail(-errno, "memfd of %llu bytes", (unsigned long long)RAM_SIZE);
	src = ram;
	dst = ram + RAM_DST_OFF;

	if (vfio_open(&v) < 0)
		goto out;
	dev = vfio_add_device(&v, group, bdf);
	if (dev < 0)
		goto out;
	ok("container + group %s + TYPE1v2 + device %s", group, bdf);

	r = edu_open(&e, dev);
	if (r < 0) {
		fail(r, "edu_open");
		goto out;
	}
	r = edu_enable(&e);
	if (r == 0)
		r = edu_get_command(&e, &cmd);
	if (r < 0 || (cmd & (EDU_CMD_MEMORY | EDU_CMD_MASTER)) != (EDU_CMD_MEMORY | EDU_CMD_MASTER)) {
		fail(r, "enable memory + bus master (command 0x%04x)", cmd);
		goto out;
	}
	r = edu_read_id(&e, &id);
	if (r < 0 || id != EDU_ID_VALUE) {
		fail(r, "edu ID register reads 0x%08" PRIx32, id);
		goto out;
	}
	r = edu_check_liveness(&e, 0x5a5aa5a5u);
	if (r < 0) {
		fail(r, "edu liveness register");
		goto out;
	}
	ok("edu ID 0x%08" PRIx32 ", alive, command 0x%04x", id, cmd);

	for (size_t i = 0; i < XFER; i++)
		src[i] = pattern(i);
	memset(dst, 0xa5, XFER + 1);

	r = map_dma(&v, ram, RAM_IOVA, RAM_SIZE);
	if (r < 0) {
		fail(r, "VFIO_IOMMU_MAP_DMA memfd at 0x%llx", RAM_IOVA);
		goto out;
	}
	ok("MAP_DMA 2 MiB memfd at IOVA 0x%llx", RAM_IOVA);

	r = edu_dma_to_device(&e, RAM_IOVA, 0, XFER, 0);
	if (r == 0)
		r = edu_dma_from_device(&e, 0, RAM_IOVA + RAM_DST_OFF, XFER, 0);
	if (r < 0) {
		fail(r, "edu DMA round trip");
		goto out;
	}
	for (size_t i = 0; i < XFER; i++) {
		if (dst[i] != src[i]) {
			r = fail(0, "round trip byte %zu: got 0x%02x, want 0x%02x", i, dst[i], src[i]);
			goto out;
		}
	}
	if (dst[XFER] != 0xa5) {
		r = fail(0, "DMA wrote past its count (byte %u is 0x%02x)", XFER, dst[XFER]);
		goto out;
	}
	ok("DMA RAM 0x%llx -> edu -> RAM 0x%llx: %u bytes identical", RAM_IOVA,
	   RAM_IOVA + RAM_DST_OFF, XFER);

	un = unmap_dma(&v, RAM_IOVA, RAM_SIZE);
	if (un != (int64_t)RAM_SIZE) {
		r = fail(un < 0 ? (int)un : 0, "VFIO_IOMMU_UNMAP_DMA returned %lld", (long long)un);
		goto out;
	}
	ok("UNMAP_DMA 0x%llx: %lld bytes", RAM_IOVA, (long long)un);

	/* The memfd is still mapped in this process: a DMA that got through would show. */
	memset(dst, 0x3c, XFER + 1);
	kfd = kmsg_open();
	if (kfd < 0)
		goto out;
	r = edu_dma_from_device(&e, 0, RAM_IOVA + RAM_DST_OFF, XFER, 0);
	if (r < 0) {
		fail(r, "edu DMA to the unmapped IOVA did not complete");
		goto out;
	}
	snprintf(want_addr, sizeof(want_addr), "fault addr 0x%llx", RAM_IOVA + RAM_DST_OFF);
	const char *need[] = { want_addr, short_bdf(bdf) };
	r = kmsg_wait_fault(kfd, need, 2, line, sizeof(line));
	if (r < 0) {
		fail(r == -ETIMEDOUT ? 0 : r, "no DMAR fault for %s from %s in the kernel log within %d ms",
		     want_addr, bdf, FAULT_WAIT_MS);
		goto out;
	}
	ok("kernel: %s", line);
	for (size_t i = 0; i <= XFER; i++) {
		if (dst[i] != 0x3c) {
			r = fail(0, "DMA after UNMAP changed byte %zu to 0x%02x", i, dst[i]);
			goto out;
		}
	}
	ok("DMA to the unmapped IOVA faulted and left the destination untouched");
	ret = 0;
out:
	if (kfd >= 0)
		close(kfd);
	edu_close(&e);
	if (dev >= 0)
		close(dev);
	vfio_close(&v);
	munmap(ram, RAM_SIZE);
	return ret;
}

static int run_p2p(const char *bdf_a, const char *group_a, const char *bdf_b,
		   const char *group_b)
{
	struct vfio v = { .container = -1 };
	struct edu a = { .device_fd = -1 }, b = { .device_fd = -1 };
	int dev_a = -1, dev_b = -1, kfd = -1, r = -1, ret = -1;
	char want_addr[64], line[512];
	volatile uint32_t *word;
	uint32_t id = 0, val;
	uint8_t *ram;
	int64_t un;

	ram = alloc_ram(RAM_SIZE);
	if (!ram)
		return fail(-errno, "memfd of %llu bytes", (unsigned long long)RAM_SIZE);
	word = (volatile uint32_t *)ram;

	if (vfio_open(&v) < 0)
		goto out;
	dev_a = vfio_add_device(&v, group_a, bdf_a);
	if (dev_a < 0)
		goto out;
	dev_b = vfio_add_device(&v, group_b, bdf_b);
	if (dev_b < 0)
		goto out;
	ok("one container, groups %s and %s", group_a, group_b);

	r = edu_open(&a, dev_a);
	if (r == 0)
		r = edu_open(&b, dev_b);
	if (r == 0)
		r = edu_enable(&a);
	if (r == 0)
		r = edu_update_command(&b, EDU_CMD_MEMORY, 0);
	if (r < 0) {
		fail(r, "open and enable both edus");
		goto out;
	}
	r = map_dma(&v, ram, RAM_IOVA, RAM_SIZE);
	if (r < 0) {
		fail(r, "VFIO_IOMMU_MAP_DMA memfd at 0x%llx", RAM_IOVA);
		goto out;
	}
	r = map_dma(&v, b.bar0, P2P_IOVA, b.bar0_size);
	if (r < 0) {
		fail(r, "VFIO_IOMMU_MAP_DMA of B's BAR0 at 0x%llx", P2P_IOVA);
		goto out;
	}
	ok("MAP_DMA B's BAR0 (%zu bytes) at IOVA 0x%llx", b.bar0_size, P2P_IOVA);

	/* P2P read: A copies B's ID register (4 bytes: edu's registers below 0x80 answer
	 * only 4-byte accesses) into its buffer, then into RAM. */
	*word = 0;
	r = edu_dma_to_device(&a, P2P_IOVA + EDU_REG_ID, 0, 4, 0);
	if (r == 0)
		r = edu_dma_from_device(&a, 0, RAM_IOVA, 4, 0);
	if (r < 0 || *word != EDU_ID_VALUE) {
		fail(r, "P2P read of B's ID register gave 0x%08" PRIx32, *word);
		goto out;
	}
	ok("A read B's ID register by DMA: 0x%08" PRIx32, *word);

	/* P2P write: A writes a word from RAM into B's liveness register. */
	word[1] = 0x12345678u;
	r = edu_dma_to_device(&a, RAM_IOVA + 4, 0x10, 4, 0);
	if (r == 0)
		r = edu_dma_from_device(&a, 0x10, P2P_IOVA + EDU_REG_LIVENESS, 4, 0);
	val = *(volatile uint32_t *)(b.bar0 + EDU_REG_LIVENESS);
	if (r < 0 || val != ~0x12345678u) {
		fail(r, "P2P write of B's liveness register: B reads 0x%08" PRIx32, val);
		goto out;
	}
	ok("A wrote B's liveness register by DMA: B reads 0x%08" PRIx32, val);

	un = unmap_dma(&v, P2P_IOVA, b.bar0_size);
	if (un != (int64_t)b.bar0_size) {
		r = fail(un < 0 ? (int)un : 0, "UNMAP_DMA of the P2P range returned %lld",
			 (long long)un);
		goto out;
	}
	kfd = kmsg_open();
	if (kfd < 0)
		goto out;
	*word = 0;
	r = edu_dma_to_device(&a, P2P_IOVA + EDU_REG_ID, 0x20, 4, 0);
	if (r == 0)
		r = edu_dma_from_device(&a, 0x20, RAM_IOVA, 4, 0);
	if (r < 0) {
		fail(r, "edu DMA from the unmapped P2P IOVA did not complete");
		goto out;
	}
	snprintf(want_addr, sizeof(want_addr), "fault addr 0x%llx", P2P_IOVA);
	const char *need[] = { want_addr, short_bdf(bdf_a) };
	r = kmsg_wait_fault(kfd, need, 2, line, sizeof(line));
	if (r < 0 || *word == EDU_ID_VALUE) {
		fail(r == -ETIMEDOUT ? 0 : r,
		     "no DMAR fault for %s after P2P UNMAP within %d ms (read back 0x%08" PRIx32 ")",
		     want_addr, FAULT_WAIT_MS, *word);
		goto out;
	}
	ok("kernel: %s", line);
	ok("P2P read after UNMAP faulted (read back 0x%08" PRIx32 ")", *word);

	r = edu_reset(&b);
	if (r < 0) {
		fail(r, "VFIO_DEVICE_RESET of B");
		goto out;
	}
	r = edu_read_id(&b, &id);
	if (r < 0 || id != EDU_ID_VALUE) {
		fail(r, "B's ID after reset reads 0x%08" PRIx32, id);
		goto out;
	}
	ok("VFIO_DEVICE_RESET of B: ok, ID still 0x%08" PRIx32, id);
	ret = 0;
out:
	if (kfd >= 0)
		close(kfd);
	edu_close(&b);
	edu_close(&a);
	if (dev_b >= 0)
		close(dev_b);
	if (dev_a >= 0)
		close(dev_a);
	vfio_close(&v);
	munmap(ram, RAM_SIZE);
	return ret;
}

static int usage(void)
{
	fputs("usage: vfio-sanity ram BDF GROUP\n"
	      "       vfio-sanity p2p BDF_A GROUP_A BDF_B GROUP_B\n",
	      stderr);
	return 2;
}

int main(int argc, char **argv)
{
	/* Unbuffered-enough output: the console is shared with the kernel's. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && strcmp(argv[1], "ram") == 0)
		return run_ram(argv[2], argv[3]) == 0 ? 0 : 1;
	if (argc == 6 && strcmp(argv[1], "p2p") == 0)
		return run_p2p(argv[2], argv[3], argv[4], argv[5]) == 0 ? 0 : 1;
	return usage();
}
