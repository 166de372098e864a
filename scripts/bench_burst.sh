#!/usr/bin/env bash
# `make bench-burst` (part of `make bench`): a paced burst. BURST_MESSAGES
# (10,000) template sends queued at once for one number at BURST_MPS (80),
# carried by the outbound worker through RabbitMQ's delay queues (the
# production retry policy: a send over the limit is deferred to its slot,
# never counted as an attempt) to the fake Graph API. BURST_RUNS (3) runs;
# each prints its sends-per-second curve. Checks every run: all sent
# exactly once, no one-second window over BURST_MPS, none dead-lettered,
# done within 1.1 x BURST_MESSAGES / BURST_MPS seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${BURST_MESSAGES:-10000}
MPS=${BURST_MPS:-80}
RUNS=${BURST_RUNS:-3}
PG_ADMIN=${WAPIPE_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP=${WAPIPE_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
DB="wapipe_bench_burst_$$"
PG_URL="${PG_ADMIN%/*}/$DB"
WORK=$(mktemp -d)
cleanup() {
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -q -p wapipe-workers --example bench_outbound
BIN=${CARGO_TARGET_DIR:-target}/release
psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB\"" >/dev/null
for run in $(seq 1 "$RUNS"); do
  RUST_LOG=warn "$BIN/examples/bench_outbound" --db "$PG_URL" --amqp "$AMQP" \
    --messages "$MESSAGES" --max-mps "$MPS" >>"$WORK/burst.jsonl"
done

python3 - "$WORK/burst.jsonl" "$MESSAGES" "$MPS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
n, mps = int(sys.argv[2]), int(sys.argv[3])
bound = 1.1 * n / mps
print(f"\npaced burst: {n} template sends queued at once, max_mps {mps}, RabbitMQ, {len(rows)} runs")
bad = []
for i, r in enumerate(rows, 1):
    print(f"run {i}: {r['elapsed_secs']:.1f} s (bound {bound:.1f}), {r['sends_per_sec']:.1f} sends/s, "
          f"busiest second {r['busiest_second']}, dead-lettered {r['dead_lettered']}, exactly once {r['exactly_once']}")
    print("  sends per second:", " ".join(str(c) for c in r["per_second"]))
    if not (r["exactly_once"] and r["busiest_second"] <= mps and r["dead_lettered"] == 0 and r["elapsed_secs"] <= bound):
        bad.append(i)
med = statistics.median(r["elapsed_secs"] for r in rows)
print(f"median {med:.1f} s = {med / (n / mps):.3f} x the ideal {n / mps:.0f} s")
if bad:
    sys.exit(f"bench-burst: runs {bad} broke a bound")
PY
