#!/bin/sh
# Guest /init of the vm-sanity test: the testbed itself (VFIO type1, intel-iommu, edu
# DMA, DMAR faults) works, without the broker. See vfio-sanity.c.
. /lib/vmtest/guest-lib.sh
vm_setup
[ "$EDU_COUNT" -ge 2 ] || vm_fail_setup "need two edu devices, found $EDU_COUNT"
check type1-ram-dma vfio-sanity ram "$EDU_A_BDF" "$EDU_A_GROUP"
check type1-p2p-dma vfio-sanity p2p "$EDU_A_BDF" "$EDU_A_GROUP" "$EDU_B_BDF" "$EDU_B_GROUP"
finish
