#include "wire.h"

#include <errno.h>
#include <linux/sockios.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "protocol.h"

_Static_assert(sizeof(((struct wire_rx *)0)->fds) / sizeof(int) == DMB_MAX_FDS,
	       "wire_rx holds exactly SCM_MAX_FD fds");

int wire_recv(int sock, void *buf, size_t cap, struct wire_rx *rx, bool nonblock)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * DMB_MAX_FDS)];
	} control;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};

	rx->len = 0;
	rx->nfds = 0;
	rx->truncated = rx->fds_truncated = rx->eof = false;

	ssize_t n;
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (nonblock ? MSG_DONTWAIT : 0));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		const unsigned char *p = CMSG_DATA(c);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, p + i * sizeof(int), sizeof(int));
			if (rx->nfds < DMB_MAX_FDS)
				rx->fds[rx->nfds++] = fd;
			else
				close(fd);
		}
	}
	rx->fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
	rx->truncated = (msg.msg_flags & MSG_TRUNC) != 0;
	rx->len = (size_t)n;

	if (n == 0 && rx->nfds == 0) {
		/* A zero-length read is either end of stream or an empty packet:
		 * SEQPACKET keeps empty messages. End of stream is a hung-up peer
		 * with nothing left queued (SIOCINQ counts every queued byte on a
		 * SEQPACKET socket); a peer that sent more and then closed still
		 * has its packets read first. */
		struct pollfd p = { .fd = sock, .events = POLLIN | POLLRDHUP };
		int queued = 0;
		if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP)) &&
		    ioctl(sock, SIOCINQ, &queued) == 0 && queued == 0)
			rx->eof = true;
	}
	return 0;
}

int wire_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds, bool nonblock)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * DMB_MAX_FDS)];
	} control;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (nfds > DMB_MAX_FDS)
		return -EINVAL;
	if (nfds > 0) {
		memset(control.buf, 0, sizeof(control.buf));
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}

	ssize_t n;
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

int wire_take_fd(struct wire_rx *rx, int64_t index)
{
	if (index < 0 || (uint64_t)index >= rx->nfds)
		return -1;
	int fd = rx->fds[index];
	rx->fds[index] = -1;
	return fd;
}

void wire_close_fds(struct wire_rx *rx)
{
	for (size_t i = 0; i < rx->nfds; i++)
		if (rx->fds[i] >= 0)
			close(rx->fds[i]);
	rx->nfds = 0;
}

void wire_size_buffers(int sock)
{
	/* The kernel doubles the value and caps it at wmem_max/rmem_max; the
	 * default caps (208 KiB) still give 416 KiB > DMB_MAX_PACKET. */
	int sz = (int)DMB_MAX_PACKET;
	(void)setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	(void)setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}
