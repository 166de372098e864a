//! Fan-out: what a batch announces once its rows are committed
//! (`status.receipt` and `message.inbound` jobs, real-time events), and
//! publishing it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;
use wapipe_shared::broker::{Broker, OutboundJob};
use wapipe_shared::db::pad_pow2;
use wapipe_shared::entities::chats;
use wapipe_shared::jobs::{
    InboundMessages, Job, MediaFetch, MessageInbound, REALTIME_CHAT_UPDATED,
    REALTIME_MESSAGE_CREATED, RealtimeEvent, StatusReceipt, lane_key,
};

use super::messages::InboundStored;
use super::route::{PendingMessage, PendingStatus};
use crate::runtime::JobError;

/// Fan-out publishes in flight per batch: enough to hide publisher-confirm
/// latency on a 1000-status body or a batch of events without flooding the
/// channel.
const PUBLISH_CONCURRENCY: usize = 128;

/// Everything to publish once the rows are committed.
#[derive(Default)]
pub(super) struct FanOut {
    jobs: Vec<OutboundJob>,
    /// `message.inbound` items with their lane keys, sent grouped by lane.
    inbound: Vec<(String, MessageInbound)>,
    realtime: Vec<RealtimeEvent>,
    /// Chats that changed: a `chat.updated` each, read after the commit.
    chats: Vec<Uuid>,
    status_keys: HashSet<(Uuid, String)>,
    pub(super) lags: Vec<f64>,
}

impl FanOut {
    /// Queues what a stored inbound message announces: `message.inbound`
    /// on its lane (new or not: consumers are idempotent), a
    /// `chat.updated` for its chat, and for a new one `message.created` and
    /// its end-to-end lag.
    pub(super) fn message(&mut self, p: &PendingMessage, s: &InboundStored, now: DateTime<Utc>) {
        let m = &p.m;
        if s.is_new {
            if let Some(ts) = m.timestamp {
                self.lags
                    .push(std::cmp::max((now - ts).num_milliseconds(), 0) as f64 / 1000.0);
            }
            self.realtime.push(RealtimeEvent {
                event: REALTIME_MESSAGE_CREATED.to_owned(),
                config_id: p.config_id,
                chat_id: Some(s.chat_id),
                message_id: Some(s.message_id),
                data: json!({
                    "provider_message_id": m.provider_message_id,
                    "type": m.kind,
                    "direction": "inbound",
                    "text": m.text,
                    "timestamp": m.timestamp,
                }),
            });
        }
        if !self.chats.contains(&s.chat_id) {
            self.chats.push(s.chat_id);
        }
        let job = MessageInbound {
            config_id: p.config_id,
            message_id: s.message_id,
            chat_id: s.chat_id,
            customer_id: s.customer_id,
            provider_message_id: m.provider_message_id.clone(),
            r#type: m.kind.clone(),
            is_new: s.is_new,
            webhook_event_id: Some(p.event_id),
        };
        self.inbound.push((p.lane_key.clone(), job));
        // Its file, fetched by the media worker (which does nothing for a
        // file already settled, so replays cost a lookup, not a download).
        if wapipe_domain::media::INBOUND_TYPES.contains(&m.kind.as_str())
            && crate::registry::consumes(MediaFetch::QUEUE)
            && let Some(media_id) = m
                .media
                .as_ref()
                .and_then(|v| v.get("id"))
                .and_then(|v| v.as_str())
                .filter(|id| !id.is_empty())
        {
            self.jobs.push(
                MediaFetch {
                    message_id: s.message_id,
                    config_id: p.config_id,
                    media_id: media_id.to_owned(),
                }
                .to_outbound(),
            );
        }
    }

    /// Queues one `status.receipt` job per (config, wamid) of the batch's
    /// stored receipts (`stored`: `None` when it names no message): the
    /// status worker applies all pending receipts of a wamid at once.
    pub(super) fn status(&mut self, p: &PendingStatus<'_>, stored: Option<bool>) {
        let st = &p.st;
        let (Some(_), Some(wamid)) = (stored, st.id.clone()) else {
            return;
        };
        if self.status_keys.insert((p.config_id, wamid.clone())) {
            let recipient = st
                .recipient_id
                .as_deref()
                .or(st.recipient_user_id.as_deref())
                .unwrap_or(wamid.as_str());
            let job = StatusReceipt {
                config_id: p.config_id,
                provider_message_id: wamid.clone(),
                webhook_event_id: Some(p.event_id),
                lane_key: lane_key(&p.phone, recipient),
            };
            self.jobs.push(job.to_outbound());
        }
    }
}

/// Publishes the jobs, the real-time events and a `chat.updated` per
/// touched chat. Any failure is retryable: the event stays `received`, is
/// processed again (a no-op for the rows) and everything is re-published.
pub(super) async fn publish(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    fan: FanOut,
) -> Result<(), JobError> {
    let publish_err =
        |e: wapipe_shared::broker::BrokerError| JobError::Retryable(format!("publish: {e}"));
    let mut jobs = fan.jobs;
    // Only what a registered worker consumes: a queue nobody reads grows
    // without bound (RabbitMQ) or in memory (embedded).
    if crate::registry::consumes(InboundMessages::QUEUE) {
        jobs.extend(InboundMessages::jobs(fan.inbound, broker.lanes()));
    }
    let mut realtime = fan.realtime;
    if !fan.chats.is_empty() {
        let rows = chats::Entity::find()
            .filter(chats::Column::Id.is_in(pad_pow2(fan.chats)))
            .all(db)
            .await
            .map_err(JobError::from)?;
        realtime.extend(rows.into_iter().map(|c| RealtimeEvent {
            event: REALTIME_CHAT_UPDATED.to_owned(),
            config_id: c.config_id,
            chat_id: Some(c.id),
            message_id: c.last_message_id,
            data: json!({
                "customer_id": c.customer_id,
                "customer_name": c.customer_name,
                "unread_count": c.unread_count,
                "last_message": c.last_message,
                "last_message_time": c.last_message_time,
                "total_messages": c.total_messages,
            }),
        }));
    }
    // The real-time messages wake the API's events pollers: they go out
    // beside the jobs, not after every job's confirm, so an agent's screen
    // does not wait for the broker's round trips of work it does not see.
    let jobs = stream::iter(jobs)
        .map(|job| broker.publish(job))
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<()>>();
    let realtime = stream::iter(RealtimeEvent::encode_batches(&realtime))
        .map(|body| broker.publish_realtime(body))
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<()>>();
    futures::try_join!(jobs, realtime).map_err(publish_err)?;
    Ok(())
}
