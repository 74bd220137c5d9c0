/* fuzz_journal: opening and replaying a state journal (daemon/state/),
 * the file a restarted daemon trusts to rebuild its state.
 *
 * Input: u8 mode, then the journal file. With mode bit 0 the harness first
 * repairs what a random mutation almost never gets right -- the magic, the
 * header CRC, the commit word's check and every record's CRC (and, with
 * bit 1, the record sequence numbers) -- so the fuzzer reaches the payload
 * decoders; without it the checks themselves are fuzzed.
 *
 * Properties checked: open and replay never crash; a replayed state, written
 * out by compaction and replayed again, is the same state; a journal that
 * opened undamaged takes one more record and replays it; opening and
 * replaying in one walk (the restore path) agrees with doing it in two. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "state/journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* The layout is specified at the top of daemon/state/journal_file.c. */
static void repair(uint8_t *f, size_t size, bool fix_seq)
{
	if (size < JRNL_HEADER_SIZE)
		return;
	memcpy(f, "DMBJRNL\0", 8);
	put32(f + 44, jrnl_crc32c(0, f, 44));
	uint64_t committed = get64(f + 48) & ((UINT64_C(1) << 48) - 1);
	uint8_t b[8];
	put64(b, committed);
	put64(f + 48, committed | (uint64_t)(jrnl_crc32c(0, b, 6) & 0xffff) << 48);

	uint64_t hsize = get32(f + 12), seq = get64(f + 24);
	if (hsize < JRNL_HEADER_SIZE || hsize > size)
		return;
	for (uint64_t off = hsize; off + 20 <= size; seq++) {
		uint32_t len = get32(f + off);
		if (len < 20 || len > size - off)
			break;
		if (fix_seq)
			put64(f + off + 8, seq);
		put32(f + off + len - 4, jrnl_crc32c(0, f + off, len - 4));
		off += (len + 7u) & ~7u;
	}
}

static void replay_equal(struct jrnl *j, const struct jrnl_state *want)
{
	struct jrnl_state s;
	struct jrnl_replay_result res;
	struct dmb_err e = { 0 };
	char why[256];
	jrnl_state_init(&s);
	if (jrnl_state_replay(j, &s, &res, &e) < 0 || res.stop != JRNL_STOP_END) {
		fprintf(stderr, "fuzz_journal: the compacted journal does not replay: %s %s\n", e.msg,
			res.why);
		abort();
	}
	if (want && !jrnl_state_equal(want, &s, why, sizeof(why))) {
		fprintf(stderr, "fuzz_journal: compaction changed the state: %s\n", why);
		abort();
	}
	jrnl_state_fini(&s);
}

/* Open fds of this process: the same after every input, or one leaked. */
static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		abort();
	int n = 0;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static int one_input(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int before = open_fds();
	int r = one_input(data, size);
	int after = open_fds();
	if (after != before) {
		fprintf(stderr, "fuzz_journal: an fd leaked (%d open before, %d after)\n", before,
			after);
		abort();
	}
	return r;
}

static int one_input(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	size--;
	uint8_t *f = malloc(size ? size : 1);
	if (!f)
		abort();
	memcpy(f, data + 1, size);
	if (mode & 1)
		repair(f, size, mode & 2);
	int fd = memfd_create("jrnl", MFD_CLOEXEC);
	if (fd < 0 || (size && write(fd, f, size) != (ssize_t)size))
		abort();
	free(f);

	/* The restore path's one walk (open and replay together) first: the
	 * same verdict, state, result and tail as the two walks below. */
	int fd1 = dup(fd);
	if (fd1 < 0)
		abort();
	struct jrnl *one = NULL;
	struct jrnl_state s1;
	struct jrnl_replay_result res1;
	struct dmb_err e1 = { 0 };
	jrnl_state_init(&s1);
	int rc1 = jrnl_open_replay_fd(fd1, &jrnl_state_ops, &s1, &res1, &one, &e1);
	if (rc1 < 0 && rc1 != -EBADMSG)
		close(fd1);

	struct jrnl *j = NULL;
	struct dmb_err e = { 0 };
	if (jrnl_open_fd(fd, &j, &e) < 0) {
		close(fd); /* on failure the caller keeps the fd */
		if (one) {
			fprintf(stderr, "fuzz_journal: one walk opened what open refused: %s\n", e.msg);
			abort();
		}
		jrnl_state_fini(&s1);
		return 0;
	}
	struct jrnl_state s;
	struct jrnl_replay_result res;
	jrnl_state_init(&s);
	int rc = jrnl_state_replay(j, &s, &res, &e);
	char why[256];
	if (!one || rc1 != rc || !jrnl_state_equal(&s, &s1, why, sizeof(why)) ||
	    res.records != res1.records || res.end != res1.end || res.stop != res1.stop ||
	    res.stop_offset != res1.stop_offset || jrnl_committed(one) != jrnl_committed(j) ||
	    jrnl_next_seq(one) != jrnl_next_seq(j) || jrnl_records(one) != jrnl_records(j) ||
	    !jrnl_damaged(one) != !jrnl_damaged(j)) {
		fprintf(stderr, "fuzz_journal: one walk (%d) and two walks (%d) disagree\n", rc1, rc);
		abort();
	}
	jrnl_state_fini(&s1);
	jrnl_close(one);

	struct jrnl *c = NULL;
	if (jrnl_compact(j, &s, &c, &e) == 0) {
		replay_equal(c, &s);
		jrnl_close(c);
	}
	if (!jrnl_damaged(j) && jrnl_append_id_watermark(j, 1u << 20, &e) == 0)
		replay_equal(j, NULL);
	jrnl_state_fini(&s);
	jrnl_close(j);
	return 0;
}
