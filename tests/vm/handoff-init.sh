#!/bin/sh
# Guest /init of the vm7-handoff test: the host handoff across a real kexec, twice in a
# row (Linux 7.x booted with kho=on liveupdate=on, iommufd backend). One phase per boot,
# from the kernel command line's VMTEST_PHASE (1 when unset). vm-handoff does the work of
# a phase and leaves the daemon prepared and running; this script then packs the root
# file system, with vm-handoff's state in /vmtest-state, into the next initramfs and
# kexecs (kexec_file_load: LUO's data reaches the next kernel only through it) into the
# same kernel with VMTEST_PHASE one higher. Phase 3 ends the run. See vm-handoff.c.
. /lib/vmtest/guest-lib.sh
VMTEST_CHECK_TIMEOUT=300
CONF=/etc/dmabroker/vm-handoff.conf
STATE=/vmtest-state
PHASE=${VMTEST_PHASE:-1}

vm_setup
[ "$EDU_A_BDF" = 0000:01:00.0 ] && [ "$EDU_B_BDF" = 0000:02:00.0 ] ||
	vm_fail_setup "edus at $EDU_A_BDF/$EDU_B_BDF, but $CONF allows 0000:01:00.0 0000:02:00.0"
[ -c /dev/liveupdate ] || vm_fail_setup "no /dev/liveupdate (command line: $(cat /proc/cmdline))"
vm_log "phase $PHASE: kernel $(uname -r), command line: $(cat /proc/cmdline)"
# The hugetlb memfd of the refusal check (phase 1).
echo 4 >/proc/sys/vm/nr_hugepages
mkdir -p /run/dmabroker "$STATE"
rm -f "$STATE/ready"

vm-handoff "phase$PHASE" /usr/sbin/dmabrokerd "$CONF" "$STATE" "$EDU_A_BDF" "$EDU_B_BDF" &
HPID=$!
# Until the phase is ready for the kexec (state/ready) or vm-handoff ends (phase 3, or a
# failure). Bounded by VMTEST_CHECK_TIMEOUT.
i=0
while [ ! -e "$STATE/ready" ] && kill -0 "$HPID" 2>/dev/null; do
	i=$((i + 1))
	[ $i -le $((VMTEST_CHECK_TIMEOUT * 10)) ] || { kill -KILL "$HPID"; break; }
	sleep 0.1
done
if [ ! -e "$STATE/ready" ]; then
	wait "$HPID"
	rc=$?
	if [ "$PHASE" = 3 ] && [ $rc -eq 0 ]; then
		VMTEST_PASSED=$((VMTEST_PASSED + 1))
		echo "VMTEST PASS handoff-phase3"
	else
		VMTEST_FAILED=$((VMTEST_FAILED + 1))
		echo "VMTEST FAIL handoff-phase$PHASE (exit $rc)"
	fi
	finish
fi
echo "VMTEST PASS handoff-phase$PHASE"
# This kernel's log goes with the kexec: judge it now.
step "kernel-health-phase$PHASE" kernel_health
[ "$VMTEST_FAILED" -eq 0 ] || finish

# The next initramfs: this root file system as it is now (the state included).
cd / || vm_fail_setup "cd /"
find . -xdev | cpio -o -H newc 2>/dev/null | gzip -1 >/tmp/next.cpio.gz ||
	vm_fail_setup "packing the next initramfs failed"
NEXT=$((PHASE + 1))
CMDLINE="$(sed 's/ *VMTEST_PHASE=[0-9]*//' /proc/cmdline) VMTEST_PHASE=$NEXT"
vm_log "kexec -s into phase $NEXT ($(wc -c </tmp/next.cpio.gz) bytes of initramfs)"
kexec -s -l /boot/vmlinuz --initrd=/tmp/next.cpio.gz --command-line="$CMDLINE" ||
	vm_fail_setup "kexec -s -l failed"
sync
kexec -e
vm_fail_setup "kexec -e returned"
