/* sim.c — the simulated backend: an in-process model of iommufd IOAS
 * semantics, plus the DMA engine tests use to prove that a mapping reaches
 * real memory.
 *
 * One sim context is one IOAS with a domain attached (iommufd's IOAS):
 * - IOVA space: a 48-bit aperture minus the x86 MSI window, both modelled as
 *   reserved regions exactly as the kernel reports them; alignment 4096.
 * - Page table: an ordered map (RB tree keyed by IOVA) of areas. One map call
 *   is one area; areas are never merged or split.
 * - Each area holds its region through the context's source entry for it
 *   (struct sim_src: one region reference while any area of the context
 *   maps the region), as the kernel holds a file reference per area, so a
 *   region closed while mapped stays valid (and its
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
 * Devices (simulated PCI functions): a fixed set per backend, named by
 * cfg->sim_devices (default: four, 0000:0{1,2,3,4}:00.0). Each one is an
 * edu-like function (1234:11e8) that exists for the backend's lifetime;
 * dev_open attaches it to one context and dev_close detaches it again.
 * - Config space is a 256-byte memfd (sealed against resizing). dev_fd hands
 *   out that fd, so a client holding a duplicate can pwrite the command
 *   register behind the broker's back, as through a VFIO device fd; the sim
 *   reads the register from the memfd every time it needs it. Offset 0x40
 *   (device-specific space) holds a little-endian u32 count of resets.
 * - BAR0 is 1 MiB of memory backed by its own memfd, wrapped in an internal
 *   sim_region owned by the device (one reference), so a P2P area holds a
 *   reference on it exactly as a RAM area holds its region: the memory stays
 *   valid while any area maps it, whatever happens to the device. BAR1 is
 *   not implemented; BAR2 is a 256-byte I/O-port BAR (not mappable, no
 *   memory behind it); BAR3-5 are absent.
 * - Attaching a device does not change a context's IOVA ranges: a sim
 *   context already models an IOAS with a domain attached.
 * - MMIO areas (map_bar) are not pinned: pinned_bytes counts RAM only, as
 *   the kernel does not account BAR pages. *unmapped counts both.
 *
 * The DMA engine (sim_dma_xfer) serves the context-level dma op (an ideal
 * bus master with no device: no bus-master check) and dev_dma (a device:
 * its bus-master bit must be on). Both translate the whole range first (a
 * hole or a permission miss is -EFAULT), then check the target of every
 * MMIO part: a peer BAR whose memory decoding is off answers a decode error
 * (-EIO). Only then do bytes move, so a failed DMA moves nothing.
 *
 * No-IOMMU contexts (devices declared without an IOMMU, simulated physical
 * addresses, DMA to them): sim_noiommu.c.
 *
 * Restart (sim_table.c, sim_adopt.c). The sim's "kernel objects" are fds:
 * each context's authoritative state is a memfd table of its areas and
 * attached devices (sim_table.c; the RB tree is an index of it), each
 * device's state is its config and BAR0 memfds. The daemon keeps those fds
 * in the systemd fd store (ctx_fds, dev_fds) and the next process rebuilds
 * the objects from them (ctx_adopt, dev_adopt) without unmapping anything.
 * What the sim cannot keep across processes is the daemon's own access to
 * a RAM area's source: a region is the daemon's mmap, so an adopted area
 * does not move bytes until map_adopt names its region again (DMA through
 * it faults until then). The kernel keeps its own file reference instead.
 *
 * Locking. dev_lock (backend-wide rwlock) protects each device's
 * attachment (dev->ctx, the context's device list) and orders device state
 * changes against DMA: dev_open, dev_close, dev_config_write and dev_reset
 * hold it exclusive; a DMA holds it shared from the first translation to
 * the last byte moved, as do dev_config_read and map_bar. So a DMA sees one
 * consistent command register and BAR content for its whole length, and
 * once a config write clearing memory decoding (or a reset) returns, no
 * DMA started before it is still moving bytes. A client's own pwrite of the
 * config memfd is not ordered by anything, as on real hardware. Area trees
 * are per context and need no lock (backend.h); dev_lock is never taken
 * with another lock held and nothing is locked under it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sim_impl.h"
#include "util/log.h"
#include "util/macro.h"

SIM_AREA_TREE_GENERATE()

/* dev_lock is only ever taken by the sim's own functions, never nested
 * and never across a callback, so failure to lock is a bug, not a state. */
void sim_lock_shared(struct sim_backend *s)
{
	int r = pthread_rwlock_rdlock(&s->dev_lock);
	if (DMB_UNLIKELY(r != 0)) {
		log_error("sim: dev_lock rdlock failed: %s", strerror(r));
		abort();
	}
}

void sim_lock_excl(struct sim_backend *s)
{
	int r = pthread_rwlock_wrlock(&s->dev_lock);
	if (DMB_UNLIKELY(r != 0)) {
		log_error("sim: dev_lock wrlock failed: %s", strerror(r));
		abort();
	}
}

void sim_unlock(struct sim_backend *s)
{
	pthread_rwlock_unlock(&s->dev_lock);
}

/* ---- regions ----------------------------------------------------------- */

void sim_region_free(struct sim_region *r)
{
	if (r->mem)
		munmap(r->mem, (size_t)r->size);
	safe_close(r->fd);
	atomic_fetch_sub_explicit(&sim_of(r->base.be)->live, 1, memory_order_relaxed);
	free(r);
}

/* The identity of an open file, as an area record keeps it. */
int sim_file_id(int fd, uint64_t *dev, uint64_t *ino, struct dmb_err *e)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, errno, "sim: cannot stat a file: %m");
	*dev = (uint64_t)st.st_dev;
	*ino = (uint64_t)st.st_ino;
	return 0;
}

int sim_region_new(struct sim_backend *s, int fd, uint64_t size, uint64_t page_size,
		   bool writable, struct sim_region **out, struct dmb_err *e)
{
	uint64_t fdev = 0, fino = 0;
	int ret = sim_file_id(fd, &fdev, &fino, e);
	if (ret < 0)
		return ret;
	int prot = PROT_READ | (writable ? PROT_WRITE : 0);
	void *mem = mmap(NULL, (size_t)size, prot, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		return dmb_fail(e, errno == ENOMEM ? DMB_E_RESOURCE_EXHAUSTED : DMB_E_INVALID_ARGUMENT, errno,
				"sim: cannot mmap %" PRIu64 " bytes of the region %s: %m", size,
				writable ? "read-write" : "read-only");

	struct sim_region *r = calloc(1, sizeof(*r));
	if (!r) {
		munmap(mem, (size_t)size);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for a region");
	}
	r->base.be = &s->base;
	atomic_init(&r->refs, 1);
	r->fd = fd;
	r->mem = mem;
	r->size = size;
	r->page_size = page_size;
	r->file_dev = fdev;
	r->file_ino = fino;
	r->writable = writable;
	atomic_fetch_add_explicit(&s->live, 1, memory_order_relaxed);
	*out = r;
	return 0;
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

	int fd = fcntl(d->fd, F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno, "sim: cannot duplicate the region's fd: %m");

	struct sim_region *r = NULL;
	int ret = sim_region_new(sim_of(be), fd, d->size, d->page_size, d->writable, &r, e);
	if (ret < 0) {
		close(fd);
		return ret;
	}
	*out = &r->base;
	return 0;
}

/* Drops the core's reference; areas that still map the region keep it. */
static void sim_region_close(struct dmb_bregion *br)
{
	if (br)
		sim_region_unref(sim_region_of(br));
}

/* ---- area nodes -------------------------------------------------------- */

struct sim_area *sim_area_alloc(struct sim_ctx *c)
{
	struct sim_area *a = c->cache;
	if (a) {
		c->cache = a->next_free;
		c->n_cache--;
	} else {
		struct sim_area_slab *sl = c->slabs;
		if (!sl || c->slab_used == (sl->bytes - sizeof(*sl)) / sizeof(*a)) {
			uint32_t bytes = !sl ? SIM_SLAB_MIN_BYTES
				       : sl->bytes < SIM_SLAB_MAX_BYTES ? sl->bytes * 2
									 : SIM_SLAB_MAX_BYTES;
			sl = malloc(bytes);
			if (!sl)
				return NULL;
			sl->bytes = bytes;
			sl->next = c->slabs;
			c->slabs = sl;
			c->slab_used = 0;
		}
		a = &sl->nodes[c->slab_used++];
	}
	c->n_nodes++;
	return a;
}

static void area_slabs_free(struct sim_ctx *c)
{
	while (c->slabs) {
		struct sim_area_slab *sl = c->slabs;
		c->slabs = sl->next;
		free(sl);
	}
	c->cache = NULL;
	c->n_cache = 0;
	c->slab_used = 0;
}

/* Recycles a node that is in neither the tree nor the table; the last one
 * of the context gives every slab back. */
void sim_area_free(struct sim_ctx *c, struct sim_area *a)
{
	a->next_free = c->cache;
	c->cache = a;
	c->n_cache++;
	if (--c->n_nodes == 0)
		area_slabs_free(c);
}

/* Removes a node that is already out of the tree: its record leaves the
 * table first (from then on the mapping is gone, whatever happens to this
 * process), then its region reference is dropped and the node recycled.
 * Returns the RAM bytes it pinned (0 for an MMIO area), which the caller
 * returns to the backend with sim_unpin(). */
uint64_t sim_area_release(struct sim_ctx *c, struct sim_area *a)
{
	uint64_t len = sim_area_len(c, a), ram = sim_area_src(c, a)->bar ? 0 : len;

	sim_table_clear(&c->tab, a->slot);
	sim_src_put(c, a->src);
	c->n_areas--;
	c->mapped -= len;
	sim_area_free(c, a);
	return ram;
}

struct sim_area *sim_area_nfind(struct sim_ctx *c, uint64_t iova)
{
	struct sim_area *tmp = RB_ROOT(&c->areas), *res = NULL;
	while (tmp) {
		uint64_t at = sim_area_iova(c, tmp);
		if (iova < at) {
			res = tmp;
			tmp = RB_LEFT(tmp, link);
		} else if (iova > at) {
			tmp = RB_RIGHT(tmp, link);
		} else {
			return tmp;
		}
	}
	return res;
}

/* sim_area_tree_RB_INSERT with the key read from the table; keeps a's
 * owner bits. */
int sim_area_link(struct sim_ctx *c, struct sim_area *a)
{
	uint64_t iova = sim_area_iova(c, a);
	struct sim_area *parent = NULL, *tmp = RB_ROOT(&c->areas);
	bool left = false;
	while (tmp) {
		uint64_t at = sim_area_iova(c, tmp);
		parent = tmp;
		if (iova < at) {
			left = true;
			tmp = RB_LEFT(tmp, link);
		} else if (iova > at) {
			left = false;
			tmp = RB_RIGHT(tmp, link);
		} else {
			return -EEXIST;
		}
	}
	a->link.rbe_left = a->link.rbe_right = NULL;
	a->link.rbe_pc = (uintptr_t)parent | (a->link.rbe_pc & DMB_RB_OWNER_MASK) | DMB_RB_RED;
	if (!parent)
		RB_ROOT(&c->areas) = a;
	else if (left)
		RB_LEFT(parent, link) = a;
	else
		RB_RIGHT(parent, link) = a;
	dmb_rb_insert_fixup((void **)&RB_ROOT(&c->areas), a, offsetof(struct sim_area, link));
	return 0;
}

/* The area containing iova, or NULL. */
static struct sim_area *area_at(struct sim_ctx *c, uint64_t iova)
{
	struct sim_area *a = sim_area_nfind(c, iova);
	if (a && sim_area_iova(c, a) == iova)
		return a;
	a = a ? RB_PREV(sim_area_tree, &c->areas, a) : RB_MAX(sim_area_tree, &c->areas);
	return a && sim_area_last(c, a) >= iova ? a : NULL;
}

/* The lowest area intersecting [start, last], or NULL. */
struct sim_area *sim_area_first_in(struct sim_ctx *c, uint64_t start, uint64_t last)
{
	struct sim_area *a = sim_area_nfind(c, start);
	if (a && sim_area_iova(c, a) == start)
		return a;
	struct sim_area *prev = a ? RB_PREV(sim_area_tree, &c->areas, a)
				  : RB_MAX(sim_area_tree, &c->areas);
	if (prev && sim_area_last(c, prev) >= start)
		return prev;
	return a && sim_area_iova(c, a) <= last ? a : NULL;
}

/* ---- sources ----------------------------------------------------------- */

/* A free entry of c->srcs (grown if there is none), not yet in use. */
static int src_slot_entry(struct sim_ctx *c, uint32_t *idx, struct dmb_err *e)
{
	for (uint32_t i = 0; i < c->n_srcs; i++)
		if (c->srcs[i].slot == UINT32_MAX) {
			*idx = i;
			return 0;
		}
	if (c->n_srcs == c->cap_srcs) {
		uint32_t cap = c->cap_srcs ? 2 * c->cap_srcs : 4;
		struct sim_src *n = realloc(c->srcs, cap * sizeof(*n));
		if (!n)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
					"sim: out of memory for a context's sources");
		c->srcs = n;
		c->cap_srcs = cap;
	}
	c->srcs[c->n_srcs] = (struct sim_src){ .slot = UINT32_MAX };
	*idx = c->n_srcs++;
	return 0;
}

/* Sources are few (one per region or BAR the context maps), and a map
 * nearly always names the region the previous one did: the hint answers
 * it, a scan of the few others the rest. */
int sim_src_get(struct sim_ctx *c, struct sim_region *r, uint32_t *idx, struct dmb_err *e)
{
	uint32_t i = c->src_hint;
	if (i >= c->n_srcs || c->srcs[i].region != r || c->srcs[i].slot == UINT32_MAX) {
		for (i = 0; i < c->n_srcs; i++)
			if (c->srcs[i].region == r && c->srcs[i].slot != UINT32_MAX)
				break;
	}
	if (i == c->n_srcs) {
		int ret = src_slot_entry(c, &i, e);
		if (ret < 0)
			return ret;
		struct sim_rec rec = {
			.w = { r->file_dev, r->file_ino,
			       r->dev ? (uint64_t)r->dev->bdf_packed | (uint64_t)r->bar << 32 : 0 },
			.tag = r->dev ? SIM_REC_SRC_BAR : SIM_REC_SRC_RAM,
		};
		uint32_t slot;
		ret = sim_table_put(&c->tab, &rec, &slot, e);
		if (ret < 0)
			return ret;
		sim_region_ref(r);
		c->srcs[i] = (struct sim_src){ .region = r, .slot = slot, .refs = 0, .bar = r->dev != NULL };
	}
	c->srcs[i].refs++;
	c->src_hint = i;
	*idx = i;
	return 0;
}

/* Frees an entry; its record goes unless another entry shares it (an
 * alias made by adoption, sim_src_alias). */
static void src_drop(struct sim_ctx *c, struct sim_src *src)
{
	uint32_t slot = src->slot;
	if (src->region)
		sim_region_unref(src->region);
	*src = (struct sim_src){ .slot = UINT32_MAX };
	for (uint32_t i = 0; i < c->n_srcs; i++)
		if (c->srcs[i].slot == slot)
			return;
	sim_table_clear(&c->tab, slot);
}

void sim_src_put(struct sim_ctx *c, uint32_t idx)
{
	struct sim_src *src = &c->srcs[idx];
	if (--src->refs == 0)
		src_drop(c, src);
}

int sim_src_adopted(struct sim_ctx *c, uint32_t slot, bool bar, uint32_t *idx, struct dmb_err *e)
{
	int ret = src_slot_entry(c, idx, e);
	if (ret < 0)
		return ret;
	c->srcs[*idx] = (struct sim_src){ .slot = slot, .bar = bar };
	return 0;
}

int sim_src_alias(struct sim_ctx *c, uint32_t idx, struct sim_region *r, uint32_t *out,
		  struct dmb_err *e)
{
	uint32_t slot = c->srcs[idx].slot;
	bool bar = c->srcs[idx].bar;
	for (uint32_t i = 0; i < c->n_srcs; i++)
		if (c->srcs[i].slot == slot && c->srcs[i].region == r) {
			*out = i;
			return 0;
		}
	int ret = src_slot_entry(c, out, e); /* may move c->srcs */
	if (ret < 0)
		return ret;
	sim_region_ref(r);
	c->srcs[*out] = (struct sim_src){ .region = r, .slot = slot, .bar = bar };
	return 0;
}

/* Drops the sources no area names (adoption leaves them when the previous
 * process was killed between an area's removal and its source's). */
void sim_srcs_sweep(struct sim_ctx *c)
{
	for (uint32_t i = 0; i < c->n_srcs; i++)
		if (c->srcs[i].slot != UINT32_MAX && c->srcs[i].refs == 0)
			src_drop(c, &c->srcs[i]);
	if (c->n_areas == 0) {
		free(c->srcs);
		c->srcs = NULL;
		c->n_srcs = c->cap_srcs = c->src_hint = 0;
	}
}

/* ---- contexts ---------------------------------------------------------- */

/* A context without a table (ctx_open and ctx_adopt add one). */
int sim_ctx_init(struct sim_backend *s, struct sim_ctx **out, struct dmb_err *e)
{
	struct sim_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for a context");
	c->base.be = &s->base;
	c->be = s;
	c->tab.fd = -1;
	RB_INIT(&c->areas);
	LIST_INIT(&c->devs);
	/* What an x86 IOMMU domain adds to an IOAS on attach. */
	c->reserved[c->n_reserved++] = (struct sim_reserved){
		SIM_MSI_START, SIM_MSI_LAST, "the x86 MSI window" };
	c->reserved[c->n_reserved++] = (struct sim_reserved){
		SIM_APERTURE_LAST + 1, UINT64_MAX, "beyond the 48-bit IOMMU aperture" };
	*out = c;
	return 0;
}

/* Frees the memory of a context whose tree is empty and whose devices are
 * detached; closes its table (the file's contents stay as they are). */
void sim_ctx_free(struct sim_ctx *c)
{
	area_slabs_free(c);
	sim_table_close(&c->tab);
	free(c->srcs);
	free(c->pending);
	free(c);
}

static int sim_ctx_open(struct dmb_backend *be, struct dmb_bctx **out, struct dmb_err *e)
{
	if (!be || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: ctx_open called without a backend");

	struct sim_ctx *c = NULL;
	int r = sim_ctx_init(sim_of(be), &c, e);
	if (r < 0)
		return r;
	r = sim_table_create(&c->tab, e);
	if (r < 0) {
		sim_ctx_free(c);
		return r;
	}
	atomic_fetch_add_explicit(&c->be->live, 1, memory_order_relaxed);
	*out = &c->base;
	return 0;
}

/* Removes every area without rebalancing: a post-order walk that frees
 * children before their parent. Returns the bytes removed. */
static uint64_t ctx_clear(struct sim_ctx *c)
{
	uint64_t bytes = c->mapped, ram = 0;
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
		struct sim_area *parent = DMB_RB_PARENT(a, link);
		if (parent) {
			if (RB_LEFT(parent, link) == a)
				RB_LEFT(parent, link) = NULL;
			else
				RB_RIGHT(parent, link) = NULL;
		}
		ram += sim_area_release(c, a);
		a = parent;
	}
	RB_INIT(&c->areas);
	sim_unpin(c, ram);
	sim_srcs_sweep(c);
	sim_table_maybe_trim(&c->tab);
	return bytes;
}

/* Destroys the context (not a restart: a restart leaves it to the next
 * process). Devices first, so none can DMA through a half-torn page table;
 * then every area is unmapped, as closing an iommufd does. DEV records
 * left by an adoption that was never finished go too. */
static void sim_ctx_close(struct dmb_bctx *bc)
{
	if (!bc)
		return;
	struct sim_ctx *c = sim_ctx_of(bc);

	while (!LIST_EMPTY(&c->devs))
		sim_dev_close(&LIST_FIRST(&c->devs)->base);
	for (size_t i = 0; i < c->n_pending; i++)
		sim_table_clear(&c->tab, c->pending[i].slot);
	c->n_pending = 0;
	ctx_clear(c);
	atomic_fetch_sub_explicit(&c->be->live, 1, memory_order_relaxed);
	sim_ctx_free(c);
}

/* The usable ranges are the holes between reserved regions, as
 * IOMMU_IOAS_IOVA_RANGES reports them. */
static int sim_iova_info(struct dmb_bctx *bc, struct dmb_iova_info *out, struct dmb_err *e)
{
	if (!bc || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: iova_info called without a context");
	struct sim_ctx *c = sim_ctx_of(bc);

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
	out->pgsizes = SIM_IOVA_ALIGNMENT | (UINT64_C(1) << 21) | (UINT64_C(1) << 30);
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

/* The argument checks of iommufd_ioas_map_file(): prot, length, overflow.
 * Sets *last. */
int sim_check_args(uint64_t iova, uint64_t length, uint32_t prot, uint64_t *last,
		   struct dmb_err *e)
{
	if (prot == 0 || (prot & ~(uint32_t)(DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"prot 0x%" PRIx32 " must be read, write or both", prot);
	if (length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "mapping length is zero");
	if (iova == UINT64_MAX || length == UINT64_MAX || !dmb_range_last(iova, length, last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				"IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " overflows", iova, length);
	return 0;
}

/* The IOVA checks of iopt_check_iova() and the area insertion. */
int sim_check_iova(struct sim_ctx *c, uint64_t offset, uint64_t iova, uint64_t length,
		   uint64_t last, struct dmb_err *e)
{
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
	struct sim_area *hit = sim_area_first_in(c, iova, last);
	if (hit)
		return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
				"IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] overlaps the %s mapping "
				"[0x%" PRIx64 ", 0x%" PRIx64 "]",
				iova, last, sim_area_src(c, hit)->bar ? "MMIO" : "RAM",
				sim_area_iova(c, hit), sim_area_last(c, hit));
	return 0;
}

/* Commits a checked area: its source's record is in the context's table
 * (put now if the context maps r for the first time, with one reference
 * on r), then the area's record goes in (the commit point, sim_table.c),
 * then the node into the tree. RAM is pinned, MMIO not. */
int sim_area_insert(struct sim_ctx *c, struct sim_region *r, uint64_t offset, uint64_t iova,
		    uint64_t last, uint32_t prot, struct dmb_err *e)
{
	uint64_t length = last - iova + 1;
	struct sim_area *a = sim_area_alloc(c);
	if (!a)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for a mapping");
	int ret = sim_src_get(c, r, &a->src, e);
	if (ret < 0) {
		sim_area_free(c, a);
		return ret;
	}
	struct sim_rec rec = {
		.w = { iova | (prot & 3u), length, offset },
		.src = c->srcs[a->src].slot,
		.tag = SIM_REC_AREA,
	};
	ret = sim_table_put(&c->tab, &rec, &a->slot, e);
	if (ret < 0) {
		sim_src_put(c, a->src);
		sim_area_free(c, a);
		return ret;
	}
	a->link.rbe_pc = 0;
	DMB_RB_SET_OWNER_BITS(a, link, SIM_AREA_CLAIMED);
	if (DMB_UNLIKELY(sim_area_link(c, a) < 0)) {
		/* Only an equal IOVA collides, and the overlap check refused it. */
		sim_table_clear(&c->tab, a->slot);
		sim_src_put(c, a->src);
		sim_area_free(c, a);
		return dmb_fail(e, DMB_E_INTERNAL, EEXIST, "sim: area tree out of step at 0x%" PRIx64, iova);
	}
	c->n_areas++;
	c->mapped += length;
	if (!r->dev)
		atomic_fetch_add_explicit(&c->be->pinned, length, memory_order_relaxed);
	return 0;
}

static int sim_map(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset, uint64_t iova,
		   uint64_t length, uint32_t prot, struct dmb_err *e)
{
	if (!bc || !br)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: map called without a context or region");
	struct sim_ctx *c = sim_ctx_of(bc);
	struct sim_region *r = sim_region_of(br);
	uint64_t last;

	if (br->be != bc->be)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: region belongs to another backend");

	int ret = sim_check_args(iova, length, prot, &last, e);
	if (ret < 0)
		return ret;
	ret = sim_check_iova(c, offset, iova, length, last, e);
	if (ret < 0)
		return ret;
	ret = sim_check_noiommu_map(c, offset, length, e);
	if (ret < 0)
		return ret;

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
	return sim_area_insert(c, r, offset, iova, last, prot, e);
}

static int sim_unmap_all(struct dmb_bctx *bc, uint64_t *unmapped, struct dmb_err *e)
{
	if (unmapped)
		*unmapped = 0;
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: unmap_all called without a context");
	uint64_t bytes = ctx_clear(sim_ctx_of(bc));
	if (unmapped)
		*unmapped = bytes;
	return 0;
}

/* iopt_unmap_iova_range(): walks the areas intersecting the range from the
 * lowest up, removing each one that lies wholly inside. An area straddling
 * either end stops the walk with -ENOENT, and — as in the kernel — areas
 * already removed stay removed. *unmapped always gets the bytes actually
 * removed (the kernel does not write them back on failure; the sim does so
 * that callers and tests can see a partial unmap). RAM and MMIO areas are
 * removed alike. */
static int sim_unmap(struct dmb_bctx *bc, uint64_t iova, uint64_t length, uint64_t *unmapped,
		     struct dmb_err *e)
{
	if (unmapped)
		*unmapped = 0;
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: unmap called without a context");
	if (iova == 0 && length == UINT64_MAX) /* the kernel's unmap-all pair */
		return sim_unmap_all(bc, unmapped, e);

	struct sim_ctx *c = sim_ctx_of(bc);
	uint64_t last;
	if (length == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "unmap length is zero");
	if (iova == UINT64_MAX || length == UINT64_MAX || !dmb_range_last(iova, length, &last))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EOVERFLOW,
				"IOVA 0x%" PRIx64 " + length 0x%" PRIx64 " overflows", iova, length);

	struct sim_area *a = sim_area_first_in(c, iova, last);
	if (!a)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				"no mapping inside [0x%" PRIx64 ", 0x%" PRIx64 "]", iova, last);

	uint64_t bytes = 0, ram = 0;
	int r = 0;
	while (a) {
		uint64_t a_iova = sim_area_iova(c, a), a_last = sim_area_last(c, a);
		if (a_iova > last)
			break;
		if (a_iova < iova || a_last > last) {
			r = dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				     "mapping [0x%" PRIx64 ", 0x%" PRIx64 "] straddles the edge of "
				     "[0x%" PRIx64 ", 0x%" PRIx64 "]; a mapping is only removed whole",
				     a_iova, a_last, iova, last);
			break;
		}
		struct sim_area *next = RB_NEXT(sim_area_tree, &c->areas, a);
		RB_REMOVE(sim_area_tree, &c->areas, a);
		bytes += a_last - a_iova + 1;
		ram += sim_area_release(c, a);
		a = next;
	}
	sim_unpin(c, ram);
	sim_table_maybe_trim(&c->tab);
	if (unmapped)
		*unmapped = bytes;
	return r;
}

/* ---- the DMA engine ----------------------------------------------------- */

/* Moves len bytes between buf and [iova, iova+len) as a device would:
 * every byte is translated through this context's areas and nothing else.
 * `who` names the initiator in sentences ("" for the ideal bus master).
 * Caller holds dev_lock shared.
 *
 * Pass 1 translates and permission-checks the whole range (-EFAULT at the
 * first hole or miss); pass 2 checks every MMIO target's memory decoding
 * (-EIO, a decode error); pass 3 moves the bytes. So a failed DMA moves
 * nothing, and a fault anywhere wins over a decode error. to_memory is a
 * device write (needs PROT_WRITE); otherwise a device read (needs
 * PROT_READ). */
int sim_dma_xfer(struct sim_ctx *c, const char *who, uint64_t iova, void *buf, size_t len,
		 bool to_memory, struct dmb_err *e)
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
				"DMA %s%s of %zu bytes at IOVA 0x%" PRIx64 " wraps the IOVA space",
				dir, who, len, iova);

	/* Pass 1: translate and check. */
	struct sim_area *first = area_at(c, iova), *a = first;
	uint64_t cur = iova;
	bool mmio = false;
	for (;;) {
		uint64_t a_iova = a ? sim_area_iova(c, a) : 0, a_last = a ? sim_area_last(c, a) : 0;
		if (!a || a_iova > cur)
			return dmb_fail(e, DMB_E_NOT_FOUND, EFAULT,
					"DMA %s%s faulted at IOVA 0x%" PRIx64 ": no mapping there",
					dir, who, cur);
		if ((sim_area_prot(c, a) & need) != need)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, EFAULT,
					"DMA %s%s faulted at IOVA 0x%" PRIx64 ": the mapping "
					"[0x%" PRIx64 ", 0x%" PRIx64 "] does not allow device %ss",
					dir, who, cur, a_iova, a_last, dir);
		const struct sim_region *reg = sim_area_src(c, a)->region;
		if (DMB_UNLIKELY(!sim_area_claimed(a) || !reg))
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EFAULT,
					"DMA %s%s faulted at IOVA 0x%" PRIx64 ": the mapping "
					"[0x%" PRIx64 ", 0x%" PRIx64 "] survived a restart but its "
					"source was not named again (map_adopt); the sim cannot "
					"reach it until then", dir, who, cur, a_iova, a_last);
		if (reg->dev) {
			mmio = true; /* BAR memfds are sealed: they cannot shrink */
		} else {
			/* The kernel keeps the pages pinned if the file shrinks; the
			 * sim only has the mmap, which would SIGBUS past its end. */
			struct stat st;
			if (fstat(reg->fd, &st) < 0 ||
			    (uint64_t)st.st_size < sim_area_offset(c, a) + (a_last - a_iova + 1))
				return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EFAULT,
						"DMA %s%s faulted at IOVA 0x%" PRIx64 ": the region's file "
						"shrank beneath the mapping", dir, who, cur);
		}
		if (a_last >= last)
			break;
		cur = a_last + 1;
		a = RB_NEXT(sim_area_tree, &c->areas, a);
	}

	/* Pass 2: every BAR reached must be decoding memory. */
	if (mmio) {
		const struct sim_dev *ok = NULL; /* last device seen decoding */
		cur = iova;
		for (a = first;; a = RB_NEXT(sim_area_tree, &c->areas, a)) {
			const struct sim_region *reg = sim_area_src(c, a)->region;
			const struct sim_dev *peer = reg->dev;
			if (peer && peer != ok) {
				uint16_t cmd;
				int r = sim_cfg_command(peer, &cmd, e);
				if (r < 0)
					return r;
				if (!(cmd & DMB_PCI_COMMAND_MEMORY))
					return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EIO,
							"DMA %s%s at IOVA 0x%" PRIx64 ": decode error: BAR%u of "
							"%s has memory decoding off (command 0x%04x); no bytes "
							"moved",
							dir, who, cur, reg->bar, peer->bdf, cmd);
				ok = peer;
			}
			uint64_t a_last = sim_area_last(c, a);
			if (a_last >= last)
				break;
			cur = a_last + 1;
		}
	}

	/* Pass 3: move the bytes. */
	uint8_t *p = buf;
	cur = iova;
	for (a = first;; a = RB_NEXT(sim_area_tree, &c->areas, a)) {
		uint64_t a_iova = sim_area_iova(c, a), a_last = sim_area_last(c, a);
		uint64_t end = a_last < last ? a_last : last;
		size_t n = (size_t)(end - cur + 1);
		uint8_t *mem = sim_area_src(c, a)->region->mem + sim_area_offset(c, a) + (cur - a_iova);
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
	struct sim_ctx *c = sim_ctx_of(bc);
	sim_lock_shared(c->be);
	int r = sim_dma_xfer(c, "", iova, buf, len, to_memory, e);
	sim_unlock(c->be);
	return r;
}

/* ---- the backend -------------------------------------------------------- */

static uint64_t sim_pinned_bytes(struct dmb_backend *be)
{
	return be ? atomic_load_explicit(&sim_of(be)->pinned, memory_order_relaxed) : 0;
}

/* Accepts a half-built backend (dmb_sim_create's failure path). Touches
 * no context's table and no device's state: a daemon that stops for a
 * restart may destroy its backend without closing its contexts, and the
 * next process adopts them as they were. */
static void sim_free(struct sim_backend *s)
{
	sim_devices_destroy(s);
	long live = atomic_load(&s->live);
	/* Their back pointers dangle from here on: a bug in the caller unless
	 * the process is about to exit for a restart. */
	if (live != 0)
		log_error("sim: backend destroyed with %ld contexts or regions still open", live);
	pthread_rwlock_destroy(&s->dev_lock);
	free(s);
}

static void sim_destroy(struct dmb_backend *be)
{
	if (be)
		sim_free(sim_of(be));
}

static const char *const sim_features[] = {
	"map-file", "unmap-all", "dma-engine", "devices", "p2p", "adopt", "noiommu", NULL,
};

static const struct dmb_backend_ops sim_ops = {
	.name = "sim",
	/* context: its table memfd; region: our dup + the core's fd (one stored);
	 * device: its config and BAR0 memfds */
	.fd_cost = { .fds = { 1, 2, 2 }, .stored = { 1, 1, 2 } },
	.destroy = sim_destroy,
	.ctx_open = sim_ctx_open,
	.ctx_close = sim_ctx_close,
	.iova_info = sim_iova_info,
	.region_open = sim_region_open,
	.region_close = sim_region_close,
	.map = sim_map,
	.unmap = sim_unmap,
	.unmap_all = sim_unmap_all,
	.dev_open = sim_dev_open,
	.dev_close = sim_dev_close,
	.dev_fd = sim_dev_fd,
	.dev_bar_info = sim_dev_bar_info,
	.dev_config_read = sim_dev_config_read,
	.dev_config_write = sim_dev_config_write,
	.dev_reset = sim_dev_reset,
	.map_bar = sim_map_bar,
	.dev_dma = sim_dev_dma,
	.dma = sim_dma,
	.ctx_set_noiommu = sim_ctx_set_noiommu,
	.phys = sim_phys,
	.ctx_fds = sim_ctx_fds,
	.dev_fds = sim_dev_fds,
	.ctx_adopt = sim_ctx_adopt,
	.dev_adopt = sim_dev_adopt,
	.map_adopt = sim_map_adopt,
	.map_bar_adopt = sim_map_bar_adopt,
	.adopt_finish = sim_adopt_finish,
	.ctx_prepare_handover = sim_ctx_prepare_handover,
	.pinned_bytes = sim_pinned_bytes,
};

int dmb_sim_create(const struct dmb_backend_config *cfg, struct dmb_backend **out, struct dmb_err *e)
{
	if (!out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: create called without an output");

	struct sim_backend *s = calloc(1, sizeof(*s));
	if (!s)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for the backend");
	int r = pthread_rwlock_init(&s->dev_lock, NULL);
	if (r != 0) {
		free(s);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, r, "sim: cannot create the device lock: %s",
				strerror(r));
	}
	s->base.ops = &sim_ops;
	s->base.features = sim_features;
	s->base.p2p_attr = cfg && cfg->sim_p2p_attr ? cfg->sim_p2p_attr : DMB_MEM_MMIO;
	s->populate = cfg && cfg->sim_populate;
	atomic_init(&s->pinned, 0);
	atomic_init(&s->live, 0);
	r = sim_devices_create(s, cfg ? cfg->sim_devices : NULL,
			       cfg ? cfg->sim_noiommu_devices : NULL, e);
	if (r < 0) {
		sim_free(s);
		return r;
	}
	*out = &s->base;
	return 0;
}
