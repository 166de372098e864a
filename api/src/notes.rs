//! Team notes on a chat: list (newest first), create, update (the previous
//! text goes to `editHistory` with who and when), delete (soft). Notes are
//! seen by whoever sees the chat; only their author or an admin changes
//! them.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::audit::{self, Entry};
use wapipe_shared::entities::team_notes;

use crate::AppState;
use crate::auth::Principal;
use crate::chats;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};
use crate::page::{Keyset, Page};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NoteEdit {
    pub note: String,
    pub edited_at: chrono::DateTime<chrono::Utc>,
    pub edited_by: Option<Uuid>,
}

/// seed 002 TeamNote.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamNote {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub note: String,
    pub author_id: Option<Uuid>,
    pub author_name: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub edited_at: Option<chrono::DateTime<chrono::Utc>>,
    pub edited_by: Option<Uuid>,
    pub edit_history: Vec<NoteEdit>,
    pub is_deleted: bool,
}

impl From<team_notes::Model> for TeamNote {
    fn from(n: team_notes::Model) -> Self {
        Self {
            edit_history: n
                .edit_history
                .and_then(|h| serde_json::from_value(h).ok())
                .unwrap_or_default(),
            id: n.id,
            chat_id: n.chat_id,
            note: n.note,
            author_id: n.author_id,
            author_name: n.author_name,
            created_at: n.created_at,
            updated_at: n.updated_at,
            edited_at: n.edited_at,
            edited_by: n.edited_by,
            is_deleted: n.is_deleted,
        }
    }
}

fn check_note(n: &str) -> ApiResult<()> {
    if n.trim().is_empty() {
        return Err(ApiError::field("note", "required"));
    }
    if n.chars().count() > 10_000 {
        return Err(ApiError::field("note", "at most 10000 characters"));
    }
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListNotes {
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/whatsapp/chats/{chatId}/notes", tag = "notes",
    params(("chatId" = Uuid, Path, description = "chat id"), ListNotes),
    responses((status = 200, body = Page<TeamNote>), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(chat_id): Id,
    Q(p): Q<ListNotes>,
) -> ApiResult<axum::Json<Page<TeamNote>>> {
    let chat = chats::visible(&state, &who, chat_id).await?;
    let by = Keyset::desc(team_notes::Column::CreatedAt, team_notes::Column::Id);
    let q = team_notes::Entity::find()
        .filter(team_notes::Column::ChatId.eq(chat.id))
        .filter(team_notes::Column::IsDeleted.eq(false));
    let page = by.page(&state.db, q, p.cursor.as_deref(), p.limit, TeamNote::from);
    Ok(axum::Json(page.await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoteBody {
    pub note: String,
}

#[utoipa::path(post, path = "/api/whatsapp/chats/{chatId}/notes", tag = "notes", request_body = NoteBody,
    params(("chatId" = Uuid, Path, description = "chat id")),
    responses((status = 201, body = TeamNote), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(chat_id): Id,
    Body(b): Body<NoteBody>,
) -> ApiResult<impl IntoResponse> {
    let chat = chats::visible(&state, &who, chat_id).await?;
    check_note(&b.note)?;
    let now = wapipe_domain::clock::now();
    let id = Uuid::now_v7();
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    team_notes::Entity::insert(team_notes::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(chat.config_id),
        chat_id: Set(chat.id),
        author_id: Set(who.agent_id()),
        author_name: Set(Some(
            who.agent
                .as_ref()
                .map_or_else(|| "admin".to_owned(), |a| a.name.clone()),
        )),
        note: Set(b.note),
        is_pinned: Set(false),
        is_edited: Set(false),
        is_deleted: Set(false),
        ..Default::default()
    })
    .exec_without_returning(&txn)
    .await?;
    let row = team_notes::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::internal("note vanished after its insert"))?;
    let view = TeamNote::from(row.clone());
    wapipe_domain::events::record(&txn, &[wapipe_domain::events::note_event(&row, &view)]).await?;
    txn.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

async fn visible(state: &AppState, who: &Principal, id: Uuid) -> ApiResult<team_notes::Model> {
    let note = team_notes::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|n| !n.is_deleted)
        .ok_or_else(|| ApiError::not_found("note"))?;
    chats::visible(state, who, note.chat_id)
        .await
        .map_err(|_| ApiError::not_found("note"))?;
    Ok(note)
}

fn own(who: &Principal, note: &team_notes::Model) -> ApiResult<()> {
    if who.is_admin() || (note.author_id.is_some() && note.author_id == who.agent_id()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only the note's author or an admin may change it",
        ))
    }
}

#[utoipa::path(put, path = "/api/whatsapp/notes/{id}", tag = "notes", request_body = NoteBody,
    params(("id" = Uuid, Path, description = "note id")),
    responses((status = 200, body = TeamNote), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(b): Body<NoteBody>,
) -> ApiResult<axum::Json<TeamNote>> {
    let before = visible(&state, &who, id).await?;
    own(&who, &before)?;
    check_note(&b.note)?;
    let now = wapipe_domain::clock::now();
    let mut history: Vec<Value> = before
        .edit_history
        .clone()
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default();
    history.push(json!(NoteEdit {
        note: before.note.clone(),
        edited_at: now,
        edited_by: who.agent_id(),
    }));
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    // Conditional on the text read, so two concurrent edits cannot lose one
    // from the history.
    let done = team_notes::Entity::update_many()
        .col_expr(team_notes::Column::Note, Expr::value(b.note.as_str()))
        .col_expr(
            team_notes::Column::EditHistory,
            Expr::value(Value::Array(history)),
        )
        .col_expr(team_notes::Column::IsEdited, Expr::value(true))
        .col_expr(team_notes::Column::EditedAt, Expr::value(now))
        .col_expr(team_notes::Column::EditedBy, Expr::value(who.agent_id()))
        .col_expr(team_notes::Column::UpdatedAt, Expr::value(now))
        .filter(team_notes::Column::Id.eq(id))
        .filter(team_notes::Column::UpdatedAt.eq(before.updated_at))
        .exec(&txn)
        .await?;
    if done.rows_affected == 0 {
        return Err(ApiError::conflict(
            "conflict",
            "the note changed meanwhile; read it again",
        ));
    }
    audit::record(
        &txn,
        Entry {
            config_id: Some(before.config_id),
            who: who.who(),
            action: "note.update",
            entity_type: "team_notes",
            entity_id: id.to_string(),
            before: Some(json!({"note": before.note})),
            after: Some(json!({"note": b.note})),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(axum::Json(TeamNote::from(visible(&state, &who, id).await?)))
}

#[utoipa::path(delete, path = "/api/whatsapp/notes/{id}", tag = "notes",
    params(("id" = Uuid, Path, description = "note id")),
    responses((status = 204, description = "deleted (soft)"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    let before = visible(&state, &who, id).await?;
    own(&who, &before)?;
    let now = wapipe_domain::clock::now();
    let txn = wapipe_shared::db::begin_write(&state.db).await?;
    team_notes::Entity::update_many()
        .col_expr(team_notes::Column::IsDeleted, Expr::value(true))
        .col_expr(team_notes::Column::DeletedAt, Expr::value(now))
        .col_expr(team_notes::Column::UpdatedAt, Expr::value(now))
        .filter(team_notes::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        Entry {
            config_id: Some(before.config_id),
            who: who.who(),
            action: "note.delete",
            entity_type: "team_notes",
            entity_id: id.to_string(),
            before: Some(json!({"note": before.note})),
            after: None,
        },
    )
    .await?;
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
