/* Unit tests of the sim backend's restart hooks (daemon/backend/sim_adopt.c,
 * sim_table.c): its state survives a daemon restart the way a kernel
 * object does, through fds.
 *
 * A restart is modelled with a real second process. A forked child plays
 * the old daemon: it creates the backend, contexts and devices, hands their
 * fds to a "fd store" (a SOCK_SEQPACKET socket, one fd per message, as
 * systemd's FDSTORE=1 keeps them), maps, moves bytes, and then exits or is
 * SIGKILLed. The parent plays the next daemon: it takes the fds back,
 * adopts, names the mappings its journal would name, and proves every
 * mapping by moving bytes through it and reading the memfds with pread().
 * The guest memfds belong to the parent (the VMM), created before the fork.
 *
 * The child must not use cmocka: CK() reports and _exit()s, and the parent
 * checks the exit status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"

#define PG UINT64_C(4096)
#define MiB (UINT64_C(1) << 20)
#define RAM_SIZE (4 * MiB)
#define RAM_PAGES (RAM_SIZE / PG)
#define BAR_PAGES (MiB / PG)
#define BASE UINT64_C(0x10000000)
#define P2P UINT64_C(0x200000000)

#define R DMB_PROT_READ
#define W DMB_PROT_WRITE
#define RW (DMB_PROT_READ | DMB_PROT_WRITE)
#define MEM DMB_PCI_COMMAND_MEMORY
#define MASTER DMB_PCI_COMMAND_MASTER

#define BDF_A "0000:01:00.0"
#define BDF_B "0000:02:00.0"
#define BDF_C "0000:03:00.0"
#define BDF_D "0000:04:00.0"

/* Layout of the state memfd (sim_table.c), for the damage tests. */
#define TAB_HDR 4096
#define TAB_SLOT 32
#define TAB_STATE 28 /* u32 state word in a slot */

/* ---- the child (the old daemon) ------------------------------------------ */

#define CK(x)                                                                         \
	do {                                                                          \
		if (!(x)) {                                                           \
			fprintf(stderr, "child: %s:%d: %s failed\n", __FILE__, __LINE__, #x); \
			_exit(100);                                                   \
		}                                                                     \
	} while (0)

struct old {
	struct dmb_backend *be;
	const struct dmb_backend_ops *ops;
	int tx; /* the fd store */
};

/* FDSTORE=1 FDNAME=<name>: one fd per message, the name as its bytes. */
static bool store_send(int tx, const char *name, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = (void *)name, .iov_len = strlen(name) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	memset(cbuf, 0, sizeof(cbuf));
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(tx, &mh, 0) == (ssize_t)iov.iov_len;
}

static void old_store(struct old *o, const char *obj, const struct dmb_fdset *fs)
{
	char name[64];
	for (size_t i = 0; i < fs->n; i++) {
		snprintf(name, sizeof(name), "%s.%s", obj, fs->e[i].name);
		CK(store_send(o->tx, name, fs->e[i].fd));
	}
}

static void old_begin(struct old *o, int tx)
{
	struct dmb_backend_config cfg = { .name = "sim" };
	struct dmb_err e = { 0 };
	o->tx = tx;
	CK(dmb_sim_create(&cfg, &o->be, &e) == 0);
	o->ops = o->be->ops;
}

static struct dmb_bctx *old_ctx(struct old *o, const char *obj)
{
	struct dmb_bctx *c = NULL;
	struct dmb_fdset fs;
	struct dmb_err e = { 0 };
	CK(o->ops->ctx_open(o->be, &c, &e) == 0);
	CK(o->ops->ctx_fds(c, &fs) == 0);
	old_store(o, obj, &fs);
	return c;
}

static struct dmb_bdev *old_dev(struct old *o, struct dmb_bctx *c, const char *bdf, const char *obj,
				uint16_t cmd)
{
	struct dmb_bdev *d = NULL;
	struct dmb_fdset fs;
	struct dmb_err e = { 0 };
	uint8_t b[2] = { (uint8_t)cmd, (uint8_t)(cmd >> 8) };
	CK(o->ops->dev_open(c, bdf, &d, NULL, &e) == 0);
	CK(o->ops->dev_fds(d, &fs) == 0);
	old_store(o, obj, &fs);
	CK(o->ops->dev_config_write(d, DMB_PCI_COMMAND, b, 2, &e) == 0);
	return d;
}

static struct dmb_bregion *old_region(struct old *o, int fd, bool writable)
{
	struct dmb_region_desc d = { .fd = fd, .size = RAM_SIZE, .page_size = PG, .writable = writable };
	struct dmb_bregion *r = NULL;
	struct dmb_err e = { 0 };
	CK(o->ops->region_open(o->be, &d, &r, &e) == 0);
	return r;
}

/* Runs fn in a child process; returns its pid. */
static pid_t spawn(void (*fn)(void *), void *arg)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		fn(arg);
		_exit(0);
	}
	return pid;
}

static void reap_ok(pid_t pid)
{
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("the old process ended with status 0x%x", st);
}

/* ---- the parent (the next daemon) ------------------------------------------ */

#define STORE_MAX 64
struct store {
	int tx, rx;
	size_t n;
	struct {
		char name[64];
		int fd;
	} e[STORE_MAX];
};

static void store_open(struct store *s)
{
	int sv[2];
	memset(s, 0, sizeof(*s));
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	s->tx = sv[0];
	s->rx = sv[1];
}

/* What systemd hands the next process (the sender may be dead by now). */
static void store_collect(struct store *s)
{
	for (;;) {
		char cbuf[CMSG_SPACE(sizeof(int))], name[64];
		struct iovec iov = { .iov_base = name, .iov_len = sizeof(name) - 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		ssize_t n = recvmsg(s->rx, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0) {
			assert_int_equal(errno, EAGAIN);
			return;
		}
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		assert_non_null(cm);
		assert_true(s->n < STORE_MAX);
		name[n] = '\0';
		snprintf(s->e[s->n].name, sizeof(s->e[s->n].name), "%s", name);
		memcpy(&s->e[s->n].fd, CMSG_DATA(cm), sizeof(int));
		s->n++;
	}
}

static int store_fd(const struct store *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->e[i].name, name) == 0)
			return s->e[i].fd;
	return -1;
}

static void store_close(struct store *s)
{
	for (size_t i = 0; i < s->n; i++)
		close(s->e[i].fd);
	close(s->tx);
	close(s->rx);
	s->n = 0;
}

/* The fd set of one stored object, as duplicates (the store keeps its own
 * fds, so that the test can still read the files after the backend took
 * the duplicates). */
static void store_fdset(const struct store *s, const char *obj, struct dmb_fdset *fs)
{
	size_t plen = strlen(obj);
	memset(fs, 0, sizeof(*fs));
	for (size_t i = 0; i < s->n; i++) {
		if (strncmp(s->e[i].name, obj, plen) != 0 || s->e[i].name[plen] != '.')
			continue;
		assert_true(fs->n < DMB_MAX_OBJ_FDS);
		fs->e[fs->n].fd = fcntl(s->e[i].fd, F_DUPFD_CLOEXEC, 3);
		assert_true(fs->e[fs->n].fd >= 0);
		snprintf(fs->e[fs->n].name, sizeof(fs->e[fs->n].name), "%s", s->e[i].name + plen + 1);
		fs->n++;
	}
}

static void fdset_close(struct dmb_fdset *fs)
{
	for (size_t i = 0; i < fs->n; i++)
		close(fs->e[i].fd);
}

struct fx {
	struct store st;
	int ram_a, ram_b, ram_b_ro; /* guest memory, the parent's (the VMM's) */
	_Atomic int *shared;        /* MAP_SHARED page for the child's progress */
	struct dmb_backend *be;     /* the next daemon's backend */
	const struct dmb_backend_ops *ops;
	struct dmb_err e;
};

static uint8_t pattern(uint64_t off)
{
	return (uint8_t)(off * 7 + 3);
}

static int make_memfd(uint64_t size)
{
	int fd = memfd_create("sim-restart-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	uint8_t *buf = malloc(size);
	assert_non_null(buf);
	for (uint64_t i = 0; i < size; i++)
		buf[i] = pattern(i);
	assert_int_equal(pwrite(fd, buf, size, 0), (ssize_t)size);
	free(buf);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
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

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	store_open(&f->st);
	f->ram_a = make_memfd(RAM_SIZE);
	f->ram_b = make_memfd(RAM_SIZE);
	f->ram_b_ro = reopen(f->ram_b, O_RDONLY);
	f->shared = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(f->shared != MAP_FAILED);
	struct dmb_backend_config cfg = { .name = "sim" };
	assert_int_equal(dmb_sim_create(&cfg, &f->be, &f->e), 0);
	f->ops = f->be->ops;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	dmb_backend_destroy(f->be);
	store_close(&f->st);
	close(f->ram_a);
	close(f->ram_b);
	close(f->ram_b_ro);
	munmap((void *)f->shared, PG);
	free(f);
	return 0;
}

static int try_adopt_ctx(struct fx *f, const char *obj, struct dmb_bctx **c)
{
	struct dmb_fdset fs;
	store_fdset(&f->st, obj, &fs);
	dmb_err_clear(&f->e);
	int r = f->ops->ctx_adopt(f->be, &fs, c, &f->e);
	if (r < 0)
		fdset_close(&fs); /* still the caller's */
	return r;
}

static struct dmb_bctx *adopt_ctx(struct fx *f, const char *obj)
{
	struct dmb_bctx *c = NULL;
	int r = try_adopt_ctx(f, obj, &c);
	if (r < 0)
		fail_msg("ctx_adopt(%s): %d %s", obj, r, f->e.msg);
	return c;
}

static int try_adopt_dev(struct fx *f, struct dmb_bctx *c, const char *bdf, const char *obj,
			 struct dmb_bdev **d)
{
	struct dmb_fdset fs;
	store_fdset(&f->st, obj, &fs);
	dmb_err_clear(&f->e);
	int r = f->ops->dev_adopt(c, bdf, &fs, d, NULL, &f->e);
	if (r < 0)
		fdset_close(&fs);
	return r;
}

static struct dmb_bregion *open_region(struct fx *f, int fd, bool writable)
{
	struct dmb_region_desc d = { .fd = fd, .size = RAM_SIZE, .page_size = PG, .writable = writable };
	struct dmb_bregion *r = NULL;
	assert_int_equal(f->ops->region_open(f->be, &d, &r, &f->e), 0);
	return r;
}

static int map_adopt(struct fx *f, struct dmb_bctx *c, struct dmb_bregion *r, uint64_t off,
		     uint64_t iova, uint64_t len, uint32_t prot)
{
	dmb_err_clear(&f->e);
	return f->ops->map_adopt(c, r, off, iova, len, prot, &f->e);
}

static int dma(struct fx *f, struct dmb_bctx *c, uint64_t iova, void *buf, size_t len, bool to_mem)
{
	dmb_err_clear(&f->e);
	return f->ops->dma(c, iova, buf, len, to_mem, &f->e);
}

static void assert_msg_has(const struct fx *f, const char *needle)
{
	if (!strstr(f->e.msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", f->e.msg, needle);
}

static void assert_fd_bytes(int fd, uint64_t off, const uint8_t *want, size_t len)
{
	uint8_t got[64];
	assert_true(len <= sizeof(got));
	assert_int_equal(pread(fd, got, len, (off_t)off), (ssize_t)len);
	assert_memory_equal(got, want, len);
}

static void marker(uint8_t *buf, size_t len, uint32_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(seed * 31 + i * 7 + 1);
}

/* ---- a fixed set of mappings: RAM, read-only RAM and BAR ------------------- */

enum src { SRC_A, SRC_B_RO, SRC_BAR };

struct spec {
	int ctx;          /* 1 or 2 */
	enum src src;
	uint64_t iova, off, len;
	uint32_t prot;
};

#define N_SPECS 72
static struct spec specs[N_SPECS];

/* ctx1: 48 RAM areas of region A (RW, one to eight pages, packed with
 * holes), 12 of region B read-only, 4 of device B's BAR0; ctx2: 8 of A.
 * The sources of writable areas do not overlap, so that each one's marker
 * bytes stay its own. */
static void make_specs(void)
{
	uint64_t iova1 = BASE, iova2 = BASE;
	for (unsigned i = 0; i < N_SPECS; i++) {
		uint64_t len = (1 + (i * 5) % 8) * PG, off = i * 8 * PG;
		if (i < 48) {
			specs[i] = (struct spec){ 1, SRC_A, iova1, off, len, RW };
			iova1 += len + (i % 3) * PG;
		} else if (i < 60) {
			specs[i] = (struct spec){ 1, SRC_B_RO, iova1, (i * 29 % (RAM_PAGES - 8)) * PG, len, R };
			iova1 += len;
		} else if (i < 64) {
			specs[i] = (struct spec){ 1, SRC_BAR, P2P + (i - 60) * 16 * PG, (i - 60) * 32 * PG,
						  len, RW };
		} else {
			specs[i] = (struct spec){ 2, SRC_A, iova2, off, len, RW };
			iova2 += len;
		}
	}
}

static uint64_t specs_ram_bytes(void)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < N_SPECS; i++)
		if (specs[i].src != SRC_BAR)
			n += specs[i].len;
	return n;
}

struct fixed_arg {
	struct fx *f;
	bool unmap_all_first; /* map, unmap_all, map again */
	bool close_ctx;       /* ctx_close at the end: no restart */
	bool destroy;         /* a clean stop: prepare_handover, destroy, exit */
};

/* The old daemon: two contexts, A in ctx1 (bus master), B in ctx2 (decoding
 * memory, its BAR mapped in ctx1), every spec mapped, and marker bytes
 * written through every writable mapping by DMA. */
static void old_fixed(void *argp)
{
	struct fixed_arg *arg = argp;
	struct fx *f = arg->f;
	struct old o;
	struct dmb_err e = { 0 };
	uint64_t n;

	old_begin(&o, f->st.tx);
	struct dmb_bctx *c1 = old_ctx(&o, "c1"), *c2 = old_ctx(&o, "c2");
	struct dmb_bdev *a = old_dev(&o, c1, BDF_A, "A", MASTER);
	struct dmb_bdev *b = old_dev(&o, c2, BDF_B, "B", MEM);
	struct dmb_bregion *ra = old_region(&o, f->ram_a, true);
	struct dmb_bregion *rb = old_region(&o, f->ram_b_ro, false);

	for (int round = arg->unmap_all_first ? 0 : 1; round < 2; round++) {
		for (unsigned i = 0; i < N_SPECS; i++) {
			const struct spec *s = &specs[i];
			struct dmb_bctx *c = s->ctx == 1 ? c1 : c2;
			if (s->src == SRC_BAR)
				CK(o.ops->map_bar(c, b, 0, s->off, s->iova, s->len, s->prot, &e) == 0);
			else
				CK(o.ops->map(c, s->src == SRC_A ? ra : rb, s->off, s->iova, s->len,
					      s->prot, &e) == 0);
		}
		if (round == 0) {
			CK(o.ops->unmap_all(c1, &n, &e) == 0);
			CK(o.ops->unmap_all(c2, &n, &e) == 0);
		}
	}
	for (unsigned i = 0; i < N_SPECS; i++) {
		const struct spec *s = &specs[i];
		uint8_t m[16];
		if (!(s->prot & W))
			continue;
		marker(m, sizeof(m), i);
		if (s->src == SRC_BAR) /* through device A, a real bus master */
			CK(o.ops->dev_dma(a, s->iova + s->len - sizeof(m), m, sizeof(m), true, &e) == 0);
		else
			CK(o.ops->dma(s->ctx == 1 ? c1 : c2, s->iova + s->len - sizeof(m), m,
				      sizeof(m), true, &e) == 0);
	}
	if (arg->close_ctx) {
		o.ops->ctx_close(c1);
		o.ops->ctx_close(c2);
	}
	if (arg->destroy) {
		CK(o.ops->ctx_prepare_handover(c1, &e) == 0);
		CK(o.ops->ctx_prepare_handover(c2, &e) == 0);
		dmb_backend_destroy(o.be); /* must not clear anything */
	}
	/* Exit without closing anything: the kernel objects stay. */
}

/* The marker bytes the old process wrote through spec i, in its source. */
static void check_old_marker(struct fx *f, unsigned i)
{
	const struct spec *s = &specs[i];
	uint8_t m[16];
	marker(m, sizeof(m), i);
	int fd = s->src == SRC_BAR ? store_fd(&f->st, "B.bar0") : f->ram_a;
	assert_fd_bytes(fd, s->off + s->len - sizeof(m), m, sizeof(m));
}

/* Proves spec i by DMA: a write lands in the source at the right offset
 * (pread), a read returns the source's bytes. */
static void prove_spec(struct fx *f, struct dmb_bctx *c, unsigned i, uint32_t seed)
{
	const struct spec *s = &specs[i];
	int fd = s->src == SRC_BAR ? store_fd(&f->st, "B.bar0") : s->src == SRC_A ? f->ram_a : f->ram_b;
	uint8_t m[24], got[24], want[24];

	if (s->prot & W) {
		marker(m, sizeof(m), seed + i);
		assert_int_equal(dma(f, c, s->iova, m, sizeof(m), true), 0);
		assert_fd_bytes(fd, s->off, m, sizeof(m));
	}
	assert_int_equal(dma(f, c, s->iova + s->len - sizeof(got), got, sizeof(got), false), 0);
	assert_int_equal(pread(fd, want, sizeof(want), (off_t)(s->off + s->len - sizeof(want))),
			 (ssize_t)sizeof(want));
	assert_memory_equal(got, want, sizeof(got));
}

/* ---- tests --------------------------------------------------------------- */

static void test_exports(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c = NULL;
	struct dmb_bdev *d = NULL;
	struct dmb_fdset fs;
	bool adopt = false;

	for (const char *const *p = f->be->features; *p; p++)
		adopt |= strcmp(*p, "adopt") == 0;
	assert_true(adopt);
	assert_int_equal(f->ops->ctx_open(f->be, &c, &f->e), 0);
	assert_int_equal(f->ops->ctx_fds(c, &fs), 0);
	assert_int_equal(fs.n, 1);
	assert_string_equal(fs.e[0].name, "state");
	assert_true(fs.e[0].fd >= 0);
	assert_int_equal(f->ops->dev_open(c, BDF_A, &d, NULL, &f->e), 0);
	assert_int_equal(f->ops->dev_fds(d, &fs), 0);
	assert_int_equal(fs.n, 2);
	assert_string_equal(fs.e[0].name, "config");
	assert_int_equal(fs.e[0].fd, f->ops->dev_fd(d));
	assert_string_equal(fs.e[1].name, "bar0");
	assert_int_equal(f->ops->ctx_prepare_handover(c, &f->e), 0);
	assert_int_equal(f->ops->ctx_fds(NULL, &fs), -EINVAL);
	assert_int_equal(f->ops->dev_fds(NULL, &fs), -EINVAL);
	assert_int_equal(f->ops->ctx_prepare_handover(NULL, NULL), -EINVAL);
	assert_int_equal(f->ops->adopt_finish(NULL, NULL, NULL), -EINVAL);
	f->ops->ctx_close(c);
}

/* The main scenario, after a clean exit or a clean stop with destroy. */
static void restart_fixed(struct fx *f, bool unmap_all_first, bool destroy)
{
	struct fixed_arg arg = { .f = f, .unmap_all_first = unmap_all_first, .destroy = destroy };
	uint64_t stray = 99;
	struct dmb_bdev *a = NULL, *b = NULL;
	uint8_t byte;

	make_specs();
	reap_ok(spawn(old_fixed, &arg));
	store_collect(&f->st);
	assert_int_equal(f->st.n, 2 + 2 * 2);

	/* 1. Contexts: every RAM area counts as pinned again at once. */
	struct dmb_bctx *c1 = adopt_ctx(f, "c1"), *c2 = adopt_ctx(f, "c2");
	assert_int_equal(f->ops->pinned_bytes(f->be), specs_ram_bytes());
	/* Not claimed yet: the sim cannot reach the source, and says so. */
	assert_int_equal(dma(f, c1, specs[0].iova, &byte, 1, false), -EFAULT);
	assert_msg_has(f, "map_adopt");

	/* 2. Devices, in the context that holds each. */
	assert_int_equal(try_adopt_dev(f, c2, BDF_B, "B", &b), 0);
	assert_int_equal(try_adopt_dev(f, c1, BDF_A, "A", &a), 0);

	/* The old process's writes are all still there: nothing was unmapped
	 * or reset on the way. */
	for (unsigned i = 0; i < N_SPECS; i++)
		if (specs[i].prot & W)
			check_old_marker(f, i);

	/* 3-4. Regions again, then every journaled mapping. */
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);
	struct dmb_bregion *rb = open_region(f, f->ram_b_ro, false);
	for (unsigned i = 0; i < N_SPECS; i++) {
		const struct spec *s = &specs[i];
		struct dmb_bctx *c = s->ctx == 1 ? c1 : c2;
		int r;
		dmb_err_clear(&f->e);
		if (s->src == SRC_BAR)
			r = f->ops->map_bar_adopt(c, b, 0, s->off, s->iova, s->len, s->prot, &f->e);
		else
			r = map_adopt(f, c, s->src == SRC_A ? ra : rb, s->off, s->iova, s->len, s->prot);
		if (r != 0)
			fail_msg("adopting spec %u: %d %s", i, r, f->e.msg);
	}
	assert_int_equal(f->ops->adopt_finish(c1, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(f->ops->adopt_finish(c2, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), specs_ram_bytes());

	/* DMA through every mapping moves the right bytes. */
	for (unsigned i = 0; i < N_SPECS; i++)
		prove_spec(f, specs[i].ctx == 1 ? c1 : c2, i, 1000);
	/* Device A is attached to c1 again and masters: its own DMA works. */
	uint8_t m[8];
	marker(m, sizeof(m), 77);
	assert_int_equal(f->ops->dev_dma(a, specs[3].iova, m, sizeof(m), true, &f->e), 0);
	assert_fd_bytes(f->ram_a, specs[3].off, m, sizeof(m));

	/* And the context works on as usual: unmap, map, close. */
	uint64_t n = 0;
	assert_int_equal(f->ops->unmap(c1, specs[0].iova, specs[0].len, &n, &f->e), 0);
	assert_int_equal(n, specs[0].len);
	assert_int_equal(dma(f, c1, specs[0].iova, &byte, 1, false), -EFAULT);
	assert_int_equal(f->ops->map(c1, ra, 0, specs[0].iova, specs[0].len, RW, &f->e), 0);
	f->ops->ctx_close(c1);
	f->ops->ctx_close(c2);
	f->ops->region_close(ra);
	f->ops->region_close(rb);
}

static void test_restart_after_exit(void **state)
{
	restart_fixed(*state, false, false);
}

static void test_restart_after_clean_stop(void **state)
{
	restart_fixed(*state, true, true);
}

/* ctx_close is not a restart: it unmaps everything, in the state too. */
static void test_ctx_close_is_not_a_restart(void **state)
{
	struct fx *f = *state;
	struct fixed_arg arg = { .f = f, .close_ctx = true };
	uint64_t stray = 99;

	make_specs();
	reap_ok(spawn(old_fixed, &arg));
	store_collect(&f->st);
	struct dmb_bctx *c1 = adopt_ctx(f, "c1");
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);
	assert_int_equal(map_adopt(f, c1, ra, specs[0].off, specs[0].iova, specs[0].len, RW), -ENOENT);
	/* The devices were closed with it. */
	struct dmb_bdev *a = NULL;
	assert_int_equal(try_adopt_dev(f, c1, BDF_A, "A", &a), -ENOENT);
	assert_int_equal(f->ops->adopt_finish(c1, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	f->ops->ctx_close(c1);
	f->ops->region_close(ra);
}

/* ---- what map_adopt refuses, and strays --------------------------------- */

static void old_three(void *argp)
{
	struct fx *f = argp;
	struct old o;
	struct dmb_err e = { 0 };
	old_begin(&o, f->st.tx);
	struct dmb_bctx *c = old_ctx(&o, "c");
	struct dmb_bregion *ra = old_region(&o, f->ram_a, true);
	CK(o.ops->map(c, ra, 0, BASE, 4 * PG, RW, &e) == 0);           /* X */
	CK(o.ops->map(c, ra, 8 * PG, BASE + 16 * PG, PG, R, &e) == 0); /* Y */
	CK(o.ops->map(c, ra, 64 * PG, BASE + 32 * PG, 2 * PG, RW, &e) == 0); /* Z */
}

static void test_map_adopt_refusals_and_strays(void **state)
{
	struct fx *f = *state;
	uint64_t stray = 0;
	uint8_t byte = 0;

	reap_ok(spawn(old_three, f));
	store_collect(&f->st);
	struct dmb_bctx *c = adopt_ctx(f, "c");
	assert_int_equal(f->ops->pinned_bytes(f->be), 7 * PG);
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);

	/* Journaled but absent: the daemon maps it afresh. */
	assert_int_equal(map_adopt(f, c, ra, 0, BASE + 64 * PG, PG, RW), -ENOENT);
	assert_msg_has(f, "map it again");
	/* Same bytes, another file: not the same memory. */
	int other = make_memfd(RAM_SIZE);
	struct dmb_bregion *ro = open_region(f, other, true);
	assert_int_equal(map_adopt(f, c, ro, 0, BASE, 4 * PG, RW), -ESTALE);
	assert_msg_has(f, "another file");
	/* Conflicts: another extent, offset, prot or kind. */
	assert_int_equal(map_adopt(f, c, ra, 0, BASE, 2 * PG, RW), -EEXIST);
	assert_int_equal(map_adopt(f, c, ra, 0, BASE + PG, 4 * PG, RW), -EEXIST);
	assert_int_equal(map_adopt(f, c, ra, PG, BASE, 4 * PG, RW), -EINVAL);
	assert_msg_has(f, "offset");
	assert_int_equal(map_adopt(f, c, ra, 0, BASE, 4 * PG, R), -EINVAL);
	assert_msg_has(f, "prot");
	struct dmb_bdev *d = NULL;
	assert_int_equal(f->ops->dev_open(c, BDF_B, &d, NULL, &f->e), 0);
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->map_bar_adopt(c, d, 0, 0, BASE, 4 * PG, RW, &f->e), -EINVAL);
	assert_msg_has(f, "RAM");
	/* A read-only registration cannot claim a writable mapping. */
	int ro_fd = reopen(f->ram_a, O_RDONLY);
	struct dmb_bregion *rro = open_region(f, ro_fd, false);
	close(ro_fd);
	assert_int_equal(map_adopt(f, c, rro, 0, BASE, 4 * PG, RW), -EINVAL);
	/* Bad arguments are refused as map refuses them. */
	assert_int_equal(map_adopt(f, c, ra, 0, BASE, 0, RW), -EINVAL);
	assert_int_equal(map_adopt(f, c, ra, 0, BASE, PG, 0), -EINVAL);

	/* X and Y claimed, Z left to adopt_finish. */
	assert_int_equal(map_adopt(f, c, ra, 0, BASE, 4 * PG, RW), 0);
	assert_int_equal(map_adopt(f, c, ra, 0, BASE, 4 * PG, RW), -EEXIST);
	assert_msg_has(f, "adopted already");
	assert_int_equal(map_adopt(f, c, rro, 8 * PG, BASE + 16 * PG, PG, R), 0);
	assert_int_equal(dma(f, c, BASE + 32 * PG, &byte, 1, false), -EFAULT);
	assert_int_equal(f->ops->adopt_finish(c, &stray, &f->e), 0);
	assert_int_equal(stray, 1);
	assert_int_equal(f->ops->pinned_bytes(f->be), 5 * PG);
	assert_int_equal(dma(f, c, BASE + 32 * PG, &byte, 1, false), -EFAULT);
	assert_int_equal(dma(f, c, BASE + 16 * PG + 5, &byte, 1, false), 0);
	assert_int_equal(byte, pattern(8 * PG + 5));
	/* The stray's IOVA is free again; a second finish finds nothing. */
	assert_int_equal(f->ops->map(c, ra, 64 * PG, BASE + 32 * PG, 2 * PG, RW, &f->e), 0);
	assert_int_equal(f->ops->adopt_finish(c, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), 7 * PG);

	f->ops->ctx_close(c);
	f->ops->region_close(ra);
	f->ops->region_close(ro);
	f->ops->region_close(rro);
	close(other);
}

/* Half of 2000 areas claimed: the other half are strays, pinned exact. */
static void old_many(void *argp)
{
	struct fx *f = argp;
	struct old o;
	struct dmb_err e = { 0 };
	old_begin(&o, f->st.tx);
	struct dmb_bctx *c = old_ctx(&o, "c");
	struct dmb_bregion *ra = old_region(&o, f->ram_a, true);
	for (unsigned i = 0; i < 2000; i++)
		CK(o.ops->map(c, ra, (i % (RAM_PAGES - 2)) * PG, BASE + 2 * i * PG, (1 + i % 2) * PG, RW,
			      &e) == 0);
}

static void test_many_half_claimed(void **state)
{
	struct fx *f = *state;
	uint64_t stray = 0, want = 0;
	uint8_t b;

	reap_ok(spawn(old_many, f));
	store_collect(&f->st);
	struct dmb_bctx *c = adopt_ctx(f, "c");
	assert_int_equal(f->ops->pinned_bytes(f->be), 1000 * PG + 1000 * 2 * PG);
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);
	for (unsigned i = 0; i < 2000; i += 2) {
		assert_int_equal(map_adopt(f, c, ra, (i % (RAM_PAGES - 2)) * PG, BASE + 2 * i * PG, PG, RW),
				 0);
		want += PG;
	}
	assert_int_equal(f->ops->adopt_finish(c, &stray, &f->e), 0);
	assert_int_equal(stray, 1000);
	assert_int_equal(f->ops->pinned_bytes(f->be), want);
	for (unsigned i = 0; i < 2000; i++) {
		int r = dma(f, c, BASE + 2 * i * PG + 9, &b, 1, false);
		if (i % 2 == 0) {
			assert_int_equal(r, 0);
			assert_int_equal(b, pattern((i % (RAM_PAGES - 2)) * PG + 9));
		} else {
			assert_int_equal(r, -EFAULT);
		}
	}
	f->ops->ctx_close(c);
	f->ops->region_close(ra);
}

/* ---- devices --------------------------------------------------------------- */

static void old_devices(void *argp)
{
	struct fx *f = argp;
	struct old o;
	struct dmb_err e = { 0 };
	uint8_t scratch[4] = { 0xde, 0xad, 0xbe, 0xef }, m[32];

	old_begin(&o, f->st.tx);
	struct dmb_bctx *c1 = old_ctx(&o, "c1"), *c2 = old_ctx(&o, "c2");
	struct dmb_bdev *a = old_dev(&o, c1, BDF_A, "A", MEM | MASTER);
	struct dmb_bdev *b = old_dev(&o, c2, BDF_B, "B", MASTER);
	struct dmb_bdev *cc = old_dev(&o, c1, BDF_C, "C", MEM);
	(void)old_dev(&o, c1, BDF_D, "D", MEM | MASTER); /* nobody adopts D */
	struct dmb_bregion *ra = old_region(&o, f->ram_a, true);
	CK(o.ops->dev_config_write(a, 0x44, scratch, sizeof(scratch), &e) == 0);
	CK(o.ops->dev_reset(a, &e) == 0);  /* reset count 1, command kept */
	/* B writes into A's BAR through a P2P mapping in c2. */
	CK(o.ops->map_bar(c2, a, 0, 0x8000, P2P, 4 * PG, RW, &e) == 0);
	marker(m, sizeof(m), 5);
	CK(o.ops->dev_dma(b, P2P + 0x100, m, sizeof(m), true, &e) == 0);
	/* A masters into RAM in c1. */
	CK(o.ops->map(c1, ra, 0, BASE, 4 * PG, RW, &e) == 0);
	o.ops->dev_close(cc); /* detached before the restart */
	f->shared[0] = 1;
}

static void test_devices(void **state)
{
	struct fx *f = *state;
	struct dmb_bdev *a = NULL, *b = NULL, *cc = NULL, *x = NULL;
	uint8_t buf[4], m[32], got[32];
	uint64_t stray = 9;

	reap_ok(spawn(old_devices, f));
	store_collect(&f->st);
	assert_int_equal(f->shared[0], 1);
	struct dmb_bctx *c1 = adopt_ctx(f, "c1"), *c2 = adopt_ctx(f, "c2");

	/* Refusals, each leaving the fds to the caller. */
	assert_int_equal(try_adopt_dev(f, c2, BDF_A, "A", &x), -ENOENT);  /* wrong context */
	assert_msg_has(f, "not attached to this context");
	assert_int_equal(try_adopt_dev(f, c1, BDF_C, "C", &x), -ENOENT);  /* closed before */
	assert_int_equal(try_adopt_dev(f, c1, BDF_A, "B", &x), -ESTALE);  /* B's memfds */
	assert_int_equal(try_adopt_dev(f, c1, "0000:09:00.0", "A", &x), -ENODEV);
	assert_int_equal(try_adopt_dev(f, c1, "nonsense", "A", &x), -EINVAL);
	struct dmb_fdset fs;
	store_fdset(&f->st, "A", &fs);
	int t = fs.e[0].fd; /* config and bar0 swapped: wrong sizes */
	fs.e[0].fd = fs.e[1].fd;
	fs.e[1].fd = t;
	assert_int_equal(f->ops->dev_adopt(c1, BDF_A, &fs, &x, NULL, &f->e), -EINVAL);
	fs.n = 1; /* bar0 missing */
	assert_int_equal(f->ops->dev_adopt(c1, BDF_A, &fs, &x, NULL, &f->e), -EINVAL);
	fs.n = 2;
	snprintf(fs.e[1].name, sizeof(fs.e[1].name), "bar1");
	assert_int_equal(f->ops->dev_adopt(c1, BDF_A, &fs, &x, NULL, &f->e), -EINVAL);
	fdset_close(&fs);

	struct dmb_dev_info info;
	store_fdset(&f->st, "A", &fs);
	assert_int_equal(f->ops->dev_adopt(c1, BDF_A, &fs, &a, &info, &f->e), 0);
	assert_int_equal(info.vendor, 0x1234);
	assert_string_equal(info.group, "sim-0");
	assert_int_equal(try_adopt_dev(f, c1, BDF_A, "A", &x), -EEXIST);
	assert_int_equal(try_adopt_dev(f, c2, BDF_B, "B", &b), 0);

	/* Config space as it was: command, scratch, reset count. */
	assert_int_equal(f->ops->dev_config_read(a, DMB_PCI_COMMAND, buf, 2, &f->e), 0);
	assert_int_equal(buf[0] | buf[1] << 8, MEM | MASTER);
	assert_int_equal(f->ops->dev_config_read(a, 0x44, buf, 4, &f->e), 0);
	assert_int_equal(buf[0], 0xde);
	assert_int_equal(buf[3], 0xef);
	assert_int_equal(f->ops->dev_config_read(a, 0x40, buf, 4, &f->e), 0);
	assert_int_equal(buf[0], 1);
	/* The device fd is the same file the client already holds. */
	struct stat s1, s2;
	assert_int_equal(fstat(f->ops->dev_fd(a), &s1), 0);
	assert_int_equal(fstat(store_fd(&f->st, "A.config"), &s2), 0);
	assert_true(s1.st_ino == s2.st_ino && s1.st_dev == s2.st_dev);

	/* The P2P mapping of A's BAR in c2, and B's bytes in it. */
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->map_bar_adopt(c2, b, 0, 0x8000, P2P, 4 * PG, RW, &f->e), -ESTALE);
	assert_msg_has(f, BDF_A);
	assert_int_equal(f->ops->map_bar_adopt(c2, a, 0, 0x8000, P2P, 4 * PG, RW, &f->e), 0);
	marker(m, sizeof(m), 5);
	assert_fd_bytes(store_fd(&f->st, "A.bar0"), 0x8100, m, sizeof(m));
	assert_int_equal(f->ops->dev_dma(b, P2P + 0x100, got, sizeof(got), false, &f->e), 0);
	assert_memory_equal(got, m, sizeof(m));
	/* A is attached to c1 and masters there. */
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);
	assert_int_equal(map_adopt(f, c1, ra, 0, BASE, 4 * PG, RW), 0);
	assert_int_equal(f->ops->dev_dma(a, BASE + 8, got, 4, false, &f->e), 0);
	assert_int_equal(got[0], pattern(8));

	/* The client's own copy of the config fd still drives the device. */
	uint8_t off[2] = { 0, 0 };
	assert_int_equal(pwrite(store_fd(&f->st, "A.config"), off, 2, DMB_PCI_COMMAND), 2);
	assert_int_equal(f->ops->dev_dma(b, P2P, got, 1, false, &f->e), -EIO);
	assert_int_equal(f->ops->dev_dma(a, BASE, got, 1, false, &f->e), -EPERM);

	/* D was attached and nobody adopted it: finish drops the attachment,
	 * and it can be opened afresh. */
	assert_int_equal(f->ops->adopt_finish(c1, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(f->ops->adopt_finish(c2, &stray, &f->e), 0);
	assert_int_equal(f->ops->dev_open(c1, BDF_D, &x, NULL, &f->e), 0);
	assert_int_equal(f->ops->dev_open(c1, BDF_C, &cc, NULL, &f->e), 0);

	f->ops->ctx_close(c2);
	f->ops->ctx_close(c1);
	f->ops->region_close(ra);
}

/* ---- damage ----------------------------------------------------------------- */

static void old_one(void *argp)
{
	struct fx *f = argp;
	struct old o;
	struct dmb_err e = { 0 };
	old_begin(&o, f->st.tx);
	struct dmb_bctx *c = old_ctx(&o, "c");
	struct dmb_bregion *ra = old_region(&o, f->ram_a, true);
	CK(o.ops->map(c, ra, 0, BASE, PG, RW, &e) == 0); /* slot 0 ra's file, slot 1 the area */
}

static void test_damage_refused(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c = NULL;
	uint8_t v, orig;

	reap_ok(spawn(old_one, f));
	store_collect(&f->st);
	int fd = store_fd(&f->st, "c.state");

	/* A stray write into a live record: its check no longer matches. */
	assert_int_equal(pread(fd, &orig, 1, TAB_HDR + 9), 1);
	v = orig ^ 0x10;
	assert_int_equal(pwrite(fd, &v, 1, TAB_HDR + 9), 1);
	assert_int_equal(try_adopt_ctx(f, "c", &c), -EBADMSG);
	assert_msg_has(f, "slot 0");
	assert_int_equal(pwrite(fd, &orig, 1, TAB_HDR + 9), 1);
	/* A header that is not ours. */
	assert_int_equal(pread(fd, &orig, 1, 0), 1);
	v = 'X';
	assert_int_equal(pwrite(fd, &v, 1, 0), 1);
	assert_int_equal(try_adopt_ctx(f, "c", &c), -EBADMSG);
	assert_msg_has(f, "magic");
	assert_int_equal(pwrite(fd, &orig, 1, 0), 1);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);

	/* Fd sets the sim never exported. */
	struct dmb_fdset fs = { .n = 1 };
	int unsealed = memfd_create("not-a-state", MFD_CLOEXEC);
	assert_int_equal(ftruncate(unsealed, 3 * 4096), 0);
	fs.e[0].fd = unsealed;
	snprintf(fs.e[0].name, sizeof(fs.e[0].name), "state");
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->ctx_adopt(f->be, &fs, &c, &f->e), -EINVAL);
	assert_msg_has(f, "sealed");
	close(unsealed);
	fs.e[0].fd = f->ram_a; /* sealed, but not ours */
	assert_int_equal(f->ops->ctx_adopt(f->be, &fs, &c, &f->e), -EBADMSG);
	fs.e[0].fd = fd;
	snprintf(fs.e[0].name, sizeof(fs.e[0].name), "iommufd");
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->ctx_adopt(f->be, &fs, &c, &f->e), -EINVAL);
	assert_msg_has(f, "iommufd");
	fs.n = 0;
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->ctx_adopt(f->be, &fs, &c, &f->e), -EINVAL);
	assert_msg_has(f, "lack 'state'");

	/* A record written but never published (killed before the commit
	 * store): slot 2 holds a whole, valid-looking area with state 0. */
	uint8_t body[TAB_SLOT];
	assert_int_equal(pread(fd, body, sizeof(body), TAB_HDR + TAB_SLOT), (ssize_t)sizeof(body));
	uint64_t iova = (BASE + 8 * PG) | RW;
	memcpy(body, &iova, sizeof(iova));
	memset(body + TAB_STATE, 0, 4);
	assert_int_equal(pwrite(fd, body, sizeof(body), TAB_HDR + 2 * TAB_SLOT), (ssize_t)sizeof(body));

	/* Intact again: adopted, and the fd is the backend's now. */
	c = adopt_ctx(f, "c");
	assert_int_equal(f->ops->pinned_bytes(f->be), PG);
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);
	assert_int_equal(map_adopt(f, c, ra, 0, BASE, PG, RW), 0);
	assert_int_equal(map_adopt(f, c, ra, 0, BASE + 8 * PG, PG, RW), -ENOENT);
	assert_int_equal(f->ops->adopt_finish(c, NULL, &f->e), 0);
	f->ops->ctx_close(c);
	f->ops->region_close(ra);
}

/* The table grows with the mappings and gives its pages back when they go. */
static void test_table_grows_and_trims(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c = NULL;
	struct dmb_fdset fs;
	struct stat st;
	uint64_t n;

	assert_int_equal(f->ops->ctx_open(f->be, &c, &f->e), 0);
	assert_int_equal(f->ops->ctx_fds(c, &fs), 0);
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);
	for (unsigned i = 0; i < 20000; i++)
		assert_int_equal(f->ops->map(c, ra, 0, BASE + i * PG, PG, RW, &f->e), 0);
	assert_int_equal(fstat(fs.e[0].fd, &st), 0);
	assert_true((uint64_t)st.st_size >= TAB_HDR + 20000 * TAB_SLOT);
	assert_true((uint64_t)st.st_blocks * 512 >= 20000 * TAB_SLOT);
	assert_int_equal(f->ops->unmap(c, BASE + 100 * PG, 19900 * PG, &n, &f->e), 0);
	assert_int_equal(fstat(fs.e[0].fd, &st), 0);
	assert_true((uint64_t)st.st_blocks * 512 <= 2 * TAB_HDR + 100 * TAB_SLOT + 4096);
	assert_int_equal(f->ops->unmap_all(c, &n, &f->e), 0);
	assert_int_equal(n, 100 * PG);
	assert_int_equal(fstat(fs.e[0].fd, &st), 0);
	assert_true((uint64_t)st.st_blocks * 512 <= 2 * TAB_HDR);
	/* Map/unmap of one area in a loop reuses the lowest slot. */
	for (unsigned i = 0; i < 1000; i++) {
		assert_int_equal(f->ops->map(c, ra, 0, BASE, PG, RW, &f->e), 0);
		assert_int_equal(f->ops->unmap(c, BASE, PG, &n, &f->e), 0);
	}
	f->ops->ctx_close(c);
	f->ops->region_close(ra);
}

/* ---- many entries, shared sources --------------------------------------- */

#define MANY 60000u
static uint64_t many_off(unsigned i)
{
	return (i * 7u % (RAM_PAGES - 1)) * PG;
}

/* Three regions, two of them registrations of one file (ram_b read-write
 * and read-only): three source records, 60000 areas naming them. */
static void old_many_sources(void *argp)
{
	struct fx *f = argp;
	struct old o;
	struct dmb_err e = { 0 };
	old_begin(&o, f->st.tx);
	struct dmb_bctx *c = old_ctx(&o, "c");
	struct dmb_bregion *r[3] = { old_region(&o, f->ram_a, true), old_region(&o, f->ram_b, true),
				     old_region(&o, f->ram_b_ro, false) };
	for (unsigned i = 0; i < MANY; i++)
		CK(o.ops->map(c, r[i % 3], many_off(i), BASE + i * PG, PG, i % 3 == 2 ? R : RW, &e) == 0);
}

static uint32_t slot_state(int fd, uint32_t i)
{
	uint32_t st = 0;
	assert_int_equal(pread(fd, &st, sizeof(st), TAB_HDR + (off_t)i * TAB_SLOT + TAB_STATE),
			 (ssize_t)sizeof(st));
	return st;
}

static void test_many_entries_shared_sources(void **state)
{
	struct fx *f = *state;
	struct stat st;
	uint64_t stray = 1, n;
	uint8_t b;

	reap_ok(spawn(old_many_sources, f));
	store_collect(&f->st);
	int fd = store_fd(&f->st, "c.state");
	/* 32 bytes a mapping in the file: 60000 areas and 3 sources, page-rounded. */
	assert_int_equal(fstat(fd, &st), 0);
	assert_true((uint64_t)st.st_blocks * 512 <= TAB_HDR + (MANY + 3) * TAB_SLOT + 4096);
	struct dmb_bctx *c = adopt_ctx(f, "c");
	assert_int_equal(f->ops->pinned_bytes(f->be), MANY * PG);
	struct dmb_bregion *ra = open_region(f, f->ram_a, true), *rb = open_region(f, f->ram_b, true),
			   *rbro = open_region(f, f->ram_b_ro, false);
	/* The read-only source's areas are claimed half through its own
	 * registration, half through the writable one of the same file. */
	for (unsigned i = 0; i < MANY; i++) {
		struct dmb_bregion *r = i % 3 == 0 ? ra : i % 3 == 1 || i % 2 ? rb : rbro;
		assert_int_equal(map_adopt(f, c, r, many_off(i), BASE + i * PG, PG, i % 3 == 2 ? R : RW), 0);
	}
	assert_int_equal(f->ops->adopt_finish(c, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), MANY * PG);
	for (unsigned i = 0; i < MANY; i += 97) {
		uint8_t w = (uint8_t)(i * 13 + 1);
		int rfd = i % 3 == 0 ? f->ram_a : f->ram_b;
		assert_int_equal(dma(f, c, BASE + i * PG + 3, &b, 1, false), 0);
		uint8_t want = 0;
		assert_int_equal(pread(rfd, &want, 1, (off_t)many_off(i) + 3), 1);
		assert_int_equal(b, want);
		assert_int_equal(dma(f, c, BASE + i * PG + 3, &w, 1, true), i % 3 == 2 ? -EFAULT : 0);
		if (i % 3 != 2) {
			assert_int_equal(pread(rfd, &want, 1, (off_t)many_off(i) + 3), 1);
			assert_int_equal(want, w);
		}
	}
	/* New maps through the adopted regions share their sources. */
	assert_int_equal(f->ops->map(c, rbro, 0, BASE + MANY * PG, PG, R, &f->e), 0);
	assert_int_equal(dma(f, c, BASE + MANY * PG + 3, &b, 1, false), 0);
	assert_int_equal(f->ops->unmap(c, BASE, (MANY + 1) * PG, &n, &f->e), 0);
	assert_int_equal(n, (MANY + 1) * PG);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	/* Every record is gone, the sources (and the alias's) too. */
	for (uint32_t i = 0; i < 4096 / TAB_SLOT; i++)
		assert_int_equal(slot_state(fd, i), 0);
	f->ops->ctx_close(c);
	f->ops->region_close(ra);
	f->ops->region_close(rb);
	f->ops->region_close(rbro);
}

/* Killed between an area's removal and its source's: the source is left
 * with no area; adoption keeps it until adopt_finish drops it. */
static void test_orphan_source_dropped(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c = NULL;
	uint64_t stray = 1;
	uint32_t zero = 0;

	reap_ok(spawn(old_one, f));
	store_collect(&f->st);
	int fd = store_fd(&f->st, "c.state");
	assert_int_not_equal(slot_state(fd, 0), 0); /* ram_a's file */
	assert_int_not_equal(slot_state(fd, 1), 0); /* the area */
	assert_int_equal(pwrite(fd, &zero, sizeof(zero), TAB_HDR + TAB_SLOT + TAB_STATE),
			 (ssize_t)sizeof(zero));
	c = adopt_ctx(f, "c");
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	assert_int_not_equal(slot_state(fd, 0), 0);
	assert_int_equal(f->ops->adopt_finish(c, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(slot_state(fd, 0), 0);
	f->ops->ctx_close(c);
}

/* A table of the previous format (version 1, 64-byte slots) is refused
 * with a sentence naming the versions, and the fd is left alone. */
static void test_old_version_refused(void **state)
{
	struct fx *f = *state;
	struct dmb_bctx *c = NULL;
	struct { char magic[8]; uint32_t version, hdr, slot, zero; } h = { "DMBSIMC", 1, 4096, 64, 0 };
	int fd = memfd_create("v1-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 2 * 4096), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	assert_int_equal(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
	struct dmb_fdset fs = { .n = 1 };
	fs.e[0].fd = fd;
	snprintf(fs.e[0].name, sizeof(fs.e[0].name), "state");
	dmb_err_clear(&f->e);
	assert_int_equal(f->ops->ctx_adopt(f->be, &fs, &c, &f->e), -EPROTONOSUPPORT);
	assert_msg_has(f, "version 1 is not supported");
	assert_int_equal(fcntl(fd, F_GETFD), FD_CLOEXEC); /* still open, still ours */
	close(fd);
}

/* ---- SIGKILL at a random moment -------------------------------------------- */

#define K 1024u          /* IOVA slots of 16 pages each, one area at most */
#define SLOT_PAGES 16u
#define KILL_RUNS 40

struct kdesc {
	uint8_t mapped;
	uint8_t src;      /* enum src, SRC_B_RO meaning region B read-write here */
	uint8_t prot;
	uint8_t pages;
	uint32_t off;     /* pages into the source */
};

/* The old process's own model of what it did, in shared memory: slot[k] is
 * exact once an operation has finished; the one in flight is described by
 * op/in_k/in_m/old/new, so the next process knows which slots may go
 * either way (as a journal's last record may). */
struct kmodel {
	_Atomic int ready;
	_Atomic int op;   /* 0 none, 1 map, 2 unmap */
	uint32_t in_k, in_m;
	struct kdesc old[3], new;
	_Atomic uint64_t ops;
	struct kdesc slot[K];
};

static uint64_t kiova(unsigned k)
{
	return BASE + (uint64_t)k * SLOT_PAGES * PG;
}

static uint32_t xorshift(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

struct kill_arg {
	struct fx *f;
	struct kmodel *m;
	uint32_t seed;
};

static void old_random(void *argp)
{
	struct kill_arg *arg = argp;
	struct fx *f = arg->f;
	struct kmodel *m = arg->m;
	struct old o;
	struct dmb_err e = { 0 };
	uint32_t seed = arg->seed;
	uint64_t n;

	old_begin(&o, f->st.tx);
	struct dmb_bctx *c = old_ctx(&o, "c");
	struct dmb_bdev *d = old_dev(&o, c, BDF_B, "B", MEM);
	struct dmb_bregion *ra = old_region(&o, f->ram_a, true);
	struct dmb_bregion *rb = old_region(&o, f->ram_b, true);
	atomic_store(&m->ready, 1);

	for (uint64_t i = 0; i < 5000000; i++) {
		unsigned k = xorshift(&seed) % K;
		if (m->slot[k].mapped) {
			unsigned mm = 1 + xorshift(&seed) % 3;
			if (k + mm > K)
				mm = K - k;
			for (unsigned j = 0; j < mm; j++)
				m->old[j] = m->slot[k + j];
			m->in_k = k;
			m->in_m = mm;
			atomic_store_explicit(&m->op, 2, memory_order_release);
			CK(o.ops->unmap(c, kiova(k), (uint64_t)mm * SLOT_PAGES * PG, &n, &e) == 0);
			for (unsigned j = 0; j < mm; j++)
				m->slot[k + j].mapped = 0;
		} else {
			struct kdesc kd = { .mapped = 1 };
			kd.src = (uint8_t)(xorshift(&seed) % 3);
			kd.pages = (uint8_t)(1 + xorshift(&seed) % SLOT_PAGES);
			kd.prot = (uint8_t)(kd.src == SRC_BAR && xorshift(&seed) % 2 ? R : RW);
			uint32_t room = (kd.src == SRC_BAR ? BAR_PAGES : RAM_PAGES) - kd.pages;
			kd.off = xorshift(&seed) % (room + 1);
			m->new = kd;
			m->in_k = k;
			m->in_m = 1;
			atomic_store_explicit(&m->op, 1, memory_order_release);
			if (kd.src == SRC_BAR)
				CK(o.ops->map_bar(c, d, 0, (uint64_t)kd.off * PG, kiova(k),
						  (uint64_t)kd.pages * PG, kd.prot, &e) == 0);
			else
				CK(o.ops->map(c, kd.src == SRC_A ? ra : rb, (uint64_t)kd.off * PG,
					      kiova(k), (uint64_t)kd.pages * PG, kd.prot, &e) == 0);
			m->slot[k] = kd;
		}
		atomic_store_explicit(&m->op, 0, memory_order_release);
		atomic_fetch_add_explicit(&m->ops, 1, memory_order_relaxed);
	}
}

static int claim(struct fx *f, struct dmb_bctx *c, struct dmb_bregion *ra, struct dmb_bregion *rb,
		 struct dmb_bdev *d, unsigned k, const struct kdesc *kd)
{
	uint64_t off = (uint64_t)kd->off * PG, len = (uint64_t)kd->pages * PG;
	dmb_err_clear(&f->e);
	if (kd->src == SRC_BAR)
		return f->ops->map_bar_adopt(c, d, 0, off, kiova(k), len, kd->prot, &f->e);
	return f->ops->map_adopt(c, kd->src == SRC_A ? ra : rb, off, kiova(k), len, kd->prot, &f->e);
}

struct kill_stats {
	unsigned in_flight;   /* runs killed inside an operation */
	unsigned went_either; /* in-flight areas found absent (-ENOENT) */
	unsigned held;        /* in-flight areas found present */
	uint64_t ops;         /* operations completed, all runs */
};

static void kill_run(struct fx *f, struct kmodel *m, uint32_t seed, struct kill_stats *ks)
{
	struct kill_arg arg = { .f = f, .m = m, .seed = seed };
	struct kdesc claimed[K];
	uint64_t ram = 0, stray = 99;
	int st;

	memset(m, 0, sizeof(*m));
	pid_t pid = spawn(old_random, &arg);
	while (!atomic_load(&m->ready)) {
		assert_int_equal(waitpid(pid, &st, WNOHANG), 0);
		usleep(100);
	}
	/* From during the table's first growth to well into steady state. */
	usleep(seed % 6000);
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 0));
	store_collect(&f->st);

	struct dmb_bctx *c = adopt_ctx(f, "c");
	struct dmb_bdev *d = NULL;
	assert_int_equal(try_adopt_dev(f, c, BDF_B, "B", &d), 0);
	struct dmb_bregion *ra = open_region(f, f->ram_a, true);
	struct dmb_bregion *rb = open_region(f, f->ram_b, true);
	int op = atomic_load(&m->op);
	ks->in_flight += op != 0;
	ks->ops += atomic_load(&m->ops);
	for (unsigned k = 0; k < K; k++) {
		const struct kdesc *kd = &m->slot[k];
		bool flight = op != 0 && k >= m->in_k && k < m->in_k + m->in_m;
		if (flight)
			kd = op == 1 ? &m->new : &m->old[k - m->in_k];
		claimed[k].mapped = 0;
		if (!kd->mapped)
			continue;
		int r = claim(f, c, ra, rb, d, k, kd);
		if (r == -ENOENT && flight) {
			ks->went_either++; /* the map had not happened, or the unmap had */
			continue;
		}
		ks->held += flight;
		if (r != 0)
			fail_msg("run %" PRIu32 ", slot %u%s: %d %s", seed, k, flight ? " (in flight)" : "",
				 r, f->e.msg);
		claimed[k] = *kd;
		if (kd->src != SRC_BAR)
			ram += (uint64_t)kd->pages * PG;
	}
	/* Everything that may exist was named, so nothing is left over. */
	assert_int_equal(f->ops->adopt_finish(c, &stray, &f->e), 0);
	assert_int_equal(stray, 0);
	assert_int_equal(f->ops->pinned_bytes(f->be), ram);

	/* Every area is whole: both ends move the right bytes. Every other
	 * slot faults. */
	for (unsigned k = 0; k < K; k++) {
		const struct kdesc *kd = &claimed[k];
		uint8_t mk[8], got[8];
		if (!kd->mapped) {
			assert_int_equal(dma(f, c, kiova(k), got, 1, false), -EFAULT);
			continue;
		}
		int fd = kd->src == SRC_BAR ? store_fd(&f->st, "B.bar0") : kd->src == SRC_A ? f->ram_a : f->ram_b;
		uint64_t len = (uint64_t)kd->pages * PG, off = (uint64_t)kd->off * PG;
		for (int end = 0; end < 2; end++) {
			uint64_t at = end ? len - sizeof(mk) : 0;
			if (kd->prot & W) {
				marker(mk, sizeof(mk), k * 2 + (unsigned)end);
				assert_int_equal(dma(f, c, kiova(k) + at, mk, sizeof(mk), true), 0);
				assert_fd_bytes(fd, off + at, mk, sizeof(mk));
			} else {
				assert_int_equal(dma(f, c, kiova(k) + at, got, sizeof(got), false), 0);
				assert_int_equal(pread(fd, mk, sizeof(mk), (off_t)(off + at)), (ssize_t)sizeof(mk));
				assert_memory_equal(got, mk, sizeof(mk));
			}
		}
		if (kd->pages < SLOT_PAGES) /* else the next slot's area may start there */
			assert_int_equal(dma(f, c, kiova(k) + len, got, 1, false), -EFAULT);
	}
	f->ops->ctx_close(c);
	f->ops->region_close(ra);
	f->ops->region_close(rb);
	assert_int_equal(f->ops->pinned_bytes(f->be), 0);
	store_close(&f->st);
	store_open(&f->st);
}

static void test_sigkill_at_random_moments(void **state)
{
	struct fx *f = *state;
	struct kmodel *m = mmap(NULL, sizeof(*m), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
				-1, 0);
	assert_true(m != MAP_FAILED);
	uint32_t seed = (uint32_t)time(NULL) | 1;
	print_message("seed %" PRIu32 "\n", seed);
	struct kill_stats ks = { 0 };
	for (unsigned run = 0; run < KILL_RUNS; run++) {
		kill_run(f, m, seed, &ks);
		xorshift(&seed);
	}
	print_message("%u runs, %" PRIu64 " operations; %u killed inside one: %u in-flight areas "
		      "present, %u absent\n", KILL_RUNS, ks.ops, ks.in_flight, ks.held, ks.went_either);
	munmap(m, sizeof(*m));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_exports, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_after_exit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_after_clean_stop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ctx_close_is_not_a_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_adopt_refusals_and_strays, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_half_claimed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damage_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_table_grows_and_trims, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_entries_shared_sources, setup, teardown),
		cmocka_unit_test_setup_teardown(test_orphan_source_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_old_version_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sigkill_at_random_moments, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
