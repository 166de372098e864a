//! seed 002 Label: tags agents put on chats, unique by name per config.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "labels")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub name: String,
    /// `#rrggbb`.
    pub color: String,
    pub description: Option<String>,
    /// The agent who made it (no foreign key in the schema).
    pub created_by: Option<Uuid>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,

    /// Chats carrying the label, kept by the add and remove endpoints.
    pub usage_count: i32,
    pub is_active: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
    #[sea_orm(has_many = "super::chat_labels::Entity")]
    ChatLabels,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::chat_labels::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ChatLabels.def()
    }
}

/// Many-to-many through `chat_labels`.
impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        super::chat_labels::Relation::Chat.def()
    }
    fn via() -> Option<RelationDef> {
        Some(super::chat_labels::Relation::Label.def().rev())
    }
}

impl ActiveModelBehavior for ActiveModel {}
