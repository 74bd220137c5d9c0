/* daemon/backend/: every ioctl the daemon issues.
 * Owns: the backend table (backend.c), iommufd.c and vfio_type1.c (the
 * kernel's two IOMMU interfaces), ksys.c (what both use: the syscall and
 * ioctl shims, the lookup of an errno's sentence, the VFIO device ops),
 * the simulated
 * backend (sim*.c), and preserve/ (the LUO ioctls and the simulated
 * preserver that plays the kernel for tests).
 * May call: util/, the kernel. Never calls: any other part of the daemon.
 * Circles inside, as designed: sim.c <-> sim_dev.c (the simulated IOMMU
 * and its devices share one table); preserve/preserver.c picks luo.c or
 * sim.c, which use its helpers.
 */

/* backend.h — the only interface between dmabroker and the kernel's IOMMU.
 *
 * Every IOMMU/VFIO ioctl the daemon issues lives behind this vtable
 * (backend/iommufd.c, backend/vfio_type1.c) or is modelled by the simulated
 * backend (backend/sim.c). The core validates requests against its own model
 * first (ownership, overlap, alignment, ranges, limits) and only then calls
 * the backend, so a backend sees well-formed requests; it still reports what
 * the kernel says, with the kernel's errno.
 *
 * Conventions
 * - Every function returns 0 or a negative errno. When it fails and `e` is
 *   not NULL it may describe the failure (dmb_fail); the core adds a generic
 *   sentence when it did not.
 * - Objects embed a base struct (struct dmb_bctx, dmb_bregion, dmb_bdev) as
 *   their first member; backends recover theirs with dmb_container_of.
 * - Destructors accept NULL.
 * - Threading: calls on one context are serialised by the caller; calls on
 *   different contexts may come from different threads (a future worker
 *   pool). Keep per-context state in the context; make global counters
 *   atomic.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

struct dmb_backend;
struct dmb_bctx;
struct dmb_bregion;
struct dmb_bdev;

enum {
	DMB_PROT_READ = 1u << 0,  /* the device may read */
	DMB_PROT_WRITE = 1u << 1, /* the device may write */
};

struct dmb_iova_range {
	uint64_t start;
	uint64_t last; /* inclusive */
};

#define DMB_MAX_IOVA_RANGES 32

struct dmb_iova_info {
	size_t n;
	struct dmb_iova_range ranges[DMB_MAX_IOVA_RANGES];
	uint64_t alignment;          /* IOVA/offset/length granularity */
	uint32_t max_mappings;       /* 0: no backend limit */
	uint32_t mappings_available; /* valid when max_mappings != 0 */
	/* The IOMMU page sizes the backend can use (bit n: 2^n bytes); 0: the
	 * kernel does not say (iommufd has no uAPI for it), and the core
	 * assumes 4 KiB, 2 MiB and 1 GiB. */
	uint64_t pgsizes;
};

/* What the core tells a backend about a registered region. The core has
 * already validated the fd: a memfd/tmpfs/hugetlbfs regular file at least
 * `size` bytes long, sealed against shrinking (memfd). region_close may come
 * while mappings still use the region: the backend keeps what those mappings
 * need until they are gone, as the kernel keeps its file reference. */
struct dmb_region_desc {
	int fd;           /* borrowed: dup it to keep it */
	uint64_t size;    /* bytes, a multiple of page_size */
	uint64_t page_size;
	bool writable;    /* fd open for writing and not write-sealed */
	bool hugetlb;
};

struct dmb_bregion {
	struct dmb_backend *be;
};

struct dmb_bctx {
	struct dmb_backend *be;
};

struct dmb_dev_info {
	uint16_t vendor;
	uint16_t device;
	char group[64];   /* IOMMU group number (type1), vfio-dev name (iommufd), sim name */
	bool viable;
};

struct dmb_bdev {
	struct dmb_bctx *ctx;
};

/* PCI command register bits the broker mediates (config offset 4). */
#define DMB_PCI_COMMAND 0x04
#define DMB_PCI_COMMAND_MEMORY 0x0002
#define DMB_PCI_COMMAND_MASTER 0x0004
#define DMB_PCI_NUM_BARS 6

struct dmb_bar_info {
	uint64_t size;  /* 0: BAR not implemented */
	bool mmio;      /* memory space (false: I/O port space) */
	bool mappable;  /* the backend can map it for P2P (type1: mmap-capable) */
};

/* Restart without unmapping (fd store): a backend's kernel state lives in
 * fds. The daemon hands them to systemd's fd store under stable names and the
 * next process takes them back and re-adopts the objects. Names are chosen
 * by the backend, unique within one object (e.g. "iommufd", "container",
 * "group.7", "state"); the daemon prefixes them with the object's id. */
#define DMB_MAX_OBJ_FDS 8
struct dmb_fd_entry {
	int fd;
	char name[32];
};
struct dmb_fdset {
	size_t n;
	struct dmb_fd_entry e[DMB_MAX_OBJ_FDS];
};

/* What one object costs in fds (core/account.c budgets them): `fds` the
 * daemon holds (a region's includes the fd the core keeps), `stored` the
 * entries it takes in the fd store under systemd. Upper bounds: a type1
 * device counts its group's fd, which it may share with another device. */
enum dmb_fd_kind { DMB_FD_CTX, DMB_FD_REGION, DMB_FD_DEVICE, DMB_FD_KINDS };
struct dmb_fd_cost {
	uint8_t fds[DMB_FD_KINDS];
	uint8_t stored[DMB_FD_KINDS];
};

struct dmb_backend_ops {
	const char *name; /* "sim", "vfio-type1", "iommufd" */
	struct dmb_fd_cost fd_cost;

	void (*destroy)(struct dmb_backend *be);

	/* A context: one iommufd + IOAS, one type1 container, one sim IOAS. */
	int (*ctx_open)(struct dmb_backend *be, struct dmb_bctx **out, struct dmb_err *e);
	/* Unmaps everything, detaches and closes its devices, frees. */
	void (*ctx_close)(struct dmb_bctx *c);

	int (*iova_info)(struct dmb_bctx *c, struct dmb_iova_info *out, struct dmb_err *e);

	/* Called once per registered region (type1/sim: mmap it once). */
	int (*region_open)(struct dmb_backend *be, const struct dmb_region_desc *d,
			   struct dmb_bregion **out, struct dmb_err *e);
	void (*region_close)(struct dmb_bregion *r);

	/* Map [offset, offset+length) of region r at iova. The core guarantees:
	 * length > 0, everything aligned to iova_info.alignment, the range is
	 * inside the region and inside one IOVA range, no overlap with existing
	 * mappings of this context, prot in {R, W, RW} and W only if writable. */
	int (*map)(struct dmb_bctx *c, struct dmb_bregion *r, uint64_t offset, uint64_t iova,
		   uint64_t length, uint32_t prot, struct dmb_err *e);

	/* Remove every mapping wholly inside [iova, iova+length). The core has
	 * checked that no mapping straddles either end and that at least one
	 * mapping lies inside. *unmapped gets the bytes removed. */
	int (*unmap)(struct dmb_bctx *c, uint64_t iova, uint64_t length, uint64_t *unmapped,
		     struct dmb_err *e);
	int (*unmap_all)(struct dmb_bctx *c, uint64_t *unmapped, struct dmb_err *e);

	/* Devices (NULL where the backend has none). Open a PCI function by BDF
	 * and attach it to the context. */
	int (*dev_open)(struct dmb_bctx *c, const char *bdf, struct dmb_bdev **out,
			struct dmb_dev_info *info, struct dmb_err *e);
	/* Detach and close. */
	void (*dev_close)(struct dmb_bdev *d);
	/* The device fd a client may receive a duplicate of; -EOPNOTSUPP if none. */
	int (*dev_fd)(struct dmb_bdev *d);

	/* Device state (NULL where the backend has no devices). Config space
	 * access goes to the device itself (VFIO config region; the sim's
	 * config space), so a change the client makes through its own copy of
	 * the device fd is visible here. */
	int (*dev_bar_info)(struct dmb_bdev *d, unsigned bar, struct dmb_bar_info *out,
			    struct dmb_err *e);
	int (*dev_config_read)(struct dmb_bdev *d, uint32_t off, void *buf, size_t len,
			       struct dmb_err *e);
	int (*dev_config_write)(struct dmb_bdev *d, uint32_t off, const void *buf, size_t len,
				struct dmb_err *e);
	/* Function/bus reset. The kernel saves and restores config space around
	 * it (vfio-pci), so the command register comes back as it was. */
	int (*dev_reset)(struct dmb_bdev *d, struct dmb_err *e);

	/* P2P: map [offset, offset+length) of BAR `bar` of device `peer` (which
	 * may be attached to another context) at iova in c, as an MMIO mapping.
	 * The core has checked the BAR (exists, MMIO, mappable, range inside),
	 * the IOVA (aligned, free, in range) and that the peer's memory decoding
	 * is on. Removed with unmap like any mapping. NULL, or -EOPNOTSUPP with a
	 * sentence naming the missing kernel feature, where P2P is impossible. */
	int (*map_bar)(struct dmb_bctx *c, struct dmb_bdev *peer, unsigned bar, uint64_t offset,
		       uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e);

	/* Simulated device DMA (sim only): device d, as bus master, reads or
	 * writes through its context's page table. Fails with -EFAULT (no
	 * bytes moved) on a hole or permission miss, -EIO when the target is a
	 * peer BAR whose memory decoding is off (a decode error), -EPERM when
	 * d's bus mastering is off. */
	int (*dev_dma)(struct dmb_bdev *d, uint64_t iova, void *buf, size_t len, bool to_memory,
		       struct dmb_err *e);

	/* Simulated DMA through the context's page table (sim only, NULL
	 * elsewhere): to_memory writes buf at iova, else reads into buf.
	 * A hole or a permission miss is -EFAULT and moves no bytes. */
	int (*dma)(struct dmb_bctx *c, uint64_t iova, void *buf, size_t len, bool to_memory,
		   struct dmb_err *e);

	/* ---- no-IOMMU contexts (NULL where the backend has none) ----
	 *
	 * A no-IOMMU context is for devices with no IOMMU in front of them
	 * (iommufd's no-IOMMU mode, Linux 7.3: the cdev noiommu-vfioN): maps
	 * pin as in any context, but the device addresses physical memory, so
	 * the context gives no isolation at all.
	 *
	 * ctx_set_noiommu: makes c, just opened (or adopted) and without a
	 * device, a no-IOMMU context. From then on dev_open accepts only
	 * devices without an IOMMU in c, and in any other context only devices
	 * with one; each refusal is FAILED_PRECONDITION with a sentence.
	 *
	 * phys: the physical address behind iova (mapped RAM of c) and how many
	 * bytes from there, at most max_len and within one mapping, are
	 * physically contiguous (*len >= 1). -ENOENT: iova is not mapped;
	 * -EOPNOTSUPP: no device is attached yet (the kernel keeps physical
	 * addresses only in the page table a no-IOMMU device brings). */
	int (*ctx_set_noiommu)(struct dmb_bctx *c, struct dmb_err *e);
	int (*phys)(struct dmb_bctx *c, uint64_t iova, uint64_t max_len, uint64_t *phys,
		    uint64_t *len, struct dmb_err *e);

	/* ---- restart (all NULL where the backend cannot be adopted) ----
	 *
	 * ctx_fds / dev_fds: the fds holding the object's kernel state, borrowed
	 * (valid while the object lives). Called whenever the set may have
	 * changed (after create, device attach/detach).
	 *
	 * ctx_adopt / dev_adopt: in the next process, rebuild the object from
	 * the fds (ownership passes to the backend on success; on failure the
	 * caller closes them). Nothing is unmapped or reset: whatever the kernel
	 * holds stays, and DMA goes on.
	 *
	 * map_adopt / map_bar_adopt: after ctx_adopt and region_open of the
	 * regions, the daemon names each mapping its journal records; the
	 * backend re-attaches its own bookkeeping (and, for type1, moves the
	 * mapping's vaddr to this process with VFIO_DMA_MAP_FLAG_VADDR). A
	 * mapping the kernel does not hold answers -ENOENT (the daemon maps it
	 * again: it was journaled but the old process died before the kernel
	 * call). adopt_finish: every mapping was named; the backend drops (and
	 * reports in *stray) mappings nobody claimed.
	 *
	 * ctx_prepare_handover: the old process is stopping cleanly and a
	 * successor will adopt (type1: invalidate every vaddr with
	 * VFIO_DMA_UNMAP_FLAG_VADDR; DMA continues). Not called on a crash. */
	int (*ctx_fds)(struct dmb_bctx *c, struct dmb_fdset *out);
	int (*dev_fds)(struct dmb_bdev *d, struct dmb_fdset *out);
	int (*ctx_adopt)(struct dmb_backend *be, const struct dmb_fdset *fds, struct dmb_bctx **out,
			 struct dmb_err *e);
	int (*dev_adopt)(struct dmb_bctx *c, const char *bdf, const struct dmb_fdset *fds,
			 struct dmb_bdev **out, struct dmb_dev_info *info, struct dmb_err *e);
	int (*map_adopt)(struct dmb_bctx *c, struct dmb_bregion *r, uint64_t offset, uint64_t iova,
			 uint64_t length, uint32_t prot, struct dmb_err *e);
	int (*map_bar_adopt)(struct dmb_bctx *c, struct dmb_bdev *peer, unsigned bar,
			     uint64_t offset, uint64_t iova, uint64_t length, uint32_t prot,
			     struct dmb_err *e);
	int (*adopt_finish)(struct dmb_bctx *c, uint64_t *stray, struct dmb_err *e);
	int (*ctx_prepare_handover)(struct dmb_bctx *c, struct dmb_err *e);

	/* Bytes currently pinned by this backend, across all contexts. */
	uint64_t (*pinned_bytes)(struct dmb_backend *be);
};

/* The memory attributes of an IOMMU mapping (the wire's MemAttr values). */
enum dmb_mem_attr {
	DMB_MEM_UNSPECIFIED = 0,
	DMB_MEM_CACHEABLE = 1, /* ordinary memory: cached, writes may merge */
	DMB_MEM_MMIO = 2,      /* IOMMU_MMIO: what a peer BAR needs */
};

struct dmb_backend {
	const struct dmb_backend_ops *ops;
	/* Detected features, e.g. "map-file", "unmap-all", "vaddr-update";
	 * NULL-terminated. */
	const char *const *features;
	/* The attributes map_bar gives a peer BAR in the IOMMU: MMIO where the
	 * kernel path sets IOMMU_MMIO (iommufd's dma-buf mapping), CACHEABLE
	 * where it maps the BAR like RAM (VFIO type1 through a user address:
	 * Linux up to at least 7.3.4 does not set IOMMU_MMIO there). */
	enum dmb_mem_attr p2p_attr;
};

/* Start-up options shared by the backends. */
struct dmb_backend_config {
	const char *name;          /* "auto", "sim", "vfio-type1", "iommufd" */
	const char *sysfs_root;    /* "/sys" unless tests say otherwise */
	/* sim: the simulated PCI functions, e.g. "0000:01:00.0" (each an
	 * edu-like device 1234:11e8 with a 1 MiB memory BAR0); NULL-terminated. */
	const char *const *sim_devices;
	const char *dev_root;      /* "/dev" unless tests say otherwise */
	/* sim: simulated functions with no IOMMU in front of them (each also
	 * in sim_devices, or added to it); NULL-terminated, NULL: none. */
	const char *const *sim_noiommu_devices;
	bool sim_populate;         /* sim: touch every page on map, as pinning does */
	/* sim: the attributes its P2P mappings model (DMB_MEM_MMIO, iommufd's
	 * dma-buf path, unless set; DMB_MEM_CACHEABLE models type1's) */
	enum dmb_mem_attr sim_p2p_attr;
};

/* backend.c: pick and create a backend. "auto" probes iommufd, then
 * vfio-type1, and fails with a sentence naming what is missing; it never
 * picks sim. */
int dmb_backend_create(const struct dmb_backend_config *cfg, struct dmb_backend **out,
		       struct dmb_err *e);
void dmb_backend_destroy(struct dmb_backend *be);

/* Constructors of the individual backends. */
int dmb_sim_create(const struct dmb_backend_config *cfg, struct dmb_backend **out,
		   struct dmb_err *e);
int dmb_type1_create(const struct dmb_backend_config *cfg, struct dmb_backend **out,
		     struct dmb_err *e);
int dmb_iommufd_create(const struct dmb_backend_config *cfg, struct dmb_backend **out,
		       struct dmb_err *e);
