/* Integration-test harness: starts the real dmabrokerd binary on a private
 * socket and talks to it with libdmabroker, exactly as a VMM would.
 *
 * The daemon binary comes from $DMABROKERD (set by meson). Each daemon gets
 * its own temporary directory holding the socket, the config and its log.
 * daemon_stop() fails the test if the daemon did not exit cleanly (a crash,
 * a sanitizer report, a non-zero status). */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <sys/types.h>

#include <cmocka.h>

#include "dmabroker-internal.h"
#include "dmabroker.h"

struct daemon {
	pid_t pid;
	char dir[128];
	char sock[160];
	char log[160];
};

/* Starts a sim-backend daemon. extra_config: INI text appended to the
 * generated config (may be NULL). */
void daemon_start(struct daemon *d, const char *extra_config);
/* The same with extra command-line arguments (NULL-terminated, at most
 * DMB_HARNESS_MAX_ARGS), e.g. { "--seccomp=log", NULL }. */
#define DMB_HARNESS_MAX_ARGS 12
void daemon_start_args(struct daemon *d, const char *extra_config, const char *const *args);
/* daemon_start with the daemon's RLIMIT_NOFILE (soft and hard) set to
 * nofile: a small fd table to run out of. */
void daemon_start_nofile(struct daemon *d, const char *extra_config, unsigned nofile);
void daemon_stop(struct daemon *d);
/* User and system CPU time the daemon used so far, in clock ticks (from
 * /proc/PID/stat). */
unsigned long long daemon_cpu_ticks(const struct daemon *d);
/* Lines of the daemon's log that contain needle. */
int daemon_log_count(const struct daemon *d, const char *needle);
/* Waits (10 s at most) for the daemon to end by itself, without signalling
 * it, and stores its wait status (WIFSIGNALED, WTERMSIG ...) in *status;
 * cleans up like daemon_stop but accepts any end. -ETIMEDOUT (the daemon is
 * then killed) if it did not end. */
int daemon_wait_exit(struct daemon *d, int *status);
/* Number of fds the daemon holds now (from /proc). */
int daemon_fd_count(const struct daemon *d);
/* The same, counted when no client but the test's own `own` sessions and the
 * probe is connected, without the probe's session: comparable across tests
 * (sessions closed a moment ago may not be reaped yet). */
int daemon_quiet_fd_count(const struct daemon *d, unsigned own);
/* Waits (bounded) until the quiet fd count is `want`; returns the last count. */
int daemon_wait_fd_count(const struct daemon *d, int want, unsigned own);

struct dmb_client *client_connect(const struct daemon *d, const char *name);
/* Runs fn(c) in a child that is uid/gid (no supplementary groups) and whose
 * session c is connected to d as `name`; returns the child's exit status:
 * fn's return value (0 = every check in it passed, else a line number),
 * 250 if it could not become uid/gid, 251 if it could not connect. */
int client_run_as(const struct daemon *d, uid_t uid, gid_t gid, const char *name,
		  int (*fn)(struct dmb_client *c));
/* Status totals through an admin session. */
struct dmb_stats daemon_totals(const struct daemon *d);
/* Waits (bounded) until the daemon reports no contexts and zero pins. */
bool daemon_wait_idle(const struct daemon *d);

/* A sealed (F_SEAL_SHRINK) memfd of size bytes, filled with a pattern
 * derived from seed. */
int make_memfd(size_t size, unsigned seed);
void fill_pattern(uint8_t *buf, size_t len, unsigned seed);

/* Fails the test with the broker's sentence unless r == 0. */
#define assert_ok(c, r) _assert_ok((c), (r), __FILE__, __LINE__)
void _assert_ok(struct dmb_client *c, int r, const char *file, int line);
/* Asserts that the last call failed with this wire code. */
#define assert_code(c, r, code) _assert_code((c), (r), (code), __FILE__, __LINE__)
void _assert_code(struct dmb_client *c, int r, int code, const char *file, int line);

/* Reads len bytes at off from fd / writes them (pread/pwrite, not the broker). */
void fd_read(int fd, uint64_t off, void *buf, size_t len);
void fd_write(int fd, uint64_t off, const void *buf, size_t len);

/* Proves a mapping both ways: bytes written into the memfd are read back by
 * the sim DMA engine at iova, and bytes the engine writes at iova appear in
 * the memfd. len <= 64 KiB. */
void check_dma(struct dmb_client *c, uint64_t ctx, int memfd, uint64_t file_off, uint64_t iova,
	       size_t len, unsigned seed);
/* Asserts that a DMA read and a DMA write at iova both fault and that the
 * write changed nothing in the memfd at file_off (pass UINT64_MAX to skip). */
void check_dma_faults(struct dmb_client *c, uint64_t ctx, int memfd, uint64_t file_off,
		      uint64_t iova, size_t len);

extern struct daemon g_daemon;
int group_start_daemon(void **state);
int group_stop_daemon(void **state);

/* Requests in flight, below the library: sends MapBatch{one read+write entry}
 * with request id `id` on c's socket without waiting for its reply, which
 * raw_reply() reads. */
void raw_send_map(struct dmb_client *c, uint64_t id, uint64_t ctx, uint64_t region,
		  uint64_t iova, uint64_t len);
/* The next reply on c's socket (events are skipped). nonblock: NULL when
 * none is there yet; otherwise waits, bounded but generously (120 s: the
 * daemon may be populating a GiB under a sanitizer on a loaded machine).
 * Free it with dmb__reply__free_unpacked. */
Dmb__Reply *raw_reply(struct dmb_client *c, bool nonblock);

/* Starts the simulated LUO preserver, `$DMB_SIM_PRESERVER serve sock`, and
 * waits (bounded) for its socket; it dies with the test. Returns its pid. */
pid_t sim_preserver_start(const char *sock);
/* The same with one option of `serve` (e.g. "--memfd-v1"; NULL: none). */
pid_t sim_preserver_start_opt(const char *sock, const char *opt);
/* SIGTERM and reap; pid <= 0 does nothing. */
void sim_preserver_stop(pid_t pid);
