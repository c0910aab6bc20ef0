#!/usr/bin/env bash
# The test command (README): installs missing system tools when root, then format check,
# clippy -D warnings, docs, every test (unit, integration, doctests, benches in test mode),
# the exposition checks of a live server with promtool, and schemathesis against the API's
# OpenAPI document on a live server (scripts/api-fuzz.sh), the web console in headless Chromium
# (scripts/console-browser.sh), and the real OpenAI client with the
# OpenTelemetry GenAI instrumentation against a live server (scripts/genai-client.sh). Tests that need Redis or PostgreSQL
# get throwaway servers started here (scripts/services.sh) and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

missing=()
have promtool || missing+=(prometheus)  # promtool ships in Debian's prometheus package
have amtool || missing+=(prometheus-alertmanager)  # and amtool with the alertmanager
have docker-compose || missing+=(docker-compose)
have curl || missing+=(curl)
have python3 || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)  # for schemathesis
have chromium || missing+=(chromium)  # the web console's browser tests (scripts/console-browser.sh)
have chromedriver || missing+=(chromium-driver)
have redis-server || missing+=(redis-server)
[ -n "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ] || missing+=(postgresql)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    echo "missing tools: ${missing[*]} (run as root to install them with apt, or install them yourself)" >&2
    exit 1
  fi
fi

tmp=$(mktemp -d)
chmod 755 "$tmp"
svc_dir="$tmp/services"
mkdir -p "$svc_dir"
. scripts/services.sh
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_services
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

say "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

say "throwaway services: redis-server and PostgreSQL on free loopback ports"
start_redis
start_postgres
echo "redis: $GATEMETER_TEST_REDIS_URL  postgres: $GATEMETER_TEST_DATABASE_URL"

say "cargo test (unit, integration, benches in test mode)"
cargo test --all-targets --quiet
say "cargo test --doc"
cargo test --doc --quiet

say "exposition checks: promtool on a live server fed by the demo traffic"
cargo build --quiet --bin gatemeter
. scripts/demo-lib.sh
start_demo ./target/debug/gatemeter "$tmp/demo.log"
addr=$demo_addr
sleep 3
curl -fsS "http://$addr/metrics" >"$tmp/metrics.txt"
grep -q '^ai_gateway_requests_total [1-9]' "$tmp/metrics.txt" || { echo "demo traffic was not counted" >&2; exit 1; }
out=$(promtool check metrics <"$tmp/metrics.txt" 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "promtool check metrics reported problems:" >&2
  echo "$out" >&2
  exit 1
fi
echo "promtool check metrics: clean ($(grep -vc '^#' "$tmp/metrics.txt") samples)"

say "promtool check config prometheus/prometheus.yml (and the rule files it loads)"
promtool check config prometheus/prometheus.yml

say "promtool test rules: every alert firing and not firing"
promtool test rules alerts/rules.test.yml alerts/cost.test.yml

say "amtool check-config alerts/alertmanager.yml; routing by severity"
amtool check-config alerts/alertmanager.yml
[ "$(amtool config routes test --config.file=alerts/alertmanager.yml severity=critical 2>/dev/null)" = critical ]
[ "$(amtool config routes test --config.file=alerts/alertmanager.yml severity=warning 2>/dev/null)" = warnings ]

say "dashboards/ are what dashboards/generate.py writes"
python3 dashboards/generate.py --check

say "docker-compose config"
docker-compose config -q

say "end to end: demo traffic -> Prometheus -> every dashboard query; a failing provider -> Alertmanager -> webhook"
scripts/e2e-assets.sh target/debug/gatemeter

say "schemathesis against /api/v1/openapi.json on a live server (scripts/api-fuzz.sh)"
./scripts/api-fuzz.sh

say "the web console in headless Chromium (scripts/console-browser.sh; screenshots in target/console-screenshots/)"
CONSOLE_SHOTS=target/console-screenshots ./scripts/console-browser.sh

say "the real OpenAI client with the OpenTelemetry GenAI instrumentation -> gatemeter (scripts/genai-client.sh)"
./scripts/genai-client.sh

say "all checks passed"
