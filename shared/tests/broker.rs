//! The broker contract, one suite on both brokers: every case that both
//! promise runs once on RabbitMQ (127.0.0.1:5672, or `WAPIPE_TEST_AMQP`;
//! a random prefix per test, its queues and exchanges deleted at the end)
//! and once on the embedded broker (its dead letters in a migrated SQLite
//! file), as `case::amqp` and `case::embedded`. What only one of them has
//! follows: RabbitMQ's connection losses (produced by a TCP proxy in front
//! of RabbitMQ that the test cuts, so the shared server is never stopped),
//! its cross-process real-time fan-out and its protocol limits; the
//! embedded broker's redrive requested by another process and its dead
//! letters when the database is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use wapipe_shared::broker::amqp::{AmqpTimeouts, delay_bucket};
use wapipe_shared::broker::{
    AmqpBroker, Broker, BrokerError, BrokerSettings, Delivery, EmbeddedBroker, LaneConsumer,
    OutboundJob, lane_for, request_embedded_redrive,
};
use wapipe_shared::jobs::Queue;
use wapipe_testkit::amqp_url;
use wapipe_testkit::db::{Backend, TempDir, TestDb, migrated};

const LANES: u16 = 2;
/// How long a case waits for a delivery it expects.
const WAIT: Duration = Duration::from_secs(10);

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

/// A declared RabbitMQ broker and its cleanup.
async fn broker() -> (AmqpBroker, Cleanup) {
    let s = settings(amqp_url());
    let guard = Cleanup(s.clone());
    let b = AmqpBroker::with_timeouts(&s, quick()).expect("broker");
    b.declare().await.expect("declare");
    (b, guard)
}

/// An embedded broker with its database.
struct Embedded {
    broker: EmbeddedBroker,
    db: DatabaseConnection,
    settings: BrokerSettings,
    _dir: Option<TempDir>,
}

async fn embedded() -> Embedded {
    let TestDb { db, dir, .. } = migrated(Backend::Sqlite, 8).await;
    let settings = BrokerSettings {
        amqp_url: None,
        prefix: "t".to_owned(),
        lanes: LANES,
        prefetch: 8,
    };
    Embedded {
        broker: EmbeddedBroker::new(&settings, db.clone()),
        db,
        settings,
        _dir: dir,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Amqp,
    Embedded,
}

/// One broker of either kind, declared, for a case of the contract.
struct Env {
    kind: Kind,
    broker: Arc<dyn Broker>,
    prefix: String,
    amqp: Option<AmqpBroker>,
    /// The AMQP cleanup or the embedded database's folder.
    _keep: Box<dyn std::any::Any + Send>,
}

impl Env {
    async fn new(kind: Kind) -> Env {
        match kind {
            Kind::Amqp => {
                let (b, cleanup) = broker().await;
                Env {
                    kind,
                    broker: Arc::new(b.clone()),
                    prefix: cleanup.0.prefix.clone(),
                    amqp: Some(b),
                    _keep: Box::new(cleanup),
                }
            }
            Kind::Embedded => {
                let e = embedded().await;
                e.broker.declare().await.expect("declare");
                Env {
                    kind,
                    broker: Arc::new(e.broker),
                    prefix: e.settings.prefix,
                    amqp: None,
                    _keep: Box::new((e.db, e._dir)),
                }
            }
        }
    }

    /// How long to watch a lane to be sure nothing comes.
    fn quiet(&self) -> Duration {
        match self.kind {
            Kind::Amqp => Duration::from_millis(500),
            Kind::Embedded => Duration::from_millis(200),
        }
    }

    /// Queues per worker: its lanes, its delay queues (one per delay
    /// bucket on RabbitMQ, one in memory here) and its dead letters.
    fn queues_per_worker(&self) -> usize {
        match self.kind {
            Kind::Amqp => LANES as usize + 12 + 1,
            Kind::Embedded => LANES as usize + 2,
        }
    }

    async fn close(self) {
        if let Some(b) = &self.amqp {
            b.close().await;
        }
    }
}

/// Runs the async fn `$name(Kind)` once per broker, as two tests.
macro_rules! both_brokers {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn amqp() {
                super::$name(super::Kind::Amqp).await;
            }
            #[tokio::test]
            async fn embedded() {
                super::$name(super::Kind::Embedded).await;
            }
        }
    };
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
async fn lane_of(b: &dyn Broker, worker: Queue, lane_key: &str) -> LaneConsumer {
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

fn depth(depths: &[(String, u64, bool)], queue: &str) -> u64 {
    depths
        .iter()
        .find(|(q, _, _)| q == queue)
        .map(|d| d.1)
        .unwrap_or_else(|| panic!("no queue {queue} in {depths:?}"))
}

// ---------------------------------------------------------------------------
// The contract, on both brokers

async fn publish_consume_ack_roundtrip(kind: Kind) {
    let e = Env::new(kind).await;
    let b = e.broker.as_ref();
    assert_eq!(
        b.mode(),
        match kind {
            Kind::Amqp => "amqp",
            Kind::Embedded => "embedded",
        }
    );
    b.ping().await.expect("ping");
    b.publish(job("webhook.received", "cfg:alice", "m1"))
        .await
        .expect("publish");
    let lane = lane_for("cfg:alice", LANES);
    let lane_queue = format!("{}.parse.{lane}", e.prefix);
    if kind == Kind::Embedded {
        // RabbitMQ's counts are its own; the embedded ones are exact at once.
        let depths = b.queue_depths().await.expect("depths");
        assert_eq!(depth(&depths, &lane_queue), 1);
    }
    let mut c = lane_of(b, Queue::Parse, "cfg:alice").await;
    let d = recv(&mut c, WAIT).await.expect("delivery");
    assert_eq!(d.worker, "parse");
    assert_eq!(d.event, "webhook.received");
    assert_eq!(d.lane_key, "cfg:alice");
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.body, br#"{"id":"m1"}"#);
    assert_eq!(d.attempt, 1);
    assert_eq!(d.lane, lane);
    assert!(!d.redelivered);
    d.ack().await.expect("ack");
    assert!(recv(&mut c, e.quiet()).await.is_none());
    drop(c);
    // Acked: a new consumer gets nothing either.
    let mut c = lane_of(b, Queue::Parse, "cfg:alice").await;
    assert!(recv(&mut c, e.quiet()).await.is_none());
    drop(c);
    let depths = b.queue_depths().await.expect("depths");
    assert_eq!(depth(&depths, &lane_queue), 0);
    e.close().await;
}
both_brokers!(publish_consume_ack_roundtrip);

async fn declare_twice_is_fine(kind: Kind) {
    let e = Env::new(kind).await;
    e.broker.declare().await.expect("second declare");
    let depths = e.broker.queue_depths().await.expect("depths");
    let workers = Queue::ALL.len();
    assert_eq!(depths.len(), workers * e.queues_per_worker(), "{depths:?}");
    assert_eq!(depths.iter().filter(|d| d.2).count(), workers);
    assert!(depths.iter().all(|d| d.1 == 0));
    e.close().await;
}
both_brokers!(declare_twice_is_fine);

async fn unknown_event_is_a_permanent_error(kind: Kind) {
    let e = Env::new(kind).await;
    let err = e.broker.publish(job("nope", "k", "m")).await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownEvent(_)), "{err}");
    assert!(!err.is_transient());
    e.close().await;
}
both_brokers!(unknown_event_is_a_permanent_error);

async fn lane_order_is_kept(kind: Kind) {
    let e = Env::new(kind).await;
    let b = e.broker.as_ref();
    // Concurrently pipelined publishes would not keep a total order on
    // the wire; order is promised for sequential publishes.
    for i in 0..100 {
        b.publish(job("status.receipt", "cfg:bob", &format!("m{i}")))
            .await
            .expect("publish");
    }
    let mut c = lane_of(b, Queue::Status, "cfg:bob").await;
    for i in 0..100 {
        let d = recv(&mut c, WAIT).await.expect("delivery");
        assert_eq!(d.message_id, format!("m{i}"));
        d.ack().await.expect("ack");
    }
    drop(c);
    e.close().await;
}
both_brokers!(lane_order_is_kept);

async fn concurrent_publishes_are_all_confirmed(kind: Kind) {
    let e = Env::new(kind).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let b = e.broker.clone();
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
    let depths = e.broker.queue_depths().await.expect("depths");
    let total: u64 = depths
        .iter()
        .filter(|(q, _, _)| q.contains(".outbound.") && !q.contains("delay") && !q.ends_with("dlq"))
        .map(|d| d.1)
        .sum();
    assert_eq!(total, 300);
    e.close().await;
}
both_brokers!(concurrent_publishes_are_all_confirmed);

async fn one_active_consumer_per_lane(kind: Kind) {
    let e = Env::new(kind).await;
    let b = e.broker.as_ref();
    b.publish(job("webhook.received", "cfg:x", "m1"))
        .await
        .expect("publish");
    let mut first = lane_of(b, Queue::Parse, "cfg:x").await;
    let d = recv(&mut first, WAIT).await.expect("first");
    d.ack().await.expect("ack");
    // A second consumer of the same lane waits while the first lives.
    let mut second = lane_of(b, Queue::Parse, "cfg:x").await;
    b.publish(job("webhook.received", "cfg:x", "m2"))
        .await
        .expect("publish");
    let d = recv(&mut first, WAIT)
        .await
        .expect("the first still has the lane");
    assert_eq!(d.message_id, "m2");
    drop(d);
    assert!(recv(&mut second, e.quiet()).await.is_none());
    drop(first);
    // Unsettled when its consumer went: the lane passes to the second
    // consumer, m2 with it.
    let d = recv(&mut second, WAIT).await.expect("second");
    assert_eq!(d.message_id, "m2");
    assert!(d.redelivered);
    d.ack().await.expect("ack");
    drop(second);
    e.close().await;
}
both_brokers!(one_active_consumer_per_lane);

async fn retry_is_redelivered_after_the_delay_with_attempt_plus_one(kind: Kind) {
    let e = Env::new(kind).await;
    let b = e.broker.as_ref();
    b.publish(job("message.inbound", "cfg:carol", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(b, Queue::Scenario, "cfg:carol").await;
    let d = recv(&mut c, WAIT).await.expect("first");
    assert_eq!(d.attempt, 1);
    let (delay, at_most) = match kind {
        Kind::Amqp => (Duration::from_millis(300), Duration::from_secs(3)),
        Kind::Embedded => (Duration::from_millis(150), Duration::from_secs(1)),
    };
    let retried_at = Instant::now();
    d.retry(delay, "db busy").await.expect("retry");
    // The delay waits in the broker: one delay queue (on RabbitMQ the one
    // of the delay's bucket) holds exactly one copy.
    let depths = b.queue_depths().await.expect("depths");
    let delayed: Vec<_> = depths
        .iter()
        .filter(|(q, n, _)| q.contains(".delay") && *n > 0)
        .collect();
    assert_eq!(delayed.len(), 1, "{delayed:?}");
    let queue = match kind {
        Kind::Amqp => format!("{}.scenario.delay.{}", e.prefix, delay_bucket(delay)),
        Kind::Embedded => format!("{}.scenario.delay", e.prefix),
    };
    assert!(
        delayed[0].0 == queue && delayed[0].1 == 1,
        "{delayed:?} in {queue}"
    );
    // The lane is free while the job waits: a later job goes first.
    b.publish(job("message.inbound", "cfg:carol", "m2"))
        .await
        .expect("publish");
    let d = recv(&mut c, WAIT).await.expect("m2");
    assert_eq!(d.message_id, "m2");
    assert!(retried_at.elapsed() < delay);
    d.ack().await.expect("ack");

    let d = recv(&mut c, WAIT).await.expect("retried");
    let waited = retried_at.elapsed();
    assert!(waited >= delay, "redelivered after {waited:?}");
    assert!(waited < at_most, "redelivered after {waited:?}");
    assert_eq!(d.attempt, 2);
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.lane_key, "cfg:carol");
    assert_eq!(d.body, br#"{"id":"m1"}"#);
    d.ack().await.expect("ack");
    assert!(
        recv(&mut c, Duration::from_millis(700)).await.is_none(),
        "a retry must come back once"
    );
    let depths = b.queue_depths().await.expect("depths");
    assert_eq!(depth(&depths, &queue), 0);
    drop(c);
    e.close().await;
}
both_brokers!(retry_is_redelivered_after_the_delay_with_attempt_plus_one);

async fn dead_letters_list_redrive_purge(kind: Kind) {
    let e = Env::new(kind).await;
    let b = e.broker.as_ref();
    b.publish(job("followup.due", "cfg:dan", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(b, Queue::Followup, "cfg:dan").await;
    let mut d = recv(&mut c, WAIT).await.expect("delivery");
    // As if it failed three times.
    d.attempt = 3;
    d.dead_letter("template missing")
        .await
        .expect("dead letter");

    // Listing does not consume.
    for _ in 0..2 {
        let dead = b.dlq_list(Queue::Followup, 10).await.expect("list");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let x = &dead[0];
        assert_eq!(x.worker, "followup");
        assert_eq!(x.message_id, "m1");
        assert_eq!(x.event, "followup.due");
        assert_eq!(x.lane_key, "cfg:dan");
        assert_eq!(x.attempts, 3);
        assert_eq!(x.last_error.as_deref(), Some("template missing"));
        assert_eq!(x.body, br#"{"id":"m1"}"#);
        assert!(x.dead_lettered_at.is_some());
    }
    assert!(b.dlq_list(Queue::Parse, 10).await.expect("list").is_empty());
    let dlq = format!("{}.followup.dlq", e.prefix);
    let depths = b.queue_depths().await.expect("depths");
    assert!(
        depths
            .iter()
            .any(|(q, n, is_dlq)| *is_dlq && *q == dlq && *n == 1),
        "{depths:?}"
    );

    // Redrive: back on its lane with attempt 1.
    assert_eq!(b.dlq_redrive(Queue::Followup).await.expect("redrive"), 1);
    assert!(
        b.dlq_list(Queue::Followup, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let d = recv(&mut c, WAIT).await.expect("redriven");
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
    e.close().await;
}
both_brokers!(dead_letters_list_redrive_purge);

async fn unsettled_delivery_comes_back_when_its_consumer_goes(kind: Kind) {
    let e = Env::new(kind).await;
    let b = e.broker.as_ref();
    b.publish(job("webhook.received", "cfg:erin", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(b, Queue::Parse, "cfg:erin").await;
    let d = recv(&mut c, WAIT).await.expect("delivery");
    assert!(!d.redelivered);
    drop(d);
    drop(c);
    let mut c = lane_of(b, Queue::Parse, "cfg:erin").await;
    let d = recv(&mut c, WAIT).await.expect("redelivery");
    assert_eq!(d.message_id, "m1");
    assert!(d.redelivered);
    d.ack().await.expect("ack");
    drop(c);
    e.close().await;
}
both_brokers!(unsettled_delivery_comes_back_when_its_consumer_goes);

async fn realtime_publish_needs_no_subscriber(kind: Kind) {
    let e = Env::new(kind).await;
    e.broker
        .publish_realtime(br#"{"type":"chat.updated"}"#.to_vec())
        .await
        .expect("realtime");
    e.close().await;
}
both_brokers!(realtime_publish_needs_no_subscriber);

async fn realtime_reaches_subscribers(kind: Kind) {
    let e = Env::new(kind).await;
    let mut a = e.broker.subscribe_realtime().await.expect("subscribe");
    let mut b = e.broker.subscribe_realtime().await.expect("subscribe");
    e.broker
        .publish_realtime(b"hello".to_vec())
        .await
        .expect("publish");
    for sub in [&mut a, &mut b] {
        let got = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("in time")
            .expect("a body");
        assert_eq!(got, b"hello");
    }
    e.close().await;
}
both_brokers!(realtime_reaches_subscribers);

// ---------------------------------------------------------------------------
// The embedded broker alone

/// An unsettled delivery dropped by its worker goes back to the head of
/// its lane at once (RabbitMQ keeps it until the consumer goes, above).
#[tokio::test]
async fn unsettled_delivery_goes_back_to_the_head_of_its_lane() {
    let e = embedded().await;
    let b = &e.broker;
    for id in ["m1", "m2"] {
        b.publish(job("webhook.received", "cfg:erin", id))
            .await
            .expect("publish");
    }
    let mut c = lane_of(b, Queue::Parse, "cfg:erin").await;
    let d = recv(&mut c, Duration::from_secs(1))
        .await
        .expect("delivery");
    assert_eq!(d.message_id, "m1");
    drop(d);
    let d = recv(&mut c, Duration::from_secs(1))
        .await
        .expect("redelivery");
    assert_eq!(d.message_id, "m1");
    assert!(d.redelivered);
    d.ack().await.expect("ack");
    let d = recv(&mut c, Duration::from_secs(1)).await.expect("next");
    assert_eq!(d.message_id, "m2");
    d.ack().await.expect("ack");
}

#[tokio::test]
async fn redrive_requested_by_another_process_is_picked_up() {
    let e = embedded().await;
    let server = &e.broker;
    server
        .publish(job("outbound.send", "cfg:fay", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(server, Queue::Outbound, "cfg:fay").await;
    let d = recv(&mut c, Duration::from_secs(1))
        .await
        .expect("delivery");
    d.dead_letter("meta down").await.expect("dead letter");

    // The CLI: a broker on the same database that runs no worker. Its
    // redrive only marks the rows, it does not take them.
    let cli = EmbeddedBroker::new(&e.settings, e.db.clone());
    assert_eq!(cli.dlq_redrive(Queue::Outbound).await.expect("redrive"), 1);
    let d = recv(&mut c, Duration::from_secs(5))
        .await
        .expect("picked up by the server");
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.attempt, 1);
    d.dead_letter("meta down again").await.expect("dead letter");

    // The same through the helper the CLI calls.
    assert_eq!(
        request_embedded_redrive(&e.db, Queue::Outbound)
            .await
            .expect("request"),
        1
    );
    let d = recv(&mut c, Duration::from_secs(5))
        .await
        .expect("picked up by the server");
    assert_eq!(d.message_id, "m1");
    d.ack().await.expect("ack");
    assert!(
        server
            .dlq_list(Queue::Outbound, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn dead_letter_fails_when_the_database_is_gone_and_the_job_stays() {
    let e = embedded().await;
    let b = &e.broker;
    b.publish(job("webhook.received", "cfg:gil", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(b, Queue::Parse, "cfg:gil").await;
    let d = recv(&mut c, Duration::from_secs(1))
        .await
        .expect("delivery");
    e.db.clone().close().await.expect("close db");
    let err = d.dead_letter("boom").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // Not lost: back at the head of its lane.
    let d = recv(&mut c, Duration::from_secs(1)).await.expect("back");
    assert_eq!(d.message_id, "m1");
    assert!(d.redelivered);
}

// ---------------------------------------------------------------------------
// RabbitMQ alone

/// Ids longer than AMQP's short strings are refused before the wire.
#[tokio::test]
async fn long_ids_are_permanent_errors() {
    let b = AmqpBroker::with_timeouts(&settings(amqp_url()), quick()).expect("broker");
    let long = "x".repeat(300);
    let e = b
        .publish(job("webhook.received", "k", &long))
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::InvalidJob(_)), "{e}");
    assert!(!e.is_transient());
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
