//! The outbound worker: carries every message we send (agents, bot,
//! reminders) from a `queued` row of `messages` to Meta's Graph API, under
//! Meta's limits, exactly once as far as a Cloud API client can promise it.
//!
//! Owns: the `outbound.send` job ([`OutboundJobBody`]), the typed content
//! and Meta's request body ([`content`]), the Graph client ([`graph`]), the
//! rate limits ([`limits`]), queueing a message ([`queue`]), and the sweep
//! that rebuilds lost jobs from the database ([`sweep`]).
//!
//! # One send, step by step ([`OutboundWorker::send_message`])
//!
//! 1. Holds: if the job's lane (`{phone_number_id}:{wa_id}`) is cooling
//!    down, or its number's limiter is busy for longer than a brief wait,
//!    the job is retried later before any database work ([`limits`]).
//! 2. The claim: `queued → sending, attempt_count + 1` in one conditional
//!    `UPDATE … RETURNING`, committed before any call; only one attempt can
//!    win it. A message that is not `queued` is looked at instead: one that
//!    already carries a wamid is never sent again (invariant 3; its pending
//!    receipts are applied and the job is done); a `sending` one follows
//!    "The `sending` state" below; a finished one ends the job.
//! 3. Config checks: removed or inactive configs fail the message locally;
//!    a *flagged* config (190, 368, 131031 earlier) fails it fast with the
//!    flag's code and no Graph call: its token or account is known to be
//!    unusable, and hammering Meta with it risks more restrictions. An
//!    operator fixes the config and clears the flag (`wapipe config update
//!    --clear-flag`); the failed messages stay visible to agents.
//! 4. The 24-hour window: a free-form message (anything but a template) to
//!    a customer with no inbound message in the last 24 h
//!    (`customers.last_inbound_at`, or an open conversation whose
//!    `expires_at` is ahead) fails locally with Meta's own code 131047.
//! 5. Rate limits: the number and pair slots, taken right before the
//!    request leaves (a brief wait at most; if refused, the claim is
//!    released, the attempt not counted, and the job retried through the
//!    broker's delay queue). Meta counts requests as they arrive, so no
//!    commit may sit between a slot and its request.
//! 6. The call, and Meta's answer decided on `error.code` ([`graph`]):
//!    - accepted: the wamid, `sent` and `sent_at` in one UPDATE, then the
//!      status module applies receipts that arrived before the wamid;
//!    - refused for good: `failed` with Meta's code, title and details
//!      (the job is Ok: that is the domain answer); 190, 368 and 131031
//!      also flag the config;
//!    - refused for now (throttling, transient codes, a 5xx without Meta's
//!      body, a refused connection): the claim goes back to `queued` and
//!      the job is retried; 130429 cools the number down, 131056 only that
//!      recipient;
//!    - no usable answer (timeout, cut connection): the request may have
//!      reached Meta, so the message *stays* `sending` (see below).
//!
//! # The `sending` state
//!
//! A job that finds its message `sending` knows an earlier attempt claimed
//! it and may be in flight, or may have died (worker killed, timeout):
//! - claimed less than `sending_timeout` ago: retry later, send nothing;
//! - claimed longer ago: the attempt is presumed dead. Before resending, we
//!   look for proof that Meta accepted it anyway: a receipt of an unknown
//!   wamid (kept pending by the status worker) for this number and this
//!   recipient, stamped after the claim. Meta sends `sent` within seconds,
//!   so one is almost always there if the send went through; the message
//!   then adopts that wamid and nothing is resent. Otherwise it is claimed
//!   again (conditionally on the attempt count seen) and resent.
//!
//! The remaining window for a double send: Meta accepted a send, the worker
//! died (or timed out) before storing the wamid, *and* no receipt of it
//! reached our database within `sending_timeout`. Meta offers no
//! idempotency key for `/messages`, so no client can close it entirely;
//! storing the wamid is the first write after the answer, to keep the
//! crash part of it as short as possible.
//!
//! # Mark-as-read
//!
//! Marking a customer's message read is not a message of ours: no row, no
//! wamid, nothing to deduplicate (Meta accepts it twice). It rides the same
//! `outbound.send` queue as `{"mark_read": {...}}` ([`mark_read_job`]), is
//! not counted against the pair limit, and is skipped for flagged configs.
//! It is not rebuilt from the database after a crash of the embedded mode:
//! losing a blue tick is harmless.
//!
//! # Lost jobs
//!
//! The database is the source of truth (DESIGN §3): [`sweep`] re-publishes
//! outbound messages still `queued` that no job is known to carry (e.g.
//! queued by `wapipe send` in another process in embedded mode), or whose
//! job is long overdue, and `sending` ones past `sending_timeout`.

pub mod configs;
pub mod content;
pub mod graph;
pub mod limits;
pub mod queue;
pub mod sweep;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wapipe_shared::broker::OutboundJob;
use wapipe_shared::config::Settings;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::jobs::OUTBOUND_SEND;

pub use content::{ContentError, OutboundContent};
pub use graph::{GraphClient, GraphOutcome, GraphSettings};
pub use limits::{LimitSettings, Limits, RateLimited};
pub use queue::{NewOutbound, QueuedMessage, enqueue, normalize_wa_id, queue_message};
pub use sweep::{SweepSettings, run_sweep, sweep_once};
pub use worker::{OutboundWorker, SendOutcome};

/// Sends by `result` (`sent`, `failed`, `failed_local`, `retry`,
/// `unknown`, `duplicate`, `recovered`, `read`) and Meta's `code`
/// (`none` when there is none).
pub const METRIC_SENDS_TOTAL: &str = "wapipe_outbound_sends_total";
/// Configs flagged after Meta's 190, 368 or 131031, by `code`.
pub const METRIC_CONFIG_FLAGGED_TOTAL: &str = "wapipe_outbound_config_flagged_total";
pub use graph::METRIC_GRAPH_SECONDS;
pub use limits::METRIC_RATE_LIMITED_TOTAL;

/// Meta's code for "outside the 24-hour window", used for the local refusal too.
pub const CODE_WINDOW_CLOSED: &str = "131047";
pub const WINDOW_CLOSED_TITLE: &str = "outside the 24-hour window; use a template";

/// Jobs of one lane sent together at most: enough to amortise the claim
/// and the wamid store (a lane's prefetch is 32 by default), small enough
/// that one batch's sends stay a moment's work.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// Everything the outbound role needs besides the database and the broker.
#[derive(Clone)]
pub struct OutboundSettings {
    pub graph: GraphSettings,
    /// Decrypts the configs' access tokens; `None` only when started
    /// without one (see [`OutboundSettings::from_env`]).
    pub secret_key: Option<Arc<SecretKey>>,
    pub limits: LimitSettings,
    /// A `sending` message claimed longer ago than this is presumed
    /// abandoned (see the module doc). Must exceed the Graph request
    /// timeout, with room for Meta's `sent` receipt to arrive.
    pub sending_timeout: Duration,
    /// How long a config (token, limits, flag) is cached.
    pub config_ttl: Duration,
    pub sweep: SweepSettings,
    /// The most `outbound.send` jobs of one lane handled together (see
    /// `worker::batch`); 1 sends one job at a time.
    pub batch_size: usize,
}

impl std::fmt::Debug for OutboundSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSettings")
            .field("graph", &self.graph)
            .field("limits", &self.limits)
            .field("sending_timeout", &self.sending_timeout)
            .field("config_ttl", &self.config_ttl)
            .field("sweep", &self.sweep)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl OutboundSettings {
    /// Defaults for everything but the Graph endpoint and the key.
    pub fn new(graph_api_base: &str, graph_api_version: &str, secret_key: Arc<SecretKey>) -> Self {
        Self {
            graph: GraphSettings {
                base_url: graph_api_base.to_owned(),
                version: graph_api_version.to_owned(),
                ..GraphSettings::default()
            },
            secret_key: Some(secret_key),
            limits: LimitSettings::default(),
            sending_timeout: Duration::from_secs(60),
            config_ttl: Duration::from_secs(5),
            sweep: SweepSettings::default(),
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// From the process settings (`GRAPH_API_BASE`, `GRAPH_API_VERSION`)
    /// and the secret key the binary resolved.
    pub fn from_settings(settings: &Settings, secret_key: Arc<SecretKey>) -> Self {
        Self::new(
            &settings.graph_api_base,
            &settings.graph_api_version,
            secret_key,
        )
    }

    /// For [`crate::make`], which only gets a [`crate::Context`]: the
    /// settings from the environment (flags given to the binary are not
    /// seen; [`crate::make_with`] is the way to pass them). The key comes
    /// from `WAPIPE_SECRET_KEY`, or from an existing key file (this never
    /// creates one). Without a key every send is retried with an error
    /// saying so: messages stay queued, nothing is lost.
    pub fn from_env() -> Self {
        let Ok(settings) = Settings::from_defaults() else {
            let d = GraphSettings::default();
            return Self::without_key(&d.base_url, &d.version);
        };
        let key = match settings
            .secret_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
        {
            Some(k) => SecretKey::from_base64(k).ok(),
            None if Path::new(&settings.secret_key_file).is_file() => {
                SecretKey::load_or_create(&settings.secret_key_file).ok()
            }
            None => None,
        };
        match key {
            Some(k) => Self::from_settings(&settings, Arc::new(k)),
            None => {
                tracing::warn!(
                    "outbound: no secret key in WAPIPE_SECRET_KEY or WAPIPE_SECRET_KEY_FILE; \
                     sends will wait until the role is started with one"
                );
                Self::without_key(&settings.graph_api_base, &settings.graph_api_version)
            }
        }
    }

    fn without_key(base: &str, version: &str) -> Self {
        Self {
            secret_key: None,
            ..Self::new(base, version, Arc::new(SecretKey::generate()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0:?} is not a WhatsApp number: expected 6 to 15 digits after an optional +")]
    BadPhone(String),
    #[error("invalid message: {0}")]
    Content(#[from] ContentError),
    #[error("no WhatsApp config with id {0}")]
    UnknownConfig(Uuid),
    #[error("config {0} is removed or inactive")]
    InactiveConfig(Uuid),
    #[error("outbound settings: {0}")]
    Config(String),
    #[error("cannot decrypt the access token of config {config}: {reason}")]
    Secret { config: Uuid, reason: String },
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("broker: {0}")]
    Broker(#[from] wapipe_shared::broker::BrokerError),
}

/// Body of an `outbound.send` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutboundJobBody {
    /// Send a queued message of `messages`.
    Send { message_id: Uuid },
    /// Mark a customer's message read.
    MarkRead { mark_read: MarkRead },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkRead {
    pub config_id: Uuid,
    /// The customer's message (its wamid).
    pub provider_message_id: String,
    /// Also show the typing indicator.
    #[serde(default)]
    pub typing: bool,
}

/// The `outbound.send` job of a queued message; `lane_key` is
/// `{phone_number_id}:{wa_id}` so one customer's sends keep their order.
pub fn send_job(message_id: Uuid, lane_key: String) -> OutboundJob {
    OutboundJob {
        event: OUTBOUND_SEND.to_owned(),
        lane_key,
        message_id: format!("outbound:{message_id}"),
        // Serialising a struct of one Uuid cannot fail.
        body: serde_json::to_vec(&OutboundJobBody::Send { message_id }).unwrap_or_default(),
    }
}

/// The `outbound.send` job of a mark-as-read.
pub fn mark_read_job(mark: MarkRead, lane_key: String) -> OutboundJob {
    let id: String = format!("read:{}:{}", mark.config_id, mark.provider_message_id)
        .chars()
        .take(200)
        .collect();
    OutboundJob {
        event: OUTBOUND_SEND.to_owned(),
        lane_key,
        message_id: id,
        body: serde_json::to_vec(&OutboundJobBody::MarkRead { mark_read: mark })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_bodies_decode_either_way() {
        let id = Uuid::now_v7();
        let job = send_job(id, "1:2".into());
        let body: OutboundJobBody = serde_json::from_slice(&job.body).expect("decode");
        assert_eq!(body, OutboundJobBody::Send { message_id: id });
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&job.body).expect("json"),
            serde_json::json!({ "message_id": id })
        );
        let mark = MarkRead {
            config_id: id,
            provider_message_id: "wamid.X".into(),
            typing: true,
        };
        let job = mark_read_job(mark.clone(), "1:2".into());
        let body: OutboundJobBody = serde_json::from_slice(&job.body).expect("decode");
        assert_eq!(body, OutboundJobBody::MarkRead { mark_read: mark });
    }
}
