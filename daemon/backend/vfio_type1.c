/* vfio_type1.c — the VFIO type1 backend (any kernel with VFIO).
 *
 * A context is one container (an open of /dev/vfio/vfio). Devices are
 * opened through their IOMMU group (/dev/vfio/<G>): the group joins the
 * container, and the first group selects the type1v2 IOMMU. Guest memory is
 * mapped by the daemon's own MAP_SHARED mmap of each region (one mmap per
 * region, made in region_open) with VFIO_IOMMU_MAP_DMA.
 *
 * The "unset" container. VFIO_SET_IOMMU needs a group in the container, so
 * a fresh context has no IOMMU, no IOVA ranges and no page sizes until its
 * first dev_open. Until then:
 *   - iova_info and map fail with FAILED_PRECONDITION, "attach a device
 *     first: the type1 container has no IOMMU until then";
 *   - unmap and unmap_all succeed with 0 bytes (nothing can be mapped).
 * The ranges can also change with every group that joins (each adds its
 * reserved regions), so the core must re-query iova_info after dev_open.
 *
 * Groups are reference-counted by the devices open in them: a second device
 * of a group already in this container reuses the group fd. When a group's
 * last device closes the group leaves the container — except when it is
 * the container's last group and mappings exist: the kernel tears the IOMMU
 * (and every mapping) down with the last group, so that group stays, idle,
 * until the mappings are gone (unmap, unmap_all), another group joins, or
 * the context closes. A VFIO group node is single-open, so while a group is
 * held here no other process or context can open it (EBUSY).
 *
 * Unmap semantics (type1v2): a range may cover many mappings but must not
 * split one (EINVAL); a range with no mapping succeeds with size 0. The core
 * checks both before calling. unmap_all uses VFIO_DMA_UNMAP_FLAG_ALL where
 * CHECK_EXTENSION(VFIO_UNMAP_ALL) says so (5.12+), else two halves of
 * [0, 2^64).
 *
 * Accounting: pinned_bytes counts RAM bytes mapped through this backend,
 * in all contexts (type1 charges the same page twice if it is mapped twice,
 * and so do we).
 *
 * Features: "unmap-all" (VFIO_UNMAP_ALL), "vaddr-update" (VFIO_UPDATE_VADDR:
 * the restart dance). Newer kernels answer CHECK_EXTENSION(UPDATE_VADDR)
 * only on a container with an IOMMU, so at start-up the feature is also
 * inferred from UNMAP_ALL (same 5.12 series) plus a native vfio_iommu_type1
 * module (the iommufd compat container has UNMAP_ALL but never VADDR); each
 * context re-checks after SET_IOMMU (t1_ctx.vaddr_update).
 *
 * Device state (dev_bar_info, dev_config_*, dev_reset) goes to the device
 * fd through ksys_vdev (ksys.h): region info, the config region, RESET.
 *
 * P2P (map_bar, feature "p2p"): native type1 maps a VM_PFNMAP VMA — the
 * daemon's MAP_SHARED mmap of the peer's BAR region, made from the peer's
 * device fd on first use and cached on the peer (t1_dev.bars) until the
 * peer closes — by looking up its PFNs; nothing is pinned or accounted
 * (drivers/vfio/vfio_iommu_type1.c). The peer may sit in another container: only its
 * device fd is used. Type1 never hears about the peer's BAR state: the core
 * unmaps before the peer's memory goes off or the peer closes. If memory
 * decoding is off at MAP_DMA time the kernel says EFAULT. The iommufd
 * compat container (no vfio_iommu_type1 module) cannot map a PFNMAP VMA
 * (drivers/iommu/iommufd/vfio_compat.c): there the feature is absent and map_bar is -EOPNOTSUPP. Each
 * context remembers its MMIO mappings (ksys_mmio_set) so that unmap keeps
 * pinned_bytes to RAM.
 *
 * Restart (backend.h, "restart"; VFIO_UPDATE_VADDR). A
 * context's kernel state is its container fd ("container") and its group
 * fds ("group.<N>"); a device's is its device fd ("device"). The kernel's
 * mappings hold pins and IOMMU entries by themselves, but each remembers the
 * vaddr (and, before 6.2, the task) it was made from.
 *   - ctx_prepare_handover (clean stop): UNMAP_DMA(VADDR | ALL) marks every
 *     vaddr invalid; DMA goes on. From then on the context is the
 *     successor's: ctx_close and dev_close close this process's fds and
 *     tear nothing down (no unmap, no UNSET_CONTAINER).
 *   - ctx_adopt: no SET_CONTAINER, no SET_IOMMU (GET_INFO tells whether the
 *     IOMMU is set; only a container whose previous owner stopped between
 *     SET_CONTAINER and SET_IOMMU gets it now); the groups come from the
 *     names, and one that left the container is closed. dev_adopt: the
 *     device fd, its group found through sysfs; BARs are mmapped lazily.
 *     Until adopt_finish no idle group leaves the container.
 *   - map_adopt / map_bar_adopt tell the two cases apart by trying the
 *     update first. MAP_DMA(VADDR) with the new mmap: 0 = handed over;
 *     ENOENT = nothing mapped there (-ENOENT to the daemon); EINVAL = either
 *     not invalidated (the old process died: SIGKILL, crash) or another
 *     extent. Then UNMAP_DMA(VADDR) of exactly that range: EINVAL = it would
 *     split a kernel mapping, so the extents differ (-EINVAL); otherwise the
 *     mapping is now invalid and a second MAP_DMA(VADDR) takes it over, so a
 *     crash ends exactly like a handover. Linux 6.2+ moves the locked-memory
 *     charge to this process at the update (it can fail with ENOMEM).
 *   - Kernels before 6.0 let only the creating process change or remove a
 *     mapping: its UNMAP_DMA covers 0 bytes instead of failing. The crash
 *     path sees that directly; after a handover the first adopted mapping of
 *     each context is invalidated and updated once more to find out. Either
 *     way map_adopt fails with EPERM: this process could never unmap it.
 *   - "vaddr-stale": a mapping whose vaddr could not be made ours (the
 *     update failed after invalidation; iommufd's compat container, which
 *     has no VADDR and keeps the old process's pins). DMA goes on and unmap
 *     works. Adding a group is what would go wrong: the kernel refuses it
 *     (6.2+) or blocks in the ioctl (5.12-6.1) while a vaddr is invalid, and
 *     a path that pins by address again would read the dead process's
 *     address space. So dev_open refuses a new group with a sentence until
 *     every mapping of the context is gone.
 *   - adopt_finish reports 0 stray: type1 cannot list a container's
 *     mappings, and the journal names every one by construction.
 *   - ctx_fds fails with E2BIG beyond DMB_MAX_OBJ_FDS - 1 groups.
 *
 * Ownership: the backend owns every fd it opens (container, groups,
 * devices), the region mmaps and the peer BAR mmaps. ctx_close closes the
 * context's devices too: the core must not call dev_close on them
 * afterwards. A device fd the client received a duplicate of keeps the
 * device (and its group) in the container until the client closes it;
 * ctx_close unmaps everything first, so such a device can no longer reach
 * any memory. */
#include "vfio_type1.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/ksys.h"
#include "backend/uapi/vfio_container.h"
#include "util/log.h"
#include "util/macro.h"

struct t1_backend {
	struct dmb_backend base;
	char *sysfs_root;
	char *dev_root;
	char container_path[PATH_MAX];
	bool unmap_all;    /* VFIO_DMA_UNMAP_FLAG_ALL available */
	bool vaddr_update; /* predicted at start-up, see the header */
	bool native;       /* vfio_iommu_type1, not iommufd's compat container */
	const char *features[6];
	_Atomic uint64_t pinned;
};

struct t1_group {
	struct t1_group *next;
	unsigned id;
	int fd;
	unsigned users; /* devices open in this group */
};

struct t1_ctx;

/* The daemon's mmap of one BAR of a P2P peer. */
struct t1_bar {
	void *addr; /* NULL: not mapped yet */
	size_t len;
};

struct t1_dev {
	struct ksys_vdev v; /* first: the core's struct dmb_bdev; borrows fd */
	struct t1_dev *next;
	struct t1_ctx *ctx;
	struct t1_group *group;
	int fd;
	/* map_bar of another context may mmap this device's BARs while this
	 * context runs on another thread: bars[] is under bar_lock. */
	pthread_mutex_t bar_lock;
	struct t1_bar bars[DMB_PCI_NUM_BARS];
};

struct t1_ctx {
	struct dmb_bctx base;
	struct t1_backend *be;
	int container;
	bool iommu_set;     /* SET_IOMMU done; false again once the last group left */
	bool vaddr_update;  /* CHECK_EXTENSION(VFIO_UPDATE_VADDR) after SET_IOMMU */
	uint32_t entry_limit; /* dma_entry_limit when the IOMMU was set; 0 unknown */
	uint64_t mapped;    /* RAM bytes mapped in this container */
	struct ksys_mmio_set mmio; /* peer BAR mappings (not pinned) */
	struct t1_group *groups;
	struct t1_dev *devs;
	/* Restart (see "Restart" in the header comment). */
	bool adopting;      /* ctx_adopt .. adopt_finish: idle groups stay */
	bool handed_over;   /* ctx_prepare_handover was called: close forgets */
	bool owner_checked; /* the kernel let this process take a mapping over */
	bool vaddr_stale;   /* a mapping still carries a previous process's vaddr */
	uint64_t n_handed, n_taken, n_stale; /* adopted mappings, by path */
};

struct t1_region {
	struct dmb_bregion base;
	void *addr;
	uint64_t size;
};

static const char no_iommu_yet[] = "attach a device first: the type1 container has no IOMMU until then";

static inline struct t1_backend *t1_be(struct dmb_backend *b)
{
	return dmb_container_of(b, struct t1_backend, base);
}

static inline struct t1_ctx *t1_ctx(struct dmb_bctx *b)
{
	return dmb_container_of(b, struct t1_ctx, base);
}

static int oom(struct dmb_err *e, const char *what)
{
	return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory allocating %s", what);
}

/* ---- GET_INFO decoding (also used by the unit tests) ---- */

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return v;
}

int dmb_type1_parse_info(const void *buf, size_t len, uint32_t entry_limit,
			 struct dmb_type1_info *out)
{
	const uint8_t *b = buf;
	const size_t hdr = sizeof(struct vfio_iommu_type1_info);
	const size_t minsz = offsetof(struct vfio_iommu_type1_info, cap_offset);

	memset(out, 0, sizeof(*out));
	if (!buf || len < minsz)
		return -EPROTO;

	uint32_t flags = rd32(b + offsetof(struct vfio_iommu_type1_info, flags));
	if (flags & VFIO_IOMMU_INFO_PGSIZES)
		out->iova_pgsizes = rd64(b + offsetof(struct vfio_iommu_type1_info, iova_pgsizes));
	out->iova.alignment = out->iova_pgsizes ? out->iova_pgsizes & -out->iova_pgsizes
						: ksys_page_size();

	uint32_t off = 0;
	if ((flags & VFIO_IOMMU_INFO_CAPS) && len >= hdr)
		off = rd32(b + offsetof(struct vfio_iommu_type1_info, cap_offset));

	/* Offsets strictly increase, so the walk ends within len/8 steps. */
	size_t prev_end = hdr;
	while (off != 0) {
		if (off < prev_end || off % 4 != 0 || off > len ||
		    len - off < sizeof(struct vfio_info_cap_header))
			return -EPROTO;
		const uint8_t *cap = b + off;
		uint16_t id = (uint16_t)(cap[0] | cap[1] << 8);
		uint16_t version = (uint16_t)(cap[2] | cap[3] << 8);
		uint32_t next = rd32(cap + offsetof(struct vfio_info_cap_header, next));
		size_t room = len - off;

		if (version == 0)
			return -EPROTO;
		switch (id) {
		case VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: {
			const size_t fixed = offsetof(struct vfio_iommu_type1_info_cap_iova_range,
						      iova_ranges);
			if (room < fixed)
				return -EPROTO;
			uint32_t nr = rd32(cap + offsetof(struct vfio_iommu_type1_info_cap_iova_range,
							  nr_iovas));
			if (nr > (room - fixed) / sizeof(struct vfio_iova_range))
				return -EPROTO;
			out->has_iova_range = true;
			out->nr_iovas = nr;
			out->iova.n = 0;
			for (uint32_t i = 0; i < nr && i < DMB_MAX_IOVA_RANGES; i++) {
				const uint8_t *r = cap + fixed + i * sizeof(struct vfio_iova_range);
				uint64_t start = rd64(r + offsetof(struct vfio_iova_range, start));
				uint64_t end = rd64(r + offsetof(struct vfio_iova_range, end));
				if (start > end)
					return -EPROTO;
				out->iova.ranges[out->iova.n].start = start;
				out->iova.ranges[out->iova.n].last = end;
				out->iova.n++;
			}
			break;
		}
		case VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
			if (room < sizeof(struct vfio_iommu_type1_info_dma_avail))
				return -EPROTO;
			out->has_dma_avail = true;
			out->dma_avail = rd32(cap + offsetof(struct vfio_iommu_type1_info_dma_avail, avail));
			break;
		case VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
			if (room < sizeof(struct vfio_iommu_type1_info_cap_migration))
				return -EPROTO;
			out->has_migration = true;
			out->mig_flags = rd32(cap + offsetof(struct vfio_iommu_type1_info_cap_migration, flags));
			out->mig_pgsize_bitmap = rd64(
				cap + offsetof(struct vfio_iommu_type1_info_cap_migration, pgsize_bitmap));
			out->mig_max_dirty_bitmap_size = rd64(
				cap + offsetof(struct vfio_iommu_type1_info_cap_migration,
					       max_dirty_bitmap_size));
			break;
		default:
			break; /* unknown capability: skip */
		}
		if (next != 0 && next <= off)
			return -EPROTO;
		prev_end = (size_t)off + sizeof(struct vfio_info_cap_header);
		off = next;
	}

	if (!out->has_iova_range) {
		/* Kernels before 5.4 do not report ranges; MAP_DMA is the judge. */
		out->iova.n = 1;
		out->iova.ranges[0].start = 0;
		out->iova.ranges[0].last = UINT64_MAX;
	}
	if (out->has_dma_avail && out->dma_avail != UINT32_MAX) {
		uint32_t max = entry_limit ? entry_limit : DMB_TYPE1_DEFAULT_ENTRY_LIMIT;
		out->iova.max_mappings = max < out->dma_avail ? out->dma_avail : max;
		out->iova.mappings_available = out->dma_avail;
	}
	return 0;
}

/* ---- backend ---- */

static void t1_destroy(struct dmb_backend *b)
{
	if (!b)
		return;
	struct t1_backend *be = t1_be(b);
	free(be->sysfs_root);
	free(be->dev_root);
	free(be);
}

static uint64_t t1_pinned_bytes(struct dmb_backend *b)
{
	return atomic_load(&t1_be(b)->pinned);
}

/* ---- groups ---- */

static void group_release(struct t1_ctx *c, struct t1_group *g)
{
	for (struct t1_group **pp = &c->groups; *pp; pp = &(*pp)->next) {
		if (*pp == g) {
			*pp = g->next;
			break;
		}
	}
	int r = ksys_ioctl(g->fd, VFIO_GROUP_UNSET_CONTAINER, NULL);
	if (r < 0)
		/* e.g. EBUSY while a client still holds a duplicate of a device
		 * fd: the group leaves when that fd is closed. */
		log_debug("vfio-type1: VFIO_GROUP_UNSET_CONTAINER of IOMMU group %u: %s", g->id,
			  ksys_errno_name(r));
	safe_close(g->fd);
	free(g);

	if (!c->groups && c->iommu_set) {
		/* The kernel released the container's IOMMU with its last group,
		 * and every mapping with it. */
		c->iommu_set = false;
		if (c->mapped) {
			atomic_fetch_sub(&c->be->pinned, c->mapped);
			c->mapped = 0;
		}
		ksys_mmio_remove(&c->mmio, 0, 0);
		c->vaddr_stale = false;
	}
}

static bool has_mappings(const struct t1_ctx *c)
{
	return c->mapped > 0 || c->mmio.n > 0;
}

/* Idle groups leave the container, except the last one while mappings
 * exist (see the header). */
static void release_idle_groups(struct t1_ctx *c)
{
	/* While adopting, the groups wait for their devices and mappings to be
	 * named; after a handover they are the successor's. */
	if (c->adopting || c->handed_over)
		return;
	struct t1_group **pp = &c->groups;
	while (*pp) {
		struct t1_group *g = *pp;
		bool last = c->groups == g && !g->next;
		if (g->users == 0 && !(last && has_mappings(c))) {
			group_release(c, g); /* unlinks *pp */
			continue;
		}
		pp = &g->next;
	}
}

static void iommu_ready(struct t1_ctx *c);

static int set_iommu(struct t1_ctx *c, unsigned gid, struct dmb_err *e)
{
	int r = ksys_ioctl(c->container, VFIO_SET_IOMMU, (void *)(uintptr_t)VFIO_TYPE1v2_IOMMU);
	if (r == -EPERM)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPERM,
				"VFIO_SET_IOMMU(type1v2) for IOMMU group %u failed (EPERM): the platform "
				"has no interrupt remapping (vfio_iommu_type1.allow_unsafe_interrupts=1 "
				"would allow it, unsafely)",
				gid);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r,
				"VFIO_SET_IOMMU(type1v2) for IOMMU group %u failed (%s): %s", gid,
				ksys_errno_name(r), strerror(-r));
	iommu_ready(c);
	return 0;
}

/* The container has its IOMMU: learn what it offers. */
static void iommu_ready(struct t1_ctx *c)
{
	struct t1_backend *be = c->be;
	c->iommu_set = true;

	/* The kernel reads dma_entry_limit when the IOMMU is set up. */
	char path[PATH_MAX];
	unsigned long limit = 0;
	c->entry_limit = 0;
	if (ksys_path(path, sizeof(path), "%s/module/vfio_iommu_type1/parameters/dma_entry_limit",
		      be->sysfs_root) == 0 &&
	    ksys_read_ulong(path, 10, &limit) == 0 && limit <= UINT32_MAX)
		c->entry_limit = (uint32_t)limit;
	c->vaddr_update =
		ksys_ioctl(c->container, VFIO_CHECK_EXTENSION, (void *)(uintptr_t)VFIO_UPDATE_VADDR) > 0;
}

static int group_attach(struct t1_ctx *c, unsigned gid, const char *bdf, struct t1_group **out,
			struct dmb_err *e)
{
	struct t1_backend *be = c->be;
	char path[PATH_MAX];
	int r = ksys_path(path, sizeof(path), "%s/vfio/%u", be->dev_root, gid);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r, "the VFIO group path is too long");

	_cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		if (err == ENOENT) {
			char drv[128] = "", noiommu[PATH_MAX];
			struct stat st;
			ksys_pci_driver(be->sysfs_root, bdf, drv, sizeof(drv));
			if (ksys_path(noiommu, sizeof(noiommu), "%s/vfio/noiommu-%u", be->dev_root,
				      gid) == 0 &&
			    stat(noiommu, &st) == 0)
				return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err,
						"%s is in VFIO no-IOMMU mode (%s): without an IOMMU "
						"its DMA cannot be confined",
						bdf, noiommu);
			if (strstr(drv, "vfio"))
				return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err,
						"%s missing although %s is bound to %s", path, bdf, drv);
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err,
					"%s missing: %s is not bound to vfio-pci (driver: %s)", path, bdf,
					drv[0] ? drv : "none");
		}
		if (err == EBUSY)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err,
					"IOMMU group %u of %s is in use (EBUSY): another process or "
					"another dmabroker context holds %s",
					gid, bdf, path);
		if (err == EACCES || err == EPERM)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, err,
					"opening %s failed (%s): the daemon may not use this VFIO group",
					path, ksys_errno_name(err));
		return dmb_fail(e, dmb_code_from_errno(-err), err, "opening %s failed (%s): %s", path,
				ksys_errno_name(err), strerror(err));
	}

	struct vfio_group_status st = {.argsz = sizeof(st)};
	r = ksys_ioctl(fd, VFIO_GROUP_GET_STATUS, &st);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r, "VFIO_GROUP_GET_STATUS on %s failed (%s)", path,
				ksys_errno_name(r));
	if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) {
		char who[160];
		int n = ksys_group_blockers(be->sysfs_root, gid, who, sizeof(who));
		if (n > 0)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPERM,
					"IOMMU group %u is not viable: bind %s to vfio-pci (or unbind it)",
					gid, who);
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPERM,
				"IOMMU group %u is not viable: a device of the group is bound to a host "
				"driver",
				gid);
	}
	if (st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"IOMMU group %u is already attached to another VFIO container", gid);

	r = ksys_ioctl(fd, VFIO_GROUP_SET_CONTAINER, &c->container);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r,
				"VFIO_GROUP_SET_CONTAINER for IOMMU group %u failed (%s): %s", gid,
				ksys_errno_name(r), strerror(-r));
	if (!c->iommu_set) {
		r = set_iommu(c, gid, e);
		if (r < 0) {
			ksys_ioctl(fd, VFIO_GROUP_UNSET_CONTAINER, NULL);
			return r;
		}
	}

	struct t1_group *g = calloc(1, sizeof(*g));
	if (!g) {
		ksys_ioctl(fd, VFIO_GROUP_UNSET_CONTAINER, NULL);
		if (!c->groups)
			c->iommu_set = false;
		return oom(e, "a VFIO group");
	}
	g->id = gid;
	g->fd = TAKE_FD(fd);
	g->next = c->groups;
	c->groups = g;
	*out = g;
	return 0;
}

/* ---- contexts ---- */

static int t1_ctx_open(struct dmb_backend *b, struct dmb_bctx **out, struct dmb_err *e)
{
	struct t1_backend *be = t1_be(b);
	_cleanup_close_ int fd = open(be->container_path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return dmb_fail(e, dmb_code_from_errno(-errno), errno,
				"opening the VFIO container %s failed (%s): %s", be->container_path,
				ksys_errno_name(errno), strerror(errno));
	struct t1_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return oom(e, "a type1 context");
	c->base.be = b;
	c->be = be;
	c->container = TAKE_FD(fd);
	*out = &c->base;
	return 0;
}

/* The kernel removed `bytes` in [iova, iova+length) (length 0: everything),
 * RAM and MMIO together. */
static void account_unmapped(struct t1_ctx *c, uint64_t iova, uint64_t length, uint64_t bytes)
{
	uint64_t mmio = ksys_mmio_remove(&c->mmio, iova, length);
	bytes = bytes > mmio ? bytes - mmio : 0;
	if (length == 0 || bytes > c->mapped)
		bytes = c->mapped;
	c->mapped -= bytes;
	atomic_fetch_sub(&c->be->pinned, bytes);
	if (!has_mappings(c)) {
		c->vaddr_stale = false; /* nothing left that carries an old vaddr */
		release_idle_groups(c);
	}
}

static int t1_unmap_all(struct dmb_bctx *bc, uint64_t *unmapped, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	uint64_t total = 0;

	if (!c->iommu_set) {
		*unmapped = 0;
		return 0;
	}
	if (c->be->unmap_all) {
		struct vfio_iommu_type1_dma_unmap u = {
			.argsz = sizeof(u),
			.flags = VFIO_DMA_UNMAP_FLAG_ALL,
		};
		int r = ksys_ioctl(c->container, VFIO_IOMMU_UNMAP_DMA, &u);
		if (r < 0)
			return dmb_fail(e, dmb_code_from_errno(r), -r,
					"VFIO_IOMMU_UNMAP_DMA(ALL) failed (%s): %s", ksys_errno_name(r),
					strerror(-r));
		total = u.size;
	} else {
		/* [0, 2^63) and [2^63, 2^64): a size of 2^64 does not fit. */
		for (int half = 0; half < 2; half++) {
			struct vfio_iommu_type1_dma_unmap u = {
				.argsz = sizeof(u),
				.iova = half ? UINT64_C(1) << 63 : 0,
				.size = UINT64_C(1) << 63,
			};
			int r = ksys_ioctl(c->container, VFIO_IOMMU_UNMAP_DMA, &u);
			if (r < 0) {
				if (half) /* the lower half is gone */
					account_unmapped(c, 0, UINT64_C(1) << 63, total);
				return dmb_fail(e, dmb_code_from_errno(r), -r,
						"VFIO_IOMMU_UNMAP_DMA of [%#" PRIx64 ", +2^63) failed (%s): %s",
						(uint64_t)u.iova, ksys_errno_name(r), strerror(-r));
			}
			total += u.size;
		}
	}
	*unmapped = total;
	account_unmapped(c, 0, 0, c->mapped); /* everything is gone */
	return 0;
}

static void t1_dev_free(struct t1_dev *d)
{
	/* The BAR mmaps hold the device file open: unmap them first. */
	for (unsigned i = 0; i < DMB_PCI_NUM_BARS; i++)
		if (d->bars[i].addr)
			munmap(d->bars[i].addr, d->bars[i].len);
	pthread_mutex_destroy(&d->bar_lock);
	safe_close(d->fd);
	if (d->group && d->group->users > 0)
		d->group->users--;
	free(d);
}

static void t1_ctx_close(struct dmb_bctx *bc)
{
	if (!bc)
		return;
	struct t1_ctx *c = t1_ctx(bc);

	if (c->handed_over) {
		/* The successor owns the kernel state (the fd store holds the
		 * fds): close this process's fds, unmap and detach nothing. */
		while (c->devs) {
			struct t1_dev *d = c->devs;
			c->devs = d->next;
			t1_dev_free(d);
		}
		while (c->groups) {
			struct t1_group *g = c->groups;
			c->groups = g->next;
			safe_close(g->fd);
			free(g);
		}
		atomic_fetch_sub(&c->be->pinned, c->mapped);
		ksys_mmio_free(&c->mmio);
		safe_close(c->container);
		free(c);
		return;
	}

	/* Devices first: closing a device fd makes vfio-pci clear bus master,
	 * so no DMA is in flight while the mappings go. */
	while (c->devs) {
		struct t1_dev *d = c->devs;
		c->devs = d->next;
		t1_dev_free(d);
	}
	uint64_t n = 0;
	struct dmb_err e = {0};
	if (t1_unmap_all(bc, &n, &e) < 0)
		log_warning("vfio-type1: closing a context: %s", e.msg);
	while (c->groups)
		group_release(c, c->groups);
	if (c->mapped) {
		atomic_fetch_sub(&c->be->pinned, c->mapped);
		c->mapped = 0;
	}
	ksys_mmio_free(&c->mmio);
	safe_close(c->container);
	free(c);
}

static int t1_iova_info(struct dmb_bctx *bc, struct dmb_iova_info *out, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	if (!c->iommu_set) {
		dmb_fail(e, DMB_E_FAILED_PRECONDITION, 0, "%s", no_iommu_yet);
		return -ENODEV;
	}

	struct vfio_iommu_type1_info first = {.argsz = sizeof(first)};
	int r = ksys_ioctl(c->container, VFIO_IOMMU_GET_INFO, &first);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r, "VFIO_IOMMU_GET_INFO failed (%s): %s",
				ksys_errno_name(r), strerror(-r));

	_cleanup_free_ void *buf = NULL;
	const void *info = &first;
	size_t len = sizeof(first);
	/* Two-call protocol: the kernel asks for more room when it has caps.
	 * Retry a few times in case the chain grows in between. */
	for (int tries = 0; (first.flags & VFIO_IOMMU_INFO_CAPS) && first.argsz > len; tries++) {
		if (tries == 3 || first.argsz > 1u << 20)
			return dmb_fail(e, DMB_E_INTERNAL, EPROTO,
					"VFIO_IOMMU_GET_INFO keeps asking for a larger buffer (%u bytes)",
					first.argsz);
		size_t want = first.argsz;
		free(buf);
		buf = calloc(1, want);
		if (!buf)
			return oom(e, "the type1 IOMMU info");
		struct vfio_iommu_type1_info *p = buf;
		p->argsz = (uint32_t)want;
		r = ksys_ioctl(c->container, VFIO_IOMMU_GET_INFO, p);
		if (r < 0)
			return dmb_fail(e, dmb_code_from_errno(r), -r,
					"VFIO_IOMMU_GET_INFO with %zu bytes failed (%s): %s", want,
					ksys_errno_name(r), strerror(-r));
		info = buf;
		len = want;
		first = *p;
		if (first.argsz <= want)
			break;
	}

	struct dmb_type1_info ti;
	r = dmb_type1_parse_info(info, len, c->entry_limit, &ti);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r,
				"VFIO_IOMMU_GET_INFO returned a malformed capability chain");
	if (ti.nr_iovas > DMB_MAX_IOVA_RANGES)
		log_warning("vfio-type1: the container reports %u IOVA ranges; using the first %d",
			    ti.nr_iovas, DMB_MAX_IOVA_RANGES);
	*out = ti.iova;
	out->pgsizes = ti.iova_pgsizes;
	return 0;
}

/* ---- devices ---- */

/* Makes d (zeroed, fd open on a device of group g) one of c's devices. */
static void dev_link(struct t1_ctx *c, struct t1_group *g, struct t1_dev *d, int fd,
		     const char *bdf)
{
	d->fd = fd;
	d->ctx = c;
	d->group = g;
	d->v.base.ctx = &c->base;
	pthread_mutex_init(&d->bar_lock, NULL);
	ksys_vdev_init(&d->v, fd, bdf);
	if (d->v.cfg_err < 0)
		log_debug("vfio-type1: %s has no config region (%s)", bdf, ksys_errno_name(d->v.cfg_err));
	g->users++;
	d->next = c->devs;
	c->devs = d;
}

static void dev_info_fill(struct t1_backend *be, const char *bdf, unsigned gid,
			  struct dmb_dev_info *info)
{
	if (!info)
		return;
	memset(info, 0, sizeof(*info));
	if (ksys_pci_ids(be->sysfs_root, bdf, &info->vendor, &info->device) < 0)
		log_debug("vfio-type1: cannot read the vendor/device IDs of %s", bdf);
	snprintf(info->group, sizeof(info->group), "%u", gid);
	info->viable = true;
}

static int t1_dev_open(struct dmb_bctx *bc, const char *bdf_in, struct dmb_bdev **out,
		       struct dmb_dev_info *info, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	struct t1_backend *be = c->be;
	char bdf[KSYS_BDF_LEN + 1];
	unsigned gid;

	if (ksys_bdf_normalize(bdf_in, bdf) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%s' is not a PCI address (expected dddd:bb:dd.f)", bdf_in ? bdf_in : "");
	int r = ksys_pci_exists(be->sysfs_root, bdf);
	if (r < 0)
		return dmb_fail(e, DMB_E_NOT_FOUND, -r, "no PCI device %s on this host (%s)", bdf,
				ksys_errno_name(r));
	r = ksys_iommu_group(be->sysfs_root, bdf, &gid);
	if (r == -ENOENT)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
				"PCI device %s has no IOMMU group: the IOMMU is off or absent "
				"(intel_iommu=on / amd_iommu=on)",
				bdf);
	if (r < 0)
		return dmb_fail(e, DMB_E_INTERNAL, -r, "reading the iommu_group link of %s failed (%s)",
				bdf, ksys_errno_name(r));

	struct t1_group *g = NULL;
	for (struct t1_group *i = c->groups; i; i = i->next)
		if (i->id == gid)
			g = i;
	bool new_group = !g;
	if (new_group && c->vaddr_stale)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"cannot add IOMMU group %u (%s): the previous broker process died "
				"without handing over, and %" PRIu64 " mapping(s) of this context still "
				"carry its addresses; re-create the context (or unmap them all) to "
				"attach more devices",
				gid, bdf, c->n_stale);
	if (new_group) {
		r = group_attach(c, gid, bdf, &g, e);
		if (r < 0)
			return r;
	}

	struct t1_dev *d = calloc(1, sizeof(*d));
	if (!d) {
		r = oom(e, "a type1 device");
		goto out_release;
	}
	d->fd = -1;
	int fd = ksys_ioctl(g->fd, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (fd < 0) {
		r = dmb_fail(e, fd == -EBUSY ? DMB_E_FAILED_PRECONDITION : dmb_code_from_errno(fd), -fd,
			     "VFIO_GROUP_GET_DEVICE_FD(%s) on IOMMU group %u failed (%s): %s", bdf, gid,
			     ksys_errno_name(fd), strerror(-fd));
		free(d);
		goto out_release;
	}
	dev_link(c, g, d, fd, bdf);
	if (new_group)
		release_idle_groups(c); /* the new group now holds the IOMMU */
	dev_info_fill(be, bdf, gid, info);
	*out = &d->v.base;
	return 0;

out_release:
	if (new_group && g->users == 0)
		group_release(c, g);
	return r;
}

static void t1_dev_close(struct dmb_bdev *bd)
{
	if (!bd)
		return;
	struct t1_dev *d = dmb_container_of(bd, struct t1_dev, v.base);
	struct t1_ctx *c = d->ctx;
	for (struct t1_dev **pp = &c->devs; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			break;
		}
	}
	t1_dev_free(d);
	release_idle_groups(c);
}

static inline struct t1_dev *t1_dev(struct dmb_bdev *bd)
{
	return dmb_container_of(bd, struct t1_dev, v.base);
}

/* The daemon's mmap of BAR `bar` of d, made on first use. */
static int bar_mmap(struct t1_dev *d, unsigned bar, struct t1_bar *out, struct dmb_err *e)
{
	int r = 0;
	pthread_mutex_lock(&d->bar_lock);
	struct t1_bar *b = &d->bars[bar];
	if (b->addr)
		goto out_unlock;

	struct ksys_region ri;
	r = ksys_vfio_region_info(d->fd, bar, &ri);
	if (r < 0) {
		r = dmb_fail(e, dmb_code_from_errno(r), -r,
			     "VFIO_DEVICE_GET_REGION_INFO(BAR %u) of %s failed (%s): %s", bar,
			     d->v.bdf, ksys_errno_name(r), strerror(-r));
		goto out_unlock;
	}
	if (ri.size == 0 || !(ri.flags & VFIO_REGION_INFO_FLAG_MMAP)) {
		r = dmb_fail(e, DMB_E_FAILED_PRECONDITION, EOPNOTSUPP,
			     "BAR %u of %s cannot be mapped for P2P: VFIO does not allow an mmap of "
			     "it",
			     bar, d->v.bdf);
		goto out_unlock;
	}
	uint64_t page = ksys_page_size();
	uint64_t len = (ri.size + page - 1) & ~(page - 1);
	if (len < ri.size || len > SIZE_MAX || ri.offset > (uint64_t)INT64_MAX) {
		r = dmb_fail(e, DMB_E_INTERNAL, EOVERFLOW,
			     "BAR %u of %s (%#" PRIx64 " bytes at %#" PRIx64 ") cannot be mmapped",
			     bar, d->v.bdf, ri.size, ri.offset);
		goto out_unlock;
	}
	int prot = ((ri.flags & VFIO_REGION_INFO_FLAG_READ) ? PROT_READ : 0) |
		   ((ri.flags & VFIO_REGION_INFO_FLAG_WRITE) ? PROT_WRITE : 0);
	void *addr = mmap(NULL, (size_t)len, prot, MAP_SHARED, d->fd, (off_t)ri.offset);
	if (addr == MAP_FAILED) {
		int err = errno;
		r = dmb_fail(e, err == ENOMEM ? DMB_E_RESOURCE_EXHAUSTED : DMB_E_INTERNAL, err,
			     "mmap of BAR %u of %s (%#" PRIx64 " bytes) failed (%s): %s", bar,
			     d->v.bdf, ri.size, ksys_errno_name(err), strerror(err));
		goto out_unlock;
	}
	b->addr = addr;
	b->len = (size_t)len;
out_unlock:
	if (r == 0)
		*out = *b;
	pthread_mutex_unlock(&d->bar_lock);
	return r;
}

static int t1_map_bar(struct dmb_bctx *bc, struct dmb_bdev *bpeer, unsigned bar, uint64_t offset,
		      uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	struct t1_dev *peer = t1_dev(bpeer);

	if (!c->be->native)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"%s is iommufd's VFIO compatibility container, which cannot map a peer "
				"BAR (P2P needs the native vfio_iommu_type1 driver, or the iommufd "
				"backend with VFIO dma-buf export of BARs, Linux 6.19+)",
				c->be->container_path);
	if (!c->iommu_set) {
		dmb_fail(e, DMB_E_FAILED_PRECONDITION, 0, "%s", no_iommu_yet);
		return -ENODEV;
	}
	if (bar >= DMB_PCI_NUM_BARS || length == 0 || !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"P2P mapping of BAR %u [%#" PRIx64 ", +%#" PRIx64 ") is malformed", bar,
				offset, length);
	struct t1_bar b = {0};
	int r = bar_mmap(peer, bar, &b, e);
	if (r < 0)
		return r;
	if (offset > b.len || length > b.len - offset)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"P2P mapping [%#" PRIx64 ", +%#" PRIx64 ") lies outside BAR %u of %s "
				"(%#zx bytes)",
				offset, length, bar, peer->v.bdf, b.len);
	if (ksys_mmio_reserve(&c->mmio) < 0)
		return oom(e, "a P2P mapping");

	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = ((prot & DMB_PROT_READ) ? VFIO_DMA_MAP_FLAG_READ : 0) |
			 ((prot & DMB_PROT_WRITE) ? VFIO_DMA_MAP_FLAG_WRITE : 0),
		.vaddr = (uint64_t)(uintptr_t)b.addr + offset,
		.iova = iova,
		.size = length,
	};
	r = ksys_ioctl(c->container, VFIO_IOMMU_MAP_DMA, &m);
	if (r < 0) {
		static const struct ksys_why whys[] = {
			{ EFAULT, DMB_E_FAILED_PRECONDITION,
			  "the peer's BAR is not accessible (memory decoding off?)" },
			{ EEXIST, 0, "the range overlaps an existing mapping of the container" },
			{ ENOSPC, 0,
			  "the container has no mapping slots left (vfio_iommu_type1.dma_entry_limit)" },
			{ EINVAL, 0,
			  "outside the container's IOVA ranges or not aligned to its page size" },
			{ EBUSY, DMB_E_UNAVAILABLE,
			  "the container is busy (a vaddr update is in progress)" },
			{ 0 },
		};
		int code;
		const char *why = ksys_explain(r, whys, &code);
		return dmb_fail(e, code, -r,
				"VFIO_IOMMU_MAP_DMA of BAR %u of %s [%#" PRIx64 ", +%#" PRIx64
				") at IOVA %#" PRIx64 " failed (%s): %s",
				bar, peer->v.bdf, offset, length, iova, ksys_errno_name(r), why);
	}
	ksys_mmio_add(&c->mmio, iova, length);
	return 0;
}

/* ---- regions and mappings ---- */

static int t1_region_open(struct dmb_backend *b, const struct dmb_region_desc *d,
			  struct dmb_bregion **out, struct dmb_err *e)
{
	if (d->size == 0 || d->size > SIZE_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"a region of %" PRIu64 " bytes cannot be mapped", d->size);
	void *addr = mmap(NULL, (size_t)d->size, PROT_READ | (d->writable ? PROT_WRITE : 0),
			  MAP_SHARED, d->fd, 0);
	if (addr == MAP_FAILED)
		return dmb_fail(e, errno == ENOMEM ? DMB_E_RESOURCE_EXHAUSTED : DMB_E_INTERNAL, errno,
				"mmap of a %" PRIu64 "-byte region failed (%s): %s", d->size,
				ksys_errno_name(errno), strerror(errno));
	struct t1_region *r = calloc(1, sizeof(*r));
	if (!r) {
		munmap(addr, (size_t)d->size);
		return oom(e, "a type1 region");
	}
	r->base.be = b;
	r->addr = addr;
	r->size = d->size;
	*out = &r->base;
	return 0;
}

static void t1_region_close(struct dmb_bregion *br)
{
	if (!br)
		return;
	struct t1_region *r = dmb_container_of(br, struct t1_region, base);
	/* Pinned pages of live mappings stay pinned; the core unregisters a
	 * region only when no mapping uses it. */
	munmap(r->addr, (size_t)r->size);
	free(r);
}

static int t1_map(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset, uint64_t iova,
		  uint64_t length, uint32_t prot, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	struct t1_region *reg = dmb_container_of(br, struct t1_region, base);

	if (!c->iommu_set) {
		dmb_fail(e, DMB_E_FAILED_PRECONDITION, 0, "%s", no_iommu_yet);
		return -ENODEV;
	}
	if (offset > reg->size || length > reg->size - offset || length == 0 ||
	    !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"mapping [%#" PRIx64 ", +%#" PRIx64 ") of a %#" PRIx64
				"-byte region is out of bounds",
				offset, length, reg->size);

	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = ((prot & DMB_PROT_READ) ? VFIO_DMA_MAP_FLAG_READ : 0) |
			 ((prot & DMB_PROT_WRITE) ? VFIO_DMA_MAP_FLAG_WRITE : 0),
		.vaddr = (uint64_t)(uintptr_t)reg->addr + offset,
		.iova = iova,
		.size = length,
	};
	int r = ksys_ioctl(c->container, VFIO_IOMMU_MAP_DMA, &m);
	if (r < 0) {
		static const struct ksys_why whys[] = {
			{ EEXIST, 0, "the range overlaps an existing mapping of the container" },
			{ ENOSPC, 0,
			  "the container has no mapping slots left (vfio_iommu_type1.dma_entry_limit)" },
			{ ENOMEM, 0,
			  "pinning would exceed the locked-memory limit (RLIMIT_MEMLOCK)" },
			{ EFAULT, DMB_E_INTERNAL, "the kernel could not pin the region's pages" },
			{ EINVAL, 0,
			  "outside the container's IOVA ranges or not aligned to its page size" },
			{ EBUSY, DMB_E_UNAVAILABLE,
			  "the container is busy (a vaddr update is in progress)" },
			{ 0 },
		};
		int code;
		const char *why = ksys_explain(r, whys, &code);
		return dmb_fail(e, code, -r,
				"VFIO_IOMMU_MAP_DMA of %#" PRIx64 " bytes at IOVA %#" PRIx64
				" failed (%s): %s",
				length, iova, ksys_errno_name(r), why);
	}
	c->mapped += length;
	atomic_fetch_add(&c->be->pinned, length);
	return 0;
}

static int t1_unmap(struct dmb_bctx *bc, uint64_t iova, uint64_t length, uint64_t *unmapped,
		    struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	if (!c->iommu_set) {
		*unmapped = 0;
		return 0;
	}
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u),
		.iova = iova,
		.size = length,
	};
	int r = ksys_ioctl(c->container, VFIO_IOMMU_UNMAP_DMA, &u);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r,
				"VFIO_IOMMU_UNMAP_DMA of %#" PRIx64 " bytes at IOVA %#" PRIx64
				" failed (%s): %s",
				length, iova, ksys_errno_name(r),
				r == -EINVAL ? "the range splits a mapping or is not aligned to the "
					       "IOMMU page size"
					     : strerror(-r));
	*unmapped = u.size;
	account_unmapped(c, iova, length, u.size);
	return 0;
}

/* ---- restart (see "Restart" in the header comment) ---- */

static int t1_ctx_fds(struct dmb_bctx *bc, struct dmb_fdset *out)
{
	struct t1_ctx *c = t1_ctx(bc);
	out->n = 0;
	int r = ksys_fdset_add(out, c->container, "container");
	for (struct t1_group *g = c->groups; g && r == 0; g = g->next)
		r = ksys_fdset_add(out, g->fd, "group.%u", g->id);
	if (r == -E2BIG)
		log_warning("vfio-type1: a context with more than %d IOMMU groups cannot be handed to "
			    "the fd store (DMB_MAX_OBJ_FDS)",
			    DMB_MAX_OBJ_FDS - 1);
	return r;
}

static int t1_dev_fds(struct dmb_bdev *bd, struct dmb_fdset *out)
{
	out->n = 0;
	return ksys_fdset_add(out, t1_dev(bd)->fd, "device");
}

/* UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_VADDR: marks the mappings wholly
 * inside [iova, iova+size) "vaddr invalid"; IOMMU entries and pins stay.
 * *bytes gets what the kernel covered. */
static int vaddr_invalidate(struct t1_ctx *c, uint32_t flags, uint64_t iova, uint64_t size,
			    uint64_t *bytes)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u),
		.flags = VFIO_DMA_UNMAP_FLAG_VADDR | flags,
		.iova = iova,
		.size = size,
	};
	int r = ksys_ioctl(c->container, VFIO_IOMMU_UNMAP_DMA, &u);
	*bytes = r == 0 ? u.size : 0;
	return r;
}

/* MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR only: the invalidated mapping at
 * exactly [iova, iova+size) takes vaddr, of this process. */
static int vaddr_update(struct t1_ctx *c, uint64_t vaddr, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_VADDR,
		.vaddr = vaddr,
		.iova = iova,
		.size = size,
	};
	return ksys_ioctl(c->container, VFIO_IOMMU_MAP_DMA, &m);
}

static int t1_ctx_prepare_handover(struct dmb_bctx *bc, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	/* Whatever happens below, a successor adopts this context: from now
	 * on closing it must not tear anything down. */
	c->handed_over = true;
	if (!c->iommu_set || !c->be->native)
		return 0; /* nothing mapped / iommufd's compat container: no vaddrs to move */
	if (!c->vaddr_update)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"this kernel's type1 IOMMU lacks VFIO_UPDATE_VADDR (Linux 5.12+): the "
				"next broker process will have to take the mappings over as after a "
				"crash");
	uint64_t bytes = 0, half = 0;
	int r;
	if (c->be->unmap_all) {
		r = vaddr_invalidate(c, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0, &bytes);
	} else {
		r = vaddr_invalidate(c, 0, 0, UINT64_C(1) << 63, &bytes);
		if (r == 0)
			r = vaddr_invalidate(c, 0, UINT64_C(1) << 63, UINT64_C(1) << 63, &half);
		bytes += half;
	}
	if (r < 0)
		return dmb_fail(e, r == -EBUSY ? DMB_E_UNAVAILABLE : dmb_code_from_errno(r), -r,
				"VFIO_IOMMU_UNMAP_DMA(VADDR) of every mapping failed (%s): %s; the next "
				"broker process will take them over as after a crash",
				ksys_errno_name(r),
				r == -EINVAL ? "a mapping's address was already invalid (a predecessor "
					       "handed it over and nobody took it)"
				: r == -EBUSY ? "an emulated device uses the container"
					      : strerror(-r));
	log_debug("vfio-type1: handover: invalidated the addresses of %#" PRIx64 " mapped bytes",
		  bytes);
	return 0;
}

static int t1_ctx_adopt(struct dmb_backend *b, const struct dmb_fdset *fds, struct dmb_bctx **out,
			struct dmb_err *e)
{
	struct t1_backend *be = t1_be(b);
	bool keep[DMB_MAX_OBJ_FDS] = {false};
	int r;

	if (ksys_fdset_check(fds) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the fd set of a type1 context is malformed");
	int ci = ksys_fdset_find(fds, "container");
	if (ci < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"a type1 context cannot be adopted without its \"container\" fd");
	int cfd = fds->e[ci].fd;
	int v = ksys_ioctl(cfd, VFIO_GET_API_VERSION, NULL);
	if (v != VFIO_API_VERSION)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, v < 0 ? -v : EPROTO,
				"the \"container\" fd is not a VFIO container (VFIO_GET_API_VERSION: %s)",
				v < 0 ? ksys_errno_name(v) : "another API version");
	keep[ci] = true;

	struct t1_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return oom(e, "a type1 context");
	c->base.be = b;
	c->be = be;
	c->container = cfd;
	c->adopting = true;

	for (size_t i = 0; i < fds->n; i++) {
		const struct dmb_fd_entry *fe = &fds->e[i];
		uint32_t gid;
		if ((int)i == ci)
			continue;
		if (ksys_fdname_u32(fe->name, "group.", &gid) < 0) {
			log_warning("vfio-type1: adopting a context: closing the unknown fd \"%s\"",
				    fe->name);
			continue;
		}
		struct vfio_group_status st = {.argsz = sizeof(st)};
		r = ksys_ioctl(fe->fd, VFIO_GROUP_GET_STATUS, &st);
		if (r < 0) {
			r = dmb_fail(e, DMB_E_INVALID_ARGUMENT, -r,
				     "the \"%s\" fd is not a VFIO group (VFIO_GROUP_GET_STATUS: %s)",
				     fe->name, ksys_errno_name(r));
			goto out_free;
		}
		if (!(st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET)) {
			/* It left the container (its last device closed) just
			 * before the old process stopped. */
			log_info("vfio-type1: IOMMU group %u is no longer in the adopted container; "
				 "closing it",
				 gid);
			continue;
		}
		if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE))
			log_warning("vfio-type1: adopted IOMMU group %u is not viable any more (a "
				    "device of it was bound to a host driver)",
				    gid);
		struct t1_group *g = calloc(1, sizeof(*g));
		if (!g) {
			r = oom(e, "a VFIO group");
			goto out_free;
		}
		g->id = gid;
		g->fd = fe->fd;
		g->next = c->groups;
		c->groups = g;
		keep[i] = true;
	}

	/* The IOMMU was set by the first group, long ago: GET_INFO answers
	 * EINVAL only when it was not (the old process stopped between
	 * SET_CONTAINER and SET_IOMMU: nothing can be mapped yet). */
	struct vfio_iommu_type1_info info = {.argsz = sizeof(info)};
	r = ksys_ioctl(cfd, VFIO_IOMMU_GET_INFO, &info);
	if (r == 0) {
		iommu_ready(c);
	} else if (r == -EINVAL) {
		if (c->groups) {
			r = set_iommu(c, c->groups->id, e);
			if (r < 0)
				goto out_free;
		}
	} else {
		r = dmb_fail(e, dmb_code_from_errno(r), -r,
			     "VFIO_IOMMU_GET_INFO on the adopted container failed (%s): %s",
			     ksys_errno_name(r), strerror(-r));
		goto out_free;
	}

	/* Success: the fds are ours; close those we did not keep. */
	for (size_t i = 0; i < fds->n; i++)
		if (!keep[i])
			close(fds->e[i].fd);
	*out = &c->base;
	return 0;

out_free:
	/* The caller closes every fd of the set. */
	while (c->groups) {
		struct t1_group *g = c->groups;
		c->groups = g->next;
		free(g);
	}
	free(c);
	return r;
}

static int t1_dev_adopt(struct dmb_bctx *bc, const char *bdf_in, const struct dmb_fdset *fds,
			struct dmb_bdev **out, struct dmb_dev_info *info, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	struct t1_backend *be = c->be;
	char bdf[KSYS_BDF_LEN + 1];
	unsigned gid;

	if (ksys_bdf_normalize(bdf_in, bdf) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%s' is not a PCI address (expected dddd:bb:dd.f)", bdf_in ? bdf_in : "");
	if (ksys_fdset_check(fds) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the fd set of device %s is malformed", bdf);
	int di = ksys_fdset_find(fds, "device");
	if (di < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"device %s cannot be adopted without its \"device\" fd", bdf);
	int r = ksys_iommu_group(be->sysfs_root, bdf, &gid);
	if (r < 0)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -r,
				"the IOMMU group of %s cannot be read from sysfs (%s)", bdf,
				ksys_errno_name(r));
	struct t1_group *g = NULL;
	for (struct t1_group *i = c->groups; i; i = i->next)
		if (i->id == gid)
			g = i;
	if (!g)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
				"IOMMU group %u of %s was not handed over with its context (no "
				"\"group.%u\" fd in the container)",
				gid, bdf, gid);

	int fd = fds->e[di].fd;
	struct ksys_region ri;
	r = ksys_vfio_region_info(fd, VFIO_PCI_CONFIG_REGION_INDEX, &ri);
	if (r == -ENOTTY || r == -EBADF)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, -r,
				"the \"device\" fd of %s is not a VFIO device (%s)", bdf,
				ksys_errno_name(r));

	struct t1_dev *d = calloc(1, sizeof(*d));
	if (!d)
		return oom(e, "a type1 device");
	dev_link(c, g, d, fd, bdf);
	for (size_t i = 0; i < fds->n; i++) {
		if ((int)i == di)
			continue;
		log_warning("vfio-type1: adopting %s: closing the unknown fd \"%s\"", bdf,
			    fds->e[i].name);
		close(fds->e[i].fd);
	}
	dev_info_fill(be, bdf, gid, info);
	*out = &d->v.base;
	return 0;
}

static int owner_check_failed(struct dmb_err *e, uint64_t iova)
{
	return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPERM,
			"this kernel lets only the process that created a type1 mapping remove it "
			"(until Linux 6.0), so this broker process could never unmap IOVA %#" PRIx64
			"; a restart under live mappings needs Linux 6.0+",
			iova);
}

static int size_mismatch(struct dmb_err *e, uint64_t iova, uint64_t length)
{
	return dmb_fail(e, DMB_E_INTERNAL, EINVAL,
			"the kernel's mapping at IOVA %#" PRIx64 " is not the journal's [%#" PRIx64
			", +%#" PRIx64 ") (it has another extent)",
			iova, iova, length);
}

/* Moves the kernel's mapping [iova, iova+length) to vaddr, of this process
 * (see "Restart" in the header comment for the two paths). 0: adopted,
 * vaddr ours or (c->vaddr_stale) left as it was; -ENOENT: no mapping there;
 * other errors: a sentence in e, the mapping (if any) untouched or stale. */
static int adopt_vaddr(struct t1_ctx *c, uint64_t vaddr, uint64_t iova, uint64_t length,
		       struct dmb_err *e)
{
	uint64_t bytes = 0;

	if (!c->iommu_set)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				"no mapping at IOVA %#" PRIx64 ": the adopted container has no IOMMU",
				iova);
	if (!c->be->native) {
		/* iommufd's compat container: no VADDR; its pins stay with the
		 * old process's addresses and anyone holding the fd may unmap. */
		c->vaddr_stale = true;
		c->n_stale++;
		return 0;
	}
	if (!c->vaddr_update)
		return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
				"this kernel's type1 IOMMU lacks VFIO_UPDATE_VADDR (Linux 5.12+), so this "
				"broker process can neither take over nor remove the mapping at IOVA "
				"%#" PRIx64,
				iova);

	int r = vaddr_update(c, vaddr, iova, length);
	if (r == 0) {
		/* Handed over: the old process invalidated it. Once per context,
		 * check that this kernel lets us remove it later (before 6.0 only
		 * the creator could): invalidate it again and update it back. */
		c->n_handed++;
		if (c->owner_checked)
			return 0;
		r = vaddr_invalidate(c, 0, iova, length, &bytes);
		if (r == 0 && bytes == 0)
			return owner_check_failed(e, iova);
		if (r < 0 || bytes != length) {
			log_debug("vfio-type1: the take-over check at IOVA %#" PRIx64 " answered %s "
				  "(%#" PRIx64 " bytes)",
				  iova, r < 0 ? ksys_errno_name(r) : "0", bytes);
			return 0;
		}
		c->owner_checked = true;
		r = vaddr_update(c, vaddr, iova, length);
		if (r < 0)
			goto out_stale;
		return 0;
	}
	if (r == -ENOENT)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "no mapping at IOVA %#" PRIx64, iova);
	if (r != -EINVAL)
		goto out_stale; /* it exists, is invalid and has the right extent */

	/* EINVAL: not invalidated (the old process died without handing over)
	 * or another extent. Invalidate exactly this range ourselves: EINVAL
	 * if that would split a mapping, 0 bytes if the kernel refuses another
	 * process's mapping. */
	r = vaddr_invalidate(c, 0, iova, length, &bytes);
	if (r == -EINVAL)
		return size_mismatch(e, iova, length);
	if (r < 0)
		return dmb_fail(e, r == -EBUSY ? DMB_E_UNAVAILABLE : dmb_code_from_errno(r), -r,
				"VFIO_IOMMU_UNMAP_DMA(VADDR) at IOVA %#" PRIx64 " failed (%s): %s", iova,
				ksys_errno_name(r),
				r == -EBUSY ? "an emulated device uses the container" : strerror(-r));
	if (bytes == 0)
		return owner_check_failed(e, iova);
	c->owner_checked = true;
	r = vaddr_update(c, vaddr, iova, length);
	if (r == 0) {
		c->n_taken++;
		return 0;
	}
	if (r == -EINVAL) {
		/* Several smaller mappings filled the range: now invalid, and
		 * none is ours. */
		c->vaddr_stale = true;
		c->n_stale++;
		return size_mismatch(e, iova, length);
	}
	goto out_stale;

out_stale:
	/* Invalid and not updated (e.g. ENOMEM: Linux 6.2+ moves the locked-
	 * memory charge to this process). DMA goes on, unmap works; the kernel
	 * refuses (or, before 6.2, blocks) adding a group until it is valid. */
	log_warning("vfio-type1: the mapping at IOVA %#" PRIx64 " keeps an invalid address: "
		    "VFIO_IOMMU_MAP_DMA(VADDR) failed (%s)",
		    iova, ksys_errno_name(r));
	c->vaddr_stale = true;
	c->n_stale++;
	return 0;
}

static int t1_map_adopt(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset,
			uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	struct t1_region *reg = dmb_container_of(br, struct t1_region, base);

	if (offset > reg->size || length > reg->size - offset || length == 0 ||
	    !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"mapping [%#" PRIx64 ", +%#" PRIx64 ") of a %#" PRIx64
				"-byte region is out of bounds",
				offset, length, reg->size);
	int r = adopt_vaddr(c, (uint64_t)(uintptr_t)reg->addr + offset, iova, length, e);
	if (r < 0)
		return r;
	c->mapped += length;
	atomic_fetch_add(&c->be->pinned, length);
	return 0;
}

static int t1_map_bar_adopt(struct dmb_bctx *bc, struct dmb_bdev *bpeer, unsigned bar,
			    uint64_t offset, uint64_t iova, uint64_t length, uint32_t prot,
			    struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	struct t1_dev *peer = t1_dev(bpeer);

	if (bar >= DMB_PCI_NUM_BARS || length == 0 || !(prot & (DMB_PROT_READ | DMB_PROT_WRITE)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"P2P mapping of BAR %u [%#" PRIx64 ", +%#" PRIx64 ") is malformed", bar,
				offset, length);
	if (!c->be->native)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				"no P2P mapping at IOVA %#" PRIx64 ": iommufd's VFIO compatibility "
				"container cannot hold one",
				iova);
	/* A new mmap of the peer's BAR: the old process's is gone. */
	struct t1_bar b = {0};
	int r = bar_mmap(peer, bar, &b, e);
	if (r < 0)
		return r;
	if (offset > b.len || length > b.len - offset)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"P2P mapping [%#" PRIx64 ", +%#" PRIx64 ") lies outside BAR %u of %s "
				"(%#zx bytes)",
				offset, length, bar, peer->v.bdf, b.len);
	if (ksys_mmio_reserve(&c->mmio) < 0)
		return oom(e, "a P2P mapping");
	r = adopt_vaddr(c, (uint64_t)(uintptr_t)b.addr + offset, iova, length, e);
	if (r < 0)
		return r;
	ksys_mmio_add(&c->mmio, iova, length);
	return 0;
}

static int t1_adopt_finish(struct dmb_bctx *bc, uint64_t *stray, struct dmb_err *e)
{
	struct t1_ctx *c = t1_ctx(bc);
	/* type1 cannot list a container's mappings, so one the journal does
	 * not name cannot be found. The daemon journals every mapping before
	 * the kernel makes it (docs/journal.md), so there is none. */
	*stray = 0;
	c->adopting = false;
	release_idle_groups(c); /* groups that kept neither a device nor a mapping */
	if (c->n_handed || c->n_taken || c->n_stale)
		log_info("vfio-type1: adopted %" PRIu64 " mappings: %" PRIu64 " handed over, %" PRIu64
			 " taken over from a process that died without handing over, %" PRIu64
			 " left with the old process's addresses%s",
			 c->n_handed + c->n_taken + c->n_stale, c->n_handed, c->n_taken, c->n_stale,
			 c->vaddr_stale ? " (no more IOMMU groups can join this context)" : "");
	c->n_handed = c->n_taken = 0;
	return 0;
}

/* VFIO's legacy no-IOMMU mode (the group /dev/vfio/noiommu-N with
 * VFIO_NOIOMMU_IOMMU) has no VFIO_IOMMU_MAP_DMA: nothing is mapped or pinned
 * through the container, and userspace would have to pin its memory itself
 * and read physical addresses from /proc/self/pagemap. The broker offers
 * no-IOMMU contexts only through iommufd (Linux 7.3). */
static int t1_ctx_set_noiommu(struct dmb_bctx *bc, struct dmb_err *e)
{
	(void)bc;
	return dmb_fail(e, DMB_E_UNIMPLEMENTED, EOPNOTSUPP,
			"the vfio-type1 backend cannot make no-IOMMU contexts: VFIO's no-IOMMU group "
			"mode has no DMA mapping (no VFIO_IOMMU_MAP_DMA) for the broker to pin "
			"through; use the iommufd backend (Linux 7.3 with CONFIG_IOMMUFD_NOIOMMU)");
}

static const struct dmb_backend_ops t1_ops = {
	.name = "vfio-type1",
	/* context: its container; region: the core's fd (the mapping is our mmap);
	 * device: its fd and, when it is the first of its group, the group's */
	.fd_cost = { .fds = { 1, 1, 2 }, .stored = { 1, 1, 2 } },
	.destroy = t1_destroy,
	.ctx_open = t1_ctx_open,
	.ctx_close = t1_ctx_close,
	.iova_info = t1_iova_info,
	.region_open = t1_region_open,
	.region_close = t1_region_close,
	.map = t1_map,
	.unmap = t1_unmap,
	.unmap_all = t1_unmap_all,
	.dev_open = t1_dev_open,
	.dev_close = t1_dev_close,
	.dev_fd = ksys_dev_fd,
	.dev_bar_info = ksys_dev_bar_info,
	.dev_config_read = ksys_dev_config_read,
	.dev_config_write = ksys_dev_config_write,
	.dev_reset = ksys_dev_reset,
	.map_bar = t1_map_bar,
	.dma = NULL,
	.ctx_set_noiommu = t1_ctx_set_noiommu,
	.ctx_fds = t1_ctx_fds,
	.dev_fds = t1_dev_fds,
	.ctx_adopt = t1_ctx_adopt,
	.dev_adopt = t1_dev_adopt,
	.map_adopt = t1_map_adopt,
	.map_bar_adopt = t1_map_bar_adopt,
	.adopt_finish = t1_adopt_finish,
	.ctx_prepare_handover = t1_ctx_prepare_handover,
	.pinned_bytes = t1_pinned_bytes,
};

int dmb_type1_create(const struct dmb_backend_config *cfg, struct dmb_backend **out,
		     struct dmb_err *e)
{
	const char *sysfs = cfg && cfg->sysfs_root ? cfg->sysfs_root : "/sys";
	const char *dev = cfg && cfg->dev_root ? cfg->dev_root : "/dev";
	char path[PATH_MAX];

	if (ksys_path(path, sizeof(path), "%s/vfio/vfio", dev) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, ENAMETOOLONG, "the device root is too long");
	_cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		if (err == ENOENT)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err,
					"%s missing: vfio module not loaded", path);
		if (err == EACCES || err == EPERM)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, err, "%s not accessible (%s)", path,
					ksys_errno_name(err));
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err, "opening %s failed (%s)", path,
				ksys_errno_name(err));
	}
	int v = ksys_ioctl(fd, VFIO_GET_API_VERSION, NULL);
	if (v < 0)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -v, "VFIO_GET_API_VERSION on %s failed (%s)",
				path, ksys_errno_name(v));
	if (v != VFIO_API_VERSION)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPROTO,
				"%s speaks VFIO API %d, not %d", path, v, VFIO_API_VERSION);
	int t = ksys_ioctl(fd, VFIO_CHECK_EXTENSION, (void *)(uintptr_t)VFIO_TYPE1v2_IOMMU);
	if (t <= 0)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, t < 0 ? -t : ENODEV,
				"%s lacks the type1v2 IOMMU: vfio_iommu_type1 not loaded", path);

	struct t1_backend *be = calloc(1, sizeof(*be));
	if (!be)
		return oom(e, "the vfio-type1 backend");
	be->sysfs_root = strdup(sysfs);
	be->dev_root = strdup(dev);
	if (!be->sysfs_root || !be->dev_root) {
		t1_destroy(&be->base);
		return oom(e, "the vfio-type1 backend");
	}
	memcpy(be->container_path, path, sizeof(path));
	be->unmap_all = ksys_ioctl(fd, VFIO_CHECK_EXTENSION, (void *)(uintptr_t)VFIO_UNMAP_ALL) > 0;
	be->vaddr_update =
		ksys_ioctl(fd, VFIO_CHECK_EXTENSION, (void *)(uintptr_t)VFIO_UPDATE_VADDR) > 0;
	/* vfio_iommu_type1 exists only when VFIO provides the container itself
	 * (CONFIG_VFIO_CONTAINER); with iommufd's compat container it is not
	 * built at all. */
	struct stat st;
	char mod[PATH_MAX];
	be->native = ksys_path(mod, sizeof(mod), "%s/module/vfio_iommu_type1", sysfs) == 0 &&
		     stat(mod, &st) == 0;
	if (!be->vaddr_update && be->unmap_all)
		be->vaddr_update = be->native;
	size_t n = 0;
	if (be->unmap_all)
		be->features[n++] = "unmap-all";
	if (be->vaddr_update)
		be->features[n++] = "vaddr-update";
	if (be->native)
		be->features[n++] = "p2p";
	be->features[n] = NULL;
	be->base.ops = &t1_ops;
	be->base.features = be->features;
	/* MAP_DMA of a BAR's VM_PFNMAP vaddr is mapped like RAM: vfio_iommu_type1.c
	 * passes dma->prot | IOMMU_CACHE to iommu_map and never IOMMU_MMIO
	 * (7.3.4), so the IOMMU treats the BAR as ordinary cacheable memory. */
	be->base.p2p_attr = DMB_MEM_CACHEABLE;

	log_debug("vfio-type1 backend on %s (unmap-all: %s, vaddr-update: %s, p2p: %s)", path,
		  be->unmap_all ? "yes" : "no", be->vaddr_update ? "yes" : "no",
		  be->native ? "yes" : "no (iommufd compat container)");
	*out = &be->base;
	return 0;
}
