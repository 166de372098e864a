//! Two changes found under load:
//!
//! - `messages.effect_target`: a reaction, edit or revoke whose target is
//!   not stored yet keeps the target's wamid here (NULL otherwise, and once
//!   applied), so the parse worker applies it when the target arrives
//!   (Meta delivers out of order). A partial index keeps the lookup cheap:
//!   only pending effects are in it.
//! - Indexes a cached generic plan could pick wrongly. PostgreSQL plans a
//!   prepared statement once per connection and may keep that plan; on a
//!   new (empty, never analysed) table, `config_id = $1 AND
//!   provider_message_id = $2` chose `ix_messages_status (config_id,
//!   status)` and then scanned every message of the config on each status
//!   receipt (measured: 36 M index fetches for 17 k messages). No query
//!   filters messages by status alone, so that index goes. The expiry
//!   sweep's index becomes partial (`WHERE status = 'open'`): only the sweep,
//!   which names the status as a literal, can use it, so the window lookup
//!   (`status = $n OR …`) never scans every open conversation through it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("messages")
                    .add_column(string_null("effect_target"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_effect_pending")
                    .table("messages")
                    .col("config_id")
                    .col("effect_target")
                    .and_where(Expr::col("effect_target").is_not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ix_messages_status")
                    .table("messages")
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ix_conversations_expiry")
                    .table("conversations")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_conversations_open_expiry")
                    .table("conversations")
                    .col("expires_at")
                    .and_where(Expr::col("status").eq("open"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_conversations_open_expiry")
                    .table("conversations")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_conversations_expiry")
                    .table("conversations")
                    .col("status")
                    .col("expires_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_status")
                    .table("messages")
                    .col("config_id")
                    .col("status")
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("ix_messages_effect_pending")
                    .table("messages")
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("messages")
                    .drop_column("effect_target")
                    .to_owned(),
            )
            .await
    }
}
