//! `wapipe-sim fanout`: many WebSocket clients of wapipe's events stream at
//! once, for the fan-out benchmark (`make bench-fanout`). Each client
//! connects with its own API key and `?after=SEQ`, records every event's
//! `seq` and how long after its `occurredAt` it arrived; at the end each
//! key's events are listed again through `GET /api/whatsapp/events`, the
//! API's own account of what that key may see, and compared with what its
//! client got: missing, doubled and out-of-order events are counted, not
//! assumed away.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use crate::stats::{Latencies, LatencySummary};

/// What to connect and how long to listen.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// The API's base, `http://127.0.0.1:PORT` (loopback only).
    pub base: String,
    /// One client per key.
    pub keys: Vec<String>,
    /// Every client asks for the events after this sequence number.
    pub after: i64,
    /// How long to listen once every client is connected.
    pub listen: Duration,
    /// Then stop as soon as no event came for this long (the pipeline's
    /// tail drains), but never later than `listen + max_drain`.
    pub quiet: Duration,
    pub max_drain: Duration,
    /// Written (empty) once every client is connected, so a script starts
    /// its load only then.
    pub ready_file: Option<PathBuf>,
    /// Clients connecting at once.
    pub connect_concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("invalid API base {0:?}: expected http://127.0.0.1:PORT (loopback only)")]
    BadBase(String),
    #[error("no keys given")]
    NoKeys,
    #[error("cannot write the ready file {path}: {source}")]
    Ready {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("listing the events of key #{index}: {reason}")]
    Verify { index: usize, reason: String },
}

/// The outcome. Field names are those of `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutReport {
    pub clients: usize,
    /// Clients whose WebSocket opened.
    pub connected: usize,
    /// Clients the server closed (or that broke) before the end, e.g. with
    /// 1013 for falling behind; by close code or "error".
    pub closed_early: Vec<String>,
    /// Events received over all clients.
    pub delivered: u64,
    /// `delivered` over the span from the first to the last event received.
    pub delivered_per_s: f64,
    /// From an event's `occurredAt` (written in the transaction of its
    /// change) to its arrival at a client, over every delivery.
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Events the API lists for the clients' keys after `after`, summed.
    pub expected: u64,
    /// Listed for a key but never received by its client.
    pub missing: u64,
    /// Received twice or more by one client.
    pub duplicates: u64,
    /// Received after an event with a higher `seq`.
    pub out_of_order: u64,
}

impl FanoutReport {
    /// Every client stayed, and got exactly what its key may see, in order.
    pub fn complete(&self) -> bool {
        self.connected == self.clients
            && self.closed_early.is_empty()
            && self.missing == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.delivered == self.expected
    }
}

impl std::fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "clients {} (connected {}, closed early {})",
            self.clients,
            self.connected,
            self.closed_early.len()
        )?;
        writeln!(
            f,
            "delivered {} of {} expected ({:.0}/s); missing {}, duplicates {}, out of order {}",
            self.delivered,
            self.expected,
            self.delivered_per_s,
            self.missing,
            self.duplicates,
            self.out_of_order
        )?;
        write!(
            f,
            "occurredAt -> client: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency_p50_ms, self.latency_p90_ms, self.latency_p99_ms, self.latency_max_ms
        )
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    connected: bool,
    seqs: Vec<i64>,
    out_of_order: u64,
    latencies: Latencies,
    /// Why the client ended before it was told to.
    closed: Option<String>,
}

/// Milliseconds since the run started of the first and last event any
/// client received (0: none yet).
struct Clock {
    start: Instant,
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

impl Clock {
    fn note(&self) {
        let ms = self.start.elapsed().as_millis() as u64 + 1;
        let _ = self
            .first_ms
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

fn loopback_base(base: &str) -> Result<String, FanoutError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| FanoutError::BadBase(base.to_owned()))?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if !matches!(host, "127.0.0.1" | "localhost" | "[") {
        return Err(FanoutError::BadBase(base.to_owned()));
    }
    Ok(rest.trim_end_matches('/').to_owned())
}

/// Milliseconds from an RFC 3339 time to now (0 when it is in the future,
/// as clock steps can make it).
fn since(occurred: &str) -> Option<Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(occurred).ok()?;
    let d = chrono::Utc::now().signed_duration_since(at);
    Some(d.to_std().unwrap_or(Duration::ZERO))
}

async fn client(
    url: String,
    key: String,
    stop: CancellationToken,
    clock: Arc<Clock>,
    permits: Arc<Semaphore>,
    attempted: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen::default();
    let permit = permits.acquire_owned().await;
    // Counted however the attempt ends, so the run knows when every
    // client has had its try.
    struct Attempt(Arc<AtomicU64>);
    impl Drop for Attempt {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let attempt = Attempt(attempted);
    let mut req = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            seen.closed = Some(format!("error: {e}"));
            return seen;
        }
    };
    match HeaderValue::from_str(&format!("Bearer {key}")) {
        Ok(v) => {
            req.headers_mut().insert("authorization", v);
        }
        Err(_) => {
            seen.closed = Some("error: the key is not a header value".to_owned());
            return seen;
        }
    }
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            seen.closed = Some(format!("error: {e}"));
            return seen;
        }
    };
    drop(permit);
    seen.connected = true;
    drop(attempt);
    let mut last = i64::MIN;
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            () = stop.cancelled() => {
                let _ = ws.close(None).await;
                return seen;
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                clock.note();
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                let Some(seq) = v.get("seq").and_then(Value::as_i64) else {
                    continue;
                };
                if let Some(d) = v.get("occurredAt").and_then(Value::as_str).and_then(since) {
                    seen.latencies.record(d);
                }
                if seq <= last {
                    seen.out_of_order += 1;
                }
                last = last.max(seq);
                seen.seqs.push(seq);
            }
            Some(Ok(Message::Close(frame))) => {
                seen.closed = Some(
                    frame.map_or_else(|| "close".to_owned(), |f| u16::from(f.code).to_string()),
                );
                return seen;
            }
            // Pings are answered by the library as it reads.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                seen.closed = Some(format!("error: {e}"));
                return seen;
            }
            None => {
                seen.closed = Some("ended".to_owned());
                return seen;
            }
        }
    }
}

/// Every `seq` `key` may see after `after`, through `GET /events`.
async fn listed(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    after: i64,
) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let url = format!("http://{base}/api/whatsapp/events?after={after}&limit=200");
        let resp = http
            .get(&url)
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        let page: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let data = page
            .get("data")
            .and_then(Value::as_array)
            .ok_or("no data in the page")?;
        out.extend(
            data.iter()
                .filter_map(|e| e.get("seq").and_then(Value::as_i64)),
        );
        let more = page
            .get("hasMore")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match page.get("nextAfter").and_then(Value::as_i64) {
            Some(next) if more && next > after => after = next,
            _ => return Ok(out),
        }
    }
}

/// Connects every client, listens, then checks each against the API.
pub async fn run_fanout(cfg: FanoutConfig) -> Result<FanoutReport, FanoutError> {
    let base = loopback_base(&cfg.base)?;
    if cfg.keys.is_empty() {
        return Err(FanoutError::NoKeys);
    }
    let clock = Arc::new(Clock {
        start: Instant::now(),
        first_ms: AtomicU64::new(0),
        last_ms: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let attempted = Arc::new(AtomicU64::new(0));
    let url = format!("ws://{base}/api/whatsapp/ws?after={}", cfg.after);
    let tasks: Vec<_> = cfg
        .keys
        .iter()
        .map(|k| {
            tokio::spawn(client(
                url.clone(),
                k.clone(),
                stop.clone(),
                clock.clone(),
                permits.clone(),
                attempted.clone(),
            ))
        })
        .collect();
    while (attempted.load(Ordering::Relaxed) as usize) < tasks.len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(path) = &cfg.ready_file {
        std::fs::write(path, b"").map_err(|source| FanoutError::Ready {
            path: path.clone(),
            source,
        })?;
    }
    tokio::time::sleep(cfg.listen).await;
    let deadline = Instant::now() + cfg.max_drain;
    loop {
        let last = Duration::from_millis(clock.last_ms.load(Ordering::Relaxed));
        let idle = clock.start.elapsed().saturating_sub(last);
        if idle >= cfg.quiet || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let mut seen = Vec::with_capacity(tasks.len());
    for t in tasks {
        seen.push(t.await.unwrap_or_default());
    }

    let mut report = FanoutReport {
        clients: cfg.keys.len(),
        connected: seen.iter().filter(|s| s.connected).count(),
        ..FanoutReport::default()
    };
    let http = crate::http_client(Duration::from_secs(30))
        .map_err(|e| FanoutError::Client(e.to_string()))?;
    let mut latencies = Latencies::new();
    let checks = futures::stream::iter(cfg.keys.iter().enumerate())
        .map(|(i, key)| {
            let http = &http;
            let base = &base;
            async move { (i, listed(http, base, key, cfg.after).await) }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for (i, listed) in checks {
        let expected = listed.map_err(|reason| FanoutError::Verify { index: i, reason })?;
        let s = &mut seen[i];
        let got: HashSet<i64> = s.seqs.iter().copied().collect();
        report.expected += expected.len() as u64;
        report.missing += expected.iter().filter(|q| !got.contains(q)).count() as u64;
        report.duplicates += (s.seqs.len() - got.len()) as u64;
        report.out_of_order += s.out_of_order;
        report.delivered += s.seqs.len() as u64;
        if let Some(why) = s.closed.take() {
            report.closed_early.push(why);
        }
        latencies.merge(std::mem::take(&mut s.latencies));
    }
    let first = clock.first_ms.load(Ordering::Relaxed);
    let last = clock.last_ms.load(Ordering::Relaxed);
    if last > first {
        report.delivered_per_s = report.delivered as f64 / ((last - first) as f64 / 1000.0);
    }
    let LatencySummary {
        p50_ms,
        p90_ms,
        p99_ms,
        max_ms,
    } = latencies.summary();
    report.latency_p50_ms = p50_ms;
    report.latency_p90_ms = p90_ms;
    report.latency_p99_ms = p99_ms;
    report.latency_max_ms = max_ms;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_bases() {
        assert_eq!(
            loopback_base("http://127.0.0.1:8080/").ok().as_deref(),
            Some("127.0.0.1:8080")
        );
        assert!(loopback_base("http://example.com:8080").is_err());
        assert!(loopback_base("ws://127.0.0.1:8080").is_err());
    }

    #[test]
    fn a_complete_report_needs_every_event_once() {
        let ok = FanoutReport {
            clients: 2,
            connected: 2,
            delivered: 10,
            expected: 10,
            ..FanoutReport::default()
        };
        assert!(ok.complete());
        assert!(
            !FanoutReport {
                missing: 1,
                delivered: 9,
                ..ok.clone()
            }
            .complete()
        );
        assert!(
            !FanoutReport {
                closed_early: vec!["1013".into()],
                ..ok.clone()
            }
            .complete()
        );
    }
}
