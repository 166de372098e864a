//! The entities match the migration on both backends: the migration applies
//! twice, the tables and their columns (names and nullability) are exactly
//! the entities', every table round-trips a fully populated row, and the
//! unique constraints the invariants rely on (DESIGN §5, invariant 3) reject
//! duplicates and make `ON CONFLICT DO NOTHING` a no-op.
//!
//! Each check is written once (`all_checks`) and run against a fresh
//! PostgreSQL database and a fresh SQLite file.

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend,
    DbErr, EntityName, EntityTrait, IdenStatic, IntoActiveModel, Iterable, PaginatorTrait,
    PrimaryKeyTrait, SqlErr, Statement,
};
use serde_json::json;
use uuid::Uuid;
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::db;
use wapipe_shared::entities::conversations::ConversationStatus;
use wapipe_shared::entities::messages::{Direction, MessageStatus, Origin};
use wapipe_shared::entities::webhook_events::EventStatus;
use wapipe_shared::entities::*;
use wapipe_testkit::db as testdb;

type DateTimeUtc = chrono::DateTime<Utc>;

#[tokio::test]
async fn roundtrip_postgres() {
    let url = testdb::empty_postgres_url()
        .await
        .expect("create test database");
    let db = db::connect(&url, 5).await.expect("connect to postgres");
    all_checks(&db).await;
    db.close().await.expect("close");
    // Left to `make clean-test-dbs`, like every test database: a DROP
    // DATABASE costs a checkpoint that every test running beside it waits on.
}

#[tokio::test]
async fn roundtrip_sqlite() {
    let (url, _guard) = testdb::fresh_sqlite_url().expect("temp sqlite file");
    let db = db::connect(&url, 5).await.expect("connect to sqlite");
    all_checks(&db).await;
    db.close().await.expect("close");
}

async fn all_checks(db: &DatabaseConnection) {
    migrations_apply_twice(db).await;
    schema_matches_entities(db).await;
    let rows = all_roundtrips(db).await;
    unique_constraints(db, &rows).await;
}

async fn migrations_apply_twice(db: &DatabaseConnection) {
    Migrator::up(db, None).await.expect("first up");
    Migrator::up(db, None).await.expect("second up is a no-op");
    Migrator::status(db).await.expect("status");
    let applied = Migrator::get_applied_migrations(db)
        .await
        .expect("applied migrations");
    assert_eq!(
        applied.len(),
        Migrator::migrations().len(),
        "every migration applied once"
    );
    assert!(
        Migrator::get_pending_migrations(db)
            .await
            .expect("pending migrations")
            .is_empty()
    );
}

// ------------------------------------------------------ schema vs entities

/// The tables the migration made, and each table's columns with their
/// nullability, are exactly those of the entities. The round trips below
/// then check that every column's type decodes to the entity's.
async fn schema_matches_entities(db: &DatabaseConnection) {
    let mut expected = BTreeMap::new();
    macro_rules! entities {
        ($($m:ident),* $(,)?) => {
            $( expected.insert($m::Entity.table_name().to_owned(), entity_columns::<$m::Entity>()); )*
        };
    }
    entities!(
        agent_performance,
        agents,
        api_keys,
        audit_log,
        blocked_numbers,
        calls,
        chat_assignments,
        chat_labels,
        chats,
        conversations,
        customer_blocked_scenarios,
        customer_previous_ids,
        customers,
        dead_letters,
        events,
        follow_ups,
        group_participants,
        groups,
        idempotency_keys,
        labels,
        leases,
        message_media,
        message_status_events,
        messages,
        scenario_items,
        scenario_runs,
        scenario_settings,
        scenarios,
        team_notes,
        template_scenarios,
        templates,
        webhook_deliveries,
        webhook_delivery_attempts,
        webhook_dispatch,
        webhook_endpoints,
        webhook_events,
        whatsapp_configs,
    );

    let tables: Vec<String> = query_strings(
        db,
        match db.get_database_backend() {
            DbBackend::Postgres => {
                "SELECT table_name::text AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name <> 'seaql_migrations'"
            }
            _ => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> 'seaql_migrations'"
            }
        },
        None,
    )
    .await
    .into_iter()
    .map(|(name, _)| name)
    .collect();
    let mut tables_sorted = tables.clone();
    tables_sorted.sort();
    assert_eq!(
        tables_sorted,
        expected.keys().cloned().collect::<Vec<_>>(),
        "one entity per table"
    );

    for (table, entity_cols) in &expected {
        let sql = match db.get_database_backend() {
            DbBackend::Postgres => {
                "SELECT column_name::text AS name, (is_nullable = 'YES') AS nullable \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
            _ => "SELECT name, (\"notnull\" = 0) AS nullable FROM pragma_table_info(?)",
        };
        let db_cols: BTreeMap<String, bool> = query_strings(db, sql, Some(table))
            .await
            .into_iter()
            .collect();
        assert_eq!(&db_cols, entity_cols, "{table}: columns (name -> nullable)");
    }
}

fn entity_columns<E: EntityTrait>() -> BTreeMap<String, bool> {
    E::Column::iter()
        .map(|c| (c.as_str().to_owned(), c.def().is_null()))
        .collect()
}

/// Rows of (`name`, `nullable`) from a catalog query; `nullable` is false
/// when the query has no such column.
async fn query_strings(
    db: &DatabaseConnection,
    sql: &str,
    arg: Option<&str>,
) -> Vec<(String, bool)> {
    let values: Vec<sea_orm::Value> = arg.map(Into::into).into_iter().collect();
    let stmt = Statement::from_sql_and_values(db.get_database_backend(), sql, values);
    db.query_all_raw(stmt)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|row| {
            let name: String = row.try_get("", "name").expect("name column");
            let nullable = row.try_get::<bool>("", "nullable").unwrap_or(false);
            (name, nullable)
        })
        .collect()
}

// ---------------------------------------------------------------- helpers

/// Distinct timestamps with sub-second precision, already truncated to
/// microseconds (the precision of PostgreSQL's timestamptz).
fn ts(n: i64) -> DateTimeUtc {
    Utc.with_ymd_and_hms(2026, 11, 21, 9, 30, 15)
        .single()
        .expect("valid date")
        + Duration::seconds(n * 61)
        + Duration::microseconds(123_456 + n * 1_111)
}

fn id() -> Uuid {
    Uuid::now_v7()
}

const HELLO: &str = "héllo 👋";

/// Fails unless every column of the row is set and non-NULL, so a round trip
/// exercises every column's type.
fn assert_fully_populated<E>(table: &str, model: &E::Model)
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone,
    E::ActiveModel: ActiveModelTrait<Entity = E>,
{
    let am = model.clone().into_active_model();
    for col in E::Column::iter() {
        match am.get(col) {
            ActiveValue::Set(v) | ActiveValue::Unchanged(v) => {
                assert!(v.is_some(), "{table}.{col:?} is NULL in the test row")
            }
            ActiveValue::NotSet => panic!("{table}.{col:?} not set"),
        }
    }
}

async fn insert<E>(db: &DatabaseConnection, model: E::Model) -> Result<u64, DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
{
    E::insert(model.into_active_model().reset_all())
        .exec_without_returning(db)
        .await
}

/// Inserts `model`, reads it back by primary key and compares whole models.
async fn roundtrip<E, K>(db: &DatabaseConnection, table: &str, model: E::Model, pk: K) -> E::Model
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone + PartialEq + Debug,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    K: Into<<E::PrimaryKey as PrimaryKeyTrait>::ValueType>,
{
    assert_fully_populated::<E>(table, &model);
    let n = insert::<E>(db, model.clone())
        .await
        .unwrap_or_else(|e| panic!("insert into {table}: {e}"));
    assert_eq!(n, 1, "{table}: rows inserted");
    let back = E::find_by_id(pk)
        .one(db)
        .await
        .unwrap_or_else(|e| panic!("select from {table}: {e}"))
        .unwrap_or_else(|| panic!("{table}: row not found by primary key"));
    assert_eq!(back, model, "{table}: round trip changed the row");
    back
}

// ------------------------------------------------------------- round trips

/// The rows inserted by `all_roundtrips`, for the constraint checks.
struct Rows {
    config: whatsapp_configs::Model,
    customer: customers::Model,
    message: messages::Model,
    status_event: message_status_events::Model,
    webhook_event: webhook_events::Model,
}

async fn all_roundtrips(db: &DatabaseConnection) -> Rows {
    let config = whatsapp_configs::Model {
        id: id(),
        created_at: ts(0),
        updated_at: ts(1),
        company: format!("Société {HELLO}"),
        name: Some(HELLO.to_owned()),
        phone_number_id: "106540352242922".to_owned(),
        waba_id: "102290129340398".to_owned(),
        display_phone_number: Some("+1 555 010 0199".to_owned()),
        access_token_enc: "v1:bm9uY2U=:Y2lwaGVy".to_owned(),
        app_secret_enc: "v1:bm9uY2U=:c2VjcmV0".to_owned(),
        verify_token_enc: "v1:bm9uY2U=:dmVyaWZ5".to_owned(),
        webhook_secret_enc: Some("v1:bm9uY2U=:d2ViaG9vaw==".to_owned()),
        max_mps: 250,
        graph_api_version: Some("v23.0".to_owned()),
        is_active: false,
        flagged_reason: Some("token expired ⏰".to_owned()),
        flagged_code: Some("190".to_owned()),
        flagged_at: Some(ts(2)),
        provider: "meta-whatsapp".to_owned(),
        account_sid: Some("AC0123".to_owned()),
        auth_token_enc: Some("v1:bm9uY2U=:dHdpbGlv".to_owned()),
        instance_id: Some("inst-1".to_owned()),
        api_key_enc: Some("v1:bm9uY2U=:YXBp".to_owned()),
        webhook_url: Some("https://example.com/hook".to_owned()),
        webhook_status: Some("active".to_owned()),
        business_profile: Some(json!({"name": HELLO, "website": "https://example.com"})),
        last_sync_at: Some(ts(3)),
        quality_rating: Some("YELLOW".to_owned()),
        messaging_limit_tier: Some("TIER_1K".to_owned()),
        name_status: Some("APPROVED".to_owned()),
        verified_name: Some(HELLO.to_owned()),
        account_status: Some("ACCOUNT_RESTRICTION".to_owned()),
        restrictions: Some(json!([{"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION"}])),
        business_capabilities: Some(json!({"max_phone_numbers_per_waba": 25})),
        last_alert: Some(json!({"alert_info": {"alert_severity": "WARNING"}})),
        quality_updated_at: Some(ts(4)),
        name_updated_at: Some(ts(5)),
        account_updated_at: Some(ts(6)),
        alert_updated_at: Some(ts(7)),
        capabilities_updated_at: Some(ts(8)),
        is_deleted: true,
        deleted_at: Some(ts(3)),
    };
    let config =
        roundtrip::<whatsapp_configs::Entity, _>(db, "whatsapp_configs", config.clone(), config.id)
            .await;

    let agent = agents::Model {
        id: id(),
        created_at: ts(4),
        updated_at: ts(5),
        config_id: Some(config.id),
        name: format!("Agent {HELLO}"),
        email: "agent+été@example.com".to_owned(),
        role: "admin".to_owned(),
        status: "online".to_owned(),
        phone_number: Some("+33 6 12 34 56 78".to_owned()),
        avatar: Some("https://example.com/a/👤.png".to_owned()),
        department: Some("Support".to_owned()),
        skills: Some(json!(["billing", "français", {"level": 3, "langs": ["fr", "en"]}])),
        max_concurrent_chats: 12,
        current_chat_count: 3,
        is_active: false,
        last_active_at: Some(ts(6)),
        is_deleted: true,
        deleted_at: Some(ts(7)),
        company: Some("Société Générale d'Été".to_owned()),
        user_id: Some(format!("user-{}", id())),
        availability: "unavailable".to_owned(),
        is_online: true,
        last_seen: Some(ts(6)),
        permissions: Some(json!({"canAssignChats": true})),
        stats: Some(json!({"messagesSent": 3})),
        working_hours: Some(json!({"timezone": "Europe/Paris", "schedule": []})),
    };
    let agent = roundtrip::<agents::Entity, _>(db, "agents", agent.clone(), agent.id).await;

    let customer = customers::Model {
        id: id(),
        created_at: ts(8),
        updated_at: ts(9),
        config_id: config.id,
        wa_id: Some("16505551234".to_owned()),
        user_id: Some("US.13491208655302741918".to_owned()),
        phone_number: Some("+16505551234".to_owned()),
        name: Some(HELLO.to_owned()),
        whatsapp_name: Some("Zoë 🌸".to_owned()),
        email: Some("zoe@example.com".to_owned()),
        whatsapp_profile_picture: Some("https://example.com/p/zoe.jpg".to_owned()),
        tags: Some(json!({"vip": true, "tags": ["été", "🔥"], "score": 4.5, "none": null})),
        notes: Some(format!("multi\nline {HELLO}")),
        is_blocked: true,
        total_chats: 7,
        last_contact_at: Some(ts(10)),
        last_inbound_at: Some(ts(11)),
        is_deleted: true,
        deleted_at: Some(ts(12)),
        avatar: Some("https://example.com/a.png".to_owned()),
        alternate_phone_numbers: Some(json!(["+33612345678"])),
        address: Some(json!({"city": "Paris", "zipCode": "75001"})),
        language: Some("fr".to_owned()),
        is_verified: true,
        total_messages: 12,
        first_contact_at: Some(ts(9)),
        preferred_agent: Some(agent.id),
        preferred_contact_time: Some("morning".to_owned()),
        is_active: false,
        marketing_opted_out: true,
        marketing_preference_at: Some(ts(13)),
        username: Some("@zoé".to_owned()),
        parent_user_id: Some("US.ENT.11815799212886844830".to_owned()),
        wa_group_id: Some("120363025246125486@g.us".to_owned()),
    };
    let customer =
        roundtrip::<customers::Entity, _>(db, "customers", customer.clone(), customer.id).await;

    let chat = chats::Model {
        id: id(),
        created_at: ts(13),
        updated_at: ts(14),
        config_id: config.id,
        customer_id: customer.id,
        phone_number: Some("+16505551234".to_owned()),
        customer_name: Some(HELLO.to_owned()),
        status: "resolved".to_owned(),
        priority: "urgent".to_owned(),
        assigned_to: Some(agent.id),
        unread_count: 4,
        last_message: Some(HELLO.to_owned()),
        last_message_time: Some(ts(15)),
        last_message_id: Some(id()),
        total_messages: 40,
        customer_messages: 20,
        agent_messages: 15,
        bot_messages: 5,
        is_archived: true,
        is_pinned: true,
        is_muted: true,
        first_response_at: Some(ts(16)),
        resolved_at: Some(ts(17)),
        handoff_at: Some(ts(16)),
        is_deleted: true,
        deleted_at: Some(ts(18)),
        assigned_at: Some(ts(20)),
        assigned_by: Some(agent.id),
        source: "api".to_owned(),
        provider: "meta-whatsapp".to_owned(),
        provider_chat_id: Some("chat-1".to_owned()),
        whatsapp_business_account_id: Some("102290129340398".to_owned()),
        phone_number_id: Some("106540352242922".to_owned()),
        customer_info: Some(json!({"email": "z@example.com", "tags": ["vip"]})),
        closed_at: Some(ts(21)),
        first_response_time: Some(30.5),
        avg_response_time: Some(61.25),
        response_count: 4,
        awaiting_reply_since: Some(ts(22)),
    };
    let chat = roundtrip::<chats::Entity, _>(db, "chats", chat.clone(), chat.id).await;

    let conversation = conversations::Model {
        id: id(),
        created_at: ts(19),
        updated_at: ts(20),
        config_id: config.id,
        customer_id: customer.id,
        chat_id: Some(chat.id),
        status: ConversationStatus::Expired,
        opened_at: ts(21),
        last_inbound_at: ts(22),
        expires_at: ts(23),
        closed_at: Some(ts(24)),
        provider_conversation_id: Some("CONVERSATION_ID_1".to_owned()),
        origin_type: Some("service".to_owned()),
        message_count: 9,
    };
    let conversation = roundtrip::<conversations::Entity, _>(
        db,
        "conversations",
        conversation.clone(),
        conversation.id,
    )
    .await;

    let message = messages::Model {
        id: id(),
        created_at: ts(25),
        updated_at: ts(26),
        config_id: config.id,
        chat_id: chat.id,
        customer_id: customer.id,
        conversation_id: Some(conversation.id),
        provider_message_id: Some(
            "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA".to_owned(),
        ),
        direction: Direction::Outbound,
        origin: Origin::Admin,
        sender_type: "agent".to_owned(),
        sender_id: Some(agent.id),
        r#type: "interactive".to_owned(),
        text: Some(HELLO.to_owned()),
        media: Some(json!({"id": "1037543291543636", "mime_type": "image/jpeg", "sha256": "abc"})),
        location: Some(json!({"latitude": 48.8584, "longitude": 2.2945, "name": "Tour Eiffel"})),
        contacts: Some(json!([{"name": {"formatted_name": "Zoë"}, "phones": [{"phone": "+1"}]}])),
        interactive: Some(
            json!({"type": "button_reply", "button_reply": {"id": "yes", "title": "Oui ✅"}}),
        ),
        template: Some(json!({"name": "hello_world", "language": {"code": "en_US"}})),
        reaction: Some(json!({"message_id": "wamid.X", "emoji": "👍"})),
        reactions: Some(json!([{"emoji": "❤️", "from": "16505551234"}])),
        context: Some(json!({"from": "16505551234", "id": "wamid.PREV", "forwarded": true})),
        reply_to_provider_id: Some("wamid.PREV".to_owned()),
        is_forwarded: true,
        referral: Some(json!({"source_type": "ad", "source_id": "120", "headline": HELLO})),
        payload: Some(json!({"nested": {"deep": [1, 2.5, -3, true, null, "x"]}})),
        errors: Some(json!([{"code": 131026, "title": "Message undeliverable"}])),
        status: MessageStatus::Delivered,
        error_code: Some("131026".to_owned()),
        error_title: Some("Message undeliverable".to_owned()),
        error_details: Some(format!("details {HELLO}")),
        timestamp: Some(ts(27)),
        sent_at: Some(ts(28)),
        delivered_at: Some(ts(29)),
        read_at: Some(ts(30)),
        failed_at: Some(ts(31)),
        dispatched_at: Some(ts(32)),
        attempt_count: 2,
        is_read: true,
        is_edited: true,
        edit_history: Some(json!([{"text": "héllo", "at": "2026-11-21T09:30:15Z"}])),
        is_deleted: true,
        deleted_at: Some(ts(32)),
        effect_target: Some("wamid.target".to_owned()),
        answers_message_id: Some(Uuid::now_v7()),
        answer_seq: Some(2),
        from: Some("16505551234".to_owned()),
        to: Some("15550100199".to_owned()),
        read_status: Some("read".to_owned()),
        sender_name: Some(HELLO.to_owned()),
        provider: "meta-whatsapp".to_owned(),
        provider_status: Some("delivered".to_owned()),
        metadata: Some(json!({"campaign": HELLO})),
        pricing_model: Some("PMP".to_owned()),
        pricing_type: Some("regular".to_owned()),
        pricing_category: Some("marketing".to_owned()),
        billable: Some(true),
        participant_id: Some(customer.id),
    };
    let message =
        roundtrip::<messages::Entity, _>(db, "messages", message.clone(), message.id).await;

    let webhook_event = webhook_events::Model {
        id: id(),
        created_at: ts(33),
        updated_at: ts(34),
        config_id: Some(config.id),
        body_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        raw_body: [
            b"{\"object\":\"whatsapp_business_account\"} ".as_slice(),
            &[0, 0xff, 0xfe, 0x80],
        ]
        .concat(),
        signature: Some("sha256=deadbeef".to_owned()),
        object: Some("whatsapp_business_account".to_owned()),
        field: Some("messages".to_owned()),
        status: EventStatus::Processed,
        error: Some(format!("error {HELLO}")),
        attempts: 3,
        received_at: ts(35),
        published_at: Some(ts(36)),
        processed_at: Some(ts(37)),
        processed_data: Some(json!({"messages": 1, "statuses": 2, "ids": ["a", "b"]})),
        event_type: Some("message".to_owned()),
        provider: "meta-whatsapp".to_owned(),
        chat_id: Some(chat.id),
        message_id: Some(message.id),
    };
    let webhook_event = roundtrip::<webhook_events::Entity, _>(
        db,
        "webhook_events",
        webhook_event.clone(),
        webhook_event.id,
    )
    .await;

    let status_event = message_status_events::Model {
        id: id(),
        created_at: ts(38),
        updated_at: ts(39),
        config_id: config.id,
        provider_message_id: message
            .provider_message_id
            .clone()
            .expect("message has a wamid"),
        message_id: Some(message.id),
        status: "failed".to_owned(),
        timestamp: ts(40),
        recipient_id: Some("16505551234".to_owned()),
        recipient_user_id: Some("US.13491208655302741918".to_owned()),
        conversation: Some(json!({"id": "CONVERSATION_ID_1", "origin": {"type": "service"}})),
        pricing: Some(json!({"billable": false, "category": "service", "pricing_model": "PMP"})),
        errors: Some(json!([{"code": 131047, "error_data": {"details": "window closed"}}])),
        error_code: Some("131047".to_owned()),
        raw: Some(json!({"id": "wamid.X", "status": "failed", "timestamp": "1763717415"})),
        applied: true,
        webhook_event_id: Some(webhook_event.id),
    };
    let status_event = roundtrip::<message_status_events::Entity, _>(
        db,
        "message_status_events",
        status_event.clone(),
        status_event.id,
    )
    .await;

    let label = labels::Model {
        id: id(),
        created_at: ts(41),
        updated_at: ts(42),
        config_id: config.id,
        name: format!("Étiquette {HELLO}"),
        color: "#ff00aa".to_owned(),
        description: Some(HELLO.to_owned()),
        created_by: Some(agent.id),
        is_deleted: true,
        deleted_at: Some(ts(43)),
        usage_count: 7,
        is_active: false,
    };
    let label = roundtrip::<labels::Entity, _>(db, "labels", label.clone(), label.id).await;

    let chat_label = chat_labels::Model {
        chat_id: chat.id,
        label_id: label.id,
        added_by: Some(agent.id),
        created_at: ts(44),
        updated_at: ts(45),
    };
    roundtrip::<chat_labels::Entity, _>(db, "chat_labels", chat_label, (chat.id, label.id)).await;

    let template = templates::Model {
        id: id(),
        created_at: ts(46),
        updated_at: ts(47),
        config_id: config.id,
        name: "order_update_🚚".to_owned(),
        language: "fr_FR".to_owned(),
        category: "MARKETING".to_owned(),
        status: "APPROVED".to_owned(),
        components: Some(json!([{"type": "BODY", "text": "Bonjour {{1}} 👋"}])),
        whatsapp_template_id: Some("594425479261596".to_owned()),
        rejected_reason: Some("NONE".to_owned()),
        quality_score: Some("GREEN".to_owned()),
        previous_category: Some("UTILITY".to_owned()),
        usage_count: 99,
        created_by: Some(agent.id),
        is_deleted: true,
        deleted_at: Some(ts(48)),
        content: Some(format!("Bonjour {{{{1}}}} {HELLO}")),
        variables: Some(json!(["name"])),
        whatsapp_template_name: Some("order_update".to_owned()),
        last_used_at: Some(ts(44)),
        is_active: false,
        pending_category: Some("MARKETING".to_owned()),
        pending_category_at: Some(ts(49)),
        status_at: Some(ts(45)),
    };
    roundtrip::<templates::Entity, _>(db, "templates", template.clone(), template.id).await;

    let follow_up = follow_ups::Model {
        id: id(),
        created_at: ts(49),
        updated_at: ts(50),
        config_id: config.id,
        chat_id: chat.id,
        customer_id: Some(customer.id),
        agent_id: Some(agent.id),
        created_by: Some(agent.id),
        title: Some(format!("Rappel {HELLO}")),
        notes: Some("call back ☎️".to_owned()),
        scheduled_at: ts(51),
        status: "completed".to_owned(),
        priority: "high".to_owned(),
        reminder_sent: true,
        reminder_sent_at: Some(ts(52)),
        completed_at: Some(ts(53)),
        completed_by: Some(agent.id),
        is_deleted: true,
        deleted_at: Some(ts(54)),
        claimed_at: Some(ts(51)),
        claim_count: 2,
        reminder_message_id: Some(id()),
        reminder_channel: Some("event".to_owned()),
        reminder_note: Some("agent has no phone number: event only".to_owned()),
    };
    roundtrip::<follow_ups::Entity, _>(db, "follow_ups", follow_up.clone(), follow_up.id).await;

    let team_note = team_notes::Model {
        id: id(),
        created_at: ts(55),
        updated_at: ts(56),
        config_id: config.id,
        chat_id: chat.id,
        author_id: Some(agent.id),
        note: format!("Note interne {HELLO}"),
        author_name: Some(HELLO.to_owned()),
        edited_at: Some(ts(56)),
        edited_by: Some(agent.id),
        is_pinned: true,
        mentions: Some(json!([agent.id.to_string()])),
        is_edited: true,
        edit_history: Some(json!([{"content": "old", "at": 1763717415}])),
        is_deleted: true,
        deleted_at: Some(ts(57)),
    };
    roundtrip::<team_notes::Entity, _>(db, "team_notes", team_note.clone(), team_note.id).await;

    let blocked = blocked_numbers::Model {
        id: id(),
        created_at: ts(58),
        updated_at: ts(59),
        config_id: config.id,
        phone_number: "+16505559999".to_owned(),
        reason: Some(format!("spam {HELLO}")),
        blocked_by: Some(agent.id),
        is_active: false,
        unblocked_at: Some(ts(60)),
        unblocked_by: Some(agent.id),
        notes: Some(HELLO.to_owned()),
        blocked_by_name: Some("Zoë".to_owned()),
        blocked_at: Some(ts(58)),
        is_deleted: true,
        deleted_at: Some(ts(60)),
    };
    roundtrip::<blocked_numbers::Entity, _>(db, "blocked_numbers", blocked.clone(), blocked.id)
        .await;

    let assignment = chat_assignments::Model {
        id: id(),
        created_at: ts(61),
        updated_at: ts(62),
        config_id: config.id,
        chat_id: chat.id,
        assigned_to: agent.id,
        assigned_by: Some(agent.id),
        transferred_from: Some(id()),
        transfer_reason: Some(format!("transfert {HELLO}")),
        assigned_at: ts(63),
        completed_at: Some(ts(64)),
        assignment_type: "transfer".to_owned(),
        status: "completed".to_owned(),
    };
    roundtrip::<chat_assignments::Entity, _>(
        db,
        "chat_assignments",
        assignment.clone(),
        assignment.id,
    )
    .await;

    let performance = agent_performance::Model {
        id: id(),
        created_at: ts(65),
        updated_at: ts(66),
        agent_id: agent.id,
        config_id: Some(config.id),
        date: NaiveDate::from_ymd_opt(2026, 11, 21).expect("valid date"),
        total_chats: 31,
        chats_resolved: 29,
        messages_sent: 412,
        avg_response_time: Some(42.125),
        avg_resolution_time_secs: Some(3_600.5),
        customer_satisfaction: Some(4.87),
        chats_assigned: 33,
        chats_transferred: 2,
        messages_received: 380,
        first_response_time: Some(12.5),
        total_active_time: Some(28_800.0),
        avg_chat_duration: Some(900.25),
        resolution_rate: Some(0.935),
    };
    roundtrip::<agent_performance::Entity, _>(
        db,
        "agent_performance",
        performance.clone(),
        performance.id,
    )
    .await;

    let scenario = scenarios::Model {
        id: id(),
        created_at: ts(67),
        updated_at: ts(68),
        config_id: Some(config.id),
        title: format!("Accueil {HELLO}"),
        r#type: "client".to_owned(),
        description: Some("welcome flow".to_owned()),
        keywords: Some(json!(["bonjour", "hello", "👋"])),
        active: false,
        repeat_count: 3,
        priority: 5,
        is_deleted: true,
        deleted_at: Some(ts(69)),
    };
    let scenario =
        roundtrip::<scenarios::Entity, _>(db, "scenarios", scenario.clone(), scenario.id).await;

    let blocked_scenario = customer_blocked_scenarios::Model {
        customer_id: customer.id,
        scenario_id: scenario.id,
        config_id: config.id,
        created_at: ts(70),
        updated_at: ts(71),
    };
    roundtrip::<customer_blocked_scenarios::Entity, _>(
        db,
        "customer_blocked_scenarios",
        blocked_scenario,
        (customer.id, scenario.id),
    )
    .await;

    let item = scenario_items::Model {
        id: id(),
        created_at: ts(72),
        updated_at: ts(73),
        config_id: Some(config.id),
        scenario_id: scenario.id,
        r#ref: format!("menu-{HELLO}"),
        r#type: "button".to_owned(),
        label: Some("Choisissez 👇".to_owned()),
        url: Some("https://example.com/menu.jpg".to_owned()),
        title: Some(HELLO.to_owned()),
        parents: Some(json!([id().to_string()])),
        children: Some(json!([id().to_string(), id().to_string()])),
        template_scenario_ids: Some(json!([id().to_string()])),
        position: 2,
    };
    let item =
        roundtrip::<scenario_items::Entity, _>(db, "scenario_items", item.clone(), item.id).await;

    let template_scenario = template_scenarios::Model {
        id: id(),
        created_at: ts(74),
        updated_at: ts(75),
        config_id: Some(config.id),
        r#ref: format!("Catalogue {HELLO}"),
        thumbnail_id: Some("sku-0".to_owned()),
        catalog_id: Some("1537358196820123".to_owned()),
        header: Some("En-tête".to_owned()),
        body: Some("Corps 📦".to_owned()),
        footer: Some("Pied".to_owned()),
        sections: Some(json!([{"title": "Top", "product_items": ["sku-1", "sku-2"]}])),
    };
    roundtrip::<template_scenarios::Entity, _>(
        db,
        "template_scenarios",
        template_scenario.clone(),
        template_scenario.id,
    )
    .await;

    let run = scenario_runs::Model {
        id: id(),
        created_at: ts(76),
        updated_at: ts(77),
        config_id: config.id,
        scenario_id: scenario.id,
        customer_id: customer.id,
        chat_id: Some(chat.id),
        current_item_id: Some(item.id),
        status: "finished".to_owned(),
        fallback_count: 2,
        start_message_id: Some(id()),
        last_message_id: Some(id()),
        started_at: ts(78),
        last_step_at: ts(79),
        ended_at: Some(ts(80)),
    };
    roundtrip::<scenario_runs::Entity, _>(db, "scenario_runs", run.clone(), run.id).await;

    let scenario_settings = scenario_settings::Model {
        config_id: config.id,
        created_at: ts(80),
        updated_at: ts(80),
        fallback: Some(format!("Je n'ai pas compris {HELLO}")),
        exit_keywords: Some(json!(["stop", "menu", "arrêt"])),
        default_scenario: Some(format!("Accueil {HELLO}")),
        list_button: Some("Options".to_owned()),
    };
    roundtrip::<scenario_settings::Entity, _>(
        db,
        "scenario_settings",
        scenario_settings.clone(),
        scenario_settings.config_id,
    )
    .await;

    let audit = audit_log::Model {
        id: id(),
        created_at: ts(81),
        updated_at: ts(82),
        config_id: Some(config.id),
        actor_type: "agent".to_owned(),
        actor_id: Some(agent.id),
        action: "chat.transfer".to_owned(),
        entity_type: "chats".to_owned(),
        entity_id: Some(chat.id.to_string()),
        details: Some(json!({"from": agent.id.to_string(), "reason": HELLO})),
    };
    roundtrip::<audit_log::Entity, _>(db, "audit_log", audit.clone(), audit.id).await;

    let api_key = api_keys::Model {
        id: id(),
        created_at: ts(83),
        updated_at: ts(84),
        agent_id: Some(agent.id),
        name: format!("clé {HELLO}"),
        kind: "admin".to_owned(),
        companies: Some(json!(["Acme"])),
        key_prefix: "wp_live_ab12".to_owned(),
        key_hash: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".to_owned(),
        last_used_at: Some(ts(85)),
        expires_at: Some(ts(86)),
        revoked_at: Some(ts(87)),
    };
    roundtrip::<api_keys::Entity, _>(db, "api_keys", api_key.clone(), api_key.id).await;
    let idem = idempotency_keys::Model {
        id: id(),
        created_at: ts(88),
        updated_at: ts(89),
        api_key_id: api_key.id,
        key: format!("clé {HELLO}"),
        request_hash: "ab".repeat(32),
        response_status: Some(202),
        response_body: Some(json!({"id": HELLO}).to_string()),
    };
    roundtrip::<idempotency_keys::Entity, _>(db, "idempotency_keys", idem.clone(), idem.id).await;
    let lease = leases::Model {
        name: format!("job {HELLO}"),
        created_at: ts(90),
        updated_at: ts(91),
        holder: id().to_string(),
        expires_at: ts(92),
    };
    roundtrip::<leases::Entity, _>(db, "leases", lease.clone(), lease.name.clone()).await;

    let dead_letter = dead_letters::Model {
        id: id(),
        created_at: ts(88),
        updated_at: ts(89),
        queue: "parse".to_owned(),
        event: "webhook.received".to_owned(),
        lane_key: format!("{}:16505551234", config.id),
        message_id: id().to_string(),
        body: vec![0, 1, 2, 0xff, 0xfe, b'{', b'}'],
        attempts: 5,
        last_error: Some(format!("boom {HELLO}")),
        redrive_requested_at: Some(ts(90)),
    };
    roundtrip::<dead_letters::Entity, _>(db, "dead_letters", dead_letter.clone(), dead_letter.id)
        .await;

    let call = calls::Model {
        id: id(),
        created_at: ts(93),
        updated_at: ts(94),
        config_id: config.id,
        chat_id: chat.id,
        customer_id: customer.id,
        call_id: format!("wacid.{HELLO}"),
        direction: Some("inbound".to_owned()),
        from: Some("16505551234".to_owned()),
        to: Some("15550100199".to_owned()),
        status: "completed".to_owned(),
        status_rank: 3,
        started_at: Some(ts(95)),
        ended_at: Some(ts(96)),
        duration: Some(120),
        errors: Some(json!([{"code": 12455}])),
    };
    roundtrip::<calls::Entity, _>(db, "calls", call.clone(), call.id).await;

    let group = groups::Model {
        id: id(),
        created_at: ts(95),
        updated_at: ts(96),
        config_id: config.id,
        customer_id: customer.id,
        wa_group_id: "120363025246125486@g.us".to_owned(),
        subject: Some(HELLO.to_owned()),
        description: Some(format!("multi\nline {HELLO}")),
        invite_link: Some("https://chat.whatsapp.com/ABC".to_owned()),
        join_approval_mode: Some("approval_required".to_owned()),
        status: groups::SUSPENDED.to_owned(),
        status_at: Some(ts(97)),
        subject_at: Some(ts(98)),
        description_at: Some(ts(99)),
        errors: Some(json!([{"setting": "group_description", "errors": [{"code": 100}]}])),
        errors_at: Some(ts(100)),
    };
    let group = roundtrip::<groups::Entity, _>(db, "groups", group.clone(), group.id).await;
    let member = group_participants::Model {
        id: id(),
        created_at: ts(97),
        updated_at: ts(98),
        config_id: config.id,
        group_id: group.id,
        customer_id: customer.id,
        wa_id: Some("16505551234".to_owned()),
        status: group_participants::REQUESTED.to_owned(),
        reason: Some("invite_link".to_owned()),
        changed_at: ts(99),
    };
    roundtrip::<group_participants::Entity, _>(db, "group_participants", member.clone(), member.id)
        .await;

    let previous = customer_previous_ids::Model {
        id: id(),
        created_at: ts(97),
        config_id: config.id,
        customer_id: customer.id,
        kind: customer_previous_ids::KIND_WA_ID.to_owned(),
        value: "16505550000".to_owned(),
        changed_at: ts(98),
        changed_by: Some(format!("wamid.{HELLO}")),
    };
    roundtrip::<customer_previous_ids::Entity, _>(
        db,
        "customer_previous_ids",
        previous.clone(),
        previous.id,
    )
    .await;

    // `seq` is given by the writer (wapipe_domain::events); any number
    // round-trips, including one past 2^32.
    let event = events::Model {
        seq: (1i64 << 40) + 7,
        r#type: "message.created".to_owned(),
        config_id: config.id,
        chat_id: Some(id()),
        payload: json!({"id": id(), "text": HELLO, "type": "text"}),
        occurred_at: ts(91),
    };
    roundtrip::<events::Entity, _>(db, "events", event.clone(), event.seq).await;

    let endpoint = webhook_endpoints::Model {
        id: id(),
        created_at: ts(92),
        updated_at: ts(93),
        config_id: Some(config.id),
        url: format!("https://example.com/{HELLO}"),
        description: Some(HELLO.to_owned()),
        event_types: json!(["message.created"]),
        secret_enc: "v1:AAAA".to_owned(),
        enabled: false,
        failing_since: Some(ts(94)),
        last_success_at: Some(ts(95)),
        disabled_at: Some(ts(96)),
        disabled_reason: Some(HELLO.to_owned()),
        is_deleted: true,
        deleted_at: Some(ts(97)),
    };
    roundtrip::<webhook_endpoints::Entity, _>(
        db,
        "webhook_endpoints",
        endpoint.clone(),
        endpoint.id,
    )
    .await;
    let delivery = webhook_deliveries::Model {
        id: id(),
        created_at: ts(98),
        updated_at: ts(99),
        endpoint_id: endpoint.id,
        event_seq: event.seq,
        event_type: event.r#type.clone(),
        config_id: config.id,
        status: "dead".to_owned(),
        attempts: 3,
        last_status_code: Some(503),
        last_latency_ms: Some(1234),
        last_error: Some(HELLO.to_owned()),
        delivered_at: Some(ts(100)),
        dispatched_at: Some(ts(101)),
    };
    roundtrip::<webhook_deliveries::Entity, _>(
        db,
        "webhook_deliveries",
        delivery.clone(),
        delivery.id,
    )
    .await;
    let attempt = webhook_delivery_attempts::Model {
        id: id(),
        created_at: ts(102),
        delivery_id: delivery.id,
        attempt: 3,
        succeeded: true,
        status_code: Some(200),
        latency_ms: 12,
        error: Some(HELLO.to_owned()),
    };
    roundtrip::<webhook_delivery_attempts::Entity, _>(
        db,
        "webhook_delivery_attempts",
        attempt.clone(),
        attempt.id,
    )
    .await;
    let cursor = webhook_dispatch::Model {
        name: "events".to_owned(),
        seq: (1i64 << 40) + 7,
        updated_at: ts(103),
    };
    roundtrip::<webhook_dispatch::Entity, _>(
        db,
        "webhook_dispatch",
        cursor.clone(),
        cursor.name.clone(),
    )
    .await;

    Rows {
        config,
        customer,
        message,
        status_event,
        webhook_event,
    }
}

// ------------------------------------------------------ unique constraints

/// `first` is a new row; `dup` collides with it on the unique key `cols`
/// (and on nothing else). Checks, in order:
/// - `first` inserted with `ON CONFLICT (cols) DO NOTHING` affects 1 row;
/// - a plain insert of `dup` fails with a unique violation naming the
///   constraint (`index` on PostgreSQL, `table.column` on SQLite);
/// - `dup` with `ON CONFLICT (cols) DO NOTHING` affects 0 rows;
/// - the table holds one more row than before, not two.
async fn assert_unique<E>(
    db: &DatabaseConnection,
    what: &str,
    index: &str,
    sqlite_cols: &str,
    cols: Vec<E::Column>,
    first: E::Model,
    dup: E::Model,
) where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
{
    let on_conflict = OnConflict::columns(cols).do_nothing().to_owned();
    let before = E::find().count(db).await.expect("count");

    let n = E::insert(first.into_active_model().reset_all())
        .on_conflict(on_conflict.clone())
        .exec_without_returning(db)
        .await
        .unwrap_or_else(|e| panic!("{what}: first insert: {e}"));
    assert_eq!(n, 1, "{what}: first insert with ON CONFLICT DO NOTHING");

    let err = insert::<E>(db, dup.clone())
        .await
        .expect_err(&format!("{what}: duplicate must be rejected"));
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(msg)) => assert!(
            msg.contains(index) || msg.contains(sqlite_cols),
            "{what}: wrong constraint fired: {msg}"
        ),
        other => panic!("{what}: expected a unique violation, got {other:?} ({err})"),
    }

    let n = E::insert(dup.into_active_model().reset_all())
        .on_conflict(on_conflict)
        .exec_without_returning(db)
        .await
        .unwrap_or_else(|e| panic!("{what}: duplicate with ON CONFLICT DO NOTHING: {e}"));
    assert_eq!(n, 0, "{what}: duplicate with ON CONFLICT DO NOTHING");

    let after = E::find().count(db).await.expect("count");
    assert_eq!(after, before + 1, "{what}: rows added");
}

async fn unique_constraints(db: &DatabaseConnection, rows: &Rows) {
    // whatsapp_configs.phone_number_id: routes every webhook to one config.
    let first = whatsapp_configs::Model {
        id: id(),
        phone_number_id: "200000000000001".to_owned(),
        ..rows.config.clone()
    };
    let dup = whatsapp_configs::Model {
        id: id(),
        waba_id: "other-waba".to_owned(),
        ..first.clone()
    };
    assert_unique::<whatsapp_configs::Entity>(
        db,
        "whatsapp_configs.phone_number_id",
        "ux_configs_phone_number_id",
        "whatsapp_configs.phone_number_id",
        vec![whatsapp_configs::Column::PhoneNumberId],
        first,
        dup,
    )
    .await;

    // customers (config_id, wa_id). `user_id` is unique too, so the
    // duplicate carries none, to be sure which constraint fires.
    let first = customers::Model {
        id: id(),
        wa_id: Some("16505550001".to_owned()),
        user_id: None,
        wa_group_id: None,
        ..rows.customer.clone()
    };
    let dup = customers::Model {
        id: id(),
        name: Some("someone else".to_owned()),
        ..first.clone()
    };
    assert_unique::<customers::Entity>(
        db,
        "customers (config_id, wa_id)",
        "ux_customers_wa_id",
        "customers.config_id, customers.wa_id",
        vec![customers::Column::ConfigId, customers::Column::WaId],
        first,
        dup,
    )
    .await;

    // customers (config_id, wa_group_id): a group is one party per config.
    let first = customers::Model {
        id: id(),
        wa_id: None,
        user_id: None,
        wa_group_id: Some("120363000000000001@g.us".to_owned()),
        ..rows.customer.clone()
    };
    let dup = customers::Model {
        id: id(),
        name: Some("another group".to_owned()),
        ..first.clone()
    };
    assert_unique::<customers::Entity>(
        db,
        "customers (config_id, wa_group_id)",
        "ux_customers_wa_group",
        "customers.config_id, customers.wa_group_id",
        vec![customers::Column::ConfigId, customers::Column::WaGroupId],
        first,
        dup,
    )
    .await;

    // messages (config_id, provider_message_id): a wamid lives once per config.
    let first = messages::Model {
        id: id(),
        provider_message_id: Some("wamid.UNIQUE_TEST_1".to_owned()),
        answers_message_id: None,
        answer_seq: None,
        ..rows.message.clone()
    };
    let dup = messages::Model {
        id: id(),
        direction: Direction::Inbound,
        origin: Origin::User,
        status: MessageStatus::Read,
        ..first.clone()
    };
    assert_unique::<messages::Entity>(
        db,
        "messages (config_id, provider_message_id)",
        "ux_messages_wamid",
        "messages.config_id, messages.provider_message_id",
        vec![
            messages::Column::ConfigId,
            messages::Column::ProviderMessageId,
        ],
        first,
        dup,
    )
    .await;

    // messages (answers_message_id, answer_seq): a bot reply is queued
    // once per inbound message and place.
    let answers = Uuid::now_v7();
    let first = messages::Model {
        id: id(),
        provider_message_id: None,
        answers_message_id: Some(answers),
        answer_seq: Some(0),
        ..rows.message.clone()
    };
    let dup = messages::Model {
        id: id(),
        text: Some("another text".to_owned()),
        ..first.clone()
    };
    assert_unique::<messages::Entity>(
        db,
        "messages (answers_message_id, answer_seq)",
        "ux_messages_answer",
        "messages.answers_message_id, messages.answer_seq",
        vec![
            messages::Column::AnswersMessageId,
            messages::Column::AnswerSeq,
        ],
        first,
        dup,
    )
    .await;

    // message_status_events (config_id, provider_message_id, status, timestamp).
    let first = message_status_events::Model {
        id: id(),
        status: "delivered".to_owned(),
        ..rows.status_event.clone()
    };
    let dup = message_status_events::Model {
        id: id(),
        applied: false,
        raw: Some(json!({"redelivered": true})),
        ..first.clone()
    };
    assert_unique::<message_status_events::Entity>(
        db,
        "message_status_events (config_id, provider_message_id, status, timestamp)",
        "ux_status_events_receipt",
        "message_status_events.config_id, message_status_events.provider_message_id, \
         message_status_events.status, message_status_events.timestamp",
        vec![
            message_status_events::Column::ConfigId,
            message_status_events::Column::ProviderMessageId,
            message_status_events::Column::Status,
            message_status_events::Column::Timestamp,
        ],
        first,
        dup,
    )
    .await;

    // webhook_events.body_sha256: Meta's redelivery of the same body is a no-op.
    let first = webhook_events::Model {
        id: id(),
        body_sha256: "0".repeat(64),
        ..rows.webhook_event.clone()
    };
    let dup = webhook_events::Model {
        id: id(),
        status: EventStatus::Received,
        received_at: ts(1000),
        ..first.clone()
    };
    assert_unique::<webhook_events::Entity>(
        db,
        "webhook_events.body_sha256",
        "ux_webhook_events_sha256",
        "webhook_events.body_sha256",
        vec![webhook_events::Column::BodySha256],
        first,
        dup,
    )
    .await;

    // webhook_deliveries (endpoint_id, event_seq): a replayed dispatch
    // never delivers an event twice to one endpoint.
    let first = webhook_deliveries::Entity::find()
        .one(db)
        .await
        .expect("read")
        .expect("the delivery of the round trip");
    let first = webhook_deliveries::Model {
        id: id(),
        event_seq: first.event_seq + 1,
        ..first
    };
    let dup = webhook_deliveries::Model {
        id: id(),
        status: "pending".to_owned(),
        ..first.clone()
    };
    assert_unique::<webhook_deliveries::Entity>(
        db,
        "webhook_deliveries (endpoint_id, event_seq)",
        "ux_webhook_deliveries_endpoint_event",
        "webhook_deliveries.endpoint_id, webhook_deliveries.event_seq",
        vec![
            webhook_deliveries::Column::EndpointId,
            webhook_deliveries::Column::EventSeq,
        ],
        first,
        dup,
    )
    .await;
}
