//! `/api/whatsapp/chats`: list (filters, keyset pages), get, create,
//! update, soft delete, assign, unassign, transfer and mark read.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::{Expr, Func, LikeExpr, OnConflict, Query, SimpleExpr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, ExprTrait, Order, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::audit::{self, Entry};
use wapipe_domain::events;
use wapipe_domain::inbox::{self, Release};
use wapipe_domain::outbox::normalize_wa_id;
use wapipe_shared::entities::{agents, chat_labels, chats, customers, messages, whatsapp_configs};
use wapipe_shared::jobs::{Job, MarkRead, OutboundSend, lane_key};

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};
use crate::page::{self, Cursor, Page};
use crate::views::{Chat, ChatExtras, CustomerInfo};

pub const STATUSES: [&str; 4] = ["unassigned", "assigned", "resolved", "closed"];
pub const PRIORITIES: [&str; 4] = ["low", "medium", "high", "urgent"];

/// The list's sort key: the last message's time, or creation for a chat
/// without messages yet.
fn sort_key() -> SimpleExpr {
    Func::coalesce([
        Expr::col((chats::Entity, chats::Column::LastMessageTime)),
        Expr::col((chats::Entity, chats::Column::CreatedAt)),
    ])
    .into()
}

fn key_of(c: &chats::Model) -> Cursor {
    Cursor {
        at: c.last_message_time.unwrap_or(c.created_at),
        id: c.id,
    }
}

/// Labels, transfers and groups of a page of chats, one query each.
pub async fn extras(state: &AppState, chats: &[&chats::Model]) -> ApiResult<ChatExtras> {
    Ok(wapipe_domain::views::chat_extras(&state.db, chats).await?)
}

pub async fn view(state: &AppState, chat: chats::Model) -> ApiResult<Chat> {
    let extras = extras(state, &[&chat]).await?;
    Ok(Chat::from_row(chat, &extras))
}

/// The chat if the caller may see it; 404 otherwise (another company's,
/// another agent's without `canViewAllChats`, deleted, or absent).
pub async fn visible(state: &AppState, who: &Principal, id: Uuid) -> ApiResult<chats::Model> {
    chats::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|c| who.sees_chat(c))
        .ok_or_else(|| ApiError::not_found("chat"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListChats {
    /// `unassigned | assigned | resolved | closed`.
    pub status: Option<String>,
    /// An agent id, `me` or `none`.
    pub assigned_to: Option<String>,
    /// A label id.
    pub label: Option<Uuid>,
    /// `low | medium | high | urgent`.
    pub priority: Option<String>,
    /// `true`: only chats with unread messages.
    pub unread: Option<bool>,
    /// Last activity at or after (RFC 3339 or YYYY-MM-DD).
    pub from: Option<String>,
    /// Last activity before.
    pub to: Option<String>,
    /// Phone number or customer name prefix.
    pub q: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

fn one_of(field: &str, v: &str, allowed: &[&str]) -> ApiResult<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

/// `LIKE` pattern for a prefix, with the wildcards of the input escaped.
fn prefix_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 1);
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[utoipa::path(get, path = "/api/whatsapp/chats", tag = "chats", params(ListChats),
    responses((status = 200, body = Page<Chat>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListChats>,
) -> ApiResult<axum::Json<Page<Chat>>> {
    let limit = page::limit(p.limit)?;
    let mut cond = Condition::all()
        .add(chats::Column::IsDeleted.eq(false))
        .add(who.config_scope(chats::Column::ConfigId));
    if !who.can(Perm::ViewAllChats) {
        cond = cond.add(chats::Column::AssignedTo.eq(who.agent_id()));
    }
    if let Some(s) = &p.status {
        one_of("status", s, &STATUSES)?;
        cond = cond.add(chats::Column::Status.eq(s.as_str()));
    }
    if let Some(s) = &p.priority {
        one_of("priority", s, &PRIORITIES)?;
        cond = cond.add(chats::Column::Priority.eq(s.as_str()));
    }
    match p.assigned_to.as_deref() {
        None => {}
        Some("none") => cond = cond.add(chats::Column::AssignedTo.is_null()),
        Some("me") => match who.agent_id() {
            Some(me) => cond = cond.add(chats::Column::AssignedTo.eq(me)),
            None => return Err(ApiError::field("assignedTo", "`me` needs an agent key")),
        },
        Some(id) => {
            let id = Uuid::parse_str(id)
                .map_err(|_| ApiError::field("assignedTo", "an agent id, `me` or `none`"))?;
            cond = cond.add(chats::Column::AssignedTo.eq(id));
        }
    }
    if let Some(label) = p.label {
        cond = cond.add(
            chats::Column::Id.in_subquery(
                Query::select()
                    .column(chat_labels::Column::ChatId)
                    .from(chat_labels::Entity)
                    .and_where(chat_labels::Column::LabelId.eq(label))
                    .to_owned(),
            ),
        );
    }
    if p.unread == Some(true) {
        cond = cond.add(chats::Column::UnreadCount.gt(0));
    }
    if let Some(from) = &p.from {
        cond = cond.add(sort_key().gte(page::parse_time("from", from)?));
    }
    if let Some(to) = &p.to {
        cond = cond.add(sort_key().lt(page::parse_time("to", to)?));
    }
    if let Some(q) = p.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        let phone = q.strip_prefix('+').unwrap_or(q);
        cond = cond.add(
            Condition::any()
                .add(
                    Expr::col((chats::Entity, chats::Column::PhoneNumber))
                        .like(LikeExpr::new(prefix_pattern(phone)).escape('\\')),
                )
                .add(
                    Expr::expr(Func::lower(Expr::col((
                        chats::Entity,
                        chats::Column::CustomerName,
                    ))))
                    .like(LikeExpr::new(prefix_pattern(&q.to_lowercase())).escape('\\')),
                ),
        );
    }
    cond = cond.add(page::after_expr(
        p.cursor.as_deref(),
        sort_key(),
        Expr::col((chats::Entity, chats::Column::Id)),
        true,
    )?);
    let rows = chats::Entity::find()
        .filter(cond)
        .order_by(sort_key(), Order::Desc)
        .order_by(chats::Column::Id, Order::Desc)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let page: Vec<&chats::Model> = rows.iter().take(limit as usize).collect();
    let extras = extras(&state, &page).await?;
    Ok(axum::Json(page::paginate(rows, limit, key_of, |c| {
        Chat::from_row(c, &extras)
    })))
}

#[utoipa::path(get, path = "/api/whatsapp/chats/{id}", tag = "chats",
    params(("id" = Uuid, Path, description = "chat id")),
    responses((status = 200, body = Chat), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<Chat>> {
    let chat = visible(&state, &who, id).await?;
    Ok(axum::Json(view(&state, chat).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewChat {
    /// The customer's WhatsApp number (+ and 6 to 15 digits).
    pub phone_number: String,
    pub customer_name: Option<String>,
    /// Needed when the key has several WhatsApp numbers.
    pub config_id: Option<Uuid>,
    pub priority: Option<String>,
    pub customer_info: Option<CustomerInfo>,
}

#[utoipa::path(post, path = "/api/whatsapp/chats", tag = "chats", request_body = NewChat,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer")),
    responses((status = 201, body = Chat), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the customer already has a chat")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(new): Body<NewChat>,
) -> ApiResult<impl IntoResponse> {
    let wa_id = normalize_wa_id(&new.phone_number)
        .map_err(|e| ApiError::field("phoneNumber", e.to_string()))?;
    if let Some(p) = &new.priority {
        one_of("priority", p, &PRIORITIES)?;
    }
    let config = who.pick_config(&state, new.config_id).await?;
    let now = wapipe_domain::clock::now();
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    customers::Entity::insert(customers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config.id),
        wa_id: Set(Some(wa_id.clone())),
        phone_number: Set(Some(wa_id.clone())),
        name: Set(new.customer_name.clone()),
        first_contact_at: Set(Some(now)),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([customers::Column::ConfigId, customers::Column::WaId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    let customer = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config.id))
        .filter(customers::Column::WaId.eq(&wa_id))
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::internal("customer vanished after its upsert"))?;
    let id = Uuid::now_v7();
    let inserted = chats::Entity::insert(chats::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config.id),
        customer_id: Set(customer.id),
        phone_number: Set(Some(wa_id.clone())),
        customer_name: Set(new
            .customer_name
            .clone()
            .or(customer.name.clone())
            .or(customer.whatsapp_name.clone())),
        status: Set("unassigned".to_owned()),
        priority: Set(new.priority.clone().unwrap_or_else(|| "medium".to_owned())),
        source: Set("api".to_owned()),
        provider: Set("meta-whatsapp".to_owned()),
        whatsapp_business_account_id: Set(Some(config.waba_id.clone())),
        phone_number_id: Set(Some(config.phone_number_id.clone())),
        customer_info: Set(new
            .customer_info
            .as_ref()
            .map(|i| serde_json::to_value(i).unwrap_or_default())),
        last_message_time: Set(None),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([chats::Column::ConfigId, chats::Column::CustomerId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    if inserted == 0 {
        txn.rollback().await?;
        return Err(ApiError::conflict(
            "chat_exists",
            format!("{wa_id} already has a chat on this number"),
        ));
    }
    audit::record(
        &txn,
        Entry {
            config_id: Some(config.id),
            who: who.who(),
            action: "chat.create",
            entity_type: "chats",
            entity_id: id.to_string(),
            before: None,
            after: Some(json!({"phoneNumber": wa_id})),
        },
    )
    .await?;
    events::record_chats(&txn, events::CHAT_CREATED, &[id]).await?;
    txn.commit().await?;
    let chat = chats::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::internal("chat vanished after its insert"))?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, chat).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateChat {
    /// `resolved` or `closed` frees the agent; `unassigned` reopens a
    /// resolved or closed chat that has no agent. Use assign for `assigned`.
    pub status: Option<String>,
    pub priority: Option<String>,
    pub customer_name: Option<String>,
    pub customer_info: Option<CustomerInfo>,
}

#[utoipa::path(put, path = "/api/whatsapp/chats/{id}", tag = "chats", request_body = UpdateChat,
    params(("id" = Uuid, Path, description = "chat id")),
    responses((status = 200, body = Chat), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(up): Body<UpdateChat>,
) -> ApiResult<axum::Json<Chat>> {
    let mut chat = visible(&state, &who, id).await?;
    if let Some(p) = &up.priority {
        one_of("priority", p, &PRIORITIES)?;
    }
    if let Some(s) = &up.status {
        one_of("status", s, &STATUSES)?;
        if s == "assigned" {
            return Err(ApiError::field(
                "status",
                "use POST /chats/{id}/assign to assign a chat",
            ));
        }
    }
    if up.priority.is_some() || up.customer_name.is_some() || up.customer_info.is_some() {
        let now = wapipe_domain::clock::now();
        let txn = wapipe_shared::db::begin_write(&state.db).await?;
        let mut q = chats::Entity::update_many()
            .col_expr(chats::Column::UpdatedAt, Expr::value(now))
            .filter(chats::Column::Id.eq(chat.id));
        if let Some(p) = &up.priority {
            q = q.col_expr(chats::Column::Priority, Expr::value(p.as_str()));
        }
        if let Some(n) = &up.customer_name {
            q = q.col_expr(chats::Column::CustomerName, Expr::value(n.as_str()));
        }
        if let Some(i) = &up.customer_info {
            q = q.col_expr(
                chats::Column::CustomerInfo,
                Expr::value(serde_json::to_value(i).unwrap_or_default()),
            );
        }
        q.exec(&txn).await?;
        audit::record(
            &txn,
            Entry {
                config_id: Some(chat.config_id),
                who: who.who(),
                action: "chat.update",
                entity_type: "chats",
                entity_id: chat.id.to_string(),
                before: Some(
                    json!({"priority": chat.priority, "customerName": chat.customer_name}),
                ),
                after: Some(json!({"priority": up.priority, "customerName": up.customer_name})),
            },
        )
        .await?;
        events::record_chats(&txn, events::CHAT_UPDATED, &[chat.id]).await?;
        txn.commit().await?;
        chat = visible(&state, &who, id).await?;
    }
    match up.status.as_deref() {
        Some(s) if s == chat.status => {}
        Some("resolved") => {
            chat = inbox::release(&state.db, &chat, who.who(), Release::Resolve).await?
        }
        Some("closed") => {
            chat = inbox::release(&state.db, &chat, who.who(), Release::Close).await?
        }
        Some("unassigned") => {
            if chat.assigned_to.is_some() {
                return Err(ApiError::conflict(
                    "assigned",
                    "the chat has an agent: use PUT /chats/{id}/unassign",
                ));
            }
            let txn = wapipe_shared::db::begin_write(&state.db).await?;
            let reopened = chats::Entity::update_many()
                .col_expr(chats::Column::Status, Expr::value("unassigned"))
                .col_expr(
                    chats::Column::UpdatedAt,
                    Expr::value(wapipe_domain::clock::now()),
                )
                .filter(chats::Column::Id.eq(chat.id))
                .filter(chats::Column::AssignedTo.is_null())
                .exec(&txn)
                .await?;
            if reopened.rows_affected > 0 {
                events::record_chats(&txn, events::CHAT_UPDATED, &[chat.id]).await?;
            }
            txn.commit().await?;
            chat = visible(&state, &who, id).await?;
        }
        _ => {}
    }
    Ok(axum::Json(view(&state, chat).await?))
}

#[utoipa::path(delete, path = "/api/whatsapp/chats/{id}", tag = "chats",
    params(("id" = Uuid, Path, description = "chat id")),
    responses((status = 204, description = "deleted (soft)"), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    let chat = visible(&state, &who, id).await?;
    inbox::release(&state.db, &chat, who.who(), Release::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignChat {
    pub agent_id: Uuid,
    /// Past the agent's `maxConcurrentChats`; admin keys only.
    #[serde(default)]
    pub force: bool,
}

/// The target agent, if it is in the caller's companies.
async fn agent_in_scope(
    state: &AppState,
    who: &Principal,
    chat: &chats::Model,
    id: Uuid,
) -> ApiResult<()> {
    let agent = agents::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|a| !a.is_deleted && a.is_active)
        .ok_or_else(|| ApiError::field("agentId", "no such agent"))?;
    let config = whatsapp_configs::Entity::find_by_id(chat.config_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("chat"))?;
    let same_company = agent.company.as_deref() == Some(config.company.as_str())
        || agent.config_id == Some(config.id);
    if !same_company {
        return Err(ApiError::field(
            "agentId",
            "this agent does not work for the chat's company",
        ));
    }
    let _ = who;
    Ok(())
}

fn check_force(who: &Principal, force: bool) -> ApiResult<()> {
    if force && !who.is_admin() {
        return Err(ApiError::forbidden(
            "only an admin key may force an assignment",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/whatsapp/chats/{id}/assign", tag = "chats", request_body = AssignChat,
    params(("id" = Uuid, Path, description = "chat id")),
    responses((status = 200, body = Chat), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the agent is at maxConcurrentChats")))]
pub async fn assign(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(a): Body<AssignChat>,
) -> ApiResult<axum::Json<Chat>> {
    let chat = visible(&state, &who, id).await?;
    who.require(Perm::AssignChats)?;
    check_force(&who, a.force)?;
    agent_in_scope(&state, &who, &chat, a.agent_id).await?;
    let chat = inbox::assign(&state.db, &chat, a.agent_id, who.who(), a.force, None).await?;
    Ok(axum::Json(view(&state, chat).await?))
}

#[utoipa::path(put, path = "/api/whatsapp/chats/{id}/unassign", tag = "chats",
    params(("id" = Uuid, Path, description = "chat id")),
    responses((status = 200, body = Chat), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn unassign(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<Chat>> {
    let chat = visible(&state, &who, id).await?;
    // An agent may hand back their own chat; others' need canAssignChats.
    if chat.assigned_to != who.agent_id() {
        who.require(Perm::AssignChats)?;
    }
    let chat = inbox::release(&state.db, &chat, who.who(), Release::Unassign).await?;
    Ok(axum::Json(view(&state, chat).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferChat {
    /// The agent who takes the chat over.
    pub to_agent_id: Uuid,
    pub reason: String,
    #[serde(default)]
    pub force: bool,
}

#[utoipa::path(post, path = "/api/whatsapp/chats/{id}/transfer", tag = "chats", request_body = TransferChat,
    params(("id" = Uuid, Path, description = "chat id")),
    responses((status = 200, body = Chat), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn transfer(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(t): Body<TransferChat>,
) -> ApiResult<axum::Json<Chat>> {
    let chat = visible(&state, &who, id).await?;
    who.require(Perm::TransferChats)?;
    check_force(&who, t.force)?;
    if t.reason.trim().is_empty() {
        return Err(ApiError::field("reason", "required"));
    }
    agent_in_scope(&state, &who, &chat, t.to_agent_id).await?;
    let chat = inbox::assign(
        &state.db,
        &chat,
        t.to_agent_id,
        who.who(),
        t.force,
        Some(t.reason),
    )
    .await?;
    Ok(axum::Json(view(&state, chat).await?))
}

/// Queues Meta's mark-as-read of `wamid` through the outbound queue.
pub async fn queue_mark_read(
    state: &AppState,
    config_id: Uuid,
    wamid: &str,
    customer_wa_id: &str,
) -> ApiResult<()> {
    let config = whatsapp_configs::Entity::find_by_id(config_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::internal("config of a chat is gone"))?;
    let job = OutboundSend::mark_read(
        MarkRead {
            config_id,
            provider_message_id: wamid.to_owned(),
            typing: false,
        },
        lane_key(&config.phone_number_id, customer_wa_id),
    );
    state
        .broker
        .publish(job.to_outbound())
        .await
        .map_err(ApiError::internal)
}

#[utoipa::path(put, path = "/api/whatsapp/chats/{id}/read", tag = "chats",
    params(("id" = Uuid, Path, description = "chat id")),
    responses((status = 200, body = Chat), (status = 404, body = ErrorBody)))]
pub async fn mark_read(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<Chat>> {
    let chat = visible(&state, &who, id).await?;
    let now = wapipe_domain::clock::now();
    let last = messages::Entity::find()
        .filter(messages::Column::ChatId.eq(chat.id))
        .filter(messages::Column::Direction.eq(messages::Direction::Inbound))
        .filter(messages::Column::ProviderMessageId.is_not_null())
        .order_by_desc(messages::Column::CreatedAt)
        .order_by_desc(messages::Column::Id)
        .one(&state.db)
        .await?;
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    let changed = messages::Entity::update_many()
        .col_expr(messages::Column::IsRead, Expr::value(true))
        .col_expr(
            messages::Column::ReadStatus,
            Expr::value(wapipe_domain::receipts::read_status_of(
                messages::MessageStatus::Read,
            )),
        )
        .col_expr(messages::Column::UpdatedAt, Expr::value(now))
        .filter(messages::Column::ChatId.eq(chat.id))
        .filter(messages::Column::Direction.eq(messages::Direction::Inbound))
        .filter(messages::Column::IsRead.eq(false))
        .exec(&txn)
        .await?;
    chats::Entity::update_many()
        .col_expr(chats::Column::UnreadCount, Expr::value(0))
        .col_expr(chats::Column::UpdatedAt, Expr::value(now))
        .filter(chats::Column::Id.eq(chat.id))
        .exec(&txn)
        .await?;
    if changed.rows_affected > 0 || chat.unread_count != 0 {
        events::record_chats(&txn, events::CHAT_UPDATED, &[chat.id]).await?;
    }
    txn.commit().await?;
    // Meta's blue ticks for the latest message mark the earlier ones too.
    if changed.rows_affected > 0
        && let Some(m) = &last
        && let (Some(wamid), Some(phone)) = (&m.provider_message_id, &chat.phone_number)
    {
        queue_mark_read(&state, chat.config_id, wamid, phone).await?;
    }
    let chat = visible(&state, &who, id).await?;
    Ok(axum::Json(view(&state, chat).await?))
}
