# Helpers sourced by the guest scenarios (run by bash in the VM's chroot of the host root).
set -euo pipefail

step() { printf '== %s (t=%ss)\n' "$*" "$SECONDS"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# Prints elapsed milliseconds since the Unix epoch (for rates).
now_ms() { date +%s%3N; }

# Loads dm-clone: device-mapper from Debian's modules, dm-clone.ko built by the harness.
load_dm_clone() {
  modprobe dm-mod
  modprobe dm-bufio
  modprobe dm-persistent-data
  grep -qw clone /proc/misc /proc/modules 2>/dev/null || insmod "$MESHDRAIN_DM_CLONE_KO"
  dmsetup targets | grep -q '^clone' || fail "dm-clone target not registered after insmod"
}

# Fails if any device-mapper device is left.
assert_no_dm() {
  local left
  left=$(dmsetup ls 2>/dev/null | grep -v '^No devices found' || true)
  [ -z "$left" ] || fail "dm devices left after teardown: $left"
}

# Sectors of a block device.
sectors() { blockdev --getsz "$1"; }

# Runs "$@" every 0.2 s until it succeeds or $1 seconds pass (wall clock: under TCG an
# iteration count says little about time); returns 1 on timeout.
wait_for() {
  local limit=$1 t0=$SECONDS
  shift
  until "$@"; do
    [ $((SECONDS - t0)) -lt "$limit" ] || return 1
    sleep 0.2
  done
}

# --- Two-node scenarios (full_drain, dm_clone_sparse): node src in namespace src, node tgt
# in the guest's first namespace (the kernel initiator's daemon, iscsid, lives there). The
# scenario sets W (its work dir) and pids (what two_node_cleanup stops) before using these.
declare -A agent_pid

# Starts iscsid with initiator name $1 (config copied to /tmp/etc-iscsi) and builds the
# underlay: veth vtgt 198.18.0.2 here, eth0 198.18.0.1 in namespace src.
iscsid_and_underlay() {
  mkdir -p /run/lock/iscsi /tmp/etc-iscsi
  cp -a /etc/iscsi/. /tmp/etc-iscsi/
  echo "InitiatorName=$1" >/tmp/etc-iscsi/initiatorname.iscsi
  mount --bind /tmp/etc-iscsi /etc/iscsi
  setsid iscsid -f >"$W/iscsid.log" 2>&1 &
  pids+=($!)
  ip netns add src
  ip link add vtgt type veth peer name eth0 netns src
  ip addr add 198.18.0.2/24 dev vtgt
  ip link set vtgt up
  ip -n src addr add 198.18.0.1/24 dev eth0
  ip -n src link set eth0 up
  ip -n src link set lo up
}

# On a failure ($1 is the exit status), the agents' last $2 log lines, iscsid's tail, the
# dm tables and the iSCSI sessions; then stops pids (TERM, then KILL) and deletes src.
two_node_cleanup() {
  local rc=$1 lines=$2 n p
  if [ "$rc" -ne 0 ]; then
    for n in src tgt; do echo "--- $n agent log tail"; tail -n "$lines" "$W/$n/agent.log" 2>/dev/null || true; done
    echo "--- iscsid"; tail -n 10 "$W/iscsid.log" 2>/dev/null || true
    echo "--- dm"; dmsetup table 2>/dev/null || true
    echo "--- sessions"; iscsiadm -m session 2>&1 || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del src 2>/dev/null || true
}

# Runs `meshdrain <args>` against node $1's control socket.
MD() { local n=$1; shift; NO_COLOR=1 MESHDRAIN_LOG=warn "$MESHDRAIN_BIN" --control "$W/$n/control.sock" "$@"; }

# Writes $W/$1/agent.toml: gossip listening on $2, seeded with $3 (TOML array items),
# gossip line $4 (its authentication, or nothing), mesh section $5; the node named tgt
# clones with dm-clone, src with the userspace engine.
write_agent_toml() {
  local n=$1 clone
  clone=$([ "$n" = tgt ] && echo dm || echo userspace)
  mkdir -p "$W/$n"
  cat >"$W/$n/agent.toml" <<EOF
name = "$n"
state_dir = "$W/$n/state"

[gossip]
listen = "$2"
seeds = [$3]
interval_ms = 200
$4

[control]
socket = "$W/$n/control.sock"

$5

[pool]
capacity_bytes = 1073741824

[dataplane]
backend = "iscsi"
clone = "$clone"
progress_ms = 200
EOF
}

# Starts node $1's agent from $W/$1/agent.toml; agent_pid is the agent itself (nsenter
# execs it) for kill -9.
start_agent() {
  local ns=()
  [ "$1" = src ] && ns=(nsenter --net=/run/netns/src)
  MESHDRAIN_LOG=info NO_COLOR=1 "${ns[@]}" "$MESHDRAIN_BIN" agent --config "$W/$1/agent.toml" >/dev/null 2>>"$W/$1/agent.log" &
  agent_pid[$1]=$!
  pids+=($!)
}

# status --json of node $1, as one JSON document.
status() { MD "$1" status --json 2>/dev/null; }
# Prints node $2's state as node $1 sees it.
state_of() { status "$1" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(next((n["state"] for n in s["nodes"] if n["name"] == sys.argv[1]), ""))' "$2" 2>/dev/null || true; }

# Waits (60 s) until src and tgt see each other active.
wait_joined() {
  local t0=$SECONDS
  until [ "$(state_of tgt src)" = active ] && [ "$(state_of src tgt)" = active ]; do
    [ $((SECONDS - t0)) -lt 60 ] || fail "the two agents did not see each other active within 60 s"
    sleep 0.5
  done
  echo "joined in $((SECONDS - t0)) s"
}
