#!/bin/bash
# fetch-kernel.sh OUTDIR
#
# Fetches the current Debian 12 kernel (linux-image-6.1.0-NN-amd64, the package that
# linux-image-amd64 depends on) into OUTDIR without installing it, and leaves:
#   OUTDIR/vmlinuz            the kernel image (bzImage, as packaged)
#   OUTDIR/vmlinux            the same kernel uncompressed (ELF with a PVH entry note),
#                             when xz is available: QEMU boots it directly through PVH,
#                             which skips ~3.5 s of in-guest decompression under TCG
#   OUTDIR/modules/*.ko       irqbypass + the VFIO modules the VM tier needs
#   OUTDIR/modules/ORDER      their insmod order, one file name per line
#   OUTDIR/version            the kernel release string (e.g. 6.1.0-56-amd64)
# Idempotent: the .deb and the unpacked result are cached in OUTDIR. Quiet on success.
# Needs apt-get/apt-cache/dpkg-deb and Debian's mirror; runs with no stdin.
set -euo pipefail

die() { echo "fetch-kernel: error: $*" >&2; exit 1; }
trap 'echo "fetch-kernel: error: unexpected failure at line $LINENO" >&2' ERR

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out=$1
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)

# Modules in load order, relative to lib/modules/<version>/kernel/ (no modules.dep is
# shipped into the guest, so the guest insmods exactly this list in this order).
MODULES=(
  virt/lib/irqbypass.ko
  drivers/vfio/vfio.ko
  drivers/vfio/vfio_iommu_type1.ko
  drivers/vfio/vfio_virqfd.ko
  drivers/vfio/pci/vfio-pci-core.ko
  drivers/vfio/pci/vfio-pci.ko
)

for t in apt-cache apt-get dpkg-deb timeout flock; do
  command -v "$t" >/dev/null 2>&1 || die "'$t' not found (Debian host required)"
done

resolve() {
  timeout 60 apt-cache depends linux-image-amd64 </dev/null 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-amd64\)$/\1/p' | head -n1
}

# Several tests may fetch into the same directory at once.
exec 9>"$out/.lock"
flock -w 900 9 || die "timed out waiting for the lock on $out"
rm -rf "$out"/.dl.* "$out"/.x.* # leftovers of an interrupted run

pkg=$(resolve || true)
if [ -z "$pkg" ]; then
  # Package lists may be missing (fresh container) or stale; refresh once.
  timeout 120 apt-get update -qq </dev/null >/dev/null 2>&1 ||
    die "apt-get update failed (need root and Debian's mirror)"
  pkg=$(resolve || true)
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-6.1.0-NN-amd64 from 'apt-cache depends linux-image-amd64'"
kver=${pkg#linux-image-}

# Fast path: everything already unpacked for this version.
if [ -f "$out/version" ] && [ "$(cat "$out/version")" = "$kver" ] &&
   [ -s "$out/vmlinuz" ] && [ -f "$out/modules/ORDER" ]; then
  exit 0
fi

first_deb() {
  local f
  for f in "$1"/"${pkg}"_*.deb; do
    if [ -f "$f" ]; then echo "$f"; break; fi
  done
  return 0
}
deb=$(first_deb "$out")
if [ -z "$deb" ]; then
  # apt-get download writes into the current directory. When run as root, apt drops
  # privileges to _apt for downloads, which then cannot write into a root-owned build
  # dir ("unsandboxed download" warning); download to a temp dir apt can write to.
  tmp=$(mktemp -d "$out/.dl.XXXXXX")
  chmod 0777 "$tmp"
  if ! (cd "$tmp" && timeout 180 apt-get download -q=2 "$pkg" </dev/null >"$tmp/log" 2>&1); then
    if grep -qiE 'unable to locate|no candidate|404' "$tmp/log"; then
      # Stale lists: the mirror has moved on. Refresh and retry once.
      timeout 120 apt-get update -qq </dev/null >/dev/null 2>&1 || true
      pkg=$(resolve || true); kver=${pkg#linux-image-}
      (cd "$tmp" && timeout 180 apt-get download -q=2 "$pkg" </dev/null >"$tmp/log" 2>&1) || {
        cat "$tmp/log" >&2; rm -rf "$tmp"; die "apt-get download $pkg failed"; }
    else
      cat "$tmp/log" >&2; rm -rf "$tmp"; die "apt-get download $pkg failed"
    fi
  fi
  deb=$(first_deb "$tmp")
  [ -n "$deb" ] || { rm -rf "$tmp"; die "apt-get download produced no .deb for $pkg"; }
  mv "$deb" "$out/"
  rm -rf "$tmp"
  deb=$out/$(basename "$deb")
fi

# Unpack only what we need into a scratch dir, then publish atomically-ish.
x=$(mktemp -d "$out/.x.XXXXXX")
trap 'rm -rf "$x"' EXIT
paths=("./boot/vmlinuz-$kver")
for m in "${MODULES[@]}"; do paths+=("./lib/modules/$kver/kernel/$m"); done
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" "${paths[@]}" 2>"$x.err" || {
  cat "$x.err" >&2; rm -f "$x.err"; die "cannot unpack $deb (corrupt? delete it and retry)"; }
rm -f "$x.err"

rm -f "$out/version"
rm -rf "$out/modules"
mkdir -p "$out/modules"
: >"$out/modules/ORDER"
for m in "${MODULES[@]}"; do
  f="$x/lib/modules/$kver/kernel/$m"
  [ -f "$f" ] || die "module $m missing from $pkg"
  cp "$f" "$out/modules/"
  basename "$m" >>"$out/modules/ORDER"
done
cp "$x/boot/vmlinuz-$kver" "$out/vmlinuz"

# Uncompressed kernel for a PVH boot. Debian's amd64 bzImage carries an xz payload: the
# first xz stream header in the file. Best effort: without it the VM boots the bzImage.
rm -f "$out/vmlinux"
if command -v xz >/dev/null 2>&1; then
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$out/vmlinuz" | head -n1 | cut -d: -f1 || true)
  # No pipe into xz: it stops at the end of the stream, and pipefail would call the
  # writer's SIGPIPE a failure.
  if [ -n "$off" ] && tail -c +$((off + 1)) "$out/vmlinuz" >"$x/payload.xz" &&
     xz -dc --single-stream "$x/payload.xz" >"$x/vmlinux" 2>/dev/null &&
     [ "$(head -c4 "$x/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
    mv "$x/vmlinux" "$out/vmlinux"
  fi
fi
[ -f "$out/vmlinux" ] || echo "fetch-kernel: note: no uncompressed vmlinux (xz missing?); the VM will boot ~3 s slower" >&2

echo "$kver" >"$out/version" # written last: marks a complete unpack
# Drop older cached kernel packages.
for old in "$out"/linux-image-*_*.deb; do
  [ "$old" = "$deb" ] || rm -f "$old"
done
exit 0
