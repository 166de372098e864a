#!/usr/bin/env python3
"""Writes wapipe's Grafana dashboards into monitoring/grafana/.

One overview (ingest, queues, workers, outbound, follow-ups, bot) and one
drill-down per worker role. Run it after changing a panel here; the JSON
files are committed so Grafana users need no Python. tests/monitoring.rs
checks that every panel names only metrics the service exports, and that
every worker role has its drill-down.

    python3 scripts/dashboards.py [OUT_DIR]
"""
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "monitoring" / "grafana"


def q(expr, legend=""):
    return {"expr": expr, "legend": legend}


def p(title, unit, *targets, desc=""):
    return {"title": title, "unit": unit, "targets": list(targets), "description": desc}


def p99(metric, by="", sel=""):
    by_ = f"{by}, le" if by else "le"
    return f"histogram_quantile(0.99, sum by ({by_}) (rate({metric}_bucket{sel}[5m])))"


def p50(metric, by="", sel=""):
    by_ = f"{by}, le" if by else "le"
    return f"histogram_quantile(0.5, sum by ({by_}) (rate({metric}_bucket{sel}[5m])))"


def dashboard(uid, title, panels, links=()):
    out = []
    for n, panel in enumerate(panels):
        out.append({
            "id": n + 1,
            "type": "timeseries",
            "title": panel["title"],
            "description": panel["description"],
            "gridPos": {"x": (n % 2) * 12, "y": (n // 2) * 8, "w": 12, "h": 8},
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": panel["unit"]}, "overrides": []},
            "targets": [
                {"refId": chr(ord("A") + i), "expr": t["expr"], "legendFormat": t["legend"]}
                for i, t in enumerate(panel["targets"])
            ],
        })
    return {
        "title": title,
        "uid": uid,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "tags": ["wapipe"],
        "links": [
            {"type": "dashboards", "tags": ["wapipe"], "asDropdown": True, "title": "wapipe"}
        ],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
        ]},
        "panels": out,
    }


SATURATION = ("sum by (phone_number_id) (rate(wapipe_outbound_number_sends_total[5m]))"
              " / max by (phone_number_id) (wapipe_outbound_number_limit_per_second)")

OVERVIEW = [
    p("Webhooks by outcome", "reqps",
      q("sum by (outcome) (rate(wapipe_ingest_requests_total[1m]))", "{{outcome}}")),
    p("Webhook ack latency (accepted)", "s",
      q(p50("wapipe_ingest_ack_seconds", sel='{outcome="accepted"}'), "p50"),
      q(p99("wapipe_ingest_ack_seconds", sel='{outcome="accepted"}'), "p99"),
      desc="Meta wants under 1% of answers over 1 s."),
    p("Relay backlog", "short",
      q("max(wapipe_relay_backlog_events)", "stored, not processed"),
      q("max(wapipe_relay_oldest_unprocessed_age_seconds)", "oldest (s)")),
    p("Group commit batch size", "short",
      q("sum(rate(wapipe_ingest_batch_size_sum[5m])) / sum(rate(wapipe_ingest_batch_size_count[5m]))",
        "webhooks per commit")),
    p("Broker publishes", "ops",
      q("sum by (result) (rate(wapipe_broker_publish_total[1m]))", "{{result}}"),
      q(p99("wapipe_broker_publish_confirm_seconds"), "confirm p99 (s)")),
    p("Publish failures (the relay re-publishes)", "ops",
      q("sum by (reason) (rate(wapipe_ingest_publish_failures_total[5m]))", "{{reason}}"),
      q("sum(rate(wapipe_relay_republished_total[5m]))", "re-published")),
    p("End to end: Meta's timestamp to message stored", "s",
      q(p50("wapipe_message_end_to_end_seconds"), "p50"),
      q(p99("wapipe_message_end_to_end_seconds"), "p99")),
    p("Queue depth by worker and kind", "short",
      q("sum by (worker, kind) (wapipe_queue_depth)", "{{worker}} {{kind}}")),
    p("Dead-letter queues", "short",
      q("sum by (worker) (wapipe_queue_dead_letter_depth)", "{{worker}}"),
      desc="Above 0: `wapipe dlq list --queue WORKER`."),
    p("Jobs by worker and outcome", "ops",
      q("sum by (worker, outcome) (rate(wapipe_worker_jobs_total[1m]))", "{{worker}} {{outcome}}")),
    p("Job duration p99 by worker", "s",
      q(p99("wapipe_worker_job_duration_seconds", by="worker"), "{{worker}}")),
    p("Outbound sends by result", "ops",
      q("sum by (result) (rate(wapipe_outbound_sends_total[1m]))", "{{result}}")),
    p("Send rate over each number's limit", "percentunit",
      q(SATURATION, "{{phone_number_id}}"),
      desc="Near 100%, sends wait for the number's rate limit."),
    p("Follow-ups due and reminded", "ops",
      q("sum(rate(wapipe_followups_due_total[5m]))", "due"),
      q("sum by (channel) (rate(wapipe_followups_reminded_total[5m]))", "reminded {{channel}}"),
      q("max(wapipe_followups_overdue)", "overdue now")),
    p("Chatbot runs", "ops",
      q("sum(rate(wapipe_scenario_runs_started_total[5m]))", "started"),
      q("sum(rate(wapipe_scenario_runs_continued_total[5m]))", "continued"),
      q("sum by (reason) (rate(wapipe_scenario_runs_refused_total[5m]))", "silent: {{reason}}")),
    p("Number and account health events from Meta", "short",
      q("sum by (event) (increase(wapipe_number_health_events_total[1h]))", "{{event}}")),
    p("Media fetched", "ops",
      q("sum by (outcome) (rate(wapipe_media_fetches_total[5m]))", "{{outcome}}")),
]


def common(w):
    sel = f'{{worker="{w}"}}'
    return [
        p("Jobs by outcome", "ops",
          q(f"sum by (outcome) (rate(wapipe_worker_jobs_total{sel}[1m]))", "{{outcome}}"),
          desc="retry: failed, will come back; deferred: held back on purpose (rate limits); dead: to the dead-letter queue."),
        p("Job duration", "s",
          q(p50("wapipe_worker_job_duration_seconds", sel=sel), "p50"),
          q(p99("wapipe_worker_job_duration_seconds", sel=sel), "p99")),
        p("Queue depth", "short",
          q(f"sum by (kind) (wapipe_queue_depth{sel})", "{{kind}}"),
          q(f"sum(wapipe_queue_dead_letter_depth{sel})", "dead letters")),
        p("Attempts (p99) and batch size (mean)", "short",
          q(p99("wapipe_worker_job_attempts", sel=sel), "attempts p99"),
          q(f"sum(rate(wapipe_worker_batch_size_sum{sel}[5m])) / sum(rate(wapipe_worker_batch_size_count{sel}[5m]))",
            "jobs per batch"),
          q(f"sum(rate(wapipe_worker_settle_failures_total{sel}[5m]))", "settle failures/s")),
    ]


WORKERS = {
    "parse": ("webhook.received: raw webhooks into messages, statuses and account events", [
        p("Webhook events parsed, by status", "ops",
          q("sum by (status) (rate(wapipe_parse_events_total[1m]))", "{{status}}")),
        p("Inbound messages, by outcome", "ops",
          q("sum by (outcome) (rate(wapipe_parse_messages_total[1m]))", "{{outcome}}"),
          q("sum(rate(wapipe_parse_statuses_total[1m]))", "statuses")),
        p("Changes by field", "ops",
          q("sum by (field) (rate(wapipe_parse_changes_total[5m]))", "{{field}}")),
        p("End to end: Meta's timestamp to message stored", "s",
          q(p50("wapipe_message_end_to_end_seconds"), "p50"),
          q(p99("wapipe_message_end_to_end_seconds"), "p99")),
        p("Number and account health events", "short",
          q("sum by (event) (increase(wapipe_number_health_events_total[1h]))", "{{event}}")),
    ]),
    "status": ("status.receipt: sent, delivered, read and failed receipts applied in rank order", [
        p("Receipts applied, by outcome", "ops",
          q("sum by (outcome) (rate(wapipe_status_receipts_total[1m]))", "{{outcome}}")),
        p("Statuses parsed from webhooks", "ops",
          q("sum(rate(wapipe_parse_statuses_total[1m]))", "statuses")),
    ]),
    "scenario": ("message.inbound: the keyword chatbot", [
        p("Runs started and continued", "ops",
          q("sum by (scenario) (rate(wapipe_scenario_runs_started_total[5m]))", "started {{scenario}}"),
          q("sum by (scenario) (rate(wapipe_scenario_runs_continued_total[5m]))", "continued {{scenario}}")),
        p("Runs ended, by how", "ops",
          q("sum by (status) (rate(wapipe_scenario_runs_finished_total[5m]))", "{{status}}")),
        p("Bot stayed silent, by reason", "ops",
          q("sum by (reason) (rate(wapipe_scenario_runs_refused_total[5m]))", "{{reason}}")),
        p("Fallbacks, handoffs and faulty flows", "ops",
          q("sum(rate(wapipe_scenario_fallbacks_total[5m]))", "fallbacks"),
          q("sum(rate(wapipe_scenario_handoffs_total[5m]))", "handoffs"),
          q("sum(rate(wapipe_scenario_faults_total[5m]))", "faults")),
    ]),
    "followup": ("followup.due: reminders to agents", [
        p("Follow-ups due, claimed and reminded", "ops",
          q("sum(rate(wapipe_followups_due_total[5m]))", "due"),
          q("sum(rate(wapipe_followups_claimed_total[5m]))", "claimed"),
          q("sum by (channel) (rate(wapipe_followups_reminded_total[5m]))", "reminded {{channel}}")),
        p("Scheduler claim latency", "s",
          q(p50("wapipe_followups_claim_seconds"), "p50"),
          q(p99("wapipe_followups_claim_seconds"), "p99"),
          q("sum by (instance) (rate(wapipe_followups_claim_seconds_count[5m]))", "claims/s {{instance}}")),
        p("Overdue follow-ups", "short",
          q("max(wapipe_followups_overdue)", "overdue now"),
          q("sum(increase(wapipe_followups_overdue_total[1h]))", "turned overdue (1h)")),
        p("Oldest due follow-up not reminded", "s",
          q("max(wapipe_followups_oldest_due_age_seconds)", "age"),
          q("sum(rate(wapipe_followups_publish_failed_total[5m]))", "publish failures/s")),
    ]),
    "outbound": ("outbound.send: sends to the Graph API within Meta's limits", [
        p("Sends by result", "ops",
          q("sum by (result) (rate(wapipe_outbound_sends_total[1m]))", "{{result}}")),
        p("Meta's error codes", "ops",
          q('sum by (code) (rate(wapipe_outbound_sends_total{code!="none"}[5m]))', "{{code}}")),
        p("Graph API latency", "s",
          q(p50("wapipe_outbound_graph_seconds"), "p50"),
          q(p99("wapipe_outbound_graph_seconds"), "p99")),
        p("Send rate over each number's limit", "percentunit",
          q(SATURATION, "{{phone_number_id}}")),
        p("Held back by a limit", "ops",
          q("sum by (limit) (rate(wapipe_outbound_rate_limited_total[1m]))", "{{limit}}")),
        p("Configs flagged", "short",
          q("sum by (code) (increase(wapipe_outbound_config_flagged_total[1h]))", "{{code}}")),
    ]),
    "webhook": ("webhook.deliver: signed outgoing webhooks to your endpoints", [
        p("Deliveries by outcome", "ops",
          q("sum by (outcome) (rate(wapipe_webhook_deliveries_total[1m]))", "{{outcome}}")),
        p("Endpoints disabled", "short",
          q("sum(increase(wapipe_webhook_endpoints_disabled_total[1h]))", "disabled (1h)")),
    ]),
    "media": ("media.fetch: customers' photos, audio and documents downloaded and stored", [
        p("Fetches by outcome", "ops",
          q("sum by (outcome) (rate(wapipe_media_fetches_total[5m]))", "{{outcome}}")),
        p("Bytes downloaded", "Bps",
          q("sum(rate(wapipe_media_downloaded_bytes_total[5m]))", "bytes/s")),
        p("Expired URLs looked up again, files pruned", "ops",
          q("sum(rate(wapipe_media_url_renewals_total[5m]))", "renewals"),
          q("sum(rate(wapipe_media_pruned_total[5m]))", "pruned")),
    ]),
}


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)

    def write(name, board):
        (out / name).write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")

    write("wapipe-overview.json", dashboard("wapipe-overview", "wapipe: overview", OVERVIEW))
    for w, (what, panels) in WORKERS.items():
        write(f"wapipe-worker-{w}.json",
              dashboard(f"wapipe-worker-{w}", f"wapipe worker: {w} ({what})", common(w) + panels))


if __name__ == "__main__":
    main()
