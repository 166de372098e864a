//! A WebSocket client too slow to keep up: it is closed with 1013 while a
//! client that reads keeps going, and the server's memory stays bounded
//! however far behind the slow ones are. Alone in its test binary, so the
//! process's resident memory is this test's.

mod common;

use std::time::Duration;

use common::ws::{connect, ns, quick, take, write_one};
use common::{Api, Backend};
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wapipe_api::ApiSettings;

/// The process's resident memory, in MiB (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Slow clients that read nothing while 400 events of 64 KiB are written
/// (25 MiB each would hold, 400 MiB for sixteen, if the server queued per
/// client): the process grows by far less, every slow client is closed
/// with 1013 once it reads again, and the client that reads got all 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_with_1013_and_memory_stays_bounded() {
    const SLOW: usize = 16;
    const EVENTS: u64 = 400;
    let api = Api::start_with(
        Backend::Postgres,
        ApiSettings {
            ws_max_buffer: 16,
            ..quick()
        },
    )
    .await;
    let admin = api.admin().await;
    let (chat, _) = api
        .inbound(
            api.config_id,
            "33600000007",
            "Z",
            "hi",
            common::minutes_ago(5),
        )
        .await;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(connect(&api.base, &admin, "").await);
    }
    let mut fast = connect(&api.base, &admin, "").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_mib();
    let mut peak = before;
    // Big events fill the socket buffers quickly.
    let pad = "x".repeat(64 * 1024);
    for i in 0..EVENTS {
        write_one(&api.db, api.config_id, chat, json!({"n": i, "pad": pad})).await;
        // The fast client reads each one.
        assert_eq!(ns(&take(&mut fast, 1).await), vec![i]);
        peak = peak.max(rss_mib());
    }
    let grown = peak - before;
    eprintln!("{SLOW} slow clients: the process grew {grown:.1} MiB ({before:.0} -> {peak:.0})");
    assert!(
        grown < 96.0,
        "the process grew {grown:.0} MiB ({before:.0} -> {peak:.0}) with {SLOW} slow clients \
         {EVENTS} events of 64 KiB behind: it must not queue per client"
    );
    // The slow clients now read: some events, then the close.
    for (n, mut ws) in slow.into_iter().enumerate() {
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => break frame.code,
                Ok(Some(Ok(_))) => {}
                other => panic!("slow client {n}: expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(
            code,
            CloseCode::Again,
            "slow client {n}: 1013, try again later"
        );
    }
}
