/* The journal's record codec (journal_impl.h): CRC-32C, the validation every
 * record passes on append and on read, and the encoding and decoding of each
 * record type's payload. The format is specified at the top of journal_file.c;
 * the file around the records (header, commit word, growth, walking) is
 * journal_file.c's. Calls nothing but libc. */
#include "state/journal_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/macro.h"

/* ---- CRC-32C: the SSE4.2 instruction where the CPU has it, otherwise
 * slicing-by-8 from the definition (the two agree bit for bit: the unit
 * test compares them) ---- */

#if defined(__x86_64__)
#include <nmmintrin.h>
#define HAVE_CRC_HW 1
static bool crc_hw;

/* 8 bytes per crc32q: ~12x fewer instructions per record than the tables,
 * which matters at restore (every record is checked) and on every append. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const void *buf,
							    size_t len)
{
	const uint8_t *p = buf;
	uint64_t c = (uint32_t)~crc;
	while (len && ((uintptr_t)p & 7)) {
		c = _mm_crc32_u8((uint32_t)c, *p++);
		len--;
	}
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c = _mm_crc32_u64(c, w);
		p += 8;
		len -= 8;
	}
	while (len--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return ~(uint32_t)c;
}
#endif

static uint32_t crc_table[8][256];

__attribute__((constructor)) static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
					  crc_table[0][crc_table[t - 1][i] & 0xff];
#ifdef HAVE_CRC_HW
	__builtin_cpu_init();
	crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t jrnl_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint32_t c = ~crc;
	while (len && ((uintptr_t)p & 7)) {
		c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
		len--;
	}
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		w = le64toh(w) ^ c;
		c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
		    crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
		    crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
		    crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
	return ~c;
}

uint32_t jrnl_crc32c(uint32_t crc, const void *buf, size_t len)
{
#ifdef HAVE_CRC_HW
	if (crc_hw)
		return crc32c_hw(crc, buf, len);
#endif
	return jrnl_crc32c_sw(crc, buf, len);
}

struct rd {
	const uint8_t *p, *end;
	bool bad;
};

static const uint8_t *rd_take(struct rd *r, size_t n)
{
	if (r->bad || (size_t)(r->end - r->p) < n) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *q = r->p;
	r->p += n;
	return q;
}
static uint16_t rd16(struct rd *r)
{
	const uint8_t *q = rd_take(r, 2);
	return q ? get16(q) : 0;
}
static uint32_t rd32(struct rd *r)
{
	const uint8_t *q = rd_take(r, 4);
	return q ? get32(q) : 0;
}
static uint64_t rd64(struct rd *r)
{
	const uint8_t *q = rd_take(r, 8);
	return q ? get64(q) : 0;
}
/* A length-prefixed string into dst (NUL-terminated); refuses NUL bytes. */
static bool rd_str(struct rd *r, size_t len, char *dst)
{
	const uint8_t *q = rd_take(r, len);
	if (!q || memchr(q, '\0', len))
		return false;
	memcpy(dst, q, len);
	dst[len] = '\0';
	return true;
}

/* ---- record validation (shared by append and decode) ---- */

/* Checks a record's contents; `newer` relaxes flags for a newer minor. */
int jrnl_rec_check(const struct jrnl_rec *r, bool newer, char *why, size_t n)
{
#define BAD(...) (snprintf(why, n, __VA_ARGS__), -EINVAL)
	switch (r->type) {
	case JRNL_CONTEXT_CREATE:
		if (strnlen(r->u.ctx_create.name, JRNL_NAME_MAX + 1) > JRNL_NAME_MAX)
			return BAD("context name longer than %u bytes", JRNL_NAME_MAX);
		if (!newer && (r->u.ctx_create.flags & ~JRNL_CTX_FLAGS_ALL))
			return BAD("unknown context flags 0x%" PRIx32, r->u.ctx_create.flags);
		/* a non-persistent context dies with its session: never detached */
		if ((r->u.ctx_create.flags & JRNL_CTX_DETACHED) &&
		    !(r->u.ctx_create.flags & JRNL_CTX_PERSISTENT))
			return BAD("a detached context must be persistent");
		return 0;
	case JRNL_REGION_ADD: {
		size_t l = strnlen(r->u.region_add.fd_name, JRNL_FDNAME_MAX + 1);
		if (l == 0 || l > JRNL_FDNAME_MAX)
			return BAD("region fd name must be 1 to %u bytes", JRNL_FDNAME_MAX);
		if (!newer && (r->u.region_add.flags & ~JRNL_REGION_FLAGS_ALL))
			return BAD("unknown region flags 0x%" PRIx32, r->u.region_add.flags);
		return 0;
	}
	case JRNL_MAP:
		if (r->u.map.n == 0 || r->u.map.n > JRNL_BATCH_MAX)
			return BAD("a MAP record holds 1 to %u entries, not %" PRIu32,
				   JRNL_BATCH_MAX, r->u.map.n);
		for (uint32_t i = 0; i < r->u.map.n; i++) {
			const struct jrnl_map_entry *m = &r->u.map.e[i];
			if (!range_ok(m->iova, m->length) || !range_ok(m->offset, m->length))
				return BAD("MAP entry %" PRIu32 " (iova 0x%" PRIx64 ", length 0x%" PRIx64
					   ", offset 0x%" PRIx64 ") is empty or wraps",
					   i, m->iova, m->length, m->offset);
			uint64_t g = jrnl_map_granule(m->flags);
			if (g && ((m->flags & JRNL_MAP_MMIO) || (!newer && g != (UINT64_C(1) << 12) &&
								  g != (UINT64_C(1) << 21)) ||
				  (m->iova | m->length | m->offset) & (g - 1) ||
				  m->length / g > JRNL_GRANULES_MAX))
				return BAD("MAP entry %" PRIu32 " (iova 0x%" PRIx64 ", length 0x%" PRIx64
					   ") has a granule 0x%" PRIx64 " it cannot have",
					   i, m->iova, m->length, g);
		}
		return 0;
	case JRNL_DISCARD:
	case JRNL_POPULATE:
	case JRNL_UNMAP:
		if (r->u.unmap.n == 0 || r->u.unmap.n > JRNL_BATCH_MAX)
			return BAD("an UNMAP record holds 1 to %u ranges, not %" PRIu32,
				   JRNL_BATCH_MAX, r->u.unmap.n);
		for (uint32_t i = 0; i < r->u.unmap.n; i++)
			if (!range_ok(r->u.unmap.r[i].iova, r->u.unmap.r[i].length))
				return BAD("UNMAP range %" PRIu32 " (iova 0x%" PRIx64
					   ", length 0x%" PRIx64 ") is empty or wraps",
					   i, r->u.unmap.r[i].iova, r->u.unmap.r[i].length);
		return 0;
	case JRNL_DEVICE_ADD: {
		size_t l = strnlen(r->u.device_add.bdf, JRNL_BDF_MAX + 1);
		if (l == 0 || l > JRNL_BDF_MAX)
			return BAD("device address must be 1 to %u bytes", JRNL_BDF_MAX);
		return 0;
	}
	case JRNL_HANDOFF_STATE:
		if (!newer && r->u.handoff.state > JRNL_HANDOFF_LAST)
			return BAD("unknown handoff state %" PRIu32, r->u.handoff.state);
		return 0;
	case JRNL_CONTEXT_DESTROY:
	case JRNL_CONTEXT_RECLAIM:
	case JRNL_REGION_REMOVE:
	case JRNL_UNMAP_ALL:
	case JRNL_DEVICE_REMOVE:
	case JRNL_SESSION_END:
	case JRNL_ID_WATERMARK:
		return 0;
	default:
		return BAD("unknown record type %" PRIu32, r->type);
	}
#undef BAD
}

/* Payload bytes of a (checked) record. */
uint32_t jrnl_payload_size(const struct jrnl_rec *r)
{
	switch (r->type) {
	case JRNL_CONTEXT_CREATE:
		return 64 + (uint32_t)strlen(r->u.ctx_create.name);
	case JRNL_CONTEXT_RECLAIM:
		return 56;
	case JRNL_REGION_ADD:
		return 40 + (uint32_t)strlen(r->u.region_add.fd_name);
	case JRNL_MAP:
		return 16 + MAP_ENTRY_SIZE * r->u.map.n;
	case JRNL_UNMAP:
	case JRNL_DISCARD:
	case JRNL_POPULATE:
		return 16 + RANGE_SIZE * r->u.unmap.n;
	case JRNL_DEVICE_ADD:
		return 18 + (uint32_t)strlen(r->u.device_add.bdf);
	case JRNL_REGION_REMOVE:
	case JRNL_DEVICE_REMOVE:
		return 16;
	case JRNL_HANDOFF_STATE:
	case JRNL_CONTEXT_DESTROY:
	case JRNL_UNMAP_ALL:
	case JRNL_SESSION_END:
	case JRNL_ID_WATERMARK:
	default:
		return 8;
	}
}

void jrnl_encode_map_entry(uint8_t *p, const struct jrnl_map_entry *m)
{
	put64(p, m->iova);
	put64(p + 8, m->length);
	put64(p + 16, m->region);
	put64(p + 24, m->offset);
	put32(p + 32, m->prot);
	put32(p + 36, m->flags);
}

void jrnl_encode(uint8_t *p, const struct jrnl_rec *r)
{
	switch (r->type) {
	case JRNL_CONTEXT_CREATE: {
		size_t l = strlen(r->u.ctx_create.name);
		put64(p, r->u.ctx_create.ctx);
		put64(p + 8, r->u.ctx_create.session);
		put32(p + 16, r->u.ctx_create.uid);
		put32(p + 20, r->u.ctx_create.gid);
		put32(p + 24, r->u.ctx_create.flags);
		put16(p + 28, (uint16_t)l);
		put16(p + 30, 0);
		memcpy(p + 32, r->u.ctx_create.token, JRNL_TOKEN_SIZE);
		memcpy(p + 64, r->u.ctx_create.name, l);
		break;
	}
	case JRNL_CONTEXT_RECLAIM:
		put64(p, r->u.ctx_reclaim.ctx);
		put64(p + 8, r->u.ctx_reclaim.session);
		put32(p + 16, r->u.ctx_reclaim.uid);
		put32(p + 20, r->u.ctx_reclaim.gid);
		memcpy(p + 24, r->u.ctx_reclaim.token, JRNL_TOKEN_SIZE);
		break;
	case JRNL_REGION_ADD: {
		size_t l = strlen(r->u.region_add.fd_name);
		put64(p, r->u.region_add.ctx);
		put64(p + 8, r->u.region_add.region);
		put64(p + 16, r->u.region_add.size);
		put64(p + 24, r->u.region_add.page_size);
		put32(p + 32, r->u.region_add.flags);
		put16(p + 36, (uint16_t)l);
		put16(p + 38, 0);
		memcpy(p + 40, r->u.region_add.fd_name, l);
		break;
	}
	case JRNL_REGION_REMOVE:
		put64(p, r->u.region_remove.ctx);
		put64(p + 8, r->u.region_remove.region);
		break;
	case JRNL_MAP:
		put64(p, r->u.map.ctx);
		put32(p + 8, r->u.map.n);
		put32(p + 12, 0);
		for (uint32_t i = 0; i < r->u.map.n; i++)
			jrnl_encode_map_entry(p + 16 + (size_t)i * MAP_ENTRY_SIZE, &r->u.map.e[i]);
		break;
	case JRNL_UNMAP:
	case JRNL_DISCARD:
	case JRNL_POPULATE:
		put64(p, r->u.unmap.ctx);
		put32(p + 8, r->u.unmap.n);
		put32(p + 12, 0);
		for (uint32_t i = 0; i < r->u.unmap.n; i++) {
			put64(p + 16 + (size_t)i * RANGE_SIZE, r->u.unmap.r[i].iova);
			put64(p + 24 + (size_t)i * RANGE_SIZE, r->u.unmap.r[i].length);
		}
		break;
	case JRNL_DEVICE_ADD: {
		size_t l = strlen(r->u.device_add.bdf);
		put64(p, r->u.device_add.ctx);
		put64(p + 8, r->u.device_add.device);
		put16(p + 16, (uint16_t)l);
		memcpy(p + 18, r->u.device_add.bdf, l);
		break;
	}
	case JRNL_DEVICE_REMOVE:
		put64(p, r->u.device_remove.ctx);
		put64(p + 8, r->u.device_remove.device);
		break;
	case JRNL_CONTEXT_DESTROY:
		put64(p, r->u.ctx_destroy.ctx);
		break;
	case JRNL_UNMAP_ALL:
		put64(p, r->u.unmap_all.ctx);
		break;
	case JRNL_SESSION_END:
		put64(p, r->u.session_end.session);
		break;
	case JRNL_ID_WATERMARK:
		put64(p, r->u.id_watermark.next_id);
		break;
	case JRNL_HANDOFF_STATE:
		put32(p, r->u.handoff.state);
		put32(p + 4, 0);
		break;
	}
}

/* Decodes a payload into rec; false if malformed. */
int jrnl_decode(struct jrnl_bufs *w, bool newer, const uint8_t *p, uint32_t n, struct jrnl_rec *rec,
		  char *why, size_t why_n)
{
	struct rd r = { p, p + n, false };
	uint16_t l = 0;
	bool ok = true;
	uint32_t res = 0;

	switch (rec->type) {
	case JRNL_CONTEXT_CREATE:
		rec->u.ctx_create.ctx = rd64(&r);
		rec->u.ctx_create.session = rd64(&r);
		rec->u.ctx_create.uid = rd32(&r);
		rec->u.ctx_create.gid = rd32(&r);
		rec->u.ctx_create.flags = rd32(&r);
		l = rd16(&r);
		res = rd16(&r);
		{
			const uint8_t *t = rd_take(&r, JRNL_TOKEN_SIZE);
			if (t)
				memcpy(rec->u.ctx_create.token, t, JRNL_TOKEN_SIZE);
		}
		ok = l <= JRNL_NAME_MAX && rd_str(&r, l, rec->u.ctx_create.name);
		break;
	case JRNL_CONTEXT_DESTROY:
		rec->u.ctx_destroy.ctx = rd64(&r);
		break;
	case JRNL_CONTEXT_RECLAIM: {
		rec->u.ctx_reclaim.ctx = rd64(&r);
		rec->u.ctx_reclaim.session = rd64(&r);
		rec->u.ctx_reclaim.uid = rd32(&r);
		rec->u.ctx_reclaim.gid = rd32(&r);
		const uint8_t *t = rd_take(&r, JRNL_TOKEN_SIZE);
		if (t)
			memcpy(rec->u.ctx_reclaim.token, t, JRNL_TOKEN_SIZE);
		break;
	}
	case JRNL_REGION_ADD:
		rec->u.region_add.ctx = rd64(&r);
		rec->u.region_add.region = rd64(&r);
		rec->u.region_add.size = rd64(&r);
		rec->u.region_add.page_size = rd64(&r);
		rec->u.region_add.flags = rd32(&r);
		l = rd16(&r);
		res = rd16(&r);
		ok = l <= JRNL_FDNAME_MAX && rd_str(&r, l, rec->u.region_add.fd_name);
		break;
	case JRNL_REGION_REMOVE:
		rec->u.region_remove.ctx = rd64(&r);
		rec->u.region_remove.region = rd64(&r);
		break;
	case JRNL_MAP: {
		rec->u.map.ctx = rd64(&r);
		uint32_t cnt = rd32(&r);
		res = rd32(&r);
		if (r.bad || cnt == 0 || cnt > JRNL_BATCH_MAX ||
		    (size_t)(r.end - r.p) / MAP_ENTRY_SIZE < cnt) {
			ok = false;
			break;
		}
		if (cnt > w->ents_cap) {
			struct jrnl_map_entry *ne = realloc(w->ents, cnt * sizeof(*ne));
			if (!ne)
				return -ENOMEM;
			w->ents = ne;
			w->ents_cap = cnt;
		}
		for (uint32_t i = 0; i < cnt; i++) {
			struct jrnl_map_entry *m = &w->ents[i];
			m->iova = rd64(&r);
			m->length = rd64(&r);
			m->region = rd64(&r);
			m->offset = rd64(&r);
			m->prot = rd32(&r);
			m->flags = rd32(&r);
		}
		rec->u.map.n = cnt;
		rec->u.map.e = w->ents;
		break;
	}
	case JRNL_UNMAP:
	case JRNL_DISCARD:
	case JRNL_POPULATE: {
		rec->u.unmap.ctx = rd64(&r);
		uint32_t cnt = rd32(&r);
		res = rd32(&r);
		if (r.bad || cnt == 0 || cnt > JRNL_BATCH_MAX ||
		    (size_t)(r.end - r.p) / RANGE_SIZE < cnt) {
			ok = false;
			break;
		}
		if (cnt > w->ranges_cap) {
			struct jrnl_range *nr = realloc(w->ranges, cnt * sizeof(*nr));
			if (!nr)
				return -ENOMEM;
			w->ranges = nr;
			w->ranges_cap = cnt;
		}
		for (uint32_t i = 0; i < cnt; i++) {
			w->ranges[i].iova = rd64(&r);
			w->ranges[i].length = rd64(&r);
		}
		rec->u.unmap.n = cnt;
		rec->u.unmap.r = w->ranges;
		break;
	}
	case JRNL_UNMAP_ALL:
		rec->u.unmap_all.ctx = rd64(&r);
		break;
	case JRNL_DEVICE_ADD:
		rec->u.device_add.ctx = rd64(&r);
		rec->u.device_add.device = rd64(&r);
		l = rd16(&r);
		ok = l <= JRNL_BDF_MAX && rd_str(&r, l, rec->u.device_add.bdf);
		break;
	case JRNL_DEVICE_REMOVE:
		rec->u.device_remove.ctx = rd64(&r);
		rec->u.device_remove.device = rd64(&r);
		break;
	case JRNL_SESSION_END:
		rec->u.session_end.session = rd64(&r);
		break;
	case JRNL_ID_WATERMARK:
		rec->u.id_watermark.next_id = rd64(&r);
		break;
	case JRNL_HANDOFF_STATE:
		rec->u.handoff.state = rd32(&r);
		res = rd32(&r);
		break;
	default:
		snprintf(why, why_n, "unknown record type %" PRIu32, rec->type);
		return 0;
	}
	if (!ok || r.bad) {
		snprintf(why, why_n, "payload of type %" PRIu32 " is malformed", rec->type);
		return 0;
	}
	/* An older reader ignores what a newer minor appended or reserved. */
	if (!newer && (r.p != r.end || res != 0)) {
		snprintf(why, why_n, "payload of type %" PRIu32 " has %s", rec->type,
			 res ? "a non-zero reserved field" : "trailing bytes");
		return 0;
	}
	if (jrnl_rec_check(rec, newer, why, why_n) < 0)
		return 0;
	return 1;
}

