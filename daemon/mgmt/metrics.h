/* metrics: Prometheus text exposition for node_exporter's textfile
 * collector. With [metrics] textfile = PATH the daemon rewrites PATH every
 * [metrics] interval_s seconds, atomically: it writes .NAME.tmp in the same
 * directory and renames it over PATH (readers see the old file or the new
 * one, never half of one). The directory is opened once at start, before the
 * sandbox; the seccomp filter lets the daemon create, rename and unlink
 * files only relative to that directory fd. The metric names are listed in
 * docs/operations.md. */
#pragma once

#include <stdbool.h>

struct server;

/* Opens the directory and writes the file once. A path that cannot be used
 * is logged and metrics stay off: serving DMA matters more (returns 0). */
int metrics_init(struct server *srv);
/* The directory fd the sandbox allows writes under; -1 when off. */
int metrics_dirfd(const struct server *srv);
/* Rewrites the file now; 0 or a negative errno (logged, rate-limited). */
int metrics_write(struct server *srv);
/* stop_for_good: the daemon stops without a successor; the file goes (a
 * stale file would report a broker that is not there). */
void metrics_fini(struct server *srv, bool stop_for_good);
