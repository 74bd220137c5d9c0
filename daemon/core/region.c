/* Regions: guest memory registered once per context.
 *
 * The client passes a memfd (or a tmpfs / hugetlbfs file) once; the broker
 * checks what it is, keeps the fd and lets the backend prepare it (type1 and
 * the sim mmap it once). Later requests name the region by handle, so the hot
 * path never carries an fd.
 *
 * What is accepted, and why:
 * - a regular file on tmpfs/shmem (memfds live there) or hugetlbfs: the
 *   kernels' map-by-file paths pin exactly these;
 * - readable (mappings are read by devices and by the broker's own mmap);
 * - sealed against shrinking (F_SEAL_SHRINK): a shrinking truncate would make
 *   the kernel keep DMA-ing into pages the file no longer has, and would turn
 *   the broker's own mmap into SIGBUS. Files that cannot carry seals (plain
 *   tmpfs files) are refused; memfds are the interface;
 * - writable mappings need an fd open O_RDWR and no write seal.
 */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "util/log.h"
#include "util/macro.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

static int region_cmp(const struct dmb_region *a, const struct dmb_region *b)
{
	return a->id < b->id ? -1 : a->id > b->id;
}
RB_GENERATE(dmb_region_tree, dmb_region, node, region_cmp)

int region_validate_fd(int fd, uint64_t *size, uint64_t *page_size, bool *writable,
		       bool *hugetlb, const char **kind, struct dmb_err *e)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF, "the region fd is not valid");
	if (fl & O_PATH)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF,
				"the region fd is an O_PATH fd; pass a memfd opened for reading");

	struct stat st;
	if (fstat(fd, &st) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, errno, "fstat on the region fd failed");
	if (!S_ISREG(st.st_mode)) {
		const char *what = S_ISDIR(st.st_mode)    ? "a directory"
				   : S_ISCHR(st.st_mode)  ? "a character device"
				   : S_ISBLK(st.st_mode)  ? "a block device"
				   : S_ISFIFO(st.st_mode) ? "a pipe"
				   : S_ISSOCK(st.st_mode) ? "a socket"
							  : "not a regular file";
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the region fd is %s; guest memory must be a memfd, tmpfs or "
				"hugetlbfs file", what);
	}

	struct statfs sfs;
	if (fstatfs(fd, &sfs) < 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, errno, "fstatfs on the region fd failed");
	bool huge = (unsigned long)sfs.f_type == (unsigned long)HUGETLBFS_MAGIC;
	if (!huge && (unsigned long)sfs.f_type != (unsigned long)TMPFS_MAGIC)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the region fd is a file on a filesystem of type 0x%lx; guest memory "
				"must be a memfd, tmpfs or hugetlbfs file",
				(unsigned long)sfs.f_type);

	int acc = fl & O_ACCMODE;
	if (acc == O_WRONLY)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EBADF,
				"the region fd is open write-only; it must be readable");

	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		seals = F_SEAL_SEAL; /* a file that does not do seals at all */
	if (!(seals & F_SEAL_SHRINK)) {
		if (seals & F_SEAL_SEAL)
			return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
					"the region fd cannot be sealed against shrinking (plain tmpfs "
					"and hugetlbfs files cannot carry seals); use a memfd created "
					"with MFD_ALLOW_SEALING and sealed with F_SEAL_SHRINK");
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the region memfd is not sealed against shrinking; add F_SEAL_SHRINK "
				"(fcntl F_ADD_SEALS) before registering it");
	}

	uint64_t ps = huge ? (uint64_t)sfs.f_bsize : (uint64_t)sysconf(_SC_PAGESIZE);
	uint64_t want = *size ? *size : (uint64_t)st.st_size;
	if (want == 0)
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"the region is empty: the file has size 0 and no size was given");
	if (!dmb_is_aligned(want, ps))
		return dmb_fail(e, DMB_E_INVALID_ARGUMENT, EINVAL,
				"region size %" PRIu64 " is not a multiple of the page size %" PRIu64,
				want, ps);
	if (want > (uint64_t)st.st_size)
		return dmb_fail(e, DMB_E_OUT_OF_RANGE, EINVAL,
				"region size %" PRIu64 " is past the end of the file (%" PRIu64 " bytes)",
				want, (uint64_t)st.st_size);

	*size = want;
	*page_size = ps;
	*hugetlb = huge;
	*writable = acc == O_RDWR && !(seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE));
	/* What the kernel says of the file, never its name: a tmpfs file that
	 * carries F_SEAL_SHRINK can only come from memfd_create(MFD_ALLOW_SEALING)
	 * (other shmem files start and stay with F_SEAL_SEAL), whatever its
	 * /proc link says. A memfd the kernel re-created after a kexec (LUO) has
	 * an empty name, "/ (deleted)", and is a memfd all the same. */
	*kind = huge ? "hugetlbfs" : "memfd";
	return 0;
}

/* Validates the fd (taken: closed on failure) and prepares the backend side;
 * the region is not yet visible and has no id. */
static int region_prepare(struct dmb_ctx *ctx, int fd, uint64_t size, struct dmb_region **out,
			  struct dmb_err *e)
{
	_cleanup_close_ int owned = fd;
	struct dmb_core *core = ctx->core;
	struct dmb_region_desc d = { .fd = owned, .size = size };
	const char *kind = NULL;
	int r = region_validate_fd(owned, &d.size, &d.page_size, &d.writable, &d.hugetlb, &kind, e);
	if (r < 0)
		return r;

	_cleanup_free_ struct dmb_region *reg = calloc(1, sizeof(*reg));
	if (!reg)
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	r = core->be->ops->region_open(core->be, &d, &reg->breg, e);
	if (r < 0)
		return dmb_fail(e, dmb_code_from_errno(r), -r, "the backend could not prepare the region: %s",
				strerror(-r));
	reg->ctx = ctx;
	reg->fd = TAKE_FD(owned);
	reg->size = d.size;
	reg->page_size = d.page_size;
	reg->writable = d.writable;
	reg->hugetlb = d.hugetlb;
	reg->kind = kind;
	*out = TAKE_PTR(reg);
	return 0;
}

/* Commit: the region becomes visible under its id. */
static void region_link(struct dmb_ctx *ctx, struct dmb_region *reg)
{
	RB_INSERT(dmb_region_tree, &ctx->regions, reg);
	ctx->n_regions++;
	ctx->core->n_regions++;
}

int region_register(struct dmb_ctx *ctx, int fd, uint64_t size, struct dmb_region **out,
		    struct dmb_err *e)
{
	struct dmb_core *core = ctx->core;
	const struct dmb_limits *lim = &ctx->owner->pol.limits;
	if (ctx->n_regions >= lim->regions_per_context) {
		safe_close(fd);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOSPC,
				"limit regions_per_context (%u) reached", lim->regions_per_context);
	}
	/* Charged before the backend takes its own copy; region_free gives
	 * it back. */
	int r = acct_charge(ctx->acct, lim, DMB_FD_REGION, e);
	if (r < 0) {
		safe_close(fd);
		return r;
	}
	struct dmb_region *reg;
	r = region_prepare(ctx, fd, size, &reg, e);
	if (r < 0) {
		acct_release(ctx->acct, DMB_FD_REGION);
		return r;
	}
	reg->id = core_new_id(core);
	if (!reg->id) {
		region_free(reg);
		return dmb_fail(e, DMB_E_RESOURCE_EXHAUSTED, ENOMEM, "out of memory");
	}
	if (core->jh) {
		r = core->jh->region_add(core->jh->opaque, reg, e);
		if (r < 0) {
			region_free(reg);
			return r;
		}
	}
	region_link(ctx, reg);
	*out = reg;
	return 0;
}

int region_adopt(struct dmb_ctx *ctx, uint64_t id, int fd, uint64_t size, struct dmb_region **out,
		 struct dmb_err *e)
{
	struct dmb_region *reg;
	int r = region_prepare(ctx, fd, size, &reg, e);
	if (r < 0)
		return r;
	acct_force(ctx->acct, DMB_FD_REGION);
	reg->id = id;
	region_link(ctx, reg);
	(void)core_claim_id(ctx->core, id);
	*out = reg;
	return 0;
}

struct dmb_region *region_lookup(struct dmb_ctx *ctx, uint64_t id)
{
	struct dmb_region key = { .id = id };
	return RB_FIND(dmb_region_tree, &ctx->regions, &key);
}

int region_unregister(struct dmb_ctx *ctx, uint64_t id, struct dmb_err *e)
{
	struct dmb_region *r = region_lookup(ctx, id);
	if (!r)
		return dmb_fail(e, DMB_E_NOT_FOUND, ENOENT, "region %" PRIu64 " not found", id);
	if (r->map_refs)
		return dmb_fail(e, DMB_E_FAILED_PRECONDITION, EBUSY,
				"region %" PRIu64 " is still used by %" PRIu64 " mapping(s); unmap them first",
				id, r->map_refs);
	RB_REMOVE(dmb_region_tree, &ctx->regions, r);
	ctx->n_regions--;
	ctx->core->n_regions--;
	if (ctx->core->jh)
		ctx->core->jh->region_remove(ctx->core->jh->opaque, r);
	region_free(r);
	return 0;
}

void region_free(struct dmb_region *r)
{
	if (!r)
		return;
	if (r->breg)
		r->breg->be->ops->region_close(r->breg);
	safe_close(r->fd);
	acct_release(r->ctx->acct, DMB_FD_REGION);
	if (r->id)
		core_release_id(r->ctx->core, r->id);
	free(r);
}
