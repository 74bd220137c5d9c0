#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int dmb_log_max_level = LOG_INFO;

void dmb_log(int prio, const char *fmt, ...)
{
	static int journal = -1;
	if (prio > dmb_log_max_level)
		return;
	if (journal < 0)
		journal = getenv("JOURNAL_STREAM") != NULL;

	int saved = errno;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);

	if (journal) {
		fprintf(stderr, "<%d>%s\n", prio, line);
	} else {
		static const char *const names[] = { "emerg", "alert", "crit", "error",
						     "warning", "notice", "info", "debug" };
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		struct tm tm;
		localtime_r(&ts.tv_sec, &tm);
		fprintf(stderr, "%02d:%02d:%02d.%03ld dmabrokerd[%s] %s\n", tm.tm_hour, tm.tm_min,
			tm.tm_sec, ts.tv_nsec / 1000000, names[prio & 7], line);
	}
	errno = saved;
}

bool dmb_ratelimit_ok(struct dmb_ratelimit *rl, unsigned burst, unsigned interval_ms,
		      unsigned *suppressed)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	*suppressed = 0;
	if (now - rl->window_start_ms >= interval_ms) {
		rl->window_start_ms = now;
		rl->count = 0;
	}
	if (rl->count < burst) {
		rl->count++;
		*suppressed = rl->suppressed;
		rl->suppressed = 0;
		return true;
	}
	rl->suppressed++;
	return false;
}
