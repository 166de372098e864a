//! Every setting of wapipe: an env var with a documented default, shown in
//! `wapipe --help` and in the README's configuration table. The binary
//! flattens [`Settings`] into its CLI so flags and env vars are one thing.
//!
//! Settings that may carry a credential (URLs, keys) never show their
//! environment value in `--help`, and [`redact_url`] masks a URL's password
//! wherever one is printed or logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::broker::BrokerSettings;
use crate::retry::RetryPolicy;

/// Where the embedded mode keeps its database when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/wapipe.sqlite?mode=rwc";

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Database URL: `sqlite://…` (embedded) or `postgres://…` (production).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true, help_heading = "Database")]
    pub database_url: String,

    /// RabbitMQ URL (`amqp://user:pass@host:5672/vhost`). Unset: the embedded in-process queue.
    #[arg(
        long,
        env = "AMQP_URL",
        global = true,
        hide_env_values = true,
        help_heading = "Broker"
    )]
    pub amqp_url: Option<String>,

    /// Address of the webhook receiver (and /healthz, /readyz).
    #[arg(
        long,
        env = "WAPIPE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true,
        help_heading = "Service settings"
    )]
    pub listen: SocketAddr,

    /// Address of the ops listener (`/metrics`, `/healthz`, `/readyz`).
    /// Default: 127.0.0.1:9464 for `serve` and `ingest`, 127.0.0.1:9465
    /// for `workers`, so both start side by side on one host.
    #[arg(
        long,
        env = "WAPIPE_METRICS_LISTEN",
        global = true,
        help_heading = "Service settings"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Base64 of the 32-byte key that encrypts secrets at rest (AES-256-GCM).
    /// Embedded mode generates one into WAPIPE_SECRET_KEY_FILE when unset;
    /// with Postgres it is required.
    #[arg(
        long,
        env = "WAPIPE_SECRET_KEY",
        hide_env_values = true,
        global = true,
        help_heading = "Service settings"
    )]
    pub secret_key: Option<String>,

    /// Where embedded mode keeps its generated secret key (mode 0600).
    #[arg(
        long,
        env = "WAPIPE_SECRET_KEY_FILE",
        default_value = "./data/secret.key",
        global = true,
        help_heading = "Service settings"
    )]
    pub secret_key_file: PathBuf,

    /// Base URL of Meta's Graph API (point it at `wapipe-sim graph` for tests).
    #[arg(
        long,
        env = "GRAPH_API_BASE",
        default_value = "https://graph.facebook.com",
        global = true,
        hide_env_values = true,
        help_heading = "Service settings"
    )]
    pub graph_api_base: String,

    /// Graph API version used in send URLs.
    #[arg(
        long,
        env = "GRAPH_API_VERSION",
        default_value = "v23.0",
        global = true,
        help_heading = "Service settings"
    )]
    pub graph_api_version: String,

    /// Prefix of every queue and exchange, so deployments and tests can share a broker.
    #[arg(
        long,
        env = "WAPIPE_QUEUE_PREFIX",
        default_value = "wapipe",
        global = true,
        help_heading = "Broker"
    )]
    pub queue_prefix: String,

    /// Ordered lanes per worker queue (jobs of one customer share a lane).
    #[arg(
        long,
        env = "WAPIPE_LANES",
        default_value_t = 8,
        global = true,
        help_heading = "Broker"
    )]
    pub lanes: u16,

    /// Unacked deliveries per lane consumer (RabbitMQ basic_qos).
    #[arg(
        long,
        env = "WAPIPE_PREFETCH",
        default_value_t = 32,
        global = true,
        help_heading = "Broker"
    )]
    pub prefetch: u16,

    /// First retry delay of a failed job, in milliseconds.
    #[arg(
        long,
        env = "WAPIPE_RETRY_MIN_DELAY_MS",
        default_value_t = 1000,
        global = true,
        help_heading = "Broker"
    )]
    pub retry_min_delay_ms: u64,

    /// Longest retry delay, in milliseconds.
    #[arg(
        long,
        env = "WAPIPE_RETRY_MAX_DELAY_MS",
        default_value_t = 300_000,
        global = true,
        help_heading = "Broker"
    )]
    pub retry_max_delay_ms: u64,

    /// Attempts before a job goes to its dead-letter queue.
    #[arg(
        long,
        env = "WAPIPE_RETRY_MAX_ATTEMPTS",
        default_value_t = 8,
        global = true,
        help_heading = "Broker"
    )]
    pub retry_max_attempts: u32,

    /// Seconds an event may stay `received` before the relay re-publishes it.
    #[arg(
        long,
        env = "WAPIPE_RELAY_GRACE_SECS",
        default_value_t = 30,
        global = true,
        help_heading = "Service settings"
    )]
    pub relay_grace_secs: u64,

    /// Largest webhook body accepted, in bytes (Meta sends up to 3 MB).
    #[arg(long, env = "WAPIPE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, global = true, help_heading = "Service settings")]
    pub max_body_bytes: usize,

    /// Bytes of webhook bodies held at once over all connections; past it, 503 with Retry-After.
    #[arg(long, env = "WAPIPE_BODY_BUDGET_BYTES", default_value_t = 64 * 1024 * 1024, global = true, help_heading = "Service settings")]
    pub body_budget_bytes: usize,

    /// Open connections the receiver serves at most; past it, new ones wait to be accepted.
    #[arg(
        long,
        env = "WAPIPE_MAX_CONNECTIONS",
        default_value_t = 4096,
        global = true,
        help_heading = "Service settings"
    )]
    pub max_connections: usize,

    /// A new connection that has sent no whole request after this many seconds is closed.
    #[arg(
        long,
        env = "WAPIPE_FIRST_REQUEST_TIMEOUT_S",
        default_value_t = 10,
        global = true,
        help_heading = "Service settings"
    )]
    pub first_request_timeout_s: u64,

    /// A kept-alive connection idle for this many seconds is closed.
    #[arg(
        long,
        env = "WAPIPE_IDLE_TIMEOUT_S",
        default_value_t = 75,
        global = true,
        help_heading = "Service settings"
    )]
    pub idle_timeout_s: u64,

    /// Group commit: longest wait for more requests before a batch commits, in milliseconds.
    #[arg(
        long,
        env = "WAPIPE_BATCH_WINDOW_MS",
        default_value_t = 2,
        global = true,
        help_heading = "Service settings"
    )]
    pub batch_window_ms: u64,

    /// Group commit: most webhook bodies in one transaction.
    #[arg(
        long,
        env = "WAPIPE_BATCH_MAX",
        default_value_t = 256,
        global = true,
        help_heading = "Service settings"
    )]
    pub batch_max: usize,

    /// Database pool size.
    #[arg(
        long,
        env = "WAPIPE_DB_POOL",
        default_value_t = 16,
        global = true,
        help_heading = "Database"
    )]
    pub db_pool: u32,

    /// Log as JSON lines instead of text (filter with RUST_LOG; by default `info` for
    /// serve, ingest, workers and migrate, `warn` for the other commands).
    #[arg(
        long,
        env = "WAPIPE_LOG_JSON",
        default_value_t = false,
        global = true,
        help_heading = "Service settings"
    )]
    pub log_json: bool,

    /// The chatbot does not answer a message older than this many seconds when
    /// it is processed (after an outage, silence beats a late answer).
    #[arg(
        long,
        env = "WAPIPE_SCENARIO_MAX_AGE_S",
        default_value_t = 300,
        global = true
    )]
    pub scenario_max_age_s: u64,

    /// WhatsApp template of follow-up reminders to agents whose 24-hour
    /// window is closed; body parameters: the follow-up's title, then the
    /// customer's name or number.
    #[arg(
        long,
        env = "WAPIPE_REMINDER_TEMPLATE",
        default_value = "followup_reminder",
        global = true
    )]
    pub reminder_template: String,

    /// Language code of WAPIPE_REMINDER_TEMPLATE (Meta's, e.g. `en_US`, `fr`).
    #[arg(
        long,
        env = "WAPIPE_REMINDER_TEMPLATE_LANGUAGE",
        default_value = "en",
        global = true
    )]
    pub reminder_template_language: String,

    /// Seconds past `scheduled_at` after which a pending follow-up turns `overdue`.
    #[arg(
        long,
        env = "WAPIPE_FOLLOWUP_OVERDUE_AFTER_S",
        default_value_t = 3600,
        global = true
    )]
    pub followup_overdue_after_s: u64,

    /// Seconds a follow-up claimed by a scheduler but not reminded stays
    /// claimed; then another pass claims it again (its job was lost).
    #[arg(
        long,
        env = "WAPIPE_FOLLOWUP_LEASE_S",
        default_value_t = 120,
        global = true
    )]
    pub followup_lease_s: u64,

    /// Address of the agents' REST API. Unset, or equal to WAPIPE_LISTEN:
    /// one listener serves both (`/api/*` goes to the API, the rest to the
    /// webhook receiver).
    #[arg(
        long,
        env = "WAPIPE_API_LISTEN",
        global = true,
        help_heading = "Service settings"
    )]
    pub api_listen: Option<SocketAddr>,

    /// Requests per second each API key may make (then 429 with Retry-After).
    #[arg(
        long,
        env = "WAPIPE_API_RATE_PER_S",
        default_value_t = 20,
        global = true,
        help_heading = "Service settings"
    )]
    pub api_rate_per_s: u32,

    /// Burst of requests an API key may make above its rate.
    #[arg(
        long,
        env = "WAPIPE_API_RATE_BURST",
        default_value_t = 40,
        global = true,
        help_heading = "Service settings"
    )]
    pub api_rate_burst: u32,

    /// Seconds between two syncs of every number's WhatsApp templates from
    /// Meta (by the API role); 0 turns it off.
    #[arg(
        long,
        env = "WAPIPE_TEMPLATE_SYNC_S",
        default_value_t = 900,
        global = true,
        help_heading = "Service settings"
    )]
    pub template_sync_s: u64,

    /// Days the events log (`GET /api/whatsapp/events`, WebSocket replay)
    /// keeps an event; older ones are pruned by the API role.
    #[arg(
        long,
        env = "WAPIPE_EVENTS_RETENTION_DAYS",
        default_value_t = 7,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true,
        help_heading = "Service settings"
    )]
    pub events_retention_days: u32,

    /// Events a WebSocket client may fall behind before it is closed with
    /// code 1013 (it can resume with `after`).
    #[arg(
        long,
        env = "WAPIPE_WS_MAX_BUFFER",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true,
        help_heading = "Service settings"
    )]
    pub ws_max_buffer: u32,

    /// Let outgoing webhook endpoints point at loopback, link-local and
    /// private addresses (development and tests only: otherwise anyone
    /// with an admin key could make wapipe call into its own network).
    #[arg(
        long,
        env = "WAPIPE_WEBHOOKS_ALLOW_PRIVATE",
        default_value_t = false,
        global = true,
        help_heading = "Service settings"
    )]
    pub webhooks_allow_private: bool,

    /// Seconds an outgoing webhook endpoint may fail without a success
    /// (from its first failure since the last success) before it is disabled.
    #[arg(
        long,
        env = "WAPIPE_WEBHOOK_DISABLE_AFTER_S",
        default_value_t = 86_400,
        global = true,
        help_heading = "Service settings"
    )]
    pub webhook_disable_after_s: u64,

    /// Timeout of one outgoing webhook POST, in milliseconds.
    #[arg(
        long,
        env = "WAPIPE_WEBHOOK_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true,
        help_heading = "Service settings"
    )]
    pub webhook_timeout_ms: u64,

    /// Where media files are kept when WAPIPE_MEDIA_URL is unset (a local
    /// directory; files are named by their sha256).
    #[arg(
        long,
        env = "WAPIPE_MEDIA_DIR",
        default_value = "./data/media",
        global = true,
        help_heading = "Media"
    )]
    pub media_dir: PathBuf,

    /// An S3-compatible object store for media instead of the directory:
    /// `s3://bucket/prefix`. Endpoint, region and credentials come from the
    /// usual AWS_* variables (AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP).
    #[arg(
        long,
        env = "WAPIPE_MEDIA_URL",
        global = true,
        hide_env_values = true,
        help_heading = "Media"
    )]
    pub media_url: Option<String>,

    /// The largest media file fetched from Meta or uploaded (bytes);
    /// bigger ones are refused and the message says why. 100 MiB is
    /// Meta's limit for documents.
    #[arg(
        long,
        env = "WAPIPE_MEDIA_MAX_BYTES",
        default_value_t = 100 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true,
        help_heading = "Media"
    )]
    pub media_max_bytes: u64,

    /// Days a media file is kept after it was stored; older ones are
    /// removed and their messages marked `pruned`. Unset: kept forever.
    #[arg(
        long,
        env = "WAPIPE_MEDIA_RETENTION_DAYS",
        value_parser = clap::value_parser!(u32).range(1..),
        global = true,
        help_heading = "Media"
    )]
    pub media_retention_days: Option<u32>,
}

/// The URL with its password masked (`scheme://user:***@host/…`), and any
/// query parameter that names a credential (`?password=…`) masked too, so a
/// URL can go into a log line or an error message.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.find("://") {
        Some(s) => {
            let rest = &head[s + 3..];
            // The authority ends at the first '/'; a '@' after it is in the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let user = rest[..at].split_once(':').map_or(&rest[..at], |(u, _)| u);
                    let masked = if rest[..at].contains(':') {
                        format!("{user}:***")
                    } else {
                        user.to_owned()
                    };
                    format!("{}{masked}{}", &head[..s + 3], &rest[at..])
                }
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn is_secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "pass", "secret", "token", "key"]
        .iter()
        .any(|s| k.contains(s))
}

#[derive(clap::Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// Every setting at its default (environment variables still apply).
    pub fn from_defaults() -> Result<Self, clap::Error> {
        use clap::Parser;
        DefaultsOnly::try_parse_from(["wapipe"]).map(|d| d.settings)
    }

    pub fn is_postgres(&self) -> bool {
        crate::db::is_postgres(&self.database_url)
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(self.retry_min_delay_ms),
            max_delay: Duration::from_millis(self.retry_max_delay_ms.max(self.retry_min_delay_ms)),
            max_attempts: self.retry_max_attempts.max(1),
        }
    }

    pub fn broker_settings(&self) -> BrokerSettings {
        BrokerSettings {
            amqp_url: self.amqp_url.clone().filter(|u| !u.trim().is_empty()),
            prefix: self.queue_prefix.clone(),
            lanes: self.lanes.max(1),
            prefetch: self.prefetch.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        assert_eq!(
            redact_url("postgres://u:s3cret@127.0.0.1:5432/db"),
            "postgres://u:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("amqp://guest:p%40ss@rabbit/%2f"),
            "amqp://guest:***@rabbit/%2f"
        );
        // A password holding '@' is masked whole.
        assert_eq!(
            redact_url("postgres://u:a@b@host/db"),
            "postgres://u:***@host/db"
        );
        assert_eq!(
            redact_url("postgres://host/db?user=u&password=s3cret&sslmode=require"),
            "postgres://host/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@host/db"), "postgres://u@host/db");
        assert_eq!(
            redact_url("sqlite://./data/wapipe.sqlite?mode=rwc"),
            "sqlite://./data/wapipe.sqlite?mode=rwc"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
