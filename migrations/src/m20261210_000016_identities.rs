//! Who a customer is, over time (wapipe issue 14, business-scoped user ids):
//!
//! - `customers.parent_user_id`: Meta's parent BSUID (`parent_user_id`,
//!   the same user across linked business portfolios), kept beside
//!   `user_id`.
//! - `customer_previous_ids`: the ids a customer had before a `system`
//!   message re-keyed it (`user_changed_number`, `user_changed_user_id`).
//!   A late message still written from an old id lands in the same
//!   customer and chat; `kind` is `wa_id` or `user_id`, unique per config
//!   and value; `changed_at` is Meta's time of the change, so a replayed or
//!   late older change never undoes a newer one.
//! - `message_status_events.recipient_user_id`: the BSUID a receipt names
//!   (`recipient_user_id`), so a send to a BSUID finds its receipts even
//!   when Meta names no phone number.

use sea_orm_migration::{prelude::*, schema::*};

use crate::alter::{add, drop_col};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn new_columns() -> Vec<(&'static str, ColumnDef)> {
    vec![
        ("customers", string_null("parent_user_id")),
        ("message_status_events", string_null("recipient_user_id")),
    ]
}

fn previous_ids() -> TableCreateStatement {
    Table::create()
        .table("customer_previous_ids")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(uuid("config_id"))
        .col(uuid("customer_id"))
        .col(string("kind"))
        .col(string("value"))
        .col(timestamp_with_time_zone("changed_at"))
        // The wamid of the system message that made the change.
        .col(string_null("changed_by"))
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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, col) in new_columns() {
            add(manager, table, col).await?;
        }
        manager.create_table(previous_ids()).await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_customer_previous_ids")
                    .table("customer_previous_ids")
                    .col("config_id")
                    .col("kind")
                    .col("value")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_customer_previous_ids_customer")
                    .table("customer_previous_ids")
                    .col("customer_id")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("customer_previous_ids").to_owned())
            .await?;
        for (table, col) in new_columns().into_iter().rev() {
            let name = col.get_column_name();
            drop_col(manager, table, &name).await?;
        }
        Ok(())
    }
}
