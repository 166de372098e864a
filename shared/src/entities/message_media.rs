//! The file of a media message, as wapipe holds it (migration 000015):
//! where it stands (`status`), its content hash (the media store's key,
//! shared by every message with the same file), type, size, thumbnail,
//! and why it is missing when it is.

use sea_orm::entity::prelude::*;
use serde::Serialize;

/// The values of `status`.
pub mod status {
    /// Being fetched from Meta (or waiting for a retry).
    pub const PENDING: &str = "pending";
    /// In the media store under `sha256`.
    pub const STORED: &str = "stored";
    /// Could not be fetched (see `error`); the runtime retries until its
    /// last attempt.
    pub const FAILED: &str = "failed";
    /// Refused for good: over WAPIPE_MEDIA_MAX_BYTES, or Meta no longer
    /// has it (see `error`).
    pub const REFUSED: &str = "refused";
    /// Removed by WAPIPE_MEDIA_RETENTION_DAYS.
    pub const PRUNED: &str = "pruned";
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "message_media")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: Uuid,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub config_id: Uuid,
    /// Meta's media id.
    pub media_id: Option<String>,
    pub status: String,
    /// Lower-case hex sha256 of the file: its key in the media store.
    pub sha256: Option<String>,
    pub mime_type: Option<String>,
    pub file_size: Option<i64>,
    pub thumbnail_sha256: Option<String>,
    pub error: Option<String>,
    pub stored_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::messages::Entity",
        from = "Column::MessageId",
        to = "super::messages::Column::Id"
    )]
    Message,
}

impl Related<super::messages::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Message.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
