#!/usr/bin/env bash
# Same-run A/B of ingest throughput: the server built from BASE_REV and the current tree take
# turns (server on core 0, the current loadgen on core 1), RUNS runs each per batch size;
# medians and the ratio current/base are printed. The machine is shared and noisy: compare
# within one run, not across runs.
# Usage: scripts/bench-ab.sh BASE_REV [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
base_rev=${1:?usage: scripts/bench-ab.sh BASE_REV [RUNS] [SECONDS]}
runs=${2:-5}
secs=${3:-5}
root=$(pwd)
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; git -C "$root" worktree remove --force "$tmp/base" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

cargo build --release --quiet --bin gatemeter
git worktree add -q "$tmp/base" "$base_rev"
CARGO_TARGET_DIR="$root/target/bench-base" cargo build --release --quiet --bin gatemeter --manifest-path "$tmp/base/Cargo.toml"
new=$root/target/release/gatemeter
base=$root/target/bench-base/release/gatemeter
port=$(( 20000 + RANDOM % 20000 ))

. scripts/bench-lib.sh

for batch in 100 1; do
  : >"$tmp/base.txt"; : >"$tmp/new.txt"
  for _ in $(seq "$runs"); do
    for which in base new; do
      bin=$base; [ "$which" = new ] && bin=$new
      run_once "$bin" "$new" "$batch" "$secs" "$port" "$tmp/out"
      awk '/^throughput:/ {print $2}' "$tmp/out" >>"$tmp/$which.txt"
    done
  done
  b=$(median <"$tmp/base.txt"); n=$(median <"$tmp/new.txt")
  printf 'batch %-3s  base %s median %s (%s)  current median %s (%s)  ratio %s\n' "$batch" "$base_rev" "$b" \
    "$(tr '\n' ' ' <"$tmp/base.txt")" "$n" "$(tr '\n' ' ' <"$tmp/new.txt")" "$(awk -v b="$b" -v n="$n" 'BEGIN {printf "%.2f", n/b}')"
done
