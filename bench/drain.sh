#!/usr/bin/env bash
# Drain benchmark (issue #6), one run, one table:
#   - cut-over time (drain issued -> workload may start on the target) for a 64 MiB and a
#     4 GiB volume, and their ratio (cut-over must not grow with size);
#   - hydration rate of a fully written 1 GiB volume against a raw copy (cp) of the same
#     file on the same disk: the reference path;
#   - bytes copied for a 4 GiB volume that is 5 % used, against the volume size.
# Runs `meshdrain demo` (local data plane in this build). Output: a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin meshdrain >&2
bin=target/release/meshdrain
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

demo() { "$bin" demo --json --size "$1" --fill "$2" 2>/dev/null | tail -n 1; }
small=$(demo 64M 10)
big=$(demo 4G 5)
full=$(demo 1G 80)

# Reference: a raw copy of a written 1 GiB file on the same disk, caches dropped.
dd if=/dev/urandom of="$tmp/src" bs=1M count=1024 status=none
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
start=$(date +%s.%N)
cp --sparse=never "$tmp/src" "$tmp/dst" && sync "$tmp/dst"
end=$(date +%s.%N)

python3 - "$small" "$big" "$full" "$start" "$end" <<'PY'
import json, sys
small, big, full = (json.loads(x) for x in sys.argv[1:4])
raw = 1024 * 1024 * 1024 / 1e6 / (float(sys.argv[5]) - float(sys.argv[4]))
for d in (small, big, full):
    assert d["verified"], d
print("| measure | value | reference | ratio |")
print("|---|---:|---:|---:|")
print(f"| cut-over, 64 MiB volume | {small['cutover_s']:.2f} s | | |")
print(f"| cut-over, 4 GiB volume | {big['cutover_s']:.2f} s | 64 MiB: {small['cutover_s']:.2f} s | {big['cutover_s']/small['cutover_s']:.2f} |")
print(f"| hydration, 1 GiB 80 % written | {full['hydration_mb_per_s']:.0f} MB/s | cp same disk: {raw:.0f} MB/s | {full['hydration_mb_per_s']/raw:.2f} |")
print(f"| bytes copied, 4 GiB 5 % used | {big['bytes_copied']/2**20:.0f} MiB | volume: {big['volume_bytes']/2**20:.0f} MiB | {big['bytes_copied']/big['volume_bytes']:.3f} |")
PY
