//! A small harness for the API's tests: each test gets a fresh database
//! (a PostgreSQL database or a SQLite file), the embedded broker (so the
//! jobs a request publishes can be counted), two companies with one
//! WhatsApp number each, and the API on 127.0.0.1:0. Written to move to a
//! shared test kit unchanged.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, header::HeaderMap};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe_api::{ApiDeps, ApiSettings};
use wapipe_domain::apikeys::{self, NewKey};
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::broker::{self, Broker, BrokerSettings};
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::db;
use wapipe_shared::entities::messages::{Direction, MessageStatus, Origin};
use wapipe_shared::entities::{agents, chats, customers, messages};
use wapipe_shared::tenants::{self, NewConfig};
use wapipe_testkit::db as testing;

pub mod ws;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs an async test body once per backend: `both!(name, body_fn)`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::common::Api::start($crate::common::Backend::Postgres).await)
                    .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::common::Api::start($crate::common::Backend::Sqlite).await)
                    .await;
            }
        }
    };
}

pub struct Api {
    pub base: String,
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    pub http: reqwest::Client,
    /// Company "Acme", number 15550000001.
    pub config_id: Uuid,
    /// Company "Globex", number 15550000002.
    pub other_config_id: Uuid,
    shutdown: CancellationToken,
    _dir: Option<testing::TempDir>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response: status, JSON body (Null when empty) and headers.
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Api {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, ApiSettings::default()).await
    }

    pub async fn start_with(backend: Backend, settings: ApiSettings) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (url, dir) = match backend {
            Backend::Postgres => (testing::fresh_postgres_url().await.expect("database"), None),
            Backend::Sqlite => {
                let (url, dir) = testing::fresh_sqlite_migrated_url().await.expect("sqlite");
                (url, Some(dir))
            }
        };
        let db = db::connect(&url, 8).await.expect("connect");
        Migrator::up(&db, None).await.expect("migrate");
        let key = SecretKey::from_base64(KEY).expect("key");
        let mut ids = Vec::new();
        for (company, phone) in [("Acme", "15550000001"), ("Globex", "15550000002")] {
            let c = tenants::add(
                &db,
                &key,
                NewConfig {
                    company: company.into(),
                    name: None,
                    phone_number_id: phone.into(),
                    waba_id: format!("{phone}9"),
                    display_phone_number: Some(format!("+{phone}")),
                    app_secret: "s".into(),
                    verify_token: format!("v{phone}"),
                    access_token: "t".into(),
                    webhook_secret: None,
                    max_mps: 80,
                },
            )
            .await
            .expect("config");
            ids.push(c.id);
        }
        let broker = broker::connect(
            &BrokerSettings {
                prefix: format!("t{}", Uuid::now_v7().simple()),
                ..BrokerSettings::default()
            },
            db.clone(),
        )
        .await
        .expect("broker");
        broker.declare().await.expect("declare");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        wapipe_api::start(
            ApiDeps {
                db: db.clone(),
                broker: broker.clone(),
                meta: None,
                secret_key: Some(std::sync::Arc::new(
                    SecretKey::from_base64(KEY).expect("key"),
                )),
                media: None,
            },
            settings,
            listener,
            shutdown.clone(),
        );
        Self {
            base: format!("http://{addr}"),
            db,
            broker,
            http: reqwest::Client::new(),
            config_id: ids[0],
            other_config_id: ids[1],
            shutdown,
            _dir: dir,
        }
    }

    /// An admin key for every company.
    pub async fn admin(&self) -> String {
        self.admin_of(&[]).await
    }

    /// An admin key for these companies.
    pub async fn admin_of(&self, companies: &[&str]) -> String {
        apikeys::create(
            &self.db,
            NewKey::Admin {
                name: None,
                companies: companies.iter().map(|c| (*c).to_owned()).collect(),
            },
        )
        .await
        .expect("admin key")
        .secret
    }

    /// An agent of Acme with these seed 002 permissions, and its key.
    pub async fn agent(&self, name: &str, permissions: Value, max_chats: i32) -> (Uuid, String) {
        let id = Uuid::now_v7();
        let now = Utc::now();
        agents::Entity::insert(agents::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(Some(self.config_id)),
            name: Set(name.to_owned()),
            email: Set(format!("{}@acme.example", name.to_lowercase())),
            company: Set(Some("Acme".to_owned())),
            max_concurrent_chats: Set(max_chats),
            permissions: Set(Some(permissions)),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("agent");
        let key = apikeys::create(
            &self.db,
            NewKey::Agent {
                agent_id: id,
                name: None,
            },
        )
        .await
        .expect("agent key")
        .secret;
        (id, key)
    }

    pub async fn agent_row(&self, id: Uuid) -> agents::Model {
        agents::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .expect("read")
            .expect("agent")
    }

    /// A customer who wrote `text` at `at` on `config`: customer, chat and
    /// inbound message rows as the parse worker leaves them. Returns
    /// (chat id, message id).
    pub async fn inbound(
        &self,
        config: Uuid,
        wa_id: &str,
        name: &str,
        text: &str,
        at: DateTime<Utc>,
    ) -> (Uuid, Uuid) {
        let customer = Uuid::now_v7();
        customers::Entity::insert(customers::ActiveModel {
            id: Set(customer),
            created_at: Set(at),
            updated_at: Set(at),
            config_id: Set(config),
            wa_id: Set(Some(wa_id.to_owned())),
            phone_number: Set(Some(wa_id.to_owned())),
            name: Set(Some(name.to_owned())),
            last_inbound_at: Set(Some(at)),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("customer");
        let chat = Uuid::now_v7();
        let message = Uuid::now_v7();
        chats::Entity::insert(chats::ActiveModel {
            id: Set(chat),
            created_at: Set(at),
            updated_at: Set(at),
            config_id: Set(config),
            customer_id: Set(customer),
            phone_number: Set(Some(wa_id.to_owned())),
            customer_name: Set(Some(name.to_owned())),
            status: Set("unassigned".to_owned()),
            priority: Set("medium".to_owned()),
            unread_count: Set(1),
            last_message: Set(Some(text.to_owned())),
            last_message_time: Set(Some(at)),
            last_message_id: Set(Some(message)),
            total_messages: Set(1),
            customer_messages: Set(1),
            // The customer waits for an answer from then.
            awaiting_reply_since: Set(Some(at)),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("chat");
        messages::Entity::insert(messages::ActiveModel {
            id: Set(message),
            created_at: Set(at),
            updated_at: Set(at),
            config_id: Set(config),
            chat_id: Set(chat),
            customer_id: Set(customer),
            provider_message_id: Set(Some(format!("wamid.{}", Uuid::now_v7().simple()))),
            direction: Set(Direction::Inbound),
            origin: Set(Origin::User),
            sender_type: Set("customer".to_owned()),
            r#type: Set("text".to_owned()),
            text: Set(Some(text.to_owned())),
            status: Set(MessageStatus::Delivered),
            timestamp: Set(Some(at)),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("message");
        (chat, message)
    }

    /// A WhatsApp template on `config` as the template sync leaves it.
    pub async fn template(
        &self,
        config: Uuid,
        name: &str,
        language: &str,
        body: &str,
        status: &str,
    ) -> Uuid {
        wapipe_testkit::db::add_template(&self.db, config, name, language, body, status).await
    }

    pub async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.call_h(key, method, path, body, &[]).await
    }

    pub async fn call_h(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }))
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, key: &str, path: &str) -> Resp {
        self.call(key, Method::GET, path, None).await
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> Resp {
        self.call(key, Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, key: &str, path: &str, body: Option<Value>) -> Resp {
        self.call(key, Method::PUT, path, body).await
    }

    pub async fn delete(&self, key: &str, path: &str) -> Resp {
        self.call(key, Method::DELETE, path, None).await
    }

    /// Jobs waiting in the outbound queue (sends and mark-as-reads).
    pub async fn outbound_jobs(&self) -> u64 {
        self.broker
            .queue_depths()
            .await
            .expect("depths")
            .into_iter()
            .filter(|(name, _, dlq)| {
                !dlq && name.contains(".outbound.") && !name.ends_with(".delay")
            })
            .map(|(_, n, _)| n)
            .sum()
    }

    pub async fn audit_actions(&self, entity_id: Uuid) -> Vec<String> {
        use sea_orm::{ColumnTrait, QueryFilter, QueryOrder};
        wapipe_shared::entities::audit_log::Entity::find()
            .filter(wapipe_shared::entities::audit_log::Column::EntityId.eq(entity_id.to_string()))
            .order_by_asc(wapipe_shared::entities::audit_log::Column::CreatedAt)
            .all(&self.db)
            .await
            .expect("audit")
            .into_iter()
            .map(|a| a.action)
            .collect()
    }
}

/// Every agent permission of seed 002, all granted or all refused.
pub fn perms(all: bool) -> Value {
    json!({
        "canAssignChats": all, "canTransferChats": all, "canViewAllChats": all,
        "canManageTemplates": all, "canManageLabels": all, "canBlockNumbers": all,
        "canViewReports": all
    })
}

pub fn minutes_ago(m: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::minutes(m)
}
