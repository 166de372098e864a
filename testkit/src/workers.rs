//! The worker-level environment: a migrated database per test
//! (PostgreSQL or SQLite), an embedded broker on it, a config, and helpers
//! to store a raw event and process it the way the parse worker does. No
//! mocks: the real schema on both backends.

use std::sync::Arc;

use chrono::Utc;
use futures::FutureExt;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;
pub use wapipe_shared::broker::Broker;
use wapipe_shared::broker::{BrokerSettings, Delivery, EmbeddedBroker};
use wapipe_shared::crypto::{SecretKey, sha256_hex};
use wapipe_shared::entities::webhook_events::{self, EventStatus};
use wapipe_shared::entities::{
    chats, conversations, customers, message_status_events, messages, whatsapp_configs,
};
use wapipe_workers::parse::{self, Settled};

pub use crate::build::{
    CUSTOMER, PHONE, PHONE_NUMBER_ID, WABA, WABA_ID, envelope, field_event, fixture,
    messages_value, status_event, text_event, text_msg,
};
use crate::db::{TempDir, TestDb, migrated};
pub use crate::db::{add_config, add_template};
pub use crate::{Backend, KEY};

pub struct Env {
    pub backend: Backend,
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    /// The same broker, for `subscribe_realtime`.
    pub embedded: EmbeddedBroker,
    pub config_id: Uuid,
    _dir: Option<TempDir>,
}

/// A migrated database on `backend` (a fresh clone), an embedded broker on
/// it, and the test config.
pub async fn env(backend: Backend) -> Env {
    let TestDb { db, dir, .. } = migrated(backend, 8).await;
    let embedded = EmbeddedBroker::new(
        &BrokerSettings {
            amqp_url: None,
            prefix: "t".into(),
            lanes: 2,
            prefetch: 8,
        },
        db.clone(),
    );
    let broker: Arc<dyn Broker> = Arc::new(embedded.clone());
    let config_id = add_config(&db, PHONE, WABA, "Test Co").await;
    Env {
        backend,
        db,
        broker,
        embedded,
        config_id,
        _dir: dir,
    }
}

impl Env {
    /// Stores a raw event as ingest would (status `received`, tied to the
    /// test config) and returns its id.
    pub async fn store_raw(&self, raw: &[u8]) -> Uuid {
        let id = Uuid::now_v7();
        let now = Utc::now();
        webhook_events::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(Some(self.config_id)),
            // Unique per row here: tests store the same body twice on purpose.
            body_sha256: Set(format!("{}-{id}", sha256_hex(raw))),
            raw_body: Set(raw.to_vec()),
            signature: Set(None),
            object: Set(None),
            field: Set(None),
            status: Set(EventStatus::Received),
            error: Set(None),
            attempts: Set(0),
            received_at: Set(now),
            published_at: Set(None),
            processed_at: Set(None),
            processed_data: Set(None),
            ..Default::default()
        }
        .insert(&self.db)
        .await
        .expect("store event");
        id
    }

    pub async fn store(&self, body: &Value) -> Uuid {
        self.store_raw(body.to_string().as_bytes()).await
    }

    pub async fn process(&self, id: Uuid) -> Settled {
        parse::process_event(&self.db, self.broker.as_ref(), id)
            .await
            .expect("process event")
    }

    /// Stores and processes a body; returns the event id.
    pub async fn post(&self, body: &Value) -> Uuid {
        let id = self.store(body).await;
        let settled = self.process(id).await;
        assert!(
            matches!(settled, Settled::Processed | Settled::Ignored),
            "{settled:?}"
        );
        id
    }

    /// What `wapipe replay` does to an event: back to `received`.
    pub async fn reset(&self, id: Uuid) {
        webhook_events::Entity::update_many()
            .col_expr(
                webhook_events::Column::Status,
                sea_orm::sea_query::Expr::value(EventStatus::Received.as_str()),
            )
            .filter(webhook_events::Column::Id.eq(id))
            .exec(&self.db)
            .await
            .expect("reset");
    }

    pub async fn event(&self, id: Uuid) -> webhook_events::Model {
        webhook_events::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .expect("query")
            .expect("event exists")
    }

    pub async fn message(&self, wamid: &str) -> messages::Model {
        self.message_opt(wamid)
            .await
            .unwrap_or_else(|| panic!("no message {wamid}"))
    }

    pub async fn message_opt(&self, wamid: &str) -> Option<messages::Model> {
        messages::Entity::find()
            .filter(messages::Column::ProviderMessageId.eq(wamid))
            .one(&self.db)
            .await
            .expect("query")
    }

    pub async fn chats(&self) -> Vec<chats::Model> {
        chats::Entity::find()
            .order_by_asc(chats::Column::Id)
            .all(&self.db)
            .await
            .expect("query")
    }

    pub async fn customers(&self) -> Vec<customers::Model> {
        customers::Entity::find()
            .order_by_asc(customers::Column::Id)
            .all(&self.db)
            .await
            .expect("query")
    }

    pub async fn conversations(&self) -> Vec<conversations::Model> {
        conversations::Entity::find()
            .order_by_asc(conversations::Column::OpenedAt)
            .all(&self.db)
            .await
            .expect("query")
    }

    pub async fn status_events(&self, wamid: &str) -> Vec<message_status_events::Model> {
        message_status_events::Entity::find()
            .filter(message_status_events::Column::ProviderMessageId.eq(wamid))
            .order_by_asc(message_status_events::Column::Timestamp)
            .all(&self.db)
            .await
            .expect("query")
    }

    pub async fn count_messages(&self) -> u64 {
        messages::Entity::find()
            .count(&self.db)
            .await
            .expect("count")
    }

    /// Every count the parse worker keeps, for before/after comparisons.
    pub async fn counts(&self) -> Value {
        let chats: Vec<Value> = self
            .chats()
            .await
            .into_iter()
            .map(|c| {
                json!([
                    c.unread_count,
                    c.total_messages,
                    c.customer_messages,
                    c.last_message,
                    c.last_message_id,
                    c.last_message_time
                ])
            })
            .collect();
        let convs: Vec<Value> = self
            .conversations()
            .await
            .into_iter()
            .map(|c| json!([c.id, c.status, c.message_count, c.opened_at, c.expires_at]))
            .collect();
        let customers: Vec<Value> = self
            .customers()
            .await
            .into_iter()
            .map(|c| json!([c.id, c.wa_id, c.user_id, c.total_chats]))
            .collect();
        let status_events = message_status_events::Entity::find()
            .count(&self.db)
            .await
            .expect("count");
        let configs = whatsapp_configs::Entity::find()
            .count(&self.db)
            .await
            .expect("count");
        let msgs: Vec<Value> = messages::Entity::find()
            .order_by_asc(messages::Column::Id)
            .all(&self.db)
            .await
            .expect("query")
            .into_iter()
            .map(|m| {
                json!([
                    m.id,
                    m.provider_message_id,
                    m.text,
                    m.reactions,
                    m.edit_history,
                    m.is_deleted,
                    m.conversation_id,
                    m.status
                ])
            })
            .collect();
        json!({"messages": msgs, "chats": chats, "conversations": convs, "customers": customers,
               "status_events": status_events, "configs": configs})
    }

    /// The jobs waiting for `worker` (embedded broker), acknowledged:
    /// `(lane_key, body)` each.
    pub async fn take_jobs(&self, worker: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for d in self.deliveries(worker).await {
            let body = serde_json::from_slice(&d.body).expect("json job");
            out.push((d.lane_key.clone(), body));
            d.ack().await.expect("ack");
        }
        out
    }

    /// The deliveries waiting for `worker`, unsettled (for `run_one`).
    /// The embedded broker's publish has queued the job when it returns,
    /// so what is ready now is all there is: no lane is watched for
    /// stragglers.
    pub async fn deliveries(&self, worker: &str) -> Vec<Delivery> {
        let queue = wapipe_shared::jobs::Queue::from_name(worker).expect("a queue name");
        let mut lanes = self.broker.consume(queue).await.expect("consume");
        let mut out = Vec::new();
        for lane in lanes.iter_mut() {
            // Unconstrained: tokio's cooperative budget must not make a
            // ready lane look empty.
            while let Some(Some(Ok(d))) = tokio::task::unconstrained(lane.next()).now_or_never() {
                out.push(d);
            }
        }
        out
    }

    /// What the workers get: this env's database and broker, the test
    /// key (the one the test config's secrets are sealed with, so the
    /// outbound worker can read the token), default settings.
    pub fn deps(&self) -> wapipe_workers::Deps {
        wapipe_workers::Deps::new(
            self.db.clone(),
            self.broker.clone(),
            wapipe_shared::config::Settings::from_defaults().expect("settings"),
            Arc::new(SecretKey::from_base64(KEY).expect("the test key")),
        )
    }

    /// Runs every waiting job of `queue` once through `worker` (with
    /// [`quick_retry`]), asserting each settles `Ok`; returns how many.
    pub async fn run_jobs(
        &self,
        queue: &str,
        worker: &dyn wapipe_workers::runtime::Worker,
    ) -> usize {
        let jobs = self.deliveries(queue).await;
        let n = jobs.len();
        for d in jobs {
            assert_eq!(
                wapipe_workers::runtime::run_one(worker, &quick_retry(), d)
                    .await
                    .expect("settle"),
                wapipe_workers::runtime::Outcome::Ok,
                "a {queue} job"
            );
        }
        n
    }

    /// The real-time events published on `rx`, decoded (each publish is an
    /// array of events): collects until none has come for 300 ms. A worker publishes after its commit, which may trail
    /// the ack the test waited for, so a look without waiting can miss them.
    pub async fn drain_realtime(
        rx: &mut wapipe_shared::broker::RealtimeSubscription,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Some(b)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv()).await
        {
            let batch: Vec<Value> = serde_json::from_slice(&b).expect("a JSON array of events");
            assert!(!batch.is_empty(), "an empty real-time publish");
            out.extend(batch);
        }
        out
    }

    pub async fn exec(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.expect("sql");
    }
}

/// Retries in tens of milliseconds, three attempts: for tests.
pub fn quick_retry() -> wapipe_shared::retry::RetryPolicy {
    wapipe_shared::retry::RetryPolicy {
        min_delay: std::time::Duration::from_millis(10),
        max_delay: std::time::Duration::from_millis(50),
        max_attempts: 3,
    }
}

/// A row as JSON without `updated_at`, which a replay may touch: what a
/// replay must leave the same.
pub fn without_updated_at<T: serde::Serialize>(row: &T) -> Value {
    let mut v = serde_json::to_value(row).expect("json");
    if let Some(o) = v.as_object_mut() {
        o.remove("updated_at");
    }
    v
}
