/* Framing and handshake: garbage, truncation, oversize, unknown kinds,
 * requests before the handshake, wrong versions, stray fds. After each bad
 * packet the daemon answers with a clear error and keeps serving. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "protocol.h"

/* The session still works: a real request succeeds. */
static void still_serving(struct dmb_client *c)
{
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "alive", &ctx));
	assert_ok(c, dmb_context_destroy(c, ctx));
}

static Dmb__Reply *call_bytes(struct dmb_client *c, const void *buf, size_t len)
{
	Dmb__Reply *rep = NULL;
	int r = dmb_call_bytes(c, buf, len, NULL, 0, &rep);
	if (r < 0)
		fail_msg("transport failed: %s", dmb_last_error(c)->message);
	return rep;
}

static void expect_error(Dmb__Reply *rep, int code)
{
	assert_non_null(rep);
	if (!rep->error)
		fail_msg("expected error %s, got success", dmb_error_code_name(code));
	if ((int)rep->error->code != code)
		fail_msg("expected %s, got %s: %s", dmb_error_code_name(code),
			 dmb_error_code_name(rep->error->code), rep->error->message);
	assert_true(strlen(rep->error->message) > 0);
	dmb__reply__free_unpacked(rep, NULL);
}

static void test_handshake_required(void **state)
{
	struct dmb_client *c;
	assert_int_equal(dmb_connect_raw(g_daemon.sock, &c), 0);
	/* Any request before Hello */
	uint64_t ctx;
	assert_code(c, dmb_context_create(c, "early", &ctx), DMB_FAILED_PRECONDITION);
	/* A wrong version */
	assert_code(c, dmb_hello(c, 99, "future"), DMB_FAILED_PRECONDITION);
	assert_non_null(strstr(dmb_last_error(c)->message, "version"));
	assert_code(c, dmb_hello(c, 0, "past"), DMB_FAILED_PRECONDITION);
	/* then the right one, once */
	assert_ok(c, dmb_hello(c, DMB_PROTOCOL_VERSION, "ok"));
	assert_code(c, dmb_hello(c, DMB_PROTOCOL_VERSION, "again"), DMB_FAILED_PRECONDITION);
	const struct dmb_server_info *si = dmb_server_info(c);
	assert_string_equal(si->backend, "sim");
	assert_int_equal(si->max_packet_bytes, DMB_MAX_PACKET);
	assert_int_equal(si->max_batch, DMB_MAX_BATCH);
	/* A client name that is too long */
	struct dmb_client *c2;
	assert_int_equal(dmb_connect_raw(g_daemon.sock, &c2), 0);
	char name[200];
	memset(name, 'x', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0;
	assert_code(c2, dmb_hello(c2, DMB_PROTOCOL_VERSION, name), DMB_INVALID_ARGUMENT);
	assert_code(c2, dmb_hello(c2, DMB_PROTOCOL_VERSION, "log\ninjection"), DMB_INVALID_ARGUMENT);
	dmb_close(c2);
	still_serving(c);
	dmb_close(c);
}

static void test_garbage_and_truncation(void **state)
{
	struct dmb_client *c = client_connect(&g_daemon, "garbage");
	/* Bytes that are not a protobuf message */
	const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02 };
	expect_error(call_bytes(c, junk, sizeof(junk)), DMB_INVALID_ARGUMENT);

	/* A valid request cut short */
	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__ContextCreate cc = DMB__CONTEXT_CREATE__INIT;
	cc.name = (char *)"a-name-long-enough-to-truncate";
	req.id = 77;
	req.body_case = DMB__REQUEST__BODY_CONTEXT_CREATE;
	req.context_create = &cc;
	uint8_t buf[256];
	size_t len = dmb__request__pack(&req, buf);
	expect_error(call_bytes(c, buf, len - 5), DMB_INVALID_ARGUMENT);

	/* An empty packet: a Request with no body */
	expect_error(call_bytes(c, buf, 0), DMB_INVALID_ARGUMENT);

	/* Random bytes of many lengths never crash it */
	uint8_t rnd[512];
	for (unsigned i = 1; i < 200; i++) {
		fill_pattern(rnd, sizeof(rnd), i);
		Dmb__Reply *rep = call_bytes(c, rnd, i * 2 + 1);
		assert_non_null(rep);
		dmb__reply__free_unpacked(rep, NULL);
		if (i % 50 == 0)
			still_serving(c); /* resets the bad-packet streak */
	}
	still_serving(c);
	dmb_close(c);
}

static void test_oversized_packet(void **state)
{
	struct dmb_client *c = client_connect(&g_daemon, "oversize");
	size_t len = DMB_MAX_PACKET + 4096;
	uint8_t *big = calloc(1, len);
	Dmb__Reply *rep = NULL;
	int r = dmb_call_bytes(c, big, len, NULL, 0, &rep);
	free(big);
	/* The client's send buffer (sized by the library) carries it; the
	 * daemon sees a truncated read and says so. */
	assert_int_equal(r, 0);
	assert_non_null(rep->error);
	assert_non_null(strstr(rep->error->message, "limit"));
	expect_error(rep, DMB_INVALID_ARGUMENT);
	still_serving(c);
	dmb_close(c);
}

static void test_unknown_request_kind(void **state)
{
	struct dmb_client *c = client_connect(&g_daemon, "unknown");
	/* field 1 (id) = 5, then field 999 (an unknown kind) as an empty
	 * length-delimited message: tag = (999 << 3) | 2 */
	uint8_t pkt[16];
	size_t n = 0;
	pkt[n++] = 0x08;
	pkt[n++] = 5;
	uint32_t tag = (999u << 3) | 2u;
	while (tag >= 0x80) {
		pkt[n++] = (uint8_t)(tag | 0x80);
		tag >>= 7;
	}
	pkt[n++] = (uint8_t)tag;
	pkt[n++] = 0;
	Dmb__Reply *rep = call_bytes(c, pkt, n);
	assert_int_equal(rep->id, 5);
	assert_non_null(strstr(rep->error ? rep->error->message : "", "999"));
	expect_error(rep, DMB_UNIMPLEMENTED);
	still_serving(c);
	dmb_close(c);
}

static void test_fds_on_a_request_that_takes_none(void **state)
{
	struct dmb_client *c = client_connect(&g_daemon, "stray-fds");
	int base = daemon_quiet_fd_count(&g_daemon, 1);
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);

	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__ContextCreate cc = DMB__CONTEXT_CREATE__INIT;
	cc.name = (char *)"";
	req.body_case = DMB__REQUEST__BODY_CONTEXT_CREATE;
	req.context_create = &cc;
	Dmb__Reply *rep;
	assert_int_equal(dmb_call(c, &req, &p[0], 1, &rep, NULL, NULL), 0);
	expect_error(rep, DMB_INVALID_ARGUMENT);
	/* The daemon closed its copy of the read end: with ours closed too,
	 * the pipe has no reader left. */
	close(p[0]);
	signal(SIGPIPE, SIG_IGN);
	assert_int_equal(write(p[1], "x", 1), -1);
	assert_int_equal(errno, EPIPE);
	close(p[1]);
	assert_int_equal(daemon_wait_fd_count(&g_daemon, base, 1), base);
	still_serving(c);
	dmb_close(c);
}

static void test_maximum_number_of_fds(void **state)
{
	struct dmb_client *c = client_connect(&g_daemon, "max-fds");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "fds", &ctx));
	int base = daemon_quiet_fd_count(&g_daemon, 1);
	/* What one registered region costs the daemon in fds (the core keeps
	 * the fd; a backend may keep more). */
	int one = make_memfd(4096, 0);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, one, 0, &ri));
	int per_region = daemon_quiet_fd_count(&g_daemon, 1) - base;
	assert_true(per_region >= 1 && per_region <= 2);
	assert_ok(c, dmb_region_unregister(c, ctx, ri.region));
	assert_int_equal(daemon_wait_fd_count(&g_daemon, base, 1), base);
	close(one);

	int fds[DMB_MAX_FDS];
	for (unsigned i = 0; i < DMB_MAX_FDS; i++)
		fds[i] = make_memfd(4096, i);
	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__RegionRegister rr = DMB__REGION_REGISTER__INIT;
	rr.context_id = ctx;
	rr.fd_index = DMB_MAX_FDS - 1; /* the last one */
	req.body_case = DMB__REQUEST__BODY_REGION_REGISTER;
	req.region_register = &rr;
	Dmb__Reply *rep;
	assert_int_equal(dmb_call(c, &req, fds, DMB_MAX_FDS, &rep, NULL, NULL), 0);
	assert_null(rep->error);
	assert_int_equal(rep->body_case, DMB__REPLY__BODY_REGION_REGISTER);
	uint64_t region = rep->region_register->region_id;
	dmb__reply__free_unpacked(rep, NULL);
	/* It kept exactly the one it used: the other 252 were closed. */
	assert_int_equal(daemon_wait_fd_count(&g_daemon, base + per_region, 1), base + per_region);

	/* fd_index out of range, and negative */
	rr.fd_index = 3;
	assert_int_equal(dmb_call(c, &req, fds, 2, &rep, NULL, NULL), 0);
	expect_error(rep, DMB_INVALID_ARGUMENT);
	rr.fd_index = -1;
	assert_int_equal(dmb_call(c, &req, fds, 2, &rep, NULL, NULL), 0);
	expect_error(rep, DMB_INVALID_ARGUMENT);
	/* no fd at all */
	rr.fd_index = 0;
	assert_int_equal(dmb_call(c, &req, NULL, 0, &rep, NULL, NULL), 0);
	expect_error(rep, DMB_INVALID_ARGUMENT);
	assert_int_equal(daemon_wait_fd_count(&g_daemon, base + per_region, 1), base + per_region);

	assert_ok(c, dmb_region_unregister(c, ctx, region));
	assert_int_equal(daemon_wait_fd_count(&g_daemon, base, 1), base);
	for (unsigned i = 0; i < DMB_MAX_FDS; i++)
		close(fds[i]);
	still_serving(c);
	dmb_close(c);
}

static void test_many_bad_packets_disconnect(void **state)
{
	struct dmb_client *c = client_connect(&g_daemon, "abuser");
	const uint8_t junk[] = { 0xff, 0xff, 0xff };
	int r = 0;
	for (int i = 0; i < 1000 && r == 0; i++) {
		Dmb__Reply *rep = NULL;
		r = dmb_call_bytes(c, junk, sizeof(junk), NULL, 0, &rep);
		if (rep)
			dmb__reply__free_unpacked(rep, NULL);
	}
	/* The daemon gave up on this session ... */
	assert_true(r < 0);
	dmb_close(c);
	/* ... and serves everyone else. */
	struct dmb_client *ok = client_connect(&g_daemon, "bystander");
	still_serving(ok);
	dmb_close(ok);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handshake_required),
		cmocka_unit_test(test_garbage_and_truncation),
		cmocka_unit_test(test_oversized_packet),
		cmocka_unit_test(test_unknown_request_kind),
		cmocka_unit_test(test_fds_on_a_request_that_takes_none),
		cmocka_unit_test(test_maximum_number_of_fds),
		cmocka_unit_test(test_many_bad_packets_disconnect),
	};
	return cmocka_run_group_tests_name("protocol", tests, group_start_daemon, group_stop_daemon);
}
