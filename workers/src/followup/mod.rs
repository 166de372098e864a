//! The follow-up worker: reminds agents of their due follow-ups (seed 002
//! FollowUp). Owns the scheduler that claims due follow-ups and publishes
//! `followup.due` ([`scheduler`]), the reminder itself ([`remind`]), their
//! settings and their metrics. The follow-up rules (what is due, the claim,
//! overdue) are the domain's: `wapipe_domain::followups`.

pub mod remind;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use wapipe_shared::broker::Delivery;
use wapipe_shared::config::Settings;
use wapipe_shared::jobs::{FollowupDue, Queue};

use crate::registry::{Background, BuildError, Deps, Registration};
use crate::runtime::{
    BatchOutcome, JobError, JobWorker, TypedJob, Worker, concurrent_db_tasks, typed,
};

pub use remind::{Outcome, RemindError, remind, remind_all};
pub use scheduler::{PassStats, pass};

pub const REGISTRATION: Registration = Registration {
    queue: Queue::Followup,
    build,
    background,
};

fn build(deps: &Deps) -> Result<Arc<dyn Worker>, BuildError> {
    describe_metrics();
    Ok(typed(FollowupWorker::new(
        deps.clone(),
        FollowupSettings::from_settings(&deps.settings),
    )))
}

/// The scheduler runs beside the worker, in every process of the role.
fn background(deps: &Deps, shutdown: CancellationToken) -> Background {
    vec![Box::pin(scheduler::run(
        deps.db.clone(),
        deps.broker.clone(),
        FollowupSettings::from_settings(&deps.settings),
        shutdown,
    ))]
}

/// The `followup` role: one reminder per `followup.due` job.
pub struct FollowupWorker {
    pub deps: Deps,
    pub settings: FollowupSettings,
    /// Batches in flight across all lanes (see [`concurrent_db_tasks`]).
    permits: tokio::sync::Semaphore,
}

/// `followup.due` jobs of one lane taken at once: a scheduler pass
/// publishes hundreds, and a batch costs a few statements whatever its
/// size.
const BATCH: usize = 32;

impl FollowupWorker {
    pub fn new(deps: Deps, settings: FollowupSettings) -> Self {
        let permits = tokio::sync::Semaphore::new(concurrent_db_tasks(deps.settings.db_pool));
        Self {
            deps,
            settings,
            permits,
        }
    }

    /// Reminds the follow-ups of `jobs` as one batch (see [`remind_all`]).
    async fn remind_jobs(&self, jobs: &[&FollowupDue]) -> Result<(), JobError> {
        // Closed only when the worker is dropped, which ends the job anyway.
        let _permit = self.permits.acquire().await.map_err(JobError::retryable)?;
        let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.follow_up_id).collect();
        remind_all(
            &self.deps.db,
            self.deps.broker.as_ref(),
            &self.settings,
            &ids,
        )
        .await
        .map(|_| ())
        // What is refused for good became an event-only reminder
        // inside; what is left is the database or the broker: try
        // again (each reminder is idempotent).
        .map_err(JobError::retryable)
    }
}

#[async_trait]
impl JobWorker for FollowupWorker {
    type Job = FollowupDue;

    async fn handle(&self, job: FollowupDue, _: &Delivery) -> Result<(), JobError> {
        self.remind_jobs(&[&job]).await
    }

    fn batch_size(&self) -> usize {
        BATCH
    }

    /// A lane's batch is reminded with a few statements for all of it;
    /// they succeed or are retried together (each reminder is idempotent,
    /// so a retry redoes nothing that was done).
    async fn handle_batch(
        &self,
        jobs: Vec<TypedJob<'_, FollowupDue>>,
    ) -> Result<BatchOutcome, JobError> {
        let jobs: Vec<&FollowupDue> = jobs.iter().map(|j| &j.job).collect();
        self.remind_jobs(&jobs).await?;
        Ok(BatchOutcome::AllDone)
    }
}

/// Follow-ups claimed for the first time (they fell due).
pub const METRIC_DUE_TOTAL: &str = "wapipe_followups_due_total";
/// Every claim, including second claims after a lost job's lease ran out.
pub const METRIC_CLAIMED_TOTAL: &str = "wapipe_followups_claimed_total";
/// Reminders recorded, by `channel` (`whatsapp`, `event`).
pub const METRIC_REMINDED_TOTAL: &str = "wapipe_followups_reminded_total";
/// Follow-ups turned `overdue`.
pub const METRIC_OVERDUE_TOTAL: &str = "wapipe_followups_overdue_total";
/// Follow-ups `overdue` now (a gauge, read every few passes).
pub const METRIC_OVERDUE: &str = "wapipe_followups_overdue";
/// Age of the oldest due follow-up not reminded yet, 0 when none.
pub const METRIC_BACKLOG_AGE_SECONDS: &str = "wapipe_followups_oldest_due_age_seconds";
/// Duration of one claim statement.
pub const METRIC_CLAIM_SECONDS: &str = "wapipe_followups_claim_seconds";
/// `followup.due` publishes that failed (their claims are given back).
pub const METRIC_PUBLISH_FAILED_TOTAL: &str = "wapipe_followups_publish_failed_total";

const CENTURY: chrono::Duration = chrono::Duration::days(36_525);

/// Follow-ups claimed per statement.
pub const DEFAULT_BATCH: u64 = 500;

/// What the scheduler and the reminders need besides the database and
/// the broker.
#[derive(Debug, Clone)]
pub struct FollowupSettings {
    /// `WAPIPE_REMINDER_TEMPLATE`.
    pub template: String,
    /// `WAPIPE_REMINDER_TEMPLATE_LANGUAGE`.
    pub template_language: String,
    /// `WAPIPE_FOLLOWUP_OVERDUE_AFTER_S`.
    pub overdue_after: chrono::Duration,
    /// Time between scheduler passes.
    pub tick: Duration,
    /// Follow-ups claimed per statement.
    pub batch: u64,
    /// `WAPIPE_FOLLOWUP_LEASE_S`: how long a claim holds.
    pub lease: chrono::Duration,
}

impl Default for FollowupSettings {
    fn default() -> Self {
        Self {
            template: "followup_reminder".to_owned(),
            template_language: "en".to_owned(),
            overdue_after: wapipe_domain::followups::DEFAULT_OVERDUE_AFTER,
            tick: scheduler::DEFAULT_TICK,
            batch: DEFAULT_BATCH,
            lease: wapipe_domain::followups::LEASE,
        }
    }
}

impl FollowupSettings {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            template: s.reminder_template.clone(),
            template_language: s.reminder_template_language.clone(),
            // A huge value means "never": a century is as good.
            overdue_after: i64::try_from(s.followup_overdue_after_s)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .map_or(CENTURY, |d| d.min(CENTURY)),
            lease: i64::try_from(s.followup_lease_s)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .map_or(CENTURY, |d| d.min(CENTURY)),
            ..Self::default()
        }
    }
}

/// Registers every follow-up metric at zero, so dashboards and alerts find
/// them before the first follow-up falls due.
pub fn describe_metrics() {
    for name in [
        METRIC_DUE_TOTAL,
        METRIC_CLAIMED_TOTAL,
        METRIC_OVERDUE_TOTAL,
        METRIC_PUBLISH_FAILED_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for channel in ["whatsapp", "event"] {
        metrics::counter!(METRIC_REMINDED_TOTAL, "channel" => channel).increment(0);
    }
    metrics::gauge!(METRIC_OVERDUE).set(0.0);
    metrics::gauge!(METRIC_BACKLOG_AGE_SECONDS).set(0.0);
}
