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

/// One stored inbound message, for the scenario worker: an item of a
/// `message.inbound` job ([`InboundMessages`]). Published for every inbound
/// message of an event each time the event is processed (new or not), so
/// consumers must be idempotent.
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

/// Body of `message.inbound`: inbound messages of customers whose lane keys
/// share one lane, in the order they were processed (so each customer's
/// messages stay in order, DESIGN invariant 6). One job per lane per parse
/// batch, not one per message: at thousands of messages a second, a
/// confirmed publish each was most of RabbitMQ's work. A consumer handles
/// the items in order and must be idempotent per message (a retry brings
/// the whole job back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboundMessages {
    pub messages: Vec<MessageInbound>,
}

/// The most messages in one `message.inbound` job.
pub const INBOUND_BATCH: usize = 256;

impl InboundMessages {
    /// `lane_key` is the `{phone_number_id}:{wa_id or user_id}` of any of
    /// the messages: they all map to its lane.
    pub fn job(&self, lane_key: String) -> crate::broker::OutboundJob {
        let first = self
            .messages
            .first()
            .map(|m| m.message_id)
            .unwrap_or_default();
        crate::broker::OutboundJob {
            event: MESSAGE_INBOUND.to_owned(),
            lane_key,
            message_id: short_id(format!("inbound:{first}:{}", self.messages.len())),
            // Serialising ids and strings cannot fail.
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }

    /// Groups `(lane key, message)` pairs by the lane they map to among
    /// `lanes`, keeping their order, at most [`INBOUND_BATCH`] per job.
    pub fn jobs(
        items: Vec<(String, MessageInbound)>,
        lanes: u16,
    ) -> Vec<crate::broker::OutboundJob> {
        let mut order: Vec<u16> = Vec::new();
        let mut by_lane: std::collections::HashMap<u16, (String, Vec<MessageInbound>)> =
            std::collections::HashMap::new();
        for (key, m) in items {
            let lane = crate::broker::lane_for(&key, lanes);
            let entry = by_lane.entry(lane).or_insert_with(|| {
                order.push(lane);
                (key, Vec::new())
            });
            entry.1.push(m);
        }
        let mut jobs = Vec::new();
        for lane in order {
            if let Some((key, messages)) = by_lane.remove(&lane) {
                for chunk in messages.chunks(INBOUND_BATCH) {
                    jobs.push(
                        InboundMessages {
                            messages: chunk.to_vec(),
                        }
                        .job(key.clone()),
                    );
                }
            }
        }
        jobs
    }
}

/// Body of `followup.due`: a follow-up a scheduler claimed (its row holds
/// the claim; see `wapipe_domain::followups`). The follow-up worker reminds
/// its agent once, however many times the job is delivered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FollowupDue {
    pub follow_up_id: Uuid,
    pub config_id: Uuid,
    /// `followup:{follow_up_id}`: reminders need no order between them, so
    /// they spread over every lane.
    pub lane_key: String,
}

impl FollowupDue {
    pub fn new(follow_up_id: Uuid, config_id: Uuid) -> Self {
        Self {
            follow_up_id,
            config_id,
            lane_key: format!("followup:{follow_up_id}"),
        }
    }

    pub fn job(&self) -> crate::broker::OutboundJob {
        crate::broker::OutboundJob {
            event: FOLLOWUP_DUE.to_owned(),
            lane_key: self.lane_key.clone(),
            message_id: format!("followup:{}", self.follow_up_id),
            // Serialising ids and a short string cannot fail.
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }
}

pub const REALTIME_MESSAGE_CREATED: &str = "message.created";
pub const REALTIME_MESSAGE_STATUS: &str = "message.status";
pub const REALTIME_CHAT_UPDATED: &str = "chat.updated";
/// A follow-up fell due and its agent was reminded.
pub const REALTIME_FOLLOWUP_REMINDER: &str = "followup.reminder";

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

    fn inbound(n: u128) -> MessageInbound {
        MessageInbound {
            config_id: Uuid::nil(),
            message_id: Uuid::from_u128(n),
            chat_id: Uuid::nil(),
            customer_id: Uuid::from_u128(n % 7),
            provider_message_id: format!("wamid.{n}"),
            r#type: "text".into(),
            is_new: true,
            webhook_event_id: None,
        }
    }

    /// Every message in exactly one job; a job's messages all map to its
    /// lane and keep their order; no job over the cap.
    #[test]
    fn inbound_jobs_group_by_lane_in_order() {
        let lanes = 4;
        let items: Vec<(String, MessageInbound)> = (0..700u128)
            .map(|n| (format!("pn:{}", n % 7), inbound(n)))
            .collect();
        let key_of: std::collections::HashMap<Uuid, String> = items
            .iter()
            .map(|(k, m)| (m.message_id, k.clone()))
            .collect();
        let jobs = InboundMessages::jobs(items, lanes);
        let mut seen = Vec::new();
        for job in &jobs {
            assert_eq!(job.event, MESSAGE_INBOUND);
            let body: InboundMessages = serde_json::from_slice(&job.body).expect("body");
            assert!(!body.messages.is_empty() && body.messages.len() <= INBOUND_BATCH);
            let lane = crate::broker::lane_for(&job.lane_key, lanes);
            for m in &body.messages {
                assert_eq!(crate::broker::lane_for(&key_of[&m.message_id], lanes), lane);
            }
            assert!(
                body.messages
                    .windows(2)
                    .all(|w| w[0].message_id < w[1].message_id)
            );
            seen.extend(body.messages.iter().map(|m| m.message_id.as_u128()));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..700).collect::<Vec<_>>());
        // 7 keys over at most 4 lanes, each lane cut at the cap.
        assert!(jobs.len() <= 4 + 700 / INBOUND_BATCH);
    }

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
