//! Dead letters of the embedded broker. In embedded mode the database is the
//! only durable store, so `wapipe dlq` lists, redrives and purges from here;
//! a redrive sets `redrive_requested_at` and the running broker picks it up.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dead_letters")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The work queue's short name (`parse`, `status`, ...), not the prefixed one.
    pub queue: String,
    pub event: String,
    pub lane_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub redrive_requested_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
