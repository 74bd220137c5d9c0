/* The vfio-type1 restart hooks against a fake kernel that models a
 * container's mappings the way vfio_iommu_type1 does (drivers/vfio/
 * vfio_iommu_type1.c, VFIO_UPDATE_VADDR): each mapping has an extent, a vaddr, a "vaddr invalid"
 * flag and whether the process that made it is a previous one. Checks the
 * exact bytes of the VADDR invalidate/update calls, adoption from fds (fake
 * container, group and device files), the clean (handed over) and crash
 * paths, the pre-6.0 owner check, vaddr-stale contexts, and the failures. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "backend/ksys.h"
#include "backend/uapi/vfio_container.h"
#include "fake.h"

#define MAX_DMAS 32
#define MAX_GROUPS 64

struct kdma {
	uint64_t iova, size, vaddr;
	bool invalid;
	bool foreign; /* made by a previous process */
};

static struct {
	struct kdma d[MAX_DMAS];
	int n;
	bool iommu_set;
	bool vaddr_ext;
	bool unmap_all_ext;
	bool pre60;       /* UNMAP_DMA skips another process's mappings (before 6.0) */
	int update_errno; /* MAP_DMA(VADDR) fails this way once the checks pass */
	bool attached[MAX_GROUPS];
	uint32_t word;    /* the first 4 bytes at the last vaddr MAP_DMA took */
} k;

static char devstate[700];

static int group_of(const char *path)
{
	const char *s = strrchr(path, '/');
	if (!s || !strstr(path, "/dev/vfio/") || s[1] < '0' || s[1] > '9')
		return -1;
	int g = atoi(s + 1);
	return g < MAX_GROUPS ? g : -1;
}

static struct kdma *find(uint64_t iova, uint64_t size)
{
	for (int i = 0; i < k.n; i++)
		if (iova < k.d[i].iova + k.d[i].size && k.d[i].iova < iova + size)
			return &k.d[i];
	return NULL;
}

static void kadd(uint64_t iova, uint64_t size, bool invalid)
{
	k.d[k.n++] = (struct kdma){.iova = iova, .size = size, .vaddr = 0xdead0000,
				   .invalid = invalid, .foreign = true};
}

static int map_dma(struct vfio_iommu_type1_dma_map *m)
{
	bool rw = m->flags & (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
	if (m->flags & VFIO_DMA_MAP_FLAG_VADDR) {
		if (rw)
			return -EINVAL;
		struct kdma *d = find(m->iova, m->size);
		if (!d)
			return -ENOENT;
		if (!d->invalid || d->iova != m->iova || d->size != m->size)
			return -EINVAL;
		if (k.update_errno)
			return -k.update_errno;
		d->vaddr = m->vaddr;
		d->invalid = false;
		if (!k.pre60)
			d->foreign = false; /* only 6.2+ moves the owner, but 6.0+ ignores it */
	} else {
		if (!rw || m->size == 0)
			return -EINVAL;
		if (find(m->iova, m->size))
			return -EEXIST;
		k.d[k.n++] = (struct kdma){.iova = m->iova, .size = m->size, .vaddr = m->vaddr};
	}
	memcpy(&k.word, (const void *)(uintptr_t)m->vaddr, sizeof(k.word));
	return 0;
}

static int unmap_dma(struct vfio_iommu_type1_dma_unmap *u)
{
	bool all = u->flags & VFIO_DMA_UNMAP_FLAG_ALL;
	bool vaddr = u->flags & VFIO_DMA_UNMAP_FLAG_VADDR;
	uint64_t lo = u->iova, last = u->iova + u->size - 1; /* [lo, last] */
	if (all) {
		if (u->iova || u->size)
			return -EINVAL;
		lo = 0;
		last = UINT64_MAX;
	} else {
		if (u->size == 0)
			return -EINVAL;
		struct kdma *d = find(lo, 1);
		if (d && d->iova != lo)
			return -EINVAL; /* would split a mapping */
		d = find(last, 1);
		if (d && d->iova + d->size - 1 != last)
			return -EINVAL;
	}
	uint64_t bytes = 0;
	bool touched[MAX_DMAS] = {false};
	for (int i = 0; i < k.n; i++) {
		struct kdma *d = &k.d[i];
		if (d->iova < lo || d->iova > last)
			continue;
		if (k.pre60 && d->foreign)
			continue; /* dma->task->mm != current->mm */
		if (vaddr) {
			if (d->invalid) {
				for (int j = 0; j < k.n; j++)
					if (touched[j])
						k.d[j].invalid = false;
				u->size = 0;
				return -EINVAL;
			}
			d->invalid = true;
			touched[i] = true;
		}
		bytes += d->size;
	}
	if (!vaddr) {
		int w = 0;
		for (int i = 0; i < k.n; i++) {
			struct kdma *d = &k.d[i];
			bool gone = d->iova >= lo && d->iova <= last && !(k.pre60 && d->foreign);
			if (!gone)
				k.d[w++] = *d;
		}
		k.n = w;
	}
	u->size = bytes;
	return 0;
}

static int kernel(int fd, unsigned long req, void *arg, const char *path)
{
	(void)fd;
	bool container = fake_path_endswith(path, "/dev/vfio/vfio");
	int g = group_of(path);
	switch (req) {
	case VFIO_GET_API_VERSION:
		return container ? VFIO_API_VERSION : -ENOTTY;
	case VFIO_CHECK_EXTENSION:
		switch ((uintptr_t)arg) {
		case VFIO_TYPE1v2_IOMMU:
			return 1;
		case VFIO_UNMAP_ALL:
			return k.unmap_all_ext;
		case VFIO_UPDATE_VADDR:
			return k.vaddr_ext && k.iommu_set;
		default:
			return 0;
		}
	case VFIO_SET_IOMMU:
		k.iommu_set = true;
		return 0;
	case VFIO_GROUP_GET_STATUS: {
		if (g < 0)
			return -ENOTTY;
		struct vfio_group_status *s = arg;
		s->flags = VFIO_GROUP_FLAGS_VIABLE | (k.attached[g] ? VFIO_GROUP_FLAGS_CONTAINER_SET : 0);
		return 0;
	}
	case VFIO_GROUP_SET_CONTAINER:
		k.attached[g] = true;
		return 0;
	case VFIO_GROUP_UNSET_CONTAINER:
		k.attached[g] = false;
		return 0;
	case VFIO_GROUP_GET_DEVICE_FD: {
		char p[800];
		snprintf(p, sizeof(p), "%s/%s", devstate, (const char *)arg);
		int dfd = open(p, O_RDWR | O_CLOEXEC);
		return dfd < 0 ? -errno : dfd;
	}
	case VFIO_DEVICE_GET_REGION_INFO:
		return strstr(path, "/devstate/") ? fake_vfio_region_info(arg) : -ENOTTY;
	case VFIO_IOMMU_GET_INFO: {
		if (!container)
			return -ENOTTY;
		if (!k.iommu_set)
			return -EINVAL;
		struct vfio_iommu_type1_info *i = arg;
		i->flags = VFIO_IOMMU_INFO_PGSIZES;
		i->iova_pgsizes = 0x1000;
		i->argsz = 24;
		return 0;
	}
	case VFIO_IOMMU_MAP_DMA:
		return container ? map_dma(arg) : -ENOTTY;
	case VFIO_IOMMU_UNMAP_DMA:
		return container ? unmap_dma(arg) : -ENOTTY;
	}
	return -ENOTTY;
}

struct fx {
	char *root;
	char sys[600], dev[600];
	struct dmb_backend_config cfg;
	struct dmb_backend *be;
	const struct dmb_backend_ops *ops;
	int memfd; /* a 2 MiB region, the "guest memory" */
};

#define REGION_SIZE 0x200000u

static void tree(const char *root)
{
	fake_write(root, "dev/vfio/vfio", "");
	fake_mkdirs(root, "devstate");
	fake_write(root, "sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "65535\n");
	/* 0000:0N:00.0 in IOMMU group 20+N, N = 1..9 */
	for (int i = 1; i <= 9; i++) {
		char bdf[32], rel[64], p[800];
		snprintf(bdf, sizeof(bdf), "0000:0%d:00.0", i);
		fake_pci(root, bdf, 0x1234, 0x11e8, "vfio-pci", 20 + i, NULL);
		snprintf(rel, sizeof(rel), "dev/vfio/%d", 20 + i);
		fake_write(root, rel, "");
		snprintf(p, sizeof(p), "%s/devstate/%s", root, bdf);
		fake_vfio_device_file(p);
	}
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->root = fake_tree_new();
	tree(f->root);
	snprintf(devstate, sizeof(devstate), "%s/devstate", f->root);
	snprintf(f->sys, sizeof(f->sys), "%s/sys", f->root);
	snprintf(f->dev, sizeof(f->dev), "%s/dev", f->root);
	memset(&k, 0, sizeof(k));
	k.unmap_all_ext = true;
	k.vaddr_ext = true;
	fake_install(kernel);
	f->cfg = (struct dmb_backend_config){.name = "vfio-type1", .sysfs_root = f->sys,
					     .dev_root = f->dev};
	struct dmb_err e = {0};
	assert_int_equal(dmb_type1_create(&f->cfg, &f->be, &e), 0);
	f->ops = f->be->ops;
	f->memfd = fake_memfd(REGION_SIZE);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	assert_true(fake_all_cloexec());
	dmb_backend_destroy(f->be);
	fake_uninstall();
	fake_tree_free(f->root);
	close(f->memfd);
	free(f);
	return 0;
}

static int open_rel(const struct fx *f, const char *rel)
{
	char p[800];
	snprintf(p, sizeof(p), "%s/%s", f->root, rel);
	int fd = open(p, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

static void add_fd(struct dmb_fdset *s, int fd, const char *name)
{
	s->e[s->n].fd = fd;
	snprintf(s->e[s->n].name, sizeof(s->e[s->n].name), "%s", name);
	s->n++;
}

static bool fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/* What the fd store would hold after the previous process made a context
 * with the device 0000:01:00.0 (group 21) and the given kernel mappings. */
static void previous_process(struct fx *f, struct dmb_fdset *ctx, struct dmb_fdset *dev)
{
	memset(ctx, 0, sizeof(*ctx));
	memset(dev, 0, sizeof(*dev));
	add_fd(ctx, open_rel(f, "dev/vfio/vfio"), "container");
	add_fd(ctx, open_rel(f, "dev/vfio/21"), "group.21");
	add_fd(dev, open_rel(f, "devstate/0000:01:00.0"), "device");
	k.attached[21] = true;
	k.iommu_set = true;
}

static const struct vfio_iommu_type1_dma_map *map_call(int nth)
{
	const struct fake_call *c = fake_find(VFIO_IOMMU_MAP_DMA, nth);
	assert_non_null(c);
	assert_int_equal(c->len, 32);
	return (const void *)c->bytes;
}

static const struct vfio_iommu_type1_dma_unmap *unmap_call(int nth)
{
	const struct fake_call *c = fake_find(VFIO_IOMMU_UNMAP_DMA, nth);
	assert_non_null(c);
	assert_int_equal(c->len, 24);
	return (const void *)c->bytes;
}

/* The region pattern (fake_memfd): byte i = i * 7 + 1. */
static uint32_t pattern_word(uint64_t off)
{
	uint8_t b[4];
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)((off + (uint64_t)i) * 7 + 1);
	uint32_t w;
	memcpy(&w, b, sizeof(w));
	return w;
}

/* A whole life: map in one backend, export, hand over, close; adopt in a
 * second backend from the exported fds (as the fd store would give them
 * back) and keep using the mappings. */
static void test_handover_and_adopt(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_bctx *ctx;
	struct dmb_bdev *a, *b;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};

	assert_int_equal(ops->ctx_open(f->be, &ctx, &e), 0);
	assert_int_equal(ops->dev_open(ctx, "0000:01:00.0", &a, NULL, &e), 0);
	assert_int_equal(ops->dev_open(ctx, "0000:02:00.0", &b, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	assert_int_equal(ops->map(ctx, r, 0x3000, 0x100000, 0x10000, DMB_PROT_READ | DMB_PROT_WRITE,
				  &e), 0);
	assert_int_equal(ops->map_bar(ctx, b, 0, 0x1000, 0x4000000, 0x1000, DMB_PROT_READ, &e), 0);

	/* the fds: the container and both groups; each device's fd */
	struct dmb_fdset cs, ds_a, ds_b;
	assert_int_equal(ops->ctx_fds(ctx, &cs), 0);
	assert_int_equal(cs.n, 3);
	assert_string_equal(cs.e[0].name, "container");
	char p[512];
	fake_fd_path(cs.e[0].fd, p, sizeof(p));
	assert_true(fake_path_endswith(p, "/dev/vfio/vfio"));
	assert_int_not_equal(ksys_fdset_find(&cs, "group.21"), -1);
	assert_int_not_equal(ksys_fdset_find(&cs, "group.22"), -1);
	assert_int_equal(ops->dev_fds(a, &ds_a), 0);
	assert_int_equal(ds_a.n, 1);
	assert_string_equal(ds_a.e[0].name, "device");
	assert_int_equal(ds_a.e[0].fd, ops->dev_fd(a));
	assert_int_equal(ops->dev_fds(b, &ds_b), 0);
	/* the fd store's duplicates */
	for (size_t i = 0; i < cs.n; i++)
		cs.e[i].fd = fcntl(cs.e[i].fd, F_DUPFD_CLOEXEC, 3);
	ds_a.e[0].fd = fcntl(ds_a.e[0].fd, F_DUPFD_CLOEXEC, 3);
	ds_b.e[0].fd = fcntl(ds_b.e[0].fd, F_DUPFD_CLOEXEC, 3);

	/* clean stop: every vaddr invalid with one call, DMA untouched */
	fake_reset();
	assert_int_equal(ops->ctx_prepare_handover(ctx, &e), 0);
	assert_int_equal(fake_ncalls, 1);
	const struct vfio_iommu_type1_dma_unmap *u = unmap_call(0);
	assert_int_equal(u->argsz, 24);
	assert_int_equal(u->flags, VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL);
	assert_int_equal(u->iova, 0);
	assert_int_equal(u->size, 0);
	assert_int_equal(k.n, 2);
	assert_true(k.d[0].invalid && k.d[1].invalid);

	/* closing a handed-over context tears nothing down */
	fake_reset();
	ops->region_close(r);
	ops->ctx_close(ctx);
	assert_int_equal(fake_count(VFIO_IOMMU_UNMAP_DMA), 0);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);
	assert_int_equal(k.n, 2);
	assert_true(k.attached[21] && k.attached[22]);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	dmb_backend_destroy(f->be);
	for (int i = 0; i < k.n; i++)
		k.d[i].foreign = true;

	/* ---- the next process ---- */
	assert_int_equal(dmb_type1_create(&f->cfg, &f->be, &e), 0);
	ops = f->ops = f->be->ops;
	fake_reset();
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	/* no SET_CONTAINER, no SET_IOMMU: the container has its IOMMU */
	assert_int_equal(fake_count(VFIO_GROUP_SET_CONTAINER), 0);
	assert_int_equal(fake_count(VFIO_SET_IOMMU), 0);
	assert_int_equal(fake_count(VFIO_GET_API_VERSION), 1);
	assert_int_equal(fake_count(VFIO_GROUP_GET_STATUS), 2);
	assert_int_equal(fake_count(VFIO_IOMMU_GET_INFO), 1);
	assert_int_equal(fake_find(VFIO_IOMMU_GET_INFO, 0)->fd, cs.e[0].fd);
	struct dmb_dev_info di;
	assert_int_equal(ops->dev_adopt(ctx, "01:00.0", &ds_a, &a, &di, &e), 0);
	assert_string_equal(di.group, "21");
	assert_int_equal(di.vendor, 0x1234);
	assert_int_equal(ops->dev_fd(a), ds_a.e[0].fd);
	assert_int_equal(ops->dev_adopt(ctx, "0000:02:00.0", &ds_b, &b, NULL, &e), 0);
	assert_int_equal(fake_count(VFIO_GROUP_GET_DEVICE_FD), 0);
	struct dmb_iova_info info;
	assert_int_equal(ops->iova_info(ctx, &info, &e), 0);

	/* RAM: VFIO_DMA_MAP_FLAG_VADDR with the new mmap; then, once per
	 * context, the check that this kernel lets us take it over */
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0x3000, 0x100000, 0x10000,
					DMB_PROT_READ | DMB_PROT_WRITE, &e), 0);
	assert_int_equal(fake_ncalls, 3);
	const struct vfio_iommu_type1_dma_map *m = map_call(0);
	assert_int_equal(m->argsz, 32);
	assert_int_equal(m->flags, VFIO_DMA_MAP_FLAG_VADDR);
	assert_int_equal(m->iova, 0x100000);
	assert_int_equal(m->size, 0x10000);
	assert_int_equal(m->vaddr % 4096, 0);
	assert_int_equal(k.word, pattern_word(0x3000)); /* our mmap + offset */
	u = unmap_call(0);
	assert_int_equal(u->flags, VFIO_DMA_UNMAP_FLAG_VADDR);
	assert_int_equal(u->iova, 0x100000);
	assert_int_equal(u->size, 0x10000);
	assert_memory_equal(map_call(1), m, sizeof(*m));
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);

	/* P2P: the update takes a new mmap of the peer's BAR; no pins */
	fake_reset();
	assert_int_equal(ops->map_bar_adopt(ctx, b, 0, 0x1000, 0x4000000, 0x1000, DMB_PROT_READ,
					    &e), 0);
	assert_int_equal(fake_count(VFIO_IOMMU_MAP_DMA), 1);
	assert_int_equal(fake_count(VFIO_IOMMU_UNMAP_DMA), 0);
	m = map_call(0);
	assert_int_equal(m->flags, VFIO_DMA_MAP_FLAG_VADDR);
	assert_int_equal(m->iova, 0x4000000);
	assert_int_equal(k.word, FAKE_BAR0_MARK); /* BAR0 + 0x1000 of the peer */
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);
	for (int i = 0; i < k.n; i++)
		assert_false(k.d[i].invalid);

	uint64_t stray = 7;
	fake_reset();
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);

	/* and the context lives on: unmap, a new group joins */
	uint64_t n = 0;
	assert_int_equal(ops->unmap(ctx, 0x4000000, 0x1000, &n, &e), 0);
	assert_int_equal(n, 0x1000);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);
	assert_int_equal(ops->unmap(ctx, 0x100000, 0x10000, &n, &e), 0);
	assert_int_equal(n, 0x10000);
	assert_int_equal(unmap_call(1)->flags, 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	assert_int_equal(k.n, 0);
	struct dmb_bdev *c3;
	assert_int_equal(ops->dev_open(ctx, "0000:03:00.0", &c3, NULL, &e), 0);
	assert_true(k.attached[23]);
	ops->region_close(r);
	ops->ctx_close(ctx);
	for (size_t i = 0; i < cs.n; i++)
		assert_false(fd_open(cs.e[i].fd)); /* the backend owned them */
}

/* The previous process was killed: nothing was invalidated. The update
 * fails with EINVAL; invalidating exactly that range and updating again
 * takes the mapping over. */
static void test_crash_takeover(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};

	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x10000, false);
	kadd(0x200000, 0x4000, false);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);

	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_int_equal(fake_ncalls, 3);
	assert_int_equal(fake_calls[0].req, VFIO_IOMMU_MAP_DMA);
	assert_int_equal(fake_calls[1].req, VFIO_IOMMU_UNMAP_DMA);
	assert_int_equal(fake_calls[2].req, VFIO_IOMMU_MAP_DMA);
	const struct vfio_iommu_type1_dma_map *m = map_call(0);
	assert_int_equal(m->flags, VFIO_DMA_MAP_FLAG_VADDR);
	assert_int_equal(m->iova, 0x100000);
	assert_int_equal(m->size, 0x10000);
	const struct vfio_iommu_type1_dma_unmap *u = unmap_call(0);
	assert_int_equal(u->argsz, 24);
	assert_int_equal(u->flags, VFIO_DMA_UNMAP_FLAG_VADDR);
	assert_int_equal(u->iova, 0x100000);
	assert_int_equal(u->size, 0x10000);
	assert_memory_equal(map_call(1), m, sizeof(*m));
	assert_false(k.d[0].invalid);
	assert_false(k.d[0].foreign);
	assert_int_equal(k.word, pattern_word(0));

	/* the second mapping: the same three calls, no extra check */
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0x10000, 0x200000, 0x4000, DMB_PROT_WRITE, &e), 0);
	assert_int_equal(fake_ncalls, 3);
	assert_int_equal(k.word, pattern_word(0x10000));
	assert_int_equal(ops->pinned_bytes(f->be), 0x14000);
	uint64_t stray = 1;
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(stray, 0);

	/* nothing is stale: another group may join */
	struct dmb_bdev *two;
	assert_int_equal(ops->dev_open(ctx, "0000:02:00.0", &two, NULL, &e), 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
	assert_int_equal(k.n, 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
}

/* The journal names a mapping the kernel does not hold (the previous
 * process died before the kernel call): -ENOENT, nothing touched. */
static void test_adopt_not_mapped(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};

	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x10000, true);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x300000, 0x1000, DMB_PROT_READ, &e), -ENOENT);
	assert_int_equal(e.code, DMB_E_NOT_FOUND);
	assert_string_equal(e.msg, "no mapping at IOVA 0x300000");
	assert_int_equal(fake_ncalls, 1);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	/* the daemon maps it again */
	assert_int_equal(ops->map(ctx, r, 0, 0x300000, 0x1000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x1000);
	ops->region_close(r);
	ops->ctx_close(ctx);
}

/* The kernel's mapping has another extent than the journal's. */
static void test_adopt_extent_mismatch(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};

	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x20000, false); /* longer, not invalidated */
	kadd(0x200000, 0x8000, true);   /* shorter, invalidated */
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);

	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), -EINVAL);
	assert_string_equal(e.msg, "the kernel's mapping at IOVA 0x100000 is not the journal's "
				   "[0x100000, +0x10000) (it has another extent)");
	assert_int_equal(fake_ncalls, 2); /* update EINVAL, invalidate EINVAL (a split) */
	assert_false(k.d[0].invalid);     /* untouched */

	dmb_err_clear(&e);
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x200000, 0x10000, DMB_PROT_READ, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "another extent"));
	assert_true(k.d[1].invalid); /* the kernel rolled our invalidate back: still the old one */
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
}

/* Before Linux 6.0 only the creating process could change or remove a
 * mapping: its UNMAP_DMA covers 0 bytes. Both paths notice. */
static void test_adopt_pre60_owner_check(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};

	k.pre60 = true;
	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x10000, false); /* crash: not invalidated */
	kadd(0x200000, 0x10000, true);  /* handed over */
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);

	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), -EPERM);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "Linux 6.0"));
	assert_false(k.d[0].invalid);

	dmb_err_clear(&e);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x200000, 0x10000, DMB_PROT_READ, &e), -EPERM);
	assert_non_null(strstr(e.msg, "could never unmap IOVA 0x200000"));
	assert_int_equal(fake_ncalls, 2); /* update (ok), the check (0 bytes) */
	assert_int_equal(unmap_call(0)->flags, VFIO_DMA_UNMAP_FLAG_VADDR);
	assert_false(k.d[1].invalid); /* updated, valid: DMA fine */
	ops->region_close(r);
	k.pre60 = false;
	ops->ctx_close(ctx);
}

/* The update fails after the mapping was invalidated (Linux 6.2+ charges
 * the locked memory to the new process): the mapping is adopted but
 * vaddr-stale. DMA and unmap work; a new group is refused until the stale
 * mapping is gone. */
static void test_adopt_stale(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev, *two;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};

	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x10000, true);
	kadd(0x200000, 0x10000, false);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	k.update_errno = ENOMEM;
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x200000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_true(k.d[0].invalid && k.d[1].invalid); /* the crash one: invalidated by us */
	assert_int_equal(ops->pinned_bytes(f->be), 0x20000);
	k.update_errno = 0;
	uint64_t stray;
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);

	fake_reset();
	assert_int_equal(ops->dev_open(ctx, "0000:02:00.0", &two, NULL, &e), -EBUSY);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "re-create the context"));
	assert_int_equal(fake_count(VFIO_GROUP_SET_CONTAINER), 0);
	assert_false(k.attached[22]);

	/* an invalidated mapping that was never updated still unmaps */
	uint64_t n = 0;
	fake_reset();
	assert_int_equal(ops->unmap(ctx, 0x100000, 0x10000, &n, &e), 0);
	assert_int_equal(n, 0x10000);
	assert_int_equal(unmap_call(0)->flags, 0);
	assert_int_equal(ops->dev_open(ctx, "0000:02:00.0", &two, NULL, &e), -EBUSY);
	assert_int_equal(ops->unmap(ctx, 0x200000, 0x10000, &n, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(ctx, "0000:02:00.0", &two, NULL, &e), 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
}

/* A handed-over container whose mappings were never adopted still
 * unmaps: the daemon releases a context nobody needs. */
static void test_unadopted_unmap(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;

	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x10000, true);
	kadd(0x200000, 0x10000, true);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	fake_reset();
	ops->ctx_close(ctx);
	assert_int_equal(unmap_call(0)->flags, VFIO_DMA_UNMAP_FLAG_ALL);
	assert_int_equal(k.n, 0);
	assert_false(k.attached[21]);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
}

/* Groups without devices wait for adopt_finish; one that left the
 * container is closed; a container whose owner stopped between
 * SET_CONTAINER and SET_IOMMU gets its IOMMU now. */
static void test_adopt_groups(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs = {0};
	struct dmb_bctx *ctx;
	uint64_t stray;

	add_fd(&cs, open_rel(f, "dev/vfio/vfio"), "container");
	add_fd(&cs, open_rel(f, "dev/vfio/21"), "group.21");
	add_fd(&cs, open_rel(f, "dev/vfio/22"), "group.22");
	add_fd(&cs, open_rel(f, "dev/vfio/23"), "state.x"); /* not ours */
	k.attached[21] = true;
	k.attached[22] = false; /* left before the restart */
	k.iommu_set = false;
	fake_reset();
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(fake_count(VFIO_SET_IOMMU), 1);
	assert_int_equal(fake_find(VFIO_SET_IOMMU, 0)->argval, VFIO_TYPE1v2_IOMMU);
	assert_int_equal(fake_count(VFIO_GROUP_SET_CONTAINER), 0);
	assert_true(fd_open(cs.e[0].fd));
	assert_true(fd_open(cs.e[1].fd));
	assert_false(fd_open(cs.e[2].fd));
	assert_false(fd_open(cs.e[3].fd));
	struct dmb_fdset out;
	assert_int_equal(ops->ctx_fds(ctx, &out), 0);
	assert_int_equal(out.n, 2);

	/* no device, no mapping: the idle group leaves at adopt_finish */
	fake_reset();
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 1);
	assert_false(k.attached[21]);
	ops->ctx_close(ctx);

	/* with a mapping it stays (the last group holds the IOMMU) */
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};
	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/vfio/vfio"), "container");
	add_fd(&cs, open_rel(f, "dev/vfio/21"), "group.21");
	k.attached[21] = true;
	kadd(0x100000, 0x1000, true);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x1000, DMB_PROT_READ, &e), 0);
	fake_reset();
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);
	uint64_t n;
	assert_int_equal(ops->unmap(ctx, 0x100000, 0x1000, &n, &e), 0);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 1);
	ops->region_close(r);
	ops->ctx_close(ctx);

	/* an empty container (no group): no IOMMU, nothing can be mapped */
	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/vfio/vfio"), "container");
	k.iommu_set = false;
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x1000, DMB_PROT_READ, &e), -ENOENT);
	assert_int_equal(fake_ncalls, 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
}

static void expect_adopt_fails(struct fx *f, struct dmb_fdset *cs, int err, const char *msg)
{
	struct dmb_err e = {0};
	struct dmb_bctx *ctx = NULL;
	assert_int_equal(f->ops->ctx_adopt(f->be, cs, &ctx, &e), err);
	assert_null(ctx);
	assert_non_null(strstr(e.msg, msg));
	for (size_t i = 0; i < cs->n && i < DMB_MAX_OBJ_FDS; i++) {
		assert_true(fd_open(cs->e[i].fd)); /* the caller's to close */
		close(cs->e[i].fd);
	}
}

static void test_adopt_errors(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_fdset cs = {0}, ds = {0};
	struct dmb_err e = {0};

	add_fd(&cs, open_rel(f, "dev/vfio/21"), "group.21");
	expect_adopt_fails(f, &cs, -EINVAL, "without its \"container\" fd");

	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/vfio/21"), "container");
	expect_adopt_fails(f, &cs, -ENOTTY,
			   "the \"container\" fd is not a VFIO container (VFIO_GET_API_VERSION: ENOTTY)");

	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/vfio/vfio"), "container");
	add_fd(&cs, open_rel(f, "devstate/0000:01:00.0"), "group.21");
	expect_adopt_fails(f, &cs, -ENOTTY, "the \"group.21\" fd is not a VFIO group");

	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/vfio/vfio"), "container");
	add_fd(&cs, open_rel(f, "dev/vfio/vfio"), "container");
	expect_adopt_fails(f, &cs, -EINVAL, "malformed");
	cs.n = DMB_MAX_OBJ_FDS + 1;
	struct dmb_bctx *ctx;
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), -EINVAL);

	/* devices: the group must have come with the context; the fd must be a
	 * VFIO device */
	struct dmb_fdset cs2;
	previous_process(f, &cs2, &ds);
	assert_int_equal(ops->ctx_adopt(f->be, &cs2, &ctx, &e), 0);
	struct dmb_bdev *dev;
	struct dmb_fdset other = {0};
	add_fd(&other, open_rel(f, "devstate/0000:02:00.0"), "device");
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_adopt(ctx, "0000:02:00.0", &other, &dev, NULL, &e), -ENOENT);
	assert_string_equal(e.msg, "IOMMU group 22 of 0000:02:00.0 was not handed over with its "
				   "context (no \"group.22\" fd in the container)");
	close(other.e[0].fd);
	memset(&other, 0, sizeof(other));
	add_fd(&other, open_rel(f, "dev/vfio/21"), "device");
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &other, &dev, NULL, &e), -ENOTTY);
	assert_string_equal(e.msg, "the \"device\" fd of 0000:01:00.0 is not a VFIO device (ENOTTY)");
	close(other.e[0].fd);
	memset(&other, 0, sizeof(other));
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_adopt(ctx, "01:00.0", &other, &dev, NULL, &e), -EINVAL);
	assert_string_equal(e.msg, "device 0000:01:00.0 cannot be adopted without its \"device\" fd");
	assert_int_equal(ops->dev_adopt(ctx, "bogus", &ds, &dev, NULL, &e), -EINVAL);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	ops->ctx_close(ctx);
}

/* A kernel without VFIO_UPDATE_VADDR (before 5.12): no handover, and no
 * adoption of a mapping this process could never remove. */
static void test_no_vaddr_update(void **state)
{
	struct fx *f = *state;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};

	dmb_backend_destroy(f->be);
	k.vaddr_ext = false;
	k.unmap_all_ext = false;
	assert_int_equal(dmb_type1_create(&f->cfg, &f->be, &e), 0);
	const struct dmb_backend_ops *ops = f->ops = f->be->ops;

	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x10000, false);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e),
			 -EOPNOTSUPP);
	assert_int_equal(e.code, DMB_E_UNIMPLEMENTED);
	assert_non_null(strstr(e.msg, "VFIO_UPDATE_VADDR (Linux 5.12+)"));
	assert_int_equal(fake_ncalls, 0);

	dmb_err_clear(&e);
	assert_int_equal(ops->ctx_prepare_handover(ctx, &e), -EOPNOTSUPP);
	assert_non_null(strstr(e.msg, "as after a crash"));
	fake_reset();
	ops->region_close(r);
	ops->ctx_close(ctx); /* still the successor's: nothing torn down */
	assert_int_equal(fake_ncalls, 0);
	assert_int_equal(k.n, 1);
}

/* Without UNMAP_ALL the handover invalidates two halves. */
static void test_handover_halves(void **state)
{
	struct fx *f = *state;
	struct dmb_err e = {0};
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;

	dmb_backend_destroy(f->be);
	k.unmap_all_ext = false;
	assert_int_equal(dmb_type1_create(&f->cfg, &f->be, &e), 0);
	const struct dmb_backend_ops *ops = f->ops = f->be->ops;
	assert_int_equal(ops->ctx_open(f->be, &ctx, &e), 0);
	assert_int_equal(ops->dev_open(ctx, "0000:01:00.0", &dev, NULL, &e), 0);
	kadd(0x100000, 0x1000, false);
	kadd(UINT64_C(1) << 63, 0x1000, false);
	fake_reset();
	assert_int_equal(ops->ctx_prepare_handover(ctx, &e), 0);
	assert_int_equal(fake_ncalls, 2);
	const struct vfio_iommu_type1_dma_unmap *u = unmap_call(0);
	assert_int_equal(u->flags, VFIO_DMA_UNMAP_FLAG_VADDR);
	assert_int_equal(u->iova, 0);
	assert_int_equal(u->size, UINT64_C(1) << 63);
	u = unmap_call(1);
	assert_int_equal(u->flags, VFIO_DMA_UNMAP_FLAG_VADDR);
	assert_int_equal(u->iova, UINT64_C(1) << 63);
	assert_int_equal(u->size, UINT64_C(1) << 63);
	assert_true(k.d[0].invalid && k.d[1].invalid);

	/* invalidating twice: the kernel refuses (EINVAL) and rolls back */
	dmb_err_clear(&e);
	assert_int_equal(ops->ctx_prepare_handover(ctx, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "already invalid"));
	ops->ctx_close(ctx);
}

/* iommufd's compat container has no VADDR: adopted mappings keep the old
 * process's addresses (vaddr-stale), with no ioctl. */
static void test_compat_container(void **state)
{
	struct fx *f = *state;
	struct dmb_err e = {0};
	struct dmb_fdset cs, ds;
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev, *two;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = REGION_SIZE, .page_size = 4096,
				    .writable = true};
	char cmd[800];

	dmb_backend_destroy(f->be);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s/module/vfio_iommu_type1'", f->sys);
	assert_int_equal(system(cmd), 0);
	k.vaddr_ext = false;
	assert_int_equal(dmb_type1_create(&f->cfg, &f->be, &e), 0);
	const struct dmb_backend_ops *ops = f->ops = f->be->ops;

	previous_process(f, &cs, &ds);
	kadd(0x100000, 0x10000, false);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:01:00.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_int_equal(fake_ncalls, 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);
	assert_int_equal(ops->dev_open(ctx, "0000:02:00.0", &two, NULL, &e), -EBUSY);
	assert_non_null(strstr(e.msg, "1 mapping(s) of this context still carry its addresses"));
	/* and the handover is a no-op */
	fake_reset();
	assert_int_equal(ops->ctx_prepare_handover(ctx, &e), 0);
	assert_int_equal(fake_ncalls, 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
	assert_int_equal(k.n, 1);
}

/* ctx_fds: the container and at most DMB_MAX_OBJ_FDS - 1 groups. */
static void test_ctx_fds_limit(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;
	struct dmb_fdset out;

	assert_int_equal(ops->ctx_open(f->be, &ctx, &e), 0);
	assert_int_equal(ops->ctx_fds(ctx, &out), 0);
	assert_int_equal(out.n, 1);
	for (int i = 1; i <= DMB_MAX_OBJ_FDS - 1; i++) {
		char bdf[32];
		snprintf(bdf, sizeof(bdf), "0000:0%d:00.0", i);
		assert_int_equal(ops->dev_open(ctx, bdf, &dev, NULL, &e), 0);
	}
	assert_int_equal(ops->ctx_fds(ctx, &out), 0);
	assert_int_equal(out.n, DMB_MAX_OBJ_FDS);
	assert_int_equal(ops->dev_open(ctx, "0000:08:00.0", &dev, NULL, &e), 0);
	assert_int_equal(ops->ctx_fds(ctx, &out), -E2BIG);
	ops->ctx_close(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_handover_and_adopt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_takeover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_not_mapped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_extent_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_pre60_owner_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_stale, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unadopted_unmap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_groups, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_vaddr_update, setup, teardown),
		cmocka_unit_test_setup_teardown(test_handover_halves, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compat_container, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ctx_fds_limit, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
