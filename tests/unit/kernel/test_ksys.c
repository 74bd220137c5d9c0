/* ksys: PCI address parsing and the sysfs lookups, on a temp tree. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "backend/ksys.h"
#include "fake.h"

static void test_bdf(void **state)
{
	(void)state;
	char out[KSYS_BDF_LEN + 1];
	assert_int_equal(ksys_bdf_normalize("0000:00:03.0", out), 0);
	assert_string_equal(out, "0000:00:03.0");
	assert_int_equal(ksys_bdf_normalize("00:1F.7", out), 0);
	assert_string_equal(out, "0000:00:1f.7");
	assert_int_equal(ksys_bdf_normalize("ABCD:ff:1f.7", out), 0);
	assert_string_equal(out, "abcd:ff:1f.7");

	const char *bad[] = {
		"", "0000:00:03", "0000:00:03.8", "0000:00:20.0", "0000-00:03.0", "0000:00:03.0 ",
		"../00:03.0", "0000:0/:03.0", "00000:00:03.0", "0000:00:3.0", "x0:00.0", NULL,
	};
	for (int i = 0; bad[i]; i++)
		assert_int_equal(ksys_bdf_normalize(bad[i], out), -EINVAL);
	assert_int_equal(ksys_bdf_normalize(NULL, out), -EINVAL);
}

static void test_sysfs(void **state)
{
	(void)state;
	char *root = fake_tree_new();
	char sys[600], out[256];
	snprintf(sys, sizeof(sys), "%s/sys", root);
	fake_pci(root, "0000:01:00.0", 0x10de, 0x2204, "vfio-pci", 12, "vfio7");
	fake_pci(root, "0000:01:00.1", 0x10de, 0x1aef, "snd_hda_intel", 12, NULL);
	fake_pci(root, "0000:01:00.2", 0x10de, 0x1ad8, NULL, 12, NULL);
	fake_pci(root, "0000:01:00.3", 0x10de, 0x1ad9, "xhci_hcd", 12, NULL);
	fake_pci(root, "0000:00:01.0", 0x8086, 0x1901, "pcieport", 1, NULL);

	uint16_t v, d;
	assert_int_equal(ksys_pci_ids(sys, "0000:01:00.0", &v, &d), 0);
	assert_int_equal(v, 0x10de);
	assert_int_equal(d, 0x2204);
	unsigned g;
	assert_int_equal(ksys_iommu_group(sys, "0000:01:00.0", &g), 0);
	assert_int_equal(g, 12);
	assert_int_equal(ksys_pci_driver(sys, "0000:01:00.1", out, sizeof(out)), 0);
	assert_string_equal(out, "snd_hda_intel");
	assert_int_equal(ksys_pci_driver(sys, "0000:01:00.2", out, sizeof(out)), 0);
	assert_string_equal(out, "");
	assert_int_equal(ksys_vfio_dev_name(sys, "0000:01:00.0", out, sizeof(out)), 0);
	assert_string_equal(out, "vfio7");
	assert_int_equal(ksys_vfio_dev_name(sys, "0000:01:00.1", out, sizeof(out)), -ENOENT);
	assert_int_equal(ksys_pci_exists(sys, "0000:01:00.0"), 0);
	assert_int_equal(ksys_pci_exists(sys, "0000:02:00.0"), -ENOENT);

	/* blockers: host drivers only; no driver and vfio drivers are fine */
	assert_int_equal(ksys_group_blockers(sys, 12, out, sizeof(out)), 2);
	assert_non_null(strstr(out, "0000:01:00.1 (snd_hda_intel)"));
	assert_non_null(strstr(out, "0000:01:00.3 (xhci_hcd)"));
	assert_null(strstr(out, "01:00.0"));
	assert_null(strstr(out, "01:00.2"));
	/* truncated with an ellipsis, never overflowing */
	char small[24];
	assert_int_equal(ksys_group_blockers(sys, 12, small, sizeof(small)), 2);
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_string_equal(small + sizeof(small) - 4, "...");
	assert_int_equal(ksys_group_blockers(sys, 1, out, sizeof(out)), 0);
	assert_string_equal(out, "");

	assert_true(ksys_driver_keeps_group_viable("vfio-pci"));
	assert_true(ksys_driver_keeps_group_viable("mlx5_vfio_pci"));
	assert_true(ksys_driver_keeps_group_viable("pci-stub"));
	assert_true(ksys_driver_keeps_group_viable(""));
	assert_false(ksys_driver_keeps_group_viable("nvme"));
	fake_tree_free(root);
}

static void test_errno_name(void **state)
{
	(void)state;
	assert_string_equal(ksys_errno_name(-ENOENT), "ENOENT");
	assert_string_equal(ksys_errno_name(EMSGSIZE), "EMSGSIZE");
}

/* The per-context record of MMIO mappings that keeps pinned_bytes to RAM. */
static void test_mmio_set(void **state)
{
	(void)state;
	struct ksys_mmio_set s = {0};
	assert_int_equal(ksys_mmio_remove(&s, 0, 0), 0);
	for (uint64_t i = 0; i < 20; i++) {
		assert_int_equal(ksys_mmio_reserve(&s), 0);
		ksys_mmio_add(&s, 0x100000 * (i + 1), 0x1000);
	}
	/* wholly inside only: a range that cuts one leaves it */
	assert_int_equal(ksys_mmio_remove(&s, 0x100800, 0x1000), 0);
	assert_int_equal(ksys_mmio_remove(&s, 0x100000, 0xfff), 0);
	assert_int_equal(ksys_mmio_remove(&s, 0x100000, 0x1000), 0x1000);
	assert_int_equal(s.n, 19);
	assert_int_equal(ksys_mmio_remove(&s, 0x200000, 0x300000), 0x3000); /* 2, 3, 4 */
	assert_int_equal(s.n, 16);
	/* a range to the top of the address space, without wrapping */
	assert_int_equal(ksys_mmio_reserve(&s), 0);
	ksys_mmio_add(&s, UINT64_MAX - 0xfff, 0x1000);
	assert_int_equal(ksys_mmio_remove(&s, UINT64_C(1) << 63, UINT64_C(1) << 63), 0x1000);
	assert_int_equal(ksys_mmio_remove(&s, 0x1000000, UINT64_MAX), 0x5000); /* 16-20 */
	assert_int_equal(ksys_mmio_remove(&s, 0, 0), 11 * 0x1000);
	assert_int_equal(s.n, 0);
	ksys_mmio_free(&s);
	ksys_mmio_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bdf),
		cmocka_unit_test(test_sysfs),
		cmocka_unit_test(test_errno_name),
		cmocka_unit_test(test_mmio_set),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
