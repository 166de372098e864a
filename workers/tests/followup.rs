//! The follow-up worker and its scheduler against a real database
//! (PostgreSQL and SQLite, a fresh one per test) and the embedded broker:
//! the reminder by template or by free text, the event-only reminder,
//! closed follow-ups, a reminder run many times at once, and two
//! schedulers with their workers racing over the same 1,000 due
//! follow-ups: exactly one reminder each.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe_domain::agents::{self, NewAgent};
use wapipe_domain::clock;
use wapipe_domain::followups::{self, CHANNEL_EVENT, CHANNEL_WHATSAPP};
use wapipe_shared::broker::{Broker, BrokerSettings, Delivery, EmbeddedBroker};
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::{chats, customers, follow_ups, messages};
use wapipe_shared::jobs::{FollowupDue, Job, OutboundSend, OutboundWork, Queue, RealtimeEvent};
use wapipe_shared::retry::RetryPolicy;
use wapipe_shared::tenants::{self, NewConfig};
use wapipe_testkit::both_backends;
use wapipe_testkit::db::{Backend, TempDir, TestDb, migrated};
use wapipe_workers::Deps;
use wapipe_workers::followup::{self, FollowupSettings, FollowupWorker, Outcome};
use wapipe_workers::runtime::{self, typed};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const AGENT_PHONE: &str = "+33 6 12 34 56 78";
const AGENT_WA_ID: &str = "33612345678";

struct Env {
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    config_id: Uuid,
    chat_id: Uuid,
    settings: FollowupSettings,
    _dir: Option<TempDir>,
}

fn embedded(db: &DatabaseConnection) -> EmbeddedBroker {
    EmbeddedBroker::new(
        &BrokerSettings {
            amqp_url: None,
            prefix: "t".into(),
            lanes: 4,
            prefetch: 32,
        },
        db.clone(),
    )
}

async fn env(backend: Backend) -> Env {
    let TestDb { db, dir, .. } = migrated(backend, 8).await;
    let key = SecretKey::from_base64(KEY).expect("key");
    let config_id = tenants::add(
        &db,
        &key,
        NewConfig {
            company: "Acme".into(),
            name: None,
            phone_number_id: "15550000001".into(),
            waba_id: "15550009999".into(),
            display_phone_number: None,
            app_secret: "s".into(),
            verify_token: "v".into(),
            access_token: "t".into(),
            webhook_secret: None,
            max_mps: 80,
        },
    )
    .await
    .expect("config")
    .id;
    let now = clock::now();
    let customer = Uuid::now_v7();
    customers::Entity::insert(customers::ActiveModel {
        id: Set(customer),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        wa_id: Set(Some("4915112345678".into())),
        phone_number: Set(Some("4915112345678".into())),
        name: Set(Some("Zoë Martin".into())),
        ..Default::default()
    })
    .exec_without_returning(&db)
    .await
    .expect("customer");
    let chat_id = Uuid::now_v7();
    chats::Entity::insert(chats::ActiveModel {
        id: Set(chat_id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        customer_id: Set(customer),
        ..Default::default()
    })
    .exec_without_returning(&db)
    .await
    .expect("chat");
    Env {
        broker: Arc::new(embedded(&db)),
        db,
        config_id,
        chat_id,
        settings: FollowupSettings {
            template: "agent_reminder".into(),
            template_language: "fr".into(),
            tick: Duration::from_millis(100),
            ..FollowupSettings::default()
        },
        _dir: dir,
    }
}

impl Env {
    async fn agent(&self, phone: Option<&str>) -> Uuid {
        agents::create(
            &self.db,
            NewAgent {
                name: "Ana".into(),
                email: "ana@acme.example".into(),
                phone_number: phone.map(str::to_owned),
                company: None,
            },
        )
        .await
        .expect("agent")
        .id
    }

    /// `n` follow-ups for `agent`, due a second ago.
    async fn due(&self, agent: Uuid, n: usize) -> Vec<Uuid> {
        let now = clock::now();
        let customer = chats::Entity::find_by_id(self.chat_id)
            .one(&self.db)
            .await
            .expect("chat")
            .expect("chat")
            .customer_id;
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let rows: Vec<follow_ups::ActiveModel> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| follow_ups::ActiveModel {
                id: Set(*id),
                created_at: Set(now),
                updated_at: Set(now),
                config_id: Set(self.config_id),
                chat_id: Set(self.chat_id),
                customer_id: Set(Some(customer)),
                agent_id: Set(Some(agent)),
                title: Set(Some(format!("Rappeler {i}"))),
                notes: Set(Some("about the order".into())),
                scheduled_at: Set(now - chrono::Duration::seconds(1)),
                status: Set("pending".into()),
                priority: Set("high".into()),
                ..Default::default()
            })
            .collect();
        for chunk in rows.chunks(250) {
            follow_ups::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&self.db)
                .await
                .expect("insert");
        }
        ids
    }

    async fn row(&self, id: Uuid) -> follow_ups::Model {
        followups::get(&self.db, id).await.expect("follow-up")
    }

    /// The reminders queued in `messages` for follow-up `id`.
    /// Reminds `id` and expects the reminder to go out as an event only,
    /// with no WhatsApp message queued.
    async fn reminded_by_event_only(&self, id: Uuid) {
        assert_eq!(
            followup::remind(&self.db, self.broker.as_ref(), &self.settings, id)
                .await
                .expect("remind"),
            Outcome::Reminded {
                channel: CHANNEL_EVENT
            }
        );
        assert!(self.reminders(id).await.is_empty(), "no WhatsApp message");
    }

    async fn reminders(&self, id: Uuid) -> Vec<messages::Model> {
        messages::Entity::find()
            .filter(messages::Column::AnswersMessageId.eq(id))
            .all(&self.db)
            .await
            .expect("messages")
    }

    fn deps(&self, broker: Arc<dyn Broker>) -> Deps {
        Deps::new(
            self.db.clone(),
            broker,
            wapipe_shared::config::Settings::from_defaults().expect("settings"),
            Arc::new(SecretKey::from_base64(KEY).expect("key")),
        )
    }

    /// The next job of `queue` on the embedded broker, if one comes soon.
    async fn next_job(&self, queue: Queue) -> Option<Delivery> {
        let lanes = self.broker.consume(queue).await.expect("consume");
        let mut futs: Vec<_> = lanes
            .into_iter()
            .map(|mut l| Box::pin(async move { l.next().await }))
            .collect();
        let any = futures::future::select_all(futs.drain(..));
        match tokio::time::timeout(Duration::from_millis(500), any).await {
            Ok((Some(Ok(d)), _, _)) => Some(d),
            _ => None,
        }
    }
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_attempts: 1000,
    }
}

/// The scheduler claims the due follow-up and publishes one job; the
/// worker queues the template reminder, publishes its send and the
/// real-time event, and records it. Running the job again changes nothing.
async fn template_reminder_once(backend: Backend) {
    let e = env(backend).await;
    let agent = e.agent(Some(AGENT_PHONE)).await;
    let id = e.due(agent, 1).await[0];
    let mut realtime = e.broker.subscribe_realtime().await.expect("subscribe");

    let stats = followup::pass(&e.db, e.broker.as_ref(), &e.settings, clock::now())
        .await
        .expect("pass");
    assert_eq!((stats.claimed, stats.published), (1, 1));
    let job = e
        .next_job(Queue::Followup)
        .await
        .expect("a followup.due job");
    let due = FollowupDue::decode(&job.body).expect("decode");
    assert_eq!(due.follow_up_id, id);
    assert_eq!(due.config_id, e.config_id);
    job.ack().await.expect("ack");
    assert!(
        followup::pass(&e.db, e.broker.as_ref(), &e.settings, clock::now())
            .await
            .expect("pass")
            .claimed
            == 0,
        "claimed once"
    );

    let outcome = followup::remind(&e.db, e.broker.as_ref(), &e.settings, id)
        .await
        .expect("remind");
    assert_eq!(
        outcome,
        Outcome::Reminded {
            channel: CHANNEL_WHATSAPP
        }
    );
    let sent = e.reminders(id).await;
    assert_eq!(sent.len(), 1);
    let m = &sent[0];
    assert_eq!(m.r#type, "template");
    let body = m.payload.clone().expect("Meta's request body");
    assert_eq!(body["to"], AGENT_WA_ID);
    assert_eq!(body["template"]["name"], "agent_reminder");
    assert_eq!(body["template"]["language"]["code"], "fr");
    let params: Vec<&str> = body["template"]["components"][0]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(params, vec!["Rappeler 0", "Zoë Martin"]);

    let row = e.row(id).await;
    assert!(row.reminder_sent);
    assert!(row.reminder_sent_at.is_some());
    assert_eq!(row.reminder_channel.as_deref(), Some(CHANNEL_WHATSAPP));
    assert_eq!(row.reminder_message_id, Some(m.id));
    assert_eq!(row.status, "pending", "a reminder does not close it");

    let send = e.next_job(Queue::Outbound).await.expect("outbound.send");
    let send = OutboundSend::decode(&send.body).expect("decode");
    assert_eq!(send.work, OutboundWork::Send { message_id: m.id });
    let events: Vec<RealtimeEvent> =
        serde_json::from_slice(&realtime.recv().await.expect("event")).expect("events");
    assert_eq!(events[0].event, "followup.reminder");
    assert_eq!(events[0].chat_id, Some(e.chat_id));
    assert_eq!(events[0].data["followUpId"], Value::from(id.to_string()));
    assert_eq!(events[0].data["channel"], "whatsapp");

    assert_eq!(
        followup::remind(&e.db, e.broker.as_ref(), &e.settings, id)
            .await
            .expect("again"),
        Outcome::Skipped("already reminded")
    );
    assert_eq!(e.reminders(id).await.len(), 1);
}
both_backends!(
    template_reminder_once,
    flavor = "multi_thread",
    worker_threads = 4
);

/// The agent wrote to the number within 24 hours: free text, not a template.
async fn free_text_when_the_agent_window_is_open(backend: Backend) {
    let e = env(backend).await;
    let agent = e.agent(Some(AGENT_PHONE)).await;
    let now = clock::now();
    customers::Entity::insert(customers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(e.config_id),
        wa_id: Set(Some(AGENT_WA_ID.into())),
        last_inbound_at: Set(Some(now - chrono::Duration::hours(3))),
        ..Default::default()
    })
    .exec_without_returning(&e.db)
    .await
    .expect("the agent as a customer of the number");
    let id = e.due(agent, 1).await[0];
    followup::remind(&e.db, e.broker.as_ref(), &e.settings, id)
        .await
        .expect("remind");
    let sent = e.reminders(id).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].r#type, "text");
    let text = sent[0].text.clone().unwrap_or_default();
    assert!(
        text.contains("Rappeler 0")
            && text.contains("Zoë Martin")
            && text.contains("about the order"),
        "{text}"
    );
}
both_backends!(
    free_text_when_the_agent_window_is_open,
    flavor = "multi_thread",
    worker_threads = 4
);

/// No phone number: the real-time event only, and the follow-up says so.
async fn agent_without_phone_gets_the_event_only(backend: Backend) {
    let e = env(backend).await;
    let agent = e.agent(None).await;
    let id = e.due(agent, 1).await[0];
    let mut realtime = e.broker.subscribe_realtime().await.expect("subscribe");
    e.reminded_by_event_only(id).await;
    assert_eq!(
        messages::Entity::find().count(&e.db).await.expect("count"),
        0
    );
    let row = e.row(id).await;
    assert!(row.reminder_sent);
    assert_eq!(row.reminder_channel.as_deref(), Some(CHANNEL_EVENT));
    assert_eq!(
        row.reminder_note.as_deref(),
        Some("agent has no phone number: event only")
    );
    let events: Vec<RealtimeEvent> =
        serde_json::from_slice(&realtime.recv().await.expect("event")).expect("events");
    assert_eq!(events[0].event, "followup.reminder");
    assert_eq!(events[0].data["channel"], "event");
    assert_eq!(
        events[0].data["note"],
        "agent has no phone number: event only"
    );
}
both_backends!(
    agent_without_phone_gets_the_event_only,
    flavor = "multi_thread",
    worker_threads = 4
);

/// The reminder template is MARKETING and the agent's number stopped
/// marketing messages: the outbox refuses it (131050), as for any sender,
/// and the reminder falls back to the event only, saying why.
async fn a_marketing_reminder_to_an_opted_out_number_is_event_only(backend: Backend) {
    use sea_orm::sea_query::Expr;
    use wapipe_shared::entities::templates;
    let e = env(backend).await;
    let tpl = wapipe_testkit::db::add_template(
        &e.db,
        e.config_id,
        &e.settings.template,
        &e.settings.template_language,
        "{{1}} {{2}}",
        "APPROVED",
    )
    .await;
    templates::Entity::update_many()
        .col_expr(templates::Column::Category, Expr::value("MARKETING"))
        .filter(templates::Column::Id.eq(tpl))
        .exec(&e.db)
        .await
        .expect("marketing");
    let now = clock::now();
    customers::Entity::insert(customers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(e.config_id),
        wa_id: Set(Some(AGENT_WA_ID.into())),
        marketing_opted_out: Set(true),
        ..Default::default()
    })
    .exec_without_returning(&e.db)
    .await
    .expect("opted-out number");
    let agent = e.agent(Some(AGENT_PHONE)).await;
    let id = e.due(agent, 1).await[0];
    e.reminded_by_event_only(id).await;
    let note = e.row(id).await.reminder_note.expect("note");
    assert!(note.contains("stopped marketing messages"), "{note}");
}
both_backends!(
    a_marketing_reminder_to_an_opted_out_number_is_event_only,
    flavor = "multi_thread",
    worker_threads = 4
);

/// Completed and cancelled follow-ups are never claimed, and one closed
/// after its claim is not reminded when its job runs.
async fn closed_follow_ups_never_remind(backend: Backend) {
    let e = env(backend).await;
    let agent = e.agent(Some(AGENT_PHONE)).await;
    let ids = e.due(agent, 3).await;
    followups::complete(&e.db, ids[0], None)
        .await
        .expect("complete");
    followups::cancel(&e.db, ids[1]).await.expect("cancel");
    let stats = followup::pass(&e.db, e.broker.as_ref(), &e.settings, clock::now())
        .await
        .expect("pass");
    assert_eq!(stats.claimed, 1, "only the open one");
    followups::cancel(&e.db, ids[2])
        .await
        .expect("cancel after the claim");
    for id in &ids {
        assert_eq!(
            followup::remind(&e.db, e.broker.as_ref(), &e.settings, *id)
                .await
                .expect("remind"),
            Outcome::Skipped("closed")
        );
        assert!(!e.row(*id).await.reminder_sent);
    }
    assert_eq!(
        messages::Entity::find().count(&e.db).await.expect("count"),
        0
    );
}
both_backends!(
    closed_follow_ups_never_remind,
    flavor = "multi_thread",
    worker_threads = 4
);

/// The same job run by several workers at once (a redelivery racing the
/// original): one message, one recorded reminder.
async fn concurrent_runs_remind_once(backend: Backend) {
    let e = Arc::new(env(backend).await);
    let agent = e.agent(Some(AGENT_PHONE)).await;
    let id = e.due(agent, 1).await[0];
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            // SQLite's one writer may answer "busy"; the runtime retries.
            for _ in 0..100 {
                match followup::remind(&e.db, e.broker.as_ref(), &e.settings, id).await {
                    Ok(o) => return o,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            panic!("remind kept failing");
        }));
    }
    let mut reminded = 0;
    for t in tasks {
        if matches!(t.await.expect("task"), Outcome::Reminded { .. }) {
            reminded += 1;
        }
    }
    assert_eq!(reminded, 1, "recorded once");
    assert_eq!(e.reminders(id).await.len(), 1, "queued once");
}
both_backends!(
    concurrent_runs_remind_once,
    flavor = "multi_thread",
    worker_threads = 4
);

/// An agent named `name` (the email follows) with phone `phone`.
async fn named_agent(e: &Env, name: &str, phone: Option<&str>) -> Uuid {
    agents::create(
        &e.db,
        NewAgent {
            name: name.into(),
            email: format!("{}@acme.example", name.to_lowercase()),
            phone_number: phone.map(str::to_owned),
            company: None,
        },
    )
    .await
    .expect("agent")
    .id
}

/// One batch mixing every case: two WhatsApp reminders to one agent (a
/// template each), one to an agent whose window is open (free text), one
/// event-only, one already reminded, one closed, one gone. Each gets its
/// own outcome; the WhatsApp ones are one message each, their sends
/// published, the chats counted once; one real-time publish carries the
/// four events. A run that died after queueing (reminder not recorded)
/// is finished by the next run with the same message, counted once.
async fn a_batch_reminds_each_follow_up_by_its_own_rules(backend: Backend) {
    let e = env(backend).await;
    let ana = named_agent(&e, "Ana", Some(AGENT_PHONE)).await;
    let bo = named_agent(&e, "Bo", Some("+33 6 00 00 00 02")).await;
    let cy = named_agent(&e, "Cy", None).await;
    let now = clock::now();
    customers::Entity::insert(customers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(e.config_id),
        wa_id: Set(Some("33600000002".into())),
        last_inbound_at: Set(Some(now - chrono::Duration::hours(3))),
        ..Default::default()
    })
    .exec_without_returning(&e.db)
    .await
    .expect("Bo as a customer of the number");
    let ana_ids = e.due(ana, 2).await;
    let bo_id = e.due(bo, 1).await[0];
    let cy_id = e.due(cy, 1).await[0];
    let done = e.due(ana, 1).await[0];
    followup::remind(&e.db, e.broker.as_ref(), &e.settings, done)
        .await
        .expect("reminded before");
    let closed = e.due(ana, 1).await[0];
    followups::cancel(&e.db, closed).await.expect("cancel");
    let gone = Uuid::now_v7();
    let before = messages::Entity::find().count(&e.db).await.expect("count");
    assert_eq!(before, 1);
    let mut realtime = e.broker.subscribe_realtime().await.expect("subscribe");

    let ids = [ana_ids[0], bo_id, done, cy_id, closed, gone, ana_ids[1]];
    let outcomes = followup::remind_all(&e.db, e.broker.as_ref(), &e.settings, &ids)
        .await
        .expect("remind the batch");
    let whatsapp = Outcome::Reminded {
        channel: CHANNEL_WHATSAPP,
    };
    assert_eq!(
        outcomes,
        vec![
            whatsapp.clone(),
            whatsapp.clone(),
            Outcome::Skipped("already reminded"),
            Outcome::Reminded {
                channel: CHANNEL_EVENT
            },
            Outcome::Skipped("closed"),
            Outcome::Skipped("gone"),
            whatsapp.clone(),
        ]
    );

    let mut sent_ids = Vec::new();
    for (id, kind, to) in [
        (ana_ids[0], "template", AGENT_WA_ID),
        (ana_ids[1], "template", AGENT_WA_ID),
        (bo_id, "text", "33600000002"),
    ] {
        let sent = e.reminders(id).await;
        assert_eq!(sent.len(), 1, "one message for {id}");
        assert_eq!(sent[0].r#type, kind);
        let body = sent[0].payload.clone().expect("body");
        assert_eq!(body["to"], to);
        let row = e.row(id).await;
        assert!(row.reminder_sent);
        assert_eq!(row.reminder_channel.as_deref(), Some(CHANNEL_WHATSAPP));
        assert_eq!(row.reminder_message_id, Some(sent[0].id));
        sent_ids.push(sent[0].id);
    }
    let bo_text = e.reminders(bo_id).await[0].text.clone().unwrap_or_default();
    assert!(bo_text.contains("Zoë Martin"), "{bo_text}");
    let cy_row = e.row(cy_id).await;
    assert!(cy_row.reminder_sent);
    assert_eq!(cy_row.reminder_channel.as_deref(), Some(CHANNEL_EVENT));
    assert_eq!(
        cy_row.reminder_note.as_deref(),
        Some("agent has no phone number: event only")
    );
    assert!(e.reminders(cy_id).await.is_empty());
    assert!(!e.row(closed).await.reminder_sent);
    assert_eq!(
        messages::Entity::find().count(&e.db).await.expect("count"),
        before + 3
    );

    // Ana's chat (her number as a customer of ours) counts her two
    // reminders and shows the later one.
    let ana_chat = chats::Entity::find_by_id(e.reminders(ana_ids[1]).await[0].chat_id)
        .one(&e.db)
        .await
        .expect("chat")
        .expect("Ana's chat");
    assert_eq!(
        ana_chat.total_messages, 3,
        "the earlier reminder and these two"
    );
    assert_eq!(ana_chat.last_message_id, Some(sent_ids[1]));

    let events: Vec<RealtimeEvent> =
        serde_json::from_slice(&realtime.recv().await.expect("event")).expect("events");
    let reminded: Vec<&Value> = events.iter().map(|ev| &ev.data["followUpId"]).collect();
    assert_eq!(
        reminded,
        [ana_ids[0], bo_id, cy_id, ana_ids[1]]
            .iter()
            .map(|id| Value::from(id.to_string()))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>(),
        "one publish with the batch's four events"
    );
    let mut sends = HashSet::new();
    while let Some(job) = e.next_job(Queue::Outbound).await {
        if let OutboundWork::Send { message_id } =
            OutboundSend::decode(&job.body).expect("decode").work
        {
            sends.insert(message_id);
        }
        job.ack().await.expect("ack");
    }
    for id in &sent_ids {
        assert!(sends.contains(id), "send of {id} published");
    }

    // A run that died after queueing: the next one records the same
    // message and queues nothing.
    follow_ups::Entity::update_many()
        .col_expr(
            follow_ups::Column::ReminderSent,
            sea_orm::sea_query::Expr::value(false),
        )
        .filter(follow_ups::Column::Id.eq(ana_ids[0]))
        .exec(&e.db)
        .await
        .expect("forget the record");
    let again = followup::remind_all(&e.db, e.broker.as_ref(), &e.settings, &ids)
        .await
        .expect("again");
    assert_eq!(again[0], whatsapp);
    assert!(
        again[1..].iter().all(|o| matches!(o, Outcome::Skipped(_))),
        "{again:?}"
    );
    assert_eq!(e.reminders(ana_ids[0]).await.len(), 1);
    assert_eq!(
        e.row(ana_ids[0]).await.reminder_message_id,
        Some(sent_ids[0])
    );
    assert_eq!(
        messages::Entity::find().count(&e.db).await.expect("count"),
        before + 3
    );
    let ana_chat = chats::Entity::find_by_id(ana_chat.id)
        .one(&e.db)
        .await
        .expect("chat")
        .expect("Ana's chat");
    assert_eq!(ana_chat.total_messages, 3, "nothing counted twice");
}
both_backends!(
    a_batch_reminds_each_follow_up_by_its_own_rules,
    flavor = "multi_thread",
    worker_threads = 4
);

/// The same batch run by several workers at once (redeliveries racing the
/// original), over many agents: one message and one recorded reminder
/// per follow-up.
async fn concurrent_batches_remind_once(backend: Backend) {
    let e = Arc::new(env(backend).await);
    let mut ids = Vec::new();
    for i in 0..8 {
        let agent = named_agent(&e, &format!("Agent{i}"), Some(&format!("+3361000000{i}"))).await;
        ids.extend(e.due(agent, 3).await);
    }
    let mut tasks = Vec::new();
    for n in 0..4 {
        let (e, mut ids) = (e.clone(), ids.clone());
        // Each run sees the batch in its own order.
        ids.rotate_left(n * 5);
        tasks.push(tokio::spawn(async move {
            // SQLite's one writer may answer "busy"; the runtime retries.
            for _ in 0..100 {
                match followup::remind_all(&e.db, e.broker.as_ref(), &e.settings, &ids).await {
                    Ok(o) => return o,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            panic!("remind kept failing");
        }));
    }
    let mut reminded = 0;
    for t in tasks {
        reminded += t
            .await
            .expect("task")
            .iter()
            .filter(|o| matches!(o, Outcome::Reminded { .. }))
            .count();
    }
    assert_eq!(reminded, ids.len(), "each recorded once");
    for id in &ids {
        assert_eq!(e.reminders(*id).await.len(), 1, "queued once");
        assert!(e.row(*id).await.reminder_sent);
    }
    assert_eq!(
        messages::Entity::find().count(&e.db).await.expect("count"),
        ids.len() as u64
    );
}
both_backends!(
    concurrent_batches_remind_once,
    flavor = "multi_thread",
    worker_threads = 4
);

/// Two schedulers, each with its own broker and worker (two processes in
/// all but the database), race over the same 1,000 due follow-ups:
/// every follow-up is claimed once and reminded by exactly one message.
async fn two_schedulers_race(backend: Backend) {
    let e = env(backend).await;
    let agent = e.agent(Some(AGENT_PHONE)).await;
    let ids: HashSet<Uuid> = e.due(agent, 1000).await.into_iter().collect();
    let token = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let broker: Arc<dyn Broker> = Arc::new(embedded(&e.db));
        let deps = e.deps(broker.clone());
        let worker = typed(FollowupWorker::new(deps, e.settings.clone()));
        tasks.push(tokio::spawn(wapipe_workers::followup::scheduler::run(
            e.db.clone(),
            broker.clone(),
            e.settings.clone(),
            token.clone(),
        )));
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            let _ = runtime::run(broker, worker, fast_policy(), t).await;
        }));
    }
    let start = Instant::now();
    loop {
        let done = follow_ups::Entity::find()
            .filter(follow_ups::Column::ReminderSent.eq(true))
            .count(&e.db)
            .await
            .expect("count");
        if done == 1000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {done} of 1000 reminded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let sent = messages::Entity::find()
        .filter(messages::Column::AnswersMessageId.is_not_null())
        .all(&e.db)
        .await
        .expect("messages");
    let answered: HashSet<Uuid> = sent.iter().filter_map(|m| m.answers_message_id).collect();
    assert_eq!(sent.len(), 1000, "one message per follow-up");
    assert_eq!(answered, ids);
    let rows = follow_ups::Entity::find().all(&e.db).await.expect("rows");
    assert!(rows.iter().all(|r| r.claim_count == 1), "each claimed once");
    assert!(
        rows.iter().all(|r| r.reminder_message_id.is_some()
            && r.reminder_channel.as_deref() == Some("whatsapp"))
    );
}
both_backends!(
    two_schedulers_race,
    flavor = "multi_thread",
    worker_threads = 4
);
