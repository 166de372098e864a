//! The parse worker: consumes `webhook.received` and settles the raw event.
//! An event is processed at most once in effect: the status moves out of
//! `received` in one conditional UPDATE, so a redelivered or re-published
//! job finds nothing left to do.
//!
//! Today it records what the event holds (entries, changes, fields) and
//! marks it `processed`, `ignored` (no config routes it) or `rejected`
//! (a signed body that is not an envelope). Turning messages and statuses
//! into rows is the next step (the parse/status issue).

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::entities::webhook_events::{self, Column, EventStatus};
use wapipe_shared::jobs::WebhookReceived;

use crate::runtime::JobError;

fn db_err(e: sea_orm::DbErr) -> JobError {
    JobError::Retryable(format!("database: {e}"))
}

/// What the worker made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Processed,
    Ignored,
    Rejected,
    /// Another delivery settled it first.
    AlreadyDone,
}

pub fn decode(body: &[u8]) -> Result<WebhookReceived, JobError> {
    serde_json::from_slice(body)
        .map_err(|e| JobError::Permanent(format!("not a webhook.received job: {e}")))
}

fn summarize(v: &Value) -> Value {
    let entries = v.get("entry").and_then(Value::as_array);
    let mut fields: Vec<String> = Vec::new();
    let (mut changes, mut messages, mut statuses) = (0usize, 0usize, 0usize);
    for e in entries.into_iter().flatten() {
        for c in e
            .get("changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            changes += 1;
            if let Some(f) = c.get("field").and_then(Value::as_str) {
                if !fields.iter().any(|x| x == f) {
                    fields.push(f.to_owned());
                }
            }
            let count = |k: &str| {
                c.pointer(&format!("/value/{k}"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            };
            messages += count("messages");
            statuses += count("statuses");
        }
    }
    json!({
        "entries": entries.map_or(0, Vec::len),
        "changes": changes,
        "fields": fields,
        "messages": messages,
        "statuses": statuses,
    })
}

pub async fn process_event(db: &DatabaseConnection, event_id: Uuid) -> Result<Settled, JobError> {
    let ev = webhook_events::Entity::find_by_id(event_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| JobError::Permanent(format!("webhook event {event_id} does not exist")))?;
    if ev.status != EventStatus::Received {
        return Ok(Settled::AlreadyDone);
    }
    let parsed: Result<Value, _> = serde_json::from_slice(&ev.raw_body);
    let (status, settled, data, error) = match parsed {
        Ok(v) if v.is_object() => {
            let data = summarize(&v);
            if ev.config_id.is_some() {
                (EventStatus::Processed, Settled::Processed, Some(data), None)
            } else {
                (
                    EventStatus::Ignored,
                    Settled::Ignored,
                    Some(data),
                    Some("no config routes this event".to_owned()),
                )
            }
        }
        Ok(_) => (
            EventStatus::Rejected,
            Settled::Rejected,
            None,
            Some("body is not a JSON object".to_owned()),
        ),
        Err(e) => (
            EventStatus::Rejected,
            Settled::Rejected,
            None,
            Some(format!("body is not valid JSON: {e}")),
        ),
    };
    let now = Utc::now();
    // Conditional on `received`: of two concurrent deliveries, one wins.
    let res = webhook_events::Entity::update_many()
        .col_expr(Column::Status, Expr::value(status.as_str()))
        .col_expr(Column::ProcessedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .col_expr(Column::ProcessedData, Expr::value(data))
        .col_expr(Column::Error, Expr::value(error))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
        .filter(Column::Id.eq(event_id))
        .filter(Column::Status.eq(EventStatus::Received))
        .exec(db)
        .await
        .map_err(db_err)?;
    if res.rows_affected == 0 {
        return Ok(Settled::AlreadyDone);
    }
    metrics::counter!("wapipe_parse_events_total", "status" => status.as_str()).increment(1);
    Ok(settled)
}

/// After the last attempt the event is marked `failed` with the error, so
/// `wapipe replay --status failed` can bring it back once the cause is fixed.
pub async fn mark_failed(
    db: &DatabaseConnection,
    event_id: Uuid,
    error: &str,
) -> Result<(), JobError> {
    let now = Utc::now();
    webhook_events::Entity::update_many()
        .col_expr(Column::Status, Expr::value(EventStatus::Failed.as_str()))
        .col_expr(Column::Error, Expr::value(error))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(event_id))
        .filter(Column::Status.eq(EventStatus::Received))
        .exec(db)
        .await
        .map_err(db_err)?;
    Ok(())
}
