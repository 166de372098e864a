//! One event for one outgoing webhook endpoint (unique per endpoint and
//! event `seq`, so a replayed dispatch never doubles a delivery), with the
//! outcome of its last attempt. Every attempt is kept in
//! `webhook_delivery_attempts`.

use sea_orm::entity::prelude::*;

/// `pending` (queued or retrying), `succeeded`, `failed` (given up without
/// the dead-letter queue: the endpoint was disabled or deleted, the event
/// pruned) or `dead` (dead-lettered after the last attempt).
pub mod status {
    pub const PENDING: &str = "pending";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const DEAD: &str = "dead";
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub endpoint_id: Uuid,
    /// The event's `seq` in `events`.
    pub event_seq: i64,
    pub event_type: String,
    /// The event's config.
    pub config_id: Uuid,
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_latency_ms: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTimeUtc>,
    /// When its job was published; NULL: no job is known to carry it, and
    /// the dispatcher's sweep publishes one.
    pub dispatched_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
