#!/usr/bin/env bash
# Clone engine benchmark (issue #5), one run, markdown table on stdout. Every reference
# is measured in the same run, on the same LUN:
#  1. hydration of a SIZE_MIB (default 1024) MiB volume from tgtd through our initiator
#     (meshdrain clone run, release build) onto a tmpfs dest vs iscsi-perf sequential read
#     of the same LUN (the path's limit; best of 64 KiB and 1 MiB reads at queue depth 32)
#     and vs a raw copy of the same LUN onto the same dest (qemu-img convert over libiscsi:
#     the path plus the cost of writing the dest, which on 2 cores shares the CPU);
#     and onto a dest on disk vs dd's write + fdatasync of the same size there (the dest's
#     limit: every hydrated byte is made durable before its bit);
#  2. 4 KiB random O_DIRECT read latency through the exposed clone (FUSE + loop):
#     unhydrated with hydration idle, unhydrated while hydration runs at HYD_RATE, and
#     hydrated, vs a plain remote 4 KiB read (iscsi-perf -m 1 -b 8 -r);
#  3. loop-over-FUSE overhead: hydrated reads vs a loop device on a plain file; the floor
#     that overhead puts under an unhydrated read (hydrated read + plain remote read); and
#     where an unhydrated read's time goes, phase by phase (bench/ondemand_phases.py, ftrace);
#  4. time from `clone run --expose` until the device exists (the drain's cut-over path)
#     for a CUT_GIB (4) GiB volume 5 % used in 64 KiB extents spread over it (a GET LBA
#     STATUS answer per 1024 extents, a dest on disk), against the same for a 64 MiB
#     volume with everything allocated (nothing to skip: one answer).
# Needs root, tgt, libiscsi-bin, python3. MESHDRAIN_BIN skips the build and uses that binary.
# Sources and tmpfs dests live under TMPFS_DIR (default /dev/shm); the disk dest under DISK_DIR.
# ROUNDS (3) hydration rounds; HYD_RATE (200M) for the busy latency row; REGION_SIZE (64K)
# of the exposed clones; CUT_GIB (4) the cut-over row's volume.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/clone.sh needs root (loop, FUSE, tgtd)" >&2; exit 2; }
for b in tgtd tgtadm iscsi-perf python3 losetup qemu-img; do command -v "$b" >/dev/null || { echo "missing $b (scripts/install-deps test)" >&2; exit 2; }; done
if [ -z "${MESHDRAIN_BIN:-}" ]; then
  timeout 1800 cargo build --release --quiet -p meshdrain --bin meshdrain >&2
  timeout 1800 cargo build --release --quiet -p meshdrain-iscsi --example iscsi_read >&2
  timeout 1800 cargo build --release --quiet -p meshdrain-clone --example ondemand_latency >&2
  bin=target/release/meshdrain
else
  bin=$MESHDRAIN_BIN
fi
reader=${ISCSI_READ_BIN:-target/release/examples/iscsi_read}
ondemand=${ONDEMAND_BIN:-target/release/examples/ondemand_latency}
rounds=${ROUNDS:-3}
size_mib=${SIZE_MIB:-1024}
hyd_rate=${HYD_RATE:-200M}
region=${REGION_SIZE:-64K} # region size of the exposed clones (the latency rows)
tmp=$(mktemp -d "${TMPFS_DIR:-/dev/shm}/clone-bench.XXXXXX")
disk=$(mktemp -d "${DISK_DIR:-/var/tmp}/clone-bench.XXXXXX")
pids=()
cleanup() {
  # clone runs (SIGTERM: detach loop, unmount) first, then tgtd (ignores SIGTERM while it has targets)
  [ -n "${plainloop:-}" ] && losetup -d "$plainloop" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 150); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${tgtd_pid:-}" ] && kill -9 "$tgtd_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  for m in "$tmp"/dev/*.fuse; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  rm -rf "$tmp" "$disk"
}
trap cleanup EXIT
head -c "${size_mib}M" /dev/urandom >"$tmp/src.img"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ctl=$((10000 + $$ % 10000))
iqn=iqn.2026-11.dev.meshdrain:clonebench
tgtd -f --iscsi "portal=127.0.0.1:$port" -C "$ctl" >/dev/null 2>&1 & tgtd_pid=$!
for _ in $(seq 50); do tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn" 2>/dev/null && break; sleep 0.1; done
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$tmp/src.img"
# LUN 2: CUT_GIB GiB, 5 % used in 64 KiB extents (every 20th); LUN 3: 64 MiB, all allocated
cut_gib=${CUT_GIB:-4}
python3 - "$tmp/cut.img" "$cut_gib" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
size = int(sys.argv[2]) << 30
os.ftruncate(fd, size)
chunk = os.urandom(65536)
for off in range(0, size, 20 * 65536):
    os.pwrite(fd, chunk, off)
os.close(fd)
PY
head -c 64M /dev/urandom >"$tmp/small.img"
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 2 -b "$tmp/cut.img"
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 3 -b "$tmp/small.img"
tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL
url="iscsi://127.0.0.1:$port/$iqn/1"

perf() { # extra args; prints "iops MB/s"
  timeout 60 iscsi-perf -i iqn.2026-11.dev.meshdrain:perf "$@" "$url" 2>&1 | tr '\r' '\n' \
    | grep -o 'iops average [0-9]* ([0-9]* MB/s)' | tail -n1 | tr -d '()' | awk '{print $3, $4}'
}
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/max(b,1e-9):.2f}')" "$1" "$2"; }
secs() { date +%s.%N; }
mbs() { python3 -c "import sys; print(round(float(sys.argv[1])*1.048576/(float(sys.argv[3])-float(sys.argv[2]))))" "$size_mib" "$1" "$2"; }

read -r rnd_iops _ < <(perf -m 1 -b 8 -r -t 3)
remote4k_us=$(python3 -c "print(round(1e6/max(${rnd_iops:-1},1)))")
# the engine alone (no FUSE, no loop), right after the reference: plain 4 KiB read through
# our initiator's foreground session, unhydrated (passed through / whole region), hydrated
read -r eng_plain eng_un eng_whole eng_hy < <(timeout 120 "$ondemand" "$url" "$tmp" 300)
rm -f "$tmp"/lat-*.img "$tmp"/lat-*.meta

hydrate() { # dest-dir tag extra-args...; prints MB/s; the run's CPU seconds go to $tmp/$tag.cpu
  local dir=$1 tag=$2; shift 2
  local t0 t1
  t0=$(secs)
  python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{r.ru_utime + r.ru_stime:.3f}")
sys.exit(rc)' "$tmp/$tag.cpu" \
    timeout 600 "$bin" clone run --backend userspace --source "$url" --dest "$dir/$tag.img" --metadata "$dir/$tag.meta" \
    --json "$@" >"$tmp/$tag.json" 2>"$tmp/$tag.log" || { echo "clone run $tag failed: $(tail -3 "$tmp/$tag.log")" >&2; exit 1; }
  t1=$(secs)
  cmp "$tmp/src.img" "$dir/$tag.img" || { echo "$tag: dest differs from source" >&2; exit 1; }
  mbs "$t0" "$t1"
}

median() { python3 -c "import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 2))" "$@"; }
# 1. hydration throughput (the CLI's defaults), in rounds: each round measures its own
# references right before, so a neighbour's load hits both sides alike
# An untimed copy first: the first write of a GiB into tmpfs after the LUNs were created
# costs its writer 1.5-3x the CPU of later ones, whichever tool does it.
timeout 600 qemu-img convert -O raw "$url" "$tmp/raw.img"; rm -f "$tmp/raw.img"
seq_all=(); own_all=(); hyd_all=(); ratio_all=(); cpu_all=(); raw_all=(); raw_ratio_all=(); ddt_all=()
for _ in $(seq "$rounds"); do
  # the dest alone: writing the same bytes into the same tmpfs, nothing read
  t0=$(secs); dd if="$tmp/src.img" of="$tmp/dd.img" bs=1M status=none; t1=$(secs)
  ddt_all+=("$(mbs "$t0" "$t1")"); rm -f "$tmp/dd.img"
  t0=$(secs); timeout 600 qemu-img convert -O raw "$url" "$tmp/raw.img"; t1=$(secs)
  raw=$(mbs "$t0" "$t1"); rm -f "$tmp/raw.img"
  read -r _ seq64 < <(perf -m 32 -b 128 -t 3)
  read -r _ seq1m < <(perf -m 32 -b 2048 -t 3)
  best=$(( seq64 > seq1m ? seq64 : seq1m ))
  own=$(timeout 60 "$reader" "$url" 1 32 1048576 3 2>/dev/null || echo 0)
  h=$(hydrate "$tmp" hyd)
  cpu_all+=("$(python3 -c "import sys; print(round(float(sys.argv[1]) * 1024 / float(sys.argv[2]), 3))" "$(cat "$tmp/hyd.cpu")" "$size_mib")")
  rm -f "$tmp/hyd.img" "$tmp/hyd.meta"
  seq_all+=("$best"); own_all+=("$own"); hyd_all+=("$h"); ratio_all+=("$(ratio "$h" "$best")")
  raw_all+=("$raw"); raw_ratio_all+=("$(ratio "$h" "$raw")")
done
seq_mbs=$(median "${seq_all[@]}"); own_mbs=$(median "${own_all[@]}"); hyd_mbs=$(median "${hyd_all[@]}")
t0=$(secs); dd if=/dev/zero of="$disk/dd.img" bs=1M count="$size_mib" conv=fdatasync status=none; t1=$(secs)
dd_mbs=$(mbs "$t0" "$t1"); rm -f "$disk/dd.img"
hyd_disk_mbs=$(hydrate "$disk" hyd-disk)
rm -f "$disk/hyd-disk.img" "$disk/hyd-disk.meta"

# 2. latency through the exposed clone
lat() { # device passes seed [first-region] -> "median_us p99_us"; 300 reads, one per 64 KiB region
  timeout 120 python3 - "$@" <<'PY'
import os, sys, mmap, random, time
dev, passes, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
size = os.lseek(fd, 0, os.SEEK_END)
lo = int(sys.argv[4]) if len(sys.argv) > 4 else 0
buf = mmap.mmap(-1, 4096)
rng = random.Random(seed)
regions = rng.sample(range(lo, size // 65536), 300)
offs = [r * 65536 + rng.randrange(0, 16) * 4096 for r in regions]
for p in range(passes):
    ts = []
    for o in offs:
        t = time.perf_counter(); os.preadv(fd, [buf], o); ts.append(time.perf_counter() - t)
ts.sort()
print(f"{ts[len(ts)//2]*1e6:.0f} {ts[int(len(ts)*0.99)]*1e6:.0f}")
PY
}
expose() { # tag rate; sets $dev (the clone run stays in the background; not in a subshell: pids)
  local tag=$1 rate=$2 limit=()
  [ "$rate" = none ] || limit=(--rate-limit "$rate")
  "$bin" clone run --backend userspace --source "$url" --dest "$tmp/$tag.img" --metadata "$tmp/$tag.meta" \
    "${limit[@]}" --region-size "$region" --expose "$tmp/dev/$tag" --hold --json >"$tmp/$tag.json" 2>"$tmp/$tag.log" & pids+=($!)
  for _ in $(seq 100); do [ -L "$tmp/dev/$tag" ] && break; sleep 0.1; done
  [ -L "$tmp/dev/$tag" ] || { echo "exposure failed: $(tail -3 "$tmp/$tag.log")" >&2; exit 1; }
  dev=$(readlink "$tmp/dev/$tag")
}
# hydration held at 1 KiB/s: every first read hits an unhydrated region
expose idle 1K
read -r un_med un_p99 < <(lat "$dev" 1 1)
# the same kind of reads again (other regions) with ftrace on: where the time goes
phases=$(timeout 120 python3 bench/ondemand_phases.py "$dev" 300 7 tgtd 2>&1) || phases="not traced: $phases"
# the same offsets on a clone hydrated to the end first (a read within a missing region
# passes through to the source and leaves the region to hydration, so reading the idle
# clone again would measure the source again)
expose full none
for _ in $(seq 600); do tail -n1 "$tmp/full.json" 2>/dev/null | grep -q '"phase":"complete"' && break; sleep 0.1; done
tail -n1 "$tmp/full.json" | grep -q '"phase":"complete"' || { echo "the full clone did not complete: $(tail -3 "$tmp/full.log")" >&2; exit 1; }
read -r hy_med hy_p99 < <(lat "$dev" 1 1)
# hydration running at HYD_RATE from region 0 up; reads in the upper half, which it has not reached
expose busy "$hyd_rate"
sleep 1
read -r busy_med busy_p99 < <(lat "$dev" 1 3 $(( size_mib * 16 / 2 )))
sleep 1.1
busy_at=$(tail -n1 "$tmp/busy.json" | python3 -c "import json,sys; p=json.loads(sys.stdin.read()); print(f\"{100*p['hydrated']/p['total']:.0f}% of the volume, {p['bytes_per_sec']/1e6:.0f} MB/s\")")
plainloop=$(losetup --find --show --direct-io=on "$tmp/src.img")
# 4. time until the device exists (login, open incl. what it does with the GET LBA STATUS
# answers, FUSE mount, loop), dest on disk, median of 3
until_device() { # lun tag -> seconds
  local lun=$1 tag=$2 t0 t1 p
  rm -f "$disk/$tag.img" "$disk/$tag.meta"
  t0=$(secs)
  "$bin" clone run --backend userspace --source "${url%/1}/$lun" --dest "$disk/$tag.img" --metadata "$disk/$tag.meta" \
    --rate-limit 1K --expose "$tmp/dev/$tag" --hold --json >"$tmp/$tag.json" 2>"$tmp/$tag.log" & p=$!; pids+=("$p")
  for _ in $(seq 600); do [ -L "$tmp/dev/$tag" ] && break; sleep 0.005; done
  t1=$(secs)
  [ -L "$tmp/dev/$tag" ] || { echo "exposure $tag failed: $(tail -3 "$tmp/$tag.log")" >&2; exit 1; }
  kill "$p"; for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  rm -f "$disk/$tag.img" "$disk/$tag.meta"
  python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$t0" "$t1"
}
cut_all=(); small_all=()
for i in 1 2 3; do cut_all+=("$(until_device 2 "cut$i")"); small_all+=("$(until_device 3 "small$i")"); done
read -r pl_med pl_p99 < <(lat "$plainloop" 1 2)

echo "| measure | value | reference (same run) | ratio | goal |"
echo "|---|---:|---|---:|---|"
echo "| hydration ${size_mib} MiB, tgtd -> our initiator -> clone, tmpfs dest (MB/s, median of $rounds) | $hyd_mbs | iscsi-perf seq read, qd 32, best of 64 KiB / 1 MiB: $seq_mbs | $(median "${ratio_all[@]}") (rounds: ${ratio_all[*]}) | >= 0.9 |"
echo "| same hydration (MB/s) | $hyd_mbs | raw copy of the same LUN onto the same dest (qemu-img convert, libiscsi), median: $(median "${raw_all[@]}") | $(median "${raw_ratio_all[@]}") (rounds: ${raw_ratio_all[*]}) | the path plus the dest |"
echo "| tmpfs dest alone: dd of the source file into it (MB/s, median; reads the page cache, writes what hydration writes) | $(median "${ddt_all[@]}") | iscsi-perf seq read: $seq_mbs | $(ratio "$(median "${ddt_all[@]}")" "$seq_mbs") | the dest's own bound on the first row's ratio |"
echo "| same hydration (MB/s) | $hyd_mbs | our initiator alone, seq read 1 MiB qd 32, no dest (iscsi_read): $own_mbs | $(ratio "$hyd_mbs" "$own_mbs") | cost of writing the dest |"
echo "| CPU seconds of the hydrating process per GiB, tmpfs dest (median of $rounds; steadier than MB/s on a shared machine) | $(median "${cpu_all[@]}") (rounds: ${cpu_all[*]}) | | | lower is better |"
echo "| hydration ${size_mib} MiB onto a disk dest (MB/s) | $hyd_disk_mbs | dd write + fdatasync there: $dd_mbs | $(ratio "$hyd_disk_mbs" "$(python3 -c "print(min($dd_mbs, $seq_mbs))")") | >= 0.9 of min(path, disk) |"
echo "| 4 KiB read within an unhydrated region inside the engine, no FUSE/loop (median us: passed through (default) / whole region fetched first; hydrated) | $eng_un / $eng_whole; $eng_hy | iscsi-perf 4 KiB: $remote4k_us; our initiator 4 KiB: $eng_plain | $(ratio "$eng_un" "$remote4k_us") (vs our initiator: $(ratio "$eng_un" "$eng_plain")) | <= 1.5 |"
echo "| 4 KiB random read, unhydrated, hydration idle (median / p99 us) | $un_med / $un_p99 | plain remote 4 KiB read (iscsi-perf -m 1 -b 8 -r): $remote4k_us | $(ratio "$un_med" "$remote4k_us") | <= 1.5 |"
echo "| floor of the row above for any engine behind loop + FUSE: a hydrated read through them plus a plain remote read (us) | $(python3 -c "print(round($hy_med + $remote4k_us))") | plain remote 4 KiB read: $remote4k_us | $(ratio "$(python3 -c "print($hy_med + $remote4k_us)")" "$remote4k_us") | why the row above misses 1.5 here |"
echo "| 4 KiB random read, unhydrated, hydration running at $hyd_rate (median / p99 us) | $busy_med / $busy_p99 | same: $remote4k_us (hydration at $busy_at when the reads ended) | $(ratio "$busy_med" "$remote4k_us") | <= 1.5 |"
echo "| 4 KiB random read, hydrated (median / p99 us) | $hy_med / $hy_p99 | loop on a plain file, direct I/O: $pl_med / $pl_p99 | $(ratio "$hy_med" "$pl_med") | loop-over-FUSE overhead |"
echo "| until the clone device exists, ${cut_gib} GiB 5 % used in 64 KiB extents, dest on disk (s, median of 3) | $(median "${cut_all[@]}") | same for a 64 MiB volume, all allocated: $(median "${small_all[@]}") | $(ratio "$(median "${cut_all[@]}")" "$(median "${small_all[@]}")") | cut-over cost of the scan |"
echo
echo "Where an unhydrated read's time goes (bench/ondemand_phases.py: ftrace, median us per phase, tracing adds ~1 us per event):"
echo
echo "| phase | us |"
echo "|---|---:|"
printf '%s\n' "$phases" | awk -F'\t' 'NF == 2 { print "| " $1 " | " $2 " |" } NF != 2 { print "| " $0 " | |" }'
echo
echo "binary: $bin; region (latency rows through the device) $region, hydration rows 64K; exposed loop: $(grep -o 'direct I/O [a-z]*' "$tmp/idle.log" | head -1); cores: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
