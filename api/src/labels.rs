//! `/api/whatsapp/labels` and a chat's labels: names unique per config
//! (case-insensitive, the database's unique index), `#RRGGBB` colors, and
//! `usageCount` kept by the add and remove endpoints in the same
//! transaction as the `chat_labels` row.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, ExprTrait, QueryFilter, SqlErr,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::audit::{self, Entry};
use wapipe_domain::events;
use wapipe_shared::entities::{chat_labels, labels};

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::chats;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Ids, Q};
use crate::page::{Keyset, Page};

/// seed 002 Label.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Label {
    pub id: Uuid,
    pub config_id: Uuid,
    pub name: String,
    /// `#RRGGBB`.
    pub color: String,
    pub description: Option<String>,
    pub usage_count: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub created_by: Option<Uuid>,
    pub is_active: bool,
    pub is_deleted: bool,
}

impl From<labels::Model> for Label {
    fn from(l: labels::Model) -> Self {
        Self {
            id: l.id,
            config_id: l.config_id,
            name: l.name,
            color: l.color,
            description: l.description,
            usage_count: l.usage_count,
            created_at: l.created_at,
            updated_at: l.updated_at,
            created_by: l.created_by,
            is_active: l.is_active,
            is_deleted: l.is_deleted,
        }
    }
}

fn check_color(c: &str) -> ApiResult<String> {
    let ok = c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(c.to_ascii_uppercase())
    } else {
        Err(ApiError::field("color", "a hex color, #RRGGBB"))
    }
}

fn check_name(n: &str) -> ApiResult<String> {
    let n = n.trim();
    if n.is_empty() || n.chars().count() > 64 {
        return Err(ApiError::field("name", "1 to 64 characters"));
    }
    Ok(n.to_owned())
}

fn unique_or(e: sea_orm::DbErr) -> ApiError {
    if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        ApiError::conflict(
            "label_exists",
            "a label with this name exists (names ignore case)",
        )
    } else {
        ApiError::internal(e)
    }
}

async fn visible(state: &AppState, who: &Principal, id: Uuid) -> ApiResult<labels::Model> {
    labels::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|l| !l.is_deleted && who.sees_config(l.config_id))
        .ok_or_else(|| ApiError::not_found("label"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListLabels {
    pub config_id: Option<Uuid>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/whatsapp/labels", tag = "labels", params(ListLabels),
    responses((status = 200, body = Page<Label>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListLabels>,
) -> ApiResult<axum::Json<Page<Label>>> {
    let mut cond = Condition::all()
        .add(labels::Column::IsDeleted.eq(false))
        .add(who.config_scope(labels::Column::ConfigId));
    if let Some(c) = p.config_id {
        cond = cond.add(labels::Column::ConfigId.eq(c));
    }
    let by = Keyset::asc(labels::Column::CreatedAt, labels::Column::Id);
    let q = labels::Entity::find().filter(cond);
    let page = by.page(&state.db, q, p.cursor.as_deref(), p.limit, Label::from);
    Ok(axum::Json(page.await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewLabel {
    pub name: String,
    /// `#RRGGBB`.
    pub color: String,
    pub description: Option<String>,
    /// Needed when the key has several WhatsApp numbers.
    pub config_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/api/whatsapp/labels", tag = "labels", request_body = NewLabel,
    responses((status = 201, body = Label), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the name exists")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(new): Body<NewLabel>,
) -> ApiResult<impl IntoResponse> {
    who.require(Perm::ManageLabels)?;
    let name = check_name(&new.name)?;
    let color = check_color(&new.color)?;
    let config = who.pick_config(&state, new.config_id).await?;
    let now = wapipe_domain::clock::now();
    let id = Uuid::now_v7();
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    labels::Entity::insert(labels::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config.id),
        name: Set(name.clone()),
        color: Set(color),
        description: Set(new.description),
        created_by: Set(who.agent_id()),
        is_deleted: Set(false),
        deleted_at: Set(None),
        usage_count: Set(0),
        is_active: Set(true),
    })
    .exec_without_returning(&txn)
    .await
    .map_err(unique_or)?;
    audit::record(
        &txn,
        Entry {
            config_id: Some(config.id),
            who: who.who(),
            action: "label.create",
            entity_type: "labels",
            entity_id: id.to_string(),
            before: None,
            after: Some(json!({"name": name})),
        },
    )
    .await?;
    txn.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Label::from(visible(&state, &who, id).await?)),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateLabel {
    pub name: Option<String>,
    pub color: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
}

#[utoipa::path(put, path = "/api/whatsapp/labels/{id}", tag = "labels", request_body = UpdateLabel,
    params(("id" = Uuid, Path, description = "label id")),
    responses((status = 200, body = Label), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(up): Body<UpdateLabel>,
) -> ApiResult<axum::Json<Label>> {
    let before = visible(&state, &who, id).await?;
    who.require(Perm::ManageLabels)?;
    let mut q = labels::Entity::update_many()
        .col_expr(
            labels::Column::UpdatedAt,
            Expr::value(wapipe_domain::clock::now()),
        )
        .filter(labels::Column::Id.eq(id));
    if let Some(n) = &up.name {
        q = q.col_expr(labels::Column::Name, Expr::value(check_name(n)?));
    }
    if let Some(c) = &up.color {
        q = q.col_expr(labels::Column::Color, Expr::value(check_color(c)?));
    }
    if let Some(d) = &up.description {
        q = q.col_expr(labels::Column::Description, Expr::value(d.as_str()));
    }
    if let Some(a) = up.is_active {
        q = q.col_expr(labels::Column::IsActive, Expr::value(a));
    }
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    q.exec(&txn).await.map_err(unique_or)?;
    audit::record(
        &txn,
        Entry {
            config_id: Some(before.config_id),
            who: who.who(),
            action: "label.update",
            entity_type: "labels",
            entity_id: id.to_string(),
            before: Some(json!({"name": before.name, "color": before.color})),
            after: Some(json!({"name": up.name, "color": up.color})),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(axum::Json(Label::from(visible(&state, &who, id).await?)))
}

#[utoipa::path(delete, path = "/api/whatsapp/labels/{id}", tag = "labels",
    params(("id" = Uuid, Path, description = "label id")),
    responses((status = 204, description = "deleted (soft)"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    let before = visible(&state, &who, id).await?;
    who.require(Perm::ManageLabels)?;
    let now = wapipe_domain::clock::now();
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    labels::Entity::update_many()
        .col_expr(labels::Column::IsDeleted, Expr::value(true))
        .col_expr(labels::Column::DeletedAt, Expr::value(now))
        .col_expr(labels::Column::UpdatedAt, Expr::value(now))
        .filter(labels::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        Entry {
            config_id: Some(before.config_id),
            who: who.who(),
            action: "label.delete",
            entity_type: "labels",
            entity_id: id.to_string(),
            before: Some(json!({"name": before.name})),
            after: None,
        },
    )
    .await?;
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn chat_and_label(
    state: &AppState,
    who: &Principal,
    chat_id: Uuid,
    label_id: Uuid,
) -> ApiResult<(wapipe_shared::entities::chats::Model, labels::Model)> {
    let chat = chats::visible(state, who, chat_id).await?;
    let label = visible(state, who, label_id).await?;
    if label.config_id != chat.config_id {
        return Err(ApiError::not_found("label"));
    }
    Ok((chat, label))
}

async fn count<C: sea_orm::ConnectionTrait>(db: &C, label: Uuid, by: i32) -> ApiResult<()> {
    let mut e = Expr::col(labels::Column::UsageCount).add(by);
    if by < 0 {
        e = Expr::case(Expr::col(labels::Column::UsageCount).gt(0), e)
            .finally(0)
            .into();
    }
    labels::Entity::update_many()
        .col_expr(labels::Column::UsageCount, e)
        .filter(labels::Column::Id.eq(label))
        .exec(db)
        .await?;
    Ok(())
}

#[utoipa::path(post, path = "/api/whatsapp/chats/{chatId}/labels/{labelId}", tag = "labels",
    params(("chatId" = Uuid, Path, description = "chat id"), ("labelId" = Uuid, Path, description = "label id")),
    responses((status = 200, body = crate::views::Chat), (status = 404, body = ErrorBody)))]
pub async fn add_to_chat(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Ids((chat_id, label_id)): Ids<(Uuid, Uuid)>,
) -> ApiResult<axum::Json<crate::views::Chat>> {
    let (chat, label) = chat_and_label(&state, &who, chat_id, label_id).await?;
    let now = wapipe_domain::clock::now();
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    let added = chat_labels::Entity::insert(chat_labels::ActiveModel {
        chat_id: Set(chat.id),
        label_id: Set(label.id),
        added_by: Set(who.agent_id()),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([chat_labels::Column::ChatId, chat_labels::Column::LabelId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    if added > 0 {
        count(&txn, label.id, 1).await?;
        events::record_chats(&txn, events::CHAT_UPDATED, &[chat.id]).await?;
    }
    txn.commit().await?;
    Ok(axum::Json(chats::view(&state, chat).await?))
}

#[utoipa::path(delete, path = "/api/whatsapp/chats/{chatId}/labels/{labelId}", tag = "labels",
    params(("chatId" = Uuid, Path, description = "chat id"), ("labelId" = Uuid, Path, description = "label id")),
    responses((status = 200, body = crate::views::Chat), (status = 404, body = ErrorBody)))]
pub async fn remove_from_chat(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Ids((chat_id, label_id)): Ids<(Uuid, Uuid)>,
) -> ApiResult<axum::Json<crate::views::Chat>> {
    let (chat, label) = chat_and_label(&state, &who, chat_id, label_id).await?;
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    let removed = chat_labels::Entity::delete_many()
        .filter(chat_labels::Column::ChatId.eq(chat.id))
        .filter(chat_labels::Column::LabelId.eq(label.id))
        .exec(&txn)
        .await?;
    if removed.rows_affected > 0 {
        count(&txn, label.id, -1).await?;
        events::record_chats(&txn, events::CHAT_UPDATED, &[chat.id]).await?;
    }
    txn.commit().await?;
    Ok(axum::Json(chats::view(&state, chat).await?))
}
