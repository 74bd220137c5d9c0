/* Unit tests of the sim backend's simulated PCI devices and P2P
 * (daemon/backend/sim.c): open/close, config space, reset, map_bar and the
 * per-device DMA engine.
 *
 * Claims about memory are checked against the memfds themselves with
 * pread()/pwrite(): guest RAM through the test's own memfd, a device's BAR
 * through the sim's BAR memfd found by name in /proc/self/fd
 * ("memfd:dmb-sim:<bdf>:bar0"), and the command register through the
 * device fd (dev_fd), exactly as a client holding it would. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend/backend.h"

#define PG UINT64_C(4096)
#define MiB (UINT64_C(1) << 20)
#define RAM_SIZE (4 * MiB)
#define BAR0_SIZE MiB
#define BASE UINT64_C(0x10000000)    /* RAM mappings */
#define P2P UINT64_C(0x200000000)    /* BAR mappings */
#define MSI_START UINT64_C(0xFEE00000)

#define R DMB_PROT_READ
#define W DMB_PROT_WRITE
#define RW (DMB_PROT_READ | DMB_PROT_WRITE)
#define MEM DMB_PCI_COMMAND_MEMORY
#define MASTER DMB_PCI_COMMAND_MASTER

#define BDF_A "0000:01:00.0"
#define BDF_B "0000:02:00.0"

struct fx {
	struct dmb_backend *be;
	const struct dmb_backend_ops *ops;
	struct dmb_bctx *c1, *c2;  /* A is attached to c1, B to c2 */
	struct dmb_bdev *a, *b;
	int a_cfg, b_cfg;          /* the client's duplicates of the device fds */
	int b_bar;                 /* B's BAR0 memfd, opened by the test */
	int ram_fd;                /* RAM_SIZE, patterned */
	struct dmb_bregion *ram;
	struct dmb_err e;
};

static uint8_t pattern(uint64_t off)
{
	return (uint8_t)(off * 7 + 3);
}

static int make_memfd(uint64_t size)
{
	int fd = memfd_create("sim-dev-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	uint8_t *buf = malloc(size);
	assert_non_null(buf);
	for (uint64_t i = 0; i < size; i++)
		buf[i] = pattern(i);
	assert_int_equal(pwrite(fd, buf, size, 0), (ssize_t)size);
	free(buf);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	return fd;
}

/* The sim's memfd named dmb-sim:<bdf>:<what>, reopened read-write by path
 * so that the test has its own fd, independent of the sim. -1 if absent. */
static int find_sim_memfd(const char *bdf, const char *what)
{
	char want[96], link[128], path[300];
	snprintf(want, sizeof(want), "/memfd:dmb-sim:%s:%s (deleted)", bdf, what);
	DIR *dir = opendir("/proc/self/fd");
	assert_non_null(dir);
	int found = -1;
	struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = '\0';
		if (strcmp(link, want) == 0) {
			found = open(path, O_RDWR | O_CLOEXEC);
			assert_true(found >= 0);
			break;
		}
	}
	closedir(dir);
	return found;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	struct dmb_backend_config cfg = { .name = "sim" };
	struct dmb_dev_info info;
	assert_int_equal(dmb_sim_create(&cfg, &f->be, &f->e), 0);
	f->ops = f->be->ops;
	assert_int_equal(f->ops->ctx_open(f->be, &f->c1, &f->e), 0);
	assert_int_equal(f->ops->ctx_open(f->be, &f->c2, &f->e), 0);
	assert_int_equal(f->ops->dev_open(f->c1, BDF_A, &f->a, &info, &f->e), 0);
	assert_int_equal(f->ops->dev_open(f->c2, BDF_B, &f->b, &info, &f->e), 0);
	f->a_cfg = fcntl(f->ops->dev_fd(f->a), F_DUPFD_CLOEXEC, 3);
	f->b_cfg = fcntl(f->ops->dev_fd(f->b), F_DUPFD_CLOEXEC, 3);
	assert_true(f->a_cfg >= 0 && f->b_cfg >= 0);
	f->b_bar = find_sim_memfd(BDF_B, "bar0");
	assert_true(f->b_bar >= 0);
	f->ram_fd = make_memfd(RAM_SIZE);
	struct dmb_region_desc d = { .fd = f->ram_fd, .size = RAM_SIZE, .page_size = PG, .writable = true };
	assert_int_equal(f->ops->region_open(f->be, &d, &f->ram, &f->e), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	/* ctx_close closes the devices still attached. */
	f->ops->ctx_close(f->c1);
	f->ops->ctx_close(f->c2);
	f->ops->region_close(f->ram);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	dmb_backend_destroy(f->be);
	close(f->a_cfg);
	close(f->b_cfg);
	close(f->b_bar);
	close(f->ram_fd);
	free(f);
	return 0;
}

/* ---- helpers ----------------------------------------------------------- */

static void assert_msg_has(const struct fx *f, const char *needle)
{
	if (!strstr(f->e.msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", f->e.msg, needle);
}

/* The command register through the client's fd, behind the sim's back. */
static void client_set_cmd(int cfg_fd, uint16_t cmd)
{
	uint8_t b[2] = { (uint8_t)cmd, (uint8_t)(cmd >> 8) };
	assert_int_equal(pwrite(cfg_fd, b, 2, DMB_PCI_COMMAND), 2);
}

static uint16_t client_get_cmd(int cfg_fd)
{
	uint8_t b[2];
	assert_int_equal(pread(cfg_fd, b, 2, DMB_PCI_COMMAND), 2);
	return (uint16_t)(b[0] | b[1] << 8);
}

/* The command register through the broker's path. */
static int set_cmd(struct fx *f, struct dmb_bdev *d, uint16_t cmd)
{
	uint8_t b[2] = { (uint8_t)cmd, (uint8_t)(cmd >> 8) };
	dmb_err_clear(&f->e);
	return f->ops->dev_config_write(d, DMB_PCI_COMMAND, b, 2, &f->e);
}

static uint16_t get_cmd(struct fx *f, struct dmb_bdev *d)
{
	uint8_t b[2];
	assert_int_equal(f->ops->dev_config_read(d, DMB_PCI_COMMAND, b, 2, &f->e), 0);
	return (uint16_t)(b[0] | b[1] << 8);
}

static int map_ram(struct fx *f, struct dmb_bctx *c, uint64_t off, uint64_t iova, uint64_t len,
		   uint32_t prot)
{
	dmb_err_clear(&f->e);
	return f->ops->map(c, f->ram, off, iova, len, prot, &f->e);
}

static int map_bar(struct fx *f, struct dmb_bctx *c, struct dmb_bdev *peer, unsigned bar,
		   uint64_t off, uint64_t iova, uint64_t len, uint32_t prot)
{
	dmb_err_clear(&f->e);
	return f->ops->map_bar(c, peer, bar, off, iova, len, prot, &f->e);
}

static int unmap(struct fx *f, struct dmb_bctx *c, uint64_t iova, uint64_t len, uint64_t *n)
{
	dmb_err_clear(&f->e);
	return f->ops->unmap(c, iova, len, n, &f->e);
}

static int dev_dma(struct fx *f, struct dmb_bdev *d, uint64_t iova, void *buf, size_t len,
		   bool to_memory)
{
	dmb_err_clear(&f->e);
	return f->ops->dev_dma(d, iova, buf, len, to_memory, &f->e);
}

static uint8_t fd_byte(int fd, uint64_t off)
{
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	return b;
}

static void fill(uint8_t *buf, size_t len, uint8_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(seed + 13 * i);
}

/* [off, off+len) of fd all equal to v. */
static void assert_fd_all(int fd, uint64_t off, size_t len, uint8_t v)
{
	uint8_t *buf = malloc(len);
	assert_non_null(buf);
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	for (size_t i = 0; i < len; i++)
		if (buf[i] != v)
			fail_msg("byte 0x%" PRIx64 " is 0x%02x, not 0x%02x", off + i, buf[i], v);
	free(buf);
}

/* A bus-mastering, B decoding memory, and B's BAR0 [0x10000, +64 KiB) mapped
 * read-write at P2P in A's context. */
#define BAR_OFF UINT64_C(0x10000)
#define BAR_LEN UINT64_C(0x10000)
static void p2p_ready(struct fx *f)
{
	assert_int_equal(set_cmd(f, f->a, MASTER), 0);
	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, BAR_OFF, P2P, BAR_LEN, RW), 0);
}

/* ---- the backend and its device set ------------------------------------- */

static void test_features_and_default_devices(void **state)
{
	struct fx *f = *state;
	bool p2p = false, devices = false;
	for (const char *const *p = f->be->features; *p; p++) {
		p2p |= strcmp(*p, "p2p") == 0;
		devices |= strcmp(*p, "devices") == 0;
	}
	assert_true(p2p && devices);
	assert_non_null(f->ops->dev_open);
	assert_non_null(f->ops->map_bar);
	assert_non_null(f->ops->dev_dma);

	/* The four defaults: A and B are taken, the other two open. */
	struct dmb_bdev *d3 = NULL, *d4 = NULL;
	struct dmb_dev_info info;
	assert_int_equal(f->ops->dev_open(f->c1, "0000:03:00.0", &d3, &info, &f->e), 0);
	assert_int_equal(info.vendor, 0x1234);
	assert_int_equal(info.device, 0x11e8);
	assert_string_equal(info.group, "sim-2");
	assert_true(info.viable);
	assert_int_equal(f->ops->dev_open(f->c1, "0000:04:00.0", &d4, NULL, &f->e), 0);
	f->ops->dev_close(d3);
	f->ops->dev_close(d4);
}

static void test_custom_device_list(void **state)
{
	(void)state;
	const char *const list[] = { "0000:65:00.0", "0000:AB:1F.7", NULL };
	struct dmb_backend_config cfg = { .name = "sim", .sim_devices = list };
	struct dmb_backend *be = NULL;
	struct dmb_bctx *c = NULL;
	struct dmb_bdev *d = NULL;
	struct dmb_dev_info info;
	struct dmb_err e = { 0 };

	assert_int_equal(dmb_sim_create(&cfg, &be, &e), 0);
	assert_int_equal(be->ops->ctx_open(be, &c, &e), 0);
	assert_int_equal(be->ops->dev_open(c, "0000:01:00.0", &d, NULL, &e), -ENODEV);
	if (!strstr(e.msg, "0000:65:00.0, 0000:ab:1f.7"))
		fail_msg("\"%s\" does not list the devices", e.msg);
	assert_int_equal(be->ops->dev_open(c, "0000:ab:1f.7", &d, &info, &e), 0);
	assert_string_equal(info.group, "sim-1");
	be->ops->ctx_close(c); /* closes d too */
	dmb_backend_destroy(be);

	/* An empty list is a sim without devices. */
	const char *const none[] = { NULL };
	cfg.sim_devices = none;
	assert_int_equal(dmb_sim_create(&cfg, &be, &e), 0);
	assert_int_equal(be->ops->ctx_open(be, &c, &e), 0);
	dmb_err_clear(&e);
	assert_int_equal(be->ops->dev_open(c, "0000:01:00.0", &d, NULL, &e), -ENODEV);
	if (!strstr(e.msg, "none"))
		fail_msg("\"%s\" does not say the sim has none", e.msg);
	be->ops->ctx_close(c);
	dmb_backend_destroy(be);

	/* Malformed and duplicate entries are refused at start-up. */
	const char *const bad[] = { "0000:01:00.0", "01:00.0", NULL };
	const char *const dup[] = { "0000:01:00.0", "0000:01:00.0", NULL };
	const char *const fn8[] = { "0000:01:00.8", NULL };
	be = NULL;
	cfg.sim_devices = bad;
	assert_int_equal(dmb_sim_create(&cfg, &be, &e), -EINVAL);
	cfg.sim_devices = dup;
	assert_int_equal(dmb_sim_create(&cfg, &be, &e), -EINVAL);
	cfg.sim_devices = fn8;
	assert_int_equal(dmb_sim_create(&cfg, &be, &e), -EINVAL);
	assert_null(be);
}

/* ---- open / close -------------------------------------------------------- */

static void test_open_busy_unknown(void **state)
{
	struct fx *f = *state;
	struct dmb_bdev *d = NULL;
	struct dmb_iova_info before, after;

	/* Open in another context, and again in its own: both busy. */
	assert_int_equal(f->ops->dev_open(f->c1, BDF_B, &d, NULL, &f->e), -EBUSY);
	assert_msg_has(f, BDF_B);
	assert_msg_has(f, "another");
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->dev_open(f->c1, BDF_A, &d, NULL, &f->e), -EBUSY);
	assert_msg_has(f, "this");

	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->dev_open(f->c1, "0000:09:00.0", &d, NULL, &f->e), -ENODEV);
	assert_msg_has(f, "0000:09:00.0");
	assert_msg_has(f, "0000:01:00.0, 0000:02:00.0, 0000:03:00.0, 0000:04:00.0");
	assert_int_equal(f->ops->dev_open(f->c1, "../../x", &d, NULL, &f->e), -EINVAL);
	assert_int_equal(f->ops->dev_open(f->c1, NULL, &d, NULL, &f->e), -EINVAL);
	assert_null(d);

	/* Attaching does not change the IOVA ranges. */
	struct dmb_bctx *c3 = NULL;
	assert_int_equal(f->ops->ctx_open(f->be, &c3, &f->e), 0);
	assert_int_equal(f->ops->iova_info(c3, &before, &f->e), 0);
	assert_int_equal(f->ops->dev_open(c3, "0000:03:00.0", &d, NULL, &f->e), 0);
	assert_int_equal(f->ops->iova_info(c3, &after, &f->e), 0);
	assert_memory_equal(&before, &after, sizeof(before));

	/* Closed, it can be opened elsewhere. */
	f->ops->dev_close(d);
	assert_int_equal(f->ops->dev_open(f->c1, "0000:03:00.0", &d, NULL, &f->e), 0);
	f->ops->dev_close(d);
	f->ops->ctx_close(c3);
	f->ops->dev_close(NULL);
}

static void test_close_clears_command(void **state)
{
	struct fx *f = *state;
	struct dmb_bdev *d = NULL;

	assert_int_equal(set_cmd(f, f->a, MEM | MASTER), 0);
	assert_int_equal(client_get_cmd(f->a_cfg), MEM | MASTER);
	f->ops->dev_close(f->a);
	/* The client's copy still reaches config space (as a duplicate VFIO
	 * device fd would) and sees bus mastering and decoding off. */
	assert_int_equal(client_get_cmd(f->a_cfg), 0);
	assert_int_equal(f->ops->dev_open(f->c2, BDF_A, &d, NULL, &f->e), 0);
	assert_int_equal(get_cmd(f, d), 0);
	assert_int_equal(f->ops->dev_fd(d), f->ops->dev_fd(f->a)); /* the same function */
	f->a = d; /* now in c2, closed by teardown */
}

/* ctx_close detaches what is attached; the devices can be opened again. */
static void test_ctx_close_closes_devices(void **state)
{
	struct fx *f = *state;
	struct dmb_bdev *d = NULL;

	assert_int_equal(set_cmd(f, f->a, MASTER), 0);
	f->ops->ctx_close(f->c1);
	assert_int_equal(f->ops->ctx_open(f->be, &f->c1, &f->e), 0);
	assert_int_equal(client_get_cmd(f->a_cfg), 0);
	assert_int_equal(f->ops->dev_open(f->c1, BDF_A, &d, NULL, &f->e), 0);
}

/* ---- config space --------------------------------------------------------- */

static void test_config_read_write_bounds(void **state)
{
	struct fx *f = *state;
	uint8_t b[8] = { 0 };

	assert_int_equal(f->ops->dev_config_read(f->a, 0, b, 4, &f->e), 0);
	assert_int_equal(b[0] | b[1] << 8, 0x1234);
	assert_int_equal(b[2] | b[3] << 8, 0x11e8);
	assert_int_equal(get_cmd(f, f->a), 0); /* initially 0 */

	/* The last byte, and nothing past it. */
	assert_int_equal(f->ops->dev_config_read(f->a, 255, b, 1, &f->e), 0);
	assert_int_equal(f->ops->dev_config_write(f->a, 255, b, 1, &f->e), 0);
	assert_int_equal(f->ops->dev_config_read(f->a, 256, b, 0, &f->e), 0);
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->dev_config_read(f->a, 255, b, 2, &f->e), -EINVAL);
	assert_msg_has(f, BDF_A);
	assert_msg_has(f, "0xff");
	assert_int_equal(f->ops->dev_config_read(f->a, 256, b, 1, &f->e), -EINVAL);
	assert_int_equal(f->ops->dev_config_read(f->a, 257, b, 0, &f->e), -EINVAL);
	assert_int_equal(f->ops->dev_config_read(f->a, UINT32_MAX, b, 2, &f->e), -EINVAL);
	assert_int_equal(f->ops->dev_config_read(f->a, 0, b, SIZE_MAX, &f->e), -EINVAL);
	assert_int_equal(f->ops->dev_config_write(f->a, 250, b, 8, &f->e), -EINVAL);
	assert_int_equal(f->ops->dev_config_write(f->a, UINT32_MAX - 1, b, 4, &f->e), -EINVAL);
	assert_int_equal(f->ops->dev_config_write(f->a, 0, b, SIZE_MAX, &f->e), -EINVAL);

	/* A broker write lands in the memfd the client holds. */
	assert_int_equal(set_cmd(f, f->a, MEM | MASTER | 0x0400), 0);
	assert_int_equal(client_get_cmd(f->a_cfg), MEM | MASTER | 0x0400);
	/* The whole space reads back in one go. */
	uint8_t all[256], mine[256];
	assert_int_equal(f->ops->dev_config_read(f->a, 0, all, sizeof(all), &f->e), 0);
	assert_int_equal(pread(f->a_cfg, mine, sizeof(mine), 0), 256);
	assert_memory_equal(all, mine, sizeof(all));

	/* The config memfd cannot be resized by its holder. */
	assert_int_equal(ftruncate(f->a_cfg, 0), -1);
	assert_int_equal(ftruncate(f->a_cfg, 8192), -1);
}

static void test_bar_info(void **state)
{
	struct fx *f = *state;
	struct dmb_bar_info bi;

	assert_int_equal(f->ops->dev_bar_info(f->b, 0, &bi, &f->e), 0);
	assert_int_equal(bi.size, BAR0_SIZE);
	assert_true(bi.mmio && bi.mappable);
	assert_int_equal(f->ops->dev_bar_info(f->b, 1, &bi, &f->e), 0);
	assert_int_equal(bi.size, 0);
	assert_int_equal(f->ops->dev_bar_info(f->b, 2, &bi, &f->e), 0);
	assert_int_equal(bi.size, 256);
	assert_false(bi.mmio);
	assert_false(bi.mappable);
	for (unsigned i = 3; i < 6; i++) {
		assert_int_equal(f->ops->dev_bar_info(f->b, i, &bi, &f->e), 0);
		assert_int_equal(bi.size, 0);
	}
	assert_int_equal(f->ops->dev_bar_info(f->b, 6, &bi, &f->e), -EINVAL);
}

/* ---- device DMA to RAM ---------------------------------------------------- */

static void test_dev_dma_ram_round_trip(void **state)
{
	struct fx *f = *state;
	uint8_t out[3 * 4096 + 17], in[sizeof(out)];
	const uint64_t off = 16 * PG;

	assert_int_equal(map_ram(f, f->c1, off, BASE, 8 * PG, RW), 0);
	assert_int_equal(set_cmd(f, f->a, MASTER), 0);

	/* Device write: the bytes are in the RAM memfd. */
	fill(out, sizeof(out), 0x21);
	assert_int_equal(dev_dma(f, f->a, BASE + 100, out, sizeof(out), true), 0);
	assert_int_equal(pread(f->ram_fd, in, sizeof(in), (off_t)(off + 100)), (ssize_t)sizeof(in));
	assert_memory_equal(in, out, sizeof(out));
	assert_int_equal(fd_byte(f->ram_fd, off + 99), pattern(off + 99));

	/* Device read: sees what the VMM wrote into its memfd. */
	fill(out, sizeof(out), 0x77);
	assert_int_equal(pwrite(f->ram_fd, out, sizeof(out), (off_t)(off + 5)), (ssize_t)sizeof(out));
	assert_int_equal(dev_dma(f, f->a, BASE + 5, in, sizeof(in), false), 0);
	assert_memory_equal(in, out, sizeof(out));

	/* Only through its own context: B (context 2) faults at the same IOVA. */
	assert_int_equal(set_cmd(f, f->b, MASTER), 0);
	assert_int_equal(dev_dma(f, f->b, BASE + 5, in, 1, false), -EFAULT);
	assert_msg_has(f, BDF_B);
	assert_msg_has(f, "0x10000005");
	/* A hole is a fault that moves nothing. */
	memset(out, 0xEE, sizeof(out));
	assert_int_equal(dev_dma(f, f->a, BASE + 8 * PG - 10, out, 20, true), -EFAULT);
	assert_msg_has(f, "0x10008000");
	assert_int_equal(fd_byte(f->ram_fd, off + 8 * PG - 10), pattern(off + 8 * PG - 10));
}

/* Bus mastering is read from config space on every DMA, so a client's own
 * write through its device fd counts at once. */
static void test_bus_master_via_client_fd(void **state)
{
	struct fx *f = *state;
	uint8_t b = 0x5A;

	assert_int_equal(map_ram(f, f->c1, 0, BASE, PG, RW), 0);
	assert_int_equal(get_cmd(f, f->a), 0);
	assert_int_equal(dev_dma(f, f->a, BASE, &b, 1, true), -EPERM); /* initially off */
	assert_msg_has(f, BDF_A);
	assert_msg_has(f, "bus mastering");

	client_set_cmd(f->a_cfg, MASTER);
	assert_int_equal(get_cmd(f, f->a), MASTER);
	assert_int_equal(dev_dma(f, f->a, BASE, &b, 1, true), 0);
	assert_int_equal(fd_byte(f->ram_fd, 0), 0x5A);

	client_set_cmd(f->a_cfg, MEM); /* bus master off, behind the broker's back */
	assert_int_equal(get_cmd(f, f->a), MEM);
	b = 0x11;
	assert_int_equal(dev_dma(f, f->a, BASE, &b, 1, true), -EPERM);
	assert_int_equal(f->e.sys_errno, EPERM);
	assert_int_equal(fd_byte(f->ram_fd, 0), 0x5A);
	b = 0x11;
	assert_int_equal(dev_dma(f, f->a, BASE, &b, 1, false), -EPERM);
	assert_int_equal(b, 0x11);
	/* The context-level engine is an ideal bus master: no such check. */
	assert_int_equal(f->ops->dma(f->c1, BASE, &b, 1, false, &f->e), 0);
	assert_int_equal(b, 0x5A);
}

/* ---- P2P ------------------------------------------------------------------ */

static void test_p2p_read_write_bar(void **state)
{
	struct fx *f = *state;
	uint8_t out[5000], in[sizeof(out)];

	p2p_ready(f);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0); /* BAR pages are not pinned */

	/* A writes into B's BAR: the bytes are in B's BAR memfd. */
	fill(out, sizeof(out), 0x42);
	assert_int_equal(dev_dma(f, f->a, P2P + 300, out, sizeof(out), true), 0);
	assert_int_equal(pread(f->b_bar, in, sizeof(in), (off_t)(BAR_OFF + 300)), (ssize_t)sizeof(in));
	assert_memory_equal(in, out, sizeof(out));
	assert_int_equal(fd_byte(f->b_bar, BAR_OFF + 299), 0);
	assert_int_equal(fd_byte(f->b_bar, BAR_OFF + 300 + sizeof(out)), 0);

	/* A reads what B's BAR holds. */
	fill(out, sizeof(out), 0x99);
	assert_int_equal(pwrite(f->b_bar, out, sizeof(out), (off_t)(BAR_OFF + BAR_LEN - sizeof(out))),
			 (ssize_t)sizeof(out));
	assert_int_equal(dev_dma(f, f->a, P2P + BAR_LEN - sizeof(out), in, sizeof(in), false), 0);
	assert_memory_equal(in, out, sizeof(out));

	/* One byte past the mapping is a fault. */
	assert_int_equal(dev_dma(f, f->a, P2P + BAR_LEN - 1, in, 2, false), -EFAULT);
	assert_msg_has(f, "0x200010000");
}

static void test_p2p_decode_off(void **state)
{
	struct fx *f = *state;
	uint8_t out[256], in[256];

	p2p_ready(f);
	fill(out, sizeof(out), 1);
	assert_int_equal(dev_dma(f, f->a, P2P, out, sizeof(out), true), 0);

	/* B's memory decoding off (through the broker): decode error, nothing
	 * moves in either direction. */
	assert_int_equal(set_cmd(f, f->b, 0), 0);
	uint8_t other[256];
	fill(other, sizeof(other), 0xC0);
	assert_int_equal(dev_dma(f, f->a, P2P, other, sizeof(other), true), -EIO);
	assert_int_equal(f->e.sys_errno, EIO);
	assert_msg_has(f, "decode error");
	assert_msg_has(f, BDF_B);
	assert_msg_has(f, "0x200000000");
	assert_int_equal(pread(f->b_bar, in, sizeof(in), (off_t)BAR_OFF), (ssize_t)sizeof(in));
	assert_memory_equal(in, out, sizeof(out));
	memset(in, 0xAB, sizeof(in));
	assert_int_equal(dev_dma(f, f->a, P2P, in, sizeof(in), false), -EIO);
	assert_fd_all(f->b_bar, BAR_OFF + sizeof(out), 64, 0);
	for (size_t i = 0; i < sizeof(in); i++)
		assert_int_equal(in[i], 0xAB);
	/* The ideal bus master meets the same decode error. */
	assert_int_equal(f->ops->dma(f->c1, P2P, in, 1, false, &f->e), -EIO);

	/* On again: works. */
	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	assert_int_equal(dev_dma(f, f->a, P2P, other, sizeof(other), true), 0);
	assert_int_equal(pread(f->b_bar, in, sizeof(in), (off_t)BAR_OFF), (ssize_t)sizeof(in));
	assert_memory_equal(in, other, sizeof(other));

	/* Off behind the broker's back, through B's client fd: the same. */
	client_set_cmd(f->b_cfg, MASTER);
	assert_int_equal(dev_dma(f, f->a, P2P, out, 1, true), -EIO);
	assert_int_equal(fd_byte(f->b_bar, BAR_OFF), other[0]);
	client_set_cmd(f->b_cfg, MEM);
	assert_int_equal(dev_dma(f, f->a, P2P, out, 1, true), 0);
	assert_int_equal(fd_byte(f->b_bar, BAR_OFF), out[0]);
}

/* A fault anywhere in the range wins over a decode error. */
static void test_p2p_fault_beats_decode_error(void **state)
{
	struct fx *f = *state;
	uint8_t buf[2 * 4096];

	p2p_ready(f);
	assert_int_equal(set_cmd(f, f->b, 0), 0);
	/* Ends in the hole after the BAR mapping. */
	assert_int_equal(dev_dma(f, f->a, P2P + BAR_LEN - PG, buf, sizeof(buf), false), -EFAULT);
	/* Read-only RAM after the BAR mapping; a write faults there. */
	assert_int_equal(map_ram(f, f->c1, 0, P2P + BAR_LEN, PG, R), 0);
	assert_int_equal(dev_dma(f, f->a, P2P + BAR_LEN - PG, buf, sizeof(buf), true), -EFAULT);
	assert_int_equal(f->e.code, DMB_E_PERMISSION_DENIED);
	assert_int_equal(dev_dma(f, f->a, P2P + BAR_LEN - PG, buf, sizeof(buf), false), -EIO);
}

static void test_p2p_unmap(void **state)
{
	struct fx *f = *state;
	uint8_t b = 0x3C;
	uint64_t n = 0;

	p2p_ready(f);
	assert_int_equal(dev_dma(f, f->a, P2P + 7, &b, 1, true), 0);
	assert_int_equal(unmap(f, f->c1, P2P, BAR_LEN / 2, &n), -ENOENT); /* only whole */
	assert_int_equal(unmap(f, f->c1, P2P, BAR_LEN, &n), 0);
	assert_int_equal(n, BAR_LEN);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	b = 0;
	assert_int_equal(dev_dma(f, f->a, P2P + 7, &b, 1, true), -EFAULT);
	assert_int_equal(fd_byte(f->b_bar, BAR_OFF + 7), 0x3C);
	/* The IOVA is free again; unmap_all removes MMIO areas too. */
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, PG, R), 0);
	assert_int_equal(map_ram(f, f->c1, 0, BASE, PG, RW), 0);
	assert_int_equal(f->ops->unmap_all(f->c1, &n, &f->e), 0);
	assert_int_equal(n, 2 * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	assert_int_equal(dev_dma(f, f->a, P2P, &b, 1, false), -EFAULT);
}

static void test_map_bar_refusals(void **state)
{
	struct fx *f = *state;
	uint8_t b;

	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 1, 0, P2P, PG, RW), -EINVAL); /* not implemented */
	assert_msg_has(f, "BAR1");
	assert_int_equal(map_bar(f, f->c1, f->b, 2, 0, P2P, PG, RW), -EINVAL); /* I/O space */
	assert_msg_has(f, "I/O");
	assert_int_equal(map_bar(f, f->c1, f->b, 6, 0, P2P, PG, RW), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, BAR0_SIZE - PG, P2P, 2 * PG, RW), -EINVAL);
	assert_msg_has(f, BDF_B);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, BAR0_SIZE, P2P, PG, RW), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, UINT64_MAX - PG + 1, P2P, PG, RW), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, BAR0_SIZE + PG, RW), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 512, P2P, PG, RW), -EINVAL); /* alignment */
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P + 512, PG, RW), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, 100, RW), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, 0, RW), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, PG, 0), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, PG, 4), -EINVAL);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, MSI_START, PG, RW), -EINVAL); /* reserved */
	assert_msg_has(f, "MSI");
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, UINT64_MAX - PG + 1, 2 * PG, RW), -EOVERFLOW);
	assert_int_equal(map_ram(f, f->c1, 0, P2P + PG, PG, RW), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, 2 * PG, RW), -EEXIST); /* overlap */
	assert_msg_has(f, "RAM");
	/* Memory decoding off: refused as type1 refuses (EFAULT). */
	assert_int_equal(set_cmd(f, f->b, 0), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, PG, RW), -EFAULT);
	assert_msg_has(f, "decoding is off");
	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	/* Nothing of the refusals is mapped. */
	assert_int_equal(f->ops->dma(f->c1, P2P, &b, 1, false, &f->e), -EFAULT);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, PG, RW), 0);
	/* The whole BAR, and an MMIO area next to an MMIO area. */
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P + 4 * MiB, BAR0_SIZE, RW), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P + 4 * MiB, PG, RW), -EEXIST);
	assert_msg_has(f, "MMIO");
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P + 5 * MiB, PG, RW), 0);
	/* A device may map its own BAR into its own context. */
	assert_int_equal(map_bar(f, f->c2, f->b, 0, 0, P2P, PG, RW), 0);
	f->ops->dev_close(NULL);
}

/* Prot of an MMIO area is enforced like RAM's. */
static void test_p2p_prot(void **state)
{
	struct fx *f = *state;
	uint8_t b = 0x66;

	assert_int_equal(set_cmd(f, f->a, MASTER), 0);
	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, 0, P2P, PG, R), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, PG, P2P + PG, PG, W), 0);
	assert_int_equal(dev_dma(f, f->a, P2P, &b, 1, true), -EFAULT);
	assert_int_equal(f->e.code, DMB_E_PERMISSION_DENIED);
	assert_int_equal(fd_byte(f->b_bar, 0), 0);
	assert_int_equal(dev_dma(f, f->a, P2P, &b, 1, false), 0);
	assert_int_equal(dev_dma(f, f->a, P2P + PG, &b, 1, false), -EFAULT);
	b = 0x66;
	assert_int_equal(dev_dma(f, f->a, P2P + PG, &b, 1, true), 0);
	assert_int_equal(fd_byte(f->b_bar, PG), 0x66);
}

static void test_reset(void **state)
{
	struct fx *f = *state;
	uint8_t out[512], cnt[4];

	p2p_ready(f);
	assert_int_equal(set_cmd(f, f->b, MEM | MASTER | 0x0400), 0);
	fill(out, sizeof(out), 9);
	assert_int_equal(dev_dma(f, f->a, P2P, out, sizeof(out), true), 0);
	assert_int_equal(pwrite(f->b_bar, out, sizeof(out), 0), (ssize_t)sizeof(out));
	assert_int_equal(pwrite(f->b_bar, out, sizeof(out), (off_t)(BAR0_SIZE - sizeof(out))),
			 (ssize_t)sizeof(out));
	assert_int_equal(pread(f->b_cfg, cnt, 4, 0x40), 4);
	assert_memory_equal(cnt, "\0\0\0\0", 4);

	assert_int_equal(f->ops->dev_reset(f->b, &f->e), 0);
	/* Device state lost: the whole BAR reads zero, through the memfd. */
	assert_fd_all(f->b_bar, 0, BAR0_SIZE, 0);
	/* Config space restored: the command register as before. */
	assert_int_equal(client_get_cmd(f->b_cfg), MEM | MASTER | 0x0400);
	assert_int_equal(get_cmd(f, f->b), MEM | MASTER | 0x0400);
	uint8_t id[4];
	assert_int_equal(pread(f->b_cfg, id, 4, 0), 4);
	assert_int_equal(id[0] | id[1] << 8 | id[2] << 16 | id[3] << 24, 0x11e81234);
	/* Counted, at config offset 0x40. */
	assert_int_equal(pread(f->b_cfg, cnt, 4, 0x40), 4);
	assert_int_equal(cnt[0], 1);
	assert_int_equal(f->ops->dev_reset(f->b, &f->e), 0);
	assert_int_equal(pread(f->b_cfg, cnt, 4, 0x40), 4);
	assert_int_equal(cnt[0], 2);

	/* The P2P area survives a reset (the core revokes; the sim does not)
	 * and reaches the zeroed BAR. */
	uint8_t in[sizeof(out)];
	memset(in, 0xFF, sizeof(in));
	assert_int_equal(dev_dma(f, f->a, P2P, in, sizeof(in), false), 0);
	for (size_t i = 0; i < sizeof(in); i++)
		assert_int_equal(in[i], 0);

	/* A reset of a device with decoding off leaves it off. */
	assert_int_equal(set_cmd(f, f->b, MASTER), 0);
	assert_int_equal(f->ops->dev_reset(f->b, &f->e), 0);
	assert_int_equal(get_cmd(f, f->b), MASTER);
	assert_int_equal(dev_dma(f, f->a, P2P, in, 1, false), -EIO);
}

static void test_a_bus_master_off(void **state)
{
	struct fx *f = *state;
	uint8_t out[64];

	p2p_ready(f);
	assert_int_equal(set_cmd(f, f->a, MEM), 0);
	fill(out, sizeof(out), 0x10);
	assert_int_equal(dev_dma(f, f->a, P2P, out, sizeof(out), true), -EPERM);
	assert_fd_all(f->b_bar, BAR_OFF, sizeof(out), 0);
	/* Bus mastering wins over a decode error too: the device never issues. */
	assert_int_equal(set_cmd(f, f->b, 0), 0);
	assert_int_equal(dev_dma(f, f->a, P2P, out, sizeof(out), true), -EPERM);
}

/* Many contexts import the same BAR; each DMA lands in the one memfd. */
#define N_IMPORTERS 32u
static void test_many_contexts_same_bar(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c[N_IMPORTERS];
	uint64_t n;

	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	for (unsigned i = 0; i < N_IMPORTERS; i++) {
		assert_int_equal(f->ops->ctx_open(f->be, &c[i], &f->e), 0);
		/* Different IOVAs, overlapping BAR ranges: page i and page i+1. */
		assert_int_equal(map_bar(f, c[i], f->b, 0, i * PG, P2P + i * MiB, 2 * PG, RW), 0);
	}
	for (unsigned i = 0; i < N_IMPORTERS; i++) {
		uint8_t v = (uint8_t)(0x80 + i);
		assert_int_equal(f->ops->dma(c[i], P2P + i * MiB + PG + 1, &v, 1, true, &f->e), 0);
	}
	for (unsigned i = 0; i < N_IMPORTERS; i++) {
		uint8_t v = 0;
		assert_int_equal(fd_byte(f->b_bar, (i + 1) * PG + 1), 0x80 + i);
		/* Context i+1 sees context i's byte through its own first page. */
		if (i + 1 < N_IMPORTERS) {
			assert_int_equal(f->ops->dma(c[i + 1], P2P + (i + 1) * MiB + 1, &v, 1, false, &f->e), 0);
			assert_int_equal(v, 0x80 + i);
		}
	}
	/* B's decoding off is seen by every importer. */
	assert_int_equal(set_cmd(f, f->b, 0), 0);
	for (unsigned i = 0; i < N_IMPORTERS; i++) {
		uint8_t v;
		assert_int_equal(f->ops->dma(c[i], P2P + i * MiB, &v, 1, false, &f->e), -EIO);
	}
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	/* Half unmap, half go with their context. */
	for (unsigned i = 0; i < N_IMPORTERS; i++) {
		if (i % 2 == 0) {
			assert_int_equal(f->ops->unmap_all(c[i], &n, &f->e), 0);
			assert_int_equal(n, 2 * PG);
		}
		f->ops->ctx_close(c[i]);
	}
}

/* B closed while an importer still maps its BAR: the memory stays valid
 * (ASan checks), DMA through the stale area answers a decode error (close
 * clears B's command register), and B's state did not survive the close. */
static void test_close_with_importers(void **state)
{
	struct fx *f = *state;
	uint8_t out[128], in[128];
	uint64_t n;

	p2p_ready(f);
	fill(out, sizeof(out), 0x31);
	assert_int_equal(dev_dma(f, f->a, P2P, out, sizeof(out), true), 0);
	f->ops->dev_close(f->b);
	assert_int_equal(dev_dma(f, f->a, P2P, in, sizeof(in), false), -EIO);
	assert_msg_has(f, BDF_B);
	assert_fd_all(f->b_bar, 0, BAR0_SIZE, 0);
	/* The sim models type1 here: an area the core forgot to revoke reaches
	 * the BAR again once its next owner turns decoding on. */
	assert_int_equal(f->ops->dev_open(f->c2, BDF_B, &f->b, NULL, &f->e), 0);
	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	assert_int_equal(dev_dma(f, f->a, P2P, in, sizeof(in), false), 0);
	/* And closing it again, then its context, with the area still there. */
	f->ops->dev_close(f->b);
	f->b = NULL;
	f->ops->ctx_close(f->c2);
	assert_int_equal(f->ops->ctx_open(f->be, &f->c2, &f->e), 0);
	assert_int_equal(unmap(f, f->c1, P2P, BAR_LEN, &n), 0);
	assert_int_equal(n, BAR_LEN);
}

/* An MMIO area adjacent in IOVA to a RAM area: one DMA spans both; removing
 * either leaves the other working. */
static void test_mmio_next_to_ram(void **state)
{
	struct fx *f = *state;
	const uint64_t ram_off = 32 * PG;
	uint8_t out[200], in[100];
	uint64_t n;

	assert_int_equal(set_cmd(f, f->a, MASTER), 0);
	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	assert_int_equal(map_ram(f, f->c1, ram_off, P2P - 2 * PG, 2 * PG, RW), 0);
	assert_int_equal(map_bar(f, f->c1, f->b, 0, BAR_OFF, P2P, 2 * PG, RW), 0);

	/* Across the boundary: 100 bytes at the end of RAM, 100 into the BAR. */
	fill(out, sizeof(out), 0xA0);
	assert_int_equal(dev_dma(f, f->a, P2P - 100, out, sizeof(out), true), 0);
	assert_int_equal(pread(f->ram_fd, in, 100, (off_t)(ram_off + 2 * PG - 100)), 100);
	assert_memory_equal(in, out, 100);
	assert_int_equal(pread(f->b_bar, in, 100, (off_t)BAR_OFF), 100);
	assert_memory_equal(in, out + 100, 100);
	uint8_t back[200];
	assert_int_equal(dev_dma(f, f->a, P2P - 100, back, sizeof(back), false), 0);
	assert_memory_equal(back, out, sizeof(out));

	/* Decoding off: the spanning DMA moves nothing, the RAM half included;
	 * the RAM alone still works. */
	assert_int_equal(set_cmd(f, f->b, 0), 0);
	uint8_t z[200];
	memset(z, 0x0F, sizeof(z));
	assert_int_equal(dev_dma(f, f->a, P2P - 100, z, sizeof(z), true), -EIO);
	assert_int_equal(pread(f->ram_fd, in, 100, (off_t)(ram_off + 2 * PG - 100)), 100);
	assert_memory_equal(in, out, 100);
	assert_int_equal(dev_dma(f, f->a, P2P - 100, z, 100, true), 0);
	assert_int_equal(fd_byte(f->ram_fd, ram_off + 2 * PG - 1), 0x0F);
	assert_int_equal(set_cmd(f, f->b, MEM), 0);

	/* Unmap the MMIO area: RAM stays; the BAR IOVAs fault. */
	assert_int_equal(unmap(f, f->c1, P2P, 2 * PG, &n), 0);
	assert_int_equal(n, 2 * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 2 * PG);
	assert_int_equal(dev_dma(f, f->a, P2P - 1, z, 1, true), 0);
	assert_int_equal(dev_dma(f, f->a, P2P, z, 1, true), -EFAULT);
	assert_int_equal(dev_dma(f, f->a, P2P - 100, z, sizeof(z), true), -EFAULT);

	/* Map it again; unmap the RAM: the BAR stays. */
	assert_int_equal(map_bar(f, f->c1, f->b, 0, BAR_OFF, P2P, 2 * PG, RW), 0);
	assert_int_equal(unmap(f, f->c1, P2P - 2 * PG, 2 * PG, &n), 0);
	assert_int_equal(n, 2 * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	uint8_t v = 0xD4;
	assert_int_equal(dev_dma(f, f->a, P2P + 5, &v, 1, true), 0);
	assert_int_equal(fd_byte(f->b_bar, BAR_OFF + 5), 0xD4);
	assert_int_equal(dev_dma(f, f->a, P2P - 1, &v, 1, true), -EFAULT);
	/* A range covering both, with both present, unmaps both. */
	assert_int_equal(map_ram(f, f->c1, ram_off, P2P - 2 * PG, 2 * PG, RW), 0);
	assert_int_equal(unmap(f, f->c1, P2P - 2 * PG, 4 * PG, &n), 0);
	assert_int_equal(n, 4 * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
}

/* Closed devices answer -ENODEV; NULL is refused, not dereferenced. */
static void test_closed_and_null(void **state)
{
	struct fx *f = *state;
	uint8_t b[2];
	struct dmb_bar_info bi;

	assert_int_equal(f->ops->dev_config_read(NULL, 0, b, 2, NULL), -EINVAL);
	assert_int_equal(f->ops->dev_config_write(NULL, 0, b, 2, NULL), -EINVAL);
	assert_int_equal(f->ops->dev_reset(NULL, NULL), -EINVAL);
	assert_int_equal(f->ops->dev_dma(NULL, 0, b, 1, true, NULL), -EINVAL);
	assert_int_equal(f->ops->dev_bar_info(NULL, 0, &bi, NULL), -EINVAL);
	assert_int_equal(f->ops->map_bar(NULL, f->b, 0, 0, P2P, PG, RW, NULL), -EINVAL);
	assert_int_equal(f->ops->map_bar(f->c1, NULL, 0, 0, P2P, PG, RW, NULL), -EINVAL);
	assert_true(f->ops->dev_fd(NULL) < 0);
	assert_int_equal(f->ops->dev_config_read(f->a, 0, NULL, 2, NULL), -EINVAL);

	f->ops->dev_close(f->a);
	assert_int_equal(f->ops->dev_config_read(f->a, 0, b, 2, &f->e), -ENODEV);
	assert_int_equal(f->ops->dev_config_write(f->a, 4, b, 2, &f->e), -ENODEV);
	assert_int_equal(f->ops->dev_reset(f->a, &f->e), -ENODEV);
	assert_int_equal(f->ops->dev_dma(f->a, 0, b, 1, true, &f->e), -ENODEV);
	assert_int_equal(map_bar(f, f->c1, f->a, 0, 0, P2P, PG, RW), -ENODEV);
	assert_int_equal(f->ops->dev_open(f->c1, BDF_A, &f->a, NULL, &f->e), 0);
}

/* Device state changes in one context while another context's device DMAs
 * into the BAR (backend.h: different contexts, different threads). Every
 * DMA either moves all its bytes or none (-EIO); nothing else. */
struct dma_worker {
	struct fx *f;
	atomic_bool stop;
	atomic_uint ok, decode_errors, other;
};

static void *dma_worker_run(void *arg)
{
	struct dma_worker *w = arg;
	uint8_t out[4096], in[4096];
	unsigned i = 0;

	while (!atomic_load(&w->stop)) {
		memset(out, (int)(i & 0xff), sizeof(out));
		int r = w->f->ops->dev_dma(w->f->a, P2P, out, sizeof(out), true, NULL);
		if (r == 0) {
			r = w->f->ops->dev_dma(w->f->a, P2P, in, sizeof(in), false, NULL);
			atomic_fetch_add(&w->ok, 1);
		}
		if (r == -EIO)
			atomic_fetch_add(&w->decode_errors, 1);
		else if (r != 0)
			atomic_fetch_add(&w->other, 1);
		i++;
	}
	return NULL;
}

static void test_state_changes_on_threads(void **state)
{
	struct fx *f = *state;
	struct dma_worker w = { .f = f };
	pthread_t t;

	p2p_ready(f);
	atomic_init(&w.stop, false);
	assert_int_equal(pthread_create(&t, NULL, dma_worker_run, &w), 0);
	for (unsigned i = 0; i < 2000; i++) {
		assert_int_equal(set_cmd(f, f->b, (i % 2) ? 0 : MEM), 0);
		if (i % 100 == 0)
			assert_int_equal(f->ops->dev_reset(f->b, &f->e), 0);
		if (i % 200 == 0)
			usleep(100);
	}
	assert_int_equal(set_cmd(f, f->b, MEM), 0);
	/* Let the worker succeed at least once after the last change. */
	unsigned ok0 = atomic_load(&w.ok);
	for (unsigned spin = 0; spin < 10000 && atomic_load(&w.ok) == ok0; spin++)
		usleep(100);
	atomic_store(&w.stop, true);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(atomic_load(&w.other), 0);
	assert_true(atomic_load(&w.ok) > 0);
}

static unsigned count_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	assert_non_null(dir);
	unsigned n = 0;
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

/* Two memfds per device, the region dups: all closed again by destroy,
 * also when devices are left attached to a context closed before it. */
static void test_no_fd_leak(void **state)
{
	(void)state;
	unsigned before = count_fds();
	struct dmb_backend_config cfg = { .name = "sim" };
	struct dmb_backend *be = NULL;
	struct dmb_bctx *c = NULL, *c2 = NULL;
	struct dmb_bdev *a = NULL, *b = NULL;
	struct dmb_err e = { 0 };
	uint8_t cmd[2] = { MEM | MASTER, 0 }, v = 1;

	assert_int_equal(dmb_sim_create(&cfg, &be, &e), 0);
	assert_true(count_fds() >= before + 8);
	assert_int_equal(be->ops->ctx_open(be, &c, &e), 0);
	assert_int_equal(be->ops->ctx_open(be, &c2, &e), 0);
	assert_int_equal(be->ops->dev_open(c, BDF_A, &a, NULL, &e), 0);
	assert_int_equal(be->ops->dev_open(c2, BDF_B, &b, NULL, &e), 0);
	assert_int_equal(be->ops->dev_config_write(a, DMB_PCI_COMMAND, cmd, 2, &e), 0);
	assert_int_equal(be->ops->dev_config_write(b, DMB_PCI_COMMAND, cmd, 2, &e), 0);
	assert_int_equal(be->ops->map_bar(c, b, 0, 0, P2P, PG, RW, &e), 0);
	assert_int_equal(be->ops->dev_dma(a, P2P, &v, 1, true, &e), 0);
	be->ops->ctx_close(c2); /* B goes first, its importer stays */
	be->ops->ctx_close(c);
	dmb_backend_destroy(be);
	assert_int_equal(count_fds(), before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_features_and_default_devices, setup, teardown),
		cmocka_unit_test(test_custom_device_list),
		cmocka_unit_test(test_no_fd_leak),
		cmocka_unit_test_setup_teardown(test_open_busy_unknown, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_clears_command, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ctx_close_closes_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_read_write_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bar_info, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dev_dma_ram_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bus_master_via_client_fd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_p2p_read_write_bar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_p2p_decode_off, setup, teardown),
		cmocka_unit_test_setup_teardown(test_p2p_fault_beats_decode_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_p2p_unmap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_bar_refusals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_p2p_prot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_bus_master_off, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_contexts_same_bar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_with_importers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mmio_next_to_ram, setup, teardown),
		cmocka_unit_test_setup_teardown(test_closed_and_null, setup, teardown),
		cmocka_unit_test_setup_teardown(test_state_changes_on_threads, setup, teardown),
	};
	return cmocka_run_group_tests_name("sim-dev", tests, NULL, NULL);
}
