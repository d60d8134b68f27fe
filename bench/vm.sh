#!/usr/bin/env bash
# Kernel tier benchmark (issue #8), one run, one markdown table:
#   - VM boot time (QEMU start -> scenario start: TCG, Debian's kernel, 9p host root);
#   - each scenario's time (every vm_* test);
#   - dm-clone hydration rate of a local source with default thresholds (1/1) against tuned
#     ones (hydration_threshold / hydration_batch_size, MESHDRAIN_VM_TUNED, 4 KiB regions),
#     and through our code (`meshdrain clone run --backend dm`, the agent's thresholds);
#   - open-iscsi sequential read of the whole LUN through /dev/sdX;
#   - TCP transfer times between our kernel and userspace mesh backends;
#   - the full kernel drain: drain request -> workload on the dm-clone, -> source drained.
# Runs the vm_* tests with bigger sizes: MESHDRAIN_VM_DM_MIB (default 256) and
# MESHDRAIN_VM_LUN_MIB (default 256). Needs root (installs packages, boots QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
export MESHDRAIN_VM_DM_MIB=${MESHDRAIN_VM_DM_MIB:-256}
export MESHDRAIN_VM_LUN_MIB=${MESHDRAIN_VM_LUN_MIB:-256}
export MESHDRAIN_VM_TUNED=${MESHDRAIN_VM_TUNED:-4096 256}
# The whole log is kept (target/vm-bench.log): a failed run still reports what it measured.
log=${CARGO_TARGET_DIR:-target}/vm-bench.log
start=$(date +%s)
failed=0
cargo nextest run -p meshdrain --test vm --no-capture --test-threads 1 --no-fail-fast --run-ignored all -E 'test(/^vm_/)' >"$log" 2>&1 || failed=1
wall=$(($(date +%s) - start))
python3 - "$log" "$wall" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
print("| measure | value | note |")
print("|---|---:|---|")
for m in re.finditer(r"vm (\w+) \((\S+)\): kernel (\S+) boot ([\d.]+)s total ([\d.]+)s \(scenario ([\d.]+)s\) exit (\d+)", text):
    test, script, kernel, boot, total, scen, rc = m.groups()
    failed = "" if rc == "0" else f", FAILED (exit {rc})"
    print(f"| boot, {test} | {boot} s | QEMU TCG -smp 2, {kernel}, 9p root |")
    print(f"| scenario {test} | {scen} s | tests/vm/{script}, whole VM run {total} s{failed} |")
for m in re.finditer(r"RATE (\w+) (\d+)MiB (\d+)ms ([\d.]+) MiB/s status: .*?clone \S+ \S+ (\S+) .*?(hydration_threshold \d+ hydration_batch_size \d+)", text):
    label, mib, ms, rate, region, args = m.groups()
    print(f"| dm-clone hydration, {label} | {rate} MiB/s | {mib} MiB local source, region {int(region)//2} KiB, {args} |")
for m in re.finditer(r"RATE ours (\d+)MiB (\d+)ms ([\d.]+) MiB/s .*?table=clone \S+ \S+ \S+ (\d+) .*?(hydration_threshold \d+ hydration_batch_size \d+)", text):
    mib, ms, rate, region, args = m.groups()
    print(f"| dm-clone hydration, meshdrain clone run --backend dm | {rate} MiB/s | {mib} MiB local source, region {int(region)//2} KiB, the agent's {args}; whole command incl. start and 0.5 s polls |")
for m in re.finditer(r"READ (\d+)MiB (\d+)ms ([\d.]+) MiB/s", text):
    mib, ms, rate = m.groups()
    print(f"| open-iscsi read of the LUN | {rate} MiB/s | {mib} MiB, dd iflag=direct bs=1M |")
tools = {"meshdrain": "meshdrain mesh up (defguard kernel / boringtun)", "raw": "ip/wg kernel, wireguard-go"}
for m in re.finditer(r"^\[(\w+)\] (\w) \((\w+)\) -> (\w) \((\w+)\): ping ok, TCP (\d+ \w+) ok in (\d+) ms", text, re.M):
    mode, a, ka, b, kb, size, ms = m.groups()
    print(f"| TCP {size} over WireGuard, {a} ({ka}) -> {b} ({kb}) | {ms} ms | {tools.get(mode, mode)}, incl. python3 start under TCG |")
m = re.search(r"workload start hook ran on \S+ with \S+ after (\d+) s", text)
if m:
    print(f"| full drain: drain request -> workload started on the dm-clone | {m.group(1)} s | open-iscsi login + dm-clone create, agents over kernel WireGuard |")
m = re.search(r"drained (\d+) s after the drain request \((\d+) MiB at (\S+)\)", text)
if m:
    print(f"| full drain: drain request -> source drained | {m.group(1)} s | {m.group(2)} MiB ext4 volume, --rate-limit {m.group(3)}, workload reading and writing |")
m = re.search(r"source agent killed: holder reports stalled after (\d+) s", text)
if m:
    print(f"| full drain: source agent killed -> holder reports stalled | {m.group(1)} s | dm-clone progress watch, stall bound 10 s |")
m = re.search(r"source agent back: hydration resumed after (\d+) s", text)
if m:
    print(f"| full drain: source agent restarted -> hydration moving again | {m.group(1)} s | agent restart, export re-opened, open-iscsi session recovery |")
t = re.search(r"^target: (\S+)", text, re.M)
if t:
    print(f"| iSCSI target used | {t.group(1)} | `ours` = meshdrain export serve |")
print(f"| whole tier (build + all vm_* runs) | {sys.argv[2]} s | |")
PY
if [ $failed -ne 0 ]; then
  grep -E '^ +(FAIL|PASS) ' "$log" >&2 || true
  echo "bench/vm.sh: some vm tests failed (whole log: $log); the table has what the others measured" >&2
  exit 1
fi
