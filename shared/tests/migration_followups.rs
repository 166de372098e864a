//! Migration 000007 renames columns of live tables (`follow_ups.due_at` →
//! `scheduled_at`, `note` → `notes`, `agents.phone` → `phone_number`,
//! `max_chats` → `max_concurrent_chats`): rows written before it read back
//! the same after it, on PostgreSQL and SQLite, and its `down` gives the
//! old names back with the data.

use chrono::{TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, Value};
use uuid::Uuid;
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::db;
use wapipe_shared::entities::{agents, follow_ups};
use wapipe_testkit::db as testdb;

const MIGRATION: &str = "m20261129_000007_followups_seed002";

#[tokio::test]
async fn renames_keep_data_postgres() {
    let url = testdb::empty_postgres_url().await.expect("test database");
    let db = db::connect(&url, 2).await.expect("connect");
    renames_keep_data(&db).await;
}

#[tokio::test]
async fn renames_keep_data_sqlite() {
    let (url, _dir) = testdb::fresh_sqlite_url().expect("sqlite");
    let db = db::connect(&url, 2).await.expect("connect");
    renames_keep_data(&db).await;
}

/// `$n` placeholders as the backend wants them.
fn stmt(db: &DatabaseConnection, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    // SQLite numbers its parameters `?N`.
    let sql = if backend == DbBackend::Sqlite {
        sql.replace('$', "?")
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

async fn renames_keep_data(db: &DatabaseConnection) {
    // Every migration before this one.
    loop {
        let pending = Migrator::get_pending_migrations(db).await.expect("pending");
        let next = pending
            .first()
            .expect("this migration is pending")
            .name()
            .to_owned();
        if next == MIGRATION {
            break;
        }
        Migrator::up(db, Some(1)).await.expect("up one");
    }
    // Raw SQL: the config entity already has later migrations' columns.
    let config_id = Uuid::now_v7();
    {
        let backend = db.get_database_backend();
        let sql = "INSERT INTO whatsapp_configs (id, created_at, updated_at, company, \
                   phone_number_id, waba_id, access_token_enc, app_secret_enc, verify_token_enc) \
                   VALUES ($1, $2, $2, 'Acme', '15550000001', '15550009999', 'x', 'x', 'x')";
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
    struct Cfg {
        id: Uuid,
    }
    let config = Cfg { id: config_id };
    let ts = |s: i64| {
        Utc.timestamp_opt(1_790_000_000 + s, 0)
            .single()
            .expect("ts")
    };
    let (agent, customer, chat, fu) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    for (sql, values) in [
        (
            "INSERT INTO agents (id, created_at, updated_at, config_id, name, email, phone, max_chats) \
             VALUES ($1, $2, $2, $3, 'Ana', 'ana@acme.example', '+33612345678', 7)",
            vec![agent.into(), ts(0).into(), config.id.into()],
        ),
        (
            "INSERT INTO customers (id, created_at, updated_at, config_id, wa_id) \
             VALUES ($1, $2, $2, $3, '4915112345678')",
            vec![customer.into(), ts(0).into(), config.id.into()],
        ),
        (
            "INSERT INTO chats (id, created_at, updated_at, config_id, customer_id) \
             VALUES ($1, $2, $2, $3, $4)",
            vec![chat.into(), ts(0).into(), config.id.into(), customer.into()],
        ),
        (
            "INSERT INTO follow_ups (id, created_at, updated_at, config_id, chat_id, agent_id, \
             title, note, due_at) VALUES ($1, $2, $2, $3, $4, $5, 'Call back', 'about the order', $6)",
            vec![
                fu.into(),
                ts(0).into(),
                config.id.into(),
                chat.into(),
                agent.into(),
                ts(3600).into(),
            ],
        ),
    ] {
        db.execute_raw(stmt(db, sql, values)).await.expect(sql);
    }

    Migrator::up(db, None)
        .await
        .expect("this migration and the rest");
    let a = agents::Entity::find_by_id(agent)
        .one(db)
        .await
        .expect("read")
        .expect("agent");
    assert_eq!(a.phone_number.as_deref(), Some("+33612345678"));
    assert_eq!(a.max_concurrent_chats, 7);
    assert_eq!(a.company.as_deref(), Some("Acme"), "filled from its config");
    let f = follow_ups::Entity::find_by_id(fu)
        .one(db)
        .await
        .expect("read")
        .expect("follow-up");
    assert_eq!(f.scheduled_at, ts(3600));
    assert_eq!(f.notes.as_deref(), Some("about the order"));
    assert_eq!(f.status, "pending");
    assert_eq!(f.priority, "medium", "the old default `normal` is `medium`");
    assert!(!f.reminder_sent && f.claimed_at.is_none() && f.claim_count == 0);

    // Down, when this migration is the last one applied.
    let applied = Migrator::get_applied_migrations(db).await.expect("applied");
    if applied.last().map(|m| m.name()) == Some(MIGRATION) {
        Migrator::down(db, Some(1)).await.expect("down");
        let row = db
            .query_one_raw(stmt(
                db,
                "SELECT note, priority FROM follow_ups WHERE id = $1 AND due_at = $2",
                vec![fu.into(), ts(3600).into()],
            ))
            .await
            .expect("old names")
            .expect("the row under its old names");
        assert_eq!(
            row.try_get::<Option<String>>("", "note")
                .expect("note")
                .as_deref(),
            Some("about the order")
        );
        assert_eq!(
            row.try_get::<String>("", "priority").expect("priority"),
            "normal"
        );
        let row = db
            .query_one_raw(stmt(
                db,
                "SELECT phone, max_chats FROM agents WHERE id = $1",
                vec![agent.into()],
            ))
            .await
            .expect("old names")
            .expect("agent");
        assert_eq!(row.try_get::<i32>("", "max_chats").expect("max_chats"), 7);
        Migrator::up(db, None).await.expect("up again");
    }
}
