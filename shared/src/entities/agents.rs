//! seed 002 Agent: the people (and admins) who answer chats. `config_id` is
//! optional because an admin may work across every number of the company.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Option<Uuid>,
    pub name: String,
    pub email: String,
    /// Default `agent`; `api_keys.kind` uses the same names.
    pub role: String,
    /// Presence, default `offline`.
    pub status: String,
    /// seed 002 `phoneNumber`: where follow-up reminders go by WhatsApp.
    pub phone_number: Option<String>,
    pub avatar: Option<String>,
    pub department: Option<String>,
    pub skills: Option<Json>,
    /// seed 002 `maxConcurrentChats`.
    pub max_concurrent_chats: i32,
    pub current_chat_count: i32,
    pub is_active: bool,
    pub last_active_at: Option<DateTimeUtc>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
    /// The company the agent works for (`whatsapp_configs.company`).
    pub company: Option<String>,

    pub user_id: Option<String>,
    /// `available | unavailable`.
    pub availability: String,
    pub is_online: bool,
    pub last_seen: Option<DateTimeUtc>,
    /// seed 002 `permissions` (`canAssignChats`, ...); `None` = none granted.
    pub permissions: Option<Json>,
    pub stats: Option<Json>,
    pub working_hours: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
    /// Chats currently assigned to this agent (`chats.assigned_to`).
    #[sea_orm(has_many = "super::chats::Entity")]
    Chats,
    #[sea_orm(has_many = "super::chat_assignments::Entity")]
    ChatAssignments,
    #[sea_orm(has_many = "super::agent_performance::Entity")]
    AgentPerformance,
    #[sea_orm(has_many = "super::api_keys::Entity")]
    ApiKeys,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chats.def()
    }
}

impl Related<super::chat_assignments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ChatAssignments.def()
    }
}

impl Related<super::agent_performance::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AgentPerformance.def()
    }
}

impl Related<super::api_keys::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ApiKeys.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
