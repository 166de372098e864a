//! Media in and out (wapipe issue 14, "Media"): `message_media`, one row
//! per message whose media wapipe fetched (inbound) or uploaded
//! (outbound). The file itself lives in the media store (a local
//! directory or S3), keyed by its sha256, so two messages with the same
//! file share one object: `sha256` is that key, `thumbnail_sha256` the
//! key of its thumbnail. `status` says where the file stands:
//! `pending` (being fetched), `stored`, `failed` (with `error`, retried
//! by the runtime), `refused` (over WAPIPE_MEDIA_MAX_BYTES, with `error`)
//! or `pruned` (removed by WAPIPE_MEDIA_RETENTION_DAYS).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn message_media() -> TableCreateStatement {
    Table::create()
        .table("message_media")
        .col(pk_uuid("message_id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .col(uuid("config_id"))
        // Meta's media id (inbound: from the webhook; outbound: the upload's).
        .col(string_null("media_id"))
        .col(string("status"))
        .col(string_null("sha256"))
        .col(string_null("mime_type"))
        .col(big_integer_null("file_size"))
        .col(string_null("thumbnail_sha256"))
        .col(string_null("error"))
        .col(timestamp_with_time_zone_null("stored_at"))
        .foreign_key(
            ForeignKey::create()
                .from_col("message_id")
                .to("messages", "id"),
        )
        .foreign_key(
            ForeignKey::create()
                .from_col("config_id")
                .to("whatsapp_configs", "id"),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_table(message_media()).await?;
        // Is an object still used (retention, dedup)?
        manager
            .create_index(
                Index::create()
                    .name("ix_message_media_sha256")
                    .table("message_media")
                    .col("sha256")
                    .to_owned(),
            )
            .await?;
        // Retention: stored files by age.
        manager
            .create_index(
                Index::create()
                    .name("ix_message_media_status_stored")
                    .table("message_media")
                    .col("status")
                    .col("stored_at")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("message_media").to_owned())
            .await
    }
}
