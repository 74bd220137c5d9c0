/* Unit tests of the simulated backend (daemon/backend/sim.c).
 *
 * Every IOAS rule the sim models is checked through the backend vtable, and
 * every claim about memory is checked against the memfd itself with
 * pread()/pwrite(), never through the sim. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"

#define PG UINT64_C(4096)
#define REGION_PAGES 1024u
#define REGION_SIZE (REGION_PAGES * PG) /* 4 MiB, sparse */
#define BASE UINT64_C(0x10000000)
#define MSI_START UINT64_C(0xFEE00000)
#define MSI_LAST UINT64_C(0xFEEFFFFF)
#define APERTURE_END (UINT64_C(1) << 48) /* first IOVA past the aperture */

#define R DMB_PROT_READ
#define W DMB_PROT_WRITE
#define RW (DMB_PROT_READ | DMB_PROT_WRITE)

struct fx {
	struct dmb_backend *be;
	const struct dmb_backend_ops *ops;
	struct dmb_bctx *ctx;
	int fd;                  /* read-write memfd, REGION_SIZE, patterned */
	int ro_fd;               /* the same file, opened read-only */
	struct dmb_bregion *rw;  /* region over fd */
	struct dmb_bregion *ro;  /* region over ro_fd, not writable */
	struct dmb_err e;
};

static uint8_t pattern(uint64_t off)
{
	return (uint8_t)(off * 7 + 3);
}

static int make_memfd(uint64_t size, bool fill)
{
	int fd = memfd_create("sim-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	if (fill) {
		uint8_t *buf = malloc(size);
		assert_non_null(buf);
		for (uint64_t i = 0; i < size; i++)
			buf[i] = pattern(i);
		assert_int_equal(pwrite(fd, buf, size, 0), (ssize_t)size);
		free(buf);
	}
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	return fd;
}

static int reopen_ro(int fd)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(ro >= 0);
	return ro;
}

static struct dmb_bregion *open_region(struct dmb_backend *be, int fd, uint64_t size, bool writable)
{
	struct dmb_region_desc d = { .fd = fd, .size = size, .page_size = PG, .writable = writable };
	struct dmb_bregion *r = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(be->ops->region_open(be, &d, &r, &e), 0);
	assert_non_null(r);
	return r;
}

static int setup_with(void **state, bool populate)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	struct dmb_backend_config cfg = { .name = "sim", .sim_populate = populate };
	assert_int_equal(dmb_sim_create(&cfg, &f->be, &f->e), 0);
	f->ops = f->be->ops;
	assert_int_equal(f->ops->ctx_open(f->be, &f->ctx, &f->e), 0);
	f->fd = make_memfd(REGION_SIZE, true);
	f->ro_fd = reopen_ro(f->fd);
	f->rw = open_region(f->be, f->fd, REGION_SIZE, true);
	f->ro = open_region(f->be, f->ro_fd, REGION_SIZE, false);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, false);
}

static int setup_populate(void **state)
{
	return setup_with(state, true);
}

static int teardown(void **state)
{
	struct fx *f = *state;
	f->ops->ctx_close(f->ctx);
	f->ops->region_close(f->rw);
	f->ops->region_close(f->ro);
	/* Every pin is returned once the last context is gone. */
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	dmb_backend_destroy(f->be);
	close(f->fd);
	close(f->ro_fd);
	free(f);
	return 0;
}

/* Shorthands that reset the error record per call. */
static int map(struct fx *f, struct dmb_bregion *r, uint64_t off, uint64_t iova, uint64_t len,
	       uint32_t prot)
{
	dmb_err_clear(&f->e);
	return f->ops->map(f->ctx, r, off, iova, len, prot, &f->e);
}

static int unmap(struct fx *f, uint64_t iova, uint64_t len, uint64_t *unmapped)
{
	dmb_err_clear(&f->e);
	return f->ops->unmap(f->ctx, iova, len, unmapped, &f->e);
}

static int dma(struct fx *f, uint64_t iova, void *buf, size_t len, bool to_memory)
{
	dmb_err_clear(&f->e);
	return f->ops->dma(f->ctx, iova, buf, len, to_memory, &f->e);
}

static uint8_t file_byte(int fd, uint64_t off)
{
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	return b;
}

/* The whole file still holds pattern(). */
static void assert_file_pristine(int fd)
{
	uint8_t *buf = malloc(REGION_SIZE);
	assert_non_null(buf);
	assert_int_equal(pread(fd, buf, REGION_SIZE, 0), (ssize_t)REGION_SIZE);
	for (uint64_t i = 0; i < REGION_SIZE; i++)
		if (buf[i] != pattern(i))
			fail_msg("file byte 0x%" PRIx64 " changed to 0x%02x", i, buf[i]);
	free(buf);
}

/* One byte of device read at iova: 0 and the byte, or the error. */
static int dma_peek(struct fx *f, uint64_t iova, uint8_t *b)
{
	return dma(f, iova, b, 1, false);
}

static void assert_msg_has(const struct fx *f, const char *needle)
{
	if (!strstr(f->e.msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", f->e.msg, needle);
}

/* ---- the backend object ---------------------------------------------- */

static void test_create_by_name(void **state)
{
	(void)state;
	struct dmb_backend_config cfg = { .name = "sim" };
	struct dmb_backend *be = NULL;
	struct dmb_err e = { 0 };

	assert_int_equal(dmb_backend_create(&cfg, &be, &e), 0);
	assert_string_equal(be->ops->name, "sim");
	bool dma_engine = false, unmap_all = false, map_file = false;
	for (const char *const *p = be->features; *p; p++) {
		dma_engine |= strcmp(*p, "dma-engine") == 0;
		unmap_all |= strcmp(*p, "unmap-all") == 0;
		map_file |= strcmp(*p, "map-file") == 0;
	}
	assert_true(dma_engine && unmap_all && map_file);
	assert_non_null(be->ops->dma);
	assert_int_equal(be->ops->pinned_bytes(be), 0);
	dmb_backend_destroy(be);
}

static void test_null_is_harmless(void **state)
{
	struct fx *f = *state;
	uint64_t n = 1;
	uint8_t b;

	f->ops->ctx_close(NULL);
	f->ops->region_close(NULL);
	f->ops->destroy(NULL);
	dmb_backend_destroy(NULL);
	assert_int_equal(f->ops->pinned_bytes(NULL), 0);
	assert_int_equal(f->ops->map(NULL, f->rw, 0, BASE, PG, RW, NULL), -EINVAL);
	assert_int_equal(f->ops->map(f->ctx, NULL, 0, BASE, PG, RW, NULL), -EINVAL);
	assert_int_equal(f->ops->unmap(NULL, BASE, PG, &n, NULL), -EINVAL);
	assert_int_equal(n, 0);
	assert_int_equal(f->ops->unmap_all(NULL, NULL, NULL), -EINVAL);
	assert_int_equal(f->ops->dma(NULL, BASE, &b, 1, false, NULL), -EINVAL);
	assert_int_equal(f->ops->iova_info(NULL, NULL, NULL), -EINVAL);
	/* A zero-byte DMA moves nothing and cannot fault. */
	assert_int_equal(dma(f, BASE, &b, 0, true), 0);
}

static void test_iova_info(void **state)
{
	struct fx *f = *state;
	struct dmb_iova_info info;

	memset(&info, 0xff, sizeof(info));
	assert_int_equal(f->ops->iova_info(f->ctx, &info, &f->e), 0);
	assert_int_equal(info.n, 2);
	assert_int_equal(info.ranges[0].start, 0);
	assert_int_equal(info.ranges[0].last, MSI_START - 1);
	assert_int_equal(info.ranges[1].start, MSI_LAST + 1);
	assert_int_equal(info.ranges[1].last, APERTURE_END - 1);
	assert_int_equal(info.alignment, 4096);
	assert_int_equal(info.max_mappings, 0);
}

static void test_region_open_refuses(void **state)
{
	struct fx *f = *state;
	struct dmb_bregion *r = NULL;
	struct dmb_err e = { 0 };
	int p[2];

	struct dmb_region_desc d = { .fd = -1, .size = PG, .page_size = PG };
	assert_int_equal(f->ops->region_open(f->be, &d, &r, &e), -EBADF);
	d = (struct dmb_region_desc){ .fd = f->fd, .size = PG + 1, .page_size = PG };
	assert_int_equal(f->ops->region_open(f->be, &d, &r, &e), -EINVAL);
	d = (struct dmb_region_desc){ .fd = f->fd, .size = PG, .page_size = 0 };
	assert_int_equal(f->ops->region_open(f->be, &d, &r, &e), -EINVAL);
	/* Longer than the file. */
	d = (struct dmb_region_desc){ .fd = f->fd, .size = 2 * REGION_SIZE, .page_size = PG };
	assert_int_equal(f->ops->region_open(f->be, &d, &r, &e), -EINVAL);
	/* Not a regular file. */
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	d = (struct dmb_region_desc){ .fd = p[0], .size = PG, .page_size = PG };
	assert_int_equal(f->ops->region_open(f->be, &d, &r, &e), -EINVAL);
	close(p[0]);
	close(p[1]);
	/* Claimed writable, but the fd is read-only: the shared mmap fails. */
	d = (struct dmb_region_desc){ .fd = f->ro_fd, .size = PG, .page_size = PG, .writable = true };
	assert_int_equal(f->ops->region_open(f->be, &d, &r, &e), -EACCES);
	assert_null(r);
}

/* ---- map: the kernel's refusals ------------------------------------------ */

static void test_map_reserved_msi_window(void **state)
{
	struct fx *f = *state;
	uint8_t b;

	assert_int_equal(map(f, f->rw, 0, MSI_START, PG, RW), -EINVAL);
	assert_msg_has(f, "MSI");
	assert_int_equal(map(f, f->rw, 0, MSI_LAST + 1 - PG, PG, RW), -EINVAL);
	/* Straddling either edge, and covering the whole window. */
	assert_int_equal(map(f, f->rw, 0, MSI_START - PG, 2 * PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, MSI_LAST + 1 - PG, 2 * PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, MSI_START - PG, MSI_LAST + 1 - MSI_START + 2 * PG, RW),
			 -EINVAL);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);

	/* Right up to it on both sides is fine. */
	assert_int_equal(map(f, f->rw, 0, MSI_START - PG, PG, RW), 0);
	assert_int_equal(map(f, f->rw, PG, MSI_LAST + 1, PG, RW), 0);
	assert_int_equal(dma_peek(f, MSI_START - 1, &b), 0);
	assert_int_equal(b, pattern(PG - 1));
	assert_int_equal(dma_peek(f, MSI_LAST + 1, &b), 0);
	assert_int_equal(b, pattern(PG));
	assert_int_equal(dma_peek(f, MSI_START, &b), -EFAULT);
}

static void test_map_outside_aperture(void **state)
{
	struct fx *f = *state;
	uint8_t b;

	assert_int_equal(map(f, f->rw, 0, APERTURE_END, PG, RW), -EINVAL);
	assert_msg_has(f, "aperture");
	assert_int_equal(map(f, f->rw, 0, APERTURE_END - PG, 2 * PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, UINT64_MAX - PG + 1, PG, RW), -EINVAL);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);

	/* The first and last page of the aperture are usable. */
	assert_int_equal(map(f, f->rw, 0, 0, PG, RW), 0);
	assert_int_equal(map(f, f->rw, PG, APERTURE_END - PG, PG, RW), 0);
	assert_int_equal(dma_peek(f, 0, &b), 0);
	assert_int_equal(b, pattern(0));
	assert_int_equal(dma_peek(f, APERTURE_END - 1, &b), 0);
	assert_int_equal(b, pattern(2 * PG - 1));
}

static void test_map_alignment_and_length(void **state)
{
	struct fx *f = *state;

	assert_int_equal(map(f, f->rw, 0, BASE, 0, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, BASE + 1, PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, BASE + 512, PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, BASE, PG + 1, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, BASE, PG / 2, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 512, BASE, PG, RW), -EINVAL);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	assert_int_equal(map(f, f->rw, PG, BASE, PG, RW), 0);
}

static void test_map_overflow(void **state)
{
	struct fx *f = *state;

	assert_int_equal(map(f, f->rw, 0, UINT64_MAX - PG + 1, 2 * PG, RW), -EOVERFLOW);
	assert_int_equal(map(f, f->rw, 0, BASE, UINT64_MAX, RW), -EOVERFLOW);
	assert_int_equal(map(f, f->rw, 0, UINT64_MAX, 1, RW), -EOVERFLOW);
	assert_int_equal(map(f, f->rw, 0, BASE, UINT64_MAX - PG + 1, RW), -EOVERFLOW);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
}

static void test_map_prot(void **state)
{
	struct fx *f = *state;

	assert_int_equal(map(f, f->rw, 0, BASE, PG, 0), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, BASE, PG, 1u << 2), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, BASE, PG, RW | (1u << 7)), -EINVAL);
	/* A write pin of read-only memory fails, whatever else is asked. */
	assert_int_equal(map(f, f->ro, 0, BASE, PG, W), -EFAULT);
	assert_int_equal(map(f, f->ro, 0, BASE, PG, RW), -EFAULT);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	assert_int_equal(map(f, f->ro, 0, BASE, PG, R), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + PG, PG, W), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 2 * PG, PG, R), 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 3 * PG);
}

static void test_map_past_region(void **state)
{
	struct fx *f = *state;

	assert_int_equal(map(f, f->rw, REGION_SIZE - PG, BASE, 2 * PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, REGION_SIZE, BASE, PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, 0, BASE, REGION_SIZE + PG, RW), -EINVAL);
	assert_int_equal(map(f, f->rw, UINT64_MAX - PG + 1, BASE, PG, RW), -EINVAL);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	/* Exactly the whole region, and exactly its last page. */
	assert_int_equal(map(f, f->rw, 0, BASE, REGION_SIZE, RW), 0);
	assert_int_equal(map(f, f->rw, REGION_SIZE - PG, BASE + REGION_SIZE, PG, RW), 0);
}

static void test_map_region_of_other_backend(void **state)
{
	struct fx *f = *state;
	struct dmb_backend *other = NULL;
	struct dmb_err e = { 0 };

	assert_int_equal(dmb_sim_create(NULL, &other, &e), 0);
	struct dmb_bregion *r = open_region(other, f->fd, REGION_SIZE, true);
	assert_int_equal(map(f, r, 0, BASE, PG, RW), -EINVAL);
	other->ops->region_close(r);
	dmb_backend_destroy(other);
}

static void test_map_overlap(void **state)
{
	struct fx *f = *state;

	assert_int_equal(map(f, f->rw, 0, BASE, 4 * PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE, 4 * PG, RW), -EEXIST);      /* same */
	assert_int_equal(map(f, f->rw, 0, BASE - PG, 2 * PG, RW), -EEXIST); /* low edge */
	assert_int_equal(map(f, f->rw, 0, BASE + 3 * PG, 2 * PG, RW), -EEXIST); /* high edge */
	assert_int_equal(map(f, f->rw, 0, BASE + PG, PG, RW), -EEXIST);     /* inside */
	assert_int_equal(map(f, f->rw, 0, BASE - PG, 6 * PG, RW), -EEXIST); /* around */
	assert_int_equal(f->ops->pinned_bytes(f->be), 4 * PG);

	/* Adjacent on both sides: separate areas. */
	assert_int_equal(map(f, f->rw, 0, BASE - PG, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 4 * PG, PG, RW), 0);
	/* With neighbours on both sides, a hole in between is still checked. */
	assert_int_equal(map(f, f->rw, 0, BASE + 6 * PG, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 4 * PG, 3 * PG, RW), -EEXIST);
	assert_int_equal(map(f, f->rw, 0, BASE + 5 * PG, 2 * PG, RW), -EEXIST);
	assert_int_equal(map(f, f->rw, 0, BASE + 5 * PG, PG, RW), 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 8 * PG);
}

/* ---- unmap --------------------------------------------------------------- */

static void test_unmap_straddling(void **state)
{
	struct fx *f = *state;
	uint64_t n;
	uint8_t b;

	assert_int_equal(map(f, f->rw, 0, BASE, 2 * PG, RW), 0);
	assert_int_equal(unmap(f, BASE + PG, 2 * PG, &n), -ENOENT); /* high end */
	assert_int_equal(unmap(f, BASE - PG, 2 * PG, &n), -ENOENT); /* low end */
	assert_int_equal(unmap(f, BASE, PG, &n), -ENOENT);          /* truncate */
	assert_int_equal(unmap(f, BASE + PG, PG, &n), -ENOENT);     /* split */
	assert_int_equal(n, 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 2 * PG);
	assert_int_equal(dma_peek(f, BASE, &b), 0);
	assert_int_equal(dma_peek(f, BASE + 2 * PG - 1, &b), 0);

	assert_int_equal(unmap(f, BASE, 2 * PG, &n), 0);
	assert_int_equal(n, 2 * PG);
	assert_int_equal(dma_peek(f, BASE, &b), -EFAULT);
}

static void test_unmap_nothing(void **state)
{
	struct fx *f = *state;
	uint64_t n = 99;

	assert_int_equal(unmap(f, BASE, PG, &n), -ENOENT);
	assert_int_equal(n, 0);
	assert_int_equal(map(f, f->rw, 0, BASE, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 2 * PG, PG, RW), 0);
	assert_int_equal(unmap(f, BASE + PG, PG, &n), -ENOENT); /* the gap */
	assert_int_equal(unmap(f, BASE + 16 * PG, 16 * PG, &n), -ENOENT);
	assert_int_equal(unmap(f, 0, BASE, &n), -ENOENT);
	assert_int_equal(unmap(f, BASE, 0, &n), -EINVAL);
	assert_int_equal(unmap(f, UINT64_MAX - PG + 1, 2 * PG, &n), -EOVERFLOW);
	assert_int_equal(unmap(f, BASE, UINT64_MAX, &n), -EOVERFLOW);
	assert_int_equal(f->ops->pinned_bytes(f->be), 2 * PG);
}

static void test_unmap_several_areas(void **state)
{
	struct fx *f = *state;
	uint64_t n;
	uint8_t b;

	assert_int_equal(map(f, f->rw, 0, BASE, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 2 * PG, 2 * PG, RW), 0);
	assert_int_equal(map(f, f->ro, 0, BASE + 5 * PG, PG, R), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 64 * PG, PG, RW), 0); /* outside the range */

	/* Unaligned edges are fine for unmap: it only looks at areas. */
	assert_int_equal(unmap(f, BASE - 123, 32 * PG, &n), 0);
	assert_int_equal(n, 4 * PG);
	assert_int_equal(dma_peek(f, BASE, &b), -EFAULT);
	assert_int_equal(dma_peek(f, BASE + 2 * PG, &b), -EFAULT);
	assert_int_equal(dma_peek(f, BASE + 5 * PG, &b), -EFAULT);
	assert_int_equal(dma_peek(f, BASE + 64 * PG, &b), 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), PG);
	/* The space is free again. */
	assert_int_equal(map(f, f->rw, 0, BASE, 6 * PG, RW), 0);
}

/* Like the kernel, unmap is not transactional: areas below a straddling one
 * are already gone when the walk stops. */
static void test_unmap_not_transactional(void **state)
{
	struct fx *f = *state;
	uint64_t n;
	uint8_t b;

	assert_int_equal(map(f, f->rw, 0, BASE, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + PG, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 2 * PG, 2 * PG, RW), 0);

	assert_int_equal(unmap(f, BASE, 3 * PG, &n), -ENOENT);
	assert_msg_has(f, "straddles");
	assert_int_equal(n, 2 * PG);
	assert_int_equal(dma_peek(f, BASE, &b), -EFAULT);
	assert_int_equal(dma_peek(f, BASE + PG, &b), -EFAULT);
	assert_int_equal(dma_peek(f, BASE + 2 * PG, &b), 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 2 * PG);

	/* A straddle at the low end stops the walk before anything goes. */
	assert_int_equal(map(f, f->rw, 0, BASE + 4 * PG, PG, RW), 0);
	assert_int_equal(unmap(f, BASE + 3 * PG, 2 * PG, &n), -ENOENT);
	assert_int_equal(n, 0);
	assert_int_equal(dma_peek(f, BASE + 4 * PG, &b), 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 3 * PG);
}

static void test_unmap_all(void **state)
{
	struct fx *f = *state;
	uint64_t n = 99;
	uint8_t b;

	assert_int_equal(f->ops->unmap_all(f->ctx, &n, &f->e), 0); /* empty is fine */
	assert_int_equal(n, 0);
	assert_int_equal(map(f, f->rw, 0, 0, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE, 3 * PG, RW), 0);
	assert_int_equal(map(f, f->ro, 0, APERTURE_END - PG, PG, R), 0);
	assert_int_equal(f->ops->unmap_all(f->ctx, &n, &f->e), 0);
	assert_int_equal(n, 5 * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	assert_int_equal(dma_peek(f, BASE, &b), -EFAULT);

	/* The kernel's own unmap-all pair through unmap. */
	assert_int_equal(map(f, f->rw, 0, BASE, 2 * PG, RW), 0);
	assert_int_equal(map(f, f->rw, 0, BASE + 4 * PG, PG, RW), 0);
	assert_int_equal(unmap(f, 0, UINT64_MAX, &n), 0);
	assert_int_equal(n, 3 * PG);
	assert_int_equal(unmap(f, 0, UINT64_MAX, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
}

/* ---- the DMA engine ------------------------------------------------------ */

static void test_dma_both_directions(void **state)
{
	struct fx *f = *state;
	const uint64_t off = 8 * PG;
	uint8_t out[3 * 4096 + 100], in[sizeof(out)], back[sizeof(out)];

	assert_int_equal(map(f, f->rw, off, BASE, 4 * PG, RW), 0);

	/* Device write: lands in the file at the translated offset. */
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)(0xA5 ^ i);
	assert_int_equal(dma(f, BASE + 50, out, sizeof(out), true), 0);
	assert_int_equal(pread(f->fd, in, sizeof(in), (off_t)(off + 50)), (ssize_t)sizeof(in));
	assert_memory_equal(in, out, sizeof(out));
	/* Bytes around it are untouched. */
	assert_int_equal(file_byte(f->fd, off + 49), pattern(off + 49));
	assert_int_equal(file_byte(f->fd, off + 50 + sizeof(out)), pattern(off + 50 + sizeof(out)));

	/* Device read: sees what was written to the file behind the sim. */
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)(0x3C + 5 * i);
	assert_int_equal(pwrite(f->fd, out, sizeof(out), (off_t)(off + 77)), (ssize_t)sizeof(out));
	assert_int_equal(dma(f, BASE + 77, back, sizeof(back), false), 0);
	assert_memory_equal(back, out, sizeof(out));
}

static void test_dma_first_and_last_byte(void **state)
{
	struct fx *f = *state;
	const uint64_t off = 3 * PG, len = 2 * PG;
	uint8_t b, two[2] = { 0x11, 0x22 };

	assert_int_equal(map(f, f->rw, off, BASE, len, RW), 0);
	b = 0xE1;
	assert_int_equal(dma(f, BASE, &b, 1, true), 0);
	assert_int_equal(file_byte(f->fd, off), 0xE1);
	b = 0xE2;
	assert_int_equal(dma(f, BASE + len - 1, &b, 1, true), 0);
	assert_int_equal(file_byte(f->fd, off + len - 1), 0xE2);
	assert_int_equal(dma_peek(f, BASE, &b), 0);
	assert_int_equal(b, 0xE1);
	assert_int_equal(dma_peek(f, BASE + len - 1, &b), 0);
	assert_int_equal(b, 0xE2);

	/* One byte either side of the mapping faults, naming the IOVA. */
	assert_int_equal(dma_peek(f, BASE - 1, &b), -EFAULT);
	assert_msg_has(f, "0xfffffff");
	assert_int_equal(dma_peek(f, BASE + len, &b), -EFAULT);
	assert_msg_has(f, "0x10002000");
	/* Running one byte past the end moves nothing at all. */
	assert_int_equal(dma(f, BASE + len - 1, two, 2, true), -EFAULT);
	assert_int_equal(f->e.sys_errno, EFAULT);
	assert_msg_has(f, "0x10002000");
	assert_int_equal(file_byte(f->fd, off + len - 1), 0xE2);
	assert_int_equal(file_byte(f->fd, off + len), pattern(off + len));
	/* The whole mapping in one transfer. */
	uint8_t *buf = malloc(len);
	assert_non_null(buf);
	assert_int_equal(dma(f, BASE, buf, len, false), 0);
	assert_int_equal(buf[0], 0xE1);
	assert_int_equal(buf[len - 1], 0xE2);
	for (uint64_t i = 1; i < len - 1; i++)
		assert_int_equal(buf[i], pattern(off + i));
	free(buf);
}

/* Two adjacent areas that map distant, out-of-order parts of the file: a DMA
 * across their boundary splits at exactly the right byte. */
static void test_dma_across_adjacent_areas(void **state)
{
	struct fx *f = *state;
	uint8_t out[200], in[100], back[200];

	assert_int_equal(map(f, f->rw, 10 * PG, BASE, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 3 * PG, BASE + PG, PG, RW), 0);
	assert_int_equal(map(f, f->ro, 20 * PG, BASE + 2 * PG, PG, R), 0);

	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)(0x80 + i);
	assert_int_equal(dma(f, BASE + PG - 100, out, sizeof(out), true), 0);
	assert_int_equal(pread(f->fd, in, 100, (off_t)(11 * PG - 100)), 100);
	assert_memory_equal(in, out, 100);
	assert_int_equal(pread(f->fd, in, 100, (off_t)(3 * PG)), 100);
	assert_memory_equal(in, out + 100, 100);
	assert_int_equal(dma(f, BASE + PG - 100, back, sizeof(back), false), 0);
	assert_memory_equal(back, out, sizeof(out));

	/* Reading across all three, including the read-only one. */
	uint8_t *buf = malloc(3 * PG);
	assert_non_null(buf);
	assert_int_equal(dma(f, BASE, buf, 3 * PG, false), 0);
	assert_int_equal(buf[PG - 1], 0x80 + 99);
	assert_int_equal(buf[PG], 0x80 + 100);
	assert_int_equal(buf[2 * PG], pattern(20 * PG));
	assert_int_equal(buf[3 * PG - 1], pattern(21 * PG - 1));
	free(buf);

	/* Writing into the read-only third faults and leaves the second alone. */
	memset(out, 0x5A, sizeof(out));
	assert_int_equal(dma(f, BASE + 2 * PG - 100, out, sizeof(out), true), -EFAULT);
	assert_msg_has(f, "0x10002000");
	assert_int_equal(pread(f->fd, in, 100, (off_t)(4 * PG - 100)), 100);
	for (size_t i = 0; i < 100; i++)
		assert_int_equal(in[i], pattern(4 * PG - 100 + i));
}

static void test_dma_into_hole(void **state)
{
	struct fx *f = *state;
	uint8_t *buf = malloc(3 * PG);
	assert_non_null(buf);

	assert_int_equal(map(f, f->rw, 0, BASE, PG, RW), 0);
	assert_int_equal(map(f, f->rw, 2 * PG, BASE + 2 * PG, PG, RW), 0);

	memset(buf, 0x77, 3 * PG);
	assert_int_equal(dma(f, BASE, buf, 3 * PG, true), -EFAULT);
	assert_int_equal(f->e.sys_errno, EFAULT);
	assert_msg_has(f, "0x10001000");
	assert_file_pristine(f->fd);

	assert_int_equal(dma(f, BASE, buf, 3 * PG, false), -EFAULT);
	for (uint64_t i = 0; i < 3 * PG; i++)
		assert_int_equal(buf[i], 0x77);

	/* Starting in the hole, and entirely unmapped space. */
	assert_int_equal(dma(f, BASE + PG + 10, buf, PG, true), -EFAULT);
	assert_msg_has(f, "0x1000100a");
	assert_int_equal(dma(f, 0x40000000, buf, 8, true), -EFAULT);
	assert_int_equal(dma(f, UINT64_MAX - 3, buf, 8, false), -EFAULT);
	assert_file_pristine(f->fd);
	free(buf);
}

static void test_dma_permission_miss(void **state)
{
	struct fx *f = *state;
	uint8_t buf[64];

	assert_int_equal(map(f, f->rw, 0, BASE, PG, W), 0);      /* device may only write */
	assert_int_equal(map(f, f->rw, PG, BASE + PG, PG, R), 0); /* device may only read */

	memset(buf, 0x99, sizeof(buf));
	assert_int_equal(dma(f, BASE + 8, buf, sizeof(buf), false), -EFAULT);
	assert_int_equal(f->e.code, DMB_E_PERMISSION_DENIED);
	assert_msg_has(f, "0x10000008");
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], 0x99);
	assert_int_equal(dma(f, BASE + PG + 8, buf, sizeof(buf), true), -EFAULT);
	assert_int_equal(f->e.code, DMB_E_PERMISSION_DENIED);
	assert_file_pristine(f->fd);

	/* The permitted directions work. */
	assert_int_equal(dma(f, BASE + 8, buf, sizeof(buf), true), 0);
	assert_int_equal(file_byte(f->fd, 8), 0x99);
	assert_int_equal(dma(f, BASE + PG + 8, buf, sizeof(buf), false), 0);
	assert_int_equal(buf[0], pattern(PG + 8));
}

/* ---- lifetime and accounting -------------------------------------------- */

static void test_pinned_accounting(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c2 = NULL;
	uint64_t n;

	assert_int_equal(f->ops->ctx_open(f->be, &c2, &f->e), 0);
	assert_int_equal(map(f, f->rw, 0, BASE, 4 * PG, RW), 0);
	assert_int_equal(map(f, f->ro, 0, BASE + 8 * PG, 2 * PG, R), 0);
	/* The same region at the same IOVA in another context pins again. */
	assert_int_equal(f->ops->map(c2, f->rw, 0, BASE, 4 * PG, RW, &f->e), 0);
	assert_int_equal(f->ops->map(c2, f->rw, 0, BASE + 4 * PG, 16 * PG, R, &f->e), 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 26 * PG);

	/* Refusals pin nothing. */
	assert_int_equal(map(f, f->rw, 0, BASE, PG, RW), -EEXIST);
	assert_int_equal(map(f, f->ro, 0, BASE + 32 * PG, PG, RW), -EFAULT);
	assert_int_equal(f->ops->pinned_bytes(f->be), 26 * PG);

	assert_int_equal(unmap(f, BASE + 8 * PG, 2 * PG, &n), 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 24 * PG);
	f->ops->ctx_close(c2);
	assert_int_equal(f->ops->pinned_bytes(f->be), 4 * PG);
	assert_int_equal(f->ops->unmap_all(f->ctx, &n, &f->e), 0);
	assert_int_equal(n, 4 * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
}

/* The area holds the region: closing it while mapped keeps the memory
 * reachable until the last area goes (LSan/ASan check the rest). */
static void test_region_outlives_close(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c2 = NULL;
	uint64_t n;
	uint8_t b = 0xC7;

	assert_int_equal(f->ops->ctx_open(f->be, &c2, &f->e), 0);
	assert_int_equal(map(f, f->rw, 5 * PG, BASE, PG, RW), 0);
	assert_int_equal(f->ops->map(c2, f->rw, 5 * PG, BASE, PG, RW, &f->e), 0);
	f->ops->region_close(f->rw);
	f->rw = NULL;

	assert_int_equal(dma(f, BASE + 1, &b, 1, true), 0);
	assert_int_equal(file_byte(f->fd, 5 * PG + 1), 0xC7);
	assert_int_equal(unmap(f, BASE, PG, &n), 0);
	/* Still mapped in the other context. */
	b = 0;
	assert_int_equal(f->ops->dma(c2, BASE + 1, &b, 1, false, &f->e), 0);
	assert_int_equal(b, 0xC7);
	f->ops->ctx_close(c2);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
}

static void test_ten_thousand_maps(void **state)
{
	struct fx *f = *state;
	const unsigned count = 10000;
	uint64_t n;
	uint8_t b;

	/* Inserted in a scattered order so the tree does real work. */
	for (unsigned k = 0; k < count; k++) {
		unsigned i = (unsigned)((k * 7919u) % count);
		assert_int_equal(map(f, f->rw, (i % REGION_PAGES) * PG, BASE + 2 * (uint64_t)i * PG, PG, RW), 0);
	}
	assert_int_equal(f->ops->pinned_bytes(f->be), count * PG);
	for (unsigned i = 0; i < count; i += 997) {
		assert_int_equal(dma_peek(f, BASE + 2 * (uint64_t)i * PG + 17, &b), 0);
		assert_int_equal(b, pattern((i % REGION_PAGES) * PG + 17));
		assert_int_equal(dma_peek(f, BASE + (2 * (uint64_t)i + 1) * PG, &b), -EFAULT);
	}
	assert_int_equal(f->ops->unmap_all(f->ctx, &n, &f->e), 0);
	assert_int_equal(n, count * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);

	/* Again, through recycled nodes, and left for ctx_close to clean up. */
	for (unsigned i = 0; i < count; i++)
		assert_int_equal(map(f, f->rw, 0, BASE + i * PG, PG, RW), 0);
	assert_int_equal(unmap(f, BASE + 100 * PG, 50 * PG, &n), 0);
	assert_int_equal(n, 50 * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), (count - 50) * PG);
}

static void test_populate_touches_pages(void **state)
{
	struct fx *f = *state;
	struct stat st;
	int fd = make_memfd(64 * PG, false);
	struct dmb_bregion *r = open_region(f->be, fd, 64 * PG, true);

	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_blocks, 0);
	assert_int_equal(map(f, r, 8 * PG, BASE, 16 * PG, RW), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_true((uint64_t)st.st_blocks * 512 >= 16 * PG);
	f->ops->region_close(r);
	close(fd);
}

static void test_no_populate_by_default(void **state)
{
	struct fx *f = *state;
	struct stat st;
	int fd = make_memfd(64 * PG, false);
	struct dmb_bregion *r = open_region(f->be, fd, 64 * PG, true);

	assert_int_equal(map(f, r, 0, BASE, 64 * PG, RW), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_blocks, 0);
	f->ops->region_close(r);
	close(fd);
}

/* Contexts on different threads share the backend's pinned counter and the
 * region's refcount (backend.h threading rule): both must come out exact. */
struct worker {
	struct fx *f;
	struct dmb_bctx *ctx;
	int failures;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	const struct dmb_backend_ops *ops = w->f->ops;
	uint64_t n;

	for (unsigned i = 0; i < 20000; i++) {
		uint64_t iova = BASE + (i % 64) * PG;
		if (ops->map(w->ctx, w->f->rw, (i % 64) * PG, iova, PG, RW, NULL) != 0)
			w->failures++;
		if (i % 64 == 63 && (ops->unmap(w->ctx, BASE, 64 * PG, &n, NULL) != 0 || n != 64 * PG))
			w->failures++;
	}
	return NULL;
}

static void test_contexts_on_threads(void **state)
{
	struct fx *f = *state;
	struct worker w[4];
	pthread_t t[4];

	for (unsigned i = 0; i < 4; i++) {
		w[i] = (struct worker){ .f = f };
		assert_int_equal(f->ops->ctx_open(f->be, &w[i].ctx, &f->e), 0);
	}
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	/* 20000 = 312 * 64 + 32: each context keeps 32 pages mapped. */
	assert_int_equal(f->ops->pinned_bytes(f->be), 4 * 32 * PG);
	f->ops->region_close(f->rw); /* the areas keep it alive */
	f->rw = NULL;
	for (unsigned i = 0; i < 4; i++) {
		assert_int_equal(w[i].failures, 0);
		f->ops->ctx_close(w[i].ctx);
	}
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
}

/* Random maps and unmaps in a 64-page window against a naive reference that
 * applies the kernel's rules page by page; every 100 operations each page is
 * probed by a device write and the file is checked with pread(). */
#define WIN 64u
static void test_against_reference_model(void **state)
{
	struct fx *f = *state;
	int owner[WIN];     /* first page of the area holding the page, -1 = none */
	unsigned end[WIN];  /* by first page: one past the area's last page */
	uint32_t seed = 12345;

	for (unsigned p = 0; p < WIN; p++)
		owner[p] = -1;

	for (unsigned op = 0; op < 4000; op++) {
		seed = seed * 1103515245u + 12345u;
		unsigned s = (seed >> 8) % WIN;
		unsigned len = 1 + (seed >> 20) % (((seed >> 4) & 1) ? 8 : 16);
		if (s + len > WIN)
			len = WIN - s;

		if ((seed >> 4) & 1) {
			int want = 0;
			for (unsigned p = s; p < s + len; p++)
				if (owner[p] >= 0)
					want = -EEXIST;
			/* The area maps the file page-for-page with the window. */
			assert_int_equal(map(f, f->rw, s * PG, BASE + s * PG, len * PG, RW), want);
			if (want == 0) {
				end[s] = s + len;
				for (unsigned p = s; p < s + len; p++)
					owner[p] = (int)s;
			}
		} else {
			int want = -ENOENT;
			uint64_t want_bytes = 0;
			for (unsigned p = s; p < s + len;) {
				if (owner[p] < 0) {
					p++;
					continue;
				}
				unsigned a = (unsigned)owner[p];
				if (a < s || end[a] > s + len) {
					want = -ENOENT; /* what went before stays gone */
					break;
				}
				want = 0;
				for (unsigned q = a; q < end[a]; q++)
					owner[q] = -1;
				want_bytes += (end[a] - a) * PG;
				p = end[a];
			}
			uint64_t n;
			assert_int_equal(unmap(f, BASE + s * PG, len * PG, &n), want);
			assert_int_equal(n, want_bytes);
		}

		if (op % 100 == 99) {
			uint64_t pinned = 0;
			for (unsigned p = 0; p < WIN; p++) {
				uint8_t b = (uint8_t)op, before = file_byte(f->fd, p * PG + 1);
				bool mapped = owner[p] >= 0;
				assert_int_equal(dma(f, BASE + p * PG + 1, &b, 1, true), mapped ? 0 : -EFAULT);
				assert_int_equal(file_byte(f->fd, p * PG + 1), mapped ? (uint8_t)op : before);
				pinned += mapped ? PG : 0;
			}
			assert_int_equal(f->ops->pinned_bytes(f->be), pinned);
		}
	}
}

/* The same against several sources at once: three files and a read-only
 * registration of the first one (a second region of the same file), random
 * offsets and prot, a wider window and an occasional unmap-all. The table
 * shares one source record among the areas of a region (sim_table.c), so
 * every probe checks that a page reaches the right file at the right
 * offset: a device write lands there (pread), a read returns what is there. */
#define WIN2 256u
static void test_reference_model_many_sources(void **state)
{
	struct fx *f = *state;
	int fds[3] = { f->fd, make_memfd(REGION_SIZE, true), make_memfd(REGION_SIZE, true) };
	struct dmb_bregion *regs[4] = { f->rw, open_region(f->be, fds[1], REGION_SIZE, true),
					open_region(f->be, fds[2], REGION_SIZE, true), f->ro };
	const int reg_fd[4] = { fds[0], fds[1], fds[2], fds[0] };
	struct {
		int owner;       /* first page of the area holding the page, -1 = none */
		unsigned end;    /* by first page: one past the area's last page */
		unsigned reg;    /* by first page */
		uint64_t off;    /* by first page: file offset of the first page */
		uint32_t prot;   /* by first page */
	} m[WIN2];
	uint64_t seed = 0x2545f4914f6cdd1dULL;

	for (unsigned p = 0; p < WIN2; p++)
		m[p].owner = -1;
	for (unsigned op = 0; op < 20000; op++) {
		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		unsigned s = (unsigned)(seed % WIN2), kind = (unsigned)(seed >> 60);
		unsigned len = 1 + (unsigned)((seed >> 20) % 12);
		if (s + len > WIN2)
			len = WIN2 - s;
		if (kind == 0 && (seed >> 8) % 50 == 0) {
			uint64_t n, want = 0;
			for (unsigned p = 0; p < WIN2; p++)
				want += m[p].owner >= 0 ? PG : 0;
			assert_int_equal(f->ops->unmap_all(f->ctx, &n, &f->e), 0);
			assert_int_equal(n, want);
			for (unsigned p = 0; p < WIN2; p++)
				m[p].owner = -1;
		} else if (kind < 9) {
			unsigned reg = (unsigned)(seed >> 32) % 4;
			uint32_t prot = reg == 3 ? R : (uint32_t)(1 + (seed >> 36) % 3);
			uint64_t off = ((seed >> 40) % (REGION_PAGES - 16)) * PG;
			int want = 0;
			for (unsigned p = s; p < s + len; p++)
				if (m[p].owner >= 0)
					want = -EEXIST;
			assert_int_equal(map(f, regs[reg], off, BASE + s * PG, len * PG, prot), want);
			if (want == 0) {
				m[s].end = s + len;
				m[s].reg = reg;
				m[s].off = off;
				m[s].prot = prot;
				for (unsigned p = s; p < s + len; p++)
					m[p].owner = (int)s;
			}
		} else {
			int want = -ENOENT;
			uint64_t want_bytes = 0, n;
			for (unsigned p = s; p < s + len;) {
				if (m[p].owner < 0) {
					p++;
					continue;
				}
				unsigned a = (unsigned)m[p].owner;
				if (a < s || m[a].end > s + len) {
					want = -ENOENT;
					break;
				}
				want = 0;
				unsigned e = m[a].end;
				for (unsigned q = a; q < e; q++)
					m[q].owner = -1;
				want_bytes += (e - a) * PG;
				p = e;
			}
			assert_int_equal(unmap(f, BASE + s * PG, len * PG, &n), want);
			assert_int_equal(n, want_bytes);
		}

		if (op % 500 == 499) {
			uint64_t pinned = 0;
			for (unsigned p = 0; p < WIN2; p++) {
				uint64_t iova = BASE + p * PG + 5;
				uint8_t b = (uint8_t)(op + p), got = 0;
				if (m[p].owner < 0) {
					assert_int_equal(dma(f, iova, &b, 1, false), -EFAULT);
					continue;
				}
				unsigned a = (unsigned)m[p].owner;
				int fd = reg_fd[m[a].reg];
				uint64_t off = m[a].off + (p - a) * PG + 5;
				pinned += PG;
				if (m[a].prot & W) {
					assert_int_equal(dma(f, iova, &b, 1, true), 0);
					assert_int_equal(file_byte(fd, off), b);
				} else {
					assert_int_equal(dma(f, iova, &b, 1, true), -EFAULT);
				}
				if (m[a].prot & R) {
					assert_int_equal(dma(f, iova, &got, 1, false), 0);
					assert_int_equal(got, file_byte(fd, off));
				}
			}
			assert_int_equal(f->ops->pinned_bytes(f->be), pinned);
		}
	}
	f->ops->region_close(regs[1]);
	f->ops->region_close(regs[2]);
	close(fds[1]);
	close(fds[2]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_by_name),
		cmocka_unit_test_setup_teardown(test_null_is_harmless, setup, teardown),
		cmocka_unit_test_setup_teardown(test_iova_info, setup, teardown),
		cmocka_unit_test_setup_teardown(test_region_open_refuses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_reserved_msi_window, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_outside_aperture, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_alignment_and_length, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_overflow, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_prot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_past_region, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_region_of_other_backend, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_overlap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap_straddling, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap_several_areas, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap_not_transactional, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap_all, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dma_both_directions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dma_first_and_last_byte, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dma_across_adjacent_areas, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dma_into_hole, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dma_permission_miss, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pinned_accounting, setup, teardown),
		cmocka_unit_test_setup_teardown(test_region_outlives_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ten_thousand_maps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_populate_touches_pages, setup_populate, teardown),
		cmocka_unit_test_setup_teardown(test_no_populate_by_default, setup, teardown),
		cmocka_unit_test_setup_teardown(test_contexts_on_threads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_against_reference_model, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reference_model_many_sources, setup, teardown),
	};
	return cmocka_run_group_tests_name("sim", tests, NULL, NULL);
}
