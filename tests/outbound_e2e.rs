//! Outbound end to end: `wapipe send` (the real binary, a separate process
//! as in production) queues a message; the outbound worker and its sweep
//! carry it to the fake Graph API; the fake Meta posts signed status
//! webhooks back to the running service, whose parse and status workers
//! move the message to `read`. Plus the CLI's answers to bad input.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::EntityTrait;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe::serve::Roles;
use wapipe_shared::config::Settings;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::messages::{self, MessageStatus};
use wapipe_shared::retry::RetryPolicy;
use wapipe_sim::GraphHandle;
use wapipe_testkit::app::{KEY, Mode, TestApp, settings_for, text_webhook};
use wapipe_workers::Deps;
use wapipe_workers::outbound::OutboundSettings;
use wapipe_workers::runtime;

mod common;

/// `wapipe send …` against the service's database and broker. Awaited, not
/// blocked on: the app under test shares this test's thread, and a task of
/// it frozen inside a SQLite write would hold the lock the CLI needs.
async fn cli(settings: &Settings, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wapipe"));
    cmd.arg("send")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &settings.database_url)
        .env("WAPIPE_SECRET_KEY", KEY)
        .env("WAPIPE_QUEUE_PREFIX", &settings.queue_prefix)
        .env("WAPIPE_LANES", settings.lanes.to_string())
        .env("RUST_LOG", "warn");
    if let Some(amqp) = &settings.amqp_url {
        cmd.env("AMQP_URL", amqp);
    }
    tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("run wapipe")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The message id the CLI printed last.
fn sent_id(o: &Output) -> Uuid {
    assert!(o.status.success(), "failed: {}\n{}", stdout(o), stderr(o));
    let out = stdout(o);
    let last = out.lines().last().unwrap_or_default();
    Uuid::parse_str(last.trim()).unwrap_or_else(|_| panic!("last line {last:?} is not an id"))
}

fn fails_with(o: Output, needle: &str) {
    assert!(!o.status.success(), "should fail: {}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "must not panic: {err}");
}

struct Outbound {
    graph: GraphHandle,
    token: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The outbound role beside a running service (the same database and
/// broker), sending to a fake Meta that calls the service back.
async fn outbound_role(app: &TestApp, grace: Duration) -> Outbound {
    let (listener, _) = common::graph_listener().await;
    let graph = common::fake_graph(listener, app).await;
    // What the outbound role's registration builds, with a faster sweep.
    let key = Arc::new(SecretKey::from_base64(KEY).expect("key"));
    let mut process = app.settings.clone();
    process.graph_api_base = graph.base_url();
    let mut settings = OutboundSettings::from_settings(&process);
    settings.sweep.interval = Duration::from_millis(100);
    settings.sweep.grace = grace;
    let deps = Deps::new(app.db.clone(), app.broker.clone(), process, key);
    let worker = wapipe_workers::runtime::typed(
        wapipe_workers::outbound::OutboundWorker::new(deps.clone(), settings.clone())
            .expect("worker"),
    );
    let token = CancellationToken::new();
    let mut tasks = Vec::new();
    let (broker, t) = (app.broker.clone(), token.clone());
    let policy = RetryPolicy {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_attempts: 50,
    };
    tasks.push(tokio::spawn(async move {
        let _ = runtime::run(broker, worker, policy, t).await;
    }));
    for task in wapipe_workers::outbound::background_tasks(&deps, &settings, token.clone()) {
        tasks.push(tokio::spawn(task));
    }
    Outbound {
        graph,
        token,
        tasks,
    }
}

impl Outbound {
    async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn wait_for_status(app: &TestApp, id: Uuid, want: MessageStatus) -> messages::Model {
    let start = Instant::now();
    loop {
        let m = messages::Entity::find_by_id(id)
            .one(&app.db)
            .await
            .expect("query")
            .expect("message row");
        if m.status == want {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "message still {} (error {:?})",
            m.status,
            m.error_code
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_round_trip(mode: Mode, grace: Duration) {
    common::install_tls_provider();
    let (settings, dir) = wapipe_testkit::app::settings_for(mode).await;
    let roles = Roles {
        ingest: true,
        api: false,
        workers: vec!["parse".into(), "status".into()],
    };
    let app = TestApp::spawn_with(mode, settings, dir, roles).await;
    let out = outbound_role(&app, grace).await;
    let config = app.config_id.to_string();
    let url = app.settings.clone();

    // A template needs no window: sent, then sent/delivered/read come back.
    let o = cli(
        &url,
        &[
            "--config",
            &config,
            "--to",
            "+4915112345678",
            "--template",
            "order_update",
            "--lang",
            "en_US",
            "--param",
            "Ada",
            "--param",
            "42",
        ],
    )
    .await;
    let id = sent_id(&o);
    let m = wait_for_status(&app, id, MessageStatus::Read).await;
    let sent = out.graph.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        m.provider_message_id.as_deref(),
        Some(sent[0].wamid.as_str())
    );
    assert_eq!(
        sent[0].body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "to": "4915112345678", "type": "template", "template": {"name": "order_update",
            "language": {"code": "en_US"}, "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Ada"}, {"type": "text", "text": "42"}]}]}})
    );
    assert!(m.sent_at.is_some() && m.delivered_at.is_some() && m.read_at.is_some());

    // Free-form text to someone who never wrote: refused locally.
    let o = cli(
        &url,
        &[
            "--config",
            &config,
            "--to",
            "4915199990000",
            "--text",
            "hi there",
        ],
    )
    .await;
    let id = sent_id(&o);
    let m = wait_for_status(&app, id, MessageStatus::Failed).await;
    assert_eq!(m.error_code.as_deref(), Some("131047"));
    assert_eq!(out.graph.calls(), 1, "no Graph call for the refused text");

    out.stop().await;
    app.stop().await;
}

/// Embedded mode: the CLI cannot reach the server's in-process queue, so
/// the sweep finds the queued row.
#[tokio::test]
async fn send_cli_round_trip_embedded() {
    send_round_trip(Mode::Embedded, Duration::from_millis(300)).await;
}

/// Production mode: the CLI publishes to RabbitMQ. The sweep's grace is an
/// hour here, so only the published job can deliver the message in time.
#[tokio::test]
async fn send_cli_round_trip_production() {
    send_round_trip(Mode::Production, Duration::from_secs(3600)).await;
}

#[tokio::test]
async fn send_cli_bad_input() {
    common::install_tls_provider();
    let (settings, _dir) = wapipe_testkit::app::settings_for(Mode::Embedded).await;
    let (db, config_id) = wapipe_testkit::app::prepare_db(&settings).await;
    let url = settings.clone();
    let config = config_id.to_string();
    let run = async |args: &[&str]| cli(&url, args).await;

    for bad in ["12ab", "+123", "1234567890123456", "+49 151 1234"] {
        fails_with(
            run(&["--config", &config, "--to", bad, "--text", "hi"]).await,
            "is not a WhatsApp number",
        );
    }
    fails_with(
        run(&["--config", &config, "--to", "4915112345678"]).await,
        "--text",
    );
    fails_with(
        run(&[
            "--config",
            &config,
            "--to",
            "4915112345678",
            "--text",
            "hi",
            "--template",
            "t",
            "--lang",
            "en",
        ])
        .await,
        "cannot be used with",
    );
    fails_with(
        run(&[
            "--config",
            &config,
            "--to",
            "4915112345678",
            "--template",
            "t",
        ])
        .await,
        "--lang",
    );
    fails_with(
        run(&["--config", &config, "--to", "4915112345678", "--text", ""]).await,
        "must not be empty",
    );
    fails_with(
        run(&["--config", "nope", "--to", "4915112345678", "--text", "hi"]).await,
        "is not a config id",
    );
    let unknown = Uuid::now_v7().to_string();
    fails_with(
        run(&[
            "--config",
            &unknown,
            "--to",
            "4915112345678",
            "--text",
            "hi",
        ])
        .await,
        "no WhatsApp config with id",
    );
    // And the happy path prints the id last.
    let o = run(&["--config", &config, "--to", "4915112345678", "--text", "hi"]).await;
    sent_id(&o);
    // A customer known by a business-scoped user id only: Meta's `recipient`.
    let o = run(&[
        "--config",
        &config,
        "--to",
        "US.13491208655302741918",
        "--text",
        "hi",
    ])
    .await;
    let id = sent_id(&o);
    let m = messages::Entity::find_by_id(id)
        .one(&db)
        .await
        .expect("query")
        .expect("queued");
    let body = m.payload.expect("graph body");
    assert_eq!(body["recipient"], "US.13491208655302741918", "{body}");
    assert!(body.get("to").is_none(), "{body}");
}

/// Through the agents' API: a customer writes (webhook → chat), an agent
/// sends a template with an Idempotency-Key twice (one Graph call), its
/// statuses come back by webhook to `GET /messages/{id}`, and marking the
/// chat read reaches Meta's mark-as-read.
async fn api_round_trip(mode: Mode) {
    common::install_tls_provider();
    let (settings, dir) = settings_for(mode).await;
    let roles = Roles {
        ingest: true,
        api: true,
        workers: vec!["parse".into(), "status".into()],
    };
    let app = TestApp::spawn_with(mode, settings, dir, roles).await;
    let out = outbound_role(&app, Duration::from_millis(300)).await;
    let key = wapipe_domain::apikeys::create(
        &app.db,
        wapipe_domain::apikeys::NewKey::Admin {
            name: None,
            companies: vec![],
        },
    )
    .await
    .expect("key")
    .secret;
    let now = chrono::Utc::now();
    wapipe_shared::entities::templates::Entity::insert(
        wapipe_shared::entities::templates::ActiveModel {
            id: sea_orm::ActiveValue::Set(Uuid::now_v7()),
            created_at: sea_orm::ActiveValue::Set(now),
            updated_at: sea_orm::ActiveValue::Set(now),
            config_id: sea_orm::ActiveValue::Set(app.config_id),
            name: sea_orm::ActiveValue::Set("order_update".into()),
            language: sea_orm::ActiveValue::Set("en_US".into()),
            status: sea_orm::ActiveValue::Set("APPROVED".into()),
            components: sea_orm::ActiveValue::Set(Some(
                json!([{"type": "BODY", "text": "Hi {{1}}, order {{2}} shipped"}]),
            )),
            ..Default::default()
        },
    )
    .exec_without_returning(&app.db)
    .await
    .expect("template");

    let (status, _) = app
        .post(&text_webhook("rt1", "4915112345678", "Where is my order?"))
        .await;
    assert_eq!(status, 200);
    let api =
        |m: reqwest::Method, path: String| app.http.request(m, app.url(&path)).bearer_auth(&key);
    let mut chat = serde_json::Value::Null;
    for _ in 0..200 {
        let list: serde_json::Value = api(reqwest::Method::GET, "/api/whatsapp/chats".into())
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if !list["data"][0].is_null() {
            chat = list["data"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chat_id = chat["id"]
        .as_str()
        .expect("a chat from the webhook")
        .to_owned();

    let body = json!({"type": "template",
        "template": {"name": "order_update", "language": "en_US", "parameters": ["Ada", "42"]}});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = api(
            reqwest::Method::POST,
            format!("/api/whatsapp/chats/{chat_id}/messages"),
        )
        .header("Idempotency-Key", "order-42")
        .json(&body)
        .send()
        .await
        .expect("send");
        assert_eq!(r.status(), 202);
        let m: serde_json::Value = r.json().await.expect("json");
        ids.push(m["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids[0], ids[1], "the replay answers the first send");
    let r = api(reqwest::Method::POST, format!("/api/whatsapp/chats/{chat_id}/messages"))
        .header("Idempotency-Key", "order-42")
        .json(&json!({"type": "template", "template": {"name": "order_update", "language": "en_US", "parameters": ["Bob", "7"]}}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 422);

    // Statuses come back through Meta's webhooks to GET /messages/{id}.
    let start = Instant::now();
    let message = loop {
        let m: serde_json::Value = api(
            reqwest::Method::GET,
            format!("/api/whatsapp/messages/{}", ids[0]),
        )
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
        if m["status"] == "read" {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still {}",
            m["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sent = out.graph.sent();
    assert_eq!(
        sent.len(),
        1,
        "one Graph call for two requests with one key"
    );
    assert_eq!(message["providerMessageId"], json!(sent[0].wamid));
    assert!(message["deliveredAt"].is_string() && message["readAt"].is_string());
    assert_eq!(message["template"]["parameters"], json!(["Ada", "42"]));

    // Marking the chat read reaches Meta.
    let r = api(
        reqwest::Method::PUT,
        format!("/api/whatsapp/chats/{chat_id}/read"),
    )
    .send()
    .await
    .expect("read");
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    while out.graph.reads().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no mark-as-read reached Meta"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(out.graph.reads().len(), 1);

    out.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn api_round_trip_embedded() {
    api_round_trip(Mode::Embedded).await;
}

#[tokio::test]
async fn api_round_trip_production() {
    api_round_trip(Mode::Production).await;
}
