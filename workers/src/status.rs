//! The status worker: consumes `status.receipt` and applies the pending
//! receipts of one wamid ([`wapipe_domain::receipts`], DESIGN invariant 4),
//! then tells connected clients when the status moved.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use wapipe_domain::receipts::apply_pending_receipts;
use wapipe_shared::broker::Delivery;
use wapipe_shared::jobs::{Queue, REALTIME_MESSAGE_STATUS, RealtimeEvent, StatusReceipt};

use crate::registry::{BuildError, Deps, Registration, no_background};
use crate::runtime::{JobError, JobWorker, Worker, typed};

pub use wapipe_domain::receipts::METRIC_RECEIPTS_TOTAL;

pub const REGISTRATION: Registration = Registration {
    queue: Queue::Status,
    build,
    background: no_background,
};

fn build(deps: &Deps) -> Result<Arc<dyn Worker>, BuildError> {
    Ok(typed(StatusWorker { deps: deps.clone() }))
}

/// The `status` role.
pub struct StatusWorker {
    pub deps: Deps,
}

#[async_trait]
impl JobWorker for StatusWorker {
    type Job = StatusReceipt;

    async fn handle(&self, job: StatusReceipt, _: &Delivery) -> Result<(), JobError> {
        let applied =
            apply_pending_receipts(&self.deps.db, job.config_id, &job.provider_message_id)
                .await
                .map_err(JobError::retryable)?;
        if applied.changed() {
            let ev = RealtimeEvent {
                event: REALTIME_MESSAGE_STATUS.to_owned(),
                config_id: job.config_id,
                chat_id: applied.chat_id,
                message_id: applied.message_id,
                data: json!({
                    "provider_message_id": job.provider_message_id,
                    "status": applied.status,
                    "error_code": applied.error_code,
                }),
            };
            // Real-time updates are best effort: a retry would find the
            // receipts applied and publish nothing, so failing the job
            // gains nothing.
            if let Err(e) = self
                .deps
                .broker
                .publish_realtime(RealtimeEvent::encode(&[ev]))
                .await
            {
                tracing::warn!(error = %e, "cannot publish message.status");
            }
        }
        Ok(())
    }
}
