#!/bin/bash
# vm-test.sh - one VM test end to end: fetch the kernel, build the initramfs, boot.
# This is what `meson test --suite vm` runs; it also works by hand.
#
# usage: vm-test.sh -n NAME -i INIT -K KERNEL_DIR -w WORK_DIR [-t VM_TIMEOUT]
#                   [-k 6.1|7] [-a CMDLINE] [-N] [-f SRC=DEST]... [BIN[=DEST]]...
#
#   -n NAME        test name: WORK_DIR/NAME.cpio.gz, WORK_DIR/NAME.console.log
#   -i INIT        guest /init script (sources /lib/vmtest/guest-lib.sh)
#   -K KERNEL_DIR  the kernel's directory (shared by the VM tests of one kernel)
#   -k KERNEL      6.1: Debian 12's image (fetch-kernel.sh, the default); 7: Linux 7.x
#                  built from Debian's linux-source-7.N (build-kernel.sh)
#   -a CMDLINE     more kernel command line (NAME=VALUE words the kernel does not know
#                  reach the guest's /init as environment variables)
#   -c CPUS        vCPUs of the machine (default 2)
#   -N             no emulated IOMMU (VFIO's no-IOMMU mode; see run-vm.sh)
#   -w WORK_DIR    where the image and logs go
#   -t SECONDS     limit for the VM run (default 240)
#   -f, BIN        passed to mkinitramfs.sh
set -euo pipefail
trap 'echo "vm-test: error: unexpected failure at line $LINENO" >&2' ERR

here=$(cd "$(dirname "$0")" && pwd)
name='' init='' kdir='' work='' tmo=240 kind=6.1 extra='' cpus=2 noiommu=''
mk_args=()
while getopts "n:i:K:w:t:f:k:a:c:Nh" opt; do
  case $opt in
    n) name=$OPTARG ;;
    i) init=$OPTARG ;;
    K) kdir=$OPTARG ;;
    w) work=$OPTARG ;;
    t) tmo=$OPTARG ;;
    f) mk_args+=(-f "$OPTARG") ;;
    k) kind=$OPTARG ;;
    a) extra=$OPTARG ;;
    c) cpus=$OPTARG ;;
    N) noiommu=-N ;;
    *) sed -n '5,6p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ -z "$name" ] || [ -z "$init" ] || [ -z "$kdir" ] || [ -z "$work" ]; then
  sed -n '5,6p' "$0" >&2
  exit 2
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t=$(now)
case $kind in
  6.1) "$here/fetch-kernel.sh" "$kdir" ;;
  7) "$here/build-kernel.sh" "$kdir" ;;
  *) echo "vm-test: error: -k $kind: want 6.1 or 7" >&2; exit 2 ;;
esac
t_fetch=$(since "$t")

t=$(now)
mkdir -p "$work"
"$here/mkinitramfs.sh" -o "$work/$name.cpio.gz" -i "$init" -m "$kdir/modules" \
  "${mk_args[@]}" "$@"
t_initrd=$(since "$t")

kernel=$kdir/vmlinuz
[ -f "$kdir/vmlinux" ] && kernel=$kdir/vmlinux # PVH boot: no in-guest decompression
src=
[ ! -f "$kdir/source" ] || src=", from $(cat "$kdir/source")"
echo "vm-test: $name: kernel $(cat "$kdir/version") ($(basename "$kernel")$src), kernel ${t_fetch}s, initramfs ${t_initrd}s"
exec "$here/run-vm.sh" -k "$kernel" -r "$work/$name.cpio.gz" -l "$work/$name.console.log" -t "$tmo" \
  -c "$cpus" ${extra:+-a "$extra"} $noiommu
