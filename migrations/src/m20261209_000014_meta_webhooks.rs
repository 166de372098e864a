//! Homes for what Meta's other webhook fields say (wapipe issue 14):
//!
//! - **Templates.** `pending_category` / `pending_category_at`: a category
//!   change Meta announced (`template_category_update` with
//!   `correct_category`) and when it takes effect; cleared when the change
//!   is done. `status_at`: Meta's time (`entry[].time`) of the status
//!   update last applied, so a late or replayed older update cannot undo
//!   a newer one.
//! - **Pricing.** `messages.pricing_model`, `pricing_type`,
//!   `pricing_category` and `billable`, from the `pricing` of the
//!   message's status receipts.
//! - **Marketing opt-out.** `customers.marketing_opted_out` (a
//!   `user_preferences` stop, until a resume) and
//!   `marketing_preference_at`, Meta's time of the preference applied, so
//!   an older one never overrides a newer one.
//! - **Number health.** On `whatsapp_configs`: `quality_rating`,
//!   `messaging_limit_tier`, `name_status` (with `verified_name`),
//!   `account_status` (the last `account_update` event),
//!   `restrictions` (JSON: what restricts the account, or null),
//!   `business_capabilities` and `last_alert` (JSON), each group with the
//!   Meta time it was last set at (`quality_updated_at`, `name_updated_at`,
//!   `account_updated_at`, `alert_updated_at`, `capabilities_updated_at`):
//!   an older update of a group, late or replayed, changes nothing.
//! - **Calls.** `calls`: one row per WhatsApp call (`wacid`, unique per
//!   config), in the customer's chat: direction, from, to, status (with
//!   `status_rank`, so a status never regresses), start, end, duration.

use sea_orm_migration::{prelude::*, schema::*};

use crate::alter::{add, drop_col};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn new_columns() -> Vec<(&'static str, ColumnDef)> {
    let mut cols = vec![
        ("templates", string_null("pending_category")),
        ("messages", string_null("pricing_model")),
        ("messages", string_null("pricing_type")),
        ("messages", string_null("pricing_category")),
        ("messages", boolean_null("billable")),
        (
            "customers",
            boolean("marketing_opted_out").default(false).to_owned(),
        ),
    ];
    let times = [
        ("templates", "pending_category_at"),
        ("templates", "status_at"),
        ("customers", "marketing_preference_at"),
        ("whatsapp_configs", "quality_updated_at"),
        ("whatsapp_configs", "name_updated_at"),
        ("whatsapp_configs", "account_updated_at"),
        ("whatsapp_configs", "alert_updated_at"),
        ("whatsapp_configs", "capabilities_updated_at"),
    ];
    cols.extend(
        times
            .into_iter()
            .map(|(t, c)| (t, timestamp_with_time_zone_null(c))),
    );
    // The user's `@username` (contacts' `profile.username`).
    cols.push(("customers", string_null("username")));
    for c in [
        "quality_rating",
        "messaging_limit_tier",
        "name_status",
        "verified_name",
        "account_status",
    ] {
        cols.push(("whatsapp_configs", string_null(c)));
    }
    for c in ["restrictions", "business_capabilities", "last_alert"] {
        cols.push(("whatsapp_configs", json_binary_null(c)));
    }
    cols
}

fn calls() -> TableCreateStatement {
    Table::create()
        .table("calls")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .col(uuid("config_id"))
        .col(uuid("chat_id"))
        .col(uuid("customer_id"))
        // Meta's call id (`wacid.…`).
        .col(string("call_id"))
        // `inbound` (the customer called) or `outbound`; NULL if unknown.
        .col(string_null("direction"))
        .col(string_null("from"))
        .col(string_null("to"))
        .col(string("status"))
        .col(integer("status_rank"))
        .col(timestamp_with_time_zone_null("started_at"))
        .col(timestamp_with_time_zone_null("ended_at"))
        .col(integer_null("duration"))
        .col(json_binary_null("errors"))
        .foreign_key(
            ForeignKey::create()
                .from_col("config_id")
                .to("whatsapp_configs", "id"),
        )
        .foreign_key(ForeignKey::create().from_col("chat_id").to("chats", "id"))
        .foreign_key(
            ForeignKey::create()
                .from_col("customer_id")
                .to("customers", "id"),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, col) in new_columns() {
            add(manager, table, col).await?;
        }
        manager.create_table(calls()).await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_calls_config_call")
                    .table("calls")
                    .col("config_id")
                    .col("call_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        // A chat's calls, newest first.
        manager
            .create_index(
                Index::create()
                    .name("ix_calls_chat")
                    .table("calls")
                    .col("chat_id")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("calls").to_owned())
            .await?;
        for (table, col) in new_columns().into_iter().rev() {
            let name = col.get_column_name();
            drop_col(manager, table, &name).await?;
        }
        Ok(())
    }
}
