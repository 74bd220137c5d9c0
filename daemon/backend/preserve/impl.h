/* What the preserver implementations share (not part of the interface):
 * their constructors, name checks and the sentences for the kernel's
 * answers, so the kernel's LUO and the simulated preserver explain the same
 * errno the same way. */
#pragma once

#include <stdint.h>

#include "backend/preserve/preserver.h"

#define PRESERVE_LUO_DEVICE "/dev/liveupdate"

/* dev_path: the LUO device node (PRESERVE_LUO_DEVICE in production). */
int luo_preserver_new(const char *dev_path, struct dmb_preserver **out, struct dmb_err *e);
/* Tests: the kernel release the LUO preserver judges (default: the running
 * kernel's, from /proc). Linux 7.3+ brings memfd seals across a kexec. */
void luo_preserver_set_release(struct dmb_preserver *p, const char *release);
/* sock_path: the unix socket dmb-sim-preserver serves. */
int sim_preserver_new(const char *sock_path, struct dmb_preserver **out, struct dmb_err *e);

/* A session name the kernel takes as it is: 1..DMB_PRESERVE_NAME_MAX
 * bytes (the kernel would silently truncate a longer one, so two long
 * names could collide: refused instead). -EINVAL with a sentence. */
int preserve_check_name(const char *name, struct dmb_err *e);

enum preserve_op {
	PRESERVE_OP_OPEN,        /* opening the device (LUO) / connecting (sim) */
	PRESERVE_OP_CREATE,      /* CREATE_SESSION */
	PRESERVE_OP_RETRIEVE,    /* RETRIEVE_SESSION */
	PRESERVE_OP_PRESERVE_FD, /* SESSION_PRESERVE_FD */
	PRESERVE_OP_RETRIEVE_FD, /* SESSION_RETRIEVE_FD */
	PRESERVE_OP_FINISH,      /* SESSION_FINISH */
};

/* Writes the sentence for the kernel's (or the simulation's) answer err
 * (negative errno) to op, and returns err. dev names the mechanism in the
 * sentence ("/dev/liveupdate", "the simulated preserver at /run/x.sock");
 * name is the session's name (NULL when unknown), token the file's. An
 * OPEN failure with ENOENT is the caller's to explain (what is missing
 * differs). */
int preserve_explain(struct dmb_err *e, const char *dev, enum preserve_op op, int err,
		     const char *name, uint64_t token);
