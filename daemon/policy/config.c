#include "policy/config.h"
#include "dmb-build.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#include "util/log.h"
#include "util/macro.h"

void config_defaults(struct dmb_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->socket_path, sizeof(cfg->socket_path), "%s", DMB_DEFAULT_SOCKET);
	cfg->socket_mode = 0660;
	snprintf(cfg->backend, sizeof(cfg->backend), "auto");
	cfg->log_level = LOG_INFO;
	cfg->limits = (struct dmb_limits){
		.contexts_per_owner = 64,
		.regions_per_context = 1024,
		.mappings_per_context = 4u << 20,
		.devices_per_context = 32,
		/* Fds the broker holds for one uid: about 2,000 regions on the
		 * sim and iommufd backends, a sixteenth of the unit's
		 * LimitNOFILE (see DMB_UNIT_NOFILE). */
		.fds = 4096,
	};
	cfg->fd_store_max = DMB_UNIT_FDSTORE_MAX;
	cfg->max_sessions = 4096;
	cfg->grace_period_s = 300;
	snprintf(cfg->handoff_preserver, sizeof(cfg->handoff_preserver), "auto");
	snprintf(cfg->handoff_session, sizeof(cfg->handoff_session), "dmabroker");
	cfg->handoff_grace_s = 300;
	cfg->session_queue_bytes = 4u << 20;
	cfg->workers = DMB_WORKERS_AUTO;
	cfg->worker_min_bytes = 1u << 20;
	cfg->p2p_poll_interval_ms = 100;
	cfg->p2p = false;
	cfg->p2p_cross_context = true;
	cfg->n_admin_uids = 1;
	cfg->admin_uids[0] = 0;
	cfg->metrics_interval_s = 15;
}

enum dmb_p2p_cacheable p2p_cacheable_effective(const struct dmb_config *cfg, bool mem_encrypted)
{
	if (cfg->p2p_type1 != DMB_P2P_CACHEABLE_UNSET)
		return cfg->p2p_type1;
	return mem_encrypted ? DMB_P2P_CACHEABLE_REFUSE : DMB_P2P_CACHEABLE_WARN;
}

const char *p2p_cacheable_name(enum dmb_p2p_cacheable v)
{
	switch (v) {
	case DMB_P2P_CACHEABLE_ALLOW: return "allow";
	case DMB_P2P_CACHEABLE_WARN: return "warn";
	case DMB_P2P_CACHEABLE_REFUSE: return "refuse";
	default: return "unset";
	}
}

int config_parse_log_level(const char *s)
{
	static const struct { const char *n; int l; } levels[] = {
		{ "error", LOG_ERR }, { "warning", LOG_WARNING }, { "notice", LOG_NOTICE },
		{ "info", LOG_INFO }, { "debug", LOG_DEBUG },
	};
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcasecmp(s, levels[i].n) == 0)
			return levels[i].l;
	return -EINVAL;
}

static int parse_u64(const char *v, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 0);
	if (errno || end == v || *end || v[0] == '-' || x > max)
		return -EINVAL;
	*out = x;
	return 0;
}

static bool bool_value(const char *v, bool *out)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "on"))
		*out = true;
	else if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
		 !strcasecmp(v, "off"))
		*out = false;
	else
		return false;
	return true;
}

static bool allow_entry_valid(const char *t)
{
	if (device_bdf_valid(t))
		return true;
	/* vendor:device, four lower-case hex digits each */
	if (strlen(t) != 9 || t[4] != ':')
		return false;
	for (int i = 0; i < 9; i++)
		if (i != 4 && !strchr("0123456789abcdef", t[i]))
			return false;
	return true;
}

enum {
	R_CONTEXTS = 1u << 0, R_REGIONS = 1u << 1, R_MAPPINGS = 1u << 2, R_DEVMAX = 1u << 3,
	R_PINNED = 1u << 4, R_ADMIN = 1u << 5, R_P2P = 1u << 6, R_XCTX = 1u << 7,
	R_XCLIENT = 1u << 8, R_ALLOW = 1u << 9, R_FDS = DMB_RULE_FDS, R_NOIOMMU = 1u << 11,
};

/* "8G", "512M", "4096": bytes with an optional K/M/G/T suffix (powers of 2). */
static int parse_size(const char *v, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 0);
	if (errno || end == v || v[0] == '-')
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case 'K': case 'k': shift = 10; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'G': case 'g': shift = 30; end++; break;
	case 'T': case 't': shift = 40; end++; break;
	default: break;
	}
	if (*end || (shift && x > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)x << shift;
	return 0;
}

struct load_state {
	struct dmb_config *cfg;
	FILE *f;
	char section[64];    /* the rule section being filled, if any */
	struct dmb_rule *rule;
	int line;          /* the line being parsed */
	int why_line;      /* the line `why` is about (the first bad key) */
	char why[160];
};

/* ini_parse_stream reader that counts lines, so a key's error can be tied
 * to its line: the parser goes on after an error and reports the first. */
static char *read_line(char *str, int num, void *stream)
{
	struct load_state *st = stream;
	char *r = fgets(str, num, st->f);
	if (r)
		st->line++;
	return r;
}

static int on_key(void *user, const char *section, const char *key, const char *value)
{
	struct load_state *st = user;
	struct dmb_config *cfg = st->cfg;
	uint64_t u;

#define WHY(...)                                                          \
	(st->why_line ? 0                                                 \
		      : (st->why_line = st->line,                         \
			 snprintf(st->why, sizeof(st->why), __VA_ARGS__), 0))
	if (!strcmp(section, "daemon")) {
		if (!strcmp(key, "socket")) {
			if (strlen(value) >= sizeof(cfg->socket_path) || value[0] != '/')
				return WHY("socket must be an absolute path shorter than %zu bytes",
					   sizeof(cfg->socket_path));
			snprintf(cfg->socket_path, sizeof(cfg->socket_path), "%s", value);
		} else if (!strcmp(key, "socket_mode")) {
			if (parse_u64(value, 0777, &u) < 0)
				return WHY("socket_mode must be an octal mode such as 0660");
			cfg->socket_mode = (unsigned)u;
		} else if (!strcmp(key, "backend")) {
			if (strcmp(value, "auto") && strcmp(value, "iommufd") && strcmp(value, "vfio-type1") &&
			    strcmp(value, "sim"))
				return WHY("backend must be auto, iommufd, vfio-type1 or sim");
			snprintf(cfg->backend, sizeof(cfg->backend), "%s", value);
		} else if (!strcmp(key, "log_level")) {
			int l = config_parse_log_level(value);
			if (l < 0)
				return WHY("log_level must be error, warning, notice, info or debug");
			cfg->log_level = l;
		} else if (!strcmp(key, "sim_populate")) {
			if (!bool_value(value, &cfg->sim_populate))
				return WHY("sim_populate must be yes or no");
		} else if (!strcmp(key, "workers")) {
			if (!strcmp(value, "auto"))
				cfg->workers = DMB_WORKERS_AUTO;
			else if (parse_u64(value, DMB_MAX_WORKERS, &u) < 0)
				return WHY("workers must be auto or a number from 0 to %u", DMB_MAX_WORKERS);
			else
				cfg->workers = (uint32_t)u;
		} else if (!strcmp(key, "worker_min_bytes")) {
			if (parse_size(value, &u) < 0)
				return WHY("worker_min_bytes must be a size in bytes (K, M, G suffixes)");
			cfg->worker_min_bytes = u;
		} else
			return WHY("unknown key '%s' in [daemon]", key);
	} else if (!strcmp(section, "limits")) {
		struct { const char *k; uint64_t max; void *p; int bits; } keys[] = {
			{ "contexts_per_client", 1u << 20, &cfg->limits.contexts_per_owner, 32 },
			{ "regions_per_context", 1u << 20, &cfg->limits.regions_per_context, 32 },
			{ "mappings_per_context", 1ull << 32, &cfg->limits.mappings_per_context, 64 },
			{ "devices_per_context", 1024, &cfg->limits.devices_per_context, 32 },
			{ "sessions", 1u << 20, &cfg->max_sessions, 32 },
			{ "session_queue_bytes", 1ull << 32, &cfg->session_queue_bytes, 64 },
			{ "pinned_bytes", UINT64_MAX, &cfg->limits.pinned_bytes, 64 },
			{ "pinned_bytes_total", UINT64_MAX, &cfg->pinned_bytes_total, 64 },
			{ "fds", 1u << 24, &cfg->limits.fds, 64 },
		};
		size_t i;
		for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (!strcmp(key, keys[i].k))
				break;
		if (i == sizeof(keys) / sizeof(keys[0]))
			return WHY("unknown key '%s' in [limits]", key);
		if (!strncmp(key, "pinned_bytes", 12) ? parse_size(value, &u) < 0
						       : parse_u64(value, keys[i].max, &u) < 0)
			return WHY("%s must be a number from 0 to %llu", key,
				   (unsigned long long)keys[i].max);
		if (keys[i].bits == 32)
			*(uint32_t *)keys[i].p = (uint32_t)u;
		else
			*(uint64_t *)keys[i].p = u;
	} else if (!strcmp(section, "devices")) {
		if (strcmp(key, "allow"))
			return WHY("unknown key '%s' in [devices]", key);
		char buf[4096];
		snprintf(buf, sizeof(buf), "%s", value);
		for (char *save = NULL, *t = strtok_r(buf, " \t,", &save); t;
		     t = strtok_r(NULL, " \t,", &save)) {
			if (!allow_entry_valid(t))
				return WHY("'%s' is neither a PCI address dddd:bb:dd.f nor vendor:device", t);
			if (cfg->n_allow >= DMB_MAX_ALLOW)
				return WHY("more than %d device entries", DMB_MAX_ALLOW);
			snprintf(cfg->allow[cfg->n_allow++], sizeof(cfg->allow[0]), "%s", t);
		}
	} else if (!strcmp(section, "default") || !strncmp(section, "uid ", 4) ||
		   !strncmp(section, "gid ", 4)) {
		if (!st->rule || strcmp(st->section, section)) {
			/* a new policy section */
			if (cfg->n_rules >= DMB_MAX_RULES)
				return WHY("more than %d policy sections", DMB_MAX_RULES);
			struct dmb_rule *r = &cfg->rules[cfg->n_rules];
			memset(r, 0, sizeof(*r));
			if (!strcmp(section, "default")) {
				r->kind = DMB_RULE_DEFAULT;
			} else {
				if (parse_u64(section + 4, UINT32_MAX - 1, &u) < 0)
					return WHY("[%s]: the id must be a number", section);
				r->kind = section[0] == 'u' ? DMB_RULE_UID : DMB_RULE_GID;
				r->id = (uint32_t)u;
			}
			cfg->n_rules++;
			st->rule = r;
			snprintf(st->section, sizeof(st->section), "%s", section);
		}
		struct dmb_rule *r = st->rule;
		bool b;
		if (!strcmp(key, "devices")) {
			char buf[2048];
			r->n_allow = 0;
			snprintf(buf, sizeof(buf), "%s", value);
			for (char *save = NULL, *t = strtok_r(buf, " \t,", &save); t;
			     t = strtok_r(NULL, " \t,", &save)) {
				if (!allow_entry_valid(t))
					return WHY("'%s' is neither a PCI address dddd:bb:dd.f nor vendor:device", t);
				if (r->n_allow >= DMB_MAX_RULE_ALLOW)
					return WHY("more than %d devices in one section", DMB_MAX_RULE_ALLOW);
				snprintf(r->allow[r->n_allow++], sizeof(r->allow[0]), "%s", t);
			}
			r->set |= R_ALLOW;
		} else if (!strcmp(key, "pinned_bytes")) {
			if (parse_size(value, &r->lim.pinned_bytes) < 0)
				return WHY("pinned_bytes must be a size such as 8G (0: no limit)");
			r->set |= R_PINNED;
		} else if (!strcmp(key, "contexts") || !strcmp(key, "regions_per_context") ||
			   !strcmp(key, "devices_per_context")) {
			if (parse_u64(value, 1u << 20, &u) < 0)
				return WHY("%s must be a number from 0 to %u", key, 1u << 20);
			if (key[0] == 'c') {
				r->lim.contexts_per_owner = (uint32_t)u;
				r->set |= R_CONTEXTS;
			} else if (key[0] == 'r') {
				r->lim.regions_per_context = (uint32_t)u;
				r->set |= R_REGIONS;
			} else {
				r->lim.devices_per_context = (uint32_t)u;
				r->set |= R_DEVMAX;
			}
		} else if (!strcmp(key, "fds")) {
			if (parse_u64(value, 1u << 24, &u) < 0)
				return WHY("fds must be a number from 0 to %u (0: no limit)", 1u << 24);
			r->lim.fds = u;
			r->set |= R_FDS;
		} else if (!strcmp(key, "mappings_per_context")) {
			if (parse_u64(value, 1ull << 32, &u) < 0)
				return WHY("mappings_per_context must be a number from 0 to %llu", 1ull << 32);
			r->lim.mappings_per_context = u;
			r->set |= R_MAPPINGS;
		} else if (!strcmp(key, "noiommu")) {
			if (!bool_value(value, &b))
				return WHY("noiommu must be yes or no");
			r->noiommu = b;
			r->set |= R_NOIOMMU;
		} else if (!strcmp(key, "admin") || !strcmp(key, "p2p") ||
			   !strcmp(key, "p2p_cross_context") || !strcmp(key, "p2p_cross_client")) {
			if (!bool_value(value, &b))
				return WHY("%s must be yes or no", key);
			if (!strcmp(key, "admin")) {
				r->admin = b;
				r->set |= R_ADMIN;
			} else if (!strcmp(key, "p2p")) {
				r->p2p = b;
				r->set |= R_P2P;
			} else if (!strcmp(key, "p2p_cross_context")) {
				r->p2p_cross_context = b;
				r->set |= R_XCTX;
			} else {
				r->p2p_cross_client = b;
				r->set |= R_XCLIENT;
			}
		} else
			return WHY("unknown key '%s' in [%s]", key, section);
	} else if (!strcmp(section, "persist")) {
		if (!strcmp(key, "fd_store_max")) {
			if (parse_u64(value, 1u << 24, &u) < 0 || u < 1)
				return WHY("fd_store_max must be the unit's FileDescriptorStoreMax, from 1 to %u",
					   1u << 24);
			cfg->fd_store_max = u;
			return 1;
		}
		if (strcmp(key, "grace_period_s"))
			return WHY("unknown key '%s' in [persist]", key);
		if (parse_u64(value, 86400 * 30, &u) < 0)
			return WHY("grace_period_s must be a number of seconds up to 30 days");
		cfg->grace_period_s = (uint32_t)u;
	} else if (!strcmp(section, "handoff")) {
		if (!strcmp(key, "preserver")) {
			bool ok = !strcmp(value, "auto") || !strcmp(value, "luo") || !strcmp(value, "none") ||
				  (!strncmp(value, "luo:/", 5) && strlen(value) > 5) ||
				  (!strncmp(value, "sim:/", 5) && strlen(value) > 5);
			if (!ok || strlen(value) >= sizeof(cfg->handoff_preserver))
				return WHY("preserver must be auto, luo, luo:/PATH, sim:/SOCKET or none");
			snprintf(cfg->handoff_preserver, sizeof(cfg->handoff_preserver), "%s", value);
		} else if (!strcmp(key, "session_name")) {
			size_t n = strlen(value);
			bool ok = n >= 1 && n <= 63;
			for (size_t i = 0; ok && i < n; i++)
				ok = value[i] > 0x20 && value[i] < 0x7f;
			if (!ok)
				return WHY("session_name must be 1 to 63 printable ASCII characters without spaces");
			snprintf(cfg->handoff_session, sizeof(cfg->handoff_session), "%s", value);
		} else if (!strcmp(key, "grace_period_s")) {
			if (parse_u64(value, 86400 * 30, &u) < 0)
				return WHY("grace_period_s must be a number of seconds up to 30 days");
			cfg->handoff_grace_s = (uint32_t)u;
		} else {
			return WHY("unknown key '%s' in [handoff]", key);
		}
	} else if (!strcmp(section, "p2p")) {
		if (!strcmp(key, "poll_interval_ms")) {
			if (parse_u64(value, 60000, &u) < 0 || u < 1)
				return WHY("poll_interval_ms must be from 1 to 60000");
			cfg->p2p_poll_interval_ms = (uint32_t)u;
		} else if (!strcmp(key, "cross_client")) {
			if (!bool_value(value, &cfg->p2p_cross_client))
				return WHY("cross_client must be yes or no");
		} else if (!strcmp(key, "allow")) {
			if (!bool_value(value, &cfg->p2p))
				return WHY("allow must be yes or no");
		} else if (!strcmp(key, "cross_context")) {
			if (!bool_value(value, &cfg->p2p_cross_context))
				return WHY("cross_context must be yes or no");
		} else if (!strcmp(key, "type1")) {
			if (!strcmp(value, "allow"))
				cfg->p2p_type1 = DMB_P2P_CACHEABLE_ALLOW;
			else if (!strcmp(value, "warn"))
				cfg->p2p_type1 = DMB_P2P_CACHEABLE_WARN;
			else if (!strcmp(value, "refuse"))
				cfg->p2p_type1 = DMB_P2P_CACHEABLE_REFUSE;
			else
				return WHY("type1 must be allow, warn or refuse");
		} else
			return WHY("unknown key '%s' in [p2p]", key);
	} else if (!strcmp(section, "sim") && !strcmp(key, "p2p_attrs")) {
		if (!strcmp(value, "mmio"))
			cfg->sim_p2p_attr = 0;
		else if (!strcmp(value, "cacheable"))
			cfg->sim_p2p_attr = 1;
		else
			return WHY("p2p_attrs must be mmio (as iommufd maps a peer BAR) or cacheable "
				   "(as vfio-type1 does)");
	} else if (!strcmp(section, "sim")) {
		bool noiommu = !strcmp(key, "noiommu_devices");
		if (strcmp(key, "devices") && !noiommu)
			return WHY("unknown key '%s' in [sim]", key);
		size_t *n = noiommu ? &cfg->n_sim_noiommu : &cfg->n_sim_devices;
		char (*list)[16] = noiommu ? cfg->sim_noiommu : cfg->sim_devices;
		*n = 0;
		char buf[1024];
		snprintf(buf, sizeof(buf), "%s", value);
		for (char *save = NULL, *t = strtok_r(buf, " \t,", &save); t;
		     t = strtok_r(NULL, " \t,", &save)) {
			if (!device_bdf_valid(t))
				return WHY("'%s' is not a PCI address dddd:bb:dd.f", t);
			if (*n >= 16)
				return WHY("more than 16 simulated devices");
			snprintf(list[(*n)++], sizeof(list[0]), "%s", t);
		}
	} else if (!strcmp(section, "metrics")) {
		if (!strcmp(key, "textfile")) {
			size_t n = strlen(value);
			if (n && (value[0] != '/' || n >= sizeof(cfg->metrics_textfile) ||
				  value[n - 1] == '/'))
				return WHY("textfile must be an absolute file path shorter than %zu "
					   "bytes (or empty: no metrics file)", sizeof(cfg->metrics_textfile));
			snprintf(cfg->metrics_textfile, sizeof(cfg->metrics_textfile), "%s", value);
		} else if (!strcmp(key, "interval_s")) {
			if (parse_u64(value, 3600, &u) < 0 || u < 1)
				return WHY("interval_s must be from 1 to 3600 seconds");
			cfg->metrics_interval_s = (uint32_t)u;
		} else
			return WHY("unknown key '%s' in [metrics]", key);
	} else if (!strcmp(section, "admin")) {
		if (strcmp(key, "uids"))
			return WHY("unknown key '%s' in [admin]", key);
		cfg->n_admin_uids = 0;
		char buf[1024];
		snprintf(buf, sizeof(buf), "%s", value);
		for (char *save = NULL, *t = strtok_r(buf, " \t,", &save); t;
		     t = strtok_r(NULL, " \t,", &save)) {
			if (parse_u64(t, UINT32_MAX - 1, &u) < 0)
				return WHY("'%s' is not a uid", t);
			if (cfg->n_admin_uids >= DMB_MAX_ADMINS)
				return WHY("more than %d admin uids", DMB_MAX_ADMINS);
			cfg->admin_uids[cfg->n_admin_uids++] = (uid_t)u;
		}
	} else
		return WHY("unknown section [%s]", section);
#undef WHY
	return 1;
}

int config_load(struct dmb_config *cfg, const char *path, struct dmb_err *e)
{
	/* Parse into a copy: a bad file leaves cfg exactly as it was. */
	_cleanup_free_ struct dmb_config *tmp = malloc(sizeof(*tmp));
	if (!tmp)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	*tmp = *cfg;
	struct load_state st = { .cfg = tmp };
	FILE *f = fopen(path, "re");
	if (!f)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, errno, "%s: cannot open: %m", path);
	st.f = f;
	int line = ini_parse_stream(read_line, &st, on_key, &st);
	fclose(f);
	if (line != 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL, "%s:%d: %s", path, line,
				line == st.why_line ? st.why : "syntax error");
	*cfg = *tmp;
	return 0;
}

static int conf_filter(const struct dirent *d)
{
	size_t n = strlen(d->d_name);
	return d->d_name[0] != '.' && n > 5 && !strcmp(d->d_name + n - 5, ".conf");
}

int config_load_tree(struct dmb_config *cfg, const char *path, struct dmb_err *e)
{
	struct dmb_config *tmp = malloc(sizeof(*tmp));
	if (!tmp)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	*tmp = *cfg;
	int r = config_load(tmp, path, e);
	char dir[512];
	snprintf(dir, sizeof(dir), "%s.d", path);
	struct dirent **names = NULL;
	int n = r < 0 ? 0 : scandir(dir, &names, conf_filter, alphasort);
	for (int i = 0; i < n; i++) {
		char file[1024];
		snprintf(file, sizeof(file), "%s/%s", dir, names[i]->d_name);
		if (r == 0)
			r = config_load(tmp, file, e);
		free(names[i]);
	}
	free(names);
	if (r == 0)
		*cfg = *tmp;
	free(tmp);
	return r;
}

void config_resolve(const struct dmb_config *cfg, uid_t uid, gid_t gid,
		    struct dmb_client_policy *p)
{
	*p = (struct dmb_client_policy){
		.limits = cfg->limits,
		.admin = config_is_admin(cfg, uid),
		.p2p = cfg->p2p,
		.p2p_cross_context = cfg->p2p_cross_context,
		.p2p_cross_client = cfg->p2p_cross_client,
		.n_allow = cfg->n_allow,
		.allow = cfg->allow,
	};
	/* least specific first: [default], then [gid N], then [uid N] */
	for (int pass = DMB_RULE_DEFAULT; pass <= DMB_RULE_UID; pass++) {
		for (size_t i = 0; i < cfg->n_rules; i++) {
			const struct dmb_rule *r = &cfg->rules[i];
			if ((int)r->kind != pass)
				continue;
			if ((r->kind == DMB_RULE_UID && r->id != (uint32_t)uid) ||
			    (r->kind == DMB_RULE_GID && r->id != (uint32_t)gid))
				continue;
			if (r->set & R_CONTEXTS)
				p->limits.contexts_per_owner = r->lim.contexts_per_owner;
			if (r->set & R_REGIONS)
				p->limits.regions_per_context = r->lim.regions_per_context;
			if (r->set & R_MAPPINGS)
				p->limits.mappings_per_context = r->lim.mappings_per_context;
			if (r->set & R_DEVMAX)
				p->limits.devices_per_context = r->lim.devices_per_context;
			if (r->set & R_PINNED)
				p->limits.pinned_bytes = r->lim.pinned_bytes;
			if (r->set & R_FDS)
				p->limits.fds = r->lim.fds;
			if (r->set & R_ADMIN)
				p->admin = r->admin;
			if (r->set & R_P2P)
				p->p2p = r->p2p;
			if (r->set & R_XCTX)
				p->p2p_cross_context = r->p2p_cross_context;
			if (r->set & R_XCLIENT)
				p->p2p_cross_client = r->p2p_cross_client;
			if (r->set & R_NOIOMMU)
				p->noiommu = r->noiommu;
			if (r->set & R_ALLOW) {
				p->n_allow = r->n_allow;
				p->allow = r->allow;
			}
		}
	}
}

bool config_grants_noiommu(const struct dmb_config *cfg)
{
	for (size_t i = 0; i < cfg->n_rules; i++)
		if ((cfg->rules[i].set & R_NOIOMMU) && cfg->rules[i].noiommu)
			return true;
	return false;
}

bool config_is_admin(const struct dmb_config *cfg, uid_t uid)
{
	for (size_t i = 0; i < cfg->n_admin_uids; i++)
		if (cfg->admin_uids[i] == uid)
			return true;
	return false;
}

bool device_bdf_valid(const char *bdf)
{
	/* DDDD:BB:DD.F */
	static const char shape[] = "xxxx:xx:xx.x";
	if (!bdf || strlen(bdf) != sizeof(shape) - 1)
		return false;
	for (size_t i = 0; shape[i]; i++) {
		if (shape[i] == 'x') {
			if (!isxdigit((unsigned char)bdf[i]) || isupper((unsigned char)bdf[i]))
				return false;
		} else if (bdf[i] != shape[i])
			return false;
	}
	unsigned dev = (unsigned)strtoul(bdf + 8, NULL, 16), fn = (unsigned)(bdf[11] - '0');
	return dev < 32 && bdf[11] >= '0' && fn < 8;
}

static bool read_id(const char *bdf, const char *what, char out[5])
{
	char path[128];
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", bdf, what);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	char buf[16] = "";
	bool ok = fgets(buf, sizeof(buf), f) && strncmp(buf, "0x", 2) == 0 && strlen(buf) >= 6;
	fclose(f);
	if (ok)
		snprintf(out, 5, "%.4s", buf + 2);
	return ok;
}

bool config_device_allowed(const struct dmb_client_policy *pol, const char *bdf)
{
	char ven[5] = "", dev[5] = "", vd[10] = "";
	bool have_ids = false, tried = false;

	for (size_t i = 0; i < pol->n_allow; i++) {
		const char *a = pol->allow[i];
		if (strlen(a) == 12) {
			if (!strcmp(a, bdf))
				return true;
			continue;
		}
		if (!tried) {
			tried = true;
			have_ids = read_id(bdf, "vendor", ven) && read_id(bdf, "device", dev);
			snprintf(vd, sizeof(vd), "%s:%s", ven, dev);
		}
		if (have_ids && !strcmp(a, vd))
			return true;
	}
	return false;
}
