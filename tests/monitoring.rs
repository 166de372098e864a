//! The dashboards and alert rules name only metrics the service exports:
//! scrape a running service after some traffic and compare (DESIGN §7).

use std::collections::BTreeSet;
use std::time::Duration;

use wapipe_testkit::app::*;

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

fn monitoring_files() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let mut files = vec![root.join("alerts.yml")];
    for e in std::fs::read_dir(root.join("grafana")).unwrap() {
        files.push(e.unwrap().path());
    }
    files
}

#[tokio::test]
async fn dashboards_and_rules_name_only_exported_metrics() {
    let app = TestApp::spawn(Mode::Embedded).await;
    // Traffic that touches each stage: accepted, duplicate, rejected, bad signature.
    let body = text_webhook("m1", "4917", "hi");
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

    // Dashboards are valid JSON with panels.
    for f in monitoring_files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
    {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert!(
            v["panels"].as_array().is_some_and(|p| !p.is_empty()),
            "{}",
            f.display()
        );
    }
    app.stop().await;
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
