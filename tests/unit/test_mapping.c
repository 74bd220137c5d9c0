/* Unit tests of the core's mappings (daemon/core/mapping.c) on a real sim
 * backend: the ordered map, request validation, all-or-nothing unmap and
 * batch rollback, limits and counters, and a randomized model check.
 *
 * Whether an IOVA is mapped is always proven twice: by the core's own tree
 * (map_find) and by moving bytes through the sim's DMA engine
 * (backend->ops->dma), which only sees the simulated IOMMU page table. Every
 * page of a test region starts with a tag naming the region and the page, so
 * one 8-byte device read tells where an IOVA points. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/core.h"

#define PG UINT64_C(4096)
#define BASE UINT64_C(0x100000000) /* 4 GiB: above the MSI window, inside 48 bits */
#define MSI_START UINT64_C(0xFEE00000)
#define APERTURE_END (UINT64_C(1) << 48)
#define REGION_PAGES 64u

#define R DMB_PROT_READ
#define W DMB_PROT_WRITE
#define RW (DMB_PROT_READ | DMB_PROT_WRITE)

#define NREG 3 /* 0, 1: read-write; 2: read-only */

struct fx {
	struct dmb_backend *be;
	struct dmb_core core;
	struct dmb_owner *owner;
	struct dmb_ctx *ctx;
	struct dmb_region *reg[NREG];
	int mfd[NREG];   /* the test's own fds of the region files */
	struct dmb_err e;
	uint64_t r, bytes, count;
};

static const struct dmb_limits big_limits = {
	.contexts_per_owner = 16,
	.regions_per_context = 16,
	.mappings_per_context = 1u << 20,
	.devices_per_context = 4,
};

/* The 8 bytes at the start of page `page` of test region `t`. */
static uint64_t tag(unsigned t, uint64_t page)
{
	return UINT64_C(0xD3A0000000000000) | ((uint64_t)t << 32) | page;
}

/* A sealed memfd of `pages` pages, each page starting with tag(t, page). */
static int make_memfd(unsigned t, unsigned pages)
{
	int fd = memfd_create("mapping-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)(pages * PG)), 0);
	for (uint64_t p = 0; p < pages; p++) {
		uint64_t v = tag(t, p);
		assert_int_equal(pwrite(fd, &v, sizeof(v), (off_t)(p * PG)), (ssize_t)sizeof(v));
	}
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	return fd;
}

static int reopen(int fd, int flags)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int r = open(path, flags | O_CLOEXEC);
	assert_true(r >= 0);
	return r;
}

static struct dmb_region *register_fd(struct dmb_ctx *ctx, int fd)
{
	struct dmb_region *reg = NULL;
	struct dmb_err e = { 0 };
	int r = region_register(ctx, fd, 0, &reg, &e);
	if (r < 0)
		fail_msg("region_register: %d %s", r, e.msg);
	assert_non_null(reg);
	return reg;
}

static int open_fds(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static struct dmb_backend *new_sim(void)
{
	struct dmb_backend_config cfg = { .name = "sim", .sim_populate = true };
	struct dmb_backend *be = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(dmb_sim_create(&cfg, &be, &e), 0);
	return be;
}

static int setup_limits(void **state, const struct dmb_limits *lim)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->be = new_sim();
	core_init(&f->core, f->be, lim);
	f->owner = owner_new(&f->core, 1, 1000, 1000, getpid(), false, NULL);
	assert_non_null(f->owner);
	assert_int_equal(ctx_create(f->owner, "vm0", false, &f->ctx, &f->e), 0);
	for (unsigned t = 0; t < NREG; t++) {
		f->mfd[t] = make_memfd(t, REGION_PAGES);
		int give = t == 2 ? reopen(f->mfd[t], O_RDONLY) : reopen(f->mfd[t], O_RDWR);
		f->reg[t] = register_fd(f->ctx, give);
	}
	assert_true(f->reg[0]->writable && f->reg[1]->writable && !f->reg[2]->writable);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_limits(state, &big_limits);
}

/* For cmocka_unit_test_prestate_setup_teardown: *state holds the limits. */
static int setup_prestate(void **state)
{
	return setup_limits(state, *state);
}

static int teardown(void **state)
{
	struct fx *f = *state;
	owner_free(f->owner);
	assert_int_equal(f->core.n_contexts, 0);
	assert_int_equal(f->core.n_mappings, 0);
	assert_int_equal(f->core.mapped_bytes, 0);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 0);
	core_fini(&f->core);
	dmb_backend_destroy(f->be);
	for (unsigned t = 0; t < NREG; t++)
		close(f->mfd[t]);
	free(f);
	return 0;
}

/* ---- shorthands -------------------------------------------------------- */

static struct dmb_map_req req(struct fx *f, unsigned t, uint64_t off, uint64_t iova, uint64_t len,
			      uint32_t prot)
{
	return (struct dmb_map_req){ .region_id = f->reg[t]->id, .offset = off, .iova = iova,
				     .length = len, .prot = prot };
}

static int map_reqs(struct fx *f, const struct dmb_map_req *q, size_t n)
{
	dmb_err_clear(&f->e);
	return map_batch(f->ctx, q, n, &f->e);
}

static int map1(struct fx *f, unsigned t, uint64_t off, uint64_t iova, uint64_t len, uint32_t prot)
{
	struct dmb_map_req q = req(f, t, off, iova, len, prot);
	return map_reqs(f, &q, 1);
}

static void map_ok(struct fx *f, unsigned t, uint64_t off, uint64_t iova, uint64_t len, uint32_t prot)
{
	int r = map1(f, t, off, iova, len, prot);
	if (r != 0)
		fail_msg("map [0x%" PRIx64 ", +0x%" PRIx64 ") failed: %d %s", iova, len, r, f->e.msg);
}

static int unmap_rg(struct fx *f, const struct dmb_range *rg, size_t n)
{
	dmb_err_clear(&f->e);
	f->bytes = f->count = UINT64_MAX;
	return unmap_ranges(f->ctx, rg, n, &f->bytes, &f->count, &f->e);
}

static int unmap1(struct fx *f, uint64_t iova, uint64_t len)
{
	struct dmb_range rg = { iova, len };
	return unmap_rg(f, &rg, 1);
}

/* The call failed with `code`, a negative errno and a sentence that
 * mentions `needle`. */
static void assert_err(struct fx *f, int r, int code, const char *needle)
{
	if (r >= 0)
		fail_msg("expected %s, the call succeeded", dmb_code_name(code));
	if (f->e.code != code)
		fail_msg("expected %s, got %s (%d): %s", dmb_code_name(code), dmb_code_name(f->e.code), r,
			 f->e.msg);
	assert_true(strlen(f->e.msg) > 10);
	if (needle && !strstr(f->e.msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", f->e.msg, needle);
}

static int dma(struct fx *f, struct dmb_ctx *ctx, uint64_t iova, void *buf, size_t len, bool to_mem)
{
	struct dmb_err e = { 0 };
	return f->be->ops->dma(ctx->bctx, iova, buf, len, to_mem, &e);
}

/* A device read at iova returns the tag of page `page` of region t. */
static void assert_dma_maps(struct fx *f, struct dmb_ctx *ctx, uint64_t iova, unsigned t,
			    uint64_t page)
{
	uint64_t v = 0;
	int r = dma(f, ctx, iova, &v, sizeof(v), false);
	if (r != 0)
		fail_msg("DMA read at IOVA 0x%" PRIx64 " faulted (%d); expected region %u page %" PRIu64,
			 iova, r, t, page);
	if (v != tag(t, page))
		fail_msg("DMA read at IOVA 0x%" PRIx64 " gave 0x%" PRIx64 ", expected 0x%" PRIx64,
			 iova, v, tag(t, page));
}

static void assert_dma_hole(struct fx *f, struct dmb_ctx *ctx, uint64_t iova)
{
	uint8_t b;
	int r = dma(f, ctx, iova, &b, 1, false);
	if (r != -EFAULT)
		fail_msg("DMA read at IOVA 0x%" PRIx64 " returned %d, expected a fault", iova, r);
}

/* ctx, core and backend counters. */
static void assert_counts(struct fx *f, uint64_t n, uint64_t bytes)
{
	assert_int_equal(f->ctx->n_mappings, n);
	assert_int_equal(f->ctx->mapped_bytes, bytes);
	assert_int_equal(f->core.n_mappings, n);
	assert_int_equal(f->core.mapped_bytes, bytes);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), bytes);
}

/* ---- basic map, DMA through it ----------------------------------------- */

static void test_map_moves_bytes(void **state)
{
	struct fx *f = *state;

	map_ok(f, 0, 4 * PG, BASE, 4 * PG, RW);
	assert_counts(f, 1, 4 * PG);
	assert_int_equal(f->reg[0]->map_refs, 1);
	for (uint64_t p = 0; p < 4; p++)
		assert_dma_maps(f, f->ctx, BASE + p * PG, 0, 4 + p);
	assert_dma_hole(f, f->ctx, BASE - 1);
	assert_dma_hole(f, f->ctx, BASE + 4 * PG);

	/* A device write lands in the file. */
	uint64_t v = 0x1122334455667788u, got = 0;
	assert_int_equal(dma(f, f->ctx, BASE + PG + 8, &v, sizeof(v), true), 0);
	assert_int_equal(pread(f->mfd[0], &got, sizeof(got), (off_t)(5 * PG + 8)), sizeof(got));
	assert_int_equal(got, v);

	struct dmb_mapping *m = map_find(f->ctx, BASE + 3 * PG + 17);
	assert_non_null(m);
	assert_int_equal(m->iova, BASE);
	assert_int_equal(m->length, 4 * PG);
	assert_int_equal(m->offset, 4 * PG);
	assert_ptr_equal(m->region, f->reg[0]);
	assert_int_equal(map_prot(m), RW);

	/* Read-only mappings of a read-only region: device reads only. */
	map_ok(f, 2, 0, BASE + 16 * PG, PG, R);
	assert_dma_maps(f, f->ctx, BASE + 16 * PG, 2, 0);
	assert_int_equal(dma(f, f->ctx, BASE + 16 * PG, &v, sizeof(v), true), -EFAULT);
	assert_counts(f, 2, 5 * PG);
}

/* ---- overlap detection -------------------------------------------------- */

static void test_overlap_geometries(void **state)
{
	struct fx *f = *state;
	const uint64_t A = BASE + 8 * PG; /* existing: [A, A + 4P) */
	map_ok(f, 0, 0, A, 4 * PG, RW);

	static const struct { const char *what; int64_t start, pages; } bad[] = {
		{ "identical", 0, 4 },
		{ "left partial", -2, 4 },
		{ "right partial", 2, 4 },
		{ "containing", -2, 8 },
		{ "contained", 1, 2 },
		{ "first page only", 0, 1 },
		{ "last page only", 3, 1 },
		{ "left partial by one page", -3, 4 },
		{ "right partial by one page", 3, 4 },
		{ "same start, longer", 0, 6 },
		{ "same end, earlier start", -1, 5 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t iova = A + (uint64_t)(bad[i].start * (int64_t)PG);
		int r = map1(f, 1, 0, iova, (uint64_t)bad[i].pages * PG, RW);
		if (r >= 0 || f->e.code != DMB_E_ALREADY_EXISTS)
			fail_msg("%s: expected already-exists, got %d %s", bad[i].what, r, f->e.msg);
		assert_err(f, r, DMB_E_ALREADY_EXISTS, "overlaps");
		assert_int_equal(f->e.sys_errno, EEXIST);
		/* The sentence names the mapping it overlaps. */
		assert_non_null(strstr(f->e.msg, "0x100008000"));
		dmb_err_clear(&f->e);
		assert_true(map_check_free(f->ctx, iova, iova + (uint64_t)bad[i].pages * PG - 1, &f->e) < 0);
		assert_int_equal(f->e.code, DMB_E_ALREADY_EXISTS);
	}
	assert_counts(f, 1, 4 * PG);
	/* Region 1 was never used: nothing pinned through it. */
	assert_int_equal(f->reg[1]->map_refs, 0);
	for (uint64_t p = 0; p < 4; p++)
		assert_dma_maps(f, f->ctx, A + p * PG, 0, p);

	/* One byte of overlap at either end is overlap (map_check_free takes
	 * any byte range). */
	dmb_err_clear(&f->e);
	assert_true(map_check_free(f->ctx, A - PG, A, &f->e) < 0);
	dmb_err_clear(&f->e);
	assert_true(map_check_free(f->ctx, A + 4 * PG - 1, A + 6 * PG, &f->e) < 0);
	dmb_err_clear(&f->e);
	assert_true(map_check_free(f->ctx, A + PG + 7, A + PG + 7, &f->e) < 0);
	/* Touching on either side is not overlapping. */
	dmb_err_clear(&f->e);
	assert_int_equal(map_check_free(f->ctx, A - 2 * PG, A - 1, &f->e), 0);
	assert_int_equal(map_check_free(f->ctx, A + 4 * PG, A + 6 * PG - 1, &f->e), 0);
	map_ok(f, 1, 10 * PG, A - 2 * PG, 2 * PG, RW);
	map_ok(f, 1, 20 * PG, A + 4 * PG, 2 * PG, R);
	assert_counts(f, 3, 8 * PG);
	assert_dma_maps(f, f->ctx, A - PG, 1, 11);
	assert_dma_maps(f, f->ctx, A, 0, 0);
	assert_dma_maps(f, f->ctx, A + 3 * PG, 0, 3);
	assert_dma_maps(f, f->ctx, A + 4 * PG, 1, 20);

	/* A range across all three, and one that fills a gap exactly. */
	assert_err(f, map1(f, 0, 0, A - 4 * PG, 16 * PG, RW), DMB_E_ALREADY_EXISTS, NULL);
	map_ok(f, 0, 8 * PG, A - 4 * PG, 2 * PG, RW);
	assert_counts(f, 4, 10 * PG);
	uint8_t buf[10 * 4096];
	assert_int_equal(dma(f, f->ctx, A - 4 * PG, buf, sizeof(buf), false), 0);
}

/* ---- lookups and iteration ---------------------------------------------- */

static void test_find_and_iterate(void **state)
{
	struct fx *f = *state;

	assert_null(map_find(f->ctx, BASE));
	assert_null(map_first_from(f->ctx, 0));

	/* [B+2P, +1P), [B+3P, +2P) (adjacent), [B+10P, +4P), mapped out of order. */
	map_ok(f, 0, 0, BASE + 10 * PG, 4 * PG, RW);
	map_ok(f, 0, 8 * PG, BASE + 2 * PG, PG, RW);
	map_ok(f, 1, 0, BASE + 3 * PG, 2 * PG, R);

	assert_null(map_find(f->ctx, BASE + 2 * PG - 1));
	assert_int_equal(map_find(f->ctx, BASE + 2 * PG)->iova, BASE + 2 * PG);
	assert_int_equal(map_find(f->ctx, BASE + 3 * PG - 1)->iova, BASE + 2 * PG);
	assert_int_equal(map_find(f->ctx, BASE + 3 * PG)->iova, BASE + 3 * PG);
	assert_int_equal(map_find(f->ctx, BASE + 5 * PG - 1)->iova, BASE + 3 * PG);
	assert_null(map_find(f->ctx, BASE + 5 * PG));
	assert_null(map_find(f->ctx, BASE + 10 * PG - 1));
	assert_int_equal(map_find(f->ctx, BASE + 10 * PG)->iova, BASE + 10 * PG);
	assert_int_equal(map_find(f->ctx, BASE + 14 * PG - 1)->iova, BASE + 10 * PG);
	assert_null(map_find(f->ctx, BASE + 14 * PG));
	assert_null(map_find(f->ctx, UINT64_MAX));
	assert_null(map_find(f->ctx, 0));

	assert_int_equal(map_first_from(f->ctx, 0)->iova, BASE + 2 * PG);
	assert_int_equal(map_first_from(f->ctx, BASE + 2 * PG)->iova, BASE + 2 * PG);
	/* Inside a mapping: the next one that starts at or after. */
	assert_int_equal(map_first_from(f->ctx, BASE + 2 * PG + 1)->iova, BASE + 3 * PG);
	assert_int_equal(map_first_from(f->ctx, BASE + 4 * PG)->iova, BASE + 10 * PG);
	assert_null(map_first_from(f->ctx, BASE + 10 * PG + 1));

	static const uint64_t order[] = { 2, 3, 10 };
	size_t i = 0;
	for (struct dmb_mapping *m = map_first_from(f->ctx, 0); m; m = map_next(f->ctx, m), i++) {
		assert_true(i < 3);
		assert_int_equal(m->iova, BASE + order[i] * PG);
	}
	assert_int_equal(i, 3);
}

/* ---- unmap: all or nothing ---------------------------------------------- */

static void test_unmap_all_or_nothing(void **state)
{
	struct fx *f = *state;
	/* M1 [B, B+4P), M2 [B+4P, B+8P), hole, M3 [B+12P, B+14P). */
	map_ok(f, 0, 0, BASE, 4 * PG, RW);
	map_ok(f, 0, 4 * PG, BASE + 4 * PG, 4 * PG, RW);
	map_ok(f, 1, 0, BASE + 12 * PG, 2 * PG, RW);
	const uint64_t pinned = 10 * PG;
	assert_counts(f, 3, pinned);

	/* Split at the start: the range begins inside M1. */
	assert_err(f, unmap1(f, BASE + PG, 7 * PG), DMB_E_FAILED_PRECONDITION, "split");
	assert_counts(f, 3, pinned);
	/* Split at the end: M1 lies wholly inside, M2 straddles the end. The
	 * kernel would have removed M1 before failing; the core must not. */
	assert_err(f, unmap1(f, BASE, 6 * PG), DMB_E_FAILED_PRECONDITION, "split");
	assert_counts(f, 3, pinned);
	assert_dma_maps(f, f->ctx, BASE, 0, 0);
	assert_dma_maps(f, f->ctx, BASE + 5 * PG, 0, 5);
	/* Ranges need not be page-aligned: starting on M1's last byte splits it,
	 * ending on M2's first byte splits M2. */
	assert_err(f, unmap1(f, BASE + 4 * PG - 1, 5 * PG + 1), DMB_E_FAILED_PRECONDITION, "split");
	assert_err(f, unmap1(f, BASE, 4 * PG + 1), DMB_E_FAILED_PRECONDITION, "split");
	assert_err(f, unmap1(f, BASE, 8 * PG - 1), DMB_E_FAILED_PRECONDITION, "split");
	assert_counts(f, 3, pinned);
	/* Split at the end by one page, and a range wholly inside a mapping. */
	assert_err(f, unmap1(f, BASE + 12 * PG, PG), DMB_E_FAILED_PRECONDITION, "split");
	assert_err(f, unmap1(f, BASE + PG, PG), DMB_E_FAILED_PRECONDITION, "split");
	/* Empty ranges: the hole, below everything, above everything. */
	assert_err(f, unmap1(f, BASE + 8 * PG, 4 * PG), DMB_E_NOT_FOUND, "no mapping");
	assert_err(f, unmap1(f, 0, PG), DMB_E_NOT_FOUND, NULL);
	assert_err(f, unmap1(f, BASE + 14 * PG, 100 * PG), DMB_E_NOT_FOUND, NULL);
	/* Zero length, overflow. */
	assert_err(f, unmap1(f, BASE, 0), DMB_E_INVALID_ARGUMENT, "zero");
	assert_err(f, unmap1(f, UINT64_MAX - PG + 1, 2 * PG), DMB_E_INVALID_ARGUMENT, "overflow");
	assert_counts(f, 3, pinned);

	/* A batch whose second range would split: nothing removed, index 1. */
	struct dmb_range b1[] = { { BASE + 12 * PG, 2 * PG }, { BASE, 5 * PG } };
	assert_err(f, unmap_rg(f, b1, 2), DMB_E_FAILED_PRECONDITION, NULL);
	assert_int_equal(f->e.index, 1);
	assert_counts(f, 3, pinned);
	assert_dma_maps(f, f->ctx, BASE + 13 * PG, 1, 1);
	/* A batch whose third range is empty. */
	struct dmb_range b2[] = { { BASE, 4 * PG }, { BASE + 4 * PG, 4 * PG }, { BASE + 9 * PG, PG } };
	assert_err(f, unmap_rg(f, b2, 3), DMB_E_NOT_FOUND, NULL);
	assert_int_equal(f->e.index, 2);
	assert_counts(f, 3, pinned);
	assert_dma_maps(f, f->ctx, BASE, 0, 0);

	/* Overlapping ranges in one batch, each valid on its own. */
	struct dmb_range b3[] = { { BASE, 8 * PG }, { BASE + 12 * PG, 2 * PG }, { BASE, 4 * PG } };
	assert_err(f, unmap_rg(f, b3, 3), DMB_E_INVALID_ARGUMENT, "overlap");
	assert_int_equal(f->e.index, 2);
	assert_counts(f, 3, pinned);
	assert_dma_maps(f, f->ctx, BASE, 0, 0);
	assert_dma_maps(f, f->ctx, BASE + 12 * PG, 1, 0);

	/* An unsorted, disjoint batch works; a range may cover holes. */
	struct dmb_range b4[] = { { BASE + 10 * PG, 6 * PG }, { BASE, 4 * PG } };
	assert_int_equal(unmap_rg(f, b4, 2), 0);
	assert_int_equal(f->bytes, 6 * PG);
	assert_int_equal(f->count, 2);
	assert_counts(f, 1, 4 * PG);
	assert_dma_hole(f, f->ctx, BASE);
	assert_dma_hole(f, f->ctx, BASE + 3 * PG);
	assert_dma_hole(f, f->ctx, BASE + 12 * PG);
	assert_dma_maps(f, f->ctx, BASE + 4 * PG, 0, 4);
	assert_null(map_find(f->ctx, BASE));
	assert_null(map_find(f->ctx, BASE + 12 * PG));
	assert_int_equal(f->reg[1]->map_refs, 0);
	assert_int_equal(f->reg[0]->map_refs, 1);

	/* Unmap-all. */
	dmb_err_clear(&f->e);
	assert_int_equal(unmap_all(f->ctx, &f->bytes, &f->count, &f->e), 0);
	assert_int_equal(f->bytes, 4 * PG);
	assert_int_equal(f->count, 1);
	assert_counts(f, 0, 0);
	assert_dma_hole(f, f->ctx, BASE + 4 * PG);
	assert_int_equal(unmap_all(f->ctx, &f->bytes, &f->count, &f->e), 0);
	assert_int_equal(f->count, 0);
}

/* ---- map_batch rollback -------------------------------------------------- */

/* Five good entries; entry k is replaced by one that fails in the way `how`
 * names. Entries before k were mapped in the backend before k failed. */
static void test_batch_rollback(void **state)
{
	struct fx *f = *state;
	/* Something mapped beforehand must survive every rollback. */
	map_ok(f, 1, 0, BASE + 100 * PG, 2 * PG, RW);
	const uint64_t before = f->be->ops->pinned_bytes(f->be);
	assert_int_equal(before, 2 * PG);

	enum { OVERLAP_BATCH, OVERLAP_OLD, PAST_REGION, RO_WRITE, MISALIGNED, NO_REGION, MSI, N_HOW };
	static const int code[N_HOW] = {
		DMB_E_ALREADY_EXISTS, DMB_E_ALREADY_EXISTS, DMB_E_OUT_OF_RANGE, DMB_E_PERMISSION_DENIED,
		DMB_E_INVALID_ARGUMENT, DMB_E_NOT_FOUND, DMB_E_OUT_OF_RANGE,
	};
	for (int how = 0; how < N_HOW; how++) {
		for (size_t k = 0; k < 5; k++) {
			struct dmb_map_req q[5];
			for (size_t i = 0; i < 5; i++)
				q[i] = req(f, (unsigned)(i & 1), i * 4 * PG, BASE + i * 8 * PG, 2 * PG, RW);
			switch (how) {
			case OVERLAP_BATCH: /* overlaps entry 0 (or, for k = 0, entry 1 overlaps it) */
				if (k == 0)
					q[1].iova = q[0].iova + PG;
				else
					q[k].iova = q[0].iova + PG;
				break;
			case OVERLAP_OLD: q[k].iova = BASE + 101 * PG; break;
			case PAST_REGION: q[k].offset = (REGION_PAGES - 1) * PG; break;
			case RO_WRITE: q[k].region_id = f->reg[2]->id; break;
			case MISALIGNED: q[k].iova += 512; break;
			case NO_REGION: q[k].region_id = 999999; break;
			case MSI: q[k].iova = MSI_START - PG; break;
			}
			size_t bad = (how == OVERLAP_BATCH && k == 0) ? 1 : k;
			int r = map_reqs(f, q, 5);
			if (r >= 0 || f->e.code != code[how] || f->e.index != bad)
				fail_msg("how %d k %zu: got %d %s index %u: %s", how, k, r,
					 dmb_code_name(f->e.code), f->e.index, f->e.msg);
			/* Nothing of the batch is left: not in the tree, not in the
			 * simulated IOMMU, not pinned. */
			assert_counts(f, 1, before);
			for (size_t i = 0; i < 5; i++) {
				assert_null(map_find(f->ctx, BASE + i * 8 * PG));
				assert_null(map_find(f->ctx, BASE + i * 8 * PG + PG));
				assert_dma_hole(f, f->ctx, BASE + i * 8 * PG);
				assert_dma_hole(f, f->ctx, BASE + i * 8 * PG + PG);
			}
			assert_dma_maps(f, f->ctx, BASE + 100 * PG, 1, 0);
			assert_dma_maps(f, f->ctx, BASE + 101 * PG, 1, 1);
			assert_int_equal(f->reg[0]->map_refs, 0);
			assert_int_equal(f->reg[1]->map_refs, 1);
		}
	}

	/* The same batch without the fault maps all five. */
	struct dmb_map_req q[5];
	for (size_t i = 0; i < 5; i++)
		q[i] = req(f, (unsigned)(i & 1), i * 4 * PG, BASE + i * 8 * PG, 2 * PG, RW);
	assert_int_equal(map_reqs(f, q, 5), 0);
	assert_counts(f, 6, before + 10 * PG);
	for (size_t i = 0; i < 5; i++)
		assert_dma_maps(f, f->ctx, BASE + i * 8 * PG + PG, (unsigned)(i & 1), i * 4 + 1);
	/* An empty batch does nothing. */
	assert_int_equal(map_reqs(f, q, 0), 0);
	assert_counts(f, 6, before + 10 * PG);
}

/* ---- validation ----------------------------------------------------------- */

static void test_validation(void **state)
{
	struct fx *f = *state;
	const uint64_t ok_iova = BASE;

	assert_err(f, map1(f, 0, 0, ok_iova, PG, 0), DMB_E_INVALID_ARGUMENT, "prot");
	assert_err(f, map1(f, 0, 0, ok_iova, PG, 4), DMB_E_INVALID_ARGUMENT, "prot");
	assert_err(f, map1(f, 0, 0, ok_iova, PG, RW | 8), DMB_E_INVALID_ARGUMENT, "prot");
	assert_err(f, map1(f, 0, 0, ok_iova, 0, RW), DMB_E_INVALID_ARGUMENT, "zero");
	assert_err(f, map1(f, 0, 0, UINT64_MAX - PG + 1, 2 * PG, RW), DMB_E_INVALID_ARGUMENT,
		   "overflow");
	assert_int_equal(f->e.sys_errno, EOVERFLOW);
	assert_err(f, map1(f, 0, UINT64_MAX - PG + 1, ok_iova, 2 * PG, RW), DMB_E_INVALID_ARGUMENT,
		   "overflow");
	assert_err(f, map1(f, 0, 0, ok_iova + 1, PG, RW), DMB_E_INVALID_ARGUMENT, "multiple");
	assert_err(f, map1(f, 0, 0, ok_iova, PG + 512, RW), DMB_E_INVALID_ARGUMENT, "multiple");
	assert_err(f, map1(f, 0, 2048, ok_iova, PG, RW), DMB_E_INVALID_ARGUMENT, "multiple");

	struct dmb_map_req q = req(f, 0, 0, ok_iova, PG, RW);
	q.region_id = 424242;
	assert_err(f, map_reqs(f, &q, 1), DMB_E_NOT_FOUND, "region");

	/* Past the end of the region, by one page and by a lot. */
	assert_err(f, map1(f, 0, PG, ok_iova, REGION_PAGES * PG, RW), DMB_E_OUT_OF_RANGE, "past the end");
	assert_err(f, map1(f, 0, REGION_PAGES * PG, ok_iova, PG, RW), DMB_E_OUT_OF_RANGE, NULL);
	assert_err(f, map1(f, 0, UINT64_C(1) << 40, ok_iova, PG, RW), DMB_E_OUT_OF_RANGE, NULL);

	/* The read-only region: no device writes. */
	assert_err(f, map1(f, 2, 0, ok_iova, PG, RW), DMB_E_PERMISSION_DENIED, "read-only");
	assert_err(f, map1(f, 2, 0, ok_iova, PG, W), DMB_E_PERMISSION_DENIED, "read-only");

	/* IOVAs outside the usable ranges: the MSI window, straddling its start,
	 * past the 48-bit aperture, straddling the aperture's end. */
	assert_err(f, map1(f, 0, 0, MSI_START, PG, RW), DMB_E_OUT_OF_RANGE, "IOVA range");
	assert_err(f, map1(f, 0, 0, MSI_START - PG, 2 * PG, RW), DMB_E_OUT_OF_RANGE, NULL);
	assert_err(f, map1(f, 0, 0, APERTURE_END, PG, RW), DMB_E_OUT_OF_RANGE, NULL);
	assert_err(f, map1(f, 0, 0, APERTURE_END - PG, 2 * PG, RW), DMB_E_OUT_OF_RANGE, NULL);
	assert_err(f, map1(f, 0, 0, UINT64_MAX - PG + 1, PG, RW), DMB_E_OUT_OF_RANGE, NULL);
	assert_counts(f, 0, 0);

	/* The edges themselves are usable. */
	map_ok(f, 0, 0, MSI_START - PG, PG, RW);
	map_ok(f, 0, 0, APERTURE_END - PG, PG, RW);
	map_ok(f, 0, 0, 0, PG, RW);
	map_ok(f, 2, 0, ok_iova, PG, R);
	map_ok(f, 0, (REGION_PAGES - 1) * PG, ok_iova + PG, PG, W); /* last page, write-only */
	assert_counts(f, 5, 5 * PG);
	assert_dma_maps(f, f->ctx, APERTURE_END - PG, 0, 0);
	assert_dma_maps(f, f->ctx, 0, 0, 0);
	uint64_t v;
	assert_int_equal(dma(f, f->ctx, ok_iova + PG, &v, sizeof(v), false), -EFAULT); /* W only */

	/* A region of another context is not found in this one. */
	struct dmb_ctx *other = NULL;
	assert_int_equal(ctx_create(f->owner, "vm1", false, &other, &f->e), 0);
	q = req(f, 0, 0, BASE + 64 * PG, PG, RW);
	dmb_err_clear(&f->e);
	assert_err(f, map_batch(other, &q, 1, &f->e), DMB_E_NOT_FOUND, NULL);
	assert_int_equal(other->n_mappings, 0);

	/* e->index names the failing entry of a batch. */
	struct dmb_map_req qs[4];
	for (size_t i = 0; i < 4; i++)
		qs[i] = req(f, 1, i * PG, BASE + (32 + i) * PG, PG, RW);
	qs[2].length = 0;
	assert_err(f, map_reqs(f, qs, 4), DMB_E_INVALID_ARGUMENT, NULL);
	assert_int_equal(f->e.index, 2);
	qs[2].length = PG;
	qs[3].prot = 0;
	assert_err(f, map_reqs(f, qs, 4), DMB_E_INVALID_ARGUMENT, NULL);
	assert_int_equal(f->e.index, 3);
	qs[3].prot = R;
	qs[0].offset = REGION_PAGES * PG;
	assert_err(f, map_reqs(f, qs, 4), DMB_E_OUT_OF_RANGE, NULL);
	assert_int_equal(f->e.index, 0);
	assert_counts(f, 5, 5 * PG);
}

/* ---- limits ---------------------------------------------------------------- */

static void test_limit_mappings(void **state)
{
	struct fx *f = *state;
	assert_int_equal(f->core.limits.mappings_per_context, 4);

	for (uint64_t i = 0; i < 4; i++)
		map_ok(f, 0, i * PG, BASE + i * 2 * PG, PG, RW);
	assert_err(f, map1(f, 0, 0, BASE + 100 * PG, PG, RW), DMB_E_RESOURCE_EXHAUSTED,
		   "mappings_per_context");
	assert_dma_hole(f, f->ctx, BASE + 100 * PG);
	assert_counts(f, 4, 4 * PG);

	assert_int_equal(unmap1(f, BASE, PG), 0);
	struct dmb_map_req q[2] = { req(f, 0, 0, BASE + 100 * PG, PG, RW),
				    req(f, 0, 0, BASE + 102 * PG, PG, RW) };
	assert_err(f, map_reqs(f, q, 2), DMB_E_RESOURCE_EXHAUSTED, NULL);
	assert_counts(f, 3, 3 * PG);
	assert_dma_hole(f, f->ctx, BASE + 100 * PG);
	assert_int_equal(map_reqs(f, q, 1), 0);
	assert_counts(f, 4, 4 * PG);

	/* The limit is per context. */
	struct dmb_ctx *c2 = NULL;
	assert_int_equal(ctx_create(f->owner, "vm1", false, &c2, &f->e), 0);
	struct dmb_region *r2 = register_fd(c2, make_memfd(7, 8));
	struct dmb_map_req q2 = { .region_id = r2->id, .iova = BASE, .length = PG, .prot = RW };
	dmb_err_clear(&f->e);
	assert_int_equal(map_batch(c2, &q2, 1, &f->e), 0);
	assert_dma_maps(f, c2, BASE, 7, 0);
}

static void test_limit_regions(void **state)
{
	struct fx *f = *state;
	assert_int_equal(f->ctx->n_regions, NREG);

	int fd = make_memfd(5, 4);
	struct dmb_region *reg = (struct dmb_region *)0x1;
	dmb_err_clear(&f->e);
	int r = region_register(f->ctx, fd, 0, &reg, &f->e);
	assert_err(f, r, DMB_E_RESOURCE_EXHAUSTED, "regions_per_context");
	assert_ptr_equal(reg, (struct dmb_region *)0x1);
	/* The fd was the core's, and is closed. */
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	assert_int_equal(errno, EBADF);
	assert_int_equal(f->ctx->n_regions, NREG);
	assert_int_equal(f->core.n_regions, NREG);

	/* Room again after an unregister. */
	dmb_err_clear(&f->e);
	assert_int_equal(region_unregister(f->ctx, f->reg[1]->id, &f->e), 0);
	f->reg[1] = register_fd(f->ctx, make_memfd(1, REGION_PAGES));
	assert_int_equal(f->ctx->n_regions, NREG);
}

static void test_limit_contexts(void **state)
{
	struct fx *f = *state;
	struct dmb_ctx *c = NULL;

	assert_int_equal(f->owner->n_contexts, 1);
	assert_int_equal(ctx_create(f->owner, "vm1", false, &c, &f->e), 0);
	assert_non_null(c);
	c = NULL;
	dmb_err_clear(&f->e);
	assert_err(f, ctx_create(f->owner, "vm2", false, &c, &f->e), DMB_E_RESOURCE_EXHAUSTED,
		   "limit");
	assert_null(c);
	assert_int_equal(f->owner->n_contexts, 2);
	assert_int_equal(f->core.n_contexts, 2);

	/* The limit is per owner. */
	struct dmb_owner *o2 = owner_new(&f->core, 2, 1001, 1001, getpid(), false, NULL);
	assert_non_null(o2);
	assert_int_equal(ctx_create(o2, "vm2", false, &c, &f->e), 0);
	assert_int_equal(f->core.n_contexts, 3);
	/* Ids reveal nothing: another owner's context is not found. */
	assert_null(ctx_lookup(f->owner, c->id));
	assert_ptr_equal(ctx_lookup(o2, c->id), c);
	assert_ptr_equal(ctx_lookup_any(&f->core, c->id), c);
	const uint64_t id = c->id;
	owner_free(o2);
	assert_int_equal(f->core.n_contexts, 2);
	assert_null(ctx_lookup_any(&f->core, id));
}

/* ---- counters ---------------------------------------------------------------- */

static void test_counters(void **state)
{
	struct fx *f = *state;
	struct dmb_ctx *c2 = NULL;
	assert_int_equal(ctx_create(f->owner, "vm1", false, &c2, &f->e), 0);
	struct dmb_region *r2 = register_fd(c2, make_memfd(9, 16));

	map_ok(f, 0, 0, BASE, 3 * PG, RW);
	assert_counts(f, 1, 3 * PG);
	map_ok(f, 1, 0, BASE + 8 * PG, 5 * PG, R);
	assert_counts(f, 2, 8 * PG);

	struct dmb_map_req q = { .region_id = r2->id, .iova = BASE, .length = 7 * PG, .prot = RW };
	dmb_err_clear(&f->e);
	assert_int_equal(map_batch(c2, &q, 1, &f->e), 0);
	assert_int_equal(c2->n_mappings, 1);
	assert_int_equal(c2->mapped_bytes, 7 * PG);
	assert_int_equal(f->ctx->n_mappings, 2);
	assert_int_equal(f->ctx->mapped_bytes, 8 * PG);
	assert_int_equal(f->core.n_mappings, 3);
	assert_int_equal(f->core.mapped_bytes, 15 * PG);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 15 * PG);
	/* The same IOVA in two contexts points at two different regions. */
	assert_dma_maps(f, f->ctx, BASE, 0, 0);
	assert_dma_maps(f, c2, BASE, 9, 0);

	/* A failed map changes nothing. */
	assert_err(f, map1(f, 0, 0, BASE + 2 * PG, PG, RW), DMB_E_ALREADY_EXISTS, NULL);
	assert_int_equal(f->core.mapped_bytes, 15 * PG);

	assert_int_equal(unmap1(f, BASE + 8 * PG, 5 * PG), 0);
	assert_int_equal(f->bytes, 5 * PG);
	assert_int_equal(f->count, 1);
	assert_int_equal(f->ctx->n_mappings, 1);
	assert_int_equal(f->ctx->mapped_bytes, 3 * PG);
	assert_int_equal(f->core.n_mappings, 2);
	assert_int_equal(f->core.mapped_bytes, 10 * PG);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 10 * PG);

	/* Destroying a context returns its share only. */
	ctx_destroy(c2);
	assert_counts(f, 1, 3 * PG);
	assert_int_equal(f->core.n_contexts, 1);
	assert_int_equal(f->core.n_regions, NREG);
}

/* ---- owner_free ------------------------------------------------------------------ */

static void test_owner_free(void **state)
{
	(void)state;
	const int fds_before = open_fds();
	struct dmb_backend *be = new_sim();
	struct dmb_core core;
	core_init(&core, be, &big_limits);
	struct dmb_owner *o1 = owner_new(&core, 1, 1000, 1000, 1, false, NULL);
	struct dmb_owner *o2 = owner_new(&core, 2, 1001, 1001, 2, false, NULL);
	struct dmb_ctx *a = NULL, *b = NULL, *c = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(ctx_create(o1, "a", false, &a, &e), 0);
	assert_int_equal(ctx_create(o1, "b", false, &b, &e), 0);
	assert_int_equal(ctx_create(o2, "c", false, &c, &e), 0);

	struct dmb_ctx *cs[3] = { a, b, c };
	for (unsigned i = 0; i < 3; i++) {
		struct dmb_region *r = register_fd(cs[i], make_memfd(i, 16));
		struct dmb_map_req q[2] = {
			{ .region_id = r->id, .iova = BASE, .length = (i + 1) * PG, .prot = RW },
			{ .region_id = r->id, .offset = 8 * PG, .iova = BASE + 64 * PG, .length = PG, .prot = R },
		};
		assert_int_equal(map_batch(cs[i], q, 2, &e), 0);
	}
	assert_int_equal(be->ops->pinned_bytes(be), (1 + 2 + 3 + 3) * PG);
	assert_int_equal(core.n_contexts, 3);
	assert_int_equal(core.n_regions, 3);
	assert_int_equal(core.n_mappings, 6);
	uint64_t c_id = c->id;

	owner_free(o1);
	assert_int_equal(core.n_contexts, 1);
	assert_int_equal(core.n_regions, 1);
	assert_int_equal(core.n_mappings, 2);
	assert_int_equal(core.mapped_bytes, 4 * PG);
	assert_int_equal(be->ops->pinned_bytes(be), 4 * PG);
	assert_ptr_equal(ctx_lookup_any(&core, c_id), c);
	struct dmb_err e2 = { 0 };
	uint64_t v;
	assert_int_equal(be->ops->dma(c->bctx, BASE + 2 * PG, &v, sizeof(v), false, &e2), 0);
	assert_int_equal(v, tag(2, 2));

	owner_free(o2);
	assert_int_equal(core.n_contexts, 0);
	assert_int_equal(core.n_regions, 0);
	assert_int_equal(core.n_mappings, 0);
	assert_int_equal(core.mapped_bytes, 0);
	assert_int_equal(be->ops->pinned_bytes(be), 0);
	assert_null(ctx_lookup_any(&core, c_id));
	core_fini(&core);
	dmb_backend_destroy(be);
	/* Every region fd (the core's and the sim's dup) is closed. */
	assert_int_equal(open_fds(), fds_before);
	owner_free(NULL);
}

/* ---- randomized model check ------------------------------------------------------ */

#define WPAGES 384u                     /* the IOVA window the model covers */
#define MAXM WPAGES

struct mm {
	uint32_t start, n;      /* pages in the window */
	uint32_t t, off;        /* region, page offset in it */
	uint32_t prot;
};

struct model {
	int at[WPAGES];         /* index into m[] or -1 */
	struct mm m[MAXM];
	bool used[MAXM];
	uint64_t n, bytes;
};

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * UINT64_C(2685821657736338717);
}

static uint32_t rn(uint32_t n)
{
	return (uint32_t)(rnd() % n);
}

static void model_add(struct model *md, const struct mm *x)
{
	size_t k = 0;
	while (md->used[k])
		k++;
	md->used[k] = true;
	md->m[k] = *x;
	for (uint32_t p = x->start; p < x->start + x->n; p++)
		md->at[p] = (int)k;
	md->n++;
	md->bytes += x->n * PG;
}

static void model_del(struct model *md, int k)
{
	for (uint32_t p = md->m[k].start; p < md->m[k].start + md->m[k].n; p++)
		md->at[p] = -1;
	md->used[k] = false;
	md->n--;
	md->bytes -= md->m[k].n * PG;
}

/* The core's expected answer to mapping x on top of md. */
static int model_map_code(const struct model *md, const struct mm *x)
{
	if (x->off + x->n > REGION_PAGES)
		return DMB_E_OUT_OF_RANGE;
	if ((x->prot & W) && x->t == 2)
		return DMB_E_PERMISSION_DENIED;
	for (uint32_t p = x->start; p < x->start + x->n; p++)
		if (md->at[p] >= 0)
			return DMB_E_ALREADY_EXISTS;
	return 0;
}

/* The core's expected answer to unmapping pages [s, s+n). */
static int model_unmap_code(const struct model *md, uint32_t s, uint32_t n)
{
	uint32_t last = s + n - 1;
	int k = md->at[s];
	if (k >= 0 && md->m[k].start < s)
		return DMB_E_FAILED_PRECONDITION;
	bool any = false;
	for (uint32_t p = s; p <= last; p++)
		any |= md->at[p] >= 0;
	if (!any)
		return DMB_E_NOT_FOUND;
	k = md->at[last];
	if (k >= 0 && md->m[k].start + md->m[k].n - 1 > last)
		return DMB_E_FAILED_PRECONDITION;
	return 0;
}

static void model_unmap(struct model *md, uint32_t s, uint32_t n, uint64_t *bytes, uint64_t *count)
{
	for (uint32_t p = s; p < s + n; p++) {
		int k = md->at[p];
		if (k >= 0) {
			*bytes += md->m[k].n * PG;
			(*count)++;
			model_del(md, k);
		}
	}
}

static uint64_t wiova(uint32_t page)
{
	return BASE + (uint64_t)page * PG;
}

/* The core's tree and the simulated IOMMU both agree with the model at page p. */
static void probe(struct fx *f, const struct model *md, uint32_t p, uint64_t op)
{
	uint64_t in = rn(PG);
	struct dmb_mapping *m = map_find(f->ctx, wiova(p) + in);
	int k = md->at[p];
	const struct mm *x = k >= 0 ? &md->m[k] : NULL;
	/* What the page holds; a device write puts back the same bytes. */
	uint64_t want = x ? tag(x->t, x->off + (p - x->start)) : 0, v = 0, w = want;
	int rr = dma(f, f->ctx, wiova(p), &v, sizeof(v), false);
	int rw = dma(f, f->ctx, wiova(p), &w, sizeof(w), true);
	if (!x) {
		if (m)
			fail_msg("op %" PRIu64 ": map_find finds 0x%" PRIx64 " at page %u, model has a hole",
				 op, m->iova, p);
		if (rr != -EFAULT || rw != -EFAULT)
			fail_msg("op %" PRIu64 ": DMA at page %u: read %d write %d, model has a hole", op, p,
				 rr, rw);
		return;
	}
	if (!m || m->iova != wiova(x->start) || m->length != x->n * PG ||
	    m->region != f->reg[x->t] || m->offset != x->off * PG || map_prot(m) != x->prot)
		fail_msg("op %" PRIu64 ": map_find at page %u disagrees with the model", op, p);
	if (x->prot & R) {
		if (rr != 0 || v != want)
			fail_msg("op %" PRIu64 ": DMA read at page %u: %d 0x%" PRIx64
				 ", model says region %u page %u", op, p, rr, v, x->t,
				 x->off + (p - x->start));
	} else if (rr != -EFAULT) {
		fail_msg("op %" PRIu64 ": DMA read at page %u of a write-only mapping: %d", op, p, rr);
	}
	if (rw != ((x->prot & W) ? 0 : -EFAULT))
		fail_msg("op %" PRIu64 ": DMA write at page %u: %d, prot %u", op, p, rw, x->prot);
}

static void check_model(struct fx *f, const struct model *md, uint64_t op, bool full)
{
	assert_int_equal(f->ctx->n_mappings, md->n);
	assert_int_equal(f->ctx->mapped_bytes, md->bytes);
	assert_int_equal(f->core.n_mappings, md->n);
	assert_int_equal(f->core.mapped_bytes, md->bytes);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), md->bytes);
	if (full) {
		for (uint32_t p = 0; p < WPAGES; p++)
			probe(f, md, p, op);
		/* Nothing outside the window. */
		assert_dma_hole(f, f->ctx, BASE - 1);
		assert_dma_hole(f, f->ctx, wiova(WPAGES));
		/* The tree in order is exactly the model's mappings. */
		uint64_t n = 0, prev_end = 0;
		for (struct dmb_mapping *m = map_first_from(f->ctx, 0); m; m = map_next(f->ctx, m)) {
			assert_true(m->iova >= prev_end);
			prev_end = m->iova + m->length;
			n++;
		}
		assert_int_equal(n, md->n);
		uint64_t refs[NREG] = { 0 };
		for (size_t k = 0; k < MAXM; k++)
			if (md->used[k])
				refs[md->m[k].t]++;
		for (unsigned t = 0; t < NREG; t++)
			assert_int_equal(f->reg[t]->map_refs, refs[t]);
	} else {
		for (int i = 0; i < 24; i++)
			probe(f, md, rn(WPAGES), op);
	}
}

static void random_mm(struct mm *x)
{
	x->n = 1 + rn(rn(4) ? 8 : 32);
	x->start = rn(WPAGES - x->n + 1);
	x->t = rn(NREG);
	x->off = rn(20) ? rn(REGION_PAGES - x->n + 1) : REGION_PAGES - x->n + 1 + rn(4);
	x->prot = x->t == 2 ? (rn(10) ? R : RW) : (uint32_t[]){ R, W, RW, RW }[rn(4)];
}

static void probe_edges(struct fx *f, const struct model *md, uint32_t s, uint32_t n, uint64_t op)
{
	uint32_t pg[] = { s - 1, s, s + n - 1, s + n };
	for (size_t i = 0; i < 4; i++)
		if (pg[i] < WPAGES)
			probe(f, md, pg[i], op);
}

/* A range of pages to unmap: random, or (half the time) from the start of
 * one mapping to the end of the same or a later one, so that successful
 * unmaps are common. */
static void random_range(const struct model *md, uint32_t maxn, uint32_t *s, uint32_t *n)
{
	if (md->n && rn(2)) {
		uint32_t p = rn(WPAGES);
		while (md->at[p] < 0)
			p = (p + 1) % WPAGES;
		uint32_t a = md->m[md->at[p]].start;
		uint32_t q = a + rn(maxn);
		if (q >= WPAGES)
			q = WPAGES - 1;
		while (q > a && md->at[q] >= 0 && md->m[md->at[q]].start + md->m[md->at[q]].n - 1 != q)
			q--; /* back off to a mapping end or a hole */
		if (md->at[q] >= 0 && md->m[md->at[q]].start + md->m[md->at[q]].n - 1 != q)
			q = md->m[md->at[q]].start + md->m[md->at[q]].n - 1;
		*s = a;
		*n = q - a + 1;
		return;
	}
	*n = 1 + rn(maxn);
	*s = rn(WPAGES - *n + 1);
}

static void test_random_model(void **state)
{
	struct fx *f = *state;
	static struct model md;
	const char *s = getenv("DMB_TEST_SEED");
	uint64_t seed = s ? strtoull(s, NULL, 0) : UINT64_C(0x5EED2024);
	rng_state = seed ? seed : 1;
	print_message("random model: seed 0x%" PRIx64 " (set DMB_TEST_SEED to replay)\n", seed);

	memset(&md, 0, sizeof(md));
	for (uint32_t p = 0; p < WPAGES; p++)
		md.at[p] = -1;

	const uint64_t OPS = 4000;
	uint64_t stats[8] = { 0 };
	for (uint64_t op = 0; op < OPS; op++) {
		uint32_t kind = rn(100);
		if (kind < 40) { /* one map */
			struct mm x;
			random_mm(&x);
			int want = model_map_code(&md, &x);
			int r = map1(f, x.t, x.off * PG, wiova(x.start), x.n * PG, x.prot);
			if ((r == 0) != (want == 0) || (r < 0 && f->e.code != want))
				fail_msg("op %" PRIu64 ": map pages [%u, +%u) region %u off %u prot %u: got %d %s (%s), want %s",
					 op, x.start, x.n, x.t, x.off, x.prot, r, dmb_code_name(f->e.code), f->e.msg,
					 dmb_code_name(want));
			if (r == 0)
				model_add(&md, &x);
			stats[r == 0 ? 0 : 1]++;
			probe_edges(f, &md, x.start, x.n, op);
		} else if (kind < 52) { /* a batch of 2-4 maps */
			struct mm x[4];
			struct dmb_map_req q[4];
			size_t n = 2 + rn(3);
			static struct model scratch;
			scratch = md;
			int want = 0;
			size_t bad = 0;
			for (size_t i = 0; i < n; i++) {
				random_mm(&x[i]);
				q[i] = req(f, x[i].t, x[i].off * PG, wiova(x[i].start), x[i].n * PG, x[i].prot);
				if (want == 0) {
					want = model_map_code(&scratch, &x[i]);
					if (want)
						bad = i;
					else
						model_add(&scratch, &x[i]);
				}
			}
			int r = map_reqs(f, q, n);
			if ((r == 0) != (want == 0) || (r < 0 && (f->e.code != want || f->e.index != bad)))
				fail_msg("op %" PRIu64 ": map batch of %zu: got %d %s index %u (%s), want %s index %zu",
					 op, n, r, dmb_code_name(f->e.code), f->e.index, f->e.msg, dmb_code_name(want),
					 bad);
			if (r == 0)
				md = scratch;
			stats[r == 0 ? 2 : 3]++;
			for (size_t i = 0; i < n; i++)
				probe_edges(f, &md, x[i].start, x[i].n, op);
		} else if (kind < 88) { /* one unmap */
			uint32_t n, st;
			random_range(&md, rn(3) ? 12 : 64, &st, &n);
			int want = model_unmap_code(&md, st, n);
			int r = unmap1(f, wiova(st), n * PG);
			if ((r == 0) != (want == 0) || (r < 0 && f->e.code != want))
				fail_msg("op %" PRIu64 ": unmap pages [%u, +%u): got %d %s (%s), want %s", op, st, n,
					 r, dmb_code_name(f->e.code), f->e.msg, dmb_code_name(want));
			if (r == 0) {
				uint64_t bytes = 0, count = 0;
				model_unmap(&md, st, n, &bytes, &count);
				assert_int_equal(f->bytes, bytes);
				assert_int_equal(f->count, count);
			}
			stats[r == 0 ? 4 : 5]++;
			probe_edges(f, &md, st, n, op);
		} else if (kind < 98) { /* a batch of 2-3 unmaps, in random order */
			struct dmb_range rg[3];
			uint32_t st[3], len[3];
			size_t n = 2 + rn(2);
			int want = 0;
			uint32_t bad = 0;
			for (size_t i = 0; i < n; i++) {
				random_range(&md, 16, &st[i], &len[i]);
				rg[i] = (struct dmb_range){ wiova(st[i]), len[i] * PG };
				if (want == 0) {
					want = model_unmap_code(&md, st[i], len[i]);
					bad = (uint32_t)i;
				}
			}
			if (want == 0) {
				/* Each is fine on its own: any two that intersect? The core
				 * names the later of the first intersecting pair it finds in
				 * IOVA order; only the code is compared here. */
				for (size_t i = 0; i < n; i++)
					for (size_t j = i + 1; j < n; j++)
						if (st[i] < st[j] + len[j] && st[j] < st[i] + len[i])
							want = DMB_E_INVALID_ARGUMENT;
			}
			int r = unmap_rg(f, rg, n);
			if ((r == 0) != (want == 0) || (r < 0 && f->e.code != want) ||
			    (r < 0 && want != DMB_E_INVALID_ARGUMENT && f->e.index != bad))
				fail_msg("op %" PRIu64 ": unmap batch of %zu: got %d %s index %u (%s), want %s index %u",
					 op, n, r, dmb_code_name(f->e.code), f->e.index, f->e.msg, dmb_code_name(want),
					 bad);
			if (r == 0) {
				uint64_t bytes = 0, count = 0;
				for (size_t i = 0; i < n; i++)
					model_unmap(&md, st[i], len[i], &bytes, &count);
				assert_int_equal(f->bytes, bytes);
				assert_int_equal(f->count, count);
			}
			stats[r == 0 ? 6 : 7]++;
			for (size_t i = 0; i < n; i++)
				probe_edges(f, &md, st[i], len[i], op);
		} else { /* unmap everything */
			dmb_err_clear(&f->e);
			assert_int_equal(unmap_all(f->ctx, &f->bytes, &f->count, &f->e), 0);
			assert_int_equal(f->bytes, md.bytes);
			assert_int_equal(f->count, md.n);
			uint64_t bytes = 0, count = 0;
			model_unmap(&md, 0, WPAGES, &bytes, &count);
		}
		check_model(f, &md, op, op % 50 == 49);
	}
	check_model(f, &md, OPS, true);
	print_message("random model: maps ok/refused %" PRIu64 "/%" PRIu64 ", batches %" PRIu64 "/%" PRIu64
		      ", unmaps %" PRIu64 "/%" PRIu64 ", unmap batches %" PRIu64 "/%" PRIu64 "\n",
		      stats[0], stats[1], stats[2], stats[3], stats[4], stats[5], stats[6], stats[7]);
	/* Each kind of outcome happened often enough to mean something. */
	for (int i = 0; i < 8; i++)
		assert_true(stats[i] >= 20);
}

int main(void)
{
	static const struct dmb_limits lim_maps = { 16, 16, 4, 4, 0, 0 };
	static const struct dmb_limits lim_regions = { 16, NREG, 1u << 20, 4, 0, 0 };
	static const struct dmb_limits lim_ctx = { 2, 16, 1u << 20, 4, 0, 0 };
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define TL(fn, lim)                                                                                \
	cmocka_unit_test_prestate_setup_teardown(fn, setup_prestate, teardown, (void *)&(lim))
	const struct CMUnitTest tests[] = {
		T(test_map_moves_bytes),
		T(test_overlap_geometries),
		T(test_find_and_iterate),
		T(test_unmap_all_or_nothing),
		T(test_batch_rollback),
		T(test_validation),
		TL(test_limit_mappings, lim_maps),
		TL(test_limit_regions, lim_regions),
		TL(test_limit_contexts, lim_ctx),
		T(test_counters),
		cmocka_unit_test(test_owner_free),
		T(test_random_model),
	};
	return cmocka_run_group_tests_name("mapping", tests, NULL, NULL);
}
