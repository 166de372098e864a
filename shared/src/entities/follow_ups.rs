//! seed 002 FollowUp: reminders an agent schedules on a chat. The followup
//! worker claims due rows (`status` pending, `due_at` past) atomically and
//! sets `reminder_sent`.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "follow_ups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub chat_id: Uuid,
    pub customer_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub title: Option<String>,
    pub note: Option<String>,
    pub due_at: DateTimeUtc,
    /// Default `pending`; the followup worker claims pending rows that are due.
    pub status: String,
    pub priority: String,
    pub reminder_sent: bool,
    pub reminder_sent_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
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
        belongs_to = "super::chats::Entity",
        from = "Column::ChatId",
        to = "super::chats::Column::Id"
    )]
    Chat,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chat.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
