//! Rebuilds `outbound.send` jobs from the database (DESIGN §3): the broker
//! only dispatches, so an outbound message still `queued` or stuck
//! `sending` must reach a worker even if its job was lost: published into
//! another process's in-process queue (`wapipe send` in embedded mode), lost
//! in a crash of the embedded queue, or dead-lettered after its attempts.
//!
//! Which messages a pass re-publishes:
//! - at startup, every `queued` and `sending` one (an embedded queue starts
//!   empty; a duplicate job is harmless, the worker's claim decides);
//! - then `queued` ones never dispatched and older than `grace`, or
//!   dispatched longer than `stale_after` ago (their job was evidently
//!   lost); and `sending` ones claimed longer than `sending_timeout` ago
//!   and not dispatched since.
//!
//! Each re-published message gets `dispatched_at = now`, so a message
//! whose job waits in a delay queue is re-published at most once per
//! `stale_after`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::ExprTrait;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe_shared::broker::Broker;
use wapipe_shared::entities::messages::{self, Column as M, MessageStatus};
use wapipe_shared::entities::{customers, whatsapp_configs};

use wapipe_domain::clock::now;
use wapipe_domain::outbox::{dispatched_at, stamp_dispatched};
use wapipe_shared::jobs::{Job, OutboundSend, lane_key};

/// Jobs re-published by the sweep.
pub const METRIC_SWEEP_REPUBLISHED_TOTAL: &str = "wapipe_outbound_sweep_republished_total";

#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Time between passes.
    pub interval: Duration,
    /// How long a never-dispatched `queued` message waits before the sweep
    /// publishes it (what `wapipe send` in embedded mode relies on).
    pub grace: Duration,
    /// How long after its last dispatch a still-`queued` message counts as
    /// having lost its job. Above the longest retry delay, or messages
    /// waiting in a delay queue get a second job (harmless, but wasted).
    pub stale_after: Duration,
    /// Messages per page.
    pub batch: u64,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            grace: Duration::from_secs(3),
            stale_after: Duration::from_secs(360),
            batch: 500,
        }
    }
}

/// `now - d`, saturating at 1970 (a time both databases store): a
/// misconfigured huge duration means "never".
pub(crate) fn ago(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| {
            Ord::max(t, DateTime::<Utc>::UNIX_EPOCH)
        })
}

/// One pass; returns how many jobs it published. `startup` re-publishes
/// every unfinished message regardless of age.
pub async fn sweep_once(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    settings: &SweepSettings,
    sending_timeout: Duration,
    startup: bool,
) -> Result<usize, DbErr> {
    let now = now();
    let queued = if startup {
        Condition::all().add(M::Status.eq(MessageStatus::Queued))
    } else {
        Condition::all()
            .add(M::Status.eq(MessageStatus::Queued))
            .add(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(Expr::col(dispatched_at()).is_null())
                            .add(M::CreatedAt.lt(ago(now, settings.grace))),
                    )
                    .add(Expr::col(dispatched_at()).lt(ago(now, settings.stale_after))),
            )
    };
    let sending = if startup {
        Condition::all().add(M::Status.eq(MessageStatus::Sending))
    } else {
        let stale = ago(now, sending_timeout);
        Condition::all()
            .add(M::Status.eq(MessageStatus::Sending))
            .add(M::UpdatedAt.lt(stale))
            .add(
                Condition::any()
                    .add(Expr::col(dispatched_at()).is_null())
                    .add(Expr::col(dispatched_at()).lt(stale)),
            )
    };
    let mut total = 0;
    let mut after: Option<Uuid> = None;
    loop {
        let mut q = messages::Entity::find()
            .select_only()
            .column(M::Id)
            .column(M::ConfigId)
            .column(M::CustomerId)
            // The partial index's predicate, as literals: a planner can only
            // match an index predicate against constants, not parameters.
            .filter(Expr::cust(
                "status IN ('queued', 'sending') AND direction = 'outbound'",
            ))
            .filter(M::ProviderMessageId.is_null())
            .filter(Condition::any().add(queued.clone()).add(sending.clone()))
            .order_by_asc(M::Id)
            .limit(Ord::max(settings.batch, 1));
        if let Some(a) = after {
            q = q.filter(M::Id.gt(a));
        }
        let rows: Vec<(Uuid, Uuid, Uuid)> = q.into_tuple().all(db).await?;
        let n = rows.len();
        after = rows.last().map(|r| r.0);
        let published = publish(db, broker, rows, now).await?;
        total += published;
        if published < n || (n as u64) < Ord::max(settings.batch, 1) {
            // Done, or the broker refuses: the next pass tries again.
            break;
        }
    }
    if total > 0 {
        metrics::counter!(METRIC_SWEEP_REPUBLISHED_TOTAL).increment(total as u64);
        tracing::info!(
            messages = total,
            startup,
            "outbound sweep re-published sends"
        );
    }
    Ok(total)
}

async fn publish(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    rows: Vec<(Uuid, Uuid, Uuid)>,
    now: DateTime<Utc>,
) -> Result<usize, DbErr> {
    if rows.is_empty() {
        return Ok(0);
    }
    // Lane keys need the number and the recipient: two lookups per page.
    let configs: HashMap<Uuid, String> = whatsapp_configs::Entity::find()
        .select_only()
        .column(whatsapp_configs::Column::Id)
        .column(whatsapp_configs::Column::PhoneNumberId)
        .filter(whatsapp_configs::Column::Id.is_in(rows.iter().map(|r| r.1)))
        .into_tuple::<(Uuid, String)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let recipients: HashMap<Uuid, String> = customers::Entity::find()
        .select_only()
        .column(customers::Column::Id)
        .column(customers::Column::WaId)
        .column(customers::Column::UserId)
        .filter(customers::Column::Id.is_in(rows.iter().map(|r| r.2)))
        .into_tuple::<(Uuid, Option<String>, Option<String>)>()
        .all(db)
        .await?
        .into_iter()
        .map(|(id, wa, user)| (id, wa.or(user).unwrap_or_else(|| id.to_string())))
        .collect();
    let mut ok = Vec::with_capacity(rows.len());
    for (id, config_id, customer_id) in rows {
        let lane = lane_key(
            configs.get(&config_id).map_or("", String::as_str),
            recipients.get(&customer_id).map_or("", String::as_str),
        );
        match broker
            .publish(OutboundSend::message(id, lane).to_outbound())
            .await
        {
            Ok(()) => ok.push(id),
            Err(e) => {
                tracing::warn!(message_id = %id, error = %e, "sweep cannot publish; will retry");
                break;
            }
        }
    }
    stamp_dispatched(db, &ok, now).await?;
    Ok(ok.len())
}

/// Runs the sweep until `shutdown`: a startup pass, then one pass per
/// `interval`. Spawn it wherever the outbound role runs.
pub async fn run_sweep(
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    settings: SweepSettings,
    sending_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut startup = true;
    loop {
        match sweep_once(&db, broker.as_ref(), &settings, sending_timeout, startup).await {
            Ok(_) => startup = false,
            Err(e) => tracing::warn!(error = %e, "outbound sweep failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.interval) => {}
        }
    }
}
