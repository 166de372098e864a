//! WhatsApp groups end to end, on both deployments: signed webhooks (a
//! group created, two members writing in it, one writing on their own)
//! become a group chat the agents' API shows with its group and members;
//! each message keeps its author; an agent's reply in the group reaches
//! the fake Graph API addressed to the group; the participants of a
//! one-to-one chat are refused clearly.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wapipe::serve::Roles;
use wapipe_testkit::app::{Mode, PHONE_NUMBER_ID, TestApp, WABA_ID, settings_for};

mod common;

const GROUP: &str = "120363025246125486@g.us";

fn change(field: &str, value: Value) -> Vec<u8> {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] =
        json!({"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID});
    json!({"object": "whatsapp_business_account", "entry": [{"id": WABA_ID,
        "time": chrono::Utc::now().timestamp(), "changes": [{"field": field, "value": value}]}]})
    .to_string()
    .into_bytes()
}

fn message(id: &str, from: &str, name: &str, group: Option<&str>, text: &str) -> Vec<u8> {
    let mut m = json!({"from": from, "id": id, "type": "text", "text": {"body": text},
        "timestamp": chrono::Utc::now().timestamp().to_string()});
    if let Some(g) = group {
        m["group_id"] = json!(g);
    }
    change(
        "messages",
        json!({"contacts": [{"profile": {"name": name}, "wa_id": from}], "messages": [m]}),
    )
}

async fn groups_through_the_api(mode: Mode) {
    common::install_tls_provider();
    let (listener, base) = common::graph_listener().await;
    let (mut settings, dir) = settings_for(mode).await;
    settings.graph_api_base = base;
    let app = TestApp::spawn_with(mode, settings, dir, Roles::all()).await;
    let graph = common::fake_graph(listener, &app).await;
    let key = app.admin_key().await;

    let bodies = [
        change(
            "group_lifecycle_update",
            json!({"groups": [{"timestamp": chrono::Utc::now().timestamp().to_string(),
                "group_id": GROUP, "type": "group_create", "subject": "Kunden Berlin",
                "invite_link": "https://chat.whatsapp.com/ABC"}]}),
        ),
        message("wamid.g-1", "4915100000001", "Anna", Some(GROUP), "Hallo!"),
        message("wamid.g-2", "4915100000002", "Bea", Some(GROUP), "Hi"),
        message("wamid.own-1", "4915100000001", "Anna", None, "Privat"),
    ];
    for b in &bodies {
        let (code, text) = app.post(b).await;
        assert_eq!(code, 200, "{text}");
    }
    app.wait_settled(bodies.len() as u64, Duration::from_secs(30))
        .await;

    let chats = app.get_json("/api/whatsapp/chats?limit=10", &key).await;
    let list = chats["data"].as_array().expect("chats").clone();
    assert_eq!(list.len(), 2, "{chats}");
    let group_chat = list
        .iter()
        .find(|c| !c["group"].is_null())
        .expect("a group chat")
        .clone();
    let own = list
        .iter()
        .find(|c| c["group"].is_null())
        .expect("own chat");
    assert_eq!(own["phoneNumber"], "4915100000001");
    let g = &group_chat["group"];
    assert_eq!(
        (
            &g["groupId"],
            &g["subject"],
            &g["status"],
            &g["participantCount"]
        ),
        (
            &json!(GROUP),
            &json!("Kunden Berlin"),
            &json!("active"),
            &json!(2)
        )
    );
    assert_eq!(group_chat["customerName"], "Kunden Berlin");
    assert_eq!(group_chat["providerChatId"], GROUP);
    let chat_id = group_chat["id"].as_str().expect("id").to_owned();

    // Each message keeps its author.
    let msgs = app
        .get_json(&format!("/api/whatsapp/chats/{chat_id}/messages"), &key)
        .await;
    let mut authors: Vec<(String, String)> = msgs["data"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert!(m["participantId"].is_string(), "{m}");
            (
                m["from"].as_str().unwrap_or_default().to_owned(),
                m["senderName"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    authors.sort();
    assert_eq!(
        authors,
        vec![
            ("4915100000001".to_owned(), "Anna".to_owned()),
            ("4915100000002".to_owned(), "Bea".to_owned())
        ]
    );
    let members = app
        .get_json(
            &format!("/api/whatsapp/chats/{chat_id}/participants?status=member"),
            &key,
        )
        .await;
    let mut names: Vec<&str> = members["data"]
        .as_array()
        .expect("members")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    names.sort();
    assert_eq!(names, ["Anna", "Bea"]);

    // Clear refusals.
    let url = |p: &str| app.url(p);
    let resp = app
        .http
        .get(url(&format!(
            "/api/whatsapp/chats/{}/participants",
            own["id"].as_str().expect("id")
        )))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_a_group", "{body}");
    let resp = app
        .http
        .get(url(&format!(
            "/api/whatsapp/chats/{chat_id}/participants?status=boss"
        )))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 400);

    // An agent's reply in the group goes to the group.
    let resp = app
        .http
        .post(url(&format!("/api/whatsapp/chats/{chat_id}/messages")))
        .bearer_auth(&key)
        .json(&json!({"type": "text", "text": "Willkommen!"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        resp.status(),
        202,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while graph.sent().is_empty() {
        assert!(Instant::now() < deadline, "nothing reached the fake Graph");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = graph.sent();
    assert_eq!(sent.len(), 1, "the bot stayed silent, the agent spoke once");
    assert_eq!(sent[0].to, GROUP);
    assert_eq!(sent[0].body["recipient_type"], "group");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_embedded_sqlite() {
    groups_through_the_api(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_production_postgres_rabbitmq() {
    groups_through_the_api(Mode::Production).await;
}
