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

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for batch in 100 1; do
  : >"$tmp/rate"; : >"$tmp/rss"; : >"$tmp/p99"
  for _ in $(seq "$runs"); do
    taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" 2>"$tmp/serve.log" &
    pid=$!
    for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    taskset -c 1 "$bin" loadgen --target "http://127.0.0.1:$port" --rate max --batch "$batch" \
      --duration "$secs" >"$tmp/out" 2>&1 || { cat "$tmp/out"; exit 1; }
    grep -q 'counters: *exact' "$tmp/out" || { cat "$tmp/out"; echo "counters differ" >&2; exit 1; }
    awk '/^throughput:/ {print $2}' "$tmp/out" >>"$tmp/rate"
    awk '/^latency p99:/ {print $3}' "$tmp/out" >>"$tmp/p99"
    awk '/VmHWM/ {print $2}' "/proc/$pid/status" >>"$tmp/rss"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  printf 'batch %-3s  records/s median %s  (runs: %s)  p99 ms median %s  peak RSS kB median %s\n' \
    "$batch" "$(median <"$tmp/rate")" "$(tr '\n' ' ' <"$tmp/rate")" "$(median <"$tmp/p99")" "$(median <"$tmp/rss")"
done
