//! Migration 000009 on rows written before it, PostgreSQL and SQLite: a
//! chat whose customer still waits for an agent gets `awaiting_reply_since`
//! (the oldest visible inbound message after the last agent reply; bot
//! replies and reactions do not count), others none; template names are
//! unique among live templates only; `down` undoes it.

use chrono::{DateTime, TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, Value};
use uuid::Uuid;
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::db;
use wapipe_shared::entities::chats;
use wapipe_testkit::db as testdb;

const MIGRATION: &str = "m20261130_000009_responses_names_leases";

#[tokio::test]
async fn waits_and_live_names_postgres() {
    let url = testdb::empty_postgres_url().await.expect("test database");
    let db = db::connect(&url, 2).await.expect("connect");
    waits_and_live_names(&db).await;
}

#[tokio::test]
async fn waits_and_live_names_sqlite() {
    let (url, _dir) = testdb::fresh_sqlite_url().expect("sqlite");
    let db = db::connect(&url, 2).await.expect("connect");
    waits_and_live_names(&db).await;
}

async fn exec(
    db: &DatabaseConnection,
    sql: &str,
    values: Vec<Value>,
) -> Result<(), sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let sql = if backend == DbBackend::Sqlite {
        sql.replace('$', "?")
    } else {
        sql.to_owned()
    };
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
        .map(drop)
}

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + s, 0)
        .single()
        .expect("ts")
}

async fn waits_and_live_names(db: &DatabaseConnection) {
    loop {
        let pending = Migrator::get_pending_migrations(db).await.expect("pending");
        if pending.first().expect("pending").name() == MIGRATION {
            break;
        }
        Migrator::up(db, Some(1)).await.expect("up one");
    }
    let config = Uuid::now_v7();
    // Raw SQL: the entities already have this migration's columns.
    exec(
        db,
        "INSERT INTO whatsapp_configs (id, created_at, updated_at, company, phone_number_id, \
         waba_id, access_token_enc, app_secret_enc, verify_token_enc) \
         VALUES ($1, $2, $2, 'Acme', '15550000001', '15550009999', 'x', 'x', 'x')",
        vec![config.into(), t(0).into()],
    )
    .await
    .expect("config");
    // (chat, its messages: direction, sender type, type, time).
    let waiting = [
        ("inbound", "customer", "text", 0),
        ("outbound", "agent", "text", 10),
        ("inbound", "customer", "text", 20),
        ("inbound", "customer", "text", 30),
        ("outbound", "bot", "text", 40),
    ];
    let answered = [
        ("inbound", "customer", "text", 0),
        ("outbound", "agent", "text", 5),
    ];
    let reaction_only = [("inbound", "customer", "reaction", 0)];
    let mut chat_ids = Vec::new();
    for (n, msgs) in [&waiting[..], &answered[..], &reaction_only[..]]
        .into_iter()
        .enumerate()
    {
        let (customer, chat) = (Uuid::now_v7(), Uuid::now_v7());
        exec(
            db,
            "INSERT INTO customers (id, created_at, updated_at, config_id, wa_id) \
             VALUES ($1, $2, $2, $3, $4)",
            vec![
                customer.into(),
                t(0).into(),
                config.into(),
                format!("491511234567{n}").into(),
            ],
        )
        .await
        .expect("customer");
        exec(
            db,
            "INSERT INTO chats (id, created_at, updated_at, config_id, customer_id) \
             VALUES ($1, $2, $2, $3, $4)",
            vec![chat.into(), t(0).into(), config.into(), customer.into()],
        )
        .await
        .expect("chat");
        for (direction, sender, kind, at) in msgs {
            exec(
                db,
                "INSERT INTO messages (id, created_at, updated_at, config_id, chat_id, \
                 customer_id, direction, origin, sender_type, type, status) \
                 VALUES ($1, $2, $2, $3, $4, $5, $6, 'user', $7, $8, 'delivered')",
                vec![
                    Uuid::now_v7().into(),
                    t(*at).into(),
                    config.into(),
                    chat.into(),
                    customer.into(),
                    (*direction).into(),
                    (*sender).into(),
                    (*kind).into(),
                ],
            )
            .await
            .expect("message");
        }
        chat_ids.push(chat);
    }

    Migrator::up(db, Some(1)).await.expect("up 000009");
    let since = |id: Uuid| async move {
        let c = chats::Entity::find_by_id(id)
            .one(db)
            .await
            .expect("read")
            .expect("chat");
        assert_eq!(c.response_count, 0);
        c.awaiting_reply_since
    };
    assert_eq!(
        since(chat_ids[0]).await,
        Some(t(20)),
        "after the agent's reply"
    );
    assert_eq!(since(chat_ids[1]).await, None, "answered");
    assert_eq!(since(chat_ids[2]).await, None, "a reaction asks nothing");

    let template = |deleted: bool| {
        exec(
            db,
            "INSERT INTO templates (id, created_at, updated_at, config_id, name, language, \
             category, status, usage_count, is_deleted) \
             VALUES ($1, $2, $2, $3, 'greeting', 'en', 'UTILITY', 'local', 0, $4)",
            vec![
                Uuid::now_v7().into(),
                t(0).into(),
                config.into(),
                deleted.into(),
            ],
        )
    };
    template(true).await.expect("a deleted one");
    template(false).await.expect("a live one beside it");
    assert!(template(false).await.is_err(), "two live ones");

    // The old unique index cannot hold a deleted and a live one.
    assert!(Migrator::down(db, Some(1)).await.is_err());
    exec(db, "DELETE FROM templates WHERE is_deleted = true", vec![])
        .await
        .expect("purge");
    Migrator::down(db, Some(1)).await.expect("down 000009");
    assert!(template(true).await.is_err(), "the old index is back");
    Migrator::up(db, None).await.expect("up again");
}
