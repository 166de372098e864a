//! The jobs the pipeline passes through the broker: event names and their
//! JSON bodies. Bodies carry ids, not data: the database is the source of
//! truth, so any job can be rebuilt from it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const WEBHOOK_RECEIVED: &str = "webhook.received";
pub const STATUS_RECEIPT: &str = "status.receipt";
pub const MESSAGE_INBOUND: &str = "message.inbound";
pub const FOLLOWUP_DUE: &str = "followup.due";
pub const OUTBOUND_SEND: &str = "outbound.send";

/// Body of `webhook.received`: a committed row of `webhook_events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookReceived {
    pub event_id: Uuid,
}

impl WebhookReceived {
    pub fn job(event_id: Uuid, lane_key: String) -> crate::broker::OutboundJob {
        crate::broker::OutboundJob {
            event: WEBHOOK_RECEIVED.to_owned(),
            lane_key,
            message_id: event_id.to_string(),
            // Serialising a struct of one Uuid cannot fail.
            body: serde_json::to_vec(&WebhookReceived { event_id }).unwrap_or_default(),
        }
    }
}
