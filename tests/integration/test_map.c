/* Map / unmap / unmap-all / batches through the real daemon. Every mapping is
 * proven by moving bytes through the sim DMA engine, both directions, at its
 * edges; every unmap is proven by a DMA that faults. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MiB (1024ull * 1024)
#define PG 4096ull

struct fixture {
	struct dmb_client *c;
	uint64_t ctx;
	int memfd;
	uint64_t region;
	size_t size;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->size = 8 * MiB;
	f->c = client_connect(&g_daemon, "test-map");
	assert_ok(f->c, dmb_context_create(f->c, "vm", &f->ctx));
	f->memfd = make_memfd(f->size, 1);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, f->memfd, 0, &ri));
	assert_int_equal(ri.size, f->size);
	assert_true(ri.writable);
	f->region = ri.region;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	dmb_close(f->c);
	close(f->memfd);
	free(f);
	/* Session gone -> its context, regions and pins are gone. */
	assert_true(daemon_wait_idle(&g_daemon));
	return 0;
}

static int map1(struct fixture *f, uint64_t off, uint64_t iova, uint64_t len, uint32_t prot)
{
	struct dmb_map_entry e = { f->region, off, iova, len, prot };
	return dmb_map(f->c, f->ctx, &e);
}

static void test_map_moves_bytes_at_edges(void **state)
{
	struct fixture *f = *state;
	const uint64_t iova = 0x10000000, off = 1 * MiB, len = 2 * MiB;
	assert_ok(f->c, map1(f, off, iova, len, DMB_READ | DMB_WRITE));

	check_dma(f->c, f->ctx, f->memfd, off, iova, PG, 1);                       /* first page */
	check_dma(f->c, f->ctx, f->memfd, off + len - PG, iova + len - PG, PG, 2); /* last page */
	check_dma(f->c, f->ctx, f->memfd, off + len - 1, iova + len - 1, 1, 3);   /* last byte */
	check_dma(f->c, f->ctx, f->memfd, off + 12345, iova + 12345, 40000, 4);   /* unaligned middle */
	/* One byte past either end faults. */
	check_dma_faults(f->c, f->ctx, f->memfd, UINT64_MAX, iova + len, 1);
	check_dma_faults(f->c, f->ctx, f->memfd, UINT64_MAX, iova - 1, 1);
	/* A DMA straddling the end faults as a whole and moves nothing. */
	check_dma_faults(f->c, f->ctx, f->memfd, off + len - 16, iova + len - 16, 32);

	struct dmb_stats st;
	assert_ok(f->c, dmb_stats(f->c, f->ctx, &st));
	assert_int_equal(st.mappings, 1);
	assert_int_equal(st.mapped_bytes, len);

	uint64_t bytes = 0;
	assert_ok(f->c, dmb_unmap(f->c, f->ctx, iova, len, &bytes));
	assert_int_equal(bytes, len);
	check_dma_faults(f->c, f->ctx, f->memfd, off, iova, PG);
	check_dma_faults(f->c, f->ctx, f->memfd, off + len - PG, iova + len - PG, PG);
}

static void test_adjacent_mappings_and_crossing_dma(void **state)
{
	struct fixture *f = *state;
	/* Two mappings adjacent in IOVA, from non-adjacent parts of the file. */
	assert_ok(f->c, map1(f, 0, 0x200000, 64 * 1024, DMB_READ | DMB_WRITE));
	assert_ok(f->c, map1(f, 4 * MiB, 0x200000 + 64 * 1024, 64 * 1024, DMB_READ | DMB_WRITE));
	uint8_t want[8192], got[8192];
	fill_pattern(want, sizeof(want), 9);
	fd_write(f->memfd, 64 * 1024 - 4096, want, 4096);
	fd_write(f->memfd, 4 * MiB, want + 4096, 4096);
	assert_ok(f->c, dmb_sim_dma_read(f->c, f->ctx, 0x200000 + 64 * 1024 - 4096, got, 8192));
	assert_memory_equal(got, want, 8192);
	/* Unmapping one leaves the other intact. */
	assert_ok(f->c, dmb_unmap(f->c, f->ctx, 0x200000, 64 * 1024, NULL));
	check_dma(f->c, f->ctx, f->memfd, 4 * MiB, 0x200000 + 64 * 1024, 4096, 10);
	check_dma_faults(f->c, f->ctx, f->memfd, 0, 0x200000, 4096);
}

static void test_read_only_mapping(void **state)
{
	struct fixture *f = *state;
	assert_ok(f->c, map1(f, 0, 0x400000, PG, DMB_READ));
	uint8_t want[PG], got[PG];
	fill_pattern(want, PG, 11);
	fd_write(f->memfd, 0, want, PG);
	assert_ok(f->c, dmb_sim_dma_read(f->c, f->ctx, 0x400000, got, PG));
	assert_memory_equal(got, want, PG);
	/* The device may not write through a read-only mapping. */
	memset(got, 0xAB, PG);
	assert_true(dmb_sim_dma_write(f->c, f->ctx, 0x400000, got, PG) < 0);
	assert_int_equal(dmb_last_error(f->c)->sys_errno, EFAULT);
	fd_read(f->memfd, 0, got, PG);
	assert_memory_equal(got, want, PG);
}

static void test_bad_map_requests(void **state)
{
	struct fixture *f = *state;
	struct dmb_iova_info ii;
	assert_ok(f->c, dmb_iova_ranges(f->c, f->ctx, &ii));
	assert_true(ii.n >= 1);
	assert_int_equal(ii.alignment, PG);

	/* past the end of the region */
	assert_code(f->c, map1(f, f->size - PG, 0x100000, 2 * PG, DMB_READ), DMB_OUT_OF_RANGE);
	assert_code(f->c, map1(f, f->size, 0x100000, PG, DMB_READ), DMB_OUT_OF_RANGE);
	/* zero length, overflow, alignment */
	assert_code(f->c, map1(f, 0, 0x100000, 0, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, map1(f, 0, UINT64_MAX - PG + 1, 2 * PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, map1(f, UINT64_MAX - PG + 1, 0x100000, 2 * PG, DMB_READ),
		    DMB_INVALID_ARGUMENT);
	assert_code(f->c, map1(f, 0, 0x100001, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, map1(f, 1, 0x100000, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, map1(f, 0, 0x100000, PG + 1, DMB_READ), DMB_INVALID_ARGUMENT);
	/* prot */
	assert_code(f->c, map1(f, 0, 0x100000, PG, 0), DMB_INVALID_ARGUMENT);
	assert_code(f->c, map1(f, 0, 0x100000, PG, 4), DMB_INVALID_ARGUMENT);
	/* unknown region */
	struct dmb_map_entry e = { f->region + 1000, 0, 0x100000, PG, DMB_READ };
	assert_code(f->c, dmb_map(f->c, f->ctx, &e), DMB_NOT_FOUND);
	/* unknown context */
	e.region = f->region;
	assert_code(f->c, dmb_map(f->c, f->ctx + 1000, &e), DMB_NOT_FOUND);
	/* outside the usable IOVA ranges: the x86 MSI window, and past the aperture */
	assert_code(f->c, map1(f, 0, 0xfee00000, PG, DMB_READ), DMB_OUT_OF_RANGE);
	assert_code(f->c, map1(f, 0, 0xfedff000, 2 * PG, DMB_READ), DMB_OUT_OF_RANGE);
	uint64_t top = ii.ranges[ii.n - 1].last;
	if (top < UINT64_MAX - 2 * PG)
		assert_code(f->c, map1(f, 0, top + 1, PG, DMB_READ), DMB_OUT_OF_RANGE);

	/* Nothing above left a mapping behind. */
	struct dmb_stats st;
	assert_ok(f->c, dmb_stats(f->c, f->ctx, &st));
	assert_int_equal(st.mappings, 0);
	check_dma_faults(f->c, f->ctx, f->memfd, 0, 0x100000, PG);
}

static void test_overlap_and_split(void **state)
{
	struct fixture *f = *state;
	assert_ok(f->c, map1(f, 0, 0x800000, 4 * PG, DMB_READ | DMB_WRITE));
	/* Every kind of overlap is refused. */
	assert_code(f->c, map1(f, 0, 0x800000, 4 * PG, DMB_READ), DMB_ALREADY_EXISTS);
	assert_code(f->c, map1(f, 0, 0x800000 - PG, 2 * PG, DMB_READ), DMB_ALREADY_EXISTS);
	assert_code(f->c, map1(f, 0, 0x800000 + 3 * PG, 2 * PG, DMB_READ), DMB_ALREADY_EXISTS);
	assert_code(f->c, map1(f, 0, 0x800000 + PG, PG, DMB_READ), DMB_ALREADY_EXISTS);
	assert_code(f->c, map1(f, 0, 0x800000 - PG, 6 * PG, DMB_READ), DMB_ALREADY_EXISTS);

	/* Unmap that would split it is refused and removes nothing. */
	assert_code(f->c, dmb_unmap(f->c, f->ctx, 0x800000, PG, NULL), DMB_FAILED_PRECONDITION);
	assert_code(f->c, dmb_unmap(f->c, f->ctx, 0x800000 + PG, 8 * PG, NULL), DMB_FAILED_PRECONDITION);
	/* A range with a whole mapping plus a split one: all or nothing. */
	assert_ok(f->c, map1(f, 8 * PG, 0x700000, PG, DMB_READ | DMB_WRITE));
	assert_code(f->c, dmb_unmap(f->c, f->ctx, 0x700000, 0x100000 + PG, NULL), DMB_FAILED_PRECONDITION);
	check_dma(f->c, f->ctx, f->memfd, 8 * PG, 0x700000, PG, 20);
	check_dma(f->c, f->ctx, f->memfd, 0, 0x800000, 4 * PG, 21);
	/* Unmap of nothing, zero length, overflow. */
	assert_code(f->c, dmb_unmap(f->c, f->ctx, 0x10000000, PG, NULL), DMB_NOT_FOUND);
	assert_code(f->c, dmb_unmap(f->c, f->ctx, 0x800000, 0, NULL), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_unmap(f->c, f->ctx, UINT64_MAX - PG, 4 * PG, NULL), DMB_INVALID_ARGUMENT);
	/* A range covering both removes both. */
	uint64_t bytes;
	assert_ok(f->c, dmb_unmap(f->c, f->ctx, 0x700000, 0x200000, &bytes));
	assert_int_equal(bytes, 5 * PG);
	check_dma_faults(f->c, f->ctx, f->memfd, 0, 0x800000, PG);
	check_dma_faults(f->c, f->ctx, f->memfd, 8 * PG, 0x700000, PG);
}

static void test_batch_10000_then_unmap_all(void **state)
{
	struct fixture *f = *state;
	const size_t n = 10000;
	struct dmb_map_entry *e = calloc(n, sizeof(*e));
	for (size_t i = 0; i < n; i++)
		e[i] = (struct dmb_map_entry){ f->region, (i % 2048) * PG, 0x40000000 + i * 2 * PG, PG,
					       DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map_batch(f->c, f->ctx, e, n));

	struct dmb_stats st = daemon_totals(&g_daemon);
	assert_int_equal(st.mappings, n);
	assert_int_equal(st.pinned_bytes, n * PG);
	/* Bytes move through the first, a middle and the last mapping. */
	size_t probe[] = { 0, 4999, n - 1 };
	for (size_t k = 0; k < 3; k++) {
		size_t i = probe[k];
		check_dma(f->c, f->ctx, f->memfd, e[i].offset, e[i].iova, PG, 30 + (unsigned)k);
		check_dma_faults(f->c, f->ctx, f->memfd, UINT64_MAX, e[i].iova + PG, PG); /* the gap */
	}

	uint64_t bytes = 0;
	assert_ok(f->c, dmb_unmap_all(f->c, f->ctx, &bytes));
	assert_int_equal(bytes, n * PG);
	st = daemon_totals(&g_daemon);
	assert_int_equal(st.mappings, 0);
	assert_int_equal(st.pinned_bytes, 0);
	check_dma_faults(f->c, f->ctx, f->memfd, e[0].offset, e[0].iova, PG);
	check_dma_faults(f->c, f->ctx, f->memfd, e[n - 1].offset, e[n - 1].iova, PG);
	/* unmap-all of an empty context succeeds with nothing */
	assert_ok(f->c, dmb_unmap_all(f->c, f->ctx, &bytes));
	assert_int_equal(bytes, 0);
	free(e);
}

static void test_batch_is_all_or_nothing(void **state)
{
	struct fixture *f = *state;
	struct dmb_map_entry e[8];
	for (size_t i = 0; i < 8; i++)
		e[i] = (struct dmb_map_entry){ f->region, i * PG, 0x1000000 + i * PG, PG, DMB_READ };
	e[5].iova = e[2].iova; /* overlaps an earlier entry of the same batch */
	assert_code(f->c, dmb_map_batch(f->c, f->ctx, e, 8), DMB_ALREADY_EXISTS);
	assert_int_equal(dmb_last_error(f->c)->index, 5);
	for (size_t i = 0; i < 8; i++)
		check_dma_faults(f->c, f->ctx, f->memfd, UINT64_MAX, 0x1000000 + i * PG, PG);
	assert_int_equal(daemon_totals(&g_daemon).pinned_bytes, 0);

	e[5].iova = 0x1000000 + 5 * PG;
	e[7].offset = f->size; /* past the region */
	assert_code(f->c, dmb_map_batch(f->c, f->ctx, e, 8), DMB_OUT_OF_RANGE);
	assert_int_equal(dmb_last_error(f->c)->index, 7);
	assert_int_equal(daemon_totals(&g_daemon).mappings, 0);

	/* Empty batch, and over the batch limit. */
	assert_code(f->c, dmb_map_batch(f->c, f->ctx, e, 0), DMB_INVALID_ARGUMENT);
	size_t big = dmb_server_info(f->c)->max_batch + 1;
	struct dmb_map_entry *many = calloc(big, sizeof(*many));
	for (size_t i = 0; i < big; i++)
		many[i] = (struct dmb_map_entry){ f->region, 0, 0x1000000 + i * PG, PG, DMB_READ };
	assert_code(f->c, dmb_map_batch(f->c, f->ctx, many, big), DMB_INVALID_ARGUMENT);
	free(many);
	assert_int_equal(daemon_totals(&g_daemon).mappings, 0);
}

static void test_unmap_batch(void **state)
{
	struct fixture *f = *state;
	struct dmb_map_entry e[4];
	for (size_t i = 0; i < 4; i++)
		e[i] = (struct dmb_map_entry){ f->region, i * PG, 0x2000000 + i * 4 * PG, PG,
					       DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map_batch(f->c, f->ctx, e, 4));
	/* One bad range (nothing there) refuses the whole batch. */
	struct dmb_range r[3] = { { e[0].iova, PG }, { e[3].iova, PG }, { 0x3000000, PG } };
	assert_code(f->c, dmb_unmap_batch(f->c, f->ctx, r, 3, NULL), DMB_NOT_FOUND);
	assert_int_equal(dmb_last_error(f->c)->index, 2);
	check_dma(f->c, f->ctx, f->memfd, 0, e[0].iova, PG, 40);
	/* Overlapping ranges in one batch are refused. */
	struct dmb_range ov[2] = { { e[1].iova, PG }, { e[1].iova, 2 * PG } };
	assert_code(f->c, dmb_unmap_batch(f->c, f->ctx, ov, 2, NULL), DMB_INVALID_ARGUMENT);
	check_dma(f->c, f->ctx, f->memfd, PG, e[1].iova, PG, 41);
	/* Unsorted, disjoint ranges work. */
	struct dmb_range ok[2] = { { e[3].iova, PG }, { e[0].iova, 8 * PG } };
	uint64_t bytes;
	assert_ok(f->c, dmb_unmap_batch(f->c, f->ctx, ok, 2, &bytes));
	assert_int_equal(bytes, 3 * PG);
	check_dma_faults(f->c, f->ctx, f->memfd, 0, e[0].iova, PG);
	check_dma_faults(f->c, f->ctx, f->memfd, 3 * PG, e[3].iova, PG);
	check_dma(f->c, f->ctx, f->memfd, 2 * PG, e[2].iova, PG, 42);
}

static void test_writable_mapping_of_read_only_region(void **state)
{
	struct fixture *f = *state;
	/* The same memory through a read-only fd. */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", f->memfd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(ro >= 0);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, ro, 0, &ri));
	assert_false(ri.writable);
	struct dmb_map_entry e = { ri.region, 0, 0x5000000, PG, DMB_READ | DMB_WRITE };
	assert_code(f->c, dmb_map(f->c, f->ctx, &e), DMB_PERMISSION_DENIED);
	e.prot = DMB_READ;
	assert_ok(f->c, dmb_map(f->c, f->ctx, &e));
	uint8_t want[PG], got[PG];
	fill_pattern(want, PG, 50);
	fd_write(f->memfd, 0, want, PG);
	assert_ok(f->c, dmb_sim_dma_read(f->c, f->ctx, 0x5000000, got, PG));
	assert_memory_equal(got, want, PG);
	close(ro);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_map_moves_bytes_at_edges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adjacent_mappings_and_crossing_dma, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_only_mapping, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_map_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(test_overlap_and_split, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch_10000_then_unmap_all, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch_is_all_or_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmap_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writable_mapping_of_read_only_region, setup, teardown),
	};
	return cmocka_run_group_tests_name("map", tests, group_start_daemon, group_stop_daemon);
}
