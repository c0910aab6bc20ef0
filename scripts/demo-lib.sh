# Shared by test.sh and e2e-assets.sh (sourced, not run).

# start_demo BIN LOG: starts `BIN demo` on a free loopback port, logging to LOG; appends its pid
# to the caller's `pids` array and sets `demo_addr` (host:port) once it listens.
start_demo() {
  local bin=$1 log=$2
  "$bin" demo --listen 127.0.0.1:0 --rate 200 >"$log" 2>&1 &
  pids+=($!)
  demo_addr=""
  for _ in $(seq 1 100); do
    demo_addr=$(sed -n 's/.*addr=\([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n1)
    [ -n "$demo_addr" ] && return 0
    sleep 0.1
  done
  cat "$log" >&2
  echo "demo server did not start" >&2
  return 1
}
