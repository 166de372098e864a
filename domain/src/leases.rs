//! Leases on periodic jobs, so that when several processes run the same
//! loop (the API's template sync and `agent_performance` roll-up, one per
//! API process) only one of them does each tick.
//!
//! A lease is a `leases` row per job name. [`try_take`] is one upsert whose
//! update applies only over an expired lease, so taking it is atomic on
//! both backends and needs no lock held across the work: PostgreSQL's
//! `ON CONFLICT … DO UPDATE … WHERE` and SQLite's upsert both report one
//! row changed to exactly one of two concurrent takers. A process that
//! dies holding a lease loses it when it expires.
//!
//! A tick's lease lasts a little less than the loop's period
//! ([`tick_lease`]): the holder takes it again at its next tick, while a
//! process ticking a moment later finds it held. If the work outlasts the
//! lease, another process may start the next tick alongside; the jobs
//! leased this way are idempotent, so that costs work, never correctness.

use std::time::Duration;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, ExprTrait};
use wapipe_shared::entities::leases;

use crate::clock;

/// The lease of a periodic job ticking every `every`: 90% of it, so that
/// the holder's next tick finds its own lease expired despite timer jitter.
pub fn tick_lease(every: Duration) -> Duration {
    every.mul_f64(0.9)
}

/// Takes the lease `name` for `holder` for `ttl`, unless another holder
/// has it unexpired. True when taken: the caller does the work. A holder
/// asking again before its own lease expires is refused too: one tick per
/// lease.
pub async fn try_take<C: ConnectionTrait>(
    db: &C,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, DbErr> {
    let now = clock::now();
    let ttl = chrono::Duration::from_std(ttl)
        .map_err(|e| DbErr::Custom(format!("lease {name}: duration out of range: {e}")))?;
    let taken = leases::Entity::insert(leases::ActiveModel {
        name: Set(name.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        holder: Set(holder.to_owned()),
        expires_at: Set(now + ttl),
    })
    .on_conflict(
        OnConflict::column(leases::Column::Name)
            .update_columns([
                leases::Column::UpdatedAt,
                leases::Column::Holder,
                leases::Column::ExpiresAt,
            ])
            .action_and_where(Expr::col((leases::Entity, leases::Column::ExpiresAt)).lte(now))
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(taken == 1)
}
