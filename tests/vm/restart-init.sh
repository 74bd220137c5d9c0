#!/bin/sh
# Guest /init of the vm-restart test (issue 5, VM tier): vm-restart plays systemd's
# fd store for the real dmabrokerd (--backend=vfio-type1) and restarts it, SIGTERM and
# SIGKILL in turn, while edu keeps DMAing through the broker's mappings. See vm-restart.c.
# (--backend=vfio-type1 on 6.1; iommufd or vfio-type1 on 7.x.)
# The backend comes from the kernel command line: VMTEST_BACKEND (default vfio-type1).
. /lib/vmtest/guest-lib.sh
VMTEST_CHECK_TIMEOUT=120
export VMTEST_WANT_BACKEND=${VMTEST_BACKEND:-vfio-type1}
CONF=/etc/dmabroker/vm-restart.conf
RESTARTS=6

vm_setup
# The allow-list in $CONF names edu A by BDF.
[ "$EDU_A_BDF" = 0000:01:00.0 ] ||
	vm_fail_setup "edu A at $EDU_A_BDF, but $CONF allows 0000:01:00.0"

mkdir -p /run/dmabroker
check broker-restart vm-restart /usr/sbin/dmabrokerd "$CONF" "$EDU_A_BDF" "$RESTARTS"
finish
