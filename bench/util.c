/* dmb-bench helpers: clocks, percentiles, result rows and their two
 * printers, CPU placement, the daemon under test, memfds, perf. */
#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

bool bench_verbose;

/* ---- time --------------------------------------------------------------- */

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void sleep_until_ns(uint64_t t)
{
	struct timespec ts = { (time_t)(t / 1000000000u), (long)(t % 1000000000u) };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* ---- samples ------------------------------------------------------------ */

void samples_init(struct samples *s, size_t cap)
{
	s->v = malloc((cap ? cap : 1) * sizeof(*s->v));
	s->n = 0;
	s->cap = s->v ? cap : 0;
	s->sorted = false;
}

void samples_add(struct samples *s, uint64_t ns)
{
	if (s->n < s->cap) {
		s->v[s->n++] = ns;
		s->sorted = false;
	}
}

static int u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

double samples_pct(struct samples *s, double p)
{
	if (s->n == 0)
		return 0;
	if (!s->sorted) {
		qsort(s->v, s->n, sizeof(*s->v), u64_cmp);
		s->sorted = true;
	}
	/* Nearest rank. */
	size_t k = (size_t)ceil(p / 100.0 * (double)s->n);
	if (k > 0)
		k--;
	if (k >= s->n)
		k = s->n - 1;
	return (double)s->v[k];
}

double samples_max(struct samples *s)
{
	return samples_pct(s, 100);
}

void samples_free(struct samples *s)
{
	free(s->v);
	s->v = NULL;
	s->n = s->cap = 0;
}

/* ---- results ------------------------------------------------------------ */

#define MAX_RESULTS 256
#define MAX_INFO 24

static struct result results[MAX_RESULTS];
static size_t n_results;
static struct result dummy;
static char info_key[MAX_INFO][32];
static char info_val[MAX_INFO][160];
static size_t n_info;

struct result *result_add(const char *bench, const char *name, const char *placement,
			  double value, const char *unit, double base, const char *base_name)
{
	if (n_results >= MAX_RESULTS)
		return &dummy;
	struct result *r = &results[n_results++];
	memset(r, 0, sizeof(*r));
	snprintf(r->bench, sizeof(r->bench), "%s", bench);
	snprintf(r->name, sizeof(r->name), "%s", name);
	snprintf(r->placement, sizeof(r->placement), "%s", placement ? placement : "");
	r->value = value;
	snprintf(r->unit, sizeof(r->unit), "%s", unit);
	r->base = base;
	snprintf(r->base_name, sizeof(r->base_name), "%s", base_name ? base_name : "");
	r->ratio = base > 0 ? value / base : -1;
	return r;
}

size_t results_count(void)
{
	return n_results;
}

struct result *result_at(size_t i)
{
	return i < n_results ? &results[i] : NULL;
}

void result_set_base(struct result *r, double base)
{
	r->base = base;
	r->ratio = base > 0 ? r->value / base : -1;
}

void result_note(struct result *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->note, sizeof(r->note), fmt, ap);
	va_end(ap);
}

void result_target_ratio_max(struct result *r, double max)
{
	snprintf(r->target, sizeof(r->target), "<= %.2gx baseline", max);
	if (r->ratio < 0)
		return;
	r->verdict = r->ratio <= max ? V_PASS : V_MISS;
	if (r->verdict == V_MISS)
		snprintf(r->by, sizeof(r->by), "%.2fx over", r->ratio / max);
}

void result_target_max(struct result *r, double max, const char *text)
{
	snprintf(r->target, sizeof(r->target), "%s", text);
	r->verdict = r->value <= max ? V_PASS : V_MISS;
	if (r->verdict == V_MISS)
		snprintf(r->by, sizeof(r->by), "%.2fx over", r->value / max);
}

void result_target_min(struct result *r, double min, const char *text)
{
	snprintf(r->target, sizeof(r->target), "%s", text);
	r->verdict = r->value >= min ? V_PASS : V_MISS;
	if (r->verdict == V_MISS)
		snprintf(r->by, sizeof(r->by), "%.1f%% of it", 100.0 * r->value / min);
}

void results_set_info(const char *key, const char *fmt, ...)
{
	if (n_info >= MAX_INFO)
		return;
	snprintf(info_key[n_info], sizeof(info_key[0]), "%s", key);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(info_val[n_info], sizeof(info_val[0]), fmt, ap);
	va_end(ap);
	n_info++;
}

/* A value with a unit, in few characters. */
static void fmt_value(char *buf, size_t cap, double v, const char *unit)
{
	if (!strcmp(unit, "entries/s") || !strcmp(unit, "ops/s")) {
		if (v >= 1e6)
			snprintf(buf, cap, "%.2f M/s", v / 1e6);
		else if (v >= 1e3)
			snprintf(buf, cap, "%.1f k/s", v / 1e3);
		else
			snprintf(buf, cap, "%.0f /s", v);
	} else if (!strcmp(unit, "us")) {
		snprintf(buf, cap, v >= 1000 ? "%.0f us" : v >= 100 ? "%.1f us" : "%.2f us", v);
	} else if (!strcmp(unit, "ms")) {
		snprintf(buf, cap, v >= 100 ? "%.0f ms" : "%.2f ms", v);
	} else if (!strcmp(unit, "ns")) {
		snprintf(buf, cap, "%.0f ns", v);
	} else if (!strcmp(unit, "B")) {
		snprintf(buf, cap, "%.1f B", v);
	} else {
		snprintf(buf, cap, "%.3g %s", v, unit);
	}
}

static const char *verdict_name(enum verdict v)
{
	return v == V_PASS ? "PASS" : v == V_MISS ? "MISS" : "";
}

void results_print_table(FILE *f, const struct bench_opts *o)
{
	for (size_t i = 0; i < n_info; i++)
		fprintf(f, "# %-10s %s\n", info_key[i], info_val[i]);
	fprintf(f, "%-36s %-8s %11s  %-44s %7s  %-24s %s\n", "figure", "place", "value",
		"baseline (same run)", "ratio", "target", "result");
	const char *last = "";
	for (size_t i = 0; i < n_results; i++) {
		const struct result *r = &results[i];
		if (strcmp(last, r->bench)) {
			fprintf(f, "-- %s\n", r->bench);
			last = r->bench;
		}
		char val[24], base[24] = "", bl[80] = "", ratio[16] = "", res[64] = "";
		fmt_value(val, sizeof(val), r->value, r->unit);
		if (r->base > 0) {
			fmt_value(base, sizeof(base), r->base, r->unit);
			snprintf(bl, sizeof(bl), "%s %s", base, r->base_name);
		}
		if (r->ratio >= 0)
			snprintf(ratio, sizeof(ratio), "%.2fx", r->ratio);
		if (r->verdict != V_NONE)
			snprintf(res, sizeof(res), "%s%s%s%s", verdict_name(r->verdict),
				 r->by[0] ? " (" : "", r->by, r->by[0] ? ")" : "");
		fprintf(f, "%-36s %-8s %11s  %-44.44s %7s  %-24s %s\n", r->name, r->placement, val, bl,
			ratio, r->target, res);
		if (r->note[0])
			fprintf(f, "%-36s %-8s   %s\n", "", "", r->note);
	}
	unsigned pass = 0, miss = 0;
	for (size_t i = 0; i < n_results; i++) {
		pass += results[i].verdict == V_PASS;
		miss += results[i].verdict == V_MISS;
	}
	fprintf(f, "targets: %u PASS, %u MISS (informational: timing never fails the run)\n", pass, miss);
	fprintf(f, "checks: %u passed, %u failed (bytes moved through sampled mappings)\n",
		check_passes(), check_failures());
	(void)o;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, double v)
{
	if (isfinite(v))
		fprintf(f, "%.6g", v);
	else
		fputs("null", f);
}

void results_print_json(FILE *f, const struct bench_opts *o)
{
	fprintf(f, "{\n  \"mode\": ");
	json_str(f, o->smoke ? "smoke" : o->quick ? "quick" : "full");
	fprintf(f, ",\n  \"info\": {");
	for (size_t i = 0; i < n_info; i++) {
		fprintf(f, "%s\n    ", i ? "," : "");
		json_str(f, info_key[i]);
		fputs(": ", f);
		json_str(f, info_val[i]);
	}
	fprintf(f, "\n  },\n  \"checks\": {\"passed\": %u, \"failed\": %u},\n  \"results\": [",
		check_passes(), check_failures());
	for (size_t i = 0; i < n_results; i++) {
		const struct result *r = &results[i];
		fprintf(f, "%s\n    {\"bench\": ", i ? "," : "");
		json_str(f, r->bench);
		fputs(", \"name\": ", f);
		json_str(f, r->name);
		fputs(", \"placement\": ", f);
		json_str(f, r->placement);
		fputs(", \"value\": ", f);
		json_num(f, r->value);
		fputs(", \"unit\": ", f);
		json_str(f, r->unit);
		fputs(", \"baseline\": ", f);
		if (r->base > 0)
			json_num(f, r->base);
		else
			fputs("null", f);
		fputs(", \"baseline_name\": ", f);
		json_str(f, r->base_name);
		fputs(", \"ratio\": ", f);
		if (r->ratio >= 0)
			json_num(f, r->ratio);
		else
			fputs("null", f);
		fputs(", \"target\": ", f);
		json_str(f, r->target);
		fputs(", \"verdict\": ", f);
		if (r->verdict == V_NONE)
			fputs("null", f);
		else
			json_str(f, verdict_name(r->verdict));
		fputs(", \"by\": ", f);
		json_str(f, r->by);
		fputs(", \"note\": ", f);
		json_str(f, r->note);
		fputc('}', f);
	}
	fprintf(f, "\n  ]\n}\n");
}

/* ---- checks ------------------------------------------------------------- */

static unsigned n_check_fail, n_check_pass;

void check_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("dmb-bench: CHECK FAILED: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	n_check_fail++;
}

unsigned check_failures(void)
{
	return n_check_fail;
}

void check_pass(void)
{
	n_check_pass++;
}

unsigned check_passes(void)
{
	return n_check_pass;
}

void check_merge(unsigned passes, unsigned failures)
{
	n_check_pass += passes;
	n_check_fail += failures;
}

void bench_log(const char *fmt, ...)
{
	if (!bench_verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fputs("dmb-bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- placement ---------------------------------------------------------- */

static cpu_set_t allowed;
static bool allowed_known;

static void load_allowed(void)
{
	if (allowed_known)
		return;
	CPU_ZERO(&allowed);
	if (sched_getaffinity(0, sizeof(allowed), &allowed) < 0)
		CPU_SET(0, &allowed);
	allowed_known = true;
}

int cpus_allowed(void)
{
	load_allowed();
	return CPU_COUNT(&allowed);
}

int pin_cpu(void)
{
	load_allowed();
	int last = 0;
	for (int i = 0; i < CPU_SETSIZE; i++)
		if (CPU_ISSET(i, &allowed))
			last = i;
	return last;
}

int set_affinity(pid_t pid, int cpu)
{
	load_allowed();
	cpu_set_t set;
	if (cpu < 0) {
		set = allowed;
	} else {
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
	}
	return sched_setaffinity(pid, sizeof(set), &set) < 0 ? -errno : 0;
}

int set_affinity_all_threads(pid_t pid, int cpu)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return set_affinity(pid, cpu);
	int ret = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		int r = set_affinity((pid_t)atoi(de->d_name), cpu);
		if (r < 0)
			ret = r;
	}
	closedir(d);
	return ret;
}

/* ---- the daemon --------------------------------------------------------- */

static int try_connect(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
	close(fd);
	return r;
}

int bdaemon_start(struct bdaemon *d, const struct bench_opts *o, bool populate)
{
	return bdaemon_start_cfg(d, o, populate, NULL);
}

int bdaemon_start_cfg(struct bdaemon *d, const struct bench_opts *o, bool populate,
		      const char *extra_config)
{
	const char *bin = o->daemon;
	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "/tmp/dmb-bench-XXXXXX");
	if (!mkdtemp(d->dir))
		return -errno;
	snprintf(d->sock, sizeof(d->sock), "%s/sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
	snprintf(d->cfg, sizeof(d->cfg), "%s/dmabroker.conf", d->dir);
	FILE *f = fopen(d->cfg, "w");
	if (!f)
		return -errno;
	/* Warning level: the hot path must not pay for debug lines. The limits
	 * leave room for 1M mappings and 256 clients; they bound a uid over all
	 * its sessions, and every client of a benchmark is this uid, so its
	 * contexts and fds are granted for all of them. */
	fprintf(f, "[daemon]\nsocket = %s\nsocket_mode = 0600\nbackend = sim\nlog_level = warning\n"
		   "sim_populate = %s\n[limits]\nmappings_per_context = 4194304\nsessions = 4096\n"
		   "contexts_per_client = 65536\nfds = 0\n",
		d->sock, populate ? "yes" : "no");
	if (extra_config)
		fputs(extra_config, f);
	fclose(f);

	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (null >= 0)
			dup2(null, 0);
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_PID");
		unsetenv("NOTIFY_SOCKET");
		/* Unpinned unless a benchmark pins it. */
		set_affinity(0, -1);
		if (o->daemon_prefix || o->daemon_args) {
			char script[1024];
			snprintf(script, sizeof(script), "exec %s \"$@\" %s",
				 o->daemon_prefix ? o->daemon_prefix : "",
				 o->daemon_args ? o->daemon_args : "");
			execl("/bin/sh", "sh", "-c", script, "sh", bin, "--config", d->cfg, (char *)NULL);
		}
		execl(bin, bin, "--config", d->cfg, (char *)NULL);
		_exit(127);
	}
	/* 30 s: valgrind takes its time to start. */
	for (int i = 0; i < 3000; i++) {
		if (try_connect(d->sock) == 0)
			return 0;
		int st;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			fprintf(stderr, "dmb-bench: %s exited during start-up (status 0x%x); log: %s\n",
				bin, st, d->log);
			d->pid = 0;
			return -ECHILD;
		}
		sleep_ms(10);
	}
	fprintf(stderr, "dmb-bench: %s did not accept connections within 30 s\n", bin);
	bdaemon_stop(d);
	return -ETIMEDOUT;
}

int bdaemon_stop(struct bdaemon *d)
{
	if (d->pid <= 0)
		return 0;
	kill(d->pid, SIGTERM);
	int st = 0;
	pid_t r = 0;
	for (int i = 0; i < 2000 && r == 0; i++) {
		r = waitpid(d->pid, &st, WNOHANG);
		if (r == 0)
			sleep_ms(10);
	}
	if (r == 0) {
		kill(d->pid, SIGKILL);
		waitpid(d->pid, &st, 0);
	}
	d->pid = 0;
	int ret = 0;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		check_fail("dmabrokerd ended badly (status 0x%x); its log is %s", st, d->log);
		return -EIO;
	}
	unlink(d->cfg);
	unlink(d->log);
	unlink(d->sock);
	rmdir(d->dir);
	return ret;
}

long proc_status_kb(pid_t pid, const char *key)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t kl = strlen(key);
	long kb = -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, kl) == 0 && line[kl] == ':' &&
		    sscanf(line + kl + 1, " %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

long proc_rss_kb(pid_t pid)
{
	return proc_status_kb(pid, "VmRSS");
}

uint64_t proc_cpu_ticks(pid_t pid)
{
	uint64_t u, st;
	return proc_user_sys_ticks(pid, &u, &st) ? u + st : 0;
}

bool proc_user_sys_ticks(pid_t pid, uint64_t *user, uint64_t *sys)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	/* Fields after the command (which may hold spaces): state is field 3,
	 * utime 14, stime 15. */
	char *p = strrchr(buf, ')');
	if (!p)
		return false;
	unsigned long long ut = 0, st = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return false;
	*user = ut;
	*sys = st;
	return true;
}

uint64_t proc_ctxt_switches(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	unsigned long long v, total = 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "voluntary_ctxt_switches: %llu", &v) == 1 ||
		    sscanf(line, "nonvoluntary_ctxt_switches: %llu", &v) == 1)
			total += v;
	fclose(f);
	return total;
}

uint64_t proc_cpu_ns(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	unsigned long long ns = 0;
	if (fscanf(f, "%llu", &ns) != 1)
		ns = 0;
	fclose(f);
	return ns;
}

uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- guest memory ------------------------------------------------------- */

int bench_memfd(uint64_t size, unsigned seed, uint64_t tag_pages)
{
	int fd = memfd_create("dmb-bench", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0)
		goto fail;
	for (uint64_t p = 0; p < tag_pages && p * PG < size; p++) {
		uint64_t v = page_tag(seed, p);
		if (pwrite(fd, &v, sizeof(v), (off_t)(p * PG)) != (ssize_t)sizeof(v))
			goto fail;
	}
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		goto fail;
	return fd;
fail:;
	int r = -errno;
	close(fd);
	return r ? r : -EIO;
}

/* ---- perf --------------------------------------------------------------- */

pid_t perf_start(const struct bench_opts *o, const char *name, const pid_t *pids, size_t n)
{
	if (!o->perf_dir || n == 0)
		return 0;
	char out[512], list[256] = "";
	snprintf(out, sizeof(out), "%s/%s.data", o->perf_dir, name);
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(list);
		snprintf(list + len, sizeof(list) - len, "%s%d", i ? "," : "", (int)pids[i]);
	}
	pid_t p = fork();
	if (p < 0)
		return 0;
	if (p == 0) {
		int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2);
		}
		execlp("perf", "perf", "record", "-q", "-g", "-F", "999", "-o", out, "-p", list,
		       (char *)NULL);
		_exit(127);
	}
	sleep_ms(300); /* perf attaches */
	return p;
}

pid_t syscount_start(pid_t pid, char *file, size_t cap)
{
	char target[32];
	snprintf(file, cap, "/tmp/dmb-bench-syscount-%d-%d.csv", (int)getpid(), (int)pid);
	snprintf(target, sizeof(target), "%d", (int)pid);
	pid_t p = fork();
	if (p < 0)
		return 0;
	if (p == 0) {
		int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2);
		}
		execlp("perf", "perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o", file,
		       "-p", target, (char *)NULL);
		_exit(127);
	}
	sleep_ms(300); /* perf attaches */
	return p;
}

long syscount_stop(pid_t perf, const char *file)
{
	if (perf <= 0)
		return -1;
	perf_stop(perf);
	FILE *f = fopen(file, "r");
	if (!f)
		return -1;
	char line[256];
	long n = -1;
	while (fgets(line, sizeof(line), f)) {
		long v;
		if (strstr(line, "raw_syscalls:sys_enter") && sscanf(line, "%ld,", &v) == 1)
			n = v;
	}
	fclose(f);
	unlink(file);
	return n;
}

void perf_stop(pid_t perf)
{
	if (perf <= 0)
		return;
	kill(perf, SIGINT);
	int st;
	for (int i = 0; i < 3000; i++) {
		if (waitpid(perf, &st, WNOHANG) == perf)
			return;
		sleep_ms(10);
	}
	kill(perf, SIGKILL);
	waitpid(perf, &st, 0);
}

/* ---- daemon logs and summaries (the restart and handoff benchmarks) ---- */

double bench_wall_ms_of_day(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	localtime_r(&ts.tv_sec, &tm);
	return (tm.tm_hour * 3600.0 + tm.tm_min * 60.0 + tm.tm_sec) * 1000.0 + ts.tv_nsec / 1e6;
}

bool bench_log_line_ms(const char *line, double *ms)
{
	int h, m, s, frac;
	if (sscanf(line, "%2d:%2d:%2d.%3d ", &h, &m, &s, &frac) != 4)
		return false;
	*ms = (h * 3600.0 + m * 60.0 + s) * 1000.0 + frac;
	return true;
}

long bench_file_size(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fclose(f);
	return n < 0 ? 0 : n;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double bench_median(double *v, size_t n)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bench_count_name(char *buf, size_t cap, uint64_t n)
{
	if (n >= 1000 && n % 1000 == 0)
		snprintf(buf, cap, "%lluK", (unsigned long long)(n / 1000));
	else
		snprintf(buf, cap, "%llu", (unsigned long long)n);
}
