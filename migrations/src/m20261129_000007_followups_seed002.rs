//! Follow-ups under seed 002's names, and what the reminder scheduler needs.
//!
//! Renames (data kept, on PostgreSQL and SQLite alike):
//! - `follow_ups.due_at` → `scheduled_at`, `follow_ups.note` → `notes`;
//! - `agents.phone` → `phone_number`, `agents.max_chats` →
//!   `max_concurrent_chats` (seed 002 `phoneNumber`, `maxConcurrentChats`).
//!
//! New columns:
//! - `follow_ups.completed_by`: who completed it (seed 002 `completedBy`);
//! - `follow_ups.claimed_at`: when a scheduler last claimed the row and
//!   published its `followup.due` job. A claim is a lease: a row claimed
//!   but not reminded becomes claimable again once the lease has run out
//!   (its job was lost with a killed process);
//! - `follow_ups.claim_count`: how many times it was claimed (more than
//!   once means a job was lost and the lease ran out);
//! - `follow_ups.reminder_message_id`: the reminder queued in `messages`;
//! - `follow_ups.reminder_channel` (`whatsapp` or `event`) and
//!   `reminder_note`: how the agent was reminded, and why not by WhatsApp
//!   when it was the event only ("agent has no phone number: event only");
//! - `agents.company`: the company an agent works for, when it is not tied
//!   to one number (`config_id` stays optional).
//!
//! Priorities become seed 002's `low | medium | high`: the old default
//! `normal` is `medium` now (PostgreSQL also changes the column default;
//! SQLite cannot alter a default, and every write names the priority).
//!
//! The claim index `(status, reminder_sent, scheduled_at)` replaces
//! `(status, due_at)`: the scheduler asks for exactly that every second.

use sea_orm_migration::{prelude::*, schema::*};

use crate::alter::{add, drop_col, rename};

#[derive(DeriveMigrationName)]
pub struct Migration;

const RENAMES: &[(&str, &str, &str)] = &[
    ("follow_ups", "due_at", "scheduled_at"),
    ("follow_ups", "note", "notes"),
    ("agents", "phone", "phone_number"),
    ("agents", "max_chats", "max_concurrent_chats"),
];

const NEW_FOLLOW_UP_COLUMNS: &[&str] = &[
    "completed_by",
    "claimed_at",
    "claim_count",
    "reminder_message_id",
    "reminder_channel",
    "reminder_note",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_follow_ups_due")
                    .table("follow_ups")
                    .to_owned(),
            )
            .await?;
        for (table, from, to) in RENAMES {
            rename(manager, table, from, to).await?;
        }
        add(manager, "follow_ups", uuid_null("completed_by")).await?;
        add(
            manager,
            "follow_ups",
            timestamp_with_time_zone_null("claimed_at"),
        )
        .await?;
        add(
            manager,
            "follow_ups",
            integer("claim_count").default(0).to_owned(),
        )
        .await?;
        add(manager, "follow_ups", uuid_null("reminder_message_id")).await?;
        add(manager, "follow_ups", string_null("reminder_channel")).await?;
        add(manager, "follow_ups", text_null("reminder_note")).await?;
        add(manager, "agents", string_null("company")).await?;

        let db = manager.get_connection();
        db.execute_unprepared(
            "UPDATE follow_ups SET priority = 'medium' WHERE priority = 'normal'",
        )
        .await?;
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE follow_ups ALTER COLUMN priority SET DEFAULT 'medium'",
            )
            .await?;
        }
        // The company of agents tied to one number, so `agents list` shows it.
        db.execute_unprepared(
            "UPDATE agents SET company = (SELECT c.company FROM whatsapp_configs c \
             WHERE c.id = agents.config_id) WHERE config_id IS NOT NULL",
        )
        .await?;

        manager
            .create_index(
                Index::create()
                    .name("ix_follow_ups_claim")
                    .table("follow_ups")
                    .col("status")
                    .col("reminder_sent")
                    .col("scheduled_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_follow_ups_claim")
                    .table("follow_ups")
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE follow_ups ALTER COLUMN priority SET DEFAULT 'normal'",
            )
            .await?;
        }
        db.execute_unprepared(
            "UPDATE follow_ups SET priority = 'normal' WHERE priority = 'medium'",
        )
        .await?;
        drop_col(manager, "agents", "company").await?;
        for col in NEW_FOLLOW_UP_COLUMNS.iter().rev() {
            drop_col(manager, "follow_ups", col).await?;
        }
        for (table, from, to) in RENAMES.iter().rev() {
            rename(manager, table, to, from).await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_follow_ups_due")
                    .table("follow_ups")
                    .col("status")
                    .col("due_at")
                    .to_owned(),
            )
            .await
    }
}
