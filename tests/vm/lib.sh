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

# Starts iscsid with initiator name $1 (config copied to /tmp/etc-iscsi).
start_iscsid() {
  mkdir -p /run/lock/iscsi /tmp/etc-iscsi
  cp -a /etc/iscsi/. /tmp/etc-iscsi/
  echo "InitiatorName=$1" >/tmp/etc-iscsi/initiatorname.iscsi
  mount --bind /tmp/etc-iscsi /etc/iscsi
  setsid iscsid -f >"$W/iscsid.log" 2>&1 &
  pids+=($!)
}

# The underlay: veth vtgt 198.18.0.2 here, eth0 198.18.0.1 in namespace src.
underlay() {
  ip netns add src
  ip link add vtgt type veth peer name eth0 netns src
  ip addr add 198.18.0.2/24 dev vtgt
  ip link set vtgt up
  ip -n src addr add 198.18.0.1/24 dev eth0
  ip -n src link set eth0 up
  ip -n src link set lo up
}

# iscsid with initiator name $1, then the underlay.
iscsid_and_underlay() {
  start_iscsid "$1"
  underlay
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
# gossip line $4 (its authentication, or nothing), mesh section $5, more [dataplane] lines
# $6 (optional); the node named tgt clones with ${TGT_CLONE:-dm}, src with the userspace
# engine.
write_agent_toml() {
  local n=$1 clone
  clone=$([ "$n" = tgt ] && echo "${TGT_CLONE:-dm}" || echo userspace)
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
${6:-}
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

# Runs a command in node $1's namespace.
in_ns() {
  local n=$1
  shift
  if [ "$n" = src ]; then nsenter --net=/run/netns/src "$@"; else "$@"; fi
}

# The mesh between src and tgt ($1: agent or sidecar) and the functions the agents'
# configs take from it: mesh_toml N PEER, gossip_listen N, gossip_seeds N PEER, gossip_auth.
# agent: the agents run kernel WireGuard (mesh.backend = kernel, certificates from a fleet
# CA made here); sidecar: `meshdrain mesh up --backend kernel` beside agents with
# mesh.backend = none (their gossip then authenticated by a fleet secret).
declare -A addr=([src]=fd42:9::1 [tgt]=fd42:9::2) under=([src]=198.18.0.1 [tgt]=198.18.0.2) pub
two_node_mesh() {
  local n p
  mkdir -p /run/wireguard
  for n in src tgt; do
    pub[$n]=$(NO_COLOR=1 "$MESHDRAIN_BIN" mesh keygen --state-dir $W/$n/state --name $n | awk '/^public key:/ {print $3}')
    [ -n "${pub[$n]}" ] || fail "no public key for $n"
  done
  case $1 in
    sidecar)
      step "kernel WireGuard mesh beside the agents (meshdrain mesh up --backend kernel)"
      for n in src tgt; do
        p=$([ $n = src ] && echo tgt || echo src)
        NO_COLOR=1 in_ns $n "$MESHDRAIN_BIN" mesh up --interface wg$n --state-dir $W/$n/state --address ${addr[$n]} \
          --backend kernel --peer "${pub[$p]},${under[$p]}:51820,${addr[$p]}" >$W/mesh-$n.log 2>&1 &
        pids+=($!)
      done
      has_addr() { in_ns $1 ip addr show wg$1 2>/dev/null | grep -q "inet6 ${addr[$1]}/"; }
      for n in src tgt; do wait_for 20 has_addr $n || true; done
      # The mesh addresses need DAD to finish before gossip binds them.
      for _ in $(seq 50); do in_ns src ping -6 -c 1 -W 1 ${addr[tgt]} >/dev/null 2>&1 && break; done
      in_ns src ping -6 -c 1 -W 5 ${addr[tgt]} >/dev/null || fail "src cannot reach tgt over the kernel mesh"
      mesh_toml() { printf '[mesh]\nbackend = "none"\n'; }
      # The agents cannot tell this sidecar mesh's addresses from any other network, so their
      # gossip is authenticated by a fleet secret like any gossip outside an agent-run mesh.
      head -c 32 /dev/urandom >$W/gossip.key && chmod 600 $W/gossip.key
      gossip_auth() { echo "secret_file = \"$W/gossip.key\""; }
      gossip_listen() { echo "[${addr[$1]}]:7946"; }
      gossip_seeds() { echo "\"[${addr[$2]}]:7946\""; }
      ;;
    agent)
      step "kernel WireGuard mesh run by the agents (mesh.backend = kernel, fleet CA certificates)"
      NO_COLOR=1 "$MESHDRAIN_BIN" mesh init --dir $W/ca >/dev/null || fail "mesh init failed"
      for n in src tgt; do
        NO_COLOR=1 "$MESHDRAIN_BIN" mesh sign --ca-key $W/ca/fleet-ca.key --request $W/$n/state/node.csr.json \
          --valid-for 1d --out $W/$n/node.cert.json >/dev/null || fail "mesh sign $n failed"
      done
      mesh_toml() {
        printf '[mesh]\nbackend = "kernel"\ninterface = "wg%s"\nlisten_port = 51820\nendpoint = "%s:51820"\n' $1 ${under[$1]}
        printf 'certificate = "%s"\nfleet_ca = "%s"\n' $W/$1/node.cert.json $W/ca/fleet-ca.pub
        printf 'seeds = [{ public_key = "%s", endpoint = "%s:51820" }]\n' "${pub[$2]}" ${under[$2]}
      }
      # The agent binds gossip to its mesh address (this port) and seeds it from mesh.seeds.
      gossip_listen() { echo "${under[$1]}:7946"; }
      gossip_seeds() { :; }
      gossip_auth() { :; }
      ;;
    *) fail "mesh $1: want agent or sidecar" ;;
  esac
}

# Writes both agents' configs over the mesh two_node_mesh set up ($1: more [dataplane]
# lines, optional) and starts them; waits until they see each other over kernel WireGuard.
two_agents() {
  local n p
  step "agents (gossip and iSCSI on the mesh addresses)"
  for n in src tgt; do
    p=$([ $n = src ] && echo tgt || echo src)
    write_agent_toml $n "$(gossip_listen $n)" "$(gossip_seeds $n $p)" "$(gossip_auth)" "$(mesh_toml $n $p)" "${1:-}"
  done
  start_agent src
  start_agent tgt
  wait_joined
  for n in src tgt; do
    in_ns $n ip -d link show wg$n | grep -qE '^ +wireguard( |$)' || fail "$n: wg$n is not a kernel WireGuard link"
  done
}

# Prints "phase hydrated total holder" of volume $2 as node $1 sees it.
vol_of() {
  MD "$1" volume list --json 2>/dev/null | python3 -c 'import json,sys
v = next((v for v in json.load(sys.stdin)["volumes"] if v["id"] == sys.argv[1]), None)
print(*(v.get(k) for k in ("phase", "hydrated", "total", "holder")) if v else "")' "$2" 2>/dev/null || true
}
# Prints field $3 of volume $2 as node $1 sees it (Python spelling: True, None, ...).
field_of() {
  MD "$1" volume list --json 2>/dev/null | python3 -c 'import json,sys
v = next((v for v in json.load(sys.stdin)["volumes"] if v["id"] == sys.argv[1]), {})
print(v.get(sys.argv[2]))' "$2" "$3" 2>/dev/null || true
}

# Volume db ($1 MiB) on src with start hook $W/start-hook.sh (it appends "node device" to
# $W/started-db: one line per run); $2 = filled writes it whole first (every region
# allocated, so every region is fetched; else only what ext4 allocates); ext4 on it
# holding $3 files of 1 MiB, before-1.., their sums in $W/before.sha. Sets SRC_IMG.
src_volume() {
  local mib=$1 i
  step "ext4 volume db (${mib} MiB) on src"
  printf '#!/bin/sh\necho "$MESHDRAIN_NODE $MESHDRAIN_DEVICE" >>%s/started-$MESHDRAIN_VOLUME\n' $W >$W/start-hook.sh
  chmod +x $W/start-hook.sh
  MD src volume create db --size ${mib}M --hook-start $W/start-hook.sh >/dev/null || fail "volume create failed"
  SRC_IMG=$W/src/state/pool/db.img
  [ -f $SRC_IMG ] || fail "no $SRC_IMG after volume create"
  if [ "$2" = filled ]; then dd if=/dev/zero of=$SRC_IMG bs=1M count=$mib conv=notrunc status=none; fi
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard $SRC_IMG
  mkdir -p $W/srcmnt $W/mnt
  mount -o loop $SRC_IMG $W/srcmnt
  for i in $(seq $3); do head -c 1M /dev/urandom >$W/srcmnt/before-$i.bin; done
  (cd $W/srcmnt && sha256sum before-*.bin) >$W/before.sha
  umount $W/srcmnt
}

# Waits ($1 s) until tgt sees src drained, src's copy there all along; t_drain is when
# the drain was asked for.
wait_drained() {
  local t0=$SECONDS
  until [ "$(state_of tgt src)" = drained ]; do
    [ $((SECONDS - t0)) -lt "$1" ] || fail "src not drained within $1 s: $(vol_of tgt db)"
    [ -f $SRC_IMG ] || fail "src copy gone before drained"
    sleep 0.5
  done
  echo "drained $((SECONDS - t_drain)) s after the drain request"
}

# --- Holder scenarios (nbd_exposure, ublk_holder, ublk_exposure, agent_nbd): the scenario
# sets W, M (the workload's mount point), pids, and for a holder C (its files: db.json,
# db.state, db.sock, db.log).

# On a failure ($1 is the exit status) the tails of files $2..., the holder's state and
# dmesg; then unmounts $M and stops pids.
holder_cleanup() {
  local rc=$1 f p
  shift
  if [ "$rc" -ne 0 ]; then
    for f in "$@"; do echo "--- $f"; tail -n 20 "$f" 2>/dev/null || true; done
    if [ -n "${C:-}" ]; then echo "--- state"; cat $C/db.state 2>/dev/null || true; fi
    echo "--- dmesg"; dmesg | tail -n 25
  fi
  if mountpoint -q $M; then umount $M 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}

# One request line ($2) to the holder control socket $1; prints the reply line.
ask_socket() {
  python3 - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile().readline().strip())
EOF
}
# One request line to the scenario's holder (db); prints the reply line.
ask() { ask_socket "$C/db.sock" "$1"; }
# Field $1 of the holder's state file (Python spelling: True, None, ...).
state_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))' $C/db.state "$1"; }
# Whether holder $1 serves (its state names it and it answers hello).
serves() { [ "$(state_field pid 2>/dev/null)" = "$1" ] && ask '{"op":"hello"}' 2>/dev/null | grep -q '"ok":true'; }
# Whether the holder's hydration is complete.
complete() { ask '{"op":"progress"}' 2>/dev/null | grep -q '"phase":"complete"'; }
# Starts a holder from its spec (its pid in HPID); waits until it serves.
start_holder() {
  MESHDRAIN_LOG=info NO_COLOR=1 "$MESHDRAIN_BIN" clone hold --spec $C/db.json </dev/null >/dev/null 2>>$C/db.log &
  HPID=$!
  pids+=($HPID)
  wait_for 60 serves $HPID || fail "holder $HPID did not serve: $(tail -n 5 $C/db.log)"
}

# Source image $1 of $2 MiB: random bytes everywhere (no hole for the clone to skip: every
# region is fetched), ext4 (no discard by mkfs) holding $3 files of $4 MiB, src1..; their
# sums in $W/src.sums.
source_image() {
  local i
  step "source: $2 MiB ext4 with files"
  head -c $(($2 << 20)) /dev/urandom >$1
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 $1
  mount -o loop $1 $M
  for i in $(seq $3); do head -c $(($4 << 20)) /dev/urandom >$M/src$i; done
  (cd $M && sha256sum src*) >$W/src.sums
  umount $M
  losetup -D
}

# Our iSCSI target on PORTAL (host:port) serving image $1 as IQN; waits until it listens.
start_target() {
  NO_COLOR=1 "$MESHDRAIN_BIN" export serve --listen $PORTAL --iqn $IQN $1 >$W/export.log 2>&1 &
  pids+=($!)
  wait_for 10 bash -c "exec 3<>/dev/tcp/${PORTAL%:*}/${PORTAL#*:}" 2>/dev/null || fail "target not listening"
}

# The spec file the agent would write ($C/db.json) for a clone of $MIB MiB from the
# target, hydrating at $RATE bytes/s, exposed by $1, logging in as initiator $2.
holder_spec() {
  cat >$C/db.json <<EOF
{"volume":"db","export":{"addr":"$PORTAL","iqn":"$IQN"},"initiator_iqn":"$2",
 "epoch":1,"size":$((MIB << 20)),"dest":"$W/dest.img","metadata":"$W/dest.meta","rate_limit":$RATE,"verify":false,
 "region_size":65536,"parallelism":2,"batch_regions":8,"read_through":true,"prepare_delay_ms":0,
 "mountpoint":"$W/run/fuse/db","link":"$W/run/dev/db","hydrating":true,"workload_started":true,"start_hook":null,
 "source_lost":false,"expose":"$1"}
EOF
}

# The workload, in the background (pid in wl, log $W/workload.log): $1 files of 256 KiB,
# w1.., written to $M with fsync, $2 s apart, each followed by a read of file
# $M/$(printf $3 <i % $4 + 1>) when $3 (a printf pattern: src%d) is given; then a syncfs.
# An I/O error is an IOERR line. Returns once $5 files are written.
start_workload() {
  local n=$1 pause=$2 rd=${3:-} nrd=${4:-1} i f
  mkdir -p $W/wdata
  for i in $(seq 1 $n); do head -c 262144 /dev/urandom >$W/wdata/w$i; done
  (
    for i in $(seq 1 $n); do
      dd if=$W/wdata/w$i of=$M/w$i bs=64K conv=fsync status=none || { echo "IOERR write w$i"; exit 1; }
      if [ -n "$rd" ]; then
        printf -v f "$rd" $(((i % nrd) + 1))
        cat $M/$f >/dev/null || { echo "IOERR read $f"; exit 1; }
      fi
      echo "wrote w$i t=$SECONDS"
      sleep $pause
    done
    sync -f $M/w$n || { echo "IOERR syncfs"; exit 1; }
  ) >$W/workload.log 2>&1 &
  wl=$!
  wait_for 60 grep -q "^wrote w$5 " $W/workload.log || fail "the workload did not get going: $(cat $W/workload.log)"
}

# Writes the workload completed so far.
written() { grep -c '^wrote ' $W/workload.log; }

# Waits for the workload; fails on an I/O error or when no write completed after the
# kill ($1: the writes done at the kill). Prints the outcome.
workload_outcome() {
  wait $wl || fail "the workload saw an error: $(grep IOERR $W/workload.log)"
  local after
  after=$(written)
  [ "$after" -gt "$1" ] || fail "no write completed after the restart"
  echo "workload: $after writes, $((after - $1)) after the kill, no I/O error"
}

# The workload's $1 files read back equal to what it wrote.
check_written() {
  local i
  for i in $(seq 1 $1); do cmp -s $W/wdata/w$i $M/w$i || fail "w$i differs from what the workload wrote"; done
}

# fsck -fn of $1 is clean and the kernel logged no I/O error (loop devices aside).
fsck_and_dmesg_clean() {
  fsck.ext4 -fn "$1" >$W/fsck.log 2>&1 || { cat $W/fsck.log; fail "fsck found errors on $1"; }
  if dmesg | grep -E "I/O error|EXT4-fs error|Buffer I/O" | grep -v loop; then fail "the kernel logged I/O errors"; fi
}

# Median 4 KiB O_DIRECT read through device $1 of 40 regions 256 KiB apart from byte $2:
# on demand (regions not here yet), then hydrated (read again, after the commit tick).
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
time.sleep(2)                 # the engine's commit tick: the regions' bits are set
hydrated = median(offsets)    # now on the dest
print("median 4 KiB read: on-demand %d us, hydrated %d us" % (on_demand, hydrated))
EOF
}

# tgt drains src at $RATE (t_drain: when) and waits (120 s) until the start hook ran on tgt;
# sets node and dev (the device the hook was given).
drain_src() {
  step "drain src at $RATE"
  MD tgt drain src --rate-limit "$RATE" >/dev/null || fail "drain src failed"
  t_drain=$SECONDS
  wait_for 120 test -s $W/started-db || fail "the workload did not start on the holder within 120 s"
  read -r node dev <$W/started-db
  echo "workload start hook ran on $node with $dev after $((SECONDS - t_drain)) s"
  [ "$node" = tgt ] || fail "started on $node, want tgt"
}

# kill -9 of holder $1 mid-hydration, the workload running on $DEV (which must stay);
# sets t_kill and before (the writes done).
kill_holder() {
  step "kill -9 the holder mid-I/O"
  complete && fail "hydration was complete before the kill: not mid-hydration"
  kill -9 "$1"
  t_kill=$SECONDS
  sleep 0.5
  [ -b "$DEV" ] || fail "$DEV vanished with its server"
  before=$(written)
  echo "killed at w$before mid-hydration; $DEV still present"
}

# A new holder from the same spec takes $DEV over ($1 says how: "reconfigures", "recovers");
# sets h2; the workload then ends with no I/O error.
holder_takes_over() {
  step "a new holder from the same spec $1 $DEV"
  start_holder
  h2=$HPID
  [ "$(readlink $W/run/dev/db)" = "$DEV" ] || fail "the link moved to $(readlink $W/run/dev/db)"
  [ "$(state_field reattached)" = True ] || fail "the new holder did not take over $DEV (state: $(cat $C/db.state))"
  ask '{"op":"hydrate"}' | grep -q '"ok":true' || fail "hydrate refused by the new holder"
  echo "holder $h2 serves $DEV again $((SECONDS - t_kill)) s after the kill"
  workload_outcome $before
}

# Hydration completes; the source's files ($W/src.sums) and the workload's $1 files read
# back equal; unmounts; SUM_DEV is the device's sha256; holder h2 stops on request and its
# link goes.
hydrated_then_stop() {
  step "hydration completes"
  wait_for 90 complete || fail "hydration did not complete: $(ask '{"op":"progress"}')"
  (cd $M && sha256sum -c --quiet $W/src.sums) || fail "source files differ after hydration"
  check_written $1
  umount $M
  SUM_DEV=$(sha256sum <$DEV | cut -d' ' -f1)
  ask '{"op":"stop"}' | grep -q '"ok":true' || fail "stop refused"
  wait_for 30 bash -c "! kill -0 $h2 2>/dev/null" || fail "the holder did not exit on stop"
  [ ! -L $W/run/dev/db ] || fail "the link is left after stop"
}

# The dest ($W/dest.img) holds what the device served (SUM_DEV), fsck clean, no I/O error.
dest_equal_and_clean() {
  [ "$(sha256sum <$W/dest.img | cut -d' ' -f1)" = "$SUM_DEV" ] || fail "dest bytes differ from what $DEV served"
  fsck_and_dmesg_clean $W/dest.img
}

# Starts the first holder (h1); DEV is the device its link points at, which must match
# the glob $2 and have the clone's size, and the holder must report exposure $1.
first_holder() {
  start_holder
  h1=$HPID
  DEV=$(readlink $W/run/dev/db)
  # shellcheck disable=SC2254 # $2 is a pattern
  case "$DEV" in $2) ;; *) fail "the link points at '$DEV', not a $1 device" ;; esac
  [ "$(state_field exposure)" = "$1" ] || fail "the holder reports exposure $(state_field exposure)"
  [ "$(blockdev --getsize64 $DEV)" = $((MIB << 20)) ] || fail "$DEV is $(blockdev --getsize64 $DEV) bytes"
}

# The workload through the holder's link: mounts it, reads the source's files (on-demand
# fetches), starts hydration, then writes 20 files with fsync, reading the source's 3
# files in between (start_workload).
mount_and_work() {
  step "workload: mount via the link, read the source's files, write files with fsync"
  mount -o data=ordered $W/run/dev/db $M
  (cd $M && sha256sum -c --quiet $W/src.sums) || fail "files read through $DEV differ from the source's"
  ask '{"op":"hydrate"}' | grep -q '"ok":true' || fail "hydrate refused"
  start_workload 20 0.2 src%d 3 4
}

# A holder scenario's files under $1: W, M (mount point), C (holder files, 0700); pids
# empty; on exit holder_cleanup with the holder's log, the target's and the workload's.
holder_scenario() {
  W=$1 M=$1/mnt C=$1/run/clones
  mkdir -p $W $M $C
  chmod 700 $C
  pids=()
  trap 'holder_cleanup $? $C/db.log $W/export.log $W/workload.log' EXIT
}

# ublk_drv built out of tree by the harness (MESHDRAIN_UBLK_KO), loop and ext4; lo up.
load_ublk() {
  step "modules: ublk_drv, loop, ext4"
  for m in loop ext4; do modprobe $m; done
  insmod "$MESHDRAIN_UBLK_KO"
  wait_for 5 test -c /dev/ublk-control || fail "no /dev/ublk-control after insmod $MESHDRAIN_UBLK_KO"
  ip link set lo up
}

# open-iscsi (iscsid as initiator $1) logs in to IQN at PORTAL; SD is the LUN's /dev/sdX.
open_iscsi_login() {
  for m in sd_mod iscsi_tcp crc32c_generic; do modprobe $m; done
  start_iscsid "$1"
  sleep 0.5
  iscsiadm -m discovery -t sendtargets -p $PORTAL >/dev/null
  iscsiadm -m node -T $IQN -p $PORTAL --login >/dev/null
  wait_for 20 bash -c 'ls /sys/class/iscsi_session/session*/device/target*/*/block/ 2>/dev/null | grep -q sd' ||
    fail "no /dev/sdX after the open-iscsi login"
  SD=/dev/$(ls /sys/class/iscsi_session/session*/device/target*/*/block/ | grep sd | head -1)
  wait_for 5 test -b $SD || fail "no $SD"
}

# The source image ($MIB MiB, 3 files of 2 MiB) served by our target, and the first holder
# of its clone, exposed by $1 (the device matching glob $2), logging in as initiator $3.
source_target_holder() {
  SRC=$W/src.img
  source_image $SRC $MIB 3 2
  step "target and the first holder (expose $1, rate $RATE B/s)"
  start_target $SRC
  holder_spec $1 $3
  first_holder $1 "$2"
}

# A second workload for a hand-over window: writes 16 KiB files u1, u2, ... to $M with
# fsync and reads each back, every 0.2 s, until $W/window-done exists (at most 150 files;
# bounded). window_start starts it; window_end stops it and fails on any I/O error or a
# file that read back different, or when fewer than $1 files were written meanwhile.
window_start() {
  rm -f $W/window-done
  (
    for i in $(seq 1 150); do
      head -c 16384 /dev/urandom >$W/u.tmp
      dd if=$W/u.tmp of=$M/u$i bs=16K conv=fsync status=none || { echo "IOERR write u$i"; exit 1; }
      cmp -s $W/u.tmp $M/u$i || { echo "DIFF u$i"; exit 1; }
      echo "wrote u$i t=$SECONDS"
      [ -e $W/window-done ] && exit 0
      sleep 0.2
    done
  ) >$W/window.log 2>&1 &
  wwin=$!
}
window_end() {
  touch $W/window-done
  wait $wwin || fail "the workload writing through the hand-over saw an error: $(tail -n 3 $W/window.log)"
  local n
  n=$(grep -c '^wrote u' $W/window.log)
  [ "$n" -ge "$1" ] || fail "the workload wrote $n files through the hand-over, fewer than $1"
  echo "through the hand-over the workload wrote and read back $n files with fsync, no I/O error"
}
