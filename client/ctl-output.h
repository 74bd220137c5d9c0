/* dmabrokerctl's output: text cells for untrusted strings, sizes and
 * durations, a JSON emitter and aligned tables. Shared by the broker
 * commands (dmabrokerctl.c) and the offline policy check (ctl-policy.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PROG "dmabrokerctl"

/* Exit codes: a stable contract for scripts (see dmabrokerctl --help). */
enum {
	EXIT_OK = 0,
	EXIT_REFUSED = 1,   /* the broker refused; policy check: the file is invalid */
	EXIT_USAGE = 2,
	EXIT_TRANSPORT = 3, /* no broker, connection failed or timed out, output failed */
};

/* ---------------------------------------------------------------- text */

/* Copies untrusted text into a table cell: control characters and invalid
 * UTF-8 become '?'. */
void text_sanitize(char *dst, size_t cap, const char *src);
/* Display width of valid UTF-8: one column per code point. */
size_t text_width(const char *s);
const char *fmt_bytes(uint64_t v, char *buf, size_t cap);
const char *fmt_uptime(uint64_t ms, char *buf, size_t cap);

/* ---------------------------------------------------------------- JSON */

/* One JSON document, pretty-printed with two-space indents. Strings are
 * escaped per RFC 8259; bytes that are not valid UTF-8 become U+FFFD. */
#define JSON_MAX_DEPTH 8

struct json {
	FILE *f;
	int depth;
	bool used[JSON_MAX_DEPTH]; /* the container at this depth has a member */
};

/* key NULL inside arrays; bracket '{' or '[' */
void json_open(struct json *j, const char *key, char bracket);
void json_close(struct json *j, char bracket);
void json_u64(struct json *j, const char *key, uint64_t v);
void json_bool(struct json *j, const char *key, bool v);
void json_str(struct json *j, const char *key, const char *s);
/* A space-separated list as an array of strings. */
void json_words(struct json *j, const char *key, const char *words);

/* ---------------------------------------------------------------- tables */

#define TABLE_MAX_COLS 12
#define CELL_MAX 128

struct column {
	const char *header;
	bool right; /* numbers are right-aligned */
};

/* Fills the cells of row i. */
typedef void (*row_fn)(const void *rows, size_t i, char cells[][CELL_MAX]);
/* Prints lines that belong under row i (sub-rows), or nothing. */
typedef void (*after_fn)(const void *rows, size_t i, void *opaque);

/* Header and rows with aligned columns, no trailing blanks; after (may be
 * NULL) runs after each row's line. */
void table_print(const struct column *cols, size_t ncols, const void *rows, size_t nrows,
		 row_fn fill, after_fn after, void *opaque);

/* For sub-tables the caller lays out itself: widen width[] to fit cells,
 * and print one line of cells padded to width[] (no trailing blanks). */
void table_widen(size_t ncols, size_t *width, char cells[][CELL_MAX]);
void table_line(const struct column *cols, size_t ncols, const size_t *width,
		char cells[][CELL_MAX]);

/* ---------------------------------------------------------------- endings */

int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Flushes stdout: EXIT_OK, or EXIT_TRANSPORT when the output failed. */
int finish_output(void);
