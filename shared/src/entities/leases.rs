//! A lease on a periodic job: the process that holds `name` until
//! `expires_at` does that job's tick; the others skip it. Taken with one
//! conditional upsert (`wapipe_domain::leases`).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "leases")]
pub struct Model {
    /// The job (`template_sync`, `agent_performance_rollup`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub created_at: DateTimeUtc,
    /// When the current holder took it.
    pub updated_at: DateTimeUtc,
    /// The process holding it (an id it picks at start).
    pub holder: String,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
