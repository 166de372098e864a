//! Data points the API shows from stored columns, on PostgreSQL and
//! SQLite: a chat's `firstResponseTime` and `avgResponseTime` after agents'
//! replies (a replayed send counts once), a sent message's `from` and `to`,
//! and names of soft-deleted templates and labels free for new ones while a
//! live duplicate is still a 409.

mod common;

use chrono::{Duration, Utc};
use common::{Api, minutes_ago};
use reqwest::{Method, StatusCode};
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::entities::{chats, messages};

fn id(v: &Value) -> Uuid {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an id")
}

async fn chat_row(api: &Api, chat: Uuid) -> chats::Model {
    chats::Entity::find_by_id(chat)
        .one(&api.db)
        .await
        .expect("read")
        .expect("chat")
}

async fn response_times(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let (chat, _) = api
        .inbound(api.config_id, "33612345678", "Zoé", "hello", minutes_ago(2))
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/messages");
    let send = |text: &str, key: &str| {
        let body = json!({"type": "text", "text": text});
        let key = key.to_owned();
        let (api, path, admin) = (&api, &path, &admin);
        async move {
            api.call_h(
                admin,
                Method::POST,
                path,
                Some(body),
                &[("Idempotency-Key", &key)],
            )
            .await
        }
    };
    let before = chat_row(&api, chat).await;
    let r = send("hi Zoé", "k-1").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let sent = messages::Entity::find_by_id(id(&r.body))
        .one(&api.db)
        .await
        .expect("read")
        .expect("message");
    // Stored on the row, not derived.
    assert_eq!(sent.from.as_deref(), Some("+15550000001"));
    assert_eq!(sent.to.as_deref(), Some("33612345678"));
    assert_eq!(r.body["from"], "+15550000001");

    let waited = before.awaiting_reply_since.expect("waiting");
    let first = (sent.created_at - waited).num_microseconds().expect("µs") as f64 / 1e6;
    assert!((120.0..130.0).contains(&first), "{first}");
    let view = api
        .get(&admin, &format!("/api/whatsapp/chats/{chat}"))
        .await;
    assert_eq!(view.status, StatusCode::OK);
    let shown = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    assert!(
        (shown(&view.body, "firstResponseTime") - first).abs() < 1e-6,
        "{view:?}"
    );
    assert!(
        (shown(&view.body, "avgResponseTime") - first).abs() < 1e-6,
        "{view:?}"
    );

    // The same request again (a client's retry): answered from the first
    // time, counted once.
    let again = send("hi Zoé", "k-1").await;
    assert_eq!(again.body, r.body);
    let c = chat_row(&api, chat).await;
    assert_eq!((c.response_count, c.awaiting_reply_since), (1, None));
    // A second message in a row answers nobody.
    assert_eq!(
        send("anything else?", "k-2").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(chat_row(&api, chat).await.response_count, 1);

    // The customer writes again (the parse worker starts the wait), 30 s ago.
    chats::Entity::update(chats::ActiveModel {
        id: Set(chat),
        awaiting_reply_since: Set(Some(Utc::now() - Duration::seconds(30))),
        ..Default::default()
    })
    .exec(&api.db)
    .await
    .expect("wait");
    assert_eq!(send("sure", "k-3").await.status, StatusCode::ACCEPTED);
    let view = api
        .get(&admin, &format!("/api/whatsapp/chats/{chat}"))
        .await;
    assert!(
        (shown(&view.body, "firstResponseTime") - first).abs() < 1e-6,
        "set once"
    );
    let avg = shown(&view.body, "avgResponseTime");
    assert!(
        ((first + 30.0) / 2.0..(first + 40.0) / 2.0).contains(&avg),
        "{avg}"
    );
    assert_eq!(chat_row(&api, chat).await.response_count, 2);
}
both!(response_times_test, response_times);

async fn names_free_after_soft_delete(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    for (path, body, dup) in [
        (
            "/api/whatsapp/templates",
            json!({"name": "Greeting", "content": "Hello!"}),
            json!({"name": "Greeting", "content": "Hi!"}),
        ),
        (
            "/api/whatsapp/labels",
            json!({"name": "VIP", "color": "#112233"}),
            json!({"name": "vip", "color": "#445566"}),
        ),
    ] {
        let r = api.post(&acme, path, body.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{path}: {r:?}");
        let first = id(&r.body);
        assert_eq!(
            api.post(&acme, path, dup.clone()).await.status,
            StatusCode::CONFLICT
        );
        let gone = api.delete(&acme, &format!("{path}/{first}")).await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT, "{path}");
        let r = api.post(&acme, path, dup.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{path}: the name is free: {r:?}"
        );
        let second = id(&r.body);
        assert_ne!(second, first, "{path}: a new row");
        let live = api.post(&acme, path, body).await;
        assert_eq!(live.status, StatusCode::CONFLICT, "{path}: {live:?}");
        // Renaming another onto the live name is refused too.
        let r = api
            .post(&acme, path, {
                let mut other = dup.clone();
                other["name"] = json!("Other");
                other
            })
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let rename = api
            .put(
                &acme,
                &format!("{path}/{}", id(&r.body)),
                Some(json!({"name": dup["name"]})),
            )
            .await;
        assert_eq!(rename.status, StatusCode::CONFLICT, "{path}: {rename:?}");
    }
}
both!(
    names_free_after_soft_delete_test,
    names_free_after_soft_delete
);
