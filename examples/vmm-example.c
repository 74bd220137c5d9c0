/* dmabroker-example — what a VMM does with dmabrokerd, end to end.
 *
 *   1. creates guest RAM as a memfd, sealed against shrinking and growing
 *      (the broker refuses memory that could shrink under a mapping);
 *   2. connects and prints what the broker runs (backend, features);
 *   3. creates one context (one per VM) and registers the memfd once as a
 *      region: later requests name the region, never the fd;
 *   4. asks for the usable IOVA ranges and places guest RAM inside them:
 *      "low RAM" (the first 2 MiB) at IOVA 0 and the rest at 1 GiB, the way
 *      a PC-like guest leaves a hole below 4 GiB;
 *   5. on the sim backend, proves both mappings by moving bytes through the
 *      simulated IOMMU, as a device would, in both directions;
 *   6. optionally holds the session (mappings live exactly as long as it
 *      does) so an operator can look with dmabrokerctl, printing events;
 *   7. tears down in order: unmap, unregister, destroy.
 *
 * Exit status: 0 when every step worked, 1 otherwise, 2 on a usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "dmabroker.h"

#define PROG "dmabroker-example"
#define MiB (UINT64_C(1024) * 1024)
#define GiB (1024ull * MiB)
#define LOW_RAM_SIZE (2 * MiB)
#define HIGH_RAM_IOVA GiB
#define PROBE 4096u /* bytes per DMA probe */

struct opts {
	const char *socket;
	unsigned hold_s;
	uint64_t size_mib;
};

struct vm {
	int memfd;
	uint8_t *ram; /* the VMM's own view of guest RAM (MAP_SHARED) */
	uint64_t size;
	struct dmb_client *c;
	uint64_t context;
	struct dmb_region_info region;
	struct dmb_iova_info iova;
	struct dmb_map_entry map[2]; /* [0] low RAM, [1] high RAM */
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* Reports a failed library call with the broker's code and sentence (or the
 * transport error) and returns -1. */
static int fail(const struct vm *vm, int r, const char *what)
{
	const struct dmb_error *e = vm->c ? dmb_last_error(vm->c) : NULL;

	if (e && e->code)
		fprintf(stderr, PROG ": %s: %s: %s\n", what, dmb_error_code_name(e->code),
			e->message);
	else if (e && e->message[0] && e->sys_errno == -r)
		fprintf(stderr, PROG ": %s: %s\n", what, e->message);
	else
		fprintf(stderr, PROG ": %s: %s\n", what, strerror(-r));
	return -1;
}

/* ------------------------------------------------------------ guest RAM */

static int guest_ram_create(struct vm *vm, uint64_t size)
{
	vm->size = size;
	vm->memfd = memfd_create("guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (vm->memfd < 0)
		return fail(vm, -errno, "memfd_create");
	if (ftruncate(vm->memfd, (off_t)size) < 0)
		return fail(vm, -errno, "sizing guest RAM");
	if (fcntl(vm->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
		return fail(vm, -errno, "sealing guest RAM");
	vm->ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->memfd, 0);
	if (vm->ram == MAP_FAILED) {
		vm->ram = NULL;
		return fail(vm, -errno, "mapping guest RAM");
	}
	printf("guest RAM: memfd of %" PRIu64 " MiB, sealed against shrinking and growing\n",
	       size / MiB);
	return 0;
}

/* ------------------------------------------------------------ broker */

static int broker_connect(struct vm *vm, const char *socket)
{
	int r = dmb_connect(socket, PROG, &vm->c);

	if (r < 0) {
		const char *path = socket ? socket : getenv("DMABROKER_SOCKET");
		fprintf(stderr, PROG ": cannot connect to %s: %s\n",
			path && path[0] ? path : DMB_DEFAULT_SOCKET_PATH, strerror(-r));
		return -1;
	}
	const struct dmb_server_info *i = dmb_server_info(vm->c);
	printf("broker: dmabrokerd %s, protocol %" PRIu32 ", session %" PRIu64 "%s\n",
	       i->server_version, i->protocol_version, i->session_id, i->admin ? " (admin)" : "");
	printf("backend: %s, features: %s\n", i->backend, i->features[0] ? i->features : "(none)");
	return 0;
}

static int context_setup(struct vm *vm)
{
	int r = dmb_context_create(vm->c, "vmm-example", &vm->context);

	if (r < 0)
		return fail(vm, r, "creating the context");
	printf("context %" PRIu64 " created\n", vm->context);

	r = dmb_region_register(vm->c, vm->context, vm->memfd, 0, &vm->region);
	if (r < 0)
		return fail(vm, r, "registering guest RAM");
	printf("region %" PRIu64 ": %s, %" PRIu64 " MiB, %s, page size %" PRIu64 "\n",
	       vm->region.region, vm->region.kind, vm->region.size / MiB,
	       vm->region.writable ? "writable" : "read-only", vm->region.page_size);
	if (!vm->region.writable) {
		fprintf(stderr, PROG ": the broker registered guest RAM read-only\n");
		return -1;
	}

	r = dmb_iova_ranges(vm->c, vm->context, &vm->iova);
	if (r < 0)
		return fail(vm, r, "querying the IOVA ranges");
	printf("IOVA ranges:");
	for (size_t k = 0; k < vm->iova.n; k++)
		printf("%s 0x%" PRIx64 "-0x%" PRIx64, k ? "," : "", vm->iova.ranges[k].start,
		       vm->iova.ranges[k].last);
	printf("; alignment %" PRIu64, vm->iova.alignment);
	if (vm->iova.max_mappings)
		printf("; %" PRIu32 " of %" PRIu32 " mappings available", vm->iova.mappings_available,
		       vm->iova.max_mappings);
	printf("\n");
	return 0;
}

/* ------------------------------------------------------------ placement */

static bool range_fits(const struct dmb_iova_range *g, uint64_t iova, uint64_t len)
{
	return iova >= g->start && iova <= g->last && len - 1 <= g->last - iova;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/* The lowest aligned IOVA >= want where [iova, iova+len) lies inside one
 * usable range and misses [avoid, avoid+avoid_len). Returns -ERANGE if
 * there is none. */
static int place(const struct dmb_iova_info *info, uint64_t want, uint64_t len, uint64_t avoid,
		 uint64_t avoid_len, uint64_t *out)
{
	uint64_t align = info->alignment ? info->alignment : 1;
	uint64_t best = UINT64_MAX;

	for (size_t k = 0; k < info->n; k++) {
		const struct dmb_iova_range *g = &info->ranges[k];
		uint64_t iova = want > g->start ? want : g->start;
		if (iova % align) {
			if (iova > UINT64_MAX - align)
				continue;
			iova += align - iova % align;
		}
		if (avoid_len && overlaps(iova, len, avoid, avoid_len)) {
			if (avoid + avoid_len < avoid)
				continue;
			iova = avoid + avoid_len; /* avoid is aligned: so is its end */
		}
		if (range_fits(g, iova, len) && iova < best)
			best = iova;
	}
	if (best == UINT64_MAX)
		return -ERANGE;
	*out = best;
	return 0;
}

static int plan_mappings(struct vm *vm)
{
	uint64_t align = vm->iova.alignment ? vm->iova.alignment : 1;
	uint64_t high_len = vm->size - LOW_RAM_SIZE;
	struct dmb_map_entry *low = &vm->map[0], *high = &vm->map[1];

	if (LOW_RAM_SIZE % align || high_len % align) {
		fprintf(stderr, PROG ": the backend's IOVA alignment of %" PRIu64
				" bytes does not divide the guest RAM layout\n", align);
		return -1;
	}
	*low = (struct dmb_map_entry){ .region = vm->region.region, .offset = 0,
				       .length = LOW_RAM_SIZE, .prot = DMB_READ | DMB_WRITE };
	*high = (struct dmb_map_entry){ .region = vm->region.region, .offset = LOW_RAM_SIZE,
					.length = high_len, .prot = DMB_READ | DMB_WRITE };
	if (place(&vm->iova, 0, low->length, 0, 0, &low->iova) < 0 ||
	    place(&vm->iova, HIGH_RAM_IOVA, high->length, low->iova, low->length, &high->iova) < 0) {
		fprintf(stderr, PROG ": no usable IOVA range holds %" PRIu64 " MiB of guest RAM\n",
			vm->size / MiB);
		return -1;
	}
	if (low->iova != 0)
		printf("note: IOVA 0 is not usable here; low RAM goes to 0x%" PRIx64 "\n", low->iova);
	if (high->iova != HIGH_RAM_IOVA)
		printf("note: IOVA 1 GiB is not usable here; high RAM goes to 0x%" PRIx64 "\n",
		       high->iova);
	return 0;
}

static int map_guest_ram(struct vm *vm)
{
	static const char *const names[] = { "low RAM", "high RAM" };
	int r = dmb_map_batch(vm->c, vm->context, vm->map, 2);

	if (r < 0) {
		fprintf(stderr, PROG ": mapping %s failed (nothing was mapped):\n",
			names[dmb_last_error(vm->c)->index % 2]);
		return fail(vm, r, "map");
	}
	for (size_t k = 0; k < 2; k++) {
		const struct dmb_map_entry *m = &vm->map[k];
		printf("mapped %-8s IOVA 0x%016" PRIx64 "-0x%016" PRIx64 " (%" PRIu64
		       " MiB) -> region %" PRIu64 " offset 0x%" PRIx64 ", rw\n",
		       names[k], m->iova, m->iova + m->length - 1, m->length / MiB, m->region,
		       m->offset);
	}
	return 0;
}

/* ------------------------------------------------------------ DMA check */

/* A byte that depends on the page and the place in it, so a translation to
 * the wrong page or the wrong offset shows up as a mismatch. */
static uint8_t pattern(uint64_t off, uint8_t salt)
{
	return (uint8_t)((off >> 12) * 131u + (off & 0xfff) * 7u + salt);
}

static int compare(const uint8_t *got, uint64_t off, uint8_t salt, const char *what, uint64_t iova)
{
	for (size_t i = 0; i < PROBE; i++) {
		if (got[i] != pattern(off + i, salt)) {
			fprintf(stderr, PROG ": DMA check: %s at IOVA 0x%" PRIx64 ": byte %zu is 0x%02x, "
					"expected 0x%02x\n", what, iova + i, i, got[i],
				pattern(off + i, salt));
			return -1;
		}
	}
	return 0;
}

/* Device reads: the VMM writes guest RAM, the device reads it at the IOVA. */
static int check_read(struct vm *vm, const struct dmb_map_entry *m, uint64_t delta)
{
	uint8_t buf[PROBE];
	uint64_t off = m->offset + delta, iova = m->iova + delta;

	for (size_t i = 0; i < PROBE; i++)
		vm->ram[off + i] = pattern(off + i, 0x5a);
	int r = dmb_sim_dma_read(vm->c, vm->context, iova, buf, PROBE);
	if (r < 0)
		return fail(vm, r, "DMA check: device read");
	return compare(buf, off, 0x5a, "device read", iova);
}

/* Device writes: the device writes at the IOVA, the VMM finds it in RAM. */
static int check_write(struct vm *vm, const struct dmb_map_entry *m, uint64_t delta)
{
	uint8_t buf[PROBE];
	uint64_t off = m->offset + delta, iova = m->iova + delta;

	for (size_t i = 0; i < PROBE; i++)
		buf[i] = pattern(off + i, 0xa5);
	int r = dmb_sim_dma_write(vm->c, vm->context, iova, buf, PROBE);
	if (r < 0)
		return fail(vm, r, "DMA check: device write");
	return compare(vm->ram + off, off, 0xa5, "device write", iova);
}

/* A device must not reach an IOVA that nothing is mapped at. */
static int check_unmapped(struct vm *vm, uint64_t iova)
{
	uint8_t buf[PROBE];
	int r = dmb_sim_dma_read(vm->c, vm->context, iova, buf, PROBE);

	if (r == 0) {
		fprintf(stderr, PROG ": DMA check: a read at unmapped IOVA 0x%" PRIx64
				" succeeded\n", iova);
		return -1;
	}
	/* Any refusal by the broker will do; a transport or internal error will not. */
	int code = dmb_last_error(vm->c)->code;
	if (code == DMB_OK || code == DMB_INTERNAL)
		return fail(vm, r, "DMA check: read at an unmapped IOVA");
	printf("DMA at unmapped IOVA 0x%" PRIx64 " refused: %s\n", iova,
	       dmb_error_code_name(dmb_last_error(vm->c)->code));
	return 0;
}

static int dma_check(struct vm *vm)
{
	int reads = 0, writes = 0;

	if (strcmp(dmb_server_info(vm->c)->backend, "sim") != 0) {
		printf("DMA check: skipped (only the sim backend lets a client drive DMA)\n");
		return 0;
	}
	for (size_t k = 0; k < 2; k++) {
		const struct dmb_map_entry *m = &vm->map[k];
		/* first and last page for reads, a middle page for a write */
		if (check_read(vm, m, 0) < 0 || check_read(vm, m, m->length - PROBE) < 0)
			return -1;
		reads += 2;
		if (check_write(vm, m, (m->length / 2) & ~(uint64_t)(PROBE - 1)) < 0)
			return -1;
		writes++;
	}
	uint64_t hole = vm->map[0].iova + vm->map[0].length;
	if (!overlaps(hole, PROBE, vm->map[1].iova, vm->map[1].length) && check_unmapped(vm, hole) < 0)
		return -1;
	printf("DMA check: ok (%d device reads and %d device writes through the IOMMU)\n", reads,
	       writes);
	return 0;
}

/* ------------------------------------------------------------ hold */

static void on_event(const struct dmb_event *ev, void *opaque)
{
	(void)opaque;
	printf("event %" PRIu64 ": kind %" PRIu32 ", context %" PRIu64 ", %zu range%s%s%s\n",
	       ev->seq, ev->kind, ev->context, ev->n_ranges, ev->n_ranges == 1 ? "" : "s",
	       ev->message && ev->message[0] ? ": " : "", ev->message ? ev->message : "");
	if (ev->kind == DMB_EV_CONTEXT_LOST)
		stop_requested = 1;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Keeps the session, and so the mappings, alive for hold_s seconds (or until
 * SIGINT/SIGTERM), printing the broker's events. */
static int hold(struct vm *vm, unsigned hold_s)
{
	int64_t end = now_ms() + (int64_t)hold_s * 1000;

	if (!hold_s)
		return 0;
	printf("holding the session for %u s (pid %d); look with: dmabrokerctl list mappings %" PRIu64
	       "\n", hold_s, (int)getpid(), vm->context);
	fflush(stdout);
	while (!stop_requested) {
		int64_t left = end - now_ms();
		if (left <= 0)
			break;
		struct pollfd p = { .fd = dmb_fd(vm->c), .events = POLLIN };
		int n = poll(&p, 1, (int)(left > 1000 ? 1000 : left));
		if (n < 0 && errno != EINTR)
			return fail(vm, -errno, "waiting for events");
		if (n > 0) {
			int r = dmb_dispatch(vm->c, on_event, NULL);
			if (r < 0)
				return fail(vm, r, "the broker connection");
		}
	}
	if (stop_requested)
		printf("stopping early\n");
	return 0;
}

/* ------------------------------------------------------------ teardown */

static int teardown(struct vm *vm)
{
	uint64_t bytes = 0;
	int r = dmb_unmap_all(vm->c, vm->context, &bytes);

	if (r < 0)
		return fail(vm, r, "unmapping guest RAM");
	r = dmb_region_unregister(vm->c, vm->context, vm->region.region);
	if (r < 0)
		return fail(vm, r, "unregistering guest RAM");
	r = dmb_context_destroy(vm->c, vm->context);
	if (r < 0)
		return fail(vm, r, "destroying the context");
	printf("unmapped %" PRIu64 " MiB, unregistered region %" PRIu64 ", destroyed context %" PRIu64
	       "\n", bytes / MiB, vm->region.region, vm->context);
	return 0;
}

static void vm_free(struct vm *vm)
{
	dmb_close(vm->c);
	if (vm->ram)
		munmap(vm->ram, vm->size);
	if (vm->memfd >= 0)
		close(vm->memfd);
}

/* ------------------------------------------------------------ main */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " [OPTIONS]\n"
		"A small VMM-like client: maps sealed memfd guest RAM through dmabrokerd.\n\n"
		"  -s, --socket=PATH     broker socket (default $DMABROKER_SOCKET, else %s)\n"
		"  -m, --size=MiB        guest RAM size, at least 4 (default 64)\n"
		"  -H, --hold=SECONDS    keep the session and its mappings for this long before\n"
		"                        tearing down (default 0: at once; SIGINT ends it early)\n"
		"  -h, --help            this text\n",
		DMB_DEFAULT_SOCKET_PATH);
}

static int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;

	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (!s[0] || s[0] == '-' || errno || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "size", required_argument, NULL, 'm' },
		{ "hold", required_argument, NULL, 'H' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	uint64_t v;
	int c;

	while ((c = getopt_long(argc, argv, "s:m:H:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's': o->socket = optarg; break;
		case 'm':
			if (parse_uint(optarg, 4, 1u << 20, &o->size_mib) < 0) {
				fprintf(stderr, PROG ": --size takes MiB from 4 to 1048576\n");
				return 2;
			}
			break;
		case 'H':
			if (parse_uint(optarg, 0, 86400, &v) < 0) {
				fprintf(stderr, PROG ": --hold takes seconds from 0 to 86400\n");
				return 2;
			}
			o->hold_s = (unsigned)v;
			break;
		case 'h': usage(stdout); exit(EXIT_SUCCESS);
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	return 0;
}

static int run(int argc, char **argv)
{
	struct opts o = { .size_mib = 64 };
	struct vm vm = { .memfd = -1 };
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: poll wakes up */
	int r = parse_args(argc, argv, &o);

	if (r)
		return r;
	setvbuf(stdout, NULL, _IOLBF, 0);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	r = guest_ram_create(&vm, o.size_mib * MiB);
	if (r == 0)
		r = broker_connect(&vm, o.socket);
	if (r == 0)
		r = context_setup(&vm);
	if (r == 0)
		r = plan_mappings(&vm);
	if (r == 0)
		r = map_guest_ram(&vm);
	if (r == 0)
		r = dma_check(&vm);
	if (r == 0)
		r = hold(&vm, o.hold_s);
	if (r == 0)
		r = teardown(&vm);
	vm_free(&vm);
	return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

int main(int argc, char **argv)
{
	return run(argc, argv);
}
