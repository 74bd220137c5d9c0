/* The state journal: the daemon's view of contexts, regions, mappings,
 * devices and owners, as append-only records in a memfd, so that it survives
 * a daemon restart (systemd fd store) and a kexec (LUO session) exactly like
 * the kernel objects it describes. docs/journal.md is the reader's guide; the
 * byte layout is specified once, at the top of journal_file.c.
 *
 * Three parts:
 *   - the journal file: create / open (validate) / append / replay
 *     (journal_file.c), compact (journal_compact.c);
 *   - the record: struct jrnl_rec, what an append takes and a replay gives;
 *   - the state model: struct jrnl_state, what a replay builds and what the
 *     daemon re-adopts from (and what a compaction writes out)
 *     (journal_model.c).
 *
 * Rules the caller relies on
 *   - An append returns only after the record is committed: a SIGKILL at any
 *     instant leaves either the journal before the append or after it.
 *   - Replay is idempotent: every record is "make it so" (see jrnl_state_apply).
 *   - Single writer. Two processes must never append to the same journal; a
 *     reader (jrnl_open_fd) must only open a journal whose writer is gone.
 *   - Nothing logs here: functions return a negative errno and fill the
 *     struct dmb_err; the daemon logs.
 *
 * Threading: none; one journal belongs to one thread at a time. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/tree.h>

#include "util/err.h"

/* Format version: major << 16 | minor. A reader refuses another major; it
 * reads a higher minor (whose new record types carry JRNL_TYPE_OPTIONAL and
 * whose payloads may have grown at the end). */
#define JRNL_VERSION_MAJOR 1u
#define JRNL_VERSION_MINOR 1u
#define JRNL_VERSION ((JRNL_VERSION_MAJOR << 16) | JRNL_VERSION_MINOR)

#define JRNL_HEADER_SIZE 64u
/* A record is at most this big (a MAP of DMB_MAX_BATCH entries is ~640 KiB). */
#define JRNL_RECORD_MAX (UINT32_C(1) << 20)
#define JRNL_BATCH_MAX 16384u         /* entries of one MAP / UNMAP record */
#define JRNL_NAME_MAX 64u             /* context name */
#define JRNL_FDNAME_MAX 255u          /* systemd's FDNAME limit */
#define JRNL_BDF_MAX 15u
#define JRNL_TOKEN_SIZE 32u

/* Record types. Values are part of the format: never renumber. */
enum jrnl_type {
	JRNL_CONTEXT_CREATE = 1,
	JRNL_CONTEXT_DESTROY = 2,
	JRNL_CONTEXT_RECLAIM = 3,
	JRNL_REGION_ADD = 4,
	JRNL_REGION_REMOVE = 5,
	JRNL_MAP = 6,                 /* n >= 1 entries, one atomic batch */
	JRNL_UNMAP = 7,               /* n >= 1 ranges */
	JRNL_UNMAP_ALL = 8,
	JRNL_DEVICE_ADD = 9,
	JRNL_DEVICE_REMOVE = 10,
	JRNL_SESSION_END = 11,
	JRNL_ID_WATERMARK = 12,
	JRNL_HANDOFF_STATE = 13,
	JRNL_TYPE_LAST_V1_0 = JRNL_HANDOFF_STATE,
	/* v1.1: granules of granular mappings removed from / put back into
	 * the IOMMU (n >= 1 ranges, each granule aligned inside granular
	 * mappings). Not optional: a reader that skipped a DISCARD would put
	 * a discarded (a confidential guest's private) granule back. */
	JRNL_DISCARD = 14,
	JRNL_POPULATE = 15,
};
/* A reader that does not know a type with this bit may skip the record. */
#define JRNL_TYPE_OPTIONAL UINT32_C(0x80000000)

/* CONTEXT_CREATE flags */
#define JRNL_CTX_PERSISTENT (UINT32_C(1) << 0)
#define JRNL_CTX_DETACHED (UINT32_C(1) << 1)   /* its session ended (snapshots) */
#define JRNL_CTX_NOIOMMU (UINT32_C(1) << 2)    /* a no-IOMMU context (1.1) */
#define JRNL_CTX_FLAGS_ALL (JRNL_CTX_PERSISTENT | JRNL_CTX_DETACHED | JRNL_CTX_NOIOMMU)
/* REGION_ADD flags */
#define JRNL_REGION_WRITABLE (UINT32_C(1) << 0)
#define JRNL_REGION_HUGETLB (UINT32_C(1) << 1)
#define JRNL_REGION_FLAGS_ALL (JRNL_REGION_WRITABLE | JRNL_REGION_HUGETLB)

/* HANDOFF_STATE values (issue 6's state machine). */
enum jrnl_handoff {
	JRNL_HANDOFF_NORMAL = 0,
	JRNL_HANDOFF_PREPARED = 1,
	JRNL_HANDOFF_RESTORING = 2,
	JRNL_HANDOFF_RECLAIMING = 3,
	JRNL_HANDOFF_LAST = JRNL_HANDOFF_RECLAIMING,
};

/* MAP entry flags: a P2P mapping of a peer device's BAR; `region` holds the
 * peer device's id and bits 8..15 the BAR (persist.c writes them). */
#define JRNL_MAP_MMIO UINT32_C(1)
/* v1.1: bits 16..21 of a RAM entry's flags: log2 of its granule (12: 4 KiB,
 * 21: 2 MiB), 0 for an ordinary mapping. */
#define JRNL_MAP_GRANULE_SHIFT(f) (((f) >> 16) & 0x3fu)
#define JRNL_MAP_GRANULE(shift) ((uint32_t)(shift) << 16)
#define JRNL_GRANULES_MAX (UINT64_C(1) << 22) /* of one granular mapping (DMB_GRANULES_MAX) */
#define JRNL_MAP_FLAGS_ALL (JRNL_MAP_MMIO | UINT32_C(0xff00) | JRNL_MAP_GRANULE(0x3f))
static inline uint64_t jrnl_map_granule(uint32_t flags)
{
	uint32_t s = JRNL_MAP_GRANULE_SHIFT(flags);
	return s ? UINT64_C(1) << s : 0;
}

struct jrnl_map_entry {
	uint64_t iova;
	uint64_t length;
	uint64_t region;
	uint64_t offset;
	uint32_t prot;
	uint32_t flags;
};

struct jrnl_range {
	uint64_t iova;
	uint64_t length;
};

/* One record, decoded. Strings are NUL-terminated copies. For MAP and UNMAP
 * the arrays belong to whoever built the record (for replay: the journal,
 * valid during the callback only). */
struct jrnl_rec {
	uint32_t type;                /* enum jrnl_type */
	uint64_t seq;                 /* set by append; given by replay */
	union {
		struct {
			uint64_t ctx, session;
			uint32_t uid, gid, flags;
			uint8_t token[JRNL_TOKEN_SIZE];
			char name[JRNL_NAME_MAX + 1];
		} ctx_create;
		struct {
			uint64_t ctx;
		} ctx_destroy, unmap_all;
		struct {
			uint64_t ctx, session;
			uint32_t uid, gid;
			uint8_t token[JRNL_TOKEN_SIZE];
		} ctx_reclaim;
		struct {
			uint64_t ctx, region, size, page_size;
			uint32_t flags;
			char fd_name[JRNL_FDNAME_MAX + 1];
		} region_add;
		struct {
			uint64_t ctx, region;
		} region_remove;
		struct {
			uint64_t ctx;
			uint32_t n;
			const struct jrnl_map_entry *e;
		} map;
		struct {
			uint64_t ctx;
			uint32_t n;
			const struct jrnl_range *r;
		} unmap, convert;    /* convert: DISCARD and POPULATE */
		struct {
			uint64_t ctx, device;
			char bdf[JRNL_BDF_MAX + 1];
		} device_add;
		struct {
			uint64_t ctx, device;
		} device_remove;
		struct {
			uint64_t session;
		} session_end;
		struct {
			uint64_t next_id;
		} id_watermark;
		struct {
			uint32_t state;       /* enum jrnl_handoff */
		} handoff;
	} u;
};

struct jrnl;

/* ---- the journal file ---- */

/* A new, empty journal (generation 1) in a fresh memfd. */
int jrnl_create(struct jrnl **out, struct dmb_err *e);
/* Opens a journal from its fd (fd store, LUO, an inherited fd): checks the
 * header (magic, major version, sizes, checksums) and walks the records to
 * find where the valid part ends. Takes ownership of fd on success only: on
 * failure the caller keeps it (a journal that cannot be read is evidence;
 * do not throw it away). A journal damaged inside its committed part opens,
 * jrnl_damaged() says so, and appends are refused until it is compacted. */
int jrnl_open_fd(int fd, struct jrnl **out, struct dmb_err *e);
/* jrnl_open_fd and jrnl_replay in one walk: each record is validated once
 * and delivered to ops as it is (a restore reads and checksums the journal
 * once, not twice). Returns 0 with *out set; -EBADMSG with *out set when
 * the journal is damaged inside its committed part (everything before the
 * damage was delivered, jrnl_damaged() says where); any other error with
 * *out NULL and the caller keeping fd: -ENOEXEC for a file that is not a
 * journal this daemon can open (not a regular file, too short, a bad
 * header), a callback's error, ... res (optional) is jrnl_replay's. */
struct jrnl_ops;
struct jrnl_replay_result;
int jrnl_open_replay_fd(int fd, const struct jrnl_ops *ops, void *opaque,
			struct jrnl_replay_result *res, struct jrnl **out, struct dmb_err *e);
/* Unmaps and closes; NULL is fine. */
void jrnl_close(struct jrnl *j);
static inline void jrnl_closep(struct jrnl **j)
{
	jrnl_close(*j);
}

/* The memfd (still owned by the journal): hand a dup to the fd store / LUO. */
int jrnl_fd(const struct jrnl *j);
uint64_t jrnl_generation(const struct jrnl *j);
/* Bytes of committed records (header excluded). */
uint64_t jrnl_committed(const struct jrnl *j);
uint64_t jrnl_records(const struct jrnl *j);
/* The seq the next append gets. */
uint64_t jrnl_next_seq(const struct jrnl *j);
/* NULL, or the sentence that says where and why the journal is damaged. */
const char *jrnl_damaged(const struct jrnl *j);

/* Makes sure `bytes` more bytes of records fit without growing the file:
 * call it before LUO PRESERVE, which freezes the memfd's size. */
int jrnl_reserve(struct jrnl *j, uint64_t bytes, struct dmb_err *e);
/* A point where everything appended so far is in the file. A memfd shared
 * mapping is the file, so this is a full fence and nothing else; kept so a
 * later backing store (a regular file) has its msync here. */
int jrnl_sync_point(struct jrnl *j);

/* ---- appending ---- */

/* Appends one record (any type) and commits it. Validates it first (sizes,
 * flags, ranges); rec->seq is ignored. -EINVAL: malformed; -EBADMSG: the
 * journal is damaged; -ENOSPC / -EPERM / -ENOMEM: it could not grow (nothing
 * was written). */
int jrnl_append(struct jrnl *j, const struct jrnl_rec *rec, struct dmb_err *e);

/* One per record type, for callers that do not want to fill a jrnl_rec. */
int jrnl_append_ctx_create(struct jrnl *j, uint64_t ctx, uint64_t session, uint32_t uid,
			   uint32_t gid, uint32_t flags, const char *name,
			   const uint8_t token[JRNL_TOKEN_SIZE], struct dmb_err *e);
int jrnl_append_ctx_destroy(struct jrnl *j, uint64_t ctx, struct dmb_err *e);
int jrnl_append_ctx_reclaim(struct jrnl *j, uint64_t ctx, uint64_t session, uint32_t uid,
			    uint32_t gid, const uint8_t token[JRNL_TOKEN_SIZE], struct dmb_err *e);
int jrnl_append_region_add(struct jrnl *j, uint64_t ctx, uint64_t region, uint64_t size,
			   uint64_t page_size, uint32_t flags, const char *fd_name,
			   struct dmb_err *e);
int jrnl_append_region_remove(struct jrnl *j, uint64_t ctx, uint64_t region, struct dmb_err *e);
/* The hot path: one mapping. */
int jrnl_append_map(struct jrnl *j, uint64_t ctx, uint64_t iova, uint64_t length,
		    uint64_t region, uint64_t offset, uint32_t prot, uint32_t flags,
		    struct dmb_err *e);
/* One record, so the batch is wholly in the journal or wholly absent. */
int jrnl_append_map_batch(struct jrnl *j, uint64_t ctx, const struct jrnl_map_entry *ents,
			  uint32_t n, struct dmb_err *e);
int jrnl_append_unmap(struct jrnl *j, uint64_t ctx, uint64_t iova, uint64_t length,
		      struct dmb_err *e);
int jrnl_append_unmap_ranges(struct jrnl *j, uint64_t ctx, const struct jrnl_range *r,
			     uint32_t n, struct dmb_err *e);
int jrnl_append_unmap_all(struct jrnl *j, uint64_t ctx, struct dmb_err *e);
/* DISCARD (discard true) or POPULATE of granules. */
int jrnl_append_convert(struct jrnl *j, uint64_t ctx, bool discard, const struct jrnl_range *r,
			uint32_t n, struct dmb_err *e);
int jrnl_append_device_add(struct jrnl *j, uint64_t ctx, uint64_t device, const char *bdf,
			   struct dmb_err *e);
int jrnl_append_device_remove(struct jrnl *j, uint64_t ctx, uint64_t device, struct dmb_err *e);
int jrnl_append_session_end(struct jrnl *j, uint64_t session, struct dmb_err *e);
int jrnl_append_id_watermark(struct jrnl *j, uint64_t next_id, struct dmb_err *e);
int jrnl_append_handoff(struct jrnl *j, uint32_t state, struct dmb_err *e);

/* ---- replay ---- */

struct jrnl_ops {
	/* Called once per valid record, in order. A negative return stops the
	 * replay and is returned by jrnl_replay. */
	int (*record)(void *opaque, const struct jrnl_rec *rec);
	/* Optional: a record of a newer minor version, marked optional, that
	 * this reader does not know (skipped either way). */
	void (*skipped)(void *opaque, uint32_t type, uint64_t seq);
};

enum jrnl_stop {
	JRNL_STOP_END = 0,    /* every committed record was valid */
	JRNL_STOP_TORN,       /* a record runs past the committed end: ignored */
	JRNL_STOP_CORRUPT,    /* an invalid record inside the committed part */
};

struct jrnl_replay_result {
	uint64_t records;     /* records delivered */
	uint64_t last_seq;    /* seq of the last one (0 if none) */
	uint64_t end;         /* offset just after it */
	enum jrnl_stop stop;
	uint64_t stop_offset; /* where the replay stopped (== end) */
	char why[160];        /* for TORN / CORRUPT */
};

/* Calls ops->record for every valid record in order. Returns 0 when the
 * committed part was replayed completely or ended in a torn record;
 * -EBADMSG (and e says where and why) when it stopped at a corrupt record:
 * everything before it was delivered; a callback's error otherwise. res
 * (optional) tells how far it got in every case. */
int jrnl_replay(struct jrnl *j, const struct jrnl_ops *ops, void *opaque,
		struct jrnl_replay_result *res, struct dmb_err *e);

/* ---- the state model ---- */

struct jrnl_map {
	RB_ENTRY(jrnl_map) node;
	uint64_t iova, length, region, offset;
	uint32_t prot, flags;
	/* A granular mapping (flags name a granule): bit i set = granule i
	 * discarded; NULL while none is. */
	uint64_t *discarded;
	uint64_t n_discarded;
};
RB_HEAD(jrnl_map_tree, jrnl_map);

struct jrnl_region {
	RB_ENTRY(jrnl_region) node;
	uint64_t id, size, page_size;
	uint32_t flags;
	uint64_t map_refs;            /* mappings that use it */
	char fd_name[JRNL_FDNAME_MAX + 1];
};
RB_HEAD(jrnl_region_tree, jrnl_region);

struct jrnl_dev {
	RB_ENTRY(jrnl_dev) node;
	uint64_t id;
	char bdf[JRNL_BDF_MAX + 1];
};
RB_HEAD(jrnl_dev_tree, jrnl_dev);

struct jrnl_ctx {
	RB_ENTRY(jrnl_ctx) node;
	uint64_t id, session;
	uint32_t uid, gid;
	bool persistent;
	bool detached;                /* its session ended; waits for a reclaim */
	bool noiommu;                 /* a no-IOMMU context */
	uint8_t token[JRNL_TOKEN_SIZE];
	char name[JRNL_NAME_MAX + 1];
	struct jrnl_region_tree regions;
	struct jrnl_map_tree maps;
	struct jrnl_dev_tree devs;
	uint32_t n_regions, n_devs;
	uint64_t n_maps, mapped_bytes;
};
RB_HEAD(jrnl_ctx_tree, jrnl_ctx);

struct jrnl_state {
	struct jrnl_ctx_tree ctxs;
	uint32_t n_ctxs;
	uint64_t n_maps;
	uint64_t next_id;             /* > every id seen, >= every watermark */
	uint32_t handoff;             /* enum jrnl_handoff */
	/* Records that made no sense against the state (a MAP into a context
	 * that does not exist, …). Expected only when replaying over a state
	 * that already holds later effects; in a plain replay they are a bug
	 * of the writer, and the first is described. */
	uint64_t anomalies;
	char anomaly[200];
};

void jrnl_state_init(struct jrnl_state *s);
/* Frees every object; the state is empty (and reusable) afterwards. */
void jrnl_state_fini(struct jrnl_state *s);
/* Applies one record, "make it so":
 *   CONTEXT_CREATE   sets the context's attributes (children kept)
 *   CONTEXT_DESTROY  removes it and everything in it; absent: nothing
 *   CONTEXT_RECLAIM  new owner and token, attached again
 *   REGION_ADD       sets the region; REGION_REMOVE removes it (and, an
 *                    anomaly, any mapping still using it)
 *   MAP              each entry: identical mapping present: nothing; else
 *                    overlapping mappings are evicted (anomaly) and it is added
 *   UNMAP            removes every mapping wholly inside each range
 *   UNMAP_ALL        removes every mapping of the context
 *   DISCARD / POPULATE  sets / clears the discarded bit of every granule in
 *                    each range (ranges not inside granular mappings, or not
 *                    granule aligned: anomaly, that part unchanged)
 *   DEVICE_ADD / _REMOVE  set / remove the device
 *   SESSION_END      destroys the session's non-persistent contexts and
 *                    detaches its persistent ones
 *   ID_WATERMARK     next_id = max(next_id, value); HANDOFF_STATE sets it
 * Records naming an absent context or region change nothing (anomaly).
 * Returns 0, or -ENOMEM. */
int jrnl_state_apply(struct jrnl_state *s, const struct jrnl_rec *rec);
/* jrnl_replay with jrnl_state_apply as the visitor (opaque = the state). */
extern const struct jrnl_ops jrnl_state_ops;
int jrnl_state_replay(struct jrnl *j, struct jrnl_state *s, struct jrnl_replay_result *res,
		      struct dmb_err *e);

struct jrnl_ctx *jrnl_state_ctx(const struct jrnl_state *s, uint64_t id);
struct jrnl_ctx *jrnl_state_ctx_first(const struct jrnl_state *s);
struct jrnl_ctx *jrnl_state_ctx_next(struct jrnl_ctx *c);
struct jrnl_region *jrnl_ctx_region(const struct jrnl_ctx *c, uint64_t id);
struct jrnl_region *jrnl_ctx_region_first(const struct jrnl_ctx *c);
struct jrnl_region *jrnl_ctx_region_next(struct jrnl_region *r);
/* The mapping containing iova, or NULL. */
struct jrnl_map *jrnl_ctx_map_find(const struct jrnl_ctx *c, uint64_t iova);
struct jrnl_map *jrnl_ctx_map_first(const struct jrnl_ctx *c);
struct jrnl_map *jrnl_ctx_map_next(struct jrnl_map *m);
struct jrnl_dev *jrnl_ctx_dev_first(const struct jrnl_ctx *c);
struct jrnl_dev *jrnl_ctx_dev_next(struct jrnl_dev *d);

/* True when the two states hold the same objects with the same attributes
 * (anomaly counters aside); otherwise `why` names the first difference. */
bool jrnl_state_equal(const struct jrnl_state *a, const struct jrnl_state *b, char *why,
		      size_t why_size);

/* ---- compaction ---- */

/* Bytes of records a snapshot of s takes. */
uint64_t jrnl_state_snapshot_bytes(const struct jrnl_state *s);
/* Writes a snapshot of s (or, with s NULL, of j's own replay) into a NEW
 * journal: generation + 1, seq numbers continuing j's, one record per live
 * object. j is not touched. The daemon then hands the new fd to the fd store
 * (name "jrnl.<generation>"), removes the old one and closes j; a restart in
 * between finds both and keeps the higher generation. */
int jrnl_compact(struct jrnl *j, const struct jrnl_state *s, struct jrnl **out,
		 struct dmb_err *e);
/* The policy: compact when the committed records exceed 1 MiB and 4x the
 * live state's snapshot (live_bytes: jrnl_state_snapshot_bytes or an
 * estimate from jrnl_snapshot_estimate), or when the journal is damaged. */
bool jrnl_should_compact(const struct jrnl *j, uint64_t live_bytes);
/* Appends the DISCARD records that restore a granular mapping's discarded
 * granules (bit i of bits set: granule i), for snapshots. */
int jrnl_snapshot_discards(struct jrnl *n, uint64_t ctx, uint64_t iova, uint64_t length,
			   uint64_t granule, const uint64_t *bits, struct dmb_err *e);
/* An upper bound of a snapshot's size from object counts. */
uint64_t jrnl_snapshot_estimate(uint64_t contexts, uint64_t regions, uint64_t devices,
				uint64_t mappings);

/* CRC-32C (Castagnoli, reflected, poly 0x82F63B78, init and final xor
 * ~0): jrnl_crc32c(0, "123456789", 9) == 0xE3069283. Pass the previous
 * result as crc to continue a running checksum. */
uint32_t jrnl_crc32c(uint32_t crc, const void *buf, size_t len);
/* The table-driven implementation jrnl_crc32c uses where the CPU has no
 * CRC-32C instruction; for tests. */
uint32_t jrnl_crc32c_sw(uint32_t crc, const void *buf, size_t len);
