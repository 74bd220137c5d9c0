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
#   scripts/run.sh --serve    keep the daemon in the foreground afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

serve=0
[ "${1:-}" = "--serve" ] && serve=1

bash scripts/install-deps.sh
if [ ! -f build/build.ninja ]; then
  meson setup build >/dev/null
fi
ninja -C build >/dev/null

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
  [ -n "${dpid:-}" ] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  [ -n "${epid:-}" ] && kill "$epid" 2>/dev/null
  rm -rf "$rundir"
}
trap cleanup EXIT

build/daemon/dmabrokerd --backend="$backend" --socket="$sock" 2>"$log" &
dpid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { cat "$log"; echo "run: dmabrokerd did not start" >&2; exit 1; }
echo "run: dmabrokerd (pid $dpid) listening on $sock"
echo

export DMABROKER_SOCKET=$sock
build/examples/dmabroker-example --socket "$sock" --hold 3 &
epid=$!
# Wait for the example's mappings to appear, then show them.
for _ in $(seq 100); do
  build/client/dmabrokerctl list contexts --all 2>/dev/null | grep -q example && break
  sleep 0.05
done
sleep 0.2
echo
echo "\$ dmabrokerctl status"
build/client/dmabrokerctl status
echo
echo "\$ dmabrokerctl list contexts --all"
build/client/dmabrokerctl list contexts --all
ctx=$(build/client/dmabrokerctl --json list contexts --all | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["contexts"][0]["id"])')
echo
echo "\$ dmabrokerctl list mappings $ctx"
build/client/dmabrokerctl list mappings "$ctx"
wait "$epid"; epid=
echo
echo "run: the example finished; its session ended, so the broker released its context"
build/client/dmabrokerctl list contexts --all

if [ $serve -eq 1 ]; then
  echo "run: serving in the foreground on $sock (Ctrl-C to stop); log: $log"
  trap - EXIT
  wait "$dpid"
fi
