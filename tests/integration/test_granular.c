/* Granular mappings on the sim backend, proven by bytes: the sim's DMA
 * engine moves bytes through populated granules and faults on discarded
 * ones; discard and populate are all or nothing, refuse bad input with the
 * right code and change nothing then; the backend's own pin accounting
 * (the sim counts per kernel area) follows every discard and populate; and
 * a client dying mid-request leaks nothing. (Restart and host handoff:
 * test_restart.c and test_handoff.c.) */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PG 4096ull
#define NG 64                      /* granules of the 4 KiB mapping */
#define GIOVA 0x10000000ull        /* where it is mapped */
#define OIOVA 0x20000000ull        /* an ordinary mapping beside it */

struct fx {
	struct dmb_client *c;
	uint64_t ctx, region;
	int memfd;
};

static uint64_t backend_pinned(void)
{
	return daemon_totals(&g_daemon).pinned_bytes;
}

static void fx_open(struct fx *f, size_t size)
{
	f->c = client_connect(&g_daemon, "granular");
	assert_ok(f->c, dmb_context_create(f->c, "g", &f->ctx));
	f->memfd = make_memfd(size, 7);
	struct dmb_region_info ri;
	assert_ok(f->c, dmb_region_register(f->c, f->ctx, f->memfd, 0, &ri));
	f->region = ri.region;
}

static void fx_close(struct fx *f)
{
	dmb_close(f->c);
	close(f->memfd);
	assert_true(daemon_wait_idle(&g_daemon));
}

static struct dmb_mapping_info listed(struct fx *f, uint64_t iova)
{
	struct dmb_mapping_info v[8];
	size_t n = 0;
	bool more = false;
	assert_ok(f->c, dmb_list_mappings(f->c, f->ctx, iova, v, 8, &n, &more, NULL));
	assert_true(n >= 1);
	assert_int_equal(v[0].iova, iova);
	return v[0];
}

/* Each of the NG granules: moves bytes both ways when populated, faults
 * (and changes nothing) when discarded. */
static void check_granules(struct fx *f, const bool *discarded)
{
	for (unsigned i = 0; i < NG; i++) {
		if (discarded[i])
			check_dma_faults(f->c, f->ctx, f->memfd, i * PG, GIOVA + i * PG, 256);
		else
			check_dma(f->c, f->ctx, f->memfd, i * PG + 512, GIOVA + i * PG + 512, 256, i);
	}
}

static void test_discard_populate_moves_bytes(void **state)
{
	struct fx f;
	fx_open(&f, 2 * NG * PG);
	uint64_t pinned0 = backend_pinned();
	struct dmb_map_entry e = { f.region, 0, GIOVA, NG * PG, DMB_READ | DMB_WRITE };
	uint64_t ps = 0;
	assert_ok(f.c, dmb_map_granular(f.c, f.ctx, &e, DMB_GRANULE_4K, &ps));
	assert_int_equal(ps, PG);
	assert_int_equal(backend_pinned() - pinned0, NG * PG);
	bool disc[NG] = { 0 };
	check_granules(&f, disc);

	/* Discard granules 1, 2, 3 (one range), 10 and 63 (two more). */
	struct dmb_range r1[] = { { GIOVA + PG, 3 * PG }, { GIOVA + 10 * PG, PG },
				  { GIOVA + 63 * PG, PG } };
	struct dmb_convert_info ci;
	assert_ok(f.c, dmb_discard(f.c, f.ctx, r1, 3, &ci));
	assert_int_equal(ci.granules, 5);
	assert_int_equal(ci.bytes, 5 * PG);
	assert_int_equal(ci.unchanged, 0);
	assert_int_equal(ci.pinned_bytes, (NG - 5) * PG);
	disc[1] = disc[2] = disc[3] = disc[10] = disc[63] = true;
	check_granules(&f, disc);
	/* the backend's own pins dropped, the session's stats too */
	assert_int_equal(backend_pinned() - pinned0, (NG - 5) * PG);
	struct dmb_stats st;
	assert_ok(f.c, dmb_stats(f.c, f.ctx, &st));
	assert_int_equal(st.pinned_bytes, (NG - 5) * PG);
	assert_int_equal(st.mapped_bytes, NG * PG);
	assert_int_equal(st.mappings, 1);
	struct dmb_mapping_info mi = listed(&f, GIOVA);
	assert_int_equal(mi.granule, PG);
	assert_int_equal(mi.discarded, 5);
	assert_int_equal(mi.page_size, PG);
	assert_int_equal(mi.length, NG * PG);

	/* Discarding again: nothing changes, counted apart. */
	struct dmb_range r2[] = { { GIOVA, 4 * PG } };
	assert_ok(f.c, dmb_discard(f.c, f.ctx, r2, 1, &ci));
	assert_int_equal(ci.granules, 1);  /* granule 0 */
	assert_int_equal(ci.unchanged, 3); /* 1..3 */
	disc[0] = true;
	check_granules(&f, disc);

	/* Populate 0..3 and 63: bytes move again, pins come back. */
	struct dmb_range r3[] = { { GIOVA, 4 * PG }, { GIOVA + 63 * PG, PG } };
	assert_ok(f.c, dmb_populate(f.c, f.ctx, r3, 2, &ci));
	assert_int_equal(ci.granules, 5);
	assert_int_equal(ci.unchanged, 0);
	disc[0] = disc[1] = disc[2] = disc[3] = disc[63] = false;
	check_granules(&f, disc);
	assert_int_equal(backend_pinned() - pinned0, (NG - 1) * PG);
	assert_int_equal(listed(&f, GIOVA).discarded, 1);
	/* populating populated granules: a no-op */
	assert_ok(f.c, dmb_populate(f.c, f.ctx, r3, 2, &ci));
	assert_int_equal(ci.granules, 0);
	assert_int_equal(ci.unchanged, 5);

	/* A plain unmap removes the mapping whole, never part of it... */
	uint64_t got = 0;
	assert_code(f.c, dmb_unmap(f.c, f.ctx, GIOVA, PG, &got), DMB_FAILED_PRECONDITION);
	/* ...and with granules discarded it unpins exactly what was pinned. */
	assert_ok(f.c, dmb_unmap(f.c, f.ctx, GIOVA, NG * PG, &got));
	assert_int_equal(got, NG * PG);
	assert_int_equal(backend_pinned(), pinned0);
	check_dma_faults(f.c, f.ctx, f.memfd, 0, GIOVA + 10 * PG, 256);
	/* the IOVA is free again: an ordinary map there works */
	assert_ok(f.c, dmb_map(f.c, f.ctx, &e));
	check_dma(f.c, f.ctx, f.memfd, 10 * PG, GIOVA + 10 * PG, 256, 3);
	fx_close(&f);
}

/* 2 MiB granules: a discard removes a whole 2 MiB area, the page size
 * follows the region (a memfd's 4 KiB pages). A mapping whose granules are
 * all discarded still unmaps cleanly. */
static void test_2m_granules(void **state)
{
	const uint64_t M2 = 2u << 20;
	struct fx f;
	fx_open(&f, 4 * M2);
	uint64_t pinned0 = backend_pinned();
	struct dmb_map_entry e = { f.region, M2, 0x40000000ull, 2 * M2, DMB_READ | DMB_WRITE };
	uint64_t ps = 0;
	assert_ok(f.c, dmb_map_granular(f.c, f.ctx, &e, DMB_GRANULE_2M, &ps));
	assert_int_equal(ps, PG); /* a memfd backs it with 4 KiB pages */
	/* a 4 KiB range inside a 2 MiB granule is not a granule */
	struct dmb_range small = { 0x40000000ull, PG };
	assert_code(f.c, dmb_discard(f.c, f.ctx, &small, 1, NULL), DMB_INVALID_ARGUMENT);
	struct dmb_range all = { 0x40000000ull, 2 * M2 };
	assert_ok(f.c, dmb_discard(f.c, f.ctx, &all, 1, NULL));
	assert_int_equal(backend_pinned(), pinned0);
	check_dma_faults(f.c, f.ctx, f.memfd, M2, 0x40000000ull, 256);
	check_dma_faults(f.c, f.ctx, f.memfd, 2 * M2 + 4096, 0x40200000ull + 4096, 256);
	struct dmb_range second = { 0x40200000ull, M2 };
	assert_ok(f.c, dmb_populate(f.c, f.ctx, &second, 1, NULL));
	check_dma(f.c, f.ctx, f.memfd, 2 * M2 + 8192, 0x40200000ull + 8192, 4096, 5);
	check_dma_faults(f.c, f.ctx, f.memfd, M2, 0x40000000ull, 256);
	assert_ok(f.c, dmb_discard(f.c, f.ctx, &all, 1, NULL));
	uint64_t got = 0;
	assert_ok(f.c, dmb_unmap(f.c, f.ctx, 0x40000000ull, 2 * M2, &got));
	assert_int_equal(backend_pinned(), pinned0);
	fx_close(&f);
}

/* Map with a granule: every wrong argument is refused with a sentence and
 * maps nothing. */
static void test_map_granule_bad_input(void **state)
{
	struct fx f;
	fx_open(&f, 8u << 20);
	uint64_t pinned0 = backend_pinned();
	const uint32_t RW = DMB_READ | DMB_WRITE;
	struct {
		struct dmb_map_entry e;
		uint64_t granule;
		int code;
	} bad[] = {
		{ { f.region, 0, GIOVA, 16 * PG, RW }, 8192, DMB_INVALID_ARGUMENT },      /* not 4K/2M */
		{ { f.region, 0, GIOVA, 16 * PG, RW }, 1, DMB_INVALID_ARGUMENT },
		{ { f.region, 0, GIOVA, 16 * PG, RW }, UINT64_MAX, DMB_INVALID_ARGUMENT },
		{ { f.region, 0, GIOVA + PG, 2u << 20, RW }, 2u << 20, DMB_INVALID_ARGUMENT }, /* iova */
		{ { f.region, PG, GIOVA, 2u << 20, RW }, 2u << 20, DMB_INVALID_ARGUMENT },     /* offset */
		{ { f.region, 0, GIOVA, 3u << 20, RW }, 2u << 20, DMB_INVALID_ARGUMENT },      /* length */
		{ { f.region, 0, GIOVA, 0, RW }, PG, DMB_INVALID_ARGUMENT },                  /* empty */
		{ { f.region, 0, GIOVA, 16u << 20, RW }, PG, DMB_OUT_OF_RANGE },             /* past end */
		{ { f.region + 1, 0, GIOVA, PG, RW }, PG, DMB_NOT_FOUND },                    /* region */
		{ { f.region, 0, UINT64_MAX - PG + 1, 2 * PG, RW }, PG, DMB_INVALID_ARGUMENT }, /* wraps */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = dmb_map_granular(f.c, f.ctx, &bad[i].e, bad[i].granule, NULL);
		if (r == 0 || dmb_last_error(f.c)->code != bad[i].code)
			fail_msg("case %zu: got %d (%s), expected code %d", i, r,
				 dmb_last_error(f.c)->message, bad[i].code);
		assert_true(strlen(dmb_last_error(f.c)->message) > 10);
	}
	/* another client's context: not found */
	struct dmb_client *o = client_connect(&g_daemon, "other");
	struct dmb_map_entry ok = { f.region, 0, GIOVA, 16 * PG, RW };
	assert_code(o, dmb_map_granular(o, f.ctx, &ok, PG, NULL), DMB_NOT_FOUND);
	dmb_close(o);
	struct dmb_stats st;
	assert_ok(f.c, dmb_stats(f.c, f.ctx, &st));
	assert_int_equal(st.mappings, 0);
	assert_int_equal(backend_pinned(), pinned0);
	/* nothing was left reserved: the same IOVA maps now */
	assert_ok(f.c, dmb_map_granular(f.c, f.ctx, &ok, PG, NULL));
	check_dma(f.c, f.ctx, f.memfd, 4 * PG, GIOVA + 4 * PG, 256, 2);
	assert_ok(f.c, dmb_unmap_all(f.c, f.ctx, NULL));
	assert_int_equal(backend_pinned(), pinned0);
	fx_close(&f);
}

/* Discard and populate refuse bad input with the right code, change
 * nothing (the kernel included: bytes still move where they did), and
 * name the failing range. */
static void test_convert_bad_input(void **state)
{
	struct fx f;
	fx_open(&f, 2 * NG * PG);
	struct dmb_map_entry e = { f.region, 0, GIOVA, NG * PG, DMB_READ | DMB_WRITE };
	assert_ok(f.c, dmb_map_granular(f.c, f.ctx, &e, DMB_GRANULE_4K, NULL));
	struct dmb_map_entry o = { f.region, NG * PG, OIOVA, 4 * PG, DMB_READ | DMB_WRITE };
	assert_ok(f.c, dmb_map(f.c, f.ctx, &o));
	struct dmb_range d5 = { GIOVA + 5 * PG, PG };
	assert_ok(f.c, dmb_discard(f.c, f.ctx, &d5, 1, NULL));
	bool disc[NG] = { 0 };
	disc[5] = true;
	uint64_t pinned = backend_pinned();

	const struct dmb_range good = { GIOVA + 20 * PG, 2 * PG };
	struct {
		struct dmb_range r;
		int code;
	} bad[] = {
		{ { GIOVA + 100, PG }, DMB_INVALID_ARGUMENT },             /* unaligned start */
		{ { GIOVA, PG + 1 }, DMB_INVALID_ARGUMENT },               /* unaligned length */
		{ { GIOVA, 0 }, DMB_INVALID_ARGUMENT },                    /* empty */
		{ { UINT64_MAX - PG + 1, 2 * PG }, DMB_INVALID_ARGUMENT }, /* wraps */
		{ { GIOVA + NG * PG, PG }, DMB_NOT_FOUND },                /* past its end */
		{ { GIOVA + (NG - 1) * PG, 2 * PG }, DMB_NOT_FOUND },      /* straddles its end */
		{ { GIOVA - PG, 2 * PG }, DMB_NOT_FOUND },                 /* straddles its start */
		{ { OIOVA, PG }, DMB_NOT_FOUND },                          /* an ordinary mapping */
		{ { 0x7000000000ull, PG }, DMB_NOT_FOUND },                /* nothing there */
	};
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			/* alone, and after a valid range: the valid one is not applied */
			struct dmb_range two[2] = { good, bad[i].r };
			int r = pass ? dmb_populate(f.c, f.ctx, two, 2, NULL)
				     : dmb_discard(f.c, f.ctx, two, 2, NULL);
			if (r == 0 || dmb_last_error(f.c)->code != bad[i].code)
				fail_msg("%s case %zu: got %d (%s), expected code %d",
					 pass ? "populate" : "discard", i, r,
					 dmb_last_error(f.c)->message, bad[i].code);
			assert_int_equal(dmb_last_error(f.c)->index, 1);
			r = pass ? dmb_populate(f.c, f.ctx, &bad[i].r, 1, NULL)
				 : dmb_discard(f.c, f.ctx, &bad[i].r, 1, NULL);
			assert_int_equal(dmb_last_error(f.c)->code, bad[i].code);
		}
	}
	/* overlapping ranges */
	struct dmb_range ov[2] = { { GIOVA, 4 * PG }, { GIOVA + 3 * PG, PG } };
	assert_code(f.c, dmb_discard(f.c, f.ctx, ov, 2, NULL), DMB_INVALID_ARGUMENT);
	/* no ranges; more than max_batch */
	assert_code(f.c, dmb_discard(f.c, f.ctx, ov, 0, NULL), DMB_INVALID_ARGUMENT);
	size_t nbig = dmb_server_info(f.c)->max_batch + 1;
	struct dmb_range *big = calloc(nbig, sizeof(*big));
	for (size_t i = 0; i < nbig; i++)
		big[i] = (struct dmb_range){ GIOVA + (i % NG) * PG, PG };
	assert_code(f.c, dmb_discard(f.c, f.ctx, big, nbig, NULL), DMB_INVALID_ARGUMENT);
	assert_int_equal(dmb_last_error(f.c)->sys_errno, E2BIG);
	assert_code(f.c, dmb_populate(f.c, f.ctx, big, nbig, NULL), DMB_INVALID_ARGUMENT);
	free(big);
	/* another client's context, and a context that does not exist */
	struct dmb_client *other = client_connect(&g_daemon, "other");
	assert_code(other, dmb_discard(other, f.ctx, &good, 1, NULL), DMB_NOT_FOUND);
	assert_code(other, dmb_populate(other, f.ctx, &d5, 1, NULL), DMB_NOT_FOUND);
	assert_code(f.c, dmb_discard(f.c, f.ctx + 1, &good, 1, NULL), DMB_NOT_FOUND);
	dmb_close(other);

	/* Nothing changed anywhere: the model, the backend's pins, the bytes. */
	assert_int_equal(backend_pinned(), pinned);
	assert_int_equal(listed(&f, GIOVA).discarded, 1);
	check_granules(&f, disc);
	check_dma(f.c, f.ctx, f.memfd, NG * PG, OIOVA, 256, 9);
	fx_close(&f);
}

/* Malformed packets: a Discard whose ranges field is garbage, and one whose
 * body is cut short. The daemon answers (or drops the packet) and keeps
 * serving; nothing changes. */
static void test_convert_malformed(void **state)
{
	struct fx f;
	fx_open(&f, NG * PG);
	struct dmb_map_entry e = { f.region, 0, GIOVA, NG * PG, DMB_READ | DMB_WRITE };
	assert_ok(f.c, dmb_map_granular(f.c, f.ctx, &e, DMB_GRANULE_4K, NULL));
	uint64_t pinned = backend_pinned();
	/* Request { id 5, discard (51, LEN) { context_id, ranges: 0xff 0xff ... } } */
	uint8_t pkt[64];
	size_t n = 0;
	pkt[n++] = 0x08; /* id */
	pkt[n++] = 5;
	pkt[n++] = 0x9a; /* field 51, wire type 2 */
	pkt[n++] = 0x03;
	pkt[n++] = 6;    /* body length */
	pkt[n++] = 0x08; /* context_id: a one-byte value, wrong on purpose */
	pkt[n++] = 1;
	pkt[n++] = 0x12; /* ranges: claims 9 bytes, has 2 */
	pkt[n++] = 9;
	pkt[n++] = 0xff;
	pkt[n++] = 0xff;
	assert_int_equal(send(dmb_socket(f.c), pkt, n, 0), (ssize_t)n);
	Dmb__Reply *rep = raw_reply(f.c, false);
	assert_non_null(rep->error);
	assert_int_equal(rep->error->code, DMB__ERROR_CODE__INVALID_ARGUMENT);
	dmb__reply__free_unpacked(rep, NULL);
	/* cut short: the body's length points past the packet */
	pkt[4] = 40;
	assert_int_equal(send(dmb_socket(f.c), pkt, n, 0), (ssize_t)n);
	rep = raw_reply(f.c, false);
	assert_non_null(rep->error);
	assert_int_equal(rep->error->code, DMB__ERROR_CODE__INVALID_ARGUMENT);
	dmb__reply__free_unpacked(rep, NULL);
	/* still serving; nothing changed */
	assert_int_equal(backend_pinned(), pinned);
	bool disc[NG] = { 0 };
	check_granules(&f, disc);
	fx_close(&f);
}

/* A Discard or Populate carrying fds (they take none): refused, the fds are
 * closed by the daemon (its fd count comes back), nothing changes. */
static void test_convert_with_fds(void **state)
{
	struct fx f;
	fx_open(&f, NG * PG);
	struct dmb_map_entry e = { f.region, 0, GIOVA, NG * PG, DMB_READ | DMB_WRITE };
	assert_ok(f.c, dmb_map_granular(f.c, f.ctx, &e, DMB_GRANULE_4K, NULL));
	int before = daemon_fd_count(&g_daemon);
	for (int k = 0; k < 2; k++) {
		Dmb__Range rg = DMB__RANGE__INIT, *rp = &rg;
		rg.iova = GIOVA;
		rg.length = 4 * PG;
		Dmb__Convert cv = DMB__CONVERT__INIT;
		cv.context_id = f.ctx;
		cv.n_ranges = 1;
		cv.ranges = &rp;
		Dmb__Request req = DMB__REQUEST__INIT;
		req.id = 77;
		if (k) {
			req.body_case = DMB__REQUEST__BODY_POPULATE;
			req.populate = &cv;
		} else {
			req.body_case = DMB__REQUEST__BODY_DISCARD;
			req.discard = &cv;
		}
		uint8_t buf[128];
		size_t n = dmb__request__pack(&req, buf);
		int fds[2] = { dup(f.memfd), open("/dev/null", O_RDONLY | O_CLOEXEC) };
		char cbuf[CMSG_SPACE(sizeof(fds))];
		memset(cbuf, 0, sizeof(cbuf));
		struct iovec iov = { buf, n };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(fds));
		memcpy(CMSG_DATA(cm), fds, sizeof(fds));
		assert_int_equal(sendmsg(dmb_socket(f.c), &mh, 0), (ssize_t)n);
		close(fds[0]);
		close(fds[1]);
		Dmb__Reply *rep = raw_reply(f.c, false);
		assert_int_equal(rep->id, 77);
		assert_non_null(rep->error);
		assert_int_equal(rep->error->code, DMB__ERROR_CODE__INVALID_ARGUMENT);
		dmb__reply__free_unpacked(rep, NULL);
	}
	assert_int_equal(daemon_fd_count(&g_daemon), before);
	assert_int_equal(listed(&f, GIOVA).discarded, 0);
	bool disc[NG] = { 0 };
	check_granules(&f, disc);
	fx_close(&f);
}

/* A client that sends a large discard and a large populate and dies
 * without reading the replies: its context goes with it and no pin stays. */
static void test_client_dies_mid_request(void **state)
{
	for (int round = 0; round < 4; round++) {
		struct fx f;
		fx_open(&f, 1024 * PG);
		struct dmb_map_entry e = { f.region, 0, GIOVA, 1024 * PG, DMB_READ | DMB_WRITE };
		assert_ok(f.c, dmb_map_granular(f.c, f.ctx, &e, DMB_GRANULE_4K, NULL));
		Dmb__Range rr[512], *rp[512];
		for (unsigned i = 0; i < 512; i++) {
			dmb__range__init(&rr[i]);
			rr[i].iova = GIOVA + 2 * i * PG;
			rr[i].length = PG;
			rp[i] = &rr[i];
		}
		Dmb__Convert cv = DMB__CONVERT__INIT;
		cv.context_id = f.ctx;
		cv.n_ranges = 512;
		cv.ranges = rp;
		for (int k = 0; k < 2; k++) {
			Dmb__Request req = DMB__REQUEST__INIT;
			req.id = 100 + (uint64_t)k;
			if ((round + k) % 2) {
				req.body_case = DMB__REQUEST__BODY_POPULATE;
				req.populate = &cv;
			} else {
				req.body_case = DMB__REQUEST__BODY_DISCARD;
				req.discard = &cv;
			}
			size_t len = dmb__request__get_packed_size(&req);
			uint8_t *buf = malloc(len);
			dmb__request__pack(&req, buf);
			assert_int_equal(send(dmb_socket(f.c), buf, len, 0), (ssize_t)len);
			free(buf);
		}
		if (round % 2)
			shutdown(dmb_socket(f.c), SHUT_RDWR);
		fx_close(&f); /* waits for no contexts and zero pins */
	}
	assert_int_equal(backend_pinned(), 0);
}

/* Populate pins again: it is held to the uid's pinned_bytes limit and to
 * mappings_per_context (a granular mapping counts one per granule). */
static void test_limits(void **state)
{
	struct daemon d;
	daemon_start(&d, "[limits]\npinned_bytes = 256K\nmappings_per_context = 80\n");
	struct dmb_client *c = client_connect(&d, "lim");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "l", &ctx));
	int m = make_memfd(1u << 20, 3);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, m, 0, &ri));
	/* 64 granules = 256 KiB: the whole pin budget */
	struct dmb_map_entry e = { ri.region, 0, GIOVA, NG * PG, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map_granular(c, ctx, &e, DMB_GRANULE_4K, NULL));
	/* 64 areas + 17 > 80 */
	struct dmb_map_entry e2 = { ri.region, 0, OIOVA, 17 * PG, DMB_READ | DMB_WRITE };
	assert_code(c, dmb_map_granular(c, ctx, &e2, DMB_GRANULE_4K, NULL), DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(c)->message, "mappings_per_context"));
	/* discard 8 granules: 32 KiB of room; a 16 KiB ordinary map fits */
	struct dmb_range r = { GIOVA, 8 * PG };
	assert_ok(c, dmb_discard(c, ctx, &r, 1, NULL));
	struct dmb_map_entry e3 = { ri.region, 0, OIOVA, 4 * PG, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &e3));
	/* populating all 8 again would exceed the budget: refused, nothing changes */
	assert_code(c, dmb_populate(c, ctx, &r, 1, NULL), DMB_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(dmb_last_error(c)->message, "pinned_bytes"));
	check_dma_faults(c, ctx, m, 0, GIOVA, 256);
	/* four of them fit */
	struct dmb_range half = { GIOVA, 4 * PG };
	assert_ok(c, dmb_populate(c, ctx, &half, 1, NULL));
	check_dma(c, ctx, m, 0, GIOVA, 256, 1);
	assert_int_equal(daemon_totals(&d).pinned_bytes, 256 * 1024);
	dmb_close(c);
	close(m);
	assert_true(daemon_wait_idle(&d));
	daemon_stop(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_discard_populate_moves_bytes),
		cmocka_unit_test(test_2m_granules),
		cmocka_unit_test(test_map_granule_bad_input),
		cmocka_unit_test(test_convert_bad_input),
		cmocka_unit_test(test_convert_malformed),
		cmocka_unit_test(test_convert_with_fds),
		cmocka_unit_test(test_client_dies_mid_request),
		cmocka_unit_test(test_limits),
	};
	return cmocka_run_group_tests_name("granular", tests, group_start_daemon, group_stop_daemon);
}
