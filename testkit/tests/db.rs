//! The kit's databases: a fresh one has the whole schema (a clone of the
//! template, on both backends), an empty one has none, clones made at the
//! same time are all distinct and whole, and the template's name follows
//! the migrations.

use std::time::Instant;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_testkit::db::{
    Backend, empty_postgres_url, fresh_postgres_url, fresh_sqlite_url, migrated, pg_template_name,
};

async fn applied(db: &DatabaseConnection) -> usize {
    Migrator::get_applied_migrations(db)
        .await
        .expect("applied migrations")
        .len()
}

async fn assert_whole(db: &DatabaseConnection) {
    assert_eq!(applied(db).await, Migrator::migrations().len());
    assert!(
        Migrator::get_pending_migrations(db)
            .await
            .expect("pending")
            .is_empty()
    );
    // A table of the last migration, not only the bookkeeping.
    db.execute_unprepared("SELECT count(*) FROM follow_ups")
        .await
        .expect("follow_ups exists");
}

async fn fresh_has_the_whole_schema(backend: Backend) {
    let started = Instant::now();
    let t = migrated(backend, 2).await;
    eprintln!(
        "{backend:?}: a migrated database in {:?}",
        started.elapsed()
    );
    assert_whole(&t.db).await;
}
wapipe_testkit::both_backends!(fresh_has_the_whole_schema);

async fn empty_has_nothing(backend: Backend) {
    let (url, _dir) = match backend {
        Backend::Postgres => (empty_postgres_url().await.expect("empty database"), None),
        Backend::Sqlite => {
            let (url, dir) = fresh_sqlite_url().expect("sqlite");
            (url, Some(dir))
        }
    };
    let conn = wapipe_shared::db::connect(&url, 2).await.expect("connect");
    assert!(
        conn.execute_unprepared("SELECT count(*) FROM follow_ups")
            .await
            .is_err(),
        "no tables in an empty database"
    );
    let started = Instant::now();
    Migrator::up(&conn, None).await.expect("migrate");
    eprintln!(
        "{backend:?}: migrated from scratch in {:?}",
        started.elapsed()
    );
    assert_whole(&conn).await;
}
wapipe_testkit::both_backends!(empty_has_nothing);

/// Clones taken at the same time (the template is busy being read by
/// every one of them) are distinct databases, each with every table, and
/// writes to one do not reach another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clones_are_distinct_and_whole() {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        tasks.spawn(fresh_postgres_url());
    }
    let mut urls = Vec::new();
    while let Some(url) = tasks.join_next().await {
        urls.push(url.expect("join").expect("a clone"));
    }
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 8, "distinct databases");
    let first = wapipe_shared::db::connect(&urls[0], 1)
        .await
        .expect("connect");
    first
        .execute_unprepared("CREATE TABLE only_here (x int)")
        .await
        .expect("create");
    for url in &urls[1..] {
        let conn = wapipe_shared::db::connect(url, 1).await.expect("connect");
        assert_whole(&conn).await;
        assert!(
            conn.execute_unprepared("SELECT * FROM only_here")
                .await
                .is_err()
        );
    }
}

#[test]
fn template_is_named_after_the_migrations() {
    let name = pg_template_name();
    assert!(name.starts_with("wapipe_tpl_"), "{name}");
    assert_eq!(name.len(), "wapipe_tpl_".len() + 16, "{name}");
    assert_eq!(name, pg_template_name(), "stable within a build");
}
