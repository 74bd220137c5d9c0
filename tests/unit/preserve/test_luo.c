/* The kernel LUO preserver (preserve/luo.c) against a fake kernel (no
 * machine here has /dev/liveupdate): the exact bytes of the five ioctls,
 * the device opened for each CREATE/RETRIEVE and closed right after (also
 * on failure), every errno's sentence, and preserver_open()'s specs. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend/ksys.h"
#include "backend/uapi/liveupdate.h"
#include "fake.h"
#include "backend/preserve/impl.h"
#include "backend/preserve/preserver.h"

static struct {
	char *root;
	char dev[600];
	int open_errno;   /* the device's open answers this */
	int opens;
	int ioctl_errno;  /* every LUO ioctl answers this */
	int session_fd;   /* the last session fd the fake handed out */
	int file_fd;      /* the last file fd RETRIEVE_FD handed out */
} k;

static int fake_open(const char *path, int flags)
{
	k.opens++;
	if (k.open_errno)
		return -k.open_errno;
	return ksys_open_default(path, flags);
}

static int kernel(int fd, unsigned long req, void *arg, const char *path)
{
	(void)fd;
	(void)path;
	if (k.ioctl_errno)
		return -k.ioctl_errno;
	switch (req) {
	case DMB_LIVEUPDATE_IOCTL_CREATE_SESSION:
	case DMB_LIVEUPDATE_IOCTL_RETRIEVE_SESSION: {
		struct dmb_liveupdate_ioctl_create_session *a = arg;
		k.session_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
		a->fd = k.session_fd;
		return 0;
	}
	case DMB_LIVEUPDATE_SESSION_RETRIEVE_FD: {
		struct dmb_liveupdate_session_retrieve_fd *a = arg;
		k.file_fd = fake_memfd(4096);
		a->fd = k.file_fd;
		return 0;
	}
	case DMB_LIVEUPDATE_SESSION_PRESERVE_FD:
	case DMB_LIVEUPDATE_SESSION_FINISH:
		return 0;
	}
	return -EINVAL; /* an nr outside the device's table */
}

/* How many of this process's fds refer to the fake device. */
static int dev_fds_open(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[700];
		fake_fd_path(atoi(de->d_name), path, sizeof(path));
		n += strcmp(path, k.dev) == 0;
	}
	closedir(d);
	return n;
}

static int setup(void **state)
{
	memset(&k, 0, sizeof(k));
	k.root = fake_tree_new();
	fake_write(k.root, "dev/liveupdate", "");
	snprintf(k.dev, sizeof(k.dev), "%s/dev/liveupdate", k.root);
	fake_install(kernel);
	ksys_ops.open = fake_open;
	char spec[700];
	snprintf(spec, sizeof(spec), "luo:%s", k.dev);
	struct dmb_preserver *p = NULL;
	struct dmb_err e = {0};
	assert_int_equal(preserver_open(spec, &p, &e), 0);
	assert_non_null(p);
	assert_string_equal(p->ops->name, "luo");
	luo_preserver_set_release(p, "7.3.4"); /* whatever kernel runs the tests */
	*state = p;
	return 0;
}

static int teardown(void **state)
{
	preserver_close(*state);
	fake_uninstall();
	ksys_ops.open = ksys_open_default;
	fake_tree_free(k.root);
	return 0;
}

static void check_session_call(unsigned long req, const char *name)
{
	assert_int_equal(fake_count(req), 1);
	const struct fake_call *c = fake_find(req, 0);
	assert_string_equal(c->path, k.dev); /* issued on the device */
	assert_true(c->cloexec);
	assert_int_equal(c->len, 72);
	uint8_t want[72] = {0};
	uint32_t size = 72;
	memcpy(want, &size, 4);
	memcpy(want + 8, name, strlen(name));
	assert_memory_equal(c->bytes, want, 72);
}

static void test_create_session(void **state)
{
	struct dmb_preserver *p = *state;
	struct dmb_err e = {0};
	int sfd = -1;
	assert_int_equal(p->ops->create_session(p, "dmabroker", &sfd, &e), 0);
	assert_int_equal(sfd, k.session_fd);
	check_session_call(DMB_LIVEUPDATE_IOCTL_CREATE_SESSION, "dmabroker");
	assert_int_equal(fake_ncalls, 1);
	assert_int_equal(k.opens, 1);
	assert_int_equal(dev_fds_open(), 0); /* closed right after */
	close(sfd);
}

static void test_retrieve_session(void **state)
{
	struct dmb_preserver *p = *state;
	struct dmb_err e = {0};
	int sfd = -1;
	/* 63 bytes: the longest name the kernel keeps whole */
	char name[64];
	memset(name, 'n', 63);
	name[63] = '\0';
	assert_int_equal(p->ops->retrieve_session(p, name, &sfd, &e), 0);
	assert_int_equal(sfd, k.session_fd);
	check_session_call(DMB_LIVEUPDATE_IOCTL_RETRIEVE_SESSION, name);
	assert_int_equal(k.opens, 1);
	assert_int_equal(dev_fds_open(), 0);
	close(sfd);
}

static void test_session_fd_ioctls(void **state)
{
	struct dmb_preserver *p = *state;
	struct dmb_err e = {0};
	int sfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	int mfd = fake_memfd(8192);

	assert_int_equal(p->ops->preserve_fd(p, sfd, mfd, 0x1122334455667788ull, &e), 0);
	const struct fake_call *c = fake_find(DMB_LIVEUPDATE_SESSION_PRESERVE_FD, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, sfd);
	assert_int_equal(c->len, 16);
	struct dmb_liveupdate_session_preserve_fd pw = { .size = 16, .fd = mfd,
							 .token = 0x1122334455667788ull };
	assert_memory_equal(c->bytes, &pw, 16);

	int got = -1;
	assert_int_equal(p->ops->retrieve_fd(p, sfd, 7, &got, &e), 0);
	assert_int_equal(got, k.file_fd);
	c = fake_find(DMB_LIVEUPDATE_SESSION_RETRIEVE_FD, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, sfd);
	struct dmb_liveupdate_session_retrieve_fd rw = { .size = 16, .fd = -1, .token = 7 };
	assert_memory_equal(c->bytes, &rw, 16);

	assert_int_equal(p->ops->finish(p, sfd, &e), 0);
	c = fake_find(DMB_LIVEUPDATE_SESSION_FINISH, 0);
	assert_non_null(c);
	assert_int_equal(c->fd, sfd);
	assert_int_equal(c->len, 8);
	uint8_t fw[8] = { 8, 0, 0, 0, 0, 0, 0, 0 };
	assert_memory_equal(c->bytes, fw, 8);

	/* session operations never open the device */
	assert_int_equal(k.opens, 0);
	assert_int_equal(fake_ncalls, 3);
	close(got);
	close(mfd);
	close(sfd);
}

static void test_probe(void **state)
{
	struct dmb_preserver *p = *state;
	struct dmb_err e = {0};
	assert_int_equal(p->ops->probe(p, &e), 0);
	assert_int_equal(k.opens, 1);
	assert_int_equal(fake_ncalls, 0);
	assert_int_equal(dev_fds_open(), 0);
}

/* A kernel whose LUO drops memfd seals (6.19: the retrieved memfd cannot be
 * sealed, so no region could be re-adopted) is refused before anything is
 * preserved; so is a release it cannot read or has not been proven on. */
static void test_probe_seals(void **state)
{
	struct dmb_preserver *p = *state;
	static const char *const refused[] = { "6.19.0", "6.19.3-amd64", "7.2.9", "6.1.0-41-amd64", "" };
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		struct dmb_err e = {0};
		luo_preserver_set_release(p, refused[i][0] ? refused[i] : "garbage");
		assert_int_equal(p->ops->probe(p, &e), -EOPNOTSUPP);
		assert_int_equal(e.code, DMB_E_FAILED_PRECONDITION);
		assert_non_null(strstr(e.msg, "without their seals"));
		assert_non_null(strstr(e.msg, "Linux 7.3+"));
	}
	static const char *const ok[] = { "7.3.0", "7.3.4+deb13-amd64", "7.10.1", "8.0.0" };
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct dmb_err e = {0};
		luo_preserver_set_release(p, ok[i]);
		assert_int_equal(p->ops->probe(p, &e), 0);
	}
	assert_int_equal(dev_fds_open(), 0);
}

static void test_bad_names(void **state)
{
	struct dmb_preserver *p = *state;
	int sfd = -1;
	char name[80];
	memset(name, 'x', 64);
	name[64] = '\0';
	struct dmb_err e = {0};
	assert_int_equal(p->ops->create_session(p, name, &sfd, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "longer than"));
	dmb_err_clear(&e);
	assert_int_equal(p->ops->retrieve_session(p, "", &sfd, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "needs a name"));
	assert_int_equal(k.opens, 0);
	assert_int_equal(fake_ncalls, 0);
}

/* The device's own answers to open. */
static void expect_open(struct dmb_preserver *p, int err, int code, const char *words)
{
	k.open_errno = err;
	k.opens = 0;
	struct dmb_err e = {0};
	int sfd = -1;
	assert_int_equal(p->ops->create_session(p, "s", &sfd, &e), -err);
	assert_int_equal(e.code, code);
	assert_int_equal(e.sys_errno, err);
	if (!strstr(e.msg, words))
		fail_msg("open %s: \"%s\" lacks \"%s\"", strerrorname_np(err), e.msg, words);
	assert_non_null(strstr(e.msg, k.dev));
	dmb_err_clear(&e);
	assert_int_equal(p->ops->retrieve_session(p, "s", &sfd, &e), -err);
	assert_non_null(strstr(e.msg, words));
	dmb_err_clear(&e);
	assert_int_equal(p->ops->probe(p, &e), -err);
	assert_non_null(strstr(e.msg, words));
	assert_int_equal(k.opens, 3);
	assert_int_equal(fake_ncalls, 0);
}

static void test_open_errors(void **state)
{
	struct dmb_preserver *p = *state;
	expect_open(p, EBUSY, DMB_E_UNAVAILABLE, "is held by another process (EBUSY)");
	expect_open(p, EIO, DMB_E_FAILED_PRECONDITION,
		    "could not read the handoff data the previous kernel left");
	expect_open(p, EACCES, DMB_E_PERMISSION_DENIED, "needs read-write access");
	/* Either sentence (this host's command line decides which) names both. */
	expect_open(p, ENOENT, DMB_E_FAILED_PRECONDITION,
		    "Linux 6.19+");
	expect_open(p, ENOENT, DMB_E_FAILED_PRECONDITION, "kho=on liveupdate=on");
	expect_open(p, ENODEV, DMB_E_FAILED_PRECONDITION, "Live Update Orchestrator");
}

/* Without the open hook: a path that does not exist, as on a 6.1 kernel. */
static void test_no_device(void **state)
{
	(void)state;
	ksys_ops.open = ksys_open_default;
	struct dmb_preserver *p = NULL;
	struct dmb_err e = {0};
	char spec[700];
	snprintf(spec, sizeof(spec), "luo:%s/dev/nothing", k.root);
	assert_int_equal(preserver_open(spec, &p, &e), 0); /* opening touches nothing */
	assert_int_equal(p->ops->probe(p, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "does not exist (ENOENT)"));
	assert_non_null(strstr(e.msg, "Linux 6.19"));
	/* the running kernel's release is named */
	char rel[128] = "";
	FILE *f = fopen("/proc/sys/kernel/osrelease", "r");
	if (f) {
		assert_non_null(fgets(rel, sizeof(rel), f));
		rel[strcspn(rel, "\n")] = '\0';
		fclose(f);
		assert_non_null(strstr(e.msg, rel));
	}
	preserver_close(p);
}

struct errcase {
	int op; /* 0 create, 1 retrieve, 2 preserve, 3 retrieve_fd, 4 finish */
	int err;
	int code;
	const char *words;
};

static const struct errcase errcases[] = {
	{ 0, EEXIST, DMB_E_ALREADY_EXISTS, "outgoing handoff session named \"s\" already exists" },
	{ 0, ENOMEM, DMB_E_RESOURCE_EXHAUSTED, "no room for another outgoing session" },
	{ 0, EBUSY, DMB_E_UNAVAILABLE, "held by another process" },
	{ 1, ENOENT, DMB_E_NOT_FOUND, "no incoming handoff session named \"s\"" },
	{ 1, EINVAL, DMB_E_FAILED_PRECONDITION, "was already retrieved in this boot" },
	{ 2, EEXIST, DMB_E_ALREADY_EXISTS, "token 0x2a is already used" },
	{ 2, ENOSPC, DMB_E_RESOURCE_EXHAUSTED, "128 files" },
	{ 2, ENOENT, DMB_E_FAILED_PRECONDITION,
	  "only plain memfds and unlinked tmpfs files can be, not hugetlb" },
	{ 2, EOPNOTSUPP, DMB_E_FAILED_PRECONDITION, "seal" },
	{ 2, EBADF, DMB_E_INTERNAL, "not open" },
	{ 2, ENOMEM, DMB_E_RESOURCE_EXHAUSTED, "every page allocated and pinned" },
	{ 2, EPERM, DMB_E_PERMISSION_DENIED, "(EPERM)" },
	{ 3, ENOENT, DMB_E_NOT_FOUND, "holds no file with token 0x2a" },
	{ 3, EINVAL, DMB_E_INVALID_ARGUMENT, "(EINVAL)" },
	{ 4, EBUSY, DMB_E_UNAVAILABLE, "cannot be finished yet (EBUSY)" },
	{ 4, EINVAL, DMB_E_INVALID_ARGUMENT, "finishing the session" },
};

static void test_ioctl_errors(void **state)
{
	struct dmb_preserver *p = *state;
	int sfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	int mfd = fake_memfd(4096);
	for (size_t i = 0; i < sizeof(errcases) / sizeof(errcases[0]); i++) {
		const struct errcase *c = &errcases[i];
		struct dmb_err e = {0};
		int out = -1, r = 0;
		k.ioctl_errno = c->err;
		switch (c->op) {
		case 0:
			r = p->ops->create_session(p, "s", &out, &e);
			break;
		case 1:
			r = p->ops->retrieve_session(p, "s", &out, &e);
			break;
		case 2:
			r = p->ops->preserve_fd(p, sfd, mfd, 42, &e);
			break;
		case 3:
			r = p->ops->retrieve_fd(p, sfd, 42, &out, &e);
			break;
		case 4:
			r = p->ops->finish(p, sfd, &e);
			break;
		}
		assert_int_equal(r, -c->err);
		assert_int_equal(out, -1);
		if (e.code != c->code || e.sys_errno != c->err || !strstr(e.msg, c->words))
			fail_msg("op %d %s: code %d errno %d \"%s\", expected code %d and \"%s\"",
				 c->op, strerrorname_np(c->err), e.code, e.sys_errno, e.msg, c->code,
				 c->words);
		assert_int_equal(dev_fds_open(), 0); /* closed on failure too */
	}
	close(mfd);
	close(sfd);
}

static void test_specs(void **state)
{
	(void)state;
	struct dmb_preserver *p = (void *)1;
	struct dmb_err e = {0};
	assert_int_equal(preserver_open("none", &p, &e), 0);
	assert_null(p);

	assert_int_equal(preserver_open("luo", &p, &e), 0);
	assert_string_equal(p->ops->name, "luo");
	preserver_close(p);

	assert_int_equal(preserver_open("sim:/run/x.sock", &p, &e), 0);
	assert_string_equal(p->ops->name, "sim");
	preserver_close(p);

	struct stat st;
	bool has_luo = stat("/dev/liveupdate", &st) == 0;
	assert_int_equal(preserver_open("auto", &p, &e), 0);
	if (has_luo) {
		assert_non_null(p);
		assert_string_equal(p->ops->name, "luo");
		preserver_close(p);
	} else {
		assert_null(p);
	}

	static const char *bad[] = { "", "LUO", "luo:", "luo:dev/liveupdate", "sim:", "sim:x",
				     "sim", "luox", "none " };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		dmb_err_clear(&e);
		p = (void *)1;
		if (preserver_open(bad[i], &p, &e) != -EINVAL)
			fail_msg("spec \"%s\" was accepted", bad[i]);
		assert_null(p);
		assert_int_equal(e.code, DMB_E_INVALID_ARGUMENT);
		assert_true(e.msg[0] != '\0');
	}
	dmb_err_clear(&e);
	assert_int_equal(preserver_open("bogus", &p, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "expected luo, luo:/device, sim:/socket, auto or none"));

	char longspec[300] = "sim:/";
	memset(longspec + 5, 'a', 200);
	longspec[205] = '\0';
	dmb_err_clear(&e);
	assert_int_equal(preserver_open(longspec, &p, &e), -ENAMETOOLONG);
	assert_null(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create_session, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retrieve_session, setup, teardown),
		cmocka_unit_test_setup_teardown(test_session_fd_ioctls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_probe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_probe_seals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_device, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ioctl_errors, setup, teardown),
		cmocka_unit_test(test_specs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
