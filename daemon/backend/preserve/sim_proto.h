/* sim_proto.h — the wire between the daemon's simulated preserver
 * (daemon/backend/preserve/sim.c) and the program that plays the kernel for it
 * (tools/dmb-sim-preserver.c).
 *
 * A unix SOCK_SEQPACKET socket; one fixed-size request per packet, one
 * fixed-size reply per request, both little more than the LUO ioctl
 * arguments. A connection is what /dev/liveupdate and a session fd are in
 * the kernel:
 *   - a fresh connection may PING, HOLD (take the "device" so that every
 *     other CREATE/RETRIEVE gets EBUSY, as a second opener of
 *     /dev/liveupdate would), CREATE or RETRIEVE (which bind it to a
 *     session: from then on it *is* the session fd), STATUS or KEXEC;
 *   - a session connection may PRESERVE_FD (the fd rides in SCM_RIGHTS),
 *     RETRIEVE_FD (the reply carries the fd) and FINISH;
 *   - when the last reference to a session connection is closed, the
 *     server sees the hang-up: an outgoing session is aborted (its files
 *     unpreserved), a retrieved one is finished (never-retrieved files are
 *     discarded) -- the kernel's rules for a closed session fd.
 * A request carries an id that its reply echoes: a session connection can
 * pass from a daemon to its restarted successor (through the fd store), and
 * the successor skips a reply its predecessor never read.
 *
 * Every field is native-endian (both ends run on one host). */
#pragma once

#include <stdint.h>

#define SIMP_MAGIC 0x444d4250u /* "PBMD" */
#define SIMP_VERSION 1
#define SIMP_NAME_LEN 64 /* including the NUL, as LUO's */
#define SIMP_MAX_FILES 128
#define SIMP_MAX_SESSIONS 819 /* ENOMEM beyond, as the kernel's area */

enum simp_op {
	SIMP_PING = 1,
	SIMP_CREATE = 2,
	SIMP_RETRIEVE = 3,
	SIMP_PRESERVE_FD = 4, /* request carries one fd */
	SIMP_RETRIEVE_FD = 5, /* reply carries one fd */
	SIMP_FINISH = 6,
	SIMP_HOLD = 7,
	SIMP_STATUS = 8, /* reply carries a memfd with the report */
	SIMP_KEXEC = 9,  /* reply text says why a freeze failed */
};

/* SIMP_STATUS flags */
#define SIMP_STATUS_JSON 1u
/* SIMP_KEXEC flags: the next "kernel" cannot read the handoff data, so
 * every CREATE/RETRIEVE answers EIO until the kexec after it. */
#define SIMP_KEXEC_INCOMPATIBLE 1u
/* SIMP_KEXEC flags: the next "kernel" re-creates retrieved memfds without
 * their seals (as Linux 6.19), from then on. */
#define SIMP_KEXEC_MEMFD_V1 2u

struct simp_req {
	uint32_t magic;
	uint16_t version;
	uint16_t op;  /* enum simp_op */
	uint64_t id;  /* echoed by the reply */
	uint64_t token;
	uint32_t flags;
	uint32_t reserved; /* 0 */
	char name[SIMP_NAME_LEN]; /* NUL-terminated */
};

/* SIMP_PING reply flags: what the simulated kernel's memfd preservation
 * brings across a kexec. Without SIMP_CAP_MEMFD_SEALS it plays Linux 6.19
 * (format memfd-v1): a retrieved memfd is a new file that cannot be sealed. */
#define SIMP_CAP_MEMFD_SEALS 1u

struct simp_reply {
	uint32_t magic;
	uint16_t version;
	uint16_t op;
	uint64_t id;
	int32_t result; /* 0 or a negative errno */
	uint32_t flags; /* SIMP_PING: SIMP_CAP_*; otherwise 0 */
	char text[192]; /* a sentence when result < 0 (may be empty) */
};

_Static_assert(sizeof(struct simp_req) == 96, "simp_req layout");
_Static_assert(sizeof(struct simp_reply) == 216, "simp_reply layout");
