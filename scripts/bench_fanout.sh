#!/usr/bin/env bash
# `make bench-fanout` (part of `make bench`): the events WebSocket under
# load. Production mode (PostgreSQL + RabbitMQ) in three processes, so the
# API's memory is its own: `wapipe ingest`, `wapipe workers` and
# `wapipe api`. FANOUT_ADMINS (20) admin keys that see everything and
# FANOUT_AGENTS (980) agent keys, each agent assigned one customer's chat,
# one WebSocket client per key (`wapipe-sim fanout`), while inbound text
# messages come through the signed webhook at FANOUT_RATE (500/s) for
# FANOUT_SECS (60) seconds, spread over the agents' customers.
#
# Each inbound message writes `message.created` and `chat.updated` for its
# chat: every admin client and the chat's agent may see both. At the end
# every key's events are listed through `GET /events` and compared with
# what its client received (the run fails on a missing, doubled or
# out-of-order event). Reported, per run and as medians of FANOUT_RUNS (3):
#   delivered/s   events received over all clients per second
#   p50/p99       the event's `occurredAt` (its change's transaction) ->
#                 received by the client
#   RSS           of the API process: idle before the clients, and the
#                 peak while they are served (the ratio is their cost)
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${FANOUT_SECS:-60}
RATE=${FANOUT_RATE:-500}
ADMINS=${FANOUT_ADMINS:-20}
AGENTS=${FANOUT_AGENTS:-980}
RUNS=${FANOUT_RUNS:-3}
PG_ADMIN=${WAPIPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
SECRET=bench-fanout-secret
PHONE=106540352242944
WABA=102290129340344
INGEST=127.0.0.1:18281
API=127.0.0.1:18282
PREFIX="benchfan$$"

# Two thousand sockets (both ends) live in this run's processes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p wapipe --bin wapipe
cargo build --release -q -p wapipe-sim --bin wapipe-sim
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
DB="wapipe_bench_fanout_$$"
PG_URL="${PG_ADMIN%/*}/$DB"
DB_URL=$PG_URL
# sqlx sets no TCP_NODELAY: a local server is reached through its socket.
[ -S /var/run/postgresql/.s.PGSQL.5432 ] && DB_URL="postgres://postgres@localhost/$DB?host=/var/run/postgresql"
PIDS=()
stop_all() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
cleanup() {
  stop_all
  "$BIN/wapipe" topology delete >/dev/null 2>&1 || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

export DATABASE_URL=$DB_URL AMQP_URL=$AMQP WAPIPE_QUEUE_PREFIX=$PREFIX RUST_LOG=warn
export WAPIPE_SECRET_KEY
WAPIPE_SECRET_KEY=$(head -c 32 /dev/urandom | base64)
export WAPIPE_LISTEN=$INGEST WAPIPE_API_LISTEN=$API WAPIPE_TEMPLATE_SYNC_S=0
# The check at the end lists every key's events at once: the per-key
# limit is not what is measured.
export WAPIPE_API_RATE_PER_S=100000 WAPIPE_API_RATE_BURST=100000

psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB\"" >/dev/null
"$BIN/wapipe" migrate >/dev/null 2>&1
"$BIN/wapipe" config add --company "Bench Fanout" --phone-number-id "$PHONE" --waba-id "$WABA" \
  --app-secret "$SECRET" --verify-token v --access-token t >/dev/null 2>&1
CONFIG=$(psql "$PG_URL" -Atc "select id from whatsapp_configs limit 1")

# Agents with a key each and one chat each, of the customers `wapipe-sim
# load --customers $AGENTS` writes from (its `customer(i)`: a country
# prefix by i mod 7, then i zero-padded to 13 digits); admin keys. A key
# is `wpk_` and 64 hex digits; only its sha256 is stored.
psql "$PG_URL" -q -v ON_ERROR_STOP=1 <<SQL
CREATE TEMP TABLE k AS
SELECT g, gen_random_uuid() AS agent, 'wpk_' || md5(random()::text) || md5(random()::text) AS secret
FROM generate_series(0, $AGENTS - 1) g;
INSERT INTO agents (id, created_at, updated_at, config_id, name, email, role, status, current_chat_count, is_online)
SELECT agent, now(), now(), '$CONFIG', 'Agent ' || g, 'agent' || g || '@fanout.bench', 'agent', 'online', 1, true FROM k;
INSERT INTO api_keys (id, created_at, updated_at, agent_id, name, kind, key_prefix, key_hash)
SELECT gen_random_uuid(), now(), now(), agent, 'agent ' || g, 'agent', left(secret, 12),
       encode(sha256(convert_to(secret, 'UTF8')), 'hex') FROM k;
INSERT INTO customers (id, created_at, updated_at, config_id, wa_id, phone_number, whatsapp_name, last_inbound_at, last_contact_at)
SELECT gen_random_uuid(), now(), now(), '$CONFIG', w, w, 'Customer ' || g, now(), now()
FROM (SELECT g, p || lpad(g::text, 13 - length(p), '0') AS w
      FROM (SELECT g, (ARRAY['49151','5511','91987','1555','33612','234803','4479'])[g % 7 + 1] AS p FROM k) s) s;
INSERT INTO chats (id, created_at, updated_at, config_id, customer_id, phone_number, phone_number_id, assigned_to, assigned_at, status, last_message_time)
SELECT gen_random_uuid(), now(), now(), '$CONFIG', c.id, c.wa_id, '$PHONE', k.agent, now(), 'assigned', now()
FROM customers c JOIN k ON c.whatsapp_name = 'Customer ' || k.g;
CREATE TABLE fanout_keys AS
SELECT secret, 1 AS o FROM k
UNION ALL
SELECT 'wpk_' || md5(random()::text) || md5(random()::text), 0 FROM generate_series(1, $ADMINS);
INSERT INTO api_keys (id, created_at, updated_at, name, kind, key_prefix, key_hash)
SELECT gen_random_uuid(), now(), now(), 'fanout admin', 'admin', left(secret, 12),
       encode(sha256(convert_to(secret, 'UTF8')), 'hex') FROM fanout_keys WHERE o = 0;
ANALYZE;
SQL
psql "$PG_URL" -Atc "select secret from fanout_keys order by o, secret" >"$WORK/keys.txt"
psql "$PG_URL" -qc "drop table fanout_keys"
echo "bench-fanout: $(wc -l <"$WORK/keys.txt") keys ($ADMINS admin, $AGENTS agent), $(psql "$PG_URL" -Atc "select count(*) from chats where assigned_to is not null") assigned chats"

WAPIPE_METRICS_LISTEN=127.0.0.1:18283 "$BIN/wapipe" ingest >"$WORK/ingest.log" 2>&1 &
PIDS+=($!)
WAPIPE_METRICS_LISTEN=127.0.0.1:18284 "$BIN/wapipe" workers >"$WORK/workers.log" 2>&1 &
PIDS+=($!)
WAPIPE_METRICS_LISTEN=127.0.0.1:18285 "$BIN/wapipe" api >"$WORK/api.log" 2>&1 &
API_PID=$!
PIDS+=($API_PID)
ADMIN_KEY=$(head -n1 "$WORK/keys.txt")
for _ in $(seq 1 150); do
  curl -fs "http://$INGEST/healthz" >/dev/null 2>&1 &&
    curl -fs -H "Authorization: Bearer $ADMIN_KEY" "http://$API/api/whatsapp/events?limit=1" >/dev/null 2>&1 && break
  sleep 0.2
done

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

for run in $(seq 1 "$RUNS"); do
  after=$(psql "$PG_URL" -Atc "select coalesce(max(seq), 0) from events")
  events_before=$(psql "$PG_URL" -Atc "select count(*) from events")
  idle=$(rss_kib "$API_PID")
  rm -f "$WORK/ready"
  "$BIN/wapipe-sim" fanout --base "http://$API" --keys "$WORK/keys.txt" --after "$after" \
    --duration "${SECS}s" --quiet 5s --ready-file "$WORK/ready" --json >"$WORK/fanout.$run.json" &
  FAN=$!
  for _ in $(seq 1 600); do [ -e "$WORK/ready" ] && break; sleep 0.1; done
  [ -e "$WORK/ready" ] || { echo "bench-fanout: the clients did not connect" >&2; exit 1; }
  connected=$(rss_kib "$API_PID")
  # The API's peak RSS while the clients are served, sampled each 200 ms.
  (peak=0; while kill -0 "$FAN" 2>/dev/null; do
     r=$(rss_kib "$API_PID"); [ "$r" -gt "$peak" ] && peak=$r; echo "$peak" >"$WORK/peak"; sleep 0.2
   done) &
  SAMPLER=$!
  "$BIN/wapipe-sim" load --webhook "http://$INGEST/api/whatsapp/webhooks" --app-secret "$SECRET" \
    --rate "$RATE" --duration "${SECS}s" --concurrency 16 --phone-number-id "$PHONE" --waba-id "$WABA" \
    --customers "$AGENTS" --kinds text --json >"$WORK/load.$run.json"
  fan_ok=0
  wait "$FAN" || fan_ok=$?
  wait "$SAMPLER" 2>/dev/null || true
  written=$(( $(psql "$PG_URL" -Atc "select count(*) from events") - events_before ))
  # Where the time goes, when PostgreSQL keeps commit times
  # (track_commit_timestamp = on): the writing transaction, from its start
  # (occurredAt) to its commit. The rest of the latency is commit -> client.
  if [ "$(psql "$PG_URL" -Atc "show track_commit_timestamp")" = on ]; then
    psql "$PG_URL" -AtF ' ' -c "
      with t as (select extract(epoch from pg_xact_commit_timestamp(xmin) - occurred_at) * 1000 as ms
                 from events where seq > $after)
      select percentile_cont(0.5) within group (order by ms), percentile_cont(0.99) within group (order by ms)
      from t" | while read -r p50 p99; do
        printf 'run %s: occurredAt -> commit (the writing transaction) p50 %.1f ms, p99 %.1f ms\n' "$run" "$p50" "$p99" >&2
      done
  fi
  python3 - "$WORK" "$run" "$idle" "$connected" "$(cat "$WORK/peak")" "$written" <<'PY' >>"$WORK/runs.jsonl"
import json, sys
work, run, idle, connected, peak, written = sys.argv[1:7]
f = json.load(open(f"{work}/fanout.{run}.json"))
l = json.load(open(f"{work}/load.{run}.json"))
f.update(run=int(run), rss_idle_mib=int(idle) / 1024, rss_connected_mib=int(connected) / 1024,
         rss_peak_mib=int(peak) / 1024, events_written=int(written),
         webhooks_per_s=l["accepted_per_sec"], webhooks=l["accepted"])
print(json.dumps(f))
r = f
print(f"run {r['run']}: {r['webhooks']} webhooks ({r['webhooks_per_s']:.0f}/s), {r['events_written']} events, "
      f"{r['delivered']} of {r['expected']} deliveries ({r['delivered_per_s']:.0f}/s), missing {r['missing']}, "
      f"duplicates {r['duplicates']}, closed early {len(r['closed_early'])}; p50 {r['latency_p50_ms']:.1f} ms, "
      f"p99 {r['latency_p99_ms']:.1f} ms; API RSS idle {r['rss_idle_mib']:.0f} MiB, peak {r['rss_peak_mib']:.0f} MiB",
      file=sys.stderr)
PY
  [ "$fan_ok" -eq 0 ] || { echo "bench-fanout: run $run lost, doubled or reordered events (see above)" >&2; exit 1; }
done

python3 - "$WORK/runs.jsonl" "$SECS" "$RATE" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda k: statistics.median(r[k] for r in rows)
print(f"\nfan-out: {rows[0]['clients']} WebSocket clients, {sys.argv[3]} inbound/s for {sys.argv[2]} s, "
      f"{len(rows)} runs, medians (wapipe api, PostgreSQL + RabbitMQ)")
print(f"  webhooks/s {med('webhooks_per_s'):.0f}, events written {med('events_written'):.0f}, "
      f"deliveries {med('delivered'):.0f} (every one expected, none missing or doubled)")
print(f"  delivered/s {med('delivered_per_s'):.0f}; occurredAt -> client p50 {med('latency_p50_ms'):.1f} ms, "
      f"p99 {med('latency_p99_ms'):.1f} ms (target < 250)")
print(f"  API RSS idle {med('rss_idle_mib'):.0f} MiB, 1,000 clients connected {med('rss_connected_mib'):.0f} MiB, "
      f"peak {med('rss_peak_mib'):.0f} MiB (target < 300; peak/idle {med('rss_peak_mib') / med('rss_idle_mib'):.2f})")
PY
