#!/bin/bash
# Scenario vm_full_drain (issue #8, scenario 4): the kernel data path end to end with real
# agents. Node `src` runs in namespace src, node `tgt` in the guest's first namespace (the
# kernel iSCSI initiator's daemon, iscsid, lives there); underlay 198.18.0.0/24 on a veth,
# kernel WireGuard between them (`meshdrain mesh up --backend kernel`), gossip and iSCSI on
# the mesh addresses (fd42:9::/48). src exports its volume with our iSCSI target; tgt
# (`dataplane.clone = "dm"`) logs in with open-iscsi and stacks dm-clone on the remote disk.
# An ext4 workload mounts the clone before hydration ends (reads on demand, writes), the
# checksums match after hand-off, the device ends linear on the dest with no session left,
# and src deletes its copy only after `done` (gc refused before, honoured after). The
# holder's agent is killed (-9) while the workload reads on demand and adopts the clone
# when it comes back.
# Env: VM_VOL_MIB (volume size, default 64), VM_RATE (drain rate limit, default 4M).
. "$(dirname "$0")/lib.sh"
MIB=${VM_VOL_MIB:-64}
RATE=${VM_RATE:-4M}
W=/tmp/fd
mkdir -p $W
pids=()
cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    for n in src tgt; do echo "--- $n agent log tail"; tail -n 40 $W/$n/agent.log 2>/dev/null || true; done
    echo "--- iscsid"; tail -n 10 $W/iscsid.log 2>/dev/null || true
    echo "--- dm"; dmsetup table 2>/dev/null || true
    echo "--- sessions"; iscsiadm -m session 2>&1 || true
  fi
  umount $W/mnt 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del src 2>/dev/null || true
}
trap cleanup EXIT

step "modules, open-iscsi, underlay"
load_dm_clone
for m in wireguard veth sd_mod iscsi_tcp crc32c_generic loop ext4; do modprobe $m; done
ip link set lo up
mkdir -p /run/lock/iscsi /tmp/etc-iscsi /run/wireguard
cp -a /etc/iscsi/. /tmp/etc-iscsi/
echo "InitiatorName=iqn.2026-11.invalid.meshdrain:vm-default" >/tmp/etc-iscsi/initiatorname.iscsi
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
# Runs a command in node $1's namespace.
in_ns() { local n=$1; shift; if [ "$n" = src ]; then nsenter --net=/run/netns/src "$@"; else "$@"; fi; }
declare -A addr=([src]=fd42:9::1 [tgt]=fd42:9::2) under=([src]=198.18.0.1 [tgt]=198.18.0.2) pub

step "kernel WireGuard mesh (meshdrain mesh up --backend kernel)"
for n in src tgt; do
  pub[$n]=$(NO_COLOR=1 "$MESHDRAIN_BIN" mesh keygen --state-dir $W/$n/state --name $n | awk '/^public key:/ {print $3}')
  [ -n "${pub[$n]}" ] || fail "no public key for $n"
done
for n in src tgt; do
  p=$([ $n = src ] && echo tgt || echo src)
  NO_COLOR=1 in_ns $n "$MESHDRAIN_BIN" mesh up --interface wg$n --state-dir $W/$n/state --address ${addr[$n]} \
    --backend kernel --peer "${pub[$p]},${under[$p]}:51820,${addr[$p]}" >$W/mesh-$n.log 2>&1 &
  pids+=($!)
done
for n in src tgt; do
  for _ in $(seq 100); do in_ns $n ip addr show wg$n 2>/dev/null | grep -q "inet6 ${addr[$n]}/" && break; sleep 0.1; done
  in_ns $n ip -d link show wg$n | grep -qE '^ +wireguard( |$)' || fail "$n has no kernel wireguard link: $(cat $W/mesh-$n.log)"
done
# The mesh addresses need DAD to finish before binding (nodad would hide a real problem).
for _ in $(seq 50); do in_ns src ping -6 -c 1 -W 1 ${addr[tgt]} >/dev/null 2>&1 && break; done
in_ns src ping -6 -c 1 -W 5 ${addr[tgt]} >/dev/null || fail "src cannot reach tgt over the kernel mesh"

step "agents (gossip and iSCSI on the mesh addresses)"
MD() { local n=$1; shift; NO_COLOR=1 MESHDRAIN_LOG=warn "$MESHDRAIN_BIN" --control $W/$n/control.sock "$@"; }
for n in src tgt; do
  p=$([ $n = src ] && echo tgt || echo src)
  clone=$([ $n = tgt ] && echo dm || echo userspace)
  cat >$W/$n/agent.toml <<EOF
name = "$n"
state_dir = "$W/$n/state"

[gossip]
listen = "[${addr[$n]}]:7946"
seeds = ["[${addr[$p]}]:7946"]
interval_ms = 200

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
# Starts node $1's agent; agent_pid is the agent itself (nsenter execs it) for kill -9.
start_agent() {
  local ns=()
  [ "$1" = src ] && ns=(nsenter --net=/run/netns/src)
  MESHDRAIN_LOG=info NO_COLOR=1 "${ns[@]}" "$MESHDRAIN_BIN" agent --config $W/$1/agent.toml >/dev/null 2>>$W/$1/agent.log &
  agent_pid[$1]=$!
  pids+=($!)
}
start_agent src
start_agent tgt
# status --json of node $1, as one JSON document.
status() { MD "$1" status --json 2>/dev/null; }
# Prints node $2's state as node $1 sees it.
state_of() { status "$1" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(next((n["state"] for n in s["nodes"] if n["name"] == sys.argv[1]), ""))' "$2" 2>/dev/null || true; }
# Prints "phase hydrated total holder" of volume $2 as node $1 sees it.
vol_of() {
  MD "$1" volume list --json 2>/dev/null | python3 -c 'import json,sys
v = next((v for v in json.load(sys.stdin)["volumes"] if v["id"] == sys.argv[1]), None)
print(*(v.get(k) for k in ("phase", "hydrated", "total", "holder")) if v else "")' "$2" 2>/dev/null || true
}
t0=$SECONDS
until [ "$(state_of tgt src)" = active ] && [ "$(state_of src tgt)" = active ]; do
  [ $((SECONDS - t0)) -lt 60 ] || fail "the two agents did not see each other active within 60 s"
  sleep 0.5
done
echo "joined in $((SECONDS - t0)) s"

step "ext4 volume db (${MIB} MiB) on src"
HOOK=$W/start-hook.sh
printf '#!/bin/sh\necho "$MESHDRAIN_NODE $MESHDRAIN_DEVICE" >%s/started-$MESHDRAIN_VOLUME\n' $W >$HOOK
chmod +x $HOOK
MD src volume create db --size ${MIB}M --hook-start $HOOK >/dev/null || fail "volume create failed"
SRC_IMG=$W/src/state/pool/db.img
[ -f $SRC_IMG ] || fail "no $SRC_IMG after volume create"
mkfs.ext4 -q -F $SRC_IMG
mkdir -p $W/srcmnt $W/mnt
mount -o loop $SRC_IMG $W/srcmnt
for i in $(seq 16); do head -c 1M /dev/urandom >$W/srcmnt/before-$i.bin; done
(cd $W/srcmnt && sha256sum before-*.bin) >$W/before.sha
umount $W/srcmnt

step "drain src at $RATE"
MD tgt drain src --rate-limit "$RATE" >/dev/null || fail "drain src failed"
t_drain=$SECONDS
for _ in $(seq 1200); do [ -s $W/started-db ] && break; sleep 0.1; done
[ -s $W/started-db ] || fail "the workload did not start on the holder within 120 s"
read -r node dev <$W/started-db
echo "workload start hook ran on $node with $dev after $((SECONDS - t_drain)) s"
[ "$node" = tgt ] || fail "started on $node, want tgt"
[ "$dev" = /dev/mapper/meshdrain-db ] || fail "workload device $dev is not the dm-clone device"
dmsetup table meshdrain-db | grep -q ' clone ' || fail "meshdrain-db is not a clone: $(dmsetup table meshdrain-db)"

step "workload on the clone before hydration ends"
mount "$dev" $W/mnt
read -r phase h total holder < <(vol_of tgt db)
echo "at mount: phase $phase hydrated $h/$total holder $holder"
[ "$phase" = cut_over ] && [ "$h" -lt "$total" ] || fail "the workload did not start before hydration ended ($phase $h/$total)"
# The clone lives in the kernel: the holder's agent dying does not stop the workload.
kill -9 "${agent_pid[tgt]}"
wait "${agent_pid[tgt]}" 2>/dev/null || true
echo "holder agent killed (kill -9) with the workload mounted"
(cd $W/mnt && sha256sum -c --quiet $W/before.sha) || fail "files read on demand differ"
echo "workload read every file on demand while the holder agent was down"
start_agent tgt
for _ in $(seq 600); do grep -q 'dm-clone ready over open-iscsi.*fresh=false' $W/tgt/agent.log && break; sleep 0.1; done
grep -q 'dm-clone ready over open-iscsi.*fresh=false' $W/tgt/agent.log || fail "the restarted holder did not adopt the clone"
read -r phase h total holder < <(vol_of tgt db)
echo "holder agent restarted and adopted the dm-clone device, session and loops ($phase $h/$total)"
for i in $(seq 8); do head -c 512K /dev/urandom >$W/mnt/during-$i.bin; done
(cd $W/mnt && sha256sum during-*.bin) >$W/during.sha
sync
MD src gc >/dev/null 2>&1 || true
[ -f $SRC_IMG ] || fail "src deleted its copy before done (gc during hydration)"
echo "src keeps its copy while hydrating (gc before done deletes nothing)"

step "hand-off"
t0=$SECONDS
stalled_seen=0
until [ "$(state_of tgt src)" = drained ]; do
  [ $((SECONDS - t0)) -lt 300 ] || fail "src not drained within 300 s: $(vol_of tgt db)"
  [ -f $SRC_IMG ] || fail "src copy gone before drained"
  sleep 0.5
done
echo "drained $((SECONDS - t_drain)) s after the drain request ($MIB MiB at $RATE)"
read -r phase h total holder < <(vol_of tgt db)
echo "volume: phase $phase $h/$total holder $holder"
(cd $W/mnt && sha256sum -c --quiet $W/before.sha $W/during.sha) || fail "checksums differ after hand-off"
umount $W/mnt
fsck.ext4 -fn "$dev" >$W/fsck.log 2>&1 || fail "fsck after the move: $(tail -5 $W/fsck.log)"
for _ in $(seq 100); do dmsetup table meshdrain-db | grep -q ' linear ' && break; sleep 0.1; done
dmsetup table meshdrain-db | grep -q ' linear ' || fail "meshdrain-db is not linear after hand-off: $(dmsetup table meshdrain-db)"
for _ in $(seq 100); do [ -z "$(ls /sys/class/iscsi_session 2>/dev/null)" ] && break; sleep 0.1; done
[ -z "$(ls /sys/class/iscsi_session 2>/dev/null)" ] || fail "iSCSI sessions left after hand-off: $(iscsiadm -m session 2>&1)"
DST_IMG=$W/tgt/state/pool/db.img
[ "$(sha256sum <"$dev" | cut -d' ' -f1)" = "$(sha256sum <$DST_IMG | cut -d' ' -f1)" ] || fail "device and dest file differ"
echo "checksums equal, fsck clean, linear on the dest, no iSCSI session left"
grep -q "dm-clone ready over open-iscsi" $W/tgt/agent.log || fail "tgt did not use the dm-clone path"

step "source deletion after done"
[ -f $SRC_IMG ] || fail "src deleted its copy before gc"
MD src gc >/dev/null || fail "gc on src failed"
for _ in $(seq 100); do [ -f $SRC_IMG ] || break; sleep 0.1; done
[ ! -f $SRC_IMG ] || fail "gc after done did not delete src's copy"
echo "src deleted its copy only after done (gc)"
dmsetup remove meshdrain-db
step "ok"
