/* ksys.h — what the two kernel backends (iommufd.c, vfio_type1.c) share:
 * the one ioctl entry point, PCI address parsing and the sysfs lookups that
 * turn a BDF into an IOMMU group, a vfio-dev name, a driver or an ID.
 *
 * Every IOMMU/VFIO ioctl of the daemon goes through ksys_ioctl(), which
 * calls ksys_ops.ioctl. It is ioctl(2) by default; unit tests install a
 * fake that records the request number and the argument bytes and returns
 * canned answers, so the marshalling of every command is tested on machines
 * that have no IOMMU. The hook is process-global and is meant to be swapped
 * only while no backend call is running (tests).
 *
 * Paths: sysfs_root and dev_root come from struct dmb_backend_config
 * ("/sys" and "/dev" in production, temp directories in tests). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "backend/backend.h" /* struct dmb_bar_info, struct dmb_err */

struct ksys_ops {
	/* Returns the ioctl's non-negative result or a negative errno. */
	int (*ioctl)(int fd, unsigned long req, void *arg);
	/* Returns a new fd or a negative errno. Only for device nodes whose
	 * open itself answers (/dev/liveupdate: EBUSY, EIO; a VFIO cdev:
	 * noiommu-vfioN without CAP_SYS_RAWIO is EPERM), so tests can play
	 * those answers; other opens call open(2) directly. */
	int (*open)(const char *path, int flags);
};

extern struct ksys_ops ksys_ops;

/* ioctl(2), returning >= 0 or -errno. */
int ksys_ioctl_default(int fd, unsigned long req, void *arg);
/* open(2) (flags | O_CLOEXEC), returning the fd or -errno. */
int ksys_open_default(const char *path, int flags);

static inline int ksys_ioctl(int fd, unsigned long req, void *arg)
{
	return ksys_ops.ioctl(fd, req, arg);
}

static inline int ksys_open(const char *path, int flags)
{
	return ksys_ops.open(path, flags);
}

/* "ENOENT" for 2 or -2; "E?" when unknown. */
const char *ksys_errno_name(int err);

/* One errno a backend explains for one ioctl: the sentence, and the wire
 * code when it is not dmb_code_from_errno()'s (0). */
struct ksys_why {
	int err;
	int code;
	const char *why;
};
/* The sentence for the negative errno r among rows (ended by { 0 }), else
 * strerror(-r); *code is the row's code, else dmb_code_from_errno(r). */
const char *ksys_explain(int r, const struct ksys_why *rows, int *code);

/* A PCI function address as the kernel names it: "dddd:bb:dd.f". */
#define KSYS_BDF_LEN 12
/* Accepts "dddd:bb:dd.f" or "bb:dd.f" (domain 0), hex in either case, and
 * writes the canonical lower-case form; -EINVAL for anything else (so a
 * BDF can never smuggle a '/' into a path). */
int ksys_bdf_normalize(const char *in, char out[KSYS_BDF_LEN + 1]);

/* snprintf into buf; -ENAMETOOLONG on truncation. */
int ksys_path(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Reads a sysfs attribute holding one number ("0x1234\n", "65535\n"),
 * base as strtoul. */
int ksys_read_ulong(const char *path, int base, unsigned long *out);

/* Basename of a symlink's target ("../../../kernel/iommu_groups/7" -> "7"). */
int ksys_link_basename(const char *path, char *out, size_t n);

/* <sysfs>/bus/pci/devices/<bdf>: 0 if present, -ENOENT if not. */
int ksys_pci_exists(const char *sysfs_root, const char *bdf);

/* Name of the driver the function is bound to; "" when none. */
int ksys_pci_driver(const char *sysfs_root, const char *bdf, char *out, size_t n);

/* Vendor and device ID from sysfs. */
int ksys_pci_ids(const char *sysfs_root, const char *bdf, uint16_t *vendor, uint16_t *device);

/* IOMMU group number (-ENOENT: the device has no IOMMU group). */
int ksys_iommu_group(const char *sysfs_root, const char *bdf, unsigned *group);

/* The "vfioN" entry under <sysfs>/bus/pci/devices/<bdf>/vfio-dev/, or
 * "noiommu-vfioN" for a device with no IOMMU in front of it (Linux 7.3 with
 * vfio.enable_unsafe_noiommu_mode=1; ksys_noiommu_name tells)
 * (-ENOENT: not bound to a VFIO driver, or no cdev support). */
#define KSYS_NOIOMMU_PREFIX "noiommu-"
int ksys_vfio_dev_name(const char *sysfs_root, const char *bdf, char *out, size_t n);
static inline bool ksys_noiommu_name(const char *name)
{
	return strncmp(name, KSYS_NOIOMMU_PREFIX, sizeof(KSYS_NOIOMMU_PREFIX) - 1) == 0;
}

/* True for drivers that leave a group viable: VFIO drivers, pci-stub,
 * pcieport (the kernel's driver_managed_dma drivers). */
bool ksys_driver_keeps_group_viable(const char *driver);

/* Lists the devices of IOMMU group `group` that make it non-viable, as
 * "0000:01:00.1 (snd_hda_intel), ..." into out (truncated with "..."); out
 * is "" when none was found. Returns the number of such devices. */
int ksys_group_blockers(const char *sysfs_root, unsigned group, char *out, size_t n);

/* The host page size. */
uint64_t ksys_page_size(void);

/* ---- VFIO PCI device fds (both backends) ----
 *
 * What a VFIO device fd (group-obtained or cdev) offers the P2P hooks:
 * region info, config space through the config region (index 7) with
 * pread/pwrite, and VFIO_DEVICE_RESET. Config space is read and written on
 * the device fd itself, so a change a client makes through its own
 * duplicate of that fd is what the next read sees. */

/* VFIO_DEVICE_GET_REGION_INFO, decoded. */
struct ksys_region {
	uint64_t size;   /* 0: not implemented */
	uint64_t offset; /* file offset on the device fd */
	uint32_t flags;  /* VFIO_REGION_INFO_FLAG_* */
};

/* Returns 0 or the ioctl's negative errno. */
int ksys_vfio_region_info(int fd, unsigned index, struct ksys_region *out);

/* One VFIO PCI device as the backends keep it: each backend's device
 * struct begins with one, so the device ops below serve both. Filled by
 * ksys_vdev_init at open (base is the backend's to fill) and read-only
 * afterwards, so any thread may use it. */
struct ksys_vdev {
	struct dmb_bdev base;       /* what the core holds */
	int fd;                     /* borrowed from the backend's device */
	char bdf[KSYS_BDF_LEN + 1];
	int cfg_err;                /* 0, or the -errno of GET_REGION_INFO(config) */
	uint64_t cfg_offset;        /* the config region on fd */
	uint64_t cfg_size;          /* 256 (PCI) or 4096 (PCIe) */
};

/* Looks up the config region; a failure is kept in cfg_err (and reported
 * by the config accessors) rather than failing the open. */
void ksys_vdev_init(struct ksys_vdev *v, int fd, const char *bdf);

/* Config space [off, off+len): bounds-checked against the region (a
 * request outside it is -ERANGE, nothing is read or written). */
int ksys_vdev_config_read(const struct ksys_vdev *v, uint32_t off, void *buf, size_t len,
			  struct dmb_err *e);
int ksys_vdev_config_write(const struct ksys_vdev *v, uint32_t off, const void *buf, size_t len,
			   struct dmb_err *e);

/* BAR 0-5: size and mappable (MMAP flag) from GET_REGION_INFO; memory or
 * I/O space from bit 0 of the BAR register in config space (vfio-pci keeps
 * the flag bits of its virtualised BARs). An unimplemented BAR, or the
 * upper half of a 64-bit BAR, reads size 0. */
int ksys_vdev_bar_info(const struct ksys_vdev *v, unsigned bar, struct dmb_bar_info *out,
		       struct dmb_err *e);

/* VFIO_DEVICE_RESET; EINVAL (no FLR, no usable slot/bus reset) and EAGAIN
 * (device lock contended) get their own sentences. */
int ksys_vdev_reset(const struct ksys_vdev *v, struct dmb_err *e);

/* The same, as the backend table's device ops (dev_fd, dev_bar_info,
 * dev_config_read, dev_config_write, dev_reset) of a struct ksys_vdev. */
int ksys_dev_fd(struct dmb_bdev *bd);
int ksys_dev_bar_info(struct dmb_bdev *bd, unsigned bar, struct dmb_bar_info *out,
		      struct dmb_err *e);
int ksys_dev_config_read(struct dmb_bdev *bd, uint32_t off, void *buf, size_t len,
			 struct dmb_err *e);
int ksys_dev_config_write(struct dmb_bdev *bd, uint32_t off, const void *buf, size_t len,
			  struct dmb_err *e);
int ksys_dev_reset(struct dmb_bdev *bd, struct dmb_err *e);

/* ---- MMIO (peer BAR) mappings of one context ----
 *
 * The kernel's unmap answers one byte count for RAM and MMIO together;
 * pinned_bytes must count RAM only, so each context remembers where its
 * MMIO mappings are. Not thread-safe: it lives in a context, whose calls
 * are serialised. */
struct ksys_mmio {
	uint64_t iova;
	uint64_t length;
};
struct ksys_mmio_set {
	struct ksys_mmio *v;
	size_t n, cap;
};

/* Makes room for one more entry (-ENOMEM), so that recording a mapping the
 * kernel has already made cannot fail. */
int ksys_mmio_reserve(struct ksys_mmio_set *s);
/* Records [iova, iova+length); call ksys_mmio_reserve first. */
void ksys_mmio_add(struct ksys_mmio_set *s, uint64_t iova, uint64_t length);
/* Forgets the entries wholly inside [iova, iova+length) (length 0: all of
 * them) and returns their bytes. */
uint64_t ksys_mmio_remove(struct ksys_mmio_set *s, uint64_t iova, uint64_t length);
/* Frees the set; accepts an empty one. */
void ksys_mmio_free(struct ksys_mmio_set *s);

/* ---- restart: the fd sets of backend.h (struct dmb_fdset) ----
 *
 * Names are the backend's own ("container", "group.7", "iommufd.ioas3",
 * "device"); the daemon adds and strips its object prefix. */

/* Appends fd under the printf-formatted name: -E2BIG when the set is full
 * (DMB_MAX_OBJ_FDS), -ENAMETOOLONG when the name does not fit. */
int ksys_fdset_add(struct dmb_fdset *s, int fd, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* 0 when the set is well-formed (n <= DMB_MAX_OBJ_FDS, every fd >= 0,
 * every name NUL-terminated and unique), else -EINVAL. */
int ksys_fdset_check(const struct dmb_fdset *s);

/* Index of the entry named exactly `name`, or -1. */
int ksys_fdset_find(const struct dmb_fdset *s, const char *name);

/* `name` is `prefix` followed by a decimal number without sign or leading
 * zero that fits 32 bits ("group.7" with prefix "group."): 0 and the number,
 * else -EINVAL. */
int ksys_fdname_u32(const char *name, const char *prefix, uint32_t *out);
