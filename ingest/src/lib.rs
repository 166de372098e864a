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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
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
    /// Bytes of request bodies held at once over all connections; a
    /// request that would go over is answered 503 with `Retry-After`.
    pub body_budget_bytes: usize,
    /// Open connections at most; past it, accepting waits for one to close.
    pub max_connections: usize,
    /// A new connection must have sent a whole request within this, and
    /// an idle kept-alive one is closed after `idle_timeout`: a client that
    /// sends nothing (or half a request, or an HTTP/2 preface) holds no
    /// file descriptor for longer.
    pub first_request_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ReceiverSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(25),
            body_budget_bytes: 64 * 1024 * 1024,
            max_connections: 4096,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// Over-size bodies are read and thrown away up to this many bytes before
/// the 413, so a client that sends its whole body before reading (Python's
/// urllib) gets the answer rather than a connection reset; a bigger one is
/// answered at once and the connection closed.
const DISCARD_MAX_BYTES: u64 = 16 * 1024 * 1024;
const DISCARD_WAIT: Duration = Duration::from_secs(5);

/// Where requests that are not the receiver's go when another service
/// shares its listener (the agents' REST API under `/api/`, and its inbox
/// page at `/`). The receiver's own paths (`/healthz`, `/readyz` and the
/// webhook paths `/api/whatsapp/webhooks[/{config uuid}]`) never reach
/// it. Connections are served with upgrades, so a fallback that answers
/// 101 (the API's WebSocket) takes the connection over through the
/// request's `OnUpgrade`.
pub type Fallback = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<StreamBody>> + Send>>
        + Send
        + Sync,
>;

/// An error of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body sent as it is produced: a [`Fallback`]'s answers (the API's
/// media files are streamed, never held whole in memory).
pub type StreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What the listener answers with: the receiver's own short answers
/// whole, a fallback's streamed.
pub enum ResponseBody {
    Whole(Full<Bytes>),
    Streamed(StreamBody),
}

/// A response on its way out: its body, and its connection counted busy
/// until the body has been sent or dropped, so the idle timeout never cuts
/// a long download (a media file to a slow client).
pub struct Outgoing {
    body: ResponseBody,
    _busy: Busy,
}

impl hyper::body::Body for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().body {
            ResponseBody::Whole(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ResponseBody::Streamed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            ResponseBody::Whole(b) => b.is_end_stream(),
            ResponseBody::Streamed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.body {
            ResponseBody::Whole(b) => b.size_hint(),
            ResponseBody::Streamed(b) => b.size_hint(),
        }
    }
}

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
    /// Permits are bytes of body (see `body_budget_bytes`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
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
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        // Checked only when a service shares the listener, so the webhook
        // path costs nothing more otherwise.
        if let Some(fallback) = &self.fallback
            && !is_receivers(req.uri().path())
        {
            return Ok(fallback(req).await.map(ResponseBody::Streamed));
        }
        Ok(self.answer(req).await.map(ResponseBody::Whole))
    }

    async fn answer(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
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
        }
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
            let (_, body) = req.into_parts();
            return too_large(max, discard(body, declared).await);
        }
        // The body's bytes are reserved before it is read: its declared
        // length, or the cap when it comes chunked.
        let reserve = declared.map_or(max, |n| n as usize).clamp(1, max.max(1));
        let Ok(_budget) = self
            .body_budget
            .clone()
            .try_acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
        else {
            count(outcome::BUSY, started);
            // As for the 413: the body is read and dropped (nothing of it
            // is kept), so a client that sends it all before reading still
            // gets the 503 rather than a broken pipe.
            let (_, body) = req.into_parts();
            let drained = discard(body, declared).await;
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many bodies in flight, retry later",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return closing_unless(r, drained);
        };
        let signature = req
            .headers()
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut incoming = req.into_body();
        let body = match tokio::time::timeout(
            self.settings.body_read_timeout,
            read_capped(&mut incoming, max, declared),
        )
        .await
        {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => {
                count(outcome::TOO_LARGE, started);
                return too_large(max, discard(incoming, None).await);
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

/// The whole body, or `None` once it passes `max` bytes (the rest is left
/// unread). A declared length is allocated once, not grown by doubling.
async fn read_capped(
    body: &mut Incoming,
    max: usize,
    declared: Option<u64>,
) -> Result<Option<Bytes>, hyper::Error> {
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize).min(max));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > max {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

/// Reads and throws away the rest of an over-size body, up to
/// [`DISCARD_MAX_BYTES`] (from what is declared, when it says) and
/// [`DISCARD_WAIT`]: whether all of it was read, so the connection can stay.
async fn discard(mut body: Incoming, declared: Option<u64>) -> bool {
    if declared.is_some_and(|n| n > DISCARD_MAX_BYTES) {
        return false;
    }
    let drain = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > DISCARD_MAX_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DISCARD_WAIT, drain)
        .await
        .unwrap_or(false)
}

/// The 413; with `Connection: close` when the body was not all read.
fn too_large(max: usize, drained: bool) -> Resp {
    closing_unless(
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {max} bytes"),
        ),
        drained,
    )
}

/// `Connection: close` on an answer given before its body was all read:
/// the connection cannot carry another request.
fn closing_unless(mut r: Resp, drained: bool) -> Resp {
    if !drained {
        r.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
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
        body_budget: Arc::new(tokio::sync::Semaphore::new(
            settings.receiver.body_budget_bytes.max(1),
        )),
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

/// When a connection last did something, for its deadlines.
struct Activity {
    born: Instant,
    /// Requests being answered now.
    busy: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `born` to the last request's start or end; 0:
    /// no request yet.
    last_ms: std::sync::atomic::AtomicU64,
}

/// A request in progress on its connection (see [`Activity::begin`]).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            busy: 0.into(),
            last_ms: 0.into(),
        }
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_ms.store(ms.max(1), Ordering::Release);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves when the connection has had no whole request for `first`
    /// since it opened, or has been idle (nothing in progress) for `idle`
    /// since its last request. A request in progress (a long body read, a
    /// WebSocket upgrade's answer) is never cut here; its own timeouts hold.
    async fn expired(&self, first: Duration, idle: Duration) {
        loop {
            let last = self.last_ms.load(Ordering::Acquire);
            let (from, limit) = if last == 0 {
                (Duration::ZERO, first)
            } else {
                (Duration::from_millis(last), idle)
            };
            let due = from + limit;
            let now = self.born.elapsed();
            if now < due {
                tokio::time::sleep(due - now).await;
                continue;
            }
            if self.busy.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit.min(Duration::from_secs(1))).await;
                continue;
            }
            if self.last_ms.load(Ordering::Acquire) == last {
                return;
            }
        }
    }
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
    let slots = Arc::new(tokio::sync::Semaphore::new(
        receiver.settings.max_connections.max(1),
    ));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
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
        let activity = Arc::new(Activity::new());
        let (first, idle) = (
            receiver.settings.first_request_timeout,
            receiver.settings.idle_timeout,
        );
        let receiver = receiver.clone();
        let seen = activity.clone();
        let service = hyper::service::service_fn(move |req| {
            let receiver = receiver.clone();
            let busy = seen.begin();
            async move {
                // Busy until the body has been sent, not just produced.
                let r = receiver.handle(req).await;
                r.map(|resp| resp.map(|body| Outgoing { body, _busy: busy }))
            }
        });
        let builder = builder.clone();
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let fut = graceful.watch(conn);

        tokio::spawn(async move {
            tokio::select! {
                r = fut => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = activity.expired(first, idle) => {
                    metrics::counter!(m::INGEST_CONNECTIONS_TIMED_OUT).increment(1);
                }
            }
            drop(slot);
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
