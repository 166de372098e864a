//! wapipe's schema as one ordered list of sea-orm migrations, applied the
//! same way on PostgreSQL and SQLite (`wapipe migrate`, or `wapipe serve` in
//! embedded mode).

pub use sea_orm_migration::prelude::*;

mod alter;

mod m20261121_000001_init;
mod m20261121_000003_outbound;
mod m20261121_000004_effects_and_plans;
mod m20261129_000005_outbox_answers;
mod m20261129_000006_scenarios_seed000;
mod m20261129_000007_followups_seed002;
mod m20261129_000008_api_seed002;
mod m20261130_000009_responses_names_leases;
mod m20261206_000010_events;
mod m20261207_000011_chats_sort_index;
mod m20261208_000012_webhook_endpoints;
mod m20261209_000014_meta_webhooks;
mod m20261210_000015_media;
mod m20261210_000016_identities;
mod m20261211_000017_groups;

/// A hash of these migrations' sources as compiled (see build.rs): what
/// the test kit names its migrated templates by.
pub const SOURCE_HASH: &str = env!("WAPIPE_MIGRATIONS_SOURCE_HASH");

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_init::Migration),
            Box::new(m20261121_000003_outbound::Migration),
            Box::new(m20261121_000004_effects_and_plans::Migration),
            Box::new(m20261129_000005_outbox_answers::Migration),
            Box::new(m20261129_000006_scenarios_seed000::Migration),
            Box::new(m20261129_000007_followups_seed002::Migration),
            Box::new(m20261129_000008_api_seed002::Migration),
            Box::new(m20261130_000009_responses_names_leases::Migration),
            Box::new(m20261206_000010_events::Migration),
            Box::new(m20261207_000011_chats_sort_index::Migration),
            Box::new(m20261208_000012_webhook_endpoints::Migration),
            Box::new(m20261209_000014_meta_webhooks::Migration),
            Box::new(m20261210_000015_media::Migration),
            Box::new(m20261210_000016_identities::Migration),
            Box::new(m20261211_000017_groups::Migration),
        ]
    }
}
