//! Who ran which scenario, how often, and where they stand in it: one row
//! per run, so a scenario's `repeat_count` is enforced by counting rows.
//! A customer has at most one `waiting` run (a partial unique index).

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
    /// The item whose options the run waits on (no foreign key: an import
    /// may replace the items).
    pub current_item_id: Option<Uuid>,
    /// `waiting` (for a choice), `finished`, `exited` (an exit keyword),
    /// `abandoned` (no valid answer after the fallbacks), `replaced` (another
    /// scenario started), `handoff`.
    pub status: String,
    /// Unknown answers while waiting, each answered by the fallback.
    pub fallback_count: i32,
    /// The inbound message that started the run (unique).
    pub start_message_id: Option<Uuid>,
    /// The last inbound message the run consumed: a redelivered job finds
    /// it consumed and changes nothing.
    pub last_message_id: Option<Uuid>,
    pub started_at: DateTimeUtc,
    pub last_step_at: DateTimeUtc,
    pub ended_at: Option<DateTimeUtc>,
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
