#!/usr/bin/env bash
# Same-run A/B of ingest throughput (and the server's peak RSS): the server built from BASE_REV and the current tree take
# turns (server on core 0, the current loadgen on core 1), RUNS runs each per shape; medians and
# the ratio current/base are printed. The machine is shared and noisy: compare within one run,
# not across runs.
# Shapes (SHAPES, space-separated FORMAT:BATCH:LOG_STORE): native JSON batches of 100 and 1 on
# the aggregate path alone, batches of 100 with the default SQLite request log, and Claude Code
# OTLP protobuf batches of 100.
# With SQL_ROWS > 0, `bench-log` of both binaries also takes turns writing and querying a
# SQLite log of that many rows (random UUID ids).
# Usage: scripts/bench-ab.sh BASE_REV [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
base_rev=${1:?usage: scripts/bench-ab.sh BASE_REV [RUNS] [SECONDS]}
runs=${2:-5}
secs=${3:-5}
shapes=${SHAPES:-json:100:none json:1:none json:100:sqlite otlp:100:none}
sql_rows=${SQL_ROWS:-0}
root=$(pwd)
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

cargo build --release --quiet --bin gatemeter
# The base is built from a worktree at a fixed path, so a second run reuses its build.
tree=$root/target/bench-base/tree
if [ -d "$tree" ]; then
  git -C "$tree" checkout -q --detach "$base_rev"
else
  git worktree add -q --detach "$tree" "$base_rev"
fi
CARGO_TARGET_DIR="$root/target/bench-base" cargo build --release --quiet --bin gatemeter --manifest-path "$tree/Cargo.toml"
new=$root/target/release/gatemeter
base=$root/target/bench-base/release/gatemeter
port=$(( 20000 + RANDOM % 20000 ))

. scripts/bench-lib.sh

ratio() { awk -v b="$1" -v n="$2" 'BEGIN {printf "%.2f", n/b}'; }

for shape in $shapes; do
  IFS=: read -r format batch log <<<"$shape"
  : >"$tmp/base.txt"; : >"$tmp/new.txt"; : >"$tmp/base.rss"; : >"$tmp/new.rss"
  for _ in $(seq "$runs"); do
    for which in base new; do
      bin=$base; [ "$which" = new ] && bin=$new
      rm -rf "$tmp/data"
      LOADGEN_FORMAT=$format GATEMETER_LOG_STORE=$log run_once "$bin" "$new" "$batch" "$secs" "$port" "$tmp/out"
      awk '/^throughput:/ {print $2}' "$tmp/out" >>"$tmp/$which.txt"
      cat "$tmp/out.rss" >>"$tmp/$which.rss"
    done
  done
  b=$(median <"$tmp/base.txt"); n=$(median <"$tmp/new.txt")
  printf '%-4s batch %-3s log %-6s  base %s median %s (%s)  current median %s (%s)  ratio %s\n' "$format" "$batch" "$log" \
    "$base_rev" "$b" "$(tr '\n' ' ' <"$tmp/base.txt")" "$n" "$(tr '\n' ' ' <"$tmp/new.txt")" "$(ratio "$b" "$n")"
  printf '     server peak RSS (VmHWM) median: base %s MB, current %s MB\n' \
    "$(median <"$tmp/base.rss" | awk '{printf "%.0f", $1/1024}')" "$(median <"$tmp/new.rss" | awk '{printf "%.0f", $1/1024}')"
done

if [ "$sql_rows" -gt 0 ]; then
  for which in base new; do : >"$tmp/$which.write"; : >"$tmp/$which.query"; done
  for _ in $(seq "$runs"); do
    for which in base new; do
      bin=$base; [ "$which" = new ] && bin=$new
      rm -f "$tmp"/log.db*
      "$bin" bench-log --sqlite "$tmp/log.db" --rows "$sql_rows" >"$tmp/log.out"
      awk '/^write/ {for (i = 1; i < NF; i++) if ($(i+1) == "rows/s") print $i}' "$tmp/log.out" | tr -d , >>"$tmp/$which.write"
    done
  done
  b=$(median <"$tmp/base.write"); n=$(median <"$tmp/new.write")
  printf 'bench-log sqlite %s rows write rows/s  base median %s (%s)  current median %s (%s)  ratio %s\n' "$sql_rows" \
    "$b" "$(tr '\n' ' ' <"$tmp/base.write")" "$n" "$(tr '\n' ' ' <"$tmp/new.write")" "$(ratio "$b" "$n")"
fi
