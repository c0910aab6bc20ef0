#!/usr/bin/env bash
# Instructions the server runs for a fixed load, under callgrind: stable where wall time is not.
# Starts BIN's server (no request log) under valgrind, sends RATE records/s for SECONDS with the
# current tree's loadgen, stops the server and prints the records counted and the instructions.
# Usage: scripts/bench-callgrind.sh BIN [FORMAT=json] [BATCH=100] [RATE=5000] [SECONDS=6]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: scripts/bench-callgrind.sh BIN [FORMAT] [BATCH] [RATE] [SECONDS]}
format=${2:-json}; batch=${3:-100}; rate=${4:-5000}; secs=${5:-6}
cargo build --release --quiet --bin gatemeter
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
GATEMETER_LOG_STORE=none valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" \
  "$bin" serve --listen "127.0.0.1:$port" 2>"$tmp/vg" &
pid=$!
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
./target/release/gatemeter loadgen --format "$format" --target "http://127.0.0.1:$port" \
  --rate "$rate" --batch "$batch" --duration "$secs" --report json >"$tmp/report.json"
kill -INT "$pid"; wait "$pid" || true
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('records accepted:', r['records_accepted'], ' counters:', r['counters'])" "$tmp/report.json"
echo "instructions: $(sed -n 's/.*Collected : //p' "$tmp/vg" | tail -1)"
