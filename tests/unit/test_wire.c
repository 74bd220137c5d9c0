/* Unit tests of packet I/O (proto/wire.c) over a real
 * socketpair(AF_UNIX, SOCK_SEQPACKET): fds travel with their packet, arrive
 * O_CLOEXEC and are owned by the received packet until taken; truncation,
 * empty packets, end of stream and non-blocking reads are told apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocol.h"
#include "wire.h"

struct fx {
	int s[2];          /* s[0] sends, s[1] receives (both ways work) */
	struct wire_rx rx;
	char buf[4096];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, f->s), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	wire_close_fds(&f->rx);
	if (f->s[0] >= 0)
		close(f->s[0]);
	close(f->s[1]);
	free(f);
	return 0;
}

static bool fd_closed(int fd)
{
	errno = 0;
	return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

static ino_t ino(int fd)
{
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	return st.st_ino;
}

static int make_file(void)
{
	int fd = memfd_create("wire-test", MFD_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

static int recv_now(struct fx *f, size_t cap)
{
	memset(&f->rx, 0x5a, sizeof(f->rx)); /* wire_recv must set every field */
	return wire_recv(f->s[1], f->buf, cap, &f->rx, true);
}

/* Every received fd is distinct from the sent one, CLOEXEC, and the same
 * file as the one sent at that index. */
static void assert_fds_match(struct fx *f, const int *sent, size_t n)
{
	assert_int_equal(f->rx.nfds, n);
	for (size_t i = 0; i < n; i++) {
		int fd = f->rx.fds[i];
		assert_true(fd >= 0);
		assert_int_not_equal(fd, sent[i]);
		int fl = fcntl(fd, F_GETFD);
		assert_true(fl >= 0);
		if (!(fl & FD_CLOEXEC))
			fail_msg("received fd %zu (%d) is not close-on-exec", i, fd);
		if (ino(fd) != ino(sent[i]))
			fail_msg("received fd %zu is not the file that was sent at index %zu", i, i);
	}
}

static void test_no_fds(void **state)
{
	struct fx *f = *state;
	assert_int_equal(wire_send(f->s[0], "hello", 5, NULL, 0, false), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 5);
	assert_memory_equal(f->buf, "hello", 5);
	assert_int_equal(f->rx.nfds, 0);
	assert_false(f->rx.truncated);
	assert_false(f->rx.fds_truncated);
	assert_false(f->rx.eof);
}

static void test_one_fd(void **state)
{
	struct fx *f = *state;
	int fd = make_file();
	assert_int_equal(wire_send(f->s[0], "x", 1, &fd, 1, false), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 1);
	assert_fds_match(f, &fd, 1);
	assert_false(f->rx.fds_truncated);
	/* The same open file: a write through one is seen through the other. */
	assert_int_equal(write(f->rx.fds[0], "abc", 3), 3);
	char b[3];
	assert_int_equal(pread(fd, b, 3, 0), 3);
	assert_memory_equal(b, "abc", 3);
	close(fd);
}

static void test_max_fds(void **state)
{
	struct fx *f = *state;
	/* 253 to send, 253 received, plus ours: make sure the limit allows it. */
	struct rlimit rl;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < 1024 && rl.rlim_max >= 1024) {
		rl.rlim_cur = 1024;
		assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	}
	assert_true(rl.rlim_cur >= 600);

	int fds[DMB_MAX_FDS];
	for (size_t i = 0; i < DMB_MAX_FDS; i++)
		fds[i] = make_file();
	assert_int_equal(DMB_MAX_FDS, 253);
	assert_int_equal(wire_send(f->s[0], "many", 4, fds, DMB_MAX_FDS, false), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 4);
	assert_false(f->rx.fds_truncated);
	assert_fds_match(f, fds, DMB_MAX_FDS);
	for (size_t i = 0; i < DMB_MAX_FDS; i++)
		close(fds[i]);
}

static void test_too_many_fds(void **state)
{
	struct fx *f = *state;
	int fds[DMB_MAX_FDS + 1];
	int fd = make_file();
	for (size_t i = 0; i <= DMB_MAX_FDS; i++)
		fds[i] = fd;
	assert_int_equal(wire_send(f->s[0], "x", 1, fds, DMB_MAX_FDS + 1, false), -EINVAL);
	assert_int_equal(wire_send(f->s[0], "x", 1, fds, 100000, false), -EINVAL);
	/* Nothing was sent. */
	assert_int_equal(recv_now(f, sizeof(f->buf)), -EAGAIN);
	close(fd);
}

static void test_take_fd(void **state)
{
	struct fx *f = *state;
	int sent[3] = { make_file(), make_file(), make_file() };
	assert_int_equal(wire_send(f->s[0], "abc", 3, sent, 3, false), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_fds_match(f, sent, 3);
	const int got1 = f->rx.fds[1], got0 = f->rx.fds[0], got2 = f->rx.fds[2];

	assert_int_equal(wire_take_fd(&f->rx, -1), -1);
	assert_int_equal(wire_take_fd(&f->rx, INT64_MIN), -1);
	assert_int_equal(wire_take_fd(&f->rx, 3), -1);
	assert_int_equal(wire_take_fd(&f->rx, 253), -1);
	assert_int_equal(wire_take_fd(&f->rx, INT64_MAX), -1);
	assert_int_equal(wire_take_fd(&f->rx, (int64_t)1 << 32), -1);

	int t = wire_take_fd(&f->rx, 1);
	assert_int_equal(t, got1);
	assert_int_equal(wire_take_fd(&f->rx, 1), -1); /* taken twice */
	assert_int_equal(f->rx.fds[1], -1);

	/* What is left is closed; what was taken is not. */
	wire_close_fds(&f->rx);
	assert_true(fd_closed(got0));
	assert_true(fd_closed(got2));
	assert_false(fd_closed(t));
	assert_int_equal(ino(t), ino(sent[1]));
	assert_int_equal(f->rx.nfds, 0);
	/* Nothing left to take, and a second close is harmless. */
	assert_int_equal(wire_take_fd(&f->rx, 0), -1);
	wire_close_fds(&f->rx);
	assert_false(fd_closed(t));
	close(t);
	for (int i = 0; i < 3; i++)
		close(sent[i]);
}

static void test_truncated(void **state)
{
	struct fx *f = *state;
	char big[1000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)i;
	int fd = make_file();
	assert_int_equal(wire_send(f->s[0], big, sizeof(big), &fd, 1, false), 0);
	assert_int_equal(recv_now(f, 100), 0);
	assert_true(f->rx.truncated);
	assert_int_equal(f->rx.len, 100);
	assert_memory_equal(f->buf, big, 100);
	/* The fds of a truncated packet still arrive, owned by rx. */
	assert_fds_match(f, &fd, 1);
	/* The rest of the packet is gone: the next read finds nothing. */
	wire_close_fds(&f->rx);
	assert_int_equal(recv_now(f, sizeof(f->buf)), -EAGAIN);

	/* Exactly the buffer's size is not truncated. */
	assert_int_equal(wire_send(f->s[0], big, 100, NULL, 0, false), 0);
	assert_int_equal(recv_now(f, 100), 0);
	assert_false(f->rx.truncated);
	assert_int_equal(f->rx.len, 100);
	close(fd);
}

static void test_empty_packet_vs_eof(void **state)
{
	struct fx *f = *state;
	/* SEQPACKET keeps empty packets: one is not the end of the stream. */
	assert_int_equal(wire_send(f->s[0], "", 0, NULL, 0, false), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 0);
	assert_false(f->rx.eof);
	assert_false(f->rx.truncated);
	/* An empty packet with an fd. */
	int fd = make_file();
	assert_int_equal(wire_send(f->s[0], "", 0, &fd, 1, false), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 0);
	assert_false(f->rx.eof);
	assert_fds_match(f, &fd, 1);
	wire_close_fds(&f->rx);
	close(fd);
	/* Nothing waiting: -EAGAIN, not eof. */
	assert_int_equal(recv_now(f, sizeof(f->buf)), -EAGAIN);

	/* The peer closes: end of stream, every time it is asked. */
	close(f->s[0]);
	f->s[0] = -1;
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 0);
	assert_true(f->rx.eof);
	assert_int_equal(f->rx.nfds, 0);
	assert_int_equal(wire_recv(f->s[1], f->buf, sizeof(f->buf), &f->rx, false), 0);
	assert_true(f->rx.eof);
}

/* Packets queued before the peer closed are all delivered, and the empty
 * one among them is not taken for the end of the stream: eof must not be
 * reported while a packet is still waiting to be read. */
static void test_empty_packet_then_close(void **state)
{
	struct fx *f = *state;
	assert_int_equal(wire_send(f->s[0], "a", 1, NULL, 0, false), 0);
	assert_int_equal(wire_send(f->s[0], "", 0, NULL, 0, false), 0);
	assert_int_equal(wire_send(f->s[0], "b", 1, NULL, 0, false), 0);
	close(f->s[0]);
	f->s[0] = -1;

	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 1);
	assert_false(f->rx.eof);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 0);
	if (f->rx.eof)
		fail_msg("an empty packet with packet \"b\" still queued behind it was reported as "
			 "end of stream");
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 1);
	assert_memory_equal(f->buf, "b", 1);
	assert_false(f->rx.eof);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_true(f->rx.eof);
}

static void test_eagain(void **state)
{
	struct fx *f = *state;
	assert_int_equal(recv_now(f, sizeof(f->buf)), -EAGAIN);
	assert_int_equal(f->rx.nfds, 0);
	assert_false(f->rx.eof);
	/* And data once something is sent. */
	assert_int_equal(wire_send(f->s[0], "z", 1, NULL, 0, true), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->rx.len, 1);
	assert_int_equal(recv_now(f, sizeof(f->buf)), -EAGAIN);
}

/* One packet's fds never mix with the next one's. */
static void test_fds_stay_with_their_packet(void **state)
{
	struct fx *f = *state;
	int a = make_file(), b = make_file();
	assert_int_equal(wire_send(f->s[0], "1", 1, &a, 1, false), 0);
	assert_int_equal(wire_send(f->s[0], "2", 1, NULL, 0, false), 0);
	assert_int_equal(wire_send(f->s[0], "3", 1, &b, 1, false), 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_fds_match(f, &a, 1);
	wire_close_fds(&f->rx);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->buf[0], '2');
	assert_int_equal(f->rx.nfds, 0);
	assert_int_equal(recv_now(f, sizeof(f->buf)), 0);
	assert_int_equal(f->buf[0], '3');
	assert_fds_match(f, &b, 1);
	close(a);
	close(b);
}

static void test_large_packet(void **state)
{
	struct fx *f = *state;
	wire_size_buffers(f->s[0]);
	wire_size_buffers(f->s[1]);
	char *big = malloc(DMB_MAX_PACKET), *in = malloc(DMB_MAX_PACKET);
	assert_non_null(big);
	assert_non_null(in);
	for (size_t i = 0; i < DMB_MAX_PACKET; i++)
		big[i] = (char)(i * 31);
	assert_int_equal(wire_send(f->s[0], big, DMB_MAX_PACKET, NULL, 0, true), 0);
	memset(&f->rx, 0, sizeof(f->rx));
	assert_int_equal(wire_recv(f->s[1], in, DMB_MAX_PACKET, &f->rx, true), 0);
	assert_int_equal(f->rx.len, DMB_MAX_PACKET);
	assert_false(f->rx.truncated);
	assert_memory_equal(in, big, DMB_MAX_PACKET);
	free(big);
	free(in);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_no_fds),
		T(test_one_fd),
		T(test_max_fds),
		T(test_too_many_fds),
		T(test_take_fd),
		T(test_truncated),
		T(test_empty_packet_vs_eof),
		T(test_empty_packet_then_close),
		T(test_eagain),
		T(test_fds_stay_with_their_packet),
		T(test_large_packet),
	};
	return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
