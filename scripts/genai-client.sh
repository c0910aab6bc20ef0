#!/usr/bin/env bash
# The real OpenAI Python client with the official OpenTelemetry GenAI instrumentation (spans,
# metrics and events on, OTLP/HTTP exporters) against a local stand-in of the OpenAI API and the
# built debug gatemeter: requests, errors, input/output tokens per model and requests per
# namespace must match what the stand-in answered exactly (scripts/genai_client.py). Pinned
# versions in a venv under ~/.cache/gatemeter. Used by scripts/test.sh; runs alone too.
#
#   scripts/genai-client.sh            check only (the capture goes to a temp dir)
#   scripts/genai-client.sh --capture  also refresh tests/data/genai/openai-v2/ (the fixture
#                                      tests/it/genai.rs replays without Python)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh  # logged_addr

PINS=(
  "openai==3.63.0"
  "opentelemetry-api==1.45.2"
  "opentelemetry-sdk==1.45.2"
  "opentelemetry-exporter-otlp-proto-http==1.45.2"
  "opentelemetry-instrumentation-openai-v2==2.4b0"
  "opentelemetry-util-genai==1.1b0"
  "httpx==0.29.0"
)
stamp=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)
venv=${GATEMETER_TOOLS_DIR:-$HOME/.cache/gatemeter}/genai-client-$stamp
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai, opentelemetry.instrumentation.openai_v2' 2>/dev/null; then
  echo "installing the OpenAI client and OpenTelemetry GenAI instrumentation into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
fi

bin=./target/debug/gatemeter
cargo build --quiet --bin gatemeter
tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

cat >"$tmp/config.yaml" <<CONF
listen: 127.0.0.1:0
log_store:
  kind: sqlite
  path: $tmp/requests.db
otlp:
  namespace_attribute: team.id
CONF
"$bin" serve --config "$tmp/config.yaml" >"$tmp/server.log" 2>&1 &
pid=$!
addr=$(logged_addr "$tmp/server.log")
[ -n "$addr" ] || { cat "$tmp/server.log"; echo "server did not start" >&2; exit 1; }

capture=$tmp/capture
"$venv/bin/python" scripts/genai_client.py "http://$addr" "$capture"
if [ "${1:-}" = "--capture" ]; then
  dest=tests/data/genai/openai-v2
  rm -rf "$dest" && mkdir -p "$dest" && cp "$capture"/* "$dest"/
  echo "capture written to $dest"
fi
