//! The OpenAPI document: valid 3.1 JSON served at /api/openapi.json, every
//! endpoint of this API in it and every documented route served, the
//! offline reference page, and each implemented seed 002 model's fields in
//! its schema (read from `../shared/seeds`, or `WAPIPE_SEEDS_DIR`; skipped
//! when absent).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{Api, Backend};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The seed 002 endpoints this API serves so far.
const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/api/whatsapp/chats"),
    ("get", "/api/whatsapp/chats/{id}"),
    ("post", "/api/whatsapp/chats"),
    ("put", "/api/whatsapp/chats/{id}"),
    ("delete", "/api/whatsapp/chats/{id}"),
    ("post", "/api/whatsapp/chats/{id}/assign"),
    ("put", "/api/whatsapp/chats/{id}/unassign"),
    ("post", "/api/whatsapp/chats/{id}/transfer"),
    ("put", "/api/whatsapp/chats/{id}/read"),
    ("get", "/api/whatsapp/chats/{chatId}/messages"),
    ("post", "/api/whatsapp/chats/{chatId}/messages"),
    ("get", "/api/whatsapp/messages/{id}"),
    ("put", "/api/whatsapp/messages/{id}/read"),
    ("get", "/api/whatsapp/media/{messageId}"),
    ("get", "/api/whatsapp/media/{messageId}/thumbnail"),
    ("get", "/api/whatsapp/agents"),
    ("get", "/api/whatsapp/agents/{id}"),
    ("post", "/api/whatsapp/agents"),
    ("put", "/api/whatsapp/agents/{id}"),
    ("put", "/api/whatsapp/agents/{id}/status"),
    ("get", "/api/whatsapp/agents/online"),
    ("get", "/api/whatsapp/labels"),
    ("post", "/api/whatsapp/labels"),
    ("put", "/api/whatsapp/labels/{id}"),
    ("delete", "/api/whatsapp/labels/{id}"),
    ("post", "/api/whatsapp/chats/{chatId}/labels/{labelId}"),
    ("delete", "/api/whatsapp/chats/{chatId}/labels/{labelId}"),
    ("get", "/api/whatsapp/followups"),
    ("get", "/api/whatsapp/chats/{chatId}/followups"),
    ("post", "/api/whatsapp/followups"),
    ("put", "/api/whatsapp/followups/{id}"),
    ("delete", "/api/whatsapp/followups/{id}"),
    ("get", "/api/whatsapp/chats/{chatId}/notes"),
    ("post", "/api/whatsapp/chats/{chatId}/notes"),
    ("put", "/api/whatsapp/notes/{id}"),
    ("delete", "/api/whatsapp/notes/{id}"),
    ("get", "/api/whatsapp/blocked-numbers"),
    ("post", "/api/whatsapp/blocked-numbers"),
    ("delete", "/api/whatsapp/blocked-numbers/{id}"),
    ("get", "/api/whatsapp/webhooks/events"),
    ("get", "/api/whatsapp/events"),
    ("get", "/api/whatsapp/ws"),
    ("get", "/api/whatsapp/templates"),
    ("post", "/api/whatsapp/templates"),
    ("put", "/api/whatsapp/templates/{id}"),
    ("delete", "/api/whatsapp/templates/{id}"),
    ("get", "/api/whatsapp/stats/admin"),
    ("get", "/api/whatsapp/stats/agents/{agentId}"),
    ("get", "/api/whatsapp/customers/{id}"),
    ("get", "/api/whatsapp/chats/{chatId}/assignments"),
    ("get", "/api/whatsapp/configs"),
    ("get", "/api/whatsapp/scenarios"),
    ("get", "/api/whatsapp/scenarios/{id}"),
    ("post", "/api/whatsapp/scenarios"),
    ("put", "/api/whatsapp/scenarios/{id}"),
    ("delete", "/api/whatsapp/scenarios/{id}"),
];

/// seed 002 model → the schema of its resource.
const MODELS: &[(&str, &str)] = &[
    ("Chat", "Chat"),
    ("Message", "Message"),
    ("Agent", "Agent"),
    ("Label", "Label"),
    ("FollowUp", "FollowUp"),
    ("TeamNote", "TeamNote"),
    ("BlockedNumber", "BlockedNumber"),
    ("WebhookEvent", "WebhookEvent"),
    ("Template", "Template"),
    ("AgentPerformance", "AgentPerformance"),
    ("Customer", "Customer"),
    ("ChatAssignment", "ChatAssignment"),
    ("WhatsAppConfig", "WhatsAppConfig"),
];

fn doc() -> Value {
    serde_json::to_value(wapipe_api::openapi::document()).expect("document as JSON")
}

#[test]
fn document_is_3_1_and_lists_every_endpoint() {
    let doc = doc();
    assert!(
        doc["openapi"].as_str().expect("version").starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for (method, path) in ENDPOINTS {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the document"
        );
        let op = &doc["paths"][path][method];
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}: responses"
        );
    }
    assert!(doc["components"]["securitySchemes"]["apiKey"].is_object());
    // Every $ref points at a schema that exists.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = r.split('"').next().expect("name");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
}

/// The layers in front of every handler answer 401, 429 and, for a body,
/// 415: the document says so for every operation, so a generated client
/// (or Schemathesis) does not meet answers documented nowhere.
#[test]
fn every_operation_documents_the_layers_answers() {
    let doc = doc();
    let paths = doc["paths"].as_object().expect("paths");
    let mut seen = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            seen += 1;
            for code in ["400", "401", "429"] {
                assert!(responses.contains_key(code), "{method} {path}: no {code}");
            }
            if op.get("requestBody").is_some() {
                for code in ["413", "415"] {
                    assert!(responses.contains_key(code), "{method} {path}: no {code}");
                }
            }
            if method == "post" {
                assert!(responses.contains_key("422"), "{method} {path}: no 422");
            }
        }
    }
    assert!(seen >= ENDPOINTS.len(), "only {seen} operations");
}

/// Each `field:` at the top level of a model's schema block in the seed.
fn seed_models(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_block = false;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            // "## 1. Chat Model" → "Chat"
            current = h
                .split_once(". ")
                .and_then(|(_, rest)| {
                    rest.strip_suffix(" Model")
                        .or_else(|| rest.split(" Model").next())
                })
                .map(|s| s.trim().to_owned());
            in_block = false;
            continue;
        }
        if line.starts_with("```javascript") && current.is_some() {
            in_block = !out.contains_key(current.as_deref().unwrap_or_default());
            continue;
        }
        if line.starts_with("```") {
            in_block = false;
            continue;
        }
        if !in_block {
            continue;
        }
        let Some(rest) = line.strip_prefix("  ") else {
            continue;
        };
        if rest.starts_with(' ') {
            continue; // nested
        }
        if let Some((name, _)) = rest.split_once(':') {
            let name = name.trim();
            if !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name != "_id"
            {
                out.entry(current.clone().unwrap_or_default())
                    .or_insert_with(Vec::new)
                    .push(name.to_owned());
            }
        }
    }
    out
}

fn seeds_dir() -> PathBuf {
    std::env::var_os("WAPIPE_SEEDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/seeds"))
}

#[test]
fn seed_002_fields_are_in_the_schemas() {
    let path = seeds_dir().join("002_3f494e2182140930.txt");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipped: {} is absent", path.display());
        return;
    };
    let models = seed_models(&text);
    assert_eq!(
        models.len(),
        13,
        "the seed's 13 models: {:?}",
        models.keys()
    );
    assert!(models["Chat"].contains(&"transferHistory".to_owned()));
    let doc = doc();
    assert_eq!(
        MODELS.len(),
        models.len(),
        "every seed 002 model has a resource"
    );
    let mut missing = Vec::new();
    for (model, schema) in MODELS {
        let props = &doc["components"]["schemas"][schema]["properties"];
        assert!(props.is_object(), "no schema {schema}");
        for field in &models[*model] {
            if !props[field].is_object() {
                missing.push(format!("{schema}.{field}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "seed 002 fields missing from the API: {missing:?}"
    );
}

#[tokio::test]
async fn served_document_page_and_routes_agree() {
    let api = Api::start(Backend::Sqlite).await;
    let r = api
        .http
        .get(format!("{}/api/openapi.json", api.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let served: Value = r.json().await.expect("json");
    assert_eq!(served, doc());
    let page = api
        .http
        .get(format!("{}/api/docs", api.base))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("/api/openapi.json"));
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no outside assets"
    );

    // The inbox page, on the API's own listener too (`wapipe api`): no key,
    // outside the document.
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/inbox/inbox.js", "text/javascript; charset=utf-8"),
    ] {
        let r = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
        assert_eq!(
            r.headers()["content-security-policy"],
            wapipe_api::inbox_page::CSP
        );
        assert!(served["paths"].get(path).is_none(), "{path}");
    }

    // Every documented operation is routed (never the 404 of an unknown route
    // nor a 405).
    let key = api.admin().await;
    let any = uuid::Uuid::now_v7().to_string();
    for (path, item) in served["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            let concrete = path
                .replace("{id}", &any)
                .replace("{chatId}", &any)
                .replace("{labelId}", &any)
                .replace("{agentId}", &any);
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let body = (m == Method::POST || m == Method::PUT).then(|| json!({}));
            let r = api.call(&key, m, &concrete, body).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(
                r.body["error"]["message"], "route not found",
                "{method} {path} is not routed"
            );
        }
    }
}
