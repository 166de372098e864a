//! RabbitMQ unreachable for a few seconds under a stream of deliveries:
//! ingest keeps answering 200 (the database is the source of truth), and
//! every accepted event is processed once the broker is back (DESIGN
//! invariant 2). The outage is made by a TCP proxy between wapipe and
//! RabbitMQ that cuts every connection and refuses new ones, which is what
//! a stopped broker looks like from wapipe's side, without stopping the
//! shared server (restarting a node that holds many quorum queues can take
//! minutes, and other test runs share it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wapipe::serve::Roles;
use wapipe_shared::entities::webhook_events::EventStatus;
use wapipe_testkit::app::*;

/// Forwards to RabbitMQ while `up`; when it goes down, open connections
/// are cut and new ones are closed at once.
async fn spawn_proxy(up: Arc<AtomicBool>, cut: watch::Receiver<u64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            if !up.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let mut cut = cut.clone();
            // Only a cut after this connection opened ends it.
            cut.borrow_and_update();
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_outage_loses_nothing() {
    let up = Arc::new(AtomicBool::new(true));
    let (cut_tx, cut_rx) = watch::channel(0u64);
    let port = spawn_proxy(up.clone(), cut_rx).await;

    let (mut settings, dir) = settings_for(Mode::Production).await;
    settings.amqp_url = Some(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    let app = TestApp::spawn_with(Mode::Production, settings, dir, Roles::all()).await;

    let started = Instant::now();
    let mut accepted = 0u64;
    let (mut stopped, mut restored) = (false, false);
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let t = started.elapsed();
        if !stopped && t > Duration::from_secs(2) {
            up.store(false, Ordering::SeqCst);
            let _ = cut_tx.send(1);
            stopped = true;
        }
        if stopped && !restored && t > Duration::from_secs(6) {
            up.store(true, Ordering::SeqCst);
            restored = true;
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
    assert!(stopped && restored);
    assert_eq!(app.count_events(None).await, accepted);
    app.wait_settled(accepted, Duration::from_secs(90)).await;
    assert_eq!(app.count_events(Some(EventStatus::Failed)).await, 0);
    assert_eq!(app.count_events(Some(EventStatus::Received)).await, 0);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("wapipe_ingest_publish_failures_total{reason=\"broker\"}"),
        "publish failures are counted"
    );
    app.stop().await;
}
