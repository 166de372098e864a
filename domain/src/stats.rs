//! Reports: response times computed from the messages themselves, and the
//! per agent and day roll-up into `agent_performance` (an upsert on the
//! unique (agent, date): rerunning a day gives the same row).
//!
//! A response is an outbound message (agent or bot) after one or more
//! customer messages; its time is from the first of those customer
//! messages. A chat's first response is its first such answer.

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
