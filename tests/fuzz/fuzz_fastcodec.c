/* fuzz_fastcodec: the small-map fast codec (proto/fastcodec.c) against
 * protobuf-c, on any input (the contract: proto/fastcodec.h).
 *
 * Input: one packet. It is decoded as a Request and as a ServerMessage by
 * both codecs: the fast one must decline or agree exactly with protobuf-c.
 * What protobuf-c decodes is encoded again by both: the fast encoder must
 * decline or write protobuf-c's exact bytes. Any disagreement aborts. */
#include <stdio.h>
#include <stdlib.h>

#include "../fc_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const char *what, const char *bad)
{
	if (bad) {
		fprintf(stderr, "fuzz_fastcodec: %s: %s\n", what, bad);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check("Request decode", fcc_check_request_unpack(data, size, NULL));
	check("ServerMessage decode", fcc_check_reply_unpack(data, size, NULL));

	Dmb__Request *q = dmb__request__unpack(NULL, size, data);
	if (q) {
		check("Request encode", fcc_check_request_pack(q, NULL));
		dmb__request__free_unpacked(q, NULL);
	}
	Dmb__ServerMessage *m = dmb__server_message__unpack(NULL, size, data);
	if (m) {
		check("ServerMessage encode", fcc_check_server_message_pack(m, NULL));
		dmb__server_message__free_unpacked(m, NULL);
	}
	return 0;
}
