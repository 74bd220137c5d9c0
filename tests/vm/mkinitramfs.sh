#!/bin/bash
# mkinitramfs.sh - builds the initramfs of a VM test (gzip'd newc cpio).
#
# usage: mkinitramfs.sh -o OUT.cpio.gz -i INIT -m MODDIR [-f SRC=DEST]... [BIN[=DEST]]...
#
#   -i INIT      guest init script, installed as /init
#   -m MODDIR    kernel modules dir from fetch-kernel.sh (*.ko + ORDER), installed in
#                /lib/modules/vmtest/
#   -f SRC=DEST  extra file (config, data) copied to DEST in the guest
#   BIN[=DEST]   host executable copied to DEST (default /usr/bin/<basename>) with
#                every library ldd lists, the dynamic loader included, at the same paths
#
# Always included: /bin/busybox (static) with all its applet links, guest-lib.sh as
# /lib/vmtest/guest-lib.sh. Binaries are installed after the applet links, so a binary
# replaces a busybox applet of the same name.
set -euo pipefail
trap 'echo "mkinitramfs: error: unexpected failure at line $LINENO" >&2' ERR

die() { echo "mkinitramfs: error: $*" >&2; exit 1; }
usage() { sed -n '4,13p' "$0" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
out='' init='' moddir=''
files=()
while getopts "o:i:m:f:h" opt; do
  case $opt in
    o) out=$OPTARG ;;
    i) init=$OPTARG ;;
    m) moddir=$OPTARG ;;
    f) files+=("$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ -n "$out" ] && [ -n "$init" ] && [ -n "$moddir" ] || usage
[ -f "$init" ] || die "init script $init not found"
[ -f "$moddir/ORDER" ] || die "$moddir/ORDER not found (run fetch-kernel.sh)"

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked (install busybox-static)"
fi
command -v cpio >/dev/null || die "cpio not found"

root=$(mktemp -d "${TMPDIR:-/tmp}/vm-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,lib/vmtest,lib/modules/vmtest}
cp "$busybox" "$root/bin/busybox"
# Applet links at build time (cheaper than `busybox --install -s` at every boot).
# perl (Essential on Debian) makes the ~270 links in one process instead of ~540 forks.
"$busybox" --list-full | (cd "$root" && perl -ne '
  chomp; next if $_ eq "bin/busybox" || -e $_;
  symlink("/bin/busybox", $_) or die "mkinitramfs: symlink $_: $!\n";') ||
  die "cannot create the busybox applet links"
[ -e "$root/bin/sh" ] || ln -s busybox "$root/bin/sh"

cp "$moddir/ORDER" "$root/lib/modules/vmtest/"
while read -r m; do
  [ -n "$m" ] || continue
  cp "$moddir/$m" "$root/lib/modules/vmtest/" || die "module $m missing in $moddir"
done <"$moddir/ORDER"
cp "$here/guest-lib.sh" "$root/lib/vmtest/guest-lib.sh"
install -m 0755 "$init" "$root/init"

# copy_at SRC DEST: copies a file (dereferencing links) to DEST inside the image.
copy_at() {
  mkdir -p "$root/$(dirname "$2")"
  rm -f "$root/$2"
  cp -L "$1" "$root/$2" || die "cannot copy $1"
}

copy_libs() {
  local bin=$1 lib
  # "libx.so.1 => /path (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)"; a static binary
  # makes ldd fail with "not a dynamic executable", which is fine.
  for lib in $(ldd "$bin" 2>/dev/null | awk '
      $2 == "=>" && $3 ~ /^\// { print $3; next }
      $1 ~ /^\// { print $1 }'); do
    [ -e "$root/$lib" ] || copy_at "$lib" "$lib"
  done
  if ldd "$bin" 2>/dev/null | grep -q 'not found'; then
    die "$bin: ldd reports missing libraries: $(ldd "$bin" | grep 'not found' | tr -s ' \n' ' ')"
  fi
}

for spec in "$@"; do
  src=${spec%%=*}
  dest=${spec#*=}
  [ "$dest" != "$spec" ] || dest=/usr/bin/$(basename "$src")
  [ -x "$src" ] || die "binary $src not found or not executable"
  copy_at "$src" "$dest"
  chmod 0755 "$root/$dest"
  copy_libs "$src"
done

for spec in "${files[@]}"; do
  src=${spec%%=*}
  dest=${spec#*=}
  [ "$dest" != "$spec" ] || die "-f needs SRC=DEST, got $spec"
  [ -f "$src" ] || die "file $src not found"
  copy_at "$src" "$dest"
done

mkdir -p "$(dirname "$out")"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio -o -H newc -R 0:0 --quiet | gzip -1 -n) >"$out.tmp" || die "cpio/gzip failed"
mv "$out.tmp" "$out"
