/* dmb-bench: shared helpers of the benchmark suite.
 *
 * The suite measures dmabroker against the physical floor in the same run:
 * a bare SEQPACKET ping-pong of the broker's own packet sizes (the floor of
 * any socket broker) and the sim backend called directly (the floor of the
 * work itself). Every figure is recorded as a row beside its baseline and the
 * ratio broker/baseline; see docs/performance.md.
 *
 * This header deliberately includes neither the client header (dmabroker.h)
 * nor the daemon's core.h: the two define structs of the same names, so
 * client-side modules and the in-process module (inproc.c, core_dep) only
 * meet through plain types declared here and in inproc.h.
 *
 * Every loop in the suite is bounded twice: by a count and by a deadline. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define PG UINT64_C(4096)
/* Mappings go above 4 GiB: clear of the MSI window, inside 48 bits. */
#define BENCH_IOVA_BASE UINT64_C(0x100000000)

struct bench_opts {
	bool quick;
	bool smoke;           /* tiny sizes; correctness only */
	bool json;
	const char *daemon;   /* dmabrokerd binary */
	const char *perf_dir; /* record the daemon with perf during chosen phases */
	const char *daemon_prefix; /* run the daemon under this command (valgrind ...) */
	const char *daemon_args;   /* extra daemon arguments (shell words) */
	unsigned only;        /* BENCH_* bits; 0 = all */
	bool verbose;
};

enum {
	BENCH_SMALL = 1u << 0,
	BENCH_BATCH = 1u << 1,
	BENCH_SCALE = 1u << 2,
	BENCH_HOL = 1u << 3,
	BENCH_CLIENTS = 1u << 4,
	BENCH_REVOKE = 1u << 5,
	BENCH_RESTART = 1u << 6,
	BENCH_HANDOFF = 1u << 7,
	BENCH_CONVERT = 1u << 8,
};

/* ---- time --------------------------------------------------------------- */

uint64_t now_ns(void);
void sleep_until_ns(uint64_t t);
void sleep_ms(long ms);
/* Wall-clock ms since local midnight, as the daemon's log lines stamp it. */
double bench_wall_ms_of_day(void);
/* The "HH:MM:SS.mmm " stamp at the start of a daemon log line, in ms. */
bool bench_log_line_ms(const char *line, double *ms);
long bench_file_size(const char *path); /* 0 if it cannot be read */
double bench_median(double *v, size_t n); /* sorts v; 0 for n == 0 */
void bench_count_name(char *buf, size_t cap, uint64_t n); /* "10K", "1000000" */

/* ---- samples (nanoseconds) ---------------------------------------------- */

struct samples {
	uint64_t *v;
	size_t n, cap;
	bool sorted;
};

void samples_init(struct samples *s, size_t cap);
/* Drops the sample (and counts nothing) when full: capacity bounds memory. */
void samples_add(struct samples *s, uint64_t ns);
/* p in [0, 100]; 0 when empty. */
double samples_pct(struct samples *s, double p);
double samples_max(struct samples *s);
void samples_free(struct samples *s);

/* ---- results ------------------------------------------------------------ */

enum verdict { V_NONE, V_PASS, V_MISS };

struct result {
	char bench[24];       /* small, batch, scale, hol, clients, revoke, restart, handoff */
	char name[64];        /* the figure */
	char placement[12];   /* pinned, unpinned, "" */
	double value;
	char unit[12];        /* us, ms, entries/s, ns, B, ops/s */
	double base;          /* < 0: no baseline */
	char base_name[72];
	double ratio;         /* value / base; < 0: none */
	char target[40];      /* "" when the figure has no target */
	enum verdict verdict;
	char by[40];          /* how far from the target */
	char note[120];
};

/* Rows are appended in order; the table and the JSON print them all. */
struct result *result_add(const char *bench, const char *name, const char *placement,
			  double value, const char *unit, double base, const char *base_name);
void result_note(struct result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t results_count(void);
struct result *result_at(size_t i);
/* Sets (or replaces) the baseline and recomputes the ratio. */
void result_set_base(struct result *r, double base);
/* Target "value/base <= max" (latency ratios). */
void result_target_ratio_max(struct result *r, double max);
/* Target "value <= max" / "value >= min" in the row's unit. */
void result_target_max(struct result *r, double max, const char *text);
void result_target_min(struct result *r, double min, const char *text);
void results_print_table(FILE *f, const struct bench_opts *o);
void results_print_json(FILE *f, const struct bench_opts *o);
/* Context printed in both outputs. */
void results_set_info(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- correctness (--smoke) ---------------------------------------------- */

/* Records a failed check: the run ends with a non-zero status. */
void check_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
unsigned check_failures(void);
void check_pass(void);
unsigned check_passes(void);
/* Adds the counts a child process reported. */
void check_merge(unsigned passes, unsigned failures);
void bench_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern bool bench_verbose;

/* ---- placement ---------------------------------------------------------- */

/* CPUs this process may run on. */
int cpus_allowed(void);
/* The CPU used for "pinned" runs (the last allowed one). */
int pin_cpu(void);
/* pid 0: this process. cpu < 0: every allowed CPU. */
int set_affinity(pid_t pid, int cpu);
/* Pins every thread of pid (the daemon is single-threaded, but be exact). */
int set_affinity_all_threads(pid_t pid, int cpu);

/* ---- the daemon --------------------------------------------------------- */

struct bdaemon {
	pid_t pid;
	char dir[64];
	char sock[96];
	char log[96];
	char cfg[96];
};

/* Starts dmabrokerd (sim backend, log level warning) on a private socket and
 * waits until it accepts connections; under o->daemon_prefix when set. */
int bdaemon_start(struct bdaemon *d, const struct bench_opts *o, bool populate);
/* The same, with more configuration appended (sections of their own, e.g.
 * "[devices]\nallow = ...\n"); may be NULL. */
int bdaemon_start_cfg(struct bdaemon *d, const struct bench_opts *o, bool populate,
		      const char *extra_config);
/* SIGTERM, then waits; returns <0 if it did not exit cleanly. */
int bdaemon_stop(struct bdaemon *d);
/* VmRSS of pid in KiB, or -1. */
/* A "Key: N kB" line of /proc/PID/status (VmRSS, RssShmem, ...); -1 if none. */
long proc_status_kb(pid_t pid, const char *key);
long proc_rss_kb(pid_t pid);
/* utime + stime of pid, in clock ticks. */
uint64_t proc_cpu_ticks(pid_t pid);
/* utime and stime of pid separately, in clock ticks; false if unreadable. */
bool proc_user_sys_ticks(pid_t pid, uint64_t *user, uint64_t *sys);
/* Voluntary + involuntary context switches of pid (/proc/PID/status). */
uint64_t proc_ctxt_switches(pid_t pid);
/* Time pid has spent on a CPU (ns, /proc/PID/schedstat), or 0. */
uint64_t proc_cpu_ns(pid_t pid);
/* CPU time of the calling thread (ns). */
uint64_t thread_cpu_ns(void);

/* ---- guest memory ------------------------------------------------------- */

/* The 8 bytes at the start of page `page` of a memfd made with `seed`. */
static inline uint64_t page_tag(unsigned seed, uint64_t page)
{
	return UINT64_C(0xB3C4000000000000) ^ ((uint64_t)seed << 40) ^ page;
}

/* A sealed (F_SEAL_SHRINK) memfd of size bytes; with tag, every page of the
 * first tag_pages starts with page_tag(seed, page). */
int bench_memfd(uint64_t size, unsigned seed, uint64_t tag_pages);

/* ---- perf --------------------------------------------------------------- */

/* Starts `perf record -g` on the pids into DIR/NAME.data when o->perf_dir is
 * set; returns the perf pid or 0. */
pid_t perf_start(const struct bench_opts *o, const char *name, const pid_t *pids, size_t n);
void perf_stop(pid_t perf);
/* Counts pid's system calls with `perf stat -e raw_syscalls:sys_enter`
 * (when perf and the tracepoint are there): start, then stop for the count
 * (-1 if it could not be counted). */
pid_t syscount_start(pid_t pid, char *file, size_t cap);
long syscount_stop(pid_t perf, const char *file);

/* ---- the benchmarks ------------------------------------------------------ */

void bench_small(const struct bench_opts *o);
void bench_batch(const struct bench_opts *o);
void bench_scale(const struct bench_opts *o);
void bench_hol(const struct bench_opts *o);
void bench_clients(const struct bench_opts *o);
void bench_revoke(const struct bench_opts *o);
void bench_restart(const struct bench_opts *o);
void bench_handoff(const struct bench_opts *o);
void bench_convert(const struct bench_opts *o);
