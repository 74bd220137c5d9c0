/* proto/: the wire contract, shared by the daemon and libdmabroker.
 * Owns: dmabroker.proto (protobuf-c generates the codec), the framing of a
 * packet on the SOCK_SEQPACKET socket (wire.c), the fast codec of the
 * small-map hot path (fastcodec.c, its tags checked at compile time against
 * the .proto by field-numbers.py's header), and these constants.
 * May call: protobuf-c and the C library only. No circle inside.
 */

/* Limits of the wire contract (docs/protocol.md "Limits"). Shared by the
 * daemon and libdmabroker. */
#pragma once

#define DMB_PROTOCOL_VERSION 1u

/* One packet at most this big. A unix SEQPACKET sender can send up to its
 * socket send buffer (twice the SO_SNDBUF it sets, capped by wmem_max for
 * unprivileged processes: 2 * 208 KiB on a default kernel); both ends set
 * SO_SNDBUF/SO_RCVBUF so that 256 KiB always fits. A 10,000-entry MapBatch
 * encodes to about 200 KiB. */
#define DMB_MAX_PACKET (256u * 1024u)

/* SCM_MAX_FD in the kernel: the most fds one packet can carry. */
#define DMB_MAX_FDS 253u

/* Entries per MapBatch / UnmapBatch. */
#define DMB_MAX_BATCH 16384u

/* Bytes one SimDma request may move. */
#define DMB_MAX_SIM_DMA (64u * 1024u)

/* Entries per ListMappings page. */
#define DMB_MAX_LIST 4096u

/* Reclaim tokens: 32 random bytes. */
#define DMB_TOKEN_SIZE 32u

/* Free-text fields (names) at most this long. */
#define DMB_MAX_NAME 64u

/* Event kinds (Event.kind, Subscribe.mask). */
enum {
	DMB_EVENT_CONTEXT_LOST = 1u << 0,
	DMB_EVENT_MAPPINGS_REVOKED = 1u << 1,
	DMB_EVENT_MAPPINGS_RESTORED = 1u << 2,
	DMB_EVENT_DEVICE_STATE = 1u << 3,
	DMB_EVENT_HANDOFF = 1u << 4,
	DMB_EVENT_RESTARTED = 1u << 5,
	DMB_EVENT_ALL = (1u << 6) - 1,
};
