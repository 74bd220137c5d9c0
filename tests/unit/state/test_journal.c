/* Unit tests of the state journal (daemon/state/journal_file.c).
 *
 * The format is checked byte by byte against the specification in
 * journal_file.c's header comment, re-stated here with the test's own offsets,
 * so a drift between the code and the document fails a test.
 *
 * The state model (struct jrnl_state) is checked against an independent,
 * deliberately simple model (flat arrays, linear scans) that only
 * understands the valid operation sequences a daemon would write; a random
 * workload generator drives both. The crash tests kill a forked writer at
 * random instants and check that every replay equals the simple model after
 * exactly the number of records the replay delivered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "state/journal.h"
#include "util/macro.h"

/* ---- the format, restated ---- */
#define H_SIZE 64
#define H_OFF_VERSION 8
#define H_OFF_HSIZE 12
#define H_OFF_GEN 16
#define H_OFF_BASESEQ 24
#define H_OFF_CRC 44
#define H_OFF_COMMIT 48

/* ---- small helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
	/* xorshift64* */
	uint64_t x = rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545F4914F6CDD1Dull;
}
static uint64_t rndn(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t le64_at(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}
static uint32_t le32_at(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void le64_put(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static void le32_put(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The whole file, read through the fd (not through the journal's mapping). */
static uint8_t *slurp(int fd, size_t *len)
{
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	uint8_t *b = malloc((size_t)st.st_size);
	assert_non_null(b);
	assert_int_equal(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
	*len = (size_t)st.st_size;
	return b;
}

static uint64_t commit_word_of(uint64_t committed)
{
	uint8_t b[8];
	le64_put(b, committed);
	return committed | (uint64_t)(jrnl_crc32c(0, b, 6) & 0xffff) << 48;
}

/* Writes a valid commit word for `committed` through the fd. */
static void set_committed(int fd, uint64_t committed)
{
	uint8_t b[8];
	le64_put(b, commit_word_of(committed));
	assert_int_equal(pwrite(fd, b, 8, H_OFF_COMMIT), 8);
}

static uint64_t get_committed(int fd)
{
	uint8_t b[8];
	assert_int_equal(pread(fd, b, 8, H_OFF_COMMIT), 8);
	return le64_at(b) & ((1ull << 48) - 1);
}

static void xor_byte(int fd, uint64_t off, uint8_t x)
{
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	b ^= x;
	assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
}

/* Opens another journal object on the same file (a dup of its fd). */
static struct jrnl *reopen(struct jrnl *j)
{
	struct jrnl *n = NULL;
	struct dmb_err e = { 0 };
	int fd = dup(jrnl_fd(j));
	assert_true(fd >= 0);
	int r = jrnl_open_fd(fd, &n, &e);
	if (r < 0)
		fail_msg("reopen failed: %s", e.msg);
	return n;
}

static void assert_states_equal(const struct jrnl_state *a, const struct jrnl_state *b);

/* The restore path opens and replays in one walk (jrnl_open_replay_fd):
 * it must find exactly what jrnl_open_fd then jrnl_replay find, on the same
 * file: the same state, the same result, the same tail, the same damage. */
static void check_one_walk(struct jrnl *j, const struct jrnl_state *want,
			   const struct jrnl_replay_result *want_res, int want_rc)
{
	struct jrnl *two = NULL, *one = NULL;
	struct dmb_err e = { 0 };
	int fd2 = dup(jrnl_fd(j)), fd1 = dup(jrnl_fd(j));
	assert_true(fd2 >= 0 && fd1 >= 0);
	if (jrnl_open_fd(fd2, &two, &e) < 0)
		fail_msg("reopen failed: %s", e.msg);
	struct jrnl_state s;
	struct jrnl_replay_result res;
	jrnl_state_init(&s);
	int rc = jrnl_open_replay_fd(fd1, &jrnl_state_ops, &s, &res, &one, &e);
	if (rc != want_rc)
		fail_msg("open+replay in one walk returned %d, two walks %d: %s", rc, want_rc, e.msg);
	assert_non_null(one);
	assert_states_equal(&s, want);
	assert_int_equal(res.records, want_res->records);
	assert_int_equal(res.last_seq, want_res->last_seq);
	assert_int_equal(res.end, want_res->end);
	assert_int_equal(res.stop, want_res->stop);
	assert_int_equal(res.stop_offset, want_res->stop_offset);
	assert_string_equal(res.why, want_res->why);
	assert_int_equal(jrnl_committed(one), jrnl_committed(two));
	assert_int_equal(jrnl_records(one), jrnl_records(two));
	assert_int_equal(jrnl_next_seq(one), jrnl_next_seq(two));
	assert_int_equal(jrnl_generation(one), jrnl_generation(two));
	if (jrnl_damaged(two))
		assert_string_equal(jrnl_damaged(one), jrnl_damaged(two));
	else
		assert_null(jrnl_damaged(one));
	jrnl_state_fini(&s);
	jrnl_close(one);
	jrnl_close(two);
}

static int fail_cb(void *opaque, const struct jrnl_rec *rec)
{
	(void)opaque;
	(void)rec;
	return -EIO;
}

static void replay_into(struct jrnl *j, struct jrnl_state *s, struct jrnl_replay_result *res,
			int expect)
{
	struct dmb_err e = { 0 };
	struct jrnl_replay_result local;
	jrnl_state_init(s);
	int r = jrnl_state_replay(j, s, res ? res : &local, &e);
	if (r != expect)
		fail_msg("replay returned %d, expected %d: %s", r, expect, e.msg);
	check_one_walk(j, s, res ? res : &local, r);
}

static void assert_states_equal(const struct jrnl_state *a, const struct jrnl_state *b)
{
	char why[256];
	if (!jrnl_state_equal(a, b, why, sizeof(why)))
		fail_msg("states differ: %s", why);
}

#define OK(call)                                                         \
	do {                                                             \
		struct dmb_err _e = { 0 };                               \
		int _r = (call);                                         \
		(void)_e;                                                \
		if (_r < 0)                                              \
			fail_msg("%s failed: %d", #call, _r);            \
	} while (0)

/* ==== the independent simple model and the workload generator ==== */

struct m_ctx {
	uint64_t id, session;
	uint32_t uid, gid;
	bool persistent, detached;
	uint8_t token[32];
	char name[65];
};
struct m_reg {
	uint64_t ctx, id, size, page;
	uint32_t flags;
	char fd_name[256];
};
struct m_dev {
	uint64_t ctx, id;
	char bdf[16];
};
struct m_map {
	uint64_t ctx, iova, length, region, offset;
	uint32_t prot, flags;
	uint64_t disc;         /* granular (4 KiB, at most 16 granules): bit i discarded */
};

#define M_MAX 4096
struct model {
	struct m_ctx ctx[64];
	size_t n_ctx;
	struct m_reg reg[256];
	size_t n_reg;
	struct m_dev dev[256];
	size_t n_dev;
	struct m_map map[M_MAX];
	size_t n_map;
	uint64_t next_id;
	uint32_t handoff;
	/* generator-only */
	uint64_t sessions[16];
	size_t n_sessions;
	uint64_t gen_id;
};

static void model_init(struct model *m)
{
	memset(m, 0, sizeof(*m));
	m->next_id = 1;
	m->gen_id = 1;
}

static void m_see(struct model *m, uint64_t id)
{
	if (id + 1 > m->next_id)
		m->next_id = id + 1;
}

static struct m_ctx *m_ctx_find(struct model *m, uint64_t id)
{
	for (size_t i = 0; i < m->n_ctx; i++)
		if (m->ctx[i].id == id)
			return &m->ctx[i];
	return NULL;
}

static void m_ctx_drop(struct model *m, uint64_t id)
{
	for (size_t i = 0; i < m->n_map;)
		if (m->map[i].ctx == id)
			m->map[i] = m->map[--m->n_map];
		else
			i++;
	for (size_t i = 0; i < m->n_reg;)
		if (m->reg[i].ctx == id)
			m->reg[i] = m->reg[--m->n_reg];
		else
			i++;
	for (size_t i = 0; i < m->n_dev;)
		if (m->dev[i].ctx == id)
			m->dev[i] = m->dev[--m->n_dev];
		else
			i++;
	for (size_t i = 0; i < m->n_ctx; i++)
		if (m->ctx[i].id == id) {
			m->ctx[i] = m->ctx[--m->n_ctx];
			break;
		}
}

/* The semantics of valid records, written plainly. */
static void model_apply(struct model *m, const struct jrnl_rec *r)
{
	switch (r->type) {
	case JRNL_CONTEXT_CREATE: {
		struct m_ctx *c = &m->ctx[m->n_ctx++];
		c->id = r->u.ctx_create.ctx;
		c->session = r->u.ctx_create.session;
		c->uid = r->u.ctx_create.uid;
		c->gid = r->u.ctx_create.gid;
		c->persistent = r->u.ctx_create.flags & JRNL_CTX_PERSISTENT;
		c->detached = r->u.ctx_create.flags & JRNL_CTX_DETACHED;
		memcpy(c->token, r->u.ctx_create.token, 32);
		strcpy(c->name, r->u.ctx_create.name);
		m_see(m, c->id);
		m_see(m, c->session);
		break;
	}
	case JRNL_CONTEXT_DESTROY:
		m_ctx_drop(m, r->u.ctx_destroy.ctx);
		break;
	case JRNL_CONTEXT_RECLAIM: {
		struct m_ctx *c = m_ctx_find(m, r->u.ctx_reclaim.ctx);
		c->session = r->u.ctx_reclaim.session;
		c->uid = r->u.ctx_reclaim.uid;
		c->gid = r->u.ctx_reclaim.gid;
		c->detached = false;
		memcpy(c->token, r->u.ctx_reclaim.token, 32);
		m_see(m, c->session);
		break;
	}
	case JRNL_REGION_ADD: {
		struct m_reg *g = &m->reg[m->n_reg++];
		g->ctx = r->u.region_add.ctx;
		g->id = r->u.region_add.region;
		g->size = r->u.region_add.size;
		g->page = r->u.region_add.page_size;
		g->flags = r->u.region_add.flags;
		strcpy(g->fd_name, r->u.region_add.fd_name);
		m_see(m, g->id);
		break;
	}
	case JRNL_REGION_REMOVE:
		for (size_t i = 0; i < m->n_reg; i++)
			if (m->reg[i].id == r->u.region_remove.region) {
				m->reg[i] = m->reg[--m->n_reg];
				break;
			}
		break;
	case JRNL_MAP:
		for (uint32_t k = 0; k < r->u.map.n; k++) {
			const struct jrnl_map_entry *e = &r->u.map.e[k];
			m->map[m->n_map++] = (struct m_map){ r->u.map.ctx, e->iova, e->length,
							     e->region, e->offset, e->prot, e->flags, 0 };
		}
		break;
	case JRNL_DISCARD:
	case JRNL_POPULATE:
		/* the generator's ranges lie inside one granular mapping */
		for (uint32_t k = 0; k < r->u.convert.n; k++) {
			const struct jrnl_range *g = &r->u.convert.r[k];
			for (size_t i = 0; i < m->n_map; i++) {
				struct m_map *x = &m->map[i];
				if (x->ctx != r->u.convert.ctx || g->iova < x->iova ||
				    g->iova >= x->iova + x->length)
					continue;
				for (uint64_t a = g->iova; a < g->iova + g->length; a += 4096) {
					uint64_t bit = UINT64_C(1) << ((a - x->iova) / 4096);
					if (r->type == JRNL_DISCARD)
						x->disc |= bit;
					else
						x->disc &= ~bit;
				}
			}
		}
		break;
	case JRNL_UNMAP:
		for (uint32_t k = 0; k < r->u.unmap.n; k++) {
			uint64_t a = r->u.unmap.r[k].iova, b = a + r->u.unmap.r[k].length;
			for (size_t i = 0; i < m->n_map;) {
				struct m_map *x = &m->map[i];
				if (x->ctx == r->u.unmap.ctx && x->iova >= a && x->iova + x->length <= b)
					*x = m->map[--m->n_map];
				else
					i++;
			}
		}
		break;
	case JRNL_UNMAP_ALL:
		for (size_t i = 0; i < m->n_map;)
			if (m->map[i].ctx == r->u.unmap_all.ctx)
				m->map[i] = m->map[--m->n_map];
			else
				i++;
		break;
	case JRNL_DEVICE_ADD: {
		struct m_dev *d = &m->dev[m->n_dev++];
		d->ctx = r->u.device_add.ctx;
		d->id = r->u.device_add.device;
		strcpy(d->bdf, r->u.device_add.bdf);
		m_see(m, d->id);
		break;
	}
	case JRNL_DEVICE_REMOVE:
		for (size_t i = 0; i < m->n_dev; i++)
			if (m->dev[i].id == r->u.device_remove.device) {
				m->dev[i] = m->dev[--m->n_dev];
				break;
			}
		break;
	case JRNL_SESSION_END:
		for (size_t i = 0; i < m->n_ctx;) {
			struct m_ctx *c = &m->ctx[i];
			if (c->session == r->u.session_end.session && !c->detached) {
				if (c->persistent) {
					c->detached = true;
				} else {
					m_ctx_drop(m, c->id);
					continue;
				}
			}
			i++;
		}
		m_see(m, r->u.session_end.session);
		break;
	case JRNL_ID_WATERMARK:
		if (r->u.id_watermark.next_id > m->next_id)
			m->next_id = r->u.id_watermark.next_id;
		break;
	case JRNL_HANDOFF_STATE:
		m->handoff = r->u.handoff.state;
		break;
	default:
		fail_msg("model: unknown type %u", r->type);
	}
}

/* Compares the simple model with a replayed state, field by field. */
static void model_check(const struct model *m, const struct jrnl_state *s)
{
	assert_int_equal(s->n_ctxs, m->n_ctx);
	assert_int_equal(s->n_maps, m->n_map);
	assert_int_equal(s->next_id, m->next_id);
	assert_int_equal(s->handoff, m->handoff);
	for (size_t i = 0; i < m->n_ctx; i++) {
		const struct m_ctx *mc = &m->ctx[i];
		struct jrnl_ctx *c = jrnl_state_ctx(s, mc->id);
		if (!c)
			fail_msg("context %" PRIu64 " missing", mc->id);
		assert_int_equal(c->session, mc->session);
		assert_int_equal(c->uid, mc->uid);
		assert_int_equal(c->gid, mc->gid);
		assert_int_equal(c->persistent, mc->persistent);
		assert_int_equal(c->detached, mc->detached);
		assert_memory_equal(c->token, mc->token, 32);
		assert_string_equal(c->name, mc->name);
		uint32_t nr = 0, nd = 0;
		uint64_t nm = 0, bytes = 0;
		for (size_t k = 0; k < m->n_reg; k++) {
			const struct m_reg *g = &m->reg[k];
			if (g->ctx != mc->id)
				continue;
			nr++;
			struct jrnl_region *r = jrnl_ctx_region(c, g->id);
			if (!r)
				fail_msg("region %" PRIu64 " missing", g->id);
			assert_int_equal(r->size, g->size);
			assert_int_equal(r->page_size, g->page);
			assert_int_equal(r->flags, g->flags);
			assert_string_equal(r->fd_name, g->fd_name);
			uint64_t refs = 0;
			for (size_t q = 0; q < m->n_map; q++)
				refs += m->map[q].ctx == mc->id && m->map[q].region == g->id;
			assert_int_equal(r->map_refs, refs);
		}
		for (size_t k = 0; k < m->n_map; k++) {
			const struct m_map *x = &m->map[k];
			if (x->ctx != mc->id)
				continue;
			nm++;
			bytes += x->length;
			struct jrnl_map *y = jrnl_ctx_map_find(c, x->iova);
			if (!y || y->iova != x->iova)
				fail_msg("mapping 0x%" PRIx64 " of context %" PRIu64 " missing", x->iova,
					 mc->id);
			assert_int_equal(y->length, x->length);
			assert_int_equal(y->region, x->region);
			assert_int_equal(y->offset, x->offset);
			assert_int_equal(y->prot, x->prot);
			assert_int_equal(y->flags, x->flags);
			assert_int_equal(y->n_discarded, (uint64_t)__builtin_popcountll(x->disc));
			assert_int_equal(y->discarded ? y->discarded[0] : 0, x->disc);
		}
		for (size_t k = 0; k < m->n_dev; k++) {
			const struct m_dev *d = &m->dev[k];
			if (d->ctx != mc->id)
				continue;
			nd++;
			bool found = false;
			for (struct jrnl_dev *x = jrnl_ctx_dev_first(c); x; x = jrnl_ctx_dev_next(x))
				if (x->id == d->id) {
					assert_string_equal(x->bdf, d->bdf);
					found = true;
				}
			assert_true(found);
		}
		assert_int_equal(c->n_regions, nr);
		assert_int_equal(c->n_maps, nm);
		assert_int_equal(c->mapped_bytes, bytes);
		assert_int_equal(c->n_devs, nd);
		uint64_t walked = 0;
		uint64_t prev_end = 0;
		for (struct jrnl_map *x = jrnl_ctx_map_first(c); x; x = jrnl_ctx_map_next(x)) {
			assert_true(x->iova >= prev_end); /* ordered, disjoint */
			prev_end = x->iova + x->length;
			walked++;
		}
		assert_int_equal(walked, nm);
	}
}

/* An order-independent digest, computed the same way from both sides. */
static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
	h *= 0xff51afd7ed558ccdull;
	return h ^ (h >> 33);
}
static uint64_t mix_str(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = mix(h, (uint8_t)*s);
	return mix(h, 0x100);
}
static uint64_t mix_bytes(uint64_t h, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = mix(h, b[i]);
	return h;
}
static uint64_t d_ctx(uint64_t id, uint64_t sess, uint32_t uid, uint32_t gid, bool p, bool d,
		      const uint8_t *tok, const char *name)
{
	uint64_t h = mix(mix(mix(mix(mix(mix(1, id), sess), uid), gid), p), d);
	return mix_str(mix_bytes(h, tok, 32), name);
}
static uint64_t d_reg(uint64_t ctx, uint64_t id, uint64_t size, uint64_t page, uint32_t fl,
		      const char *fd_name)
{
	return mix_str(mix(mix(mix(mix(mix(2, ctx), id), size), page), fl), fd_name);
}
static uint64_t d_map(uint64_t ctx, uint64_t iova, uint64_t len, uint64_t reg, uint64_t off,
		      uint32_t prot, uint32_t fl)
{
	return mix(mix(mix(mix(mix(mix(mix(3, ctx), iova), len), reg), off), prot), fl);
}
static uint64_t d_dev(uint64_t ctx, uint64_t id, const char *bdf)
{
	return mix_str(mix(mix(4, ctx), id), bdf);
}

static uint64_t model_digest(const struct model *m)
{
	uint64_t h = mix(mix(5, m->next_id), m->handoff);
	for (size_t i = 0; i < m->n_ctx; i++) {
		const struct m_ctx *c = &m->ctx[i];
		h += d_ctx(c->id, c->session, c->uid, c->gid, c->persistent, c->detached, c->token,
			   c->name);
	}
	for (size_t i = 0; i < m->n_reg; i++)
		h += d_reg(m->reg[i].ctx, m->reg[i].id, m->reg[i].size, m->reg[i].page,
			   m->reg[i].flags, m->reg[i].fd_name);
	for (size_t i = 0; i < m->n_map; i++) {
		const struct m_map *x = &m->map[i];
		h += d_map(x->ctx, x->iova, x->length, x->region, x->offset, x->prot, x->flags);
	}
	for (size_t i = 0; i < m->n_dev; i++)
		h += d_dev(m->dev[i].ctx, m->dev[i].id, m->dev[i].bdf);
	return h;
}

static uint64_t state_digest(const struct jrnl_state *s)
{
	uint64_t h = mix(mix(5, s->next_id), s->handoff);
	for (struct jrnl_ctx *c = jrnl_state_ctx_first(s); c; c = jrnl_state_ctx_next(c)) {
		h += d_ctx(c->id, c->session, c->uid, c->gid, c->persistent, c->detached, c->token,
			   c->name);
		for (struct jrnl_region *g = jrnl_ctx_region_first(c); g; g = jrnl_ctx_region_next(g))
			h += d_reg(c->id, g->id, g->size, g->page_size, g->flags, g->fd_name);
		for (struct jrnl_map *x = jrnl_ctx_map_first(c); x; x = jrnl_ctx_map_next(x))
			h += d_map(c->id, x->iova, x->length, x->region, x->offset, x->prot, x->flags);
		for (struct jrnl_dev *d = jrnl_ctx_dev_first(c); d; d = jrnl_ctx_dev_next(d))
			h += d_dev(c->id, d->id, d->bdf);
	}
	return h;
}

/* One generated operation: the record, with its arrays owned here. */
struct op {
	struct jrnl_rec rec;
	void *arr;
};

static void op_free(struct op *o)
{
	free(o->arr);
	o->arr = NULL;
}

#define SLOT UINT64_C(0x10000) /* every mapping lies inside one 64 KiB slot */
#define SLOTS 512u

static void rand_str(char *dst, size_t len)
{
	for (size_t i = 0; i < len; i++)
		dst[i] = (char)(0x21 + rndn(94));
	dst[len] = '\0';
}

static bool slot_used(const struct model *m, uint64_t ctx, uint64_t slot)
{
	for (size_t i = 0; i < m->n_map; i++)
		if (m->map[i].ctx == ctx && m->map[i].iova / SLOT == slot)
			return true;
	return false;
}

static size_t regions_of(const struct model *m, uint64_t ctx, const struct m_reg **out, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < m->n_reg && n < max; i++)
		if (m->reg[i].ctx == ctx)
			out[n++] = &m->reg[i];
	return n;
}

/* Generates one valid operation for the model's current state, applies it
 * to the model and returns it. map_weight tilts the mix towards mappings. */
static void gen_op(struct model *m, struct op *o, unsigned map_weight)
{
	memset(o, 0, sizeof(*o));
	struct jrnl_rec *r = &o->rec;
	for (;;) {
		unsigned k = (unsigned)rndn(100 + map_weight);
		if (k >= 100 || k < 30) { /* MAP */
			if (!m->n_ctx || m->n_map + 64 > M_MAX)
				continue;
			struct m_ctx *c = &m->ctx[rndn(m->n_ctx)];
			const struct m_reg *regs[16];
			size_t nr = regions_of(m, c->id, regs, 16);
			if (!nr)
				continue;
			uint32_t n = rndn(4) == 0 ? 1 + (uint32_t)rndn(48) : 1;
			struct jrnl_map_entry *e = calloc(n, sizeof(*e));
			uint32_t got = 0;
			for (uint32_t t = 0; t < n * 4 && got < n; t++) {
				uint64_t slot = rndn(SLOTS);
				bool clash = slot_used(m, c->id, slot);
				for (uint32_t q = 0; q < got; q++)
					clash |= e[q].iova / SLOT == slot;
				if (clash)
					continue;
				uint64_t start = rndn(8) * 4096, len = (1 + rndn(16 - start / 4096)) * 4096;
				const struct m_reg *g = regs[rndn(nr)];
				e[got++] = (struct jrnl_map_entry){ slot * SLOT + start, len, g->id,
								    rndn(g->size / 4096) * 4096,
								    1 + (uint32_t)rndn(3),
								    /* RAM entries: never JRNL_MAP_MMIO;
								     * some granular (4 KiB) */
								    (uint32_t)rndn(2) << 1 |
								    (rndn(3) ? 0 : JRNL_MAP_GRANULE(12)) };
			}
			if (!got) {
				free(e);
				continue;
			}
			r->type = JRNL_MAP;
			r->u.map.ctx = c->id;
			r->u.map.n = got;
			r->u.map.e = e;
			o->arr = e;
			break;
		}
		if (k < 40) { /* UNMAP: 64 KiB-aligned windows never split a mapping */
			if (!m->n_ctx)
				continue;
			struct m_ctx *c = &m->ctx[rndn(m->n_ctx)];
			uint32_t n = 1 + (uint32_t)rndn(3);
			struct jrnl_range *rg = calloc(n, sizeof(*rg));
			uint64_t at = rndn(SLOTS / 2);
			for (uint32_t q = 0; q < n; q++) {
				uint64_t w = 1 + rndn(q == 0 && rndn(2) ? 1 : 8);
				rg[q] = (struct jrnl_range){ at * SLOT, w * SLOT };
				at += w + rndn(8);
			}
			r->type = JRNL_UNMAP;
			r->u.unmap.ctx = c->id;
			r->u.unmap.n = n;
			r->u.unmap.r = rg;
			o->arr = rg;
			break;
		}
		if (k < 48) { /* CONTEXT_CREATE (opens a session when needed) */
			if (m->n_ctx >= 12)
				continue;
			if (!m->n_sessions || (m->n_sessions < 16 && rndn(3) == 0))
				m->sessions[m->n_sessions++] = m->gen_id++;
			r->type = JRNL_CONTEXT_CREATE;
			r->u.ctx_create.ctx = m->gen_id++;
			r->u.ctx_create.session = m->sessions[rndn(m->n_sessions)];
			r->u.ctx_create.uid = 1000 + (uint32_t)rndn(5);
			r->u.ctx_create.gid = 100 + (uint32_t)rndn(5);
			r->u.ctx_create.flags = rndn(2) ? JRNL_CTX_PERSISTENT : 0;
			for (int q = 0; q < 32; q++)
				r->u.ctx_create.token[q] = (uint8_t)rnd();
			rand_str(r->u.ctx_create.name, rndn(JRNL_NAME_MAX + 1));
			break;
		}
		if (k < 51) { /* CONTEXT_DESTROY */
			if (!m->n_ctx)
				continue;
			r->type = JRNL_CONTEXT_DESTROY;
			r->u.ctx_destroy.ctx = m->ctx[rndn(m->n_ctx)].id;
			break;
		}
		if (k < 55) { /* CONTEXT_RECLAIM of a detached context */
			struct m_ctx *c = NULL;
			for (size_t i = 0; i < m->n_ctx && !c; i++)
				if (m->ctx[i].detached)
					c = &m->ctx[i];
			if (!c || !m->n_sessions)
				continue;
			r->type = JRNL_CONTEXT_RECLAIM;
			r->u.ctx_reclaim.ctx = c->id;
			r->u.ctx_reclaim.session = m->sessions[rndn(m->n_sessions)];
			r->u.ctx_reclaim.uid = c->uid;
			r->u.ctx_reclaim.gid = c->gid;
			for (int q = 0; q < 32; q++)
				r->u.ctx_reclaim.token[q] = (uint8_t)rnd();
			break;
		}
		if (k < 63) { /* REGION_ADD */
			if (!m->n_ctx || m->n_reg >= 200)
				continue;
			struct m_ctx *c = &m->ctx[rndn(m->n_ctx)];
			const struct m_reg *regs[8];
			if (regions_of(m, c->id, regs, 8) >= 6)
				continue;
			r->type = JRNL_REGION_ADD;
			r->u.region_add.ctx = c->id;
			r->u.region_add.region = m->gen_id++;
			r->u.region_add.size = (1 + rndn(64)) << 20;
			r->u.region_add.page_size = rndn(2) ? 4096 : 2 << 20;
			r->u.region_add.flags = (uint32_t)rndn(4);
			rand_str(r->u.region_add.fd_name, 1 + rndn(JRNL_FDNAME_MAX));
			break;
		}
		if (k < 66) { /* REGION_REMOVE of an unused region */
			if (!m->n_reg)
				continue;
			const struct m_reg *g = &m->reg[rndn(m->n_reg)];
			bool used = false;
			for (size_t i = 0; i < m->n_map; i++)
				used |= m->map[i].region == g->id;
			if (used)
				continue;
			r->type = JRNL_REGION_REMOVE;
			r->u.region_remove.ctx = g->ctx;
			r->u.region_remove.region = g->id;
			break;
		}
		if (k < 68) { /* UNMAP_ALL */
			if (!m->n_ctx)
				continue;
			r->type = JRNL_UNMAP_ALL;
			r->u.unmap_all.ctx = m->ctx[rndn(m->n_ctx)].id;
			break;
		}
		if (k < 73) { /* DEVICE_ADD */
			if (!m->n_ctx || m->n_dev >= 200)
				continue;
			r->type = JRNL_DEVICE_ADD;
			r->u.device_add.ctx = m->ctx[rndn(m->n_ctx)].id;
			r->u.device_add.device = m->gen_id++;
			snprintf(r->u.device_add.bdf, sizeof(r->u.device_add.bdf), "0000:%02x:%02x.%x",
				 (unsigned)rndn(256), (unsigned)rndn(32), (unsigned)rndn(8));
			break;
		}
		if (k < 76) { /* DEVICE_REMOVE */
			if (!m->n_dev)
				continue;
			const struct m_dev *d = &m->dev[rndn(m->n_dev)];
			r->type = JRNL_DEVICE_REMOVE;
			r->u.device_remove.ctx = d->ctx;
			r->u.device_remove.device = d->id;
			break;
		}
		if (k < 80) { /* SESSION_END */
			if (!m->n_sessions)
				continue;
			size_t i = rndn(m->n_sessions);
			r->type = JRNL_SESSION_END;
			r->u.session_end.session = m->sessions[i];
			m->sessions[i] = m->sessions[--m->n_sessions];
			break;
		}
		if (k < 83) { /* ID_WATERMARK: reserve a block of ids */
			m->gen_id += 100;
			r->type = JRNL_ID_WATERMARK;
			r->u.id_watermark.next_id = m->gen_id;
			break;
		}
		if (k < 85) {
			r->type = JRNL_HANDOFF_STATE;
			r->u.handoff.state = (uint32_t)rndn(JRNL_HANDOFF_LAST + 1);
			break;
		}
		if (k < 95) { /* DISCARD / POPULATE granules of a granular mapping */
			const struct m_map *g[64];
			size_t ng = 0;
			for (size_t i = 0; i < m->n_map && ng < 64; i++)
				if (jrnl_map_granule(m->map[i].flags))
					g[ng++] = &m->map[i];
			if (!ng)
				continue;
			const struct m_map *x = g[rndn(ng)];
			uint64_t n = x->length / 4096, first = rndn(n), cnt = 1 + rndn(n - first);
			struct jrnl_range *rg = calloc(1, sizeof(*rg));
			*rg = (struct jrnl_range){ x->iova + first * 4096, cnt * 4096 };
			r->type = rndn(2) ? JRNL_DISCARD : JRNL_POPULATE;
			r->u.convert.ctx = x->ctx;
			r->u.convert.n = 1;
			r->u.convert.r = rg;
			o->arr = rg;
			break;
		}
	}
	model_apply(m, r);
}

static void append_op(struct jrnl *j, const struct op *o)
{
	struct dmb_err e = { 0 };
	int r = jrnl_append(j, &o->rec, &e);
	if (r < 0)
		fail_msg("append of type %u failed: %s", o->rec.type, e.msg);
}

/* ==== CRC-32C ==== */

static uint32_t crc_bitwise(const uint8_t *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
	}
	return ~c;
}

static void test_crc32c(void **state)
{
	(void)state;
	assert_int_equal(jrnl_crc32c(0, "123456789", 9), 0xE3069283u);
	uint8_t b[32];
	memset(b, 0, 32);
	assert_int_equal(jrnl_crc32c(0, b, 32), 0x8A9136AAu); /* RFC 3720 B.4 */
	memset(b, 0xff, 32);
	assert_int_equal(jrnl_crc32c(0, b, 32), 0x62A8AB43u);
	for (int i = 0; i < 32; i++)
		b[i] = (uint8_t)i;
	assert_int_equal(jrnl_crc32c(0, b, 32), 0x46DD794Eu);
	assert_int_equal(jrnl_crc32c(0, b, 0), 0);

	uint8_t buf[300];
	for (int it = 0; it < 2000; it++) {
		for (size_t i = 0; i < sizeof(buf); i++)
			buf[i] = (uint8_t)rnd();
		size_t off = rndn(16), n = rndn(sizeof(buf) - 16), cut = rndn(n + 1);
		uint32_t want = crc_bitwise(buf + off, n);
		assert_int_equal(jrnl_crc32c(0, buf + off, n), want);
		assert_int_equal(jrnl_crc32c(jrnl_crc32c(0, buf + off, cut), buf + off + cut, n - cut),
				 want);
		/* the table fallback, whichever one jrnl_crc32c picked here */
		assert_int_equal(jrnl_crc32c_sw(0, buf + off, n), want);
		assert_int_equal(jrnl_crc32c_sw(jrnl_crc32c_sw(0, buf + off, cut), buf + off + cut,
						n - cut),
				 want);
	}
	assert_int_equal(jrnl_crc32c_sw(0, "123456789", 9), 0xE3069283u);
}

/* ==== the bytes on file match the specification ==== */

static void test_format_bytes(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	int fd = jrnl_fd(j);
	/* a memfd with the shrink seal, close-on-exec */
	assert_true(fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);

	OK(jrnl_append_map(j, 7, 0x1000, 0x2000, 9, 0x3000, 3, 1, &_e));
	OK(jrnl_append_device_add(j, 7, 11, "0000:01:00.0", &_e));
	size_t len;
	uint8_t *f = slurp(fd, &len);
	assert_true(len >= 64 * 1024);

	/* header */
	assert_memory_equal(f, "DMBJRNL\0", 8);
	assert_int_equal(le32_at(f + H_OFF_VERSION), JRNL_VERSION);
	assert_int_equal(le32_at(f + H_OFF_HSIZE), 64);
	assert_int_equal(le64_at(f + H_OFF_GEN), 1);
	assert_int_equal(le64_at(f + H_OFF_BASESEQ), 1);
	for (int i = 32; i < 44; i++)
		assert_int_equal(f[i], 0);
	assert_int_equal(le32_at(f + H_OFF_CRC), jrnl_crc32c(0, f, 44));
	for (int i = 56; i < 64; i++)
		assert_int_equal(f[i], 0);

	/* MAP: 16 + 16 + 40 + 4 = 76 bytes, padded to 80 */
	const uint8_t *r = f + 64;
	assert_int_equal(le32_at(r), 76);
	assert_int_equal(le32_at(r + 4), JRNL_MAP);
	assert_int_equal(le64_at(r + 8), 1);
	assert_int_equal(le64_at(r + 16), 7);     /* ctx */
	assert_int_equal(le32_at(r + 24), 1);     /* n */
	assert_int_equal(le32_at(r + 28), 0);
	assert_int_equal(le64_at(r + 32), 0x1000);
	assert_int_equal(le64_at(r + 40), 0x2000);
	assert_int_equal(le64_at(r + 48), 9);
	assert_int_equal(le64_at(r + 56), 0x3000);
	assert_int_equal(le32_at(r + 64), 3);
	assert_int_equal(le32_at(r + 68), 1);
	assert_int_equal(le32_at(r + 72), jrnl_crc32c(0, r, 72));
	/* DEVICE_ADD: 16 + 8 + 8 + 2 + 12 + 4 = 50, padded to 56 */
	r = f + 64 + 80;
	assert_int_equal(le32_at(r), 50);
	assert_int_equal(le32_at(r + 4), JRNL_DEVICE_ADD);
	assert_int_equal(le64_at(r + 8), 2);
	assert_int_equal(le64_at(r + 16), 7);
	assert_int_equal(le64_at(r + 24), 11);
	assert_int_equal(r[32] | r[33] << 8, 12);
	assert_memory_equal(r + 34, "0000:01:00.0", 12);
	assert_int_equal(le32_at(r + 46), jrnl_crc32c(0, r, 46));
	for (int i = 50; i < 56; i++)
		assert_int_equal(r[i], 0);
	/* commit word */
	uint64_t w = le64_at(f + H_OFF_COMMIT);
	assert_int_equal(w, commit_word_of(136));
	assert_int_equal(jrnl_committed(j), 136);
	assert_int_equal(jrnl_records(j), 2);
	assert_int_equal(jrnl_next_seq(j), 3);
	free(f);
	jrnl_close(j);
	jrnl_close(NULL);
}

/* ==== round trip of every record type ==== */

struct collected {
	struct jrnl_rec rec[64];
	void *arr[64];
	size_t n;
};

static int collect(void *opaque, const struct jrnl_rec *rec)
{
	struct collected *c = opaque;
	assert_true(c->n < 64);
	c->rec[c->n] = *rec;
	if (rec->type == JRNL_MAP) {
		size_t sz = rec->u.map.n * sizeof(*rec->u.map.e);
		c->arr[c->n] = malloc(sz);
		memcpy(c->arr[c->n], rec->u.map.e, sz);
		c->rec[c->n].u.map.e = c->arr[c->n];
	} else if (rec->type == JRNL_UNMAP || rec->type == JRNL_DISCARD || rec->type == JRNL_POPULATE) {
		size_t sz = rec->u.unmap.n * sizeof(*rec->u.unmap.r);
		c->arr[c->n] = malloc(sz);
		memcpy(c->arr[c->n], rec->u.unmap.r, sz);
		c->rec[c->n].u.unmap.r = c->arr[c->n];
	}
	c->n++;
	return 0;
}

static void collected_free(struct collected *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->arr[i]);
	c->n = 0;
}

static void assert_rec_equal(const struct jrnl_rec *a, const struct jrnl_rec *b)
{
	assert_int_equal(a->type, b->type);
	switch (a->type) {
	case JRNL_CONTEXT_CREATE:
		assert_int_equal(a->u.ctx_create.ctx, b->u.ctx_create.ctx);
		assert_int_equal(a->u.ctx_create.session, b->u.ctx_create.session);
		assert_int_equal(a->u.ctx_create.uid, b->u.ctx_create.uid);
		assert_int_equal(a->u.ctx_create.gid, b->u.ctx_create.gid);
		assert_int_equal(a->u.ctx_create.flags, b->u.ctx_create.flags);
		assert_memory_equal(a->u.ctx_create.token, b->u.ctx_create.token, 32);
		assert_string_equal(a->u.ctx_create.name, b->u.ctx_create.name);
		break;
	case JRNL_CONTEXT_DESTROY:
		assert_int_equal(a->u.ctx_destroy.ctx, b->u.ctx_destroy.ctx);
		break;
	case JRNL_CONTEXT_RECLAIM:
		assert_int_equal(a->u.ctx_reclaim.ctx, b->u.ctx_reclaim.ctx);
		assert_int_equal(a->u.ctx_reclaim.session, b->u.ctx_reclaim.session);
		assert_int_equal(a->u.ctx_reclaim.uid, b->u.ctx_reclaim.uid);
		assert_int_equal(a->u.ctx_reclaim.gid, b->u.ctx_reclaim.gid);
		assert_memory_equal(a->u.ctx_reclaim.token, b->u.ctx_reclaim.token, 32);
		break;
	case JRNL_REGION_ADD:
		assert_int_equal(a->u.region_add.ctx, b->u.region_add.ctx);
		assert_int_equal(a->u.region_add.region, b->u.region_add.region);
		assert_int_equal(a->u.region_add.size, b->u.region_add.size);
		assert_int_equal(a->u.region_add.page_size, b->u.region_add.page_size);
		assert_int_equal(a->u.region_add.flags, b->u.region_add.flags);
		assert_string_equal(a->u.region_add.fd_name, b->u.region_add.fd_name);
		break;
	case JRNL_REGION_REMOVE:
		assert_int_equal(a->u.region_remove.ctx, b->u.region_remove.ctx);
		assert_int_equal(a->u.region_remove.region, b->u.region_remove.region);
		break;
	case JRNL_MAP:
		assert_int_equal(a->u.map.ctx, b->u.map.ctx);
		assert_int_equal(a->u.map.n, b->u.map.n);
		for (uint32_t i = 0; i < a->u.map.n; i++) {
			const struct jrnl_map_entry *x = &a->u.map.e[i], *y = &b->u.map.e[i];
			assert_int_equal(x->iova, y->iova);
			assert_int_equal(x->length, y->length);
			assert_int_equal(x->region, y->region);
			assert_int_equal(x->offset, y->offset);
			assert_int_equal(x->prot, y->prot);
			assert_int_equal(x->flags, y->flags);
		}
		break;
	case JRNL_UNMAP:
	case JRNL_DISCARD:
	case JRNL_POPULATE:
		assert_int_equal(a->u.unmap.ctx, b->u.unmap.ctx);
		assert_int_equal(a->u.unmap.n, b->u.unmap.n);
		for (uint32_t i = 0; i < a->u.unmap.n; i++) {
			assert_int_equal(a->u.unmap.r[i].iova, b->u.unmap.r[i].iova);
			assert_int_equal(a->u.unmap.r[i].length, b->u.unmap.r[i].length);
		}
		break;
	case JRNL_UNMAP_ALL:
		assert_int_equal(a->u.unmap_all.ctx, b->u.unmap_all.ctx);
		break;
	case JRNL_DEVICE_ADD:
		assert_int_equal(a->u.device_add.ctx, b->u.device_add.ctx);
		assert_int_equal(a->u.device_add.device, b->u.device_add.device);
		assert_string_equal(a->u.device_add.bdf, b->u.device_add.bdf);
		break;
	case JRNL_DEVICE_REMOVE:
		assert_int_equal(a->u.device_remove.ctx, b->u.device_remove.ctx);
		assert_int_equal(a->u.device_remove.device, b->u.device_remove.device);
		break;
	case JRNL_SESSION_END:
		assert_int_equal(a->u.session_end.session, b->u.session_end.session);
		break;
	case JRNL_ID_WATERMARK:
		assert_int_equal(a->u.id_watermark.next_id, b->u.id_watermark.next_id);
		break;
	case JRNL_HANDOFF_STATE:
		assert_int_equal(a->u.handoff.state, b->u.handoff.state);
		break;
	default:
		fail_msg("unexpected type %u", a->type);
	}
}

static struct jrnl_map_entry big_batch[JRNL_BATCH_MAX];
static struct jrnl_range some_ranges[3] = { { 0x1000, 0x1000 }, { UINT64_MAX - 0xfff, 0x1000 },
					    { 0, 1 } };

/* One record of every type, with extreme values. */
static size_t all_types(struct jrnl_rec *out)
{
	size_t n = 0;
	struct jrnl_rec *r;
	uint8_t tok[32];
	for (int i = 0; i < 32; i++)
		tok[i] = (uint8_t)(0xA0 + i);

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_CONTEXT_CREATE };
	r->u.ctx_create.ctx = UINT64_MAX - 1;
	r->u.ctx_create.session = 0x1122334455667788ull;
	r->u.ctx_create.uid = UINT32_MAX;
	r->u.ctx_create.gid = 0;
	r->u.ctx_create.flags = JRNL_CTX_PERSISTENT | JRNL_CTX_DETACHED;
	memcpy(r->u.ctx_create.token, tok, 32);
	memset(r->u.ctx_create.name, 'n', JRNL_NAME_MAX);
	r->u.ctx_create.name[JRNL_NAME_MAX] = '\0';

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_CONTEXT_CREATE };
	r->u.ctx_create.ctx = 1; /* empty name, no flags */

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_CONTEXT_RECLAIM };
	r->u.ctx_reclaim.ctx = 5;
	r->u.ctx_reclaim.session = 6;
	r->u.ctx_reclaim.uid = 7;
	r->u.ctx_reclaim.gid = 8;
	memcpy(r->u.ctx_reclaim.token, tok, 32);

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_REGION_ADD };
	r->u.region_add.ctx = 1;
	r->u.region_add.region = 2;
	r->u.region_add.size = UINT64_MAX;
	r->u.region_add.page_size = 1ull << 30;
	r->u.region_add.flags = JRNL_REGION_FLAGS_ALL;
	memset(r->u.region_add.fd_name, 'f', JRNL_FDNAME_MAX);
	r->u.region_add.fd_name[JRNL_FDNAME_MAX] = '\0';

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_REGION_ADD };
	r->u.region_add.ctx = 1;
	r->u.region_add.region = 3;
	strcpy(r->u.region_add.fd_name, "x");

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_REGION_REMOVE };
	r->u.region_remove.ctx = 1;
	r->u.region_remove.region = 3;

	for (uint32_t i = 0; i < JRNL_BATCH_MAX; i++)
		big_batch[i] = (struct jrnl_map_entry){ (uint64_t)i << 12, 4096, i, UINT64_MAX - 4095,
							i, ~i & ~JRNL_MAP_GRANULE(0x3f) };
	/* v1.1: a granular (2 MiB) entry */
	big_batch[5].flags = JRNL_MAP_GRANULE(21);
	big_batch[5].iova = big_batch[5].offset = 0;
	big_batch[5].length = 4u << 20;
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_MAP };
	r->u.map.ctx = 1;
	r->u.map.n = JRNL_BATCH_MAX;
	r->u.map.e = big_batch;

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_MAP };
	r->u.map.ctx = 2;
	r->u.map.n = 1;
	r->u.map.e = &big_batch[77];

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_UNMAP };
	r->u.unmap.ctx = 1;
	r->u.unmap.n = 3;
	r->u.unmap.r = some_ranges;

	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_UNMAP_ALL, .u.unmap_all.ctx = 99 };
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_DEVICE_ADD };
	r->u.device_add.ctx = 1;
	r->u.device_add.device = 4;
	strcpy(r->u.device_add.bdf, "ffff:ff:1f.7xyz"); /* 15 bytes: the maximum */
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_DEVICE_REMOVE };
	r->u.device_remove.ctx = 1;
	r->u.device_remove.device = 4;
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_SESSION_END, .u.session_end.session = 42 };
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_ID_WATERMARK, .u.id_watermark.next_id = 1ull << 40 };
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_HANDOFF_STATE, .u.handoff.state = JRNL_HANDOFF_RECLAIMING };
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_CONTEXT_DESTROY, .u.ctx_destroy.ctx = UINT64_MAX };
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_CONTEXT_CREATE };
	r->u.ctx_create.ctx = 2; /* a no-IOMMU context (1.1) */
	r->u.ctx_create.flags = JRNL_CTX_PERSISTENT | JRNL_CTX_NOIOMMU;
	/* v1.1: granules discarded and populated */
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_DISCARD };
	r->u.convert.ctx = 1;
	r->u.convert.n = 3;
	r->u.convert.r = some_ranges;
	r = &out[n++];
	*r = (struct jrnl_rec){ .type = JRNL_POPULATE };
	r->u.convert.ctx = 1;
	r->u.convert.n = 2;
	r->u.convert.r = some_ranges + 1;

	return n;
}

static void test_roundtrip_all_types(void **state)
{
	(void)state;
	struct jrnl_rec in[32];
	size_t n = all_types(in);
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	for (size_t i = 0; i < n; i++) {
		int r = jrnl_append(j, &in[i], &e);
		if (r < 0)
			fail_msg("append %zu: %s", i, e.msg);
	}
	/* the typed wrappers produce the same records */
	const struct jrnl_rec *c = &in[0];
	OK(jrnl_append_ctx_create(j, c->u.ctx_create.ctx, c->u.ctx_create.session,
				  c->u.ctx_create.uid, c->u.ctx_create.gid, c->u.ctx_create.flags,
				  c->u.ctx_create.name, c->u.ctx_create.token, &_e));
	OK(jrnl_append_ctx_destroy(j, UINT64_MAX, &_e));
	OK(jrnl_append_ctx_reclaim(j, 5, 6, 7, 8, in[2].u.ctx_reclaim.token, &_e));
	OK(jrnl_append_region_add(j, 1, 2, UINT64_MAX, 1ull << 30, JRNL_REGION_FLAGS_ALL,
				  in[3].u.region_add.fd_name, &_e));
	OK(jrnl_append_region_remove(j, 1, 3, &_e));
	OK(jrnl_append_map(j, 2, big_batch[77].iova, big_batch[77].length, big_batch[77].region,
			   big_batch[77].offset, big_batch[77].prot, big_batch[77].flags, &_e));
	OK(jrnl_append_map_batch(j, 1, big_batch, JRNL_BATCH_MAX, &_e));
	OK(jrnl_append_unmap(j, 1, 0x1000, 0x1000, &_e));
	OK(jrnl_append_unmap_ranges(j, 1, some_ranges, 3, &_e));
	OK(jrnl_append_unmap_all(j, 99, &_e));
	OK(jrnl_append_device_add(j, 1, 4, "ffff:ff:1f.7xyz", &_e));
	OK(jrnl_append_device_remove(j, 1, 4, &_e));
	OK(jrnl_append_session_end(j, 42, &_e));
	OK(jrnl_append_id_watermark(j, 1ull << 40, &_e));
	OK(jrnl_append_handoff(j, JRNL_HANDOFF_RECLAIMING, &_e));
	OK(jrnl_append_convert(j, 1, true, some_ranges, 3, &_e));
	OK(jrnl_append_convert(j, 1, false, some_ranges + 1, 2, &_e));
	const size_t wrapped_from = n;
	const struct jrnl_rec *expect_wrapped[] = { &in[0], &in[15], &in[2], &in[3], &in[5], &in[7],
						    &in[6], NULL, &in[8], &in[9], &in[10], &in[11],
						    &in[12], &in[13], &in[14], &in[17], &in[18] };
	struct jrnl_range one = { 0x1000, 0x1000 };
	struct jrnl_rec unmap1 = { .type = JRNL_UNMAP, .u.unmap = { 1, 1, &one } };

	for (int pass = 0; pass < 2; pass++) {
		struct jrnl *rj = pass ? reopen(j) : j; /* in place, then as a new process would */
		struct collected col = { 0 };
		struct jrnl_ops ops = { .record = collect };
		struct jrnl_replay_result res;
		assert_int_equal(jrnl_replay(rj, &ops, &col, &res, &e), 0);
		assert_int_equal(col.n, n + DMB_ARRAY_SIZE(expect_wrapped));
		assert_int_equal(res.records, col.n);
		assert_int_equal(res.stop, JRNL_STOP_END);
		assert_int_equal(res.last_seq, col.n);
		assert_int_equal(res.end, 64 + jrnl_committed(j));
		for (size_t i = 0; i < n; i++) {
			assert_rec_equal(&in[i], &col.rec[i]);
			assert_int_equal(col.rec[i].seq, i + 1);
		}
		for (size_t i = 0; i < DMB_ARRAY_SIZE(expect_wrapped); i++)
			assert_rec_equal(expect_wrapped[i] ? expect_wrapped[i] : &unmap1,
					 &col.rec[wrapped_from + i]);
		collected_free(&col);
		if (pass) {
			assert_int_equal(jrnl_records(rj), jrnl_records(j));
			assert_int_equal(jrnl_next_seq(rj), jrnl_next_seq(j));
			assert_null(jrnl_damaged(rj));
			jrnl_close(rj);
		}
	}
	jrnl_close(j);
}

/* ==== appends refuse malformed records and leave the journal alone ==== */

static void test_append_validation(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	uint8_t tok[32] = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	OK(jrnl_append_session_end(j, 1, &_e));
	uint64_t before = jrnl_committed(j);
	char name[JRNL_FDNAME_MAX + 2];
	memset(name, 'a', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';

#define REFUSED(call)                                                              \
	do {                                                                       \
		dmb_err_clear(&e);                                                 \
		assert_int_equal((call), -EINVAL);                                 \
		assert_int_equal(e.code, DMB_E_INVALID_ARGUMENT);                  \
		assert_non_null(strstr(e.msg, "malformed"));                       \
		assert_int_equal(jrnl_committed(j), before);                       \
	} while (0)
	REFUSED(jrnl_append_ctx_create(j, 1, 1, 0, 0, 0, name, tok, &e)); /* name too long */
	REFUSED(jrnl_append_ctx_create(j, 1, 1, 0, 0, 1u << 5, "x", tok, &e));
	REFUSED(jrnl_append_ctx_create(j, 1, 1, 0, 0, JRNL_CTX_DETACHED, "x", tok, &e));
	REFUSED(jrnl_append_region_add(j, 1, 2, 0, 0, 0, "", &e));
	REFUSED(jrnl_append_region_add(j, 1, 2, 0, 0, 0, name, &e));
	REFUSED(jrnl_append_region_add(j, 1, 2, 0, 0, 1u << 7, "x", &e));
	REFUSED(jrnl_append_map(j, 1, 0x1000, 0, 1, 0, 3, 0, &e));
	REFUSED(jrnl_append_map(j, 1, UINT64_MAX, 2, 1, 0, 3, 0, &e));
	REFUSED(jrnl_append_map(j, 1, 0, 2, 1, UINT64_MAX, 3, 0, &e));
	REFUSED(jrnl_append_map_batch(j, 1, big_batch, 0, &e));
	REFUSED(jrnl_append_map_batch(j, 1, big_batch, JRNL_BATCH_MAX + 1, &e));
	struct jrnl_map_entry bad[2] = { { 0, 4096, 1, 0, 3, 0 }, { 8192, 0, 1, 0, 3, 0 } };
	REFUSED(jrnl_append_map_batch(j, 1, bad, 2, &e));
	assert_non_null(strstr(e.msg, "entry 1"));
	REFUSED(jrnl_append_unmap(j, 1, 0, 0, &e));
	REFUSED(jrnl_append_unmap(j, 1, UINT64_MAX, 2, &e));
	REFUSED(jrnl_append_unmap_ranges(j, 1, some_ranges, 0, &e));
	REFUSED(jrnl_append_device_add(j, 1, 2, "", &e));
	REFUSED(jrnl_append_device_add(j, 1, 2, "0000:00:00.0-too-long", &e));
	REFUSED(jrnl_append_handoff(j, JRNL_HANDOFF_LAST + 1, &e));
	struct jrnl_rec unk = { .type = 77 };
	REFUSED(jrnl_append(j, &unk, &e));
	unk.type = JRNL_TYPE_OPTIONAL | 20;
	REFUSED(jrnl_append(j, &unk, &e));
#undef REFUSED
	assert_int_equal(jrnl_records(j), 1);
	jrnl_close(j);
}

/* ==== the state model's rules ==== */

static struct jrnl_rec R_create(uint64_t ctx, uint64_t sess, bool persistent)
{
	struct jrnl_rec r = { .type = JRNL_CONTEXT_CREATE };
	r.u.ctx_create.ctx = ctx;
	r.u.ctx_create.session = sess;
	r.u.ctx_create.flags = persistent ? JRNL_CTX_PERSISTENT : 0;
	snprintf(r.u.ctx_create.name, sizeof(r.u.ctx_create.name), "ctx%" PRIu64, ctx);
	return r;
}
static struct jrnl_rec R_region(uint64_t ctx, uint64_t id)
{
	struct jrnl_rec r = { .type = JRNL_REGION_ADD };
	r.u.region_add.ctx = ctx;
	r.u.region_add.region = id;
	r.u.region_add.size = 1 << 20;
	r.u.region_add.page_size = 4096;
	snprintf(r.u.region_add.fd_name, sizeof(r.u.region_add.fd_name), "mem.%" PRIu64, id);
	return r;
}
static struct jrnl_rec R_map(uint64_t ctx, const struct jrnl_map_entry *e, uint32_t n)
{
	struct jrnl_rec r = { .type = JRNL_MAP };
	r.u.map.ctx = ctx;
	r.u.map.n = n;
	r.u.map.e = e;
	return r;
}
static struct jrnl_rec R_unmap(uint64_t ctx, const struct jrnl_range *g)
{
	struct jrnl_rec r = { .type = JRNL_UNMAP };
	r.u.unmap.ctx = ctx;
	r.u.unmap.n = 1;
	r.u.unmap.r = g;
	return r;
}

static void apply(struct jrnl_state *s, struct jrnl_rec r)
{
	assert_int_equal(jrnl_state_apply(s, &r), 0);
}

static void test_state_rules(void **state)
{
	(void)state;
	struct jrnl_state s;
	jrnl_state_init(&s);
	assert_int_equal(s.next_id, 1);
	apply(&s, R_create(10, 5, false));
	apply(&s, R_create(11, 5, true));
	apply(&s, R_create(12, 6, false));
	apply(&s, R_region(10, 20));
	assert_int_equal(s.next_id, 21);
	struct jrnl_ctx *c = jrnl_state_ctx(&s, 10);
	assert_non_null(c);

	struct jrnl_map_entry a = { 0x10000, 0x4000, 20, 0, 3, 0 };
	apply(&s, R_map(10, &a, 1));
	apply(&s, R_map(10, &a, 1)); /* identical: nothing */
	assert_int_equal(c->n_maps, 1);
	assert_int_equal(s.anomalies, 0);
	assert_int_equal(jrnl_ctx_region(c, 20)->map_refs, 1);
	assert_non_null(jrnl_ctx_map_find(c, 0x13fff));
	assert_null(jrnl_ctx_map_find(c, 0x14000));
	assert_null(jrnl_ctx_map_find(c, 0xffff));

	/* an overlapping MAP evicts (and is an anomaly) */
	struct jrnl_map_entry b = { 0x12000, 0x4000, 20, 0x1000, 1, 0 };
	apply(&s, R_map(10, &b, 1));
	assert_int_equal(c->n_maps, 1);
	assert_int_equal(jrnl_ctx_map_first(c)->iova, 0x12000);
	assert_int_equal(s.anomalies, 1);
	assert_non_null(strstr(s.anomaly, "evicts"));

	/* UNMAP removes what lies wholly inside; a cut mapping stays */
	struct jrnl_range g1 = { 0x13000, 0x1000 };
	apply(&s, R_unmap(10, &g1));
	assert_int_equal(c->n_maps, 1);
	assert_int_equal(s.anomalies, 2);
	struct jrnl_range g3 = { 0x11000, 0x2000 }; /* covers its start only */
	apply(&s, R_unmap(10, &g3));
	assert_int_equal(c->n_maps, 1);
	assert_int_equal(s.anomalies, 3);
	struct jrnl_range g2 = { 0x0, 0x100000 };
	apply(&s, R_unmap(10, &g2));
	assert_int_equal(c->n_maps, 0);
	assert_int_equal(c->mapped_bytes, 0);
	apply(&s, R_unmap(10, &g2)); /* nothing there: nothing */
	assert_int_equal(s.anomalies, 3);

	/* records naming what does not exist change nothing */
	struct jrnl_map_entry z = { 0x1000, 0x1000, 999, 0, 3, 0 };
	apply(&s, R_map(10, &z, 1));
	apply(&s, R_map(77, &a, 1));
	assert_int_equal(s.n_maps, 0);
	assert_int_equal(s.anomalies, 5);

	/* REGION_REMOVE of a region in use removes its mappings too */
	apply(&s, R_map(10, &a, 1));
	struct jrnl_rec rr = { .type = JRNL_REGION_REMOVE, .u.region_remove = { 10, 20 } };
	apply(&s, rr);
	assert_int_equal(c->n_maps, 0);
	assert_int_equal(c->n_regions, 0);
	apply(&s, rr); /* again: nothing */

	/* SESSION_END: non-persistent die, persistent detach; reclaim attaches */
	struct jrnl_rec se = { .type = JRNL_SESSION_END, .u.session_end.session = 5 };
	apply(&s, se);
	assert_null(jrnl_state_ctx(&s, 10));
	assert_true(jrnl_state_ctx(&s, 11)->detached);
	assert_non_null(jrnl_state_ctx(&s, 12));
	apply(&s, se); /* again: nothing */
	assert_int_equal(s.n_ctxs, 2);
	struct jrnl_rec rc = { .type = JRNL_CONTEXT_RECLAIM };
	rc.u.ctx_reclaim.ctx = 11;
	rc.u.ctx_reclaim.session = 30;
	rc.u.ctx_reclaim.token[0] = 9;
	apply(&s, rc);
	c = jrnl_state_ctx(&s, 11);
	assert_false(c->detached);
	assert_int_equal(c->session, 30);
	assert_int_equal(c->token[0], 9);
	assert_int_equal(s.next_id, 31);

	/* watermark only raises */
	struct jrnl_rec wm = { .type = JRNL_ID_WATERMARK, .u.id_watermark.next_id = 1000 };
	apply(&s, wm);
	wm.u.id_watermark.next_id = 50;
	apply(&s, wm);
	assert_int_equal(s.next_id, 1000);

	/* destroy takes everything with it; destroying nothing is nothing */
	apply(&s, R_region(11, 40));
	struct jrnl_rec dv = { .type = JRNL_DEVICE_ADD, .u.device_add = { 11, 41, "0000:00:01.0" } };
	apply(&s, dv);
	struct jrnl_map_entry m2[2] = { { 0, 0x1000, 40, 0, 3, 0 }, { 0x1000, 0x1000, 40, 0, 3, 0 } };
	apply(&s, R_map(11, m2, 2));
	assert_int_equal(s.n_maps, 2);
	struct jrnl_rec d = { .type = JRNL_CONTEXT_DESTROY, .u.ctx_destroy.ctx = 11 };
	apply(&s, d);
	apply(&s, d);
	assert_int_equal(s.n_maps, 0);
	assert_int_equal(s.n_ctxs, 1);

	jrnl_state_fini(&s);
	assert_int_equal(s.n_ctxs, 0);
	assert_null(jrnl_state_ctx_first(&s));
	jrnl_state_fini(NULL);
}

/* ==== replay builds exactly the simple model ==== */

/* The no-IOMMU flag (1.1): the model keeps it, a compaction writes it, a
 * replay of the compacted journal reads it back. */
static void test_noiommu_flag(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	uint8_t tok[32] = { 1 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	assert_int_equal(jrnl_append_ctx_create(j, 7, 3, 1000, 100, JRNL_CTX_NOIOMMU, "bare", tok, &e), 0);
	assert_int_equal(jrnl_append_ctx_create(j, 8, 3, 1000, 100, JRNL_CTX_PERSISTENT, "vm", tok, &e), 0);
	assert_int_equal(jrnl_append_ctx_create(j, 9, 3, 1000, 100,
						JRNL_CTX_PERSISTENT | JRNL_CTX_NOIOMMU, "p", tok, &e), 0);
	assert_int_equal(jrnl_append_session_end(j, 3, &e), 0);
	struct jrnl_state s;
	replay_into(j, &s, NULL, 0);
	assert_null(jrnl_state_ctx(&s, 7)); /* not persistent: gone with its session */
	assert_false(jrnl_state_ctx(&s, 8)->noiommu);
	assert_true(jrnl_state_ctx(&s, 9)->noiommu);
	assert_true(jrnl_state_ctx(&s, 9)->detached);
	struct jrnl *c = NULL;
	assert_int_equal(jrnl_compact(j, &s, &c, &e), 0);
	struct jrnl_state s2;
	replay_into(c, &s2, NULL, 0);
	assert_true(jrnl_state_ctx(&s2, 9)->noiommu);
	assert_false(jrnl_state_ctx(&s2, 8)->noiommu);
	assert_states_equal(&s, &s2);
	jrnl_state_fini(&s);
	jrnl_state_fini(&s2);
	jrnl_close(c);
	jrnl_close(j);
}

static void test_replay_matches_model(void **state)
{
	(void)state;
	rng_state = 12345;
	struct model *m = malloc(sizeof(*m));
	model_init(m);
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	for (int i = 0; i < 3000; i++) {
		struct op o;
		gen_op(m, &o, 30);
		append_op(j, &o);
		op_free(&o);
		if (i % 500 == 499) {
			struct jrnl_state s;
			replay_into(j, &s, NULL, 0);
			model_check(m, &s);
			assert_int_equal(state_digest(&s), model_digest(m));
			assert_int_equal(s.anomalies, 0);
			jrnl_state_fini(&s);
		}
	}
	jrnl_close(j);
	free(m);
}

/* ==== torn tails: every byte of the last record, every record type ==== */

static void build_prefix(struct jrnl *j)
{
	OK(jrnl_append_ctx_create(j, 10, 5, 1000, 100, JRNL_CTX_PERSISTENT, "vm", (uint8_t[32]){ 1 },
				  &_e));
	OK(jrnl_append_region_add(j, 10, 20, 1 << 20, 4096, JRNL_REGION_WRITABLE, "mem.20", &_e));
	OK(jrnl_append_region_add(j, 10, 21, 1 << 20, 4096, JRNL_REGION_WRITABLE, "mem.21", &_e));
	OK(jrnl_append_device_add(j, 10, 30, "0000:00:03.0", &_e));
	OK(jrnl_append_map(j, 10, 0x100000, 0x2000, 20, 0, 3, 0, &_e));
	OK(jrnl_append_map(j, 10, 0x200000, 0x2000, 20, 0, 3, 0, &_e));
	OK(jrnl_append_ctx_create(j, 11, 6, 1000, 100, 0, "other", (uint8_t[32]){ 2 }, &_e));
}

/* One "last record" of each type that changes the prefix's state. */
static void append_last(struct jrnl *j, int kind)
{
	static struct jrnl_map_entry batch[5];
	for (int i = 0; i < 5; i++)
		batch[i] = (struct jrnl_map_entry){ 0x400000 + (uint64_t)i * 0x10000, 0x1000, 21,
						    (uint64_t)i << 12, 3, 0 };
	switch (kind) {
	case JRNL_CONTEXT_CREATE:
		OK(jrnl_append_ctx_create(j, 12, 7, 1, 2, 0, "new-context", (uint8_t[32]){ 3 }, &_e));
		break;
	case JRNL_CONTEXT_DESTROY:
		OK(jrnl_append_ctx_destroy(j, 10, &_e));
		break;
	case JRNL_CONTEXT_RECLAIM:
		OK(jrnl_append_ctx_reclaim(j, 10, 8, 1000, 100, (uint8_t[32]){ 4 }, &_e));
		break;
	case JRNL_REGION_ADD:
		OK(jrnl_append_region_add(j, 11, 22, 1 << 21, 4096, 0, "some-long-fd-store-name-for-a-region",
					  &_e));
		break;
	case JRNL_REGION_REMOVE:
		OK(jrnl_append_region_remove(j, 10, 21, &_e));
		break;
	case JRNL_MAP:
		OK(jrnl_append_map_batch(j, 10, batch, 5, &_e));
		break;
	case JRNL_UNMAP:
		OK(jrnl_append_unmap(j, 10, 0x100000, 0x10000, &_e));
		break;
	case JRNL_UNMAP_ALL:
		OK(jrnl_append_unmap_all(j, 10, &_e));
		break;
	case JRNL_DEVICE_ADD:
		OK(jrnl_append_device_add(j, 11, 31, "0000:00:04.0", &_e));
		break;
	case JRNL_DEVICE_REMOVE:
		OK(jrnl_append_device_remove(j, 10, 30, &_e));
		break;
	case JRNL_SESSION_END:
		OK(jrnl_append_session_end(j, 6, &_e));
		break;
	case JRNL_ID_WATERMARK:
		OK(jrnl_append_id_watermark(j, 5000, &_e));
		break;
	case JRNL_HANDOFF_STATE:
		OK(jrnl_append_handoff(j, JRNL_HANDOFF_PREPARED, &_e));
		break;
	}
}

static void test_torn_tail_every_byte(void **state)
{
	(void)state;
	for (int kind = 1; kind <= JRNL_TYPE_LAST_V1_0; kind++) {
		struct jrnl *j = NULL;
		struct dmb_err e = { 0 };
		assert_int_equal(jrnl_create(&j, &e), 0);
		build_prefix(j);
		struct jrnl_state before, after, s;
		replay_into(j, &before, NULL, 0);
		uint64_t prefix_records = jrnl_records(j);
		uint64_t start = 64 + jrnl_committed(j);
		append_last(j, kind);
		uint64_t end = 64 + jrnl_committed(j);
		replay_into(j, &after, NULL, 0);
		char why[200];
		assert_false(jrnl_state_equal(&before, &after, why, sizeof(why)));
		int fd = jrnl_fd(j);
		struct jrnl_replay_result res;

		/* (1) the commit point anywhere inside the last record (a crash
		 * between writing bytes and publishing, or a bad length): the
		 * record is not there */
		for (uint64_t b = start; b <= end; b++) {
			set_committed(fd, b - 64);
			struct jrnl *r = reopen(j);
			replay_into(r, &s, &res, 0);
			if (b < end) {
				assert_states_equal(&s, &before);
				assert_int_equal(res.records, prefix_records);
				assert_int_equal(res.stop, b == start ? JRNL_STOP_END : JRNL_STOP_TORN);
				assert_int_equal(jrnl_committed(r), start - 64);
				assert_null(jrnl_damaged(r));
			} else {
				assert_states_equal(&s, &after);
				assert_int_equal(res.records, prefix_records + 1);
			}
			jrnl_state_fini(&s);
			jrnl_close(r);
		}
		/* (2) any byte of the committed last record damaged (record and
		 * padding): the record is ignored, everything before applied */
		for (uint64_t b = start; b < end; b++) {
			xor_byte(fd, b, 0xA5);
			struct jrnl *r = reopen(j);
			struct dmb_err re = { 0 };
			jrnl_state_init(&s);
			int rc = jrnl_state_replay(r, &s, &res, &re);
			assert_true(rc == 0 || rc == -EBADMSG);
			check_one_walk(r, &s, &res, rc);
			assert_states_equal(&s, &before);
			assert_int_equal(res.records, prefix_records);
			assert_int_not_equal(res.stop, JRNL_STOP_END);
			if (rc == -EBADMSG) {
				assert_non_null(jrnl_damaged(r));
				assert_non_null(strstr(re.msg, "damaged"));
			}
			jrnl_state_fini(&s);
			jrnl_close(r);
			xor_byte(fd, b, 0xA5);
		}
		/* (3) debris after the committed end is overwritten by the
		 * next append: cut the last record in half, append it again */
		set_committed(fd, start - 64);
		for (uint64_t b = start + (end - start) / 2; b < end; b++)
			xor_byte(fd, b, 0xFF);
		struct jrnl *r = reopen(j);
		append_last(r, kind);
		jrnl_close(r);
		r = reopen(j);
		replay_into(r, &s, &res, 0);
		assert_states_equal(&s, &after);
		assert_int_equal(res.stop, JRNL_STOP_END);
		jrnl_state_fini(&s);
		jrnl_close(r);

		jrnl_state_fini(&before);
		jrnl_state_fini(&after);
		jrnl_close(j);
	}
}

/* ==== a damaged record in the middle ==== */

static void test_corrupt_middle(void **state)
{
	(void)state;
	rng_state = 777;
	struct model *m = malloc(sizeof(*m));
	model_init(m);
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	enum { N = 400, K = 237 };
	uint64_t off_k = 0, end_k = 0, digest_k = 0;
	for (int i = 0; i < N; i++) {
		if (i == K) {
			off_k = 64 + jrnl_committed(j);
			digest_k = model_digest(m);
		}
		struct op o;
		gen_op(m, &o, 30);
		append_op(j, &o);
		op_free(&o);
		if (i == K)
			end_k = 64 + jrnl_committed(j);
	}
	int fd = jrnl_fd(j);
	/* the seq field, a payload byte, the crc */
	const uint64_t where[] = { off_k + 9, off_k + 20, end_k - 5 };
	for (size_t w = 0; w < DMB_ARRAY_SIZE(where); w++) {
		xor_byte(fd, where[w], 0x10);
		struct jrnl *r = reopen(j);
		assert_non_null(jrnl_damaged(r));
		assert_true(jrnl_should_compact(r, UINT64_MAX));
		struct jrnl_state s;
		struct jrnl_replay_result res;
		replay_into(r, &s, &res, -EBADMSG);
		assert_int_equal(res.records, K);
		assert_int_equal(res.stop, JRNL_STOP_CORRUPT);
		assert_int_equal(res.stop_offset, off_k);
		assert_int_equal(state_digest(&s), digest_k);
		/* appends are refused: they would land after a hole */
		dmb_err_clear(&e);
		assert_int_equal(jrnl_append_session_end(r, 1, &e), -EBADMSG);
		assert_non_null(strstr(e.msg, "compact"));
		/* compaction is the repair: the valid prefix, in a sound journal */
		struct jrnl *c = NULL;
		assert_int_equal(jrnl_compact(r, NULL, &c, &e), 0);
		assert_null(jrnl_damaged(c));
		struct jrnl_state s2;
		replay_into(c, &s2, NULL, 0);
		assert_states_equal(&s, &s2);
		OK(jrnl_append_session_end(c, 1, &_e));
		jrnl_state_fini(&s);
		jrnl_state_fini(&s2);
		jrnl_close(c);
		jrnl_close(r);
		xor_byte(fd, where[w], 0x10);
	}
	struct jrnl *r = reopen(j);
	struct jrnl_state s;
	replay_into(r, &s, NULL, 0);
	model_check(m, &s);
	jrnl_state_fini(&s);
	jrnl_close(r);
	jrnl_close(j);
	free(m);
}

/* ==== random damage anywhere: refused, or replayed to an exact prefix ==== */

static void test_random_damage(void **state)
{
	(void)state;
	rng_state = 55;
	enum { N = 300 };
	struct model *m = malloc(sizeof(*m));
	model_init(m);
	uint64_t dig[N + 1];
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	dig[0] = model_digest(m);
	for (int i = 0; i < N; i++) {
		struct op o;
		gen_op(m, &o, 30);
		append_op(j, &o);
		op_free(&o);
		dig[i + 1] = model_digest(m);
	}
	size_t len;
	uint8_t *orig = slurp(jrnl_fd(j), &len);
	uint64_t used = 64 + jrnl_committed(j);
	uint64_t refused = 0, damaged = 0;
	uint8_t *buf = malloc(len);
	for (int it = 0; it < 400; it++) {
		memcpy(buf, orig, len);
		int flips = 1 + (int)rndn(8);
		for (int f = 0; f < flips; f++) {
			/* the records; one journal in eight also gets a header byte */
			uint64_t at = f == 0 && it % 8 == 0 ? rndn(64) : 64 + rndn(used - 64);
			buf[at] ^= (uint8_t)(1 + rndn(255));
		}
		int fd = memfd_create("damaged", MFD_CLOEXEC);
		assert_int_equal(pwrite(fd, buf, len, 0), (ssize_t)len);
		struct jrnl *r = NULL;
		dmb_err_clear(&e);
		if (jrnl_open_fd(fd, &r, &e) < 0) {
			assert_true(e.msg[0] != '\0');
			close(fd);
			refused++;
			continue;
		}
		struct jrnl_state s;
		struct jrnl_replay_result res;
		jrnl_state_init(&s);
		int rc = jrnl_state_replay(r, &s, &res, &e);
		assert_true(rc == 0 || rc == -EBADMSG);
		damaged += rc != 0;
		assert_true(res.records <= N);
		if (state_digest(&s) != dig[res.records])
			fail_msg("iteration %d: %" PRIu64 " records replayed to a state that is not "
				 "their prefix", it, res.records);
		jrnl_state_fini(&s);
		jrnl_close(r);
	}
	printf("[ journal ] random damage: 400 journals, %" PRIu64 " refused at open, %" PRIu64
	       " stopped at a damaged record\n", refused, damaged);
	free(buf);
	free(orig);
	jrnl_close(j);
	free(m);
}

/* ==== header validation ==== */

static void expect_refused(int fd, const char *words)
{
	struct jrnl *r = NULL;
	struct dmb_err e = { 0 };
	int rc = jrnl_open_fd(fd, &r, &e);
	if (rc >= 0)
		fail_msg("a bad journal was accepted (expected: %s)", words);
	assert_null(r);
	assert_true(e.msg[0] != '\0');
	if (words && !strstr(e.msg, words))
		fail_msg("message \"%s\" does not say \"%s\"", e.msg, words);
	assert_true(fcntl(fd, F_GETFD) >= 0); /* the caller still owns the fd */
	/* -EBADMSG means "opened, damaged inside" and comes with a journal:
	 * a refusal must not look like it (the restore path relies on it). */
	assert_int_not_equal(rc, -EBADMSG);
	struct jrnl_state s;
	struct jrnl_replay_result res;
	jrnl_state_init(&s);
	dmb_err_clear(&e);
	rc = jrnl_open_replay_fd(fd, &jrnl_state_ops, &s, &res, &r, &e);
	assert_true(rc < 0);
	assert_int_not_equal(rc, -EBADMSG);
	assert_null(r);
	assert_true(fcntl(fd, F_GETFD) >= 0);
	jrnl_state_fini(&s);
}

static void write_raw_record(int fd, uint64_t off, uint32_t type, uint64_t seq, const uint8_t *pl,
			     uint32_t n)
{
	uint8_t b[256] = { 0 };
	le32_put(b, 20 + n);
	le32_put(b + 4, type);
	le64_put(b + 8, seq);
	memcpy(b + 16, pl, n);
	le32_put(b + 16 + n, jrnl_crc32c(0, b, 16 + n));
	assert_int_equal(pwrite(fd, b, (20 + n + 7) & ~7u, (off_t)off), (20 + n + 7) & ~7u);
}

static void rewrite_header(int fd, uint32_t version, uint32_t hsize, uint64_t gen)
{
	uint8_t h[44];
	assert_int_equal(pread(fd, h, 44, 0), 44);
	le32_put(h + H_OFF_VERSION, version);
	le32_put(h + H_OFF_HSIZE, hsize);
	le64_put(h + H_OFF_GEN, gen);
	uint8_t c[4];
	le32_put(c, jrnl_crc32c(0, h, 44));
	assert_int_equal(pwrite(fd, h, 44, 0), 44);
	assert_int_equal(pwrite(fd, c, 4, H_OFF_CRC), 4);
}

static void test_header_corruption(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	build_prefix(j);
	int fd = dup(jrnl_fd(j));

	/* every bit of the header matters */
	for (int b = 0; b < H_SIZE; b++)
		for (int bit = 0; bit < 8; bit++) {
			xor_byte(fd, (uint64_t)b, (uint8_t)(1u << bit));
			expect_refused(fd, "refusing the state journal");
			xor_byte(fd, (uint64_t)b, (uint8_t)(1u << bit));
		}
	for (int b = 0; b < H_SIZE; b++) {
		xor_byte(fd, (uint64_t)b, 0xFF);
		expect_refused(fd, NULL);
		xor_byte(fd, (uint64_t)b, 0xFF);
	}
	/* specific sentences */
	xor_byte(fd, 0, 1);
	expect_refused(fd, "magic");
	xor_byte(fd, 0, 1);
	rewrite_header(fd, 2u << 16, 64, 1);
	expect_refused(fd, "version 2.0");
	rewrite_header(fd, 1u << 16, 72, 1);
	expect_refused(fd, "header size");
	rewrite_header(fd, 1u << 16, 64, 0);
	expect_refused(fd, "generation");
	rewrite_header(fd, 1u << 16, 64, 1);
	uint64_t committed = get_committed(fd);
	set_committed(fd, 1ull << 40);
	expect_refused(fd, "claims");
	uint8_t w[8];
	le64_put(w, commit_word_of(committed) ^ (1ull << 50));
	assert_int_equal(pwrite(fd, w, 8, H_OFF_COMMIT), 8);
	expect_refused(fd, "committed length");
	set_committed(fd, committed);

	/* not a journal at all */
	int z = memfd_create("t", MFD_CLOEXEC);
	expect_refused(z, "shorter");
	assert_int_equal(ftruncate(z, 4096), 0);
	expect_refused(z, "magic");
	close(z);
	int dfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	expect_refused(dfd, "regular");
	close(dfd);
	struct jrnl *r = NULL;
	assert_int_equal(jrnl_open_fd(-1, &r, &e), -EBADF);

	/* a replay callback's error in the one-walk open: no journal, and the
	 * caller keeps its fd */
	struct jrnl_ops failing = { .record = fail_cb };
	struct jrnl_replay_result fres;
	struct jrnl *none = (struct jrnl *)&fres;
	dmb_err_clear(&e);
	assert_int_equal(jrnl_open_replay_fd(fd, &failing, NULL, &fres, &none, &e), -EIO);
	assert_null(none);
	assert_non_null(strstr(e.msg, "record 1 failed"));
	assert_true(fcntl(fd, F_GETFD) >= 0);

	/* restored, it opens, and takes the fd */
	struct jrnl *ok = NULL;
	assert_int_equal(jrnl_open_fd(fd, &ok, &e), 0);
	assert_int_equal(jrnl_fd(ok), fd);
	assert_int_equal(jrnl_records(ok), 7);
	jrnl_close(ok);
	assert_true(fcntl(fd, F_GETFD) < 0);
	jrnl_close(j);
}

/* A journal of a newer minor version: readable; an optional record of an
 * unknown type is skipped, a grown payload's tail ignored. */
static void skipped_cb(void *opaque, uint32_t type, uint64_t seq)
{
	uint32_t *n = opaque;
	(void)seq;
	if (type == (JRNL_TYPE_OPTIONAL | 40))
		(*n)++;
}
static int count_cb(void *opaque, const struct jrnl_rec *rec)
{
	(void)rec;
	((uint32_t *)opaque)[1]++;
	return 0;
}

static void test_newer_minor(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	OK(jrnl_append_id_watermark(j, 77, &_e));
	int fd = jrnl_fd(j);
	uint64_t off = 64 + jrnl_committed(j);
	uint8_t pl[24] = { 0 };
	write_raw_record(fd, off, JRNL_TYPE_OPTIONAL | 40, 2, pl, 24);
	le64_put(pl, 3000); /* SESSION_END with 8 extra bytes */
	le64_put(pl + 8, 0xdeadbeef);
	write_raw_record(fd, off + 48, JRNL_SESSION_END, 3, pl, 16);
	set_committed(fd, off + 48 + 40 - 64);

	/* as this version: an unknown type is corruption */
	struct jrnl *r = reopen(j);
	assert_non_null(jrnl_damaged(r));
	assert_non_null(strstr(jrnl_damaged(r), "unknown record type"));
	jrnl_close(r);

	/* as the next minor */
	rewrite_header(fd, (1u << 16) | (JRNL_VERSION_MINOR + 1), 64, 1);
	r = reopen(j);
	assert_null(jrnl_damaged(r));
	uint32_t counts[2] = { 0, 0 };
	struct jrnl_ops ops = { .record = count_cb, .skipped = skipped_cb };
	struct jrnl_replay_result res;
	assert_int_equal(jrnl_replay(r, &ops, counts, &res, &e), 0);
	assert_int_equal(counts[0], 1);
	assert_int_equal(counts[1], 2);
	assert_int_equal(res.last_seq, 3);
	struct jrnl_state s;
	replay_into(r, &s, NULL, 0);
	assert_int_equal(s.next_id, 3001);
	jrnl_state_fini(&s);
	/* appending to it continues the sequence */
	OK(jrnl_append_handoff(r, JRNL_HANDOFF_NORMAL, &_e));
	assert_int_equal(jrnl_next_seq(r), 5);
	jrnl_close(r);
	jrnl_close(j);
}

/* A record with a valid checksum but the wrong seq (say, a stale record of
 * another journal, or a copy): corruption, not a record. */
static void test_seq_checked(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	OK(jrnl_append_id_watermark(j, 77, &_e));
	int fd = jrnl_fd(j);
	uint64_t off = 64 + jrnl_committed(j);
	uint8_t pl[8];
	le64_put(pl, 3000);
	const uint64_t seqs[] = { 1, 3, 0, UINT64_MAX };
	for (size_t i = 0; i < DMB_ARRAY_SIZE(seqs); i++) {
		write_raw_record(fd, off, JRNL_SESSION_END, seqs[i], pl, 8);
		set_committed(fd, off + 32 - 64);
		struct jrnl *r = reopen(j);
		assert_non_null(jrnl_damaged(r));
		assert_non_null(strstr(jrnl_damaged(r), "seq"));
		struct jrnl_state s;
		struct jrnl_replay_result res;
		replay_into(r, &s, &res, -EBADMSG);
		assert_int_equal(res.records, 1);
		assert_int_equal(s.next_id, 77);
		jrnl_state_fini(&s);
		jrnl_close(r);
	}
	write_raw_record(fd, off, JRNL_SESSION_END, 2, pl, 8); /* the right one */
	struct jrnl *r = reopen(j);
	assert_null(jrnl_damaged(r));
	assert_int_equal(jrnl_records(r), 2);
	jrnl_close(r);
	jrnl_close(j);
}

/* ==== idempotence ==== */

static void test_replay_twice(void **state)
{
	(void)state;
	rng_state = 4242;
	struct model *m = malloc(sizeof(*m));
	model_init(m);
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	for (int i = 0; i < 2000; i++) {
		struct op o;
		gen_op(m, &o, 30);
		append_op(j, &o);
		op_free(&o);
	}
	struct jrnl_state once, twice;
	replay_into(j, &once, NULL, 0);
	model_check(m, &once);
	replay_into(j, &twice, NULL, 0);
	struct jrnl_replay_result res;
	assert_int_equal(jrnl_state_replay(j, &twice, &res, &e), 0);
	assert_states_equal(&once, &twice);
	assert_int_equal(state_digest(&twice), model_digest(m));
	jrnl_state_fini(&once);
	jrnl_state_fini(&twice);
	jrnl_close(j);
	free(m);
}

/* Re-appends the records of `from` whose seq >= first into `to`. */
struct reappend {
	struct jrnl *to;
	uint64_t first;
};
static int reappend_cb(void *opaque, const struct jrnl_rec *rec)
{
	struct reappend *ra = opaque;
	if (rec->seq < ra->first)
		return 0;
	struct dmb_err e = { 0 };
	return jrnl_append(ra->to, rec, &e);
}

/* A snapshot that already holds the effects of some tail records, followed
 * by that tail: the same state as the plain journal. */
static void test_snapshot_plus_tail(void **state)
{
	(void)state;
	for (int round = 0; round < 40; round++) {
		rng_state = 9000 + (uint64_t)round;
		struct model *m = malloc(sizeof(*m));
		model_init(m);
		struct jrnl *j = NULL;
		struct dmb_err e = { 0 };
		assert_int_equal(jrnl_create(&j, &e), 0);
		const int total = 600;
		const int snap_at = 100 + (int)rndn(400);
		struct jrnl *snap = NULL;
		for (int i = 0; i < total; i++) {
			struct op o;
			gen_op(m, &o, 30);
			append_op(j, &o);
			op_free(&o);
			if (i + 1 == snap_at)
				assert_int_equal(jrnl_compact(j, NULL, &snap, &e), 0);
		}
		/* the tail starts up to 150 records before the snapshot point */
		uint64_t back = rndn(150);
		uint64_t first = (uint64_t)snap_at + 1 > back ? (uint64_t)snap_at + 1 - back : 1;
		struct reappend ra = { snap, first };
		struct jrnl_ops ops = { .record = reappend_cb };
		assert_int_equal(jrnl_replay(j, &ops, &ra, NULL, &e), 0);
		struct jrnl_state s, plain;
		replay_into(snap, &s, NULL, 0);
		replay_into(j, &plain, NULL, 0);
		model_check(m, &s);
		assert_states_equal(&s, &plain);
		jrnl_state_fini(&s);
		jrnl_state_fini(&plain);
		jrnl_close(snap);
		jrnl_close(j);
		free(m);
	}
}

/* ==== granular mappings (v1.1): DISCARD / POPULATE ==== */

/* The model follows DISCARD and POPULATE granule by granule (a re-discard
 * changes nothing), refuses what is not inside granular mappings or not
 * granule aligned (an anomaly, nothing changed), and a compaction writes
 * the discarded runs back so that the snapshot replays to the same state,
 * also over the live journal's tail. */
static void test_granular_records(void **state)
{
	(void)state;
	const uint64_t G = 4096, M = 2u << 20;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	uint8_t tok[JRNL_TOKEN_SIZE] = { 0 };
	OK(jrnl_append_ctx_create(j, 10, 1, 0, 0, 0, "g", tok, &_e));
	OK(jrnl_append_region_add(j, 10, 11, 64u << 20, G, JRNL_REGION_WRITABLE, "region.11", &_e));
	/* 64 granules of 4 KiB at 1 MiB, and 2 granules of 2 MiB at 32 MiB; an
	 * ordinary mapping at 16 MiB */
	OK(jrnl_append_map(j, 10, 1u << 20, 64 * G, 11, 0, 3, JRNL_MAP_GRANULE(12), &_e));
	OK(jrnl_append_map(j, 10, 32u << 20, 2 * M, 11, 4u << 20, 3, JRNL_MAP_GRANULE(21), &_e));
	OK(jrnl_append_map(j, 10, 16u << 20, G, 11, 0, 3, 0, &_e));
	/* a granule that is not a power the broker uses, or an unaligned one */
	assert_int_equal(jrnl_append_map(j, 10, 40u << 20, 2 * G, 11, 0, 3, JRNL_MAP_GRANULE(13),
					 &e), -EINVAL);
	assert_int_equal(jrnl_append_map(j, 10, (40u << 20) + G, M, 11, 0, 3, JRNL_MAP_GRANULE(21),
					 &e), -EINVAL);
	assert_int_equal(jrnl_append_map(j, 10, 40u << 20, G, 7, 0, 3,
					 JRNL_MAP_MMIO | JRNL_MAP_GRANULE(12), &e), -EINVAL);

	struct jrnl_range d1[] = { { (1u << 20) + 2 * G, 3 * G }, { (1u << 20) + 60 * G, 4 * G },
				   { 32u << 20, M } };
	OK(jrnl_append_convert(j, 10, true, d1, 3, &_e));
	struct jrnl_range d2[] = { { (1u << 20) + 3 * G, 2 * G } }; /* 1 again, 1 new */
	OK(jrnl_append_convert(j, 10, true, d2, 1, &_e));
	struct jrnl_range p1[] = { { (1u << 20) + 2 * G, G }, { 32u << 20, 2 * M } };
	OK(jrnl_append_convert(j, 10, false, p1, 2, &_e));

	struct jrnl_state s;
	replay_into(j, &s, NULL, 0);
	assert_int_equal(s.anomalies, 0);
	struct jrnl_ctx *c = jrnl_state_ctx(&s, 10);
	assert_non_null(c);
	struct jrnl_map *m = jrnl_ctx_map_find(c, 1u << 20);
	assert_non_null(m);
	/* discarded: granules 3, 4 (from d1 and d2), 60..63; 2 populated again */
	assert_int_equal(m->n_discarded, 6);
	assert_int_equal(m->discarded[0], (UINT64_C(0x3) << 3) | (UINT64_C(0xf) << 60));
	struct jrnl_map *big = jrnl_ctx_map_find(c, 32u << 20);
	assert_int_equal(big->n_discarded, 0);
	assert_null(big->discarded);

	/* what is not inside a granular mapping, or not aligned: anomalies */
	struct jrnl_range bad[] = { { 16u << 20, G } };
	OK(jrnl_append_convert(j, 10, true, bad, 1, &_e));
	struct jrnl_range bad2[] = { { (1u << 20) + G / 2, G } };
	OK(jrnl_append_convert(j, 10, true, bad2, 1, &_e));
	struct jrnl_range bad3[] = { { 32u << 20, G } };
	OK(jrnl_append_convert(j, 10, true, bad3, 1, &_e));
	struct jrnl_state s2;
	replay_into(j, &s2, NULL, 0);
	assert_int_equal(s2.anomalies, 3);
	assert_states_equal(&s, &s2);

	/* compaction keeps the discarded runs */
	struct jrnl *snap = NULL;
	assert_int_equal(jrnl_compact(j, NULL, &snap, &e), 0);
	struct jrnl_state s3;
	replay_into(snap, &s3, NULL, 0);
	assert_int_equal(s3.anomalies, 0);
	assert_states_equal(&s, &s3);
	assert_true(jrnl_state_snapshot_bytes(&s) >= jrnl_committed(snap));

	/* a different discarded set is a different state */
	struct jrnl_range d3[] = { { (1u << 20) + 10 * G, G } };
	OK(jrnl_append_convert(snap, 10, true, d3, 1, &_e));
	struct jrnl_state s4;
	replay_into(snap, &s4, NULL, 0);
	char why[200];
	assert_false(jrnl_state_equal(&s, &s4, why, sizeof(why)));
	/* unmapping the mapping forgets its granules */
	OK(jrnl_append_unmap(snap, 10, 1u << 20, 64 * G, &_e));
	OK(jrnl_append_map(snap, 10, 1u << 20, 64 * G, 11, 0, 3, JRNL_MAP_GRANULE(12), &_e));
	struct jrnl_state s5;
	replay_into(snap, &s5, NULL, 0);
	assert_int_equal(jrnl_ctx_map_find(jrnl_state_ctx(&s5, 10), 1u << 20)->n_discarded, 0);

	jrnl_state_fini(&s);
	jrnl_state_fini(&s2);
	jrnl_state_fini(&s3);
	jrnl_state_fini(&s4);
	jrnl_state_fini(&s5);
	jrnl_close(snap);
	jrnl_close(j);
}

/* ==== compaction on a randomized workload ==== */

static void test_compaction_randomized(void **state)
{
	(void)state;
	rng_state = 31337;
	struct model *m = malloc(sizeof(*m));
	model_init(m);
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	uint64_t gen = 1, compactions = 0;
	for (int i = 0; i < 6000; i++) {
		struct op o;
		gen_op(m, &o, 60);
		append_op(j, &o);
		op_free(&o);
		if (rndn(400) == 0 || i == 5999) {
			struct jrnl_state s;
			replay_into(j, &s, NULL, 0);
			model_check(m, &s);
			uint64_t next_seq = jrnl_next_seq(j);
			struct jrnl *c = NULL;
			/* alternately from the caller's state and from j itself */
			assert_int_equal(jrnl_compact(j, (compactions & 1) ? &s : NULL, &c, &e), 0);
			assert_int_equal(jrnl_generation(c), ++gen);
			assert_int_equal(jrnl_next_seq(j), next_seq); /* j untouched */
			assert_int_equal(jrnl_committed(c), jrnl_state_snapshot_bytes(&s));
			assert_true(jrnl_snapshot_estimate(s.n_ctxs, 200, 200, s.n_maps) >=
				    jrnl_committed(c));
			struct jrnl *c2 = reopen(c);
			struct jrnl_state s2;
			struct jrnl_replay_result res;
			replay_into(c2, &s2, &res, 0);
			assert_int_equal(res.last_seq, jrnl_next_seq(c) - 1);
			assert_true(res.last_seq >= next_seq);
			model_check(m, &s2);
			assert_states_equal(&s, &s2);
			assert_int_equal(s2.anomalies, 0);
			jrnl_state_fini(&s);
			jrnl_state_fini(&s2);
			jrnl_close(c2);
			jrnl_close(j);
			j = c;
			compactions++;
		}
	}
	assert_true(compactions >= 5);
	jrnl_close(j);
	free(m);
}

static void test_should_compact(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	/* same ten mappings over and over: the journal grows, the state does not */
	while (jrnl_committed(j) <= (1u << 20)) {
		assert_false(jrnl_should_compact(j, 0));
		for (int i = 0; i < 10; i++)
			OK(jrnl_append_map(j, 1, (uint64_t)i << 12, 4096, 1, 0, 3, 0, &_e));
		OK(jrnl_append_unmap_all(j, 1, &_e));
	}
	assert_true(jrnl_should_compact(j, 4096));
	assert_false(jrnl_should_compact(j, jrnl_committed(j) / 4));
	jrnl_close(j);
}

/* ==== growth ==== */

static void test_growth(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	struct stat st;
	assert_int_equal(fstat(jrnl_fd(j), &st), 0);
	const off_t initial = st.st_size;
	const uint64_t N = 300000; /* ~21 MiB: nine doublings from 64 KiB */
	for (uint64_t i = 0; i < N; i++)
		OK(jrnl_append_map(j, 1, i << 12, 4096, 2, i << 12, 3, 0, &_e));
	assert_int_equal(fstat(jrnl_fd(j), &st), 0);
	assert_true(st.st_size >= initial << 9);
	assert_int_equal(jrnl_committed(j), N * 80);
	struct jrnl *r = reopen(j);
	assert_int_equal(jrnl_records(r), N);
	struct jrnl_state s;
	jrnl_state_init(&s);
	struct jrnl_rec c = R_create(1, 1, false), g = R_region(1, 2);
	apply(&s, c);
	apply(&s, g);
	struct jrnl_replay_result res;
	assert_int_equal(jrnl_state_replay(r, &s, &res, &e), 0);
	assert_int_equal(res.records, N);
	assert_int_equal(s.n_maps, N);
	assert_int_equal(jrnl_ctx_map_find(jrnl_state_ctx(&s, 1), (N - 1) << 12)->offset, (N - 1) << 12);
	jrnl_state_fini(&s);

	/* reserve makes room ahead of time (before LUO freezes the size) */
	assert_int_equal(fstat(jrnl_fd(r), &st), 0);
	off_t sz = st.st_size;
	assert_int_equal(jrnl_reserve(r, (uint64_t)sz, &e), 0);
	assert_int_equal(fstat(jrnl_fd(r), &st), 0);
	assert_true(st.st_size >= sz + (off_t)jrnl_committed(r));
	/* a frozen size is reported as such */
	assert_int_equal(fcntl(jrnl_fd(r), F_ADD_SEALS, F_SEAL_GROW), 0);
	dmb_err_clear(&e);
	assert_int_equal(jrnl_reserve(r, (uint64_t)st.st_size * 2, &e), -EPERM);
	assert_non_null(strstr(e.msg, "frozen"));
	assert_int_equal(jrnl_append_map(r, 1, 0, 4096, 2, 0, 3, 0, &e), 0); /* room left */
	assert_int_equal(jrnl_sync_point(r), 0);
	jrnl_close(r);
	jrnl_close(j);
}

/* ==== a writer SIGKILLed at random instants ==== */

static void test_sigkill_writer(void **state)
{
	(void)state;
	rng_state = 2718;
	enum { N = 30000 };
	struct model *m = malloc(sizeof(*m));
	model_init(m);
	struct op *ops = calloc(N, sizeof(*ops));
	uint64_t *dig = calloc(N + 1, sizeof(*dig));
	dig[0] = model_digest(m);
	for (int i = 0; i < N; i++) {
		gen_op(m, &ops[i], 200);
		dig[i + 1] = model_digest(m);
	}
	const char *env = getenv("JRNL_KILL_ITERATIONS");
	const int iters = env ? atoi(env) : 120;
	uint64_t run_ns = 0, total = 0, mid = 0, full = 0, none = 0;

	uint64_t exact = 0;
	for (int it = 0; it <= iters; it++) {
		struct jrnl *j = NULL;
		struct dmb_err e = { 0 };
		assert_int_equal(jrnl_create(&j, &e), 0);
		/* Every third kill is the writer's own, right after record k
		 * committed: a kill mid-run whatever the machine's load (the
		 * timed ones land where the scheduler lets them). */
		const uint64_t k = it && it % 3 == 0 ? 1 + rndn(N - 1) : 0;
		int p[2];
		assert_int_equal(pipe(p), 0);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(p[0]);
			char c = 1;
			if (write(p[1], &c, 1) != 1)
				_exit(3);
			for (int i = 0; i < N; i++) {
				if (jrnl_append(j, &ops[i].rec, NULL) < 0)
					_exit(2);
				if ((uint64_t)i + 1 == k)
					raise(SIGKILL);
			}
			_exit(0);
		}
		close(p[1]);
		char c;
		assert_int_equal(read(p[0], &c, 1), 1);
		close(p[0]);
		uint64_t t0 = now_ns();
		if (it == 0) {
			/* calibration: let it finish */
			int st;
			assert_int_equal(waitpid(pid, &st, 0), pid);
			assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
			run_ns = now_ns() - t0;
			total = get_committed(jrnl_fd(j));
		} else if (k) {
			int st;
			assert_int_equal(waitpid(pid, &st, 0), pid);
			assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
		} else {
			if (it % 2) {
				/* at a random time */
				uint64_t delay = rndn(run_ns + run_ns / 10);
				while (now_ns() - t0 < delay)
					;
			} else {
				/* once the writer got past a random byte: watch its
				 * commit word through a mapping of our own */
				const uint64_t *w = mmap(NULL, 4096, PROT_READ, MAP_SHARED,
							 jrnl_fd(j), 0);
				assert_true(w != MAP_FAILED);
				uint64_t target = rndn(total);
				while ((__atomic_load_n(&w[H_OFF_COMMIT / 8], __ATOMIC_ACQUIRE) &
					((1ull << 48) - 1)) < target &&
				       now_ns() - t0 < 4 * run_ns + 100000000ull)
					;
				munmap((void *)w, 4096);
			}
			kill(pid, SIGKILL);
			int st;
			assert_int_equal(waitpid(pid, &st, 0), pid);
			assert_true(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 0));
		}
		/* the parent opens the inherited memfd, as the next daemon would */
		struct jrnl *r = reopen(j);
		jrnl_close(j);
		assert_null(jrnl_damaged(r));
		struct jrnl_state s;
		struct jrnl_replay_result res;
		replay_into(r, &s, &res, 0);
		assert_int_equal(res.stop, JRNL_STOP_END);
		assert_true(res.records <= N);
		if (k) { /* killed right after record k: exactly those */
			assert_int_equal(res.records, k);
			exact++;
		}
		if (state_digest(&s) != dig[res.records])
			fail_msg("iteration %d: the replay of %" PRIu64 " records is not the state "
				 "after %" PRIu64 " operations", it, res.records, res.records);
		assert_int_equal(s.anomalies, 0);
		jrnl_state_fini(&s);
		if (res.records == N)
			full++;
		else if (res.records == 0)
			none++;
		else
			mid++;
		/* the next writer continues where the valid records end */
		uint64_t from = res.records, upto = from + 300 < N ? from + 300 : N;
		for (uint64_t i = from; i < upto; i++)
			append_op(r, &ops[i]);
		struct jrnl *r2 = reopen(r);
		replay_into(r2, &s, &res, 0);
		assert_int_equal(res.records, upto);
		assert_int_equal(state_digest(&s), dig[upto]);
		jrnl_state_fini(&s);
		jrnl_close(r2);
		jrnl_close(r);
	}
	printf("[ journal ] sigkill: %d kills (timed, at a random commit, or by the writer "
	       "itself after a random record) over a %.1f ms run of %d appends: %" PRIu64
	       " mid-run (%" PRIu64 " of them self-inflicted), %" PRIu64 " before the first, %"
	       PRIu64 " after the last\n", iters, (double)run_ns / 1e6, N, mid, exact, none, full);
	/* Where the timed kills land depends on the load; the writer's own
	 * kills are mid-run on any machine. */
	assert_int_equal(exact, (uint64_t)iters / 3);
	assert_true(mid >= exact);
	for (int i = 0; i < N; i++)
		op_free(&ops[i]);
	free(ops);
	free(dig);
	free(m);
}

/* ==== performance (printed, not asserted) ==== */

static int null_cb(void *opaque, const struct jrnl_rec *rec)
{
	(void)opaque;
	(void)rec;
	return 0;
}

static void test_perf(void **state)
{
	(void)state;
	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	const uint64_t N = 1000000;
	assert_int_equal(jrnl_create(&j, &e), 0);
	uint64_t t0 = now_ns();
	for (uint64_t i = 0; i < N; i++)
		jrnl_append_map(j, 1, i << 12, 4096, 2, i << 12, 3, 0, NULL);
	uint64_t t_grow = now_ns() - t0;
	jrnl_close(j);

	assert_int_equal(jrnl_create(&j, &e), 0);
	assert_int_equal(jrnl_reserve(j, N * 80, &e), 0);
	/* touch the pages once so first-touch faults are not counted */
	for (uint64_t i = 0; i < N; i++)
		jrnl_append_map(j, 1, i << 12, 4096, 2, i << 12, 3, 0, NULL);
	jrnl_close(j);
	assert_int_equal(jrnl_create(&j, &e), 0);
	assert_int_equal(jrnl_reserve(j, N * 80, &e), 0);
	t0 = now_ns();
	for (uint64_t i = 0; i < N; i++)
		jrnl_append_map(j, 1, i << 12, 4096, 2, i << 12, 3, 0, NULL);
	uint64_t t_map = now_ns() - t0;

	struct jrnl_state s;
	jrnl_state_init(&s);
	struct jrnl_rec c = R_create(1, 1, false), g = R_region(1, 2);
	apply(&s, c);
	apply(&s, g);
	t0 = now_ns();
	struct jrnl_ops ops = { .record = null_cb };
	assert_int_equal(jrnl_replay(j, &ops, NULL, NULL, &e), 0);
	uint64_t t_scan = now_ns() - t0;
	t0 = now_ns();
	assert_int_equal(jrnl_state_replay(j, &s, NULL, &e), 0);
	uint64_t t_state = now_ns() - t0;
	struct jrnl *cj = NULL;
	t0 = now_ns();
	assert_int_equal(jrnl_compact(j, &s, &cj, &e), 0);
	uint64_t t_compact = now_ns() - t0;
	jrnl_close(cj);
	jrnl_state_fini(&s);
	jrnl_close(j);

	static struct jrnl_map_entry b[1024];
	for (int i = 0; i < 1024; i++)
		b[i] = (struct jrnl_map_entry){ (uint64_t)i << 12, 4096, 2, 0, 3, 0 };
	assert_int_equal(jrnl_create(&j, &e), 0);
	assert_int_equal(jrnl_reserve(j, 1000ull * 41000, &e), 0);
	t0 = now_ns();
	for (int i = 0; i < 1000; i++)
		jrnl_append_map_batch(j, 1, b, 1024, NULL);
	uint64_t t_batch = now_ns() - t0;
	jrnl_close(j);

	printf("[ journal ] append MAP: %.0f ns (room reserved), %.0f ns (growing from 64 KiB)\n",
	       (double)t_map / (double)N, (double)t_grow / (double)N);
	printf("[ journal ] MAP batch of 1024: %.1f ns per entry\n", (double)t_batch / 1024e3);
	printf("[ journal ] replay: %.0f ns/record (decode only), %.0f ns/record into the state\n",
	       (double)t_scan / (double)N, (double)t_state / (double)N);
	printf("[ journal ] compaction of %" PRIu64 " mappings: %.1f ms\n", N, (double)t_compact / 1e6);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c),
		cmocka_unit_test(test_format_bytes),
		cmocka_unit_test(test_roundtrip_all_types),
		cmocka_unit_test(test_append_validation),
		cmocka_unit_test(test_state_rules),
		cmocka_unit_test(test_replay_matches_model),
		cmocka_unit_test(test_torn_tail_every_byte),
		cmocka_unit_test(test_corrupt_middle),
		cmocka_unit_test(test_random_damage),
		cmocka_unit_test(test_header_corruption),
		cmocka_unit_test(test_newer_minor),
		cmocka_unit_test(test_granular_records),
		cmocka_unit_test(test_noiommu_flag),
		cmocka_unit_test(test_seq_checked),
		cmocka_unit_test(test_replay_twice),
		cmocka_unit_test(test_snapshot_plus_tail),
		cmocka_unit_test(test_compaction_randomized),
		cmocka_unit_test(test_should_compact),
		cmocka_unit_test(test_growth),
		cmocka_unit_test(test_sigkill_writer),
		cmocka_unit_test(test_perf),
	};
	return cmocka_run_group_tests_name("journal", tests, NULL, NULL);
}
