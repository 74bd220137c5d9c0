/* luo.c — the kernel's Live Update Orchestrator as a preserver.
 *
 * /dev/liveupdate admits one opener at a time, so it is opened only for
 * the moment a CREATE_SESSION or RETRIEVE_SESSION needs it and closed right
 * after; the session fds it returns stand alone (closing the device does
 * not affect them). Every ioctl goes through ksys_ioctl() and the open
 * through ksys_open(), so the unit tests' fake kernel sees the exact bytes.
 * Facts: include/uapi/linux/liveupdate.h and kernel/liveupdate/. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/ksys.h"
#include "backend/uapi/liveupdate.h"
#include "backend/preserve/impl.h"
#include "util/macro.h"

struct luo {
	struct dmb_preserver base;
	char dev[256];
	char release[128]; /* the kernel release; "" means read /proc */
};

static struct luo *to_luo(struct dmb_preserver *p)
{
	return dmb_container_of(p, struct luo, base);
}

/* First line of a small /proc file into buf ("" when unreadable). */
static void read_line(const char *path, char *buf, size_t n)
{
	buf[0] = '\0';
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t r = read(fd, buf, n - 1);
	buf[r > 0 ? r : 0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
}

/* Why this kernel has no LUO device, as a sentence (no device path). */
void preserver_luo_absent(char *buf, size_t n)
{
	char release[128], cmdline[4096];
	read_line("/proc/sys/kernel/osrelease", release, sizeof(release));
	read_line("/proc/cmdline", cmdline, sizeof(cmdline));
	const char *rel = release[0] ? release : "of unknown release";
	unsigned major = 0, minor = 0;
	bool old = sscanf(release, "%u.%u", &major, &minor) == 2 &&
		   (major < 6 || (major == 6 && minor < 19));
	bool enabled = strstr(cmdline, "liveupdate=on") || strstr(cmdline, "liveupdate=1") ||
		       strstr(cmdline, "liveupdate=y");
	/* A kernel built with LUO registers the device only when booted with
	 * liveupdate=on (which needs kho=on). */
	if (!old && cmdline[0] && !enabled)
		snprintf(buf, n,
			 "this kernel (%.40s) was booted without liveupdate=on, so its Live Update "
			 "Orchestrator is off: boot it with kho=on liveupdate=on (Linux 6.19+, "
			 "CONFIG_LIVEUPDATE)",
			 rel);
	else
		snprintf(buf, n,
			 "this kernel (%.40s) has no Live Update Orchestrator: that needs Linux 6.19+ "
			 "built with CONFIG_LIVEUPDATE and booted with kho=on liveupdate=on",
			 rel);
}

/* The device is missing: say what this kernel lacks. */
static int explain_missing(struct luo *l, int err, struct dmb_err *e)
{
	char why[400];
	preserver_luo_absent(why, sizeof(why));
	return dmb_fail(e, DMB_E_FAILED_PRECONDITION, -err, "%s does not exist (%s): %s", l->dev,
			ksys_errno_name(err), why);
}

/* Opens the device for one operation; closed by the caller. */
static int open_dev(struct luo *l, struct dmb_err *e)
{
	int fd = ksys_open(l->dev, O_RDWR);
	if (fd >= 0)
		return fd;
	if (fd == -ENOENT || fd == -ENODEV || fd == -ENXIO)
		return explain_missing(l, fd, e);
	return preserve_explain(e, l->dev, PRESERVE_OP_OPEN, fd, NULL, 0);
}

/* Whether this kernel's LUO brings a memfd's seals across the kexec. The
 * memfd handler of Linux 6.19 (format "memfd-v1") re-creates a retrieved
 * memfd unsealable, without F_SEAL_SHRINK, so the broker could re-adopt no
 * region after the kexec and the guests' memory would be lost when the
 * session is finished. 7.3 (format "memfd-v2") re-applies the seals. The
 * uAPI tells neither the format nor the seals before the kexec, so the
 * kernel release decides: 7.3 and later are what this was proven on; 7.0 to
 * 7.2 were not tried and are refused with the rest. */
static bool release_keeps_seals(const char *release)
{
	unsigned major = 0, minor = 0;
	if (sscanf(release, "%u.%u", &major, &minor) != 2)
		return false;
	return major > 7 || (major == 7 && minor >= 3);
}

static int luo_probe(struct dmb_preserver *p, struct dmb_err *e)
{
	struct luo *l = to_luo(p);
	int fd = open_dev(l, e);
	if (fd < 0)
		return fd;
	close(fd);
	char release[128];
	if (l->release[0])
		snprintf(release, sizeof(release), "%s", l->release);
	else
		read_line("/proc/sys/kernel/osrelease", release, sizeof(release));
	if (!release_keeps_seals(release))
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EOPNOTSUPP,
				"this kernel (%.40s) re-creates preserved memfds without their seals: "
				"no region could be re-adopted after the kexec and guest memory would "
				"be lost; a handoff needs Linux 7.3+",
				release[0] ? release : "of unknown release");
	return 0;
}

void luo_preserver_set_release(struct dmb_preserver *p, const char *release)
{
	struct luo *l = to_luo(p);
	snprintf(l->release, sizeof(l->release), "%s", release ? release : "");
}

/* CREATE_SESSION and RETRIEVE_SESSION share their layout. */
static int session_ioctl(struct luo *l, unsigned long req, enum preserve_op op, const char *name,
			 int *session_fd, struct dmb_err *e)
{
	int r = preserve_check_name(name, e);
	if (r < 0)
		return r;
	_cleanup_close_ int dev = open_dev(l, e);
	if (dev < 0)
		return dev;
	struct dmb_liveupdate_ioctl_create_session a;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	memcpy(a.name, name, strlen(name)); /* NUL-terminated by the memset */
	r = ksys_ioctl(dev, req, &a);
	if (r < 0)
		return preserve_explain(e, l->dev, op, r, name, 0);
	if (a.fd < 0)
		return dmb_fail(e, DMB_E_INTERNAL, EIO,
				"%s answered session \"%s\" with no file descriptor (%d)", l->dev, name,
				a.fd);
	*session_fd = a.fd;
	return 0;
}

static int luo_create_session(struct dmb_preserver *p, const char *name, int *session_fd,
			      struct dmb_err *e)
{
	return session_ioctl(to_luo(p), DMB_LIVEUPDATE_IOCTL_CREATE_SESSION, PRESERVE_OP_CREATE,
			     name, session_fd, e);
}

static int luo_retrieve_session(struct dmb_preserver *p, const char *name, int *session_fd,
				struct dmb_err *e)
{
	return session_ioctl(to_luo(p), DMB_LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
			     PRESERVE_OP_RETRIEVE, name, session_fd, e);
}

static int luo_preserve_fd(struct dmb_preserver *p, int session_fd, int fd, uint64_t token,
			   struct dmb_err *e)
{
	struct dmb_liveupdate_session_preserve_fd a = {
		.size = sizeof(a),
		.fd = fd,
		.token = token,
	};
	int r = ksys_ioctl(session_fd, DMB_LIVEUPDATE_SESSION_PRESERVE_FD, &a);
	if (r < 0)
		return preserve_explain(e, to_luo(p)->dev, PRESERVE_OP_PRESERVE_FD, r, NULL, token);
	return 0;
}

static int luo_retrieve_fd(struct dmb_preserver *p, int session_fd, uint64_t token, int *fd,
			   struct dmb_err *e)
{
	struct dmb_liveupdate_session_retrieve_fd a = {
		.size = sizeof(a),
		.fd = -1,
		.token = token,
	};
	int r = ksys_ioctl(session_fd, DMB_LIVEUPDATE_SESSION_RETRIEVE_FD, &a);
	if (r < 0)
		return preserve_explain(e, to_luo(p)->dev, PRESERVE_OP_RETRIEVE_FD, r, NULL, token);
	if (a.fd < 0)
		return dmb_fail(e, DMB_E_INTERNAL, EIO,
				"%s answered token %#llx with no file descriptor (%d)", to_luo(p)->dev,
				(unsigned long long)token, a.fd);
	*fd = a.fd;
	return 0;
}

static int luo_finish(struct dmb_preserver *p, int session_fd, struct dmb_err *e)
{
	struct dmb_liveupdate_session_finish a = {
		.size = sizeof(a),
		.reserved = 0,
	};
	int r = ksys_ioctl(session_fd, DMB_LIVEUPDATE_SESSION_FINISH, &a);
	if (r < 0)
		return preserve_explain(e, to_luo(p)->dev, PRESERVE_OP_FINISH, r, NULL, 0);
	return 0;
}

static void luo_destroy(struct dmb_preserver *p)
{
	free(to_luo(p));
}

static const struct dmb_preserver_ops luo_ops = {
	.name = "luo",
	.probe = luo_probe,
	.create_session = luo_create_session,
	.retrieve_session = luo_retrieve_session,
	.preserve_fd = luo_preserve_fd,
	.retrieve_fd = luo_retrieve_fd,
	.finish = luo_finish,
	.destroy = luo_destroy,
};

int luo_preserver_new(const char *dev_path, struct dmb_preserver **out, struct dmb_err *e)
{
	struct luo *l = calloc(1, sizeof(*l));
	if (!l)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	if (ksys_path(l->dev, sizeof(l->dev), "%s", dev_path) < 0) {
		free(l);
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, ENAMETOOLONG,
				"the LUO device path is longer than %zu bytes", sizeof(l->dev) - 1);
	}
	l->base.ops = &luo_ops;
	*out = &l->base;
	return 0;
}
