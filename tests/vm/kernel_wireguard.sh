#!/bin/bash
# Scenario vm_kernel_wireguard: three network namespaces on a bridge (underlay
# 198.18.0.0/24); a and b run kernel WireGuard, c runs a userspace implementation; every
# pair must talk over the tunnel (mesh addresses in fd42:8::/48): ping and a TCP transfer.
# VM_WG_MODE=meshdrain (default): our mesh backends (`meshdrain mesh up --backend kernel`,
#   defguard WGApi<Kernel> over netlink, and `--backend userspace`, boringtun on TUN);
# VM_WG_MODE=raw: ip/wg and wireguard-go, the guest plumbing without our code.
. "$(dirname "$0")/lib.sh"
mode=${VM_WG_MODE:-meshdrain}
PREFIX=fd42:8
for m in wireguard veth tun bridge; do modprobe $m; done
ip link set lo up
ip link add br0 type bridge
ip link set br0 up
mkdir -p /run/wireguard
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for n in a b c; do ip netns del $n 2>/dev/null || true; done
}
trap cleanup EXIT
i=0
for n in a b c; do
  i=$((i + 1))
  ip netns add $n
  ip link add v$n type veth peer name eth0 netns $n
  ip link set v$n master br0 up
  ip -n $n addr add 198.18.0.$i/24 dev eth0
  ip -n $n link set eth0 up
  ip -n $n link set lo up
done
# wg(8) reaches a userspace device through /run/wireguard/<name>.sock, which every
# namespace sees: interface names are unique across the namespaces.
declare -A ifn=([a]=wga [b]=wgb [c]=wgc) kind=([a]=kernel [b]=kernel [c]=userspace) pub

case $mode in
  raw)
    step "raw: kernel WireGuard (ip/wg) in a and b, wireguard-go in c"
    declare -A priv
    for n in a b c; do priv[$n]=$(wg genkey); pub[$n]=$(wg pubkey <<<"${priv[$n]}"); done
    ip -n a link add wga type wireguard
    ip -n b link add wgb type wireguard
    WG_PROCESS_FOREGROUND=1 ip netns exec c wireguard-go wgc >/tmp/wg-go.log 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do ip -n c link show wgc >/dev/null 2>&1 && [ -S /run/wireguard/wgc.sock ] && break; sleep 0.1; done
    ip -n c link show wgc >/dev/null 2>&1 || fail "wireguard-go did not create wgc in c: $(cat /tmp/wg-go.log)"
    i=0
    for n in a b c; do
      i=$((i + 1))
      echo "${priv[$n]}" >/tmp/key.$n
      ip netns exec $n wg set ${ifn[$n]} private-key /tmp/key.$n listen-port 51820
      j=0
      for p in a b c; do
        j=$((j + 1))
        [ $p = $n ] && continue
        ip netns exec $n wg set ${ifn[$n]} peer "${pub[$p]}" endpoint 198.18.0.$j:51820 allowed-ips $PREFIX::$j/128
      done
      ip -n $n addr add $PREFIX::$i/48 dev ${ifn[$n]}
      ip -n $n link set ${ifn[$n]} mtu 1420 up
    done
    ;;
  meshdrain)
    step "meshdrain mesh up: --backend kernel in a and b, --backend userspace in c"
    for n in a b c; do
      pub[$n]=$(NO_COLOR=1 "$MESHDRAIN_BIN" mesh keygen --state-dir /tmp/mesh-$n --name $n | awk '/^public key:/ {print $3}')
      [ -n "${pub[$n]}" ] || fail "meshdrain mesh keygen printed no public key for $n"
    done
    i=0
    for n in a b c; do
      i=$((i + 1))
      peers=()
      j=0
      for p in a b c; do
        j=$((j + 1))
        [ $p = $n ] || peers+=(--peer "${pub[$p]},198.18.0.$j:51820,$PREFIX::$j")
      done
      NO_COLOR=1 ip netns exec $n "$MESHDRAIN_BIN" mesh up --interface ${ifn[$n]} --state-dir /tmp/mesh-$n \
        --address $PREFIX::$i --listen-port 51820 --backend ${kind[$n]} "${peers[@]}" >/tmp/mesh-$n.log 2>&1 &
      pids+=($!)
    done
    i=0
    for n in a b c; do
      i=$((i + 1))
      for _ in $(seq 100); do ip -n $n addr show ${ifn[$n]} 2>/dev/null | grep -q "inet6 $PREFIX::$i/" && break; sleep 0.1; done
      ip -n $n addr show ${ifn[$n]} 2>/dev/null | grep -q "inet6 $PREFIX::$i/" ||
        fail "meshdrain mesh up gave $n no ${ifn[$n]} with a mesh address: $(cat /tmp/mesh-$n.log)"
    done
    ;;
  *) fail "VM_WG_MODE=$mode: want meshdrain or raw" ;;
esac

# The link types prove which implementation runs: wireguard (kernel) vs tun (userspace).
for n in a b c; do
  d=$(ip -n $n -d link show ${ifn[$n]})
  if [ ${kind[$n]} = kernel ]; then t=wireguard; else t=tun; fi
  grep -qE "^ +$t( |$)" <<<"$d" || fail "$n: ${ifn[$n]} is not a $t link (${kind[$n]}): $d"
  echo "$n: ${ifn[$n]} is a $t link ($(ip -n $n -6 addr show ${ifn[$n]} | awk '/inet6 fd/ {print $2}'))"
done

# TCP over the mesh: a python3 server in every namespace answers a payload's sha256.
SERVER='import hashlib, socket
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 7000)); s.listen(8); s.settimeout(120)
while True:
    c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256()
    while (b := c.recv(65536)): h.update(b)
    c.sendall(h.hexdigest().encode()); c.close()'
CLIENT='import hashlib, os, socket, sys
data = os.urandom(512 << 10)
c = socket.create_connection((sys.argv[1], 7000), timeout=30); c.sendall(data); c.shutdown(socket.SHUT_WR)
got = b"".join(iter(lambda: c.recv(4096), b"")).decode()
want = hashlib.sha256(data).hexdigest()
sys.exit(0 if got == want else f"sha256 {got!r} != {want}")'
for n in a b c; do
  ip netns exec $n timeout 300 python3 -c "$SERVER" >/tmp/tcp-$n.log 2>&1 &
  pids+=($!)
done

step "every pair over the tunnel: ping and 512 KiB over TCP"
i=0
for n in a b c; do
  i=$((i + 1))
  j=0
  for p in a b c; do
    j=$((j + 1))
    [ $p = $n ] && continue
    ok=
    for _ in 1 2 3; do ip netns exec $n ping -6 -c 1 -W 5 $PREFIX::$j >/dev/null && ok=1 && break; done
    [ -n "$ok" ] || fail "$n (${kind[$n]}) cannot ping $p (${kind[$p]}) over WireGuard"
    t0=$(now_ms)
    ip netns exec $n timeout 60 python3 -c "$CLIENT" $PREFIX::$j || fail "TCP $n -> $p over WireGuard failed"
    echo "[$mode] $n (${kind[$n]}) -> $p (${kind[$p]}): ping ok, TCP 512 KiB ok in $(($(now_ms) - t0)) ms"
  done
done
for n in a b c; do
  hs=$(ip netns exec $n wg show ${ifn[$n]} latest-handshakes | awk '$2 > 0' | wc -l)
  [ "$hs" = 2 ] || fail "$n has $hs handshakes, want 2"
done
step "ok"
