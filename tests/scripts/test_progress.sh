#!/bin/bash
# scripts/progress.sh (issue 17): the progress lines run.sh and test.sh print
# while building. A stub ninja prints 20 steps as ninja does when its output is
# not a terminal: one line per tenth of them, each with its count and elapsed time,
# the whole output in the log, and ninja's exit status passed on.
#
#   test_progress.sh SOURCE_DIR
set -u
[ $# -eq 1 ] || { echo "usage: $0 SOURCE_DIR" >&2; exit 2; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmb-progress.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$TMP/out" ] && cat "$TMP/out" >&2; exit 1; }

mkdir "$TMP/bin"
cat >"$TMP/bin/ninja" <<'STUB'
#!/bin/sh
echo "ninja: Entering directory \`$2'"
i=1
while [ $i -le 20 ]; do echo "[$i/20] Compiling C object step$i.o"; i=$((i + 1)); done
exit "${NINJA_STUB_RC:-0}"
STUB
chmod +x "$TMP/bin/ninja"
export PATH=$TMP/bin:$PATH

PROGRESS_TAG=t
. "$1/scripts/progress.sh"
{
	phase_start "building b/"
	ninja_progress b "$TMP/log"
	echo "rc=$?"
	phase_end
} >"$TMP/out"
want=$(for p in 10 20 30 40 50 60 70 80 90 100; do echo "t:   b: $p% ($((p / 5))/20 steps, 0 s)"; done)
[ "$(grep '%' "$TMP/out")" = "$want" ] || fail "expected one line per tenth of the steps: $want"
head -n1 "$TMP/out" | grep -qx "t: building b/ \.\.\." || fail "expected 't: building b/ ...' first"
tail -n1 "$TMP/out" | grep -Eqx "t: building b/ done in [0-9]+ s" || fail "expected 't: building b/ done in N s' last"
grep -qx "rc=0" "$TMP/out" || fail "expected ninja's status 0"
[ "$(grep -c '^\[' "$TMP/log")" -eq 20 ] || fail "expected ninja's 20 step lines in the log"
echo "ok - one progress line per tenth of the build, with elapsed time; the log has everything"

NINJA_STUB_RC=1 ninja_progress b "$TMP/log" >/dev/null && fail "ninja failed but ninja_progress returned 0"
echo "ok - ninja's failure is passed on"
