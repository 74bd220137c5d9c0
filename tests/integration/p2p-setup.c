/* p2p-setup: a tiny VMM for test_cli.sh's P2P checks, on the sim backend.
 *
 *   p2p-setup SOCKET
 *
 * Opens two simulated devices (A 0000:01:00.0, B 0000:02:00.0) in one
 * context, turns on A's memory decoding and bus mastering and B's memory
 * decoding, maps 2 MiB of memfd RAM at IOVA 0 and 64 KiB of B's BAR0 (from
 * offset 0x10000) at IOVA 0x40000000, then prints
 *
 *   ready context=C a=A b=B
 *
 * and holds its session, taking commands one per line on stdin:
 *
 *   revoke    clear B's memory bit (the broker revokes the P2P mapping)
 *   restore   set it again (the broker restores the mapping)
 *
 * each answered by "ok memory=0|1 importers=N revoked=N revocations=N
 * restorations=N" (B's state as the broker reports it). End of input ends
 * the session. Any failure prints the broker's error on stderr, exit 1. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dmabroker.h"

#define BDF_A "0000:01:00.0"
#define BDF_B "0000:02:00.0"
#define RAM_SIZE (2u << 20)
#define P2P_IOVA 0x40000000ull
#define P2P_OFFSET 0x10000ull
#define P2P_LENGTH 0x10000ull

static struct dmb_client *g_c;

static void check(int r, const char *what)
{
	if (r >= 0)
		return;
	const struct dmb_error *e = dmb_last_error(g_c);
	fprintf(stderr, "p2p-setup: %s: %s: %s\n", what, dmb_error_code_name(e->code),
		e->message[0] ? e->message : strerror(-r));
	exit(1);
}

static int make_ram(void)
{
	int fd = memfd_create("p2p-setup-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, RAM_SIZE) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		perror("p2p-setup: memfd");
		exit(1);
	}
	return fd;
}

static void print_state(const struct dmb_device_state *st)
{
	printf("ok memory=%d importers=%" PRIu32 " revoked=%" PRIu32 " revocations=%" PRIu64
	       " restorations=%" PRIu64 "\n",
	       st->memory, st->importers, st->revoked, st->revocations, st->restorations);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct dmb_error err;
	struct dmb_device_info a, b;
	struct dmb_device_state st;
	struct dmb_region_info ram;
	uint64_t ctx;
	char line[64];

	if (argc != 2) {
		fprintf(stderr, "usage: p2p-setup SOCKET\n");
		return 2;
	}
	if (dmb_connect_error(argv[1], "p2p-setup", &g_c, &err) < 0) {
		fprintf(stderr, "p2p-setup: %s\n", err.message);
		return 1;
	}
	check(dmb_context_create(g_c, "p2p-vm", &ctx), "context create");
	check(dmb_device_open(g_c, ctx, BDF_A, NULL, &a), "open " BDF_A);
	check(dmb_device_open(g_c, ctx, BDF_B, NULL, &b), "open " BDF_B);
	check(dmb_device_set_command(g_c, a.device, DMB_PCI_MEMORY | DMB_PCI_BUS_MASTER, 0, &st),
	      "enable A");
	check(dmb_device_set_command(g_c, b.device, DMB_PCI_MEMORY, 0, &st), "enable B");

	int fd = make_ram();
	check(dmb_region_register(g_c, ctx, fd, 0, &ram), "region register");
	close(fd);
	struct dmb_map_entry e = { ram.region, 0, 0, RAM_SIZE, DMB_READ | DMB_WRITE };
	check(dmb_map(g_c, ctx, &e), "map RAM");
	check(dmb_map_peer(g_c, ctx, b.device, NULL, 0, P2P_OFFSET, P2P_IOVA, P2P_LENGTH,
			   DMB_READ | DMB_WRITE),
	      "map B's BAR0");

	printf("ready context=%" PRIu64 " a=%" PRIu64 " b=%" PRIu64 "\n", ctx, a.device, b.device);
	fflush(stdout);

	while (fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, "\n")] = '\0';
		if (!strcmp(line, "revoke"))
			check(dmb_device_set_command(g_c, b.device, 0, DMB_PCI_MEMORY, &st), "revoke");
		else if (!strcmp(line, "restore"))
			check(dmb_device_set_command(g_c, b.device, DMB_PCI_MEMORY, 0, &st), "restore");
		else {
			fprintf(stderr, "p2p-setup: unknown command '%s'\n", line);
			return 2;
		}
		dmb_dispatch(g_c, NULL, NULL); /* drop the revocation events */
		print_state(&st);
	}
	dmb_close(g_c);
	return 0;
}
