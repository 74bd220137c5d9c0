/* What the policy grants: the limits that bound a principal or a context,
 * and the resolved policy of one client. Plain types, shared by the
 * configuration (policy/config.c, which fills them) and the core (which
 * enforces them); nothing here calls anything. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* contexts_per_owner, pinned_bytes and fds bound a principal (a uid: every
 * session of it and its persistent contexts, account.c); the others one
 * context. */
struct dmb_limits {
	uint32_t contexts_per_owner;
	uint32_t regions_per_context;
	uint64_t mappings_per_context;
	uint32_t devices_per_context;
	uint64_t pinned_bytes;      /* RAM mapped by one principal; 0 = no limit */
	uint64_t fds;               /* the broker's fds held for one principal; 0 = no limit */
};

/* What the policy grants one client, resolved from the configuration's
 * [default], [gid N] and [uid N] sections when it connects and again at
 * every reload. */
struct dmb_client_policy {
	struct dmb_limits limits;
	bool admin;
	bool p2p;                   /* may map peer BARs at all */
	bool p2p_cross_context;     /* peer attached to another of its contexts */
	bool p2p_cross_client;      /* peer of another client, by address */
	/* may create no-IOMMU contexts (devices without an IOMMU: no
	 * isolation at all); only a policy section's `noiommu = yes` grants it */
	bool noiommu;
	size_t n_allow;
	const char (*allow)[16];    /* BDFs and vendor:device; into the loaded config */
};

/* What the broker does with a P2P mapping the backend can only make with
 * cacheable IOMMU attributes (vfio-type1's). */
enum dmb_p2p_cacheable {
	DMB_P2P_CACHEABLE_UNSET = 0,
	DMB_P2P_CACHEABLE_ALLOW,
	DMB_P2P_CACHEABLE_WARN,
	DMB_P2P_CACHEABLE_REFUSE,
};
