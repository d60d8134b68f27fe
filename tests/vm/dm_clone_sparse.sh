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
cleanup() { two_node_cleanup $? 30; }
trap cleanup EXIT

step "modules, open-iscsi, underlay"
load_dm_clone
# fuse: src runs the userspace engine, whose agent refuses to start with no exposure (docs/exposures.md)
for m in veth sd_mod iscsi_tcp crc32c_generic loop fuse; do modprobe $m; done
ip link set lo up
iscsid_and_underlay iqn.2026-11.invalid.meshdrain:vm-sparse
declare -A under=([src]=198.18.0.1 [tgt]=198.18.0.2)
head -c 32 /dev/urandom >$W/gossip.key && chmod 600 $W/gossip.key

step "agents (no mesh: gossip and iSCSI on the underlay)"
for n in src tgt; do
  p=$([ $n = src ] && echo tgt || echo src)
  write_agent_toml $n "${under[$n]}:7946" "\"${under[$p]}:7946\"" "secret_file = \"$W/gossip.key\"" "$(printf '[mesh]\nbackend = "none"')"
done
start_agent src
start_agent tgt
wait_joined

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
