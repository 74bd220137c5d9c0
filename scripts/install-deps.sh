#!/usr/bin/env bash
# Installs the Debian 12 packages dmabroker needs to build, run and test,
# skipping those already present. Runs apt-get only when something is missing.
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
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq </dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
