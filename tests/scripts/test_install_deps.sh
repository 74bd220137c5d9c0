#!/bin/bash
# scripts/install-deps.sh and dpkg's lock (issue 17): while another process holds
# the lock it says it waits and who holds it, runs no apt-get, and goes on once the
# lock is free; every apt-get gets the same bound (-o DPkg::Lock::Timeout); a lock
# held past the bound is an error that names the holder.
#
#   test_install_deps.sh SOURCE_DIR
#
# apt-get, dpkg-query and sudo are stubs (nothing is installed); the lock is an
# fcntl lock on a scratch file (DMB_APT_LOCK_FILES), held by perl as apt holds its own.
set -u
[ $# -eq 1 ] || { echo "usage: $0 SOURCE_DIR" >&2; exit 2; }
SCRIPT=$1/scripts/install-deps.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmb-deps.XXXXXX") || exit 1
HOLDER= RUN=
cleanup() {
	[ -n "$HOLDER" ] && kill -KILL "$HOLDER" 2>/dev/null
	[ -n "$RUN" ] && kill -KILL "$RUN" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	for f in "$TMP"/out "$TMP"/apt.log; do [ -f "$f" ] && { echo "----- ${f##*/}" >&2; cat "$f" >&2; }; done
	exit 1
}

mkdir "$TMP/bin"
# Every package is missing; apt-get records its arguments and fails if it runs
# while the test still holds the lock.
printf '#!/bin/sh\nexit 1\n' >"$TMP/bin/dpkg-query"
cat >"$TMP/bin/apt-get" <<STUB
#!/bin/sh
[ -e "$TMP/held" ] && { echo "apt-get ran while the lock was held: \$*" >>"$TMP/apt.log"; exit 1; }
echo "\$*" >>"$TMP/apt.log"
STUB
printf '#!/bin/sh\nexec "$@"\n' >"$TMP/bin/sudo"
chmod +x "$TMP/bin"/*
export PATH=$TMP/bin:$PATH DMB_APT_LOCK_FILES=$TMP/lock

# hold_lock: perl takes an fcntl write lock on $TMP/lock and keeps it until killed.
hold_lock() {
	: >"$TMP/held"
	rm -f "$TMP/locked"
	perl -MFcntl -e '
		open(my $fh, ">", $ARGV[0]) or die "open: $!";
		my $fl = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
		fcntl($fh, F_SETLK, $fl) or die "lock: $!";
		open(my $r, ">", $ARGV[1]) or die; print $r "locked\n"; close $r;
		sleep 3600;' "$TMP/lock" "$TMP/locked" &
	HOLDER=$!
	for ((n = 0; n < 200; n++)); do [ -s "$TMP/locked" ] && return 0; sleep 0.05; done
	fail "perl did not take the lock"
}
# wait_out REGEX SECONDS: until install-deps' output matches (or it exits).
wait_out() {
	for ((n = 0; n < $2 * 20; n++)); do
		grep -Eq -- "$1" "$TMP/out" && return 0
		kill -0 "$RUN" 2>/dev/null || break
		sleep 0.05
	done
	grep -Eq -- "$1" "$TMP/out"
}

hold_lock
DMB_APT_LOCK_TIMEOUT=120 bash "$SCRIPT" >"$TMP/out" 2>&1 </dev/null &
RUN=$!
wait_out "^install-deps: waiting for the package manager lock, held by $HOLDER \(perl\)" 30 ||
	fail "expected 'waiting for the package manager lock, held by $HOLDER (perl)'"
[ ! -e "$TMP/apt.log" ] || fail "apt-get ran while the lock was held"
echo "ok - install-deps says it waits for the lock and who holds it, and runs no apt-get meanwhile"
rm -f "$TMP/held"
kill -KILL "$HOLDER"
wait "$HOLDER" 2>/dev/null
HOLDER=
for ((n = 0; n < 600; n++)); do kill -0 "$RUN" 2>/dev/null || break; sleep 0.05; done
kill -0 "$RUN" 2>/dev/null && fail "install-deps still runs 30 s after the lock was freed"
wait "$RUN"
rc=$?
RUN=
[ "$rc" -eq 0 ] || fail "install-deps exited with $rc once the lock was free"
grep -q "^install-deps: the lock is free after [0-9]* s" "$TMP/out" || fail "expected 'the lock is free after N s'"
[ "$(grep -c -- '-o DPkg::Lock::Timeout=120 ' "$TMP/apt.log")" -eq 2 ] ||
	fail "expected both apt-get calls with -o DPkg::Lock::Timeout=120"
grep -q -- ' update ' "$TMP/apt.log" && grep -q -- ' install .*debhelper' "$TMP/apt.log" ||
	fail "expected apt-get update, then apt-get install of the missing packages"
echo "ok - once the lock is free it runs apt-get update and install, each bounded by DPkg::Lock::Timeout"

hold_lock
DMB_APT_LOCK_TIMEOUT=1 bash "$SCRIPT" >"$TMP/out" 2>&1 </dev/null &
RUN=$!
for ((n = 0; n < 600; n++)); do kill -0 "$RUN" 2>/dev/null || break; sleep 0.05; done
kill -0 "$RUN" 2>/dev/null && fail "install-deps with a 1 s bound still waits after 30 s"
wait "$RUN"
rc=$?
RUN=
[ "$rc" -ne 0 ] || fail "install-deps succeeded although the lock stayed held past its bound"
grep -q "^install-deps: error: the package manager lock is still held by $HOLDER (perl) after 1 s" "$TMP/out" ||
	fail "expected 'the package manager lock is still held by $HOLDER (perl) after 1 s'"
echo "ok - a lock held past DMB_APT_LOCK_TIMEOUT is an error naming its holder"
