/* sandbox: what the daemon gives up once it is initialised.
 *
 * sandbox_apply() runs after the backend exists and the socket listens, and
 * before READY=1 (systemd's rule: READY only once privileges are dropped):
 *   1. capabilities: everything is dropped except CAP_IPC_LOCK, when held
 *      (pinning guest memory for DMA is charged to RLIMIT_MEMLOCK unless
 *      the task that maps holds it), and CAP_SYS_RAWIO, when held, on the
 *      iommufd backend, and only when the configuration grants no-IOMMU
 *      contexts to someone (opening a noiommu-vfioN cdev and
 *      IOMMU_IOAS_NOIOMMU_GET_PA need it); bounding and ambient sets are
 *      cleared;
 *   2. PR_SET_NO_NEW_PRIVS;
 *   3. a seccomp allow-list (libseccomp): the syscalls the daemon makes in
 *      steady state, ioctl restricted to the request numbers of the chosen
 *      backend, default action KILL_PROCESS (or LOG, or no filter at all).
 *
 * The allow-list, and how to extend it, is described in sandbox.c. */
#pragma once

#include <stdbool.h>

enum sandbox_seccomp {
	SANDBOX_SECCOMP_KILL = 0, /* default: a forbidden syscall kills the daemon (SIGSYS) */
	SANDBOX_SECCOMP_LOG,      /* debugging: forbidden syscalls run and are logged (audit) */
	SANDBOX_SECCOMP_OFF,      /* no filter (capabilities are dropped all the same) */
};

/* "kill", "log" or "off"; -EINVAL for anything else. */
int sandbox_parse_seccomp(const char *s);

/* Drops privileges and installs the filter for the backend named `backend`
 * ("sim", "vfio-type1", "iommufd"). metrics_dirfd >= 0: files may be
 * created, renamed and unlinked relative to it (the metrics textfile).
 * noiommu: the configuration grants no-IOMMU contexts (config_grants_noiommu).
 * Returns 0 or a negative errno (logged); on failure the daemon must not
 * serve. Call once. */
int sandbox_apply(enum sandbox_seccomp mode, const char *backend, int metrics_dirfd,
		  bool noiommu);
