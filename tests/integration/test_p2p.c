/* P2P mappings and BAR-state revocation on the sim backend: a simulated
 * device A DMAs into simulated device B's BAR through a broker mapping;
 * every change of B's state (mediated, behind the broker's back, reset,
 * release) is proven by what A's DMA engine can still reach. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ull
#define BDF_A "0000:01:00.0"
#define BDF_B "0000:02:00.0"
#define BDF_C "0000:03:00.0"
#define P2P_IOVA 0x40000000ull

struct fx {
	struct dmb_client *c;
	uint64_t ctx;
	struct dmb_device_info a, b;
	int b_fd;            /* the client's own copy of B's device fd */
	int memfd;
	uint64_t region;
};

struct evlog {
	size_t n;
	struct {
		uint32_t kind;
		uint64_t context;
		uint64_t device;
		size_t n_ranges;
		uint64_t iova0;
		bool permanent;
	} ev[64];
};

static void on_event(const struct dmb_event *ev, void *opaque)
{
	struct evlog *l = opaque;
	if (l->n >= 64)
		return;
	l->ev[l->n].kind = ev->kind;
	l->ev[l->n].context = ev->context;
	l->ev[l->n].device = ev->device;
	l->ev[l->n].n_ranges = ev->n_ranges;
	l->ev[l->n].iova0 = ev->n_ranges ? ev->ranges[0].iova : 0;
	l->ev[l->n].permanent = ev->permanent;
	l->n++;
}

static struct evlog drain(struct dmb_client *c)
{
	struct evlog l = { 0 };
	assert_true(dmb_dispatch(c, on_event, &l) >= 0);
	return l;
}

static bool has_event(const struct evlog *l, uint32_t kind, uint64_t ctx, uint64_t iova)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->ev[i].kind == kind && l->ev[i].context == ctx && l->ev[i].iova0 == iova)
			return true;
	return false;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->c = client_connect(&g_daemon, "p2p");
	assert_ok(f->c, dmb_context_create(f->c, "vm", &f->ctx));
	assert_ok(f->c, dmb_device_open(f->c, f->ctx, BDF_A, NULL, &f->a));
	assert_ok(f->c, dmb_device_open(f->c, f->ctx, BDF_B, &f->b_fd, &f->b));
	assert_true(f->b_fd >= 0);
	struct dmb_device_state st;
	assert_ok(f->c, dmb_device_set_command(f->c, f->a.device, DMB_PCI_MEMORY | DMB_PCI_BUS_MASTER, 0, &st));
	assert_true(st.bus_master);
	assert_ok(f->c, dmb_device_set_command(f->c, f->b.device, DMB_PCI_MEMORY, 0, &st));
	assert_true(st.memory);
	f->memfd = make_memfd(1 << 20, 0);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, f->memfd, 0, &ri));
	f->region = ri.region;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	dmb_close(f->c);
	close(f->b_fd);
	close(f->memfd);
	free(f);
	assert_true(daemon_wait_idle(&g_daemon));
	return 0;
}

/* A writes a pattern into B's BAR through the P2P mapping and reads it back;
 * returns the DMA result of the read (0, or the negative errno). */
static int a_roundtrip(struct fx *f, uint64_t iova, unsigned seed, bool expect_ok)
{
	uint8_t want[256], got[256];
	fill_pattern(want, sizeof(want), seed);
	int w = dmb_sim_device_dma_write(f->c, f->a.device, iova, want, sizeof(want));
	int r = dmb_sim_device_dma_read(f->c, f->a.device, iova, got, sizeof(got));
	if (expect_ok) {
		assert_ok(f->c, w);
		assert_ok(f->c, r);
		assert_memory_equal(got, want, sizeof(want));
	}
	return r < 0 ? -dmb_last_error(f->c)->sys_errno : 0;
}

static void test_p2p_reaches_peer_bar(void **state)
{
	struct fx *f = *state;
	assert_ok(f->c, dmb_map_peer(f->c, f->ctx, f->b.device, NULL, 0, 0, P2P_IOVA, 64 * 1024,
				     DMB_READ | DMB_WRITE));
	a_roundtrip(f, P2P_IOVA, 1, true);
	a_roundtrip(f, P2P_IOVA + 64 * 1024 - 256, 2, true); /* the last bytes */

	/* A second, independent path to the same BAR bytes: the same BAR mapped
	 * into another context and read by that context's DMA engine. */
	uint64_t ctx2;
	assert_ok(f->c, dmb_context_create(f->c, "observer", &ctx2));
	assert_ok(f->c, dmb_map_peer(f->c, ctx2, f->b.device, NULL, 0, 0, 0x100000, PG, DMB_READ));
	uint8_t want[256], got[256];
	fill_pattern(want, sizeof(want), 3);
	assert_ok(f->c, dmb_sim_device_dma_write(f->c, f->a.device, P2P_IOVA + 512, want, 256));
	assert_ok(f->c, dmb_sim_dma_read(f->c, ctx2, 0x100000 + 512, got, 256));
	assert_memory_equal(got, want, 256);

	/* MMIO mappings are counted apart and listed as such. */
	struct dmb_stats st;
	assert_ok(f->c, dmb_stats(f->c, f->ctx, &st));
	assert_int_equal(st.p2p_mappings, 1);
	assert_int_equal(st.p2p_bytes, 64 * 1024);
	assert_int_equal(st.pinned_bytes, 0);
	struct dmb_stats tot = daemon_totals(&g_daemon);
	assert_int_equal(tot.p2p_mappings, 2);
	assert_int_equal(tot.p2p_bytes, 64 * 1024 + PG);
	assert_int_equal(tot.pinned_bytes, 0);
	struct dmb_mapping_info mi[4];
	size_t n;
	bool more;
	assert_ok(f->c, dmb_list_mappings(f->c, f->ctx, 0, mi, 4, &n, &more, NULL));
	assert_int_equal(n, 1);
	assert_true(mi[0].mmio);
	assert_int_equal(mi[0].peer_device, f->b.device);
	assert_int_equal(mi[0].region, 0);
	struct dmb_device_listing *dl;
	assert_ok(f->c, dmb_list_devices(f->c, false, &dl, &n));
	size_t found = 0;
	for (size_t i = 0; i < n; i++)
		if (dl[i].device == f->b.device) {
			found = dl[i].n_importers;
			assert_true(dl[i].state.memory);
		}
	assert_int_equal(found, 2);
	free(dl);
}

static void test_mediated_memory_off_revokes_then_restores(void **state)
{
	struct fx *f = *state;
	assert_ok(f->c, dmb_map_peer(f->c, f->ctx, f->b.device, NULL, 0, 0, P2P_IOVA, 64 * 1024,
				     DMB_READ | DMB_WRITE));
	/* A RAM mapping right next to it in IOVA */
	struct dmb_map_entry ram = { f->region, 0, P2P_IOVA + 64 * 1024, PG, DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map(f->c, f->ctx, &ram));
	a_roundtrip(f, P2P_IOVA, 4, true);
	(void)drain(f->c);

	struct dmb_device_state st;
	assert_ok(f->c, dmb_device_set_command(f->c, f->b.device, 0, DMB_PCI_MEMORY, &st));
	assert_false(st.memory);
	assert_int_equal(st.revoked, 1);
	/* The revoked event was queued before the reply: it is already here. */
	struct evlog l = drain(f->c);
	assert_true(has_event(&l, DMB_EV_MAPPINGS_REVOKED, f->ctx, P2P_IOVA));
	/* The IOMMU no longer translates the range: an IOMMU fault (EFAULT),
	 * not merely the peer's decode error (EIO). */
	assert_int_equal(a_roundtrip(f, P2P_IOVA, 5, false), -EFAULT);
	/* The neighbouring RAM mapping is untouched. */
	check_dma(f->c, f->ctx, f->memfd, 0, P2P_IOVA + 64 * 1024, PG, 6);
	/* The IOVA range stays reserved while revoked. */
	struct dmb_map_entry clash = { f->region, 0, P2P_IOVA, PG, DMB_READ };
	assert_code(f->c, dmb_map(f->c, f->ctx, &clash), DMB_ALREADY_EXISTS);

	assert_ok(f->c, dmb_device_set_command(f->c, f->b.device, DMB_PCI_MEMORY, 0, &st));
	assert_int_equal(st.revoked, 0);
	l = drain(f->c);
	assert_true(has_event(&l, DMB_EV_MAPPINGS_RESTORED, f->ctx, P2P_IOVA));
	a_roundtrip(f, P2P_IOVA, 7, true);
	assert_int_equal(st.revocations, 1);
	assert_int_equal(st.restorations, 1);

	/* Bad command changes */
	assert_code(f->c, dmb_device_set_command(f->c, f->b.device, 0x1, 0, &st), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_device_set_command(f->c, f->b.device, DMB_PCI_MEMORY, DMB_PCI_MEMORY, &st),
		    DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_device_set_command(f->c, 999999, DMB_PCI_MEMORY, 0, &st), DMB_NOT_FOUND);
}

static void test_reset_revokes_then_restores(void **state)
{
	struct fx *f = *state;
	assert_ok(f->c, dmb_map_peer(f->c, f->ctx, f->b.device, NULL, 0, 0, P2P_IOVA, PG,
				     DMB_READ | DMB_WRITE));
	a_roundtrip(f, P2P_IOVA, 8, true);
	(void)drain(f->c);
	struct dmb_device_state st;
	assert_ok(f->c, dmb_device_reset(f->c, f->b.device, &st));
	struct evlog l = drain(f->c);
	assert_true(has_event(&l, DMB_EV_MAPPINGS_REVOKED, f->ctx, P2P_IOVA));
	assert_true(has_event(&l, DMB_EV_MAPPINGS_RESTORED, f->ctx, P2P_IOVA));
	assert_true(st.memory); /* config space restored around the reset */
	assert_int_equal(st.revoked, 0);
	/* The device lost its BAR contents in the reset; the mapping works. */
	uint8_t got[64], zero[64] = { 0 };
	assert_ok(f->c, dmb_sim_device_dma_read(f->c, f->a.device, P2P_IOVA, got, 64));
	assert_memory_equal(got, zero, 64);
	a_roundtrip(f, P2P_IOVA, 9, true);
}

static bool wait_event(struct dmb_client *c, uint32_t kind, uint64_t ctx, uint64_t iova)
{
	for (int i = 0; i < 300; i++) { /* 3 s; the watcher runs every 20 ms here */
		struct pollfd p = { .fd = dmb_fd(c), .events = POLLIN };
		poll(&p, 1, 10);
		struct evlog l = drain(c);
		if (has_event(&l, kind, ctx, iova))
			return true;
	}
	return false;
}

static void set_command_behind_back(int fd, uint16_t set, uint16_t clear)
{
	uint8_t b[2];
	assert_int_equal(pread(fd, b, 2, 4), 2);
	uint16_t cmd = (uint16_t)(b[0] | b[1] << 8);
	cmd = (uint16_t)((cmd | set) & ~clear);
	b[0] = (uint8_t)cmd;
	b[1] = (uint8_t)(cmd >> 8);
	assert_int_equal(pwrite(fd, b, 2, 4), 2);
}

static void test_unmediated_change_is_caught(void **state)
{
	struct fx *f = *state;
	assert_ok(f->c, dmb_map_peer(f->c, f->ctx, f->b.device, NULL, 0, 0, P2P_IOVA, PG,
				     DMB_READ | DMB_WRITE));
	a_roundtrip(f, P2P_IOVA, 10, true);
	(void)drain(f->c);
	/* The client turns decoding off through its own device fd. */
	set_command_behind_back(f->b_fd, 0, DMB_PCI_MEMORY);
	assert_true(wait_event(f->c, DMB_EV_MAPPINGS_REVOKED, f->ctx, P2P_IOVA));
	assert_int_equal(a_roundtrip(f, P2P_IOVA, 11, false), -EFAULT);
	/* ... and back on: restored by the watcher. */
	set_command_behind_back(f->b_fd, DMB_PCI_MEMORY, 0);
	assert_true(wait_event(f->c, DMB_EV_MAPPINGS_RESTORED, f->ctx, P2P_IOVA));
	a_roundtrip(f, P2P_IOVA, 12, true);
}

static void test_release_revokes_for_good(void **state)
{
	struct fx *f = *state;
	assert_ok(f->c, dmb_map_peer(f->c, f->ctx, f->b.device, NULL, 0, 0, P2P_IOVA, PG,
				     DMB_READ | DMB_WRITE));
	a_roundtrip(f, P2P_IOVA, 13, true);
	(void)drain(f->c);
	assert_ok(f->c, dmb_device_close(f->c, f->b.device));
	struct evlog l = drain(f->c);
	assert_true(has_event(&l, DMB_EV_MAPPINGS_REVOKED, f->ctx, P2P_IOVA));
	bool permanent = false;
	for (size_t i = 0; i < l.n; i++)
		permanent |= l.ev[i].permanent;
	assert_true(permanent);
	assert_int_equal(a_roundtrip(f, P2P_IOVA, 14, false), -EFAULT);
	struct dmb_mapping_info mi[2];
	size_t n;
	bool more;
	assert_ok(f->c, dmb_list_mappings(f->c, f->ctx, 0, mi, 2, &n, &more, NULL));
	assert_int_equal(n, 0);
	/* The IOVA is free again. */
	struct dmb_map_entry e = { f->region, 0, P2P_IOVA, PG, DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map(f->c, f->ctx, &e));
}

static void test_many_contexts_import_one_bar(void **state)
{
	struct fx *f = *state;
	enum { N = 5 };
	uint64_t ctx[N];
	for (int i = 0; i < N; i++) {
		assert_ok(f->c, dmb_context_create(f->c, "importer", &ctx[i]));
		assert_ok(f->c, dmb_map_peer(f->c, ctx[i], f->b.device, NULL, 0, 0, 0x100000, PG,
					     DMB_READ | DMB_WRITE));
	}
	uint8_t got[16];
	for (int i = 0; i < N; i++)
		assert_ok(f->c, dmb_sim_dma_read(f->c, ctx[i], 0x100000, got, 16));
	(void)drain(f->c);
	struct dmb_device_state st;
	assert_ok(f->c, dmb_device_set_command(f->c, f->b.device, 0, DMB_PCI_MEMORY, &st));
	assert_int_equal(st.revoked, N);
	struct evlog l = drain(f->c);
	for (int i = 0; i < N; i++) {
		assert_true(has_event(&l, DMB_EV_MAPPINGS_REVOKED, ctx[i], 0x100000));
		assert_true(dmb_sim_dma_read(f->c, ctx[i], 0x100000, got, 16) < 0);
		assert_int_equal(dmb_last_error(f->c)->sys_errno, EFAULT);
	}
	assert_ok(f->c, dmb_device_set_command(f->c, f->b.device, DMB_PCI_MEMORY, 0, &st));
	for (int i = 0; i < N; i++)
		assert_ok(f->c, dmb_sim_dma_read(f->c, ctx[i], 0x100000, got, 16));
	/* Destroying an importing context removes only its importer. */
	assert_ok(f->c, dmb_context_destroy(f->c, ctx[0]));
	assert_ok(f->c, dmb_device_set_command(f->c, f->b.device, 0, DMB_PCI_MEMORY, &st));
	assert_int_equal(st.importers, N - 1);
	assert_int_equal(st.revoked, N - 1);
}

static void test_bad_map_peer(void **state)
{
	struct fx *f = *state;
	uint64_t b = f->b.device;
	/* BARs that do not exist, I/O space, ranges past the BAR */
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 1, 0, P2P_IOVA, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 6, 0, P2P_IOVA, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 2, 0, P2P_IOVA, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_non_null(strstr(dmb_last_error(f->c)->message, "I/O"));
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, (1 << 20) - PG, P2P_IOVA, 2 * PG, DMB_READ),
		    DMB_OUT_OF_RANGE);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 1 << 20, P2P_IOVA, PG, DMB_READ),
		    DMB_OUT_OF_RANGE);
	/* arguments */
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 0, P2P_IOVA, 0, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 0, P2P_IOVA + 1, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 0, P2P_IOVA, PG, 0), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 0, UINT64_MAX - PG + 1, 2 * PG, DMB_READ),
		    DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 0, 0xfee00000, PG, DMB_READ), DMB_OUT_OF_RANGE);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, 0, NULL, 0, 0, P2P_IOVA, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, BDF_B, 0, 0, P2P_IOVA, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, 999999, NULL, 0, 0, P2P_IOVA, PG, DMB_READ), DMB_NOT_FOUND);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, 0, "0000:09:00.0", 0, 0, P2P_IOVA, PG, DMB_READ), DMB_NOT_FOUND);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, 0, "nonsense", 0, 0, P2P_IOVA, PG, DMB_READ), DMB_INVALID_ARGUMENT);
	assert_code(f->c, dmb_map_peer(f->c, f->ctx + 1000, b, NULL, 0, 0, P2P_IOVA, PG, DMB_READ), DMB_NOT_FOUND);
	/* overlap with an existing mapping */
	struct dmb_map_entry ram = { f->region, 0, P2P_IOVA, PG, DMB_READ };
	assert_ok(f->c, dmb_map(f->c, f->ctx, &ram));
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 0, P2P_IOVA, PG, DMB_READ), DMB_ALREADY_EXISTS);
	/* the peer's memory decoding is off */
	struct dmb_device_state st;
	assert_ok(f->c, dmb_device_set_command(f->c, b, 0, DMB_PCI_MEMORY, &st));
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, b, NULL, 0, 0, P2P_IOVA + PG, PG, DMB_READ),
		    DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(f->c)->message, "memory decoding"));
	assert_int_equal(daemon_totals(&g_daemon).p2p_mappings, 0);
}

static void test_other_clients_device(void **state)
{
	struct fx *f = *state;
	struct dmb_client *o = client_connect(&g_daemon, "other");
	uint64_t octx;
	struct dmb_device_info oi;
	assert_ok(o, dmb_context_create(o, "o", &octx));
	assert_ok(o, dmb_device_open(o, octx, BDF_C, NULL, &oi));
	struct dmb_device_state st;
	assert_ok(o, dmb_device_set_command(o, oi.device, DMB_PCI_MEMORY, 0, &st));
	/* By id: another client's device id is simply not found. */
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, oi.device, NULL, 0, 0, P2P_IOVA, PG, DMB_READ),
		    DMB_NOT_FOUND);
	assert_code(f->c, dmb_device_set_command(f->c, oi.device, 0, DMB_PCI_MEMORY, &st), DMB_NOT_FOUND);
	assert_code(f->c, dmb_device_reset(f->c, oi.device, &st), DMB_NOT_FOUND);
	assert_code(f->c, dmb_device_close(f->c, oi.device), DMB_NOT_FOUND);
	uint8_t buf[8];
	assert_code(f->c, dmb_sim_device_dma_read(f->c, oi.device, 0, buf, 8), DMB_NOT_FOUND);
	/* By address: refused by policy (cross-client P2P is off). */
	assert_code(f->c, dmb_map_peer(f->c, f->ctx, 0, BDF_C, 0, 0, P2P_IOVA, PG, DMB_READ),
		    DMB_PERMISSION_DENIED);
	/* Opening it: another client has it. */
	assert_code(f->c, dmb_device_open(f->c, f->ctx, BDF_C, NULL, NULL), DMB_FAILED_PRECONDITION);
	/* A device the policy does not allow at all */
	assert_code(f->c, dmb_device_open(f->c, f->ctx, "0000:04:00.0", NULL, NULL), DMB_PERMISSION_DENIED);
	assert_true(st.memory);
	dmb_close(o);
}

static void test_bus_master_gates_device_dma(void **state)
{
	struct fx *f = *state;
	struct dmb_map_entry e = { f->region, 0, 0x100000, PG, DMB_READ | DMB_WRITE };
	assert_ok(f->c, dmb_map(f->c, f->ctx, &e));
	uint8_t want[64], got[64];
	fill_pattern(want, 64, 15);
	fd_write(f->memfd, 0, want, 64);
	assert_ok(f->c, dmb_sim_device_dma_read(f->c, f->a.device, 0x100000, got, 64));
	assert_memory_equal(got, want, 64);
	struct dmb_device_state st;
	assert_ok(f->c, dmb_device_set_command(f->c, f->a.device, 0, DMB_PCI_BUS_MASTER, &st));
	assert_true(dmb_sim_device_dma_read(f->c, f->a.device, 0x100000, got, 64) < 0);
	assert_int_equal(dmb_last_error(f->c)->sys_errno, EPERM);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_p2p_reaches_peer_bar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mediated_memory_off_revokes_then_restores, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reset_revokes_then_restores, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unmediated_change_is_caught, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_revokes_for_good, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_contexts_import_one_bar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_map_peer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_other_clients_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bus_master_gates_device_dma, setup, teardown),
	};
	setenv("DMB_TEST_EXTRA_CONFIG",
	       "[devices]\nallow = 0000:01:00.0 0000:02:00.0 0000:03:00.0\n"
	       "[p2p]\npoll_interval_ms = 20\nallow = yes\n"
	       "[sim]\ndevices = 0000:01:00.0 0000:02:00.0 0000:03:00.0 0000:04:00.0\n",
	       1);
	return cmocka_run_group_tests_name("p2p", tests, group_start_daemon, group_stop_daemon);
}
