#!/usr/bin/env bash
# Part of `make clean-test-dbs`: deletes the RabbitMQ queues of test prefixes
# (`t` + a UUIDv7 without dashes) older than MAX_AGE_S (3600). The test kit
# deletes its queues when a test ends, but a test that kills its processes
# or panics mid-way leaves ~85 quorum queues behind, and the broker outlives
# runs: thousands of them once made it stop answering. The age comes from
# the UUIDv7's timestamp, so a run still going on the same broker is left
# alone. Needs `rabbitmqctl` on this machine; otherwise it does nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v rabbitmqctl >/dev/null 2>&1 || exit 0
MAX_AGE_S=${MAX_AGE_S:-3600}
AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
BIN=target/debug/wapipe
[ -x "$BIN" ] || exit 0
now_ms=$(($(date +%s) * 1000))
n=0
for prefix in $(timeout 60 rabbitmqctl -q list_queues name 2>/dev/null |
  sed -n 's/^\(t[0-9a-f]\{32\}\)\..*/\1/p' | sort -u); do
  born_ms=$((16#${prefix:1:12}))
  [ $((now_ms - born_ms)) -gt $((MAX_AGE_S * 1000)) ] || continue
  AMQP_URL="$AMQP" WAPIPE_QUEUE_PREFIX="$prefix" RUST_LOG=error timeout 60 "$BIN" topology delete >/dev/null 2>&1 &&
    n=$((n + 1))
done
[ "$n" -gt 0 ] && echo "deleted the queues of $n test prefixes older than ${MAX_AGE_S}s"
exit 0
