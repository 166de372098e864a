//! wapipe's workers: the runtime that consumes, acks, retries and
//! dead-letters jobs, and one module per worker. A worker gets a decoded job
//! and answers Ok, a retryable error or a permanent error; it never touches
//! acks or retries itself (DESIGN §2).

pub mod parse;
pub mod runtime;

use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::DatabaseConnection;
use wapipe_shared::broker::{Broker, Delivery};

use crate::runtime::{JobError, Worker};

/// The worker roles this build runs (`wapipe workers --roles …`).
pub const ALL_ROLES: &[&str] = &["parse"];

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
        _ => None,
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
        parse::process_event(&self.ctx.db, job.event_id)
            .await
            .map(|_| ())
    }
}
