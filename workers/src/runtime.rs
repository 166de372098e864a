//! The worker runtime: consumes a worker's lanes, hands each job to the
//! worker, and settles it from the worker's answer: ack on success, a
//! delayed retry with backoff on a retryable error, the dead-letter queue
//! after the last attempt or on a permanent error (DESIGN §2, invariants 5
//! and 6). Workers never touch acks or retries themselves.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wapipe_shared::broker::{Broker, BrokerError, Delivery, LaneConsumer};
use wapipe_shared::jobs::{Job, Queue};
use wapipe_shared::retry::RetryPolicy;

pub const METRIC_JOBS_TOTAL: &str = "wapipe_worker_jobs_total";
pub const METRIC_JOB_DURATION_SECONDS: &str = "wapipe_worker_job_duration_seconds";
pub const METRIC_JOB_ATTEMPTS: &str = "wapipe_worker_job_attempts";
/// Settling (ack, retry, dead-letter) failed; the broker delivers the job again.
pub const METRIC_SETTLE_FAILURES_TOTAL: &str = "wapipe_worker_settle_failures_total";
/// Jobs handled together by a batching worker, per batch.
pub const METRIC_BATCH_SIZE: &str = "wapipe_worker_batch_size";
/// Jobs whose body is not their queue's job type (dead-lettered at once).
pub const METRIC_UNDECODABLE_TOTAL: &str = "wapipe_worker_undecodable_jobs_total";

/// What a worker answers when a job fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Try again later (database busy, Meta throttling, timeouts).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Retrying cannot help (malformed job, refused for good).
    #[error("permanent: {0}")]
    Permanent(String),
    /// Not tried, only held back until `after` (a send over Meta's rate,
    /// deferred to its slot): the job comes back then with the same
    /// attempt count, so holding back never leads to the dead-letter queue.
    #[error("deferred {after:?}: {reason}")]
    Deferred { after: Duration, reason: String },
}

impl JobError {
    pub fn retryable(e: impl std::fmt::Display) -> Self {
        JobError::Retryable(e.to_string())
    }

    pub fn permanent(e: impl std::fmt::Display) -> Self {
        JobError::Permanent(e.to_string())
    }

    pub fn deferred(after: Duration, reason: impl std::fmt::Display) -> Self {
        JobError::Deferred {
            after,
            reason: reason.to_string(),
        }
    }

    fn message(&self) -> &str {
        match self {
            JobError::Retryable(m) | JobError::Permanent(m) => m,
            JobError::Deferred { reason, .. } => reason,
        }
    }
}

/// A database error is worth retrying: the database is busy, restarting
/// or unreachable (our writes are idempotent and violate no constraint by
/// design). The one conversion every worker uses.
impl From<sea_orm::DbErr> for JobError {
    fn from(e: sea_orm::DbErr) -> Self {
        JobError::Retryable(format!("database: {e}"))
    }
}

/// A worker of one job type: what a worker module implements. The runtime
/// decodes each delivery into [`Self::Job`] before calling it (a body that
/// does not decode is a permanent error, counted and dead-lettered in one
/// place, [`typed`]), and settles the job from the answer. `handle` must
/// be idempotent: delivery is at-least-once.
#[async_trait]
pub trait JobWorker: Send + Sync + 'static {
    type Job: Job;

    /// Handles one job; `delivery` carries its attempt and ids for tracing.
    async fn handle(&self, job: Self::Job, delivery: &Delivery) -> Result<(), JobError>;

    /// The most jobs of one lane [`handle_batch`](Self::handle_batch)
    /// takes at once; 1 (the default) means the worker does not batch.
    fn batch_size(&self) -> usize {
        1
    }

    /// Several jobs of one lane, in lane order (see [`Worker::handle_batch`]).
    async fn handle_batch(
        &self,
        jobs: Vec<TypedJob<'_, Self::Job>>,
    ) -> Result<BatchOutcome, JobError> {
        for j in jobs {
            self.handle(j.job, j.delivery).await?;
        }
        Ok(BatchOutcome::AllDone)
    }

    /// Called once before the job goes to the dead-letter queue (see
    /// [`Worker::on_dead_letter`]).
    async fn on_dead_letter(&self, _job: Self::Job, _error: &str) -> Result<(), JobError> {
        Ok(())
    }
}

/// How many jobs a worker should run at once across all its lanes when
/// each holds a database connection: enough to overlap round trips, few
/// enough to leave the pool (`WAPIPE_DB_POOL`) to the process's other
/// roles (eight lanes times eight tasks each starved the outbound worker).
pub fn concurrent_db_tasks(db_pool: u32) -> usize {
    (db_pool as usize / 3).clamp(2, 16)
}

/// A decoded job and the delivery it came in.
pub struct TypedJob<'a, J> {
    pub job: J,
    pub delivery: &'a Delivery,
}

/// The runtime's view of a [`JobWorker`]: decodes, then delegates.
struct Typed<W>(W);

/// Wraps a typed worker for the runtime.
pub fn typed<W: JobWorker>(worker: W) -> Arc<dyn Worker> {
    Arc::new(Typed(worker))
}

fn decode<J: Job>(d: &Delivery) -> Result<J, JobError> {
    J::decode(&d.body).map_err(|e| {
        metrics::counter!(METRIC_UNDECODABLE_TOTAL, "worker" => J::QUEUE.name()).increment(1);
        JobError::Permanent(e.to_string())
    })
}

#[async_trait]
impl<W: JobWorker> Worker for Typed<W> {
    fn queue(&self) -> Queue {
        W::Job::QUEUE
    }

    async fn handle(&self, job: &Delivery) -> Result<(), JobError> {
        self.0.handle(decode(job)?, job).await
    }

    fn batch_size(&self) -> usize {
        self.0.batch_size()
    }

    /// Jobs that do not decode are answered on their own (permanent); the
    /// others go to the worker as one batch.
    async fn handle_batch(&self, jobs: &[Delivery]) -> Result<BatchOutcome, JobError> {
        let mut answers: Vec<Option<Result<(), JobError>>> = Vec::with_capacity(jobs.len());
        let mut good = Vec::with_capacity(jobs.len());
        for d in jobs {
            match decode::<W::Job>(d) {
                Ok(job) => {
                    answers.push(None);
                    good.push(TypedJob { job, delivery: d });
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        if good.len() == jobs.len() {
            return self.0.handle_batch(good).await;
        }
        let n = good.len();
        let inner = if good.is_empty() {
            Vec::new()
        } else {
            match self.0.handle_batch(good).await? {
                BatchOutcome::AllDone => vec![Ok(()); n],
                BatchOutcome::Each(results) => results,
            }
        };
        let mut inner = inner.into_iter();
        Ok(BatchOutcome::Each(
            answers
                .into_iter()
                .map(|a| a.or_else(|| inner.next()).unwrap_or(Ok(())))
                .collect(),
        ))
    }

    async fn on_dead_letter(&self, job: &Delivery, error: &str) -> Result<(), JobError> {
        match W::Job::decode(&job.body) {
            Ok(decoded) => self.0.on_dead_letter(decoded, error).await,
            // Not this worker's job at all: nothing of ours to record.
            Err(_) => Ok(()),
        }
    }
}

/// The runtime's interface to a worker, on raw deliveries. Worker modules
/// implement [`JobWorker`] and are wrapped by [`typed`]; this trait is
/// public for the runtime's own tests and tools.
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// The queue it consumes.
    fn queue(&self) -> Queue;
    /// Its name in logs and metrics: the queue's name.
    fn name(&self) -> &'static str {
        self.queue().name()
    }
    async fn handle(&self, job: &Delivery) -> Result<(), JobError>;
    /// The most jobs of one lane [`handle_batch`](Self::handle_batch) takes
    /// at once; 1 (the default) means the worker does not batch.
    fn batch_size(&self) -> usize {
        1
    }
    /// Handles several jobs of one lane, in lane order (it is called only
    /// when `batch_size() > 1`). [`BatchOutcome::AllDone`] acks them all;
    /// [`BatchOutcome::Each`] settles each job from its own answer. On an
    /// error the runtime runs each job again on its own through
    /// [`handle`](Self::handle), so only the failing ones are retried; a
    /// batch that can fail must therefore be all-or-nothing or idempotent.
    async fn handle_batch(&self, jobs: &[Delivery]) -> Result<BatchOutcome, JobError> {
        for job in jobs {
            self.handle(job).await?;
        }
        Ok(BatchOutcome::AllDone)
    }
    /// Called once when the job is about to go to the dead-letter queue, so
    /// the worker can record the failure where its domain keeps it (the
    /// parse worker marks the event `failed`). Best effort: errors are logged.
    async fn on_dead_letter(&self, _job: &Delivery, _error: &str) -> Result<(), JobError> {
        Ok(())
    }
}

/// What [`Worker::handle_batch`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every job of the batch is done.
    AllDone,
    /// Each job's own answer, one per job in batch order: a worker whose
    /// jobs succeed or fail on their own (the outbound worker: one send
    /// throttled does not undo its neighbours').
    Each(Vec<Result<(), JobError>>),
}

/// How a job was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done and acknowledged.
    Ok,
    /// Scheduled again after a delay.
    Retry,
    /// Held back until its slot, not counted as an attempt.
    Deferred,
    /// Moved to the dead-letter queue.
    Dead,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Deferred => "deferred",
            Outcome::Dead => "dead",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("worker {worker}: {source}")]
    Broker {
        worker: &'static str,
        source: BrokerError,
    },
    #[error("worker {worker}: a lane task panicked: {message}")]
    LanePanicked {
        worker: &'static str,
        message: String,
    },
}

/// Runs `worker` on every lane until `shutdown` is cancelled: one task per
/// lane, each lane's jobs one at a time (or, for a batching worker, what
/// has queued up on the lane as one batch), in order. On shutdown no new job
/// is taken; jobs in progress finish and are settled, then it returns.
pub async fn run(
    broker: Arc<dyn Broker>,
    worker: Arc<dyn Worker>,
    policy: RetryPolicy,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let name = worker.name();
    let consumers =
        broker
            .consume(worker.queue())
            .await
            .map_err(|source| RuntimeError::Broker {
                worker: name,
                source,
            })?;
    tracing::info!(worker = name, lanes = consumers.len(), "worker started");
    // From zero, so a rate over them reads 0 rather than nothing.
    metrics::counter!(METRIC_SETTLE_FAILURES_TOTAL, "worker" => name).increment(0);
    let mut lanes = JoinSet::new();
    for consumer in consumers {
        lanes.spawn(run_lane(consumer, worker.clone(), policy, shutdown.clone()));
    }
    let mut panicked = None;
    while let Some(res) = lanes.join_next().await {
        if let Err(e) = res {
            tracing::error!(worker = name, error = %e, "lane task failed");
            panicked = Some(e.to_string());
        }
    }
    tracing::info!(worker = name, "worker stopped");
    match panicked {
        None => Ok(()),
        Some(message) => Err(RuntimeError::LanePanicked {
            worker: name,
            message,
        }),
    }
}

async fn run_lane(
    mut consumer: LaneConsumer,
    worker: Arc<dyn Worker>,
    policy: RetryPolicy,
    shutdown: CancellationToken,
) {
    let name = worker.name();
    let lane = consumer.lane();
    let mut settle_failures = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = consumer.next() => next,
        };
        match next {
            None => break,
            Some(Err(e)) => {
                // `next` backs off before its next attempt.
                tracing::warn!(worker = name, lane, error = %e, "cannot consume");
            }
            Some(Ok(delivery)) => match run_batch(worker.as_ref(), &policy, {
                // Under load the lane has more prefetched: take what is
                // ready (never wait for more), so batches grow with the
                // backlog and a lone job goes through at once.
                let mut batch = vec![delivery];
                while batch.len() < worker.batch_size() {
                    match consumer.try_next() {
                        Some(d) => batch.push(d),
                        None => break,
                    }
                }
                batch
            })
            .await
            {
                Ok(_) => settle_failures = 0,
                Err(e) => {
                    // The job comes back (requeued or redelivered); pause so
                    // a broker that cannot take the retry is not hammered
                    // with the same job in a tight loop.
                    settle_failures = settle_failures.saturating_add(1);
                    let pause = Duration::from_millis(200 * u64::from(settle_failures.min(25)));
                    tracing::warn!(worker = name, lane, error = %e, ?pause, "cannot settle job");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            },
        }
    }
    tracing::debug!(worker = name, lane, "lane stopped");
}

/// Processes deliveries of one lane, in order: one through [`run_one`];
/// several through the worker's `handle_batch`, settled from its answer
/// (all acked, or each from its own result), and else each run again on
/// its own, so one bad job is retried or dead-lettered alone. Returns the
/// first settle error.
pub async fn run_batch(
    worker: &dyn Worker,
    policy: &RetryPolicy,
    mut batch: Vec<Delivery>,
) -> Result<(), BrokerError> {
    let name = worker.name();
    // Lone jobs count too: a mean batch size near 1 under load says the
    // worker is not batching.
    if !batch.is_empty() {
        metrics::histogram!(METRIC_BATCH_SIZE, "worker" => name).record(batch.len() as f64);
    }
    if batch.len() <= 1 {
        return match batch.pop() {
            Some(d) => run_one(worker, policy, d).await.map(|_| ()),
            None => Ok(()),
        };
    }
    let started = Instant::now();
    // Every line the worker logs for this batch names the jobs in it, so a
    // message can be followed through a batched stage too.
    let span = tracing::info_span!("batch", worker = name, jobs = %JobIds(&batch));
    let result = caught(worker.handle_batch(&batch)).instrument(span).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut first_err = None;
    match result {
        Ok(BatchOutcome::AllDone) => {
            let n = batch.len() as u64;
            for d in batch {
                record_job(name, elapsed, d.attempt);
                if let Err(e) = d.ack().await {
                    metrics::counter!(METRIC_SETTLE_FAILURES_TOTAL, "worker" => name).increment(1);
                    first_err.get_or_insert(e);
                }
            }
            metrics::counter!(METRIC_JOBS_TOTAL, "worker" => name, "outcome" => Outcome::Ok.as_str())
                .increment(n);
        }
        Ok(BatchOutcome::Each(results)) if results.len() == batch.len() => {
            for (d, result) in batch.into_iter().zip(results) {
                record_job(name, elapsed, d.attempt);
                let span = job_span(name, &d);
                if let Err(e) = settle(worker, policy, d, result).instrument(span).await {
                    first_err.get_or_insert(e);
                }
            }
        }
        other => {
            let error = match other {
                Err(e) => e.to_string(),
                _ => "the worker answered for a different number of jobs".to_owned(),
            };
            tracing::debug!(worker = name, jobs = batch.len(), %error,
                "batch failed; running its jobs one by one");
            for d in batch {
                if let Err(e) = run_one(worker, policy, d).await {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Processes one delivery: runs the worker, then settles the job from its
/// answer. A panic in the worker counts as a retryable error. Returns the
/// outcome, or the broker error if settling failed (the broker then
/// delivers the job again). Tests use it to run one job at a time.
pub async fn run_one(
    worker: &dyn Worker,
    policy: &RetryPolicy,
    delivery: Delivery,
) -> Result<Outcome, BrokerError> {
    let started = Instant::now();
    let span = job_span(worker.name(), &delivery);
    let result = caught(worker.handle(&delivery))
        .instrument(span.clone())
        .await;
    record_job(
        worker.name(),
        started.elapsed().as_secs_f64(),
        delivery.attempt,
    );
    settle(worker, policy, delivery, result)
        .instrument(span)
        .await
}

/// The span of one job: every log line written while it runs or settles
/// carries its id (the webhook event id for `webhook.received`, the
/// message id inside `outbound:…`, and so on), so one customer's message
/// can be followed from webhook to send with a grep.
fn job_span(worker: &'static str, d: &Delivery) -> tracing::Span {
    tracing::info_span!("job", worker, job = %d.message_id, attempt = d.attempt)
}

/// The ids of a batch's jobs, comma-separated; formatted only when a log
/// line inside the batch is written.
struct JobIds<'a>(&'a [Delivery]);

impl std::fmt::Display for JobIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, d) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            f.write_str(&d.message_id)?;
        }
        Ok(())
    }
}

fn record_job(name: &'static str, secs: f64, attempt: u32) {
    metrics::histogram!(METRIC_JOB_DURATION_SECONDS, "worker" => name).record(secs);
    metrics::histogram!(METRIC_JOB_ATTEMPTS, "worker" => name).record(f64::from(attempt));
}

/// Settles one job from the worker's answer: ack, a delayed retry, or the
/// dead-letter queue after the last attempt or on a permanent error.
async fn settle(
    worker: &dyn Worker,
    policy: &RetryPolicy,
    delivery: Delivery,
    result: Result<(), JobError>,
) -> Result<Outcome, BrokerError> {
    let name = worker.name();
    let attempt = delivery.attempt;
    let (outcome, settled) = match result {
        Ok(()) => (Outcome::Ok, delivery.ack().await),
        Err(JobError::Retryable(error)) if attempt < policy.max_attempts => {
            let delay = policy.delay_for(attempt);
            tracing::debug!(?delay, error = %error, "job failed; retrying");
            (Outcome::Retry, delivery.retry(delay, &error).await)
        }
        Err(JobError::Deferred { after, reason }) => {
            tracing::debug!(?after, reason = %reason, "job deferred");
            (Outcome::Deferred, delivery.defer(after, &reason).await)
        }
        Err(e) => {
            tracing::warn!(error = %e, "job dead-lettered");
            if let Err(hook) = worker.on_dead_letter(&delivery, e.message()).await {
                tracing::warn!(error = %hook, "dead-letter hook failed");
            }
            (Outcome::Dead, delivery.dead_letter(e.message()).await)
        }
    };
    metrics::counter!(METRIC_JOBS_TOTAL, "worker" => name, "outcome" => outcome.as_str())
        .increment(1);
    if let Err(e) = settled {
        metrics::counter!(METRIC_SETTLE_FAILURES_TOTAL, "worker" => name).increment(1);
        return Err(e);
    }
    Ok(outcome)
}

/// Runs the worker's future; a panic in it counts as a retryable error.
async fn caught<T>(
    work: impl std::future::Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(JobError::Retryable(format!(
                "worker panicked: {}",
                panic_message(panic.as_ref())
            )))
        })
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
