//! A WhatsApp call (Meta's `calls` webhook field), in the customer's chat:
//! who called whom, how it went, when it started and ended. One row per
//! Meta call id and config; its status never regresses (`status_rank`).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "calls")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub chat_id: Uuid,
    pub customer_id: Uuid,
    /// Meta's call id (`wacid.…`), unique per config.
    pub call_id: String,
    /// `inbound` (the customer called) or `outbound`.
    pub direction: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `connected`, `ringing`, `accepted`, `rejected`, `completed`,
    /// `failed`, … (Meta's, lower case).
    pub status: String,
    /// The status's rank: ringing 1, connected or accepted 2, ended 3. A
    /// status applies only over a lower rank.
    pub status_rank: i32,
    pub started_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    /// Seconds, as Meta reports it.
    pub duration: Option<i32>,
    pub errors: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::chats::Entity",
        from = "Column::ChatId",
        to = "super::chats::Column::Id"
    )]
    Chat,
}

impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chat.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
