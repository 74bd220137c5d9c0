/* The memory attributes of P2P mappings and the [p2p] type1 policy, on the
 * sim backend. The sim models either kernel path: iommufd's dma-buf mapping
 * (MMIO attributes, the default) or VFIO type1's mapping of a BAR through a
 * user address (cacheable attributes, [sim] p2p_attrs = cacheable). Host
 * memory encryption is read from a cpuinfo file the test writes
 * (DMABROKERD_TEST_CPUINFO), with and without the "sme" flag.
 *
 * A mapping is proven by simulated device A's DMA reaching B's BAR; a
 * refusal by that DMA faulting at the IOVA and by nothing being counted. */
#include "harness.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PG 4096ull
#define BDF_A "0000:01:00.0"
#define BDF_B "0000:02:00.0"
#define P2P_IOVA 0x40000000ull
#define RAM_IOVA 0x100000ull

static const char *const cpu_plain =
	"processor\t: 0\nvendor_id\t: AuthenticAMD\n"
	"flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep svm\n\n";
static const char *const cpu_sme =
	"processor\t: 0\nvendor_id\t: AuthenticAMD\n"
	"flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep svm sme sev\n\n";

struct fx {
	struct daemon d;
	char cpuinfo[256];
	struct dmb_client *c;
	uint64_t ctx;
	struct dmb_device_info a, b;
	int memfd;
};

/* A daemon whose P2P mappings carry `attrs` (mmio, cacheable), on a host
 * whose cpuinfo is `cpu`, with `policy` added to [p2p]. */
static void start(struct fx *f, const char *attrs, const char *cpu, const char *policy)
{
	memset(f, 0, sizeof(*f));
	snprintf(f->cpuinfo, sizeof(f->cpuinfo), "/tmp/dmb-cpuinfo-XXXXXX");
	int fd = mkstemp(f->cpuinfo);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, cpu, strlen(cpu)), (ssize_t)strlen(cpu));
	close(fd);
	setenv("DMABROKERD_TEST_CPUINFO", f->cpuinfo, 1);
	char cfg[1024];
	snprintf(cfg, sizeof(cfg),
		 "[devices]\nallow = " BDF_A " " BDF_B "\n"
		 "[p2p]\nallow = yes\n%s\n"
		 "[sim]\ndevices = " BDF_A " " BDF_B "\np2p_attrs = %s\n",
		 policy, attrs);
	daemon_start(&f->d, cfg);
	unsetenv("DMABROKERD_TEST_CPUINFO");

	f->c = client_connect(&f->d, "p2p-attrs");
	assert_ok(f->c, dmb_context_create(f->c, "vm", &f->ctx));
	assert_ok(f->c, dmb_device_open(f->c, f->ctx, BDF_A, NULL, &f->a));
	assert_ok(f->c, dmb_device_open(f->c, f->ctx, BDF_B, NULL, &f->b));
	struct dmb_device_state st;
	assert_ok(f->c, dmb_device_set_command(f->c, f->a.device, DMB_PCI_MEMORY | DMB_PCI_BUS_MASTER,
					       0, &st));
	assert_ok(f->c, dmb_device_set_command(f->c, f->b.device, DMB_PCI_MEMORY, 0, &st));
	f->memfd = make_memfd(1 << 20, 0);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, f->memfd, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, RAM_IOVA, 64 * 1024, DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map(f->c, f->ctx, &e));
}

static void stop(struct fx *f)
{
	dmb_close(f->c);
	close(f->memfd);
	daemon_stop(&f->d);
	unlink(f->cpuinfo);
}

/* A writes a pattern into B's BAR through the IOVA and reads it back. */
static void a_reaches_bar(struct fx *f, unsigned seed)
{
	uint8_t want[256], got[256];
	fill_pattern(want, sizeof(want), seed);
	assert_ok(f->c, dmb_sim_device_dma_write(f->c, f->a.device, P2P_IOVA, want, sizeof(want)));
	assert_ok(f->c, dmb_sim_device_dma_read(f->c, f->a.device, P2P_IOVA, got, sizeof(got)));
	assert_memory_equal(got, want, sizeof(want));
}

static void a_faults(struct fx *f)
{
	uint8_t got[64];
	assert_true(dmb_sim_device_dma_read(f->c, f->a.device, P2P_IOVA, got, sizeof(got)) < 0);
	assert_int_equal(dmb_last_error(f->c)->sys_errno, EFAULT);
}

/* The P2P mapping at P2P_IOVA as 'list mappings' and 'list devices' show it:
 * its attributes in both, and the RAM mapping's. */
static void check_listed(struct fx *f, uint32_t want)
{
	struct dmb_mapping_info mi[4];
	size_t n;
	bool more;
	assert_ok(f->c, dmb_list_mappings(f->c, f->ctx, 0, mi, 4, &n, &more, NULL));
	assert_int_equal(n, 2);
	assert_int_equal(mi[0].iova, RAM_IOVA);
	assert_false(mi[0].mmio);
	assert_int_equal(mi[0].attr, DMB_ATTR_CACHEABLE);
	assert_int_equal(mi[1].iova, P2P_IOVA);
	assert_true(mi[1].mmio);
	assert_int_equal(mi[1].attr, want);

	struct dmb_device_listing *v;
	size_t nd;
	assert_ok(f->c, dmb_list_devices(f->c, false, &v, &nd));
	size_t seen = 0;
	for (size_t i = 0; i < nd; i++)
		for (size_t k = 0; k < v[i].n_importers; k++) {
			assert_int_equal(v[i].device, f->b.device);
			assert_int_equal(v[i].importers[k].attr, want);
			seen++;
		}
	assert_int_equal(seen, 1);
	free(v);
}

/* Only the RAM mapping: the refused MapPeer left nothing behind. */
static void check_nothing_mapped(struct fx *f)
{
	struct dmb_mapping_info mi[4];
	size_t n;
	bool more;
	assert_ok(f->c, dmb_list_mappings(f->c, f->ctx, 0, mi, 4, &n, &more, NULL));
	assert_int_equal(n, 1);
	assert_int_equal(mi[0].iova, RAM_IOVA);
	struct dmb_stats st;
	assert_ok(f->c, dmb_stats(f->c, f->ctx, &st));
	assert_int_equal(st.p2p_mappings, 0);
	a_faults(f);
}

static int map_b(struct fx *f, uint32_t *attr)
{
	return dmb_map_peer_attr(f->c, f->ctx, f->b.device, NULL, 0, 0, P2P_IOVA, 64 * 1024,
				 DMB_READ | DMB_WRITE, attr);
}

/* iommufd's path (the sim's default): MMIO, whatever the host, and no
 * type1 policy gets in the way even where it would refuse. */
static void test_mmio_path(void **state)
{
	(void)state;
	struct fx f;
	start(&f, "mmio", cpu_sme, "");
	assert_int_equal(daemon_log_count(&f.d, "host memory encryption is active"), 1);
	assert_int_equal(daemon_log_count(&f.d, "maps peer BARs with MMIO attributes"), 1);
	uint32_t attr = 0;
	assert_ok(f.c, map_b(&f, &attr));
	assert_int_equal(attr, DMB_ATTR_MMIO);
	a_reaches_bar(&f, 1);
	check_listed(&f, DMB_ATTR_MMIO);
	assert_int_equal(daemon_log_count(&f.d, "cacheable IOMMU attributes, not as MMIO"), 0);
	stop(&f);
}

/* type1's path on a host without memory encryption: warn by default. The
 * mapping is made, reported cacheable, moves bytes, and the log says what
 * it is; the start-up log says why the default is warn. */
static void test_cacheable_warns_by_default(void **state)
{
	(void)state;
	struct fx f;
	start(&f, "cacheable", cpu_plain, "");
	assert_int_equal(daemon_log_count(&f.d, "host memory encryption is not active"), 1);
	assert_int_equal(daemon_log_count(&f.d, "[p2p] type1 = warn (the default here)"), 1);
	uint32_t attr = 0;
	assert_ok(f.c, map_b(&f, &attr));
	assert_int_equal(attr, DMB_ATTR_CACHEABLE);
	a_reaches_bar(&f, 2);
	check_listed(&f, DMB_ATTR_CACHEABLE);
	assert_int_equal(daemon_log_count(&f.d, "cacheable IOMMU attributes, not as MMIO"), 1);
	/* The old entry point still works and maps the same way. */
	assert_ok(f.c, dmb_map_peer(f.c, f.ctx, f.b.device, NULL, 0, 0, P2P_IOVA + (1 << 20), PG,
				    DMB_READ));
	stop(&f);
}

/* type1's path on a host with SME active: refused by default, with the
 * reason; nothing mapped. A reload to allow lets it through (with the
 * warning that says what allow means here); a reload back refuses again
 * new mappings and keeps the one made. */
static void test_cacheable_refused_with_sme(void **state)
{
	(void)state;
	struct fx f;
	start(&f, "cacheable", cpu_sme, "");
	assert_int_equal(daemon_log_count(&f.d, "host memory encryption is active"), 1);
	assert_int_equal(daemon_log_count(&f.d, "[p2p] type1 = refuse (the default here)"), 1);
	uint32_t attr = 77;
	assert_code(f.c, map_b(&f, &attr), DMB_PERMISSION_DENIED);
	assert_int_equal(attr, 77);
	assert_non_null(strstr(dmb_last_error(f.c)->message, "[p2p] type1"));
	assert_non_null(strstr(dmb_last_error(f.c)->message, "as cacheable, not MMIO"));
	assert_non_null(strstr(dmb_last_error(f.c)->message, "(Linux 6.19+, VFIO_PCI_DMABUF)"));
	check_nothing_mapped(&f);
	assert_int_equal(daemon_log_count(&f.d, "P2P mapping of " BDF_B " refused"), 1);

	char dir[256], drop[300];
	snprintf(dir, sizeof(dir), "%s/dmabroker.conf.d", f.d.dir);
	assert_int_equal(mkdir(dir, 0755), 0);
	snprintf(drop, sizeof(drop), "%s/50-p2p.conf", dir);
	FILE *w = fopen(drop, "w");
	assert_non_null(w);
	fputs("[p2p]\ntype1 = allow\n", w);
	fclose(w);
	struct dmb_reload_info ri;
	assert_ok(f.c, dmb_reload_policy(f.c, &ri));
	assert_int_equal(daemon_log_count(&f.d, "[p2p] type1 is now allow (was refuse)"), 1);
	assert_ok(f.c, map_b(&f, &attr));
	assert_int_equal(attr, DMB_ATTR_CACHEABLE);
	a_reaches_bar(&f, 3);
	/* allow: no per-mapping warning */
	assert_int_equal(daemon_log_count(&f.d, "cacheable IOMMU attributes, not as MMIO"), 0);

	unlink(drop);
	assert_ok(f.c, dmb_reload_policy(f.c, &ri));
	assert_int_equal(daemon_log_count(&f.d, "[p2p] type1 is now refuse (was allow)"), 1);
	assert_code(f.c, dmb_map_peer(f.c, f.ctx, f.b.device, NULL, 0, 0, P2P_IOVA + (1 << 20), PG,
				      DMB_READ), DMB_PERMISSION_DENIED);
	a_reaches_bar(&f, 4); /* the mapping made under allow stays */
	rmdir(dir);
	stop(&f);
}

/* An explicit setting wins over the host's default both ways. */
static void test_explicit_setting_wins(void **state)
{
	(void)state;
	struct fx f;
	start(&f, "cacheable", cpu_plain, "type1 = refuse");
	assert_int_equal(daemon_log_count(&f.d, "[p2p] type1 = refuse (set in the configuration)"), 1);
	assert_code(f.c, map_b(&f, NULL), DMB_PERMISSION_DENIED);
	check_nothing_mapped(&f);
	stop(&f);

	start(&f, "cacheable", cpu_sme, "type1 = allow");
	assert_int_equal(daemon_log_count(&f.d, "type1 = allow with host memory encryption active"), 1);
	uint32_t attr = 0;
	assert_ok(f.c, map_b(&f, &attr));
	assert_int_equal(attr, DMB_ATTR_CACHEABLE);
	a_reaches_bar(&f, 5);
	stop(&f);
}

/* Without a readable cpuinfo the broker cannot tell: it says so and keeps
 * the non-encrypted default (warn). */
static void test_unknown_host(void **state)
{
	(void)state;
	struct fx f;
	start(&f, "cacheable", "processor\t: 0\n", "");
	assert_int_equal(daemon_log_count(&f.d, "has no CPU flags line: host memory encryption unknown"), 1);
	assert_int_equal(daemon_log_count(&f.d, "[p2p] type1 = warn (the default here)"), 1);
	assert_ok(f.c, map_b(&f, NULL));
	a_reaches_bar(&f, 6);
	stop(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mmio_path),
		cmocka_unit_test(test_cacheable_warns_by_default),
		cmocka_unit_test(test_cacheable_refused_with_sme),
		cmocka_unit_test(test_explicit_setting_wins),
		cmocka_unit_test(test_unknown_host),
	};
	return cmocka_run_group_tests_name("p2p_attrs", tests, NULL, NULL);
}
