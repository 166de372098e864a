//! Every table under seed 002's field names, for the agents' REST API, plus
//! `api_keys` as the API needs them and `idempotency_keys`.
//!
//! Renames (data kept, PostgreSQL and SQLite alike; the old names were ours,
//! the seed's are the API's):
//! - `chats.customer_phone` → `phone_number`, `assigned_agent_id` → `assigned_to`;
//! - `agents.active_chats` → `current_chat_count`;
//! - `team_notes.content` → `note`, `agent_id` → `author_id`;
//! - `templates.provider_template_id` → `whatsapp_template_id`;
//! - `customers.profile_name` → `whatsapp_name`, `profile_picture` →
//!   `whatsapp_profile_picture`, `last_seen_at` → `last_contact_at`;
//! - `chat_assignments.agent_id` → `assigned_to`, `reason` →
//!   `transfer_reason`, `unassigned_at` → `completed_at`, and `is_active`
//!   becomes the seed's `status` (`active | completed | cancelled`);
//! - `agent_performance.chats_handled` → `total_chats`,
//!   `avg_response_time_secs` → `avg_response_time`;
//! - `api_keys.role` → `kind` (`admin | agent`).
//!
//! Values move to the seed's: chat `status` `open` becomes `unassigned` or
//! `assigned`, chat `priority` `normal` becomes `medium`.
//!
//! Lists of objects: a chat's `transferHistory` is its `chat_assignments`
//! rows of type `transfer` (the child table the seed's ChatAssignment model
//! already is); a label list is `chat_labels`. The small nested objects
//! (`customerInfo`, `permissions`, `stats`, `workingHours`, `address`,
//! `businessProfile`, a note's `editHistory`) are JSON columns.
//!
//! Labels: names are unique per config case-insensitively among labels not
//! deleted (an expression index, which both backends support).

use sea_orm_migration::{prelude::*, schema::*};

use crate::alter::{add, drop_col, index, rename};

#[derive(DeriveMigrationName)]
pub struct Migration;

const RENAMES: &[(&str, &str, &str)] = &[
    ("chats", "customer_phone", "phone_number"),
    ("chats", "assigned_agent_id", "assigned_to"),
    ("agents", "active_chats", "current_chat_count"),
    ("team_notes", "content", "note"),
    ("team_notes", "agent_id", "author_id"),
    ("templates", "provider_template_id", "whatsapp_template_id"),
    ("customers", "profile_name", "whatsapp_name"),
    ("customers", "profile_picture", "whatsapp_profile_picture"),
    ("customers", "last_seen_at", "last_contact_at"),
    ("chat_assignments", "agent_id", "assigned_to"),
    ("chat_assignments", "reason", "transfer_reason"),
    ("chat_assignments", "unassigned_at", "completed_at"),
    ("agent_performance", "chats_handled", "total_chats"),
    (
        "agent_performance",
        "avg_response_time_secs",
        "avg_response_time",
    ),
    ("api_keys", "role", "kind"),
];

fn new_columns() -> Vec<(&'static str, ColumnDef)> {
    let meta = || "meta-whatsapp";
    vec![
        ("chats", timestamp_with_time_zone_null("assigned_at")),
        ("chats", uuid_null("assigned_by")),
        ("chats", string("source").default("whatsapp").to_owned()),
        ("chats", string("provider").default(meta()).to_owned()),
        ("chats", string_null("provider_chat_id")),
        ("chats", string_null("whatsapp_business_account_id")),
        ("chats", string_null("phone_number_id")),
        ("chats", json_binary_null("customer_info")),
        ("chats", timestamp_with_time_zone_null("closed_at")),
        ("chats", double_null("first_response_time")),
        ("chats", double_null("avg_response_time")),
        ("messages", string_null("from")),
        ("messages", string_null("to")),
        ("messages", string_null("read_status")),
        ("messages", string_null("sender_name")),
        ("messages", string("provider").default(meta()).to_owned()),
        ("messages", string_null("provider_status")),
        ("messages", json_binary_null("metadata")),
        ("agents", string_null("user_id")),
        (
            "agents",
            string("availability").default("available").to_owned(),
        ),
        ("agents", boolean("is_online").default(false).to_owned()),
        ("agents", timestamp_with_time_zone_null("last_seen")),
        ("agents", json_binary_null("permissions")),
        ("agents", json_binary_null("stats")),
        ("agents", json_binary_null("working_hours")),
        ("labels", integer("usage_count").default(0).to_owned()),
        ("labels", boolean("is_active").default(true).to_owned()),
        ("templates", text_null("content")),
        ("templates", json_binary_null("variables")),
        ("templates", string_null("whatsapp_template_name")),
        ("templates", timestamp_with_time_zone_null("last_used_at")),
        ("templates", boolean("is_active").default(true).to_owned()),
        ("team_notes", string_null("author_name")),
        ("team_notes", timestamp_with_time_zone_null("edited_at")),
        ("team_notes", uuid_null("edited_by")),
        ("blocked_numbers", text_null("notes")),
        ("blocked_numbers", string_null("blocked_by_name")),
        (
            "blocked_numbers",
            timestamp_with_time_zone_null("blocked_at"),
        ),
        (
            "blocked_numbers",
            boolean("is_deleted").default(false).to_owned(),
        ),
        (
            "blocked_numbers",
            timestamp_with_time_zone_null("deleted_at"),
        ),
        ("customers", string_null("avatar")),
        ("customers", json_binary_null("alternate_phone_numbers")),
        ("customers", json_binary_null("address")),
        ("customers", string_null("language")),
        (
            "customers",
            boolean("is_verified").default(false).to_owned(),
        ),
        ("customers", integer("total_messages").default(0).to_owned()),
        (
            "customers",
            timestamp_with_time_zone_null("first_contact_at"),
        ),
        ("customers", uuid_null("preferred_agent")),
        ("customers", string_null("preferred_contact_time")),
        ("customers", boolean("is_active").default(true).to_owned()),
        ("webhook_events", string_null("event_type")),
        (
            "webhook_events",
            string("provider").default(meta()).to_owned(),
        ),
        ("webhook_events", uuid_null("chat_id")),
        ("webhook_events", uuid_null("message_id")),
        (
            "chat_assignments",
            string("assignment_type").default("manual").to_owned(),
        ),
        (
            "chat_assignments",
            string("status").default("active").to_owned(),
        ),
        (
            "agent_performance",
            integer("chats_assigned").default(0).to_owned(),
        ),
        (
            "agent_performance",
            integer("chats_transferred").default(0).to_owned(),
        ),
        (
            "agent_performance",
            integer("messages_received").default(0).to_owned(),
        ),
        ("agent_performance", double_null("first_response_time")),
        ("agent_performance", double_null("total_active_time")),
        ("agent_performance", double_null("avg_chat_duration")),
        ("agent_performance", double_null("resolution_rate")),
        (
            "whatsapp_configs",
            string("provider").default(meta()).to_owned(),
        ),
        ("whatsapp_configs", string_null("account_sid")),
        ("whatsapp_configs", text_null("auth_token_enc")),
        ("whatsapp_configs", string_null("instance_id")),
        ("whatsapp_configs", text_null("api_key_enc")),
        ("whatsapp_configs", string_null("webhook_url")),
        ("whatsapp_configs", string_null("webhook_status")),
        ("whatsapp_configs", json_binary_null("business_profile")),
        (
            "whatsapp_configs",
            timestamp_with_time_zone_null("last_sync_at"),
        ),
        ("api_keys", json_binary_null("companies")),
    ]
}

async fn drop_index(manager: &SchemaManager<'_>, table: &str, name: &str) -> Result<(), DbErr> {
    manager
        .drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
        .await
}

fn idempotency_keys() -> TableCreateStatement {
    Table::create()
        .table("idempotency_keys")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .col(uuid("api_key_id"))
        .col(string("key"))
        .col(string("request_hash"))
        // NULL while the first request is still being answered.
        .col(integer_null("response_status"))
        .col(text_null("response_body"))
        .foreign_key(
            ForeignKey::create()
                .from_col("api_key_id")
                .to("api_keys", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let pg = manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres;

        // Indexes over columns that go away; recreated below on the new ones.
        drop_index(manager, "chat_assignments", "ix_assignments_chat").await?;
        drop_index(manager, "chat_assignments", "ix_assignments_agent").await?;
        drop_index(manager, "labels", "ux_labels_name").await?;

        for (table, from, to) in RENAMES {
            rename(manager, table, from, to).await?;
        }
        for (table, col) in new_columns() {
            add(manager, table, col).await?;
        }

        db.execute_unprepared(
            "UPDATE chat_assignments SET status = CASE WHEN is_active THEN 'active' \
             ELSE 'completed' END, assignment_type = CASE WHEN transferred_from IS NULL \
             THEN 'manual' ELSE 'transfer' END",
        )
        .await?;
        drop_col(manager, "chat_assignments", "is_active").await?;
        db.execute_unprepared(
            "UPDATE chats SET status = CASE WHEN assigned_to IS NULL THEN 'unassigned' \
             ELSE 'assigned' END WHERE status = 'open'",
        )
        .await?;
        db.execute_unprepared("UPDATE chats SET priority = 'medium' WHERE priority = 'normal'")
            .await?;
        db.execute_unprepared("UPDATE blocked_numbers SET blocked_at = created_at")
            .await?;
        db.execute_unprepared(
            "UPDATE labels SET usage_count = (SELECT COUNT(*) FROM chat_labels cl \
             WHERE cl.label_id = labels.id)",
        )
        .await?;
        if pg {
            db.execute_unprepared("ALTER TABLE chats ALTER COLUMN status SET DEFAULT 'unassigned'")
                .await?;
            db.execute_unprepared("ALTER TABLE chats ALTER COLUMN priority SET DEFAULT 'medium'")
                .await?;
        }

        for i in [
            index(
                "chat_assignments",
                "ix_assignments_chat",
                &["chat_id", "assigned_at"],
            ),
            index(
                "chat_assignments",
                "ix_assignments_agent",
                &["assigned_to", "status"],
            ),
            // The API's chat list: newest activity first, then id (keyset).
            index(
                "chats",
                "ix_chats_list",
                &["config_id", "last_message_time", "id"],
            ),
            index(
                "messages",
                "ix_messages_chat_list",
                &["chat_id", "created_at", "id"],
            ),
            index(
                "webhook_events",
                "ix_webhook_events_list",
                &["config_id", "received_at", "id"],
            ),
        ] {
            manager.create_index(i).await?;
        }
        let mut ux_user = index("agents", "ux_agents_user_id", &["user_id"]);
        manager.create_index(ux_user.unique().to_owned()).await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ux_labels_name_ci ON labels (config_id, lower(name)) \
             WHERE is_deleted = false",
        )
        .await?;

        manager.create_table(idempotency_keys()).await?;
        let mut ux_idem = index(
            "idempotency_keys",
            "ux_idempotency_keys",
            &["api_key_id", "key"],
        );
        manager.create_index(ux_idem.unique().to_owned()).await?;
        manager
            .create_index(index(
                "idempotency_keys",
                "ix_idempotency_keys_age",
                &["created_at"],
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let pg = manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
        manager
            .drop_table(Table::drop().table("idempotency_keys").to_owned())
            .await?;
        db.execute_unprepared("DROP INDEX ux_labels_name_ci")
            .await?;
        for (table, name) in [
            ("agents", "ux_agents_user_id"),
            ("webhook_events", "ix_webhook_events_list"),
            ("messages", "ix_messages_chat_list"),
            ("chats", "ix_chats_list"),
            ("chat_assignments", "ix_assignments_agent"),
            ("chat_assignments", "ix_assignments_chat"),
        ] {
            drop_index(manager, table, name).await?;
        }
        if pg {
            db.execute_unprepared("ALTER TABLE chats ALTER COLUMN status SET DEFAULT 'open'")
                .await?;
            db.execute_unprepared("ALTER TABLE chats ALTER COLUMN priority SET DEFAULT 'normal'")
                .await?;
        }
        db.execute_unprepared("UPDATE chats SET priority = 'normal' WHERE priority = 'medium'")
            .await?;
        db.execute_unprepared(
            "UPDATE chats SET status = 'open' WHERE status IN ('unassigned', 'assigned')",
        )
        .await?;
        add(
            manager,
            "chat_assignments",
            boolean("is_active").default(true).to_owned(),
        )
        .await?;
        db.execute_unprepared("UPDATE chat_assignments SET is_active = (status = 'active')")
            .await?;
        for (table, col) in new_columns().into_iter().rev() {
            let name = col.get_column_name();
            drop_col(manager, table, &name).await?;
        }
        for (table, from, to) in RENAMES.iter().rev() {
            rename(manager, table, to, from).await?;
        }
        manager
            .create_index(
                index("labels", "ux_labels_name", &["config_id", "name"])
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "chat_assignments",
                "ix_assignments_chat",
                &["chat_id", "is_active"],
            ))
            .await?;
        manager
            .create_index(index(
                "chat_assignments",
                "ix_assignments_agent",
                &["agent_id", "is_active"],
            ))
            .await
    }
}
