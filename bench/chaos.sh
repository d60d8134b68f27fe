#!/usr/bin/env bash
# Chaos campaign (issue 17; docs/chaos.md): RUNS (50) runs of a 4-node fleet in network
# namespaces on the userspace WireGuard mesh, real data path (our iSCSI target, the
# userspace clone engine), an ext4 workload with checksummed, fsynced records on each
# moving volume. Each run injects one fault at a seeded random moment of the drain and
# checks afterwards: every acknowledged record reads back (except what `node lost
# --accept-data-loss` gave up), fsck clean, never two nodes serving a volume, the drain
# `drained` or stuck with a visible reason. Prints a table per fault, and last:
#   chaos: <runs> runs, <lost> records lost, <stuck> stuck without a reason
#
#   RUNS=50            runs in all, the faults taken in turn
#   FAULTS=a,b         a subset (names: `chaos faults`; default all)
#   SEED=n             run i uses seed n+i (default: a random seed per run); to replay a
#                      run: SEED=<its seed> FAULTS=<its fault> RUNS=1
#   DEADLINE=60        seconds after the drain request before a run counts as stuck
#   VOLUMES=2 SIZE_MIB=64 SEED_MIB=24 RATE=4M   moving volumes, their size, data, rate
#   PROFILE=dev        cargo profile of the binaries (release: slower build)
#   KEEP=1             keep every run's directory (default: only failed runs', without images)
#   OUT=<dir>          where results.jsonl and the runs go (default: a new /tmp/chaos-*)
# Run as root (namespaces, loop devices, FUSE, nftables): scripts/install-deps test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "chaos.sh: run as root (network namespaces, loop devices, FUSE, nftables)" >&2; exit 2; }
for t in nft e2fsck mkfs.ext4 nsenter ip losetup; do
  command -v "$t" >/dev/null || { echo "chaos.sh: $t is missing: scripts/install-deps test (nftables e2fsprogs util-linux iproute2)" >&2; exit 2; }
done
profile=${PROFILE:-dev}
cargo build --profile "$profile" -p meshdrain --bin meshdrain -p meshdrain-chaos --bin chaos >&2
outdir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
out=${OUT:-$(mktemp -d /tmp/chaos-XXXXXX)}
mkdir -p "$out"
# Copies: other builds may replace the binaries while the campaign runs.
cp "$outdir/meshdrain" "$out/meshdrain"
cp "$outdir/chaos" "$out/chaos"
chaos=$out/chaos
results=$out/results.jsonl
: >"$results"
IFS=, read -r -a faults <<<"${FAULTS:-$("$chaos" faults)}"
runs=${RUNS:-50}
deadline=${DEADLINE:-60}
echo "chaos: $runs runs of ${faults[*]} under $out" >&2

# Whatever a driver that died left: processes in its namespaces (named md<its pid>-...),
# the namespaces, loop devices and mounts under the run's directory.
cleanup_run() {
  local driver
  driver=$(cat "$1.pid" 2>/dev/null || true)
  if [ -n "$driver" ]; then
    for ns in $(ip netns list | awk '{print $1}' | grep "^md$driver-" || true); do
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
  fi
  "$chaos" sweep "$1" || true
  rm -f "$1.pid"
}
current=""
trap 'if [ -n "$current" ]; then kill "$current" 2>/dev/null; wait "$current" 2>/dev/null; cleanup_run "$dir"; fi; exit 130' INT TERM

for ((i = 0; i < runs; i++)); do
  fault=${faults[$((i % ${#faults[@]}))]}
  if [ -n "${SEED:-}" ]; then seed=$((SEED + i)); else seed=$(od -An -N6 -tu8 /dev/urandom | tr -d ' '); fi
  dir=$out/run-$i
  echo "chaos: run $((i + 1))/$runs fault=$fault seed=$seed (replay: SEED=$seed FAULTS=$fault RUNS=1 bench/chaos.sh)" >&2
  set +e
  # The driver bounds the run itself; the timeout only catches a driver that hangs.
  timeout -k 10 $((deadline + 180)) "$chaos" run --fault "$fault" --seed "$seed" --dir "$dir" --bin "$out/meshdrain" \
    --deadline-s "$deadline" --volumes "${VOLUMES:-2}" --size-mib "${SIZE_MIB:-64}" --seed-mib "${SEED_MIB:-24}" \
    --rate "${RATE:-4M}" >"$dir.json" 2>"$dir.err" &
  current=$!
  wait "$current"
  rc=$?
  current=""
  set -e
  if [ $rc -ne 0 ] || ! [ -s "$dir.json" ]; then
    printf '{"fault":"%s","seed":%s,"plan":null,"completed":false,"stuck":false,"stuck_reason":null,"state":"","drain_s":null,"records_acked":0,"records_lost":0,"lost_names":[],"accepted_loss":0,"accepted_but_present":0,"gone_with_source":0,"unverified":0,"fsck_clean":true,"fsck_errors":[],"two_writers":[],"io_errors":0,"injected_at_s":null,"injected_phase":"","target":"","node_lost":"","error":"the driver exited %s (stderr: %s)","events":[]}\n' \
      "$fault" "$seed" "$rc" "$dir.err" >"$dir.json"
  fi
  # Whatever a dead driver left: processes in its namespaces, loop devices, mounts, namespaces.
  cleanup_run "$dir"
  cat "$dir.json" >>"$results"
  python3 - "$dir.json" >&2 <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
verdict = "completed" if d["completed"] else ("stuck: " + (d["stuck_reason"] or "NO REASON")) if d["stuck"] else "error: " + str(d["error"])
t = f'{d["drain_s"]:.1f} s' if d["drain_s"] else "-"
print(f'chaos:   {verdict}; drain {t}; hit at {d["injected_phase"] or "-"} on {d["target"] or "-"}; records {d["records_acked"]} acked, {d["records_lost"]} lost'
      + (f', {d["accepted_loss"]} accepted' if d["accepted_loss"] else "")
      + ("" if d["fsck_clean"] else "; FSCK FAILED") + ("; TWO WRITERS" if d["two_writers"] else "")
      + (f'; node lost: {d["node_lost"]}' if d["node_lost"] else ""))
PY
  failed=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(bool(d["error"] or d["records_lost"] or not d["fsck_clean"] or d["two_writers"] or (d["stuck"] and not d["stuck_reason"]))))' "$dir.json" 2>/dev/null || echo 1)
  if [ -n "${KEEP:-}" ]; then :
  elif [ "$failed" = 1 ]; then find "$dir" -name '*.img' -delete 2>/dev/null || true
  else rm -rf "$dir" "$dir.err"; fi
done
"$chaos" table "$results"
