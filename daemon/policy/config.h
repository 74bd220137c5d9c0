/* daemon/policy/: what the administrator allows.
 * Owns: the configuration file and its resolution per client (config.c),
 * the limits and the client policy as types (limits.h), and the process
 * sandbox (sandbox.c). config.c with util/err.c and util/log.c is built as
 * libdmbpolicy: all that dmabrokerctl links of the daemon.
 * May call: util/, common/ (and sandbox.c the backend's uapi headers, for
 * the ioctl numbers it allows). Never calls: core/, server/, state/,
 * mgmt/, backend/ code. No circle inside.
 */

/* Daemon configuration: an INI file (libinih) plus command-line overrides.
 * Every key is documented in docs/operations.md and dmabroker.conf(5). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "policy/limits.h"
#include "util/err.h"

#define DMB_MAX_ALLOW 256
#define DMB_MAX_ADMINS 32
#define DMB_MAX_RULES 64
#define DMB_MAX_RULE_ALLOW 32
#define DMB_WORKERS_AUTO UINT32_MAX
#define DMB_MAX_WORKERS 256
/* The shipped unit's LimitNOFILE= and FileDescriptorStoreMax=
 * (systemd/dmabroker.service.in; tests/unit/test_config.c keeps them equal):
 * the defaults must fit inside them. */
#define DMB_UNIT_NOFILE 65536
#define DMB_UNIT_FDSTORE_MAX 65536
/* Fds kept out of every budget: accepting a connection, the fds of a packet
 * being handled (up to 253), admin sessions, the journal (two while it is
 * compacted), a region being stored, the bus, metrics, the preserver and
 * what a restart needs. The fd store's reserve: the journal (two), the host
 * handoff's sessions and spare entries. */
#define DMB_FD_RESERVE 384
#define DMB_FDSTORE_RESERVE 16

/* A policy section: [default], [gid N] or [uid N]. Only the keys it names
 * (bits in `set`) override what less specific sections granted;
 * DMB_RULE_FDS is the bit of `fds` (policy check looks at it). */
#define DMB_RULE_FDS (1u << 10)
struct dmb_rule {
	enum { DMB_RULE_DEFAULT, DMB_RULE_GID, DMB_RULE_UID } kind;
	uint32_t id;
	unsigned set;
	struct dmb_limits lim;
	bool admin, p2p, p2p_cross_context, p2p_cross_client;
	bool noiommu;
	size_t n_allow;
	char allow[DMB_MAX_RULE_ALLOW][16];
};

struct dmb_config {
	char socket_path[108];
	unsigned socket_mode;
	char backend[16];
	int log_level;
	bool sim_populate;
	struct dmb_limits limits;
	uint32_t max_sessions;
	uint32_t grace_period_s;      /* [persist] unclaimed persistent contexts */
	/* [persist] fd_store_max: the unit's FileDescriptorStoreMax= ($FDSTORE
	 * wins where systemd sets it) */
	uint64_t fd_store_max;

	/* [handoff] */
	char handoff_preserver[128];  /* auto, luo, luo:PATH, sim:SOCKET, none */
	char handoff_session[64];     /* the preserver session's name */
	uint32_t handoff_grace_s;     /* unclaimed restored contexts */
	uint64_t session_queue_bytes;
	/* [daemon] workers: threads for long backend calls (DMB_WORKERS_AUTO:
	 * one per CPU; 0: none, everything on the event loop); worker_min_bytes:
	 * maps and unmaps of at least this many bytes go to them. */
	uint32_t workers;
	uint64_t worker_min_bytes;

	/* [devices] allow: BDFs ("0000:01:00.0") or vendor:device ("1234:11e8") */
	size_t n_allow;
	char allow[DMB_MAX_ALLOW][16];

	/* [p2p] */
	uint32_t p2p_poll_interval_ms;
	/* [p2p] type1: P2P mappings the backend makes with cacheable attributes
	 * (DMB_P2P_CACHEABLE_UNSET: refuse where host memory encryption is
	 * active, else warn; p2p_cacheable_effective resolves it) */
	enum dmb_p2p_cacheable p2p_type1;
	bool p2p;
	bool p2p_cross_context;
	bool p2p_cross_client;
	uint64_t pinned_bytes_total;  /* [limits] pinned_bytes_total, 0 = none */

	/* policy sections, in file order (drop-ins after the main file) */
	size_t n_rules;
	struct dmb_rule rules[DMB_MAX_RULES];

	/* [sim] devices, and noiommu_devices: those without an IOMMU */
	size_t n_sim_devices;
	char sim_devices[16][16];
	size_t n_sim_noiommu;
	char sim_noiommu[16][16];
	/* [sim] p2p_attrs: 0 mmio (iommufd's, the default), 1 cacheable
	 * (type1's) */
	int sim_p2p_attr;

	/* [metrics]: Prometheus text file, rewritten every interval_s ("" = off) */
	char metrics_textfile[256];
	uint32_t metrics_interval_s;

	/* [admin] uids */
	size_t n_admin_uids;
	uid_t admin_uids[DMB_MAX_ADMINS];
};

void config_defaults(struct dmb_config *cfg);
/* Loads an INI file over cfg. On a syntax or value error returns a negative
 * errno and names file:line in e. */
int config_load(struct dmb_config *cfg, const char *path, struct dmb_err *e);
/* The main file, then every *.conf in PATH.d/ in name order. */
int config_load_tree(struct dmb_config *cfg, const char *path, struct dmb_err *e);
/* What the policy grants a client with this uid and primary gid:
 * defaults, then [default], then matching [gid N], then [uid N]. */
void config_resolve(const struct dmb_config *cfg, uid_t uid, gid_t gid,
		    struct dmb_client_policy *out);
bool config_is_admin(const struct dmb_config *cfg, uid_t uid);
/* Whether any policy section says `noiommu = yes`. */
bool config_grants_noiommu(const struct dmb_config *cfg);
/* May a client with this policy open the device at bdf (its address, or its
 * vendor:device read from sysfs, is on the allow list)? */
bool config_device_allowed(const struct dmb_client_policy *pol, const char *bdf);
int config_parse_log_level(const char *s);
/* The [p2p] type1 setting in force: the file's, else refuse where host
 * memory encryption is active and warn elsewhere. */
enum dmb_p2p_cacheable p2p_cacheable_effective(const struct dmb_config *cfg, bool mem_encrypted);
const char *p2p_cacheable_name(enum dmb_p2p_cacheable v);

/* hostmem.c: is host memory encryption active (AMD SME: the kernel keeps
 * the "sme" CPU flag only when it runs with SME on)? Reads cpuinfo (NULL:
 * /proc/cpuinfo). 1: active, 0: not, -errno: could not tell (then `what`
 * says why). `what` gets one phrase for the log either way. */
int hostmem_encrypted(const char *cpuinfo, char *what, size_t n);
/* Validates a device address, "DDDD:BB:DD.F" (lower-case hex). */
bool device_bdf_valid(const char *bdf);
