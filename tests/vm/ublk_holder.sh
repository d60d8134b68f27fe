#!/bin/bash
# Scenario vm_ublk_holder (issue 20, docs/exposures.md): the agent's own path to ublk: a
# holder process (`meshdrain clone hold` with a spec file as the agent writes it and
# `expose = "ublk"`) serves the clone from our iSCSI target as /dev/ublkbN behind its
# symlink, ext4 on it while it hydrates; the holder is killed with SIGKILL mid-I/O and a
# new holder from the same spec finds the device its symlink points at orphaned and
# recovers it (user recovery): same device, `"reattached": true`, no I/O error. Then that
# holder exits on request leaving the device (`exit_keeping_device`, an upgrade's path) and
# a third recovers it the same way. Then hydration completes, checksums are equal, `stop`
# removes the device, fsck is clean.
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

# An upgrade's path (docs/holder-process.md "Upgrades"): the holder exits on request
# leaving its device, and the next one recovers it.
step "holder $h2 exits leaving $DEV (exit_keeping_device)"
window_start
sleep 1
ask '{"op":"exit_keeping_device"}' | grep -q '"ok":true' || fail "exit_keeping_device refused"
wait_for 30 bash -c "! kill -0 $h2 2>/dev/null" || fail "holder $h2 did not exit"
t_kill=$SECONDS
[ -b "$DEV" ] || fail "$DEV went away with holder $h2"
grep -q 'holder exiting; its device is left for the next holder' $C/db.log || fail "holder $h2 did not log leaving $DEV"
step "a third holder from the same spec recovers $DEV"
start_holder
[ "$(readlink $W/run/dev/db)" = "$DEV" ] || fail "the link moved to $(readlink $W/run/dev/db)"
[ "$(state_field reattached)" = True ] || fail "holder $HPID did not take over $DEV (state: $(cat $C/db.state))"
ask '{"op":"hydrate"}' | grep -q '"ok":true' || fail "hydrate refused by holder $HPID"
# The mounted filesystem goes on over the recovered device: a file written with fsync now
# reads back, and so do the source's files.
head -c 1M /dev/urandom >$W/after-exit.bin
dd if=$W/after-exit.bin of=$M/after-exit.bin bs=1M conv=fsync status=none || fail "writing through $DEV after the exit failed"
cmp -s $W/after-exit.bin $M/after-exit.bin || fail "the file written after the exit reads back different"
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "source files differ after the exit"
window_end 3
echo "holder $HPID serves $DEV again $((SECONDS - t_kill)) s after holder $h2 exited; a 1 MiB file written with fsync reads back"
h2=$HPID
hydrated_then_stop 20
[ ! -e "$DEV" ] || fail "$DEV left after stop"
dest_equal_and_clean
echo "UBLK holder restart: killed at w$before, $DEV recovered by a new holder, left by it on request and recovered by a third, checksums equal, fsck clean"
step "ok"
