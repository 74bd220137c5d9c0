#!/usr/bin/env bash
# The run command: installs what is missing, builds, starts dmabrokerd and
# runs the example VMM against it, then shows what the broker holds with
# dmabrokerctl.
#
# Backend: a real IOMMU backend when the machine has one (/dev/iommu, or
# /dev/vfio/vfio with IOMMU groups); otherwise the SIMULATED backend, chosen
# explicitly here and announced: the daemon itself never falls back to it.
#
#   scripts/run.sh            demo: daemon + example + dmabrokerctl, then stop
#   scripts/run.sh --serve    keep the daemon running afterwards, until Ctrl-C or
#                             SIGTERM: prints its socket and the line to export
#
# Every step prints a line with its elapsed time; the build shows ninja's
# progress every tenth of its steps (whole log: build.build.log).
# DMABROKER_BUILD_DIR=DIR uses an existing build there as it is: nothing is
# installed or built (the integration test of this script does that).
set -euo pipefail
cd "$(dirname "$0")/.."
PROGRESS_TAG=run
. scripts/progress.sh

serve=0
[ "${1:-}" = "--serve" ] && serve=1

if [ -n "${DMABROKER_BUILD_DIR:-}" ]; then
  b=$DMABROKER_BUILD_DIR
else
  b=build
  phase_start "checking the Debian packages it needs (scripts/install-deps.sh)"
  bash scripts/install-deps.sh
  phase_end
  if [ ! -f "$b/build.ninja" ]; then
    phase_start "configuring $b/ (meson setup; log: $b.setup.log)"
    meson setup "$b" >"$b.setup.log" 2>&1 || { cat "$b.setup.log"; exit 1; }
    phase_end
  fi
  phase_start "building $b/ (ninja; log: $b.build.log)"
  ninja_progress "$b" "$b.build.log" || { tail -n 50 "$b.build.log"; echo "run: the build failed" >&2; exit 1; }
  phase_end
fi

backend=auto
if [ -e /dev/iommu ] || { [ -e /dev/vfio/vfio ] && [ -n "$(ls -A /sys/kernel/iommu_groups 2>/dev/null)" ]; }; then
  echo "run: this machine has an IOMMU: dmabrokerd picks its backend (--backend=auto)"
else
  backend=sim
  echo "run: no IOMMU on this machine (no /dev/iommu, no VFIO IOMMU groups):"
  echo "run: starting dmabrokerd on the SIMULATED backend (--backend=sim), chosen explicitly"
fi

rundir=${XDG_RUNTIME_DIR:-/tmp}/dmabroker-run.$$
mkdir -p "$rundir"
sock=$rundir/dmabroker.sock
log=$rundir/dmabrokerd.log
cleanup() {
  [ -n "${epid:-}" ] && kill "$epid" 2>/dev/null
  [ -n "${dpid:-}" ] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  rm -rf "$rundir"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Built-in defaults (admin: root; no device for anyone), never a configuration
# installed on this machine at /etc/dmabroker/dmabroker.conf.
"$b"/daemon/dmabrokerd --config=/dev/null --backend="$backend" --socket="$sock" 2>"$log" &
dpid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { cat "$log"; echo "run: dmabrokerd did not start" >&2; exit 1; }
echo "run: dmabrokerd (pid $dpid) listening on $sock"
echo

export DMABROKER_SOCKET=$sock
"$b"/examples/dmabroker-example --socket "$sock" --hold 3 &
epid=$!
# Wait for the example's mappings to appear, then show them.
for _ in $(seq 100); do
  "$b"/client/dmabrokerctl list contexts --all 2>/dev/null | grep -q example && break
  sleep 0.05
done
sleep 0.2
echo
echo "\$ dmabrokerctl status"
"$b"/client/dmabrokerctl status
echo
echo "\$ dmabrokerctl list contexts --all"
"$b"/client/dmabrokerctl list contexts --all
ctx=$("$b"/client/dmabrokerctl --json list contexts --all | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["contexts"][0]["id"])')
echo
echo "\$ dmabrokerctl list mappings $ctx"
"$b"/client/dmabrokerctl list mappings "$ctx"
wait "$epid"; epid=
echo
echo "run: the example finished; its session ended, so the broker released its context"
"$b"/client/dmabrokerctl list contexts --all

if [ $serve -eq 1 ]; then
  echo
  echo "run: dmabrokerd (pid $dpid) keeps serving $sock; its log: $log"
  echo "run: to use it from another shell:"
  echo
  echo "    export DMABROKER_SOCKET=$sock"
  echo
  echo "run: Ctrl-C (or SIGTERM) stops it and removes $rundir"
  wait "$dpid" || true
  dpid=
  echo "run: dmabrokerd exited; see $log" >&2
  cat "$log" >&2
  exit 1
fi
