//! seed 000 scenarios: keyword-triggered chatbot flows. The scenario worker
//! matches inbound messages against `keywords` (highest `priority` first)
//! and walks the flow from `start_item_id`.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "scenarios")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub keywords: Option<Json>,
    pub is_active: bool,
    /// The first `scenario_items` row of the flow (no foreign key in the schema).
    pub start_item_id: Option<Uuid>,
    pub priority: i32,
    /// `None`: no limit.
    pub max_runs_per_customer: Option<i32>,
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
    #[sea_orm(has_many = "super::template_scenarios::Entity")]
    TemplateScenarios,
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

impl Related<super::template_scenarios::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::TemplateScenarios.def()
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
