//! Metric names (DESIGN §7): one place, so dashboards, alert rules and the
//! code agree. Units are in the names.

pub const INGEST_REQUESTS: &str = "wapipe_ingest_requests_total";
pub const INGEST_ACK_SECONDS: &str = "wapipe_ingest_ack_seconds";
pub const INGEST_BATCH_SIZE: &str = "wapipe_ingest_batch_size";
pub const INGEST_BODY_BYTES: &str = "wapipe_ingest_body_bytes";
pub const RELAY_BACKLOG: &str = "wapipe_relay_backlog_events";
pub const RELAY_OLDEST_AGE_SECONDS: &str = "wapipe_relay_oldest_unprocessed_age_seconds";
pub const RELAY_REPUBLISHED: &str = "wapipe_relay_republished_total";
pub const PUBLISH_FAILURES: &str = "wapipe_ingest_publish_failures_total";
/// Counter: receiver connections closed for sending no whole request in
/// time, or for idling past the keep-alive time.
pub const INGEST_CONNECTIONS_TIMED_OUT: &str = "wapipe_ingest_connections_timed_out_total";
/// Gauge: WebSocket clients connected to an API process.
pub const WS_CLIENTS: &str = "wapipe_ws_clients";
/// Counter: WebSocket clients closed with 1013 for falling too far behind.
pub const WS_TOO_SLOW: &str = "wapipe_ws_closed_slow_total";

/// Ingest outcomes, the `outcome` label of [`INGEST_REQUESTS`].
pub mod outcome {
    pub const ACCEPTED: &str = "accepted";
    pub const DUPLICATE: &str = "duplicate";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const TOO_LARGE: &str = "too_large";
    pub const UNAVAILABLE: &str = "unavailable";
    /// 503: the bodies in flight are at `WAPIPE_BODY_BUDGET_BYTES`.
    pub const BUSY: &str = "busy";
    pub const REJECTED: &str = "rejected";
}
