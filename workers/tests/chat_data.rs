//! Seed 002 data points written where the data is made, on PostgreSQL and
//! SQLite: the parse worker stores an inbound message's `from`, `to` and
//! `readStatus` and starts the customer's wait; the shared outbox stores an
//! outbound message's `from` and `to` and, for an agent's reply to a
//! waiting customer, the chat's `firstResponseTime`, `avgResponseTime` and
//! `response_count`. Bot replies and replayed writes count nothing.

use chrono::{DateTime, Utc};
use sea_orm::EntityTrait;
use serde_json::json;
use uuid::Uuid;
use wapipe_domain::outbox::{Answer, NewOutbound, OutboundContent, queue_message};
use wapipe_shared::entities::chats;
use wapipe_shared::entities::messages::{self, Origin};
use wapipe_testkit::both_backends;
use wapipe_testkit::workers::*;

async fn chat(env: &Env) -> chats::Model {
    let mut all = env.chats().await;
    assert_eq!(all.len(), 1, "one chat");
    all.remove(0)
}

async fn row(env: &Env, id: Uuid) -> messages::Model {
    messages::Entity::find_by_id(id)
        .one(&env.db)
        .await
        .expect("read")
        .expect("message")
}

/// A reply to `CUSTOMER` by an agent (`None`) or the bot answering a message.
async fn reply(env: &Env, text: &str, bot: Option<Answer>) -> (Uuid, bool) {
    let q = queue_message(
        &env.db,
        NewOutbound {
            config_id: env.config_id,
            to: CUSTOMER.into(),
            content: OutboundContent::Text {
                body: text.into(),
                preview_url: false,
            },
            reply_to: None,
            origin: if bot.is_some() {
                Origin::Bot
            } else {
                Origin::Admin
            },
            sender_type: if bot.is_some() { "bot" } else { "agent" }.into(),
            sender_id: None,
            answers: bot,
        },
    )
    .await
    .expect("queue");
    (q.message_id, q.is_new)
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().expect("micros") as f64 / 1e6
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-6)
}

async fn inbound_rows_carry_their_ends_and_read_status(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.e1", CUSTOMER, 1_760_000_100, "hello"))
        .await;
    let m = env.message("wamid.e1").await;
    assert_eq!(m.from.as_deref(), Some(CUSTOMER));
    // The test config has no display number: its phone number id.
    assert_eq!(m.to.as_deref(), Some(PHONE));
    assert_eq!(m.read_status.as_deref(), Some("delivered"));

    // With a display number, that is the business's end.
    env.exec("UPDATE whatsapp_configs SET display_phone_number = '+1 555-000-0001'")
        .await;
    env.post(&text_event("wamid.e2", CUSTOMER, 1_760_000_200, "again"))
        .await;
    assert_eq!(
        env.message("wamid.e2").await.to.as_deref(),
        Some("+1 555-000-0001")
    );

    // A username-only sender has no number to put in `from`.
    env.post(&fixture("username-user.json")).await;
    let u = env.message("wamid.fx.username").await;
    assert_eq!(u.from, None);
    assert_eq!(u.to.as_deref(), Some("+1 555-000-0001"));

    // The outbox's rows: ours to the customer's.
    let (id, _) = reply(&env, "hi there", None).await;
    let out = row(&env, id).await;
    assert_eq!(out.from.as_deref(), Some("+1 555-000-0001"));
    assert_eq!(out.to.as_deref(), Some(CUSTOMER));
}
both_backends!(inbound_rows_carry_their_ends_and_read_status);

async fn agent_replies_set_the_chat_response_times(b: Backend) {
    let env = env(b).await;
    // The business writes first: nobody waits, nothing to measure.
    reply(&env, "we have news", None).await;
    let c = chat(&env).await;
    assert_eq!(
        (
            c.awaiting_reply_since,
            c.first_response_time,
            c.response_count
        ),
        (None, None, 0)
    );

    // The customer writes twice: the wait starts at the first message.
    env.post(&text_event("wamid.q1", CUSTOMER, 1_760_000_100, "question"))
        .await;
    let q1 = env.message("wamid.q1").await;
    env.post(&text_event("wamid.q2", CUSTOMER, 1_760_000_110, "hello?"))
        .await;
    let c = chat(&env).await;
    assert_eq!(c.awaiting_reply_since, Some(q1.created_at));
    // A reaction is not a question.
    env.post(&envelope(messages_value(
        json!([{"wa_id": CUSTOMER}]),
        json!([{"from": CUSTOMER, "id": "wamid.r1", "timestamp": "1760000120",
                "type": "reaction", "reaction": {"message_id": "wamid.q1", "emoji": "👍"}}]),
    )))
    .await;
    assert_eq!(chat(&env).await.awaiting_reply_since, Some(q1.created_at));

    // The bot answers at once: not a human response; the customer still waits.
    let answer = Answer {
        message_id: q1.id,
        seq: 0,
    };
    let (bot_id, is_new) = reply(&env, "a bot reply", Some(answer)).await;
    assert!(is_new);
    let c = chat(&env).await;
    assert_eq!(c.awaiting_reply_since, Some(q1.created_at));
    assert_eq!((c.first_response_time, c.response_count), (None, 0));
    assert_eq!(c.bot_messages, 1);

    // The agent answers: the first response, from the first question.
    let (a1, _) = reply(&env, "an agent reply", None).await;
    let a1 = row(&env, a1).await;
    let first = secs(q1.created_at, a1.created_at);
    let c = chat(&env).await;
    assert!(close(c.first_response_time, first), "{c:?}");
    assert!(close(c.avg_response_time, first), "{c:?}");
    assert_eq!(c.response_count, 1);
    assert_eq!(c.awaiting_reply_since, None);
    assert_eq!(c.first_response_at, Some(a1.created_at));

    // A second agent message in a row answers nobody; a replayed bot reply
    // (a redelivered job) writes and counts nothing.
    reply(&env, "anything else?", None).await;
    let (again, is_new) = reply(&env, "a bot reply", Some(answer)).await;
    assert_eq!((again, is_new), (bot_id, false));
    let same = chat(&env).await;
    assert_eq!(
        (
            same.first_response_time,
            same.avg_response_time,
            same.response_count,
            same.awaiting_reply_since,
            same.bot_messages
        ),
        (
            c.first_response_time,
            c.avg_response_time,
            1,
            None,
            c.bot_messages
        )
    );

    // The next question and answer: the mean moves, the first stays.
    let ev = env
        .post(&text_event("wamid.q3", CUSTOMER, 1_760_000_200, "one more"))
        .await;
    let q3 = env.message("wamid.q3").await;
    assert_eq!(chat(&env).await.awaiting_reply_since, Some(q3.created_at));
    let (a2, _) = reply(&env, "sure", None).await;
    let a2 = row(&env, a2).await;
    let second = secs(q3.created_at, a2.created_at);
    let c = chat(&env).await;
    assert!(close(c.first_response_time, first), "{c:?}");
    assert!(close(c.avg_response_time, (first + second) / 2.0), "{c:?}");
    assert_eq!(c.response_count, 2);
    assert_eq!(c.first_response_at, Some(a1.created_at), "set once");

    // Replaying the answered question's event starts no new wait.
    env.reset(ev).await;
    env.process(ev).await;
    let replayed = chat(&env).await;
    assert_eq!(replayed.awaiting_reply_since, None);
    assert_eq!(
        (replayed.response_count, replayed.avg_response_time),
        (2, c.avg_response_time)
    );
}
both_backends!(agent_replies_set_the_chat_response_times);
