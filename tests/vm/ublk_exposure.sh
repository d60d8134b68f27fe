#!/bin/bash
# Scenario vm_ublk_exposure (issue 20): the userspace clone served as /dev/ublkbN through
# ublk_drv (built out of tree by the harness: Debian's 6.1 ships without it), from our
# iSCSI target (`meshdrain export serve`). The source is an ext4 volume holding files;
# while the clone hydrates (rate-limited), the workload mounts the clone, reads the
# source's files (on-demand fetches) and writes new ones with fsync. Mid-I/O the serving
# process is killed with SIGKILL; a new one (`--ublk-recover N`) re-attaches to the same
# /dev/ublkbN (user recovery) and the workload carries on without an I/O error. Then
# hydration completes, every checksum is equal, the dest's ext4 is fsck clean.
# Also measured: the median 4 KiB O_DIRECT read through /dev/ublkbN of regions not yet
# hydrated (on-demand) and of the same regions once hydrated (`LATENCY ublk` line).
# With VM_UBLK_BENCH=1, then the same median on fresh clones that do not hydrate (rate
# 4K/s) through ublk and FUSE + loop, and on the remote LUN itself through open-iscsi (the
# plain remote read): `LATENCY ublk-idle`, `LATENCY fuse-loop-idle`, `LATENCY open-iscsi`.
# Env: VM_VOL_MIB (default 48), VM_RATE (hydration limit, default 1M: still hydrating at
# the kill), VM_UBLK_BENCH, MESHDRAIN_BIN, MESHDRAIN_UBLK_KO.
. "$(dirname "$0")/lib.sh"
MIB=${VM_VOL_MIB:-48}
RATE=${VM_RATE:-1M}
IQN=iqn.2026-11.invalid.meshdrain:vm-ublk
PORTAL=127.0.0.1:3260
W=/tmp/ublk
M=$W/mnt
mkdir -p $W $M
pids=()
cleanup() { holder_cleanup $? $W/c1.err $W/c2.err $W/export.log $W/workload.log; }
trap cleanup EXIT

# The optional latency comparison (VM_UBLK_BENCH=1), on fresh clones that do not hydrate.
bench() {
  [ "${VM_UBLK_BENCH:-0}" = 1 ] || return 0
  local c d
  step "bench: fresh clones at 4K/s (ublk, FUSE + loop), the LUN through open-iscsi"
  modprobe fuse
  for how in ublk fuse-loop; do
    rm -f $W/b.img $W/b.meta
    local args=(--ublk)
    [ $how = fuse-loop ] && args=(--expose $W/fl --hold)
    NO_COLOR=1 "$MESHDRAIN_BIN" clone run --backend userspace --source "$URL" --dest $W/b.img --metadata $W/b.meta \
      --rate-limit 4K --json "${args[@]}" >/dev/null 2>$W/b.err &
    c=$!
    if [ $how = ublk ]; then
      wait_for 30 grep -q '^ublk: ' $W/b.err || fail "bench clone: $(tail -n 3 $W/b.err)"
      d=$(sed -n 's/^ublk: \(\/dev\/ublkb[0-9]*\) .*/\1/p' $W/b.err)
    else
      wait_for 30 bash -c "test -b \"\$(readlink $W/fl)\"" || fail "bench clone: $(tail -n 3 $W/b.err)"
      d=$(readlink $W/fl)
    fi
    echo "LATENCY $how-idle $(lat $d $LAT_AT)"
    kill -TERM $c
    wait $c || true
  done
  open_iscsi_login iqn.2026-11.invalid.meshdrain:vm-ublk-bench
  d=$SD
  echo "LATENCY open-iscsi $(lat $d $LAT_AT)"
  iscsiadm -m node --logoutall=all >/dev/null
}

load_ublk

# Every block allocated (random bytes under the filesystem, no discard by mkfs): the engine
# skips what the source does not hold, and this proof wants every region fetched.
SRC=$W/src.img
source_image $SRC $MIB 4 3

step "target and the first serving process (--ublk, rate ${RATE}/s)"
start_target $SRC
URL="iscsi://$PORTAL/$IQN/1"
CLONE=(clone run --backend userspace --source "$URL" --dest $W/dest.img --metadata $W/dest.meta --rate-limit "$RATE" --json)
MESHDRAIN_LOG=info NO_COLOR=1 "$MESHDRAIN_BIN" "${CLONE[@]}" --ublk >$W/c1.json 2>$W/c1.err &
c1=$!
pids+=($c1)
wait_for 30 grep -q '^ublk: ' $W/c1.err || fail "the clone did not report its ublk device"
DEV=$(sed -n 's/^ublk: \(\/dev\/ublkb[0-9]*\) (dev id \([0-9]*\))$/\1/p' $W/c1.err)
ID=$(sed -n 's/^ublk: .* (dev id \([0-9]*\))$/\1/p' $W/c1.err)
[ -b "$DEV" ] || fail "no block device $DEV"
echo "serving $DEV (dev id $ID), $(blockdev --getsize64 $DEV) bytes"
[ "$(blockdev --getsize64 $DEV)" = $((MIB << 20)) ] || fail "$DEV is not ${MIB} MiB"

step "a recovery of a device that does not exist is refused, naming it"
NO_COLOR=1 "$MESHDRAIN_BIN" clone run --backend userspace --source "$URL" --dest $W/n.img --metadata $W/n.meta \
  --ublk-recover 9 >/dev/null 2>$W/n.err && fail "--ublk-recover 9 served a device that does not exist"
grep -q 'ublkb9: GET_DEV_INFO: No such device' $W/n.err || fail "unexpected refusal: $(cat $W/n.err)"
echo "refused: $(grep -o 'expose /dev/ublkb9.*' $W/n.err)"

step "latency: 4 KiB on-demand reads of unhydrated regions through $DEV (O_DIRECT)"
# 40 regions 256 KiB apart from 3/4 of the volume on: hydration (in order, at $RATE/s) has
# not reached them, so each first read is an on-demand fetch from the source.
LAT_AT=$((MIB * 3 / 4 << 20))
echo "LATENCY ublk $(lat $DEV $LAT_AT)"

step "workload: mount, read the source's files, write files with fsync"
mount -o data=ordered $DEV $M
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "files read through $DEV differ from the source's"
start_workload 24 0.3 "" 1 6

step "kill -9 the serving process mid-I/O"
# A reader with direct I/O in flight too: requests the dead server held are requeued.
dd if=$DEV of=/dev/null bs=256K iflag=direct status=none 2>$W/reader.err &
rd=$!
sleep 0.5
p=$(tail -n 1 $W/c1.json)
grep -q '"phase":"hydrating"' <<<"$p" || fail "not hydrating at the kill: $p"
kill -9 $c1
wait $c1 2>/dev/null || true
t_kill=$SECONDS
[ -b "$DEV" ] || fail "$DEV vanished with its server"
before=$(written)
hyd=$(python3 -c 'import json,sys; p=json.loads(sys.argv[1]); print("%d of %d regions" % (p["hydrated"], p["total"]))' "$p")
echo "killed at w$before with $hyd hydrated, a direct reader in flight; $DEV still present"

step "a new process recovers dev id $ID"
MESHDRAIN_LOG=info NO_COLOR=1 "$MESHDRAIN_BIN" "${CLONE[@]}" --ublk-recover "$ID" >$W/c2.json 2>$W/c2.err &
c2=$!
pids+=($c2)
wait_for 45 grep -q '^ublk: ' $W/c2.err || fail "the new process did not recover $DEV: $(tail -n 5 $W/c2.err)"
echo "recovered $(grep '^ublk: ' $W/c2.err) after $((SECONDS - t_kill)) s"
wait $rd || fail "the direct reader saw an error: $(cat $W/reader.err)"
echo "the direct reader in flight at the kill is done, no I/O error"
workload_outcome $before

step "hydration completes"
wait_for 120 grep -q '"phase":"complete"' $W/c2.json || fail "hydration did not complete: $(tail -n 1 $W/c2.json)"
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "source files differ after hydration"
check_written 24
umount $M
SUM_DEV=$(sha256sum <$DEV | cut -d' ' -f1)
kill -TERM $c2
wait $c2 || fail "the recovering process exited $? on SIGTERM"
[ ! -e "$DEV" ] || fail "$DEV left after the server stopped"
dest_equal_and_clean
bench
echo "UBLK recovery: killed at w$before ($hyd hydrated), served again after $(grep -o 'waited=[^ ]*' $W/c2.err | head -1), checksums equal, fsck clean"
step "ok"
