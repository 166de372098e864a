//! The media worker on both databases, one job at a time: the parse
//! worker fans out a `media.fetch` job per media message (and none for
//! text); the worker stores the file from the fake Graph API; a replayed
//! job asks Meta nothing; the retention pass marks old files `pruned`,
//! records their `message.updated` event, and removes an object only
//! once no stored message holds it.

use std::sync::Arc;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use wapipe_domain::configs::{ConfigCache, DEFAULT_TTL};
use wapipe_domain::media::MediaStore;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::events;
use wapipe_shared::entities::message_media::{self, status};
use wapipe_shared::jobs::{Job, MediaFetch};
use wapipe_sim::{GraphConfig, SimMedia, spawn_graph};
use wapipe_testkit::both_backends;
use wapipe_testkit::workers::{
    Backend, CUSTOMER, Env, KEY, env, envelope, messages_value, text_msg,
};
use wapipe_workers::media::{MediaSettings, MediaWorker, prune_once};
use wapipe_workers::runtime::JobWorker;

fn image_msg(wamid: &str, media_id: &str) -> serde_json::Value {
    json!({"from": CUSTOMER, "id": wamid, "timestamp": "1730231903", "type": "image",
           "image": {"id": media_id, "mime_type": "image/jpeg"}})
}

/// Runs every waiting `media.fetch` job through the worker; answers the jobs.
async fn run_jobs(e: &Env, worker: &MediaWorker) -> Vec<MediaFetch> {
    let mut jobs = Vec::new();
    for d in e.deliveries("media").await {
        let job = MediaFetch::decode(&d.body).expect("a media.fetch job");
        worker.handle(job.clone(), &d).await.expect("handled");
        d.ack().await.expect("ack");
        jobs.push(job);
    }
    jobs
}

async fn fetch_replay_and_retention(backend: Backend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = env(backend).await;
    let graph = spawn_graph(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        GraphConfig::default(),
    )
    .await
    .expect("graph");
    let shared = b"\xFF\xD8 the same photo twice \xFF\xD9".to_vec();
    graph.add_media("m1", SimMedia::new(shared.clone(), "image/jpeg"));
    graph.add_media("m2", SimMedia::new(shared.clone(), "image/jpeg"));
    graph.add_media(
        "m3",
        SimMedia::new(b"\xFF\xD8 another \xFF\xD9".to_vec(), "image/jpeg"),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let store = MediaStore::local(dir.path()).expect("store");
    let key = Arc::new(SecretKey::from_base64(KEY).expect("key"));
    let mut settings = MediaSettings::from_settings(
        &wapipe_shared::config::Settings::from_defaults().expect("settings"),
    );
    settings.graph_base = graph.base_url();
    let worker = MediaWorker::new(
        e.db.clone(),
        Arc::new(ConfigCache::new(e.db.clone(), Some(key), DEFAULT_TTL)),
        Arc::new(store.clone()),
        settings,
    )
    .expect("worker");

    e.post(&envelope(messages_value(
        json!([{"profile": {"name": "Erika"}, "wa_id": CUSTOMER}]),
        json!([
            image_msg("wamid.i1", "m1"),
            text_msg("wamid.t1", CUSTOMER, 1730231904, "hi"),
            image_msg("wamid.i2", "m2"),
            image_msg("wamid.i3", "m3")
        ]),
    )))
    .await;
    let jobs = run_jobs(&e, &worker).await;
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.media_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["m1", "m2", "m3"],
        "one job per media message, none for text"
    );
    let rows = message_media::Entity::find()
        .all(&e.db)
        .await
        .expect("rows");
    assert!(rows.iter().all(|r| r.status == status::STORED), "{rows:?}");
    assert_eq!(
        store.list().await.expect("list").len(),
        2,
        "the shared file once"
    );
    let counts = graph.media_counts();
    assert_eq!((counts.lookups, counts.downloads), (3, 2));

    // The same webhook processed again (a replay): jobs again, no Meta call.
    let again = e
        .store(&envelope(messages_value(
            json!([{"profile": {"name": "Erika"}, "wa_id": CUSTOMER}]),
            json!([image_msg("wamid.i1", "m1")]),
        )))
        .await;
    e.process(again).await;
    assert_eq!(run_jobs(&e, &worker).await.len(), 1);
    assert_eq!(graph.media_counts().lookups, 3);

    // Retention: i1 and i3 are old, i2 (the same file as i1) is not.
    let old = |wamid: &str| {
        format!(
            "UPDATE message_media SET stored_at = '2020-01-01T00:00:00Z' WHERE message_id = \
             (SELECT id FROM messages WHERE provider_message_id = '{wamid}')"
        )
    };
    e.exec(&old("wamid.i1")).await;
    e.exec(&old("wamid.i3")).await;
    let events_before = events::Entity::find().count(&e.db).await.expect("count");
    let pruned = prune_once(&e.db, &store, chrono::Duration::days(30))
        .await
        .expect("prune");
    assert_eq!(pruned.messages, 2);
    assert_eq!(pruned.objects, 1, "only the file nobody holds any more");
    assert_eq!(store.list().await.expect("list").len(), 1);
    let i1 = e.message("wamid.i1").await;
    let row = message_media::Entity::find_by_id(i1.id)
        .one(&e.db)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row.status, status::PRUNED);
    assert!(
        row.error
            .unwrap_or_default()
            .contains("WAPIPE_MEDIA_RETENTION_DAYS")
    );
    let updated = events::Entity::find()
        .filter(events::Column::Type.eq("message.updated"))
        .count(&e.db)
        .await
        .expect("count");
    assert!(updated >= 2, "no message.updated for the pruned files");
    assert!(events::Entity::find().count(&e.db).await.expect("count") >= events_before + 2);
    // Nothing left to prune; a pruned file is not fetched again.
    assert_eq!(
        prune_once(&e.db, &store, chrono::Duration::days(30))
            .await
            .expect("prune")
            .messages,
        0
    );
    let replay = e
        .store(&envelope(messages_value(
            json!([{"profile": {"name": "Erika"}, "wa_id": CUSTOMER}]),
            json!([image_msg("wamid.i3", "m3")]),
        )))
        .await;
    e.process(replay).await;
    run_jobs(&e, &worker).await;
    assert_eq!(graph.media_counts().lookups, 3);
}
both_backends!(fetch_replay_and_retention);
