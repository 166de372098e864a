//! The embedded broker, with its dead letters in a real SQLite database
//! migrated with the project's schema.

use std::time::{Duration, Instant};
use wapipe_shared::jobs::Queue;

use sea_orm::{Database, DatabaseConnection};
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::broker::{
    Broker, BrokerError, BrokerSettings, Delivery, EmbeddedBroker, LaneConsumer, OutboundJob,
    lane_for, request_embedded_redrive,
};

const LANES: u16 = 4;

struct Env {
    broker: EmbeddedBroker,
    db: DatabaseConnection,
    settings: BrokerSettings,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/t.sqlite?mode=rwc", dir.path().display());
    let db = Database::connect(&url).await.expect("sqlite");
    Migrator::up(&db, None).await.expect("migrate");
    let settings = BrokerSettings {
        amqp_url: None,
        prefix: "t".to_owned(),
        lanes: LANES,
        prefetch: 8,
    };
    Env {
        broker: EmbeddedBroker::new(&settings, db.clone()),
        db,
        settings,
        _dir: dir,
    }
}

fn job(event: &str, lane_key: &str, id: &str) -> OutboundJob {
    OutboundJob {
        event: event.to_owned(),
        lane_key: lane_key.to_owned(),
        message_id: id.to_owned(),
        body: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
    }
}

async fn lane_of(b: &EmbeddedBroker, worker: Queue, lane_key: &str) -> LaneConsumer {
    let lane = lane_for(lane_key, LANES);
    b.consume(worker)
        .await
        .expect("consume")
        .into_iter()
        .find(|c| c.lane() == lane)
        .expect("lane")
}

async fn recv(c: &mut LaneConsumer, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, c.next()).await {
        Err(_) => None,
        Ok(None) => panic!("lane closed"),
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("consume: {e}"),
    }
}

fn depth(depths: &[(String, u64, bool)], queue: &str) -> u64 {
    depths
        .iter()
        .find(|(q, _, _)| q == queue)
        .map(|d| d.1)
        .unwrap_or_else(|| panic!("no queue {queue} in {depths:?}"))
}

#[tokio::test]
async fn publish_consume_ack_roundtrip() {
    let e = env().await;
    let b = &e.broker;
    b.declare().await.expect("declare");
    b.declare().await.expect("declare twice");
    assert_eq!(b.mode(), "embedded");
    b.ping().await.expect("ping");

    b.publish(job("webhook.received", "cfg:alice", "m1"))
        .await
        .expect("publish");
    let lane = lane_for("cfg:alice", LANES);
    let depths = b.queue_depths().await.expect("depths");
    assert_eq!(depth(&depths, &format!("t.parse.{lane}")), 1);
    assert_eq!(depths.len(), 5 * (LANES as usize + 2));

    let mut c = lane_of(b, Queue::Parse, "cfg:alice").await;
    let d = recv(&mut c, Duration::from_secs(1))
        .await
        .expect("delivery");
    assert_eq!(d.worker, "parse");
    assert_eq!(d.event, "webhook.received");
    assert_eq!(d.lane_key, "cfg:alice");
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.body, br#"{"id":"m1"}"#);
    assert_eq!(d.attempt, 1);
    assert_eq!(d.lane, lane);
    assert!(!d.redelivered);
    d.ack().await.expect("ack");
    assert!(recv(&mut c, Duration::from_millis(200)).await.is_none());
    let depths = b.queue_depths().await.expect("depths");
    assert_eq!(depth(&depths, &format!("t.parse.{lane}")), 0);
}

#[tokio::test]
async fn unknown_event_is_a_permanent_error() {
    let e = env().await;
    let err = e.broker.publish(job("nope", "k", "m")).await.unwrap_err();
    assert!(matches!(err, BrokerError::UnknownEvent(_)));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn lane_order_is_kept() {
    let e = env().await;
    let b = &e.broker;
    for i in 0..100 {
        b.publish(job("status.receipt", "cfg:bob", &format!("m{i}")))
            .await
            .expect("publish");
    }
    let mut c = lane_of(b, Queue::Status, "cfg:bob").await;
    for i in 0..100 {
        let d = recv(&mut c, Duration::from_secs(1))
            .await
            .expect("delivery");
        assert_eq!(d.message_id, format!("m{i}"));
        d.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn one_active_consumer_per_lane() {
    let e = env().await;
    let b = &e.broker;
    b.publish(job("webhook.received", "cfg:x", "m1"))
        .await
        .expect("publish");
    let mut first = lane_of(b, Queue::Parse, "cfg:x").await;
    let d = recv(&mut first, Duration::from_secs(1))
        .await
        .expect("first");
    d.ack().await.expect("ack");
    // A second consumer of the same lane waits while the first lives.
    let mut second = lane_of(b, Queue::Parse, "cfg:x").await;
    b.publish(job("webhook.received", "cfg:x", "m2"))
        .await
        .expect("publish");
    assert!(
        recv(&mut second, Duration::from_millis(200))
            .await
            .is_none()
    );
    drop(first);
    let d = recv(&mut second, Duration::from_secs(1))
        .await
        .expect("second");
    assert_eq!(d.message_id, "m2");
    d.ack().await.expect("ack");
}

#[tokio::test]
async fn unsettled_delivery_goes_back_to_the_head_of_its_lane() {
    let e = env().await;
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
async fn retry_is_redelivered_after_the_delay_with_attempt_plus_one() {
    let e = env().await;
    let b = &e.broker;
    b.publish(job("message.inbound", "cfg:carol", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(b, Queue::Scenario, "cfg:carol").await;
    let d = recv(&mut c, Duration::from_secs(1)).await.expect("first");
    let delay = Duration::from_millis(150);
    let retried_at = Instant::now();
    d.retry(delay, "db busy").await.expect("retry");
    let depths = b.queue_depths().await.expect("depths");
    assert_eq!(depth(&depths, "t.scenario.delay"), 1);
    // The lane is free while the job waits: a later job goes first.
    b.publish(job("message.inbound", "cfg:carol", "m2"))
        .await
        .expect("publish");
    let d = recv(&mut c, Duration::from_secs(1)).await.expect("m2");
    assert_eq!(d.message_id, "m2");
    assert!(retried_at.elapsed() < delay);
    d.ack().await.expect("ack");

    let d = recv(&mut c, Duration::from_secs(2)).await.expect("retried");
    let waited = retried_at.elapsed();
    assert!(waited >= delay, "redelivered after {waited:?}");
    assert!(
        waited < Duration::from_secs(1),
        "redelivered after {waited:?}"
    );
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.attempt, 2);
    assert_eq!(d.lane_key, "cfg:carol");
    d.ack().await.expect("ack");
    let depths = b.queue_depths().await.expect("depths");
    assert_eq!(depth(&depths, "t.scenario.delay"), 0);
}

#[tokio::test]
async fn dead_letters_list_redrive_purge() {
    let e = env().await;
    let b = &e.broker;
    b.publish(job("followup.due", "cfg:dan", "m1"))
        .await
        .expect("publish");
    let mut c = lane_of(b, Queue::Followup, "cfg:dan").await;
    let mut d = recv(&mut c, Duration::from_secs(1))
        .await
        .expect("delivery");
    // As if it failed three times.
    d.attempt = 3;
    d.dead_letter("template missing")
        .await
        .expect("dead letter");

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
    let depths = b.queue_depths().await.expect("depths");
    assert!(
        depths
            .iter()
            .any(|(q, n, dlq)| *dlq && q == "t.followup.dlq" && *n == 1)
    );

    assert_eq!(b.dlq_redrive(Queue::Followup).await.expect("redrive"), 1);
    assert!(
        b.dlq_list(Queue::Followup, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let d = recv(&mut c, Duration::from_secs(1))
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
}

#[tokio::test]
async fn redrive_requested_by_another_process_is_picked_up() {
    let e = env().await;
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
    let e = env().await;
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

#[tokio::test]
async fn realtime_reaches_subscribers() {
    let e = env().await;
    let mut a = e.broker.subscribe_realtime().await.expect("subscribe");
    let mut b = e.broker.subscribe_realtime().await.expect("subscribe");
    e.broker
        .publish_realtime(b"hello".to_vec())
        .await
        .expect("publish");
    assert_eq!(a.recv().await.expect("recv"), b"hello");
    assert_eq!(b.recv().await.expect("recv"), b"hello");
}
