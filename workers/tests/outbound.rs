//! The outbound worker against a real database (PostgreSQL and SQLite, a
//! fresh one per test) and a fake Meta: the simulator's Graph API, or
//! wiremock where a test needs a fixed wamid or a slow answer. Driven one
//! job at a time (`send_message`), or through the runtime with real delayed
//! retries for the rate-limit and crash tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe_domain::outbox::content::{
    ButtonSubType, ListRow, ListSection, MediaKind, MediaSource, ProductSection, ReplyButton,
    Template, TemplateComponent, TemplateParam,
};
use wapipe_domain::outbox::{NewOutbound, OutboundContent, OutboxError, QueuedMessage};
use wapipe_shared::broker::{Broker, BrokerSettings, EmbeddedBroker};
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::messages::{self, MessageStatus, Origin};
use wapipe_shared::entities::{conversations, customers, message_status_events, whatsapp_configs};
use wapipe_shared::jobs::{MarkRead, Queue};
use wapipe_shared::retry::RetryPolicy;
use wapipe_shared::tenants::{self, NewConfig};
use wapipe_sim::{ErrorRule, GraphConfig, GraphHandle, spawn_graph};
use wapipe_testkit::both_backends;
use wapipe_testkit::db::{Backend, TempDir, TestDb, migrated};
use wapipe_workers::Deps;
use wapipe_workers::outbound::{
    self, LimitSettings, OutboundSettings, OutboundWorker, SendOutcome, SweepSettings,
};
use wapipe_workers::runtime::{self, JobError, typed};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const PHONE: &str = "15550000001";
const TOKEN: &str = "EAAG-outbound-test";

struct Env {
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    config_id: Uuid,
    key: Arc<SecretKey>,
    _dir: Option<TempDir>,
}

/// reqwest is built with rustls but without a provider of its own (one
/// crypto backend, ring, chosen by the process): every client in this test
/// process, the simulator's included, needs it installed first.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn env(backend: Backend, max_mps: i32) -> Env {
    install_tls_provider();
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let TestDb { db, dir, .. } = migrated(backend, 8).await;
    let broker: Arc<dyn Broker> = Arc::new(EmbeddedBroker::new(
        &BrokerSettings {
            amqp_url: None,
            prefix: "t".into(),
            lanes: 2,
            prefetch: 8,
        },
        db.clone(),
    ));
    let key = Arc::new(SecretKey::from_base64(KEY).expect("key"));
    let config_id = tenants::add(
        &db,
        &key,
        NewConfig {
            company: "Outbound Co".into(),
            name: None,
            phone_number_id: PHONE.into(),
            waba_id: "15550009999".into(),
            display_phone_number: None,
            app_secret: "secret".into(),
            verify_token: "verify".into(),
            access_token: TOKEN.into(),
            webhook_secret: None,
            max_mps,
        },
    )
    .await
    .expect("add config")
    .id;
    Env {
        db,
        broker,
        config_id,
        key,
        _dir: dir,
    }
}

/// Settings for tests: short cool-downs, a generous pair limit (tests that
/// are not about it send many messages to one customer).
fn settings(_env: &Env, base_url: &str) -> OutboundSettings {
    let mut s = OutboundSettings::new(base_url, "v23.0");
    s.limits = LimitSettings {
        pair_burst: 1000,
        number_cooldown: Duration::from_millis(30),
        pair_cooldown: Duration::from_millis(30),
        ..LimitSettings::default()
    };
    s.graph.request_timeout = Duration::from_secs(10);
    s
}

fn deps(env: &Env) -> Deps {
    Deps::new(
        env.db.clone(),
        env.broker.clone(),
        wapipe_shared::config::Settings::from_defaults().expect("settings"),
        env.key.clone(),
    )
}

fn worker(env: &Env, settings: OutboundSettings) -> OutboundWorker {
    OutboundWorker::new(deps(env), settings).expect("worker")
}

async fn sim(rules: Vec<ErrorRule>) -> GraphHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    spawn_graph(
        listener,
        GraphConfig {
            token: Some(TOKEN.into()),
            phone_number_id: Some(PHONE.into()),
            errors: rules,
            ..GraphConfig::default()
        },
    )
    .await
    .expect("sim")
}

fn rule(s: &str) -> ErrorRule {
    s.parse().expect("rule")
}

impl Env {
    /// A customer who wrote `ago` ago (or never).
    async fn customer(&self, wa_id: &str, wrote_ago: Option<chrono::Duration>) -> Uuid {
        let now = Utc::now();
        let id = Uuid::now_v7();
        customers::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(self.config_id),
            wa_id: Set(Some(wa_id.into())),
            last_inbound_at: Set(wrote_ago.map(|d| now - d)),
            ..Default::default()
        }
        .insert(&self.db)
        .await
        .expect("customer");
        id
    }

    async fn queue(&self, to: &str, content: OutboundContent, reply_to: Option<&str>) -> Uuid {
        wapipe_domain::outbox::queue_message(
            &self.db,
            NewOutbound {
                config_id: self.config_id,
                to: to.into(),
                content,
                reply_to: reply_to.map(str::to_owned),
                origin: Origin::Admin,
                sender_type: "agent".into(),
                sender_id: None,
                answers: None,
            },
        )
        .await
        .expect("queue")
        .message_id
    }

    /// Queues and publishes, as every producer does.
    async fn queue_and_publish(&self, to: &str, content: OutboundContent) -> Uuid {
        let q = wapipe_domain::outbox::queue_message(
            &self.db,
            NewOutbound {
                config_id: self.config_id,
                to: to.into(),
                content,
                reply_to: None,
                origin: Origin::Bot,
                sender_type: "bot".into(),
                sender_id: None,
                answers: None,
            },
        )
        .await
        .expect("queue");
        wapipe_domain::outbox::enqueue(&self.db, self.broker.as_ref(), &q)
            .await
            .expect("enqueue");
        q.message_id
    }

    /// Sends `id` through `w` and expects wapipe itself to refuse it with
    /// `code`, before any call to Meta: the row ends failed.
    async fn refused_locally(&self, w: &OutboundWorker, id: Uuid, code: &str) -> messages::Model {
        assert_eq!(
            w.send_message(id).await.expect("send"),
            SendOutcome::Failed {
                code: code.into(),
                local: true
            }
        );
        let m = self.message(id).await;
        assert_eq!(m.status, MessageStatus::Failed);
        m
    }

    async fn message(&self, id: Uuid) -> messages::Model {
        messages::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .expect("query")
            .expect("message")
    }

    async fn config(&self) -> whatsapp_configs::Model {
        whatsapp_configs::Entity::find_by_id(self.config_id)
            .one(&self.db)
            .await
            .expect("query")
            .expect("config")
    }

    /// A receipt for a wamid we do not know yet, stored as the parse worker
    /// stores it.
    async fn pending_receipt(&self, wamid: &str, status: &str, recipient: &str) {
        let now = Utc::now();
        message_status_events::ActiveModel {
            id: Set(Uuid::now_v7()),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(self.config_id),
            provider_message_id: Set(wamid.into()),
            message_id: Set(None),
            status: Set(status.into()),
            timestamp: Set(now),
            recipient_id: Set(Some(recipient.into())),
            applied: Set(false),
            ..Default::default()
        }
        .insert(&self.db)
        .await
        .expect("receipt");
    }

    /// Runs the outbound worker through the runtime until cancelled.
    fn run(
        &self,
        w: &OutboundWorker,
        policy: RetryPolicy,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = CancellationToken::new();
        let broker = self.broker.clone();
        let worker = typed(w.clone());
        let t = token.clone();
        let h = tokio::spawn(async move {
            let _ = runtime::run(broker, worker, policy, t).await;
        });
        (token, h)
    }
}

fn text(body: &str) -> OutboundContent {
    OutboundContent::Text {
        body: body.into(),
        preview_url: false,
    }
}

fn template(name: &str) -> OutboundContent {
    OutboundContent::Template(Template::with_body_params(name, "en_US", &["Ada".into()]))
}

/// Fast retries, and enough of them that rate limiting never dead-letters.
fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_attempts: 100_000,
    }
}

/// Calls the worker until the job is done, as the runtime would (without
/// its delays), and returns the outcome.
async fn drive(w: &OutboundWorker, id: Uuid) -> SendOutcome {
    for _ in 0..200 {
        match w.send_message(id).await {
            Ok(o) => return o,
            Err(JobError::Retryable(_) | JobError::Deferred { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("permanent: {e}"),
        }
    }
    panic!("message {id} never settled");
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Every kind of message: the exact JSON Meta receives.

async fn every_kind_sends_metas_exact_json(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let to = "4915112345678";
    env.customer(to, Some(chrono::Duration::minutes(5))).await;

    let cases: Vec<(OutboundContent, Option<&str>, Value)> = vec![
        (
            OutboundContent::Text {
                body: "Hello https://example.com".into(),
                preview_url: true,
            },
            Some("wamid.IN1"),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "text", "text": {"preview_url": true, "body": "Hello https://example.com"},
                "context": {"message_id": "wamid.IN1"}}),
        ),
        (
            OutboundContent::Template(Template {
                name: "order_update".into(),
                language: "pt_BR".into(),
                components: vec![
                    TemplateComponent::Header {
                        parameters: vec![TemplateParam::Image {
                            source: MediaSource::Link("https://example.com/h.jpg".into()),
                        }],
                    },
                    TemplateComponent::Body {
                        parameters: vec![
                            TemplateParam::Text { text: "Ada".into() },
                            TemplateParam::Currency {
                                fallback_value: "$10.99".into(),
                                code: "USD".into(),
                                amount_1000: 10990,
                            },
                            TemplateParam::DateTime {
                                fallback_value: "May 1, 2026".into(),
                            },
                        ],
                    },
                    TemplateComponent::Button {
                        sub_type: ButtonSubType::QuickReply,
                        index: 0,
                        parameters: vec![TemplateParam::Payload {
                            payload: "STOP".into(),
                        }],
                    },
                    TemplateComponent::Button {
                        sub_type: ButtonSubType::Url,
                        index: 1,
                        parameters: vec![TemplateParam::Text {
                            text: "track/42".into(),
                        }],
                    },
                    TemplateComponent::Button {
                        sub_type: ButtonSubType::CopyCode,
                        index: 2,
                        parameters: vec![TemplateParam::CouponCode {
                            coupon_code: "SAVE10".into(),
                        }],
                    },
                ],
            }),
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
            "type": "template", "template": {"name": "order_update", "language": {"code": "pt_BR"},
            "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://example.com/h.jpg"}}]},
                {"type": "body", "parameters": [
                    {"type": "text", "text": "Ada"},
                    {"type": "currency", "currency": {"fallback_value": "$10.99", "code": "USD", "amount_1000": 10990}},
                    {"type": "date_time", "date_time": {"fallback_value": "May 1, 2026"}}]},
                {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "STOP"}]},
                {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "track/42"}]},
                {"type": "button", "sub_type": "copy_code", "index": "2", "parameters": [{"type": "coupon_code", "coupon_code": "SAVE10"}]}
            ]}}),
        ),
        (
            OutboundContent::Buttons {
                body: "Pick one".into(),
                header: Some("Menu".into()),
                footer: Some("wapipe".into()),
                buttons: vec![
                    ReplyButton {
                        id: "yes".into(),
                        title: "Yes".into(),
                    },
                    ReplyButton {
                        id: "no".into(),
                        title: "No".into(),
                    },
                ],
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "interactive", "interactive": {"type": "button",
                "header": {"type": "text", "text": "Menu"}, "body": {"text": "Pick one"},
                "footer": {"text": "wapipe"}, "action": {"buttons": [
                    {"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                    {"type": "reply", "reply": {"id": "no", "title": "No"}}]}}}),
        ),
        (
            OutboundContent::List {
                body: "Our shops".into(),
                header: None,
                footer: None,
                button: "Choose".into(),
                sections: vec![ListSection {
                    title: Some("Paris".into()),
                    rows: vec![
                        ListRow {
                            id: "p1".into(),
                            title: "Louvre".into(),
                            description: Some("Open 9-18".into()),
                        },
                        ListRow {
                            id: "p2".into(),
                            title: "Bastille".into(),
                            description: None,
                        },
                    ],
                }],
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "interactive", "interactive": {"type": "list", "body": {"text": "Our shops"},
                "action": {"button": "Choose", "sections": [{"title": "Paris", "rows": [
                    {"id": "p1", "title": "Louvre", "description": "Open 9-18"},
                    {"id": "p2", "title": "Bastille"}]}]}}}),
        ),
        (
            OutboundContent::ProductList {
                header: "Deals".into(),
                body: "This week".into(),
                footer: None,
                catalog_id: "CAT1".into(),
                sections: vec![ProductSection {
                    title: "Shoes".into(),
                    product_retailer_ids: vec!["SKU1".into(), "SKU2".into()],
                }],
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "interactive", "interactive": {"type": "product_list",
                "header": {"type": "text", "text": "Deals"}, "body": {"text": "This week"},
                "action": {"catalog_id": "CAT1", "sections": [{"title": "Shoes", "product_items": [
                    {"product_retailer_id": "SKU1"}, {"product_retailer_id": "SKU2"}]}]}}}),
        ),
        (
            OutboundContent::Media {
                media: MediaKind::Image,
                source: MediaSource::Link("https://example.com/a.jpg".into()),
                caption: Some("A cat".into()),
                filename: None,
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "image", "image": {"link": "https://example.com/a.jpg", "caption": "A cat"}}),
        ),
        (
            OutboundContent::Media {
                media: MediaKind::Video,
                source: MediaSource::Id("1234".into()),
                caption: None,
                filename: None,
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "video", "video": {"id": "1234"}}),
        ),
        (
            OutboundContent::Media {
                media: MediaKind::Audio,
                source: MediaSource::Id("777".into()),
                caption: None,
                filename: None,
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "audio", "audio": {"id": "777"}}),
        ),
        (
            OutboundContent::Media {
                media: MediaKind::Document,
                source: MediaSource::Link("https://example.com/i.pdf".into()),
                caption: Some("Invoice".into()),
                filename: Some("invoice.pdf".into()),
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "document", "document": {"link": "https://example.com/i.pdf", "caption": "Invoice", "filename": "invoice.pdf"}}),
        ),
        (
            OutboundContent::Media {
                media: MediaKind::Sticker,
                source: MediaSource::Id("555".into()),
                caption: None,
                filename: None,
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "sticker", "sticker": {"id": "555"}}),
        ),
        (
            OutboundContent::Location {
                latitude: 48.8584,
                longitude: 2.2945,
                name: Some("Tour Eiffel".into()),
                address: Some("Champ de Mars".into()),
            },
            None,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "location", "location": {"latitude": 48.8584, "longitude": 2.2945,
                "name": "Tour Eiffel", "address": "Champ de Mars"}}),
        ),
        (
            OutboundContent::Reaction {
                message_id: "wamid.IN1".into(),
                emoji: "\u{1F44D}".into(),
            },
            Some("wamid.IGNORED"),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                "type": "reaction", "reaction": {"message_id": "wamid.IN1", "emoji": "\u{1F44D}"}}),
        ),
    ];

    for (i, (content, reply_to, expected)) in cases.into_iter().enumerate() {
        let kind = content.graph_type();
        let id = env.queue(to, content, reply_to).await;
        let outcome = w.send_message(id).await.expect("send");
        let sent = graph.sent();
        assert_eq!(sent.len(), i + 1, "{kind}");
        let got = &sent[i];
        assert_eq!(got.body, expected, "{kind}: the body Meta received");
        assert_eq!(got.token, TOKEN);
        assert_eq!(
            outcome,
            SendOutcome::Sent {
                wamid: got.wamid.clone()
            }
        );
        let m = env.message(id).await;
        assert_eq!(m.provider_message_id.as_deref(), Some(got.wamid.as_str()));
        assert_eq!(m.status, MessageStatus::Sent);
        assert!(m.sent_at.is_some());
        assert_eq!(m.attempt_count, 1);
        assert_eq!(m.r#type, kind);
        assert_eq!(
            m.payload.as_ref(),
            Some(&expected),
            "payload holds the request body"
        );
    }

    // Mark-as-read: no row, no wamid; the read body Meta expects.
    let outcome = w
        .mark_read(&MarkRead {
            config_id: env.config_id,
            provider_message_id: "wamid.IN1".into(),
            typing: true,
        })
        .await
        .expect("mark read");
    assert_eq!(outcome, SendOutcome::MarkedRead);
    assert_eq!(
        graph.reads(),
        vec![
            json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1",
            "typing_indicator": {"type": "text"}})
        ]
    );
}
both_backends!(every_kind_sends_metas_exact_json);

// ---------------------------------------------------------------------------
// Meta's error classes.

async fn throttled_twice_then_accepted(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![rule("130429:times=2")]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let id = env.queue("4915100000001", template("hello"), None).await;
    let first = w.send_message(id).await;
    assert!(
        matches!(&first, Err(JobError::Retryable(e)) if e.contains("130429")),
        "{first:?}"
    );
    // Never `failed` for throttling: back to queued for the next attempt.
    assert_eq!(env.message(id).await.status, MessageStatus::Queued);
    let outcome = drive(&w, id).await;
    assert!(matches!(outcome, SendOutcome::Sent { .. }), "{outcome:?}");
    assert_eq!(graph.calls(), 3);
    let m = env.message(id).await;
    assert_eq!(m.status, MessageStatus::Sent);
    assert_eq!(m.attempt_count, 3);
}
both_backends!(throttled_twice_then_accepted);

async fn window_error_from_meta_fails_after_one_call(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![rule("131047")]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let to = "4915100000002";
    env.customer(to, Some(chrono::Duration::hours(1))).await;
    let id = env.queue(to, text("hi"), None).await;
    let outcome = w
        .send_message(id)
        .await
        .expect("a refusal is the domain answer");
    assert_eq!(
        outcome,
        SendOutcome::Failed {
            code: "131047".into(),
            local: false
        }
    );
    assert_eq!(graph.calls(), 1);
    let m = env.message(id).await;
    assert_eq!(m.status, MessageStatus::Failed);
    assert_eq!(m.error_code.as_deref(), Some("131047"));
    assert_eq!(
        m.error_title.as_deref(),
        Some("(#131047) Re-engagement message")
    );
    assert!(
        m.error_details
            .as_deref()
            .is_some_and(|d| d.contains("24 hours"))
    );
    assert!(m.failed_at.is_some());
    // Another job for it changes nothing.
    assert_eq!(
        w.send_message(id).await.expect("again"),
        SendOutcome::Skipped("already finished")
    );
    assert_eq!(graph.calls(), 1);
}
both_backends!(window_error_from_meta_fails_after_one_call);

async fn plain_500_once_is_retried(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![rule("500:http=500:times=1")]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let id = env.queue("4915100000003", template("hello"), None).await;
    assert!(matches!(
        w.send_message(id).await,
        Err(JobError::Retryable(_))
    ));
    assert!(matches!(drive(&w, id).await, SendOutcome::Sent { .. }));
    assert_eq!(graph.calls(), 2);
}
both_backends!(plain_500_once_is_retried);

async fn expired_token_flags_the_config(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![rule("190")]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let a = env.queue("4915100000004", template("hello"), None).await;
    let b = env.queue("4915100000005", template("hello"), None).await;
    assert_eq!(
        w.send_message(a).await.expect("send"),
        SendOutcome::Failed {
            code: "190".into(),
            local: false
        }
    );
    let c = env.config().await;
    assert_eq!(c.flagged_code.as_deref(), Some("190"));
    assert!(c.flagged_at.is_some());
    assert!(c.flagged_reason.is_some_and(|r| r.contains("access token")));
    // Agents' clients hear of it once, in the flag's transaction. (On
    // PostgreSQL an event shows once no older transaction of the cluster
    // still runs: other tests' may, briefly.)
    let mut flagged = Vec::new();
    for _ in 0..300 {
        flagged = wapipe_domain::events::read_after(
            &env.db,
            0,
            100,
            &wapipe_domain::events::Scope::everything(),
        )
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.r#type == wapipe_domain::events::CONFIG_FLAGGED)
        .collect();
        if !flagged.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0].config_id, c.id);
    assert_eq!(flagged[0].payload["flaggedCode"], json!("190"));
    // A flagged config fails fast: no second call to Meta.
    assert_eq!(
        w.send_message(b).await.expect("send"),
        SendOutcome::Failed {
            code: "190".into(),
            local: true
        }
    );
    assert_eq!(graph.calls(), 1);
    let m = env.message(b).await;
    assert_eq!(m.status, MessageStatus::Failed);
    assert!(m.error_title.is_some_and(|t| t.contains("flagged")));
}
both_backends!(expired_token_flags_the_config);

/// Meta sends codes as numbers or strings; both decide the same way.
async fn string_codes_and_details(backend: Backend) {
    let env = env(backend, 80).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v23.0/{PHONE}/messages")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#131026) Message undeliverable", "type": "OAuthException",
            "code": "131026", "error_data": {"messaging_product": "whatsapp",
            "details": "Unable to deliver message."}, "fbtrace_id": "A1"}})))
        .mount(&server)
        .await;
    let w = worker(&env, settings(&env, &server.uri()));
    let id = env.queue("4915100000006", template("hello"), None).await;
    assert_eq!(
        w.send_message(id).await.expect("send"),
        SendOutcome::Failed {
            code: "131026".into(),
            local: false
        }
    );
    let m = env.message(id).await;
    assert_eq!(
        m.error_details.as_deref(),
        Some("Unable to deliver message.")
    );
    assert_eq!(
        m.errors.as_ref().and_then(|e| e[0]["fbtrace_id"].as_str()),
        Some("A1")
    );
    let req = &server.received_requests().await.expect("recorded")[0];
    assert_eq!(
        req.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}
both_backends!(string_codes_and_details);

// ---------------------------------------------------------------------------
// The 24-hour window.

async fn window_rules(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));

    // Wrote 25 hours ago: free-form refused locally, no call.
    let old = "4915100000010";
    env.customer(old, Some(chrono::Duration::hours(25))).await;
    let id = env.queue(old, text("are you there?"), None).await;
    let m = env.refused_locally(&w, id, "131047").await;
    assert_eq!(
        m.error_title.as_deref(),
        Some("outside the 24-hour window; use a template")
    );
    assert_eq!(graph.calls(), 0);

    // Never wrote at all: the same.
    let id = env.queue("4915100000011", text("hello?"), None).await;
    assert!(matches!(
        w.send_message(id).await.expect("send"),
        SendOutcome::Failed { local: true, .. }
    ));
    assert_eq!(graph.calls(), 0);

    // A template goes out whatever the window.
    let id = env.queue(old, template("reengage"), None).await;
    assert!(matches!(
        w.send_message(id).await.expect("send"),
        SendOutcome::Sent { .. }
    ));
    assert_eq!(graph.calls(), 1);

    // An open conversation keeps the window open even without
    // `last_inbound_at`.
    let conv = "4915100000012";
    let customer_id = env.customer(conv, None).await;
    let now = Utc::now();
    conversations::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(env.config_id),
        customer_id: Set(customer_id),
        status: Set(conversations::ConversationStatus::Open),
        opened_at: Set(now - chrono::Duration::hours(2)),
        last_inbound_at: Set(now - chrono::Duration::hours(2)),
        expires_at: Set(now + chrono::Duration::hours(22)),
        ..Default::default()
    }
    .insert(&env.db)
    .await
    .expect("conversation");
    let id = env.queue(conv, text("within the window"), None).await;
    assert!(matches!(
        w.send_message(id).await.expect("send"),
        SendOutcome::Sent { .. }
    ));
    assert_eq!(graph.calls(), 2);
}
both_backends!(window_rules);

// ---------------------------------------------------------------------------
// No double send.

async fn duplicate_and_concurrent_jobs_send_once(backend: Backend) {
    let env = env(backend, 80).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"messaging_product": "whatsapp",
                    "messages": [{"id": "wamid.ONCE"}]}))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&server)
        .await;
    let w = worker(&env, settings(&env, &server.uri()));
    let id = env.queue("4915100000020", template("hello"), None).await;
    // Two deliveries of the same job at once (a redelivery racing the
    // original): one claims, the other must not call.
    let (a, b) = tokio::join!(w.send_message(id), w.send_message(id));
    let outcomes = [a, b];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Ok(SendOutcome::Sent { .. })))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
    // Later duplicates find the wamid and stop.
    assert_eq!(
        w.send_message(id).await.expect("dup"),
        SendOutcome::AlreadySent
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
}
both_backends!(duplicate_and_concurrent_jobs_send_once);

/// A Meta that accepts every send with the same wamid.
async fn meta_accepting(wamid: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"messaging_product": "whatsapp", "messages": [{"id": wamid}]}),
            ),
        )
        .mount(&server)
        .await;
    server
}

async fn receipts_before_the_wamid_are_applied(backend: Backend) {
    let env = env(backend, 80).await;
    let server = meta_accepting("wamid.EARLY").await;
    let w = worker(&env, settings(&env, &server.uri()));
    let to = "4915100000021";
    let id = env.queue(to, template("hello"), None).await;
    // Meta's receipts can beat our send call's answer.
    env.pending_receipt("wamid.EARLY", "delivered", to).await;
    env.pending_receipt("wamid.EARLY", "read", to).await;
    assert_eq!(
        w.send_message(id).await.expect("send"),
        SendOutcome::Sent {
            wamid: "wamid.EARLY".into()
        }
    );
    let m = env.message(id).await;
    assert_eq!(m.status, MessageStatus::Read);
    assert!(m.delivered_at.is_some() && m.read_at.is_some());
    let pending = message_status_events::Entity::find()
        .filter(message_status_events::Column::Applied.eq(false))
        .all(&env.db)
        .await
        .expect("query");
    assert!(pending.is_empty(), "{pending:?}");
}
both_backends!(receipts_before_the_wamid_are_applied);

/// A batch (what queues up on a lane) answers each job on its own, as one
/// by one would: free-form to a closed window fails locally, a refusal
/// fails only its message, a message twice in the batch or already sent is
/// not sent again, and one recipient's messages leave in order.
async fn a_batch_answers_each_job_on_its_own(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![rule("131026:to=4915100000033")]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let (open, closed, refused, other) = (
        "4915100000030",
        "4915100000031",
        "4915100000033",
        "4915100000034",
    );
    env.customer(open, Some(chrono::Duration::hours(1))).await;
    env.customer(closed, None).await;
    let earlier = env.queue(other, template("earlier"), None).await;
    assert!(matches!(
        w.send_message(earlier).await,
        Ok(SendOutcome::Sent { .. })
    ));
    let one = env.queue(open, text("one"), None).await;
    let two = env.queue(open, text("two"), None).await;
    let shut = env.queue(closed, text("too late"), None).await;
    let tpl = env.queue(closed, template("welcome_back"), None).await;
    let bad = env.queue(refused, template("hello"), None).await;
    let three = env.queue(other, template("three"), None).await;
    let batch = [one, two, shut, tpl, bad, one, earlier, three];

    let answers = w.send_messages(&batch).await;
    let kinds: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok(SendOutcome::Sent { .. }) => "sent".to_owned(),
            Ok(SendOutcome::Failed { code, local }) => format!("failed {code} local={local}"),
            Ok(SendOutcome::AlreadySent) => "already".to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "sent",
            "sent",
            "failed 131047 local=true",
            "sent",
            "failed 131026 local=false",
            "already",
            "already",
            "sent"
        ],
        "{answers:?}"
    );
    let sent = graph.sent();
    let texts: Vec<&str> = sent
        .iter()
        .filter(|s| s.to == open)
        .filter_map(|s| s.body.pointer("/text/body").and_then(Value::as_str))
        .collect();
    assert_eq!(texts, ["one", "two"], "one recipient's messages in order");
    // earlier + one, two, tpl, three accepted; bad refused; shut never called.
    assert_eq!(sent.len(), 5, "{sent:?}");
    assert_eq!(graph.calls(), 6);
    for (id, want) in [
        (one, MessageStatus::Sent),
        (two, MessageStatus::Sent),
        (shut, MessageStatus::Failed),
        (tpl, MessageStatus::Sent),
        (bad, MessageStatus::Failed),
        (three, MessageStatus::Sent),
    ] {
        let m = env.message(id).await;
        assert_eq!(m.status, want, "{id}");
        assert_eq!(m.provider_message_id.is_some(), want == MessageStatus::Sent);
    }
    assert_eq!(env.message(bad).await.error_code.as_deref(), Some("131026"));
    assert_eq!(env.message(one).await.attempt_count, 1);
    // The whole batch again (a redelivery): nothing is sent twice.
    let again = w.send_messages(&batch).await;
    assert!(
        again
            .iter()
            .all(|a| matches!(a, Ok(SendOutcome::AlreadySent | SendOutcome::Skipped(_)))),
        "{again:?}"
    );
    assert_eq!(graph.calls(), 6);
}
both_backends!(a_batch_answers_each_job_on_its_own);

/// Receipts that beat the answers of a batch's sends are applied once the
/// batch stores its wamids, each to its own message.
async fn a_batch_applies_receipts_that_came_first(backend: Backend) {
    let env = env(backend, 80).await;
    let server = MockServer::start().await;
    let people = ["4915100000040", "4915100000041", "4915100000042"];
    for (i, to) in people.iter().enumerate() {
        Mock::given(method("POST"))
            .and(body_partial_json(json!({ "to": to })))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.B{i}")}]}),
            ))
            .mount(&server)
            .await;
    }
    let w = worker(&env, settings(&env, &server.uri()));
    let mut ids = Vec::new();
    for to in people {
        ids.push(env.queue(to, template("hello"), None).await);
    }
    env.pending_receipt("wamid.B0", "read", people[0]).await;
    env.pending_receipt("wamid.B2", "delivered", people[2])
        .await;
    let answers = w.send_messages(&ids).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(SendOutcome::Sent { .. }))),
        "{answers:?}"
    );
    let statuses = [
        env.message(ids[0]).await.status,
        env.message(ids[1]).await.status,
        env.message(ids[2]).await.status,
    ];
    assert_eq!(
        statuses,
        [
            MessageStatus::Read,
            MessageStatus::Sent,
            MessageStatus::Delivered
        ]
    );
    let pending = message_status_events::Entity::find()
        .filter(message_status_events::Column::Applied.eq(false))
        .count(&env.db)
        .await
        .expect("query");
    assert_eq!(pending, 0);
}
both_backends!(a_batch_applies_receipts_that_came_first);

/// Meta answering two messages with one wamid (it never should) cannot
/// make one wamid two messages': the batch store falls back to one by one,
/// the first keeps it, the second is reported and left alone.
async fn a_wamid_twice_in_a_batch_goes_to_one_message(backend: Backend) {
    let env = env(backend, 80).await;
    let server = meta_accepting("wamid.TWICE").await;
    let w = worker(&env, settings(&env, &server.uri()));
    let a = env.queue("4915100000050", template("hello"), None).await;
    let b = env.queue("4915100000051", template("hello"), None).await;
    let answers = w.send_messages(&[a, b]).await;
    let sent = answers
        .iter()
        .filter(|x| matches!(x, Ok(SendOutcome::Sent { .. })))
        .count();
    assert_eq!(sent, 1, "{answers:?}");
    let holders = messages::Entity::find()
        .filter(messages::Column::ProviderMessageId.eq("wamid.TWICE"))
        .count(&env.db)
        .await
        .expect("query");
    assert_eq!(holders, 1);
}
both_backends!(a_wamid_twice_in_a_batch_goes_to_one_message);

/// A timeout leaves the outcome unknown: the message stays `sending` and
/// the next attempts wait instead of resending at once.
async fn timeout_keeps_sending(backend: Backend) {
    let env = env(backend, 80).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"messages": [{"id": "wamid.SLOW"}]}))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let mut s = settings(&env, &server.uri());
    s.graph.request_timeout = Duration::from_millis(200);
    let w = worker(&env, s);
    let id = env.queue("4915100000022", template("hello"), None).await;
    let r = w.send_message(id).await;
    assert!(
        matches!(&r, Err(JobError::Retryable(e)) if e.contains("unknown")),
        "{r:?}"
    );
    assert_eq!(env.message(id).await.status, MessageStatus::Sending);
    let r = w.send_message(id).await;
    assert!(
        matches!(&r, Err(JobError::Retryable(e)) if e.contains("in flight")),
        "{r:?}"
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
}
both_backends!(timeout_keeps_sending);

/// Starts the runtime, lets a send reach Meta (which answers slowly), and
/// kills the worker while it waits for the answer. Returns the message.
async fn kill_mid_send(env: &Env, server: &MockServer, w: &OutboundWorker, to: &str) -> Uuid {
    let id = env.queue_and_publish(to, template("hello")).await;
    let (_token, handle) = env.run(w, fast_policy());
    wait_until(
        "the send to reach Meta",
        Duration::from_secs(10),
        || async {
            !server
                .received_requests()
                .await
                .unwrap_or_default()
                .is_empty()
        },
    )
    .await;
    // kill -9, as far as a test can: the task and its lanes are dropped
    // mid-await; the claim was committed, the answer never read.
    handle.abort();
    let _ = handle.await;
    let m = env.message(id).await;
    assert_eq!(m.status, MessageStatus::Sending);
    assert!(m.provider_message_id.is_none());
    id
}

async fn slow_meta(wamid: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({"messaging_product": "whatsapp", "messages": [{"id": wamid}]}),
                )
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    server
}

/// A worker killed mid-send, then run again: nothing is sent twice. The
/// rerun first waits (the attempt may be in flight), then, once the claim
/// is stale, finds Meta's receipt for the unknown wamid and adopts it.
async fn killed_mid_send_is_not_sent_twice(backend: Backend) {
    let env = env(backend, 80).await;
    let server = slow_meta("wamid.KILLED").await;
    let mut s = settings(&env, &server.uri());
    s.sending_timeout = Duration::from_secs(1);
    let w = worker(&env, s);
    let to = "4915100000030";
    let id = kill_mid_send(&env, &server, &w, to).await;

    // Rerun at once: the earlier attempt may still be in flight.
    let r = w.send_message(id).await;
    assert!(
        matches!(&r, Err(JobError::Retryable(e)) if e.contains("in flight")),
        "{r:?}"
    );
    // Meta did take it, and says so with receipts for a wamid we never saw.
    env.pending_receipt("wamid.KILLED", "sent", to).await;
    env.pending_receipt("wamid.KILLED", "delivered", to).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        w.send_message(id).await.expect("recover"),
        SendOutcome::Recovered {
            wamid: "wamid.KILLED".into()
        }
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
    let m = env.message(id).await;
    assert_eq!(m.provider_message_id.as_deref(), Some("wamid.KILLED"));
    assert_eq!(m.status, MessageStatus::Delivered);
    assert_eq!(
        w.send_message(id).await.expect("again"),
        SendOutcome::AlreadySent
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
}
both_backends!(killed_mid_send_is_not_sent_twice);

/// The same for a send to a BSUID, whose receipts name the user by
/// `recipient_user_id` only: the receipt is still recognised as Meta's
/// word that the send went through.
async fn killed_mid_send_to_a_bsuid_is_recovered(backend: Backend) {
    let env = env(backend, 80).await;
    let server = slow_meta("wamid.KILLED-B").await;
    let mut s = settings(&env, &server.uri());
    s.sending_timeout = Duration::from_secs(1);
    let w = worker(&env, s);
    let id = kill_mid_send(&env, &server, &w, "US.9090").await;
    let sent: Value = server.received_requests().await.expect("recorded")[0]
        .body_json()
        .expect("json");
    assert_eq!(sent["recipient"], "US.9090", "{sent}");
    let now = Utc::now();
    message_status_events::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(env.config_id),
        provider_message_id: Set("wamid.KILLED-B".into()),
        status: Set("sent".into()),
        timestamp: Set(now),
        recipient_id: Set(None),
        recipient_user_id: Set(Some("US.9090".into())),
        applied: Set(false),
        ..Default::default()
    }
    .insert(&env.db)
    .await
    .expect("receipt");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        w.send_message(id).await.expect("recover"),
        SendOutcome::Recovered {
            wamid: "wamid.KILLED-B".into()
        }
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
}
both_backends!(killed_mid_send_to_a_bsuid_is_recovered);

/// The documented remaining window: Meta accepted a send, the worker died
/// before storing the wamid, and no receipt of it reached us within
/// `sending_timeout`. Nothing proves the send happened, so it is resent:
/// Meta gets the message twice. This test pins that behaviour down so any
/// change to it is deliberate.
async fn stale_sending_without_receipt_is_resent(backend: Backend) {
    let env = env(backend, 80).await;
    let server = slow_meta("wamid.TWICE").await;
    let mut s = settings(&env, &server.uri());
    s.sending_timeout = Duration::from_secs(1);
    let w = worker(&env, s);
    let id = kill_mid_send(&env, &server, &w, "4915100000031").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let outcome = w.send_message(id).await.expect("resend");
    assert_eq!(
        outcome,
        SendOutcome::Sent {
            wamid: "wamid.TWICE".into()
        }
    );
    assert_eq!(server.received_requests().await.expect("recorded").len(), 2);
    assert_eq!(env.message(id).await.attempt_count, 2);
}
both_backends!(stale_sending_without_receipt_is_resent);

// ---------------------------------------------------------------------------
// Rate limits, through the runtime with real delayed retries.

/// 200 sends queued at once to a number allowed 10 per second, under the
/// production retry policy (8 attempts, backoff from 1 s): the burst is
/// paced, not backed off. No one-second window at Meta's end holds more
/// than 10; it all leaves in about 200 / 10 s; each message arrives exactly
/// once with one attempt counted (holding back is not an attempt), none is
/// dead-lettered, and one recipient's three messages keep their order.
#[tokio::test]
async fn burst_is_paced_within_the_number_limit() {
    let env = env(Backend::Postgres, 10).await;
    let graph = sim(vec![]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let mut ids = Vec::new();
    let one = "4915166666666";
    for i in 0..200 {
        let to = if i % 50 == 7 {
            one.to_owned()
        } else {
            format!("49151{i:08}")
        };
        ids.push(
            env.queue_and_publish(&to, template(&format!("promo{i}")))
                .await,
        );
    }
    let started = Instant::now();
    let (token, handle) = env.run(&w, RetryPolicy::default());
    assert!(
        graph.wait_for_sent(200, Duration::from_secs(60)).await,
        "only {} of 200 sent",
        graph.sent().len()
    );
    let elapsed = started.elapsed();
    // Nothing more arrives afterwards (no duplicate in a delay queue).
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    let _ = handle.await;

    let sent = graph.sent();
    assert_eq!(sent.len(), 200);
    let mut times: Vec<u64> = sent.iter().map(|s| s.time_ms).collect();
    times.sort_unstable();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| **u < t + 1000).count();
        let gaps: Vec<u64> = times[i..i + in_window]
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        assert!(
            in_window <= 10,
            "{in_window} sends within 1 s from {t}: gaps {gaps:?}"
        );
    }
    let per_second: Vec<usize> = {
        let first = times[0];
        let mut v = vec![0usize; ((times[times.len() - 1] - first) / 1000 + 1) as usize];
        for t in &times {
            v[((t - first) / 1000) as usize] += 1;
        }
        v
    };
    eprintln!("burst: {elapsed:?}, sends per second {per_second:?}");
    // 200 at 9.7/s (the limiter keeps 3% headroom) is 20.6 s; paced, it
    // takes little more. Backed off, the last ones would wait minutes.
    assert!(
        elapsed <= Duration::from_secs_f64(200.0 / 9.7 * 1.1 + 1.0),
        "{elapsed:?}: {per_second:?}"
    );
    let mut to: Vec<&str> = sent.iter().map(|s| s.to.as_str()).collect();
    to.sort_unstable();
    to.dedup();
    assert_eq!(to.len(), 197, "every message exactly once");
    for id in &ids {
        let m = env.message(*id).await;
        assert_eq!(m.status, MessageStatus::Sent);
        assert_eq!(m.attempt_count, 1, "held back is not an attempt");
    }
    let dead = env.broker.dlq_list(Queue::Outbound, 10).await.expect("dlq");
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    // One recipient's messages, queued 8th, 58th, 108th and 158th, leave
    // in that order.
    let mut theirs: Vec<(u64, String)> = sent
        .iter()
        .filter(|s| s.to == one)
        .map(|s| {
            let name = s.body["template"]["name"].as_str().unwrap_or_default();
            (s.time_ms, name.to_owned())
        })
        .collect();
    theirs.sort();
    let names: Vec<&str> = theirs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["promo7", "promo57", "promo107", "promo157"]);
}

/// One customer gets 3 messages under a pair limit of 1 per second; five
/// others get one each. The others are not held back by the first.
#[tokio::test]
async fn pair_limit_delays_one_recipient_only() {
    let env = env(Backend::Sqlite, 80).await;
    let graph = sim(vec![]).await;
    let mut s = settings(&env, &graph.base_url());
    s.limits.pair_period = Duration::from_secs(1);
    s.limits.pair_burst = 1;
    let w = worker(&env, s);
    let busy = "4915199999999";
    for i in 0..3 {
        env.queue_and_publish(busy, template(&format!("step{i}")))
            .await;
    }
    for i in 0..5 {
        env.queue_and_publish(&format!("49152{i:08}"), template("hello"))
            .await;
    }
    let start_ms = wapipe_now_ms();
    let (token, handle) = env.run(&w, fast_policy());
    assert!(graph.wait_for_sent(8, Duration::from_secs(20)).await);
    token.cancel();
    let _ = handle.await;
    let sent = graph.sent();
    let mut busy_times: Vec<u64> = sent
        .iter()
        .filter(|s| s.to == busy)
        .map(|s| s.time_ms)
        .collect();
    busy_times.sort_unstable();
    assert_eq!(busy_times.len(), 3);
    for pair in busy_times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 900,
            "pair limit not kept: {busy_times:?}"
        );
    }
    for s in sent.iter().filter(|s| s.to != busy) {
        assert!(
            s.time_ms - start_ms < 700,
            "{} waited {} ms behind the busy recipient",
            s.to,
            s.time_ms - start_ms
        );
    }
}

fn wapipe_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Meta's 131056 (pair limit) delays only that recipient.
async fn pair_error_cools_down_only_that_recipient(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![rule("131056:to=4915188888888:times=1")]).await;
    let mut s = settings(&env, &graph.base_url());
    s.limits.pair_cooldown = Duration::from_secs(30);
    let w = worker(&env, s);
    let a = env.queue("4915188888888", template("a"), None).await;
    let b = env.queue("4915177777777", template("b"), None).await;
    assert!(matches!(
        w.send_message(a).await,
        Err(JobError::Retryable(_))
    ));
    // Held back without a call, while another recipient goes through.
    let again = w.send_message(a).await;
    assert!(
        matches!(&again, Err(JobError::Deferred { reason, .. }) if reason.contains("pair_cooldown")),
        "{again:?}"
    );
    assert!(matches!(
        w.send_message(b).await.expect("b"),
        SendOutcome::Sent { .. }
    ));
    assert_eq!(graph.calls(), 2);
}
both_backends!(pair_error_cools_down_only_that_recipient);

// ---------------------------------------------------------------------------
// The sweep: the database rebuilds lost jobs.

async fn sweep_republishes_lost_jobs(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![]).await;
    let mut s = settings(&env, &graph.base_url());
    s.sending_timeout = Duration::from_millis(500);
    let w = worker(&env, s.clone());
    let sweep = SweepSettings {
        grace: Duration::from_millis(200),
        ..SweepSettings::default()
    };
    // Queued without a job, as `wapipe send` does in embedded mode.
    let lost = env.queue("4915100000040", template("hello"), None).await;
    // Too fresh for a periodic pass...
    let n = outbound::sweep_once(
        &env.db,
        env.broker.as_ref(),
        &sweep,
        s.sending_timeout,
        false,
    )
    .await
    .expect("sweep");
    assert_eq!(n, 0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // ...then published once, and not again while its job is out.
    let n = outbound::sweep_once(
        &env.db,
        env.broker.as_ref(),
        &sweep,
        s.sending_timeout,
        false,
    )
    .await
    .expect("sweep");
    assert_eq!(n, 1);
    let n = outbound::sweep_once(
        &env.db,
        env.broker.as_ref(),
        &sweep,
        s.sending_timeout,
        false,
    )
    .await
    .expect("sweep");
    assert_eq!(n, 0);
    // A startup pass takes everything unfinished.
    let n = outbound::sweep_once(
        &env.db,
        env.broker.as_ref(),
        &sweep,
        s.sending_timeout,
        true,
    )
    .await
    .expect("sweep");
    assert_eq!(n, 1);

    let (token, handle) = env.run(&w, fast_policy());
    assert!(graph.wait_for_sent(1, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel();
    let _ = handle.await;
    assert_eq!(graph.calls(), 1, "two jobs, one send");
    assert_eq!(env.message(lost).await.status, MessageStatus::Sent);
}
both_backends!(sweep_republishes_lost_jobs);

/// The role's background task, as `serve` spawns it: picks up a message
/// queued by another process and gets it sent.
async fn background_sweep_delivers_a_message_queued_elsewhere(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![]).await;
    let mut s = settings(&env, &graph.base_url());
    s.sweep.interval = Duration::from_millis(100);
    s.sweep.grace = Duration::from_millis(100);
    let w = worker(&env, s.clone());
    let (token, handle) = env.run(&w, fast_policy());
    let tasks: Vec<_> = outbound::background_tasks(&deps(&env), &s, token.clone())
        .into_iter()
        .map(tokio::spawn)
        .collect();
    assert_eq!(tasks.len(), 1);
    let id = env.queue("4915100000041", template("hello"), None).await;
    assert!(graph.wait_for_sent(1, Duration::from_secs(10)).await);
    token.cancel();
    let _ = handle.await;
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(env.message(id).await.status, MessageStatus::Sent);
}
both_backends!(background_sweep_delivers_a_message_queued_elsewhere);

// ---------------------------------------------------------------------------
// Queueing.

async fn queueing_validates_and_upserts(backend: Backend) {
    let env = env(backend, 80).await;
    let new = |to: &str, content: OutboundContent| NewOutbound {
        config_id: env.config_id,
        to: to.into(),
        content,
        reply_to: None,
        origin: Origin::Admin,
        sender_type: "agent".into(),
        sender_id: None,
        answers: None,
    };
    let a = wapipe_domain::outbox::queue_message(&env.db, new("+4915100000050", text("one")))
        .await
        .expect("queue");
    let b = wapipe_domain::outbox::queue_message(&env.db, new("4915100000050", text("two")))
        .await
        .expect("queue");
    // Same customer and chat: upserted, not duplicated.
    assert_eq!(a.customer_id, b.customer_id);
    assert_eq!(a.chat_id, b.chat_id);
    assert_eq!(a.lane_key, format!("{PHONE}:4915100000050"));
    let m = env.message(b.message_id).await;
    assert_eq!(m.status, MessageStatus::Queued);
    assert_eq!(m.direction, messages::Direction::Outbound);
    assert_eq!(m.text.as_deref(), Some("two"));
    for bad in ["12ab", "+123", "1234567890123456"] {
        assert!(matches!(
            wapipe_domain::outbox::queue_message(&env.db, new(bad, text("x"))).await,
            Err(OutboxError::BadPhone(_))
        ));
    }
    assert!(matches!(
        wapipe_domain::outbox::queue_message(&env.db, new("4915100000050", text(""))).await,
        Err(OutboxError::Content(_))
    ));
    let mut unknown = new("4915100000050", text("x"));
    unknown.config_id = Uuid::now_v7();
    assert!(matches!(
        wapipe_domain::outbox::queue_message(&env.db, unknown).await,
        Err(OutboxError::UnknownConfig(_))
    ));
}
both_backends!(queueing_validates_and_upserts);

/// A bot's replies to one message: one transaction, in order, and a
/// redelivered message's replies come back as the rows queued first.
async fn queueing_several_keeps_order_and_counts_once(backend: Backend) {
    let env = env(backend, 80).await;
    let to = "4915100000051";
    let first = wapipe_domain::outbox::queue_message(
        &env.db,
        NewOutbound {
            config_id: env.config_id,
            to: to.into(),
            content: text("agent"),
            reply_to: None,
            origin: Origin::Admin,
            sender_type: "agent".into(),
            sender_id: None,
            answers: None,
        },
    )
    .await
    .expect("queue");
    let reply = |seq: i32| NewOutbound {
        config_id: env.config_id,
        to: to.into(),
        content: text(&format!("reply {seq}")),
        reply_to: None,
        origin: Origin::Bot,
        sender_type: "bot".into(),
        sender_id: None,
        answers: Some(wapipe_domain::outbox::Answer {
            message_id: first.message_id,
            seq,
        }),
    };
    let one = wapipe_domain::outbox::queue_messages(&env.db, vec![reply(0), reply(1)])
        .await
        .expect("queue");
    assert!(one.iter().all(|q| q.is_new && q.chat_id == first.chat_id));
    assert!(one[0].message_id < one[1].message_id, "queued in order");
    let again = wapipe_domain::outbox::queue_messages(&env.db, vec![reply(0), reply(1), reply(2)])
        .await
        .expect("queue");
    assert_eq!(
        again
            .iter()
            .map(|q| (q.message_id, q.is_new))
            .collect::<Vec<_>>()[..2],
        [(one[0].message_id, false), (one[1].message_id, false)]
    );
    assert!(again[2].is_new);
    for (q, want) in again.iter().zip(["reply 0", "reply 1", "reply 2"]) {
        assert_eq!(env.message(q.message_id).await.text.as_deref(), Some(want));
    }
    let chat = wapipe_shared::entities::chats::Entity::find_by_id(first.chat_id)
        .one(&env.db)
        .await
        .expect("db")
        .expect("chat");
    assert_eq!(
        chat.total_messages, 4,
        "the agent's message and three replies"
    );
    assert_eq!(chat.bot_messages, 3);
    assert_eq!(chat.agent_messages, 1);
    assert_eq!(chat.last_message_id, Some(again[2].message_id));

    let mut elsewhere = reply(3);
    elsewhere.to = "4915100000052".into();
    assert!(matches!(
        wapipe_domain::outbox::queue_messages(&env.db, vec![reply(3), elsewhere]).await,
        Err(OutboxError::Config(_))
    ));
}
both_backends!(queueing_several_keeps_order_and_counts_once);

/// Messages to several recipients in one transaction: each recipient's
/// customer and chat are upserted once and their counters add up per chat;
/// a message refused for good is that message's error alone (not
/// written); an answer queued before comes back as the first row.
async fn queueing_to_many_answers_each_message(backend: Backend) {
    let env = env(backend, 80).await;
    let new = |to: &str, body: &str, seq: Option<i32>| NewOutbound {
        config_id: env.config_id,
        to: to.into(),
        content: text(body),
        reply_to: None,
        origin: Origin::Bot,
        sender_type: "bot".into(),
        sender_id: None,
        answers: seq.map(|seq| wapipe_domain::outbox::Answer {
            message_id: Uuid::nil(),
            seq,
        }),
    };
    let (a, b) = ("4915100000060", "4915100000061");
    let mut unknown = new(a, "elsewhere", None);
    unknown.config_id = Uuid::now_v7();
    let out = wapipe_domain::outbox::queue_each(
        &env.db,
        vec![
            new(a, "a1", Some(0)),
            new(b, "b1", Some(1)),
            new("12ab", "bad number", None),
            new(a, "a2", Some(2)),
            new(b, "", None),
            unknown,
        ],
    )
    .await
    .expect("queue");
    assert_eq!(out.len(), 6);
    let ok: Vec<&QueuedMessage> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 3);
    assert!(matches!(out[2], Err(OutboxError::BadPhone(_))));
    assert!(matches!(out[4], Err(OutboxError::Content(_))));
    assert!(matches!(out[5], Err(OutboxError::UnknownConfig(_))));
    let (a1, b1, a2) = (ok[0], ok[1], ok[2]);
    assert!(ok.iter().all(|q| q.is_new));
    assert_eq!((a1.chat_id, a1.customer_id), (a2.chat_id, a2.customer_id));
    assert_ne!(a1.chat_id, b1.chat_id);
    assert_eq!(a1.lane_key, format!("{PHONE}:{a}"));
    assert_eq!(b1.lane_key, format!("{PHONE}:{b}"));
    assert!(a1.message_id < a2.message_id, "one recipient's in order");
    for (q, want) in [(a1, "a1"), (b1, "b1"), (a2, "a2")] {
        assert_eq!(env.message(q.message_id).await.text.as_deref(), Some(want));
    }
    assert_eq!(
        messages::Entity::find()
            .count(&env.db)
            .await
            .expect("count"),
        3,
        "refused messages are not written"
    );
    let db = env.db.clone();
    let chat = |id| {
        let db = db.clone();
        async move {
            wapipe_shared::entities::chats::Entity::find_by_id(id)
                .one(&db)
                .await
                .expect("db")
                .expect("chat")
        }
    };
    let chat_a = chat(a1.chat_id).await;
    assert_eq!((chat_a.total_messages, chat_a.bot_messages), (2, 2));
    assert_eq!(chat_a.last_message_id, Some(a2.message_id));
    assert_eq!(chat(b1.chat_id).await.total_messages, 1);

    // Again, with one more: the answers queued before come back as theirs.
    let again = wapipe_domain::outbox::queue_each(
        &env.db,
        vec![new(b, "b1", Some(1)), new(a, "a3", Some(3))],
    )
    .await
    .expect("queue");
    let again: Vec<QueuedMessage> = again.into_iter().map(|r| r.expect("ok")).collect();
    assert_eq!(
        (again[0].message_id, again[0].is_new),
        (b1.message_id, false)
    );
    assert!(again[1].is_new);
    let chat_a = chat(a1.chat_id).await;
    assert_eq!(chat_a.total_messages, 3);
    assert_eq!(chat_a.last_message_id, Some(again[1].message_id));
    assert_eq!(chat(b1.chat_id).await.total_messages, 1, "counted once");
}
both_backends!(queueing_to_many_answers_each_message);

// ---------------------------------------------------------------------------
// Business-scoped user ids, and the template rules every sender shares.

/// A customer known by a BSUID only (a username user), who wrote `ago` ago.
async fn bsuid_customer(env: &Env, user_id: &str) -> Uuid {
    let now = Utc::now();
    let id = Uuid::now_v7();
    customers::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(env.config_id),
        user_id: Set(Some(user_id.into())),
        last_inbound_at: Set(Some(now - chrono::Duration::minutes(5))),
        ..Default::default()
    }
    .insert(&env.db)
    .await
    .expect("customer");
    id
}

/// A send from `origin` to `to` on the test config.
fn outbound_msg(env: &Env, to: &str, content: OutboundContent, origin: Origin) -> NewOutbound {
    NewOutbound {
        config_id: env.config_id,
        to: to.into(),
        content,
        reply_to: None,
        origin,
        sender_type: "bot".into(),
        sender_id: None,
        answers: None,
    }
}

/// The customer stops marketing messages (`user_preferences`).
async fn opt_out(env: &Env, customer: Uuid) {
    customers::Entity::update_many()
        .col_expr(
            customers::Column::MarketingOptedOut,
            sea_orm::sea_query::Expr::value(true),
        )
        .filter(customers::Column::Id.eq(customer))
        .exec(&env.db)
        .await
        .expect("opt out");
}

/// A template of `category` on the test config.
async fn categorised(env: &Env, name: &str, category: &str) -> Uuid {
    use sea_orm::sea_query::Expr;
    use wapipe_shared::entities::templates;
    let id = wapipe_testkit::db::add_template(
        &env.db,
        env.config_id,
        name,
        "en_US",
        "Hi {{1}}",
        "APPROVED",
    )
    .await;
    templates::Entity::update_many()
        .col_expr(templates::Column::Category, Expr::value(category))
        .filter(templates::Column::Id.eq(id))
        .exec(&env.db)
        .await
        .expect("category");
    id
}

/// A send to a customer without a number goes to Meta's `recipient` with
/// the BSUID (no `to`), into the customer's existing chat.
async fn sends_to_a_bsuid_use_recipient(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    let customer = bsuid_customer(&env, "US.4242").await;
    let q = wapipe_domain::outbox::queue_message(
        &env.db,
        outbound_msg(&env, "US.4242", text("hello"), Origin::Admin),
    )
    .await
    .expect("queue");
    assert_eq!(q.customer_id, customer, "the BSUID's customer");
    assert_eq!(q.lane_key, format!("{PHONE}:US.4242"));
    assert!(matches!(
        drive(&w, q.message_id).await,
        SendOutcome::Sent { .. }
    ));
    let sent = graph.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "recipient": "US.4242", "type": "text",
            "text": {"preview_url": false, "body": "hello"}})
    );
    let m = env.message(q.message_id).await;
    assert_eq!(m.to.as_deref(), Some("US.4242"));
    assert_eq!(m.status, MessageStatus::Sent);
    assert_eq!(
        customers::Entity::find().count(&env.db).await.expect("n"),
        1
    );
}
both_backends!(sends_to_a_bsuid_use_recipient);

/// One rule for every sender, applied when a message is queued (the API,
/// a bot's replies, reminders) and again by the outbound worker: a
/// MARKETING template to a customer who stopped marketing messages is
/// refused with 131050, an AUTHENTICATION template to a BSUID is refused
/// (Meta delivers those to phone numbers only); nothing reaches Meta.
async fn template_refusals_for_every_sender(backend: Backend) {
    let env = env(backend, 80).await;
    let graph = sim(vec![]).await;
    let w = worker(&env, settings(&env, &graph.base_url()));
    categorised(&env, "promo", "MARKETING").await;
    categorised(&env, "receipt", "UTILITY").await;
    categorised(&env, "otp", "AUTHENTICATION").await;
    let login = categorised(&env, "login", "UTILITY").await;
    let new = |to: &str, content: OutboundContent, origin: Origin| {
        outbound_msg(&env, to, content, origin)
    };
    let opted_out = "4915100000060";
    let c = env.customer(opted_out, None).await;
    opt_out(&env, c).await;

    // A bot's replies (one transaction): refused, nothing written.
    let refused = wapipe_domain::outbox::queue_messages(
        &env.db,
        vec![new(opted_out, template("promo"), Origin::Bot)],
    )
    .await;
    assert!(
        matches!(&refused, Err(OutboxError::Refused { code: "131050", .. })),
        "{refused:?}"
    );
    // Reminders (each on its own): the marketing one refused, the other goes.
    let each = wapipe_domain::outbox::queue_each(
        &env.db,
        vec![
            new(opted_out, template("promo"), Origin::System),
            new(opted_out, template("receipt"), Origin::System),
        ],
    )
    .await
    .expect("queue");
    assert!(matches!(
        &each[0],
        Err(OutboxError::Refused { code: "131050", .. })
    ));
    let receipt = each[1].as_ref().expect("utility goes").message_id;
    assert_eq!(
        messages::Entity::find().count(&env.db).await.expect("n"),
        1,
        "only the utility template was queued"
    );

    // Authentication to a BSUID: refused when queued.
    bsuid_customer(&env, "US.5151").await;
    let refused = wapipe_domain::outbox::queue_message(
        &env.db,
        new("US.5151", template("otp"), Origin::Admin),
    )
    .await;
    assert!(
        matches!(
            &refused,
            Err(OutboxError::Refused {
                code: "authentication_needs_phone_number",
                ..
            })
        ),
        "{refused:?}"
    );
    // …and by the worker, for a message queued before the rule applied
    // (here: the template became AUTHENTICATION after queueing).
    let queued = env.queue("US.5151", template("login"), None).await;
    wapipe_shared::entities::templates::Entity::update_many()
        .col_expr(
            wapipe_shared::entities::templates::Column::Category,
            sea_orm::sea_query::Expr::value("AUTHENTICATION"),
        )
        .filter(wapipe_shared::entities::templates::Column::Id.eq(login))
        .exec(&env.db)
        .await
        .expect("category");
    env.refused_locally(&w, queued, "authentication_needs_phone_number")
        .await;
    // A marketing template queued before the customer stopped: the worker
    // refuses it too.
    let before = "4915100000061";
    let c2 = env.customer(before, None).await;
    let promo = env.queue(before, template("promo"), None).await;
    opt_out(&env, c2).await;
    let m = env.refused_locally(&w, promo, "131050").await;
    assert_eq!(m.error_code.as_deref(), Some("131050"));
    assert_eq!(graph.calls(), 0, "no call to Meta for refusals");
    // The utility template goes.
    assert!(matches!(drive(&w, receipt).await, SendOutcome::Sent { .. }));
    assert_eq!(graph.calls(), 1);
}
both_backends!(template_refusals_for_every_sender);
