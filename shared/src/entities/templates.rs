//! seed 002 Template: WhatsApp message templates, unique by (name, language)
//! per config. `status` follows Meta's `message_template_status_update`.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "templates")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub name: String,
    pub language: String,
    /// Meta's category: `UTILITY`, `MARKETING` or `AUTHENTICATION`.
    pub category: String,
    /// Meta's status, upper case as Meta sends it (`PENDING`, `APPROVED`,
    /// `REJECTED`, `PAUSED`, ...).
    pub status: String,
    pub components: Option<Json>,
    pub whatsapp_template_id: Option<String>,
    pub rejected_reason: Option<String>,
    pub quality_score: Option<String>,
    pub previous_category: Option<String>,
    pub usage_count: i32,
    pub created_by: Option<Uuid>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,

    /// A quick reply's text (`status = local`).
    pub content: Option<String>,
    pub variables: Option<Json>,
    pub whatsapp_template_name: Option<String>,
    pub last_used_at: Option<DateTimeUtc>,
    pub is_active: bool,

    /// A category change Meta announced (`correct_category`) and when it
    /// takes effect; cleared once Meta reports it done.
    pub pending_category: Option<String>,
    pub pending_category_at: Option<DateTimeUtc>,
    /// Meta's time of the status update last applied: an older one
    /// (late or replayed) does not undo it.
    pub status_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
