# wapipe: the README's commands. `make run` needs nothing but Rust;
# `make test` needs PostgreSQL and RabbitMQ on localhost (.ci/run starts them).

CARGO ?= cargo
PG_ADMIN ?= postgres://postgres@127.0.0.1:5432/postgres
export WAPIPE_TEST_PG ?= $(PG_ADMIN)
export WAPIPE_TEST_AMQP ?= amqp://guest:guest@127.0.0.1:5672/%2f

.PHONY: run test lint fmt migrate build bench bench-e2e bench-bot bench-reminders bench-api bench-fanout bench-burst bench-media bench-memory sim clean-test-dbs api-conformance

## Embedded default: SQLite in ./data, in-process queue, every role in one process.
run:
	$(CARGO) run --release --bin wapipe -- serve

build:
	$(CARGO) build --release --workspace

## Lint, then every test against PostgreSQL, RabbitMQ and SQLite, then
## Schemathesis against a live API.
test: lint
	$(CARGO) test --workspace --all-targets --no-fail-fast
	@$(MAKE) --no-print-directory api-conformance
	@$(MAKE) --no-print-directory clean-test-dbs

## Schemathesis (installed from PyPI into target/) against `wapipe serve`:
## no 5xx, no answer the OpenAPI document does not declare. ST_MAX_EXAMPLES.
api-conformance:
	scripts/api_conformance.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if command -v promtool >/dev/null 2>&1; then \
	  promtool check rules monitoring/alerts.yml && promtool test rules monitoring/alerts_test.yml && promtool check config monitoring/prometheus.yml; \
	else echo "promtool not installed (apt-get install prometheus): alert rules not checked"; fi

fmt:
	$(CARGO) fmt --all

migrate:
	$(CARGO) run --release --bin wapipe -- migrate

## Tests name their databases wapipe_t_<uuid>, cloned from the migrated
## template wapipe_tpl_<hash of the migrations>; drop what they leave behind,
## templates included (the next run builds its own again, once), and the
## RabbitMQ queues of test prefixes older than an hour.
clean-test-dbs:
	@command -v psql >/dev/null 2>&1 && psql "$(PG_ADMIN)" -Atc \
	  "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\";' FROM pg_database WHERE datname LIKE 'wapipe\_t\_%' OR datname LIKE 'wapipe\_tpl\_%'" \
	  | psql "$(PG_ADMIN)" -q >/dev/null 2>&1 || true
	@rm -f "$${TMPDIR:-/tmp}"/wapipe-tpl-*.sqlite
	@scripts/clean_test_queues.sh

## Throughput and latency against a same-run no-work baseline (needs PostgreSQL + RabbitMQ).
bench:
	scripts/bench.sh

# End to end alone (webhook -> messages row); E2E_SECS, E2E_RUNS, E2E_BODIES, E2E_RATE.
bench-e2e:
	scripts/bench_e2e.sh

# Bot replies: BOT_CUSTOMERS customers send a keyword, then tap a reply button
# (BOT_RATE inbound/s); replies/s, p50/p99 webhook -> Graph, exactly its replies.
bench-bot:
	scripts/bench_bot.sh

# Follow-up reminders alone: REM_COUNT (20,000) due at once, REM_PROCS (2) worker processes.
bench-reminders:
	scripts/bench_reminders.sh

# The REST API alone: lists, deep cursor, messages and sends at API_CONC (64)
# connections over API_MESSAGES (100,000) in API_CHATS (5,000), next to a
# no-work axum route.
bench-api:
	scripts/bench_api.sh

# The events WebSocket: FANOUT_ADMINS (20) + FANOUT_AGENTS (980) clients while
# FANOUT_RATE (500) inbound messages/s arrive for FANOUT_SECS (60); delivered/s,
# p50/p99 commit -> client, the API's RSS; every event checked per key.
bench-fanout:
	scripts/bench_fanout.sh

# A paced burst: BURST_MESSAGES (10,000) template sends queued at once at
# BURST_MPS (80) through RabbitMQ; the sends-per-second curve of each run.
bench-burst:
	scripts/bench_burst.sh

# Inbound media: MEDIA_RATE (200) images/s of MEDIA_SIZE (500 KiB) for
# MEDIA_SECS (60) from the fake Graph API; downloads/s, p50/p99 webhook ->
# stored file, the media worker's peak RSS.
bench-media:
	scripts/bench_media.sh

# Memory after bursts (embedded serve): MEM_CONNS (100) x 4 MB bad-signature
# bodies, then MEM_WEBHOOKS (20,000) webhooks; RSS back within 20% of idle
# within MEM_SETTLE (60) s, jemalloc (default) against glibc.
bench-memory:
	scripts/bench_memory.sh

## wapipe (embedded) wired to wapipe-sim's fake Graph API: a two-minute demo.
sim:
	scripts/sim.sh
