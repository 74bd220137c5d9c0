/* uapi/vfio_container.h — the legacy VFIO group/container/type1 items the
 * vfio-type1 backend uses. They all exist in Linux 6.1's <linux/vfio.h>
 * (the newest, UNMAP_ALL / UPDATE_VADDR, are from 5.12), so we take them
 * from there and pin every number and layout we depend on against
 * the kernel's own layouts (LP64), so a different header
 * cannot silently change what we send.
 *
 * Two layout quirks of the type1 GET_INFO capability chain (drivers/vfio/vfio_iommu_type1.c):
 * - vfio_iommu_type1_info_cap_migration has 4 bytes of implicit padding at
 *   offset 12 (pgsize_bitmap is at 16);
 * - vfio_iommu_type1_info_dma_avail is 12 bytes but occupies 16 in the
 *   chain (entries are padded to 8). Always walk `next`, never sizeof. */
#pragma once

#include <linux/vfio.h>
#include <stddef.h>

#include "iommufd.h" /* DMB_UAPI_ASSERT_* */

#ifndef VFIO_UNMAP_ALL
#define VFIO_UNMAP_ALL 9
#endif
#ifndef VFIO_UPDATE_VADDR
#define VFIO_UPDATE_VADDR 10
#endif

_Static_assert(VFIO_API_VERSION == 0, "VFIO_API_VERSION");
_Static_assert(VFIO_GET_API_VERSION == 0x3B64, "VFIO_GET_API_VERSION");
_Static_assert(VFIO_CHECK_EXTENSION == 0x3B65, "VFIO_CHECK_EXTENSION");
_Static_assert(VFIO_SET_IOMMU == 0x3B66, "VFIO_SET_IOMMU");
_Static_assert(VFIO_GROUP_GET_STATUS == 0x3B67, "VFIO_GROUP_GET_STATUS");
_Static_assert(VFIO_GROUP_SET_CONTAINER == 0x3B68, "VFIO_GROUP_SET_CONTAINER");
_Static_assert(VFIO_GROUP_UNSET_CONTAINER == 0x3B69, "VFIO_GROUP_UNSET_CONTAINER");
_Static_assert(VFIO_GROUP_GET_DEVICE_FD == 0x3B6A, "VFIO_GROUP_GET_DEVICE_FD");
_Static_assert(VFIO_DEVICE_GET_INFO == 0x3B6B, "VFIO_DEVICE_GET_INFO");
_Static_assert(VFIO_DEVICE_GET_REGION_INFO == 0x3B6C, "VFIO_DEVICE_GET_REGION_INFO");
_Static_assert(VFIO_DEVICE_RESET == 0x3B6F, "VFIO_DEVICE_RESET");
_Static_assert(VFIO_IOMMU_GET_INFO == 0x3B70, "VFIO_IOMMU_GET_INFO");
_Static_assert(VFIO_IOMMU_MAP_DMA == 0x3B71, "VFIO_IOMMU_MAP_DMA");
_Static_assert(VFIO_IOMMU_UNMAP_DMA == 0x3B72, "VFIO_IOMMU_UNMAP_DMA");

_Static_assert(VFIO_TYPE1_IOMMU == 1 && VFIO_TYPE1v2_IOMMU == 3 && VFIO_DMA_CC_IOMMU == 4,
	       "VFIO IOMMU types");
_Static_assert(VFIO_UNMAP_ALL == 9 && VFIO_UPDATE_VADDR == 10, "VFIO extensions");
_Static_assert(VFIO_GROUP_FLAGS_VIABLE == 0x1 && VFIO_GROUP_FLAGS_CONTAINER_SET == 0x2,
	       "VFIO group flags");
_Static_assert(VFIO_IOMMU_INFO_PGSIZES == 0x1 && VFIO_IOMMU_INFO_CAPS == 0x2,
	       "VFIO_IOMMU_INFO flags");
_Static_assert(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE == 1 &&
		       VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION == 2 &&
		       VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL == 3,
	       "type1 info capability ids");
_Static_assert(VFIO_DMA_MAP_FLAG_READ == 0x1 && VFIO_DMA_MAP_FLAG_WRITE == 0x2 &&
		       VFIO_DMA_MAP_FLAG_VADDR == 0x4,
	       "VFIO_DMA_MAP flags");
_Static_assert(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP == 0x1 && VFIO_DMA_UNMAP_FLAG_ALL == 0x2 &&
		       VFIO_DMA_UNMAP_FLAG_VADDR == 0x4,
	       "VFIO_DMA_UNMAP flags");

DMB_UAPI_ASSERT_SIZE(struct vfio_group_status, 8);
DMB_UAPI_ASSERT_SIZE(struct vfio_info_cap_header, 8);
DMB_UAPI_ASSERT_OFF(struct vfio_info_cap_header, next, 4);
DMB_UAPI_ASSERT_SIZE(struct vfio_iommu_type1_info, 24);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info, iova_pgsizes, 8);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info, cap_offset, 16);
DMB_UAPI_ASSERT_SIZE(struct vfio_iova_range, 16);
DMB_UAPI_ASSERT_SIZE(struct vfio_iommu_type1_info_cap_iova_range, 16);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info_cap_iova_range, nr_iovas, 8);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges, 16);
DMB_UAPI_ASSERT_SIZE(struct vfio_iommu_type1_info_cap_migration, 32);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info_cap_migration, flags, 8);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info_cap_migration, pgsize_bitmap, 16);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info_cap_migration, max_dirty_bitmap_size, 24);
DMB_UAPI_ASSERT_SIZE(struct vfio_iommu_type1_info_dma_avail, 12);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_info_dma_avail, avail, 8);
DMB_UAPI_ASSERT_SIZE(struct vfio_iommu_type1_dma_map, 32);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_dma_map, vaddr, 8);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_dma_map, iova, 16);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_dma_map, size, 24);
DMB_UAPI_ASSERT_SIZE(struct vfio_iommu_type1_dma_unmap, 24);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_dma_unmap, iova, 8);
DMB_UAPI_ASSERT_OFF(struct vfio_iommu_type1_dma_unmap, size, 16);
DMB_UAPI_ASSERT_SIZE(struct vfio_region_info, 32);
DMB_UAPI_ASSERT_OFF(struct vfio_region_info, index, 8);
DMB_UAPI_ASSERT_OFF(struct vfio_region_info, size, 16);
DMB_UAPI_ASSERT_OFF(struct vfio_region_info, offset, 24);
/* Region info and the vfio-pci region indexes: BARs 0-5,
 * config space 7. */
_Static_assert(VFIO_REGION_INFO_FLAG_READ == 0x1 && VFIO_REGION_INFO_FLAG_WRITE == 0x2 &&
		       VFIO_REGION_INFO_FLAG_MMAP == 0x4,
	       "VFIO_REGION_INFO flags");
_Static_assert(VFIO_PCI_BAR0_REGION_INDEX == 0 && VFIO_PCI_BAR5_REGION_INDEX == 5 &&
		       VFIO_PCI_CONFIG_REGION_INDEX == 7,
	       "vfio-pci region indexes");
