/* SPDX-License-Identifier: MIT */
/*
 * edu.h - drive QEMU's "edu" PCI device (1234:11e8) through a VFIO device fd.
 *
 * Used by the VM test tier only: the guest test programs get a VFIO device fd (from a
 * group directly, or from the broker) and use edu as a DMA engine to prove that an IOVA
 * mapping moves bytes, or that an unmapped/revoked IOVA faults.
 *
 * Every function returns 0 (or a non-negative value) on success and a negative errno on
 * failure; nothing here prints or keeps global state.
 *
 * Limits of the QEMU 7.2 edu model that this library enforces, because violating them
 * aborts the whole VM instead of failing the test (see docs/vm-testbed.md):
 *   - DMA count must be 1..4095 and the device-buffer side must lie in
 *     [EDU_BUF_ADDR, EDU_BUF_ADDR + EDU_BUF_SIZE) with addr + count < EDU_BUF_END
 *     (the last byte of the 4 KiB buffer is unusable);
 *   - the IOVA side must be below EDU_DMA_MASK_LIMIT (256 MiB, edu's default dma_mask).
 * Reading another edu's BAR by DMA (P2P) only works with count 4: registers below 0x80
 * answer 4-byte accesses only.
 *
 * BAR0 is accessed through an mmap of the device fd. vfio-pci zaps that mmap while the
 * device's memory decoding (command bit 1) is off, so touching the BAR of a device whose
 * memory enable is clear raises SIGBUS. Keep memory enabled on the device you drive.
 */
#ifndef DMB_TESTS_VM_EDU_H
#define DMB_TESTS_VM_EDU_H

#include <stddef.h>
#include <stdint.h>

#define EDU_VENDOR_ID 0x1234
#define EDU_DEVICE_ID 0x11e8
#define EDU_ID_VALUE 0x010000edu /* BAR0 + 0x00 on QEMU 7.2 */

/* BAR0 register offsets. */
#define EDU_REG_ID 0x00
#define EDU_REG_LIVENESS 0x04
#define EDU_REG_DMA_SRC 0x80
#define EDU_REG_DMA_DST 0x88
#define EDU_REG_DMA_COUNT 0x90
#define EDU_REG_DMA_CMD 0x98

#define EDU_DMA_CMD_START 0x1u
#define EDU_DMA_CMD_TO_RAM 0x2u /* direction bit: device buffer -> RAM */
#define EDU_DMA_CMD_IRQ 0x4u

/* The device-internal DMA buffer (not a BAR offset). */
#define EDU_BUF_ADDR 0x40000u
#define EDU_BUF_SIZE 0x1000u
#define EDU_BUF_END (EDU_BUF_ADDR + EDU_BUF_SIZE)
#define EDU_DMA_MAX (EDU_BUF_SIZE - 1) /* QEMU 7.2 off-by-one */
#define EDU_DMA_MASK_LIMIT (1ull << 28) /* default dma_mask + 1 */

/* PCI command register bits (config space offset 4). */
#define EDU_CMD_MEMORY 0x0002u
#define EDU_CMD_MASTER 0x0004u

#define EDU_DMA_DEFAULT_TIMEOUT_MS 5000

enum edu_dma_dir {
	EDU_DMA_TO_DEVICE = 0, /* RAM (IOVA) -> device buffer */
	EDU_DMA_FROM_DEVICE = 1, /* device buffer -> RAM (IOVA) */
};

/*
 * One opened edu. The device fd is borrowed, never closed here; it must stay open
 * while the struct is in use. Fields are read-only for callers; bar0/bar0_size are
 * public so a test can map this BAR into another device's IOMMU context (P2P).
 */
struct edu {
	int device_fd;
	volatile uint8_t *bar0; /* NULL when not mapped */
	size_t bar0_size;
	uint64_t bar0_offset; /* region offset in device_fd */
	uint64_t cfg_offset;
	uint64_t cfg_size;
};

/*
 * Looks up the BAR0 and config regions of device_fd and mmaps BAR0. Does not change
 * the command register. On failure *e is left closed (edu_close() is still safe).
 */
int edu_open(struct edu *e, int device_fd);
/*
 * The same edu without VFIO: BAR0 through /sys/bus/pci/devices/BDF/resource0 and config
 * space through .../config (root only; the device may be bound to vfio-pci and in use).
 * *cfg_fd is the config file, which the caller closes after edu_close(). For a test
 * that must drive the device while no VFIO user (broker or client) hands it a device
 * fd, e.g. between a kexec and the reclaim. edu_reset() does not work on it.
 */
int edu_open_sysfs(struct edu *e, const char *bdf, int *cfg_fd);
/* Unmaps BAR0. Safe on a zeroed, failed or already closed struct. */
void edu_close(struct edu *e);

/* Config space through the VFIO config region (naturally aligned, little-endian). */
int edu_cfg_read16(const struct edu *e, uint32_t off, uint16_t *val);
int edu_cfg_write16(const struct edu *e, uint32_t off, uint16_t val);

int edu_get_command(const struct edu *e, uint16_t *cmd);
/* Read-modify-write of the command register: (cmd & ~clear) | set. */
int edu_update_command(const struct edu *e, uint16_t set, uint16_t clear);
/* Memory enable + bus master: what a device needs before it can DMA. */
int edu_enable(const struct edu *e);

/* Reads BAR0 + 0x00; EDU_ID_VALUE expected. */
int edu_read_id(const struct edu *e, uint32_t *id);
/* Writes a value to the liveness register and checks that its inverse comes back:
 * 0 if alive, -EIO if not. */
int edu_check_liveness(const struct edu *e, uint32_t value);

/*
 * Runs one DMA and waits for it by polling the start bit, for at most timeout_ms
 * (<= 0: EDU_DMA_DEFAULT_TIMEOUT_MS). For EDU_DMA_TO_DEVICE, src is an IOVA and dst a
 * device buffer address; for EDU_DMA_FROM_DEVICE the other way round.
 * Returns 0 when the engine reports completion (which does not mean the IOMMU let
 * the transfer through: a faulting DMA also "completes"), -EINVAL for arguments
 * outside the limits above, -EBUSY if a DMA is already running, -ETIMEDOUT, -EIO if
 * the BAR reads all-ones (device gone).
 */
int edu_dma(const struct edu *e, uint64_t src, uint64_t dst, uint32_t count,
	    enum edu_dma_dir dir, int timeout_ms);

/* Convenience wrappers: buf_off is an offset into the 4 KiB device buffer. */
int edu_dma_to_device(const struct edu *e, uint64_t iova, uint32_t buf_off,
		      uint32_t count, int timeout_ms);
int edu_dma_from_device(const struct edu *e, uint32_t buf_off, uint64_t iova,
			uint32_t count, int timeout_ms);

/* VFIO_DEVICE_RESET. Needs a reset method: edu behind a PCIe root port (bus reset). */
int edu_reset(const struct edu *e);

#endif
