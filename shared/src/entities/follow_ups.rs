//! seed 002 FollowUp: reminders an agent schedules on a chat. The
//! scheduler claims due rows (`status` pending, `scheduled_at` past,
//! `reminder_sent` false) atomically; the followup worker reminds the agent
//! and sets `reminder_sent`. See `wapipe_domain::followups`.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "follow_ups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    pub chat_id: Uuid,
    pub customer_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub title: Option<String>,
    pub notes: Option<String>,
    pub scheduled_at: DateTimeUtc,
    /// `pending` (the default), `completed`, `cancelled` or `overdue`.
    pub status: String,
    /// `low`, `medium` or `high`.
    pub priority: String,
    pub reminder_sent: bool,
    pub reminder_sent_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    pub completed_by: Option<Uuid>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
    /// When a scheduler last claimed the row (a lease; see the domain).
    pub claimed_at: Option<DateTimeUtc>,
    /// Claims so far; over 1 means a job was lost and the lease ran out.
    pub claim_count: i32,
    /// The reminder queued in `messages`, when it went by WhatsApp.
    pub reminder_message_id: Option<Uuid>,
    /// `whatsapp` or `event` (the real-time event only).
    pub reminder_channel: Option<String>,
    /// Why the reminder was the event only, e.g. "agent has no phone number: event only".
    pub reminder_note: Option<String>,
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
        belongs_to = "super::chats::Entity",
        from = "Column::ChatId",
        to = "super::chats::Column::Id"
    )]
    Chat,
}

impl Related<super::whatsapp_configs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Config.def()
    }
}

impl Related<super::chats::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chat.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
