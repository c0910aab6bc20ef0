#!/usr/bin/env bash
# OTLP receiver throughput as issue #5 measures it: OTLP/HTTP protobuf POST /v1/logs with 100
# Claude Code api_request records per request, the server pinned to core 0, loadgen on core 1,
# RUNS runs, medians reported. Every run must end with loadgen's counter check exact.
# Usage: scripts/bench-otlp.sh [RUNS] [SECONDS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
secs=${2:-6}
batch=${3:-100}
cargo build --release --quiet
bin=./target/release/gatemeter
port=$(( 20000 + RANDOM % 20000 ))
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

. scripts/bench-lib.sh

: >"$tmp/rate"; : >"$tmp/rss"; : >"$tmp/p99"
for _ in $(seq "$runs"); do
  # The receiver and aggregate path only, unless the caller sets GATEMETER_LOG_STORE (as bench-lib.sh).
  GATEMETER_LOG_STORE=${GATEMETER_LOG_STORE:-none} GATEMETER_DATA_DIR="$tmp/data" \
    taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" 2>/dev/null &
  pid=$!
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  taskset -c 1 "$bin" loadgen --format otlp --target "http://127.0.0.1:$port" --rate max \
    --batch "$batch" --duration "$secs" >"$tmp/out" 2>&1 || { cat "$tmp/out"; kill "$pid"; exit 1; }
  awk '/VmHWM/ {print $2}' "/proc/$pid/status" >>"$tmp/rss"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  grep -q 'counters: *exact' "$tmp/out" || { cat "$tmp/out"; echo "counters differ" >&2; exit 1; }
  awk '/^throughput:/ {print $2}' "$tmp/out" >>"$tmp/rate"
  awk '/^latency p99:/ {print $3}' "$tmp/out" >>"$tmp/p99"
done
printf 'otlp logs batch %-3s  records/s median %s  (runs: %s)  p99 ms median %s  peak RSS kB median %s\n' \
  "$batch" "$(median <"$tmp/rate")" "$(tr '\n' ' ' <"$tmp/rate")" "$(median <"$tmp/p99")" "$(median <"$tmp/rss")"
