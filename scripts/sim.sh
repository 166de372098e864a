#!/usr/bin/env bash
# `make sim`: wapipe (embedded mode) and a fake Meta wired together, with
# the inbox page open to a ready API key. wapipe-sim graph answers sends
# with wamids and posts signed sent, delivered and read webhooks back to
# wapipe's receiver; the script plays a customer by posting signed
# webhooks, so the page shows the customer writing, the bot answering, and
# an agent taking over, live.
set -euo pipefail
cd "$(dirname "$0")/.."

PHONE=${SIM_PHONE_NUMBER_ID:-100000000000001}
WABA=${SIM_WABA_ID:-100000000000002}
SECRET=sim-app-secret
GRAPH=127.0.0.1:8095
LISTEN=${WAPIPE_LISTEN:-127.0.0.1:8080}
CUSTOMER=15550001234

cargo build --release -q -p wapipe --bin wapipe
cargo build --release -q -p wapipe-sim --bin wapipe-sim
W=./target/release/wapipe

"$W" migrate >/dev/null
"$W" config add --company "Sim Co" --phone-number-id "$PHONE" --waba-id "$WABA" \
  --app-secret "$SECRET" --verify-token sim-verify --access-token sim-token >/dev/null 2>&1 || true
CONFIG=$("$W" config list | awk -v p="$PHONE" '$0 ~ p && /active/ {print $1; exit}')
# The chatbot: a small bilingual flow (docs/scenarios.md).
"$W" scenarios import --config "$CONFIG" scripts/sim-flow.json >/dev/null
# An agent to hand chats to (kept from an earlier run), and a key for the page.
"$W" agents list | grep -q sam@example.com ||
  "$W" agents add --name "Sam (agent)" --email sam@example.com --company "Sim Co" >/dev/null 2>&1
AGENT=$("$W" agents list --json | grep sam@example.com | grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4)
# Its note on stderr says the key is shown once: the script prints it below.
KEY=$("$W" apikey create --admin --company "Sim Co" --name "make sim" 2>/dev/null | tail -n1)

./target/release/wapipe-sim graph --listen "$GRAPH" --webhook "http://$LISTEN/api/whatsapp/webhooks" \
  --app-secret "$SECRET" --phone-number-id "$PHONE" --token sim-token --status-delay-ms 700 &
SIM=$!
GRAPH_API_BASE="http://$GRAPH" "$W" serve &
SERVE=$!
trap 'kill $SIM $SERVE 2>/dev/null || true' EXIT

# The customer: a text message as Meta posts it, signed with the app secret.
customer_says() {
  local now body sig
  now=$(date +%s)
  body='{"object":"whatsapp_business_account","entry":[{"id":"'$WABA'","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000000","phone_number_id":"'$PHONE'"},"contacts":[{"profile":{"name":"Ana"},"wa_id":"'$CUSTOMER'"}],"messages":[{"from":"'$CUSTOMER'","id":"wamid.demo'$now$RANDOM'","timestamp":"'$now'","type":"text","text":{"body":"'"$1"'"}}]}}]}]}'
  sig=$(printf %s "$body" | openssl dgst -sha256 -hmac "$SECRET" | awk '{print $NF}')
  curl -s -o /dev/null -w '  (webhook answered %{http_code})\n' -H "X-Hub-Signature-256: sha256=$sig" \
    -H 'Content-Type: application/json' -d "$body" "http://$LISTEN/api/whatsapp/webhooks"
}

# The agents' REST API, with the page's key.
api() {
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"
}

# Sam takes the customer's chat, unless someone did in the page already.
take_over() {
  local chat
  chat=$(api "http://$LISTEN/api/whatsapp/chats?status=unassigned&q=$CUSTOMER" | grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4)
  [ -n "$chat" ] || return 0
  echo "  Nobody took the chat: Sam does (assign, then a reply)."
  api -o /dev/null -X POST -d '{"agentId":"'"$AGENT"'"}' "http://$LISTEN/api/whatsapp/chats/$chat/assign"
  api -o /dev/null -X POST -d '{"type":"text","text":"Hi Ana, Sam here. How can I help?"}' \
    "http://$LISTEN/api/whatsapp/chats/$chat/messages"
}

# Press Enter in a terminal; elsewhere, a pause.
next() {
  if [ -t 0 ]; then
    read -r -p "  $1 [Enter] " _
  else
    echo "  $1 (no terminal: going on in 10 s)"
    sleep 10
  fi
}

for _ in $(seq 1 100); do
  curl -sf "http://$LISTEN/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done

cat <<TXT

  fake Graph API on http://$GRAPH, wapipe on http://$LISTEN (Ctrl-C stops both)

  The inbox:  http://$LISTEN/
  API key:    $KEY

  In another terminal, a template by the CLI:

    ID=\$($W send --config $CONFIG --to $CUSTOMER --template hello_world --lang en_US | tail -n1)
    $W status "\$ID" --wait read      # queued -> sent -> delivered -> read

TXT
next "Open the inbox, paste the key; then a customer writes \"hello\"."
customer_says hello
echo "  The chat appears; the bot answers with two buttons (queued, sent, delivered, read)."
next "Take over: open the chat, Assign it to Sam, write a reply. Then the customer writes again."
take_over
sleep 2
customer_says "thanks!"
echo "  The chat is a human's now: the bot stays quiet."
echo "  The service keeps running; Ctrl-C stops it."
wait "$SERVE"
