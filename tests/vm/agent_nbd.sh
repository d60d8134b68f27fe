#!/bin/bash
# Scenario vm_agent_nbd (issue 20, docs/exposures.md "The restart story", docs/holder-process.md
# "Adoption"): the agent's own NBD path in a real kernel. Two agents in guest namespaces
# over the kernel WireGuard mesh (as vm_full_drain); src exports its volume with our iSCSI
# target; tgt (`clone = "userspace"`, `expose = "nbd"`) drains it: its agent launches a
# holder process that serves the clone as /dev/nbdN, the start hook runs once and an ext4
# workload writes (fsync) and reads on it while it hydrates (rate-limited). Mid-hydration:
# kill -9 of the holder process: the agent's supervisor restarts it, the new holder
# reconfigures the same /dev/nbdN and the start hook does NOT run again; then kill -9 of
# tgt's agent: the new agent adopts the running holder (same pid, same device, no second
# start hook); then tgt's agent restarted on another build of meshdrain (an upgrade): it
# asks the holder to exit leaving its device, and the holder it starts on the new build
# takes /dev/nbdN over (docs/holder-process.md "Upgrades"). The workload sees no I/O error; hydration completes, hand-off, checksums
# equal, fsck clean, `status --json` shows the exposure.
# Env: VM_VOL_MIB (default 32: written whole under ext4, every region fetched), VM_RATE
# (drain rate limit, default 512K: hydration outlasts both kills), MESHDRAIN_BIN.
. "$(dirname "$0")/lib.sh"
MIB=${VM_VOL_MIB:-32}
RATE=${VM_RATE:-512K}
W=/tmp/an
M=$W/mnt
C=$W/tgt/state/run/clones
mkdir -p $W $M
pids=()
cleanup() {
  local rc=$?
  holder_cleanup $rc $C/db.log $W/workload.log
  # The holders the agents left running: SIGTERM disconnects their nbd device.
  for s in $W/*/state/run/clones/*.state; do
    if [ -f "$s" ]; then kill "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$s")" 2>/dev/null || true; fi
  done
  two_node_cleanup $rc 40
}
trap cleanup EXIT

step "modules (nbd as Debian ships it), underlay"
for m in nbd wireguard veth loop ext4; do modprobe $m; done
[ -d /sys/module/nbd ] || fail "no /sys/module/nbd after modprobe nbd"
ip link set lo up
underlay
two_node_mesh agent
TGT_CLONE=userspace two_agents 'expose = "nbd"'
grep -q 'userspace clones are exposed via nbd' $W/tgt/agent.log || fail "tgt did not choose nbd: $(grep -m1 expose $W/tgt/agent.log)"
src_volume $MIB filled 8
hooks() { wc -l <$W/started-db; }

drain_src
DEV=$(readlink -f "$dev")
case "$DEV" in /dev/nbd*) ;; *) fail "the workload's device $dev is $DEV, not an nbd device" ;; esac
[ "$(state_field exposure)" = nbd ] || fail "the holder reports exposure $(state_field exposure)"
h1=$(state_field pid)
pids+=($h1)
echo "holder $h1 serves $DEV (index $(state_field nbd_index))"

step "workload on the clone before hydration ends"
mount -o data=ordered "$dev" $M
read -r phase h total holder < <(vol_of tgt db)
echo "at mount: phase $phase hydrated $h/$total holder $holder"
[ "$phase" = cut_over ] && [ "$h" -lt "$total" ] || fail "the workload did not start before hydration ended ($phase $h/$total)"
start_workload 24 0.3 before-%d.bin 8 3

step "kill -9 the holder process mid-hydration"
complete && fail "hydration was complete before the kill: not mid-hydration"
kill -9 "$h1"
t_kill=$SECONDS
before=$(written)
took_over() { grep -q 'the restarted holder took over the same device: the workload kept running on it (no start hook)' $W/tgt/agent.log; }
wait_for 60 took_over || fail "the agent did not restart the holder onto the same device: $(grep -i holder $W/tgt/agent.log | tail -n 3)"
h2=$(state_field pid)
pids+=($h2)
[ "$h2" != "$h1" ] || fail "the state still names the killed holder $h1"
grep -q 'holder process killed by signal 9 (SIGKILL); restarting it from its clone metadata' $W/tgt/agent.log ||
  fail "the agent did not log how the holder ended: $(grep -m1 'holder process' $W/tgt/agent.log)"
[ "$(readlink -f "$dev")" = "$DEV" ] || fail "the link moved to $(readlink -f "$dev")"
[ "$(state_field reattached)" = True ] || fail "the new holder did not take over $DEV (state: $(cat $C/db.state))"
[ "$(hooks)" = 1 ] || fail "the start hook ran again: $(cat $W/started-db)"
echo "holder killed at w$before; the agent's supervisor restarted it (holder $h2) on the same $DEV after $((SECONDS - t_kill)) s, start hook not run again"

step "kill -9 tgt's agent mid-hydration"
read -r phase h total holder < <(vol_of tgt db)
[ "$phase" = cut_over ] && [ "$h" -lt "$total" ] || fail "hydration was over before the agent kill ($phase $h/$total)"
kill -9 "${agent_pid[tgt]}"
wait "${agent_pid[tgt]}" 2>/dev/null || true
echo "tgt's agent killed at $h/$total"
lines=$(wc -l <$W/tgt/agent.log)
start_agent tgt
t0=$SECONDS
adopted() { tail -n +"$lines" $W/tgt/agent.log | grep 'adopted the running holder process (no new login, same device)' | grep -q "pid=$h2"; }
wait_for 60 adopted || fail "the new agent did not adopt holder $h2: $(tail -n +"$lines" $W/tgt/agent.log | grep -i holder | head -n 3)"
tail -n +"$lines" $W/tgt/agent.log | grep 'adopted the running holder process' | grep -q 'exposure="\?nbd' ||
  fail "the adoption does not name the nbd exposure: $(grep 'adopted the running holder' $W/tgt/agent.log)"
not_again() { tail -n +"$lines" $W/tgt/agent.log | grep -q 'workload already runs on the adopted clone device; start hook not run again'; }
wait_for 90 not_again || fail "the new agent did not take the running workload as started"
[ "$(state_field pid)" = "$h2" ] || fail "the holder changed: $(state_field pid), want $h2"
[ "$(hooks)" = 1 ] || fail "the start hook ran again after the agent restart: $(cat $W/started-db)"
echo "the new agent adopted holder $h2 (same $DEV, exposure nbd) after $((SECONDS - t0)) s, start hook not run again"

step "upgrade: tgt's agent restarted on another build moves the holder onto it"
# Another build: the binary with bytes appended (another file, another inode).
NEXT=$W/meshdrain-next
cp "$MESHDRAIN_BIN" $NEXT && printf 'another build' >>$NEXT && chmod +x $NEXT
window_start
kill "${agent_pid[tgt]}"
wait "${agent_pid[tgt]}" 2>/dev/null || true
kill -0 "$h2" 2>/dev/null || fail "holder $h2 ended with its agent's SIGTERM"
lines=$(wc -l <$W/tgt/agent.log)
MESHDRAIN_BIN=$NEXT start_agent tgt
t0=$SECONDS
moved() { tail -n +"$lines" $W/tgt/agent.log | grep -q 'the restarted holder took over the same device: the workload kept running on it (no start hook)'; }
wait_for 90 moved || fail "the holder was not moved onto the new build: $(tail -n +"$lines" $W/tgt/agent.log | grep -i holder | head -n 5)"
tail -n +"$lines" $W/tgt/agent.log | grep -q 'holder runs another meshdrain binary: handing its device to a holder on this one' ||
  fail "the agent did not say why it moved the holder"
h3=$(state_field pid)
pids+=($h3)
[ "$h3" != "$h2" ] || fail "the state still names holder $h2"
[ "$(readlink /proc/$h3/exe)" = "$NEXT" ] || fail "holder $h3 runs $(readlink /proc/$h3/exe), not the new build"
grep -q 'holder exiting; its device is left for the next holder' $C/db.log* || fail "holder $h2 did not log leaving its device"
[ "$(readlink -f "$dev")" = "$DEV" ] || fail "the link moved to $(readlink -f "$dev")"
[ "$(state_field reattached)" = True ] || fail "holder $h3 did not take over $DEV (state: $(cat $C/db.state))"
[ "$(hooks)" = 1 ] || fail "the start hook ran again after the upgrade: $(cat $W/started-db)"
window_end 5
echo "upgrade: holder $h2 left $DEV, holder $h3 on the new build took it over after $((SECONDS - t0)) s, start hook not run again"
workload_outcome "$before"

step "hydration completes, hand-off"
wait_drained 180
read -r phase h total holder < <(vol_of tgt db)
echo "volume: phase $phase $h/$total holder $holder"
(cd $M && sha256sum -c --quiet $W/before.sha) || fail "the source's files differ after hand-off"
check_written 24
status tgt >$W/status.json
python3 - $W/status.json "$DEV" <<'EOF' || fail "status --json does not show the exposure: $(cat $W/status.json)"
import json, os, sys
c = [c for c in json.load(open(sys.argv[1])).get("clones", []) if c["volume"] == "db"]
assert c and c[0]["exposure"] == "nbd" and os.path.realpath(c[0]["device"]) == sys.argv[2], c
print("status --json: clone db exposed via %s at %s" % (c[0]["exposure"], c[0]["device"]))
EOF
umount $M
DST_IMG=$W/tgt/state/pool/db.img
[ "$(sha256sum <"$DEV" | cut -d' ' -f1)" = "$(sha256sum <$DST_IMG | cut -d' ' -f1)" ] || fail "device and dest file differ"
fsck_and_dmesg_clean "$DEV"
[ "$(hooks)" = 1 ] || fail "the start hook ran $(hooks) times"
echo "AGENT NBD: holder killed and restarted by the agent, agent killed and the holder adopted, agent upgraded and the holder moved onto the new build, same $DEV, start hook once, checksums equal, fsck clean"
step "ok"
