#!/usr/bin/env bash
# The test command: installs what is missing, builds three times (plain,
# ASan+UBSan, and clang with the libFuzzer targets), and runs every tier:
# unit, integration, vm and the bench smoke test (correctness only) on the
# plain build; unit and integration again under the sanitizers; a 60 s run
# of each fuzzer. Prints one closing
# line "N passed, N failed[, N skipped]"; exits non-zero if anything failed or
# was skipped. Every step before the tests prints a line with its elapsed time,
# and each build ninja's progress every tenth of its steps (whole logs:
# DIR.setup.log, DIR.build.log); meson test prints each test as it ends.
set -uo pipefail
cd "$(dirname "$0")/.."
top=$PWD
PROGRESS_TAG=test
. scripts/progress.sh

phase_start "checking the Debian packages it needs (scripts/install-deps.sh)"
bash scripts/install-deps.sh || { echo "0 passed, 1 failed"; exit 1; }
phase_end

jobs=$(nproc)
setup() { # dir, options...
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    phase_start "configuring $dir/ (meson setup $*)"
    meson setup "$dir" "$@" >"$top/$dir.setup.log" 2>&1 || { cat "$top/$dir.setup.log"; return 1; }
    phase_end
  fi
  phase_start "building $dir/"
  ninja_progress "$dir" "$top/$dir.build.log" || { tail -50 "$top/$dir.build.log"; return 1; }
  phase_end
}

fail_build=0
setup build || fail_build=1
setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dvm_tests=false -Dbench=false || fail_build=1
CC=clang setup build-fuzz -Dfuzz=true -Dtests=true -Dvm_tests=false -Dbench=false || fail_build=1
if [ $fail_build -ne 0 ]; then
  echo "build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

run_suites() { # dir, suites...
  local dir=$1; shift
  local args=()
  for s in "$@"; do args+=(--suite "$s"); done
  phase_start "testing $dir/: $*"
  meson test -C "$dir" --num-processes "$jobs" --print-errorlogs "${args[@]}" </dev/null
  phase_end
}

run_suites build unit integration vm bench
run_suites build-asan unit integration
# The fuzzers side by side (60 s each of wall time, ~1 min on 2 cores).
nfuzz=$(ls tests/fuzz/fuzz_*.c | wc -l)
phase_start "fuzzing on build-fuzz/ (60 s per fuzzer, $nfuzz side by side)"
meson test -C build-fuzz --num-processes "${nfuzz:-4}" --print-errorlogs --suite fuzz </dev/null
phase_end

# Count every test of the three runs from meson's own logs.
python3 - build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
  build-fuzz/meson-logs/testlog.json <<'PY'
import json, sys
passed = failed = skipped = 0
bad = []
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        failed += 1
        bad.append(path + " (no test log)")
        continue
    for line in lines:
        t = json.loads(line)
        r = t.get("result")
        name = "%s: %s" % (path.split("/")[0], t.get("name"))
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
            bad.append(name + " skipped")
        else:
            failed += 1
            bad.append("%s %s" % (name, r))
for b in bad:
    print("not passed:", b)
line = "%d passed, %d failed" % (passed, failed)
if skipped:
    line += ", %d skipped" % skipped
print(line)
sys.exit(1 if failed or skipped or passed == 0 else 0)
PY
