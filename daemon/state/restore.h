/* Restore: the journal replayed into the core and every kernel object it
 * names taken back (state/restore.c). Internal to state/: persist.c calls
 * it. */
#pragma once

#include <stdbool.h>

#include "state/persist.h"
#include "util/err.h"

/* How persist.c journals a P2P mapping and restore.c reads it back: MMIO
 * entries carry the peer device in `region` and the BAR in flags. */
#define JMAP_MMIO 1u
#define JMAP_BAR(f) (((f) >> 8) & 0xff)

/* Replays the journal in jfd (consumed) and re-adopts what it names from st
 * (after a restart), or, fresh (after a kexec), makes everything anew with
 * each region's memfd from fetch. Keeps the journal in p->j unless fresh. */
int restore_journal(struct persist *p, struct stored_fds *st, int jfd, bool fresh,
		    const struct persist_fetch *fetch, struct dmb_err *e);
