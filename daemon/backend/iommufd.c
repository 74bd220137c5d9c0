/* iommufd.c — the iommufd backend (Linux 6.6+ with the VFIO device cdev).
 *
 * A context is one open of /dev/iommu plus one IOAS. Devices are opened
 * through their cdev (/dev/vfio/devices/vfioN, found under
 * <sysfs>/bus/pci/devices/<BDF>/vfio-dev/), bound to the context's iommufd
 * (VFIO_DEVICE_BIND_IOMMUFD) and attached to its IOAS
 * (VFIO_DEVICE_ATTACH_IOMMUFD_PT; the kernel picks or creates the HWPT).
 *
 * Mapping: by file (IOMMU_IOAS_MAP_FILE, 6.13+) when the kernel has it —
 * the IOAS then holds its own reference on the memfd, nothing depends on
 * the daemon's address space, and IOMMU_IOAS_CHANGE_PROCESS can move the
 * pin accounting to a new daemon process after a restart. Otherwise by
 * address (IOMMU_IOAS_MAP) of the daemon's own MAP_SHARED mmap of the
 * region, made once in region_open. Always FIXED_IOVA: the core chooses.
 *
 * Start-up probing: /dev/iommu must open and the VFIO cdev must exist
 * (/dev/vfio/devices, which appears with the first vfio-bound device; on the
 * real /dev also the "vfio-dev" character major in /proc/devices, so a
 * daemon started before any device is bound still picks iommufd). MAP_FILE
 * and CHANGE_PROCESS are detected by issuing them with deliberately invalid
 * arguments on a scratch IOAS (flags 0, resp. __reserved 1): an older kernel
 * answers ENOTTY, a newer one EINVAL/EOPNOTSUPP without doing anything.
 *
 * IOVA info: IOMMU_IOAS_IOVA_RANGES, two calls (count, then fill; EMSGSIZE
 * if the count grew meanwhile). The alignment reported is the IOAS's,
 * raised to the host page size: a fresh IOAS says 1 until a device is
 * attached, and a mapping made at byte granularity then could not be
 * pinned at attach time. No mapping-count limit (max_mappings 0). Attaching
 * a device can shrink the ranges: the core must re-query after dev_open.
 *
 * Unmap semantics: IOMMU_IOAS_UNMAP removes the areas wholly inside the
 * range, ENOENT if there is none or one straddles an end (the core checks
 * first); iova 0 + length U64_MAX is unmap-all.
 *
 * Devices: dev_close detaches explicitly before closing, so a duplicate of
 * the device fd held by a client can no longer DMA into this IOAS.
 * ctx_close closes the context's devices too (the core must not call
 * dev_close on them afterwards), unmaps everything and destroys the IOAS.
 *
 * Device state (dev_bar_info, dev_config_*, dev_reset) goes to the device
 * fd through ksys_vdev (ksys.h), as in the type1 backend.
 *
 * P2P (map_bar, feature "p2p-dmabuf"): iommufd cannot map a BAR by address
 * (pinning a PFNMAP VMA fails). Instead the peer's BAR range is
 * exported as a VFIO dma-buf (VFIO_DEVICE_FEATURE_DMA_BUF, 6.19) and
 * imported with IOMMU_IOAS_MAP_FILE (6.13); the IOAS keeps its own
 * reference, so the dma-buf fd is closed at once. Export support is probed
 * on every device at open (VFIO_DEVICE_FEATURE with PROBE); the feature is
 * announced once a device has it. The kernel revokes the import by itself
 * at every memory disable and reset of the peer (the IOVA range stays
 * occupied) and never restores it: the core unmaps the revoked area and
 * calls map_bar again once memory is back, so every map_bar exports a
 * fresh dma-buf (an old one may be revoked for good). Without MAP_FILE or
 * dma-buf export map_bar is -EOPNOTSUPP naming what is missing.
 *
 * Accounting: pinned_bytes counts RAM bytes mapped through this backend.
 * (iommufd pins only once a device is attached, and a page mapped twice is
 * pinned once; this counter is the daemon's budget view, not the kernel's.)
 *
 * Restart (backend.h, "restart"; IOMMU_IOAS_CHANGE_PROCESS).
 * A context's kernel state is its iommufd, named "iommufd.ioas<ID>" so the
 * successor knows its IOAS (a bare "iommufd" is accepted too: the IOAS is
 * then found by asking IOMMU_IOAS_IOVA_RANGES of object IDs 1, 2, ...); a
 * device's is its cdev fd, "device.dev<devid>", still bound and attached.
 *   - ctx_prepare_handover has nothing to move; from then on ctx_close and
 *     dev_close close this process's fds only (no detach, no unmap, no
 *     destroy: the IOAS is the successor's).
 *   - ctx_adopt / dev_adopt check the objects (IOVA_RANGES on the IOAS; the
 *     config region and GET_HW_INFO of the devid for a device) and rebuild.
 *   - map_adopt: no uAPI lists or queries an IOAS's areas, and UNMAP cannot
 *     probe without removing, so the journal is trusted. MAP_FILE areas hold
 *     their memfd: nothing to do. MAP areas (kernels without MAP_FILE) keep
 *     the old process's address and pins; the context is then "VA-stale"
 *     and dev_open refuses new devices (a new domain may make the kernel pin
 *     from that address space again) until every mapping is gone.
 *   - adopt_finish: IOMMU_IOAS_CHANGE_PROCESS once ("change-process"), so
 *     the pinned-page accounting follows this process; EINVAL (an area by
 *     address or a dma-buf) is logged and adoption goes on. 0 stray: no
 *     uAPI enumerates areas, and the journal names every one by
 *     construction.
 *
 * No-IOMMU contexts (Linux 7.3, CONFIG_IOMMUFD_NOIOMMU, booted with
 * vfio.enable_unsafe_noiommu_mode=1): a device with no IOMMU gets the cdev
 * noiommu-vfioN; it binds (the kernel gives it a dummy group) and attaches
 * to the IOAS, whose areas it then holds in a software-only page table
 * (hwpt_noiommu.c): maps pin as usual. Such devices open only in a context
 * made a no-IOMMU one (ctx_set_noiommu), and other devices only in other
 * contexts. phys is IOMMU_IOAS_NOIOMMU_GET_PA (ENOENT: not mapped;
 * EOPNOTSUPP: no such device attached yet). Opening the cdev and GET_PA
 * need CAP_SYS_RAWIO (EPERM); GET_HW_INFO answers EOPNOTSUPP for them.
 *
 * Every ioctl goes through ksys_ioctl(), so tests/unit/kernel checks the
 * exact bytes of every command without an IOMMU. */
#include "backend/backend.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/ksys.h"
#include "backend/uapi/iommufd.h"
#include "backend/uapi/vfio_cdev.h"
#include "util/log.h"
#include "util/macro.h"

struct ifd_backend {
	struct dmb_backend base;
	char *sysfs_root;
	char *dev_root;
	char iommu_path[PATH_MAX];
	bool map_file;       /* IOMMU_IOAS_MAP_FILE */
	bool change_process; /* IOMMU_IOAS_CHANGE_PROCESS */
	/* features[] is NULL-terminated; "p2p-dmabuf" is added at
	 * features[n_features] the first time a device can export dma-bufs
	 * (the slot after it stays NULL). */
	const char *features[6];
	size_t n_features;
	atomic_bool dmabuf_seen;
	_Atomic uint64_t pinned;
};

struct ifd_ctx;

struct ifd_dev {
	struct ksys_vdev v; /* first: the core's struct dmb_bdev; borrows fd */
	struct ifd_dev *next;
	struct ifd_ctx *ctx;
	int fd;
	uint32_t devid;   /* iommufd DEVICE object */
	uint32_t hwpt_id; /* the HWPT the kernel attached it to */
	char name[32];    /* "vfioN", or "noiommu-vfioN" (no IOMMU) */
	char bdf[KSYS_BDF_LEN + 1];
	int dmabuf_err;   /* 0: exports BARs as dma-bufs; else the probe's -errno */
};

struct ifd_ctx {
	struct dmb_bctx base;
	struct ifd_backend *be;
	int fd; /* the iommufd */
	uint32_t ioas_id;
	uint64_t mapped; /* RAM bytes mapped in this IOAS */
	struct ksys_mmio_set mmio; /* peer BAR (dma-buf) mappings, not pinned */
	struct ifd_dev *devs;
	/* Restart (see "Restart" in the header comment). */
	bool noiommu;     /* a no-IOMMU context: only noiommu-vfioN devices */
	bool handed_over; /* ctx_prepare_handover was called: close forgets */
	bool va_stale;    /* an adopted area was mapped by a previous process's address */
	uint64_t n_adopted, n_va;
};

struct ifd_region {
	struct dmb_bregion base;
	int fd;     /* our duplicate of the region's fd (MAP_FILE) */
	void *addr; /* MAP_SHARED mmap when mapping by address, else NULL */
	uint64_t size;
};

static inline struct ifd_backend *ifd_be(struct dmb_backend *b)
{
	return dmb_container_of(b, struct ifd_backend, base);
}

static inline struct ifd_ctx *ifd_ctx(struct dmb_bctx *b)
{
	return dmb_container_of(b, struct ifd_ctx, base);
}

static int oom(struct dmb_err *e, const char *what)
{
	return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory allocating %s", what);
}

static int ioas_alloc(int fd, uint32_t *ioas_id)
{
	struct dmb_iommu_ioas_alloc a = {.size = sizeof(a)};
	int r = ksys_ioctl(fd, DMB_IOMMU_IOAS_ALLOC, &a);
	if (r < 0)
		return r;
	*ioas_id = a.out_ioas_id;
	return 0;
}

static int destroy_object(int fd, uint32_t id)
{
	struct dmb_iommu_destroy d = {.size = sizeof(d), .id = id};
	return ksys_ioctl(fd, DMB_IOMMU_DESTROY, &d);
}

/* ---- backend ---- */

static void ifd_destroy(struct dmb_backend *b)
{
	if (!b)
		return;
	struct ifd_backend *be = ifd_be(b);
	free(be->sysfs_root);
	free(be->dev_root);
	free(be);
}

static uint64_t ifd_pinned_bytes(struct dmb_backend *b)
{
	return atomic_load(&ifd_be(b)->pinned);
}

/* ---- contexts ---- */

static int ifd_ctx_open(struct dmb_backend *b, struct dmb_bctx **out, struct dmb_err *e)
{
	struct ifd_backend *be = ifd_be(b);
	_cleanup_close_ int fd = open(be->iommu_path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return dmb_fail(e, dmb_code_from_errno(-errno), errno, "opening %s failed (%s): %s",
				be->iommu_path, ksys_errno_name(errno), strerror(errno));
	uint32_t ioas = 0;
	int r = ioas_alloc(fd, &ioas);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r, "IOMMU_IOAS_ALLOC failed (%s): %s",
				ksys_errno_name(r), strerror(-r));
	struct ifd_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return oom(e, "an iommufd context");
	c->base.be = b;
	c->be = be;
	c->fd = TAKE_FD(fd);
	c->ioas_id = ioas;
	*out = &c->base;
	return 0;
}

/* The kernel removed `bytes` in [iova, iova+length) (length 0: everything),
 * RAM and MMIO together. */
static void account_unmapped(struct ifd_ctx *c, uint64_t iova, uint64_t length, uint64_t bytes)
{
	uint64_t mmio = ksys_mmio_remove(&c->mmio, iova, length);
	bytes = bytes > mmio ? bytes - mmio : 0;
	if (length == 0 || bytes > c->mapped)
		bytes = c->mapped;
	c->mapped -= bytes;
	atomic_fetch_sub(&c->be->pinned, bytes);
	if (c->mapped == 0)
		c->va_stale = false; /* no area by a previous process's address is left */
}

static int ifd_unmap_all(struct dmb_bctx *bc, uint64_t *unmapped, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct dmb_iommu_ioas_unmap u = {
		.size = sizeof(u),
		.ioas_id = c->ioas_id,
		.iova = 0,
		.length = UINT64_MAX, /* exactly this pair means "everything" */
	};
	int r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_UNMAP, &u);
	if (r < 0)
		return dmb_fail(e, r == -EBUSY ? DMB_E_UNAVAILABLE : dmb_code_from_errno(r), -r,
				"IOMMU_IOAS_UNMAP of the whole IOAS failed (%s): %s", ksys_errno_name(r),
				r == -EBUSY ? "an area is busy (being mapped or used by the kernel)"
					    : strerror(-r));
	*unmapped = u.length;
	account_unmapped(c, 0, 0, c->mapped);
	return 0;
}

/* detach: false after a handover, when the device (bound and attached
 * through the fd store's duplicate) is the successor's. */
static void ifd_dev_free(struct ifd_dev *d, bool detach)
{
	if (d->fd >= 0 && detach) {
		struct dmb_vfio_device_detach_iommufd_pt det = {
			.argsz = DMB_VFIO_DETACH_IOMMUFD_PT_MINSZ,
			.flags = 0,
		};
		int r = ksys_ioctl(d->fd, DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT, &det);
		if (r < 0)
			log_debug("iommufd: VFIO_DEVICE_DETACH_IOMMUFD_PT of %s: %s", d->bdf,
				  ksys_errno_name(r));
	}
	safe_close(d->fd);
	free(d);
}

static void ifd_ctx_close(struct dmb_bctx *bc)
{
	if (!bc)
		return;
	struct ifd_ctx *c = ifd_ctx(bc);
	while (c->devs) {
		struct ifd_dev *d = c->devs;
		c->devs = d->next;
		ifd_dev_free(d, !c->handed_over);
	}
	if (c->handed_over) {
		/* The successor owns the IOAS: no unmap, no destroy. */
		atomic_fetch_sub(&c->be->pinned, c->mapped);
		ksys_mmio_free(&c->mmio);
		safe_close(c->fd);
		free(c);
		return;
	}
	uint64_t n;
	struct dmb_err e = {0};
	if (ifd_unmap_all(bc, &n, &e) < 0)
		log_warning("iommufd: closing a context: %s", e.msg);
	int r = destroy_object(c->fd, c->ioas_id);
	if (r < 0)
		log_debug("iommufd: IOMMU_DESTROY of IOAS %u: %s", c->ioas_id, ksys_errno_name(r));
	/* Closing the iommufd releases whatever is left (once no device
	 * duplicate holds it). */
	if (c->mapped) {
		atomic_fetch_sub(&c->be->pinned, c->mapped);
		c->mapped = 0;
	}
	ksys_mmio_free(&c->mmio);
	safe_close(c->fd);
	free(c);
}

static int ifd_iova_info(struct dmb_bctx *bc, struct dmb_iova_info *out, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	_cleanup_free_ struct dmb_iommu_iova_range *ranges = NULL;
	struct dmb_iommu_ioas_iova_ranges q = {
		.size = sizeof(q),
		.ioas_id = c->ioas_id,
		.num_iovas = 0,
		.allowed_iovas = 0,
	};
	uint32_t cap = 0;

	/* Two-call negotiation: ask with capacity 0, learn the count from
	 * EMSGSIZE, ask again with room for it (again if it grew meanwhile). */
	for (int tries = 0;; tries++) {
		int r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_IOVA_RANGES, &q);
		if (r == 0 && q.num_iovas <= cap)
			break;
		if (r < 0 && r != -EMSGSIZE)
			return dmb_fail(e, dmb_code_from_errno(r), -r,
					"IOMMU_IOAS_IOVA_RANGES failed (%s): %s", ksys_errno_name(r),
					strerror(-r));
		if (tries == 3 || q.num_iovas > 1u << 16)
			return dmb_fail(e, DMB_E_INTERNAL, EPROTO,
					"IOMMU_IOAS_IOVA_RANGES keeps changing its count (%u ranges)",
					q.num_iovas);
		cap = q.num_iovas;
		free(ranges);
		ranges = calloc(cap ? cap : 1, sizeof(*ranges));
		if (!ranges)
			return oom(e, "the IOVA ranges");
		q.num_iovas = cap;
		q.allowed_iovas = (uint64_t)(uintptr_t)ranges;
	}

	memset(out, 0, sizeof(*out));
	if (q.num_iovas > DMB_MAX_IOVA_RANGES)
		log_warning("iommufd: the IOAS reports %u IOVA ranges; using the first %d",
			    q.num_iovas, DMB_MAX_IOVA_RANGES);
	for (uint32_t i = 0; i < q.num_iovas && i < DMB_MAX_IOVA_RANGES; i++) {
		if (ranges[i].start > ranges[i].last)
			return dmb_fail(e, DMB_E_INTERNAL, EPROTO,
					"IOMMU_IOAS_IOVA_RANGES returned an empty range");
		out->ranges[out->n].start = ranges[i].start;
		out->ranges[out->n].last = ranges[i].last;
		out->n++;
	}
	uint64_t page = ksys_page_size();
	out->alignment = q.out_iova_alignment > page ? q.out_iova_alignment : page;
	out->max_mappings = 0;
	out->mappings_available = 0;
	return 0;
}

/* ---- devices ---- */

static int bind_error(struct dmb_err *e, const char *bdf, int r)
{
	static const struct ksys_why whys[] = {
		{ EPERM, DMB_E_FAILED_PRECONDITION,
		  "a device of its IOMMU group is bound to a host driver or owned elsewhere, "
		  "or there is no interrupt remapping" },
		{ EBUSY, DMB_E_FAILED_PRECONDITION,
		  "its VFIO group node is open (a legacy VFIO user holds it)" },
		{ EINVAL, DMB_E_FAILED_PRECONDITION,
		  "already bound through another fd, or the IOMMU is not cache-coherent" },
		{ 0 },
	};
	int code;
	const char *why = ksys_explain(r, whys, &code);
	return dmb_fail(e, code, -r, "VFIO_DEVICE_BIND_IOMMUFD of %s failed (%s): %s", bdf,
			ksys_errno_name(r), why);
}

static int attach_error(struct dmb_err *e, const char *bdf, int r)
{
	static const struct ksys_why whys[] = {
		{ EADDRINUSE, DMB_E_FAILED_PRECONDITION,
		  "its reserved IOVA regions collide with the IOAS's allowed ranges" },
		{ EBUSY, DMB_E_UNAVAILABLE, "the device or a sibling is being reset" },
		{ EINVAL, DMB_E_FAILED_PRECONDITION,
		  "its IOMMU cannot share the IOAS's page table" },
		{ 0 },
	};
	int code;
	const char *why = ksys_explain(r, whys, &code);
	return dmb_fail(e, code, -r, "VFIO_DEVICE_ATTACH_IOMMUFD_PT of %s failed (%s): %s", bdf,
			ksys_errno_name(r), why);
}

/* VFIO_DEVICE_FEATURE(PROBE | GET | DMA_BUF): 0 where the kernel (6.19+,
 * CONFIG_VFIO_PCI_DMABUF) and the driver export BARs as dma-bufs; ENOTTY
 * where the feature is unknown, EOPNOTSUPP where the driver lacks it. */
static void probe_dmabuf(struct ifd_backend *be, struct ifd_dev *d)
{
	struct dmb_vfio_dma_buf_one q = {
		.hdr = {.argsz = sizeof(q),
			.flags = VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET |
				 DMB_VFIO_DEVICE_FEATURE_DMA_BUF},
		.buf = {.region_index = 0, .open_flags = O_RDWR | O_CLOEXEC, .nr_ranges = 1},
		.range = {.offset = 0, .length = ksys_page_size()},
	};
	int r = ksys_ioctl(d->fd, VFIO_DEVICE_FEATURE, &q);
	d->dmabuf_err = r < 0 ? r : 0;
	log_debug("iommufd: %s: VFIO dma-buf export of BARs: %s", d->bdf,
		  r < 0 ? ksys_errno_name(r) : "yes");
	if (r >= 0 && be->map_file && !atomic_exchange(&be->dmabuf_seen, true))
		be->features[be->n_features] = "p2p-dmabuf";
}

/* A new device of c that takes fd (bound and attached); NULL when out of
 * memory, fd untouched. */
static struct ifd_dev *dev_new(struct ifd_ctx *c, int fd, uint32_t devid, uint32_t hwpt_id,
			       const char *name, const char *bdf)
{
	struct ifd_dev *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->v.base.ctx = &c->base;
	d->ctx = c;
	d->fd = fd;
	d->devid = devid;
	d->hwpt_id = hwpt_id;
	snprintf(d->name, sizeof(d->name), "%s", name);
	snprintf(d->bdf, sizeof(d->bdf), "%s", bdf);
	ksys_vdev_init(&d->v, d->fd, bdf);
	if (d->v.cfg_err < 0)
		log_debug("iommufd: %s has no config region (%s)", bdf, ksys_errno_name(d->v.cfg_err));
	probe_dmabuf(c->be, d);
	d->next = c->devs;
	c->devs = d;
	return d;
}

static void dev_info_fill(struct ifd_backend *be, const char *bdf, const char *name,
			  struct dmb_dev_info *info)
{
	if (!info)
		return;
	memset(info, 0, sizeof(*info));
	if (ksys_pci_ids(be->sysfs_root, bdf, &info->vendor, &info->device) < 0)
		log_debug("iommufd: cannot read the vendor/device IDs of %s", bdf);
	snprintf(info->group, sizeof(info->group), "%s", name);
	info->viable = true;
}

static int ifd_dev_open(struct dmb_bctx *bc, const char *bdf_in, struct dmb_bdev **out,
			struct dmb_dev_info *info, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct ifd_backend *be = c->be;
	char bdf[KSYS_BDF_LEN + 1], name[32], path[PATH_MAX];

	if (ksys_bdf_normalize(bdf_in, bdf) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%s' is not a PCI address (expected dddd:bb:dd.f)", bdf_in ? bdf_in : "");
	if (c->va_stale)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"cannot attach %s: %" PRIu64 " mapping(s) of this context were made by "
				"address by a previous broker process, and a new device could make the "
				"kernel pin them from its dead address space; re-create the context (or "
				"unmap them all) first",
				bdf, c->n_va);
	int r = ksys_pci_exists(be->sysfs_root, bdf);
	if (r < 0)
		return dmb_fail(e, DMB_E_NOT_FOUND, -r, "no PCI device %s on this host (%s)", bdf,
				ksys_errno_name(r));
	r = ksys_vfio_dev_name(be->sysfs_root, bdf, name, sizeof(name));
	if (r < 0) {
		char drv[128] = "";
		ksys_pci_driver(be->sysfs_root, bdf, drv, sizeof(drv));
		if (drv[0] && ksys_driver_keeps_group_viable(drv) && strstr(drv, "vfio"))
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -r,
					"%s is bound to %s but has no VFIO device cdev (vfio-dev/ "
					"missing: a device without an IOMMU gets one only from Linux "
					"7.3 with CONFIG_IOMMUFD_NOIOMMU)",
					bdf, drv);
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -r,
				"%s is not bound to vfio-pci (driver: %s)", bdf, drv[0] ? drv : "none");
	}
	bool dev_noiommu = ksys_noiommu_name(name);
	if (dev_noiommu && !c->noiommu)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENODEV,
				"%s has no IOMMU (VFIO no-IOMMU device %s): it can only be opened in a "
				"no-IOMMU context (ContextCreate with noiommu), which gives no "
				"isolation",
				bdf, name);
	if (!dev_noiommu && c->noiommu)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EINVAL,
				"%s has an IOMMU (VFIO device %s): a no-IOMMU context is only for "
				"devices without one; open it in a normal context",
				bdf, name);
	r = ksys_path(path, sizeof(path), "%s/vfio/devices/%s", be->dev_root, name);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r, "the VFIO device path is too long");

	/* Through ksys_open: the open itself answers (a noiommu-vfioN cdev
	 * without CAP_SYS_RAWIO: EPERM), which the unit tests play. */
	_cleanup_close_ int fd = ksys_open(path, O_RDWR);
	if (fd < 0) {
		int err = -fd;
		fd = -1;
		if (err == EPERM && dev_noiommu)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, err,
					"opening %s (%s) failed (EPERM): a no-IOMMU device needs "
					"CAP_SYS_RAWIO, which the broker does not hold",
					path, bdf);
		if (err == EACCES || err == EPERM)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, err, "opening %s (%s) failed (%s)", path,
					bdf, ksys_errno_name(err));
		return dmb_fail(e, err == ENOENT ? DMB_E_FAILED_PRECONDITION : dmb_code_from_errno(-err),
				err, "opening %s (%s) failed (%s): %s", path, bdf, ksys_errno_name(err),
				strerror(err));
	}

	/* 16 bytes: the 6.6 struct, no VF token (struct vfio_device_bind_iommufd). */
	struct dmb_vfio_device_bind_iommufd bind = {
		.argsz = DMB_VFIO_BIND_IOMMUFD_MINSZ,
		.flags = 0,
		.iommufd = c->fd,
	};
	r = ksys_ioctl(fd, DMB_VFIO_DEVICE_BIND_IOMMUFD, &bind);
	if (r < 0)
		return bind_error(e, bdf, r);

	/* 12 bytes: no PASID. pt_id comes back as the HWPT's ID. */
	struct dmb_vfio_device_attach_iommufd_pt att = {
		.argsz = DMB_VFIO_ATTACH_IOMMUFD_PT_MINSZ,
		.flags = 0,
		.pt_id = c->ioas_id,
	};
	r = ksys_ioctl(fd, DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &att);
	if (r < 0)
		return attach_error(e, bdf, r); /* closing fd unbinds */

	struct dmb_iommu_hw_info hw = {
		.size = sizeof(hw),
		.dev_id = bind.out_devid,
	};
	r = ksys_ioctl(c->fd, DMB_IOMMU_GET_HW_INFO, &hw);
	if (r == 0)
		log_debug("iommufd: %s (%s) bound as device %u, HWPT %u, IOMMU type %u, caps %#" PRIx64,
			  bdf, name, bind.out_devid, att.pt_id, hw.out_data_type,
			  (uint64_t)hw.out_capabilities);
	else if (dev_noiommu) /* no IOMMU to describe: EOPNOTSUPP */
		log_warning("iommufd: %s (%s) bound as device %u without an IOMMU: it reaches all "
			    "of memory (no isolation)",
			    bdf, name, bind.out_devid);

	struct ifd_dev *d = dev_new(c, fd, bind.out_devid, att.pt_id, name, bdf);
	if (!d)
		return oom(e, "an iommufd device"); /* closing fd unbinds */
	fd = -1; /* the device's now */
	dev_info_fill(be, bdf, name, info);
	*out = &d->v.base;
	return 0;
}

static void ifd_dev_close(struct dmb_bdev *bd)
{
	if (!bd)
		return;
	struct ifd_dev *d = dmb_container_of(bd, struct ifd_dev, v.base);
	for (struct ifd_dev **pp = &d->ctx->devs; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			break;
		}
	}
	ifd_dev_free(d, !d->ctx->handed_over);
}

static inline struct ifd_dev *ifd_dev(struct dmb_bdev *bd)
{
	return dmb_container_of(bd, struct ifd_dev, v.base);
}

/* ---- regions and mappings ---- */

static int ifd_region_open(struct dmb_backend *b, const struct dmb_region_desc *d,
			   struct dmb_bregion **out, struct dmb_err *e)
{
	struct ifd_backend *be = ifd_be(b);
	if (d->size == 0 || d->size > SIZE_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"a region of %" PRIu64 " bytes cannot be mapped", d->size);
	_cleanup_close_ int fd = fcntl(d->fd, F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return dmb_fail(e, dmb_code_from_errno(-errno), errno,
				"duplicating a region fd failed (%s)", ksys_errno_name(errno));
	void *addr = NULL;
	if (!be->map_file) {
		addr = mmap(NULL, (size_t)d->size, PROT_READ | (d->writable ? PROT_WRITE : 0),
			    MAP_SHARED, fd, 0);
		if (addr == MAP_FAILED)
			return dmb_fail(e, errno == ENOMEM ? DMB_E_RESOURCE_EXHAUSTED : DMB_E_INTERNAL,
					errno, "mmap of a %" PRIu64 "-byte region failed (%s): %s",
					d->size, ksys_errno_name(errno), strerror(errno));
	}
	struct ifd_region *r = calloc(1, sizeof(*r));
	if (!r) {
		if (addr)
			munmap(addr, (size_t)d->size);
		return oom(e, "an iommufd region");
	}
	r->base.be = b;
	r->fd = TAKE_FD(fd);
	r->addr = addr;
	r->size = d->size;
	*out = &r->base;
	return 0;
}

static void ifd_region_close(struct dmb_bregion *br)
{
	if (!br)
		return;
	struct ifd_region *r = dmb_container_of(br, struct ifd_region, base);
	if (r->addr)
		munmap(r->addr, (size_t)r->size);
	safe_close(r->fd);
	free(r);
}

static int ifd_map(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset, uint64_t iova,
		   uint64_t length, uint32_t prot, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct ifd_region *reg = dmb_container_of(br, struct ifd_region, base);
	const char *cmd;
	int r;

	if (offset > reg->size || length > reg->size - offset || length == 0 ||
	    !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"mapping [%#" PRIx64 ", +%#" PRIx64 ") of a %#" PRIx64
				"-byte region is out of bounds",
				offset, length, reg->size);
	uint32_t flags = DMB_IOMMU_IOAS_MAP_FIXED_IOVA |
			 ((prot & DMB_PROT_READ) ? DMB_IOMMU_IOAS_MAP_READABLE : 0) |
			 ((prot & DMB_PROT_WRITE) ? DMB_IOMMU_IOAS_MAP_WRITEABLE : 0);

	if (!reg->addr) {
		cmd = "IOMMU_IOAS_MAP_FILE";
		struct dmb_iommu_ioas_map_file m = {
			.size = sizeof(m),
			.flags = flags,
			.ioas_id = c->ioas_id,
			.fd = reg->fd,
			.start = offset,
			.length = length,
			.iova = iova,
		};
		r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_MAP_FILE, &m);
	} else {
		cmd = "IOMMU_IOAS_MAP";
		struct dmb_iommu_ioas_map m = {
			.size = sizeof(m),
			.flags = flags,
			.ioas_id = c->ioas_id,
			.user_va = (uint64_t)(uintptr_t)reg->addr + offset,
			.length = length,
			.iova = iova,
		};
		r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_MAP, &m);
	}
	if (r < 0) {
		static const struct ksys_why whys[] = {
			{ EEXIST, 0, "the range overlaps an existing mapping of the IOAS" },
			{ EINVAL, 0,
			  "not aligned to the IOAS, inside a reserved IOVA region, or an unsuitable "
			  "file" },
			{ ENOMEM, DMB_E_RESOURCE_EXHAUSTED,
			  "pinning would exceed the locked-memory limit (RLIMIT_MEMLOCK)" },
			{ EFAULT, DMB_E_INTERNAL, "the kernel could not pin the region's pages" },
			{ EBUSY, DMB_E_UNAVAILABLE, "the IOAS is busy" },
			{ 0 },
		};
		int code;
		const char *why = ksys_explain(r, whys, &code);
		return dmb_fail(e, code, -r,
				"%s of %#" PRIx64 " bytes at IOVA %#" PRIx64 " failed (%s): %s", cmd,
				length, iova, ksys_errno_name(r), why);
	}
	c->mapped += length;
	atomic_fetch_add(&c->be->pinned, length);
	return 0;
}

static int ifd_unmap(struct dmb_bctx *bc, uint64_t iova, uint64_t length, uint64_t *unmapped,
		     struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct dmb_iommu_ioas_unmap u = {
		.size = sizeof(u),
		.ioas_id = c->ioas_id,
		.iova = iova,
		.length = length,
	};
	int r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_UNMAP, &u);
	if (r < 0) {
		const char *why = r == -ENOENT ? "no mapping lies wholly inside the range, or one "
						 "straddles an end"
			: r == -EBUSY	       ? "an area is busy (being mapped or used by the kernel)"
					       : strerror(-r);
		return dmb_fail(e, r == -EBUSY ? DMB_E_UNAVAILABLE : dmb_code_from_errno(r), -r,
				"IOMMU_IOAS_UNMAP of %#" PRIx64 " bytes at IOVA %#" PRIx64
				" failed (%s): %s",
				length, iova, ksys_errno_name(r), why);
	}
	*unmapped = u.length;
	account_unmapped(c, iova, length, u.length);
	return 0;
}

/* Exports [offset, offset+length) of BAR `bar` of peer as a new dma-buf;
 * returns its fd. */
static int export_dmabuf(struct ifd_dev *peer, unsigned bar, uint64_t offset, uint64_t length,
			 struct dmb_err *e)
{
	struct dmb_vfio_dma_buf_one q = {
		.hdr = {.argsz = sizeof(q),
			.flags = VFIO_DEVICE_FEATURE_GET | DMB_VFIO_DEVICE_FEATURE_DMA_BUF},
		.buf = {.region_index = bar,
			.open_flags = O_RDWR | O_CLOEXEC,
			.flags = 0,
			.nr_ranges = 1},
		.range = {.offset = offset, .length = length},
	};
	int fd = ksys_ioctl(peer->fd, VFIO_DEVICE_FEATURE, &q);
	if (fd >= 0)
		return fd;
	static const struct ksys_why whys[] = {
		{ ENOTTY, DMB_E_UNIMPLEMENTED,
		  "VFIO dma-buf export of BARs (Linux 6.19+) is missing" },
		{ EOPNOTSUPP, DMB_E_UNIMPLEMENTED,
		  "the peer's VFIO driver cannot export dma-bufs" },
		{ EINVAL, 0,
		  "the range is not page-aligned, lies past the BAR, or the BAR is I/O space" },
		{ ENODEV, 0, "not a BAR the kernel exports" },
		{ 0 },
	};
	int code;
	const char *why = ksys_explain(fd, whys, &code);
	return dmb_fail(e, code, -fd,
			"VFIO_DEVICE_FEATURE_DMA_BUF of BAR %u of %s [%#" PRIx64 ", +%#" PRIx64
			") failed (%s): %s",
			bar, peer->bdf, offset, length, ksys_errno_name(fd), why);
}

static int ifd_map_bar(struct dmb_bctx *bc, struct dmb_bdev *bpeer, unsigned bar, uint64_t offset,
		       uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct ifd_dev *peer = ifd_dev(bpeer);

	if (!c->be->map_file)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"P2P through iommufd needs IOMMU_IOAS_MAP_FILE (Linux 6.13+) and VFIO "
				"dma-buf export of BARs (Linux 6.19+): IOMMU_IOAS_MAP_FILE is missing");
	if (peer->dmabuf_err == -ENOTTY)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"P2P through iommufd needs VFIO dma-buf export of BARs: VFIO dma-buf "
				"export of BARs (Linux 6.19+) is missing (%s answered ENOTTY)",
				peer->bdf);
	if (peer->dmabuf_err < 0)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"P2P through iommufd needs VFIO dma-buf export of BARs, which %s does "
				"not offer (%s): its driver lacks it",
				peer->bdf, ksys_errno_name(peer->dmabuf_err));
	if (bar >= DMB_PCI_NUM_BARS || length == 0 || !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"P2P mapping of BAR %u [%#" PRIx64 ", +%#" PRIx64 ") is malformed", bar,
				offset, length);
	if (ksys_mmio_reserve(&c->mmio) < 0)
		return oom(e, "a P2P mapping");

	/* A fresh dma-buf every time: one revoked by a reset or by the peer's
	 * memory going off is never usable again for the IOAS. */
	_cleanup_close_ int buf = export_dmabuf(peer, bar, offset, length, e);
	if (buf < 0)
		return buf;
	struct dmb_iommu_ioas_map_file m = {
		.size = sizeof(m),
		.flags = DMB_IOMMU_IOAS_MAP_FIXED_IOVA |
			 ((prot & DMB_PROT_READ) ? DMB_IOMMU_IOAS_MAP_READABLE : 0) |
			 ((prot & DMB_PROT_WRITE) ? DMB_IOMMU_IOAS_MAP_WRITEABLE : 0),
		.ioas_id = c->ioas_id,
		.fd = buf,
		.start = 0,
		.length = length,
		.iova = iova,
	};
	int r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_MAP_FILE, &m);
	if (r < 0) {
		static const struct ksys_why whys[] = {
			{ ENODEV, DMB_E_FAILED_PRECONDITION,
			  "the peer's BAR is revoked (memory decoding off, or a reset in "
			  "progress)" },
			{ EOPNOTSUPP, 0, "this kernel's iommufd cannot import a VFIO dma-buf" },
			{ EEXIST, 0, "the range overlaps an existing mapping of the IOAS" },
			{ EINVAL, 0, "not aligned to the IOAS, or inside a reserved IOVA region" },
			{ EBUSY, DMB_E_UNAVAILABLE, "the IOAS is busy" },
			{ 0 },
		};
		int code;
		const char *why = ksys_explain(r, whys, &code);
		return dmb_fail(e, code, -r,
				"IOMMU_IOAS_MAP_FILE of a dma-buf of BAR %u of %s [%#" PRIx64
				", +%#" PRIx64 ") at IOVA %#" PRIx64 " failed (%s): %s",
				bar, peer->bdf, offset, length, iova, ksys_errno_name(r), why);
	}
	/* The IOAS holds its own reference: our fd closes on return. */
	ksys_mmio_add(&c->mmio, iova, length);
	return 0;
}

/* ---- no-IOMMU contexts (Linux 7.3, IOMMUFD_NOIOMMU) ---- */

static int ifd_ctx_set_noiommu(struct dmb_bctx *bc, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	if (c->devs)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"a context with devices cannot become a no-IOMMU context");
	c->noiommu = true;
	return 0;
}

static int ifd_phys(struct dmb_bctx *bc, uint64_t iova, uint64_t max_len, uint64_t *phys,
		    uint64_t *len, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct dmb_iommu_ioas_noiommu_get_pa q = {
		.size = sizeof(q),
		.flags = 0,
		.ioas_id = c->ioas_id,
		.__reserved = 0,
		.iova = iova,
		.length = max_len,
	};
	int r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_NOIOMMU_GET_PA, &q);
	if (r == -ENOENT)
		return r; /* not mapped: the core says which IOVA */
	if (r == -EOPNOTSUPP && !c->devs)
		return r; /* no device yet: the core says so */
	if (r < 0) {
		static const struct ksys_why whys[] = {
			{ ENOTTY, DMB_E_UNIMPLEMENTED,
			  "this kernel has no IOMMU_IOAS_NOIOMMU_GET_PA (Linux 7.3 with "
			  "CONFIG_IOMMUFD_NOIOMMU)" },
			{ EPERM, DMB_E_PERMISSION_DENIED,
			  "it needs CAP_SYS_RAWIO, which the broker does not hold" },
			{ EOPNOTSUPP, DMB_E_FAILED_PRECONDITION,
			  "the area is not held by a no-IOMMU device's page table" },
			{ EINVAL, DMB_E_INVALID_ARGUMENT, "a zero length, or a revoked area" },
			{ 0 },
		};
		int code;
		const char *why = ksys_explain(r, whys, &code);
		return dmb_fail(e, code, -r,
				"IOMMU_IOAS_NOIOMMU_GET_PA at IOVA %#" PRIx64 " failed (%s): %s", iova,
				ksys_errno_name(r), why);
	}
	if (q.length == 0 || q.length > max_len)
		return dmb_fail(e, DMB_E_INTERNAL, EPROTO,
				"IOMMU_IOAS_NOIOMMU_GET_PA at IOVA %#" PRIx64 " answered %" PRIu64
				" bytes for at most %" PRIu64,
				iova, (uint64_t)q.length, max_len);
	*phys = q.out_phys;
	*len = q.length;
	return 0;
}

/* ---- restart (see "Restart" in the header comment) ---- */

static int ifd_ctx_fds(struct dmb_bctx *bc, struct dmb_fdset *out)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	out->n = 0;
	return ksys_fdset_add(out, c->fd, "iommufd.ioas%u", c->ioas_id);
}

static int ifd_dev_fds(struct dmb_bdev *bd, struct dmb_fdset *out)
{
	struct ifd_dev *d = ifd_dev(bd);
	out->n = 0;
	return ksys_fdset_add(out, d->fd, "device.dev%u", d->devid);
}

static int ifd_ctx_prepare_handover(struct dmb_bctx *bc, struct dmb_err *e)
{
	/* Nothing to move: MAP_FILE areas hold their files, MAP areas their
	 * pins. Only stop tearing down at close. */
	ifd_ctx(bc)->handed_over = true;
	return 0;
}

/* 0 when `id` is an IOAS of the iommufd fd; else the ioctl's -errno
 * (ENOENT: no such IOAS; ENOTTY: fd is not an iommufd). */
static int ioas_probe(int fd, uint32_t id)
{
	struct dmb_iommu_ioas_iova_ranges q = {
		.size = sizeof(q),
		.ioas_id = id,
		.num_iovas = 0,
		.allowed_iovas = 0,
	};
	int r = ksys_ioctl(fd, DMB_IOMMU_IOAS_IOVA_RANGES, &q);
	return r == 0 || r == -EMSGSIZE ? 0 : r;
}

/* Object IDs tried when the fd's name does not carry the IOAS ID: a
 * context's iommufd holds one IOAS plus a DEVICE and a HWPT per device. */
#define IFD_ADOPT_SCAN_IDS 256u

static int ifd_ctx_adopt(struct dmb_backend *b, const struct dmb_fdset *fds, struct dmb_bctx **out,
			 struct dmb_err *e)
{
	struct ifd_backend *be = ifd_be(b);
	int fi = -1;
	uint32_t ioas = 0;
	bool named = false;

	if (ksys_fdset_check(fds) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the fd set of an iommufd context is malformed");
	for (size_t i = 0; i < fds->n && fi < 0; i++) {
		if (ksys_fdname_u32(fds->e[i].name, "iommufd.ioas", &ioas) == 0) {
			fi = (int)i;
			named = true;
		} else if (strcmp(fds->e[i].name, "iommufd") == 0) {
			fi = (int)i;
		}
	}
	if (fi < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"an iommufd context cannot be adopted without its \"iommufd\" fd");
	int fd = fds->e[fi].fd;
	int r;
	if (named) {
		r = ioas_probe(fd, ioas);
		if (r < 0)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, -r,
					"IOAS %u of the adopted iommufd cannot be found "
					"(IOMMU_IOAS_IOVA_RANGES: %s)",
					ioas, ksys_errno_name(r));
	} else {
		/* Recover the ID: the first object that answers as an IOAS. */
		r = -ENOENT;
		for (uint32_t id = 1; id <= IFD_ADOPT_SCAN_IDS && r == -ENOENT; id++) {
			r = ioas_probe(fd, id);
			ioas = id;
		}
		if (r < 0)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, -r,
					"the adopted iommufd has no IOAS among its first %u objects "
					"(IOMMU_IOAS_IOVA_RANGES: %s)",
					IFD_ADOPT_SCAN_IDS, ksys_errno_name(r));
	}

	struct ifd_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return oom(e, "an iommufd context");
	c->base.be = b;
	c->be = be;
	c->fd = fd;
	c->ioas_id = ioas;
	for (size_t i = 0; i < fds->n; i++) {
		if ((int)i == fi)
			continue;
		log_warning("iommufd: adopting a context: closing the unknown fd \"%s\"",
			    fds->e[i].name);
		close(fds->e[i].fd);
	}
	*out = &c->base;
	return 0;
}

static int ifd_dev_adopt(struct dmb_bctx *bc, const char *bdf_in, const struct dmb_fdset *fds,
			 struct dmb_bdev **out, struct dmb_dev_info *info, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct ifd_backend *be = c->be;
	char bdf[KSYS_BDF_LEN + 1], name[32] = "";
	uint32_t devid = 0;
	int di = -1;

	if (ksys_bdf_normalize(bdf_in, bdf) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%s' is not a PCI address (expected dddd:bb:dd.f)", bdf_in ? bdf_in : "");
	if (ksys_fdset_check(fds) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the fd set of device %s is malformed", bdf);
	for (size_t i = 0; i < fds->n && di < 0; i++)
		if (ksys_fdname_u32(fds->e[i].name, "device.dev", &devid) == 0 ||
		    strcmp(fds->e[i].name, "device") == 0)
			di = (int)i;
	if (di < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"device %s cannot be adopted without its \"device\" fd", bdf);
	int fd = fds->e[di].fd;

	/* A cdev answers anything but BIND with EINVAL until it is bound. */
	struct ksys_region ri;
	int r = ksys_vfio_region_info(fd, VFIO_PCI_CONFIG_REGION_INDEX, &ri);
	if (r == -ENOTTY || r == -EBADF || r == -EINVAL)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, -r,
				"the \"device\" fd of %s is not a VFIO device bound to an iommufd (%s)",
				bdf, ksys_errno_name(r));
	if (devid) {
		struct dmb_iommu_hw_info hw = {.size = sizeof(hw), .dev_id = devid};
		r = ksys_ioctl(c->fd, DMB_IOMMU_GET_HW_INFO, &hw);
		if (r == -ENOENT)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
					"%s is not device %u of the adopted iommufd", bdf, devid);
	}
	if (ksys_vfio_dev_name(be->sysfs_root, bdf, name, sizeof(name)) < 0)
		log_debug("iommufd: adopting %s: no vfio-dev entry in sysfs", bdf);
	else if (ksys_noiommu_name(name) != c->noiommu)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EINVAL,
				"%s (%s) %s, but the adopted context %s a no-IOMMU context", bdf, name,
				c->noiommu ? "has an IOMMU" : "has no IOMMU",
				c->noiommu ? "is" : "is not");

	struct ifd_dev *d = dev_new(c, fd, devid, 0, name, bdf);
	if (!d)
		return oom(e, "an iommufd device");
	for (size_t i = 0; i < fds->n; i++) {
		if ((int)i == di)
			continue;
		log_warning("iommufd: adopting %s: closing the unknown fd \"%s\"", bdf,
			    fds->e[i].name);
		close(fds->e[i].fd);
	}
	dev_info_fill(be, bdf, name, info);
	*out = &d->v.base;
	return 0;
}

static int ifd_map_adopt(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset,
			 uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	struct ifd_region *reg = dmb_container_of(br, struct ifd_region, base);

	if (offset > reg->size || length > reg->size - offset || length == 0 ||
	    !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"mapping [%#" PRIx64 ", +%#" PRIx64 ") of a %#" PRIx64
				"-byte region is out of bounds",
				offset, length, reg->size);
	/* No uAPI lists or queries the areas of an IOAS (and UNMAP cannot
	 * probe without removing): the journal is trusted. A MAP_FILE area
	 * holds its file and needs nothing; a MAP area keeps the previous
	 * process's address (and pins). */
	if (reg->addr) {
		c->va_stale = true;
		c->n_va++;
	}
	c->n_adopted++;
	c->mapped += length;
	atomic_fetch_add(&c->be->pinned, length);
	return 0;
}

static int ifd_map_bar_adopt(struct dmb_bctx *bc, struct dmb_bdev *bpeer, unsigned bar,
			     uint64_t offset, uint64_t iova, uint64_t length, uint32_t prot,
			     struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	if (bar >= DMB_PCI_NUM_BARS || length == 0 || !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"P2P mapping of BAR %u [%#" PRIx64 ", +%#" PRIx64 ") is malformed", bar,
				offset, length);
	/* The area holds its dma-buf, which the peer's device file (adopted
	 * too) has not revoked. */
	if (ksys_mmio_reserve(&c->mmio) < 0)
		return oom(e, "a P2P mapping");
	ksys_mmio_add(&c->mmio, iova, length);
	c->n_adopted++;
	return 0;
}

static int ifd_adopt_finish(struct dmb_bctx *bc, uint64_t *stray, struct dmb_err *e)
{
	struct ifd_ctx *c = ifd_ctx(bc);
	/* No uAPI lists an IOAS's areas, so one the journal does not name
	 * cannot be found; the daemon journals every mapping before the
	 * kernel makes it (docs/journal.md), so there is none. */
	*stray = 0;
	if (!c->be->change_process) {
		log_debug("iommufd: no IOMMU_IOAS_CHANGE_PROCESS: the pins of the adopted IOAS %u "
			  "stay charged to the previous broker process",
			  c->ioas_id);
		return 0;
	}
	struct dmb_iommu_ioas_change_process cp = {.size = sizeof(cp), .__reserved = 0};
	int r = ksys_ioctl(c->fd, DMB_IOMMU_IOAS_CHANGE_PROCESS, &cp);
	if (r == 0)
		log_debug("iommufd: IOAS %u: pinned-page accounting moved to this process",
			  c->ioas_id);
	else if (r == -EINVAL)
		log_info("iommufd: the pins of IOAS %u stay charged to the previous broker process: "
			 "IOMMU_IOAS_CHANGE_PROCESS moves only contexts whose every area was mapped "
			 "from a memfd (this one has an area mapped by address or a P2P dma-buf)",
			 c->ioas_id);
	else
		log_warning("iommufd: IOMMU_IOAS_CHANGE_PROCESS of IOAS %u failed (%s): %s; its pins "
			    "stay charged to the previous broker process",
			    c->ioas_id, ksys_errno_name(r),
			    r == -ENOMEM ? "this process's locked-memory limit is too small"
					 : strerror(-r));
	return 0;
}

static const struct dmb_backend_ops ifd_ops = {
	.name = "iommufd",
	/* context: its iommufd; region: our dup + the core's fd (one stored);
	 * device: its cdev fd */
	.fd_cost = { .fds = { 1, 2, 1 }, .stored = { 1, 1, 1 } },
	.destroy = ifd_destroy,
	.ctx_open = ifd_ctx_open,
	.ctx_close = ifd_ctx_close,
	.iova_info = ifd_iova_info,
	.region_open = ifd_region_open,
	.region_close = ifd_region_close,
	.map = ifd_map,
	.unmap = ifd_unmap,
	.unmap_all = ifd_unmap_all,
	.dev_open = ifd_dev_open,
	.dev_close = ifd_dev_close,
	.dev_fd = ksys_dev_fd,
	.dev_bar_info = ksys_dev_bar_info,
	.dev_config_read = ksys_dev_config_read,
	.dev_config_write = ksys_dev_config_write,
	.dev_reset = ksys_dev_reset,
	.map_bar = ifd_map_bar,
	.dma = NULL,
	.ctx_set_noiommu = ifd_ctx_set_noiommu,
	.phys = ifd_phys,
	.ctx_fds = ifd_ctx_fds,
	.dev_fds = ifd_dev_fds,
	.ctx_adopt = ifd_ctx_adopt,
	.dev_adopt = ifd_dev_adopt,
	.map_adopt = ifd_map_adopt,
	.map_bar_adopt = ifd_map_bar_adopt,
	.adopt_finish = ifd_adopt_finish,
	.ctx_prepare_handover = ifd_ctx_prepare_handover,
	.pinned_bytes = ifd_pinned_bytes,
};

/* ---- start-up probing ---- */

/* The cdev's character major is registered as "vfio-dev" at vfio load
 * when CONFIG_VFIO_DEVICE_CDEV is set, before any device node exists. */
static bool proc_has_vfio_cdev(void)
{
	_cleanup_close_ int fd = open("/proc/devices", O_RDONLY | O_CLOEXEC);
	char buf[8192];
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strstr(buf, " vfio-dev\n") != NULL;
}

static bool have_vfio_cdev(const char *dev_root, const char *devices_dir)
{
	struct stat st;
	if (stat(devices_dir, &st) == 0 && S_ISDIR(st.st_mode))
		return true;
	return strcmp(dev_root, "/dev") == 0 && proc_has_vfio_cdev();
}

/* Issues `req` with arguments the kernel must refuse: ENOTTY means the
 * command does not exist, anything else that it does. */
static bool probe_cmd(int fd, unsigned long req, void *arg, const char *name)
{
	int r = ksys_ioctl(fd, req, arg);
	log_debug("iommufd: probing %s: %s", name, r < 0 ? ksys_errno_name(r) : "0");
	return r != -ENOTTY;
}

/* At start-up, so that a client sees "p2p-dmabuf" in the features of its very
 * first Hello: whether this kernel's VFIO exports BARs as dma-bufs
 * (CONFIG_VFIO_PCI_DMABUF, 6.19+) can only be asked of a bound device, so
 * the first VFIO cdev that binds to our scratch iommufd answers it. Binding
 * fails harmlessly (EINVAL/EBUSY) on a device someone has open, the broker's
 * own predecessor included; a device nobody uses is opened and closed, as
 * any VFIO user would. dev_open probes every device again. */
#define IFD_DMABUF_PROBE_TRIES 8

static void probe_dmabuf_at_start(struct ifd_backend *be, int iommufd, const char *devices)
{
	DIR *dir = opendir(devices);
	if (!dir)
		return;
	struct dirent *de;
	unsigned tries = 0;
	while ((de = readdir(dir)) && !be->dmabuf_seen && tries < IFD_DMABUF_PROBE_TRIES) {
		unsigned n;
		char end;
		if (sscanf(de->d_name, "vfio%u%c", &n, &end) != 1)
			continue;
		char path[PATH_MAX];
		if (ksys_path(path, sizeof(path), "%s/%s", devices, de->d_name) < 0)
			continue;
		tries++;
		_cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		struct dmb_vfio_device_bind_iommufd bind = {
			.argsz = DMB_VFIO_BIND_IOMMUFD_MINSZ,
			.flags = 0,
			.iommufd = iommufd,
		};
		int r = ksys_ioctl(fd, DMB_VFIO_DEVICE_BIND_IOMMUFD, &bind);
		if (r < 0) {
			log_debug("iommufd: dma-buf probe: %s does not bind here (%s)", de->d_name,
				  ksys_errno_name(r));
			continue;
		}
		struct ifd_dev d = { .fd = fd };
		snprintf(d.bdf, sizeof(d.bdf), "%.12s", de->d_name);
		probe_dmabuf(be, &d);
	}
	closedir(dir);
}

int dmb_iommufd_create(const struct dmb_backend_config *cfg, struct dmb_backend **out,
		       struct dmb_err *e)
{
	const char *sysfs = cfg && cfg->sysfs_root ? cfg->sysfs_root : "/sys";
	const char *dev = cfg && cfg->dev_root ? cfg->dev_root : "/dev";
	char path[PATH_MAX], devices[PATH_MAX];

	if (ksys_path(path, sizeof(path), "%s/iommu", dev) < 0 ||
	    ksys_path(devices, sizeof(devices), "%s/vfio/devices", dev) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, ENAMETOOLONG, "the device root is too long");
	_cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		if (err == ENOENT)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err,
					"%s missing: no iommufd in this kernel", path);
		if (err == EACCES || err == EPERM)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, err, "%s not accessible (%s)", path,
					ksys_errno_name(err));
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err, "opening %s failed (%s)", path,
				ksys_errno_name(err));
	}
	if (!have_vfio_cdev(dev, devices))
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
				"%s missing: no VFIO device cdev (Linux 6.6+)", devices);

	uint32_t scratch = 0;
	int r = ioas_alloc(fd, &scratch);
	if (r < 0)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -r, "IOMMU_IOAS_ALLOC on %s failed (%s)",
				path, ksys_errno_name(r));

	struct ifd_backend *be = calloc(1, sizeof(*be));
	if (!be)
		return oom(e, "the iommufd backend");
	be->sysfs_root = strdup(sysfs);
	be->dev_root = strdup(dev);
	if (!be->sysfs_root || !be->dev_root) {
		ifd_destroy(&be->base);
		return oom(e, "the iommufd backend");
	}
	memcpy(be->iommu_path, path, sizeof(path));

	/* flags 0 (neither READABLE nor WRITEABLE): EINVAL before anything
	 * is looked up, on kernels that know the command. */
	struct dmb_iommu_ioas_map_file mf = {
		.size = sizeof(mf),
		.flags = 0,
		.ioas_id = scratch,
		.fd = -1,
	};
	be->map_file = probe_cmd(fd, DMB_IOMMU_IOAS_MAP_FILE, &mf, "IOMMU_IOAS_MAP_FILE");
	/* __reserved non-zero: EOPNOTSUPP on kernels that know the command. */
	struct dmb_iommu_ioas_change_process cp = {.size = sizeof(cp), .__reserved = 1};
	be->change_process =
		probe_cmd(fd, DMB_IOMMU_IOAS_CHANGE_PROCESS, &cp, "IOMMU_IOAS_CHANGE_PROCESS");
	r = destroy_object(fd, scratch);
	if (r < 0)
		log_debug("iommufd: IOMMU_DESTROY of the scratch IOAS: %s", ksys_errno_name(r));

	size_t n = 0;
	be->features[n++] = "unmap-all";
	if (be->map_file)
		be->features[n++] = "map-file";
	if (be->change_process)
		be->features[n++] = "change-process";
	be->features[n] = NULL;
	be->n_features = n; /* "p2p-dmabuf" may go here (probe_dmabuf) */
	be->base.ops = &ifd_ops;
	be->base.features = be->features;
	/* A dma-buf area's pages are MMIO batches: pages.c batch_to_domain
	 * drops IOMMU_CACHE and sets IOMMU_MMIO for them. */
	be->base.p2p_attr = DMB_MEM_MMIO;
	if (be->map_file)
		probe_dmabuf_at_start(be, fd, devices);

	log_debug("iommufd backend on %s (map-file: %s, change-process: %s)", path,
		 be->map_file ? "yes" : "no", be->change_process ? "yes" : "no");
	*out = &be->base;
	return 0;
}
