/* Client-side helpers of dmb-bench (modules that talk to a daemon over the
 * socket with libdmabroker): a broker session with one context and one
 * region, the real encoded sizes of the small requests, the bare SEQPACKET
 * ping-pong baseline, and the DMA checks that prove a mapping moved bytes. */
#pragma once

#include "bench.h"
#include "dmabroker.h"

struct bsession {
	struct dmb_client *c;
	uint64_t ctx;
	uint64_t region;
	uint64_t region_size;
	unsigned seed;
	int memfd;       /* ours; the broker holds its own reference */
};

/* Connects, creates a context and registers a memfd of region_size bytes
 * whose first tag_pages pages carry page_tag(seed, page). */
int bsession_open(struct bsession *s, const char *sock, const char *name, uint64_t region_size,
		  unsigned seed, uint64_t tag_pages);
void bsession_close(struct bsession *s);

/* Reads 8 bytes at iova through the sim DMA engine and checks they are the
 * tag of region page `page`; records the check. */
bool check_mapped(struct bsession *s, uint64_t iova, uint64_t page, const char *what);
/* Checks that a DMA read at iova faults (nothing mapped there). */
bool check_unmapped(struct bsession *s, uint64_t iova, const char *what);

/* Encoded sizes of the small-map exchange, as libdmabroker and the daemon
 * produce them (Request and ServerMessage), for a request id in the range
 * the benchmark uses. */
struct wire_sizes {
	size_t map_req, map_rep, unmap_req, unmap_rep;
};
void wire_sizes_of(struct wire_sizes *w, uint64_t ctx, uint64_t region, uint64_t iova,
		   uint64_t req_id);

/* The floor: a bare SEQPACKET ping-pong between this process and a forked
 * echo process. The first 4 bytes of a request say how long the reply is. */
struct pingpong {
	pid_t pid;
	int fd;
	uint8_t buf[4096];
};
int pp_start(struct pingpong *p);
/* One exchange; returns its duration in ns, 0 on a transport error. */
uint64_t pp_rtt(struct pingpong *p, size_t req_len, size_t rep_len);
void pp_stop(struct pingpong *p);
