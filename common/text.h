/* common/: the few lines of text that the daemon and the client side both
 * print, written once. Owns: the names of the wire's error codes, and byte
 * counts in binary units. Calls nothing of this tree; compiled into the
 * daemon's policy library and into libdmabroker (hidden: not part of
 * the library's ABI). */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* "invalid-argument", "not-found", ... for a wire ErrorCode; `zero` for 0
 * (none/ok); "unknown" for what the protocol does not define. */
__attribute__((visibility("hidden")))
const char *dmb_common_code_name(int code, const char *zero);
/* "512 B", "1.5 KiB", "2.0 GiB" into buf; returns buf. */
__attribute__((visibility("hidden")))
const char *dmb_common_fmt_bytes(uint64_t v, char *buf, size_t cap);
