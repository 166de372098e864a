//! `/api/whatsapp/blocked-numbers`: list, block, unblock. The writes are
//! the domain's (`wapipe_domain::blocking`, shared with `wapipe block`):
//! each writes `audit_log` in its transaction; unblocking keeps the row
//! with `unblockedAt` / `unblockedBy`. Blocking takes `canBlockNumbers`.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::blocking::{self, Actor, BlockError};
use wapipe_shared::entities::blocked_numbers;

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};
use crate::page::{Keyset, Page};

/// seed 002 BlockedNumber.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedNumber {
    pub id: Uuid,
    pub config_id: Uuid,
    pub phone_number: String,
    pub reason: Option<String>,
    pub notes: Option<String>,
    pub blocked_by: Option<Uuid>,
    pub blocked_by_name: Option<String>,
    pub blocked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub unblocked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub unblocked_by: Option<Uuid>,
    pub is_active: bool,
    pub is_deleted: bool,
}

impl From<blocked_numbers::Model> for BlockedNumber {
    fn from(b: blocked_numbers::Model) -> Self {
        Self {
            id: b.id,
            config_id: b.config_id,
            phone_number: b.phone_number,
            reason: b.reason,
            notes: b.notes,
            blocked_by: b.blocked_by,
            blocked_by_name: b.blocked_by_name,
            blocked_at: b.blocked_at,
            created_at: b.created_at,
            updated_at: b.updated_at,
            unblocked_at: b.unblocked_at,
            unblocked_by: b.unblocked_by,
            is_active: b.is_active,
            is_deleted: b.is_deleted,
        }
    }
}

fn actor(who: &Principal) -> Actor {
    let w = who.who();
    Actor {
        kind: w.kind,
        id: w.id,
    }
}

fn block_err(e: BlockError) -> ApiError {
    match e {
        BlockError::BadPhone(_) => ApiError::field("phoneNumber", e.to_string()),
        BlockError::NotBlocked(_) => ApiError::conflict("not_blocked", e.to_string()),
        BlockError::UnknownConfig(_) => ApiError::field("configId", e.to_string()),
        BlockError::Db(e) => ApiError::internal(e),
        other => ApiError::bad_request(other.to_string()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListBlocked {
    /// `true`: unblocked numbers too (their history).
    pub all: Option<bool>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/whatsapp/blocked-numbers", tag = "blocked numbers", params(ListBlocked),
    responses((status = 200, body = Page<BlockedNumber>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListBlocked>,
) -> ApiResult<axum::Json<Page<BlockedNumber>>> {
    let mut cond = Condition::all()
        .add(who.config_scope(blocked_numbers::Column::ConfigId))
        .add(blocked_numbers::Column::IsDeleted.eq(false));
    if p.all != Some(true) {
        cond = cond.add(blocked_numbers::Column::IsActive.eq(true));
    }
    let by = Keyset::desc(
        blocked_numbers::Column::UpdatedAt,
        blocked_numbers::Column::Id,
    );
    let q = blocked_numbers::Entity::find().filter(cond);
    let page = by.page(
        &state.db,
        q,
        p.cursor.as_deref(),
        p.limit,
        BlockedNumber::from,
    );
    Ok(axum::Json(page.await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockBody {
    pub phone_number: String,
    pub reason: Option<String>,
    pub notes: Option<String>,
    /// Needed when the key has several WhatsApp numbers.
    pub config_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/api/whatsapp/blocked-numbers", tag = "blocked numbers", request_body = BlockBody,
    responses((status = 201, body = BlockedNumber), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn block(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<BlockBody>,
) -> ApiResult<impl IntoResponse> {
    who.require(Perm::BlockNumbers)?;
    let config = who.pick_config(&state, b.config_id).await?;
    let row = blocking::block(&state.db, config.id, &b.phone_number, b.reason, actor(&who))
        .await
        .map_err(block_err)?;
    let name = who
        .agent
        .as_ref()
        .map_or_else(|| "admin".to_owned(), |a| a.name.clone());
    blocked_numbers::Entity::update_many()
        .col_expr(blocked_numbers::Column::Notes, Expr::value(b.notes))
        .col_expr(blocked_numbers::Column::BlockedByName, Expr::value(name))
        .filter(blocked_numbers::Column::Id.eq(row.id))
        .exec(&state.db)
        .await?;
    let row = blocked_numbers::Entity::find_by_id(row.id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::internal("blocked number vanished"))?;
    Ok((StatusCode::CREATED, axum::Json(BlockedNumber::from(row))))
}

#[utoipa::path(delete, path = "/api/whatsapp/blocked-numbers/{id}", tag = "blocked numbers",
    params(("id" = Uuid, Path, description = "blocked number id")),
    responses((status = 200, body = BlockedNumber, description = "unblocked; the row is kept"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn unblock(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<BlockedNumber>> {
    let row = blocked_numbers::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|b| !b.is_deleted && who.sees_config(b.config_id))
        .ok_or_else(|| ApiError::not_found("blocked number"))?;
    who.require(Perm::BlockNumbers)?;
    let row = blocking::unblock(&state.db, row.config_id, &row.phone_number, actor(&who))
        .await
        .map_err(block_err)?;
    Ok(axum::Json(BlockedNumber::from(row)))
}
