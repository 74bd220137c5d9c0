#!/usr/bin/env bash
# Installs the Debian 12 packages dmabroker needs to build, run and test,
# skipping those already present. Runs apt-get only when something is missing.
#
# Another package manager at work (unattended-upgrades on a machine's first boot,
# an apt in another shell) holds dpkg's lock: this waits for it, saying who holds
# it, for up to DMB_APT_LOCK_TIMEOUT seconds (default 600), and passes apt-get the
# same bound (-o DPkg::Lock::Timeout) for a lock taken in between.
set -euo pipefail

pkgs=(
  # build
  meson ninja-build pkg-config gcc python3
  libevent-dev libsystemd-dev libprotobuf-c-dev protobuf-c-compiler
  libseccomp-dev libcap-ng-dev libcmocka-dev libbsd-dev libinih-dev
  # fuzzing and sanitizers
  clang libclang-rt-14-dev
  # VM test tier
  qemu-system-x86 busybox-static cpio kexec-tools xz-utils
  # the Linux 7.x VM kernel, built from Debian's linux-source package (tests/vm/build-kernel.sh)
  make bc flex bison libelf-dev libssl-dev
  # VM test tier, the systemd guest (vm-systemd): its rootfs is assembled from these
  # packages' files, and systemd-analyze scores the unit
  systemd udev dbus-daemon dbus-bin
  # the Debian packages (scripts/build-deb.sh), built and installed by the vm-systemd
  # test: dpkg-buildpackage with debhelper's meson build system, then lintian
  debhelper dpkg-dev fakeroot lintian
  # D-Bus tests (test_mgmt starts a private dbus-daemon)
  dbus
  # man page lint (docs/man/lint.sh: groff -ww)
  groff-base
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

lock_timeout=${DMB_APT_LOCK_TIMEOUT:-600}
# The locks apt and dpkg take (fcntl locks: flock(1) cannot see them).
read -r -a lock_files <<<"${DMB_APT_LOCK_FILES:-/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock}"

# Prints "PID (COMMAND)" of a process holding one of the locks, nothing when they
# are free. perl-base is essential on Debian; reading a lock file needs root, so
# for anyone else this stays silent and apt-get's own bounded wait does the job.
lock_holder() {
  perl -MFcntl -e '
    for my $f (@ARGV) {
      open(my $fh, "<", $f) or next;
      my $fl = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
      fcntl($fh, F_GETLK, $fl) or next;
      my ($type, $whence, $start, $len, $pid) = unpack("s s x4 q q i x4", $fl);
      next if $type == F_UNLCK;
      my $comm = "?";
      if (open(my $c, "<", "/proc/$pid/comm")) { chomp($comm = <$c> // "?"); }
      print "$pid ($comm)";
      exit 0;
    }' "${lock_files[@]}" 2>/dev/null || true
}

wait_for_lock() {
  local t0=$SECONDS who said=-1
  while who=$(lock_holder) && [ -n "$who" ]; do
    if [ $((SECONDS - t0)) -ge "$lock_timeout" ]; then
      echo "install-deps: error: the package manager lock is still held by $who after ${lock_timeout} s;" \
        "let it finish (or stop it) and run this again" >&2
      exit 1
    fi
    if [ $said -lt 0 ] || [ $((SECONDS - said)) -ge 30 ]; then
      echo "install-deps: waiting for the package manager lock, held by $who" \
        "($((SECONDS - t0)) s of at most ${lock_timeout} s)"
      said=$SECONDS
    fi
    sleep 1
  done
  [ $said -lt 0 ] || echo "install-deps: the lock is free after $((SECONDS - t0)) s"
}

apt_opts=(-o "DPkg::Lock::Timeout=$lock_timeout")
echo "install-deps: installing ${missing[*]}"
echo "install-deps: (apt-get waits up to ${lock_timeout} s for dpkg's lock if another package manager holds it)"
export DEBIAN_FRONTEND=noninteractive
wait_for_lock
$SUDO apt-get "${apt_opts[@]}" update -qq </dev/null
wait_for_lock
$SUDO apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
