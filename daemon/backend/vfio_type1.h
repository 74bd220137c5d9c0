/* vfio_type1.h — the parts of the vfio-type1 backend that unit tests call
 * directly. The backend itself is reached through backend.h
 * (dmb_type1_create). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

/* What VFIO_IOMMU_GET_INFO said, decoded. */
struct dmb_type1_info {
	struct dmb_iova_info iova;     /* what iova_info reports */
	uint64_t iova_pgsizes;         /* 0 when the PGSIZES flag was clear */
	uint32_t nr_iovas;             /* ranges the kernel reported (may exceed iova.n) */
	bool has_iova_range;
	bool has_dma_avail;
	uint32_t dma_avail;
	bool has_migration;
	uint32_t mig_flags;
	uint64_t mig_pgsize_bitmap;
	uint64_t mig_max_dirty_bitmap_size;
};

/* Decodes the buffer of a (second) VFIO_IOMMU_GET_INFO call: `len` bytes
 * starting with struct vfio_iommu_type1_info, followed by the capability
 * chain. Walks the chain by `next` (strictly increasing offsets, every cap
 * inside the buffer) and matches ids, so the chain's padding rules do not
 * matter. `entry_limit` is vfio_iommu_type1.dma_entry_limit (0 if unknown).
 *
 * - alignment: lowest set bit of iova_pgsizes (host page size without it);
 * - ranges: the IOVA_RANGE cap, first DMB_MAX_IOVA_RANGES of them; without
 *   the cap (kernels before 5.4) one range [0, 2^64-1];
 * - max_mappings/mappings_available: from DMA_AVAIL and entry_limit; 0
 *   (no limit known) without DMA_AVAIL or when avail is 0xFFFFFFFF (the
 *   iommufd compat container, which has no limit).
 * Returns 0, or -EPROTO for a malformed buffer or chain. */
int dmb_type1_parse_info(const void *buf, size_t len, uint32_t entry_limit,
			 struct dmb_type1_info *out);

/* vfio_iommu_type1's default dma_entry_limit (U16_MAX). */
#define DMB_TYPE1_DEFAULT_ENTRY_LIMIT 65535u
