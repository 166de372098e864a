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

pub mod bulk;
pub mod extract;
pub mod store;
mod worker;

pub use worker::{ParseWorker, REGISTRATION};

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    QueryFilter, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::broker::{Broker, OutboundJob};
use wapipe_shared::db::{pad_pow2, with_values};
use wapipe_shared::entities::messages::MessageStatus;
use wapipe_shared::entities::webhook_events::{self, Column, EventStatus};
use wapipe_shared::entities::{chats, whatsapp_configs};
use wapipe_shared::jobs::{
    InboundMessages, Job, MessageInbound, REALTIME_CHAT_UPDATED, REALTIME_MESSAGE_CREATED,
    RealtimeEvent, StatusReceipt, WebhookReceived,
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

/// Fan-out publishes in flight per batch: enough to hide publisher-confirm
/// latency on a 1000-status body or a batch of events without flooding the
/// channel.
const PUBLISH_CONCURRENCY: usize = 128;

/// Events one parse batch takes at most (see [`process_events`]).
pub const BATCH_SIZE: usize = 64;
/// The same on SQLite, whose single writer also serves ingest's commits:
/// a batch transaction holds the write lock and stalls webhook acks.
/// Measured in embedded `serve` (accepted/s, p99 ack): batches of 64:
/// 1,139/s, 642 ms; of 8: ~1,700/s, ~600 ms; of 4: ~2,850/s, ~290 ms; one
/// event at a time: ~3,600/s, ~160 ms. Acks to Meta come first.
pub const SQLITE_BATCH_SIZE: usize = 1;

/// [`BATCH_SIZE`] or [`SQLITE_BATCH_SIZE`], by the database's backend.
pub fn batch_size(db: &DatabaseConnection) -> usize {
    match db.get_database_backend() {
        DbBackend::Sqlite => SQLITE_BATCH_SIZE,
        _ => BATCH_SIZE,
    }
}

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
    /// Earlier reactions, edits and revokes applied to this event's new
    /// messages (they had arrived before their target).
    late_effects_applied: u64,
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
    /// `message.inbound` items with their lane keys, sent grouped by lane.
    inbound: Vec<(String, MessageInbound)>,
    realtime: Vec<RealtimeEvent>,
    /// Chats that changed: a `chat.updated` each, read after the commit.
    chats: Vec<Uuid>,
    status_keys: HashSet<(Uuid, String)>,
    lags: Vec<f64>,
}

/// The messages and receipts of a batch, gathered change by change and
/// then stored together ([`bulk`]).
#[derive(Default)]
struct Collected<'a> {
    messages: Vec<PendingMessage>,
    statuses: Vec<PendingStatus<'a>>,
}

struct PendingMessage {
    /// Index of the event in the batch (its summary).
    event: usize,
    event_id: Uuid,
    config_id: Uuid,
    /// `{phone_number_id}:{wa_id or user_id}`: the lane of its jobs.
    lane_key: String,
    sender: Sender,
    m: Inbound,
    at: DateTime<Utc>,
}

struct PendingStatus<'a> {
    event: usize,
    event_id: Uuid,
    received_at: DateTime<Utc>,
    config_id: Uuid,
    phone: String,
    st: Status<'a>,
}

/// The configs an event may write to.
struct Routes {
    configs: Vec<whatsapp_configs::Model>,
}

impl Routes {
    /// Loads, in one query for a whole batch, the (not deleted) configs the
    /// events' changes name; one [`Routes`] per event, in order.
    ///
    /// When ingest tied an event to the config whose app secret signed it,
    /// only configs of that config's company are eligible: a company's app
    /// secret must not let it write into another company's inbox by naming
    /// that company's phone number id in a body it signed itself.
    async fn load(
        db: &DatabaseConnection,
        events: &[(Option<Uuid>, &[Change<'_>])],
    ) -> Result<Vec<Self>, DbErr> {
        use whatsapp_configs::Column as W;
        let mut phones = HashSet::new();
        let mut wabas = HashSet::new();
        let mut signers = HashSet::new();
        for (signer, changes) in events {
            phones.extend(changes.iter().filter_map(Change::phone_number_id));
            wabas.extend(changes.iter().filter_map(Change::waba_id));
            signers.extend(*signer);
        }
        if phones.is_empty() && wabas.is_empty() {
            return Ok(events
                .iter()
                .map(|_| Self {
                    configs: Vec::new(),
                })
                .collect());
        }
        // Signers are fetched along, to learn their company in the same query.
        let wanted = Condition::any()
            .add(W::PhoneNumberId.is_in(pad_pow2(phones.into_iter().collect())))
            .add(W::WabaId.is_in(pad_pow2(wabas.into_iter().collect())))
            .add(W::Id.is_in(pad_pow2(signers.iter().copied().collect())));
        let mut configs = whatsapp_configs::Entity::find()
            .filter(W::IsDeleted.eq(false))
            .filter(wanted)
            .all(db)
            .await?;
        // Oldest first, so a WABA-routed change picks the same config each time.
        configs.sort_by_key(|c| c.id);
        let mut company: HashMap<Uuid, String> =
            configs.iter().map(|c| (c.id, c.company.clone())).collect();
        let removed: Vec<Uuid> = signers
            .into_iter()
            .filter(|s| !company.contains_key(s))
            .collect();
        if !removed.is_empty() {
            // Removed since ingest: its company still bounds the event.
            for c in whatsapp_configs::Entity::find()
                .filter(W::Id.is_in(removed))
                .all(db)
                .await?
            {
                company.insert(c.id, c.company);
            }
        }
        Ok(events
            .iter()
            .map(|(signer, _)| {
                let bound = signer.and_then(|s| company.get(&s));
                Self {
                    configs: configs
                        .iter()
                        .filter(|c| !c.is_deleted && bound.is_none_or(|b| &c.company == b))
                        .cloned()
                        .collect(),
                }
            })
            .collect())
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
    let mut settled = process_events(db, broker, &[event_id]).await?;
    Ok(settled.pop().unwrap_or(Settled::AlreadyDone))
}

/// An event being processed: the stored row and its parsed body.
struct Work {
    index: usize,
    ev: webhook_events::Model,
    root: Value,
}

/// Processes raw events as one unit, in order: one read of the events and
/// of their configs, one transaction for all their rows, the fan-out, then
/// one transaction settling them. Returns what became of each, in order.
/// Idempotent like [`process_event`]; an error leaves every event
/// `received` (the runtime then retries them one by one).
pub async fn process_events(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    ids: &[Uuid],
) -> Result<Vec<Settled>, JobError> {
    let mut rows: HashMap<Uuid, webhook_events::Model> = webhook_events::Entity::find()
        .filter(Column::Id.is_in(pad_pow2(ids.to_vec())))
        .all(db)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    let mut out = vec![Settled::AlreadyDone; ids.len()];
    let mut work = Vec::new();
    let mut seen = HashSet::new();
    for (index, id) in ids.iter().enumerate() {
        if !seen.insert(*id) {
            continue; // the same event twice in a batch: once is enough
        }
        let ev = rows
            .remove(id)
            .ok_or_else(|| JobError::Permanent(format!("webhook event {id} does not exist")))?;
        if ev.status != EventStatus::Received {
            continue;
        }
        // Ingest rejects bodies that are no JSON object before storing
        // them; one can only get here by a replay of a rejected event.
        match serde_json::from_slice::<Value>(&ev.raw_body) {
            Ok(root) if root.is_object() => work.push(Work { index, ev, root }),
            other => {
                let reason = match other {
                    Err(e) => format!("body is not valid JSON: {e}"),
                    Ok(_) => "body is not a JSON object".to_owned(),
                };
                let done =
                    settle(db, &[(ev.id, EventStatus::Rejected, None, Some(reason))]).await?;
                if done.first() == Some(&true) {
                    out[index] = Settled::Rejected;
                }
            }
        }
    }
    if work.is_empty() {
        return Ok(out);
    }

    let changes: Vec<Vec<Change<'_>>> = work.iter().map(|w| wa::changes(&w.root)).collect();
    let keys: Vec<_> = work
        .iter()
        .zip(&changes)
        .map(|(w, c)| (w.ev.config_id, c.as_slice()))
        .collect();
    let routes = Routes::load(db, &keys).await.map_err(db_err)?;
    let mut summaries: Vec<Summary> = work
        .iter()
        .zip(&changes)
        .map(|(w, changes)| {
            let mut summary = Summary {
                entries: wa::array(&w.root, "entry").len(),
                changes: changes.len(),
                ..Summary::default()
            };
            for c in changes {
                let f = c.field.unwrap_or("").to_owned();
                if !summary.fields.contains(&f) {
                    summary.fields.push(f);
                }
            }
            summary
        })
        .collect();
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
    if txn.get_database_backend() == DbBackend::Postgres {
        // The batch's lookups take `IN (…)` lists; a cached generic plan
        // for them, made while the table was small or never analysed
        // (autovacuum late or off), searches by the config alone and scans
        // every message of the config (measured: 11 M index fetches for
        // 60 k messages). Plan them with their values; other roles keep
        // generic plans, which are cheaper and safe for their lookups.
        txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
            .await
            .map_err(db_err)?;
    }
    let mut collected = Collected::default();
    for (event, (((w, changes), routes), summary)) in work
        .iter()
        .zip(&changes)
        .zip(&routes)
        .zip(&mut summaries)
        .enumerate()
    {
        for change in changes {
            let at = Position {
                event,
                ev: &w.ev,
                now: started,
            };
            apply_change(&txn, routes, change, at, summary, &mut collected)
                .await
                .map_err(db_err)?;
        }
    }
    store_messages(&txn, &collected.messages, started, &mut summaries, &mut fan)
        .await
        .map_err(db_err)?;
    store_statuses(&txn, &collected.statuses, started, &mut summaries, &mut fan)
        .await
        .map_err(db_err)?;
    txn.commit().await.map_err(db_err)?;

    for (changes, summary) in changes.iter().zip(&summaries) {
        record_metrics(changes, summary);
    }
    for lag in &fan.lags {
        metrics::histogram!(METRIC_MESSAGE_LAG_SECONDS).record(*lag);
    }
    publish(db, broker, fan).await?;

    let settles: Vec<_> = work
        .iter()
        .zip(&summaries)
        .map(|(w, summary)| {
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
            (w.ev.id, status, data, error)
        })
        .collect();
    let done = settle(db, &settles).await?;
    for ((w, (_, status, _, _)), done) in work.iter().zip(&settles).zip(done) {
        if done {
            out[w.index] = if *status == EventStatus::Ignored {
                Settled::Ignored
            } else {
                Settled::Processed
            };
        }
    }
    Ok(out)
}

/// One event's settlement: id, final status, `processed_data`, error.
type Settlement = (Uuid, EventStatus, Option<Value>, Option<String>);

/// Moves events out of `received`, each in one conditional UPDATE (of two
/// concurrent deliveries, one wins), all in one transaction. Returns, per
/// event, whether this call did it.
async fn settle(db: &DatabaseConnection, events: &[Settlement]) -> Result<Vec<bool>, JobError> {
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
    .map_err(db_err)?
    .iter()
    .map(|r| r.try_get_by_index::<Uuid>(0))
    .collect::<Result<_, _>>()
    .map_err(db_err)?;
    Ok(events.iter().map(|e| settled.contains(&e.0)).collect())
}

/// Settlements one UPDATE each, in one transaction.
async fn settle_each(
    db: &DatabaseConnection,
    events: &[Settlement],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, JobError> {
    let txn = db.begin().await.map_err(db_err)?;
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
            .map_err(db_err)?;
        done.push(res.rows_affected > 0);
    }
    txn.commit().await.map_err(db_err)?;
    Ok(done)
}

/// Where a change sits: its event (index in the batch, row) and the
/// batch's clock.
#[derive(Clone, Copy)]
struct Position<'e> {
    event: usize,
    ev: &'e webhook_events::Model,
    now: DateTime<Utc>,
}

/// Applies one change: templates at once; messages and statuses are
/// gathered into `collected` for the batch's bulk writes.
async fn apply_change<'a, C: sea_orm::ConnectionTrait>(
    db: &C,
    routes: &Routes,
    change: &Change<'a>,
    pos: Position<'_>,
    summary: &mut Summary,
    collected: &mut Collected<'a>,
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
            collect_message(cfg.id, &phone, &contacts, m, pos, summary, collected);
        }
        for s in change.statuses() {
            collect_status(cfg.id, &phone, s, pos, summary, collected);
        }
        return Ok(());
    }

    if change.field.is_some_and(|f| TEMPLATE_FIELDS.contains(&f)) {
        for cfg in &targets {
            summary.templates_updated +=
                store::apply_template_update(db, cfg.id, change.value, pos.now).await?;
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

fn collect_message(
    config_id: Uuid,
    phone: &str,
    contacts: &[Contact],
    raw: &Value,
    pos: Position<'_>,
    summary: &mut Summary,
    collected: &mut Collected<'_>,
) {
    summary.messages.total += 1;
    let m = extract_message(raw);
    for u in &m.unknown {
        summary.unknown(u.as_str());
    }
    if let Some(errors) = &m.errors {
        for e in wa::errors_of(Some(errors)) {
            summary
                .errors
                .push(error_json(config_id, "message", Some("messages"), &e));
        }
    }
    let sender = sender_of(&m, contacts);
    let Some(key) = sender.key().map(str::to_owned) else {
        // No wa_id, no user_id: there is no customer to file it under.
        summary.messages.skipped += 1;
        summary.unknown("no_sender");
        return;
    };
    // The window and the chat order follow Meta's time, but never the
    // future: a skewed clock must not keep a window open.
    let at = std::cmp::min(m.timestamp.unwrap_or(pos.now), pos.now);
    collected.messages.push(PendingMessage {
        event: pos.event,
        event_id: pos.ev.id,
        config_id,
        lane_key: wapipe_shared::jobs::lane_key(phone, &key),
        sender,
        m,
        at,
    });
}

fn collect_status<'a>(
    config_id: Uuid,
    phone: &str,
    raw: &'a Value,
    pos: Position<'_>,
    summary: &mut Summary,
    collected: &mut Collected<'a>,
) {
    summary.statuses.total += 1;
    let st = Status::from_value(raw);
    if st
        .status
        .as_deref()
        .is_none_or(|s| s.parse::<MessageStatus>().is_err())
    {
        summary.unknown("status");
    }
    if st.id.is_none() {
        summary.statuses.skipped += 1;
        summary.unknown("status_without_id");
        return;
    }
    collected.statuses.push(PendingStatus {
        event: pos.event,
        event_id: pos.ev.id,
        received_at: pos.ev.received_at,
        config_id,
        phone: phone.to_owned(),
        st,
    });
}

/// Stores the batch's inbound messages, then counts them in their events'
/// summaries and queues their fan-out.
async fn store_messages<C: sea_orm::ConnectionTrait>(
    db: &C,
    pending: &[PendingMessage],
    now: DateTime<Utc>,
    summaries: &mut [Summary],
    fan: &mut FanOut,
) -> Result<(), DbErr> {
    let rows: Vec<_> = pending
        .iter()
        .map(|p| bulk::InboundRow {
            config_id: p.config_id,
            sender: &p.sender,
            m: &p.m,
            at: p.at,
        })
        .collect();
    let stored = bulk::store_inbound(db, &rows, now).await?;
    for (p, s) in pending.iter().zip(stored) {
        let summary = &mut summaries[p.event];
        let m = &p.m;
        if s.is_new {
            summary.messages.new += 1;
            summary.late_effects_applied += s.late_effects;
            match s.effect {
                Some(store::EffectOutcome::Applied) => summary.effects_applied += 1,
                Some(store::EffectOutcome::TargetMissing) => summary.effects_target_missing += 1,
                None => {}
            }
            if let Some(ts) = m.timestamp {
                fan.lags
                    .push(std::cmp::max((now - ts).num_milliseconds(), 0) as f64 / 1000.0);
            }
            fan.realtime.push(RealtimeEvent {
                event: REALTIME_MESSAGE_CREATED.to_owned(),
                config_id: p.config_id,
                chat_id: Some(s.chat_id),
                message_id: Some(s.message_id),
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
        if !fan.chats.contains(&s.chat_id) {
            fan.chats.push(s.chat_id);
        }
        let job = MessageInbound {
            config_id: p.config_id,
            message_id: s.message_id,
            chat_id: s.chat_id,
            customer_id: s.customer_id,
            provider_message_id: m.provider_message_id.clone(),
            r#type: m.kind.clone(),
            is_new: s.is_new,
            webhook_event_id: Some(p.event_id),
        };
        fan.inbound.push((p.lane_key.clone(), job));
    }
    Ok(())
}

/// Stores the batch's receipts, counts them, and queues one
/// `status.receipt` job per wamid (the status worker applies all its
/// pending receipts).
async fn store_statuses<C: sea_orm::ConnectionTrait>(
    db: &C,
    pending: &[PendingStatus<'_>],
    now: DateTime<Utc>,
    summaries: &mut [Summary],
    fan: &mut FanOut,
) -> Result<(), DbErr> {
    let rows: Vec<_> = pending
        .iter()
        .map(|p| bulk::StatusRow {
            config_id: p.config_id,
            st: &p.st,
            event_id: p.event_id,
            received_at: p.received_at,
        })
        .collect();
    let stored = bulk::store_statuses(db, &rows, now).await?;
    for (p, new) in pending.iter().zip(stored) {
        let summary = &mut summaries[p.event];
        match new {
            Some(true) => summary.statuses.new += 1,
            Some(false) => summary.statuses.duplicate += 1,
            None => continue,
        }
        let st = &p.st;
        let Some(wamid) = st.id.clone() else {
            continue;
        };
        if fan.status_keys.insert((p.config_id, wamid.clone())) {
            let recipient = st
                .recipient_id
                .as_deref()
                .or(st.recipient_user_id.as_deref())
                .unwrap_or(wamid.as_str());
            let job = StatusReceipt {
                config_id: p.config_id,
                provider_message_id: wamid.clone(),
                webhook_event_id: Some(p.event_id),
                lane_key: wapipe_shared::jobs::lane_key(&p.phone, recipient),
            };
            fan.jobs.push(job.to_outbound());
        }
        for e in &st.errors {
            summary
                .errors
                .push(error_json(p.config_id, "status", Some("messages"), e));
        }
    }
    Ok(())
}

fn record_metrics(changes: &[Change<'_>], summary: &Summary) {
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
    let mut jobs = fan.jobs;
    // Only what a registered worker consumes: a queue nobody reads grows
    // without bound (RabbitMQ) or in memory (embedded).
    if crate::registry::consumes(InboundMessages::QUEUE) {
        jobs.extend(InboundMessages::jobs(fan.inbound, broker.lanes()));
    }
    stream::iter(jobs)
        .map(|job| broker.publish(job))
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map_err(publish_err)?;

    let mut realtime = fan.realtime;
    if !fan.chats.is_empty() {
        let rows = chats::Entity::find()
            .filter(chats::Column::Id.is_in(pad_pow2(fan.chats)))
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
    stream::iter(RealtimeEvent::encode_batches(&realtime))
        .map(|body| broker.publish_realtime(body))
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
