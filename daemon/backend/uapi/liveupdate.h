/* uapi/liveupdate.h — our own definitions of the Live Update Orchestrator
 * uAPI (/dev/liveupdate and its session fds, Linux 6.19+).
 *
 * The build machine carries Linux 6.1 headers, which have no
 * <linux/liveupdate.h>; newer systems have one whose names would clash with
 * a verbatim copy. So every name here carries a dmb_/DMB_ prefix and is
 * otherwise spelled as in the kernel's include/uapi/linux/liveupdate.h; the
 * layouts and numbers are pinned by _Static_assert against that header
 * (Linux 6.19+) and its driver, kernel/liveupdate/.
 *
 * Conventions:
 * - Every command is _IO(0xBA, nr): no size or direction bits. The device
 *   answers an nr it does not know with EINVAL (not ENOTTY); a known nr
 *   with size/direction bits is ENOTTY.
 * - "size-first": the first u32 of every argument is `size`; for all five
 *   commands the minimum size is the full size below.
 * - /dev/liveupdate admits one opener at a time (EBUSY); after a failed
 *   deserialization of the incoming data every open is EIO.
 * - Session fds (from CREATE/RETRIEVE_SESSION) are O_CLOEXEC; closing an
 *   outgoing session before the kexec aborts it.
 * - LP64 only: __aligned_u64 is a plain uint64_t there. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

#define DMB_LIVEUPDATE_IOCTL_TYPE 0xBA
/* Including the NUL: names are at most 63 characters. */
#define DMB_LIVEUPDATE_SESSION_NAME_LENGTH 64
/* Files one session can hold (two pages of 64-byte records). */
#define DMB_LIVEUPDATE_SESSION_MAX_FILES 128

/* On /dev/liveupdate. */
#define DMB_LIVEUPDATE_IOCTL_CREATE_SESSION   _IO(DMB_LIVEUPDATE_IOCTL_TYPE, 0x00) /* 0xBA00 */
#define DMB_LIVEUPDATE_IOCTL_RETRIEVE_SESSION _IO(DMB_LIVEUPDATE_IOCTL_TYPE, 0x01) /* 0xBA01 */
/* On a session fd. */
#define DMB_LIVEUPDATE_SESSION_PRESERVE_FD    _IO(DMB_LIVEUPDATE_IOCTL_TYPE, 0x40) /* 0xBA40 */
#define DMB_LIVEUPDATE_SESSION_RETRIEVE_FD    _IO(DMB_LIVEUPDATE_IOCTL_TYPE, 0x41) /* 0xBA41 */
#define DMB_LIVEUPDATE_SESSION_FINISH         _IO(DMB_LIVEUPDATE_IOCTL_TYPE, 0x42) /* 0xBA42 */

/* CREATE_SESSION: a new outgoing session (EEXIST: an outgoing session of
 * that name exists; ENOMEM: the serialization area is full). */
struct dmb_liveupdate_ioctl_create_session {
	uint32_t size;                                   /* in: 72 */
	int32_t fd;                                      /* out: the session fd */
	uint8_t name[DMB_LIVEUPDATE_SESSION_NAME_LENGTH]; /* in: NUL-terminated */
};

/* RETRIEVE_SESSION: an incoming session by exact name (ENOENT: none;
 * EINVAL: already retrieved in this boot). Same layout as CREATE. */
struct dmb_liveupdate_ioctl_retrieve_session {
	uint32_t size;
	int32_t fd;
	uint8_t name[DMB_LIVEUPDATE_SESSION_NAME_LENGTH];
};

/* SESSION_PRESERVE_FD: EEXIST token used, ENOSPC 128 files, EBADF bad fd,
 * ENOENT no handler for this file type, EOPNOTSUPP unsupported seals. */
struct dmb_liveupdate_session_preserve_fd {
	uint32_t size; /* 16 */
	int32_t fd;    /* in: the file to preserve */
	uint64_t token;
};

/* SESSION_RETRIEVE_FD: ENOENT unknown token; repeatable. */
struct dmb_liveupdate_session_retrieve_fd {
	uint32_t size;
	int32_t fd; /* out: a new O_CLOEXEC fd of the file */
	uint64_t token;
};

/* SESSION_FINISH: incoming sessions only (the kernel does not check);
 * EBUSY when a file handler cannot finish yet. */
struct dmb_liveupdate_session_finish {
	uint32_t size;     /* 8 */
	uint32_t reserved; /* 0 */
};

_Static_assert(DMB_LIVEUPDATE_IOCTL_CREATE_SESSION == 0xBA00, "LIVEUPDATE_IOCTL_CREATE_SESSION");
_Static_assert(DMB_LIVEUPDATE_IOCTL_RETRIEVE_SESSION == 0xBA01,
	       "LIVEUPDATE_IOCTL_RETRIEVE_SESSION");
_Static_assert(DMB_LIVEUPDATE_SESSION_PRESERVE_FD == 0xBA40, "LIVEUPDATE_SESSION_PRESERVE_FD");
_Static_assert(DMB_LIVEUPDATE_SESSION_RETRIEVE_FD == 0xBA41, "LIVEUPDATE_SESSION_RETRIEVE_FD");
_Static_assert(DMB_LIVEUPDATE_SESSION_FINISH == 0xBA42, "LIVEUPDATE_SESSION_FINISH");

_Static_assert(sizeof(struct dmb_liveupdate_ioctl_create_session) == 72, "create_session size");
_Static_assert(offsetof(struct dmb_liveupdate_ioctl_create_session, fd) == 4, "create_session.fd");
_Static_assert(offsetof(struct dmb_liveupdate_ioctl_create_session, name) == 8,
	       "create_session.name");
_Static_assert(sizeof(struct dmb_liveupdate_ioctl_retrieve_session) == 72, "retrieve_session size");
_Static_assert(offsetof(struct dmb_liveupdate_ioctl_retrieve_session, fd) == 4,
	       "retrieve_session.fd");
_Static_assert(offsetof(struct dmb_liveupdate_ioctl_retrieve_session, name) == 8,
	       "retrieve_session.name");
_Static_assert(sizeof(struct dmb_liveupdate_session_preserve_fd) == 16, "preserve_fd size");
_Static_assert(offsetof(struct dmb_liveupdate_session_preserve_fd, fd) == 4, "preserve_fd.fd");
_Static_assert(offsetof(struct dmb_liveupdate_session_preserve_fd, token) == 8,
	       "preserve_fd.token");
_Static_assert(sizeof(struct dmb_liveupdate_session_retrieve_fd) == 16, "retrieve_fd size");
_Static_assert(offsetof(struct dmb_liveupdate_session_retrieve_fd, fd) == 4, "retrieve_fd.fd");
_Static_assert(offsetof(struct dmb_liveupdate_session_retrieve_fd, token) == 8,
	       "retrieve_fd.token");
_Static_assert(sizeof(struct dmb_liveupdate_session_finish) == 8, "session_finish size");
_Static_assert(offsetof(struct dmb_liveupdate_session_finish, reserved) == 4,
	       "session_finish.reserved");
