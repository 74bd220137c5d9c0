/* Daemon configuration: an INI file (libinih) plus command-line overrides.
 * Every key is documented in docs/operations.md and dmabroker.conf(5). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/core.h"

#define DMB_MAX_ALLOW 256
#define DMB_MAX_ADMINS 32

struct dmb_config {
	char socket_path[108];
	unsigned socket_mode;
	char backend[16];
	int log_level;
	bool sim_populate;
	struct dmb_limits limits;
	uint32_t max_sessions;
	uint64_t session_queue_bytes;

	/* [devices] allow: BDFs ("0000:01:00.0") or vendor:device ("1234:11e8") */
	size_t n_allow;
	char allow[DMB_MAX_ALLOW][16];

	/* [p2p] */
	uint32_t p2p_poll_interval_ms;
	bool p2p_cross_client;

	/* [sim] devices */
	size_t n_sim_devices;
	char sim_devices[16][16];

	/* [admin] uids */
	size_t n_admin_uids;
	uid_t admin_uids[DMB_MAX_ADMINS];
};

void config_defaults(struct dmb_config *cfg);
/* Loads an INI file over cfg. On a syntax or value error returns a negative
 * errno and names file:line in e. */
int config_load(struct dmb_config *cfg, const char *path, struct dmb_err *e);
bool config_is_admin(const struct dmb_config *cfg, uid_t uid);
/* Policy hook for the core: may this owner open the device at bdf? */
bool config_device_allowed(void *cfg, const struct dmb_owner *owner, const char *bdf);
int config_parse_log_level(const char *s);
