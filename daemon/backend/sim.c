/* sim.c — the simulated backend: an in-process model of iommufd IOAS
 * semantics, plus the DMA engine tests use to prove that a mapping reaches
 * real memory.
 *
 * One sim context is one IOAS with a domain attached (kernel-uapi.md §1.4):
 * - IOVA space: a 48-bit aperture minus the x86 MSI window, both modelled as
 *   reserved regions exactly as the kernel reports them; alignment 4096.
 * - Page table: an ordered map (RB tree keyed by IOVA) of areas. One map call
 *   is one area; areas are never merged or split.
 * - Each area holds a reference on its region, as the kernel holds a file
 *   reference per area, so a region closed while mapped stays valid (and its
 *   mmap stays readable by the DMA engine) until its last area goes.
 * - Pinned bytes are the sum of area lengths across all contexts (the
 *   kernel pins and accounts per area; the sim has no COPY, so no sharing).
 *
 * Error model: every kernel rule is enforced here even though the core
 * checks first, in the kernel's order — flags and argument checks, then
 * IOVA checks (alignment, reserved, overlap), then pin-time checks (range
 * past the file, write pin of read-only memory). Errors carry the kernel's
 * errno.
 *
 * Threading (backend.h): calls on one context are serialised by the caller,
 * so a context needs no lock. State shared between contexts is the pinned
 * counter and the live-object counter (atomics) and a region's refcount
 * (atomic: areas of different contexts reference the same region).
 *
 * Devices: dev_open/dev_close/dev_fd are NULL for now. Simulated PCI
 * devices will hang off struct sim_ctx, add their reserved regions to
 * ctx->reserved (iova_info re-derives the usable ranges from it), and reach
 * memory only through sim_dma_xfer(), the same engine the dma op uses. A
 * BAR backed by memory can then be a sim_region of its own so P2P areas
 * reference it exactly like RAM areas.
 */
#include "backend.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/tree.h>

#include "util/log.h"
#include "util/macro.h"

#define SIM_IOVA_ALIGNMENT UINT64_C(4096)
#define SIM_APERTURE_BITS 48
#define SIM_APERTURE_LAST ((UINT64_C(1) << SIM_APERTURE_BITS) - 1)
#define SIM_MSI_START UINT64_C(0xFEE00000)
#define SIM_MSI_LAST UINT64_C(0xFEEFFFFF)

/* Reserved regions fit the wire's range array: n reserved regions leave at
 * most n + 1 usable ranges. */
#define SIM_MAX_RESERVED (DMB_MAX_IOVA_RANGES - 1)

/* Freed area nodes a context keeps for reuse, so the map/unmap hot path does
 * not go to malloc. Bounded so that unmapping a million areas does not pin
 * their memory for the context's lifetime (64 Ki nodes is about 5 MiB). */
#define SIM_AREA_CACHE_MAX 65536u

struct sim_backend {
	struct dmb_backend base;
	bool populate;                   /* touch every page on map */
	_Atomic uint64_t pinned;         /* bytes, across all contexts */
	_Atomic long live;               /* open contexts + regions */
};

/* A registered region: the daemon's own mmap of the file and a dup of its
 * fd. Refcounted: the core's handle is one reference, each area another. */
struct sim_region {
	struct dmb_bregion base;
	_Atomic unsigned long refs;
	int fd;
	uint8_t *mem;                    /* MAP_SHARED, `size` bytes */
	uint64_t size;
	uint64_t page_size;
	bool writable;
};

struct sim_area {
	union {
		RB_ENTRY(sim_area) link; /* in sim_ctx.areas */
		struct sim_area *next_free; /* in sim_ctx.cache */
	};
	uint64_t iova;
	uint64_t last;                   /* inclusive */
	uint64_t offset;                 /* into region */
	struct sim_region *region;       /* one reference held */
	uint32_t prot;
};

struct sim_reserved {
	uint64_t start;
	uint64_t last;                   /* inclusive */
	const char *what;                /* for error sentences */
};

RB_HEAD(sim_area_tree, sim_area);

struct sim_ctx {
	struct dmb_bctx base;
	struct sim_backend *be;
	struct sim_area_tree areas;      /* non-overlapping, keyed by iova */
	uint64_t n_areas;
	uint64_t mapped;                 /* bytes mapped in this context */
	struct sim_area *cache;          /* free area nodes */
	unsigned n_cache;
	/* Sorted by start, non-overlapping. Fixed today; devices will add theirs. */
	struct sim_reserved reserved[SIM_MAX_RESERVED];
	size_t n_reserved;
};

static int area_cmp(const struct sim_area *a, const struct sim_area *b)
{
	return a->iova < b->iova ? -1 : a->iova > b->iova;
}

/* Not RB_GENERATE_STATIC: libbsd leaves __unused undefined (it clashes with
 * a glibc struct member), so spell the attribute out. */
RB_GENERATE_INTERNAL(sim_area_tree, sim_area, link, area_cmp, __attribute__((unused)) static)

static inline struct sim_backend *sim_of(struct dmb_backend *be)
{
	return dmb_container_of(be, struct sim_backend, base);
}

static inline struct sim_ctx *ctx_of(struct dmb_bctx *c)
{
	return dmb_container_of(c, struct sim_ctx, base);
}

static inline struct sim_region *region_of(struct dmb_bregion *r)
{
	return dmb_container_of(r, struct sim_region, base);
}

/* ---- regions ----------------------------------------------------------- */

static void region_free(struct sim_region *r)
{
	if (r->mem)
		munmap(r->mem, (size_t)r->size);
	safe_close(r->fd);
	atomic_fetch_sub_explicit(&sim_of(r->base.be)->live, 1, memory_order_relaxed);
	free(r);
}

static inline void region_ref(struct sim_region *r)
{
	atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

static inline void region_unref(struct sim_region *r)
{
	/* acq_rel: the last dropper must see every other holder's use of it. */
	if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
		region_free(r);
}

static int sim_region_open(struct dmb_backend *be, const struct dmb_region_desc *d,
			   struct dmb_bregion **out, struct dmb_err *e)
{
	if (!be || !d || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: region_open called without a region");
	if (d->fd < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF, "sim: region has no file descriptor");
	if (d->page_size == 0 || (d->page_size & (d->page_size - 1)) != 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"sim: region page size %" PRIu64 " is not a power of two", d->page_size);
	if (d->size == 0 || !dmb_is_aligned(d->size, d->page_size) || d->size > SIZE_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"sim: region size %" PRIu64 " is not a positive multiple of its page size %" PRIu64,
				d->size, d->page_size);

	struct stat st;
	if (fstat(d->fd, &st) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, errno, "sim: cannot stat the region's file: %m");
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < d->size)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"sim: region file is not a regular file of at least %" PRIu64 " bytes", d->size);

	_cleanup_close_ int fd = fcntl(d->fd, F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno, "sim: cannot duplicate the region's fd: %m");

	int prot = PROT_READ | (d->writable ? PROT_WRITE : 0);
	void *mem = mmap(NULL, (size_t)d->size, prot, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		return dmb_fail(e, errno == ENOMEM ? DMB_E_RESOURCE_EXHAUSTED : DMB_E_INVALID_ARGUMENT, errno,
				"sim: cannot mmap %" PRIu64 " bytes of the region %s: %m", d->size,
				d->writable ? "read-write" : "read-only");

	struct sim_region *r = calloc(1, sizeof(*r));
	if (!r) {
		munmap(mem, (size_t)d->size);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for a region");
	}
	r->base.be = be;
	atomic_init(&r->refs, 1);
	r->fd = TAKE_FD(fd);
	r->mem = mem;
	r->size = d->size;
	r->page_size = d->page_size;
	r->writable = d->writable;
	atomic_fetch_add_explicit(&sim_of(be)->live, 1, memory_order_relaxed);
	*out = &r->base;
	return 0;
}

/* Drops the core's reference; areas that still map the region keep it. */
static void sim_region_close(struct dmb_bregion *br)
{
	if (br)
		region_unref(region_of(br));
}

/* ---- area nodes -------------------------------------------------------- */

static struct sim_area *area_alloc(struct sim_ctx *c)
{
	struct sim_area *a = c->cache;
	if (a) {
		c->cache = a->next_free;
		c->n_cache--;
		return a;
	}
	return malloc(sizeof(*a));
}

/* Forgets a node that is already out of the tree: drops its region
 * reference and recycles it. The caller returns the pinned bytes. */
static void area_release(struct sim_ctx *c, struct sim_area *a)
{
	region_unref(a->region);
	c->n_areas--;
	c->mapped -= a->last - a->iova + 1;
	if (c->n_cache < SIM_AREA_CACHE_MAX) {
		a->next_free = c->cache;
		c->cache = a;
		c->n_cache++;
	} else {
		free(a);
	}
}

static void unpin(struct sim_ctx *c, uint64_t bytes)
{
	if (bytes)
		atomic_fetch_sub_explicit(&c->be->pinned, bytes, memory_order_relaxed);
}

/* The area containing iova, or NULL. */
static struct sim_area *area_at(struct sim_ctx *c, uint64_t iova)
{
	struct sim_area key = { .iova = iova };
	struct sim_area *a = RB_NFIND(sim_area_tree, &c->areas, &key);
	if (a && a->iova == iova)
		return a;
	a = a ? RB_PREV(sim_area_tree, &c->areas, a) : RB_MAX(sim_area_tree, &c->areas);
	return a && a->last >= iova ? a : NULL;
}

/* The lowest area intersecting [start, last], or NULL. */
static struct sim_area *area_first_in(struct sim_ctx *c, uint64_t start, uint64_t last)
{
	struct sim_area key = { .iova = start };
	struct sim_area *a = RB_NFIND(sim_area_tree, &c->areas, &key);
	if (a && a->iova == start)
		return a;
	struct sim_area *prev = a ? RB_PREV(sim_area_tree, &c->areas, a)
				  : RB_MAX(sim_area_tree, &c->areas);
	if (prev && prev->last >= start)
		return prev;
	return a && a->iova <= last ? a : NULL;
}

/* ---- contexts ---------------------------------------------------------- */

static int sim_ctx_open(struct dmb_backend *be, struct dmb_bctx **out, struct dmb_err *e)
{
	if (!be || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: ctx_open called without a backend");

	struct sim_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for a context");
	c->base.be = be;
	c->be = sim_of(be);
	RB_INIT(&c->areas);
	/* What an x86 IOMMU domain adds to an IOAS on attach (uapi §1.4). */
	c->reserved[c->n_reserved++] = (struct sim_reserved){
		SIM_MSI_START, SIM_MSI_LAST, "the x86 MSI window" };
	c->reserved[c->n_reserved++] = (struct sim_reserved){
		SIM_APERTURE_LAST + 1, UINT64_MAX, "beyond the 48-bit IOMMU aperture" };
	atomic_fetch_add_explicit(&c->be->live, 1, memory_order_relaxed);
	*out = &c->base;
	return 0;
}

/* Removes every area without rebalancing: a post-order walk that frees
 * children before their parent. Returns the bytes removed. */
static uint64_t ctx_clear(struct sim_ctx *c)
{
	uint64_t bytes = c->mapped;
	struct sim_area *a = RB_ROOT(&c->areas);

	while (a) {
		if (RB_LEFT(a, link)) {
			a = RB_LEFT(a, link);
			continue;
		}
		if (RB_RIGHT(a, link)) {
			a = RB_RIGHT(a, link);
			continue;
		}
		struct sim_area *parent = RB_PARENT(a, link);
		if (parent) {
			if (RB_LEFT(parent, link) == a)
				RB_LEFT(parent, link) = NULL;
			else
				RB_RIGHT(parent, link) = NULL;
		}
		area_release(c, a);
		a = parent;
	}
	RB_INIT(&c->areas);
	unpin(c, bytes);
	return bytes;
}

static void sim_ctx_close(struct dmb_bctx *bc)
{
	if (!bc)
		return;
	struct sim_ctx *c = ctx_of(bc);

	/* Devices will be detached and closed here, before the page table goes. */
	ctx_clear(c);
	while (c->cache) {
		struct sim_area *a = c->cache;
		c->cache = a->next_free;
		free(a);
	}
	atomic_fetch_sub_explicit(&c->be->live, 1, memory_order_relaxed);
	free(c);
}

/* The usable ranges are the holes between reserved regions, as
 * IOMMU_IOAS_IOVA_RANGES reports them. */
static int sim_iova_info(struct dmb_bctx *bc, struct dmb_iova_info *out, struct dmb_err *e)
{
	if (!bc || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: iova_info called without a context");
	struct sim_ctx *c = ctx_of(bc);

	memset(out, 0, sizeof(*out));
	uint64_t next = 0;
	bool covered_to_end = false;
	for (size_t i = 0; i < c->n_reserved; i++) {
		const struct sim_reserved *res = &c->reserved[i];
		if (res->start > next)
			out->ranges[out->n++] = (struct dmb_iova_range){ next, res->start - 1 };
		if (res->last == UINT64_MAX) {
			covered_to_end = true;
			break;
		}
		next = res->last + 1;
	}
	if (!covered_to_end)
		out->ranges[out->n++] = (struct dmb_iova_range){ next, UINT64_MAX };
	out->alignment = SIM_IOVA_ALIGNMENT;
	out->max_mappings = 0; /* iommufd has no count limit */
	return 0;
}

/* ---- map / unmap -------------------------------------------------------- */

/* Pinning faults every page in; read one byte per page of the region (a
 * hugetlb page is one page). The range is inside the mmap, and the caller
 * checked the file still covers it, so this cannot SIGBUS. */
static void populate(const struct sim_region *r, uint64_t offset, uint64_t length)
{
	uint64_t end = offset + length;
	for (uint64_t p = offset; p < end; p = (p & ~(r->page_size - 1)) + r->page_size)
		(void)*(volatile const uint8_t *)(r->mem + p);
}

static int sim_map(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset, uint64_t iova,
		   uint64_t length, uint32_t prot, struct dmb_err *e)
{
	if (!bc || !br)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: map called without a context or region");
	struct sim_ctx *c = ctx_of(bc);
	struct sim_region *r = region_of(br);
	uint64_t last;

	if (br->be != bc->be)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: region belongs to another backend");

	/* Argument checks, as iommufd_ioas_map_file() makes them. */
	if (prot == 0 || (prot & ~(uint32_t)(DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"prot 0x%" PRIx32 " must be read, write or both", prot);
	if (length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "mapping length is zero");
	if (iova == UINT64_MAX || length == UINT64_MAX || !dmb_range_last(iova, length, &last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				"IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " overflows", iova, length);

	/* IOVA checks (iopt_check_iova). */
	if (!dmb_is_aligned(iova | length | offset, SIM_IOVA_ALIGNMENT))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"IOVA 0x%" PRIx64 ", length 0x%" PRIx64 " and offset 0x%" PRIx64
				" must be multiples of 0x%" PRIx64,
				iova, length, offset, SIM_IOVA_ALIGNMENT);
	for (size_t i = 0; i < c->n_reserved; i++) {
		const struct sim_reserved *res = &c->reserved[i];
		if (iova <= res->last && res->start <= last)
			return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
					"IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] intersects reserved "
					"[0x%" PRIx64 ", 0x%" PRIx64 "] (%s)",
					iova, last, res->start, res->last, res->what);
	}
	struct sim_area *hit = area_first_in(c, iova, last);
	if (hit)
		return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
				"IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] overlaps the mapping "
				"[0x%" PRIx64 ", 0x%" PRIx64 "]",
				iova, last, hit->iova, hit->last);

	/* Pin-time checks (memfd_pin_folios, FOLL_WRITE). */
	if (offset > r->size || length > r->size - offset)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"region range [0x%" PRIx64 ", +0x%" PRIx64 ") is past its size 0x%" PRIx64,
				offset, length, r->size);
	if ((prot & DMB_PROT_WRITE) && !r->writable)
		return dmb_fail(e, DMB_E_PERMISSION_DENIED, EFAULT,
				"cannot map a read-only region for device writes");
	if (c->be->populate) {
		/* Touching pages the file no longer has would SIGBUS; the kernel
		 * refuses a range past the file's current size. */
		struct stat st;
		if (fstat(r->fd, &st) < 0)
			return dmb_fail(e, DMB_E_INTERNAL, errno, "sim: cannot stat the region's file: %m");
		if ((uint64_t)st.st_size < offset + length)
			return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
					"region file shrank to 0x%" PRIx64 " bytes, below the range",
					(uint64_t)st.st_size);
		populate(r, offset, length);
	}

	struct sim_area *a = area_alloc(c);
	if (!a)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for a mapping");
	a->iova = iova;
	a->last = last;
	a->offset = offset;
	a->prot = prot;
	a->region = r;
	if (DMB_UNLIKELY(RB_INSERT(sim_area_tree, &c->areas, a) != NULL)) {
		/* Only an equal IOVA collides, and the overlap check refused it. */
		free(a);
		return dmb_fail(e, DMB_E_INTERNAL, EEXIST, "sim: area tree out of step at 0x%" PRIx64, iova);
	}
	region_ref(r);
	c->n_areas++;
	c->mapped += length;
	atomic_fetch_add_explicit(&c->be->pinned, length, memory_order_relaxed);
	return 0;
}

static int sim_unmap_all(struct dmb_bctx *bc, uint64_t *unmapped, struct dmb_err *e)
{
	if (unmapped)
		*unmapped = 0;
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: unmap_all called without a context");
	uint64_t bytes = ctx_clear(ctx_of(bc));
	if (unmapped)
		*unmapped = bytes;
	return 0;
}

/* iopt_unmap_iova_range(): walks the areas intersecting the range from the
 * lowest up, removing each one that lies wholly inside. An area straddling
 * either end stops the walk with -ENOENT, and — as in the kernel — areas
 * already removed stay removed. *unmapped always gets the bytes actually
 * removed (the kernel does not write them back on failure; the sim does so
 * that callers and tests can see a partial unmap). */
static int sim_unmap(struct dmb_bctx *bc, uint64_t iova, uint64_t length, uint64_t *unmapped,
		     struct dmb_err *e)
{
	if (unmapped)
		*unmapped = 0;
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: unmap called without a context");
	if (iova == 0 && length == UINT64_MAX) /* the kernel's unmap-all pair */
		return sim_unmap_all(bc, unmapped, e);

	struct sim_ctx *c = ctx_of(bc);
	uint64_t last;
	if (length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "unmap length is zero");
	if (iova == UINT64_MAX || length == UINT64_MAX || !dmb_range_last(iova, length, &last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				"IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " overflows", iova, length);

	struct sim_area *a = area_first_in(c, iova, last);
	if (!a)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				"no mapping inside [0x%" PRIx64 ", 0x%" PRIx64 "]", iova, last);

	uint64_t bytes = 0;
	int r = 0;
	while (a && a->iova <= last) {
		if (a->iova < iova || a->last > last) {
			r = dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				     "mapping [0x%" PRIx64 ", 0x%" PRIx64 "] straddles the edge of "
				     "[0x%" PRIx64 ", 0x%" PRIx64 "]; a mapping is only removed whole",
				     a->iova, a->last, iova, last);
			break;
		}
		struct sim_area *next = RB_NEXT(sim_area_tree, &c->areas, a);
		RB_REMOVE(sim_area_tree, &c->areas, a);
		bytes += a->last - a->iova + 1;
		area_release(c, a);
		a = next;
	}
	unpin(c, bytes);
	if (unmapped)
		*unmapped = bytes;
	return r;
}

/* ---- the DMA engine ----------------------------------------------------- */

/* Moves len bytes between buf and [iova, iova+len) as a device would:
 * every byte is translated through this context's areas and nothing else.
 * The whole range is translated and permission-checked before the first
 * byte moves, so a fault moves nothing. to_memory is a device write (needs
 * PROT_WRITE); otherwise a device read (needs PROT_READ). */
static int sim_dma_xfer(struct sim_ctx *c, uint64_t iova, void *buf, size_t len, bool to_memory,
			struct dmb_err *e)
{
	const uint32_t need = to_memory ? DMB_PROT_WRITE : DMB_PROT_READ;
	const char *dir = to_memory ? "write" : "read";
	uint64_t last;

	if (len == 0)
		return 0;
	if (!buf)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: DMA without a buffer");
	if (!dmb_range_last(iova, len, &last))
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EFAULT,
				"DMA %s of %zu bytes at IOVA 0x%" PRIx64 " wraps the IOVA space",
				dir, len, iova);

	/* Pass 1: translate and check. */
	struct sim_area *first = area_at(c, iova), *a = first;
	uint64_t cur = iova;
	for (;;) {
		if (!a || a->iova > cur)
			return dmb_fail(e, DMB_E_NOT_FOUND, EFAULT,
					"DMA %s faulted at IOVA 0x%" PRIx64 ": no mapping there", dir, cur);
		if ((a->prot & need) != need)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, EFAULT,
					"DMA %s faulted at IOVA 0x%" PRIx64 ": the mapping "
					"[0x%" PRIx64 ", 0x%" PRIx64 "] does not allow device %ss",
					dir, cur, a->iova, a->last, dir);
		/* The kernel keeps the pages pinned if the file shrinks; the sim
		 * only has the mmap, which would SIGBUS past the file's end. */
		struct stat st;
		if (fstat(a->region->fd, &st) < 0 ||
		    (uint64_t)st.st_size < a->offset + (a->last - a->iova + 1))
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EFAULT,
					"DMA %s faulted at IOVA 0x%" PRIx64 ": the region's file shrank "
					"beneath the mapping", dir, cur);
		if (a->last >= last)
			break;
		cur = a->last + 1;
		a = RB_NEXT(sim_area_tree, &c->areas, a);
	}

	/* Pass 2: move the bytes. */
	uint8_t *p = buf;
	cur = iova;
	for (a = first;; a = RB_NEXT(sim_area_tree, &c->areas, a)) {
		uint64_t end = a->last < last ? a->last : last;
		size_t n = (size_t)(end - cur + 1);
		uint8_t *mem = a->region->mem + a->offset + (cur - a->iova);
		if (to_memory)
			memcpy(mem, p, n);
		else
			memcpy(p, mem, n);
		p += n;
		if (end == last)
			break;
		cur = end + 1;
	}
	return 0;
}

static int sim_dma(struct dmb_bctx *bc, uint64_t iova, void *buf, size_t len, bool to_memory,
		   struct dmb_err *e)
{
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dma called without a context");
	return sim_dma_xfer(ctx_of(bc), iova, buf, len, to_memory, e);
}

/* ---- the backend -------------------------------------------------------- */

static uint64_t sim_pinned_bytes(struct dmb_backend *be)
{
	return be ? atomic_load_explicit(&sim_of(be)->pinned, memory_order_relaxed) : 0;
}

static void sim_destroy(struct dmb_backend *be)
{
	if (!be)
		return;
	struct sim_backend *s = sim_of(be);
	long live = atomic_load(&s->live);
	/* Their back pointers dangle from here on: a bug in the caller. */
	if (live != 0)
		log_error("sim: backend destroyed with %ld contexts or regions still open", live);
	free(s);
}

static const char *const sim_features[] = { "map-file", "unmap-all", "dma-engine", NULL };

static const struct dmb_backend_ops sim_ops = {
	.name = "sim",
	.destroy = sim_destroy,
	.ctx_open = sim_ctx_open,
	.ctx_close = sim_ctx_close,
	.iova_info = sim_iova_info,
	.region_open = sim_region_open,
	.region_close = sim_region_close,
	.map = sim_map,
	.unmap = sim_unmap,
	.unmap_all = sim_unmap_all,
	.dev_open = NULL,
	.dev_close = NULL,
	.dev_fd = NULL,
	.dma = sim_dma,
	.pinned_bytes = sim_pinned_bytes,
};

int dmb_sim_create(const struct dmb_backend_config *cfg, struct dmb_backend **out, struct dmb_err *e)
{
	if (!out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: create called without an output");

	struct sim_backend *s = calloc(1, sizeof(*s));
	if (!s)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for the backend");
	s->base.ops = &sim_ops;
	s->base.features = sim_features;
	s->populate = cfg && cfg->sim_populate;
	atomic_init(&s->pinned, 0);
	atomic_init(&s->live, 0);
	*out = &s->base;
	return 0;
}
