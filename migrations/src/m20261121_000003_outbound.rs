//! Outbound sends: `messages.dispatched_at`, when a job for a queued (or
//! stuck `sending`) outbound message was last handed to the broker. The
//! outbound sweep (`wapipe_workers::outbound::sweep`) rebuilds lost jobs
//! from the database (DESIGN §3) and uses this column so that a message
//! whose job is merely waiting in a delay queue is not re-published every
//! pass. NULL means "never dispatched" (e.g. queued by `wapipe send` in
//! embedded mode, whose in-process queue dies with the CLI).
//!
//! The column is deliberately not (yet) a field of the `messages` entity:
//! only the outbound module reads or writes it, through sea-query, and
//! inserts that leave it out get NULL on both backends.

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
                    .add_column(timestamp_with_time_zone_null("dispatched_at"))
                    .to_owned(),
            )
            .await?;
        // The sweep asks "outbound messages still queued / sending" on every
        // pass; without an index it scans every message. Partial, so only
        // unfinished outbound rows are in it: each send's status updates
        // would otherwise add entries to yet another index of a hot table.
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_outbound_sweep")
                    .table("messages")
                    .col("id")
                    .and_where(Expr::col("status").is_in(["queued", "sending"]))
                    .and_where(Expr::col("direction").eq("outbound"))
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_messages_outbound_sweep")
                    .table("messages")
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("messages")
                    .drop_column("dispatched_at")
                    .to_owned(),
            )
            .await
    }
}
