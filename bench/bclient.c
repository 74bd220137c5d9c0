/* Client-side helpers: see bclient.h. */
#include "bclient.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dmabroker.pb-c.h"

int bsession_open(struct bsession *s, const char *sock, const char *name, uint64_t region_size,
		  unsigned seed, uint64_t tag_pages)
{
	memset(s, 0, sizeof(*s));
	s->memfd = -1;
	s->seed = seed;
	int r = dmb_connect(sock, name, &s->c);
	if (r < 0) {
		fprintf(stderr, "dmb-bench: connect %s: %s\n", sock, strerror(-r));
		return r;
	}
	r = dmb_context_create(s->c, name, &s->ctx);
	if (r < 0)
		goto fail;
	s->memfd = bench_memfd(region_size, seed, tag_pages);
	if (s->memfd < 0) {
		r = s->memfd;
		goto fail;
	}
	struct dmb_region_info ri;
	r = dmb_region_register(s->c, s->ctx, s->memfd, 0, &ri);
	if (r < 0)
		goto fail;
	s->region = ri.region;
	s->region_size = ri.size;
	return 0;
fail:
	fprintf(stderr, "dmb-bench: setting up session '%s': %s (%s)\n", name, strerror(-r),
		s->c ? dmb_last_error(s->c)->message : "");
	bsession_close(s);
	return r;
}

void bsession_close(struct bsession *s)
{
	if (s->c)
		dmb_close(s->c);
	if (s->memfd >= 0)
		close(s->memfd);
	s->c = NULL;
	s->memfd = -1;
}

bool check_mapped(struct bsession *s, uint64_t iova, uint64_t page, const char *what)
{
	uint64_t got = 0, want = page_tag(s->seed, page);
	int r = dmb_sim_dma_read(s->c, s->ctx, iova, &got, sizeof(got));
	if (r < 0) {
		check_fail("%s: DMA read at iova 0x%llx failed: %s", what, (unsigned long long)iova,
			   dmb_last_error(s->c)->message);
		return false;
	}
	if (got != want) {
		check_fail("%s: DMA read at iova 0x%llx gave 0x%llx, want page %llu's tag 0x%llx", what,
			   (unsigned long long)iova, (unsigned long long)got,
			   (unsigned long long)page, (unsigned long long)want);
		return false;
	}
	check_pass();
	return true;
}

bool check_unmapped(struct bsession *s, uint64_t iova, const char *what)
{
	uint64_t got;
	int r = dmb_sim_dma_read(s->c, s->ctx, iova, &got, sizeof(got));
	if (r == 0) {
		check_fail("%s: DMA read at iova 0x%llx succeeded after the unmap", what,
			   (unsigned long long)iova);
		return false;
	}
	check_pass();
	return true;
}

void wire_sizes_of(struct wire_sizes *w, uint64_t ctx, uint64_t region, uint64_t iova,
		   uint64_t req_id)
{
	/* Exactly what libdmabroker's dmb_map / dmb_unmap build. */
	Dmb__Request req = DMB__REQUEST__INIT;
	Dmb__Map map = DMB__MAP__INIT;
	Dmb__MapEntry e = DMB__MAP_ENTRY__INIT;
	e.region_id = region;
	e.offset = 0;
	e.iova = iova;
	e.length = PG;
	e.prot = 3;
	map.context_id = ctx;
	map.entry = &e;
	req.id = req_id;
	req.body_case = DMB__REQUEST__BODY_MAP;
	req.map = &map;
	w->map_req = dmb__request__get_packed_size(&req);

	Dmb__Unmap un = DMB__UNMAP__INIT;
	Dmb__Range rg = DMB__RANGE__INIT;
	rg.iova = iova;
	rg.length = PG;
	un.context_id = ctx;
	un.range = &rg;
	req.body_case = DMB__REQUEST__BODY_UNMAP;
	req.unmap = &un;
	w->unmap_req = dmb__request__get_packed_size(&req);

	/* And what the daemon's rpc.c answers. */
	Dmb__ServerMessage m = DMB__SERVER_MESSAGE__INIT;
	Dmb__Reply rep = DMB__REPLY__INIT;
	Dmb__MapReply mr = DMB__MAP_REPLY__INIT;
	mr.mapped = 1;
	rep.id = req_id;
	rep.body_case = DMB__REPLY__BODY_MAP;
	rep.map = &mr;
	m.kind_case = DMB__SERVER_MESSAGE__KIND_REPLY;
	m.reply = &rep;
	w->map_rep = dmb__server_message__get_packed_size(&m);

	Dmb__UnmapReply ur = DMB__UNMAP_REPLY__INIT;
	ur.unmapped_bytes = PG;
	ur.unmapped_count = 1;
	rep.body_case = DMB__REPLY__BODY_UNMAP;
	rep.unmap = &ur;
	w->unmap_rep = dmb__server_message__get_packed_size(&m);
}

/* The echo side: blocking recv, blocking send, nothing else. Ends when the
 * peer closes, on any error, or after an hour (alarm) at the latest. */
static void pp_serve(int fd)
{
	uint8_t buf[4096];
	alarm(3600);
	for (uint64_t n = 0; n < UINT64_C(1) << 40; n++) {
		ssize_t k = recv(fd, buf, sizeof(buf), 0);
		if (k < 4)
			break;
		uint32_t len;
		memcpy(&len, buf, sizeof(len));
		if (len > sizeof(buf))
			break;
		if (send(fd, buf, len, MSG_NOSIGNAL) != (ssize_t)len)
			break;
	}
	_exit(0);
}

int pp_start(struct pingpong *p)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	p->pid = fork();
	if (p->pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return -errno;
	}
	if (p->pid == 0) {
		close(sv[0]);
		pp_serve(sv[1]);
	}
	close(sv[1]);
	p->fd = sv[0];
	memset(p->buf, 0x5a, sizeof(p->buf));
	return 0;
}

uint64_t pp_rtt(struct pingpong *p, size_t req_len, size_t rep_len)
{
	uint32_t len = (uint32_t)rep_len;
	if (req_len < sizeof(len) || req_len > sizeof(p->buf) || rep_len > sizeof(p->buf))
		return 0;
	uint64_t t0 = now_ns();
	memcpy(p->buf, &len, sizeof(len));
	if (send(p->fd, p->buf, req_len, MSG_NOSIGNAL) != (ssize_t)req_len)
		return 0;
	ssize_t k = recv(p->fd, p->buf, sizeof(p->buf), 0);
	uint64_t t1 = now_ns();
	return k == (ssize_t)rep_len ? t1 - t0 : 0;
}

void pp_stop(struct pingpong *p)
{
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
	if (p->pid > 0) {
		int st;
		for (int i = 0; i < 500; i++) {
			if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
				p->pid = 0;
				return;
			}
			sleep_ms(10);
		}
		kill(p->pid, SIGKILL);
		waitpid(p->pid, &st, 0);
		p->pid = 0;
	}
}
