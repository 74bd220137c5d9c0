/* fdstore — a test harness that plays systemd's part for real.
 *
 * What it emulates (systemd's src/core/service.c and manager.c, read for this):
 *  - The socket unit: it binds and listens on a SOCK_SEQPACKET unix socket
 *    once (non-blocking, mode 0666, backlog SOMAXCONN) and keeps it open across
 *    restarts, so clients that connect while the service is down queue up in
 *    the backlog. It is passed first, named FDS_LISTEN_NAME.
 *  - The service's start: fork + exec with a clean fd table (0 = /dev/null,
 *    1 and 2 = the log file, then the passed fds from 3 up with FD_CLOEXEC
 *    cleared on exactly those; everything else closed), signals reset,
 *    its own session, and the environment NOTIFY_SOCKET, LISTEN_FDS,
 *    LISTEN_FDNAMES, LISTEN_PID (written in the child after fork), FDSTORE=<max>
 *    (when the max is non-zero) and WATCHDOG_USEC/WATCHDOG_PID (when set).
 *    Type=notify: fds_start() returns once READY=1 came, fails if the process
 *    exits first, and terminates it after the start timeout.
 *  - The notify socket (AF_UNIX SOCK_DGRAM, SO_PASSCRED) served by a thread:
 *    recvmsg(MSG_DONTWAIT|MSG_CMSG_CLOEXEC|MSG_TRUNC) with room for 768 fds;
 *    messages without credentials, over 4096 bytes, or with embedded NULs
 *    are dropped and their fds closed; so is one whose control data was
 *    truncated (MSG_CTRUNC: more than 768 fds) - our rule, as systemd
 *    versions differ there; NotifyAccess=main (default) drops messages
 *    from any pid but the main pid; messages sent before the main process
 *    died are processed before it is forgotten (systemd gives the notify fd
 *    priority over SIGCHLD). Fields: READY=1, STOPPING=1 (wins over READY),
 *    STATUS= (empty clears), ERRNO=, WATCHDOG=1|trigger, MAINPID= (recorded
 *    only), BARRIER=1 (its fd is closed), FDSTORE=1, FDSTOREREMOVE=1, FDNAME=,
 *    FDPOLL=0; first occurrence of a field wins; unknown fields are ignored.
 *    Fds that no field took are closed.
 *  - The fd store, as service_add_fd_store() keeps it: FDNAME= is optional
 *    for FDSTORE=1 (default "stored"; an invalid name - control characters,
 *    ':', non-ASCII, over 255 chars - also gives "stored"); the limit
 *    (FileDescriptorStoreMax=) is checked before duplicates, so a full store
 *    refuses even a duplicate, and the rest of the message's fds are closed;
 *    an fd identical to a stored one (same open file description:
 *    F_DUPFD_QUERY, else kcmp(KCMP_FILE), else systemd's fallback: same
 *    inode, not a device node, same F_GETFL flags) is dropped and the stored
 *    one keeps its name; names need not be unique. FDSTOREREMOVE=1 requires
 *    a valid FDNAME= and closes every fd with that name; in a message with
 *    both FDSTORE=1 and FDSTOREREMOVE=1 only the removal happens. Unless
 *    FDPOLL=0, a stored fd that reports EPOLLHUP/EPOLLERR is closed and
 *    dropped (unpollable fds - memfds, iommufd, VFIO - are kept). The store
 *    is passed newest first (systemd prepends), survives stops and restarts,
 *    and is closed by fds_store_clear() (a stop for good) or fds_destroy().
 *  - Stopping: SIGTERM (then SIGCONT) to the process group, SIGKILL after the
 *    stop timeout; after the main process ended, whatever is left of its
 *    group is SIGKILLed (KillMode=control-group, roughly).
 *
 * What it does not emulate: cgroups (a process that leaves the session
 * escapes), the watchdog timeout (pings are only counted), MAINPID= changing
 * whom we wait for, NOTIFYACCESS=, RELOADING=1 / reload, EXTEND_TIMEOUT_USEC=,
 * automatic start when a client connects to the idle socket, Restart= policy
 * (the test restarts explicitly), FileDescriptorStorePreserve= (the store is
 * kept until fds_store_clear()), credentials other than the pid (pidfds,
 * uid checks), ERRNO= given as a name, user/sandbox settings of the unit
 * file (the service runs as the test's user with its LimitNOFILE, raised to
 * fit what is passed). Stored fds are compared as systemd does (see above),
 * so without F_DUPFD_QUERY and kcmp() two open()s of one regular file with
 * equal flags count as one. The order of fds within one message is kept as
 * sent (systemd's is unspecified: a hash set) - services must not rely on
 * any order but "socket-activation fds first".
 *
 * The library does not use cmocka: every call returns 0 or a negative errno
 * and logs what it refused to stderr ("fdstore: ..."), like systemd's journal.
 * One struct fds is used from one test thread; its pump thread is internal. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FDS_LISTEN_NAME "dmabroker.socket"
/* Our default FileDescriptorStoreMax=; systemd's default is 0 (disabled). */
#define FDS_DEFAULT_STORE_MAX 4096u

enum fds_notify_access {
	FDS_NOTIFY_MAIN, /* NotifyAccess=main: only the main pid (Type=notify's default) */
	FDS_NOTIFY_ALL,  /* NotifyAccess=all */
};

enum fds_compare {
	FDS_CMP_AUTO,  /* F_DUPFD_QUERY, else kcmp(), else the fstat fallback */
	FDS_CMP_FSTAT, /* systemd's fallback only (as on kernels without kcmp) */
};

struct fds_opts {
	unsigned store_max;                   /* FileDescriptorStoreMax= */
	enum fds_notify_access notify_access; /* NotifyAccess= */
	enum fds_compare compare;
	bool listen;                          /* create the socket-activation listener */
	int start_timeout_ms;                 /* TimeoutStartSec= */
	int stop_timeout_ms;                  /* TimeoutStopSec= */
	uint64_t watchdog_usec;               /* WatchdogSec= (0: none); not enforced */
	bool quiet;                           /* no "fdstore: ..." lines on stderr */
};

/* store_max FDS_DEFAULT_STORE_MAX, NotifyAccess=main, listener on, 10 s
 * start and stop timeouts, no watchdog. */
struct fds_opts fds_default_opts(void);

struct fds_state;
struct fds {
	char dir[64];     /* private directory, removed by fds_destroy() */
	char sock[96];    /* the listening socket's path ($dir/sock) */
	char notify[96];  /* NOTIFY_SOCKET ($dir/notify) */
	char log[96];     /* the service's stdout and stderr, all instances */
	pid_t pid;        /* main pid while running, else 0 */
	struct fds_state *s;
};

/* Counters since fds_init(), for tests of the emulation itself. */
struct fds_counters {
	unsigned starts;
	unsigned messages;     /* accepted notify messages */
	unsigned ignored;      /* dropped: not the main pid, no credentials, truncated, NUL */
	unsigned fds_received; /* fds that arrived with any message */
	unsigned stored;       /* added to the store */
	unsigned duplicates;   /* dropped as identical to a stored fd */
	unsigned refused_full; /* closed because the store was full */
	unsigned removed;      /* closed by FDSTOREREMOVE=1 */
	unsigned hangups;      /* closed on EPOLLHUP/EPOLLERR */
	unsigned extra_closed; /* closed because no field took them */
	unsigned watchdog;     /* WATCHDOG=1 */
};

/* Creates the directory, the notify socket, the listener and the pump
 * thread. o NULL: fds_default_opts(). On failure everything is undone. */
int fds_init(struct fds *h, const struct fds_opts *o);
/* Stops the service (SIGTERM, SIGKILL after the timeout), closes the store,
 * the sockets and the thread, removes the directory. Accepts a zeroed or
 * failed-to-init struct, and a second call. */
void fds_destroy(struct fds *h);

/* Starts argv (argv[0] a path; copied, and used again by fds_restart()) with
 * the listener and the store, and waits for READY=1. 0 when ready; -ECHILD
 * if it ended first (see fds_exit_status()); -ETIMEDOUT if READY=1 did not
 * come within the start timeout (it is then stopped); -EBUSY if running. */
int fds_start(struct fds *h, const char *const *argv);
/* Changes what the next fds_restart() runs, without starting it. */
int fds_set_argv(struct fds *h, const char *const *argv);
/* Writes $dir/dmabroker.conf for the sim backend on h->sock (plus
 * extra_config, may be NULL) and starts $DMABROKERD --config it, then args
 * (NULL-terminated, may be NULL). -ENOENT if DMABROKERD is not set. */
int fds_start_dmabrokerd(struct fds *h, const char *extra_config, const char *const *args);
/* Stops the service: sig SIGTERM (escalated to SIGKILL after the stop
 * timeout, then -ETIMEDOUT), SIGKILL, or 0 to wait (stop timeout) for it to
 * end by itself. Returns its wait status (WIFEXITED ...), or -ESRCH if it was
 * not running (not even an unreaped end). The store is kept. */
int fds_stop(struct fds *h, int sig);
/* fds_stop(h, sig) if running, then fds_start() with the last argv. */
int fds_restart(struct fds *h, int sig);
/* The wait status of the last instance that ended, -1 if none. */
int fds_exit_status(const struct fds *h);
/* True while started and not yet reaped (reaps it if it just ended). */
bool fds_running(struct fds *h);

/* A stop for good: closes every stored fd (the listener stays). */
/* Like fds_destroy, accepts a zeroed or failed-to-init struct. */
void fds_store_clear(struct fds *h);
unsigned fds_store_count(struct fds *h);
unsigned fds_store_count_name(struct fds *h, const char *name);
/* The stored names, ':'-joined in the order the next start passes them
 * (after the listener); malloc'ed, "" when empty; NULL on ENOMEM. */
char *fds_store_names(struct fds *h);
/* An O_CLOEXEC dup of the nth (0-based, in passing order) stored fd with
 * this name: the test can read what the store holds. -ENOENT if none. */
int fds_store_dup(struct fds *h, const char *name, unsigned nth);

/* What the current (or last) instance notified. */
bool fds_ready(struct fds *h);
bool fds_stopping(struct fds *h);
/* Copies the last STATUS= text; -ENOENT if none (or cleared). */
int fds_status(struct fds *h, char *buf, size_t len);
int fds_errno(struct fds *h);     /* last ERRNO=, 0 if none */
pid_t fds_mainpid(struct fds *h); /* last MAINPID=, 0 if none */
void fds_counters(struct fds *h, struct fds_counters *c);

/* Waits (timeout_ms at most) for an accepted notify line of the current
 * instance that matches the fnmatch(3) pattern (e.g. "STATUS=ready*"),
 * after the line the previous successful wait matched; copies it to line
 * (may be NULL). 0 when found; -ETIMEDOUT; -ECHILD if the instance ended
 * without sending it. */
int fds_wait_notify(struct fds *h, const char *pattern, int timeout_ms, char *line, size_t len);

/* The service's log (stdout and stderr of every instance) to stderr. */
void fds_dump_log(const struct fds *h);
/* True if the log holds needle (e.g. "Sanitizer"). */
bool fds_log_has(const struct fds *h, const char *needle);
/* Waits (at most timeout_ms) until the service log has a line with needle. */
bool fds_wait_log(const struct fds *h, const char *needle, int timeout_ms);
