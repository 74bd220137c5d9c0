/* SPDX-License-Identifier: MIT */
/*
 * vm-restart - the guest side of the vm-restart test (issue 5, VM tier): edu keeps
 * moving bytes through the broker's VFIO type1 mappings while dmabrokerd is restarted
 * under a systemd stand-in, several times, by SIGTERM and by SIGKILL.
 *
 *   vm-restart DMABROKERD CONFIG BDF RESTARTS
 *
 * This program plays systemd for the daemon with tests/integration/fdstore.[ch] (the
 * notify socket that takes FDSTORE=1 fds, LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID on the
 * next start, the socket unit's listener kept across restarts) and runs
 * `DMABROKERD --backend=vfio-type1 --config CONFIG` under it. Then:
 *
 *   - setup: one client session (libdmabroker) creates a context, opens BDF with its
 *     device fd handed back, enables memory + bus master, registers a 2 MiB memfd
 *     (F_SEAL_SHRINK) and maps it as two 1 MiB mappings, A at IOVA 0x100000 and B at
 *     0x8000000 (edu: IOVAs below 256 MiB);
 *   - the DMA thread loops edu round trips RAM -> edu buffer -> RAM, A -> B and B -> A
 *     alternately, 1..4095 bytes at moving offsets (page crossings included), and
 *     checks every destination byte and the byte on each side of it. It never talks
 *     to the broker: the device DMAs through whatever the IOMMU holds;
 *   - the client thread owns the session: it keeps listing the context's mappings
 *     (exactly A and B), asking the context's stats and the daemon's status (pid,
 *     pinned bytes), retrying calls that return -EAGAIN (a request lost in a restart),
 *     and counts RESTARTED events; any other event (context lost, revoked) fails;
 *   - the main thread restarts the daemon RESTARTS times, SIGTERM and SIGKILL in turn:
 *     it waits for two DMA round trips with the daemon up, stops it, waits for two
 *     round trips with no daemon process at all, starts the next one (READY=1), then
 *     requires a RESTARTED event and an answer from the new pid on the same session,
 *     and these lines in the daemon's log for that restart: the SIGTERM instance's
 *     "stopping with 1 context(s) and 2 mapping(s) kept in the fd store", the new
 *     instance's "restored 1 context(s) and 2 mapping(s) ... (0 mapped again, 0 stray
 *     removed, 0 context(s) lost)", type1's "adopted 2 mappings: 2 handed over, 0 taken
 *     over" (SIGTERM) or "0 handed over, 2 taken over" (SIGKILL), "session N ...
 *     adopted from the fd store"; no error or warning line at all;
 *   - /dev/kmsg, read from before the first mapping to the end of the last restart,
 *     must hold no DMAR line (an IOMMU fault would be one);
 *   - finally B is unmapped through the broker: a DMA to it now faults (the DMAR line
 *     for that IOVA and device) and moves no byte, A still works. So the mappings the
 *     device used all along were the broker's.
 *   - then a granular mapping (16 granules of 4 KiB at IOVA 0x4000000, granules 2-3
 *     discarded) across one more SIGKILL restart: populated granules move the right
 *     bytes, a DMA to the discarded granule faults (its DMAR line) and moves no byte,
 *     and populated again through the new daemon it moves bytes.
 *
 * Prints "vm-restart: ok: ..." per step and "vm-restart: FAIL: ..." (with the daemon's
 * log) on the first failure; exits 0 only if everything passed. Every wait is bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dmabroker.h"
#include "edu.h"
#include "fdstore.h"

#define MiB (1ull << 20)
#define IOVA_A 0x100000ull
#define IOVA_B 0x8000000ull /* 128 MiB: below edu's 256 MiB DMA mask */
#define MAP_LEN MiB
#define RAM_SIZE (2 * MiB)  /* A = memfd [0, 1M), B = memfd [1M, 2M) */
#define FAULT_WAIT_MS 3000
#define WAIT_MS 20000       /* any single wait of the main thread */
#define CLIENT_TIMEOUT_MS 30000
#define CLIENT_PERIOD_MS 5
#define ROUNDS_UP 2         /* DMA round trips with the daemon up before each stop */
#define ROUNDS_DOWN 2       /* ... and with no daemon process, before each start */

/* ---- output ---------------------------------------------------------------------- */

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void vsay(const char *what, const char *fmt, va_list ap)
{
	pthread_mutex_lock(&out_lock);
	printf("vm-restart: %s", what);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

static void ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ok(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsay("ok: ", fmt, ap);
	va_end(ap);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsay("", fmt, ap);
	va_end(ap);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsay("FAIL: ", fmt, ap);
	va_end(ap);
	return -1;
}

/* "<what>: <errno text> [broker: CODE, errno N: sentence]" into buf. */
static void bwhy(char *buf, size_t len, struct dmb_client *c, int r, const char *what)
{
	const struct dmb_error *e = dmb_last_error(c);

	snprintf(buf, len, "%s: %s [broker: %s, errno %d: %s]", what, strerror(-r),
		 dmb_error_code_name(e->code), e->sys_errno, e->message);
}

/* The backend under test: $VMTEST_WANT_BACKEND (set by the guest's /init from the kernel
 * command line), vfio-type1 by default. */
static const char *want_backend(void)
{
	const char *b = getenv("VMTEST_WANT_BACKEND");
	return b && *b ? b : "vfio-type1";
}

static bool is_iommufd(void)
{
	return strcmp(want_backend(), "iommufd") == 0;
}

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

/* ---- guest RAM ------------------------------------------------------------------- */

struct ram {
	int fd;
	uint8_t *p;
	size_t size;
};

static int ram_new(struct ram *m, size_t size)
{
	m->size = size;
	m->p = NULL;
	m->fd = memfd_create("vm-restart-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (m->fd < 0)
		return fail("memfd_create: %s", strerror(errno));
	if (ftruncate(m->fd, (off_t)size) < 0 || fcntl(m->fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		return fail("memfd size/seal: %s", strerror(errno));
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (p == MAP_FAILED)
		return fail("mmap memfd: %s", strerror(errno));
	m->p = p;
	return 0;
}

static void ram_free(struct ram *m)
{
	if (m->p)
		munmap(m->p, m->size);
	if (m->fd >= 0)
		close(m->fd);
	m->p = NULL;
	m->fd = -1;
}

static uint8_t pattern(uint64_t seed, size_t i)
{
	return (uint8_t)(i * 7 + 13 + (i >> 8) + seed * 31 + (seed >> 3));
}

/* ---- kernel log ------------------------------------------------------------------ */

/* /dev/kmsg positioned after every record logged so far. */
static int kmsg_open(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return fail("open /dev/kmsg: %s", strerror(errno));
	if (lseek(fd, 0, SEEK_END) < 0) {
		close(fd);
		return fail("seek /dev/kmsg: %s", strerror(errno));
	}
	return fd;
}

/* Next record's text (no prefix, no newline) into msg: 1, or 0 when none waits. */
static int kmsg_next(int fd, char *msg, size_t len)
{
	char rec[8192];

	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);

		if (n < 0 && errno == EPIPE)
			continue; /* records overwritten under us: keep reading */
		if (n <= 0)
			return 0;
		rec[n] = '\0';
		char *t = strchr(rec, ';'); /* "prio,seq,usec,flags;text\n" */
		t = t ? t + 1 : rec;
		char *nl = strchr(t, '\n');
		if (nl)
			*nl = '\0';
		size_t tl = strnlen(t, len - 1);
		memcpy(msg, t, tl);
		msg[tl] = '\0';
		return 1;
	}
}

/* Reads every new record; prints and counts the DMAR ones (IOMMU faults). */
static unsigned kmsg_scan_dmar(int fd)
{
	char msg[1024];
	unsigned n = 0;

	while (kmsg_next(fd, msg, sizeof(msg)) > 0)
		if (strstr(msg, "DMAR")) {
			note("kernel: %s", msg);
			n++;
		}
	return n;
}

/* "fault addr 0x<iova>" as a whole word. */
static bool has_fault_addr(const char *msg, uint64_t iova)
{
	char want[48];
	size_t n = (size_t)snprintf(want, sizeof(want), "fault addr 0x%" PRIx64, iova);

	for (const char *p = strstr(msg, want); p; p = strstr(p + 1, want)) {
		char next = p[n];

		if (!((next >= '0' && next <= '9') || (next >= 'a' && next <= 'f')))
			return true;
	}
	return false;
}

/* Waits for a DMAR fault record naming the device and iova. */
static int kmsg_wait_fault(int fd, const char *bdf, uint64_t iova, char *line, size_t len)
{
	int64_t deadline = mono_ms() + FAULT_WAIT_MS;
	size_t bl = strlen(bdf);
	char dev[24], msg[1024];

	snprintf(dev, sizeof(dev), "%s]", bl > 7 ? bdf + bl - 7 : bdf); /* 6.x "[01:00.0]", 7.x "[0000:01:00.0]" */
	for (;;) {
		while (kmsg_next(fd, msg, sizeof(msg)) > 0)
			if (strstr(msg, "DMAR") && strstr(msg, dev) && has_fault_addr(msg, iova)) {
				size_t ml = strnlen(msg, len - 1);
				memcpy(line, msg, ml);
				line[ml] = '\0';
				return 0;
			}
		if (mono_ms() >= deadline)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, 50);
	}
}

/* ---- the DMA thread -------------------------------------------------------------- */

struct dma_loop {
	pthread_t t;
	const struct edu *e;
	struct ram *m;
	atomic_bool stop;
	atomic_bool failed;
	atomic_uint_fast64_t rounds;      /* round trips that passed (2 DMAs each) */
	atomic_uint_fast64_t down_rounds; /* of which wholly while no daemon process existed */
	atomic_uint down_gen;             /* odd while no daemon process exists (main thread) */
	char failure[512];
};

/* One round trip: count bytes from (src_iova, memfd src_off) through the edu buffer
 * to (dst_iova, memfd dst_off); 0 if every byte arrived and none beside them moved. */
static int round_trip(struct dma_loop *d, uint64_t seed, uint64_t src_iova, size_t src_off,
		      uint64_t dst_iova, size_t dst_off, uint32_t count)
{
	uint8_t *p = d->m->p;
	size_t lo = dst_off - 1, hi = dst_off + count + 1; /* callers keep these inside */
	int r;

	for (size_t i = 0; i < count; i++)
		p[src_off + i] = pattern(seed, i);
	memset(p + lo, 0xa5, hi - lo);
	r = edu_dma_to_device(d->e, src_iova, 0, count, 0);
	if (r == 0)
		r = edu_dma_from_device(d->e, 0, dst_iova, count, 0);
	if (r < 0) {
		snprintf(d->failure, sizeof(d->failure),
			 "round trip %" PRIu64 ": edu DMA 0x%" PRIx64 " -> edu -> 0x%" PRIx64
			 " (%u bytes): %s",
			 seed, src_iova, dst_iova, count, strerror(-r));
		return -1;
	}
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < count; i++)
		if (p[dst_off + i] != pattern(seed, i) && bad++ == 0)
			first = i;
	if (bad) {
		snprintf(d->failure, sizeof(d->failure),
			 "round trip %" PRIu64 ": 0x%" PRIx64 " -> edu -> 0x%" PRIx64
			 " (%u bytes): %zu wrong bytes, the first at +%zu is 0x%02x, want 0x%02x",
			 seed, src_iova, dst_iova, count, bad, first, p[dst_off + first],
			 pattern(seed, first));
		return -1;
	}
	if (p[lo] != 0xa5 || p[hi - 1] != 0xa5) {
		snprintf(d->failure, sizeof(d->failure),
			 "round trip %" PRIu64 ": DMA to 0x%" PRIx64 " (%u bytes) changed a byte "
			 "next to its destination",
			 seed, dst_iova, count);
		return -1;
	}
	return 0;
}

static void *dma_main(void *arg)
{
	struct dma_loop *d = arg;

	for (uint64_t i = 0; !atomic_load(&d->stop); i++) {
		/* 1..4095 bytes (edu's limit), at offsets that move through both
		 * mappings and often cross a page; the destination keeps a guard byte
		 * on each side inside its mapping. */
		uint32_t count = i % 5 == 0 ? EDU_DMA_MAX : 1 + (uint32_t)((i * 1237 + 511) % EDU_DMA_MAX);
		size_t src = (size_t)((i * 40961 + 77) % (MAP_LEN - count));
		size_t dst = 1 + (size_t)((i * 69997 + 4093) % (MAP_LEN - count - 2));
		bool a_to_b = !(i & 1);
		uint64_t si = (a_to_b ? IOVA_A : IOVA_B) + src, di = (a_to_b ? IOVA_B : IOVA_A) + dst;
		size_t so = (a_to_b ? 0 : MAP_LEN) + src, dof = (a_to_b ? MAP_LEN : 0) + dst;
		unsigned g0 = atomic_load(&d->down_gen);

		if (round_trip(d, i, si, so, di, dof, count) < 0) {
			atomic_store(&d->failed, true);
			break;
		}
		atomic_fetch_add(&d->rounds, 1);
		if ((g0 & 1) && atomic_load(&d->down_gen) == g0)
			atomic_fetch_add(&d->down_rounds, 1);
	}
	return NULL;
}

/* ---- the client thread ----------------------------------------------------------- */

struct client_loop {
	pthread_t t;
	struct dmb_client *c;
	uint64_t ctx;
	atomic_bool stop;
	atomic_bool failed;
	atomic_uint restarted;          /* RESTARTED events */
	atomic_uint_fast64_t calls;     /* list + stats + status rounds that passed */
	atomic_uint_fast64_t retries;   /* calls retried after -EAGAIN */
	atomic_int last_pid;            /* the daemon pid the last status came from */
	char failure[512];
};

static void on_event(const struct dmb_event *ev, void *opaque)
{
	struct client_loop *cl = opaque;

	if (ev->kind == DMB_EV_RESTARTED) {
		atomic_fetch_add(&cl->restarted, 1);
		return;
	}
	if (!atomic_load(&cl->failed))
		snprintf(cl->failure, sizeof(cl->failure),
			 "unexpected event kind %u (context %" PRIu64 "): %s", ev->kind, ev->context,
			 ev->message ? ev->message : "");
	atomic_store(&cl->failed, true);
}

#define RETRY(cl, call)                                                                  \
	({                                                                                   \
		int _r, _n = 0;                                                              \
		while ((_r = (call)) == -EAGAIN && _n++ < 100) {                             \
			atomic_fetch_add(&(cl)->retries, 1);                                 \
			sleep_ms(10);                                                        \
		}                                                                            \
		_r;                                                                          \
	})

/* (A call cut short by the main thread's shutdown() after a failure is no news.) */
#define CFAIL(...)                                                                       \
	do {                                                                             \
		if (atomic_load(&cl->stop))                                              \
			return NULL;                                                     \
		snprintf(cl->failure, sizeof(cl->failure), __VA_ARGS__);                \
		atomic_store(&cl->failed, true);                                         \
		return NULL;                                                             \
	} while (0)

static void *client_main(void *arg)
{
	struct client_loop *cl = arg;
	char why[400];

	while (!atomic_load(&cl->stop) && !atomic_load(&cl->failed)) {
		struct dmb_mapping_info mi[8];
		size_t n = 0;
		bool more = false;
		uint64_t next = 0;
		int r = RETRY(cl, dmb_list_mappings(cl->c, cl->ctx, 0, mi, 8, &n, &more, &next));
		if (r < 0) {
			bwhy(why, sizeof(why), cl->c, r, "dmb_list_mappings");
			CFAIL("%s", why);
		}
		if (n != 2 || more || mi[0].iova != IOVA_A || mi[0].length != MAP_LEN ||
		    mi[0].offset != 0 || mi[1].iova != IOVA_B || mi[1].length != MAP_LEN ||
		    mi[1].offset != MAP_LEN || mi[0].revoked || mi[1].revoked)
			CFAIL("the context's mappings are not A and B: %zu listed%s, first at 0x%" PRIx64
			      " (+0x%" PRIx64 ")",
			      n, more ? " and more" : "", n ? mi[0].iova : 0, n ? mi[0].length : 0);
		struct dmb_stats st;
		r = RETRY(cl, dmb_stats(cl->c, cl->ctx, &st));
		if (r < 0) {
			bwhy(why, sizeof(why), cl->c, r, "dmb_stats");
			CFAIL("%s", why);
		}
		if (st.mappings != 2 || st.mapped_bytes != 2 * MAP_LEN || st.devices != 1)
			CFAIL("context stats: %" PRIu64 " mappings, %" PRIu64 " bytes, %u devices",
			      st.mappings, st.mapped_bytes, st.devices);
		struct dmb_status ds;
		r = RETRY(cl, dmb_status(cl->c, &ds));
		if (r < 0) {
			bwhy(why, sizeof(why), cl->c, r, "dmb_status");
			CFAIL("%s", why);
		}
		if (ds.totals.pinned_bytes != 2 * MAP_LEN || ds.totals.mappings != 2)
			CFAIL("daemon %u: pinned %" PRIu64 " bytes in %" PRIu64 " mappings, want %llu in 2",
			      ds.pid, ds.totals.pinned_bytes, ds.totals.mappings,
			      (unsigned long long)(2 * MAP_LEN));
		atomic_store(&cl->last_pid, (int)ds.pid);
		atomic_fetch_add(&cl->calls, 1);
		r = dmb_dispatch(cl->c, on_event, cl);
		if (r < 0) {
			bwhy(why, sizeof(why), cl->c, r, "dmb_dispatch");
			CFAIL("%s", why);
		}
		sleep_ms(CLIENT_PERIOD_MS);
	}
	return NULL;
}

/* ---- the daemon under the systemd stand-in --------------------------------------- */

static struct fds H;

/* The daemon's log from byte off on (malloc'ed, NUL-terminated); *end gets its size. */
static char *log_since(off_t off, off_t *end)
{
	int fd = open(H.log, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	char *buf = NULL;

	*end = off;
	if (fd < 0 || fstat(fd, &sb) < 0)
		goto out;
	if (sb.st_size < off)
		off = 0;
	buf = calloc(1, (size_t)(sb.st_size - off) + 1);
	if (!buf)
		goto out;
	ssize_t n = pread(fd, buf, (size_t)(sb.st_size - off), off);
	buf[n > 0 ? n : 0] = '\0';
	*end = off + (n > 0 ? n : 0);
out:
	if (fd >= 0)
		close(fd);
	return buf;
}

static off_t log_size(void)
{
	struct stat sb;

	return stat(H.log, &sb) == 0 ? sb.st_size : 0;
}

/* Every line of text holding needle, printed; returns how many. */
static unsigned print_lines_with(const char *text, const char *needle)
{
	unsigned n = 0;

	for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle)) {
		const char *b = p, *e = strchr(p, '\n');

		while (b > text && b[-1] != '\n')
			b--;
		note("daemon: %.*s", (int)(e ? e - b : (ptrdiff_t)strlen(b)), b);
		n++;
		if (!e)
			break;
		p = e;
	}
	return n;
}

static bool expect_log(const char *text, const char *needle, const char *what)
{
	if (strstr(text, needle))
		return true;
	fail("%s: the daemon's log has no \"%s\"", what, needle);
	return false;
}

/* Waits until *v >= want (bounded); false on timeout or when a thread failed. */
static bool wait_u64(atomic_uint_fast64_t *v, uint64_t want, const struct dma_loop *d,
		     const struct client_loop *cl)
{
	int64_t deadline = mono_ms() + WAIT_MS;

	while (atomic_load(v) < want) {
		if (atomic_load(&d->failed) || atomic_load(&cl->failed) || mono_ms() > deadline)
			return false;
		sleep_ms(10);
	}
	return true;
}

/* -1 if a thread failed (each failure is printed once). */
static int thread_failures(struct dma_loop *d, struct client_loop *cl)
{
	static bool dma_told, client_told;
	int r = 0;

	if (atomic_load(&d->failed)) {
		if (!dma_told)
			fail("DMA loop: %s", d->failure);
		dma_told = true;
		r = -1;
	}
	if (atomic_load(&cl->failed)) {
		if (!client_told)
			fail("client: %s", cl->failure);
		client_told = true;
		r = -1;
	}
	return r;
}

/* One restart with signal sig; restart number k (1-based). */
static int restart_once(const char *const *argv, int k, int sig, struct dma_loop *d,
			struct client_loop *cl, uint64_t session, int kmsg, unsigned *dmar)
{
	const char *sname = sig == SIGKILL ? "SIGKILL" : "SIGTERM";
	char what[64];
	off_t off, end;
	int st, r;

	snprintf(what, sizeof(what), "restart %d (%s)", k, sname);
	/* DMA with the daemon up, and the session answered by it. */
	uint64_t calls0 = atomic_load(&cl->calls);
	if (!wait_u64(&d->rounds, atomic_load(&d->rounds) + ROUNDS_UP, d, cl) ||
	    !wait_u64(&cl->calls, calls0 + 1, d, cl))
		return thread_failures(d, cl) < 0 ? -1 : fail("%s: no progress before the stop", what);
	pid_t old = H.pid;
	off = log_size();
	int64_t t0 = mono_ms();
	st = fds_stop(&H, sig);
	int64_t t_stopped = mono_ms();
	if (st < 0)
		return fail("%s: fds_stop: %s", what, strerror(-st));
	if (sig == SIGTERM ? !(WIFEXITED(st) && WEXITSTATUS(st) == 0)
			   : !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
		return fail("%s: pid %d ended with wait status 0x%x", what, (int)old, st);

	/* No daemon process now: DMA must go on regardless. */
	atomic_fetch_add(&d->down_gen, 1);
	uint64_t down0 = atomic_load(&d->down_rounds);
	bool moved = wait_u64(&d->down_rounds, down0 + ROUNDS_DOWN, d, cl);
	atomic_fetch_add(&d->down_gen, 1);
	if (!moved)
		return thread_failures(d, cl) < 0 ? -1
						   : fail("%s: no DMA round trip while the daemon was down", what);

	int64_t t1 = mono_ms();
	r = fds_start(&H, argv);
	int64_t t_ready = mono_ms();
	if (r < 0)
		return fail("%s: the next daemon did not become ready: %s (exit status 0x%x)", what,
			    strerror(-r), fds_exit_status(&H));

	/* The same session, served by the new process. */
	unsigned want_ev = (unsigned)k;
	int64_t deadline = mono_ms() + WAIT_MS;
	while (atomic_load(&cl->restarted) < want_ev || atomic_load(&cl->last_pid) != (int)H.pid) {
		if (thread_failures(d, cl) < 0)
			return -1;
		if (mono_ms() > deadline)
			return fail("%s: session %" PRIu64 ": %u RESTARTED events (want %u), last "
				    "status from pid %d (new daemon %d)",
				    what, session, atomic_load(&cl->restarted), want_ev,
				    atomic_load(&cl->last_pid), (int)H.pid);
		sleep_ms(10);
	}

	/* What the daemons said about it. */
	char *text = log_since(off, &end);
	if (!text)
		return fail("%s: cannot read the daemon's log %s", what, H.log);
	char sess_line[96];
	snprintf(sess_line, sizeof(sess_line), "session %" PRIu64 " (uid 0 pid %d) adopted from the fd store",
		 session, (int)getpid());
	/* type1 says how it took the vaddrs over; iommufd (map by file) needs nothing
	 * (IOMMU_IOAS_CHANGE_PROCESS moves no charge for a daemon with CAP_IPC_LOCK:
	 * the kernel does not account its pins at all). */
	const char *adopted = !is_iommufd() ? (sig == SIGTERM
		? "vfio-type1: adopted 2 mappings: 2 handed over, 0 taken over from a process that died without handing over, 0 left"
		: "vfio-type1: adopted 2 mappings: 0 handed over, 2 taken over from a process that died without handing over, 0 left")
		: "restored 1 context(s)";
	bool good = true;
	if (sig == SIGTERM)
		good &= expect_log(text, "stopping with 1 context(s) and 2 mapping(s) kept in the fd store", what);
	good &= expect_log(text, "restored 1 context(s) and 2 mapping(s) in ", what);
	good &= expect_log(text, " ms without unmapping (0 mapped again, 0 stray removed, 0 context(s) lost)", what);
	good &= expect_log(text, adopted, what);
	good &= expect_log(text, sess_line, what);
	unsigned bad = print_lines_with(text, "dmabrokerd[error]") +
		       print_lines_with(text, "dmabrokerd[warning]") +
		       print_lines_with(text, "dmabrokerd[crit]");
	if (bad) {
		fail("%s: %u error/warning line(s) in the daemon's log (above)", what, bad);
		good = false;
	}
	free(text);
	/* What the systemd stand-in refused (its "fdstore: ..." lines are on stderr). */
	struct fds_counters fc;
	fds_counters(&H, &fc);
	if (fc.ignored || fc.refused_full || fc.extra_closed || fc.hangups) {
		fail("%s: the fd store dropped messages or fds: %u ignored, %u refused (full), %u "
		     "extra closed, %u hung up",
		     what, fc.ignored, fc.refused_full, fc.extra_closed, fc.hangups);
		good = false;
	}
	unsigned f = kmsg_scan_dmar(kmsg);
	*dmar += f;
	if (f) {
		fail("%s: %u DMAR line(s) on /dev/kmsg (above)", what, f);
		good = false;
	}
	if (!good)
		return -1;
	ok("%s: pid %d -> %d, stopped in %" PRId64 " ms, %" PRIu64 " round trip(s) with no daemon, "
	   "ready %" PRId64 " ms after the start (%" PRId64 " ms from the signal), session %" PRIu64
	   " adopted, RESTARTED seen, 2 mappings adopted (%s)",
	   what, (int)old, (int)H.pid, t_stopped - t0, atomic_load(&d->down_rounds) - down0,
	   t_ready - t1, t_ready - t0, session, sig == SIGTERM ? "handed over" : "taken over");
	return 0;
}

/* ---- a granular mapping across a restart ----------------------------------------- */

#define IOVA_G 0x4000000ull /* 64 MiB */
#define G_GRANULES 16u

/* A call that may meet the restart: -EAGAIN says retry (the main thread's). */
#define RETRY_MAIN(call) ({                                                        \
		int _r;                                                       \
		for (int _i = 0; (_r = (call)) == -EAGAIN && _i < 200; _i++) \
			sleep_ms(10);                                         \
		_r;                                                           \
	})

static int granular_across_restart(const char *const *argv, struct dma_loop *d,
				   struct dmb_client *c, uint64_t ctx, uint64_t region, int kmsg,
				   const char *bdf)
{
	const uint64_t G = 4096, off = MAP_LEN;
	const struct dmb_range disc = { IOVA_G + 2 * G, 2 * G };
	struct dmb_map_entry me = { region, off, IOVA_G, G_GRANULES * G, DMB_READ | DMB_WRITE };
	struct dmb_mapping_info mi;
	size_t n = 0;
	bool more;
	char why[400], line[1024];
	int r;

	if ((r = dmb_map_granular(c, ctx, &me, DMB_GRANULE_4K, NULL)) < 0 ||
	    (r = dmb_discard(c, ctx, &disc, 1, NULL)) < 0) {
		bwhy(why, sizeof(why), c, r, "granular map + discard");
		return fail("%s", why);
	}
	if (round_trip(d, 2000003, IOVA_A + 0x200, 0x200, IOVA_G + G + 0x100, off + G + 0x100, 1024) < 0)
		return fail("granule 1 before the restart: %s", d->failure);
	ok("granular mapping: %u granules of 4 KiB at IOVA 0x%llx, granules 2-3 discarded, "
	   "granule 1 moves the right bytes", G_GRANULES, IOVA_G);
	int st = fds_stop(&H, SIGKILL);
	if (st < 0)
		return fail("granular: fds_stop: %s", strerror(-st));
	r = fds_start(&H, argv);
	if (r < 0)
		return fail("granular: the next daemon did not become ready: %s", strerror(-r));
	if ((r = RETRY_MAIN(dmb_list_mappings(c, ctx, IOVA_G, &mi, 1, &n, &more, NULL))) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_list_mappings after the restart");
		return fail("%s", why);
	}
	if (n != 1 || mi.iova != IOVA_G || mi.granule != G || mi.discarded != 2)
		return fail("after the restart the broker lists %zu mapping(s) at 0x%" PRIx64
			    ", granule %" PRIu64 ", %" PRIu64 " discarded; want the granular mapping "
			    "with 2 discarded", n, mi.iova, mi.granule, mi.discarded);
	if (round_trip(d, 2000004, IOVA_A + 0x300, 0x300, IOVA_G + G + 0x200, off + G + 0x200, 1024) < 0 ||
	    round_trip(d, 2000005, IOVA_G + 4 * G, off + 4 * G, IOVA_A + 0x90000, 0x90000, 1024) < 0)
		return fail("populated granules after the restart: %s", d->failure);
	/* the discarded granule faults and moves nothing */
	memset(d->m->p + off + 2 * G, 0x3c, 256);
	kmsg_scan_dmar(kmsg);
	r = edu_dma_from_device(d->e, 0, IOVA_G + 2 * G, 256, 0);
	if (r < 0)
		return fail("edu DMA to the discarded granule: %s", strerror(-r));
	r = kmsg_wait_fault(kmsg, bdf, IOVA_G + 2 * G, line, sizeof(line));
	if (r < 0)
		return fail("no DMAR fault for the discarded granule at 0x%llx from %s within %d ms "
			    "after the restart", IOVA_G + 2 * G, bdf, FAULT_WAIT_MS);
	ok("kernel: %s", line);
	for (size_t i = 0; i < 256; i++)
		if (d->m->p[off + 2 * G + i] != 0x3c)
			return fail("the DMA to the discarded granule changed memfd byte +0x%zx",
				    off + 2 * G + i);
	if ((r = RETRY_MAIN(dmb_populate(c, ctx, &disc, 1, NULL))) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_populate after the restart");
		return fail("%s", why);
	}
	if (round_trip(d, 2000006, IOVA_A + 0x400, 0x400, IOVA_G + 2 * G + 0x80, off + 2 * G + 0x80, 1024) < 0)
		return fail("granule 2 populated after the restart: %s", d->failure);
	ok("after a SIGKILL restart: populated granules move the right bytes, the discarded "
	   "granule faults and moves no byte, and populated again it moves bytes");
	return 0;
}

/* ---- main ------------------------------------------------------------------------ */

/* The fd-store harness, with time limits for TCG, and argv's daemon started in it
 * (READY=1). 0, or -1 after fail(); run_end() cleans up either way. */
static int harness_start(const char *const *argv)
{
	struct fds_opts o = fds_default_opts();
	o.start_timeout_ms = 30000; /* TCG */
	o.stop_timeout_ms = 15000;
	int r = fds_init(&H, &o);
	if (r < 0)
		return fail("fds_init: %s", strerror(-r));
	r = fds_start(&H, argv);
	if (r < 0)
		return fail("%s did not become ready under the fd-store harness: %s (exit status 0x%x)",
			    argv[0], strerror(-r), fds_exit_status(&H));
	return 0;
}

/* The end of a run: the daemon's log when it failed, then the session, the device,
 * the memory and the harness (the daemon stopped, the fd store closed). */
static int run_end(int ret, struct dmb_client *c, struct edu *e, int dev_fd, struct ram *m)
{
	if (ret < 0) {
		fflush(stdout);
		note("---- the daemon's log (%s) ----", H.log);
		fds_dump_log(&H);
		note("---- end of the daemon's log ----");
	}
	if (c)
		dmb_close(c);
	edu_close(e);
	if (dev_fd >= 0)
		close(dev_fd);
	ram_free(m);
	fds_store_clear(&H);
	fds_destroy(&H);
	return ret;
}

static int run(const char *dmabrokerd, const char *config, const char *bdf, int restarts)
{
	char backend_arg[64];
	snprintf(backend_arg, sizeof(backend_arg), "--backend=%s", want_backend());
	const char *argv[] = { dmabrokerd, backend_arg, "--config", config, NULL };
	struct dma_loop d = { 0 };
	struct client_loop cl = { 0 };
	struct ram m = { .fd = -1 };
	struct edu e = { .device_fd = -1 };
	struct dmb_client *c = NULL;
	int dev_fd = -1, kmsg = -1, ret = -1, r;
	bool dma_started = false, client_started = false;
	unsigned dmar = 0;
	char why[400];
	int64_t t_begin = mono_ms();

	if (harness_start(argv) < 0)
		goto out;
	ok("dmabrokerd pid %d ready (READY=1) on the harness's listener %s, notify socket %s",
	   (int)H.pid, H.sock, H.notify);

	/* The session, the context, the device, the memory, the mappings. */
	r = dmb_connect(H.sock, "vm-restart", &c);
	if (r < 0) {
		c = NULL;
		fail("dmb_connect %s: %s", H.sock, strerror(-r));
		goto out;
	}
	const struct dmb_server_info *si = dmb_server_info(c);
	if (strcmp(si->backend, want_backend())) {
		fail("the broker's backend is '%s', not %s", si->backend, want_backend());
		goto out;
	}
	uint64_t session = si->session_id;
	dmb_set_timeout(c, CLIENT_TIMEOUT_MS);
	uint64_t ctx;
	struct dmb_device_info di;
	struct dmb_region_info ri;
	uint16_t cmd = 0;
	uint32_t id = 0;
	if ((r = dmb_context_create(c, "vm-restart", &ctx)) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_context_create");
		goto bfail;
	}
	if ((r = dmb_device_open(c, ctx, bdf, &dev_fd, &di)) < 0) {
		dev_fd = -1;
		bwhy(why, sizeof(why), c, r, "dmb_device_open");
		goto bfail;
	}
	if (dev_fd < 0 || di.vendor_id != EDU_VENDOR_ID || di.device_id != EDU_DEVICE_ID) {
		fail("%s: fd %d, %04x:%04x: not an edu with its device fd", bdf, dev_fd,
		     di.vendor_id, di.device_id);
		goto out;
	}
	if ((r = edu_open(&e, dev_fd)) < 0 || (r = edu_enable(&e)) < 0 ||
	    (r = edu_get_command(&e, &cmd)) < 0 || (r = edu_read_id(&e, &id)) < 0 ||
	    (cmd & (EDU_CMD_MEMORY | EDU_CMD_MASTER)) != (EDU_CMD_MEMORY | EDU_CMD_MASTER) ||
	    id != EDU_ID_VALUE) {
		fail("edu %s: open/enable: %s, command 0x%04x, ID 0x%08" PRIx32, bdf,
		     r < 0 ? strerror(-r) : "ok", cmd, id);
		goto out;
	}
	if (ram_new(&m, RAM_SIZE) < 0)
		goto out;
	if ((r = dmb_region_register(c, ctx, m.fd, 0, &ri)) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_region_register");
		goto bfail;
	}
	/* The kernel log from before the first mapping on. */
	kmsg = kmsg_open();
	if (kmsg < 0)
		goto out;
	struct dmb_map_entry me[2] = {
		{ ri.region, 0, IOVA_A, MAP_LEN, DMB_READ | DMB_WRITE },
		{ ri.region, MAP_LEN, IOVA_B, MAP_LEN, DMB_READ | DMB_WRITE },
	};
	if ((r = dmb_map_batch(c, ctx, me, 2)) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_map_batch");
		goto bfail;
	}
	ok("session %" PRIu64 ", context %" PRIu64 ": %s (group %s, fd %d, command 0x%04x), memfd "
	   "region %" PRIu64 " mapped at IOVA 0x%llx and 0x%llx (1 MiB each)",
	   session, ctx, bdf, di.group, dev_fd, cmd, ri.region, IOVA_A, IOVA_B);

	char *names = fds_store_names(&H);
	ok("fd store: %u fds: %s", fds_store_count(&H), names ? names : "?");
	free(names);

	/* The DMA loop and the client loop, then the restarts. */
	d.e = &e;
	d.m = &m;
	if (pthread_create(&d.t, NULL, dma_main, &d)) {
		fail("pthread_create");
		goto out;
	}
	dma_started = true;
	cl.c = c;
	cl.ctx = ctx;
	if (pthread_create(&cl.t, NULL, client_main, &cl)) {
		fail("pthread_create");
		goto out;
	}
	client_started = true;
	int64_t t_loop = mono_ms();
	for (int k = 1; k <= restarts; k++)
		if (restart_once(argv, k, k % 2 ? SIGTERM : SIGKILL, &d, &cl, session, kmsg, &dmar) < 0)
			goto out;
	/* And a little more with the last daemon. */
	if (!wait_u64(&d.rounds, atomic_load(&d.rounds) + ROUNDS_UP, &d, &cl)) {
		if (thread_failures(&d, &cl) == 0)
			fail("no DMA progress after the last restart");
		goto out;
	}
	atomic_store(&d.stop, true);
	atomic_store(&cl.stop, true);
	pthread_join(d.t, NULL);
	pthread_join(cl.t, NULL);
	dma_started = client_started = false;
	if (thread_failures(&d, &cl) < 0)
		goto out;
	unsigned f = kmsg_scan_dmar(kmsg);
	dmar += f;
	if (dmar) {
		fail("%u DMAR line(s) on /dev/kmsg during the run (above)", dmar);
		goto out;
	}
	uint64_t rounds = atomic_load(&d.rounds);
	ok("%" PRIu64 " DMAs (%" PRIu64 " round trips, %" PRIu64 " of them with no daemon process) "
	   "moved the right bytes across %d restarts in %.1f s; no DMAR line; %" PRIu64
	   " client rounds, %" PRIu64 " calls retried after -EAGAIN, %u RESTARTED events",
	   2 * rounds, rounds, atomic_load(&d.down_rounds), restarts,
	   (double)(mono_ms() - t_loop) / 1000, atomic_load(&cl.calls), atomic_load(&cl.retries),
	   atomic_load(&cl.restarted));

	/* The proof that these were the broker's mappings: unmap B through it. */
	uint64_t unmapped = 0;
	if ((r = dmb_unmap(c, ctx, IOVA_B, MAP_LEN, &unmapped)) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_unmap B");
		goto bfail;
	}
	if (unmapped != MAP_LEN) {
		fail("dmb_unmap B unmapped %" PRIu64 " bytes", unmapped);
		goto out;
	}
	const size_t woff = MAP_LEN + 0x2000; /* memfd bytes behind IOVA_B + 0x2000 */
	char line[1024];
	memset(m.p + woff, 0x3c, 256);
	kmsg_scan_dmar(kmsg); /* nothing expected; start from here */
	r = edu_dma_from_device(&e, 0, IOVA_B + 0x2000, 256, 0);
	if (r < 0) {
		fail("edu DMA to the unmapped IOVA 0x%llx: %s", IOVA_B + 0x2000, strerror(-r));
		goto out;
	}
	r = kmsg_wait_fault(kmsg, bdf, IOVA_B + 0x2000, line, sizeof(line));
	if (r < 0) {
		fail("no DMAR fault for IOVA 0x%llx from %s within %d ms after the broker unmapped it",
		     IOVA_B + 0x2000, bdf, FAULT_WAIT_MS);
		goto out;
	}
	ok("kernel: %s", line);
	for (size_t i = 0; i < 256; i++)
		if (m.p[woff + i] != 0x3c) {
			fail("the faulting DMA changed memfd byte +0x%zx", woff + i);
			goto out;
		}
	if (round_trip(&d, 1000003, IOVA_A + 0x100, 0x100, IOVA_A + 0x80000, 0x80000, EDU_DMA_MAX) < 0) {
		fail("mapping A after B's unmap: %s", d.failure);
		goto out;
	}
	ok("after dmb_unmap of B: a DMA to it faults and moves no byte; A still moves the right bytes");

	/* A granular mapping across one more restart (SIGKILL): G = memfd [1M, 1M+64K)
	 * at IOVA_G in 16 granules of 4 KiB, granules 2-3 discarded. The next daemon
	 * adopts the populated granules and leaves the discarded ones out: a DMA to
	 * granule 2 faults and moves nothing, granule 1 moves the right bytes, and
	 * populated again granule 2 moves bytes too. */
	if (granular_across_restart(argv, &d, c, ctx, ri.region, kmsg, bdf) < 0)
		goto out;

	/* The end: the session goes (its context with it), the daemon stops cleanly. */
	dmb_close(c);
	c = NULL;
	int st = fds_stop(&H, SIGTERM);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fail("the last daemon's stop: wait status %d", st);
		goto out;
	}
	ok("done in %.1f s", (double)(mono_ms() - t_begin) / 1000);
	ret = 0;
	goto out;
bfail:
	fail("%s", why);
out:
	if (dma_started || client_started) {
		atomic_store(&d.stop, true);
		atomic_store(&cl.stop, true);
		/* A call waiting for a daemon that is not coming back returns now. */
		if (client_started)
			shutdown(dmb_fd(c), SHUT_RDWR);
		if (dma_started)
			pthread_join(d.t, NULL);
		if (client_started)
			pthread_join(cl.t, NULL);
		thread_failures(&d, &cl);
	}
	if (kmsg >= 0)
		close(kmsg);
	return run_end(ret, c, &e, dev_fd, &m);
}

/* ---- a no-IOMMU context across restarts (vm7-noiommu) ----------------------------
 *
 * On a machine without an IOMMU (Linux 7.3, noiommu-vfioN): a no-IOMMU context maps
 * NI_LEN of a memfd at NI_IOVA, and edu, programmed with the physical addresses the
 * broker returns, copies bytes between its pages. Then the daemon is restarted under
 * the fd store, by SIGTERM and by SIGKILL: the next one adopts the context (it is
 * still a no-IOMMU one: PhysRanges answers), the physical ranges are the same (the
 * pages stayed pinned: nothing was unmapped), and edu moves the right bytes through
 * them again. */
#define NI_IOVA 0x100000ull
#define NI_PAGES 16u
#define NI_PG 4096ull

/* The physical address behind memfd offset off (mapped at NI_IOVA), 0 if none. */
static uint64_t ni_phys(const struct dmb_phys_range *pr, size_t n, uint64_t off)
{
	uint64_t iova = NI_IOVA + off;

	for (size_t i = 0; i < n; i++)
		if (iova >= pr[i].iova && iova - pr[i].iova < pr[i].length)
			return pr[i].phys + (iova - pr[i].iova);
	return 0;
}

static int ni_ranges(struct dmb_client *c, uint64_t ctx, struct dmb_phys_range *pr, size_t *n)
{
	bool more = false;
	char why[400];
	int r = RETRY_MAIN(dmb_phys_ranges(c, ctx, NI_IOVA, NI_PAGES * NI_PG, pr, NI_PAGES + 1, n,
					    &more, NULL));

	if (r < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_phys_ranges");
		return fail("%s", why);
	}
	if (more || *n == 0)
		return fail("dmb_phys_ranges: %zu range(s), more %d", *n, more);
	return 0;
}

/* edu copies page a (+0x100) to page b (+0x80) by physical address. */
static int ni_copy(struct dma_loop *d, const struct dmb_phys_range *pr, size_t n, uint64_t seed,
		   unsigned a, unsigned b)
{
	size_t so = a * NI_PG + 0x100, dof = b * NI_PG + 0x80;

	if (round_trip(d, seed, ni_phys(pr, n, so), so, ni_phys(pr, n, dof), dof, 1024) < 0)
		return fail("%s", d->failure);
	return 0;
}

static int run_noiommu(const char *dmabrokerd, const char *config, const char *bdf)
{
	const char *argv[] = { dmabrokerd, "--backend=iommufd", "--config", config, NULL };
	struct dmb_phys_range before[NI_PAGES + 1], after[NI_PAGES + 1];
	struct dma_loop d = { 0 };
	struct ram m = { .fd = -1 };
	struct edu e = { .device_fd = -1 };
	struct dmb_client *c = NULL;
	struct dmb_device_info di;
	struct dmb_region_info ri;
	size_t nb = 0, na = 0;
	uint64_t ctx;
	int dev_fd = -1, ret = -1, r;
	char why[400];

	if (harness_start(argv) < 0)
		goto out;
	if ((r = dmb_connect(H.sock, "vm-restart-noiommu", &c)) < 0) {
		c = NULL;
		fail("dmb_connect %s: %s", H.sock, strerror(-r));
		goto out;
	}
	dmb_set_timeout(c, CLIENT_TIMEOUT_MS);
	if ((r = dmb_context_create_flags(c, "vm-restart-noiommu", DMB_CONTEXT_NOIOMMU, &ctx,
					  NULL)) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_context_create_flags(NOIOMMU)");
		goto bfail;
	}
	if ((r = dmb_device_open(c, ctx, bdf, &dev_fd, &di)) < 0) {
		dev_fd = -1;
		bwhy(why, sizeof(why), c, r, "dmb_device_open");
		goto bfail;
	}
	if ((r = edu_open(&e, dev_fd)) < 0 || (r = edu_enable(&e)) < 0) {
		fail("edu %s: %s", bdf, strerror(-r));
		goto out;
	}
	if (ram_new(&m, NI_PAGES * NI_PG) < 0)
		goto out;
	struct dmb_map_entry me = { 0, 0, NI_IOVA, NI_PAGES * NI_PG, DMB_READ | DMB_WRITE };
	if ((r = dmb_region_register(c, ctx, m.fd, 0, &ri)) < 0 ||
	    (me.region = ri.region, r = dmb_map(c, ctx, &me)) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_region_register + dmb_map");
		goto bfail;
	}
	if (ni_ranges(c, ctx, before, &nb) < 0)
		goto out;
	d.e = &e;
	d.m = &m;
	if (ni_copy(&d, before, nb, 3000001, 0, 5) < 0 || ni_copy(&d, before, nb, 3000002, 9, 2) < 0)
		goto out;
	ok("no-IOMMU context %" PRIu64 ": %s (%s), %u pages mapped at IOVA 0x%llx over %zu "
	   "physical range(s); edu copied bytes between them by physical address",
	   ctx, bdf, di.group, NI_PAGES, NI_IOVA, nb);

	const int sigs[] = { SIGTERM, SIGKILL };
	for (int k = 0; k < 2; k++) {
		pid_t old = H.pid;
		int st = fds_stop(&H, sigs[k]);
		if (st < 0) {
			fail("fds_stop: %s", strerror(-st));
			goto out;
		}
		if ((r = fds_start(&H, argv)) < 0) {
			fail("the next daemon did not become ready: %s", strerror(-r));
			goto out;
		}
		if (ni_ranges(c, ctx, after, &na) < 0)
			goto out;
		if (na != nb || memcmp(after, before, nb * sizeof(before[0])) != 0) {
			fail("after the %s restart the physical ranges changed (%zu before, %zu after)",
			     sigs[k] == SIGTERM ? "SIGTERM" : "SIGKILL", nb, na);
			goto out;
		}
		if (ni_copy(&d, after, na, 3000010 + (uint64_t)k, 3, 12) < 0 ||
		    ni_copy(&d, after, na, 3000020 + (uint64_t)k, 15, 0) < 0)
			goto out;
		if (!fds_log_has(&H, "restored 1 context(s)")) {
			fail("no 'restored 1 context(s)' in the log of pid %d", (int)H.pid);
			goto out;
		}
		ok("%s restart (pid %d -> %d): the no-IOMMU context was adopted; the same %zu "
		   "physical range(s), and edu copies the right bytes through them",
		   sigs[k] == SIGTERM ? "SIGTERM" : "SIGKILL", (int)old, (int)H.pid, na);
	}
	uint64_t unmapped = 0;
	if ((r = RETRY_MAIN(dmb_unmap(c, ctx, NI_IOVA, NI_PAGES * NI_PG, &unmapped))) < 0) {
		bwhy(why, sizeof(why), c, r, "dmb_unmap");
		goto bfail;
	}
	dmb_close(c);
	c = NULL;
	int st = fds_stop(&H, SIGTERM);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fail("the last daemon's stop: wait status %d", st);
		goto out;
	}
	ok("unmapped %" PRIu64 " bytes through the broker; the daemon stopped cleanly", unmapped);
	ret = 0;
	goto out;
bfail:
	fail("%s", why);
out:
	return run_end(ret, c, &e, dev_fd, &m);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && strcmp(argv[1], "--noiommu") == 0)
		return run_noiommu(argv[2], argv[3], argv[4]) < 0 ? 1 : 0;
	if (argc != 5 || atoi(argv[4]) < 1) {
		fprintf(stderr, "usage: %s DMABROKERD CONFIG BDF RESTARTS\n"
				"       %s --noiommu DMABROKERD CONFIG BDF\n", argv[0], argv[0]);
		return 2;
	}
	return run(argv[1], argv[2], argv[3], atoi(argv[4])) < 0 ? 1 : 0;
}
