#!/usr/bin/env bash
# Builds dmabroker's Debian packages with Debian's own tools (dpkg-buildpackage,
# debhelper's meson build system) from a copy of the tree, and checks them with
# lintian.
#
#   scripts/build-deb.sh [OUTDIR]      (default: build-deb)
#
# Leaves in OUTDIR: dmabroker_*.deb, libdmabroker0_*.deb, libdmabroker-dev_*.deb,
# the .changes and .buildinfo, build.log and lintian.log. Cached: when the tree's
# files (tracked and untracked, not ignored) are the ones the packages were built
# from, it says so and does nothing. Fails when the build fails or lintian reports
# an error or a warning not overridden in debian/*.lintian-overrides (each override
# says why). The packages needed: scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
out=${1:-build-deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)

say() { echo "build-deb: $*"; }
now() { date +%s; }

# The files of the tree that the packages are built from: what git knows (tracked, or
# new and not ignored), else everything but build directories; never tests/ and
# bench/, which the package build does not configure (so editing a test does not
# rebuild the packages).
files() {
  if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$top" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done
  else
    find . -path ./.git -prune -o -path './build*' -prune -o -type f -print0 | sed -z 's,^\./,,'
  fi | grep -zv -e '^tests/' -e '^bench/'
}

stamp=$out/.source-hash
hash=$(files | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && ls "$out"/dmabroker_*.deb >/dev/null 2>&1; then
  say "packages in $out are up to date with the tree ($(cd "$out" && ls ./*.deb | sed 's,^\./,,' | tr '\n' ' '))"
  exit 0
fi

rm -f "$stamp" "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
src=$out/src
rm -rf "$src"
mkdir -p "$src/dmabroker"
files | tar -C "$top" --null -T - -cf - | tar -C "$src/dmabroker" -xf -

t=$(now)
say "dpkg-buildpackage -b in $src/dmabroker (log: $out/build.log)"
# Binary packages only, unsigned; -rfakeroot when not root (Rules-Requires-Root: no
# needs it only for the final dpkg-deb, which debhelper runs under fakeroot itself).
if ! (cd "$src/dmabroker" && dpkg-buildpackage -b -us -uc) >"$out/build.log" 2>&1; then
  tail -n 40 "$out/build.log" >&2
  say "error: dpkg-buildpackage failed (whole log: $out/build.log)" >&2
  exit 1
fi
mv "$src"/*.deb "$src"/*.changes "$src"/*.buildinfo "$out"/
rm -rf "$src"
say "built in $(($(now) - t)) s: $(cd "$out" && ls ./*.deb | sed 's,^\./,,' | tr '\n' ' ')"

t=$(now)
changes=$(ls "$out"/*.changes)
if ! lintian --fail-on error,warning --info --display-info "$changes" >"$out/lintian.log" 2>&1; then
  cat "$out/lintian.log" >&2
  say "error: lintian found errors or warnings (above; explain a tag that must stay in debian/*.lintian-overrides)" >&2
  exit 1
fi
say "lintian: $(grep -c '^[EWIP]:' "$out/lintian.log" || true) tags not overridden (none an error or warning; $out/lintian.log), $(($(now) - t)) s"
echo "$hash" >"$stamp"
