#!/bin/bash
# run-vm.sh - boots one VM test and judges it from its serial console.
#
# usage: run-vm.sh -k VMLINUZ -r INITRD -l LOGFILE [-t SECONDS] [-a EXTRA_CMDLINE]
#                  [-c CPUS] [-N] [-q QEMU_ARG]...
#
# Machine: q35 + intel-iommu (none with -N: a machine without an IOMMU, for VFIO's
# no-IOMMU mode), TCG, 1 GiB, 2 vCPUs (-c), two pcie-root-ports with one edu
# behind each (each edu in its own IOMMU group, and VFIO_DEVICE_RESET works through the
# root port's secondary bus reset). The serial console goes to LOGFILE, QEMU's own
# stdout/stderr to LOGFILE.qemu.
#
# Exit 0 only if the guest printed "VMTEST DONE", no "VMTEST FAIL" line and no kernel
# WARN/BUG/oops/lockup/hung-task report (a kernel tainted by VFIO's no-IOMMU mode, flag
# U, is expected with -N and is no such report; its WARNs are); prints the
# guest's VMTEST lines and the wall time. On failure also prints the tail of both logs.
# Exit codes: 0 pass, 1 test failure, 2 usage/setup error.
set -uo pipefail

die() { echo "run-vm: error: $*" >&2; exit 2; }
usage() { sed -n '4,5p' "$0" >&2; exit 2; }

kernel='' initrd='' log='' tmo=240 extra='' cpus=2 iommu=(-device intel-iommu)
qemu_extra=()
while getopts "k:r:l:t:a:c:q:Nh" opt; do
  case $opt in
    k) kernel=$OPTARG ;;
    r) initrd=$OPTARG ;;
    l) log=$OPTARG ;;
    t) tmo=$OPTARG ;;
    a) extra=$OPTARG ;;
    c) cpus=$OPTARG ;;
    q) qemu_extra+=("$OPTARG") ;;
    N) iommu=() ;;
    *) usage ;;
  esac
done
[ -n "$kernel" ] && [ -n "$initrd" ] && [ -n "$log" ] || usage
[ -f "$kernel" ] || die "kernel $kernel not found"
[ -f "$initrd" ] || die "initrd $initrd not found"
qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found (install qemu-system-x86)"

# quiet: the console is a (slow, emulated) UART and its output is our result channel;
# errors (DMAR faults included) still reach it. The rest only trims boot work that
# TCG makes expensive.
cmdline="console=ttyS0 intel_iommu=on panic=-1 quiet"
cmdline+=" mitigations=off tsc=reliable no_timer_check i8042.noaux i8042.nokbd"
[ -z "$extra" ] || cmdline+=" $extra"

mkdir -p "$(dirname "$log")"
: >"$log"
start=$(date +%s.%N)
# The monitor on a unix socket: when the time runs out, what every vCPU was executing
# goes to LOGFILE.hang (a guest that stops making any progress says nothing itself).
mon=$log.mon
rm -f "$mon" "$log.hang"
# Its own fds go to /dev/null (a test runner waits for the end of its output pipe), and
# stopping it stops its sleep.
(
  trap 'kill "$sleep_pid" 2>/dev/null; exit 0' TERM
  sleep $((tmo > 12 ? tmo - 6 : tmo)) &
  sleep_pid=$!
  wait "$sleep_pid" || exit 0
  python3 - "$mon" >"$log.hang" 2>&1 <<'PY'
import socket, sys, time
out = b""
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(sys.argv[1])
    out += s.recv(4096)  # the greeting: QEMU's main loop answers
    for cmd in (b"info cpus\n", b"info registers -a\n"):
        s.sendall(cmd)
        got = b""
        end = time.time() + 1.5
        while time.time() < end and not got.rstrip().endswith(b"(qemu)"):
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            if not d:
                break
            got += d
        out += got
except OSError as e:
    out += ("\nmonitor: %s\n" % e).encode()
sys.stdout.write(out.decode("utf-8", "replace"))
PY
) </dev/null >/dev/null 2>&1 &
watch_pid=$!
# -nographic would put the monitor on stdio: give it a socket, and the serial a file.
# stdin is /dev/null: CI runs without one. `timeout -k` makes sure QEMU really goes.
timeout -k 10 "$tmo" "$qemu" \
  -machine q35 -accel tcg -m 1G -smp "$cpus" -nographic -no-reboot \
  -nodefaults -no-user-config -monitor "unix:$mon,server=on,wait=off" -serial "file:$log" \
  -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
  "${iommu[@]}" \
  -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \
  -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2 \
  -device edu,bus=rp1 -device edu,bus=rp2 \
  "${qemu_extra[@]}" </dev/null >"$log.qemu" 2>&1
rc=$?
kill "$watch_pid" 2>/dev/null
wait "$watch_pid" 2>/dev/null
rm -f "$mon"
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')

# The console ends lines with CR LF, and kernel messages may land between our lines.
lines=$(tr -d '\r' <"$log" | grep -a -oE 'VMTEST (PASS|FAIL|DONE)( .*)?$' || true)
[ -z "$lines" ] || printf '%s\n' "$lines"

# The guest kernel itself must stay healthy: a WARN, BUG, oops, lockup or hung task
# on the console fails the run even when every check passed (the broker drives the
# kernel's IOMMU, VFIO and LUO paths; a kernel complaint there is a finding).
kernel_bad=$(tr -d '\r' <"$log" | grep -aE '(WARNING|BUG): |Oops|soft lockup|blocked for more than|Call Trace:' | head -n 5 || true)

why=
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  why="timed out after ${tmo}s"
  grep -q 'CPU' "$log.hang" 2>/dev/null ||
    why="$why, and QEMU itself no longer answered its monitor (the emulator froze, not only the guest)"
elif [ $rc -ne 0 ]; then
  why="qemu exited with status $rc"
elif ! grep -q '^VMTEST DONE' <<<"$lines"; then
  why="no 'VMTEST DONE' marker (guest crashed or /init failed)"
elif grep -q '^VMTEST FAIL' <<<"$lines"; then
  why="$(grep -c '^VMTEST FAIL' <<<"$lines") check(s) failed"
elif [ -n "$kernel_bad" ]; then
  why="the guest kernel complained: $(head -n1 <<<"$kernel_bad")"
fi

if [ -z "$why" ]; then
  echo "run-vm: PASS ($(grep -c '^VMTEST PASS' <<<"$lines") checks, ${secs}s boot to poweroff)"
  exit 0
fi
echo "run-vm: FAIL: $why (${secs}s)"
echo "---- last 60 lines of $log ----"
# Without the firmware's terminal escapes.
tr -d '\r' <"$log" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' | tail -n 60
if [ -s "$log.qemu" ]; then
  echo "---- last 20 lines of $log.qemu ----"
  tail -n 20 "$log.qemu"
fi
if [ -s "$log.hang" ]; then
  # Where each vCPU was, by symbol when the kernel is an ELF with a symbol table.
  echo "---- the vCPUs when the time ran out ($log.hang) ----"
  grep -E '^\* CPU|^  CPU|^RIP=' "$log.hang" | head -n 8
  if head -c4 "$kernel" | grep -q ELF && command -v nm >/dev/null; then
    nm -n "$kernel" 2>/dev/null | python3 -c '
import bisect, re, sys
syms = [(int(a, 16), n) for a, t, n in (l.split()[:3] for l in sys.stdin if len(l.split()) >= 3)]
keys = [a for a, _ in syms]
for rip in re.findall(r"^RIP=([0-9a-f]+)", open(sys.argv[1]).read(), re.M):
    r = int(rip, 16)
    i = bisect.bisect_right(keys, r) - 1
    print("RIP %s = %s+0x%x" % (rip, syms[i][1], r - syms[i][0]) if i >= 0 else "RIP %s" % rip)
' "$log.hang"
  fi
fi
exit 1
