//! RabbitMQ stopped for a few seconds under a stream of deliveries: ingest
//! keeps answering 200 (the database is the source of truth), and every
//! accepted event is processed once the broker is back (DESIGN invariant 2).
//! Its own test binary: it stops the shared broker, so nothing may run beside it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use wapipe_shared::entities::webhook_events::EventStatus;

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarts the app even if the test panics, so later tests find a broker.
struct RestartGuard;
impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_outage_loses_nothing() {
    let app = TestApp::spawn(Mode::Production).await;
    let started = Instant::now();
    let mut accepted = 0u64;
    let mut stopped = false;
    let mut restarted = false;
    let _guard = RestartGuard;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let t = started.elapsed();
        if !stopped && t > Duration::from_secs(2) {
            rabbitmqctl(&["stop_app"]);
            stopped = true;
        }
        if stopped && !restarted && t > Duration::from_secs(6) {
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup"]);
            restarted = true;
        }
        let (s, body) = app
            .post(&text_webhook(
                &format!("out{i}"),
                &format!("4917{}", i % 9),
                "during outage",
            ))
            .await;
        assert_eq!(s, 200, "ingest must not depend on the broker: {body}");
        accepted += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped && restarted);
    assert_eq!(app.count_events(None).await, accepted);
    app.wait_settled(accepted, Duration::from_secs(90)).await;
    assert_eq!(app.count_events(Some(EventStatus::Failed)).await, 0);
    assert_eq!(app.count_events(Some(EventStatus::Received)).await, 0);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("wapipe_ingest_publish_failures_total"),
        "publish failures are counted"
    );
    app.stop().await;
}
