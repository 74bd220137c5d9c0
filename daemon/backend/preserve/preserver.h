/* Preservers keep file descriptors alive across a kexec into a new kernel
 * (issue 6, host handoff).
 *
 * Two implementations share this interface:
 *   luo  the kernel's Live Update Orchestrator, /dev/liveupdate (Linux 6.19+;
 *        include/uapi/linux/liveupdate.h)
 *   sim  a separate process (tools/dmb-sim-preserver) that plays the kernel for
 *        tests: it holds preserved fds while the daemon, its clients, the fd
 *        store and every sim backend object are thrown away by a simulated
 *        kexec, and hands them to the next daemon by name and token.
 *
 * A session is just a file descriptor, so the daemon can put it in systemd's
 * fd store: closing the last reference to an outgoing session before the
 * kexec aborts it (the kernel's rule, which the sim copies), so a daemon
 * restart while prepared must keep it. Session operations take that fd and
 * need nothing else, so a restarted daemon can go on with a session it got
 * back from the fd store.
 *
 * Every function returns 0 or a negative errno and, on failure, writes one
 * sentence to e that says what to do about it (e.g. "/dev/liveupdate is held
 * by another process (EBUSY); stop it and retry"). */
#pragma once

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "util/err.h"

/* Session names are at most 63 bytes (the kernel's limit). */
#define DMB_PRESERVE_NAME_MAX 63

struct dmb_preserver;

struct dmb_preserver_ops {
	const char *name; /* "luo", "sim" */
	/* Whether the mechanism can be used at all on this host. On failure, e
	 * says why in one sentence (no /dev/liveupdate, kernel too old, not
	 * booted with liveupdate=on, ...). */
	int (*probe)(struct dmb_preserver *p, struct dmb_err *e);
	/* Creates an outgoing session (for the next kernel). *session_fd is
	 * O_CLOEXEC. -EEXIST if an outgoing session with that name exists. */
	int (*create_session)(struct dmb_preserver *p, const char *name, int *session_fd,
			      struct dmb_err *e);
	/* Retrieves an incoming session (from the previous kernel).
	 * -ENOENT when there is none of that name (the normal case at boot
	 * without a handoff). */
	int (*retrieve_session)(struct dmb_preserver *p, const char *name, int *session_fd,
				struct dmb_err *e);
	/* Preserves fd in an outgoing session under token (unique in the
	 * session). The caller keeps its own fd. -ENOENT: this kind of file
	 * cannot be preserved (only plain memfds can). */
	int (*preserve_fd)(struct dmb_preserver *p, int session_fd, int fd, uint64_t token,
			   struct dmb_err *e);
	/* Retrieves a preserved fd (O_CLOEXEC) from an incoming session. */
	int (*retrieve_fd)(struct dmb_preserver *p, int session_fd, uint64_t token, int *fd,
			   struct dmb_err *e);
	/* Finishes an incoming session after everything needed was retrieved;
	 * files never retrieved are discarded. -EBUSY: retry later. Never call
	 * it on an outgoing session. */
	int (*finish)(struct dmb_preserver *p, int session_fd, struct dmb_err *e);
	void (*destroy)(struct dmb_preserver *p);
};

struct dmb_preserver {
	const struct dmb_preserver_ops *ops;
};

/* Opens the preserver a config names:
 *   "luo"          the kernel's /dev/liveupdate (default device path), or
 *                  "luo:/path/to/device" (tests point it elsewhere)
 *   "sim:/path"    the simulated preserver listening on that unix socket
 *   "none"         no preserver (prepare refuses, saying so)
 *   "auto"         luo when /dev/liveupdate exists, else none
 * Opening does not touch the kernel beyond a stat: /dev/liveupdate is
 * exclusive, so it is opened only for the moment an operation needs it.
 * *out is NULL for "none". */
int preserver_open(const char *spec, struct dmb_preserver **out, struct dmb_err *e);

/* Why this kernel has no /dev/liveupdate, as one sentence: booted without
 * liveupdate=on, or no LUO at all (preserve/luo.c). */
void preserver_luo_absent(char *buf, size_t n);
void preserver_close(struct dmb_preserver *p);
