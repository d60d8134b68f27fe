#!/bin/bash
# Scenario vm_dm_clone: dm-clone over a local source disk.
#   /dev/vdb source (filled with random bytes), /dev/vdc dest, /dev/vdd metadata.
# 1. Raw dmsetup: hydration with default thresholds (1/1) and tuned ones (RATE lines), the
#    reference the agent's tuning is measured against.
# 2. Our code: `meshdrain clone run --backend dm --json` (DmClone: typed table, status
#    parsed, the agent's thresholds from the bandwidth limit): progress lines parsed,
#    hand-off to linear, bytes equal; over a source that errors (dm-error under a linear
#    swap) it reports `stalled`, and resumes to completion when the source comes back;
#    teardown leaves no dm devices.
# Env: VM_DM_MIB (size hydrated, default 64), VM_TUNED="threshold batch" (default 4096 256).
. "$(dirname "$0")/lib.sh"
SRC=/dev/vdb DST=/dev/vdc META=/dev/vdd
MIB=${VM_DM_MIB:-64}
read -r TH BATCH <<<"${VM_TUNED:-4096 256}"
REGION=8 # sectors: 4 KiB regions

load_dm_clone
SECT=$((MIB * 2048))
[ "$(sectors $SRC)" -ge "$SECT" ] || fail "source /dev/vdb smaller than ${MIB} MiB"
step "fill source ${MIB} MiB"
dd if=/dev/urandom of=$SRC bs=1M count="$MIB" oflag=direct status=none
SRC_SUM=$(head -c $((MIB << 20)) $SRC | sha256sum | cut -d' ' -f1)

# status: <start> <len> clone <meta blk size> <used>/<total> <region size> <hydrated>/<total> <hydrating> ...
hydrated() { dmsetup status "$1" | awk '{split($7, a, "/"); print a[1], a[2]}'; }

# Runs one clone over the source with the given core args, prints a RATE line.
run_clone() {
  local label=$1 core=$2
  dd if=/dev/zero of=$META bs=1M count=4 oflag=direct status=none
  dd if=/dev/zero of=$DST bs=1M count="$MIB" oflag=direct status=none
  dmsetup create cl --table "0 $SECT clone $META $DST $SRC $REGION 1 no_hydration $core"
  dmsetup mknodes cl
  read -r h total < <(hydrated cl)
  [ "$h" = 0 ] || fail "fresh clone already has $h hydrated regions"
  [ "$total" = $((SECT / REGION)) ] || fail "status total $total, want $((SECT / REGION))"
  # An on-demand read before hydration returns the source's bytes.
  cmp <(dd if=/dev/mapper/cl bs=4k count=16 skip=100 iflag=direct status=none) \
      <(dd if=$SRC bs=4k count=16 skip=100 iflag=direct status=none) || fail "on-demand read differs"
  local t0 t1 last=-1 same=0
  t0=$(now_ms)
  dmsetup message cl 0 enable_hydration
  while :; do
    read -r h total < <(hydrated cl)
    [ "$h" = "$total" ] && break
    if [ "$h" = "$last" ]; then same=$((same + 1)); else same=0; last=$h; fi
    [ $same -lt 300 ] || fail "$label: no progress for 30 s at $h/$total"
    sleep 0.1
  done
  t1=$(now_ms)
  local ms=$((t1 - t0 > 0 ? t1 - t0 : 1))
  echo "RATE $label ${MIB}MiB ${ms}ms $(awk -v m="$MIB" -v t="$ms" 'BEGIN { printf "%.1f", m * 1000 / t }') MiB/s status: $(dmsetup status cl)"
  # Hand-off: reload as linear on the dest, the source is no longer referenced.
  dmsetup suspend cl
  dmsetup reload cl --table "0 $SECT linear $DST 0"
  dmsetup resume cl
  dmsetup table cl | grep -q ' linear ' || fail "table is not linear after hand-off"
  [ "$(head -c $((MIB << 20)) /dev/mapper/cl | sha256sum | cut -d' ' -f1)" = "$SRC_SUM" ] || fail "$label: clone bytes differ"
  [ "$(head -c $((MIB << 20)) $DST | sha256sum | cut -d' ' -f1)" = "$SRC_SUM" ] || fail "$label: dest bytes differ"
  dmsetup remove cl
}

step "hydrate with default thresholds"
run_clone default ""
step "hydrate with hydration_threshold $TH hydration_batch_size $BATCH"
run_clone tuned "4 hydration_threshold $TH hydration_batch_size $BATCH"
assert_no_dm


# --- 2. Our code: meshdrain clone run --backend dm -------------------------------------
MD=("$MESHDRAIN_BIN" clone run --backend dm --region-size 4K --json)
# Checks a --json progress log: every line parses, hydrated never goes back, the last line
# is complete with every region; prints "<lines> <stalled lines> <max in-between hydrated>".
check_progress() {
  python3 - "$1" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert lines, "no progress lines"
h = [p["hydrated"] for p in lines]
assert h == sorted(h), f"hydrated went back: {h}"
last = lines[-1]
assert last["phase"] == "complete" and last["hydrated"] == last["total"] > 0, f"last line not complete: {last}"
stalled = [p for p in lines if p["phase"] == "stalled"]
mid = max([p["hydrated"] for p in lines if p["hydrated"] < p["total"]] or [0])
print(len(lines), len(stalled), mid)
PY
}
# After a run: the device is linear on the dest and both read back the source's bytes.
check_handoff() {
  local name=$1
  dmsetup table "$name" | grep -q " linear $(($(stat -c '0x%t' "$DST"))):$(($(stat -c '0x%T' "$DST"))) 0" \
    || fail "$name is not linear on $DST after hand-off: $(dmsetup table "$name")"
  dmsetup mknodes "$name"
  [ "$(head -c $((MIB << 20)) "/dev/mapper/$name" | sha256sum | cut -d' ' -f1)" = "$SRC_SUM" ] || fail "$name: clone bytes differ"
  [ "$(head -c $((MIB << 20)) $DST | sha256sum | cut -d' ' -f1)" = "$SRC_SUM" ] || fail "$name: dest bytes differ"
}
fresh() {
  dd if=/dev/zero of=$META bs=1M count=4 oflag=direct status=none
  dd if=/dev/zero of=$DST bs=1M count="$MIB" oflag=direct status=none
}

step "meshdrain clone run --backend dm (the agent's thresholds, unlimited)"
fresh
t0=$(now_ms)
NO_COLOR=1 timeout 300 "${MD[@]}" --name mdclone --source $SRC --dest $DST --metadata $META \
  >/tmp/ours.json 2>/tmp/ours.err || { cat /tmp/ours.err; fail "meshdrain clone run --backend dm failed"; }
t1=$(now_ms)
read -r n _ mid < <(check_progress /tmp/ours.json) || fail "bad progress lines: $(cat /tmp/ours.json)"
ms=$((t1 - t0 > 0 ? t1 - t0 : 1))
echo "RATE ours ${MIB}MiB ${ms}ms $(awk -v m="$MIB" -v t="$ms" 'BEGIN { printf "%.1f", m * 1000 / t }') MiB/s progress lines $n, last in-between hydrated $mid; $(grep -o 'table=[^"]*' /tmp/ours.err | head -1 || true)"
check_handoff mdclone
dmsetup remove mdclone
assert_no_dm

step "meshdrain clone run --backend dm over a source that errors: stalled, then resumes"
fresh
dmsetup create badsrc --table "0 $SECT error"
dmsetup mknodes badsrc
NO_COLOR=1 timeout 300 "${MD[@]}" --name mdstall --stall-after 2 --source /dev/mapper/badsrc --dest $DST \
  --metadata $META >/tmp/stall.json 2>/tmp/stall.err &
cl=$!
for _ in $(seq 300); do grep -q '"phase":"stalled"' /tmp/stall.json && break; kill -0 $cl 2>/dev/null || break; sleep 0.1; done
grep -q '"phase":"stalled"' /tmp/stall.json || { cat /tmp/stall.err; fail "no stalled progress line within 30 s: $(tail -3 /tmp/stall.json)"; }
grep '"phase":"stalled"' /tmp/stall.json | head -1 | sed 's/^/stalled line: /'
grep '"phase":"stalled"' /tmp/stall.json | head -1 | grep -q '"last_error":"[^"]' || fail "stalled line carries no error"
dmsetup suspend badsrc
dmsetup reload badsrc --table "0 $SECT linear $SRC 0"
dmsetup resume badsrc
wait $cl || { cat /tmp/stall.err; fail "meshdrain clone run over the repaired source exited $?"; }
read -r n stalled _ < <(check_progress /tmp/stall.json) || fail "bad progress lines: $(cat /tmp/stall.json)"
[ "$stalled" -gt 0 ] || fail "no stalled line kept in the log"
echo "resumed after the source came back: $n progress lines, $stalled stalled"
check_handoff mdstall
dmsetup remove mdstall
dmsetup remove badsrc
assert_no_dm
step "ok"
