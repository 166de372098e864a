//! The outbox relay: the database is the source of truth, so any event still
//! `received` is re-published — all of them at startup (an embedded queue
//! starts empty, and a process may have died between commit and publish),
//! then periodically those whose publish never confirmed within the grace
//! period, or whose publish is so old the job was evidently lost. Workers are
//! idempotent, so a second publish is harmless. Also home of `wapipe replay`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;
use wapipe_shared::broker::Broker;
use wapipe_shared::entities::webhook_events::{self, Column, EventStatus};
use wapipe_shared::jobs::{Job, WebhookReceived};
use wapipe_shared::metrics as m;

use crate::envelope;
use crate::publisher::stamp;

const PAGE: u64 = 500;

#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// How long a fresh event may wait for its first publish.
    pub grace: Duration,
    /// How long after a confirmed publish an unprocessed event counts as lost.
    pub stale_after: Duration,
}

impl RelaySettings {
    pub fn from_grace(grace: Duration) -> Self {
        Self {
            grace,
            stale_after: (grace * 10).max(Duration::from_secs(60)),
        }
    }
}

/// Which `received` events a pass re-publishes.
#[derive(Debug, Clone, Copy)]
enum Due {
    All,
    OlderThan {
        unpublished_before: DateTime<Utc>,
        published_before: DateTime<Utc>,
    },
}

fn lane_key_of(id: Uuid, raw: &[u8]) -> String {
    let fallback = id.to_string();
    match envelope::inspect(raw) {
        Ok(r) => r.lane_key(&fallback),
        Err(_) => fallback,
    }
}

/// Publishes the given events and stamps those the broker confirmed.
pub async fn publish_events(
    db: &DatabaseConnection,
    broker: &Arc<dyn Broker>,
    events: Vec<(Uuid, Vec<u8>)>,
) -> usize {
    let sends = events.into_iter().map(|(id, raw)| {
        let broker = broker.clone();
        async move {
            let job = WebhookReceived {
                event_id: id,
                lane_key: lane_key_of(id, &raw),
            }
            .to_outbound();
            broker.publish(job).await.ok().map(|_| id)
        }
    });
    let ok: Vec<Uuid> = join_all(sends).await.into_iter().flatten().collect();
    stamp(db, &ok).await;
    ok.len()
}

async fn pass(db: &DatabaseConnection, broker: &Arc<dyn Broker>, due: Due) -> Result<usize, DbErr> {
    let mut after: Option<Uuid> = None;
    let mut total = 0;
    loop {
        let mut q = webhook_events::Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::RawBody)
            .filter(Column::Status.eq(EventStatus::Received))
            .order_by_asc(Column::Id)
            .limit(PAGE);
        if let Due::OlderThan {
            unpublished_before,
            published_before,
        } = due
        {
            q = q.filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(Column::PublishedAt.is_null())
                            .add(Column::ReceivedAt.lt(unpublished_before)),
                    )
                    .add(Column::PublishedAt.lt(published_before)),
            );
        }
        if let Some(a) = after {
            q = q.filter(Column::Id.gt(a));
        }
        let rows: Vec<(Uuid, Vec<u8>)> = q.into_tuple().all(db).await?;
        let n = rows.len();
        after = rows.last().map(|r| r.0);
        let published = publish_events(db, broker, rows).await;
        total += published;
        if published < n {
            // The broker refuses; stop this pass, the next one retries.
            break;
        }
        if (n as u64) < PAGE {
            break;
        }
    }
    if total > 0 {
        metrics::counter!(m::RELAY_REPUBLISHED).increment(total as u64);
        tracing::info!(events = total, "relay re-published unprocessed events");
    }
    Ok(total)
}

/// Backlog gauges: how many events are unprocessed and how old the oldest is.
pub async fn report_backlog(db: &DatabaseConnection) -> Result<(u64, f64), DbErr> {
    let backlog = webhook_events::Entity::find()
        .filter(Column::Status.eq(EventStatus::Received))
        .count(db)
        .await?;
    let oldest: Option<DateTime<Utc>> = webhook_events::Entity::find()
        .select_only()
        .column(Column::ReceivedAt)
        .filter(Column::Status.eq(EventStatus::Received))
        .order_by_asc(Column::ReceivedAt)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    let age = oldest
        .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    metrics::gauge!(m::RELAY_BACKLOG).set(backlog as f64);
    metrics::gauge!(m::RELAY_OLDEST_AGE_SECONDS).set(age);
    Ok((backlog, age))
}

pub async fn run(
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    settings: RelaySettings,
    shutdown: tokio_util::sync::CancellationToken,
) {
    metrics::counter!(m::RELAY_REPUBLISHED).increment(0);
    // Startup: whatever is still `received` may sit in no queue at all.
    let mut startup_done = false;
    let tick = (settings.grace / 3).clamp(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let due = if startup_done {
            let now = Utc::now();
            Due::OlderThan {
                unpublished_before: now - settings.grace,
                published_before: now - settings.stale_after,
            }
        } else {
            Due::All
        };
        match pass(&db, &broker, due).await {
            Ok(_) => startup_done = true,
            Err(e) => tracing::warn!(error = %e, "relay pass failed; retrying"),
        }
        if let Err(e) = report_backlog(&db).await {
            tracing::debug!(error = %e, "backlog query failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no webhook event with id {0}")]
    NotFound(Uuid),
    #[error("only rejected or failed events can be replayed in bulk, not {0}")]
    BadStatus(&'static str),
    #[error(
        "the broker did not accept {failed} of {total} events; they stay `received` and the relay will retry"
    )]
    Unpublished { failed: usize, total: usize },
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

/// Puts events back to `received` and publishes them. The parse worker
/// then processes them again; being idempotent, it changes nothing that was
/// already applied.
async fn reset_and_publish(
    db: &DatabaseConnection,
    broker: &Arc<dyn Broker>,
    ids: Vec<Uuid>,
) -> Result<usize, ReplayError> {
    let mut total = 0;
    for chunk in ids.chunks(PAGE as usize) {
        webhook_events::Entity::update_many()
            .col_expr(Column::Status, Expr::value(EventStatus::Received.as_str()))
            .col_expr(Column::Error, Expr::value(Option::<String>::None))
            .col_expr(Column::Attempts, Expr::value(0))
            .col_expr(Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
        let rows: Vec<(Uuid, Vec<u8>)> = webhook_events::Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::RawBody)
            .filter(Column::Id.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        let n = rows.len();
        let ok = publish_events(db, broker, rows).await;
        if ok < n {
            return Err(ReplayError::Unpublished {
                failed: ids.len() - (total + ok),
                total: ids.len(),
            });
        }
        total += ok;
    }
    Ok(total)
}

pub async fn replay_event(
    db: &DatabaseConnection,
    broker: &Arc<dyn Broker>,
    id: Uuid,
) -> Result<usize, ReplayError> {
    let exists = webhook_events::Entity::find_by_id(id).count(db).await? > 0;
    if !exists {
        return Err(ReplayError::NotFound(id));
    }
    reset_and_publish(db, broker, vec![id]).await
}

pub async fn replay_status(
    db: &DatabaseConnection,
    broker: &Arc<dyn Broker>,
    status: EventStatus,
    since: Option<DateTime<Utc>>,
) -> Result<usize, ReplayError> {
    if !matches!(status, EventStatus::Rejected | EventStatus::Failed) {
        return Err(ReplayError::BadStatus(status.as_str()));
    }
    let mut q = webhook_events::Entity::find()
        .select_only()
        .column(Column::Id)
        .filter(Column::Status.eq(status))
        .order_by_asc(Column::Id);
    if let Some(s) = since {
        q = q.filter(Column::ReceivedAt.gte(s));
    }
    let ids: Vec<Uuid> = q.into_tuple().all(db).await?;
    reset_and_publish(db, broker, ids).await
}
