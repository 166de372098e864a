//! Every status receipt Meta sends, with its errors and pricing, including
//! receipts that arrive before their message (`message_id` is then `None`
//! and `applied` false until the message appears). A duplicate receipt
//! (same config, wamid, status and time) is stored once.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "message_status_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub provider_message_id: String,
    pub message_id: Option<Uuid>,
    /// As Meta sent it (`sent`, `delivered`, `read`, `played`, `failed`, or
    /// anything newer), so unknown statuses are kept too.
    pub status: String,
    pub timestamp: DateTimeUtc,
    pub recipient_id: Option<String>,
    /// The BSUID the receipt names (`recipient_user_id`), if any.
    pub recipient_user_id: Option<String>,
    pub conversation: Option<Json>,
    pub pricing: Option<Json>,
    pub errors: Option<Json>,
    pub error_code: Option<String>,
    pub raw: Option<Json>,
    /// Whether the receipt has been applied to `messages.status`.
    pub applied: bool,
    /// The raw event that carried the receipt (no foreign key in the schema).
    pub webhook_event_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
    #[sea_orm(
        belongs_to = "super::messages::Entity",
        from = "Column::MessageId",
        to = "super::messages::Column::Id"
    )]
    Message,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::messages::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Message.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
