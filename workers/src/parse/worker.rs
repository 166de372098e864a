//! The `parse` role: its registration, the worker over `webhook.received`
//! jobs, and the conversation-expiry sweep that runs beside it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wapipe_shared::broker::Delivery;
use wapipe_shared::jobs::{Queue, WebhookReceived};

use crate::registry::{Background, BuildError, Deps, Registration};
use crate::runtime::{BatchOutcome, JobError, JobWorker, TypedJob, Worker, typed};

pub const REGISTRATION: Registration = Registration {
    queue: Queue::Parse,
    build,
    background,
};

fn build(deps: &Deps) -> Result<Arc<dyn Worker>, BuildError> {
    super::health::describe_metrics();
    Ok(typed(ParseWorker { deps: deps.clone() }))
}

/// How often windows are closed by the clock.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// Windows close by the clock, not only when the next message comes.
fn background(deps: &Deps, shutdown: tokio_util::sync::CancellationToken) -> Background {
    let db = deps.db.clone();
    vec![Box::pin(async move {
        loop {
            if let Err(e) = super::expire_conversations(&db).await {
                tracing::debug!(error = %e, "conversation expiry sweep failed");
            }
            tokio::select! {
                () = tokio::time::sleep(EXPIRY_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    })]
}

/// The `parse` role.
pub struct ParseWorker {
    pub deps: Deps,
}

#[async_trait]
impl JobWorker for ParseWorker {
    type Job = WebhookReceived;

    async fn handle(&self, job: WebhookReceived, _: &Delivery) -> Result<(), JobError> {
        super::process_event(&self.deps.db, self.deps.broker.as_ref(), job.event_id)
            .await
            .map(|_| ())
    }

    fn batch_size(&self) -> usize {
        super::batch_size(&self.deps.db)
    }

    /// What has queued up on a lane, as one transaction (DESIGN §2: one
    /// transaction per event "where possible"; a batch keeps every event's
    /// rows atomic and amortises the commit and the round trips).
    async fn handle_batch(
        &self,
        jobs: Vec<TypedJob<'_, WebhookReceived>>,
    ) -> Result<BatchOutcome, JobError> {
        let ids: Vec<_> = jobs.iter().map(|j| j.job.event_id).collect();
        super::process_events(&self.deps.db, self.deps.broker.as_ref(), &ids)
            .await
            .map(|_| BatchOutcome::AllDone)
    }

    /// Out of attempts (or refused for good): the event must not stay
    /// `received`, or the relay would re-publish it forever. `failed` keeps
    /// the error, and `wapipe replay --status failed` brings it back.
    async fn on_dead_letter(&self, job: WebhookReceived, error: &str) -> Result<(), JobError> {
        super::mark_failed(&self.deps.db, job.event_id, error).await
    }
}
