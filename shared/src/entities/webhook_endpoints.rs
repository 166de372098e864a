//! Outgoing webhook endpoints (migration `m20261208_000012_webhook_endpoints`):
//! a URL that receives the events of one config (or of every config when
//! `config_id` is NULL), signed per Standard Webhooks with its own secret
//! (stored encrypted). Written by the API; read by the webhook dispatcher
//! and delivery worker (`wapipe_domain::webhooks`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_endpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The config whose events it gets; NULL: every config's (operator keys).
    pub config_id: Option<Uuid>,
    pub url: String,
    pub description: Option<String>,
    /// The event types it wants (a JSON array of `wapipe_domain::events::TYPES`).
    pub event_types: Json,
    /// The `whsec_` secret, AES-256-GCM encrypted (`WAPIPE_SECRET_KEY`).
    pub secret_enc: String,
    pub enabled: bool,
    /// The first failed attempt since the last success; NULL while healthy.
    pub failing_since: Option<DateTimeUtc>,
    pub last_success_at: Option<DateTimeUtc>,
    pub disabled_at: Option<DateTimeUtc>,
    pub disabled_reason: Option<String>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
