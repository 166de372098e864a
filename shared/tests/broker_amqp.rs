//! The RabbitMQ broker against a real RabbitMQ (127.0.0.1:5672, or
//! `WAPIPE_TEST_AMQP_URL`). Each test uses its own random prefix and
//! deletes its queues and exchanges at the end. Connection failures are
//! produced by a TCP proxy in front of RabbitMQ that the test cuts, so the
//! shared server is never stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wapipe_shared::jobs::Queue;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use wapipe_shared::broker::amqp::{AmqpTimeouts, delay_bucket};
use wapipe_shared::broker::{
    AmqpBroker, Broker, BrokerError, BrokerSettings, Delivery, LaneConsumer, OutboundJob, lane_for,
};

const LANES: u16 = 2;

fn amqp_url() -> String {
    std::env::var("WAPIPE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn settings(url: String) -> BrokerSettings {
    BrokerSettings {
        amqp_url: Some(url),
        prefix: format!("t{}", uuid::Uuid::now_v7().simple()),
        lanes: LANES,
        prefetch: 16,
    }
}

fn quick() -> AmqpTimeouts {
    AmqpTimeouts {
        connect: Duration::from_secs(2),
        confirm: Duration::from_secs(2),
        operation: Duration::from_secs(5),
        max_recovery: Duration::from_secs(3),
    }
}

/// Deletes a test's queues and exchanges when dropped, even when the test
/// panics (through a direct connection, on a runtime of its own).
struct Cleanup(BrokerSettings);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let settings = BrokerSettings {
            amqp_url: Some(amqp_url()),
            ..self.0.clone()
        };
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let b = AmqpBroker::with_timeouts(&settings, quick()).expect("broker");
                if let Err(e) = b.delete_topology().await {
                    eprintln!("cleanup of {}: {e}", settings.prefix);
                }
                b.close().await;
            });
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup of {} panicked", self.0.prefix);
        }
    }
}

async fn broker() -> (AmqpBroker, Cleanup) {
    let s = settings(amqp_url());
    let guard = Cleanup(s.clone());
    let b = AmqpBroker::with_timeouts(&s, quick()).expect("broker");
    b.declare().await.expect("declare");
    (b, guard)
}

fn job(event: &str, lane_key: &str, id: &str) -> OutboundJob {
    OutboundJob {
        event: event.to_owned(),
        lane_key: lane_key.to_owned(),
        message_id: id.to_owned(),
        body: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
    }
}

/// The consumer of `lane_key`'s lane.
async fn lane_of(b: &AmqpBroker, worker: Queue, lane_key: &str) -> LaneConsumer {
    let lane = lane_for(lane_key, LANES);
    b.consume(worker)
        .await
        .expect("consume")
        .into_iter()
        .find(|c| c.lane() == lane)
        .expect("lane")
}

/// Next delivery within `within`, skipping (re)subscription errors.
async fn recv(c: &mut LaneConsumer, within: Duration) -> Option<Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, c.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("lane closed"),
            Ok(Some(Ok(d))) => return Some(d),
            Ok(Some(Err(e))) => eprintln!("consume error (retried): {e}"),
        }
    }
}

#[tokio::test]
async fn publish_consume_ack_roundtrip() {
    let (b, _cleanup) = broker().await;
    b.publish(job("webhook.received", "cfg:alice", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(&b, Queue::Parse, "cfg:alice").await;
    let d = recv(&mut c, Duration::from_secs(10))
        .await
        .expect("delivery");
    assert_eq!(d.worker, "parse");
    assert_eq!(d.event, "webhook.received");
    assert_eq!(d.lane_key, "cfg:alice");
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.body, br#"{"id":"m1"}"#);
    assert_eq!(d.attempt, 1);
    assert_eq!(d.lane, lane_for("cfg:alice", LANES));
    d.ack().await.expect("ack");
    assert!(recv(&mut c, Duration::from_millis(500)).await.is_none());
    drop(c);
    // Acked: a new consumer gets nothing either.
    let mut c = lane_of(&b, Queue::Parse, "cfg:alice").await;
    assert!(recv(&mut c, Duration::from_millis(500)).await.is_none());
    drop(c);
    assert_eq!(b.mode(), "amqp");
    b.ping().await.expect("ping");
    b.close().await;
}

#[tokio::test]
async fn unknown_event_and_long_ids_are_permanent_errors() {
    let b = AmqpBroker::with_timeouts(&settings(amqp_url()), quick()).expect("broker");
    let e = b.publish(job("nope", "k", "m")).await.unwrap_err();
    assert!(matches!(e, BrokerError::UnknownEvent(_)));
    assert!(!e.is_transient());
    let long = "x".repeat(300);
    let e = b
        .publish(job("webhook.received", "k", &long))
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::InvalidJob(_)), "{e}");
    b.close().await;
}

#[tokio::test]
async fn publish_before_declare_is_unroutable_then_heals() {
    let s = settings(amqp_url());
    let _cleanup = Cleanup(s.clone());
    let b = AmqpBroker::with_timeouts(&s, quick()).expect("broker");
    // No exchange yet: RabbitMQ closes the publish channel (404).
    let e = b
        .publish(job("webhook.received", "k", "m0"))
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    b.declare().await.expect("declare");
    // The publish channel is replaced (or recovered) on the next calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.publish(job("webhook.received", "k", "m1")).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish never healed: {e}"),
        }
    }
    b.close().await;
}

#[tokio::test]
async fn declare_twice_is_fine() {
    let (b, _cleanup) = broker().await;
    b.declare().await.expect("second declare");
    let depths = b.queue_depths().await.expect("depths");
    // 5 workers x (lanes + 12 delay buckets + dlq).
    assert_eq!(depths.len(), 5 * (LANES as usize + 12 + 1));
    assert_eq!(depths.iter().filter(|d| d.2).count(), 5);
    assert!(depths.iter().all(|d| d.1 == 0));
    b.close().await;
}

#[tokio::test]
async fn lane_order_is_kept() {
    let (b, _cleanup) = broker().await;
    // Publish concurrently-pipelined batches would not keep a total order
    // on the wire; order is promised for sequential publishes.
    for i in 0..100 {
        b.publish(job("status.receipt", "cfg:bob", &format!("m{i}")))
            .await
            .expect("publish");
    }
    let mut c = lane_of(&b, Queue::Status, "cfg:bob").await;
    for i in 0..100 {
        let d = recv(&mut c, Duration::from_secs(10))
            .await
            .expect("delivery");
        assert_eq!(d.message_id, format!("m{i}"));
        d.ack().await.expect("ack");
    }
    drop(c);
    b.close().await;
}

#[tokio::test]
async fn concurrent_publishes_are_all_confirmed() {
    let (b, _cleanup) = broker().await;
    let b = Arc::new(b);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let b = b.clone();
        tasks.spawn(async move {
            b.publish(job("outbound.send", &format!("cfg:{i}"), &format!("m{i}")))
                .await
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.expect("task").expect("publish");
    }
    eprintln!(
        "300 concurrent confirmed publishes in {:?}",
        started.elapsed()
    );
    let depths = b.queue_depths().await.expect("depths");
    let total: u64 = depths
        .iter()
        .filter(|(q, _, _)| q.contains(".outbound.") && !q.contains("delay") && !q.ends_with("dlq"))
        .map(|d| d.1)
        .sum();
    assert_eq!(total, 300);
    b.close().await;
}

#[tokio::test]
async fn retry_is_redelivered_after_the_delay_with_attempt_plus_one() {
    let (b, _cleanup) = broker().await;
    b.publish(job("message.inbound", "cfg:carol", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(&b, Queue::Scenario, "cfg:carol").await;
    let d = recv(&mut c, Duration::from_secs(10)).await.expect("first");
    assert_eq!(d.attempt, 1);
    let delay = Duration::from_millis(300);
    let retried_at = Instant::now();
    d.retry(delay, "db busy").await.expect("retry");
    // The delay waits in the broker: one delay queue, the one of the
    // delay's bucket, holds exactly one copy.
    let depths = b.queue_depths().await.expect("depths");
    let bucket = format!(".scenario.delay.{}", delay_bucket(delay));
    let delayed: Vec<_> = depths
        .iter()
        .filter(|(q, n, _)| q.contains(".delay.") && *n > 0)
        .collect();
    assert_eq!(delayed.len(), 1, "{delayed:?}");
    assert!(
        delayed[0].0.ends_with(&bucket) && delayed[0].1 == 1,
        "{delayed:?}"
    );
    let d = recv(&mut c, Duration::from_secs(10))
        .await
        .expect("retried");
    let waited = retried_at.elapsed();
    assert!(waited >= delay, "redelivered after {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "redelivered after {waited:?}"
    );
    assert_eq!(d.attempt, 2);
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.lane_key, "cfg:carol");
    assert_eq!(d.body, br#"{"id":"m1"}"#);
    d.ack().await.expect("ack");
    assert!(
        recv(&mut c, Duration::from_millis(700)).await.is_none(),
        "a retry must come back once"
    );
    drop(c);
    b.close().await;
}

#[tokio::test]
async fn dead_letters_list_redrive_purge() {
    let (b, _cleanup) = broker().await;
    b.publish(job("followup.due", "cfg:dan", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(&b, Queue::Followup, "cfg:dan").await;
    let d = recv(&mut c, Duration::from_secs(10))
        .await
        .expect("delivery");
    d.dead_letter("template missing")
        .await
        .expect("dead letter");

    // Listing does not consume.
    for _ in 0..2 {
        let dead = b.dlq_list(Queue::Followup, 10).await.expect("list");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let x = &dead[0];
        assert_eq!(x.message_id, "m1");
        assert_eq!(x.event, "followup.due");
        assert_eq!(x.lane_key, "cfg:dan");
        assert_eq!(x.attempts, 1);
        assert_eq!(x.last_error.as_deref(), Some("template missing"));
        assert_eq!(x.body, br#"{"id":"m1"}"#);
        assert!(x.dead_lettered_at.is_some());
    }
    let depths = b.queue_depths().await.expect("depths");
    assert!(
        depths
            .iter()
            .any(|(q, n, dlq)| *dlq && q.ends_with(".followup.dlq") && *n == 1)
    );

    // Redrive: back on its lane with attempt 1.
    assert_eq!(b.dlq_redrive(Queue::Followup).await.expect("redrive"), 1);
    assert!(
        b.dlq_list(Queue::Followup, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let d = recv(&mut c, Duration::from_secs(10))
        .await
        .expect("redriven");
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.attempt, 1);
    d.dead_letter("still missing").await.expect("dead letter");

    assert_eq!(b.dlq_purge(Queue::Followup).await.expect("purge"), 1);
    assert!(
        b.dlq_list(Queue::Followup, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(b.dlq_purge(Queue::Followup).await.expect("purge"), 0);
    drop(c);
    b.close().await;
}

#[tokio::test]
async fn unsettled_delivery_comes_back_when_its_consumer_goes() {
    let (b, _cleanup) = broker().await;
    b.publish(job("webhook.received", "cfg:erin", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(&b, Queue::Parse, "cfg:erin").await;
    let d = recv(&mut c, Duration::from_secs(10))
        .await
        .expect("delivery");
    assert!(!d.redelivered);
    drop(d);
    drop(c);
    let mut c = lane_of(&b, Queue::Parse, "cfg:erin").await;
    let d = recv(&mut c, Duration::from_secs(10))
        .await
        .expect("redelivery");
    assert_eq!(d.message_id, "m1");
    assert!(d.redelivered);
    d.ack().await.expect("ack");
    drop(c);
    b.close().await;
}

#[tokio::test]
async fn realtime_publish_needs_no_subscriber() {
    let (b, _cleanup) = broker().await;
    b.publish_realtime(br#"{"type":"chat.updated"}"#.to_vec())
        .await
        .expect("realtime");
    b.close().await;
}

// ---------------------------------------------------------------------------
// Connection loss

/// How the proxy cuts RabbitMQ off.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Port closed, connections refused: RabbitMQ stopped.
    Refuse,
    /// Connections accepted then closed at once: a broken load balancer
    /// or a node still starting.
    Hangup,
}

/// A TCP proxy to RabbitMQ that can be cut: `down` kills every proxied
/// connection and then refuses or hangs up new ones.
struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    accepting: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    listener: Mutex<Option<AbortHandle>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Self {
            addr: listener.local_addr().expect("addr"),
            target,
            accepting: Arc::new(AtomicBool::new(true)),
            conns: Arc::default(),
            listener: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (accepting, conns, target) = (self.accepting.clone(), self.conns.clone(), self.target);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !accepting.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().expect("lock").push(task.abort_handle());
            }
        });
        *self.listener.lock().expect("lock") = Some(task.abort_handle());
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    fn down(&self, cut: Cut) {
        self.accepting.store(false, Ordering::SeqCst);
        if let Cut::Refuse = cut
            && let Some(listener) = self.listener.lock().expect("lock").take()
        {
            listener.abort();
        }
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    async fn up(&self) {
        if self.listener.lock().expect("lock").is_none() {
            // The aborted accept task drops its listener soon after.
            let deadline = Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("rebind: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("cannot rebind the proxy: {e}"),
                }
            };
            self.serve(listener);
        }
        self.accepting.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down(Cut::Refuse);
    }
}

fn rabbit_addr() -> SocketAddr {
    let url = amqp_url();
    let host = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672");
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .expect("resolve")
        .next()
        .expect("address")
}

async fn publish_until_ok(b: &AmqpBroker, j: OutboundJob, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match b.publish(j.clone()).await {
            Ok(()) => return started.elapsed(),
            Err(e) => {
                assert!(
                    e.is_transient(),
                    "non-transient error while reconnecting: {e}"
                );
                assert!(
                    started.elapsed() < within,
                    "publish did not recover within {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Publishes fail fast with a transient error while RabbitMQ is
/// unreachable, and work again once it is back; a lane consumer started
/// before the outage gets the jobs published after it.
async fn outage(cut: Cut, down_for: Duration) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let proxy = Proxy::start(rabbit_addr()).await;
    let s = settings(proxy.url());
    let _cleanup = Cleanup(s.clone());
    let b = AmqpBroker::with_timeouts(&s, quick()).expect("broker");
    b.declare().await.expect("declare");
    b.publish(job("webhook.received", "cfg:frank", "before"))
        .await
        .expect("publish");
    let mut c = lane_of(&b, Queue::Parse, "cfg:frank").await;
    let d = recv(&mut c, Duration::from_secs(10)).await.expect("before");
    assert_eq!(d.message_id, "before");
    d.ack().await.expect("ack");

    proxy.down(cut);
    let cut_at = Instant::now();
    let mut failures = 0;
    while cut_at.elapsed() < down_for {
        let started = Instant::now();
        match b
            .publish(job("webhook.received", "cfg:frank", "lost"))
            .await
        {
            Ok(()) if failures == 0 => {
                // The client may not have seen the cut yet; it will soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(()) => panic!("publish succeeded while RabbitMQ was unreachable"),
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                let took = started.elapsed();
                assert!(
                    took < Duration::from_secs(3),
                    "publish took {took:?} to fail"
                );
                failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failures > 0);

    proxy.up().await;
    let took = publish_until_ok(
        &b,
        job("webhook.received", "cfg:frank", "after"),
        Duration::from_secs(30),
    )
    .await;
    eprintln!("publish recovered {took:?} after the proxy came back");

    // The consumer resubscribed by itself. At-least-once: the ack of
    // "before" may have been cut with the connection, and a "lost" publish
    // may have been stored after all, so those can come first.
    loop {
        let d = recv(&mut c, Duration::from_secs(30))
            .await
            .expect("delivery after the outage");
        let id = d.message_id.clone();
        d.ack().await.expect("ack");
        match id.as_str() {
            "after" => break,
            "before" | "lost" => eprintln!("redelivered or stored anyway: {id}"),
            other => panic!("unexpected delivery {other}"),
        }
    }
    drop(c);
    b.close().await;
}

#[tokio::test]
async fn short_outage_recovers() {
    outage(Cut::Hangup, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn long_outage_recovers() {
    // Longer than lapin's own reconnect attempts and `max_recovery`.
    outage(Cut::Hangup, Duration::from_secs(6)).await;
}

#[tokio::test]
async fn short_stop_recovers() {
    outage(Cut::Refuse, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn long_stop_recovers() {
    outage(Cut::Refuse, Duration::from_secs(6)).await;
}

/// Runs rabbitmqctl, or None when it is not installed here.
fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// RabbitMQ closes our connections (CONNECTION_FORCED, as on a node
/// restart or `rabbitmqctl close_connection`): lapin's auto-recovery or our
/// reconnect brings publishing and the lane consumer back.
#[tokio::test]
async fn connections_closed_by_rabbitmq_recover() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    if rabbitmqctl(&["version"]).is_none() {
        eprintln!("rabbitmqctl not installed; skipped");
        return;
    }
    let (b, _cleanup) = broker().await;
    let prefix = {
        let depths = b.queue_depths().await.expect("depths");
        depths[0].0.split('.').next().expect("prefix").to_owned()
    };
    let mut c = lane_of(&b, Queue::Parse, "cfg:gina").await;
    b.publish(job("webhook.received", "cfg:gina", "before"))
        .await
        .expect("publish");
    let d = recv(&mut c, Duration::from_secs(10)).await.expect("before");
    d.ack().await.expect("ack");

    // Only this test's connections: their names carry its prefix.
    let listing = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&[
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
    })
    .await
    .expect("join")
    .expect("rabbitmqctl");
    let pids: Vec<String> = listing
        .lines()
        .filter(|l| l.contains(&prefix))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(pids.len(), 2, "publish and consume connections: {listing}");
    for pid in pids {
        tokio::task::spawn_blocking(move || rabbitmqctl(&["close_connection", &pid, "test"]))
            .await
            .expect("join");
    }

    publish_until_ok(
        &b,
        job("webhook.received", "cfg:gina", "after"),
        Duration::from_secs(30),
    )
    .await;
    loop {
        let d = recv(&mut c, Duration::from_secs(30))
            .await
            .expect("delivery after the forced close");
        let id = d.message_id.clone();
        d.ack().await.expect("ack");
        match id.as_str() {
            "after" => break,
            "before" => eprintln!("redelivered: {id}"),
            other => panic!("unexpected delivery {other}"),
        }
    }
    drop(c);
    b.close().await;
}

/// Real-time bodies published by one process reach every subscriber of
/// every other process (each subscription has its own queue on the fanout
/// exchange), and a dropped subscription stops receiving.
#[tokio::test]
async fn realtime_reaches_every_process() {
    let s = settings(amqp_url());
    let _guard = Cleanup(s.clone());
    let publisher = AmqpBroker::with_timeouts(&s, quick()).expect("broker");
    publisher.declare().await.expect("declare");
    let other = AmqpBroker::with_timeouts(&s, quick()).expect("second process");
    let mut a = publisher.subscribe_realtime().await.expect("subscribe a");
    let mut b = other.subscribe_realtime().await.expect("subscribe b");
    let c = other.subscribe_realtime().await.expect("subscribe c");
    drop(c);
    for n in 0..3u8 {
        publisher
            .publish_realtime(vec![b'e', n])
            .await
            .expect("publish");
    }
    for sub in [&mut a, &mut b] {
        for n in 0..3u8 {
            let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .expect("in time")
                .expect("a body");
            assert_eq!(got, vec![b'e', n]);
        }
    }
    other.close().await;
    publisher.close().await;
}
