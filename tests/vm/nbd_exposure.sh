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
W=/tmp/nbd
M=$W/mnt
C=$W/run/clones
mkdir -p $W $M $C
chmod 700 $C
pids=()
cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    for f in clones/db.log export.log workload.log; do echo "--- $f"; tail -n 20 $W/run/$f $W/$f 2>/dev/null || true; done
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
# The holder's pid from its state file.
holder_pid() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' $C/db.state; }
state_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))' $C/db.state "$1"; }
# Whether holder $1 serves (its state names it and it answers hello).
serves() { [ "$(holder_pid 2>/dev/null)" = "$1" ] && ask '{"op":"hello"}' 2>/dev/null | grep -q '"ok":true'; }
complete() { ask '{"op":"progress"}' 2>/dev/null | grep -q '"phase":"complete"'; }
# Starts a holder from the spec (its pid in HPID); waits until it serves.
start_holder() {
  MESHDRAIN_LOG=info NO_COLOR=1 "$MESHDRAIN_BIN" clone hold --spec $C/db.json </dev/null >/dev/null 2>>$C/db.log &
  HPID=$!
  pids+=($HPID)
  wait_for 60 serves $HPID || fail "holder $HPID did not serve: $(tail -n 5 $C/db.log)"
}

step "modules: nbd (as Debian ships it), loop, fuse"
modprobe nbd
modprobe loop
modprobe fuse 2>/dev/null || true
modprobe ext4
[ -d /sys/module/nbd ] || fail "no /sys/module/nbd after modprobe nbd"
ip link set lo up

step "source: ${MIB} MiB ext4 with files"
SRC=$W/src.img
# Random bytes everywhere (no hole for the clone to skip): every region is fetched.
head -c $((MIB << 20)) /dev/urandom >$SRC
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard $SRC
mount -o loop $SRC $M
for i in 1 2 3; do head -c $((2 << 20)) /dev/urandom >$M/src$i; done
(cd $M && sha256sum src*) >$W/src.sums
umount $M
losetup -D

step "target and the first holder (expose nbd, rate $RATE B/s)"
NO_COLOR=1 "$MESHDRAIN_BIN" export serve --listen $PORTAL --iqn $IQN $SRC >$W/export.log 2>&1 &
pids+=($!)
wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/3260" 2>/dev/null || fail "target not listening"
cat >$C/db.json <<EOF
{"volume":"db","export":{"addr":"$PORTAL","iqn":"$IQN"},"initiator_iqn":"iqn.2026-11.invalid.meshdrain:vm-holder",
 "epoch":1,"size":$((MIB << 20)),"dest":"$W/dest.img","metadata":"$W/dest.meta","rate_limit":$RATE,"verify":false,
 "region_size":65536,"parallelism":2,"batch_regions":8,"read_through":true,"prepare_delay_ms":0,
 "mountpoint":"$W/run/fuse/db","link":"$W/run/dev/db","hydrating":true,"workload_started":true,"start_hook":null,
 "source_lost":false,"expose":"nbd"}
EOF
start_holder
h1=$HPID
DEV=$(readlink $W/run/dev/db)
IDX=$(state_field nbd_index)
case "$DEV" in /dev/nbd*) ;; *) fail "the link points at '$DEV', not an nbd device";; esac
[ "$(state_field exposure)" = nbd ] || fail "the holder reports exposure $(state_field exposure)"
[ "$(blockdev --getsize64 $DEV)" = $((MIB << 20)) ] || fail "$DEV is $(blockdev --getsize64 $DEV) bytes"
echo "holder $h1 serves $DEV (index $IDX, exposure nbd)"

step "latency: 4 KiB on-demand reads of unhydrated regions through $DEV (O_DIRECT)"
# Regions never read yet (hydration not started): each read is an on-demand fetch.
lat() {
  python3 - "$1" "$2" <<'EOF'
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
hydrated = median(offsets)    # now on the dest
print("median 4 KiB read: on-demand %d us, hydrated %d us" % (on_demand, hydrated))
EOF
}
echo "LATENCY nbd $(lat $DEV $((20 << 20)))"

step "workload: mount via the link, read the source's files, write files with fsync"
mount -o data=ordered $W/run/dev/db $M
(cd $M && sha256sum -c --quiet $W/src.sums) || fail "files read through $DEV differ from the source's"
ask '{"op":"hydrate"}' | grep -q '"ok":true' || fail "hydrate refused"
mkdir -p $W/wdata
for i in $(seq 1 20); do head -c 262144 /dev/urandom >$W/wdata/w$i; done
(
  for i in $(seq 1 20); do
    dd if=$W/wdata/w$i of=$M/w$i bs=64K conv=fsync status=none || { echo "IOERR write w$i"; exit 1; }
    cat $M/src$(( (i % 3) + 1 )) >/dev/null || { echo "IOERR read src"; exit 1; }
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

step "a new holder from the same spec reconfigures $DEV"
start_holder
h2=$HPID
[ "$(readlink $W/run/dev/db)" = "$DEV" ] || fail "the link moved to $(readlink $W/run/dev/db)"
[ "$(state_field reattached)" = True ] || fail "the new holder did not take over $DEV (state: $(cat $C/db.state))"
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
[ "$(cat /sys/block/nbd$IDX/size)" = 0 ] || fail "nbd$IDX still configured after stop"
[ "$(sha256sum <$W/dest.img | cut -d' ' -f1)" = "$SUM_DEV" ] || fail "dest bytes differ from what $DEV served"
fsck.ext4 -fn $W/dest.img >$W/fsck.log 2>&1 || { cat $W/fsck.log; fail "fsck found errors on the dest"; }
if dmesg | grep -E "I/O error|EXT4-fs error|Buffer I/O" | grep -v loop; then fail "the kernel logged I/O errors"; fi
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
