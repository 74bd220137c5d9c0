/* fuzz_rpc: packets of one client, through the daemon's real dispatch.
 *
 * A whole server (server_init) over the sim backend lives in this process;
 * every input gets a fresh server and one session on a socketpair, so ids
 * start at 1 each time (the seeds name context 1, region 2 ...) and nothing
 * carries over from one input to the next: state is bounded by one input.
 *
 * Input: up to 32 packets, each
 *   u8 flags   bits 0-1: fds attached (0-3), bits 2-3: what they are
 *              (0 sealed memfd, 1 read-only sealed memfd, 2 unsealed
 *              memfd, 3 a pipe), bit 6: MSG_TRUNC, bit 7: MSG_CTRUNC
 *   u16 len    little-endian; the payload (a Request, or anything) follows
 *              (a shorter tail is the payload).
 * Every reply must decode as a ServerMessage; replies' fds are closed. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "policy/config.h"
#include "protocol.h"
#include "server/server.h"
#include "util/log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] =
	"[daemon]\nbackend = sim\n"
	"[sim]\ndevices = 0000:01:00.0 0000:02:00.0\n"
	"[default]\ndevices = 0000:01:00.0 0000:02:00.0\np2p = yes\np2p_cross_context = yes\n"
	"contexts = 4\nmappings_per_context = 256\npinned_bytes = 64M\n"
	"[p2p]\npoll_interval_ms = 60000\n";

static struct dmb_config cfg;
static bool verbose; /* FUZZ_RPC_LOG=1: the daemon's log and every reply's error */
static struct dmb_backend *be;
static struct event_base *base;
static uint8_t *rxbuf;

static char sock_dir[] = "/tmp/fuzz_rpc-XXXXXX";

static void remove_sock_dir(void)
{
	rmdir(sock_dir);
}

static void die(const char *what)
{
	fprintf(stderr, "fuzz_rpc: %s: %s\n", what, strerror(errno));
	abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	verbose = getenv("FUZZ_RPC_LOG") != NULL;
	dmb_log_max_level = verbose ? LOG_DEBUG : -1; /* logging would dominate the run */
	config_defaults(&cfg);
	int cf = memfd_create("fuzz.conf", MFD_CLOEXEC);
	if (cf < 0 || write(cf, config_text, sizeof(config_text) - 1) < 0)
		die("config memfd");
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", cf);
	struct dmb_err e = { 0 };
	if (config_load(&cfg, path, &e) < 0) {
		fprintf(stderr, "fuzz_rpc: config: %s\n", e.msg);
		abort();
	}
	close(cf);

	const char *simdevs[17] = { 0 };
	for (size_t i = 0; i < cfg.n_sim_devices; i++)
		simdevs[i] = cfg.sim_devices[i];
	struct dmb_backend_config bcfg = {
		.sim_devices = simdevs, .name = "sim", .sysfs_root = "/sys", .dev_root = "/dev",
	};
	if (dmb_backend_create(&bcfg, &be, &e) < 0) {
		fprintf(stderr, "fuzz_rpc: backend: %s\n", e.msg);
		abort();
	}
	/* server_init listens on this path (never accepted from) and
	 * server_fini removes it; nothing may come from systemd. */
	if (!mkdtemp(sock_dir))
		die("mkdtemp");
	atexit(remove_sock_dir);
	snprintf(cfg.socket_path, sizeof(cfg.socket_path), "%s/sock", sock_dir);
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_PID");
	unsetenv("NOTIFY_SOCKET");
	base = event_base_new();
	rxbuf = malloc(DMB_MAX_PACKET + 1);
	if (!base || !rxbuf)
		die("event_base_new / malloc");
	return 0;
}

static int make_fd(unsigned kind)
{
	if (kind == 3) {
		int p[2];
		if (pipe2(p, O_CLOEXEC) < 0)
			die("pipe");
		close(p[1]);
		return p[0];
	}
	int fd = memfd_create("guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, 64 * 1024) < 0)
		die("memfd");
	if (kind != 2 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		die("seal");
	if (kind == 1) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		int ro = open(path, O_RDONLY | O_CLOEXEC);
		close(fd);
		fd = ro;
	}
	return fd;
}

/* Reads every reply waiting on the client's end; each must decode. */
static void drain(int sock)
{
	for (;;) {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof(int) * DMB_MAX_FDS)];
		} control;
		struct iovec iov = { .iov_base = rxbuf, .iov_len = DMB_MAX_PACKET + 1 };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
				      .msg_controllen = sizeof(control.buf) };
		ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0)
			return;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
				close(fd);
			}
		}
		Dmb__ServerMessage *m = dmb__server_message__unpack(NULL, (size_t)n, rxbuf);
		if (!m || (size_t)n > DMB_MAX_PACKET || (msg.msg_flags & MSG_TRUNC)) {
			fprintf(stderr, "fuzz_rpc: the daemon sent an undecodable %zd-byte packet\n", n);
			abort();
		}
		if (verbose && m->kind_case == DMB__SERVER_MESSAGE__KIND_REPLY)
			fprintf(stderr, "fuzz_rpc: reply %llu: %s\n", (unsigned long long)m->reply->id,
				m->reply->error ? m->reply->error->message : "ok");
		dmb__server_message__free_unpacked(m, NULL);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct server srv;
	if (server_init(&srv, base, &cfg, be) < 0)
		die("server_init");
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	struct session *s = session_new(&srv, sv[0]);
	if (!s)
		die("session_new");

	for (int pkt = 0; pkt < 32 && size >= 3 && !s->closing; pkt++) {
		uint8_t flags = data[0];
		size_t len = (size_t)data[1] | (size_t)data[2] << 8;
		data += 3;
		size -= 3;
		if (len > size)
			len = size;
		struct wire_rx rx = { .len = len };
		rx.truncated = (flags & 0x40) != 0;
		rx.fds_truncated = (flags & 0x80) != 0;
		rx.nfds = flags & 3;
		for (size_t i = 0; i < rx.nfds; i++)
			rx.fds[i] = make_fd((flags >> 2) & 3);
		memcpy(srv.rxbuf, data, len);
		rpc_handle(s, srv.rxbuf, &rx);
		drain(sv[1]);
		data += len;
		size -= len;
	}

	session_free(s); /* closes sv[0]; non-persistent contexts go */
	close(sv[1]);
	server_fini(&srv); /* persistent ones too; closes and removes the socket */
	return 0;
}
