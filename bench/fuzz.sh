#!/usr/bin/env bash
# Fuzzing campaign (docs/threat-model.md): every target in fuzz/ for FUZZ_SECONDS (default 3600)
# each, two at a time (FUZZ_JOBS), printing a markdown table: target, seconds, execs,
# execs/s, corpus size (libFuzzer's, after the run) and crashes. The corpus grows in
# fuzz/corpus/<target>/ across runs; crash files land in fuzz/artifacts/<target>/ and
# become tests in the owning crate's tests/fuzz_regressions.rs. Same build and flags as
# CI (scripts/fuzz-ci, which this runs); stable Rust with RUSTC_BOOTSTRAP=1.
#   bench/fuzz.sh                        about 4 hours on 2 cores (8 targets x 1 h / 2)
#   FUZZ_SECONDS=300 bench/fuzz.sh       a short campaign
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-3600} FUZZ_TABLE=1 exec scripts/fuzz-ci
