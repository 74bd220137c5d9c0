/* The D-Bus management object (see bus.h for the names, docs/operations.md
 * for the introspection XML and what each member means).
 *
 * Event loop: the sd-bus connection is driven from libevent the way sd-event
 * drives it: a read event on sd_bus_get_fd(), a write event while
 * sd_bus_get_events() asks for POLLOUT, and a timer for sd_bus_get_timeout()
 * (method-call timeouts, messages already queued: timeout 0). After every
 * sd_bus_process() round and every signal sent from outside one, rearm()
 * brings the three in line with what sd-bus wants.
 *
 * Authorization: every method is admin-only (the bus has no notion of "a
 * client's own objects": listing is listing everybody's). The caller is
 * admin when its effective uid is 0, or when the policy resolved for its uid
 * and its primary or any supplementary gid says admin (the same rules a
 * socket session gets: [admin] uids, admin = yes in [uid N] / [gid N]).
 * The credentials come from the bus (sd_bus_query_sender_creds: the broker
 * asks the bus driver, one round trip; dbus-daemon answers with what the
 * kernel told it at connect time: SO_PEERCRED and SO_PEERGROUPS). Never
 * SD_BUS_CREDS_AUGMENT: that reads /proc/PID, which can be another process
 * by then, and its reads make calls outside the seccomp allow-list. Refusals are AccessDenied with a sentence
 * and one rate-limited log line naming the caller. */
#include "mgmt/bus.h"
#include "state/handoff.h"

#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <time.h>

#include "dmb-build.h"
#include "server/server.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/macro.h"

#define BUS_ERROR_NOT_FOUND BUS_IFACE ".Error.NotFound"
#define BUS_ERROR_UNAVAILABLE BUS_IFACE ".Error.Unavailable"

struct bus {
	struct server *srv;
	sd_bus *bus;
	sd_bus_slot *slot;
	struct event *ev_read;
	struct event *ev_write;
	struct event *ev_time;
	bool write_armed;
	bool have_last;
	struct server_totals last;  /* what the last PropertiesChanged told */
};

int bus_parse_kind(const char *s)
{
	static const char *const names[] = {
		[BUS_AUTO] = "auto", [BUS_NONE] = "none", [BUS_SYSTEM] = "system", [BUS_USER] = "user",
	};
	for (size_t i = 0; i < DMB_ARRAY_SIZE(names); i++)
		if (strcmp(s, names[i]) == 0)
			return (int)i;
	return -EINVAL;
}

/* ------------------------------------------------------------ event loop */

static void bus_lost(struct bus *b, int r)
{
	log_warning("D-Bus: the connection to the bus failed (%s); the management object is gone "
		    "until the daemon restarts (the socket API is unaffected)", strerror(-r));
	event_del(b->ev_read);
	event_del(b->ev_write);
	event_del(b->ev_time);
	b->slot = sd_bus_slot_unref(b->slot);
	b->bus = sd_bus_close_unref(b->bus);
}

/* Also called from inside sd-bus callbacks (a method that emits a signal):
 * never tears the connection down; a broken one makes the fd readable and
 * process_cb() finds the error. */
static void rearm(struct bus *b)
{
	if (!b->bus)
		return;
	int ev = sd_bus_get_events(b->bus);
	if (ev < 0)
		return;
	bool want_write = (ev & POLLOUT) != 0;
	if (want_write != b->write_armed) {
		if (want_write)
			event_add(b->ev_write, NULL);
		else
			event_del(b->ev_write);
		b->write_armed = want_write;
	}
	uint64_t until = UINT64_MAX;
	if (sd_bus_get_timeout(b->bus, &until) < 0 || until == UINT64_MAX) {
		event_del(b->ev_time);
		return;
	}
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	uint64_t d = until > now ? until - now : 0;
	struct timeval tv = { (time_t)(d / 1000000u), (suseconds_t)(d % 1000000u) };
	event_add(b->ev_time, &tv);
}

static void process_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bus *b = arg;
	/* Bounded: other clients get their turn; a full round re-arms the
	 * timer at 0 (sd-bus still has queued messages). */
	for (int i = 0; i < 64 && b->bus; i++) {
		int r = sd_bus_process(b->bus, NULL);
		if (r < 0) {
			bus_lost(b, r);
			return;
		}
		if (r == 0)
			break;
	}
	rearm(b);
}

/* ------------------------------------------------------------ authorization */

/* 1 admin, 0 not (err set: AccessDenied), <0 the credentials are unknown. */
static const char *strna(const char *s)
{
	return s ? s : "n/a";
}

static int check_admin(struct bus *b, sd_bus_message *m, const char *method, uid_t *caller,
		       sd_bus_error *err)
{
	sd_bus_creds *c = NULL;
	int r = sd_bus_query_sender_creds(m,
					  SD_BUS_CREDS_EUID | SD_BUS_CREDS_UID | SD_BUS_CREDS_GID |
					  SD_BUS_CREDS_EGID | SD_BUS_CREDS_SUPPLEMENTARY_GIDS |
					  SD_BUS_CREDS_PID,
					  &c);
	if (r < 0) {
		log_ratelimited(LOG_WARNING, "D-Bus: %s from %s refused: its credentials are unknown (%s)",
				method, strna(sd_bus_message_get_sender(m)), strerror(-r));
		return sd_bus_error_setf(err, SD_BUS_ERROR_ACCESS_DENIED,
					 "%s: the broker could not learn who is calling (%s)", method,
					 strerror(-r));
	}
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1;
	pid_t pid = 0;
	if (sd_bus_creds_get_euid(c, &uid) < 0)
		(void)sd_bus_creds_get_uid(c, &uid);
	if (sd_bus_creds_get_egid(c, &gid) < 0)
		(void)sd_bus_creds_get_gid(c, &gid);
	(void)sd_bus_creds_get_pid(c, &pid);
	const gid_t *gids = NULL;
	int ng = sd_bus_creds_get_supplementary_gids(c, &gids);

	log_debug("D-Bus: %s from %s: uid %d gid %d pid %d, %s supplementary groups", method,
		  strna(sd_bus_message_get_sender(m)), (int)uid, (int)gid, (int)pid,
		  ng < 0 ? "no" : "with");
	struct server *srv = b->srv;
	bool admin = false;
	if (uid == 0) {
		admin = true;
	} else if (uid != (uid_t)-1) {
		struct dmb_client_policy pol;
		config_resolve(srv->cfg, uid, gid, &pol);
		admin = pol.admin;
		for (int i = 0; !admin && i < ng; i++) {
			config_resolve(srv->cfg, uid, gids[i], &pol);
			admin = pol.admin;
		}
	}
	sd_bus_creds_unref(c);
	*caller = uid;
	if (admin) {
		log_info("D-Bus: %s by uid %u pid %d (%s)", method, (unsigned)uid, (int)pid,
			 strna(sd_bus_message_get_sender(m)));
		return 1;
	}
	log_ratelimited(LOG_NOTICE, "D-Bus: %s by uid %u pid %d (%s) refused: not an admin", method,
			(unsigned)uid, (int)pid, strna(sd_bus_message_get_sender(m)));
	sd_bus_error_setf(err, SD_BUS_ERROR_ACCESS_DENIED,
			  "%s needs an administrator: root, a uid listed in [admin] uids, or a "
			  "uid or group with admin = yes in the broker's policy (uid %u is none of "
			  "these)", method, (unsigned)uid);
	return 0;
}

#define NEED_ADMIN(b, m, name, caller, err)                          \
	do {                                                        \
		int _a = check_admin((b), (m), (name), (caller), (err)); \
		if (_a <= 0)                                        \
			return _a < 0 ? _a : -EACCES;               \
	} while (0)

static int set_error(sd_bus_error *err, const struct dmb_err *e)
{
	const char *name = SD_BUS_ERROR_FAILED;
	switch (e->code) {
	case DMB_E_NOT_FOUND: name = BUS_ERROR_NOT_FOUND; break;
	case DMB_E_INVALID_ARGUMENT: name = SD_BUS_ERROR_INVALID_ARGS; break;
	case DMB_E_PERMISSION_DENIED: name = SD_BUS_ERROR_ACCESS_DENIED; break;
	case DMB_E_UNAVAILABLE: name = BUS_ERROR_UNAVAILABLE; break;
	default: break;
	}
	return sd_bus_error_setf(err, name, "%s", e->msg[0] ? e->msg : "failed");
}

/* ------------------------------------------------------------ properties */

static int prop_string(sd_bus *bus, const char *path, const char *iface, const char *prop,
		       sd_bus_message *reply, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	const char *v = "";
	if (strcmp(prop, "Version") == 0)
		v = DMB_VERSION;
	else if (strcmp(prop, "Backend") == 0)
		v = core_backend_name(&b->srv->core);
	else if (strcmp(prop, "HandoffState") == 0)
		v = server_handoff_state(b->srv);
	return sd_bus_message_append(reply, "s", v);
}

static int prop_features(sd_bus *bus, const char *path, const char *iface, const char *prop,
			 sd_bus_message *reply, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	const char *const *f = core_backend_features(&b->srv->core);
	return sd_bus_message_append_strv(reply, (char **)f);
}

static int prop_count(sd_bus *bus, const char *path, const char *iface, const char *prop,
		      sd_bus_message *reply, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	struct server_totals t;
	server_totals(b->srv, &t);
	if (strcmp(prop, "Clients") == 0)
		return sd_bus_message_append(reply, "u", t.clients);
	if (strcmp(prop, "Contexts") == 0)
		return sd_bus_message_append(reply, "u", t.contexts);
	if (strcmp(prop, "NoIommuContexts") == 0)
		return sd_bus_message_append(reply, "u", t.noiommu_contexts);
	if (strcmp(prop, "Devices") == 0)
		return sd_bus_message_append(reply, "u", t.devices);
	if (strcmp(prop, "Mappings") == 0)
		return sd_bus_message_append(reply, "t", t.mappings);
	if (strcmp(prop, "PinnedBytes") == 0)
		return sd_bus_message_append(reply, "t", t.pinned_bytes);
	if (strcmp(prop, "Revocations") == 0)
		return sd_bus_message_append(reply, "t", t.revocations);
	return -ENOENT;
}

/* ------------------------------------------------------------ methods */

static int method_list_clients(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	uid_t caller;
	NEED_ADMIN(b, m, "ListClients", &caller, err);
	sd_bus_message *reply = NULL;
	int r = sd_bus_message_new_method_return(m, &reply);
	if (r >= 0)
		r = sd_bus_message_open_container(reply, 'a', "(tuuusbuttutt)");
	uint64_t now = dmb_now_ms();
	struct session *s;
	TAILQ_FOREACH(s, &b->srv->sessions, link) {
		if (r < 0)
			break;
		uint64_t mappings = 0;
		uint32_t devices = 0;
		struct dmb_ctx *ctx;
		TAILQ_FOREACH(ctx, &s->owner->contexts, owner_link) {
			mappings += ctx->n_mappings;
			devices += ctx->n_devices;
		}
		r = sd_bus_message_append(reply, "(tuuusbuttutt)", s->id, (uint32_t)s->cred.uid,
					  (uint32_t)s->cred.gid, (uint32_t)s->cred.pid, s->name,
					  (int)s->admin, s->owner->n_contexts, mappings,
					  s->owner->pinned_bytes, devices, s->n_requests,
					  now - s->start_ms);
	}
	if (r >= 0)
		r = sd_bus_message_close_container(reply);
	if (r >= 0)
		r = sd_bus_send(NULL, reply, NULL);
	sd_bus_message_unref(reply);
	return r;
}

static int method_list_contexts(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	uid_t caller;
	NEED_ADMIN(b, m, "ListContexts", &caller, err);
	sd_bus_message *reply = NULL;
	int r = sd_bus_message_new_method_return(m, &reply);
	if (r >= 0)
		r = sd_bus_message_open_container(reply, 'a', "(tsuutbuttub)");
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &b->srv->core.contexts) {
		if (r < 0)
			break;
		r = sd_bus_message_append(reply, "(tsuutbuttub)", ctx->id, ctx->name,
					  ctx->owner ? (uint32_t)ctx->owner->uid : 0u,
					  ctx->owner ? (uint32_t)ctx->owner->pid : 0u,
					  ctx->owner ? ctx->owner->session_id : (uint64_t)0,
					  (int)ctx->persistent, ctx->n_regions, ctx->n_mappings,
					  ctx->mapped_bytes, ctx->n_devices, (int)ctx->noiommu);
	}
	if (r >= 0)
		r = sd_bus_message_close_container(reply);
	if (r >= 0)
		r = sd_bus_send(NULL, reply, NULL);
	sd_bus_message_unref(reply);
	return r;
}

#define DEVICE_SIG "(tstuqqqbbbtta(tuttutbs))"

static int append_device(sd_bus_message *reply, struct dmb_device *d)
{
	uint16_t cmd;
	struct dmb_err e = { 0 };
	if (!d->in_reset)
		(void)p2p_read_command(d, &cmd, &e); /* refreshes d->command */
	struct dmb_ctx *ctx = d->ctx;
	int r = sd_bus_message_open_container(reply, 'r', "tstuqqqbbbtta(tuttutbs)");
	if (r >= 0)
		r = sd_bus_message_append(reply, "tstuqqqbbbtt", d->id, d->bdf, ctx->id,
					  ctx->owner ? (uint32_t)ctx->owner->uid : 0u,
					  (uint16_t)d->info.vendor, (uint16_t)d->info.device, d->command,
					  (int)((d->command & DMB_PCI_COMMAND_MEMORY) != 0),
					  (int)((d->command & DMB_PCI_COMMAND_MASTER) != 0),
					  (int)d->in_reset, d->revocations, d->restorations);
	if (r >= 0)
		r = sd_bus_message_open_container(reply, 'a', "(tuttutbs)");
	struct dmb_p2p *p;
	TAILQ_FOREACH(p, &d->importers, peer_link) {
		if (r < 0)
			break;
		r = sd_bus_message_append(reply, "(tuttutbs)", p->ctx->id,
					  p->ctx->owner ? (uint32_t)p->ctx->owner->uid : 0u, p->m.iova,
					  p->m.length, (uint32_t)p->bar, p->m.offset,
					  (int)p->revoked, p->attr == DMB_MEM_MMIO ? "mmio" : "cacheable");
	}
	if (r >= 0)
		r = sd_bus_message_close_container(reply);
	if (r >= 0)
		r = sd_bus_message_close_container(reply);
	return r;
}

static int method_list_devices(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	uid_t caller;
	NEED_ADMIN(b, m, "ListDevices", &caller, err);
	sd_bus_message *reply = NULL;
	int r = sd_bus_message_new_method_return(m, &reply);
	if (r >= 0)
		r = sd_bus_message_open_container(reply, 'a', DEVICE_SIG);
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &b->srv->core.contexts) {
		struct dmb_device *d;
		TAILQ_FOREACH(d, &ctx->devices, link) {
			if (r < 0)
				break;
			r = append_device(reply, d);
		}
	}
	if (r >= 0)
		r = sd_bus_message_close_container(reply);
	if (r >= 0)
		r = sd_bus_send(NULL, reply, NULL);
	sd_bus_message_unref(reply);
	return r;
}

static int method_revoke_context(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	uint64_t id;
	int r = sd_bus_message_read(m, "t", &id);
	if (r < 0)
		return r;
	uid_t caller;
	NEED_ADMIN(b, m, "RevokeContext", &caller, err);
	char who[96];
	snprintf(who, sizeof(who), "an administrator (uid %u, over D-Bus)", (unsigned)caller);
	struct server_revoke out;
	struct dmb_err e = { 0 };
	r = server_revoke_context(b->srv, id, who, &out, &e);
	if (r < 0)
		return set_error(err, &e);
	return sd_bus_reply_method_return(m, "ttu", out.unmapped, out.unmapped_bytes, out.devices);
}

static int method_reload_policy(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	uid_t caller;
	NEED_ADMIN(b, m, "ReloadPolicy", &caller, err);
	struct dmb_err e = { 0 };
	int r = server_reload_policy(b->srv, &e);
	if (r < 0)
		return set_error(err, &e);
	return sd_bus_reply_method_return(m, "uu", b->srv->n_sessions, (uint32_t)b->srv->cfg->n_rules);
}

/* The host handoff (handoff.c); the same operations and rules as the socket's
 * HandoffStatus / HandoffPrepare / HandoffAbort. */
static int append_left_out(sd_bus_message *reply, const struct handoff_status *st)
{
	int r = sd_bus_message_open_container(reply, 'a', "(tss)");
	for (size_t i = 0; r >= 0 && i < st->n_left_out; i++)
		r = sd_bus_message_append(reply, "(tss)", st->left_out[i].context_id,
					  st->left_out[i].name, st->left_out[i].reason);
	if (r >= 0)
		r = sd_bus_message_close_container(reply);
	return r;
}

static int method_handoff_status(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	uid_t caller;
	NEED_ADMIN(b, m, "HandoffStatus", &caller, err);
	struct handoff_status *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	sd_bus_message *reply = NULL;
	int r = handoff_status(&b->srv->handoff, st);
	if (r >= 0)
		r = sd_bus_message_new_method_return(m, &reply);
	if (r >= 0)
		r = sd_bus_message_append(reply, "ssbstuttuuut", st->state, st->preserver,
					  (int)st->available, st->message, st->since_ms, st->contexts,
					  st->mappings, st->bytes, st->devices, st->unclaimed,
					  st->degraded, st->grace_remaining_ms);
	if (r >= 0)
		r = append_left_out(reply, st);
	if (r >= 0)
		r = sd_bus_send(NULL, reply, NULL);
	sd_bus_message_unref(reply);
	free(st);
	return r;
}

static int method_handoff_prepare(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	int force;
	int r = sd_bus_message_read(m, "b", &force);
	if (r < 0)
		return r;
	uid_t caller;
	NEED_ADMIN(b, m, "HandoffPrepare", &caller, err);
	struct handoff_status *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	log_notice("D-Bus: host handoff prepare%s requested by uid %u", force ? " (force)" : "",
		   (unsigned)caller);
	struct dmb_err e = { 0 };
	r = handoff_prepare(&b->srv->handoff, force, st, &e);
	if (r < 0) {
		free(st);
		return set_error(err, &e);
	}
	sd_bus_message *reply = NULL;
	r = sd_bus_message_new_method_return(m, &reply);
	if (r >= 0)
		r = sd_bus_message_append(reply, "uuttu", st->contexts, st->regions, st->mappings,
					  st->bytes, st->devices);
	if (r >= 0)
		r = append_left_out(reply, st);
	if (r >= 0)
		r = sd_bus_send(NULL, reply, NULL);
	sd_bus_message_unref(reply);
	free(st);
	return r;
}

static int method_handoff_abort(sd_bus_message *m, void *userdata, sd_bus_error *err)
{
	struct bus *b = userdata;
	uid_t caller;
	NEED_ADMIN(b, m, "HandoffAbort", &caller, err);
	log_notice("D-Bus: host handoff abort requested by uid %u", (unsigned)caller);
	struct dmb_err e = { 0 };
	int r = handoff_abort(&b->srv->handoff, &e);
	if (r < 0)
		return set_error(err, &e);
	return sd_bus_reply_method_return(m, "s", server_handoff_state(b->srv));
}

static const sd_bus_vtable broker_vtable[] = {
	SD_BUS_VTABLE_START(0),
	SD_BUS_PROPERTY("Version", "s", prop_string, 0, SD_BUS_VTABLE_PROPERTY_CONST),
	SD_BUS_PROPERTY("Backend", "s", prop_string, 0, SD_BUS_VTABLE_PROPERTY_CONST),
	SD_BUS_PROPERTY("Features", "as", prop_features, 0, SD_BUS_VTABLE_PROPERTY_CONST),
	SD_BUS_PROPERTY("HandoffState", "s", prop_string, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_PROPERTY("Clients", "u", prop_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_PROPERTY("Contexts", "u", prop_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_PROPERTY("NoIommuContexts", "u", prop_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_PROPERTY("Devices", "u", prop_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_PROPERTY("Mappings", "t", prop_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_PROPERTY("PinnedBytes", "t", prop_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_PROPERTY("Revocations", "t", prop_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
	SD_BUS_METHOD_WITH_NAMES("ListClients", "", , "a(tuuusbuttutt)", SD_BUS_PARAM(clients),
				 method_list_clients, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_METHOD_WITH_NAMES("ListContexts", "", , "a(tsuutbuttub)", SD_BUS_PARAM(contexts),
				 method_list_contexts, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_METHOD_WITH_NAMES("ListDevices", "", , "a" DEVICE_SIG, SD_BUS_PARAM(devices),
				 method_list_devices, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_METHOD_WITH_NAMES("RevokeContext", "t", SD_BUS_PARAM(context), "ttu",
				 SD_BUS_PARAM(unmapped) SD_BUS_PARAM(unmapped_bytes)
				 SD_BUS_PARAM(devices_closed),
				 method_revoke_context, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_METHOD_WITH_NAMES("ReloadPolicy", "", , "uu",
				 SD_BUS_PARAM(sessions) SD_BUS_PARAM(policy_sections),
				 method_reload_policy, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_METHOD_WITH_NAMES("HandoffStatus", "", , "ssbstuttuuuta(tss)",
				 SD_BUS_PARAM(state) SD_BUS_PARAM(preserver) SD_BUS_PARAM(available)
				 SD_BUS_PARAM(message) SD_BUS_PARAM(since_ms) SD_BUS_PARAM(contexts)
				 SD_BUS_PARAM(mappings) SD_BUS_PARAM(bytes) SD_BUS_PARAM(devices)
				 SD_BUS_PARAM(unclaimed) SD_BUS_PARAM(degraded)
				 SD_BUS_PARAM(grace_remaining_ms) SD_BUS_PARAM(left_out),
				 method_handoff_status, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_METHOD_WITH_NAMES("HandoffPrepare", "b", SD_BUS_PARAM(force), "uuttua(tss)",
				 SD_BUS_PARAM(contexts) SD_BUS_PARAM(regions) SD_BUS_PARAM(mappings)
				 SD_BUS_PARAM(bytes) SD_BUS_PARAM(devices) SD_BUS_PARAM(left_out),
				 method_handoff_prepare, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_METHOD_WITH_NAMES("HandoffAbort", "", , "s", SD_BUS_PARAM(state),
				 method_handoff_abort, SD_BUS_VTABLE_UNPRIVILEGED),
	SD_BUS_SIGNAL_WITH_NAMES("MappingsRevoked", "ttt",
				 SD_BUS_PARAM(context) SD_BUS_PARAM(device) SD_BUS_PARAM(count), 0),
	SD_BUS_SIGNAL_WITH_NAMES("HandoffStateChanged", "s", SD_BUS_PARAM(state), 0),
	SD_BUS_VTABLE_END,
};

/* ------------------------------------------------------------ signals */

void bus_emit_mappings_revoked(struct server *srv, uint64_t context, uint64_t device,
			       uint64_t count)
{
	struct bus *b = srv->bus;
	if (!b || !b->bus)
		return;
	int r = sd_bus_emit_signal(b->bus, BUS_PATH, BUS_IFACE, "MappingsRevoked", "ttt", context,
				   device, count);
	if (r < 0)
		log_ratelimited(LOG_WARNING, "D-Bus: MappingsRevoked not sent: %s", strerror(-r));
	rearm(b);
}

void bus_emit_handoff_state_changed(struct server *srv, const char *state)
{
	struct bus *b = srv->bus;
	if (!b || !b->bus)
		return;
	int r = sd_bus_emit_signal(b->bus, BUS_PATH, BUS_IFACE, "HandoffStateChanged", "s", state);
	if (r >= 0)
		r = sd_bus_emit_properties_changed(b->bus, BUS_PATH, BUS_IFACE, "HandoffState", NULL);
	if (r < 0)
		log_warning("D-Bus: HandoffStateChanged not sent: %s", strerror(-r));
	rearm(b);
}

void bus_counts_changed(struct server *srv, const struct server_totals *t)
{
	struct bus *b = srv->bus;
	if (!b || !b->bus)
		return;
	char *names[9];
	size_t n = 0;
	const struct server_totals *o = &b->last;
	bool all = !b->have_last;
	if (all || o->clients != t->clients)
		names[n++] = (char *)"Clients";
	if (all || o->contexts != t->contexts)
		names[n++] = (char *)"Contexts";
	if (all || o->noiommu_contexts != t->noiommu_contexts)
		names[n++] = (char *)"NoIommuContexts";
	if (all || o->devices != t->devices)
		names[n++] = (char *)"Devices";
	if (all || o->mappings != t->mappings)
		names[n++] = (char *)"Mappings";
	if (all || o->pinned_bytes != t->pinned_bytes)
		names[n++] = (char *)"PinnedBytes";
	if (all || o->revocations != t->revocations)
		names[n++] = (char *)"Revocations";
	names[n] = NULL;
	b->last = *t;
	b->have_last = true;
	if (n == 0)
		return;
	int r = sd_bus_emit_properties_changed_strv(b->bus, BUS_PATH, BUS_IFACE, names);
	if (r < 0)
		log_ratelimited(LOG_WARNING, "D-Bus: PropertiesChanged not sent: %s", strerror(-r));
	rearm(b);
}

/* ------------------------------------------------------------ set-up */

static int bus_connect(struct bus *b, enum bus_kind kind)
{
	int r = kind == BUS_SYSTEM ? sd_bus_open_system_with_description(&b->bus, "dmabroker")
				   : sd_bus_open_user_with_description(&b->bus, "dmabroker");
	if (r < 0)
		return log_error_errno(r, "D-Bus: cannot connect to the %s bus: %m",
				       kind == BUS_SYSTEM ? "system" : "user");
	r = sd_bus_add_object_vtable(b->bus, &b->slot, BUS_PATH, BUS_IFACE, broker_vtable, b);
	if (r < 0)
		return log_error_errno(r, "D-Bus: cannot export %s: %m", BUS_PATH);
	r = sd_bus_request_name(b->bus, BUS_NAME, 0);
	if (r < 0)
		return log_error_errno(r, "D-Bus: cannot own the name %s on the %s bus: %m (is the bus "
				       "policy file dmabroker's D-Bus policy installed, and is another "
				       "broker running?)", BUS_NAME, kind == BUS_SYSTEM ? "system" : "user");
	int fd = sd_bus_get_fd(b->bus);
	if (fd < 0)
		return log_error_errno(fd, "D-Bus: no connection fd: %m");
	struct event_base *base = b->srv->base;
	b->ev_read = event_new(base, fd, EV_READ | EV_PERSIST, process_cb, b);
	b->ev_write = event_new(base, fd, EV_WRITE | EV_PERSIST, process_cb, b);
	b->ev_time = event_new(base, -1, 0, process_cb, b);
	if (!b->ev_read || !b->ev_write || !b->ev_time)
		return log_error_errno(-ENOMEM, "D-Bus: out of memory");
	event_add(b->ev_read, NULL);
	rearm(b);
	log_info("D-Bus: %s on the %s bus, object %s", BUS_NAME,
		 kind == BUS_SYSTEM ? "system" : "user", BUS_PATH);
	return 0;
}

int bus_init(struct server *srv, enum bus_kind kind)
{
	bool automatic = kind == BUS_AUTO;
	if (automatic) {
		const char *inv = getenv("INVOCATION_ID");
		kind = inv && inv[0] ? BUS_SYSTEM : BUS_NONE;
	}
	if (kind == BUS_NONE) {
		log_debug("D-Bus: off (--bus=none, or not started by systemd)");
		return 0;
	}
	struct bus *b = calloc(1, sizeof(*b));
	if (!b)
		return log_error_errno(-ENOMEM, "D-Bus: out of memory");
	b->srv = srv;
	srv->bus = b;
	int r = bus_connect(b, kind);
	if (r < 0) {
		bus_fini(srv);
		if (automatic) {
			log_warning("D-Bus: serving without the management object");
			return 0;
		}
	}
	return r;
}

void bus_fini(struct server *srv)
{
	struct bus *b = srv->bus;
	if (!b)
		return;
	if (b->ev_read)
		event_free(b->ev_read);
	if (b->ev_write)
		event_free(b->ev_write);
	if (b->ev_time)
		event_free(b->ev_time);
	sd_bus_slot_unref(b->slot);
	if (b->bus)
		sd_bus_flush_close_unref(b->bus);
	free(b);
	srv->bus = NULL;
}
