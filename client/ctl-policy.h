/* dmabrokerctl policy check: validates a broker configuration offline with
 * the daemon's own parser (daemon/policy/config.c), so what it accepts is exactly
 * what dmabrokerd would load at start or on SIGHUP. Kept in its own file
 * because the daemon's headers and the library's cannot share one
 * translation unit (both define struct dmb_range and dmb_iova_info). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* A client identity to resolve the policy for (--uid/--gid). */
struct ctl_ident {
	uint32_t uid;
	uint32_t gid;
};

/* Loads file and its file.d/ drop-ins. Valid: prints "FILE: ok (N policy
 * sections)" (or JSON), and with ident what that client would be granted;
 * returns EXIT_OK. Invalid: nothing on stdout, the daemon's "file:line:
 * reason" on stderr, EXIT_REFUSED. */
int ctl_policy_check(const char *file, bool json, const struct ctl_ident *ident);
