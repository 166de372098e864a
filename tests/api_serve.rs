//! The agents' API inside the real service: `wapipe serve` answers `/api/*`
//! on the receiver's listener (webhooks still reach the receiver there),
//! a customer's webhook becomes a chat and message the API lists, a send
//! through the API is queued, and `wapipe apikey create|list|revoke`.
//! The WebSocket on that shared listener: a customer's webhook arrives as
//! live `chat.created` and `message.created` events.

use std::process::Command;
use std::time::Duration;

use sea_orm::EntityTrait;
use serde_json::{Value, json};
use wapipe_domain::apikeys;
use wapipe_testkit::app::*;

async fn shares_the_listener(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let key = app.admin_key().await;

    // The receiver still owns its paths on the shared listener.
    let r = app
        .http
        .get(app.url("/api/whatsapp/webhooks?hub.mode=subscribe&hub.verify_token=test-verify-token&hub.challenge=42"))
        .send()
        .await
        .expect("handshake");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "42");
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );

    // A customer writes; the parse worker makes the chat the API lists.
    let (status, _) = app
        .post(&wapipe_testkit::build::text_webhook(
            "api1",
            "33612345678",
            "Bonjour",
        ))
        .await;
    assert_eq!(status, 200);
    app.wait_settled(1, Duration::from_secs(20)).await;
    let get = |path: &str| app.http.get(app.url(path)).bearer_auth(&key).send();
    let mut chats = Value::Null;
    for _ in 0..100 {
        chats = get("/api/whatsapp/chats")
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if chats["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let chat = &chats["data"][0];
    assert_eq!(chat["phoneNumber"], "33612345678", "{chats}");
    assert_eq!(chat["status"], "unassigned");
    assert_eq!(chat["unreadCount"], 1);
    let id = chat["id"].as_str().expect("id");
    let msgs: Value = get(&format!("/api/whatsapp/chats/{id}/messages"))
        .await
        .expect("messages")
        .json()
        .await
        .expect("json");
    assert_eq!(msgs["data"][0]["text"], "Bonjour");
    assert_eq!(msgs["data"][0]["direction"], "inbound");

    wapipe_shared::entities::templates::Entity::insert(
        wapipe_shared::entities::templates::ActiveModel {
            id: sea_orm::ActiveValue::Set(uuid::Uuid::now_v7()),
            created_at: sea_orm::ActiveValue::Set(chrono::Utc::now()),
            updated_at: sea_orm::ActiveValue::Set(chrono::Utc::now()),
            config_id: sea_orm::ActiveValue::Set(app.config_id),
            name: sea_orm::ActiveValue::Set("hello_world".into()),
            language: sea_orm::ActiveValue::Set("en_US".into()),
            status: sea_orm::ActiveValue::Set("APPROVED".into()),
            components: sea_orm::ActiveValue::Set(Some(json!([{"type": "BODY", "text": "Hello"}]))),
            ..Default::default()
        },
    )
    .exec_without_returning(&app.db)
    .await
    .expect("template");
    // The fixture's message is from 2024: the window is closed, so a text
    // is refused before anything is queued, and a template goes (202).
    let send = |body: Value| {
        app.http
            .post(app.url(&format!("/api/whatsapp/chats/{id}/messages")))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let r = send(json!({"type": "text", "text": "Bonjour"}))
        .await
        .expect("send");
    assert_eq!(r.status(), 422);
    let r: Value = r.json().await.expect("json");
    assert_eq!(r["error"]["code"], "131047");
    let r =
        send(json!({"type": "template", "template": {"name": "hello_world", "language": "en_US"}}))
            .await
            .expect("send");
    assert_eq!(r.status(), 202);

    // Not mistaken for a webhook pinned to a config id.
    let events: Value = get("/api/whatsapp/webhooks/events")
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    assert_eq!(events["data"][0]["eventType"], "messages", "{events}");

    let r = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("doc");
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(app.url("/api/whatsapp/chats"))
        .send()
        .await
        .expect("no key");
    assert_eq!(r.status(), 401);
    app.stop().await;
}

/// `wapipe serve` answers the WebSocket upgrade on the receiver's
/// listener (the upgrade passes through to the API), and the parse
/// worker's writes reach the client live.
async fn websocket_on_the_shared_listener(mode: Mode) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let app = TestApp::spawn(mode).await;
    let key = app.admin_key().await;
    let mut req = app
        .url("/api/whatsapp/ws?after=0")
        .replacen("http", "ws", 1)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the upgrade passes the shared listener");
    assert_eq!(resp.status(), 101);

    let (status, _) = app
        .post(&wapipe_testkit::build::text_webhook(
            "ws1",
            "33612345679",
            "Salut",
        ))
        .await;
    assert_eq!(status, 200);
    let mut got: Vec<Value> = Vec::new();
    while got.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("events within 20 s")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            got.push(serde_json::from_str(&t).expect("json"));
        }
    }
    assert_eq!(got[0]["type"], "chat.created", "{got:?}");
    assert_eq!(got[0]["data"]["phoneNumber"], "33612345679");
    assert_eq!(got[0]["data"]["unreadCount"], 1);
    assert_eq!(got[1]["type"], "message.created", "{got:?}");
    assert_eq!(got[1]["data"]["text"], "Salut");
    assert_eq!(got[1]["data"]["direction"], "inbound");
    assert_eq!(got[1]["chatId"], got[0]["chatId"]);
    assert!(got[0]["seq"].as_i64() < got[1]["seq"].as_i64());

    // The same message again in another delivery (its wamid known): it
    // changes nothing, so it writes no event.
    let (status, _) = app
        .post(&wapipe_testkit::build::text_webhook(
            "ws1",
            "33612345679",
            "Salut !",
        ))
        .await;
    assert_eq!(status, 200);
    app.wait_settled(2, Duration::from_secs(20)).await;
    let more = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        more.is_err(),
        "a redelivered webhook wrote an event: {more:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_on_the_shared_listener_embedded() {
    websocket_on_the_shared_listener(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_on_the_shared_listener_production() {
    websocket_on_the_shared_listener(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_the_listener_embedded() {
    shares_the_listener(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_the_listener_production() {
    shares_the_listener(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_its_own_listener() {
    let (mut settings, dir) = settings_for(Mode::Embedded).await;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let api_at = probe.local_addr().expect("addr");
    drop(probe);
    settings.api_listen = Some(api_at);
    let app = TestApp::spawn_with(Mode::Embedded, settings, dir, wapipe::serve::Roles::all()).await;
    // The receiver's listener no longer serves the API…
    let r = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    // …its own does.
    let r = app
        .http
        .get(format!("http://{api_at}/api/openapi.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    app.stop().await;
}

fn wapipe(url: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wapipe"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("WAPIPE_SECRET_KEY", KEY)
        .env("WAPIPE_SECRET_KEY_FILE", dir.join("secret.key"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run wapipe")
}

#[tokio::test]
async fn apikey_cli() {
    let (settings, dir) = settings_for(Mode::Embedded).await;
    let (db, _) = prepare_db(&settings).await;
    let url = &settings.database_url;
    let out = wapipe(
        url,
        dir.path(),
        &[
            "apikey",
            "create",
            "--admin",
            "--company",
            "Test Co",
            "--name",
            "ops",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let secret = stdout.lines().last().expect("the key").to_owned();
    assert!(secret.starts_with("wpk_"));
    let found = apikeys::find_live(&db, &apikeys::hash_key(&secret), chrono::Utc::now())
        .await
        .expect("lookup")
        .expect("the key works");
    assert_eq!(found.kind, "admin");
    assert_eq!(
        apikeys::key_companies(&found),
        Some(vec!["Test Co".to_owned()])
    );

    let out = wapipe(url, dir.path(), &["apikey", "list"]);
    let list = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        list.contains("ops") && list.contains("Test Co") && !list.contains(&secret),
        "{list}"
    );

    let out = wapipe(
        url,
        dir.path(),
        &["apikey", "revoke", &found.id.to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        apikeys::find_live(&db, &apikeys::hash_key(&secret), chrono::Utc::now())
            .await
            .expect("lookup")
            .is_none()
    );
    let again = wapipe(
        url,
        dir.path(),
        &["apikey", "revoke", &found.id.to_string()],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));

    for (args, says) in [
        (vec!["apikey", "create"], "--admin"),
        (
            vec!["apikey", "create", "--agent", "nope"],
            "not an agent id",
        ),
        (
            vec!["apikey", "create", "--admin", "--company", "Nobody"],
            "no company named",
        ),
        (
            vec![
                "apikey",
                "create",
                "--agent",
                "0190a000-0000-7000-8000-000000000000",
            ],
            "no agent",
        ),
    ] {
        let out = wapipe(url, dir.path(), &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
