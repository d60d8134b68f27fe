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
W=/tmp/uh
M=$W/mnt
C=$W/run/clones
mkdir -p $W $M $C
chmod 700 $C
pids=()
cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    for f in $C/db.log $W/export.log $W/workload.log; do echo "--- $f"; tail -n 20 $f 2>/dev/null || true; done
    echo "--- state"; cat $C/db.state 2>/dev/null || true
    echo "--- dmesg"; dmesg | tail -n 25
  fi
  mountpoint -q $M && umount $M 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# One request line to the holder's control socket; prints the reply line.
ask() {
  python3 - "$C/db.sock" "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile().readline().strip())
EOF
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))' $C/db.state "$1"; }
serves() { [ "$(field pid 2>/dev/null)" = "$1" ] && ask '{"op":"hello"}' 2>/dev/null | grep -q '"ok":true'; }
complete() { ask '{"op":"progress"}' 2>/dev/null | grep -q '"phase":"complete"'; }
start_holder() {
  MESHDRAIN_LOG=info NO_COLOR=1 "$MESHDRAIN_BIN" clone hold --spec $C/db.json </dev/null >/dev/null 2>>$C/db.log &
  HPID=$!
  pids+=($HPID)
  wait_for 60 serves $HPID || fail "holder $HPID did not serve: $(tail -n 5 $C/db.log)"
}

step "modules: ublk_drv, loop, ext4"
for m in loop ext4; do modprobe $m; done
insmod "$MESHDRAIN_UBLK_KO"
wait_for 5 test -c /dev/ublk-control || fail "no /dev/ublk-control after insmod"
ip link set lo up

step "source: ${MIB} MiB ext4 with files"
SRC=$W/src.img
head -c $((MIB << 20)) /dev/urandom >$SRC
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 $SRC
mount -o loop $SRC $M
for i in 1 2 3; do head -c $((2 << 20)) /dev/urandom >$M/src$i; done
(cd $M && sha256sum src*) >$W/src.sums
umount $M
losetup -D

step "target and the first holder (expose ublk, rate $RATE B/s)"
NO_COLOR=1 "$MESHDRAIN_BIN" export serve --listen $PORTAL --iqn $IQN $SRC >$W/export.log 2>&1 &
pids+=($!)
wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/3260" 2>/dev/null || fail "target not listening"
cat >$C/db.json <<EOF
{"volume":"db","export":{"addr":"$PORTAL","iqn":"$IQN"},"initiator_iqn":"iqn.2026-11.invalid.meshdrain:vm-uholder",
 "epoch":1,"size":$((MIB << 20)),"dest":"$W/dest.img","metadata":"$W/dest.meta","rate_limit":$RATE,"verify":false,
 "region_size":65536,"parallelism":2,"batch_regions":8,"read_through":true,"prepare_delay_ms":0,
 "mountpoint":"$W/run/fuse/db","link":"$W/run/dev/db","hydrating":true,"workload_started":true,"start_hook":null,
 "source_lost":false,"expose":"ublk"}
EOF
start_holder
h1=$HPID
DEV=$(readlink $W/run/dev/db)
case "$DEV" in /dev/ublkb*) ;; *) fail "the link points at '$DEV', not a ublk device";; esac
[ "$(field exposure)" = ublk ] || fail "the holder reports exposure $(field exposure)"
[ "$(blockdev --getsize64 $DEV)" = $((MIB << 20)) ] || fail "$DEV is $(blockdev --getsize64 $DEV) bytes"
echo "holder $h1 serves $DEV (exposure ublk)"

step "workload: mount via the link, read the source's files, write files with fsync"
mount -o data=ordered $W/run/dev/db $M
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "files read through $DEV differ from the source's"
ask '{"op":"hydrate"}' | grep -q '"ok":true' || fail "hydrate refused"
mkdir -p $W/wdata
for i in $(seq 1 20); do head -c 262144 /dev/urandom >$W/wdata/w$i; done
(
  for i in $(seq 1 20); do
    dd if=$W/wdata/w$i of=$M/w$i bs=64K conv=fsync status=none || { echo "IOERR write w$i"; exit 1; }
    cat $M/src$(((i % 3) + 1)) >/dev/null || { echo "IOERR read src"; exit 1; }
    echo "wrote w$i t=$SECONDS"
    sleep 0.2
  done
  sync -f $M/w20 || { echo "IOERR syncfs"; exit 1; }
) >$W/workload.log 2>&1 &
wl=$!
wait_for 60 grep -q '^wrote w4 ' $W/workload.log || fail "the workload did not get going: $(cat $W/workload.log)"

step "kill -9 the holder mid-I/O"
complete && fail "hydration was complete before the kill: not mid-hydration"
kill -9 "$h1"
t_kill=$SECONDS
sleep 0.5
[ -b "$DEV" ] || fail "$DEV vanished with its server"
before=$(grep -c '^wrote ' $W/workload.log)
echo "killed at w$before mid-hydration; $DEV still present"

step "a new holder from the same spec recovers $DEV"
start_holder
h2=$HPID
[ "$(readlink $W/run/dev/db)" = "$DEV" ] || fail "the link moved to $(readlink $W/run/dev/db)"
[ "$(field reattached)" = True ] || fail "the new holder did not take over $DEV (state: $(cat $C/db.state))"
ask '{"op":"hydrate"}' | grep -q '"ok":true' || fail "hydrate refused by the new holder"
echo "holder $h2 serves $DEV again $((SECONDS - t_kill)) s after the kill"
wait $wl || fail "the workload saw an error: $(grep IOERR $W/workload.log)"
after=$(grep -c '^wrote ' $W/workload.log)
[ "$after" -gt "$before" ] || fail "no write completed after the restart"
echo "workload: $after writes, $((after - before)) after the kill, no I/O error"

step "hydration completes"
wait_for 90 complete || fail "hydration did not complete: $(ask '{"op":"progress"}')"
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "source files differ after hydration"
for i in $(seq 1 20); do cmp -s $W/wdata/w$i $M/w$i || fail "w$i differs from what the workload wrote"; done
umount $M
SUM_DEV=$(sha256sum <$DEV | cut -d' ' -f1)
ask '{"op":"stop"}' | grep -q '"ok":true' || fail "stop refused"
wait_for 30 bash -c "! kill -0 $h2 2>/dev/null" || fail "the holder did not exit on stop"
[ ! -L $W/run/dev/db ] || fail "the link is left after stop"
[ ! -e "$DEV" ] || fail "$DEV left after stop"
[ "$(sha256sum <$W/dest.img | cut -d' ' -f1)" = "$SUM_DEV" ] || fail "dest bytes differ from what $DEV served"
fsck.ext4 -fn $W/dest.img >$W/fsck.log 2>&1 || { cat $W/fsck.log; fail "fsck found errors on the dest"; }
if dmesg | grep -E "I/O error|EXT4-fs error|Buffer I/O" | grep -v loop; then fail "the kernel logged I/O errors"; fi
echo "UBLK holder restart: killed at w$before, $DEV recovered by a new holder, checksums equal, fsck clean"
step "ok"
