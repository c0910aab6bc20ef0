#!/usr/bin/env bash
# The web console in a real browser: Debian's chromium (headless) driven through chromedriver by
# Selenium (PyPI, pinned, in a venv under ~/.cache/gatemeter) against the built debug
# `gatemeter demo` (its synthetic gateway traffic and Claude Code sessions, posted with the
# config's ingest token) with a SQLite request log, stored requests, admin / user / ingest tokens
# and two probes (one of its own /healthz, one of a closed port). scripts/console_browser.py adds
# fixed gateway records and the captured Claude Code session, then checks every page at 1280 and
# 390 px (data shown, no console error), a log filter, the usage CSV's BOM, the session request
# JSON, a user token's limits and a provider turning red; screenshots go to docs/screenshots/ (or
# $CONSOLE_SHOTS). Used by scripts/test.sh; runs alone too.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh  # logged_addr, free_port

SELENIUM_VERSION=4.50.0
venv=${GATEMETER_TOOLS_DIR:-$HOME/.cache/gatemeter}/selenium-$SELENIUM_VERSION
if [ ! -f "$venv/.complete" ]; then
  echo "installing selenium $SELENIUM_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "selenium==$SELENIUM_VERSION"
  touch "$venv/.complete"
fi
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (Debian: apt-get install chromium chromium-driver)" >&2; exit 1; }
done

bin=./target/debug/gatemeter
cargo build --quiet --bin gatemeter  # a no-op when it is fresh; never test a stale binary
tmp=$(mktemp -d)
pid=""
open_pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  [ -n "$open_pid" ] && kill "$open_pid" 2>/dev/null && wait "$open_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(free_port)
closed=$(free_port)  # nothing listens there: the probe of it fails
cat >"$tmp/config.yaml" <<EOF
listen: 127.0.0.1:$port
log_store:
  kind: sqlite
  path: $tmp/requests.db
  store_requests: true
otlp:
  namespace_attribute: team.id
  label_allowlist: [user.email]  # per-user Claude Code figures (the demo's developers)
auth:
  ingest_tokens: [ingest-token-browser-0123456789]
  admin_tokens: [admin-token-browser-0123456789]
  user_tokens:
    alice-token-browser-0123456789: alice
    ana-token-browser-0123456789: ana@example.com
probes:
  - name: self-health
    provider: anthropic
    target: http://127.0.0.1:$port/healthz
    interval_secs: 2
    timeout_ms: 1000
  - name: closed-port
    provider: deadprov
    target: tcp://127.0.0.1:$closed
    interval_secs: 2
    timeout_ms: 1000
EOF
"$bin" demo --config "$tmp/config.yaml" --rate 5 >"$tmp/server.log" 2>&1 &
pid=$!
addr=$(logged_addr "$tmp/server.log")
[ -n "$addr" ] || { cat "$tmp/server.log"; echo "server did not start" >&2; exit 1; }
# A second server with no tokens (loopback: open) and no request log: the console opens
# without sign-in and says what the missing log means.
printf 'listen: 127.0.0.1:0\nlog_store:\n  kind: none\n' >"$tmp/open.yaml"
"$bin" serve --config "$tmp/open.yaml" >"$tmp/open.log" 2>&1 &
open_pid=$!
open_addr=$(logged_addr "$tmp/open.log")
[ -n "$open_addr" ] || { cat "$tmp/open.log"; echo "the open server did not start" >&2; exit 1; }

shots=${CONSOLE_SHOTS:-docs/screenshots}
mkdir -p "$shots"
"$venv/bin/python" scripts/console_browser.py "http://$addr" "$tmp" "$shots" "http://$open_addr"
if grep -q 'panicked\|Internal error' "$tmp/server.log" "$tmp/open.log"; then
  grep 'panicked\|Internal error' "$tmp/server.log" "$tmp/open.log" >&2
  echo "the server logged internal errors while the console ran" >&2
  exit 1
fi
