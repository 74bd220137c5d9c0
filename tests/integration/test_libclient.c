/* libdmabroker against fake brokers (no dmabrokerd): the behaviours a real
 * daemon does not show on demand.
 *
 *   - a broker that accepts and never answers: dmb_set_timeout() turns the
 *     wait into -ETIMEDOUT with a sentence, on time;
 *   - a broker that refuses the handshake: dmb_connect_error() hands the
 *     broker's code, errno and sentence back (dmb_connect() cannot);
 *   - a broker that answers with a body of the wrong kind: -EBADMSG.
 *
 * Each fake is one thread serving one connection on a private socket. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dmabroker-internal.h"
#include "protocol.h"

enum fake_mode {
	FAKE_SILENT,     /* accepts, reads, never answers */
	FAKE_REFUSE,     /* answers Hello with FAILED_PRECONDITION */
	FAKE_WRONG_BODY, /* a good Hello; every later request gets a Stats body */
};

struct fake {
	enum fake_mode mode;
	char dir[64];
	char path[108];
	int lfd;
	pthread_t th;
};

static void reply(int fd, Dmb__Reply *r)
{
	Dmb__ServerMessage m = DMB__SERVER_MESSAGE__INIT;
	uint8_t buf[4096];

	m.kind_case = DMB__SERVER_MESSAGE__KIND_REPLY;
	m.reply = r;
	size_t n = dmb__server_message__get_packed_size(&m);
	assert_true(n <= sizeof(buf));
	dmb__server_message__pack(&m, buf);
	(void)send(fd, buf, n, MSG_NOSIGNAL);
}

static void *fake_serve(void *arg)
{
	struct fake *f = arg;
	int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
	uint8_t buf[DMB_MAX_PACKET];
	ssize_t n;

	if (fd < 0)
		return NULL;
	while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
		if (f->mode == FAKE_SILENT)
			continue;
		Dmb__Request *q = dmb__request__unpack(NULL, (size_t)n, buf);
		if (!q)
			break;
		Dmb__Reply r = DMB__REPLY__INIT;
		Dmb__Error e = DMB__ERROR__INIT;
		Dmb__HelloReply h = DMB__HELLO_REPLY__INIT;
		Dmb__StatsReply s = DMB__STATS_REPLY__INIT;
		r.id = q->id;
		if (q->body_case == DMB__REQUEST__BODY_HELLO && f->mode == FAKE_REFUSE) {
			e.code = DMB__ERROR_CODE__FAILED_PRECONDITION;
			e.sys_errno = EPROTONOSUPPORT;
			e.message = "fake broker: protocol version 1 is not supported";
			r.error = &e;
		} else if (q->body_case == DMB__REQUEST__BODY_HELLO) {
			h.protocol_version = 1;
			h.server_version = "fake";
			h.backend = "fake";
			r.body_case = DMB__REPLY__BODY_HELLO;
			r.hello = &h;
		} else {
			s.contexts = 7;
			r.body_case = DMB__REPLY__BODY_STATS;
			r.stats = &s;
		}
		reply(fd, &r);
		dmb__request__free_unpacked(q, NULL);
	}
	close(fd);
	return NULL;
}

static struct fake *fake_start(enum fake_mode mode)
{
	struct fake *f = calloc(1, sizeof(*f));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	assert_non_null(f);
	f->mode = mode;
	snprintf(f->dir, sizeof(f->dir), "/tmp/dmb-libclient.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/s", f->dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
	f->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 4), 0);
	assert_int_equal(pthread_create(&f->th, NULL, fake_serve, f), 0);
	return f;
}

/* The client must be closed first: the fake serves until end of stream. */
static void fake_stop(struct fake *f)
{
	shutdown(f->lfd, SHUT_RDWR); /* wakes an accept that never got a client */
	pthread_join(f->th, NULL);
	close(f->lfd);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_timeout_on_a_silent_broker(void **state)
{
	struct fake *f = fake_start(FAKE_SILENT);
	struct dmb_client *c;

	assert_int_equal(dmb_connect_raw(f->path, &c), 0);
	assert_int_equal(dmb_set_timeout(c, -1), -EINVAL);
	assert_int_equal(dmb_set_timeout(c, 300), 0);

	int64_t t0 = now_ms();
	int r = dmb_hello(c, DMB_PROTOCOL_VERSION, "silent");
	int64_t took = now_ms() - t0;
	assert_int_equal(r, -ETIMEDOUT);
	assert_true(took >= 290 && took < 3000);
	const struct dmb_error *e = dmb_last_error(c);
	assert_int_equal(e->code, 0);
	assert_int_equal(e->sys_errno, ETIMEDOUT);
	assert_non_null(strstr(e->message, "within 300 ms"));

	/* The client stays usable: the next call times out on its own. */
	struct dmb_stats st;
	t0 = now_ms();
	assert_int_equal(dmb_stats(c, 0, &st), -ETIMEDOUT);
	assert_true(now_ms() - t0 >= 290);

	dmb_close(c);
	fake_stop(f);
}

static void test_timeout_zero_waits_for_the_answer(void **state)
{
	struct fake *f = fake_start(FAKE_WRONG_BODY);
	struct dmb_client *c;

	assert_int_equal(dmb_connect_raw(f->path, &c), 0);
	assert_int_equal(dmb_set_timeout(c, 2000), 0);
	assert_int_equal(dmb_set_timeout(c, 0), 0);
	assert_int_equal(dmb_hello(c, DMB_PROTOCOL_VERSION, "t"), 0);
	assert_string_equal(dmb_server_info(c)->backend, "fake");
	dmb_close(c);
	fake_stop(f);
}

static void test_connect_error_keeps_the_refusal(void **state)
{
	struct fake *f = fake_start(FAKE_REFUSE);
	struct dmb_client *c = (struct dmb_client *)&c; /* must be reset to NULL */
	struct dmb_error err;

	assert_int_equal(dmb_connect_error(f->path, "refused", &c, &err), -EBUSY);
	assert_null(c);
	assert_int_equal(err.code, DMB_FAILED_PRECONDITION);
	assert_int_equal(err.sys_errno, EPROTONOSUPPORT);
	assert_string_equal(err.message, "fake broker: protocol version 1 is not supported");
	fake_stop(f);

	/* No broker at all: a transport error, code 0, naming the path. */
	assert_int_equal(dmb_connect_error("/nonexistent/dmb.sock", "x", &c, &err), -ENOENT);
	assert_int_equal(err.code, 0);
	assert_int_equal(err.sys_errno, ENOENT);
	assert_non_null(strstr(err.message, "cannot connect to /nonexistent/dmb.sock"));

	/* NULL err is allowed (that is dmb_connect). */
	assert_int_equal(dmb_connect_error("/nonexistent/dmb.sock", "x", &c, NULL), -ENOENT);
}

static void test_wrong_body_kind_is_ebadmsg(void **state)
{
	struct fake *f = fake_start(FAKE_WRONG_BODY);
	struct dmb_client *c;
	struct dmb_error err;

	assert_int_equal(dmb_connect_error(f->path, "wrong-body", &c, &err), 0);
	assert_int_equal(err.code, 0);
	assert_string_equal(err.message, "");

	struct dmb_status st;
	assert_int_equal(dmb_status(c, &st), -EBADMSG);
	assert_int_equal(dmb_last_error(c)->sys_errno, EBADMSG);
	assert_non_null(strstr(dmb_last_error(c)->message, "wrong kind"));

	struct dmb_context_info *v = NULL;
	size_t n = 99;
	assert_int_equal(dmb_list_contexts(c, false, &v, &n), -EBADMSG);
	assert_null(v);

	struct dmb_iova_info io;
	assert_int_equal(dmb_iova_ranges(c, 1, &io), -EBADMSG);
	uint64_t ctx;
	assert_int_equal(dmb_context_create(c, "x", &ctx), -EBADMSG);
	struct dmb_device_listing *d = NULL;
	assert_int_equal(dmb_list_devices(c, false, &d, &n), -EBADMSG);
	assert_null(d);

	/* The fake's Stats answer is right for Stats. */
	struct dmb_stats s;
	assert_int_equal(dmb_stats(c, 0, &s), 0);
	assert_int_equal(s.contexts, 7);

	dmb_close(c);
	fake_stop(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_timeout_on_a_silent_broker),
		cmocka_unit_test(test_timeout_zero_waits_for_the_answer),
		cmocka_unit_test(test_connect_error_keeps_the_refusal),
		cmocka_unit_test(test_wrong_body_kind_is_ebadmsg),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
