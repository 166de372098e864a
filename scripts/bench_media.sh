#!/usr/bin/env bash
# `make bench-media`: inbound media at MEDIA_RATE (200) image messages/s for
# MEDIA_SECS (60) from `wapipe-sim load --kinds image`, each image
# MEDIA_SIZE (500 KiB) served by the fake Graph API (`wapipe-sim graph`).
# Production mode (PostgreSQL + RabbitMQ) as three processes: `wapipe
# ingest`, `wapipe workers --roles parse`, and `wapipe workers --roles
# media` alone, whose RSS is sampled every second. Reports:
#   downloads/s  files stored / (last stored - first stored)
#   p50/p99      Meta's message `timestamp` -> file stored (`stored_at`);
#                Meta's timestamp has whole seconds, so these carry up to
#                1 s of truncation (about +0.5 s on average)
#   stored       files stored / image messages accepted (all of them, by
#                the end of the drain); "kept up" only when the
#                downloads/s also reach 95% of MEDIA_RATE
#   RSS          the media worker's peak resident memory (it streams, so
#                it must not grow with file size; target under 150 MiB)
# Thumbnails are made by the API on first request, not by the media
# worker, so they are not in these figures.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${MEDIA_RATE:-200}
SECS=${MEDIA_SECS:-60}
SIZE=${MEDIA_SIZE:-512000}
DRAIN=${MEDIA_DRAIN_SECS:-300}
SECRET=bench-app-secret
TOKEN=bench-token
PHONE=106540352242922
WABA=102290129340398

. scripts/lib.sh
bench_production media

export DATABASE_URL="$WAPIPE_PG_URL" AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$PREFIX" \
  WAPIPE_SECRET_KEY="$KEY" WAPIPE_LISTEN=127.0.0.1:18083 RUST_LOG=warn \
  GRAPH_API_BASE=http://127.0.0.1:18093 WAPIPE_MEDIA_DIR="$WORK/media"
psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB\"" >/dev/null
"$BIN/wapipe" migrate >/dev/null
"$BIN/wapipe" config add --company Bench --phone-number-id "$PHONE" --waba-id "$WABA" \
  --app-secret "$SECRET" --verify-token v --access-token "$TOKEN" >/dev/null 2>&1

"$BIN/wapipe-sim" graph --listen 127.0.0.1:18093 --token "$TOKEN" --phone-number-id "$PHONE" \
  --media-size "$SIZE" >"$WORK/graph.log" 2>&1 &
PIDS+=($!)
WAPIPE_METRICS_LISTEN=127.0.0.1:19471 "$BIN/wapipe" ingest >"$WORK/ingest.log" 2>&1 &
PIDS+=($!)
WAPIPE_METRICS_LISTEN=127.0.0.1:19472 "$BIN/wapipe" workers --roles parse >"$WORK/parse.log" 2>&1 &
PIDS+=($!)
WAPIPE_METRICS_LISTEN=127.0.0.1:19473 "$BIN/wapipe" workers --roles media >"$WORK/media.log" 2>&1 &
MEDIA_PID=$!
PIDS+=($MEDIA_PID)
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:18083/healthz >/dev/null 2>&1 && break; sleep 0.2; done

# The media worker's RSS (KiB), every second, until the file is removed.
touch "$WORK/sampling"
( peak=0; while [ -e "$WORK/sampling" ]; do
    rss=$(ps -o rss= -p "$MEDIA_PID" 2>/dev/null | tr -d ' ')
    [ -n "$rss" ] && [ "$rss" -gt "$peak" ] && peak=$rss && echo "$peak" >"$WORK/rss_peak"
    sleep 1
  done ) &
SAMPLER=$!

stored() { psql "$PG_URL" -Atc "select count(*) from message_media where status = 'stored'"; }

t0=$(date +%s.%N)
"$BIN/wapipe-sim" load --webhook http://127.0.0.1:18083/api/whatsapp/webhooks --app-secret "$SECRET" \
  --rate "$RATE" --duration "${SECS}s" --concurrency 64 --phone-number-id "$PHONE" --waba-id "$WABA" \
  --kinds image --customers 5000 --json >"$WORK/load.json"
sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["inbound_messages"])' "$WORK/load.json")
deadline=$((SECONDS + DRAIN))
while [ "$(stored)" -lt "$sent" ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
rm -f "$WORK/sampling"
wait "$SAMPLER" 2>/dev/null || true

psql "$PG_URL" -AtF ' ' -c "
  select count(*),
         extract(epoch from max(f.stored_at) - min(f.stored_at)),
         percentile_cont(0.5) within group (order by extract(epoch from f.stored_at - m.\"timestamp\")),
         percentile_cont(0.99) within group (order by extract(epoch from f.stored_at - m.\"timestamp\")),
         (select count(*) from message_media where status <> 'stored')
  from message_media f join messages m on m.id = f.message_id
  where f.status = 'stored'" >"$WORK/result"
read -r n span p50 p99 other <"$WORK/result"
peak=$(cat "$WORK/rss_peak" 2>/dev/null || echo 0)
du_kib=$(du -sk "$WORK/media" | cut -f1)
python3 - "$n" "$span" "$p50" "$p99" "$other" "$sent" "$peak" "$RATE" "$SECS" "$SIZE" "$du_kib" <<'PY'
import sys
n, span, p50, p99, other, sent, peak, rate, secs, size, du = sys.argv[1:12]
n, sent, span = int(n), int(sent), float(span or 0)
print(f"\ninbound media (ingest | parse | media, PostgreSQL + RabbitMQ): {rate} images/s offered for {secs}s, "
      f"{int(size) // 1024} KiB each")
print(f"{'accepted':>9} {'stored':>7} {'not stored':>11} {'downloads/s':>12} {'p50 s':>7} {'p99 s':>7} {'media RSS MiB':>14} {'on disk MiB':>12}")
print(f"{sent:>9} {n:>7} {int(other):>11} {(n / span if span > 0 else 0):>12.0f} {float(p50 or 0):>7.2f} "
      f"{float(p99 or 0):>7.2f} {int(peak) / 1024:>14.1f} {int(du) / 1024:>12.0f}")
rate_done = n / span if span > 0 else 0
if n < sent:
    print(f"lost or unfinished: {sent - n} files not stored")
elif rate_done >= 0.95 * int(rate):
    print("kept up: every file stored, at the offered rate")
else:
    print(f"every file stored, but behind: {rate_done:.0f} of {rate} images/s ({rate_done / int(rate):.2f}), "
          "the rest during the drain")
PY
