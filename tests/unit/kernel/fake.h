/* A fake kernel for the kernel-backend unit tests.
 *
 * fake_install() replaces ksys_ops.ioctl with a recorder: every call is
 * logged (fd, request number, a copy of the argument bytes as they were
 * when the backend issued it, the path the fd refers to) and then handed to
 * the test's handler, which plays the kernel (writes outputs, returns a
 * result or a negative errno).
 *
 * fake_tree_*() build a small /sys and /dev under a temp directory; device
 * nodes are plain files, which open() happily and the fake ioctl answers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int (*fake_handler)(int fd, unsigned long req, void *arg, const char *path);

struct fake_call {
	int fd;
	unsigned long req;
	uintptr_t argval;   /* the raw argument (pointer or value) */
	uint8_t bytes[256]; /* the argument's bytes before the call */
	size_t len;         /* how many were captured */
	char str[64];       /* string argument (VFIO_GROUP_GET_DEVICE_FD) */
	char path[512];     /* what fd refers to (readlink /proc/self/fd/N) */
	bool cloexec;       /* FD_CLOEXEC was set on fd */
};

#define FAKE_MAX_CALLS 512

extern struct fake_call fake_calls[FAKE_MAX_CALLS];
extern int fake_ncalls;

void fake_install(fake_handler h);
void fake_uninstall(void);
void fake_reset(void);

/* The nth (0-based) recorded call of req, or NULL. */
const struct fake_call *fake_find(unsigned long req, int nth);
int fake_count(unsigned long req);
/* True when every recorded call was issued on an O_CLOEXEC fd. */
bool fake_all_cloexec(void);

/* The path an fd refers to, "" if unknown. */
void fake_fd_path(int fd, char *out, size_t n);
bool fake_path_endswith(const char *path, const char *suffix);

/* Temp tree: returns the root (mkdtemp under /tmp; short, so messages that
 * quote paths stay readable). */
char *fake_tree_new(void);
void fake_tree_free(char *root);
void fake_mkdirs(const char *root, const char *rel);
void fake_write(const char *root, const char *rel, const char *content);
void fake_symlink(const char *root, const char *rel, const char *target);

/* A PCI function under <root>/sys: vendor, device, driver link, optional
 * iommu_group link and group membership, optional vfio-dev/<vfio_dev>. */
void fake_pci(const char *root, const char *bdf, unsigned vendor, unsigned device,
	      const char *driver, int group, const char *vfio_dev);

/* A memfd of `size` bytes filled with a pattern (byte i = i * 7 + 1). */
int fake_memfd(uint64_t size);

/* A fake vfio-pci device, edu-like, as a regular file that a fake
 * GET_DEVICE_FD (or the cdev path itself) opens: region i lives at file
 * offset FAKE_REGION_OFFSET(i) (deliberately not the kernel's i << 40, so a
 * backend that does not use the reported offset fails).
 *   BAR0: 1 MiB memory, mmap-able; 0x010000ed at 0, FAKE_BAR0_MARK at 0x1000
 *   BAR1: not implemented (size 0)
 *   BAR2: 256 bytes of I/O space (no mmap)
 *   BAR3: 16 KiB memory without the MMAP flag
 *   config: 256 bytes; IDs 1234:11e8, command 0x0006, the BAR registers */
#define FAKE_REGION_OFFSET(i) ((uint64_t)(i) << 21)
#define FAKE_CFG_SIZE 256u
#define FAKE_BAR0_ID 0x010000edu
#define FAKE_BAR0_MARK 0x5a5a1234u
void fake_vfio_device_file(const char *path);
/* Answers VFIO_DEVICE_GET_REGION_INFO for that layout (arg is the
 * struct vfio_region_info); -EINVAL for an index past the config region. */
int fake_vfio_region_info(void *arg);
/* Reads/writes the config space of such a file directly (the client's
 * own fd, behind the backend's back). */
uint16_t fake_cfg_read16(const char *path, uint32_t off);
void fake_cfg_write16(const char *path, uint32_t off, uint16_t v);

/* The no-IOMMU part of a Linux 7.3 kernel (IOMMUFD_NOIOMMU with
 * vfio.enable_unsafe_noiommu_mode=1), as drivers/vfio/device_cdev.c,
 * drivers/iommu/iommufd/ioas.c and io_pagetable.c behave:
 *   - opening a noiommu-vfioN cdev needs CAP_SYS_RAWIO (EPERM);
 *   - IOMMU_IOAS_NOIOMMU_GET_PA: CAP_SYS_RAWIO (EPERM), then flags and
 *     __reserved 0 (EOPNOTSUPP), length 0 (EINVAL), iova >= ULONG_MAX
 *     (EOVERFLOW), an unknown IOAS (ENOENT), an IOVA no area holds (ENOENT),
 *     an area whose storage domain is not the no-IOMMU one, i.e. no such
 *     device attached (EOPNOTSUPP); otherwise out_phys and the physically
 *     contiguous length, in PAGE_SIZE steps from the first page's end,
 *     capped by the area's end and the length asked.
 * Each area's pages have their own physical addresses (phys[i] of page i),
 * so the test decides what is contiguous. */
#define FAKE_NOIOMMU_PAGES 64
struct fake_noiommu {
	bool rawio;          /* the caller holds CAP_SYS_RAWIO */
	bool attached;       /* a no-IOMMU device is attached to the IOAS */
	uint32_t ioas_id;
	size_t n;
	struct {
		uint64_t iova, length;
		uint64_t phys[FAKE_NOIOMMU_PAGES];
	} area[8];
};
/* ksys_ops.open for the cdevs: EPERM for a noiommu-vfioN path without
 * rawio, else open(2). */
int fake_noiommu_open(const struct fake_noiommu *k, const char *path, int flags);
int fake_noiommu_get_pa(const struct fake_noiommu *k, void *arg);

/* The kernel's IOVA areas, as iommufd (io_pagetable.c) and VFIO type1 v2
 * (vfio_iommu_type1.c) keep them in Linux 7.3: one area per successful
 * map, never merged with its neighbours and never split. A test's handler
 * feeds its MAP and UNMAP ioctls through these. */
#define FAKE_MAX_AREAS 4096
struct fake_area {
	uint64_t iova, length, offset;
};
struct fake_areas {
	size_t n;
	struct fake_area a[FAKE_MAX_AREAS]; /* sorted by iova */
};
/* A new area; -EEXIST when it overlaps one (both kernels). */
int fake_areas_map(struct fake_areas *s, uint64_t iova, uint64_t length, uint64_t offset);
/* IOMMU_IOAS_UNMAP (iopt_unmap_iova_range): removes the areas inside
 * [iova, iova + length) from the lowest up; an area straddling either end
 * stops it with -ENOENT (the areas removed before stay removed), and so
 * does a range that held no area. *unmapped: the bytes removed. */
int fake_areas_unmap_iommufd(struct fake_areas *s, uint64_t iova, uint64_t length,
			     uint64_t *unmapped);
/* VFIO_IOMMU_UNMAP_DMA, type1 v2: -EINVAL (nothing removed) when either end
 * bisects an area; otherwise every area inside goes, possibly none. */
int fake_areas_unmap_type1(struct fake_areas *s, uint64_t iova, uint64_t length,
			   uint64_t *unmapped);
/* The area containing iova, or NULL. */
const struct fake_area *fake_areas_find(const struct fake_areas *s, uint64_t iova);
