/* sim_table.c — a sim context's state memfd: the table of its areas and
 * attached devices, the part of the simulated IOMMU that survives a daemon
 * restart.
 *
 * A real context's page table lives in the kernel, and the daemon's fd
 * (iommufd, type1 container) keeps that kernel object alive while the daemon
 * restarts: the fd waits in the systemd fd store. The sim's equivalent of
 * the kernel object is one memfd per context, mapped MAP_SHARED. Every map,
 * unmap, device attach and detach writes it; the next process takes the fd
 * back and rebuilds the context from it (sim_adopt.c). The context's RB
 * tree is only an index of this table, rebuilt on adoption.
 *
 * Layout, in the host's byte order (the file never leaves the running
 * kernel: the fd store keeps it across a restart, and a kexec handoff
 * re-creates contexts instead of preserving them):
 *
 *     | header (4096) | slot 0 (32) | slot 1 (32) | ... | slot cap-1 |
 *
 * Header: bytes 0-7 magic "DMBSIMC\0", 8 u32 version (2), 12 u32 header size
 * (4096), 16 u32 slot size (32), 20 u32 zero; the rest of the page is zero.
 * cap = (file size - 4096) / 32 and is a multiple of 128, so each page holds
 * the slots of two words of the in-memory bitmap. The file starts with 128
 * slots and doubles, up to 2^26 slots (2 GiB). Version 1 (64-byte slots,
 * each naming its file) is not read: adoption refuses it, and the daemon
 * falls back to opening the context afresh.
 *
 * Slot: 0 u64 w0, 8 u64 w1, 16 u64 w2, 24 u32 src, 28 u32 state. state is 0
 * for a free slot and check << 16 | tag for a live one, where tag is one of
 * enum sim_rec_tag and check is a 16-bit hash of bytes 0-27 and the tag.
 * By tag (unnamed bytes are zero):
 *   AREA     w0 iova | prot (bits 0-1), w1 length, w2 offset into the
 *            source, src the slot of its SOURCE record;
 *   SRC_RAM  w0 st_dev, w1 st_ino of a region's file;
 *   SRC_BAR  w0 st_dev, w1 st_ino of a device's BAR memfd, w2 bdf
 *            (sim_bdf_pack) | bar << 32;
 *   DEV      w0 st_ino of the device's config-space memfd, w1 st_dev,
 *            w2 st_ino of its BAR0 memfd, src the bdf.
 * A mapping costs one slot; a source is shared by every area of the
 * context that maps its file (the file identity used to be repeated in
 * each 64-byte slot).
 *
 * Crash consistency: a SIGKILL may land at any instruction, and a killed
 * process's stores to a shared mapping are in the file as soon as they
 * retire (nothing to flush). So:
 * - a SOURCE record is put before the first area that names it and
 *   cleared after the last one; killed in between, a source is left that
 *   no area names (adoption drops it in adopt_finish).
 * - put writes the body into a free slot (state 0, so readers ignore it),
 *   then publishes it with one aligned release store of state: the commit
 *   point. Killed before: the slot is free. After: the record is whole.
 * - clear stores 0 to state first; only then may the slot be reused, or the
 *   area's source be released by the caller.
 * - growth is ftruncate then mremap: a crash between leaves a longer file of
 *   zero (free) slots. Trimming punches holes only in pages with no live
 *   slot (zero pages read back as free slots).
 * A reader therefore sees every slot free, or live with exactly the body
 * written before it was published. The check is not needed for crashes; it
 * catches a stray write into the file (adoption then refuses the context).
 *
 * Single writer: the process that owns the context. The next process reads
 * the file only after the previous one has gone (the fd store hands it on).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sim_impl.h"
#include "util/macro.h"

#define TAB_MAGIC "DMBSIMC"
#define TAB_VERSION 2u
#define TAB_HDR SIM_TAB_HDR
#define TAB_SLOT 32u
#define TAB_PAGE_SLOTS (4096u / TAB_SLOT)
#define TAB_MIN_SLOTS TAB_PAGE_SLOTS
#define TAB_MAX_SLOTS (UINT32_C(1) << 26)

struct tab_hdr {
	char magic[8];
	uint32_t version;
	uint32_t hdr_size;
	uint32_t slot_size;
	uint32_t zero;
};

_Static_assert(sizeof(struct sim_slot) == TAB_SLOT, "a slot is 32 bytes");
_Static_assert(TAB_PAGE_SLOTS % 64 == 0, "a page of slots is whole bitmap words");

static inline struct sim_slot *slot_at(const struct sim_table *t, uint32_t i)
{
	return (struct sim_slot *)(void *)(t->map + TAB_HDR) + i;
}

/* Not a CRC: a few multiplies, cheap enough for every map. */
static uint32_t rec_check(const uint64_t w[3], uint32_t src, uint16_t tag)
{
	uint64_t h = UINT64_C(0x243f6a8885a308d3) ^ tag;
	for (unsigned i = 0; i < 4; i++) {
		h ^= i < 3 ? w[i] : src;
		h *= UINT64_C(0x9e3779b97f4a7c15);
		h ^= h >> 29;
	}
	h ^= h >> 32;
	return (uint32_t)(h ^ h >> 16) & 0xffffu;
}

static inline uint32_t rec_state(const uint64_t w[3], uint32_t src, uint16_t tag)
{
	return rec_check(w, src, tag) << 16 | tag;
}

static void hdr_init(struct tab_hdr *h)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, TAB_MAGIC, sizeof(h->magic));
	h->version = TAB_VERSION;
	h->hdr_size = TAB_HDR;
	h->slot_size = TAB_SLOT;
}

static int map_and_index(struct sim_table *t, int fd, uint64_t size, struct dmb_err *e)
{
	void *m = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno,
				"sim: cannot map the context state (%" PRIu64 " bytes): %m", size);
	uint32_t cap = (uint32_t)((size - TAB_HDR) / TAB_SLOT);
	uint64_t *used = calloc(cap / 64, sizeof(*used));
	if (!used) {
		munmap(m, (size_t)size);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
				"sim: out of memory for the context state's index");
	}
	t->fd = fd;
	t->map = m;
	t->map_size = size;
	t->cap = cap;
	t->used = used;
	t->n_used = 0;
	t->hint = 0;
	t->trim_below = 0;
	return 0;
}

int sim_table_create(struct sim_table *t, struct dmb_err *e)
{
	struct tab_hdr h;
	uint64_t size = TAB_HDR + (uint64_t)TAB_MIN_SLOTS * TAB_SLOT;

	memset(t, 0, sizeof(*t));
	t->fd = -1;
	_cleanup_close_ int fd = memfd_create("dmb-sim:ctx-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno,
				"sim: cannot create the context's state memfd: %m");
	if (ftruncate(fd, (off_t)size) < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno, "sim: sizing the context state failed: %m");
	/* Growing is allowed (ftruncate up), shrinking never: nobody can cut
	 * the file under the mapping. */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		return dmb_fail(e, DMB_E_INTERNAL, errno, "sim: sealing the context state failed: %m");
	hdr_init(&h);
	if (pwrite(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno ? errno : EIO,
				"sim: writing the context state header failed: %m");
	int r = map_and_index(t, fd, size, e);
	if (r < 0)
		return r;
	TAKE_FD(fd);
	return 0;
}

int sim_table_open(struct sim_table *t, int fd, struct dmb_err *e)
{
	struct stat st;
	struct tab_hdr h, want;

	memset(t, 0, sizeof(*t));
	t->fd = -1;
	if (fstat(fd, &st) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, errno, "sim: cannot stat the context state fd: %m");
	int seals = fcntl(fd, F_GET_SEALS);
	if (!S_ISREG(st.st_mode) || seals < 0 || !(seals & F_SEAL_SHRINK))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"sim: the context state fd is not a memfd sealed against shrinking");
	uint64_t size = (uint64_t)st.st_size;
	if (size < TAB_HDR + (uint64_t)TAB_MIN_SLOTS * TAB_SLOT ||
	    (size - TAB_HDR) % (TAB_PAGE_SLOTS * TAB_SLOT) != 0 ||
	    (size - TAB_HDR) / TAB_SLOT > TAB_MAX_SLOTS)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADMSG,
				"sim: the context state is %" PRIu64 " bytes, which is not 4096 plus a "
				"multiple of 4096 up to 2 GiB of slots", size);
	ssize_t n = pread(fd, &h, sizeof(h), 0);
	if (n != (ssize_t)sizeof(h))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, n < 0 ? errno : EIO,
				"sim: cannot read the context state header");
	hdr_init(&want);
	if (memcmp(h.magic, want.magic, sizeof(h.magic)) != 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADMSG,
				"sim: the fd is not a sim context state (bad magic)");
	if (h.version != TAB_VERSION)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EPROTONOSUPPORT,
				"sim: context state version %" PRIu32 " is not supported (this sim "
				"reads version %u%s); the context is not adopted", h.version,
				TAB_VERSION, h.version == 1 ? ", which keeps mappings in 32-byte slots; "
				"version 1 came from an older daemon" : "");
	if (memcmp(&h, &want, sizeof(h)) != 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADMSG,
				"sim: the context state header has a wrong size or non-zero reserved field");
	return map_and_index(t, fd, size, e);
}

void sim_table_close(struct sim_table *t)
{
	if (t->map)
		munmap(t->map, (size_t)t->map_size);
	t->map = NULL;
	t->fd = safe_close(t->fd);
	free(t->used);
	t->used = NULL;
	t->cap = t->n_used = 0;
}

static int table_grow(struct sim_table *t, struct dmb_err *e)
{
	if (t->cap >= TAB_MAX_SLOTS)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"sim: the context already holds %" PRIu32 " mappings and devices, "
				"the most the sim keeps in one context", t->cap);
	uint32_t ncap = t->cap * 2;
	uint64_t nsize = TAB_HDR + (uint64_t)ncap * TAB_SLOT;
	uint64_t *nu = realloc(t->used, ncap / 64 * sizeof(*nu));
	if (!nu)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
				"sim: out of memory for the context state's index");
	memset(nu + t->cap / 64, 0, (ncap - t->cap) / 64 * sizeof(*nu));
	t->used = nu;
	/* The file first: killed between the two, it is longer by free slots. */
	if (ftruncate(t->fd, (off_t)nsize) < 0)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno,
				"sim: growing the context state to %" PRIu64 " bytes failed: %m", nsize);
	void *m = mremap(t->map, (size_t)t->map_size, (size_t)nsize, MREMAP_MAYMOVE);
	if (m == MAP_FAILED)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, errno,
				"sim: remapping the context state to %" PRIu64 " bytes failed: %m", nsize);
	t->map = m;
	t->map_size = nsize;
	t->cap = ncap;
	return 0;
}

int sim_table_put(struct sim_table *t, const struct sim_rec *r, uint32_t *slot,
		  struct dmb_err *e)
{
	uint32_t words = t->cap / 64, w = t->hint;

	while (w < words && t->used[w] == UINT64_MAX)
		w++;
	if (w == words) {
		int ret = table_grow(t, e);
		if (ret < 0)
			return ret;
	}
	t->hint = w;
	unsigned bit = (unsigned)__builtin_ctzll(~t->used[w]);
	uint32_t i = w * 64 + bit;
	struct sim_slot *s = slot_at(t, i);

	memcpy(s->w, r->w, sizeof(s->w));
	s->src = r->src;
	atomic_store_explicit(&s->state, rec_state(r->w, r->src, r->tag), memory_order_release);
	t->used[w] |= UINT64_C(1) << bit;
	t->n_used++;
	if (t->n_used > t->cap / 4)
		t->trim_below = t->cap / 8;
	*slot = i;
	return 0;
}

void sim_table_clear(struct sim_table *t, uint32_t i)
{
	atomic_store_explicit(&slot_at(t, i)->state, 0, memory_order_release);
	t->used[i / 64] &= ~(UINT64_C(1) << (i % 64));
	t->n_used--;
	if (i / 64 < t->hint)
		t->hint = i / 64;
}

/* Hysteresis: after a trim, the next one waits until the table has halved
 * again (or refilled past a quarter), so a context that maps and unmaps one
 * area in a loop never punches. Slots are allocated lowest first, so live
 * records gather at the front and the tail is what empties. */
void sim_table_maybe_trim(struct sim_table *t)
{
	if (t->n_used >= t->trim_below || t->cap <= TAB_MIN_SLOTS)
		return;
	t->trim_below = t->n_used / 2;
	uint32_t w = t->cap / 64;
	while (w > 0 && t->used[w - 1] == 0)
		w--;
	w = (w + TAB_PAGE_SLOTS / 64 - 1) / (TAB_PAGE_SLOTS / 64) * (TAB_PAGE_SLOTS / 64);
	uint64_t from = TAB_HDR + (uint64_t)w * 64 * TAB_SLOT;
	/* Best effort: a failure only keeps the memory. */
	if (from < t->map_size)
		(void)fallocate(t->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)from,
				(off_t)(t->map_size - from));
}

int sim_table_read(struct sim_table *t, uint32_t i, struct sim_rec *r, struct dmb_err *e)
{
	struct sim_slot *s = slot_at(t, i);
	uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);

	if (st == 0)
		return 0;
	memcpy(r->w, s->w, sizeof(r->w));
	r->src = s->src;
	r->tag = (uint16_t)st;
	if (st != rec_state(r->w, r->src, r->tag))
		return dmb_fail(e, DMB_E_INTERNAL, EBADMSG,
				"sim: slot %" PRIu32 " of the context state is damaged (state word "
				"0x%08" PRIx32 " does not match its contents)", i, st);
	t->used[i / 64] |= UINT64_C(1) << (i % 64);
	t->n_used++;
	if (t->n_used > t->cap / 4)
		t->trim_below = t->cap / 8;
	return 1;
}
