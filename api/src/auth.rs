//! Who is calling: `Authorization: Bearer KEY` (or, on a WebSocket
//! upgrade, the subprotocol `wapipe.bearer.KEY`) → the live API key (only
//! its sha256 is stored) → a [`Principal`] with the companies' configs it
//! may see and, for an agent key, the agent and its seed 002 permissions.
//! Also the per-key rate limit (governor), with `RateLimit-*` headers on
//! every answer and 429 + `Retry-After` past the limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use uuid::Uuid;
use wapipe_domain::apikeys;
use wapipe_domain::audit::Who;
use wapipe_shared::entities::{agents, chats, whatsapp_configs};

use crate::AppState;
use crate::error::ApiError;

/// Seed 002's agent permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    AssignChats,
    TransferChats,
    ViewAllChats,
    ManageTemplates,
    ManageLabels,
    BlockNumbers,
    ViewReports,
}

impl Perm {
    pub fn key(self) -> &'static str {
        match self {
            Perm::AssignChats => "canAssignChats",
            Perm::TransferChats => "canTransferChats",
            Perm::ViewAllChats => "canViewAllChats",
            Perm::ManageTemplates => "canManageTemplates",
            Perm::ManageLabels => "canManageLabels",
            Perm::BlockNumbers => "canBlockNumbers",
            Perm::ViewReports => "canViewReports",
        }
    }
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Uuid,
    /// The agent of an agent key; `None` for an admin key.
    pub agent: Option<agents::Model>,
    /// The configs (WhatsApp numbers) the key may touch; `None`: all.
    pub configs: Option<Vec<Uuid>>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.agent.is_none()
    }

    pub fn agent_id(&self) -> Option<Uuid> {
        self.agent.as_ref().map(|a| a.id)
    }

    pub fn who(&self) -> Who {
        match &self.agent {
            Some(a) => Who {
                kind: "agent",
                id: Some(a.id),
            },
            None => Who {
                kind: "admin",
                id: Some(self.key_id),
            },
        }
    }

    pub fn can(&self, perm: Perm) -> bool {
        match &self.agent {
            None => true,
            Some(a) => a
                .permissions
                .as_ref()
                .and_then(|p| p.get(perm.key()))
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        }
    }

    /// 403 unless the caller has `perm`.
    pub fn require(&self, perm: Perm) -> Result<(), ApiError> {
        if self.can(perm) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this agent lacks the permission {}",
                perm.key()
            )))
        }
    }

    pub fn sees_config(&self, config_id: Uuid) -> bool {
        self.configs.as_ref().is_none_or(|c| c.contains(&config_id))
    }

    /// Rows of the configs the key may touch.
    pub fn config_scope(&self, col: impl ColumnTrait) -> Condition {
        match &self.configs {
            None => Condition::all(),
            Some(ids) => Condition::all().add(col.is_in(ids.iter().copied())),
        }
    }

    /// Whether the caller may see this chat at all: its company, and for
    /// an agent without `canViewAllChats`, only the chats assigned to them.
    pub fn sees_chat(&self, chat: &chats::Model) -> bool {
        !chat.is_deleted
            && self.sees_config(chat.config_id)
            && (self.can(Perm::ViewAllChats) || chat.assigned_to == self.agent_id())
    }

    /// The one config a create should go to: `asked`, or the only one in
    /// scope.
    pub async fn pick_config(
        &self,
        state: &AppState,
        asked: Option<Uuid>,
    ) -> Result<whatsapp_configs::Model, ApiError> {
        let mut q = whatsapp_configs::Entity::find()
            .filter(whatsapp_configs::Column::IsDeleted.eq(false))
            .filter(self.config_scope(whatsapp_configs::Column::Id));
        if let Some(id) = asked {
            q = q.filter(whatsapp_configs::Column::Id.eq(id));
        }
        let mut found = q.all(&state.db).await?;
        match (asked, found.len()) {
            (_, 1) => Ok(found.remove(0)),
            (Some(_), _) => Err(ApiError::field("configId", "no such config")),
            (None, 0) => Err(ApiError::conflict(
                "no_config",
                "no WhatsApp number is configured for this key's companies",
            )),
            (None, _) => Err(ApiError::field(
                "configId",
                "required: this key has several WhatsApp numbers",
            )),
        }
    }
}

pub type Limiter =
    RateLimiter<Uuid, DefaultKeyedStateStore<Uuid>, DefaultClock, StateInformationMiddleware>;

pub fn limiter(per_second: u32, burst: u32) -> Arc<Limiter> {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Arc::new(
        RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            .with_middleware::<StateInformationMiddleware>(),
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

fn num(n: impl std::fmt::Display) -> HeaderValue {
    HeaderValue::from_str(&n.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

const RL_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RL_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RL_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The configs a key may touch.
async fn scope(
    state: &AppState,
    key: &wapipe_shared::entities::api_keys::Model,
    agent: Option<&agents::Model>,
) -> Result<Option<Vec<Uuid>>, ApiError> {
    let companies = match agent {
        Some(a) => match (&a.company, a.config_id) {
            (Some(c), _) => Some(vec![c.clone()]),
            (None, Some(config)) => return Ok(Some(vec![config])),
            (None, None) => return Ok(Some(Vec::new())),
        },
        None => apikeys::key_companies(key),
    };
    let Some(companies) = companies else {
        return Ok(None);
    };
    let ids = whatsapp_configs::Entity::find()
        .filter(whatsapp_configs::Column::Company.is_in(companies))
        .all(&state.db)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    Ok(Some(ids))
}

/// The auth and rate-limit layer of every `/api/whatsapp` route.
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let Some(secret) = bearer(headers).or_else(|| crate::ws::protocol_key(headers)) else {
        return ApiError::unauthorized("send the API key as Authorization: Bearer KEY")
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            .into_response();
    };
    let now = wapipe_domain::clock::now();
    let key = match apikeys::find_live(&state.db, &apikeys::hash_key(secret), now).await {
        Ok(Some(k)) => k,
        Ok(None) => {
            return ApiError::unauthorized("unknown or revoked API key").into_response();
        }
        Err(e) => return ApiError::internal(e).into_response(),
    };

    let limit = state.settings.rate_burst;
    let (remaining, reset) = match state.limiter.check_key(&key.id) {
        Ok(snapshot) => (snapshot.remaining_burst_capacity(), 0),
        Err(not_until) => {
            let wait: Duration = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} requests per second with this key",
                    state.settings.rate_per_s
                ),
            )
            .with_header(header::RETRY_AFTER, num(secs.max(1)))
            .with_header(RL_LIMIT, num(limit))
            .with_header(RL_REMAINING, num(0))
            .with_header(RL_RESET, num(secs.max(1)))
            .into_response();
        }
    };

    let agent = match key.agent_id {
        None if key.kind == "admin" => None,
        None => return ApiError::unauthorized("agent key without an agent").into_response(),
        Some(id) => match agents::Entity::find_by_id(id).one(&state.db).await {
            Ok(Some(a)) if !a.is_deleted && a.is_active => Some(a),
            Ok(_) => {
                return ApiError::unauthorized("this key's agent is removed or inactive")
                    .into_response();
            }
            Err(e) => return ApiError::internal(e).into_response(),
        },
    };
    let configs = match scope(&state, &key, agent.as_ref()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = apikeys::touch(&state.db, &key, now).await {
        tracing::warn!(error = %e, key = %key.id, "could not stamp the key's last use");
    }
    req.extensions_mut().insert(Principal {
        key_id: key.id,
        agent,
        configs,
    });
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(RL_LIMIT, num(limit));
    h.insert(RL_REMAINING, num(remaining));
    h.insert(RL_RESET, num(reset));
    resp
}
