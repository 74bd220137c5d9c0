#!/bin/sh
# Guest /init of the vm-restart test (issue 5, VM tier): vm-restart plays systemd's
# fd store for the real dmabrokerd (--backend=vfio-type1) and restarts it, SIGTERM and
# SIGKILL in turn, while edu keeps DMAing through the broker's mappings. See vm-restart.c.
. /lib/vmtest/guest-lib.sh
VMTEST_CHECK_TIMEOUT=120
CONF=/etc/dmabroker/vm-restart.conf
RESTARTS=6

vm_setup
# The allow-list in $CONF names edu A by BDF.
[ "$EDU_A_BDF" = 0000:01:00.0 ] ||
	vm_fail_setup "edu A at $EDU_A_BDF, but $CONF allows 0000:01:00.0"

mkdir -p /run/dmabroker
check broker-restart vm-restart /usr/sbin/dmabrokerd "$CONF" "$EDU_A_BDF" "$RESTARTS"
finish
