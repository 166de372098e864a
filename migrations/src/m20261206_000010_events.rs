//! `events`: the log of what happened, for the WebSocket, `GET /events`
//! and (later) outgoing webhooks. One row per event, written in the
//! transaction of the change it reports; `seq` is the one order of the
//! whole deployment and the cursor every reader resumes from.
//!
//! How `seq` is given differs by backend (see `wapipe_domain::events`):
//! - PostgreSQL: the writer computes it from its transaction id, so the
//!   column has no default;
//! - SQLite: the rowid (`AUTOINCREMENT`, so a number is never given twice,
//!   even after the oldest rows are pruned); the single writer commits in
//!   that order.
//!
//! No foreign keys: the log outlives what it reports (a pruned or deleted
//! row), and the hot write paths append to it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            sea_orm::DatabaseBackend::Postgres => {
                db.execute_unprepared(
                    "CREATE TABLE events (\
                       seq bigint PRIMARY KEY, \
                       type text NOT NULL, \
                       config_id uuid NOT NULL, \
                       chat_id uuid NULL, \
                       payload jsonb NOT NULL, \
                       occurred_at timestamptz NOT NULL)",
                )
                .await?;
            }
            _ => {
                db.execute_unprepared(
                    "CREATE TABLE events (\
                       seq integer NOT NULL PRIMARY KEY AUTOINCREMENT, \
                       type text NOT NULL, \
                       config_id uuid_text NOT NULL, \
                       chat_id uuid_text NULL, \
                       payload json_text NOT NULL, \
                       occurred_at timestamp_with_timezone_text NOT NULL)",
                )
                .await?;
            }
        }
        // An agent's reader asks for its chats' events after a seq.
        db.execute_unprepared("CREATE INDEX ix_events_chat_seq ON events (chat_id, seq)")
            .await?;
        // The retention job deletes by age.
        db.execute_unprepared("CREATE INDEX ix_events_occurred_at ON events (occurred_at)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("events").to_owned())
            .await
    }
}
