#!/usr/bin/env bash
# Ingest throughput as the foundation issue measures it: the server pinned to core 0, loadgen on
# core 1, RUNS runs per shape, medians reported (the machine is shared and noisy).
# Usage: scripts/bench.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
secs=${2:-6}
cargo build --release --quiet
bin=./target/release/gatemeter
port=$(( 20000 + RANDOM % 20000 ))
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

. scripts/bench-lib.sh

for batch in 100 1; do
  : >"$tmp/rate"; : >"$tmp/rss"; : >"$tmp/p99"
  for _ in $(seq "$runs"); do
    run_once "$bin" "$bin" "$batch" "$secs" "$port" "$tmp/out"
    awk '/^throughput:/ {print $2}' "$tmp/out" >>"$tmp/rate"
    awk '/^latency p99:/ {print $3}' "$tmp/out" >>"$tmp/p99"
    cat "$tmp/out.rss" >>"$tmp/rss"
  done
  printf 'batch %-3s  records/s median %s  (runs: %s)  p99 ms median %s  peak RSS kB median %s\n' \
    "$batch" "$(median <"$tmp/rate")" "$(tr '\n' ' ' <"$tmp/rate")" "$(median <"$tmp/p99")" "$(median <"$tmp/rss")"
done
