#!/usr/bin/env bash
# Same-run A/B of durable acknowledgement: the current release build with `durability: none`
# and with `durability: spool` take turns (server on core 0, loadgen on core 1), both with the
# default SQLite request log, RUNS runs each per batch size; medians and the ratio spool/none
# are printed, with the spool's group commits (syncs, mean sync time, records per sync).
# Usage: scripts/bench-spool.sh [RUNS=5] [SECONDS=5] [BATCHES="100 1000"]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
secs=${2:-5}
batches=${3:-100 1000}
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

cargo build --release --quiet --bin gatemeter
bin=$(pwd)/target/release/gatemeter
port=$(( 20000 + RANDOM % 20000 ))

. scripts/bench-lib.sh

for batch in $batches; do
  : >"$tmp/none.txt"; : >"$tmp/spool.txt"; : >"$tmp/syncs.txt"
  for _ in $(seq "$runs"); do
    for mode in none spool; do
      rm -rf "$tmp/data"
      # run_once stops the server itself; scrape the spool's counters just before loadgen ends.
      ( sleep "$(( secs - 1 ))"; curl -fs "http://127.0.0.1:$port/metrics" >"$tmp/metrics" || true ) &
      GATEMETER_DURABILITY=$mode GATEMETER_LOG_STORE=sqlite run_once "$bin" "$bin" "$batch" "$secs" "$port" "$tmp/out"
      wait
      awk '/^throughput:/ {print $2}' "$tmp/out" >>"$tmp/$mode.txt"
      if [ "$mode" = spool ]; then
        awk '/^gatemeter_spool_syncs_total / {s=$2} /^gatemeter_spool_sync_seconds_total / {t=$2}
             /^gatemeter_spool_records_total / {r=$2}
             END {if (s > 0) printf "%d syncs, %.2f ms each, %d records each\n", s, 1000*t/s, r/s}' \
          "$tmp/metrics" >>"$tmp/syncs.txt"
      fi
    done
  done
  n=$(median <"$tmp/none.txt"); s=$(median <"$tmp/spool.txt")
  printf 'batch %-5s log sqlite  none median %s (%s)  spool median %s (%s)  ratio %s\n' "$batch" \
    "$n" "$(tr '\n' ' ' <"$tmp/none.txt")" "$s" "$(tr '\n' ' ' <"$tmp/spool.txt")" \
    "$(awk -v b="$n" -v x="$s" 'BEGIN {printf "%.2f", x/b}')"
  sed 's/^/  spool run: /' "$tmp/syncs.txt"
done
