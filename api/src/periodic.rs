//! The API process's periodic jobs: the `agent_performance` roll-up and
//! the template sync from Meta. Every API process runs both loops; each
//! tick first takes the job's lease ([`wapipe_domain::leases`]), so with
//! several processes only one does a given tick. The tick functions are
//! public so that tests can run one without waiting for the timer.

use std::time::Duration;

use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use tokio_util::sync::CancellationToken;
use wapipe_domain::leases::{tick_lease, try_take};
use wapipe_shared::entities::whatsapp_configs;

use crate::{AppState, MetaAccess};

/// The lease of the `agent_performance` roll-up.
pub const ROLLUP_LEASE: &str = "agent_performance_rollup";
/// The lease of the template sync.
pub const TEMPLATE_SYNC_LEASE: &str = "template_sync";

/// One roll-up tick: yesterday and today for every agent (an upsert per
/// agent and day, so rerunning a day gives the same row). False when
/// another process holds this tick.
pub async fn rollup_tick(
    db: &DatabaseConnection,
    holder: &str,
    every: Duration,
) -> Result<bool, DbErr> {
    if !try_take(db, ROLLUP_LEASE, holder, tick_lease(every)).await? {
        return Ok(false);
    }
    let today = wapipe_domain::clock::now().date_naive();
    for day in [today.pred_opt(), Some(today)].into_iter().flatten() {
        if let Err(e) = wapipe_domain::stats::rollup_day(db, day).await {
            tracing::warn!(error = %e, %day, "agent performance roll-up failed; next tick retries");
        }
    }
    Ok(true)
}

/// One template-sync tick: every active number's templates from Meta.
/// Answers how many numbers synced, or `None` when another process holds
/// this tick. A number that fails is logged and left to the next tick.
pub async fn template_sync_tick(
    db: &DatabaseConnection,
    meta: &MetaAccess,
    holder: &str,
    every: Duration,
) -> Result<Option<usize>, DbErr> {
    if !try_take(db, TEMPLATE_SYNC_LEASE, holder, tick_lease(every)).await? {
        return Ok(None);
    }
    let configs = whatsapp_configs::Entity::find()
        .filter(whatsapp_configs::Column::IsDeleted.eq(false))
        .filter(whatsapp_configs::Column::IsActive.eq(true))
        .all(db)
        .await?;
    let mut synced = 0;
    for c in configs {
        match wapipe_domain::templates::sync(db, &meta.configs, &meta.graph, c.id).await {
            Ok(_) => synced += 1,
            Err(e) => {
                tracing::warn!(error = %e, config = %c.id, "template sync failed; next tick retries");
            }
        }
    }
    Ok(Some(synced))
}

/// Runs `tick` every `every` until `shutdown`; the first tick is at once.
fn every_tick<F, Fut>(every: Duration, shutdown: CancellationToken, what: &'static str, tick: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), DbErr>> + Send,
{
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(e) = tick().await {
                tracing::warn!(error = %e, job = what, "periodic job failed; next tick retries");
            }
        }
    });
}

/// Rolls up today and yesterday into `agent_performance` every
/// `rollup_every`.
pub(crate) fn spawn_rollup(state: &AppState, shutdown: CancellationToken) {
    let (db, holder) = (state.db.clone(), state.instance.clone());
    let every = state.settings.rollup_every;
    every_tick(every, shutdown, ROLLUP_LEASE, move || {
        let (db, holder) = (db.clone(), holder.clone());
        async move { rollup_tick(&db, &holder, every).await.map(drop) }
    });
}

/// Syncs every number's templates from Meta every `template_sync_every`
/// (the template webhooks keep them fresh between).
pub(crate) fn spawn_template_sync(state: &AppState, shutdown: CancellationToken) {
    let (Some(every), Some(meta)) = (state.settings.template_sync_every, state.meta.clone()) else {
        return;
    };
    let (db, holder) = (state.db.clone(), state.instance.clone());
    every_tick(every, shutdown, TEMPLATE_SYNC_LEASE, move || {
        let (db, meta, holder) = (db.clone(), meta.clone(), holder.clone());
        async move {
            template_sync_tick(&db, &meta, &holder, every)
                .await
                .map(drop)
        }
    });
}

/// Deletes events past their retention every `prune_every`. No lease:
/// several API processes running the same DELETE is harmless.
pub(crate) fn spawn_events_prune(state: &AppState, shutdown: CancellationToken) {
    let db = state.db.clone();
    let keep = chrono::Duration::from_std(state.settings.events_retention)
        .unwrap_or(chrono::Duration::days(7));
    every_tick(
        state.settings.prune_every,
        shutdown,
        "events prune",
        move || {
            let db = db.clone();
            async move {
                let before = wapipe_domain::clock::now() - keep;
                let n = wapipe_domain::events::prune(&db, before).await?;
                if n > 0 {
                    tracing::info!(deleted = n, "events past their retention pruned");
                }
                Ok(())
            }
        },
    );
}
