/* Host memory encryption, as the running kernel reports it.
 *
 * On AMD, the kernel (arch/x86/kernel/cpu/amd.c, early_detect_mem_encrypt)
 * clears the "sme" CPU flag unless the firmware enabled memory encryption
 * AND the kernel itself runs with SME on (sme_me_mask set, mem_encrypt=on
 * or the kernel's default). So "sme" among the flags of /proc/cpuinfo means
 * exactly: host memory is encrypted, and an IOMMU mapping with cacheable
 * attributes gets the encryption bit in its address. Transparent SME
 * (firmware-only) is invisible to the kernel and the IOMMU alike, and guest
 * memory encryption (SEV) does not change the host's own mappings. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/config.h"
#include "util/macro.h"

int hostmem_encrypted(const char *cpuinfo, char *what, size_t n)
{
	const char *path = cpuinfo ? cpuinfo : "/proc/cpuinfo";
	FILE *f = fopen(path, "re");
	if (!f) {
		int r = -errno;
		snprintf(what, n, "cannot read %s (%s): host memory encryption unknown", path,
			 strerror(-r));
		return r;
	}
	char *line = NULL;
	size_t cap = 0;
	int found = -ENOENT;
	while (getline(&line, &cap, f) > 0) {
		/* "flags\t\t: fpu vme ... sme ..." (the first CPU's is enough:
		 * the kernel clears the flag on every CPU alike) */
		if (strncmp(line, "flags", 5) != 0 || !strchr(line, ':'))
			continue;
		found = 0;
		char *save = NULL;
		for (char *t = strtok_r(strchr(line, ':') + 1, " \t\n", &save); t;
		     t = strtok_r(NULL, " \t\n", &save))
			if (!strcmp(t, "sme")) {
				found = 1;
				break;
			}
		break;
	}
	free(line);
	fclose(f);
	if (found == 1)
		snprintf(what, n, "host memory encryption is active (AMD SME: the \"sme\" flag "
			 "in %s)", path);
	else if (found == 0)
		snprintf(what, n, "host memory encryption is not active (no \"sme\" flag in %s)",
			 path);
	else
		snprintf(what, n, "%s has no CPU flags line: host memory encryption unknown", path);
	return found;
}
