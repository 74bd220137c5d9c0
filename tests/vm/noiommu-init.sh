#!/bin/sh
# Guest /init of vm7-noiommu: a machine without an IOMMU (run-vm.sh -N) booted with
# vfio.enable_unsafe_noiommu_mode=1, where Linux 7.3 gives each edu bound to vfio-pci
# the cdev /dev/vfio/devices/noiommu-vfioN and taints itself. The real dmabrokerd
# (--backend=auto, which must pick iommufd) serves broker-client's noiommu scenario:
# a no-IOMMU context whose physical ranges edu DMAs through. See broker-client.c.
# Then vm-restart --noiommu: that context across SIGTERM and SIGKILL restarts.
. /lib/vmtest/guest-lib.sh
VMTEST_CHECK_TIMEOUT=60
export VMTEST_NOIOMMU=1
export VMTEST_WANT_BACKEND=iommufd
CONF=/etc/dmabroker/vm-noiommu.conf
SOCK=/run/dmabroker/dmabroker.sock
DLOG=/tmp/dmabrokerd.log

vm_setup
[ "$EDU_A_BDF" = 0000:01:00.0 ] || vm_fail_setup "edu A at $EDU_A_BDF, but $CONF allows 0000:01:00.0"

dump_log() {
	echo "---- $DLOG ----"
	cat "$DLOG"
	echo "---- end of $DLOG ----"
}

# The machine really has no IOMMU, the kernel gave the edu a no-IOMMU cdev, and it
# says it is tainted for it (flag U: TAINT_USER, bit 6).
no_iommu_machine() {
	_d=/sys/bus/pci/devices/$EDU_A_BDF
	[ ! -e /sys/class/iommu/dmar0 ] || { echo "an IOMMU is present"; return 1; }
	_cdev=$(ls "$_d/vfio-dev" 2>/dev/null)
	case $_cdev in
	noiommu-vfio[0-9]*) ;;
	*) echo "$EDU_A_BDF has vfio-dev/'$_cdev', not noiommu-vfioN"; return 1 ;;
	esac
	[ -c "/dev/vfio/devices/$_cdev" ] || { echo "/dev/vfio/devices/$_cdev missing"; return 1; }
	_t=$(cat /proc/sys/kernel/tainted)
	[ $((_t & 64)) -ne 0 ] || { echo "kernel not tainted (tainted=$_t)"; return 1; }
	vm_log "$EDU_A_BDF is /dev/vfio/devices/$_cdev; kernel tainted=$_t"
}
step noiommu-machine no_iommu_machine

alive() {
	_s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	_s=${_s#*) }
	[ "${_s%% *}" != Z ]
}

mkdir -p /run/dmabroker
rm -f "$SOCK"
dmabrokerd --config="$CONF" --backend=auto </dev/null >"$DLOG" 2>&1 &
DPID=$!
i=0
while [ ! -S "$SOCK" ]; do
	alive "$DPID" || { dump_log; vm_fail_setup "dmabrokerd exited before listening"; }
	i=$((i + 1))
	[ $i -le 600 ] || { dump_log; vm_fail_setup "no $SOCK 30 s after starting dmabrokerd"; }
	sleep 0.05
done
vm_log "dmabrokerd --backend=auto pid $DPID listening on $SOCK"

# The daemon kept CAP_SYS_RAWIO (the policy grants no-IOMMU contexts) and nothing else
# but CAP_IPC_LOCK; it logged that it picked iommufd.
daemon_caps() {
	_eff=$(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$DPID/status")
	# CAP_IPC_LOCK (14) | CAP_SYS_RAWIO (17)
	[ "$_eff" = 0000000000024000 ] || { echo "CapEff $_eff, want 0000000000024000"; return 1; }
	grep -q "kept CAP_SYS_RAWIO" "$DLOG" || { echo "no 'kept CAP_SYS_RAWIO' in the log"; return 1; }
}
step noiommu-daemon-caps daemon_caps

check noiommu-broker broker-client noiommu "$SOCK" "$EDU_A_BDF"

# The creation was logged as giving no isolation.
step noiommu-logged grep -q "gives NO isolation" "$DLOG"

stop_daemon() {
	kill -TERM "$DPID"
	i=0
	while alive "$DPID"; do
		i=$((i + 1))
		[ $i -le 600 ] || { echo "still running 30 s after SIGTERM"; kill -KILL "$DPID"; return 1; }
		sleep 0.05
	done
	wait "$DPID"
}
step noiommu-shutdown stop_daemon

# The same kind of context across restarts under a systemd stand-in (the fd store):
# SIGTERM and SIGKILL, the context adopted with its pages still pinned at the same
# physical addresses, edu moving bytes through them each time. See vm-restart.c.
check noiommu-restart vm-restart --noiommu /usr/sbin/dmabrokerd "$CONF" "$EDU_A_BDF"

[ "$VMTEST_FAILED" -eq 0 ] || dump_log
finish
