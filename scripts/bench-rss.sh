#!/usr/bin/env bash
# The default `serve` (memory live store, SQLite request log) under `loadgen --rate max --batch
# 100`, once per SQLite page-cache size and run, alternating: ingest records/s and the server's
# peak RSS (VmHWM). Server on core 0, loadgen on core 1; each run on an empty data directory.
# Usage: scripts/bench-rss.sh BIN [RUNS] [SECONDS] [CACHE_MIB...]   (default: 3 10 16 32)
set -euo pipefail
bin=${1:?usage: scripts/bench-rss.sh BIN [RUNS] [SECONDS] [CACHE_MIB...]}
runs=${2:-3}
secs=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
caches=${*:-16 32}
tmp=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))
for run in $(seq "$runs"); do
  for mib in $caches; do
    rm -rf "$tmp/data"
    printf 'log_store:\n  kind: sqlite\n  data_dir: %s/data\n  sqlite_cache_bytes: %d\n' \
      "$tmp" $(( mib << 20 )) >"$tmp/config.yaml"
    taskset -c 0 "$bin" serve --config "$tmp/config.yaml" --listen "127.0.0.1:$port" 2>/dev/null &
    pid=$!
    for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    taskset -c 1 "$bin" loadgen --target "http://127.0.0.1:$port" --rate max --batch 100 \
      --duration "$secs" >"$tmp/out" 2>&1
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    grep -q 'counters: *exact' "$tmp/out" || { cat "$tmp/out"; echo "counters differ" >&2; exit 1; }
    printf 'cache %4s MiB run %s: %s records/s, peak RSS %s MB\n' "$mib" "$run" \
      "$(awk '/^throughput:/ {print $2}' "$tmp/out")" $(( rss / 1024 ))
  done
done
