/* Unit tests of the small-map fast codec (proto/fastcodec.c) against
 * protobuf-c, which stays the reference: random Map/Unmap requests and their
 * replies (every varint width, 0 and the maxima, missing sub-messages) must
 * encode to protobuf-c's exact bytes and decode to protobuf-c's exact
 * message; every other shape must be declined, and random damage to valid
 * packets must either be declined or decode exactly as protobuf-c does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fc_check.h"

#define SEED 0x9c5eed0fa57c0dec

static uint64_t rng = SEED;

static uint64_t rnd(void)
{
	/* xorshift64*: reproducible from SEED */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

static const uint64_t edges[] = {
	0, 1, 0x7f, 0x80, 0x3fff, 0x4000, 0x1fffff, 0x200000, 0xffffffffu, 0x100000000ull,
	(1ull << 56) - 1, 1ull << 56, (1ull << 63) - 1, 1ull << 63, UINT64_MAX,
};

/* Every varint width about equally often, and the edges. */
static uint64_t val64(void)
{
	if (rnd() % 6 == 0)
		return edges[rnd() % (sizeof(edges) / sizeof(edges[0]))];
	unsigned bits = (unsigned)(rnd() % 65);
	return bits == 64 ? rnd() : rnd() & ((1ull << bits) - 1);
}

static uint32_t val32(void)
{
	if (rnd() % 6 == 0) {
		static const uint32_t e32[] = { 0, 1, 0x7f, 0x80, 0xfffffff, 0x10000000, UINT32_MAX };
		return e32[rnd() % (sizeof(e32) / sizeof(e32[0]))];
	}
	unsigned bits = (unsigned)(rnd() % 33);
	return bits == 32 ? (uint32_t)rnd() : (uint32_t)(rnd() & ((1ull << bits) - 1));
}

/* One random small-map message: its storage, and the struct protobuf-c packs. */
struct msg {
	Dmb__Request req;
	Dmb__Map map;
	Dmb__MapEntry entry;
	Dmb__Unmap unmap;
	Dmb__Range range;
	Dmb__ServerMessage sm;
	Dmb__Reply reply;
	Dmb__MapReply mr;
	Dmb__UnmapReply ur;
	uint64_t page_size;
};

static void random_request(struct msg *m)
{
	m->req = (Dmb__Request)DMB__REQUEST__INIT;
	m->req.id = val64();
	if (rnd() & 1) {
		m->map = (Dmb__Map)DMB__MAP__INIT;
		m->map.context_id = val64();
		m->entry = (Dmb__MapEntry)DMB__MAP_ENTRY__INIT;
		m->entry.region_id = val64();
		m->entry.offset = val64();
		m->entry.iova = val64();
		m->entry.length = val64();
		m->entry.prot = val32();
		m->entry.granule = rnd() % 3 ? 0 : val64();
		m->map.entry = rnd() % 8 ? &m->entry : NULL;
		m->req.body_case = DMB__REQUEST__BODY_MAP;
		m->req.map = &m->map;
	} else {
		m->unmap = (Dmb__Unmap)DMB__UNMAP__INIT;
		m->unmap.context_id = val64();
		m->range = (Dmb__Range)DMB__RANGE__INIT;
		m->range.iova = val64();
		m->range.length = val64();
		m->unmap.range = rnd() % 8 ? &m->range : NULL;
		m->req.body_case = DMB__REQUEST__BODY_UNMAP;
		m->req.unmap = &m->unmap;
	}
}

static void random_reply(struct msg *m)
{
	m->sm = (Dmb__ServerMessage)DMB__SERVER_MESSAGE__INIT;
	m->reply = (Dmb__Reply)DMB__REPLY__INIT;
	m->reply.id = val64();
	if (rnd() & 1) {
		m->mr = (Dmb__MapReply)DMB__MAP_REPLY__INIT;
		m->mr.mapped = val32();
		if (rnd() % 3) { /* a single map's page size (0 too: packed, it is sent) */
			m->page_size = val64();
			m->mr.n_page_sizes = 1;
			m->mr.page_sizes = &m->page_size;
		}
		m->reply.body_case = DMB__REPLY__BODY_MAP;
		m->reply.map = &m->mr;
	} else {
		m->ur = (Dmb__UnmapReply)DMB__UNMAP_REPLY__INIT;
		m->ur.unmapped_bytes = val64();
		m->ur.unmapped_count = val32();
		m->reply.body_case = DMB__REPLY__BODY_UNMAP;
		m->reply.unmap = &m->ur;
	}
	m->sm.kind_case = DMB__SERVER_MESSAGE__KIND_REPLY;
	m->sm.reply = &m->reply;
}

#define ROUNDS 200000

/* Every valid small request: encoded by the fast codec, byte for byte as
 * protobuf-c does, and decoded back by it to exactly protobuf-c's message. */
static void test_request_roundtrip(void **state)
{
	struct msg m;
	size_t longest = 0;
	for (int i = 0; i < ROUNDS; i++) {
		random_request(&m);
		bool fast;
		const char *bad = fcc_check_request_pack(&m.req, &fast);
		if (bad)
			fail_msg("round %d: %s", i, bad);
		assert_true(fast);
		uint8_t buf[FC_MAX_PACKET];
		size_t n = fc_request_pack(&m.req, buf, sizeof(buf));
		longest = n > longest ? n : longest;
		bad = fcc_check_request_unpack(buf, n, &fast);
		if (bad)
			fail_msg("round %d: %s", i, bad);
		assert_true(fast); /* what protobuf-c writes is canonical */
		/* and the decoded message is the one sent */
		struct fc_request fr;
		assert_true(fc_request_unpack(buf, n, &fr));
		assert_true(fcc_request_same(&fr.req, &m.req));
	}
	assert_true(longest <= FC_MAX_PACKET);
	print_message("longest request: %zu bytes\n", longest);
}

static void test_reply_roundtrip(void **state)
{
	struct msg m;
	for (int i = 0; i < ROUNDS; i++) {
		random_reply(&m);
		bool fast;
		const char *bad = fcc_check_server_message_pack(&m.sm, &fast);
		if (bad)
			fail_msg("round %d: %s", i, bad);
		assert_true(fast);
		uint8_t buf[FC_MAX_PACKET];
		size_t n = fc_server_message_pack(&m.sm, buf, sizeof(buf));
		bad = fcc_check_reply_unpack(buf, n, &fast);
		if (bad)
			fail_msg("round %d: %s", i, bad);
		assert_true(fast);
		struct fc_reply fr;
		assert_true(fc_reply_unpack(buf, n, &fr));
		assert_true(fcc_reply_same(&fr.reply, &m.reply));
	}
}

/* All fields zero, all fields at their maximum: the two ends of every varint. */
static void test_extremes(void **state)
{
	for (int k = 0; k < 2; k++) {
		uint64_t v = k ? UINT64_MAX : 0;
		uint32_t w = k ? UINT32_MAX : 0;
		Dmb__MapEntry e = DMB__MAP_ENTRY__INIT;
		e.region_id = e.offset = e.iova = e.length = v;
		e.prot = w;
		e.granule = v;
		Dmb__Map map = DMB__MAP__INIT;
		map.context_id = v;
		map.entry = &e;
		Dmb__Request q = DMB__REQUEST__INIT;
		q.id = v;
		q.body_case = DMB__REQUEST__BODY_MAP;
		q.map = &map;
		bool fast;
		assert_null(fcc_check_request_pack(&q, &fast));
		assert_true(fast);
		uint8_t buf[FC_MAX_PACKET];
		size_t n = fc_request_pack(&q, buf, sizeof(buf));
		assert_int_equal(n, k ? 88 : 5); /* 82 01 03 12 00 when all is zero */
		assert_null(fcc_check_request_unpack(buf, n, &fast));
		assert_true(fast);

		Dmb__UnmapReply ur = DMB__UNMAP_REPLY__INIT;
		ur.unmapped_bytes = v;
		ur.unmapped_count = w;
		Dmb__Reply r = DMB__REPLY__INIT;
		r.id = v;
		r.body_case = DMB__REPLY__BODY_UNMAP;
		r.unmap = &ur;
		Dmb__ServerMessage sm = DMB__SERVER_MESSAGE__INIT;
		sm.kind_case = DMB__SERVER_MESSAGE__KIND_REPLY;
		sm.reply = &r;
		assert_null(fcc_check_server_message_pack(&sm, &fast));
		assert_true(fast);
		n = fc_server_message_pack(&sm, buf, sizeof(buf));
		assert_int_equal(n, k ? 33 : 5); /* 0a 03 92 01 00 */
		assert_null(fcc_check_reply_unpack(buf, n, &fast));
		assert_true(fast);

		/* a map reply with the page size of its mapping */
		uint64_t ps = v;
		Dmb__MapReply mr = DMB__MAP_REPLY__INIT;
		mr.mapped = w;
		mr.n_page_sizes = 1;
		mr.page_sizes = &ps;
		r.body_case = DMB__REPLY__BODY_MAP;
		r.map = &mr;
		assert_null(fcc_check_server_message_pack(&sm, &fast));
		assert_true(fast);
		n = fc_server_message_pack(&sm, buf, sizeof(buf));
		assert_int_equal(n, k ? 34 : 8); /* 0a 06 82 01 03 12 01 00 */
		assert_null(fcc_check_reply_unpack(buf, n, &fast));
		assert_true(fast);
	}
}

/* Messages of any other shape are left to protobuf-c. */
static void test_encode_declines(void **state)
{
	uint8_t buf[256];
	Dmb__Map map = DMB__MAP__INIT;
	Dmb__Request q = DMB__REQUEST__INIT;
	q.id = 7;
	assert_int_equal(fc_request_pack(&q, buf, sizeof(buf)), 0); /* no body */
	q.body_case = DMB__REQUEST__BODY_MAP;
	assert_int_equal(fc_request_pack(&q, buf, sizeof(buf)), 0); /* body case, NULL body */
	q.map = &map;
	assert_int_not_equal(fc_request_pack(&q, buf, sizeof(buf)), 0);
	assert_int_equal(fc_request_pack(&q, buf, FC_MAX_PACKET - 1), 0); /* small buffer */

	uint8_t junk[] = { 0x01 };
	ProtobufCMessageUnknownField uf = { .tag = 99, .wire_type = PROTOBUF_C_WIRE_TYPE_VARINT,
					    .len = 1, .data = junk };
	map.base.n_unknown_fields = 1; /* kept from a decode: protobuf-c re-emits them */
	map.base.unknown_fields = &uf;
	assert_int_equal(fc_request_pack(&q, buf, sizeof(buf)), 0);
	map.base.n_unknown_fields = 0;
	map.base.unknown_fields = NULL;
	q.base.n_unknown_fields = 1;
	q.base.unknown_fields = &uf;
	assert_int_equal(fc_request_pack(&q, buf, sizeof(buf)), 0);
	q.base.n_unknown_fields = 0;
	q.base.unknown_fields = NULL;

	Dmb__MapBatch mb = DMB__MAP_BATCH__INIT;
	q.body_case = DMB__REQUEST__BODY_MAP_BATCH;
	q.map_batch = &mb;
	assert_int_equal(fc_request_pack(&q, buf, sizeof(buf)), 0);

	Dmb__Range rg = DMB__RANGE__INIT;
	q.body_case = DMB__REQUEST__BODY_UNMAP;
	q.unmap = (Dmb__Unmap *)&rg; /* a foreign message in the slot */
	assert_int_equal(fc_request_pack(&q, buf, sizeof(buf)), 0);

	Dmb__MapReply mr = DMB__MAP_REPLY__INIT;
	Dmb__Reply r = DMB__REPLY__INIT;
	r.id = 3;
	r.body_case = DMB__REPLY__BODY_MAP;
	r.map = &mr;
	Dmb__ServerMessage sm = DMB__SERVER_MESSAGE__INIT;
	assert_int_equal(fc_server_message_pack(&sm, buf, sizeof(buf)), 0); /* nothing */
	sm.kind_case = DMB__SERVER_MESSAGE__KIND_REPLY;
	sm.reply = &r;
	assert_int_not_equal(fc_server_message_pack(&sm, buf, sizeof(buf)), 0);
	/* a MapPeer's reply carries the P2P attributes: protobuf-c's, not dropped */
	mr.attr = DMB__MEM_ATTR__MEM_ATTR_MMIO;
	assert_int_equal(fc_server_message_pack(&sm, buf, sizeof(buf)), 0);
	mr.attr = DMB__MEM_ATTR__MEM_ATTR_UNSPECIFIED;
	Dmb__Error err = DMB__ERROR__INIT;
	err.code = DMB__ERROR_CODE__NOT_FOUND;
	err.message = (char *)"context 9 not found";
	r.error = &err;
	assert_int_equal(fc_server_message_pack(&sm, buf, sizeof(buf)), 0); /* an error */
	r.error = NULL;
	r.body_case = DMB__REPLY__BODY__NOT_SET;
	assert_int_equal(fc_server_message_pack(&sm, buf, sizeof(buf)), 0);
	Dmb__StatsReply st = DMB__STATS_REPLY__INIT;
	r.body_case = DMB__REPLY__BODY_STATS;
	r.stats = &st;
	assert_int_equal(fc_server_message_pack(&sm, buf, sizeof(buf)), 0);
	Dmb__Event ev = DMB__EVENT__INIT;
	sm.kind_case = DMB__SERVER_MESSAGE__KIND_EVENT;
	sm.event = &ev;
	assert_int_equal(fc_server_message_pack(&sm, buf, sizeof(buf)), 0);
}

struct pkt {
	const char *what;
	size_t len;
	uint8_t b[24];
};

#define P(w, ...) { w, sizeof((uint8_t[]){ __VA_ARGS__ }), { __VA_ARGS__ } }

/* Packets protobuf-c reads, but not in the canonical form: declined (and
 * where protobuf-c reads them, it may read them differently). */
static const struct pkt req_declined[] = {
	P("empty", 0),
	P("no body", 0x08, 0x05),
	P("non-minimal id", 0x08, 0x85, 0x00, 0x82, 0x01, 0x02, 0x08, 0x01),
	P("eleven-byte id", 0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
	  0x82, 0x01, 0x00),
	P("id over 64 bits", 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0x82,
	  0x01, 0x00),
	P("id after the body", 0x82, 0x01, 0x00, 0x08, 0x05),
	P("id twice", 0x08, 0x05, 0x08, 0x06, 0x82, 0x01, 0x00),
	P("entry twice (merged by protobuf-c)", 0x82, 0x01, 0x08, 0x12, 0x02, 0x08, 0x01, 0x12, 0x02,
	  0x10, 0x02),
	P("body twice", 0x08, 0x05, 0x82, 0x01, 0x02, 0x08, 0x01, 0x82, 0x01, 0x00),
	P("map then unmap", 0x82, 0x01, 0x00, 0x92, 0x01, 0x00),
	P("unknown field after the body", 0x82, 0x01, 0x00, 0xf8, 0x07, 0x01),
	P("unknown field in Map", 0x82, 0x01, 0x04, 0x08, 0x01, 0x18, 0x01),
	P("entry before context", 0x82, 0x01, 0x04, 0x12, 0x00, 0x08, 0x01),
	P("prot over 32 bits", 0x82, 0x01, 0x08, 0x12, 0x06, 0x28, 0x80, 0x80, 0x80, 0x80, 0x10),
	P("prot non-minimal", 0x82, 0x01, 0x05, 0x12, 0x03, 0x28, 0x81, 0x00),
	P("fields of MapEntry out of order", 0x82, 0x01, 0x06, 0x12, 0x04, 0x18, 0x01, 0x10, 0x01),
	P("two-byte length", 0x82, 0x01, 0x82, 0x00, 0x08, 0x01),
	P("length past the end", 0x82, 0x01, 0x05, 0x08, 0x01),
	P("trailing byte", 0x82, 0x01, 0x00, 0x00),
	P("field 16 as a varint", 0x80, 0x01, 0x01),
	P("non-minimal tag", 0x82, 0x81, 0x00, 0x00),
	P("MapBatch", 0x8a, 0x01, 0x02, 0x08, 0x01),
	P("range with a third field", 0x92, 0x01, 0x06, 0x12, 0x04, 0x08, 0x01, 0x18, 0x01),
};

static const struct pkt reply_declined[] = {
	P("empty", 0),
	P("an event", 0x12, 0x02, 0x08, 0x01),
	P("a reply with an error", 0x0a, 0x06, 0x08, 0x01, 0x12, 0x02, 0x08, 0x03),
	P("error and body", 0x0a, 0x09, 0x08, 0x01, 0x12, 0x02, 0x08, 0x03, 0x82, 0x01, 0x00),
	P("a reply without body", 0x0a, 0x02, 0x08, 0x01),
	P("mapped over 32 bits", 0x0a, 0x0b, 0x08, 0x01, 0x82, 0x01, 0x06, 0x08, 0x80, 0x80, 0x80,
	  0x80, 0x10),
	P("count before bytes", 0x0a, 0x07, 0x92, 0x01, 0x04, 0x10, 0x01, 0x08, 0x01),
	P("unknown field in the reply", 0x0a, 0x05, 0x82, 0x01, 0x00, 0x18, 0x01),
	P("unknown field in ServerMessage", 0x0a, 0x03, 0x82, 0x01, 0x00, 0x18, 0x01),
	P("reply twice", 0x0a, 0x03, 0x82, 0x01, 0x00, 0x0a, 0x03, 0x82, 0x01, 0x00),
	P("stats reply", 0x0a, 0x03, 0xaa, 0x01, 0x00),
	P("two page sizes", 0x0a, 0x07, 0x82, 0x01, 0x04, 0x12, 0x02, 0x01, 0x02),
	P("page sizes, none packed", 0x0a, 0x05, 0x82, 0x01, 0x02, 0x12, 0x00),
	P("page size unpacked", 0x0a, 0x05, 0x82, 0x01, 0x02, 0x10, 0x01),
};

static void test_decode_declines(void **state)
{
	for (size_t i = 0; i < sizeof(req_declined) / sizeof(req_declined[0]); i++) {
		struct fc_request fr;
		if (fc_request_unpack(req_declined[i].b, req_declined[i].len, &fr))
			fail_msg("request '%s' was taken", req_declined[i].what);
	}
	for (size_t i = 0; i < sizeof(reply_declined) / sizeof(reply_declined[0]); i++) {
		struct fc_reply fr;
		if (fc_reply_unpack(reply_declined[i].b, reply_declined[i].len, &fr))
			fail_msg("reply '%s' was taken", reply_declined[i].what);
	}
	/* Two of them show why: in protobuf-c a later id wins, and a later
	 * sub-message decides what the field holds (merged with the earlier
	 * one by the protobuf rules, which protobuf-c versions differ on):
	 * a one-pass reader would keep the first. */
	Dmb__Request *q = dmb__request__unpack(NULL, req_declined[6].len, req_declined[6].b);
	assert_non_null(q);
	assert_int_equal(q->id, 6);
	dmb__request__free_unpacked(q, NULL);
	q = dmb__request__unpack(NULL, req_declined[7].len, req_declined[7].b);
	assert_non_null(q);
	assert_int_equal(q->body_case, DMB__REQUEST__BODY_MAP);
	assert_non_null(q->map->entry);
	assert_int_equal(q->map->entry->offset, 2);
	dmb__request__free_unpacked(q, NULL);
}

/* Random damage to valid packets: declined, or read exactly as protobuf-c. */
static void mutate(uint8_t *b, size_t *n, size_t cap)
{
	size_t len = *n;
	switch (rnd() % 5) {
	case 0: /* flip a bit */
		if (len)
			b[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
		break;
	case 1: /* set a byte */
		if (len)
			b[rnd() % len] = (uint8_t)rnd();
		break;
	case 2: /* delete a byte */
		if (len) {
			size_t at = rnd() % len;
			memmove(b + at, b + at + 1, len - at - 1);
			*n = len - 1;
		}
		break;
	case 3: /* insert a byte */
		if (len < cap) {
			size_t at = rnd() % (len + 1);
			memmove(b + at + 1, b + at, len - at);
			b[at] = (uint8_t)rnd();
			*n = len + 1;
		}
		break;
	default: /* truncate */
		*n = len ? rnd() % len : 0;
		break;
	}
}

static void test_damaged_packets(void **state)
{
	struct msg m;
	unsigned took[2] = { 0 }, declined[2] = { 0 };
	for (int i = 0; i < ROUNDS; i++) {
		uint8_t buf[FC_MAX_PACKET + 8];
		size_t n;
		bool req = i & 1, fast;
		if (req) {
			random_request(&m);
			n = fc_request_pack(&m.req, buf, sizeof(buf));
		} else {
			random_reply(&m);
			n = fc_server_message_pack(&m.sm, buf, sizeof(buf));
		}
		for (unsigned k = 1 + (unsigned)(rnd() % 3); k; k--)
			mutate(buf, &n, sizeof(buf));
		const char *bad = req ? fcc_check_request_unpack(buf, n, &fast)
				      : fcc_check_reply_unpack(buf, n, &fast);
		if (bad)
			fail_msg("round %d: %s", i, bad);
		(fast ? took : declined)[req]++;
	}
	print_message("damaged requests: %u read, %u declined; replies: %u read, %u declined\n",
		      took[1], declined[1], took[0], declined[0]);
	/* both outcomes happened, so both were compared */
	assert_true(took[0] > 1000 && took[1] > 1000 && declined[0] > 1000 && declined[1] > 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_roundtrip),
		cmocka_unit_test(test_reply_roundtrip),
		cmocka_unit_test(test_extremes),
		cmocka_unit_test(test_encode_declines),
		cmocka_unit_test(test_decode_declines),
		cmocka_unit_test(test_damaged_packets),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
