/* SPDX-License-Identifier: MIT */
/* edu.c - see edu.h. */
#include "edu.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>

static int region_info(int fd, uint32_t index, struct vfio_region_info *ri)
{
	memset(ri, 0, sizeof(*ri));
	ri->argsz = sizeof(*ri);
	ri->index = index;
	if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, ri) < 0)
		return -errno;
	return 0;
}

int edu_open(struct edu *e, int device_fd)
{
	struct vfio_region_info bar, cfg;
	void *p;
	int r;

	memset(e, 0, sizeof(*e));
	e->device_fd = -1;
	if (device_fd < 0)
		return -EBADF;

	r = region_info(device_fd, VFIO_PCI_BAR0_REGION_INDEX, &bar);
	if (r < 0)
		return r;
	r = region_info(device_fd, VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
	if (r < 0)
		return r;
	/* edu's BAR0 is 1 MiB and mmappable; anything else is not an edu under vfio-pci. */
	if (!(bar.flags & VFIO_REGION_INFO_FLAG_MMAP) || bar.size < EDU_REG_DMA_CMD + 8 ||
	    cfg.size < PCI_COMMAND + 2)
		return -ENODEV;

	p = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, device_fd,
		 (off_t)bar.offset);
	if (p == MAP_FAILED)
		return -errno;

	e->device_fd = device_fd;
	e->bar0 = p;
	e->bar0_size = bar.size;
	e->bar0_offset = bar.offset;
	e->cfg_offset = cfg.offset;
	e->cfg_size = cfg.size;
	return 0;
}

int edu_open_sysfs(struct edu *e, const char *bdf, int *cfg_fd)
{
	char path[128];
	struct stat st;
	void *p;
	int fd, r;

	memset(e, 0, sizeof(*e));
	e->device_fd = -1;
	*cfg_fd = -1;
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/resource0", bdf);
	fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || st.st_size < EDU_REG_DMA_CMD + 8) {
		r = -ENODEV;
		close(fd);
		return r;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	r = p == MAP_FAILED ? -errno : 0;
	close(fd); /* the mapping stays */
	if (r < 0)
		return r;
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/config", bdf);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		munmap(p, (size_t)st.st_size);
		return r;
	}
	e->device_fd = fd;
	e->bar0 = p;
	e->bar0_size = (size_t)st.st_size;
	e->cfg_offset = 0;
	e->cfg_size = 256;
	*cfg_fd = fd;
	return 0;
}

void edu_close(struct edu *e)
{
	if (!e)
		return;
	if (e->bar0)
		munmap((void *)(uintptr_t)e->bar0, e->bar0_size);
	e->bar0 = NULL;
	e->bar0_size = 0;
	e->device_fd = -1;
}

static int cfg_rw(const struct edu *e, uint32_t off, void *buf, size_t len, int write)
{
	ssize_t n;

	if (!e || e->device_fd < 0)
		return -EBADF;
	if (off % len || (uint64_t)off + len > e->cfg_size)
		return -EINVAL;
	if (write)
		n = pwrite(e->device_fd, buf, len, (off_t)(e->cfg_offset + off));
	else
		n = pread(e->device_fd, buf, len, (off_t)(e->cfg_offset + off));
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

/* x86_64 and arm64 are little-endian, as is PCI config space: no swapping needed. */
int edu_cfg_read16(const struct edu *e, uint32_t off, uint16_t *val)
{
	return cfg_rw(e, off, val, sizeof(*val), 0);
}

int edu_cfg_write16(const struct edu *e, uint32_t off, uint16_t val)
{
	return cfg_rw(e, off, &val, sizeof(val), 1);
}

int edu_get_command(const struct edu *e, uint16_t *cmd)
{
	return edu_cfg_read16(e, PCI_COMMAND, cmd);
}

int edu_update_command(const struct edu *e, uint16_t set, uint16_t clear)
{
	uint16_t cmd;
	int r;

	r = edu_get_command(e, &cmd);
	if (r < 0)
		return r;
	return edu_cfg_write16(e, PCI_COMMAND, (uint16_t)((cmd & ~clear) | set));
}

int edu_enable(const struct edu *e)
{
	return edu_update_command(e, EDU_CMD_MEMORY | EDU_CMD_MASTER, 0);
}

static uint32_t rd32(const struct edu *e, uint32_t off)
{
	return *(volatile uint32_t *)(e->bar0 + off);
}

static void wr32(const struct edu *e, uint32_t off, uint32_t v)
{
	*(volatile uint32_t *)(e->bar0 + off) = v;
}

static uint64_t rd64(const struct edu *e, uint32_t off)
{
	return *(volatile uint64_t *)(e->bar0 + off);
}

static void wr64(const struct edu *e, uint32_t off, uint64_t v)
{
	*(volatile uint64_t *)(e->bar0 + off) = v;
}

int edu_read_id(const struct edu *e, uint32_t *id)
{
	if (!e || !e->bar0)
		return -EBADF;
	*id = rd32(e, EDU_REG_ID);
	return 0;
}

int edu_check_liveness(const struct edu *e, uint32_t value)
{
	if (!e || !e->bar0)
		return -EBADF;
	wr32(e, EDU_REG_LIVENESS, value);
	return rd32(e, EDU_REG_LIVENESS) == ~value ? 0 : -EIO;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int buf_range_ok(uint64_t addr, uint32_t count)
{
	/* Strict end: QEMU 7.2 aborts on a transfer that touches the buffer's last byte. */
	return addr >= EDU_BUF_ADDR && addr < EDU_BUF_END && addr + count < EDU_BUF_END;
}

static int iova_range_ok(uint64_t iova, uint32_t count)
{
	return iova < EDU_DMA_MASK_LIMIT && count <= EDU_DMA_MASK_LIMIT - iova;
}

int edu_dma(const struct edu *e, uint64_t src, uint64_t dst, uint32_t count,
	    enum edu_dma_dir dir, int timeout_ms)
{
	uint64_t cmd = EDU_DMA_CMD_START, v;
	int64_t deadline;

	if (!e || !e->bar0)
		return -EBADF;
	if (count == 0 || count > EDU_DMA_MAX)
		return -EINVAL;
	switch (dir) {
	case EDU_DMA_TO_DEVICE:
		if (!iova_range_ok(src, count) || !buf_range_ok(dst, count))
			return -EINVAL;
		break;
	case EDU_DMA_FROM_DEVICE:
		if (!buf_range_ok(src, count) || !iova_range_ok(dst, count))
			return -EINVAL;
		cmd |= EDU_DMA_CMD_TO_RAM;
		break;
	default:
		return -EINVAL;
	}
	if (timeout_ms <= 0)
		timeout_ms = EDU_DMA_DEFAULT_TIMEOUT_MS;

	v = rd64(e, EDU_REG_DMA_CMD);
	if (v == UINT64_MAX)
		return -EIO;
	if (v & EDU_DMA_CMD_START)
		return -EBUSY; /* the device would ignore our register writes */

	/* Make the caller's plain stores to the source buffer visible before the device
	 * starts; volatile MMIO stores are not ordered against them by the compiler. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	wr64(e, EDU_REG_DMA_SRC, src);
	wr64(e, EDU_REG_DMA_DST, dst);
	wr64(e, EDU_REG_DMA_COUNT, count);
	wr64(e, EDU_REG_DMA_CMD, cmd);

	/* The transfer runs from a timer ~100 ms after the start; poll gently. */
	deadline = now_ms() + timeout_ms;
	for (;;) {
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 2 * 1000 * 1000 };

		v = rd64(e, EDU_REG_DMA_CMD);
		if (v == UINT64_MAX)
			return -EIO;
		if (!(v & EDU_DMA_CMD_START))
			break;
		if (now_ms() >= deadline)
			return -ETIMEDOUT;
		nanosleep(&ts, NULL);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 0;
}

int edu_dma_to_device(const struct edu *e, uint64_t iova, uint32_t buf_off,
		      uint32_t count, int timeout_ms)
{
	if (buf_off >= EDU_BUF_SIZE)
		return -EINVAL;
	return edu_dma(e, iova, EDU_BUF_ADDR + buf_off, count, EDU_DMA_TO_DEVICE, timeout_ms);
}

int edu_dma_from_device(const struct edu *e, uint32_t buf_off, uint64_t iova,
			uint32_t count, int timeout_ms)
{
	if (buf_off >= EDU_BUF_SIZE)
		return -EINVAL;
	return edu_dma(e, EDU_BUF_ADDR + buf_off, iova, count, EDU_DMA_FROM_DEVICE, timeout_ms);
}

int edu_reset(const struct edu *e)
{
	if (!e || e->device_fd < 0)
		return -EBADF;
	if (ioctl(e->device_fd, VFIO_DEVICE_RESET) < 0)
		return -errno;
	return 0;
}
