/* The systemd fd store, as the broker uses it: every fd that holds kernel
 * state or a client connection is stored under a name (docs/operations.md,
 * "Restart without unmapping"), and removed by name when its object goes.
 * The broker never counts on an fd the store might refuse: persist.c checks
 * the store's capacity before it journals an object (core/account.c). */
#pragma once

#include <stdint.h>

#include "core/core.h"
#include "util/err.h"

/* 0, or a negative errno when the fd store did not take it. */
int fdstore_put(const char *name, int fd);
/* What a client hears when an object's fds could not be kept. */
int fdstore_refused(int r, const char *what, uint64_t id, struct dmb_err *e);
/* FDSTOREREMOVE=1 of every fd stored under name. */
void fdstore_remove(const char *name);
/* A backend object's fds as <prefix>.<id>.<name>; names keeps the names
 * (for fdstore_remove_set). Returns the first failure. */
int fdstore_put_set(const char *prefix, uint64_t id, const struct dmb_fdset *fds,
		    struct dmb_fdset *names);
void fdstore_remove_set(const char *prefix, uint64_t id, struct dmb_fdset *names);
/* A context's backend fds. */
int fdstore_put_ctx(struct dmb_ctx *ctx);
