/* ksys.c — the ioctl hook and the sysfs lookups shared by the kernel
 * backends. See ksys.h. */
#include "ksys.h"

#include <ctype.h>
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/vfio.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/macro.h"

int ksys_ioctl_default(int fd, unsigned long req, void *arg)
{
	int r = ioctl(fd, req, arg);
	return r < 0 ? -errno : r;
}

int ksys_open_default(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

struct ksys_ops ksys_ops = {
	.ioctl = ksys_ioctl_default,
	.open = ksys_open_default,
};

const char *ksys_explain(int r, const struct ksys_why *rows, int *code)
{
	*code = dmb_code_from_errno(r);
	for (; rows->err; rows++)
		if (rows->err == -r) {
			if (rows->code)
				*code = rows->code;
			return rows->why;
		}
	return strerror(-r);
}

const char *ksys_errno_name(int err)
{
	const char *s = strerrorname_np(err < 0 ? -err : err);
	return s ? s : "E?";
}

int ksys_path(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	if (r < 0)
		return -EINVAL;
	if ((size_t)r >= n)
		return -ENAMETOOLONG;
	return 0;
}

static int parse_hex(const char *s, size_t len, unsigned max, unsigned *out)
{
	unsigned v = 0;
	if (len == 0)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (!isxdigit((unsigned char)s[i]))
			return -EINVAL;
		v = v * 16 + (unsigned)(isdigit((unsigned char)s[i]) ? s[i] - '0'
								      : (tolower((unsigned char)s[i]) - 'a' + 10));
	}
	if (v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

int ksys_bdf_normalize(const char *in, char out[KSYS_BDF_LEN + 1])
{
	unsigned dom = 0, bus, dev, fn;
	const char *p = in;

	if (!in)
		return -EINVAL;
	size_t len = strlen(in);
	if (len == KSYS_BDF_LEN) {
		if (in[4] != ':' || parse_hex(in, 4, 0xffff, &dom) < 0)
			return -EINVAL;
		p = in + 5;
	} else if (len != KSYS_BDF_LEN - 5) {
		return -EINVAL;
	}
	/* p: "bb:dd.f" */
	if (p[2] != ':' || p[5] != '.' || parse_hex(p, 2, 0xff, &bus) < 0 ||
	    parse_hex(p + 3, 2, 0x1f, &dev) < 0 || parse_hex(p + 6, 1, 7, &fn) < 0)
		return -EINVAL;
	snprintf(out, KSYS_BDF_LEN + 1, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
	return 0;
}

int ksys_read_ulong(const char *path, int base, unsigned long *out)
{
	char buf[64];
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	char *end;
	errno = 0;
	unsigned long v = strtoul(buf, &end, base);
	if (errno != 0 || end == buf || (*end != '\0' && *end != '\n'))
		return -EINVAL;
	*out = v;
	return 0;
}

int ksys_link_basename(const char *path, char *out, size_t n)
{
	char target[4096];
	ssize_t len = readlink(path, target, sizeof(target) - 1);
	if (len < 0)
		return -errno;
	target[len] = '\0';
	const char *base = strrchr(target, '/');
	base = base ? base + 1 : target;
	if (*base == '\0')
		return -EINVAL;
	return ksys_path(out, n, "%s", base);
}

int ksys_pci_exists(const char *sysfs_root, const char *bdf)
{
	char path[4096];
	struct stat st;
	int r = ksys_path(path, sizeof(path), "%s/bus/pci/devices/%s", sysfs_root, bdf);
	if (r < 0)
		return r;
	if (stat(path, &st) < 0)
		return -errno;
	return 0;
}

int ksys_pci_driver(const char *sysfs_root, const char *bdf, char *out, size_t n)
{
	char path[4096];
	int r = ksys_path(path, sizeof(path), "%s/bus/pci/devices/%s/driver", sysfs_root, bdf);
	if (r < 0)
		return r;
	r = ksys_link_basename(path, out, n);
	if (r == -ENOENT) {
		if (n > 0)
			out[0] = '\0';
		return 0;
	}
	return r;
}

int ksys_pci_ids(const char *sysfs_root, const char *bdf, uint16_t *vendor, uint16_t *device)
{
	char path[4096];
	unsigned long v, d;
	int r = ksys_path(path, sizeof(path), "%s/bus/pci/devices/%s/vendor", sysfs_root, bdf);
	if (r < 0 || (r = ksys_read_ulong(path, 16, &v)) < 0)
		return r;
	r = ksys_path(path, sizeof(path), "%s/bus/pci/devices/%s/device", sysfs_root, bdf);
	if (r < 0 || (r = ksys_read_ulong(path, 16, &d)) < 0)
		return r;
	if (v > 0xffff || d > 0xffff)
		return -EINVAL;
	*vendor = (uint16_t)v;
	*device = (uint16_t)d;
	return 0;
}

int ksys_iommu_group(const char *sysfs_root, const char *bdf, unsigned *group)
{
	char path[4096], name[32];
	int r = ksys_path(path, sizeof(path), "%s/bus/pci/devices/%s/iommu_group", sysfs_root, bdf);
	if (r < 0)
		return r;
	r = ksys_link_basename(path, name, sizeof(name));
	if (r < 0)
		return r;
	char *end;
	errno = 0;
	unsigned long g = strtoul(name, &end, 10);
	if (errno != 0 || end == name || *end != '\0' || !isdigit((unsigned char)name[0]) ||
	    g > 0x7fffffff)
		return -EINVAL;
	*group = (unsigned)g;
	return 0;
}

int ksys_vfio_dev_name(const char *sysfs_root, const char *bdf, char *out, size_t n)
{
	char path[4096];
	int r = ksys_path(path, sizeof(path), "%s/bus/pci/devices/%s/vfio-dev", sysfs_root, bdf);
	if (r < 0)
		return r;
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	r = -ENOENT;
	struct dirent *de;
	while ((de = readdir(d))) {
		const char *s = de->d_name;
		/* "vfioN", or "noiommu-vfioN" for a device without an IOMMU
		 * (Linux 7.3, IOMMUFD_NOIOMMU + enable_unsafe_noiommu_mode) */
		if (strncmp(s, KSYS_NOIOMMU_PREFIX, strlen(KSYS_NOIOMMU_PREFIX)) == 0)
			s += strlen(KSYS_NOIOMMU_PREFIX);
		if (strncmp(s, "vfio", 4) != 0 || s[4] == '\0' ||
		    strspn(s + 4, "0123456789") != strlen(s + 4))
			continue;
		r = ksys_path(out, n, "%s", de->d_name);
		break;
	}
	closedir(d);
	return r;
}

bool ksys_driver_keeps_group_viable(const char *driver)
{
	return driver[0] == '\0' || strstr(driver, "vfio") != NULL ||
	       strcmp(driver, "pci-stub") == 0 || strcmp(driver, "pcieport") == 0;
}

/* Appends s to out (n bytes, *used in use); when it does not fit, fills
 * what is left and ends the string with "...". */
static void append(char *out, size_t n, size_t *used, const char *s)
{
	if (n == 0 || *used >= n - 1) {
		if (n >= 4)
			memcpy(out + n - 4, "...", 4);
		return;
	}
	size_t room = n - 1 - *used;
	size_t len = strlen(s);
	if (len <= room) {
		memcpy(out + *used, s, len + 1);
		*used += len;
		return;
	}
	memcpy(out + *used, s, room);
	out[n - 1] = '\0';
	if (n >= 4)
		memcpy(out + n - 4, "...", 3);
	*used = n - 1;
}

int ksys_group_blockers(const char *sysfs_root, unsigned group, char *out, size_t n)
{
	char path[4096], drv[256], item[512];
	size_t used = 0;
	int count = 0;

	if (n > 0)
		out[0] = '\0';
	int r = ksys_path(path, sizeof(path), "%s/kernel/iommu_groups/%u/devices", sysfs_root,
			  group);
	if (r < 0)
		return r;
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char link[4096];
		if (ksys_path(link, sizeof(link), "%s/%s/driver", path, de->d_name) < 0)
			continue;
		if (ksys_link_basename(link, drv, sizeof(drv)) < 0)
			drv[0] = '\0';
		if (ksys_driver_keeps_group_viable(drv))
			continue;
		snprintf(item, sizeof(item), "%s%s (%s)", count ? ", " : "", de->d_name, drv);
		append(out, n, &used, item);
		count++;
	}
	closedir(d);
	return count;
}

uint64_t ksys_page_size(void)
{
	long p = sysconf(_SC_PAGESIZE);
	return p > 0 ? (uint64_t)p : 4096;
}

/* ---- VFIO PCI device fds ---- */

int ksys_vfio_region_info(int fd, unsigned index, struct ksys_region *out)
{
	struct vfio_region_info ri = {.argsz = sizeof(ri), .index = index};
	int r = ksys_ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &ri);
	if (r < 0)
		return r;
	out->size = ri.size;
	out->offset = ri.offset;
	out->flags = ri.flags;
	return 0;
}

void ksys_vdev_init(struct ksys_vdev *v, int fd, const char *bdf)
{
	struct ksys_region cfg = {0};
	v->fd = fd;
	snprintf(v->bdf, sizeof(v->bdf), "%s", bdf);
	v->cfg_err = ksys_vfio_region_info(fd, VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
	if (v->cfg_err == 0 && cfg.size == 0)
		v->cfg_err = -ENODEV;
	v->cfg_offset = cfg.offset;
	v->cfg_size = cfg.size;
}

static int config_rw(const struct ksys_vdev *v, uint32_t off, void *buf, size_t len, bool write,
		     struct dmb_err *e)
{
	const char *what = write ? "writing" : "reading";
	if (v->cfg_err < 0)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -v->cfg_err,
				"%s config space of %s is impossible: VFIO_DEVICE_GET_REGION_INFO "
				"(config region) failed (%s)",
				what, v->bdf, ksys_errno_name(v->cfg_err));
	if (len == 0 || off >= v->cfg_size || len > v->cfg_size - off)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, ERANGE,
				"config space access [%#x, +%zu) of %s is outside its %#" PRIx64
				" bytes",
				off, len, v->bdf, v->cfg_size);
	if (v->cfg_offset > (uint64_t)INT64_MAX - off)
		return dmb_fail(e, DMB_E_INTERNAL, EOVERFLOW,
				"the config region of %s lies at an impossible offset %#" PRIx64, v->bdf,
				v->cfg_offset);
	off_t pos = (off_t)(v->cfg_offset + off);
	ssize_t n = write ? pwrite(v->fd, buf, len, pos) : pread(v->fd, buf, len, pos);
	if (n < 0) {
		int err = errno;
		return dmb_fail(e, dmb_code_from_errno(-err), err,
				"%s %zu bytes of config space of %s at %#x failed (%s): %s", what, len,
				v->bdf, off, ksys_errno_name(err), strerror(err));
	}
	if ((size_t)n != len)
		return dmb_fail(e, DMB_E_INTERNAL, EIO,
				"%s %zu bytes of config space of %s at %#x moved only %zd", what, len,
				v->bdf, off, n);
	return 0;
}

int ksys_vdev_config_read(const struct ksys_vdev *v, uint32_t off, void *buf, size_t len,
			  struct dmb_err *e)
{
	return config_rw(v, off, buf, len, false, e);
}

int ksys_vdev_config_write(const struct ksys_vdev *v, uint32_t off, const void *buf, size_t len,
			   struct dmb_err *e)
{
	return config_rw(v, off, (void *)buf, len, true, e);
}

#define PCI_BASE_ADDRESS_0 0x10
#define PCI_BASE_ADDRESS_SPACE_IO 0x01

int ksys_vdev_bar_info(const struct ksys_vdev *v, unsigned bar, struct dmb_bar_info *out,
		       struct dmb_err *e)
{
	memset(out, 0, sizeof(*out));
	if (bar >= DMB_PCI_NUM_BARS)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"BAR %u does not exist: a PCI function has BARs 0-5", bar);
	struct ksys_region ri;
	int r = ksys_vfio_region_info(v->fd, bar, &ri);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r,
				"VFIO_DEVICE_GET_REGION_INFO(BAR %u) of %s failed (%s): %s", bar, v->bdf,
				ksys_errno_name(r), strerror(-r));
	if (ri.size == 0)
		return 0; /* not implemented (or the upper half of a 64-bit BAR) */

	uint32_t reg;
	r = ksys_vdev_config_read(v, PCI_BASE_ADDRESS_0 + 4 * bar, &reg, sizeof(reg), e);
	if (r < 0)
		return r;
	reg = le32toh(reg);
	out->size = ri.size;
	out->mmio = !(reg & PCI_BASE_ADDRESS_SPACE_IO);
	out->mappable = out->mmio && (ri.flags & VFIO_REGION_INFO_FLAG_MMAP);
	return 0;
}

int ksys_vdev_reset(const struct ksys_vdev *v, struct dmb_err *e)
{
	int r = ksys_ioctl(v->fd, VFIO_DEVICE_RESET, NULL);
	if (r >= 0)
		return 0;
	switch (-r) {
	case EINVAL:
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EINVAL,
				"VFIO_DEVICE_RESET of %s failed (EINVAL): the device has no "
				"function-level reset and no slot or bus reset it could use alone "
				"(behind its own PCIe root port it would)",
				v->bdf);
	case EAGAIN:
		return dmb_fail(e, DMB_E_UNAVAILABLE, EAGAIN,
				"VFIO_DEVICE_RESET of %s failed (EAGAIN): the device is busy; try again",
				v->bdf);
	default:
		return dmb_fail(e, dmb_code_from_errno(r), -r, "VFIO_DEVICE_RESET of %s failed (%s): %s",
				v->bdf, ksys_errno_name(r), strerror(-r));
	}
}

/* ---- MMIO mappings of one context ---- */

int ksys_mmio_reserve(struct ksys_mmio_set *s)
{
	if (s->n < s->cap)
		return 0;
	size_t cap = s->cap ? s->cap * 2 : 8;
	struct ksys_mmio *v = reallocarray(s->v, cap, sizeof(*v));
	if (!v)
		return -ENOMEM;
	s->v = v;
	s->cap = cap;
	return 0;
}

void ksys_mmio_add(struct ksys_mmio_set *s, uint64_t iova, uint64_t length)
{
	if (s->n >= s->cap)
		abort(); /* ksys_mmio_reserve was not called */
	s->v[s->n].iova = iova;
	s->v[s->n].length = length;
	s->n++;
}

uint64_t ksys_mmio_remove(struct ksys_mmio_set *s, uint64_t iova, uint64_t length)
{
	uint64_t bytes = 0, last = UINT64_MAX;
	bool all = length == 0;
	if (!all && !dmb_range_last(iova, length, &last))
		last = UINT64_MAX;
	for (size_t i = 0; i < s->n;) {
		const struct ksys_mmio *m = &s->v[i];
		bool inside = all || (m->iova >= iova && m->iova <= last &&
				      m->length - 1 <= last - m->iova);
		if (!inside) {
			i++;
			continue;
		}
		bytes += m->length;
		s->v[i] = s->v[--s->n];
	}
	return bytes;
}

void ksys_mmio_free(struct ksys_mmio_set *s)
{
	free(s->v);
	s->v = NULL;
	s->n = s->cap = 0;
}

/* ---- restart: fd sets ---- */

int ksys_fdset_add(struct dmb_fdset *s, int fd, const char *fmt, ...)
{
	if (s->n >= DMB_MAX_OBJ_FDS)
		return -E2BIG;
	struct dmb_fd_entry *e = &s->e[s->n];
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(e->name, sizeof(e->name), fmt, ap);
	va_end(ap);
	if (r < 0 || (size_t)r >= sizeof(e->name))
		return -ENAMETOOLONG;
	e->fd = fd;
	s->n++;
	return 0;
}

int ksys_fdset_check(const struct dmb_fdset *s)
{
	if (!s || s->n > DMB_MAX_OBJ_FDS)
		return -EINVAL;
	for (size_t i = 0; i < s->n; i++) {
		if (s->e[i].fd < 0 || !memchr(s->e[i].name, '\0', sizeof(s->e[i].name)))
			return -EINVAL;
		for (size_t j = 0; j < i; j++)
			if (strcmp(s->e[i].name, s->e[j].name) == 0)
				return -EINVAL;
	}
	return 0;
}

int ksys_fdset_find(const struct dmb_fdset *s, const char *name)
{
	for (size_t i = 0; s && i < s->n && i < DMB_MAX_OBJ_FDS; i++)
		if (strncmp(s->e[i].name, name, sizeof(s->e[i].name)) == 0)
			return (int)i;
	return -1;
}

int ksys_fdname_u32(const char *name, const char *prefix, uint32_t *out)
{
	size_t n = strlen(prefix);
	if (strncmp(name, prefix, n) != 0)
		return -EINVAL;
	const char *p = name + n;
	if (!isdigit((unsigned char)p[0]) || (p[0] == '0' && p[1] != '\0'))
		return -EINVAL;
	uint64_t v = 0;
	for (; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > UINT32_MAX)
			return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

/* ---- the backend table's device ops ---- */

static inline struct ksys_vdev *vdev_of(struct dmb_bdev *bd)
{
	return dmb_container_of(bd, struct ksys_vdev, base);
}

int ksys_dev_fd(struct dmb_bdev *bd)
{
	return vdev_of(bd)->fd;
}

int ksys_dev_bar_info(struct dmb_bdev *bd, unsigned bar, struct dmb_bar_info *out,
		      struct dmb_err *e)
{
	/* mappable as VFIO says (the BAR may be mmapped): whether the kernel
	 * can also export it as a dma-buf is the backend's map_bar to say. */
	return ksys_vdev_bar_info(vdev_of(bd), bar, out, e);
}

int ksys_dev_config_read(struct dmb_bdev *bd, uint32_t off, void *buf, size_t len,
			 struct dmb_err *e)
{
	return ksys_vdev_config_read(vdev_of(bd), off, buf, len, e);
}

int ksys_dev_config_write(struct dmb_bdev *bd, uint32_t off, const void *buf, size_t len,
			  struct dmb_err *e)
{
	return ksys_vdev_config_write(vdev_of(bd), off, buf, len, e);
}

int ksys_dev_reset(struct dmb_bdev *bd, struct dmb_err *e)
{
	return ksys_vdev_reset(vdev_of(bd), e);
}
