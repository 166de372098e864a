//! `Idempotency-Key` on the POSTs that create. The key is claimed by an
//! insert that is unique on (API key, key), before any work: a second
//! request with the same key finds the row and gets the first answer (or a
//! 409 while the first is still running); the same key with another body
//! (method, path and body hashed) is a 422. Rows older than 24 hours no
//! longer count. A first request that failed on our side (5xx) releases
//! its key so a retry can do the work.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wapipe_shared::entities::idempotency_keys as ik;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

pub const HEADER: &str = "idempotency-key";
const TTL_HOURS: i64 = 24;

/// The header's value, checked (1 to 255 visible characters).
pub fn key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| (1..=255).contains(&s.len()))
        .ok_or_else(|| ApiError::field("Idempotency-Key", "1 to 255 visible characters"))?;
    Ok(Some(s.to_owned()))
}

pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a claim found.
pub enum Claim {
    /// Ours: do the work, then [`finish`].
    Fresh(Uuid),
    /// Answered before: the stored answer.
    Replay(Response),
}

pub async fn claim(state: &AppState, api_key: Uuid, key: &str, hash: &str) -> ApiResult<Claim> {
    let now = wapipe_domain::clock::now();
    // Two tries: the second after clearing an expired row under the key.
    for _ in 0..2 {
        let id = Uuid::now_v7();
        let inserted = ik::Entity::insert(ik::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            api_key_id: Set(api_key),
            key: Set(key.to_owned()),
            request_hash: Set(hash.to_owned()),
            response_status: Set(None),
            response_body: Set(None),
        })
        .on_conflict(
            OnConflict::columns([ik::Column::ApiKeyId, ik::Column::Key])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&state.db)
        .await?;
        if inserted == 1 {
            return Ok(Claim::Fresh(id));
        }
        let Some(first) = ik::Entity::find()
            .filter(ik::Column::ApiKeyId.eq(api_key))
            .filter(ik::Column::Key.eq(key))
            .one(&state.db)
            .await?
        else {
            continue; // released meanwhile: claim again
        };
        if first.created_at < now - chrono::Duration::hours(TTL_HOURS) {
            ik::Entity::delete_many()
                .filter(ik::Column::Id.eq(first.id))
                .exec(&state.db)
                .await?;
            continue;
        }
        if first.request_hash != hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request; use a new key",
            ));
        }
        let (Some(status), Some(body)) = (first.response_status, first.response_body) else {
            return Err(ApiError::conflict(
                "idempotency_in_progress",
                "the first request with this Idempotency-Key is still being processed",
            ));
        };
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let mut r = (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        r.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        return Ok(Claim::Replay(r));
    }
    Err(ApiError::conflict(
        "idempotency_in_progress",
        "the Idempotency-Key is being used by another request",
    ))
}

/// Stores the answer under the claimed key; a 5xx releases the key.
pub async fn finish(state: &AppState, claim: Uuid, status: StatusCode, body: &str) {
    let result = if status.is_server_error() {
        ik::Entity::delete_many()
            .filter(ik::Column::Id.eq(claim))
            .exec(&state.db)
            .await
            .map(|_| ())
    } else {
        ik::Entity::update_many()
            .col_expr(
                ik::Column::ResponseStatus,
                Expr::value(i32::from(status.as_u16())),
            )
            .col_expr(ik::Column::ResponseBody, Expr::value(body))
            .col_expr(
                ik::Column::UpdatedAt,
                Expr::value(wapipe_domain::clock::now()),
            )
            .filter(ik::Column::Id.eq(claim))
            .exec(&state.db)
            .await
            .map(|_| ())
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not store the idempotent answer");
    }
}

/// A response extension: the body to keep for replays instead of the one
/// sent (the create of a webhook endpoint, whose secret is shown once).
#[derive(Debug, Clone)]
pub struct StoreInstead(pub String);

/// The layer: POSTs that carry an `Idempotency-Key` answer once.
pub async fn layer(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let key = match key(req.headers()) {
        Ok(Some(k)) => k,
        Ok(None) => return next.run(req).await,
        Err(e) => return e.into_response(),
    };
    let Some(principal) = req.extensions().get::<crate::auth::Principal>().cloned() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.settings.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body larger than {} bytes", state.settings.max_body_bytes),
            )
            .into_response();
        }
    };
    let hash = request_hash(parts.method.as_str(), parts.uri.path(), &bytes);
    let claimed = match claim(&state, principal.key_id, &key, &hash).await {
        Ok(Claim::Replay(r)) => return r,
        Ok(Claim::Fresh(id)) => id,
        Err(e) => return e.into_response(),
    };
    let resp = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes),
        ))
        .await;
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            finish(&state, claimed, StatusCode::INTERNAL_SERVER_ERROR, "").await;
            return ApiError::internal(e).into_response();
        }
    };
    // An answer that shows a secret once is stored without it: a replay
    // must not show it again, nor may it rest in clear in the database.
    let stored = match parts.extensions.get::<StoreInstead>() {
        Some(StoreInstead(redacted)) => redacted.clone(),
        None => String::from_utf8_lossy(&bytes).into_owned(),
    };
    finish(&state, claimed, parts.status, &stored).await;
    Response::from_parts(parts, axum::body::Body::from(bytes))
}
