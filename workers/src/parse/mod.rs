//! The parse worker: consumes `webhook.received` and turns each raw event
//! (`webhook_events.raw_body`) into customers, chats, conversations,
//! messages and status receipts, then fans out `status.receipt`,
//! `message.inbound` and real-time events, and settles the event.
//!
//! This module is the orchestration: [`process_events`] runs a batch of
//! events through the steps below, each in its own module, and a single
//! event ([`process_event`]) is a batch of one.
//!
//! - Routing (`route`): each `entry[].changes[]` on its own, by
//!   `value.metadata.phone_number_id`, or by the WABA id (`entry[].id`) for
//!   changes without one (templates, account updates).
//! - Writes, per table (`customers`, `chats`, `conversations`,
//!   `messages`, `effects`, `receipts`, `templates`): one
//!   transaction per batch; every row is written with `ON CONFLICT`, and
//!   counters move only for newly inserted messages, so the same event
//!   processed twice (a replay, a redelivery) changes no count.
//! - Fan-out (`fanout`) happens after the commit and before the event is
//!   settled (`settle`): a crash in between re-runs the event, whose
//!   writes are then no-ops, and publishes again (consumers are idempotent).
//! - What became of each event (`summary`) is its `processed_data` and
//!   the metrics.
//! - Payloads are read leniently ([`wapipe_shared::whatsapp`]): unknown
//!   types and fields are stored and counted, wrong types never fail the
//!   event.

mod batch;
mod calls;
mod chats;
mod coexistence;
mod conversations;
mod customers;
mod effects;
pub mod extract;
mod fanout;
mod groups;
mod health;
mod identity;
mod messages;
mod preferences;
mod receipts;
mod route;
mod settle;
mod summary;
mod templates;
mod worker;

pub use worker::{ParseWorker, REGISTRATION};

use std::collections::{HashMap, HashSet};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;
use wapipe_domain::clock::now;
use wapipe_shared::broker::Broker;
use wapipe_shared::db::pad_pow2;
use wapipe_shared::entities::webhook_events::{self, Column, EventStatus};
use wapipe_shared::whatsapp::{self as wa, Change};

use crate::runtime::JobError;
use fanout::FanOut;
use route::{Collected, Position, Routes};
use summary::Summary;

pub use conversations::expire_conversations;
pub use health::{HEALTH_EVENTS, METRIC_HEALTH_EVENTS_TOTAL};
pub use settle::{Settled, mark_failed};
pub use summary::{
    METRIC_CHANGES_TOTAL, METRIC_EVENTS_TOTAL, METRIC_MESSAGE_LAG_SECONDS, METRIC_MESSAGES_TOTAL,
    METRIC_META_ERRORS_TOTAL, METRIC_STATUSES_TOTAL, METRIC_UNKNOWN_TOTAL, METRIC_UNROUTABLE_TOTAL,
    UNKNOWN_KINDS,
};

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

/// Processes one raw event, as a batch of one. Idempotent: an event no
/// longer `received` is left alone, and re-processing a `received` one
/// changes no count.
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
    let mut out = vec![Settled::AlreadyDone; ids.len()];
    let work = read_events(db, ids, &mut out).await?;
    if work.is_empty() {
        return Ok(out);
    }

    let changes: Vec<Vec<Change<'_>>> = work.iter().map(|w| wa::changes(&w.root)).collect();
    let keys: Vec<_> = work
        .iter()
        .zip(&changes)
        .map(|(w, c)| (w.ev.config_id, c.as_slice()))
        .collect();
    let routes = Routes::load(db, &keys).await.map_err(JobError::from)?;
    let mut summaries: Vec<Summary> = work
        .iter()
        .zip(&changes)
        .map(|(w, changes)| Summary::new(&w.root, changes))
        .collect();
    let mut fan = FanOut::default();

    let started = now();
    let txn = begin(db).await.map_err(JobError::from)?;
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
            route::apply_change(&txn, routes, change, at, summary, &mut collected)
                .await
                .map_err(JobError::from)?;
        }
    }
    identity::resolve_previous_ids(&txn, &mut collected.messages)
        .await
        .map_err(JobError::from)?;
    let stored = messages::store_inbound(&txn, &collected.messages, started)
        .await
        .map_err(JobError::from)?;
    for (p, s) in collected.messages.iter().zip(&stored) {
        summaries[p.event].count_message(s);
        fan.message(p, s, started);
    }
    record_events(&txn, &stored).await.map_err(JobError::from)?;
    let stored = receipts::store_statuses(&txn, &collected.statuses, started)
        .await
        .map_err(JobError::from)?;
    for (p, new) in collected.statuses.iter().zip(stored) {
        summaries[p.event].count_status(p, new);
        fan.status(p, new);
    }
    txn.commit().await.map_err(JobError::from)?;

    for (changes, summary) in changes.iter().zip(&summaries) {
        summary::record_metrics(changes, summary);
    }
    summary::record_lags(&fan.lags);
    fanout::publish(db, broker, fan).await?;

    let settles: Vec<_> = work
        .iter()
        .zip(&summaries)
        .map(|(w, summary)| settle::settlement(w.ev.id, summary))
        .collect();
    for (w, settled) in work.iter().zip(settle::settle(db, &settles).await?) {
        if let Some(settled) = settled {
            out[w.index] = settled;
        }
    }
    Ok(out)
}

/// The events log of the batch's new messages, in the batch's
/// transaction: only rows this batch inserted (a redelivered event inserts
/// none, so writes no event twice). A new chat is `chat.created`; a chat
/// that got messages is `chat.updated` (unread count, last message); a
/// reaction, edit or revoke applied to its message is that message's
/// `message.updated`. Views are read back after the writes, a few queries
/// per batch.
async fn record_events<C: ConnectionTrait>(
    txn: &C,
    stored: &[messages::InboundStored],
) -> Result<(), DbErr> {
    use wapipe_domain::events::{self as ev, CHAT_CREATED, CHAT_UPDATED};
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut new_messages = Vec::new();
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for s in stored.iter().filter(|s| s.is_new) {
        if seen.insert(s.chat_id) {
            if s.new_chat {
                created.push(s.chat_id);
            } else {
                updated.push(s.chat_id);
            }
        }
        new_messages.push(s.message_id);
        if let Some(effects::EffectOutcome::Applied(target)) = s.effect {
            targets.push(target);
        }
    }
    if new_messages.is_empty() {
        return Ok(());
    }
    let mut events = ev::chat_events(txn, CHAT_CREATED, &created).await?;
    events.extend(ev::chat_events(txn, CHAT_UPDATED, &updated).await?);
    events.extend(ev::message_events(txn, ev::MESSAGE_CREATED, &new_messages).await?);
    events.extend(ev::message_events(txn, ev::MESSAGE_UPDATED, &targets).await?);
    ev::record(txn, &events).await
}

/// Reads a batch's events and returns those still to process, each once
/// and with its body parsed. A body that is no JSON object is rejected
/// here (noted in `out`).
async fn read_events(
    db: &DatabaseConnection,
    ids: &[Uuid],
    out: &mut [Settled],
) -> Result<Vec<Work>, JobError> {
    let mut rows: HashMap<Uuid, webhook_events::Model> = webhook_events::Entity::find()
        .filter(Column::Id.is_in(pad_pow2(ids.to_vec())))
        .all(db)
        .await
        .map_err(JobError::from)?
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
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
        match wapipe_shared::whatsapp::parse_body(&ev.raw_body) {
            Ok(root) if root.is_object() => work.push(Work { index, ev, root }),
            other => {
                let reason = match other {
                    Err(e) => format!("body is not valid JSON: {e}"),
                    Ok(_) => "body is not a JSON object".to_owned(),
                };
                let rejected = (ev.id, EventStatus::Rejected, None, Some(reason));
                if let Some(Some(settled)) = settle::settle(db, &[rejected]).await?.pop() {
                    out[index] = settled;
                }
            }
        }
    }
    Ok(work)
}

/// The batch's write transaction.
async fn begin(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let txn = wapipe_shared::db::begin_write(db).await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        // The batch's lookups take `IN (…)` lists; a cached generic plan
        // for them, made while the table was small or never analysed
        // (autovacuum late or off), searches by the config alone and scans
        // every message of the config (measured: 11 M index fetches for
        // 60 k messages). Plan them with their values; other roles keep
        // generic plans, which are cheaper and safe for their lookups.
        txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
            .await?;
    }
    Ok(txn)
}
