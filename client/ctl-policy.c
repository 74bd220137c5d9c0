/* dmabrokerctl policy check: see ctl-policy.h. */
#include "ctl-policy.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/config.h"
#include "ctl-output.h"
#include "util/err.h"

/* The policy sections that apply to uid/gid, in the order config_resolve()
 * applies them: [default], then [gid N], then [uid N]; within a kind, file
 * order (drop-ins after the main file). */
static size_t matching_rules(const struct dmb_config *cfg, uint32_t uid, uint32_t gid,
			     const struct dmb_rule **out)
{
	size_t n = 0;

	for (int pass = DMB_RULE_DEFAULT; pass <= DMB_RULE_UID; pass++)
		for (size_t i = 0; i < cfg->n_rules; i++) {
			const struct dmb_rule *r = &cfg->rules[i];
			if ((int)r->kind != pass)
				continue;
			if ((r->kind == DMB_RULE_UID && r->id != uid) ||
			    (r->kind == DMB_RULE_GID && r->id != gid))
				continue;
			out[n++] = r;
		}
	return n;
}

static void rule_name(const struct dmb_rule *r, char *buf, size_t cap)
{
	if (r->kind == DMB_RULE_DEFAULT)
		snprintf(buf, cap, "default");
	else
		snprintf(buf, cap, "%s %" PRIu32, r->kind == DMB_RULE_UID ? "uid" : "gid", r->id);
}

/* Warns (stderr, one line each) about fds grants the shipped unit cannot
 * honour: more than the broker's fd budget under it (LimitNOFILE, the fd
 * store) lets one uid take every fd, and 0 sets no per-uid bound at all.
 * Returns how many. */
static size_t warn_fds(const struct dmb_config *cfg, const char *file, struct json *j)
{
	uint64_t nofile = DMB_UNIT_NOFILE - DMB_FD_RESERVE;
	uint64_t store = cfg->fd_store_max > DMB_FDSTORE_RESERVE ? cfg->fd_store_max - DMB_FDSTORE_RESERVE : 0;
	uint64_t budget = nofile < store ? nofile : store;
	size_t n = 0;
	char name[32], msg[256];
	for (size_t i = 0; i <= cfg->n_rules; i++) {
		uint64_t fds;
		if (i == cfg->n_rules) {
			fds = cfg->limits.fds;
			snprintf(name, sizeof(name), "limits");
		} else {
			if (!(cfg->rules[i].set & DMB_RULE_FDS))
				continue;
			fds = cfg->rules[i].lim.fds;
			rule_name(&cfg->rules[i], name, sizeof(name));
		}
		if (fds == 0)
			snprintf(msg, sizeof(msg), "[%s] fds = 0: no per-uid limit, one uid can take the "
				 "broker's whole fd budget (%" PRIu64 ")", name, budget);
		else if (fds > budget)
			snprintf(msg, sizeof(msg), "[%s] fds = %" PRIu64 " exceeds the broker's fd budget "
				 "under the shipped unit (%" PRIu64 ": LimitNOFILE=%u and fd_store_max %" PRIu64
				 " less reserves): one uid can take every fd", name, fds, budget,
				 DMB_UNIT_NOFILE, cfg->fd_store_max);
		else
			continue;
		n++;
		if (j)
			json_str(j, NULL, msg);
		else
			fprintf(stderr, "%s: warning: %s\n", file, msg);
	}
	return n;
}

static const char *yes_no(bool b)
{
	return b ? "yes" : "no";
}

static void grant_human(const struct dmb_config *cfg, const struct ctl_ident *id,
			const struct dmb_client_policy *p)
{
	const struct dmb_rule *rules[DMB_MAX_RULES];
	size_t n = matching_rules(cfg, id->uid, id->gid, rules);
	const struct dmb_limits *l = &p->limits;
	char b[32], name[32];

	printf("uid %" PRIu32 " gid %" PRIu32 " would be granted:\n", id->uid, id->gid);
	printf("  sections:             ");
	if (!n)
		printf("(none: the global settings)");
	for (size_t i = 0; i < n; i++) {
		rule_name(rules[i], name, sizeof(name));
		printf("%s[%s]", i ? " " : "", name);
	}
	printf("\n  admin:                %s\n", yes_no(p->admin));
	printf("  devices:              ");
	if (!p->n_allow)
		printf("(none)");
	for (size_t i = 0; i < p->n_allow; i++)
		printf("%s%s", i ? " " : "", p->allow[i]);
	printf("\n  p2p:                  %s (cross-context %s, cross-client %s)\n", yes_no(p->p2p),
	       yes_no(p->p2p_cross_context), yes_no(p->p2p_cross_client));
	printf("  no-IOMMU contexts:    %s\n",
	       p->noiommu ? "yes (NO isolation: devices without an IOMMU)" : "no");
	char what[256];
	int enc = hostmem_encrypted(NULL, what, sizeof(what));
	printf("  p2p through type1:    %s (%s; this host: %s)\n",
	       p2p_cacheable_name(p2p_cacheable_effective(cfg, enc > 0)),
	       cfg->p2p_type1 ? "[p2p] type1" : "the default", what);
	printf("  contexts:             %" PRIu32 "\n", l->contexts_per_owner);
	printf("  regions per context:  %" PRIu32 "\n", l->regions_per_context);
	printf("  mappings per context: %" PRIu64 "\n", l->mappings_per_context);
	printf("  devices per context:  %" PRIu32 "\n", l->devices_per_context);
	if (l->pinned_bytes)
		printf("  pinned bytes:         %s (%" PRIu64 " bytes)\n",
		       fmt_bytes(l->pinned_bytes, b, sizeof(b)), l->pinned_bytes);
	else
		printf("  pinned bytes:         no limit\n");
	if (l->fds)
		printf("  fds:                  %" PRIu64 "\n", l->fds);
	else
		printf("  fds:                  no limit\n");
}

static void grant_json(struct json *j, const struct dmb_config *cfg, const struct ctl_ident *id,
		       const struct dmb_client_policy *p)
{
	const struct dmb_rule *rules[DMB_MAX_RULES];
	size_t n = matching_rules(cfg, id->uid, id->gid, rules);
	const struct dmb_limits *l = &p->limits;
	char name[32];

	json_open(j, "grant", '{');
	json_u64(j, "uid", id->uid);
	json_u64(j, "gid", id->gid);
	json_open(j, "sections", '[');
	for (size_t i = 0; i < n; i++) {
		rule_name(rules[i], name, sizeof(name));
		json_str(j, NULL, name);
	}
	json_close(j, ']');
	json_bool(j, "admin", p->admin);
	json_open(j, "devices", '[');
	for (size_t i = 0; i < p->n_allow; i++)
		json_str(j, NULL, p->allow[i]);
	json_close(j, ']');
	json_bool(j, "p2p", p->p2p);
	json_bool(j, "p2p_cross_context", p->p2p_cross_context);
	json_bool(j, "p2p_cross_client", p->p2p_cross_client);
	json_bool(j, "noiommu", p->noiommu);
	char what[256];
	/* what MapPeer of a backend with cacheable P2P attributes gets here */
	json_str(j, "p2p_type1", p2p_cacheable_name(p2p_cacheable_effective(
					  cfg, hostmem_encrypted(NULL, what, sizeof(what)) > 0)));
	json_open(j, "limits", '{');
	json_u64(j, "contexts", l->contexts_per_owner);
	json_u64(j, "regions_per_context", l->regions_per_context);
	json_u64(j, "mappings_per_context", l->mappings_per_context);
	json_u64(j, "devices_per_context", l->devices_per_context);
	json_u64(j, "pinned_bytes", l->pinned_bytes); /* 0: no limit */
	json_u64(j, "fds", l->fds);                   /* 0: no limit */
	json_close(j, '}');
	json_close(j, '}');
}

int ctl_policy_check(const char *file, bool json, const struct ctl_ident *ident)
{
	/* ~45 KiB: the rules' device lists are inline arrays. */
	struct dmb_config *cfg = malloc(sizeof(*cfg));
	struct dmb_err e = { 0 };
	int rc;

	if (!cfg) {
		fprintf(stderr, PROG ": policy check: out of memory\n");
		return EXIT_TRANSPORT;
	}
	config_defaults(cfg);
	if (config_load_tree(cfg, file, &e) < 0) {
		/* The daemon's own sentence: "file:line: reason" (the drop-in's
		 * name when the error is in one), like a compiler's, so editors
		 * can jump to it. */
		fprintf(stderr, "%s\n", e.msg[0] ? e.msg : "the configuration is invalid");
		free(cfg);
		return EXIT_REFUSED;
	}

	struct dmb_client_policy pol;
	if (ident)
		config_resolve(cfg, ident->uid, ident->gid, &pol);
	if (json) {
		struct json j = { .f = stdout };
		json_open(&j, NULL, '{');
		json_str(&j, "file", file);
		json_bool(&j, "ok", true);
		json_u64(&j, "policy_sections", cfg->n_rules);
		json_open(&j, "warnings", '[');
		warn_fds(cfg, file, &j);
		json_close(&j, ']');
		if (ident)
			grant_json(&j, cfg, ident, &pol);
		json_close(&j, '}');
	} else {
		printf("%s: ok (%zu policy section%s)\n", file, cfg->n_rules,
		       cfg->n_rules == 1 ? "" : "s");
		warn_fds(cfg, file, NULL);
		if (ident)
			grant_human(cfg, ident, &pol);
	}
	rc = finish_output();
	free(cfg);
	return rc;
}
