//! The fake Graph API against real HTTP on 127.0.0.1: sends, status webhooks, error rules and the control API.

use std::time::Duration;
use wapipe_testkit::receiver;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use wapipe_sim::graph::{ErrorRule, GraphConfig, GraphHandle, spawn_graph};

const SECRET: &str = "graph-secret";
const WAIT: Duration = Duration::from_secs(5);

async fn graph(cfg: GraphConfig) -> GraphHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn_graph(listener, cfg).await.unwrap()
}

fn cfg_with(webhook: Option<String>) -> GraphConfig {
    GraphConfig {
        webhook,
        app_secret: SECRET.into(),
        status_delay: Duration::from_millis(5),
        ..GraphConfig::default()
    }
}

struct Answer {
    status: u16,
    json: Value,
}

async fn call(method: &str, url: String, token: Option<&str>, body: Option<Value>) -> Answer {
    let client = {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    };
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&b).unwrap());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, json }
}

async fn send(g: &GraphHandle, to: &str) -> Answer {
    call(
        "POST",
        format!("{}/v21.0/555000111/messages", g.base_url()),
        Some("tok"),
        Some(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": { "body": "hello" }
        })),
    )
    .await
}

#[tokio::test]
async fn a_text_send_is_answered_and_followed_by_signed_statuses() {
    let rx = receiver::spawn_receiver(SECRET, receiver::verifying()).await;
    let g = graph(cfg_with(Some(rx.url()))).await;

    let a = send(&g, "+49 151 0000 0001").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["messaging_product"], "whatsapp");
    assert_eq!(a.json["contacts"][0]["input"], "+49 151 0000 0001");
    assert_eq!(a.json["contacts"][0]["wa_id"], "4915100000001");
    let wamid = a.json["messages"][0]["id"].as_str().unwrap().to_owned();
    assert!(wamid.starts_with("wamid."));

    let got = rx.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3);
    let mut order = Vec::new();
    for r in &got {
        assert!(r.signature_ok, "status webhooks are signed");
        let v = r.json();
        assert_eq!(v["object"], "whatsapp_business_account");
        let value = &v["entry"][0]["changes"][0]["value"];
        assert_eq!(value["metadata"]["phone_number_id"], "555000111");
        let s = &value["statuses"][0];
        assert_eq!(s["id"], wamid.as_str());
        assert_eq!(s["recipient_id"], "4915100000001");
        order.push(s["status"].as_str().unwrap().to_owned());
        if s["status"] != "read" {
            assert_eq!(s["pricing"]["category"], "service");
            assert!(s["conversation"]["id"].is_string());
        }
    }
    assert_eq!(order, ["sent", "delivered", "read"]);
    assert!(g.wait_for_callbacks(3, WAIT).await);

    let sent = g.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].wamid, wamid);
    assert_eq!(sent[0].token, "tok");
    assert_eq!(sent[0].phone_number_id, "555000111");
    assert_eq!(sent[0].body["text"]["body"], "hello");
}

#[tokio::test]
async fn requests_are_checked_like_meta_does() {
    let g = graph(cfg_with(None)).await;
    let url = format!("{}/v21.0/1/messages", g.base_url());

    let a = call("POST", url.clone(), None, Some(json!({}))).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json["error"]["code"], 190);
    assert_eq!(a.json["error"]["type"], "OAuthException");

    let a = call(
        "POST",
        url.clone(),
        Some("t"),
        Some(json!({"to": "1", "type": "text", "text": {}})),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json["error"]["code"], 100);

    let a = call(
        "POST",
        url.clone(),
        Some("t"),
        Some(json!({"messaging_product": "whatsapp", "to": "1", "type": "image", "text": {}})),
    )
    .await;
    assert_eq!(a.json["error"]["code"], 131008);

    // Every documented kind goes through with its body field.
    let kinds = [
        (
            "template",
            json!({"name": "hello_world", "language": {"code": "en_US"}}),
        ),
        (
            "interactive",
            json!({"type": "button", "body": {"text": "?"}, "action": {}}),
        ),
        ("image", json!({"link": "https://example.invalid/a.jpg"})),
        ("document", json!({"id": "123"})),
        ("location", json!({"latitude": 1.0, "longitude": 2.0})),
        ("reaction", json!({"message_id": "wamid.X", "emoji": "👍"})),
        ("contacts", json!([{"name": {"formatted_name": "A"}}])),
    ];
    for (kind, field) in kinds {
        let mut body = json!({"messaging_product": "whatsapp", "to": "15550001", "type": kind});
        body[kind] = field;
        let a = call("POST", url.clone(), Some("t"), Some(body)).await;
        assert_eq!(a.status, 200, "{kind}: {}", a.json);
        if kind == "template" {
            assert_eq!(a.json["messages"][0]["message_status"], "accepted");
        }
    }

    let a = call(
        "POST",
        url.clone(),
        Some("t"),
        Some(json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN"})),
    )
    .await;
    assert_eq!((a.status, a.json.clone()), (200, json!({"success": true})));
    assert_eq!(g.reads().len(), 1);
    assert_eq!(g.sent().len(), 7);
    assert_eq!(
        g.calls(),
        11,
        "every POST .../messages counts, failed ones too"
    );
}

#[tokio::test]
async fn times_rule_fails_the_first_calls_then_lets_through() {
    let g = graph(GraphConfig {
        errors: vec!["130429:times=2".parse().unwrap()],
        ..cfg_with(None)
    })
    .await;
    for _ in 0..2 {
        let a = send(&g, "4915100000002").await;
        assert_eq!(a.status, 400);
        let e = &a.json["error"];
        assert_eq!(e["code"], 130429);
        assert_eq!(e["type"], "OAuthException");
        assert_eq!(e["message"], "(#130429) Rate limit hit");
        assert_eq!(e["error_data"]["messaging_product"], "whatsapp");
        assert!(e["error_data"]["details"].is_string());
        assert!(e["fbtrace_id"].is_string());
    }
    assert_eq!(send(&g, "4915100000002").await.status, 200);
    assert_eq!(g.calls(), 3);
    assert_eq!(g.sent().len(), 1);
}

#[tokio::test]
async fn to_pattern_and_http_status_rules() {
    let g = graph(GraphConfig {
        errors: vec![
            "131047:to=4917*".parse().unwrap(),
            "500:to=33*:http=500".parse().unwrap(),
        ],
        ..cfg_with(None)
    })
    .await;
    let a = send(&g, "+491701234567").await;
    assert_eq!(
        (a.status, a.json["error"]["code"].clone()),
        (400, json!(131047))
    );
    assert_eq!(send(&g, "491501234567").await.status, 200);
    let a = send(&g, "33612345678").await;
    assert_eq!(a.status, 500);
    assert_eq!(a.json, Value::Null, "a plain 500, not Meta's JSON");
    // Rules without times keep firing.
    assert_eq!(send(&g, "491709999999").await.status, 400);
}

#[tokio::test]
async fn share_rule_fails_about_that_share() {
    let g = graph(GraphConfig {
        errors: vec![ErrorRule {
            share: Some(0.5),
            ..ErrorRule::new(131000)
        }],
        ..cfg_with(None)
    })
    .await;
    let mut failed = 0;
    for _ in 0..60 {
        if send(&g, "1555").await.status == 400 {
            failed += 1;
        }
    }
    assert!((10..=50).contains(&failed), "{failed} of 60");
}

#[tokio::test]
async fn control_api_changes_rules_at_runtime() {
    let g = graph(cfg_with(None)).await;
    let base = g.base_url();

    let a = call(
        "POST",
        format!("{base}/_sim/errors"),
        None,
        Some(json!(["131026:times=1", {"code": 368, "to": "4479*"}])),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(g.rules().len(), 2);
    assert_eq!(send(&g, "1").await.json["error"]["code"], 131026);
    assert_eq!(send(&g, "1").await.status, 200);
    assert_eq!(send(&g, "447900000001").await.json["error"]["code"], 368);

    let a = call("GET", format!("{base}/_sim/calls"), None, None).await;
    assert_eq!(a.json, json!({"calls": 3, "failed": 2, "accepted": 1}));
    let a = call("GET", format!("{base}/_sim/sent"), None, None).await;
    assert_eq!(a.json.as_array().unwrap().len(), 1);
    assert_eq!(a.json[0]["to"], "1");
    assert!(a.json[0]["wamid"].as_str().unwrap().starts_with("wamid."));
    assert_eq!(a.json[0]["body"]["text"]["body"], "hello");

    let a = call(
        "POST",
        format!("{base}/_sim/errors"),
        None,
        Some(json!(["nope"])),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.json["error"].as_str().unwrap().contains("numeric code"));

    assert_eq!(
        call("POST", format!("{base}/_sim/reset"), None, None)
            .await
            .status,
        200
    );
    assert_eq!(g.calls(), 0);
    assert!(g.sent().is_empty());
    assert!(
        g.rules().is_empty(),
        "reset restores the start rules (none here)"
    );
}

#[tokio::test]
async fn webhook_rules_fail_by_status_and_duplicates_are_posted_twice() {
    let rx = receiver::spawn_receiver(SECRET, receiver::verifying()).await;
    let g = graph(GraphConfig {
        duplicate: true,
        shuffle: true,
        errors: vec!["131026:to=4479*:webhook".parse().unwrap()],
        ..cfg_with(Some(rx.url()))
    })
    .await;
    let a = send(&g, "447900000009").await;
    assert_eq!(a.status, 200, "Meta accepts first and fails later");
    let got = rx.wait_for(4, WAIT).await;
    assert_eq!(got.len(), 4, "sent and failed, each twice");
    let statuses: Vec<Value> = got
        .iter()
        .map(|r| r.json()["entry"][0]["changes"][0]["value"]["statuses"][0].clone())
        .collect();
    let failed: Vec<&Value> = statuses
        .iter()
        .filter(|s| s["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["errors"][0]["code"], 131026);
    assert_eq!(statuses.iter().filter(|s| s["status"] == "sent").count(), 2);
}

#[tokio::test]
async fn status_webhooks_are_retried_until_accepted() {
    let rx = receiver::spawn_receiver(
        SECRET,
        std::sync::Arc::new(|n, _| if n == 0 { 503 } else { 200 }),
    )
    .await;
    let g = graph(cfg_with(Some(rx.url()))).await;
    assert_eq!(send(&g, "1555").await.status, 200);
    assert!(g.wait_for_callbacks(3, WAIT).await);
    let cbs = g.callbacks();
    assert_eq!(cbs[0].attempts, 2);
    assert!(cbs.iter().all(|c| c.delivered));
    assert_eq!(rx.received().len(), 4);
}

#[tokio::test]
async fn media_urls_and_bytes() {
    let g = graph(cfg_with(None)).await;
    let a = call(
        "GET",
        format!("{}/v21.0/987654", g.base_url()),
        Some("t"),
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["id"], "987654");
    assert_eq!(a.json["mime_type"], "image/jpeg");
    let url = a.json["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{}/media/987654", g.base_url()));

    let resp = {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }
    .get(&url)
    .header("authorization", "Bearer t")
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, a.json["file_size"].as_u64().unwrap());
    assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        a.json["sha256"].as_str().unwrap()
    );

    let a = call("GET", url, None, None).await;
    assert_eq!(a.status, 401);
}
