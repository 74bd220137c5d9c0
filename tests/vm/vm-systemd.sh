#!/bin/bash
# vm-systemd.sh - the vm-systemd test end to end: fetch the kernel, build the tree's
# Debian packages (scripts/build-deb.sh, cached), build a rootfs with the real systemd
# that carries them (mkrootfs-systemd.sh), boot it with systemd.unit=vmtest-systemd.target
# (the guest installs the packages with dpkg -i, then runs the checks) and judge the
# console (run-vm.sh).
#
# usage: vm-systemd.sh -K KERNEL_DIR -w WORK_DIR -S SOURCE_DIR [-t VM_TIMEOUT]
#                      [-f SRC=DEST]... [BIN[=DEST]]...
#
#   -K KERNEL_DIR  cache dir for fetch-kernel.sh (shared by all VM tests)
#   -w WORK_DIR    where the packages (WORK_DIR/deb), the image and the logs go
#   -S SOURCE_DIR  the tree whose packages go into the guest
#   -f, BIN        passed to mkrootfs-systemd.sh
set -euo pipefail
trap 'echo "vm-systemd: error: unexpected failure at line $LINENO" >&2' ERR

here=$(cd "$(dirname "$0")" && pwd)
name=vm-systemd kdir='' work='' src='' tmo=240
mk_args=()
while getopts "K:w:S:t:f:h" opt; do
  case $opt in
    K) kdir=$OPTARG ;;
    w) work=$OPTARG ;;
    S) src=$OPTARG ;;
    t) tmo=$OPTARG ;;
    f) mk_args+=(-f "$OPTARG") ;;
    *) sed -n '8,9p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ -z "$kdir" ] || [ -z "$work" ] || [ -z "$src" ]; then
  sed -n '8,9p' "$0" >&2
  exit 2
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t=$(now)
"$here/fetch-kernel.sh" "$kdir"
t_fetch=$(since "$t")

t=$(now)
mkdir -p "$work"
# The packages, exactly what an operator installs: dpkg-buildpackage from the tree,
# lintian-clean (scripts/build-deb.sh; rebuilt only when the tree changed).
"$src/scripts/build-deb.sh" "$work/deb" >"$work/$name.deb.log" 2>&1 || {
  cat "$work/$name.deb.log" >&2; echo "vm-systemd: error: building the packages failed" >&2; exit 2; }
sed 's/^/vm-systemd: /' "$work/$name.deb.log"
t_deb=$(since "$t")

t=$(now)
debs=()
for p in dmabroker libdmabroker0; do
  d=$(ls "$work"/deb/${p}_*.deb 2>/dev/null | head -n1)
  [ -n "$d" ] || { echo "vm-systemd: error: no ${p}_*.deb in $work/deb" >&2; exit 2; }
  debs+=(-d "$d")
done
"$here/mkrootfs-systemd.sh" -o "$work/$name.cpio.gz" -m "$kdir/modules" "${debs[@]}" \
  -f "$here/vmtest-systemd.target=/etc/systemd/system/vmtest-systemd.target" \
  -f "$here/vmtest-systemd.service=/etc/systemd/system/vmtest-systemd.service" \
  -f "$here/systemd-init.sh=/usr/lib/vmtest/systemd-init.sh" \
  "${mk_args[@]}" "$@"
t_rootfs=$(since "$t")

kernel=$kdir/vmlinuz
[ -f "$kdir/vmlinux" ] && kernel=$kdir/vmlinux # PVH boot: no in-guest decompression
echo "vm-systemd: kernel $(cat "$kdir/version") ($(basename "$kernel")), fetch ${t_fetch}s, packages ${t_deb}s, rootfs ${t_rootfs}s ($(du -m "$work/$name.cpio.gz" | cut -f1) MB)"
# systemd's own status output stays off the console (the test's lines and errors are
# what matters there); the journal keeps everything and the test prints the daemon's
# part of it on failure.
exec "$here/run-vm.sh" -k "$kernel" -r "$work/$name.cpio.gz" -l "$work/$name.console.log" \
  -t "$tmo" -a "systemd.unit=vmtest-systemd.target systemd.show_status=error"
