#!/bin/bash
# test_unit_security.sh UNIT_FILE MAX_EXPOSURE
#
# systemd-analyze security --offline=yes on the unit as the build generated it (the
# file `meson install` ships): fails if its overall exposure is above MAX_EXPOSURE
# (0.0 .. 10.0; systemd calls 2.0 and below "OK", 1.0 and below "SAFE"), and prints
# every setting it still counts against the unit. No systemd needs to run: only
# systemd-analyze (Debian 12: systemd 252) is needed. The VM tier scores the installed
# unit once more under the real systemd (tests/vm/systemd-init.sh).
set -uo pipefail

[ $# -eq 2 ] || { echo "usage: $0 UNIT_FILE MAX_EXPOSURE" >&2; exit 2; }
unit=$1 max=$2
[ -f "$unit" ] || { echo "FAIL: $unit not found" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "FAIL: systemd-analyze not found (install systemd)" >&2; exit 1; }

out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1)
rc=$?
echo "$out" | grep -F '✗'
line=$(echo "$out" | grep 'Overall exposure level for')
echo "$line"
score=$(echo "$line" | sed -n 's/.*: \([0-9][0-9]*\.[0-9]\).*/\1/p')
if [ $rc -ne 0 ] || [ -z "$score" ]; then
  echo "$out" | tail -n 20
  echo "FAIL: systemd-analyze security gave no score (exit $rc)"
  exit 1
fi
# --threshold takes tenths and exits non-zero above it; compare ourselves as well, so
# that the message says which number failed.
if ! awk -v s="$score" -v m="$max" 'BEGIN { exit !(s <= m) }'; then
  echo "FAIL: exposure $score is above $max: a setting above was loosened (or a new one is counted)"
  exit 1
fi
tenths=$(awk -v m="$max" 'BEGIN { printf "%d", m * 10 + 0.5 }')
if ! systemd-analyze security --offline=yes --threshold="$tenths" "$unit" >/dev/null 2>&1; then
  echo "FAIL: systemd-analyze security --threshold=$tenths refuses the unit"
  exit 1
fi
echo "ok: exposure $score <= $max"
