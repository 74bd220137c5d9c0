/* uapi/iommufd.h — our own definitions of the iommufd uAPI (/dev/iommu).
 *
 * The build machine carries Linux 6.1 headers, which have no
 * <linux/iommufd.h>; newer systems have one whose names would clash with a
 * verbatim copy. So every name here carries a dmb_/DMB_ prefix and is
 * otherwise spelled as in the kernel's include/uapi/linux/iommufd.h, and the
 * layouts are pinned by _Static_assert against the values re-derived from a
 * 7.0 tree's include/uapi/linux/iommufd.h.
 *
 * Conventions of this uAPI (drivers/iommu/iommufd/main.c):
 * - Every command is _IO(';', nr): no size or direction bits. A number
 *   built with _IOW/_IOWR is simply unknown to the kernel (ENOTTY).
 * - "size-first": the first u32 of every argument is `size`, the sizeof
 *   the caller was built with. Smaller than the command's minimum is EINVAL;
 *   bytes beyond the kernel's struct must be zero (E2BIG).
 * - Non-zero __reserved fields and unknown flag bits are EOPNOTSUPP.
 * - Object IDs are u32, per iommufd file, never 0.
 * - LP64 only: __aligned_u64 is a plain uint64_t there. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

typedef uint64_t dmb_aligned_u64 __attribute__((aligned(8)));

#define DMB_IOMMUFD_TYPE ';' /* 0x3B, shared with VFIO */

/* nr 0x80 … 0x95; only what dmabroker uses is defined. */
#define DMB_IOMMU_DESTROY             _IO(DMB_IOMMUFD_TYPE, 0x80) /* 0x3B80, 6.2 */
#define DMB_IOMMU_IOAS_ALLOC          _IO(DMB_IOMMUFD_TYPE, 0x81) /* 0x3B81, 6.2 */
#define DMB_IOMMU_IOAS_ALLOW_IOVAS    _IO(DMB_IOMMUFD_TYPE, 0x82) /* 0x3B82, 6.2 */
#define DMB_IOMMU_IOAS_IOVA_RANGES    _IO(DMB_IOMMUFD_TYPE, 0x84) /* 0x3B84, 6.2 */
#define DMB_IOMMU_IOAS_MAP            _IO(DMB_IOMMUFD_TYPE, 0x85) /* 0x3B85, 6.2 */
#define DMB_IOMMU_IOAS_UNMAP          _IO(DMB_IOMMUFD_TYPE, 0x86) /* 0x3B86, 6.2 */
#define DMB_IOMMU_OPTION              _IO(DMB_IOMMUFD_TYPE, 0x87) /* 0x3B87, 6.2 */
#define DMB_IOMMU_GET_HW_INFO         _IO(DMB_IOMMUFD_TYPE, 0x8A) /* 0x3B8A, 6.6 */
#define DMB_IOMMU_IOAS_MAP_FILE       _IO(DMB_IOMMUFD_TYPE, 0x8F) /* 0x3B8F, 6.13 */
#define DMB_IOMMU_IOAS_CHANGE_PROCESS _IO(DMB_IOMMUFD_TYPE, 0x92) /* 0x3B92, 6.13 */
#define DMB_IOMMU_IOAS_NOIOMMU_GET_PA _IO(DMB_IOMMUFD_TYPE, 0x95) /* 0x3B95, 7.3 */

/* IOMMU_DESTROY: destroy any destroyable object (EBUSY while in use). */
struct dmb_iommu_destroy {
	uint32_t size;
	uint32_t id;
};

/* IOMMU_IOAS_ALLOC: a new, empty IO address space. */
struct dmb_iommu_ioas_alloc {
	uint32_t size;
	uint32_t flags; /* must be 0 */
	uint32_t out_ioas_id;
};

/* One IOVA interval, `last` inclusive. */
struct dmb_iommu_iova_range {
	dmb_aligned_u64 start;
	dmb_aligned_u64 last;
};

/* IOMMU_IOAS_IOVA_RANGES: the holes between reserved regions. Two-call
 * protocol: num_iovas in = capacity, out = total; EMSGSIZE (with the struct
 * still written back) when the total exceeded the capacity. */
struct dmb_iommu_ioas_iova_ranges {
	uint32_t size;
	uint32_t ioas_id;
	uint32_t num_iovas;
	uint32_t __reserved;
	dmb_aligned_u64 allowed_iovas; /* struct dmb_iommu_iova_range * */
	dmb_aligned_u64 out_iova_alignment;
};

/* IOMMU_IOAS_ALLOW_IOVAS: restrict automatic IOVA allocation. */
struct dmb_iommu_ioas_allow_iovas {
	uint32_t size;
	uint32_t ioas_id;
	uint32_t num_iovas;
	uint32_t __reserved;
	dmb_aligned_u64 allowed_iovas; /* struct dmb_iommu_iova_range * */
};

/* Flags shared by IOAS_MAP, IOAS_MAP_FILE (and IOAS_COPY). */
enum {
	DMB_IOMMU_IOAS_MAP_FIXED_IOVA = 1u << 0,
	DMB_IOMMU_IOAS_MAP_WRITEABLE = 1u << 1, /* the device may write */
	DMB_IOMMU_IOAS_MAP_READABLE = 1u << 2,  /* the device may read */
};

/* IOMMU_IOAS_MAP: map a range of this process's address space. */
struct dmb_iommu_ioas_map {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	uint32_t __reserved;
	dmb_aligned_u64 user_va;
	dmb_aligned_u64 length;
	dmb_aligned_u64 iova; /* in with FIXED_IOVA; out: the IOVA used */
};

/* IOMMU_IOAS_MAP_FILE: map [start, start+length) of a memfd / hugetlbfs
 * file (or a VFIO dma-buf, 6.19+). The mapping holds its own reference on
 * the file. `fd` occupies IOAS_MAP's __reserved slot. */
struct dmb_iommu_ioas_map_file {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	int32_t fd;
	dmb_aligned_u64 start;
	dmb_aligned_u64 length;
	dmb_aligned_u64 iova;
};

/* IOMMU_IOAS_UNMAP: remove every area wholly inside [iova, iova+length);
 * ENOENT if none, or if one straddles an end. iova 0 + length U64_MAX
 * removes everything (and succeeds on an empty IOAS). */
struct dmb_iommu_ioas_unmap {
	uint32_t size;
	uint32_t ioas_id;
	dmb_aligned_u64 iova;
	dmb_aligned_u64 length; /* in: bytes; out: bytes unmapped */
};

/* IOMMU_OPTION. Only val64 is written back. */
enum {
	DMB_IOMMU_OPTION_RLIMIT_MODE = 0, /* object_id 0; 0 per-user, 1 per-process */
	DMB_IOMMU_OPTION_HUGE_PAGES = 1,  /* object_id = IOAS */
};
enum {
	DMB_IOMMU_OPTION_OP_SET = 0,
	DMB_IOMMU_OPTION_OP_GET = 1,
};
struct dmb_iommu_option {
	uint32_t size;
	uint32_t option_id;
	uint16_t op;
	uint16_t __reserved;
	uint32_t object_id;
	dmb_aligned_u64 val64;
};

/* IOMMU_GET_HW_INFO (6.6): generic capabilities of a bound device's IOMMU.
 * Minimum size 32 (the kernel of 6.6 had a u32 __reserved where newer ones
 * have out_max_pasid_log2 + 3 reserved bytes). */
enum {
	DMB_IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1u << 0,
};
enum {
	DMB_IOMMU_HW_CAP_DIRTY_TRACKING = 1u << 0,
	DMB_IOMMU_HW_CAP_PCI_PASID_EXEC = 1u << 1,
	DMB_IOMMU_HW_CAP_PCI_PASID_PRIV = 1u << 2,
	DMB_IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1u << 3,
};
struct dmb_iommu_hw_info {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t data_len; /* in: buffer size; out: kernel's data size */
	dmb_aligned_u64 data_uptr;
	uint32_t out_data_type; /* in_data_type with FLAG_INPUT_TYPE */
	uint8_t out_max_pasid_log2;
	uint8_t __reserved[3];
	dmb_aligned_u64 out_capabilities;
};
#define DMB_IOMMU_HW_INFO_MIN_SIZE 32u

/* IOMMU_IOAS_CHANGE_PROCESS (6.13): move the pin accounting of every
 * (file-backed) area of this iommufd to the calling process. */
struct dmb_iommu_ioas_change_process {
	uint32_t size;
	uint32_t __reserved;
};

/* IOMMU_IOAS_NOIOMMU_GET_PA (7.3, CONFIG_IOMMUFD_NOIOMMU): the physical
 * address behind an IOVA of an IOAS whose areas a no-IOMMU device holds
 * (ioas.c iommufd_ioas_noiommu_get_pa, io_pagetable.c iopt_get_phys).
 * Needs CAP_SYS_RAWIO (EPERM); flags and __reserved 0 (EOPNOTSUPP); length
 * 0 is EINVAL; ENOENT when iova is not mapped; EOPNOTSUPP when the area's
 * storage domain is not the no-IOMMU one (no such device attached). On
 * return length is the physically contiguous length from out_phys, in
 * PAGE_SIZE steps, capped by the length asked and the area's end. */
struct dmb_iommu_ioas_noiommu_get_pa {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	uint32_t __reserved;
	dmb_aligned_u64 iova;
	dmb_aligned_u64 length;   /* in: at most this many bytes; out: contiguous */
	dmb_aligned_u64 out_phys;
};

/* Layouts, from include/uapi/linux/iommufd.h (LP64). */
#define DMB_UAPI_ASSERT_SIZE(t, n) _Static_assert(sizeof(t) == (n), #t " must be " #n " bytes")
#define DMB_UAPI_ASSERT_OFF(t, f, n) \
	_Static_assert(offsetof(t, f) == (n), #t "." #f " must be at offset " #n)

DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_destroy, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_destroy, id, 4);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_alloc, 12);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_alloc, out_ioas_id, 8);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_iova_range, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_iova_range, last, 8);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_iova_ranges, 32);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_iova_ranges, num_iovas, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_iova_ranges, allowed_iovas, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_iova_ranges, out_iova_alignment, 24);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_allow_iovas, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_allow_iovas, allowed_iovas, 16);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_map, 40);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map, ioas_id, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map, user_va, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map, length, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map, iova, 32);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_map_file, 40);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map_file, fd, 12);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map_file, start, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map_file, length, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_map_file, iova, 32);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_unmap, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_unmap, iova, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_unmap, length, 16);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_option, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_option, op, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_option, object_id, 12);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_option, val64, 16);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_hw_info, 40);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_hw_info, data_uptr, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_hw_info, out_data_type, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_hw_info, out_max_pasid_log2, 28);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_hw_info, out_capabilities, 32);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_change_process, 8);
DMB_UAPI_ASSERT_SIZE(struct dmb_iommu_ioas_noiommu_get_pa, 40);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_noiommu_get_pa, ioas_id, 8);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_noiommu_get_pa, iova, 16);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_noiommu_get_pa, length, 24);
DMB_UAPI_ASSERT_OFF(struct dmb_iommu_ioas_noiommu_get_pa, out_phys, 32);

_Static_assert(DMB_IOMMU_DESTROY == 0x3B80, "IOMMU_DESTROY");
_Static_assert(DMB_IOMMU_IOAS_MAP_FILE == 0x3B8F, "IOMMU_IOAS_MAP_FILE");
_Static_assert(DMB_IOMMU_IOAS_CHANGE_PROCESS == 0x3B92, "IOMMU_IOAS_CHANGE_PROCESS");
_Static_assert(DMB_IOMMU_IOAS_NOIOMMU_GET_PA == 0x3B95, "IOMMU_IOAS_NOIOMMU_GET_PA");
