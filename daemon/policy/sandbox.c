/* sandbox.c — capabilities, no_new_privs and the seccomp allow-list.
 *
 * The allow-list is the daemon's steady state: what it calls between
 * READY=1 and exit, found by strace -f of the daemon under the whole
 * integration tier and the VM tier (type1), and by reading the backends
 * (every ksys_ioctl request). Start-up (config, backend probing, bind,
 * listen) happens before the filter and needs none of its own entries.
 *
 * Arguments are checked where a check is cheap and means something:
 *   - ioctl: the request number must be one the chosen backend issues
 *     (the sim backend issues none), one of the five LUO requests (the
 *     host-handoff preserver), or FIONREAD (proto/wire.c's SIOCINQ);
 *   - openat: read-only or read-write opens of existing files only (no
 *     O_CREAT, O_TRUNC, O_APPEND, O_WRONLY, O_TMPFILE): sysfs attributes,
 *     the VFIO and iommufd device nodes, a policy reload;
 *   - mmap / mprotect: never PROT_EXEC;
 *   - socket: AF_UNIX only (sd_notify);
 *   - fcntl: the commands the daemon uses (flags, CLOEXEC dup, seals);
 *   - tgkill: this process only (abort());
 *   - the metrics file (metrics.c): openat with O_CREAT, renameat(2) and
 *     unlinkat only relative to the metrics directory's fd (opened before
 *     the filter), so the daemon can create files in that one directory.
 * Everything else is refused with the default action: KILL_PROCESS (the
 * daemon dies by SIGSYS and the kernel audit log names the syscall), or
 * LOG with --seccomp=log (the call runs and is logged: use it to find what
 * a new feature needs, then add it here with a comment saying who calls it).
 *
 * Adding a backend ioctl: add its request to that backend's table below;
 * tests/integration/test_sandbox.c reads the backend sources and fails when
 * a ksys_ioctl() request is missing here.
 *
 * Sanitizer builds (ASan, UBSan) run with the filter on too: their runtime
 * needs a few more calls (reports, LeakSanitizer's stop-the-world at exit),
 * added only in those builds (SANITIZER_SYSCALLS below). */
#include "policy/sandbox.h"

#include <cap-ng.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "backend/uapi/iommufd.h"
#include "backend/uapi/liveupdate.h"
#include "backend/uapi/vfio_cdev.h"
#include "backend/uapi/vfio_container.h"
#include "util/log.h"
#include "util/macro.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define DMB_SANITIZER 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
#define DMB_SANITIZER 1
#endif

/* O_TMPFILE's own bit: glibc's O_TMPFILE and __O_TMPFILE include
 * O_DIRECTORY, which opendir() needs. */
#define TMPFILE_BIT 020000000

int sandbox_parse_seccomp(const char *s)
{
	if (strcmp(s, "kill") == 0)
		return SANDBOX_SECCOMP_KILL;
	if (strcmp(s, "log") == 0)
		return SANDBOX_SECCOMP_LOG;
	if (strcmp(s, "off") == 0)
		return SANDBOX_SECCOMP_OFF;
	return -EINVAL;
}

/* ---- the allow-list ---- */

/* Allowed with any arguments. */
static const int plain_syscalls[] = {
	/* the event loop: libevent's epoll backend; its signal handler writes
	 * to a socketpair (send/recv are sendto/recvfrom) */
	SCMP_SYS(epoll_wait), SCMP_SYS(epoll_pwait), SCMP_SYS(epoll_ctl),
	SCMP_SYS(sendto), SCMP_SYS(recvfrom),
	SCMP_SYS(rt_sigaction), SCMP_SYS(rt_sigprocmask), SCMP_SYS(rt_sigreturn),
	SCMP_SYS(restart_syscall),
	/* clients (server.c, session.c, proto/wire.c): accept, packets with
	 * SCM_RIGHTS, SO_PEERCRED, buffer sizes, the end-of-stream poll */
	SCMP_SYS(accept4), SCMP_SYS(recvmsg), SCMP_SYS(sendmsg),
	SCMP_SYS(getsockopt), SCMP_SYS(setsockopt), SCMP_SYS(poll), SCMP_SYS(ppoll),
	SCMP_SYS(close),
	/* the simulated preserver (preserve/sim.c): a session is a connection
	 * to its unix socket, made at handoff prepare and restore */
	SCMP_SYS(connect),
	/* regions (core/region.c, backends): what the client's fd is, the
	 * daemon's MAP_SHARED mmap of it; the sim's memfds and config space */
	SCMP_SYS(fstat), SCMP_SYS(newfstatat), SCMP_SYS(fstatfs),
	SCMP_SYS(readlink), SCMP_SYS(readlinkat), /* /proc/self/fd/N */
	SCMP_SYS(munmap), SCMP_SYS(mremap), SCMP_SYS(madvise), SCMP_SYS(brk),
	SCMP_SYS(pread64), SCMP_SYS(pwrite64), /* config space (sim memfd, VFIO region) */
	SCMP_SYS(memfd_create), SCMP_SYS(ftruncate), SCMP_SYS(fallocate),
	/* device open (kernel backends): sysfs attributes, links, directories */
	SCMP_SYS(read), SCMP_SYS(getdents64),
	/* logging to stderr / the journal stream */
	SCMP_SYS(write), SCMP_SYS(writev),
	/* sd_notify (READY, STOPPING): its credentials check */
	SCMP_SYS(getuid), SCMP_SYS(geteuid), SCMP_SYS(getgid), SCMP_SYS(getegid),
	/* time, identity, locks (the sim's rwlock), exit */
	SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday), SCMP_SYS(getpid), SCMP_SYS(gettid),
	SCMP_SYS(futex), SCMP_SYS(getrandom), SCMP_SYS(exit), SCMP_SYS(exit_group),
	/* glibc's qsort sizes its buffer with sysconf(_SC_PHYS_PAGES) */
	SCMP_SYS(sysinfo),
	/* the worker pool's threads (worker.c) start after the filter is in
	 * place: glibc's pthread_create registers a robust futex list and an
	 * rseq area in the new thread; the stack is mmap/mprotect (no exec),
	 * freed with madvise/munmap. clone itself is below (threads only). */
	SCMP_SYS(set_robust_list), SCMP_SYS(rseq),
	/* ... and each worker lowers its own priority (worker.c) */
	SCMP_SYS(setpriority),
	/* shutdown: the socket file this daemon created (server_fini) */
	SCMP_SYS(unlink),
	/* the metrics file is made world-readable whatever UMask= is (metrics.c);
	 * creating files is confined to the metrics directory (below) */
	SCMP_SYS(fchmod),
};

#ifdef DMB_SANITIZER
/* What the ASan/UBSan/LSan runtimes call after start-up (found with
 * --seccomp=log under the integration tier and on forced reports): reports
 * (isatty on stderr -- TCGETS, below --, the process's maps and its own
 * binary for symbols: open, lseek, getdents; sigaltstack for the deadly-
 * signal handler) and LeakSanitizer's check at exit, which stops the world
 * from a clone()d tracer with prctl(PR_SET_PDEATHSIG), getppid, ptrace,
 * wait4 and sched_yield (nanosleep when a thread is slow to stop). `open`
 * gets the same read-only flag check as openat. Production builds allow
 * none of these. */
static const int sanitizer_syscalls[] = {
	SCMP_SYS(lseek), SCMP_SYS(getdents), SCMP_SYS(sigaltstack), SCMP_SYS(clone),
	SCMP_SYS(prctl), SCMP_SYS(getppid), SCMP_SYS(ptrace), SCMP_SYS(wait4),
	SCMP_SYS(sched_yield), SCMP_SYS(nanosleep), SCMP_SYS(clock_nanosleep),
	/* the runtime's thread start (worker pool) reads the CPU affinity */
	SCMP_SYS(sched_getaffinity),
};
#endif

/* fcntl commands (region.c: F_GETFL, F_GET_SEALS; session.c: F_DUPFD_CLOEXEC;
 * sim.c: F_ADD_SEALS; libevent: F_GETFD/F_SETFD/F_SETFL). */
static const int fcntl_cmds[] = {
	F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC, F_GET_SEALS, F_ADD_SEALS,
};

/* ioctl requests of every backend: proto/wire.c's SIOCINQ (== FIONREAD). */
static const unsigned long common_ioctls[] = { SIOCINQ };

#ifdef DMB_SANITIZER
/* The sanitizer runtime asks whether stderr is a terminal (colours). */
static const unsigned long sanitizer_ioctls[] = { TCGETS };
#endif

/* The kernel's Live Update Orchestrator (preserve/luo.c), on
 * /dev/liveupdate and its session fds. The preserver is chosen apart from
 * the backend, so every backend's list has them. */
static const unsigned long luo_ioctls[] = {
	DMB_LIVEUPDATE_IOCTL_CREATE_SESSION, DMB_LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
	DMB_LIVEUPDATE_SESSION_PRESERVE_FD, DMB_LIVEUPDATE_SESSION_RETRIEVE_FD,
	DMB_LIVEUPDATE_SESSION_FINISH,
};

/* vfio-type1 (vfio_type1.c, ksys.c): container, group and device ioctls. */
static const unsigned long type1_ioctls[] = {
	VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU,
	VFIO_GROUP_GET_STATUS, VFIO_GROUP_SET_CONTAINER, VFIO_GROUP_UNSET_CONTAINER,
	VFIO_GROUP_GET_DEVICE_FD, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA,
	VFIO_IOMMU_UNMAP_DMA, VFIO_DEVICE_GET_REGION_INFO, VFIO_DEVICE_RESET,
};

/* iommufd (iommufd.c, ksys.c): IOAS, cdev bind/attach, device features. */
static const unsigned long iommufd_ioctls[] = {
	DMB_IOMMU_IOAS_ALLOC, DMB_IOMMU_DESTROY, DMB_IOMMU_IOAS_IOVA_RANGES,
	DMB_IOMMU_IOAS_MAP, DMB_IOMMU_IOAS_MAP_FILE, DMB_IOMMU_IOAS_UNMAP,
	DMB_IOMMU_GET_HW_INFO, DMB_IOMMU_IOAS_CHANGE_PROCESS, DMB_IOMMU_IOAS_NOIOMMU_GET_PA,
	DMB_VFIO_DEVICE_BIND_IOMMUFD, DMB_VFIO_DEVICE_ATTACH_IOMMUFD_PT,
	DMB_VFIO_DEVICE_DETACH_IOMMUFD_PT, VFIO_DEVICE_FEATURE,
	VFIO_DEVICE_GET_REGION_INFO, VFIO_DEVICE_RESET,
};

/* SCMP_A<n>() leaves datum_b to the compiler, which clang's
 * -Wmissing-field-initializers refuses; spell every field. */
static struct scmp_arg_cmp cmp(unsigned arg, enum scmp_compare op, scmp_datum_t a, scmp_datum_t b)
{
	return (struct scmp_arg_cmp){ .arg = arg, .op = op, .datum_a = a, .datum_b = b };
}

struct filter {
	scmp_filter_ctx ctx;
	unsigned n_syscalls; /* distinct syscalls with at least one rule */
	unsigned n_ioctls;
};

/* One rule; a syscall that does not exist on this architecture (libseccomp
 * gives it a negative pseudo number) is skipped. */
static int rule(struct filter *f, int nr, unsigned n, const struct scmp_arg_cmp *args)
{
	if (nr < 0)
		return 0;
	int r = seccomp_rule_add_array(f->ctx, SCMP_ACT_ALLOW, nr, n, args);
	if (r < 0) {
		char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
		log_error("seccomp: cannot add a rule for %s: %s", name ? name : "?", strerror(-r));
		free(name);
	}
	return r;
}

static int allow(struct filter *f, int nr)
{
	int r = rule(f, nr, 0, NULL);
	if (r == 0 && nr >= 0)
		f->n_syscalls++;
	return r;
}

static int allow_ioctls(struct filter *f, const unsigned long *req, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct scmp_arg_cmp a = cmp(1, SCMP_CMP_EQ, req[i], 0);
		int r = rule(f, SCMP_SYS(ioctl), 1, &a);
		if (r == -EEXIST) /* shared by two tables (region info, reset) */
			continue;
		if (r < 0)
			return r;
		f->n_ioctls++;
	}
	return 0;
}

/* The metrics textfile (metrics.c): create, rename and unlink relative to
 * dirfd, and nowhere else. */
static int allow_metrics_dir(struct filter *f, int dirfd)
{
	struct scmp_arg_cmp at = cmp(0, SCMP_CMP_EQ, (scmp_datum_t)dirfd, 0);
	struct scmp_arg_cmp both[2] = { at, cmp(2, SCMP_CMP_EQ, (scmp_datum_t)dirfd, 0) };
	int r;
	if ((r = rule(f, SCMP_SYS(openat), 1, &at)) < 0 ||
	    (r = rule(f, SCMP_SYS(unlinkat), 1, &at)) < 0 ||
	    (r = rule(f, SCMP_SYS(renameat), 2, both)) < 0 ||
	    (r = rule(f, SCMP_SYS(renameat2), 2, both)) < 0)
		return r;
	f->n_syscalls += 3; /* unlinkat, renameat, renameat2 (openat counted below) */
	return 0;
}

static int build_filter(struct filter *f, const char *backend, int metrics_dirfd)
{
	int r;
	for (size_t i = 0; i < DMB_ARRAY_SIZE(plain_syscalls); i++)
		if ((r = allow(f, plain_syscalls[i])) < 0)
			return r;
#ifdef DMB_SANITIZER
	for (size_t i = 0; i < DMB_ARRAY_SIZE(sanitizer_syscalls); i++)
		if ((r = allow(f, sanitizer_syscalls[i])) < 0)
			return r;
#endif

	/* openat: existing files, read-only or read-write. */
	struct scmp_arg_cmp open_ro = cmp(2, SCMP_CMP_MASKED_EQ,
					  O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_APPEND | TMPFILE_BIT, 0);
	if ((r = rule(f, SCMP_SYS(openat), 1, &open_ro)) < 0)
		return r;
#ifdef DMB_SANITIZER
	open_ro.arg = 1;
	if ((r = rule(f, SCMP_SYS(open), 1, &open_ro)) < 0)
		return r;
	f->n_syscalls++;
#endif
	/* mmap / mprotect: never executable. */
	struct scmp_arg_cmp no_exec = cmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0);
	if ((r = rule(f, SCMP_SYS(mmap), 1, &no_exec)) < 0 ||
	    (r = rule(f, SCMP_SYS(mprotect), 1, &no_exec)) < 0)
		return r;
	/* socket: AF_UNIX (sd_notify's datagram socket). */
	struct scmp_arg_cmp unix_only = cmp(0, SCMP_CMP_EQ, AF_UNIX, 0);
	if ((r = rule(f, SCMP_SYS(socket), 1, &unix_only)) < 0)
		return r;
	/* tgkill: this process (abort() raises SIGABRT on itself). */
	struct scmp_arg_cmp self = cmp(0, SCMP_CMP_EQ, (scmp_datum_t)getpid(), 0);
	if ((r = rule(f, SCMP_SYS(tgkill), 1, &self)) < 0 && r != -EEXIST)
		return r;
	for (size_t i = 0; i < DMB_ARRAY_SIZE(fcntl_cmds); i++) {
		struct scmp_arg_cmp c = cmp(1, SCMP_CMP_EQ, (scmp_datum_t)fcntl_cmds[i], 0);
		if ((r = rule(f, SCMP_SYS(fcntl), 1, &c)) < 0)
			return r;
	}
	f->n_syscalls += 6; /* openat, mmap, mprotect, socket, tgkill, fcntl */
	if (metrics_dirfd >= 0 && (r = allow_metrics_dir(f, metrics_dirfd)) < 0)
		return r;

	/* Threads (the worker pool), never a new process: clone only with
	 * CLONE_THREAD. clone3 passes its flags in memory, where seccomp cannot
	 * look, so it answers ENOSYS and glibc falls back to clone. (Sanitizer
	 * builds allow clone whole, above, for LeakSanitizer's tracer.) */
	r = seccomp_rule_add(f->ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	if (r < 0 && r != -EEXIST)
		return r;
#ifndef DMB_SANITIZER
	struct scmp_arg_cmp thread_only = cmp(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD);
	if ((r = rule(f, SCMP_SYS(clone), 1, &thread_only)) < 0)
		return r;
	f->n_syscalls++;
#endif

	/* ioctl: the backend's requests only. */
	if ((r = allow_ioctls(f, common_ioctls, DMB_ARRAY_SIZE(common_ioctls))) < 0)
		return r;
	if ((r = allow_ioctls(f, luo_ioctls, DMB_ARRAY_SIZE(luo_ioctls))) < 0)
		return r;
#ifdef DMB_SANITIZER
	if ((r = allow_ioctls(f, sanitizer_ioctls, DMB_ARRAY_SIZE(sanitizer_ioctls))) < 0)
		return r;
#endif
	if (strcmp(backend, "vfio-type1") == 0)
		r = allow_ioctls(f, type1_ioctls, DMB_ARRAY_SIZE(type1_ioctls));
	else if (strcmp(backend, "iommufd") == 0)
		r = allow_ioctls(f, iommufd_ioctls, DMB_ARRAY_SIZE(iommufd_ioctls));
	else if (strcmp(backend, "sim") != 0)
		return log_error_errno(-EINVAL, "seccomp: no ioctl allow-list for backend %s", backend);
	if (r < 0)
		return r;
	f->n_syscalls++; /* ioctl */
	return 0;
}

static int install_seccomp(enum sandbox_seccomp mode, const char *backend, int metrics_dirfd)
{
	uint32_t deflt = SCMP_ACT_KILL_PROCESS;
	if (mode == SANDBOX_SECCOMP_LOG) {
		deflt = SCMP_ACT_LOG;
		if (seccomp_api_get() < 3)
			return log_error_errno(-EOPNOTSUPP,
					       "seccomp: --seccomp=log needs a kernel with "
					       "SECCOMP_RET_LOG (4.14 or later)");
	} else if (seccomp_api_get() < 3) {
		/* No KILL_PROCESS before 4.14: killing the one thread the
		 * daemon has ends it all the same. */
		deflt = SCMP_ACT_KILL;
	}

	struct filter f = { .ctx = seccomp_init(deflt) };
	if (!f.ctx)
		return log_error_errno(-ENOMEM, "seccomp: seccomp_init failed");
	/* Calls through another ABI (i386 int 0x80, x32) get the same answer. */
	int r = seccomp_attr_set(f.ctx, SCMP_FLTATR_ACT_BADARCH, deflt);
	if (r == 0)
		r = build_filter(&f, backend, metrics_dirfd);
	if (r == 0) {
		r = seccomp_load(f.ctx);
		if (r < 0)
			log_error("seccomp: loading the filter failed: %s", strerror(-r));
	}
	seccomp_release(f.ctx);
	if (r < 0)
		return r;
	log_info("sandbox: seccomp allow-list of %u syscalls and %u ioctl requests (backend %s%s); "
		 "anything else %s",
		 f.n_syscalls, f.n_ioctls, backend,
#ifdef DMB_SANITIZER
		 ", plus the sanitizer runtime's",
#else
		 "",
#endif
		 mode == SANDBOX_SECCOMP_LOG ? "is logged (--seccomp=log)" : "kills the daemon");
	return 0;
}

/* ---- capabilities ---- */

/* Keeps CAP_SYS_RAWIO when it is held and want_rawio (the iommufd backend
 * and a configuration that grants no-IOMMU contexts): the kernel asks it
 * of every open of a noiommu-vfioN cdev (device_cdev.c) and of every
 * IOMMU_IOAS_NOIOMMU_GET_PA (ioas.c). The shipped unit does not give it;
 * an operator who enables no-IOMMU contexts adds it (docs/operations.md).
 * Keeps CAP_IPC_LOCK when it is held: the IOMMU backends pin every mapped
 * page, and that is charged to RLIMIT_MEMLOCK (type1: the mapping task's
 * locked_vm; iommufd: the user's) unless the task that maps has
 * CAP_IPC_LOCK. The broker pins on behalf of all its clients, so a limit
 * per process would cap the whole host's guest memory. Nothing else is
 * needed once the device nodes are open or openable by file permissions:
 * everything else is dropped, the bounding set too (when CAP_SETPCAP
 * allows), and the ambient set is cleared. */
static int drop_capabilities(bool want_rawio)
{
	if (capng_get_caps_process() < 0)
		return log_error_errno(-EIO, "capabilities: cannot read this process's capabilities");
	bool ipc_lock = capng_have_capability(CAPNG_PERMITTED, CAP_IPC_LOCK);
	bool rawio = want_rawio && capng_have_capability(CAPNG_PERMITTED, CAP_SYS_RAWIO);
	bool setpcap = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP);

	capng_select_t sel = CAPNG_SELECT_CAPS | CAPNG_SELECT_AMBIENT;
	capng_clear(CAPNG_SELECT_ALL);
	if (ipc_lock)
		capng_update(CAPNG_ADD, CAPNG_EFFECTIVE | CAPNG_PERMITTED | CAPNG_BOUNDING_SET,
			     CAP_IPC_LOCK);
	if (rawio)
		capng_update(CAPNG_ADD, CAPNG_EFFECTIVE | CAPNG_PERMITTED | CAPNG_BOUNDING_SET,
			     CAP_SYS_RAWIO);
	if (setpcap)
		sel |= CAPNG_SELECT_BOUNDS;
	int r = capng_apply(sel);
	if (r < 0)
		return log_error_errno(-EPERM, "capabilities: dropping them failed (libcap-ng %d)", r);
	log_info("sandbox: capabilities dropped%s%s", ipc_lock ? "; kept CAP_IPC_LOCK (pinning)" : "",
		 rawio ? "; kept CAP_SYS_RAWIO (no-IOMMU devices: the policy grants no-IOMMU "
			 "contexts)" : "");
	if (want_rawio && !rawio)
		log_warning("sandbox: the policy grants no-IOMMU contexts but the broker does not "
			    "hold CAP_SYS_RAWIO: opening a no-IOMMU device will fail (EPERM); see "
			    "docs/operations.md, \"No-IOMMU contexts\"");
	return 0;
}

/* ---- the test hook ----
 *
 * DMABROKERD_TEST_FORBIDDEN_SYSCALL=socket|ioctl|setns in the daemon's
 * environment makes SIGUSR2 run one syscall the filter forbids (1 means
 * socket), so tests/integration/test_sandbox.c can prove that it kills (or,
 * with --seccomp=log, only logs). Only whoever starts the daemon sets its
 * environment or may signal it; no client request reaches this. */
static volatile sig_atomic_t test_kind;

static void test_forbidden(int sig)
{
	int saved = errno;
	long r = -1;
	switch (test_kind) {
	case 1: /* an IPv4 socket: socket is allowed for AF_UNIX only */
		r = syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		break;
	case 2: /* TIOCSTI on stdin: an ioctl request outside the backend's list */
		r = syscall(SYS_ioctl, 0, TIOCSTI, "");
		break;
	case 3: /* a syscall on no list, sanitizer builds' included (no fd: no effect) */
		r = syscall(SYS_setns, -1, 0);
		break;
	}
	if (test_kind == 1 && r >= 0)
		close((int)r);
	errno = saved;
}

static int arm_test_hook(void)
{
	const char *v = getenv("DMABROKERD_TEST_FORBIDDEN_SYSCALL");
	if (!v || !*v)
		return 0;
	if (strcmp(v, "1") == 0 || strcmp(v, "socket") == 0)
		test_kind = 1;
	else if (strcmp(v, "ioctl") == 0)
		test_kind = 2;
	else if (strcmp(v, "setns") == 0)
		test_kind = 3;
	else
		return log_error_errno(-EINVAL, "DMABROKERD_TEST_FORBIDDEN_SYSCALL=%s: expected socket, "
				       "ioctl or setns", v);
	struct sigaction sa = { .sa_handler = test_forbidden, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL) < 0)
		return log_error_errno(-errno, "sigaction(SIGUSR2): %m");
	log_warning("TEST HOOK: SIGUSR2 makes a forbidden %s call "
		    "(DMABROKERD_TEST_FORBIDDEN_SYSCALL is set)", v);
	return 0;
}

int sandbox_apply(enum sandbox_seccomp mode, const char *backend, int metrics_dirfd,
		  bool noiommu)
{
	int r = arm_test_hook();
	if (r < 0)
		return r;
	r = drop_capabilities(noiommu && strcmp(backend, "iommufd") == 0);
	if (r < 0)
		return r;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return log_error_errno(-errno, "prctl(PR_SET_NO_NEW_PRIVS): %m");
	if (mode == SANDBOX_SECCOMP_OFF) {
		log_warning("sandbox: no seccomp filter (--seccomp=off)");
		return 0;
	}
	return install_seccomp(mode, backend, metrics_dirfd);
}
