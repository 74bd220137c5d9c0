#!/bin/bash
# Integration test of dmabrokerctl and the example VMM against a real
# dmabrokerd on the sim backend.
#
#   test_cli.sh DMABROKERD DMABROKERCTL DMABROKER-EXAMPLE
#
# The example maps 64 MiB of memfd guest RAM (2 MiB at IOVA 0, 62 MiB at
# 1 GiB), proves it with sim DMA and holds its session for a few seconds;
# meanwhile dmabrokerctl must show that context and those mappings, as JSON
# and as tables. Also checked: status, the exit codes (1 refused, 2 usage,
# 3 no broker), $DMABROKER_SOCKET, and a non-admin session's refusals.
#
# Every wait is bounded and every client call runs under timeout(1); the
# EXIT trap stops whatever this script started.
set -u

if [ $# -ne 3 ]; then
	echo "usage: $0 DMABROKERD DMABROKERCTL DMABROKER-EXAMPLE" >&2
	exit 2
fi
DAEMON=$1 CTL=$2 EXAMPLE=$3
for p in "$DAEMON" "$CTL" "$EXAMPLE"; do
	[ -x "$p" ] || { echo "FAIL: $p is not an executable" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "FAIL: python3 is needed to parse JSON" >&2; exit 1; }

# Nothing from the caller's environment may steer the daemon or the clients.
unset LISTEN_FDS LISTEN_PID LISTEN_FDNAMES NOTIFY_SOCKET DMABROKER_SOCKET

HOLD=5          # seconds the example keeps its mappings (as the spec asks)
SIZE_MIB=64
MiB=1048576
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmb-cli.XXXXXX") || exit 1
SOCK=$TMP/s
PIDS=()

cleanup() {
	local p n
	for p in "${PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in "${PIDS[@]}"; do
		for ((n = 0; n < 30; n++)); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

dump_logs() {
	local f
	for f in "$TMP"/daemon*.log "$TMP"/example.log; do
		[ -f "$f" ] || continue
		echo "----- ${f##*/} (last 30 lines)" >&2
		tail -n 30 "$f" >&2
	done
}

fail() {
	echo "FAIL: $*" >&2
	if [ -f "$TMP/out" ]; then
		echo "----- last stdout" >&2
		head -c 4000 "$TMP/out" >&2
	fi
	if [ -f "$TMP/err" ]; then
		echo "----- last stderr" >&2
		head -c 4000 "$TMP/err" >&2
	fi
	dump_logs
	exit 1
}

pass() { echo "ok - $*"; }

# ctl ARGS...: runs dmabrokerctl against the test broker; stdout in $TMP/out,
# stderr in $TMP/err, exit code in $RC.
ctl_raw() {
	timeout -k 2 15 "$CTL" "$@" >"$TMP/out" 2>"$TMP/err"
	RC=$?
}
ctl() { ctl_raw --socket "$SOCK" "$@"; }

# expect_rc WANT DESCRIPTION
expect_rc() {
	[ "$RC" -eq "$1" ] || fail "$2: expected exit code $1, got $RC"
}

# expect_err REGEX DESCRIPTION: stderr must match
expect_err() {
	grep -Eq -- "$1" "$TMP/err" || fail "$2: expected stderr to match /$1/"
}

# json PYTHON: runs PYTHON with d = the JSON document in $TMP/out; the code
# exits non-zero with a message (sys.exit("...")) when a check fails.
json() {
	python3 - "$TMP/out" 2>"$TMP/py.err" <<EOF
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError as e:
    sys.exit("stdout is not one JSON document: %s" % e)
$JSON_CODE
EOF
	local rc=$?
	PY_MSG=$(cat "$TMP/py.err")
	return $rc
}

# start_daemon NAME SOCKET ADMIN_UID: a sim broker whose only admin is ADMIN_UID
start_daemon() {
	local name=$1 sock=$2 admin=$3 n pid
	printf '[admin]\nuids = %s\n' "$admin" >"$TMP/$name.conf"
	"$DAEMON" --backend=sim --socket="$sock" --config="$TMP/$name.conf" \
		--log-level=info >"$TMP/$name.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	for ((n = 0; n < 50; n++)); do
		[ -S "$sock" ] && break
		kill -0 "$pid" 2>/dev/null || fail "$name exited before creating $sock"
		sleep 0.1
	done
	[ -S "$sock" ] || fail "$name: no socket at $sock after 5 s"
}

ME=$(id -u)
if [ "$ME" -eq 0 ]; then OTHER=65534; else OTHER=0; fi

# ------------------------------------------------------------ without a broker

ctl_raw
expect_rc 2 "no command"
expect_err 'no command' "no command"
ctl_raw frobnicate
expect_rc 2 "unknown command"
expect_err "unknown command 'frobnicate'" "unknown command"
ctl_raw list
expect_rc 2 "'list' alone"
ctl_raw list mappings
expect_rc 2 "'list mappings' without a context"
ctl_raw list mappings banana
expect_rc 2 "'list mappings' with a non-numeric context"
ctl_raw status extra
expect_rc 2 "'status' with an operand"
ctl_raw --all status
expect_rc 2 "--all with status"
ctl_raw --no-such-option status
expect_rc 2 "unknown option"
ctl_raw --help
expect_rc 0 "--help"
grep -q 'Exit status' "$TMP/out" || fail "--help: expected the exit codes to be documented"
pass "usage errors exit 2"

ctl_raw --socket "$TMP/nope" status
expect_rc 3 "missing socket"
expect_err "cannot connect to $TMP/nope" "missing socket"
DMABROKER_SOCKET=$TMP/nope ctl_raw --json list contexts
expect_rc 3 "missing socket from \$DMABROKER_SOCKET"
[ -s "$TMP/out" ] && fail "missing socket: expected nothing on stdout with --json"
pass "no broker exits 3"

# ------------------------------------------------------------ broker up

start_daemon daemon "$SOCK" "$ME"
pass "dmabrokerd --backend=sim is listening"

ctl status
expect_rc 0 "status"
grep -Eq '^Backend: +sim' "$TMP/out" || fail "status: expected a line 'Backend: sim'"
ctl --json status
expect_rc 0 "status --json"
JSON_CODE='
if d.get("backend") != "sim": sys.exit("expected backend sim, got %r" % d.get("backend"))
if not isinstance(d.get("features"), list): sys.exit("expected features to be a list")
for k in ("contexts", "regions", "mappings", "mapped_bytes", "pinned_bytes", "devices"):
    if not isinstance(d.get("totals", {}).get(k), int): sys.exit("expected integer totals.%s" % k)
if d.get("sessions", 0) < 1: sys.exit("expected at least 1 session, got %r" % d.get("sessions"))
if d.get("uptime_ms") is None: sys.exit("expected uptime_ms")
'
json || fail "status --json: $PY_MSG"
DMABROKER_SOCKET=$SOCK ctl_raw status
expect_rc 0 "status with \$DMABROKER_SOCKET"
DMABROKER_SOCKET=$TMP/nope ctl status
expect_rc 0 "--socket overrides \$DMABROKER_SOCKET"
pass "status shows the sim backend"

"$EXAMPLE" --socket "$SOCK" --hold "$HOLD" --size "$SIZE_MIB" >"$TMP/example.log" 2>&1 &
EX_PID=$!
PIDS+=("$EX_PID")

# Wait until the example's context shows up with both mappings.
CTX=
for ((n = 0; n < 100; n++)); do
	kill -0 "$EX_PID" 2>/dev/null || break
	ctl --json list contexts --all
	if [ "$RC" -eq 0 ]; then
		JSON_CODE="
for c in d['contexts']:
    if c['owner_pid'] == $EX_PID and c['mappings'] == 2:
        print(c['id']); sys.exit(0)
sys.exit('not yet')
"
		CTX=$(json) && break
		CTX=
	fi
	sleep 0.1
done
[ -n "$CTX" ] || fail "list contexts --all: expected a context of pid $EX_PID with 2 mappings within 10 s"
pass "list contexts --all shows the example's context $CTX"

ctl --json list contexts --all
JSON_CODE="
c = [c for c in d['contexts'] if c['id'] == $CTX][0]
want = dict(name='vmm-example', owner_uid=$ME, owner_pid=$EX_PID, regions=1, mappings=2,
            mapped_bytes=$SIZE_MIB * $MiB, devices=0)
for k, v in want.items():
    if c.get(k) != v: sys.exit('context %s: expected %s=%r, got %r' % (c['id'], k, v, c.get(k)))
if d.get('all') is not True: sys.exit('expected all=true')
"
json || fail "list contexts --json: $PY_MSG"

ctl list contexts
expect_rc 0 "list contexts (table)"
head -n1 "$TMP/out" | grep -Eq '^ *ID +NAME +UID +PID +SESSION +REGIONS +MAPPINGS +MAPPED +DEVICES$' ||
	fail "list contexts: expected the header 'ID NAME UID PID SESSION REGIONS MAPPINGS MAPPED DEVICES'"
grep -Eq "^ *$CTX +vmm-example +$ME +$EX_PID +[0-9]+ +1 +2 +64\.0 MiB +0\$" "$TMP/out" ||
	fail "list contexts: expected the row '$CTX vmm-example $ME $EX_PID <session> 1 2 64.0 MiB 0'"
# Right-aligned last column: an aligned table has lines of one length.
[ "$(awk '{ print length($0) }' "$TMP/out" | sort -u | wc -l)" -eq 1 ] ||
	fail "list contexts: expected every line of the table to have the same width"
pass "list contexts prints an aligned table"

ctl --json list mappings "$CTX"
expect_rc 0 "list mappings --json"
JSON_CODE="
if d.get('context') != $CTX: sys.exit('expected context $CTX, got %r' % d.get('context'))
got = [(m['iova'], m['length'], m['offset'], m['prot']) for m in d['mappings']]
want = [(0, 2 * $MiB, 0, 'rw'), (1 << 30, ($SIZE_MIB - 2) * $MiB, 2 * $MiB, 'rw')]
if got != want: sys.exit('expected (iova, length, offset, prot) %r, got %r' % (want, got))
if len(set(m['region'] for m in d['mappings'])) != 1: sys.exit('expected one region behind both')
for m in d['mappings']:
    if m['last'] != m['iova'] + m['length'] - 1: sys.exit('expected last = iova + length - 1: %r' % m)
"
json || fail "list mappings --json: $PY_MSG"
pass "list mappings --json: 2 MiB at IOVA 0 and $((SIZE_MIB - 2)) MiB at 1 GiB"

ctl list mappings "$CTX"
expect_rc 0 "list mappings (table)"
head -n1 "$TMP/out" | grep -Eq '^IOVA +LENGTH +REGION +OFFSET +PROT$' ||
	fail "list mappings: expected the header 'IOVA LENGTH REGION OFFSET PROT'"
grep -Eq '^0x0000000000000000-0x00000000001fffff +2\.0 MiB +[0-9]+ +0x0 +rw$' "$TMP/out" ||
	fail "list mappings: expected the row '0x0000000000000000-0x00000000001fffff 2.0 MiB <region> 0x0 rw'"
grep -Eq '^0x0000000040000000-0x0000000043dfffff +62\.0 MiB +[0-9]+ +0x200000 +rw$' "$TMP/out" ||
	fail "list mappings: expected the row '0x0000000040000000-0x0000000043dfffff 62.0 MiB <region> 0x200000 rw'"
grep -q '^2 mappings, 64\.0 MiB$' "$TMP/out" || fail "list mappings: expected the footer '2 mappings, 64.0 MiB'"
pass "list mappings prints the table"

ctl --json status
JSON_CODE="
t = d['totals']
if t['mappings'] < 2 or t['mapped_bytes'] < $SIZE_MIB * $MiB:
    sys.exit('expected totals of at least 2 mappings and $SIZE_MIB MiB, got %r' % t)
"
json || fail "status --json while mapped: $PY_MSG"
pass "status totals count the example's mappings"

ctl list mappings 999999
expect_rc 1 "list mappings of a context that does not exist"
expect_err '^dmabrokerctl: not-found: ' "list mappings of a context that does not exist"
ctl --json iova-ranges "$CTX"
expect_rc 1 "iova-ranges of another session's context"
expect_err '^dmabrokerctl: not-found: ' "iova-ranges of another session's context"
[ -s "$TMP/out" ] && fail "a refused --json request: expected nothing on stdout"
pass "refusals exit 1 with 'dmabrokerctl: <code>: <message>'"

# The example ends by itself after --hold.
for ((n = 0; n < (HOLD + 15) * 10; n++)); do
	kill -0 "$EX_PID" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$EX_PID" 2>/dev/null && fail "the example still runs $((HOLD + 15)) s after it started holding"
wait "$EX_PID"
EX_RC=$?
[ "$EX_RC" -eq 0 ] || fail "the example: expected exit code 0, got $EX_RC"
grep -q '^DMA check: ok' "$TMP/example.log" || fail "the example: expected 'DMA check: ok' in its output"
pass "the example exited 0 after proving its mappings with sim DMA"

ctl --json list contexts --all
expect_rc 0 "list contexts after the example"
JSON_CODE="
if any(c['id'] == $CTX for c in d['contexts']): sys.exit('expected context $CTX to be gone')
"
json || fail "list contexts after the example: $PY_MSG"
pass "the example's context is gone with its session"

# ------------------------------------------------------------ a non-admin session

SOCK2=$TMP/s2
start_daemon daemon-nonadmin "$SOCK2" "$OTHER"
ctl_raw --socket "$SOCK2" status
expect_rc 1 "status from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "status from a non-admin session"
ctl_raw --socket "$SOCK2" list contexts --all
expect_rc 1 "list contexts --all from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "list contexts --all from a non-admin session"
ctl_raw --socket "$SOCK2" --json list contexts
expect_rc 0 "list contexts from a non-admin session"
JSON_CODE='
if d != {"all": False, "contexts": []}: sys.exit("expected no contexts and all=false, got %r" % d)
'
json || fail "list contexts from a non-admin session: $PY_MSG"
pass "a non-admin session is refused status and --all (exit 1)"

echo "all CLI checks passed"
