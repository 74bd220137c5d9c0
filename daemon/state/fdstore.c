/* The systemd fd store (state/fdstore.h): FDSTORE=1 and FDSTOREREMOVE=1
 * messages, one fd or one object's fd set at a time, under the names
 * docs/operations.md lists. persist.c and restore.c call it; it calls
 * nothing of state/ back. */
#include "state/fdstore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "core/core.h"
#include "util/log.h"
#include "util/macro.h"

/* 0, or a negative errno when the fd store did not take it. */
int fdstore_put(const char *name, int fd)
{
	char msg[300];
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
	int r;
	/* ETOOMANYREFS: this uid has more fds in flight on unix sockets than its
	 * fd limit (other clients of ours sending fds); they drain quickly.
	 * Wait with poll: it is in the seccomp allow-list, (clock_)nanosleep
	 * is not, and a sleep there killed the daemon. */
	for (int i = 0; (r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1)) == -ETOOMANYREFS && i < 50; i++)
		(void)poll(NULL, 0, 2);
	if (r <= 0) {
		log_ratelimited(LOG_ERR, "could not store fd '%s' in the fd store: %s", name,
				r < 0 ? strerror(-r) : "no NOTIFY_SOCKET");
		return r < 0 ? r : -ENOTCONN;
	}
	return 0;
}

/* What a client hears when an object's fds could not be kept: without them
 * a restart would lose the object, so the request is refused. */
int fdstore_refused(int r, const char *what, uint64_t id, struct dmb_err *e)
{
	return dmb_fail(e, DMB_E_UNAVAILABLE, -r,
			"%s %" PRIu64 " could not be kept in the fd store (%s), so it would not "
			"survive a restart; retry", what, id, strerror(-r));
}

void fdstore_remove(const char *name)
{
	char msg[300];
	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
	(void)sd_notify(0, msg);
}

/* Stores a backend object's fds as <prefix>.<id>.<name> and remembers the
 * names (for FDSTOREREMOVE when the object goes). Returns the first failure
 * (the others are still stored, so the names stay complete). */
int fdstore_put_set(const char *prefix, uint64_t id, const struct dmb_fdset *fds,
		     struct dmb_fdset *names)
{
	int ret = 0;
	struct dmb_fdset old = *names;
	names->n = 0;
	for (size_t i = 0; i < fds->n && i < DMB_MAX_OBJ_FDS; i++) {
		char name[64];
		snprintf(name, sizeof(name), "%s.%" PRIu64 ".%s", prefix, id, fds->e[i].name);
		int r = fdstore_put(name, fds->e[i].fd);
		if (r < 0 && ret == 0)
			ret = r;
		names->e[names->n].fd = -1;
		snprintf(names->e[names->n].name, sizeof(names->e[0].name), "%s", fds->e[i].name);
		names->n++;
	}
	/* Names that are no longer exported (a group that left) go. */
	for (size_t i = 0; i < old.n; i++) {
		bool kept = false;
		for (size_t k = 0; k < names->n && !kept; k++)
			kept = !strcmp(old.e[i].name, names->e[k].name);
		if (!kept) {
			char name[64];
			snprintf(name, sizeof(name), "%s.%" PRIu64 ".%s", prefix, id, old.e[i].name);
			fdstore_remove(name);
		}
	}
	return ret;
}

void fdstore_remove_set(const char *prefix, uint64_t id, struct dmb_fdset *names)
{
	for (size_t i = 0; i < names->n; i++) {
		char name[64];
		snprintf(name, sizeof(name), "%s.%" PRIu64 ".%s", prefix, id, names->e[i].name);
		fdstore_remove(name);
	}
	names->n = 0;
}

int fdstore_put_ctx(struct dmb_ctx *ctx)
{
	const struct dmb_backend_ops *ops = ctx->core->be->ops;
	struct dmb_fdset fds = { 0 };
	if (ops->ctx_fds && ops->ctx_fds(ctx->bctx, &fds) == 0)
		return fdstore_put_set("ctx", ctx->id, &fds, &ctx->stored);
	return 0;
}
