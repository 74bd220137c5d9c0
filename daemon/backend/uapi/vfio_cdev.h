/* uapi/vfio_cdev.h — the VFIO items that Linux 6.1's <linux/vfio.h> lacks:
 * the device cdev (/dev/vfio/devices/vfioN) bind/attach/detach ioctls
 * (6.6), the hot-reset devid flags that come with them, and the dma-buf
 * export of BAR ranges (6.19, for P2P through iommufd).
 *
 * They coexist with any <linux/vfio.h>: every name carries a dmb_/DMB_
 * prefix and is otherwise spelled as in the kernel's
 * include/uapi/linux/vfio.h. Layouts from that header
 * (LP64), pinned by _Static_assert.
 *
 * VFIO ioctls are _IO(';', 100 + n) — no size or direction bits — and use
 * the "argsz" convention: argsz >= the command's minimum (EINVAL otherwise),
 * extra bytes ignored, except BIND_IOMMUFD which, like iommufd, insists that
 * bytes beyond the kernel's struct be zero (E2BIG). */
#pragma once

#include <linux/vfio.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

#include "iommufd.h" /* DMB_UAPI_ASSERT_*, dmb_aligned_u64 */

#define DMB_VFIO_TYPE ';'
#define DMB_VFIO_BASE 100

#define DMB_VFIO_DEVICE_BIND_IOMMUFD     _IO(DMB_VFIO_TYPE, DMB_VFIO_BASE + 18) /* 0x3B76 */
#define DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(DMB_VFIO_TYPE, DMB_VFIO_BASE + 19) /* 0x3B77 */
#define DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(DMB_VFIO_TYPE, DMB_VFIO_BASE + 20) /* 0x3B78 */

/* VFIO_DEVICE_BIND_IOMMUFD: the first ioctl on a cdev fd; everything else
 * is EINVAL until it succeeds. 16 bytes without the VF token (6.6 size),
 * 24 with it (6.17+). */
#define DMB_VFIO_DEVICE_BIND_FLAG_TOKEN (1u << 0)
struct dmb_vfio_device_bind_iommufd {
	uint32_t argsz;
	uint32_t flags;
	int32_t iommufd;
	uint32_t out_devid; /* iommufd DEVICE object ID */
	dmb_aligned_u64 token_uuid_ptr; /* only read with FLAG_TOKEN */
};
#define DMB_VFIO_BIND_IOMMUFD_MINSZ 16u

/* VFIO_DEVICE_ATTACH_IOMMUFD_PT: attach to an IOAS (the kernel finds or
 * creates a paging HWPT and writes its ID back to pt_id) or to a HWPT.
 * 12 bytes without PASID (6.6 size), 16 with it. */
#define DMB_VFIO_DEVICE_ATTACH_PASID (1u << 0)
struct dmb_vfio_device_attach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
	uint32_t pt_id; /* in: IOAS or HWPT; out: the HWPT attached */
	uint32_t pasid;
};
#define DMB_VFIO_ATTACH_IOMMUFD_PT_MINSZ 12u

/* VFIO_DEVICE_DETACH_IOMMUFD_PT: back to DMA-blocking. 8 bytes without
 * PASID, 12 with it. */
#define DMB_VFIO_DEVICE_DETACH_PASID (1u << 0)
struct dmb_vfio_device_detach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
	uint32_t pasid;
};
#define DMB_VFIO_DETACH_IOMMUFD_PT_MINSZ 8u

/* Hot reset of cdev-opened devices (GET_PCI_HOT_RESET_INFO flags and the
 * devid values in struct vfio_pci_dependent_device, whose first u32 is a
 * union of group_id and devid). */
#define DMB_VFIO_PCI_HOT_RESET_FLAG_DEV_ID (1u << 0)
#define DMB_VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED (1u << 1)
#define DMB_VFIO_PCI_DEVID_OWNED 0u
#define DMB_VFIO_PCI_DEVID_NOT_OWNED 0xFFFFFFFFu

/* VFIO_DEVICE_FEATURE_DMA_BUF (6.19): export BAR ranges as a dma-buf.
 * Issued as VFIO_DEVICE_FEATURE with flags GET | 11; the argument is
 * struct vfio_device_feature (8 bytes) immediately followed by
 * struct dmb_vfio_device_feature_dma_buf and its ranges, and the ioctl
 * returns the new dma-buf fd. */
#define DMB_VFIO_DEVICE_FEATURE_DMA_BUF 11u
struct dmb_vfio_region_dma_range {
	uint64_t offset; /* within the BAR, page aligned */
	uint64_t length; /* page aligned, non-zero */
};
struct dmb_vfio_device_feature_dma_buf {
	uint32_t region_index; /* BAR 0-5 */
	uint32_t open_flags;   /* of the new fd, e.g. O_RDWR | O_CLOEXEC */
	uint32_t flags;        /* must be 0 */
	uint32_t nr_ranges;    /* >= 1; iommufd imports only exactly 1 */
	struct dmb_vfio_region_dma_range dma_ranges[];
};

/* The whole VFIO_DEVICE_FEATURE argument for a one-range export. The
 * headers are spelled out without their flexible arrays (a struct ending in
 * one may not be nested before other members). */
struct dmb_vfio_dma_buf_one {
	struct {
		uint32_t argsz;  /* sizeof(*this) */
		uint32_t flags;  /* VFIO_DEVICE_FEATURE_GET | 11 */
	} hdr;                   /* struct vfio_device_feature */
	struct {
		uint32_t region_index;
		uint32_t open_flags;
		uint32_t flags;
		uint32_t nr_ranges;
	} buf;                   /* struct dmb_vfio_device_feature_dma_buf */
	struct dmb_vfio_region_dma_range range;
};

DMB_UAPI_ASSERT_SIZE(struct dmb_vfio_device_bind_iommufd, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_bind_iommufd, iommufd, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_bind_iommufd, out_devid, 12);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_bind_iommufd, token_uuid_ptr, 16);
DMB_UAPI_ASSERT_SIZE(struct dmb_vfio_device_attach_iommufd_pt, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_attach_iommufd_pt, pt_id, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_attach_iommufd_pt, pasid, 12);
DMB_UAPI_ASSERT_SIZE(struct dmb_vfio_device_detach_iommufd_pt, 12);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_detach_iommufd_pt, pasid, 8);
DMB_UAPI_ASSERT_SIZE(struct dmb_vfio_region_dma_range, 16);
DMB_UAPI_ASSERT_SIZE(struct dmb_vfio_device_feature_dma_buf, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_feature_dma_buf, nr_ranges, 12);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_device_feature_dma_buf, dma_ranges, 16);
DMB_UAPI_ASSERT_SIZE(struct vfio_device_feature, 8);
DMB_UAPI_ASSERT_SIZE(struct dmb_vfio_dma_buf_one, 40);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_dma_buf_one, buf.region_index, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_dma_buf_one, buf.open_flags, 12);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_dma_buf_one, buf.nr_ranges, 20);
DMB_UAPI_ASSERT_OFF(struct dmb_vfio_dma_buf_one, range, 24);

_Static_assert(DMB_VFIO_DEVICE_BIND_IOMMUFD == 0x3B76, "VFIO_DEVICE_BIND_IOMMUFD");
_Static_assert(DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT == 0x3B77, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
_Static_assert(DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT == 0x3B78, "VFIO_DEVICE_DETACH_IOMMUFD_PT");
_Static_assert(VFIO_DEVICE_FEATURE == 0x3B75, "VFIO_DEVICE_FEATURE");
_Static_assert(VFIO_DEVICE_FEATURE_GET == 0x10000 && VFIO_DEVICE_FEATURE_PROBE == 0x40000,
	       "VFIO_DEVICE_FEATURE flags");
