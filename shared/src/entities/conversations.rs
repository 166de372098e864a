//! seed 000 conversations: the 24-hour customer-service window. Each inbound
//! message opens or refreshes one; outside an open window only templates may
//! be sent (DESIGN invariant 7).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Whether the window still allows free-form messages.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    #[sea_orm(string_value = "open")]
    Open,
    #[sea_orm(string_value = "expired")]
    Expired,
}

impl ConversationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Expired => "expired",
        }
    }
}

impl std::fmt::Display for ConversationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConversationStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self::Open),
            "expired" => Ok(Self::Expired),
            other => Err(format!(
                "unknown conversation status {other:?}: expected open or expired"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "conversations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub customer_id: Uuid,
    pub chat_id: Option<Uuid>,
    pub status: ConversationStatus,
    pub opened_at: DateTimeUtc,
    pub last_inbound_at: DateTimeUtc,
    /// `last_inbound_at` + 24 h.
    pub expires_at: DateTimeUtc,
    pub closed_at: Option<DateTimeUtc>,
    /// Meta's `conversation.id` from status receipts (billing).
    pub provider_conversation_id: Option<String>,
    /// Meta's `conversation.origin.type` (`service`, `marketing`, ...).
    pub origin_type: Option<String>,
    pub message_count: i32,
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
        belongs_to = "super::customers::Entity",
        from = "Column::CustomerId",
        to = "super::customers::Column::Id"
    )]
    Customer,
    #[sea_orm(
        belongs_to = "super::chats::Entity",
        from = "Column::ChatId",
        to = "super::chats::Column::Id"
    )]
    Chat,
    #[sea_orm(has_many = "super::messages::Entity")]
    Messages,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::customers::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Customer.def()
    }
}

impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chat.def()
    }
}

impl Related<super::messages::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Messages.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
