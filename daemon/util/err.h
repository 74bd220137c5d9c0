/* Structured errors inside the daemon.
 *
 * Functions return a negative errno; when a caller passes a struct dmb_err,
 * the layer that understands the failure also writes the wire error code and
 * one human sentence. rpc.c converts a dmb_err to the wire Error in exactly
 * one place (rpc_reply_error). */
#pragma once

#include <stdint.h>

/* Mirrors dmb.ErrorCode in proto/dmabroker.proto. */
enum dmb_code {
	DMB_E_NONE = 0,
	DMB_E_INVALID_ARGUMENT = 1,
	DMB_E_PERMISSION_DENIED = 2,
	DMB_E_NOT_FOUND = 3,
	DMB_E_ALREADY_EXISTS = 4,
	DMB_E_RESOURCE_EXHAUSTED = 5,
	DMB_E_FAILED_PRECONDITION = 6,
	DMB_E_UNAVAILABLE = 7,
	DMB_E_INTERNAL = 8,
	DMB_E_UNIMPLEMENTED = 9,
	DMB_E_OUT_OF_RANGE = 10,
};

struct dmb_err {
	int code;          /* enum dmb_code; 0 = not set yet */
	int sys_errno;     /* positive errno, 0 if none */
	uint32_t index;    /* batch entry that failed */
	uint32_t retry_after_ms; /* UNAVAILABLE: when a retry makes sense (0: no hint) */
	char msg[240];
};

/* Records code/errno/message (printf-style) unless e is NULL or already set,
 * and returns -err (err is a positive errno) for `return dmb_fail(...)`. */
int dmb_fail(struct dmb_err *e, int code, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Like dmb_fail but overwrites an earlier message. */
int dmb_fail_force(struct dmb_err *e, int code, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* The default wire code for a negative errno nobody explained. */
int dmb_code_from_errno(int neg_errno);

const char *dmb_code_name(int code);

static inline void dmb_err_clear(struct dmb_err *e)
{
	if (e) {
		e->code = 0;
		e->sys_errno = 0;
		e->index = 0;
		e->retry_after_ms = 0;
		e->msg[0] = '\0';
	}
}
