#!/bin/bash
# Scenario vm_full_drain (issue #8, scenario 4): the kernel data path end to end with real
# agents. Node `src` runs in namespace src, node `tgt` in the guest's first namespace (the
# kernel iSCSI initiator's daemon, iscsid, lives there); underlay 198.18.0.0/24 on a veth,
# kernel WireGuard between them, gossip and iSCSI on the mesh addresses. src exports its volume with our iSCSI target; tgt
# (`dataplane.clone = "dm"`) logs in with open-iscsi and stacks dm-clone on the remote disk.
# An ext4 workload mounts the clone before hydration ends (reads on demand, writes), the
# checksums match after hand-off, the device ends linear on the dest with no session left,
# and src deletes its copy only after `done` (gc refused before, honoured after). Mid-move
# the source's agent is killed (-9): the holder reports stalled; the holder's agent is
# killed too; restarted, it adopts the clone (device, loops, session) and hydration resumes.
# Env: VM_VOL_MIB (volume size, default 64), VM_RATE (drain rate limit, default 1M:
# hydration must outlast the checks between the mount and the source outage on a slow guest;
# only the ~20 % of the volume ext4 allocated is copied, the holes are skipped),
# VM_MESH: sidecar (`meshdrain mesh up --backend kernel` beside agents with
# mesh.backend = none) or agent (default; the agents run the mesh: mesh.backend = kernel, certificates
# from a fleet CA made here).
. "$(dirname "$0")/lib.sh"
MIB=${VM_VOL_MIB:-64}
RATE=${VM_RATE:-1M}
MESH=${VM_MESH:-agent}
W=/tmp/fd
mkdir -p $W
pids=()
cleanup() {
  local rc=$?
  umount $W/mnt 2>/dev/null || true
  two_node_cleanup $rc 40
}
trap cleanup EXIT

step "modules, open-iscsi, underlay"
load_dm_clone
# fuse: src runs the userspace engine, whose agent refuses to start without an exposure.
for m in wireguard veth sd_mod iscsi_tcp crc32c_generic loop ext4 fuse; do modprobe $m; done
ip link set lo up
iscsid_and_underlay iqn.2026-11.invalid.meshdrain:vm-default
two_node_mesh $MESH
two_agents

src_volume $MIB allocated 16

drain_src
[ "$dev" = /dev/mapper/meshdrain-db ] || fail "workload device $dev is not the dm-clone device"
dmsetup table meshdrain-db | grep -q ' clone ' || fail "meshdrain-db is not a clone: $(dmsetup table meshdrain-db)"

step "workload on the clone before hydration ends"
mount "$dev" $W/mnt
read -r phase h total holder < <(vol_of tgt db)
echo "at mount: phase $phase hydrated $h/$total holder $holder"
[ "$phase" = cut_over ] && [ "$h" -lt "$total" ] || fail "the workload did not start before hydration ended ($phase $h/$total)"
# The session runs to src's mesh address, which only the kernel WireGuard link routes.
portal=$(cat /sys/class/iscsi_connection/connection*/persistent_address 2>/dev/null | head -1)
route=$(ip -6 route get "$portal" 2>&1 || true)
grep -q " dev wgtgt " <<<"$route " || fail "the iSCSI session to '$portal' is not routed over wgtgt: $route"
echo "iSCSI session to $portal rides the kernel WireGuard link wgtgt"
MD src gc >/dev/null 2>&1 || true
[ -f $SRC_IMG ] || fail "src deleted its copy before done (gc during hydration)"
echo "src keeps its copy while hydrating (gc before done deletes nothing)"
# Source outage: its agent (and our target in it) dies; I/O to the remote disk queues
# (infinite replacement timeout), dm-clone stops hydrating, the holder reports stalled.
kill -9 "${agent_pid[src]}"
wait "${agent_pid[src]}" 2>/dev/null || true
t0=$SECONDS
stalled() { [ "$(field_of tgt db stalled)" = True ]; }
wait_for 60 stalled || fail "the holder did not report stalled within 60 s of the source dying: $(vol_of tgt db)"
read -r phase h0 total holder < <(vol_of tgt db)
echo "source agent killed: holder reports stalled after $((SECONDS - t0)) s at $h0/$total"
[ -f $SRC_IMG ] || fail "src copy gone"
# The holder's agent dies too, while nothing can hydrate (so no hand-off can happen
# without it): the clone lives in the kernel; the restarted agent adopts the device, the
# loops and the session once it learns the export from gossip again.
kill -9 "${agent_pid[tgt]}"
wait "${agent_pid[tgt]}" 2>/dev/null || true
echo "holder agent killed too (kill -9) during the source outage"
start_agent tgt
start_agent src
t0=$SECONDS
adopted() { grep -q 'dm-clone ready over open-iscsi.*fresh=false' $W/tgt/agent.log; }
wait_for 90 adopted || fail "the restarted holder did not adopt the clone within 90 s"
echo "both agents back: the holder adopted the dm-clone device, loops and session after $((SECONDS - t0)) s"
resumed() {
  read -r phase h total holder < <(vol_of tgt db)
  [ "$(field_of tgt db stalled)" = False ] && { [ "$phase" != cut_over ] || [ "${h:-0}" -gt "$h0" ]; }
}
wait_for 90 resumed || fail "hydration did not resume within 90 s of the source returning: $(vol_of tgt db)"
echo "source agent back: hydration resumed after $((SECONDS - t0)) s ($phase $h/$total)"
(cd $W/mnt && sha256sum -c --quiet $W/before.sha) || fail "files read on demand differ"
echo "workload read every file (on demand where not hydrated yet)"
for i in $(seq 8); do head -c 512K /dev/urandom >$W/mnt/during-$i.bin; done
(cd $W/mnt && sha256sum during-*.bin) >$W/during.sha
sync

step "hand-off"
wait_drained 300
echo "($MIB MiB at $RATE)"
read -r phase h total holder < <(vol_of tgt db)
echo "volume: phase $phase $h/$total holder $holder"
(cd $W/mnt && sha256sum -c --quiet $W/before.sha $W/during.sha) || fail "checksums differ after hand-off"
umount $W/mnt
fsck.ext4 -fn "$dev" >$W/fsck.log 2>&1 || fail "fsck after the move: $(tail -5 $W/fsck.log)"
linear() { dmsetup table meshdrain-db | grep -q ' linear '; }
wait_for 20 linear || fail "meshdrain-db is not linear after hand-off: $(dmsetup table meshdrain-db)"
no_session() { [ -z "$(ls /sys/class/iscsi_session 2>/dev/null)" ]; }
wait_for 20 no_session || fail "iSCSI sessions left after hand-off: $(iscsiadm -m session 2>&1)"
DST_IMG=$W/tgt/state/pool/db.img
[ "$(sha256sum <"$dev" | cut -d' ' -f1)" = "$(sha256sum <$DST_IMG | cut -d' ' -f1)" ] || fail "device and dest file differ"
echo "checksums equal, fsck clean, linear on the dest, no iSCSI session left"
grep -q "dm-clone ready over open-iscsi" $W/tgt/agent.log || fail "tgt did not use the dm-clone path"

step "source deletion after done"
[ -f $SRC_IMG ] || fail "src deleted its copy before gc"
MD src gc >/dev/null || fail "gc on src failed"
gone() { [ ! -f $SRC_IMG ]; }
wait_for 20 gone || fail "gc after done did not delete src's copy"
echo "src deleted its copy only after done (gc)"
dmsetup remove meshdrain-db
step "ok"
