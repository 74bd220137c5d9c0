/* dmb-bench: the benchmark suite (bench/run is the one command to use).
 *
 *   dmb-bench [--quick] [--smoke] [--json] [--only LIST] [--perf DIR]
 *             [--daemon PATH] [--daemon-prefix CMD] [--daemon-args ARGS]
 *             [--verbose]
 *
 * Prints a table (stdout; with --json the table goes to stderr and stdout
 * gets JSON). Exit status: 0, or 1 when a correctness check failed (a
 * mapping that did not move bytes, a broker error, a daemon that did not exit
 * cleanly). Timing never fails the run: targets are reported PASS/MISS. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#ifndef DMB_BENCH_DAEMON
#define DMB_BENCH_DAEMON "dmabrokerd"
#endif
#ifndef DMB_BENCH_BUILDTYPE
#define DMB_BENCH_BUILDTYPE "unknown"
#endif

static const struct {
	const char *name;
	unsigned bit;
	void (*fn)(const struct bench_opts *o);
} benches[] = {
	{ "small", BENCH_SMALL, bench_small },
	{ "batch", BENCH_BATCH, bench_batch },
	{ "scale", BENCH_SCALE, bench_scale },
	{ "hol", BENCH_HOL, bench_hol },
	{ "clients", BENCH_CLIENTS, bench_clients },
	{ "revoke", BENCH_REVOKE, bench_revoke },
	{ "restart", BENCH_RESTART, bench_restart },
	{ "handoff", BENCH_HANDOFF, bench_handoff },
	{ "convert", BENCH_CONVERT, bench_convert },
};
#define N_BENCHES (sizeof(benches) / sizeof(benches[0]))

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: dmb-bench [OPTIONS]\n"
		"Measures dmabrokerd (sim backend) against the physical floor in the same run.\n\n"
		"  --quick         smaller counts and windows (well under a minute)\n"
		"  --smoke         tiny sizes; correctness checks only (exit 1 if one fails)\n"
		"  --json          JSON results on stdout (the table goes to stderr)\n"
		"  --only LIST     comma-separated: small,batch,scale,hol,clients,revoke,restart,\n"
		"                  handoff,convert\n"
		"  --perf DIR      record the daemon with perf during the main phases\n"
		"  --daemon PATH   the dmabrokerd binary (default: the build's; $DMABROKERD)\n"
		"  --daemon-prefix CMD  run the daemon under CMD, e.g. 'valgrind --tool=callgrind'\n"
		"  --daemon-args ARGS   extra daemon arguments, e.g. '--seccomp=off' (valgrind)\n"
		"  --verbose       progress on stderr\n"
		"  -h, --help      this text\n");
}

static int parse_only(const char *list, unsigned *mask)
{
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", list);
	*mask = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		size_t i;
		for (i = 0; i < N_BENCHES; i++)
			if (!strcmp(t, benches[i].name))
				break;
		if (i == N_BENCHES) {
			fprintf(stderr, "dmb-bench: unknown benchmark '%s'\n", t);
			return -EINVAL;
		}
		*mask |= benches[i].bit;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "quick", no_argument, NULL, 'q' },
		{ "smoke", no_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "only", required_argument, NULL, 'o' },
		{ "perf", required_argument, NULL, 'p' },
		{ "daemon", required_argument, NULL, 'd' },
		{ "daemon-prefix", required_argument, NULL, 'P' },
		{ "daemon-args", required_argument, NULL, 'A' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bench_opts o = { 0 };
	o.daemon = getenv("DMABROKERD") ? getenv("DMABROKERD") : DMB_BENCH_DAEMON;
	int c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'q': o.quick = true; break;
		case 's': o.smoke = true; o.quick = true; break;
		case 'j': o.json = true; break;
		case 'o':
			if (parse_only(optarg, &o.only) < 0)
				return 2;
			break;
		case 'p': o.perf_dir = optarg; break;
		case 'd': o.daemon = optarg; break;
		case 'P': o.daemon_prefix = optarg; break;
		case 'A': o.daemon_args = optarg; break;
		case 'v': o.verbose = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	bench_verbose = o.verbose;
	if (access(o.daemon, X_OK) < 0) {
		fprintf(stderr, "dmb-bench: cannot run the daemon %s: %s\n", o.daemon, strerror(errno));
		return 2;
	}
	if (o.perf_dir && access(o.perf_dir, W_OK) < 0) {
		fprintf(stderr, "dmb-bench: --perf %s: %s\n", o.perf_dir, strerror(errno));
		return 2;
	}

	struct utsname u;
	uname(&u);
	char host[64] = "";
	gethostname(host, sizeof(host) - 1);
	time_t now = time(NULL);
	char date[64];
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
	results_set_info("run", "%s, mode %s, sim backend, dmabrokerd %s (%s build)", date,
			 o.smoke ? "smoke" : o.quick ? "quick" : "full", o.daemon, DMB_BENCH_BUILDTYPE);
	results_set_info("machine", "%s, Linux %s %s, %d CPUs allowed, pinned runs on CPU %d", host,
			 u.release, u.machine, cpus_allowed(), pin_cpu());

	char load0[64] = "?";
	FILE *lf = fopen("/proc/loadavg", "r");
	if (lf) {
		if (!fgets(load0, sizeof(load0), lf))
			snprintf(load0, sizeof(load0), "?");
		load0[strcspn(load0, "\n")] = '\0';
		fclose(lf);
	}
	uint64_t t0 = now_ns();
	for (size_t i = 0; i < N_BENCHES; i++) {
		if (o.only && !(o.only & benches[i].bit))
			continue;
		uint64_t a = now_ns();
		if (o.verbose)
			fprintf(stderr, "dmb-bench: %s ...\n", benches[i].name);
		benches[i].fn(&o);
		if (o.verbose)
			fprintf(stderr, "dmb-bench: %s took %.1f s\n", benches[i].name,
				(double)(now_ns() - a) / 1e9);
	}
	char load1[64] = "?";
	lf = fopen("/proc/loadavg", "r");
	if (lf) {
		if (!fgets(load1, sizeof(load1), lf))
			snprintf(load1, sizeof(load1), "?");
		load1[strcspn(load1, "\n")] = '\0';
		fclose(lf);
	}
	results_set_info("duration", "%.1f s; loadavg before: %s, after: %s (other tenants add noise)",
			 (double)(now_ns() - t0) / 1e9, load0, load1);

	results_print_table(o.json ? stderr : stdout, &o);
	if (o.json)
		results_print_json(stdout, &o);
	return check_failures() ? 1 : 0;
}
