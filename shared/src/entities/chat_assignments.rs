//! seed 002 ChatAssignment: the history of who handled a chat. One active
//! row per chat at a time; a transfer closes the old row and records
//! `transferred_from` on the new one.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "chat_assignments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub chat_id: Uuid,
    pub assigned_to: Uuid,
    pub assigned_by: Option<Uuid>,
    pub transferred_from: Option<Uuid>,
    pub transfer_reason: Option<String>,
    pub assigned_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,

    /// `manual | auto | transfer`.
    pub assignment_type: String,
    /// `active | completed | cancelled`.
    pub status: String,
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
    #[sea_orm(
        belongs_to = "super::agents::Entity",
        from = "Column::AssignedTo",
        to = "super::agents::Column::Id"
    )]
    Agent,
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

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agent.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
