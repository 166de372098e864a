//! WhatsApp calls (the `calls` field): each `calls[]` event (`connect`,
//! `terminate`) and call status (`statuses[]` of type `call`: `RINGING`,
//! `ACCEPTED`, `REJECTED`) becomes or updates the `calls` row of its
//! call id, in the customer's chat, and a `call.updated` event there.
//!
//! - The row is created with `ON CONFLICT DO NOTHING` on (config, call id).
//! - A status applies only over a lower rank (ringing < connected or
//!   accepted < ended), in one conditional UPDATE; the end (start, end,
//!   duration) is written once. So a replay, or a `connect` arriving after
//!   the `terminate`, changes nothing, and writes no event.
//! - A call opens no 24-hour window and moves no message counter.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Func, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use serde_json::Value;
use uuid::Uuid;
use wapipe_domain::events as ev;
use wapipe_shared::entities::calls::{self, Column as K};
use wapipe_shared::whatsapp::{Contact, array, id_at, lenient_i64, meta_timestamp, str_at};

use super::chats::chat_of;
use super::customers::{Sender, customer_without_message};
use super::extract::clean_json;

pub(super) const FIELD: &str = "calls";

/// What one change did to calls.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Call events and statuses that created or changed a row.
    pub(super) changed: u64,
    /// Those without a call id or a customer: kept raw only.
    pub(super) skipped: u64,
}

/// One call event or status, read leniently.
struct CallUpdate {
    call_id: String,
    direction: Option<&'static str>,
    from: Option<String>,
    to: Option<String>,
    status: String,
    rank: i32,
    at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    duration: Option<i32>,
    /// Whose call: the customer's number (or BSUID).
    customer: Sender,
}

/// A status's rank: a status applies only over a lower one.
fn rank(status: &str) -> i32 {
    match status {
        "ringing" => 1,
        "connected" | "accepted" => 2,
        _ => 3, // completed, failed, rejected, and any other end
    }
}

fn direction(v: &Value) -> Option<&'static str> {
    match str_at(v, "direction")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("USER_INITIATED") => Some("inbound"),
        Some("BUSINESS_INITIATED") => Some("outbound"),
        _ => None,
    }
}

/// The customer of a call: the caller of an inbound call, the callee of an
/// outbound one, else the change's only contact.
fn customer_of(contacts: &[Contact], wa_id: Option<String>) -> Sender {
    let contact = contacts.first().filter(|_| contacts.len() == 1);
    Sender {
        wa_id: wa_id.or_else(|| contact.and_then(|c| c.wa_id.clone())),
        user_id: contact.and_then(|c| c.user_id.clone()),
        name: contact.and_then(|c| c.name.clone()),
        username: contact.and_then(|c| c.username.clone()),
        parent_user_id: contact.and_then(|c| c.parent_user_id.clone()),
    }
}

fn from_event(v: &Value, contacts: &[Contact]) -> Option<CallUpdate> {
    let call_id = id_at(v.get("id"))?;
    let dir = direction(v);
    let from = id_at(v.get("from"));
    let to = id_at(v.get("to"));
    let status = match str_at(v, "event").map(str::to_ascii_lowercase).as_deref() {
        Some("connect") => "connected".to_owned(),
        // A terminate says how it ended; without a status it just ended.
        Some("terminate") => str_at(v, "status")
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| "ended".to_owned()),
        _ => return None,
    };
    let customer = match dir {
        Some("inbound") => from.clone(),
        Some("outbound") => to.clone(),
        _ => None,
    };
    let ended = status != "connected";
    Some(CallUpdate {
        call_id,
        direction: dir,
        rank: rank(&status),
        at: meta_timestamp(v.get("timestamp")),
        started_at: meta_timestamp(v.get("start_time")).filter(|_| ended),
        ended_at: meta_timestamp(v.get("end_time")).filter(|_| ended),
        duration: lenient_i64(v.get("duration"))
            .filter(|_| ended)
            .and_then(|d| i32::try_from(d).ok()),
        status: super::extract::clean_str(&status),
        from,
        to,
        customer: customer_of(contacts, customer),
    })
}

fn from_status(v: &Value, contacts: &[Contact]) -> Option<CallUpdate> {
    if !str_at(v, "type").is_some_and(|t| t.eq_ignore_ascii_case("call")) {
        return None;
    }
    let call_id = id_at(v.get("id"))?;
    let status = str_at(v, "status")?.to_ascii_lowercase();
    let recipient = id_at(v.get("recipient_id"));
    Some(CallUpdate {
        call_id,
        // Call statuses report the progress of calls the business placed.
        direction: Some("outbound"),
        rank: rank(&status),
        status: super::extract::clean_str(&status),
        at: meta_timestamp(v.get("timestamp")),
        started_at: None,
        ended_at: None,
        duration: None,
        from: None,
        to: recipient.clone(),
        customer: customer_of(contacts, recipient),
    })
}

/// Applies a `calls` change for one config: its `calls[]` and call
/// `statuses[]`, in order, and records `call.updated` for each row that
/// changed, in the batch's transaction.
pub(super) async fn apply<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<Applied, DbErr> {
    let contacts: Vec<Contact> = array(value, "contacts")
        .iter()
        .map(Contact::from_value)
        .collect();
    let errors = value.get("errors").filter(|e| e.is_array()).map(clean_json);
    let updates = array(value, "calls")
        .iter()
        .map(|c| from_event(c, &contacts))
        .chain(
            array(value, "statuses")
                .iter()
                .map(|s| from_status(s, &contacts)),
        );
    let mut out = Applied::default();
    let mut calls = Vec::new();
    let mut new_chats = Vec::new();
    for u in updates {
        let Some(u) = u.filter(|u| u.customer.key().is_some()) else {
            out.skipped += 1;
            continue;
        };
        let errors = errors.clone().filter(|_| u.rank == 3);
        let (call, new_chat) = upsert(db, config_id, &u, errors, now).await?;
        new_chats.extend(new_chat);
        if let Some(call) = call {
            out.changed += 1;
            calls.push(ev::call_event(&call));
        }
    }
    // A chat a call created is announced before its call.
    let mut events = ev::chat_events(db, ev::CHAT_CREATED, &new_chats).await?;
    events.extend(calls);
    ev::record(db, &events).await?;
    Ok(out)
}

/// Creates or advances the call's row. Returns the row when something
/// changed, and the chat when it was created now.
async fn upsert<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    u: &CallUpdate,
    errors: Option<Value>,
    now: DateTime<Utc>,
) -> Result<(Option<calls::Model>, Option<Uuid>), DbErr> {
    let customer = customer_without_message(db, config_id, &u.customer, now).await?;
    let (chat, created) = chat_of(db, &customer, now).await?;
    let new_chat = created.then_some(chat.id);
    let at = u.at.unwrap_or(now).min(now);
    let inserted = calls::Entity::insert(calls::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(at),
        updated_at: Set(now),
        config_id: Set(config_id),
        chat_id: Set(chat.id),
        customer_id: Set(customer.id),
        call_id: Set(u.call_id.clone()),
        direction: Set(u.direction.map(str::to_owned)),
        from: Set(u.from.clone()),
        to: Set(u.to.clone()),
        status: Set(u.status.clone()),
        status_rank: Set(u.rank),
        started_at: Set(u.started_at.or((u.rank == 2).then_some(at))),
        ended_at: Set(u.ended_at.or((u.rank == 3).then_some(at))),
        duration: Set(u.duration),
        errors: Set(errors.clone()),
    })
    .on_conflict(
        OnConflict::columns([K::ConfigId, K::CallId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    let scope = || {
        calls::Entity::update_many()
            .filter(K::ConfigId.eq(config_id))
            .filter(K::CallId.eq(u.call_id.as_str()))
    };
    let mut changed = inserted > 0;
    if !changed {
        // Fill what an earlier event could not know, then the status if it
        // ranks higher; the end is written with the status that ends it.
        let coalesce = |col: K, v: Option<String>| Func::coalesce([Expr::col(col), Expr::value(v)]);
        let mut q = scope()
            .col_expr(K::Status, Expr::value(u.status.as_str()))
            .col_expr(K::StatusRank, Expr::value(u.rank))
            .col_expr(K::UpdatedAt, Expr::value(now))
            .col_expr(K::From, coalesce(K::From, u.from.clone()).into())
            .col_expr(K::To, coalesce(K::To, u.to.clone()).into())
            .col_expr(
                K::Direction,
                coalesce(K::Direction, u.direction.map(str::to_owned)).into(),
            );
        if u.rank == 3 {
            q = q
                .col_expr(K::StartedAt, time_or_kept(K::StartedAt, u.started_at))
                .col_expr(K::EndedAt, Expr::value(u.ended_at.unwrap_or(at)))
                .col_expr(K::Duration, Expr::value(u.duration))
                .col_expr(
                    K::Errors,
                    Expr::value(sea_orm::Value::Json(errors.map(Box::new))),
                );
        } else if u.rank == 2 {
            q = q.col_expr(
                K::StartedAt,
                Func::coalesce([Expr::col(K::StartedAt), Expr::value(at)]).into(),
            );
        }
        changed = q
            .filter(K::StatusRank.lt(u.rank))
            .exec(db)
            .await?
            .rows_affected
            > 0;
    }
    if !changed {
        return Ok((None, new_chat));
    }
    let call = calls::Entity::find()
        .filter(K::ConfigId.eq(config_id))
        .filter(K::CallId.eq(u.call_id.as_str()))
        .one(db)
        .await?;
    Ok((call, new_chat))
}

/// `value` when given, else the column as it is.
fn time_or_kept(col: K, value: Option<DateTime<Utc>>) -> sea_orm::sea_query::SimpleExpr {
    match value {
        Some(v) => Expr::value(v),
        None => Expr::col(col),
    }
}
