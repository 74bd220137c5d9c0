#!/bin/sh
# run-fuzzer.sh FUZZER SEED_DIR WORK_DIR SECONDS [libFuzzer options...]
#
# One bounded libFuzzer run: the checked-in seeds (SEED_DIR, only read) plus
# what earlier runs in this build found (WORK_DIR/corpus, written), for
# SECONDS. A crash leaves its input as WORK_DIR/crash-* (also timeout-*,
# oom-*, leak-*) and fails the test; copy it to tests/fuzz/crashes/<target>/.
set -eu
fuzzer=$1 seeds=$2 work=$3 seconds=$4
shift 4
mkdir -p "$work/corpus"
# One worker; detect_leaks on (the fuzzers free what they create).
# -error_exitcode=1: libFuzzer's default (77) is what meson reads as SKIP,
# so a crash would not fail the test.
exec "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -error_exitcode=1 \
	-max_len=65536 -print_final_stats=1 -artifact_prefix="$work/" \
	"$@" "$work/corpus" "$seeds"
