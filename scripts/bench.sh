#!/usr/bin/env bash
# `make bench`: signed webhooks from `wapipe-sim load` against
#   1. a no-work hyper server (the same-run baseline),
#   2. wapipe in production mode (PostgreSQL + RabbitMQ),
#   3. wapipe in embedded mode (SQLite + in-process queue),
# each BENCH_RUNS times for BENCH_SECS seconds at BENCH_CONC connections.
# Prints the median of each figure and the ratio to the baseline. Then
#   4. outbound sends/s through the fake Graph API (bench_outbound example),
#   5. end to end, webhook -> messages row (scripts/bench_e2e.sh),
#   6. bot replies (scripts/bench_bot.sh, with and without status webhooks),
#   7. follow-up reminders (scripts/bench_reminders.sh),
#   8. the REST API (scripts/bench_api.sh),
#   9. the events WebSocket's fan-out (scripts/bench_fanout.sh),
#  10. a paced burst of 10,000 sends at max_mps 80 (scripts/bench_burst.sh),
#  11. inbound media (scripts/bench_media.sh),
#  12. memory returned after bursts, jemalloc against glibc (scripts/bench_memory.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BENCH_SECS:-10}
RUNS=${BENCH_RUNS:-3}
CONC=${BENCH_CONC:-64}
PG_ADMIN=${WAPIPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
SECRET=bench-app-secret
KEY=$(head -c 32 /dev/urandom | base64)
PHONE=106540352242922
WABA=102290129340398

cargo build --release -q -p wapipe --bin wapipe
cargo build --release -q -p wapipe-sim --bin wapipe-sim
cargo build --release -q -p wapipe-workers --example bench_outbound
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${BENCH_DB:-}" ] && AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="bench$$" "$BIN/wapipe" topology delete >/dev/null 2>&1 || true
  [ -n "${BENCH_DB:-}" ] && psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_http() {
  for _ in $(seq 1 100); do curl -fs "http://$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "bench: $1 did not come up" >&2; return 1
}

# load TARGET_URL LABEL -> appends JSON lines to $WORK/LABEL.jsonl
load() {
  for i in $(seq 1 "$RUNS"); do
    "$BIN/wapipe-sim" load --webhook "$1" --app-secret "$SECRET" --rate 0 --duration "${SECS}s" \
      --concurrency "$CONC" --phone-number-id "$PHONE" --waba-id "$WABA" --json >>"$WORK/$2.jsonl"
  done
}

# 1. baseline
"$BIN/wapipe-sim" nowork --listen 127.0.0.1:18090 >/dev/null 2>&1 &
PIDS+=($!)
wait_http 127.0.0.1:18090 || sleep 1
load http://127.0.0.1:18090/api/whatsapp/webhooks nowork

start_wapipe() { # mode-label, role, extra env...
  local label=$1 role=$2; shift 2
  env "$@" WAPIPE_SECRET_KEY="$KEY" WAPIPE_LISTEN=127.0.0.1:18080 WAPIPE_METRICS_LISTEN=127.0.0.1:19464 \
    RUST_LOG=warn "$BIN/wapipe" migrate >/dev/null
  env "$@" WAPIPE_SECRET_KEY="$KEY" RUST_LOG=warn "$BIN/wapipe" config add --company Bench \
    --phone-number-id "$PHONE" --waba-id "$WABA" --app-secret "$SECRET" --verify-token v --access-token t \
    >/dev/null 2>&1 || true   # the second start on one database finds it there
  env "$@" WAPIPE_SECRET_KEY="$KEY" WAPIPE_LISTEN=127.0.0.1:18080 WAPIPE_METRICS_LISTEN=127.0.0.1:19464 \
    RUST_LOG=warn "$BIN/wapipe" "$role" >"$WORK/$label.log" 2>&1 &
  PIDS+=($!)
  wait_http 127.0.0.1:18080
}
stop_wapipe() { kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; }

# 2. production
BENCH_DB="wapipe_bench_$$"
psql "$PG_ADMIN" -qc "CREATE DATABASE \"$BENCH_DB\"" >/dev/null
PG_URL="${PG_ADMIN%/*}/$BENCH_DB"
# sqlx does not set TCP_NODELAY on PostgreSQL connections, so a multi-row
# INSERT larger than one segment waits ~40 ms for the server's delayed ACK.
# A local server is reached through its Unix socket (no Nagle); see README.
WAPIPE_PG_URL=$PG_URL
[ -S /var/run/postgresql/.s.PGSQL.5432 ] && WAPIPE_PG_URL="postgres://postgres@localhost/$BENCH_DB?host=/var/run/postgresql"
# 2a. the receiver alone (`wapipe ingest`: verify, group commit, publish), as production deploys it
start_wapipe production-ingest ingest DATABASE_URL="$WAPIPE_PG_URL" AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="bench$$"
load http://127.0.0.1:18080/api/whatsapp/webhooks production-ingest
stop_wapipe
# 2b. every role in one process (`wapipe serve`): the receiver shares the 2 cores with the workers
start_wapipe production-serve serve DATABASE_URL="$WAPIPE_PG_URL" AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="bench$$"
load http://127.0.0.1:18080/api/whatsapp/webhooks production-serve
PROD_ROWS=$(psql "$PG_URL" -Atc "select count(*) from webhook_events")
stop_wapipe

# 3. embedded
start_wapipe embedded serve DATABASE_URL="sqlite://$WORK/bench.sqlite?mode=rwc" WAPIPE_SECRET_KEY_FILE="$WORK/secret.key"
load http://127.0.0.1:18080/api/whatsapp/webhooks embedded
stop_wapipe

# 4. outbound: queued messages through the outbound worker to the fake Graph
OB_DB="wapipe_bench_ob_$$"
OB_URL="${PG_ADMIN%/*}/$OB_DB"
[ -S /var/run/postgresql/.s.PGSQL.5432 ] && OB_URL="postgres://postgres@localhost/$OB_DB?host=/var/run/postgresql"
# Interleaved: batches of up to 32 jobs per lane (the default), and one job
# at a time as the same-run baseline.
for i in $(seq 1 "$RUNS"); do
  for batch in 1 32; do
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$OB_DB\" WITH (FORCE)" -c "CREATE DATABASE \"$OB_DB\"" >/dev/null
    "$BIN/examples/bench_outbound" --db "$OB_URL" --messages "${BENCH_OUTBOUND_MESSAGES:-10000}" --batch "$batch" >>"$WORK/outbound.jsonl"
  done
done
psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$OB_DB\" WITH (FORCE)" >/dev/null

python3 - "$WORK" "$RUNS" "$SECS" "$CONC" "$PROD_ROWS" <<'PY'
import json, statistics, sys, os
work, runs, secs, conc, prod_rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
def load(label):
    with open(os.path.join(work, label + ".jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]
med = lambda rows, k: statistics.median(r[k] for r in rows)
base = load("nowork")
b = med(base, "accepted_per_sec")
print(f"\nwebhook ingest: {runs} runs x {secs}s, {conc} connections, medians")
print(f"{'target':<18} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7} {'non-2xx':>8}")
total = {}
for label in ["nowork", "production-ingest", "production-serve", "embedded"]:
    rows = load(label)
    a = med(rows, "accepted_per_sec")
    total[label] = sum(r["accepted"] for r in rows)
    print(f"{label:<18} {a:>11.0f} {med(rows,'p50_ms'):>8.2f} {med(rows,'p99_ms'):>8.2f} {a/b:>7.3f} {sum(r['rejected']+r['errors'] for r in rows):>8}")
print(f"\nproduction: {total['production-ingest'] + total['production-serve']} accepted, {prod_rows} rows committed in webhook_events")
ob = load("outbound")
print("\noutbound (PostgreSQL, fake Graph API, one recipient per message, 32 lanes)")
medians = {}
for batch in (1, 32):
    rows = [r for r in ob if r.get("batch") == batch]
    rates = [r["sends_per_sec"] for r in rows]
    medians[batch] = statistics.median(rates)
    runs_txt = ", ".join(f"{x:.0f}" for x in rates)
    exact = "yes" if all(r["exactly_once"] for r in rows) else "NO"
    print(f"  batch {batch:>2}: median {medians[batch]:.0f} sends/s (runs: {runs_txt}); exactly once: {exact}")
print(f"  ratio batch 32 / batch 1: {medians[32] / medians[1]:.2f}")
PY

# 5. end to end: as fast as possible (short runs), then issue 4's target:
# about 5,000 inbound messages/s offered (620 bodies/s of 10 messages; 18%
# of bodies are receipts) for 60 s, which must be stored as they come.
E2E_SECS=${E2E_SECS:-15} E2E_RUNS=${E2E_RUNS:-$RUNS} scripts/bench_e2e.sh
E2E_SECS=60 E2E_RUNS=${E2E_RUNS:-$RUNS} E2E_BODIES=10 E2E_RATE=${E2E_TARGET_RATE:-620} scripts/bench_e2e.sh

# 6. the chatbot: replies/s and webhook -> Graph latency, first with Meta's
# status webhooks coming back (three per reply), then the bot alone.
scripts/bench_bot.sh
BOT_STATUSES=0 scripts/bench_bot.sh

# 7. follow-up reminders: 20,000 due at once, two worker processes.
scripts/bench_reminders.sh

# 8. the agents' REST API: lists, a deep cursor, messages and sends, next to
# a no-work axum route.
scripts/bench_api.sh

# 9. the events WebSocket: 1,000 clients while 500 inbound messages/s arrive.
scripts/bench_fanout.sh

# 10. a paced burst: 10,000 template sends queued at once at max_mps 80.
scripts/bench_burst.sh

# 11. inbound media: images fetched from the fake Graph and stored.
scripts/bench_media.sh

# 12. memory after bursts: large refused bodies, then 20,000 webhooks.
scripts/bench_memory.sh
