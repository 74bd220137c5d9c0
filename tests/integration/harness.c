#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct daemon g_daemon;
static unsigned start_nofile; /* daemon_start_nofile's, for the child */

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void dump_log(const struct daemon *d)
{
	FILE *f = fopen(d->log, "r");
	if (!f)
		return;
	char line[1024];
	fprintf(stderr, "---- daemon log %s ----\n", d->log);
	while (fgets(line, sizeof(line), f))
		fputs(line, stderr);
	fprintf(stderr, "---- end of daemon log ----\n");
	fclose(f);
}

void daemon_start(struct daemon *d, const char *extra_config)
{
	daemon_start_args(d, extra_config, NULL);
}

void daemon_start_nofile(struct daemon *d, const char *extra_config, unsigned nofile)
{
	start_nofile = nofile;
	daemon_start_args(d, extra_config, NULL);
	start_nofile = 0;
}

unsigned long long daemon_cpu_ticks(const struct daemon *d)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)d->pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* After "(comm)": state is field 3, utime 14 and stime 15. */
	char *p = strrchr(buf, ')');
	assert_non_null(p);
	unsigned long long ut = 0, st = 0;
	assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st),
			 2);
	return ut + st;
}

int daemon_log_count(const struct daemon *d, const char *needle)
{
	FILE *f = fopen(d->log, "r");
	if (!f)
		return 0;
	char line[4096];
	int n = 0;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, needle) != NULL;
	fclose(f);
	return n;
}

void daemon_start_args(struct daemon *d, const char *extra_config, const char *const *args)
{
	const char *bin = getenv("DMABROKERD");
	if (!bin)
		fail_msg("DMABROKERD is not set (run through meson test)");
	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "/tmp/dmb-test-XXXXXX");
	if (!mkdtemp(d->dir))
		fail_msg("mkdtemp: %s", strerror(errno));
	snprintf(d->sock, sizeof(d->sock), "%s/sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
	char cfg[160];
	snprintf(cfg, sizeof(cfg), "%s/dmabroker.conf", d->dir);
	FILE *f = fopen(cfg, "w");
	assert_non_null(f);
	fprintf(f, "[daemon]\nsocket = %s\nsocket_mode = 0666\nbackend = sim\nlog_level = debug\n%s\n",
		d->sock, extra_config ? extra_config : "");
	fclose(f);

	d->pid = fork();
	assert_true(d->pid >= 0);
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
		}
		int null = open("/dev/null", O_RDONLY);
		if (null >= 0)
			dup2(null, 0);
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_PID");
		unsetenv("NOTIFY_SOCKET");
		unsetenv("INVOCATION_ID"); /* --bus=auto: no system bus in tests */
		if (start_nofile) {
			struct rlimit rl = { start_nofile, start_nofile };
			if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
				_exit(126);
		}
		const char *argv[16] = { bin, "--config", cfg };
		size_t n = 3;
		for (size_t i = 0; args && args[i] && n < DMB_HARNESS_MAX_ARGS + 3; i++)
			argv[n++] = args[i];
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	/* Ready when a connection succeeds. */
	for (int i = 0; i < 1000; i++) {
		struct dmb_client *c;
		if (dmb_connect_raw(d->sock, &c) == 0) {
			dmb_close(c);
			return;
		}
		int st;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			dump_log(d);
			fail_msg("dmabrokerd exited during start-up (status 0x%x)", st);
		}
		sleep_ms(10);
	}
	dump_log(d);
	fail_msg("dmabrokerd did not accept connections within 10 s");
}

static bool log_has(const struct daemon *d, const char *needle)
{
	FILE *f = fopen(d->log, "r");
	if (!f)
		return false;
	char line[4096];
	bool hit = false;
	while (!hit && fgets(line, sizeof(line), f))
		hit = strstr(line, needle) != NULL;
	fclose(f);
	return hit;
}

void daemon_stop(struct daemon *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGTERM);
	int st = 0;
	pid_t r = 0;
	for (int i = 0; i < 1000 && r == 0; i++) {
		r = waitpid(d->pid, &st, WNOHANG);
		if (r == 0)
			sleep_ms(10);
	}
	if (r == 0) {
		kill(d->pid, SIGKILL);
		waitpid(d->pid, &st, 0);
		dump_log(d);
		fail_msg("dmabrokerd did not stop within 10 s of SIGTERM");
	}
	d->pid = 0;
	bool sanitizer = log_has(d, "Sanitizer") || log_has(d, "runtime error:");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || sanitizer) {
		dump_log(d);
		fail_msg("dmabrokerd ended badly: %s %d%s",
			 WIFSIGNALED(st) ? "signal" : "exit status",
			 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
			 sanitizer ? " (sanitizer report in its log)" : "");
	}
	char path[200];
	snprintf(path, sizeof(path), "%s/dmabroker.conf", d->dir);
	unlink(path);
	unlink(d->log);
	unlink(d->sock);
	rmdir(d->dir);
}

int daemon_wait_exit(struct daemon *d, int *status)
{
	int st = 0;
	pid_t r = 0;
	for (int i = 0; i < 1000 && r == 0; i++) {
		r = waitpid(d->pid, &st, WNOHANG);
		if (r == 0)
			sleep_ms(10);
	}
	if (r != d->pid) {
		kill(d->pid, SIGKILL);
		waitpid(d->pid, &st, 0);
		d->pid = 0;
		dump_log(d);
		return -ETIMEDOUT;
	}
	d->pid = 0;
	*status = st;
	char path[200];
	snprintf(path, sizeof(path), "%s/dmabroker.conf", d->dir);
	unlink(path);
	unlink(d->log);
	unlink(d->sock);
	rmdir(d->dir);
	return 0;
}

int daemon_fd_count(const struct daemon *d)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)d->pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(dir)))
		if (de->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

int daemon_quiet_fd_count(const struct daemon *d, unsigned own)
{
	/* Sessions that clients closed a moment ago may not be reaped yet:
	 * count only when the daemon serves nobody but this probe. */
	for (int i = 0; i < 500; i++) {
		struct dmb_client *c;
		struct dmb_status st;
		if (dmb_connect(d->sock, "fd-probe", &c) == 0) {
			int ok = dmb_status(c, &st) == 0 && st.sessions == own + 1;
			int n = daemon_fd_count(d) - 1;
			dmb_close(c);
			if (ok)
				return n;
		}
		sleep_ms(10);
	}
	fail_msg("the daemon never became quiet (sessions other than the test's %u stay open)", own);
	return -1;
}

int daemon_wait_fd_count(const struct daemon *d, int want, unsigned own)
{
	int n = -1;
	for (int i = 0; i < 200; i++) {
		n = daemon_quiet_fd_count(d, own);
		if (n == want)
			break;
		sleep_ms(10);
	}
	return n;
}

struct dmb_client *client_connect(const struct daemon *d, const char *name)
{
	struct dmb_client *c = NULL;
	int r = dmb_connect(d->sock, name, &c);
	if (r < 0)
		fail_msg("connect to %s: %s", d->sock, strerror(-r));
	return c;
}

int client_run_as(const struct daemon *d, uid_t uid, gid_t gid, const char *name,
		  int (*fn)(struct dmb_client *c))
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
			_exit(250);
		struct dmb_client *c;
		if (dmb_connect(d->sock, name, &c) < 0)
			_exit(251);
		int r = fn(c);
		dmb_close(c);
		_exit(r);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

struct dmb_stats daemon_totals(const struct daemon *d)
{
	struct dmb_client *c = client_connect(d, "totals");
	struct dmb_status st;
	int r = dmb_status(c, &st);
	if (r < 0)
		fail_msg("status: %s", dmb_last_error(c)->message);
	dmb_close(c);
	return st.totals;
}

bool daemon_wait_idle(const struct daemon *d)
{
	for (int i = 0; i < 500; i++) {
		struct dmb_stats t = daemon_totals(d);
		if (t.contexts == 0 && t.pinned_bytes == 0 && t.mappings == 0 && t.regions == 0)
			return true;
		sleep_ms(10);
	}
	return false;
}

void fill_pattern(uint8_t *buf, size_t len, unsigned seed)
{
	uint32_t x = seed * 2654435761u + 12345u;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (uint8_t)x;
	}
}

int make_memfd(size_t size, unsigned seed)
{
	int fd = memfd_create("guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	(void)seed;
	return fd;
}

void _assert_ok(struct dmb_client *c, int r, const char *file, int line)
{
	if (r != 0) {
		const struct dmb_error *e = dmb_last_error(c);
		fail_msg("%s:%d: expected success, got %d (%s): %s", file, line, r,
			 dmb_error_code_name(e->code), e->message);
	}
}

void _assert_code(struct dmb_client *c, int r, int code, const char *file, int line)
{
	const struct dmb_error *e = dmb_last_error(c);
	if (r >= 0 || e->code != code)
		fail_msg("%s:%d: expected error %s, got r=%d code %s: %s", file, line,
			 dmb_error_code_name(code), r, dmb_error_code_name(e->code), e->message);
	if (e->message[0] == '\0')
		fail_msg("%s:%d: error %s without a sentence", file, line, dmb_error_code_name(code));
}

void fd_read(int fd, uint64_t off, void *buf, size_t len)
{
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
}

void fd_write(int fd, uint64_t off, const void *buf, size_t len)
{
	assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
}

void check_dma(struct dmb_client *c, uint64_t ctx, int memfd, uint64_t file_off, uint64_t iova,
	       size_t len, unsigned seed)
{
	uint8_t *want = malloc(len), *got = malloc(len);
	assert_non_null(want);
	assert_non_null(got);

	/* memory -> device */
	fill_pattern(want, len, seed);
	fd_write(memfd, file_off, want, len);
	assert_ok(c, dmb_sim_dma_read(c, ctx, iova, got, len));
	assert_memory_equal(got, want, len);

	/* device -> memory */
	fill_pattern(want, len, seed + 7919);
	assert_ok(c, dmb_sim_dma_write(c, ctx, iova, want, len));
	fd_read(memfd, file_off, got, len);
	assert_memory_equal(got, want, len);
	free(want);
	free(got);
}

void check_dma_faults(struct dmb_client *c, uint64_t ctx, int memfd, uint64_t file_off,
		      uint64_t iova, size_t len)
{
	uint8_t *before = malloc(len), *buf = malloc(len), *after = malloc(len);
	assert_non_null(before);
	assert_non_null(buf);
	assert_non_null(after);
	if (file_off != UINT64_MAX)
		fd_read(memfd, file_off, before, len);
	/* An IOMMU fault: the call fails with EFAULT, whatever code the
	 * backend chose, and moves nothing. */
	int r = dmb_sim_dma_read(c, ctx, iova, buf, len);
	if (r >= 0)
		fail_msg("DMA read at iova 0x%llx succeeded; expected an IOMMU fault",
			 (unsigned long long)iova);
	assert_int_equal(dmb_last_error(c)->sys_errno, EFAULT);
	fill_pattern(buf, len, 4242);
	r = dmb_sim_dma_write(c, ctx, iova, buf, len);
	assert_true(r < 0);
	assert_int_equal(dmb_last_error(c)->sys_errno, EFAULT);
	if (file_off != UINT64_MAX) {
		fd_read(memfd, file_off, after, len);
		assert_memory_equal(before, after, len);
	}
	free(before);
	free(buf);
	free(after);
}

int group_start_daemon(void **state)
{
	daemon_start(&g_daemon, getenv("DMB_TEST_EXTRA_CONFIG"));
	return 0;
}

int group_stop_daemon(void **state)
{
	daemon_stop(&g_daemon);
	return 0;
}

void raw_send_map(struct dmb_client *c, uint64_t id, uint64_t ctx, uint64_t region,
		  uint64_t iova, uint64_t len)
{
	Dmb__MapEntry me = DMB__MAP_ENTRY__INIT;
	me.region_id = region;
	me.offset = 0;
	me.iova = iova;
	me.length = len;
	me.prot = DMB_READ | DMB_WRITE;
	Dmb__MapEntry *mep = &me;
	Dmb__MapBatch mb = DMB__MAP_BATCH__INIT;
	mb.context_id = ctx;
	mb.n_entries = 1;
	mb.entries = &mep;
	Dmb__Request req = DMB__REQUEST__INIT;
	req.id = id;
	req.body_case = DMB__REQUEST__BODY_MAP_BATCH;
	req.map_batch = &mb;
	uint8_t buf[256];
	size_t n = dmb__request__pack(&req, buf);
	assert_true(n <= sizeof(buf));
	assert_int_equal(send(dmb_socket(c), buf, n, 0), (ssize_t)n);
}

Dmb__Reply *raw_reply(struct dmb_client *c, bool nonblock)
{
	for (;;) {
		struct pollfd p = { .fd = dmb_socket(c), .events = POLLIN };
		int pr = poll(&p, 1, nonblock ? 0 : 120000);
		assert_true(pr >= 0);
		if (pr == 0) {
			if (nonblock)
				return NULL;
			fail_msg("no reply from the daemon within 120 s");
		}
		static uint8_t buf[65536];
		ssize_t n = recv(dmb_socket(c), buf, sizeof(buf), 0);
		assert_true(n > 0);
		Dmb__ServerMessage *m = dmb__server_message__unpack(NULL, (size_t)n, buf);
		assert_non_null(m);
		if (m->kind_case != DMB__SERVER_MESSAGE__KIND_REPLY) {
			dmb__server_message__free_unpacked(m, NULL);
			continue;
		}
		Dmb__Reply *r = m->reply;
		m->reply = NULL;
		m->kind_case = DMB__SERVER_MESSAGE__KIND__NOT_SET;
		dmb__server_message__free_unpacked(m, NULL);
		return r;
	}
}

pid_t sim_preserver_start(const char *sock)
{
	return sim_preserver_start_opt(sock, NULL);
}

pid_t sim_preserver_start_opt(const char *sock, const char *opt)
{
	const char *bin = getenv("DMB_SIM_PRESERVER");
	if (!bin || !bin[0])
		fail_msg("DMB_SIM_PRESERVER is not set");
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* If the test dies, so does its preserver (it would hold the
		 * test's stderr open and meson would wait for it). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int devnull = open("/dev/null", O_WRONLY);
		dup2(devnull, 1);
		execl(bin, bin, "serve", sock, opt, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500 && access(sock, F_OK) < 0; i++)
		sleep_ms(10);
	assert_int_equal(access(sock, F_OK), 0);
	return pid;
}

void sim_preserver_stop(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
}
