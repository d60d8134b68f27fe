#!/bin/bash
# Scenario vm_dm_clone: dm-clone over a local source disk with raw dmsetup.
#   /dev/vdb source (filled with random bytes), /dev/vdc dest, /dev/vdd metadata.
# Hydrates with default thresholds and with tuned ones (rates printed as RATE lines),
# checks status parsing, hand-off to linear, byte equality, teardown, and that a source
# that errors makes no progress (stall) while dm-clone keeps retrying.
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

step "source that errors: no progress (stalled)"
dd if=/dev/zero of=$META bs=1M count=4 oflag=direct status=none
dmsetup create badsrc --table "0 $SECT error"
dmsetup mknodes badsrc
# Tuned thresholds: the stall is the same either way, the resume below is quicker.
dmsetup create cl --table "0 $SECT clone $META $DST /dev/mapper/badsrc $REGION 1 no_hydration 4 hydration_threshold $TH hydration_batch_size $BATCH"
dmsetup message cl 0 enable_hydration
sleep 1
read -r h0 _ < <(hydrated cl)
sleep 3
read -r h1 total < <(hydrated cl)
echo "stall check: $h0 -> $h1 of $total"
[ "$h1" = "$h0" ] && [ "$h1" -lt "$total" ] || fail "clone over an erroring source progressed ($h0 -> $h1)"
# Recovery: swap the erroring source for the real one, hydration resumes.
dmsetup suspend badsrc
dmsetup reload badsrc --table "0 $SECT linear $SRC 0"
dmsetup resume badsrc
for _ in $(seq 600); do read -r h total < <(hydrated cl); [ "$h" = "$total" ] && break; sleep 0.1; done
[ "$h" = "$total" ] || fail "no resume after the source came back ($h/$total)"
echo "resumed: $h/$total"
dmsetup remove cl
dmsetup remove badsrc
assert_no_dm
step "ok"
