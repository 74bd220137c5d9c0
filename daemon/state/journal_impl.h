/* Inside the journal (journal.c, journal_compact.c): the file format's
 * constants (specified at the top of journal.c) and the open journal. Not
 * for other files: they use journal.h. */
#pragma once

#include <stdint.h>

#include "state/journal.h"

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
