/* daemon/core/: the object model, one file per object (context.c,
 * region.c, mapping.c, granule.c the granules of granular mappings,
 * device.c, p2p.c, account.c, core.c the ids, owners and events).
 * May call: backend/ (through struct dmb_backend's table; every other part
 * reaches the backend through the core's functions), policy/ (limits and
 * the device address check), util/. The journal is reached only through
 * the dmb_journal_hooks that state/ installs.
 * Never calls: state/ (but through those hooks), server/, mgmt/, proto/
 * (no socket, no protobuf).
 * Circles inside, as designed: the objects call one another (a context
 * closes its devices and mappings; a mapping checks its context's IOVA
 * space; a device revokes its P2P importers).
 */

/* The core model: owners (sessions as the core sees them), contexts,
 * regions, mappings and devices. The core never touches a socket; it calls
 * the backend (backend.h) and reports events through a callback.
 *
 * Ownership
 *   core ─┬─ owners (one per session) ── contexts they created
 *         └─ contexts (by id) ─┬─ regions (by id), each holding its fd
 *                              ├─ mappings (by IOVA), each pinning a region
 *                              └─ devices
 * A context is destroyed with its owner unless it is persistent. A region
 * cannot be unregistered while mappings use it. Every lookup a client can
 * trigger checks the owner and answers "not found" for another owner's
 * object, so ids reveal nothing.
 *
 * Threading: single-threaded (the event loop), except map_kernel and
 * unmap_kernel (mapping.c), which a worker thread may run for a context the
 * loop leaves alone meanwhile. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/tree.h>
#include <sys/types.h>

#include "backend/backend.h"
#include "policy/limits.h"
#include "util/err.h"
#include "util/rbtree.h"

struct dmb_core;
struct dmb_ctx;

enum {
	DMB_MAP_MMIO = 1u << 0,    /* a peer BAR (struct dmb_p2p), not RAM */
	DMB_MAP_REVOKED = 1u << 1, /* MMIO mapping currently absent from the IOMMU */
};

/* A RAM mapping. MMIO mappings are the first member of a struct dmb_p2p
 * (region is NULL, offset is into the BAR).
 *
 * 56 bytes, because a context may hold millions: the tree link packs the
 * parent pointer and the colour into one word (util/rbtree.h), prot lives
 * in that word's two owner bits (map_prot), and the flags are not stored:
 * MMIO is `region == NULL`, REVOKED is the struct dmb_p2p's (map_flags). */
struct dmb_mapping {
	DMB_RB_ENTRY(dmb_mapping) node;
	uint64_t iova;
	uint64_t length;
	uint64_t offset;
	struct dmb_region *region;
};
_Static_assert(DMB_PROT_READ == 1 && DMB_PROT_WRITE == 2, "prot fits the node's two owner bits");

static inline uint32_t map_prot(const struct dmb_mapping *m)
{
	return DMB_RB_OWNER_BITS(m, node);
}

static inline void map_set_prot(struct dmb_mapping *m, uint32_t prot)
{
	DMB_RB_SET_OWNER_BITS(m, node, prot);
}

static inline bool map_is_mmio(const struct dmb_mapping *m)
{
	return m->region == NULL;
}

struct dmb_device;

struct dmb_p2p {
	struct dmb_mapping m;
	TAILQ_ENTRY(dmb_p2p) peer_link;   /* peer->importers */
	struct dmb_ctx *ctx;              /* the importing context */
	struct dmb_device *peer;
	unsigned bar;
	bool revoked;                     /* absent from the IOMMU now */
	enum dmb_mem_attr attr;           /* what the backend's kernel path maps it with */
};
TAILQ_HEAD(dmb_p2p_list, dmb_p2p);
RB_HEAD(dmb_map_tree, dmb_mapping);
DMB_RB_PROTOTYPE(dmb_map_tree, dmb_mapping, node, map_cmp, )

/* A granular mapping (granule.c): a RAM mapping made of granule-sized
 * kernel areas, each of which Discard removes and Populate restores. The
 * mapping node itself stays an ordinary struct dmb_mapping (its IOVA stays
 * reserved while granules are discarded); this record beside it, in the
 * context's `grans` tree by IOVA, holds the granule and which granules
 * are discarded. Contexts without granular mappings never look there. */
#define DMB_GRANULE_4K (UINT64_C(1) << 12)
#define DMB_GRANULE_2M (UINT64_C(1) << 21)
/* Granules of one granular mapping at most: 16 GiB of 4 KiB granules, 8 TiB
 * of 2 MiB ones (each is a kernel area; the default mappings_per_context
 * is the same number). Bounds the bitmap and every walk over it. */
#define DMB_GRANULES_MAX (UINT64_C(1) << 22)
struct dmb_gran {
	RB_ENTRY(dmb_gran) node;
	struct dmb_mapping *m;
	uint64_t granule;
	uint64_t n;              /* granules: m->length / granule */
	uint64_t discarded;      /* of which discarded now */
	uint64_t bits[];         /* bit i set: granule i is discarded */
};
RB_HEAD(dmb_gran_tree, dmb_gran);
RB_PROTOTYPE(dmb_gran_tree, dmb_gran, node, gran_cmp)

/* DMB_MAP_* of a mapping. */
static inline uint32_t map_flags(const struct dmb_mapping *m)
{
	if (!map_is_mmio(m))
		return 0;
	const struct dmb_p2p *p = (const struct dmb_p2p *)(const void *)m;
	return DMB_MAP_MMIO | (p->revoked ? DMB_MAP_REVOKED : 0);
}

struct dmb_region {
	RB_ENTRY(dmb_region) node;
	uint64_t id;
	struct dmb_ctx *ctx;
	int fd;                 /* owned */
	uint64_t size;
	uint64_t page_size;
	bool writable;
	bool hugetlb;
	const char *kind;       /* "memfd", "hugetlbfs" (by the file system and seals) */
	uint64_t map_refs;      /* mappings that use this region */
	struct dmb_bregion *breg;
};
RB_HEAD(dmb_region_tree, dmb_region);
RB_PROTOTYPE(dmb_region_tree, dmb_region, node, region_cmp)

struct dmb_device {
	TAILQ_ENTRY(dmb_device) link;
	uint64_t id;
	struct dmb_ctx *ctx;
	char bdf[16];
	struct dmb_dev_info info;
	struct dmb_bdev *bdev;
	struct dmb_fdset stored;      /* names under which persist.c stored its fds */

	/* BAR state, as the broker last saw it (p2p.c) */
	uint16_t command;
	bool in_reset;
	/* P2P mappings (in any context) whose target is this device's BAR */
	struct dmb_p2p_list importers;
	uint32_t n_importers;
	uint32_t n_revoked;
	uint64_t revocations;
	uint64_t restorations;
};
TAILQ_HEAD(dmb_device_list, dmb_device);

/* A principal's account (account.c): a uid's usage over all its sessions
 * and the persistent contexts that outlived them. */
struct dmb_acct {
	LIST_ENTRY(dmb_acct) link;
	struct dmb_core *core;
	uid_t uid;
	uint32_t refs;          /* owners and contexts of this uid */
	uint32_t contexts;
	uint64_t pinned_bytes;  /* RAM mapped */
	uint64_t fds;           /* daemon fds its objects cost */
	uint64_t stored;        /* fd store entries they cost */
};

/* The broker's fds (account.c). limit: what objects and sessions may hold,
 * RLIMIT_NOFILE less a reserve; store_limit: the fd store's entries
 * likewise. UINT64_MAX: not budgeted (no fd store, or in-process use). */
struct dmb_fd_budget {
	uint64_t limit, used;
	uint64_t store_limit, store_used;
	uint64_t nofile, store_max;   /* what they were derived from, for messages */
};

struct dmb_owner {
	struct dmb_core *core;
	struct dmb_acct *acct;  /* this uid's account */
	uint64_t session_id;
	uid_t uid;
	gid_t gid;
	pid_t pid;
	bool admin;
	void *opaque;           /* the session, for events */
	TAILQ_HEAD(, dmb_ctx) contexts;
	uint32_t n_contexts;
	struct dmb_client_policy pol;
	uint64_t pinned_bytes;  /* RAM mapped by this client's contexts */
};

struct dmb_ctx {
	RB_ENTRY(dmb_ctx) node;      /* core->contexts, by id */
	TAILQ_ENTRY(dmb_ctx) owner_link;
	uint64_t id;
	struct dmb_core *core;
	struct dmb_owner *owner;
	struct dmb_acct *acct;        /* charged for it; kept while it is detached */
	char name[65];
	bool persistent;
	/* A no-IOMMU context (ContextCreate.noiommu): its devices have no IOMMU,
	 * they DMA to physical addresses (PhysRanges): no isolation. */
	bool noiommu;
	uint8_t token[32];            /* reclaim token (persistent contexts) */
	uint64_t detached_ms;         /* when its session ended (persistent), else 0 */
	/* The session that owned it last (kept when it detaches); 0: nobody
	 * since it was restored after a host handoff (the handoff waits for
	 * those; the others are ordinary detached persistent contexts). */
	uint64_t last_session;
	struct dmb_bctx *bctx;
	struct dmb_fdset stored;      /* names under which persist.c stored its fds */
	/* Restored after a host handoff with something missing (a device that
	 * did not come back, a mapping that could not be made): what, told to
	 * the owner on reclaim. Empty: complete. */
	char degraded[200];
	/* Restored after a host handoff: memfds the previous kernel handed back
	 * that could not be re-adopted as regions (say they lost their seals).
	 * Their pages are the guest's memory: kept until the context is
	 * destroyed, handed to the owner with every reclaim, and the handoff
	 * does not release the context at the end of its grace period (nor
	 * finish the preserver session) while it holds any. */
	struct dmb_stranded {
		uint64_t region_id;
		uint64_t size;
		int fd;
	} *stranded;
	size_t n_stranded;

	struct dmb_iova_info iova;   /* refreshed on device attach/detach */
	int iova_err;                /* <0: the backend could not tell (iova_msg says why) */
	char iova_msg[240];

	struct dmb_map_tree maps;
	uint64_t n_mappings;
	uint64_t mapped_bytes;          /* RAM and MMIO */
	struct dmb_gran_tree grans;     /* granular mappings' records (granule.c) */
	uint64_t n_grans;
	uint64_t gran_areas;            /* kernel areas they are made of */
	uint64_t discarded_bytes;       /* their discarded granules: mapped, not pinned */
	uint64_t p2p_mappings;
	uint64_t p2p_bytes;

	struct dmb_region_tree regions;
	uint32_t n_regions;

	struct dmb_device_list devices;
	uint32_t n_devices;
};
RB_HEAD(dmb_ctx_tree, dmb_ctx);
RB_PROTOTYPE(dmb_ctx_tree, dmb_ctx, node, ctx_cmp)

struct dmb_event {
	uint32_t kind;          /* DMB_EVENT_* */
	uint64_t context_id;
	uint64_t device_id;
	const char *message;
	const struct dmb_range *ranges;
	size_t n_ranges;
	bool permanent;
	bool requests_pending;  /* RESTARTED: the client's requests wait in its socket */
	const char *handoff_state; /* HANDOFF: the new state's name */
};

typedef void (*dmb_event_fn)(void *opaque, struct dmb_owner *owner, const struct dmb_event *ev);
typedef bool (*dmb_device_allowed_fn)(void *opaque, const struct dmb_owner *owner, const char *bdf);

struct dmb_range;

/* Persistence (daemon/state/persist.c) watches every change of the model, to
 * journal it and keep the kernel objects' fds in the fd store. The hooks
 * that return int run before the change reaches the kernel and can refuse
 * it; the void ones run after it happened. NULL: no persistence. */
struct dmb_map_peer_req;
struct dmb_map_req;
struct dmb_journal_hooks {
	void *opaque;
	int (*ctx_create)(void *o, struct dmb_ctx *ctx, struct dmb_err *e);
	void (*ctx_destroy)(void *o, struct dmb_ctx *ctx);
	void (*ctx_reclaim)(void *o, struct dmb_ctx *ctx);
	int (*region_add)(void *o, struct dmb_region *r, struct dmb_err *e);
	void (*region_remove)(void *o, struct dmb_region *r);
	int (*map_add)(void *o, struct dmb_ctx *ctx, const struct dmb_map_req *q, size_t n,
		       struct dmb_err *e);
	/* Granules of granular mappings discarded or populated (ranges in
	 * IOVA space, each inside one granular mapping). A discard is
	 * journaled before the kernel call (may refuse), a populate after it. */
	int (*convert)(void *o, struct dmb_ctx *ctx, const struct dmb_range *r, size_t n,
		       bool discard, struct dmb_err *e);
	/* The model now holds what `convert` journaled (or its undo): the
	 * journal may compact. */
	void (*converted)(void *o);
	int (*p2p_add)(void *o, struct dmb_ctx *ctx, const struct dmb_map_peer_req *q,
		       struct dmb_err *e);
	void (*unmap)(void *o, struct dmb_ctx *ctx, const struct dmb_range *r, size_t n);
	void (*unmap_all)(void *o, struct dmb_ctx *ctx);
	int (*device_add)(void *o, struct dmb_device *d, struct dmb_err *e);
	void (*device_remove)(void *o, struct dmb_device *d);
	void (*session_end)(void *o, uint64_t session_id);
	void (*id_used)(void *o, uint64_t id);
};

struct dmb_id {
	RB_ENTRY(dmb_id) node;
	uint64_t id;
};
RB_HEAD(dmb_id_tree, dmb_id);
RB_PROTOTYPE(dmb_id_tree, dmb_id, node, id_cmp)

struct dmb_core {
	struct dmb_backend *be;
	struct dmb_limits limits;
	uint64_t next_id;             /* above every id used (the journal's watermark) */
	struct dmb_id_tree ids;       /* every live object's id (core.c) */

	struct dmb_ctx_tree contexts;
	uint32_t n_contexts;
	LIST_HEAD(, dmb_acct) accts;
	struct dmb_fd_budget fds;
	uint64_t n_mappings;
	uint64_t mapped_bytes;
	uint32_t n_regions;
	uint32_t n_devices;

	dmb_event_fn event_fn;
	void *event_opaque;
	dmb_device_allowed_fn device_allowed;
	void *policy_opaque;
	uint64_t pinned_bytes;        /* RAM mapped, all clients */
	uint64_t pinned_bytes_limit;  /* 0 = no limit */

	/* [p2p] type1 in force (policy/config.h p2p_cacheable_effective): for
	 * MapPeer on a backend whose P2P mappings are cacheable */
	enum dmb_p2p_cacheable p2p_cacheable;
	uint64_t revocations;
	uint64_t restorations;
	uint64_t p2p_mappings;
	uint64_t p2p_bytes;
	uint32_t n_noiommu;           /* no-IOMMU contexts among n_contexts */

	/* Before the core calls the backend on a context other than the one a
	 * request named (a P2P revocation, restoration or release reaching an
	 * importer), it calls this: the server waits there for a worker that
	 * is running a backend call on that context (daemon/server/worker.h). NULL:
	 * nothing runs off the loop. */
	void (*ctx_quiesce)(void *opaque, struct dmb_ctx *ctx);
	void *quiesce_opaque;

	/* RAM mapping nodes come from slabs (mapping.c): no per-node malloc
	 * header, no malloc call on the hot path; all slabs go back when the
	 * last node is freed. */
	const struct dmb_journal_hooks *jh;

	struct dmb_map_slab *slabs;   /* newest first; bump-allocated */
	struct dmb_mapping *map_free; /* free nodes, linked through node.rbe_left */
	uint64_t map_live;
};

/* core.c */
void core_init(struct dmb_core *core, struct dmb_backend *be, const struct dmb_limits *limits);
/* Destroys every context (non-persistent and persistent). */
void core_fini(struct dmb_core *core);
/* A fresh random id for a session, context, region or device (0: out of
 * memory or randomness); core_release_id when the object goes. */
uint64_t core_new_id(struct dmb_core *core);
/* Re-adoption: an id the journal names is taken again (false: in use). */
bool core_claim_id(struct dmb_core *core, uint64_t id);
void core_release_id(struct dmb_core *core, uint64_t id);
/* Calls event_fn; owner may be NULL (a context without a session). */
void core_emit(struct dmb_core *core, struct dmb_owner *owner, const struct dmb_event *ev);
/* What the backend is, for Hello, Status, D-Bus and metrics: its name
 * ("iommufd", "type1", "sim"), its features (never NULL: empty list) and
 * the bytes it holds pinned by its own accounting. The server and
 * management ask these; only the core touches the backend's table. */
const char *core_backend_name(const struct dmb_core *core);
const char *const *core_backend_features(const struct dmb_core *core);
uint64_t core_pinned_bytes(const struct dmb_core *core);
/* See dmb_core.ctx_quiesce. */
static inline void core_quiesce(struct dmb_ctx *ctx)
{
	if (ctx->core->ctx_quiesce)
		ctx->core->ctx_quiesce(ctx->core->quiesce_opaque, ctx);
}

/* account.c */
/* The account of uid (created at first use), with a reference; NULL: out
 * of memory. */
struct dmb_acct *acct_get(struct dmb_core *core, uid_t uid);
void acct_put(struct dmb_acct *a);
/* RESOURCE_EXHAUSTED naming the limit when one more context, or `want`
 * more pinned bytes, would exceed lim for this principal. */
int acct_check_contexts(const struct dmb_acct *a, const struct dmb_limits *lim, struct dmb_err *e);
int acct_check_pinned(const struct dmb_acct *a, const struct dmb_limits *lim, uint64_t want,
		      struct dmb_err *e);
/* Charges one object's fds to a and to the broker, or refuses (naming the
 * principal's `fds` limit, the broker's fd budget or the fd store) and
 * changes nothing. acct_force charges without checking (re-adoption). */
int acct_charge(struct dmb_acct *a, const struct dmb_limits *lim, enum dmb_fd_kind kind,
		struct dmb_err *e);
void acct_force(struct dmb_acct *a, enum dmb_fd_kind kind);
void acct_release(struct dmb_acct *a, enum dmb_fd_kind kind);
/* A reclaim by another uid: ctx's context, fds and pins move to `to` if
 * its limits take them. */
int acct_move_ctx(struct dmb_ctx *ctx, struct dmb_acct *to, const struct dmb_limits *lim,
		  struct dmb_err *e);

/* pol NULL: the core's default limits, no devices, not admin. */
struct dmb_owner *owner_new(struct dmb_core *core, uint64_t session_id, uid_t uid, gid_t gid,
			    pid_t pid, const struct dmb_client_policy *pol, void *opaque);
/* Destroys the owner's non-persistent contexts and frees it. */
void owner_free(struct dmb_owner *owner);

/* context.c */
int ctx_create(struct dmb_owner *owner, const char *name, bool persistent, struct dmb_ctx **out,
	       struct dmb_err *e);
/* The same, for a no-IOMMU context when noiommu: refused (PERMISSION_DENIED,
 * naming the setting) unless the owner's policy grants `noiommu`, and
 * (UNIMPLEMENTED or the backend's sentence) where the backend has no such
 * contexts. Logged as a warning: it gives no isolation. */
int ctx_create_kind(struct dmb_owner *owner, const char *name, bool persistent, bool noiommu,
		    struct dmb_ctx **out, struct dmb_err *e);
/* Re-adoption of a no-IOMMU context: the backend context (adopted, no
 * device yet) becomes one again before ctx_adopt. */
int ctx_adopt_noiommu(struct dmb_core *core, struct dmb_bctx *bctx, struct dmb_err *e);
/* Marks an adopted context as a no-IOMMU one (after ctx_adopt_noiommu). */
void ctx_mark_noiommu(struct dmb_ctx *ctx);
/* PhysRanges: the physically contiguous ranges behind [iova, iova+length)
 * of a no-IOMMU context, in IOVA order, at most max of them. Every byte of
 * the range must be mapped RAM (NOT_FOUND names the first byte that is
 * not); checked whole before the backend is asked. *more: the range goes on
 * at *next_iova. */
struct dmb_phys_range {
	uint64_t iova;
	uint64_t phys;
	uint64_t length;
};
int ctx_phys_ranges(struct dmb_ctx *ctx, uint64_t iova, uint64_t length,
		    struct dmb_phys_range *out, size_t max, size_t *n, bool *more,
		    uint64_t *next_iova, struct dmb_err *e);
/* The owner's context with this id, or NULL (also for another owner's). */
struct dmb_ctx *ctx_lookup(struct dmb_owner *owner, uint64_t id);
/* Any context (admin views). */
struct dmb_ctx *ctx_lookup_any(struct dmb_core *core, uint64_t id);
/* A persistent context whose session ended (or any, by id) taken over by a
 * new owner that presented its token; a fresh token is drawn. */
int ctx_reclaim(struct dmb_owner *owner, uint64_t id, const uint8_t *token, size_t token_len,
		struct dmb_ctx **out, struct dmb_err *e);
/* Re-adoption after a restart: an existing backend context enters the
 * model with its old id, owner (or none: detached) and attributes; nothing
 * is journaled. */
/* owner NULL: detached, charged to uid's account. */
struct dmb_ctx *ctx_adopt(struct dmb_core *core, struct dmb_owner *owner, uid_t uid, uint64_t id,
			  const char *name, bool persistent, const uint8_t *token,
			  struct dmb_bctx *bctx);
/* Unmaps everything, closes devices and regions, frees. */
void ctx_destroy(struct dmb_ctx *ctx);
/* Keeps fd (taken: closed on failure) as a stranded memfd of ctx (see
 * struct dmb_ctx). */
void ctx_strand(struct dmb_ctx *ctx, uint64_t region_id, uint64_t size, int fd);
void ctx_refresh_iova(struct dmb_ctx *ctx);
/* Checks [iova, last] lies inside one usable IOVA range of the context. */
int ctx_check_iova(struct dmb_ctx *ctx, uint64_t iova, uint64_t last, struct dmb_err *e);
int ctx_sim_dma(struct dmb_ctx *ctx, uint64_t iova, void *buf, size_t len, bool to_memory,
		struct dmb_err *e);

/* region.c */
/* Takes ownership of fd (closed on failure too). size 0 = the file's size. */
int region_register(struct dmb_ctx *ctx, int fd, uint64_t size, struct dmb_region **out,
		    struct dmb_err *e);
struct dmb_region *region_lookup(struct dmb_ctx *ctx, uint64_t id);
int region_unregister(struct dmb_ctx *ctx, uint64_t id, struct dmb_err *e);
/* Re-adoption: the region with its old id, from its stored fd (taken). */
int region_adopt(struct dmb_ctx *ctx, uint64_t id, int fd, uint64_t size, struct dmb_region **out,
		 struct dmb_err *e);
void region_free(struct dmb_region *r);
/* Validates an fd as guest memory without registering it (unit-testable). */
int region_validate_fd(int fd, uint64_t *size, uint64_t *page_size, bool *writable,
		       bool *hugetlb, const char **kind, struct dmb_err *e);

/* mapping.c */
struct dmb_map_req {
	uint64_t region_id;
	uint64_t offset;
	uint64_t iova;
	uint64_t length;
	uint32_t prot;
	uint64_t granule;     /* 0, or DMB_GRANULE_4K / _2M: a granular mapping */
};

struct dmb_range {
	uint64_t iova;
	uint64_t length;
};
/* Inserts / removes a mapping record (counters, region refs, peer links). */
void map_insert(struct dmb_ctx *ctx, struct dmb_mapping *m);
void map_remove(struct dmb_ctx *ctx, struct dmb_mapping *m);

/* Maps n entries, all or nothing: on failure e->index names the entry and
 * the entries already mapped are unmapped again. */
int map_batch(struct dmb_ctx *ctx, const struct dmb_map_req *reqs, size_t n, struct dmb_err *e);

/* The same in three phases, for running the kernel calls on a worker thread
 * (daemon/server/worker.h): map_prepare and map_finish on the loop thread (they
 * change the model and the journal), map_kernel on any thread (backend
 * calls on op->ctx only; the caller guarantees nothing else touches that
 * context in between). reqs must stay valid until map_finish. A failed
 * map_prepare leaves nothing to finish. */
struct map_op {
	struct dmb_ctx *ctx;
	const struct dmb_map_req *reqs;
	size_t n;
	struct dmb_mapping **nodes;   /* the reserved records */
	struct dmb_mapping *one_node;
	uint8_t *kept;                /* n > 1: a failed rollback left it mapped */
	size_t failed_at;             /* n: none failed */
	int r;
	bool prepared;
	struct dmb_err e;             /* the kernel phase's failure */
};
int map_prepare(struct map_op *op, struct dmb_ctx *ctx, const struct dmb_map_req *reqs,
		size_t n, struct dmb_err *e);
void map_kernel(struct map_op *op);
int map_finish(struct map_op *op, struct dmb_err *e);
void map_op_release(struct map_op *op);
uint64_t map_op_bytes(const struct map_op *op);
/* Removes every mapping inside each range; every range is checked first
 * (no split, not empty, ranges disjoint), then all are removed. */
int unmap_ranges(struct dmb_ctx *ctx, const struct dmb_range *ranges, size_t n,
		 uint64_t *bytes, uint64_t *count, struct dmb_err *e);
int unmap_all(struct dmb_ctx *ctx, uint64_t *bytes, uint64_t *count, struct dmb_err *e);
/* unmap_ranges / unmap_all in three phases, as map_op. ranges must stay
 * valid until unmap_finish. */
struct unmap_op {
	struct dmb_ctx *ctx;
	const struct dmb_range *ranges;
	size_t n;
	bool all;                      /* unmap_all */
	struct dmb_mapping **firsts;   /* each range's first mapping */
	struct dmb_mapping *one_first;
	size_t done;                   /* ranges the kernel phase removed */
	int r;                         /* its failure on range `done` */
	struct dmb_err e;
};
int unmap_prepare(struct unmap_op *op, struct dmb_ctx *ctx, const struct dmb_range *ranges,
		  size_t n, struct dmb_err *e);
int unmap_all_prepare(struct unmap_op *op, struct dmb_ctx *ctx);
void unmap_kernel(struct unmap_op *op);
int unmap_finish(struct unmap_op *op, uint64_t *bytes, uint64_t *count, struct dmb_err *e);
void unmap_op_release(struct unmap_op *op);
uint64_t unmap_op_bytes(const struct unmap_op *op);
/* The first mapping with iova >= start, or NULL. */
struct dmb_mapping *map_first_from(struct dmb_ctx *ctx, uint64_t start);
struct dmb_mapping *map_next(struct dmb_ctx *ctx, struct dmb_mapping *m);
/* The mapping containing iova, or NULL. */
struct dmb_mapping *map_find(struct dmb_ctx *ctx, uint64_t iova);
/* Re-adoption: records a mapping the backend already holds (no kernel call).
 * granule 0: ordinary; else a granular mapping whose discarded granules
 * are the set bits of `discarded` (NULL: none), which the backend must not
 * hold. */
int map_adopt_record(struct dmb_ctx *ctx, struct dmb_region *r, uint64_t iova, uint64_t length,
		     uint64_t offset, uint32_t prot, uint64_t granule, const uint64_t *discarded);
/* Drops the core's records of every mapping (after the backend removed them). */
void map_forget_all(struct dmb_ctx *ctx);
/* True when no two of the (non-empty) ranges intersect; else names two. */
bool map_ranges_disjoint(const struct dmb_range *rg, size_t n, size_t *a, size_t *b);
/* Checks that [iova, last] overlaps no mapping; names the one it overlaps. */
int map_check_free(struct dmb_ctx *ctx, uint64_t iova, uint64_t last, struct dmb_err *e);

/* granule.c */
/* The granular record of m, or NULL (ordinary or MMIO). */
struct dmb_gran *gran_of(struct dmb_ctx *ctx, const struct dmb_mapping *m);
static inline bool gran_bit(const struct dmb_gran *g, uint64_t i)
{
	return (g->bits[i / 64] >> (i % 64)) & 1;
}
/* Bytes of RAM mapping m that are in the IOMMU (and pinned). */
uint64_t map_pinned_bytes(struct dmb_ctx *ctx, const struct dmb_mapping *m);
static inline uint64_t ctx_pinned_bytes(const struct dmb_ctx *ctx)
{
	return ctx->mapped_bytes - ctx->p2p_bytes - ctx->discarded_bytes;
}
/* Creates the record of a granular mapping just inserted (all populated;
 * with `discarded`, those granules discarded) and accounts for it. */
int gran_attach(struct dmb_ctx *ctx, struct dmb_mapping *m, uint64_t granule,
		const uint64_t *discarded);
/* Removes the record (the mapping is being removed); accounts for it. */
void gran_detach(struct dmb_ctx *ctx, struct dmb_gran *g);
/* The largest IOMMU page size (4 KiB, 2 MiB or 1 GiB) the mapping allows:
 * its IOVA, offset and length multiples of it, no larger than its granule
 * or its region's page size, and one the context's IOMMU supports. */
uint64_t map_page_size(struct dmb_ctx *ctx, const struct dmb_mapping *m);
/* Discard (discard true) or populate the granules in ranges[0..n), all or
 * nothing: every range is checked first (granule aligned, inside granular
 * mappings of ctx, disjoint), then the kernel calls run; a failure puts
 * back what the request changed. */
struct dmb_convert_result {
	uint64_t granules;    /* changed */
	uint64_t bytes;
	uint64_t unchanged;   /* already in the wanted state */
};
int map_convert(struct dmb_ctx *ctx, const struct dmb_range *ranges, size_t n, bool discard,
		struct dmb_convert_result *res, struct dmb_err *e);

/* p2p.c */
struct dmb_map_peer_req {
	struct dmb_device *peer;
	unsigned bar;
	uint64_t offset;
	uint64_t iova;
	uint64_t length;
	uint32_t prot;
};
int p2p_map(struct dmb_ctx *ctx, const struct dmb_map_peer_req *q, struct dmb_err *e);
/* Mediated command-register change (only memory and bus-master bits):
 * revokes importers before decoding goes off, restores after it is on. */
int p2p_set_command(struct dmb_device *d, uint16_t set, uint16_t clear, struct dmb_err *e);
int p2p_reset(struct dmb_device *d, struct dmb_err *e);
/* Re-reads the command register (the watcher): revokes importers when
 * decoding went off behind the broker's back, restores when it is back.
 * Returns true when something changed. */
bool p2p_poll(struct dmb_device *d);
/* The device goes away: every importer is unmapped for good. */
void p2p_release(struct dmb_device *d);
/* Unlinks an MMIO mapping from its peer (the mapping is being removed). */
void p2p_unlink(struct dmb_p2p *p);
int p2p_read_command(struct dmb_device *d, uint16_t *cmd, struct dmb_err *e);

/* device.c */
/* Any open device with this BDF, in any context. */
struct dmb_device *device_find_bdf(struct dmb_core *core, const char *bdf);
/* Re-adoption: an adopted backend device enters the model with its old id. */
struct dmb_device *device_adopt(struct dmb_ctx *ctx, uint64_t id, const char *bdf,
				struct dmb_bdev *bdev, const struct dmb_dev_info *info);
/* Re-adoption of a P2P mapping record (revoked: not in the IOMMU now). */
int p2p_adopt_record(struct dmb_ctx *ctx, struct dmb_device *peer, unsigned bar, uint64_t offset,
		     uint64_t iova, uint64_t length, uint32_t prot, bool revoked);
int device_open(struct dmb_ctx *ctx, const char *bdf, struct dmb_device **out, struct dmb_err *e);
struct dmb_device *device_lookup(struct dmb_owner *owner, uint64_t id);
void device_close(struct dmb_device *d);
/* The device's own fd (VFIO device), borrowed: -EOPNOTSUPP when the backend
 * hands none out. */
int core_device_fd(const struct dmb_device *d);
/* Sim: device d's own DMA engine. */
int device_sim_dma(struct dmb_device *d, uint64_t iova, void *buf, size_t len, bool to_memory,
		   struct dmb_err *e);
