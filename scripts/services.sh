# Throwaway services for the tests, sourced by scripts/test.sh and scripts/with-services.sh.
# Each service runs on a free loopback port, keeps its data under "$svc_dir", and is stopped by
# stop_services. Nothing here touches the services a machine may already run.
#
# Exports for the tests:
#   GATEMETER_TEST_REDIS_URL      redis://127.0.0.1:PORT/ of a shared throwaway redis-server
#   GATEMETER_TEST_REDIS_SERVER   path of redis-server, for tests that run (and kill) their own
#   GATEMETER_TEST_DATABASE_URL   postgres://… of a throwaway PostgreSQL server (database gatemeter)

svc_pids=()
svc_pg_data=""

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# Runs a PostgreSQL tool as the postgres user when we are root (initdb refuses to run as root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Prints the address a gatemeter logged (`addr=IP:PORT`) in the file $1, waiting up to 10 s;
# prints nothing if it never did.
logged_addr() {
  local addr=""
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/.*addr=\([0-9.]*:[0-9]*\).*/\1/p' "$1" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  echo "$addr"
}

start_redis() {
  local port
  port=$(free_port)
  mkdir -p "$svc_dir/redis"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$svc_dir/redis" --logfile "$svc_dir/redis/redis.log" --daemonize no &
  svc_pids+=($!)
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  redis-cli -p "$port" ping >/dev/null || { cat "$svc_dir/redis/redis.log" >&2; return 1; }
  export GATEMETER_TEST_REDIS_URL="redis://127.0.0.1:$port/"
  GATEMETER_TEST_REDIS_SERVER=$(command -v redis-server)
  export GATEMETER_TEST_REDIS_SERVER
}

start_postgres() {
  local bin port
  bin=$(pg_bin) || { echo "PostgreSQL server binaries not found" >&2; return 1; }
  port=$(free_port)
  svc_pg_data="$svc_dir/pg"
  mkdir -p "$svc_pg_data"
  [ "$(id -u)" = 0 ] && chown postgres "$svc_dir" "$svc_pg_data"
  as_pg "$bin/initdb" -D "$svc_pg_data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$bin/pg_ctl" -D "$svc_pg_data" -l "$svc_pg_data/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $svc_pg_data -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres gatemeter
  export GATEMETER_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/gatemeter"
}

stop_services() {
  if [ -n "$svc_pg_data" ] && [ -f "$svc_pg_data/postmaster.pid" ]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$svc_pg_data" -m immediate stop >/dev/null 2>&1 || true
  fi
  for p in "${svc_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Wait for them to exit: redis-server writes its log as it shuts down, and a caller removing
  # "$svc_dir" meanwhile failed with "Directory not empty".
  for p in "${svc_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
