//! Settling events: moving them out of `received` once, to `processed`,
//! `ignored`, `rejected` or (after the last attempt) `failed`, and
//! counting them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::db::with_values;
use wapipe_shared::entities::webhook_events::{self, Column, EventStatus};

use super::extract::clean_json;
use super::now;
use super::summary::{METRIC_EVENTS_TOTAL, Summary};
use crate::runtime::JobError;

/// What the worker made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Processed,
    Ignored,
    Rejected,
    /// Another delivery settled it first.
    AlreadyDone,
}

impl Settled {
    /// What settling an event as `status` made of it.
    fn from_status(status: &EventStatus) -> Self {
        match status {
            EventStatus::Ignored => Settled::Ignored,
            EventStatus::Rejected => Settled::Rejected,
            _ => Settled::Processed,
        }
    }
}

/// Settles events and returns, per event, what this call made of it
/// (`None` where another delivery settled it first).
pub(super) async fn settle(
    db: &DatabaseConnection,
    events: &[Settlement],
) -> Result<Vec<Option<Settled>>, JobError> {
    let done = settle_all(db, events).await?;
    Ok(events
        .iter()
        .zip(done)
        .map(|((_, status, _, _), done)| done.then(|| Settled::from_status(status)))
        .collect())
}

/// A parsed event's settlement: `ignored` when no config routes any of its
/// changes, else `processed`, with its summary as `processed_data`.
pub(super) fn settlement(event_id: Uuid, summary: &Summary) -> Settlement {
    let (status, error) = if summary.routed_changes == 0 {
        (
            EventStatus::Ignored,
            Some("no config routes this event".to_owned()),
        )
    } else {
        (EventStatus::Processed, None)
    };
    // Field names and other strings come from the body: no NULs in jsonb.
    let data = serde_json::to_value(summary).ok().map(|v| clean_json(&v));
    (event_id, status, data, error)
}

/// One event's settlement: id, final status, `processed_data`, error.
pub(super) type Settlement = (Uuid, EventStatus, Option<Value>, Option<String>);

/// Moves events out of `received`, each in one conditional UPDATE (of two
/// concurrent deliveries, one wins), all in one transaction. Returns, per
/// event, whether this call did it.
async fn settle_all(db: &DatabaseConnection, events: &[Settlement]) -> Result<Vec<bool>, JobError> {
    let now = now();
    let done = if db.get_database_backend() == DbBackend::Postgres && events.len() > 1 {
        settle_postgres(db, events, now).await?
    } else {
        settle_each(db, events, now).await?
    };
    for ((_, status, _, _), done) in events.iter().zip(&done) {
        if *done {
            metrics::counter!(METRIC_EVENTS_TOTAL, "status" => status.as_str()).increment(1);
        }
    }
    Ok(done)
}

/// A batch's settlements in one statement (`UPDATE … FROM (VALUES …)`):
/// one round trip instead of one per event. The row list is padded to a
/// power of two by repeating the last row (a target matched twice is
/// updated once), so the statement keeps a few cached shapes.
async fn settle_postgres(
    db: &DatabaseConnection,
    events: &[Settlement],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, JobError> {
    let rows = events
        .iter()
        .map(|(id, status, data, error)| {
            vec![
                (*id).into(),
                status.as_str().to_owned().into(),
                data.clone().into(),
                error.clone().into(),
            ]
        })
        .collect();
    let settled: HashSet<Uuid> = with_values(
        db,
        "UPDATE webhook_events AS w SET status = v.status, processed_at = $1, updated_at = $1, \
         processed_data = v.data, error = v.error, attempts = w.attempts + 1 \
         FROM {values} WHERE w.id = v.id AND w.status = 'received' RETURNING w.id",
        vec![now.into()],
        &[
            ("id", "uuid"),
            ("status", "text"),
            ("data", "jsonb"),
            ("error", "text"),
        ],
        rows,
    )
    .await
    .map_err(JobError::from)?
    .iter()
    .map(|r| r.try_get_by_index::<Uuid>(0))
    .collect::<Result<_, _>>()
    .map_err(JobError::from)?;
    Ok(events.iter().map(|e| settled.contains(&e.0)).collect())
}

/// Settlements one UPDATE each, in one transaction.
async fn settle_each(
    db: &DatabaseConnection,
    events: &[Settlement],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, JobError> {
    let txn = wapipe_shared::db::begin_write(db)
        .await
        .map_err(JobError::from)?;
    let mut done = Vec::with_capacity(events.len());
    for (event_id, status, data, error) in events {
        let res = webhook_events::Entity::update_many()
            .col_expr(Column::Status, Expr::value(status.as_str()))
            .col_expr(Column::ProcessedAt, Expr::value(now))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .col_expr(Column::ProcessedData, Expr::value(data.clone()))
            .col_expr(Column::Error, Expr::value(error.clone()))
            .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
            .filter(Column::Id.eq(*event_id))
            .filter(Column::Status.eq(EventStatus::Received))
            .exec(&txn)
            .await
            .map_err(JobError::from)?;
        done.push(res.rows_affected > 0);
    }
    txn.commit().await.map_err(JobError::from)?;
    Ok(done)
}

/// After the last attempt the event is marked `failed` with the error, so
/// `wapipe replay --status failed` can bring it back once the cause is
/// fixed. Only a `received` event is marked: one settled meanwhile stays.
pub async fn mark_failed(
    db: &DatabaseConnection,
    event_id: Uuid,
    error: &str,
) -> Result<(), JobError> {
    let now = now();
    webhook_events::Entity::update_many()
        .col_expr(Column::Status, Expr::value(EventStatus::Failed.as_str()))
        .col_expr(Column::Error, Expr::value(error))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
        .filter(Column::Id.eq(event_id))
        .filter(Column::Status.eq(EventStatus::Received))
        .exec(db)
        .await
        .map_err(JobError::from)?;
    metrics::counter!(METRIC_EVENTS_TOTAL, "status" => EventStatus::Failed.as_str()).increment(1);
    Ok(())
}
