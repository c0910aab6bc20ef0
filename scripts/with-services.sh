#!/usr/bin/env bash
# Runs a command with throwaway Redis and PostgreSQL servers (see scripts/services.sh), e.g.
#   scripts/with-services.sh cargo test --test it redis
set -euo pipefail
cd "$(dirname "$0")/.."
svc_dir=$(mktemp -d)
chmod 755 "$svc_dir"
. scripts/services.sh
trap 'stop_services; rm -rf "$svc_dir"' EXIT
start_redis
start_postgres
"$@"
