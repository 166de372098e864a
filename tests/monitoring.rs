//! The dashboards and alert rules name only metrics the service exports:
//! scrape a running service after some traffic and compare (DESIGN §7).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use wapipe::serve::Roles;
use wapipe_shared::entities::message_media;
use wapipe_shared::entities::messages::{self, MessageStatus};
use wapipe_shared::jobs::Queue;
use wapipe_sim::SimMedia;
use wapipe_testkit::app::*;

mod common;

/// `wapipe_*` metric names in a text, with histogram suffixes folded.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("wapipe_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        i = end;
    }
    out
}

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn monitoring_files() -> Vec<PathBuf> {
    let root = monitoring_dir();
    let mut files = vec![root.join("alerts.yml")];
    for e in std::fs::read_dir(root.join("grafana")).unwrap() {
        files.push(e.unwrap().path());
    }
    files.sort();
    files
}

/// Polls `check` until it holds, for up to 30 s.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the service with every role on traffic that touches every stage
/// (webhooks accepted, duplicate, rejected and badly signed; an agent's
/// reply sent through the fake Graph and its receipts applied; a customer's
/// photo fetched and stored), then checks that each metric a rule or a
/// panel names is among those scraped.
#[tokio::test]
async fn dashboards_and_rules_name_only_exported_metrics() {
    common::install_tls_provider();
    let (listener, base) = common::graph_listener().await;
    let (mut settings, dir) = settings_for(Mode::Embedded).await;
    settings.graph_api_base = base;
    let app = TestApp::spawn_with(Mode::Embedded, settings, dir, Roles::all()).await;
    let graph = common::fake_graph(listener, &app).await;

    let now = chrono::Utc::now().timestamp();
    let body = wapipe_testkit::build::text_webhook_at("m1", "4917612345678", "Ana", "hi", now);
    assert_eq!(app.post(&body).await.0, 200);
    assert_eq!(app.post(&body).await.0, 200);
    assert_eq!(app.post(b"[]").await.0, 400);
    assert_eq!(
        app.post_with("/api/whatsapp/webhooks", body.clone(), None)
            .await
            .0,
        401
    );
    app.wait_settled(1, Duration::from_secs(20)).await;

    // An agent answers inside the customer's window.
    let key = app.admin_key().await;
    let chats = app.get_json("/api/whatsapp/chats", &key).await;
    let chat = chats["data"][0]["id"].as_str().expect("a chat").to_owned();
    let r = app
        .http
        .post(app.url(&format!("/api/whatsapp/chats/{chat}/messages")))
        .bearer_auth(&key)
        .json(&json!({"type": "text", "text": "Hello Ana"}))
        .send()
        .await
        .expect("send");
    let status = r.status();
    assert_eq!(status, 202, "{}", r.text().await.unwrap_or_default());
    let db = &app.db;
    eventually("the reply read, from Meta's receipts", || async {
        messages::Entity::find()
            .filter(messages::Column::Status.eq(MessageStatus::Read))
            .one(db)
            .await
            .expect("query")
            .is_some()
    })
    .await;

    // The customer sends a photo.
    let photo = common::media::png(40, 30);
    graph.add_media("9101", SimMedia::new(photo.clone(), "image/png"));
    common::media::deliver(
        &app,
        "wamid.monitoring-photo",
        "image",
        json!({"id": "9101", "mime_type": "image/png", "sha256": common::media::sha_hex(&photo)}),
        &[message_media::status::STORED],
    )
    .await;

    // Gauges are set by periodic loops; give them one round.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scraped = app.metrics().await;
    let exported: BTreeSet<String> = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(metric_names)
        .collect();

    let mut missing = Vec::new();
    let mut referenced = 0;
    for f in monitoring_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        for name in metric_names(&text) {
            referenced += 1;
            if !exported.contains(&name) {
                missing.push(format!("{} names {name}", f.display()));
            }
        }
    }
    assert!(referenced >= 10, "the monitoring files reference metrics");
    assert!(
        missing.is_empty(),
        "not exported: {missing:#?}\nexported: {exported:#?}"
    );
    // Depth gauges say which worker and kind of queue they are.
    assert!(
        scraped.contains("worker=\"parse\"") && scraped.contains("kind=\"dlq\""),
        "queue depth labels"
    );
    // The reply's number reports its limit and its sends.
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("wapipe_outbound_number_sends_total{")
                && l.contains(PHONE_NUMBER_ID)
                && l.ends_with(" 1")),
        "one send counted against the number"
    );
    app.stop().await;
}

/// The dashboards: valid JSON with panels, an overview, one drill-down per
/// worker role whose panels select that worker, and the same files the
/// generator writes (no hand edit drifts from `scripts/dashboards.py`).
#[test]
fn every_worker_has_a_drill_down_and_the_files_are_generated() {
    for f in monitoring_files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
    {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert!(
            v["panels"].as_array().is_some_and(|p| p.len() >= 2),
            "{}",
            f.display()
        );
    }
    let grafana = monitoring_dir().join("grafana");
    assert!(grafana.join("wapipe-overview.json").exists());
    for q in Queue::ALL {
        let f = grafana.join(format!("wapipe-worker-{}.json", q.name()));
        let text = std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("no drill-down for {}: {e}", q.name()));
        assert!(
            text.contains(&format!("worker=\\\"{}\\\"", q.name())),
            "{} selects its worker",
            f.display()
        );
    }
    let out = wapipe_testkit::db::temp_dir().unwrap();
    let run = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dashboards.py"))
        .arg(out.path())
        .output()
        .expect("python3");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut generated: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    let mut committed: Vec<String> = std::fs::read_dir(&grafana)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    committed.sort();
    assert_eq!(generated, committed);
    for name in generated {
        assert_eq!(
            std::fs::read_to_string(out.path().join(&name)).unwrap(),
            std::fs::read_to_string(grafana.join(&name)).unwrap(),
            "{name} differs from what scripts/dashboards.py writes: run it"
        );
    }
}

/// `(alert, its annotation keys)` for each rule of alerts.yml.
fn alerts() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(monitoring_dir().join("alerts.yml")).unwrap();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_annotations = false;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert: ") {
            out.push((name.trim().to_owned(), Vec::new()));
            in_annotations = false;
        } else if t == "annotations:" {
            in_annotations = true;
        } else if in_annotations {
            match (out.last_mut(), t.split_once(':')) {
                (Some((_, keys)), Some((k, _))) if line.starts_with("          ") => {
                    keys.push(k.to_owned())
                }
                _ => in_annotations = false,
            }
        }
    }
    out
}

/// Every alert has a summary, a description and a runbook link to its own
/// section of docs/runbook.md, and every section there is an alert's.
#[test]
fn every_alert_has_its_runbook_section() {
    let alerts = alerts();
    assert!(alerts.len() >= 20, "{alerts:?}");
    let runbook =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook.md"))
            .unwrap();
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_owned)
        .collect();
    let text = std::fs::read_to_string(monitoring_dir().join("alerts.yml")).unwrap();
    for (name, keys) in &alerts {
        for k in ["summary", "description", "runbook_url"] {
            assert!(keys.iter().any(|x| x == k), "{name} has no {k}: {keys:?}");
        }
        assert!(
            text.contains(&format!(
                "runbook_url: \"docs/runbook.md#{}\"",
                name.to_lowercase()
            )),
            "{name} links its own section"
        );
        assert!(sections.contains(name), "docs/runbook.md has no ## {name}");
    }
    let names: BTreeSet<String> = alerts.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        sections, names,
        "runbook sections and alerts are the same set"
    );
}

/// The rules load in Prometheus's own checker and their unit tests
/// (monitoring/alerts_test.yml: incidents that must fire, and traffic that
/// must not) pass. CI installs promtool (Debian's `prometheus` package).
#[test]
fn alert_rules_pass_promtool() {
    let Ok(v) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing on CI (.ci/run installs prometheus)"
        );
        eprintln!("SKIPPED: promtool is missing (apt-get install prometheus)");
        return;
    };
    assert!(v.status.success());
    let dir = monitoring_dir();
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn metric_name_extraction() {
    let n = metric_names(
        "rate(wapipe_ingest_ack_seconds_bucket{x=\"1\"}[5m]) + my_wapipe_x + wapipe_a_count",
    );
    assert_eq!(
        n.into_iter().collect::<Vec<_>>(),
        vec!["wapipe_a", "wapipe_ingest_ack_seconds"]
    );
}
