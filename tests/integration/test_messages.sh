#!/bin/bash
# What dmabrokerctl, dmabrokerd and the example VMM say when something is wrong
# (issue 17): each message names the program, the word or path at fault and
# what to do, never a bare errno string that misleads.
#
#   test_messages.sh DMABROKERD DMABROKERCTL DMABROKER-EXAMPLE [DEFAULT_CONFIG]
#
# DEFAULT_CONFIG: the configuration file the build must read by default (the
# documented /etc/dmabroker/dmabroker.conf; empty when the build chose another
# with -Dconfig_file or an unusual prefix).
#
# Every wait is for the line or the exit it needs, bounded; the EXIT trap stops
# whatever this script started.
set -u

if [ $# -lt 3 ]; then
	echo "usage: $0 DMABROKERD DMABROKERCTL DMABROKER-EXAMPLE [DEFAULT_CONFIG]" >&2
	exit 2
fi
DAEMON=$1 CTL=$2 EXAMPLE=$3 WANT_CONFIG=${4:-}
for p in "$DAEMON" "$CTL" "$EXAMPLE"; do
	[ -x "$p" ] || { echo "FAIL: $p is not an executable" >&2; exit 1; }
done
unset LISTEN_FDS LISTEN_PID LISTEN_FDNAMES NOTIFY_SOCKET DMABROKER_SOCKET

TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmb-msg.XXXXXX") || exit 1
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	local f
	for f in "$TMP"/out "$TMP"/err "$TMP"/*.log; do
		[ -s "$f" ] || continue
		echo "----- ${f##*/}" >&2
		tail -n 20 "$f" >&2
	done
	exit 1
}
pass() { echo "ok - $*"; }

# run PROGRAM ARGS...: stdout in $TMP/out, stderr in $TMP/err, exit code in $RC.
run() {
	timeout -k 2 15 "$@" >"$TMP/out" 2>"$TMP/err"
	RC=$?
}
expect_rc() { [ "$RC" -eq "$1" ] || fail "$2: expected exit code $1, got $RC"; }
expect_err() { grep -Eq -- "$1" "$TMP/err" || fail "$2: expected stderr to match /$1/"; }
refute_err() { ! grep -Eq -- "$1" "$TMP/err" || fail "$2: stderr must not match /$1/"; }

# wait_for FILE REGEX SECONDS [PID]: until a line of FILE matches (or PID exits).
wait_for() {
	local n
	for ((n = 0; n < $3 * 20; n++)); do
		grep -Eq -- "$2" "$1" 2>/dev/null && return 0
		[ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null && break
		sleep 0.05
	done
	grep -Eq -- "$2" "$1" 2>/dev/null
}

# wait_exit PID SECONDS: until PID is gone; its status in $RC.
wait_exit() {
	local n
	for ((n = 0; n < $2 * 20; n++)); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$1" 2>/dev/null && return 1
	wait "$1"
	RC=$?
}

ME=$(id -u)
SOCK=$TMP/s

# start_daemon NAME CONFIG: a sim broker on $SOCK with CONFIG, log in $TMP/NAME.log;
# waits for its "ready" line.
start_daemon() {
	"$DAEMON" --backend=sim --socket="$SOCK" --config="$2" --bus=none --log-level=info \
		>"$TMP/$1.log" 2>&1 &
	DPID=$!
	PIDS+=("$DPID")
	wait_for "$TMP/$1.log" 'ready \(pid' 10 "$DPID" || fail "$1: no 'ready' line within 10 s"
}

# ------------------------------------------------------------ without a broker

# getopt's own message: under the program's name, not the path it was run by.
run "$CTL" --bogus
expect_rc 2 "dmabrokerctl --bogus"
expect_err "^dmabrokerctl: unrecognized option '--bogus'" "dmabrokerctl --bogus"
refute_err "^/" "dmabrokerctl --bogus"
run "$DAEMON" --bogus
expect_err "^dmabrokerd: unrecognized option '--bogus'" "dmabrokerd --bogus"
refute_err "^/" "dmabrokerd --bogus"
pass "--bogus is reported as 'dmabrokerctl:' / 'dmabrokerd:', not under the binary's path"

run "$CTL" list widgets
expect_rc 2 "list widgets"
expect_err "^dmabrokerctl: unknown list 'widgets': use 'list clients'" "list widgets"
run "$CTL" handoff sideways
expect_err "unknown handoff command 'sideways'" "handoff sideways"
pass "list widgets / handoff sideways name the word they do not know"

run "$CTL" --socket "$TMP" status
expect_rc 3 "--socket DIRECTORY"
expect_err "^dmabrokerctl: cannot connect to $TMP: it is a directory, not a socket" "--socket DIRECTORY"
refute_err "Connection refused" "--socket DIRECTORY"
: >"$TMP/plain"
run "$CTL" --socket "$TMP/plain" status
expect_err "cannot connect to $TMP/plain: it is a file, not a socket" "--socket FILE"
pass "--socket naming a directory or a file says so (not 'Connection refused')"

# The socket's directory missing (the daemon's default /run/dmabroker without the
# socket unit or tmpfiles): say what to do.
run "$DAEMON" --backend=sim --bus=none --socket="$TMP/missing/dmabroker.sock" --config=/dev/null
[ "$RC" -ne 0 ] || fail "dmabrokerd with a socket in a missing directory: expected a failure"
expect_err "cannot listen on $TMP/missing/dmabroker.sock: the directory $TMP/missing does not exist" \
	"socket directory missing"
expect_err "start dmabroker\.socket" "socket directory missing"
expect_err "--socket PATH" "socket directory missing"
pass "a missing socket directory is named, with what to do"

# ------------------------------------------------------------ configuration

# The default file is the documented one, and the daemon says which file it read
# or that it read none.
run "$DAEMON" --help
if [ -n "$WANT_CONFIG" ]; then
	grep -Fq -- "--config=FILE     configuration file (default $WANT_CONFIG if present)" "$TMP/out" ||
		fail "dmabrokerd --help: expected the default configuration $WANT_CONFIG"
	DEFAULT=$WANT_CONFIG
else
	DEFAULT=$(sed -n 's/.*configuration file (default \(.*\) if present).*/\1/p' "$TMP/out")
fi
run "$DAEMON" --backend=sim --bus=none --socket="$TMP/missing/s" # stops after the config
if [ -e "$DEFAULT" ]; then
	expect_err "configuration: read $DEFAULT" "no --config, $DEFAULT present"
else
	expect_err "configuration: no file \($DEFAULT does not exist\): built-in defaults, no client may open any device \(default deny\)" \
		"no --config, no $DEFAULT"
fi
pass "the default configuration is $DEFAULT and the daemon says whether it read it"

printf '[admin]\nuids = %s\n' "$ME" >"$TMP/deny.conf"
run "$DAEMON" --backend=sim --bus=none --socket="$TMP/missing/s" --config="$TMP/deny.conf"
expect_err "configuration: read $TMP/deny.conf \(0 policy sections\): it allows no device to any client" \
	"a file that allows nothing"
printf '[admin]\nuids = %s\n[devices]\nallow = 0000:01:00.0\n' "$ME" >"$TMP/m.conf"
start_daemon daemon "$TMP/m.conf"
grep -q "configuration: read $TMP/m.conf (0 policy sections, 1 device entry allowed)" "$TMP/daemon.log" ||
	fail "expected 'configuration: read $TMP/m.conf (0 policy sections, 1 device entry allowed)'"
pass "the daemon logs the file it read, and says when it allows no device at all"

# ------------------------------------------------------------ list output

run "$CTL" --socket "$SOCK" list contexts
expect_rc 0 "list contexts"
[ "$(tail -n1 "$TMP/out")" = "0 contexts" ] || fail "list contexts: expected the count line '0 contexts' last"
run "$CTL" --socket "$SOCK" list devices
expect_rc 0 "list devices"
grep -Eq '^0 devices, ' "$TMP/out" || fail "list devices: expected the count line '0 devices, ...'"
run "$CTL" --socket "$SOCK" list clients
expect_rc 0 "list clients"
[ "$(tail -n1 "$TMP/out")" = "1 client" ] || fail "list clients: expected the count line '1 client' (this one)"
pass "list contexts, list clients and list devices all end with a count line"

# ------------------------------------------------------------ reload

# Nothing changed: no word about socket or backend changes, though the command
# line (--socket, --backend=sim) overrides the file.
run "$CTL" --socket "$SOCK" reload
expect_rc 0 "reload"
wait_for "$TMP/daemon.log" 'policy reloaded from' 10 || fail "reload: no 'policy reloaded' line"
! grep -q "take[s]* effect at the next start" "$TMP/daemon.log" ||
	fail "reload of an unchanged file warned about changes taking effect at the next start"
# The file changes the backend: now it says so, naming it.
printf '[daemon]\nbackend = iommufd\n' >>"$TMP/m.conf"
run "$CTL" --socket "$SOCK" reload
expect_rc 0 "reload after a change"
wait_for "$TMP/daemon.log" 'backend changed from auto to iommufd: takes effect at the next start \(backend sim until then\)' 10 ||
	fail "reload: expected the warning about the backend change"
pass "reload warns about [daemon] changes only when the file changed them"

# ------------------------------------------------------------ the example VMM

# The broker stops under a VMM that is waiting for events.
"$EXAMPLE" --socket "$SOCK" --hold 60 >"$TMP/example.log" 2>&1 &
EPID=$!
PIDS+=("$EPID")
wait_for "$TMP/example.log" '^holding the session' 20 "$EPID" || fail "the example did not reach its hold"
kill -TERM "$DPID"
wait_exit "$DPID" 20 || fail "dmabrokerd did not exit on SIGTERM"
wait_exit "$EPID" 20 || fail "the example did not notice the broker going away"
[ "$RC" -ne 0 ] || fail "the example exited 0 although the broker went away"
grep -q "the broker closed the connection (dmabrokerd stopped or restarted)" "$TMP/example.log" ||
	fail "the example: expected 'the broker closed the connection (dmabrokerd stopped or restarted)'"
! grep -q "Connection reset by peer" "$TMP/example.log" || fail "the example still says 'Connection reset by peer'"
pass "the example VMM reports a stopped broker as such"

echo "all message checks passed"
