/* Many clients: 1, 16 and 256 client processes, each with its own session,
 * context and region, doing small map+unmap pairs as fast as they can for a
 * fixed window. Aggregate throughput against the single-client figure times
 * the CPUs the run may use (the target: 256 clients reach 80% of it). The
 * daemon's CPU share in the window says whether it is the bottleneck. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bclient.h"

#define MAX_CLIENTS 256

struct cl_shared {
	_Atomic int ready;
	_Atomic int failed;
	uint64_t t_warm, t_end;
	uint64_t ops[MAX_CLIENTS];
	_Atomic unsigned passes, failures;
};

static void client_main(const char *sock, unsigned idx, int go_fd, struct cl_shared *sh)
{
	/* The counters came with fork(): report only this process's checks. */
	unsigned pass0 = check_passes(), fail0 = check_failures();
	struct bsession s;
	char name[32];
	snprintf(name, sizeof(name), "bench-client-%u", idx);
	if (bsession_open(&s, sock, name, 64 * PG, 100 + idx, 64) < 0) {
		atomic_fetch_add(&sh->failed, 1);
		_exit(1);
	}
	atomic_fetch_add(&sh->ready, 1);
	char ch;
	if (read(go_fd, &ch, 1) < 0) /* EOF: go */
		_exit(1);
	close(go_fd);

	/* Prove this client's mappings move bytes, once, before the window. */
	struct dmb_map_entry e = { s.region, 5 * PG, BENCH_IOVA_BASE + 5 * PG, PG, DMB_READ | DMB_WRITE };
	if (dmb_map(s.c, s.ctx, &e) == 0) {
		check_mapped(&s, e.iova, 5, "many clients");
		dmb_unmap(s.c, s.ctx, e.iova, PG, NULL);
	} else {
		check_fail("many clients: map: %s", dmb_last_error(s.c)->message);
	}

	uint64_t ops = 0, errors = 0;
	for (uint64_t j = 0; j < UINT64_C(1) << 32; j++) {
		uint64_t page = j % 64;
		e = (struct dmb_map_entry){ s.region, page * PG, BENCH_IOVA_BASE + page * PG, PG,
					    DMB_READ | DMB_WRITE };
		int r = dmb_map(s.c, s.ctx, &e);
		if (r == 0)
			r = dmb_unmap(s.c, s.ctx, e.iova, PG, NULL);
		uint64_t t = now_ns();
		if (r < 0 && ++errors > 10)
			break;
		if (r == 0 && t >= sh->t_warm && t < sh->t_end)
			ops++;
		if (t >= sh->t_end)
			break;
	}
	if (errors)
		check_fail("many clients: %llu errors: %s", (unsigned long long)errors,
			   dmb_last_error(s.c)->message);
	sh->ops[idx] = ops;
	atomic_fetch_add(&sh->passes, check_passes() - pass0);
	atomic_fetch_add(&sh->failures, check_failures() - fail0);
	bsession_close(&s);
	_exit(0);
}

struct cl_result {
	double rate;      /* pairs/s, all clients */
	double daemon_cpu; /* the daemon's CPU time / wall time in the window */
	double daemon_cpu_per_op; /* ns of daemon CPU per map+unmap pair */
	double switches_per_op;   /* daemon context switches per pair */
	unsigned clients;
};

/* n clients; cpu >= 0 pins the clients and the daemon to that CPU. */
static int run_clients(const struct bench_opts *o, struct bdaemon *d, unsigned n, int cpu,
		       struct cl_result *out)
{
	uint64_t warm = (o->smoke ? 100 : 300) * UINT64_C(1000000);
	uint64_t window = (o->smoke ? 500 : o->quick ? 1500 : 4000) * UINT64_C(1000000);
	struct cl_shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
				    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return -errno;
	memset(sh, 0, sizeof(*sh));
	int go[2];
	if (pipe2(go, O_CLOEXEC) < 0) {
		munmap(sh, sizeof(*sh));
		return -errno;
	}
	pid_t pids[MAX_CLIENTS];
	unsigned started = 0;
	for (unsigned i = 0; i < n; i++) {
		pid_t p = fork();
		if (p == 0) {
			close(go[1]);
			client_main(d->sock, i, go[0], sh);
		}
		if (p < 0)
			break;
		if (cpu >= 0)
			set_affinity(p, cpu);
		pids[started++] = p;
	}
	close(go[0]);
	for (int i = 0; i < 3000 && (unsigned)(atomic_load(&sh->ready) + atomic_load(&sh->failed)) < started;
	     i++)
		sleep_ms(10);
	int ret = 0;
	if (started < n || atomic_load(&sh->ready) != (int)n) {
		check_fail("many clients: only %d of %u clients connected", atomic_load(&sh->ready), n);
		ret = -EIO;
	}

	set_affinity_all_threads(d->pid, cpu);
	sh->t_warm = now_ns() + warm;
	sh->t_end = sh->t_warm + window;
	pid_t perf = 0;
	if (n == MAX_CLIENTS) {
		pid_t dp[1] = { d->pid };
		perf = perf_start(o, "clients-256", dp, 1);
	}
	close(go[1]); /* go */
	sleep_until_ns(sh->t_warm);
	uint64_t c0 = proc_cpu_ns(d->pid), s0 = proc_ctxt_switches(d->pid);
	sleep_until_ns(sh->t_end);
	uint64_t c1 = proc_cpu_ns(d->pid), s1 = proc_ctxt_switches(d->pid);
	perf_stop(perf);
	set_affinity_all_threads(d->pid, -1);

	for (unsigned i = 0; i < started; i++) {
		int st = 0;
		pid_t w = 0;
		for (int k = 0; k < 3000 && w == 0; k++) {
			w = waitpid(pids[i], &st, WNOHANG);
			if (w == 0)
				sleep_ms(10);
		}
		if (w == 0) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], &st, 0);
			check_fail("many clients: client %u did not finish", i);
		}
	}
	uint64_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += sh->ops[i];
	out->rate = (double)total / ((double)window / 1e9);
	out->daemon_cpu = (double)(c1 - c0) / (double)window;
	out->daemon_cpu_per_op = total ? (double)(c1 - c0) / (double)total : 0;
	out->switches_per_op = total ? (double)(s1 - s0) / (double)total : 0;
	out->clients = n;
	check_merge(atomic_load(&sh->passes), atomic_load(&sh->failures));
	munmap(sh, sizeof(*sh));
	return ret;
}

void bench_clients(const struct bench_opts *o)
{
	struct bdaemon d;
	if (bdaemon_start(&d, o, false) < 0) {
		check_fail("many clients: the daemon did not start");
		return;
	}
	static const unsigned counts[] = { 1, 16, MAX_CLIENTS };
	struct cl_result res[3], pinned1;
	memset(res, 0, sizeof(res));
	memset(&pinned1, 0, sizeof(pinned1));
	/* One client pinned with the daemon to one CPU: no idle-CPU wake-ups,
	 * the most one client gets. The reference is the better of the two, so
	 * slow wake-ups cannot make the many-client figure look good. */
	run_clients(o, &d, 1, pin_cpu(), &pinned1);
	for (size_t i = 0; i < 3; i++)
		run_clients(o, &d, counts[i], -1, &res[i]);
	bdaemon_stop(&d);

	int cores = cpus_allowed();
	double single = res[0].rate > pinned1.rate ? res[0].rate : pinned1.rate;
	const char *B = "many clients";
	struct result *r = result_add(B, "1 client: map+unmap pairs/s", "pinned", pinned1.rate,
				      "ops/s", -1, NULL);
	result_note(r, "daemon: %.0f%% of a core, %.1f us CPU and %.2f context switches per pair",
		    100 * pinned1.daemon_cpu, pinned1.daemon_cpu_per_op / 1e3, pinned1.switches_per_op);
	r = result_add(B, "1 client: map+unmap pairs/s", "unpinned", res[0].rate, "ops/s", -1, NULL);
	result_note(r, "daemon: %.0f%% of a core, %.1f us CPU and %.2f context switches per pair",
		    100 * res[0].daemon_cpu, res[0].daemon_cpu_per_op / 1e3, res[0].switches_per_op);
	char bn[72];
	snprintf(bn, sizeof(bn), "best 1 client x %d CPUs", cores);
	for (size_t i = 1; i < 3; i++) {
		char name[64];
		snprintf(name, sizeof(name), "%u clients: map+unmap pairs/s", counts[i]);
		r = result_add(B, name, "unpinned", res[i].rate, "ops/s", single * cores, bn);
		result_note(r, "daemon: %.0f%% of a core, %.1f us CPU, %.2f switches per pair; %.2fx best 1",
			    100 * res[i].daemon_cpu, res[i].daemon_cpu_per_op / 1e3, res[i].switches_per_op,
			    single > 0 ? res[i].rate / single : 0);
		if (counts[i] == MAX_CLIENTS)
			result_target_min(r, 0.8 * single * cores, ">= 80% of 1 x cores");
	}
}
