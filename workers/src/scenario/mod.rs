//! The `scenario` role: the chatbot's worker over `message.inbound` jobs.
//! Each job carries one lane's inbound messages in order; each message
//! goes through the engine (`wapipe_domain::scenarios::engine`), which
//! holds every chatbot rule and is idempotent per message, so a retried
//! or redelivered job sends nothing twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, stream};
use uuid::Uuid;
use wapipe_domain::scenarios::engine::{self, EngineSettings};
use wapipe_shared::broker::Delivery;
use wapipe_shared::jobs::{InboundMessages, Queue};

use crate::registry::{BuildError, Deps, Registration, no_background};
use crate::runtime::{JobError, JobWorker, Worker, concurrent_db_tasks, typed};

pub const REGISTRATION: Registration = Registration {
    queue: Queue::Scenario,
    build,
    background: no_background,
};

/// Messages the engine could not answer because of a fault in the stored
/// flow (e.g. an item edited by hand into something Meta refuses).
pub const METRIC_FAULTS_TOTAL: &str = "wapipe_scenario_faults_total";

fn build(deps: &Deps) -> Result<Arc<dyn Worker>, BuildError> {
    wapipe_domain::scenarios::metrics::register();
    metrics::counter!(METRIC_FAULTS_TOTAL).increment(0);
    Ok(typed(ScenarioWorker {
        deps: deps.clone(),
        settings: EngineSettings {
            max_age: Duration::from_secs(deps.settings.scenario_max_age_s),
        },
        permits: tokio::sync::Semaphore::new(concurrent_db_tasks(deps.settings.db_pool)),
    }))
}

/// The `scenario` role.
pub struct ScenarioWorker {
    pub deps: Deps,
    pub settings: EngineSettings,
    permits: tokio::sync::Semaphore,
}

#[async_trait]
impl JobWorker for ScenarioWorker {
    type Job = InboundMessages;

    async fn handle(&self, job: InboundMessages, _: &Delivery) -> Result<(), JobError> {
        // A job holds one lane's messages, from many customers. Each
        // customer's messages stay in order; different customers do not
        // wait for each other, so a lane's backlog is answered at the pace
        // of its busiest customer, not of the sum of all of them.
        let mut groups: Vec<(Uuid, Vec<Uuid>)> = Vec::new();
        for m in &job.messages {
            match groups.iter_mut().find(|(c, _)| *c == m.customer_id) {
                Some((_, ids)) => ids.push(m.message_id),
                None => groups.push((m.customer_id, vec![m.message_id])),
            }
        }
        let results: Vec<Result<(), JobError>> = stream::iter(groups)
            .map(|(_, ids)| self.handle_customer(ids))
            .buffer_unordered(CUSTOMERS_AT_ONCE)
            .collect()
            .await;
        // Every customer was tried; if one must be retried the whole job
        // comes back, and the messages already handled find themselves
        // consumed.
        results.into_iter().collect()
    }
}

/// Customers of one job answered at once.
const CUSTOMERS_AT_ONCE: usize = 8;

impl ScenarioWorker {
    /// One customer's messages of a job, in order.
    async fn handle_customer(&self, ids: Vec<Uuid>) -> Result<(), JobError> {
        // Closed only if the worker is dropped, which ends this job anyway.
        let _permit = self.permits.acquire().await.map_err(JobError::retryable)?;
        for id in ids {
            match engine::handle(&self.deps.db, self.deps.broker.as_ref(), id, &self.settings).await
            {
                Ok(_) => {}
                // One message's broken flow must not hold back the others
                // of the lane: it gets no reply, and the fault is counted.
                Err(e) if e.is_permanent() => {
                    metrics::counter!(METRIC_FAULTS_TOTAL).increment(1);
                    tracing::error!(message = %id, error = %e, "scenario: no reply");
                }
                Err(e) => return Err(JobError::retryable(e)),
            }
        }
        Ok(())
    }
}
