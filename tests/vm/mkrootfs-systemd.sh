#!/bin/bash
# mkrootfs-systemd.sh - builds the initramfs of a VM test that runs the real systemd as
# PID 1 (gzip'd newc cpio; the kernel runs it from rootfs, no switch-root).
#
# usage: mkrootfs-systemd.sh -o OUT.cpio.gz -m MODDIR -d DEB... [-f SRC=DEST]...
#                            [BIN[=DEST]]...
#
#   -m MODDIR    kernel modules dir from fetch-kernel.sh (*.ko + ORDER), installed in
#                /lib/modules/vmtest/ (guest-lib.sh's vm_load_modules loads them)
#   -d DEB       a Debian package (scripts/build-deb.sh) the guest installs with dpkg -i:
#                put in /var/cache/vmtest/debs/, NOT unpacked here; the host libraries
#                its ELF files need are copied in, and the guest's dpkg database lists
#                the host packages its Depends name, so dpkg -i finds them installed
#   -f SRC=DEST  extra file copied to DEST (test units, the test script, a config)
#   BIN[=DEST]   host executable copied to DEST (default /usr/bin/<basename>) with every
#                library ldd lists
#
# The userland is the host's own Debian 12 packages (PKGS below: systemd, udev, the D-Bus
# system bus, and dpkg with GNU tar and what maintainer scripts run: perl-base for
# deb-systemd-helper, ldconfig), copied file by file from `dpkg -L` (docs, man pages and
# locales left out) with every library their ELF files need, plus static busybox for the
# shell and the tools those packages do not bring. The host's version of each package is
# the guest's: nothing is downloaded, so the build is as reproducible as the host. About
# 5 s and 22 MB compressed.
set -euo pipefail
trap 'echo "mkrootfs-systemd: error: unexpected failure at line $LINENO" >&2' ERR

die() { echo "mkrootfs-systemd: error: $*" >&2; exit 1; }
usage() { sed -n '4,16p' "$0" >&2; exit 2; }

PKGS=(systemd libsystemd-shared libsystemd0 libudev1 udev
      dbus dbus-daemon dbus-bin dbus-system-bus-common libdbus-1-3
      dpkg tar libc-bin perl-base init-system-helpers)

here=$(cd "$(dirname "$0")" && pwd)
out='' moddir=''
files=() debs=()
while getopts "o:m:d:f:h" opt; do
  case $opt in
    o) out=$OPTARG ;;
    m) moddir=$OPTARG ;;
    d) debs+=("$OPTARG") ;;
    f) files+=("$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ -n "$out" ] && [ -n "$moddir" ] && [ ${#debs[@]} -gt 0 ] || usage
[ -f "$moddir/ORDER" ] || die "$moddir/ORDER not found (run fetch-kernel.sh)"
for d in "${debs[@]}"; do
  dpkg-deb -f "$d" Package >/dev/null 2>&1 || die "$d is not a Debian package"
done
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    die "package $p is not installed on this host (run scripts/install-deps.sh)"
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (install busybox-static)"
! ldd "$busybox" >/dev/null 2>&1 || die "$busybox is dynamically linked (install busybox-static)"
command -v cpio >/dev/null || die "cpio not found"

root=$(mktemp -d "${TMPDIR:-/tmp}/vm-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

# The host's /usr merge (Debian 12: /bin, /sbin, /lib, /lib64 -> usr/...), so that every
# path dpkg lists lands where the host has it.
mkdir -p "$root"/usr/{bin,sbin,lib,lib64}
for d in bin sbin lib lib64; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$root/$d"; else mkdir -p "$root/$d"; fi
done
mkdir -p "$root"/{etc,proc,sys,dev,run,tmp,root,var/lib,var/log,var/tmp}
ln -s ../run "$root/var/run"
chmod 1777 "$root/tmp" "$root/var/tmp"

# The packages' files (not directories: tar makes the parents, through the links above).
list=$root/.pkgfiles
dpkg -L "${PKGS[@]}" | LC_ALL=C sort -u | while read -r f; do
  [ -e "$f" ] || [ -L "$f" ] || continue
  [ -d "$f" ] && [ ! -L "$f" ] && continue
  case $f in
    /usr/share/doc/* | /usr/share/man/* | /usr/share/locale/* | /usr/share/bash-completion/* | \
    /usr/share/zsh/* | /usr/share/lintian/* | /usr/share/bug/* | /etc/init.d/* | /etc/rc?.d/*) continue ;;
  esac
  printf '%s\n' "${f#/}"
done >"$list"
tar -C / --no-recursion -cf - -T "$list" | tar -C "$root" --keep-directory-symlink -xf - ||
  die "copying the packages' files failed"
rm -f "$list"

copy_at() {
  mkdir -p "$root/$(dirname "$2")"
  rm -f "$root/$2"
  cp -L "$1" "$root/$2" || die "cannot copy $1"
}

# Every library an ELF file needs, the dynamic loader included.
copy_libs() {
  local lib
  for lib in $(ldd "$1" 2>/dev/null | awk '
      $2 == "=>" && $3 ~ /^\// { print $3; next }
      $1 ~ /^\// { print $1 }'); do
    [ -e "$root/$lib" ] || copy_at "$lib" "$lib"
  done
}

# The packages under test, for the guest's dpkg -i. What their ELF files need comes
# from the host (unpacked here only to ask ldd). The guest's dpkg database holds the
# host's records (and file lists) of what their Depends name, and of what those depend
# on in turn (dpkg checks the whole chain): the host's package set, trimmed to that
# closure. Their files are in the image as far as the guest runs them (the libraries
# ldd found; PKGS above); dpkg checks relations, not files.
mkdir -p "$root/var/cache/vmtest/debs" "$root"/var/lib/dpkg/{info,updates,triggers,alternatives}
: >"$root/var/lib/dpkg/available"
unpacked=$root/.unpacked
for d in "${debs[@]}"; do
  cp "$d" "$root/var/cache/vmtest/debs/" || die "cannot copy $d"
  rm -rf "$unpacked"
  dpkg-deb -x "$d" "$unpacked" || die "cannot unpack $d"
  while IFS= read -r -d '' f; do
    [ "$(head -c4 "$f" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || continue
    copy_libs "$f"
  done < <(find "$unpacked" -type f -print0)
  rm -rf "$unpacked"
done
closure=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Package Pre-Depends Depends; echo; done |
  python3 -c '
import subprocess, sys, re
fmt = "${Package}\t${Status}\t${Provides}\t${Pre-Depends}\t${Depends}\n"
out = subprocess.run(["dpkg-query", "-W", "-f=" + fmt], capture_output=True, text=True).stdout
inst, provides = {}, {}
for line in out.splitlines():
    name, status, prov, pre, dep = (line.split("\t") + [""] * 5)[:5]
    if status != "install ok installed":
        continue
    inst[name] = ", ".join(x for x in (pre, dep) if x)
    for p in prov.split(","):
        p = re.sub(r"\(.*\)", "", p).strip()
        if p:
            provides.setdefault(p, name)
def pick(rel):  # the first alternative the host has, by name or by Provides
    for alt in rel.split("|"):
        n = re.sub(r"\(.*\)|\[.*\]|:any|:native", "", alt).strip()
        if n in inst:
            return n
        if n in provides:
            return provides[n]
    sys.exit("mkrootfs-systemd: error: nothing on this host satisfies \"%s\"" % rel.strip())
own, want = set(), []
for stanza in sys.stdin.read().split("\n\n"):
    f = dict(l.split(": ", 1) for l in stanza.splitlines() if ": " in l)
    if "Package" in f:
        own.add(f["Package"])
        want += [f.get("Pre-Depends", ""), f.get("Depends", "")]
seen, todo = set(), [r for w in want for r in w.split(",") if r.strip()]
while todo:
    n = pick(todo.pop())
    if n in seen or n in own:
        continue
    seen.add(n)
    todo += [r for r in inst[n].split(",") if r.strip()]
print("\n".join(sorted(seen)))
') || die "cannot resolve the packages' dependencies on this host"
# shellcheck disable=SC2086
dpkg-query -s $closure >"$root/var/lib/dpkg/status" || die "dpkg-query -s failed"
for p in $closure; do
  name=$(dpkg-query -W -f='${binary:Package}' "$p")
  for l in "/var/lib/dpkg/info/$name.list" "/var/lib/dpkg/info/$p.list"; do
    [ -f "$l" ] && { cp "$l" "$root/var/lib/dpkg/info/"; break; }
  done
done

for spec in "$@"; do
  src=${spec%%=*}
  dest=${spec#*=}
  [ "$dest" != "$spec" ] || dest=/usr/bin/$(basename "$src")
  [ -x "$src" ] || die "binary $src not found or not executable"
  copy_at "$src" "$dest"
  chmod 0755 "$root/$dest"
done

# Libraries of every ELF file in the image (ldd on a non-ELF file just fails). The
# tree's own shared libraries are found through the image's ld.so.cache (below).
while IFS= read -r -d '' f; do
  [ "$(head -c4 "$f" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || continue
  copy_libs "$f"
done < <(find "$root" -type f -perm -u+x -print0; find "$root" -type f -name '*.so*' -print0)
# ...and what the tree's binaries need, resolved in the image rather than on the host.
mkdir -p "$root/etc/ld.so.conf.d"
cp /etc/ld.so.conf "$root/etc/"
cp /etc/ld.so.conf.d/*.conf "$root/etc/ld.so.conf.d/" 2>/dev/null || true
ldconfig -r "$root" 2>/dev/null || die "ldconfig -r $root failed"

# busybox: a shell and the tools the packages above do not bring (its applets never
# replace a packaged binary).
cp "$busybox" "$root/bin/busybox"
"$busybox" --list-full | (cd "$root" && perl -ne '
  chomp; next if $_ eq "bin/busybox" || -e $_ || -l $_;
  symlink("/bin/busybox", $_) or die "mkrootfs-systemd: symlink $_: $!\n";') ||
  die "cannot create the busybox applet links"

# The minimal identity of a system: root, an os-release, a machine id, NSS from files.
# systemd-sysusers adds the system users (dbus's messagebus, the broker's dmabroker) at
# boot from the sysusers.d snippets, as on a real first boot.
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'root:*::0:99999:7:::' >"$root/etc/shadow"
chmod 0640 "$root/etc/shadow"
printf 'passwd: files\ngroup: files\nshadow: files\n' >"$root/etc/nsswitch.conf"
cp /usr/lib/os-release "$root/usr/lib/os-release"
ln -sf ../usr/lib/os-release "$root/etc/os-release"
echo d1ab0c4e5b0f4a2e9c1d7e3f00a0b0c1 >"$root/etc/machine-id"
echo vmtest >"$root/etc/hostname"
# The kernel runs /init from the initramfs: systemd itself.
ln -s /lib/systemd/systemd "$root/init"

# The VFIO modules and guest-lib.sh, as in the busybox images (mkinitramfs.sh).
mkdir -p "$root/lib/modules/vmtest" "$root/lib/vmtest"
cp "$moddir/ORDER" "$root/lib/modules/vmtest/"
while read -r m; do
  [ -n "$m" ] || continue
  cp "$moddir/$m" "$root/lib/modules/vmtest/" || die "module $m missing in $moddir"
done <"$moddir/ORDER"
cp "$here/guest-lib.sh" "$root/lib/vmtest/guest-lib.sh"

for spec in "${files[@]}"; do
  src=${spec%%=*}
  dest=${spec#*=}
  [ "$dest" != "$spec" ] || die "-f needs SRC=DEST, got $spec"
  [ -f "$src" ] || die "file $src not found"
  copy_at "$src" "$dest"
  case $dest in *.sh) chmod 0755 "$root/$dest" ;; esac
done

mkdir -p "$(dirname "$out")"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio -o -H newc -R 0:0 --quiet | gzip -1 -n) >"$out.tmp" || die "cpio/gzip failed"
mv "$out.tmp" "$out"
