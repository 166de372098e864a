//! `/api/whatsapp/agents`: list, get, create, update, presence status, and
//! the agents online now. Agents are seen within the key's companies;
//! creating and editing them takes an admin key, setting a status the agent
//! itself or an admin.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, SqlErr};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::agents::{self as domain_agents, AgentError, NewAgent};
use wapipe_domain::audit::{self, Entry};
use wapipe_shared::entities::{agents, whatsapp_configs};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};
use crate::page::{Keyset, Page};

/// seed 002 `permissions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Permissions {
    #[serde(default)]
    pub can_assign_chats: bool,
    #[serde(default)]
    pub can_transfer_chats: bool,
    #[serde(default)]
    pub can_view_all_chats: bool,
    #[serde(default)]
    pub can_manage_templates: bool,
    #[serde(default)]
    pub can_manage_labels: bool,
    #[serde(default)]
    pub can_block_numbers: bool,
    #[serde(default)]
    pub can_view_reports: bool,
}

/// seed 002 `stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStats {
    pub total_chats_handled: i64,
    /// Seconds.
    pub avg_response_time: Option<f64>,
    /// Seconds.
    pub avg_resolution_time: Option<f64>,
    /// 1 to 5.
    pub customer_satisfaction: Option<f64>,
    pub messages_sent: i64,
    pub messages_received: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleDay {
    /// `monday` … `sunday`.
    pub day: String,
    /// `HH:MM`.
    pub start: String,
    pub end: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// seed 002 `workingHours`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkingHours {
    pub timezone: String,
    #[serde(default)]
    pub schedule: Vec<ScheduleDay>,
}

/// seed 002 Agent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub id: Uuid,
    pub user_id: Option<String>,
    pub name: String,
    pub email: String,
    pub phone_number: Option<String>,
    pub avatar: Option<String>,
    /// `online | away | busy | offline`.
    pub status: String,
    /// `available | unavailable`.
    pub availability: String,
    pub is_online: bool,
    pub last_seen: Option<chrono::DateTime<chrono::Utc>>,
    pub max_concurrent_chats: i32,
    pub current_chat_count: i32,
    pub permissions: Permissions,
    pub stats: AgentStats,
    pub working_hours: Option<WorkingHours>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub last_active_at: Option<chrono::DateTime<chrono::Utc>>,
    pub is_active: bool,
    pub is_deleted: bool,
    /// The company the agent works for.
    pub company: Option<String>,
}

impl Agent {
    pub fn from_row(a: agents::Model) -> Self {
        Self {
            permissions: a
                .permissions
                .and_then(|p| {
                    // Stored as written; unknown keys are ignored on read.
                    let mut m = p.as_object()?.clone();
                    m.retain(|k, _| k.starts_with("can"));
                    serde_json::from_value(Value::Object(m)).ok()
                })
                .unwrap_or_default(),
            stats: a
                .stats
                .and_then(|s| serde_json::from_value(s).ok())
                .unwrap_or_default(),
            working_hours: a.working_hours.and_then(|w| serde_json::from_value(w).ok()),
            id: a.id,
            user_id: a.user_id,
            name: a.name,
            email: a.email,
            phone_number: a.phone_number,
            avatar: a.avatar,
            status: a.status,
            availability: a.availability,
            is_online: a.is_online,
            last_seen: a.last_seen,
            max_concurrent_chats: a.max_concurrent_chats,
            current_chat_count: a.current_chat_count,
            created_at: a.created_at,
            updated_at: a.updated_at,
            last_active_at: a.last_active_at,
            is_active: a.is_active,
            is_deleted: a.is_deleted,
            company: a.company,
        }
    }
}

pub const STATUSES: [&str; 4] = ["online", "away", "busy", "offline"];
pub const AVAILABILITY: [&str; 2] = ["available", "unavailable"];

/// Agents of the key's companies.
pub fn scope(who: &Principal) -> Condition {
    match &who.configs {
        None => Condition::all(),
        Some(ids) => Condition::any()
            .add(agents::Column::ConfigId.is_in(ids.iter().copied()))
            .add(
                agents::Column::Company.in_subquery(
                    Query::select()
                        .column(whatsapp_configs::Column::Company)
                        .from(whatsapp_configs::Entity)
                        .and_where(whatsapp_configs::Column::Id.is_in(ids.iter().copied()))
                        .to_owned(),
                ),
            ),
    }
}

pub async fn visible(state: &AppState, who: &Principal, id: Uuid) -> ApiResult<agents::Model> {
    agents::Entity::find_by_id(id)
        .filter(scope(who))
        .filter(agents::Column::IsDeleted.eq(false))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))
}

fn admin_only(who: &Principal) -> ApiResult<()> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("managing agents takes an admin key"))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAgents {
    /// `online | away | busy | offline`.
    pub status: Option<String>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

async fn list_where(
    state: &AppState,
    who: &Principal,
    extra: Condition,
    p: ListAgents,
) -> ApiResult<Page<Agent>> {
    let mut cond = Condition::all()
        .add(scope(who))
        .add(agents::Column::IsDeleted.eq(false))
        .add(extra);
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::field("status", "online, away, busy or offline"));
        }
        cond = cond.add(agents::Column::Status.eq(s.as_str()));
    }
    let by = Keyset::asc(agents::Column::CreatedAt, agents::Column::Id);
    let q = agents::Entity::find().filter(cond);
    by.page(&state.db, q, p.cursor.as_deref(), p.limit, Agent::from_row)
        .await
}

#[utoipa::path(get, path = "/api/whatsapp/agents", tag = "agents", params(ListAgents),
    responses((status = 200, body = Page<Agent>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListAgents>,
) -> ApiResult<axum::Json<Page<Agent>>> {
    Ok(axum::Json(
        list_where(&state, &who, Condition::all(), p).await?,
    ))
}

#[utoipa::path(get, path = "/api/whatsapp/agents/online", tag = "agents", params(ListAgents),
    responses((status = 200, body = Page<Agent>)))]
pub async fn online(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListAgents>,
) -> ApiResult<axum::Json<Page<Agent>>> {
    let cond = Condition::all()
        .add(agents::Column::IsOnline.eq(true))
        .add(agents::Column::IsActive.eq(true));
    Ok(axum::Json(list_where(&state, &who, cond, p).await?))
}

#[utoipa::path(get, path = "/api/whatsapp/agents/{id}", tag = "agents",
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<Agent>> {
    Ok(axum::Json(Agent::from_row(
        visible(&state, &who, id).await?,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewAgentBody {
    pub name: String,
    pub email: String,
    pub phone_number: Option<String>,
    /// Needed when the key has several companies.
    pub company: Option<String>,
    pub user_id: Option<String>,
    pub avatar: Option<String>,
    pub max_concurrent_chats: Option<i32>,
    pub permissions: Option<Permissions>,
    pub working_hours: Option<WorkingHours>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateAgent {
    pub name: Option<String>,
    pub phone_number: Option<String>,
    pub user_id: Option<String>,
    pub avatar: Option<String>,
    pub max_concurrent_chats: Option<i32>,
    pub permissions: Option<Permissions>,
    pub working_hours: Option<WorkingHours>,
    pub is_active: Option<bool>,
}

fn check_max(v: Option<i32>) -> ApiResult<()> {
    match v {
        Some(n) if !(1..=1000).contains(&n) => {
            Err(ApiError::field("maxConcurrentChats", "between 1 and 1000"))
        }
        _ => Ok(()),
    }
}

fn check_hours(w: &Option<WorkingHours>) -> ApiResult<()> {
    const DAYS: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let Some(w) = w else { return Ok(()) };
    for d in &w.schedule {
        if !DAYS.contains(&d.day.as_str()) {
            return Err(ApiError::field(
                "workingHours",
                format!("{:?} is not a day", d.day),
            ));
        }
        for t in [&d.start, &d.end] {
            if chrono::NaiveTime::parse_from_str(t, "%H:%M").is_err() {
                return Err(ApiError::field(
                    "workingHours",
                    format!("{t:?} is not HH:MM"),
                ));
            }
        }
    }
    Ok(())
}

fn unique_or(e: sea_orm::DbErr) -> ApiError {
    if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        ApiError::conflict("agent_exists", "an agent with this email or userId exists")
    } else {
        ApiError::internal(e)
    }
}

/// Applies the optional fields of a create or an update.
async fn apply(state: &AppState, id: Uuid, up: &UpdateAgent) -> ApiResult<()> {
    let now = wapipe_domain::clock::now();
    let mut q = agents::Entity::update_many()
        .col_expr(agents::Column::UpdatedAt, Expr::value(now))
        .filter(agents::Column::Id.eq(id));
    if let Some(v) = &up.name {
        if v.trim().is_empty() {
            return Err(ApiError::field("name", "must not be empty"));
        }
        q = q.col_expr(agents::Column::Name, Expr::value(v.trim()));
    }
    if let Some(v) = &up.phone_number {
        let p = domain_agents::normalize_phone(v)
            .map_err(|e| ApiError::field("phoneNumber", e.to_string()))?;
        q = q.col_expr(agents::Column::PhoneNumber, Expr::value(p));
    }
    if let Some(v) = &up.user_id {
        q = q.col_expr(agents::Column::UserId, Expr::value(v.as_str()));
    }
    if let Some(v) = &up.avatar {
        q = q.col_expr(agents::Column::Avatar, Expr::value(v.as_str()));
    }
    if let Some(v) = up.max_concurrent_chats {
        q = q.col_expr(agents::Column::MaxConcurrentChats, Expr::value(v));
    }
    if let Some(v) = &up.permissions {
        q = q.col_expr(agents::Column::Permissions, Expr::value(json!(v)));
    }
    if let Some(v) = &up.working_hours {
        q = q.col_expr(agents::Column::WorkingHours, Expr::value(json!(v)));
    }
    if let Some(v) = up.is_active {
        q = q.col_expr(agents::Column::IsActive, Expr::value(v));
    }
    q.exec(&state.db).await.map_err(unique_or)?;
    Ok(())
}

#[utoipa::path(post, path = "/api/whatsapp/agents", tag = "agents", request_body = NewAgentBody,
    responses((status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(new): Body<NewAgentBody>,
) -> ApiResult<impl IntoResponse> {
    admin_only(&who)?;
    check_max(new.max_concurrent_chats)?;
    check_hours(&new.working_hours)?;
    // The company must be one of the key's.
    let company = match new.company.clone() {
        Some(c) => Some(c),
        None => match &who.configs {
            None => None,
            Some(_) => Some(
                who.pick_config(&state, None)
                    .await
                    .map_err(|_| {
                        ApiError::field("company", "required: this key has several companies")
                    })?
                    .company,
            ),
        },
    };
    if let (Some(c), Some(ids)) = (&company, &who.configs) {
        let ok = whatsapp_configs::Entity::find()
            .filter(whatsapp_configs::Column::Company.eq(c.as_str()))
            .filter(whatsapp_configs::Column::Id.is_in(ids.iter().copied()))
            .one(&state.db)
            .await?
            .is_some();
        if !ok {
            return Err(ApiError::field(
                "company",
                "not one of this key's companies",
            ));
        }
    }
    let agent = domain_agents::create(
        &state.db,
        NewAgent {
            name: new.name.clone(),
            email: new.email.clone(),
            phone_number: new.phone_number.clone(),
            company,
        },
    )
    .await
    .map_err(|e| match e {
        AgentError::EmptyName => ApiError::field("name", "required"),
        AgentError::BadEmail(_) => ApiError::field("email", e.to_string()),
        AgentError::BadPhone(_) => ApiError::field("phoneNumber", e.to_string()),
        AgentError::UnknownCompany { .. } | AgentError::CompanyNeeded(_) => {
            ApiError::field("company", e.to_string())
        }
        AgentError::NoCompany => ApiError::conflict("no_config", e.to_string()),
        AgentError::Db(e) => unique_or(e),
    })?;
    apply(
        &state,
        agent.id,
        &UpdateAgent {
            user_id: new.user_id,
            avatar: new.avatar,
            max_concurrent_chats: new.max_concurrent_chats,
            permissions: new.permissions,
            working_hours: new.working_hours,
            ..Default::default()
        },
    )
    .await?;
    audit::record(
        &state.db,
        Entry {
            config_id: agent.config_id,
            who: who.who(),
            action: "agent.create",
            entity_type: "agents",
            entity_id: agent.id.to_string(),
            before: None,
            after: Some(json!({"name": agent.name, "email": agent.email})),
        },
    )
    .await?;
    let row = visible(&state, &who, agent.id).await?;
    Ok((StatusCode::CREATED, axum::Json(Agent::from_row(row))))
}

#[utoipa::path(put, path = "/api/whatsapp/agents/{id}", tag = "agents", request_body = UpdateAgent,
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(up): Body<UpdateAgent>,
) -> ApiResult<axum::Json<Agent>> {
    let before = visible(&state, &who, id).await?;
    admin_only(&who)?;
    check_max(up.max_concurrent_chats)?;
    check_hours(&up.working_hours)?;
    apply(&state, id, &up).await?;
    let after = visible(&state, &who, id).await?;
    audit::record(
        &state.db,
        Entry {
            config_id: after.config_id,
            who: who.who(),
            action: "agent.update",
            entity_type: "agents",
            entity_id: id.to_string(),
            before: Some(json!({"maxConcurrentChats": before.max_concurrent_chats,
                "permissions": before.permissions, "isActive": before.is_active})),
            after: Some(json!({"maxConcurrentChats": after.max_concurrent_chats,
                "permissions": after.permissions, "isActive": after.is_active})),
        },
    )
    .await?;
    Ok(axum::Json(Agent::from_row(after)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentStatus {
    /// `online | away | busy | offline`.
    pub status: String,
    /// `available | unavailable`; default: available unless offline.
    pub availability: Option<String>,
}

#[utoipa::path(put, path = "/api/whatsapp/agents/{id}/status", tag = "agents", request_body = AgentStatus,
    params(("id" = Uuid, Path, description = "agent id")),
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(s): Body<AgentStatus>,
) -> ApiResult<axum::Json<Agent>> {
    visible(&state, &who, id).await?;
    if !who.is_admin() && who.agent_id() != Some(id) {
        return Err(ApiError::forbidden("an agent sets only their own status"));
    }
    if !STATUSES.contains(&s.status.as_str()) {
        return Err(ApiError::field("status", "online, away, busy or offline"));
    }
    let availability = match s.availability.as_deref() {
        Some(a) if AVAILABILITY.contains(&a) => a,
        Some(_) => return Err(ApiError::field("availability", "available or unavailable")),
        None if s.status == "offline" => "unavailable",
        None => "available",
    };
    let now = wapipe_domain::clock::now();
    agents::Entity::update_many()
        .col_expr(agents::Column::Status, Expr::value(s.status.as_str()))
        .col_expr(agents::Column::Availability, Expr::value(availability))
        .col_expr(agents::Column::IsOnline, Expr::value(s.status != "offline"))
        .col_expr(agents::Column::LastSeen, Expr::value(now))
        .col_expr(agents::Column::LastActiveAt, Expr::value(now))
        .col_expr(agents::Column::UpdatedAt, Expr::value(now))
        .filter(agents::Column::Id.eq(id))
        .exec(&state.db)
        .await?;
    Ok(axum::Json(Agent::from_row(
        visible(&state, &who, id).await?,
    )))
}
