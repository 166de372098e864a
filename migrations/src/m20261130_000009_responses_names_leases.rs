//! What the API's data points need beyond 000008:
//!
//! - **Response times.** `chats.awaiting_reply_since` is when the oldest
//!   customer message not yet answered by a human reached us (NULL when
//!   nobody waits); `chats.response_count` is how many answers the running
//!   mean `avg_response_time` is over. Existing chats get
//!   `awaiting_reply_since` from their messages: the oldest visible inbound
//!   message with no agent reply after it. Intervals from before this
//!   migration are not replayed into the mean.
//! - **Template names after a soft delete.** `ux_templates_name_lang`
//!   becomes partial (`WHERE is_deleted = false`), as `ux_labels_name_ci`
//!   already is: a deleted template no longer blocks its name. Upserts on
//!   these columns name the same predicate in their conflict target.
//! - **Leases.** `leases` holds one row per periodic job (`name`): the
//!   process holding it (`holder`) until `expires_at`. Several API
//!   processes each run the template sync and the roll-up; the one that
//!   takes the lease does the tick.

use sea_orm_migration::{prelude::*, schema::*};

use crate::alter::{add, drop_col};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn new_columns() -> Vec<(&'static str, ColumnDef)> {
    vec![
        ("chats", integer("response_count").default(0).to_owned()),
        (
            "chats",
            timestamp_with_time_zone_null("awaiting_reply_since"),
        ),
    ]
}

/// The oldest visible customer message after the chat's last agent reply.
/// Both backends take this correlated form; timestamps compare as stored.
const BACKFILL_AWAITING: &str = "UPDATE chats SET awaiting_reply_since = ( \
     SELECT MIN(m.created_at) FROM messages m \
     WHERE m.chat_id = chats.id AND m.direction = 'inbound' \
       AND m.\"type\" NOT IN ('reaction', 'edit', 'revoke') \
       AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.chat_id = m.chat_id \
         AND o.direction = 'outbound' AND o.sender_type = 'agent' \
         AND o.created_at >= m.created_at))";

fn leases() -> TableCreateStatement {
    Table::create()
        .table("leases")
        .col(string("name").primary_key())
        .col(timestamp_with_time_zone("created_at"))
        // When the current holder took it.
        .col(timestamp_with_time_zone("updated_at"))
        .col(string("holder"))
        .col(timestamp_with_time_zone("expires_at"))
        .to_owned()
}

async fn drop_templates_index(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .drop_index(
            Index::drop()
                .name("ux_templates_name_lang")
                .table("templates")
                .to_owned(),
        )
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// On SQLite too: one connection for every statement. Otherwise the
    /// index dropped on one pooled connection can still exist in another's
    /// cached schema, which then refuses to create it again.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for (table, col) in new_columns() {
            add(manager, table, col).await?;
        }
        db.execute_unprepared(BACKFILL_AWAITING).await?;

        drop_templates_index(manager).await?;
        // Raw SQL: the predicate must read exactly as the upserts' conflict
        // target does, for SQLite to match the two.
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ux_templates_name_lang ON templates \
             (config_id, name, language) WHERE is_deleted = false",
        )
        .await?;

        manager.create_table(leases()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("leases").to_owned())
            .await?;
        drop_templates_index(manager).await?;
        // Fails while a deleted template and a live one share a name:
        // the old schema cannot hold both.
        manager
            .create_index(
                Index::create()
                    .name("ux_templates_name_lang")
                    .table("templates")
                    .col("config_id")
                    .col("name")
                    .col("language")
                    .unique()
                    .to_owned(),
            )
            .await?;
        for (table, col) in new_columns().into_iter().rev() {
            let name = col.get_column_name();
            drop_col(manager, table, &name).await?;
        }
        Ok(())
    }
}
