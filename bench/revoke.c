/* Revocation latency (issue 4): N P2P mappings target one simulated device
 * B (pages of its 1 MiB BAR0, the same BAR page mapped at many IOVAs, spread
 * over several contexts for the large case); the request that clears B's
 * memory-decoding bit is timed from request to reply. When the reply arrives
 * every one of the N mappings is out of the IOMMU and the owners' REVOKED
 * events are already queued (the daemon sends them first). Restoration
 * (setting the bit again) is timed the same way.
 *
 * Baseline, same run, same contexts and the same number of mappings: RAM
 * mappings laid out exactly like the P2P ones (at another IOVA range of the
 * same contexts) removed with UnmapBatch (one request per context and per
 * 4096 ranges) and put back with MapBatch; the same count of single unmaps
 * is timed once per size and given in the note. Rounds alternate which of
 * the two goes first.
 *
 * Checked on a sample of every size (first and last round): after the
 * revocation a DMA through a revoked IOVA faults with EFAULT (the IOMMU, not
 * the peer's decode error), the RAM mapping beside it still reads its page,
 * every mapping of the importing contexts is listed as revoked and one
 * REVOKED event per importing context arrived before the reply; after the
 * restoration the same IOVAs read B's BAR bytes again (tags written into the
 * BAR through the mappings before the first round). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bclient.h"

#define RV_BDF_B "0000:02:00.0"
#define RV_BAR_PAGES 256u      /* BAR0 of a sim device: 1 MiB */
#define RV_RAM_PAGES 256u      /* the RAM region, mapped over and over */
#define RV_P2P_BASE BENCH_IOVA_BASE
#define RV_RAM_BASE (BENCH_IOVA_BASE + (UINT64_C(1) << 33))
#define RV_STRIDE 2u           /* a hole after every mapping: nothing is adjacent */
#define RV_MAX_CTX 8u
#define RV_SEED 41u

static const char rv_config[] =
	"[devices]\nallow = 0000:01:00.0 " RV_BDF_B "\n"
	"[p2p]\nallow = yes\n"
	"[sim]\ndevices = 0000:01:00.0 " RV_BDF_B "\n";

static uint64_t bar_tag(uint64_t page)
{
	return UINT64_C(0xBA5E000000000000) ^ (page << 12) ^ 0x5a;
}

static uint64_t p2p_iova(size_t j)
{
	return RV_P2P_BASE + (uint64_t)j * RV_STRIDE * PG;
}

static uint64_t ram_iova(size_t j)
{
	return RV_RAM_BASE + (uint64_t)j * RV_STRIDE * PG;
}

struct rv_ctx {
	uint64_t id, region;
	size_t n; /* P2P mappings here, and as many RAM mappings */
};

struct rv {
	struct dmb_client *c;
	uint64_t owner_ctx, dev;
	int memfd;
	unsigned max_batch;
	struct rv_ctx ctx[RV_MAX_CTX];
	size_t nctx;
	/* events seen by the last drain */
	unsigned ev_revoked, ev_restored, ev_other;
	uint64_t ev_ctx_mask;
};

static void on_event(const struct dmb_event *ev, void *opaque)
{
	struct rv *v = opaque;
	if (ev->kind == DMB_EV_MAPPINGS_REVOKED)
		v->ev_revoked++;
	else if (ev->kind == DMB_EV_MAPPINGS_RESTORED)
		v->ev_restored++;
	else
		v->ev_other++;
	for (size_t i = 0; i < v->nctx; i++)
		if (v->ctx[i].id == ev->context)
			v->ev_ctx_mask |= UINT64_C(1) << i;
}

static void drain(struct rv *v)
{
	v->ev_revoked = v->ev_restored = v->ev_other = 0;
	v->ev_ctx_mask = 0;
	if (dmb_dispatch(v->c, on_event, v) < 0)
		check_fail("revoke: receiving events: %s", dmb_last_error(v->c)->message);
}

static int map_ram(struct rv *v, struct rv_ctx *x)
{
	struct dmb_map_entry *e = malloc(v->max_batch * sizeof(*e));
	if (!e)
		return -ENOMEM;
	int r = 0;
	for (size_t done = 0; done < x->n && r == 0;) {
		size_t k = x->n - done < v->max_batch ? x->n - done : v->max_batch;
		for (size_t j = 0; j < k; j++)
			e[j] = (struct dmb_map_entry){ x->region, ((done + j) % RV_RAM_PAGES) * PG,
						       ram_iova(done + j), PG, DMB_READ | DMB_WRITE };
		r = dmb_map_batch(v->c, x->id, e, k);
		done += k;
	}
	free(e);
	return r;
}

static int unmap_ram(struct rv *v, struct rv_ctx *x)
{
	struct dmb_range *rg = malloc(v->max_batch * sizeof(*rg));
	if (!rg)
		return -ENOMEM;
	int r = 0;
	for (size_t done = 0; done < x->n && r == 0;) {
		size_t k = x->n - done < v->max_batch ? x->n - done : v->max_batch;
		for (size_t j = 0; j < k; j++)
			rg[j] = (struct dmb_range){ ram_iova(done + j), PG };
		r = dmb_unmap_batch(v->c, x->id, rg, k, NULL);
		done += k;
	}
	free(rg);
	return r;
}

/* The sampled mappings of a context: first, middle, last and a few more. */
static size_t sample_of(const struct rv_ctx *x, size_t *j, size_t cap)
{
	size_t n = 0;
	const size_t pick[] = { 0, 1, x->n / 3, x->n / 2, (2 * x->n) / 3, x->n - 1 };
	for (size_t i = 0; i < sizeof(pick) / sizeof(pick[0]) && n < cap; i++) {
		if (pick[i] >= x->n)
			continue;
		bool dup = false;
		for (size_t k = 0; k < n; k++)
			dup |= j[k] == pick[i];
		if (!dup)
			j[n++] = pick[i];
	}
	return n;
}

/* revoked: every sampled P2P IOVA must fault with EFAULT; else read B's
 * BAR tag. The RAM mapping of the same index reads its page either way. */
static void check_sample(struct rv *v, bool revoked, const char *what)
{
	unsigned bad = 0, good = 0;
	for (size_t i = 0; i < v->nctx; i++) {
		struct rv_ctx *x = &v->ctx[i];
		size_t js[8];
		size_t n = sample_of(x, js, 8);
		for (size_t k = 0; k < n; k++) {
			size_t j = js[k];
			uint64_t got = 0;
			int r = dmb_sim_dma_read(v->c, x->id, p2p_iova(j), &got, sizeof(got));
			if (revoked) {
				int err = r < 0 ? dmb_last_error(v->c)->sys_errno : 0;
				if (r == 0 || err != EFAULT) {
					check_fail("revoke: %s: DMA at revoked iova 0x%llx (context %llu) "
						   "gave %d errno %d, want EFAULT",
						   what, (unsigned long long)p2p_iova(j),
						   (unsigned long long)x->id, r, err);
					bad++;
				} else {
					good++;
				}
			} else if (r < 0 || got != bar_tag(j % RV_BAR_PAGES)) {
				check_fail("revoke: %s: DMA at restored iova 0x%llx (context %llu): %s, "
					   "got 0x%llx want BAR page %zu's 0x%llx",
					   what, (unsigned long long)p2p_iova(j),
					   (unsigned long long)x->id,
					   r < 0 ? dmb_last_error(v->c)->message : "read", (unsigned long long)got,
					   j % RV_BAR_PAGES, (unsigned long long)bar_tag(j % RV_BAR_PAGES));
				bad++;
			} else {
				good++;
			}
			got = 0;
			r = dmb_sim_dma_read(v->c, x->id, ram_iova(j), &got, sizeof(got));
			if (r < 0 || got != page_tag(RV_SEED, j % RV_RAM_PAGES)) {
				check_fail("revoke: %s: the RAM mapping at 0x%llx beside the P2P ones "
					   "did not read its page (%s)",
					   what, (unsigned long long)ram_iova(j),
					   r < 0 ? dmb_last_error(v->c)->message : "wrong bytes");
				bad++;
			} else {
				good++;
			}
		}
	}
	for (unsigned i = 0; i < good; i++)
		check_pass();
	(void)bad;
}

/* Every P2P mapping of every importing context is listed as revoked (or
 * not), and there are exactly x->n of them. */
static void check_listing(struct rv *v, bool revoked)
{
	struct dmb_mapping_info *mi = malloc(512 * sizeof(*mi));
	if (!mi)
		return;
	for (size_t i = 0; i < v->nctx; i++) {
		struct rv_ctx *x = &v->ctx[i];
		uint64_t start = 0, mmio = 0, wrong = 0;
		bool more = true;
		for (unsigned page = 0; more && page < 10000; page++) {
			size_t n = 0;
			uint64_t next = 0;
			if (dmb_list_mappings(v->c, x->id, start, mi, 512, &n, &more, &next) < 0) {
				check_fail("revoke: listing context %llu: %s", (unsigned long long)x->id,
					   dmb_last_error(v->c)->message);
				free(mi);
				return;
			}
			for (size_t k = 0; k < n; k++) {
				if (!mi[k].mmio)
					continue;
				mmio++;
				wrong += mi[k].revoked != revoked;
			}
			start = next;
		}
		if (mmio != x->n || wrong)
			check_fail("revoke: context %llu lists %llu P2P mappings (want %zu), %llu of them "
				   "%s", (unsigned long long)x->id, (unsigned long long)mmio, x->n,
				   (unsigned long long)wrong, revoked ? "not revoked" : "still revoked");
		else
			check_pass();
	}
	free(mi);
}

struct rv_times {
	struct samples revoke, restore, unmapb, mapb;
	double single_unmap_ms, single_map_ms;
	size_t n, nctx, rounds;
	bool ok;
};

static bool rv_set(struct rv *v, bool on, size_t n, uint64_t *ns, const char *what)
{
	struct dmb_device_state st;
	uint64_t t0 = now_ns();
	int r = on ? dmb_device_set_command(v->c, v->dev, DMB_PCI_MEMORY, 0, &st)
		   : dmb_device_set_command(v->c, v->dev, 0, DMB_PCI_MEMORY, &st);
	uint64_t t1 = now_ns();
	*ns = t1 - t0;
	if (r < 0) {
		check_fail("revoke: %s: %s", what, dmb_last_error(v->c)->message);
		return false;
	}
	if (st.memory != on || st.importers != n || st.revoked != (on ? 0 : n)) {
		check_fail("revoke: %s: device state memory %d importers %u revoked %u (want %d, %zu, %zu)",
			   what, st.memory, st.importers, st.revoked, on, n, on ? (size_t)0 : n);
		return false;
	}
	/* The events were queued before the reply: they are in already. */
	drain(v);
	unsigned got = on ? v->ev_restored : v->ev_revoked;
	uint64_t want_mask = (UINT64_C(1) << v->nctx) - 1;
	if (got < v->nctx || v->ev_ctx_mask != want_mask) {
		check_fail("revoke: %s: %u %s event(s) for context mask 0x%llx before the reply, want "
			   "one per importing context (%zu)",
			   what, got, on ? "RESTORED" : "REVOKED", (unsigned long long)v->ev_ctx_mask,
			   v->nctx);
		return false;
	}
	check_pass();
	return true;
}

static void rv_size(struct rv *v, size_t n, size_t nctx, size_t rounds, struct rv_times *t)
{
	memset(t, 0, sizeof(*t));
	t->n = n;
	t->nctx = nctx;
	samples_init(&t->revoke, rounds);
	samples_init(&t->restore, rounds);
	samples_init(&t->unmapb, rounds);
	samples_init(&t->mapb, rounds);

	/* Importing contexts, each with the RAM region; P2P and RAM mappings. */
	v->nctx = 0;
	for (size_t i = 0; i < nctx; i++) {
		struct rv_ctx *x = &v->ctx[v->nctx];
		x->n = n / nctx + (i < n % nctx);
		if (dmb_context_create(v->c, "bench-revoke", &x->id) < 0) {
			check_fail("revoke: context: %s", dmb_last_error(v->c)->message);
			goto out;
		}
		v->nctx++;
		struct dmb_region_info ri;
		if (dmb_region_register(v->c, x->id, v->memfd, 0, &ri) < 0) {
			check_fail("revoke: region: %s", dmb_last_error(v->c)->message);
			goto out;
		}
		x->region = ri.region;
		for (size_t j = 0; j < x->n; j++)
			if (dmb_map_peer(v->c, x->id, v->dev, NULL, 0, (j % RV_BAR_PAGES) * PG,
					 p2p_iova(j), PG, DMB_READ | DMB_WRITE) < 0) {
				check_fail("revoke: map_peer %zu of context %llu: %s", j,
					   (unsigned long long)x->id, dmb_last_error(v->c)->message);
				goto out;
			}
		if (map_ram(v, x) < 0) {
			check_fail("revoke: RAM map batch: %s", dmb_last_error(v->c)->message);
			goto out;
		}
	}
	/* B's BAR pages carry tags, written through the first context's
	 * mappings (mapping j maps BAR page j % 256). */
	for (size_t j = 0; j < v->ctx[0].n && j < RV_BAR_PAGES; j++) {
		uint64_t tag = bar_tag(j);
		if (dmb_sim_dma_write(v->c, v->ctx[0].id, p2p_iova(j), &tag, sizeof(tag)) < 0) {
			check_fail("revoke: writing BAR page %zu: %s", j, dmb_last_error(v->c)->message);
			goto out;
		}
	}
	drain(v);
	check_sample(v, false, "before the first revocation");

	uint64_t deadline = now_ns() + 60 * UINT64_C(1000000000);
	for (size_t rd = 0; rd < rounds && now_ns() < deadline; rd++) {
		bool sample = rd == 0 || rd + 1 == rounds;
		uint64_t rv_ns, rs_ns, un_ns = 0, mp_ns = 0;
		/* Odd rounds: the baseline first. */
		for (int half = 0; half < 2; half++) {
			if ((half == 0) == (rd % 2 == 0)) {
				if (!rv_set(v, false, n, &rv_ns, "clearing the memory bit"))
					goto out;
				if (sample) {
					check_sample(v, true, "after the revocation");
					if (rd == 0)
						check_listing(v, true);
				}
				if (!rv_set(v, true, n, &rs_ns, "setting the memory bit"))
					goto out;
				if (sample) {
					check_sample(v, false, "after the restoration");
					if (rd == 0)
						check_listing(v, false);
				}
			} else {
				uint64_t a = now_ns();
				for (size_t i = 0; i < v->nctx; i++)
					if (unmap_ram(v, &v->ctx[i]) < 0) {
						check_fail("revoke: RAM unmap batch: %s",
							   dmb_last_error(v->c)->message);
						goto out;
					}
				uint64_t b = now_ns();
				for (size_t i = 0; i < v->nctx; i++)
					if (map_ram(v, &v->ctx[i]) < 0) {
						check_fail("revoke: RAM map batch: %s",
							   dmb_last_error(v->c)->message);
						goto out;
					}
				uint64_t z = now_ns();
				un_ns = b - a;
				mp_ns = z - b;
			}
		}
		samples_add(&t->revoke, rv_ns);
		samples_add(&t->restore, rs_ns);
		samples_add(&t->unmapb, un_ns);
		samples_add(&t->mapb, mp_ns);
		t->rounds++;
	}

	/* The same count of single unmaps (and maps back), once. */
	uint64_t su = 0, sm = 0;
	for (size_t i = 0; i < v->nctx; i++) {
		struct rv_ctx *x = &v->ctx[i];
		uint64_t a = now_ns();
		for (size_t j = 0; j < x->n; j++)
			if (dmb_unmap(v->c, x->id, ram_iova(j), PG, NULL) < 0) {
				check_fail("revoke: single unmap: %s", dmb_last_error(v->c)->message);
				goto out;
			}
		uint64_t b = now_ns();
		for (size_t j = 0; j < x->n; j++) {
			struct dmb_map_entry e = { x->region, (j % RV_RAM_PAGES) * PG, ram_iova(j), PG,
						   DMB_READ | DMB_WRITE };
			if (dmb_map(v->c, x->id, &e) < 0) {
				check_fail("revoke: single map: %s", dmb_last_error(v->c)->message);
				goto out;
			}
		}
		uint64_t z = now_ns();
		su += b - a;
		sm += z - b;
	}
	t->single_unmap_ms = (double)su / 1e6;
	t->single_map_ms = (double)sm / 1e6;
	check_sample(v, false, "after the single unmaps and maps");
	t->ok = t->rounds > 0;
out:;
	/* A dead connection (the daemon died): nothing to clean up there. */
	const struct dmb_error *le = dmb_last_error(v->c);
	if (!t->ok && le->code == 0 && (le->sys_errno == ECONNRESET || le->sys_errno == EPIPE)) {
		v->nctx = 0;
		return;
	}
	for (size_t i = 0; i < v->nctx; i++)
		if (dmb_context_destroy(v->c, v->ctx[i].id) < 0)
			check_fail("revoke: destroying context %llu: %s",
				   (unsigned long long)v->ctx[i].id, dmb_last_error(v->c)->message);
	v->nctx = 0;
	drain(v);
}

static void rv_report(struct rv_times *t, bool seccomp_log)
{
	const char *B = "revoke";
	char name[64], base[72], nn[24];
	if (t->n >= 1000 && t->n % 1000 == 0)
		snprintf(nn, sizeof(nn), "%zuK", t->n / 1000);
	else
		snprintf(nn, sizeof(nn), "%zu", t->n);
	bool ms = t->n >= 1000;
	double div = ms ? 1e6 : 1e3;
	const char *unit = ms ? "ms" : "us";

	snprintf(name, sizeof(name), "revoke %s P2P mapping%s p50", nn, t->n == 1 ? "" : "s");
	snprintf(base, sizeof(base), "UnmapBatch %s RAM mapping%s", nn, t->n == 1 ? "" : "s");
	const char *place = seccomp_log ? "sc=log" : "unpinned";
	struct result *r = result_add(B, name, place, samples_pct(&t->revoke, 50) / div, unit,
				      samples_pct(&t->unmapb, 50) / div, base);
	result_note(r, "%zu rounds, %zu context(s); p99 %.4g %s (base %.4g); %.0f ns/mapping; %zu "
		    "single unmaps: %.4g ms",
		    t->rounds, t->nctx, samples_pct(&t->revoke, 99) / div, unit,
		    samples_pct(&t->unmapb, 99) / div, samples_pct(&t->revoke, 50) / (double)t->n, t->n,
		    t->single_unmap_ms);
	snprintf(name, sizeof(name), "restore %s P2P mapping%s p50", nn, t->n == 1 ? "" : "s");
	snprintf(base, sizeof(base), "MapBatch %s RAM mapping%s", nn, t->n == 1 ? "" : "s");
	r = result_add(B, name, place, samples_pct(&t->restore, 50) / div, unit,
		       samples_pct(&t->mapb, 50) / div, base);
	result_note(r, "p99 %.4g %s (base %.4g); %.0f ns/mapping; %zu single maps: %.4g ms",
		    samples_pct(&t->restore, 99) / div, unit, samples_pct(&t->mapb, 99) / div,
		    samples_pct(&t->restore, 50) / (double)t->n, t->n, t->single_map_ms);
}

/* Connects to a started daemon and sets up B in a context of its own that
 * maps nothing. */
static int rv_open(struct rv *v, const struct bdaemon *d)
{
	if (dmb_connect(d->sock, "bench-revoke", &v->c) < 0) {
		check_fail("revoke: no session");
		return -1;
	}
	v->max_batch = dmb_server_info(v->c)->max_batch;
	if (v->max_batch == 0 || v->max_batch > 4096)
		v->max_batch = 4096;
	struct dmb_device_info di;
	struct dmb_device_state st;
	if (dmb_context_create(v->c, "bench-revoke-owner", &v->owner_ctx) < 0 ||
	    dmb_device_open(v->c, v->owner_ctx, RV_BDF_B, NULL, &di) < 0 ||
	    dmb_device_set_command(v->c, di.device, DMB_PCI_MEMORY, 0, &st) < 0) {
		check_fail("revoke: setting up device %s: %s", RV_BDF_B, dmb_last_error(v->c)->message);
		return -1;
	}
	v->dev = di.device;
	return 0;
}

/* After a failure: did the daemon die? Then say how, precisely. Returns
 * the signal that killed it (0: alive or exited). */
static int rv_daemon_died(struct bdaemon *d, size_t n)
{
	int st;
	pid_t w = 0;
	/* The client sees the connection reset a moment before the dead
	 * process can be reaped: wait up to 2 s. */
	for (int i = 0; i < 200 && d->pid > 0 && w == 0; i++) {
		w = waitpid(d->pid, &st, WNOHANG);
		if (w == 0)
			sleep_ms(10);
	}
	if (w != d->pid)
		return 0;
	pid_t pid = d->pid;
	d->pid = 0;
	if (!WIFSIGNALED(st)) {
		check_fail("revoke: dmabrokerd exited (status %d) with %zu P2P mappings; log %s",
			   WEXITSTATUS(st), n, d->log);
		return 0;
	}
	int sig = WTERMSIG(st);
	char audit[256] = "";
	if (sig == SIGSYS) {
		/* The kernel's audit line names the system call the filter refused. */
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "dmesg 2>/dev/null | grep 'type=1326' | grep ' pid=%d ' | tail -1",
			 (int)pid);
		FILE *f = popen(cmd, "r");
		if (f) {
			if (fgets(audit, sizeof(audit), f)) {
				audit[strcspn(audit, "\n")] = '\0';
				char *sc = strstr(audit, "syscall=");
				if (sc)
					memmove(audit, sc, strlen(sc) + 1);
			}
			pclose(f);
		}
	}
	check_fail("revoke: dmabrokerd (pid %d) was killed by signal %d (%s) while revoking or restoring "
		   "%zu P2P mappings%s%s%s; log %s",
		   (int)pid, sig, strsignal(sig), n, sig == SIGSYS ? ": its seccomp filter refused a system call" : "",
		   audit[0] ? ", audit: " : "", audit, d->log);
	return sig;
}

void bench_revoke(const struct bench_opts *o)
{
	const size_t sizes[3] = { 1, 100, o->smoke ? 300 : o->quick ? 2000 : 10000 };
	const size_t nctx[3] = { 1, 1, o->smoke ? 2 : 4 };
	const size_t rounds[3] = { o->smoke ? 3 : o->quick ? 100 : 400, o->smoke ? 3 : o->quick ? 30 : 100,
				   o->smoke ? 2 : o->quick ? 5 : 21 };
	/* When the default seccomp filter kills the daemon (a check failure,
	 * reported), the rest is measured with --seccomp=log: the same filter,
	 * evaluated on every call, that logs instead of killing. */
	struct bench_opts olog = *o;
	char args[512];
	snprintf(args, sizeof(args), "%s --seccomp=log", o->daemon_args ? o->daemon_args : "");
	olog.daemon_args = args;
	bool seccomp_log = false, up = false;

	struct bdaemon d;
	struct rv v;
	memset(&d, 0, sizeof(d));
	memset(&v, 0, sizeof(v));
	v.memfd = bench_memfd(RV_RAM_PAGES * PG, RV_SEED, RV_RAM_PAGES);
	if (v.memfd < 0) {
		check_fail("revoke: memfd: %s", strerror(-v.memfd));
		return;
	}
	for (size_t s = 0, tries = 0; s < 3 && tries < 6; tries++) {
		if (!up) {
			if (bdaemon_start_cfg(&d, seccomp_log ? &olog : o, false, rv_config) < 0) {
				check_fail("revoke: the daemon did not start");
				break;
			}
			up = true;
			if (rv_open(&v, &d) < 0)
				break;
		}
		struct rv_times t;
		char pname[32];
		snprintf(pname, sizeof(pname), "revoke-%zu", sizes[s]);
		pid_t pids[2] = { d.pid, getpid() };
		pid_t perf = perf_start(o, pname, pids, 2);
		rv_size(&v, sizes[s], nctx[s], rounds[s], &t);
		perf_stop(perf);
		if (t.ok) {
			rv_report(&t, seccomp_log);
		} else {
			const struct dmb_error *le = dmb_last_error(v.c);
			bool dead = le->code == 0 && (le->sys_errno == ECONNRESET || le->sys_errno == EPIPE);
			int sig = dead ? rv_daemon_died(&d, sizes[s]) : 0;
			if (sig) {
				dmb_close(v.c);
				v.c = NULL;
				up = false;
				if (sig == SIGSYS && !seccomp_log) {
					seccomp_log = true;
					samples_free(&t.revoke);
					samples_free(&t.restore);
					samples_free(&t.unmapb);
					samples_free(&t.mapb);
					continue; /* the same size again */
				}
			}
		}
		samples_free(&t.revoke);
		samples_free(&t.restore);
		samples_free(&t.unmapb);
		samples_free(&t.mapb);
		s++;
		if (!up)
			break;
	}
	if (v.c)
		dmb_close(v.c);
	close(v.memfd);
	if (d.pid > 0)
		bdaemon_stop(&d);
}
