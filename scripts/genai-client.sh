#!/usr/bin/env bash
# The real OpenAI Python client with the official OpenTelemetry GenAI instrumentation (spans,
# metrics and events on, OTLP/HTTP exporters), then with OpenLLMetry's instrumentation, against a
# local stand-in of the OpenAI API and the built debug gatemeter: requests, errors, statuses,
# input/output tokens per model and requests per namespace must match what the stand-in answered
# exactly (scripts/genai_client.py); once more with the client listed as a metrics-only source
# (its metric points are then the records). Pinned versions in venvs under ~/.cache/gatemeter.
# Used by scripts/test.sh; runs alone too.
#
#   scripts/genai-client.sh            check only (the captures go to a temp dir)
#   scripts/genai-client.sh --capture  also refresh tests/data/genai/{openai-v2,openllmetry}/
#                                      (the fixtures tests/it/genai.rs replays without Python)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh  # logged_addr

COMMON=(
  "openai==3.63.0"
  "opentelemetry-api==1.45.2"
  "opentelemetry-sdk==1.45.2"
  "opentelemetry-exporter-otlp-proto-http==1.45.2"
  "httpx==0.29.0"
)
# instrumentation-openai-v2 2.4b0 imports a module util-genai 1.2b0 and later no longer have.
OPENAI_V2=("opentelemetry-instrumentation-openai-v2==2.4b0" "opentelemetry-util-genai==1.1b0")
OPENLLMETRY=("opentelemetry-instrumentation-openai==0.62.4" "opentelemetry-semantic-conventions-ai==0.5.1")

# venv NAME PACKAGES...: prints the path of a venv holding exactly these pins (made when missing).
venv() {
  local name=$1
  shift
  local stamp dir
  stamp=$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
  dir=${GATEMETER_TOOLS_DIR:-$HOME/.cache/gatemeter}/$name-$stamp
  if [ ! -f "$dir/.complete" ]; then
    echo "installing $name ($*) into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
    touch "$dir/.complete"
  fi
  echo "$dir"
}
v2=$(venv genai-client "${COMMON[@]}" "${OPENAI_V2[@]}")
ollm=$(venv genai-openllmetry "${COMMON[@]}" "${OPENLLMETRY[@]}")

bin=./target/debug/gatemeter
cargo build --quiet --bin gatemeter
tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# openai-v2-metrics: the same client, listed as a metrics-only source (otlp.genai_metric_sources):
# its metric points, not its spans, must give the totals.
for flavour in openai-v2 openllmetry openai-v2-metrics; do
  from=spans
  extra=""
  case $flavour in
    openai-v2) python=$v2/bin/python ;;
    openllmetry) python=$ollm/bin/python ;;
    openai-v2-metrics) python=$v2/bin/python from=metrics extra="  genai_metric_sources: [genai-client-test]" ;;
  esac
  echo "== $flavour"
  # A fresh server per flavour: the check compares absolute totals.
  mkdir -p "$tmp/$flavour"
  cat >"$tmp/$flavour/config.yaml" <<CONF
listen: 127.0.0.1:0
log_store:
  kind: sqlite
  path: $tmp/$flavour/requests.db
otlp:
  namespace_attribute: team.id
$extra
CONF
  "$bin" serve --config "$tmp/$flavour/config.yaml" >"$tmp/$flavour/server.log" 2>&1 &
  pid=$!
  addr=$(logged_addr "$tmp/$flavour/server.log")
  [ -n "$addr" ] || { cat "$tmp/$flavour/server.log"; echo "server did not start" >&2; exit 1; }
  capture=$tmp/capture-$flavour
  "$python" scripts/genai_client.py "http://$addr" "$capture" "${flavour%-metrics}" "$from"
  if [ "${1:-}" = "--capture" ] && [ "$from" = spans ]; then
    dest=tests/data/genai/$flavour
    rm -rf "$dest" && mkdir -p "$dest" && cp "$capture"/* "$dest"/
    echo "capture written to $dest"
  fi
  kill "$pid" && wait "$pid" 2>/dev/null || true
  pid=""
done
