//! SeaORM entities for the whole schema (migrations/), one module per table.

pub mod agent_performance;
pub mod agents;
pub mod api_keys;
pub mod audit_log;
pub mod blocked_numbers;
pub mod calls;
pub mod chat_assignments;
pub mod chat_labels;
pub mod chats;
pub mod conversations;
pub mod customer_blocked_scenarios;
pub mod customers;
pub mod dead_letters;
pub mod events;
pub mod follow_ups;
pub mod idempotency_keys;
pub mod labels;
pub mod leases;
pub mod message_status_events;
pub mod messages;
pub mod scenario_items;
pub mod scenario_runs;
pub mod scenario_settings;
pub mod scenarios;
pub mod team_notes;
pub mod template_scenarios;
pub mod templates;
pub mod webhook_events;
pub mod whatsapp_configs;

/// Every entity under its table's name, for `use wapipe_shared::entities::prelude::*`.
pub mod prelude {
    pub use super::agent_performance::Entity as AgentPerformance;
    pub use super::agents::Entity as Agents;
    pub use super::api_keys::Entity as ApiKeys;
    pub use super::audit_log::Entity as AuditLog;
    pub use super::blocked_numbers::Entity as BlockedNumbers;
    pub use super::calls::Entity as Calls;
    pub use super::chat_assignments::Entity as ChatAssignments;
    pub use super::chat_labels::Entity as ChatLabels;
    pub use super::chats::Entity as Chats;
    pub use super::conversations::Entity as Conversations;
    pub use super::customer_blocked_scenarios::Entity as CustomerBlockedScenarios;
    pub use super::customers::Entity as Customers;
    pub use super::dead_letters::Entity as DeadLetters;
    pub use super::events::Entity as Events;
    pub use super::follow_ups::Entity as FollowUps;
    pub use super::idempotency_keys::Entity as IdempotencyKeys;
    pub use super::labels::Entity as Labels;
    pub use super::leases::Entity as Leases;
    pub use super::message_status_events::Entity as MessageStatusEvents;
    pub use super::messages::Entity as Messages;
    pub use super::scenario_items::Entity as ScenarioItems;
    pub use super::scenario_runs::Entity as ScenarioRuns;
    pub use super::scenario_settings::Entity as ScenarioSettings;
    pub use super::scenarios::Entity as Scenarios;
    pub use super::team_notes::Entity as TeamNotes;
    pub use super::template_scenarios::Entity as TemplateScenarios;
    pub use super::templates::Entity as Templates;
    pub use super::webhook_events::Entity as WebhookEvents;
    pub use super::whatsapp_configs::Entity as WhatsappConfigs;
}
