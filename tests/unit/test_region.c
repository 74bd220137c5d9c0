/* Unit tests of regions (daemon/core/region.c): what region_validate_fd
 * accepts as guest memory and why it refuses the rest, and region_register /
 * region_unregister on a real sim backend (map_refs, fd ownership).
 *
 * The hugetlb case runs as its own group, and only where the kernel can
 * create a hugetlb memfd; elsewhere it is not registered at all and main()
 * prints why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "core/core.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define PG ((uint64_t)sysconf(_SC_PAGESIZE))
#define BASE UINT64_C(0x100000000)

/* What region_validate_fd answered. */
struct vres {
	int r;
	uint64_t size, page_size;
	bool writable, hugetlb;
	const char *kind;
	struct dmb_err e;
};

static struct vres validate(int fd, uint64_t size)
{
	struct vres v = { .size = size, .page_size = 0xdead, .writable = true, .hugetlb = true,
			  .kind = "unset" };
	v.r = region_validate_fd(fd, &v.size, &v.page_size, &v.writable, &v.hugetlb, &v.kind, &v.e);
	return v;
}

static void assert_refused(const struct vres *v, int code, const char *needle)
{
	if (v->r >= 0)
		fail_msg("expected %s, the fd was accepted (kind %s)", dmb_code_name(code), v->kind);
	if (v->e.code != code)
		fail_msg("expected %s, got %s: %s", dmb_code_name(code), dmb_code_name(v->e.code), v->e.msg);
	if (!strstr(v->e.msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", v->e.msg, needle);
	/* Nothing is reported for a refused fd. */
	assert_int_equal(v->page_size, 0xdead);
	assert_string_equal(v->kind, "unset");
}

static void assert_accepted(const struct vres *v)
{
	if (v->r != 0)
		fail_msg("expected the fd to be accepted: %d %s", v->r, v->e.msg);
}

static int memfd(uint64_t size, unsigned flags, int seals)
{
	int fd = memfd_create("region-test", MFD_CLOEXEC | flags);
	assert_true(fd >= 0);
	if (size)
		assert_int_equal(ftruncate(fd, (off_t)size), 0);
	if (seals)
		assert_int_equal(fcntl(fd, F_ADD_SEALS, seals), 0);
	return fd;
}

static int reopen(int fd, int flags)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int r = open(path, flags | O_CLOEXEC);
	assert_true(r >= 0);
	return r;
}

static bool fd_closed(int fd)
{
	errno = 0;
	return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

/* ---- region_validate_fd: accepted ------------------------------------------ */

static void test_memfd_sealed(void **state)
{
	(void)state;
	int fd = memfd(16 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	struct vres v = validate(fd, 0);
	assert_accepted(&v);
	assert_int_equal(v.size, 16 * PG);
	assert_int_equal(v.page_size, PG);
	assert_true(v.writable);
	assert_false(v.hugetlb);
	assert_string_equal(v.kind, "memfd");

	/* A smaller size than the file is taken as asked. */
	v = validate(fd, 4 * PG);
	assert_accepted(&v);
	assert_int_equal(v.size, 4 * PG);
	/* Growing seals do not matter, shrinking is what is sealed. */
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW), 0);
	v = validate(fd, 0);
	assert_accepted(&v);
	assert_true(v.writable);
	close(fd);
}

static void test_memfd_write_sealed(void **state)
{
	(void)state;
	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_WRITE);
	struct vres v = validate(fd, 0);
	assert_accepted(&v);
	assert_false(v.writable);
	assert_string_equal(v.kind, "memfd");
	close(fd);

	fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE);
	v = validate(fd, 0);
	assert_accepted(&v);
	assert_false(v.writable);
	close(fd);
}

static void test_memfd_read_only(void **state)
{
	(void)state;
	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	int ro = reopen(fd, O_RDONLY);
	struct vres v = validate(ro, 0);
	assert_accepted(&v);
	assert_false(v.writable);
	assert_int_equal(v.size, 4 * PG);
	assert_string_equal(v.kind, "memfd");
	close(ro);
	close(fd);
}

/* ---- region_validate_fd: refused --------------------------------------------- */

static void test_memfd_unsealed(void **state)
{
	(void)state;
	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, 0);
	struct vres v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "F_SEAL_SHRINK");
	/* Sealed with something else than SHRINK is still unsealed for us. */
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW), 0);
	v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "F_SEAL_SHRINK");
	close(fd);

	/* A memfd created without MFD_ALLOW_SEALING can never be sealed. */
	fd = memfd(4 * PG, 0, 0);
	v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "F_SEAL_SHRINK");
	assert_non_null(strstr(v.e.msg, "cannot be sealed"));
	close(fd);
}

static void test_write_only(void **state)
{
	(void)state;
	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	int wo = reopen(fd, O_WRONLY);
	struct vres v = validate(wo, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "write-only");
	close(wo);
	close(fd);
}

static void test_o_path(void **state)
{
	(void)state;
	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	int p = reopen(fd, O_PATH);
	struct vres v = validate(p, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "O_PATH");
	close(p);
	close(fd);
}

static void test_bad_fd(void **state)
{
	(void)state;
	struct vres v = validate(-1, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "not valid");
	int fd = memfd(PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	close(fd);
	v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "not valid");
}

static void test_pipe(void **state)
{
	(void)state;
	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	struct vres v = validate(p[0], 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "a pipe");
	v = validate(p[1], PG);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "a pipe");
	close(p[0]);
	close(p[1]);
}

static void test_socket(void **state)
{
	(void)state;
	int s[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, s), 0);
	struct vres v = validate(s[0], 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "a socket");
	close(s[0]);
	close(s[1]);
}

static void test_dev_null(void **state)
{
	(void)state;
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	struct vres v = validate(fd, PG);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "a character device");
	close(fd);
}

static void test_directory(void **state)
{
	(void)state;
	int fd = open("/dev/shm", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	struct vres v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "a directory");
	close(fd);
}

/* A directory on a filesystem that is neither tmpfs nor hugetlbfs. */
static const char *disk_dir(void)
{
	static const char *const cands[] = { "/var/tmp", UT_BUILD_DIR };
	for (size_t i = 0; i < sizeof(cands) / sizeof(cands[0]); i++) {
		struct statfs s;
		if (statfs(cands[i], &s) == 0 && (unsigned long)s.f_type != (unsigned long)TMPFS_MAGIC &&
		    (unsigned long)s.f_type != (unsigned long)HUGETLBFS_MAGIC)
			return cands[i];
	}
	return NULL;
}

static void test_disk_file(void **state)
{
	(void)state;
	const char *dir = disk_dir();
	/* main() registers this test only when one was found. */
	assert_non_null(dir);
	char path[4096];
	snprintf(path, sizeof(path), "%s/dmb-region-test-XXXXXX", dir);
	int fd = mkostemp(path, O_CLOEXEC);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(ftruncate(fd, (off_t)(4 * PG)), 0);
	struct vres v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "filesystem of type");
	close(fd);
}

static void test_tmpfs_file(void **state)
{
	(void)state;
	char path[] = "/dev/shm/dmb-region-test-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(ftruncate(fd, (off_t)(4 * PG)), 0);
	/* A plain tmpfs file carries F_SEAL_SEAL from birth. */
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), -1);
	struct vres v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "cannot be sealed");
	assert_non_null(strstr(v.e.msg, "F_SEAL_SHRINK"));
	close(fd);
}

static void test_sizes(void **state)
{
	(void)state;
	/* Empty file, no size asked. */
	int fd = memfd(0, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	struct vres v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "empty");
	/* Empty file, a size asked: past its end. */
	v = validate(fd, PG);
	assert_refused(&v, DMB_E_OUT_OF_RANGE, "past the end");
	close(fd);

	/* A file whose size is not a page multiple. */
	fd = memfd(4 * PG + 100, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	v = validate(fd, 0);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "page size");
	/* ... of which the aligned part may be registered. */
	v = validate(fd, 4 * PG);
	assert_accepted(&v);
	assert_int_equal(v.size, 4 * PG);
	/* A requested size that is not a page multiple. */
	v = validate(fd, PG + 1);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "page size");
	close(fd);

	/* Requested past the end of the file, by one page and by far. */
	fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	v = validate(fd, 5 * PG);
	assert_refused(&v, DMB_E_OUT_OF_RANGE, "past the end");
	v = validate(fd, UINT64_C(1) << 62);
	assert_refused(&v, DMB_E_OUT_OF_RANGE, "past the end");
	v = validate(fd, 4 * PG);
	assert_accepted(&v);
	close(fd);
}

/* ---- hugetlb (only where the kernel makes hugetlb memfds) -------------------- */

static void test_hugetlb(void **state)
{
	(void)state;
	int fd = memfd_create("region-test-huge", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
	assert_true(fd >= 0);
	struct statfs s;
	assert_int_equal(fstatfs(fd, &s), 0);
	const uint64_t hp = (uint64_t)s.f_bsize;
	assert_true(hp > PG);
	/* Sizing the file reserves no pages; validation only looks at it. */
	assert_int_equal(ftruncate(fd, (off_t)(2 * hp)), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);

	struct vres v = validate(fd, 0);
	assert_accepted(&v);
	assert_true(v.hugetlb);
	assert_int_equal(v.page_size, hp);
	assert_int_equal(v.size, 2 * hp);
	assert_string_equal(v.kind, "hugetlbfs");
	assert_true(v.writable);

	/* Sizes are counted in huge pages. */
	v = validate(fd, hp + PG);
	assert_refused(&v, DMB_E_INVALID_ARGUMENT, "page size");
	v = validate(fd, 3 * hp);
	assert_refused(&v, DMB_E_OUT_OF_RANGE, "past the end");
	close(fd);
}

/* ---- region_register / region_unregister -------------------------------------- */

struct fx {
	struct dmb_backend *be;
	struct dmb_core core;
	struct dmb_owner *owner;
	struct dmb_ctx *ctx;
	struct dmb_err e;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	struct dmb_backend_config cfg = { .name = "sim", .sim_populate = true };
	assert_int_equal(dmb_sim_create(&cfg, &f->be, &f->e), 0);
	static const struct dmb_limits lim = { 4, 4, 1024, 4, 0, 0 };
	core_init(&f->core, f->be, &lim);
	f->owner = owner_new(&f->core, 1, 1000, 1000, getpid(), false, NULL);
	assert_non_null(f->owner);
	assert_int_equal(ctx_create(f->owner, "vm", false, &f->ctx, &f->e), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	owner_free(f->owner);
	assert_int_equal(f->core.n_regions, 0);
	assert_int_equal(f->be->ops->pinned_bytes(f->be), 0);
	core_fini(&f->core);
	dmb_backend_destroy(f->be);
	free(f);
	return 0;
}

static int reg(struct fx *f, int fd, uint64_t size, struct dmb_region **out)
{
	dmb_err_clear(&f->e);
	return region_register(f->ctx, fd, size, out, &f->e);
}

static int map1(struct fx *f, uint64_t region, uint64_t off, uint64_t iova, uint64_t len,
		uint32_t prot)
{
	struct dmb_map_req q = { .region_id = region, .offset = off, .iova = iova, .length = len,
				 .prot = prot };
	dmb_err_clear(&f->e);
	return map_batch(f->ctx, &q, 1, &f->e);
}

static int unmap1(struct fx *f, uint64_t iova, uint64_t len)
{
	struct dmb_range rg = { iova, len };
	uint64_t b, c;
	dmb_err_clear(&f->e);
	return unmap_ranges(f->ctx, &rg, 1, &b, &c, &f->e);
}

static void test_register_unregister(void **state)
{
	struct fx *f = *state;
	int fd = memfd(8 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	uint64_t marker = 0xfeedface12345678u;
	assert_int_equal(pwrite(fd, &marker, sizeof(marker), (off_t)(3 * PG)), sizeof(marker));
	int mine = reopen(fd, O_RDONLY);

	struct dmb_region *r = NULL;
	assert_int_equal(reg(f, fd, 0, &r), 0);
	assert_non_null(r);
	assert_true(r->id != 0);
	assert_int_equal(r->fd, fd);          /* the core keeps the fd it was given */
	assert_false(fd_closed(fd));
	assert_int_equal(r->size, 8 * PG);
	assert_true(r->writable);
	assert_string_equal(r->kind, "memfd");
	assert_int_equal(r->map_refs, 0);
	assert_ptr_equal(region_lookup(f->ctx, r->id), r);
	assert_int_equal(f->ctx->n_regions, 1);
	assert_int_equal(f->core.n_regions, 1);
	const uint64_t id = r->id;

	/* Two mappings pin it. */
	assert_int_equal(map1(f, id, 0, BASE, 4 * PG, DMB_PROT_READ | DMB_PROT_WRITE), 0);
	assert_int_equal(map1(f, id, 2 * PG, BASE + 16 * PG, 2 * PG, DMB_PROT_READ), 0);
	assert_int_equal(r->map_refs, 2);

	dmb_err_clear(&f->e);
	int rc = region_unregister(f->ctx, id, &f->e);
	assert_true(rc < 0);
	assert_int_equal(f->e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(f->e.msg, "2 mapping"));
	assert_ptr_equal(region_lookup(f->ctx, id), r);
	assert_false(fd_closed(fd));
	/* Still reachable by a device. */
	uint64_t v = 0;
	struct dmb_err e = { 0 };
	assert_int_equal(f->be->ops->dma(f->ctx->bctx, BASE + 17 * PG, &v, sizeof(v), false, &e), 0);
	assert_int_equal(v, marker);

	assert_int_equal(unmap1(f, BASE, 4 * PG), 0);
	assert_int_equal(r->map_refs, 1);
	dmb_err_clear(&f->e);
	assert_true(region_unregister(f->ctx, id, &f->e) < 0);
	assert_int_equal(f->e.code, DMB_E_FAILED_PRECONDITION);
	assert_non_null(strstr(f->e.msg, "1 mapping"));

	assert_int_equal(unmap1(f, BASE + 16 * PG, 2 * PG), 0);
	dmb_err_clear(&f->e);
	assert_int_equal(region_unregister(f->ctx, id, &f->e), 0);
	assert_null(region_lookup(f->ctx, id));
	assert_int_equal(f->ctx->n_regions, 0);
	assert_int_equal(f->core.n_regions, 0);
	assert_true(fd_closed(fd));
	/* The file itself lives on with the test's fd. */
	assert_int_equal(pread(mine, &v, sizeof(v), (off_t)(3 * PG)), sizeof(v));
	assert_int_equal(v, marker);
	close(mine);

	/* Gone means gone: unregister again, map it. */
	dmb_err_clear(&f->e);
	assert_true(region_unregister(f->ctx, id, &f->e) < 0);
	assert_int_equal(f->e.code, DMB_E_NOT_FOUND);
	assert_true(map1(f, id, 0, BASE, PG, DMB_PROT_READ) < 0);
	assert_int_equal(f->e.code, DMB_E_NOT_FOUND);
}

static void test_register_read_only(void **state)
{
	struct fx *f = *state;
	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	struct dmb_region *r = NULL;
	assert_int_equal(reg(f, reopen(fd, O_RDONLY), 2 * PG, &r), 0);
	assert_false(r->writable);
	assert_int_equal(r->size, 2 * PG);
	assert_true(map1(f, r->id, 0, BASE, PG, DMB_PROT_WRITE) < 0);
	assert_int_equal(f->e.code, DMB_E_PERMISSION_DENIED);
	/* Only the registered size is mappable. */
	assert_true(map1(f, r->id, 2 * PG, BASE, PG, DMB_PROT_READ) < 0);
	assert_int_equal(f->e.code, DMB_E_OUT_OF_RANGE);
	assert_int_equal(map1(f, r->id, PG, BASE, PG, DMB_PROT_READ), 0);
	close(fd);
}

/* region_register owns the fd from the call on: a refused fd is closed. */
static void test_register_closes_fd_on_failure(void **state)
{
	struct fx *f = *state;
	struct dmb_region *r = NULL;

	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, 0); /* unsealed */
	assert_true(reg(f, fd, 0, &r) < 0);
	assert_int_equal(f->e.code, DMB_E_INVALID_ARGUMENT);
	assert_true(fd_closed(fd));

	int p[2];
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_true(reg(f, p[0], PG, &r) < 0);
	assert_true(fd_closed(p[0]));
	assert_false(fd_closed(p[1]));
	close(p[1]);

	fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	assert_true(reg(f, fd, 8 * PG, &r) < 0);
	assert_int_equal(f->e.code, DMB_E_OUT_OF_RANGE);
	assert_true(fd_closed(fd));

	fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	int wo = reopen(fd, O_WRONLY);
	close(fd);
	assert_true(reg(f, wo, 0, &r) < 0);
	assert_true(fd_closed(wo));

	assert_null(r);
	assert_int_equal(f->ctx->n_regions, 0);
	assert_int_equal(f->core.n_regions, 0);

	/* Over the limit (4 here). */
	for (int i = 0; i < 4; i++)
		assert_int_equal(reg(f, memfd(PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK), 0, &r), 0);
	fd = memfd(PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	r = NULL;
	assert_true(reg(f, fd, 0, &r) < 0);
	assert_int_equal(f->e.code, DMB_E_RESOURCE_EXHAUSTED);
	assert_true(fd_closed(fd));
	assert_null(r);
	assert_int_equal(f->ctx->n_regions, 4);
}

/* Regions are per context: another context does not see them, and
 * destroying a context closes its regions' fds. */
static void test_regions_per_context(void **state)
{
	struct fx *f = *state;
	struct dmb_ctx *c2 = NULL;
	assert_int_equal(ctx_create(f->owner, "vm2", false, &c2, &f->e), 0);
	int fd = memfd(4 * PG, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
	struct dmb_region *r = NULL;
	dmb_err_clear(&f->e);
	assert_int_equal(region_register(c2, fd, 0, &r, &f->e), 0);
	assert_null(region_lookup(f->ctx, r->id));
	dmb_err_clear(&f->e);
	assert_true(region_unregister(f->ctx, r->id, &f->e) < 0);
	assert_int_equal(f->e.code, DMB_E_NOT_FOUND);
	assert_false(fd_closed(fd));
	ctx_destroy(c2);
	assert_true(fd_closed(fd));
	assert_int_equal(f->core.n_regions, 0);
}

int main(void)
{
	struct CMUnitTest tests[32];
	size_t n = 0;
#define ADD(t) (tests[n++] = (struct CMUnitTest)cmocka_unit_test(t))
#define ADDF(t) (tests[n++] = (struct CMUnitTest)cmocka_unit_test_setup_teardown(t, setup, teardown))
	ADD(test_memfd_sealed);
	ADD(test_memfd_write_sealed);
	ADD(test_memfd_read_only);
	ADD(test_memfd_unsealed);
	ADD(test_write_only);
	ADD(test_o_path);
	ADD(test_bad_fd);
	ADD(test_pipe);
	ADD(test_socket);
	ADD(test_dev_null);
	ADD(test_directory);
	if (disk_dir())
		ADD(test_disk_file);
	else
		printf("not applicable: test_disk_file (neither /var/tmp nor the build directory is "
		       "on a disk filesystem)\n");
	struct statfs s;
	if (statfs("/dev/shm", &s) == 0 && (unsigned long)s.f_type == (unsigned long)TMPFS_MAGIC)
		ADD(test_tmpfs_file);
	else
		printf("not applicable: test_tmpfs_file (/dev/shm is not a tmpfs mount)\n");
	ADD(test_sizes);
	ADDF(test_register_unregister);
	ADDF(test_register_read_only);
	ADDF(test_register_closes_fd_on_failure);
	ADDF(test_regions_per_context);

	int fails = _cmocka_run_group_tests("region", tests, n, NULL, NULL);

	/* hugetlb: only where the kernel can make a hugetlb memfd at all. */
	int hfd = memfd_create("probe", MFD_CLOEXEC | MFD_HUGETLB);
	if (hfd >= 0) {
		close(hfd);
		const struct CMUnitTest huge[] = { cmocka_unit_test(test_hugetlb) };
		fails += cmocka_run_group_tests_name("region-hugetlb", huge, NULL, NULL);
	} else {
		printf("not applicable: test_hugetlb (memfd_create(MFD_HUGETLB) failed: %s; no huge "
		       "pages configured)\n", strerror(errno));
	}
	return fails;
}
