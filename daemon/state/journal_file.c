/* The state journal (journal.h): a memfd of append-only records (the
 * record codec, the file, appending, opening and replay). The state model a
 * replay builds is journal_model.c's, compaction journal_compact.c's; the
 * constants below and struct jrnl are in journal_impl.h.
 *
 * ---------------------------------------------------------------------------
 * Format, version 1.1 (1.0 plus the no-IOMMU context flag, DISCARD, POPULATE
 * and MAP granules). All integers little-endian. (docs/journal.md explains
 * it; this block is the specification.)
 *
 * File
 *   [0, header_size)                      header
 *   [header_size, header_size+committed)  records, back to back, each 8-aligned
 *   beyond                                free space: zeroes, or the debris of
 *                                         an append that was never committed
 *
 * Header (64 bytes in v1.0)
 *   off len
 *    0   8  magic "DMBJRNL\0"
 *    8   4  version: major << 16 | minor (1.0 = 0x00010000)
 *   12   4  header_size: >= 64, multiple of 8 (records start there)
 *   16   8  generation: 1 for a new journal, +1 for each compaction
 *   24   8  base_seq: seq of the first record
 *   32   8  reserved, 0
 *   40   4  reserved, 0
 *   44   4  header_crc: CRC-32C of bytes [0, 44)
 *   48   8  commit word: bits 0-47 committed (bytes of records),
 *           bits 48-63 the low 16 bits of CRC-32C of committed's 6 low bytes
 *   56   8  reserved, 0
 * The header_crc covers only what never changes; the commit word changes on
 * every append and is written with ONE aligned 8-byte atomic store, so it is
 * never torn, and it carries its own check, so a stray write to it is
 * refused at open instead of silently dropping (or inventing) records.
 *
 * Record
 *   off   len
 *    0     4  length: 16 + payload + 4 (the record occupies align8(length))
 *    4     4  type (enum jrnl_type; bit 31 = optional, see below)
 *    8     8  seq: base_seq for the first record, then +1 each
 *   16     n  payload (n = length - 20), laid out per type below
 *   16+n   4  crc: CRC-32C of bytes [0, 16+n)
 *   20+n      zero bytes up to the next multiple of 8
 * A record is valid when: 20 <= length <= JRNL_RECORD_MAX, it ends inside
 * the committed part, its crc matches, its padding is zero, its seq is the
 * expected one and its payload decodes exactly (every length, count,
 * reserved field and string checked). Replay delivers valid records in order
 * and stops at the first one that is not: one that runs past the committed
 * end is a torn tail (ignored; it cannot happen except by truncation, since
 * the commit point only ever moves to record ends); any other is corruption.
 *
 * Commit protocol (the append): write the record bytes past the committed
 * end, then publish the new committed length in the commit word with a
 * release store. A SIGKILL before the store leaves the old journal (the
 * partial bytes lie beyond `committed` and are never read); after it, the new
 * one. The next writer appends at the end of the last valid record,
 * overwriting any debris. A memfd's shared mapping IS the file, so nothing
 * has to be flushed for a restart or a LUO handoff.
 *
 * MAP entry flags: bit 0 MMIO (a peer BAR; region = the peer device, bits
 * 8..15 the BAR); v1.1: bits 16..21 log2 of a granular mapping's granule.
 *
 * Payloads (v1.1); strings are length-prefixed, no NUL, no terminator
 *   CONTEXT_CREATE   u64 ctx, u64 session, u32 uid, u32 gid, u32 flags,
 *                    u16 name_len (<= 64), u16 0, u8 token[32], name
 *   CONTEXT_DESTROY  u64 ctx
 *   CONTEXT_RECLAIM  u64 ctx, u64 session, u32 uid, u32 gid, u8 token[32]
 *   REGION_ADD       u64 ctx, u64 region, u64 size, u64 page_size, u32 flags,
 *                    u16 fd_name_len (1..255), u16 0, fd_name
 *   REGION_REMOVE    u64 ctx, u64 region
 *   MAP              u64 ctx, u32 n (1..16384), u32 0,
 *                    n x { u64 iova, u64 length, u64 region, u64 offset,
 *                          u32 prot, u32 flags }      (length > 0, no wrap)
 *   UNMAP            u64 ctx, u32 n (1..16384), u32 0,
 *                    n x { u64 iova, u64 length }     (length > 0, no wrap)
 *   UNMAP_ALL        u64 ctx
 *   DISCARD, POPULATE (v1.1) u64 ctx, u32 n (1..16384), u32 0,
 *                    n x { u64 iova, u64 length }     (length > 0, no wrap)
 *   DEVICE_ADD       u64 ctx, u64 device, u16 bdf_len (1..15), bdf
 *   DEVICE_REMOVE    u64 ctx, u64 device
 *   SESSION_END      u64 session
 *   ID_WATERMARK     u64 next_id
 *   HANDOFF_STATE    u32 state (0..3), u32 0
 *
 * Versions: a reader refuses another major. A newer minor may add record
 * types (with bit 31 set, which an older reader skips) and append fields at
 * the end of a payload (which an older reader ignores); reserved fields and
 * unknown flags are only checked in journals of this minor or older.
 * ---------------------------------------------------------------------------
 */
#include "state/journal.h"
#include "state/journal_impl.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/macro.h"

/* ---- the commit word ---- */

static uint64_t commit_word(uint64_t committed)
{
	uint8_t b[8];
	put64(b, committed);
	uint64_t check = jrnl_crc32c(0, b, 6) & 0xffff;
	return committed | (check << 48);
}

static void publish(struct jrnl *j, uint64_t committed)
{
	uint64_t *w = (uint64_t *)(void *)(j->map + HDR_OFF_COMMIT);
	__atomic_store_n(w, htole64(commit_word(committed)), __ATOMIC_RELEASE);
}

/* The committed length, or -1 if the word's check does not match. */
static int64_t read_committed(const uint8_t *map)
{
	const uint64_t *w = (const uint64_t *)(const void *)(map + HDR_OFF_COMMIT);
	uint64_t word = le64toh(__atomic_load_n(w, __ATOMIC_ACQUIRE));
	uint64_t committed = word & COMMITTED_MAX;
	return commit_word(committed) == word ? (int64_t)committed : -1;
}

/* ---- the file ---- */

static void write_header(uint8_t *h, uint64_t generation, uint64_t base_seq)
{
	memset(h, 0, JRNL_HEADER_SIZE);
	memcpy(h, HDR_MAGIC, 8);
	put32(h + HDR_OFF_VERSION, JRNL_VERSION);
	put32(h + HDR_OFF_HSIZE, JRNL_HEADER_SIZE);
	put64(h + HDR_OFF_GEN, generation);
	put64(h + HDR_OFF_BASESEQ, base_seq);
	put32(h + HDR_OFF_CRC, jrnl_crc32c(0, h, HDR_OFF_CRC));
}

/* Grows the file and the mapping so that [0, need) is inside (doubling). */
static int grow(struct jrnl *j, uint64_t need, struct dmb_err *e)
{
	if (need <= j->size)
		return 0;
	if (need > FILE_MAX || need - j->hsize > COMMITTED_MAX)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"the state journal would grow past %" PRIu64 " bytes; compact it",
				FILE_MAX);
	uint64_t n = j->size ? j->size : INITIAL_SIZE;
	while (n < need)
		n *= 2;
	if (n > FILE_MAX)
		n = FILE_MAX;
	/* An earlier failed grow may have left the file longer than the
	 * mapping; the shrink seal forbids going back, so never ask to. */
	struct stat st;
	if (fstat(j->fd, &st) < 0)
		return dmb_fail(e, DMB_E_INTERNAL, errno, "cannot stat the state journal: %m");
	if ((uint64_t)st.st_size < n && ftruncate(j->fd, (off_t)n) < 0) {
		int err = errno;
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, err,
				"cannot grow the state journal to %" PRIu64 " bytes: %s%s", n,
				strerror(err),
				err == EPERM ? " (its size is frozen: sealed, or preserved for "
					       "a live update; reserve room before preserving)"
					     : "");
	}
	void *m = mremap(j->map, j->size, n, MREMAP_MAYMOVE);
	if (m == MAP_FAILED)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno,
				"cannot map %" PRIu64 " bytes of the state journal: %m", n);
	j->map = m;
	j->size = n;
	return 0;
}

int jrnl_new(uint64_t generation, uint64_t base_seq, uint64_t size, struct jrnl **out,
	     struct dmb_err *e)
{
	_cleanup_close_ int fd = memfd_create("dmabroker-journal", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return dmb_fail(e, DMB_E_INTERNAL, errno, "cannot create the state journal memfd: %m");
	if (ftruncate(fd, (off_t)size) < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno,
				"cannot size the state journal to %" PRIu64 " bytes: %m", size);
	/* Nobody may shrink it under our mapping (SIGBUS); LUO keeps seals. */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		return dmb_fail(e, DMB_E_INTERNAL, errno, "cannot seal the state journal: %m");
	uint8_t *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno,
				"cannot map the state journal: %m");
	struct jrnl *j = calloc(1, sizeof(*j));
	if (!j) {
		munmap(map, size);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	*j = (struct jrnl){
		.fd = TAKE_FD(fd),
		.map = map,
		.size = size,
		.hsize = JRNL_HEADER_SIZE,
		.version = JRNL_VERSION,
		.generation = generation,
		.base_seq = base_seq,
		.tail = JRNL_HEADER_SIZE,
		.next_seq = base_seq,
	};
	write_header(map, generation, base_seq);
	publish(j, 0);
	*out = j;
	return 0;
}

int jrnl_create(struct jrnl **out, struct dmb_err *e)
{
	return jrnl_new(1, 1, INITIAL_SIZE, out, e);
}

void jrnl_close(struct jrnl *j)
{
	if (!j)
		return;
	if (j->map)
		munmap(j->map, j->size);
	safe_close(j->fd);
	free(j->damage);
	free(j);
}

int jrnl_fd(const struct jrnl *j)
{
	return j->fd;
}
uint64_t jrnl_generation(const struct jrnl *j)
{
	return j->generation;
}
uint64_t jrnl_committed(const struct jrnl *j)
{
	return j->tail - j->hsize;
}
uint64_t jrnl_records(const struct jrnl *j)
{
	return j->n_records;
}
uint64_t jrnl_next_seq(const struct jrnl *j)
{
	return j->next_seq;
}
const char *jrnl_damaged(const struct jrnl *j)
{
	return j->damage;
}

int jrnl_reserve(struct jrnl *j, uint64_t bytes, struct dmb_err *e)
{
	if (bytes > FILE_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "cannot reserve %" PRIu64 " bytes",
				bytes);
	return grow(j, j->tail + bytes, e);
}

int jrnl_sync_point(struct jrnl *j)
{
	(void)j;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 0;
}

/* ---- appending ---- */

/* Room for a record with `payload` bytes at the tail; returns its start. */
static inline int begin(struct jrnl *j, uint32_t payload, uint8_t **rec, struct dmb_err *e)
{
	if (DMB_UNLIKELY(j->damage))
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBADMSG,
				"the state journal is damaged (%s); compact it before appending",
				j->damage);
	uint64_t need = j->tail + align8(REC_OVERHEAD + (uint64_t)payload);
	if (DMB_UNLIKELY(need > j->size)) {
		int r = grow(j, need, e);
		if (r < 0)
			return r;
	}
	*rec = j->map + j->tail;
	return 0;
}

/* Frames the payload already written at rec + 16 and commits the record. */
static inline void commit(struct jrnl *j, uint8_t *rec, uint32_t type, uint32_t payload)
{
	uint32_t length = REC_OVERHEAD + payload;
	uint32_t body = REC_HDR + payload;
	put32(rec, length);
	put32(rec + 4, type);
	put64(rec + 8, j->next_seq);
	put32(rec + body, jrnl_crc32c(0, rec, body));
	uint32_t padded = (uint32_t)align8(length);
	for (uint32_t i = length; i < padded; i++)
		rec[i] = 0;
	j->tail += padded;
	/* The commit point: the release store orders every byte above before
	 * the new length; a crash before it leaves the record uncommitted. */
	publish(j, j->tail - j->hsize);
	j->next_seq++;
	j->n_records++;
}

int jrnl_append(struct jrnl *j, const struct jrnl_rec *rec, struct dmb_err *e)
{
	char why[160];
	if (jrnl_rec_check(rec, false, why, sizeof(why)) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"refusing to journal a malformed record: %s", why);
	uint32_t payload = jrnl_payload_size(rec);
	uint8_t *p = NULL;
	int r = begin(j, payload, &p, e);
	if (r < 0)
		return r;
	jrnl_encode(p + REC_HDR, rec);
	commit(j, p, rec->type, payload);
	return 0;
}

int jrnl_append_ctx_create(struct jrnl *j, uint64_t ctx, uint64_t session, uint32_t uid,
			   uint32_t gid, uint32_t flags, const char *name,
			   const uint8_t token[JRNL_TOKEN_SIZE], struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_CONTEXT_CREATE };
	r.u.ctx_create.ctx = ctx;
	r.u.ctx_create.session = session;
	r.u.ctx_create.uid = uid;
	r.u.ctx_create.gid = gid;
	r.u.ctx_create.flags = flags;
	memcpy(r.u.ctx_create.token, token, JRNL_TOKEN_SIZE);
	if (!name || strlen(name) > JRNL_NAME_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"refusing to journal a malformed record: context name longer "
				"than %u bytes", JRNL_NAME_MAX);
	strcpy(r.u.ctx_create.name, name);
	return jrnl_append(j, &r, e);
}

int jrnl_append_ctx_destroy(struct jrnl *j, uint64_t ctx, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_CONTEXT_DESTROY, .u.ctx_destroy.ctx = ctx };
	return jrnl_append(j, &r, e);
}

int jrnl_append_ctx_reclaim(struct jrnl *j, uint64_t ctx, uint64_t session, uint32_t uid,
			    uint32_t gid, const uint8_t token[JRNL_TOKEN_SIZE], struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_CONTEXT_RECLAIM };
	r.u.ctx_reclaim.ctx = ctx;
	r.u.ctx_reclaim.session = session;
	r.u.ctx_reclaim.uid = uid;
	r.u.ctx_reclaim.gid = gid;
	memcpy(r.u.ctx_reclaim.token, token, JRNL_TOKEN_SIZE);
	return jrnl_append(j, &r, e);
}

int jrnl_append_region_add(struct jrnl *j, uint64_t ctx, uint64_t region, uint64_t size,
			   uint64_t page_size, uint32_t flags, const char *fd_name,
			   struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_REGION_ADD };
	r.u.region_add.ctx = ctx;
	r.u.region_add.region = region;
	r.u.region_add.size = size;
	r.u.region_add.page_size = page_size;
	r.u.region_add.flags = flags;
	if (!fd_name || strlen(fd_name) > JRNL_FDNAME_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"refusing to journal a malformed record: region fd name must be "
				"1 to %u bytes", JRNL_FDNAME_MAX);
	strcpy(r.u.region_add.fd_name, fd_name);
	return jrnl_append(j, &r, e);
}

int jrnl_append_region_remove(struct jrnl *j, uint64_t ctx, uint64_t region, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_REGION_REMOVE };
	r.u.region_remove.ctx = ctx;
	r.u.region_remove.region = region;
	return jrnl_append(j, &r, e);
}

/* The hot path: no jrnl_rec, no loop, one CRC over 64 bytes. */
int jrnl_append_map(struct jrnl *j, uint64_t ctx, uint64_t iova, uint64_t length,
		    uint64_t region, uint64_t offset, uint32_t prot, uint32_t flags,
		    struct dmb_err *e)
{
	if (DMB_UNLIKELY(!range_ok(iova, length) || !range_ok(offset, length)))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"refusing to journal a malformed record: MAP entry 0 (iova 0x%" PRIx64
				", length 0x%" PRIx64 ", offset 0x%" PRIx64 ") is empty or wraps",
				iova, length, offset);
	if (DMB_UNLIKELY(flags & JRNL_MAP_GRANULE(0x3f))) {
		/* a granular entry: the full check */
		struct jrnl_map_entry m = { iova, length, region, offset, prot, flags };
		struct jrnl_rec r = { .type = JRNL_MAP };
		r.u.map.ctx = ctx;
		r.u.map.n = 1;
		r.u.map.e = &m;
		return jrnl_append(j, &r, e);
	}
	const uint32_t payload = 16 + MAP_ENTRY_SIZE;
	uint8_t *p = NULL;
	int r = begin(j, payload, &p, e);
	if (r < 0)
		return r;
	uint8_t *q = p + REC_HDR;
	put64(q, ctx);
	put32(q + 8, 1);
	put32(q + 12, 0);
	struct jrnl_map_entry m = { iova, length, region, offset, prot, flags };
	jrnl_encode_map_entry(q + 16, &m);
	commit(j, p, JRNL_MAP, payload);
	return 0;
}

int jrnl_append_map_batch(struct jrnl *j, uint64_t ctx, const struct jrnl_map_entry *ents,
			  uint32_t n, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_MAP };
	r.u.map.ctx = ctx;
	r.u.map.n = n;
	r.u.map.e = ents;
	return jrnl_append(j, &r, e);
}

int jrnl_append_unmap(struct jrnl *j, uint64_t ctx, uint64_t iova, uint64_t length,
		      struct dmb_err *e)
{
	struct jrnl_range range = { iova, length };
	return jrnl_append_unmap_ranges(j, ctx, &range, 1, e);
}

int jrnl_append_unmap_ranges(struct jrnl *j, uint64_t ctx, const struct jrnl_range *ranges,
			     uint32_t n, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_UNMAP };
	r.u.unmap.ctx = ctx;
	r.u.unmap.n = n;
	r.u.unmap.r = ranges;
	return jrnl_append(j, &r, e);
}

int jrnl_append_convert(struct jrnl *j, uint64_t ctx, bool discard, const struct jrnl_range *ranges,
			uint32_t n, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = discard ? JRNL_DISCARD : JRNL_POPULATE };
	r.u.convert.ctx = ctx;
	r.u.convert.n = n;
	r.u.convert.r = ranges;
	return jrnl_append(j, &r, e);
}

int jrnl_append_unmap_all(struct jrnl *j, uint64_t ctx, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_UNMAP_ALL, .u.unmap_all.ctx = ctx };
	return jrnl_append(j, &r, e);
}

int jrnl_append_device_add(struct jrnl *j, uint64_t ctx, uint64_t device, const char *bdf,
			   struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_DEVICE_ADD };
	r.u.device_add.ctx = ctx;
	r.u.device_add.device = device;
	if (!bdf || strlen(bdf) > JRNL_BDF_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"refusing to journal a malformed record: device address must be "
				"1 to %u bytes", JRNL_BDF_MAX);
	strcpy(r.u.device_add.bdf, bdf);
	return jrnl_append(j, &r, e);
}

int jrnl_append_device_remove(struct jrnl *j, uint64_t ctx, uint64_t device, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_DEVICE_REMOVE };
	r.u.device_remove.ctx = ctx;
	r.u.device_remove.device = device;
	return jrnl_append(j, &r, e);
}

int jrnl_append_session_end(struct jrnl *j, uint64_t session, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_SESSION_END, .u.session_end.session = session };
	return jrnl_append(j, &r, e);
}

int jrnl_append_id_watermark(struct jrnl *j, uint64_t next_id, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_ID_WATERMARK, .u.id_watermark.next_id = next_id };
	return jrnl_append(j, &r, e);
}

int jrnl_append_handoff(struct jrnl *j, uint32_t state, struct dmb_err *e)
{
	struct jrnl_rec r = { .type = JRNL_HANDOFF_STATE, .u.handoff.state = state };
	return jrnl_append(j, &r, e);
}

/* ---- reading records ---- */

/* Walks the records of a mapped journal; owns the arrays MAP and UNMAP
 * records are decoded into. */
struct walker {
	const uint8_t *map;
	uint64_t hsize;
	uint64_t end;            /* absolute end of the committed part */
	uint64_t off;            /* next record */
	uint64_t seq;            /* its expected seq */
	bool newer;              /* journal of a newer minor version */
	struct jrnl_bufs bufs;   /* MAP and UNMAP records are decoded into these */
	enum jrnl_stop stop;
	char why[160];
};

static void walker_fini(struct walker *w)
{
	free(w->bufs.ents);
	free(w->bufs.ranges);
}

#define W_STOP(w, kind, ...)                                               \
	({                                                                 \
		(w)->stop = (kind);                                        \
		snprintf((w)->why, sizeof((w)->why), __VA_ARGS__);         \
		0;                                                         \
	})

/* The next valid record into rec: 1, or 0 at the end (w->stop says why),
 * or -ENOMEM. A skipped optional record of a newer minor returns 2. */
static int walker_next(struct walker *w, struct jrnl_rec *rec)
{
	if (w->off == w->end)
		return W_STOP(w, JRNL_STOP_END, "end of the committed records");
	uint64_t left = w->end - w->off;
	if (left < REC_OVERHEAD)
		return W_STOP(w, JRNL_STOP_TORN,
			      "record at offset %" PRIu64 " runs past the committed end", w->off);
	const uint8_t *p = w->map + w->off;
	uint32_t length = get32(p);
	if (length < REC_OVERHEAD || length > JRNL_RECORD_MAX)
		return W_STOP(w, JRNL_STOP_CORRUPT,
			      "record at offset %" PRIu64 " has an impossible length %" PRIu32,
			      w->off, length);
	uint64_t padded = align8(length);
	if (padded > left)
		return W_STOP(w, JRNL_STOP_TORN,
			      "record at offset %" PRIu64 " (%" PRIu32
			      " bytes) runs past the committed end",
			      w->off, length);
	uint32_t body = length - 4;
	if (jrnl_crc32c(0, p, body) != get32(p + body))
		return W_STOP(w, JRNL_STOP_CORRUPT,
			      "record at offset %" PRIu64 " has a bad checksum", w->off);
	for (uint64_t i = length; i < padded; i++)
		if (p[i])
			return W_STOP(w, JRNL_STOP_CORRUPT,
				      "record at offset %" PRIu64 " has non-zero padding", w->off);
	uint64_t seq = get64(p + 8);
	if (seq != w->seq)
		return W_STOP(w, JRNL_STOP_CORRUPT,
			      "record at offset %" PRIu64 " has seq %" PRIu64 ", expected %" PRIu64,
			      w->off, seq, w->seq);
	rec->type = get32(p + 4);
	rec->seq = seq;
	int r;
	if (w->newer && (rec->type & JRNL_TYPE_OPTIONAL) &&
	    (rec->type & ~JRNL_TYPE_OPTIONAL) > JRNL_TYPE_LAST_V1_0) {
		r = 2;
	} else {
		char why[120];
		r = jrnl_decode(&w->bufs, w->newer, p + REC_HDR, length - REC_OVERHEAD, rec, why, sizeof(why));
		if (r < 0)
			return r;
		if (r == 0)
			return W_STOP(w, JRNL_STOP_CORRUPT, "record %" PRIu64 " at offset %" PRIu64
				      ": %s", seq, w->off, why);
	}
	w->off += padded;
	w->seq++;
	return r;
}

static void walker_init(struct walker *w, const struct jrnl *j)
{
	int64_t committed = read_committed(j->map);
	*w = (struct walker){
		.map = j->map,
		.hsize = j->hsize,
		/* open checked the word; a writer in this process keeps it valid */
		.end = j->hsize + (committed < 0 ? 0 : (uint64_t)committed),
		.off = j->hsize,
		.seq = j->base_seq,
		.newer = (j->version & 0xffff) > JRNL_VERSION_MINOR,
	};
}

/* ---- opening ---- */

static int refuse(struct dmb_err *e, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int refuse(struct dmb_err *e, int err, const char *fmt, ...)
{
	char m[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof(m), fmt, ap);
	va_end(ap);
	return dmb_fail(e, DMB_E_FAILED_PRECONDITION, err, "refusing the state journal: %s", m);
}

static int check_header(const uint8_t *h, uint64_t size, struct dmb_err *e)
{
	if (memcmp(h, HDR_MAGIC, 8) != 0)
		return refuse(e, ENOEXEC, "it does not start with the journal magic");
	if (jrnl_crc32c(0, h, HDR_OFF_CRC) != get32(h + HDR_OFF_CRC))
		return refuse(e, ENOEXEC, "its header checksum does not match");
	uint32_t version = get32(h + HDR_OFF_VERSION);
	if (version >> 16 != JRNL_VERSION_MAJOR)
		return refuse(e, EPROTONOSUPPORT,
			      "it has format version %u.%u, this daemon reads %u.x",
			      version >> 16, version & 0xffff, JRNL_VERSION_MAJOR);
	bool newer = (version & 0xffff) > JRNL_VERSION_MINOR;
	uint32_t hsize = get32(h + HDR_OFF_HSIZE);
	if (hsize < JRNL_HEADER_SIZE || hsize % 8 || hsize > size || (!newer && hsize != JRNL_HEADER_SIZE))
		return refuse(e, ENOEXEC, "its header size %u is impossible", hsize);
	if (get64(h + HDR_OFF_GEN) == 0)
		return refuse(e, ENOEXEC, "its generation is 0");
	if (!newer && (get64(h + HDR_OFF_RES0) || get32(h + HDR_OFF_RES1) ||
		       get64(h + HDR_OFF_RES2)))
		return refuse(e, ENOEXEC, "a reserved header field is not zero");
	int64_t committed = read_committed(h);
	if (committed < 0)
		return refuse(e, ENOEXEC, "its committed length fails its check");
	if ((uint64_t)committed > size - hsize)
		return refuse(e, ENOEXEC,
			      "it claims %" PRId64 " bytes of records but the file holds %" PRIu64,
			      committed, size - hsize);
	return 0;
}

/* The one walk over a journal's records: every check of the format
 * (length, CRC, padding, seq, payload) runs exactly once per record. With
 * ops, each valid record is also delivered as it is validated, so a restore
 * walks (and checksums) the journal once instead of once to open it and
 * again to replay it. Fills j's tail, next_seq, n_records and damage. */
/* Walks the committed records from the start, delivering each to ops (when
 * set; records a newer minor version added go to ops->skipped) and counting
 * them in *n_records (when set); fills res. On return w is finished, and
 * w->off, w->seq, w->stop and w->why still say where the walk stopped.
 * Negative: a callback failed, or memory ran out (`what` the walk did). */
static int walk_records(struct jrnl *j, struct walker *w, const struct jrnl_ops *ops,
			void *opaque, struct jrnl_replay_result *res, uint64_t *n_records,
			const char *what, struct dmb_err *e)
{
	struct jrnl_rec rec;
	int r;

	*res = (struct jrnl_replay_result){ 0 };
	walker_init(w, j);
	res->end = w->off;
	while ((r = walker_next(w, &rec)) > 0) {
		if (n_records)
			(*n_records)++;
		if (!ops)
			continue;
		if (r == 2) {
			if (ops->skipped)
				ops->skipped(opaque, rec.type, rec.seq);
		} else {
			r = ops->record(opaque, &rec);
			if (r < 0) {
				walker_fini(w);
				res->stop_offset = res->end;
				return dmb_fail(e, dmb_code_from_errno(r), -r,
						"replaying state journal record %" PRIu64 " failed: %s",
						rec.seq, strerror(-r));
			}
			res->records++;
		}
		res->last_seq = rec.seq;
		res->end = w->off;
	}
	walker_fini(w);
	if (r < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, -r, "out of memory %s the journal", what);
	res->stop = w->stop;
	res->stop_offset = w->off;
	if (w->stop != JRNL_STOP_END)
		snprintf(res->why, sizeof(res->why), "%s", w->why);
	return 0;
}

static int fail_damaged(const struct walker *w, uint64_t records, struct dmb_err *e)
{
	return dmb_fail(e, DMB_E_INTERNAL, EBADMSG,
			"the state journal is damaged: %s; replay stopped there after %" PRIu64
			" records",
			w->why, records);
}

static int walk(struct jrnl *j, const struct jrnl_ops *ops, void *opaque,
		struct jrnl_replay_result *res, struct dmb_err *e)
{
	struct jrnl_replay_result local;
	struct walker w;
	int r = walk_records(j, &w, ops, opaque, res ? res : &local, &j->n_records, "reading", e);
	if (r < 0)
		return r;
	j->tail = w.off;
	j->next_seq = w.seq;
	if (w.stop == JRNL_STOP_CORRUPT && !(j->damage = strdup(w.why)))
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	if (ops && w.stop == JRNL_STOP_CORRUPT)
		return fail_damaged(&w, res ? res->records : j->n_records, e);
	return 0;
}

int jrnl_open_replay_fd(int fd, const struct jrnl_ops *ops, void *opaque,
			struct jrnl_replay_result *res, struct jrnl **out, struct dmb_err *e)
{
	struct stat st;
	*out = NULL;
	if (fd < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF, "no state journal fd");
	if (fstat(fd, &st) < 0)
		return dmb_fail(e, DMB_E_INTERNAL, errno, "cannot stat the state journal fd: %m");
	if (!S_ISREG(st.st_mode))
		return refuse(e, ENOEXEC, "it is not a regular file (a memfd)");
	uint64_t size = (uint64_t)st.st_size;
	if (size < JRNL_HEADER_SIZE)
		return refuse(e, ENOEXEC, "it is %" PRIu64 " bytes long, shorter than its header",
			      size);
	if (size > FILE_MAX)
		return refuse(e, EFBIG, "it is %" PRIu64 " bytes long", size);
	uint8_t *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return dmb_fail(e, DMB_E_INTERNAL, errno,
				"cannot map the state journal read-write: %m");
	int r = check_header(map, size, e);
	if (r < 0) {
		munmap(map, size);
		return r;
	}
	struct jrnl *j = calloc(1, sizeof(*j));
	if (!j) {
		munmap(map, size);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	*j = (struct jrnl){
		.fd = -1,
		.map = map,
		.size = size,
		.hsize = get32(map + HDR_OFF_HSIZE),
		.version = get32(map + HDR_OFF_VERSION),
		.generation = get64(map + HDR_OFF_GEN),
		.base_seq = get64(map + HDR_OFF_BASESEQ),
	};

	/* Find where the valid records end (appends go there), delivering
	 * them on the way when asked to. */
	r = walk(j, ops, opaque, res, e);
	if (r < 0 && r != -EBADMSG) {
		jrnl_close(j); /* j->fd is still -1: the caller keeps fd */
		return r;
	}
	j->fd = fd;
	*out = j;
	return r;
}

int jrnl_open_fd(int fd, struct jrnl **out, struct dmb_err *e)
{
	return jrnl_open_replay_fd(fd, NULL, NULL, NULL, out, e);
}

/* ---- replay ---- */

int jrnl_replay(struct jrnl *j, const struct jrnl_ops *ops, void *opaque,
		struct jrnl_replay_result *res, struct dmb_err *e)
{
	struct jrnl_replay_result local;
	if (!res)
		res = &local;
	struct walker w;
	int r = walk_records(j, &w, ops, opaque, res, NULL, "replaying", e);
	if (r < 0)
		return r;
	if (w.stop == JRNL_STOP_CORRUPT)
		return fail_damaged(&w, res->records, e);
	return 0;
}
