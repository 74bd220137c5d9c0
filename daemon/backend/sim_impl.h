/* sim_impl.h — what the files of the simulated backend share; not part of
 * the backend interface (backend.h is).
 *
 *   sim.c        the backend object, regions, contexts, map/unmap, the DMA
 *                engine, the ops table
 *   sim_dev.c    the simulated PCI functions: config space, open/close,
 *                reset, P2P (map_bar), per-device DMA
 *   sim_table.c  a context's state memfd: the area table that survives a
 *                daemon restart (format and crash rules are described there)
 *   sim_adopt.c  the restart hooks: export fds, adopt contexts, devices and
 *                mappings in the next process
 *   sim_noiommu.c  no-IOMMU contexts: devices without an IOMMU, simulated
 *                physical addresses (GET_PA) and DMA to them
 *
 * The design notes (IOAS model, error model, locking) are at the top of
 * sim.c; every name shared between the files starts with sim_.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/tree.h>

#include "backend.h"
#include "util/macro.h"
#include "util/rbtree.h"

#define SIM_IOVA_ALIGNMENT UINT64_C(4096)
#define SIM_APERTURE_BITS 48
#define SIM_APERTURE_LAST ((UINT64_C(1) << SIM_APERTURE_BITS) - 1)
#define SIM_MSI_START UINT64_C(0xFEE00000)
#define SIM_MSI_LAST UINT64_C(0xFEEFFFFF)

/* Reserved regions fit the wire's range array: n reserved regions leave at
 * most n + 1 usable ranges. */
#define SIM_MAX_RESERVED (DMB_MAX_IOVA_RANGES - 1)

/* Area nodes come from per-context slabs: no malloc header per node (a
 * 64-byte node would take an 80-byte chunk) and no malloc on the map/unmap
 * hot path. A context's first slab holds 15 nodes (1 KiB) and each next one
 * twice as many, up to 64 KiB, so a context with a few mappings (most of
 * them) costs no more than before. Freed nodes are reused by the same
 * context; the slabs go back when its last area is gone. */
#define SIM_SLAB_MIN_BYTES 1024u
#define SIM_SLAB_MAX_BYTES (64u * 1024u)

/* The simulated PCI functions. Each costs two memfds and 1 MiB of (sparse)
 * BAR memory; 256 is more than any test needs and keeps a mistyped list
 * from exhausting fds. */
#define SIM_MAX_DEVICES 256u
#define SIM_BDF_LEN 12 /* dddd:bb:dd.f */
#define SIM_CFG_SIZE 256u
#define SIM_CFG_RESET_COUNT 0x40 /* sim-specific: u32 LE, resets so far */
#define SIM_VENDOR 0x1234
#define SIM_DEVICE 0x11e8
#define SIM_BAR0_SIZE (UINT64_C(1) << 20)
#define SIM_BAR2_SIZE UINT64_C(256)

/* ---- the state table (sim_table.c) ---------------------------------------- */

/* A record's tag, the low half of its state word. A mapping costs one AREA
 * record; what it maps is named by a SOURCE record (one per region file or
 * device BAR the context maps, shared by all its areas), so the identity
 * of a file is not repeated in every slot. */
enum sim_rec_tag {
	SIM_REC_AREA = 0xa4ea,    /* an area: iova | prot, length, offset, source slot */
	SIM_REC_SRC_RAM = 0x5a3a, /* a region's file: file_dev, file_ino */
	SIM_REC_SRC_BAR = 0x5ba3, /* a device BAR: file_dev, file_ino of its memfd, bdf, bar */
	SIM_REC_DEV = 0xde71,     /* a device attached to the context */
};

/* One 32-byte slot of the table, as it is in the file (sim_table.c). The
 * meaning of w[] and src depends on the tag (see sim_table.c, "Slot"). */
struct sim_slot {
	uint64_t w[3];
	uint32_t src;
	_Atomic uint32_t state; /* 0: free; check << 16 | tag: live */
};
_Static_assert(sizeof(struct sim_slot) == 32, "a table slot is 32 bytes");

/* A record as put and read: the body (bytes 0-27 of its slot) and tag. */
struct sim_rec {
	uint64_t w[3];
	uint32_t src;
	uint16_t tag;
};

#define SIM_TAB_HDR 4096u

struct sim_table {
	int fd;              /* the memfd; -1 when closed */
	uint8_t *map;        /* MAP_SHARED, map_size bytes */
	uint64_t map_size;
	uint32_t cap;        /* slots mapped; a multiple of 128 (one page) */
	uint32_t n_used;     /* live records */
	uint64_t *used;      /* bitmap of live slots, cap bits */
	uint32_t hint;       /* no free slot in used[] words below this one */
	uint32_t trim_below; /* give pages back when n_used drops below */
};

int sim_table_create(struct sim_table *t, struct dmb_err *e);
/* Maps an existing state memfd and checks its header. On success t->fd is
 * fd (sim_table_close would close it); on failure fd is left alone. */
int sim_table_open(struct sim_table *t, int fd, struct dmb_err *e);
/* Unmaps and closes; the file's contents are left as they are. */
void sim_table_close(struct sim_table *t);
/* Writes a record into a free slot and publishes it. */
int sim_table_put(struct sim_table *t, const struct sim_rec *r, uint32_t *slot,
		  struct dmb_err *e);
/* Unpublishes a live record; the slot is free from then on. */
void sim_table_clear(struct sim_table *t, uint32_t slot);
/* Gives back the memory of free slots above the last live one when the
 * table has become mostly empty (call after a removal batch). */
void sim_table_maybe_trim(struct sim_table *t);
/* Adoption: reads slot i. Returns 0 (free), 1 (live; *r filled and the slot
 * marked used) or -EBADMSG (damaged, with a sentence). */
int sim_table_read(struct sim_table *t, uint32_t i, struct sim_rec *r, struct dmb_err *e);
/* Whether slot i is marked used (put, or read live). */
static inline bool sim_table_used(const struct sim_table *t, uint32_t i)
{
	return i < t->cap && (t->used[i / 64] >> (i % 64) & 1);
}

/* A live record's slot (no checks: the caller put it or adopted it). */
static inline const struct sim_slot *sim_table_slot(const struct sim_table *t, uint32_t i)
{
	return (const struct sim_slot *)(const void *)(t->map + SIM_TAB_HDR) + i;
}

/* ---- objects ------------------------------------------------------------- */

struct sim_dev;
struct sim_ctx;

struct sim_backend {
	struct dmb_backend base;
	bool populate;                   /* touch every page on map */
	_Atomic uint64_t pinned;         /* RAM bytes, across all contexts */
	_Atomic long live;               /* open contexts + regions (BARs too) */
	pthread_rwlock_t dev_lock;       /* see "Locking" in sim.c */
	struct sim_dev *devs;            /* n_devs, for the backend's lifetime */
	size_t n_devs;
};

/* A registered region: the daemon's own mmap of the file and a dup of its
 * fd. Refcounted: the core's handle is one reference, each area another.
 * A device's BAR is a region too, owned by the device (dev != NULL). */
struct sim_region {
	struct dmb_bregion base;
	_Atomic unsigned long refs;
	int fd;
	uint8_t *mem;                    /* MAP_SHARED, `size` bytes */
	uint64_t size;
	uint64_t page_size;
	uint64_t file_dev, file_ino;     /* the file's identity (fstat) */
	bool writable;
	struct sim_dev *dev;             /* BAR regions: the device (lives as long
					  * as the backend); NULL for RAM */
	unsigned bar;
};

struct sim_dev {
	struct dmb_bdev base;            /* base.ctx mirrors ctx */
	struct sim_backend *be;
	struct sim_ctx *ctx;             /* attached context; NULL while closed
					  * (dev_lock) */
	LIST_ENTRY(sim_dev) link;        /* in ctx->devs (dev_lock) */
	unsigned index;                  /* "sim-<index>" */
	char bdf[SIM_BDF_LEN + 1];
	uint32_t bdf_packed;
	int cfg_fd;                      /* 256-byte config space memfd */
	uint64_t cfg_ino;
	bool noiommu;                    /* no IOMMU in front of it (sim_noiommu.c) */
	struct sim_region *bar0;         /* the device's reference */
	uint32_t slot;                   /* its DEV record in ctx's table while
					  * attached */
	_Atomic uint32_t resets;
};

/* One area of a context's IOVA space: the model of the kernel's iopt_area,
 * and an index entry of the context's table. 32 bytes (a context may hold
 * millions): a packed tree link (util/rbtree.h) whose owner bit 0 says the
 * area is claimed (see struct sim_src), its record's slot, which holds its
 * extent, offset and prot (the tree's key is read from there), and its
 * source. */
struct sim_area {
	union {
		DMB_RB_ENTRY(sim_area) link; /* in sim_ctx.areas */
		struct sim_area *next_free; /* in sim_ctx.cache */
	};
	uint32_t slot;                   /* its AREA record in the context's table */
	uint32_t src;                    /* index in sim_ctx.srcs */
};
_Static_assert(sizeof(struct sim_area) == 32, "an area node is 32 bytes");

/* Owner bit of an area's link: the area may move bytes. Set for every area
 * mapped in this process; an area adopted from a previous process gets it
 * when map_adopt / map_bar_adopt names its source again. */
#define SIM_AREA_CLAIMED 1u

/* What a context's areas map: one per region (RAM) or device BAR0 (MMIO)
 * that at least one area of the context maps, with a SOURCE record in the
 * table. Refcounted by the context's areas; the last one's removal clears
 * the record and drops the region reference. */
struct sim_src {
	struct sim_region *region;       /* one reference held; NULL while
					  * adopted and not named again yet */
	uint32_t slot;                   /* its SOURCE record; UINT32_MAX when
					  * this entry is free */
	uint32_t refs;                   /* areas naming it */
	bool bar;                        /* SIM_REC_SRC_BAR */
};

struct sim_area_slab {
	struct sim_area_slab *next;
	uint32_t bytes;                  /* this slab's size */
	uint32_t pad;                    /* nodes start 16-aligned */
	struct sim_area nodes[];
};

struct sim_reserved {
	uint64_t start;
	uint64_t last;                   /* inclusive */
	const char *what;                /* for error sentences */
};

RB_HEAD(sim_area_tree, sim_area);

/* The tree is ordered by the IOVA in each area's record, which a node
 * cannot reach on its own: the descents that compare (insert, nfind) are
 * sim_area_link and sim_area_nfind in sim.c. The generated tree functions
 * are used for what needs no comparison (remove, next, prev, min, max);
 * the comparison given to them must never run. */
static inline int sim_area_cmp_unused(const struct sim_area *a, const struct sim_area *b)
{
	(void)a;
	(void)b;
	__builtin_trap();
}

/* Each file that walks the tree generates its own static copy of the tree
 * functions (rebalancing is shared, util/rbtree.c), so that the compiler
 * inlines them into the map/unmap hot path. Not RB_GENERATE_STATIC: libbsd
 * leaves __unused undefined (it clashes with a glibc struct member). */
#define SIM_AREA_TREE_GENERATE()                                                   \
	DMB_RB_GENERATE(sim_area_tree, sim_area, link, sim_area_cmp_unused,        \
			__attribute__((unused)) static)
/* A DEV record found by ctx_adopt that no dev_adopt has claimed yet. */
struct sim_pending_dev {
	uint32_t bdf;
	uint32_t slot;
};

struct sim_ctx {
	struct dmb_bctx base;
	struct sim_backend *be;
	struct sim_table tab;            /* the authoritative state (a memfd) */
	struct sim_area_tree areas;      /* index of tab: non-overlapping, by iova */
	uint64_t n_areas;
	uint64_t mapped;                 /* bytes mapped in this context (RAM + MMIO) */
	struct sim_area *cache;          /* free area nodes */
	unsigned n_cache;
	struct sim_area_slab *slabs;     /* newest first; nodes bump-allocated */
	uint32_t slab_used;              /* nodes handed out of slabs' first */
	uint64_t n_nodes;                /* nodes handed out and not freed */
	struct sim_src *srcs;            /* n_srcs entries (free ones too) */
	uint32_t n_srcs, cap_srcs;
	uint32_t src_hint;               /* the entry the last map used */
	LIST_HEAD(sim_dev_list, sim_dev) devs; /* attached devices (dev_lock) */
	bool noiommu;                    /* a no-IOMMU context (sim_noiommu.c) */
	struct sim_pending_dev *pending; /* adoption only: unclaimed DEV records */
	size_t n_pending;
	/* Sorted by start, non-overlapping. Fixed: devices add none. */
	struct sim_reserved reserved[SIM_MAX_RESERVED];
	size_t n_reserved;
};

static inline struct sim_backend *sim_of(struct dmb_backend *be)
{
	return dmb_container_of(be, struct sim_backend, base);
}

static inline struct sim_ctx *sim_ctx_of(struct dmb_bctx *c)
{
	return dmb_container_of(c, struct sim_ctx, base);
}

static inline struct sim_region *sim_region_of(struct dmb_bregion *r)
{
	return dmb_container_of(r, struct sim_region, base);
}

static inline struct sim_dev *sim_dev_of(struct dmb_bdev *d)
{
	return dmb_container_of(d, struct sim_dev, base);
}

/* sim.c */
void sim_lock_shared(struct sim_backend *s);
void sim_lock_excl(struct sim_backend *s);
void sim_unlock(struct sim_backend *s);
/* Wraps fd in a region with one reference, mmapped MAP_SHARED. Takes fd
 * on success only. */
int sim_region_new(struct sim_backend *s, int fd, uint64_t size, uint64_t page_size,
		   bool writable, struct sim_region **out, struct dmb_err *e);
void sim_region_free(struct sim_region *r);
int sim_ctx_init(struct sim_backend *s, struct sim_ctx **out, struct dmb_err *e);
void sim_ctx_free(struct sim_ctx *c);
struct sim_area *sim_area_alloc(struct sim_ctx *c);
void sim_area_free(struct sim_ctx *c, struct sim_area *a);
uint64_t sim_area_release(struct sim_ctx *c, struct sim_area *a);
struct sim_area *sim_area_first_in(struct sim_ctx *c, uint64_t start, uint64_t last);
/* The lowest area whose IOVA is at least iova, or NULL. */
struct sim_area *sim_area_nfind(struct sim_ctx *c, uint64_t iova);
/* Puts a (table-backed) node into the tree; -EEXIST if its IOVA is taken. */
int sim_area_link(struct sim_ctx *c, struct sim_area *a);
/* The source entry of region r in c, made (and its record put) if c has
 * none yet; one more reference on it either way. */
int sim_src_get(struct sim_ctx *c, struct sim_region *r, uint32_t *idx, struct dmb_err *e);
/* Drops one reference; the last one clears the record and drops the
 * region. */
void sim_src_put(struct sim_ctx *c, uint32_t idx);
/* A fresh entry for a SOURCE record read back from the table (adoption);
 * no region, no references. */
int sim_src_adopted(struct sim_ctx *c, uint32_t slot, bool bar, uint32_t *idx,
		    struct dmb_err *e);
/* The entry for the record of entry idx bound to region r (another region
 * of the same file): found or made with no references. An adopted area
 * claimed through r moves to it, so every entry has one region while the
 * record (the file's identity) stays shared; it goes with the last entry. */
int sim_src_alias(struct sim_ctx *c, uint32_t idx, struct sim_region *r, uint32_t *out,
		  struct dmb_err *e);
/* Drops the sources no area names; frees the array once no area is left. */
void sim_srcs_sweep(struct sim_ctx *c);
int sim_check_args(uint64_t iova, uint64_t length, uint32_t prot, uint64_t *last,
		   struct dmb_err *e);
int sim_check_iova(struct sim_ctx *c, uint64_t offset, uint64_t iova, uint64_t length,
		   uint64_t last, struct dmb_err *e);
int sim_area_insert(struct sim_ctx *c, struct sim_region *r, uint64_t offset, uint64_t iova,
		    uint64_t last, uint32_t prot, struct dmb_err *e);
int sim_dma_xfer(struct sim_ctx *c, const char *who, uint64_t iova, void *buf, size_t len,
		 bool to_memory, struct dmb_err *e);
int sim_file_id(int fd, uint64_t *dev, uint64_t *ino, struct dmb_err *e);

/* sim_dev.c */
/* list: the functions (NULL: the default four); noiommu: those without an
 * IOMMU, added to the list when not in it (NULL: none). */
int sim_devices_create(struct sim_backend *s, const char *const *list,
		       const char *const *noiommu, struct dmb_err *e);
void sim_devices_destroy(struct sim_backend *s);
struct sim_dev *sim_dev_find(struct sim_backend *s, const char *bdf);
void sim_dev_list(const struct sim_backend *s, char *buf, size_t size);
bool sim_bdf_normalize(const char *in, char out[SIM_BDF_LEN + 1]);
uint32_t sim_bdf_pack(const char bdf[SIM_BDF_LEN + 1]);
void sim_bdf_unpack(uint32_t v, char out[SIM_BDF_LEN + 1]);
int sim_cfg_pread(const struct sim_dev *d, uint32_t off, void *buf, size_t len, struct dmb_err *e);
int sim_cfg_command(const struct sim_dev *d, uint16_t *cmd, struct dmb_err *e);
void sim_dev_info_fill(const struct sim_dev *d, struct dmb_dev_info *info);
void sim_dev_rec(const struct sim_dev *d, struct sim_rec *r);
void sim_dev_attach(struct sim_ctx *c, struct sim_dev *d, uint32_t slot);

int sim_dev_open(struct dmb_bctx *bc, const char *bdf, struct dmb_bdev **out,
		 struct dmb_dev_info *info, struct dmb_err *e);
void sim_dev_close(struct dmb_bdev *bd);
int sim_dev_fd(struct dmb_bdev *bd);
int sim_dev_bar_info(struct dmb_bdev *bd, unsigned bar, struct dmb_bar_info *out,
		     struct dmb_err *e);
int sim_dev_config_read(struct dmb_bdev *bd, uint32_t off, void *buf, size_t len,
			struct dmb_err *e);
int sim_dev_config_write(struct dmb_bdev *bd, uint32_t off, const void *buf, size_t len,
			 struct dmb_err *e);
int sim_dev_reset(struct dmb_bdev *bd, struct dmb_err *e);
int sim_map_bar(struct dmb_bctx *bc, struct dmb_bdev *peer, unsigned bar, uint64_t offset,
		uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e);
int sim_dev_dma(struct dmb_bdev *bd, uint64_t iova, void *buf, size_t len, bool to_memory,
		struct dmb_err *e);

/* sim_noiommu.c */
uint64_t sim_phys_of(const struct sim_region *r, uint64_t off);
int sim_check_noiommu_map(const struct sim_ctx *c, uint64_t offset, uint64_t length,
			  struct dmb_err *e);
int sim_check_dev_kind(const struct sim_ctx *c, const struct sim_dev *d, struct dmb_err *e);
int sim_ctx_set_noiommu(struct dmb_bctx *bc, struct dmb_err *e);
int sim_phys(struct dmb_bctx *bc, uint64_t iova, uint64_t max_len, uint64_t *phys, uint64_t *len,
	     struct dmb_err *e);
/* A no-IOMMU device's DMA to physical addresses of pages its context pins. */
int sim_phys_xfer(struct sim_ctx *c, const char *who, uint64_t phys, void *buf, size_t len,
		  bool to_memory, struct dmb_err *e);

/* sim_adopt.c */
int sim_ctx_fds(struct dmb_bctx *bc, struct dmb_fdset *out);
int sim_dev_fds(struct dmb_bdev *bd, struct dmb_fdset *out);
int sim_ctx_adopt(struct dmb_backend *be, const struct dmb_fdset *fds, struct dmb_bctx **out,
		  struct dmb_err *e);
int sim_dev_adopt(struct dmb_bctx *bc, const char *bdf, const struct dmb_fdset *fds,
		  struct dmb_bdev **out, struct dmb_dev_info *info, struct dmb_err *e);
int sim_map_adopt(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset, uint64_t iova,
		  uint64_t length, uint32_t prot, struct dmb_err *e);
int sim_map_bar_adopt(struct dmb_bctx *bc, struct dmb_bdev *peer, unsigned bar, uint64_t offset,
		      uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e);
int sim_adopt_finish(struct dmb_bctx *bc, uint64_t *stray, struct dmb_err *e);
int sim_ctx_prepare_handover(struct dmb_bctx *bc, struct dmb_err *e);

/* ---- hot-path inlines --------------------------------------------------- */

static inline const struct sim_slot *sim_area_rec(const struct sim_ctx *c,
						  const struct sim_area *a)
{
	return sim_table_slot(&c->tab, a->slot);
}

static inline uint64_t sim_area_iova(const struct sim_ctx *c, const struct sim_area *a)
{
	return sim_area_rec(c, a)->w[0] & ~(SIM_IOVA_ALIGNMENT - 1);
}

static inline uint64_t sim_area_len(const struct sim_ctx *c, const struct sim_area *a)
{
	return sim_area_rec(c, a)->w[1];
}

/* Inclusive. */
static inline uint64_t sim_area_last(const struct sim_ctx *c, const struct sim_area *a)
{
	const struct sim_slot *s = sim_area_rec(c, a);
	return (s->w[0] & ~(SIM_IOVA_ALIGNMENT - 1)) + s->w[1] - 1;
}

static inline uint64_t sim_area_offset(const struct sim_ctx *c, const struct sim_area *a)
{
	return sim_area_rec(c, a)->w[2];
}

static inline uint32_t sim_area_prot(const struct sim_ctx *c, const struct sim_area *a)
{
	return (uint32_t)(sim_area_rec(c, a)->w[0] & 3u);
}

static inline bool sim_area_claimed(const struct sim_area *a)
{
	return DMB_RB_OWNER_BITS(a, link) & SIM_AREA_CLAIMED;
}

static inline struct sim_src *sim_area_src(const struct sim_ctx *c, const struct sim_area *a)
{
	return &c->srcs[a->src];
}

static inline void sim_region_ref(struct sim_region *r)
{
	atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

static inline void sim_region_unref(struct sim_region *r)
{
	/* acq_rel: the last dropper must see every other holder's use of it. */
	if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
		sim_region_free(r);
}

static inline void sim_unpin(struct sim_ctx *c, uint64_t bytes)
{
	if (bytes)
		atomic_fetch_sub_explicit(&c->be->pinned, bytes, memory_order_relaxed);
}
