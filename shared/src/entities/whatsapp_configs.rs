//! seed 002 WhatsAppConfig + seed 000 credentials: one row per WhatsApp number
//! of a company, the tenant key of every other table. Secrets are ciphertext
//! (see `crate::crypto`); use `crate::tenants` to read them.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "whatsapp_configs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub company: String,
    pub name: Option<String>,
    pub phone_number_id: String,
    pub waba_id: String,
    pub display_phone_number: Option<String>,
    #[serde(skip)]
    pub access_token_enc: String,
    #[serde(skip)]
    pub app_secret_enc: String,
    #[serde(skip)]
    pub verify_token_enc: String,
    #[serde(skip)]
    pub webhook_secret_enc: Option<String>,
    pub max_mps: i32,
    pub graph_api_version: Option<String>,
    pub is_active: bool,
    pub flagged_reason: Option<String>,
    pub flagged_code: Option<String>,
    pub flagged_at: Option<DateTimeUtc>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,

    pub provider: String,
    pub account_sid: Option<String>,
    #[serde(skip)]
    pub auth_token_enc: Option<String>,
    pub instance_id: Option<String>,
    #[serde(skip)]
    pub api_key_enc: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_status: Option<String>,
    pub business_profile: Option<Json>,
    pub last_sync_at: Option<DateTimeUtc>,

    /// The number's health as Meta last reported it (account and
    /// phone-number webhooks): `GREEN`/`YELLOW`/`RED`/`UNKNOWN`.
    pub quality_rating: Option<String>,
    /// `TIER_250`, `TIER_1K`, …, `TIER_UNLIMITED`.
    pub messaging_limit_tier: Option<String>,
    /// The display name's review: `APPROVED`, `REJECTED`, `PENDING`, …
    pub name_status: Option<String>,
    pub verified_name: Option<String>,
    /// The last `account_update` event (`ACCOUNT_RESTRICTION`, …).
    pub account_status: Option<String>,
    /// What restricts the account (`restriction_info`, a ban's
    /// `ban_info`), or null when lifted.
    pub restrictions: Option<Json>,
    pub business_capabilities: Option<Json>,
    /// The last `account_alerts` value.
    pub last_alert: Option<Json>,
    /// Meta's time of the last update applied, per group: an older one
    /// changes nothing.
    pub quality_updated_at: Option<DateTimeUtc>,
    pub name_updated_at: Option<DateTimeUtc>,
    pub account_updated_at: Option<DateTimeUtc>,
    pub alert_updated_at: Option<DateTimeUtc>,
    pub capabilities_updated_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    /// The business's end of a message (seed 002 `from` of an outbound
    /// message, `to` of an inbound one): the number as Meta displays it,
    /// or its phone number id when Meta gave none.
    pub fn business_number(&self) -> &str {
        self.display_phone_number
            .as_deref()
            .unwrap_or(&self.phone_number_id)
    }
}
