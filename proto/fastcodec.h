/* fastcodec: a hand-written codec for the four packets of the small-map hot
 * path, beside protobuf-c (which stays the codec for everything else).
 *
 * A VMM under a virtual IOMMU sends millions of single maps and unmaps; on
 * both ends protobuf-c's generic, descriptor-driven codec was most of the
 * user-space work per request (docs/performance.md). The packets handled
 * here, in protobuf-c's own encoding (proto3: zero scalars and NULL
 * sub-messages are omitted; fields in field-number order):
 *
 *   Request       { 1: id, 16: Map   { 1: context_id, 2: MapEntry { 1: region_id,
 *                                        2: offset, 3: iova, 4: length, 5: prot,
 *                                        6: granule } } }
 *   Request       { 1: id, 18: Unmap { 1: context_id, 2: Range { 1: iova, 2: length } } }
 *   ServerMessage { 1: Reply { 1: id, 16: MapReply   { 1: mapped,
 *                                                     2: page_sizes (packed, one) } } }
 *   ServerMessage { 1: Reply { 1: id, 18: UnmapReply { 1: unmapped_bytes, 2: unmapped_count } } }
 *
 * The largest is 88 bytes (FC_MAX_PACKET), so every length prefix is one byte.
 *
 * The contract, checked by tests/unit/test_fastcodec.c and by the libFuzzer
 * target tests/fuzz/fuzz_fastcodec.c against the protobuf-c in use:
 *  - fc_*_pack writes exactly the bytes protobuf-c's pack writes for the same
 *    message and returns their count, or returns 0 (nothing usable written)
 *    for any message of another shape: another body, an Error, unknown
 *    fields kept from a decode, a foreign descriptor. The caller then packs
 *    with protobuf-c.
 *  - fc_*_unpack fills *out with exactly what protobuf-c's unpack returns
 *    for the packet, or returns false for anything but the canonical
 *    encoding above: other field orders, repeated fields, unknown fields,
 *    non-minimal varints or lengths, a uint32 out of range, trailing bytes.
 *    The caller then unpacks with protobuf-c, which decides whether the
 *    packet is valid at all. Packets that carry fds are the caller's to
 *    send to protobuf-c (none of these four carries any).
 *
 * The unpacked messages live in the caller's struct (no allocation): they
 * point into it, so it must not be copied or moved while in use, and it is
 * never passed to protobuf-c's free_unpacked. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dmabroker.pb-c.h"

#define FC_MAX_PACKET 96u

struct fc_request {
	Dmb__Request req;
	union {
		Dmb__Map map;
		Dmb__Unmap unmap;
	} body;
	union {
		Dmb__MapEntry entry;
		Dmb__Range range;
	} sub;
};

struct fc_reply {
	Dmb__Reply reply;
	union {
		Dmb__MapReply map;
		Dmb__UnmapReply unmap;
	} body;
	uint64_t page_size;     /* MapReply.page_sizes[0] */
};

/* Request{map} / Request{unmap} into out (cap >= FC_MAX_PACKET, else 0). */
size_t fc_request_pack(const Dmb__Request *req, uint8_t *out, size_t cap);

/* A Request{map} / Request{unmap} packet; true: out->req is the request. */
bool fc_request_unpack(const uint8_t *data, size_t len, struct fc_request *out);

/* ServerMessage{reply{map}} / {reply{unmap}} into out (cap >= FC_MAX_PACKET). */
size_t fc_server_message_pack(const Dmb__ServerMessage *m, uint8_t *out, size_t cap);

/* A ServerMessage{reply{map}} / {reply{unmap}} packet; true: out->reply is
 * the message's reply (what dmb__server_message__unpack()->reply would be). */
bool fc_reply_unpack(const uint8_t *data, size_t len, struct fc_reply *out);
