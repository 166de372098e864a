//! seed 002 Chat: the agents' inbox thread, one per customer per config
//! (unique), with denormalised counters and the last message for lists.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "chats")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub customer_id: Uuid,
    pub phone_number: Option<String>,
    pub customer_name: Option<String>,
    /// `unassigned | assigned | resolved | closed`.
    pub status: String,
    /// `low | medium | high | urgent`.
    pub priority: String,
    pub assigned_to: Option<Uuid>,
    pub unread_count: i32,
    pub last_message: Option<String>,
    pub last_message_time: Option<DateTimeUtc>,
    /// Not a foreign key: the message may be written after the chat row.
    pub last_message_id: Option<Uuid>,
    pub total_messages: i32,
    pub customer_messages: i32,
    pub agent_messages: i32,
    pub bot_messages: i32,
    pub is_archived: bool,
    pub is_pinned: bool,
    pub is_muted: bool,
    pub first_response_at: Option<DateTimeUtc>,
    pub resolved_at: Option<DateTimeUtc>,
    /// When a scenario handed the chat to a human. Until an agent resolves
    /// it (`resolved_at` after this), the bot does not answer.
    pub handoff_at: Option<DateTimeUtc>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,

    pub assigned_at: Option<DateTimeUtc>,
    /// Who assigned it: an agent id, or `None` for an admin key.
    pub assigned_by: Option<Uuid>,
    /// `whatsapp | api | webhook`.
    pub source: String,
    pub provider: String,
    pub provider_chat_id: Option<String>,
    pub whatsapp_business_account_id: Option<String>,
    pub phone_number_id: Option<String>,
    /// seed 002 `customerInfo` (email, address, city, country, notes, tags).
    pub customer_info: Option<Json>,
    pub closed_at: Option<DateTimeUtc>,
    /// Seconds from the first unanswered customer message to the first
    /// agent reply after it, for the chat's first such reply (set once).
    pub first_response_time: Option<f64>,
    /// The mean of every such interval, over `response_count` of them.
    pub avg_response_time: Option<f64>,
    pub response_count: i32,
    /// When the oldest customer message no agent has answered yet reached
    /// us; NULL when nobody waits. Bot replies leave it: what is measured
    /// is how long a human takes.
    pub awaiting_reply_since: Option<DateTimeUtc>,
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
        belongs_to = "super::agents::Entity",
        from = "Column::AssignedTo",
        to = "super::agents::Column::Id"
    )]
    AssignedAgent,
    #[sea_orm(has_many = "super::messages::Entity")]
    Messages,
    #[sea_orm(has_many = "super::conversations::Entity")]
    Conversations,
    #[sea_orm(has_many = "super::follow_ups::Entity")]
    FollowUps,
    #[sea_orm(has_many = "super::team_notes::Entity")]
    TeamNotes,
    #[sea_orm(has_many = "super::chat_assignments::Entity")]
    Assignments,
    #[sea_orm(has_many = "super::chat_labels::Entity")]
    ChatLabels,
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

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AssignedAgent.def()
    }
}

impl Related<super::messages::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Messages.def()
    }
}

impl Related<super::conversations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Conversations.def()
    }
}

impl Related<super::follow_ups::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::FollowUps.def()
    }
}

impl Related<super::team_notes::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::TeamNotes.def()
    }
}

impl Related<super::chat_assignments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Assignments.def()
    }
}

impl Related<super::chat_labels::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ChatLabels.def()
    }
}

/// Many-to-many through `chat_labels`.
impl Related<super::labels::Entity> for Entity {
    fn to() -> RelationDef {
        super::chat_labels::Relation::Label.def()
    }
    fn via() -> Option<RelationDef> {
        Some(super::chat_labels::Relation::Chat.def().rev())
    }
}

impl ActiveModelBehavior for ActiveModel {}
