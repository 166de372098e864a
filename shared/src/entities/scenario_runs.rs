//! Who ran which scenario, how often, and where they stand in it: one row
//! per (scenario, customer), so `max_runs_per_customer` is enforced by
//! counting `run_count`.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "scenario_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub scenario_id: Uuid,
    pub customer_id: Uuid,
    pub chat_id: Option<Uuid>,
    /// The step the customer stands at (no foreign key in the schema).
    pub current_item_id: Option<Uuid>,
    /// Default `active`.
    pub status: String,
    pub run_count: i32,
    pub started_at: DateTimeUtc,
    pub last_step_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
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
        belongs_to = "super::scenarios::Entity",
        from = "Column::ScenarioId",
        to = "super::scenarios::Column::Id"
    )]
    Scenario,
    #[sea_orm(
        belongs_to = "super::customers::Entity",
        from = "Column::CustomerId",
        to = "super::customers::Column::Id"
    )]
    Customer,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::scenarios::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Scenario.def()
    }
}

impl Related<super::customers::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Customer.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
