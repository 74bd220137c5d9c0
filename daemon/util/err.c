#include "err.h"

#include "text.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

__attribute__((format(printf, 5, 0)))
static int fail_v(struct dmb_err *e, int force, int code, int err, const char *fmt, va_list ap)
{
	if (e && (force || e->code == 0)) {
		e->code = code;
		e->sys_errno = err;
		vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	}
	return err > 0 ? -err : -EIO;
}

int dmb_fail(struct dmb_err *e, int code, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = fail_v(e, 0, code, err, fmt, ap);
	va_end(ap);
	return r;
}

int dmb_fail_force(struct dmb_err *e, int code, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = fail_v(e, 1, code, err, fmt, ap);
	va_end(ap);
	return r;
}

int dmb_code_from_errno(int neg_errno)
{
	switch (-neg_errno) {
	case EINVAL:
	case EOVERFLOW:
	case EBADF:
	case E2BIG:
		return DMB_E_INVALID_ARGUMENT;
	case EPERM:
	case EACCES:
		return DMB_E_PERMISSION_DENIED;
	case ENOENT:
	case ENODEV:
		return DMB_E_NOT_FOUND;
	case EEXIST:
		return DMB_E_ALREADY_EXISTS;
	case ENOMEM:
	case ENOSPC:
	case EMFILE:
	case ENFILE:
		return DMB_E_RESOURCE_EXHAUSTED;
	case EBUSY:
		return DMB_E_FAILED_PRECONDITION;
	case EAGAIN:
		return DMB_E_UNAVAILABLE;
	case EOPNOTSUPP:
	case ENOTTY:
	case ENOSYS:
		return DMB_E_UNIMPLEMENTED;
	default:
		return DMB_E_INTERNAL;
	}
}

const char *dmb_code_name(int code)
{
	return dmb_common_code_name(code, "none");
}
