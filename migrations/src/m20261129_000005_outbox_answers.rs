//! Bot replies are idempotent per inbound message: `messages` keeps what a
//! reply answers (`answers_message_id`, `answer_seq`) under a unique index,
//! so the outbox's insert of a reply already queued does nothing (DESIGN
//! invariant 3). NULLs never collide, so other messages are unaffected.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        manager
            .alter_table(
                Table::alter()
                    .table("messages")
                    .add_column(uuid_null("answers_message_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("messages")
                    .add_column(integer_null("answer_seq"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_messages_answer")
                    .table("messages")
                    .col("answers_message_id")
                    .col("answer_seq")
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ux_messages_answer")
                    .table("messages")
                    .to_owned(),
            )
            .await?;
        for col in ["answer_seq", "answers_message_id"] {
            manager
                .alter_table(Table::alter().table("messages").drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
