/* sim_dev.c — the sim backend's simulated PCI functions: config space,
 * the device set, open/close, reset, P2P (map_bar) and per-device DMA.
 *
 * The model (edu-like functions, config memfd, BAR0 memfd, decode errors)
 * and the locking rules (dev_lock) are described at the top of sim.c. An
 * attached device also has a DEV record in its context's state table
 * (sim_table.c), written by dev_open and cleared by dev_close, so that the
 * next process can tell which devices each context held (sim_adopt.c).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sim_impl.h"
#include "util/log.h"
#include "util/macro.h"

static const char *const sim_default_devices[] = {
	"0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "0000:04:00.0", NULL,
};

/* ---- device config space ---------------------------------------------- */

int sim_cfg_pread(const struct sim_dev *d, uint32_t off, void *buf, size_t len, struct dmb_err *e)
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
int sim_cfg_command(const struct sim_dev *d, uint16_t *cmd, struct dmb_err *e)
{
	uint8_t b[2];
	int r = sim_cfg_pread(d, DMB_PCI_COMMAND, b, sizeof(b), e);
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
bool sim_bdf_normalize(const char *in, char out[SIM_BDF_LEN + 1])
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

/* A normalized BDF as the state table stores it: domain << 16 | bus << 8 |
 * device << 3 | function. */
uint32_t sim_bdf_pack(const char bdf[SIM_BDF_LEN + 1])
{
	unsigned long dom = strtoul(bdf, NULL, 16), bus = strtoul(bdf + 5, NULL, 16);
	unsigned long dev = strtoul(bdf + 8, NULL, 16), fn = strtoul(bdf + 11, NULL, 16);
	return (uint32_t)(dom << 16 | bus << 8 | dev << 3 | fn);
}

void sim_bdf_unpack(uint32_t v, char out[SIM_BDF_LEN + 1])
{
	snprintf(out, SIM_BDF_LEN + 1, "%04x:%02x:%02x.%x", (unsigned)(v >> 16),
		 (unsigned)(v >> 8) & 0xffu, (unsigned)(v >> 3) & 0x1fu, (unsigned)v & 7u);
}

/* ---- the device set ----------------------------------------------------- */

static void sim_dev_fini(struct sim_dev *d)
{
	d->cfg_fd = safe_close(d->cfg_fd);
	if (d->bar0) {
		sim_region_unref(d->bar0);
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
	d->bdf_packed = sim_bdf_pack(d->bdf);
	atomic_init(&d->resets, 0);

	/* The memfd names let a test find a device's BAR memory in
	 * /proc/self/fd and check it with pread(), bypassing the sim. */
	snprintf(name, sizeof(name), "dmb-sim:%s:config", bdf);
	int fd = sealed_memfd(name, SIM_CFG_SIZE, e);
	if (fd < 0)
		return fd;
	d->cfg_fd = fd;
	uint64_t dev_unused;
	int r = sim_file_id(fd, &dev_unused, &d->cfg_ino, e);
	if (r < 0)
		return r;
	cfg_initial(d, cfg);
	r = cfg_pwrite(d, 0, cfg, sizeof(cfg), e);
	if (r < 0)
		return r;

	snprintf(name, sizeof(name), "dmb-sim:%s:bar0", bdf);
	fd = sealed_memfd(name, SIM_BAR0_SIZE, e);
	if (fd < 0)
		return fd;
	r = sim_region_new(s, fd, SIM_BAR0_SIZE, SIM_IOVA_ALIGNMENT, true, &d->bar0, e);
	if (r < 0) {
		close(fd);
		return r;
	}
	d->bar0->dev = d;
	d->bar0->bar = 0;
	return 0;
}

static int sim_devices_add(struct sim_backend *s, const char *const *list, size_t n,
			   const char *const *noiommu, struct dmb_err *e);

static bool in_list(const char *const *list, const char *bdf)
{
	char a[SIM_BDF_LEN + 1];
	for (size_t i = 0; list && list[i]; i++)
		if (sim_bdf_normalize(list[i], a) && strcmp(a, bdf) == 0)
			return true;
	return false;
}

int sim_devices_create(struct sim_backend *s, const char *const *list_in,
		       const char *const *noiommu, struct dmb_err *e)
{
	size_t n = 0, n_in = 0, n_no = 0;
	const char *const *list = list_in ? list_in : sim_default_devices;
	while (list[n_in])
		if (++n_in > SIM_MAX_DEVICES)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG,
					"sim: more than %u simulated devices", SIM_MAX_DEVICES);
	while (noiommu && noiommu[n_no])
		if (++n_no > SIM_MAX_DEVICES)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG,
					"sim: more than %u simulated devices", SIM_MAX_DEVICES);
	/* The no-IOMMU devices not in the list are added after it. */
	const char **all = calloc(n_in + n_no + 1, sizeof(*all));
	if (!all)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for devices");
	for (size_t i = 0; i < n_in; i++)
		all[n++] = list[i];
	for (size_t i = 0; i < n_no; i++) {
		char bdf[SIM_BDF_LEN + 1];
		if (!sim_bdf_normalize(noiommu[i], bdf)) {
			free(all);
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"sim: simulated no-IOMMU device '%.32s' is not a PCI address "
					"dddd:bb:dd.f",
					noiommu[i]);
		}
		if (!in_list(list, bdf))
			all[n++] = noiommu[i];
	}
	if (n > SIM_MAX_DEVICES) {
		free(all);
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, E2BIG,
				"sim: more than %u simulated devices", SIM_MAX_DEVICES);
	}
	int r = sim_devices_add(s, all, n, noiommu, e);
	free(all);
	return r;
}

static int sim_devices_add(struct sim_backend *s, const char *const *list, size_t n,
			   const char *const *noiommu, struct dmb_err *e)
{
	if (n == 0)
		return 0;

	s->devs = calloc(n, sizeof(*s->devs));
	if (!s->devs)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "sim: out of memory for devices");
	for (size_t i = 0; i < n; i++) {
		char bdf[SIM_BDF_LEN + 1];
		if (!sim_bdf_normalize(list[i], bdf))
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"sim: simulated device '%.32s' is not a PCI address dddd:bb:dd.f",
					list[i]);
		for (size_t j = 0; j < s->n_devs; j++)
			if (strcmp(s->devs[j].bdf, bdf) == 0)
				return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
						"sim: simulated device %s is listed twice", bdf);
		int r = sim_dev_init(s, &s->devs[s->n_devs], (unsigned)i, bdf, e);
		s->devs[s->n_devs].noiommu = in_list(noiommu, bdf);
		s->n_devs++; /* counted even half-built, so sim_devices_destroy sees it */
		if (r < 0)
			return r;
	}
	return 0;
}

void sim_devices_destroy(struct sim_backend *s)
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

struct sim_dev *sim_dev_find(struct sim_backend *s, const char *bdf)
{
	for (size_t i = 0; i < s->n_devs; i++)
		if (strcmp(s->devs[i].bdf, bdf) == 0)
			return &s->devs[i];
	return NULL;
}

/* "0000:01:00.0, 0000:02:00.0, ..." for error sentences, bounded. */
void sim_dev_list(const struct sim_backend *s, char *buf, size_t size)
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

/* ---- devices ------------------------------------------------------------- */

int sim_dev_open(struct dmb_bctx *bc, const char *bdf_in, struct dmb_bdev **out,
		 struct dmb_dev_info *info, struct dmb_err *e)
{
	char bdf[SIM_BDF_LEN + 1], have[160];

	if (!bc || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dev_open called without a context");
	struct sim_ctx *c = sim_ctx_of(bc);
	struct sim_backend *s = c->be;
	if (!sim_bdf_normalize(bdf_in, bdf))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%.32s' is not a PCI address (expected dddd:bb:dd.f)", bdf_in ? bdf_in : "");

	struct sim_dev *d = sim_dev_find(s, bdf);
	if (!d) {
		sim_dev_list(s, have, sizeof(have));
		return dmb_fail(e, DMB_E_NOT_FOUND, ENODEV, "no simulated device at %s; the sim has: %s",
				bdf, have);
	}

	int r = sim_check_dev_kind(c, d, e);
	if (r < 0)
		return r;
	sim_lock_excl(s);
	if (d->ctx) {
		bool same = d->ctx == c;
		sim_unlock(s);
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"simulated device %s is already open in %s context", bdf,
				same ? "this" : "another");
	}
	/* The attachment is in the context's state before it is in effect. */
	struct sim_rec rec;
	uint32_t slot;
	sim_dev_rec(d, &rec);
	r = sim_table_put(&c->tab, &rec, &slot, e);
	if (r == 0)
		sim_dev_attach(c, d, slot);
	sim_unlock(s);
	if (r < 0)
		return r;

	sim_dev_info_fill(d, info);
	*out = &d->base;
	return 0;
}

void sim_dev_info_fill(const struct sim_dev *d, struct dmb_dev_info *info)
{
	if (!info)
		return;
	memset(info, 0, sizeof(*info));
	info->vendor = SIM_VENDOR;
	info->device = SIM_DEVICE;
	snprintf(info->group, sizeof(info->group), "sim-%u", d->index);
	info->viable = true;
}

/* The DEV record of d: its BDF and the identities of its two memfds. */
void sim_dev_rec(const struct sim_dev *d, struct sim_rec *r)
{
	memset(r, 0, sizeof(*r));
	r->tag = SIM_REC_DEV;
	r->w[0] = d->cfg_ino;
	r->w[1] = d->bar0->file_dev;
	r->w[2] = d->bar0->file_ino;
	r->src = d->bdf_packed;
}

/* Caller holds dev_lock exclusive; slot is d's DEV record in c's table. */
void sim_dev_attach(struct sim_ctx *c, struct sim_dev *d, uint32_t slot)
{
	d->ctx = c;
	d->base.ctx = &c->base;
	d->slot = slot;
	LIST_INSERT_HEAD(&c->devs, d, link);
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
void sim_dev_close(struct dmb_bdev *bd)
{
	if (!bd)
		return;
	struct sim_dev *d = sim_dev_of(bd);
	struct sim_backend *s = d->be;

	sim_lock_excl(s);
	if (!d->ctx) {
		sim_unlock(s);
		log_error("sim: device %s closed twice", d->bdf);
		return;
	}
	/* Out of the context's state first: killed from here on, the next
	 * process does not adopt the device, and opens it afresh. */
	sim_table_clear(&d->ctx->tab, d->slot);
	LIST_REMOVE(d, link);
	d->ctx = NULL;
	d->base.ctx = NULL;
	if (cfg_set_command(d, 0, NULL) < 0)
		log_error("sim: could not clear the command register of %s on close", d->bdf);
	bar_zero(d);
	sim_unlock(s);
}

int sim_dev_fd(struct dmb_bdev *bd)
{
	return bd ? sim_dev_of(bd)->cfg_fd : -EINVAL;
}

/* An open device, or an error naming it; caller holds dev_lock. */
static int dev_check_open(const struct sim_dev *d, const char *op, struct dmb_err *e)
{
	if (!d->ctx)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENODEV, "sim: %s of %s, which is not open",
				op, d->bdf);
	return 0;
}

int sim_dev_bar_info(struct dmb_bdev *bd, unsigned bar, struct dmb_bar_info *out,
		     struct dmb_err *e)
{
	if (!bd || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dev_bar_info called without a device");
	struct sim_dev *d = sim_dev_of(bd);
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

int sim_dev_config_read(struct dmb_bdev *bd, uint32_t off, void *buf, size_t len,
			struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: config read without a device");
	struct sim_dev *d = sim_dev_of(bd);
	int r = cfg_bounds(d, off, buf, len, "read", e);
	if (r < 0 || len == 0)
		return r;
	sim_lock_shared(d->be);
	r = dev_check_open(d, "config read", e);
	if (r == 0)
		r = sim_cfg_pread(d, off, buf, len, e);
	sim_unlock(d->be);
	return r;
}

/* Raw bytes: the sim has no read-only or virtualised registers. Exclusive,
 * so a DMA in flight finishes before a change of decoding takes effect. */
int sim_dev_config_write(struct dmb_bdev *bd, uint32_t off, const void *buf, size_t len,
			 struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: config write without a device");
	struct sim_dev *d = sim_dev_of(bd);
	int r = cfg_bounds(d, off, buf, len, "write", e);
	if (r < 0 || len == 0)
		return r;
	sim_lock_excl(d->be);
	r = dev_check_open(d, "config write", e);
	if (r == 0)
		r = cfg_pwrite(d, off, buf, len, e);
	sim_unlock(d->be);
	return r;
}

/* pci_try_reset_function() under vfio-pci: save config space, disable the
 * command register, reset (device state and BAR contents lost), restore
 * config space, so the command register comes back as it was. */
int sim_dev_reset(struct dmb_bdev *bd, struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: reset without a device");
	struct sim_dev *d = sim_dev_of(bd);
	uint8_t saved[SIM_CFG_SIZE];

	sim_lock_excl(d->be);
	int r = dev_check_open(d, "reset", e);
	if (r == 0)
		r = sim_cfg_pread(d, 0, saved, sizeof(saved), e);
	if (r == 0)
		r = cfg_set_command(d, 0, e);
	if (r == 0) {
		bar_zero(d);
		uint32_t n = atomic_fetch_add_explicit(&d->resets, 1, memory_order_relaxed) + 1;
		put_le32(saved + SIM_CFG_RESET_COUNT, n);
		r = cfg_pwrite(d, 0, saved, sizeof(saved), e);
	}
	sim_unlock(d->be);
	return r;
}

/* ---- P2P ------------------------------------------------------------------ */

int sim_map_bar(struct dmb_bctx *bc, struct dmb_bdev *peer, unsigned bar, uint64_t offset,
		uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e)
{
	if (!bc || !peer)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: map_bar called without a context or device");
	struct sim_ctx *c = sim_ctx_of(bc);
	struct sim_dev *d = sim_dev_of(peer);
	uint64_t last;

	if (d->be != c->be)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: device %s belongs to another backend",
				d->bdf);
	int r = sim_check_args(iova, length, prot, &last, e);
	if (r < 0)
		return r;

	/* What the dma-buf export would refuse (VFIO_DEVICE_FEATURE_DMA_BUF). */
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

	r = sim_check_iova(c, offset, iova, length, last, e);
	if (r < 0)
		return r;

	/* Shared: the decoding check and the insertion are one step against
	 * dev_config_write and dev_reset (another context may run them). */
	sim_lock_shared(c->be);
	r = dev_check_open(d, "map_bar", e);
	uint16_t cmd = 0;
	if (r == 0)
		r = sim_cfg_command(d, &cmd, e);
	if (r == 0 && !(cmd & DMB_PCI_COMMAND_MEMORY))
		/* type1: the fault on the BAR mmap fails MAP_DMA with EFAULT. */
		r = dmb_fail(e, DMB_E_FAILED_PRECONDITION, EFAULT,
			     "cannot map BAR%u of %s at IOVA 0x%" PRIx64 ": its memory decoding is off "
			     "(command 0x%04x)", bar, d->bdf, iova, cmd);
	if (r == 0)
		r = sim_area_insert(c, d->bar0, offset, iova, last, prot, e);
	sim_unlock(c->be);
	return r;
}

int sim_dev_dma(struct dmb_bdev *bd, uint64_t iova, void *buf, size_t len, bool to_memory,
		struct dmb_err *e)
{
	if (!bd)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dev_dma called without a device");
	struct sim_dev *d = sim_dev_of(bd);
	struct sim_backend *s = d->be;
	char who[SIM_BDF_LEN + 8];
	uint16_t cmd = 0;

	snprintf(who, sizeof(who), " by %s", d->bdf);
	sim_lock_shared(s);
	int r = dev_check_open(d, "DMA", e);
	if (r == 0)
		r = sim_cfg_command(d, &cmd, e);
	if (r == 0 && !(cmd & DMB_PCI_COMMAND_MASTER))
		r = dmb_fail(e, DMB_E_FAILED_PRECONDITION, EPERM,
			     "%s cannot DMA at IOVA 0x%" PRIx64 ": its bus mastering is off "
			     "(command 0x%04x)", d->bdf, iova, cmd);
	if (r == 0 && d->noiommu)
		r = sim_phys_xfer(d->ctx, who, iova, buf, len, to_memory, e);
	else if (r == 0)
		r = sim_dma_xfer(d->ctx, who, iova, buf, len, to_memory, e);
	sim_unlock(s);
	return r;
}