#!/usr/bin/env bash
# End-to-end throughput (`make bench-e2e`, also run by `make bench`):
# signed webhooks from `wapipe-sim load` into `wapipe serve` in production
# mode (PostgreSQL + RabbitMQ, every role in one process), until every
# inbound message is a committed `messages` row.
#
# For each body size (E2E_BODIES: messages per webhook body; 1 is Meta's
# usual single message) it runs E2E_RUNS times for E2E_SECS seconds and
# reports, per run:
#   msg/s    inbound rows committed / (last commit - first request)
#   p50/p99  Meta's `timestamp` -> row committed (`created_at`); Meta's
#            timestamp has whole seconds, so these carry up to 1 s of
#            truncation (about +0.5 s on average)
#   exact    every accepted message stored exactly once (rows = messages
#            sent, no wamid twice)
# then the medians.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${E2E_SECS:-60}
RUNS=${E2E_RUNS:-3}
BODIES=${E2E_BODIES:-1 10}
RATE=${E2E_RATE:-0}
CONC=${E2E_CONC:-64}
DRAIN=${E2E_DRAIN_SECS:-600}
PG_ADMIN=${WAPIPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
SECRET=bench-app-secret
KEY=$(head -c 32 /dev/urandom | base64)
PHONE=106540352242922
WABA=102290129340398
PREFIX="benche2e$$"

cargo build --release -q -p wapipe --bin wapipe
cargo build --release -q -p wapipe-sim --bin wapipe-sim
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
DB="wapipe_bench_e2e_$$"
PG_URL="${PG_ADMIN%/*}/$DB"
# sqlx sets no TCP_NODELAY: a local server is reached through its socket
# (see bench.sh and the README).
WAPIPE_PG_URL=$PG_URL
[ -S /var/run/postgresql/.s.PGSQL.5432 ] && WAPIPE_PG_URL="postgres://postgres@localhost/$DB?host=/var/run/postgresql"
PID=
cleanup() {
  [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$PREFIX" "$BIN/wapipe" topology delete >/dev/null 2>&1 || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

export DATABASE_URL="$WAPIPE_PG_URL" AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$PREFIX" \
  WAPIPE_SECRET_KEY="$KEY" WAPIPE_LISTEN=127.0.0.1:18081 WAPIPE_METRICS_LISTEN=127.0.0.1:19465 RUST_LOG=warn
psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB\"" >/dev/null
"$BIN/wapipe" migrate >/dev/null
"$BIN/wapipe" config add --company Bench --phone-number-id "$PHONE" --waba-id "$WABA" \
  --app-secret "$SECRET" --verify-token v --access-token t >/dev/null 2>&1
"$BIN/wapipe" serve >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:18081/healthz >/dev/null 2>&1 && break; sleep 0.2; done

rows() { psql "$PG_URL" -Atc "select count(*) from messages where direction = 'inbound'"; }

for per in $BODIES; do
  for i in $(seq 1 "$RUNS"); do
    before=$(rows)
    t0=$(date +%s.%N)
    "$BIN/wapipe-sim" load --webhook http://127.0.0.1:18081/api/whatsapp/webhooks --app-secret "$SECRET" \
      --rate "$RATE" --duration "${SECS}s" --concurrency "$CONC" --phone-number-id "$PHONE" --waba-id "$WABA" \
      --messages-per-body "$per" --customers 5000 --json >"$WORK/load.json"
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["inbound_messages"])' "$WORK/load.json")
    want=$((before + sent))
    deadline=$((SECONDS + DRAIN))
    while [ "$(rows)" -lt "$want" ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
    sleep 2   # anything beyond `want` would be a duplicate: give it time to show
    psql "$PG_URL" -AtF ' ' -c "
      with r as (
        select created_at, extract(epoch from created_at - \"timestamp\") as lag
        from messages where direction = 'inbound' and created_at >= to_timestamp($t0))
      select count(*),
             extract(epoch from max(created_at)) - $t0,
             percentile_cont(0.5) within group (order by lag),
             percentile_cont(0.99) within group (order by lag),
             (select count(*) - count(distinct (config_id, provider_message_id)) from messages)
      from r" | while read -r n span p50 p99 dups; do
        printf '{"per_body":%s,"sent":%s,"rows":%s,"span":%s,"p50":%s,"p99":%s,"dups":%s,"accepted_per_sec":%s}\n' \
          "$per" "$sent" "$n" "$span" "${p50:-0}" "${p99:-0}" "$dups" \
          "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accepted_per_sec"])' "$WORK/load.json")"
      done >>"$WORK/e2e.jsonl"
    tail -n1 "$WORK/e2e.jsonl" >&2
  done
done

python3 - "$WORK/e2e.jsonl" "$RUNS" "$SECS" "$CONC" "$RATE" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs, secs, conc, rate = sys.argv[2:6]
print(f"\nend to end (wapipe serve, PostgreSQL + RabbitMQ): {runs} runs x {secs}s, {conc} connections, "
      f"rate {'max' if rate in ('0', '0.0') else rate + '/s'}, medians")
print(f"{'msgs/body':>9} {'webhooks/s':>11} {'offered msg/s':>14} {'msg/s':>8} {'p50 s':>7} {'p99 s':>7} {'exactly once':>13}")
for per in sorted({r["per_body"] for r in rows}):
    rs = [r for r in rows if r["per_body"] == per]
    med = lambda k: statistics.median(r[k] for r in rs)
    exact = all(r["rows"] == r["sent"] and r["dups"] == 0 for r in rs)
    msgs = statistics.median(r["rows"] / r["span"] for r in rs if r["span"] > 0)
    offered = statistics.median(r["sent"] / float(secs) for r in rs)
    print(f"{per:>9} {med('accepted_per_sec'):>11.0f} {offered:>14.0f} {msgs:>8.0f} {med('p50'):>7.2f} {med('p99'):>7.2f} "
          f"{('yes' if exact else 'NO'):>13}")
    print(f"{'':>9} runs (msg/s): " + ", ".join(f"{r['rows'] / r['span']:.0f}" for r in rs if r["span"] > 0))
    for r in rs:
        if r["rows"] != r["sent"] or r["dups"]:
            print(f"  run: sent {r['sent']} rows {r['rows']} duplicates {r['dups']}")
PY
