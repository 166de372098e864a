//! The `scenario` role: the chatbot's worker over `message.inbound` jobs.
//! Each job carries one lane's inbound messages in order; each message
//! goes through the engine (`wapipe_domain::scenarios::engine`), which
//! holds every chatbot rule and is idempotent per message, so a retried
//! or redelivered job sends nothing twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wapipe_domain::scenarios::engine::{self, EngineSettings};
use wapipe_shared::broker::Delivery;
use wapipe_shared::jobs::{InboundMessages, Queue};

use crate::registry::{BuildError, Deps, Registration, no_background};
use crate::runtime::{JobError, JobWorker, Worker, typed};

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
    }))
}

/// The `scenario` role.
pub struct ScenarioWorker {
    pub deps: Deps,
    pub settings: EngineSettings,
}

#[async_trait]
impl JobWorker for ScenarioWorker {
    type Job = InboundMessages;

    async fn handle(&self, job: InboundMessages, _: &Delivery) -> Result<(), JobError> {
        for m in &job.messages {
            match engine::handle(
                &self.deps.db,
                self.deps.broker.as_ref(),
                m.message_id,
                &self.settings,
            )
            .await
            {
                Ok(_) => {}
                // One message's broken flow must not hold back the others
                // of the lane: it gets no reply, and the fault is counted.
                Err(e) if e.is_permanent() => {
                    metrics::counter!(METRIC_FAULTS_TOTAL).increment(1);
                    tracing::error!(message = %m.message_id, error = %e, "scenario: no reply");
                }
                // The whole job comes back; the messages already handled
                // find themselves consumed.
                Err(e) => return Err(JobError::retryable(e)),
            }
        }
        Ok(())
    }
}
