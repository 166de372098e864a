//! `GET /api/whatsapp/events?after=SEQ&limit=N`: the events log, in its
//! one order, after a sequence number (see `wapipe_domain::events` for how
//! the order is kept across transactions that commit out of order). Only
//! what the key may see: its companies' numbers, and for an agent without
//! `canViewAllChats` the events of the chats assigned to them now.

use axum::Extension;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wapipe_domain::events::{self, Envelope, Scope};

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Q;
use crate::page;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListEvents {
    /// Events after this sequence number (default 0: the oldest kept).
    pub after: Option<i64>,
    /// 1 to 200, default 50.
    pub limit: Option<u64>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub data: Vec<Envelope>,
    /// Pass as `after` for the next page: the last event's `seq`, or the
    /// `after` asked for when there was none (poll again later).
    pub next_after: i64,
    /// More events are there now.
    pub has_more: bool,
}

/// What a key may see of the events log.
pub fn scope(who: &Principal) -> Scope {
    Scope {
        configs: who.configs.clone(),
        only_chats_of: if who.can(Perm::ViewAllChats) {
            None
        } else {
            // An agent key without the permission; admins can everything.
            who.agent_id()
        },
    }
}

/// The `after` asked for, checked.
pub fn after(asked: Option<i64>) -> ApiResult<i64> {
    match asked {
        Some(n) if n < 0 => Err(ApiError::field("after", "must be 0 or more")),
        Some(n) => Ok(n),
        None => Ok(0),
    }
}

#[utoipa::path(get, path = "/api/whatsapp/events", tag = "events", params(ListEvents),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListEvents>,
) -> ApiResult<axum::Json<EventPage>> {
    let limit = page::limit(p.limit)?;
    let after = after(p.after)?;
    let mut rows = events::read_after(&state.db, after, limit + 1, &scope(&who)).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_after = rows.last().map_or(after, |e| e.seq);
    Ok(axum::Json(EventPage {
        data: rows.into_iter().map(Envelope::from).collect(),
        next_after,
        has_more,
    }))
}
