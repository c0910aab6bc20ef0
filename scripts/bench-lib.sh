# Shared by bench.sh and bench-ab.sh (sourced, not run).

# Median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# run_once SERVER_BIN LOADGEN_BIN BATCH SECONDS PORT OUT
# Starts SERVER_BIN on core 0, drives it from core 1 at max rate, stops it. Writes loadgen's
# report to OUT and the server's peak RSS (kB) to OUT.rss; fails if the counters differ.
# LOADGEN_FORMAT (json, otlp) chooses what loadgen sends.
run_once() {
  local server=$1 loadgen=$2 batch=$3 secs=$4 port=$5 out=$6 pid
  # The aggregate path only, unless the caller sets GATEMETER_LOG_STORE (e.g. sqlite); a SQLite
  # log goes to a throwaway directory.
  GATEMETER_LOG_STORE=${GATEMETER_LOG_STORE:-none} GATEMETER_DATA_DIR=$(dirname "$out")/data \
    taskset -c 0 "$server" serve --listen "127.0.0.1:$port" 2>/dev/null &
  pid=$!
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  taskset -c 1 "$loadgen" loadgen --format "${LOADGEN_FORMAT:-json}" --target "http://127.0.0.1:$port" \
    --rate max --batch "$batch" --duration "$secs" >"$out" 2>&1 || { cat "$out"; kill "$pid"; return 1; }
  awk '/VmHWM/ {print $2}' "/proc/$pid/status" >"$out.rss"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  grep -q 'counters: *exact' "$out" || { cat "$out"; echo "counters differ" >&2; return 1; }
}
