//! The load generator against real servers on 127.0.0.1: the no-work baseline and a signature-checking receiver.

use std::collections::HashSet;
use std::time::{Duration, Instant};
use wapipe_testkit::receiver;

use tokio::net::TcpListener;
use wapipe_sim::load::{LoadConfig, LoadError, run_load, spawn_nowork};

async fn nowork_url() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    (url, spawn_nowork(listener))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_out_against_nowork_accepts_everything() {
    let (url, server) = nowork_url().await;
    let cfg = LoadConfig {
        duration: Duration::from_millis(700),
        concurrency: 8,
        ..LoadConfig::new(url, "secret")
    };
    let r = run_load(cfg).await.unwrap();
    server.abort();
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.rejected, 0, "{r:?}");
    assert_eq!(r.accepted, r.sent, "{r:?}");
    assert!(r.sent > 200, "a local no-work server takes far more: {r:?}");
    assert!(r.elapsed_secs >= 0.7 && r.elapsed_secs < 3.0, "{r:?}");
    assert!(r.accepted_per_sec > 200.0, "{r:?}");
    assert!(r.inbound_messages > 0 && r.inbound_messages < 2 * r.accepted);
    assert!(r.p50_ms <= r.p90_ms && r.p90_ms <= r.p99_ms && r.p99_ms <= r.max_ms);
    assert!(r.max_ms > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_the_target_rate() {
    let (url, server) = nowork_url().await;
    let cfg = LoadConfig {
        rate: 200.0,
        duration: Duration::from_secs(1),
        concurrency: 4,
        ..LoadConfig::new(url, "secret")
    };
    let r = run_load(cfg).await.unwrap();
    server.abort();
    // Ticket i is due at i/200 s, so one second holds exactly 200.
    assert!((190..=200).contains(&r.sent), "{r:?}");
    assert_eq!(r.accepted, r.sent);
    // Wide bounds: a busy CI machine may finish the last requests late.
    assert!(
        (120.0..=230.0).contains(&r.accepted_per_sec),
        "rate {}",
        r.accepted_per_sec
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_signed_unique_and_realistic() {
    let secret = "load-test-secret";
    let rx = receiver::spawn_receiver(secret, receiver::verifying()).await;
    let cfg = LoadConfig {
        duration: Duration::from_secs(5),
        max_requests: Some(400),
        concurrency: 4,
        customers: 25,
        ..LoadConfig::new(rx.url(), secret)
    };
    let r = run_load(cfg).await.unwrap();
    assert_eq!(r.sent, 400, "max_requests bounds the run: {r:?}");
    assert_eq!(r.accepted, 400, "every signature verifies: {r:?}");

    let got = rx.received();
    assert_eq!(got.len(), 400);
    let mut wamids = HashSet::new();
    let mut customers = HashSet::new();
    let mut types = HashSet::new();
    let mut inbound = 0u64;
    let now: u64 = wapipe_sim::payloads::now_timestamp().parse().unwrap();
    for g in &got {
        assert!(g.signature_ok);
        assert_eq!(g.content_type.as_deref(), Some("application/json"));
        let v = g.json();
        assert_eq!(v["object"], "whatsapp_business_account");
        let change = &v["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        let value = &change["value"];
        assert_eq!(value["messaging_product"], "whatsapp");
        assert_eq!(
            value["metadata"]["phone_number_id"],
            wapipe_sim::payloads::DEFAULT_PHONE_NUMBER_ID
        );
        let items = if let Some(ms) = value["messages"].as_array() {
            inbound += ms.len() as u64;
            customers.insert(value["contacts"][0]["wa_id"].as_str().unwrap().to_owned());
            ms
        } else {
            types.insert("status".to_owned());
            value["statuses"].as_array().unwrap()
        };
        for m in items {
            assert!(
                wamids.insert(m["id"].as_str().unwrap().to_owned()),
                "duplicate wamid"
            );
            let ts: u64 = m["timestamp"].as_str().unwrap().parse().unwrap();
            assert!(ts.abs_diff(now) < 30, "timestamps are now");
            if let Some(t) = m["type"].as_str() {
                types.insert(t.to_owned());
            }
        }
    }
    assert_eq!(inbound, r.inbound_messages);
    assert!(
        customers.len() > 10 && customers.len() <= 25,
        "{customers:?}"
    );
    for t in ["text", "status", "image", "interactive", "reaction"] {
        assert!(types.contains(t), "{t} missing from the mix: {types:?}");
    }
}

#[tokio::test]
async fn counts_rejections_by_status() {
    let rx = receiver::spawn_receiver("right", receiver::verifying()).await;
    let cfg = LoadConfig {
        max_requests: Some(50),
        concurrency: 2,
        ..LoadConfig::new(rx.url(), "wrong")
    };
    let r = run_load(cfg).await.unwrap();
    assert_eq!(r.accepted, 0);
    assert_eq!(r.rejected, 50);
    assert_eq!(r.rejected_by_status.get(&401), Some(&50));
    assert_eq!(r.inbound_messages, 0);
}

#[tokio::test]
async fn a_down_target_is_errors_and_the_run_still_ends() {
    // A port that was just free: nothing listens there now.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let cfg = LoadConfig {
        duration: Duration::from_millis(300),
        concurrency: 4,
        ..LoadConfig::new(format!("http://127.0.0.1:{port}/webhook"), "s")
    };
    let r = run_load(cfg).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(r.accepted, 0);
    assert!(r.errors > 0 && r.errors == r.sent, "{r:?}");
    assert!(r.first_error.unwrap().contains("connect"));
}

#[tokio::test]
async fn refuses_non_loopback_targets() {
    for url in [
        "http://10.1.2.3:8080/webhook",
        "http://192.168.1.1/",
        "https://127.0.0.1/",
    ] {
        let err = run_load(LoadConfig::new(url, "s")).await.unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::NotLoopback { .. } | LoadError::BadUrl { .. }
            ),
            "{url}: {err}"
        );
    }
}
