#!/usr/bin/env bash
# Mesh data-path benchmark: TCP throughput (iperf3, 1 and 4 streams, -t 5) and ping latency
# between two network namespaces over: plain veth; our mesh (meshdrain userspace backend);
# wireguard-go (Debian) and boringtun-cli (crates.io) configured by hand with `wg`.
#   cargo build --release -p meshdrain && sudo bench/mesh.sh [path/to/meshdrain] [path/to/boringtun-cli]
# Our row runs our own userspace device (mesh/src/userspace: TUN TSO/GRO, UDP GSO/GRO, a thread
# per direction); the "no offload" row runs it with MESHDRAIN_WG_OFFLOAD=0 (plain batched packets).
# A debug build measures the unoptimised packet code, not the design: bench a release build.
# Needs root, iproute2, iperf3, wireguard-tools, wireguard-go, python3. Underlay 198.18.1.0/24,
# mesh fd42::/16; everything lives in two namespaces removed on exit.
set -euo pipefail
MESHDRAIN=${1:-target/release/meshdrain}
BORINGTUN=${2:-$(command -v boringtun-cli || echo /tmp/btcli/bin/boringtun-cli)}
SECS=${SECS:-5}
[ "$(id -u)" -eq 0 ] || { echo "bench/mesh.sh: must run as root (namespaces)" >&2; exit 2; }
for t in ip iperf3 wg wireguard-go python3 ping; do
  command -v "$t" >/dev/null || { echo "bench/mesh.sh: missing $t: run scripts/install-deps test" >&2; exit 2; }
done
[ -x "$MESHDRAIN" ] || { echo "bench/mesh.sh: $MESHDRAIN not built: cargo build --release -p meshdrain" >&2; exit 2; }

A=mdb$$a B=mdb$$b TMP=$(mktemp -d) PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.5
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$TMP"
  rm -f /var/run/wireguard/{m,r}$${a,b}.sock
}
trap cleanup EXIT
# Other builds may replace target/debug/meshdrain mid-run: bench a private copy.
cp "$MESHDRAIN" "$TMP/meshdrain"; MESHDRAIN=$TMP/meshdrain
ip netns add "$A"; ip netns add "$B"
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip link add eth0 netns "$A" type veth peer name eth0 netns "$B"
ip -n "$A" addr add 198.18.1.1/24 dev eth0; ip -n "$B" addr add 198.18.1.2/24 dev eth0
ip -n "$A" link set eth0 up; ip -n "$B" link set eth0 up
ip netns exec "$B" iperf3 -s -D --pidfile "$TMP/iperf.pid" >/dev/null
sleep 0.5; PIDS+=("$(cat "$TMP/iperf.pid")")

gbps() { python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
measure() { # label dst
  local one four lat
  one=$(ip netns exec "$A" iperf3 -c "$2" -t "$SECS" -P 1 -J | gbps)
  four=$(ip netns exec "$A" iperf3 -c "$2" -t "$SECS" -P 4 -J | gbps)
  lat=$(ip netns exec "$A" ping -q -c 200 -i 0.005 "$2" | awk -F/ '/^rtt/ {print $5}')
  printf '| %-22s | %8s | %8s | %8s |\n' "$1" "$one" "$four" "$lat"
  echo "$1|$one|$four" >>"$TMP/rows"
}
wait_if() { # ns ifname
  for _ in $(seq 50); do ip -n "$1" link show "$2" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "bench/mesh.sh: interface $2 did not appear in $1" >&2; return 1
}
stop_all_wg() { # kill the tunnel daemons of the previous case, keep iperf3
  while [ ${#PIDS[@]} -gt 1 ]; do
    kill "${PIDS[-1]}" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "${PIDS[-1]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true
    unset 'PIDS[-1]'
  done
  sleep 0.5
}
# By-hand reference: start daemon $1 (a command prefix taking the ifname) on both sides, configure with wg.
by_hand() { # label prefix-net daemon...
  local label=$1 net=$2; shift 2
  local ia=r$$a ib=r$$b ka kb
  ka=$(wg genkey); kb=$(wg genkey)
  ip netns exec "$A" "$@" "$ia" >"$TMP/$ia.log" 2>&1 & PIDS+=($!)
  ip netns exec "$B" "$@" "$ib" >"$TMP/$ib.log" 2>&1 & PIDS+=($!)
  wait_if "$A" "$ia"; wait_if "$B" "$ib"
  for _ in $(seq 50); do [ -S "/var/run/wireguard/$ia.sock" ] && [ -S "/var/run/wireguard/$ib.sock" ] && break; sleep 0.1; done
  ip netns exec "$A" wg set "$ia" private-key <(echo "$ka") listen-port 51901 \
    peer "$(echo "$kb" | wg pubkey)" endpoint 198.18.1.2:51902 allowed-ips "$net::2/128"
  ip netns exec "$B" wg set "$ib" private-key <(echo "$kb") listen-port 51902 \
    peer "$(echo "$ka" | wg pubkey)" endpoint 198.18.1.1:51901 allowed-ips "$net::1/128"
  ip -n "$A" addr add "$net::1/64" dev "$ia"; ip -n "$B" addr add "$net::2/64" dev "$ib"
  ip -n "$A" link set "$ia" mtu 1420 up; ip -n "$B" link set "$ib" mtu 1420 up
  measure "$label" "$net::2"
  stop_all_wg
}

echo "mesh bench: $(nproc) cores, iperf3 -t $SECS, $(date -u +%FT%TZ)"
printf '| %-22s | %8s | %8s | %8s |\n' path "1 stream" "4 streams" "ping ms"
printf '| %-22s | %8s | %8s | %8s |\n' "" Gbit/s Gbit/s avg
echo "|------------------------|----------|----------|----------|"
measure "veth (no tunnel)" 198.18.1.2

# Our mesh: meshdrain's userspace backend, one interface per namespace.
ours() { # label [env assignments...]
  local label=$1; shift
  local ia=m$$a ib=m$$b
  ip netns exec "$A" env "$@" "$MESHDRAIN" mesh up --interface "$ia" --state-dir "$TMP/a" --address fd42:3::1 --listen-port 51801 \
    --peer "$pb,198.18.1.2:51802,fd42:3::2" >>"$TMP/ma.log" 2>&1 & PIDS+=($!)
  ip netns exec "$B" env "$@" "$MESHDRAIN" mesh up --interface "$ib" --state-dir "$TMP/b" --address fd42:3::2 --listen-port 51802 \
    --peer "$pa,198.18.1.1:51801,fd42:3::1" >>"$TMP/mb.log" 2>&1 & PIDS+=($!)
  wait_if "$A" "$ia"; wait_if "$B" "$ib"; sleep 1
  measure "$label" fd42:3::2
  stop_all_wg
}
ip netns exec "$A" "$MESHDRAIN" mesh keygen --state-dir "$TMP/a" --name a >/dev/null 2>&1
ip netns exec "$B" "$MESHDRAIN" mesh keygen --state-dir "$TMP/b" --name b >/dev/null 2>&1
pa=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["public_key"])' "$TMP/a/node.csr.json")
pb=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["public_key"])' "$TMP/b/node.csr.json")
ours "meshdrain userspace"
ours "meshdrain (no offload)" MESHDRAIN_WG_OFFLOAD=0

by_hand "wireguard-go" fd42:1 env WG_PROCESS_FOREGROUND=1 wireguard-go -f
if [ -x "$BORINGTUN" ]; then
  by_hand "boringtun-cli" fd42:2 env WG_SUDO=1 "$BORINGTUN" -f --disable-drop-privileges
else
  printf '| %-22s | %8s | %8s | %8s |\n' "boringtun-cli" "n/a" "n/a" "n/a"
  echo "(boringtun-cli not found: cargo install boringtun-cli --root /tmp/btcli)"
fi
# The issue's goal: our mesh >= 2x the better reference, same run.
python3 - "$TMP/rows" <<'PY'
import sys
rows = {l.split("|")[0]: [float(x) for x in l.strip().split("|")[1:]] for l in open(sys.argv[1])}
ours = rows.get("meshdrain userspace")
refs = [rows[k] for k in ("wireguard-go", "boringtun-cli") if k in rows]
if ours and refs:
    for i, what in enumerate(("1 stream", "4 streams")):
        best = max(r[i] for r in refs)
        print(f"ratio {what}: meshdrain / best reference = {ours[i]:.2f} / {best:.2f} = {ours[i] / best:.1f}x")
PY
