#!/usr/bin/env bash
# Request-log benchmarks (issue #4), on SQLite and on a throwaway PostgreSQL server:
#   1. write path: ROWS rows through the batched writer, every index in place (rows/s), with
#      request ids that grow with time and with random UUIDs;
#   2. filtered queries over those rows (`gatemeter bench-log` prints them);
#   3. usage CSV export of all ROWS rows over HTTP from `gatemeter serve`, three times (rows/s,
#      and the server's peak RSS).
# Run it on a quiet machine. Usage: scripts/bench-sql.sh [ROWS]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
unset GATEMETER_DATABASE_URL GATEMETER_LOG_STORE GATEMETER_DATA_DIR
cargo build --release --quiet --bin gatemeter
bin=$PWD/target/release/gatemeter
svc_dir=$(mktemp -d)
chmod 755 "$svc_dir"
. scripts/services.sh
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; stop_services; rm -rf "$svc_dir"' EXIT
start_postgres

# export_once LOG_STORE_YAML: serves the filled log and downloads the whole usage CSV.
export_once() {
  local port cfg out lines
  port=$(free_port)
  cfg="$svc_dir/bench.yaml"
  printf 'listen: 127.0.0.1:%s\nlog_store:\n%s\n  log_retention_days: 0\n  export_max_rows: %s\n' \
    "$port" "$1" "$rows" >"$cfg"
  "$bin" serve --config "$cfg" 2>"$svc_dir/serve.log" &
  server=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  # Three times: the first reads rows just written (PostgreSQL then also sets their hint bits,
  # a once-per-row cost a running server's autovacuum would have paid already).
  for run in first second third; do
    out=$(curl -fsS -D "$svc_dir/headers" -o "$svc_dir/export.csv" -w '%{time_total} %{size_download}' \
      "http://127.0.0.1:$port/api/v1/export/usage.csv")
    lines=$(($(wc -l <"$svc_dir/export.csv") - 1))
    read -r secs bytes <<<"$out"
    printf 'export (%s): %s rows, %s bytes in %s s = %s rows/s; server peak RSS %s kB; truncated: %s\n' \
      "$run" "$lines" "$bytes" "$secs" "$(awk -v n="$lines" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')" \
      "$(awk '/VmHWM/ {print $2}' "/proc/$server/status")" \
      "$(awk -F': ' 'tolower($1) == "x-gatemeter-truncated" {print $2}' "$svc_dir/headers" | tr -d '\r')"
  done
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
  rm -f "$svc_dir/export.csv"
}

# Writes with ids that grow with time first, for comparison (the unique index then appends),
# then with random UUIDs, as most gateways send them: that log is the one queried and exported.
echo "== SQLite ($rows rows)"
"$bin" bench-log --sqlite "$svc_dir/ordered.db" --rows "$rows" --ids ordered | sed -n 's/^write/write (ordered ids)/p'
rm -f "$svc_dir"/ordered.db*
"$bin" bench-log --sqlite "$svc_dir/bench.db" --rows "$rows"
export_once "  kind: sqlite
  path: $svc_dir/bench.db"

# The SQLite section leaves about a gigabyte of dirty page cache; written back during the next
# section it would be timed as PostgreSQL's.
rm -f "$svc_dir"/bench.db*
sync
echo "== PostgreSQL ($rows rows)"
ordered_url="${GATEMETER_TEST_DATABASE_URL%/*}/ordered"
"$(pg_bin)/psql" -q "$GATEMETER_TEST_DATABASE_URL" -c 'CREATE DATABASE ordered'
"$bin" bench-log --database-url "$ordered_url" --rows "$rows" --ids ordered | sed -n 's/^write/write (ordered ids)/p'
"$(pg_bin)/psql" -q "$GATEMETER_TEST_DATABASE_URL" -c 'DROP DATABASE ordered'
"$bin" bench-log --database-url "$GATEMETER_TEST_DATABASE_URL" --rows "$rows"
export_once "  kind: postgres
  url: $GATEMETER_TEST_DATABASE_URL"
