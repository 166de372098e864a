#!/usr/bin/env bash
# Bot replies (`make bench-bot`, also run by `make bench`): BOT_CUSTOMERS
# customers (default 500) each send a keyword, then tap a reply button of
# the menu the bot sent, as signed webhooks into `wapipe serve` in
# production mode (PostgreSQL + RabbitMQ, every role), with sends going to
# `wapipe-sim graph` (a fake Graph API). Inbound messages go at BOT_RATE
# per second (default 300).
#
# The flow: the keyword starts a scenario whose roots are three texts and
# a button menu (4 replies); the tapped option is a text with two text
# children (3 replies). Between the two phases the script waits
# BOT_PAUSE_S (default 12 s) so Meta's pair limit (5 at once, then one per
# 6 s per customer, which wapipe applies) is not what is measured.
#
# It reports, per phase and overall: replies sent/s (replies / time from
# the phase's first webhook to its last reply's Graph answer), p50/p99 from
# each webhook's send to each of its replies' Graph answer (`sent_at`),
# and whether every customer got exactly its 7 replies.
set -euo pipefail
cd "$(dirname "$0")/.."

CUSTOMERS=${BOT_CUSTOMERS:-500}
RATE=${BOT_RATE:-300}
PAUSE=${BOT_PAUSE_S:-12}
SECRET=bench-app-secret
PHONE=106540352242922
WABA=102290129340398

. scripts/lib.sh
bench_production bot

HOOK=http://127.0.0.1:18082/api/whatsapp/webhooks
export DATABASE_URL="$WAPIPE_PG_URL" AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$PREFIX" \
  WAPIPE_SECRET_KEY="$KEY" WAPIPE_LISTEN=127.0.0.1:18082 WAPIPE_METRICS_LISTEN=127.0.0.1:19466 \
  GRAPH_API_BASE=http://127.0.0.1:18092 RUST_LOG=warn
psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB\"" >/dev/null
"$BIN/wapipe" migrate >/dev/null
CONFIG=$("$BIN/wapipe" config add --company Bench --phone-number-id "$PHONE" --waba-id "$WABA" \
  --app-secret "$SECRET" --verify-token v --access-token t --max-mps 1000 | tail -n1)

cat >"$WORK/flow.json" <<'JSON'
{"settings": {"exit_keywords": ["stop"]},
 "scenarios": [{"title": "Promo", "type": "client", "keywords": ["promo"], "active": true,
   "repeat_count": 0, "priority": 1,
   "items": [
     {"ref": "hello", "type": "text", "label": "Bienvenue !"},
     {"ref": "offers", "type": "text", "label": "Nos offres de la semaine"},
     {"ref": "terms", "type": "text", "label": "Offres valables jusqu'à dimanche"},
     {"ref": "menu", "type": "button", "label": "Laquelle vous intéresse ?", "children": ["a", "b"]},
     {"ref": "a", "type": "text", "title": "Offre A", "label": "Offre A : -20 %", "children": ["a1", "a2"]},
     {"ref": "a1", "type": "text", "label": "Détails A, 1/2"},
     {"ref": "a2", "type": "text", "label": "Détails A, 2/2"},
     {"ref": "b", "type": "text", "title": "Offre B", "label": "Offre B : -10 %"}
   ]}]}
JSON
"$BIN/wapipe" scenarios import --config "$CONFIG" "$WORK/flow.json" >/dev/null
OPTION=$(psql "$PG_URL" -Atc "select id from scenario_items where label = 'Offre A : -20 %'")

# BOT_STATUSES=0: the fake Graph posts no status webhooks back, so the
# figure is the bot's alone (each reply otherwise brings three webhooks).
STATUS_HOOK=(--webhook "$HOOK")
[ "${BOT_STATUSES:-1}" = 0 ] && STATUS_HOOK=()
"$BIN/wapipe-sim" graph --listen 127.0.0.1:18092 "${STATUS_HOOK[@]}" --app-secret "$SECRET" \
  --phone-number-id "$PHONE" --status-delay-ms 50 >"$WORK/graph.log" 2>&1 &
PIDS+=($!)
"$BIN/wapipe" serve >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:18082/healthz >/dev/null 2>&1 && break; sleep 0.2; done
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:19466/readyz >/dev/null 2>&1 && break; sleep 0.2; done

python3 - "$HOOK" "$SECRET" "$PHONE" "$WABA" "$CUSTOMERS" "$RATE" "$PAUSE" "$PG_URL" "sc:$OPTION" <<'PY'
import hashlib, hmac, json, statistics, subprocess, sys, threading, time, urllib.request
hook, secret, phone, waba, customers, rate, pause, pg, option = sys.argv[1:10]
customers, rate, pause = int(customers), float(rate), float(pause)
sent_at = {}  # wamid -> wall clock of the POST

def body(cust, wamid, msg):
    msg.update({"from": cust, "id": wamid, "timestamp": str(int(time.time()))})
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone},
        "contacts": [{"profile": {"name": "Client " + cust[-4:]}, "wa_id": cust}],
        "messages": [msg]}}]}]}).encode()

def post(raw):
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    for _ in range(20):
        req = urllib.request.Request(hook, data=raw, method="POST", headers={
            "content-type": "application/json", "x-hub-signature-256": sig})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)  # Meta retries non-200 answers
    raise SystemExit("a webhook was never accepted")

def phase(name, make):
    jobs = [make(i) for i in range(customers)]
    threads, start = [], time.time()
    for n, (wamid, raw) in enumerate(jobs):
        due = start + n / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        sent_at[wamid] = time.time()
        t = threading.Thread(target=post, args=(raw,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return start

def cust(i):
    return f"49170{i:08d}"

def replies():
    out = subprocess.run(["psql", pg, "-AtF", " ", "-c",
        "select i.provider_message_id, extract(epoch from b.sent_at), c.wa_id from messages b "
        "join messages i on b.answers_message_id = i.id join customers c on c.id = b.customer_id "
        "where b.origin = 'bot'"], check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        wamid, at, wa = line.split(" ")
        rows.append((wamid, float(at) if at else None, wa))
    return rows

def wait_for(n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = replies()
        if sum(1 for r in rows if r[1] is not None) >= n:
            return rows
        time.sleep(0.5)
    return replies()

def report(name, start, rows, wamids, per):
    mine = [r for r in rows if r[0] in wamids and r[1] is not None]
    lags = sorted(r[1] - sent_at[r[0]] for r in mine)
    span = max(r[1] for r in mine) - start if mine else float("nan")
    q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] if lags else float("nan")
    print(f"{name:>9} {len(mine):>8} {len(mine) / span:>10.0f} {q(0.5):>8.3f} {q(0.99):>8.3f}   "
          f"(expected {per * customers}; {customers / (max(sent_at[w] for w in wamids) - start):.0f} inbound/s)")
    return len(mine), span

kw = phase("keyword", lambda i: (f"wamid.kw.{i}", body(cust(i), f"wamid.kw.{i}",
    {"type": "text", "text": {"body": "Des PROMOS ? promo !" if i % 2 else "promo"}})))
kw_ids = {f"wamid.kw.{i}" for i in range(customers)}
rows = wait_for(4 * customers)
time.sleep(pause)
tap = phase("button", lambda i: (f"wamid.tap.{i}", body(cust(i), f"wamid.tap.{i}",
    {"type": "interactive", "interactive": {"type": "button_reply",
     "button_reply": {"id": option, "title": "Offre A"}}})))
tap_ids = {f"wamid.tap.{i}" for i in range(customers)}
rows = wait_for(7 * customers)
time.sleep(2)  # a duplicate would show up late: give it time
rows = replies()
print(f"\nbot replies (wapipe serve, PostgreSQL + RabbitMQ, fake Graph): {customers} customers, "
      f"{rate:.0f} inbound/s")
print(f"{'phase':>9} {'replies':>8} {'replies/s':>10} {'p50 s':>8} {'p99 s':>8}")
n1, s1 = report("keyword", kw, rows, kw_ids, 4)
n2, s2 = report("button", tap, rows, tap_ids, 3)
per_customer = {}
for _, at, wa in rows:
    per_customer[wa] = per_customer.get(wa, 0) + 1
exact = len(per_customer) == customers and all(v == 7 for v in per_customer.values()) and len(rows) == 7 * customers
print(f"overall: {n1 + n2} replies, {(n1 + n2) / (s1 + s2):.0f} replies/s while busy; "
      f"every customer got exactly its 7 replies: {'yes' if exact else 'NO'}")
if not exact:
    bad = {k: v for k, v in per_customer.items() if v != 7}
    print(f"  customers off: {len(bad) + customers - len(per_customer)} (e.g. {list(bad.items())[:5]})")
    sys.exit(1)
PY
