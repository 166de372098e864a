//! `GET /api/whatsapp/webhooks/events`: the webhook deliveries as stored
//! (newest first), with filters `eventType`, `status`, `from`/`to` on
//! `receivedAt`. The raw payload only with `includeRaw=true`. An event no
//! config claimed is seen only by keys for every company.

use axum::Extension;
use axum::extract::State;
use sea_orm::{ColumnTrait, Condition, EntityTrait, Iterable, QueryFilter, QuerySelect};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_shared::entities::webhook_events::{self as ev, EventStatus};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Q;
use crate::page::{self, Keyset, Page};

/// seed 002 WebhookEvent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    pub id: Uuid,
    pub config_id: Option<Uuid>,
    /// The kind of delivery (Meta's `field`, e.g. `messages`, unless the
    /// parse worker named it).
    pub event_type: Option<String>,
    pub provider: String,
    /// The body as Meta sent it (JSON, or text when it was not JSON); only
    /// with `includeRaw=true`.
    pub raw_data: Option<Value>,
    pub processed_data: Option<Value>,
    pub chat_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    /// `received | processed | ignored | rejected | failed`.
    pub status: String,
    pub processed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub error: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl WebhookEvent {
    fn from_row(e: ev::Model, raw: bool) -> Self {
        Self {
            raw_data: raw.then(|| {
                serde_json::from_slice(&e.raw_body).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&e.raw_body).into_owned())
                })
            }),
            id: e.id,
            config_id: e.config_id,
            event_type: e.event_type.or(e.field),
            provider: e.provider,
            processed_data: e.processed_data,
            chat_id: e.chat_id,
            message_id: e.message_id,
            status: e.status.as_str().to_owned(),
            processed_at: e.processed_at,
            error: e.error,
            received_at: e.received_at,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListEvents {
    /// Meta's `field` (`messages`, `message_template_status_update`, …).
    pub event_type: Option<String>,
    pub status: Option<String>,
    /// Received at or after (RFC 3339 or YYYY-MM-DD).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Include the raw payload.
    pub include_raw: Option<bool>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/whatsapp/webhooks/events", tag = "webhooks", params(ListEvents),
    responses((status = 200, body = Page<WebhookEvent>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListEvents>,
) -> ApiResult<axum::Json<Page<WebhookEvent>>> {
    let mut cond = Condition::all();
    if who.configs.is_some() {
        cond = cond.add(who.config_scope(ev::Column::ConfigId));
    }
    if let Some(t) = &p.event_type {
        cond = cond.add(
            Condition::any()
                .add(ev::Column::EventType.eq(t.as_str()))
                .add(
                    Condition::all()
                        .add(ev::Column::EventType.is_null())
                        .add(ev::Column::Field.eq(t.as_str())),
                ),
        );
    }
    if let Some(s) = &p.status {
        let s: EventStatus = s
            .parse()
            .map_err(|e: String| ApiError::field("status", e))?;
        cond = cond.add(ev::Column::Status.eq(s));
    }
    if let Some(f) = &p.from {
        cond = cond.add(ev::Column::ReceivedAt.gte(page::parse_time("from", f)?));
    }
    if let Some(t) = &p.to {
        cond = cond.add(ev::Column::ReceivedAt.lt(page::parse_time("to", t)?));
    }
    let raw = p.include_raw == Some(true);
    let mut q = ev::Entity::find();
    if !raw {
        // Without includeRaw the bodies (up to 3 MB each) stay in the database.
        q = q
            .select_only()
            .columns(ev::Column::iter().filter(|c| !matches!(c, ev::Column::RawBody)));
        q = q.expr_as(sea_orm::sea_query::Expr::val(Vec::<u8>::new()), "raw_body");
    }
    let by = Keyset::desc(ev::Column::ReceivedAt, ev::Column::Id);
    let view = |e| WebhookEvent::from_row(e, raw);
    let page = by.page(
        &state.db,
        q.filter(cond),
        p.cursor.as_deref(),
        p.limit,
        view,
    );
    Ok(axum::Json(page.await?))
}
