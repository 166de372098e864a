//! Reports: `GET /stats/admin` (chats by status, messages in and out per
//! day, first-response and average response times, resolution rate, over
//! `from`/`to`, default the last 7 days) and `GET /stats/agents/{agentId}`
//! (the agent's `agent_performance` days, rolled up by
//! `wapipe_domain::stats`). Reports take `canViewReports`; an agent may
//! always read their own.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use sea_orm::{ColumnTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::stats;
use wapipe_shared::entities::messages::Direction;
use wapipe_shared::entities::{agent_performance, chats};

use crate::AppState;
use crate::agents;
use crate::auth::{Perm, Principal};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Id, Q};
use crate::page;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Range {
    /// Default: 7 days before `to`.
    pub from: Option<String>,
    /// Default: now.
    pub to: Option<String>,
}

/// The range asked, at most 92 days.
fn range(r: &Range) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let to = match &r.to {
        Some(t) => page::parse_time("to", t)?,
        None => wapipe_domain::clock::now(),
    };
    let from = match &r.from {
        Some(f) => page::parse_time("from", f)?,
        None => to - Duration::days(7),
    };
    if from >= to {
        return Err(ApiError::field("from", "must be before `to`"));
    }
    if to - from > Duration::days(92) {
        return Err(ApiError::field("from", "a range of at most 92 days"));
    }
    Ok((from, to))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DayCount {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub inbound: u64,
    pub outbound: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminStats {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Chats (not deleted) by status, now.
    pub chats_by_status: BTreeMap<String, u64>,
    pub messages_per_day: Vec<DayCount>,
    /// Mean seconds from a chat's first customer message to its first answer.
    pub first_response_time: Option<f64>,
    /// Mean seconds from a customer's message to the next answer.
    pub avg_response_time: Option<f64>,
    /// (resolved + closed) / all chats.
    pub resolution_rate: Option<f64>,
    /// Messages by Meta's pricing category and type per day, from the
    /// `pricing` of their status receipts (messages without one are left
    /// out), by day, category, then type.
    pub pricing_per_day: Vec<PricingDay>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PricingDay {
    /// `YYYY-MM-DD` (UTC) the message was created.
    pub date: String,
    /// Meta's `pricing.category` (`marketing`, `utility`, `service`, …);
    /// `unknown` when the receipt had none.
    pub category: String,
    /// Meta's `pricing.type` (`regular`, `free_customer_service`, …);
    /// `unknown` when the receipt had none.
    pub pricing_type: String,
    pub messages: u64,
    /// Of those, how many Meta marked `billable`.
    pub billable: u64,
}

#[utoipa::path(get, path = "/api/whatsapp/stats/admin", tag = "stats", params(Range),
    responses((status = 200, body = AdminStats), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn admin(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(r): Q<Range>,
) -> ApiResult<axum::Json<AdminStats>> {
    who.require(Perm::ViewReports)?;
    let (from, to) = range(&r)?;
    let by_status: Vec<(String, i64)> = chats::Entity::find()
        .select_only()
        .column(chats::Column::Status)
        .column_as(chats::Column::Id.count(), "n")
        .filter(chats::Column::IsDeleted.eq(false))
        .filter(who.config_scope(chats::Column::ConfigId))
        .group_by(chats::Column::Status)
        .into_tuple()
        .all(&state.db)
        .await?;
    let mut chats_by_status: BTreeMap<String, u64> = crate::chats::STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), 0))
        .collect();
    let mut total = 0u64;
    for (s, n) in by_status {
        let n = u64::try_from(n).unwrap_or(0);
        total += n;
        *chats_by_status.entry(s).or_default() += n;
    }
    let done = chats_by_status.get("resolved").copied().unwrap_or(0)
        + chats_by_status.get("closed").copied().unwrap_or(0);

    let rows = stats::message_rows(&state.db, who.configs.as_deref(), from, to).await?;
    let mut days: BTreeMap<String, DayCount> = BTreeMap::new();
    for (_, dir, at, _) in &rows {
        let date = at.format("%Y-%m-%d").to_string();
        let d = days.entry(date.clone()).or_insert(DayCount {
            date,
            inbound: 0,
            outbound: 0,
        });
        match dir {
            Direction::Inbound => d.inbound += 1,
            Direction::Outbound => d.outbound += 1,
        }
    }
    let times = stats::response_times(&rows, None);
    let mut pricing: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    for (at, category, kind, billable) in
        stats::pricing_rows(&state.db, who.configs.as_deref(), from, to).await?
    {
        let unknown = || "unknown".to_owned();
        let key = (
            at.format("%Y-%m-%d").to_string(),
            category.unwrap_or_else(unknown),
            kind.unwrap_or_else(unknown),
        );
        let n = pricing.entry(key).or_default();
        n.0 += 1;
        n.1 += u64::from(billable == Some(true));
    }
    Ok(axum::Json(AdminStats {
        from,
        to,
        chats_by_status,
        messages_per_day: days.into_values().collect(),
        first_response_time: times.avg_first(),
        avg_response_time: times.avg_all(),
        resolution_rate: (total > 0).then(|| done as f64 / total as f64),
        pricing_per_day: pricing
            .into_iter()
            .map(
                |((date, category, pricing_type), (messages, billable))| PricingDay {
                    date,
                    category,
                    pricing_type,
                    messages,
                    billable,
                },
            )
            .collect(),
    }))
}

/// seed 002 AgentPerformance: one agent's day.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPerformance {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub date: chrono::NaiveDate,
    pub total_chats: i32,
    pub chats_assigned: i32,
    pub chats_resolved: i32,
    pub chats_transferred: i32,
    pub messages_sent: i32,
    pub messages_received: i32,
    pub avg_response_time: Option<f64>,
    pub first_response_time: Option<f64>,
    pub total_active_time: Option<f64>,
    pub avg_chat_duration: Option<f64>,
    pub customer_satisfaction: Option<f64>,
    pub resolution_rate: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<agent_performance::Model> for AgentPerformance {
    fn from(p: agent_performance::Model) -> Self {
        Self {
            id: p.id,
            agent_id: p.agent_id,
            date: p.date,
            total_chats: p.total_chats,
            chats_assigned: p.chats_assigned,
            chats_resolved: p.chats_resolved,
            chats_transferred: p.chats_transferred,
            messages_sent: p.messages_sent,
            messages_received: p.messages_received,
            avg_response_time: p.avg_response_time,
            first_response_time: p.first_response_time,
            total_active_time: p.total_active_time,
            avg_chat_duration: p.avg_chat_duration.or(p.avg_resolution_time_secs),
            customer_satisfaction: p.customer_satisfaction,
            resolution_rate: p.resolution_rate,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatsReport {
    pub agent_id: Uuid,
    pub days: Vec<AgentPerformance>,
    pub chats_assigned: i64,
    pub chats_resolved: i64,
    pub chats_transferred: i64,
    pub messages_sent: i64,
    pub messages_received: i64,
    /// Mean of the days' averages, weighted by messages sent.
    pub avg_response_time: Option<f64>,
}

#[utoipa::path(get, path = "/api/whatsapp/stats/agents/{agentId}", tag = "stats",
    params(("agentId" = Uuid, Path, description = "agent id"), Range),
    responses((status = 200, body = AgentStatsReport), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn agent(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(agent_id): Id,
    Q(r): Q<Range>,
) -> ApiResult<axum::Json<AgentStatsReport>> {
    let agent = agents::visible(&state, &who, agent_id).await?;
    if who.agent_id() != Some(agent.id) {
        who.require(Perm::ViewReports)?;
    }
    let (from, to) = range(&r)?;
    let rows = agent_performance::Entity::find()
        .filter(agent_performance::Column::AgentId.eq(agent.id))
        .filter(agent_performance::Column::Date.gte(from.date_naive()))
        .filter(agent_performance::Column::Date.lte(to.date_naive()))
        .order_by(agent_performance::Column::Date, Order::Asc)
        .all(&state.db)
        .await?;
    let sum = |f: fn(&agent_performance::Model) -> i32| rows.iter().map(|r| i64::from(f(r))).sum();
    let weighted: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            r.avg_response_time
                .map(|a| (a, f64::from(r.messages_sent.max(1))))
        })
        .collect();
    let weight: f64 = weighted.iter().map(|(_, w)| w).sum();
    Ok(axum::Json(AgentStatsReport {
        agent_id: agent.id,
        chats_assigned: sum(|r| r.chats_assigned),
        chats_resolved: sum(|r| r.chats_resolved),
        chats_transferred: sum(|r| r.chats_transferred),
        messages_sent: sum(|r| r.messages_sent),
        messages_received: sum(|r| r.messages_received),
        avg_response_time: (weight > 0.0)
            .then(|| weighted.iter().map(|(a, w)| a * w).sum::<f64>() / weight),
        days: rows.into_iter().map(AgentPerformance::from).collect(),
    }))
}
