//! The RabbitMQ broker (lapin 4): topology, confirmed publishing, lane
//! consumers, retry delay queues and dead-letter queues, and the
//! reconnection policy.
//!
//! Topology (`P` = prefix, `W` = worker, `N` = lane):
//! - `P.jobs` (topic): jobs, routing key `{event}.{N}`;
//! - `P.W.N` (quorum, `x-single-active-consumer`): lane queues, bound to
//!   `{event}.{N}`. A job redelivered [`LANE_DELIVERY_LIMIT`] times (a
//!   worker crashing on it again and again) is dead-lettered by RabbitMQ
//!   to `P.W.dlq` rather than looping forever;
//! - `P.delay` (headers) and `P.W.delay.{ms}` (classic): retry delays. A
//!   retried job is published there with a per-message `expiration`; on
//!   expiry RabbitMQ dead-letters it back to `P.jobs` with its original
//!   routing key (no `x-dead-letter-routing-key`), so it returns to its
//!   lane. Per-message TTL only expires at the head of a queue, so delays
//!   are bucketed by powers of two (256 ms … 524 s): inside one bucket a
//!   job waits at most twice its delay;
//! - `P.W.dlq` (quorum): dead letters, with headers `x-wapipe-error`,
//!   `x-wapipe-attempts`, `x-wapipe-event`, `x-wapipe-lane-key`;
//! - `P.realtime` (fanout): real-time updates.
//!
//! Connections: one for publishing (with a confirm channel), one for
//! consuming (a channel per lane), so that RabbitMQ's flow control on
//! publishers never stalls consumers' acks. lapin's auto-recover handles
//! short outages; on top of it, a connection or channel found closed is
//! replaced lazily on the next call, and a connection still recovering
//! after `max_recovery` is retired. While the broker is unreachable calls
//! fail fast with a transient [`BrokerError`]; confirms have a timeout.
//!
//! A delivery received before a reconnect cannot be acked afterwards
//! (lapin poisons its acker): RabbitMQ delivers it again, and the workers
//! are idempotent (DESIGN invariant 3).

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::ExponentialBuilder;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};

use super::{
    Broker, BrokerError, BrokerSettings, DeadLetter, Delivery, LaneConsumer, LaneSource,
    METRIC_PUBLISH_CONFIRM_SECONDS, METRIC_PUBLISH_TOTAL, OutboundJob, Parts, RealtimeSubscription,
    Settle, lane_for, resubscribe_delay,
};
use crate::jobs::Queue;

/// Redeliveries of one job after which RabbitMQ dead-letters it: a job that
/// kills its worker every time must not block its lane forever. High, as
/// every connection loss also returns the prefetched deliveries.
pub const LANE_DELIVERY_LIMIT: i64 = 50;

/// Upper bounds of the retry delay buckets, in ms; a delay goes to the
/// first bucket at least as long, or to the last.
pub const DELAY_BUCKETS_MS: [u64; 12] = [
    256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536, 131_072, 262_144, 524_288,
];

/// Longest `x-wapipe-error` kept, in bytes: headers share the frame with
/// the rest of the message properties.
const MAX_ERROR_BYTES: usize = 2_000;

/// How often an idle lane consumer checks its connection.
const HEALTH_CHECK: Duration = Duration::from_millis(500);

/// After a failed connect, calls fail at once for this long instead of
/// each trying (and waiting) again.
const RECONNECT_COOLDOWN: Duration = Duration::from_millis(250);

const H_EVENT: &str = "x-wapipe-event";
const H_LANE_KEY: &str = "x-wapipe-lane-key";
const H_ATTEMPT: &str = "x-wapipe-attempt";
const H_WORKER: &str = "x-wapipe-worker";
// Headers the `P.delay` headers exchange routes on. Not `x-` prefixed:
// RabbitMQ's headers exchange ignores `x-` headers when matching, and would
// then copy a retry into every delay queue.
const H_ROUTE_WORKER: &str = "wapipe-worker";
const H_ROUTE_BUCKET: &str = "wapipe-delay-bucket";
const H_LAST_ERROR: &str = "x-wapipe-last-error";
const H_ERROR: &str = "x-wapipe-error";
const H_ATTEMPTS: &str = "x-wapipe-attempts";

/// Time limits of the AMQP broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmqpTimeouts {
    /// Opening a connection, TCP and AMQP handshake included.
    pub connect: Duration,
    /// From publish to the broker's confirm.
    pub confirm: Duration,
    /// Any other request (declare, consume, get, …).
    pub operation: Duration,
    /// How long lapin's auto-recovery may keep a connection in
    /// "reconnecting" before the connection is replaced by a new one.
    pub max_recovery: Duration,
}

impl Default for AmqpTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            confirm: Duration::from_secs(10),
            operation: Duration::from_secs(10),
            // lapin recovers within about 2 s when it can (see
            // `properties`); when its reconnect is refused it stays
            // "reconnecting" for good, so do not wait much longer.
            max_recovery: Duration::from_secs(5),
        }
    }
}

/// Whether the same call may succeed later, for [`BrokerError::is_transient`].
pub(crate) fn is_transient(e: &lapin::Error) -> bool {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => !matches!(
                soft,
                AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::NOTFOUND
                    | AMQPSoftError::PRECONDITIONFAILED
                    | AMQPSoftError::CONTENTTOOLARGE
            ),
            AMQPErrorKind::Hard(hard) => matches!(
                hard,
                AMQPHardError::CONNECTIONFORCED
                    | AMQPHardError::RESOURCEERROR
                    | AMQPHardError::INTERNALERROR
            ),
        },
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::RuntimeShutdownError(_) => true,
        _ => false,
    }
}

/// The RabbitMQ broker. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct AmqpBroker {
    core: Arc<Core>,
}

struct Core {
    settings: BrokerSettings,
    url: String,
    timeouts: AmqpTimeouts,
    publish: Slot,
    consume: Slot,
}

impl AmqpBroker {
    /// A broker for `settings.amqp_url`. Connects lazily, on first use.
    pub fn new(settings: &BrokerSettings) -> Result<Self, BrokerError> {
        Self::with_timeouts(settings, AmqpTimeouts::default())
    }

    pub fn with_timeouts(
        settings: &BrokerSettings,
        timeouts: AmqpTimeouts,
    ) -> Result<Self, BrokerError> {
        let url = settings
            .amqp_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| BrokerError::Config("AMQP_URL is not set".into()))?;
        // Fail on a malformed URL now rather than on every reconnect. The
        // error text never includes the URL, which may hold a password.
        lapin::uri::AMQPUri::from_str(url)
            .map_err(|e| BrokerError::Config(format!("invalid AMQP_URL: {e}")))?;
        Ok(Self {
            core: Arc::new(Core {
                settings: settings.clone(),
                url: url.to_owned(),
                timeouts,
                publish: Slot::new("publish", true),
                consume: Slot::new("consume", false),
            }),
        })
    }

    /// Deletes every exchange and queue of the topology, with their
    /// messages. For tests and decommissioning.
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let core = &self.core;
        let ch = core.admin_channel().await?;
        let s = &core.settings;
        for worker in Queue::ALL.map(Queue::name) {
            let mut queues: Vec<String> = (0..s.lane_count())
                .map(|n| s.lane_queue(worker, n))
                .collect();
            queues.push(s.dlq_queue(worker));
            queues.extend(
                DELAY_BUCKETS_MS
                    .iter()
                    .map(|ms| core.delay_queue(worker, *ms)),
            );
            for q in queues {
                core.op(ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()))
                    .await?;
            }
        }
        for ex in [
            core.jobs_exchange(),
            core.delay_exchange(),
            core.realtime_exchange(),
        ] {
            core.op(ch.exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default()))
                .await?;
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(())
    }

    /// Closes both connections (tests; a graceful shutdown). Later calls
    /// reconnect.
    pub async fn close(&self) {
        for slot in [&self.core.publish, &self.core.consume] {
            if let Some(live) = slot.take() {
                let _ = tokio::time::timeout(
                    self.core.timeouts.operation,
                    live.conn.close(200, "OK".into()),
                )
                .await;
            }
        }
    }
}

impl Core {
    fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.settings.prefix)
    }

    fn delay_exchange(&self) -> String {
        format!("{}.delay", self.settings.prefix)
    }

    fn realtime_exchange(&self) -> String {
        format!("{}.realtime", self.settings.prefix)
    }

    fn delay_queue(&self, worker: &str, bucket_ms: u64) -> String {
        format!("{}.{worker}.delay.{bucket_ms}", self.settings.prefix)
    }

    /// Runs an AMQP request with the operation timeout.
    async fn op<T>(&self, fut: impl Future<Output = lapin::Result<T>>) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.timeouts.operation, fut).await {
            Ok(res) => Ok(res?),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "no answer from RabbitMQ within {:?}",
                self.timeouts.operation
            ))),
        }
    }

    /// A short-lived channel on the publishing connection, for topology and
    /// DLQ management. Kept apart from the publish channel because a
    /// failed passive declare closes its channel.
    /// A consumer of a server-named, exclusive, auto-deleted queue bound
    /// to `P.realtime`: every subscriber gets every body, and the queue
    /// goes away with its connection. No acks: real-time is best effort.
    async fn realtime_consumer(
        &self,
    ) -> Result<(Arc<Connection>, Channel, lapin::Consumer), BrokerError> {
        let live = self.consume.get(self).await?;
        let channel = self.op(live.conn.create_channel()).await?;
        let queue = self
            .op(channel.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ))
            .await?;
        self.op(channel.queue_bind(
            queue.name().clone(),
            self.realtime_exchange().as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        let consumer = self
            .op(channel.basic_consume(
                queue.name().clone(),
                format!("wapipe-realtime-{}", uuid::Uuid::now_v7().simple()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ))
            .await?;
        Ok((live.conn, channel, consumer))
    }

    async fn admin_channel(&self) -> Result<Channel, BrokerError> {
        let live = self.publish.get(self).await?;
        self.op(live.conn.create_channel()).await
    }

    /// Publishes and waits for the confirm. Callable concurrently: confirms
    /// are pipelined on the one publish channel.
    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let res = self
            .publish_inner(exchange, routing_key, mandatory, body, properties)
            .await;
        let result = match &res {
            Ok(()) => "ok",
            Err(BrokerError::ConfirmTimeout(_)) => "timeout",
            Err(BrokerError::Nacked) => "nack",
            Err(BrokerError::Unroutable(_)) => "unroutable",
            Err(_) => "error",
        };
        metrics::counter!(METRIC_PUBLISH_TOTAL, "result" => result).increment(1);
        res
    }

    async fn publish_inner(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let routing = short(routing_key, "routing key")?;
        let live = self.publish.get(self).await?;
        let Some(channel) = live.channel else {
            return Err(BrokerError::Unavailable("no publish channel".into()));
        };
        let started = Instant::now();
        let confirmed = tokio::time::timeout(self.timeouts.confirm, async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing,
                    BasicPublishOptions {
                        mandatory,
                        immediate: false,
                    },
                    body,
                    properties,
                )
                .await?
                .await
        })
        .await;
        let confirmation = match confirmed {
            Err(_) => return Err(BrokerError::ConfirmTimeout(self.timeouts.confirm)),
            Ok(res) => res?,
        };
        metrics::histogram!(METRIC_PUBLISH_CONFIRM_SECONDS).record(started.elapsed().as_secs_f64());
        if confirmation.is_nack() {
            return Err(BrokerError::Nacked);
        }
        if confirmation.take_message().is_some() {
            return Err(BrokerError::Unroutable(routing_key.to_owned()));
        }
        Ok(())
    }

    async fn publish_job(&self, job: &OutboundJob) -> Result<(), BrokerError> {
        if Queue::for_event(&job.event).is_none() {
            metrics::counter!(METRIC_PUBLISH_TOTAL, "result" => "error").increment(1);
            return Err(BrokerError::UnknownEvent(job.event.clone()));
        }
        let lane = lane_for(&job.lane_key, self.settings.lane_count());
        let mut headers = FieldTable::default();
        job_headers(&mut headers, &job.event, &job.lane_key, 1);
        let props = persistent(&job.message_id, headers)?;
        self.publish_raw(
            &self.jobs_exchange(),
            &format!("{}.{lane}", job.event),
            true,
            &job.body,
            props,
        )
        .await
    }

    async fn declare_worker(&self, worker: &str, event: &str) -> Result<(), BrokerError> {
        let s = &self.settings;
        let ch = self.admin_channel().await?;
        let durable = QueueDeclareOptions::durable();
        let dlq = s.dlq_queue(worker);

        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_str("quorum"));
        // RabbitMQ 4 defaults quorum queues to 20 deliveries and would then
        // drop dead letters that `dlq list` looked at (a look returns them
        // to the queue): set a limit that is never reached.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(1_000_000_000),
        );
        self.op(ch.queue_declare(dlq.as_str().into(), durable, args))
            .await?;

        for lane in 0..s.lane_count() {
            let queue = s.lane_queue(worker, lane);
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), long_str("quorum"));
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(LANE_DELIVERY_LIMIT),
            );
            args.insert("x-dead-letter-exchange".into(), long_str(""));
            args.insert("x-dead-letter-routing-key".into(), long_str(&dlq));
            self.op(ch.queue_declare(queue.as_str().into(), durable, args))
                .await?;
            self.op(ch.queue_bind(
                queue.as_str().into(),
                self.jobs_exchange().into(),
                format!("{event}.{lane}").into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await?;
        }

        for bucket in DELAY_BUCKETS_MS {
            let queue = self.delay_queue(worker, bucket);
            let mut args = FieldTable::default();
            // No x-dead-letter-routing-key: expired jobs keep their own
            // `{event}.{lane}` routing key and so return to their lane.
            args.insert(
                "x-dead-letter-exchange".into(),
                long_str(&self.jobs_exchange()),
            );
            self.op(ch.queue_declare(queue.as_str().into(), durable, args))
                .await?;
            let mut bind = FieldTable::default();
            bind.insert("x-match".into(), long_str("all"));
            bind.insert(H_ROUTE_WORKER.into(), long_str(worker));
            bind.insert(H_ROUTE_BUCKET.into(), long_str(&bucket.to_string()));
            self.op(ch.queue_bind(
                queue.as_str().into(),
                self.delay_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                bind,
            ))
            .await?;
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(())
    }

    /// Ready messages of a queue, by passive declare.
    async fn ready(&self, ch: &Channel, queue: &str) -> Result<u64, BrokerError> {
        let q = self
            .op(ch.queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            ))
            .await?;
        Ok(u64::from(q.message_count()))
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare(&self) -> Result<(), BrokerError> {
        let core = &self.core;
        let ch = core.admin_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (core.jobs_exchange(), ExchangeKind::Topic),
            (core.delay_exchange(), ExchangeKind::Headers),
            (core.realtime_exchange(), ExchangeKind::Fanout),
        ] {
            core.op(ch.exchange_declare(
                name.as_str().into(),
                kind,
                durable,
                FieldTable::default(),
            ))
            .await?;
        }
        let _ = ch.close(200, "OK".into()).await;
        // One channel per worker, declared concurrently: quorum queues take
        // a few ms each to create.
        let results = futures::future::join_all(
            Queue::ALL
                .iter()
                .map(|q| core.declare_worker(q.name(), q.event())),
        )
        .await;
        results.into_iter().collect()
    }

    async fn publish(&self, job: OutboundJob) -> Result<(), BrokerError> {
        self.core.publish_job(&job).await
    }

    async fn publish_realtime(&self, body: Vec<u8>) -> Result<(), BrokerError> {
        // Transient: a real-time update is worthless once stale.
        let props = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/json".into());
        self.core
            .publish_raw(&self.core.realtime_exchange(), "", false, &body, props)
            .await
    }

    async fn subscribe_realtime(&self) -> Result<RealtimeSubscription, BrokerError> {
        let (tx, sub) = RealtimeSubscription::channel();
        let core = self.core.clone();
        // The first binding is made before returning, so nothing published
        // after this call is missed; later ones after each reconnect.
        let first = core.realtime_consumer().await?;
        tokio::spawn(async move {
            let mut current = Some(first);
            let mut failures = 0u32;
            loop {
                let (conn, channel, mut consumer) = match current.take() {
                    Some(c) => c,
                    None => {
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(resubscribe_delay(failures)) => {}
                        }
                        match core.realtime_consumer().await {
                            Ok(c) => {
                                failures = 0;
                                c
                            }
                            Err(e) => {
                                failures = failures.saturating_add(1);
                                tracing::debug!(error = %e, "real-time resubscribe failed");
                                continue;
                            }
                        }
                    }
                };
                loop {
                    let next = tokio::select! {
                        () = tx.closed() => {
                            let _ = channel.close(200, "OK".into()).await;
                            return;
                        }
                        () = until_unhealthy(&conn, &channel) => None,
                        next = consumer.next() => next,
                    };
                    match next {
                        // A full subscriber misses this body (best effort).
                        Some(Ok(d)) => {
                            let _ = tx.try_send(d.data);
                        }
                        Some(Err(_)) | None => {
                            failures = failures.saturating_add(1);
                            break;
                        }
                    }
                }
            }
        });
        Ok(sub)
    }

    async fn consume(&self, queue: Queue) -> Result<Vec<LaneConsumer>, BrokerError> {
        let worker = queue.name();
        let s = &self.core.settings;
        Ok((0..s.lane_count())
            .map(|lane| {
                LaneConsumer::new(
                    worker,
                    lane,
                    Box::new(AmqpLane {
                        core: self.core.clone(),
                        worker,
                        lane,
                        queue: s.lane_queue(worker, lane),
                        sub: None,
                        failures: 0,
                    }),
                )
            })
            .collect())
    }

    async fn dlq_list(&self, queue: Queue, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let worker = queue.name();
        let core = &self.core;
        let ch = core.admin_channel().await?;
        let queue = core.settings.dlq_queue(worker);
        let mut out = Vec::new();
        while out.len() < limit {
            let got = core
                .op(ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }))
                .await?;
            let Some(msg) = got else { break };
            out.push(dead_letter_of(worker, &msg.delivery));
        }
        // Closing the channel without acking gives every message back.
        let _ = core.op(ch.close(200, "OK".into())).await;
        Ok(out)
    }

    async fn dlq_redrive(&self, target: Queue) -> Result<u64, BrokerError> {
        let worker = target.name();
        let core = &self.core;
        let ch = core.admin_channel().await?;
        let queue = core.settings.dlq_queue(worker);
        // Bounded by the depth at the start, so a job that fails again at
        // once and comes back cannot keep this loop going.
        let depth = core.ready(&ch, &queue).await?;
        let mut moved = 0;
        for _ in 0..depth {
            let got = core
                .op(ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }))
                .await?;
            let Some(msg) = got else { break };
            let d = &msg.delivery;
            let dead = dead_letter_of(worker, d);
            if Queue::for_event(&dead.event) != Some(target) {
                tracing::warn!(worker, message_id = %dead.message_id, event = %dead.event,
                    "dead letter without a routable event left in the DLQ");
                continue; // stays unacked: back in the DLQ when the channel closes
            }
            let job = OutboundJob {
                event: dead.event,
                lane_key: dead.lane_key,
                message_id: dead.message_id,
                body: dead.body,
            };
            if let Err(e) = core.publish_job(&job).await {
                let _ = ch.close(200, "OK".into()).await;
                return Err(e);
            }
            core.op(d.acker.ack(BasicAckOptions::default())).await?;
            moved += 1;
        }
        let _ = core.op(ch.close(200, "OK".into())).await;
        Ok(moved)
    }

    async fn dlq_purge(&self, queue: Queue) -> Result<u64, BrokerError> {
        let worker = queue.name();
        let core = &self.core;
        let ch = core.admin_channel().await?;
        let n = core
            .op(ch.queue_purge(
                core.settings.dlq_queue(worker).as_str().into(),
                QueuePurgeOptions::default(),
            ))
            .await?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(u64::from(n))
    }

    async fn queue_depths(&self) -> Result<Vec<(String, u64, bool)>, BrokerError> {
        let core = &self.core;
        let s = &core.settings;
        let mut queues = Vec::new();
        for worker in Queue::ALL.map(Queue::name) {
            queues.extend((0..s.lane_count()).map(|n| (s.lane_queue(worker, n), false)));
            queues.extend(
                DELAY_BUCKETS_MS
                    .iter()
                    .map(|ms| (core.delay_queue(worker, *ms), false)),
            );
            queues.push((s.dlq_queue(worker), true));
        }
        let mut out = Vec::with_capacity(queues.len());
        let mut ch = core.admin_channel().await?;
        for (queue, is_dlq) in queues {
            match core.ready(&ch, &queue).await {
                Ok(n) => out.push((queue, n, is_dlq)),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    // Not declared (yet): RabbitMQ closed the channel.
                    tracing::debug!(queue, error = %e, "queue depth unavailable");
                    ch = core.admin_channel().await?;
                }
            }
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(out)
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.core.publish.get(&self.core).await.map(|_| ())
    }

    fn mode(&self) -> &'static str {
        "amqp"
    }

    fn lanes(&self) -> u16 {
        self.core.settings.lane_count()
    }
}

// ---------------------------------------------------------------------------
// Connections

/// One lazily (re)opened connection, with its confirm channel for the
/// publishing one.
struct Slot {
    role: &'static str,
    with_channel: bool,
    live: RwLock<Option<Live>>,
    gate: tokio::sync::Mutex<Gate>,
}

#[derive(Clone)]
struct Live {
    conn: Arc<Connection>,
    channel: Option<Channel>,
}

#[derive(Default)]
struct Gate {
    last_failure: Option<Instant>,
    recovering_since: Option<Instant>,
}

impl Live {
    fn healthy(&self) -> bool {
        self.conn.status().connected()
            && self.channel.as_ref().is_none_or(|c| c.status().connected())
    }
}

impl Slot {
    fn new(role: &'static str, with_channel: bool) -> Self {
        Self {
            role,
            with_channel,
            live: RwLock::new(None),
            gate: tokio::sync::Mutex::new(Gate::default()),
        }
    }

    fn current(&self) -> Option<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, live: Option<Live>) -> Option<Live> {
        std::mem::replace(
            &mut *self.live.write().unwrap_or_else(|e| e.into_inner()),
            live,
        )
    }

    fn take(&self) -> Option<Live> {
        self.set(None)
    }

    fn is_current(&self, conn: &Arc<Connection>) -> bool {
        self.current().is_some_and(|l| Arc::ptr_eq(&l.conn, conn))
    }

    /// Drops `conn` if it is still the current connection, so the next call
    /// opens a new one.
    fn invalidate(&self, conn: &Arc<Connection>) {
        let mut guard = self.live.write().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|l| Arc::ptr_eq(&l.conn, conn))
            && let Some(old) = guard.take()
        {
            retire(old.conn);
        }
    }

    /// A usable connection (and channel), opening one if needed. Fails fast
    /// while lapin is recovering the current one or RabbitMQ refuses.
    async fn get(&self, core: &Core) -> Result<Live, BrokerError> {
        if let Some(live) = self.current().filter(Live::healthy) {
            return Ok(live);
        }
        let mut gate = self.gate.lock().await;
        let now = Instant::now();
        let current = self.current();
        if let Some(live) = current.clone().filter(Live::healthy) {
            gate.recovering_since = None;
            return Ok(live);
        }
        if let Some(live) = &current {
            let conn_status = live.conn.status();
            if conn_status.connected() {
                let channel_recovering = live
                    .channel
                    .as_ref()
                    .is_some_and(|c| c.status().reconnecting() || c.status().initializing());
                let since = *gate.recovering_since.get_or_insert(now);
                if channel_recovering && now.duration_since(since) < core.timeouts.max_recovery {
                    return Err(BrokerError::Unavailable(format!(
                        "{} channel is recovering",
                        self.role
                    )));
                }
                // The connection is fine; only the channel died (e.g. closed
                // by RabbitMQ on an error): a new channel is enough.
                match core.op(open_channel(&live.conn, self.with_channel)).await {
                    Ok(channel) => {
                        let live = Live {
                            conn: live.conn.clone(),
                            channel,
                        };
                        self.set(Some(live.clone()));
                        gate.recovering_since = None;
                        return Ok(live);
                    }
                    Err(e) => {
                        tracing::warn!(role = self.role, error = %e, "cannot reopen channel; reconnecting");
                    }
                }
            } else if conn_status.reconnecting() || conn_status.connecting() {
                let since = *gate.recovering_since.get_or_insert(now);
                if now.duration_since(since) < core.timeouts.max_recovery {
                    return Err(BrokerError::Unavailable(format!(
                        "{} connection is recovering",
                        self.role
                    )));
                }
                tracing::warn!(
                    role = self.role,
                    "RabbitMQ connection still recovering after {:?}; opening a new one",
                    core.timeouts.max_recovery
                );
                // Given up on: lanes still waiting on it resubscribe, and
                // should lapin revive it later, `retire` closes it.
                if let Some(old) = self.take() {
                    retire(old.conn);
                }
            }
        }
        if let Some(t) = gate.last_failure
            && now.duration_since(t) < RECONNECT_COOLDOWN
        {
            return Err(BrokerError::Unavailable(format!(
                "cannot connect to RabbitMQ ({} connection); retrying shortly",
                self.role
            )));
        }
        let opened = tokio::time::timeout(core.timeouts.connect, async {
            let props = properties(&core.settings.prefix, self.role);
            let conn = Connection::connect(&core.url, props).await?;
            let channel = open_channel(&conn, self.with_channel).await?;
            Ok::<_, lapin::Error>(Live {
                conn: Arc::new(conn),
                channel,
            })
        })
        .await;
        match opened {
            Ok(Ok(live)) => {
                if let Some(old) = self.set(Some(live.clone())) {
                    retire(old.conn);
                }
                *gate = Gate::default();
                tracing::info!(role = self.role, "connected to RabbitMQ");
                Ok(live)
            }
            Ok(Err(e)) => {
                gate.last_failure = Some(Instant::now());
                Err(BrokerError::Unavailable(format!(
                    "cannot connect to RabbitMQ ({} connection): {e}",
                    self.role
                )))
            }
            Err(_) => {
                gate.last_failure = Some(Instant::now());
                Err(BrokerError::Unavailable(format!(
                    "cannot connect to RabbitMQ ({} connection) within {:?}",
                    self.role, core.timeouts.connect
                )))
            }
        }
    }
}

fn properties(prefix: &str, role: &str) -> ConnectionProperties {
    // lapin uses this backoff both for TCP connects (first connection
    // included) and between recovery attempts. Kept short: a longer outage
    // is handled by replacing the connection, and a first connect to a
    // stopped broker must fail fast.
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(2)
        .with_jitter();
    ConnectionProperties::default()
        // Shown by `rabbitmqctl list_connections` and the management UI.
        .with_connection_name(format!("{prefix} {role} pid {}", std::process::id()).into())
        .with_backoff(backoff)
        .enable_auto_recover()
}

async fn open_channel(conn: &Connection, confirm: bool) -> lapin::Result<Option<Channel>> {
    if !confirm {
        return Ok(None);
    }
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(Some(ch))
}

/// Watches a replaced connection: should lapin's recovery bring it back
/// later, its replayed consumers would compete with the new ones for the
/// single active consumer slot, so close it as soon as it is connected.
fn retire(conn: Arc<Connection>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            let status = conn.status();
            if status.connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    conn.close(200, "replaced".into()),
                )
                .await;
                return;
            }
            if status.closed() || status.errored() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

// ---------------------------------------------------------------------------
// Consuming

struct AmqpLane {
    core: Arc<Core>,
    worker: &'static str,
    lane: u16,
    queue: String,
    sub: Option<Sub>,
    /// Consecutive failed subscriptions, for the backoff.
    failures: u32,
}

struct Sub {
    conn: Arc<Connection>,
    channel: Channel,
    consumer: lapin::Consumer,
}

#[async_trait]
impl LaneSource for AmqpLane {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        loop {
            if self.sub.is_none() {
                if self.failures > 0 {
                    tokio::time::sleep(resubscribe_delay(self.failures - 1)).await;
                }
                match self.subscribe().await {
                    Ok(sub) => self.sub = Some(sub),
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        return Some(Err(e));
                    }
                }
            }
            let sub = self.sub.as_mut()?;
            // lapin does not always tell a consumer that its connection is
            // gone: when a reconnect attempt is refused, the connection
            // stays "reconnecting" and the stream just goes quiet. So watch
            // the connection while waiting.
            let next = tokio::select! {
                next = sub.consumer.next() => next,
                () = until_unhealthy(&sub.conn, &sub.channel) => {
                    tracing::warn!(queue = %self.queue, "lane consumer's connection lost");
                    if !self.await_recovery().await {
                        self.drop_sub();
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(d)) => {
                    self.failures = 0;
                    return Some(Ok(self.delivery(d)));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "lane consumer error");
                    if !self.await_recovery().await {
                        self.drop_sub();
                    }
                }
                None => {
                    // Cancelled by RabbitMQ (queue deleted, node down) or
                    // the channel closed: subscribe again.
                    tracing::info!(queue = %self.queue, "lane consumer ended; resubscribing");
                    self.drop_sub();
                }
            }
        }
    }
}

/// Resolves once the connection or channel is no longer usable.
async fn until_unhealthy(conn: &Connection, channel: &Channel) {
    loop {
        if !(conn.status().connected() && channel.status().connected()) {
            return;
        }
        tokio::time::sleep(HEALTH_CHECK).await;
    }
}

impl AmqpLane {
    async fn subscribe(&self) -> Result<Sub, BrokerError> {
        let core = &self.core;
        let live = core.consume.get(core).await?;
        let channel = core.op(live.conn.create_channel()).await?;
        core.op(channel.basic_qos(core.settings.prefetch, BasicQosOptions::default()))
            .await?;
        let tag = format!(
            "wapipe-{}-{}-{}",
            self.worker,
            self.lane,
            uuid::Uuid::now_v7().simple()
        );
        let consumer = core
            .op(channel.basic_consume(
                self.queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .await?;
        tracing::debug!(queue = %self.queue, "lane consumer subscribed");
        Ok(Sub {
            conn: live.conn,
            channel,
            consumer,
        })
    }

    /// After a consumer error: true once lapin has recovered the channel
    /// (the same consumer goes on), false if it will not.
    async fn await_recovery(&self) -> bool {
        let Some(sub) = &self.sub else { return false };
        let deadline = Instant::now() + self.core.timeouts.max_recovery;
        loop {
            let (conn, ch) = (sub.conn.status(), sub.channel.status());
            if conn.connected() && ch.connected() {
                return true;
            }
            let recovering = conn.reconnecting() || ch.reconnecting();
            if !recovering || Instant::now() >= deadline || !self.core.consume.is_current(&sub.conn)
            {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn drop_sub(&mut self) {
        if let Some(sub) = self.sub.take() {
            self.failures = self.failures.saturating_add(1);
            if !sub.conn.status().connected() || sub.channel.status().reconnecting() {
                // Dead or stuck recovering: replace the connection, and make
                // sure lapin's recovery cannot bring this consumer back
                // later, next to its replacement (the other lanes on it
                // resubscribe). A connected channel needs nothing: dropping
                // it closes it.
                self.core.consume.invalidate(&sub.conn);
            }
        }
    }

    fn delivery(&self, d: lapin::message::Delivery) -> Delivery {
        let headers = d.properties.headers().clone().unwrap_or_default();
        let event = header_str(&headers, H_EVENT)
            .or_else(|| Queue::from_name(self.worker).map(|q| q.event().to_owned()))
            .unwrap_or_default();
        let parts = Parts {
            worker: self.worker,
            lane: self.lane,
            event,
            lane_key: header_str(&headers, H_LANE_KEY).unwrap_or_default(),
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
            body: d.data,
            attempt: header_u32(&headers, H_ATTEMPT).unwrap_or(1).max(1),
        };
        Delivery::new(
            parts,
            d.redelivered,
            Box::new(AmqpSettle {
                core: self.core.clone(),
                acker: d.acker,
            }),
        )
    }
}

struct AmqpSettle {
    core: Arc<Core>,
    acker: lapin::Acker,
}

impl AmqpSettle {
    async fn ack_or_report(&self) -> Result<(), BrokerError> {
        if self
            .core
            .op(self.acker.ack(BasicAckOptions::default()))
            .await?
        {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(
                "the delivery's channel closed: it cannot be acked and will be redelivered".into(),
            ))
        }
    }

    /// After a failed republish: give the job back to its lane now rather
    /// than when the channel closes. Best effort; on failure the channel is
    /// gone and RabbitMQ requeues the job anyway.
    async fn requeue(&self) {
        let nack = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let _ = self.core.op(self.acker.nack(nack)).await;
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.ack_or_report().await
    }

    async fn retry(
        self: Box<Self>,
        parts: Parts,
        delay: Duration,
        error: &str,
        next_attempt: u32,
    ) -> Result<(), BrokerError> {
        let bucket = delay_bucket(delay);
        let mut headers = FieldTable::default();
        job_headers(&mut headers, &parts.event, &parts.lane_key, next_attempt);
        headers.insert(H_ROUTE_WORKER.into(), long_str(parts.worker));
        headers.insert(H_ROUTE_BUCKET.into(), long_str(&bucket.to_string()));
        headers.insert(
            H_LAST_ERROR.into(),
            long_str(truncate(error, MAX_ERROR_BYTES)),
        );
        let props = persistent(&parts.message_id, headers)?
            // Whole milliseconds, at least 1: RabbitMQ reads "0" as
            // "expire at once", which is fine too, but keep it explicit.
            .with_expiration(delay.as_millis().max(1).to_string().into());
        let res = self
            .core
            .publish_raw(
                &self.core.delay_exchange(),
                &format!("{}.{}", parts.event, parts.lane),
                true,
                &parts.body,
                props,
            )
            .await;
        match res {
            Ok(()) => self.ack_or_report().await,
            Err(e) => {
                self.requeue().await;
                Err(e)
            }
        }
    }

    async fn dead_letter(self: Box<Self>, parts: Parts, error: &str) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        job_headers(&mut headers, &parts.event, &parts.lane_key, parts.attempt);
        headers.insert(H_WORKER.into(), long_str(parts.worker));
        headers.insert(H_ERROR.into(), long_str(truncate(error, MAX_ERROR_BYTES)));
        headers.insert(
            H_ATTEMPTS.into(),
            AMQPValue::LongLongInt(i64::from(parts.attempt)),
        );
        let props = persistent(&parts.message_id, headers)?;
        let dlq = self.core.settings.dlq_queue(parts.worker);
        let res = self
            .core
            .publish_raw("", &dlq, true, &parts.body, props)
            .await;
        match res {
            Ok(()) => self.ack_or_report().await,
            Err(e) => {
                self.requeue().await;
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Messages

/// The delay bucket (its upper bound in ms) of a retry delay.
pub fn delay_bucket(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    DELAY_BUCKETS_MS
        .iter()
        .copied()
        .find(|b| ms <= *b)
        .unwrap_or(DELAY_BUCKETS_MS[DELAY_BUCKETS_MS.len() - 1])
}

fn short(s: &str, what: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(s)
        .map_err(|_| BrokerError::InvalidJob(format!("{what} longer than 255 bytes")))
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn job_headers(headers: &mut FieldTable, event: &str, lane_key: &str, attempt: u32) {
    headers.insert(H_EVENT.into(), long_str(event));
    headers.insert(H_LANE_KEY.into(), long_str(lane_key));
    headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
}

fn persistent(message_id: &str, headers: FieldTable) -> Result<BasicProperties, BrokerError> {
    Ok(BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(short(message_id, "message id")?)
        .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or(0))
        .with_headers(headers))
}

fn header<'a>(headers: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    headers.inner().get(key)
}

fn value_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_str(headers: &FieldTable, key: &str) -> Option<String> {
    header(headers, key).and_then(value_str)
}

fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    let n: i64 = match header(headers, key)? {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Why RabbitMQ itself dead-lettered a message (delivery limit), from the
/// most recent `x-death` entry.
fn death_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = header(headers, "x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    header_str(first, "reason")
}

fn dead_letter_of(worker: &str, d: &lapin::message::Delivery) -> DeadLetter {
    let headers = d.properties.headers().clone().unwrap_or_default();
    let message_id = d
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let last_error = header_str(&headers, H_ERROR)
        .or_else(|| death_reason(&headers).map(|r| format!("dead-lettered by RabbitMQ: {r}")));
    DeadLetter {
        id: message_id.clone(),
        worker: worker.to_owned(),
        event: header_str(&headers, H_EVENT)
            .or_else(|| Queue::from_name(worker).map(|q| q.event().to_owned()))
            .unwrap_or_default(),
        lane_key: header_str(&headers, H_LANE_KEY).unwrap_or_default(),
        message_id,
        body: d.data.clone(),
        attempts: header_u32(&headers, H_ATTEMPTS)
            .or_else(|| header_u32(&headers, H_ATTEMPT))
            .unwrap_or(0),
        last_error,
        dead_lettered_at: d
            .properties
            .timestamp()
            .and_then(|t| i64::try_from(t).ok())
            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_buckets_bound_the_wait() {
        assert_eq!(delay_bucket(Duration::ZERO), 256);
        assert_eq!(delay_bucket(Duration::from_millis(256)), 256);
        assert_eq!(delay_bucket(Duration::from_millis(257)), 512);
        assert_eq!(delay_bucket(Duration::from_secs(300)), 524_288);
        assert_eq!(delay_bucket(Duration::from_secs(100_000)), 524_288);
        for w in DELAY_BUCKETS_MS.windows(2) {
            assert_eq!(w[1], w[0] * 2);
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn headers_roundtrip() {
        let mut h = FieldTable::default();
        job_headers(&mut h, "webhook.received", "cfg:cust", 3);
        assert_eq!(header_str(&h, H_EVENT).as_deref(), Some("webhook.received"));
        assert_eq!(header_str(&h, H_LANE_KEY).as_deref(), Some("cfg:cust"));
        assert_eq!(header_u32(&h, H_ATTEMPT), Some(3));
        assert_eq!(header_u32(&h, "missing"), None);
    }

    #[test]
    fn invalid_url_is_a_config_error() {
        let settings = BrokerSettings {
            amqp_url: Some("http://nope".into()),
            ..BrokerSettings::default()
        };
        assert!(matches!(
            AmqpBroker::new(&settings),
            Err(BrokerError::Config(_))
        ));
    }
}
