//! Migration 000006 (the chatbot tables in seed 000's terms) on a database
//! that already holds rows of the old shape, on PostgreSQL and SQLite:
//! renamed columns keep their data, statuses map, foreign keys still hold,
//! and `down` brings the old shape back with the same rows.

use chrono::Utc;
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait, Value};
use serde_json::json;
use uuid::Uuid;
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::db;
use wapipe_shared::entities::{
    chats, customer_blocked_scenarios, customers, scenario_items, scenario_runs, scenarios,
    template_scenarios,
};
use wapipe_testkit::db as testdb;

const NAME: &str = "m20261129_000006_scenarios_seed000";

/// How many migrations come before 000006, and after it (000006 included).
fn split() -> (u32, u32) {
    let all = Migrator::migrations();
    let pos = all
        .iter()
        .position(|m| m.name() == NAME)
        .expect("migration 000006 is registered");
    (pos as u32, (all.len() - pos) as u32)
}

async fn insert(db: &DatabaseConnection, table: &str, cols: &[&str], values: Vec<Value>) {
    let mut q = Query::insert();
    q.into_table(Alias::new(table))
        .columns(cols.iter().map(|c| Alias::new(*c)))
        .values_panic(values.into_iter().map(Into::into));
    db.execute(&q).await.expect("insert old row");
}

async fn upgrade_keeps_rows(db: DatabaseConnection) {
    let (before, from_here) = split();
    Migrator::up(&db, Some(before)).await.expect("up to 000005");
    // Raw SQL: the config entity already has later migrations' columns.
    let config_id = Uuid::now_v7();
    {
        let backend = db.get_database_backend();
        let sql = "INSERT INTO whatsapp_configs (id, created_at, updated_at, company, \
                   phone_number_id, waba_id, access_token_enc, app_secret_enc, verify_token_enc) \
                   VALUES ($1, $2, $2, 'Boutique', '15550000001', '15550009999', 'x', 'x', 'x')";
        let sql = if backend == sea_orm::DbBackend::Sqlite {
            sql.replace('$', "?")
        } else {
            sql.to_owned()
        };
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            sql,
            [config_id.into(), chrono::Utc::now().into()],
        ))
        .await
        .expect("config");
    }
    let config = config_id;
    let now = Utc::now();
    let customer = Uuid::now_v7();
    customers::Entity::insert(customers::ActiveModel {
        id: Set(customer),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config),
        wa_id: Set(Some("33612345678".into())),
        ..Default::default()
    })
    .exec_without_returning(&db)
    .await
    .expect("customer");
    let (s, item, tpl, run) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let ts = || Value::from(now);
    insert(
        &db,
        "scenarios",
        &[
            "id",
            "created_at",
            "updated_at",
            "config_id",
            "name",
            "keywords",
            "is_active",
            "priority",
            "max_runs_per_customer",
            "is_deleted",
        ],
        vec![
            s.into(),
            ts(),
            ts(),
            config.into(),
            "Accueil".into(),
            json!(["bonjour"]).into(),
            true.into(),
            3.into(),
            Value::Int(None),
            false.into(),
        ],
    )
    .await;
    insert(
        &db,
        "scenario_items",
        &[
            "id",
            "created_at",
            "updated_at",
            "config_id",
            "scenario_id",
            "type",
            "title",
            "content",
            "position",
        ],
        vec![
            item.into(),
            ts(),
            ts(),
            config.into(),
            s.into(),
            "text".into(),
            "Salut".into(),
            "Bonjour !".into(),
            0.into(),
        ],
    )
    .await;
    insert(
        &db,
        "template_scenarios",
        &[
            "id",
            "created_at",
            "updated_at",
            "config_id",
            "scenario_id",
            "name",
            "catalog_id",
            "sections",
        ],
        vec![
            tpl.into(),
            ts(),
            ts(),
            config.into(),
            s.into(),
            "catalogue".into(),
            "42".into(),
            json!([{"title": "Été", "product_items": ["sku-1"]}]).into(),
        ],
    )
    .await;
    insert(
        &db,
        "scenario_runs",
        &[
            "id",
            "created_at",
            "updated_at",
            "config_id",
            "scenario_id",
            "customer_id",
            "status",
            "run_count",
            "started_at",
            "last_step_at",
        ],
        vec![
            run.into(),
            ts(),
            ts(),
            config.into(),
            s.into(),
            customer.into(),
            "active".into(),
            2.into(),
            ts(),
            ts(),
        ],
    )
    .await;
    insert(
        &db,
        "customer_blocked_scenarios",
        &[
            "customer_id",
            "scenario_id",
            "config_id",
            "created_at",
            "updated_at",
        ],
        vec![customer.into(), s.into(), config.into(), ts(), ts()],
    )
    .await;

    Migrator::up(&db, None).await.expect("up through 000006");

    let sc = scenarios::Entity::find_by_id(s)
        .one(&db)
        .await
        .expect("query")
        .expect("scenario kept");
    assert_eq!(
        (
            sc.title.as_str(),
            sc.r#type.as_str(),
            sc.active,
            sc.repeat_count,
            sc.priority
        ),
        ("Accueil", "client", true, 0, 3)
    );
    assert_eq!(sc.config_id, Some(config));
    assert_eq!(sc.keywords, Some(json!(["bonjour"])));
    let it = scenario_items::Entity::find_by_id(item)
        .one(&db)
        .await
        .expect("query")
        .expect("item kept");
    assert_eq!(it.label.as_deref(), Some("Bonjour !"));
    assert_eq!(it.title.as_deref(), Some("Salut"));
    assert!(!it.r#ref.is_empty(), "old items get their id as ref");
    let t = template_scenarios::Entity::find_by_id(tpl)
        .one(&db)
        .await
        .expect("query")
        .expect("template kept");
    assert_eq!(
        (t.r#ref.as_str(), t.catalog_id.as_deref()),
        ("catalogue", Some("42"))
    );
    let r = scenario_runs::Entity::find_by_id(run)
        .one(&db)
        .await
        .expect("query")
        .expect("run kept");
    assert_eq!((r.status.as_str(), r.fallback_count), ("waiting", 0));
    assert!(r.ended_at.is_none());
    assert!(
        customer_blocked_scenarios::Entity::find_by_id((customer, s))
            .one(&db)
            .await
            .expect("query")
            .is_some()
    );
    // Down: the old shape comes back with the same rows; then up again.
    Migrator::down(&db, Some(from_here))
        .await
        .expect("down through 000006");
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT s.name, s.is_active, r.status, i.content, t.name AS tname \
             FROM scenarios s JOIN scenario_runs r ON r.scenario_id = s.id \
             JOIN scenario_items i ON i.scenario_id = s.id \
             JOIN template_scenarios t ON t.config_id = s.config_id",
        ))
        .await
        .expect("query the old shape")
        .expect("rows are back");
    let name: String = row.try_get("", "name").expect("name");
    let status: String = row.try_get("", "status").expect("status");
    let content: String = row.try_get("", "content").expect("content");
    let tname: String = row.try_get("", "tname").expect("tname");
    assert_eq!(
        (
            name.as_str(),
            status.as_str(),
            content.as_str(),
            tname.as_str()
        ),
        ("Accueil", "active", "Bonjour !", "catalogue")
    );
    Migrator::up(&db, None).await.expect("up again");
    assert_eq!(
        scenario_runs::Entity::find_by_id(run)
            .one(&db)
            .await
            .expect("query")
            .expect("run kept")
            .status,
        "waiting"
    );

    // Foreign keys point at the rebuilt `scenarios`: deleting the scenario
    // cascades to its rows.
    assert_eq!(
        chats::Entity::find().all(&db).await.expect("chats").len(),
        0
    );
    scenarios::Entity::delete_by_id(s)
        .exec(&db)
        .await
        .expect("delete");
    assert!(
        scenario_items::Entity::find_by_id(item)
            .one(&db)
            .await
            .expect("query")
            .is_none(),
        "items cascade with their scenario"
    );
    assert!(
        scenario_runs::Entity::find_by_id(run)
            .one(&db)
            .await
            .expect("query")
            .is_none(),
        "runs cascade with their scenario"
    );
}

#[tokio::test]
async fn upgrade_postgres() {
    let url = testdb::empty_postgres_url()
        .await
        .expect("create test database");
    upgrade_keeps_rows(db::connect(&url, 4).await.expect("connect")).await;
}

#[tokio::test]
async fn upgrade_sqlite() {
    let (url, _guard) = testdb::fresh_sqlite_url().expect("temp sqlite file");
    upgrade_keeps_rows(db::connect(&url, 4).await.expect("connect")).await;
}
