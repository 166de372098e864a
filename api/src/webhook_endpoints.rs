//! `/api/whatsapp/webhook-endpoints`: outgoing webhooks (admin keys). An
//! endpoint gets one config's events, or every config's (global: only a
//! key that sees every config makes or sees those). Create answers the
//! `whsec_` secret once; list, get, delete; an endpoint's deliveries (with
//! every attempt) and a retry of one. The rules (URLs, types, dispatch,
//! the retry) are the domain's: `wapipe_domain::webhooks`.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::{ColumnTrait, Condition, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::audit::{self, Entry};
use wapipe_domain::webhooks::{self, NewEndpoint, WebhookError};
use wapipe_shared::entities::webhook_deliveries::status;
use wapipe_shared::entities::{webhook_deliveries, webhook_delivery_attempts, webhook_endpoints};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Ids, Q};
use crate::idempotency::StoreInstead;
use crate::page::{self, Cursor, Keyset, Page};

/// An outgoing webhook endpoint (its secret is shown only when created).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    pub id: Uuid,
    /// The config whose events it gets; `null`: every config's.
    pub config_id: Option<Uuid>,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Vec<String>,
    /// False once disabled after failing too long.
    pub enabled: bool,
    /// The first failure since the last success; `null` while healthy.
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<webhook_endpoints::Model> for WebhookEndpoint {
    fn from(e: webhook_endpoints::Model) -> Self {
        Self {
            event_types: webhooks::event_types(&e),
            id: e.id,
            config_id: e.config_id,
            url: e.url,
            description: e.description,
            enabled: e.enabled,
            failing_since: e.failing_since,
            last_success_at: e.last_success_at,
            disabled_at: e.disabled_at,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// The answer to a create: the endpoint and its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWebhookEndpoint {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_` + base64 of 32 bytes: the Standard Webhooks signing
    /// secret. Shown only in this answer (a replay with the same
    /// Idempotency-Key has `null`).
    pub secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEndpoint {
    /// http or https; not a loopback, private or link-local address.
    pub url: String,
    /// Among `message.created`, `message.updated`, `chat.created`,
    /// `chat.updated`, `note.created`, `followup.reminder`, `webhook.disabled`.
    pub event_types: Vec<String>,
    pub description: Option<String>,
    /// The config whose events it gets. Omitted: the key's only config,
    /// or, for a key that sees every config, all of them (a global endpoint).
    pub config_id: Option<Uuid>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    pub attempt: i32,
    pub succeeded: bool,
    /// `null` when no answer came (timeout, refused connection or address).
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// One event for one endpoint.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The event's `seq` in the events log; its `webhook-id` is `msg_` +
    /// this delivery's id without dashes.
    pub event_seq: i64,
    pub event_type: String,
    pub config_id: Uuid,
    /// `pending`, `succeeded`, `failed` (given up: endpoint disabled or
    /// deleted, event pruned) or `dead` (dead-lettered; retry it).
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_latency_ms: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<DeliveryAttempt>,
}

fn delivery_view(
    d: webhook_deliveries::Model,
    attempts: Vec<webhook_delivery_attempts::Model>,
) -> WebhookDelivery {
    WebhookDelivery {
        id: d.id,
        endpoint_id: d.endpoint_id,
        event_seq: d.event_seq,
        event_type: d.event_type,
        config_id: d.config_id,
        status: d.status,
        attempts: d.attempts,
        last_status_code: d.last_status_code,
        last_latency_ms: d.last_latency_ms,
        last_error: d.last_error,
        delivered_at: d.delivered_at,
        created_at: d.created_at,
        updated_at: d.updated_at,
        attempt_log: attempts
            .into_iter()
            .map(|a| DeliveryAttempt {
                attempt: a.attempt,
                succeeded: a.succeeded,
                status_code: a.status_code,
                latency_ms: a.latency_ms,
                error: a.error,
                created_at: a.created_at,
            })
            .collect(),
    }
}

fn admin(who: &Principal) -> ApiResult<()> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("webhook endpoints take an admin key"))
    }
}

fn webhook_err(e: WebhookError) -> ApiError {
    match e {
        WebhookError::BadUrl(m) => ApiError::field("url", m),
        WebhookError::PrivateAddress(m) => {
            let mut err = ApiError::unprocessable("private_address", format!("url: {m}"));
            err.fields.insert("url".into(), m);
            err
        }
        WebhookError::BadEventTypes(m) => ApiError::field("eventTypes", m),
        WebhookError::EndpointGone => ApiError::conflict("endpoint_disabled", e.to_string()),
        other => ApiError::internal(other),
    }
}

/// Endpoints the key may see: its configs' and, for a key that sees every
/// config, the global ones too.
fn endpoint_scope(who: &Principal) -> Condition {
    match &who.configs {
        None => Condition::all(),
        Some(_) => who.config_scope(webhook_endpoints::Column::ConfigId),
    }
}

/// The endpoint `id`, if the key may see it.
async fn visible(
    state: &AppState,
    who: &Principal,
    id: Uuid,
) -> ApiResult<webhook_endpoints::Model> {
    admin(who)?;
    webhook_endpoints::Entity::find_by_id(id)
        .filter(webhook_endpoints::Column::IsDeleted.eq(false))
        .filter(endpoint_scope(who))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

#[utoipa::path(post, path = "/api/whatsapp/webhook-endpoints", tag = "webhook endpoints",
    request_body = CreateEndpoint,
    responses((status = 201, body = CreatedWebhookEndpoint), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "the URL resolves to a loopback, private or link-local address")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<CreateEndpoint>,
) -> ApiResult<impl IntoResponse> {
    admin(&who)?;
    let event_types = webhooks::check_event_types(&b.event_types).map_err(webhook_err)?;
    if b.description.as_ref().is_some_and(|d| d.len() > 1000) {
        return Err(ApiError::field("description", "at most 1000 characters"));
    }
    let config_id = match (b.config_id, &who.configs) {
        (None, None) => None,
        (asked, _) => Some(who.pick_config(&state, asked).await?.id),
    };
    let url = webhooks::check_url(&b.url, state.settings.webhooks_allow_private)
        .await
        .map_err(webhook_err)?;
    let Some(key) = state.secret_key.as_deref() else {
        return Err(ApiError::conflict(
            "no_secret_key",
            "this API process was started without WAPIPE_SECRET_KEY",
        ));
    };
    let (row, secret) = webhooks::create(
        &state.db,
        key,
        NewEndpoint {
            config_id,
            url: url.to_string(),
            description: b.description,
            event_types,
        },
    )
    .await
    .map_err(webhook_err)?;
    audit::record(
        &state.db,
        Entry {
            config_id,
            who: who.who(),
            action: "webhook_endpoint.create",
            entity_type: "webhook_endpoints",
            entity_id: row.id.to_string(),
            before: None,
            after: Some(webhooks::endpoint_json(&row)),
        },
    )
    .await?;
    let redacted = serde_json::to_string(&CreatedWebhookEndpoint {
        endpoint: WebhookEndpoint::from(row.clone()),
        secret: None,
    })
    .map_err(ApiError::internal)?;
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(CreatedWebhookEndpoint {
            endpoint: WebhookEndpoint::from(row),
            secret: Some(secret),
        }),
    )
        .into_response();
    resp.extensions_mut().insert(StoreInstead(redacted));
    Ok(resp)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListEndpoints {
    /// Only this config's endpoints.
    pub config_id: Option<Uuid>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/whatsapp/webhook-endpoints", tag = "webhook endpoints",
    params(ListEndpoints),
    responses((status = 200, body = Page<WebhookEndpoint>), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListEndpoints>,
) -> ApiResult<axum::Json<Page<WebhookEndpoint>>> {
    admin(&who)?;
    let mut cond = Condition::all()
        .add(endpoint_scope(&who))
        .add(webhook_endpoints::Column::IsDeleted.eq(false));
    if let Some(c) = p.config_id {
        cond = cond.add(webhook_endpoints::Column::ConfigId.eq(c));
    }
    let by = Keyset::desc(
        webhook_endpoints::Column::CreatedAt,
        webhook_endpoints::Column::Id,
    );
    let q = webhook_endpoints::Entity::find().filter(cond);
    let page = by.page(
        &state.db,
        q,
        p.cursor.as_deref(),
        p.limit,
        WebhookEndpoint::from,
    );
    Ok(axum::Json(page.await?))
}

#[utoipa::path(get, path = "/api/whatsapp/webhook-endpoints/{id}", tag = "webhook endpoints",
    params(("id" = Uuid, Path, description = "endpoint id")),
    responses((status = 200, body = WebhookEndpoint), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<WebhookEndpoint>> {
    Ok(axum::Json(visible(&state, &who, id).await?.into()))
}

#[utoipa::path(delete, path = "/api/whatsapp/webhook-endpoints/{id}", tag = "webhook endpoints",
    params(("id" = Uuid, Path, description = "endpoint id")),
    responses((status = 204, description = "deleted (soft); its pending deliveries are dropped"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    let row = visible(&state, &who, id).await?;
    if !webhooks::delete(&state.db, row.id).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    audit::record(
        &state.db,
        Entry {
            config_id: row.config_id,
            who: who.who(),
            action: "webhook_endpoint.delete",
            entity_type: "webhook_endpoints",
            entity_id: row.id.to_string(),
            before: Some(webhooks::endpoint_json(&row)),
            after: None,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeliveries {
    /// `pending`, `succeeded`, `failed` or `dead`.
    pub status: Option<String>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

/// The attempts of these deliveries, oldest first, by delivery.
async fn attempts_of(
    state: &AppState,
    ids: Vec<Uuid>,
) -> ApiResult<std::collections::HashMap<Uuid, Vec<webhook_delivery_attempts::Model>>> {
    let mut by: std::collections::HashMap<Uuid, Vec<_>> = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(by);
    }
    for a in webhook_delivery_attempts::Entity::find()
        .filter(webhook_delivery_attempts::Column::DeliveryId.is_in(ids))
        .order_by(webhook_delivery_attempts::Column::Attempt, Order::Asc)
        .order_by(webhook_delivery_attempts::Column::Id, Order::Asc)
        .all(&state.db)
        .await?
    {
        by.entry(a.delivery_id).or_default().push(a);
    }
    Ok(by)
}

/// An endpoint's deliveries, newest first.
#[utoipa::path(get, path = "/api/whatsapp/webhook-endpoints/{id}/deliveries", tag = "webhook endpoints",
    params(("id" = Uuid, Path, description = "endpoint id"), ListDeliveries),
    responses((status = 200, body = Page<WebhookDelivery>), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Q(p): Q<ListDeliveries>,
) -> ApiResult<axum::Json<Page<WebhookDelivery>>> {
    let endpoint = visible(&state, &who, id).await?;
    let limit = page::limit(p.limit)?;
    let mut cond = Condition::all()
        .add(webhook_deliveries::Column::EndpointId.eq(endpoint.id))
        .add(page::after(
            p.cursor.as_deref(),
            webhook_deliveries::Column::CreatedAt,
            webhook_deliveries::Column::Id,
            true,
        )?);
    if let Some(s) = p.status.as_deref() {
        if ![
            status::PENDING,
            status::SUCCEEDED,
            status::FAILED,
            status::DEAD,
        ]
        .contains(&s)
        {
            return Err(ApiError::field(
                "status",
                "one of pending, succeeded, failed, dead",
            ));
        }
        cond = cond.add(webhook_deliveries::Column::Status.eq(s));
    }
    let rows = webhook_deliveries::Entity::find()
        .filter(cond)
        .order_by(webhook_deliveries::Column::CreatedAt, Order::Desc)
        .order_by(webhook_deliveries::Column::Id, Order::Desc)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let mut attempts = attempts_of(&state, rows.iter().map(|d| d.id).collect()).await?;
    Ok(axum::Json(page::paginate(
        rows,
        limit,
        |d| Cursor {
            at: d.created_at,
            id: d.id,
        },
        |d| {
            let a = attempts.remove(&d.id).unwrap_or_default();
            delivery_view(d, a)
        },
    )))
}

/// Delivers one delivery again (a dead-lettered one, say): it goes back to
/// `pending` with a new job; its attempts continue their count.
#[utoipa::path(post, path = "/api/whatsapp/webhook-endpoints/{id}/deliveries/{deliveryId}/retry",
    tag = "webhook endpoints",
    params(("id" = Uuid, Path, description = "endpoint id"),
        ("deliveryId" = Uuid, Path, description = "delivery id")),
    responses((status = 202, body = WebhookDelivery, description = "queued again"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the endpoint is disabled")))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Ids((id, delivery_id)): Ids<(Uuid, Uuid)>,
) -> ApiResult<impl IntoResponse> {
    let endpoint = visible(&state, &who, id).await?;
    let delivery = webhook_deliveries::Entity::find_by_id(delivery_id)
        .filter(webhook_deliveries::Column::EndpointId.eq(endpoint.id))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery"))?;
    webhooks::requeue(&state.db, state.broker.as_ref(), &delivery)
        .await
        .map_err(webhook_err)?;
    let fresh = webhook_deliveries::Entity::find_by_id(delivery.id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery"))?;
    let mut attempts = attempts_of(&state, vec![fresh.id]).await?;
    let a = attempts.remove(&fresh.id).unwrap_or_default();
    Ok((StatusCode::ACCEPTED, axum::Json(delivery_view(fresh, a))))
}
