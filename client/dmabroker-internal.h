/* Internals of libdmabroker shared with the project's own tests and tools
 * (not installed). */
#pragma once

#include "dmabroker.h"
#include "dmabroker.pb-c.h"

/* Connects without the handshake (tests of the pre-handshake state). */
int dmb_connect_raw(const char *path, struct dmb_client **out);
int dmb_hello(struct dmb_client *c, uint32_t version, const char *name);

/* Sends req (its id is assigned here) with fds and waits for the reply with
 * that id. *reply is freed with dmb__reply__free_unpacked(). Fds that came
 * with the reply are stored in rfds (up to *nrfds, updated); extra are closed.
 * Returns 0 when a reply arrived (check (*reply)->error), else a transport
 * errno. */
int dmb_call(struct dmb_client *c, Dmb__Request *req, const int *fds, size_t nfds,
	     Dmb__Reply **reply, int *rfds, size_t *nrfds);

/* Sends bytes as one packet and waits for the next reply, whatever its id. */
int dmb_call_bytes(struct dmb_client *c, const void *buf, size_t len, const int *fds, size_t nfds,
		   Dmb__Reply **reply);

/* Turns a reply into the call's return value and last error. */
int dmb_reply_status(struct dmb_client *c, const Dmb__Reply *reply);

int dmb_socket(const struct dmb_client *c);
