//! The webhook load generator (`wapipe-sim load`) and the no-work baseline server (`wapipe-sim nowork`).
//!
//! Each worker owns one keep-alive HTTP/1.1 connection and sends one request
//! at a time on it, so `concurrency` is both the number of connections and
//! the most requests in flight. A shared ticket counter spreads the target
//! rate over the workers: ticket `i` is due at `start + i / rate`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode, Uri, header};
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

/// Runs one load test and reports. Bounded by `duration` (no request starts
/// after it) and `max_requests`; requests in flight at the end finish or
/// time out after `request_timeout`.
pub async fn run_load(cfg: LoadConfig) -> Result<LoadReport, LoadError> {
    if cfg.concurrency == 0 || cfg.concurrency > 10_000 {
        return Err(LoadError::Settings(format!(
            "concurrency must be 1..=10000, got {}",
            cfg.concurrency
        )));
    }
    if !cfg.rate.is_finite() || cfg.rate < 0.0 {
        return Err(LoadError::Settings(format!(
            "rate must be >= 0, got {}",
            cfg.rate
        )));
    }
    let target = Arc::new(resolve_target(&cfg.webhook).await?);
    let shared = Arc::new(Shared {
        tickets: AtomicU64::new(0),
        signer: Signer::new(cfg.app_secret.as_bytes()),
        rate: cfg.rate,
        max_requests: cfg.max_requests,
        request_timeout: cfg.request_timeout,
    });
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut workers = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let gen_ = PayloadGen::new(cfg.business.clone(), cfg.customers)
            .with_messages_per_body(cfg.messages_per_body);
        workers.push(tokio::spawn(worker(
            shared.clone(),
            target.clone(),
            gen_,
            start,
            deadline,
        )));
    }
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
    Ok(LoadReport {
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
    })
}

struct Shared {
    tickets: AtomicU64,
    signer: Signer,
    rate: f64,
    max_requests: Option<u64>,
    request_timeout: Duration,
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

async fn worker(
    shared: Arc<Shared>,
    target: Arc<Target>,
    mut payloads: PayloadGen,
    start: Instant,
    deadline: Instant,
) -> WorkerTally {
    let mut tally = WorkerTally {
        latencies: Latencies::with_capacity(4096),
        ..WorkerTally::default()
    };
    let mut sender: Option<Sender> = None;
    loop {
        let ticket = shared.tickets.fetch_add(1, Ordering::Relaxed);
        if shared.max_requests.is_some_and(|max| ticket >= max) {
            break;
        }
        if shared.rate > 0.0 {
            let due = start + Duration::from_secs_f64(ticket as f64 / shared.rate);
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        } else if Instant::now() >= deadline {
            break;
        }

        let payload = payloads.next_payload();
        let signature = shared.signer.sign(&payload.body);

        // (Re)connect lazily: the server may close idle or errored connections.
        let ready = match sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            sender = None;
            match tokio::time::timeout(shared.request_timeout, connect(&target)).await {
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

        let req = Request::post(target.path.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(payload.body)));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tally.error(format!("building request: {e}"));
                continue;
            }
        };
        let t0 = Instant::now();
        let outcome = tokio::time::timeout(shared.request_timeout, async {
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
                    tally.inbound += u64::from(payload.inbound_messages);
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
                tally.error(format!("no answer within {:?}", shared.request_timeout));
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
}
