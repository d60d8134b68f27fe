#!/usr/bin/env bash
# The drain simulation (tests/sim_drain.rs) over SIM_SEEDS seeds (default 1000; the test
# suite runs 200): whole drains on the agents' own decision code with lossy gossip,
# partitions, crashes, failing hooks, and nodes lost for good (a holder after cut-over,
# the source mid-hydration, a bystander) declared by an operator, twice, with or without
# --accept-data-loss, or by [lease] node_lost_after; lost nodes coming back fenced
# (docs/failures.md). Any invariant broken fails the run and names the seed
# (SIM_SEED_START=<seed> SIM_SEEDS=1 replays it).
# Prints the simulation's summary line and the wall time, e.g.
#   sim: 1000 seeds, 389 with a node lost, ... 0 invariant violations (74 s)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SIM_SEEDS:-1000}
start=$(date +%s)
if ! out=$(SIM_SEEDS=$seeds cargo test --release --locked --test sim_drain -- --nocapture 2>&1); then
  printf '%s\n' "$out" | grep -E "panicked|seed [0-9]+" | head -n 5 >&2
  echo "sim: FAILED over $seeds seeds"
  exit 1
fi
line=$(printf '%s\n' "$out" | grep '^sim: ' | tail -n 1)
echo "$line ($(( $(date +%s) - start )) s)"
