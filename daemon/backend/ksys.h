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

struct ksys_ops {
	/* Returns the ioctl's non-negative result or a negative errno. */
	int (*ioctl)(int fd, unsigned long req, void *arg);
};

extern struct ksys_ops ksys_ops;

/* ioctl(2), returning >= 0 or -errno. */
int ksys_ioctl_default(int fd, unsigned long req, void *arg);

static inline int ksys_ioctl(int fd, unsigned long req, void *arg)
{
	return ksys_ops.ioctl(fd, req, arg);
}

/* "ENOENT" for 2 or -2; "E?" when unknown. */
const char *ksys_errno_name(int err);

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

/* The "vfioN" entry under <sysfs>/bus/pci/devices/<bdf>/vfio-dev/
 * (-ENOENT: not bound to a VFIO driver, or no cdev support). */
int ksys_vfio_dev_name(const char *sysfs_root, const char *bdf, char *out, size_t n);

/* True for drivers that leave a group viable: VFIO drivers, pci-stub,
 * pcieport (the kernel's driver_managed_dma drivers). */
bool ksys_driver_keeps_group_viable(const char *driver);

/* Lists the devices of IOMMU group `group` that make it non-viable, as
 * "0000:01:00.1 (snd_hda_intel), ..." into out (truncated with "..."); out
 * is "" when none was found. Returns the number of such devices. */
int ksys_group_blockers(const char *sysfs_root, unsigned group, char *out, size_t n);

/* The host page size. */
uint64_t ksys_page_size(void);
