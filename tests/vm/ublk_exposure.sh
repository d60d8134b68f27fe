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
cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    for f in c1.err c2.err export.log workload.log; do echo "--- $f"; tail -n 15 $W/$f 2>/dev/null || true; done
    echo "--- dmesg"; dmesg | tail -n 25
  fi
  mountpoint -q $M && umount $M 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
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
    echo "LATENCY $how-idle $(lat $d)"
    kill -TERM $c
    wait $c || true
  done
  for m in sd_mod iscsi_tcp crc32c_generic; do modprobe $m; done
  mkdir -p /run/lock/iscsi /tmp/etc-iscsi
  cp -a /etc/iscsi/. /tmp/etc-iscsi/
  echo "InitiatorName=iqn.2026-11.invalid.meshdrain:vm-ublk-bench" >/tmp/etc-iscsi/initiatorname.iscsi
  mount --bind /tmp/etc-iscsi /etc/iscsi
  setsid iscsid -f >$W/iscsid.log 2>&1 &
  pids+=($!)
  sleep 0.5
  iscsiadm -m discovery -t sendtargets -p $PORTAL >/dev/null
  iscsiadm -m node -T $IQN -p $PORTAL --login >/dev/null
  d=
  wait_for 20 bash -c 'ls /sys/class/iscsi_session/session*/device/target*/*/block/ 2>/dev/null | grep -q sd' ||
    fail "no /dev/sdX after the open-iscsi login"
  d=/dev/$(ls /sys/class/iscsi_session/session*/device/target*/*/block/ | grep sd | head -1)
  wait_for 5 test -b $d || fail "no $d"
  echo "LATENCY open-iscsi $(lat $d)"
  iscsiadm -m node --logoutall=all >/dev/null
}

step "modules: ublk_drv, loop"
for m in loop ext4; do modprobe $m; done
insmod "$MESHDRAIN_UBLK_KO"
wait_for 5 test -c /dev/ublk-control || fail "no /dev/ublk-control after insmod $MESHDRAIN_UBLK_KO"
ip link set lo up

step "source: ${MIB} MiB ext4 with files"
SRC=$W/src.img
# Every block allocated (random bytes under the filesystem, no discard by mkfs): the engine
# skips what the source does not hold, and this proof wants every region fetched.
head -c $((MIB << 20)) /dev/urandom >$SRC
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 $SRC
mount -o loop $SRC $M
for i in 1 2 3 4; do head -c $((3 << 20)) /dev/urandom >$M/src$i; done
(cd $M && sha256sum src*) >$W/src.sums
umount $M
losetup -D

step "target and the first serving process (--ublk, rate ${RATE}/s)"
NO_COLOR=1 "$MESHDRAIN_BIN" export serve --listen $PORTAL --iqn $IQN $SRC >$W/export.log 2>&1 &
pids+=($!)
wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/3260" 2>/dev/null || fail "target not listening"
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
lat() {
  python3 - "$1" $((MIB * 3 / 4 << 20)) <<'EOF'
import mmap, os, sys, time
dev, base = sys.argv[1], int(sys.argv[2])
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
def median(offsets):
    t = []
    for off in offsets:
        t0 = time.perf_counter(); os.preadv(fd, [buf], off); t.append(time.perf_counter() - t0)
    t.sort()
    return t[len(t) // 2] * 1e6
offsets = [base + i * (256 << 10) for i in range(40)]
on_demand = median(offsets)   # a fresh region each time: an on-demand read from the source
median(offsets)               # a second read there fetches the region whole
time.sleep(2)                 # the engine's commit tick: the regions' bits are set
hydrated = median(offsets)    # now on the dest
print("median 4 KiB read: on-demand %d us, hydrated %d us" % (on_demand, hydrated))
EOF
}
echo "LATENCY ublk $(lat $DEV)"

step "workload: mount, read the source's files, write files with fsync"
mount -o data=ordered $DEV $M
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "files read through $DEV differ from the source's"
mkdir -p $W/wdata
for i in $(seq 1 24); do head -c 262144 /dev/urandom >$W/wdata/w$i; done
(
  for i in $(seq 1 24); do
    dd if=$W/wdata/w$i of=$M/w$i bs=64K conv=fsync status=none || { echo "IOERR write w$i"; exit 1; }
    echo "wrote w$i t=$SECONDS"
    sleep 0.3
  done
  sync -f $M/w24 || { echo "IOERR syncfs"; exit 1; }
) >$W/workload.log 2>&1 &
wl=$!
wait_for 60 grep -q '^wrote w6 ' $W/workload.log || fail "the workload did not get going: $(cat $W/workload.log)"

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
before=$(grep -c '^wrote ' $W/workload.log)
hyd=$(python3 -c 'import json,sys; p=json.loads(sys.argv[1]); print("%d of %d regions" % (p["hydrated"], p["total"]))' "$p")
echo "killed at w$before with $hyd hydrated, a direct reader in flight; $DEV still present"

step "a new process recovers dev id $ID"
MESHDRAIN_LOG=info NO_COLOR=1 "$MESHDRAIN_BIN" "${CLONE[@]}" --ublk-recover "$ID" >$W/c2.json 2>$W/c2.err &
c2=$!
pids+=($c2)
wait_for 45 grep -q '^ublk: ' $W/c2.err || fail "the new process did not recover $DEV: $(tail -n 5 $W/c2.err)"
echo "recovered $(grep '^ublk: ' $W/c2.err) after $((SECONDS - t_kill)) s"
wait $wl || fail "the workload saw an error: $(grep IOERR $W/workload.log)"
wait $rd || fail "the direct reader saw an error: $(cat $W/reader.err)"
after=$(grep -c '^wrote ' $W/workload.log)
[ "$after" -gt "$before" ] || fail "no write completed after the recovery"
echo "workload: $after writes, $((after - before)) after the kill, reader done, no I/O error"

step "hydration completes"
wait_for 120 grep -q '"phase":"complete"' $W/c2.json || fail "hydration did not complete: $(tail -n 1 $W/c2.json)"
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "source files differ after hydration"
for i in $(seq 1 24); do cmp -s $W/wdata/w$i $M/w$i || fail "w$i differs from what the workload wrote"; done
umount $M
SUM_DEV=$(sha256sum <$DEV | cut -d' ' -f1)
kill -TERM $c2
wait $c2 || fail "the recovering process exited $? on SIGTERM"
[ ! -e "$DEV" ] || fail "$DEV left after the server stopped"
[ "$(sha256sum <$W/dest.img | cut -d' ' -f1)" = "$SUM_DEV" ] || fail "dest bytes differ from what $DEV served"
fsck.ext4 -fn $W/dest.img >$W/fsck.log 2>&1 || { cat $W/fsck.log; fail "fsck found errors on the dest"; }
if dmesg | grep -E "I/O error|EXT4-fs error|Buffer I/O" | grep -v loop; then fail "the kernel logged I/O errors"; fi
bench
echo "UBLK recovery: killed at w$before ($hyd hydrated), served again after $(grep -o 'waited=[^ ]*' $W/c2.err | head -1), checksums equal, fsck clean"
step "ok"
