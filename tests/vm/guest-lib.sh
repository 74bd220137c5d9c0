# guest-lib.sh - sourced by the /init scripts of the VM test tier (busybox ash).
#
# mkinitramfs.sh installs this file as /lib/vmtest/guest-lib.sh, the VFIO modules in
# /lib/modules/vmtest/ (load order in ORDER). A guest /init looks like:
#
#   #!/bin/sh
#   . /lib/vmtest/guest-lib.sh
#   vm_setup                      # mounts, modules, edus -> vfio-pci, EDU_* variables
#   check ram-roundtrip vfio-sanity ram "$EDU_A_BDF" "$EDU_A_GROUP"
#   finish                        # final marker + poweroff
#
# Output contract with run-vm.sh on the host (one line each, on the serial console):
#   VMTEST PASS <name>  /  VMTEST FAIL <name>     per check
#   VMTEST DONE pass=<n> fail=<n>                 last line; the run is void without it

export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
VMTEST_PASSED=0
VMTEST_FAILED=0
# Per-check time limit (seconds); the host's timeout still bounds the whole run.
: "${VMTEST_CHECK_TIMEOUT:=120}"

vm_log() { echo "vmtest: $*"; }

# check NAME CMD [ARG...]: runs CMD (bounded by VMTEST_CHECK_TIMEOUT) and reports it.
check() {
	_name=$1
	shift
	if timeout "$VMTEST_CHECK_TIMEOUT" "$@"; then
		VMTEST_PASSED=$((VMTEST_PASSED + 1))
		echo "VMTEST PASS $_name"
	else
		_rc=$?
		VMTEST_FAILED=$((VMTEST_FAILED + 1))
		echo "VMTEST FAIL $_name (exit $_rc)"
	fi
}

# kernel_health: fails when the kernel log holds a WARN, BUG, oops, lockup or hung
# task (the console under "quiet" shows only errors; a WARN is a warning).
kernel_health() {
	_kb=$(dmesg 2>/dev/null | grep -E '(WARNING|BUG): |Oops|soft lockup|blocked for more than|Call Trace:|cut here')
	[ -z "$_kb" ] && return 0
	echo "vmtest: the kernel complained:"
	dmesg | tail -n 60
	return 1
}

# step NAME FUNCTION [ARG...]: a check made of shell code, reported like check's
# (check's timeout(1) cannot run a shell function: every wait inside must be bounded).
step() {
	_sn=$1
	shift
	if "$@"; then
		VMTEST_PASSED=$((VMTEST_PASSED + 1))
		echo "VMTEST PASS $_sn"
	else
		VMTEST_FAILED=$((VMTEST_FAILED + 1))
		echo "VMTEST FAIL $_sn"
	fi
}

# finish: checks the kernel's health, prints the final marker and powers the VM off.
# Never returns.
finish() {
	step kernel-health kernel_health
	echo "VMTEST DONE pass=$VMTEST_PASSED fail=$VMTEST_FAILED"
	sync
	poweroff -f
	sleep 10 # poweroff -f does not return; if it ever does, /init exiting panics.
	exit 1
}

# vm_fail_setup MSG: a setup step failed; report it as a failed check and stop.
vm_fail_setup() {
	echo "vmtest: setup: $*"
	VMTEST_FAILED=$((VMTEST_FAILED + 1))
	echo "VMTEST FAIL vm-setup"
	finish
}

vm_mount() {
	mkdir -p /proc /sys /dev /tmp /run
	mount -t proc proc /proc || return 1
	mount -t sysfs sysfs /sys || return 1
	mount -t devtmpfs devtmpfs /dev || return 1
	mount -t tmpfs -o mode=1777 tmpfs /tmp || return 1
	mount -t tmpfs -o mode=0755 tmpfs /run || return 1
	mkdir -p /dev/pts /dev/shm
	mount -t devpts devpts /dev/pts 2>/dev/null
	mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null
	return 0
}

vm_load_modules() {
	[ -f /lib/modules/vmtest/ORDER ] || { echo "no /lib/modules/vmtest/ORDER"; return 1; }
	while read -r _m; do
		[ -n "$_m" ] || continue
		insmod "/lib/modules/vmtest/$_m" || { echo "insmod $_m failed"; return 1; }
	done </lib/modules/vmtest/ORDER
}

# _wait_for TEST-ARGS...: polls a test(1) condition for up to ~5 s.
_wait_for() {
	_i=0
	while ! test "$@"; do
		_i=$((_i + 1))
		[ $_i -le 100 ] || return 1
		sleep 0.05
	done
}

# Binds every edu (1234:11e8) to vfio-pci and exports, in BDF order:
#   EDU_A_BDF EDU_A_GROUP EDU_B_BDF EDU_B_GROUP   and   EDU_COUNT
# With VMTEST_NOIOMMU=1 (a machine without an IOMMU, booted with
# vfio.enable_unsafe_noiommu_mode=1) the group nodes are /dev/vfio/noiommu-N.
vm_bind_edus() {
	EDU_COUNT=0
	for _d in /sys/bus/pci/devices/*; do
		[ "$(cat "$_d/vendor")" = 0x1234 ] && [ "$(cat "$_d/device")" = 0x11e8 ] || continue
		_bdf=${_d##*/}
		echo vfio-pci >"$_d/driver_override" || return 1
		echo "$_bdf" >/sys/bus/pci/drivers_probe 2>/dev/null
		_wait_for -e "$_d/driver" || { echo "$_bdf: not bound"; return 1; }
		_drv=$(readlink "$_d/driver")
		[ "${_drv##*/}" = vfio-pci ] || { echo "$_bdf: bound to ${_drv##*/}"; return 1; }
		_grp=$(readlink "$_d/iommu_group") || { echo "$_bdf: no IOMMU group"; return 1; }
		_grp=${_grp##*/}
		_node=/dev/vfio/$_grp
		[ "${VMTEST_NOIOMMU:-0}" != 1 ] || _node=/dev/vfio/noiommu-$_grp
		_wait_for -c "$_node" || { echo "$_node missing"; return 1; }
		case $EDU_COUNT in
		0) EDU_A_BDF=$_bdf EDU_A_GROUP=$_grp ;;
		1) EDU_B_BDF=$_bdf EDU_B_GROUP=$_grp ;;
		esac
		EDU_COUNT=$((EDU_COUNT + 1))
	done
	export EDU_COUNT EDU_A_BDF EDU_A_GROUP EDU_B_BDF EDU_B_GROUP
	[ "$EDU_COUNT" -ge 1 ] || { echo "no edu device found"; return 1; }
}

# vm_setup: everything a VFIO test needs. Any failure ends the run with a FAIL line.
vm_setup() {
	vm_mount || vm_fail_setup "mounting proc/sys/dev/tmp failed"
	vm_load_modules || vm_fail_setup "loading the VFIO modules failed"
	vm_bind_edus || vm_fail_setup "binding edu devices to vfio-pci failed"
	vm_log "kernel $(uname -r), $EDU_COUNT edu: A=$EDU_A_BDF group $EDU_A_GROUP" \
		"B=${EDU_B_BDF:-none} group ${EDU_B_GROUP:-none}"
}
