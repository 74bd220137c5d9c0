/* Logging: one line per event that matters, syslog priorities. Under
 * journald (JOURNAL_STREAM set) lines carry the <N> priority prefix. */
#pragma once

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
