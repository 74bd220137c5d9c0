/* Logging: one line per event that matters, syslog priorities. Under
 * journald (JOURNAL_STREAM set) lines carry the <N> priority prefix. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

extern int dmb_log_max_level;

void dmb_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) \
	do { if (dmb_log_max_level >= LOG_DEBUG) dmb_log(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) dmb_log(LOG_INFO, __VA_ARGS__)
#define log_notice(...) dmb_log(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) dmb_log(LOG_WARNING, __VA_ARGS__)
#define log_error(...) dmb_log(LOG_ERR, __VA_ARGS__)

/* Logs and returns r (a negative errno) for `return log_error_errno(r, ...)`. */
#define log_error_errno(r, fmt, ...) \
	({ int _r = (r); errno = -_r; dmb_log(LOG_ERR, fmt, ##__VA_ARGS__); _r; })

/* Rate limiting for what clients can trigger: at most `burst` lines per
 * `interval_ms` from one call site; the first line after a quiet spell says
 * how many were suppressed. */
struct dmb_ratelimit {
	uint64_t window_start_ms;
	unsigned count;
	unsigned suppressed;
};

/* True when a line may be printed now; *suppressed gets the number dropped
 * since the last printed line. */
bool dmb_ratelimit_ok(struct dmb_ratelimit *rl, unsigned burst, unsigned interval_ms,
		      unsigned *suppressed);

#define log_ratelimited(prio, fmt, ...)                                                \
	do {                                                                           \
		static struct dmb_ratelimit _rl;                                       \
		unsigned _sup;                                                         \
		if (dmb_ratelimit_ok(&_rl, 10, 5000, &_sup)) {                         \
			if (_sup)                                                      \
				dmb_log(prio, fmt " (%u similar messages suppressed)",  \
					##__VA_ARGS__, _sup);                          \
			else                                                           \
				dmb_log(prio, fmt, ##__VA_ARGS__);                     \
		}                                                                      \
	} while (0)
