//! seed 002 AgentPerformance: one row of daily counters per agent (unique by
//! agent and date), for the stats endpoints.

use sea_orm::entity::prelude::*;
use serde::Serialize;

// No `Eq`: the averages are floats.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "agent_performance")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub agent_id: Uuid,
    /// No foreign key in the schema.
    pub config_id: Option<Uuid>,
    /// The UTC day the counters cover.
    pub date: Date,
    pub total_chats: i32,
    pub chats_resolved: i32,
    pub messages_sent: i32,
    pub avg_response_time: Option<f64>,
    pub avg_resolution_time_secs: Option<f64>,
    pub customer_satisfaction: Option<f64>,

    pub chats_assigned: i32,
    pub chats_transferred: i32,
    pub messages_received: i32,
    pub first_response_time: Option<f64>,
    pub total_active_time: Option<f64>,
    pub avg_chat_duration: Option<f64>,
    pub resolution_rate: Option<f64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::agents::Entity",
        from = "Column::AgentId",
        to = "super::agents::Column::Id"
    )]
    Agent,
}

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agent.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
