//! The parse and status workers end to end, through the real receiver, in
//! both modes: unicode escaped on the wire is stored decoded (and the
//! signature is still checked over the raw bytes), statuses reach our
//! messages, and replaying events (`wapipe replay`) changes no count.

use std::time::{Duration, Instant};

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::crypto::sign_body;
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_shared::entities::webhook_events::{self, EventStatus};
use wapipe_shared::entities::{chats, conversations, customers, message_status_events};
use wapipe_testkit::app::*;

const HOOK: &str = "/api/whatsapp/webhooks";

async fn message(db: &DatabaseConnection, wamid: &str) -> Option<messages::Model> {
    messages::Entity::find()
        .filter(messages::Column::ProviderMessageId.eq(wamid))
        .one(db)
        .await
        .unwrap()
}

/// Polls until `check` holds; panics after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn unicode_escaped_on_the_wire(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    // As Meta sends non-ASCII: JSON escapes, surrogate pairs for emoji.
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{WABA_ID}","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"{PHONE_NUMBER_ID}"}},"contacts":[{{"profile":{{"name":"Jos\u00e9 M\u00fcller"}},"wa_id":"4917000000042"}}],"messages":[{{"from":"4917000000042","id":"wamid.unicode","timestamp":"1760000000","type":"text","text":{{"body":"Caf\u00e9 \ud83d\udc4d \u4f60\u597d \"quoted\" \\ back"}}}}]}}}}]}}]}}"#
    );
    let raw = body.as_bytes();
    assert!(raw.is_ascii(), "the escapes are on the wire, not UTF-8");

    // The signature of the decoded, re-serialised JSON does not match the
    // raw bytes: 401, nothing stored.
    let decoded: Value = serde_json::from_slice(raw).unwrap();
    let reser = serde_json::to_vec(&decoded).unwrap();
    assert_ne!(reser, raw);
    let (s, _) = app
        .post_with(
            HOOK,
            raw.to_vec(),
            Some(sign_body(APP_SECRET.as_bytes(), &reser)),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(app.count_events(None).await, 0);

    // Signed over the raw bytes: accepted, stored byte for byte, decoded in rows.
    let (s, t) = app.post(raw).await;
    assert_eq!(s, 200, "{t}");
    app.wait_settled(1, Duration::from_secs(20)).await;
    let ev = webhook_events::Entity::find()
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.raw_body, raw);
    let m = message(&app.db, "wamid.unicode").await.expect("stored");
    assert_eq!(m.text.as_deref(), Some("Café 👍 你好 \"quoted\" \\ back"));
    let c = customers::Entity::find()
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.whatsapp_name.as_deref(), Some("José Müller"));
    let chat = chats::Entity::find().one(&app.db).await.unwrap().unwrap();
    assert_eq!(
        chat.last_message.as_deref(),
        Some("Café 👍 你好 \"quoted\" \\ back")
    );

    // An emoji cut in half by the sender: a lone surrogate escape is valid
    // JSON syntax. Accepted (200, not a 400 Meta would retry for 7 days)
    // and read with U+FFFD in its place.
    let cut = body
        .replace("wamid.unicode", "wamid.cut")
        .replace(r"\ud83d\udc4d", r"\ud83d");
    let (s, t) = app.post(cut.as_bytes()).await;
    assert_eq!(s, 200, "{t}");
    app.wait_settled(2, Duration::from_secs(20)).await;
    let m = message(&app.db, "wamid.cut").await.expect("stored");
    assert_eq!(
        m.text.as_deref(),
        Some("Café \u{FFFD} 你好 \"quoted\" \\ back")
    );
    app.stop().await;
}

#[tokio::test]
async fn unicode_escaped_on_the_wire_embedded() {
    unicode_escaped_on_the_wire(Mode::Embedded).await;
}
#[tokio::test]
async fn unicode_escaped_on_the_wire_production() {
    unicode_escaped_on_the_wire(Mode::Production).await;
}

async fn events(db: &DatabaseConnection, status: EventStatus) -> u64 {
    webhook_events::Entity::find()
        .filter(webhook_events::Column::Status.eq(status))
        .count(db)
        .await
        .unwrap()
}

/// Every count the workers keep, and each message's state.
async fn snapshot(db: &DatabaseConnection) -> Value {
    let msgs: Vec<Value> = messages::Entity::find()
        .order_by_asc(messages::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            json!([
                m.provider_message_id,
                m.status,
                m.text,
                m.reactions,
                m.conversation_id,
                m.delivered_at,
                m.read_at
            ])
        })
        .collect();
    let chats: Vec<Value> = chats::Entity::find()
        .order_by_asc(chats::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            json!([
                c.unread_count,
                c.total_messages,
                c.customer_messages,
                c.last_message_id
            ])
        })
        .collect();
    let convs: Vec<Value> = conversations::Entity::find()
        .order_by_asc(conversations::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| json!([c.status, c.message_count, c.expires_at]))
        .collect();
    json!({
        "messages": msgs, "chats": chats, "conversations": convs,
        "customers": customers::Entity::find().count(db).await.unwrap(),
        "receipts": message_status_events::Entity::find().count(db).await.unwrap(),
        "pending": message_status_events::Entity::find()
            .filter(message_status_events::Column::Applied.eq(false))
            .count(db).await.unwrap(),
    })
}

async fn post_json(app: &TestApp, body: &Value) {
    let (s, t) = app.post(body.to_string().as_bytes()).await;
    assert_eq!(s, 200, "{t}");
}

fn value(messages: Value, statuses: Value) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp",
                  "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
                  "contacts": [{"profile": {"name": "Replay Tester"}, "wa_id": "4917000000077"}],
                  "messages": messages, "statuses": statuses}}]}]})
}

async fn replay_changes_no_count(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    let now = Utc::now().timestamp();
    let from = "4917000000077";
    let text = |id: &str, t: i64, body: &str| json!({"from": from, "id": id, "timestamp": t.to_string(), "type": "text", "text": {"body": body}});
    // First contact, so the chat exists for our outbound message.
    post_json(
        &app,
        &value(json!([text("wamid.r1", now - 60, "one")]), json!([])),
    )
    .await;
    app.wait_settled(1, Duration::from_secs(30)).await;
    let chat = chats::Entity::find()
        .one(&app.db)
        .await
        .unwrap()
        .expect("chat");
    let t = Utc::now();
    messages::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(t),
        updated_at: Set(t),
        config_id: Set(app.config_id),
        chat_id: Set(chat.id),
        customer_id: Set(chat.customer_id),
        conversation_id: Set(None),
        provider_message_id: Set(Some("wamid.ours".into())),
        direction: Set(Direction::Outbound),
        origin: Set(Origin::Admin),
        sender_type: Set("agent".into()),
        sender_id: Set(None),
        r#type: Set("text".into()),
        text: Set(Some("our answer".into())),
        media: Set(None),
        location: Set(None),
        contacts: Set(None),
        interactive: Set(None),
        template: Set(None),
        reaction: Set(None),
        reactions: Set(None),
        context: Set(None),
        reply_to_provider_id: Set(None),
        is_forwarded: Set(false),
        referral: Set(None),
        payload: Set(None),
        errors: Set(None),
        status: Set(MessageStatus::Sent),
        error_code: Set(None),
        error_title: Set(None),
        error_details: Set(None),
        timestamp: Set(None),
        sent_at: Set(None),
        delivered_at: Set(None),
        read_at: Set(None),
        failed_at: Set(None),
        dispatched_at: Set(None),
        attempt_count: Set(1),
        is_read: Set(false),
        is_edited: Set(false),
        edit_history: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        effect_target: Set(None),
        answers_message_id: Set(None),
        answer_seq: Set(None),
        ..Default::default()
    }
    .insert(&app.db)
    .await
    .unwrap();

    let status = |st: &str, t: i64| json!({"id": "wamid.ours", "status": st, "timestamp": t.to_string(), "recipient_id": from});
    // Out of order: read before delivered.
    post_json(&app, &value(json!([]), json!([status("read", now - 20)]))).await;
    post_json(
        &app,
        &value(json!([]), json!([status("delivered", now - 30)])),
    )
    .await;
    post_json(&app, &value(
        json!([text("wamid.r2", now - 10, "two"),
               {"from": from, "id": "wamid.r3", "timestamp": (now - 5).to_string(), "type": "reaction",
                "reaction": {"message_id": "wamid.ours", "emoji": "❤️"}}]),
        json!([]),
    ))
    .await;
    app.wait_settled(4, Duration::from_secs(30)).await;
    eventually("receipts applied", Duration::from_secs(30), || async {
        message(&app.db, "wamid.ours")
            .await
            .is_some_and(|m| m.status == MessageStatus::Read && m.delivered_at.is_some())
    })
    .await;
    let before = snapshot(&app.db).await;
    assert_eq!(before["pending"], 0);
    let ours = message(&app.db, "wamid.ours").await.unwrap();
    assert_eq!(ours.reactions.unwrap()[from]["emoji"], "❤️");

    // Replay every event, as `wapipe replay --id` does.
    let ids: Vec<Uuid> = webhook_events::Entity::find()
        .order_by_asc(webhook_events::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 4);
    for id in &ids {
        assert_eq!(
            wapipe_ingest::relay::replay_event(&app.db, &app.broker, *id)
                .await
                .unwrap(),
            1
        );
    }
    app.wait_settled(4, Duration::from_secs(30)).await;
    // Let the status jobs the replay published run too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events(&app.db, EventStatus::Failed).await, 0);
    assert_eq!(snapshot(&app.db).await, before);
    app.stop().await;
}

#[tokio::test]
async fn replay_changes_no_count_embedded() {
    replay_changes_no_count(Mode::Embedded).await;
}
#[tokio::test]
async fn replay_changes_no_count_production() {
    replay_changes_no_count(Mode::Production).await;
}
