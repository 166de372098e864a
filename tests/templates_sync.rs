//! Template sync from the (fake) Graph API: every page of
//! `GET /{waba_id}/message_templates` is upserted, a rerun changes only
//! what Meta changed, by `wapipe templates sync` and `POST
//! /api/whatsapp/templates/sync`, and the API's periodic job (once per
//! tick across processes); templates deleted here stay deleted; Meta's
//! refusal is a clear error.

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

/// Polls `check` until it holds, for up to 20 s.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The periodic job (`WAPIPE_TEMPLATE_SYNC_S`): templates arrive with no
/// request, and a change at Meta arrives on a later tick.
async fn periodic_sync(mode: Mode) {
    let (mut settings, dir) = settings_for(mode).await;
    let g = graph("EAAG-test").await;
    g.set_templates(meta_templates("PENDING"));
    settings.graph_api_base = g.base_url();
    settings.template_sync_s = 1;
    let roles = Roles {
        ingest: true,
        api: true,
        workers: vec![],
    };
    let app = TestApp::spawn_with(mode, settings, dir, roles).await;
    let (db, config) = (&app.db, app.config_id);
    eventually("the first tick's templates", || async {
        rows(db, config).await.len() == 3
    })
    .await;
    let got = rows(db, config).await;
    assert_eq!(got[1].status, "PENDING");

    g.set_templates(meta_templates("APPROVED"));
    eventually("Meta's approval on a later tick", || async {
        rows(db, config).await[1].status == "APPROVED"
    })
    .await;
    let after = rows(db, config).await;
    assert_eq!(after.len(), 3);
    assert_eq!(after[1].id, got[1].id, "the same row");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_sync_embedded() {
    periodic_sync(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_sync_production() {
    periodic_sync(Mode::Production).await;
}

/// A database with the test config, the fake Graph serving Meta's list,
/// and what the API's periodic sync is given; no service running.
async fn direct(
    mode: Mode,
) -> (
    sea_orm::DatabaseConnection,
    uuid::Uuid,
    wapipe_api::MetaAccess,
    GraphHandle,
    wapipe_testkit::TempDir,
) {
    use std::sync::Arc;
    let (settings, dir) = settings_for(mode).await;
    let (db, config) = prepare_db(&settings).await;
    let g = graph("EAAG-test").await;
    g.set_templates(meta_templates("APPROVED"));
    let key = wapipe_shared::crypto::SecretKey::from_base64(KEY).expect("key");
    let meta = wapipe_api::MetaAccess {
        configs: Arc::new(wapipe_domain::configs::ConfigCache::new(
            db.clone(),
            Some(Arc::new(key)),
            wapipe_domain::configs::DEFAULT_TTL,
        )),
        graph: wapipe_domain::templates::GraphTarget {
            base: g.base_url(),
            version: settings.graph_api_version.clone(),
        },
    };
    (db, config, meta, g, dir)
}

/// Two API processes ticking at once: one takes the tick's lease and
/// syncs, the other skips, and neither ticks again within the lease; once
/// it ran out the next tick goes through, whoever does it. The roll-up
/// alike.
async fn concurrent_ticks_work_once(mode: Mode) {
    use std::time::Duration;
    use wapipe_api::periodic::{rollup_tick, template_sync_tick};
    use wapipe_shared::entities::leases;
    let (db, _config, meta, g, _dir) = direct(mode).await;
    // Long enough that the lease outlasts a slow first tick.
    let every = Duration::from_secs(60);
    let (a, b) = tokio::join!(
        template_sync_tick(&db, &meta, "process-a", every),
        template_sync_tick(&db, &meta, "process-b", every),
    );
    let (a, b) = (a.expect("tick a"), b.expect("tick b"));
    assert!(
        matches!((a, b), (Some(1), None) | (None, Some(1))),
        "{a:?} {b:?}"
    );
    assert_eq!(g.template_pages(), 1, "Meta was asked once");
    let (winner, loser) = if a.is_some() {
        ("process-a", "process-b")
    } else {
        ("process-b", "process-a")
    };
    // Held: neither ticks again within the lease.
    for who in [winner, loser] {
        assert_eq!(
            template_sync_tick(&db, &meta, who, every)
                .await
                .expect("tick"),
            None
        );
    }
    assert_eq!(g.template_pages(), 1);
    // The lease ran out (its holder died, or the period passed): the next
    // tick goes through, whoever does it.
    leases::Entity::update_many()
        .col_expr(
            leases::Column::ExpiresAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .exec(&db)
        .await
        .expect("expire");
    assert_eq!(
        template_sync_tick(&db, &meta, loser, every)
            .await
            .expect("tick"),
        Some(1)
    );
    assert_eq!(g.template_pages(), 2);
    let lease = leases::Entity::find_by_id(wapipe_api::periodic::TEMPLATE_SYNC_LEASE)
        .one(&db)
        .await
        .expect("read")
        .expect("lease");
    assert_eq!(lease.holder, loser);

    let (a, b) = tokio::join!(
        rollup_tick(&db, "process-a", every),
        rollup_tick(&db, "process-b", every),
    );
    assert!(a.expect("roll-up a") ^ b.expect("roll-up b"), "exactly one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ticks_work_once_embedded() {
    concurrent_ticks_work_once(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ticks_work_once_production() {
    concurrent_ticks_work_once(Mode::Production).await;
}

/// A template deleted here stays deleted while Meta lists it under the
/// same id (its name is free for a new one here); recreated at Meta under
/// a new id, it arrives as a new template.
async fn sync_keeps_deleted_templates_deleted(mode: Mode) {
    let (db, config, meta, g, _dir) = direct(mode).await;
    let sync = || wapipe_domain::templates::sync(&db, &meta.configs, &meta.graph, config);
    assert_eq!(sync().await.expect("sync").templates, 3);
    let promo = rows(&db, config).await.remove(2);
    assert_eq!(promo.name, "promo");
    templates::Entity::update_many()
        .col_expr(
            templates::Column::IsDeleted,
            sea_orm::sea_query::Expr::value(true),
        )
        .filter(templates::Column::Id.eq(promo.id))
        .exec(&db)
        .await
        .expect("delete");
    assert_eq!(sync().await.expect("sync").templates, 2);
    let after = rows(&db, config).await;
    assert_eq!(after.len(), 3, "not synced back");
    assert!(after[2].is_deleted);

    let mut recreated = meta_templates("APPROVED");
    recreated[2]["id"] = json!("2003");
    g.set_templates(recreated);
    assert_eq!(sync().await.expect("sync").templates, 3);
    let promos: Vec<_> = rows(&db, config)
        .await
        .into_iter()
        .filter(|t| t.name == "promo")
        .collect();
    assert_eq!(promos.len(), 2);
    assert!(promos[0].is_deleted && !promos[1].is_deleted);
    assert_eq!(promos[1].whatsapp_template_id.as_deref(), Some("2003"));
    // Another sync updates the live one only.
    assert_eq!(sync().await.expect("sync").templates, 3);
    assert_eq!(rows(&db, config).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_keeps_deleted_templates_deleted_embedded() {
    sync_keeps_deleted_templates_deleted(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_keeps_deleted_templates_deleted_production() {
    sync_keeps_deleted_templates_deleted(Mode::Production).await;
}
