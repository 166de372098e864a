//! Media files of messages (wapipe issue 14, "Media"): the store they are
//! kept in ([`store`]), Meta's media endpoints ([`graph`]), the
//! `message_media` rows that say where each message's file stands, Meta's
//! type and size limits for uploads, and the retention pass. The media
//! worker fetches inbound files; the API serves them and uploads outbound
//! ones; both write the rows through here.

pub mod graph;
pub mod store;
pub mod thumbnail;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
};
use uuid::Uuid;
use wapipe_shared::db::pad_pow2;
use wapipe_shared::entities::message_media::{self, status};

pub use graph::{MediaGraph, MediaGraphError, MediaInfo};
pub use store::{Expect, MediaStore, PutError, StoreError, Stored};

use crate::clock::now;
use crate::events;
use crate::outbox::content::MediaKind;

/// Meta's message types whose object carries a media id to fetch.
pub const INBOUND_TYPES: [&str; 6] = ["image", "video", "audio", "voice", "document", "sticker"];

/// Where the API serves a message's file.
pub fn file_url(message_id: Uuid) -> String {
    format!("/api/whatsapp/media/{message_id}")
}

/// Where the API serves a message's thumbnail.
pub fn thumbnail_url(message_id: Uuid) -> String {
    format!("/api/whatsapp/media/{message_id}/thumbnail")
}

/// Meta's limits for a media type that is sent: the largest file and the
/// MIME types accepted (Cloud API "Supported media types").
pub fn send_limits(kind: MediaKind) -> (u64, &'static [&'static str]) {
    const MB: u64 = 1024 * 1024;
    match kind {
        MediaKind::Image => (5 * MB, &["image/jpeg", "image/png"]),
        MediaKind::Video => (16 * MB, &["video/mp4", "video/3gpp"]),
        MediaKind::Audio => (
            16 * MB,
            &[
                "audio/aac",
                "audio/amr",
                "audio/mpeg",
                "audio/mp4",
                "audio/ogg",
            ],
        ),
        MediaKind::Document => (
            100 * MB,
            &[
                "text/plain",
                "application/pdf",
                "application/msword",
                "application/vnd.ms-excel",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ],
        ),
        // Animated stickers may be 500 KB, static ones 100 KB; the
        // file alone does not say which, so the larger limit applies.
        MediaKind::Sticker => (500 * 1024, &["image/webp"]),
    }
}

/// Starts tracking the file of `message_id` (a `pending` row, unless one
/// exists) and answers the row as it now is.
pub async fn begin<C: ConnectionTrait>(
    db: &C,
    message_id: Uuid,
    config_id: Uuid,
    media_id: &str,
) -> Result<message_media::Model, DbErr> {
    insert_new(
        db,
        new_row(message_id, config_id, media_id, status::PENDING),
    )
    .await?;
    message_media::Entity::find_by_id(message_id)
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("message_media {message_id}")))
}

/// Whether a file's fate is settled: nothing more to fetch.
pub fn is_settled(row: &message_media::Model) -> bool {
    matches!(
        row.status.as_str(),
        status::STORED | status::REFUSED | status::PRUNED
    )
}

/// What became of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        sha256: String,
        size: u64,
        mime_type: Option<String>,
        thumbnail_sha256: Option<String>,
    },
    /// Tried and failed; the runtime tries again.
    Failed(String),
    /// Refused for good.
    Refused(String),
}

/// Records a fetch's outcome on a row still `pending` or `failed`, with
/// its `message.updated` event in the same transaction; a settled row is
/// left alone. Answers whether the row changed.
pub async fn settle<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    message_id: Uuid,
    outcome: &Outcome,
) -> Result<bool, DbErr> {
    let at = now();
    let mut update = message_media::Entity::update_many()
        .col_expr(message_media::Column::UpdatedAt, Expr::value(at))
        .filter(message_media::Column::MessageId.eq(message_id))
        .filter(message_media::Column::Status.is_in([status::PENDING, status::FAILED]));
    update = match outcome {
        Outcome::Stored {
            sha256,
            size,
            mime_type,
            thumbnail_sha256,
        } => update
            .col_expr(message_media::Column::Status, Expr::value(status::STORED))
            .col_expr(message_media::Column::Sha256, Expr::value(sha256.clone()))
            .col_expr(
                message_media::Column::FileSize,
                Expr::value(i64::try_from(*size).unwrap_or(i64::MAX)),
            )
            .col_expr(
                message_media::Column::MimeType,
                Expr::value(mime_type.clone()),
            )
            .col_expr(
                message_media::Column::ThumbnailSha256,
                Expr::value(thumbnail_sha256.clone()),
            )
            .col_expr(message_media::Column::Error, Expr::value(None::<String>))
            .col_expr(message_media::Column::StoredAt, Expr::value(at)),
        Outcome::Failed(e) => update
            .col_expr(message_media::Column::Status, Expr::value(status::FAILED))
            .col_expr(message_media::Column::Error, Expr::value(e.clone())),
        Outcome::Refused(e) => update
            .col_expr(message_media::Column::Status, Expr::value(status::REFUSED))
            .col_expr(message_media::Column::Error, Expr::value(e.clone())),
    };
    let txn = db.begin().await?;
    let changed = update.exec(&txn).await?.rows_affected > 0;
    // A retry that fails the same way again is no news to clients.
    if changed && !matches!(outcome, Outcome::Failed(_)) {
        events::record_messages(&txn, events::MESSAGE_UPDATED, &[message_id]).await?;
    }
    txn.commit().await?;
    Ok(changed)
}

/// The file of an outbound message wapipe uploaded, stored already.
pub async fn record_upload<C: ConnectionTrait>(
    db: &C,
    message_id: Uuid,
    config_id: Uuid,
    media_id: &str,
    stored: &Stored,
    mime_type: &str,
) -> Result<(), DbErr> {
    let mut row = new_row(message_id, config_id, media_id, status::STORED);
    row.sha256 = Set(Some(stored.sha256.clone()));
    row.mime_type = Set(Some(mime_type.to_owned()));
    row.file_size = Set(Some(i64::try_from(stored.size).unwrap_or(i64::MAX)));
    row.stored_at = Set(Some(now()));
    insert_new(db, row).await
}

/// A new file row in `status`.
fn new_row(
    message_id: Uuid,
    config_id: Uuid,
    media_id: &str,
    state: &str,
) -> message_media::ActiveModel {
    let at = now();
    message_media::ActiveModel {
        message_id: Set(message_id),
        created_at: Set(at),
        updated_at: Set(at),
        config_id: Set(config_id),
        media_id: Set(Some(media_id.to_owned())),
        status: Set(state.to_owned()),
        ..Default::default()
    }
}

/// Inserts a file row unless the message has one (the first one stays).
async fn insert_new<C: ConnectionTrait>(
    db: &C,
    row: message_media::ActiveModel,
) -> Result<(), DbErr> {
    message_media::Entity::insert(row)
        .on_conflict(
            OnConflict::column(message_media::Column::MessageId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// The file rows of some messages, by message id.
pub async fn files_of<C: ConnectionTrait>(
    db: &C,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, message_media::Model>, DbErr> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(message_media::Entity::find()
        .filter(message_media::Column::MessageId.is_in(pad_pow2(ids.to_vec())))
        .all(db)
        .await?
        .into_iter()
        .map(|r| (r.message_id, r))
        .collect())
}

/// Whether a file of this type gets a thumbnail.
pub fn has_thumbnail(mime_type: Option<&str>) -> bool {
    mime_type.is_some_and(|m| m.starts_with("image/"))
}

/// Why a thumbnail could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not an image, gone from the store, too large, or undecodable.
    #[error("no thumbnail: {0}")]
    None(String),
}

/// The thumbnail of a stored file (`row`), made now if it has none yet:
/// decoded off the async threads, stored under its hash, recorded on the
/// row (the first writer's stays). `decodes` bounds how many decodes run
/// at once (a decoded photo is tens of MB).
pub async fn thumbnail_of<C: ConnectionTrait>(
    db: &C,
    store: &MediaStore,
    row: &message_media::Model,
    decodes: &tokio::sync::Semaphore,
) -> Result<String, ThumbnailError> {
    if let Some(sha) = &row.thumbnail_sha256 {
        return Ok(sha.clone());
    }
    let source = match (&row.sha256, has_thumbnail(row.mime_type.as_deref())) {
        (Some(sha), true) => sha,
        _ => return Err(ThumbnailError::None("not an image".into())),
    };
    let _permit = decodes
        .acquire()
        .await
        .map_err(|_| ThumbnailError::None("shutting down".into()))?;
    let bytes = store
        .read_small(source, thumbnail::MAX_SOURCE)
        .await?
        .ok_or_else(|| ThumbnailError::None("the image is missing or too large".into()))?;
    let jpeg = tokio::task::spawn_blocking(move || thumbnail::make(&bytes))
        .await
        .map_err(|e| ThumbnailError::None(e.to_string()))?
        .map_err(|e| ThumbnailError::None(e.to_string()))?;
    let stored = store.put_bytes(jpeg.into()).await?;
    message_media::Entity::update_many()
        .col_expr(
            message_media::Column::ThumbnailSha256,
            Expr::value(stored.sha256.clone()),
        )
        .filter(message_media::Column::MessageId.eq(row.message_id))
        .filter(message_media::Column::ThumbnailSha256.is_null())
        .exec(db)
        .await?;
    Ok(stored.sha256)
}

/// What a retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Messages marked `pruned`.
    pub messages: u64,
    /// Objects removed from the store (a file no other message still holds).
    pub objects: u64,
}

/// Rows handled per retention transaction.
const PRUNE_BATCH: u64 = 500;

/// Marks the files stored before `before` as `pruned` (with their
/// `message.updated` events), then removes from the store every object
/// no message holds any more. Runs until nothing is left to prune.
pub async fn prune<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    store: &MediaStore,
    before: DateTime<Utc>,
    reason: &str,
) -> Result<Pruned, PruneError> {
    let mut done = Pruned::default();
    loop {
        let rows = message_media::Entity::find()
            .filter(message_media::Column::Status.eq(status::STORED))
            .filter(message_media::Column::StoredAt.lt(before))
            .order_by_asc(message_media::Column::StoredAt)
            .limit(PRUNE_BATCH)
            .all(db)
            .await?;
        if rows.is_empty() {
            return Ok(done);
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
        let txn = db.begin().await?;
        let marked = message_media::Entity::update_many()
            .col_expr(message_media::Column::Status, Expr::value(status::PRUNED))
            .col_expr(message_media::Column::Error, Expr::value(reason))
            .col_expr(message_media::Column::UpdatedAt, Expr::value(now()))
            .filter(message_media::Column::MessageId.is_in(pad_pow2(ids.clone())))
            .filter(message_media::Column::Status.eq(status::STORED))
            .exec(&txn)
            .await?;
        events::record_messages(&txn, events::MESSAGE_UPDATED, &ids).await?;
        txn.commit().await?;
        done.messages += marked.rows_affected;
        let mut keys: Vec<String> = rows
            .iter()
            .flat_map(|r| [r.sha256.clone(), r.thumbnail_sha256.clone()])
            .flatten()
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if !still_held(db, &key).await? {
                store.delete(&key).await?;
                done.objects += 1;
            }
        }
    }
}

/// Whether a stored message still holds the object `key` (as its file or
/// its thumbnail).
async fn still_held<C: ConnectionTrait>(db: &C, key: &str) -> Result<bool, DbErr> {
    use sea_orm::Condition;
    let n = message_media::Entity::find()
        .filter(message_media::Column::Status.eq(status::STORED))
        .filter(
            Condition::any()
                .add(message_media::Column::Sha256.eq(key))
                .add(message_media::Column::ThumbnailSha256.eq(key)),
        )
        .limit(1)
        .all(db)
        .await?;
    Ok(!n.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Store(#[from] StoreError),
}
