//! The events log: what happened that an agent's client cares about, in
//! one order for the whole deployment. Owns writing events ([`record`], in
//! the transaction of the change they report, so an event exists exactly
//! when its change does, and a redelivered job that changes nothing
//! writes nothing), reading them after a sequence number with a key's
//! permissions ([`read_after`]), their JSON envelope ([`envelope`]) and
//! the retention ([`prune`]).
//!
//! # The order
//!
//! A reader that has seen `seq` N must never later find an event below N:
//! transactions commit out of order, so a plain sequence (`bigserial`)
//! would let a transaction that took N-1 commit after a reader went past
//! N. How each backend avoids it:
//!
//! - **SQLite** has one writer at a time: a transaction that inserts
//!   events holds the write lock until it commits, so rowids are given in
//!   commit order. `seq` is the rowid.
//! - **PostgreSQL**: `seq = xid << 16 | n`, the writing transaction's id
//!   (`pg_current_xact_id()`, 64-bit, never reused) and the event's place
//!   among that transaction's events. Readers return only events below
//!   `xmin << 16`, where `xmin` is the oldest transaction still running
//!   in the reader's snapshot (`pg_snapshot_xmin(pg_current_snapshot())`).
//!   Every event below that bound was written by a transaction older than
//!   `xmin`, which has therefore finished: committed (and visible to the
//!   reader) or rolled back (and gone). Any transaction that can still
//!   commit has an id ≥ `xmin`, so its events land at or above the bound,
//!   above everything returned. Writers take no shared lock: the only
//!   cost is that an event waits for older transactions still running
//!   (a long transaction anywhere in the cluster holds readers back).
//!
//!   Why not a `bigserial` filtered by the writer's xid: a transaction
//!   can get its xid (first write) before another transaction that takes a
//!   *lower* serial value, then take a higher one itself and commit first;
//!   the xid test then lets the higher number through while the lower one
//!   can still appear. With the xid in the number itself, order and
//!   visibility are the same thing.
//!
//!   The numbers stay below 2^53 (exact in JavaScript) for 2^37 (137
//!   billion) transactions. A transaction writes at most 65,536 events in
//!   one call of [`record`] (each call is checked).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::db::pow2_chunks;
use wapipe_shared::entities::{calls, chats, events, follow_ups, team_notes, whatsapp_configs};

use crate::views;

pub const MESSAGE_CREATED: &str = "message.created";
/// Status, edit, revoke, reaction.
pub const MESSAGE_UPDATED: &str = "message.updated";
pub const CHAT_CREATED: &str = "chat.created";
/// Assignment, status, labels, unread count, handoff.
pub const CHAT_UPDATED: &str = "chat.updated";
pub const NOTE_CREATED: &str = "note.created";
pub const FOLLOWUP_REMINDER: &str = "followup.reminder";
/// A pending follow-up went past its time without being done.
pub const FOLLOWUP_OVERDUE: &str = "followup.overdue";
/// A number was flagged after Meta's 190, 368 or 131031: its sends fail
/// until an operator clears it.
pub const CONFIG_FLAGGED: &str = "config.flagged";
/// An outgoing webhook endpoint failed too long and was disabled (the
/// endpoint, without its secret, and why).
pub const WEBHOOK_DISABLED: &str = "webhook.disabled";
/// A WhatsApp call in a chat started, changed status or ended (Meta's
/// `calls` webhook).
pub const CALL_UPDATED: &str = "call.updated";

/// Every type, for the documentation and for checks.
pub const TYPES: [&str; 10] = [
    MESSAGE_CREATED,
    MESSAGE_UPDATED,
    CHAT_CREATED,
    CHAT_UPDATED,
    NOTE_CREATED,
    FOLLOWUP_REMINDER,
    FOLLOWUP_OVERDUE,
    CONFIG_FLAGGED,
    WEBHOOK_DISABLED,
    CALL_UPDATED,
];

/// Bits of a PostgreSQL `seq` below the transaction id.
pub const XID_SHIFT: u32 = 16;
/// Events one transaction may write in one [`record`] call.
pub const MAX_PER_CALL: usize = 1 << XID_SHIFT;

/// Rows per INSERT (6 values each).
const CHUNK: usize = 256;

/// An event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub config_id: Uuid,
    pub chat_id: Option<Uuid>,
    /// The resource as the REST API shows it.
    pub data: Value,
    pub occurred_at: DateTime<Utc>,
}

impl Event {
    pub fn new(kind: &'static str, config_id: Uuid, chat_id: Option<Uuid>, data: Value) -> Self {
        Self {
            kind,
            config_id,
            chat_id,
            data,
            occurred_at: crate::clock::now(),
        }
    }

    fn of<T: Serialize>(kind: &'static str, config_id: Uuid, chat_id: Uuid, view: &T) -> Self {
        // Views are plain data: serialising them cannot fail.
        let data = serde_json::to_value(view).unwrap_or(Value::Null);
        Self::new(kind, config_id, Some(chat_id), data)
    }
}

/// Writes `events` in their order, in `db`'s transaction (call it with the
/// transaction of the change, never with the pool: the event must commit
/// with its change). See the module's notes for how `seq` is given.
pub async fn record<C: ConnectionTrait>(db: &C, events: &[Event]) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    if events.len() > MAX_PER_CALL {
        return Err(DbErr::Custom(format!(
            "{} events in one call; at most {MAX_PER_CALL}",
            events.len()
        )));
    }
    match db.get_database_backend() {
        DbBackend::Postgres => record_postgres(db, events).await,
        _ => {
            let rows: Vec<events::ActiveModel> = events
                .iter()
                .map(|e| events::ActiveModel {
                    seq: NotSet,
                    r#type: Set(e.kind.to_owned()),
                    config_id: Set(e.config_id),
                    chat_id: Set(e.chat_id),
                    payload: Set(e.data.clone()),
                    occurred_at: Set(e.occurred_at),
                })
                .collect();
            for chunk in pow2_chunks(rows, CHUNK) {
                events::Entity::insert_many(chunk)
                    .exec_without_returning(db)
                    .await?;
            }
            Ok(())
        }
    }
}

/// The transaction's range is `[xid << 16, (xid + 1) << 16)`; each chunk
/// continues after what the transaction wrote there before (only it
/// writes there, so the `MAX` cannot race).
async fn record_postgres<C: ConnectionTrait>(db: &C, events: &[Event]) -> Result<(), DbErr> {
    let span = 1i64 << XID_SHIFT;
    let items: Vec<&Event> = events.iter().collect();
    for chunk in pow2_chunks(items, CHUNK) {
        let mut params: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 6);
        let mut tuples = Vec::with_capacity(chunk.len());
        for (i, e) in chunk.iter().enumerate() {
            let n = params.len();
            tuples.push(format!(
                "(${}::int8, ${}::text, ${}::uuid, ${}::uuid, ${}::jsonb, ${}::timestamptz)",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6
            ));
            params.extend([
                (i as i64).into(),
                e.kind.into(),
                e.config_id.into(),
                e.chat_id.into(),
                e.data.clone().into(),
                e.occurred_at.into(),
            ]);
        }
        let sql = format!(
            "WITH x AS (SELECT pg_current_xact_id()::text::int8 * {span} AS lo), \
             b AS (SELECT COALESCE((SELECT max(e.seq) + 1 FROM events e, x \
                     WHERE e.seq >= x.lo AND e.seq < x.lo + {span}), x.lo) AS base FROM x) \
             INSERT INTO events (seq, type, config_id, chat_id, payload, occurred_at) \
             SELECT b.base + v.i, v.type, v.config_id, v.chat_id, v.payload, v.occurred_at \
             FROM b, (VALUES {}) AS v(i, type, config_id, chat_id, payload, occurred_at)",
            tuples.join(", ")
        );
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            params,
        ))
        .await?;
    }
    Ok(())
}

/// `chat.created` / `chat.updated` of some chats, as they are now in `db`
/// (call it after the change, in its transaction).
pub async fn chat_events<C: ConnectionTrait>(
    db: &C,
    kind: &'static str,
    ids: &[Uuid],
) -> Result<Vec<Event>, DbErr> {
    Ok(views::load_chats(db, ids)
        .await?
        .iter()
        .map(|c| Event::of(kind, c.config_id, c.id, c))
        .collect())
}

/// `message.created` / `message.updated` of some messages, as they are now.
pub async fn message_events<C: ConnectionTrait>(
    db: &C,
    kind: &'static str,
    ids: &[Uuid],
) -> Result<Vec<Event>, DbErr> {
    Ok(views::load_messages(db, ids)
        .await?
        .iter()
        .map(|(config, m)| Event::of(kind, *config, m.chat_id, m))
        .collect())
}

/// Records [`chat_events`].
pub async fn record_chats<C: ConnectionTrait>(
    db: &C,
    kind: &'static str,
    ids: &[Uuid],
) -> Result<(), DbErr> {
    record(db, &chat_events(db, kind, ids).await?).await
}

/// Records [`message_events`].
pub async fn record_messages<C: ConnectionTrait>(
    db: &C,
    kind: &'static str,
    ids: &[Uuid],
) -> Result<(), DbErr> {
    record(db, &message_events(db, kind, ids).await?).await
}

/// The `note.created` event of a note (its view is the API's `TeamNote`).
pub fn note_event<T: Serialize>(note: &team_notes::Model, view: &T) -> Event {
    Event::of(NOTE_CREATED, note.config_id, note.chat_id, view)
}

/// The `followup.reminder` event of a follow-up just reminded, with how.
pub fn reminder_event(fu: &follow_ups::Model) -> Event {
    let mut data = serde_json::to_value(views::FollowUp::from(fu.clone())).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut data {
        m.insert("reminderChannel".into(), json!(fu.reminder_channel));
        m.insert("reminderMessageId".into(), json!(fu.reminder_message_id));
        m.insert("reminderNote".into(), json!(fu.reminder_note));
    }
    Event::new(FOLLOWUP_REMINDER, fu.config_id, Some(fu.chat_id), data)
}

/// The `followup.overdue` event of a follow-up just marked overdue.
pub fn overdue_event(fu: &follow_ups::Model) -> Event {
    Event::of(
        FOLLOWUP_OVERDUE,
        fu.config_id,
        fu.chat_id,
        &views::FollowUp::from(fu.clone()),
    )
}

/// The `config.flagged` event of a number just flagged. It belongs to no
/// chat, so only keys that see the whole config get it (admins, and agents
/// who may view every chat).
pub fn flagged_event(c: &whatsapp_configs::Model) -> Event {
    Event::new(
        CONFIG_FLAGGED,
        c.id,
        None,
        json!({
            "id": c.id,
            "phoneNumberId": c.phone_number_id,
            "wabaId": c.waba_id,
            "flaggedCode": c.flagged_code,
            "flaggedReason": c.flagged_reason,
            "flaggedAt": c.flagged_at,
        }),
    )
}

/// The `call.updated` event of a call, in its chat.
pub fn call_event(c: &calls::Model) -> Event {
    Event::new(
        CALL_UPDATED,
        c.config_id,
        Some(c.chat_id),
        json!({
            "id": c.id,
            "chatId": c.chat_id,
            "customerId": c.customer_id,
            "callId": c.call_id,
            "direction": c.direction,
            "from": c.from,
            "to": c.to,
            "status": c.status,
            "startedAt": c.started_at,
            "endedAt": c.ended_at,
            "duration": c.duration,
            "createdAt": c.created_at,
            "updatedAt": c.updated_at,
        }),
    )
}

/// Whose events a reader may see.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The configs (companies' numbers) the key may see; `None`: all.
    pub configs: Option<Vec<Uuid>>,
    /// An agent who sees only the chats assigned to them: only events of
    /// the chats assigned to them now.
    pub only_chats_of: Option<Uuid>,
}

impl Scope {
    pub fn everything() -> Self {
        Self::default()
    }
}

/// The SQL bound below which every event is settled (PostgreSQL); see the
/// module's notes.
fn settled() -> sea_orm::sea_query::SimpleExpr {
    Expr::cust(format!(
        "\"events\".\"seq\" < pg_snapshot_xmin(pg_current_snapshot())::text::int8 * {}",
        1i64 << XID_SHIFT
    ))
}

/// Up to `limit` events after `after`, in order, that `scope` may see and
/// that no transaction still running can precede.
pub async fn read_after<C: ConnectionTrait>(
    db: &C,
    after: i64,
    limit: u64,
    scope: &Scope,
) -> Result<Vec<events::Model>, DbErr> {
    let mut cond = Condition::all().add(events::Column::Seq.gt(after));
    if db.get_database_backend() == DbBackend::Postgres {
        cond = cond.add(settled());
    }
    if let Some(configs) = &scope.configs {
        cond = cond.add(events::Column::ConfigId.is_in(configs.iter().copied()));
    }
    if let Some(agent) = scope.only_chats_of {
        cond = cond.add(
            events::Column::ChatId.in_subquery(
                Query::select()
                    .column(chats::Column::Id)
                    .from(chats::Entity)
                    .and_where(chats::Column::AssignedTo.eq(agent))
                    .and_where(chats::Column::IsDeleted.eq(false))
                    .to_owned(),
            ),
        );
    }
    events::Entity::find()
        .filter(cond)
        .order_by_asc(events::Column::Seq)
        .limit(limit)
        .all(db)
        .await
}

/// The highest `seq` readers may see now (0 when none): where a reader
/// that wants only what happens from now on starts.
pub async fn high_water<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    let mut q = events::Entity::find()
        .select_only()
        .column_as(events::Column::Seq.max(), "m");
    if db.get_database_backend() == DbBackend::Postgres {
        q = q.filter(settled());
    }
    Ok(q.into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten()
        .unwrap_or(0))
}

/// Whether events after `after` exist that readers may not see yet
/// (PostgreSQL: written by transactions that committed while an older one
/// still runs, or not committed yet). Always false on SQLite.
pub async fn unsettled_after<C: ConnectionTrait>(db: &C, after: i64) -> Result<bool, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(false);
    }
    Ok(events::Entity::find()
        .select_only()
        .column(events::Column::Seq)
        .filter(events::Column::Seq.gt(after))
        .into_tuple::<i64>()
        .one(db)
        .await?
        .is_some())
}

/// An event as readers get it. The resource is in `data` (its own fields,
/// such as a message's `type`, would clash with the envelope's).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// `message.created`, `message.updated`, `chat.created`,
    /// `chat.updated`, `note.created`, `followup.reminder`,
    /// `followup.overdue`, `config.flagged`, `webhook.disabled` or
    /// `call.updated`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's place in the one order of the deployment; resume after it.
    pub seq: i64,
    pub config_id: Uuid,
    pub chat_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    /// The resource as the REST API shows it (a Message, Chat, TeamNote or
    /// FollowUp).
    pub data: Value,
}

impl From<events::Model> for Envelope {
    fn from(e: events::Model) -> Self {
        Self {
            kind: e.r#type,
            seq: e.seq,
            config_id: e.config_id,
            chat_id: e.chat_id,
            occurred_at: e.occurred_at,
            data: e.payload,
        }
    }
}

/// Deletes events that occurred before `before`. Returns how many.
pub async fn prune<C: ConnectionTrait>(db: &C, before: DateTime<Utc>) -> Result<u64, DbErr> {
    Ok(events::Entity::delete_many()
        .filter(events::Column::OccurredAt.lt(before))
        .exec(db)
        .await?
        .rows_affected)
}
