/* dmabrokerctl's output helpers: see ctl-output.h. */
#include "ctl-output.h"

#include "text.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

/* ------------------------------------------------------------ text helpers */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if s does not start
 * one (stray continuation, overlong form, surrogate, > U+10FFFF, cut short). */
static size_t utf8_seq_len(const unsigned char *s)
{
	unsigned char c = s[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/* Copies untrusted text (another client's context name) into a table cell:
 * control characters (C0, DEL, C1) and invalid UTF-8 become '?', so a name
 * cannot move the cursor or recolour the operator's terminal. */
void text_sanitize(char *dst, size_t cap, const char *src)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t o = 0;

	while (*s && o + 1 < cap) {
		size_t n = utf8_seq_len(s);
		bool bad = n == 0 || s[0] < 0x20 || s[0] == 0x7f || (s[0] == 0xc2 && s[1] < 0xa0);
		if (bad) {
			dst[o++] = '?';
			s++;
			continue;
		}
		if (o + n >= cap)
			break;
		memcpy(dst + o, s, n);
		o += n;
		s += n;
	}
	dst[o] = '\0';
}

/* Display width of valid UTF-8: one column per code point. */
size_t text_width(const char *s)
{
	size_t w = 0;
	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			w++;
	return w;
}

const char *fmt_bytes(uint64_t v, char *buf, size_t cap)
{
	return dmb_common_fmt_bytes(v, buf, cap);
}

const char *fmt_uptime(uint64_t ms, char *buf, size_t cap)
{
	uint64_t s = ms / 1000, d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60;

	if (d)
		snprintf(buf, cap, "%" PRIu64 "d %02" PRIu64 "h %02" PRIu64 "m", d, h, m);
	else if (h)
		snprintf(buf, cap, "%" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s", h, m, s % 60);
	else if (m)
		snprintf(buf, cap, "%" PRIu64 "m %02" PRIu64 "s", m, s % 60);
	else
		snprintf(buf, cap, "%" PRIu64 ".%03" PRIu64 "s", s, ms % 1000);
	return buf;
}

/* ------------------------------------------------------------ JSON emitter */

/* Bytes that are not valid UTF-8 become U+FFFD so the output is always valid
 * JSON whatever a client named its context. */
static void json_string(FILE *f, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	fputc('"', f);
	while (*s) {
		size_t n = utf8_seq_len(s);
		if (n == 0) {
			fputs("\\ufffd", f);
			s++;
			continue;
		}
		switch (*s) {
		case '"': fputs("\\\"", f); break;
		case '\\': fputs("\\\\", f); break;
		case '\b': fputs("\\b", f); break;
		case '\f': fputs("\\f", f); break;
		case '\n': fputs("\\n", f); break;
		case '\r': fputs("\\r", f); break;
		case '\t': fputs("\\t", f); break;
		default:
			if (*s < 0x20 || *s == 0x7f)
				fprintf(f, "\\u%04x", *s);
			else
				fwrite(s, 1, n, f);
		}
		s += n;
	}
	fputc('"', f);
}

/* Separator, newline, indent and "key": for the next member (key NULL in arrays). */
static void json_member(struct json *j, const char *key)
{
	if (j->depth > 0) {
		fputs(j->used[j->depth] ? ",\n" : "\n", j->f);
		j->used[j->depth] = true;
		fprintf(j->f, "%*s", 2 * j->depth, "");
	}
	if (key) {
		json_string(j->f, key);
		fputs(": ", j->f);
	}
}

void json_open(struct json *j, const char *key, char bracket)
{
	json_member(j, key);
	fputc(bracket, j->f);
	if (j->depth + 1 < JSON_MAX_DEPTH)
		j->depth++;
	j->used[j->depth] = false;
}

void json_close(struct json *j, char bracket)
{
	bool had_members = j->used[j->depth];
	if (j->depth > 0)
		j->depth--;
	if (had_members)
		fprintf(j->f, "\n%*s", 2 * j->depth, "");
	fputc(bracket, j->f);
	if (j->depth == 0)
		fputc('\n', j->f);
}

void json_u64(struct json *j, const char *key, uint64_t v)
{
	json_member(j, key);
	fprintf(j->f, "%" PRIu64, v);
}

void json_bool(struct json *j, const char *key, bool v)
{
	json_member(j, key);
	fputs(v ? "true" : "false", j->f);
}

void json_str(struct json *j, const char *key, const char *s)
{
	json_member(j, key);
	json_string(j->f, s);
}

/* A space-separated list (server features) as an array of strings. */
void json_words(struct json *j, const char *key, const char *words)
{
	char buf[256];
	char *save = NULL;

	snprintf(buf, sizeof(buf), "%s", words);
	json_open(j, key, '[');
	for (char *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
		json_str(j, NULL, w);
	json_close(j, ']');
}

/* ------------------------------------------------------------ tables */

void table_line(const struct column *cols, size_t ncols, const size_t *width,
		char cells[][CELL_MAX])
{
	for (size_t k = 0; k < ncols; k++) {
		size_t pad = width[k] - text_width(cells[k]);
		const char *sep = k + 1 < ncols ? "  " : "";
		if (cols[k].right)
			printf("%*s%s%s", (int)pad, "", cells[k], sep);
		else if (k + 1 < ncols)
			printf("%s%*s%s", cells[k], (int)pad, "", sep);
		else
			fputs(cells[k], stdout); /* no trailing blanks */
	}
	putchar('\n');
}

void table_widen(size_t ncols, size_t *width, char cells[][CELL_MAX])
{
	for (size_t k = 0; k < ncols; k++) {
		size_t w = text_width(cells[k]);
		if (w > width[k])
			width[k] = w;
	}
}

/* Two passes over the rows: widths first, then the lines. */
void table_print(const struct column *cols, size_t ncols, const void *rows, size_t nrows,
		 row_fn fill, after_fn after, void *opaque)
{
	char cells[TABLE_MAX_COLS][CELL_MAX];
	size_t width[TABLE_MAX_COLS] = { 0 };

	for (size_t k = 0; k < ncols; k++) {
		snprintf(cells[k], CELL_MAX, "%s", cols[k].header);
		width[k] = text_width(cells[k]);
	}
	for (size_t i = 0; i < nrows; i++) {
		fill(rows, i, cells);
		table_widen(ncols, width, cells);
	}
	for (size_t k = 0; k < ncols; k++)
		snprintf(cells[k], CELL_MAX, "%s", cols[k].header);
	table_line(cols, ncols, width, cells);
	for (size_t i = 0; i < nrows; i++) {
		fill(rows, i, cells);
		table_line(cols, ncols, width, cells);
		if (after)
			after(rows, i, opaque);
	}
}

/* ------------------------------------------------------------ errors */

int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry '" PROG " --help'.\n", stderr);
	return EXIT_USAGE;
}

int finish_output(void)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, PROG ": writing the output: %s\n", strerror(errno));
		return EXIT_TRANSPORT;
	}
	return EXIT_OK;
}

