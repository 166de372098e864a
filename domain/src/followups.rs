//! Follow-ups (seed 002 FollowUp): creating, completing, cancelling and
//! listing them, and the scheduler's side of their reminders: the atomic
//! claim of due rows ([`claim_due`]), overdue marking ([`mark_overdue`])
//! and recording a reminder ([`mark_reminded`]). The CLI, the follow-up
//! worker and the REST API all write follow-ups through this module.
//!
//! # Exactly one reminder
//!
//! A follow-up is *due* when `scheduled_at <= now`, it is still open
//! (`pending`, or `overdue` without a reminder: one that fell due during an
//! outage longer than the overdue delay is still reminded) and
//! `reminder_sent` is false. Every replica's scheduler claims due rows in
//! one statement that sets `claimed_at` (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL; SQLite has a single writer, so its `UPDATE … RETURNING`
//! is atomic already): two schedulers never claim the same row at once.
//! The claim is a lease: a row claimed but not reminded after the lease
//! ([`LEASE`] by default, `WAPIPE_FOLLOWUP_LEASE_S`) is claimable again:
//! its job was lost (a process killed between the claim and the publish,
//! the embedded queue gone with its process).
//!
//! So a follow-up may be handled more than once; the reminder itself is
//! what must not be. The worker queues the reminder through the outbox
//! under a database unique key (one message per follow-up), and
//! [`mark_reminded`] sets `reminder_sent` conditionally, once.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;

use sea_orm::sea_query::{CaseStatement, Expr, LockBehavior, LockType, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, ExprTrait, Order,
    QueryFilter, QueryOrder, QuerySelect, TransactionSession, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wapipe_shared::db::pad_pow2;
use wapipe_shared::entities::follow_ups::{self, Column as F};
use wapipe_shared::entities::{agents, chats, whatsapp_configs};

use crate::clock;

/// A claim older than this, on a row still not reminded, has lost its job.
/// Long enough for a backlog of reminders to drain before anything is
/// claimed twice; a second claim costs a second job, never a second
/// reminder.
pub const LEASE: Duration = Duration::seconds(120);

/// `WAPIPE_FOLLOWUP_OVERDUE_AFTER_S`'s default: an hour past `scheduled_at`.
pub const DEFAULT_OVERDUE_AFTER: Duration = Duration::seconds(3600);

/// The longest title: it is a template parameter of the reminder.
pub const MAX_TITLE_CHARS: usize = 200;

/// `follow_ups.reminder_channel`.
pub const CHANNEL_WHATSAPP: &str = "whatsapp";
pub const CHANNEL_EVENT: &str = "event";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Completed,
    Cancelled,
    Overdue,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Completed,
        Status::Cancelled,
        Status::Overdue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
            Status::Overdue => "overdue",
        }
    }

    /// Still to be done: it can be completed or cancelled, and reminded.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Pending | Status::Overdue)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = FollowUpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| FollowUpError::BadStatus(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = FollowUpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Priority::Low, Priority::Medium, Priority::High]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| FollowUpError::BadPriority(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FollowUpError {
    #[error("no chat with id {0}")]
    UnknownChat(Uuid),
    #[error("no agent with id {0}")]
    UnknownAgent(Uuid),
    #[error(
        "agent {agent} works for {agent_company:?}, not for the chat's company {chat_company:?}"
    )]
    AgentOfOtherCompany {
        agent: Uuid,
        agent_company: String,
        chat_company: String,
    },
    #[error("no follow-up with id {0}")]
    NotFound(Uuid),
    #[error("{at} is in the past (now {now}): a follow-up is scheduled ahead")]
    InPast {
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("priority {0:?} is not one of low, medium, high")]
    BadPriority(String),
    #[error("status {0:?} is not one of pending, completed, cancelled, overdue")]
    BadStatus(String),
    #[error("a follow-up needs a title")]
    EmptyTitle,
    #[error("the title is {0} characters long; at most {MAX_TITLE_CHARS}")]
    TitleTooLong(usize),
    #[error("follow-up {id} is {status}: only a pending or overdue follow-up can be {action}")]
    NotOpen {
        id: Uuid,
        status: String,
        action: &'static str,
    },
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// A follow-up to schedule. Strings as the CLI and the API take them: the
/// priority is checked here.
#[derive(Debug, Clone)]
pub struct NewFollowUp {
    pub chat_id: Uuid,
    pub agent_id: Uuid,
    pub scheduled_at: DateTime<Utc>,
    pub title: String,
    pub notes: Option<String>,
    /// `low`, `medium` (the default) or `high`.
    pub priority: Option<String>,
    /// Who scheduled it (an agent), when known.
    pub created_by: Option<Uuid>,
}

/// Schedules a follow-up on a chat for an agent. Refuses a date in the
/// past, a bad priority, an empty or overlong title, an unknown (or
/// deleted) chat or agent, and an agent of another company.
pub async fn create(
    db: &impl ConnectionTrait,
    new: NewFollowUp,
) -> Result<follow_ups::Model, FollowUpError> {
    let priority = match new.priority.as_deref() {
        Some(p) => p.parse::<Priority>()?,
        None => Priority::default(),
    };
    let title = new.title.trim();
    if title.is_empty() {
        return Err(FollowUpError::EmptyTitle);
    }
    let chars = title.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Err(FollowUpError::TitleTooLong(chars));
    }
    let now = clock::now();
    if new.scheduled_at < now {
        return Err(FollowUpError::InPast {
            at: new.scheduled_at,
            now,
        });
    }
    let chat = chats::Entity::find_by_id(new.chat_id)
        .one(db)
        .await?
        .filter(|c| !c.is_deleted)
        .ok_or(FollowUpError::UnknownChat(new.chat_id))?;
    let agent = agents::Entity::find_by_id(new.agent_id)
        .one(db)
        .await?
        .filter(|a| !a.is_deleted)
        .ok_or(FollowUpError::UnknownAgent(new.agent_id))?;
    check_same_company(db, &agent, chat.config_id).await?;

    let id = Uuid::now_v7();
    let model = follow_ups::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(chat.config_id),
        chat_id: Set(chat.id),
        customer_id: Set(Some(chat.customer_id)),
        agent_id: Set(Some(agent.id)),
        created_by: Set(new.created_by),
        title: Set(Some(title.to_owned())),
        notes: Set(new
            .notes
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())),
        scheduled_at: Set(new.scheduled_at),
        status: Set(Status::Pending.as_str().to_owned()),
        priority: Set(priority.as_str().to_owned()),
        reminder_sent: Set(false),
        reminder_sent_at: Set(None),
        completed_at: Set(None),
        completed_by: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        claimed_at: Set(None),
        claim_count: Set(0),
        reminder_message_id: Set(None),
        reminder_channel: Set(None),
        reminder_note: Set(None),
    };
    follow_ups::Entity::insert(model)
        .exec_without_returning(db)
        .await?;
    get(db, id).await
}

/// An agent tied to a number or a company may only follow up that
/// company's chats; an agent with neither works for every company.
async fn check_same_company(
    db: &impl ConnectionTrait,
    agent: &agents::Model,
    chat_config: Uuid,
) -> Result<(), FollowUpError> {
    if agent.config_id == Some(chat_config) {
        return Ok(());
    }
    let agent_company = match (&agent.company, agent.config_id) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(cfg)) => whatsapp_configs::Entity::find_by_id(cfg)
            .one(db)
            .await?
            .map(|c| c.company),
        (None, None) => None,
    };
    let Some(agent_company) = agent_company else {
        return Ok(());
    };
    let chat_company = whatsapp_configs::Entity::find_by_id(chat_config)
        .one(db)
        .await?
        .map(|c| c.company)
        .unwrap_or_default();
    if agent_company == chat_company {
        Ok(())
    } else {
        Err(FollowUpError::AgentOfOtherCompany {
            agent: agent.id,
            agent_company,
            chat_company,
        })
    }
}

/// One follow-up, deleted ones included.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<follow_ups::Model, FollowUpError> {
    follow_ups::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(FollowUpError::NotFound(id))
}

/// `pending` or `overdue` → `completed`, with who and when.
pub async fn complete(
    db: &impl ConnectionTrait,
    id: Uuid,
    by: Option<Uuid>,
) -> Result<follow_ups::Model, FollowUpError> {
    let now = clock::now();
    close(
        db,
        id,
        Status::Completed,
        "completed",
        vec![
            (F::CompletedAt, Expr::value(now)),
            (F::CompletedBy, Expr::value(by)),
        ],
        now,
    )
    .await
}

/// `pending` or `overdue` → `cancelled`. A cancelled follow-up never
/// reminds, even when its job is already queued.
pub async fn cancel(
    db: &impl ConnectionTrait,
    id: Uuid,
) -> Result<follow_ups::Model, FollowUpError> {
    close(
        db,
        id,
        Status::Cancelled,
        "cancelled",
        Vec::new(),
        clock::now(),
    )
    .await
}

/// One conditional UPDATE, so a close racing the reminder or another
/// close leaves one answer.
async fn close(
    db: &impl ConnectionTrait,
    id: Uuid,
    to: Status,
    action: &'static str,
    extra: Vec<(F, sea_orm::sea_query::SimpleExpr)>,
    now: DateTime<Utc>,
) -> Result<follow_ups::Model, FollowUpError> {
    let mut update = follow_ups::Entity::update_many()
        .col_expr(F::Status, Expr::value(to.as_str()))
        .col_expr(F::UpdatedAt, Expr::value(now));
    for (col, value) in extra {
        update = update.col_expr(col, value);
    }
    let done = update
        .filter(F::Id.eq(id))
        .filter(F::IsDeleted.eq(false))
        .filter(F::Status.is_in(open_statuses()))
        .exec(db)
        .await?;
    let row = get(db, id).await?;
    if row.is_deleted {
        return Err(FollowUpError::NotFound(id));
    }
    if done.rows_affected == 0 {
        return Err(FollowUpError::NotOpen {
            id,
            status: row.status,
            action,
        });
    }
    Ok(row)
}

fn open_statuses() -> [&'static str; 2] {
    [Status::Pending.as_str(), Status::Overdue.as_str()]
}

/// What [`list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub agent_id: Option<Uuid>,
    pub chat_id: Option<Uuid>,
    pub config_id: Option<Uuid>,
    /// At most this many (default 1,000).
    pub limit: Option<u64>,
}

/// Follow-ups by `scheduled_at`, soonest first; deleted ones hidden.
pub async fn list(
    db: &impl ConnectionTrait,
    filter: ListFilter,
) -> Result<Vec<follow_ups::Model>, FollowUpError> {
    let mut q = follow_ups::Entity::find().filter(F::IsDeleted.eq(false));
    if let Some(s) = filter.status {
        q = q.filter(F::Status.eq(s.as_str()));
    }
    if let Some(a) = filter.agent_id {
        q = q.filter(F::AgentId.eq(a));
    }
    if let Some(c) = filter.chat_id {
        q = q.filter(F::ChatId.eq(c));
    }
    if let Some(c) = filter.config_id {
        q = q.filter(F::ConfigId.eq(c));
    }
    Ok(q.order_by(F::ScheduledAt, Order::Asc)
        .order_by(F::Id, Order::Asc)
        .limit(filter.limit.unwrap_or(1000))
        .all(db)
        .await?)
}

/// `now - d`, saturating at 1970 (which both databases store): a huge
/// duration from a setting means "never", not a panic.
fn before(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now.checked_sub_signed(d)
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| {
            Ord::max(t, DateTime::<Utc>::UNIX_EPOCH)
        })
}

/// A follow-up a scheduler claimed: what its `followup.due` job needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: Uuid,
    pub config_id: Uuid,
    pub chat_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub scheduled_at: DateTime<Utc>,
    /// 1 on the first claim; more when a lease ran out (a lost job).
    pub claim_count: i32,
}

impl Claimed {
    pub fn job(&self) -> wapipe_shared::jobs::FollowupDue {
        wapipe_shared::jobs::FollowupDue::new(self.id, self.config_id)
    }
}

/// The due condition, without the lease: open, not reminded, not deleted,
/// `scheduled_at <= now`.
fn due(now: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(F::Status.is_in(open_statuses()))
        .add(F::ReminderSent.eq(false))
        .add(F::IsDeleted.eq(false))
        .add(F::ScheduledAt.lte(now))
}

/// Claims up to `limit` due follow-ups, soonest first, atomically: each
/// row goes to one caller however many schedulers run (see the module
/// doc). A row claimed less than [`LEASE`] ago is skipped.
pub async fn claim_due(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Claimed>, FollowUpError> {
    claim_due_with_lease(db, now, limit, LEASE).await
}

/// [`claim_due`] with another lease.
pub async fn claim_due_with_lease(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
    lease: Duration,
) -> Result<Vec<Claimed>, FollowUpError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut pick = Query::select();
    pick.column(F::Id)
        .from(follow_ups::Entity)
        .cond_where(
            due(now).add(
                Condition::any()
                    .add(F::ClaimedAt.is_null())
                    .add(F::ClaimedAt.lt(before(now, lease))),
            ),
        )
        .order_by(F::ScheduledAt, Order::Asc)
        .limit(limit)
        // Dropped by sea-query on SQLite, whose one writer makes the
        // UPDATE atomic by itself.
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    let rows = follow_ups::Entity::update_many()
        .col_expr(F::ClaimedAt, Expr::value(now))
        .col_expr(F::ClaimCount, Expr::col(F::ClaimCount).add(1))
        .filter(F::Id.in_subquery(pick))
        .exec_with_returning(db)
        .await?;
    let mut claimed: Vec<Claimed> = rows
        .into_iter()
        .map(|r| Claimed {
            id: r.id,
            config_id: r.config_id,
            chat_id: r.chat_id,
            agent_id: r.agent_id,
            scheduled_at: r.scheduled_at,
            claim_count: r.claim_count,
        })
        .collect();
    claimed.sort_by_key(|c| (c.scheduled_at, c.id));
    Ok(claimed)
}

/// Which claims [`release_claims`] gives back.
#[derive(Debug, Clone, Copy)]
pub enum Release<'a> {
    /// These follow-ups (their publish failed).
    Ids(&'a [Uuid]),
    /// Every claim made before this instant: the embedded queue's jobs died
    /// with the last process, and claims made since are a live
    /// scheduler's, which must keep them.
    Before(DateTime<Utc>),
}

/// Gives claims back, so the next pass claims them at once. Only rows not
/// reminded yet. Returns how many.
pub async fn release_claims(
    db: &impl ConnectionTrait,
    which: Release<'_>,
) -> Result<u64, FollowUpError> {
    let q = follow_ups::Entity::update_many()
        .col_expr(F::ClaimedAt, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(F::ReminderSent.eq(false))
        .filter(F::ClaimedAt.is_not_null());
    let q = match which {
        Release::Ids([]) => return Ok(0),
        Release::Ids(ids) => q.filter(F::Id.is_in(ids.iter().copied())),
        Release::Before(at) => q.filter(F::ClaimedAt.lt(at)),
    };
    Ok(q.exec(db).await?.rows_affected)
}

/// `pending` follow-ups more than `overdue_after` past `scheduled_at`
/// become `overdue`. Returns how many turned.
pub async fn mark_overdue(
    db: &(impl ConnectionTrait + TransactionTrait),
    now: DateTime<Utc>,
    overdue_after: Duration,
) -> Result<u64, FollowUpError> {
    // One transaction, so each follow-up's `followup.overdue` event exists
    // exactly when its status changed (a second pass changes and writes
    // nothing).
    let txn = wapipe_shared::db::begin_write(db).await?;
    let set: Vec<follow_ups::Model> = follow_ups::Entity::update_many()
        .col_expr(F::Status, Expr::value(Status::Overdue.as_str()))
        .col_expr(F::UpdatedAt, Expr::value(now))
        .filter(F::Status.eq(Status::Pending.as_str()))
        .filter(F::IsDeleted.eq(false))
        .filter(F::ScheduledAt.lt(before(now, overdue_after)))
        .exec_with_returning(&txn)
        .await?;
    let events: Vec<_> = set.iter().map(crate::events::overdue_event).collect();
    crate::events::record(&txn, &events).await?;
    txn.commit().await?;
    Ok(set.len() as u64)
}

/// How an agent was reminded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminded {
    pub at: DateTime<Utc>,
    /// [`CHANNEL_WHATSAPP`] or [`CHANNEL_EVENT`].
    pub channel: &'static str,
    pub message_id: Option<Uuid>,
    /// Why it was the event only.
    pub note: Option<String>,
}

/// Records the reminder: `reminder_sent` and the rest, only if it was not
/// set yet. True when this call set it (so each reminder is counted once).
pub async fn mark_reminded(
    db: &(impl ConnectionTrait + TransactionTrait),
    id: Uuid,
    r: &Reminded,
) -> Result<bool, FollowUpError> {
    Ok(mark_reminded_all(db, &[(id, r.clone())])
        .await?
        .contains(&id))
}

/// [`mark_reminded`] for many follow-ups in one statement: each row gets
/// its own values, and only rows not reminded yet are touched. Answers the
/// ids this call set, and writes their `followup.reminder` events in the
/// same transaction (so a second run, which sets nothing, writes none).
pub async fn mark_reminded_all(
    db: &(impl ConnectionTrait + TransactionTrait),
    reminded: &[(Uuid, Reminded)],
) -> Result<HashSet<Uuid>, FollowUpError> {
    if reminded.is_empty() {
        return Ok(HashSet::new());
    }
    // Padded (a repeated last row changes nothing) so the statement has a
    // few shapes: see `wapipe_shared::db::pad_pow2`.
    let rows = pad_pow2(reminded.to_vec());
    let column = |value: &dyn Fn(&Reminded) -> sea_orm::Value| {
        let mut case = CaseStatement::new();
        for (id, r) in &rows {
            case = case.case(Expr::col(F::Id).eq(*id), Expr::val(value(r)));
        }
        case
    };
    let txn = wapipe_shared::db::begin_write(db).await?;
    let set: Vec<follow_ups::Model> = follow_ups::Entity::update_many()
        .col_expr(F::ReminderSent, Expr::value(true))
        .col_expr(F::ReminderSentAt, column(&|r| r.at.into()).into())
        .col_expr(F::ReminderChannel, column(&|r| r.channel.into()).into())
        .col_expr(
            F::ReminderMessageId,
            column(&|r| r.message_id.into()).into(),
        )
        .col_expr(F::ReminderNote, column(&|r| r.note.clone().into()).into())
        .col_expr(F::UpdatedAt, column(&|r| r.at.into()).into())
        .filter(F::Id.is_in(rows.iter().map(|(id, _)| *id)))
        .filter(F::ReminderSent.eq(false))
        .exec_with_returning(&txn)
        .await?;
    let events: Vec<_> = set.iter().map(crate::events::reminder_event).collect();
    crate::events::record(&txn, &events).await?;
    txn.commit().await?;
    Ok(set.into_iter().map(|m| m.id).collect())
}

/// Counts for the gauges: open follow-ups overdue, and the age of the
/// oldest due follow-up not reminded (0 when none), in seconds.
pub async fn backlog(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
) -> Result<(u64, f64), FollowUpError> {
    use sea_orm::PaginatorTrait;
    let overdue = follow_ups::Entity::find()
        .filter(F::Status.eq(Status::Overdue.as_str()))
        .filter(F::IsDeleted.eq(false))
        .count(db)
        .await?;
    let oldest = follow_ups::Entity::find()
        .filter(due(now))
        .order_by(F::ScheduledAt, Order::Asc)
        .one(db)
        .await?
        .map(|r| Ord::max((now - r.scheduled_at).num_milliseconds(), 0) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok((overdue, oldest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_priorities_parse_case_insensitively() {
        assert_eq!("Pending".parse::<Status>().ok(), Some(Status::Pending));
        assert_eq!(" overdue ".parse::<Status>().ok(), Some(Status::Overdue));
        assert!(matches!(
            "done".parse::<Status>(),
            Err(FollowUpError::BadStatus(s)) if s == "done"
        ));
        assert_eq!("HIGH".parse::<Priority>().ok(), Some(Priority::High));
        assert!(matches!(
            "urgent".parse::<Priority>(),
            Err(FollowUpError::BadPriority(_))
        ));
        assert!(Status::Overdue.is_open() && !Status::Cancelled.is_open());
        assert_eq!(Priority::default(), Priority::Medium);
    }
}
