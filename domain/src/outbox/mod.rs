//! The shared outbox: how anything that sends (agents' API, scenarios,
//! reminders, `wapipe send`) queues a message for the outbound worker.
//!
//! Owns: the typed content and Meta's request body ([`content`]); queueing
//! a message as a `queued` row of `messages` with its customer and chat,
//! then publishing its `outbound.send` job ([`queue`]); the 24-hour
//! customer-service window ([`window`]); and the errors of all three.
//!
//! A bot reply carries an [`Answer`]: the inbound message it answers and
//! its place among that message's replies. `messages` has a unique key on
//! that pair, so a redelivered or replayed inbound message can never queue
//! the same reply twice (DESIGN invariant 3: uniqueness in the database,
//! never check-then-insert).

pub mod content;
pub mod queue;
pub mod window;

use uuid::Uuid;

pub use content::{ContentError, OutboundContent};
pub use queue::{
    GROUP_PREFIX, NewOutbound, QueuedMessage, Recipient, address_of, dispatched_at, enqueue,
    enqueue_all, normalize_wa_id, queue_each, queue_message, queue_messages, send, send_all,
    stamp_dispatched,
};
pub use window::{customer_window_open, open_windows, window_open};

/// Meta's code for a free-form message outside the 24-hour window; we
/// refuse such sends locally with the same code.
pub const CODE_WINDOW_CLOSED: &str = "131047";
pub const WINDOW_CLOSED_TITLE: &str = "outside the 24-hour window; use a template";

/// Meta's code for a marketing message to a user who stopped marketing
/// messages; we refuse such sends locally with the same code
/// ([`crate::templates::marketing_refused`]).
pub const CODE_MARKETING_OPTED_OUT: &str = "131050";

/// What a reply answers: the inbound message, and the reply's place among
/// that message's replies (0, 1, 2 …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Answer {
    pub message_id: Uuid,
    pub seq: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "{0:?} is not a WhatsApp number: expected 6 to 15 digits after an optional +, \
         or a business-scoped user id (two letters, a dot, then letters and digits)"
    )]
    BadPhone(String),
    /// Refused before Meta sees it (a marketing opt-out, an authentication
    /// template to a BSUID): Meta's code or ours, and why.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("invalid message: {0}")]
    Content(#[from] ContentError),
    #[error("no WhatsApp config with id {0}")]
    UnknownConfig(Uuid),
    #[error("config {0} is removed or inactive")]
    InactiveConfig(Uuid),
    #[error("outbound settings: {0}")]
    Config(String),
    #[error("cannot decrypt the access token of config {config}: {reason}")]
    Secret { config: Uuid, reason: String },
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("broker: {0}")]
    Broker(#[from] wapipe_shared::broker::BrokerError),
}

impl From<crate::configs::ConfigError> for OutboxError {
    fn from(e: crate::configs::ConfigError) -> Self {
        use crate::configs::ConfigError;
        match e {
            ConfigError::Secret { config, reason } => OutboxError::Secret { config, reason },
            ConfigError::Db(e) => OutboxError::Db(e),
            ConfigError::Tenant(e) => OutboxError::Config(e.to_string()),
        }
    }
}
