/* preserver.c — preserver_open()'s spec strings, and the sentences both
 * preservers give for the kernel's answers. See preserver.h and impl.h. */
#include "backend/preserve/preserver.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/preserve/impl.h"
#include "util/err.h"

int preserve_check_name(const char *name, struct dmb_err *e)
{
	size_t len = name ? strnlen(name, DMB_PRESERVE_NAME_MAX + 1) : 0;
	if (len == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "a handoff session needs a name");
	if (len > DMB_PRESERVE_NAME_MAX)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the handoff session name \"%.20s...\" is longer than the kernel's %d "
				"bytes",
				name, DMB_PRESERVE_NAME_MAX);
	return 0;
}

static const char *op_name(enum preserve_op op)
{
	switch (op) {
	case PRESERVE_OP_OPEN:
		return "opening";
	case PRESERVE_OP_CREATE:
		return "creating the session";
	case PRESERVE_OP_RETRIEVE:
		return "retrieving the session";
	case PRESERVE_OP_PRESERVE_FD:
		return "preserving a file in the session";
	case PRESERVE_OP_RETRIEVE_FD:
		return "retrieving a file from the session";
	case PRESERVE_OP_FINISH:
		return "finishing the session";
	}
	return "?";
}

int preserve_explain(struct dmb_err *e, const char *dev, enum preserve_op op, int err,
		     const char *name, uint64_t token)
{
	int en = err < 0 ? -err : err;
	char sess[DMB_PRESERVE_NAME_MAX + 32];
	if (name)
		snprintf(sess, sizeof(sess), "handoff session \"%.*s\"", DMB_PRESERVE_NAME_MAX, name);
	else
		snprintf(sess, sizeof(sess), "the handoff session");
	const char *n = name ? name : "?";
	const char *ename = strerrorname_np(en);
	if (!ename)
		ename = "E?";

	/* Answers of the device itself, whatever was asked. */
	if (op == PRESERVE_OP_OPEN || op == PRESERVE_OP_CREATE || op == PRESERVE_OP_RETRIEVE) {
		if (en == EBUSY)
			return dmb_fail(e, DMB_E_UNAVAILABLE, EBUSY,
					"%s is held by another process (EBUSY): it admits one opener "
					"at a time; stop whatever holds it and retry",
					dev);
		if (en == EIO)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EIO,
					"%s refuses every open (EIO): this kernel could not read the "
					"handoff data the previous kernel left (its live update "
					"version differs); what it preserved is lost for this boot",
					dev);
		if (en == EACCES || en == EPERM)
			return dmb_fail(e, DMB_E_PERMISSION_DENIED, en,
					"%s cannot be opened (%s): the daemon needs read-write access "
					"to it",
					dev, ename);
	}
	switch (op) {
	case PRESERVE_OP_CREATE:
		if (en == EEXIST)
			return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
					"an outgoing handoff session named \"%s\" already exists "
					"(EEXIST): abort the earlier prepare, or stop what holds its "
					"session, first",
					n);
		if (en == ENOMEM)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
					"%s has no room for another outgoing session (ENOMEM)", dev);
		break;
	case PRESERVE_OP_RETRIEVE:
		if (en == ENOENT)
			return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
					"there is no incoming handoff session named \"%s\" (ENOENT): "
					"the previous kernel preserved none under that name, or this "
					"boot was not a live update",
					n);
		if (en == EINVAL)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EINVAL,
					"the incoming handoff session \"%s\" was already retrieved in "
					"this boot (EINVAL): a session can be retrieved once, and one "
					"closed without FINISH cannot be retrieved again",
					n);
		break;
	case PRESERVE_OP_PRESERVE_FD:
		if (en == EEXIST)
			return dmb_fail(e, DMB_E_ALREADY_EXISTS, EEXIST,
					"token %#" PRIx64 " is already used in %s (EEXIST)", token,
					sess);
		if (en == ENOSPC)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
					"%s already holds 128 files, the kernel's limit per session "
					"(ENOSPC)",
					sess);
		if (en == ENOENT)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENOENT,
					"this file cannot be preserved across a kexec (ENOENT): only "
					"plain memfds and unlinked tmpfs files can be, not hugetlb "
					"memfds, hugetlbfs files, named tmpfs files or anything else");
		if (en == EOPNOTSUPP)
			return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EOPNOTSUPP,
					"the memfd carries a seal the kernel cannot carry across a "
					"kexec (EOPNOTSUPP)");
		if (en == EBADF)
			return dmb_fail(e, DMB_E_INTERNAL, EBADF,
					"preserving token %#" PRIx64 " in %s failed (EBADF): a file "
					"descriptor is not open",
					token, sess);
		if (en == ENOMEM)
			return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM,
					"the kernel ran out of memory preserving token %#" PRIx64
					" (ENOMEM): a preserved memfd has every page allocated and "
					"pinned",
					token);
		break;
	case PRESERVE_OP_RETRIEVE_FD:
		if (en == ENOENT)
			return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT,
					"%s holds no file with token %#" PRIx64 " (ENOENT)", sess,
					token);
		break;
	case PRESERVE_OP_FINISH:
		if (en == EBUSY)
			return dmb_fail(e, DMB_E_UNAVAILABLE, EBUSY,
					"%s cannot be finished yet (EBUSY): a preserved file is still "
					"in use; retry later",
					sess);
		break;
	case PRESERVE_OP_OPEN:
		break;
	}
	return dmb_fail(e, dmb_code_from_errno(-en), en, "%s through %s failed (%s): %s",
			op_name(op), dev, ename, strerror(en));
}

int preserver_open(const char *spec, struct dmb_preserver **out, struct dmb_err *e)
{
	*out = NULL;
	if (!spec || strcmp(spec, "none") == 0)
		return 0;
	if (strcmp(spec, "luo") == 0)
		return luo_preserver_new(PRESERVE_LUO_DEVICE, out, e);
	if (strcmp(spec, "auto") == 0) {
		struct stat st;
		if (stat(PRESERVE_LUO_DEVICE, &st) < 0 && errno == ENOENT)
			return 0;
		return luo_preserver_new(PRESERVE_LUO_DEVICE, out, e);
	}
	if (strncmp(spec, "luo:", 4) == 0 || strncmp(spec, "sim:", 4) == 0) {
		const char *path = spec + 4;
		if (path[0] != '/')
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"preserver \"%s\": the path after \"%.3s:\" must be absolute",
					spec, spec);
		return spec[0] == 'l' ? luo_preserver_new(path, out, e)
				      : sim_preserver_new(path, out, e);
	}
	return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
			"unknown preserver \"%s\": expected luo, luo:/device, sim:/socket, auto or "
			"none",
			spec);
}

void preserver_close(struct dmb_preserver *p)
{
	if (p)
		p->ops->destroy(p);
}
