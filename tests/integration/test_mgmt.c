/* Management surfaces against the real daemon: the D-Bus object on a private
 * bus, the admin socket requests (ListClients, RevokeContext, ReloadPolicy),
 * the Prometheus textfile, and STATUS=/WATCHDOG=1 through the fd-store
 * emulator's notify socket.
 *
 * The test starts its own dbus-daemon ($DBUS_DAEMON, set by meson) with a
 * generated configuration that lets any uid connect, and the broker with
 * --bus=user and DBUS_SESSION_BUS_ADDRESS pointing at it. Every property and
 * method is called through sd-bus; values are checked against what the test
 * itself did, and every mapping involved is proven by the sim DMA engine.
 *
 * Authorization: as root (CI), forked children drop to uid 65534 and call
 * the admin methods (refused), and to the 'daemon' user, which the policy
 * makes admin (allowed). Not as root, the test's own uid is the non-admin,
 * and the policy's [admin] uids is switched with SIGHUP to cover the
 * allowed side. */
#include "harness.h"
#include "fdstore.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

#define BUS_NAME "org.dmabroker.Broker1"
#define BUS_PATH "/org/dmabroker/Broker1"
#define BUS_IFACE "org.dmabroker.Broker1"
#define MiB (1024ull * 1024ull)
#define BDF_A "0000:01:00.0"
#define BDF_B "0000:02:00.0"
#define BDF_C "0000:03:00.0"
#define NOBODY 65534
/* The admin side: a uid with a passwd entry (dbus-daemon refuses
 * connections from uids it cannot look up), "daemon" on Debian. */
static uid_t g_admin_uid;
#define ADMIN_UID g_admin_uid

static char g_dir[64];          /* bus socket, its config, the metrics directory */
static char g_metrics[128];
static pid_t g_dbus_pid;
static char g_conf_text[2048];  /* the broker's configuration as the test wrote it */

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ the bus */

static void start_dbus(void)
{
	const char *bin = getenv("DBUS_DAEMON");
	if (!bin || !bin[0])
		fail_msg("DBUS_DAEMON is not set: dbus-daemon is needed (scripts/install-deps.sh "
			 "installs the dbus package)");
	snprintf(g_dir, sizeof(g_dir), "/tmp/dmb-mgmt-XXXXXX");
	assert_non_null(mkdtemp(g_dir));
	assert_int_equal(chmod(g_dir, 0755), 0); /* uid 65534 reaches the bus socket */
	char conf[128], mdir[96];
	snprintf(conf, sizeof(conf), "%s/bus.conf", g_dir);
	snprintf(mdir, sizeof(mdir), "%s/metrics", g_dir);
	assert_int_equal(mkdir(mdir, 0755), 0);
	snprintf(g_metrics, sizeof(g_metrics), "%s/dmabroker.prom", mdir);
	FILE *f = fopen(conf, "w");
	assert_non_null(f);
	fprintf(f,
		"<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
		" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
		"<busconfig>\n"
		"  <type>session</type>\n"
		"  <listen>unix:path=%s/bus</listen>\n"
		"  <auth>EXTERNAL</auth>\n"
		"  <policy context=\"default\">\n"
		"    <allow user=\"*\"/>\n"
		"    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
		"    <allow eavesdrop=\"true\"/>\n"
		"    <allow own=\"*\"/>\n"
		"  </policy>\n"
		"</busconfig>\n",
		g_dir);
	fclose(f);

	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	g_dbus_pid = fork();
	assert_true(g_dbus_pid >= 0);
	if (g_dbus_pid == 0) {
		char cf[160], pa[32];
		snprintf(cf, sizeof(cf), "--config-file=%s", conf);
		snprintf(pa, sizeof(pa), "--print-address=%d", p[1]);
		fcntl(p[1], F_SETFD, 0);
		execl(bin, bin, cf, pa, "--nofork", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	char addr[512] = "";
	size_t n = 0;
	struct pollfd pfd = { p[0], POLLIN, 0 };
	while (n < sizeof(addr) - 1 && !strchr(addr, '\n')) {
		if (poll(&pfd, 1, 10000) <= 0)
			fail_msg("dbus-daemon printed no address within 10 s");
		ssize_t r = read(p[0], addr + n, sizeof(addr) - 1 - n);
		if (r <= 0)
			fail_msg("dbus-daemon exited without printing its address");
		n += (size_t)r;
		addr[n] = '\0';
	}
	close(p[0]);
	*strchr(addr, '\n') = '\0';
	setenv("DBUS_SESSION_BUS_ADDRESS", addr, 1);
}

static void stop_dbus(void)
{
	if (g_dbus_pid > 0) {
		kill(g_dbus_pid, SIGTERM);
		waitpid(g_dbus_pid, NULL, 0);
		g_dbus_pid = 0;
	}
	char p[160];
	snprintf(p, sizeof(p), "%s/bus.conf", g_dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/bus", g_dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/metrics", g_dir);
	rmdir(p);
	rmdir(g_dir);
}

static sd_bus *bus_open(void)
{
	sd_bus *b = NULL;
	int r = sd_bus_open_user(&b);
	if (r < 0)
		fail_msg("cannot connect to the test's bus: %s", strerror(-r));
	return b;
}

/* The broker owns its name a moment after its socket accepts. */
static void wait_for_name(sd_bus *b)
{
	for (int i = 0; i < 1000; i++) {
		sd_bus_error e = SD_BUS_ERROR_NULL;
		sd_bus_message *m = NULL;
		int r = sd_bus_call_method(b, "org.freedesktop.DBus", "/org/freedesktop/DBus",
					   "org.freedesktop.DBus", "NameHasOwner", &e, &m, "s", BUS_NAME);
		int has = 0;
		if (r >= 0)
			(void)sd_bus_message_read(m, "b", &has);
		sd_bus_message_unref(m);
		sd_bus_error_free(&e);
		if (has)
			return;
		sleep_ms(10);
	}
	fail_msg("the broker did not take %s on the bus within 10 s", BUS_NAME);
}

static uint64_t prop_t(sd_bus *b, const char *name)
{
	sd_bus_error e = SD_BUS_ERROR_NULL;
	uint64_t v = 0;
	int r = sd_bus_get_property_trivial(b, BUS_NAME, BUS_PATH, BUS_IFACE, name, &e, 't', &v);
	if (r < 0)
		fail_msg("Get %s: %s", name, e.message ? e.message : strerror(-r));
	return v;
}

static uint32_t prop_u(sd_bus *b, const char *name)
{
	sd_bus_error e = SD_BUS_ERROR_NULL;
	uint32_t v = 0;
	int r = sd_bus_get_property_trivial(b, BUS_NAME, BUS_PATH, BUS_IFACE, name, &e, 'u', &v);
	if (r < 0)
		fail_msg("Get %s: %s", name, e.message ? e.message : strerror(-r));
	return v;
}

static char *prop_s(sd_bus *b, const char *name)
{
	sd_bus_error e = SD_BUS_ERROR_NULL;
	char *v = NULL;
	int r = sd_bus_get_property_string(b, BUS_NAME, BUS_PATH, BUS_IFACE, name, &e, &v);
	if (r < 0)
		fail_msg("Get %s: %s", name, e.message ? e.message : strerror(-r));
	return v;
}

/* Calls an argument-less method; the reply, or NULL with *e set. */
static sd_bus_message *call0(sd_bus *b, const char *method, sd_bus_error *e)
{
	sd_bus_message *m = NULL;
	int r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, method, e, &m, "");
	return r < 0 ? NULL : m;
}

/* Processes the bus until *flag is set (bounded: 10 s). */
static void pump_until(sd_bus *b, const bool *flag, const char *what)
{
	for (int i = 0; i < 1000 && !*flag; i++) {
		int r = sd_bus_process(b, NULL);
		assert_true(r >= 0);
		if (r == 0)
			(void)sd_bus_wait(b, 10000);
	}
	if (!*flag)
		fail_msg("no %s within 10 s", what);
}

/* ------------------------------------------------------------ fixture */

struct vm {
	struct dmb_client *c;
	uint64_t ctx;
	int memfd;
	uint64_t region;
};

static void vm_map(struct vm *v, const char *name, uint64_t len, unsigned seed)
{
	v->c = client_connect(&g_daemon, name);
	assert_ok(v->c, dmb_context_create(v->c, name, &v->ctx));
	v->memfd = make_memfd(len, seed);
	struct dmb_region_info ri;
	assert_ok(v->c, dmb_region_register(v->c, v->ctx, v->memfd, 0, &ri));
	v->region = ri.region;
	struct dmb_map_entry me = { .region = v->region, .offset = 0, .iova = 0x100000000ull,
				    .length = len, .prot = DMB_READ | DMB_WRITE };
	assert_ok(v->c, dmb_map(v->c, v->ctx, &me));
	check_dma(v->c, v->ctx, v->memfd, 0, 0x100000000ull, 4096, seed);
	check_dma(v->c, v->ctx, v->memfd, len - 4096, 0x100000000ull + len - 4096, 4096, seed + 1);
}

static void vm_close(struct vm *v)
{
	dmb_close(v->c);
	close(v->memfd);
}

/* ------------------------------------------------------------ properties */

struct changed {
	bool mappings;
	bool pinned;
};

static void note(struct changed *ch, const char *name)
{
	if (!strcmp(name, "Mappings"))
		ch->mappings = true;
	if (!strcmp(name, "PinnedBytes"))
		ch->pinned = true;
}

/* PropertiesChanged(s interface, a{sv} changed, as invalidated): the broker
 * sends the counts with their values (EMITS_CHANGE). */
static int on_props_changed(sd_bus_message *m, void *userdata, sd_bus_error *e)
{
	struct changed *ch = userdata;
	const char *iface, *name;
	if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, BUS_IFACE))
		return 0;
	if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
		return 0;
	while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
		if (sd_bus_message_read(m, "s", &name) < 0 || sd_bus_message_skip(m, "v") < 0)
			return 0;
		note(ch, name);
		if (sd_bus_message_exit_container(m) < 0)
			return 0;
	}
	if (sd_bus_message_exit_container(m) < 0 || sd_bus_message_enter_container(m, 'a', "s") < 0)
		return 0;
	while (sd_bus_message_read(m, "s", &name) > 0)
		note(ch, name);
	return 0;
}

static void test_properties_follow_mappings(void **state)
{
	sd_bus *b = bus_open();
	wait_for_name(b);

	struct dmb_client *probe = client_connect(&g_daemon, "probe");
	char *s = prop_s(b, "Version");
	assert_string_equal(s, dmb_server_info(probe)->server_version);
	free(s);
	s = prop_s(b, "Backend");
	assert_string_equal(s, "sim");
	free(s);
	s = prop_s(b, "HandoffState");
	assert_string_equal(s, "normal");
	free(s);
	sd_bus_error e = SD_BUS_ERROR_NULL;
	char **feat = NULL;
	assert_true(sd_bus_get_property_strv(b, BUS_NAME, BUS_PATH, BUS_IFACE, "Features", &e, &feat) >= 0);
	bool dma = false;
	for (char **f = feat; f && *f; f++) {
		dma |= !strcmp(*f, "dma-engine");
		free(*f);
	}
	free(feat);
	assert_true(dma);

	uint32_t clients0 = prop_u(b, "Clients"), contexts0 = prop_u(b, "Contexts");
	uint64_t mappings0 = prop_t(b, "Mappings"), pinned0 = prop_t(b, "PinnedBytes");
	uint32_t devices0 = prop_u(b, "Devices");

	struct changed ch = { 0 };
	sd_bus_slot *slot = NULL;
	assert_true(sd_bus_match_signal(b, &slot, NULL, BUS_PATH, "org.freedesktop.DBus.Properties",
					"PropertiesChanged", on_props_changed, &ch) >= 0);

	struct vm v;
	vm_map(&v, "props", 2 * MiB, 11);
	assert_int_equal(prop_u(b, "Clients"), clients0 + 1);
	assert_int_equal(prop_u(b, "Contexts"), contexts0 + 1);
	assert_int_equal(prop_t(b, "Mappings"), mappings0 + 1);
	assert_int_equal(prop_t(b, "PinnedBytes"), pinned0 + 2 * MiB);
	assert_int_equal(prop_u(b, "Devices"), devices0);
	pump_until(b, &ch.mappings, "PropertiesChanged for Mappings");
	assert_true(ch.pinned);

	/* A second mapping moves the count again, and bytes move through it. */
	struct dmb_map_entry me = { .region = v.region, .offset = 0, .iova = 0x200000000ull,
				    .length = MiB, .prot = DMB_READ | DMB_WRITE };
	assert_ok(v.c, dmb_map(v.c, v.ctx, &me));
	check_dma(v.c, v.ctx, v.memfd, 0, 0x200000000ull, 4096, 12);
	assert_int_equal(prop_t(b, "Mappings"), mappings0 + 2);

	vm_close(&v);
	dmb_close(probe);
	assert_true(daemon_wait_idle(&g_daemon));
	assert_int_equal(prop_t(b, "Mappings"), mappings0);
	assert_int_equal(prop_t(b, "PinnedBytes"), pinned0);
	sd_bus_slot_unref(slot);
	sd_bus_flush_close_unref(b);
}

/* ------------------------------------------------------------ methods */

static void test_list_clients_and_contexts(void **state)
{
	sd_bus *b = bus_open();
	wait_for_name(b);
	struct vm v;
	vm_map(&v, "lister", 4 * MiB, 21);
	uint64_t session = dmb_server_info(v.c)->session_id;

	sd_bus_error e = SD_BUS_ERROR_NULL;
	sd_bus_message *m = call0(b, "ListClients", &e);
	if (!m)
		fail_msg("ListClients: %s", e.message);
	assert_true(sd_bus_message_enter_container(m, 'a', "(tuuusbuttutt)") >= 0);
	uint64_t sid, maps, pinned, reqs, conn;
	uint32_t uid, gid, pid, ctxs, devs;
	const char *name;
	int admin, found = 0, r;
	while ((r = sd_bus_message_read(m, "(tuuusbuttutt)", &sid, &uid, &gid, &pid, &name, &admin,
					&ctxs, &maps, &pinned, &devs, &reqs, &conn)) > 0) {
		if (sid != session)
			continue;
		found++;
		assert_int_equal(uid, getuid());
		assert_int_equal(gid, getgid());
		assert_int_equal(pid, getpid());
		assert_string_equal(name, "lister");
		assert_int_equal(ctxs, 1);
		assert_int_equal(maps, 1);
		assert_int_equal(pinned, 4 * MiB);
		assert_int_equal(devs, 0);
		assert_true(reqs >= 4); /* hello, create, register, map, DMAs */
	}
	assert_true(r >= 0);
	assert_int_equal(found, 1);
	sd_bus_message_unref(m);

	m = call0(b, "ListContexts", &e);
	if (!m)
		fail_msg("ListContexts: %s", e.message);
	assert_true(sd_bus_message_enter_container(m, 'a', "(tsuutbuttub)") >= 0);
	uint64_t id, owner_session, mapped;
	uint32_t owner_uid, owner_pid, regions;
	int persistent, noiommu;
	found = 0;
	while ((r = sd_bus_message_read(m, "(tsuutbuttub)", &id, &name, &owner_uid, &owner_pid,
					&owner_session, &persistent, &regions, &maps, &mapped, &devs,
					&noiommu)) > 0) {
		if (id != v.ctx)
			continue;
		found++;
		assert_false(noiommu);
		assert_string_equal(name, "lister");
		assert_int_equal(owner_uid, getuid());
		assert_int_equal(owner_pid, getpid());
		assert_int_equal(owner_session, session);
		assert_false(persistent);
		assert_int_equal(regions, 1);
		assert_int_equal(maps, 1);
		assert_int_equal(mapped, 4 * MiB);
	}
	assert_true(r >= 0);
	assert_int_equal(found, 1);
	sd_bus_message_unref(m);

	/* A no-IOMMU context is marked as one: a property counts them, and
	 * ListContexts says which. */
	assert_int_equal(prop_u(b, "NoIommuContexts"), 0);
	uint64_t bare;
	assert_ok(v.c, dmb_context_create_flags(v.c, "bare", DMB_CONTEXT_NOIOMMU, &bare, NULL));
	assert_int_equal(prop_u(b, "NoIommuContexts"), 1);
	m = call0(b, "ListContexts", &e);
	if (!m)
		fail_msg("ListContexts: %s", e.message);
	assert_true(sd_bus_message_enter_container(m, 'a', "(tsuutbuttub)") >= 0);
	found = 0;
	while ((r = sd_bus_message_read(m, "(tsuutbuttub)", &id, &name, &owner_uid, &owner_pid,
					&owner_session, &persistent, &regions, &maps, &mapped, &devs,
					&noiommu)) > 0) {
		if (id == bare) {
			found++;
			assert_true(noiommu);
		} else if (id == v.ctx) {
			assert_false(noiommu);
		}
	}
	assert_true(r >= 0);
	assert_int_equal(found, 1);
	sd_bus_message_unref(m);
	assert_ok(v.c, dmb_context_destroy(v.c, bare));
	assert_int_equal(prop_u(b, "NoIommuContexts"), 0);

	/* The same through the socket's admin request. */
	struct dmb_client_info *ci = NULL;
	size_t n = 0;
	struct dmb_client *adm = client_connect(&g_daemon, "admin");
	assert_ok(adm, dmb_list_clients(adm, &ci, &n));
	found = 0;
	for (size_t i = 0; i < n; i++)
		if (ci[i].session == session) {
			found++;
			assert_string_equal(ci[i].name, "lister");
			assert_int_equal(ci[i].mappings, 1);
			assert_int_equal(ci[i].pinned_bytes, 4 * MiB);
			assert_int_equal(ci[i].pid, getpid());
		}
	assert_int_equal(found, 1);
	free(ci);
	dmb_close(adm);
	vm_close(&v);
	assert_true(daemon_wait_idle(&g_daemon));
	sd_bus_flush_close_unref(b);
}

struct revoked_sig {
	bool got;
	uint64_t ctx, dev, count;
};

static int on_mappings_revoked(sd_bus_message *m, void *userdata, sd_bus_error *e)
{
	struct revoked_sig *s = userdata;
	if (sd_bus_message_read(m, "ttt", &s->ctx, &s->dev, &s->count) > 0)
		s->got = true;
	return 0;
}

/* ListDevices shows BAR state and importers; a revocation is signalled and
 * counted, and A's DMA into B's BAR stops and comes back. */
static void test_list_devices_and_revocation_signal(void **state)
{
	sd_bus *b = bus_open();
	wait_for_name(b);
	struct dmb_client *c = client_connect(&g_daemon, "p2p");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "p2p", &ctx));
	struct dmb_device_info a, bb;
	assert_ok(c, dmb_device_open(c, ctx, BDF_A, NULL, &a));
	assert_ok(c, dmb_device_open(c, ctx, BDF_B, NULL, &bb));
	struct dmb_device_state st;
	assert_ok(c, dmb_device_set_command(c, a.device, DMB_PCI_MEMORY | DMB_PCI_BUS_MASTER, 0, &st));
	assert_ok(c, dmb_device_set_command(c, bb.device, DMB_PCI_MEMORY, 0, &st));
	const uint64_t iova = 0x40000000ull;
	assert_ok(c, dmb_map_peer(c, ctx, bb.device, NULL, 0, 0, iova, 64 * 1024, DMB_READ | DMB_WRITE));
	uint8_t want[256], got[256];
	fill_pattern(want, sizeof(want), 31);
	assert_ok(c, dmb_sim_device_dma_write(c, a.device, iova, want, sizeof(want)));
	assert_ok(c, dmb_sim_device_dma_read(c, a.device, iova, got, sizeof(got)));
	assert_memory_equal(got, want, sizeof(want));
	uint64_t revocations0 = prop_t(b, "Revocations");
	assert_int_equal(prop_u(b, "Devices") >= 2, true);

	sd_bus_error e = SD_BUS_ERROR_NULL;
	sd_bus_message *m = call0(b, "ListDevices", &e);
	if (!m)
		fail_msg("ListDevices: %s", e.message);
	assert_true(sd_bus_message_enter_container(m, 'a', "(tstuqqqbbbtta(tuttutbs))") >= 0);
	int found_b = 0, r;
	while ((r = sd_bus_message_enter_container(m, 'r', "tstuqqqbbbtta(tuttutbs)")) > 0) {
		uint64_t id, dctx, revs, rests;
		const char *bdf;
		uint32_t uid;
		uint16_t ven, dev, cmd;
		int mem, bm, inreset;
		assert_true(sd_bus_message_read(m, "tstuqqqbbbtt", &id, &bdf, &dctx, &uid, &ven, &dev,
						&cmd, &mem, &bm, &inreset, &revs, &rests) > 0);
		assert_true(sd_bus_message_enter_container(m, 'a', "(tuttutbs)") >= 0);
		uint64_t ictx, iiova, ilen, ioff;
		uint32_t iuid, ibar;
		int irev, nimp = 0;
		const char *iattr;
		while (sd_bus_message_read(m, "(tuttutbs)", &ictx, &iuid, &iiova, &ilen, &ibar, &ioff,
					   &irev, &iattr) > 0) {
			nimp++;
			/* the sim models iommufd's dma-buf path */
			assert_string_equal(iattr, "mmio");
			assert_int_equal(ictx, ctx);
			assert_int_equal(iiova, iova);
			assert_int_equal(ilen, 64 * 1024);
			assert_int_equal(ibar, 0);
			assert_false(irev);
		}
		assert_true(sd_bus_message_exit_container(m) >= 0);
		assert_true(sd_bus_message_exit_container(m) >= 0);
		if (id == bb.device) {
			found_b++;
			assert_string_equal(bdf, BDF_B);
			assert_int_equal(dctx, ctx);
			assert_true(mem);
			assert_false(inreset);
			assert_int_equal(nimp, 1);
		} else if (id == a.device) {
			assert_true(bm);
			assert_int_equal(nimp, 0);
		}
	}
	assert_true(r >= 0);
	assert_int_equal(found_b, 1);
	sd_bus_message_unref(m);

	struct revoked_sig sig = { 0 };
	sd_bus_slot *slot = NULL;
	assert_true(sd_bus_match_signal(b, &slot, NULL, BUS_PATH, BUS_IFACE, "MappingsRevoked",
					on_mappings_revoked, &sig) >= 0);
	/* Make sure the match is in place at the bus before the revocation. */
	assert_true(prop_t(b, "Revocations") == revocations0);
	assert_ok(c, dmb_device_set_command(c, bb.device, 0, DMB_PCI_MEMORY, &st));
	pump_until(b, &sig.got, "MappingsRevoked signal");
	assert_int_equal(sig.ctx, ctx);
	assert_int_equal(sig.dev, bb.device);
	assert_int_equal(sig.count, 1);
	assert_int_equal(prop_t(b, "Revocations"), revocations0 + 1);
	assert_true(dmb_sim_device_dma_read(c, a.device, iova, got, sizeof(got)) < 0);
	assert_ok(c, dmb_device_set_command(c, bb.device, DMB_PCI_MEMORY, 0, &st));
	memset(got, 0, sizeof(got));
	assert_ok(c, dmb_sim_device_dma_read(c, a.device, iova, got, sizeof(got)));
	assert_memory_equal(got, want, sizeof(want));

	sd_bus_slot_unref(slot);
	dmb_close(c);
	assert_true(daemon_wait_idle(&g_daemon));
	sd_bus_flush_close_unref(b);
}

struct lost {
	bool got;
	uint64_t ctx;
};

static void on_lost(const struct dmb_event *ev, void *opaque)
{
	struct lost *l = opaque;
	if (ev->kind == DMB_EV_CONTEXT_LOST) {
		l->got = true;
		l->ctx = ev->context;
	}
}

static void wait_lost(struct dmb_client *c, struct lost *l)
{
	for (int i = 0; i < 100 && !l->got; i++) {
		struct pollfd p = { dmb_fd(c), POLLIN, 0 };
		(void)poll(&p, 1, 100);
		assert_true(dmb_dispatch(c, on_lost, l) >= 0);
	}
	if (!l->got)
		fail_msg("no CONTEXT_LOST event within 10 s");
}

static void test_revoke_context(void **state)
{
	sd_bus *b = bus_open();
	wait_for_name(b);
	uint64_t pinned0 = prop_t(b, "PinnedBytes");
	uint32_t devices0 = prop_u(b, "Devices");
	struct vm v;
	vm_map(&v, "victim", 2 * MiB, 41);
	struct dmb_device_info dc;
	assert_ok(v.c, dmb_device_open(v.c, v.ctx, BDF_C, NULL, &dc));
	assert_int_equal(prop_u(b, "Devices"), devices0 + 1);

	sd_bus_error e = SD_BUS_ERROR_NULL;
	sd_bus_message *m = NULL;
	int r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, "RevokeContext", &e, &m, "t", v.ctx);
	if (r < 0)
		fail_msg("RevokeContext: %s", e.message);
	uint64_t unmapped, bytes;
	uint32_t devs;
	assert_true(sd_bus_message_read(m, "ttu", &unmapped, &bytes, &devs) > 0);
	assert_int_equal(unmapped, 1);
	assert_int_equal(bytes, 2 * MiB);
	assert_int_equal(devs, 1);
	sd_bus_message_unref(m);

	struct lost l = { 0 };
	wait_lost(v.c, &l);
	assert_int_equal(l.ctx, v.ctx);
	/* Gone: no DMA through it, the pins and the device are released. */
	uint8_t buf[64];
	assert_code(v.c, dmb_sim_dma_read(v.c, v.ctx, 0x100000000ull, buf, sizeof(buf)), DMB_NOT_FOUND);
	assert_int_equal(prop_t(b, "PinnedBytes"), pinned0);
	assert_int_equal(prop_u(b, "Devices"), devices0);
	/* The device can be opened again in a new context. */
	uint64_t ctx2;
	assert_ok(v.c, dmb_context_create(v.c, "again", &ctx2));
	assert_ok(v.c, dmb_device_open(v.c, ctx2, BDF_C, NULL, &dc));

	/* An unknown context: NotFound, nothing else changes. */
	r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, "RevokeContext", &e, NULL, "t",
			       (uint64_t)987654321);
	assert_true(r < 0);
	assert_string_equal(e.name, BUS_IFACE ".Error.NotFound");
	sd_bus_error_free(&e);

	/* The socket request does the same. */
	struct vm w;
	vm_map(&w, "victim2", MiB, 43);
	struct dmb_client *adm = client_connect(&g_daemon, "admin");
	struct dmb_revoke_info ri;
	assert_ok(adm, dmb_revoke_context(adm, w.ctx, &ri));
	assert_int_equal(ri.context, w.ctx);
	assert_int_equal(ri.unmapped, 1);
	assert_int_equal(ri.unmapped_bytes, MiB);
	assert_int_equal(ri.owner_session, dmb_server_info(w.c)->session_id);
	assert_int_equal(ri.owner_uid, getuid());
	struct lost l2 = { 0 };
	wait_lost(w.c, &l2);
	assert_int_equal(l2.ctx, w.ctx);
	assert_code(w.c, dmb_sim_dma_read(w.c, w.ctx, 0x100000000ull, buf, sizeof(buf)), DMB_NOT_FOUND);
	assert_code(adm, dmb_revoke_context(adm, w.ctx, NULL), DMB_NOT_FOUND);
	dmb_close(adm);
	vm_close(&w);
	vm_close(&v);
	assert_true(daemon_wait_idle(&g_daemon));
	sd_bus_flush_close_unref(b);
}

static void write_conf(const char *text)
{
	char path[200];
	snprintf(path, sizeof(path), "%s/dmabroker.conf", g_daemon.dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_reload_policy(void **state)
{
	sd_bus *b = bus_open();
	wait_for_name(b);
	struct vm v;
	vm_map(&v, "reload", MiB, 51);

	sd_bus_error e = SD_BUS_ERROR_NULL;
	sd_bus_message *m = call0(b, "ReloadPolicy", &e);
	if (!m)
		fail_msg("ReloadPolicy: %s", e.message);
	uint32_t sessions, sections;
	assert_true(sd_bus_message_read(m, "uu", &sessions, &sections) > 0);
	assert_true(sessions >= 1);
	assert_int_equal(sections, 2); /* [uid 0] noiommu and the [uid N] admin section */
	sd_bus_message_unref(m);

	/* A bad file is refused with its file:line; nothing changes. */
	char bad[sizeof(g_conf_text) + 64];
	snprintf(bad, sizeof(bad), "%s[limits]\nno_such_key = 1\n", g_conf_text);
	write_conf(bad);
	m = call0(b, "ReloadPolicy", &e);
	assert_null(m);
	assert_string_equal(e.name, "org.freedesktop.DBus.Error.InvalidArgs");
	assert_non_null(strstr(e.message, "dmabroker.conf:"));
	assert_non_null(strstr(e.message, "no_such_key"));
	sd_bus_error_free(&e);
	struct dmb_client *adm = client_connect(&g_daemon, "admin");
	assert_code(adm, dmb_reload_policy(adm, NULL), DMB_INVALID_ARGUMENT);
	check_dma(v.c, v.ctx, v.memfd, 0, 0x100000000ull, 4096, 52);

	write_conf(g_conf_text);
	struct dmb_reload_info info;
	assert_ok(adm, dmb_reload_policy(adm, &info));
	assert_int_equal(info.policy_sections, 2);
	assert_non_null(strstr(info.path, "dmabroker.conf"));
	check_dma(v.c, v.ctx, v.memfd, MiB - 4096, 0x100000000ull + MiB - 4096, 4096, 53);
	dmb_close(adm);
	vm_close(&v);
	assert_true(daemon_wait_idle(&g_daemon));
	sd_bus_flush_close_unref(b);
}

/* ------------------------------------------------------------ authorization */

/* In a child: drop to uid/gid with the given supplementary groups and
 * call every admin method. Exit 0 when each answer was what `admin` says. */
static int child_calls(bool admin, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups)
{
	if (setgroups(ngroups, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
		return 10;
	sd_bus *b = NULL;
	if (sd_bus_open_user(&b) < 0)
		return 11;
	/* Properties are open to everyone. */
	sd_bus_error e = SD_BUS_ERROR_NULL;
	uint32_t clients;
	if (sd_bus_get_property_trivial(b, BUS_NAME, BUS_PATH, BUS_IFACE, "Clients", &e, 'u', &clients) < 0)
		return 12;
	static const char *const methods[] = { "ListClients", "ListContexts", "ListDevices",
					       "ReloadPolicy", "HandoffStatus" };
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		sd_bus_error_free(&e);
		sd_bus_message *m = NULL;
		int r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, methods[i], &e, &m, "");
		sd_bus_message_unref(m);
		if (admin ? r < 0
			  : r >= 0 || strcmp(e.name, SD_BUS_ERROR_ACCESS_DENIED) ||
				    !strstr(e.message, "needs an administrator")) {
			fprintf(stderr, "child (admin %d): %s answered %s: %s\n", admin, methods[i],
				r >= 0 ? "success" : e.name, r >= 0 ? "" : e.message);
			return 20 + (int)i;
		}
	}
	sd_bus_error_free(&e);
	/* RevokeContext of a context that does not exist: an admin learns
	 * NotFound, anyone else AccessDenied before any lookup. */
	int r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, "RevokeContext", &e, NULL, "t",
				   (uint64_t)123456789);
	const char *want = admin ? BUS_IFACE ".Error.NotFound" : SD_BUS_ERROR_ACCESS_DENIED;
	if (r >= 0 || strcmp(e.name, want)) {
		fprintf(stderr, "child (admin %d): RevokeContext answered %s\n", admin,
			r >= 0 ? "success" : e.name);
		return 30;
	}
	sd_bus_error_free(&e);
	sd_bus_flush_close_unref(b);
	return 0;
}

static void run_child(bool admin, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups)
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(child_calls(admin, uid, gid, groups, ngroups));
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("the uid %u child (admin expected: %d) failed with status 0x%x", (unsigned)uid,
			 admin, st);
}

static void test_unprivileged_caller_refused(void **state)
{
	sd_bus *b = bus_open();
	wait_for_name(b);
	struct vm v;
	vm_map(&v, "bystander", MiB, 61);
	if (geteuid() == 0) {
		run_child(false, NOBODY, NOBODY, NULL, 0);
		/* [uid N] admin = yes for the 'daemon' user. (Group rules need the bus to report
		 * the caller's groups: dbus-broker does, dbus-daemon 1.14 does
		 * not, so they are not exercised here.) */
		run_child(true, ADMIN_UID, NOBODY, NULL, 0);
	} else {
		/* Not root: this uid is the non-admin (the policy's [admin]
		 * uids is 0 only); then the policy makes it admin (SIGHUP). */
		sd_bus_error e = SD_BUS_ERROR_NULL;
		sd_bus_message *m = call0(b, "ListClients", &e);
		assert_null(m);
		assert_string_equal(e.name, SD_BUS_ERROR_ACCESS_DENIED);
		sd_bus_error_free(&e);
		char conf[sizeof(g_conf_text) + 64];
		snprintf(conf, sizeof(conf), "%s[admin]\nuids = 0 %u\n", g_conf_text, (unsigned)getuid());
		write_conf(conf);
		kill(g_daemon.pid, SIGHUP);
		for (int i = 0; i < 1000 && !m; i++) {
			sd_bus_error_free(&e);
			m = call0(b, "ListClients", &e);
			if (!m)
				sleep_ms(10);
		}
		if (!m)
			fail_msg("ListClients still refused after the policy made uid %u admin", getuid());
		sd_bus_message_unref(m);
		write_conf(g_conf_text);
		kill(g_daemon.pid, SIGHUP);
	}
	/* Nothing the refused calls did touched the bystander's mapping. */
	check_dma(v.c, v.ctx, v.memfd, 0, 0x100000000ull, 4096, 62);
	vm_close(&v);
	assert_true(daemon_wait_idle(&g_daemon));
	sd_bus_flush_close_unref(b);
}

/* ------------------------------------------------------------ metrics */

struct prom {
	char text[32768];
};

static bool read_prom(struct prom *p)
{
	int fd = open(g_metrics, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, p->text, sizeof(p->text) - 1);
	close(fd);
	if (n <= 0)
		return false;
	p->text[n] = '\0';
	return true;
}

/* Checks the exposition format the textfile collector parses: every sample
 * follows its HELP and TYPE lines, names are dmabroker_ snake case, counters
 * end in _total, values are non-negative numbers. Returns the samples. */
static void check_format(const struct prom *p)
{
	char typed[64][64];
	char kinds[64][16];
	size_t ntyped = 0;
	char buf[sizeof(p->text)];
	memcpy(buf, p->text, sizeof(buf));
	size_t samples = 0;
	for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char name[64], kind[16];
		if (!strncmp(line, "# HELP ", 7)) {
			assert_int_equal(sscanf(line + 7, "%63s", name), 1);
			assert_true(strlen(line) > 8 + strlen(name)); /* has a text */
			continue;
		}
		if (!strncmp(line, "# TYPE ", 7)) {
			assert_int_equal(sscanf(line + 7, "%63s %15s", name, kind), 2);
			assert_true(!strcmp(kind, "gauge") || !strcmp(kind, "counter"));
			assert_true(ntyped < 64);
			snprintf(typed[ntyped], sizeof(typed[0]), "%s", name);
			snprintf(kinds[ntyped], sizeof(kinds[0]), "%s", kind);
			ntyped++;
			continue;
		}
		assert_true(line[0] != '#');
		size_t len = strcspn(line, "{ ");
		assert_true(len > 0 && len < sizeof(name));
		snprintf(name, sizeof(name), "%.*s", (int)len, line);
		assert_int_equal(strncmp(name, "dmabroker_", 10), 0);
		for (const char *c = name; *c; c++)
			assert_true((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_');
		size_t t;
		for (t = 0; t < ntyped && strcmp(typed[t], name); t++)
			;
		if (t == ntyped)
			fail_msg("sample %s has no TYPE line before it", name);
		bool total = len > 6 && !strcmp(name + len - 6, "_total");
		assert_int_equal(!strcmp(kinds[t], "counter"), total);
		const char *val = strrchr(line, ' ');
		assert_non_null(val);
		char *end;
		double d = strtod(val + 1, &end);
		assert_true(*end == '\0' && d >= 0);
		samples++;
	}
	assert_true(samples >= 15);
}

/* The value of one sample (exact name with labels), or -1 when absent. */
static double prom_value(const struct prom *p, const char *sample)
{
	size_t n = strlen(sample);
	for (const char *l = p->text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, sample, n) && l[n] == ' ')
			return strtod(l + n + 1, NULL);
	return -1;
}

/* Waits (the file is rewritten every second; bounded: 15 s) until sample
 * has the value want. */
static void wait_metric(struct prom *p, const char *sample, double want)
{
	double v = -2;
	for (int i = 0; i < 1500; i++) {
		if (read_prom(p) && (v = prom_value(p, sample)) == want)
			return;
		sleep_ms(10);
	}
	fail_msg("metric %s is %g, expected %g", sample, v, want);
}

static void test_metrics_textfile(void **state)
{
	struct prom *p = calloc(1, sizeof(*p));
	assert_non_null(p);
	struct stat st;
	assert_int_equal(stat(g_metrics, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	/* Every test before ends idle; the file catches up within a second. */
	wait_metric(p, "dmabroker_mappings", 0);
	wait_metric(p, "dmabroker_pinned_bytes", 0);
	check_format(p);
	assert_non_null(strstr(p->text, "\ndmabroker_info{version=\"0."));
	assert_non_null(strstr(p->text, "\",backend=\"sim\"} 1\n"));
	assert_true(prom_value(p, "dmabroker_handoff_state{state=\"normal\"}") == 1);
	assert_true(prom_value(p, "dmabroker_start_time_seconds") > 1e9);
	double maps0 = prom_value(p, "dmabroker_mappings");
	double pinned0 = prom_value(p, "dmabroker_pinned_bytes");
	assert_true(maps0 >= 0 && pinned0 >= 0);

	struct vm v;
	vm_map(&v, "metrics", 8 * MiB, 71);
	wait_metric(p, "dmabroker_mappings", maps0 + 1);
	wait_metric(p, "dmabroker_pinned_bytes", pinned0 + 8 * MiB);
	check_format(p);
	assert_true(prom_value(p, "dmabroker_contexts") >= 1);
	assert_true(prom_value(p, "dmabroker_noiommu_contexts") == 0);
	assert_true(prom_value(p, "dmabroker_clients") >= 1);
	assert_true(prom_value(p, "dmabroker_requests_total{request=\"map\"}") >= 1);
	assert_true(prom_value(p, "dmabroker_requests_total{request=\"sim-dma\"}") >= 4);
	double inval0 = prom_value(p, "dmabroker_request_errors_total{code=\"already-exists\"}");
	assert_true(inval0 >= 0);
	/* An overlapping map fails: the error counter follows. */
	struct dmb_map_entry me = { .region = v.region, .offset = 0, .iova = 0x100000000ull,
				    .length = MiB, .prot = DMB_READ };
	assert_code(v.c, dmb_map(v.c, v.ctx, &me), DMB_ALREADY_EXISTS);
	wait_metric(p, "dmabroker_request_errors_total{code=\"already-exists\"}", inval0 + 1);
	vm_close(&v);
	wait_metric(p, "dmabroker_mappings", maps0);
	free(p);
}

/* ------------------------------------------------------------ STATUS, WATCHDOG */

static void test_status_and_watchdog(void **state)
{
	struct fds h;
	struct fds_opts o = fds_default_opts();
	o.watchdog_usec = 400000; /* pings every 200 ms */
	o.quiet = true;
	assert_int_equal(fds_init(&h, &o), 0);
	const char *const args[] = { "--bus=none", NULL };
	int r = fds_start_dmabrokerd(&h, NULL, args);
	if (r != 0) {
		fds_dump_log(&h);
		fds_destroy(&h);
		fail_msg("dmabrokerd did not become ready: %s", strerror(-r));
	}
	char line[512];
	assert_int_equal(fds_status(&h, line, sizeof(line)), 0);
	assert_string_equal(line, "0 clients, 0 contexts, 0 mappings, 0 B pinned; handoff normal");

	struct dmb_client *c = NULL;
	assert_int_equal(dmb_connect(h.sock, "status", &c), 0);
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "s", &ctx));
	int memfd = make_memfd(MiB, 81);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, memfd, 0, &ri));
	struct dmb_map_entry me = { .region = ri.region, .iova = 0x100000000ull, .length = MiB,
				    .prot = DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &me));
	check_dma(c, ctx, memfd, 0, 0x100000000ull, 4096, 82);
	r = fds_wait_notify(&h, "STATUS=1 client, 1 context, 1 mapping, 1.0 MiB pinned; handoff normal",
			    10000, line, sizeof(line));
	if (r != 0) {
		fds_dump_log(&h);
		fail_msg("no STATUS line for the mapping: %s", strerror(-r));
	}
	/* The watchdog: at least two pings from the running loop. */
	assert_int_equal(fds_wait_notify(&h, "WATCHDOG=1", 10000, NULL, 0), 0);
	assert_int_equal(fds_wait_notify(&h, "WATCHDOG=1", 10000, NULL, 0), 0);
	struct fds_counters cnt;
	fds_counters(&h, &cnt);
	assert_true(cnt.watchdog >= 2);

	/* Revoked under the fd store: the context stays gone across a restart
	 * (the journal records the removal), while a second context of the
	 * same client comes back with its mapping, still moving bytes. */
	uint64_t keep;
	assert_ok(c, dmb_context_create(c, "keep", &keep));
	struct dmb_region_info ri2;
	int memfd2 = make_memfd(MiB, 83);
	assert_ok(c, dmb_region_register(c, keep, memfd2, 0, &ri2));
	me.region = ri2.region;
	assert_ok(c, dmb_map(c, keep, &me));
	struct dmb_client *adm = NULL;
	assert_int_equal(dmb_connect(h.sock, "admin", &adm), 0);
	struct dmb_revoke_info rv;
	assert_ok(adm, dmb_revoke_context(adm, ctx, &rv));
	assert_int_equal(rv.unmapped, 1);
	dmb_close(adm);
	r = fds_restart(&h, SIGTERM);
	if (r != 0) {
		fds_dump_log(&h);
		fail_msg("restart: %s", strerror(-r));
	}
	assert_int_equal(dmb_connect(h.sock, "admin", &adm), 0);
	struct dmb_context_info *ci = NULL;
	size_t n = 0;
	assert_ok(adm, dmb_list_contexts(adm, true, &ci, &n));
	bool have_keep = false;
	for (size_t i = 0; i < n; i++) {
		assert_true(ci[i].context != ctx);
		have_keep |= ci[i].context == keep && ci[i].mappings == 1;
	}
	free(ci);
	dmb_close(adm);
	assert_true(have_keep);
	check_dma(c, keep, memfd2, 0, 0x100000000ull, 4096, 84);

	dmb_close(c);
	close(memfd);
	close(memfd2);
	assert_int_equal(fds_wait_notify(&h, "STATUS=0 clients, 0 contexts, 0 mappings, 0 B pinned; handoff normal",
					 10000, NULL, 0), 0);
	int ws = fds_stop(&h, SIGTERM);
	bool bad = !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0) || fds_log_has(&h, "Sanitizer") ||
		   fds_log_has(&h, "runtime error:");
	if (bad)
		fds_dump_log(&h);
	fds_destroy(&h);
	assert_false(bad);
}

/* ------------------------------------------------------------ host handoff */

static pid_t g_pv_pid;
static char g_pv_sock[128];

static void start_preserver(void)
{
	snprintf(g_pv_sock, sizeof(g_pv_sock), "%s/preserver.sock", g_dir);
	g_pv_pid = sim_preserver_start(g_pv_sock);
}

static void stop_preserver(void)
{
	sim_preserver_stop(g_pv_pid);
	g_pv_pid = 0;
}

static void handoff_state_is(sd_bus *b, const char *want)
{
	char *v = prop_s(b, "HandoffState");
	assert_string_equal(v, want);
	free(v);
	sd_bus_error e = SD_BUS_ERROR_NULL;
	sd_bus_message *m = call0(b, "HandoffStatus", &e);
	if (!m)
		fail_msg("HandoffStatus: %s", e.message);
	const char *state, *preserver, *message;
	int available;
	uint64_t since;
	assert_true(sd_bus_message_read(m, "ssbst", &state, &preserver, &available, &message,
					&since) > 0);
	assert_string_equal(state, want);
	assert_string_equal(preserver, "sim");
	sd_bus_message_unref(m);
}

struct handoff_signal {
	char state[32];
	bool seen;
};

static int on_handoff_changed(sd_bus_message *m, void *userdata, sd_bus_error *e)
{
	struct handoff_signal *hs = userdata;
	const char *state;
	if (sd_bus_message_read(m, "s", &state) > 0) {
		snprintf(hs->state, sizeof(hs->state), "%s", state);
		hs->seen = true;
	}
	return 0;
}

/* HandoffPrepare / HandoffStatus / HandoffAbort over D-Bus, on the simulated
 * preserver: prepare preserves a persistent context and refuses mutations
 * (the mapping keeps moving bytes), the signal and the property follow,
 * abort accepts mutations again. A non-persistent context is listed as left
 * out; without force it makes prepare fail and nothing changes. */
static void test_handoff_over_dbus(void **state)
{
	/* Persistent contexts and the handoff need the fd store: a daemon of
	 * its own under the fd-store harness, on the same private bus (the
	 * group's daemon has stopped and released the name). */
	struct fds h;
	struct fds_opts o = fds_default_opts();
	o.quiet = true;
	assert_int_equal(fds_init(&h, &o), 0);
	char extra[256];
	snprintf(extra, sizeof(extra), "[handoff]\npreserver = sim:%s\n", g_pv_sock);
	const char *const args[] = { "--bus=user", NULL };
	int r = fds_start_dmabrokerd(&h, extra, args);
	if (r != 0) {
		fds_dump_log(&h);
		fds_destroy(&h);
		fail_msg("dmabrokerd did not become ready: %s", strerror(-r));
	}
	sd_bus *b = bus_open();
	wait_for_name(b);
	struct handoff_signal hs = { 0 };
	sd_bus_slot *slot = NULL;
	assert_true(sd_bus_match_signal(b, &slot, BUS_NAME, BUS_PATH, BUS_IFACE,
					"HandoffStateChanged", on_handoff_changed, &hs) >= 0);
	handoff_state_is(b, "normal");

	/* A VMM with a persistent context, and one with a plain context. */
	struct dmb_client *c = NULL;
	assert_int_equal(dmb_connect(h.sock, "persistent-vmm", &c), 0);
	uint64_t ctx;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
	assert_ok(c, dmb_context_create_persistent(c, "keep", &ctx, token));
	int memfd = make_memfd(MiB, 91);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, memfd, 0, &ri));
	struct dmb_map_entry me = { .region = ri.region, .iova = 0x100000000ull, .length = MiB,
				    .prot = DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &me));
	check_dma(c, ctx, memfd, 0, 0x100000000ull, 4096, 92);
	struct dmb_client *pc = NULL;
	assert_int_equal(dmb_connect(h.sock, "plain-vmm", &pc), 0);
	uint64_t plain_ctx;
	assert_ok(pc, dmb_context_create(pc, "plain-vmm", &plain_ctx));

	/* Without force: refused, listing the plain context; nothing changes. */
	sd_bus_error e = SD_BUS_ERROR_NULL;
	r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, "HandoffPrepare", &e, NULL, "b", 0);
	assert_true(r < 0);
	assert_non_null(strstr(e.message, "not persistent"));
	sd_bus_error_free(&e);
	handoff_state_is(b, "normal");
	struct dmb_map_entry me2 = { .region = ri.region, .iova = 0x200000000ull, .length = 4096,
				     .prot = DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &me2));
	assert_ok(c, dmb_unmap(c, ctx, 0x200000000ull, 4096, NULL));

	/* With force: prepared; the plain context is left out. */
	sd_bus_message *m = NULL;
	r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, "HandoffPrepare", &e, &m, "b", 1);
	if (r < 0)
		fail_msg("HandoffPrepare(force): %s", e.message);
	uint32_t contexts, regions, devices;
	uint64_t mappings, bytes;
	assert_true(sd_bus_message_read(m, "uuttu", &contexts, &regions, &mappings, &bytes, &devices) > 0);
	assert_int_equal(contexts, 1);
	assert_int_equal(regions, 1);
	assert_int_equal(mappings, 1);
	assert_int_equal(bytes, MiB);
	assert_true(sd_bus_message_enter_container(m, 'a', "(tss)") > 0);
	uint64_t lo_id;
	const char *lo_name, *lo_reason;
	assert_true(sd_bus_message_read(m, "(tss)", &lo_id, &lo_name, &lo_reason) > 0);
	assert_int_equal(lo_id, plain_ctx);
	assert_string_equal(lo_name, "plain-vmm");
	sd_bus_message_unref(m);
	pump_until(b, &hs.seen, "HandoffStateChanged(prepared)");
	assert_string_equal(hs.state, "prepared");
	handoff_state_is(b, "prepared");

	/* Prepared: mutations get UNAVAILABLE, DMA keeps moving bytes. */
	assert_code(c, dmb_map(c, ctx, &me2), DMB_UNAVAILABLE);
	check_dma(c, ctx, memfd, MiB - 4096, 0x100000000ull + MiB - 4096, 4096, 94);
	/* A second prepare: wrong state. */
	r = sd_bus_call_method(b, BUS_NAME, BUS_PATH, BUS_IFACE, "HandoffPrepare", &e, NULL, "b", 1);
	assert_true(r < 0);
	sd_bus_error_free(&e);

	/* Abort: normal again, mutations accepted. */
	hs.seen = false;
	m = call0(b, "HandoffAbort", &e);
	if (!m)
		fail_msg("HandoffAbort: %s", e.message);
	const char *after;
	assert_true(sd_bus_message_read(m, "s", &after) > 0);
	assert_string_equal(after, "normal");
	sd_bus_message_unref(m);
	pump_until(b, &hs.seen, "HandoffStateChanged(normal)");
	assert_string_equal(hs.state, "normal");
	handoff_state_is(b, "normal");
	assert_ok(c, dmb_map(c, ctx, &me2));
	check_dma(c, ctx, memfd, 0, 0x200000000ull, 4096, 95);
	/* Abort when not prepared. */
	m = call0(b, "HandoffAbort", &e);
	assert_null(m);
	sd_bus_error_free(&e);

	assert_ok(c, dmb_context_destroy(c, ctx));
	dmb_close(c);
	dmb_close(pc);
	close(memfd);
	sd_bus_slot_unref(slot);
	sd_bus_flush_close_unref(b);
	int ws = fds_stop(&h, SIGTERM);
	bool bad = !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0) || fds_log_has(&h, "Sanitizer") ||
		   fds_log_has(&h, "runtime error:");
	if (bad)
		fds_dump_log(&h);
	fds_destroy(&h);
	assert_false(bad);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_properties_follow_mappings),
		cmocka_unit_test(test_list_clients_and_contexts),
		cmocka_unit_test(test_list_devices_and_revocation_signal),
		cmocka_unit_test(test_revoke_context),
		cmocka_unit_test(test_reload_policy),
		cmocka_unit_test(test_unprivileged_caller_refused),
		cmocka_unit_test(test_metrics_textfile),
		cmocka_unit_test(test_status_and_watchdog),
	};
	/* The harness writes [daemon] first; this is everything after it. */
	static char extra[1024];
	struct passwd *pw = getpwnam("daemon");
	if (!pw || pw->pw_uid == 0) {
		fprintf(stderr, "FAIL: the test needs the 'daemon' user (uid 1 on Debian) as its admin uid\n");
		return 1;
	}
	g_admin_uid = pw->pw_uid;
	start_dbus();
	start_preserver();
	snprintf(extra, sizeof(extra),
		 "[devices]\nallow = " BDF_A " " BDF_B " " BDF_C "\n"
		 "[p2p]\nallow = yes\npoll_interval_ms = 20\n"
		 "[sim]\ndevices = " BDF_A " " BDF_B " " BDF_C "\n"
		 "[metrics]\ntextfile = %s\ninterval_s = 1\n"
		 "[uid 0]\nnoiommu = yes\n"
		 "[uid %u]\nadmin = yes\n",
		 g_metrics, (unsigned)ADMIN_UID);
	const char *const args[] = { "--bus=user", NULL };
	daemon_start_args(&g_daemon, extra, args);
	/* What the harness wrote, to restore after the reload tests. */
	char path[200];
	snprintf(path, sizeof(path), "%s/dmabroker.conf", g_daemon.dir);
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(g_conf_text, 1, sizeof(g_conf_text) - 1, f) : 0;
	if (f)
		fclose(f);
	g_conf_text[n] = '\0';
	int failed = cmocka_run_group_tests_name("mgmt", tests, NULL, NULL);
	daemon_stop(&g_daemon);
	/* A clean stop removes the metrics file (no stale numbers). */
	if (access(g_metrics, F_OK) == 0) {
		fprintf(stderr, "FAIL: %s is still there after the daemon stopped\n", g_metrics);
		unlink(g_metrics);
		failed++;
	}
	/* The handoff over D-Bus runs its own daemon (under the fd store) on
	 * the same bus, after the group's daemon released the name. */
	const struct CMUnitTest handoff_tests[] = {
		cmocka_unit_test(test_handoff_over_dbus),
	};
	failed += cmocka_run_group_tests_name("mgmt-handoff", handoff_tests, NULL, NULL);
	stop_dbus();
	stop_preserver();
	return failed ? 1 : 0;
}
