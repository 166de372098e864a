//! The roles as an operator runs them: the README's production commands
//! (`wapipe ingest` and `wapipe workers` on one host, default ops ports),
//! health on every process, and no work queue left filling up.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use wapipe_shared::crypto::sign_body;
use wapipe_shared::entities::messages;
use wapipe_testkit::app::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wapipe(settings: &wapipe_shared::config::Settings, role: &str, listen: u16) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wapipe"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &settings.database_url)
        .env("WAPIPE_SECRET_KEY", KEY)
        .env("WAPIPE_QUEUE_PREFIX", &settings.queue_prefix)
        .env("WAPIPE_LANES", settings.lanes.to_string())
        .env("WAPIPE_LISTEN", format!("127.0.0.1:{listen}"))
        .env("RUST_LOG", "warn")
        .arg(role)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(a) = &settings.amqp_url {
        cmd.env("AMQP_URL", a);
    }
    Proc(cmd.spawn().expect("spawn wapipe"))
}

async fn get(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

async fn wait_for(url: &str, want: u16, procs: &mut [&mut Proc]) {
    let start = Instant::now();
    loop {
        if get(url).await == Some(want) {
            return;
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.0.try_wait() {
                panic!("a wapipe process exited with {status} before {url} answered {want}");
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{url} did not answer {want} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wapipe ingest` and `wapipe workers` as the README starts them on one
/// host, with no WAPIPE_METRICS_LISTEN: each takes its own ops port
/// (9464, 9465), both stay up, report ready, and a webhook posted to the
/// one is stored by the other. Before each role had its own default, the
/// second process failed to bind the metrics port.
#[tokio::test]
async fn ingest_and_workers_start_side_by_side() {
    let (settings, _dir) = settings_for(Mode::Production).await;
    let (db, _config_id) = prepare_db(&settings).await;
    let http = free_port();
    let mut ingest = wapipe(&settings, "ingest", http);
    let mut workers = wapipe(&settings, "workers", free_port());
    wait_for(
        "http://127.0.0.1:9464/readyz",
        200,
        &mut [&mut ingest, &mut workers],
    )
    .await;
    wait_for(
        "http://127.0.0.1:9465/readyz",
        200,
        &mut [&mut ingest, &mut workers],
    )
    .await;
    assert_eq!(get("http://127.0.0.1:9465/healthz").await, Some(200));
    let metrics = reqwest::get("http://127.0.0.1:9465/metrics")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wapipe_build_info") && metrics.contains("roles=\"parse,status,"),
        "the workers process reports what it runs"
    );

    let body = text_webhook("two-procs", "4917000000077", "hello");
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/api/whatsapp/webhooks"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            sign_body(APP_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let start = Instant::now();
    loop {
        let n = messages::Entity::find()
            .filter(messages::Column::ProviderMessageId.eq("wamid.two-procs"))
            .count(&db)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the workers process never stored the message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in [&mut ingest, &mut workers] {
        assert!(
            p.0.try_wait().unwrap().is_none(),
            "both processes still run"
        );
    }
    drop((ingest, workers));
    if let Ok(b) = wapipe_shared::broker::AmqpBroker::new(&settings.broker_settings()) {
        let _ = b.delete_topology().await;
        b.close().await;
    }
}

/// After traffic, every work queue drains to zero: nothing is published to
/// a queue that no registered worker consumes (the parse worker used to
/// publish `message.inbound` before its consumer existed, and the jobs
/// piled up).
async fn no_work_queue_fills_up(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    for n in 0..20 {
        let body = text_webhook(&format!("q{n}"), &format!("49170000001{n:02}"), "hi");
        assert_eq!(app.post(&body).await.0, 200);
    }
    app.wait_settled(20, Duration::from_secs(30)).await;
    let start = Instant::now();
    loop {
        let depths = app.broker.queue_depths().await.expect("depths");
        let waiting: Vec<_> = depths.iter().filter(|(_, n, _)| *n > 0).collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "queues still hold jobs nobody takes: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn no_work_queue_fills_up_embedded() {
    no_work_queue_fills_up(Mode::Embedded).await;
}

#[tokio::test]
async fn no_work_queue_fills_up_production() {
    no_work_queue_fills_up(Mode::Production).await;
}
