/* The iommufd backend against a fake kernel (no machine here has
 * /dev/iommu): the exact bytes of every command — feature probes, IOAS
 * alloc, the IOVA_RANGES two-call negotiation, MAP_FILE, MAP, UNMAP,
 * unmap-all, cdev bind/attach/detach, the device-state hooks, the dma-buf
 * probe, and P2P by dma-buf export + MAP_FILE — and the failure sentences. */
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
#include "core/core.h"
#include "backend/ksys.h"
#include "backend/uapi/iommufd.h"
#include "backend/uapi/vfio_cdev.h"
#include "fake.h"

static struct {
	bool old_kernel; /* 6.6-6.12: no MAP_FILE, no CHANGE_PROCESS */
	uint32_t next_id;
	uint32_t nranges; /* IOVA ranges the IOAS has */
	int grow_once;    /* IOVA_RANGES: count grows between the two calls */
	int map_errno;
	int bind_errno;
	uint64_t unmap_len;
	int dmabuf_errno;  /* VFIO_DEVICE_FEATURE(DMA_BUF): ENOTTY before 6.19 */
	int map_file_errno; /* MAP_FILE of a dma-buf */
	int last_dmabuf;   /* the fd the last export returned */
	int exports;
	/* the kernel's areas (fake.h), when a test models them */
	struct fake_areas *areas;
	int maps, unmaps;          /* calls seen while modelled */
	int map_fail_at, unmap_fail_at; /* 1-based call that fails (ENOMEM / EBUSY); 0: none */
} k;

/* MAP / MAP_FILE / UNMAP against the modelled areas. */
static int areas_map(uint64_t iova, uint64_t length, uint64_t start)
{
	if (++k.maps == k.map_fail_at)
		return -ENOMEM;
	return fake_areas_map(k.areas, iova, length, start);
}

/* The no-IOMMU part of the kernel (fake.h). */
static struct fake_noiommu nk;

static const struct dmb_iommu_iova_range ranges[] = {
	{0, 0xFEDFFFFF},
	{0xFEF00000, 0xFFFFFFFFFFFF},
	{0x1000000000000, 0x1FFFFFFFFFFFF},
};

static int kernel(int fd, unsigned long req, void *arg, const char *path)
{
	(void)fd;
	(void)path;
	switch (req) {
	case DMB_IOMMU_IOAS_ALLOC: {
		struct dmb_iommu_ioas_alloc *a = arg;
		a->out_ioas_id = k.next_id++;
		return 0;
	}
	case DMB_IOMMU_DESTROY:
		return 0;
	case DMB_IOMMU_IOAS_MAP_FILE: {
		if (k.old_kernel)
			return -ENOTTY;
		struct dmb_iommu_ioas_map_file *m = arg;
		if (!(m->flags & (DMB_IOMMU_IOAS_MAP_READABLE | DMB_IOMMU_IOAS_MAP_WRITEABLE)))
			return -EINVAL;
		if (m->fd == k.last_dmabuf && k.last_dmabuf >= 0)
			return -k.map_file_errno;
		if (k.areas && !k.map_errno)
			return areas_map(m->iova, m->length, m->start);
		return -k.map_errno;
	}
	case VFIO_DEVICE_GET_REGION_INFO:
		return fake_vfio_region_info(arg);
	case VFIO_DEVICE_RESET:
		return 0;
	case VFIO_DEVICE_FEATURE: {
		struct dmb_vfio_dma_buf_one *q = arg;
		if ((q->hdr.flags & VFIO_DEVICE_FEATURE_MASK) != DMB_VFIO_DEVICE_FEATURE_DMA_BUF)
			return -ENOTTY;
		if (k.dmabuf_errno)
			return -k.dmabuf_errno;
		if (q->hdr.flags & VFIO_DEVICE_FEATURE_PROBE)
			return 0;
		k.exports++;
		k.last_dmabuf = open("/dev/null", O_RDWR | O_CLOEXEC);
		return k.last_dmabuf;
	}
	case DMB_IOMMU_IOAS_CHANGE_PROCESS: {
		struct dmb_iommu_ioas_change_process *c = arg;
		if (k.old_kernel)
			return -ENOTTY;
		return c->__reserved ? -EOPNOTSUPP : 0;
	}
	case DMB_IOMMU_IOAS_MAP:
		return -k.map_errno;
	case DMB_IOMMU_IOAS_IOVA_RANGES: {
		struct dmb_iommu_ioas_iova_ranges *q = arg;
		uint32_t total = k.nranges;
		if (k.grow_once && q->num_iovas > 0) {
			k.grow_once = 0;
			total = ++k.nranges;
		}
		uint32_t cap = q->num_iovas;
		struct dmb_iommu_iova_range *out = (void *)(uintptr_t)q->allowed_iovas;
		for (uint32_t i = 0; i < total && i < cap; i++)
			out[i] = ranges[i % 3];
		q->num_iovas = total;
		q->out_iova_alignment = 4096;
		return total > cap ? -EMSGSIZE : 0;
	}
	case DMB_IOMMU_IOAS_UNMAP: {
		struct dmb_iommu_ioas_unmap *u = arg;
		if (k.areas) {
			if (++k.unmaps == k.unmap_fail_at)
				return -EBUSY;
			if (u->iova == 0 && u->length == UINT64_MAX) {
				uint64_t all = 0;
				for (size_t i = 0; i < k.areas->n; i++)
					all += k.areas->a[i].length;
				k.areas->n = 0;
				u->length = all;
				return 0;
			}
			uint64_t got = 0;
			int r = fake_areas_unmap_iommufd(k.areas, u->iova, u->length, &got);
			if (r == 0)
				u->length = got;
			return r;
		}
		u->length = k.unmap_len;
		return 0;
	}
	case DMB_VFIO_DEVICE_BIND_IOMMUFD: {
		struct dmb_vfio_device_bind_iommufd *b = arg;
		if (k.bind_errno)
			return -k.bind_errno;
		b->out_devid = 11;
		return 0;
	}
	case DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT: {
		struct dmb_vfio_device_attach_iommufd_pt *a = arg;
		a->pt_id = 12;
		if (strstr(path, "/noiommu-vfio"))
			nk.attached = true; /* the IOAS's areas get the no-IOMMU domain */
		return 0;
	}
	case DMB_IOMMU_IOAS_NOIOMMU_GET_PA:
		return fake_noiommu_get_pa(&nk, arg);
	case DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT:
		return 0;
	case DMB_IOMMU_GET_HW_INFO: {
		struct dmb_iommu_hw_info *h = arg;
		if (nk.attached && h->dev_id == 11)
			return -EOPNOTSUPP; /* no IOMMU to describe */
		h->out_data_type = 1;
		h->out_capabilities = DMB_IOMMU_HW_CAP_DIRTY_TRACKING;
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

static int setup_common(void **state, bool old_kernel)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->root = fake_tree_new();
	fake_write(f->root, "dev/iommu", "");
	char p[700];
	fake_mkdirs(f->root, "dev/vfio/devices");
	snprintf(p, sizeof(p), "%s/dev/vfio/devices/vfio3", f->root);
	fake_vfio_device_file(p);
	snprintf(p, sizeof(p), "%s/dev/vfio/devices/vfio4", f->root);
	fake_vfio_device_file(p);
	fake_pci(f->root, "0000:00:03.0", 0x1234, 0x11e8, "vfio-pci", 5, "vfio3");
	fake_pci(f->root, "0000:00:04.0", 0x1234, 0x11e8, "vfio-pci", 6, "vfio4");
	fake_pci(f->root, "0000:00:05.0", 0x8086, 0x10d3, "e1000e", 7, NULL);
	snprintf(f->sys, sizeof(f->sys), "%s/sys", f->root);
	snprintf(f->dev, sizeof(f->dev), "%s/dev", f->root);
	memset(&k, 0, sizeof(k));
	k.old_kernel = old_kernel;
	k.next_id = 1;
	k.last_dmabuf = -1;
	k.nranges = 3;
	fake_install(kernel);

	struct dmb_backend_config cfg = {.name = "iommufd", .sysfs_root = f->sys, .dev_root = f->dev};
	struct dmb_err e = {0};
	assert_int_equal(dmb_iommufd_create(&cfg, &f->be, &e), 0);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_common(state, false);
}

static int setup_old(void **state)
{
	return setup_common(state, true);
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

static void test_probe(void **state)
{
	struct fx *f = *state;
	assert_string_equal(f->be->ops->name, "iommufd");
	assert_true(has_feature(f->be, "map-file"));
	assert_true(has_feature(f->be, "change-process"));
	assert_true(has_feature(f->be, "unmap-all"));

	/* scratch IOAS, probes with invalid arguments, then destroyed */
	const struct fake_call *c = fake_find(DMB_IOMMU_IOAS_ALLOC, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/iommu"));
	const struct dmb_iommu_ioas_alloc *a = (const void *)c->bytes;
	assert_int_equal(c->len, 12);
	assert_int_equal(a->flags, 0);

	c = fake_find(DMB_IOMMU_IOAS_MAP_FILE, 0);
	assert_non_null(c);
	const struct dmb_iommu_ioas_map_file *mf = (const void *)c->bytes;
	assert_int_equal(mf->size, 40);
	assert_int_equal(mf->flags, 0);
	assert_int_equal(mf->ioas_id, 1);
	assert_int_equal(mf->fd, -1);

	c = fake_find(DMB_IOMMU_IOAS_CHANGE_PROCESS, 0);
	assert_non_null(c);
	const struct dmb_iommu_ioas_change_process *cp = (const void *)c->bytes;
	assert_int_equal(cp->size, 8);
	assert_int_equal(cp->__reserved, 1);

	c = fake_find(DMB_IOMMU_DESTROY, 0);
	assert_non_null(c);
	const struct dmb_iommu_destroy *d = (const void *)c->bytes;
	assert_int_equal(d->size, 8);
	assert_int_equal(d->id, 1);
}

static void test_probe_old_kernel(void **state)
{
	struct fx *f = *state;
	assert_false(has_feature(f->be, "map-file"));
	assert_false(has_feature(f->be, "change-process"));
	assert_true(has_feature(f->be, "unmap-all"));
}

static void test_iova_ranges(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_iova_info info;

	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	fake_reset();
	assert_int_equal(ops->iova_info(f->ctx, &info, &e), 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_IOVA_RANGES), 2);
	const struct dmb_iommu_ioas_iova_ranges *q =
		(const void *)fake_find(DMB_IOMMU_IOAS_IOVA_RANGES, 0)->bytes;
	assert_int_equal(q->size, 32);
	assert_int_equal(q->ioas_id, 2);
	assert_int_equal(q->num_iovas, 0);
	assert_int_equal(q->__reserved, 0);
	assert_int_equal(q->allowed_iovas, 0);
	q = (const void *)fake_find(DMB_IOMMU_IOAS_IOVA_RANGES, 1)->bytes;
	assert_int_equal(q->num_iovas, 3);
	assert_true(q->allowed_iovas != 0);

	assert_int_equal(info.n, 3);
	assert_int_equal(info.ranges[0].start, 0);
	assert_int_equal(info.ranges[0].last, 0xFEDFFFFF);
	assert_int_equal(info.ranges[2].last, 0x1FFFFFFFFFFFF);
	assert_int_equal(info.alignment, ksys_page_size() > 4096 ? ksys_page_size() : 4096);
	assert_int_equal(info.max_mappings, 0);

	/* the count grows between the calls: a third call */
	fake_reset();
	k.grow_once = 1;
	assert_int_equal(ops->iova_info(f->ctx, &info, &e), 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_IOVA_RANGES), 3);
	assert_int_equal(info.n, 4);

	/* no ranges at all */
	k.nranges = 0;
	fake_reset();
	assert_int_equal(ops->iova_info(f->ctx, &info, &e), 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_IOVA_RANGES), 1);
	assert_int_equal(info.n, 0);

	/* more than we keep */
	k.nranges = 40;
	assert_int_equal(ops->iova_info(f->ctx, &info, &e), 0);
	assert_int_equal(info.n, DMB_MAX_IOVA_RANGES);
}

static void test_map_file(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	const uint64_t size = 0x200000;
	struct dmb_region_desc d = {.fd = fake_memfd(size), .size = size, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;

	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	close(d.fd); /* the backend keeps its own duplicate */
	fake_reset();
	assert_int_equal(ops->map(f->ctx, r, 0x3000, 0x100000, 0x10000,
				  DMB_PROT_READ | DMB_PROT_WRITE, &e), 0);
	const struct fake_call *c = fake_find(DMB_IOMMU_IOAS_MAP_FILE, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/iommu"));
	assert_int_equal(c->len, 40);
	const struct dmb_iommu_ioas_map_file *m = (const void *)c->bytes;
	assert_int_equal(m->size, 40);
	assert_int_equal(m->flags, DMB_IOMMU_IOAS_MAP_FIXED_IOVA | DMB_IOMMU_IOAS_MAP_READABLE |
					   DMB_IOMMU_IOAS_MAP_WRITEABLE);
	assert_int_equal(m->ioas_id, 2);
	char p[512];
	fake_fd_path(m->fd, p, sizeof(p));
	assert_non_null(strstr(p, "memfd:fake-region"));
	assert_true(fcntl(m->fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(m->start, 0x3000);
	assert_int_equal(m->length, 0x10000);
	assert_int_equal(m->iova, 0x100000);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_MAP), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);

	/* read-only, write-only */
	assert_int_equal(ops->map(f->ctx, r, 0, 0x0, 0x1000, DMB_PROT_READ, &e), 0);
	m = (const void *)fake_find(DMB_IOMMU_IOAS_MAP_FILE, 1)->bytes;
	assert_int_equal(m->flags, DMB_IOMMU_IOAS_MAP_FIXED_IOVA | DMB_IOMMU_IOAS_MAP_READABLE);
	assert_int_equal(m->iova, 0);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x1000, 0x1000, DMB_PROT_WRITE, &e), 0);
	m = (const void *)fake_find(DMB_IOMMU_IOAS_MAP_FILE, 2)->bytes;
	assert_int_equal(m->flags, DMB_IOMMU_IOAS_MAP_FIXED_IOVA | DMB_IOMMU_IOAS_MAP_WRITEABLE);
	assert_int_equal(ops->pinned_bytes(f->be), 0x12000);

	/* errors */
	k.map_errno = EEXIST;
	dmb_err_clear(&e);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x1000, DMB_PROT_READ, &e), -EEXIST);
	assert_int_equal(e.code, DMB_E_ALREADY_EXISTS);
	assert_int_equal(e.sys_errno, EEXIST);
	assert_non_null(strstr(e.msg, "IOMMU_IOAS_MAP_FILE of 0x1000 bytes at IOVA 0x100000 failed "
				      "(EEXIST)"));
	k.map_errno = ENOMEM;
	dmb_err_clear(&e);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x1000, DMB_PROT_READ, &e), -ENOMEM);
	assert_int_equal(e.code, DMB_E_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(e.msg, "RLIMIT_MEMLOCK"));
	assert_int_equal(ops->pinned_bytes(f->be), 0x12000);
	k.map_errno = 0;

	/* unmap */
	fake_reset();
	uint64_t n = 0;
	k.unmap_len = 0x10000;
	assert_int_equal(ops->unmap(f->ctx, 0x100000, 0x10000, &n, &e), 0);
	assert_int_equal(n, 0x10000);
	c = fake_find(DMB_IOMMU_IOAS_UNMAP, 0);
	assert_int_equal(c->len, 24);
	const struct dmb_iommu_ioas_unmap *u = (const void *)c->bytes;
	assert_int_equal(u->size, 24);
	assert_int_equal(u->ioas_id, 2);
	assert_int_equal(u->iova, 0x100000);
	assert_int_equal(u->length, 0x10000);
	assert_int_equal(ops->pinned_bytes(f->be), 0x2000);

	/* unmap-all: exactly iova 0, length U64_MAX */
	k.unmap_len = 0x2000;
	assert_int_equal(ops->unmap_all(f->ctx, &n, &e), 0);
	assert_int_equal(n, 0x2000);
	u = (const void *)fake_find(DMB_IOMMU_IOAS_UNMAP, 1)->bytes;
	assert_int_equal(u->iova, 0);
	assert_int_equal(u->length, UINT64_MAX);
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	ops->region_close(r);
	ops->region_close(NULL);
}

static void test_map_by_address(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	const uint64_t size = 0x20000;
	struct dmb_region_desc d = {.fd = fake_memfd(size), .size = size, .page_size = 4096,
				    .writable = false};
	struct dmb_bregion *r;

	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	close(d.fd);
	fake_reset();
	assert_int_equal(ops->map(f->ctx, r, 0x2000, 0x40000, 0x4000, DMB_PROT_READ, &e), 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_MAP_FILE), 0);
	const struct fake_call *c = fake_find(DMB_IOMMU_IOAS_MAP, 0);
	assert_non_null(c);
	assert_int_equal(c->len, 40);
	const struct dmb_iommu_ioas_map *m = (const void *)c->bytes;
	assert_int_equal(m->size, 40);
	assert_int_equal(m->flags, DMB_IOMMU_IOAS_MAP_FIXED_IOVA | DMB_IOMMU_IOAS_MAP_READABLE);
	assert_int_equal(m->ioas_id, 2);
	assert_int_equal(m->__reserved, 0);
	assert_int_equal(m->length, 0x4000);
	assert_int_equal(m->iova, 0x40000);
	/* user_va is the daemon's mmap of the region, at the offset */
	assert_int_equal(m->user_va % 4096, 0);
	const uint8_t *va = (const uint8_t *)(uintptr_t)m->user_va;
	assert_int_equal(va[0], (uint8_t)(0x2000 * 7 + 1));
	assert_int_equal(va[0x3FFF], (uint8_t)((0x2000 + 0x3FFF) * 7 + 1));

	k.map_errno = EFAULT;
	dmb_err_clear(&e);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x80000, 0x1000, DMB_PROT_READ, &e), -EFAULT);
	assert_non_null(strstr(e.msg, "IOMMU_IOAS_MAP of 0x1000 bytes at IOVA 0x80000 failed (EFAULT)"));
	k.map_errno = 0;

	/* out of bounds: never reaches the kernel */
	fake_reset();
	assert_int_equal(ops->map(f->ctx, r, size, 0x80000, 0x1000, DMB_PROT_READ, &e), -EINVAL);
	assert_int_equal(fake_ncalls, 0);
	ops->region_close(r);
}

static void test_devices(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_dev_info di;

	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	fake_reset();
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, &di, &e), 0);
	assert_int_equal(di.vendor, 0x1234);
	assert_int_equal(di.device, 0x11e8);
	assert_string_equal(di.group, "vfio3");
	assert_true(di.viable);
	int dfd = ops->dev_fd(dev);
	assert_true(dfd >= 0);

	/* bind: 16 bytes (no token), the context's iommufd */
	const struct fake_call *c = fake_find(DMB_VFIO_DEVICE_BIND_IOMMUFD, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, dfd);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/devices/vfio3"));
	assert_int_equal(c->len, 16);
	const struct dmb_vfio_device_bind_iommufd *b = (const void *)c->bytes;
	assert_int_equal(b->argsz, 16);
	assert_int_equal(b->flags, 0);
	char p[512];
	fake_fd_path(b->iommufd, p, sizeof(p));
	assert_true(fake_path_endswith(p, "/dev/iommu"));
	assert_int_equal(b->out_devid, 0);

	/* attach: 12 bytes (no PASID), pt_id = the IOAS, after bind */
	const struct fake_call *c2 = fake_find(DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0);
	assert_non_null(c2);
	assert_true(c2 > c);
	assert_int_equal(c2->fd, dfd);
	assert_int_equal(c2->len, 12);
	const struct dmb_vfio_device_attach_iommufd_pt *a = (const void *)c2->bytes;
	assert_int_equal(a->argsz, 12);
	assert_int_equal(a->flags, 0);
	assert_int_equal(a->pt_id, 2);

	/* hw info on the iommufd for the bound device */
	c = fake_find(DMB_IOMMU_GET_HW_INFO, 0);
	assert_non_null(c);
	const struct dmb_iommu_hw_info *h = (const void *)c->bytes;
	assert_int_equal(h->size, 40);
	assert_int_equal(h->dev_id, 11);
	assert_int_equal(h->data_len, 0);

	/* close: detach (8 bytes) first */
	fake_reset();
	ops->dev_close(dev);
	c = fake_find(DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT, 0);
	assert_non_null(c);
	assert_int_equal(c->len, 8);
	const struct dmb_vfio_device_detach_iommufd_pt *dt = (const void *)c->bytes;
	assert_int_equal(dt->argsz, 8);
	assert_int_equal(dt->flags, 0);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/devices/vfio3"));
	ops->dev_close(NULL);

	/* failures */
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:05.0", &dev, NULL, &e), -ENOENT);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "0000:00:05.0 is not bound to vfio-pci (driver: e1000e)"));

	k.bind_errno = EPERM;
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), -EPERM);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "VFIO_DEVICE_BIND_IOMMUFD of 0000:00:03.0 failed (EPERM)"));

	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0/../x", &dev, NULL, &e), -EINVAL);
	assert_int_equal(e.code, DMB_E_INVALID_ARGUMENT);
}

static void test_ctx_close(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_region_desc d = {.fd = fake_memfd(0x10000), .size = 0x10000, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;

	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	close(d.fd);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);

	fake_reset();
	k.unmap_len = 0x10000;
	ops->ctx_close(f->ctx);
	f->ctx = NULL;
	/* detach the device, unmap everything, destroy the IOAS */
	const struct fake_call *det = fake_find(DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT, 0);
	const struct fake_call *un = fake_find(DMB_IOMMU_IOAS_UNMAP, 0);
	const struct fake_call *ds = fake_find(DMB_IOMMU_DESTROY, 0);
	assert_non_null(det);
	assert_non_null(un);
	assert_non_null(ds);
	assert_true(det < un && un < ds);
	assert_int_equal(((const struct dmb_iommu_ioas_unmap *)un->bytes)->length, UINT64_MAX);
	assert_int_equal(((const struct dmb_iommu_destroy *)ds->bytes)->id, 2);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	ops->region_close(r);
}


/* BAR info, config space, reset: the same ksys_vdev code as type1, on the
 * cdev fd. */
static void test_dev_state(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_bar_info bi;
	char path[700];
	snprintf(path, sizeof(path), "%s/vfio/devices/vfio3", f->dev);

	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	int dfd = ops->dev_fd(dev);
	fake_reset();
	assert_int_equal(ops->dev_bar_info(dev, 0, &bi, &e), 0);
	assert_int_equal(bi.size, 0x100000);
	assert_true(bi.mmio && bi.mappable);
	const struct fake_call *c = fake_find(VFIO_DEVICE_GET_REGION_INFO, 0);
	assert_int_equal(c->fd, dfd);
	assert_int_equal(ops->dev_bar_info(dev, 2, &bi, &e), 0);
	assert_false(bi.mmio);

	uint16_t cmd = 0;
	assert_int_equal(ops->dev_config_read(dev, DMB_PCI_COMMAND, &cmd, 2, &e), 0);
	assert_int_equal(cmd, 0x0006);
	cmd = 0x0004;
	assert_int_equal(ops->dev_config_write(dev, DMB_PCI_COMMAND, &cmd, 2, &e), 0);
	assert_int_equal(fake_cfg_read16(path, DMB_PCI_COMMAND), 0x0004);
	assert_int_equal(ops->dev_config_read(dev, FAKE_CFG_SIZE, &cmd, 1, NULL), -ERANGE);

	fake_reset();
	assert_int_equal(ops->dev_reset(dev, &e), 0);
	c = fake_find(VFIO_DEVICE_RESET, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, dfd);
	ops->dev_close(dev);
}

/* The backend again, from scratch, with the fake kernel as it is now. */
static void recreate(struct fx *f)
{
	dmb_backend_destroy(f->be);
	struct dmb_backend_config cfg = {.name = "iommufd", .sysfs_root = f->sys, .dev_root = f->dev};
	struct dmb_err e = {0};
	fake_reset();
	assert_int_equal(dmb_iommufd_create(&cfg, &f->be, &e), 0);
}

static void test_dmabuf_probe(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;

	/* Announced from the start: a VMM checks the features of its first Hello,
	 * before any device is open. The first cdev that binds answers. */
	recreate(f);
	assert_true(has_feature(f->be, "p2p-dmabuf"));
	const struct fake_call *b = fake_find(DMB_VFIO_DEVICE_BIND_IOMMUFD, 0);
	assert_non_null(b);
	const struct fake_call *pf = fake_find(VFIO_DEVICE_FEATURE, 0);
	assert_non_null(pf);
	assert_int_equal(pf->fd, b->fd);
	assert_true(fake_all_cloexec());
	assert_int_equal(k.exports, 0);
	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	fake_reset();
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	const struct fake_call *c = fake_find(VFIO_DEVICE_FEATURE, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, ops->dev_fd(dev));
	assert_int_equal(c->len, 40);
	const struct dmb_vfio_dma_buf_one *q = (const void *)c->bytes;
	assert_int_equal(q->hdr.argsz, 40);
	assert_int_equal(q->hdr.flags, 0x5000B); /* PROBE | GET | DMA_BUF */
	assert_int_equal(q->buf.nr_ranges, 1);
	assert_int_equal(q->buf.flags, 0);
	assert_int_equal(k.exports, 0);
	assert_true(has_feature(f->be, "p2p-dmabuf"));
	assert_true(has_feature(f->be, "map-file"));
	/* announced once */
	struct dmb_bdev *dev2;
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:04.0", &dev2, NULL, &e), 0);
	int n = 0;
	for (size_t i = 0; f->be->features[i]; i++)
		n += strcmp(f->be->features[i], "p2p-dmabuf") == 0;
	assert_int_equal(n, 1);
	ops->dev_close(dev2);
	ops->dev_close(dev);
}

static void test_dmabuf_probe_missing(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *a, *b;

	k.dmabuf_errno = ENOTTY; /* 6.13-6.18 */
	recreate(f);
	ops = f->be->ops;
	assert_false(has_feature(f->be, "p2p-dmabuf")); /* the start-up probe said no */
	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &a, NULL, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:04.0", &b, NULL, &e), 0);
	assert_false(has_feature(f->be, "p2p-dmabuf"));
	fake_reset();
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e),
			 -EOPNOTSUPP);
	assert_int_equal(e.code, DMB_E_UNIMPLEMENTED);
	assert_non_null(strstr(e.msg, "VFIO dma-buf export of BARs (Linux 6.19+) is missing"));
	assert_int_equal(fake_ncalls, 0);

	/* a driver without the hook */
	ops->dev_close(b);
	k.dmabuf_errno = EOPNOTSUPP;
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:04.0", &b, NULL, &e), 0);
	dmb_err_clear(&e);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e),
			 -EOPNOTSUPP);
	assert_non_null(strstr(e.msg, "which 0000:00:04.0 does not offer (EOPNOTSUPP)"));
	ops->dev_close(b);
	ops->dev_close(a);
}

static void test_map_bar_old_kernel(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *b;

	k.dmabuf_errno = ENOTTY;
	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:04.0", &b, NULL, &e), 0);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e),
			 -EOPNOTSUPP);
	assert_non_null(strstr(e.msg, "IOMMU_IOAS_MAP_FILE is missing"));
	ops->dev_close(b);
}

/* P2P: export a fresh one-range dma-buf of B's BAR, MAP_FILE it into A's
 * IOAS, close our fd. B sits in another context. */
static void test_map_bar(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *a, *b;
	struct dmb_bctx *ctx_b;

	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0); /* IOAS 2 */
	assert_int_equal(ops->ctx_open(f->be, &ctx_b, &e), 0);  /* IOAS 3 */
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:03.0", &a, NULL, &e), 0);
	assert_int_equal(ops->dev_open(ctx_b, "0000:00:04.0", &b, NULL, &e), 0);

	fake_reset();
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0x2000, 0x4000000, 0x3000,
				      DMB_PROT_READ | DMB_PROT_WRITE, &e), 0);
	const struct fake_call *x = fake_find(VFIO_DEVICE_FEATURE, 0);
	assert_non_null(x);
	assert_int_equal(x->fd, ops->dev_fd(b)); /* the peer's cdev */
	assert_true(fake_path_endswith(x->path, "/dev/vfio/devices/vfio4"));
	assert_int_equal(x->len, 40);
	const struct dmb_vfio_dma_buf_one *q = (const void *)x->bytes;
	assert_int_equal(q->hdr.argsz, 40);
	assert_int_equal(q->hdr.flags, 0x1000B); /* GET | DMA_BUF */
	assert_int_equal(q->buf.region_index, 0);
	assert_int_equal(q->buf.open_flags, O_RDWR | O_CLOEXEC);
	assert_int_equal(q->buf.flags, 0);
	assert_int_equal(q->buf.nr_ranges, 1);
	assert_int_equal(q->range.offset, 0x2000);
	assert_int_equal(q->range.length, 0x3000);

	const struct fake_call *mc = fake_find(DMB_IOMMU_IOAS_MAP_FILE, 0);
	assert_non_null(mc);
	assert_true(mc > x);
	assert_true(fake_path_endswith(mc->path, "/dev/iommu"));
	const struct dmb_iommu_ioas_map_file *m = (const void *)mc->bytes;
	assert_int_equal(m->size, 40);
	assert_int_equal(m->flags, DMB_IOMMU_IOAS_MAP_FIXED_IOVA | DMB_IOMMU_IOAS_MAP_READABLE |
					   DMB_IOMMU_IOAS_MAP_WRITEABLE);
	assert_int_equal(m->ioas_id, 2); /* A's IOAS */
	assert_int_equal(m->fd, k.last_dmabuf);
	assert_int_equal(m->start, 0);
	assert_int_equal(m->length, 0x3000);
	assert_int_equal(m->iova, 0x4000000);
	/* the IOAS keeps its own reference: our dma-buf fd is closed */
	assert_int_equal(fcntl(k.last_dmabuf, F_GETFD), -1);
	assert_int_equal(errno, EBADF);
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	/* revoked by the kernel, unmapped by the core, mapped again: a fresh
	 * dma-buf each time */
	uint64_t n;
	k.unmap_len = 0x3000;
	assert_int_equal(ops->unmap(f->ctx, 0x4000000, 0x3000, &n, &e), 0);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0x2000, 0x4000000, 0x3000, DMB_PROT_READ, &e),
			 0);
	assert_int_equal(k.exports, 2);
	assert_int_equal(fake_count(VFIO_DEVICE_FEATURE), 2);
	m = (const void *)fake_find(DMB_IOMMU_IOAS_MAP_FILE, 1)->bytes;
	assert_int_equal(m->flags, DMB_IOMMU_IOAS_MAP_FIXED_IOVA | DMB_IOMMU_IOAS_MAP_READABLE);

	/* still revoked (memory off again): ENODEV, and the fd is closed */
	k.map_file_errno = ENODEV;
	dmb_err_clear(&e);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x5000000, 0x1000, DMB_PROT_READ, &e),
			 -ENODEV);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "IOMMU_IOAS_MAP_FILE of a dma-buf of BAR 0 of 0000:00:04.0 "
				      "[0, +0x1000) at IOVA 0x5000000 failed (ENODEV): the peer's "
				      "BAR is revoked"));
	assert_int_equal(fcntl(k.last_dmabuf, F_GETFD), -1);
	k.map_file_errno = 0;

	/* the export refuses (range past the BAR) */
	k.dmabuf_errno = EINVAL;
	dmb_err_clear(&e);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x5000000, 0x1000, DMB_PROT_READ, &e),
			 -EINVAL);
	assert_non_null(strstr(e.msg, "VFIO_DEVICE_FEATURE_DMA_BUF of BAR 0 of 0000:00:04.0 [0, "
				      "+0x1000) failed (EINVAL)"));
	k.dmabuf_errno = 0;

	/* RAM beside MMIO: unmap and unmap-all keep pinned_bytes to RAM */
	struct dmb_region_desc d = {.fd = fake_memfd(0x10000), .size = 0x10000, .page_size = 4096,
				    .writable = true};
	struct dmb_bregion *r;
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	close(d.fd);
	assert_int_equal(ops->map(f->ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);
	k.unmap_len = 0x3000;
	assert_int_equal(ops->unmap(f->ctx, 0x4000000, 0x3000, &n, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);
	assert_int_equal(ops->map_bar(f->ctx, b, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e), 0);
	k.unmap_len = 0x11000;
	assert_int_equal(ops->unmap_all(f->ctx, &n, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);

	ops->ctx_close(ctx_b);
	ops->region_close(r);
}

/* ---- no-IOMMU contexts (Linux 7.3) ---- */

static int nk_open(const char *path, int flags)
{
	return fake_noiommu_open(&nk, path, flags);
}

/* 0000:00:07.0 is a device without an IOMMU: its cdev is noiommu-vfio7. */
static void add_noiommu_device(struct fx *f)
{
	char p[700];
	snprintf(p, sizeof(p), "%s/dev/vfio/devices/noiommu-vfio7", f->root);
	fake_vfio_device_file(p);
	fake_pci(f->root, "0000:00:07.0", 0x1234, 0x11e8, "vfio-pci", 9, "noiommu-vfio7");
	memset(&nk, 0, sizeof(nk));
	ksys_ops.open = nk_open;
}

static void test_noiommu_devices(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_dev_info di;
	add_noiommu_device(f);
	char name[32];
	assert_int_equal(ksys_vfio_dev_name(f->sys, "0000:00:07.0", name, sizeof(name)), 0);
	assert_string_equal(name, "noiommu-vfio7");
	assert_true(ksys_noiommu_name(name));

	/* a normal context: the no-IOMMU device is refused, with the reason
	 * (and not as a device without a cdev) */
	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	fake_reset();
	assert_true(ops->dev_open(f->ctx, "0000:00:07.0", &dev, &di, &e) < 0);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "has no IOMMU"));
	assert_null(strstr(e.msg, "no VFIO device cdev"));
	assert_int_equal(fake_count(DMB_VFIO_DEVICE_BIND_IOMMUFD), 0);
	ops->ctx_close(f->ctx);
	f->ctx = NULL;

	/* a no-IOMMU context: a device with an IOMMU is refused */
	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->ctx_set_noiommu(f->ctx, &e), 0);
	memset(&e, 0, sizeof(e));
	assert_true(ops->dev_open(f->ctx, "0000:00:03.0", &dev, &di, &e) < 0);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(e.msg, "has an IOMMU"));

	/* without CAP_SYS_RAWIO the kernel refuses the open */
	memset(&e, 0, sizeof(e));
	assert_true(ops->dev_open(f->ctx, "0000:00:07.0", &dev, &di, &e) < 0);
	assert_int_equal(e.code, DMB_E_PERMISSION_DENIED);
	assert_non_null(strstr(e.msg, "CAP_SYS_RAWIO"));

	/* with it: bound and attached like any cdev */
	nk.rawio = true;
	fake_reset();
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:07.0", &dev, &di, &e), 0);
	assert_string_equal(di.group, "noiommu-vfio7");
	const struct fake_call *c = fake_find(DMB_VFIO_DEVICE_BIND_IOMMUFD, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/vfio/devices/noiommu-vfio7"));
	c = fake_find(DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0);
	assert_non_null(c);
	assert_int_equal(((const struct dmb_vfio_device_attach_iommufd_pt *)(const void *)c->bytes)->pt_id, 3); /* the second context's IOAS */
	assert_true(nk.attached);
	/* a context with a device cannot change its kind */
	memset(&e, 0, sizeof(e));
	assert_true(ops->ctx_set_noiommu(f->ctx, &e) < 0);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	ops->dev_close(dev);
	ksys_ops.open = ksys_open_default;
}

static void test_noiommu_get_pa(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	struct dmb_bdev *dev;
	struct dmb_dev_info di;
	uint64_t phys = 0, len = 0;
	add_noiommu_device(f);
	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->ctx_set_noiommu(f->ctx, &e), 0);
	nk.ioas_id = 2;
	nk.rawio = true;
	/* one area of 8 pages at 0x100000: pages 0-2 contiguous, 3 alone,
	 * 4-7 contiguous elsewhere */
	nk.n = 1;
	nk.area[0].iova = 0x100000;
	nk.area[0].length = 8 * 4096;
	const uint64_t base[8] = { 0x7000000, 0x7001000, 0x7002000, 0x3000000,
				   0x9000000, 0x9001000, 0x9002000, 0x9003000 };
	memcpy(nk.area[0].phys, base, sizeof(base));

	/* no device attached yet: the area has no no-IOMMU storage (EOPNOTSUPP,
	 * left to the core to explain) */
	assert_int_equal(ops->phys(f->ctx, 0x100000, 8 * 4096, &phys, &len, &e), -EOPNOTSUPP);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:07.0", &dev, &di, &e), 0);

	fake_reset();
	assert_int_equal(ops->phys(f->ctx, 0x100000, 8 * 4096, &phys, &len, &e), 0);
	assert_int_equal(phys, 0x7000000);
	assert_int_equal(len, 3 * 4096);
	const struct fake_call *c = fake_find(DMB_IOMMU_IOAS_NOIOMMU_GET_PA, 0);
	assert_non_null(c);
	assert_true(fake_path_endswith(c->path, "/dev/iommu"));
	assert_int_equal(c->len, 40);
	const struct dmb_iommu_ioas_noiommu_get_pa *q = (const void *)c->bytes;
	assert_int_equal(q->size, 40);
	assert_int_equal(q->flags, 0);
	assert_int_equal(q->ioas_id, 2);
	assert_int_equal(q->__reserved, 0);
	assert_int_equal(q->iova, 0x100000);
	assert_int_equal(q->length, 8 * 4096);
	/* mid-page, capped by the length asked; a lone page; the area's end */
	assert_int_equal(ops->phys(f->ctx, 0x100000 + 100, 50, &phys, &len, &e), 0);
	assert_int_equal(phys, 0x7000000 + 100);
	assert_int_equal(len, 50);
	assert_int_equal(ops->phys(f->ctx, 0x103000, 8 * 4096, &phys, &len, &e), 0);
	assert_int_equal(phys, 0x3000000);
	assert_int_equal(len, 4096);
	assert_int_equal(ops->phys(f->ctx, 0x104000, UINT64_MAX, &phys, &len, &e), 0);
	assert_int_equal(phys, 0x9000000);
	assert_int_equal(len, 4 * 4096);
	/* not mapped: ENOENT for the core to name */
	assert_int_equal(ops->phys(f->ctx, 0x200000, 4096, &phys, &len, &e), -ENOENT);
	/* CAP_SYS_RAWIO gone: a sentence */
	nk.rawio = false;
	memset(&e, 0, sizeof(e));
	assert_true(ops->phys(f->ctx, 0x100000, 4096, &phys, &len, &e) < 0);
	assert_int_equal(e.code, DMB_E_PERMISSION_DENIED);
	assert_non_null(strstr(e.msg, "CAP_SYS_RAWIO"));
	nk.rawio = true;
	ops->dev_close(dev);
	ksys_ops.open = ksys_open_default;
}

/* A kernel before 7.3: no GET_PA (ENOTTY); the type1 backend never makes
 * no-IOMMU contexts. */
static int old_kernel_handler(int fd, unsigned long req, void *arg, const char *path)
{
	if (req == DMB_IOMMU_IOAS_NOIOMMU_GET_PA)
		return -ENOTTY;
	return kernel(fd, req, arg, path);
}

static void test_noiommu_old_kernel(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->be->ops;
	struct dmb_err e = {0};
	uint64_t phys, len;
	add_noiommu_device(f);
	nk.rawio = true;
	nk.attached = true;
	struct dmb_bdev *dev;
	struct dmb_dev_info di;
	assert_int_equal(ops->ctx_open(f->be, &f->ctx, &e), 0);
	assert_int_equal(ops->ctx_set_noiommu(f->ctx, &e), 0);
	assert_int_equal(ops->dev_open(f->ctx, "0000:00:07.0", &dev, &di, &e), 0);
	fake_install(old_kernel_handler);
	assert_true(ops->phys(f->ctx, 0x100000, 4096, &phys, &len, &e) < 0);
	assert_int_equal(e.code, DMB_E_UNIMPLEMENTED);
	assert_non_null(strstr(e.msg, "7.3"));
	fake_install(kernel);
	ops->dev_close(dev);
	ksys_ops.open = ksys_open_default;
}

/* Granular mappings through the core on iommufd, against the kernel's area
 * rules (fake.h: an unmap never splits an area): one IOMMU_IOAS_MAP_FILE
 * per granule, a discard is one IOMMU_IOAS_UNMAP of exactly one area, a
 * populate maps the granule again at its file offset, a failure in the
 * middle of either leaves the kernel as it was, and a plain unmap of a
 * mapping with holes removes its areas whole. */
static bool allow_all(void *o, const struct dmb_owner *ow, const char *bdf)
{
	return true;
}

static int sealed_memfd(uint64_t size)
{
	int fd = memfd_create("granular", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	return fd;
}

static void test_granular_layout(void **state)
{
	struct fx *f = *state;
	static struct fake_areas areas;
	memset(&areas, 0, sizeof(areas));
	k.areas = &areas;
	const uint64_t G = 4096, IOVA = 0x100000, OFF = 0x10000, M2 = 2u << 20;
	/* mappings_per_context above DMB_GRANULES_MAX: the granule limit is hit first */
	struct dmb_limits lim = { .contexts_per_owner = 4, .regions_per_context = 4,
				  .mappings_per_context = 1u << 24, .devices_per_context = 4 };
	struct dmb_core core;
	core_init(&core, f->be, &lim);
	core.device_allowed = allow_all;
	struct dmb_owner *o = owner_new(&core, 1, 1000, 1000, getpid(), NULL, NULL);
	struct dmb_ctx *ctx = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(ctx_create(o, "g", false, &ctx, &e), 0);
	struct dmb_region *reg = NULL;
	assert_int_equal(region_register(ctx, sealed_memfd(8u << 20), 0, &reg, &e), 0);

	struct dmb_map_req q = { reg->id, OFF, IOVA, 64 * G, DMB_PROT_READ | DMB_PROT_WRITE, G };
	fake_reset();
	assert_int_equal(map_batch(ctx, &q, 1, &e), 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_MAP_FILE), 64);
	assert_int_equal(areas.n, 64);
	for (unsigned i = 0; i < 64; i++) {
		assert_int_equal(areas.a[i].iova, IOVA + i * G);
		assert_int_equal(areas.a[i].length, G);
		assert_int_equal(areas.a[i].offset, OFF + i * G);
	}
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 64 * G);
	assert_int_equal(map_page_size(ctx, map_find(ctx, IOVA)), G);

	/* discard 3..5 and 60: four unmaps, each exactly one area */
	struct dmb_range d[] = { { IOVA + 3 * G, 3 * G }, { IOVA + 60 * G, G } };
	struct dmb_convert_result res;
	fake_reset();
	assert_int_equal(map_convert(ctx, d, 2, true, &res, &e), 0);
	assert_int_equal(res.granules, 4);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_UNMAP), 4);
	for (int i = 0; i < 4; i++) {
		const struct dmb_iommu_ioas_unmap *u = (const void *)fake_find(DMB_IOMMU_IOAS_UNMAP, i)->bytes;
		assert_int_equal(u->length, G);
	}
	assert_int_equal(areas.n, 60);
	assert_null(fake_areas_find(&areas, IOVA + 4 * G));
	assert_non_null(fake_areas_find(&areas, IOVA + 6 * G));
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 60 * G);
	assert_int_equal(core.pinned_bytes, 60 * G);

	/* populate 3..5, the kernel refusing the second map: the first is
	 * unmapped again, nothing changed */
	k.maps = 0;
	k.map_fail_at = 2;
	assert_true(map_convert(ctx, d, 1, false, &res, &e) < 0);
	assert_int_equal(e.code, DMB_E_RESOURCE_EXHAUSTED);
	assert_int_equal(areas.n, 60);
	assert_int_equal(gran_of(ctx, map_find(ctx, IOVA))->discarded, 4);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 60 * G);
	k.map_fail_at = 0;
	/* and now it works, at the granules' file offsets */
	fake_reset();
	assert_int_equal(map_convert(ctx, d, 1, false, &res, &e), 0);
	assert_int_equal(res.granules, 3);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_MAP_FILE), 3);
	const struct fake_area *a4 = fake_areas_find(&areas, IOVA + 4 * G);
	assert_non_null(a4);
	assert_int_equal(a4->iova, IOVA + 4 * G);
	assert_int_equal(a4->length, G);
	assert_int_equal(a4->offset, OFF + 4 * G);

	/* a discard the kernel refuses halfway: the granules already unmapped
	 * are mapped again */
	struct dmb_range d2 = { IOVA + 10 * G, 4 * G };
	k.unmaps = 0;
	k.unmap_fail_at = 3;
	assert_true(map_convert(ctx, &d2, 1, true, &res, &e) < 0);
	assert_int_equal(areas.n, 63);
	for (unsigned i = 10; i < 14; i++)
		assert_non_null(fake_areas_find(&areas, IOVA + i * G));
	assert_int_equal(gran_of(ctx, map_find(ctx, IOVA))->discarded, 1);
	k.unmap_fail_at = 0;

	/* a plain unmap over the mapping with a hole (granule 60) removes the
	 * 63 areas whole */
	struct dmb_range all = { IOVA, 64 * G };
	uint64_t bytes = 0, count = 0;
	assert_int_equal(unmap_ranges(ctx, &all, 1, &bytes, &count, &e), 0);
	assert_int_equal(count, 1);
	assert_int_equal(areas.n, 0);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 0);
	assert_int_equal(core.pinned_bytes, 0);

	/* 2 MiB granules: 2 MiB areas; a mapping whose granules are all
	 * discarded unmaps without a kernel complaint reaching the client */
	struct dmb_map_req q2 = { reg->id, M2, 4 * M2, 2 * M2, DMB_PROT_READ, M2 };
	assert_int_equal(map_batch(ctx, &q2, 1, &e), 0);
	assert_int_equal(areas.n, 2);
	assert_int_equal(areas.a[1].length, M2);
	assert_int_equal(areas.a[1].offset, 2 * M2);
	struct dmb_range both = { 4 * M2, 2 * M2 };
	assert_int_equal(map_convert(ctx, &both, 1, true, &res, &e), 0);
	assert_int_equal(areas.n, 0);
	assert_int_equal(unmap_ranges(ctx, &both, 1, &bytes, &count, &e), 0);
	assert_int_equal(ctx->n_mappings, 0);
	assert_int_equal(core.pinned_bytes, 0);

	/* more than DMB_GRANULES_MAX granules: refused before the kernel (a sparse
	 * 16 GiB + 4 KiB memfd) */
	struct dmb_region *big = NULL;
	uint64_t too_many = (DMB_GRANULES_MAX + 1) * G;
	assert_int_equal(region_register(ctx, sealed_memfd(too_many), 0, &big, &e), 0);
	struct dmb_map_req q3 = { big->id, 0, UINT64_C(1) << 40, too_many, DMB_PROT_READ, G };
	fake_reset();
	e = (struct dmb_err){ 0 };
	assert_int_equal(map_batch(ctx, &q3, 1, &e), -E2BIG);
	assert_int_equal(e.code, DMB_E_INVALID_ARGUMENT);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_MAP_FILE), 0);
	assert_int_equal(ctx->n_mappings, 0);

	/* the model is the kernel's: an unmap inside an area is refused */
	assert_int_equal(fake_areas_map(&areas, IOVA, 16 * G, 0), 0);
	assert_int_equal(fake_areas_unmap_iommufd(&areas, IOVA, G, &bytes), -ENOENT);
	assert_int_equal(fake_areas_unmap_type1(&areas, IOVA, G, &bytes), -EINVAL);
	assert_int_equal(areas.n, 1);
	areas.n = 0;

	owner_free(o);
	core_fini(&core);
	k.areas = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_probe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_probe_old_kernel, setup_old, teardown),
		cmocka_unit_test_setup_teardown(test_iova_ranges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_by_address, setup_old, teardown),
		cmocka_unit_test_setup_teardown(test_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ctx_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dev_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dmabuf_probe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dmabuf_probe_missing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_bar_old_kernel, setup_old, teardown),
		cmocka_unit_test_setup_teardown(test_map_bar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noiommu_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noiommu_get_pa, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noiommu_old_kernel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_granular_layout, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
