//! The events log (migration `m20261206_000010_events`): what happened, in
//! one order for the whole deployment (`seq`), each with the resource as
//! the REST API shows it. Written by `wapipe_domain::events::record` in
//! the transaction of the change; read by `GET /events` and the WebSocket.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "events")]
pub struct Model {
    /// The global order; readers resume after it.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    /// `message.created`, `chat.updated`, …
    pub r#type: String,
    pub config_id: Uuid,
    /// The chat the event is about, for agents who see only their chats.
    pub chat_id: Option<Uuid>,
    /// The resource as the REST API shows it (camelCase).
    pub payload: Json,
    pub occurred_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
