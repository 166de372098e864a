//! A group chat's members (Meta's Groups API): who is in the group, who
//! left or was removed, who asked to join, each with Meta's time of the
//! change. The parse worker keeps them (`group_participants`).

use axum::Extension;
use axum::extract::State;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_shared::entities::{customers, group_participants as gp, groups};

use crate::AppState;
use crate::auth::Principal;
use crate::chats;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Id, Q};
use crate::page::{Keyset, Page};

/// One member of a group (or one who asked to join).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// The member's own customer id.
    pub customer_id: Uuid,
    pub wa_id: Option<String>,
    pub name: Option<String>,
    /// `member | removed | requested | request_revoked`.
    pub status: String,
    /// Meta's reason, when it gives one (`invite_link`, …).
    pub reason: Option<String>,
    /// Meta's time of the last change.
    pub changed_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParticipants {
    /// `member | removed | requested | request_revoked`.
    pub status: Option<String>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

const STATUSES: [&str; 4] = [gp::MEMBER, gp::REMOVED, gp::REQUESTED, gp::REQUEST_REVOKED];

#[utoipa::path(get, path = "/api/whatsapp/chats/{chatId}/participants", tag = "chats",
    params(("chatId" = Uuid, Path, description = "chat id"), ListParticipants),
    responses((status = 200, body = Page<Participant>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn participants(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(chat_id): Id,
    Q(p): Q<ListParticipants>,
) -> ApiResult<axum::Json<Page<Participant>>> {
    let chat = chats::visible(&state, &who, chat_id).await?;
    let group = groups::Entity::find()
        .filter(groups::Column::CustomerId.eq(chat.customer_id))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::conflict("not_a_group", "this chat is not a WhatsApp group"))?;
    let mut cond = Condition::all().add(gp::Column::GroupId.eq(group.id));
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::field(
                "status",
                format!("one of {}", STATUSES.join(", ")),
            ));
        }
        cond = cond.add(gp::Column::Status.eq(s.as_str()));
    }
    let q = gp::Entity::find().filter(cond);
    let page = Keyset::asc(gp::Column::CreatedAt, gp::Column::Id)
        .page(&state.db, q, p.cursor.as_deref(), p.limit, |r| r)
        .await?;
    // Names from the members' own rows, one query per page.
    let names: std::collections::HashMap<Uuid, Option<String>> = customers::Entity::find()
        .filter(customers::Column::Id.is_in(wapipe_shared::db::pad_pow2(
            page.data.iter().map(|r| r.customer_id).collect(),
        )))
        .all(&state.db)
        .await?
        .into_iter()
        .map(|c| (c.id, c.name.or(c.whatsapp_name)))
        .collect();
    Ok(axum::Json(Page {
        data: page
            .data
            .into_iter()
            .map(|r| Participant {
                name: names.get(&r.customer_id).cloned().flatten(),
                customer_id: r.customer_id,
                wa_id: r.wa_id,
                status: r.status,
                reason: r.reason,
                changed_at: r.changed_at,
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}
