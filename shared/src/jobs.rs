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

/// A message id for the broker: at most 255 bytes (an AMQP short string),
/// cut on a character boundary. Long wamids from hostile input cannot make
/// a publish fail.
fn short_id(id: String) -> String {
    if id.len() <= 255 {
        return id;
    }
    let mut end = 255;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_owned()
}

/// Body of `status.receipt`: the receipts of one wamid are stored in
/// `message_status_events` (by the parse worker, before this job exists);
/// the status worker applies every pending one of them. So one job per
/// (config, wamid) covers any number of receipts, and a duplicate job finds
/// nothing left to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReceipt {
    pub config_id: Uuid,
    pub provider_message_id: String,
    /// The raw event that carried the receipts, for tracing.
    #[serde(default)]
    pub webhook_event_id: Option<Uuid>,
}

impl StatusReceipt {
    /// `lane_key` is `{phone_number_id}:{recipient}`, the lane of that
    /// customer's inbound messages too.
    pub fn job(&self, lane_key: String) -> crate::broker::OutboundJob {
        crate::broker::OutboundJob {
            event: STATUS_RECEIPT.to_owned(),
            lane_key,
            message_id: short_id(format!(
                "status:{}:{}",
                self.config_id, self.provider_message_id
            )),
            // Serialising a struct of ids and a string cannot fail.
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }
}

/// Body of `message.inbound`: a stored inbound message, for the scenario
/// worker. Published for every inbound message of an event each time the
/// event is processed (new or not), so consumers must be idempotent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageInbound {
    pub config_id: Uuid,
    pub message_id: Uuid,
    pub chat_id: Uuid,
    pub customer_id: Uuid,
    pub provider_message_id: String,
    /// Meta's message type as sent (`text`, `interactive`, ...).
    pub r#type: String,
    /// False when the message was already stored (a replay or redelivery).
    pub is_new: bool,
    #[serde(default)]
    pub webhook_event_id: Option<Uuid>,
}

impl MessageInbound {
    /// `lane_key` is `{phone_number_id}:{wa_id or user_id}`.
    pub fn job(&self, lane_key: String) -> crate::broker::OutboundJob {
        crate::broker::OutboundJob {
            event: MESSAGE_INBOUND.to_owned(),
            lane_key,
            message_id: short_id(format!("inbound:{}", self.message_id)),
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }
}

pub const REALTIME_MESSAGE_CREATED: &str = "message.created";
pub const REALTIME_MESSAGE_STATUS: &str = "message.status";
pub const REALTIME_CHAT_UPDATED: &str = "chat.updated";

/// One real-time update for the WebSocket clients: the event name, the ids
/// it is about, and a small summary in `data` (enough to update a list
/// without a read; the API serves the full row). `Broker::publish_realtime`
/// carries a JSON *array* of them ([`RealtimeEvent::encode`]): a batch of
/// 600 messages is a few publishes, not 1,200.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RealtimeEvent {
    /// `message.created`, `message.status` or `chat.updated`.
    pub event: String,
    pub config_id: Uuid,
    #[serde(default)]
    pub chat_id: Option<Uuid>,
    #[serde(default)]
    pub message_id: Option<Uuid>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The most events in one real-time publish (about 100 KB).
pub const REALTIME_BATCH: usize = 256;

impl RealtimeEvent {
    /// The body of one real-time publish: `events` as a JSON array.
    pub fn encode(events: &[RealtimeEvent]) -> Vec<u8> {
        // Serialising ids and JSON values cannot fail.
        serde_json::to_vec(events).unwrap_or_default()
    }

    /// `events` as publish bodies of at most [`REALTIME_BATCH`] each.
    pub fn encode_batches(events: &[RealtimeEvent]) -> Vec<Vec<u8>> {
        events.chunks(REALTIME_BATCH).map(Self::encode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_wamids_make_short_message_ids() {
        let job = StatusReceipt {
            config_id: Uuid::nil(),
            provider_message_id: "é".repeat(400),
            webhook_event_id: None,
        }
        .job("k".into());
        assert!(job.message_id.len() <= 255);
        let back: StatusReceipt = serde_json::from_slice(&job.body).expect("round trip");
        assert_eq!(back.provider_message_id.len(), 800);
    }
}
