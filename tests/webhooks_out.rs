//! Outgoing webhooks end to end, in `wapipe serve` (PostgreSQL + RabbitMQ,
//! and SQLite + the in-process queue): a customer's message becomes a
//! `message.created` event, the dispatcher a delivery, the webhook worker
//! a signed POST to a test receiver.
//!
//! - The signature is checked by the Standard Webhooks reference library
//!   (PyPI `standardwebhooks`, pinned, installed into a venv under the
//!   target folder on first use), not by our code.
//! - 500, 500, then 200: attempts 1 and 2 failed, 3 succeeded, one
//!   delivery, the same `webhook-id` each time.
//! - Always 500: dead after the last attempt; a retry from the API delivers
//!   it once the receiver is back.
//! - Failing past the (shortened) window disables the endpoint, with a
//!   `webhook.disabled` event and the metric.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use wapipe::serve::Roles;
use wapipe_domain::apikeys::{self, NewKey};
use wapipe_shared::config::Settings;
use wapipe_shared::entities::events;
use wapipe_testkit::app::{Mode, TestApp, settings_for, text_webhook};
use wapipe_testkit::receiver::{Received, Receiver, Responder, spawn_receiver};

const STANDARDWEBHOOKS: &str = "standardwebhooks==1.1.0";
const WAIT: Duration = Duration::from_secs(60);

async fn spawn(mode: Mode, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let (mut settings, dir) = settings_for(mode).await;
    // The receiver listens on 127.0.0.1.
    settings.webhooks_allow_private = true;
    tweak(&mut settings);
    TestApp::spawn_with(mode, settings, dir, Roles::all()).await
}

async fn admin(app: &TestApp) -> String {
    apikeys::create(
        &app.db,
        NewKey::Admin {
            name: None,
            companies: Vec::new(),
        },
    )
    .await
    .expect("admin key")
    .secret
}

async fn call(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method, app.url(path))
        .header("authorization", format!("Bearer {key}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("API call");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Creates an endpoint for `message.created` at the receiver; (id, secret).
async fn endpoint(app: &TestApp, key: &str, rx: &Receiver) -> (String, String) {
    let (status, body) = call(
        app,
        key,
        reqwest::Method::POST,
        "/api/whatsapp/webhook-endpoints",
        Some(
            json!({"url": rx.url(), "eventTypes": ["message.created"], "configId": app.config_id}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().expect("id").to_owned(),
        body["secret"].as_str().expect("secret").to_owned(),
    )
}

async fn deliveries(app: &TestApp, key: &str, endpoint: &str) -> Vec<Value> {
    let (status, body) = call(
        app,
        key,
        reqwest::Method::GET,
        &format!("/api/whatsapp/webhook-endpoints/{endpoint}/deliveries"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().cloned().unwrap_or_default()
}

/// Polls the endpoint's deliveries until one has `status`.
async fn wait_delivery(app: &TestApp, key: &str, endpoint: &str, status: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = deliveries(app, key, endpoint).await;
        if let Some(d) = all.iter().find(|d| d["status"] == status) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no delivery became {status}: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A customer writes: one `message.created` event.
async fn customer_writes(app: &TestApp, tag: &str) {
    let (status, body) = app.post(&text_webhook(tag, "15557770001", "hello")).await;
    assert_eq!(status, 200, "{body}");
}

/// The Python of the Standard Webhooks reference library, installed once
/// into `<target>/standardwebhooks-venv`; `None` (with the reason printed)
/// only when python3 or its venv module is missing.
fn python() -> Option<PathBuf> {
    static PY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let venv = target.join("standardwebhooks-venv");
        let py = venv.join("bin/python");
        let marker = venv.join(STANDARDWEBHOOKS);
        if marker.exists() {
            return Some(py);
        }
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!(
                "SKIPPED the Standard Webhooks check: python3 with venv is not available \
                 (apt-get install python3-venv)"
            );
            return None;
        }
        let pip = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                STANDARDWEBHOOKS,
            ])
            .status()
            .expect("run pip");
        assert!(pip.success(), "pip install {STANDARDWEBHOOKS} failed");
        std::fs::write(&marker, b"").expect("marker");
        Some(py)
    })
    .clone()
}

const VERIFY: &str = "import json, sys\n\
from standardwebhooks.webhooks import Webhook\n\
body = open(sys.argv[2], 'rb').read()\n\
Webhook(sys.argv[1]).verify(body, json.loads(sys.argv[3]))\n";

/// Whether the reference library accepts this request with `secret`.
fn verified_by_reference(py: &PathBuf, secret: &str, r: &Received, body: &[u8]) -> bool {
    let dir = wapipe_testkit::db::temp_dir().expect("temp dir");
    let file = dir.path().join("body");
    std::fs::write(&file, body).expect("write body");
    let headers = json!({
        "webhook-id": r.header("webhook-id"),
        "webhook-timestamp": r.header("webhook-timestamp"),
        "webhook-signature": r.header("webhook-signature"),
    });
    let out = Command::new(py)
        .args(["-c", VERIFY, secret])
        .arg(&file)
        .arg(headers.to_string())
        .output()
        .expect("run python");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

fn statuses(d: &Value) -> Vec<(i64, bool, Option<i64>)> {
    d["attemptLog"]
        .as_array()
        .expect("attempt log")
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().expect("attempt"),
                a["succeeded"].as_bool().expect("succeeded"),
                a["statusCode"].as_i64(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_on_500_then_delivered_once_and_signed() {
    let app = spawn(Mode::Production, |_| {}).await;
    let flaky: Responder = Arc::new(|n, _| if n < 2 { 500 } else { 200 });
    let rx = spawn_receiver("unused", flaky).await;
    let key = admin(&app).await;
    let (ep, secret) = endpoint(&app, &key, &rx).await;
    customer_writes(&app, "retry").await;

    let d = wait_delivery(&app, &key, &ep, "succeeded").await;
    assert_eq!(
        statuses(&d),
        vec![
            (1, false, Some(500)),
            (2, false, Some(500)),
            (3, true, Some(200))
        ]
    );
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["eventType"], "message.created");
    let got = rx.received();
    assert_eq!(got.len(), 3, "one delivery, three attempts");
    let ids: Vec<_> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0] && i.is_some()), "{ids:?}");
    let body = got[2].json();
    assert_eq!(body["type"], "message.created");
    assert_eq!(body["configId"], json!(app.config_id));
    assert_eq!(body["seq"], d["eventSeq"]);
    assert_eq!(body["data"]["text"], "hello");
    assert!(
        got[2]
            .header("webhook-signature")
            .is_some_and(|s| s.starts_with("v1,"))
    );

    match python() {
        Some(py) => {
            for r in &got {
                assert!(verified_by_reference(&py, &secret, r, &r.body), "signature");
            }
            let mut tampered = got[2].body.to_vec();
            tampered.push(b' ');
            assert!(
                !verified_by_reference(&py, &secret, &got[2], &tampered),
                "the reference library refuses a changed body"
            );
            let other = wapipe_shared::crypto::new_webhook_secret();
            assert!(!verified_by_reference(&py, &other, &got[2], &got[2].body));
        }
        None => eprintln!("signature check by the reference library skipped"),
    }

    // A second message: a second delivery, and still nothing doubled.
    customer_writes(&app, "retry-2").await;
    let got = rx.wait_for(4, WAIT).await;
    assert_eq!(got.len(), 4);
    let deadline = Instant::now() + WAIT;
    while deliveries(&app, &key, &ep)
        .await
        .iter()
        .any(|d| d["status"] != "succeeded")
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = deliveries(&app, &key, &ep).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(rx.received().len(), 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_after_the_last_attempt_then_retried_from_the_api() {
    let app = spawn(Mode::Production, |_| {}).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let rx = spawn_receiver(
        "unused",
        Arc::new(move |_, _| if h.load(Ordering::SeqCst) { 200 } else { 500 }),
    )
    .await;
    let key = admin(&app).await;
    let (ep, _) = endpoint(&app, &key, &rx).await;
    customer_writes(&app, "dead").await;

    let d = wait_delivery(&app, &key, &ep, "dead").await;
    let max = i64::from(app.settings.retry_max_attempts);
    assert_eq!(d["attempts"], max, "{d:#}");
    assert!(
        statuses(&d)
            .iter()
            .all(|(_, ok, code)| !ok && *code == Some(500))
    );
    assert_eq!(rx.received().len() as i64, max);
    // The job is in the webhook queue's dead-letter queue, with the last error.
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let dead = app
            .broker
            .dlq_list(wapipe_shared::jobs::Queue::Webhook, 10)
            .await
            .expect("dlq list");
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].message_id,
        format!("webhook:{}", d["id"].as_str().expect("id"))
    );
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("500")),
        "{:?}",
        dead[0].last_error
    );

    healthy.store(true, Ordering::SeqCst);
    let id = d["id"].as_str().expect("id");
    let (status, body) = call(
        &app,
        &key,
        reqwest::Method::POST,
        &format!("/api/whatsapp/webhook-endpoints/{ep}/deliveries/{id}/retry"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let d = wait_delivery(&app, &key, &ep, "succeeded").await;
    assert_eq!(d["attempts"], max + 1);
    assert_eq!(statuses(&d).last(), Some(&(max + 1, true, Some(200))));
    assert_eq!(rx.received().len() as i64, max + 1);
    app.stop().await;
}

/// SQLite and the in-process queue: the endpoint fails for longer than the
/// window (1 s here, 24 h by default) and is disabled, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabled_after_failing_for_the_window() {
    let app = spawn(Mode::Embedded, |s| {
        s.webhook_disable_after_s = 1;
        s.retry_min_delay_ms = 600;
        s.retry_max_delay_ms = 900;
        s.retry_max_attempts = 6;
    })
    .await;
    let rx = spawn_receiver("unused", Arc::new(|_, _| 503)).await;
    let key = admin(&app).await;
    let (ep, _) = endpoint(&app, &key, &rx).await;
    customer_writes(&app, "disable").await;

    let path = format!("/api/whatsapp/webhook-endpoints/{ep}");
    let deadline = Instant::now() + WAIT;
    let disabled = loop {
        let (status, body) = call(&app, &key, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        if body["enabled"] == false {
            break body;
        }
        assert!(Instant::now() < deadline, "never disabled: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let since =
        chrono::DateTime::parse_from_rfc3339(disabled["failingSince"].as_str().expect("since"))
            .expect("time");
    let at = chrono::DateTime::parse_from_rfc3339(disabled["disabledAt"].as_str().expect("at"))
        .expect("time");
    assert!(
        at - since >= chrono::Duration::seconds(1),
        "disabled only after the window: {since} → {at}"
    );
    let d = wait_delivery(&app, &key, &ep, "failed").await;
    assert!(d["attempts"].as_i64().expect("attempts") >= 2, "{d:#}");
    let tries = rx.received().len();

    let evs = events::Entity::find()
        .filter(events::Column::Type.eq("webhook.disabled"))
        .all(&app.db)
        .await
        .expect("events");
    assert_eq!(evs.len(), 1, "one event");
    assert_eq!(evs[0].payload["endpointId"], json!(ep));
    assert_eq!(evs[0].config_id, app.config_id);
    let metrics = app.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("wapipe_webhook_endpoints_disabled_total"))
        .unwrap_or_else(|| panic!("no metric in {metrics}"));
    let n: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert!(n >= 1.0, "{line}");

    // A disabled endpoint gets nothing more.
    customer_writes(&app, "disable-2").await;
    app.wait_settled(2, WAIT).await;
    let (status, body) = call(&app, &key, reqwest::Method::GET, &path, None).await;
    assert_eq!((status, body["enabled"].clone()), (200, json!(false)));
    assert_eq!(deliveries(&app, &key, &ep).await.len(), 1);
    assert_eq!(rx.received().len(), tries);
    app.stop().await;
}
