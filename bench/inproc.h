/* In-process measurements (inproc.c links the daemon's own code, core_dep):
 * the sim backend called directly — the floor for the work a mapping needs —
 * and the core's ordered map at scale. Plain types only: this header meets
 * both the client side and the daemon's headers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct direct_result {
	double map_rate;    /* entries/s (wall clock) */
	double unmap_rate;  /* entries/s (wall clock) */
	double map_cpu;     /* ns of CPU per entry (thread CPU clock: robust to other tenants) */
	double unmap_cpu;
	double huge_ms;     /* inproc_direct_huge: one map of the whole range */
};

/* ops->map of n 4 KiB entries (iova BENCH_IOVA_BASE + i * stride pages,
 * region page i % pages), then ops->unmap of each, straight into the sim
 * backend: no socket, no protobuf, no core. Checks a sample with ops->dma. */
int inproc_direct(uint64_t n, uint64_t pages, uint64_t stride, struct direct_result *out);

/* One populated map of a fresh memfd of `bytes` (what pinning costs the sim
 * with --sim-populate), timed; then unmapped. */
int inproc_direct_huge(uint64_t bytes, struct direct_result *out);

/* The core's map_batch / unmap_ranges on the sim backend, in batches of b
 * (the broker's work without the socket and the codec); entries/s. */
int inproc_core_batch(uint64_t n, size_t b, struct direct_result *out);

struct scale_result {
	uint64_t n;
	double insert_rate;      /* map_batch in batches of 4096 */
	double insert_cpu;       /* ns of CPU per entry */
	double first_rate;       /* the first 16 batches (an almost empty tree) */
	double last_rate;        /* the last 16 batches */
	double find_ns;          /* map_find of a random mapped IOVA */
	double check_free_ns;    /* map_check_free of a random hole (succeeds) */
	double overlap_ns;       /* map_batch of one overlapping entry (fails EEXIST) */
	double unmap_ns;         /* unmap_ranges of one mapping (re-mapped untimed) */
	double heap_per_mapping; /* mallinfo2 in-use delta / n: core + sim area */
	double core_per_mapping; /* the same with a backend that keeps nothing */
	size_t sizeof_mapping;   /* sizeof(struct dmb_mapping) */
};

/* The core with the sim backend, one context, n mappings of 4 KiB at every
 * other page from BENCH_IOVA_BASE; `ops` random operations of each kind. */
int inproc_scale(uint64_t n, unsigned ops, struct scale_result *out);
