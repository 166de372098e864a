# Sourced by the production-mode benchmarks (PostgreSQL + RabbitMQ):
# `bench_production NAME` builds the release binaries, names a fresh
# database (wapipe_bench_NAME_PID, not yet created) and queue prefix, and
# on exit stops the processes in PIDS, deletes the queues and the
# database, and removes the work folder. It sets PG_ADMIN, AMQP, KEY,
# PREFIX, BIN, WORK, DB, PG_URL, WAPIPE_PG_URL (through the local socket
# when there is one: sqlx sets no TCP_NODELAY) and PIDS.

bench_production() {
  local name=$1
  PG_ADMIN=${WAPIPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
  AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
  KEY=$(head -c 32 /dev/urandom | base64)
  PREFIX="bench${name}$$"
  cargo build --release -q -p wapipe --bin wapipe
  cargo build --release -q -p wapipe-sim --bin wapipe-sim
  BIN=${CARGO_TARGET_DIR:-target}/release
  WORK=$(mktemp -d)
  DB="wapipe_bench_${name}_$$"
  PG_URL="${PG_ADMIN%/*}/$DB"
  WAPIPE_PG_URL=$PG_URL
  [ -S /var/run/postgresql/.s.PGSQL.5432 ] && WAPIPE_PG_URL="postgres://postgres@localhost/$DB?host=/var/run/postgresql"
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$PREFIX" "$BIN/wapipe" topology delete >/dev/null 2>&1 || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
