//! Template sync from the (fake) Graph API: every page of
//! `GET /{waba_id}/message_templates` is upserted, a rerun changes only
//! what Meta changed, by `wapipe templates sync` and `POST
//! /api/whatsapp/templates/sync`; Meta's refusal is a clear error.

use std::process::Command;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use wapipe::serve::Roles;
use wapipe_shared::entities::templates;
use wapipe_sim::payloads::Business;
use wapipe_sim::{GraphConfig, GraphHandle, spawn_graph};
use wapipe_testkit::app::*;

fn meta_templates(status_of_second: &str) -> Vec<Value> {
    vec![
        json!({"id": "1001", "name": "order_update", "language": "en_US", "status": "APPROVED",
               "category": "UTILITY", "quality_score": {"score": "GREEN"},
               "components": [{"type": "BODY", "text": "Hi {{1}}, order {{2}} shipped"}]}),
        json!({"id": "1002", "name": "order_update", "language": "fr", "status": status_of_second,
               "category": "UTILITY", "components": [{"type": "BODY", "text": "Commande {{1}}"}]}),
        json!({"id": "1003", "name": "promo", "language": "en_US", "status": "PENDING",
               "category": "MARKETING", "components": [{"type": "BODY", "text": "Sale!"}]}),
    ]
}

async fn graph(token: &str) -> GraphHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    spawn_graph(
        listener,
        GraphConfig {
            app_secret: APP_SECRET.into(),
            business: Business {
                waba_id: WABA_ID.into(),
                phone_number_id: PHONE_NUMBER_ID.into(),
                display_phone_number: "15550001111".into(),
            },
            token: Some(token.into()),
            ..GraphConfig::default()
        },
    )
    .await
    .expect("fake graph")
}

async fn rows(db: &sea_orm::DatabaseConnection, config: uuid::Uuid) -> Vec<templates::Model> {
    templates::Entity::find()
        .filter(templates::Column::ConfigId.eq(config))
        .order_by_asc(templates::Column::WhatsappTemplateId)
        .all(db)
        .await
        .expect("templates")
}

// The CLI blocks this thread: the fake Graph answers from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sync_pages_and_reruns() {
    let (mut settings, dir) = settings_for(Mode::Embedded).await;
    let (db, config) = prepare_db(&settings).await;
    let g = graph("EAAG-test").await;
    g.set_templates(meta_templates("PENDING"));
    settings.graph_api_base = g.base_url();
    let run = |extra: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wapipe"));
        c.args(["templates", "sync", "--config", &config.to_string()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &settings.database_url)
            .env("WAPIPE_SECRET_KEY", KEY)
            .env("WAPIPE_SECRET_KEY_FILE", dir.path().join("secret.key"))
            .env("GRAPH_API_BASE", g.base_url())
            .env("RUST_LOG", "warn");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().expect("run wapipe")
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("synced 3 template(s)"));
    let got = rows(&db, config).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].name, "order_update");
    assert_eq!(got[0].status, "APPROVED");
    assert_eq!(got[0].quality_score.as_deref(), Some("GREEN"));
    assert_eq!(got[1].status, "PENDING");
    assert!(got.iter().all(|t| t.components.is_some()));

    // Meta approved the French one: a rerun updates it, adds nothing.
    g.set_templates(meta_templates("APPROVED"));
    let out = run(&[]);
    assert!(out.status.success());
    let again = rows(&db, config).await;
    assert_eq!(again.len(), 3);
    assert_eq!(again[1].status, "APPROVED");
    assert_eq!(again[1].id, got[1].id, "the same row");

    let refused = {
        let g2 = graph("another-token").await;
        g2.set_templates(meta_templates("APPROVED"));
        run(&[("GRAPH_API_BASE", &g2.base_url())])
    };
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401") && err.contains("access token"), "{err}");
}

async fn api_sync(mode: Mode) {
    let (mut settings, dir) = settings_for(mode).await;
    let g = graph("EAAG-test").await;
    // More than one page of Meta's list (the API asks 100 a page).
    let many: Vec<Value> = (0..130)
        .map(|i| {
            json!({"id": format!("{}", 5000 + i), "name": format!("t{i:03}"), "language": "en",
                        "status": "APPROVED", "category": "UTILITY",
                        "components": [{"type": "BODY", "text": "x"}]})
        })
        .collect();
    g.set_templates(many);
    settings.graph_api_base = g.base_url();
    settings.template_sync_s = 0;
    let roles = Roles {
        ingest: true,
        api: true,
        workers: vec![],
    };
    let app = TestApp::spawn_with(mode, settings, dir, roles).await;
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
    let r = app
        .http
        .post(app.url("/api/whatsapp/templates/sync"))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .expect("sync");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["templates"], 130);
    assert_eq!(body["pages"], 2);
    assert_eq!(g.template_pages(), 2);
    assert_eq!(rows(&app.db, app.config_id).await.len(), 130);
    app.stop().await;
}

#[tokio::test]
async fn api_sync_embedded() {
    api_sync(Mode::Embedded).await;
}

#[tokio::test]
async fn api_sync_production() {
    api_sync(Mode::Production).await;
}
