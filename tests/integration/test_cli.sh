#!/bin/bash
# Integration test of dmabrokerctl and the example VMM against a real
# dmabrokerd on the sim backend.
#
#   test_cli.sh DMABROKERD DMABROKERCTL DMABROKER-EXAMPLE P2P-SETUP
#
# The example maps 64 MiB of memfd guest RAM (2 MiB at IOVA 0, 62 MiB at
# 1 GiB), proves it with sim DMA and holds its session for a few seconds;
# meanwhile dmabrokerctl must show that context and those mappings, as JSON
# and as tables. P2P-SETUP (p2p-setup.c) opens two sim devices and maps 64 KiB
# of one's BAR0 into their context; list devices must show the importer under
# its device, list mappings the P2P mapping, and both must follow it through
# a revocation (memory decoding off) and back. Also checked: status, policy
# check (no daemon), the exit codes (1 refused, 2 usage, 3 no broker or a
# silent one), $DMABROKER_SOCKET, and a non-admin session's refusals.
#
# Every wait is bounded and every client call runs under timeout(1); the
# EXIT trap stops whatever this script started.
set -u

if [ $# -ne 4 ]; then
	echo "usage: $0 DMABROKERD DMABROKERCTL DMABROKER-EXAMPLE P2P-SETUP" >&2
	exit 2
fi
DAEMON=$1 CTL=$2 EXAMPLE=$3 P2P_SETUP=$4
for p in "$DAEMON" "$CTL" "$EXAMPLE" "$P2P_SETUP"; do
	[ -x "$p" ] || { echo "FAIL: $p is not an executable" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "FAIL: python3 is needed to parse JSON" >&2; exit 1; }

# Nothing from the caller's environment may steer the daemon or the clients.
unset LISTEN_FDS LISTEN_PID LISTEN_FDNAMES NOTIFY_SOCKET DMABROKER_SOCKET

# The example holds its mappings until the checks below are done and stop
# it (SIGTERM): a hold of a few seconds ran out under ASan on a loaded
# machine, where each dmabrokerctl call takes over a second. HOLD only
# bounds a test that hangs; that a hold ends by itself is checked apart,
# with --hold 1.
HOLD=600
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
	for f in "$TMP"/daemon*.log "$TMP"/example.log "$TMP"/p2p.log; do
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

# start_daemon NAME SOCKET ADMIN_UID: a sim broker whose only admin is
# ADMIN_UID; it lets its clients open sim devices 1 and 2 and map P2P.
start_daemon() {
	local name=$1 sock=$2 admin=$3 n pid
	printf '[admin]\nuids = %s\n[devices]\nallow = %s %s\n[p2p]\nallow = yes\n[handoff]\npreserver = none\n' \
		"$admin" "$BDF_A" "$BDF_B" >"$TMP/$name.conf"
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

# p2p_start SOCKET: runs p2p-setup with its stdin and stdout on fifos (fds 7
# and 8) and waits for "ready context=C a=A b=B": sets P2P_CTX, P2P_A, P2P_B.
p2p_start() {
	local line
	rm -f "$TMP/p2p.in" "$TMP/p2p.out"
	mkfifo "$TMP/p2p.in" "$TMP/p2p.out" || fail "mkfifo"
	"$P2P_SETUP" "$1" <"$TMP/p2p.in" >"$TMP/p2p.out" 2>"$TMP/p2p.log" &
	P2P_PID=$!
	PIDS+=("$P2P_PID")
	exec 7>"$TMP/p2p.in" 8<"$TMP/p2p.out"
	read -r -t 10 -u 8 line || fail "p2p-setup: no 'ready' line within 10 s"
	[[ $line =~ ^ready\ context=([0-9]+)\ a=([0-9]+)\ b=([0-9]+)$ ]] ||
		fail "p2p-setup: expected 'ready context=C a=A b=B', got '$line'"
	P2P_CTX=${BASH_REMATCH[1]} P2P_A=${BASH_REMATCH[2]} P2P_B=${BASH_REMATCH[3]}
}

# p2p_cmd revoke|restore: one command; its answer line in P2P_REPLY
p2p_cmd() {
	echo "$1" >&7
	read -r -t 10 -u 8 P2P_REPLY || fail "p2p-setup: no answer to '$1' within 10 s"
}

# p2p_stop: end of input ends p2p-setup's session; it must exit 0
p2p_stop() {
	local n rc
	exec 7>&- 8<&-
	for ((n = 0; n < 100; n++)); do
		kill -0 "$P2P_PID" 2>/dev/null || break
		sleep 0.1
	done
	wait "$P2P_PID"
	rc=$?
	[ "$rc" -eq 0 ] || fail "p2p-setup: expected exit code 0, got $rc"
}

BDF_A=0000:01:00.0
BDF_B=0000:02:00.0
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
ctl_raw list devices extra
expect_rc 2 "'list devices' with an operand"
ctl_raw list clients extra
expect_rc 2 "'list clients' with an operand"
ctl_raw revoke
expect_rc 2 "'revoke' without a context"
ctl_raw revoke banana
expect_rc 2 "'revoke' with a non-numeric context"
ctl_raw reload now
expect_rc 2 "'reload' with an operand"
ctl_raw --all list clients
expect_rc 2 "--all with list clients"
ctl_raw policy
expect_rc 2 "'policy' alone"
expect_err "policy what" "'policy' alone"
ctl_raw policy check
expect_rc 2 "'policy check' without a file"
ctl_raw --uid 5 --gid 5 status
expect_rc 2 "--uid/--gid with status"
ctl_raw --uid 5 policy check /dev/null
expect_rc 2 "--uid without --gid"
ctl_raw --uid -1 --gid 0 policy check /dev/null
expect_rc 2 "a negative --uid"
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

# A broker that accepts and never answers: --timeout turns the wait into exit 3.
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(sys.argv[1]); s.listen(8)
held = []
while True:
    held.append(s.accept()[0])
' "$TMP/silent" 2>"$TMP/silent.log" &
PIDS+=("$!")
for ((n = 0; n < 50; n++)); do
	[ -S "$TMP/silent" ] && break
	sleep 0.1
done
[ -S "$TMP/silent" ] || fail "the silent broker did not create its socket"
T0=$(date +%s%N)
ctl_raw --socket "$TMP/silent" --timeout 1 --json status
T1=$(date +%s%N)
expect_rc 3 "a silent broker with --timeout 1"
expect_err '^dmabrokerctl: handshake: .*no answer from the broker within 1000 ms$' "a silent broker"
[ -s "$TMP/out" ] && fail "a silent broker: expected nothing on stdout with --json"
MS=$(((T1 - T0) / 1000000))
((MS >= 900 && MS < 5000)) || fail "a silent broker: expected to give up after ~1 s, took $MS ms"
pass "a silent broker: --timeout 1 gives up after ${MS} ms (exit 3)"

# ------------------------------------------------------------ policy check (no broker)

POL=$TMP/policy.conf
cat >"$POL" <<'EOF'
[admin]
uids = 0

[devices]
allow = 0000:01:00.0

[default]
contexts = 4

[gid 100]
p2p = yes
devices = 0000:01:00.0 0000:02:00.0

[uid 1000]
pinned_bytes = 8G
EOF
mkdir "$POL.d"
printf '[uid 1001]\nadmin = yes\n' >"$POL.d/10-ops.conf"
printf '[limits]\nfrob = 9\n' >"$POL.d/ignored.txt" # not *.conf: not read

ctl_raw policy check "$POL"
expect_rc 0 "policy check of a good file"
[ "$(cat "$TMP/out")" = "$POL: ok (4 policy sections)" ] ||
	fail "policy check: expected exactly '$POL: ok (4 policy sections)' (3 + 1 drop-in)"
ctl_raw --json policy check "$POL" --uid 1000 --gid 100
expect_rc 0 "policy check --uid 1000 --gid 100"
JSON_CODE="
if d.get('ok') is not True or d.get('policy_sections') != 4: sys.exit('expected ok and 4 sections: %r' % d)
g = d['grant']
want = dict(uid=1000, gid=100, sections=['default', 'gid 100', 'uid 1000'], admin=False,
            devices=['$BDF_A', '$BDF_B'], p2p=True, p2p_cross_client=False)
for k, v in want.items():
    if g.get(k) != v: sys.exit('grant: expected %s=%r, got %r' % (k, v, g.get(k)))
if g['limits'].get('contexts') != 4 or g['limits'].get('pinned_bytes') != 8 << 30:
    sys.exit('grant: expected 4 contexts and 8 GiB pinned, got %r' % g['limits'])
"
json || fail "policy check --json --uid 1000 --gid 100: $PY_MSG"
ctl_raw policy check "$POL" --uid 1001 --gid 5
expect_rc 0 "policy check --uid 1001 --gid 5"
grep -Eq '^  admin: +yes$' "$TMP/out" || fail "policy check: uid 1001 is admin by its drop-in"
grep -Eq '^  devices: +0000:01:00\.0$' "$TMP/out" || fail "policy check: uid 1001 gets [devices] allow"
grep -Eq '^  pinned bytes: +no limit$' "$TMP/out" || fail "policy check: uid 1001 has no pinned limit"
# [p2p] type1 unset: the default for this host (refuse with SME active, else warn), said as such
if grep -qw sme <(grep -m1 '^flags' /proc/cpuinfo); then HOST_T1=refuse; else HOST_T1=warn; fi
grep -Eq "^  p2p through type1: +$HOST_T1 \(the default; this host: host memory encryption is " "$TMP/out" ||
	fail "policy check: expected '  p2p through type1:    $HOST_T1 (the default; this host: ...)'"
printf '[p2p]\ntype1 = refuse\n' >"$POL.d/20-p2p.conf"
ctl_raw --json policy check "$POL" --uid 1001 --gid 5
python3 -c 'import json,sys; g=json.load(open(sys.argv[1]))["grant"]; sys.exit(0 if g.get("p2p_type1") == "refuse" else "p2p_type1: %r" % g.get("p2p_type1"))' "$TMP/out" ||
	fail "policy check --json: expected p2p_type1 refuse with [p2p] type1 = refuse"
rm "$POL.d/20-p2p.conf"
pass "policy check: a good file with a drop-in, and what uid 1000 / 1001 would get"

# A grant the shipped unit cannot honour is valid, with a warning.
FDP=$TMP/fds.conf
printf '[uid 7]\nfds = 100000\n[uid 8]\nfds = 0\n' >"$FDP"
ctl_raw policy check "$FDP"
expect_rc 0 "policy check of a file with large fds grants"
grep -q "^$FDP: warning: \[uid 7\] fds = 100000 exceeds the broker's fd budget" "$TMP/err" ||
	fail "policy check: expected a warning about [uid 7] fds = 100000"
grep -q "^$FDP: warning: \[uid 8\] fds = 0: no per-uid limit" "$TMP/err" ||
	fail "policy check: expected a warning about [uid 8] fds = 0"
ctl_raw policy check "$POL"
[ -s "$TMP/err" ] && fail "policy check of the defaults: expected no warning, got: $(cat "$TMP/err")"
pass "policy check warns about fds grants the shipped unit cannot honour, not about the defaults"

BAD=$TMP/bad.conf
printf '[default]\ncontexts = 4\n\n[uid 7]\np2p = maybe\n' >"$BAD"
ctl_raw --json policy check "$BAD"
expect_rc 1 "policy check of a bad file"
[ "$(cat "$TMP/err")" = "$BAD:5: p2p must be yes or no" ] ||
	fail "policy check of a bad file: expected exactly '$BAD:5: p2p must be yes or no' on stderr"
[ -s "$TMP/out" ] && fail "policy check of a bad file: expected nothing on stdout"
printf '[uid 1]\n\nfrob = 1\n' >"$POL.d/20-bad.conf"
ctl_raw policy check "$POL"
expect_rc 1 "policy check with a bad drop-in"
[ "$(cat "$TMP/err")" = "$POL.d/20-bad.conf:3: unknown key 'frob' in [uid 1]" ] ||
	fail "policy check with a bad drop-in: expected the drop-in's file:line on stderr"
rm "$POL.d/20-bad.conf"
ctl_raw policy check "$TMP/missing.conf"
expect_rc 1 "policy check of a missing file"
expect_err "^$TMP/missing.conf: cannot open: " "policy check of a missing file"
pass "policy check: a bad file, a bad drop-in and a missing file exit 1 with file:line"

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
            mapped_bytes=$SIZE_MIB * $MiB, devices=0, noiommu=False)
for k, v in want.items():
    if c.get(k) != v: sys.exit('context %s: expected %s=%r, got %r' % (c['id'], k, v, c.get(k)))
if d.get('all') is not True: sys.exit('expected all=true')
"
json || fail "list contexts --json: $PY_MSG"

ctl list contexts
expect_rc 0 "list contexts (table)"
head -n1 "$TMP/out" | grep -Eq '^ *ID +NAME +UID +PID +SESSION +REGIONS +MAPPINGS +MAPPED +DEVICES +ISOLATION$' ||
	fail "list contexts: expected the header 'ID NAME UID PID SESSION REGIONS MAPPINGS MAPPED DEVICES ISOLATION'"
grep -Eq "^ *$CTX +vmm-example +$ME +$EX_PID +[0-9]+ +1 +2 +64\.0 MiB +0 +iommu\$" "$TMP/out" ||
	fail "list contexts: expected the row '$CTX vmm-example $ME $EX_PID <session> 1 2 64.0 MiB 0 iommu'"
# Right-aligned last column: an aligned table has lines of one length (the table
# ends at the blank line before the count line).
[ "$(awk '!NF { exit } { print length($0) }' "$TMP/out" | sort -u | wc -l)" -eq 1 ] ||
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
head -n1 "$TMP/out" | grep -Eq '^IOVA +LENGTH +REGION +OFFSET +PROT +PAGE$' ||
	fail "list mappings: expected the header 'IOVA LENGTH REGION OFFSET PROT PAGE'"
grep -Eq '^0x0000000000000000-0x00000000001fffff +2\.0 MiB +[0-9]+ +0x0 +rw +4\.0 KiB$' "$TMP/out" ||
	fail "list mappings: expected the row '0x0000000000000000-0x00000000001fffff 2.0 MiB <region> 0x0 rw'"
grep -Eq '^0x0000000040000000-0x0000000043dfffff +62\.0 MiB +[0-9]+ +0x200000 +rw +4\.0 KiB$' "$TMP/out" ||
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

ctl --json list clients
expect_rc 0 "list clients --json"
JSON_CODE="
c = [c for c in d['clients'] if c['pid'] == $EX_PID]
if len(c) != 1: sys.exit('expected one client with pid $EX_PID, got %r' % d['clients'])
c = c[0]
want = dict(name='dmabroker-example', uid=$ME, admin=True, contexts=1, mappings=2,
            pinned_bytes=$SIZE_MIB * $MiB, devices=0)
for k, v in want.items():
    if c.get(k) != v: sys.exit('client: expected %s=%r, got %r' % (k, v, c.get(k)))
for k in ('session', 'gid', 'requests', 'connected_ms'):
    if not isinstance(c.get(k), int): sys.exit('client: expected integer %s: %r' % (k, c))
me = [c for c in d['clients'] if c['name'] == 'dmabrokerctl']
if len(me) != 1 or me[0]['contexts'] != 0: sys.exit('expected the CLI itself, no contexts: %r' % me)
"
json || fail "list clients --json: $PY_MSG"
ctl list clients
expect_rc 0 "list clients (table)"
head -n1 "$TMP/out" | grep -Eq '^ *SESSION +NAME +UID +GID +PID +ADMIN +CONTEXTS +MAPPINGS +PINNED +DEVICES +REQUESTS +CONNECTED$' ||
	fail "list clients: expected the header 'SESSION NAME UID GID PID ADMIN CONTEXTS MAPPINGS PINNED DEVICES REQUESTS CONNECTED'"
grep -Eq "^ *[0-9]+ +dmabroker-example +$ME +[0-9]+ +$EX_PID +yes +1 +2 +64\.0 MiB +0 +[0-9]+ +[0-9.]+[a-z]+ *\$" "$TMP/out" ||
	fail "list clients: expected the example's row '<session> dmabroker-example $ME <gid> $EX_PID yes 1 2 64.0 MiB 0 <requests> <connected>'"
pass "list clients shows the example's session with its usage"

ctl list mappings 999999
expect_rc 1 "list mappings of a context that does not exist"
expect_err '^dmabrokerctl: not-found: ' "list mappings of a context that does not exist"
ctl --json iova-ranges "$CTX"
expect_rc 1 "iova-ranges of another session's context"
expect_err '^dmabrokerctl: not-found: ' "iova-ranges of another session's context"
[ -s "$TMP/out" ] && fail "a refused --json request: expected nothing on stdout"
pass "refusals exit 1 with 'dmabrokerctl: <code>: <message>'"

# Checks done: the example stops when told to, tearing its mappings down.
kill -0 "$EX_PID" 2>/dev/null || fail "the example ended before the checks were done (see $TMP/example.log)"
kill -TERM "$EX_PID"
wait "$EX_PID"
EX_RC=$?
[ "$EX_RC" -eq 0 ] || fail "the example: expected exit code 0 after SIGTERM, got $EX_RC"
grep -q '^DMA check: ok' "$TMP/example.log" || fail "the example: expected 'DMA check: ok' in its output"
grep -q '^stopping early' "$TMP/example.log" || fail "the example: expected 'stopping early' after SIGTERM"
pass "the example exited 0 after proving its mappings with sim DMA"

# A hold ends by itself (it runs in the foreground: nothing else waits on it).
"$EXAMPLE" --socket "$SOCK" --hold 1 --size 4 >"$TMP/example-short.log" 2>&1
EX_RC=$?
[ "$EX_RC" -eq 0 ] || fail "the example with --hold 1: expected exit code 0, got $EX_RC"
grep -q '^holding the session for 1 s' "$TMP/example-short.log" || fail "the example with --hold 1: expected it to hold"
grep -q '^stopping early' "$TMP/example-short.log" && fail "the example with --hold 1: expected it to end by itself"
pass "the example's hold ends by itself"

ctl --json list contexts --all
expect_rc 0 "list contexts after the example"
JSON_CODE="
if any(c['id'] == $CTX for c in d['contexts']): sys.exit('expected context $CTX to be gone')
"
json || fail "list contexts after the example: $PY_MSG"
pass "the example's context is gone with its session"

# ------------------------------------------------------------ P2P: list devices, revocation

p2p_start "$SOCK"
pass "p2p-setup: context $P2P_CTX, device A $P2P_A, device B $P2P_B (B's BAR0 mapped)"
IMP_RANGE='0x0000000040000000-0x000000004000ffff'

# check_devices MEMORY_B REVOKED REVOCATIONS RESTORATIONS: the JSON listing
check_devices() {
	ctl --json list devices
	expect_rc 0 "list devices --json"
	JSON_CODE="
if d.get('all') is not True: sys.exit('expected all=true for an admin')
devs = {x['id']: x for x in d['devices']}
if set(devs) != {$P2P_A, $P2P_B}: sys.exit('expected devices $P2P_A and $P2P_B, got %r' % sorted(devs))
a, b = devs[$P2P_A], devs[$P2P_B]
for x, bdf in ((a, '$BDF_A'), (b, '$BDF_B')):
    want = dict(bdf=bdf, context=$P2P_CTX, owner_uid=$ME, in_reset=False)
    for k, v in want.items():
        if x.get(k) != v: sys.exit('device %s: expected %s=%r, got %r' % (x['id'], k, v, x.get(k)))
if not (a['memory'] and a['bus_master'] and a['command'] == 6): sys.exit('A: expected mem+ bm+ (6): %r' % a)
if a['importers'] != []: sys.exit('A: expected no importers, got %r' % a['importers'])
if b['memory'] != $1 or b['bus_master'] or b['command'] != (2 if $1 else 0):
    sys.exit('B: expected memory=%s bus_master=False: %r' % ($1, b))
if (b['revocations'], b['restorations']) != ($3, $4):
    sys.exit('B: expected %d revocations, %d restorations, got %r' % ($3, $4, (b['revocations'], b['restorations'])))
want = [dict(context=$P2P_CTX, owner_uid=$ME, iova=1 << 30, last=(1 << 30) + 0xffff, length=0x10000,
             bar=0, offset=0x10000, revoked=$2, attr='mmio')]
if b['importers'] != want: sys.exit('B: expected importers %r, got %r' % (want, b['importers']))
"
	json || fail "list devices --json: $PY_MSG"
}

# check_devices_table STATE_B CMD_B: the table, B's importer on the line under B
check_devices_table() {
	ctl list devices
	expect_rc 0 "list devices (table)"
	head -n1 "$TMP/out" | grep -Eq '^ *ID +BDF +PCI-ID +GROUP +CONTEXT +UID +COMMAND +RESET +REVOCATIONS +RESTORATIONS$' ||
		fail "list devices: expected the header 'ID BDF PCI-ID GROUP CONTEXT UID COMMAND RESET REVOCATIONS RESTORATIONS'"
	grep -Eq "^ *$P2P_A +$BDF_A +1234:11e8 +[^ ]+ +$P2P_CTX +$ME +0x0006 mem\+ bm\+ +- +0 +0\$" "$TMP/out" ||
		fail "list devices: expected A's row '$P2P_A $BDF_A 1234:11e8 <group> $P2P_CTX $ME 0x0006 mem+ bm+ - 0 0'"
	grep -A1 -E "^ *$P2P_B +$BDF_B " "$TMP/out" | tail -n1 |
		grep -Eq "^    importer +context $P2P_CTX +uid $ME +$IMP_RANGE +64\.0 KiB +bar0\+0x10000 +$1\$" ||
		fail "list devices: expected under B's row '    importer  context $P2P_CTX  uid $ME  $IMP_RANGE  64.0 KiB  bar0+0x10000  $1'"
	grep -Eq "^ *$P2P_B +$BDF_B .* $2 +- " "$TMP/out" || fail "list devices: expected B's command '$2'"
	grep -q "^2 devices, 1 P2P importer ($3 revoked)\$" "$TMP/out" ||
		fail "list devices: expected the footer '2 devices, 1 P2P importer ($3 revoked)'"
}

# check_mappings STATE REVOKED: the P2P mapping in list mappings, JSON and table
check_mappings() {
	ctl --json list mappings "$P2P_CTX"
	expect_rc 0 "list mappings --json of the P2P context"
	JSON_CODE="
m = d['mappings']
if len(m) != 2: sys.exit('expected 2 mappings (RAM and P2P), got %r' % m)
ram, p2p = m
if ram['mmio'] or ram['revoked'] or ram['region'] == 0 or (ram['iova'], ram['length']) != (0, 2 << 20) or ram['attr'] != 'cacheable':
    sys.exit('expected 2 MiB of RAM at IOVA 0: %r' % ram)
want = dict(iova=1 << 30, length=0x10000, region=0, offset=0x10000, prot='rw', mmio=True,
            peer_device=$P2P_B, bar=0, revoked=$2, attr='mmio')
for k, v in want.items():
    if p2p.get(k) != v: sys.exit('P2P mapping: expected %s=%r, got %r' % (k, v, p2p.get(k)))
"
	json || fail "list mappings --json of the P2P context: $PY_MSG"
	ctl list mappings "$P2P_CTX"
	expect_rc 0 "list mappings of the P2P context"
	head -n1 "$TMP/out" | grep -Eq '^IOVA +LENGTH +REGION +OFFSET +PROT +PAGE +P2P$' ||
		fail "list mappings: expected the header 'IOVA LENGTH REGION OFFSET PROT P2P'"
	grep -Eq "^0x0000000000000000-0x00000000001fffff +2\.0 MiB +[0-9]+ +0x0 +rw +4\.0 KiB +-\$" "$TMP/out" ||
		fail "list mappings: expected the RAM row with P2P '-'"
	grep -Eq "^$IMP_RANGE +64\.0 KiB +bar0@dev$P2P_B +0x10000 +rw +4\.0 KiB +$1\$" "$TMP/out" ||
		fail "list mappings: expected the row '$IMP_RANGE 64.0 KiB bar0@dev$P2P_B 0x10000 rw $1'"
	grep -q "^2 mappings, 2\.1 MiB (1 P2P, $3 revoked)\$" "$TMP/out" ||
		fail "list mappings: expected the footer '2 mappings, 2.1 MiB (1 P2P, $3 revoked)'"
}

check_devices True False 0 0
check_devices_table 'live mmio' '0x0002 mem\+ bm-' 0
check_mappings 'live mmio' False 0
pass "list devices / list mappings show B's BAR0 imported by context $P2P_CTX, live"

ctl --json status
JSON_CODE="
t = d['totals']
if t.get('p2p_mappings') != 1 or t.get('devices') != 2: sys.exit('expected 1 P2P mapping, 2 devices: %r' % t)
if not isinstance(t.get('revocations'), int) or not isinstance(t.get('restorations'), int):
    sys.exit('expected integer revocations and restorations: %r' % t)
"
json || fail "status --json with a P2P mapping: $PY_MSG"
REV0=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["revocations"])' "$TMP/out")
RES0=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["restorations"])' "$TMP/out")

p2p_cmd revoke
[ "$P2P_REPLY" = "ok memory=0 importers=1 revoked=1 revocations=1 restorations=0" ] ||
	fail "p2p-setup revoke: expected 'ok memory=0 importers=1 revoked=1 revocations=1 restorations=0', got '$P2P_REPLY'"
check_devices False True 1 0
check_devices_table 'revoked mmio' '0x0000 mem- bm-' 1
check_mappings 'revoked mmio' True 1
ctl status
expect_rc 0 "status after the revocation"
grep -Eq '^P2P: +1 mapping ' "$TMP/out" || fail "status: expected 'P2P: 1 mapping ...'"
grep -Eq "^Revoked: +$((REV0 + 1)) revocations?, $RES0 restorations? " "$TMP/out" ||
	fail "status: expected 'Revoked: $((REV0 + 1)) revocation(s), $RES0 restoration(s) ...'"
pass "memory decoding off: the importer and the mapping show revoked, status counts it"

p2p_cmd restore
[ "$P2P_REPLY" = "ok memory=1 importers=1 revoked=0 revocations=1 restorations=1" ] ||
	fail "p2p-setup restore: expected 'ok memory=1 importers=1 revoked=0 revocations=1 restorations=1', got '$P2P_REPLY'"
check_devices True False 1 1
check_devices_table 'live mmio' '0x0002 mem\+ bm-' 0
check_mappings 'live mmio' False 0
ctl --json status
JSON_CODE="
t = d['totals']
if (t['revocations'], t['restorations']) != ($REV0 + 1, $RES0 + 1):
    sys.exit('expected %d revocations, %d restorations, got %r' % ($REV0 + 1, $RES0 + 1, t))
"
json || fail "status --json after the restoration: $PY_MSG"
pass "memory decoding back on: live again, 1 revocation and 1 restoration counted"

p2p_stop
ctl --json list devices
expect_rc 0 "list devices after p2p-setup"
JSON_CODE='
if d["devices"] != []: sys.exit("expected no devices, got %r" % d["devices"])
'
json || fail "list devices after p2p-setup: $PY_MSG"
ctl list devices
grep -q '^0 devices, 0 P2P importers (0 revoked)$' "$TMP/out" || fail "list devices: expected the footer '0 devices, ...'"
pass "p2p-setup's devices are gone with its session"

# ------------------------------------------------------------ revoke, reload

"$EXAMPLE" --socket "$SOCK" --hold 60 --size 4 >"$TMP/example2.log" 2>&1 &
EX2_PID=$!
PIDS+=("$EX2_PID")
CTX2=
for ((n = 0; n < 100; n++)); do
	kill -0 "$EX2_PID" 2>/dev/null || break
	ctl --json list contexts --all
	if [ "$RC" -eq 0 ]; then
		JSON_CODE="
for c in d['contexts']:
    if c['owner_pid'] == $EX2_PID and c['mappings'] == 2:
        print(c['id']); sys.exit(0)
sys.exit('not yet')
"
		CTX2=$(json) && break
		CTX2=
	fi
	sleep 0.1
done
[ -n "$CTX2" ] || fail "a second example's context did not show up within 10 s"
ctl --json revoke "$CTX2"
expect_rc 0 "revoke --json"
JSON_CODE="
want = dict(context=$CTX2, unmapped=2, unmapped_bytes=4 * $MiB, devices_closed=0, owner_uid=$ME)
for k, v in want.items():
    if d.get(k) != v: sys.exit('revoke: expected %s=%r, got %r' % (k, v, d.get(k)))
if not d.get('owner_session'): sys.exit('revoke: expected the owner session: %r' % d)
"
json || fail "revoke --json: $PY_MSG"
ctl --json list contexts --all
JSON_CODE="
if [c for c in d['contexts'] if c['id'] == $CTX2]: sys.exit('context $CTX2 is still listed')
"
json || fail "list contexts after revoke: $PY_MSG"
# The example hears CONTEXT_LOST (it prints the broker's events).
for ((n = 0; n < 100; n++)); do
	grep -q "context $CTX2 was revoked" "$TMP/example2.log" && break
	sleep 0.1
done
grep -q "context $CTX2 was revoked" "$TMP/example2.log" ||
	fail "the example did not print the CONTEXT_LOST event for context $CTX2"
kill -TERM "$EX2_PID" 2>/dev/null
wait "$EX2_PID" 2>/dev/null
ctl revoke "$CTX2"
expect_rc 1 "revoke of a context that is gone"
expect_err '^dmabrokerctl: not-found: ' "revoke of a context that is gone"
pass "revoke kills another client's context, its owner is told, a second revoke is not-found"

ctl reload
expect_rc 0 "reload"
grep -Eq '^Policy reloaded from .*/daemon\.conf: [0-9]+ policy sections?, [0-9]+ sessions? updated; mappings unchanged\.$' "$TMP/out" ||
	fail "reload: expected 'Policy reloaded from .../daemon.conf: ...'"
ctl --json reload
expect_rc 0 "reload --json"
JSON_CODE="
if not d.get('path', '').endswith('/daemon.conf'): sys.exit('reload: expected the config path: %r' % d)
if not isinstance(d.get('policy_sections'), int) or d.get('sessions', 0) < 1:
    sys.exit('reload: expected integer policy_sections and sessions >= 1: %r' % d)
"
json || fail "reload --json: $PY_MSG"
pass "reload re-reads the configuration"

# ------------------------------------------------------------ a non-admin session

SOCK2=$TMP/s2
start_daemon daemon-nonadmin "$SOCK2" "$OTHER"
p2p_start "$SOCK2"
ctl_raw --socket "$SOCK2" status
expect_rc 1 "status from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "status from a non-admin session"
ctl_raw --socket "$SOCK2" list contexts --all
expect_rc 1 "list contexts --all from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "list contexts --all from a non-admin session"
ctl_raw --socket "$SOCK2" list devices --all
expect_rc 1 "list devices --all from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "list devices --all from a non-admin session"
ctl_raw --socket "$SOCK2" --json list contexts
expect_rc 0 "list contexts from a non-admin session"
JSON_CODE='
if d != {"all": False, "contexts": []}: sys.exit("expected no contexts and all=false, got %r" % d)
'
json || fail "list contexts from a non-admin session: $PY_MSG"
ctl_raw --socket "$SOCK2" --json list devices
expect_rc 0 "list devices from a non-admin session"
JSON_CODE='
if d != {"all": False, "devices": []}: sys.exit("expected no devices and all=false, got %r" % d)
'
json || fail "list devices from a non-admin session: $PY_MSG"
expect_err 'note: not an admin session' "list devices from a non-admin session"
ctl_raw --socket "$SOCK2" --json iova-ranges "$P2P_CTX"
expect_rc 1 "iova-ranges of another session's context from a non-admin session"
expect_err '^dmabrokerctl: not-found: ' "iova-ranges of another session's context from a non-admin session"
[ -s "$TMP/out" ] && fail "a refused --json request: expected nothing on stdout"
ctl_raw --socket "$SOCK2" list mappings "$P2P_CTX"
expect_rc 1 "list mappings of another session's context from a non-admin session"
expect_err '^dmabrokerctl: not-found: ' "list mappings of another session's context from a non-admin session"
ctl_raw --socket "$SOCK2" list clients
expect_rc 1 "list clients from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "list clients from a non-admin session"
ctl_raw --socket "$SOCK2" --json revoke "$P2P_CTX"
expect_rc 1 "revoke from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "revoke from a non-admin session"
[ -s "$TMP/out" ] && fail "a refused revoke --json: expected nothing on stdout"
ctl_raw --socket "$SOCK2" reload
expect_rc 1 "reload from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "reload from a non-admin session"
p2p_stop
pass "a non-admin session is refused status, --all, list clients, revoke and reload, and sees no other session's context (exit 1)"

# ---------------------------------------------------------------- handoff
ctl_raw handoff
expect_rc 2 "'handoff' alone"
expect_err "handoff what" "'handoff' alone"
ctl_raw handoff status extra
expect_rc 2 "'handoff status' with an operand"
ctl --json handoff status
expect_rc 0 "handoff status --json"
JSON_CODE='
if d.get("state") != "normal": sys.exit("expected state normal, got %r" % d.get("state"))
if d.get("preserver") != "none": sys.exit("expected preserver none, got %r" % d.get("preserver"))
if d.get("available") is not False: sys.exit("expected available false, got %r" % d.get("available"))
if "preserver" not in d.get("message", ""): sys.exit("expected a sentence naming the preserver, got %r" % d.get("message"))
'
json || fail "handoff status --json: $PY_MSG"
ctl handoff status
expect_rc 0 "handoff status (table)"
grep -q "normal" "$TMP/out" || fail "handoff status: expected the state 'normal' on stdout"
ctl --json handoff prepare
expect_rc 1 "handoff prepare without a preserver"
expect_err '^dmabrokerctl: failed-precondition: .*nothing was changed' "handoff prepare without a preserver"
[ -s "$TMP/out" ] && fail "a refused handoff prepare --json: expected nothing on stdout"
ctl handoff abort
expect_rc 1 "handoff abort when not prepared"
expect_err '^dmabrokerctl: failed-precondition: ' "handoff abort when not prepared"
ctl --json handoff status
JSON_CODE='
if d.get("state") != "normal": sys.exit("after the refusals: expected state normal, got %r" % d.get("state"))
'
json || fail "handoff status after the refusals: $PY_MSG"
ctl_raw --socket "$SOCK2" handoff status
expect_rc 1 "handoff status from a non-admin session"
expect_err '^dmabrokerctl: permission-denied: ' "handoff status from a non-admin session"
pass "handoff status/prepare/abort: usage errors exit 2, refusals exit 1 with the sentence, --json, non-admin refused"

echo "all CLI checks passed"
