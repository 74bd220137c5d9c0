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
#include "backend.h"

#include <ctype.h>
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
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/tree.h>
#include <unistd.h>

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

static const char *const sim_default_devices[] = {
	"0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "0000:04:00.0", NULL,
};

struct sim_dev;
struct sim_ctx;

struct sim_backend {
	struct dmb_backend base;
	bool populate;                   /* touch every page on map */
	_Atomic uint64_t pinned;         /* RAM bytes, across all contexts */
	_Atomic long live;               /* open contexts + regions (BARs too) */
	pthread_rwlock_t dev_lock;       /* see "Locking" above */
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
	int cfg_fd;                      /* 256-byte config space memfd */
	struct sim_region *bar0;         /* the device's reference */
	_Atomic uint32_t resets;
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
	uint64_t mapped;                 /* bytes mapped in this context (RAM + MMIO) */
	struct sim_area *cache;          /* free area nodes */
	unsigned n_cache;
	LIST_HEAD(sim_dev_list, sim_dev) devs; /* attached devices (dev_lock) */
	/* Sorted by start, non-overlapping. Fixed: devices add none. */
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

static inline struct sim_dev *dev_of(struct dmb_bdev *d)
{
	return dmb_container_of(d, struct sim_dev, base);
}

/* dev_lock is only ever taken by the functions of this file, never nested
 * and never across a callback, so failure to lock is a bug, not a state. */
static void lock_shared(struct sim_backend *s)
{
	int r = pthread_rwlock_rdlock(&s->dev_lock);
	if (DMB_UNLIKELY(r != 0)) {
		log_error("sim: dev_lock rdlock failed: %s", strerror(r));
		abort();
	}
}

static void lock_excl(struct sim_backend *s)
{
	int r = pthread_rwlock_wrlock(&s->dev_lock);
	if (DMB_UNLIKELY(r != 0)) {
		log_error("sim: dev_lock wrlock failed: %s", strerror(r));
		abort();
	}
}

static void unlock(struct sim_backend *s)
{
	pthread_rwlock_unlock(&s->dev_lock);
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

/* Wraps an fd (ownership taken, closed on failure) in a region with one
 * reference, mmapped MAP_SHARED. */
static int region_new(struct sim_backend *s, int fd_in, uint64_t size, uint64_t page_size,
		      bool writable, struct sim_region **out, struct dmb_err *e)
{
	_cleanup_close_ int fd = fd_in;
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
	r->fd = TAKE_FD(fd);
	r->mem = mem;
	r->size = size;
	r->page_size = page_size;
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
	int ret = region_new(sim_of(be), fd, d->size, d->page_size, d->writable, &r, e);
	if (ret < 0)
		return ret;
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
 * reference and recycles it. Returns the RAM bytes it pinned (0 for an MMIO
 * area), which the caller returns to the backend with unpin(). */
static uint64_t area_release(struct sim_ctx *c, struct sim_area *a)
{
	uint64_t len = a->last - a->iova + 1, ram = a->region->dev ? 0 : len;

	region_unref(a->region);
	c->n_areas--;
	c->mapped -= len;
	if (c->n_cache < SIM_AREA_CACHE_MAX) {
		a->next_free = c->cache;
		c->cache = a;
		c->n_cache++;
	} else {
		free(a);
	}
	return ram;
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

/* ---- device config space ---------------------------------------------- */

static int cfg_pread(const struct sim_dev *d, uint32_t off, void *buf, size_t len, struct dmb_err *e)
{
	ssize_t n = pread(d->cfg_fd, buf, len, (off_t)off);
	if (n != (ssize_t)len)
		return dmb_fail(e, DMB_E_INTERNAL, n < 0 ? errno : EIO,
				"sim: reading config space of %s at 0x%" PRIx32 " failed%s%s", d->bdf, off,
				n < 0 ? ": " : " (short read)", n < 0 ? strerror(errno) : "");
	return 0;
}

static int cfg_pwrite(const struct sim_dev *d, uint32_t off, const void *buf, size_t len,
		      struct dmb_err *e)
{
	ssize_t n = pwrite(d->cfg_fd, buf, len, (off_t)off);
	if (n != (ssize_t)len)
		return dmb_fail(e, DMB_E_INTERNAL, n < 0 ? errno : EIO,
				"sim: writing config space of %s at 0x%" PRIx32 " failed%s%s", d->bdf, off,
				n < 0 ? ": " : " (short write)", n < 0 ? strerror(errno) : "");
	return 0;
}

/* The command register as the device sees it now: from the memfd, so a
 * client's write through its own fd counts. */
static int cfg_command(const struct sim_dev *d, uint16_t *cmd, struct dmb_err *e)
{
	uint8_t b[2];
	int r = cfg_pread(d, DMB_PCI_COMMAND, b, sizeof(b), e);
	if (r < 0)
		return r;
	*cmd = (uint16_t)(b[0] | b[1] << 8);
	return 0;
}

static int cfg_set_command(const struct sim_dev *d, uint16_t cmd, struct dmb_err *e)
{
	uint8_t b[2] = { (uint8_t)cmd, (uint8_t)(cmd >> 8) };
	return cfg_pwrite(d, DMB_PCI_COMMAND, b, sizeof(b), e);
}

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (unsigned i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* An edu device's type-0 header, as QEMU presents it, with made-up BAR
 * addresses (the sim has no physical address space). */
static void cfg_initial(const struct sim_dev *d, uint8_t cfg[SIM_CFG_SIZE])
{
	memset(cfg, 0, SIM_CFG_SIZE);
	put_le16(cfg + 0x00, SIM_VENDOR);
	put_le16(cfg + 0x02, SIM_DEVICE);
	put_le16(cfg + DMB_PCI_COMMAND, 0);
	cfg[0x08] = 0x10;                                         /* revision */
	cfg[0x0b] = 0xff;                                         /* class: other */
	put_le32(cfg + 0x10, 0xf0000000u + d->index * 0x100000u); /* BAR0: mem32 */
	put_le32(cfg + 0x18, (0xc000u + d->index * 0x100u) | 1u); /* BAR2: I/O */
	put_le16(cfg + 0x2c, 0x1af4);                             /* subsystem vendor */
	put_le16(cfg + 0x2e, 0x1100);                             /* subsystem */
	cfg[0x3d] = 1;                                            /* INTA# */
}

/* Accepts dddd:bb:dd.f in either case and writes it in lower case. */
static bool bdf_normalize(const char *in, char out[SIM_BDF_LEN + 1])
{
	static const char shape[] = "xxxx:xx:xx.x";
	if (!in || strlen(in) != SIM_BDF_LEN)
		return false;
	for (size_t i = 0; i < SIM_BDF_LEN; i++) {
		if (shape[i] == 'x') {
			if (!isxdigit((unsigned char)in[i]))
				return false;
			out[i] = (char)tolower((unsigned char)in[i]);
		} else if (in[i] != shape[i]) {
			return false;
		} else {
			out[i] = in[i];
		}
	}
	out[SIM_BDF_LEN] = '\0';
	return strtoul(out + 8, NULL, 16) < 32 && out[11] <= '7';
}

/* ---- the device set ----------------------------------------------------- */

static void sim_dev_fini(struct sim_dev *d)
{
	d->cfg_fd = safe_close(d->cfg_fd);
	if (d->bar0) {
		region_unref(d->bar0);
		d->bar0 = NULL;
	}
}

/* A memfd of `size` bytes that can be written but never resized. */
static int sealed_memfd(const char *name, uint64_t size, struct dmb_err *e)
{
	_cleanup_close_ int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno, "sim: memfd_create(%s) failed: %m", name);
	if (ftruncate(fd, (off_t)size) < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno, "sim: sizing %s failed: %m", name);
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return dmb_fail(e, DMB_E_INTERNAL, errno, "sim: sealing %s failed: %m", name);
	return TAKE_FD(fd);
}

static int sim_dev_init(struct sim_backend *s, struct sim_dev *d, unsigned index, const char *bdf,
			struct dmb_err *e)
{
	char name[64];
	uint8_t cfg[SIM_CFG_SIZE];

	d->be = s;
	d->index = index;
	d->cfg_fd = -1;
	memcpy(d->bdf, bdf, sizeof(d->bdf));
	atomic_init(&d->resets, 0);

	/* The memfd names let a test find a device's BAR memory in
	 * /proc/self/fd and check it with pread(), bypassing the sim. */
	snprintf(name, sizeof(name), "dmb-sim:%s:config", bdf);
	int fd = sealed_memfd(name, SIM_CFG_SIZE, e);
	if (fd < 0)
		return fd;
	d->cfg_fd = fd;
	cfg_initial(d, cfg);
	int r = cfg_pwrite(d, 0, cfg, sizeof(cfg), e);
	if (r < 0)
		return r;

	snprintf(name, sizeof(name), "dmb-sim:%s:bar0", bdf);
	fd = sealed_memfd(name, SIM_BAR0_SIZE, e);
	if (fd < 0)
		return fd;
	r = region_new(s, fd, SIM_BAR0_SIZE, SIM_IOVA_ALIGNMENT, true, &d->bar0, e);
	if (r < 0)
		return r;
	d->bar0->dev = d;
	d->bar0->bar = 0;
	return 0;
}

static int devices_create(struct sim_backend *s, const char *const *list, struct dmb_err *e)
{
	size_t n = 0;
	if (!list)
		list = sim_default_devices;
	while (list[n])
		if (++n > SIM_MAX_DEVICES)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG,
					"sim: more than %u simulated devices", SIM_MAX_DEVICES);
	if (n == 0)
		return 0;

	s->devs = calloc(n, sizeof(*s->devs));
	if (!s->devs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for devices");
	for (size_t i = 0; i < n; i++) {
		char bdf[SIM_BDF_LEN + 1];
		if (!bdf_normalize(list[i], bdf))
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"sim: simulated device '%.32s' is not a PCI address dddd:bb:dd.f",
					list[i]);
		for (size_t j = 0; j < s->n_devs; j++)
			if (strcmp(s->devs[j].bdf, bdf) == 0)
				return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
						"sim: simulated device %s is listed twice", bdf);
		int r = sim_dev_init(s, &s->devs[s->n_devs], (unsigned)i, bdf, e);
		s->n_devs++; /* counted even half-built, so devices_destroy sees it */
		if (r < 0)
			return r;
	}
	return 0;
}

static void devices_destroy(struct sim_backend *s)
{
	for (size_t i = 0; i < s->n_devs; i++) {
		if (s->devs[i].ctx)
			log_error("sim: backend destroyed with device %s still open", s->devs[i].bdf);
		sim_dev_fini(&s->devs[i]);
	}
	free(s->devs);
	s->devs = NULL;
	s->n_devs = 0;
}

static struct sim_dev *dev_find(struct sim_backend *s, const char *bdf)
{
	for (size_t i = 0; i < s->n_devs; i++)
		if (strcmp(s->devs[i].bdf, bdf) == 0)
			return &s->devs[i];
	return NULL;
}

/* "0000:01:00.0, 0000:02:00.0, ..." for error sentences, bounded. */
static void dev_list(const struct sim_backend *s, char *buf, size_t size)
{
	size_t used = 0;
	buf[0] = '\0';
	if (s->n_devs == 0) {
		snprintf(buf, size, "none");
		return;
	}
	for (size_t i = 0; i < s->n_devs; i++) {
		if (used + SIM_BDF_LEN + 8 > size) {
			snprintf(buf + used, size - used, "...");
			return;
		}
		used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? ", " : "", s->devs[i].bdf);
	}
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
	LIST_INIT(&c->devs);
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
		struct sim_area *parent = RB_PARENT(a, link);
		if (parent) {
			if (RB_LEFT(parent, link) == a)
				RB_LEFT(parent, link) = NULL;
			else
				RB_RIGHT(parent, link) = NULL;
		}
		ram += area_release(c, a);
		a = parent;
	}
	RB_INIT(&c->areas);
	unpin(c, ram);
	return bytes;
}

static void sim_dev_close(struct dmb_bdev *bd);

static void sim_ctx_close(struct dmb_bctx *bc)
{
	if (!bc)
		return;
	struct sim_ctx *c = ctx_of(bc);

	/* Devices first, so none can DMA through a half-torn page table. */
	while (!LIST_EMPTY(&c->devs))
		sim_dev_close(&LIST_FIRST(&c->devs)->base);
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

/* The argument checks of iommufd_ioas_map_file(): prot, length, overflow.
 * Sets *last. */
static int check_args(uint64_t iova, uint64_t length, uint32_t prot, uint64_t *last,
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
static int check_iova(struct sim_ctx *c, uint64_t offset, uint64_t iova, uint64_t length,
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
	struct sim_area *hit = area_first_in(c, iova, last);
	if (hit)
		return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
				"IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "] overlaps the %s mapping "
				"[0x%" PRIx64 ", 0x%" PRIx64 "]",
				iova, last, hit->region->dev ? "MMIO" : "RAM", hit->iova, hit->last);
	return 0;
}

/* Commits a checked area: one new reference on r; RAM is pinned, MMIO not. */
static int area_insert(struct sim_ctx *c, struct sim_region *r, uint64_t offset, uint64_t iova,
		       uint64_t last, uint32_t prot, struct dmb_err *e)
{
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
	uint64_t length = last - iova + 1;
	region_ref(r);
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
	struct sim_ctx *c = ctx_of(bc);
	struct sim_region *r = region_of(br);
	uint64_t last;

	if (br->be != bc->be)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: region belongs to another backend");

	int ret = check_args(iova, length, prot, &last, e);
	if (ret < 0)
		return ret;
	ret = check_iova(c, offset, iova, length, last, e);
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
	return area_insert(c, r, offset, iova, last, prot, e);
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

	uint64_t bytes = 0, ram = 0;
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
		ram += area_release(c, a);
		a = next;
	}
	unpin(c, ram);
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
static int sim_dma_xfer(struct sim_ctx *c, const char *who, uint64_t iova, void *buf, size_t len,
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
		if (!a || a->iova > cur)
			return dmb_fail(e, DMB_E_NOT_FOUND, EFAULT,
					"DMA %s%s faulted at IOVA 0x%" PRIx64 ": no mapping there",
					dir, who, cur);
		if ((a->prot & need) != need)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, EFAULT,
					"DMA %s%s faulted at IOVA 0x%" PRIx64 ": the mapping "
					"[0x%" PRIx64 ", 0x%" PRIx64 "] does not allow device %ss",
					dir, who, cur, a->iova, a->last, dir);
		if (a->region->dev) {
			mmio = true; /* BAR memfds are sealed: they cannot shrink */
		} else {
			/* The kernel keeps the pages pinned if the file shrinks; the
			 * sim only has the mmap, which would SIGBUS past its end. */
			struct stat st;
			if (fstat(a->region->fd, &st) < 0 ||
			    (uint64_t)st.st_size < a->offset + (a->last - a->iova + 1))
				return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EFAULT,
						"DMA %s%s faulted at IOVA 0x%" PRIx64 ": the region's file "
						"shrank beneath the mapping", dir, who, cur);
		}
		if (a->last >= last)
			break;
		cur = a->last + 1;
		a = RB_NEXT(sim_area_tree, &c->areas, a);
	}

	/* Pass 2: every BAR reached must be decoding memory. */
	if (mmio) {
		const struct sim_dev *ok = NULL; /* last device seen decoding */
		cur = iova;
		for (a = first;; a = RB_NEXT(sim_area_tree, &c->areas, a)) {
			const struct sim_dev *peer = a->region->dev;
			if (peer && peer != ok) {
				uint16_t cmd;
				int r = cfg_command(peer, &cmd, e);
				if (r < 0)
					return r;
				if (!(cmd & DMB_PCI_COMMAND_MEMORY))
					return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EIO,
							"DMA %s%s at IOVA 0x%" PRIx64 ": decode error: BAR%u of "
							"%s has memory decoding off (command 0x%04x); no bytes "
							"moved",
							dir, who, cur, a->region->bar, peer->bdf, cmd);
				ok = peer;
			}
			if (a->last >= last)
				break;
			cur = a->last + 1;
		}
	}

	/* Pass 3: move the bytes. */
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
	struct sim_ctx *c = ctx_of(bc);
	lock_shared(c->be);
	int r = sim_dma_xfer(c, "", iova, buf, len, to_memory, e);
	unlock(c->be);
	return r;
}

/* ---- devices ------------------------------------------------------------- */

static int sim_dev_open(struct dmb_bctx *bc, const char *bdf_in, struct dmb_bdev **out,
			struct dmb_dev_info *info, struct dmb_err *e)
{
	char bdf[SIM_BDF_LEN + 1], have[160];

	if (!bc || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dev_open called without a context");
	struct sim_ctx *c = ctx_of(bc);
	struct sim_backend *s = c->be;
	if (!bdf_normalize(bdf_in, bdf))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%.32s' is not a PCI address (expected dddd:bb:dd.f)", bdf_in ? bdf_in : "");

	struct sim_dev *d = dev_find(s, bdf);
	if (!d) {
		dev_list(s, have, sizeof(have));
		return dmb_fail(e, DMB_E_NOT_FOUND, ENODEV, "no simulated device at %s; the sim has: %s",
				bdf, have);
	}

	lock_excl(s);
	if (d->ctx) {
		bool same = d->ctx == c;
		unlock(s);
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"simulated device %s is already open in %s context", bdf,
				same ? "this" : "another");
	}
	d->ctx = c;
	d->base.ctx = bc;
	LIST_INSERT_HEAD(&c->devs, d, link);
	unlock(s);

	if (info) {
		memset(info, 0, sizeof(*info));
		info->vendor = SIM_VENDOR;
		info->device = SIM_DEVICE;
		snprintf(info->group, sizeof(info->group), "sim-%u", d->index);
		info->viable = true;
	}
	*out = &d->base;
	return 0;
}

/* Device state lost: the BAR reads as zeroes. Punching the whole file
 * frees its pages and every MAP_SHARED mapping sees zeroes at once. */
static void bar_zero(struct sim_dev *d)
{
	struct sim_region *b = d->bar0;
	if (fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)b->size) < 0)
		memset(b->mem, 0, (size_t)b->size);
}

/* Detach, as vfio-pci's release does: bus mastering and decoding off
 * (command register 0) and a function reset, so the next owner gets no
 * device state from this one (the BAR memory reads as zeroes). Areas of
 * other contexts that still map the BAR keep its memory alive; DMA through
 * them answers a decode error until the device's memory decoding is turned
 * on again. Takes dev_lock exclusive. A handle that was closed already is
 * logged and ignored (one closed and reopened since cannot be told apart:
 * the core must not keep handles past dev_close or ctx_close). */
static void sim_dev_close(struct dmb_bdev *bd)
{
	if (!bd)
		return;
	struct sim_dev *d = dev_of(bd);
	struct sim_backend *s = d->be;

	lock_excl(s);
	if (!d->ctx) {
		unlock(s);
		log_error("sim: device %s closed twice", d->bdf);
		return;
	}
	LIST_REMOVE(d, link);
	d->ctx = NULL;
	d->base.ctx = NULL;
	if (cfg_set_command(d, 0, NULL) < 0)
		log_error("sim: could not clear the command register of %s on close", d->bdf);
	bar_zero(d);
	unlock(s);
}

static int sim_dev_fd(struct dmb_bdev *bd)
{
	return bd ? dev_of(bd)->cfg_fd : -EINVAL;
}

/* An open device, or an error naming it; caller holds dev_lock. */
static int dev_check_open(const struct sim_dev *d, const char *op, struct dmb_err *e)
{
	if (!d->ctx)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENODEV, "sim: %s of %s, which is not open",
				op, d->bdf);
	return 0;
}

static int sim_dev_bar_info(struct dmb_bdev *bd, unsigned bar, struct dmb_bar_info *out,
			    struct dmb_err *e)
{
	if (!bd || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dev_bar_info called without a device");
	struct sim_dev *d = dev_of(bd);
	if (bar >= DMB_PCI_NUM_BARS)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "%s has no BAR %u (BARs are 0..5)",
				d->bdf, bar);
	memset(out, 0, sizeof(*out));
	if (bar == 0)
		*out = (struct dmb_bar_info){ .size = SIM_BAR0_SIZE, .mmio = true, .mappable = true };
	else if (bar == 2)
		*out = (struct dmb_bar_info){ .size = SIM_BAR2_SIZE, .mmio = false, .mappable = false };
	return 0;
}

static int cfg_bounds(const struct sim_dev *d, uint32_t off, const void *buf, size_t len,
		      const char *op, struct dmb_err *e)
{
	if (off > SIM_CFG_SIZE || len > SIM_CFG_SIZE - off)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"config %s of %zu bytes at 0x%" PRIx32 " is past the %u-byte config space "
				"of %s", op, len, off, SIM_CFG_SIZE, d->bdf);
	if (len && !buf)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: config %s of %s without a buffer", op,
				d->bdf);
	return 0;
}

static int sim_dev_config_read(struct dmb_bdev *bd, uint32_t off, void *buf, size_t len,
			       struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: config read without a device");
	struct sim_dev *d = dev_of(bd);
	int r = cfg_bounds(d, off, buf, len, "read", e);
	if (r < 0 || len == 0)
		return r;
	lock_shared(d->be);
	r = dev_check_open(d, "config read", e);
	if (r == 0)
		r = cfg_pread(d, off, buf, len, e);
	unlock(d->be);
	return r;
}

/* Raw bytes: the sim has no read-only or virtualised registers. Exclusive,
 * so a DMA in flight finishes before a change of decoding takes effect. */
static int sim_dev_config_write(struct dmb_bdev *bd, uint32_t off, const void *buf, size_t len,
				struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: config write without a device");
	struct sim_dev *d = dev_of(bd);
	int r = cfg_bounds(d, off, buf, len, "write", e);
	if (r < 0 || len == 0)
		return r;
	lock_excl(d->be);
	r = dev_check_open(d, "config write", e);
	if (r == 0)
		r = cfg_pwrite(d, off, buf, len, e);
	unlock(d->be);
	return r;
}

/* pci_try_reset_function() under vfio-pci: save config space, disable the
 * command register, reset (device state and BAR contents lost), restore
 * config space, so the command register comes back as it was. */
static int sim_dev_reset(struct dmb_bdev *bd, struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: reset without a device");
	struct sim_dev *d = dev_of(bd);
	uint8_t saved[SIM_CFG_SIZE];

	lock_excl(d->be);
	int r = dev_check_open(d, "reset", e);
	if (r == 0)
		r = cfg_pread(d, 0, saved, sizeof(saved), e);
	if (r == 0)
		r = cfg_set_command(d, 0, e);
	if (r == 0) {
		bar_zero(d);
		uint32_t n = atomic_fetch_add_explicit(&d->resets, 1, memory_order_relaxed) + 1;
		put_le32(saved + SIM_CFG_RESET_COUNT, n);
		r = cfg_pwrite(d, 0, saved, sizeof(saved), e);
	}
	unlock(d->be);
	return r;
}

/* ---- P2P ------------------------------------------------------------------ */

static int sim_map_bar(struct dmb_bctx *bc, struct dmb_bdev *peer, unsigned bar, uint64_t offset,
		       uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e)
{
	if (!bc || !peer)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: map_bar called without a context or device");
	struct sim_ctx *c = ctx_of(bc);
	struct sim_dev *d = dev_of(peer);
	uint64_t last;

	if (d->be != c->be)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: device %s belongs to another backend",
				d->bdf);
	int r = check_args(iova, length, prot, &last, e);
	if (r < 0)
		return r;

	/* What the dma-buf export would refuse (kernel-uapi.md §3.5). */
	struct dmb_bar_info bi;
	r = sim_dev_bar_info(peer, bar, &bi, e);
	if (r < 0)
		return r;
	if (bi.size == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "BAR%u of %s is not implemented", bar,
				d->bdf);
	if (!bi.mmio || !bi.mappable)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"BAR%u of %s is I/O port space and cannot be mapped", bar, d->bdf);
	if (offset > bi.size || length > bi.size - offset)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"range [0x%" PRIx64 ", +0x%" PRIx64 ") is past the end of BAR%u of %s "
				"(0x%" PRIx64 " bytes)", offset, length, bar, d->bdf, bi.size);

	r = check_iova(c, offset, iova, length, last, e);
	if (r < 0)
		return r;

	/* Shared: the decoding check and the insertion are one step against
	 * dev_config_write and dev_reset (another context may run them). */
	lock_shared(c->be);
	r = dev_check_open(d, "map_bar", e);
	uint16_t cmd = 0;
	if (r == 0)
		r = cfg_command(d, &cmd, e);
	if (r == 0 && !(cmd & DMB_PCI_COMMAND_MEMORY))
		/* type1: the fault on the BAR mmap fails MAP_DMA with EFAULT. */
		r = dmb_fail(e, DMB_E_FAILED_PRECONDITION, EFAULT,
			     "cannot map BAR%u of %s at IOVA 0x%" PRIx64 ": its memory decoding is off "
			     "(command 0x%04x)", bar, d->bdf, iova, cmd);
	if (r == 0)
		r = area_insert(c, d->bar0, offset, iova, last, prot, e);
	unlock(c->be);
	return r;
}

static int sim_dev_dma(struct dmb_bdev *bd, uint64_t iova, void *buf, size_t len, bool to_memory,
		       struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dev_dma called without a device");
	struct sim_dev *d = dev_of(bd);
	struct sim_backend *s = d->be;
	char who[SIM_BDF_LEN + 8];
	uint16_t cmd = 0;

	snprintf(who, sizeof(who), " by %s", d->bdf);
	lock_shared(s);
	int r = dev_check_open(d, "DMA", e);
	if (r == 0)
		r = cfg_command(d, &cmd, e);
	if (r == 0 && !(cmd & DMB_PCI_COMMAND_MASTER))
		r = dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPERM,
			     "%s cannot DMA at IOVA 0x%" PRIx64 ": its bus mastering is off "
			     "(command 0x%04x)", d->bdf, iova, cmd);
	if (r == 0)
		r = sim_dma_xfer(d->ctx, who, iova, buf, len, to_memory, e);
	unlock(s);
	return r;
}

/* ---- the backend -------------------------------------------------------- */

static uint64_t sim_pinned_bytes(struct dmb_backend *be)
{
	return be ? atomic_load_explicit(&sim_of(be)->pinned, memory_order_relaxed) : 0;
}

/* Accepts a half-built backend (dmb_sim_create's failure path). */
static void sim_free(struct sim_backend *s)
{
	devices_destroy(s);
	long live = atomic_load(&s->live);
	/* Their back pointers dangle from here on: a bug in the caller. */
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
	"map-file", "unmap-all", "dma-engine", "devices", "p2p", NULL,
};

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
	s->populate = cfg && cfg->sim_populate;
	atomic_init(&s->pinned, 0);
	atomic_init(&s->live, 0);
	r = devices_create(s, cfg ? cfg->sim_devices : NULL, e);
	if (r < 0) {
		sim_free(s);
		return r;
	}
	*out = &s->base;
	return 0;
}
