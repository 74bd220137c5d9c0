/* Unit tests of the daemon configuration (daemon/policy/config.c): defaults, a full
 * file, every kind of error (named by file:line, and leaving the previous
 * configuration untouched), the device allow-list and the admin list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "policy/config.h"
#include "dmb-build.h"

struct fx {
	char dir[64];
	char path[128];
	struct dmb_config cfg;
	struct dmb_err e;
};


/* The device decision for a client of uid/gid 1000, as the daemon makes it:
 * resolve the client's policy from the configuration, then ask. */
static bool allowed(const struct dmb_config *c, const char *bdf)
{
	struct dmb_client_policy pol;
	memset(&pol, 0, sizeof(pol));
	config_resolve(c, 1000, 1000, &pol);
	return config_device_allowed(&pol, bdf);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/tmp/dmb-config-test-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/dmabroker.conf", f->dir);
	config_defaults(&f->cfg);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	unlink(f->path);
	assert_int_equal(rmdir(f->dir), 0);
	free(f);
	return 0;
}

static void write_file(struct fx *f, const char *text)
{
	FILE *fp = fopen(f->path, "we");
	assert_non_null(fp);
	assert_int_equal(fputs(text, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
}

static int load(struct fx *f, const char *text)
{
	write_file(f, text);
	dmb_err_clear(&f->e);
	return config_load(&f->cfg, f->path, &f->e);
}

static const char full[] =
	"# a full configuration\n"
	"[daemon]\n"
	"socket = /run/test/broker.sock\n"
	"socket_mode = 0600\n"
	"backend = sim\n"
	"log_level = debug\n"
	"sim_populate = yes\n"
	"\n"
	"[limits]\n"
	"contexts_per_client = 3\n"
	"regions_per_context = 17\n"
	"mappings_per_context = 0x100000\n"
	"devices_per_context = 5\n"
	"sessions = 99\n"
	"session_queue_bytes = 65536\n"
	"\n"
	"[devices]\n"
	"allow = 0000:01:00.0, 1234:11e8\n"
	"allow = 0000:3a:1f.7\n"
	"\n"
	"[admin]\n"
	"uids = 0 1000\n";

static void test_defaults(void **state)
{
	struct fx *f = *state;
	const struct dmb_config *c = &f->cfg;
	assert_string_equal(c->socket_path, DMB_DEFAULT_SOCKET);
	assert_int_equal(c->socket_mode, 0660);
	assert_string_equal(c->backend, "auto");
	assert_int_equal(c->log_level, LOG_INFO);
	assert_false(c->sim_populate);
	assert_int_equal(c->limits.contexts_per_owner, 64);
	assert_int_equal(c->limits.regions_per_context, 1024);
	assert_int_equal(c->limits.mappings_per_context, 4u << 20);
	assert_int_equal(c->limits.devices_per_context, 32);
	assert_int_equal(c->max_sessions, 4096);
	assert_int_equal(c->session_queue_bytes, 4u << 20);
	/* Default deny: no device, only root is admin. */
	assert_int_equal(c->n_allow, 0);
	assert_false(allowed(&f->cfg, "0000:00:00.0"));
	assert_true(config_is_admin(c, 0));
	assert_false(config_is_admin(c, 1000));

	/* An empty file changes nothing. */
	struct dmb_config before = f->cfg;
	assert_int_equal(load(f, ""), 0);
	assert_memory_equal(&before, &f->cfg, sizeof(before));
	assert_int_equal(load(f, "# only a comment\n\n; and another\n"), 0);
	assert_memory_equal(&before, &f->cfg, sizeof(before));
}

static void test_full_file(void **state)
{
	struct fx *f = *state;
	int r = load(f, full);
	if (r != 0)
		fail_msg("load failed: %d %s", r, f->e.msg);
	const struct dmb_config *c = &f->cfg;
	assert_string_equal(c->socket_path, "/run/test/broker.sock");
	assert_int_equal(c->socket_mode, 0600);
	assert_string_equal(c->backend, "sim");
	assert_int_equal(c->log_level, LOG_DEBUG);
	assert_true(c->sim_populate);
	assert_int_equal(c->limits.contexts_per_owner, 3);
	assert_int_equal(c->limits.regions_per_context, 17);
	assert_int_equal(c->limits.mappings_per_context, 0x100000);
	assert_int_equal(c->limits.devices_per_context, 5);
	assert_int_equal(c->max_sessions, 99);
	assert_int_equal(c->session_queue_bytes, 65536);
	assert_int_equal(c->n_allow, 3);
	assert_string_equal(c->allow[0], "0000:01:00.0");
	assert_string_equal(c->allow[1], "1234:11e8");
	assert_string_equal(c->allow[2], "0000:3a:1f.7");
	assert_int_equal(c->n_admin_uids, 2);
	assert_true(config_is_admin(c, 0));
	assert_true(config_is_admin(c, 1000));
	assert_false(config_is_admin(c, 1001));

	/* Every log level name, any case. */
	static const struct { const char *n; int l; } lv[] = {
		{ "error", LOG_ERR }, { "Warning", LOG_WARNING }, { "NOTICE", LOG_NOTICE },
		{ "info", LOG_INFO }, { "debug", LOG_DEBUG },
	};
	for (size_t i = 0; i < sizeof(lv) / sizeof(lv[0]); i++)
		assert_int_equal(config_parse_log_level(lv[i].n), lv[i].l);
	assert_true(config_parse_log_level("verbose") < 0);
	assert_true(config_parse_log_level("") < 0);

	/* Booleans. */
	assert_int_equal(load(f, "[daemon]\nsim_populate = off\n"), 0);
	assert_false(f->cfg.sim_populate);
	assert_int_equal(load(f, "[daemon]\nsim_populate = TRUE\n"), 0);
	assert_true(f->cfg.sim_populate);
}

/* A refused file names file:line, says why, and changes nothing. */
static void assert_refused(struct fx *f, const char *text, int line, const char *why)
{
	struct dmb_config before = f->cfg;
	int r = load(f, text);
	if (r >= 0)
		fail_msg("accepted a file that should be refused at line %d:\n%s", line, text);
	assert_int_equal(f->e.code, DMB_E_INVALID_ARGUMENT);
	char where[256];
	snprintf(where, sizeof(where), "%s:%d: ", f->path, line);
	if (strncmp(f->e.msg, where, strlen(where)) != 0)
		fail_msg("error \"%s\" does not start with \"%s\"", f->e.msg, where);
	if (!strstr(f->e.msg, why))
		fail_msg("error \"%s\" does not mention \"%s\"", f->e.msg, why);
	assert_memory_equal(&before, &f->cfg, sizeof(before));
}

static void test_errors(void **state)
{
	struct fx *f = *state;
	/* Start from a non-default configuration, so "untouched" means something. */
	assert_int_equal(load(f, full), 0);

	assert_refused(f, "[daemon]\nbackend = sim\n[bogus]\nkey = 1\n", 4, "unknown section [bogus]");
	assert_refused(f, "[daemon]\nlog_level = error\nsockt = /run/x.sock\n", 3, "unknown key 'sockt'");
	assert_refused(f, "[limits]\nfoo = 1\n", 2, "unknown key 'foo'");
	assert_refused(f, "[devices]\ndeny = 0000:01:00.0\n", 2, "unknown key 'deny'");
	assert_refused(f, "[admin]\ngids = 0\n", 2, "unknown key 'gids'");
	assert_refused(f, "[limits]\nsessions = 7\ncontexts_per_client = 12abc\n", 3, "contexts_per_client");
	assert_refused(f, "[limits]\nregions_per_context = -1\n", 2, "regions_per_context");
	assert_refused(f, "[limits]\nregions_per_context =\n", 2, "regions_per_context");
	assert_refused(f, "[limits]\ndevices_per_context = 1025\n", 2, "devices_per_context");
	assert_refused(f, "[limits]\nmappings_per_context = 99999999999999999999999\n", 2,
		       "mappings_per_context");
	assert_refused(f, "[daemon]\nsocket_mode = 01777\n", 2, "socket_mode");
	assert_refused(f, "[daemon]\n\n\nbackend = kvm\n", 4, "backend must be");
	assert_refused(f, "[daemon]\nbackend = SIM\n", 2, "backend must be");
	assert_refused(f, "[daemon]\nlog_level = loud\n", 2, "log_level");
	assert_refused(f, "[daemon]\nsim_populate = maybe\n", 2, "sim_populate");
	assert_refused(f, "[devices]\nallow = 0000:01:00.0 01:00.0\n", 2, "'01:00.0'");
	assert_refused(f, "[devices]\nallow = 0000:01:00.8\n", 2, "neither a PCI address");
	assert_refused(f, "[devices]\nallow = 0000:01:20.0\n", 2, "neither a PCI address");
	assert_refused(f, "[devices]\nallow = 0000:0A:00.0\n", 2, "neither a PCI address");
	assert_refused(f, "[devices]\nallow = 1234:11E8\n", 2, "neither a PCI address");
	assert_refused(f, "[devices]\nallow = 1234:11e\n", 2, "neither a PCI address");
	assert_refused(f, "[devices]\nallow = 1234-11e8\n", 2, "neither a PCI address");
	assert_refused(f, "[admin]\nuids = 0 root\n", 2, "'root' is not a uid");
	assert_refused(f, "[daemon]\nsocket = run/dmabroker.sock\n", 2, "absolute path");
	char longpath[200];
	memset(longpath, 'a', sizeof(longpath));
	longpath[0] = '/';
	snprintf(longpath + 150, sizeof(longpath) - 150, "\n");
	char text[300];
	snprintf(text, sizeof(text), "[daemon]\nsocket = %s", longpath);
	assert_refused(f, text, 2, "absolute path");
	/* A line that is not key = value, and a key before any section. */
	assert_refused(f, "[daemon]\nbackend = sim\nthis is not ini\n", 3, "syntax error");
	assert_refused(f, "backend = sim\n", 1, "unknown section []");

	/* A file that does not exist. */
	struct dmb_config before = f->cfg;
	dmb_err_clear(&f->e);
	assert_true(config_load(&f->cfg, "/nonexistent/dmabroker.conf", &f->e) < 0);
	assert_non_null(strstr(f->e.msg, "/nonexistent/dmabroker.conf"));
	assert_memory_equal(&before, &f->cfg, sizeof(before));

	/* After all that, a good file still loads. */
	assert_int_equal(load(f, "[daemon]\nbackend = iommufd\n"), 0);
	assert_string_equal(f->cfg.backend, "iommufd");
	assert_string_equal(f->cfg.socket_path, "/run/test/broker.sock");
}

/* Two errors in one file: the first is reported, with its own reason, not
 * the reason of a later line (inih goes on parsing after an error and
 * returns the first error's line). */
static void test_first_error_reported(void **state)
{
	struct fx *f = *state;
	assert_int_equal(load(f, full), 0);
	assert_refused(f, "[daemon]\nbackend = kvm\n[limits]\nfoo = 1\n", 2, "backend must be");
	assert_refused(f, "[daemon]\nthis is not ini\n[limits]\nfoo = 1\n", 2, "syntax error");
	assert_refused(f, "[daemon]\nlog_level = loud\nbackend = kvm\n", 2, "log_level");
}

static void test_device_allowed(void **state)
{
	struct fx *f = *state;
	assert_int_equal(load(f, "[devices]\nallow = 0000:01:00.0 0000:3a:1f.7\n"), 0);
	assert_true(allowed(&f->cfg, "0000:01:00.0"));
	assert_true(allowed(&f->cfg, "0000:3a:1f.7"));
	assert_false(allowed(&f->cfg, "0000:01:00.1"));
	assert_false(allowed(&f->cfg, "0001:01:00.0"));
	assert_false(allowed(&f->cfg, "0000:3a:1f.6"));
	assert_false(allowed(&f->cfg, "0000:01:00.0 "));
	assert_false(allowed(&f->cfg, ""));

	/* A vendor:device entry does not match a BDF that is not there (the ids
	 * come from sysfs), nor a BDF that happens to spell the same digits. */
	struct dmb_config c;
	config_defaults(&c);
	f->cfg = c;
	assert_int_equal(load(f, "[devices]\nallow = 1234:11e8\n"), 0);
	assert_int_equal(f->cfg.n_allow, 1);
	char bdf[] = "ffff:ff:1f.7";
	char path[128];
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", bdf);
	struct stat st;
	assert_true(stat(path, &st) < 0); /* the premise */
	assert_false(allowed(&f->cfg, bdf));
	assert_false(allowed(&f->cfg, "1234:11e8"));
	/* A later BDF entry still matches after a vendor:device miss. */
	assert_int_equal(load(f, "[devices]\nallow = 0000:05:00.0\n"), 0);
	assert_int_equal(f->cfg.n_allow, 2);
	assert_true(allowed(&f->cfg, "0000:05:00.0"));
	assert_false(allowed(&f->cfg, bdf));
}

static void test_admin(void **state)
{
	struct fx *f = *state;
	assert_true(config_is_admin(&f->cfg, 0));
	/* The list replaces the default: root is admin only when listed. */
	assert_int_equal(load(f, "[admin]\nuids = 1000, 2000\n"), 0);
	assert_int_equal(f->cfg.n_admin_uids, 2);
	assert_true(config_is_admin(&f->cfg, 1000));
	assert_true(config_is_admin(&f->cfg, 2000));
	assert_false(config_is_admin(&f->cfg, 0));
	assert_false(config_is_admin(&f->cfg, 1500));
	assert_false(config_is_admin(&f->cfg, (uid_t)-1));
	/* An empty list: nobody. */
	assert_int_equal(load(f, "[admin]\nuids =\n"), 0);
	assert_int_equal(f->cfg.n_admin_uids, 0);
	assert_false(config_is_admin(&f->cfg, 0));
	assert_false(config_is_admin(&f->cfg, 1000));
	/* (uid_t)-1 is never a uid. */
	assert_refused(f, "[admin]\nuids = 4294967295\n", 2, "not a uid");
}

/* noiommu: off unless a policy section says yes; the most specific wins;
 * the sim's no-IOMMU devices. */
static void test_noiommu(void **state)
{
	struct fx *f = *state;
	struct dmb_client_policy p;
	config_resolve(&f->cfg, 1000, 1000, &p);
	assert_false(p.noiommu);
	assert_false(config_grants_noiommu(&f->cfg));
	assert_int_equal(load(f, "[gid 500]\nnoiommu = yes\n[uid 1001]\nnoiommu = no\n"
				 "[sim]\nnoiommu_devices = 0000:05:00.0, 0000:06:00.0\n"),
			 0);
	assert_true(config_grants_noiommu(&f->cfg));
	config_resolve(&f->cfg, 1000, 500, &p);
	assert_true(p.noiommu);
	config_resolve(&f->cfg, 1001, 500, &p); /* [uid N] wins over [gid N] */
	assert_false(p.noiommu);
	config_resolve(&f->cfg, 1000, 1000, &p);
	assert_false(p.noiommu);
	assert_int_equal(f->cfg.n_sim_noiommu, 2);
	assert_string_equal(f->cfg.sim_noiommu[1], "0000:06:00.0");
	config_defaults(&f->cfg); /* a load adds its sections to what is there */
	assert_int_equal(load(f, "[default]\nnoiommu = no\n"), 0);
	assert_false(config_grants_noiommu(&f->cfg));
	assert_refused(f, "[default]\nnoiommu = maybe\n", 2, "noiommu must be yes or no");
	assert_refused(f, "[sim]\nnoiommu_devices = 5:0.0\n", 2, "not a PCI address");
}

static void test_metrics(void **state)
{
	struct fx *f = *state;
	assert_string_equal(f->cfg.metrics_textfile, "");
	assert_int_equal(f->cfg.metrics_interval_s, 15);
	assert_int_equal(load(f, "[metrics]\ntextfile = /var/lib/prom/dmabroker.prom\ninterval_s = 60\n"), 0);
	assert_string_equal(f->cfg.metrics_textfile, "/var/lib/prom/dmabroker.prom");
	assert_int_equal(f->cfg.metrics_interval_s, 60);
	/* Empty: off again. */
	assert_int_equal(load(f, "[metrics]\ntextfile =\n"), 0);
	assert_string_equal(f->cfg.metrics_textfile, "");
	assert_refused(f, "[metrics]\ntextfile = dmabroker.prom\n", 2, "absolute file path");
	assert_refused(f, "[metrics]\ntextfile = /var/lib/prom/\n", 2, "absolute file path");
	assert_refused(f, "[metrics]\ninterval_s = 0\n", 2, "interval_s must be from 1 to 3600");
	assert_refused(f, "[metrics]\ninterval_s = 3601\n", 2, "interval_s must be from 1 to 3600");
	assert_refused(f, "[metrics]\nport = 9100\n", 2, "unknown key 'port' in [metrics]");
}

/* The value of KEY= in the shipped unit. */
static uint64_t unit_value(const char *key)
{
	FILE *f = fopen(UT_SOURCE_ROOT "/systemd/dmabroker.service.in", "r");
	assert_non_null(f);
	char line[256];
	uint64_t v = 0;
	size_t n = strlen(key);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == '=')
			v = strtoull(line + n + 1, NULL, 10);
	fclose(f);
	return v;
}

/* Shipped defaults cannot exceed the shipped unit's limits: the constants
 * the daemon and policy check use are the unit's, and one uid's default
 * fds grant is a small part of the budget they leave. */
static void test_defaults_fit_the_unit(void **state)
{
	struct fx *f = *state;
	assert_int_equal(unit_value("LimitNOFILE"), DMB_UNIT_NOFILE);
	assert_int_equal(unit_value("FileDescriptorStoreMax"), DMB_UNIT_FDSTORE_MAX);
	assert_int_equal(f->cfg.fd_store_max, DMB_UNIT_FDSTORE_MAX);
	assert_true(f->cfg.limits.fds > 0);
	assert_true(f->cfg.limits.fds * 8 <= DMB_UNIT_NOFILE - DMB_FD_RESERVE);
	assert_true(f->cfg.limits.fds * 8 <= DMB_UNIT_FDSTORE_MAX - DMB_FDSTORE_RESERVE);
	/* and the keys parse, per uid too */
	assert_int_equal(load(f, "[limits]\nfds = 100\n[uid 5]\nfds = 7\n[persist]\nfd_store_max = 512\n"), 0);
	struct dmb_client_policy p;
	config_resolve(&f->cfg, 5, 5, &p);
	assert_int_equal(p.limits.fds, 7);
	config_resolve(&f->cfg, 6, 6, &p);
	assert_int_equal(p.limits.fds, 100);
	assert_int_equal(f->cfg.fd_store_max, 512);
	assert_refused(f, "[persist]\nfd_store_max = 0\n", 2, "fd_store_max must be");
}

/* [p2p] type1 and [sim] p2p_attrs, and the policy in force with and without
 * host memory encryption. */
static void test_p2p_type1(void **state)
{
	struct fx *f = *state;
	assert_int_equal(f->cfg.p2p_type1, DMB_P2P_CACHEABLE_UNSET);
	assert_int_equal(p2p_cacheable_effective(&f->cfg, false), DMB_P2P_CACHEABLE_WARN);
	assert_int_equal(p2p_cacheable_effective(&f->cfg, true), DMB_P2P_CACHEABLE_REFUSE);
	static const struct {
		const char *v;
		enum dmb_p2p_cacheable want;
	} ok[] = {
		{ "allow", DMB_P2P_CACHEABLE_ALLOW },
		{ "warn", DMB_P2P_CACHEABLE_WARN },
		{ "refuse", DMB_P2P_CACHEABLE_REFUSE },
	};
	for (size_t i = 0; i < 3; i++) {
		char text[64];
		snprintf(text, sizeof(text), "[p2p]\ntype1 = %s\n", ok[i].v);
		assert_int_equal(load(f, text), 0);
		assert_int_equal(f->cfg.p2p_type1, ok[i].want);
		/* set: the host does not change it */
		assert_int_equal(p2p_cacheable_effective(&f->cfg, true), ok[i].want);
		assert_int_equal(p2p_cacheable_effective(&f->cfg, false), ok[i].want);
		assert_string_equal(p2p_cacheable_name(ok[i].want), ok[i].v);
	}
	assert_refused(f, "[p2p]\ntype1 = yes\n", 2, "type1 must be allow, warn or refuse");
	assert_refused(f, "[p2p]\ntype1 =\n", 2, "type1 must be allow, warn or refuse");
	assert_refused(f, "[p2p]\ntype1 = Refuse\n", 2, "type1 must be allow, warn or refuse");
	assert_int_equal(f->cfg.p2p_type1, DMB_P2P_CACHEABLE_REFUSE); /* untouched */

	assert_int_equal(f->cfg.sim_p2p_attr, 0);
	assert_int_equal(load(f, "[sim]\np2p_attrs = cacheable\n"), 0);
	assert_int_equal(f->cfg.sim_p2p_attr, 1);
	assert_int_equal(load(f, "[sim]\np2p_attrs = mmio\ndevices = 0000:05:00.0\n"), 0);
	assert_int_equal(f->cfg.sim_p2p_attr, 0);
	assert_int_equal(f->cfg.n_sim_devices, 1);
	assert_refused(f, "[sim]\np2p_attrs = uncached\n", 2, "p2p_attrs must be mmio");
}

/* hostmem_encrypted reads the first CPU's flags line and nothing else. */
static void test_hostmem(void **state)
{
	struct fx *f = *state;
	char what[256];
	static const struct {
		const char *text;
		int want;
		const char *says;
	} cases[] = {
		{ "processor\t: 0\nflags\t\t: fpu sme sev\n", 1, "is active" },
		{ "processor\t: 0\nflags\t\t: fpu sev smep\n", 0, "is not active" },
		{ "flags\t\t: fpu sme_coherent\n", 0, "is not active" },
		{ "flags\t\t: sme\n", 1, "is active" },
		/* only the first flags line counts */
		{ "flags\t\t: fpu\nflags\t\t: sme\n", 0, "is not active" },
		{ "processor\t: 0\nFeatures\t: fp asimd\n", -ENOENT, "unknown" },
		{ "", -ENOENT, "unknown" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_file(f, cases[i].text);
		assert_int_equal(hostmem_encrypted(f->path, what, sizeof(what)), cases[i].want);
		assert_non_null(strstr(what, cases[i].says));
		assert_non_null(strstr(what, f->path));
	}
	assert_int_equal(hostmem_encrypted("/nonexistent/cpuinfo", what, sizeof(what)), -ENOENT);
	assert_non_null(strstr(what, "cannot read /nonexistent/cpuinfo"));
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_defaults),
		T(test_full_file),
		T(test_errors),
		T(test_first_error_reported),
		T(test_device_allowed),
		T(test_admin),
		T(test_noiommu),
		T(test_metrics),
		T(test_defaults_fit_the_unit),
		T(test_p2p_type1),
		T(test_hostmem),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
