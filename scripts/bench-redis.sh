#!/usr/bin/env bash
# Fleet throughput over one Redis: REPLICAS `gatemeter serve` replicas with the Redis live
# store share one throwaway redis-server; one loadgen drives each replica at max rate. Prints
# total records/s, Redis commands per 1,000 records (INFO commandstats: all commands, and those
# the replicas send), and checks that the fleet total equals what was accepted. Commands are a
# fixed cost per flush and refresh interval, so per 1,000 records they fall as the rate rises.
# Run it on a quiet machine (it needs REPLICAS + REPLICAS + 1 busy processes).
# Usage: scripts/bench-redis.sh [REPLICAS=4] [SECONDS=10] [BATCH=100]
#   BIN=path/to/gatemeter to skip the release build; RATE=N records/s per loadgen (default max).
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${1:-4}
secs=${2:-10}
batch=${3:-100}
rate=${RATE:-max}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=./target/release/gatemeter
fi
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
  --logfile "$tmp/redis.log" --daemonize no &
pids+=($!)
rcli() { redis-cli -p "$rport" "$@"; }
for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.05; done
rcli ping >/dev/null

ports=()
for i in $(seq "$replicas"); do
  port=$(free_port)
  # The live-store path only, unless the caller sets GATEMETER_LOG_STORE (as bench-lib.sh).
  GATEMETER_LOG_STORE=${GATEMETER_LOG_STORE:-none} GATEMETER_DATA_DIR="$tmp/data-$i" \
    GATEMETER_REDIS_URL="redis://127.0.0.1:$rport/" "$BIN" serve --listen "127.0.0.1:$port" \
    2>"$tmp/replica-$i.log" &
  pids+=($!)
  ports+=("$port")
done
for port in "${ports[@]}"; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null
done
sleep 2 # every replica has connected and flushed once
rcli config resetstat >/dev/null
t0=$(date +%s.%N)

lg=()
for i in "${!ports[@]}"; do
  # Each loadgen's own counter check sees the whole fleet grow, so it reports a mismatch;
  # the fleet check below replaces it.
  "$BIN" loadgen --target "http://127.0.0.1:${ports[$i]}" --rate "$rate" --batch "$batch" \
    --duration "$secs" >"$tmp/loadgen-$i.out" 2>&1 &
  lg+=($!)
done
for p in "${lg[@]}"; do wait "$p" || true; done

accepted=$(awk '/^records accepted:/ {s += $3} END {print s + 0}' "$tmp"/loadgen-*.out)
rate_sum=$(awk '/^throughput:/ {s += $2} END {printf "%.0f", s}' "$tmp"/loadgen-*.out)
# Let the last flushes land, then read the fleet total from one replica.
fleet=0
for _ in $(seq 50); do
  fleet=$(curl -fs "http://127.0.0.1:${ports[0]}/metrics" | awk '/^ai_gateway_requests_total / {printf "%.0f", $2}')
  [ "$fleet" = "$accepted" ] && break
  sleep 0.2
done
stats=$(rcli info commandstats | tr -d '\r')
elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
calls() { echo "$stats" | awk -F'[:=,]' -v c="$1" '$1 == "cmdstat_" c {n = $3} END {print n + 0}'; }
total=$(echo "$stats" | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" && $1 != "cmdstat_config" {s += $3} END {print s + 0}')
# INFO commandstats also counts the commands a script runs. Replicas send EVALSHA (one per
# flush) and snapshot reads (MULTI, HGETALLs, one GET, EXEC); the rest runs inside scripts.
flushes=$(( $(calls evalsha) + $(calls eval) ))
sent=$(( flushes + $(calls multi) + 2 * $(calls exec) + $(calls hgetall) + $(calls script) ))
inside=$((total - sent))
per1k() { awk -v c="$1" -v n="$accepted" 'BEGIN {printf "%.3f", n ? c * 1000 / n : 0}'; }
persec() { awk -v c="$1" -v s="$elapsed" 'BEGIN {printf "%.0f", c / s}'; }

echo "replicas:                 $replicas (batch $batch, $secs s, rate $rate per loadgen)"
echo "records accepted:         $accepted"
echo "total records/s:          $rate_sum (sum of the loadgens' throughput)"
echo "redis commands:           $total in $elapsed s ($(persec "$total")/s): $flushes flushes (EVALSHA), $((sent - flushes)) snapshot reads, $inside inside flush scripts"
echo "commands per 1k records:  $(per1k "$total") all (INFO commandstats), $(per1k "$sent") sent by replicas"
echo "fleet total on /metrics:  $fleet"
echo "$stats" | grep '^cmdstat_' | sed 's/^/  /'
if [ "$fleet" != "$accepted" ]; then
  echo "fleet total $fleet differs from records accepted $accepted" >&2
  for f in "$tmp"/loadgen-*.out; do cat "$f"; done >&2
  exit 1
fi
echo "fleet total: exact"
