//! Reports: response times computed from the messages themselves, and the
//! per agent and day roll-up into `agent_performance` (an upsert on the
//! unique (agent, date): rerunning a day gives the same row).
//!
//! A response is an outbound message (agent or bot) after one or more
//! customer messages; its time is from the first of those customer
//! messages. A chat's first response is its first such answer. The reports
//! compute this over a range of days from the messages themselves.
//!
//! A chat also keeps its own running figures, maintained as messages are
//! written ([`chat_response`]): `first_response_time` and
//! `avg_response_time` over `response_count` answers. Those count human
//! replies only (senderType `agent`), since that is what an agents'
//! dashboard shows: a bot's instant reply is not the chat's response time.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, Order, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;
use wapipe_shared::entities::messages::{self, Direction};
use wapipe_shared::entities::{agent_performance, agents, chat_assignments};

use crate::clock;

/// Response times (seconds) of a set of messages ordered by chat, then time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseTimes {
    pub first: Vec<f64>,
    pub all: Vec<f64>,
}

impl ResponseTimes {
    pub fn avg_first(&self) -> Option<f64> {
        mean(&self.first)
    }

    pub fn avg_all(&self) -> Option<f64> {
        mean(&self.all)
    }
}

pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Walks `(chat, direction, at, sender)` rows sorted by chat then time;
/// `answered_by` limits the answers counted to one sender (an agent).
pub fn response_times(
    rows: &[(Uuid, Direction, DateTime<Utc>, Option<Uuid>)],
    answered_by: Option<Uuid>,
) -> ResponseTimes {
    let mut out = ResponseTimes::default();
    let mut chat = None;
    let mut waiting_since: Option<DateTime<Utc>> = None;
    let mut first_done = false;
    for (c, dir, at, sender) in rows {
        if chat != Some(*c) {
            chat = Some(*c);
            waiting_since = None;
            first_done = false;
        }
        match dir {
            Direction::Inbound => {
                waiting_since.get_or_insert(*at);
            }
            Direction::Outbound => {
                if let Some(since) = waiting_since.take()
                    && answered_by.is_none_or(|a| *sender == Some(a))
                {
                    let secs = (*at - since).num_milliseconds() as f64 / 1000.0;
                    out.all.push(secs);
                    if !first_done {
                        out.first.push(secs);
                    }
                    first_done = true;
                }
            }
        }
    }
    out
}

/// Whether a reply of this seed 002 `senderType` counts as a response in
/// a chat's own figures: an agent's (the API, `wapipe send`), not a bot's
/// or the system's.
pub fn is_human_reply(sender_type: &str) -> bool {
    sender_type == "agent"
}

/// A chat's response-time columns after an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatResponse {
    /// Seconds this answer took.
    pub secs: f64,
    pub first_response_time: f64,
    pub avg_response_time: f64,
    pub response_count: i32,
}

/// What a human reply at `at` does to the chat's figures: when a customer
/// has been waiting since `awaiting_reply_since`, one more interval in the
/// running mean, and the first one if there was none. `None` when nobody
/// was waiting (a second reply in a row, or the business writing first).
pub fn chat_response(
    chat: &wapipe_shared::entities::chats::Model,
    at: DateTime<Utc>,
) -> Option<ChatResponse> {
    let since = chat.awaiting_reply_since?;
    // Clocks of two processes may disagree by a little: never negative.
    let secs = ((at - since).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0);
    let n = chat.response_count.max(0);
    let prior = chat.avg_response_time.unwrap_or(0.0) * f64::from(n);
    Some(ChatResponse {
        secs,
        first_response_time: chat.first_response_time.unwrap_or(secs),
        avg_response_time: (prior + secs) / f64::from(n + 1),
        response_count: n + 1,
    })
}

/// Messages of `chats` (or all of `configs`) between `from` and `to`, as
/// [`response_times`] wants them.
pub async fn message_rows<C: ConnectionTrait>(
    db: &C,
    configs: Option<&[Uuid]>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(Uuid, Direction, DateTime<Utc>, Option<Uuid>)>, sea_orm::DbErr> {
    let mut q = messages::Entity::find()
        .select_only()
        .column(messages::Column::ChatId)
        .column(messages::Column::Direction)
        .column(messages::Column::CreatedAt)
        .column(messages::Column::SenderId)
        .filter(messages::Column::CreatedAt.gte(from))
        .filter(messages::Column::CreatedAt.lt(to))
        .filter(messages::Column::IsDeleted.eq(false));
    if let Some(c) = configs {
        q = q.filter(messages::Column::ConfigId.is_in(c.iter().copied()));
    }
    q.order_by(messages::Column::ChatId, Order::Asc)
        .order_by(messages::Column::CreatedAt, Order::Asc)
        .order_by(messages::Column::Id, Order::Asc)
        .into_tuple()
        .all(db)
        .await
}

/// Priced messages (those whose receipts carried Meta's `pricing`) of
/// `configs` (all when `None`) created between `from` and `to`: (created
/// at, pricing category, pricing type, billable).
pub async fn pricing_rows<C: ConnectionTrait>(
    db: &C,
    configs: Option<&[Uuid]>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<PricedMessage>, sea_orm::DbErr> {
    let mut q = messages::Entity::find()
        .select_only()
        .column(messages::Column::CreatedAt)
        .column(messages::Column::PricingCategory)
        .column(messages::Column::PricingType)
        .column(messages::Column::Billable)
        .filter(messages::Column::CreatedAt.gte(from))
        .filter(messages::Column::CreatedAt.lt(to))
        .filter(
            sea_orm::Condition::any()
                .add(messages::Column::PricingCategory.is_not_null())
                .add(messages::Column::PricingType.is_not_null()),
        );
    if let Some(c) = configs {
        q = q.filter(messages::Column::ConfigId.is_in(c.iter().copied()));
    }
    q.into_tuple().all(db).await
}

/// One row of [`pricing_rows`].
pub type PricedMessage = (DateTime<Utc>, Option<String>, Option<String>, Option<bool>);

fn day_bounds(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    (start, start + Duration::days(1))
}

/// Computes one agent's day and upserts its `agent_performance` row.
pub async fn rollup_agent_day<C: ConnectionTrait>(
    db: &C,
    agent: &agents::Model,
    day: NaiveDate,
) -> Result<agent_performance::Model, sea_orm::DbErr> {
    let (from, to) = day_bounds(day);
    use chat_assignments::Column as A;
    let assigned = chat_assignments::Entity::find()
        .filter(A::AssignedTo.eq(agent.id))
        .filter(A::AssignedAt.gte(from))
        .filter(A::AssignedAt.lt(to))
        .count(db)
        .await? as i32;
    let resolved = chat_assignments::Entity::find()
        .filter(A::AssignedTo.eq(agent.id))
        .filter(A::Status.eq("completed"))
        .filter(A::CompletedAt.gte(from))
        .filter(A::CompletedAt.lt(to))
        .count(db)
        .await? as i32;
    let transferred = chat_assignments::Entity::find()
        .filter(A::TransferredFrom.eq(agent.id))
        .filter(A::AssignedAt.gte(from))
        .filter(A::AssignedAt.lt(to))
        .count(db)
        .await? as i32;
    // The chats the agent held that day: those assigned to them then.
    let chat_ids: Vec<Uuid> = chat_assignments::Entity::find()
        .select_only()
        .column(A::ChatId)
        .distinct()
        .filter(A::AssignedTo.eq(agent.id))
        .filter(A::AssignedAt.lt(to))
        .filter(
            sea_orm::Condition::any()
                .add(A::CompletedAt.is_null())
                .add(A::CompletedAt.gte(from)),
        )
        .into_tuple()
        .all(db)
        .await?;
    let sent = messages::Entity::find()
        .filter(messages::Column::SenderId.eq(agent.id))
        .filter(messages::Column::Direction.eq(Direction::Outbound))
        .filter(messages::Column::CreatedAt.gte(from))
        .filter(messages::Column::CreatedAt.lt(to))
        .count(db)
        .await? as i32;
    let (received, times) = if chat_ids.is_empty() {
        (0, ResponseTimes::default())
    } else {
        let received = messages::Entity::find()
            .filter(messages::Column::ChatId.is_in(chat_ids.iter().copied()))
            .filter(messages::Column::Direction.eq(Direction::Inbound))
            .filter(messages::Column::CreatedAt.gte(from))
            .filter(messages::Column::CreatedAt.lt(to))
            .count(db)
            .await? as i32;
        let rows: Vec<(Uuid, Direction, DateTime<Utc>, Option<Uuid>)> = messages::Entity::find()
            .select_only()
            .column(messages::Column::ChatId)
            .column(messages::Column::Direction)
            .column(messages::Column::CreatedAt)
            .column(messages::Column::SenderId)
            .filter(messages::Column::ChatId.is_in(chat_ids.iter().copied()))
            .filter(messages::Column::CreatedAt.gte(from))
            .filter(messages::Column::CreatedAt.lt(to))
            .order_by(messages::Column::ChatId, Order::Asc)
            .order_by(messages::Column::CreatedAt, Order::Asc)
            .order_by(messages::Column::Id, Order::Asc)
            .into_tuple()
            .all(db)
            .await?;
        (received, response_times(&rows, Some(agent.id)))
    };
    let now = clock::now();
    use agent_performance::Column as P;
    agent_performance::Entity::insert(agent_performance::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        agent_id: Set(agent.id),
        config_id: Set(agent.config_id),
        date: Set(day),
        total_chats: Set(chat_ids.len() as i32),
        chats_resolved: Set(resolved),
        messages_sent: Set(sent),
        avg_response_time: Set(times.avg_all()),
        avg_resolution_time_secs: Set(None),
        customer_satisfaction: Set(None),
        chats_assigned: Set(assigned),
        chats_transferred: Set(transferred),
        messages_received: Set(received),
        first_response_time: Set(times.avg_first()),
        total_active_time: Set(None),
        avg_chat_duration: Set(None),
        resolution_rate: Set((assigned > 0).then(|| f64::from(resolved) / f64::from(assigned))),
    })
    .on_conflict(
        OnConflict::columns([P::AgentId, P::Date])
            .update_columns([
                P::UpdatedAt,
                P::TotalChats,
                P::ChatsResolved,
                P::MessagesSent,
                P::AvgResponseTime,
                P::ChatsAssigned,
                P::ChatsTransferred,
                P::MessagesReceived,
                P::FirstResponseTime,
                P::ResolutionRate,
            ])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    agent_performance::Entity::find()
        .filter(P::AgentId.eq(agent.id))
        .filter(P::Date.eq(day))
        .one(db)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("agent_performance after upsert".into()))
}

/// Rolls up `day` for every agent not deleted.
pub async fn rollup_day<C: ConnectionTrait>(
    db: &C,
    day: NaiveDate,
) -> Result<usize, sea_orm::DbErr> {
    let all = agents::Entity::find()
        .filter(agents::Column::IsDeleted.eq(false))
        .all(db)
        .await?;
    for a in &all {
        rollup_agent_day(db, a, day).await?;
    }
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_figures_keep_the_first_and_a_running_mean() {
        let t = |s: i64| DateTime::from_timestamp(1_790_000_000 + s, 0).expect("time");
        let mut chat = wapipe_shared::entities::chats::Model {
            id: Uuid::now_v7(),
            created_at: t(0),
            updated_at: t(0),
            config_id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            phone_number: None,
            customer_name: None,
            status: "unassigned".into(),
            priority: "medium".into(),
            assigned_to: None,
            unread_count: 0,
            last_message: None,
            last_message_time: None,
            last_message_id: None,
            total_messages: 0,
            customer_messages: 0,
            agent_messages: 0,
            bot_messages: 0,
            is_archived: false,
            is_pinned: false,
            is_muted: false,
            first_response_at: None,
            resolved_at: None,
            handoff_at: None,
            is_deleted: false,
            deleted_at: None,
            assigned_at: None,
            assigned_by: None,
            source: "whatsapp".into(),
            provider: "meta-whatsapp".into(),
            provider_chat_id: None,
            whatsapp_business_account_id: None,
            phone_number_id: None,
            customer_info: None,
            closed_at: None,
            first_response_time: None,
            avg_response_time: None,
            response_count: 0,
            awaiting_reply_since: None,
        };
        assert_eq!(chat_response(&chat, t(10)), None, "nobody waits");
        chat.awaiting_reply_since = Some(t(10));
        let first = chat_response(&chat, t(70)).expect("an answer");
        assert_eq!(
            (
                first.secs,
                first.first_response_time,
                first.avg_response_time
            ),
            (60.0, 60.0, 60.0)
        );
        chat.first_response_time = Some(first.first_response_time);
        chat.avg_response_time = Some(first.avg_response_time);
        chat.response_count = first.response_count;
        chat.awaiting_reply_since = Some(t(100));
        let second = chat_response(&chat, t(120)).expect("an answer");
        assert_eq!(second.first_response_time, 60.0, "set once");
        assert_eq!(second.avg_response_time, 40.0);
        assert_eq!(second.response_count, 2);
        chat.awaiting_reply_since = Some(t(200));
        assert_eq!(chat_response(&chat, t(199)).expect("skew").secs, 0.0);
        assert!(is_human_reply("agent") && !is_human_reply("bot") && !is_human_reply("system"));
    }

    #[test]
    fn response_times_pair_each_customer_run_with_the_next_answer() {
        let (c1, c2, ana, bob) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let t = |s: i64| DateTime::from_timestamp(1_790_000_000 + s, 0).expect("time");
        let rows = vec![
            (c1, Direction::Outbound, t(0), Some(ana)), // no question yet: not a response
            (c1, Direction::Inbound, t(10), None),
            (c1, Direction::Inbound, t(20), None),
            (c1, Direction::Outbound, t(70), Some(ana)), // 60 s from the first of the run
            (c1, Direction::Inbound, t(100), None),
            (c1, Direction::Outbound, t(130), Some(bob)), // 30 s, by Bob
            (c2, Direction::Inbound, t(0), None),
            (c2, Direction::Outbound, t(5), Some(ana)), // 5 s
        ];
        let all = response_times(&rows, None);
        assert_eq!(all.all, vec![60.0, 30.0, 5.0]);
        assert_eq!(all.first, vec![60.0, 5.0]);
        let ana_only = response_times(&rows, Some(ana));
        assert_eq!(ana_only.all, vec![60.0, 5.0]);
        assert_eq!(ana_only.avg_all(), Some(32.5));
    }
}
