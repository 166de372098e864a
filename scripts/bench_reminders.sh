#!/usr/bin/env bash
# Follow-up reminders (`make bench-reminders`): REM_COUNT follow-ups (default
# 20,000) fall due at once; REM_PROCS `wapipe workers --roles followup`
# processes (default 2) in production mode (PostgreSQL + RabbitMQ) claim
# and remind them. Each run reports:
#   reminders/s  follow-ups reminded / (last reminder_sent_at - first claimed_at)
#   wall s       from the processes' start to the last reminder
#   exact        every follow-up reminded exactly once: one queued message
#                each (messages.answers_message_id), reminder_sent on all,
#                no follow-up claimed twice
# then the median over REM_RUNS runs (default 3). The agents' messages are
# only queued (no outbound role runs): this measures the reminders, not
# Meta's per-recipient limits.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${REM_COUNT:-20000}
PROCS=${REM_PROCS:-2}
RUNS=${REM_RUNS:-3}
AGENTS=${REM_AGENTS:-200}
PG_ADMIN=${WAPIPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
KEY=$(head -c 32 /dev/urandom | base64)
PREFIX="benchrem$$"

cargo build --release -q -p wapipe --bin wapipe
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
DB="wapipe_bench_rem_$$"
PG_URL="${PG_ADMIN%/*}/$DB"
# sqlx sets no TCP_NODELAY: a local server is reached through its socket
# (see bench.sh and the README).
WAPIPE_PG_URL=$PG_URL
[ -S /var/run/postgresql/.s.PGSQL.5432 ] && WAPIPE_PG_URL="postgres://postgres@localhost/$DB?host=/var/run/postgresql"
PIDS=()
stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_all
  AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$PREFIX" "$BIN/wapipe" topology delete >/dev/null 2>&1 || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

export DATABASE_URL="$WAPIPE_PG_URL" AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$PREFIX" \
  WAPIPE_SECRET_KEY="$KEY" RUST_LOG=warn
sql() { psql "$PG_URL" -qAt -v ON_ERROR_STOP=1 "$@"; }

for run in $(seq 1 "$RUNS"); do
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" -c "CREATE DATABASE \"$DB\"" >/dev/null
  "$BIN/wapipe" migrate >/dev/null
  CFG=$("$BIN/wapipe" config add --company Bench --phone-number-id 106540352242922 \
    --waba-id 102290129340398 --app-secret s --verify-token v --access-token t 2>/dev/null | tail -1)
  # One customer's chat, AGENTS agents with WhatsApp numbers, and COUNT
  # follow-ups spread over them, all due a minute ago.
  sql -c "
    insert into customers (id, created_at, updated_at, config_id, wa_id, name)
      values (gen_random_uuid(), now(), now(), '$CFG', '4915112345678', 'Zoë Martin');
    insert into chats (id, created_at, updated_at, config_id, customer_id)
      select gen_random_uuid(), now(), now(), '$CFG', id from customers;
    insert into agents (id, created_at, updated_at, config_id, company, name, email, phone_number)
      select gen_random_uuid(), now(), now(), '$CFG', 'Bench', 'Agent ' || g, 'a' || g || '@bench.example',
             '+3361' || lpad(g::text, 7, '0')
      from generate_series(1, $AGENTS) g;
    with a as (select array_agg(id order by email) ids from agents), c as (select id, customer_id from chats)
    insert into follow_ups (id, created_at, updated_at, config_id, chat_id, customer_id, agent_id, title,
                            scheduled_at, status, priority)
      select gen_random_uuid(), now(), now(), '$CFG', c.id, c.customer_id, a.ids[1 + g % $AGENTS],
             'Call back ' || g, now() - interval '1 minute', 'pending', 'medium'
      from generate_series(1, $COUNT) g, a, c;
    analyze;"
  t0=$(date +%s.%N)
  for p in $(seq 1 "$PROCS"); do
    WAPIPE_METRICS_LISTEN="127.0.0.1:$((19470 + p))" "$BIN/wapipe" workers --roles followup \
      >"$WORK/workers-$p.log" 2>&1 &
    PIDS+=($!)
  done
  deadline=$((SECONDS + ${REM_TIMEOUT_SECS:-600}))
  while [ "$(sql -c "select count(*) from follow_ups where reminder_sent")" -lt "$COUNT" ]; do
    if [ $SECONDS -ge $deadline ]; then echo "bench-reminders: timed out" >&2; tail -5 "$WORK"/workers-*.log >&2; exit 1; fi
    sleep 0.2
  done
  t1=$(date +%s.%N)
  sleep 1   # a duplicate reminder would show up now
  stop_all
  sql -F ' ' -c "
    select $COUNT / greatest(extract(epoch from max(reminder_sent_at) - min(claimed_at)), 0.001),
           $t1 - $t0,
           (select count(*) from messages where answers_message_id is not null) = $COUNT
             and (select count(distinct answers_message_id) from messages) = $COUNT
             and count(*) filter (where reminder_sent) = $COUNT
             and max(claim_count) = 1
    from follow_ups" >>"$WORK/runs.txt"
done

python3 - "$WORK/runs.txt" "$COUNT" "$PROCS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
count, procs = sys.argv[2], sys.argv[3]
print(f"\nreminders: {count} follow-ups due at once, {procs} worker processes (PostgreSQL + RabbitMQ)")
print(f"{'run':>4} {'reminders/s':>12} {'wall s':>8} {'exact':>6}")
for i, (rate, wall, exact) in enumerate(rows, 1):
    print(f"{i:>4} {float(rate):>12.0f} {float(wall):>8.2f} {'yes' if exact == 't' else 'NO':>6}")
print(f"median {statistics.median(float(r[0]) for r in rows):.0f} reminders/s; "
      f"exactly once: {'yes' if all(r[2] == 't' for r in rows) else 'NO'}")
PY
