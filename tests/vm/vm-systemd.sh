#!/bin/bash
# vm-systemd.sh - the vm-systemd test end to end: fetch the kernel, `meson install` the
# tree into a scratch dir, build a rootfs with the real systemd (mkrootfs-systemd.sh),
# boot it with systemd.unit=vmtest-systemd.target and judge the console (run-vm.sh).
#
# usage: vm-systemd.sh -K KERNEL_DIR -w WORK_DIR -B BUILD_DIR [-t VM_TIMEOUT]
#                      [-f SRC=DEST]... [BIN[=DEST]]...
#
#   -K KERNEL_DIR  cache dir for fetch-kernel.sh (shared by all VM tests)
#   -w WORK_DIR    where the install tree, the image and the logs go
#   -B BUILD_DIR   the meson build dir whose `meson install` goes into the guest
#   -f, BIN        passed to mkrootfs-systemd.sh
set -euo pipefail
trap 'echo "vm-systemd: error: unexpected failure at line $LINENO" >&2' ERR

here=$(cd "$(dirname "$0")" && pwd)
name=vm-systemd kdir='' work='' build='' tmo=240
mk_args=()
while getopts "K:w:B:t:f:h" opt; do
  case $opt in
    K) kdir=$OPTARG ;;
    w) work=$OPTARG ;;
    B) build=$OPTARG ;;
    t) tmo=$OPTARG ;;
    f) mk_args+=(-f "$OPTARG") ;;
    *) sed -n '7,8p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ -z "$kdir" ] || [ -z "$work" ] || [ -z "$build" ]; then
  sed -n '7,8p' "$0" >&2
  exit 2
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t=$(now)
"$here/fetch-kernel.sh" "$kdir"
t_fetch=$(since "$t")

t=$(now)
mkdir -p "$work"
dest=$work/$name.destdir
rm -rf "$dest"
# The tree's own install, exactly what a package would ship (meson test has built it).
meson install -C "$build" --no-rebuild --quiet --destdir "$dest" >"$work/$name.install.log" 2>&1 || {
  cat "$work/$name.install.log" >&2; echo "vm-systemd: error: meson install failed" >&2; exit 2; }
"$here/mkrootfs-systemd.sh" -o "$work/$name.cpio.gz" -m "$kdir/modules" -D "$dest" \
  -f "$here/vmtest-systemd.target=/etc/systemd/system/vmtest-systemd.target" \
  -f "$here/vmtest-systemd.service=/etc/systemd/system/vmtest-systemd.service" \
  -f "$here/systemd-init.sh=/usr/lib/vmtest/systemd-init.sh" \
  "${mk_args[@]}" "$@"
rm -rf "$dest"
t_rootfs=$(since "$t")

kernel=$kdir/vmlinuz
[ -f "$kdir/vmlinux" ] && kernel=$kdir/vmlinux # PVH boot: no in-guest decompression
echo "vm-systemd: kernel $(cat "$kdir/version") ($(basename "$kernel")), fetch ${t_fetch}s, install + rootfs ${t_rootfs}s ($(du -m "$work/$name.cpio.gz" | cut -f1) MB)"
# systemd's own status output stays off the console (the test's lines and errors are
# what matters there); the journal keeps everything and the test prints the daemon's
# part of it on failure.
exec "$here/run-vm.sh" -k "$kernel" -r "$work/$name.cpio.gz" -l "$work/$name.console.log" \
  -t "$tmo" -a "systemd.unit=vmtest-systemd.target systemd.show_status=error"
