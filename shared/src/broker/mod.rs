//! The broker: how jobs travel between stages. It owns the topology (which
//! worker consumes which event, the ordered lanes, retry delays and
//! dead-letter queues), the [`Broker`] interface and its two implementations:
//! RabbitMQ ([`amqp`], production) and an in-process queue ([`embedded`],
//! the default mode).
//!
//! The database is the source of truth (DESIGN §3): the broker only
//! dispatches work, and everything it carries can be rebuilt from the
//! database. Delivery is at-least-once in both modes, so workers are
//! idempotent.
//!
//! Naming, with `P` the configured prefix (default `wapipe`), `W` a worker
//! and `N` a lane number (0-based):
//! - `P.jobs`: topic exchange, routing key `{event}.{N}`;
//! - `P.W.N`: a lane queue of worker W (quorum, single active consumer);
//! - `P.W.delay.{ms}`: retry delay queues (AMQP), bucketed by delay;
//! - `P.W.dlq`: the worker's dead-letter queue (in embedded mode, rows of
//!   the `dead_letters` table with `queue = W`);
//! - `P.delay`: headers exchange in front of the delay queues;
//! - `P.realtime`: fanout exchange for real-time updates.

pub mod amqp;
pub mod embedded;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::jobs::Queue;

pub use amqp::AmqpBroker;
pub use embedded::{EmbeddedBroker, request_embedded_redrive};

/// Metric names of the broker (DESIGN §7).
pub const METRIC_PUBLISH_TOTAL: &str = "wapipe_broker_publish_total";
pub const METRIC_PUBLISH_CONFIRM_SECONDS: &str = "wapipe_broker_publish_confirm_seconds";
pub const METRIC_QUEUE_DEPTH: &str = "wapipe_queue_depth";
pub const METRIC_DEAD_LETTER_DEPTH: &str = "wapipe_queue_dead_letter_depth";

/// The lane of a job (DESIGN invariant 6). FNV-1a 64 over the key's bytes:
/// stable across processes, builds and platforms (std's hasher is seeded
/// per process, so two ingest processes would disagree on the lane).
pub fn lane_for(lane_key: &str, lanes: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = lane_key
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // lanes is at least 1; the modulo is then always below u16::MAX.
    (hash % u64::from(lanes.max(1))) as u16
}

/// Where and how the broker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// `amqp://…` selects RabbitMQ; `None` selects the embedded broker.
    pub amqp_url: Option<String>,
    /// Prefix of every queue and exchange name.
    pub prefix: String,
    /// Ordered lanes per worker. Changing it while jobs are queued strands
    /// the jobs of lanes that no longer exist: drain the queues first.
    pub lanes: u16,
    /// Unacknowledged deliveries per lane consumer (RabbitMQ `basic_qos`).
    pub prefetch: u16,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            amqp_url: None,
            prefix: "wapipe".to_owned(),
            lanes: 8,
            prefetch: 32,
        }
    }
}

impl BrokerSettings {
    pub(crate) fn lane_count(&self) -> u16 {
        self.lanes.max(1)
    }

    /// `P.W.N`
    pub fn lane_queue(&self, worker: &str, lane: u16) -> String {
        format!("{}.{worker}.{lane}", self.prefix)
    }

    /// `P.W.dlq`
    pub fn dlq_queue(&self, worker: &str) -> String {
        format!("{}.{worker}.dlq", self.prefix)
    }
}

/// A job to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundJob {
    /// The event of one [`Queue`]; it selects the queue.
    pub event: String,
    /// Jobs with the same key are processed in order, e.g. `{config}:{customer}`.
    pub lane_key: String,
    /// Dedup and trace id, kept across retries and dead-lettering. At most
    /// 255 bytes (an AMQP short string).
    pub message_id: String,
    /// JSON body.
    pub body: Vec<u8>,
}

/// A job in the dead-letter queue, as `wapipe dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id in embedded mode, the message id with AMQP.
    pub id: String,
    pub worker: String,
    pub event: String,
    pub lane_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
    /// Attempts made before the job was dead-lettered.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now (connection down, recovering, or
    /// refused). Transient: answer 503 or retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// No publisher confirm within the timeout. Transient; the message may
    /// or may not have been stored, so a retry can duplicate it.
    #[error("broker did not confirm the publish within {0:?}")]
    ConfirmTimeout(Duration),
    /// The broker refused the message (basic.nack). Transient.
    #[error("broker refused the message (nack)")]
    Nacked,
    /// No queue is bound for the routing key: the topology is missing
    /// (`declare` not run) or the lane count changed.
    #[error("no queue for routing key {0:?}: is the topology declared?")]
    Unroutable(String),
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("unknown worker {0:?}")]
    UnknownWorker(String),
    /// The job cannot be encoded (e.g. a message id over 255 bytes).
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("broker misconfigured: {0}")]
    Config(String),
}

impl BrokerError {
    /// True when the same call may succeed later without any change
    /// (connection problems); callers answer 503 or retry.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Unavailable(_) | BrokerError::ConfirmTimeout(_) | BrokerError::Nacked => {
                true
            }
            BrokerError::Amqp(e) => amqp::is_transient(e),
            // The database only fails like this when it is unreachable or
            // busy; the rows we write have no constraints to violate.
            BrokerError::Database(_) => true,
            BrokerError::Unroutable(_)
            | BrokerError::UnknownEvent(_)
            | BrokerError::UnknownWorker(_)
            | BrokerError::InvalidJob(_)
            | BrokerError::Config(_) => false,
        }
    }
}

/// A job handed to a worker. Settle it exactly once with [`ack`](Self::ack),
/// [`retry`](Self::retry) or [`dead_letter`](Self::dead_letter); the worker
/// runtime does this, never the worker itself. Dropping it unsettled gives
/// it back to its lane (AMQP: when the channel closes; embedded: at once,
/// at the head of the lane).
pub struct Delivery {
    pub worker: &'static str,
    pub lane: u16,
    pub event: String,
    pub lane_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
    /// 1 on the first delivery, incremented by each `retry`.
    pub attempt: u32,
    /// Set when the broker delivered this job before, unacknowledged (a
    /// consumer died or the connection dropped mid-job).
    pub redelivered: bool,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("worker", &self.worker)
            .field("lane", &self.lane)
            .field("event", &self.event)
            .field("lane_key", &self.lane_key)
            .field("message_id", &self.message_id)
            .field("body_len", &self.body.len())
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

/// The fields of a delivery, passed to its settle handle.
pub(crate) struct Parts {
    pub worker: &'static str,
    pub lane: u16,
    pub event: String,
    pub lane_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
    pub attempt: u32,
}

/// How each implementation acknowledges, delays or dead-letters a delivery.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Publishes the job again after `delay` with `next_attempt`.
    async fn retry(
        self: Box<Self>,
        parts: Parts,
        delay: Duration,
        error: &str,
        next_attempt: u32,
    ) -> Result<(), BrokerError>;
    async fn dead_letter(self: Box<Self>, parts: Parts, error: &str) -> Result<(), BrokerError>;
}

impl Delivery {
    pub(crate) fn new(parts: Parts, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Self {
            worker: parts.worker,
            lane: parts.lane,
            event: parts.event,
            lane_key: parts.lane_key,
            message_id: parts.message_id,
            body: parts.body,
            attempt: parts.attempt,
            redelivered,
            settle,
        }
    }

    fn split(self) -> (Parts, Box<dyn Settle>) {
        (
            Parts {
                worker: self.worker,
                lane: self.lane,
                event: self.event,
                lane_key: self.lane_key,
                message_id: self.message_id,
                body: self.body,
                attempt: self.attempt,
            },
            self.settle,
        )
    }

    /// The job is done.
    ///
    /// With AMQP, an ack fails when the connection dropped since the
    /// delivery (a delivery from before a reconnect cannot be acked); the
    /// job is then delivered again, which idempotent workers tolerate.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Deliver the job again after `delay`, with `attempt + 1`. The delay
    /// waits in the broker; the original is acknowledged only once the
    /// delayed copy is safely stored. On error the original is given back
    /// to its lane (or left to be redelivered).
    pub async fn retry(self, delay: Duration, error: &str) -> Result<(), BrokerError> {
        let (parts, settle) = self.split();
        let next = parts.attempt.saturating_add(1);
        settle.retry(parts, delay, error, next).await
    }

    /// Deliver the job again after `delay` with the same `attempt`: it was
    /// not tried, only held back (a send over Meta's rate, deferred to its
    /// slot), so it spends nothing toward the dead-letter queue. Stored
    /// like a retry, through the same delay queues.
    pub async fn defer(self, delay: Duration, reason: &str) -> Result<(), BrokerError> {
        let (parts, settle) = self.split();
        let same = parts.attempt;
        settle.retry(parts, delay, reason, same).await
    }

    /// Move the job to its worker's dead-letter queue with `error` and the
    /// attempt count, then acknowledge the original.
    pub async fn dead_letter(self, error: &str) -> Result<(), BrokerError> {
        let (parts, settle) = self.split();
        settle.dead_letter(parts, error).await
    }
}

/// Yields the deliveries of one lane of one worker, in order.
pub struct LaneConsumer {
    worker: &'static str,
    lane: u16,
    source: Box<dyn LaneSource>,
}

#[async_trait]
pub(crate) trait LaneSource: Send {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>>;
}

impl LaneConsumer {
    pub(crate) fn new(worker: &'static str, lane: u16, source: Box<dyn LaneSource>) -> Self {
        Self {
            worker,
            lane,
            source,
        }
    }

    pub fn worker(&self) -> &'static str {
        self.worker
    }

    pub fn lane(&self) -> u16 {
        self.lane
    }

    /// The next delivery of this lane. Cancel-safe: dropping the future
    /// loses nothing. An `Err` reports a failed (re)subscription; the next
    /// call tries again after a backoff, so callers just log it and go on.
    /// `None` means the lane is closed for good.
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        self.source.next().await
    }

    /// A delivery that is ready now (already prefetched), without waiting.
    /// Lets a worker take what has queued up as one batch; relies on
    /// [`next`](Self::next) being cancel-safe. Errors are left for `next`.
    pub fn try_next(&mut self) -> Option<Delivery> {
        use futures::FutureExt;
        match self.source.next().now_or_never() {
            Some(Some(Ok(d))) => Some(d),
            _ => None,
        }
    }
}

impl fmt::Debug for LaneConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneConsumer")
            .field("worker", &self.worker)
            .field("lane", &self.lane)
            .finish()
    }
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Create the exchanges and queues. Idempotent; fails if they exist
    /// with other settings.
    async fn declare(&self) -> Result<(), BrokerError>;
    /// Returns once the broker has the job: after the publisher confirm
    /// (AMQP) or the enqueue (embedded).
    async fn publish(&self, job: OutboundJob) -> Result<(), BrokerError>;
    /// Best-effort real-time fan-out (WebSocket updates).
    async fn publish_realtime(&self, body: Vec<u8>) -> Result<(), BrokerError>;
    /// What any process publishes with [`publish_realtime`](Self::publish_realtime)
    /// from now on (AMQP: a queue of this subscriber's own, bound to
    /// `P.realtime`, re-made after a reconnect). Best effort: a subscriber
    /// that falls [`REALTIME_BUFFER`] bodies behind misses the oldest.
    async fn subscribe_realtime(&self) -> Result<RealtimeSubscription, BrokerError>;
    /// One consumer per lane of `queue`, each yielding deliveries in order.
    async fn consume(&self, queue: Queue) -> Result<Vec<LaneConsumer>, BrokerError>;
    /// Up to `limit` dead letters of `queue`, oldest first, without
    /// removing them.
    async fn dlq_list(&self, queue: Queue, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;
    /// Moves the dead letters of `queue` back to its lanes with the
    /// attempt count reset to 1. Returns how many.
    async fn dlq_redrive(&self, queue: Queue) -> Result<u64, BrokerError>;
    /// Deletes the dead letters of `queue`. Returns how many.
    async fn dlq_purge(&self, queue: Queue) -> Result<u64, BrokerError>;
    /// `(queue, ready messages, is_dlq)` for every queue, for the depth
    /// gauges. Ready excludes deliveries in progress.
    async fn queue_depths(&self) -> Result<Vec<(String, u64, bool)>, BrokerError>;
    /// Readiness: Ok when the broker can take work now.
    async fn ping(&self) -> Result<(), BrokerError>;
    /// `"amqp"` or `"embedded"`.
    fn mode(&self) -> &'static str;
    /// Lanes per worker queue: jobs whose lane keys give the same
    /// [`lane_for`] travel one queue, in order.
    fn lanes(&self) -> u16;
}

/// Real-time bodies a subscriber may hold before it misses some.
pub const REALTIME_BUFFER: usize = 1024;

/// One subscriber's stream of real-time bodies. Dropping it unsubscribes.
pub struct RealtimeSubscription {
    source: RealtimeSource,
}

enum RealtimeSource {
    /// The embedded broker's in-process fan-out.
    Local(tokio::sync::broadcast::Receiver<Vec<u8>>),
    /// Fed by a task that consumes RabbitMQ; it stops when this is dropped.
    Fed(tokio::sync::mpsc::Receiver<Vec<u8>>),
}

impl RealtimeSubscription {
    /// A subscription fed through the returned sender; the feeding task
    /// stops when [`Sender::closed`](tokio::sync::mpsc::Sender::closed)
    /// resolves.
    pub(crate) fn channel() -> (tokio::sync::mpsc::Sender<Vec<u8>>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(REALTIME_BUFFER);
        (
            tx,
            Self {
                source: RealtimeSource::Fed(rx),
            },
        )
    }

    pub(crate) fn local(rx: tokio::sync::broadcast::Receiver<Vec<u8>>) -> Self {
        Self {
            source: RealtimeSource::Local(rx),
        }
    }

    /// The next body, or `None` once the broker is gone. A subscriber that
    /// fell behind skips what it missed.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        match &mut self.source {
            RealtimeSource::Fed(rx) => rx.recv().await,
            RealtimeSource::Local(rx) => loop {
                match rx.recv().await {
                    Ok(body) => return Some(body),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "real-time subscriber lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }

    /// A body that is here already, without waiting.
    pub fn try_recv(&mut self) -> Option<Vec<u8>> {
        match &mut self.source {
            RealtimeSource::Fed(rx) => rx.try_recv().ok(),
            RealtimeSource::Local(rx) => loop {
                match rx.try_recv() {
                    Ok(body) => return Some(body),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => return None,
                }
            },
        }
    }
}

impl fmt::Debug for RealtimeSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RealtimeSubscription")
            .finish_non_exhaustive()
    }
}

/// The broker `settings` ask for: RabbitMQ when `amqp_url` is set, else the
/// embedded one (which keeps its dead letters in `db`). Does not declare
/// the topology: call [`Broker::declare`]. An unreachable RabbitMQ is not
/// an error here (the broker reconnects on use); a malformed URL is.
pub async fn connect(
    settings: &BrokerSettings,
    db: sea_orm::DatabaseConnection,
) -> Result<Arc<dyn Broker>, BrokerError> {
    match settings.amqp_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => {
            let broker = AmqpBroker::new(settings)?;
            if let Err(e) = broker.ping().await {
                tracing::warn!(error = %e, "RabbitMQ not reachable yet; will reconnect on use");
            }
            Ok(Arc::new(broker))
        }
        _ => Ok(Arc::new(EmbeddedBroker::new(settings, db))),
    }
}

/// Sets the depth gauges every `interval`, forever: spawn it.
pub async fn report_depths(broker: Arc<dyn Broker>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match broker.queue_depths().await {
            Ok(depths) => {
                for (queue, ready, is_dlq) in depths {
                    let name = if is_dlq {
                        METRIC_DEAD_LETTER_DEPTH
                    } else {
                        METRIC_QUEUE_DEPTH
                    };
                    let (worker, kind) = queue_labels(&queue);
                    // Depths stay far below 2^53, where f64 is exact.
                    metrics::gauge!(name, "queue" => queue, "worker" => worker, "kind" => kind)
                        .set(ready as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read queue depths"),
        }
    }
}

/// The worker and the kind (`work`, `delay`, `dlq`) of a queue named
/// `P.W.N`, `P.W.delay[.MS]` or `P.W.dlq`, read from the right so that a
/// prefix with dots in it does not matter. Dashboards group by them.
pub fn queue_labels(queue: &str) -> (String, &'static str) {
    let parts: Vec<&str> = queue.rsplit('.').collect();
    let (worker, kind) = match parts.as_slice() {
        ["dlq", w, ..] => (*w, "dlq"),
        ["delay", w, ..] => (*w, "delay"),
        [ms, "delay", w, ..] if ms.bytes().all(|b| b.is_ascii_digit()) => (*w, "delay"),
        [_, w, ..] => (*w, "work"),
        _ => ("", "work"),
    };
    (worker.to_owned(), kind)
}

/// Backoff before re-subscribing a lane consumer after `failures`
/// consecutive failures: 100 ms doubling up to 5 s, so a broker restart is
/// noticed quickly without hammering it.
pub(crate) fn resubscribe_delay(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(6));
    Duration::from_millis(ms.min(5000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_labels_read_worker_and_kind() {
        let l = queue_labels;
        assert_eq!(l("wapipe.parse.3"), ("parse".into(), "work"));
        assert_eq!(l("my.app.outbound.0"), ("outbound".into(), "work"));
        assert_eq!(l("wapipe.status.delay.5000"), ("status".into(), "delay"));
        assert_eq!(l("wapipe.media.delay"), ("media".into(), "delay"));
        assert_eq!(l("wapipe.webhook.dlq"), ("webhook".into(), "dlq"));
        assert_eq!(l("odd"), (String::new(), "work"));
    }

    #[test]
    fn lanes_are_stable_and_spread() {
        // Pinned values: a change of hash would reorder in-flight jobs
        // across a rolling deploy, so it must be deliberate.
        // FNV-1a 64 test vectors: "" = cbf29ce484222325, "a" = af63dc4c8601ec8c.
        assert_eq!(lane_for("", 1000), (0xcbf2_9ce4_8422_2325u64 % 1000) as u16);
        assert_eq!(
            lane_for("a", 1000),
            (0xaf63_dc4c_8601_ec8cu64 % 1000) as u16
        );
        assert_eq!(lane_for("a", 1000), lane_for("a", 1000));
        assert_eq!(lane_for("anything", 1), 0);
        assert_eq!(lane_for("anything", 0), 0);
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            seen[lane_for(&format!("cfg:{i}"), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 700), "{seen:?}");
    }

    #[test]
    fn resubscribe_backoff_is_bounded() {
        assert_eq!(resubscribe_delay(0), Duration::from_millis(100));
        assert_eq!(resubscribe_delay(100), Duration::from_millis(5000));
    }
}
