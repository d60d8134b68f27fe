#!/bin/bash
# Scenario vm_dm_clone_sparse (issue 20, "dm-clone skips what the source does not hold"):
# a 256 MiB volume with 5 % of its regions written (a known pattern), the rest a hole in
# the source's file, moves over the kernel data path (our target on src; open-iscsi +
# dm-clone on tgt, `dataplane.clone = "dm"`). Before hydration the holder asks the source
# which ranges it does not hold (GET LBA STATUS) and discards those whole regions on the
# clone, which marks them hydrated without copying. Proof: the bytes the source's agent
# read (its /proc/<pid>/io rchar: the target sends with sendfile(2) and pread(2), both
# counted; so are its socket reads and config files, an upper bound) stay under
# VM_MAX_PERCENT of the volume, and the dest's bytes equal the source's.
# Agents run without a mesh (gossip authenticated by a fleet secret on a veth underlay),
# src in namespace src, tgt in the guest's first one (iscsid lives there).
# Env: VM_VOL_MIB (default 256), VM_ALLOC_EVERY (write one region in this many, default
# 20: 5 %), VM_MAX_PERCENT (default 8).
. "$(dirname "$0")/lib.sh"
MIB=${VM_VOL_MIB:-256}
EVERY=${VM_ALLOC_EVERY:-20}
MAX_PERCENT=${VM_MAX_PERCENT:-8}
REGION=65536 # dataplane.region_size's default
W=/tmp/sp
mkdir -p $W
pids=()
cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    for n in src tgt; do echo "--- $n agent log tail"; tail -n 30 $W/$n/agent.log 2>/dev/null || true; done
    echo "--- dm"; dmsetup table 2>/dev/null || true
    echo "--- sessions"; iscsiadm -m session 2>&1 || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del src 2>/dev/null || true
}
trap cleanup EXIT

step "modules, open-iscsi, underlay"
load_dm_clone
for m in veth sd_mod iscsi_tcp crc32c_generic loop; do modprobe $m; done
ip link set lo up
mkdir -p /run/lock/iscsi /tmp/etc-iscsi
cp -a /etc/iscsi/. /tmp/etc-iscsi/
echo "InitiatorName=iqn.2026-11.invalid.meshdrain:vm-sparse" >/tmp/etc-iscsi/initiatorname.iscsi
mount --bind /tmp/etc-iscsi /etc/iscsi
setsid iscsid -f >$W/iscsid.log 2>&1 &
pids+=($!)
ip netns add src
ip link add vtgt type veth peer name eth0 netns src
ip addr add 198.18.0.2/24 dev vtgt
ip link set vtgt up
ip -n src addr add 198.18.0.1/24 dev eth0
ip -n src link set eth0 up
ip -n src link set lo up
declare -A under=([src]=198.18.0.1 [tgt]=198.18.0.2)
MD() { local n=$1; shift; NO_COLOR=1 MESHDRAIN_LOG=warn "$MESHDRAIN_BIN" --control $W/$n/control.sock "$@"; }
head -c 32 /dev/urandom >$W/gossip.key && chmod 600 $W/gossip.key

step "agents (no mesh: gossip and iSCSI on the underlay)"
for n in src tgt; do
  p=$([ $n = src ] && echo tgt || echo src)
  clone=$([ $n = tgt ] && echo dm || echo userspace)
  mkdir -p $W/$n
  cat >$W/$n/agent.toml <<EOF
name = "$n"
state_dir = "$W/$n/state"

[gossip]
listen = "${under[$n]}:7946"
seeds = ["${under[$p]}:7946"]
interval_ms = 200
secret_file = "$W/gossip.key"

[control]
socket = "$W/$n/control.sock"

[mesh]
backend = "none"

[pool]
capacity_bytes = 1073741824

[dataplane]
backend = "iscsi"
clone = "$clone"
progress_ms = 200
EOF
done
declare -A agent_pid
start_agent() {
  local ns=()
  [ "$1" = src ] && ns=(nsenter --net=/run/netns/src)
  MESHDRAIN_LOG=info NO_COLOR=1 "${ns[@]}" "$MESHDRAIN_BIN" agent --config $W/$1/agent.toml >/dev/null 2>>$W/$1/agent.log &
  agent_pid[$1]=$!
  pids+=($!)
}
start_agent src
start_agent tgt
state_of() {
  MD "$1" status --json 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); print(next((n["state"] for n in s["nodes"] if n["name"] == sys.argv[1]), ""))' "$2" 2>/dev/null || true
}
t0=$SECONDS
until [ "$(state_of tgt src)" = active ] && [ "$(state_of src tgt)" = active ]; do
  [ $((SECONDS - t0)) -lt 60 ] || fail "the two agents did not see each other active within 60 s"
  sleep 0.5
done
echo "joined in $((SECONDS - t0)) s"

step "volume db (${MIB} MiB) on src, one region in $EVERY written"
MD src volume create db --size ${MIB}M >/dev/null || fail "volume create failed"
SRC_IMG=$W/src/state/pool/db.img
[ -f $SRC_IMG ] || fail "no $SRC_IMG after volume create"
regions=$((MIB * 1048576 / REGION))
# One process for every region (a dd per region costs a minute under TCG).
written=$(python3 - "$SRC_IMG" $regions $EVERY $REGION <<'PY'
import os, sys
path, regions, every, region = sys.argv[1], *map(int, sys.argv[2:])
fd = os.open(path, os.O_WRONLY)
n = 0
for r in range(0, regions, every):
    os.pwrite(fd, os.urandom(region), r * region)
    n += 1
os.fsync(fd)
os.close(fd)
print(n)
PY
) || fail "cannot write the pattern into $SRC_IMG"
alloc=$(($(stat -c %b $SRC_IMG) * $(stat -c %B $SRC_IMG)))
SIZE=$(stat -c %s $SRC_IMG)
echo "source file: $SIZE bytes, $alloc allocated ($written of $regions regions written)"
[ $((alloc * 100)) -le $((SIZE * 6)) ] || fail "the source file is not sparse: $alloc of $SIZE bytes allocated"
SRC_SUM=$(sha256sum <$SRC_IMG | cut -d' ' -f1)

rchar() { awk '/^rchar:/ {print $2}' /proc/"${agent_pid[src]}"/io; }
R0=$(rchar)

step "drain src (dm-clone on tgt)"
t_drain=$SECONDS
MD tgt drain src >/dev/null || fail "drain src failed"
until [ "$(state_of tgt src)" = drained ]; do
  [ $((SECONDS - t_drain)) -lt 150 ] || fail "src not drained within 150 s"
  sleep 0.5
done
R1=$(rchar)
echo "drained in $((SECONDS - t_drain)) s"
grep -q "dm-clone ready over open-iscsi" $W/tgt/agent.log || fail "tgt did not use the dm-clone path"
skip_line=$(grep "dm-clone skips what the source does not hold" $W/tgt/agent.log | tail -1)
[ -n "$skip_line" ] || fail "tgt did not skip: $(grep -i 'dm-clone copies every region' $W/tgt/agent.log | tail -1)"
echo "holder: ${skip_line#*INFO }"

step "bytes and the read fraction"
linear() { dmsetup table meshdrain-db | grep -q ' linear '; }
wait_for 20 linear || fail "meshdrain-db is not linear after hand-off: $(dmsetup table meshdrain-db)"
DST_IMG=$W/tgt/state/pool/db.img
[ "$(sha256sum <$DST_IMG | cut -d' ' -f1)" = "$SRC_SUM" ] || fail "dest bytes differ from the source's"
[ "$(sha256sum </dev/mapper/meshdrain-db | cut -d' ' -f1)" = "$SRC_SUM" ] || fail "device bytes differ from the source's"
read_bytes=$((R1 - R0))
pct=$(awk -v r="$read_bytes" -v s="$SIZE" 'BEGIN { printf "%.2f", 100 * r / s }')
echo "SPARSE read ${read_bytes} of ${SIZE} bytes from the source = ${pct} % (allocated $((written * 100 / regions)) %, bound ${MAX_PERCENT} %); sha256 equal"
[ $((read_bytes * 100)) -le $((SIZE * MAX_PERCENT)) ] || fail "the source served ${pct} % of the volume, over ${MAX_PERCENT} %"
dmsetup remove meshdrain-db
step "ok"
