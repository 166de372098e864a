//! seed 002 TeamNote: internal notes agents leave on a chat; never sent to
//! the customer.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "team_notes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub chat_id: Uuid,
    pub author_id: Option<Uuid>,
    pub note: String,
    pub is_pinned: bool,
    /// Agent ids mentioned in the note.
    pub mentions: Option<Json>,
    pub is_edited: bool,
    pub edit_history: Option<Json>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,

    pub author_name: Option<String>,
    pub edited_at: Option<DateTimeUtc>,
    pub edited_by: Option<Uuid>,
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
