#!/usr/bin/env bash
# Runs test tiers with every CPU saturated by other work at the same
# priority, to find the tests that only pass on an idle machine (a test
# must wait for the event it needs, never for a wall-clock margin).
#
#   bash scripts/load.sh [-C BUILDDIR] [-n RUNS] [SUITE...]
#
# Defaults: build, 3 runs, the unit and integration suites (add vm when
# the build has it). One busy loop per CPU runs for the whole time, started
# here and stopped on exit, at this shell's nice level; each run's meson
# log is kept as BUILDDIR/meson-logs/load-N.txt. Prints one closing line,
# "N runs passed, N failed"; exits non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."

builddir=build
runs=3
while getopts "C:n:" opt; do
	case $opt in
	C) builddir=$OPTARG ;;
	n) runs=$OPTARG ;;
	*) echo "usage: $0 [-C BUILDDIR] [-n RUNS] [SUITE...]" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(unit integration)
[ -f "$builddir/build.ninja" ] || { echo "$0: $builddir is not a meson build directory" >&2; exit 2; }

hogs=()
stop_hogs() {
	[ ${#hogs[@]} -gt 0 ] && kill "${hogs[@]}" 2>/dev/null
	wait "${hogs[@]}" 2>/dev/null
	hogs=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for ((i = 0; i < $(nproc); i++)); do
	( while :; do :; done ) &
	hogs+=($!)
done
echo "load: ${#hogs[@]} busy loops (pids ${hogs[*]}); suites: ${suites[*]}; $runs runs"

args=()
for s in "${suites[@]}"; do args+=(--suite "$s"); done
ninja -C "$builddir" >/dev/null || { echo "0 runs passed, 1 failed (build)"; exit 1; }
passed=0 failed=0
for ((r = 1; r <= runs; r++)); do
	if meson test -C "$builddir" --no-rebuild --print-errorlogs "${args[@]}" \
		>"$builddir/meson-logs/load-$r.txt" 2>&1; then
		passed=$((passed + 1))
		echo "load: run $r passed"
	else
		failed=$((failed + 1))
		echo "load: run $r FAILED:"
		grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT)' "$builddir/meson-logs/load-$r.txt"
	fi
done
echo "$passed runs passed, $failed failed"
[ "$failed" -eq 0 ]
