/* fuzz-seeds: writes the binary seed corpora of the fuzzers.
 *
 *   build-fuzz/tests/fuzz/fuzz-seeds tests/fuzz/corpus
 *
 * corpus/rpc/: packet sequences in fuzz_rpc's framing (u8 flags, u16 len,
 * payload), each a plausible session: Hello, then requests of every kind
 * with the ids a fresh server hands out (I(n) below),
 * plus the classic mistakes. corpus/journal/: journals written by the real
 * journal code (u8 mode, file). The config seeds are plain text files
 * checked in by hand. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dmabroker.pb-c.h"
#include "protocol.h"
#include "state/journal.h"

/* Object ids of a fresh server: the session takes the first (1), then
 * objects in creation order; I(1) is the first context. */
#define I(n) ((uint64_t)(n) + 1)

#define R 1u /* DMB_READ */
#define W 2u /* DMB_WRITE */

static const char *outdir;
static uint8_t buf[1 << 20];
static size_t len;
static uint64_t next_req;

static void emit(const char *sub, const char *name)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", outdir, sub);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/%s/%s", outdir, sub, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "fuzz-seeds: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	len = 0;
	next_req = 0;
}

static void raw(uint8_t flags, const void *p, size_t n)
{
	buf[len++] = flags;
	buf[len++] = (uint8_t)n;
	buf[len++] = (uint8_t)(n >> 8);
	memcpy(buf + len, p, n);
	len += n;
}

static void req(uint8_t flags, Dmb__Request *q)
{
	static uint8_t tmp[DMB_MAX_PACKET];
	q->id = ++next_req;
	size_t n = dmb__request__pack(q, tmp);
	raw(flags, tmp, n);
}

#define BODY(q, CASE, field, val)                              \
	do {                                                   \
		Dmb__Request q = DMB__REQUEST__INIT;            \
		q.body_case = DMB__REQUEST__BODY_##CASE;       \
		q.field = (val);                               \
		req(pkt_flags, &q);                            \
	} while (0)

static uint8_t pkt_flags;

static void hello(void)
{
	Dmb__Hello h = DMB__HELLO__INIT;
	h.protocol_version = DMB_PROTOCOL_VERSION;
	h.client_name = (char *)"fuzz";
	pkt_flags = 0;
	BODY(q, HELLO, hello, &h);
}

static void ctx_create(bool persistent)
{
	Dmb__ContextCreate c = DMB__CONTEXT_CREATE__INIT;
	c.name = (char *)"vm";
	c.persistent = persistent;
	pkt_flags = 0;
	BODY(q, CONTEXT_CREATE, context_create, &c);
}

/* flags: 1 fd of kind `kind` (fuzz_rpc.c: 0 sealed memfd of 64 KiB, 1 read-only,
 * 2 unsealed, 3 a pipe) */
static void region(uint64_t ctx, uint64_t size, unsigned kind)
{
	Dmb__RegionRegister r = DMB__REGION_REGISTER__INIT;
	r.context_id = ctx;
	r.fd_index = 0;
	r.size = size;
	pkt_flags = (uint8_t)(1 | kind << 2);
	BODY(q, REGION_REGISTER, region_register, &r);
}

static void map(uint64_t ctx, uint64_t reg, uint64_t off, uint64_t iova, uint64_t length,
		uint32_t prot)
{
	Dmb__MapEntry me = DMB__MAP_ENTRY__INIT;
	me.region_id = reg;
	me.offset = off;
	me.iova = iova;
	me.length = length;
	me.prot = prot;
	Dmb__Map m = DMB__MAP__INIT;
	m.context_id = ctx;
	m.entry = &me;
	pkt_flags = 0;
	BODY(q, MAP, map, &m);
}

static void map_batch(uint64_t ctx, uint64_t reg, unsigned n, uint64_t iova)
{
	Dmb__MapEntry e[64], *p[64];
	for (unsigned i = 0; i < n; i++) {
		dmb__map_entry__init(&e[i]);
		e[i].region_id = reg;
		e[i].offset = (i % 16) * 4096;
		e[i].iova = iova + i * 4096;
		e[i].length = 4096;
		e[i].prot = R | (i % 2 ? W : 0);
		p[i] = &e[i];
	}
	Dmb__MapBatch b = DMB__MAP_BATCH__INIT;
	b.context_id = ctx;
	b.n_entries = n;
	b.entries = p;
	pkt_flags = 0;
	BODY(q, MAP_BATCH, map_batch, &b);
}

static void unmap(uint64_t ctx, uint64_t iova, uint64_t length)
{
	Dmb__Range rg = DMB__RANGE__INIT;
	rg.iova = iova;
	rg.length = length;
	Dmb__Unmap u = DMB__UNMAP__INIT;
	u.context_id = ctx;
	u.range = &rg;
	pkt_flags = 0;
	BODY(q, UNMAP, unmap, &u);
}

static void unmap_batch(uint64_t ctx, uint64_t iova, unsigned n)
{
	Dmb__Range rg[16], *p[16];
	for (unsigned i = 0; i < n; i++) {
		dmb__range__init(&rg[i]);
		rg[i].iova = iova + i * 8192;
		rg[i].length = 4096;
		p[i] = &rg[i];
	}
	Dmb__UnmapBatch u = DMB__UNMAP_BATCH__INIT;
	u.context_id = ctx;
	u.n_ranges = n;
	u.ranges = p;
	pkt_flags = 0;
	BODY(q, UNMAP_BATCH, unmap_batch, &u);
}

static void map_granular(uint64_t ctx, uint64_t reg, uint64_t iova, uint64_t length,
			 uint64_t granule)
{
	Dmb__MapEntry me = DMB__MAP_ENTRY__INIT;
	me.region_id = reg;
	me.iova = iova;
	me.length = length;
	me.prot = R | W;
	me.granule = granule;
	Dmb__Map m = DMB__MAP__INIT;
	m.context_id = ctx;
	m.entry = &me;
	pkt_flags = 0;
	BODY(q, MAP, map, &m);
}

/* Discard (discard) or Populate n one-granule ranges every other 4 KiB from iova. */
static void convert(uint64_t ctx, uint64_t iova, unsigned n, bool discard)
{
	Dmb__Range rg[16], *p[16];
	for (unsigned i = 0; i < n; i++) {
		dmb__range__init(&rg[i]);
		rg[i].iova = iova + i * 8192;
		rg[i].length = 4096;
		p[i] = &rg[i];
	}
	Dmb__Convert c = DMB__CONVERT__INIT;
	c.context_id = ctx;
	c.n_ranges = n;
	c.ranges = p;
	pkt_flags = 0;
	if (discard)
		BODY(q, DISCARD, discard, &c);
	else
		BODY(q, POPULATE, populate, &c);
}

static void sim_dma(uint64_t ctx, uint64_t iova, uint32_t length, bool to_memory)
{
	static uint8_t data[4096];
	memset(data, 0x5a, sizeof(data));
	Dmb__SimDma d = DMB__SIM_DMA__INIT;
	d.context_id = ctx;
	d.iova = iova;
	d.length = length;
	d.to_memory = to_memory;
	if (to_memory) {
		d.data.data = data;
		d.data.len = length;
	}
	pkt_flags = 0;
	BODY(q, SIM_DMA, sim_dma, &d);
}

static void dev_open(uint64_t ctx, const char *bdf, bool want_fd)
{
	Dmb__DeviceOpen d = DMB__DEVICE_OPEN__INIT;
	d.context_id = ctx;
	d.bdf = (char *)bdf;
	d.want_fd = want_fd;
	pkt_flags = 0;
	BODY(q, DEVICE_OPEN, device_open, &d);
}

static void map_peer(uint64_t ctx, uint64_t peer, const char *bdf, uint64_t iova)
{
	Dmb__MapPeer m = DMB__MAP_PEER__INIT;
	m.context_id = ctx;
	m.peer_device_id = peer;
	m.peer_bdf = (char *)(bdf ? bdf : "");
	m.bar = 0;
	m.offset = 0;
	m.iova = iova;
	m.length = 64 * 1024;
	m.prot = R | W;
	pkt_flags = 0;
	BODY(q, MAP_PEER, map_peer, &m);
}

static void set_command(uint64_t dev, uint32_t set, uint32_t clear)
{
	Dmb__DeviceSetCommand c = DMB__DEVICE_SET_COMMAND__INIT;
	c.device_id = dev;
	c.set_bits = set;
	c.clear_bits = clear;
	pkt_flags = 0;
	BODY(q, DEVICE_SET_COMMAND, device_set_command, &c);
}

static void dev_dma(uint64_t dev, uint64_t iova, uint32_t length, bool to_memory)
{
	static uint8_t data[256];
	Dmb__SimDeviceDma d = DMB__SIM_DEVICE_DMA__INIT;
	d.device_id = dev;
	d.iova = iova;
	d.length = length;
	d.to_memory = to_memory;
	if (to_memory) {
		d.data.data = data;
		d.data.len = length;
	}
	pkt_flags = 0;
	BODY(q, SIM_DEVICE_DMA, sim_device_dma, &d);
}

static void simple(int which, uint64_t id)
{
	pkt_flags = 0;
	switch (which) {
	case 0: {
		Dmb__ContextDestroy m = DMB__CONTEXT_DESTROY__INIT;
		m.context_id = id;
		BODY(q, CONTEXT_DESTROY, context_destroy, &m);
		break;
	}
	case 1: {
		Dmb__IovaRanges m = DMB__IOVA_RANGES__INIT;
		m.context_id = id;
		BODY(q, IOVA_RANGES, iova_ranges, &m);
		break;
	}
	case 2: {
		Dmb__UnmapAll m = DMB__UNMAP_ALL__INIT;
		m.context_id = id;
		BODY(q, UNMAP_ALL, unmap_all, &m);
		break;
	}
	case 3: {
		Dmb__Stats m = DMB__STATS__INIT;
		m.context_id = id;
		BODY(q, STATS, stats, &m);
		break;
	}
	case 4: {
		Dmb__Subscribe m = DMB__SUBSCRIBE__INIT;
		m.mask = (uint32_t)id;
		BODY(q, SUBSCRIBE, subscribe, &m);
		break;
	}
	case 5: {
		Dmb__DeviceClose m = DMB__DEVICE_CLOSE__INIT;
		m.device_id = id;
		BODY(q, DEVICE_CLOSE, device_close, &m);
		break;
	}
	case 6: {
		Dmb__DeviceReset m = DMB__DEVICE_RESET__INIT;
		m.device_id = id;
		BODY(q, DEVICE_RESET, device_reset, &m);
		break;
	}
	case 7: {
		Dmb__Status m = DMB__STATUS__INIT;
		BODY(q, STATUS, status, &m);
		break;
	}
	case 8: {
		Dmb__ListContexts m = DMB__LIST_CONTEXTS__INIT;
		m.all = id != 0;
		BODY(q, LIST_CONTEXTS, list_contexts, &m);
		break;
	}
	case 9: {
		Dmb__ListMappings m = DMB__LIST_MAPPINGS__INIT;
		m.context_id = id;
		m.max_entries = 3;
		BODY(q, LIST_MAPPINGS, list_mappings, &m);
		break;
	}
	case 10: {
		Dmb__ListDevices m = DMB__LIST_DEVICES__INIT;
		m.all = id != 0;
		BODY(q, LIST_DEVICES, list_devices, &m);
		break;
	}
	case 11: {
		Dmb__RegionUnregister m = DMB__REGION_UNREGISTER__INIT;
		m.context_id = I(1);
		m.region_id = id;
		BODY(q, REGION_UNREGISTER, region_unregister, &m);
		break;
	}
	}
}

enum { DESTROY, IOVA, UNMAP_ALL, STATS, SUBSCRIBE, DEV_CLOSE, DEV_RESET, STATUS, LIST_CTX,
       LIST_MAPS, LIST_DEVS, REG_UNREG };

static void rpc_seeds(void)
{
	hello();
	emit("rpc", "hello");

	hello();
	ctx_create(false);
	simple(IOVA, I(1));
	simple(STATS, 0);
	simple(DESTROY, I(1));
	emit("rpc", "context");

	/* context 1, region 2: map, DMA both ways, list, unmap */
	hello();
	ctx_create(false);
	region(I(1), 0, 0);
	map(I(1), I(2), 0, 0x100000, 0x10000, R | W);
	sim_dma(I(1), 0x100000, 4096, true);
	sim_dma(I(1), 0x100800, 256, false);
	simple(LIST_MAPS, I(1));
	unmap(I(1), 0x100000, 0x10000);
	simple(STATS, I(1));
	emit("rpc", "map-dma-unmap");

	hello();
	ctx_create(false);
	region(I(1), 0x8000, 0);
	map_batch(I(1), I(2), 32, 0x200000);
	unmap_batch(I(1), 0x200000, 8);
	simple(LIST_MAPS, I(1));
	simple(UNMAP_ALL, I(1));
	simple(REG_UNREG, I(2));
	emit("rpc", "batch");

	/* granular mappings: discard, populate, DMA, bad ranges */
	hello();
	ctx_create(false);
	region(I(1), 0x40000, 0);
	map_granular(I(1), I(2), 0x300000, 0x20000, 4096);
	convert(I(1), 0x300000, 8, true);
	sim_dma(I(1), 0x302000, 256, false);
	convert(I(1), 0x300000, 4, false);
	convert(I(1), 0x300000, 8, true); /* partly discarded already */
	convert(I(1), 0x300800, 1, true); /* unaligned */
	convert(I(1), 0x900000, 2, false); /* nothing there */
	map_granular(I(1), I(2), 0x400000, 0x3000, 8192); /* no such granule */
	simple(LIST_MAPS, I(1));
	unmap(I(1), 0x300000, 0x20000);
	emit("rpc", "granular");

	hello();
	ctx_create(true); /* refused without an fd store */
	ctx_create(false);
	region(I(1), 0, 1);
	map(I(1), I(2), 0, 0x1000, 0x1000, R);
	map(I(1), I(2), 0, 0x2000, 0x1000, R | W); /* read-only region */
	map(I(1), I(2), 0x1000, 0x1000, 0x1000, R); /* overlap */
	map(I(1), I(2), 0, UINT64_MAX - 0xfff, 0x2000, R); /* wraps */
	simple(LIST_CTX, 1);
	emit("rpc", "persistent-readonly");

	for (unsigned kind = 2; kind <= 3; kind++) {
		hello();
		ctx_create(false);
		region(I(1), 0, kind);
		emit("rpc", kind == 2 ? "region-unsealed" : "region-pipe");
	}

	/* devices 3 and 4 in context 1: P2P, command register, reset, device DMA */
	hello();
	ctx_create(false);
	region(I(1), 0, 0);
	dev_open(I(1), "0000:01:00.0", true);
	dev_open(I(1), "0000:02:00.0", false);
	map(I(1), I(2), 0, 0x100000, 0x10000, R | W);
	set_command(I(3), 6, 0); /* memory decoding and bus mastering on */
	set_command(I(4), 6, 0);
	map_peer(I(1), I(4), NULL, 0x40000000);
	dev_dma(I(3), 0x100000, 64, false);
	dev_dma(I(3), 0x40000000, 16, true);
	set_command(I(4), 0, 2); /* memory decoding off: revocation */
	set_command(I(4), 2, 0);
	simple(DEV_RESET, I(4));
	simple(LIST_DEVS, 1);
	simple(DEV_CLOSE, I(4));
	simple(DEV_CLOSE, I(3));
	emit("rpc", "devices-p2p");

	hello();
	ctx_create(false);
	ctx_create(false);
	dev_open(I(1), "0000:01:00.0", false);
	dev_open(I(2), "0000:02:00.0", false);
	set_command(I(4), 2, 0);
	set_command(I(3), 2, 0);
	map_peer(I(1), 0, "0000:02:00.0", 0x80000000);
	map_peer(I(2), I(3), NULL, 0x80000000);
	dev_open(I(1), "0000:03:00.0", false); /* not allowed */
	dev_open(I(1), "bogus", false);
	simple(SUBSCRIBE, 0xffff);
	simple(SUBSCRIBE, 0);
	simple(STATUS, 0);
	emit("rpc", "p2p-by-bdf");

	/* every request kind alone, after a context, a region and a device */
	static const char *const names[] = { "destroy", "iova", "unmap-all", "stats", "subscribe",
					     "dev-close", "dev-reset", "status", "list-ctx",
					     "list-maps", "list-devs", "reg-unreg" };
	for (int k = DESTROY; k <= REG_UNREG; k++) {
		hello();
		ctx_create(false);
		region(I(1), 0, 0);
		dev_open(I(1), "0000:01:00.0", false);
		map(I(1), I(2), 0, 0, 0x4000, R);
		const uint64_t arg[] = { I(1), I(1), I(1), I(1), 0x3, I(3), I(3), 0, 1, I(1), 1, I(2) };
		simple(k, arg[k]);
		char name[32];
		snprintf(name, sizeof(name), "one-%s", names[k]);
		emit("rpc", name);
	}
	hello();
	ctx_create(false);
	region(I(1), 0, 0);
	map(I(1), I(2), 0x1000, 0x7000, 0x3000, R | W);
	sim_dma(I(1), 0x7ff0, 64, true); /* crosses into the next page */
	sim_dma(I(1), 0x6ff0, 64, false); /* starts before the mapping: a fault */
	unmap(I(1), 0x8000, 0x1000); /* splits the mapping */
	sim_dma(I(1), 0x7000, 4096, false);
	emit("rpc", "split-and-fault");

	hello();
	ctx_create(false);
	region(I(1), 0x4000, 0);
	region(I(1), 0x10000, 0);
	map(I(1), I(3), 0, 0x10000, 0x10000, R | W);
	simple(REG_UNREG, I(3)); /* still mapped */
	simple(UNMAP_ALL, I(1));
	simple(REG_UNREG, I(3));
	simple(REG_UNREG, I(2));
	emit("rpc", "regions");

	hello();
	ctx_create(false);
	dev_open(I(1), "0000:01:00.0", true);
	set_command(I(2), 4, 0);
	dev_dma(I(2), 0, 16, true);
	set_command(I(2), 0xffff, 0);
	set_command(I(2), 0, 0xffff);
	simple(DEV_RESET, I(2));
	simple(DEV_RESET, I(2));
	simple(DESTROY, I(1)); /* with a device open */
	emit("rpc", "device-command");

	/* reclaim: refused without an fd store, and with a wrong token */
	hello();
	ctx_create(false);
	{
		static uint8_t token[32];
		Dmb__ContextReclaim r = DMB__CONTEXT_RECLAIM__INIT;
		r.context_id = I(1);
		r.token.data = token;
		r.token.len = sizeof(token);
		r.want_fds = true;
		pkt_flags = 0;
		BODY(q, CONTEXT_RECLAIM, context_reclaim, &r);
	}
	emit("rpc", "reclaim");

	/* mistakes */
	simple(STATS, 0); /* before the handshake */
	hello();
	hello(); /* twice */
	emit("rpc", "before-hello");

	{
		Dmb__Hello h = DMB__HELLO__INIT;
		h.protocol_version = 99;
		h.client_name = (char *)"old";
		pkt_flags = 0;
		BODY(q, HELLO, hello, &h);
		emit("rpc", "hello-version");
	}
	hello();
	raw(0, "\x08\x07", 2); /* an id, no body */
	raw(0, "\x08\x07\xfa\x06\x00", 5); /* unknown field 111 */
	raw(0, "\xff\xff\xff", 3);
	raw(0x40, "", 0); /* MSG_TRUNC */
	raw(0x80 | 2, "", 0); /* MSG_CTRUNC with fds */
	emit("rpc", "garbage");

	hello();
	ctx_create(false);
	pkt_flags = 3; /* three fds on a request that takes none */
	{
		Dmb__Stats m = DMB__STATS__INIT;
		BODY(q, STATS, stats, &m);
	}
	{
		Dmb__RegionRegister r = DMB__REGION_REGISTER__INIT;
		r.context_id = I(1);
		r.fd_index = 5; /* no such fd */
		pkt_flags = 1;
		BODY(q, REGION_REGISTER, region_register, &r);
	}
	emit("rpc", "fd-misuse");
}

static void journal_seed(const char *name, uint8_t mode, int variant)
{
	struct jrnl *j;
	struct dmb_err e = { 0 };
	static const uint8_t token[JRNL_TOKEN_SIZE] = { 1, 2, 3 };
	if (jrnl_create(&j, &e) < 0) {
		fprintf(stderr, "fuzz-seeds: %s\n", e.msg);
		exit(1);
	}
	jrnl_append_ctx_create(j, 1, 7, 1000, 1000, variant ? JRNL_CTX_PERSISTENT : 0, "vm", token,
			       &e);
	jrnl_append_region_add(j, 1, 2, 1 << 20, 4096, JRNL_REGION_WRITABLE, "region.2", &e);
	jrnl_append_map(j, 1, 0x100000, 0x10000, 2, 0, 3, 0, &e);
	if (variant >= 1) {
		struct jrnl_map_entry me[4];
		for (int i = 0; i < 4; i++)
			me[i] = (struct jrnl_map_entry){ 0x200000 + i * 0x1000, 0x1000, 2, i * 0x1000, 1, 0 };
		jrnl_append_map_batch(j, 1, me, 4, &e);
		jrnl_append_unmap(j, 1, 0x201000, 0x1000, &e);
		jrnl_append_device_add(j, 1, 3, "0000:01:00.0", &e);
		jrnl_append_id_watermark(j, 100, &e);
	}
	if (variant >= 2) {
		struct jrnl_range r[2] = { { 0x200000, 0x1000 }, { 0x202000, 0x1000 } };
		jrnl_append_unmap_ranges(j, 1, r, 2, &e);
		jrnl_append_device_remove(j, 1, 3, &e);
		jrnl_append_session_end(j, 7, &e);
		jrnl_append_ctx_reclaim(j, 1, 8, 1000, 1000, token, &e);
		jrnl_append_handoff(j, JRNL_HANDOFF_PREPARED, &e);
		jrnl_append_unmap_all(j, 1, &e);
		jrnl_append_region_remove(j, 1, 2, &e);
		jrnl_append_ctx_destroy(j, 1, &e);
	}
	if (variant == 3) {
		/* v1.1: a granular mapping, granules discarded and populated */
		jrnl_append_map(j, 1, 0x400000, 0x10000, 2, 0, 3, JRNL_MAP_GRANULE(12), &e);
		struct jrnl_range d[2] = { { 0x401000, 0x2000 }, { 0x40f000, 0x1000 } };
		jrnl_append_convert(j, 1, true, d, 2, &e);
		jrnl_append_convert(j, 1, false, d + 1, 1, &e);
		jrnl_append_convert(j, 1, true, d, 1, &e);
		jrnl_append_map(j, 1, 0x800000, 0x400000, 2, 0, 1, JRNL_MAP_GRANULE(21), &e);
		struct jrnl_range big = { 0xa00000, 0x200000 };
		jrnl_append_convert(j, 1, true, &big, 1, &e);
		jrnl_append_unmap(j, 1, 0x400000, 0x10000, &e);
	}
	/* the file up to the end of the committed records */
	uint64_t n = JRNL_HEADER_SIZE + jrnl_committed(j);
	buf[0] = mode;
	if (n > sizeof(buf) - 1 || pread(jrnl_fd(j), buf + 1, n, 0) != (ssize_t)n) {
		fprintf(stderr, "fuzz-seeds: reading the journal back failed\n");
		exit(1);
	}
	len = n + 1;
	jrnl_close(j);
	emit("journal", name);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fuzz-seeds CORPUS_DIR (tests/fuzz/corpus)\n");
		return 2;
	}
	outdir = argv[1];
	rpc_seeds();
	journal_seed("small", 3, 0);
	journal_seed("batch-device", 3, 1);
	journal_seed("every-type", 3, 2);
	journal_seed("every-type-raw", 0, 2);
	journal_seed("small-crc-only", 1, 0);
	journal_seed("granular", 3, 3);
	return 0;
}
