//! Group commit of raw webhook events. Concurrent requests hand their event
//! to one batcher; it writes them as one multi-row INSERT … ON CONFLICT DO
//! NOTHING and answers each request when its batch has committed. Several
//! batches may be in flight at once, so while one commits the next fills up:
//! under load batches grow by themselves, and an idle receiver adds no wait
//! beyond the (short, configurable) window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, Set};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;
use wapipe_shared::entities::webhook_events::{self, EventStatus};

/// One event to store, as received.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub body_sha256: String,
    pub raw_body: Vec<u8>,
    pub signature: Option<String>,
    pub object: Option<String>,
    pub field: Option<String>,
    pub config_id: Option<Uuid>,
    pub status: EventStatus,
    pub error: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The ordered lane its `webhook.received` job goes to.
    pub lane_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Committed now, under this request's id.
    Inserted,
    /// The same body (sha256) was already stored.
    Duplicate,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("the receiver is shutting down")]
    ShuttingDown,
}

type Reply = oneshot::Sender<Result<Stored, StoreError>>;

#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<(NewEvent, Reply)>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub window: Duration,
    pub max: usize,
    /// Batches committing at the same time.
    pub in_flight: usize,
}

/// Called with the events a batch inserted (not duplicates), after commit.
pub type OnCommit = Arc<dyn Fn(Vec<NewEvent>) + Send + Sync>;

impl GroupCommit {
    /// Starts the batcher. It ends when every `GroupCommit` clone is dropped,
    /// after committing what it holds: a graceful shutdown loses nothing.
    pub fn start(
        db: DatabaseConnection,
        settings: BatchSettings,
        on_commit: OnCommit,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.max.max(1) * 8);
        let handle = tokio::spawn(batcher(db, settings, rx, on_commit));
        (Self { tx }, handle)
    }

    pub async fn store(&self, ev: NewEvent) -> Result<Stored, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((ev, reply))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }
}

async fn batcher(
    db: DatabaseConnection,
    settings: BatchSettings,
    mut rx: mpsc::Receiver<(NewEvent, Reply)>,
    on_commit: OnCommit,
) {
    let max = settings.max.max(1);
    let permits = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let mut batch = Vec::with_capacity(max);
        if rx.recv_many(&mut batch, max).await == 0 {
            break;
        }
        let deadline = Instant::now() + settings.window;
        while batch.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let room = max - batch.len();
            match tokio::time::timeout(left, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Waiting for a commit slot is where batches grow under load.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        if batch.len() < max {
            while let Ok(item) = rx.try_recv() {
                batch.push(item);
                if batch.len() >= max {
                    break;
                }
            }
        }
        let db = db.clone();
        let on_commit = on_commit.clone();
        tasks.spawn(async move {
            commit_batch(&db, batch, &on_commit).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn commit_batch(
    db: &DatabaseConnection,
    batch: Vec<(NewEvent, Reply)>,
    on_commit: &OnCommit,
) {
    metrics::histogram!(wapipe_shared::metrics::INGEST_BATCH_SIZE).record(batch.len() as f64);
    // The same body twice in one batch: the first copy is the one stored.
    let mut first_by_sha: HashMap<String, usize> = HashMap::new();
    let mut unique_idx = Vec::with_capacity(batch.len());
    for (i, (ev, _)) in batch.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(v) =
            first_by_sha.entry(ev.body_sha256.clone())
        {
            v.insert(i);
            unique_idx.push(i);
        }
    }
    let result = insert(db, unique_idx.iter().map(|&i| &batch[i].0)).await;
    match result {
        Ok(inserted_ids) => {
            let inserted: std::collections::HashSet<Uuid> = inserted_ids.into_iter().collect();
            let mut committed = Vec::new();
            for (i, (ev, reply)) in batch.into_iter().enumerate() {
                let first = first_by_sha.get(&ev.body_sha256).copied().unwrap_or(i);
                let outcome = if first == i && inserted.contains(&ev.id) {
                    committed.push(ev);
                    Stored::Inserted
                } else {
                    Stored::Duplicate
                };
                let _ = reply.send(Ok(outcome));
            }
            if !committed.is_empty() {
                on_commit(committed);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook batch insert failed; answering 503");
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
            }
        }
    }
}

async fn insert<'a>(
    db: &DatabaseConnection,
    events: impl Iterator<Item = &'a NewEvent>,
) -> Result<Vec<Uuid>, DbErr> {
    let models: Vec<webhook_events::ActiveModel> = events
        .map(|ev| webhook_events::ActiveModel {
            id: Set(ev.id),
            created_at: Set(ev.received_at),
            updated_at: Set(ev.received_at),
            config_id: Set(ev.config_id),
            body_sha256: Set(ev.body_sha256.clone()),
            raw_body: Set(ev.raw_body.clone()),
            signature: Set(ev.signature.clone()),
            object: Set(ev.object.clone()),
            field: Set(ev.field.clone()),
            status: Set(ev.status),
            error: Set(ev.error.clone()),
            attempts: Set(0),
            received_at: Set(ev.received_at),
            published_at: Set(None),
            processed_at: Set(None),
            processed_data: Set(None),
            // event_type, chat_id, message_id: set by the parse worker.
            ..Default::default()
        })
        .collect();
    if models.is_empty() {
        return Ok(Vec::new());
    }
    // Power-of-two chunks keep the INSERT's shapes few and cached (see
    // `pow2_chunks`); one transaction keeps the batch all-or-nothing.
    let chunks = wapipe_shared::db::pow2_chunks(models, 256);
    if chunks.len() == 1 {
        return insert_chunk(db, chunks.into_iter().flatten().collect()).await;
    }
    let txn = wapipe_shared::db::begin_write(db).await?;
    let mut ids = Vec::new();
    for chunk in chunks {
        ids.extend(insert_chunk(&txn, chunk).await?);
    }
    txn.commit().await?;
    Ok(ids)
}

async fn insert_chunk<C: ConnectionTrait>(
    db: &C,
    models: Vec<webhook_events::ActiveModel>,
) -> Result<Vec<Uuid>, DbErr> {
    let res = webhook_events::Entity::insert_many(models)
        .on_conflict(
            OnConflict::column(webhook_events::Column::BodySha256)
                .do_nothing()
                .to_owned(),
        )
        .exec_with_returning_keys(db)
        .await;
    match res {
        Ok(ids) => Ok(ids),
        // Every row of the chunk was a duplicate.
        Err(DbErr::RecordNotInserted) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
