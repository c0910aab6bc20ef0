#!/usr/bin/env bash
# The cardinality attack of issue 17 against a release binary: N distinct names per dimension
# (namespace, provider, model, status codes spread; Claude Code metric label sets) through
# native ingest and OTLP metrics, then a scrape. Prints the series count, the scrape's bytes and
# the server's peak and current RSS (VmHWM, VmRSS from /proc).
# With GATEMETER_REDIS_URL set (e.g. under scripts/with-services.sh, which exports
# GATEMETER_TEST_REDIS_URL), the Redis live store is used and the scrape waits for its refresh.
# Usage: scripts/bench-cardinality.sh [BIN] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/gatemeter}
n=${2:-100000}
batch=10000
tmp=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
cleanup() { kill "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

python3 - "$tmp" "$n" "$batch" <<'EOF'
import sys, time
tmp, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = time.time_ns()
start = now - 60_000_000_000
for b in range(0, n, batch):
    recs = [
        '{"namespace":"ns-%d","provider":"prov-%d","model":"model-%d","status":%d,"duration_ms":%d,"ttfb_ms":1,"input_tokens":%d,"output_tokens":2}'
        % (i, i, i, 200 + i % 300, 1 + i % 5000, i % 70000)
        for i in range(b, min(b + batch, n))
    ]
    open(f"{tmp}/native-{b}.json", "w").write("[" + ",".join(recs) + "]")
    pts = [
        '{"attributes":[{"key":"session.id","value":{"stringValue":"s%d"}},{"key":"type","value":{"stringValue":"t%d"}},{"key":"model","value":{"stringValue":"m%d"}}],"asInt":"3","startTimeUnixNano":"%d","timeUnixNano":"%d"}'
        % (i, i, i, start, now)
        for i in range(b, min(b + batch, n))
    ]
    open(f"{tmp}/otlp-{b}.json", "w").write(
        '{"resourceMetrics":[{"resource":{"attributes":[]},"scopeMetrics":[{"metrics":[{"name":"claude_code.token.usage","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":['
        + ",".join(pts) + "]}}]}]}]}")
EOF

GATEMETER_LOG_STORE=none "$bin" serve --listen "127.0.0.1:$port" 2>"$tmp/server.log" &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
for f in "$tmp"/native-*.json; do
  curl -fsS -o /dev/null -H 'content-type: application/json' --data-binary "@$f" "http://127.0.0.1:$port/v1/events"
done
for f in "$tmp"/otlp-*.json; do
  curl -fsS -o /dev/null -H 'content-type: application/json' --data-binary "@$f" "http://127.0.0.1:$port/v1/metrics"
done
# Two flush intervals (and a Redis refresh) before the scrapes; three scrapes, the last measured.
sleep 3
for _ in 1 2; do curl -fsS -o /dev/null "http://127.0.0.1:$port/metrics"; done
curl -fsS -o "$tmp/metrics.txt" "http://127.0.0.1:$port/metrics"
series=$(grep -cv '^#' "$tmp/metrics.txt")
bytes=$(wc -c <"$tmp/metrics.txt")
requests=$(awk '/^ai_gateway_requests_total / {print $2}' "$tmp/metrics.txt")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
store=memory; [ -n "${GATEMETER_REDIS_URL:-}" ] && store=redis
printf 'store %s  n %s  requests %s  series %s  scrape_bytes %s  VmHWM_kB %s  VmRSS_kB %s\n' \
  "$store" "$n" "$requests" "$series" "$bytes" "$hwm" "$rss"
