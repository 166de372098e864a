//! The parse worker: consumes `webhook.received` and turns each raw event
//! (`webhook_events.raw_body`) into customers, chats, conversations,
//! messages and status receipts, then fans out `status.receipt`,
//! `message.inbound` and real-time events, and settles the event.
//!
//! - Routing: each `entry[].changes[]` on its own, by
//!   `value.metadata.phone_number_id`, or by the WABA id (`entry[].id`) for
//!   changes without one (templates, account updates).
//! - One transaction per event; every row is written with `ON CONFLICT`,
//!   and counters move only for newly inserted messages, so the same event
//!   processed twice (a replay, a redelivery) changes no count.
//! - Fan-out happens after the commit and before the event is marked
//!   `processed`: a crash in between re-runs the event, whose writes are
//!   then no-ops, and publishes again (consumers are idempotent).
//! - Payloads are read leniently ([`wapipe_shared::whatsapp`]): unknown
//!   types and fields are stored and counted, wrong types never fail the
//!   event.

pub mod extract;
pub mod store;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::broker::{Broker, OutboundJob};
use wapipe_shared::entities::messages::MessageStatus;
use wapipe_shared::entities::webhook_events::{self, Column, EventStatus};
use wapipe_shared::entities::{chats, whatsapp_configs};
use wapipe_shared::jobs::{
    MessageInbound, REALTIME_CHAT_UPDATED, REALTIME_MESSAGE_CREATED, RealtimeEvent, StatusReceipt,
    WebhookReceived,
};
use wapipe_shared::whatsapp::{self as wa, Change, Contact, MetaError, Status};

use crate::runtime::JobError;
use extract::{Inbound, clean_json, extract_message};
use store::Sender;

/// Events settled, by final status.
pub const METRIC_EVENTS_TOTAL: &str = "wapipe_parse_events_total";
/// Changes seen, by field (known names, else `other`).
pub const METRIC_CHANGES_TOTAL: &str = "wapipe_parse_changes_total";
/// Things nobody has seen before, by kind.
pub const METRIC_UNKNOWN_TOTAL: &str = "wapipe_parse_unknown_total";
/// Inbound messages, by outcome: new, duplicate, skipped (no sender).
pub const METRIC_MESSAGES_TOTAL: &str = "wapipe_parse_messages_total";
/// Status receipts, by outcome: new, duplicate, skipped (no wamid).
pub const METRIC_STATUSES_TOTAL: &str = "wapipe_parse_statuses_total";
/// Meta's error objects seen, by where: value, message, status.
pub const METRIC_META_ERRORS_TOTAL: &str = "wapipe_parse_meta_errors_total";
/// Changes no config routes.
pub const METRIC_UNROUTABLE_TOTAL: &str = "wapipe_parse_unroutable_changes_total";
/// End to end: Meta's message timestamp to the committed row (DESIGN §7).
pub const METRIC_MESSAGE_LAG_SECONDS: &str = "wapipe_message_end_to_end_seconds";

/// Change fields whose value updates `templates`.
const TEMPLATE_FIELDS: &[&str] = &[
    "message_template_status_update",
    "message_template_quality_update",
    "template_category_update",
];

/// Fan-out publishes in flight per event: enough to hide publisher-confirm
/// latency on a 1000-status batch without flooding the channel.
const PUBLISH_CONCURRENCY: usize = 32;

/// The clock, truncated to microseconds so PostgreSQL and SQLite store and
/// compare the same values.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn db_err(e: DbErr) -> JobError {
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

pub use store::expire_conversations;

/// Per-outcome counts, for `processed_data`.
#[derive(Debug, Default, Serialize)]
struct Tally {
    total: u64,
    new: u64,
    duplicate: u64,
    skipped: u64,
}

/// What an event held and what became of it: stored as the event's
/// `processed_data`.
#[derive(Debug, Default, Serialize)]
struct Summary {
    entries: usize,
    changes: usize,
    fields: Vec<String>,
    routed_changes: u64,
    unroutable_changes: u64,
    messages: Tally,
    statuses: Tally,
    effects_applied: u64,
    effects_target_missing: u64,
    templates_updated: u64,
    unknown: BTreeMap<&'static str, u64>,
    /// Value-level `errors[]`, with the config they came for.
    errors: Vec<Value>,
    /// Changes we have no table for (account, phone number, calls, …),
    /// kept as Meta sent them.
    updates: Vec<Value>,
    unroutable: Vec<Value>,
}

impl Summary {
    fn unknown(&mut self, kind: &'static str) {
        *self.unknown.entry(kind).or_default() += 1;
    }
}

/// Everything to publish once the rows are committed.
#[derive(Default)]
struct FanOut {
    jobs: Vec<OutboundJob>,
    realtime: Vec<RealtimeEvent>,
    /// Chats that changed: a `chat.updated` each, read after the commit.
    chats: Vec<Uuid>,
    status_keys: HashSet<(Uuid, String)>,
    lags: Vec<f64>,
}

/// The configs an event may write to.
struct Routes {
    configs: Vec<whatsapp_configs::Model>,
}

impl Routes {
    /// Loads the (not deleted) configs the event's changes name.
    ///
    /// When ingest tied the event to the config whose app secret signed it,
    /// only configs of that config's company are eligible: a company's app
    /// secret must not let it write into another company's inbox by naming
    /// that company's phone number id in a body it signed itself.
    async fn load(
        db: &DatabaseConnection,
        signer: Option<Uuid>,
        changes: &[Change<'_>],
    ) -> Result<Self, DbErr> {
        use whatsapp_configs::Column as W;
        let phones: HashSet<String> = changes.iter().filter_map(Change::phone_number_id).collect();
        let wabas: HashSet<String> = changes.iter().filter_map(Change::waba_id).collect();
        if phones.is_empty() && wabas.is_empty() {
            return Ok(Self {
                configs: Vec::new(),
            });
        }
        let mut wanted = Condition::any()
            .add(W::PhoneNumberId.is_in(phones))
            .add(W::WabaId.is_in(wabas));
        if let Some(signer) = signer {
            // Fetched along, to learn its company in the same query.
            wanted = wanted.add(W::Id.eq(signer));
        }
        let mut configs = whatsapp_configs::Entity::find()
            .filter(W::IsDeleted.eq(false))
            .filter(wanted)
            .all(db)
            .await?;
        if let Some(signer) = signer {
            let company = match configs.iter().find(|c| c.id == signer) {
                Some(c) => Some(c.company.clone()),
                // Removed since ingest: its company still bounds the event.
                None => whatsapp_configs::Entity::find_by_id(signer)
                    .one(db)
                    .await?
                    .map(|c| c.company),
            };
            if let Some(company) = company {
                configs.retain(|c| c.company == company);
            }
        }
        // Oldest first, so a WABA-routed change picks the same config each time.
        configs.sort_by_key(|c| c.id);
        Ok(Self { configs })
    }

    /// The configs a change is for: the one owning its phone number id, or,
    /// without one, every config of its WABA.
    fn for_change(&self, change: &Change<'_>) -> Vec<&whatsapp_configs::Model> {
        match change.phone_number_id() {
            Some(p) => self
                .configs
                .iter()
                .filter(|c| c.phone_number_id == p)
                .take(1)
                .collect(),
            None => match change.waba_id() {
                Some(w) => self.configs.iter().filter(|c| c.waba_id == w).collect(),
                None => Vec::new(),
            },
        }
    }
}

/// One of Meta's errors for `processed_data`; `source` is where it sat:
/// `value`, `message` or `status`.
fn error_json(config_id: Uuid, source: &str, field: Option<&str>, e: &MetaError) -> Value {
    json!({
        "config_id": config_id,
        "source": source,
        "field": field,
        "code": e.code,
        "title": e.title,
        "message": e.message,
        "details": e.details,
    })
}

/// Who wrote `m`: `from` / `from_user_id`, completed by the matching
/// `contacts[]` entry (by wa_id or user_id, or the only one there is).
fn sender_of(m: &Inbound, contacts: &[Contact]) -> Sender {
    let contact = contacts
        .iter()
        .find(|c| m.from.is_some() && c.wa_id == m.from)
        .or_else(|| {
            contacts
                .iter()
                .find(|c| m.from_user_id.is_some() && c.user_id == m.from_user_id)
        })
        .or(if contacts.len() == 1 {
            contacts.first()
        } else {
            None
        });
    // Contacts are read without NULs already (`Contact::from_value`).
    Sender {
        wa_id: m
            .from
            .clone()
            .or_else(|| contact.and_then(|c| c.wa_id.clone())),
        user_id: m
            .from_user_id
            .clone()
            .or_else(|| contact.and_then(|c| c.user_id.clone())),
        name: contact.and_then(|c| c.name.clone()),
    }
}

/// Processes one raw event. Idempotent: an event no longer `received` is
/// left alone, and re-processing a `received` one changes no count.
pub async fn process_event(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    event_id: Uuid,
) -> Result<Settled, JobError> {
    let ev = webhook_events::Entity::find_by_id(event_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| JobError::Permanent(format!("webhook event {event_id} does not exist")))?;
    if ev.status != EventStatus::Received {
        return Ok(Settled::AlreadyDone);
    }
    // Ingest rejects bodies that are no JSON object before storing them;
    // one can only get here by a replay of a rejected event.
    let root = match serde_json::from_slice::<Value>(&ev.raw_body) {
        Ok(v) if v.is_object() => v,
        other => {
            let reason = match other {
                Err(e) => format!("body is not valid JSON: {e}"),
                Ok(_) => "body is not a JSON object".to_owned(),
            };
            let done = settle(db, event_id, EventStatus::Rejected, None, Some(reason)).await?;
            return Ok(if done {
                Settled::Rejected
            } else {
                Settled::AlreadyDone
            });
        }
    };

    let changes = wa::changes(&root);
    let routes = Routes::load(db, ev.config_id, &changes)
        .await
        .map_err(db_err)?;
    let mut summary = Summary {
        entries: wa::array(&root, "entry").len(),
        changes: changes.len(),
        ..Summary::default()
    };
    for c in &changes {
        let f = c.field.unwrap_or("").to_owned();
        if !summary.fields.contains(&f) {
            summary.fields.push(f);
        }
    }
    let mut fan = FanOut::default();

    let started = now();
    let txn = db
        .begin_with_options(TransactionOptions {
            // SQLite: take the write lock up front, so a transaction that
            // read first never fails to upgrade (SQLITE_BUSY) under load.
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    for change in &changes {
        apply_change(&txn, &routes, change, &ev, started, &mut summary, &mut fan)
            .await
            .map_err(db_err)?;
    }
    txn.commit().await.map_err(db_err)?;

    record_metrics(&changes, &summary, &fan);
    publish(db, broker, fan).await?;

    let (status, error) = if summary.routed_changes == 0 {
        (
            EventStatus::Ignored,
            Some("no config routes this event".to_owned()),
        )
    } else {
        (EventStatus::Processed, None)
    };
    // Field names and other strings come from the body: no NULs in jsonb.
    let data = serde_json::to_value(&summary).ok().map(|v| clean_json(&v));
    if settle(db, event_id, status, data, error).await? {
        Ok(if status == EventStatus::Ignored {
            Settled::Ignored
        } else {
            Settled::Processed
        })
    } else {
        Ok(Settled::AlreadyDone)
    }
}

/// Moves the event out of `received`, in one conditional UPDATE: of two
/// concurrent deliveries, one wins. Returns whether this call did it.
async fn settle(
    db: &DatabaseConnection,
    event_id: Uuid,
    status: EventStatus,
    data: Option<Value>,
    error: Option<String>,
) -> Result<bool, JobError> {
    let now = now();
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
        return Ok(false);
    }
    metrics::counter!(METRIC_EVENTS_TOTAL, "status" => status.as_str()).increment(1);
    Ok(true)
}

async fn apply_change<C: sea_orm::ConnectionTrait>(
    db: &C,
    routes: &Routes,
    change: &Change<'_>,
    ev: &webhook_events::Model,
    now: DateTime<Utc>,
    summary: &mut Summary,
    fan: &mut FanOut,
) -> Result<(), DbErr> {
    let targets = routes.for_change(change);
    let messages_like = change.is_messages();
    // Messages belong to exactly one number.
    let targets: Vec<_> = if messages_like && targets.len() > 1 {
        targets.into_iter().take(1).collect()
    } else {
        targets
    };
    if targets.is_empty() {
        summary.unroutable_changes += 1;
        summary.unroutable.push(json!({
            "field": change.field,
            "phone_number_id": change.phone_number_id(),
            "waba_id": change.waba_id(),
        }));
        return Ok(());
    }
    summary.routed_changes += 1;
    if wa::field_label(change.field) == "other" {
        summary.unknown("field");
    }

    for cfg in &targets {
        for e in change.errors() {
            summary
                .errors
                .push(error_json(cfg.id, "value", change.field, &e));
        }
    }

    if messages_like {
        let cfg = targets[0];
        let phone = change
            .phone_number_id()
            .unwrap_or_else(|| cfg.phone_number_id.clone());
        let contacts = change.contacts();
        for m in change.messages() {
            apply_message(db, cfg.id, &phone, &contacts, m, ev, now, summary, fan).await?;
        }
        for s in change.statuses() {
            apply_status(db, cfg.id, &phone, s, ev, now, summary, fan).await?;
        }
        return Ok(());
    }

    if change.field.is_some_and(|f| TEMPLATE_FIELDS.contains(&f)) {
        for cfg in &targets {
            summary.templates_updated +=
                store::apply_template_update(db, cfg.id, change.value, now).await?;
        }
        return Ok(());
    }

    summary.updates.push(json!({
        "field": change.field,
        "config_ids": targets.iter().map(|c| c.id).collect::<Vec<_>>(),
        "value": clean_json(change.value),
    }));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn apply_message<C: sea_orm::ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    phone: &str,
    contacts: &[Contact],
    raw: &Value,
    ev: &webhook_events::Model,
    now: DateTime<Utc>,
    summary: &mut Summary,
    fan: &mut FanOut,
) -> Result<(), DbErr> {
    summary.messages.total += 1;
    let m = extract_message(raw);
    for u in &m.unknown {
        summary.unknown(u.as_str());
    }
    let sender = sender_of(&m, contacts);
    let Some(key) = sender.key().map(str::to_owned) else {
        // No wa_id, no user_id: there is no customer to file it under.
        summary.messages.skipped += 1;
        summary.unknown("no_sender");
        return Ok(());
    };
    // The window and the chat order follow Meta's time, but never the
    // future: a skewed clock must not keep a window open.
    let at = std::cmp::min(m.timestamp.unwrap_or(now), now);
    let customer = store::upsert_customer(db, config_id, &sender, at, now).await?;
    let (chat, _) = store::upsert_chat(db, config_id, &customer, now).await?;
    let stored = store::insert_message(db, config_id, chat.id, customer.id, &m, now).await?;
    if stored.is_new {
        summary.messages.new += 1;
        let conversation =
            store::attach_conversation(db, config_id, customer.id, chat.id, at, now).await?;
        store::set_conversation(db, stored.message_id, conversation).await?;
        if let Some(effect) = &m.effect {
            match store::apply_effect(
                db,
                config_id,
                chat.id,
                &customer,
                effect,
                store::EffectSource {
                    wamid: &m.provider_message_id,
                    at,
                },
                now,
            )
            .await?
            {
                store::EffectOutcome::Applied => summary.effects_applied += 1,
                store::EffectOutcome::TargetMissing => summary.effects_target_missing += 1,
            }
        }
        store::count_in_chat(db, chat.id, stored.message_id, &m, at, now).await?;
        if let Some(ts) = m.timestamp {
            fan.lags
                .push(std::cmp::max((now - ts).num_milliseconds(), 0) as f64 / 1000.0);
        }
        fan.realtime.push(RealtimeEvent {
            event: REALTIME_MESSAGE_CREATED.to_owned(),
            config_id,
            chat_id: Some(chat.id),
            message_id: Some(stored.message_id),
            data: json!({
                "provider_message_id": m.provider_message_id,
                "type": m.kind,
                "direction": "inbound",
                "text": m.text,
                "timestamp": m.timestamp,
            }),
        });
    } else {
        summary.messages.duplicate += 1;
    }
    if !fan.chats.contains(&chat.id) {
        fan.chats.push(chat.id);
    }
    let job = MessageInbound {
        config_id,
        message_id: stored.message_id,
        chat_id: chat.id,
        customer_id: customer.id,
        provider_message_id: m.provider_message_id.clone(),
        r#type: m.kind.clone(),
        is_new: stored.is_new,
        webhook_event_id: Some(ev.id),
    };
    fan.jobs.push(job.job(format!("{phone}:{key}")));
    if let Some(errors) = &m.errors {
        for e in wa::errors_of(Some(errors)) {
            summary
                .errors
                .push(error_json(config_id, "message", Some("messages"), &e));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn apply_status<C: sea_orm::ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    phone: &str,
    raw: &Value,
    ev: &webhook_events::Model,
    now: DateTime<Utc>,
    summary: &mut Summary,
    fan: &mut FanOut,
) -> Result<(), DbErr> {
    summary.statuses.total += 1;
    let st = Status::from_value(raw);
    if st
        .status
        .as_deref()
        .is_none_or(|s| s.parse::<MessageStatus>().is_err())
    {
        summary.unknown("status");
    }
    match store::insert_status_event(db, config_id, &st, ev.id, ev.received_at, now).await? {
        None => {
            summary.statuses.skipped += 1;
            summary.unknown("status_without_id");
            return Ok(());
        }
        Some(true) => summary.statuses.new += 1,
        Some(false) => summary.statuses.duplicate += 1,
    }
    let Some(wamid) = st.id.clone() else {
        return Ok(());
    };
    // One job per wamid: the status worker applies all its pending receipts.
    if fan.status_keys.insert((config_id, wamid.clone())) {
        let recipient = st
            .recipient_id
            .as_deref()
            .or(st.recipient_user_id.as_deref())
            .unwrap_or(wamid.as_str());
        let job = StatusReceipt {
            config_id,
            provider_message_id: wamid.clone(),
            webhook_event_id: Some(ev.id),
        };
        fan.jobs.push(job.job(format!("{phone}:{recipient}")));
    }
    for e in &st.errors {
        summary
            .errors
            .push(error_json(config_id, "status", Some("messages"), e));
    }
    Ok(())
}

fn record_metrics(changes: &[Change<'_>], summary: &Summary, fan: &FanOut) {
    for c in changes {
        metrics::counter!(METRIC_CHANGES_TOTAL, "field" => wa::field_label(c.field)).increment(1);
    }
    for (kind, n) in &summary.unknown {
        metrics::counter!(METRIC_UNKNOWN_TOTAL, "kind" => *kind).increment(*n);
    }
    for (outcome, n) in [
        ("new", summary.messages.new),
        ("duplicate", summary.messages.duplicate),
        ("skipped", summary.messages.skipped),
    ] {
        if n > 0 {
            metrics::counter!(METRIC_MESSAGES_TOTAL, "outcome" => outcome).increment(n);
        }
    }
    for (outcome, n) in [
        ("new", summary.statuses.new),
        ("duplicate", summary.statuses.duplicate),
        ("skipped", summary.statuses.skipped),
    ] {
        if n > 0 {
            metrics::counter!(METRIC_STATUSES_TOTAL, "outcome" => outcome).increment(n);
        }
    }
    for e in &summary.errors {
        let source = match e.get("source").and_then(Value::as_str) {
            Some("status") => "status",
            Some("message") => "message",
            _ => "value",
        };
        metrics::counter!(METRIC_META_ERRORS_TOTAL, "source" => source).increment(1);
    }
    if summary.unroutable_changes > 0 {
        metrics::counter!(METRIC_UNROUTABLE_TOTAL).increment(summary.unroutable_changes);
    }
    for lag in &fan.lags {
        metrics::histogram!(METRIC_MESSAGE_LAG_SECONDS).record(*lag);
    }
}

/// Publishes the jobs, the real-time events and a `chat.updated` per
/// touched chat. Any failure is retryable: the event stays `received`, is
/// processed again (a no-op for the rows) and everything is re-published.
async fn publish(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    fan: FanOut,
) -> Result<(), JobError> {
    let publish_err =
        |e: wapipe_shared::broker::BrokerError| JobError::Retryable(format!("publish: {e}"));
    stream::iter(fan.jobs)
        .map(|job| broker.publish(job))
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map_err(publish_err)?;

    let mut realtime = fan.realtime;
    if !fan.chats.is_empty() {
        let rows = chats::Entity::find()
            .filter(chats::Column::Id.is_in(fan.chats))
            .all(db)
            .await
            .map_err(db_err)?;
        realtime.extend(rows.into_iter().map(|c| RealtimeEvent {
            event: REALTIME_CHAT_UPDATED.to_owned(),
            config_id: c.config_id,
            chat_id: Some(c.id),
            message_id: c.last_message_id,
            data: json!({
                "customer_id": c.customer_id,
                "customer_name": c.customer_name,
                "unread_count": c.unread_count,
                "last_message": c.last_message,
                "last_message_time": c.last_message_time,
                "total_messages": c.total_messages,
            }),
        }));
    }
    stream::iter(realtime)
        .map(|ev| broker.publish_realtime(ev.to_bytes()))
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map_err(publish_err)?;
    Ok(())
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
        .map_err(db_err)?;
    metrics::counter!(METRIC_EVENTS_TOTAL, "status" => EventStatus::Failed.as_str()).increment(1);
    Ok(())
}

/// The kinds [`METRIC_UNKNOWN_TOTAL`] counts, for dashboards and tests.
pub const UNKNOWN_KINDS: &[&str] = &[
    "message_type",
    "missing_type",
    "interactive_type",
    "missing_id",
    "no_sender",
    "status",
    "status_without_id",
    "field",
];

#[cfg(test)]
mod tests {
    use super::*;
    use extract::Unknown;

    #[test]
    fn unknown_kinds_are_listed() {
        for u in [
            Unknown::MessageType,
            Unknown::MissingType,
            Unknown::InteractiveType,
            Unknown::MissingId,
        ] {
            assert!(UNKNOWN_KINDS.contains(&u.as_str()));
        }
    }

    #[test]
    fn sender_prefers_from_then_contact() {
        let m = extract_message(&json!({"id":"w","type":"text","text":{"body":"x"}}));
        let contacts = vec![Contact {
            wa_id: None,
            user_id: Some("US.1".into()),
            name: Some("N".into()),
        }];
        let s = sender_of(&m, &contacts);
        assert_eq!(s.key(), Some("US.1"));
        assert_eq!(s.name.as_deref(), Some("N"));
        let m = extract_message(&json!({"id":"w","from":"49","type":"text"}));
        assert_eq!(sender_of(&m, &contacts).key(), Some("49"));
        assert_eq!(sender_of(&m, &[]).name, None);
    }
}
