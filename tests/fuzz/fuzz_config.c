/* fuzz_config: the INI configuration and policy parser (config.c, libinih)
 * on an input written to a memfd and loaded as /proc/self/fd/N, then the
 * policy it produced resolved for a few identities. A refused file must
 * leave the configuration it was loaded over untouched. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "policy/config.h"
#include "util/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct dmb_config cfg, before;
	dmb_log_max_level = -1;
	int fd = memfd_create("fuzz.conf", MFD_CLOEXEC);
	if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size))
		abort();
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	config_defaults(&cfg);
	before = cfg;
	struct dmb_err e = { 0 };
	if (config_load_tree(&cfg, path, &e) < 0) {
		if (memcmp(&cfg, &before, sizeof(cfg)) != 0)
			abort(); /* a bad file changed the configuration */
	} else {
		static const unsigned ids[] = { 0, 1, 100, 1000, 65534, 4294967294u };
		for (size_t u = 0; u < sizeof(ids) / sizeof(ids[0]); u++) {
			struct dmb_client_policy p;
			config_resolve(&cfg, ids[u], ids[(u + 1) % 6], &p);
			(void)config_device_allowed(&p, "0000:01:00.0");
			(void)config_is_admin(&cfg, ids[u]);
		}
	}
	close(fd);
	return 0;
}
