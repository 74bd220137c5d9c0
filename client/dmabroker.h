/* libdmabroker — client library for dmabrokerd.
 *
 * Synchronous calls over the broker's unix socket, plus an fd and a dispatch
 * function for server-pushed events. A struct dmb_client is not thread-safe:
 * use one per thread, or serialise calls.
 *
 * Every call returns 0 on success or a negative errno. When the broker
 * answered with an error, the errno reflects its code (NOT_FOUND -> -ENOENT,
 * ALREADY_EXISTS -> -EEXIST, PERMISSION_DENIED -> -EPERM,
 * RESOURCE_EXHAUSTED -> -ENOSPC, FAILED_PRECONDITION -> -EBUSY,
 * UNAVAILABLE -> -EAGAIN, UNIMPLEMENTED -> -EOPNOTSUPP, OUT_OF_RANGE ->
 * -ERANGE, INVALID_ARGUMENT -> -EINVAL, INTERNAL -> -EIO) and
 * dmb_last_error() has the broker's code, errno and sentence. Transport
 * failures return the socket's errno (e.g. -EPIPE, -ECONNRESET), -ETIMEDOUT
 * after dmb_set_timeout()'s limit, and -EBADMSG when the broker's reply does
 * not decode or carries a body of another kind than the request's; then
 * dmb_last_error() has code 0 (DMB_OK), that errno and a sentence. */
#ifndef DMABROKER_H
#define DMABROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DMB_DEFAULT_SOCKET_PATH "/run/dmabroker/dmabroker.sock"

/* Error codes of the wire protocol (docs/protocol.md). */
enum dmb_error_code {
	DMB_OK = 0,
	DMB_INVALID_ARGUMENT = 1,
	DMB_PERMISSION_DENIED = 2,
	DMB_NOT_FOUND = 3,
	DMB_ALREADY_EXISTS = 4,
	DMB_RESOURCE_EXHAUSTED = 5,
	DMB_FAILED_PRECONDITION = 6,
	DMB_UNAVAILABLE = 7,
	DMB_INTERNAL = 8,
	DMB_UNIMPLEMENTED = 9,
	DMB_OUT_OF_RANGE = 10,
};

#define DMB_READ 1u
#define DMB_WRITE 2u

/* Memory attributes of an IOMMU mapping (MemAttr on the wire). */
#define DMB_ATTR_CACHEABLE 1u
#define DMB_ATTR_MMIO 2u

/* Event kinds (struct dmb_event.kind, dmb_subscribe mask). */
#define DMB_EV_CONTEXT_LOST 1u
#define DMB_EV_MAPPINGS_REVOKED 2u
#define DMB_EV_MAPPINGS_RESTORED 4u
#define DMB_EV_DEVICE_STATE 8u
#define DMB_EV_HANDOFF 16u
/* The broker restarted (its state was kept). A call waiting for its reply
 * when the request was lost in the restart returns -EAGAIN (UNAVAILABLE):
 * retry it. */
#define DMB_EV_RESTARTED 32u

struct dmb_client;

struct dmb_error {
	int code;         /* enum dmb_error_code; 0 after a transport error */
	int sys_errno;    /* errno reported by the broker, or the transport errno */
	uint32_t index;   /* batch calls: the entry that failed */
	char message[256];
	uint32_t retry_after_ms; /* UNAVAILABLE: when a retry makes sense (0: no hint) */
};

struct dmb_server_info {
	uint32_t protocol_version;
	char server_version[32];
	char backend[32];
	char features[256];      /* space-separated */
	uint32_t max_packet_bytes;
	uint32_t max_fds;
	uint32_t max_batch;
	uint64_t session_id;
	bool admin;
};

struct dmb_iova_range {
	uint64_t start;
	uint64_t last; /* inclusive */
};

struct dmb_iova_info {
	size_t n;
	struct dmb_iova_range ranges[32];
	uint64_t alignment;
	uint32_t max_mappings;       /* 0: no backend limit */
	uint32_t mappings_available;
};

struct dmb_map_entry {
	uint64_t region;
	uint64_t offset;
	uint64_t iova;
	uint64_t length;
	uint32_t prot; /* DMB_READ | DMB_WRITE */
};

struct dmb_range {
	uint64_t iova;
	uint64_t length;
};

struct dmb_region_info {
	uint64_t region;
	uint64_t size;
	bool writable;
	char kind[16];
	uint64_t page_size;
};

struct dmb_device_info {
	uint64_t device;
	uint16_t vendor_id;
	uint16_t device_id;
	char group[64];
	bool viable;
};

struct dmb_stats {
	uint32_t contexts;
	uint32_t regions;
	uint64_t mappings;
	uint64_t mapped_bytes;
	uint64_t pinned_bytes;
	uint32_t devices;
	uint64_t p2p_mappings;  /* MMIO (peer BAR) mappings, also counted in mappings */
	uint64_t p2p_bytes;
	uint64_t revocations;
	uint64_t restorations;
	uint32_t noiommu_contexts; /* of contexts: no-IOMMU ones (no isolation) */
};

/* PCI command register bits (dmb_device_set_command). */
#define DMB_PCI_MEMORY 0x0002u
#define DMB_PCI_BUS_MASTER 0x0004u

struct dmb_device_state {
	uint16_t command;
	bool memory;
	bool bus_master;
	uint32_t importers;     /* P2P mappings targeting the device */
	uint32_t revoked;       /* of which revoked now */
	uint64_t revocations;
	uint64_t restorations;
};

struct dmb_importer {
	uint64_t context;
	uint64_t iova;
	uint64_t length;
	uint32_t bar;
	uint64_t offset;
	bool revoked;
	uint32_t owner_uid;
	uint32_t attr;          /* DMB_ATTR_MMIO or DMB_ATTR_CACHEABLE */
};

struct dmb_device_listing {
	uint64_t device;
	char bdf[16];
	char group[64];
	uint64_t context;
	uint32_t owner_uid;
	uint16_t vendor_id;
	uint16_t device_id;
	struct dmb_device_state state;
	bool in_reset;
	size_t n_importers;
	struct dmb_importer *importers; /* points into the same allocation */
};

struct dmb_status {
	char server_version[32];
	char backend[32];
	char features[256];
	uint64_t uptime_ms;
	uint32_t sessions;
	uint32_t pid;
	struct dmb_stats totals; /* pinned_bytes: the backend's own accounting */
};

struct dmb_context_info {
	uint64_t context;
	char name[65];
	uint32_t owner_uid;
	uint32_t owner_pid;
	uint64_t session;
	bool persistent;
	uint32_t regions;
	uint64_t mappings;
	uint64_t mapped_bytes;
	uint32_t devices;
	bool noiommu;           /* a no-IOMMU context: NO isolation */
};

struct dmb_mapping_info {
	uint64_t iova;
	uint64_t length;
	uint64_t region;        /* 0 for a P2P mapping */
	uint64_t offset;
	uint32_t prot;
	bool mmio;              /* a peer device's BAR */
	uint64_t peer_device;
	uint32_t bar;
	bool revoked;
	/* the IOMMU attributes: DMB_ATTR_CACHEABLE (RAM; a P2P mapping of the
	 * vfio-type1 backend) or DMB_ATTR_MMIO (a P2P mapping made as MMIO) */
	uint32_t attr;
	uint64_t granule;       /* 0: ordinary; else a granular mapping's granule */
	uint64_t page_size;     /* the largest IOMMU page size the mapping allows */
	uint64_t discarded;     /* granules currently discarded */
};

struct dmb_event {
	uint64_t seq;
	uint32_t kind;
	uint64_t context;
	uint64_t device;
	size_t n_ranges;
	const struct dmb_range *ranges;
	const char *message;
	bool permanent;         /* revoked for good: the peer device was released */
	const char *handoff_state; /* DMB_EV_HANDOFF: "prepared", "reclaiming", "normal", ... */
};

typedef void (*dmb_event_cb)(const struct dmb_event *ev, void *opaque);

/* Connects to the broker at path (NULL: $DMABROKER_SOCKET or the default)
 * and performs the handshake. On failure nothing is left to close, so the
 * reason is lost: use dmb_connect_error() to learn it. */
int dmb_connect(const char *path, const char *client_name, struct dmb_client **out);
/* dmb_connect(), and on failure *err (if not NULL) says why: the broker's
 * refusal of the handshake (code != 0, e.g. FAILED_PRECONDITION for an
 * unsupported protocol version, with its errno and sentence), or a transport
 * failure (code 0, sys_errno, "cannot connect to PATH: ..."). Zeroed on
 * success. The handshake waits for the broker without a time limit. */
int dmb_connect_error(const char *path, const char *client_name, struct dmb_client **out,
		      struct dmb_error *err);
void dmb_close(struct dmb_client *c);

/* Bounds every later call: a request the broker does not accept within ms,
 * or whose reply has not arrived ms after it was sent (events that arrive
 * meanwhile do not extend it), fails with -ETIMEDOUT and dmb_last_error()
 * says so. The broker may still carry the request out; its late reply is
 * discarded. ms 0: wait forever (the default); negative: -EINVAL. Sets
 * SO_SNDTIMEO and SO_RCVTIMEO on the socket. */
int dmb_set_timeout(struct dmb_client *c, int ms);

const struct dmb_error *dmb_last_error(const struct dmb_client *c);
const struct dmb_server_info *dmb_server_info(const struct dmb_client *c);
const char *dmb_error_code_name(int code);

/* Events: poll dmb_fd() for POLLIN, then call dmb_dispatch(), which also
 * delivers events that arrived while a call waited for its reply. */
int dmb_fd(const struct dmb_client *c);
int dmb_dispatch(struct dmb_client *c, dmb_event_cb cb, void *opaque);
int dmb_subscribe(struct dmb_client *c, uint32_t mask);

int dmb_context_create(struct dmb_client *c, const char *name, uint64_t *context);
int dmb_context_destroy(struct dmb_client *c, uint64_t context);

/* Persistent contexts outlive the session (and a broker restart): a new
 * session takes one back with its reclaim token. Tokens are single-use: a
 * reclaim writes the next token into `token`. */
#define DMB_RECLAIM_TOKEN_SIZE 32
#define DMB_RECLAIM_MAX 64
struct dmb_reclaimed_region {
	uint64_t region;
	uint64_t size;
	int fd;                 /* the region's memfd (caller owns it), or -1 */
	bool stranded;          /* after a kexec: the memfd only, no region or mappings */
};
struct dmb_reclaimed_device {
	uint64_t device;
	char bdf[16];
	int fd;                 /* a device fd (caller owns it), or -1 */
};
struct dmb_reclaim_info {
	uint64_t mappings;
	bool degraded;
	size_t n_regions;
	struct dmb_reclaimed_region regions[DMB_RECLAIM_MAX];
	size_t n_devices;
	struct dmb_reclaimed_device devices[DMB_RECLAIM_MAX];
};
int dmb_context_create_persistent(struct dmb_client *c, const char *name, uint64_t *context,
				  uint8_t token[DMB_RECLAIM_TOKEN_SIZE]);
/* Context creation with flags: DMB_CONTEXT_PERSISTENT (token receives the
 * reclaim token; NULL only without it) and DMB_CONTEXT_NOIOMMU (a context
 * for devices with no IOMMU: no isolation; the broker's policy must grant
 * it, see docs/security.md). */
#define DMB_CONTEXT_PERSISTENT 1u
#define DMB_CONTEXT_NOIOMMU 2u
int dmb_context_create_flags(struct dmb_client *c, const char *name, unsigned flags,
			     uint64_t *context, uint8_t token[DMB_RECLAIM_TOKEN_SIZE]);

/* No-IOMMU contexts: the physically contiguous ranges behind
 * [iova, iova+length), every byte of which must be mapped, in IOVA order;
 * at most cap (and 4096) per call: with *more set, call again from *next
 * with the rest of the length. */
struct dmb_phys_range {
	uint64_t iova;
	uint64_t phys;
	uint64_t length;
};
int dmb_phys_ranges(struct dmb_client *c, uint64_t context, uint64_t iova, uint64_t length,
		    struct dmb_phys_range *out, size_t cap, size_t *n, bool *more, uint64_t *next);
/* out NULL: no fds handed back. */
int dmb_context_reclaim(struct dmb_client *c, uint64_t context,
			uint8_t token[DMB_RECLAIM_TOKEN_SIZE], struct dmb_reclaim_info *out);

/* The fd is borrowed: the broker receives its own reference; close yours
 * whenever you like. size 0: the whole file. */
int dmb_region_register(struct dmb_client *c, uint64_t context, int fd, uint64_t size,
			struct dmb_region_info *out);
int dmb_region_unregister(struct dmb_client *c, uint64_t context, uint64_t region);

int dmb_iova_ranges(struct dmb_client *c, uint64_t context, struct dmb_iova_info *out);

int dmb_map(struct dmb_client *c, uint64_t context, const struct dmb_map_entry *e);
/* All or nothing; on failure dmb_last_error()->index names the entry. */
int dmb_map_batch(struct dmb_client *c, uint64_t context, const struct dmb_map_entry *e, size_t n);
int dmb_unmap(struct dmb_client *c, uint64_t context, uint64_t iova, uint64_t length,
	      uint64_t *unmapped_bytes);
int dmb_unmap_batch(struct dmb_client *c, uint64_t context, const struct dmb_range *r, size_t n,
		    uint64_t *unmapped_bytes);
int dmb_unmap_all(struct dmb_client *c, uint64_t context, uint64_t *unmapped_bytes);

/* Granular mappings (confidential guests): a mapping made of granule-sized
 * IOMMU areas (granule DMB_GRANULE_4K or DMB_GRANULE_2M; iova, offset and
 * length multiples of it) whose granules dmb_discard removes from the IOMMU
 * and dmb_populate puts back, any set at a time, all or nothing per call.
 * page_size (may be NULL) gets the largest IOMMU page size the mapping
 * allows. */
#define DMB_GRANULE_4K 4096u
#define DMB_GRANULE_2M 2097152u
int dmb_map_granular(struct dmb_client *c, uint64_t context, const struct dmb_map_entry *e,
		     uint64_t granule, uint64_t *page_size);
struct dmb_convert_info {
	uint64_t granules;      /* granules whose state changed */
	uint64_t bytes;
	uint64_t unchanged;     /* already discarded (populated) */
	uint64_t pinned_bytes;  /* the context's pinned bytes afterwards */
};
/* ranges: granule aligned, inside granular mappings; at most max_batch.
 * out may be NULL. On failure dmb_last_error()->index names the range. */
int dmb_discard(struct dmb_client *c, uint64_t context, const struct dmb_range *r, size_t n,
		struct dmb_convert_info *out);
int dmb_populate(struct dmb_client *c, uint64_t context, const struct dmb_range *r, size_t n,
		 struct dmb_convert_info *out);

/* Opens a PCI function (policy-checked) and attaches it to the context.
 * With fd_out non-NULL the broker hands back a duplicate of the device fd
 * (the caller owns it). */
int dmb_device_open(struct dmb_client *c, uint64_t context, const char *bdf, int *fd_out,
		    struct dmb_device_info *out);
int dmb_device_close(struct dmb_client *c, uint64_t device);

/* P2P: map [offset, offset+length) of BAR `bar` of one of this client's
 * devices at iova in context (peer_bdf NULL), or of the device at peer_bdf
 * (peer_device 0; another client's device needs policy). */
int dmb_map_peer(struct dmb_client *c, uint64_t context, uint64_t peer_device,
		 const char *peer_bdf, unsigned bar, uint64_t offset, uint64_t iova,
		 uint64_t length, uint32_t prot);
/* The same, and *attr (if not NULL) gets the memory attributes the IOMMU
 * maps the BAR with: DMB_ATTR_MMIO, or DMB_ATTR_CACHEABLE where the backend
 * can only map it like RAM (vfio-type1; docs/operations.md "P2P memory
 * attributes"). */
int dmb_map_peer_attr(struct dmb_client *c, uint64_t context, uint64_t peer_device,
		      const char *peer_bdf, unsigned bar, uint64_t offset, uint64_t iova,
		      uint64_t length, uint32_t prot, uint32_t *attr);
/* Mediated command-register change: revokes P2P importers before memory
 * decoding goes off, restores them after it is back on. */
int dmb_device_set_command(struct dmb_client *c, uint64_t device, uint16_t set_bits,
			   uint16_t clear_bits, struct dmb_device_state *out);
int dmb_device_reset(struct dmb_client *c, uint64_t device, struct dmb_device_state *out);
/* *out is one malloc'ed block; free() it. all: every client's (admin only). */
int dmb_list_devices(struct dmb_client *c, bool all, struct dmb_device_listing **out, size_t *n);

/* Sim backend only: a simulated device's DMA engine (bus mastering on). */
int dmb_sim_device_dma_read(struct dmb_client *c, uint64_t device, uint64_t iova, void *buf,
			    size_t len);
int dmb_sim_device_dma_write(struct dmb_client *c, uint64_t device, uint64_t iova,
			     const void *buf, size_t len);

/* Sim backend only: DMA through the context's simulated IOMMU. len <= 64 KiB. */
int dmb_sim_dma_read(struct dmb_client *c, uint64_t context, uint64_t iova, void *buf, size_t len);
int dmb_sim_dma_write(struct dmb_client *c, uint64_t context, uint64_t iova, const void *buf,
		      size_t len);

/* context 0: all of this session's contexts. */
int dmb_stats(struct dmb_client *c, uint64_t context, struct dmb_stats *out);
/* Admin sessions only. */
int dmb_status(struct dmb_client *c, struct dmb_status *out);
/* *out is malloc'ed; free() it. all: every client's (admin only). */
int dmb_list_contexts(struct dmb_client *c, bool all, struct dmb_context_info **out, size_t *n);
/* One page of mappings with iova >= start; *more and *next continue it. */
int dmb_list_mappings(struct dmb_client *c, uint64_t context, uint64_t start,
		      struct dmb_mapping_info *out, size_t cap, size_t *n, bool *more,
		      uint64_t *next);

struct dmb_client_info {
	uint64_t session;
	uint32_t uid, gid, pid;
	char name[65];
	bool admin;
	uint32_t contexts;
	uint64_t mappings;
	uint64_t pinned_bytes;
	uint32_t devices;
	uint64_t requests;
	uint64_t connected_ms;
};

struct dmb_revoke_info {
	uint64_t context;
	uint64_t unmapped;        /* mappings the context held */
	uint64_t unmapped_bytes;
	uint32_t devices;         /* devices closed */
	uint64_t owner_session;   /* 0: no session owned it (persistent, detached) */
	uint32_t owner_uid;
};

struct dmb_reload_info {
	uint32_t sessions;        /* sessions whose policy was re-resolved */
	uint32_t policy_sections;
	char path[256];           /* the file read; "" for the built-in defaults */
};

/* Admin sessions only. *out is malloc'ed; free() it. */
int dmb_list_clients(struct dmb_client *c, struct dmb_client_info **out, size_t *n);
/* Admin: kills any client's context (unmaps everything, closes its devices,
 * releases its regions); its owner gets DMB_EV_CONTEXT_LOST. out may be NULL. */
int dmb_revoke_context(struct dmb_client *c, uint64_t context, struct dmb_revoke_info *out);
/* Admin: re-reads the broker's configuration (as SIGHUP); a bad file changes
 * nothing and fails with DMB_INVALID_ARGUMENT naming file:line. */
int dmb_reload_policy(struct dmb_client *c, struct dmb_reload_info *out);
/* Host handoff (kernel update by kexec; docs/operations.md). Admin sessions
 * only. While prepared, every request that changes state fails with -EAGAIN
 * (DMB_UNAVAILABLE) until the update is done or aborted. */
#define DMB_HANDOFF_LEFT_OUT_MAX 64
struct dmb_handoff_left_out {
	uint64_t context;
	char name[65];
	char reason[200];
};
struct dmb_handoff_info {
	char state[16];           /* "normal", "prepared", "restoring", "reclaiming" */
	char preserver[16];       /* "luo", "sim", "none" */
	bool available;           /* status: prepare could start now */
	char message[256];        /* status: why not / what happens next */
	char session_name[64];
	uint64_t since_ms;        /* status: time in this state */
	uint32_t contexts;        /* preserved (prepare), restored (reclaiming) */
	uint32_t regions;         /* prepare: memfds preserved */
	uint64_t mappings;
	uint64_t bytes;           /* prepare: memory preserved */
	uint32_t devices;
	uint32_t unclaimed;       /* reclaiming */
	uint32_t degraded;        /* reclaiming */
	uint64_t grace_remaining_ms; /* reclaiming */
	size_t n_left_out;        /* contexts left out (force) or that would be */
	struct dmb_handoff_left_out left_out[DMB_HANDOFF_LEFT_OUT_MAX];
};
int dmb_handoff_status(struct dmb_client *c, struct dmb_handoff_info *out);
/* force: leave out contexts that cannot be preserved (listed in out). Without
 * it, such contexts make it fail with DMB_FAILED_PRECONDITION and a message
 * that lists them. out may be NULL. */
int dmb_handoff_prepare(struct dmb_client *c, bool force, struct dmb_handoff_info *out);
/* out (may be NULL): the state afterwards. */
int dmb_handoff_abort(struct dmb_client *c, struct dmb_handoff_info *out);

#ifdef __cplusplus
}
#endif

#endif
