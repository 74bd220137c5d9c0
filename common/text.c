/* Text shared by the daemon and the client side: see text.h. */
#include "text.h"

#include <inttypes.h>
#include <stdio.h>

const char *dmb_common_code_name(int code, const char *zero)
{
	static const char *const names[] = {
		NULL, "invalid-argument", "permission-denied", "not-found",
		"already-exists", "resource-exhausted", "failed-precondition",
		"unavailable", "internal", "unimplemented", "out-of-range",
	};
	if (code == 0)
		return zero;
	if (code < 0 || (unsigned)code >= sizeof(names) / sizeof(names[0]))
		return "unknown";
	return names[code];
}

const char *dmb_common_fmt_bytes(uint64_t v, char *buf, size_t cap)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double d = (double)v;
	size_t u = 0;

	if (v < 1024) {
		snprintf(buf, cap, "%" PRIu64 " B", v);
		return buf;
	}
	/* 1023.97 KiB would print as "1024.0 KiB": move up a unit first. */
	while (d >= 1024.0 - 0.05 && u + 1 < sizeof(units) / sizeof(units[0])) {
		d /= 1024.0;
		u++;
	}
	snprintf(buf, cap, "%.1f %s", d, units[u]);
	return buf;
}
