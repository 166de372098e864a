//! `TestApp::spawn(mode)` starts the real service in-process on port 0
//! with its own migrated database (a PostgreSQL clone of the template or a
//! SQLite file) and its own queue prefix, with one config ready to receive
//! webhooks.

use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe::serve::{self, Listeners, Roles, Running};
use wapipe_shared::config::Settings;
use wapipe_shared::crypto::{SecretKey, sign_body};
use wapipe_shared::entities::webhook_events::{self, EventStatus};
use wapipe_shared::tenants::{self, NewConfig};

pub use crate::build::{PHONE_NUMBER_ID, WABA_ID, text_webhook};
pub use crate::corpus::corpus_dir;
use crate::db::{TempDir, fresh_postgres_url, migrated_sqlite_in, temp_dir};
pub use crate::{KEY, amqp_url, init_logs};

pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SQLite + the in-process queue (the default mode).
    Embedded,
    /// PostgreSQL + RabbitMQ.
    Production,
}

pub struct TestApp {
    pub mode: Mode,
    pub settings: Settings,
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub db: DatabaseConnection,
    pub config_id: Uuid,
    /// The service's own broker (in embedded mode, the only one that reaches its workers).
    pub broker: std::sync::Arc<dyn wapipe_shared::broker::Broker>,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<Running>,
    pub dir: TempDir,
    queues: QueueCleanup,
}

/// Deletes a RabbitMQ test prefix's queues when its `TestApp` is dropped
/// without [`TestApp::stop`] (a failed assertion, or a test that just ends).
/// Each prefix declares ~85 quorum queues; the broker outlives test runs,
/// and thousands of leftovers made it stop answering.
/// The service is told to stop first, so its consumers do not declare the
/// queues again.
struct QueueCleanup(
    Option<wapipe_shared::broker::BrokerSettings>,
    CancellationToken,
);

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        let Some(settings) = self.0.take() else {
            return;
        };
        self.1.cancel();
        // Drop cannot await, and may run on the test's runtime: the
        // deletion gets a thread and a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(b) = wapipe_shared::broker::AmqpBroker::new(&settings) {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(20), b.delete_topology()).await;
                    let _ = b.close().await;
                }
            });
        })
        .join();
    }
}

/// Settings for a test service: its own migrated database (a PostgreSQL
/// clone of the template, or a SQLite file in the returned folder), its
/// own queue prefix, short retries.
pub async fn settings_for(mode: Mode) -> (Settings, TempDir) {
    init_logs();
    let dir = temp_dir().expect("temp dir");
    let mut s = Settings::from_defaults().expect("default settings");
    match mode {
        Mode::Embedded => {
            s.database_url = migrated_sqlite_in(dir.path())
                .await
                .expect("a migrated SQLite file");
            s.amqp_url = None;
        }
        Mode::Production => {
            s.database_url = fresh_postgres_url()
                .await
                .expect("a test database (is PostgreSQL on 127.0.0.1:5432?)");
            s.amqp_url = Some(amqp_url());
        }
    }
    s.secret_key = Some(KEY.into());
    s.secret_key_file = dir.path().join("secret.key");
    s.media_dir = dir.path().join("media");
    // Nothing listens on the discard port: a test that does not start the
    // fake Graph (and still posts an image, so the media worker looks it
    // up) fails fast here instead of calling graph.facebook.com.
    s.graph_api_base = "http://127.0.0.1:9".into();
    s.queue_prefix = format!("t{}", Uuid::now_v7().simple());
    s.lanes = 4;
    s.relay_grace_secs = 1;
    s.retry_min_delay_ms = 50;
    s.retry_max_delay_ms = 200;
    s.retry_max_attempts = 3;
    s.db_pool = 8;
    (s, dir)
}

/// Connects to the (migrated) database of `settings` and adds the test
/// config; returns its id.
pub async fn prepare_db(settings: &Settings) -> (DatabaseConnection, Uuid) {
    let db = wapipe_shared::db::connect(&settings.database_url, 4)
        .await
        .unwrap();
    let key = SecretKey::from_base64(KEY).unwrap();
    let cfg = tenants::add(
        &db,
        &key,
        NewConfig {
            company: "Test Co".into(),
            name: None,
            phone_number_id: PHONE_NUMBER_ID.into(),
            waba_id: WABA_ID.into(),
            display_phone_number: Some("15550001111".into()),
            app_secret: APP_SECRET.into(),
            verify_token: VERIFY_TOKEN.into(),
            access_token: "EAAG-test".into(),
            webhook_secret: None,
            max_mps: 80,
        },
    )
    .await
    .unwrap();
    (db, cfg.id)
}

impl TestApp {
    pub async fn spawn(mode: Mode) -> TestApp {
        let (settings, dir) = settings_for(mode).await;
        Self::spawn_with(mode, settings, dir, Roles::all()).await
    }

    pub async fn spawn_with(mode: Mode, settings: Settings, dir: TempDir, roles: Roles) -> TestApp {
        init_logs();
        let (db, config_id) = prepare_db(&settings).await;
        Self::start(mode, settings, dir, roles, db, config_id).await
    }

    pub async fn start(
        mode: Mode,
        settings: Settings,
        dir: TempDir,
        roles: Roles,
        db: DatabaseConnection,
        config_id: Uuid,
    ) -> TestApp {
        init_logs();
        let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token = CancellationToken::new();
        let running = serve::start(
            settings.clone(),
            roles,
            Some(Listeners {
                http: http_l,
                metrics: metrics_l,
            }),
            token.clone(),
        )
        .await
        .unwrap();
        let settings_amqp = settings
            .amqp_url
            .is_some()
            .then(|| settings.broker_settings());
        TestApp {
            mode,
            addr: running.addr.unwrap(),
            metrics_addr: running.metrics_addr,
            broker: running.broker.clone(),
            settings,
            db,
            config_id,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            shutdown: token.clone(),
            running: Some(running),
            dir,
            queues: QueueCleanup(settings_amqp, token.clone()),
        }
    }

    /// A new admin key for every company (the operator's), for the API.
    pub async fn admin_key(&self) -> String {
        wapipe_domain::apikeys::create(
            &self.db,
            wapipe_domain::apikeys::NewKey::Admin {
                name: None,
                companies: vec![],
            },
        )
        .await
        .expect("an admin key")
        .secret
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_with(&self, path: &str, body: Vec<u8>, sig: Option<String>) -> (u16, String) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// POST signed with the test config's app secret, like Meta does.
    pub async fn post(&self, body: &[u8]) -> (u16, String) {
        let sig = sign_body(APP_SECRET.as_bytes(), body);
        self.post_with("/api/whatsapp/webhooks", body.to_vec(), Some(sig))
            .await
    }

    pub async fn count_events(&self, status: Option<EventStatus>) -> u64 {
        let mut q = webhook_events::Entity::find();
        if let Some(s) = status {
            q = q.filter(webhook_events::Column::Status.eq(s));
        }
        q.count(&self.db).await.unwrap()
    }

    /// Waits until `n` events are processed (or ignored); panics after `timeout`.
    pub async fn wait_settled(&self, n: u64, timeout: Duration) {
        let start = Instant::now();
        loop {
            let done = self.count_events(Some(EventStatus::Processed)).await
                + self.count_events(Some(EventStatus::Ignored)).await;
            if done >= n {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "only {done} of {n} events settled after {timeout:?} (received: {})",
                    self.count_events(Some(EventStatus::Received)).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` on the API with `key`, as JSON.
    pub async fn get_json(&self, path: &str, key: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Graceful shutdown; returns once every role has stopped.
    pub async fn stop(mut self) -> (DatabaseConnection, Settings, TempDir) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.join)
                .await
                .expect("graceful shutdown finished in time")
                .unwrap();
        }
        // Each prefix declares ~85 queues; leave none behind on the shared broker.
        if let Some(b) = self
            .queues
            .0
            .take()
            .and_then(|s| wapipe_shared::broker::AmqpBroker::new(&s).ok())
        {
            let _ = b.delete_topology().await;
            let _ = b.close().await;
        }
        (self.db.clone(), self.settings.clone(), self.dir)
    }
}
