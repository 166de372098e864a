//! wapipe's webhook receiver (plain hyper 1) and outbox relay.
//!
//! A POST is verified (HMAC-SHA256 over the raw bytes), stored through the
//! group commit, and answered 200 only once its batch has committed
//! (DESIGN invariant 1). Publishing to the broker happens after, off the
//! answer's path; the relay re-publishes whatever did not make it.

pub mod envelope;
pub mod publisher;
pub mod relay;
pub mod store;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe_domain::configs::ConfigCache;
use wapipe_shared::broker::Broker;
use wapipe_shared::crypto::{parse_signature_header, sha256_hex};
use wapipe_shared::entities::webhook_events::EventStatus;
use wapipe_shared::metrics::{self as m, outcome};

use crate::publisher::Publisher;
use crate::relay::RelaySettings;
use crate::store::{GroupCommit, NewEvent, StoreError, Stored};

pub const WEBHOOK_PATH: &str = "/api/whatsapp/webhooks";

#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// How long shutdown waits for accepted requests to finish.
    pub shutdown_grace: Duration,
}

impl Default for ReceiverSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// Where requests that are not the receiver's go when another service
/// shares its listener (the agents' REST API under `/api/`, and its inbox
/// page at `/`). The receiver's own paths (`/healthz`, `/readyz` and the
/// webhook paths `/api/whatsapp/webhooks[/{config uuid}]`) never reach
/// it. Connections are served with upgrades, so a fallback that answers
/// 101 (the API's WebSocket) takes the connection over through the
/// request's `OnUpgrade`.
pub type Fallback = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// The paths the receiver answers itself, even with a [`Fallback`]: a
/// well-formed webhook path (`/api/whatsapp/webhooks/events` is the API's,
/// not a webhook pinned to a config) and the probes.
fn is_receivers(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || matches!(webhook_route(path), Some(Ok(_)))
}

pub struct Receiver {
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    pub configs: Arc<ConfigCache>,
    pub store: GroupCommit,
    pub settings: ReceiverSettings,
    pub fallback: Option<Fallback>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn count(outcome: &'static str, started: Instant) {
    metrics::counter!(m::INGEST_REQUESTS, "outcome" => outcome).increment(1);
    metrics::histogram!(m::INGEST_ACK_SECONDS, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// `/api/whatsapp/webhooks` or `/api/whatsapp/webhooks/{config_id}`:
/// `Ok(None)` unpinned, `Ok(Some(id))` pinned, `Err` for another path or a
/// malformed id.
fn webhook_route(path: &str) -> Option<Result<Option<Uuid>, ()>> {
    let rest = path.strip_prefix(WEBHOOK_PATH)?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Some(Ok(None));
    }
    let id = rest.strip_prefix('/')?;
    if id.contains('/') {
        return None;
    }
    Some(Uuid::parse_str(id).map(Some).map_err(|_| ()))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Query values arrive percent-encoded (`+` for space in forms).
fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl Receiver {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Resp, Infallible> {
        // Checked only when a service shares the listener, so the webhook
        // path costs nothing more otherwise.
        if let Some(fallback) = &self.fallback
            && !is_receivers(req.uri().path())
        {
            return Ok(fallback(req).await);
        }
        let path = req.uri().path().to_owned();
        let resp = match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
            (&Method::GET, "/readyz") => self.readyz().await,
            (method, p) => match webhook_route(p) {
                None => text(StatusCode::NOT_FOUND, "not found"),
                Some(Err(())) => text(
                    StatusCode::NOT_FOUND,
                    "unknown config id in path (expected a UUID)",
                ),
                Some(Ok(pinned)) => match *method {
                    Method::GET => {
                        self.handshake(pinned, req.uri().query().unwrap_or(""))
                            .await
                    }
                    Method::POST => self.receive(pinned, req).await,
                    _ => {
                        let mut r = text(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "use GET (handshake) or POST (events)",
                        );
                        r.headers_mut()
                            .insert("allow", HeaderValue::from_static("GET, POST"));
                        r
                    }
                },
            },
        };
        Ok(resp)
    }

    async fn readyz(&self) -> Resp {
        let db_ok = self.db.execute_unprepared("SELECT 1").await.is_ok();
        let broker_ok = self.broker.ping().await.is_ok();
        let body = format!(
            "database: {}\nbroker ({}): {}\n",
            if db_ok { "ok" } else { "down" },
            self.broker.mode(),
            if broker_ok { "ok" } else { "down" }
        );
        let status = if db_ok && broker_ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        text(status, body)
    }

    /// Meta's verification handshake: echo `hub.challenge` byte for byte.
    async fn handshake(&self, pinned: Option<Uuid>, query: &str) -> Resp {
        let mode = query_param(query, "hub.mode");
        let token = query_param(query, "hub.verify_token");
        let challenge = query_param(query, "hub.challenge");
        match (mode.as_deref(), token, challenge) {
            (Some("subscribe"), Some(token), Some(challenge))
                if self.configs.verify_token(pinned, &token).await =>
            {
                text(StatusCode::OK, challenge.into_owned())
            }
            _ => text(StatusCode::FORBIDDEN, "verification failed"),
        }
    }

    async fn receive(&self, pinned: Option<Uuid>, req: Request<Incoming>) -> Resp {
        let started = Instant::now();
        let max = self.settings.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            count(outcome::TOO_LARGE, started);
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {max} bytes"),
            );
        }
        let signature = req
            .headers()
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match tokio::time::timeout(
            self.settings.body_read_timeout,
            Limited::new(req.into_body(), max).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                count(outcome::TOO_LARGE, started);
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body larger than {max} bytes"),
                );
            }
            Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "could not read the body"),
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
        };
        metrics::histogram!(m::INGEST_BODY_BYTES).record(body.len() as f64);

        // The signature is checked over the raw bytes as received, before
        // anything is parsed or stored.
        let Some(sig_header) = signature else {
            count(outcome::BAD_SIGNATURE, started);
            return text(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
        };
        let Some(sig) = parse_signature_header(&sig_header) else {
            count(outcome::BAD_SIGNATURE, started);
            return text(
                StatusCode::UNAUTHORIZED,
                "malformed X-Hub-Signature-256 (expected sha256=<64 hex>)",
            );
        };
        let verified = self.configs.verify(pinned, &body, &sig).await;
        if verified.configs.is_empty() {
            count(outcome::BAD_SIGNATURE, started);
            return text(StatusCode::UNAUTHORIZED, "invalid signature");
        }

        let id = Uuid::now_v7();
        let inspected = envelope::inspect(&body);
        let (routing, status, error) = match &inspected {
            Ok(r) => (r.clone(), EventStatus::Received, None),
            Err(inv) => (
                Default::default(),
                EventStatus::Rejected,
                Some(inv.reason()),
            ),
        };
        // Route to the signing config that owns the number; with one candidate,
        // that one; otherwise leave it to the parse worker, which routes each change.
        let config_id = routing
            .phone_number_id
            .as_deref()
            .and_then(|p| verified.configs.iter().find(|c| c.phone_number_id == p))
            .or_else(|| {
                routing
                    .waba_id
                    .as_deref()
                    .and_then(|w| verified.configs.iter().find(|c| c.waba_id == w))
            })
            .or(if verified.configs.len() == 1 {
                verified.configs.first()
            } else {
                None
            })
            .map(|c| c.id);
        let lane_key = routing.lane_key(&id.to_string());
        let ev = NewEvent {
            id,
            body_sha256: sha256_hex(&body),
            raw_body: body.to_vec(),
            signature: Some(sig_header),
            object: routing.object,
            field: routing.field,
            config_id,
            status,
            error: error.clone(),
            received_at: Utc::now(),
            lane_key,
        };
        match (self.store.store(ev).await, error) {
            (Ok(Stored::Inserted), None) => {
                count(outcome::ACCEPTED, started);
                text(StatusCode::OK, "EVENT_RECEIVED")
            }
            (Ok(Stored::Duplicate), None) => {
                count(outcome::DUPLICATE, started);
                text(StatusCode::OK, "EVENT_RECEIVED (duplicate)")
            }
            (Ok(_), Some(reason)) => {
                count(outcome::REJECTED, started);
                text(StatusCode::BAD_REQUEST, reason)
            }
            (Err(StoreError::Unavailable(_)), _) | (Err(StoreError::ShuttingDown), _) => {
                count(outcome::UNAVAILABLE, started);
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage unavailable, retry later",
                );
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("5"));
                r
            }
        }
    }
}

/// Builds the group commit whose committed `received` events are published.
pub fn start_store(
    db: DatabaseConnection,
    publisher: Publisher,
    batch: store::BatchSettings,
) -> (GroupCommit, tokio::task::JoinHandle<()>) {
    let on_commit: store::OnCommit = Arc::new(move |events: Vec<NewEvent>| {
        for ev in events {
            if ev.status == EventStatus::Received {
                publisher.publish(ev.id, ev.lane_key);
            }
        }
    });
    GroupCommit::start(db, batch, on_commit)
}

/// What the ingest role is given.
#[derive(Clone)]
pub struct IngestDeps {
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    pub configs: Arc<ConfigCache>,
    /// Another service on the same listener, for `/api/*` paths.
    pub fallback: Option<Fallback>,
}

/// The ingest role's settings.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub receiver: ReceiverSettings,
    pub batch: store::BatchSettings,
    pub relay: RelaySettings,
}

/// The ingest role: the receiver on `listener`, its group commit and
/// publisher, the config refresher and the relay. Runs until `shutdown` is
/// cancelled, then stops accepting, answers what was accepted, commits the
/// last batch, lets the publishes confirm, and ends.
pub fn start(
    deps: IngestDeps,
    settings: IngestSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (publisher, stamp_task) = Publisher::start(deps.db.clone(), deps.broker.clone());
    let (store, store_task) = start_store(deps.db.clone(), publisher.clone(), settings.batch);
    tokio::spawn(deps.configs.clone().run_refresher(shutdown.clone()));
    tokio::spawn(relay::run(
        deps.db.clone(),
        deps.broker.clone(),
        settings.relay,
        shutdown.clone(),
    ));
    let receiver = Arc::new(Receiver {
        db: deps.db,
        broker: deps.broker,
        configs: deps.configs,
        store,
        settings: settings.receiver,
        fallback: deps.fallback,
    });
    tokio::spawn(async move {
        serve(listener, receiver, shutdown).await;
        // The receiver is gone, so its store handle is dropped: the batcher
        // commits what it holds and ends; then publishes get a moment to
        // confirm.
        let _ = tokio::time::timeout(Duration::from_secs(10), store_task).await;
        publisher.drain(Duration::from_secs(5)).await;
        drop(publisher);
        let _ = tokio::time::timeout(Duration::from_secs(2), stamp_task).await;
    })
}

/// Serves until `shutdown` is cancelled, then stops accepting and lets
/// accepted requests finish (bounded by `shutdown_grace`).
pub async fn serve(listener: TcpListener, receiver: Arc<Receiver>, shutdown: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(receiver.settings.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (stream, _peer): (_, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let receiver = receiver.clone();
        let service = hyper::service::service_fn(move |req| receiver.clone().handle(req));
        let builder = builder.clone();
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let grace = receiver.settings.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after the shutdown grace period");
    }
}
