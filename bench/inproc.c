/* In-process floors and the core at scale: see inproc.h. This file links
 * the daemon's static library (core_dep) and includes its headers only. */
#include "inproc.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "core/core.h"
#include "util/log.h"

/* Every measurement runs in a forked child: a fresh heap, as the daemon's
 * is, so that no earlier benchmark's freed chunks decide the locality of
 * the trees being measured. The child's result and check counts come back
 * through shared memory. */
/* The result follows the header in the shared page (h + 1): keep it
 * aligned for any type the results hold. */
struct child_hdr {
	_Alignas(max_align_t) int rc;
	unsigned passes, failures;
};

static int in_child(int (*fn)(const void *arg, void *out), const void *arg, void *out, size_t size)
{
	size_t total = sizeof(struct child_hdr) + size;
	struct child_hdr *h = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (h == MAP_FAILED)
		return -errno;
	memset(h, 0, total);
	h->rc = -ECHILD;
	pid_t p = fork();
	if (p < 0) {
		munmap(h, total);
		return -errno;
	}
	if (p == 0) {
		unsigned p0 = check_passes(), f0 = check_failures();
		dmb_log_max_level = LOG_WARNING; /* the core's info lines are noise here */
		h->rc = fn(arg, h + 1);
		h->passes = check_passes() - p0;
		h->failures = check_failures() - f0;
		_exit(0);
	}
	int st = 0;
	pid_t w = 0;
	for (int i = 0; i < 60000 && w == 0; i++) { /* 10 minutes */
		w = waitpid(p, &st, WNOHANG);
		if (w == 0)
			sleep_ms(10);
	}
	if (w == 0) {
		kill(p, SIGKILL);
		waitpid(p, &st, 0);
	}
	int rc = w == p && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? h->rc : -ECHILD;
	if (rc == -ECHILD)
		check_fail("in-process measurement: the child process failed (status 0x%x)", st);
	check_merge(h->passes, h->failures);
	memcpy(out, h + 1, size);
	munmap(h, total);
	return rc;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

struct sim_env {
	struct dmb_backend *be;
	const struct dmb_backend_ops *ops;
	struct dmb_bctx *bctx;
	struct dmb_bregion *breg;
	int fd;
};

static int sim_env_open(struct sim_env *s, uint64_t bytes, uint64_t tag_pages, bool populate)
{
	struct dmb_err e = { 0 };
	struct dmb_backend_config cfg = { .name = "sim", .sim_populate = populate };
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	int r = dmb_sim_create(&cfg, &s->be, &e);
	if (r < 0)
		goto fail;
	s->ops = s->be->ops;
	r = s->ops->ctx_open(s->be, &s->bctx, &e);
	if (r < 0)
		goto fail;
	s->fd = bench_memfd(bytes, 21, tag_pages);
	if (s->fd < 0) {
		r = s->fd;
		goto fail;
	}
	struct dmb_region_desc d = { .fd = s->fd, .size = bytes, .page_size = PG, .writable = true };
	r = s->ops->region_open(s->be, &d, &s->breg, &e);
	if (r < 0)
		goto fail;
	return 0;
fail:
	fprintf(stderr, "dmb-bench: sim backend set-up: %s\n", e.msg[0] ? e.msg : strerror(-r));
	return r;
}

static void sim_env_close(struct sim_env *s)
{
	if (s->bctx)
		s->ops->ctx_close(s->bctx);
	if (s->breg)
		s->ops->region_close(s->breg);
	if (s->fd >= 0)
		close(s->fd);
	if (s->be)
		s->ops->destroy(s->be);
}

/* One DMA read through the backend's page table, compared with the tag the
 * memfd carries at that page. */
static void check_dma(const struct dmb_backend_ops *ops, struct dmb_bctx *bctx, uint64_t iova,
		      unsigned seed, uint64_t page, bool want_mapped, const char *what)
{
	uint64_t got = 0;
	struct dmb_err e = { 0 };
	int r = ops->dma(bctx, iova, &got, sizeof(got), false, &e);
	if (!want_mapped) {
		if (r == 0)
			check_fail("%s: DMA at iova 0x%llx succeeded after the unmap", what,
				   (unsigned long long)iova);
		else
			check_pass();
		return;
	}
	if (r < 0)
		check_fail("%s: DMA at iova 0x%llx: %s", what, (unsigned long long)iova, e.msg);
	else if (got != page_tag(seed, page))
		check_fail("%s: DMA at iova 0x%llx read 0x%llx, not page %llu's tag", what,
			   (unsigned long long)iova, (unsigned long long)got, (unsigned long long)page);
	else
		check_pass();
}

static int direct_impl(uint64_t n, uint64_t pages, uint64_t stride, struct direct_result *out)
{
	struct sim_env s;
	int r = sim_env_open(&s, pages * PG, pages, false);
	if (r < 0) {
		sim_env_close(&s);
		return r;
	}
	memset(out, 0, sizeof(*out));
	/* One untimed pass first: the daemon's heap is warm (earlier batches
	 * freed what the next ones reuse); so is this one's then. */
	for (uint64_t i = 0; i < n && r == 0; i++)
		r = s.ops->map(s.bctx, s.breg, (i % pages) * PG, BENCH_IOVA_BASE + i * stride * PG, PG,
			       DMB_PROT_READ | DMB_PROT_WRITE, NULL);
	uint64_t warm;
	if (r == 0)
		s.ops->unmap_all(s.bctx, &warm, NULL);
	uint64_t c0 = thread_cpu_ns(), t0 = now_ns();
	for (uint64_t i = 0; i < n; i++) {
		r = s.ops->map(s.bctx, s.breg, (i % pages) * PG, BENCH_IOVA_BASE + i * stride * PG, PG,
			       DMB_PROT_READ | DMB_PROT_WRITE, NULL);
		if (r < 0)
			break;
	}
	uint64_t t1 = now_ns(), c1 = thread_cpu_ns();
	if (r < 0) {
		check_fail("direct backend map: %s", strerror(-r));
		sim_env_close(&s);
		return r;
	}
	for (uint64_t k = 0; k < 4 && n; k++) {
		uint64_t i = (n - 1) * k / 3;
		check_dma(s.ops, s.bctx, BENCH_IOVA_BASE + i * stride * PG, 21, i % pages, true,
			  "direct backend map");
	}
	uint64_t c2 = thread_cpu_ns(), t2 = now_ns();
	for (uint64_t i = 0; i < n; i++) {
		uint64_t got;
		r = s.ops->unmap(s.bctx, BENCH_IOVA_BASE + i * stride * PG, PG, &got, NULL);
		if (r < 0)
			break;
	}
	uint64_t t3 = now_ns(), c3 = thread_cpu_ns();
	if (r < 0)
		check_fail("direct backend unmap: %s", strerror(-r));
	else if (n)
		check_dma(s.ops, s.bctx, BENCH_IOVA_BASE, 21, 0, false, "direct backend unmap");
	out->map_rate = (double)n / ((double)(t1 - t0) / 1e9);
	out->unmap_rate = (double)n / ((double)(t3 - t2) / 1e9);
	out->map_cpu = (double)(c1 - c0) / (double)n;
	out->unmap_cpu = (double)(c3 - c2) / (double)n;
	sim_env_close(&s);
	return r;
}

static int direct_huge_impl(uint64_t bytes, struct direct_result *out)
{
	struct sim_env s;
	int r = sim_env_open(&s, bytes, 1, true);
	if (r < 0) {
		sim_env_close(&s);
		return r;
	}
	uint64_t iova = UINT64_C(1) << 40;
	struct dmb_err e = { 0 };
	uint64_t t0 = now_ns();
	r = s.ops->map(s.bctx, s.breg, 0, iova, bytes, DMB_PROT_READ | DMB_PROT_WRITE, &e);
	uint64_t t1 = now_ns();
	if (r < 0) {
		check_fail("direct huge map: %s", e.msg);
	} else {
		check_dma(s.ops, s.bctx, iova, 21, 0, true, "direct huge map");
		uint64_t got;
		s.ops->unmap(s.bctx, iova, bytes, &got, NULL);
	}
	out->huge_ms = (double)(t1 - t0) / 1e6;
	sim_env_close(&s);
	return r;
}

/* ---- the core at scale -------------------------------------------------- */

/* A backend that keeps nothing per mapping: the sim's contexts and regions,
 * but map/unmap that only succeed. With it, the heap delta is the core's. */
static struct dmb_backend_ops null_ops;

static int null_map(struct dmb_bctx *c, struct dmb_bregion *r, uint64_t offset, uint64_t iova,
		    uint64_t length, uint32_t prot, struct dmb_err *e)
{
	return 0;
}

static int null_unmap(struct dmb_bctx *c, uint64_t iova, uint64_t length, uint64_t *unmapped,
		      struct dmb_err *e)
{
	if (unmapped)
		*unmapped = length;
	return 0;
}

static int null_unmap_all(struct dmb_bctx *c, uint64_t *unmapped, struct dmb_err *e)
{
	if (unmapped)
		*unmapped = 0;
	return 0;
}

static const struct dmb_limits scale_limits = {
	.contexts_per_owner = 4,
	.regions_per_context = 4,
	.mappings_per_context = UINT64_C(1) << 32,
	.devices_per_context = 4,
};

#define SCALE_BATCH 4096u
#define SCALE_PAGES 16384u /* 64 MiB region, mapped over and over */
#define SCALE_STRIDE 2u    /* every other page: holes for check_free */

static uint64_t iova_of(uint64_t i)
{
	return BENCH_IOVA_BASE + i * SCALE_STRIDE * PG;
}

struct core_env {
	struct dmb_backend *be;
	struct dmb_core core;
	struct dmb_owner *owner;
	struct dmb_ctx *ctx;
	struct dmb_region *reg;
};

static int core_env_open(struct core_env *c, bool null_backend)
{
	struct dmb_err e = { 0 };
	struct dmb_backend_config cfg = { .name = "sim" };
	memset(c, 0, sizeof(*c));
	int r = dmb_sim_create(&cfg, &c->be, &e);
	if (r < 0)
		goto fail;
	if (null_backend) {
		null_ops = *c->be->ops;
		null_ops.map = null_map;
		null_ops.unmap = null_unmap;
		null_ops.unmap_all = null_unmap_all;
		c->be->ops = &null_ops;
	}
	core_init(&c->core, c->be, &scale_limits);
	c->owner = owner_new(&c->core, 1, getuid(), getgid(), getpid(), false, NULL);
	if (!c->owner) {
		r = -ENOMEM;
		goto fail;
	}
	r = ctx_create(c->owner, "bench-scale", false, &c->ctx, &e);
	if (r < 0)
		goto fail;
	int fd = bench_memfd(SCALE_PAGES * PG, 31, SCALE_PAGES);
	if (fd < 0) {
		r = fd;
		goto fail;
	}
	r = region_register(c->ctx, fd, 0, &c->reg, &e); /* takes fd */
	if (r < 0)
		goto fail;
	return 0;
fail:
	fprintf(stderr, "dmb-bench: core set-up: %s\n", e.msg[0] ? e.msg : strerror(-r));
	return r;
}

static void core_env_close(struct core_env *c)
{
	if (c->owner)
		owner_free(c->owner);
	if (c->be) {
		core_fini(&c->core);
		c->be->ops->destroy(c->be);
	}
}

static int core_batch_impl(uint64_t n, size_t b, struct direct_result *out)
{
	struct core_env c;
	memset(out, 0, sizeof(*out));
	if (core_env_open(&c, false) < 0) {
		core_env_close(&c);
		return -EIO;
	}
	struct dmb_map_req *reqs = malloc(b * sizeof(*reqs));
	struct dmb_range *rg = malloc(b * sizeof(*rg));
	int r = reqs && rg ? 0 : -ENOMEM;
	/* One untimed pass first, as in direct_impl. */
	for (uint64_t done = 0; done < n && r == 0; done += b) {
		size_t k = n - done < b ? (size_t)(n - done) : b;
		for (size_t j = 0; j < k; j++) {
			uint64_t i = done + j;
			reqs[j] = (struct dmb_map_req){ c.reg->id, (i % SCALE_PAGES) * PG,
							BENCH_IOVA_BASE + i * PG, PG,
							DMB_PROT_READ | DMB_PROT_WRITE, 0 };
		}
		r = map_batch(c.ctx, reqs, k, NULL);
	}
	uint64_t wb, wc;
	if (r == 0)
		r = unmap_all(c.ctx, &wb, &wc, NULL);
	uint64_t c0 = thread_cpu_ns(), t0 = now_ns();
	for (uint64_t done = 0; done < n && r == 0; done += b) {
		size_t k = n - done < b ? (size_t)(n - done) : b;
		for (size_t j = 0; j < k; j++) {
			uint64_t i = done + j;
			reqs[j] = (struct dmb_map_req){ c.reg->id, (i % SCALE_PAGES) * PG,
							BENCH_IOVA_BASE + i * PG, PG,
							DMB_PROT_READ | DMB_PROT_WRITE, 0 };
		}
		struct dmb_err e = { 0 };
		r = map_batch(c.ctx, reqs, k, &e);
		if (r < 0)
			check_fail("core map_batch: %s", e.msg);
	}
	uint64_t t1 = now_ns(), c1 = thread_cpu_ns();
	if (r == 0 && n)
		check_dma(c.be->ops, c.ctx->bctx, BENCH_IOVA_BASE + (n - 1) * PG, 31,
			  (n - 1) % SCALE_PAGES, true, "core map_batch");
	uint64_t c2 = thread_cpu_ns(), t2 = now_ns();
	for (uint64_t done = 0; done < n && r == 0; done += b) {
		size_t k = n - done < b ? (size_t)(n - done) : b;
		for (size_t j = 0; j < k; j++)
			rg[j] = (struct dmb_range){ BENCH_IOVA_BASE + (done + j) * PG, PG };
		uint64_t bytes, count;
		struct dmb_err e = { 0 };
		r = unmap_ranges(c.ctx, rg, k, &bytes, &count, &e);
		if (r < 0)
			check_fail("core unmap_ranges: %s", e.msg);
	}
	uint64_t t3 = now_ns(), c3 = thread_cpu_ns();
	out->map_rate = (double)n / ((double)(t1 - t0) / 1e9);
	out->unmap_rate = (double)n / ((double)(t3 - t2) / 1e9);
	out->map_cpu = (double)(c1 - c0) / (double)n;
	out->unmap_cpu = (double)(c3 - c2) / (double)n;
	free(reqs);
	free(rg);
	core_env_close(&c);
	return r;
}

static int fill(struct core_env *c, uint64_t n, struct scale_result *out)
{
	struct dmb_map_req *reqs = malloc(SCALE_BATCH * sizeof(*reqs));
	if (!reqs)
		return -ENOMEM;
	uint64_t nb = (n + SCALE_BATCH - 1) / SCALE_BATCH, first_ns = 0, last_ns = 0;
	uint64_t first_n = 0, last_n = 0;
	int r = 0;
	uint64_t c0 = thread_cpu_ns(), t0 = now_ns();
	for (uint64_t b = 0; b < nb && r == 0; b++) {
		uint64_t k = n - b * SCALE_BATCH < SCALE_BATCH ? n - b * SCALE_BATCH : SCALE_BATCH;
		for (uint64_t j = 0; j < k; j++) {
			uint64_t i = b * SCALE_BATCH + j;
			reqs[j] = (struct dmb_map_req){ c->reg->id, (i % SCALE_PAGES) * PG, iova_of(i), PG,
							DMB_PROT_READ | DMB_PROT_WRITE, 0 };
		}
		struct dmb_err e = { 0 };
		uint64_t a = now_ns();
		r = map_batch(c->ctx, reqs, k, &e);
		uint64_t z = now_ns();
		if (r < 0)
			check_fail("core map_batch at %llu: %s", (unsigned long long)(b * SCALE_BATCH), e.msg);
		if (b < 16) {
			first_ns += z - a;
			first_n += k;
		}
		if (b + 16 >= nb) {
			last_ns += z - a;
			last_n += k;
		}
	}
	uint64_t t1 = now_ns(), c1 = thread_cpu_ns();
	free(reqs);
	if (out) {
		out->insert_rate = (double)n / ((double)(t1 - t0) / 1e9);
		out->insert_cpu = (double)(c1 - c0) / (double)n;
		out->first_rate = (double)first_n / ((double)first_ns / 1e9);
		out->last_rate = (double)last_n / ((double)last_ns / 1e9);
	}
	return r;
}

/* Heap per mapping, the core's alone: a backend that keeps nothing. */
static int core_only_impl(uint64_t n, struct scale_result *out)
{
	memset(out, 0, sizeof(*out));
	struct core_env c;
	if (core_env_open(&c, true) < 0) {
		core_env_close(&c);
		return -EIO;
	}
	struct mallinfo2 before = mallinfo2();
	int r = fill(&c, n, NULL);
	struct mallinfo2 after = mallinfo2();
	if (r == 0)
		out->core_per_mapping = ((double)after.uordblks - (double)before.uordblks) / (double)n;
	core_env_close(&c);
	return r;
}

static int scale_impl(uint64_t n, unsigned ops, struct scale_result *out)
{
	memset(out, 0, sizeof(*out));
	out->n = n;
	out->sizeof_mapping = sizeof(struct dmb_mapping);

	struct core_env c;
	if (core_env_open(&c, false) < 0) {
		core_env_close(&c);
		return -EIO;
	}
	struct mallinfo2 before = mallinfo2();
	int r = fill(&c, n, out);
	struct mallinfo2 after = mallinfo2();
	out->heap_per_mapping = ((double)after.uordblks - (double)before.uordblks) / (double)n;
	if (r < 0) {
		core_env_close(&c);
		return r;
	}
	const struct dmb_backend_ops *bops = c.be->ops;
	for (uint64_t k = 0; k < 4; k++) {
		uint64_t i = (n - 1) * k / 3;
		check_dma(bops, c.ctx->bctx, iova_of(i), 31, i % SCALE_PAGES, true, "core at scale");
	}

	uint64_t seed = 0x9e3779b97f4a7c15u, sink = 0;
	uint64_t t0 = now_ns();
	for (unsigned k = 0; k < ops; k++) {
		struct dmb_mapping *m = map_find(c.ctx, iova_of(xorshift(&seed) % n));
		sink += m ? m->iova : 1;
	}
	uint64_t t1 = now_ns();
	out->find_ns = (double)(t1 - t0) / ops;

	unsigned bad = 0;
	t0 = now_ns();
	for (unsigned k = 0; k < ops; k++) {
		uint64_t hole = iova_of(xorshift(&seed) % n) + PG;
		bad += map_check_free(c.ctx, hole, hole + PG - 1, NULL) != 0;
	}
	t1 = now_ns();
	out->check_free_ns = (double)(t1 - t0) / ops;

	t0 = now_ns();
	for (unsigned k = 0; k < ops; k++) {
		uint64_t i = xorshift(&seed) % n;
		struct dmb_map_req q = { c.reg->id, 0, iova_of(i), PG, DMB_PROT_READ, 0 };
		struct dmb_err e = { 0 };
		bad += map_batch(c.ctx, &q, 1, &e) != -EEXIST;
	}
	t1 = now_ns();
	out->overlap_ns = (double)(t1 - t0) / ops;

	uint64_t unmap_total = 0;
	for (unsigned k = 0; k < ops; k++) {
		uint64_t i = xorshift(&seed) % n, bytes, count;
		struct dmb_range rg = { iova_of(i), PG };
		struct dmb_map_req q = { c.reg->id, (i % SCALE_PAGES) * PG, iova_of(i), PG,
					 DMB_PROT_READ | DMB_PROT_WRITE, 0 };
		uint64_t a = now_ns();
		int x = unmap_ranges(c.ctx, &rg, 1, &bytes, &count, NULL);
		uint64_t z = now_ns();
		unmap_total += z - a;
		bad += x != 0 || count != 1;
		bad += map_batch(c.ctx, &q, 1, NULL) != 0;
	}
	out->unmap_ns = (double)unmap_total / ops;
	if (bad)
		check_fail("core at scale: %u operations did not do what they should", bad);
	else
		check_pass();
	if (c.ctx->n_mappings != n)
		check_fail("core at scale: %llu mappings, want %llu",
			   (unsigned long long)c.ctx->n_mappings, (unsigned long long)n);
	if (sink == 0)
		fputc(' ', stderr); /* keep the lookups */
	core_env_close(&c);
	return 0;
}

/* ---- the public entry points: each in a child ---------------------------- */

struct args {
	uint64_t n, pages, stride, bytes;
	size_t b;
	unsigned ops;
};

static int direct_fn(const void *a, void *out)
{
	const struct args *x = a;
	return direct_impl(x->n, x->pages, x->stride, out);
}

int inproc_direct(uint64_t n, uint64_t pages, uint64_t stride, struct direct_result *out)
{
	struct args a = { .n = n, .pages = pages, .stride = stride };
	return in_child(direct_fn, &a, out, sizeof(*out));
}

static int direct_huge_fn(const void *a, void *out)
{
	return direct_huge_impl(((const struct args *)a)->bytes, out);
}

int inproc_direct_huge(uint64_t bytes, struct direct_result *out)
{
	struct args a = { .bytes = bytes };
	return in_child(direct_huge_fn, &a, out, sizeof(*out));
}

static int core_batch_fn(const void *a, void *out)
{
	const struct args *x = a;
	return core_batch_impl(x->n, x->b, out);
}

int inproc_core_batch(uint64_t n, size_t b, struct direct_result *out)
{
	struct args a = { .n = n, .b = b };
	return in_child(core_batch_fn, &a, out, sizeof(*out));
}

static int scale_fn(const void *a, void *out)
{
	const struct args *x = a;
	return scale_impl(x->n, x->ops, out);
}

static int core_only_fn(const void *a, void *out)
{
	return core_only_impl(((const struct args *)a)->n, out);
}

int inproc_scale(uint64_t n, unsigned ops, struct scale_result *out)
{
	struct args a = { .n = n, .ops = ops };
	struct scale_result co;
	int r = in_child(core_only_fn, &a, &co, sizeof(co));
	if (r < 0)
		return r;
	r = in_child(scale_fn, &a, out, sizeof(*out));
	out->core_per_mapping = co.core_per_mapping;
	return r;
}
