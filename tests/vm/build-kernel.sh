#!/bin/bash
# build-kernel.sh OUTDIR
#
# The VM tier's Linux 7.x guest kernel, built from Debian's own kernel source package
# (linux-source-7.N) with tests/vm/kernel/vm-7.x.config merged over `make tinyconfig`:
# iommufd, the VFIO cdev and container, VFIO no-IOMMU, P2P by dma-buf, kexec handover
# and the Live Update Orchestrator, all built in. Leaves, like fetch-kernel.sh:
#   OUTDIR/vmlinuz            bzImage (what kexec loads inside the guest)
#   OUTDIR/vmlinux            the uncompressed ELF with a PVH entry (QEMU boots it)
#   OUTDIR/modules/ORDER      empty: no modules
#   OUTDIR/version            the kernel release (uname -r)
#   OUTDIR/source             "linux-source-7.N VERSION" it was built from
#
# Where the source comes from: the machine's apt sources list only its own suite, so the
# package is looked up with a temporary sources file of our own naming trixie-backports
# (then sid), with the mirror URI the machine already uses (read from its apt sources at
# run time), its own lists directory and cache: nothing on the machine changes. A
# backports suite keeps only its newest version, so the newest linux-source-7.N offered
# is resolved at run time, never pinned; the package is `apt-get download`ed and
# unpacked, never installed.
#
# The built kernel is cached outside the build tree, in $DMB_VM_KERNEL_CACHE (default
# /var/cache/dmabroker-vm-kernel, else ~/.cache/dmabroker-vm-kernel when that is not
# writable), keyed by the source package's version and a hash of the config fragment and
# of RECIPE below, under a lock (several tests share it). Warm: a second. Cold: about
# 6 min on 2 cores (tests/vm/README.md has the measured figure). Without network, the
# newest cached build is used and a note says so.
set -euo pipefail

die() { echo "build-kernel: error: $*" >&2; exit 1; }
note() { echo "build-kernel: $*" >&2; }
trap 'echo "build-kernel: error: unexpected failure at line $LINENO" >&2' ERR

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out=$1
here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/kernel/vm-7.x.config
[ -f "$fragment" ] || die "config fragment $fragment missing"
for t in apt-get apt-cache dpkg-deb flock make gcc flex bison bc tar xz sha256sum; do
  command -v "$t" >/dev/null 2>&1 || die "'$t' not found (scripts/install-deps.sh installs it)"
done

cache=${DMB_VM_KERNEL_CACHE:-/var/cache/dmabroker-vm-kernel}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/dmabroker-vm-kernel
  mkdir -p "$cache" || die "cannot create a cache directory"
fi
# Bump when the way the kernel is built changes (not for comments): part of the cache key.
RECIPE=1
key_hash=$( (echo "recipe $RECIPE"; cat "$fragment") | sha256sum | cut -c1-12)

# ---- the mirror the machine uses, and our own apt state --------------------------------
mirror() {
  local f u
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: "URIs: URI..." in stanzas whose Types include deb.
    u=$(awk 'tolower($1)=="uris:" { for (i = 2; i <= NF; i++) print $i }' "$f" |
      grep -E '^(https?|file)://' | grep -vE 'security|updates' | grep -E '/debian/?$' | head -n1 || true)
    [ -z "$u" ] || { echo "${u%/}"; return 0; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    u=$(sed -n 's/^deb \(\[[^]]*\] \)\?\([a-z]*:\/\/[^ ]*\) .*/\2/p' "$f" |
      grep -vE 'security' | grep -E '/debian/?$' | head -n1 || true)
    [ -z "$u" ] || { echo "${u%/}"; return 0; }
  done
  return 1
}

apt_dir=$cache/apt
apt_opts=()
apt_setup() { # suite
  local uri=$2
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $1 main" \
    >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
}

# Prints "PACKAGE VERSION SUITE URI" of the newest linux-source-7.N of the first suite
# that has one (a subshell: the caller sets up apt for SUITE again).
resolve() {
  local uri suite pkgs best
  uri=$(mirror) || { note "no Debian mirror URI in /etc/apt sources"; return 1; }
  for suite in trixie-backports sid; do
    apt_setup "$suite" "$uri"
    timeout 300 apt-get "${apt_opts[@]}" -qq update </dev/null >"$apt_dir/update.log" 2>&1 || {
      note "apt-get update of $suite failed: $(tail -n1 "$apt_dir/update.log")"; continue; }
    pkgs=$(apt-cache "${apt_opts[@]}" pkgnames linux-source-7. 2>/dev/null |
      grep -E '^linux-source-7\.[0-9]+$' || true)
    [ -n "$pkgs" ] || continue
    best=$(echo "$pkgs" | sort -t. -k2,2n | tail -n1)
    echo "$best $(apt-cache "${apt_opts[@]}" show "$best" 2>/dev/null | sed -n 's/^Version: //p' | head -n1) $suite $uri"
    return 0
  done
  return 1
}

# Several tests may build into the same cache at once: one builds, the others wait.
exec 9>"$cache/.lock"
flock -w 3000 9 || die "timed out waiting for the lock on $cache"

if src=$(resolve) && read -r pkg ver suite uri <<<"$src" && [ -n "$uri" ]; then
  apt_setup "$suite" "$uri"
  entry=$cache/$pkg-$ver-$key_hash
else
  # Offline (or the archive is unreachable): the newest complete build of this config.
  entry=$(ls -td "$cache"/linux-source-7.*-"$key_hash" 2>/dev/null | while read -r d; do
    [ -f "$d/version" ] && { echo "$d"; break; }; done || true)
  [ -n "$entry" ] || die "cannot resolve linux-source-7.N from trixie-backports or sid, and no cached build"
  note "archive unreachable: using the cached $(cat "$entry/source")"
fi

if [ ! -f "$entry/version" ]; then
  t0=$(date +%s)
  rm -rf "$entry" "$cache"/.work.*
  work=$(mktemp -d "$cache/.work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  dl=$work/dl
  mkdir -p "$dl" && chmod 0777 "$dl"
  (cd "$dl" && timeout 900 apt-get "${apt_opts[@]}" -q=2 download "$pkg" </dev/null >"$work/download.log" 2>&1) ||
    { cat "$work/download.log" >&2; die "apt-get download $pkg failed"; }
  deb=$(ls "$dl"/"$pkg"_*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || die "apt-get download produced no .deb for $pkg"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './usr/src/linux-source-*.tar.xz'
  rm -f "$deb"
  tarball=$(ls "$work"/usr/src/linux-source-*.tar.xz | head -n1)
  [ -n "$tarball" ] || die "$pkg holds no /usr/src/linux-source-*.tar.xz"
  tar -xf "$tarball" -C "$work"
  rm -f "$tarball"
  srcdir=$(ls -d "$work"/linux-source-*/ | head -n1)
  obj=$work/obj
  mkdir -p "$obj"
  note "building $pkg $ver from $suite (cold: about 6 min on 2 cores; log: $work/build.log)"
  {
    make -C "$srcdir" O="$obj" tinyconfig
    "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment"
    make -C "$srcdir" O="$obj" olddefconfig
  } >"$work/config.log" 2>&1 || { tail -n 30 "$work/config.log" >&2; die "configuring the kernel failed"; }
  # Every option the tier needs must be in the final .config: one that did not stick
  # (a dependency missing, an option renamed) would otherwise silently switch a feature off.
  missing=$(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$fragment" | while read -r l; do
    grep -qx "$l" "$obj/.config" || echo "${l%=y}"; done)
  [ -z "$missing" ] || die "the final .config of $pkg $ver lacks:" $missing
  make -C "$srcdir" O="$obj" -j"$(nproc)" bzImage >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log" >&2; die "building $pkg $ver failed"; }
  mkdir -p "$work/out/modules"
  : >"$work/out/modules/ORDER"
  cp "$obj/arch/x86/boot/bzImage" "$work/out/vmlinuz"
  cp "$obj/vmlinux" "$work/out/vmlinux"
  cp "$obj/.config" "$work/out/config"
  echo "$pkg $ver" >"$work/out/source"
  make -s -C "$srcdir" O="$obj" kernelrelease >"$work/out/version"
  mv "$work/out" "$entry"
  note "built $pkg $ver ($(cat "$entry/version")) in $(($(date +%s) - t0)) s"
  # Older builds go: one kernel is enough.
  for old in "$cache"/linux-source-7.*; do
    [ "$old" = "$entry" ] || rm -rf "$old"
  done
fi

mkdir -p "$out"
if ! cmp -s "$entry/version" "$out/version" 2>/dev/null || ! cmp -s "$entry/source" "$out/source" 2>/dev/null ||
   ! cmp -s "$entry/vmlinux" "$out/vmlinux" 2>/dev/null; then
  rm -f "$out/version"
  rm -rf "$out/modules"
  cp -r "$entry/modules" "$out/"
  cp "$entry/vmlinuz" "$entry/vmlinux" "$entry/config" "$entry/source" "$out/"
  cp "$entry/version" "$out/version" # last: marks a complete copy
fi
exit 0
