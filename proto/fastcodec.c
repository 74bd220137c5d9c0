/* fastcodec: see fastcodec.h for the packets and the contract. */
#include "fastcodec.h"

#include "dmabroker-fields.h"

/* Tags (field number << 3 | wire type) as they appear on the wire. */
enum {
	T1_VARINT = 0x08,
	T2_VARINT = 0x10,
	T3_VARINT = 0x18,
	T4_VARINT = 0x20,
	T5_VARINT = 0x28,
	T6_VARINT = 0x30,
	T1_LEN = 0x0a,
	T2_LEN = 0x12,
	T16_LEN_0 = 0x82, /* field 16, length-delimited: two bytes */
	T18_LEN_0 = 0x92, /* field 18 */
	T_HI_1 = 0x01,    /* second byte of both */
};

/* Every tag above against the .proto's field number of each field it is
 * written for (dmabroker-fields.h, generated from the .proto at build time)
 * and, for the bodies, against protobuf-c's generated oneof cases: a field
 * renumbered in the .proto stops the build here instead of changing bytes. */
#define WT_VARINT 0
#define WT_LEN 2
#define CHECK_TAG(tag, field, wt)                                                  \
	_Static_assert((tag) == ((DMB_FIELD_##field) << 3 | (wt)),                 \
		       "fast codec: " #tag " is not the tag of " #field)
CHECK_TAG(T1_VARINT, Request_id, WT_VARINT);
CHECK_TAG(T1_VARINT, Map_context_id, WT_VARINT);
CHECK_TAG(T2_LEN, Map_entry, WT_LEN);
CHECK_TAG(T1_VARINT, MapEntry_region_id, WT_VARINT);
CHECK_TAG(T2_VARINT, MapEntry_offset, WT_VARINT);
CHECK_TAG(T3_VARINT, MapEntry_iova, WT_VARINT);
CHECK_TAG(T4_VARINT, MapEntry_length, WT_VARINT);
CHECK_TAG(T5_VARINT, MapEntry_prot, WT_VARINT);
CHECK_TAG(T6_VARINT, MapEntry_granule, WT_VARINT);
CHECK_TAG(T1_VARINT, Unmap_context_id, WT_VARINT);
CHECK_TAG(T2_LEN, Unmap_range, WT_LEN);
CHECK_TAG(T1_VARINT, Range_iova, WT_VARINT);
CHECK_TAG(T2_VARINT, Range_length, WT_VARINT);
CHECK_TAG(T1_LEN, ServerMessage_reply, WT_LEN);
CHECK_TAG(T1_VARINT, Reply_id, WT_VARINT);
CHECK_TAG(T1_VARINT, MapReply_mapped, WT_VARINT);
CHECK_TAG(T2_LEN, MapReply_page_sizes, WT_LEN);
CHECK_TAG(T1_VARINT, UnmapReply_unmapped_bytes, WT_VARINT);
CHECK_TAG(T2_VARINT, UnmapReply_unmapped_count, WT_VARINT);
/* Fields 16 and 18 take two tag bytes: low seven bits with the
 * continuation bit, then the rest. */
#define CHECK_TAG_2B(lo, field)                                                    \
	_Static_assert((lo) == ((((DMB_FIELD_##field) << 3 | WT_LEN) & 0x7f) | 0x80) && \
			       T_HI_1 == ((DMB_FIELD_##field) << 3 | WT_LEN) >> 7,     \
		       "fast codec: " #lo " is not the tag of " #field)
CHECK_TAG_2B(T16_LEN_0, Request_map);
CHECK_TAG_2B(T18_LEN_0, Request_unmap);
CHECK_TAG_2B(T16_LEN_0, Reply_map);
CHECK_TAG_2B(T18_LEN_0, Reply_unmap);
_Static_assert(DMB__REQUEST__BODY_MAP == DMB_FIELD_Request_map &&
		       DMB__REQUEST__BODY_UNMAP == DMB_FIELD_Request_unmap &&
		       DMB__REPLY__BODY_MAP == DMB_FIELD_Reply_map &&
		       DMB__REPLY__BODY_UNMAP == DMB_FIELD_Reply_unmap &&
		       DMB__SERVER_MESSAGE__KIND_REPLY == DMB_FIELD_ServerMessage_reply,
	       "fast codec: protobuf-c's generated body cases differ from the .proto");

/* ------------------------------------------------------------ encoding */

static inline uint8_t *put_varint(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* A proto3 scalar: omitted when zero, as protobuf-c does. */
static inline uint8_t *put_field(uint8_t *p, uint8_t tag, uint64_t v)
{
	if (!v)
		return p;
	*p++ = tag;
	return put_varint(p, v);
}

/* Sub-messages are at most 63 bytes here: the length is one byte, written
 * once the body is known. */
static inline uint8_t *open_len(uint8_t **lenp, uint8_t *p)
{
	*lenp = p;
	return p + 1;
}

static inline void close_len(uint8_t *lenp, const uint8_t *end)
{
	*lenp = (uint8_t)(end - lenp - 1);
}

static inline bool plain(const ProtobufCMessage *m, const ProtobufCMessageDescriptor *d)
{
	return m->descriptor == d && m->n_unknown_fields == 0;
}

size_t fc_request_pack(const Dmb__Request *req, uint8_t *out, size_t cap)
{
	if (cap < FC_MAX_PACKET || !plain(&req->base, &dmb__request__descriptor))
		return 0;
	uint8_t *p = put_field(out, T1_VARINT, req->id), *l1, *l2;
	if (req->body_case == DMB__REQUEST__BODY_MAP && req->map) {
		const Dmb__Map *m = req->map;
		const Dmb__MapEntry *e = m->entry;
		if (!plain(&m->base, &dmb__map__descriptor) ||
		    (e && !plain(&e->base, &dmb__map_entry__descriptor)))
			return 0;
		*p++ = T16_LEN_0;
		*p++ = T_HI_1;
		p = open_len(&l1, p);
		p = put_field(p, T1_VARINT, m->context_id);
		if (e) {
			*p++ = T2_LEN;
			p = open_len(&l2, p);
			p = put_field(p, T1_VARINT, e->region_id);
			p = put_field(p, T2_VARINT, e->offset);
			p = put_field(p, T3_VARINT, e->iova);
			p = put_field(p, T4_VARINT, e->length);
			p = put_field(p, T5_VARINT, e->prot);
			p = put_field(p, T6_VARINT, e->granule);
			close_len(l2, p);
		}
		close_len(l1, p);
		return (size_t)(p - out);
	}
	if (req->body_case == DMB__REQUEST__BODY_UNMAP && req->unmap) {
		const Dmb__Unmap *u = req->unmap;
		const Dmb__Range *r = u->range;
		if (!plain(&u->base, &dmb__unmap__descriptor) ||
		    (r && !plain(&r->base, &dmb__range__descriptor)))
			return 0;
		*p++ = T18_LEN_0;
		*p++ = T_HI_1;
		p = open_len(&l1, p);
		p = put_field(p, T1_VARINT, u->context_id);
		if (r) {
			*p++ = T2_LEN;
			p = open_len(&l2, p);
			p = put_field(p, T1_VARINT, r->iova);
			p = put_field(p, T2_VARINT, r->length);
			close_len(l2, p);
		}
		close_len(l1, p);
		return (size_t)(p - out);
	}
	return 0;
}

size_t fc_server_message_pack(const Dmb__ServerMessage *m, uint8_t *out, size_t cap)
{
	if (cap < FC_MAX_PACKET || !plain(&m->base, &dmb__server_message__descriptor) ||
	    m->kind_case != DMB__SERVER_MESSAGE__KIND_REPLY || !m->reply)
		return 0;
	const Dmb__Reply *r = m->reply;
	if (!plain(&r->base, &dmb__reply__descriptor) || r->error)
		return 0;
	uint8_t *p = out, *l0, *l1;
	*p++ = T1_LEN;
	p = open_len(&l0, p);
	p = put_field(p, T1_VARINT, r->id);
	if (r->body_case == DMB__REPLY__BODY_MAP && r->map) {
		/* `mapped` and page_sizes (none, or the one of a single map,
		 * packed): a reply with more (several page sizes, a MapPeer's
		 * attr) goes through protobuf-c */
		if (!plain(&r->map->base, &dmb__map_reply__descriptor) || r->map->n_page_sizes > 1 ||
		    r->map->attr)
			return 0;
		*p++ = T16_LEN_0;
		*p++ = T_HI_1;
		p = open_len(&l1, p);
		p = put_field(p, T1_VARINT, r->map->mapped);
		if (r->map->n_page_sizes) {
			uint8_t *l2;
			*p++ = T2_LEN;
			p = open_len(&l2, p);
			p = put_varint(p, r->map->page_sizes[0]);
			close_len(l2, p);
		}
	} else if (r->body_case == DMB__REPLY__BODY_UNMAP && r->unmap) {
		if (!plain(&r->unmap->base, &dmb__unmap_reply__descriptor))
			return 0;
		*p++ = T18_LEN_0;
		*p++ = T_HI_1;
		p = open_len(&l1, p);
		p = put_field(p, T1_VARINT, r->unmap->unmapped_bytes);
		p = put_field(p, T2_VARINT, r->unmap->unmapped_count);
	} else {
		return 0;
	}
	close_len(l1, p);
	close_len(l0, p);
	return (size_t)(p - out);
}

/* ------------------------------------------------------------ decoding
 *
 * Only the canonical encoding is accepted: each field at most once, in
 * field-number order, minimal varints. Whatever protobuf-c would read
 * differently (a later duplicate winning, sub-messages merging, unknown
 * fields kept) is thereby left to protobuf-c. */

struct rd {
	const uint8_t *p, *end;
};

/* A minimal varint of at most 10 bytes whose value fits in 64 bits. */
static inline bool get_varint(struct rd *r, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned shift = 0, i = 0; i < 10 && r->p < r->end; i++, shift += 7) {
		uint8_t b = *r->p++;
		x |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			/* minimal: no trailing zero group; the tenth byte holds bit 63 only */
			if ((i > 0 && b == 0) || (i == 9 && b > 1))
				return false;
			*v = x;
			return true;
		}
	}
	return false;
}

static inline bool at(const struct rd *r, uint8_t tag)
{
	return r->p < r->end && *r->p == tag;
}

/* An optional uint64 field with this tag. */
static inline bool opt_u64(struct rd *r, uint8_t tag, uint64_t *v)
{
	if (!at(r, tag))
		return true;
	r->p++;
	return get_varint(r, v);
}

static inline bool opt_u32(struct rd *r, uint8_t tag, uint32_t *v)
{
	uint64_t x = 0;
	if (!opt_u64(r, tag, &x) || x > UINT32_MAX)
		return false;
	*v = (uint32_t)x;
	return true;
}

/* A length-delimited body of one length byte (< 128: minimal, and all these
 * bodies are shorter); sub becomes its extent and r moves past it. */
static inline bool body(struct rd *r, struct rd *sub)
{
	if (r->p >= r->end || (*r->p & 0x80))
		return false;
	size_t n = *r->p++;
	if (n > (size_t)(r->end - r->p))
		return false;
	sub->p = r->p;
	sub->end = r->p + n;
	r->p += n;
	return true;
}

/* The two-byte tag of field 16 or 18, length-delimited. */
static inline bool at_tag2(const struct rd *r, uint8_t lo)
{
	return r->end - r->p >= 2 && r->p[0] == lo && r->p[1] == T_HI_1;
}

static bool map_entry(struct rd *r, Dmb__MapEntry *e)
{
	*e = (Dmb__MapEntry)DMB__MAP_ENTRY__INIT;
	return opt_u64(r, T1_VARINT, &e->region_id) && opt_u64(r, T2_VARINT, &e->offset) &&
	       opt_u64(r, T3_VARINT, &e->iova) && opt_u64(r, T4_VARINT, &e->length) &&
	       opt_u32(r, T5_VARINT, &e->prot) && opt_u64(r, T6_VARINT, &e->granule) &&
	       r->p == r->end;
}

static bool range(struct rd *r, Dmb__Range *g)
{
	*g = (Dmb__Range)DMB__RANGE__INIT;
	return opt_u64(r, T1_VARINT, &g->iova) && opt_u64(r, T2_VARINT, &g->length) &&
	       r->p == r->end;
}

bool fc_request_unpack(const uint8_t *data, size_t len, struct fc_request *out)
{
	struct rd r = { data, data + len }, b, s;
	Dmb__Request *q = &out->req;
	*q = (Dmb__Request)DMB__REQUEST__INIT;
	if (!opt_u64(&r, T1_VARINT, &q->id))
		return false;
	if (at_tag2(&r, T16_LEN_0)) {
		r.p += 2;
		Dmb__Map *m = &out->body.map;
		*m = (Dmb__Map)DMB__MAP__INIT;
		if (!body(&r, &b) || r.p != r.end || !opt_u64(&b, T1_VARINT, &m->context_id))
			return false;
		if (at(&b, T2_LEN)) {
			b.p++;
			if (!body(&b, &s) || !map_entry(&s, &out->sub.entry))
				return false;
			m->entry = &out->sub.entry;
		}
		if (b.p != b.end)
			return false;
		q->body_case = DMB__REQUEST__BODY_MAP;
		q->map = m;
		return true;
	}
	if (at_tag2(&r, T18_LEN_0)) {
		r.p += 2;
		Dmb__Unmap *u = &out->body.unmap;
		*u = (Dmb__Unmap)DMB__UNMAP__INIT;
		if (!body(&r, &b) || r.p != r.end || !opt_u64(&b, T1_VARINT, &u->context_id))
			return false;
		if (at(&b, T2_LEN)) {
			b.p++;
			if (!body(&b, &s) || !range(&s, &out->sub.range))
				return false;
			u->range = &out->sub.range;
		}
		if (b.p != b.end)
			return false;
		q->body_case = DMB__REQUEST__BODY_UNMAP;
		q->unmap = u;
		return true;
	}
	return false;
}

bool fc_reply_unpack(const uint8_t *data, size_t len, struct fc_reply *out)
{
	struct rd m = { data, data + len }, r, b;
	if (!at(&m, T1_LEN))
		return false;
	m.p++;
	if (!body(&m, &r) || m.p != m.end)
		return false;
	Dmb__Reply *y = &out->reply;
	*y = (Dmb__Reply)DMB__REPLY__INIT;
	if (!opt_u64(&r, T1_VARINT, &y->id))
		return false;
	if (at_tag2(&r, T16_LEN_0)) {
		r.p += 2;
		Dmb__MapReply *mr = &out->body.map;
		*mr = (Dmb__MapReply)DMB__MAP_REPLY__INIT;
		if (!body(&r, &b) || r.p != r.end || !opt_u32(&b, T1_VARINT, &mr->mapped))
			return false;
		if (at(&b, T2_LEN)) {
			/* page_sizes, packed, exactly one value (protobuf-c takes
			 * any other shape) */
			struct rd ps;
			b.p++;
			if (!body(&b, &ps) || ps.p == ps.end || !get_varint(&ps, &out->page_size) ||
			    ps.p != ps.end)
				return false;
			mr->n_page_sizes = 1;
			mr->page_sizes = &out->page_size;
		}
		if (b.p != b.end)
			return false;
		y->body_case = DMB__REPLY__BODY_MAP;
		y->map = mr;
		return true;
	}
	if (at_tag2(&r, T18_LEN_0)) {
		r.p += 2;
		Dmb__UnmapReply *ur = &out->body.unmap;
		*ur = (Dmb__UnmapReply)DMB__UNMAP_REPLY__INIT;
		if (!body(&r, &b) || r.p != r.end || !opt_u64(&b, T1_VARINT, &ur->unmapped_bytes) ||
		    !opt_u32(&b, T2_VARINT, &ur->unmapped_count) || b.p != b.end)
			return false;
		y->body_case = DMB__REPLY__BODY_UNMAP;
		y->unmap = ur;
		return true;
	}
	return false;
}
