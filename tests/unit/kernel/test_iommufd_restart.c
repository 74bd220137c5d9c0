/* The iommufd restart hooks against a fake kernel: the fd names, adoption
 * of an iommufd and a cdev from fds (the IOAS ID from the name or found by
 * IOMMU_IOAS_IOVA_RANGES), map_adopt by file and by address (VA-stale),
 * IOMMU_IOAS_CHANGE_PROCESS once after adoption and its EINVAL, the
 * handover that tears nothing down, and the failures. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "backend/ksys.h"
#include "backend/uapi/iommufd.h"
#include "backend/uapi/vfio_cdev.h"
#include "fake.h"

static struct {
	bool old_kernel; /* 6.6-6.12: no MAP_FILE, no CHANGE_PROCESS */
	uint32_t next_id;
	uint32_t live_ioas; /* the IOAS IOVA_RANGES knows (0: the last allocated) */
	int cp_errno;       /* CHANGE_PROCESS answers this */
	uint64_t unmapped;  /* bytes UNMAP reports */
} k;

static int kernel(int fd, unsigned long req, void *arg, const char *path)
{
	(void)fd;
	bool iommu = fake_path_endswith(path, "/dev/iommu");
	bool cdev = strstr(path, "/dev/vfio/devices/") != NULL;
	switch (req) {
	case DMB_IOMMU_IOAS_ALLOC: {
		struct dmb_iommu_ioas_alloc *a = arg;
		a->out_ioas_id = k.next_id++;
		k.live_ioas = a->out_ioas_id;
		return 0;
	}
	case DMB_IOMMU_DESTROY:
		return 0;
	case DMB_IOMMU_IOAS_IOVA_RANGES: {
		if (!iommu)
			return -ENOTTY;
		struct dmb_iommu_ioas_iova_ranges *q = arg;
		if (q->ioas_id != k.live_ioas)
			return -ENOENT;
		uint32_t cap = q->num_iovas;
		q->num_iovas = 1;
		q->out_iova_alignment = 4096;
		if (cap < 1)
			return -EMSGSIZE;
		struct dmb_iommu_iova_range *r = (void *)(uintptr_t)q->allowed_iovas;
		r->start = 0;
		r->last = 0xFFFFFFFFFF;
		return 0;
	}
	case DMB_IOMMU_IOAS_MAP_FILE: {
		if (k.old_kernel)
			return -ENOTTY;
		struct dmb_iommu_ioas_map_file *m = arg;
		return m->flags & (DMB_IOMMU_IOAS_MAP_READABLE | DMB_IOMMU_IOAS_MAP_WRITEABLE) ? 0
											    : -EINVAL;
	}
	case DMB_IOMMU_IOAS_MAP:
		return 0;
	case DMB_IOMMU_IOAS_UNMAP: {
		struct dmb_iommu_ioas_unmap *u = arg;
		u->length = k.unmapped;
		return 0;
	}
	case DMB_IOMMU_IOAS_CHANGE_PROCESS: {
		struct dmb_iommu_ioas_change_process *c = arg;
		if (k.old_kernel)
			return -ENOTTY;
		if (c->__reserved)
			return -EOPNOTSUPP;
		return -k.cp_errno;
	}
	case DMB_IOMMU_GET_HW_INFO: {
		struct dmb_iommu_hw_info *h = arg;
		return h->dev_id == 11 ? 0 : -ENOENT;
	}
	case DMB_VFIO_DEVICE_BIND_IOMMUFD: {
		struct dmb_vfio_device_bind_iommufd *b = arg;
		b->out_devid = 11;
		return 0;
	}
	case DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT: {
		struct dmb_vfio_device_attach_iommufd_pt *a = arg;
		a->pt_id = 12;
		return 0;
	}
	case DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT:
		return 0;
	case VFIO_DEVICE_GET_REGION_INFO:
		return cdev ? fake_vfio_region_info(arg) : -ENOTTY;
	case VFIO_DEVICE_FEATURE:
		return -ENOTTY;
	}
	return -ENOTTY;
}

struct fx {
	char *root;
	char sys[600], dev[600];
	struct dmb_backend_config cfg;
	struct dmb_backend *be;
	const struct dmb_backend_ops *ops;
	int memfd;
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
	snprintf(f->sys, sizeof(f->sys), "%s/sys", f->root);
	snprintf(f->dev, sizeof(f->dev), "%s/dev", f->root);
	memset(&k, 0, sizeof(k));
	k.old_kernel = old_kernel;
	k.next_id = 1;
	fake_install(kernel);
	f->cfg = (struct dmb_backend_config){.name = "iommufd", .sysfs_root = f->sys,
					     .dev_root = f->dev};
	struct dmb_err e = {0};
	assert_int_equal(dmb_iommufd_create(&f->cfg, &f->be, &e), 0);
	f->ops = f->be->ops;
	f->memfd = fake_memfd(0x100000);
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

/* Map, export, hand over, close; adopt from the exported fds in a new
 * backend; CHANGE_PROCESS once; keep using the context. */
static void test_handover_and_adopt(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = 0x100000, .page_size = 4096,
				    .writable = true};

	assert_int_equal(ops->ctx_open(f->be, &ctx, &e), 0);
	assert_int_equal(ops->dev_open(ctx, "0000:00:03.0", &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	assert_int_equal(ops->map(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);

	struct dmb_fdset cs, ds;
	assert_int_equal(ops->ctx_fds(ctx, &cs), 0);
	assert_int_equal(cs.n, 1);
	assert_string_equal(cs.e[0].name, "iommufd.ioas2"); /* 1 was the probe's scratch IOAS */
	assert_int_equal(ops->dev_fds(dev, &ds), 0);
	assert_int_equal(ds.n, 1);
	assert_string_equal(ds.e[0].name, "device.dev11");
	assert_int_equal(ds.e[0].fd, ops->dev_fd(dev));
	cs.e[0].fd = fcntl(cs.e[0].fd, F_DUPFD_CLOEXEC, 3);
	ds.e[0].fd = fcntl(ds.e[0].fd, F_DUPFD_CLOEXEC, 3);

	fake_reset();
	assert_int_equal(ops->ctx_prepare_handover(ctx, &e), 0);
	assert_int_equal(fake_ncalls, 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
	assert_int_equal(fake_count(DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT), 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_UNMAP), 0);
	assert_int_equal(fake_count(DMB_IOMMU_DESTROY), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	dmb_backend_destroy(f->be);

	/* ---- the next process ---- */
	assert_int_equal(dmb_iommufd_create(&f->cfg, &f->be, &e), 0);
	ops = f->ops = f->be->ops;
	k.live_ioas = 2; /* the new probe allocated (and destroyed) a scratch IOAS */
	fake_reset();
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(fake_ncalls, 1);
	const struct fake_call *c = fake_find(DMB_IOMMU_IOAS_IOVA_RANGES, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, cs.e[0].fd);
	const struct dmb_iommu_ioas_iova_ranges *q = (const void *)c->bytes;
	assert_int_equal(q->size, sizeof(*q));
	assert_int_equal(q->ioas_id, 2);
	assert_int_equal(q->num_iovas, 0);

	fake_reset();
	struct dmb_dev_info di;
	assert_int_equal(ops->dev_adopt(ctx, "00:03.0", &ds, &dev, &di, &e), 0);
	assert_string_equal(di.group, "vfio3");
	assert_int_equal(fake_count(DMB_VFIO_DEVICE_BIND_IOMMUFD), 0);
	assert_int_equal(fake_count(DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT), 0);
	c = fake_find(DMB_IOMMU_GET_HW_INFO, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, cs.e[0].fd);
	assert_int_equal(((const struct dmb_iommu_hw_info *)c->bytes)->dev_id, 11);
	assert_int_equal(ops->dev_fd(dev), ds.e[0].fd);

	/* MAP_FILE areas hold their memfd: nothing to redo */
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x10000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->map_bar_adopt(ctx, dev, 0, 0, 0x4000000, 0x1000, DMB_PROT_READ, &e), 0);
	assert_int_equal(fake_ncalls, 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x10000);

	/* once, after adoption: the pins follow this process */
	uint64_t stray = 5;
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(fake_ncalls, 1);
	c = fake_find(DMB_IOMMU_IOAS_CHANGE_PROCESS, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, cs.e[0].fd);
	assert_int_equal(c->len, 8);
	const struct dmb_iommu_ioas_change_process *cp = (const void *)c->bytes;
	assert_int_equal(cp->size, 8);
	assert_int_equal(cp->__reserved, 0);

	/* and the context lives on */
	uint64_t n;
	k.unmapped = 0x11000;
	assert_int_equal(ops->unmap(ctx, 0, 0x8000000, &n, &e), 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	struct dmb_bdev *two;
	assert_int_equal(ops->dev_open(ctx, "0000:00:04.0", &two, NULL, &e), 0);
	fake_reset();
	ops->region_close(r);
	ops->ctx_close(ctx);
	assert_int_equal(fake_count(DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT), 2);
	assert_int_equal(fake_count(DMB_IOMMU_DESTROY), 1);
	assert_false(fd_open(cs.e[0].fd));
}

/* A bare "iommufd" name: the IOAS is found by asking object IDs in turn. */
static void test_adopt_find_ioas(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs = {0};
	struct dmb_bctx *ctx;

	add_fd(&cs, open_rel(f, "dev/iommu"), "iommufd");
	add_fd(&cs, open_rel(f, "dev/iommu"), "journal"); /* not ours: closed */
	k.live_ioas = 4;
	fake_reset();
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_IOVA_RANGES), 4);
	for (int i = 0; i < 4; i++) {
		const struct dmb_iommu_ioas_iova_ranges *q =
			(const void *)fake_find(DMB_IOMMU_IOAS_IOVA_RANGES, i)->bytes;
		assert_int_equal(q->ioas_id, (uint32_t)i + 1);
	}
	assert_true(fd_open(cs.e[0].fd));
	assert_false(fd_open(cs.e[1].fd));
	struct dmb_fdset out;
	assert_int_equal(ops->ctx_fds(ctx, &out), 0);
	assert_string_equal(out.e[0].name, "iommufd.ioas4");
	ops->ctx_close(ctx);
}

static void test_adopt_errors(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs = {0}, ds = {0};
	struct dmb_bctx *ctx = NULL;
	struct dmb_bdev *dev = NULL;

	add_fd(&cs, open_rel(f, "dev/iommu"), "container");
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), -EINVAL);
	assert_string_equal(e.msg, "an iommufd context cannot be adopted without its \"iommufd\" fd");
	close(cs.e[0].fd);

	/* the IOAS is gone; the fd is not an iommufd */
	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/iommu"), "iommufd.ioas9");
	k.live_ioas = 2;
	dmb_err_clear(&e);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), -ENOENT);
	assert_string_equal(e.msg, "IOAS 9 of the adopted iommufd cannot be found "
				   "(IOMMU_IOAS_IOVA_RANGES: ENOENT)");
	assert_true(fd_open(cs.e[0].fd));
	close(cs.e[0].fd);
	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/vfio/devices/vfio3"), "iommufd");
	dmb_err_clear(&e);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), -ENOTTY);
	assert_non_null(strstr(e.msg, "has no IOAS"));
	close(cs.e[0].fd);
	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/iommu"), "iommufd");
	k.live_ioas = 1000;
	dmb_err_clear(&e);
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), -ENOENT);
	close(cs.e[0].fd);
	assert_null(ctx);

	/* a device that is not this iommufd's; a fd that is not a device */
	memset(&cs, 0, sizeof(cs));
	add_fd(&cs, open_rel(f, "dev/iommu"), "iommufd.ioas2");
	k.live_ioas = 2;
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	add_fd(&ds, open_rel(f, "dev/vfio/devices/vfio3"), "device.dev12");
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_adopt(ctx, "0000:00:03.0", &ds, &dev, NULL, &e), -ENOENT);
	assert_string_equal(e.msg, "0000:00:03.0 is not device 12 of the adopted iommufd");
	close(ds.e[0].fd);
	memset(&ds, 0, sizeof(ds));
	add_fd(&ds, open_rel(f, "dev/iommu"), "device.dev11");
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_adopt(ctx, "0000:00:03.0", &ds, &dev, NULL, &e), -ENOTTY);
	assert_string_equal(e.msg, "the \"device\" fd of 0000:00:03.0 is not a VFIO device bound to "
				   "an iommufd (ENOTTY)");
	close(ds.e[0].fd);
	memset(&ds, 0, sizeof(ds));
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_adopt(ctx, "0000:00:03.0", &ds, &dev, NULL, &e), -EINVAL);
	assert_string_equal(e.msg, "device 0000:00:03.0 cannot be adopted without its \"device\" fd");
	/* a bare "device" is taken on trust */
	add_fd(&ds, open_rel(f, "dev/vfio/devices/vfio3"), "device");
	fake_reset();
	assert_int_equal(ops->dev_adopt(ctx, "0000:00:03.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(fake_count(DMB_IOMMU_GET_HW_INFO), 0);
	ops->ctx_close(ctx);
}

/* CHANGE_PROCESS refused (an area by address or a dma-buf), or missing:
 * adoption goes on. */
static void test_change_process_refused(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs = {0};
	struct dmb_bctx *ctx;
	uint64_t stray = 9;

	add_fd(&cs, open_rel(f, "dev/iommu"), "iommufd.ioas2");
	k.live_ioas = 2;
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	k.cp_errno = EINVAL;
	fake_reset();
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(fake_count(DMB_IOMMU_IOAS_CHANGE_PROCESS), 1);
	k.cp_errno = ENOMEM;
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(e.code, 0);
	ops->ctx_close(ctx);
}

/* A kernel without MAP_FILE maps by address: adopted areas keep the old
 * process's address and pins, so no new device may join until they are
 * gone; no CHANGE_PROCESS (the kernel has none). */
static void test_adopt_by_address(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs = {0}, ds = {0};
	struct dmb_bctx *ctx;
	struct dmb_bdev *dev, *two;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = 0x100000, .page_size = 4096,
				    .writable = true};
	uint64_t stray, n;

	add_fd(&cs, open_rel(f, "dev/iommu"), "iommufd.ioas2");
	add_fd(&ds, open_rel(f, "dev/vfio/devices/vfio3"), "device.dev11");
	k.live_ioas = 2;
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->dev_adopt(ctx, "0000:00:03.0", &ds, &dev, NULL, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	fake_reset();
	assert_int_equal(ops->map_adopt(ctx, r, 0x1000, 0x100000, 0x2000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->map_adopt(ctx, r, 0x4000, 0x200000, 0x2000, DMB_PROT_READ, &e), 0);
	assert_int_equal(ops->adopt_finish(ctx, &stray, &e), 0);
	assert_int_equal(fake_ncalls, 0);
	assert_int_equal(ops->pinned_bytes(f->be), 0x4000);

	assert_int_equal(ops->dev_open(ctx, "0000:00:04.0", &two, NULL, &e), -EBUSY);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	assert_string_equal(e.msg, "cannot attach 0000:00:04.0: 2 mapping(s) of this context were "
				   "made by address by a previous broker process, and a new device "
				   "could make the kernel pin them from its dead address space; "
				   "re-create the context (or unmap them all) first");
	k.unmapped = 0x2000;
	assert_int_equal(ops->unmap(ctx, 0x100000, 0x2000, &n, &e), 0);
	assert_int_equal(ops->dev_open(ctx, "0000:00:04.0", &two, NULL, &e), -EBUSY);
	assert_int_equal(ops->unmap(ctx, 0x200000, 0x2000, &n, &e), 0);
	dmb_err_clear(&e);
	assert_int_equal(ops->dev_open(ctx, "0000:00:04.0", &two, NULL, &e), 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
}

/* Malformed mappings are refused before anything is recorded. */
static void test_map_adopt_bounds(void **state)
{
	struct fx *f = *state;
	const struct dmb_backend_ops *ops = f->ops;
	struct dmb_err e = {0};
	struct dmb_fdset cs = {0};
	struct dmb_bctx *ctx;
	struct dmb_bregion *r;
	struct dmb_region_desc d = {.fd = f->memfd, .size = 0x100000, .page_size = 4096,
				    .writable = true};

	add_fd(&cs, open_rel(f, "dev/iommu"), "iommufd.ioas2");
	k.live_ioas = 2;
	assert_int_equal(ops->ctx_adopt(f->be, &cs, &ctx, &e), 0);
	assert_int_equal(ops->region_open(f->be, &d, &r, &e), 0);
	assert_int_equal(ops->map_adopt(ctx, r, 0xff000, 0x100000, 0x2000, DMB_PROT_READ, &e),
			 -EINVAL);
	assert_int_equal(ops->map_adopt(ctx, r, 0, 0x100000, 0x1000, 0, &e), -EINVAL);
	assert_int_equal(ops->pinned_bytes(f->be), 0);
	ops->region_close(r);
	ops->ctx_close(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_handover_and_adopt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_find_ioas, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_change_process_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_by_address, setup_old, teardown),
		cmocka_unit_test_setup_teardown(test_map_adopt_bounds, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
