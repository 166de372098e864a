//! The worker runtime on both brokers: the embedded one (SQLite dead
//! letters) and RabbitMQ (127.0.0.1:5672, or `WAPIPE_TEST_AMQP`, with a
//! random prefix per test). Every scenario runs on each.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wapipe_shared::jobs::Queue;

use async_trait::async_trait;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use wapipe_shared::broker::amqp::AmqpTimeouts;
use wapipe_shared::broker::{
    AmqpBroker, Broker, BrokerSettings, Delivery, EmbeddedBroker, LaneConsumer, OutboundJob,
    lane_for,
};
use wapipe_shared::retry::RetryPolicy;
use wapipe_testkit::amqp_url;
use wapipe_testkit::db::{Backend, migrated};
use wapipe_workers::runtime::{BatchOutcome, JobError, Outcome, Worker, run, run_batch, run_one};

const LANES: u16 = 2;

// ---------------------------------------------------------------------------
// Brokers

/// A broker for one test, and what it takes to clean up after it.
struct TestBroker {
    broker: Arc<dyn Broker>,
    /// The SQLite directory, or the AMQP cleanup guard.
    _keep: Box<dyn std::any::Any + Send>,
}

fn timeouts() -> AmqpTimeouts {
    AmqpTimeouts {
        connect: Duration::from_secs(2),
        confirm: Duration::from_secs(2),
        operation: Duration::from_secs(5),
        max_recovery: Duration::from_secs(3),
    }
}

async fn embedded() -> TestBroker {
    logs();
    let t = migrated(Backend::Sqlite, 8).await;
    let (db, dir) = (t.db, t.dir);
    let settings = BrokerSettings {
        amqp_url: None,
        prefix: "t".to_owned(),
        lanes: LANES,
        prefetch: 8,
    };
    TestBroker {
        broker: Arc::new(EmbeddedBroker::new(&settings, db)),
        _keep: Box::new(dir),
    }
}

/// Deletes the test's queues when dropped, even after a panic.
struct AmqpCleanup(BrokerSettings);

impl Drop for AmqpCleanup {
    fn drop(&mut self) {
        let settings = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(b) = AmqpBroker::with_timeouts(&settings, timeouts()) {
                    if let Err(e) = b.delete_topology().await {
                        eprintln!("cleanup of {}: {e}", settings.prefix);
                    }
                    b.close().await;
                }
            });
        })
        .join();
    }
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn amqp() -> TestBroker {
    logs();
    let settings = BrokerSettings {
        amqp_url: Some(amqp_url()),
        prefix: format!("t{}", uuid::Uuid::now_v7().simple()),
        lanes: LANES,
        prefetch: 8,
    };
    let cleanup = AmqpCleanup(settings.clone());
    let b = AmqpBroker::with_timeouts(&settings, timeouts()).expect("broker");
    b.declare().await.expect("declare");
    TestBroker {
        broker: Arc::new(b),
        _keep: Box::new(cleanup),
    }
}

// ---------------------------------------------------------------------------
// A worker whose behaviour is chosen by the job's message id

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Start(String, u32),
    Done(String, u32),
}

/// `ok-*` succeeds, `poison-*` always fails retryably, `perm-*` fails
/// permanently, `slow-*` takes 500 ms, `panic-*` panics on its first
/// attempt, `defer-*` is deferred 40 ms its first six times. Reports every
/// start and end.
struct TestWorker {
    seen: mpsc::UnboundedSender<Seen>,
    deferrals: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

#[async_trait]
impl Worker for TestWorker {
    fn queue(&self) -> Queue {
        Queue::Parse
    }

    async fn handle(&self, job: &Delivery) -> Result<(), JobError> {
        let id = job.message_id.clone();
        let _ = self.seen.send(Seen::Start(id.clone(), job.attempt));
        let res = match id.split('-').next().unwrap_or_default() {
            "poison" => Err(JobError::retryable(format!(
                "fail at attempt {}",
                job.attempt
            ))),
            "perm" => {
                tracing::warn!("the worker refuses this job");
                Err(JobError::permanent("bad payload"))
            }
            "log" => {
                tracing::warn!("the worker handles this job");
                Ok(())
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(())
            }
            "panic" if job.attempt == 1 => panic!("worker bug"),
            "defer" => {
                let mut counts = self.deferrals.lock().unwrap_or_else(|p| p.into_inner());
                let n = counts.entry(id.clone()).or_insert(0);
                *n += 1;
                if *n <= 6 {
                    Err(JobError::deferred(
                        Duration::from_millis(40),
                        "over the rate",
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        };
        let _ = self.seen.send(Seen::Done(id, job.attempt));
        res
    }
}

fn worker() -> (Arc<TestWorker>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(TestWorker {
            seen: tx,
            deferrals: Default::default(),
        }),
        rx,
    )
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        max_attempts: 4,
    }
}

fn job(lane_key: &str, id: &str) -> OutboundJob {
    OutboundJob {
        event: "webhook.received".to_owned(),
        lane_key: lane_key.to_owned(),
        message_id: id.to_owned(),
        body: b"{}".to_vec(),
    }
}

struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), wapipe_workers::runtime::RuntimeError>>,
}

fn start(b: &Arc<dyn Broker>, w: &Arc<TestWorker>) -> Running {
    let token = CancellationToken::new();
    let handle = tokio::spawn(run(b.clone(), w.clone(), policy(), token.clone()));
    Running { token, handle }
}

impl Running {
    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("runtime stops")
            .expect("join")
            .expect("run");
    }
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, within: Duration) -> Option<Seen> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Polls the DLQ until it holds `n` jobs.
async fn dlq_until(b: &Arc<dyn Broker>, n: usize) -> Vec<wapipe_shared::broker::DeadLetter> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dead = b.dlq_list(Queue::Parse, 10).await.expect("dlq list");
        if dead.len() >= n || Instant::now() > deadline {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Scenarios

async fn ok_jobs_are_acked_in_lane_order(t: TestBroker) {
    let b = t.broker.clone();
    let (w, mut rx) = worker();
    let running = start(&b, &w);
    for i in 0..50 {
        b.publish(job("cfg:alice", &format!("ok-{i}")))
            .await
            .expect("publish");
    }
    for i in 0..50 {
        let id = format!("ok-{i}");
        assert_eq!(
            next_seen(&mut rx, Duration::from_secs(10)).await,
            Some(Seen::Start(id.clone(), 1))
        );
        assert_eq!(
            next_seen(&mut rx, Duration::from_secs(10)).await,
            Some(Seen::Done(id, 1))
        );
    }
    running.stop().await;
    // All acked: nothing comes back on a restart.
    let running = start(&b, &w);
    assert_eq!(next_seen(&mut rx, Duration::from_millis(700)).await, None);
    running.stop().await;
    assert!(b.dlq_list(Queue::Parse, 10).await.expect("dlq").is_empty());
}

async fn poison_job_is_dead_lettered_after_max_attempts(t: TestBroker) {
    let b = t.broker.clone();
    let (w, mut rx) = worker();
    let running = start(&b, &w);
    b.publish(job("cfg:bob", "poison-1"))
        .await
        .expect("publish");
    let mut starts = Vec::new();
    let mut last = Instant::now();
    for attempt in 1..=policy().max_attempts {
        match next_seen(&mut rx, Duration::from_secs(10)).await {
            Some(Seen::Start(id, a)) => {
                assert_eq!((id.as_str(), a), ("poison-1", attempt));
                if attempt > 1 {
                    // Retried after the backoff, not at once.
                    assert!(
                        last.elapsed() >= Duration::from_millis(40),
                        "{:?}",
                        last.elapsed()
                    );
                }
                starts.push(a);
            }
            other => panic!("expected attempt {attempt}, got {other:?}"),
        }
        assert!(matches!(
            next_seen(&mut rx, Duration::from_secs(10)).await,
            Some(Seen::Done(..))
        ));
        last = Instant::now();
    }
    let dead = dlq_until(&b, 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id, "poison-1");
    assert_eq!(dead[0].attempts, policy().max_attempts);
    assert_eq!(dead[0].last_error.as_deref(), Some("fail at attempt 4"));
    assert_eq!(dead[0].lane_key, "cfg:bob");
    // Exactly max_attempts: no fifth attempt.
    assert_eq!(next_seen(&mut rx, Duration::from_millis(700)).await, None);
    assert_eq!(starts, vec![1, 2, 3, 4]);

    // Redrive: back to the work queue with attempt 1, and the whole cycle
    // again, into the DLQ again.
    assert_eq!(b.dlq_redrive(Queue::Parse).await.expect("redrive"), 1);
    for attempt in 1..=policy().max_attempts {
        assert_eq!(
            next_seen(&mut rx, Duration::from_secs(10)).await,
            Some(Seen::Start("poison-1".into(), attempt))
        );
        assert_eq!(
            next_seen(&mut rx, Duration::from_secs(10)).await,
            Some(Seen::Done("poison-1".into(), attempt))
        );
    }
    let dead = dlq_until(&b, 1).await;
    assert_eq!(dead.len(), 1);
    running.stop().await;
    assert_eq!(b.dlq_purge(Queue::Parse).await.expect("purge"), 1);
    assert!(b.dlq_list(Queue::Parse, 10).await.expect("dlq").is_empty());
}

/// Deferred more times than `max_attempts` allows retries: each time it
/// comes back after its delay with the same attempt (1), and it finishes
/// instead of reaching the dead-letter queue.
async fn a_deferred_job_keeps_its_attempt_and_never_dead_letters(t: TestBroker) {
    let b = t.broker.clone();
    let (w, mut rx) = worker();
    let running = start(&b, &w);
    b.publish(job("cfg:dave", "defer-1"))
        .await
        .expect("publish");
    let mut last: Option<Instant> = None;
    for round in 1..=7 {
        match next_seen(&mut rx, Duration::from_secs(10)).await {
            Some(Seen::Start(id, attempt)) => {
                assert_eq!((id.as_str(), attempt), ("defer-1", 1), "round {round}");
                if let Some(t) = last {
                    assert!(
                        t.elapsed() >= Duration::from_millis(30),
                        "round {round} came back after {:?}",
                        t.elapsed()
                    );
                }
            }
            other => panic!("round {round}: expected a start, got {other:?}"),
        }
        assert_eq!(
            next_seen(&mut rx, Duration::from_secs(10)).await,
            Some(Seen::Done("defer-1".into(), 1))
        );
        last = Some(Instant::now());
    }
    // Done on the seventh: nothing more, nothing dead-lettered.
    assert_eq!(next_seen(&mut rx, Duration::from_millis(500)).await, None);
    assert!(b.dlq_list(Queue::Parse, 10).await.expect("dlq").is_empty());
    running.stop().await;
}

async fn permanent_error_goes_straight_to_the_dlq(t: TestBroker) {
    let b = t.broker.clone();
    let (w, mut rx) = worker();
    let running = start(&b, &w);
    b.publish(job("cfg:carol", "perm-1"))
        .await
        .expect("publish");
    assert_eq!(
        next_seen(&mut rx, Duration::from_secs(10)).await,
        Some(Seen::Start("perm-1".into(), 1))
    );
    let dead = dlq_until(&b, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("bad payload"));
    assert_eq!(
        next_seen(&mut rx, Duration::from_millis(100)).await,
        Some(Seen::Done("perm-1".into(), 1))
    );
    assert_eq!(next_seen(&mut rx, Duration::from_millis(500)).await, None);
    running.stop().await;
}

async fn a_panicking_job_is_retried(t: TestBroker) {
    let b = t.broker.clone();
    let (w, mut rx) = worker();
    let running = start(&b, &w);
    b.publish(job("cfg:dan", "panic-1")).await.expect("publish");
    assert_eq!(
        next_seen(&mut rx, Duration::from_secs(10)).await,
        Some(Seen::Start("panic-1".into(), 1))
    );
    assert_eq!(
        next_seen(&mut rx, Duration::from_secs(10)).await,
        Some(Seen::Start("panic-1".into(), 2))
    );
    assert_eq!(
        next_seen(&mut rx, Duration::from_secs(10)).await,
        Some(Seen::Done("panic-1".into(), 2))
    );
    running.stop().await;
    assert!(b.dlq_list(Queue::Parse, 10).await.expect("dlq").is_empty());
}

async fn shutdown_lets_the_job_in_progress_finish(t: TestBroker) {
    let b = t.broker.clone();
    let (w, mut rx) = worker();
    let running = start(&b, &w);
    b.publish(job("cfg:erin", "slow-1")).await.expect("publish");
    assert_eq!(
        next_seen(&mut rx, Duration::from_secs(10)).await,
        Some(Seen::Start("slow-1".into(), 1))
    );
    let asked = Instant::now();
    running.token.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.handle)
        .await
        .expect("runtime stops")
        .expect("join")
        .expect("run");
    // run returned only after the job finished.
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(rx.try_recv().ok(), Some(Seen::Done("slow-1".into(), 1)));

    // No new job is taken after shutdown.
    b.publish(job("cfg:erin", "ok-after"))
        .await
        .expect("publish");
    assert_eq!(next_seen(&mut rx, Duration::from_millis(500)).await, None);

    // The slow job was acked: a new runtime sees only the later one.
    let running = start(&b, &w);
    assert_eq!(
        next_seen(&mut rx, Duration::from_secs(10)).await,
        Some(Seen::Start("ok-after".into(), 1))
    );
    assert_eq!(
        next_seen(&mut rx, Duration::from_secs(10)).await,
        Some(Seen::Done("ok-after".into(), 1))
    );
    assert_eq!(next_seen(&mut rx, Duration::from_millis(500)).await, None);
    running.stop().await;
}

async fn next_delivery(c: &mut LaneConsumer) -> Delivery {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("delivery in time")
            .expect("lane open")
        {
            Ok(d) => return d,
            Err(e) => eprintln!("consume error (retried): {e}"),
        }
    }
}

/// The parse queue's consumer of the lane of `lane_key`.
async fn lane_consumer(b: &dyn Broker, lane_key: &str) -> LaneConsumer {
    let lane = lane_for(lane_key, LANES);
    b.consume(Queue::Parse)
        .await
        .expect("consume")
        .into_iter()
        .find(|c| c.lane() == lane)
        .expect("lane")
}

async fn run_one_settles_a_single_job(t: TestBroker) {
    let b = t.broker.clone();
    let (w, _rx) = worker();
    b.publish(job("cfg:fay", "poison-1"))
        .await
        .expect("publish");
    let mut consumer = lane_consumer(b.as_ref(), "cfg:fay").await;
    let policy = RetryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let d = next_delivery(&mut consumer).await;
    assert_eq!(
        run_one(w.as_ref(), &policy, d).await.expect("settle"),
        Outcome::Retry
    );
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.attempt, 2);
    assert_eq!(
        run_one(w.as_ref(), &policy, d).await.expect("settle"),
        Outcome::Dead
    );
    assert_eq!(dlq_until(&b, 1).await.len(), 1);
}

/// A batching worker: `handle_batch` is all-or-nothing (it fails when the
/// batch holds a `poison-*` job), `handle` fails only for the poison job.
/// Records the jobs done and the size of every batch it was given.
#[derive(Default)]
struct BatchWorker {
    done: std::sync::Mutex<Vec<String>>,
    batches: std::sync::Mutex<Vec<usize>>,
}

#[async_trait]
impl Worker for BatchWorker {
    fn queue(&self) -> Queue {
        Queue::Parse
    }

    fn batch_size(&self) -> usize {
        16
    }

    async fn handle(&self, job: &Delivery) -> Result<(), JobError> {
        if job.message_id.starts_with("poison") {
            return Err(JobError::retryable("poison"));
        }
        self.done.lock().expect("lock").push(job.message_id.clone());
        Ok(())
    }

    async fn handle_batch(&self, jobs: &[Delivery]) -> Result<BatchOutcome, JobError> {
        self.batches.lock().expect("lock").push(jobs.len());
        if jobs.iter().any(|j| j.message_id.starts_with("poison")) {
            return Err(JobError::retryable("a poison job in the batch"));
        }
        let mut done = self.done.lock().expect("lock");
        done.extend(jobs.iter().map(|j| j.message_id.clone()));
        Ok(BatchOutcome::AllDone)
    }
}

/// What queued up on a lane is handed over as batches of at most
/// `batch_size`, in lane order; a batch with a bad job is run again job by
/// job, so every good job is done exactly once and only the bad one is
/// retried and dead-lettered.
async fn batches_form_and_a_bad_job_fails_alone(t: TestBroker) {
    let b = t.broker.clone();
    let mut want = Vec::new();
    for i in 0..40 {
        if i == 25 {
            b.publish(job("cfg:carol", "poison-25"))
                .await
                .expect("publish");
        }
        let id = format!("ok-{i}");
        b.publish(job("cfg:carol", &id)).await.expect("publish");
        want.push(id);
    }
    let w = Arc::new(BatchWorker::default());
    let token = CancellationToken::new();
    let handle = tokio::spawn(run(b.clone(), w.clone(), policy(), token.clone()));
    assert_eq!(
        dlq_until(&b, 1).await.len(),
        1,
        "the poison job is dead-lettered"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.done.lock().expect("lock").len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("runtime stops")
        .expect("join")
        .expect("run");
    assert_eq!(
        *w.done.lock().expect("lock"),
        want,
        "each good job once, in lane order"
    );
    let batches = w.batches.lock().expect("lock").clone();
    assert!(
        batches.iter().any(|n| *n > 1),
        "no batch formed: {batches:?}"
    );
    assert!(batches.iter().all(|n| *n <= 16), "{batches:?}");
}

/// A batching worker that answers each job on its own (as the outbound
/// worker does): the poison job fails, the others succeed. Counts how often
/// each job was handled, in a batch or alone.
#[derive(Default)]
struct EachWorker {
    handled: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    batches: std::sync::Mutex<Vec<usize>>,
}

impl EachWorker {
    fn answer(&self, job: &Delivery) -> Result<(), JobError> {
        *self
            .handled
            .lock()
            .expect("lock")
            .entry(job.message_id.clone())
            .or_default() += 1;
        if job.message_id.starts_with("poison") {
            return Err(JobError::retryable("poison"));
        }
        Ok(())
    }
}

#[async_trait]
impl Worker for EachWorker {
    fn queue(&self) -> Queue {
        Queue::Parse
    }

    fn batch_size(&self) -> usize {
        16
    }

    async fn handle(&self, job: &Delivery) -> Result<(), JobError> {
        self.answer(job)
    }

    async fn handle_batch(&self, jobs: &[Delivery]) -> Result<BatchOutcome, JobError> {
        self.batches.lock().expect("lock").push(jobs.len());
        Ok(BatchOutcome::Each(
            jobs.iter().map(|j| self.answer(j)).collect(),
        ))
    }
}

/// Per-job answers from a batch settle each job alone: the good ones are
/// acked once and never run again, the bad one is retried to its last
/// attempt and dead-lettered.
async fn a_batch_answered_job_by_job_settles_each(t: TestBroker) {
    let b = t.broker.clone();
    for i in 0..40 {
        if i == 10 {
            b.publish(job("cfg:dave", "poison-10"))
                .await
                .expect("publish");
        }
        b.publish(job("cfg:dave", &format!("ok-{i}")))
            .await
            .expect("publish");
    }
    let w = Arc::new(EachWorker::default());
    let token = CancellationToken::new();
    let handle = tokio::spawn(run(b.clone(), w.clone(), policy(), token.clone()));
    assert_eq!(
        dlq_until(&b, 1).await.len(),
        1,
        "the poison job is dead-lettered"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.handled.lock().expect("lock").len() < 41 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("runtime stops")
        .expect("join")
        .expect("run");
    let handled = w.handled.lock().expect("lock").clone();
    for i in 0..40 {
        assert_eq!(
            handled.get(&format!("ok-{i}")),
            Some(&1),
            "ok-{i}: {handled:?}"
        );
    }
    assert_eq!(
        handled.get("poison-10").copied(),
        Some(policy().max_attempts),
        "the poison job runs to its last attempt"
    );
    let batches = w.batches.lock().expect("lock").clone();
    assert!(
        batches.iter().any(|n| *n > 1),
        "no batch formed: {batches:?}"
    );
}

// ---------------------------------------------------------------------------
// Each scenario on each broker

macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod embedded_broker {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(embedded().await).await;
                }
            )*
        }
        mod amqp_broker {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(amqp().await).await;
                }
            )*
        }
    };
}

on_both!(
    ok_jobs_are_acked_in_lane_order,
    poison_job_is_dead_lettered_after_max_attempts,
    a_deferred_job_keeps_its_attempt_and_never_dead_letters,
    permanent_error_goes_straight_to_the_dlq,
    a_panicking_job_is_retried,
    shutdown_lets_the_job_in_progress_finish,
    run_one_settles_a_single_job,
    batches_form_and_a_bad_job_fails_alone,
    a_batch_answered_job_by_job_settles_each,
);

/// A log buffer for one test's scoped subscriber.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

impl LogBuf {
    /// The first line containing `needle`.
    fn line(&self, needle: &str) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}"))
            .to_owned()
    }
}

/// Every line logged while a job runs or settles names the job, the
/// worker's own lines as well as the runtime's; a batch's lines name every
/// job in it. That is how one message is followed from webhook to send.
#[tokio::test]
async fn log_lines_name_their_jobs() {
    let t = embedded().await;
    let b = t.broker.clone();
    let logs = LogBuf::default();
    // Scoped to this thread, which runs the whole (current-thread) test.
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let (w, _rx) = worker();
    let policy = RetryPolicy {
        max_attempts: 1,
        ..policy()
    };
    for id in ["perm-7", "log-1", "log-2"] {
        b.publish(job("cfg:gil", id)).await.expect("publish");
    }
    let mut consumer = lane_consumer(b.as_ref(), "cfg:gil").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(
        run_one(w.as_ref(), &policy, d).await.expect("settle"),
        Outcome::Dead
    );
    for needle in ["the worker refuses this job", "job dead-lettered"] {
        let line = logs.line(needle);
        assert!(
            line.contains("job=perm-7") && line.contains("worker=\"parse\""),
            "{line}"
        );
    }
    let batch = vec![
        next_delivery(&mut consumer).await,
        next_delivery(&mut consumer).await,
    ];
    run_batch(w.as_ref(), &policy, batch).await.expect("settle");
    let line = logs.line("the worker handles this job");
    assert!(line.contains("jobs=log-1,log-2"), "{line}");
}
