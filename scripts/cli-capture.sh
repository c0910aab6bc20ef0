#!/usr/bin/env bash
# Captures the OTLP telemetry of the real Gemini CLI and Codex CLI (npm @google/gemini-cli,
# @openai/codex, pinned) working against local stand-ins of their model APIs, inside a network
# namespace that has only loopback, into tests/data/genai/{gemini-cli,codex-cli}/ (scrubbed; with
# expected.json). Needs root (ip netns) and the venv of scripts/genai-client.sh (for protobuf).
# Not part of scripts/test.sh: the captures are replayed by tests/it/genai.rs.
#
#   scripts/cli-capture.sh [gemini|codex]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

GEMINI_CLI=@google/gemini-cli@0.61.0
CODEX_CLI=@openai/codex@0.171.0
tools=${GATEMETER_TOOLS_DIR:-$HOME/.cache/gatemeter}
clis=$tools/clis
if [ ! -x "$clis/node_modules/.bin/gemini" ] || [ ! -x "$clis/node_modules/.bin/codex" ]; then
  mkdir -p "$clis"
  (cd "$clis" && npm install --no-audit --no-fund "$GEMINI_CLI" "$CODEX_CLI")
fi
python=$(ls -d "$tools"/genai-client-*/bin/python 2>/dev/null | head -n1)
[ -n "$python" ] || { echo "run scripts/genai-client.sh once first (it makes the venv)" >&2; exit 1; }

for kind in "${@:-gemini codex}"; do
  for k in $kind; do
    work=$(mktemp -d)
    echo hello >"$work/notes.txt"
    ns=gatemeter-capture-$$
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    dest=tests/data/genai/$k-cli
    rm -rf "$dest"
    status=0
    ip netns exec "$ns" timeout 500 "$python" scripts/cli_capture.py "$k" "$clis/node_modules/.bin/$k" "$work" "$dest" || status=$?
    ip netns del "$ns"
    rm -rf "$work"
    [ "$status" = 0 ] || exit "$status"
  done
done
