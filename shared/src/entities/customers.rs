//! seed 002 Customer + seed 000 whatsapp_users: one person writing to one
//! config, keyed by `wa_id`, or by the business-scoped `user_id` when Meta
//! sends no `wa_id` (both unique per config).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "customers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub phone_number: Option<String>,
    pub name: Option<String>,
    /// `contacts[].profile.name` as Meta last sent it.
    pub whatsapp_name: Option<String>,
    pub email: Option<String>,
    pub whatsapp_profile_picture: Option<String>,
    pub tags: Option<Json>,
    pub notes: Option<String>,
    pub is_blocked: bool,
    pub total_chats: i32,
    pub last_contact_at: Option<DateTimeUtc>,
    /// Start of the 24-hour customer-service window (DESIGN invariant 7).
    pub last_inbound_at: Option<DateTimeUtc>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,

    pub avatar: Option<String>,
    pub alternate_phone_numbers: Option<Json>,
    /// seed 002 `address` (street, city, state, country, zipCode).
    pub address: Option<Json>,
    pub language: Option<String>,
    pub is_verified: bool,
    pub total_messages: i32,
    pub first_contact_at: Option<DateTimeUtc>,
    pub preferred_agent: Option<Uuid>,
    pub preferred_contact_time: Option<String>,
    pub is_active: bool,

    /// The customer asked Meta to stop marketing messages (`user_preferences`
    /// `stop`) and has not resumed: MARKETING templates are refused locally.
    pub marketing_opted_out: bool,
    /// Meta's time of the preference applied; older ones are ignored.
    pub marketing_preference_at: Option<DateTimeUtc>,
    /// The user's WhatsApp `@username` (`contacts[].profile.username`).
    pub username: Option<String>,
    /// Meta's parent BSUID (`parent_user_id`): the same user across the
    /// business portfolios linked to ours.
    pub parent_user_id: Option<String>,
    /// Meta's group id when this row is a WhatsApp group, the party of the
    /// group's chat (its members have rows of their own): no `wa_id`, no
    /// `user_id`. Unique per config.
    pub wa_group_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
    #[sea_orm(has_many = "super::chats::Entity")]
    Chats,
    #[sea_orm(has_many = "super::conversations::Entity")]
    Conversations,
    #[sea_orm(has_many = "super::messages::Entity")]
    Messages,
    #[sea_orm(has_many = "super::scenario_runs::Entity")]
    ScenarioRuns,
    #[sea_orm(has_many = "super::customer_blocked_scenarios::Entity")]
    BlockedScenarios,
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

impl Related<super::conversations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Conversations.def()
    }
}

impl Related<super::messages::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Messages.def()
    }
}

impl Related<super::scenario_runs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ScenarioRuns.def()
    }
}

impl Related<super::customer_blocked_scenarios::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::BlockedScenarios.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
