#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each; stops at the first crash,
# whose input cargo fuzz leaves under fuzz/artifacts/TARGET/. Not part of the test command.
# Installs cargo-fuzz when missing. Built without a sanitizer (`-s none`): stable Rust, and safe
# code, where the fuzzers look for panics, overflows (debug assertions are on) and
# disagreements between the fast paths and serde / prost.
# Usage: scripts/fuzz.sh [SECONDS=60] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi
for t in "${targets[@]}"; do
  echo "==> $t ($secs s)"
  mkdir -p "fuzz/corpus/$t"
  # Seeds: the Claude Code captures for the OTLP protobuf target.
  if [ "$t" = otlp_protobuf ]; then cp -n tests/data/claude-code/*/*_logs.pb "fuzz/corpus/$t/" 2>/dev/null || true; fi
  cargo fuzz run -s none "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" 2>&1 | grep -E '^(#[0-9]+ +DONE|Done|==|thread|panicked|SUMMARY)' | tail -3
done
echo "all fuzz targets ran $secs s without a crash"
