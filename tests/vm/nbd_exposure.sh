#!/bin/bash
# Scenario vm_nbd_exposure (issue 20, docs/exposures.md): the userspace clone served as
# /dev/nbdN by a holder process (`meshdrain clone hold`, the agent's own entry point,
# with a spec file as the agent writes it and `expose = "nbd"`), from our iSCSI target
# (`meshdrain export serve`), through Debian's nbd as shipped. The source is an ext4
# volume holding files; while the clone hydrates (rate-limited), the workload mounts the
# clone through the holder's symlink, reads the source's files (on-demand fetches) and
# writes new ones with fsync. Mid-I/O the holder is killed with SIGKILL; a new holder
# from the same spec reconfigures the same /dev/nbdN with a new socket (the index is in
# its state file) within the dead-connection timeout, and the workload carries on
# without an I/O error. Then hydration completes, every checksum is equal, the dest's
# ext4 is fsck clean. Also: the 4 KiB on-demand read latency through nbd vs FUSE + loop.
# Env: VM_VOL_MIB (default 32), VM_RATE (hydration limit in bytes/s, default 1048576),
# MESHDRAIN_BIN.
. "$(dirname "$0")/lib.sh"
MIB=${VM_VOL_MIB:-32}
RATE=${VM_RATE:-1048576}
IQN=iqn.2026-11.invalid.meshdrain:vm-nbd
PORTAL=127.0.0.1:3260
holder_scenario /tmp/nbd

step "modules: nbd (as Debian ships it), loop, fuse"
modprobe nbd
modprobe loop
modprobe fuse 2>/dev/null || true
modprobe ext4
[ -d /sys/module/nbd ] || fail "no /sys/module/nbd after modprobe nbd"
ip link set lo up

source_target_holder nbd "/dev/nbd*" iqn.2026-11.invalid.meshdrain:vm-holder
IDX=$(state_field nbd_index)
echo "holder $h1 serves $DEV (index $IDX, exposure nbd)"

step "latency: 4 KiB on-demand reads of unhydrated regions through $DEV (O_DIRECT)"
# Regions never read yet (hydration not started): each read is an on-demand fetch.
echo "LATENCY nbd $(lat $DEV $((20 << 20)))"

mount_and_work

kill_holder $h1
holder_takes_over reconfigures
hydrated_then_stop 20
[ "$(cat /sys/block/nbd$IDX/size)" = 0 ] || fail "nbd$IDX still configured after stop"
dest_equal_and_clean
echo "NBD restart: killed at w$before, $DEV served again by a new holder, checksums equal, fsck clean"

step "latency: the same reads through FUSE + loop (clone run --expose, a fresh clone)"
rm -f $W/dest2.img $W/dest2.meta
MESHDRAIN_LOG=warn NO_COLOR=1 "$MESHDRAIN_BIN" clone run --backend userspace --source "iscsi://$PORTAL/$IQN/1" \
  --dest $W/dest2.img --metadata $W/dest2.meta --rate-limit 1K --expose $W/fl --hold --json >/dev/null 2>$W/fl.err &
fl=$!
pids+=($fl)
linked() { test -b "$(readlink $W/fl 2>/dev/null)"; }
wait_for 30 linked || fail "clone run --expose did not expose: $(tail -n 3 $W/fl.err)"
echo "LATENCY fuse-loop $(lat "$(readlink $W/fl)" $((20 << 20)))"
kill -TERM $fl
wait $fl 2>/dev/null || true
step "ok"
