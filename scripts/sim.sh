#!/usr/bin/env bash
# `make sim`: wapipe (embedded mode) and a fake Meta wired together.
# wapipe-sim graph answers sends with wamids and posts signed sent,
# delivered and read webhooks back to wapipe's receiver.
set -euo pipefail
cd "$(dirname "$0")/.."

PHONE=${SIM_PHONE_NUMBER_ID:-100000000000001}
WABA=${SIM_WABA_ID:-100000000000002}
SECRET=sim-app-secret
GRAPH=127.0.0.1:8095
LISTEN=${WAPIPE_LISTEN:-127.0.0.1:8080}

cargo build --release -q -p wapipe --bin wapipe
cargo build --release -q -p wapipe-sim --bin wapipe-sim
W=./target/release/wapipe

"$W" migrate >/dev/null
"$W" config add --company "Sim Co" --phone-number-id "$PHONE" --waba-id "$WABA" \
  --app-secret "$SECRET" --verify-token sim-verify --access-token sim-token >/dev/null 2>&1 || true
CONFIG=$("$W" config list | awk -v p="$PHONE" '$0 ~ p && /active/ {print $1; exit}')
# The chatbot: a small bilingual flow (docs/scenarios.md).
"$W" scenarios import --config "$CONFIG" scripts/sim-flow.json >/dev/null

./target/release/wapipe-sim graph --listen "$GRAPH" --webhook "http://$LISTEN/api/whatsapp/webhooks" \
  --app-secret "$SECRET" --phone-number-id "$PHONE" --token sim-token --status-delay-ms 700 &
SIM=$!
trap 'kill $SIM 2>/dev/null || true' EXIT

cat <<TXT

  fake Graph API on http://$GRAPH, wapipe on http://$LISTEN (Ctrl-C stops both)
  In another terminal:

    ID=\$($W send --config $CONFIG --to 15550001234 --template hello_world --lang en_US | tail -n1)
    $W status "\$ID" --wait read      # queued -> sent -> delivered -> read

  The bot: a customer writes "hello" (a signed webhook), the bot answers
  with two reply buttons (see the fake Graph's log):

    BODY='{"object":"whatsapp_business_account","entry":[{"id":"$WABA","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000000","phone_number_id":"$PHONE"},"contacts":[{"profile":{"name":"Ana"},"wa_id":"15550001234"}],"messages":[{"from":"15550001234","id":"wamid.demo'\$(date +%s)'","timestamp":"'\$(date +%s)'","type":"text","text":{"body":"hello"}}]}}]}]}'
    SIG=\$(printf %s "\$BODY" | openssl dgst -sha256 -hmac $SECRET | awk '{print \$NF}')
    curl -s -H "X-Hub-Signature-256: sha256=\$SIG" -H 'Content-Type: application/json' \\
      -d "\$BODY" http://$LISTEN/api/whatsapp/webhooks

TXT
GRAPH_API_BASE="http://$GRAPH" "$W" serve
