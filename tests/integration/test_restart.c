/* Restart without unmapping, through a harness that plays systemd's fd
 * store for real (fdstore.h): the daemon is restarted 20 times (SIGTERM and
 * SIGKILL) under a client thread that keeps mapping, unmapping and moving
 * bytes; every byte check passes, every request either succeeds or fails
 * with an error the client can retry, and the daemon's accounting matches
 * the client's own model at the end. Plus persistent contexts, reclaim
 * tokens, the grace period, and sessions that ended while the daemon was
 * down. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fdstore.h"

#define PG 4096ull
#define SLOTS 64
#define BASE_IOVA 0x10000000ull

static struct fds H;

static struct daemon as_daemon(void)
{
	struct daemon d = { .pid = H.pid };
	snprintf(d.sock, sizeof(d.sock), "%s", H.sock);
	snprintf(d.dir, sizeof(d.dir), "%s", H.dir);
	return d;
}

static void start(const char *extra)
{
	int r = fds_start_dmabrokerd(&H, extra, NULL);
	if (r < 0) {
		fds_dump_log(&H);
		fail_msg("dmabrokerd did not start under the fd-store harness: %s", strerror(-r));
	}
}

/* client_connect, but a failure shows the daemon's log (the reason is
 * there, not in the client's errno). */
static struct dmb_client *connect_or_dump(const struct daemon *d, const char *name)
{
	struct dmb_client *c = NULL;
	int r = dmb_connect(d->sock, name, &c);
	if (r < 0) {
		fds_dump_log(&H);
		fail_msg("connect to %s: %s", d->sock, strerror(-r));
	}
	return c;
}

static void restart(int sig)
{
	int r = fds_restart(&H, sig);
	if (r < 0) {
		fds_dump_log(&H);
		fail_msg("restart with signal %d failed: %s", sig, strerror(-r));
	}
	if (fds_log_has(&H, "Sanitizer") || fds_log_has(&H, "runtime error:")) {
		fds_dump_log(&H);
		fail_msg("sanitizer report in the daemon's log");
	}
}

/* ------------------------------------------------------------ the worker */

struct worker {
	pthread_t t;
	atomic_bool stop;
	struct dmb_client *c;
	uint64_t ctx;
	uint64_t region;
	int memfd;
	bool mapped[SLOTS];       /* the client's own model */
	uint64_t ops, retries, checks;
	char failure[512];
};

/* A call that may meet a restart: -EAGAIN (UNAVAILABLE) says retry. A
 * retried map may find its first attempt applied (ALREADY_EXISTS), a
 * retried unmap may find it gone (NOT_FOUND): both mean "done". */
static int retry_map(struct worker *w, const struct dmb_map_entry *e)
{
	for (int i = 0; i < 50; i++) {
		int r = dmb_map(w->c, w->ctx, e);
		if (r == -EAGAIN) {
			w->retries++;
			continue;
		}
		if (r == -EEXIST && i > 0)
			return 0;
		return r;
	}
	return -ETIMEDOUT;
}

static int retry_unmap(struct worker *w, uint64_t iova)
{
	for (int i = 0; i < 50; i++) {
		int r = dmb_unmap(w->c, w->ctx, iova, PG, NULL);
		if (r == -EAGAIN) {
			w->retries++;
			continue;
		}
		if (r == -ENOENT && i > 0)
			return 0;
		return r;
	}
	return -ETIMEDOUT;
}

static int retry_dma(struct worker *w, uint64_t iova, void *buf, size_t len, bool write)
{
	for (int i = 0; i < 50; i++) {
		int r = write ? dmb_sim_dma_write(w->c, w->ctx, iova, buf, len)
			      : dmb_sim_dma_read(w->c, w->ctx, iova, buf, len);
		if (r != -EAGAIN)
			return r;
		w->retries++;
	}
	return -ETIMEDOUT;
}

#define WFAIL(...) do { snprintf(w->failure, sizeof(w->failure), __VA_ARGS__); return NULL; } while (0)

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	unsigned seed = 1;
	while (!atomic_load(&w->stop)) {
		unsigned slot = (unsigned)rand_r(&seed) % SLOTS;
		uint64_t iova = BASE_IOVA + slot * 2 * PG;
		int r;
		if (!w->mapped[slot]) {
			struct dmb_map_entry e = { w->region, slot * PG, iova, PG, DMB_READ | DMB_WRITE };
			r = retry_map(w, &e);
			if (r < 0)
				WFAIL("map slot %u: %d %s", slot, r, dmb_last_error(w->c)->message);
			w->mapped[slot] = true;
		} else if (rand_r(&seed) % 3 == 0) {
			r = retry_unmap(w, iova);
			if (r < 0)
				WFAIL("unmap slot %u: %d %s", slot, r, dmb_last_error(w->c)->message);
			w->mapped[slot] = false;
		}
		/* Prove the slot by moving bytes, both ways. */
		uint8_t want[64], got[64];
		fill_pattern(want, sizeof(want), (unsigned)w->ops);
		if (w->mapped[slot]) {
			if (pwrite(w->memfd, want, sizeof(want), (off_t)(slot * PG)) != sizeof(want))
				WFAIL("pwrite");
			r = retry_dma(w, iova, got, sizeof(got), false);
			if (r < 0)
				WFAIL("DMA read slot %u: %d %s", slot, r, dmb_last_error(w->c)->message);
			if (memcmp(got, want, sizeof(got)))
				WFAIL("DMA read slot %u moved the wrong bytes", slot);
			fill_pattern(want, sizeof(want), (unsigned)w->ops + 99);
			r = retry_dma(w, iova + 128, want, sizeof(want), true);
			if (r < 0)
				WFAIL("DMA write slot %u: %d %s", slot, r, dmb_last_error(w->c)->message);
			if (pread(w->memfd, got, sizeof(got), (off_t)(slot * PG + 128)) != sizeof(got) ||
			    memcmp(got, want, sizeof(got)))
				WFAIL("DMA write slot %u did not reach the memfd", slot);
		} else {
			r = retry_dma(w, iova, got, sizeof(got), false);
			if (r >= 0 || dmb_last_error(w->c)->sys_errno != EFAULT)
				WFAIL("slot %u is unmapped but DMA did not fault (%d)", slot, r);
		}
		w->checks++;
		w->ops++;
	}
	return NULL;
}

static void test_restart_under_load(void **state)
{
	start("[persist]\ngrace_period_s = 60\n");
	struct daemon d = as_daemon();
	struct worker *w = calloc(1, sizeof(*w));
	w->c = connect_or_dump(&d, "restart-worker");
	assert_ok(w->c, dmb_context_create(w->c, "vm", &w->ctx));
	w->memfd = make_memfd(SLOTS * PG, 0);
	struct dmb_region_info ri;
	assert_ok(w->c, dmb_region_register(w->c, w->ctx, w->memfd, 0, &ri));
	w->region = ri.region;
	assert_int_equal(pthread_create(&w->t, NULL, worker_main, w), 0);

	for (int i = 0; i < 20; i++) {
		struct timespec ts = { 0, 30 * 1000000L };
		nanosleep(&ts, NULL);
		restart(i % 2 ? SIGKILL : SIGTERM);
	}
	struct timespec ts = { 0, 100 * 1000000L };
	nanosleep(&ts, NULL);
	atomic_store(&w->stop, true);
	pthread_join(w->t, NULL);
	if (w->failure[0]) {
		fds_dump_log(&H);
		fail_msg("worker: %s (after %llu ops, %llu retries)", w->failure,
			 (unsigned long long)w->ops, (unsigned long long)w->retries);
	}
	print_message("restart: %llu operations, %llu byte checks, %llu retried across 20 restarts\n",
		      (unsigned long long)w->ops, (unsigned long long)w->checks,
		      (unsigned long long)w->retries);
	assert_true(w->ops > 20);
	/* Each instance re-adopted the context, never by mapping it again from
	 * scratch, and never unmapped it (the worker's checks would have
	 * faulted). */
	assert_true(fds_log_has(&H, "restored 1 context(s)"));
	if (!fds_log_has(&H, "stopping with 1 context(s)"))
		fail_msg("no clean handover was logged");

	/* The daemon's accounting is the client's model. */
	size_t want = 0;
	for (int s = 0; s < SLOTS; s++)
		want += w->mapped[s];
	struct dmb_stats st;
	assert_ok(w->c, dmb_stats(w->c, w->ctx, &st));
	assert_int_equal(st.mappings, want);
	d.pid = H.pid;
	struct dmb_stats tot = daemon_totals(&d);
	assert_int_equal(tot.pinned_bytes, want * PG);
	dmb_close(w->c);
	close(w->memfd);
	free(w);
	assert_true(daemon_wait_idle(&d));
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

struct killer {
	long delay_us;
	int result;
};

static void *killer_main(void *arg)
{
	struct killer *k = arg;
	struct timespec ts = { 0, k->delay_us * 1000L };
	nanosleep(&ts, NULL);
	k->result = fds_restart(&H, SIGKILL);
	return NULL;
}

/* SIGKILL while a client maps and unmaps big batches: after every restart
 * each batch is wholly present or wholly absent, and DMA agrees. */
#define BATCH 512
#define BATCH_IOVA 0x40000000ull
static void test_sigkill_mid_batch(void **state)
{
	start(NULL);
	struct daemon d = as_daemon();
	struct dmb_client *c = connect_or_dump(&d, "batcher");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "b", &ctx));
	int m = make_memfd(BATCH * PG, 0);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, m, 0, &ri));
	struct dmb_map_entry *e = calloc(BATCH, sizeof(*e));
	for (size_t i = 0; i < BATCH; i++)
		e[i] = (struct dmb_map_entry){ ri.region, i * PG, BATCH_IOVA + i * 2 * PG, PG,
					       DMB_READ | DMB_WRITE };
	struct dmb_range all = { BATCH_IOVA, BATCH * 2 * PG };
	for (int round = 0; round < 8; round++) {
		/* Fire the batch while another thread kills the daemon (it may be
		 * working on the batch) and starts the next one: the call then
		 * either completes or fails with a retry-able error. */
		struct killer k = { .delay_us = round * 150 };
		pthread_t kt;
		assert_int_equal(pthread_create(&kt, NULL, killer_main, &k), 0);
		int r = dmb_map_batch(c, ctx, e, BATCH);
		pthread_join(kt, NULL);
		if (k.result < 0) {
			fds_dump_log(&H);
			fail_msg("round %d: the restart failed: %s", round, strerror(-k.result));
		}
		if (r < 0 && r != -EAGAIN)
			fail_msg("round %d: map batch failed with a non-retryable error: %s", round,
				 dmb_last_error(c)->message);
		d.pid = H.pid;
		/* Whatever happened, the batch is all there or all gone. */
		struct dmb_stats s2;
		int sr;
		for (int i = 0; i < 50 && (sr = dmb_stats(c, ctx, &s2)) == -EAGAIN; i++)
			;
		assert_ok(c, sr);
		if (s2.mappings != 0 && s2.mappings != BATCH)
			fail_msg("round %d: %llu of %d batch mappings survived (map returned %d)", round,
				 (unsigned long long)s2.mappings, BATCH, r);
		uint8_t buf[16];
		int r0 = dmb_sim_dma_read(c, ctx, e[0].iova, buf, 16);
		int rn = dmb_sim_dma_read(c, ctx, e[BATCH - 1].iova, buf, 16);
		if (s2.mappings == BATCH) {
			assert_ok(c, r0);
			assert_ok(c, rn);
			check_dma(c, ctx, m, (BATCH / 2) * PG, e[BATCH / 2].iova, 64, (unsigned)round);
			uint64_t bytes;
			int ur;
			for (int i = 0; i < 50 && (ur = dmb_unmap_batch(c, ctx, &all, 1, &bytes)) == -EAGAIN; i++)
				;
			assert_ok(c, ur);
		} else {
			assert_true(r0 < 0 && rn < 0);
		}
		assert_int_equal(daemon_totals(&d).pinned_bytes, 0);
	}
	free(e);
	close(m);
	dmb_close(c);
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

/* An idle client across restarts: its connection survives, and its next
 * request is answered once, not mistaken for one lost in the restart. */
static void test_idle_client_across_restart(void **state)
{
	start(NULL);
	struct daemon d = as_daemon();
	struct dmb_client *c = connect_or_dump(&d, "idle");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "before", &ctx));
	int sigs[] = { SIGTERM, SIGKILL, SIGTERM };
	for (unsigned i = 0; i < 3; i++) {
		restart(sigs[i]);
		assert_ok(c, dmb_context_create(c, "after", &ctx));
		struct dmb_stats st;
		assert_ok(c, dmb_stats(c, 0, &st));
		assert_int_equal(st.contexts, i + 2);
	}
	dmb_close(c);
	d.pid = H.pid;
	assert_true(daemon_wait_idle(&d));
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

/* The same memfd registered in two contexts comes back in both: the fd
 * store keeps one fd per open file description. */
static void test_shared_memfd_across_restart(void **state)
{
	start(NULL);
	struct daemon d = as_daemon();
	struct dmb_client *c = connect_or_dump(&d, "shared");
	int m = make_memfd(1 << 20, 0);
	uint64_t ctx[2];
	for (int i = 0; i < 2; i++) {
		struct dmb_region_info ri;
		assert_ok(c, dmb_context_create(c, "s", &ctx[i]));
		assert_ok(c, dmb_region_register(c, ctx[i], m, 0, &ri));
		struct dmb_map_entry e = { ri.region, 0, 0x100000, 1 << 20, DMB_READ | DMB_WRITE };
		assert_ok(c, dmb_map(c, ctx[i], &e));
	}
	restart(SIGKILL);
	for (int i = 0; i < 2; i++)
		check_dma(c, ctx[i], m, 4096 * (unsigned)i, 0x100000 + 4096 * (unsigned)i, 4096,
			  (unsigned)i + 7);
	close(m);
	dmb_close(c);
	d.pid = H.pid;
	assert_true(daemon_wait_idle(&d));
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

/* A no-IOMMU context survives restarts as one: still marked, still only
 * for its device without an IOMMU, and its pages stay where they were
 * pinned: the physical addresses are the same, and the device moves bytes
 * through them both ways. */
static bool same_ranges(const struct dmb_phys_range *a, const struct dmb_phys_range *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i].iova != b[i].iova || a[i].phys != b[i].phys || a[i].length != b[i].length)
			return false;
	return true;
}

static void check_phys_dma(struct dmb_client *c, uint64_t dev, int memfd,
			   const struct dmb_phys_range *r, size_t n, uint64_t iova0, unsigned seed)
{
	uint8_t want[256], got[256];
	for (size_t i = 0; i < n; i++) {
		uint64_t off = r[i].iova - iova0 + r[i].length - sizeof(want);
		uint64_t phys = r[i].phys + r[i].length - sizeof(want);
		fill_pattern(want, sizeof(want), seed + (unsigned)i);
		fd_write(memfd, off, want, sizeof(want));
		assert_ok(c, dmb_sim_device_dma_read(c, dev, phys, got, sizeof(got)));
		assert_memory_equal(got, want, sizeof(want));
		fill_pattern(want, sizeof(want), seed + 100 + (unsigned)i);
		assert_ok(c, dmb_sim_device_dma_write(c, dev, phys, want, sizeof(want)));
		fd_read(memfd, off, got, sizeof(got));
		assert_memory_equal(got, want, sizeof(want));
	}
}

static void test_noiommu_across_restart(void **state)
{
	start("[sim]\nnoiommu_devices = 0000:05:00.0\n"
	      "[devices]\nallow = 0000:05:00.0, 0000:01:00.0\n"
	      "[default]\nnoiommu = yes\n");
	struct daemon d = as_daemon();
	struct dmb_client *c = connect_or_dump(&d, "bare");
	uint64_t ctx;
	assert_ok(c, dmb_context_create_flags(c, "bare", DMB_CONTEXT_NOIOMMU, &ctx, NULL));
	struct dmb_device_info di;
	assert_ok(c, dmb_device_open(c, ctx, "0000:05:00.0", NULL, &di));
	assert_ok(c, dmb_device_set_command(c, di.device, DMB_PCI_BUS_MASTER, 0, NULL));
	int m = make_memfd(64 * 1024, 5);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 64 * 1024, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &e));
	struct dmb_phys_range before[16], after[16];
	size_t n, n2;
	bool more;
	assert_ok(c, dmb_phys_ranges(c, ctx, 0x100000, 64 * 1024, before, 16, &n, &more, NULL));
	assert_false(more);
	assert_true(n > 1);
	check_phys_dma(c, di.device, m, before, n, 0x100000, 10);

	int sigs[] = { SIGTERM, SIGKILL };
	for (unsigned i = 0; i < 2; i++) {
		restart(sigs[i]);
		struct dmb_context_info *ci;
		size_t nc;
		assert_ok(c, dmb_list_contexts(c, false, &ci, &nc));
		assert_int_equal(nc, 1);
		assert_true(ci[0].noiommu);
		free(ci);
		struct dmb_stats st;
		assert_ok(c, dmb_stats(c, 0, &st));
		assert_int_equal(st.noiommu_contexts, 1);
		assert_int_equal(st.pinned_bytes, 64 * 1024);
		assert_ok(c, dmb_phys_ranges(c, ctx, 0x100000, 64 * 1024, after, 16, &n2, &more,
					     NULL));
		assert_int_equal(n2, n);
		assert_true(same_ranges(before, after, n));
		check_phys_dma(c, di.device, m, after, n, 0x100000, 20 + i * 10);
		/* still a no-IOMMU context: a device with an IOMMU is refused */
		struct dmb_device_info other;
		assert_code(c, dmb_device_open(c, ctx, "0000:01:00.0", NULL, &other),
			    DMB_FAILED_PRECONDITION);
	}
	uint64_t bytes;
	assert_ok(c, dmb_unmap(c, ctx, 0x100000, 64 * 1024, &bytes));
	uint8_t buf[64];
	assert_true(dmb_sim_device_dma_read(c, di.device, after[0].phys, buf, sizeof(buf)) < 0);
	close(m);
	dmb_close(c);
	d.pid = H.pid;
	assert_true(daemon_wait_idle(&d));
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

/* A granular mapping with discarded granules across restarts (SIGTERM and
 * SIGKILL): populated granules keep moving bytes, discarded ones keep
 * faulting, the backend's pins stay exact, and discard/populate go on
 * working after each restart. Also a restart right after a compaction of
 * the journal (a long run of conversions) keeps the discarded set. */
static void test_granular_across_restart(void **state)
{
	start(NULL);
	struct daemon d = as_daemon();
	struct dmb_client *c = connect_or_dump(&d, "granular");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "g", &ctx));
	const unsigned ng = 32;
	int m = make_memfd(ng * PG, 5);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, BASE_IOVA, ng * PG, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map_granular(c, ctx, &e, DMB_GRANULE_4K, NULL));
	bool disc[32] = { 0 };
	unsigned seed = 3;
	int sigs[] = { SIGTERM, SIGKILL, SIGTERM, SIGKILL };
	for (unsigned round = 0; round < 4; round++) {
		/* flip a few granules each round */
		for (unsigned k = 0; k < 6; k++) {
			unsigned i = (unsigned)rand_r(&seed) % ng;
			struct dmb_range r = { BASE_IOVA + i * PG, PG };
			if (disc[i])
				assert_ok(c, dmb_populate(c, ctx, &r, 1, NULL));
			else
				assert_ok(c, dmb_discard(c, ctx, &r, 1, NULL));
			disc[i] = !disc[i];
		}
		restart(sigs[round]);
		uint64_t want = 0;
		for (unsigned i = 0; i < ng; i++) {
			if (disc[i]) {
				check_dma_faults(c, ctx, m, i * PG, BASE_IOVA + i * PG, 128);
			} else {
				check_dma(c, ctx, m, i * PG + 256, BASE_IOVA + i * PG + 256, 128, i + round);
				want += PG;
			}
		}
		d.pid = H.pid;
		assert_int_equal(daemon_totals(&d).pinned_bytes, want);
		struct dmb_mapping_info mi;
		size_t n = 0;
		bool more;
		assert_ok(c, dmb_list_mappings(c, ctx, 0, &mi, 1, &n, &more, NULL));
		assert_int_equal(n, 1);
		assert_int_equal(mi.granule, PG);
		assert_int_equal(mi.discarded * PG, ng * PG - want);
	}
	/* Many conversions: the journal compacts (its records far outweigh
	 * the live state); the discarded set survives the snapshot. */
	for (unsigned k = 0; k < 30000; k++) {
		struct dmb_range r = { BASE_IOVA + (k % 4) * PG, PG };
		int x = disc[k % 4] ? dmb_populate(c, ctx, &r, 1, NULL) : dmb_discard(c, ctx, &r, 1, NULL);
		assert_ok(c, x);
		disc[k % 4] = !disc[k % 4];
	}
	assert_true(fds_log_has(&H, "journal compacted"));
	restart(SIGKILL);
	for (unsigned i = 0; i < ng; i++) {
		if (disc[i])
			check_dma_faults(c, ctx, m, i * PG, BASE_IOVA + i * PG, 128);
		else
			check_dma(c, ctx, m, i * PG + 512, BASE_IOVA + i * PG + 512, 128, i + 40);
	}
	close(m);
	dmb_close(c);
	d.pid = H.pid;
	assert_true(daemon_wait_idle(&d));
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

/* The daemon dies after journaling a discard and before the kernel unmaps
 * the granules (DMABROKERD_TEST_CRASH): the discard was not answered, and
 * the journal names the granules discarded while the kernel still maps
 * them. The next start takes them out of the IOMMU before it adopts
 * anything: DMA through them faults, the others still move bytes, and the
 * pins are the populated granules' only. */
static void test_discard_crash_before_kernel(void **state)
{
	setenv("DMABROKERD_TEST_CRASH", "discard-journaled", 1);
	start(NULL);
	unsetenv("DMABROKERD_TEST_CRASH"); /* the next start runs without it */
	struct daemon d = as_daemon();
	struct dmb_client *c = connect_or_dump(&d, "granular-crash");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "g", &ctx));
	const unsigned ng = 8;
	int m = make_memfd(ng * PG, 9);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, BASE_IOVA, ng * PG, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map_granular(c, ctx, &e, DMB_GRANULE_4K, NULL));
	for (unsigned i = 0; i < ng; i++)
		check_dma(c, ctx, m, i * PG, BASE_IOVA + i * PG, 128, i);

	/* Discard granules 2 and 5, below the library: no reply will come. */
	Dmb__Range r2 = DMB__RANGE__INIT, r5 = DMB__RANGE__INIT;
	r2.iova = BASE_IOVA + 2 * PG;
	r2.length = PG;
	r5.iova = BASE_IOVA + 5 * PG;
	r5.length = PG;
	Dmb__Range *rs[] = { &r2, &r5 };
	Dmb__Convert cv = DMB__CONVERT__INIT;
	cv.context_id = ctx;
	cv.n_ranges = 2;
	cv.ranges = rs;
	Dmb__Request req = DMB__REQUEST__INIT;
	req.id = 7001;
	req.body_case = DMB__REQUEST__BODY_DISCARD;
	req.discard = &cv;
	uint8_t buf[128];
	size_t n = dmb__request__pack(&req, buf);
	assert_int_equal(send(dmb_socket(c), buf, n, 0), (ssize_t)n);
	int st = fds_stop(&H, 0);
	if (!(st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) ||
	    !fds_log_has(&H, "crashing after the discard is journaled")) {
		fds_dump_log(&H);
		fail_msg("the daemon did not crash after journaling the discard (wait status %d)", st);
	}

	restart(SIGTERM);
	d.pid = H.pid;
	/* The journal's discards were applied before adoption: the backend
	 * found nothing it was not told about (the sim would also drop such
	 * strays; iommufd cannot list its areas and relies on this). */
	if (fds_log_has(&H, "the journal did not name were removed")) {
		fds_dump_log(&H);
		fail_msg("the discarded granules were found as strays, not taken out first");
	}
	uint64_t want = 0;
	for (unsigned i = 0; i < ng; i++) {
		if (i == 2 || i == 5) {
			check_dma_faults(c, ctx, m, i * PG, BASE_IOVA + i * PG, 128);
		} else {
			check_dma(c, ctx, m, i * PG + 256, BASE_IOVA + i * PG + 256, 128, i + 20);
			want += PG;
		}
	}
	assert_int_equal(daemon_totals(&d).pinned_bytes, want);
	struct dmb_mapping_info mi;
	size_t nm = 0;
	bool more;
	assert_ok(c, dmb_list_mappings(c, ctx, 0, &mi, 1, &nm, &more, NULL));
	assert_int_equal(nm, 1);
	assert_int_equal(mi.discarded, 2);
	/* and they populate again */
	struct dmb_range back[] = { { BASE_IOVA + 2 * PG, PG }, { BASE_IOVA + 5 * PG, PG } };
	assert_ok(c, dmb_populate(c, ctx, back, 2, NULL));
	check_dma(c, ctx, m, 2 * PG, BASE_IOVA + 2 * PG, 128, 31);
	check_dma(c, ctx, m, 5 * PG, BASE_IOVA + 5 * PG, 128, 32);
	close(m);
	dmb_close(c);
	assert_true(daemon_wait_idle(&d));
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

static void test_persistent_context_and_reclaim(void **state)
{
	start("[persist]\ngrace_period_s = 2\n");
	struct daemon d = as_daemon();
	struct dmb_client *a = connect_or_dump(&d, "vmm-1");
	uint64_t ctx;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
	assert_ok(a, dmb_context_create_persistent(a, "persistent-vm", &ctx, token));
	int m = make_memfd(1 << 20, 0);
	struct dmb_region_info ri;
	assert_ok(a, dmb_region_register(a, ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 1 << 20, DMB_READ | DMB_WRITE };
	assert_ok(a, dmb_map(a, ctx, &e));
	check_dma(a, ctx, m, 0, 0x100000, PG, 1);
	close(m);
	dmb_close(a); /* the VMM goes away; the context stays */

	/* ... and the broker restarts too, hard. */
	restart(SIGKILL);
	d.pid = H.pid;
	struct dmb_client *b = connect_or_dump(&d, "vmm-2");
	uint8_t wrong[DMB_RECLAIM_TOKEN_SIZE];
	memcpy(wrong, token, sizeof(wrong));
	wrong[0] ^= 1;
	assert_code(b, dmb_context_reclaim(b, ctx, wrong, NULL), DMB_PERMISSION_DENIED);
	uint8_t old[DMB_RECLAIM_TOKEN_SIZE];
	memcpy(old, token, sizeof(old));
	struct dmb_reclaim_info info;
	assert_ok(b, dmb_context_reclaim(b, ctx, token, &info));
	assert_int_equal(info.mappings, 1);
	assert_int_equal(info.n_regions, 1);
	assert_true(info.regions[0].fd >= 0);
	assert_memory_not_equal(old, token, sizeof(old)); /* a fresh token */
	/* The memfd came back: the mapping still reaches it, both ways. */
	check_dma(b, ctx, info.regions[0].fd, 0, 0x100000, PG, 2);
	check_dma(b, ctx, info.regions[0].fd, (1 << 20) - PG, 0x100000 + (1 << 20) - PG, PG, 3);
	/* A spent token is refused, for anyone. */
	struct dmb_client *c3 = connect_or_dump(&d, "vmm-3");
	assert_code(c3, dmb_context_reclaim(c3, ctx, old, NULL), DMB_PERMISSION_DENIED);
	dmb_close(c3);

	/* Unclaimed: released after the grace period (2 s here). */
	close(info.regions[0].fd);
	dmb_close(b);
	bool gone = false;
	for (int i = 0; i < 100 && !gone; i++) {
		struct timespec ts = { 0, 100 * 1000000L };
		nanosleep(&ts, NULL);
		gone = daemon_totals(&d).contexts == 0;
	}
	assert_true(gone);
	assert_int_equal(daemon_totals(&d).pinned_bytes, 0);
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

/* A persistent context that outlived its session still counts for its uid,
 * also after a restart: limits bound the uid, not its live sessions. */
static void test_persistent_context_counts_for_its_uid(void **state)
{
	start("[limits]\ncontexts_per_client = 1\n");
	struct daemon d = as_daemon();
	struct dmb_client *a = connect_or_dump(&d, "vmm-1");
	uint64_t ctx, other;
	uint8_t token[DMB_RECLAIM_TOKEN_SIZE];
	assert_ok(a, dmb_context_create_persistent(a, "kept", &ctx, token));
	dmb_close(a);
	struct dmb_client *b = connect_or_dump(&d, "vmm-2");
	assert_code(b, dmb_context_create(b, "more", &other), DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(b)->message, "contexts_per_client (1)"));
	dmb_close(b);

	restart(SIGKILL);
	d.pid = H.pid;
	b = connect_or_dump(&d, "vmm-3");
	assert_code(b, dmb_context_create(b, "more", &other), DMB_RESOURCE_EXHAUSTED);
	/* Its own uid takes it back without needing a second slot. */
	assert_ok(b, dmb_context_reclaim(b, ctx, token, NULL));
	assert_ok(b, dmb_context_destroy(b, ctx));
	assert_ok(b, dmb_context_create(b, "more", &other));
	dmb_close(b);
}

/* systemd drops an fd past FileDescriptorStoreMax with only a log line of
 * its own: an object journaled with it would be lost at the next restart.
 * The daemon knows the store's capacity ($FDSTORE) and refuses such an
 * object; everything it accepted comes back. */
static void test_fd_store_capacity(void **state)
{
	fds_destroy(&H);
	struct fds_opts o = fds_default_opts();
	o.store_max = 48; /* 32 for objects and connections, 16 in reserve */
	assert_int_equal(fds_init(&H, &o), 0);
	start(NULL);
	struct daemon d = as_daemon();
	struct dmb_client *c = connect_or_dump(&d, "filler");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "full", &ctx));
	int m = make_memfd(PG, 9);
	struct dmb_region_info ri;
	int n = 0, r;
	while (n < 200 && (r = dmb_region_register(c, ctx, m, 0, &ri)) == 0)
		n++;
	fprintf(stderr, "fd store: %d regions kept, then: %s\n", n, dmb_last_error(c)->message);
	assert_true(n > 0 && n < 200);
	assert_int_equal(dmb_last_error(c)->code, DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(c)->message, "fd store is full"));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, PG, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &e));
	assert_false(fds_log_has(&H, "Cannot store more fds"));

	restart(SIGKILL);
	d.pid = H.pid;
	/* The connection came back with everything it had. */
	struct dmb_stats st;
	for (int i = 0; i < 50; i++) {
		r = dmb_stats(c, ctx, &st);
		if (r != -EAGAIN)
			break;
	}
	assert_ok(c, r);
	assert_int_equal(st.regions, (uint64_t)n);
	assert_false(fds_log_has(&H, "could not be re-adopted"));
	check_dma(c, ctx, m, 0, 0x100000, PG, 4);
	close(m);
	dmb_close(c);
}

static void test_session_ended_while_down(void **state)
{
	start(NULL);
	struct daemon d = as_daemon();
	struct dmb_client *a = connect_or_dump(&d, "short");
	uint64_t ctx;
	assert_ok(a, dmb_context_create(a, "gone-with-session", &ctx));
	int m = make_memfd(1 << 20, 0);
	struct dmb_region_info ri;
	assert_ok(a, dmb_region_register(a, ctx, m, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 1 << 20, DMB_READ | DMB_WRITE };
	assert_ok(a, dmb_map(a, ctx, &e));
	assert_int_equal(fds_stop(&H, SIGKILL) >= 0, 1);
	dmb_close(a); /* while the daemon is down */
	close(m);
	restart(0);
	d.pid = H.pid;
	assert_true(daemon_wait_idle(&d));
	assert_int_equal(fds_stop(&H, SIGTERM) >= 0, 1);
}

static int setup(void **state)
{
	struct fds_opts o = fds_default_opts();
	o.quiet = true;
	return fds_init(&H, &o) < 0 ? -1 : 0;
}

static int teardown(void **state)
{
	fds_destroy(&H);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_restart_under_load, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sigkill_mid_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_client_across_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shared_memfd_across_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noiommu_across_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_granular_across_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_discard_crash_before_kernel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_persistent_context_and_reclaim, setup, teardown),
		cmocka_unit_test_setup_teardown(test_session_ended_while_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_persistent_context_counts_for_its_uid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fd_store_capacity, setup, teardown),
	};
	return cmocka_run_group_tests_name("restart", tests, NULL, NULL);
}
