#!/usr/bin/env bash
# The analytics API of two builds over HTTP, on copies of one filled request log (made by
# `gatemeter bench-log --profile analytics --rows N --sqlite FILE`), paired and alternating:
#   scripts/bench-analytics.sh NEW_BIN OLD_BIN FILE [RUNS=11]
# For each query, `farm-bench` times `curl` against NEW's server with OLD's as the baseline (A/B
# ratio pair by pair; the figures include curl's own few milliseconds). The servers run with
# `analytics.time_zone: UTC`; the Asia/Shanghai month is asked as a custom range.
set -euo pipefail
new=$1 old=$2 db=$3 runs=${4:-11}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Starts BIN's server on a copy of the database (in this shell, so cleanup can stop it); sets $port.
start() {
  local bin=$1 name=$2
  port=$(free_port)
  mkdir -p "$tmp/$name"
  cp "$db" "$tmp/$name/requests.db"
  printf 'listen: 127.0.0.1:%s\nlog_store:\n  kind: sqlite\n  path: %s\n  log_retention_days: 0\n' \
    "$port" "$tmp/$name/requests.db" >"$tmp/$name/config.yaml"
  "$bin" serve --config "$tmp/$name/config.yaml" >"$tmp/$name/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
  echo "$name did not become ready:" >&2; cat "$tmp/$name/log" >&2; exit 1
}
start "$new" new; a=$port
start "$old" old; b=$port
now=$(python3 -c 'import time; print(int(time.time()*1000))')
read -r sh_from sh_to < <(python3 - <<'PY'
import datetime, zoneinfo
z = zoneinfo.ZoneInfo("Asia/Shanghai")
n = datetime.datetime.now(z)
first = n.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
nxt = (first + datetime.timedelta(days=32)).replace(day=1)
print(int(first.timestamp() * 1000), int(nxt.timestamp() * 1000))
PY
)
queries=(
  "leaderboard?scope=user&period=month"
  "leaderboard?scope=key&period=month"
  "leaderboard?scope=provider&period=month"
  "leaderboard?scope=model&period=month"
  "leaderboard?scope=user&period=custom&from=$sh_from&to=$sh_to"
  "leaderboard?scope=user&period=custom&from=$((now - 30 * 86400000))&to=$now"
  "leaderboard?scope=provider&period=custom&from=$((now - 30 * 86400000))&to=$now"
  "availability?window=7d&bucket=auto"
  "sessions?state=active"
  "sessions?state=inactive"
  "overview"
)
for q in "${queries[@]}"; do
  echo "== /api/v1/$q"
  farm-bench -n "$runs" --timeout 600 --vs "curl -fsS -o /dev/null http://127.0.0.1:$b/api/v1/$q" \
    -- curl -fsS -o /dev/null "http://127.0.0.1:$a/api/v1/$q" 2>&1 | grep -E "wall|ratio|exit|fail" || true
done
