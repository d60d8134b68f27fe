#!/usr/bin/env bash
# Clone engine benchmark (issue #5), one run, markdown table on stdout:
#  1. hydration of a 1 GiB volume from tgtd through our initiator (meshdrain clone run)
#     vs iscsi-perf sequential read of the same LUN (the path's limit);
#  2. 4 KiB random O_DIRECT read latency through the exposed clone (FUSE + loop):
#     unhydrated (on-demand fetch of a 64 KiB region) vs hydrated, vs a plain remote
#     4 KiB read (iscsi-perf -m 1 -b 8 -r), vs a loop device on a plain file
#     (the loop-over-FUSE overhead).
# Needs root, tgt, libiscsi-bin, python3. MESHDRAIN_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MESHDRAIN_BIN:-$( [ -x target/release/meshdrain ] && echo target/release/meshdrain || echo target/debug/meshdrain )}
[ "$(id -u)" = 0 ] || { echo "bench/clone.sh needs root (loop, FUSE, tgtd)" >&2; exit 2; }
for b in tgtd tgtadm iscsi-perf python3 losetup; do command -v "$b" >/dev/null || { echo "missing $b (scripts/install-deps test)" >&2; exit 2; }; done
tmp=$(mktemp -d /var/tmp/clone-bench.XXXXXX)
pids=()
cleanup() {
  # clone run (SIGTERM: detach loop, unmount) first, then tgtd (ignores SIGTERM while it has targets)
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${plainloop:-}" ] && losetup -d "$plainloop" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
size_mib=${SIZE_MIB:-1024}
head -c "${size_mib}M" /dev/urandom >"$tmp/src.img"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ctl=$((10000 + $$ % 10000))
iqn=iqn.2026-11.dev.meshdrain:clonebench
tgtd -f --iscsi "portal=127.0.0.1:$port" -C "$ctl" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 50); do tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn" 2>/dev/null && break; sleep 0.1; done
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$tmp/src.img"
tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL
url="iscsi://127.0.0.1:$port/$iqn/1"

perf_mbs() { # extra args; prints MB/s
  iscsi-perf -i iqn.2026-11.dev.meshdrain:perf "$@" "$url" 2>&1 | tr '\r' '\n' | grep -o 'iops average [0-9]* ([0-9]* MB/s)' | tail -n1
}
seq_line=$(perf_mbs -m 32 -b 128 -t 5)
seq_mbs=$(echo "$seq_line" | grep -o '([0-9]*' | tr -d '(')
rnd_line=$(perf_mbs -m 1 -b 8 -r -t 3)
rnd_iops=$(echo "$rnd_line" | grep -o 'average [0-9]*' | grep -o '[0-9]*')
rnd64_line=$(perf_mbs -m 1 -b 128 -r -t 3)
rnd64_iops=$(echo "$rnd64_line" | grep -o 'average [0-9]*' | grep -o '[0-9]*')

# 1. hydration throughput
start=$(date +%s.%N)
"$bin" clone run --backend userspace --source "$url" --dest "$tmp/dest.img" --metadata "$tmp/meta" \
  --parallel 8 --batch 16 --json >"$tmp/hydrate.json" 2>"$tmp/hydrate.log"
end=$(date +%s.%N)
cmp "$tmp/src.img" "$tmp/dest.img" || { echo "dest differs from source" >&2; exit 1; }
hyd_mbs=$(python3 -c "print(round($size_mib*1.048576/($end-$start)))")

# 2. latency through the exposed clone: hydration held at ~1 MiB/s so reads hit unhydrated regions
rm -f "$tmp/dest2.img" "$tmp/meta2"
"$bin" clone run --backend userspace --source "$url" --dest "$tmp/dest2.img" --metadata "$tmp/meta2" \
  --rate-limit 1K --parallel 1 --batch 1 --expose "$tmp/dev/vol" --hold --json >"$tmp/expose.json" 2>"$tmp/expose.log" & pids+=($!)
for _ in $(seq 100); do [ -L "$tmp/dev/vol" ] && break; sleep 0.1; done
[ -L "$tmp/dev/vol" ] || { echo "exposure failed: $(tail -3 "$tmp/expose.log")" >&2; exit 1; }
dev=$(readlink "$tmp/dev/vol")
plainloop=$(losetup --find --show --direct-io=on "$tmp/dest.img")
lat() { # device passes seed -> "median_us p99_us"
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys, mmap, random, time
dev, passes, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
size = os.lseek(fd, 0, os.SEEK_END)
buf = mmap.mmap(-1, 4096)
rng = random.Random(seed)
offs = [rng.randrange(0, size // 65536) * 65536 + rng.randrange(0, 16) * 4096 for _ in range(300)]
for p in range(passes):
    ts = []
    for o in offs:
        t = time.perf_counter(); os.preadv(fd, [buf], o); ts.append(time.perf_counter() - t)
ts.sort()
print(f"{ts[len(ts)//2]*1e6:.0f} {ts[int(len(ts)*0.99)]*1e6:.0f}")
PY
}
read -r un_med un_p99 < <(lat "$dev" 1 1)
read -r hy_med hy_p99 < <(lat "$dev" 1 1)   # same offsets again: now hydrated
read -r pl_med pl_p99 < <(lat "$plainloop" 1 2)
remote4k_us=$(python3 -c "print(round(1e6/max(${rnd_iops:-1},1)))")
remote64k_us=$(python3 -c "print(round(1e6/max(${rnd64_iops:-1},1)))")

echo "| measure | value | reference | ratio | goal |"
echo "|---|---|---|---|---|"
echo "| hydration ${size_mib} MiB, tgtd -> our initiator -> clone (MB/s) | $hyd_mbs | iscsi-perf seq read -m 32 -b 128: $seq_mbs | $(python3 -c "print(f'{$hyd_mbs/max(${seq_mbs:-1},1):.2f}')") | >= 0.9 |"
echo "| 4 KiB random read, unhydrated (on-demand 64 KiB fetch), median / p99 us | $un_med / $un_p99 | plain remote 4 KiB read (iscsi-perf -m 1 -b 8 -r): $remote4k_us; 64 KiB: $remote64k_us | $(python3 -c "print(f'{$un_med/max($remote4k_us,1):.2f}')") | <= 1.5 |"
echo "| 4 KiB random read, hydrated, median / p99 us | $hy_med / $hy_p99 | loop on a plain file (direct I/O): $pl_med / $pl_p99 | $(python3 -c "print(f'{$hy_med/max($pl_med,1):.2f}')") | loop-over-FUSE overhead |"
echo
echo "binary: $bin; exposed loop direct I/O: $(grep -o 'direct I/O [a-z]*' "$tmp/expose.log" | head -1)"
