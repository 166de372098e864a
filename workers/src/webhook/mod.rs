//! The webhook worker: delivers events to outgoing webhook endpoints,
//! signed per Standard Webhooks. Owns the dispatcher that runs beside it
//! (events after the cursor become deliveries and `webhook.deliver` jobs:
//! `wapipe_domain::webhooks::dispatch`), the HTTP POST of one delivery,
//! and their settings and metrics. A 2xx answer is a success; anything
//! else, a timeout or a refused connection is a retryable error, so the
//! runtime retries with backoff and dead-letters after the last attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sea_orm::{DatabaseConnection, EntityTrait};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use wapipe_domain::webhooks::{
    self, Attempt, METRIC_DELIVERIES_TOTAL, METRIC_DELIVERY_SECONDS,
    METRIC_ENDPOINTS_DISABLED_TOTAL, PublicResolver,
};
use wapipe_shared::broker::{Broker, Delivery};
use wapipe_shared::config::Settings;
use wapipe_shared::crypto::{SecretKey, standard_webhook_signature, webhook_secret_key};
use wapipe_shared::entities::webhook_deliveries::status;
use wapipe_shared::entities::{webhook_deliveries, webhook_endpoints};
use wapipe_shared::jobs::{Queue, WebhookDeliver};

use crate::registry::{Background, BuildError, Deps, Registration};
use crate::runtime::{JobError, JobWorker, Worker, typed};

pub const REGISTRATION: Registration = Registration {
    queue: Queue::Webhook,
    build,
    background,
};

/// Events read per dispatch transaction.
const DISPATCH_BATCH: u64 = 500;
/// A delivery with no job this long after its creation is published by
/// the sweep (the dispatcher publishes its own at once).
const SWEEP_GRACE: chrono::Duration = chrono::Duration::seconds(5);
/// Dispatcher passes between two sweeps: the sweep only catches a
/// publish that failed or a process that died before it.
const SWEEP_EVERY: u32 = 20;
/// Longest error text kept per attempt.
const MAX_ERROR_LEN: usize = 500;

/// What the webhook role needs besides the database and the broker.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `WAPIPE_WEBHOOKS_ALLOW_PRIVATE`.
    pub allow_private: bool,
    /// `WAPIPE_WEBHOOK_DISABLE_AFTER_S`.
    pub disable_after: chrono::Duration,
    /// `WAPIPE_WEBHOOK_TIMEOUT_MS`.
    pub timeout: Duration,
    /// Time between dispatcher passes.
    pub tick: Duration,
}

impl WebhookSettings {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            allow_private: s.webhooks_allow_private,
            // A huge value means "never": a century is as good.
            disable_after: i64::try_from(s.webhook_disable_after_s)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .map_or(chrono::Duration::days(36_525), |d| {
                    d.min(chrono::Duration::days(36_525))
                }),
            timeout: Duration::from_millis(s.webhook_timeout_ms),
            tick: Duration::from_millis(250),
        }
    }
}

fn build(deps: &Deps) -> Result<Arc<dyn Worker>, BuildError> {
    describe_metrics();
    let key = deps
        .configs
        .secret_key()
        .cloned()
        .ok_or_else(|| BuildError {
            worker: Queue::Webhook.name(),
            reason: "no WAPIPE_SECRET_KEY to decrypt the endpoints' secrets".into(),
        })?;
    let settings = WebhookSettings::from_settings(&deps.settings);
    Ok(typed(
        WebhookWorker::new(deps.db.clone(), key, settings).map_err(|e| BuildError {
            worker: Queue::Webhook.name(),
            reason: e.to_string(),
        })?,
    ))
}

/// The dispatcher runs beside the worker, in every process of the role.
fn background(deps: &Deps, shutdown: CancellationToken) -> Background {
    vec![Box::pin(run_dispatcher(
        deps.db.clone(),
        deps.broker.clone(),
        WebhookSettings::from_settings(&deps.settings),
        shutdown,
    ))]
}

/// Registers the webhook metrics at zero, so dashboards and alerts find
/// them before the first delivery.
pub fn describe_metrics() {
    for outcome in ["ok", "failed", "refused"] {
        metrics::counter!(METRIC_DELIVERIES_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(METRIC_ENDPOINTS_DISABLED_TOTAL).increment(0);
}

/// Every `tick`: publishes what the sweep finds, then dispatches events
/// until the cursor is at the end, publishing each batch's jobs.
pub async fn run_dispatcher(
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    settings: WebhookSettings,
    shutdown: CancellationToken,
) {
    if broker.mode() == "embedded" {
        // The in-process queue died with the last process, and its jobs.
        match webhooks::forget_dispatched(&db, wapipe_domain::clock::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "webhook deliveries of the last run queued again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot requeue the last run's webhook deliveries")
            }
        }
    }
    let mut tick = tokio::time::interval(settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sweep = passes.is_multiple_of(SWEEP_EVERY);
        if let Err(e) = pass(&db, broker.as_ref(), sweep).await {
            tracing::warn!(error = %e, "webhook dispatch pass failed");
        }
        passes = passes.wrapping_add(1);
    }
    tracing::debug!("webhook dispatcher stopped");
}

/// One dispatcher pass, after the sweep when `sweep`; returns the
/// deliveries published.
pub async fn pass(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    sweep: bool,
) -> Result<usize, sea_orm::DbErr> {
    let mut published = 0;
    if sweep {
        let stale = webhooks::unpublished(
            db,
            wapipe_domain::clock::now() - SWEEP_GRACE,
            DISPATCH_BATCH,
        )
        .await?;
        published += webhooks::publish(db, broker, &stale).await?;
    }
    loop {
        let d = webhooks::dispatch(db, DISPATCH_BATCH).await?;
        published += webhooks::publish(db, broker, &d.deliveries).await?;
        if (d.events as u64) < DISPATCH_BATCH {
            return Ok(published);
        }
    }
}

/// The `webhook` role: one POST per `webhook.deliver` job.
pub struct WebhookWorker {
    db: DatabaseConnection,
    key: Arc<SecretKey>,
    settings: WebhookSettings,
    http: reqwest::Client,
}

impl WebhookWorker {
    pub fn new(
        db: DatabaseConnection,
        key: Arc<SecretKey>,
        settings: WebhookSettings,
    ) -> Result<Self, reqwest::Error> {
        // reqwest brings rustls without a provider; the binary installs
        // ring, but a worker built alone (tests, tools) must not panic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirect could lead anywhere, inward included: an answer
            // is what the endpoint says, 3xx being a failure.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PublicResolver {
                allow_private: settings.allow_private,
            }))
            .user_agent(concat!("wapipe-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            db,
            key,
            settings,
            http,
        })
    }

    /// POSTs the signed body; the attempt as recorded.
    async fn post(&self, url: &str, id: &str, body: Vec<u8>, secret: &[u8]) -> Attempt {
        let ts = wapipe_domain::clock::now().timestamp();
        let signature = standard_webhook_signature(secret, id, ts, &body);
        let started = Instant::now();
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let secs = started.elapsed().as_secs_f64();
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        metrics::histogram!(METRIC_DELIVERY_SECONDS).record(secs);
        match sent {
            Ok(resp) => {
                let code = resp.status();
                Attempt {
                    succeeded: code.is_success(),
                    status_code: Some(code.as_u16()),
                    latency_ms,
                    error: (!code.is_success()).then(|| format!("HTTP {code}")),
                }
            }
            Err(e) => Attempt {
                succeeded: false,
                status_code: None,
                latency_ms,
                error: Some(error_text(&e)),
            },
        }
    }
}

/// A reqwest error with its causes (the resolver's refusal is a cause).
fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[async_trait]
impl JobWorker for WebhookWorker {
    type Job = WebhookDeliver;

    async fn handle(&self, job: WebhookDeliver, _: &Delivery) -> Result<(), JobError> {
        let Some(delivery) = webhook_deliveries::Entity::find_by_id(job.delivery_id)
            .one(&self.db)
            .await?
        else {
            return Ok(());
        };
        if delivery.status == status::SUCCEEDED || delivery.status == status::FAILED {
            // A redelivered job, or one given up on: nothing to do.
            return Ok(());
        }
        let endpoint = webhook_endpoints::Entity::find_by_id(delivery.endpoint_id)
            .one(&self.db)
            .await?
            .filter(|e| e.enabled && !e.is_deleted);
        let Some(endpoint) = endpoint else {
            webhooks::set_status(
                &self.db,
                delivery.id,
                status::FAILED,
                Some("endpoint disabled or deleted"),
            )
            .await?;
            return Ok(());
        };
        let Some(out) = webhooks::outgoing(&self.db, &delivery).await? else {
            webhooks::set_status(
                &self.db,
                delivery.id,
                status::FAILED,
                Some("the event was pruned from the events log"),
            )
            .await?;
            return Ok(());
        };
        let secret = self
            .key
            .decrypt(&endpoint.secret_enc)
            .map_err(|e| JobError::permanent(format!("endpoint secret: {e}")))?;
        let secret = webhook_secret_key(secret.expose_secret())
            .map_err(|e| JobError::permanent(format!("endpoint secret: {e}")))?;
        // An address literal never reaches the resolver: check it here.
        let attempt = match refuse_literal(&endpoint.url, self.settings.allow_private) {
            Some(refused) => refused,
            None => self.post(&endpoint.url, &out.id, out.body, &secret).await,
        };
        let outcome = match (&attempt.succeeded, &attempt.status_code) {
            (true, _) => "ok",
            (false, Some(_)) => "failed",
            (false, None) => "refused",
        };
        metrics::counter!(METRIC_DELIVERIES_TOTAL, "outcome" => outcome).increment(1);
        let recorded = webhooks::record_attempt(
            &self.db,
            &delivery,
            &endpoint,
            &attempt,
            self.settings.disable_after,
        )
        .await?;
        if attempt.succeeded || recorded.disabled {
            return Ok(());
        }
        Err(JobError::Retryable(attempt.error.unwrap_or_else(|| {
            "the endpoint did not answer 2xx".into()
        })))
    }

    /// The last attempt failed: the delivery is `dead` until retried
    /// (`POST …/deliveries/{id}/retry` or `wapipe dlq redrive`).
    async fn on_dead_letter(&self, job: WebhookDeliver, error: &str) -> Result<(), JobError> {
        let current = webhook_deliveries::Entity::find_by_id(job.delivery_id)
            .one(&self.db)
            .await?;
        if current.is_some_and(|d| d.status == status::PENDING) {
            webhooks::set_status(&self.db, job.delivery_id, status::DEAD, Some(error)).await?;
        }
        Ok(())
    }
}

/// The failed attempt of a URL whose host is a forbidden address literal.
fn refuse_literal(url: &str, allow_private: bool) -> Option<Attempt> {
    if allow_private {
        return None;
    }
    let parsed = webhooks::parse_url(url).ok()?;
    let ip = webhooks::literal_ip(&parsed)?;
    webhooks::forbidden_ip(ip).then(|| Attempt {
        succeeded: false,
        status_code: None,
        latency_ms: 0,
        error: Some(format!("{ip} is a loopback, private or link-local address")),
    })
}
