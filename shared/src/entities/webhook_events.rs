//! The raw inbox: each webhook body exactly as Meta sent it, committed before
//! the 200, then processed by the parse worker.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Lifecycle of a raw event. `received` rows are what the relay re-publishes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    #[sea_orm(string_value = "received")]
    Received,
    #[sea_orm(string_value = "processed")]
    Processed,
    #[sea_orm(string_value = "ignored")]
    Ignored,
    #[sea_orm(string_value = "rejected")]
    Rejected,
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Processed => "processed",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "received" => Self::Received,
            "processed" => Self::Processed,
            "ignored" => Self::Ignored,
            "rejected" => Self::Rejected,
            "failed" => Self::Failed,
            other => {
                return Err(format!(
                    "unknown status {other:?}: expected received, processed, ignored, rejected or failed"
                ));
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Option<Uuid>,
    pub body_sha256: String,
    pub raw_body: Vec<u8>,
    pub signature: Option<String>,
    pub object: Option<String>,
    pub field: Option<String>,
    pub status: EventStatus,
    pub error: Option<String>,
    pub attempts: i32,
    pub received_at: DateTimeUtc,
    pub published_at: Option<DateTimeUtc>,
    pub processed_at: Option<DateTimeUtc>,
    pub processed_data: Option<Json>,

    /// `message | status | ...`, set by the parse worker.
    pub event_type: Option<String>,
    pub provider: String,
    pub chat_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::whatsapp_configs::Entity",
        from = "Column::ConfigId",
        to = "super::whatsapp_configs::Column::Id"
    )]
    Config,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
