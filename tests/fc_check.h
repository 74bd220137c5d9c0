/* The fast codec's contract as checks (proto/fastcodec.h), shared by
 * tests/unit/test_fastcodec.c and tests/fuzz/fuzz_fastcodec.c: every answer
 * of the fast codec is compared with what protobuf-c does with the same
 * message or packet. Each check returns NULL when the contract holds, else a
 * sentence saying how it broke. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastcodec.h"
#include "protocol.h"

/* Field-by-field: the structs have padding, so no memcmp. */
static inline bool fcc_base_same(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
	return a->descriptor == b->descriptor && a->n_unknown_fields == 0 &&
	       b->n_unknown_fields == 0 && !a->unknown_fields && !b->unknown_fields;
}

static inline bool fcc_request_same(const Dmb__Request *a, const Dmb__Request *b)
{
	if (!fcc_base_same(&a->base, &b->base) || a->id != b->id || a->body_case != b->body_case)
		return false;
	if (a->body_case == DMB__REQUEST__BODY_MAP) {
		const Dmb__Map *x = a->map, *y = b->map;
		if (!x || !y || !fcc_base_same(&x->base, &y->base) || x->context_id != y->context_id ||
		    !x->entry != !y->entry)
			return false;
		const Dmb__MapEntry *e = x->entry, *f = y->entry;
		return !e || (fcc_base_same(&e->base, &f->base) && e->region_id == f->region_id &&
			      e->offset == f->offset && e->iova == f->iova &&
			      e->length == f->length && e->prot == f->prot &&
			      e->granule == f->granule);
	}
	if (a->body_case == DMB__REQUEST__BODY_UNMAP) {
		const Dmb__Unmap *x = a->unmap, *y = b->unmap;
		if (!x || !y || !fcc_base_same(&x->base, &y->base) || x->context_id != y->context_id ||
		    !x->range != !y->range)
			return false;
		const Dmb__Range *e = x->range, *f = y->range;
		return !e || (fcc_base_same(&e->base, &f->base) && e->iova == f->iova &&
			      e->length == f->length);
	}
	return false; /* the fast codec never produces another body */
}

static inline bool fcc_reply_same(const Dmb__Reply *a, const Dmb__Reply *b)
{
	if (!fcc_base_same(&a->base, &b->base) || a->id != b->id || a->error || b->error ||
	    a->body_case != b->body_case)
		return false;
	if (a->body_case == DMB__REPLY__BODY_MAP)
		return a->map && b->map && fcc_base_same(&a->map->base, &b->map->base) &&
		       a->map->mapped == b->map->mapped &&
		       a->map->n_page_sizes == b->map->n_page_sizes &&
		       (!a->map->n_page_sizes ||
			!memcmp(a->map->page_sizes, b->map->page_sizes,
				a->map->n_page_sizes * sizeof(uint64_t)));
	if (a->body_case == DMB__REPLY__BODY_UNMAP)
		return a->unmap && b->unmap && fcc_base_same(&a->unmap->base, &b->unmap->base) &&
		       a->unmap->unmapped_bytes == b->unmap->unmapped_bytes &&
		       a->unmap->unmapped_count == b->unmap->unmapped_count;
	return false;
}

/* Decoding a packet as a Request: the fast codec falls back, or agrees. */
static inline const char *fcc_check_request_unpack(const uint8_t *data, size_t len,
						   bool *fast_out)
{
	struct fc_request fr;
	bool fast = fc_request_unpack(data, len, &fr);
	if (fast_out)
		*fast_out = fast;
	if (!fast)
		return NULL;
	Dmb__Request *pb = dmb__request__unpack(NULL, len, data);
	const char *bad = !pb                              ? "fast decode took a packet protobuf-c refuses"
			  : !fcc_request_same(&fr.req, pb) ? "fast decode differs from protobuf-c"
							   : NULL;
	if (pb)
		dmb__request__free_unpacked(pb, NULL);
	return bad;
}

static inline const char *fcc_check_reply_unpack(const uint8_t *data, size_t len, bool *fast_out)
{
	struct fc_reply fr;
	bool fast = fc_reply_unpack(data, len, &fr);
	if (fast_out)
		*fast_out = fast;
	if (!fast)
		return NULL;
	Dmb__ServerMessage *pb = dmb__server_message__unpack(NULL, len, data);
	const char *bad = !pb ? "fast decode took a packet protobuf-c refuses"
			  : pb->kind_case != DMB__SERVER_MESSAGE__KIND_REPLY || !pb->reply ||
					  pb->base.n_unknown_fields
				  ? "protobuf-c reads another kind of ServerMessage"
			  : !fcc_reply_same(&fr.reply, pb->reply) ? "fast decode differs from protobuf-c"
								  : NULL;
	if (pb)
		dmb__server_message__free_unpacked(pb, NULL);
	return bad;
}

/* Encoding: the fast codec declines (0), or writes protobuf-c's bytes. */
static inline const char *fcc_check_request_pack(const Dmb__Request *q, bool *fast_out)
{
	uint8_t fast[FC_MAX_PACKET];
	size_t n = fc_request_pack(q, fast, sizeof(fast));
	if (fast_out)
		*fast_out = n != 0;
	if (!n)
		return NULL;
	size_t want = dmb__request__get_packed_size(q);
	if (n != want)
		return "fast encode has another length than protobuf-c";
	uint8_t *pb = malloc(want + 1);
	if (!pb)
		return "out of memory";
	dmb__request__pack(q, pb);
	const char *bad = memcmp(pb, fast, n) ? "fast encode differs from protobuf-c" : NULL;
	free(pb);
	return bad;
}

static inline const char *fcc_check_server_message_pack(const Dmb__ServerMessage *m,
							bool *fast_out)
{
	uint8_t fast[FC_MAX_PACKET];
	size_t n = fc_server_message_pack(m, fast, sizeof(fast));
	if (fast_out)
		*fast_out = n != 0;
	if (!n)
		return NULL;
	size_t want = dmb__server_message__get_packed_size(m);
	if (n != want)
		return "fast encode has another length than protobuf-c";
	uint8_t *pb = malloc(want + 1);
	if (!pb)
		return "out of memory";
	dmb__server_message__pack(m, pb);
	const char *bad = memcmp(pb, fast, n) ? "fast encode differs from protobuf-c" : NULL;
	free(pb);
	return bad;
}
