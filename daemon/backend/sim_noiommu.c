/* sim_noiommu.c — the sim backend's no-IOMMU contexts: the model of
 * iommufd's no-IOMMU mode (Linux 7.3, IOMMUFD_NOIOMMU), where a device with
 * no IOMMU in front of it is bound through its cdev (noiommu-vfioN), the
 * IOAS pins memory as usual into a software-only page table, and
 * IOMMU_IOAS_NOIOMMU_GET_PA tells the physical address behind an IOVA.
 *
 * The model:
 * - A simulated function is declared without an IOMMU by the backend's
 *   configuration (cfg->sim_noiommu_devices). It can be opened only in a
 *   no-IOMMU context, and a function with an IOMMU only in a normal one
 *   (the kernel names the cdev of the first noiommu-vfioN; the broker
 *   tells the two apart).
 * - Physical addresses. A pinned page of a region's file has a simulated
 *   physical address that depends only on the file (its inode) and the
 *   page's offset in it, so it stays the same for as long as the page is
 *   pinned, across a daemon restart too, as a pinned page stays where it
 *   is. Memory is contiguous in chunks of 16 KiB (or the region's huge
 *   page) and adjacent chunks are swapped pairwise, so a mapping of more
 *   than one chunk is not physically contiguous: PhysRanges answers
 *   several ranges, as on a real host where pinned pages are scattered.
 *     phys = tag << 36 | (chunk ^ 1) * chunk_size + offset % chunk_size
 *   where chunk = offset / chunk_size and tag (1..65535) comes from the
 *   inode. Offsets past 64 GiB cannot be told apart: a no-IOMMU context
 *   refuses to map them.
 * - phys (GET_PA) answers -EOPNOTSUPP until a device is attached (the
 *   kernel has no physical page table before that), -ENOENT for an IOVA no
 *   area holds, and otherwise the contiguous length, capped by the area's
 *   end and the length asked, as iopt_get_phys does.
 * - A device without an IOMMU DMAs to physical addresses (dev_dma): each
 *   page is looked up among the pages its own context has pinned; a page
 *   no longer pinned (unmapped) faults and no byte moves. A real device
 *   reaches all of memory, and nothing enforces a mapping's prot: the sim
 *   only refuses writes into a region the broker may not write (its mmap is
 *   read-only). What a no-IOMMU device can reach in the sim is therefore
 *   narrower than on hardware; the point it proves is that the addresses
 *   the broker hands out are the memory behind the IOVAs.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "sim_impl.h"
#include "util/log.h"
#include "util/macro.h"

SIM_AREA_TREE_GENERATE()

#define SIM_PHYS_TAG_SHIFT 36
#define SIM_PHYS_CHUNK (UINT64_C(4) * SIM_IOVA_ALIGNMENT)

static uint64_t chunk_size(const struct sim_region *r)
{
	return r->page_size > SIM_PHYS_CHUNK ? r->page_size : SIM_PHYS_CHUNK;
}

static uint64_t phys_tag(const struct sim_region *r)
{
	return r->file_ino % 0xffffu + 1;
}

uint64_t sim_phys_of(const struct sim_region *r, uint64_t off)
{
	uint64_t cs = chunk_size(r);
	return phys_tag(r) << SIM_PHYS_TAG_SHIFT | (((off / cs) ^ 1) * cs + off % cs);
}

/* The file offset of region r at physical address phys, or UINT64_MAX when
 * phys is not one of r's pages. */
static uint64_t phys_to_off(const struct sim_region *r, uint64_t phys)
{
	if (phys >> SIM_PHYS_TAG_SHIFT != phys_tag(r))
		return UINT64_MAX;
	uint64_t low = phys & ((UINT64_C(1) << SIM_PHYS_TAG_SHIFT) - 1);
	uint64_t cs = chunk_size(r);
	return ((low / cs) ^ 1) * cs + low % cs;
}

int sim_check_noiommu_map(const struct sim_ctx *c, uint64_t offset, uint64_t length,
			  struct dmb_err *e)
{
	if (c->noiommu && offset + length > UINT64_C(1) << SIM_PHYS_TAG_SHIFT)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EFBIG,
				"sim: a no-IOMMU context maps only the first 64 GiB of a file (the sim's "
				"physical addresses cannot tell further pages apart)");
	return 0;
}

int sim_ctx_set_noiommu(struct dmb_bctx *bc, struct dmb_err *e)
{
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: ctx_set_noiommu without a context");
	struct sim_ctx *c = sim_ctx_of(bc);
	sim_lock_shared(c->be);
	bool has_dev = !LIST_EMPTY(&c->devs);
	sim_unlock(c->be);
	if (has_dev)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"sim: a context with devices cannot become a no-IOMMU context");
	c->noiommu = true;
	return 0;
}

/* The device-kind rule of dev_open and dev_adopt. */
int sim_check_dev_kind(const struct sim_ctx *c, const struct sim_dev *d, struct dmb_err *e)
{
	if (d->noiommu && !c->noiommu)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENODEV,
				"%s has no IOMMU (simulated no-IOMMU device): it can only be opened in a "
				"no-IOMMU context (ContextCreate with noiommu), which gives no isolation",
				d->bdf);
	if (!d->noiommu && c->noiommu)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EINVAL,
				"%s has an IOMMU: a no-IOMMU context is only for devices without one; "
				"open it in a normal context",
				d->bdf);
	return 0;
}

int sim_phys(struct dmb_bctx *bc, uint64_t iova, uint64_t max_len, uint64_t *phys, uint64_t *len,
	     struct dmb_err *e)
{
	if (!bc || !phys || !len)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: phys called without a context");
	struct sim_ctx *c = sim_ctx_of(bc);
	/* The kernel's argument checks first: length, then the IOAS. */
	if (max_len == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "sim: GET_PA of 0 bytes");
	sim_lock_shared(c->be);
	bool has_dev = !LIST_EMPTY(&c->devs);
	sim_unlock(c->be);
	struct sim_area *a = sim_area_nfind(c, iova);
	if (!a || sim_area_iova(c, a) > iova) {
		struct sim_area *p = a ? RB_PREV(sim_area_tree, &c->areas, a)
				       : RB_MAX(sim_area_tree, &c->areas);
		a = p && sim_area_last(c, p) >= iova ? p : NULL;
	}
	if (!a)
		return -ENOENT;
	if (!c->noiommu || !has_dev)
		return -EOPNOTSUPP; /* the area's storage domain is not a no-IOMMU one */
	const struct sim_region *r = sim_area_src(c, a)->region;
	if (!r || !sim_area_claimed(a))
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
				"sim: the area at IOVA 0x%" PRIx64 " survived a restart but its source was "
				"not named again",
				iova);
	if (r->dev)
		return -EOPNOTSUPP; /* a BAR: no no-IOMMU storage */
	uint64_t a_iova = sim_area_iova(c, a), a_last = sim_area_last(c, a);
	uint64_t off = sim_area_offset(c, a) + (iova - a_iova);
	uint64_t cs = chunk_size(r);
	/* Contiguous to the end of its chunk (the next chunk is elsewhere), the
	 * end of the area and the length asked. */
	uint64_t n = cs - off % cs;
	if (n - 1 > a_last - iova)
		n = a_last - iova + 1;
	if (n > max_len)
		n = max_len;
	*phys = sim_phys_of(r, off);
	*len = n;
	return 0;
}

/* The memory at physical address phys pinned by context c (the page and the
 * bytes left in it), or NULL. */
static uint8_t *phys_mem(struct sim_ctx *c, uint64_t phys, bool write, size_t *room,
			 bool *ro)
{
	struct sim_area *a;
	*ro = false;
	RB_FOREACH(a, sim_area_tree, &c->areas) {
		const struct sim_region *r = sim_area_src(c, a)->region;
		if (!r || r->dev || !sim_area_claimed(a))
			continue;
		uint64_t off = phys_to_off(r, phys);
		uint64_t a_off = sim_area_offset(c, a), a_len = sim_area_len(c, a);
		if (off == UINT64_MAX || off < a_off || off - a_off >= a_len)
			continue;
		if (write && !r->writable) {
			*ro = true;
			continue;
		}
		uint64_t left = SIM_IOVA_ALIGNMENT - off % SIM_IOVA_ALIGNMENT;
		*room = (size_t)left;
		return r->mem + off;
	}
	return NULL;
}

#define SIM_PHYS_XFER_PAGES (65536 / 4096 + 1)

int sim_phys_xfer(struct sim_ctx *c, const char *who, uint64_t phys, void *buf, size_t len,
		  bool to_memory, struct dmb_err *e)
{
	const char *dir = to_memory ? "write" : "read";
	struct {
		uint8_t *mem;
		size_t n;
	} seg[SIM_PHYS_XFER_PAGES];
	size_t n_seg = 0, done = 0;
	uint64_t last;

	if (len == 0)
		return 0;
	if (!buf)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: DMA without a buffer");
	if (!dmb_range_last(phys, len, &last))
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EFAULT,
				"DMA %s%s of %zu bytes at physical address 0x%" PRIx64 " wraps",
				dir, who, len, phys);
	/* Pass 1: every page must be pinned memory. */
	while (done < len) {
		size_t room = 0;
		bool ro;
		uint8_t *mem = phys_mem(c, phys + done, to_memory, &room, &ro);
		if (!mem)
			return dmb_fail(e, DMB_E_NOT_FOUND, EFAULT,
					"DMA %s%s faulted at physical address 0x%" PRIx64 ": %s",
					dir, who, phys + done,
					ro ? "the region there is read-only to the broker"
					   : "no page pinned by its context is there (unmapped, or "
					     "never mapped)");
		if (n_seg == SIM_PHYS_XFER_PAGES)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG,
					"DMA %s%s of %zu bytes spans too many pages", dir, who, len);
		size_t n = room < len - done ? room : len - done;
		seg[n_seg].mem = mem;
		seg[n_seg++].n = n;
		done += n;
	}
	/* Pass 2: move the bytes. */
	uint8_t *p = buf;
	for (size_t i = 0; i < n_seg; i++) {
		if (to_memory)
			memcpy(seg[i].mem, p, seg[i].n);
		else
			memcpy(p, seg[i].mem, seg[i].n);
		p += seg[i].n;
	}
	return 0;
}
