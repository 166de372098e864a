//! The follow-up scheduler: runs in every worker process that has the
//! followup role, safe with any number of replicas. Every second it turns
//! late follow-ups `overdue`, then claims due ones in batches (the claim is
//! atomic across replicas: `wapipe_domain::followups::claim_due`) and
//! publishes one `followup.due` job per claimed follow-up.
//!
//! Nothing is lost between the claim and the publish: a failed publish
//! gives the claim back at once, and a process killed in between leaves a
//! claim whose lease runs out. The embedded queue dies with its process,
//! so an embedded scheduler gives back every unfinished claim when it
//! starts; follow-ups that fell due while everything was stopped are simply
//! due, and claimed on the first pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe_domain::followups::{self, Claimed, FollowUpError, Release};
use wapipe_shared::broker::Broker;
use wapipe_shared::jobs::Job;

use super::{
    FollowupSettings, METRIC_BACKLOG_AGE_SECONDS, METRIC_CLAIM_SECONDS, METRIC_CLAIMED_TOTAL,
    METRIC_DUE_TOTAL, METRIC_OVERDUE, METRIC_OVERDUE_TOTAL, METRIC_PUBLISH_FAILED_TOTAL,
};

/// Publishes in flight at once: RabbitMQ confirms each, so a batch is
/// published concurrently rather than one round trip after another.
const PUBLISH_CONCURRENCY: usize = 64;

/// Passes between two readings of the backlog gauges.
const GAUGE_EVERY: u32 = 10;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    pub overdue: u64,
    pub claimed: u64,
    pub published: u64,
}

/// Runs passes every `settings.tick` until `shutdown`.
pub async fn run(
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    settings: FollowupSettings,
    shutdown: CancellationToken,
) {
    let started = wapipe_domain::clock::now();
    if broker.mode() == "embedded" {
        match followups::release_claims(&db, Release::Before(started)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "follow-up claims of the last run given back"),
            Err(e) => tracing::warn!(error = %e, "cannot give back old follow-up claims"),
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
        let now = wapipe_domain::clock::now();
        match pass(&db, broker.as_ref(), &settings, now).await {
            Ok(stats) if stats.claimed > 0 => {
                tracing::debug!(?stats, "follow-up scheduler pass");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "follow-up scheduler pass failed"),
        }
        if passes.is_multiple_of(GAUGE_EVERY) {
            match followups::backlog(&db, now).await {
                Ok((overdue, age)) => {
                    // Counts stay far below 2^53, where f64 is exact.
                    metrics::gauge!(METRIC_OVERDUE).set(overdue as f64);
                    metrics::gauge!(METRIC_BACKLOG_AGE_SECONDS).set(age);
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the follow-up backlog"),
            }
        }
        passes = passes.wrapping_add(1);
    }
    tracing::debug!("follow-up scheduler stopped");
}

/// One pass at `now`: overdue marking, then claims of `settings.batch`
/// until no more are due, each batch published before the next is claimed.
pub async fn pass(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    settings: &FollowupSettings,
    now: DateTime<Utc>,
) -> Result<PassStats, FollowUpError> {
    let mut stats = PassStats {
        overdue: followups::mark_overdue(db, now, settings.overdue_after).await?,
        ..PassStats::default()
    };
    metrics::counter!(METRIC_OVERDUE_TOTAL).increment(stats.overdue);
    loop {
        let started = Instant::now();
        let claimed =
            followups::claim_due_with_lease(db, now, settings.batch, settings.lease).await?;
        metrics::histogram!(METRIC_CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
        let n = claimed.len() as u64;
        let first = claimed.iter().filter(|c| c.claim_count == 1).count() as u64;
        metrics::counter!(METRIC_DUE_TOTAL).increment(first);
        metrics::counter!(METRIC_CLAIMED_TOTAL).increment(n);
        stats.claimed += n;
        stats.published += publish(db, broker, claimed).await?;
        if n < settings.batch {
            return Ok(stats);
        }
    }
}

/// Publishes one `followup.due` per claim; gives back the claims whose
/// publish failed, so the next pass retries them at once. Returns how many
/// were published.
async fn publish(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    claimed: Vec<Claimed>,
) -> Result<u64, FollowUpError> {
    let results: Vec<(Uuid, bool)> = futures::stream::iter(claimed)
        .map(|c| async move {
            let ok = match broker.publish(c.job().to_outbound()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(follow_up = %c.id, error = %e, "cannot publish followup.due");
                    false
                }
            };
            (c.id, ok)
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .collect()
        .await;
    let failed: Vec<Uuid> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(id, _)| *id)
        .collect();
    if !failed.is_empty() {
        metrics::counter!(METRIC_PUBLISH_FAILED_TOTAL).increment(failed.len() as u64);
        followups::release_claims(db, Release::Ids(&failed)).await?;
    }
    Ok((results.len() - failed.len()) as u64)
}

/// The scheduler's period, for the settings' default.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
