/* Inside the journal (journal_file.c, journal_codec.c, journal_compact.c): the
 * file format's constants (specified at the top of journal_file.c), the open
 * journal, and the record codec's interface. Not for other files: they use
 * journal.h. */
#pragma once

#include <endian.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "state/journal.h"
#include "util/macro.h"

#define HDR_MAGIC "DMBJRNL\0"
#define HDR_OFF_VERSION 8
#define HDR_OFF_HSIZE 12
#define HDR_OFF_GEN 16
#define HDR_OFF_BASESEQ 24
#define HDR_OFF_RES0 32
#define HDR_OFF_RES1 40
#define HDR_OFF_CRC 44
#define HDR_OFF_COMMIT 48
#define HDR_OFF_RES2 56

#define REC_HDR 16u
#define REC_OVERHEAD 20u            /* header + crc */
#define COMMITTED_MAX ((UINT64_C(1) << 48) - 1)
#define FILE_MAX (UINT64_C(1) << 44) /* 16 TiB: far beyond any sane journal */
#define INITIAL_SIZE (UINT64_C(64) << 10)
#define SNAP_BATCH 1024u             /* mappings per MAP record in a snapshot */

#define MAP_ENTRY_SIZE 40u
#define RANGE_SIZE 16u

struct jrnl {
	int fd;
	uint8_t *map;
	uint64_t size;          /* bytes mapped == the file's size */
	uint32_t hsize;
	uint32_t version;
	uint64_t generation;
	uint64_t base_seq;
	uint64_t tail;          /* absolute offset of the next record */
	uint64_t next_seq;
	uint64_t n_records;
	char *damage;           /* NULL, or why appends are refused */
};

static inline uint64_t align8(uint64_t v)
{
	return (v + 7) & ~UINT64_C(7);
}

/* A new, empty journal in a fresh memfd of `size` bytes. */
int jrnl_new(uint64_t generation, uint64_t base_seq, uint64_t size, struct jrnl **out,
	     struct dmb_err *e);

/* ---- little-endian put/get ---- */

static inline void put16(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, 2);
}
static inline void put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}
static inline void put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}
static inline uint16_t get16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return le16toh(v);
}
static inline uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}
static inline uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}

/* A reading cursor: every get checks the bounds first; `bad` sticks. */

/* ---- the record codec (journal_codec.c) ---- */

/* [start, start+len) is non-empty and does not wrap. */
static inline bool range_ok(uint64_t start, uint64_t len)
{
	uint64_t last;
	return dmb_range_last(start, len, &last);
}

/* Whether a record may be appended or, read back, applied; why says why not.
 * newer: the journal is of a newer minor version (unknown fields allowed). */
int jrnl_rec_check(const struct jrnl_rec *r, bool newer, char *why, size_t n);
/* The payload bytes r encodes to, and its encoding at p. */
uint32_t jrnl_payload_size(const struct jrnl_rec *r);
void jrnl_encode(uint8_t *p, const struct jrnl_rec *r);
void jrnl_encode_map_entry(uint8_t *p, const struct jrnl_map_entry *m);

/* Where MAP and UNMAP records are decoded to: the caller owns the arrays and
 * frees them; a decoded record points into them until the next decode. */
struct jrnl_bufs {
	struct jrnl_map_entry *ents;
	struct jrnl_range *ranges;
	uint32_t ents_cap, ranges_cap;
};

/* Decodes the n-byte payload at p of a record whose type is rec->type into
 * rec; 0, or <0 with why when it is malformed. */
int jrnl_decode(struct jrnl_bufs *w, bool newer, const uint8_t *p, uint32_t n,
		struct jrnl_rec *rec, char *why, size_t why_n);
