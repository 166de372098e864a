//! WhatsApp groups (wapipe issue 14: Meta's Groups API): a group is a chat
//! of its own, and the messages in it keep who wrote them.
//!
//! - `customers.wa_group_id`: Meta's group id. A group is the party of its
//!   chat the way a person is of theirs: a `customers` row (no `wa_id`,
//!   no `user_id`), unique per config and group id, so the one-chat-per-
//!   party key of `chats`, the 24-hour window (the group's last message)
//!   and the outbox's recipient lookup hold for groups unchanged. Sends to
//!   it go out with Meta's `recipient_type: group`.
//! - `messages.participant_id`: in a group chat, the customer row of the
//!   member who wrote the message (`messages.customer_id` is the group's).
//!   NULL outside groups. No foreign key: SQLite cannot add a column with
//!   one to an existing table; the row it names is never deleted while
//!   its group's messages are kept (customers are soft-deleted).
//! - `groups`: what Meta says of the group (`group_lifecycle_update`,
//!   `group_settings_update`, `group_status_update`): subject,
//!   description, invite link, join approval mode, status, and Meta's time
//!   of the last change applied to each part, so a late or replayed older
//!   update changes nothing.
//! - `group_participants`: one row per group and member: `member`,
//!   `removed`, `requested` (a join request) or `request_revoked`, with
//!   Meta's reason and time (`group_participants_update`, and any message
//!   a member writes).

use sea_orm_migration::{prelude::*, schema::*};

use crate::alter::{add, drop_col, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn new_columns() -> Vec<(&'static str, ColumnDef)> {
    vec![
        ("customers", string_null("wa_group_id")),
        ("messages", uuid_null("participant_id")),
    ]
}

fn groups() -> TableCreateStatement {
    Table::create()
        .table("groups")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .col(uuid("config_id"))
        // The group's party row in `customers` (its chat's customer).
        .col(uuid("customer_id"))
        .col(string("wa_group_id"))
        .col(string_null("subject"))
        .col(text_null("description"))
        .col(string_null("invite_link"))
        .col(string_null("join_approval_mode"))
        // `active`, `suspended` or `deleted`.
        .col(string("status").default("active"))
        .col(timestamp_with_time_zone_null("status_at"))
        .col(timestamp_with_time_zone_null("subject_at"))
        .col(timestamp_with_time_zone_null("description_at"))
        // Errors of the last settings change Meta refused, and its time.
        .col(json_binary_null("errors"))
        .col(timestamp_with_time_zone_null("errors_at"))
        .foreign_key(
            ForeignKey::create()
                .from_col("config_id")
                .to("whatsapp_configs", "id"),
        )
        .foreign_key(
            ForeignKey::create()
                .from_col("customer_id")
                .to("customers", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

fn participants() -> TableCreateStatement {
    Table::create()
        .table("group_participants")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .col(uuid("config_id"))
        .col(uuid("group_id"))
        .col(uuid("customer_id"))
        .col(string_null("wa_id"))
        .col(string("status"))
        .col(string_null("reason"))
        // Meta's time of the change last applied.
        .col(timestamp_with_time_zone("changed_at"))
        .foreign_key(
            ForeignKey::create()
                .from_col("group_id")
                .to("groups", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .foreign_key(
            ForeignKey::create()
                .from_col("customer_id")
                .to("customers", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, col) in new_columns() {
            add(manager, table, col).await?;
        }
        manager.create_table(groups()).await?;
        manager.create_table(participants()).await?;
        let mut unique = [
            index(
                "customers",
                "ux_customers_wa_group",
                &["config_id", "wa_group_id"],
            ),
            index(
                "groups",
                "ux_groups_config_group",
                &["config_id", "wa_group_id"],
            ),
            index("groups", "ux_groups_customer", &["customer_id"]),
            index(
                "group_participants",
                "ux_group_participants",
                &["group_id", "customer_id"],
            ),
        ];
        for i in &mut unique {
            manager.create_index(i.unique().to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in ["group_participants", "groups"] {
            manager
                .drop_table(Table::drop().table(t).to_owned())
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("ux_customers_wa_group")
                    .table("customers")
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
