/* Packet I/O on a SOCK_SEQPACKET unix socket with SCM_RIGHTS fds.
 *
 * A received packet owns the fds that came with it: a handler that keeps one
 * sets its slot to -1 (wire_take_fd); wire_close_fds() closes whatever is left.
 * Fds always arrive O_CLOEXEC (MSG_CMSG_CLOEXEC). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct wire_rx {
	size_t len;          /* bytes received (<= cap) */
	size_t nfds;
	int fds[253];
	bool truncated;      /* the packet was larger than the buffer (MSG_TRUNC) */
	bool fds_truncated;  /* more fds than fit (MSG_CTRUNC); the rest were dropped */
	bool eof;            /* the peer closed the connection */
};

/* Receives one packet into buf. Returns 0 (see rx for what arrived), or a
 * negative errno (-EAGAIN when nothing is waiting on a non-blocking socket). */
int wire_recv(int sock, void *buf, size_t cap, struct wire_rx *rx, bool nonblock);

/* Sends one packet with optional fds. Returns 0 or a negative errno. */
int wire_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds, bool nonblock);

/* Takes fd index i out of a received packet: returns it (the caller owns it)
 * or -1 when the index is out of range or was already taken. */
int wire_take_fd(struct wire_rx *rx, int64_t index);

void wire_close_fds(struct wire_rx *rx);

/* Makes the socket's buffers large enough for DMB_MAX_PACKET. */
void wire_size_buffers(int sock);
