//! Every setting of wapipe: an env var with a documented default, shown in
//! `wapipe --help` and in the README's configuration table. The binary
//! flattens [`Settings`] into its CLI so flags and env vars are one thing.

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
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// RabbitMQ URL (`amqp://user:pass@host:5672/vhost`). Unset: the embedded in-process queue.
    #[arg(long, env = "AMQP_URL", global = true)]
    pub amqp_url: Option<String>,

    /// Address of the webhook receiver (and /healthz, /readyz).
    #[arg(
        long,
        env = "WAPIPE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Address of the ops listener (`/metrics`, `/healthz`, `/readyz`).
    /// Default: 127.0.0.1:9464 for `serve` and `ingest`, 127.0.0.1:9465
    /// for `workers`, so both start side by side on one host.
    #[arg(long, env = "WAPIPE_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// Base64 of the 32-byte key that encrypts secrets at rest (AES-256-GCM).
    /// Embedded mode generates one into WAPIPE_SECRET_KEY_FILE when unset;
    /// with Postgres it is required.
    #[arg(long, env = "WAPIPE_SECRET_KEY", hide_env_values = true, global = true)]
    pub secret_key: Option<String>,

    /// Where embedded mode keeps its generated secret key (mode 0600).
    #[arg(
        long,
        env = "WAPIPE_SECRET_KEY_FILE",
        default_value = "./data/secret.key",
        global = true
    )]
    pub secret_key_file: PathBuf,

    /// Base URL of Meta's Graph API (point it at `wapipe-sim graph` for tests).
    #[arg(
        long,
        env = "GRAPH_API_BASE",
        default_value = "https://graph.facebook.com",
        global = true
    )]
    pub graph_api_base: String,

    /// Graph API version used in send URLs.
    #[arg(
        long,
        env = "GRAPH_API_VERSION",
        default_value = "v23.0",
        global = true
    )]
    pub graph_api_version: String,

    /// Prefix of every queue and exchange, so deployments and tests can share a broker.
    #[arg(
        long,
        env = "WAPIPE_QUEUE_PREFIX",
        default_value = "wapipe",
        global = true
    )]
    pub queue_prefix: String,

    /// Ordered lanes per worker queue (jobs of one customer share a lane).
    #[arg(long, env = "WAPIPE_LANES", default_value_t = 8, global = true)]
    pub lanes: u16,

    /// Unacked deliveries per lane consumer (RabbitMQ basic_qos).
    #[arg(long, env = "WAPIPE_PREFETCH", default_value_t = 32, global = true)]
    pub prefetch: u16,

    /// First retry delay of a failed job, in milliseconds.
    #[arg(
        long,
        env = "WAPIPE_RETRY_MIN_DELAY_MS",
        default_value_t = 1000,
        global = true
    )]
    pub retry_min_delay_ms: u64,

    /// Longest retry delay, in milliseconds.
    #[arg(
        long,
        env = "WAPIPE_RETRY_MAX_DELAY_MS",
        default_value_t = 300_000,
        global = true
    )]
    pub retry_max_delay_ms: u64,

    /// Attempts before a job goes to its dead-letter queue.
    #[arg(
        long,
        env = "WAPIPE_RETRY_MAX_ATTEMPTS",
        default_value_t = 8,
        global = true
    )]
    pub retry_max_attempts: u32,

    /// Seconds an event may stay `received` before the relay re-publishes it.
    #[arg(
        long,
        env = "WAPIPE_RELAY_GRACE_SECS",
        default_value_t = 30,
        global = true
    )]
    pub relay_grace_secs: u64,

    /// Largest webhook body accepted, in bytes (Meta sends up to 3 MB).
    #[arg(long, env = "WAPIPE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Group commit: longest wait for more requests before a batch commits, in milliseconds.
    #[arg(
        long,
        env = "WAPIPE_BATCH_WINDOW_MS",
        default_value_t = 2,
        global = true
    )]
    pub batch_window_ms: u64,

    /// Group commit: most webhook bodies in one transaction.
    #[arg(long, env = "WAPIPE_BATCH_MAX", default_value_t = 256, global = true)]
    pub batch_max: usize,

    /// Database pool size.
    #[arg(long, env = "WAPIPE_DB_POOL", default_value_t = 16, global = true)]
    pub db_pool: u32,

    /// Log as JSON lines instead of text (filter with RUST_LOG, default `info`).
    #[arg(long, env = "WAPIPE_LOG_JSON", default_value_t = false, global = true)]
    pub log_json: bool,

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
