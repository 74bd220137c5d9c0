/* The vfio-type1 backend against a fake kernel: a temp /sys and /dev and a
 * fake ioctl that plays the VFIO container/group driver. Checks the exact
 * arguments of every command, the "unset container" rules, group sharing
 * and the lingering last group, the device-state hooks (BAR info, config
 * space, reset), P2P map_bar of a peer's BAR mmap, and the sentences of the
 * failures. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "core/core.h"
#include "backend/uapi/vfio_container.h"
#include "fake.h"

static struct {
	bool unmap_all_ext;
	bool vaddr_ext;
	bool set_iommu_eperm;
	int map_errno;
	uint64_t unmap_size;
	uint32_t avail;
	int reset_errno;
	uint32_t map_word; /* the first 4 bytes at MAP_DMA's vaddr */
	struct fake_areas *areas; /* the kernel's vfio_dma entries, when modelled */
	int unmap_fail_at, unmaps;
} k;

/* <root>/devstate/<bdf>: the fake device files GET_DEVICE_FD opens */
static char devstate[700];

#define INFO_TOTAL (24 + 16 + 16 + 2 * 16)

static int kernel(int fd, unsigned long req, void *arg, const char *path)
{
	(void)fd;
	switch (req) {
	case VFIO_GET_API_VERSION:
		return VFIO_API_VERSION;
	case VFIO_CHECK_EXTENSION:
		switch ((uintptr_t)arg) {
		case VFIO_TYPE1v2_IOMMU:
			return 1;
		case VFIO_UNMAP_ALL:
			return k.unmap_all_ext;
		case VFIO_UPDATE_VADDR:
			return k.vaddr_ext;
		default:
			return 0;
		}
	case VFIO_SET_IOMMU:
		return k.set_iommu_eperm ? -EPERM : 0;
	case VFIO_GROUP_GET_STATUS: {
		struct vfio_group_status *s = arg;
		s->flags = fake_path_endswith(path, "/vfio/6") ? 0 : VFIO_GROUP_FLAGS_VIABLE;
		return 0;
	}
	case VFIO_GROUP_SET_CONTAINER:
	case VFIO_GROUP_UNSET_CONTAINER:
		return 0;
	case VFIO_GROUP_GET_DEVICE_FD: {
		char p[800];
		snprintf(p, sizeof(p), "%s/%s", devstate, (const char *)arg);
		int dfd = open(p, O_RDWR | O_CLOEXEC);
		return dfd < 0 ? -errno : dfd;
	}
	case VFIO_DEVICE_GET_REGION_INFO:
		return fake_vfio_region_info(arg);
	case VFIO_DEVICE_RESET:
		return -k.reset_errno;
	case VFIO_IOMMU_GET_INFO: {
		struct vfio_iommu_type1_info *i = arg;
		uint32_t given = i->argsz;
		i->flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;
		i->iova_pgsizes = 0x1000 | 0x200000 | 0x40000000;
		i->argsz = INFO_TOTAL;
		i->cap_offset = 0;
		if (given < INFO_TOTAL)
			return 0;
		uint8_t *b = arg;
		i->cap_offset = 24;
		struct vfio_iommu_type1_info_dma_avail *a = (void *)(b + 24);
		a->header.id = VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL;
		a->header.version = 1;
		a->header.next = 40;
		a->avail = k.avail;
		struct vfio_iommu_type1_info_cap_iova_range *r = (void *)(b + 40);
		r->header.id = VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE;
		r->header.version = 1;
		r->header.next = 0;
		r->nr_iovas = 2;
		r->iova_ranges[0].start = 0;
		r->iova_ranges[0].end = 0xFEDFFFFF;
		r->iova_ranges[1].start = 0xFEF00000;
		r->iova_ranges[1].end = 0x7FFFFFFFFF;
		return 0;
	}
	case VFIO_IOMMU_MAP_DMA: {
		const struct vfio_iommu_type1_dma_map *m = arg;
		if (k.map_errno)
			return -k.map_errno;
		memcpy(&k.map_word, (const void *)(uintptr_t)m->vaddr, sizeof(k.map_word));
		if (k.areas)
			return fake_areas_map(k.areas, m->iova, m->size, m->vaddr);
		return 0;
	}
	case VFIO_IOMMU_UNMAP_DMA: {
		struct vfio_iommu_type1_dma_unmap *u = arg;
		if (k.areas) {
			if (++k.unmaps == k.unmap_fail_at)
				return -EBUSY;
			if (u->flags & VFIO_DMA_UNMAP_FLAG_ALL) {
				uint64_t all = 0;
				for (size_t i = 0; i < k.areas->n; i++)
					all += k.areas->a[i].length;
				k.areas->n = 0;
				u->size = all;
				return 0;
			}
			uint64_t got = 0;
			int r = fake_areas_unmap_type1(k.areas, u->iova, u->size, &got);
			if (r == 0)
				u->size = got;
			return r;
		}
		u->size = k.unmap_size;
		return 0;
	}
	}
	return -ENOTTY;
}

struct fx {
	char *root;
	char sys[600], dev[600];
	struct dmb_backend *be;
	struct dmb_bctx *ctx;
};

static void tree(const char *root)
{
	fake_write(root, "dev/vfio/vfio", "");
	fake_write(root, "dev/vfio/5", "");
	fake_write(root, "dev/vfio/6", "");
	fake_write(root, "dev/vfio/8", "");
	fake_pci(root, "0000:00:03.0", 0x1234, 0x11e8, "vfio-pci", 5, NULL);
	fake_pci(root, "0000:00:04.0", 0x1234, 0x11e8, "vfio-pci", 6, NULL);
	fake_pci(root, "0000:00:04.1", 0x8086, 0x1234, "snd_hda_intel", 6, NULL);
	fake_pci(root, "0000:00:05.0", 0x8086, 0x10d3, "e1000e", 7, NULL);
	fake_pci(root, "0000:00:08.0", 0x1234, 0x11e8, "vfio-pci", 8, NULL);
	fake_pci(root, "0000:00:08.1", 0x1234, 0x11e8, "vfio-pci", 8, NULL);
	fake_pci(root, "0000:00:09.0", 0x1234, 0x11e8, "vfio-pci", -1, NULL);
	fake_write(root, "sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "1000\n");
	fake_pci(root, "0000:00:0b.0", 0x1234, 0x11e8, "vfio-pci", 10, NULL);
	fake_write(root, "dev/vfio/noiommu-10", "");
	fake_pci(root, "0000:00:0c.0", 0x1234, 0x11e8, "vfio-pci", 11, NULL);
	const char *devs[] = {"0000:00:03.0", "0000:00:08.0", "0000:00:08.1", NULL};
	fake_mkdirs(root, "devstate");
	for (int i = 0; devs[i]; i++) {
		char p[800];
		snprintf(p, sizeof(p), "%s/devstate/%s", root, devs[i]);
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
	k.avail = 999;
	fake_install(kernel);

	struct dmb_backend_config cfg = {.name = "vfio-type1", .sysfs_root = f->sys, .dev_root = f->dev};
	struct dmb_err e = {0};
	assert_int_equal(dmb_type1_create(&cfg, &f->be, &e), 0);
	assert_int_equal(f->be->ops->ctx_open(f->be, &f->ctx, &e), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	if (f->ctx)
		f->be->ops->ctx_close(f->ctx);
	assert_true(fake_all_cloexec());
	dmb_backend_destroy(f->be);
	fake_uninstall();
	fake_tree_free(f->root);
	free(f);
	return 0;
}

static bool has_feature(const struct dmb_backend *be, const char *name)
{
	for (size_t i = 0; be->features && be->features[i]; i++)
		if (strcmp(be->features[i], name) == 0)
			return true;
	return false;
}

static void test_create(void **state)
{
	struct fx *f = *state;
	assert_string_equal(f->be->ops->name, "vfio-type1");
	assert_true(has_feature(f->be, "unmap-all"));
	/* CHECK_EXTENSION(UPDATE_VADDR) said 0 (no IOMMU yet), but UNMAP_ALL and
	 * a native vfio_iommu_type1 module imply it. */
	assert_true(has_feature(f->be, "vaddr-update"));
	assert_null(f->be->ops->dma);

	const struct fake_call *c = fake_find(VFIO_GET_API_VERSION, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/vfio"));
	c = fake_find(VFIO_CHECK_EXTENSION, 0);
	assert_int_equal(c->argval, VFIO_TYPE1v2_IOMMU);

	/* a native vfio_iommu_type1: P2P by BAR mmap */
	assert_true(has_feature(f->be, "p2p"));
	assert_non_null(f->be->ops->map_bar);

	/* Without UNMAP_ALL: neither feature. */
	struct dmb_backend *be2;
	struct dmb_err e = {0};
	struct dmb_backend_config cfg = {.sysfs_root = f->sys, .dev_root = f->dev};
	k.unmap_all_ext = false;
	assert_int_equal(dmb_type1_create(&cfg, &be2, &e), 0);
	assert_false(has_feature(be2, "unmap-all"));
	assert_false(has_feature(be2, "vaddr-update"));
	assert_true(has_feature(be2, "p2p"));
	dmb_backend_destroy(be2);
}

static void expect_no_iommu(int r, const struct dmb_err *e)
{
	assert_true(r < 0);
	assert_int_equal(e->code, DMB_E_FAILED_PRECONDITION);
	assert_string_equal(e->msg, "attach a device first: the type1 container has no IOMMU until then");
}

static void test_unset_container(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_iova_info info;
	struct dmb_err e = {0};
	struct dmb_region_desc d = {.fd = fake_memfd(0x10000), .size = 0x10000, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;
	uint64_t n = 1;

	fake_reset();
	expect_no_iommu(ops->iova_info(f->ctx, &info, &e), &e);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	dmb_err_clear(&e);
	expect_no_iommu(ops->map(f->ctx, r, 0, 0x100000, 0x1000, DMB_PROT_READ, &e), &e);
	assert_int_equal(ops->unmap_all(f->ctx, &n, NULL), 0);
	assert_int_equal(n, 0);
	assert_int_equal(ops->unmap(f->ctx, 0, 0x1000, &n, NULL), 0);
	assert_int_equal(n, 0);
	assert_int_equal(fake_ncalls, 0); /* nothing reached the kernel */
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	ops->region_close(r);
	close(d.fd);
}

/* No-IOMMU contexts: VFIO's no-IOMMU group mode has no MAP_DMA, so type1
 * refuses them with a sentence and asks nothing of the kernel. */
static void test_noiommu_refused(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	fake_reset();
	assert_non_null(ops->ctx_set_noiommu);
	assert_null(ops->phys);
	assert_int_equal(ops->ctx_set_noiommu(f->ctx, &e), -EOPNOTSUPP);
	assert_int_equal(e.code, DMB_E_UNIMPLEMENTED);
	assert_non_null(strstr(e.msg, "no VFIO_IOMMU_MAP_DMA"));
	assert_non_null(strstr(e.msg, "iommufd"));
	assert_int_equal(fake_ncalls, 0);
}

static void test_open_map_unmap(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_dev_info di;

	fake_reset();
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, &di, &e), 0);
	assert_int_equal(di.vendor, 0x1234);
	assert_int_equal(di.device, 0x11e8);
	assert_string_equal(di.group, "5");
	assert_true(di.viable);
	assert_true(ops->dev_fd(dev) >= 0);

	const struct fake_call *c = fake_find(VFIO_GROUP_GET_STATUS, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/5"));
	assert_int_equal(c->len, 8);
	c = fake_find(VFIO_GROUP_SET_CONTAINER, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/5"));
	int cfd;
	memcpy(&cfd, c->bytes, sizeof(cfd));
	char p[512];
	fake_fd_path(cfd, p, sizeof(p));
	assert_true(fake_path_endswith(p, "/dev/vfio/vfio"));
	c = fake_find(VFIO_SET_IOMMU, 0);
	assert_non_null(c);
	assert_int_equal(c->argval, VFIO_TYPE1v2_IOMMU);
	assert_int_equal(c->fd, cfd);
	c = fake_find(VFIO_GROUP_GET_DEVICE_FD, 0);
	assert_string_equal(c->str, "0000:00:03.0");
	assert_true(fake_path_endswith(c->path, "/dev/vfio/5"));

	/* IOVA info: the two-call GET_INFO protocol */
	struct dmb_iova_info info;
	fake_reset();
	assert_int_equal(ops->iova_info(f->ctx, &info, &e), 0);
	assert_int_equal(fake_count(VFIO_IOMMU_GET_INFO), 2);
	const struct vfio_iommu_type1_info *gi = (const void *)fake_find(VFIO_IOMMU_GET_INFO, 0)->bytes;
	assert_int_equal(gi->argsz, 24);
	gi = (const void *)fake_find(VFIO_IOMMU_GET_INFO, 1)->bytes;
	assert_int_equal(gi->argsz, INFO_TOTAL);
	assert_int_equal(info.n, 2);
	assert_int_equal(info.ranges[1].start, 0xFEF00000);
	assert_int_equal(info.ranges[1].last, 0x7FFFFFFFFF);
	assert_int_equal(info.alignment, 0x1000);
	assert_int_equal(info.max_mappings, 1000); /* dma_entry_limit from sysfs */
	assert_int_equal(info.mappings_available, 999);

	/* map: the daemon's mmap + offset */
	const uint64_t size = 0x200000;
	struct dmb_region_desc d = {.fd = fake_memfd(size), .size = size, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map(f->ctx, r, 0x3000, 0x100000, 0x10000,
				  DMB_PROT_READ | DMB_PROT_WRITE, &e), 0);
	c = fake_find(VFIO_IOMMU_MAP_DMA, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, cfd);
	const struct vfio_iommu_type1_dma_map *m = (const void *)c->bytes;
	assert_int_equal(c->len, 32);
	assert_int_equal(m->argsz, 32);
	assert_int_equal(m->flags, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
	assert_int_equal(m->iova, 0x100000);
	assert_int_equal(m->size, 0x10000);
	const uint8_t *va = (const uint8_t *)(uintptr_t)m->vaddr;
	assert_int_equal(m->vaddr % 4096, 0);
	assert_int_equal(va[0], (uint8_t)(0x3000 * 7 + 1));
	assert_int_equal(va[0xFFFF], (uint8_t)((0x3000 + 0xFFFF) * 7 + 1));
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);

	assert_int_equal(ops->map(f->ctx, r, 0, 0x200000, 0x1000, DMB_PROT_READ, &e), 0);
	m = (const void *)fake_find(VFIO_IOMMU_MAP_DMA, 1)->bytes;
	assert_int_equal(m->flags, VFIO_DMA_MAP_FLAG_READ);
	assert_int_equal(ops->pinned_bytes(f->be), 0x11000);

	/* out of the region's bounds: refused before the kernel */
	dmb_err_clear(&e);
	assert_int_equal(ops->map(f->ctx, r, size - 0x1000, 0x400000, 0x2000, DMB_PROT_READ, &e),
			 -EINVAL);
	assert_int_equal(fake_count(VFIO_IOMMU_MAP_DMA), 2);

	/* unmap */
	uint64_t n = 0;
	k.unmap_size = 0x10000;
	assert_int_equal(ops->unmap(f->ctx, 0x100000, 0x10000, &n, &e), 0);
	assert_int_equal(n, 0x10000);
	const struct vfio_iommu_type1_dma_unmap *u = (const void *)fake_find(VFIO_IOMMU_UNMAP_DMA, 0)->bytes;
	assert_int_equal(u->argsz, 24);
	assert_int_equal(u->flags, 0);
	assert_int_equal(u->iova, 0x100000);
	assert_int_equal(u->size, 0x10000);
	assert_int_equal(ops->pinned_bytes(f->be), 0x1000);

	/* unmap-all with FLAG_ALL */
	k.unmap_size = 0x1000;
	assert_int_equal(ops->unmap_all(f->ctx, &n, &e), 0);
	assert_int_equal(n, 0x1000);
	u = (const void *)fake_find(VFIO_IOMMU_UNMAP_DMA, 1)->bytes;
	assert_int_equal(u->flags, VFIO_DMA_UNMAP_FLAG_ALL);
	assert_int_equal(u->iova, 0);
	assert_int_equal(u->size, 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	ops->region_close(r);
	close(d.fd);
	fake_reset();
	ops->ctx_close(f->ctx); /* closes the device too */
	f->ctx = NULL;
	c = fake_find(VFIO_GROUP_UNSET_CONTAINER, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/5"));
}

static void test_group_sharing(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *a, *b;
	struct dmb_dev_info di;

	fake_reset();
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:08.0", &a, &di, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "00:08.1", &b, &di, &e), 0);
	assert_string_equal(di.group, "8");
	assert_int_equal(fake_count(VFIO_GROUP_GET_STATUS), 1);
	assert_int_equal(fake_count(VFIO_GROUP_SET_CONTAINER), 1);
	assert_int_equal(fake_count(VFIO_SET_IOMMU), 1);
	assert_int_equal(fake_count(VFIO_GROUP_GET_DEVICE_FD), 2);
	assert_string_equal(fake_find(VFIO_GROUP_GET_DEVICE_FD, 1)->str, "0000:00:08.1");

	ops->dev_close(a);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);
	ops->dev_close(b);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 1);
	/* the container lost its IOMMU with its last group */
	struct dmb_iova_info info;
	dmb_err_clear(&e);
	expect_no_iommu(ops->iova_info(f->ctx, &info, &e), &e);
	ops->dev_close(NULL);
}

/* The last group stays while mappings exist: the kernel would drop the
 * IOMMU, and every mapping, with it. */
static void test_last_group_lingers(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_iova_info info;
	uint64_t n;

	struct dmb_region_desc d = {.fd = fake_memfd(0x10000), .size = 0x10000, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);

	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	fake_reset();
	ops->dev_close(dev);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);
	assert_int_equal(ops->iova_info(f->ctx, &info, &e), 0);

	/* another group joins: the idle one may leave now */
	fake_reset();
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:08.0", &dev, NULL, &e), 0);
	assert_int_equal(fake_count(VFIO_SET_IOMMU), 0);
	const struct fake_call *c = fake_find(VFIO_GROUP_UNSET_CONTAINER, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/5"));

	/* closing the last device keeps group 8; unmapping the last bytes
	 * releases it */
	fake_reset();
	ops->dev_close(dev);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);
	k.unmap_size = 0x10000;
	assert_int_equal(ops->unmap(f->ctx, 0x100000, 0x10000, &n, &e), 0);
	c = fake_find(VFIO_GROUP_UNSET_CONTAINER, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/8"));
	dmb_err_clear(&e);
	expect_no_iommu(ops->iova_info(f->ctx, &info, &e), &e);
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	ops->region_close(r);
	close(d.fd);
}

static void test_open_failures(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;

	fake_reset();
	assert_true(ops->dev_open(f->ctx, "0000:00:04.0", &dev, NULL, &e) < 0);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "IOMMU group 6 is not viable"));
	assert_non_null(strstr(e.msg, "0000:00:04.1 (snd_hda_intel)"));
	assert_null(strstr(e.msg, "0000:00:04.0"));
	assert_int_equal(fake_count(VFIO_GROUP_SET_CONTAINER), 0);

	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:05.0", &dev, NULL, &e), -ENOENT);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "/dev/vfio/7 missing: 0000:00:05.0 is not bound to vfio-pci "
				      "(driver: e1000e)"));

	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "../../etc/passwd", &dev, NULL, &e), -EINVAL);
	assert_int_equal(e.code, DMB_E_INVALID_ARGUMENT);

	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:0a.0", &dev, NULL, &e), -ENOENT);
	assert_int_equal(e.code, DMB_E_NOT_FOUND);
	assert_non_null(strstr(e.msg, "no PCI device 0000:00:0a.0"));

	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:09.0", &dev, NULL, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "has no IOMMU group"));

	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:0b.0", &dev, NULL, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "0000:00:0b.0 is in VFIO no-IOMMU mode"));

	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:0c.0", &dev, NULL, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "/dev/vfio/11 missing although 0000:00:0c.0 is bound to vfio-pci"));

	/* SET_IOMMU refused: the group leaves again */
	k.set_iommu_eperm = true;
	fake_reset();
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), -EPERM);
	assert_non_null(strstr(e.msg, "interrupt remapping"));
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 1);
	k.set_iommu_eperm = false;
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	ops->dev_close(dev);
}

static void test_map_errors(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_region_desc d = {.fd = fake_memfd(0x10000), .size = 0x10000, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);

	k.map_errno = EEXIST;
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x1000, DMB_PROT_READ, &e), -EEXIST);
	assert_int_equal(e.code, DMB_E_ALREADY_EXISTS);
	assert_int_equal(e.sys_errno, EEXIST);
	assert_non_null(strstr(e.msg, "VFIO_IOMMU_MAP_DMA of 0x1000 bytes at IOVA 0x100000 failed (EEXIST)"));

	k.map_errno = ENOSPC;
	dmb_err_clear(&e);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x1000, DMB_PROT_READ, &e), -ENOSPC);
	assert_int_equal(e.code, DMB_E_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(e.msg, "dma_entry_limit"));
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	ops->dev_close(dev);
	ops->region_close(r);
	ops->region_close(NULL);
	close(d.fd);
}

static void test_unmap_all_without_flag(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_backend *be2;
	struct dmb_bctx *ctx2;
	struct dmb_backend_config cfg = {.sysfs_root = f->sys, .dev_root = f->dev};

	k.unmap_all_ext = false;
	assert_int_equal(dmb_type1_create(&cfg, &be2, &e), 0);
	assert_int_equal(be2->ops->ctx_open(be2, &ctx2, &e), 0);
	assert_int_equal(ops->dev_open(ctx2, "0000:00:08.0", &dev, NULL, &e), 0);
	fake_reset();
	k.unmap_size = 0x3000;
	uint64_t n = 0;
	assert_int_equal(ops->unmap_all(ctx2, &n, &e), 0);
	assert_int_equal(fake_count(VFIO_IOMMU_UNMAP_DMA), 2);
	const struct vfio_iommu_type1_dma_unmap *u = (const void *)fake_find(VFIO_IOMMU_UNMAP_DMA, 0)->bytes;
	assert_int_equal(u->flags, 0);
	assert_int_equal(u->iova, 0);
	assert_int_equal(u->size, 1ull << 63);
	u = (const void *)fake_find(VFIO_IOMMU_UNMAP_DMA, 1)->bytes;
	assert_int_equal(u->iova, 1ull << 63);
	assert_int_equal(u->size, 1ull << 63);
	assert_int_equal(n, 0x6000);
	be2->ops->ctx_close(ctx2);
	be2->ops->ctx_close(NULL);
	dmb_backend_destroy(be2);
}


/* BAR info, config space and reset, on the device fd. */
static void test_dev_state(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_bar_info bi;
	char path[800];
	snprintf(path, sizeof(path), "%s/0000:00:03.0", devstate);

	fake_reset();
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	int dfd = ops->dev_fd(dev);
	/* the config region is looked up at open */
	const struct fake_call *c = fake_find(VFIO_DEVICE_GET_REGION_INFO, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, dfd);
	assert_int_equal(c->len, 32);
	const struct vfio_region_info *ri = (const void *)c->bytes;
	assert_int_equal(ri->argsz, 32);
	assert_int_equal(ri->index, VFIO_PCI_CONFIG_REGION_INDEX);

	fake_reset();
	assert_int_equal(ops->dev_bar_info(dev, 0, &bi, &e), 0);
	assert_int_equal(bi.size, 0x100000);
	assert_true(bi.mmio);
	assert_true(bi.mappable);
	ri = (const void *)fake_find(VFIO_DEVICE_GET_REGION_INFO, 0)->bytes;
	assert_int_equal(ri->index, 0);
	assert_int_equal(ops->dev_bar_info(dev, 1, &bi, &e), 0);
	assert_int_equal(bi.size, 0);
	assert_false(bi.mmio);
	assert_false(bi.mappable);
	assert_int_equal(ops->dev_bar_info(dev, 2, &bi, &e), 0); /* I/O space */
	assert_int_equal(bi.size, 0x100);
	assert_false(bi.mmio);
	assert_false(bi.mappable);
	assert_int_equal(ops->dev_bar_info(dev, 3, &bi, &e), 0); /* no MMAP flag */
	assert_int_equal(bi.size, 0x4000);
	assert_true(bi.mmio);
	assert_false(bi.mappable);
	assert_int_equal(ops->dev_bar_info(dev, 6, &bi, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "BAR 6 does not exist"));

	/* config space: the command register, read and written on the fd */
	uint16_t cmd = 0;
	assert_int_equal(ops->dev_config_read(dev, DMB_PCI_COMMAND, &cmd, 2, &e), 0);
	assert_int_equal(cmd, DMB_PCI_COMMAND_MEMORY | DMB_PCI_COMMAND_MASTER);
	uint32_t ids = 0;
	assert_int_equal(ops->dev_config_read(dev, 0, &ids, 4, &e), 0);
	assert_int_equal(ids, 0x11e81234);
	cmd = DMB_PCI_COMMAND_MASTER;
	assert_int_equal(ops->dev_config_write(dev, DMB_PCI_COMMAND, &cmd, 2, &e), 0);
	assert_int_equal(fake_cfg_read16(path, DMB_PCI_COMMAND), DMB_PCI_COMMAND_MASTER);
	/* a change made through another fd (the client's) is what we read */
	fake_cfg_write16(path, DMB_PCI_COMMAND, 0x0007);
	assert_int_equal(ops->dev_config_read(dev, DMB_PCI_COMMAND, &cmd, 2, &e), 0);
	assert_int_equal(cmd, 0x0007);
	uint8_t last = 0;
	assert_int_equal(ops->dev_config_read(dev, FAKE_CFG_SIZE - 1, &last, 1, &e), 0);

	/* bounds: nothing outside the config region */
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_config_read(dev, FAKE_CFG_SIZE - 1, &cmd, 2, &e), -ERANGE);
	assert_int_equal(e.code, DMB_E_OUT_OF_RANGE);
	assert_non_null(strstr(e.msg, "config space access [0xff, +2) of 0000:00:03.0 is outside "
				      "its 0x100 bytes"));
	assert_int_equal(ops->dev_config_write(dev, FAKE_CFG_SIZE, &cmd, 2, NULL), -ERANGE);
	assert_int_equal(ops->dev_config_write(dev, UINT32_MAX, &cmd, 2, NULL), -ERANGE);
	assert_int_equal(ops->dev_config_read(dev, 0, &cmd, 0, NULL), -ERANGE);
	uint8_t big[FAKE_CFG_SIZE + 1];
	assert_int_equal(ops->dev_config_read(dev, 0, big, sizeof(big), NULL), -ERANGE);
	assert_int_equal(ops->dev_config_read(dev, 0, big, FAKE_CFG_SIZE, NULL), 0);

	/* reset */
	fake_reset();
	assert_int_equal(ops->dev_reset(dev, &e), 0);
	c = fake_find(VFIO_DEVICE_RESET, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, dfd);
	assert_int_equal(c->argval, 0);
	k.reset_errno = EINVAL;
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_reset(dev, &e), -EINVAL);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "VFIO_DEVICE_RESET of 0000:00:03.0 failed (EINVAL): the "
				      "device has no function-level reset"));
	k.reset_errno = EAGAIN;
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_reset(dev, &e), -EAGAIN);
	assert_int_equal(e.code, DMB_E_UNAVAILABLE);
	k.reset_errno = 0;
	ops->dev_close(dev);
}

/* A device whose config region cannot be looked up still opens; its
 * config accessors say why they cannot work. */
static int kernel_no_regions(int fd, unsigned long req, void *arg, const char *path)
{
	if (req == VFIO_DEVICE_GET_REGION_INFO)
		return -ENOTTY;
	return kernel(fd, req, arg, path);
}

static void test_dev_no_config(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	uint16_t cmd;

	fake_install(kernel_no_regions);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	assert_int_equal(ops->dev_config_read(dev, DMB_PCI_COMMAND, &cmd, 2, &e), -ENOTTY);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "reading config space of 0000:00:03.0 is impossible"));
	fake_install(kernel);
	ops->dev_close(dev);
}

static bool is_mapped(const void *addr)
{
	unsigned char vec;
	return mincore((void *)((uintptr_t)addr & ~(uintptr_t)4095), 4096, &vec) == 0;
}

/* P2P: A's container maps the daemon's mmap of B's BAR; B sits in another
 * context (its own container). */
static void test_map_bar(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *a, *b;
	struct dmb_bctx *ctx_b;
	struct dmb_iova_info info;

	assert_int_equal(ops->ctx_open(f->be, &ctx_b, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &a, NULL, &e), 0);
	assert_int_equal(ops->dev_open(ctx_b, "0000:00:08.0", &b, NULL, &e), 0);
	int cfd; /* A's container: A joined first */
	memcpy(&cfd, fake_find(VFIO_GROUP_SET_CONTAINER, 0)->bytes, sizeof(cfd));

	fake_reset();
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x100000,
				      DMB_PROT_READ | DMB_PROT_WRITE, &e), 0);
	const struct fake_call *c = fake_find(VFIO_DEVICE_GET_REGION_INFO, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, ops->dev_fd(b)); /* the peer's fd */
	assert_int_equal(((const struct vfio_region_info *)c->bytes)->index, 0);
	c = fake_find(VFIO_IOMMU_MAP_DMA, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, cfd); /* A's container */
	const struct vfio_iommu_type1_dma_map *m = (const void *)c->bytes;
	assert_int_equal(m->argsz, 32);
	assert_int_equal(m->flags, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
	assert_int_equal(m->iova, 0x4000000);
	assert_int_equal(m->size, 0x100000);
	/* vaddr is a MAP_SHARED mmap of the BAR region of B's fd */
	assert_int_equal(k.map_word, FAKE_BAR0_ID);
	uint64_t va0 = m->vaddr;
	assert_int_equal(va0 % 4096, 0);
	/* P2P is not pinned memory */
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	/* a second range of the same BAR reuses the cached mmap */
	fake_reset();
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0x1000, 0x5000000, 0x1000, DMB_PROT_READ, &e),
			 0);
	assert_int_equal(fake_count(VFIO_DEVICE_GET_REGION_INFO), 0);
	m = (const void *)fake_find(VFIO_IOMMU_MAP_DMA, 0)->bytes;
	assert_int_equal(m->flags, VFIO_DMA_MAP_FLAG_READ);
	assert_int_equal(m->vaddr, va0 + 0x1000);
	assert_int_equal(k.map_word, FAKE_BAR0_MARK);

	/* EFAULT: B's memory decoding went off under us */
	k.map_errno = EFAULT;
	dmb_err_clear(&e);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0x2000, 0x6000000, 0x1000, DMB_PROT_READ, &e),
			 -EFAULT);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "VFIO_IOMMU_MAP_DMA of BAR 0 of 0000:00:08.0 [0x2000, "
				      "+0x1000) at IOVA 0x6000000 failed (EFAULT): the peer's BAR "
				      "is not accessible (memory decoding off?)"));
	k.map_errno = 0;

	/* a BAR VFIO will not let us mmap; a range past the BAR */
	fake_reset();
	dmb_err_clear(&e);
	assert_int_equal(ops->map_bar(f->ctx, b, 3, 0, 0x6000000, 0x1000, DMB_PROT_READ, &e),
			 -EOPNOTSUPP);
	assert_non_null(strstr(e.msg, "BAR 3 of 0000:00:08.0 cannot be mapped for P2P"));
	dmb_err_clear(&e);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0xff000, 0x6000000, 0x2000, DMB_PROT_READ, &e),
			 -EINVAL);
	assert_int_equal(e.code, DMB_E_OUT_OF_RANGE);
	assert_int_equal(fake_count(VFIO_IOMMU_MAP_DMA), 0);

	/* RAM beside MMIO: unmap keeps pinned_bytes to RAM */
	struct dmb_region_desc d = {.fd = fake_memfd(0x10000), .size = 0x10000, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;
	uint64_t n;
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);
	k.unmap_size = 0x1000;
	assert_int_equal(ops->unmap(f->ctx, 0x5000000, 0x1000, &n, &e), 0);
	assert_int_equal(n, 0x1000);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);
	k.unmap_size = 0x110000; /* one range over both */
	assert_int_equal(ops->unmap(f->ctx, 0, 0x8000000, &n, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	/* only a P2P mapping left: A's last group still stays with it */
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x100000, DMB_PROT_READ, &e), 0);
	fake_reset();
	ops->dev_close(a);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 0);
	assert_int_equal(ops->iova_info(f->ctx, &info, &e), 0);
	k.unmap_size = 0x100000;
	assert_int_equal(ops->unmap(f->ctx, 0x4000000, 0x100000, &n, &e), 0);
	assert_int_equal(fake_count(VFIO_GROUP_UNSET_CONTAINER), 1);

	/* closing B drops its BAR mmap */
	const void *bar = (const void *)(uintptr_t)va0;
	assert_true(is_mapped(bar));
	ops->dev_close(b);
	assert_false(is_mapped(bar));

	/* no IOMMU in A's container any more */
	assert_int_equal(ops->dev_open(ctx_b, "0000:00:08.0", &b, NULL, &e), 0);
	dmb_err_clear(&e);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e),
			 -ENODEV);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);

	/* a context closing unmaps its devices' BARs too */
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &a, NULL, &e), 0);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e), 0);
	bar = (const void *)(uintptr_t)((const struct vfio_iommu_type1_dma_map *)fake_find(
						VFIO_IOMMU_MAP_DMA, fake_count(VFIO_IOMMU_MAP_DMA) - 1)
						->bytes)
		      ->vaddr;
	assert_true(is_mapped(bar));
	ops->ctx_close(ctx_b);
	assert_false(is_mapped(bar));
	ops->region_close(r);
	close(d.fd);
}

/* iommufd's compat container (no vfio_iommu_type1 module) cannot map a
 * PFNMAP VMA: no "p2p", and map_bar says why. */
static void test_map_bar_compat(void **state)
{
	struct fx *f = *state;
	struct dmb_err e = {0};
	struct dmb_backend *be2;
	struct dmb_bctx *ctx2;
	struct dmb_bdev *a, *b;
	char mod[700];
	snprintf(mod, sizeof(mod), "%s/module/vfio_iommu_type1/parameters/dma_entry_limit", f->sys);
	assert_int_equal(unlink(mod), 0);
	snprintf(mod, sizeof(mod), "%s/module/vfio_iommu_type1/parameters", f->sys);
	assert_int_equal(rmdir(mod), 0);
	snprintf(mod, sizeof(mod), "%s/module/vfio_iommu_type1", f->sys);
	assert_int_equal(rmdir(mod), 0);

	struct dmb_backend_config cfg = {.sysfs_root = f->sys, .dev_root = f->dev};
	assert_int_equal(dmb_type1_create(&cfg, &be2, &e), 0);
	assert_false(has_feature(be2, "p2p"));
	assert_false(has_feature(be2, "vaddr-update"));
	const struct dmb_backend_ops *ops = be2->ops;
	assert_int_equal(ops->ctx_open(be2, &ctx2, &e), 0);
	assert_int_equal(ops->dev_open(ctx2, "0000:00:03.0", &a, NULL, &e), 0);
	assert_int_equal(ops->dev_open(ctx2, "0000:00:08.0", &b, NULL, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_bar(ctx2, b, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e),
			 -EOPNOTSUPP);
	assert_int_equal(e.code, DMB_E_UNIMPLEMENTED);
	assert_non_null(strstr(e.msg, "iommufd's VFIO compatibility container, which cannot map a "
				      "peer BAR"));
	assert_int_equal(fake_count(VFIO_IOMMU_MAP_DMA), 0);
	ops->ctx_close(ctx2);
	dmb_backend_destroy(be2);
}

/* Granular mappings through the core on type1, against the kernel's rules
 * for vfio_dma entries (fake.h: UNMAP_DMA v2 never bisects one): one
 * VFIO_IOMMU_MAP_DMA per granule at the granule's address in the region's
 * mapping, a discard unmaps exactly one entry, a populate maps it again, a
 * refused discard is put back, and an unmap over holes removes the rest. */
static bool allow_all(void *o, const struct dmb_owner *ow, const char *bdf)
{
	return true;
}

static void test_granular_layout(void **state)
{
	struct fx *f = *state;
	static struct fake_areas areas;
	memset(&areas, 0, sizeof(areas));
	k.areas = &areas;
	const uint64_t G = 4096, IOVA = 0x100000, OFF = 0x10000;
	struct dmb_limits lim = { .contexts_per_owner = 4, .regions_per_context = 4,
				  .mappings_per_context = 1u << 20, .devices_per_context = 4 };
	struct dmb_core core;
	core_init(&core, f->be, &lim);
	core.device_allowed = allow_all;
	struct dmb_owner *o = owner_new(&core, 1, 1000, 1000, getpid(), NULL, NULL);
	struct dmb_ctx *ctx = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(ctx_create(o, "g", false, &ctx, &e), 0);
	struct dmb_device *dev = NULL;
	assert_int_equal(device_open(ctx, "0000:00:03.0", &dev, &e), 0);
	int fd = memfd_create("granular", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 1 << 20), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	struct dmb_region *reg = NULL;
	assert_int_equal(region_register(ctx, fd, 0, &reg, &e), 0);

	struct dmb_map_req q = { reg->id, OFF, IOVA, 32 * G, DMB_PROT_READ | DMB_PROT_WRITE, G };
	fake_reset();
	assert_int_equal(map_batch(ctx, &q, 1, &e), 0);
	assert_int_equal(fake_count(VFIO_IOMMU_MAP_DMA), 32);
	assert_int_equal(areas.n, 32);
	uint64_t base = areas.a[0].offset; /* the vaddr of granule 0 */
	for (unsigned i = 0; i < 32; i++) {
		assert_int_equal(areas.a[i].iova, IOVA + i * G);
		assert_int_equal(areas.a[i].length, G);
		assert_int_equal(areas.a[i].offset, base + i * G);
	}
	/* the page size is capped by the IOMMU's (4K|2M|1G) and the memfd's */
	assert_int_equal(ctx->iova.pgsizes, 0x1000 | 0x200000 | 0x40000000);
	assert_int_equal(map_page_size(ctx, map_find(ctx, IOVA)), G);

	struct dmb_range d[] = { { IOVA + 2 * G, 2 * G }, { IOVA + 31 * G, G } };
	struct dmb_convert_result res;
	fake_reset();
	assert_int_equal(map_convert(ctx, d, 2, true, &res, &e), 0);
	assert_int_equal(fake_count(VFIO_IOMMU_UNMAP_DMA), 3);
	assert_int_equal(areas.n, 29);
	assert_null(fake_areas_find(&areas, IOVA + 3 * G));
	fake_reset();
	assert_int_equal(map_convert(ctx, d, 1, false, &res, &e), 0);
	assert_int_equal(fake_count(VFIO_IOMMU_MAP_DMA), 2);
	const struct fake_area *a3 = fake_areas_find(&areas, IOVA + 3 * G);
	assert_non_null(a3);
	assert_int_equal(a3->offset, base + 3 * G);

	/* refused halfway: put back */
	struct dmb_range d2 = { IOVA + 8 * G, 3 * G };
	k.unmaps = 0;
	k.unmap_fail_at = 2;
	assert_true(map_convert(ctx, &d2, 1, true, &res, &e) < 0);
	assert_int_equal(areas.n, 31);
	assert_non_null(fake_areas_find(&areas, IOVA + 8 * G));
	k.unmap_fail_at = 0;

	struct dmb_range all = { IOVA, 32 * G };
	uint64_t bytes = 0, count = 0;
	assert_int_equal(unmap_ranges(ctx, &all, 1, &bytes, &count, &e), 0);
	assert_int_equal(areas.n, 0);
	assert_int_equal(core.pinned_bytes, 0);

	owner_free(o);
	core_fini(&core);
	k.areas = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unset_container, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noiommu_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_map_unmap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group_sharing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_last_group_lingers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_failures, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap_all_without_flag, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dev_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dev_no_config, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_bar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_bar_compat, setup, teardown),
		cmocka_unit_test_setup_teardown(test_granular_layout, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
