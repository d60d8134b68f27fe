#!/bin/bash
# Scenario vm_exposure_bench (issue 20's benchmark, run by bench/vm.sh; docs/benchmarks.md,
# "Exposures in the VM"). One guest, one source: our target (`meshdrain export serve`)
# serving a VM_BENCH_MIB MiB file of random bytes from tmpfs (every read of it is a page
# cache hit in the target, whichever path reads it first). Measured:
#  1. VM_BENCH_ROUNDS rounds, each: three fresh clones at once, one per exposure (a
#     `clone hold` holder as the agent starts it, `expose` = fuse-loop, nbd, ublk;
#     hydration never started) and the LUN itself through open-iscsi (/dev/sdX after
#     iscsiadm login); one Python process reads 4 KiB O_DIRECT from all four interleaved
#     in blocks of VM_BENCH_BLOCK (see ilat: the host's drifting load weighs on every path
#     alike), VM_BENCH_READS reads
#     each within a distinct 64 KiB region (on-demand: the region is not here), the same
#     offsets again (the region is fetched whole), 2 s (the engine's commit tick), the same
#     offsets a third time (hydrated); then the plain remote read of the same LUN through
#     our initiator (the ondemand_latency example, MESHDRAIN_ONDEMAND_BIN, when bench/vm.sh
#     passes it: the median of reads through the engine's foreground session, and the
#     engine's own on-demand and hydrated reads without any exposure). Pooled p50/p90 per
#     path (`XBENCH read`) and the median of per-round ratios (`XBENCH ratio`).
#  2. VM_BENCH_ROUNDS rounds of hydration of the whole source through each exposure (a
#     holder per exposure, no rate limit, the agent's default tuning, dest on an ext4
#     virtio disk): the `hydrate` request to `"phase":"complete"`; each dest compared with
#     the source, then deleted; each after sync and drop_caches, on a disk written once
#     before; and the open-iscsi sequential read of the LUN (dd 1 MiB direct, no dest) as
#     context; order rotated each round. Medians: `XBENCH hydrate <path>
#     <MiB> <ms> <MiB/s>`, and the median of per-round rate ratios to fuse-loop (`XBENCH hratio`).
# VM_BENCH_TRACE=1: the latency holders log at trace for the ublk queue and the FUSE
# exposure (their per-request `took`, from the request's arrival in the handler to the
# engine's answer); the summary then splits each on-demand read of ublk and fuse-loop into
# the handler's time and the rest (the kernel, the exposure's hand-offs, the reader):
# `XBENCH note: split ...`. nbd has no per-request trace.
# Env: VM_BENCH_MIB (default 256), VM_BENCH_READS (default 100, at least 50),
# VM_BENCH_ROUNDS (default 5), VM_BENCH_BLOCK (default 10), VM_BENCH_TRACE,
# VM_BENCH_PARTS (default "lat hyd": the reads, the hydrations; one alone for a quicker look),
# VM_BENCH_EXPOSURES (default "fuse-loop nbd ublk"; fewer: fewer holders served at once), MESHDRAIN_BIN,
# MESHDRAIN_UBLK_KO, MESHDRAIN_ONDEMAND_BIN
# (optional); disk /dev/vdb (VM_BENCH_MIB + 64 MiB, sparse on the host) for the dests.
. "$(dirname "$0")/lib.sh"
MIB=${VM_BENCH_MIB:-256}
N=${VM_BENCH_READS:-100}
ROUNDS=${VM_BENCH_ROUNDS:-5}
BLOCK=${VM_BENCH_BLOCK:-10}
PARTS=${VM_BENCH_PARTS:-lat hyd}
EXPOSURES=${VM_BENCH_EXPOSURES:-fuse-loop nbd ublk}
# Whether part $1 (lat: the interleaved reads, hyd: the hydrations) is to run.
part() { [[ " $PARTS " == *" $1 "* ]]; }
HOLDER_LOG=info
if [ "${VM_BENCH_TRACE:-}" = 1 ]; then HOLDER_LOG=info,meshdrain_clone::ublk::queue=trace,meshdrain_clone::expose=trace; fi
IQN=iqn.2026-11.invalid.meshdrain:vm-bench
PORTAL=127.0.0.1:3260
URL="iscsi://$PORTAL/$IQN/1"
W=/tmp/xbench
C=$W/run/clones
D=$W/disk
DISK=/dev/vdb
REGIONS=$((MIB * 16))
[ "$N" -ge 50 ] || fail "VM_BENCH_READS=$N: at least 50 samples"
[ "$N" -le "$REGIONS" ] || fail "VM_BENCH_READS=$N: more reads than the ${MIB} MiB source has 64 KiB regions"
mkdir -p $W $C $D
chmod 700 $C
pids=()
cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    for f in $C/*.log $W/export.log $W/iscsid.log; do echo "--- $f"; tail -n 15 "$f" 2>/dev/null || true; done
    echo "--- dmesg"; dmesg | tail -n 25
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  iscsiadm -m node --logoutall=all >/dev/null 2>&1 || true
  mountpoint -q $D && umount $D 2>/dev/null
}
trap cleanup EXIT

# One request line to holder $1's control socket; prints the reply line (lib.sh's `ask`
# speaks to the one holder, db, of the other scenarios).
ask() { ask_socket "$C/$1.sock" "$2"; }
holder_pid() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$C/$1.state"; }
serves() { [ "$(holder_pid "$1" 2>/dev/null)" = "$2" ] && ask "$1" '{"op":"hello"}' 2>/dev/null | grep -q '"ok":true'; }

# Starts holder $1 (exposure $2, dest $3) from a spec as the agent writes it; sets HPID and DEV.
start_holder() {
  local name=$1 expose=$2 dest=$3
  rm -f "$dest" "$dest.meta" "$C/$name.state"
  cat >"$C/$name.json" <<EOF
{"volume":"$name","export":{"addr":"$PORTAL","iqn":"$IQN"},"initiator_iqn":"iqn.2026-11.invalid.meshdrain:vm-bench-$name",
 "epoch":1,"size":$((MIB << 20)),"dest":"$dest","metadata":"$dest.meta","rate_limit":null,"verify":false,
 "region_size":65536,"parallelism":4,"batch_regions":32,"read_through":true,"prepare_delay_ms":0,
 "mountpoint":"$W/run/fuse/$name","link":"$W/run/dev/$name","hydrating":false,"workload_started":true,
 "start_hook":null,"source_lost":false,"expose":"$expose"}
EOF
  MESHDRAIN_LOG=$HOLDER_LOG NO_COLOR=1 "$MESHDRAIN_BIN" clone hold --spec "$C/$name.json" </dev/null >/dev/null 2>>"$C/$name.log" &
  HPID=$!
  pids+=($HPID)
  wait_for 60 serves "$name" $HPID || fail "holder $name ($expose) did not serve: $(tail -n 5 "$C/$name.log")"
  DEV=$(readlink "$W/run/dev/$name")
  [ -b "$DEV" ] || fail "holder $name: its link points at '$DEV', not a block device"
  [ "$(blockdev --getsize64 "$DEV")" = $((MIB << 20)) ] || fail "$DEV is not ${MIB} MiB"
}
# Stops holder $1 (pid $2) and checks its device link is gone.
stop_holder() {
  ask "$1" '{"op":"stop"}' | grep -q '"ok":true' || fail "holder $1 refused stop"
  wait_for 30 bash -c "! kill -0 $2 2>/dev/null" || fail "holder $1 did not exit on stop"
  [ ! -L "$W/run/dev/$1" ] || fail "holder $1 left its link after stop"
}

# One interleaved latency pass set over devices `label=dev` ($3...): BLOCK 4 KiB O_DIRECT
# reads of one device, then the same offsets on the next (the devices' order rotated each
# block), until N: the host's load drifting over the run weighs on every path alike, and a
# path's threads stay warm within a block. (Under TCG, on-demand reads with the three clones
# served at once measured 2-3x those of one clone alone, read by read and by blocks alike:
# docs/benchmarks.md, "Exposures in the VM".) Offsets: N distinct 64 KiB
# regions spread over the volume (a multiplicative walk from salt $2; distinct while N <=
# their count, a power of two). Passes: on-demand (each clone's region is not here yet),
# a second one (the regions fetched whole), 2 s (the engine's commit tick: the regions'
# bits are set), hydrated. A label `plain:` (the LUN itself) is read in the first and the
# last pass. Samples (us, one a line) go to $1/<label>-ondemand, -hydrated, or $1/<label>.
ilat() {
  python3 - "$N" "$BLOCK" "$REGIONS" "$@" <<'EOF'
import mmap, os, sys, time
n, block, regions, out, salt = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
devs = []
for a in sys.argv[6:]:
    label, dev = a.split("=", 1)
    devs.append((label, os.open(dev, os.O_RDONLY | os.O_DIRECT)))
buf = mmap.mmap(-1, 4096)
offsets = [((i * 2654435761 + salt) % regions) * 65536 + (i % 16) * 4096 for i in range(n)]
assert len({o >> 16 for o in offsets}) == n, "regions not distinct"
with open(os.path.join(out, "offsets"), "w") as f:
    f.write("".join("%d\n" % o for o in offsets))
def rotate(v, k):
    k %= len(v)
    return v[k:] + v[:k]
def one_pass(which, suffix):
    t = {label: [] for label, _ in which}
    for b in range(0, n, block):
        for label, fd in rotate(which, b // block):
            for off in offsets[b:b + block]:
                # CLOCK_MONOTONIC, as the holders' trace stamps: `summary` lines them up.
                t0 = time.monotonic_ns()
                if os.preadv(fd, [buf], off) != 4096:
                    sys.exit("%s: short read at %d" % (label, off))
                t[label].append((off, t0 // 1000, time.monotonic_ns() // 1000))
    for label, v in t.items():
        if suffix is not None:
            name = label.removeprefix("plain:") + ("" if label.startswith("plain:") else suffix)
            with open(os.path.join(out, name), "a") as f:
                f.write("".join("%d\n" % (b - a) for _, a, b in v))
            with open(os.path.join(out, name + "-stamps"), "a") as f:
                f.write("".join("%d %d %d\n" % x for x in v))
clones = [d for d in devs if not d[0].startswith("plain:")]
one_pass(devs, "-ondemand")   # a fresh region each time: an on-demand read from the source
one_pass(clones, None)        # a second read in each region fetches it whole
time.sleep(2)                 # the engine's commit tick: the regions' bits are set
one_pass(devs, "-hydrated")   # now from the dest
EOF
}
# Summarizes the samples under $W/s: per path, every round pooled (`XBENCH read <path> p50
# p90`), and per round the path's median over the reference's median in the same round,
# the median of those ratios (`XBENCH ratio <path> <ref> <ratio>`: paired, drift cancels);
# hydration: median ms (`XBENCH hydrate`) and the paired ratio of rates to fuse-loop.
summary() {
  python3 - "$W/s" "$MIB" <<'EOF'
import os, sys
root, mib = sys.argv[1], int(sys.argv[2])
rounds = sorted(d for d in os.listdir(root) if d.startswith("r"))
def load(r, name):
    p = os.path.join(root, r, name)
    return sorted(float(l) for l in open(p) if l.strip()) if os.path.exists(p) else []
def q(v, f): return v[min(len(v) - 1, int(len(v) * f))]
def med(v): return sorted(v)[len(v) // 2]
lat = ["fuse-loop-ondemand", "nbd-ondemand", "ublk-ondemand", "fuse-loop-hydrated", "nbd-hydrated", "ublk-hydrated",
       "open-iscsi", "ours", "engine-ondemand", "engine-hydrated"]
for name in lat:
    v = sorted(x for r in rounds for x in load(r, name))
    if not v:
        continue
    # ondemand_latency gives one median per round: their median, no p90.
    single = all(len(load(r, name)) <= 1 for r in rounds)
    print("XBENCH read %s %d %s (%d samples, %d rounds)" % (name, q(v, 0.5), "-" if single else "%d" % q(v, 0.9), len(v), len(rounds)))
    for ref in ["ours", "open-iscsi"]:
        rs = [q(load(r, name), 0.5) / q(load(r, ref), 0.5) for r in rounds if load(r, name) and load(r, ref) and q(load(r, ref), 0.5) > 0]
        if rs and name != ref:
            print("XBENCH ratio %s %s %.3f (per round: %s)" % (name, ref, med(rs), " ".join("%.2f" % x for x in rs)))
for name in ["fuse-loop", "nbd", "ublk", "open-iscsi-read"]:
    v = [x for r in rounds for x in load(r, "hyd-" + name)]
    if not v:
        continue
    ms = max(med(v), 1)
    print("XBENCH hydrate %s %d %d %.1f (median of %d)" % (name, mib, ms, mib * 1000 / ms, len(v)))
    rs = [load(r, "hyd-fuse-loop")[0] / load(r, "hyd-" + name)[0] for r in rounds if load(r, "hyd-" + name) and load(r, "hyd-fuse-loop") and load(r, "hyd-" + name)[0] > 0]
    if rs:
        print("XBENCH hratio %s %.2f (per round: %s)" % (name, med(rs), " ".join("%.2f" % x for x in rs)))
# VM_BENCH_TRACE: each on-demand offset's first request in the holder's trace (the read
# that fetched: the handler's `took`), against the reader's sample for that offset.
import re
unit = {"ns": 1e-3, "µs": 1, "us": 1, "ms": 1e3, "s": 1e6}
pat = {"ublk": re.compile(r"ublk request op=0 offset=(\d+) len=(\d+) took=([\d.]+)(ns|µs|us|ms|s)\b"),
       "fuse-loop": re.compile(r"fuse read offset=(\d+) size=(\d+) took=([\d.]+)(ns|µs|us|ms|s)\b")}
for x, p in pat.items():
    took, total = [], []
    for r in rounds:
        lp, op = os.path.join(root, r, "log-" + x), os.path.join(root, r, "offsets")
        if not (os.path.exists(lp) and os.path.exists(op)):
            continue
        reqs = [(int(m.group(1)), int(m.group(2)), float(m.group(3)) * unit[m.group(4)])
                for m in p.finditer(open(lp, errors="replace").read())]
        offs = [int(l) for l in open(op) if l.strip()]
        samples = [float(l) for l in open(os.path.join(root, r, x + "-ondemand")) if l.strip()]
        for off, us in zip(offs, samples):
            t = next((t for o, n, t in reqs if o <= off < o + n), None)
            if t is not None:
                took.append(t)
                total.append(us)
    if took:
        rest = sorted(a - b for a, b in zip(total, took))
        print("XBENCH note: split %s on-demand (%d reads traced): the handler (request in the holder to the engine's "
              "answer) p50 %d us, p90 %d us; the rest (kernel, hand-offs, reader) p50 %d us, p90 %d us; reader's p50 %d us"
              % (x, len(took), q(sorted(took), 0.5), q(sorted(took), 0.9), q(rest, 0.5), q(rest, 0.9), q(sorted(total), 0.5)))
# ublk's stamps (CLOCK_MONOTONIC µs in its trace and in the reader's samples): each read
# split into the reader's submit to the queue thread's wake-up, the wake-up to the
# handler, the handler, the handler's end to the queue thread's next submit (the commit),
# and that submit to the reader's return.
req = re.compile(r"ublk request op=0 offset=(\d+) len=(\d+) took=\S+ woke_us=(\d+) start_us=(\d+) end_us=(\d+)")
sub = re.compile(r"ublk submit submit_us=(\d+)")
for kind in ["ondemand", "hydrated"]:
    parts = []
    for r in rounds:
        lp, sp = os.path.join(root, r, "log-ublk"), os.path.join(root, r, "ublk-%s-stamps" % kind)
        if not (os.path.exists(lp) and os.path.exists(sp)):
            continue
        text = open(lp, errors="replace").read()
        reqs = sorted((int(m.group(3)), int(m.group(1)), int(m.group(2)), int(m.group(4)), int(m.group(5)))
                      for m in req.finditer(text) if int(m.group(3)) > 0)
        subs = sorted(int(m.group(1)) for m in sub.finditer(text))
        import bisect
        for line in open(sp):
            off, t0, t1 = map(int, line.split())
            hit = [q_ for q_ in reqs if t0 <= q_[0] <= t1 and q_[1] <= off < q_[1] + q_[2]]
            if not hit:
                continue
            woke, _, _, start, end = hit[0]
            i = bisect.bisect_left(subs, end)
            if i == len(subs) or subs[i] > t1:
                continue
            parts.append((woke - t0, start - woke, end - start, subs[i] - end, t1 - subs[i], t1 - t0))
    if parts:
        cols = list(zip(*parts))
        print("XBENCH note: stamps ublk %s (%d reads): reader -> queue thread awake p50 %d us; -> handler %d; handler %d; "
              "-> commit submitted %d; -> reader back %d; whole %d" % ((kind, len(parts)) + tuple(med(list(c)) for c in cols)))
EOF
}
# The exposures (VM_BENCH_EXPOSURES), rotated by round $1: none always goes first.
order() { local a=($EXPOSURES) i; for i in "${!a[@]}"; do echo "${a[$((($1 + i) % ${#a[@]}))]}"; done; }

# Prints `<p50> <p90>` of the numbers in file $1 (several rounds pooled).
pooled() {
  python3 -c '
import sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
print("%d %d" % (v[len(v) // 2], v[min(len(v) - 1, (len(v) * 9) // 10)]))' "$1"
}

# Holder $1: sends `hydrate`, polls `progress` every 50 ms on the same connection until
# complete (bounded); prints the milliseconds from the request to the complete reply, and
# the bytes the engine fetched from the source and passed through to the workload, and the
# CPU ticks of holder $3's threads meanwhile (by name: `clone-hydrate:12+40 ...`).
hydrate_ms() {
  python3 - "$C/$1.sock" "$2" "$3" <<'EOF'
import glob, json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
f = s.makefile()
limit, pid = float(sys.argv[2]), sys.argv[3]
# Per thread of the holder (tid -> name, user, system ticks), sampled at each poll: the
# hydration's threads end with it, so their last sample is their total.
first, last = {}, {}
def sample():
    for stat in glob.glob("/proc/%s/task/*/stat" % pid):
        try:
            text = open(stat).read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        v = text[text.rindex(")") + 2:].split()
        tid = stat.split("/")[4]
        last[tid] = (name, int(v[11]), int(v[12]))
        first.setdefault(tid, last[tid])
def ask(op):
    s.sendall(json.dumps({"op": op}).encode() + b"\n")
    r = json.loads(f.readline())
    if not r.get("ok"):
        sys.exit("%s refused: %s" % (op, r))
    return r.get("progress") or {}
sample()
t0 = time.monotonic()
p = ask("hydrate")
while p.get("phase") != "complete":
    if time.monotonic() - t0 > limit:
        sys.exit("not complete after %d s (phase %s)" % (limit, p.get("phase")))
    time.sleep(0.05)
    sample()
    p = ask("progress")
ms = int((time.monotonic() - t0) * 1000)
by = {}
for tid, (name, u, sy) in last.items():
    _, u0, s0 = first[tid]
    k = name.rstrip("0123456789")
    a = by.setdefault(k, [0, 0])
    a[0] += u - u0
    a[1] += sy - s0
threads = " ".join("%s:%d+%d" % (k, u, sy) for k, (u, sy) in sorted(by.items(), key=lambda kv: -sum(kv[1])) if u + sy)
print(ms, p.get("fetched_bytes", -1), p.get("read_through_bytes", -1), threads)
EOF
}
# The guest's CPU ticks (user system idle iowait softirq, all CPUs) and holder $1's own
# (user system), one line: two of them around a hydration say where its time went.
cpu_snap() {
  local c
  read -r _ u n sy id io _ si _ </proc/stat
  c=$(awk '{print $14, $15}' "/proc/$1/stat" 2>/dev/null || echo "0 0")
  echo "$((u + n)) $sy $id $io $si $c"
}
# `XBENCH r<round> hydcpu <path> ...`: the ticks (1/100 s) between two cpu_snap lines.
cpu_delta() {
  local a=($2) b=($3)
  echo "XBENCH r$1 hydcpu $4 guest user $((b[0] - a[0])) sys $((b[1] - a[1])) idle $((b[2] - a[2])) iowait $((b[3] - a[3])) softirq $((b[4] - a[4])) holder user $((b[5] - a[5])) sys $((b[6] - a[6]))"
}
rate() { awk -v m="$1" -v t="$2" 'BEGIN { printf "%.1f", m * 1000 / (t > 0 ? t : 1) }'; }

step "modules: loop, fuse, nbd, ublk_drv, iSCSI initiator"
for m in loop fuse nbd ext4 sd_mod iscsi_tcp crc32c_generic; do modprobe $m; done
grep -qw ublk_drv /proc/modules || insmod "$MESHDRAIN_UBLK_KO"
wait_for 5 test -c /dev/ublk-control || fail "no /dev/ublk-control after insmod $MESHDRAIN_UBLK_KO"
[ -d /sys/module/nbd ] || fail "no /sys/module/nbd after modprobe nbd"
ip link set lo up
echo "XBENCH meta kernel $(uname -r) source ${MIB}MiB reads $N rounds $ROUNDS block $BLOCK"

step "source: ${MIB} MiB of random bytes on tmpfs, served by our target"
SRC=$W/src.img
head -c $((MIB << 20)) /dev/urandom >$SRC
NO_COLOR=1 "$MESHDRAIN_BIN" export serve --listen $PORTAL --iqn $IQN $SRC >$W/export.log 2>&1 &
pids+=($!)
wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/3260" 2>/dev/null || fail "target not listening"
[ -b $DISK ] || fail "no $DISK for the hydration dests"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 $DISK
mount $DISK $D
# The disk is a sparse file on the host: the first write to any block of it costs the host
# an allocation, which the first hydration measured paid alone (0.55x in its round). Write
# the dests' blocks once before anything is timed.
dd if=/dev/zero of=$D/warm bs=1M count=$MIB oflag=direct status=none || fail "warming $DISK failed"
rm -f $D/warm
sync

step "open-iscsi: login (the session stays for the rounds)"
open_iscsi_login iqn.2026-11.invalid.meshdrain:vm-bench-open-iscsi

for r in $(seq 1 "$ROUNDS"); do
  mkdir -p "$W/s/r$r"
  part lat || continue
  step "round $r: fresh clones through fuse-loop, nbd and ublk; $N interleaved reads each with open-iscsi"
  devs=()
  hp=()
  for x in $(order "$r"); do
    start_holder "lat-$x" "$x" "$W/lat-$x.img"
    devs+=("$x=$DEV")
    hp+=("lat-$x:$HPID")
  done
  ilat "$W/s/r$r" $((r * 7919)) "${devs[@]}" "plain:open-iscsi=$SD" || fail "interleaved reads failed"
  for h in "${hp[@]}"; do stop_holder "${h%%:*}" "${h##*:}"; done
  # The holders' logs of this round (with VM_BENCH_TRACE, their per-request trace lines).
  for x in fuse-loop nbd ublk; do mv "$C/lat-$x.log" "$W/s/r$r/log-$x" 2>/dev/null || true; done
  rm -f $W/lat-*.img $W/lat-*.img.meta
  for k in fuse-loop-ondemand nbd-ondemand ublk-ondemand fuse-loop-hydrated nbd-hydrated ublk-hydrated open-iscsi; do
    echo "XBENCH r$r $k $(pooled "$W/s/r$r/$k")"
  done
  if [ -n "${MESHDRAIN_ONDEMAND_BIN:-}" ]; then
    step "round $r: plain remote read through our initiator (ondemand_latency, $N reads)"
    mkdir -p $W/od
    read -r plain un _ hy < <(timeout 300 "$MESHDRAIN_ONDEMAND_BIN" "$URL" $W/od "$N") || fail "ondemand_latency failed"
    echo "XBENCH r$r ours $plain, engine on-demand $un, engine hydrated $hy (medians)"
    echo "$plain" >"$W/s/r$r/ours"
    echo "$un" >"$W/s/r$r/engine-ondemand"
    echo "$hy" >"$W/s/r$r/engine-hydrated"
    rm -rf $W/od
  fi
done
[ -n "${MESHDRAIN_ONDEMAND_BIN:-}" ] ||
  echo "XBENCH note: no MESHDRAIN_ONDEMAND_BIN: the plain read through our initiator is not measured (bench/vm.sh passes it)"

SUM=$(sha256sum <$SRC | cut -d' ' -f1)
for r in $(seq 1 "$ROUNDS"); do
  part hyd || continue
  step "round $r: open-iscsi sequential read of the ${MIB} MiB LUN (context)"
  t0=$(now_ms)
  dd if="$SD" of=/dev/null bs=1M count="$MIB" iflag=direct status=none || fail "sequential read of $SD failed"
  ms=$(($(now_ms) - t0))
  echo "XBENCH r$r open-iscsi-read $ms ms"
  echo $ms >"$W/s/r$r/hyd-open-iscsi-read"
  for x in $(order "$r"); do
    step "round $r: hydration of ${MIB} MiB through $x (no rate limit)"
    # Each from the same state: the previous dest's writeback and removal done, no cache
    # (without this the first hydration of a round paid for what came before it).
    sync
    echo 3 >/proc/sys/vm/drop_caches
    sleep 1
    start_holder "hyd-$x" "$x" "$D/hyd-$x.img"
    c0=$(cpu_snap $HPID)
    read -r ms fetched through threads < <(hydrate_ms "hyd-$x" $((60 + MIB * 4)) $HPID) || fail "hydration through $x did not complete"
    [ -n "$ms" ] || fail "hydration through $x did not complete"
    cpu_delta "$r" "$c0" "$(cpu_snap $HPID)" "$x"
    echo "XBENCH r$r hydthreads $x (user+system ticks during the hydration, by thread name) $threads"
    echo "XBENCH r$r hydrate $x $ms ms (fetched $fetched bytes, passed through $through)"
    echo "$ms" >"$W/s/r$r/hyd-$x"
    stop_holder "hyd-$x" $HPID
    [ "$(sha256sum <"$D/hyd-$x.img" | cut -d' ' -f1)" = "$SUM" ] || fail "the dest hydrated through $x differs from the source"
    rm -f "$D/hyd-$x.img" "$D/hyd-$x.img.meta"
  done
done
iscsiadm -m node --logoutall=all >/dev/null
summary
echo "XBENCH note: kernel I/O error lines during the run: $(dmesg | grep -cE 'I/O error|Buffer I/O' || true)"
echo "XBENCH done: parts $PARTS run through every exposure, every dest equal to the source"
step "ok"
