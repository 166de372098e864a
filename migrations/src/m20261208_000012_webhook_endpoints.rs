//! Outgoing webhooks (Standard Webhooks):
//!
//! - `webhook_endpoints`: a URL, the event types it wants, its `whsec_`
//!   secret (encrypted), per config or global (`config_id` NULL), and its
//!   health: `failing_since` (first failure since the last success) decides
//!   when it is disabled.
//! - `webhook_deliveries`: one row per (endpoint, event `seq`), unique, so a
//!   dispatch that runs twice never delivers an event twice to one endpoint.
//! - `webhook_delivery_attempts`: every HTTP attempt of a delivery.
//! - `webhook_dispatch`: the dispatcher's cursor in the events log.

use sea_orm_migration::{prelude::*, schema::*};

use crate::alter::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn endpoints() -> TableCreateStatement {
    Table::create()
        .table("webhook_endpoints")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .col(uuid_null("config_id"))
        .col(text("url"))
        .col(text_null("description"))
        .col(json_binary("event_types"))
        .col(text("secret_enc"))
        .col(boolean("enabled").default(true))
        .col(timestamp_with_time_zone_null("failing_since"))
        .col(timestamp_with_time_zone_null("last_success_at"))
        .col(timestamp_with_time_zone_null("disabled_at"))
        .col(text_null("disabled_reason"))
        .col(boolean("is_deleted").default(false))
        .col(timestamp_with_time_zone_null("deleted_at"))
        .to_owned()
}

fn deliveries() -> TableCreateStatement {
    Table::create()
        .table("webhook_deliveries")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .col(uuid("endpoint_id"))
        .col(big_integer("event_seq"))
        .col(string("event_type"))
        .col(uuid("config_id"))
        .col(string("status"))
        .col(integer("attempts").default(0))
        .col(integer_null("last_status_code"))
        .col(big_integer_null("last_latency_ms"))
        .col(text_null("last_error"))
        .col(timestamp_with_time_zone_null("delivered_at"))
        .col(timestamp_with_time_zone_null("dispatched_at"))
        .foreign_key(
            ForeignKey::create()
                .from_col("endpoint_id")
                .to("webhook_endpoints", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

fn attempts() -> TableCreateStatement {
    Table::create()
        .table("webhook_delivery_attempts")
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(uuid("delivery_id"))
        .col(integer("attempt"))
        .col(boolean("succeeded"))
        .col(integer_null("status_code"))
        .col(big_integer("latency_ms"))
        .col(text_null("error"))
        .foreign_key(
            ForeignKey::create()
                .from_col("delivery_id")
                .to("webhook_deliveries", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .to_owned()
}

fn dispatch() -> TableCreateStatement {
    Table::create()
        .table("webhook_dispatch")
        .col(string("name").primary_key())
        .col(big_integer("seq"))
        .col(timestamp_with_time_zone("updated_at"))
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_table(endpoints()).await?;
        manager.create_table(deliveries()).await?;
        manager.create_table(attempts()).await?;
        manager.create_table(dispatch()).await?;
        // Listing a config's endpoints.
        manager
            .create_index(index(
                "webhook_endpoints",
                "ix_webhook_endpoints_config",
                &["config_id", "created_at", "id"],
            ))
            .await?;
        // One delivery per (endpoint, event): the dispatcher's ON CONFLICT.
        let mut ux = index(
            "webhook_deliveries",
            "ux_webhook_deliveries_endpoint_event",
            &["endpoint_id", "event_seq"],
        );
        manager.create_index(ux.unique().to_owned()).await?;
        for i in [
            // An endpoint's deliveries, newest first (keyset pages).
            index(
                "webhook_deliveries",
                "ix_webhook_deliveries_list",
                &["endpoint_id", "created_at", "id"],
            ),
            // The sweep: pending deliveries no job is known to carry.
            index(
                "webhook_deliveries",
                "ix_webhook_deliveries_sweep",
                &["status", "dispatched_at"],
            ),
            index(
                "webhook_delivery_attempts",
                "ix_webhook_delivery_attempts_delivery",
                &["delivery_id", "attempt"],
            ),
        ] {
            manager.create_index(i).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "webhook_dispatch",
            "webhook_delivery_attempts",
            "webhook_deliveries",
            "webhook_endpoints",
        ] {
            manager
                .drop_table(Table::drop().table(t).to_owned())
                .await?;
        }
        Ok(())
    }
}
