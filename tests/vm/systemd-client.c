/* SPDX-License-Identifier: MIT */
/*
 * vm-systemd-client - the VMM stand-in of the vm-systemd test: one libdmabroker session
 * that lives across every restart systemd makes of dmabroker.service, and an edu that
 * keeps DMAing through the broker's mappings all along.
 *
 *   vm-systemd-client SOCKET BDF      (commands on stdin, one answer line each on stdout)
 *
 * At start it connects to SOCKET (with dmabroker.socket listening and the service not
 * yet started, this connection is what starts it), creates a context, opens BDF (an
 * edu) with its device fd handed back, enables memory + bus master, registers a 2 MiB
 * sealed memfd and maps it as A = IOVA 0x100000 and B = 0x8000000 (1 MiB each). Then a
 * thread loops edu round trips RAM -> edu -> RAM, A -> B and B -> A, 1..4095 bytes at
 * moving offsets, checking every byte and a guard byte on each side; it never talks to
 * the broker. It answers "ready pid=<daemon pid> session=<id>" (or "fail: ...") and
 * reads commands:
 *
 *   dma      waits for 2 more round trips (bytes checked)         -> "ok rounds=N"
 *   check    2 more round trips, then on the session: the context's mappings are exactly
 *            A and B, the daemon's status (pid, pinned bytes, mappings); calls lost in a
 *            restart (-EAGAIN) are retried; events dispatched (RESTARTED counted, any
 *            other fails)                                 -> "ok pid=P rounds=N restarted=R"
 *   unmap    B is unmapped through the broker: an edu DMA to it faults (its DMAR line on
 *            /dev/kmsg) and moves nothing; A still moves the right bytes    -> "ok ..."
 *   quit     stops the loop, closes the session, exits 0
 *
 * Every failure answers "fail: <why>" and the program exits 1; every wait is bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "dmabroker.h"
#include "edu.h"

#define MiB (1ull << 20)
#define IOVA_A 0x100000ull
#define IOVA_B 0x8000000ull /* below edu's 256 MiB DMA mask */
#define MAP_LEN MiB
#define RAM_SIZE (2 * MiB) /* A = memfd [0, 1M), B = memfd [1M, 2M) */
#define WAIT_MS 30000
#define FAULT_WAIT_MS 3000
#define CLIENT_TIMEOUT_MS 30000

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static uint8_t pattern(uint64_t seed, size_t i)
{
	return (uint8_t)(i * 7 + 13 + (i >> 8) + seed * 31 + (seed >> 3));
}

/* "<what>: <errno text> [broker: CODE, errno N: sentence]" into buf. */
static void bwhy(char *buf, size_t len, struct dmb_client *c, int r, const char *what)
{
	const struct dmb_error *e = dmb_last_error(c);

	snprintf(buf, len, "%s: %s [broker: %s, errno %d: %s]", what, strerror(-r),
		 dmb_error_code_name(e->code), e->sys_errno, e->message);
}

/* ---- the DMA loop ---------------------------------------------------------------- */

static struct edu E = { .device_fd = -1 };
static uint8_t *ram;
static pthread_mutex_t dma_lock = PTHREAD_MUTEX_INITIALIZER; /* one DMA at a time */
static atomic_bool dma_stop, dma_failed;
static atomic_uint_fast64_t dma_rounds;
static char dma_failure[512];

/* count bytes from (src_iova, memfd src_off) through the edu buffer to (dst_iova,
 * memfd dst_off); 0 if every byte arrived and the guard byte on each side is intact. */
static int round_trip(uint64_t seed, uint64_t src_iova, size_t src_off, uint64_t dst_iova,
		      size_t dst_off, uint32_t count, char *why, size_t wl)
{
	size_t lo = dst_off - 1, hi = dst_off + count + 1;
	int r;

	for (size_t i = 0; i < count; i++)
		ram[src_off + i] = pattern(seed, i);
	memset(ram + lo, 0xa5, hi - lo);
	pthread_mutex_lock(&dma_lock);
	r = edu_dma_to_device(&E, src_iova, 0, count, 0);
	if (r == 0)
		r = edu_dma_from_device(&E, 0, dst_iova, count, 0);
	pthread_mutex_unlock(&dma_lock);
	if (r < 0) {
		snprintf(why, wl, "round trip %" PRIu64 ": edu DMA 0x%" PRIx64 " -> 0x%" PRIx64
			 " (%u bytes): %s", seed, src_iova, dst_iova, count, strerror(-r));
		return -1;
	}
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < count; i++)
		if (ram[dst_off + i] != pattern(seed, i) && bad++ == 0)
			first = i;
	if (bad) {
		snprintf(why, wl, "round trip %" PRIu64 ": 0x%" PRIx64 " -> edu -> 0x%" PRIx64
			 " (%u bytes): %zu wrong bytes, the first at +%zu is 0x%02x, want 0x%02x",
			 seed, src_iova, dst_iova, count, bad, first, ram[dst_off + first],
			 pattern(seed, first));
		return -1;
	}
	if (ram[lo] != 0xa5 || ram[hi - 1] != 0xa5) {
		snprintf(why, wl, "round trip %" PRIu64 ": DMA to 0x%" PRIx64 " (%u bytes) changed "
			 "a byte next to its destination", seed, dst_iova, count);
		return -1;
	}
	return 0;
}

static void *dma_main(void *arg)
{
	(void)arg;
	for (uint64_t i = 0; !atomic_load(&dma_stop); i++) {
		uint32_t count = i % 5 == 0 ? EDU_DMA_MAX : 1 + (uint32_t)((i * 1237 + 511) % EDU_DMA_MAX);
		size_t src = (size_t)((i * 40961 + 77) % (MAP_LEN - count));
		size_t dst = 1 + (size_t)((i * 69997 + 4093) % (MAP_LEN - count - 2));
		bool a_to_b = !(i & 1);
		uint64_t si = (a_to_b ? IOVA_A : IOVA_B) + src, di = (a_to_b ? IOVA_B : IOVA_A) + dst;
		size_t so = (a_to_b ? 0 : MAP_LEN) + src, dof = (a_to_b ? MAP_LEN : 0) + dst;

		if (round_trip(i, si, so, di, dof, count, dma_failure, sizeof(dma_failure)) < 0) {
			atomic_store(&dma_failed, true);
			break;
		}
		atomic_fetch_add(&dma_rounds, 1);
	}
	return NULL;
}

/* Waits for n more round trips: 0, or -1 with why filled. */
static int wait_rounds(uint64_t n, char *why, size_t wl)
{
	uint64_t want = atomic_load(&dma_rounds) + n;
	int64_t deadline = mono_ms() + WAIT_MS;

	while (atomic_load(&dma_rounds) < want) {
		if (atomic_load(&dma_failed)) {
			snprintf(why, wl, "%s", dma_failure);
			return -1;
		}
		if (mono_ms() > deadline) {
			snprintf(why, wl, "no DMA progress in %d ms (%" PRIu64 " round trips so far)",
				 WAIT_MS, atomic_load(&dma_rounds));
			return -1;
		}
		sleep_ms(10);
	}
	return 0;
}

/* ---- the session ----------------------------------------------------------------- */

static struct dmb_client *C;
static uint64_t ctx;
static unsigned restarted;
static char ev_failure[400];

static void on_event(const struct dmb_event *ev, void *opaque)
{
	(void)opaque;
	if (ev->kind == DMB_EV_RESTARTED) {
		restarted++;
		return;
	}
	if (!ev_failure[0])
		snprintf(ev_failure, sizeof(ev_failure), "unexpected event kind %u (context %" PRIu64
			 "): %s", ev->kind, ev->context, ev->message ? ev->message : "");
}

/* A call that a restart cut short answers -EAGAIN: ask again. */
#define RETRY(call)                                                                      \
	({                                                                               \
		int _r, _n = 0;                                                          \
		while ((_r = (call)) == -EAGAIN && _n++ < 200)                           \
			sleep_ms(50);                                                    \
		_r;                                                                      \
	})

static int session_check(unsigned *pid, char *why, size_t wl)
{
	struct dmb_mapping_info mi[8];
	size_t n = 0;
	bool more = false;
	uint64_t next = 0;
	int r = RETRY(dmb_list_mappings(C, ctx, 0, mi, 8, &n, &more, &next));

	if (r < 0) {
		bwhy(why, wl, C, r, "dmb_list_mappings");
		return -1;
	}
	if (n != 2 || more || mi[0].iova != IOVA_A || mi[0].length != MAP_LEN ||
	    mi[1].iova != IOVA_B || mi[1].length != MAP_LEN || mi[0].revoked || mi[1].revoked) {
		snprintf(why, wl, "the context's mappings are not A and B: %zu listed%s", n,
			 more ? " and more" : "");
		return -1;
	}
	struct dmb_status ds;
	r = RETRY(dmb_status(C, &ds));
	if (r < 0) {
		bwhy(why, wl, C, r, "dmb_status");
		return -1;
	}
	if (ds.totals.pinned_bytes != 2 * MAP_LEN || ds.totals.mappings != 2) {
		snprintf(why, wl, "daemon %u: pinned %" PRIu64 " bytes in %" PRIu64 " mappings, "
			 "want %llu in 2", ds.pid, ds.totals.pinned_bytes, ds.totals.mappings,
			 (unsigned long long)(2 * MAP_LEN));
		return -1;
	}
	r = dmb_dispatch(C, on_event, NULL);
	if (r < 0) {
		bwhy(why, wl, C, r, "dmb_dispatch");
		return -1;
	}
	if (ev_failure[0]) {
		snprintf(why, wl, "%s", ev_failure);
		return -1;
	}
	*pid = ds.pid;
	return 0;
}

static int kmsg_open_end(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd >= 0 && lseek(fd, 0, SEEK_END) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Waits for a DMAR fault record naming the device ("[01:00.0]") and "fault addr 0x<iova>". */
static int kmsg_wait_fault(int fd, const char *bdf, uint64_t iova, char *line, size_t len)
{
	int64_t deadline = mono_ms() + FAULT_WAIT_MS;
	size_t bl = strlen(bdf);
	char dev[24], want[48], rec[8192];

	snprintf(dev, sizeof(dev), "%s]", bl > 7 ? bdf + bl - 7 : bdf); /* 6.x "[01:00.0]", 7.x "[0000:01:00.0]" */
	snprintf(want, sizeof(want), "fault addr 0x%" PRIx64 " ", iova);
	for (;;) {
		ssize_t n;

		while ((n = read(fd, rec, sizeof(rec) - 1)) > 0 || (n < 0 && errno == EPIPE)) {
			if (n <= 0)
				continue;
			rec[n] = '\0';
			char *t = strchr(rec, ';');
			t = t ? t + 1 : rec;
			char *nl = strchr(t, '\n');
			if (nl)
				*nl = ' '; /* so that "fault addr 0x... " also matches at the end */
			if (strstr(t, "DMAR") && strstr(t, dev) && strstr(t, want)) {
				snprintf(line, len, "%.900s", t);
				return 0;
			}
		}
		if (mono_ms() >= deadline)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, 50);
	}
}

static int unmap_b(const char *bdf, char *why, size_t wl)
{
	uint64_t unmapped = 0;
	char line[1024];
	int kmsg = kmsg_open_end(), ret = -1;

	if (kmsg < 0) {
		snprintf(why, wl, "open /dev/kmsg: %s", strerror(errno));
		return -1;
	}
	/* (The DMA loop has stopped: from here on every DMA is this function's.) */
	int r = RETRY(dmb_unmap(C, ctx, IOVA_B, MAP_LEN, &unmapped));
	if (r < 0) {
		bwhy(why, wl, C, r, "dmb_unmap B");
		goto out;
	}
	if (unmapped != MAP_LEN) {
		snprintf(why, wl, "dmb_unmap B unmapped %" PRIu64 " bytes", unmapped);
		goto out;
	}
	const size_t woff = MAP_LEN + 0x2000; /* memfd bytes behind IOVA_B + 0x2000 */
	memset(ram + woff, 0x3c, 256);
	pthread_mutex_lock(&dma_lock);
	r = edu_dma_from_device(&E, 0, IOVA_B + 0x2000, 256, 0);
	pthread_mutex_unlock(&dma_lock);
	if (r < 0) {
		snprintf(why, wl, "edu DMA to the unmapped IOVA: %s", strerror(-r));
		goto out;
	}
	if (kmsg_wait_fault(kmsg, bdf, IOVA_B + 0x2000, line, sizeof(line)) < 0) {
		snprintf(why, wl, "no DMAR fault for IOVA 0x%llx from %s within %d ms after the "
			 "broker unmapped it", IOVA_B + 0x2000, bdf, FAULT_WAIT_MS);
		goto out;
	}
	for (size_t i = 0; i < 256; i++)
		if (ram[woff + i] != 0x3c) {
			snprintf(why, wl, "the faulting DMA changed memfd byte +0x%zx", woff + i);
			goto out;
		}
	if (round_trip(1000003, IOVA_A + 0x100, 0x100, IOVA_A + 0x80000, 0x80000, EDU_DMA_MAX,
		       why, wl) < 0)
		goto out;
	snprintf(why, wl, "B unmapped: a DMA to it faults (kernel: %.200s) and moves no byte; "
		 "A still moves the right bytes", line);
	ret = 0;
out:
	close(kmsg);
	return ret;
}

static int setup(const char *sock, const char *bdf, unsigned *pid, char *why, size_t wl)
{
	struct dmb_device_info di;
	struct dmb_region_info ri;
	int r, dev_fd = -1;

	r = dmb_connect(sock, "vm-systemd-client", &C);
	if (r < 0) {
		C = NULL;
		snprintf(why, wl, "dmb_connect %s: %s", sock, strerror(-r));
		return -1;
	}
	dmb_set_timeout(C, CLIENT_TIMEOUT_MS);
	if (strcmp(dmb_server_info(C)->backend, "vfio-type1")) {
		snprintf(why, wl, "the broker's backend is '%s', not vfio-type1",
			 dmb_server_info(C)->backend);
		return -1;
	}
	if ((r = dmb_context_create(C, "vm-systemd", &ctx)) < 0) {
		bwhy(why, wl, C, r, "dmb_context_create");
		return -1;
	}
	if ((r = dmb_device_open(C, ctx, bdf, &dev_fd, &di)) < 0 || dev_fd < 0) {
		bwhy(why, wl, C, r, "dmb_device_open");
		return -1;
	}
	uint32_t id = 0;
	if ((r = edu_open(&E, dev_fd)) < 0 || (r = edu_enable(&E)) < 0 ||
	    (r = edu_read_id(&E, &id)) < 0 || id != EDU_ID_VALUE) {
		snprintf(why, wl, "edu %s: open/enable: %s, ID 0x%08" PRIx32, bdf,
			 r < 0 ? strerror(-r) : "ok", id);
		return -1;
	}
	int mfd = memfd_create("vm-systemd-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0 || ftruncate(mfd, RAM_SIZE) < 0 || fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		snprintf(why, wl, "memfd: %s", strerror(errno));
		return -1;
	}
	void *p = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (p == MAP_FAILED) {
		snprintf(why, wl, "mmap memfd: %s", strerror(errno));
		return -1;
	}
	ram = p;
	if ((r = dmb_region_register(C, ctx, mfd, 0, &ri)) < 0) {
		bwhy(why, wl, C, r, "dmb_region_register");
		return -1;
	}
	struct dmb_map_entry me[2] = {
		{ ri.region, 0, IOVA_A, MAP_LEN, DMB_READ | DMB_WRITE },
		{ ri.region, MAP_LEN, IOVA_B, MAP_LEN, DMB_READ | DMB_WRITE },
	};
	if ((r = dmb_map_batch(C, ctx, me, 2)) < 0) {
		bwhy(why, wl, C, r, "dmb_map_batch");
		return -1;
	}
	return session_check(pid, why, wl);
}

int main(int argc, char **argv)
{
	char why[1024], cmd[64];
	unsigned pid = 0;
	pthread_t t;

	if (argc != 3) {
		fprintf(stderr, "usage: %s SOCKET BDF\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (setup(argv[1], argv[2], &pid, why, sizeof(why)) < 0)
		goto fail;
	if (pthread_create(&t, NULL, dma_main, NULL)) {
		snprintf(why, sizeof(why), "pthread_create failed");
		goto fail;
	}
	if (wait_rounds(2, why, sizeof(why)) < 0)
		goto fail;
	printf("ready pid=%u session=%" PRIu64 " context=%" PRIu64 "\n", pid,
	       dmb_server_info(C)->session_id, ctx);

	while (fgets(cmd, sizeof(cmd), stdin)) {
		cmd[strcspn(cmd, "\n")] = '\0';
		if (strcmp(cmd, "dma") == 0) {
			if (wait_rounds(2, why, sizeof(why)) < 0)
				goto fail;
			printf("ok rounds=%" PRIu64 "\n", atomic_load(&dma_rounds));
		} else if (strcmp(cmd, "check") == 0) {
			if (wait_rounds(2, why, sizeof(why)) < 0 || session_check(&pid, why, sizeof(why)) < 0)
				goto fail;
			printf("ok pid=%u rounds=%" PRIu64 " restarted=%u\n", pid,
			       atomic_load(&dma_rounds), restarted);
		} else if (strcmp(cmd, "unmap") == 0) {
			if (wait_rounds(2, why, sizeof(why)) < 0)
				goto fail;
			atomic_store(&dma_stop, true);
			pthread_join(t, NULL);
			if (atomic_load(&dma_failed)) {
				snprintf(why, sizeof(why), "%s", dma_failure);
				goto fail;
			}
			if (unmap_b(argv[2], why, sizeof(why)) < 0)
				goto fail;
			printf("ok %s\n", why);
		} else if (strcmp(cmd, "quit") == 0) {
			atomic_store(&dma_stop, true);
			dmb_close(C);
			printf("ok bye\n");
			return 0;
		} else {
			printf("fail: unknown command '%s'\n", cmd);
			return 1;
		}
	}
	return 0;
fail:
	printf("fail: %s\n", why);
	return 1;
}
