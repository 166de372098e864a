//! wapipe's workers: the runtime that consumes, acks, retries and
//! dead-letters jobs, and one module per worker. A worker gets a decoded job
//! and answers Ok, a retryable error or a permanent error; it never touches
//! acks or retries itself (DESIGN §2).

pub mod outbound;
pub mod parse;
pub mod runtime;
pub mod status;

use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::DatabaseConnection;
use wapipe_shared::broker::{Broker, Delivery};

use crate::runtime::{BatchOutcome, JobError, Worker};

/// The worker roles this build runs (`wapipe workers --roles …`).
pub const ALL_ROLES: &[&str] = &["parse", "status", "outbound"];

/// What every worker may use.
#[derive(Clone)]
pub struct Context {
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
}

/// The worker for a role name, or `None` if there is no such role.
pub fn make(role: &str, ctx: Context) -> Option<Arc<dyn Worker>> {
    match role {
        "parse" => Some(Arc::new(ParseWorker { ctx })),
        "status" => Some(Arc::new(status::StatusWorker { ctx })),
        // Without `make_with`, the outbound role reads its settings from
        // the environment (GRAPH_API_BASE, WAPIPE_SECRET_KEY, ...).
        "outbound" => make_with(role, ctx, &outbound::OutboundSettings::from_env()),
        _ => None,
    }
}

/// Like [`make`], with the outbound role's settings (Graph endpoint,
/// secret key, limits) given by the caller.
pub fn make_with(
    role: &str,
    ctx: Context,
    outbound: &outbound::OutboundSettings,
) -> Option<Arc<dyn Worker>> {
    match role {
        "outbound" => match outbound::OutboundWorker::new(ctx, outbound.clone()) {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                tracing::error!(error = %e, "outbound role cannot start");
                None
            }
        },
        other => make(other, ctx),
    }
}

/// Tasks that must run beside a role's worker, until `shutdown`: the
/// outbound sweep (DESIGN §3) for `outbound`, nothing for the others.
pub fn background_tasks(
    role: &str,
    ctx: &Context,
    outbound: &outbound::OutboundSettings,
    shutdown: tokio_util::sync::CancellationToken,
) -> Vec<futures::future::BoxFuture<'static, ()>> {
    match role {
        "outbound" => vec![Box::pin(outbound::run_sweep(
            ctx.db.clone(),
            ctx.broker.clone(),
            outbound.sweep,
            outbound.sending_timeout,
            shutdown,
        ))],
        _ => Vec::new(),
    }
}

struct ParseWorker {
    ctx: Context,
}

#[async_trait]
impl Worker for ParseWorker {
    fn name(&self) -> &'static str {
        "parse"
    }

    async fn handle(&self, job: &Delivery) -> Result<(), JobError> {
        let job = parse::decode(&job.body)?;
        parse::process_event(&self.ctx.db, self.ctx.broker.as_ref(), job.event_id)
            .await
            .map(|_| ())
    }

    fn batch_size(&self) -> usize {
        parse::batch_size(&self.ctx.db)
    }

    /// What has queued up on a lane, as one transaction (DESIGN §2: one
    /// transaction per event "where possible"; a batch keeps every event's
    /// rows atomic and amortises the commit and the round trips).
    async fn handle_batch(&self, jobs: &[Delivery]) -> Result<BatchOutcome, JobError> {
        let ids = jobs
            .iter()
            .map(|j| parse::decode(&j.body).map(|w| w.event_id))
            .collect::<Result<Vec<_>, _>>()?;
        parse::process_events(&self.ctx.db, self.ctx.broker.as_ref(), &ids)
            .await
            .map(|_| BatchOutcome::AllDone)
    }

    /// Out of attempts (or refused for good): the event must not stay
    /// `received`, or the relay would re-publish it forever. `failed` keeps
    /// the error, and `wapipe replay --status failed` brings it back.
    async fn on_dead_letter(&self, job: &Delivery, error: &str) -> Result<(), JobError> {
        match parse::decode(&job.body) {
            Ok(job) => parse::mark_failed(&self.ctx.db, job.event_id, error).await,
            // Not a webhook.received job at all: there is no event to mark.
            Err(_) => Ok(()),
        }
    }
}
