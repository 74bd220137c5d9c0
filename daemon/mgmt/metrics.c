/* Prometheus text metrics, written to a file (metrics.h). */
#include "mgmt/metrics.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dmb-build.h"
#include "server/server.h"
#include "util/log.h"

struct metrics {
	struct server *srv;
	int dirfd;
	char name[256];   /* the file's name inside dirfd */
	char tmp[270];    /* .NAME.tmp: node_exporter reads *.prom only */
	struct event *ev;
};

/* Label values: backslash, double quote and newline escaped. */
static void label(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n') {
			fputs("\\n", f);
			continue;
		}
		fputc(*s, f);
	}
}

static void head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
	head(f, name, type, help);
	fprintf(f, "%s %" PRIu64 "\n", name, v);
}

static void render(struct server *srv, FILE *f)
{
	struct server_totals t;
	server_totals(srv, &t);
	const struct persist *p = &srv->persist;

	head(f, "dmabroker_info", "gauge", "Version and IOMMU backend of the running broker.");
	fputs("dmabroker_info{version=\"", f);
	label(f, DMB_VERSION);
	fputs("\",backend=\"", f);
	label(f, core_backend_name(&srv->core));
	fputs("\"} 1\n", f);
	one(f, "dmabroker_start_time_seconds", "gauge",
	    "When this broker process started, in seconds since the Unix epoch.",
	    srv->start_realtime_s);
	head(f, "dmabroker_handoff_state", "gauge",
	     "The host handoff state: 1 for the current state, named by the label.");
	fputs("dmabroker_handoff_state{state=\"", f);
	label(f, server_handoff_state(srv));
	fputs("\"} 1\n", f);

	one(f, "dmabroker_clients", "gauge", "Connected client sessions.", t.clients);
	one(f, "dmabroker_contexts", "gauge", "DMA contexts (IOMMU address spaces).", t.contexts);
	one(f, "dmabroker_noiommu_contexts", "gauge",
	    "No-IOMMU contexts (devices without an IOMMU: NO isolation), counted in contexts too.",
	    t.noiommu_contexts);
	one(f, "dmabroker_devices", "gauge", "Devices open and attached to contexts.", t.devices);
	one(f, "dmabroker_regions", "gauge", "Registered guest memory regions.", t.regions);
	one(f, "dmabroker_mappings", "gauge", "IOVA mappings, RAM and P2P.", t.mappings);
	one(f, "dmabroker_mapped_bytes", "gauge", "Bytes mapped, RAM and P2P.", t.mapped_bytes);
	one(f, "dmabroker_pinned_bytes", "gauge",
	    "Guest RAM pinned for DMA, by the backend's own accounting.", t.pinned_bytes);
	one(f, "dmabroker_p2p_mappings", "gauge", "P2P (peer BAR) mappings.", t.p2p_mappings);
	one(f, "dmabroker_p2p_revocations_total", "counter",
	    "P2P mappings revoked (peer memory decoding off, reset, release) since start.",
	    t.revocations);
	one(f, "dmabroker_p2p_restorations_total", "counter",
	    "P2P mappings restored after a revocation since start.", t.restorations);
	one(f, "dmabroker_abusive_disconnects_total", "counter",
	    "Clients disconnected for not reading replies or for malformed packets.",
	    srv->n_disconnects_abuse);
	one(f, "dmabroker_restored_contexts", "gauge",
	    "Contexts re-adopted from the fd store when this process started.",
	    p->restored_contexts);
	one(f, "dmabroker_restored_mappings", "gauge",
	    "Mappings re-adopted from the fd store when this process started.",
	    p->restored_mappings);

	head(f, "dmabroker_requests_total", "counter", "Requests handled, by request kind.");
	for (size_t k = 0; k < RPC_MAX_KIND; k++) {
		const char *n = rpc_request_name(k);
		if (n)
			fprintf(f, "dmabroker_requests_total{request=\"%s\"} %" PRIu64 "\n", n,
				srv->n_requests_kind[k]);
	}
	head(f, "dmabroker_request_errors_total", "counter",
	     "Requests answered with an error, by error code.");
	for (int c = DMB_E_INVALID_ARGUMENT; c <= DMB_E_OUT_OF_RANGE; c++)
		fprintf(f, "dmabroker_request_errors_total{code=\"%s\"} %" PRIu64 "\n",
			dmb_code_name(c), srv->n_errors_code[c]);
}

int metrics_write(struct server *srv)
{
	struct metrics *m = srv->metrics;
	if (!m)
		return 0;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return -ENOMEM;
	render(srv, f);
	if (fclose(f) != 0) {
		free(buf);
		return -ENOMEM;
	}
	int r = 0;
	int fd = openat(m->dirfd, m->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		r = -errno;
	/* Readable by the collector whatever the service's UMask= is. */
	else if (fchmod(fd, 0644) < 0)
		r = -errno;
	for (size_t off = 0; r == 0 && off < len;) {
		ssize_t w = write(fd, buf + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			r = w < 0 ? -errno : -EIO;
		else
			off += (size_t)w;
	}
	if (fd >= 0 && close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && renameat(m->dirfd, m->tmp, m->dirfd, m->name) < 0)
		r = -errno;
	if (r < 0) {
		(void)unlinkat(m->dirfd, m->tmp, 0);
		log_ratelimited(LOG_WARNING, "metrics: could not write %s: %s",
				srv->cfg->metrics_textfile, strerror(-r));
	}
	free(buf);
	return r;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)metrics_write(arg);
}

int metrics_init(struct server *srv)
{
	const char *path = srv->cfg->metrics_textfile;
	if (!path[0])
		return 0;
	const char *slash = strrchr(path, '/');
	char dir[256];
	snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	if (!dir[0])
		snprintf(dir, sizeof(dir), "/");
	struct metrics *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->srv = srv;
	snprintf(m->name, sizeof(m->name), "%s", slash + 1);
	snprintf(m->tmp, sizeof(m->tmp), ".%s.tmp", slash + 1);
	m->dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (m->dirfd < 0) {
		log_error("metrics: cannot open the directory %s of [metrics] textfile: %m; "
			  "serving without metrics", dir);
		free(m);
		return 0;
	}
	srv->metrics = m;
	int r = metrics_write(srv);
	if (r < 0) {
		log_error("metrics: %s cannot be written (%s); serving without metrics", path,
			  strerror(-r));
		metrics_fini(srv, false);
		return 0;
	}
	m->ev = event_new(srv->base, -1, EV_PERSIST, tick_cb, srv);
	if (!m->ev) {
		metrics_fini(srv, false);
		return -ENOMEM;
	}
	struct timeval tv = { srv->cfg->metrics_interval_s, 0 };
	event_add(m->ev, &tv);
	log_info("metrics: %s, rewritten every %u s", path, srv->cfg->metrics_interval_s);
	return 0;
}

int metrics_dirfd(const struct server *srv)
{
	return srv->metrics ? srv->metrics->dirfd : -1;
}

void metrics_fini(struct server *srv, bool stop_for_good)
{
	struct metrics *m = srv->metrics;
	if (!m)
		return;
	if (m->ev)
		event_free(m->ev);
	if (stop_for_good)
		(void)unlinkat(m->dirfd, m->name, 0);
	close(m->dirfd);
	free(m);
	srv->metrics = NULL;
}
