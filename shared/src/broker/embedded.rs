//! The embedded broker (default mode): in-process lane queues, timers for
//! retry delays, and dead letters in the `dead_letters` table.
//!
//! Durability: the queues and pending retry timers live in memory and are
//! lost on a crash or restart, by design. The database is the only durable
//! store in embedded mode, and everything queued here can be rebuilt from
//! it: the relay re-publishes raw events still `received`, queued outbound
//! messages and due follow-ups (DESIGN §3). Dead letters are the exception
//! that cannot be rebuilt, so they are written to the database.
//!
//! Semantics mirror the AMQP broker: one active consumer per lane (a second
//! consumer of the same lane waits until the first is dropped), in-order
//! delivery per lane, and an unsettled delivery dropped by its consumer goes
//! back to the head of its lane.
//!
//! Redrive across processes: `wapipe dlq redrive` may run in another
//! process than the server. It marks rows with `redrive_requested_at`
//! ([`request_embedded_redrive`]); every process that consumes a worker
//! polls for marked rows of that worker each second, claims them with
//! `DELETE … RETURNING` (so only one process gets each row) and enqueues
//! them. A process that does not consume the worker (the CLI) never claims
//! rows, so it cannot strand them in its own memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use tokio::sync::{Notify, OwnedMutexGuard, broadcast};
use uuid::Uuid;

use super::{
    Broker, BrokerError, BrokerSettings, DeadLetter, Delivery, LaneConsumer, LaneSource,
    METRIC_PUBLISH_TOTAL, OutboundJob, Parts, RealtimeSubscription, Settle, lane_for,
};
use crate::entities::dead_letters;
use crate::jobs::Queue;

/// How often a consuming process looks for redrives requested by the CLI.
const REDRIVE_POLL: Duration = Duration::from_secs(1);

/// In-process broker; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    settings: BrokerSettings,
    /// In [`WORKER_NAMES`] order.
    workers: Vec<WorkerQueues>,
    realtime: broadcast::Sender<Vec<u8>>,
}

struct WorkerQueues {
    name: &'static str,
    lanes: Vec<Arc<Lane>>,
    /// Jobs waiting on a retry timer.
    delayed: Arc<AtomicU64>,
    /// Set once this process consumes the worker: only then does it claim
    /// dead letters to redrive.
    consumed: AtomicBool,
}

#[derive(Clone)]
struct Msg {
    event: String,
    lane_key: String,
    message_id: String,
    body: Vec<u8>,
    attempt: u32,
    redelivered: bool,
}

struct Lane {
    queue: Mutex<VecDeque<Msg>>,
    notify: Notify,
    /// Held by the lane's active consumer: a single active consumer, as
    /// `x-single-active-consumer` gives with RabbitMQ.
    active: Arc<tokio::sync::Mutex<()>>,
}

impl Lane {
    fn new() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            active: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Msg>> {
        // A panic while holding this lock cannot leave the deque half
        // updated (push/pop are atomic), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_back(&self, msg: Msg) {
        self.lock().push_back(msg);
        self.notify.notify_one();
    }

    fn push_front(&self, msg: Msg) {
        self.lock().push_front(msg);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Msg> {
        self.lock().pop_front()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl EmbeddedBroker {
    /// A new, empty broker. Dead letters go to `db`'s `dead_letters` table
    /// (the migrations must have run).
    pub fn new(settings: &BrokerSettings, db: DatabaseConnection) -> Self {
        let lanes = settings.lane_count();
        let workers = Queue::ALL
            .iter()
            .map(|q| WorkerQueues {
                name: q.name(),
                lanes: (0..lanes).map(|_| Arc::new(Lane::new())).collect(),
                delayed: Arc::new(AtomicU64::new(0)),
                consumed: AtomicBool::new(false),
            })
            .collect();
        let (realtime, _) = broadcast::channel(super::REALTIME_BUFFER);
        Self {
            inner: Arc::new(Inner {
                db,
                settings: settings.clone(),
                workers,
                realtime,
            }),
        }
    }
}

impl Inner {
    fn worker(&self, queue: Queue) -> Result<&WorkerQueues, BrokerError> {
        let name = queue.name();
        self.workers
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| BrokerError::UnknownWorker(name.to_owned()))
    }

    fn lane_of(&self, worker: &WorkerQueues, lane_key: &str) -> (u16, Arc<Lane>) {
        let n = lane_for(lane_key, self.settings.lane_count());
        // lane_for is below the lane count, which is the length of `lanes`.
        let lane = worker.lanes[usize::from(n) % worker.lanes.len()].clone();
        (n, lane)
    }

    /// Claims dead letters of `worker` (all of them, or only those a CLI
    /// asked to redrive) and enqueues them with attempt 1, oldest first.
    async fn claim_and_enqueue(
        &self,
        worker: &WorkerQueues,
        only_requested: bool,
    ) -> Result<u64, BrokerError> {
        let mut delete =
            dead_letters::Entity::delete_many().filter(dead_letters::Column::Queue.eq(worker.name));
        if only_requested {
            delete = delete.filter(dead_letters::Column::RedriveRequestedAt.is_not_null());
        }
        // DELETE … RETURNING is the claim: a row deleted by another
        // process is not returned here, so no job is enqueued twice.
        let mut rows = delete.exec_with_returning(&self.db).await?;
        rows.sort_by_key(|r| (r.created_at, r.id));
        let n = rows.len() as u64;
        for row in rows {
            let (_, lane) = self.lane_of(worker, &row.lane_key);
            lane.push_back(Msg {
                event: row.event,
                lane_key: row.lane_key,
                message_id: row.message_id,
                body: row.body,
                attempt: 1,
                redelivered: false,
            });
        }
        if n > 0 {
            tracing::info!(worker = worker.name, count = n, "redrove dead letters");
        }
        Ok(n)
    }
}

/// Asks the process that runs `worker` to redrive its dead letters (it
/// picks them up within a second). For the CLI, which does not run the
/// workers. Returns how many rows were marked.
pub async fn request_embedded_redrive(
    db: &DatabaseConnection,
    queue: Queue,
) -> Result<u64, BrokerError> {
    let worker = queue.name();
    let now = Utc::now();
    let res = dead_letters::Entity::update_many()
        .col_expr(dead_letters::Column::RedriveRequestedAt, Expr::value(now))
        .col_expr(dead_letters::Column::UpdatedAt, Expr::value(now))
        .filter(dead_letters::Column::Queue.eq(worker))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

fn spawn_redrive_poller(inner: Weak<Inner>, queue: Queue) {
    let worker = queue.name();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REDRIVE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The broker is gone: nothing to enqueue into.
            let Some(inner) = inner.upgrade() else { break };
            let Ok(queues) = inner.worker(queue) else {
                break;
            };
            if let Err(e) = inner.claim_and_enqueue(queues, true).await {
                tracing::warn!(worker, error = %e, "cannot poll for requested redrives");
            }
        }
    });
}

#[async_trait]
impl Broker for EmbeddedBroker {
    async fn declare(&self) -> Result<(), BrokerError> {
        // Queues exist from construction; the dead_letters table comes
        // from the migrations.
        Ok(())
    }

    async fn publish(&self, job: OutboundJob) -> Result<(), BrokerError> {
        // The embedded "confirm" is the enqueue itself; recording it keeps
        // one set of metric names (and dashboards) for both modes.
        let started = std::time::Instant::now();
        let Some(queue) = Queue::for_event(&job.event) else {
            metrics::counter!(METRIC_PUBLISH_TOTAL, "result" => "error").increment(1);
            return Err(BrokerError::UnknownEvent(job.event));
        };
        let queues = self.inner.worker(queue)?;
        let (_, lane) = self.inner.lane_of(queues, &job.lane_key);
        lane.push_back(Msg {
            event: job.event,
            lane_key: job.lane_key,
            message_id: job.message_id,
            body: job.body,
            attempt: 1,
            redelivered: false,
        });
        metrics::histogram!(super::METRIC_PUBLISH_CONFIRM_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(METRIC_PUBLISH_TOTAL, "result" => "ok").increment(1);
        Ok(())
    }

    async fn publish_realtime(&self, body: Vec<u8>) -> Result<(), BrokerError> {
        // No subscriber is not an error: nobody is watching.
        let _ = self.inner.realtime.send(body);
        Ok(())
    }

    async fn subscribe_realtime(&self) -> Result<RealtimeSubscription, BrokerError> {
        Ok(RealtimeSubscription::local(self.inner.realtime.subscribe()))
    }

    async fn consume(&self, queue: Queue) -> Result<Vec<LaneConsumer>, BrokerError> {
        let queues = self.inner.worker(queue)?;
        if !queues.consumed.swap(true, Ordering::SeqCst) {
            spawn_redrive_poller(Arc::downgrade(&self.inner), queue);
        }
        Ok(queues
            .lanes
            .iter()
            .enumerate()
            .map(|(n, lane)| {
                // n < lanes, which is a u16.
                let n = n as u16;
                LaneConsumer::new(
                    queues.name,
                    n,
                    Box::new(EmbeddedLane {
                        db: self.inner.db.clone(),
                        delayed: queues.delayed.clone(),
                        worker: queues.name,
                        lane_no: n,
                        lane: lane.clone(),
                        lease: None,
                    }),
                )
            })
            .collect())
    }

    async fn dlq_list(&self, queue: Queue, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let worker = queue.name();
        let rows = dead_letters::Entity::find()
            .filter(dead_letters::Column::Queue.eq(worker))
            .order_by_asc(dead_letters::Column::CreatedAt)
            .order_by_asc(dead_letters::Column::Id)
            .limit(limit as u64)
            .all(&self.inner.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetter {
                id: r.id.to_string(),
                worker: r.queue,
                event: r.event,
                lane_key: r.lane_key,
                message_id: r.message_id,
                body: r.body,
                attempts: u32::try_from(r.attempts).unwrap_or(0),
                last_error: r.last_error,
                dead_lettered_at: Some(r.created_at),
            })
            .collect())
    }

    async fn dlq_redrive(&self, queue: Queue) -> Result<u64, BrokerError> {
        let queues = self.inner.worker(queue)?;
        if queues.consumed.load(Ordering::SeqCst) {
            self.inner.claim_and_enqueue(queues, false).await
        } else {
            // Jobs enqueued here would sit in the memory of a process that
            // never runs them: hand them to the process that does.
            request_embedded_redrive(&self.inner.db, queue).await
        }
    }

    async fn dlq_purge(&self, queue: Queue) -> Result<u64, BrokerError> {
        let worker = queue.name();
        let res = dead_letters::Entity::delete_many()
            .filter(dead_letters::Column::Queue.eq(worker))
            .exec(&self.inner.db)
            .await?;
        Ok(res.rows_affected)
    }

    async fn queue_depths(&self) -> Result<Vec<(String, u64, bool)>, BrokerError> {
        let s = &self.inner.settings;
        let mut out = Vec::new();
        for w in &self.inner.workers {
            for (n, lane) in w.lanes.iter().enumerate() {
                out.push((s.lane_queue(w.name, n as u16), lane.len() as u64, false));
            }
            out.push((
                format!("{}.{}.delay", s.prefix, w.name),
                w.delayed.load(Ordering::Relaxed),
                false,
            ));
            let dead = dead_letters::Entity::find()
                .filter(dead_letters::Column::Queue.eq(w.name))
                .count(&self.inner.db)
                .await?;
            out.push((s.dlq_queue(w.name), dead, true));
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        // Dead-lettering needs the database; the queues themselves cannot fail.
        Ok(self.inner.db.ping().await?)
    }

    fn mode(&self) -> &'static str {
        "embedded"
    }

    fn lanes(&self) -> u16 {
        self.inner.settings.lane_count()
    }
}

struct EmbeddedLane {
    db: DatabaseConnection,
    delayed: Arc<AtomicU64>,
    worker: &'static str,
    lane_no: u16,
    lane: Arc<Lane>,
    /// Taken on the first `next`, held until this consumer is dropped.
    lease: Option<OwnedMutexGuard<()>>,
}

#[async_trait]
impl LaneSource for EmbeddedLane {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        if self.lease.is_none() {
            self.lease = Some(self.lane.active.clone().lock_owned().await);
        }
        loop {
            // Registered before the check, so a push in between is not missed.
            let notified = self.lane.notify.notified();
            if let Some(msg) = self.lane.pop() {
                return Some(Ok(self.delivery(msg)));
            }
            notified.await;
        }
    }
}

impl EmbeddedLane {
    fn delivery(&self, msg: Msg) -> Delivery {
        let parts = Parts {
            worker: self.worker,
            lane: self.lane_no,
            event: msg.event.clone(),
            lane_key: msg.lane_key.clone(),
            message_id: msg.message_id.clone(),
            body: msg.body.clone(),
            attempt: msg.attempt,
        };
        let redelivered = msg.redelivered;
        Delivery::new(
            parts,
            redelivered,
            Box::new(EmbeddedSettle {
                db: self.db.clone(),
                lane: self.lane.clone(),
                delayed: self.delayed.clone(),
                unsettled: Some(msg),
            }),
        )
    }
}

struct EmbeddedSettle {
    db: DatabaseConnection,
    lane: Arc<Lane>,
    delayed: Arc<AtomicU64>,
    /// The job until it is settled; given back to the lane on drop.
    unsettled: Option<Msg>,
}

impl Drop for EmbeddedSettle {
    fn drop(&mut self) {
        if let Some(mut msg) = self.unsettled.take() {
            // Back to the head so the lane keeps its order, like an AMQP
            // requeue of an unacknowledged delivery.
            msg.redelivered = true;
            self.lane.push_front(msg);
        }
    }
}

#[async_trait]
impl Settle for EmbeddedSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.unsettled = None;
        Ok(())
    }

    async fn retry(
        mut self: Box<Self>,
        parts: Parts,
        delay: Duration,
        error: &str,
        next_attempt: u32,
    ) -> Result<(), BrokerError> {
        tracing::debug!(
            worker = parts.worker,
            message_id = %parts.message_id,
            attempt = parts.attempt,
            ?delay,
            error,
            "retry scheduled"
        );
        self.unsettled = None;
        let msg = Msg {
            event: parts.event,
            lane_key: parts.lane_key,
            message_id: parts.message_id,
            body: parts.body,
            attempt: next_attempt,
            redelivered: false,
        };
        let lane = self.lane.clone();
        let delayed = self.delayed.clone();
        delayed.fetch_add(1, Ordering::Relaxed);
        // The timer holds the job, not the worker: the lane goes on at once.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            lane.push_back(msg);
            delayed.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        parts: Parts,
        error: &str,
    ) -> Result<(), BrokerError> {
        let now = Utc::now();
        let row = dead_letters::ActiveModel {
            id: Set(Uuid::now_v7()),
            created_at: Set(now),
            updated_at: Set(now),
            queue: Set(parts.worker.to_owned()),
            event: Set(parts.event),
            lane_key: Set(parts.lane_key),
            message_id: Set(parts.message_id),
            body: Set(parts.body),
            attempts: Set(i32::try_from(parts.attempt).unwrap_or(i32::MAX)),
            last_error: Set(Some(error.to_owned())),
            redrive_requested_at: Set(None),
        };
        // On error the job stays unsettled and goes back to its lane on drop.
        dead_letters::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await?;
        self.unsettled = None;
        Ok(())
    }
}
