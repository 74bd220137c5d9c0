/* Small helpers shared by every module: cleanup attributes, ownership
 * transfer, container_of, overflow-checked arithmetic. */
#pragma once

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define DMB_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define dmb_container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))

static inline void dmb_freep(void *p)
{
	free(*(void **)p);
}

static inline void dmb_closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(dmb_freep)
#define _cleanup_close_ _cleanup_(dmb_closep)

/* Hand ownership on: returns the value and leaves the variable empty so the
 * cleanup handler does nothing. */
#define TAKE_PTR(p)                          \
	({                                   \
		__typeof__(p) _p = (p);      \
		(p) = NULL;                  \
		_p;                          \
	})
#define TAKE_FD(fd)                          \
	({                                   \
		int _fd = (fd);              \
		(fd) = -1;                   \
		_fd;                         \
	})

/* Closes fd if valid and returns -1, for `x = safe_close(x)`. */
static inline int safe_close(int fd)
{
	if (fd >= 0)
		dmb_closep(&fd);
	return -1;
}

/* end = start + len - 1 without wrapping; false on overflow or len == 0. */
static inline int dmb_range_last(uint64_t start, uint64_t len, uint64_t *last)
{
	if (len == 0 || start + (len - 1) < start)
		return 0;
	*last = start + (len - 1);
	return 1;
}

static inline int dmb_is_aligned(uint64_t v, uint64_t align)
{
	return align <= 1 || (v & (align - 1)) == 0;
}

#define DMB_LIKELY(x) __builtin_expect(!!(x), 1)
#define DMB_UNLIKELY(x) __builtin_expect(!!(x), 0)
