/* dmb_backend_create("auto") on a machine without /dev/iommu and without
 * /dev/vfio/vfio (dev_root is an empty temp directory) refuses with one
 * sentence naming both missing pieces; the named backends say the same. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "backend/backend.h"
#include "fake.h"

static void test_auto_names_both(void **state)
{
	(void)state;
	char *root = fake_tree_new();
	struct dmb_backend_config cfg = {.name = "auto", .sysfs_root = root, .dev_root = root};
	struct dmb_backend *be = NULL;
	struct dmb_err e = {0};
	char want[600];

	assert_true(dmb_backend_create(&cfg, &be, &e) < 0);
	assert_null(be);
	assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
	snprintf(want, sizeof(want), "%s/iommu missing: no iommufd in this kernel", root);
	assert_non_null(strstr(e.msg, want));
	snprintf(want, sizeof(want), "%s/vfio/vfio missing: vfio module not loaded", root);
	assert_non_null(strstr(e.msg, want));
	/* auto never falls back to the simulated backend */
	assert_non_null(strstr(e.msg, "--backend=sim"));

	cfg.name = "iommufd";
	dmb_err_clear(&e);
	assert_int_equal(dmb_backend_create(&cfg, &be, &e), -ENOENT);
	snprintf(want, sizeof(want), "%s/iommu missing: no iommufd in this kernel", root);
	assert_string_equal(e.msg, want);

	cfg.name = "vfio-type1";
	dmb_err_clear(&e);
	assert_int_equal(dmb_backend_create(&cfg, &be, &e), -ENOENT);
	snprintf(want, sizeof(want), "%s/vfio/vfio missing: vfio module not loaded", root);
	assert_string_equal(e.msg, want);
	fake_tree_free(root);
}

/* /dev/iommu present but no VFIO cdev: iommufd says so. */
static void test_iommufd_without_cdev(void **state)
{
	(void)state;
	char *root = fake_tree_new();
	fake_write(root, "iommu", "");
	struct dmb_backend_config cfg = {.name = "iommufd", .sysfs_root = root, .dev_root = root};
	struct dmb_backend *be = NULL;
	struct dmb_err e = {0};
	char want[600];

	assert_int_equal(dmb_backend_create(&cfg, &be, &e), -ENOENT);
	snprintf(want, sizeof(want), "%s/vfio/devices missing: no VFIO device cdev", root);
	assert_non_null(strstr(e.msg, want));
	fake_tree_free(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_auto_names_both),
		cmocka_unit_test(test_iommufd_without_cdev),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
