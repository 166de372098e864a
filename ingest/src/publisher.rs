//! After a batch commits, its events are published as `webhook.received`.
//! Publishes run concurrently (pipelined confirms) and never hold up the
//! answer to Meta. Confirmed ids are stamped `published_at` in batches, so
//! the relay knows which events still need a publish. A failed or skipped
//! publish loses nothing: the row stays `received` and the relay retries it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;
use wapipe_shared::broker::Broker;
use wapipe_shared::entities::webhook_events::{self, Column};
use wapipe_shared::jobs::{Job, WebhookReceived};

/// Publishes waiting for a confirm at once; past this, events are left to
/// the relay rather than piling up tasks while the broker is slow or down.
const MAX_IN_FLIGHT: usize = 4096;
const STAMP_BATCH: usize = 1000;
const STAMP_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Publisher {
    broker: Arc<dyn Broker>,
    permits: Arc<Semaphore>,
    stamped: mpsc::UnboundedSender<Uuid>,
}

impl Publisher {
    pub fn start(
        db: DatabaseConnection,
        broker: Arc<dyn Broker>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(stamp_loop(db, rx));
        // Export the series from the start, so alerts see 0 rather than nothing.
        for reason in ["broker", "backpressure"] {
            metrics::counter!(wapipe_shared::metrics::PUBLISH_FAILURES, "reason" => reason)
                .increment(0);
        }
        (
            Self {
                broker,
                permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                stamped: tx,
            },
            handle,
        )
    }

    /// Fire-and-forget publish of one committed event.
    pub fn publish(&self, event_id: Uuid, lane_key: String) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!(wapipe_shared::metrics::PUBLISH_FAILURES, "reason" => "backpressure")
                .increment(1);
            return;
        };
        let broker = self.broker.clone();
        let stamped = self.stamped.clone();
        tokio::spawn(async move {
            match broker
                .publish(WebhookReceived { event_id, lane_key }.to_outbound())
                .await
            {
                Ok(()) => {
                    let _ = stamped.send(event_id);
                }
                Err(e) => {
                    metrics::counter!(wapipe_shared::metrics::PUBLISH_FAILURES, "reason" => "broker").increment(1);
                    tracing::debug!(%event_id, error = %e, "publish failed; the relay will re-publish");
                }
            }
            drop(permit);
        });
    }

    /// Waits for in-flight publishes (bounded by `timeout`), for shutdown.
    pub async fn drain(&self, timeout: Duration) {
        let _ =
            tokio::time::timeout(timeout, self.permits.acquire_many(MAX_IN_FLIGHT as u32)).await;
    }
}

async fn stamp_loop(db: DatabaseConnection, mut rx: mpsc::UnboundedReceiver<Uuid>) {
    let mut buf = Vec::with_capacity(STAMP_BATCH);
    loop {
        if rx.recv_many(&mut buf, STAMP_BATCH).await == 0 {
            break;
        }
        tokio::time::sleep(STAMP_EVERY).await;
        while buf.len() < STAMP_BATCH {
            match rx.try_recv() {
                Ok(id) => buf.push(id),
                Err(_) => break,
            }
        }
        stamp(&db, &buf).await;
        buf.clear();
    }
}

/// Marks events as handed to the broker. Best effort: a missed stamp only
/// means the relay publishes the event once more, which workers absorb.
pub async fn stamp(db: &DatabaseConnection, ids: &[Uuid]) {
    if ids.is_empty() {
        return;
    }
    // Power-of-two chunks: a few statement shapes, all cached (see pow2_chunks).
    for chunk in wapipe_shared::db::pow2_chunks(ids.to_vec(), 1024) {
        let res = webhook_events::Entity::update_many()
            .col_expr(Column::PublishedAt, Expr::value(Utc::now()))
            .filter(Column::Id.is_in(chunk))
            .exec(db)
            .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, n = ids.len(), "could not stamp published events");
            return;
        }
    }
}
