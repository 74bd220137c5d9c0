#include "fake.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/ksys.h"
#include "backend/uapi/iommufd.h"

struct fake_call fake_calls[FAKE_MAX_CALLS];
int fake_ncalls;
static fake_handler handler;

void fake_fd_path(int fd, char *out, size_t n)
{
	char link[64];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t len = readlink(link, out, n - 1);
	out[len < 0 ? 0 : len] = '\0';
}

bool fake_path_endswith(const char *path, const char *suffix)
{
	size_t a = strlen(path), b = strlen(suffix);
	return a >= b && strcmp(path + a - b, suffix) == 0;
}

static int recorder(int fd, unsigned long req, void *arg)
{
	char path[512];
	fake_fd_path(fd, path, sizeof(path));
	if (fake_ncalls < FAKE_MAX_CALLS) {
		struct fake_call *c = &fake_calls[fake_ncalls++];
		memset(c, 0, sizeof(*c));
		c->fd = fd;
		c->req = req;
		c->argval = (uintptr_t)arg;
		snprintf(c->path, sizeof(c->path), "%s", path);
		int fl = fcntl(fd, F_GETFD);
		c->cloexec = fl >= 0 && (fl & FD_CLOEXEC);
		switch (req) {
		case VFIO_GET_API_VERSION:
		case VFIO_CHECK_EXTENSION:
		case VFIO_SET_IOMMU:
		case VFIO_GROUP_UNSET_CONTAINER:
		case VFIO_DEVICE_RESET:
			break; /* by value, or no argument */
		case VFIO_GROUP_SET_CONTAINER:
			memcpy(c->bytes, arg, sizeof(int));
			c->len = sizeof(int);
			break;
		case VFIO_GROUP_GET_DEVICE_FD:
			snprintf(c->str, sizeof(c->str), "%s", (const char *)arg);
			break;
		default: {
			/* size-first (iommufd) or argsz-first (VFIO) */
			uint32_t sz;
			memcpy(&sz, arg, sizeof(sz));
			c->len = sz < sizeof(c->bytes) ? sz : sizeof(c->bytes);
			memcpy(c->bytes, arg, c->len);
			break;
		}
		}
	}
	return handler ? handler(fd, req, arg, path) : -ENOTTY;
}

void fake_install(fake_handler h)
{
	handler = h;
	fake_reset();
	ksys_ops.ioctl = recorder;
}

void fake_uninstall(void)
{
	ksys_ops.ioctl = ksys_ioctl_default;
	handler = NULL;
}

void fake_reset(void)
{
	fake_ncalls = 0;
}

const struct fake_call *fake_find(unsigned long req, int nth)
{
	for (int i = 0; i < fake_ncalls; i++)
		if (fake_calls[i].req == req && nth-- == 0)
			return &fake_calls[i];
	return NULL;
}

int fake_count(unsigned long req)
{
	int n = 0;
	for (int i = 0; i < fake_ncalls; i++)
		n += fake_calls[i].req == req;
	return n;
}

bool fake_all_cloexec(void)
{
	for (int i = 0; i < fake_ncalls; i++)
		if (!fake_calls[i].cloexec) {
			fprintf(stderr, "ioctl %#lx on fd %d (%s) without FD_CLOEXEC\n",
				fake_calls[i].req, fake_calls[i].fd, fake_calls[i].path);
			return false;
		}
	return true;
}

char *fake_tree_new(void)
{
	char *root = strdup("/tmp/dmbkXXXXXX");
	if (!root || !mkdtemp(root))
		abort();
	return root;
}

void fake_tree_free(char *root)
{
	if (!root)
		return;
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", root);
	free(root);
}

void fake_mkdirs(const char *root, const char *rel)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", root, rel);
	for (char *p = path + strlen(root) + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(path, 0755);
			*p = '/';
		}
	}
	mkdir(path, 0755);
}

static void parent_dirs(const char *root, const char *rel)
{
	char dir[1024];
	snprintf(dir, sizeof(dir), "%s", rel);
	char *slash = strrchr(dir, '/');
	if (slash) {
		*slash = '\0';
		fake_mkdirs(root, dir);
	}
}

void fake_write(const char *root, const char *rel, const char *content)
{
	char path[1024];
	parent_dirs(root, rel);
	snprintf(path, sizeof(path), "%s/%s", root, rel);
	FILE *f = fopen(path, "w");
	if (!f)
		abort();
	fputs(content, f);
	fclose(f);
}

void fake_symlink(const char *root, const char *rel, const char *target)
{
	char path[1024];
	parent_dirs(root, rel);
	snprintf(path, sizeof(path), "%s/%s", root, rel);
	unlink(path);
	if (symlink(target, path) < 0)
		abort();
}

void fake_pci(const char *root, const char *bdf, unsigned vendor, unsigned device,
	      const char *driver, int group, const char *vfio_dev)
{
	char rel[512], val[64], target[256];
	snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/vendor", bdf);
	snprintf(val, sizeof(val), "0x%04x\n", vendor);
	fake_write(root, rel, val);
	snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/device", bdf);
	snprintf(val, sizeof(val), "0x%04x\n", device);
	fake_write(root, rel, val);
	if (driver) {
		snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/driver", bdf);
		snprintf(target, sizeof(target), "../../../bus/pci/drivers/%s", driver);
		fake_symlink(root, rel, target);
	}
	if (group >= 0) {
		snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/iommu_group", bdf);
		snprintf(target, sizeof(target), "../../../../kernel/iommu_groups/%d", group);
		fake_symlink(root, rel, target);
		/* group membership: devices/<bdf> -> the device directory */
		snprintf(rel, sizeof(rel), "sys/kernel/iommu_groups/%d/devices/%s", group, bdf);
		snprintf(target, sizeof(target), "%s/sys/bus/pci/devices/%s", root, bdf);
		fake_symlink(root, rel, target);
	}
	if (vfio_dev) {
		snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/vfio-dev/%s", bdf, vfio_dev);
		fake_mkdirs(root, rel);
	}
}

int fake_memfd(uint64_t size)
{
	int fd = memfd_create("fake-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
		abort();
	uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		abort();
	for (uint64_t i = 0; i < size; i++)
		p[i] = (uint8_t)(i * 7 + 1);
	munmap(p, size);
	return fd;
}

void fake_vfio_device_file(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)(FAKE_REGION_OFFSET(VFIO_PCI_CONFIG_REGION_INDEX) +
					     FAKE_CFG_SIZE)) < 0)
		abort();
	uint32_t id = FAKE_BAR0_ID, mark = FAKE_BAR0_MARK;
	uint8_t cfg[FAKE_CFG_SIZE] = {0};
	uint32_t bars[6] = {0xfea00000u, 0, 0x0000c001u, 0xfeb00000u, 0, 0};
	cfg[0] = 0x34;
	cfg[1] = 0x12;
	cfg[2] = 0xe8;
	cfg[3] = 0x11;
	cfg[4] = 0x06; /* memory + bus master */
	memcpy(cfg + 0x10, bars, sizeof(bars));
	if (pwrite(fd, &id, 4, (off_t)FAKE_REGION_OFFSET(0)) != 4 ||
	    pwrite(fd, &mark, 4, (off_t)FAKE_REGION_OFFSET(0) + 0x1000) != 4 ||
	    pwrite(fd, cfg, sizeof(cfg), (off_t)FAKE_REGION_OFFSET(VFIO_PCI_CONFIG_REGION_INDEX)) !=
		    (ssize_t)sizeof(cfg))
		abort();
	close(fd);
}

int fake_vfio_region_info(void *arg)
{
	struct vfio_region_info *ri = arg;
	static const struct {
		uint64_t size;
		uint32_t flags;
	} regions[VFIO_PCI_CONFIG_REGION_INDEX + 1] = {
		[0] = {0x100000, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE |
					 VFIO_REGION_INFO_FLAG_MMAP},
		[2] = {0x100, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE},
		[3] = {0x4000, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE},
		[VFIO_PCI_CONFIG_REGION_INDEX] = {FAKE_CFG_SIZE, VFIO_REGION_INFO_FLAG_READ |
								 VFIO_REGION_INFO_FLAG_WRITE},
	};
	if (ri->argsz < sizeof(*ri) || ri->index > VFIO_PCI_CONFIG_REGION_INDEX)
		return -EINVAL;
	ri->size = regions[ri->index].size;
	ri->flags = regions[ri->index].flags;
	ri->offset = FAKE_REGION_OFFSET(ri->index);
	ri->cap_offset = 0;
	return 0;
}

uint16_t fake_cfg_read16(const char *path, uint32_t off)
{
	uint16_t v = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || pread(fd, &v, 2, (off_t)(FAKE_REGION_OFFSET(VFIO_PCI_CONFIG_REGION_INDEX) + off)) != 2)
		abort();
	close(fd);
	return v;
}

void fake_cfg_write16(const char *path, uint32_t off, uint16_t v)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 ||
	    pwrite(fd, &v, 2, (off_t)(FAKE_REGION_OFFSET(VFIO_PCI_CONFIG_REGION_INDEX) + off)) != 2)
		abort();
	close(fd);
}

int fake_noiommu_open(const struct fake_noiommu *k, const char *path, int flags)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	if (strncmp(base, "noiommu-vfio", 12) == 0 && !k->rawio)
		return -EPERM;
	int fd = open(path, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int fake_noiommu_get_pa(const struct fake_noiommu *k, void *arg)
{
	struct dmb_iommu_ioas_noiommu_get_pa *q = arg;
	const uint64_t page = 4096;
	if (!k->rawio)
		return -EPERM;
	if (q->flags || q->__reserved)
		return -EOPNOTSUPP;
	if (!q->length)
		return -EINVAL;
	if (q->iova >= UINT64_MAX) /* ULONG_MAX on LP64 */
		return -EOVERFLOW;
	if (q->ioas_id != k->ioas_id)
		return -ENOENT;
	for (size_t i = 0; i < k->n; i++) {
		uint64_t start = k->area[i].iova, last = start + k->area[i].length - 1;
		if (q->iova < start || q->iova > last)
			continue;
		if (!k->attached)
			return -EOPNOTSUPP;
		uint64_t iova = q->iova, max = q->length;
		uint64_t pg = (iova - start) / page;
		uint64_t phys = k->area[i].phys[pg] + iova % page;
		uint64_t len = page - iova % page;
		if (len > last - iova + 1)
			len = last - iova + 1;
		uint64_t cur = k->area[i].phys[pg];
		while (len < max && (pg + 1) * page <= last - start) {
			if (k->area[i].phys[pg + 1] != cur + page)
				break;
			pg++;
			cur += page;
			len += page;
		}
		if (len > max)
			len = max;
		q->out_phys = phys;
		q->length = len;
		return 0;
	}
	return -ENOENT;
}

/* ---- the kernel's areas ---- */

static uint64_t area_last(const struct fake_area *a)
{
	return a->iova + (a->length - 1);
}

int fake_areas_map(struct fake_areas *s, uint64_t iova, uint64_t length, uint64_t offset)
{
	if (length == 0 || iova + (length - 1) < iova)
		return -EINVAL;
	uint64_t last = iova + (length - 1);
	size_t i = 0;
	while (i < s->n && s->a[i].iova < iova)
		i++;
	if ((i > 0 && area_last(&s->a[i - 1]) >= iova) || (i < s->n && s->a[i].iova <= last))
		return -EEXIST;
	if (s->n == FAKE_MAX_AREAS)
		return -ENOMEM;
	memmove(&s->a[i + 1], &s->a[i], (s->n - i) * sizeof(s->a[0]));
	s->a[i] = (struct fake_area){ iova, length, offset };
	s->n++;
	return 0;
}

static void area_remove(struct fake_areas *s, size_t i)
{
	memmove(&s->a[i], &s->a[i + 1], (s->n - i - 1) * sizeof(s->a[0]));
	s->n--;
}

int fake_areas_unmap_iommufd(struct fake_areas *s, uint64_t iova, uint64_t length,
			     uint64_t *unmapped)
{
	uint64_t last = iova + (length - 1), bytes = 0;
	*unmapped = 0;
	if (length == 0 || last < iova)
		return -EINVAL;
	size_t i = 0;
	while (i < s->n && area_last(&s->a[i]) < iova)
		i++;
	while (i < s->n && s->a[i].iova <= last) {
		if (s->a[i].iova < iova || area_last(&s->a[i]) > last) {
			*unmapped = bytes;
			return -ENOENT;
		}
		bytes += s->a[i].length;
		area_remove(s, i);
	}
	*unmapped = bytes;
	return bytes ? 0 : -ENOENT;
}

int fake_areas_unmap_type1(struct fake_areas *s, uint64_t iova, uint64_t length,
			   uint64_t *unmapped)
{
	uint64_t last = iova + (length - 1), bytes = 0;
	*unmapped = 0;
	if (length == 0 || last < iova)
		return -EINVAL;
	const struct fake_area *lo = fake_areas_find(s, iova), *hi = fake_areas_find(s, last);
	if ((lo && lo->iova != iova) || (hi && area_last(hi) != last))
		return -EINVAL;
	size_t i = 0;
	while (i < s->n && s->a[i].iova < iova)
		i++;
	while (i < s->n && s->a[i].iova <= last) {
		bytes += s->a[i].length;
		area_remove(s, i);
	}
	*unmapped = bytes;
	return 0;
}

const struct fake_area *fake_areas_find(const struct fake_areas *s, uint64_t iova)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->a[i].iova <= iova && area_last(&s->a[i]) >= iova)
			return &s->a[i];
	return NULL;
}
