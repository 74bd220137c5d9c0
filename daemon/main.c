/* dmabrokerd: flags, configuration, start-up order, signals. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "mgmt/mgmt.h"
#include "policy/config.h"
#include "mgmt/metrics.h"
#include "mgmt/notify.h"
#include "dmb-build.h"
#include "policy/sandbox.h"
#include "server/server.h"
#include "util/log.h"

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: dmabrokerd [OPTIONS]\n"
		"Serve IOMMU DMA mappings to unprivileged VMMs over a unix socket.\n\n"
		"  -c, --config=FILE     configuration file (default %s if present)\n"
		"  -s, --socket=PATH     listening socket (default %s)\n"
		"  -b, --backend=NAME    auto, iommufd, vfio-type1 or sim (default auto; sim is never\n"
		"                        chosen automatically)\n"
		"  -l, --log-level=LEVEL error, warning, notice, info, debug\n"
		"      --sim-populate    sim backend: touch every page on map, as pinning does\n"
		"      --seccomp=MODE    kill (default): a syscall outside the allow-list kills the\n"
		"                        daemon (SIGSYS); log: it runs and is logged to the kernel\n"
		"                        audit log (debugging); off: no filter\n"
		"      --bus=BUS         the D-Bus management object: system, user (tests:\n"
		"                        $DBUS_SESSION_BUS_ADDRESS), none, or auto (default: the\n"
		"                        system bus when started by systemd, else none)\n"
		"  -V, --version         print the version and exit\n"
		"  -h, --help            this text\n",
		DMB_DEFAULT_CONFIG, DMB_DEFAULT_SOCKET);
}

struct opts {
	const char *config;
	const char *socket;
	const char *backend;
	int log_level;
	bool sim_populate;
	int seccomp;
	int bus;
};

static int parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },
		{ "backend", required_argument, NULL, 'b' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "sim-populate", no_argument, NULL, 'P' },
		{ "seccomp", required_argument, NULL, 'S' },
		{ "bus", required_argument, NULL, 'B' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	o->log_level = -1;
	o->bus = BUS_AUTO;
	argv[0] = (char *)"dmabrokerd"; /* getopt's messages: not the path it ran by */
	while ((c = getopt_long(argc, argv, "c:s:b:l:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->config = optarg; break;
		case 's': o->socket = optarg; break;
		case 'b': o->backend = optarg; break;
		case 'P': o->sim_populate = true; break;
		case 'S':
			o->seccomp = sandbox_parse_seccomp(optarg);
			if (o->seccomp < 0) {
				fprintf(stderr, "dmabrokerd: --seccomp takes kill, log or off, not '%s'\n", optarg);
				return -EINVAL;
			}
			break;
		case 'B':
			o->bus = bus_parse_kind(optarg);
			if (o->bus < 0) {
				fprintf(stderr, "dmabrokerd: --bus takes system, user, none or auto, not '%s'\n",
					optarg);
				return -EINVAL;
			}
			break;
		case 'l':
			o->log_level = config_parse_log_level(optarg);
			if (o->log_level < 0) {
				fprintf(stderr, "dmabrokerd: unknown log level '%s'\n", optarg);
				return -EINVAL;
			}
			break;
		case 'V': printf("dmabrokerd %s\n", DMB_VERSION); exit(EXIT_SUCCESS);
		case 'h': usage(stdout); exit(EXIT_SUCCESS);
		default: usage(stderr); return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dmabrokerd: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	return 0;
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
	log_info("received %s; shutting down", strsignal((int)sig));
	event_base_loopbreak(arg);
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
	struct dmb_err e = { 0 };
	log_info("received SIGHUP; reloading the configuration");
	(void)server_reload_policy(arg, &e);
}

/* Says which configuration is in force: the file read, or none (built-in
 * defaults), and whether it lets any client open any device at all. */
static void log_config(const char *path, const struct dmb_config *cfg)
{
	size_t n = cfg->n_allow;
	for (size_t i = 0; i < cfg->n_rules; i++)
		n += cfg->rules[i].n_allow;
	if (!path)
		log_notice("configuration: no file (%s does not exist): built-in defaults, no client "
			   "may open any device (default deny) and only uid 0 is admin; see "
			   "dmabroker.conf(5)", DMB_DEFAULT_CONFIG);
	else if (!n)
		log_notice("configuration: read %s (%zu policy section%s): it allows no device to any "
			   "client (default deny; [devices] allow or a policy section's devices)",
			   path, cfg->n_rules, cfg->n_rules == 1 ? "" : "s");
	else
		log_info("configuration: read %s (%zu policy section%s, %zu device entr%s allowed)",
			 path, cfg->n_rules, cfg->n_rules == 1 ? "" : "s", n, n == 1 ? "y" : "ies");
}

static int run(int argc, char **argv)
{
	struct opts o = { 0 };
	int r = parse_args(argc, argv, &o);
	if (r < 0)
		return r;

	static struct dmb_config cfg;
	config_defaults(&cfg);
	struct dmb_err e = { 0 };
	const char *cfgfile = o.config;
	if (!cfgfile && access(DMB_DEFAULT_CONFIG, F_OK) == 0)
		cfgfile = DMB_DEFAULT_CONFIG;
	if (cfgfile && config_load_tree(&cfg, cfgfile, &e) < 0)
		return log_error_errno(-EINVAL, "configuration: %s", e.msg);
	/* What the file said, before the command line overrides it. */
	char file_socket[sizeof(cfg.socket_path)], file_backend[sizeof(cfg.backend)];
	memcpy(file_socket, cfg.socket_path, sizeof(file_socket));
	memcpy(file_backend, cfg.backend, sizeof(file_backend));
	if (o.socket)
		snprintf(cfg.socket_path, sizeof(cfg.socket_path), "%s", o.socket);
	if (o.backend)
		snprintf(cfg.backend, sizeof(cfg.backend), "%s", o.backend);
	if (o.log_level >= 0)
		cfg.log_level = o.log_level;
	if (o.sim_populate)
		cfg.sim_populate = true;
	dmb_log_max_level = cfg.log_level;
	log_config(cfgfile, &cfg);

	signal(SIGPIPE, SIG_IGN);

	const char *simdevs[17] = { 0 };
	for (size_t i = 0; i < cfg.n_sim_devices; i++)
		simdevs[i] = cfg.sim_devices[i];
	const char *simnoiommu[17] = { 0 };
	for (size_t i = 0; i < cfg.n_sim_noiommu; i++)
		simnoiommu[i] = cfg.sim_noiommu[i];
	struct dmb_backend_config bcfg = {
		.sim_devices = cfg.n_sim_devices ? simdevs : NULL,
		.sim_noiommu_devices = cfg.n_sim_noiommu ? simnoiommu : NULL,
		.name = cfg.backend,
		.sysfs_root = "/sys",
		.dev_root = "/dev",
		.sim_populate = cfg.sim_populate,
		.sim_p2p_attr = cfg.sim_p2p_attr ? DMB_MEM_CACHEABLE : DMB_MEM_MMIO,
	};
	struct dmb_backend *be = NULL;
	r = dmb_backend_create(&bcfg, &be, &e);
	if (r < 0)
		return log_error_errno(r, "%s", e.msg);
	char feats[256] = "";
	for (size_t i = 0; be->features && be->features[i]; i++) {
		strncat(feats, i ? " " : "", sizeof(feats) - strlen(feats) - 1);
		strncat(feats, be->features[i], sizeof(feats) - strlen(feats) - 1);
	}
	if (strcmp(be->ops->name, "sim") == 0)
		log_notice("backend sim: SIMULATED IOMMU, chosen explicitly; no device DMA is protected "
			   "by this daemon (features: %s)", feats);
	else
		log_info("backend %s (features: %s)", be->ops->name, feats);

	struct event_base *base = event_base_new();
	if (!base) {
		dmb_backend_destroy(be);
		return log_error_errno(-ENOMEM, "event_base_new failed");
	}
	static struct server srv;
	r = server_init(&srv, base, &cfg, be);
	srv.config_path = cfgfile;
	memcpy(srv.file_socket, file_socket, sizeof(srv.file_socket));
	memcpy(srv.file_backend, file_backend, sizeof(srv.file_backend));
	/* Management before the sandbox: the bus connection and the metrics
	 * directory are opened now (connect and open of a directory are not
	 * in the allow-list). */
	if (r >= 0)
		r = mgmt_attach(&srv, (enum bus_kind)o.bus);
	if (r >= 0) /* after initialisation, before READY=1 */
		r = sandbox_apply(o.seccomp, be->ops->name, metrics_dirfd(&srv),
				  config_grants_noiommu(&cfg));
	if (r < 0) {
		server_fini(&srv);
		event_base_free(base);
		dmb_backend_destroy(be);
		return r;
	}

	struct event *sigs[3];
	sigs[0] = evsignal_new(base, SIGTERM, on_stop, base);
	sigs[1] = evsignal_new(base, SIGINT, on_stop, base);
	sigs[2] = evsignal_new(base, SIGHUP, on_reload, &srv);
	for (int i = 0; i < 3; i++)
		event_add(sigs[i], NULL);

	notify_ready(&srv);
	log_info("dmabrokerd %s ready (pid %d)", DMB_VERSION, (int)getpid());
	event_base_dispatch(base);
	sd_notify(0, "STOPPING=1");
	if (server_stop(&srv)) {
		/* Everything lives on in the fd store for the next process:
		 * tearing down would unmap it. */
		fflush(stderr);
		_exit(EXIT_SUCCESS);
	}

	for (int i = 0; i < 3; i++)
		event_free(sigs[i]);
	server_fini(&srv);
	event_base_free(base);
	dmb_backend_destroy(be);
	return 0;
}

int main(int argc, char **argv)
{
	return run(argc, argv) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
