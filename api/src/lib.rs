//! wapipe's agents' REST API (axum): the seed 002 endpoints under
//! `/api/whatsapp`, API keys and permissions, cursor pagination,
//! idempotent creates, one error shape, the OpenAPI document, and the
//! inbox page at `/` that uses them.
//!
//! [`start`] serves it on its own listener; [`router`] and [`hyper_handler`]
//! let the binary mount it behind the webhook receiver on one listener.
//! Reads and writes that the workers share live in `wapipe-domain`.

pub mod agents;
pub mod auth;
pub mod blocked;
pub mod chats;
pub mod directory;
pub mod error;
pub mod eventlog;
pub mod events;
pub mod extract;
pub mod followups;
pub mod groups;
pub mod idempotency;
pub mod inbox_page;
pub mod labels;
pub mod media;
pub mod messages;
pub mod notes;
pub mod openapi;
pub mod page;
pub mod periodic;
pub mod scenarios;
pub mod stats;
pub mod templates;
pub mod views;
pub mod webhook_endpoints;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::BodyExt;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use wapipe_shared::broker::Broker;

use crate::error::ApiError;

/// What the API is given.
#[derive(Clone)]
pub struct ApiDeps {
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    /// Decrypted configs and the Graph API, for the template sync; without
    /// them `POST /templates/sync` answers 409.
    pub meta: Option<MetaAccess>,
    /// Encrypts the secrets of outgoing webhook endpoints; without it
    /// creating one answers 409.
    pub secret_key: Option<Arc<wapipe_shared::crypto::SecretKey>>,
    /// Where media files are kept; without it `GET /media/{id}` and
    /// uploads answer 409.
    pub media: Option<Arc<wapipe_domain::media::MediaStore>>,
}

/// What talking to Meta takes.
#[derive(Clone)]
pub struct MetaAccess {
    pub configs: Arc<wapipe_domain::configs::ConfigCache>,
    pub graph: wapipe_domain::templates::GraphTarget,
}

/// The API's settings (`WAPIPE_API_*`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Requests per second per key (`WAPIPE_API_RATE_PER_S`).
    pub rate_per_s: u32,
    /// Burst per key (`WAPIPE_API_RATE_BURST`).
    pub rate_burst: u32,
    pub max_body_bytes: usize,
    /// How often `agent_performance` is rolled up (today and yesterday).
    pub rollup_every: Duration,
    /// How often every number's templates are synced from Meta (`None`: never).
    pub template_sync_every: Option<Duration>,
    /// How long the events log keeps an event (`WAPIPE_EVENTS_RETENTION_DAYS`).
    pub events_retention: Duration,
    /// How often events past their retention are deleted.
    pub prune_every: Duration,
    /// How often the events poller looks for new events without a wake-up.
    pub events_poll_every: Duration,
    /// Events a WebSocket client may fall behind before it is closed with
    /// 1013 (`WAPIPE_WS_MAX_BUFFER`); also the size of the process's live
    /// buffer, shared by all clients.
    pub ws_max_buffer: usize,
    /// How often a WebSocket client is pinged.
    pub ws_ping_every: Duration,
    /// A WebSocket client silent this long (no pong, no message) is closed.
    pub ws_idle_timeout: Duration,
    /// Webhook endpoints may point at private addresses
    /// (`WAPIPE_WEBHOOKS_ALLOW_PRIVATE`).
    pub webhooks_allow_private: bool,
    /// The largest upload (`WAPIPE_MEDIA_MAX_BYTES`); Meta's limit per
    /// type applies below it.
    pub media_max_bytes: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            rate_per_s: 20,
            rate_burst: 40,
            max_body_bytes: 1024 * 1024,
            rollup_every: Duration::from_secs(300),
            template_sync_every: None,
            events_retention: Duration::from_secs(7 * 24 * 3600),
            prune_every: Duration::from_secs(3600),
            events_poll_every: Duration::from_millis(200),
            ws_max_buffer: 1000,
            ws_ping_every: Duration::from_secs(20),
            ws_idle_timeout: Duration::from_secs(60),
            webhooks_allow_private: false,
            media_max_bytes: 100 * 1024 * 1024,
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    pub meta: Option<MetaAccess>,
    pub secret_key: Option<Arc<wapipe_shared::crypto::SecretKey>>,
    pub settings: Arc<ApiSettings>,
    pub limiter: Arc<auth::Limiter>,
    /// This process, as the holder of the periodic jobs' leases.
    pub instance: Arc<str>,
    /// The live events of this process, for the WebSocket clients.
    pub hub: Arc<ws::Hub>,
    pub media: Option<Arc<wapipe_domain::media::MediaStore>>,
    /// Meta's media upload, when the API may talk to Meta.
    pub upload_graph: Option<wapipe_domain::media::MediaGraph>,
    /// Thumbnails decoded at once (each holds a decoded photo: tens of MB).
    pub thumbnail_decodes: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(deps: ApiDeps, settings: ApiSettings) -> Self {
        let upload_graph = deps.meta.as_ref().and_then(|m| {
            wapipe_domain::media::MediaGraph::new(
                &m.graph.base,
                &m.graph.version,
                Duration::from_secs(30),
            )
            .map_err(|e| tracing::warn!(error = %e, "no media uploads: cannot build the client"))
            .ok()
        });
        Self {
            media: deps.media,
            upload_graph,
            thumbnail_decodes: Arc::new(tokio::sync::Semaphore::new(2)),
            db: deps.db,
            broker: deps.broker,
            meta: deps.meta,
            secret_key: deps.secret_key,
            limiter: auth::limiter(settings.rate_per_s, settings.rate_burst),
            hub: ws::Hub::new(settings.ws_max_buffer),
            settings: Arc::new(settings),
            instance: uuid::Uuid::now_v7().to_string().into(),
        }
    }
}

async fn not_found() -> impl IntoResponse {
    ApiError::not_found("route")
}

/// Every route: `/api/whatsapp/*` behind the key and rate limit,
/// `/api/openapi.json`, `/api/docs` and the inbox page (`/`, `/inbox/*`)
/// open.
pub fn router(state: AppState) -> Router {
    let (api, doc) = openapi::split();
    let doc = Arc::new(doc);
    let protected = api
        .layer(from_fn_with_state(state.clone(), ws::wake_layer))
        .layer(from_fn_with_state(state.clone(), idempotency::layer))
        .layer(from_fn_with_state(state.clone(), auth::layer))
        .with_state(state.clone());
    Router::new()
        .merge(protected)
        .merge(openapi::public(doc))
        .merge(inbox_page::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
}

/// Forgets rate-limit state of keys not seen lately.
fn spawn_limiter_upkeep(state: &AppState, shutdown: CancellationToken) {
    let limiter = state.limiter.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => limiter.retain_recent(),
                () = shutdown.cancelled() => return,
            }
        }
    });
}

/// The API process's loops.
fn spawn_background(state: &AppState, shutdown: &CancellationToken) {
    spawn_limiter_upkeep(state, shutdown.clone());
    periodic::spawn_rollup(state, shutdown.clone());
    periodic::spawn_template_sync(state, shutdown.clone());
    periodic::spawn_events_prune(state, shutdown.clone());
    ws::spawn_poller(state, shutdown.clone());
}

/// The API on its own listener until `shutdown`, then a graceful stop.
pub fn start(
    deps: ApiDeps,
    settings: ApiSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let state = AppState::new(deps, settings);
    spawn_background(&state, &shutdown);
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "the API server failed");
        }
    })
}

/// A response future of [`hyper_handler`].
pub type HandlerFuture = Pin<Box<dyn Future<Output = hyper::Response<StreamBody>> + Send>>;

/// A streamed response body (see [`hyper_handler`]).
pub type StreamBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The API as a plain hyper handler, for a server that routes some paths
/// to it (the webhook receiver, when both share a listener). Answers
/// stream as the router produces them: a media file is never held whole.
pub fn hyper_handler(
    deps: ApiDeps,
    settings: ApiSettings,
    shutdown: CancellationToken,
) -> Arc<dyn Fn(hyper::Request<hyper::body::Incoming>) -> HandlerFuture + Send + Sync> {
    let state = AppState::new(deps, settings);
    spawn_background(&state, &shutdown);
    let app = router(state);
    Arc::new(move |req| {
        let app = app.clone();
        Box::pin(async move {
            let resp = match app.oneshot(req.map(axum::body::Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            resp.map(|body| body.map_err(Into::into).boxed_unsync())
        })
    })
}
