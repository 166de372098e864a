//! The load generators (`wapipe-sim load`: signed webhooks; `wapipe-sim http`:
//! a list of plain requests, for the REST API) and the no-work baseline
//! servers (`wapipe-sim nowork`, `--axum` for the API's stack).
//!
//! Each worker owns one keep-alive HTTP/1.1 connection and sends one request
//! at a time on it, so `concurrency` is both the number of connections and
//! the most requests in flight. A shared ticket counter spreads the target
//! rate over the workers: ticket `i` is due at `start + i / rate`. Both
//! generators share that driver; they differ only in the requests a worker
//! makes ([`Requests`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::http::{Body, bytes_response, serve};
use crate::payloads::{Business, PayloadGen};
use crate::stats::Latencies;
use crate::{SIGNATURE_HEADER, Signer};

/// What to send, where, how fast and for how long.
#[derive(Clone)]
pub struct LoadConfig {
    /// `http://127.0.0.1:PORT/path`. Only loopback targets are accepted:
    /// this tool floods its target and must never point at someone else.
    pub webhook: String,
    pub app_secret: String,
    /// Requests per second over all connections; 0 = as fast as possible.
    pub rate: f64,
    pub duration: Duration,
    /// Concurrent keep-alive connections (one request in flight on each).
    pub concurrency: usize,
    /// Stop after this many requests even if time is left.
    pub max_requests: Option<u64>,
    pub business: Business,
    /// Distinct customers the inbound messages come from.
    pub customers: usize,
    /// Messages per message body (see `PayloadGen::with_messages_per_body`).
    pub messages_per_body: u32,
    /// Only these kinds of body (empty: Meta's whole mix).
    pub kinds: Vec<crate::payloads::PayloadKind>,
    /// Per-request bound; a request still unanswered then counts as an error.
    pub request_timeout: Duration,
}

impl LoadConfig {
    pub fn new(webhook: impl Into<String>, app_secret: impl Into<String>) -> Self {
        Self {
            webhook: webhook.into(),
            app_secret: app_secret.into(),
            rate: 0.0,
            duration: Duration::from_secs(10),
            concurrency: 64,
            max_requests: None,
            business: Business::default(),
            customers: 1000,
            messages_per_body: 1,
            kinds: Vec::new(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid webhook URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "refusing to load {host:?}: load targets must be loopback (127.0.0.1, localhost or [::1])"
    )]
    NotLoopback { host: String },
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("invalid load settings: {0}")]
    Settings(String),
}

/// The outcome of a load run. Field names are those of `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Requests attempted: accepted + rejected + errors.
    pub sent: u64,
    /// Answered 2xx.
    pub accepted: u64,
    /// Answered non-2xx.
    pub rejected: u64,
    pub rejected_by_status: BTreeMap<u16, u64>,
    /// Connect, I/O and timeout failures.
    pub errors: u64,
    /// The first transport error seen, to tell "target down" from "slow".
    pub first_error: Option<String>,
    pub elapsed_secs: f64,
    pub accepted_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Inbound messages carried by accepted bodies.
    pub inbound_messages: u64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sent              {}", self.sent)?;
        writeln!(f, "accepted (2xx)    {}", self.accepted)?;
        if self.rejected_by_status.is_empty() {
            writeln!(f, "rejected          0")?;
        }
        for (status, n) in &self.rejected_by_status {
            writeln!(f, "rejected {status}      {n}")?;
        }
        writeln!(f, "errors            {}", self.errors)?;
        if let Some(e) = &self.first_error {
            writeln!(f, "first error       {e}")?;
        }
        writeln!(f, "elapsed           {:.2} s", self.elapsed_secs)?;
        writeln!(f, "accepted/s        {:.1}", self.accepted_per_sec)?;
        writeln!(f, "inbound messages  {}", self.inbound_messages)?;
        write!(
            f,
            "latency ms        p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// Where the requests go, parsed once.
#[derive(Debug, Clone)]
struct Target {
    addrs: Vec<SocketAddr>,
    authority: String,
    path: String,
}

async fn resolve_target(url: &str) -> Result<Target, LoadError> {
    let bad = |reason: &str| LoadError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported (local targets only)")),
        None => return Err(bad("missing http:// scheme")),
    }
    let host = uri.host().ok_or_else(|| bad("missing host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(LoadError::NotLoopback {
            host: host.to_owned(),
        });
    }
    let port = uri.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|source| LoadError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .filter(|a| a.ip().is_loopback())
        .collect();
    if addrs.is_empty() {
        return Err(LoadError::NotLoopback {
            host: host.to_owned(),
        });
    }
    let authority = uri
        .authority()
        .map_or_else(|| host.to_owned(), |a| a.as_str().to_owned());
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    Ok(Target {
        addrs,
        authority,
        path,
    })
}

/// Runs one webhook load test and reports. Bounded by `duration` (no
/// request starts after it) and `max_requests`; requests in flight at the
/// end finish or time out after `request_timeout`.
pub async fn run_load(cfg: LoadConfig) -> Result<LoadReport, LoadError> {
    let pace = Pace::checked(
        cfg.rate,
        cfg.duration,
        cfg.concurrency,
        cfg.max_requests,
        cfg.request_timeout,
    )?;
    let target = resolve_target(&cfg.webhook).await?;
    let signer = Arc::new(Signer::new(cfg.app_secret.as_bytes()));
    let sources = (0..cfg.concurrency)
        .map(|_| Webhooks {
            payloads: PayloadGen::new(cfg.business.clone(), cfg.customers)
                .with_messages_per_body(cfg.messages_per_body)
                .with_kinds(&cfg.kinds),
            signer: signer.clone(),
            path: target.path.clone(),
        })
        .collect();
    Ok(drive(target, pace, sources).await)
}

/// `wapipe-sim http`: plain requests (no signature) against any loopback
/// server, taken round robin from a list, with the same headers on each.
#[derive(Debug, Clone)]
pub struct HttpLoadConfig {
    /// `http://127.0.0.1:PORT`: where the requests' paths are sent.
    pub base: String,
    pub requests: Vec<HttpRequest>,
    /// Sent with every request, e.g. `Authorization: Bearer …`.
    pub headers: Vec<(String, String)>,
    pub rate: f64,
    pub duration: Duration,
    pub concurrency: usize,
    pub max_requests: Option<u64>,
    pub request_timeout: Duration,
}

/// One line of a request list: `METHOD /path [JSON body]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
}

impl HttpRequest {
    /// Parses a request list: one `METHOD /path [body]` per line; blank
    /// lines and `#` comments are skipped. The body is the rest of the line.
    pub fn parse_list(text: &str) -> Result<Vec<HttpRequest>, LoadError> {
        let mut out = Vec::new();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad =
                |reason: &str| LoadError::Settings(format!("request line {}: {reason}", no + 1));
            let (method, rest) = line
                .split_once(' ')
                .ok_or_else(|| bad("expected `METHOD /path [body]`"))?;
            let method =
                Method::from_bytes(method.as_bytes()).map_err(|_| bad("unknown method"))?;
            let rest = rest.trim_start();
            let (path, body) = match rest.split_once(' ') {
                Some((p, b)) => (p, Some(Bytes::from(b.trim().to_owned()))),
                None => (rest, None),
            };
            if !path.starts_with('/') {
                return Err(bad("the path must start with /"));
            }
            out.push(HttpRequest {
                method,
                path: path.to_owned(),
                body,
            });
        }
        if out.is_empty() {
            return Err(LoadError::Settings("the request list is empty".into()));
        }
        Ok(out)
    }
}

pub async fn run_http_load(cfg: HttpLoadConfig) -> Result<LoadReport, LoadError> {
    let pace = Pace::checked(
        cfg.rate,
        cfg.duration,
        cfg.concurrency,
        cfg.max_requests,
        cfg.request_timeout,
    )?;
    if cfg.requests.is_empty() {
        return Err(LoadError::Settings("no requests to send".into()));
    }
    let target = resolve_target(&cfg.base).await?;
    let mut headers = Vec::with_capacity(cfg.headers.len());
    for (name, value) in &cfg.headers {
        let bad = || LoadError::Settings(format!("invalid header {name:?}"));
        headers.push((
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?,
            HeaderValue::from_str(value).map_err(|_| bad())?,
        ));
    }
    let requests: Arc<[HttpRequest]> = cfg.requests.into();
    let headers: Arc<[(HeaderName, HeaderValue)]> = headers.into();
    // Each worker starts at its own place in the list so the first requests
    // of a run are spread over it rather than all the first line.
    let sources = (0..cfg.concurrency)
        .map(|i| RoundRobin {
            next: i % requests.len(),
            requests: requests.clone(),
            headers: headers.clone(),
        })
        .collect();
    Ok(drive(target, pace, sources).await)
}

/// What one request of a run puts on the wire.
struct Outgoing {
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    /// Inbound messages the body carries (webhooks only), for the report.
    inbound: u32,
}

/// The requests one worker sends, in order.
trait Requests: Send + 'static {
    fn next_request(&mut self) -> Outgoing;
}

/// Signed webhooks from a payload generator.
struct Webhooks {
    payloads: PayloadGen,
    signer: Arc<Signer>,
    path: String,
}

impl Requests for Webhooks {
    fn next_request(&mut self) -> Outgoing {
        let payload = self.payloads.next_payload();
        let signature = self.signer.sign(&payload.body);
        let mut headers = vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        if let Ok(v) = HeaderValue::from_str(&signature) {
            headers.push((HeaderName::from_static(SIGNATURE_HEADER), v));
        }
        Outgoing {
            method: Method::POST,
            path: self.path.clone(),
            headers,
            body: Bytes::from(payload.body),
            inbound: payload.inbound_messages,
        }
    }
}

/// A fixed list of requests, taken in turn.
struct RoundRobin {
    requests: Arc<[HttpRequest]>,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    next: usize,
}

impl Requests for RoundRobin {
    fn next_request(&mut self) -> Outgoing {
        let r = &self.requests[self.next];
        self.next = (self.next + 1) % self.requests.len();
        let mut headers = self.headers.to_vec();
        if r.body.is_some() {
            headers.push((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        Outgoing {
            method: r.method.clone(),
            path: r.path.clone(),
            headers,
            body: r.body.clone().unwrap_or_default(),
            inbound: 0,
        }
    }
}

/// How fast and how long a run goes, checked once.
struct Pace {
    tickets: AtomicU64,
    rate: f64,
    duration: Duration,
    max_requests: Option<u64>,
    request_timeout: Duration,
}

impl Pace {
    fn checked(
        rate: f64,
        duration: Duration,
        concurrency: usize,
        max_requests: Option<u64>,
        request_timeout: Duration,
    ) -> Result<Pace, LoadError> {
        if concurrency == 0 || concurrency > 10_000 {
            return Err(LoadError::Settings(format!(
                "concurrency must be 1..=10000, got {concurrency}"
            )));
        }
        if !rate.is_finite() || rate < 0.0 {
            return Err(LoadError::Settings(format!(
                "rate must be >= 0, got {rate}"
            )));
        }
        Ok(Pace {
            tickets: AtomicU64::new(0),
            rate,
            duration,
            max_requests,
            request_timeout,
        })
    }
}

/// Runs one worker per source until the pace says stop, and sums them up.
async fn drive<R: Requests>(target: Target, pace: Pace, sources: Vec<R>) -> LoadReport {
    let target = Arc::new(target);
    let pace = Arc::new(pace);
    let start = Instant::now();
    let deadline = start + pace.duration;
    let workers: Vec<_> = sources
        .into_iter()
        .map(|source| {
            tokio::spawn(worker(
                pace.clone(),
                target.clone(),
                source,
                start,
                deadline,
            ))
        })
        .collect();
    let mut total = WorkerTally::default();
    for w in workers {
        match w.await {
            Ok(t) => total.merge(t),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = total.latencies.summary();
    LoadReport {
        sent: total.accepted + total.rejected + total.errors,
        accepted: total.accepted,
        rejected: total.rejected,
        rejected_by_status: total.by_status,
        errors: total.errors,
        first_error: total.first_error,
        elapsed_secs: elapsed,
        accepted_per_sec: if elapsed > 0.0 {
            total.accepted as f64 / elapsed
        } else {
            0.0
        },
        p50_ms: lat.p50_ms,
        p90_ms: lat.p90_ms,
        p99_ms: lat.p99_ms,
        max_ms: lat.max_ms,
        inbound_messages: total.inbound,
    }
}

#[derive(Default)]
struct WorkerTally {
    accepted: u64,
    rejected: u64,
    by_status: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    inbound: u64,
    latencies: Latencies,
}

impl WorkerTally {
    fn merge(&mut self, o: WorkerTally) {
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        for (s, n) in o.by_status {
            *self.by_status.entry(s).or_default() += n;
        }
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.inbound += o.inbound;
        self.latencies.merge(o.latencies);
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(target: &Target) -> Result<Sender, String> {
    let mut last = String::from("no address");
    for addr in &target.addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake with {addr}: {e}"))?;
                // The connection task ends when the sender is dropped or the
                // peer closes; its error resurfaces on the next send.
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return Ok(sender);
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

async fn worker<R: Requests>(
    pace: Arc<Pace>,
    target: Arc<Target>,
    mut source: R,
    start: Instant,
    deadline: Instant,
) -> WorkerTally {
    let mut tally = WorkerTally {
        latencies: Latencies::with_capacity(4096),
        ..WorkerTally::default()
    };
    let mut sender: Option<Sender> = None;
    loop {
        let ticket = pace.tickets.fetch_add(1, Ordering::Relaxed);
        if pace.max_requests.is_some_and(|max| ticket >= max) {
            break;
        }
        if pace.rate > 0.0 {
            let due = start + Duration::from_secs_f64(ticket as f64 / pace.rate);
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        } else if Instant::now() >= deadline {
            break;
        }

        let out = source.next_request();

        // (Re)connect lazily: the server may close idle or errored connections.
        let ready = match sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            sender = None;
            match tokio::time::timeout(pace.request_timeout, connect(&target)).await {
                Ok(Ok(s)) => sender = Some(s),
                Ok(Err(e)) => {
                    tally.error(e);
                    // A refused connection fails in microseconds; pause so a
                    // down target does not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => {
                    tally.error("connect timed out");
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };

        let mut req = Request::builder()
            .method(out.method)
            .uri(out.path.as_str())
            .header(header::HOST, target.authority.as_str());
        for (name, value) in out.headers {
            req = req.header(name, value);
        }
        let req = match req.body(Full::new(out.body)) {
            Ok(r) => r,
            Err(e) => {
                tally.error(format!("building request: {e}"));
                continue;
            }
        };
        let t0 = Instant::now();
        let outcome = tokio::time::timeout(pace.request_timeout, async {
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Drain the answer so the connection can carry the next request.
            resp.into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<StatusCode, String>(status)
        })
        .await;
        let took = t0.elapsed();
        match outcome {
            Ok(Ok(status)) => {
                tally.latencies.record(took);
                if status.is_success() {
                    tally.accepted += 1;
                    tally.inbound += u64::from(out.inbound);
                } else {
                    tally.rejected += 1;
                    *tally.by_status.entry(status.as_u16()).or_default() += 1;
                }
            }
            Ok(Err(e)) => {
                tally.error(e);
                sender = None;
            }
            Err(_) => {
                tally.error(format!("no answer within {:?}", pace.request_timeout));
                sender = None;
            }
        }
    }
    tally
}

/// Largest body the no-work server reads; Meta sends at most 3 MB.
const NOWORK_MAX_BODY: usize = 16 * 1024 * 1024;

/// The same-run baseline: reads each body and answers 200, with no
/// verification and no storage, on the same hyper stack as wapipe's
/// receiver. Runs until the handle is aborted.
pub fn spawn_nowork(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(serve(
        listener,
        |req: Request<hyper::body::Incoming>| async move { nowork_answer(req).await },
    ))
}

async fn nowork_answer(req: Request<hyper::body::Incoming>) -> Response<Body> {
    match Limited::new(req.into_body(), NOWORK_MAX_BODY)
        .collect()
        .await
    {
        Ok(_) => bytes_response(StatusCode::OK, "text/plain", "ok"),
        Err(_) => bytes_response(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "too large"),
    }
}

/// The REST API benchmark's baseline: the API's own stack (axum on hyper)
/// answering every method and path with a small JSON document after reading
/// the body, with no authentication and no database. Runs until aborted.
pub fn spawn_nowork_axum(listener: TcpListener) -> JoinHandle<()> {
    let app = axum::Router::new()
        .fallback(|body: Bytes| async move {
            axum::Json(serde_json::json!({ "data": [], "nextCursor": null, "read": body.len() }))
        })
        .layer(axum::extract::DefaultBodyLimit::max(NOWORK_MAX_BODY));
    tokio::spawn(async move {
        // The baseline only stops when the benchmark kills it; an accept
        // error ends it, and the benchmark then sees a refused connection.
        let _ = axum::serve(listener, app).await;
    })
}

/// Hand-written so the app secret never reaches a log.
impl std::fmt::Debug for LoadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadConfig")
            .field("webhook", &self.webhook)
            .field("app_secret", &"<redacted>")
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("concurrency", &self.concurrency)
            .field("max_requests", &self.max_requests)
            .field("business", &self.business)
            .field("customers", &self.customers)
            .field("messages_per_body", &self.messages_per_body)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_remote_targets() {
        for url in ["http://10.0.0.1/webhook", "http://example.com/x"] {
            assert!(matches!(
                resolve_target(url).await,
                Err(LoadError::NotLoopback { .. })
            ));
        }
        assert!(matches!(
            resolve_target("https://127.0.0.1/x").await,
            Err(LoadError::BadUrl { .. })
        ));
        let t = resolve_target("http://127.0.0.1:9/hook?x=1")
            .await
            .expect("ok");
        assert_eq!(t.path, "/hook?x=1");
        assert_eq!(t.authority, "127.0.0.1:9");
    }

    #[test]
    fn parses_request_lists() {
        let list = HttpRequest::parse_list(
            "# the API's mix\n\nGET /api/x?limit=50\nPOST /api/y {\"type\": \"text\", \"text\": \"hi there\"}\n",
        )
        .expect("a valid list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].method, Method::GET);
        assert_eq!(list[0].path, "/api/x?limit=50");
        assert_eq!(list[0].body, None);
        assert_eq!(list[1].method, Method::POST);
        assert_eq!(
            list[1].body.as_deref(),
            Some(&b"{\"type\": \"text\", \"text\": \"hi there\"}"[..])
        );
        for bad in ["", "# only a comment", "GET", "GET api/x", "G@T /x"] {
            assert!(
                matches!(HttpRequest::parse_list(bad), Err(LoadError::Settings(_))),
                "{bad:?} must be refused"
            );
        }
    }

    /// The HTTP generator sends every listed request in turn, with the
    /// given headers, and counts what the server refused.
    #[tokio::test]
    async fn http_load_sends_the_list_in_turn_with_headers() {
        use std::sync::Mutex;
        /// Method, path, Authorization header and body length of a request.
        type Seen = (String, String, Option<String>, usize);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = seen.clone();
        let server = tokio::spawn(serve(
            listener,
            move |req: Request<hyper::body::Incoming>| {
                let log = log.clone();
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_owned();
                    let auth = req
                        .headers()
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let status = if path == "/missing" {
                        StatusCode::NOT_FOUND
                    } else {
                        StatusCode::OK
                    };
                    if let Ok(mut l) = log.lock() {
                        l.push((method, path, auth, body));
                    }
                    bytes_response(status, "application/json", "{}")
                }
            },
        ));
        let report = run_http_load(HttpLoadConfig {
            base: format!("http://{addr}"),
            requests: HttpRequest::parse_list("GET /a\nPOST /b {\"k\":1}\nGET /missing")
                .expect("list"),
            headers: vec![("Authorization".into(), "Bearer k1".into())],
            rate: 0.0,
            duration: Duration::from_secs(10),
            concurrency: 1,
            max_requests: Some(6),
            request_timeout: Duration::from_secs(5),
        })
        .await
        .expect("run");
        server.abort();
        assert_eq!(report.sent, 6);
        assert_eq!(report.accepted, 4);
        assert_eq!(report.rejected_by_status.get(&404), Some(&2));
        let seen = seen.lock().expect("log").clone();
        let paths: Vec<&str> = seen.iter().map(|(_, p, _, _)| p.as_str()).collect();
        assert_eq!(paths, ["/a", "/b", "/missing", "/a", "/b", "/missing"]);
        assert!(
            seen.iter()
                .all(|(_, _, auth, _)| auth.as_deref() == Some("Bearer k1"))
        );
        assert_eq!(seen[1].0, "POST");
        assert_eq!(seen[1].3, 7, "the body is sent as listed");
    }
}
