//! The receiver against hostile clients (embedded mode, as tried in the
//! issue): idle and half-open connections are closed on a deadline and
//! capped in number, bodies in flight have a byte budget (503 past it), and
//! a client that sends its whole over-size body before reading still gets
//! the 413.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wapipe::serve::Roles;
use wapipe_shared::crypto::sign_body;
use wapipe_testkit::app::*;
use wapipe_testkit::build::text_webhook;

const HOOK: &str = "/api/whatsapp/webhooks";

/// Reads until the server closes (or `wait` passes): what it answered, and
/// whether it closed.
async fn read_until_closed(sock: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

async fn app_with(edit: impl FnOnce(&mut wapipe_shared::config::Settings)) -> TestApp {
    let (mut settings, dir) = settings_for(Mode::Embedded).await;
    edit(&mut settings);
    TestApp::spawn_with(Mode::Embedded, settings, dir, Roles::all()).await
}

#[tokio::test]
async fn silent_half_sent_and_idle_http2_connections_are_closed_on_time() {
    let app = app_with(|s| {
        s.first_request_timeout_s = 1;
        s.idle_timeout_s = 2;
    })
    .await;
    let started = Instant::now();
    // Nothing at all; the first bytes of a request line; an HTTP/2 preface
    // (the protocol is detected, then nothing).
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"POST /api/whatsapp/webh").await.unwrap();
    let mut h2 = TcpStream::connect(app.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    for (name, sock) in [
        ("silent", &mut silent),
        ("half", &mut half),
        ("h2", &mut h2),
    ] {
        let (_, closed) = read_until_closed(sock, Duration::from_secs(8)).await;
        assert!(closed, "{name}: still open after 8 s (deadline 1 s)");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before the deadline ({took:?})"
    );

    // A kept-alive connection that did answer a request: open while it is
    // used, closed once idle for 2 s.
    let mut kept = TcpStream::connect(app.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut kept, Duration::from_millis(1500)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!closed, "closed while within its idle time");
    let (_, closed) = read_until_closed(&mut kept, Duration::from_secs(8)).await;
    assert!(
        closed,
        "an idle kept-alive connection stays open past its idle time"
    );
    app.stop().await;
}

#[tokio::test]
async fn open_connections_are_capped_and_a_slot_frees_when_one_closes() {
    let app = app_with(|s| {
        s.max_connections = 2;
        s.first_request_timeout_s = 2;
    })
    .await;
    let _a = TcpStream::connect(app.addr).await.unwrap();
    let _b = TcpStream::connect(app.addr).await.unwrap();
    // Both slots are held by silent clients: a third is not served until
    // their deadline closes them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut c = TcpStream::connect(app.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        waited >= Duration::from_millis(1500),
        "served after {waited:?}: the cap of 2 did not hold"
    );
    app.stop().await;
}

#[tokio::test]
async fn bodies_in_flight_have_a_byte_budget() {
    let app = app_with(|s| {
        s.max_body_bytes = 16 * 1024 * 1024;
        s.body_budget_bytes = 1024 * 1024;
    })
    .await;
    // A client that declares a 900 KiB body and sends it slowly holds 900
    // KiB of the budget...
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST {HOOK} HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: sha256={}\r\ncontent-length: {}\r\n\r\n",
        "0".repeat(64),
        900 * 1024
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[b' '; 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a second of 200 KiB is turned away with 503 and Retry-After,
    let big = format!(
        "{{\"object\":\"x\",\"pad\":\"{}\"}}",
        "y".repeat(200 * 1024)
    );
    let sig = sign_body(APP_SECRET.as_bytes(), big.as_bytes());
    let post_big = || {
        app.http
            .post(app.url(HOOK))
            .header("x-hub-signature-256", &sig)
            .body(big.clone())
            .send()
    };
    let r = post_big().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // ...also to a client that writes its whole body before reading (as
    // Python's urllib does), which would otherwise meet a closed socket:
    // 8 MiB, more than the sockets' and hyper's buffers hold unread.
    let mut sock = TcpStream::connect(app.addr).await.unwrap();
    let whole = vec![b' '; 8 * 1024 * 1024];
    let head = format!(
        "POST {HOOK} HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: sha256={}\r\ncontent-length: {}\r\n\r\n",
        "0".repeat(64),
        whole.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&whole)
        .await
        .expect("the server reads the body rather than closing on it");
    let (answer, _) = read_until_closed(&mut sock, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // ...while a small one still fits.
    let (s, t) = app
        .post(&text_webhook("small", "4917000000001", "hi"))
        .await;
    assert_eq!(s, 200, "{t}");
    // Once the slow body is done (answered), the budget is back.
    drop(slow);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_big().await.unwrap();
        if r.status().as_u16() != 503 {
            // Signed, a JSON object and under the cap: accepted.
            assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
            break;
        }
        assert!(Instant::now() < until, "the budget never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_its_whole_over_size_body_first_still_reads_the_413() {
    let app = app_with(|s| s.max_body_bytes = 64 * 1024).await;
    // As Python's urllib does: headers, then the whole body, and only then
    // read. Without reading the body first, the server's close would reset
    // the connection and the client would never see the answer.
    for body_len in [300 * 1024usize, 2 * 1024 * 1024] {
        let mut sock = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {HOOK} HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: sha256={}\r\ncontent-length: {body_len}\r\n\r\n",
            "0".repeat(64)
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&vec![b'x'; body_len])
            .await
            .expect("the server reads the body rather than resetting");
        let (answer, _) = read_until_closed(&mut sock, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{body_len} bytes: {answer:?}"
        );
    }
    app.stop().await;
}
