/* sim_adopt.c — the sim backend's restart hooks (backend.h, "restart").
 *
 * The sim's kernel objects are fds (sim.c, "Restart"): a context is its
 * state memfd (sim_table.c), a device is its config-space and BAR0 memfds.
 * The old process hands them to the fd store (ctx_fds: "state"; dev_fds:
 * "config", "bar0"). The next process, with a backend created from the same
 * device list, re-adopts in this order:
 *
 *   1. ctx_adopt for every context: the table is read back and indexed;
 *      every area is there again, counted in pinned_bytes (RAM) as it was,
 *      but unclaimed: it names its source only by file identity, and the
 *      DMA engine faults on it until step 4 or 5 claims it;
 *   2. dev_adopt for every device, in the context whose table records its
 *      attachment (before any map_bar_adopt that targets it): the device
 *      takes the old memfds back, so config space, command register, reset
 *      count and BAR memory are exactly as they were;
 *   3. region_open for every region, with the memfds kept in the fd store;
 *   4. map_adopt / map_bar_adopt for every mapping the journal names: the
 *      area must exist with exactly that extent, prot and offset, and its
 *      recorded source must be that very file (st_dev/st_ino) or that
 *      device's BAR0 memfd. The first claim of a source binds it to that
 *      region (or BAR); an area claimed through another region of the same
 *      file gets an in-memory alias of the source bound to that region;
 *   5. adopt_finish for every context: unclaimed areas (and attachments of
 *      devices nobody adopted) are removed and counted as strays.
 *
 * Nothing is unmapped, reset or rewritten on the way except by step 5.
 * A failure leaves the caller's fds open and the state files untouched, so
 * the daemon can fall back (open afresh and map again).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sim_impl.h"
#include "util/log.h"
#include "util/macro.h"

SIM_AREA_TREE_GENERATE()

/* ---- fd sets --------------------------------------------------------------- */

static void fdset_put(struct dmb_fdset *out, int fd, const char *name)
{
	struct dmb_fd_entry *en = &out->e[out->n++];
	en->fd = fd;
	snprintf(en->name, sizeof(en->name), "%s", name);
}

int sim_ctx_fds(struct dmb_bctx *bc, struct dmb_fdset *out)
{
	if (!bc || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	fdset_put(out, sim_ctx_of(bc)->tab.fd, "state");
	return 0;
}

int sim_dev_fds(struct dmb_bdev *bd, struct dmb_fdset *out)
{
	if (!bd || !out)
		return -EINVAL;
	struct sim_dev *d = sim_dev_of(bd);
	memset(out, 0, sizeof(*out));
	sim_lock_shared(d->be);
	fdset_put(out, d->cfg_fd, "config");
	fdset_put(out, d->bar0->fd, "bar0");
	sim_unlock(d->be);
	return 0;
}

/* Picks exactly the named entries out of fds (each once, nothing else). */
static int fdset_take(const struct dmb_fdset *fds, const char *what, const char *const names[],
		      size_t n, int out[], struct dmb_err *e)
{
	if (fds->n > DMB_MAX_OBJ_FDS)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: a %s fd set of %zu entries", what,
				fds->n);
	for (size_t i = 0; i < n; i++)
		out[i] = -1;
	for (size_t j = 0; j < fds->n; j++) {
		const struct dmb_fd_entry *en = &fds->e[j];
		size_t i;
		if (strnlen(en->name, sizeof(en->name)) == sizeof(en->name))
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"sim: a %s fd name is not terminated", what);
		for (i = 0; i < n && strcmp(en->name, names[i]) != 0; i++)
			;
		if (i == n)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"sim: the %s fds include '%s', which the sim never exported", what,
					en->name);
		if (out[i] >= 0)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "sim: the %s fds name '%s' twice",
					what, en->name);
		if (en->fd < 0)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF, "sim: the %s fd '%s' is not open",
					what, en->name);
		out[i] = en->fd;
	}
	for (size_t i = 0; i < n; i++)
		if (out[i] < 0)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "sim: the %s fds lack '%s'", what,
					names[i]);
	return 0;
}

/* ---- contexts -------------------------------------------------------------- */

static int damaged(uint32_t slot, const char *why, const char *detail, struct dmb_err *e)
{
	return dmb_fail(e, DMB_E_INTERNAL, EBADMSG, "sim: slot %" PRIu32 " of the context state %s%s%s",
			slot, why, detail ? ": " : "", detail ? detail : "");
}

static int adopt_dev_record(struct sim_ctx *c, uint32_t slot, const struct sim_rec *b,
			    struct dmb_err *e)
{
	char bdf[SIM_BDF_LEN + 1];

	sim_bdf_unpack(b->src, bdf);
	for (size_t i = 0; i < c->n_pending; i++)
		if (c->pending[i].bdf == b->src)
			return damaged(slot, "attaches a device twice", bdf, e);
	size_t n = c->n_pending;
	if (n == 0 || (n >= 4 && (n & (n - 1)) == 0)) { /* full at 0, 4, 8, 16, ... */
		size_t cap = n ? 2 * n : 4;
		struct sim_pending_dev *p = realloc(c->pending, cap * sizeof(*p));
		if (!p)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
					"sim: out of memory adopting a context's devices");
		c->pending = p;
	}
	c->pending[c->n_pending++] = (struct sim_pending_dev){ .bdf = b->src, .slot = slot };
	return 0;
}

static int adopt_src_record(struct sim_ctx *c, uint32_t slot, const struct sim_rec *b,
			    struct dmb_err *e)
{
	bool bar = b->tag == SIM_REC_SRC_BAR;
	uint32_t idx;

	if (b->src != 0 || (!bar && b->w[2] != 0))
		return damaged(slot, "is a source record with a reserved field set", NULL, e);
	if (bar && (b->w[2] >> 32) != 0)
		return damaged(slot, "names a BAR no simulated device can map", NULL, e);
	return sim_src_adopted(c, slot, bar, &idx, e);
}

/* The source entry made for the SOURCE record in slot, or -1. Pass 1 made
 * them in slot order, so c->srcs is sorted by slot. */
static int64_t adopt_src_find(const struct sim_ctx *c, uint32_t slot)
{
	uint32_t lo = 0, hi = c->n_srcs;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->srcs[mid].slot < slot)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < c->n_srcs && c->srcs[lo].slot == slot ? (int64_t)lo : -1;
}

/* An area record, checked as map or map_bar would have checked it, goes
 * into the tree unclaimed. Adds its bytes to *ram if RAM. */
static int adopt_area_record(struct sim_ctx *c, uint32_t slot, const struct sim_slot *b,
			     uint64_t *ram, struct dmb_err *e)
{
	struct dmb_err sub = { 0 };
	uint64_t last, iova = b->w[0] & ~(SIM_IOVA_ALIGNMENT - 1), length = b->w[1],
		       offset = b->w[2];
	uint32_t prot = (uint32_t)(b->w[0] & 3u);

	if (b->w[0] & (SIM_IOVA_ALIGNMENT - 1) & ~(uint64_t)3u)
		return damaged(slot, "is an area record with reserved bits set", NULL, e);
	int64_t idx = adopt_src_find(c, b->src);
	if (idx < 0) {
		char what[48];
		snprintf(what, sizeof(what), "slot %" PRIu32 " is not a source record", b->src);
		return damaged(slot, "names a source that is not there", what, e);
	}
	if (sim_check_args(iova, length, prot, &last, &sub) < 0 ||
	    sim_check_iova(c, offset, iova, length, last, &sub) < 0)
		return damaged(slot, "holds an area the sim would not have mapped", sub.msg, e);
	struct sim_src *src = &c->srcs[idx];
	if (src->bar && (offset > SIM_BAR0_SIZE || length > SIM_BAR0_SIZE - offset))
		return damaged(slot, "maps a BAR range no simulated device has", NULL, e);

	struct sim_area *a = sim_area_alloc(c);
	if (!a)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
				"sim: out of memory adopting a context's mappings");
	a->link.rbe_pc = 0; /* unclaimed */
	a->slot = slot;
	a->src = (uint32_t)idx;
	if (DMB_UNLIKELY(sim_area_link(c, a) < 0)) {
		sim_area_free(c, a);
		return dmb_fail(e, DMB_E_INTERNAL, EEXIST, "sim: area tree out of step at 0x%" PRIx64,
				iova);
	}
	src->refs++;
	c->n_areas++;
	c->mapped += length;
	if (!src->bar)
		*ram += length;
	return 0;
}

/* Failure path of ctx_adopt: forgets the index, leaves the file alone. */
static void adopt_abandon(struct sim_ctx *c)
{
	struct sim_area *a;
	while ((a = RB_MIN(sim_area_tree, &c->areas)) != NULL) {
		RB_REMOVE(sim_area_tree, &c->areas, a);
		sim_area_free(c, a);
	}
	c->tab.fd = -1; /* the caller's */
	sim_ctx_free(c);
}

int sim_ctx_adopt(struct dmb_backend *be, const struct dmb_fdset *fds, struct dmb_bctx **out,
		  struct dmb_err *e)
{
	static const char *const names[] = { "state" };
	struct sim_ctx *c = NULL;
	uint64_t ram = 0;
	int fd = -1;

	if (!be || !fds || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: ctx_adopt called without a backend or fds");
	int r = fdset_take(fds, "context", names, DMB_ARRAY_SIZE(names), &fd, e);
	if (r < 0)
		return r;
	r = sim_ctx_init(sim_of(be), &c, e);
	if (r < 0)
		return r;
	r = sim_table_open(&c->tab, fd, e);
	if (r < 0) {
		sim_ctx_free(c);
		return r;
	}
	/* Pass 1: every record is read and checked; sources and devices are
	 * taken in. Pass 2: the areas, which name their sources by slot. */
	for (uint32_t i = 0; i < c->tab.cap; i++) {
		struct sim_rec b;
		r = sim_table_read(&c->tab, i, &b, e);
		if (r == 0)
			continue;
		if (r > 0) {
			if (b.tag == SIM_REC_DEV)
				r = adopt_dev_record(c, i, &b, e);
			else if (b.tag == SIM_REC_SRC_RAM || b.tag == SIM_REC_SRC_BAR)
				r = adopt_src_record(c, i, &b, e);
			else if (b.tag != SIM_REC_AREA)
				r = damaged(i, "has an unknown tag", NULL, e);
		}
		if (r < 0) {
			adopt_abandon(c);
			return r;
		}
	}
	for (uint32_t i = 0; i < c->tab.cap; i++) {
		if (!sim_table_used(&c->tab, i))
			continue;
		const struct sim_slot *b = sim_table_slot(&c->tab, i);
		if ((uint16_t)atomic_load_explicit(&b->state, memory_order_relaxed) != SIM_REC_AREA)
			continue;
		r = adopt_area_record(c, i, b, &ram, e);
		if (r < 0) {
			adopt_abandon(c);
			return r;
		}
	}
	/* The pages are still pinned: they never stopped being mapped. */
	atomic_fetch_add_explicit(&c->be->pinned, ram, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->be->live, 1, memory_order_relaxed);
	*out = &c->base;
	return 0;
}

/* ---- devices --------------------------------------------------------------- */

/* A device memfd as sim_dev.c makes them: sealed, exactly `size` bytes. */
static int check_dev_memfd(int fd, uint64_t size, const char *what, const char *bdf,
			   uint64_t *dev, uint64_t *ino, struct dmb_err *e)
{
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);
	int need = F_SEAL_SHRINK | F_SEAL_GROW;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size ||
	    seals < 0 || (seals & need) != need)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"sim: the %s fd given for %s is not a sealed %" PRIu64 "-byte memfd",
				what, bdf, size);
	*dev = (uint64_t)st.st_dev;
	*ino = (uint64_t)st.st_ino;
	return 0;
}

int sim_dev_adopt(struct dmb_bctx *bc, const char *bdf_in, const struct dmb_fdset *fds,
		  struct dmb_bdev **out, struct dmb_dev_info *info, struct dmb_err *e)
{
	static const char *const names[] = { "config", "bar0" };
	char bdf[SIM_BDF_LEN + 1], have[160];
	uint64_t cdev = 0, cino = 0, bdev = 0, bino = 0;
	int fd[2] = { -1, -1 };

	if (!bc || !fds || !out)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: dev_adopt called without a context or fds");
	struct sim_ctx *c = sim_ctx_of(bc);
	struct sim_backend *s = c->be;
	if (!sim_bdf_normalize(bdf_in, bdf))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"'%.32s' is not a PCI address (expected dddd:bb:dd.f)", bdf_in ? bdf_in : "");
	struct sim_dev *d = sim_dev_find(s, bdf);
	if (!d) {
		sim_dev_list(s, have, sizeof(have));
		return dmb_fail(e, DMB_E_NOT_FOUND, ENODEV, "no simulated device at %s; the sim has: %s",
				bdf, have);
	}
	int r = sim_check_dev_kind(c, d, e);
	if (r < 0)
		return r;
	r = fdset_take(fds, "device", names, DMB_ARRAY_SIZE(names), fd, e);
	if (r < 0)
		return r;

	/* The attachment the context's state recorded. */
	size_t k = 0;
	while (k < c->n_pending && c->pending[k].bdf != d->bdf_packed)
		k++;
	if (k == c->n_pending) {
		if (d->ctx == c)
			return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
					"simulated device %s is already attached to this context", bdf);
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				"simulated device %s was not attached to this context when the previous "
				"process stopped; open it again", bdf);
	}
	const struct sim_slot *rec = sim_table_slot(&c->tab, c->pending[k].slot);
	r = check_dev_memfd(fd[0], SIM_CFG_SIZE, "config", bdf, &cdev, &cino, e);
	if (r == 0)
		r = check_dev_memfd(fd[1], SIM_BAR0_SIZE, "bar0", bdf, &bdev, &bino, e);
	if (r < 0)
		return r;
	if (cino != rec->w[0] || bdev != rec->w[1] || bino != rec->w[2])
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ESTALE,
				"the fds given for %s are not the config space and BAR0 memory its "
				"attachment to this context recorded", bdf);
	uint8_t rc[4];
	if (pread(fd[0], rc, sizeof(rc), SIM_CFG_RESET_COUNT) != (ssize_t)sizeof(rc))
		return dmb_fail(e, DMB_E_INTERNAL, EIO, "sim: cannot read the config space of %s", bdf);

	/* Exclusive: no DMA may see the device half swapped. */
	sim_lock_excl(s);
	if (d->ctx) {
		bool same = d->ctx == c;
		sim_unlock(s);
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"simulated device %s is already open in %s context", bdf,
				same ? "this" : "another");
	}
	struct sim_region *bar0 = NULL;
	r = sim_region_new(s, fd[1], SIM_BAR0_SIZE, SIM_IOVA_ALIGNMENT, true, &bar0, e);
	if (r < 0) {
		sim_unlock(s);
		return r;
	}
	/* Nothing fails from here on: the fds are the sim's. The fresh memfds
	 * this process made for the device are dropped. */
	bar0->dev = d;
	bar0->bar = 0;
	int old_cfg = d->cfg_fd;
	struct sim_region *old_bar = d->bar0;
	d->cfg_fd = fd[0];
	d->cfg_ino = cino;
	d->bar0 = bar0;
	atomic_store_explicit(&d->resets,
			      (uint32_t)rc[0] | (uint32_t)rc[1] << 8 | (uint32_t)rc[2] << 16 |
				      (uint32_t)rc[3] << 24,
			      memory_order_relaxed);
	sim_dev_attach(c, d, c->pending[k].slot);
	c->pending[k] = c->pending[--c->n_pending];
	sim_unlock(s);
	safe_close(old_cfg);
	sim_region_unref(old_bar);

	sim_dev_info_fill(d, info);
	*out = &d->base;
	return 0;
}

/* ---- mappings -------------------------------------------------------------- */

/* The unclaimed area with exactly this extent, kind and prot. */
static int adopt_find(struct sim_ctx *c, uint64_t iova, uint64_t length, uint32_t prot,
		      bool bar, struct sim_area **out, struct dmb_err *e)
{
	uint64_t last;
	int r = sim_check_args(iova, length, prot, &last, e);
	if (r < 0)
		return r;
	struct sim_area *a = sim_area_first_in(c, iova, last);
	if (!a)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
				"no mapping at [0x%" PRIx64 ", 0x%" PRIx64 "] survived the restart; "
				"map it again", iova, last);
	uint64_t a_iova = sim_area_iova(c, a), a_last = sim_area_last(c, a);
	if (a_iova != iova || a_last != last)
		return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
				"[0x%" PRIx64 ", 0x%" PRIx64 "] overlaps the mapping [0x%" PRIx64
				", 0x%" PRIx64 "], which has another extent", iova, last, a_iova, a_last);
	if (sim_area_claimed(a))
		return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
				"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] is adopted already", iova, last);
	bool is_bar = sim_area_src(c, a)->bar;
	if (is_bar != bar)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] that survived the restart "
				"maps %s, not %s", iova, last, is_bar ? "a BAR" : "RAM",
				bar ? "a BAR" : "RAM");
	if (sim_area_prot(c, a) != prot)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] that survived the restart "
				"has prot 0x%" PRIx32 ", not 0x%" PRIx32, iova, last, sim_area_prot(c, a),
				prot);
	*out = a;
	return 0;
}

static int offset_mismatch(struct sim_ctx *c, const struct sim_area *a, uint64_t offset,
			   struct dmb_err *e)
{
	return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
			"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] that survived the restart starts "
			"at offset 0x%" PRIx64 " of its source, not 0x%" PRIx64,
			sim_area_iova(c, a), sim_area_last(c, a), sim_area_offset(c, a), offset);
}

/* Claims a: binds its source to r (the first claim of the source takes a
 * reference on r; an area claimed through another region of the same file
 * moves to an alias entry bound to that region) and lets the area move
 * bytes. */
static int adopt_claim(struct sim_ctx *c, struct sim_area *a, struct sim_region *r,
		       struct dmb_err *e)
{
	struct sim_src *src = sim_area_src(c, a);
	if (!src->region) {
		sim_region_ref(r);
		src->region = r;
	} else if (src->region != r) {
		uint32_t to;
		int ret = sim_src_alias(c, a->src, r, &to, e);
		if (ret < 0)
			return ret;
		c->srcs[to].refs++;
		sim_src_put(c, a->src);
		a->src = to;
	}
	DMB_RB_SET_OWNER_BITS(a, link, SIM_AREA_CLAIMED);
	return 0;
}

int sim_map_adopt(struct dmb_bctx *bc, struct dmb_bregion *br, uint64_t offset, uint64_t iova,
		  uint64_t length, uint32_t prot, struct dmb_err *e)
{
	if (!bc || !br)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL,
				"sim: map_adopt called without a context or region");
	if (br->be != bc->be)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: region belongs to another backend");
	struct sim_ctx *c = sim_ctx_of(bc);
	struct sim_region *r = sim_region_of(br);
	struct sim_area *a = NULL;

	int ret = adopt_find(c, iova, length, prot, false, &a, e);
	if (ret < 0)
		return ret;
	if (sim_area_offset(c, a) != offset)
		return offset_mismatch(c, a, offset, e);
	const struct sim_slot *rec = sim_table_slot(&c->tab, sim_area_src(c, a)->slot);
	if (rec->w[0] != r->file_dev || rec->w[1] != r->file_ino)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ESTALE,
				"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] that survived the restart "
				"maps another file (inode %" PRIu64 ") than this region's (inode %" PRIu64 ")",
				iova, iova + length - 1, rec->w[1], r->file_ino);
	if (offset > r->size || length > r->size - offset)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] reaches past the region's "
				"0x%" PRIx64 " bytes", iova, iova + length - 1, r->size);
	if ((prot & DMB_PROT_WRITE) && !r->writable)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] allows device writes but the "
				"region was registered read-only", iova, iova + length - 1);
	return adopt_claim(c, a, r, e);
}

int sim_map_bar_adopt(struct dmb_bctx *bc, struct dmb_bdev *peer, unsigned bar, uint64_t offset,
		      uint64_t iova, uint64_t length, uint32_t prot, struct dmb_err *e)
{
	char was[SIM_BDF_LEN + 1];

	if (!bc || !peer)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL,
				"sim: map_bar_adopt called without a context or device");
	struct sim_ctx *c = sim_ctx_of(bc);
	struct sim_dev *d = sim_dev_of(peer);
	struct sim_area *a = NULL;
	if (d->be != c->be)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: device %s belongs to another backend",
				d->bdf);

	int ret = adopt_find(c, iova, length, prot, true, &a, e);
	if (ret < 0)
		return ret;
	if (sim_area_offset(c, a) != offset)
		return offset_mismatch(c, a, offset, e);
	const struct sim_slot *rec = sim_table_slot(&c->tab, sim_area_src(c, a)->slot);
	uint32_t rec_bdf = (uint32_t)rec->w[2], rec_bar = (uint32_t)(rec->w[2] >> 32);
	if (rec_bdf != d->bdf_packed || rec_bar != bar) {
		sim_bdf_unpack(rec_bdf, was);
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ESTALE,
				"the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] that survived the restart "
				"maps BAR%" PRIu32 " of %s, not BAR%u of %s",
				iova, iova + length - 1, rec_bar, was, bar, d->bdf);
	}
	/* Shared: dev_adopt swaps the BAR memory under the exclusive lock. */
	sim_lock_shared(c->be);
	struct sim_region *b = d->bar0;
	if (rec->w[0] != b->file_dev || rec->w[1] != b->file_ino) {
		sim_unlock(c->be);
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ESTALE,
				"BAR%u of %s is not the memory the mapping [0x%" PRIx64 ", 0x%" PRIx64 "] "
				"had before the restart; adopt the device (dev_adopt) first",
				bar, d->bdf, iova, iova + length - 1);
	}
	ret = adopt_claim(c, a, b, e);
	sim_unlock(c->be);
	return ret;
}

int sim_adopt_finish(struct dmb_bctx *bc, uint64_t *stray, struct dmb_err *e)
{
	if (stray)
		*stray = 0;
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL, "sim: adopt_finish called without a context");
	struct sim_ctx *c = sim_ctx_of(bc);
	uint64_t n = 0, ram = 0;

	for (struct sim_area *a = RB_MIN(sim_area_tree, &c->areas), *next; a; a = next) {
		next = RB_NEXT(sim_area_tree, &c->areas, a);
		if (sim_area_claimed(a))
			continue;
		RB_REMOVE(sim_area_tree, &c->areas, a);
		ram += sim_area_release(c, a);
		n++;
	}
	sim_unpin(c, ram);
	sim_srcs_sweep(c);
	for (size_t i = 0; i < c->n_pending; i++) {
		char bdf[SIM_BDF_LEN + 1];
		sim_bdf_unpack(c->pending[i].bdf, bdf);
		log_warning("sim: device %s was attached to a context before the restart and nobody "
			    "adopted it; its attachment is dropped", bdf);
		sim_table_clear(&c->tab, c->pending[i].slot);
	}
	free(c->pending);
	c->pending = NULL;
	c->n_pending = 0;
	sim_table_maybe_trim(&c->tab);
	if (stray)
		*stray = n;
	return 0;
}

/* The table is current after every call and a killed process loses none
 * of it, so a clean stop has nothing to add. */
int sim_ctx_prepare_handover(struct dmb_bctx *bc, struct dmb_err *e)
{
	if (!bc)
		return dmb_fail(e, DMB_E_INTERNAL, EINVAL,
				"sim: ctx_prepare_handover called without a context");
	return 0;
}
