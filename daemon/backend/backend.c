/* Backend selection. "auto" probes iommufd, then VFIO type1, and refuses to
 * start with one sentence naming what is missing; the simulated backend is
 * only ever chosen by name. */
#include "backend.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util/log.h"

int dmb_backend_create(const struct dmb_backend_config *cfg, struct dmb_backend **out,
		       struct dmb_err *e)
{
	const char *name = cfg->name ? cfg->name : "auto";

	if (strcmp(name, "sim") == 0)
		return dmb_sim_create(cfg, out, e);
	if (strcmp(name, "vfio-type1") == 0 || strcmp(name, "type1") == 0)
		return dmb_type1_create(cfg, out, e);
	if (strcmp(name, "iommufd") == 0)
		return dmb_iommufd_create(cfg, out, e);
	if (strcmp(name, "auto") != 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"unknown backend '%s' (choose auto, iommufd, vfio-type1 or sim)", name);

	struct dmb_err e_iommufd = {0}, e_type1 = {0};
	int r = dmb_iommufd_create(cfg, out, &e_iommufd);
	if (r == 0)
		return 0;
	r = dmb_type1_create(cfg, out, &e_type1);
	if (r == 0) {
		log_info("backend auto: iommufd unusable (%s); using vfio-type1", e_iommufd.msg);
		return 0;
	}
	return dmb_fail(e, DMB_E_FAILED_PRECONDITION, ENODEV,
			"no usable IOMMU backend: iommufd: %s; vfio-type1: %s "
			"(use --backend=sim for the simulated backend)",
			e_iommufd.msg, e_type1.msg);
}

void dmb_backend_destroy(struct dmb_backend *be)
{
	if (be)
		be->ops->destroy(be);
}
