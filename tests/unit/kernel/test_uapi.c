/* Every ioctl number and every struct layout we send to the kernel, against
 * the hex values and offsets of the kernel's own uapi headers
 * (include/uapi/linux/iommufd.h and vfio.h, Linux 7.0). The headers also _Static_assert most of this; the test
 * states the documented numbers once more, independently, so a mistaken
 * edit of a header and its assert together still fails here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "backend/uapi/iommufd.h"
#include "backend/uapi/vfio_cdev.h"
#include "backend/uapi/vfio_container.h"

#define NUM(x, hex) assert_int_equal((unsigned long)(x), (unsigned long)(hex))
#define SIZE(t, n) assert_int_equal(sizeof(t), (n))
#define OFF(t, f, n) assert_int_equal(offsetof(t, f), (n))

static void test_iommufd_numbers(void **state)
{
	(void)state;
	NUM(DMB_IOMMU_DESTROY, 0x3B80);
	NUM(DMB_IOMMU_IOAS_ALLOC, 0x3B81);
	NUM(DMB_IOMMU_IOAS_ALLOW_IOVAS, 0x3B82);
	NUM(DMB_IOMMU_IOAS_IOVA_RANGES, 0x3B84);
	NUM(DMB_IOMMU_IOAS_MAP, 0x3B85);
	NUM(DMB_IOMMU_IOAS_UNMAP, 0x3B86);
	NUM(DMB_IOMMU_OPTION, 0x3B87);
	NUM(DMB_IOMMU_GET_HW_INFO, 0x3B8A);
	NUM(DMB_IOMMU_IOAS_MAP_FILE, 0x3B8F);
	NUM(DMB_IOMMU_IOAS_CHANGE_PROCESS, 0x3B92);
	/* _IO: no size, no direction bits */
	NUM(_IOC_SIZE(DMB_IOMMU_IOAS_MAP), 0);
	NUM(_IOC_DIR(DMB_IOMMU_IOAS_MAP), _IOC_NONE);

	NUM(DMB_IOMMU_IOAS_MAP_FIXED_IOVA, 0x1);
	NUM(DMB_IOMMU_IOAS_MAP_WRITEABLE, 0x2);
	NUM(DMB_IOMMU_IOAS_MAP_READABLE, 0x4);
	NUM(DMB_IOMMU_OPTION_RLIMIT_MODE, 0);
	NUM(DMB_IOMMU_OPTION_HUGE_PAGES, 1);
	NUM(DMB_IOMMU_OPTION_OP_SET, 0);
	NUM(DMB_IOMMU_OPTION_OP_GET, 1);
	NUM(DMB_IOMMU_HW_CAP_DIRTY_TRACKING, 0x1);
	NUM(DMB_IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED, 0x8);
}

static void test_iommufd_layouts(void **state)
{
	(void)state;
	SIZE(struct dmb_iommu_destroy, 8);
	OFF(struct dmb_iommu_destroy, id, 4);
	SIZE(struct dmb_iommu_ioas_alloc, 12);
	OFF(struct dmb_iommu_ioas_alloc, flags, 4);
	OFF(struct dmb_iommu_ioas_alloc, out_ioas_id, 8);
	SIZE(struct dmb_iommu_iova_range, 16);
	SIZE(struct dmb_iommu_ioas_iova_ranges, 32);
	OFF(struct dmb_iommu_ioas_iova_ranges, ioas_id, 4);
	OFF(struct dmb_iommu_ioas_iova_ranges, num_iovas, 8);
	OFF(struct dmb_iommu_ioas_iova_ranges, __reserved, 12);
	OFF(struct dmb_iommu_ioas_iova_ranges, allowed_iovas, 16);
	OFF(struct dmb_iommu_ioas_iova_ranges, out_iova_alignment, 24);
	SIZE(struct dmb_iommu_ioas_allow_iovas, 24);
	OFF(struct dmb_iommu_ioas_allow_iovas, num_iovas, 8);
	OFF(struct dmb_iommu_ioas_allow_iovas, allowed_iovas, 16);
	SIZE(struct dmb_iommu_ioas_map, 40);
	OFF(struct dmb_iommu_ioas_map, flags, 4);
	OFF(struct dmb_iommu_ioas_map, ioas_id, 8);
	OFF(struct dmb_iommu_ioas_map, __reserved, 12);
	OFF(struct dmb_iommu_ioas_map, user_va, 16);
	OFF(struct dmb_iommu_ioas_map, length, 24);
	OFF(struct dmb_iommu_ioas_map, iova, 32);
	SIZE(struct dmb_iommu_ioas_map_file, 40);
	OFF(struct dmb_iommu_ioas_map_file, ioas_id, 8);
	OFF(struct dmb_iommu_ioas_map_file, fd, 12);
	OFF(struct dmb_iommu_ioas_map_file, start, 16);
	OFF(struct dmb_iommu_ioas_map_file, length, 24);
	OFF(struct dmb_iommu_ioas_map_file, iova, 32);
	SIZE(struct dmb_iommu_ioas_unmap, 24);
	OFF(struct dmb_iommu_ioas_unmap, ioas_id, 4);
	OFF(struct dmb_iommu_ioas_unmap, iova, 8);
	OFF(struct dmb_iommu_ioas_unmap, length, 16);
	SIZE(struct dmb_iommu_option, 24);
	OFF(struct dmb_iommu_option, option_id, 4);
	OFF(struct dmb_iommu_option, op, 8);
	OFF(struct dmb_iommu_option, __reserved, 10);
	OFF(struct dmb_iommu_option, object_id, 12);
	OFF(struct dmb_iommu_option, val64, 16);
	SIZE(struct dmb_iommu_hw_info, 40);
	OFF(struct dmb_iommu_hw_info, dev_id, 8);
	OFF(struct dmb_iommu_hw_info, data_len, 12);
	OFF(struct dmb_iommu_hw_info, data_uptr, 16);
	OFF(struct dmb_iommu_hw_info, out_data_type, 24);
	OFF(struct dmb_iommu_hw_info, out_max_pasid_log2, 28);
	OFF(struct dmb_iommu_hw_info, out_capabilities, 32);
	SIZE(struct dmb_iommu_ioas_change_process, 8);
	OFF(struct dmb_iommu_ioas_change_process, __reserved, 4);
}

static void test_vfio_numbers(void **state)
{
	(void)state;
	NUM(VFIO_GET_API_VERSION, 0x3B64);
	NUM(VFIO_CHECK_EXTENSION, 0x3B65);
	NUM(VFIO_SET_IOMMU, 0x3B66);
	NUM(VFIO_GROUP_GET_STATUS, 0x3B67);
	NUM(VFIO_GROUP_SET_CONTAINER, 0x3B68);
	NUM(VFIO_GROUP_UNSET_CONTAINER, 0x3B69);
	NUM(VFIO_GROUP_GET_DEVICE_FD, 0x3B6A);
	NUM(VFIO_DEVICE_GET_INFO, 0x3B6B);
	NUM(VFIO_DEVICE_GET_REGION_INFO, 0x3B6C);
	NUM(VFIO_DEVICE_RESET, 0x3B6F);
	NUM(VFIO_IOMMU_GET_INFO, 0x3B70);
	NUM(VFIO_IOMMU_MAP_DMA, 0x3B71);
	NUM(VFIO_IOMMU_UNMAP_DMA, 0x3B72);
	NUM(VFIO_DEVICE_FEATURE, 0x3B75);
	NUM(DMB_VFIO_DEVICE_BIND_IOMMUFD, 0x3B76);
	NUM(DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3B77);
	NUM(DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3B78);
	NUM(_IOC_SIZE(DMB_VFIO_DEVICE_BIND_IOMMUFD), 0);

	NUM(VFIO_TYPE1v2_IOMMU, 3);
	NUM(VFIO_UNMAP_ALL, 9);
	NUM(VFIO_UPDATE_VADDR, 10);
	NUM(VFIO_DMA_MAP_FLAG_READ, 0x1);
	NUM(VFIO_DMA_MAP_FLAG_WRITE, 0x2);
	NUM(VFIO_DMA_UNMAP_FLAG_ALL, 0x2);
	NUM(VFIO_GROUP_FLAGS_VIABLE, 0x1);
	NUM(DMB_VFIO_DEVICE_FEATURE_DMA_BUF, 11);
	NUM(VFIO_DEVICE_FEATURE_GET | DMB_VFIO_DEVICE_FEATURE_DMA_BUF, 0x1000B);
	NUM(VFIO_DEVICE_FEATURE_PROBE, 0x40000);
	/* region info, the config region */
	NUM(VFIO_REGION_INFO_FLAG_READ, 0x1);
	NUM(VFIO_REGION_INFO_FLAG_WRITE, 0x2);
	NUM(VFIO_REGION_INFO_FLAG_MMAP, 0x4);
	NUM(VFIO_PCI_BAR0_REGION_INDEX, 0);
	NUM(VFIO_PCI_BAR5_REGION_INDEX, 5);
	NUM(VFIO_PCI_CONFIG_REGION_INDEX, 7);
	NUM(DMB_VFIO_DEVICE_BIND_FLAG_TOKEN, 0x1);
	NUM(DMB_VFIO_DEVICE_ATTACH_PASID, 0x1);
	NUM(DMB_VFIO_PCI_HOT_RESET_FLAG_DEV_ID, 0x1);
	NUM(DMB_VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED, 0x2);
	NUM(DMB_VFIO_PCI_DEVID_NOT_OWNED, 0xFFFFFFFFu);
}

static void test_vfio_layouts(void **state)
{
	(void)state;
	SIZE(struct dmb_vfio_device_bind_iommufd, 24);
	OFF(struct dmb_vfio_device_bind_iommufd, flags, 4);
	OFF(struct dmb_vfio_device_bind_iommufd, iommufd, 8);
	OFF(struct dmb_vfio_device_bind_iommufd, out_devid, 12);
	OFF(struct dmb_vfio_device_bind_iommufd, token_uuid_ptr, 16);
	NUM(DMB_VFIO_BIND_IOMMUFD_MINSZ, 16);
	SIZE(struct dmb_vfio_device_attach_iommufd_pt, 16);
	OFF(struct dmb_vfio_device_attach_iommufd_pt, pt_id, 8);
	OFF(struct dmb_vfio_device_attach_iommufd_pt, pasid, 12);
	NUM(DMB_VFIO_ATTACH_IOMMUFD_PT_MINSZ, 12);
	SIZE(struct dmb_vfio_device_detach_iommufd_pt, 12);
	OFF(struct dmb_vfio_device_detach_iommufd_pt, pasid, 8);
	NUM(DMB_VFIO_DETACH_IOMMUFD_PT_MINSZ, 8);
	SIZE(struct dmb_vfio_region_dma_range, 16);
	OFF(struct dmb_vfio_region_dma_range, length, 8);
	SIZE(struct dmb_vfio_device_feature_dma_buf, 16);
	OFF(struct dmb_vfio_device_feature_dma_buf, open_flags, 4);
	OFF(struct dmb_vfio_device_feature_dma_buf, flags, 8);
	OFF(struct dmb_vfio_device_feature_dma_buf, nr_ranges, 12);
	OFF(struct dmb_vfio_device_feature_dma_buf, dma_ranges, 16);
	/* the whole VFIO_DEVICE_FEATURE argument: argsz = 24 + 16 * nr */
	SIZE(struct dmb_vfio_dma_buf_one, 24 + 16);
	OFF(struct dmb_vfio_dma_buf_one, buf.region_index, 8);
	OFF(struct dmb_vfio_dma_buf_one, range.offset, 24);

	SIZE(struct vfio_group_status, 8);
	SIZE(struct vfio_info_cap_header, 8);
	SIZE(struct vfio_iommu_type1_info, 24);
	OFF(struct vfio_iommu_type1_info, iova_pgsizes, 8);
	OFF(struct vfio_iommu_type1_info, cap_offset, 16);
	SIZE(struct vfio_iommu_type1_info_cap_iova_range, 16);
	OFF(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges, 16);
	SIZE(struct vfio_iova_range, 16);
	/* type1 GET_INFO quirks: 4 hidden bytes at 12; DMA_AVAIL is 12 bytes */
	SIZE(struct vfio_iommu_type1_info_cap_migration, 32);
	OFF(struct vfio_iommu_type1_info_cap_migration, pgsize_bitmap, 16);
	OFF(struct vfio_iommu_type1_info_cap_migration, max_dirty_bitmap_size, 24);
	SIZE(struct vfio_iommu_type1_info_dma_avail, 12);
	SIZE(struct vfio_iommu_type1_dma_map, 32);
	OFF(struct vfio_iommu_type1_dma_map, vaddr, 8);
	OFF(struct vfio_iommu_type1_dma_map, iova, 16);
	OFF(struct vfio_iommu_type1_dma_map, size, 24);
	SIZE(struct vfio_iommu_type1_dma_unmap, 24);
	OFF(struct vfio_iommu_type1_dma_unmap, iova, 8);
	OFF(struct vfio_iommu_type1_dma_unmap, size, 16);
	SIZE(struct vfio_region_info, 32);
	OFF(struct vfio_region_info, flags, 4);
	OFF(struct vfio_region_info, index, 8);
	OFF(struct vfio_region_info, cap_offset, 12);
	OFF(struct vfio_region_info, size, 16);
	OFF(struct vfio_region_info, offset, 24);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_iommufd_numbers),
		cmocka_unit_test(test_iommufd_layouts),
		cmocka_unit_test(test_vfio_numbers),
		cmocka_unit_test(test_vfio_layouts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
