/* A fake kernel for the kernel-backend unit tests.
 *
 * fake_install() replaces ksys_ops.ioctl with a recorder: every call is
 * logged (fd, request number, a copy of the argument bytes as they were
 * when the backend issued it, the path the fd refers to) and then handed to
 * the test's handler, which plays the kernel (writes outputs, returns a
 * result or a negative errno).
 *
 * fake_tree_*() build a small /sys and /dev under a temp directory; device
 * nodes are plain files, which open() happily and the fake ioctl answers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int (*fake_handler)(int fd, unsigned long req, void *arg, const char *path);

struct fake_call {
	int fd;
	unsigned long req;
	uintptr_t argval;   /* the raw argument (pointer or value) */
	uint8_t bytes[256]; /* the argument's bytes before the call */
	size_t len;         /* how many were captured */
	char str[64];       /* string argument (VFIO_GROUP_GET_DEVICE_FD) */
	char path[512];     /* what fd refers to (readlink /proc/self/fd/N) */
	bool cloexec;       /* FD_CLOEXEC was set on fd */
};

#define FAKE_MAX_CALLS 512

extern struct fake_call fake_calls[FAKE_MAX_CALLS];
extern int fake_ncalls;

void fake_install(fake_handler h);
void fake_uninstall(void);
void fake_reset(void);

/* The nth (0-based) recorded call of req, or NULL. */
const struct fake_call *fake_find(unsigned long req, int nth);
int fake_count(unsigned long req);
/* True when every recorded call was issued on an O_CLOEXEC fd. */
bool fake_all_cloexec(void);

/* The path an fd refers to, "" if unknown. */
void fake_fd_path(int fd, char *out, size_t n);
bool fake_path_endswith(const char *path, const char *suffix);

/* Temp tree: returns the root (mkdtemp under /tmp; short, so messages that
 * quote paths stay readable). */
char *fake_tree_new(void);
void fake_tree_free(char *root);
void fake_mkdirs(const char *root, const char *rel);
void fake_write(const char *root, const char *rel, const char *content);
void fake_symlink(const char *root, const char *rel, const char *target);

/* A PCI function under <root>/sys: vendor, device, driver link, optional
 * iommu_group link and group membership, optional vfio-dev/<vfio_dev>. */
void fake_pci(const char *root, const char *bdf, unsigned vendor, unsigned device,
	      const char *driver, int group, const char *vfio_dev);

/* A memfd of `size` bytes filled with a pattern (byte i = i * 7 + 1). */
int fake_memfd(uint64_t size);
