#!/bin/bash
# scripts/run.sh --serve (issue 17): it prints the socket it serves and the
# `export DMABROKER_SOCKET=...` line that reaches it, the daemon answers there,
# and SIGTERM stops the daemon and removes run.sh's run directory.
#
#   test_run_serve.sh SOURCE_DIR BUILD_DIR
#
# BUILD_DIR is used as it is (DMABROKER_BUILD_DIR): nothing is installed or built.
# Every wait is for the line or the exit it needs, bounded.
set -u
[ $# -eq 2 ] || { echo "usage: $0 SOURCE_DIR BUILD_DIR" >&2; exit 2; }
SRC=$1 BUILD=$2
unset DMABROKER_SOCKET LISTEN_FDS LISTEN_PID NOTIFY_SOCKET
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmb-run.XXXXXX") || exit 1
RPID=
cleanup() {
	[ -n "$RPID" ] && kill -KILL "$RPID" 2>/dev/null
	[ -n "${DPID:-}" ] && kill -KILL "$DPID" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	echo "----- run.sh output" >&2
	cat "$TMP/out" >&2
	exit 1
}
# wait_for REGEX SECONDS: until a line of run.sh's output matches (or it exits).
wait_for() {
	local n
	for ((n = 0; n < $2 * 20; n++)); do
		grep -Eq -- "$1" "$TMP/out" && return 0
		kill -0 "$RPID" 2>/dev/null || break
		sleep 0.05
	done
	grep -Eq -- "$1" "$TMP/out"
}

XDG_RUNTIME_DIR=$TMP DMABROKER_BUILD_DIR=$BUILD setsid bash "$SRC/scripts/run.sh" --serve \
	>"$TMP/out" 2>&1 </dev/null &
RPID=$!
wait_for '^    export DMABROKER_SOCKET=' 60 || fail "no 'export DMABROKER_SOCKET=' line"
SOCK=$(sed -n 's/^    export DMABROKER_SOCKET=//p' "$TMP/out")
RUNDIR=$(dirname "$SOCK")
DPID=$(sed -n 's/^run: dmabrokerd (pid \([0-9]*\)) keeps serving .*/\1/p' "$TMP/out")
grep -Fq "run: dmabrokerd (pid $DPID) keeps serving $SOCK;" "$TMP/out" ||
	fail "expected 'run: dmabrokerd (pid N) keeps serving $SOCK'"
[ -S "$SOCK" ] || fail "$SOCK is not a socket"
case $RUNDIR in "$TMP"/dmabroker-run.*) ;; *) fail "run directory $RUNDIR is not under XDG_RUNTIME_DIR" ;; esac
echo "ok - run.sh --serve prints the socket ($SOCK) and the export line"

# The printed line is all a user needs.
(export DMABROKER_SOCKET=$SOCK; timeout 15 "$BUILD/client/dmabrokerctl" list contexts) >"$TMP/ctl" 2>&1 ||
	{ cat "$TMP/ctl" >&2; fail "dmabrokerctl with the exported DMABROKER_SOCKET failed"; }
echo "ok - dmabrokerctl reaches the broker through the exported DMABROKER_SOCKET"

kill -TERM "$RPID"
for ((n = 0; n < 400; n++)); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.05; done
kill -0 "$RPID" 2>/dev/null && fail "run.sh --serve did not exit within 20 s of SIGTERM"
RPID=
kill -0 "$DPID" 2>/dev/null && fail "dmabrokerd (pid $DPID) still runs after run.sh exited"
[ ! -e "$RUNDIR" ] || fail "run.sh left its run directory $RUNDIR behind"
DPID=
echo "ok - SIGTERM stops the daemon and removes $RUNDIR"
