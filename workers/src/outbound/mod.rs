//! The outbound worker: carries every message we send (agents, bot,
//! reminders) from a `queued` row of `messages` to Meta's Graph API, under
//! Meta's limits, exactly once as far as a Cloud API client can promise it.
//!
//! Owns: the Graph client ([`graph`]), the rate limits ([`limits`]), and
//! the sweep that rebuilds lost jobs from the database ([`sweep`]). What a
//! message is and how it is queued belong to every producer and live in
//! the shared outbox (`wapipe_domain::outbox`); the job body is
//! `wapipe_shared::jobs::OutboundSend`.
//!
//! # One send, step by step ([`OutboundWorker::send_message`])
//!
//! 1. Holds: if the job's lane (`{phone_number_id}:{wa_id}`) is cooling
//!    down or has an earlier job waiting, or its number is paced behind a
//!    burst, the job is deferred to its slot before any database work
//!    ([`limits`]; deferring is not an attempt).
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
//!    released, the attempt not counted, and the job deferred to its slot
//!    through the broker's delay queue). Meta counts requests as they arrive, so no
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
//! `outbound.send` queue as `{"mark_read": {...}}` (`OutboundSend::mark_read`), is
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

pub mod graph;
pub mod limits;
pub mod sweep;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wapipe_shared::config::Settings;
use wapipe_shared::jobs::Queue;

pub use graph::{GraphClient, GraphOutcome, GraphSettings};
pub use limits::{LimitSettings, Limits, RateLimited};
pub use sweep::{SweepSettings, run_sweep, sweep_once};
pub use worker::{OutboundWorker, SendOutcome};

use crate::registry::{Background, BuildError, Deps, Registration};
use crate::runtime::{Worker, typed};

pub const REGISTRATION: Registration = Registration {
    queue: Queue::Outbound,
    build,
    background,
};

fn build(deps: &Deps) -> Result<Arc<dyn Worker>, BuildError> {
    describe_metrics();
    let settings = OutboundSettings::from_settings(&deps.settings);
    OutboundWorker::new(deps.clone(), settings)
        .map(typed)
        .map_err(|e| BuildError {
            worker: "outbound",
            reason: e.to_string(),
        })
}

fn background(deps: &Deps, shutdown: CancellationToken) -> Background {
    background_tasks(
        deps,
        &OutboundSettings::from_settings(&deps.settings),
        shutdown,
    )
}

/// The role's event counters from zero, so alerts on their increase work
/// from the first event rather than the second.
pub fn describe_metrics() {
    for code in graph::FLAG_CODES {
        metrics::counter!(METRIC_CONFIG_FLAGGED_TOTAL, "code" => *code).increment(0);
    }
    for limit in [
        "number",
        "pair",
        "number_cooldown",
        "pair_cooldown",
        "order",
    ] {
        metrics::counter!(METRIC_RATE_LIMITED_TOTAL, "limit" => limit).increment(0);
    }
}

/// The outbound sweep (DESIGN §3) with these settings, as the role runs it.
pub fn background_tasks(
    deps: &Deps,
    settings: &OutboundSettings,
    shutdown: CancellationToken,
) -> Background {
    vec![Box::pin(run_sweep(
        deps.db.clone(),
        deps.broker.clone(),
        settings.sweep,
        settings.sending_timeout,
        shutdown,
    ))]
}

/// Sends by `result` (`sent`, `failed`, `failed_local`, `retry`,
/// `unknown`, `duplicate`, `recovered`, `read`) and Meta's `code`
/// (`none` when there is none).
pub const METRIC_SENDS_TOTAL: &str = "wapipe_outbound_sends_total";
/// Configs flagged after Meta's 190, 368 or 131031, by `code`.
pub const METRIC_CONFIG_FLAGGED_TOTAL: &str = "wapipe_outbound_config_flagged_total";
pub use graph::METRIC_GRAPH_SECONDS;
pub use limits::{METRIC_NUMBER_LIMIT, METRIC_NUMBER_SENDS_TOTAL, METRIC_RATE_LIMITED_TOTAL};

/// Jobs of one lane sent together at most: enough to amortise the claim
/// and the wamid store (a lane's prefetch is 32 by default), small enough
/// that one batch's sends stay a moment's work.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// Everything the outbound role needs besides the database and the broker.
#[derive(Clone)]
pub struct OutboundSettings {
    pub graph: GraphSettings,
    pub limits: LimitSettings,
    /// A `sending` message claimed longer ago than this is presumed
    /// abandoned (see the module doc). Must exceed the Graph request
    /// timeout, with room for Meta's `sent` receipt to arrive.
    pub sending_timeout: Duration,
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
            .field("sweep", &self.sweep)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl OutboundSettings {
    /// Defaults for everything but the Graph endpoint.
    pub fn new(graph_api_base: &str, graph_api_version: &str) -> Self {
        Self {
            graph: GraphSettings {
                base_url: graph_api_base.to_owned(),
                version: graph_api_version.to_owned(),
                ..GraphSettings::default()
            },
            limits: LimitSettings::default(),
            sending_timeout: Duration::from_secs(60),
            sweep: SweepSettings::default(),
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// From the process settings (`GRAPH_API_BASE`, `GRAPH_API_VERSION`).
    pub fn from_settings(settings: &Settings) -> Self {
        Self::new(&settings.graph_api_base, &settings.graph_api_version)
    }
}
