//! Migration 000008 brings the tables to seed 002's names for the API:
//! rows written before it read back under the new names (renamed columns,
//! chat statuses and priorities in the seed's words, assignment statuses,
//! label usage counts), label names become unique case-insensitively, and
//! its `down` gives the old names back with the data. PostgreSQL and SQLite.

use chrono::{TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, Value};
use uuid::Uuid;
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::db;
use wapipe_shared::entities::{chat_assignments, chats, labels, team_notes};
use wapipe_testkit::db as testdb;

const MIGRATION: &str = "m20261129_000008_api_seed002";

#[tokio::test]
async fn seed_names_keep_data_postgres() {
    let url = testdb::empty_postgres_url().await.expect("test database");
    let db = db::connect(&url, 2).await.expect("connect");
    seed_names_keep_data(&db).await;
}

#[tokio::test]
async fn seed_names_keep_data_sqlite() {
    let (url, _dir) = testdb::fresh_sqlite_url().expect("sqlite");
    let db = db::connect(&url, 2).await.expect("connect");
    seed_names_keep_data(&db).await;
}

fn stmt(db: &DatabaseConnection, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    let sql = if backend == DbBackend::Sqlite {
        sql.replace('$', "?")
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

async fn seed_names_keep_data(db: &DatabaseConnection) {
    loop {
        let pending = Migrator::get_pending_migrations(db).await.expect("pending");
        let next = pending.first().expect("pending").name().to_owned();
        if next == MIGRATION {
            break;
        }
        Migrator::up(db, Some(1)).await.expect("up one");
    }
    let t0 = Utc.timestamp_opt(1_790_000_000, 0).single().expect("ts");
    let [
        agent,
        customer,
        chat,
        chat2,
        customer2,
        note,
        assignment,
        label,
    ] = std::array::from_fn(|_| Uuid::now_v7());
    let c = Uuid::now_v7();
    // Raw SQL: the entities already have this migration's columns.
    db.execute_raw(stmt(
        db,
        "INSERT INTO whatsapp_configs (id, created_at, updated_at, company, phone_number_id, \
         waba_id, access_token_enc, app_secret_enc, verify_token_enc) \
         VALUES ($1, $2, $2, 'Acme', '15550000001', '15550009999', 'x', 'x', 'x')",
        vec![c.into(), t0.into()],
    ))
    .await
    .expect("config");
    for (sql, values) in [
        (
            "INSERT INTO agents (id, created_at, updated_at, name, email, active_chats) \
             VALUES ($1, $2, $2, 'Ana', 'ana@acme.example', 2)",
            vec![agent.into(), t0.into()],
        ),
        (
            "INSERT INTO customers (id, created_at, updated_at, config_id, wa_id, profile_name) \
             VALUES ($1, $2, $2, $3, '4915112345678', 'Zoë')",
            vec![customer.into(), t0.into(), c.into()],
        ),
        (
            "INSERT INTO customers (id, created_at, updated_at, config_id, wa_id) \
             VALUES ($1, $2, $2, $3, '4915100000000')",
            vec![customer2.into(), t0.into(), c.into()],
        ),
        (
            "INSERT INTO chats (id, created_at, updated_at, config_id, customer_id, \
             customer_phone, assigned_agent_id, status, priority) \
             VALUES ($1, $2, $2, $3, $4, '4915112345678', $5, 'open', 'normal')",
            vec![
                chat.into(),
                t0.into(),
                c.into(),
                customer.into(),
                agent.into(),
            ],
        ),
        (
            "INSERT INTO chats (id, created_at, updated_at, config_id, customer_id, status, priority) \
             VALUES ($1, $2, $2, $3, $4, 'open', 'high')",
            vec![chat2.into(), t0.into(), c.into(), customer2.into()],
        ),
        (
            "INSERT INTO team_notes (id, created_at, updated_at, config_id, chat_id, agent_id, content) \
             VALUES ($1, $2, $2, $3, $4, $5, 'call them back')",
            vec![note.into(), t0.into(), c.into(), chat.into(), agent.into()],
        ),
        (
            "INSERT INTO chat_assignments (id, created_at, updated_at, config_id, chat_id, agent_id, \
             transferred_from, reason, assigned_at, is_active) \
             VALUES ($1, $2, $2, $3, $4, $5, $5, 'vacation', $2, true)",
            vec![
                assignment.into(),
                t0.into(),
                c.into(),
                chat.into(),
                agent.into(),
            ],
        ),
        (
            "INSERT INTO labels (id, created_at, updated_at, config_id, name, color) \
             VALUES ($1, $2, $2, $3, 'VIP', '#ff0000')",
            vec![label.into(), t0.into(), c.into()],
        ),
        (
            "INSERT INTO chat_labels (chat_id, label_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $3)",
            vec![chat.into(), label.into(), t0.into()],
        ),
    ] {
        db.execute_raw(stmt(db, sql, values)).await.expect(sql);
    }

    Migrator::up(db, None).await.expect("this migration");
    let ch = chats::Entity::find_by_id(chat)
        .one(db)
        .await
        .expect("read")
        .expect("chat");
    assert_eq!(ch.phone_number.as_deref(), Some("4915112345678"));
    assert_eq!(ch.assigned_to, Some(agent));
    assert_eq!(ch.status, "assigned", "an assigned open chat");
    assert_eq!(ch.priority, "medium", "`normal` is seed 002's `medium`");
    assert_eq!(
        (ch.source.as_str(), ch.provider.as_str()),
        ("whatsapp", "meta-whatsapp")
    );
    let ch2 = chats::Entity::find_by_id(chat2)
        .one(db)
        .await
        .expect("read")
        .expect("chat");
    assert_eq!(
        (ch2.status.as_str(), ch2.priority.as_str()),
        ("unassigned", "high")
    );
    let n = team_notes::Entity::find_by_id(note)
        .one(db)
        .await
        .expect("read")
        .expect("note");
    assert_eq!(
        (n.note.as_str(), n.author_id),
        ("call them back", Some(agent))
    );
    let a = chat_assignments::Entity::find_by_id(assignment)
        .one(db)
        .await
        .expect("read")
        .expect("assignment");
    assert_eq!(a.assigned_to, agent);
    assert_eq!(a.transfer_reason.as_deref(), Some("vacation"));
    assert_eq!(
        (a.status.as_str(), a.assignment_type.as_str()),
        ("active", "transfer")
    );
    let l = labels::Entity::find_by_id(label)
        .one(db)
        .await
        .expect("read")
        .expect("label");
    assert_eq!(l.usage_count, 1, "counted from chat_labels");
    let dup = db
        .execute_raw(stmt(
            db,
            "INSERT INTO labels (id, created_at, updated_at, config_id, name, color) \
             VALUES ($1, $2, $2, $3, 'vip', '#00ff00')",
            vec![Uuid::now_v7().into(), t0.into(), c.into()],
        ))
        .await;
    assert!(dup.is_err(), "label names are unique case-insensitively");

    let applied = Migrator::get_applied_migrations(db).await.expect("applied");
    if applied.last().map(|m| m.name()) == Some(MIGRATION) {
        Migrator::down(db, Some(1)).await.expect("down");
        let row = db
            .query_one_raw(stmt(
                db,
                "SELECT customer_phone, status, priority FROM chats WHERE id = $1 \
                 AND assigned_agent_id = $2",
                vec![chat.into(), agent.into()],
            ))
            .await
            .expect("old names")
            .expect("the chat under its old names");
        assert_eq!(row.try_get::<String>("", "status").expect("status"), "open");
        assert_eq!(row.try_get::<String>("", "priority").expect("p"), "normal");
        let row = db
            .query_one_raw(stmt(
                db,
                "SELECT content FROM team_notes WHERE id = $1 AND agent_id = $2",
                vec![note.into(), agent.into()],
            ))
            .await
            .expect("old names")
            .expect("note");
        assert_eq!(
            row.try_get::<String>("", "content").expect("content"),
            "call them back"
        );
        let row = db
            .query_one_raw(stmt(
                db,
                "SELECT reason FROM chat_assignments WHERE id = $1 AND is_active = $2",
                vec![assignment.into(), true.into()],
            ))
            .await
            .expect("old names")
            .expect("assignment");
        assert_eq!(
            row.try_get::<Option<String>>("", "reason")
                .expect("r")
                .as_deref(),
            Some("vacation")
        );
        Migrator::up(db, None).await.expect("up again");
    }
}
