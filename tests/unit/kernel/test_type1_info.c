/* dmb_type1_parse_info: decoding VFIO_IOMMU_GET_INFO buffers built byte by
 * byte as the kernel lays them out (drivers/vfio/vfio_iommu_type1.c), including the
 * chain's padding quirks: the MIGRATION cap's 4 hidden bytes at offset 12
 * and DMA_AVAIL's 12 bytes occupying 16. Padding is filled with garbage so
 * a parser that reads it, or steps by sizeof instead of `next`, fails. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "backend/ksys.h"
#include "backend/vfio_type1.h"
#include "backend/uapi/vfio_container.h"

struct buf {
	uint8_t b[4096];
	size_t len;
	size_t last_cap; /* offset of the previous cap header, 0 if none */
};

static void put16(struct buf *x, size_t off, uint16_t v) { memcpy(x->b + off, &v, 2); }
static void put32(struct buf *x, size_t off, uint32_t v) { memcpy(x->b + off, &v, 4); }
static void put64(struct buf *x, size_t off, uint64_t v) { memcpy(x->b + off, &v, 8); }

static void info_init(struct buf *x, uint32_t flags, uint64_t pgsizes)
{
	memset(x, 0, sizeof(*x));
	x->len = 24;
	put32(x, 0, 24);
	put32(x, 4, flags);
	put64(x, 8, pgsizes);
	put32(x, 16, 0);
	put32(x, 20, 0xA5A5A5A5); /* pad */
}

/* Appends a cap of `size` bytes, padded to 8, linked from the previous. */
static size_t cap_add(struct buf *x, uint16_t id, uint16_t version, size_t size)
{
	size_t off = x->len;
	memset(x->b + off, 0xEE, (size + 7) & ~(size_t)7); /* garbage in padding */
	put16(x, off, id);
	put16(x, off + 2, version);
	put32(x, off + 4, 0);
	if (x->last_cap)
		put32(x, x->last_cap + 4, (uint32_t)off);
	else
		put32(x, 16, (uint32_t)off);
	x->last_cap = off;
	x->len = off + ((size + 7) & ~(size_t)7);
	put32(x, 0, (uint32_t)x->len);
	return off;
}

static void cap_migration(struct buf *x)
{
	size_t o = cap_add(x, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1, 32);
	put32(x, o + 8, 0);          /* flags */
	/* o + 12: 4 bytes of implicit padding, left as garbage */
	put64(x, o + 16, 0x1000);     /* pgsize_bitmap */
	put64(x, o + 24, 1ull << 28); /* max_dirty_bitmap_size */
}

static void cap_dma_avail(struct buf *x, uint32_t avail)
{
	size_t o = cap_add(x, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 12);
	put32(x, o + 8, avail);
	/* o + 12 .. o + 15: chain padding, garbage */
}

static void cap_iova(struct buf *x, uint32_t nr, const uint64_t (*r)[2])
{
	size_t o = cap_add(x, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 16 + 16 * (size_t)nr);
	put32(x, o + 8, nr);
	put32(x, o + 12, 0);
	for (uint32_t i = 0; i < nr; i++) {
		put64(x, o + 16 + 16 * i, r[i][0]);
		put64(x, o + 24 + 16 * i, r[i][1]);
	}
}

static const uint64_t x86_ranges[2][2] = {
	{0, 0xFEDFFFFF},
	{0xFEF00000, 0xFFFFFFFFFFFF},
};

#define PGSIZES (0x1000ull | 0x200000ull | 0x40000000ull)
#define FLAGS (VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS)

static void check_x86(const struct dmb_type1_info *t)
{
	assert_int_equal(t->iova.alignment, 0x1000);
	assert_int_equal(t->iova_pgsizes, PGSIZES);
	assert_true(t->has_iova_range);
	assert_int_equal(t->nr_iovas, 2);
	assert_int_equal(t->iova.n, 2);
	assert_int_equal(t->iova.ranges[0].start, 0);
	assert_int_equal(t->iova.ranges[0].last, 0xFEDFFFFF);
	assert_int_equal(t->iova.ranges[1].start, 0xFEF00000);
	assert_int_equal(t->iova.ranges[1].last, 0xFFFFFFFFFFFF);
}

/* The native driver's order: MIGRATION, DMA_AVAIL, IOVA_RANGE. */
static void test_kernel_order(void **state)
{
	(void)state;
	struct buf x;
	struct dmb_type1_info t;
	info_init(&x, FLAGS, PGSIZES);
	cap_migration(&x);
	cap_dma_avail(&x, 65000);
	cap_iova(&x, 2, x86_ranges);
	assert_int_equal(x.len, 24 + 32 + 16 + 16 + 32);

	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 65535, &t), 0);
	check_x86(&t);
	assert_true(t.has_dma_avail);
	assert_int_equal(t.dma_avail, 65000);
	assert_int_equal(t.iova.max_mappings, 65535);
	assert_int_equal(t.iova.mappings_available, 65000);
	assert_true(t.has_migration);
	assert_int_equal(t.mig_flags, 0);
	assert_int_equal(t.mig_pgsize_bitmap, 0x1000);
	assert_int_equal(t.mig_max_dirty_bitmap_size, 1ull << 28);
}

/* Any order, unknown caps skipped, a version-2 cap still read. */
static void test_other_order_and_unknown(void **state)
{
	(void)state;
	struct buf x;
	struct dmb_type1_info t;
	info_init(&x, FLAGS, PGSIZES);
	cap_iova(&x, 2, x86_ranges);
	size_t o = cap_add(&x, 77, 1, 20); /* unknown */
	put32(&x, o + 8, 0xFFFFFFFF);
	cap_dma_avail(&x, 12);
	put16(&x, x.last_cap + 2, 2); /* version 2 */
	cap_migration(&x);

	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 100, &t), 0);
	check_x86(&t);
	assert_int_equal(t.iova.max_mappings, 100);
	assert_int_equal(t.iova.mappings_available, 12);
	assert_int_equal(t.mig_pgsize_bitmap, 0x1000);
}

/* The iommufd compat container: DMA_AVAIL = U32_MAX means no limit. */
static void test_compat_no_limit(void **state)
{
	(void)state;
	struct buf x;
	struct dmb_type1_info t;
	info_init(&x, FLAGS, PGSIZES);
	cap_dma_avail(&x, 0xFFFFFFFF);
	cap_iova(&x, 2, x86_ranges);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 65535, &t), 0);
	check_x86(&t);
	assert_false(t.has_migration);
	assert_int_equal(t.iova.max_mappings, 0);
}

/* Limit unreadable: the kernel's default; never below what is available. */
static void test_entry_limit_fallback(void **state)
{
	(void)state;
	struct buf x;
	struct dmb_type1_info t;
	info_init(&x, FLAGS, PGSIZES);
	cap_dma_avail(&x, 500);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), 0);
	assert_int_equal(t.iova.max_mappings, DMB_TYPE1_DEFAULT_ENTRY_LIMIT);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 10, &t), 0);
	assert_int_equal(t.iova.max_mappings, 500);
	/* no IOVA_RANGE cap: the whole space, MAP_DMA judges */
	assert_int_equal(t.iova.n, 1);
	assert_int_equal(t.iova.ranges[0].start, 0);
	assert_int_equal(t.iova.ranges[0].last, UINT64_MAX);
}

/* First call's answer (no caps in the buffer) and old kernels. */
static void test_no_caps(void **state)
{
	(void)state;
	struct buf x;
	struct dmb_type1_info t;
	info_init(&x, VFIO_IOMMU_INFO_PGSIZES, 0x200000ull | 0x10000ull);
	assert_int_equal(dmb_type1_parse_info(x.b, 24, 0, &t), 0);
	assert_int_equal(t.iova.alignment, 0x10000);
	assert_int_equal(t.iova.max_mappings, 0);
	assert_int_equal(t.iova.n, 1);
	/* the 16-byte minimum struct of old kernels */
	assert_int_equal(dmb_type1_parse_info(x.b, 16, 0, &t), 0);
	/* no PGSIZES: the host page size */
	info_init(&x, 0, 0x200000ull);
	assert_int_equal(dmb_type1_parse_info(x.b, 24, 0, &t), 0);
	assert_int_equal(t.iova.alignment, ksys_page_size());
}

static void test_many_ranges(void **state)
{
	(void)state;
	struct buf x;
	struct dmb_type1_info t;
	uint64_t r[40][2];
	for (int i = 0; i < 40; i++) {
		r[i][0] = (uint64_t)i << 20;
		r[i][1] = ((uint64_t)i << 20) + 0x7FFFF;
	}
	info_init(&x, FLAGS, PGSIZES);
	cap_iova(&x, 40, r);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), 0);
	assert_int_equal(t.nr_iovas, 40);
	assert_int_equal(t.iova.n, DMB_MAX_IOVA_RANGES);
	assert_int_equal(t.iova.ranges[31].start, 31ull << 20);
}

static void test_malformed(void **state)
{
	(void)state;
	struct buf x;
	struct dmb_type1_info t;

	info_init(&x, FLAGS, PGSIZES);
	assert_int_equal(dmb_type1_parse_info(x.b, 8, 0, &t), -EPROTO);
	assert_int_equal(dmb_type1_parse_info(NULL, 24, 0, &t), -EPROTO);

	/* a loop: next points back */
	info_init(&x, FLAGS, PGSIZES);
	cap_dma_avail(&x, 1);
	cap_migration(&x);
	put32(&x, x.last_cap + 4, 24);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), -EPROTO);

	/* a self loop */
	info_init(&x, FLAGS, PGSIZES);
	cap_dma_avail(&x, 1);
	put32(&x, 24 + 4, 24);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), -EPROTO);

	/* cap_offset inside the header */
	info_init(&x, FLAGS, PGSIZES);
	cap_dma_avail(&x, 1);
	put32(&x, 16, 8);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), -EPROTO);

	/* next beyond the buffer */
	info_init(&x, FLAGS, PGSIZES);
	cap_dma_avail(&x, 1);
	put32(&x, 24 + 4, 4000);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), -EPROTO);

	/* a cap cut short by the buffer's end */
	info_init(&x, FLAGS, PGSIZES);
	cap_migration(&x);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len - 8, 0, &t), -EPROTO);

	/* nr_iovas larger than the buffer holds */
	info_init(&x, FLAGS, PGSIZES);
	cap_iova(&x, 2, x86_ranges);
	put32(&x, 24 + 8, 3);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), -EPROTO);
	put32(&x, 24 + 8, 0x80000000u);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), -EPROTO);

	/* start > end */
	info_init(&x, FLAGS, PGSIZES);
	const uint64_t bad[1][2] = {{0x2000, 0x1000}};
	cap_iova(&x, 1, bad);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), -EPROTO);

	/* CAPS flag with cap_offset 0: no chain, fine */
	info_init(&x, FLAGS, PGSIZES);
	assert_int_equal(dmb_type1_parse_info(x.b, x.len, 0, &t), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kernel_order),
		cmocka_unit_test(test_other_order_and_unknown),
		cmocka_unit_test(test_compat_no_limit),
		cmocka_unit_test(test_entry_limit_fallback),
		cmocka_unit_test(test_no_caps),
		cmocka_unit_test(test_many_ranges),
		cmocka_unit_test(test_malformed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
