//! Follow-up reminders across a crash: `wapipe workers --roles followup`
//! is killed with SIGKILL in the middle of a batch of reminders, then a new
//! process starts on the same database and broker. Every follow-up ends up
//! reminded, each by exactly one message. In production mode (PostgreSQL +
//! RabbitMQ) and embedded mode (SQLite + the in-process queue, whose jobs
//! die with the process).
//!
//! The follow-ups fell due before any process ran, so this is also the
//! "reminded at start" case.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
};
use uuid::Uuid;
use wapipe_shared::config::Settings;
use wapipe_shared::entities::{agents, chats, customers, follow_ups, messages};
use wapipe_testkit::app::*;

const FOLLOW_UPS: usize = 3000;

/// Kills the child when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn workers(settings: &Settings) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wapipe"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &settings.database_url)
        .env("WAPIPE_SECRET_KEY", KEY)
        .env("WAPIPE_SECRET_KEY_FILE", &settings.secret_key_file)
        .env("WAPIPE_QUEUE_PREFIX", &settings.queue_prefix)
        .env("WAPIPE_LANES", settings.lanes.to_string())
        .env(
            "WAPIPE_METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        // A lost claim comes back within seconds, not minutes.
        .env("WAPIPE_FOLLOWUP_LEASE_S", "3")
        .env("RUST_LOG", "warn")
        .args(["workers", "--roles", "followup"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(a) = &settings.amqp_url {
        cmd.env("AMQP_URL", a);
    }
    Proc(cmd.spawn().expect("spawn wapipe workers"))
}

/// Agents with phone numbers, a chat, and `FOLLOW_UPS` follow-ups that
/// fell due a minute ago.
async fn seed(db: &DatabaseConnection, config_id: Uuid) -> HashSet<Uuid> {
    let now = wapipe_domain::clock::now();
    let customer = Uuid::now_v7();
    customers::Entity::insert(customers::ActiveModel {
        id: Set(customer),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        wa_id: Set(Some("4915112345678".into())),
        name: Set(Some("Zoë".into())),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    let chat = Uuid::now_v7();
    chats::Entity::insert(chats::ActiveModel {
        id: Set(chat),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        customer_id: Set(customer),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    let agent_ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    agents::Entity::insert_many(
        agent_ids
            .iter()
            .enumerate()
            .map(|(i, id)| agents::ActiveModel {
                id: Set(*id),
                created_at: Set(now),
                updated_at: Set(now),
                config_id: Set(Some(config_id)),
                name: Set(format!("Agent {i}")),
                email: Set(format!("a{i}@acme.example")),
                phone_number: Set(Some(format!("+3361234{i:04}"))),
                ..Default::default()
            }),
    )
    .exec_without_returning(db)
    .await
    .unwrap();
    let ids: Vec<Uuid> = (0..FOLLOW_UPS).map(|_| Uuid::now_v7()).collect();
    let rows: Vec<follow_ups::ActiveModel> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| follow_ups::ActiveModel {
            id: Set(*id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(config_id),
            chat_id: Set(chat),
            customer_id: Set(Some(customer)),
            agent_id: Set(Some(agent_ids[i % agent_ids.len()])),
            title: Set(Some(format!("Call back {i}"))),
            scheduled_at: Set(now - chrono::Duration::minutes(1)),
            status: Set("pending".into()),
            priority: Set("medium".into()),
            ..Default::default()
        })
        .collect();
    for chunk in rows.chunks(250) {
        follow_ups::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(db)
            .await
            .unwrap();
    }
    ids.into_iter().collect()
}

async fn reminded(db: &DatabaseConnection) -> u64 {
    follow_ups::Entity::find()
        .filter(follow_ups::Column::ReminderSent.eq(true))
        .count(db)
        .await
        .unwrap()
}

async fn kill_mid_batch_then_restart(mode: Mode) {
    let (settings, _dir) = settings_for(mode).await;
    let (db, config_id) = prepare_db(&settings).await;
    let ids = seed(&db, config_id).await;

    let mut first = workers(&settings);
    let start = Instant::now();
    let at_kill = loop {
        let n = reminded(&db).await;
        if n > 0 {
            break n;
        }
        if let Ok(Some(status)) = first.0.try_wait() {
            panic!("wapipe workers exited with {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no reminder within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.0.kill().unwrap(); // SIGKILL: no graceful anything.
    let _ = first.0.wait();
    let after_kill = reminded(&db).await;
    assert!(
        after_kill < FOLLOW_UPS as u64,
        "killed mid-batch ({at_kill} reminded when seen, {after_kill} after the kill)"
    );

    let _second = workers(&settings);
    let start = Instant::now();
    loop {
        let n = reminded(&db).await;
        if n == FOLLOW_UPS as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {n} of {FOLLOW_UPS} reminded after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // None lost, none doubled: one message per follow-up, the one the
    // follow-up points to.
    let sent = messages::Entity::find()
        .filter(messages::Column::AnswersMessageId.is_not_null())
        .all(&db)
        .await
        .unwrap();
    assert_eq!(sent.len(), FOLLOW_UPS, "one reminder message each");
    let by_follow_up: std::collections::HashMap<Uuid, Uuid> = sent
        .iter()
        .filter_map(|m| m.answers_message_id.map(|f| (f, m.id)))
        .collect();
    assert_eq!(by_follow_up.keys().copied().collect::<HashSet<_>>(), ids);
    for row in follow_ups::Entity::find().all(&db).await.unwrap() {
        assert!(row.reminder_sent);
        assert_eq!(row.reminder_channel.as_deref(), Some("whatsapp"));
        assert_eq!(
            row.reminder_message_id,
            by_follow_up.get(&row.id).copied(),
            "the follow-up names its one message"
        );
    }
    drop(_second);
    if let Some(b) = settings
        .amqp_url
        .as_ref()
        .and_then(|_| wapipe_shared::broker::AmqpBroker::new(&settings.broker_settings()).ok())
    {
        let _ = b.delete_topology().await;
        let _ = b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_batch_then_restart_production() {
    kill_mid_batch_then_restart(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_batch_then_restart_embedded() {
    kill_mid_batch_then_restart(Mode::Embedded).await;
}
