/* The listening socket: created at the configured path, or inherited from
 * systemd socket activation (LISTEN_FDS). */
#include "server/server.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/macro.h"

/* Out of fds (EMFILE/ENFILE): the listener stays readable while a client
 * waits, so a level-triggered loop would call accept() again at once,
 * forever. Stop watching it instead, say so once, and try again when a
 * session has closed or after a second (fds a packet carried are closed
 * without telling us). */
static void listen_pause(struct server *srv)
{
	if (srv->listen_paused)
		return;
	srv->listen_paused = true;
	event_del(srv->ev_listen);
	if (!srv->fd_starved)
		log_warning("out of file descriptors (RLIMIT_NOFILE %" PRIu64 ", %u sessions): not "
			    "accepting connections until one is freed; clients wait in the backlog",
			    srv->core.fds.nofile, srv->n_sessions);
	srv->fd_starved = true;
	struct timeval tv = { 1, 0 };
	event_add(srv->ev_listen_retry, &tv);
}

void server_listen_resume(struct server *srv)
{
	if (!srv->listen_paused)
		return;
	srv->listen_paused = false;
	event_del(srv->ev_listen_retry);
	event_add(srv->ev_listen, NULL);
}

static void listen_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	server_listen_resume(arg);
}

/* Past the fd budget only admin sessions are taken (the reserve keeps room
 * for them); anyone else is refused at once, never left hanging. */
static bool over_fd_budget(struct server *srv, int fd)
{
	if (srv->core.fds.used < srv->core.fds.limit)
		return false;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
	    config_is_admin(srv->cfg, cred.uid))
		return false;
	log_ratelimited(LOG_WARNING, "refusing a connection (uid %u pid %d): the broker's fd budget "
			"(%" PRIu64 " fds) is used up", (unsigned)cred.uid, (int)cred.pid,
			srv->core.fds.limit);
	return true;
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct server *srv = arg;
	for (int i = 0; i < 64; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE)
				listen_pause(srv);
			else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warning("accept: %m");
			return;
		}
		if (srv->fd_starved) {
			srv->fd_starved = false;
			log_notice("accepting connections again (%u sessions)", srv->n_sessions);
		}
		if (srv->n_sessions >= srv->cfg->max_sessions) {
			log_ratelimited(LOG_WARNING, "refusing a connection: limit sessions (%u) reached",
				    srv->cfg->max_sessions);
			close(fd);
			continue;
		}
		if (over_fd_budget(srv, fd)) {
			close(fd);
			continue;
		}
		if (!session_new(srv, fd)) {
			log_error("could not set up a session: out of memory");
			close(fd);
		}
	}
}

/* A stale socket file (nobody listening) is replaced; a live one is not. */
static int prepare_path(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (probe < 0)
		return -errno;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int r = connect(probe, (struct sockaddr *)&sa, sizeof(sa));
	int err = errno;
	close(probe);
	if (r == 0)
		return -EADDRINUSE;
	if (err != ECONNREFUSED && err != ENOENT)
		return -err;
	return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

static int listen_on_path(struct server *srv, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return log_error_errno(-ENAMETOOLONG, "socket path %s is too long", path);
	int r = prepare_path(path);
	if (r == -EADDRINUSE)
		return log_error_errno(r, "another daemon is already serving %s", path);
	if (r < 0)
		return log_error_errno(r, "cannot use socket path %s: %m", path);

	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return log_error_errno(-errno, "socket: %m");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	mode_t old = umask(0777 & ~srv->cfg->socket_mode);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0 && errno == ENOENT) {
		char dir[sizeof(sa.sun_path)];
		snprintf(dir, sizeof(dir), "%s", path);
		char *slash = strrchr(dir, '/');
		if (slash)
			*slash = '\0';
		return log_error_errno(-ENOENT, "cannot listen on %s: the directory %s does not exist. "
				       "Under systemd, start dmabroker.socket (it creates it and passes "
				       "the socket); by hand, create it (systemd-tmpfiles --create "
				       "dmabroker.conf does) or pass --socket PATH in an existing "
				       "directory", path, slash ? (dir[0] ? dir : "/") : ".");
	}
	if (r < 0)
		return log_error_errno(-errno, "bind %s: %m", path);
	if (chmod(path, srv->cfg->socket_mode) < 0)
		log_warning("chmod %s: %m", path);
	if (listen(fd, 256) < 0)
		return log_error_errno(-errno, "listen %s: %m", path);
	srv->listen_owned = true;
	return TAKE_FD(fd);
}

/* The P2P watcher: re-reads the command register of every device that has
 * importers, so a change a client made through its own device fd is caught
 * within one interval. Devices without importers cost nothing. */
static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	struct dmb_ctx *ctx;
	RB_FOREACH(ctx, dmb_ctx_tree, &srv->core.contexts) {
		struct dmb_device *d;
		TAILQ_FOREACH(d, &ctx->devices, link)
			if (d->n_importers)
				p2p_poll(d);
	}
}

/* Each client costs a socket, each region an fd or two: serve thousands
 * of clients by raising the soft fd limit to the hard one. What it ends up
 * as, less the reserve, is the broker's fd budget (core/account.c). */
static void raise_fd_limit(struct dmb_fd_budget *b)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return; /* not budgeted */
	if (rl.rlim_cur < rl.rlim_max) {
		struct rlimit up = { rl.rlim_max, rl.rlim_max };
		if (setrlimit(RLIMIT_NOFILE, &up) < 0)
			log_warning("could not raise the fd limit to %llu: %m",
				    (unsigned long long)rl.rlim_max);
		else
			rl = up;
	}
	b->nofile = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
	b->limit = b->nofile > DMB_FD_RESERVE ? b->nofile - DMB_FD_RESERVE : 0;
	log_info("fd budget: %" PRIu64 " of RLIMIT_NOFILE %" PRIu64 " for sessions, contexts, "
		 "regions and devices; %u kept in reserve", b->limit, b->nofile, DMB_FD_RESERVE);
}

/* What systemd passed: the listening socket (socket activation) and the
 * fd store's contents. */
static int take_listen_fds(int *listen_fd, struct stored_fds *st)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);
	*listen_fd = -1;
	st->n = 0;
	if (n > 0) {
		st->fd = calloc((size_t)n, sizeof(int));
		st->name = calloc((size_t)n, sizeof(char *));
		if (!st->fd || !st->name)
			n = -ENOMEM;
	}
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		char *name = names ? names[i] : NULL;
		if (names)
			names[i] = NULL;
		if (*listen_fd < 0 && sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) > 0) {
			*listen_fd = fd;
			free(name);
			continue;
		}
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		st->fd[st->n] = fd;
		st->name[st->n] = name;
		st->n++;
	}
	if (names) {
		for (int i = 0; names[i]; i++)
			free(names[i]);
		free(names);
	}
	if (n < 0) {
		free(st->fd);
		free(st->name);
		st->fd = NULL;
		st->name = NULL;
		st->n = 0;
	}
	return n;
}

/* The core asks the policy before opening a device for a client. */
static bool device_allowed_cb(void *opaque, const struct dmb_owner *owner, const char *bdf)
{
	return config_device_allowed(&owner->pol, bdf);
}

/* ------------------------------------------------------------ state/'s host */

/* What persist.c and handoff.c reach of the sessions (state/host.h). */
static struct dmb_owner *host_session_owner(void *opaque, uint64_t session_id)
{
	struct server *srv = opaque;
	struct session *s;
	TAILQ_FOREACH(s, &srv->sessions, link)
		if (s->id == session_id)
			return s->owner;
	return NULL;
}

static bool host_adopt_session(void *opaque, int fd, uint64_t session_id)
{
	return session_adopt(opaque, fd, session_id) != NULL;
}

static void host_restarted(void *opaque)
{
	struct server *srv = opaque;
	struct session *s;
	TAILQ_FOREACH(s, &srv->sessions, link)
		session_send_restarted(s);
}

static void host_handoff_changed(void *opaque, const struct dmb_event *ev)
{
	struct server *srv = opaque;
	struct session *s;
	if (ev)
		TAILQ_FOREACH(s, &srv->sessions, link)
			session_event_cb(srv, s->owner, ev);
	server_handoff_state_changed(srv);
}

static uint32_t host_busy_contexts(void *opaque)
{
	struct server *srv = opaque;
	return srv->n_gates;
}

/* Host memory encryption, detected once (the kernel cannot change it while
 * running), and the [p2p] type1 policy it sets by default; both in the log
 * at start-up, for every backend, so an operator reading it knows what a
 * move to vfio-type1 would mean. */
static void p2p_policy_init(struct server *srv)
{
	char what[256];
	int enc = hostmem_encrypted(getenv("DMABROKERD_TEST_CPUINFO"), what, sizeof(what));
	srv->mem_encrypted = enc > 0;
	enum dmb_p2p_cacheable v = p2p_cacheable_effective(srv->cfg, srv->mem_encrypted);
	srv->core.p2p_cacheable = v;
	const struct dmb_backend *be = srv->core.be;
	const char *how = be->p2p_attr == DMB_MEM_CACHEABLE ? "cacheable IOMMU attributes"
			  : be->p2p_attr == DMB_MEM_MMIO ? "MMIO attributes" : "no P2P";
	if (be->p2p_attr == DMB_MEM_CACHEABLE && v == DMB_P2P_CACHEABLE_REFUSE)
		log_notice("P2P: %s; the %s backend maps peer BARs with %s, so [p2p] type1 = refuse%s: "
			   "MapPeer is refused", what, be->ops->name, how,
			   srv->cfg->p2p_type1 ? " (set in the configuration)" : " (the default here)");
	else if (be->p2p_attr == DMB_MEM_CACHEABLE)
		log_notice("P2P: %s; the %s backend maps peer BARs with %s; [p2p] type1 = %s%s", what,
			   be->ops->name, how, p2p_cacheable_name(v),
			   srv->cfg->p2p_type1 ? " (set in the configuration)" : " (the default here)");
	else
		log_info("P2P: %s; the %s backend maps peer BARs with %s ([p2p] type1 = %s would "
			 "apply to vfio-type1)", what, be->ops->name, how, p2p_cacheable_name(v));
	if (srv->mem_encrypted && v == DMB_P2P_CACHEABLE_ALLOW && be->p2p_attr == DMB_MEM_CACHEABLE)
		log_warning("P2P: [p2p] type1 = allow with host memory encryption active: P2P DMA "
			    "through the %s backend may reach an encrypted alias of the peer BAR, "
			    "not the BAR", be->ops->name);
}

int server_init(struct server *srv, struct event_base *base, struct dmb_config *cfg,
		struct dmb_backend *be)
{
	int inherited_fd = -1;
	struct stored_fds stored = { 0 };
	if (take_listen_fds(&inherited_fd, &stored) < 0)
		log_warning("could not read the fds systemd passed: %m");
	memset(srv, 0, sizeof(*srv));
	srv->base = base;
	srv->cfg = cfg;
	snprintf(srv->file_socket, sizeof(srv->file_socket), "%s", cfg->socket_path);
	snprintf(srv->file_backend, sizeof(srv->file_backend), "%s", cfg->backend);
	srv->start_ms = dmb_now_ms();
	TAILQ_INIT(&srv->sessions);
	core_init(&srv->core, be, &cfg->limits);
	raise_fd_limit(&srv->core.fds);
	srv->core.event_fn = server_event_cb;
	srv->core.event_opaque = srv;
	srv->start_realtime_s = (uint64_t)time(NULL);
	srv->core.device_allowed = device_allowed_cb;
	srv->core.policy_opaque = cfg;
	srv->core.pinned_bytes_limit = cfg->pinned_bytes_total;
	p2p_policy_init(srv);
	int r = sched_init(srv);
	if (r < 0)
		return r;

	srv->rxbuf = malloc(DMB_MAX_PACKET + 1);
	srv->txbuf = malloc(DMB_MAX_PACKET);
	/* A full packet of the smallest fields decodes to about 4x its size;
	 * beyond this the arena falls back to malloc. */
	if (!srv->rxbuf || !srv->txbuf || arena_init(&srv->arena, 4 * DMB_MAX_PACKET) < 0)
		return -ENOMEM;

	if (inherited_fd >= 0) {
		int fl = fcntl(inherited_fd, F_GETFL);
		if (fl >= 0)
			fcntl(inherited_fd, F_SETFL, fl | O_NONBLOCK);
		srv->listen_fd = inherited_fd;
		log_info("serving the socket passed by systemd (fd %d)", inherited_fd);
	} else {
		int fd = listen_on_path(srv, cfg->socket_path);
		if (fd < 0)
			return fd;
		srv->listen_fd = fd;
		log_info("listening on %s", cfg->socket_path);
	}
	srv->ev_listen = event_new(base, srv->listen_fd, EV_READ | EV_PERSIST, accept_cb, srv);
	srv->ev_listen_retry = event_new(base, -1, 0, listen_retry_cb, srv);
	if (!srv->ev_listen || !srv->ev_listen_retry)
		return -ENOMEM;
	event_add(srv->ev_listen, NULL);

	srv->ev_poll = event_new(base, -1, EV_PERSIST, poll_cb, srv);
	if (!srv->ev_poll)
		return -ENOMEM;
	struct timeval tv = { cfg->p2p_poll_interval_ms / 1000,
			      (cfg->p2p_poll_interval_ms % 1000) * 1000 };
	event_add(srv->ev_poll, &tv);

	/* Persisted state (fd store), after the listening socket: adopted
	 * sessions and contexts come back before anyone new is accepted. */
	srv->host = (struct state_host){
		.base = base,
		.cfg = cfg,
		.core = &srv->core,
		.opaque = srv,
		.session_owner = host_session_owner,
		.adopt_session = host_adopt_session,
		.restarted = host_restarted,
		.handoff_changed = host_handoff_changed,
		.busy_contexts = host_busy_contexts,
	};
	struct dmb_err e = { 0 };
	handoff_take_stored(&srv->handoff, &stored);
	r = persist_init(&srv->persist, &srv->host, &stored, &e);
	for (size_t i = 0; i < stored.n; i++)
		free(stored.name[i]);
	free(stored.name);
	free(stored.fd);
	if (r < 0)
		return log_error_errno(r, "%s", e.msg);
	/* After the journal: it says where a host handoff stands. */
	r = handoff_init(&srv->handoff, &srv->host, &srv->persist, &e);
	if (r < 0)
		return log_error_errno(r, "%s", e.msg);
	return 0;
}

bool server_stop(struct server *srv)
{
	/* Every call on a worker finishes (and is journaled and answered)
	 * before the state is handed over or torn down. */
	server_quiesce(srv);
	return persist_handover(&srv->persist);
}

int server_reload(struct server *srv, const char *path, struct dmb_err *e)
{
	struct dmb_config *fresh = malloc(sizeof(*fresh));
	if (!fresh)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	config_defaults(fresh);
	int r = path ? config_load_tree(fresh, path, e) : 0;
	if (r < 0) {
		free(fresh);
		log_error("policy reload refused, the old policy stays in force: %s", e->msg);
		return r;
	}
	/* What a running daemon cannot change keeps its value (and says so). */
	struct dmb_config *cur = srv->cfg;
	/* Against what the file said at start, not against the values in force:
	 * --socket, --backend and socket activation override the file. */
	if (strcmp(fresh->socket_path, srv->file_socket))
		log_warning("reload: [daemon] socket changed from %s to %s: takes effect at the next "
			    "start (serving %s until then)", srv->file_socket, fresh->socket_path,
			    cur->socket_path);
	if (strcmp(fresh->backend, srv->file_backend))
		log_warning("reload: [daemon] backend changed from %s to %s: takes effect at the next "
			    "start (backend %s until then)", srv->file_backend, fresh->backend,
			    cur->backend);
	snprintf(fresh->socket_path, sizeof(fresh->socket_path), "%s", cur->socket_path);
	snprintf(fresh->backend, sizeof(fresh->backend), "%s", cur->backend);
	fresh->sim_populate = cur->sim_populate;
	fresh->n_sim_devices = cur->n_sim_devices;
	memcpy(fresh->sim_devices, cur->sim_devices, sizeof(cur->sim_devices));
	fresh->sim_p2p_attr = cur->sim_p2p_attr;
	fresh->log_level = cur->log_level; /* the command line may have set it */
	if (strcmp(fresh->metrics_textfile, cur->metrics_textfile) ||
	    fresh->metrics_interval_s != cur->metrics_interval_s)
		log_warning("reload: [metrics] changes take effect at the next start");
	memcpy(fresh->metrics_textfile, cur->metrics_textfile, sizeof(cur->metrics_textfile));
	fresh->metrics_interval_s = cur->metrics_interval_s;
	if (strcmp(fresh->handoff_preserver, cur->handoff_preserver) ||
	    strcmp(fresh->handoff_session, cur->handoff_session))
		log_warning("reload: [handoff] preserver and session_name changes take effect at the "
			    "next start");
	memcpy(fresh->handoff_preserver, cur->handoff_preserver, sizeof(cur->handoff_preserver));
	memcpy(fresh->handoff_session, cur->handoff_session, sizeof(cur->handoff_session));
	*cur = *fresh; /* policies point into *cur: re-resolve every session now */
	free(fresh);

	srv->core.limits = cur->limits;
	srv->core.pinned_bytes_limit = cur->pinned_bytes_total;
	enum dmb_p2p_cacheable was = srv->core.p2p_cacheable;
	srv->core.p2p_cacheable = p2p_cacheable_effective(cur, srv->mem_encrypted);
	if (was != srv->core.p2p_cacheable)
		log_notice("reload: [p2p] type1 is now %s (was %s): new P2P mappings of the %s "
			   "backend follow it, existing ones stay", p2p_cacheable_name(srv->core.p2p_cacheable),
			   p2p_cacheable_name(was), srv->core.be->ops->name);
	struct session *s;
	TAILQ_FOREACH(s, &srv->sessions, link) {
		config_resolve(cur, s->cred.uid, s->cred.gid, &s->owner->pol);
		s->owner->admin = s->admin = s->owner->pol.admin;
	}
	if (srv->ev_poll) {
		struct timeval tv = { cur->p2p_poll_interval_ms / 1000,
				      (cur->p2p_poll_interval_ms % 1000) * 1000 };
		event_add(srv->ev_poll, &tv);
	}
	log_notice("policy reloaded from %s (%zu policy sections); %u sessions updated, mappings "
		   "unchanged", path ? path : "defaults", cur->n_rules, srv->n_sessions);
	return 0;
}

void server_fini(struct server *srv)
{
	server_quiesce(srv);
	worker_pool_fini(&srv->pool);
	if (srv->watch && srv->watch->stop)
		srv->watch->stop(srv);
	handoff_fini(&srv->handoff);
	persist_fini(&srv->persist);
	struct session *s;
	while ((s = TAILQ_FIRST(&srv->sessions)))
		session_free(s);
	sched_fini(srv);
	core_fini(&srv->core);
	if (srv->ev_listen)
		event_free(srv->ev_listen);
	if (srv->ev_listen_retry)
		event_free(srv->ev_listen_retry);
	if (srv->ev_poll)
		event_free(srv->ev_poll);
	if (srv->listen_fd > 0) {
		close(srv->listen_fd);
		if (srv->listen_owned)
			unlink(srv->cfg->socket_path);
	}
	free(srv->rxbuf);
	free(srv->txbuf);
	arena_fini(&srv->arena);
}
