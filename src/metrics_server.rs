//! The process's ops listener (`WAPIPE_METRICS_LISTEN`): Prometheus at
//! `/metrics`, plus `/healthz` and `/readyz`, so every process, including
//! worker-only ones, can be scraped and probed. Kept apart from the webhook
//! port so scrapes never compete with Meta's deliveries. Owned by the
//! binary: one per process, whatever roles it runs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wapipe_shared::broker::Broker;

/// `wapipe_build_info{version,mode,roles} 1`.
pub const METRIC_BUILD_INFO: &str = "wapipe_build_info";

/// Installs the global recorder once per process and returns its handle;
/// later calls (tests starting several apps) get the same handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed, which we never do.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            // Histograms drain into the snapshot only on upkeep.
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Health {
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
}

impl Health {
    /// 200 only when the database and the broker both answer.
    async fn ready(&self) -> (StatusCode, String) {
        let db = self.db.execute_unprepared("SELECT 1").await;
        let broker = self.broker.ping().await;
        match (db, broker) {
            (Ok(_), Ok(())) => (StatusCode::OK, "ready".into()),
            (db, broker) => {
                let mut why = Vec::new();
                if let Err(e) = db {
                    why.push(format!("database: {e}"));
                }
                if let Err(e) = broker {
                    why.push(format!("broker: {e}"));
                }
                (StatusCode::SERVICE_UNAVAILABLE, why.join("; "))
            }
        }
    }
}

/// The pause after a failed accept: 10 ms doubling up to 1 s. An error
/// such as "too many open files" repeats until a connection closes, so
/// retrying at once would spin a core.
fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis((10u64 << failures.min(7)).min(1000))
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
) {
    let handle = Arc::new(handle);
    let health = Arc::new(health);
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                failures = 0;
                stream
            }
            Err(e) => {
                let pause = accept_backoff(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, ?pause, "metrics accept failed");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        let (handle, health) = (handle.clone(), health.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (handle, health) = (handle.clone(), health.clone());
                async move {
                    let (status, content_type, body) = match req.uri().path() {
                        "/metrics" => (
                            StatusCode::OK,
                            "text/plain; version=0.0.4",
                            Bytes::from(handle.render()),
                        ),
                        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok")),
                        "/readyz" => {
                            let (status, why) = health.ready().await;
                            (status, "text/plain", Bytes::from(why))
                        }
                        _ => (
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            Bytes::from_static(b"not found"),
                        ),
                    };
                    let mut r = Response::new(Full::new(body));
                    *r.status_mut() = status;
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(content_type),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_grows_and_caps() {
        assert_eq!(accept_backoff(0), Duration::from_millis(10));
        assert_eq!(accept_backoff(1), Duration::from_millis(20));
        assert_eq!(accept_backoff(50), Duration::from_millis(1000));
    }
}
