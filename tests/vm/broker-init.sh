#!/bin/sh
# Guest /init of the vm-broker tests: the real dmabrokerd (a kernel backend, never sim)
# serves broker-client, which proves every mapping with edu DMA. See broker-client.c.
#
# The backend comes from the kernel command line (unknown NAME=VALUE words reach /init
# as environment variables): VMTEST_BACKEND (default vfio-type1) is the daemon's
# --backend. With VMTEST_AUTO=1 a first daemon started with --backend=auto must pick
# VMTEST_BACKEND by itself (broker-auto) before the checks run on the named backend.
. /lib/vmtest/guest-lib.sh
VMTEST_CHECK_TIMEOUT=30
BACKEND=${VMTEST_BACKEND:-vfio-type1}
export VMTEST_WANT_BACKEND=$BACKEND
CONF=/etc/dmabroker/vm-broker.conf
SOCK=/run/dmabroker/dmabroker.sock
DLOG=/tmp/dmabrokerd.log

vm_setup
[ "$EDU_COUNT" -ge 2 ] || vm_fail_setup "need two edu devices, found $EDU_COUNT"
# The allow-list in $CONF names the edus by BDF.
[ "$EDU_A_BDF" = 0000:01:00.0 ] && [ "$EDU_B_BDF" = 0000:02:00.0 ] ||
	vm_fail_setup "edus at $EDU_A_BDF/$EDU_B_BDF, but $CONF allows 0000:01:00.0 0000:02:00.0"

dump_log() {
	echo "---- $DLOG ----"
	cat "$DLOG"
	echo "---- end of $DLOG ----"
}

# alive PID: running and not a zombie (kill -0 succeeds on a zombie until /init waits).
alive() {
	_s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	_s=${_s#*) }
	[ "${_s%% *}" != Z ]
}

# broker_start BACKEND: dmabrokerd in the background, listening on $SOCK; sets DPID.
broker_start() {
	rm -f "$SOCK"
	dmabrokerd --config="$CONF" --backend="$1" </dev/null >"$DLOG" 2>&1 &
	DPID=$!
	i=0
	while [ ! -S "$SOCK" ]; do
		if ! alive "$DPID"; then
			wait "$DPID"
			echo "vmtest: dmabrokerd --backend=$1 exited with status $? before listening"
			dump_log
			vm_fail_setup "dmabrokerd did not start"
		fi
		i=$((i + 1))
		if [ $i -gt 600 ]; then
			dump_log
			vm_fail_setup "no $SOCK 30 s after starting dmabrokerd"
		fi
		sleep 0.05
	done
	vm_log "dmabrokerd --backend=$1 pid $DPID listening on $SOCK"
}

# broker_stop: SIGTERM, and the daemon must exit 0 (bounded; a shell function, which
# check's timeout(1) cannot run).
broker_stop() {
	alive "$DPID" || { wait "$DPID"; echo "dmabrokerd is gone (status $?)"; return 1; }
	kill -TERM "$DPID"
	i=0
	while alive "$DPID"; do
		i=$((i + 1))
		[ $i -le 600 ] || { echo "dmabrokerd still running 30 s after SIGTERM"; kill -KILL "$DPID"; return 1; }
		sleep 0.05
	done
	wait "$DPID"
	_st=$?
	[ $_st -eq 0 ] || { echo "dmabrokerd exited with status $_st"; return 1; }
}

mkdir -p /run/dmabroker
if [ "${VMTEST_AUTO:-0}" = 1 ]; then
	broker_start auto
	check broker-auto broker-client info "$SOCK" "$EDU_A_BDF"
	step broker-auto-stop broker_stop
fi
broker_start "$BACKEND"

check broker-info broker-client info "$SOCK" "$EDU_A_BDF"
check broker-ram-dma broker-client ram "$SOCK" "$EDU_A_BDF"
check broker-unmap-fault broker-client unmap "$SOCK" "$EDU_A_BDF"
check broker-client-killed broker-client kill "$SOCK" "$EDU_A_BDF"
check broker-out-of-range broker-client range "$SOCK" "$EDU_A_BDF"
check broker-device-denied broker-client deny "$SOCK" 0000:00:00.0 "$EDU_B_BDF"
# Host handoff on a kernel without LUO (6.1): prepare is refused with the sentence that
# says what is missing, and nothing changes (edu DMA, mutations, handoff status).
check broker-handoff-refused broker-client handoff "$SOCK" "$EDU_A_BDF"
# Granular mappings (confidential guests): discarded granules fault and are unpinned,
# populated ones move bytes again.
check broker-granular broker-client granular "$SOCK" "$EDU_A_BDF"
# P2P: edu A reads edu B's ID register through the broker; revocation and restoration
# around mediated and unmediated memory-disable and reset; release. The watcher's
# period comes from $CONF.
POLL_MS=$(sed -n 's/^poll_interval_ms *= *\([0-9][0-9]*\).*/\1/p' "$CONF")
check broker-p2p broker-client p2p "$SOCK" "$EDU_A_BDF" "$EDU_B_BDF" "${POLL_MS:-100}"
# What the daemon said about P2P attributes: at start-up, how this backend maps a peer
# BAR and the [p2p] type1 setting for this host (QEMU's CPU model has no SME); then,
# type1 only, the warning for the cacheable mapping broker-p2p made.
p2p_attrs_logged() {
	if [ "$BACKEND" = iommufd ]; then
		_want="maps peer BARs with MMIO attributes ([p2p] type1 = warn would apply to vfio-type1)"
	else
		_want="maps peer BARs with cacheable IOMMU attributes; [p2p] type1 = warn (the default here)"
	fi
	grep -F "P2P: host memory encryption is not active" "$DLOG" | grep -qF "$_want" ||
		{ echo "no start-up line '... $_want' in $DLOG"; return 1; }
	_n=$(grep -cF "is mapped with cacheable IOMMU attributes, not as MMIO" "$DLOG")
	_w=0
	[ "$BACKEND" = iommufd ] || _w=1
	[ "$_n" -eq "$_w" ] || { echo "$_n per-mapping cacheable warnings in $DLOG, want $_w"; return 1; }
	vm_log "the log states the $BACKEND backend's P2P attributes and the type1 policy"
}
step broker-p2p-attrs p2p_attrs_logged

# The daemon survived all of that and stops cleanly on SIGTERM.
step broker-shutdown broker_stop

[ "$VMTEST_FAILED" -eq 0 ] || dump_log
finish
