#!/bin/bash
# Scenario vm_kernel_wireguard: three network namespaces on a bridge; a and b run kernel
# WireGuard, c runs the userspace implementation; every pair must talk over the tunnel.
# VM_WG_MODE=raw (ip/wg/wireguard-go: proves the guest plumbing, what runs today) or
# meshdrain (the agent's mesh backends via defguard_wireguard_rs: waits for the mesh issue).
. "$(dirname "$0")/lib.sh"
mode=${VM_WG_MODE:-raw}
[ "$mode" = raw ] || fail "VM_WG_MODE=$mode: only raw is built yet (meshdrain mesh backends wait for the mesh issue)"
for m in wireguard veth tun bridge; do modprobe $m; done
ip link set lo up
ip link add br0 type bridge
ip link set br0 up
declare -A priv pub
# wg(8) talks to a userspace device through /run/wireguard/<name>.sock, which every
# namespace sees: the userspace device gets its own name so wg in a and b reaches the kernel.
declare -A ifn=([a]=wg0 [b]=wg0 [c]=wgu0)
i=0
for n in a b c; do
  i=$((i + 1))
  ip netns add $n
  ip link add v$n type veth peer name eth0 netns $n
  ip link set v$n master br0 up
  ip -n $n addr add 192.0.2.$i/24 dev eth0
  ip -n $n link set eth0 up
  ip -n $n link set lo up
  priv[$n]=$(wg genkey)
  pub[$n]=$(wg pubkey <<<"${priv[$n]}")
done
cleanup() { pkill -P $$ wireguard-go 2>/dev/null || true; for n in a b c; do ip netns del $n 2>/dev/null || true; done; }
trap cleanup EXIT

step "kernel WireGuard in a and b, userspace in c"
ip -n a link add wg0 type wireguard
ip -n b link add wg0 type wireguard
mkdir -p /run/wireguard
WG_PROCESS_FOREGROUND=1 ip netns exec c wireguard-go wgu0 >/tmp/wg-go.log 2>&1 &
for _ in $(seq 100); do ip -n c link show wgu0 >/dev/null 2>&1 && [ -S /run/wireguard/wgu0.sock ] && break; sleep 0.1; done
ip -n c link show wgu0 >/dev/null 2>&1 || fail "wireguard-go did not create wgu0 in c: $(cat /tmp/wg-go.log)"
i=0
for n in a b c; do
  i=$((i + 1))
  echo "${priv[$n]}" >/tmp/key.$n
  ip netns exec $n wg set ${ifn[$n]} private-key /tmp/key.$n listen-port 51820
  j=0
  for p in a b c; do
    j=$((j + 1))
    [ $p = $n ] && continue
    ip netns exec $n wg set ${ifn[$n]} peer "${pub[$p]}" endpoint 192.0.2.$j:51820 allowed-ips 198.18.0.$j/32
  done
  ip -n $n addr add 198.18.0.$i/24 dev ${ifn[$n]}
  ip -n $n link set ${ifn[$n]} up
done
echo "a: $(ip -n a -d link show wg0 | grep -o 'wireguard' | head -1) b: $(ip -n b -d link show wg0 | grep -o 'wireguard' | head -1) c: $(ip -n c -d link show wgu0 | grep -o 'tun' | head -1)"

step "every pair over the tunnel"
i=0
for n in a b c; do
  i=$((i + 1))
  j=0
  for p in a b c; do
    j=$((j + 1))
    [ $p = $n ] && continue
    ip netns exec $n ping -c 1 -W 5 198.18.0.$j >/dev/null || fail "$n cannot reach $p over WireGuard"
    echo "$n -> $p ok"
  done
done
for n in a b c; do
  hs=$(ip netns exec $n wg show ${ifn[$n]} latest-handshakes | awk '$2 > 0' | wc -l)
  [ "$hs" = 2 ] || fail "$n has $hs handshakes, want 2"
done
step "ok"
