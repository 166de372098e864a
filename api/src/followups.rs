//! Follow-ups: list (filters `status`, `agentId`, `from`/`to` on
//! `scheduledAt`), a chat's, create, update (including complete and
//! cancel), delete (soft). Creating and closing are the domain's
//! (`wapipe_domain::followups`, shared with the CLI and the reminder
//! worker); an agent without `canViewAllChats` sees its own follow-ups.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::audit::{self, Entry};
use wapipe_domain::followups::{self as domain, FollowUpError, NewFollowUp, Status};
use wapipe_shared::entities::follow_ups;

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::chats;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};
use crate::page::{self, Keyset, Page};
pub use wapipe_domain::views::FollowUp;

fn err(e: FollowUpError) -> ApiError {
    match e {
        FollowUpError::UnknownChat(_) => ApiError::field("chatId", "no such chat"),
        FollowUpError::UnknownAgent(_) | FollowUpError::AgentOfOtherCompany { .. } => {
            ApiError::field("agentId", e.to_string())
        }
        FollowUpError::NotFound(_) => ApiError::not_found("follow-up"),
        FollowUpError::InPast { .. } => ApiError::field("scheduledAt", e.to_string()),
        FollowUpError::BadPriority(_) => ApiError::field("priority", e.to_string()),
        FollowUpError::BadStatus(_) => ApiError::field("status", e.to_string()),
        FollowUpError::EmptyTitle | FollowUpError::TitleTooLong(_) => {
            ApiError::field("title", e.to_string())
        }
        FollowUpError::NotOpen { .. } => ApiError::conflict("not_open", e.to_string()),
        FollowUpError::Db(e) => ApiError::internal(e),
    }
}

fn scope(who: &Principal) -> Condition {
    let mut c = Condition::all()
        .add(follow_ups::Column::IsDeleted.eq(false))
        .add(who.config_scope(follow_ups::Column::ConfigId));
    if !who.can(Perm::ViewAllChats) {
        c = c.add(follow_ups::Column::AgentId.eq(who.agent_id()));
    }
    c
}

async fn visible(state: &AppState, who: &Principal, id: Uuid) -> ApiResult<follow_ups::Model> {
    follow_ups::Entity::find_by_id(id)
        .filter(scope(who))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("follow-up"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListFollowUps {
    /// `pending | completed | cancelled | overdue`.
    pub status: Option<String>,
    pub agent_id: Option<Uuid>,
    /// Scheduled at or after (RFC 3339 or YYYY-MM-DD).
    pub from: Option<String>,
    /// Scheduled before.
    pub to: Option<String>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

async fn list_where(
    state: &AppState,
    who: &Principal,
    extra: Condition,
    p: ListFollowUps,
) -> ApiResult<Page<FollowUp>> {
    let mut cond = scope(who).add(extra);
    if let Some(s) = &p.status {
        let s: Status = s.parse().map_err(err)?;
        cond = cond.add(follow_ups::Column::Status.eq(s.as_str()));
    }
    if let Some(a) = p.agent_id {
        cond = cond.add(follow_ups::Column::AgentId.eq(a));
    }
    if let Some(f) = &p.from {
        cond = cond.add(follow_ups::Column::ScheduledAt.gte(page::parse_time("from", f)?));
    }
    if let Some(t) = &p.to {
        cond = cond.add(follow_ups::Column::ScheduledAt.lt(page::parse_time("to", t)?));
    }
    let by = Keyset::asc(follow_ups::Column::ScheduledAt, follow_ups::Column::Id);
    let q = follow_ups::Entity::find().filter(cond);
    by.page(&state.db, q, p.cursor.as_deref(), p.limit, FollowUp::from)
        .await
}

#[utoipa::path(get, path = "/api/whatsapp/followups", tag = "follow-ups", params(ListFollowUps),
    responses((status = 200, body = Page<FollowUp>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListFollowUps>,
) -> ApiResult<axum::Json<Page<FollowUp>>> {
    Ok(axum::Json(
        list_where(&state, &who, Condition::all(), p).await?,
    ))
}

#[utoipa::path(get, path = "/api/whatsapp/chats/{chatId}/followups", tag = "follow-ups",
    params(("chatId" = Uuid, Path, description = "chat id"), ListFollowUps),
    responses((status = 200, body = Page<FollowUp>), (status = 404, body = ErrorBody)))]
pub async fn of_chat(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(chat_id): Id,
    Q(p): Q<ListFollowUps>,
) -> ApiResult<axum::Json<Page<FollowUp>>> {
    let chat = chats::visible(&state, &who, chat_id).await?;
    let cond = Condition::all().add(follow_ups::Column::ChatId.eq(chat.id));
    Ok(axum::Json(list_where(&state, &who, cond, p).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewFollowUpBody {
    pub chat_id: Uuid,
    /// Default: the calling agent.
    pub agent_id: Option<Uuid>,
    pub title: String,
    pub notes: Option<String>,
    pub scheduled_at: chrono::DateTime<chrono::Utc>,
    /// `low | medium | high`, default medium.
    pub priority: Option<String>,
}

#[utoipa::path(post, path = "/api/whatsapp/followups", tag = "follow-ups", request_body = NewFollowUpBody,
    responses((status = 201, body = FollowUp), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<NewFollowUpBody>,
) -> ApiResult<impl IntoResponse> {
    let chat = chats::visible(&state, &who, b.chat_id).await?;
    let agent = b
        .agent_id
        .or(who.agent_id())
        .ok_or_else(|| ApiError::field("agentId", "required with an admin key"))?;
    if Some(agent) != who.agent_id() && !who.can(Perm::AssignChats) {
        return Err(ApiError::forbidden(
            "scheduling for another agent takes canAssignChats",
        ));
    }
    let f = domain::create(
        &state.db,
        NewFollowUp {
            chat_id: chat.id,
            agent_id: agent,
            scheduled_at: b.scheduled_at,
            title: b.title,
            notes: b.notes,
            priority: b.priority,
            created_by: who.agent_id(),
        },
    )
    .await
    .map_err(err)?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(f.config_id),
            who: who.who(),
            action: "followup.create",
            entity_type: "follow_ups",
            entity_id: f.id.to_string(),
            before: None,
            after: Some(json!({"scheduledAt": f.scheduled_at, "agentId": f.agent_id})),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(FollowUp::from(f))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateFollowUp {
    pub title: Option<String>,
    pub notes: Option<String>,
    /// Rescheduling re-arms the reminder.
    pub scheduled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub priority: Option<String>,
    /// `completed` or `cancelled` closes it.
    pub status: Option<String>,
}

#[utoipa::path(put, path = "/api/whatsapp/followups/{id}", tag = "follow-ups", request_body = UpdateFollowUp,
    params(("id" = Uuid, Path, description = "follow-up id")),
    responses((status = 200, body = FollowUp), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already closed")))]
pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(up): Body<UpdateFollowUp>,
) -> ApiResult<axum::Json<FollowUp>> {
    let before = visible(&state, &who, id).await?;
    let open = matches!(before.status.as_str(), "pending" | "overdue");
    let edits = up.title.is_some()
        || up.notes.is_some()
        || up.scheduled_at.is_some()
        || up.priority.is_some();
    if edits {
        if !open {
            return Err(ApiError::conflict(
                "not_open",
                format!("the follow-up is {}", before.status),
            ));
        }
        let now = wapipe_domain::clock::now();
        let mut q = follow_ups::Entity::update_many()
            .col_expr(follow_ups::Column::UpdatedAt, Expr::value(now))
            .filter(follow_ups::Column::Id.eq(id))
            .filter(follow_ups::Column::Status.is_in(["pending", "overdue"]));
        if let Some(t) = &up.title {
            let t = t.trim();
            if t.is_empty() || t.chars().count() > domain::MAX_TITLE_CHARS {
                return Err(ApiError::field(
                    "title",
                    format!("1 to {} characters", domain::MAX_TITLE_CHARS),
                ));
            }
            q = q.col_expr(follow_ups::Column::Title, Expr::value(t));
        }
        if let Some(n) = &up.notes {
            q = q.col_expr(follow_ups::Column::Notes, Expr::value(n.as_str()));
        }
        if let Some(p) = &up.priority {
            let p: domain::Priority = p.parse().map_err(err)?;
            q = q.col_expr(follow_ups::Column::Priority, Expr::value(p.as_str()));
        }
        if let Some(at) = up.scheduled_at {
            if at < now {
                return Err(ApiError::field("scheduledAt", "in the past"));
            }
            q = q
                .col_expr(follow_ups::Column::ScheduledAt, Expr::value(at))
                .col_expr(follow_ups::Column::Status, Expr::value("pending"))
                .col_expr(follow_ups::Column::ReminderSent, Expr::value(false))
                .col_expr(
                    follow_ups::Column::ClaimedAt,
                    Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
                );
        }
        q.exec(&state.db).await?;
    }
    match up.status.as_deref() {
        None => {}
        Some("completed") => {
            domain::complete(&state.db, id, who.agent_id())
                .await
                .map_err(err)?;
        }
        Some("cancelled") => {
            domain::cancel(&state.db, id).await.map_err(err)?;
        }
        Some(_) => return Err(ApiError::field("status", "completed or cancelled")),
    }
    let after = visible(&state, &who, id).await?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(after.config_id),
            who: who.who(),
            action: "followup.update",
            entity_type: "follow_ups",
            entity_id: id.to_string(),
            before: Some(json!({"status": before.status, "scheduledAt": before.scheduled_at})),
            after: Some(json!({"status": after.status, "scheduledAt": after.scheduled_at})),
        },
    )
    .await?;
    Ok(axum::Json(FollowUp::from(after)))
}

#[utoipa::path(delete, path = "/api/whatsapp/followups/{id}", tag = "follow-ups",
    params(("id" = Uuid, Path, description = "follow-up id")),
    responses((status = 204, description = "deleted (soft)"), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    let before = visible(&state, &who, id).await?;
    let now = wapipe_domain::clock::now();
    follow_ups::Entity::update_many()
        .col_expr(follow_ups::Column::IsDeleted, Expr::value(true))
        .col_expr(follow_ups::Column::DeletedAt, Expr::value(now))
        .col_expr(follow_ups::Column::UpdatedAt, Expr::value(now))
        .filter(follow_ups::Column::Id.eq(id))
        .exec(&state.db)
        .await?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(before.config_id),
            who: who.who(),
            action: "followup.delete",
            entity_type: "follow_ups",
            entity_id: id.to_string(),
            before: Some(json!({"status": before.status})),
            after: None,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
