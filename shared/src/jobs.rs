//! The jobs the pipeline passes through the broker: event names and their
//! JSON bodies. Bodies carry ids, not data: the database is the source of
//! truth, so any job can be rebuilt from it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::broker::OutboundJob;

pub const WEBHOOK_RECEIVED: &str = "webhook.received";
pub const STATUS_RECEIPT: &str = "status.receipt";
pub const MESSAGE_INBOUND: &str = "message.inbound";
pub const FOLLOWUP_DUE: &str = "followup.due";
pub const OUTBOUND_SEND: &str = "outbound.send";
pub const WEBHOOK_DELIVER: &str = "webhook.deliver";
pub const MEDIA_FETCH: &str = "media.fetch";

/// The work queues: each is consumed by one worker and carries one event.
/// A new worker adds its variant here and its job body below (the contract
/// between producers and the consumer), then registers itself in the
/// workers' registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    Parse,
    Status,
    Scenario,
    Followup,
    Outbound,
    Webhook,
    Media,
}

impl Queue {
    /// Every queue, in pipeline order.
    pub const ALL: [Queue; 7] = [
        Queue::Parse,
        Queue::Status,
        Queue::Scenario,
        Queue::Followup,
        Queue::Outbound,
        Queue::Webhook,
        Queue::Media,
    ];

    /// The queue's name: its worker's name, and the `W` of `P.W.N`.
    pub const fn name(self) -> &'static str {
        match self {
            Queue::Parse => "parse",
            Queue::Status => "status",
            Queue::Scenario => "scenario",
            Queue::Followup => "followup",
            Queue::Outbound => "outbound",
            Queue::Webhook => "webhook",
            Queue::Media => "media",
        }
    }

    /// The one event this queue carries.
    pub const fn event(self) -> &'static str {
        match self {
            Queue::Parse => WEBHOOK_RECEIVED,
            Queue::Status => STATUS_RECEIPT,
            Queue::Scenario => MESSAGE_INBOUND,
            Queue::Followup => FOLLOWUP_DUE,
            Queue::Outbound => OUTBOUND_SEND,
            Queue::Webhook => WEBHOOK_DELIVER,
            Queue::Media => MEDIA_FETCH,
        }
    }

    /// The queue named `name`, if any.
    pub fn from_name(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.name() == name)
    }

    /// The queue that carries `event`, if any.
    pub fn for_event(event: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.event() == event)
    }

    /// The queue names, comma separated, for error messages.
    pub fn names() -> String {
        Queue::ALL.map(Queue::name).join(", ")
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The lane key of a customer's work: `{phone_number_id}:{customer}`, where
/// the customer is the `wa_id` (or the business-scoped `user_id` when Meta
/// sends no number). Every producer builds it here, so a customer's
/// inbound messages, receipts and sends share one lane (invariant 6), and
/// the outbound pair limit keys on the same string.
pub fn lane_key(phone_number_id: &str, customer: &str) -> String {
    format!("{phone_number_id}:{customer}")
}

/// The `(phone_number_id, customer)` of a [`lane_key`], if it is one.
pub fn split_lane_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(':')
}

/// A job body that cannot be decoded: a permanent failure of that job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {event} job: {reason}")]
pub struct DecodeError {
    pub event: &'static str,
    pub reason: String,
}

/// One kind of job: its queue (and so its event), how it is keyed and how
/// it travels. Bodies carry ids, not data.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Sized + 'static {
    const QUEUE: Queue;

    /// Jobs with the same lane key are processed in order (DESIGN
    /// invariant 6): `{phone_number_id}:{customer}` for customer work.
    fn lane_key(&self) -> String;

    /// The broker message id: dedup and trace id, kept across retries.
    fn message_id(&self) -> String;

    /// The event name this job is published under.
    fn event() -> &'static str {
        Self::QUEUE.event()
    }

    /// The job as the broker publishes it.
    fn to_outbound(&self) -> OutboundJob {
        OutboundJob {
            event: Self::QUEUE.event().to_owned(),
            lane_key: self.lane_key(),
            message_id: short_id(self.message_id()),
            // Job bodies are structs of ids, strings and JSON values with
            // string keys: serialising them cannot fail.
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }

    /// The job from a delivery's body.
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(body).map_err(|e| DecodeError {
            event: Self::QUEUE.event(),
            reason: e.to_string(),
        })
    }
}

/// Body of `webhook.received`: a committed row of `webhook_events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookReceived {
    pub event_id: Uuid,
    /// `{phone_number_id}:{customer}` of the event's first message or
    /// status; jobs published before the field existed decode with "".
    #[serde(default)]
    pub lane_key: String,
}

impl Job for WebhookReceived {
    const QUEUE: Queue = Queue::Parse;

    fn lane_key(&self) -> String {
        self.lane_key.clone()
    }

    fn message_id(&self) -> String {
        self.event_id.to_string()
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
    /// `{phone_number_id}:{recipient}`, the lane of that customer's inbound
    /// messages too.
    #[serde(default)]
    pub lane_key: String,
}

impl Job for StatusReceipt {
    const QUEUE: Queue = Queue::Status;

    fn lane_key(&self) -> String {
        self.lane_key.clone()
    }

    fn message_id(&self) -> String {
        format!("status:{}:{}", self.config_id, self.provider_message_id)
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
    /// The `{phone_number_id}:{wa_id or user_id}` of any of the messages:
    /// they all map to its lane.
    #[serde(default)]
    pub lane_key: String,
}

impl Job for InboundMessages {
    const QUEUE: Queue = Queue::Scenario;

    fn lane_key(&self) -> String {
        self.lane_key.clone()
    }

    fn message_id(&self) -> String {
        let first = self
            .messages
            .first()
            .map(|m| m.message_id)
            .unwrap_or_default();
        format!("inbound:{first}:{}", self.messages.len())
    }
}

/// The most messages in one `message.inbound` job.
pub const INBOUND_BATCH: usize = 256;

impl InboundMessages {
    /// Groups `(lane key, message)` pairs by the lane they map to among
    /// `lanes`, keeping their order, at most [`INBOUND_BATCH`] per job.
    pub fn jobs(items: Vec<(String, MessageInbound)>, lanes: u16) -> Vec<OutboundJob> {
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
                            lane_key: key.clone(),
                        }
                        .to_outbound(),
                    );
                }
            }
        }
        jobs
    }
}

/// Body of `outbound.send`: what to do, and the lane of the recipient
/// (`{phone_number_id}:{wa_id}`) so one customer's sends keep their order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundSend {
    #[serde(flatten)]
    pub work: OutboundWork,
    #[serde(default)]
    pub lane_key: String,
}

/// The two kinds of `outbound.send` work, told apart by their field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutboundWork {
    /// Send a queued message of `messages`.
    Send { message_id: Uuid },
    /// Mark a customer's message read.
    MarkRead { mark_read: MarkRead },
}

/// Marking a customer's message read (and maybe showing typing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkRead {
    pub config_id: Uuid,
    /// The customer's message (its wamid).
    pub provider_message_id: String,
    /// Also show the typing indicator.
    #[serde(default)]
    pub typing: bool,
}

impl OutboundSend {
    /// The job of a queued message.
    pub fn message(message_id: Uuid, lane_key: String) -> Self {
        Self {
            work: OutboundWork::Send { message_id },
            lane_key,
        }
    }

    /// The job of a mark-as-read.
    pub fn mark_read(mark_read: MarkRead, lane_key: String) -> Self {
        Self {
            work: OutboundWork::MarkRead { mark_read },
            lane_key,
        }
    }
}

impl Job for OutboundSend {
    const QUEUE: Queue = Queue::Outbound;

    fn lane_key(&self) -> String {
        self.lane_key.clone()
    }

    fn message_id(&self) -> String {
        match &self.work {
            OutboundWork::Send { message_id } => format!("outbound:{message_id}"),
            OutboundWork::MarkRead { mark_read } => format!(
                "read:{}:{}",
                mark_read.config_id, mark_read.provider_message_id
            ),
        }
    }
}

/// Body of `followup.due`: a follow-up the scheduler claimed as due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupDue {
    pub follow_up_id: Uuid,
    pub config_id: Uuid,
    /// Reminders of one follow-up are one lane's work; the follow-up id is
    /// enough to spread them.
    #[serde(default)]
    pub lane_key: String,
}

impl Job for FollowupDue {
    const QUEUE: Queue = Queue::Followup;

    fn lane_key(&self) -> String {
        self.lane_key.clone()
    }

    fn message_id(&self) -> String {
        format!("followup:{}", self.follow_up_id)
    }
}

impl FollowupDue {
    /// The job of a claimed follow-up; its lane key is `followup:{id}`.
    pub fn new(follow_up_id: Uuid, config_id: Uuid) -> Self {
        Self {
            follow_up_id,
            config_id,
            lane_key: format!("followup:{follow_up_id}"),
        }
    }
}

/// Body of `webhook.deliver`: one row of `webhook_deliveries` (an event
/// for an outgoing webhook endpoint) to POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDeliver {
    pub delivery_id: Uuid,
}

impl Job for WebhookDeliver {
    const QUEUE: Queue = Queue::Webhook;

    /// Deliveries have no order to keep (Standard Webhooks promises none):
    /// the delivery id spreads them over the lanes, so one slow endpoint
    /// holds up one lane, not all.
    fn lane_key(&self) -> String {
        format!("webhook:{}", self.delivery_id)
    }

    fn message_id(&self) -> String {
        format!("webhook:{}", self.delivery_id)
    }
}

/// Body of `media.fetch`: fetch the media of one inbound message from
/// Meta into the media store. The parse worker publishes one for every
/// media message of an event each time it processes it (new or not): the
/// media worker does nothing for a message whose file is already settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaFetch {
    pub message_id: Uuid,
    pub config_id: Uuid,
    /// Meta's media id (`image.id`, `document.id`, ...).
    pub media_id: String,
}

impl Job for MediaFetch {
    const QUEUE: Queue = Queue::Media;

    /// Downloads have no order to keep: the message id spreads them over
    /// the lanes, so one big file holds up one lane, not a customer's chat.
    fn lane_key(&self) -> String {
        format!("media:{}", self.message_id)
    }

    fn message_id(&self) -> String {
        format!("media:{}", self.message_id)
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
    fn every_queue_has_one_event() {
        for q in Queue::ALL {
            assert_eq!(Queue::for_event(q.event()), Some(q));
            assert_eq!(Queue::from_name(q.name()), Some(q));
        }
        assert_eq!(Queue::for_event("webhook.received"), Some(Queue::Parse));
        assert_eq!(Queue::for_event("nope"), None);
        assert_eq!(Queue::from_name("nope"), None);
    }

    /// Each body round-trips through the broker's bytes under its queue's
    /// event, and a body of another job does not decode as it.
    #[test]
    fn jobs_round_trip_and_refuse_strangers() {
        let id = Uuid::now_v7();
        let send = OutboundSend::message(id, "1:2".into());
        let job = send.to_outbound();
        assert_eq!(job.event, OUTBOUND_SEND);
        assert_eq!(job.lane_key, "1:2");
        assert_eq!(job.message_id, format!("outbound:{id}"));
        assert_eq!(OutboundSend::decode(&job.body).expect("decode"), send);
        let mark = OutboundSend::mark_read(
            MarkRead {
                config_id: id,
                provider_message_id: "wamid.X".into(),
                typing: true,
            },
            "1:2".into(),
        );
        assert_eq!(
            OutboundSend::decode(&mark.to_outbound().body).expect("decode"),
            mark
        );
        // Bodies of before the lane key was carried still decode.
        let old = serde_json::json!({ "message_id": id }).to_string();
        assert_eq!(
            OutboundSend::decode(old.as_bytes()).expect("old body").work,
            OutboundWork::Send { message_id: id }
        );
        let hook = WebhookReceived {
            event_id: id,
            lane_key: "pn:1".into(),
        };
        assert_eq!(hook.to_outbound().event, WEBHOOK_RECEIVED);
        assert_eq!(
            WebhookReceived::decode(&hook.to_outbound().body).expect("decode"),
            hook
        );
        let err = StatusReceipt::decode(&hook.to_outbound().body).expect_err("not a receipt");
        assert_eq!(err.event, STATUS_RECEIPT);
        assert!(FollowupDue::decode(b"[]").is_err());
    }

    #[test]
    fn long_wamids_make_short_message_ids() {
        let job = StatusReceipt {
            config_id: Uuid::nil(),
            provider_message_id: "é".repeat(400),
            webhook_event_id: None,
            lane_key: "k".into(),
        }
        .to_outbound();
        assert!(job.message_id.len() <= 255);
        let back: StatusReceipt = serde_json::from_slice(&job.body).expect("round trip");
        assert_eq!(back.provider_message_id.len(), 800);
    }
}
