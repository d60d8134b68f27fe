#!/bin/bash
# Scenario vm_ublk_holder (issue 20, docs/exposures.md): the agent's own path to ublk: a
# holder process (`meshdrain clone hold` with a spec file as the agent writes it and
# `expose = "ublk"`) serves the clone from our iSCSI target as /dev/ublkbN behind its
# symlink, ext4 on it while it hydrates; the holder is killed with SIGKILL mid-I/O and a
# new holder from the same spec finds the device its symlink points at orphaned and
# recovers it (user recovery): same device, `"reattached": true`, no I/O error. Then
# hydration completes, checksums are equal, `stop` removes the device, fsck is clean.
# Env: VM_VOL_MIB (default 32), VM_RATE (bytes/s, default 1048576), MESHDRAIN_BIN,
# MESHDRAIN_UBLK_KO.
. "$(dirname "$0")/lib.sh"
MIB=${VM_VOL_MIB:-32}
RATE=${VM_RATE:-1048576}
IQN=iqn.2026-11.invalid.meshdrain:vm-ublk-holder
PORTAL=127.0.0.1:3260
holder_scenario /tmp/uh

load_ublk

source_target_holder ublk "/dev/ublkb*" iqn.2026-11.invalid.meshdrain:vm-uholder
echo "holder $h1 serves $DEV (exposure ublk)"

mount_and_work

kill_holder $h1
holder_takes_over recovers
hydrated_then_stop 20
[ ! -e "$DEV" ] || fail "$DEV left after stop"
dest_equal_and_clean
echo "UBLK holder restart: killed at w$before, $DEV recovered by a new holder, checksums equal, fsck clean"
step "ok"
