//! seed 000 scenarios: keyword-triggered chatbot flows. A `client`
//! scenario belongs to one config; a `generic` one (`config_id` NULL)
//! serves every config. The scenario worker matches inbound texts against
//! `keywords` (the config's scenarios before generic ones, then highest
//! `priority` first) and starts at the items without parents.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "scenarios")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// `None` for a generic scenario.
    pub config_id: Option<Uuid>,
    /// Unique per config (and among generic scenarios): the flow file
    /// names scenarios by title.
    pub title: String,
    /// `client` or `generic`.
    pub r#type: String,
    pub description: Option<String>,
    /// A JSON array of strings.
    pub keywords: Option<Json>,
    pub active: bool,
    /// How many runs one customer may have; 0 means unlimited.
    pub repeat_count: i32,
    pub priority: i32,
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
    #[sea_orm(has_many = "super::scenario_items::Entity")]
    Items,
    #[sea_orm(has_many = "super::scenario_runs::Entity")]
    Runs,
    #[sea_orm(has_many = "super::customer_blocked_scenarios::Entity")]
    BlockedCustomers,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::scenario_items::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Items.def()
    }
}

impl Related<super::scenario_runs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Runs.def()
    }
}

impl Related<super::customer_blocked_scenarios::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::BlockedCustomers.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
