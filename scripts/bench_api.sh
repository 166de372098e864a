#!/usr/bin/env bash
# `make bench-api` (part of `make bench`): the agents' REST API under load.
# `wapipe api` (production mode: PostgreSQL + RabbitMQ, no workers) over
# API_MESSAGES messages (100,000) in API_CHATS chats (5,000), and, in the
# same run, a no-work axum route (`wapipe-sim nowork --axum`, the API's own
# stack) as the baseline. API_RUNS runs of API_SECS seconds at API_CONC
# connections for each of:
#   chats-first  GET /chats, the first page (50)
#   chats-deep   GET /chats with a cursor ~90 pages deep (no OFFSET: keyset)
#   messages     GET /chats/:id/messages over 200 chats
#   send         POST /chats/:id/messages (text) over 200 chats: queued + 202
# Prints medians of requests/s, p50 and p99, and each one's ratio to the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${API_SECS:-10}
RUNS=${API_RUNS:-3}
CONC=${API_CONC:-64}
CHATS=${API_CHATS:-5000}
MESSAGES=${API_MESSAGES:-100000}
PG_ADMIN=${WAPIPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
PHONE=106540352242933
WABA=102290129340399
LISTEN=127.0.0.1:18180
NOWORK=127.0.0.1:18190

cargo build --release -q -p wapipe --bin wapipe
cargo build --release -q -p wapipe-sim --bin wapipe-sim
BIN=target/release
WORK=$(mktemp -d)
DB="wapipe_bench_api_$$"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$BIN/wapipe" topology delete >/dev/null 2>&1 || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB\"" >/dev/null
PG_URL="${PG_ADMIN%/*}/$DB"
# Through the Unix socket when the server is local (see bench.sh: sqlx sets
# no TCP_NODELAY).
DB_URL=$PG_URL
[ -S /var/run/postgresql/.s.PGSQL.5432 ] && DB_URL="postgres://postgres@localhost/$DB?host=/var/run/postgresql"
export DATABASE_URL=$DB_URL AMQP_URL=$AMQP WAPIPE_QUEUE_PREFIX="benchapi$$" RUST_LOG=warn
export WAPIPE_SECRET_KEY
WAPIPE_SECRET_KEY=$(head -c 32 /dev/urandom | base64)
export WAPIPE_API_LISTEN=$LISTEN WAPIPE_METRICS_LISTEN=127.0.0.1:18191 WAPIPE_TEMPLATE_SYNC_S=0
# One key carries the whole load: the per-key limit is not what is measured.
export WAPIPE_API_RATE_PER_S=10000000 WAPIPE_API_RATE_BURST=10000000

"$BIN/wapipe" migrate >/dev/null 2>&1
"$BIN/wapipe" config add --company "Bench API" --phone-number-id "$PHONE" --waba-id "$WABA" \
  --app-secret s --verify-token v --access-token t >/dev/null 2>&1
KEY=$("$BIN/wapipe" apikey create --admin --name bench 2>/dev/null | tail -n1)
CONFIG=$(psql "$PG_URL" -Atc "select id from whatsapp_configs limit 1")

# Customers who wrote within the hour (the 24-hour window is open, so a
# free-form send is accepted), one chat each, messages spread over them.
per_chat=$(( (MESSAGES + CHATS - 1) / CHATS ))
psql "$PG_URL" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO customers (id, created_at, updated_at, config_id, wa_id, phone_number, whatsapp_name, last_inbound_at, last_contact_at)
SELECT gen_random_uuid(), now(), now(), '$CONFIG', w, w, 'Customer ' || g, now() - interval '1 hour', now() - interval '1 hour'
FROM (SELECT g, '1555' || lpad(g::text, 7, '0') AS w FROM generate_series(1, $CHATS) g) s;
INSERT INTO chats (id, created_at, updated_at, config_id, customer_id, phone_number, phone_number_id, last_message, last_message_time, unread_count)
SELECT gen_random_uuid(), now(), now(), '$CONFIG', c.id, c.wa_id, '$PHONE', 'last words',
       now() - (row_number() OVER (ORDER BY c.wa_id)) * interval '1 second', 1
FROM customers c;
INSERT INTO messages (id, created_at, updated_at, config_id, chat_id, customer_id, direction, origin, sender_type,
                      type, status, text, provider_message_id, timestamp)
SELECT gen_random_uuid(), t, t, '$CONFIG', ch.id, ch.customer_id, 'inbound', 'user', 'customer', 'text', 'delivered',
       'message ' || n, 'wamid.benchapi.' || ch.id || '.' || n, t
FROM chats ch CROSS JOIN generate_series(1, $per_chat) n
CROSS JOIN LATERAL (SELECT ch.last_message_time - (($per_chat - n) * interval '1 minute') AS t) tt
LIMIT $MESSAGES;
ANALYZE;
SQL
echo "bench-api: $(psql "$PG_URL" -Atc "select count(*) from chats") chats, $(psql "$PG_URL" -Atc "select count(*) from messages") messages"

"$BIN/wapipe" api >"$WORK/api.log" 2>&1 &
PIDS+=($!)
"$BIN/wapipe-sim" nowork --axum --listen "$NOWORK" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fs -H "Authorization: Bearer $KEY" "http://$LISTEN/api/whatsapp/chats?limit=1" >/dev/null 2>&1 && break
  sleep 0.2
done

API=/api/whatsapp
get() { curl -fsS -H "Authorization: Bearer $KEY" "http://$LISTEN$1"; }
# A cursor ~90 pages deep, found by walking there once.
cursor=""
for _ in $(seq 1 90); do
  cursor=$(get "$API/chats?limit=50${cursor:+&cursor=$cursor}" | jq -r .nextCursor)
done
[ -n "$cursor" ] && [ "$cursor" != null ] || { echo "bench-api: no deep cursor" >&2; exit 1; }
mapfile -t sample < <(psql "$PG_URL" -Atc "select id from chats order by random() limit 200")
echo "GET $API/chats?limit=50" >"$WORK/chats-first.txt"
echo "GET $API/chats?limit=50&cursor=$cursor" >"$WORK/chats-deep.txt"
: >"$WORK/messages.txt"
: >"$WORK/send.txt"
for id in "${sample[@]}"; do
  echo "GET $API/chats/$id/messages?limit=50" >>"$WORK/messages.txt"
  echo "POST $API/chats/$id/messages {\"type\":\"text\",\"text\":\"Thanks, we are on it.\"}" >>"$WORK/send.txt"
done
echo "GET /" >"$WORK/nowork.txt"

hit() { # label base
  "$BIN/wapipe-sim" http --base "http://$2" --requests "$WORK/$1.txt" -H "Authorization: Bearer $KEY" \
    --duration "${SECS}s" --concurrency "$CONC" --json >>"$WORK/$1.jsonl" ||
    { echo "bench-api: $1 got no 2xx answer: $(tail -n1 "$WORK/$1.jsonl")" >&2; tail -n 5 "$WORK/api.log" >&2; exit 1; }
}
# Interleaved, so a noisy moment of the machine lands on every target alike.
for _ in $(seq 1 "$RUNS"); do
  hit nowork "$NOWORK"
  for label in chats-first chats-deep messages send; do hit "$label" "$LISTEN"; done
done
SENT=$(psql "$PG_URL" -Atc "select count(*) from messages where direction = 'outbound'")

python3 - "$WORK" "$RUNS" "$SECS" "$CONC" "$SENT" <<'PY'
import json, os, statistics, sys
work, runs, secs, conc, sent = sys.argv[1:6]
def rows(label):
    with open(os.path.join(work, label + ".jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]
med = lambda rs, k: statistics.median(r[k] for r in rs)
base = med(rows("nowork"), "accepted_per_sec")
print(f"\nREST API: {runs} runs x {secs}s, {conc} connections, medians (wapipe api, PostgreSQL)")
print(f"{'target':<13} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7} {'non-2xx':>8}  runs (req/s)")
accepted_sends = 0
for label in ["nowork", "chats-first", "chats-deep", "messages", "send"]:
    rs = rows(label)
    a = med(rs, "accepted_per_sec")
    bad = sum(r["rejected"] + r["errors"] for r in rs)
    if label == "send":
        accepted_sends = sum(r["accepted"] for r in rs)
    each = ", ".join(f"{r['accepted_per_sec']:.0f}" for r in rs)
    print(f"{label:<13} {a:>9.0f} {med(rs,'p50_ms'):>8.2f} {med(rs,'p99_ms'):>8.2f} {a/base:>7.3f} {bad:>8}  {each}")
print(f"\nsends: {accepted_sends} answered 202, {sent} outbound rows queued")
PY
