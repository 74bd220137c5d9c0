/* The daemon's sandbox (daemon/policy/sandbox.c), proven on the real binary:
 *   - after start-up it runs under a seccomp filter, with no_new_privs and
 *     no capability but CAP_IPC_LOCK, and still serves (map + sim DMA);
 *   - a forbidden syscall kills it by SIGSYS: a syscall not on the list
 *     (setns), an argument outside its check (socket(AF_INET)), an ioctl
 *     request outside the backend's list (TIOCSTI);
 *   - with --seccomp=log the same call is only logged and the daemon goes
 *     on serving; --seccomp=off installs no filter; a bad value is refused;
 *   - every ioctl request a kernel backend issues is on its allow-list
 *     (read from the sources, so a new backend ioctl cannot reach the VM
 *     tier, or production, unlisted).
 *
 * The forbidden call is made by a test hook: with
 * DMABROKERD_TEST_FORBIDDEN_SYSCALL=<kind> in its environment the daemon
 * makes that call on SIGUSR2. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096ull
#define CAP_IPC_LOCK_BIT (1ull << 14)
#define CAP_SETPCAP_BIT (1ull << 8)

/* "Field:\t<value>" of /proc/<pid>/status as a number (base 0 for
 * decimal fields, 16 for the capability masks). */
static unsigned long long proc_status(pid_t pid, const char *field, int base)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = strlen(field);
	unsigned long long v = 0;
	bool found = false;
	while (!found && fgets(line, sizeof(line), f))
		if (strncmp(line, field, n) == 0 && line[n] == ':') {
			v = strtoull(line + n + 1, NULL, base);
			found = true;
		}
	fclose(f);
	if (!found)
		fail_msg("no %s in %s", field, path);
	return v;
}

/* One region, one mapping, bytes moved both ways by the sim DMA engine:
 * the daemon's steady state, under whatever filter it runs. */
static void serve_one_client(const struct daemon *d)
{
	struct dmb_client *c = client_connect(d, "sandboxed");
	uint64_t ctx;
	assert_ok(c, dmb_context_create(c, "sb", &ctx));
	int fd = make_memfd(16 * PG, 1);
	struct dmb_region_info ri;
	assert_ok(c, dmb_region_register(c, ctx, fd, 0, &ri));
	struct dmb_map_entry e = { ri.region, 0, 0x100000, 16 * PG, DMB_READ | DMB_WRITE };
	assert_ok(c, dmb_map(c, ctx, &e));
	check_dma(c, ctx, fd, 0, 0x100000, 8 * PG, 3);
	uint64_t bytes;
	assert_ok(c, dmb_unmap_all(c, ctx, &bytes));
	assert_int_equal(bytes, 16 * PG);
	dmb_close(c);
	close(fd);
	assert_true(daemon_wait_idle(d));
}

static bool file_has(const char *path, const char *needle)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	char line[4096];
	bool hit = false;
	while (!hit && fgets(line, sizeof(line), f))
		hit = strstr(line, needle) != NULL;
	fclose(f);
	return hit;
}

/* The socket accepts connections from listen() on, before the sandbox is
 * in place: wait for the line the daemon logs after READY=1. */
static void wait_ready(const struct daemon *d)
{
	for (int i = 0; i < 1000 && !file_has(d->log, " ready (pid "); i++)
		usleep(10000);
	assert_true(file_has(d->log, " ready (pid "));
}

static void test_filter_and_privileges(void **state)
{
	struct daemon d;
	daemon_start(&d, NULL);
	wait_ready(&d);
	assert_int_equal(proc_status(d.pid, "Seccomp", 10), 2); /* SECCOMP_MODE_FILTER */
	assert_int_equal(proc_status(d.pid, "NoNewPrivs", 10), 1);
	assert_int_equal(proc_status(d.pid, "CapEff", 16) & ~CAP_IPC_LOCK_BIT, 0);
	assert_int_equal(proc_status(d.pid, "CapPrm", 16) & ~CAP_IPC_LOCK_BIT, 0);
	assert_int_equal(proc_status(d.pid, "CapInh", 16), 0);
	assert_int_equal(proc_status(d.pid, "CapAmb", 16), 0);
	/* CAP_IPC_LOCK stays when the daemon started with it (see sandbox.c). */
	unsigned long long mine = proc_status(getpid(), "CapEff", 16);
	assert_int_equal(proc_status(d.pid, "CapEff", 16), mine & CAP_IPC_LOCK_BIT);
	/* The bounding set can only shrink with CAP_SETPCAP. */
	if (mine & CAP_SETPCAP_BIT)
		assert_int_equal(proc_status(d.pid, "CapBnd", 16) & ~CAP_IPC_LOCK_BIT, 0);
	serve_one_client(&d);
	daemon_stop(&d);
}

/* Starts a daemon whose SIGUSR2 makes the forbidden call `kind`. */
static void start_hooked(struct daemon *d, const char *kind, const char *mode)
{
	const char *args[] = { mode, NULL };
	setenv("DMABROKERD_TEST_FORBIDDEN_SYSCALL", kind, 1);
	daemon_start_args(d, NULL, mode ? args : NULL);
	unsetenv("DMABROKERD_TEST_FORBIDDEN_SYSCALL");
	wait_ready(d);
	assert_true(file_has(d->log, "TEST HOOK"));
}

static void killed_by(const char *kind)
{
	struct daemon d;
	start_hooked(&d, kind, NULL);
	serve_one_client(&d); /* allowed work first */
	assert_int_equal(kill(d.pid, SIGUSR2), 0);
	int st = 0;
	assert_int_equal(daemon_wait_exit(&d, &st), 0);
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGSYS)
		fail_msg("forbidden %s: the daemon ended with %s %d, expected signal %d (SIGSYS)", kind,
			 WIFSIGNALED(st) ? "signal" : "exit status",
			 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), SIGSYS);
}

static void test_syscall_not_listed_kills(void **state)
{
	killed_by("setns");
}

static void test_socket_family_kills(void **state)
{
	killed_by("socket");
}

static void test_ioctl_request_kills(void **state)
{
	killed_by("ioctl");
}

static void survives(const char *kind, const char *mode)
{
	struct daemon d;
	start_hooked(&d, kind, mode);
	assert_int_equal(kill(d.pid, SIGUSR2), 0);
	/* The handler has run once the daemon answers again. */
	serve_one_client(&d);
	assert_int_equal(kill(d.pid, SIGUSR2), 0);
	serve_one_client(&d);
	daemon_stop(&d); /* a clean exit: status 0, no sanitizer report */
}

static void test_log_mode_survives(void **state)
{
	survives("setns", "--seccomp=log");
	survives("socket", "--seccomp=log");
	survives("ioctl", "--seccomp=log");
}

static void test_off_mode(void **state)
{
	struct daemon d;
	start_hooked(&d, "setns", "--seccomp=off");
	assert_int_equal(proc_status(d.pid, "Seccomp", 10), 0);
	assert_int_equal(proc_status(d.pid, "NoNewPrivs", 10), 1);
	assert_int_equal(proc_status(d.pid, "CapEff", 16) & ~CAP_IPC_LOCK_BIT, 0);
	daemon_stop(&d);
	survives("socket", "--seccomp=off");
}

static void test_bad_mode_refused(void **state)
{
	const char *bin = getenv("DMABROKERD");
	assert_non_null(bin);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		execl(bin, bin, "--seccomp=maybe", "--socket=/nonexistent/sock", (char *)NULL);
		_exit(127);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
}

/* ---- every backend ioctl is on the allow-list ---- */

/* The source tree: meson runs tests in the build root and compiles with
 * paths relative to it; when run by hand, the build root is two levels
 * above $DMABROKERD. */
static char *read_source(const char *rel)
{
	char here[512], path[1024];
	snprintf(here, sizeof(here), "%s", __FILE__);
	char *cut = strstr(here, "tests/integration/test_sandbox.c");
	assert_non_null(cut);
	*cut = '\0';
	snprintf(path, sizeof(path), "%s%s", here, rel);
	FILE *f = fopen(path, "r");
	if (!f && here[0] != '/') {
		const char *bin = getenv("DMABROKERD");
		char root[512];
		snprintf(root, sizeof(root), "%s", bin ? bin : "");
		for (int i = 0; i < 2; i++) {
			char *slash = strrchr(root, '/');
			if (slash)
				*slash = '\0';
		}
		snprintf(path, sizeof(path), "%s/%s%s", root, here, rel);
		f = fopen(path, "r");
	}
	if (!f)
		fail_msg("cannot read %s: %s", path, strerror(errno));
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		fwrite(chunk, 1, n, m);
	fclose(f);
	fclose(m);
	return buf;
}

static bool is_ident(char ch)
{
	return ch == '_' || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
	       (ch >= '0' && ch <= '9');
}

/* Whether `name` is a whole word inside the C array `table` of sandbox.c. */
static bool in_table(const char *sandbox, const char *table, const char *name)
{
	char head[128];
	snprintf(head, sizeof(head), "%s[] = {", table);
	const char *start = strstr(sandbox, head);
	assert_non_null(start);
	const char *end = strstr(start, "};");
	assert_non_null(end);
	size_t n = strlen(name);
	for (const char *p = start; (p = strstr(p, name)) && p < end; p += n)
		if (!is_ident(p[-1]) && !is_ident(p[n]))
			return true;
	return false;
}

/* Checks the request (second argument) of every call to `fn` in `src`. */
static unsigned check_calls(const char *file, const char *src, const char *fn,
			    const char *sandbox, const char *table)
{
	unsigned checked = 0;
	size_t fl = strlen(fn);
	for (const char *p = src; (p = strstr(p, fn)); p += fl) {
		if (is_ident(p[-1]) || p[fl] != '(')
			continue;
		const char *comma = strchr(p, ',');
		const char *close = strchr(p, ')');
		if (!comma || (close && close < comma))
			continue; /* a prototype or a comment, not a call */
		const char *q = comma + 1;
		while (*q == ' ' || *q == '\t' || *q == '\n')
			q++;
		char name[96];
		size_t k = 0;
		while (is_ident(q[k]) && k < sizeof(name) - 1) {
			name[k] = q[k];
			k++;
		}
		name[k] = '\0';
		/* a parameter forwarded by a wrapper (probe_cmd's req) is checked
		 * at the wrapper's callers */
		if (k == 0 || (name[0] >= 'a' && name[0] <= 'z'))
			continue;
		if (!in_table(sandbox, table, name))
			fail_msg("%s issues %s, which is not in %s of daemon/policy/sandbox.c: the filter "
				 "would kill the daemon",
				 file, name, table);
		checked++;
	}
	return checked;
}

static void test_backend_ioctls_allowed(void **state)
{
	char *sandbox = read_source("daemon/policy/sandbox.c");
	static const struct {
		const char *file, *table;
	} srcs[] = {
		{ "daemon/backend/vfio_type1.c", "type1_ioctls" },
		{ "daemon/backend/ksys.c", "type1_ioctls" },
		{ "daemon/backend/iommufd.c", "iommufd_ioctls" },
		{ "daemon/backend/ksys.c", "iommufd_ioctls" },
		{ "daemon/backend/preserve/luo.c", "luo_ioctls" },
	};
	unsigned total = 0;
	for (size_t i = 0; i < sizeof(srcs) / sizeof(srcs[0]); i++) {
		char *src = read_source(srcs[i].file);
		total += check_calls(srcs[i].file, src, "ksys_ioctl", sandbox, srcs[i].table);
		total += check_calls(srcs[i].file, src, "probe_cmd", sandbox, srcs[i].table);
		free(src);
	}
	/* the parser found the calls (a rename would otherwise pass silently) */
	assert_true(total >= 30);
	free(sandbox);
}

int main(void)
{
	/* A SIGSYS death would dump core into the working directory. */
	struct rlimit no_core = { 0, 0 };
	setrlimit(RLIMIT_CORE, &no_core);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_filter_and_privileges),
		cmocka_unit_test(test_syscall_not_listed_kills),
		cmocka_unit_test(test_socket_family_kills),
		cmocka_unit_test(test_ioctl_request_kills),
		cmocka_unit_test(test_log_mode_survives),
		cmocka_unit_test(test_off_mode),
		cmocka_unit_test(test_bad_mode_refused),
		cmocka_unit_test(test_backend_ioctls_allowed),
	};
	return cmocka_run_group_tests_name("sandbox", tests, NULL, NULL);
}
