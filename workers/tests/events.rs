//! The events the workers' writes leave in the events log, on PostgreSQL
//! and SQLite: a customer's first message is `chat.created` then
//! `message.created`, later ones `chat.updated` and `message.created`, a
//! reaction also its target's `message.updated`; a status receipt is
//! `message.updated`; a queued send is `message.created`. Redelivered or
//! replayed work writes nothing twice.

use serde_json::{Value, json};
use wapipe_domain::events::{self, Scope};
use wapipe_domain::outbox::{self, Answer, NewOutbound, OutboundContent};
use wapipe_domain::receipts::apply_pending_receipts;
use wapipe_shared::entities::messages::Origin;
use wapipe_testkit::both_backends;
use wapipe_testkit::build::*;
use wapipe_testkit::workers::*;

/// (type, data) of every event after `after`, waiting for them to settle.
async fn events_after(env: &Env, after: i64) -> (Vec<(String, Value)>, i64) {
    // Other tests' transactions on the same server may hold PostgreSQL's
    // horizon back (seconds, when the whole suite runs): read what is
    // settled until nothing written after it is held back. Stopping at the
    // first visible event returned part of them, once.
    let mut rows = Vec::new();
    for _ in 0..1500 {
        rows = events::read_after(&env.db, after, 1000, &Scope::everything())
            .await
            .expect("read events");
        let seen = rows.last().map_or(after, |e| e.seq);
        if !events::unsettled_after(&env.db, seen)
            .await
            .expect("pending")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let last = rows.last().map_or(after, |e| e.seq);
    (
        rows.into_iter().map(|e| (e.r#type, e.payload)).collect(),
        last,
    )
}

fn types(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(t, _)| t.as_str()).collect()
}

async fn workers_write_events_once(b: Backend) {
    let env = env(b).await;

    // First message: a new chat.
    let first = env
        .post(&text_event("wamid.ev1", CUSTOMER, 1_760_000_000, "hello"))
        .await;
    let (evs, mark) = events_after(&env, 0).await;
    assert_eq!(types(&evs), ["chat.created", "message.created"]);
    let chat = &evs[0].1;
    assert_eq!(chat["phoneNumber"], CUSTOMER);
    assert_eq!(chat["unreadCount"], 1);
    assert_eq!(evs[1].1["text"], "hello");
    assert_eq!(evs[1].1["direction"], "inbound");
    assert_eq!(evs[1].1["chatId"], chat["id"]);

    // Replayed: the same rows, no event.
    env.reset(first).await;
    env.process(first).await;
    let (evs, mark) = events_after(&env, mark).await;
    assert!(evs.is_empty(), "{evs:?}");

    // A second message and a reaction to the first.
    env.post(&text_event("wamid.ev2", CUSTOMER, 1_760_000_010, "again"))
        .await;
    env.post(&envelope(messages_value(
        json!([{"wa_id": CUSTOMER}]),
        json!([{"from": CUSTOMER, "id": "wamid.ev3", "timestamp": "1760000020", "type": "reaction",
                "reaction": {"message_id": "wamid.ev1", "emoji": "👍"}}]),
    )))
    .await;
    let (evs, mark) = events_after(&env, mark).await;
    assert_eq!(
        types(&evs),
        [
            "chat.updated",
            "message.created",
            "chat.updated",
            "message.created",
            "message.updated"
        ]
    );
    assert_eq!(evs[0].1["unreadCount"], 2);
    assert_eq!(evs[4].1["providerMessageId"], "wamid.ev1");
    let target = env.message("wamid.ev1").await;
    assert_eq!(evs[4].1["id"], json!(target.id));

    // A send queued through the shared outbox, as the API or a bot does;
    // the same answer queued again writes nothing.
    let answer = Answer {
        message_id: target.id,
        seq: 0,
    };
    let send = || NewOutbound {
        config_id: env.config_id,
        to: CUSTOMER.to_owned(),
        content: OutboundContent::Text {
            body: "thanks".into(),
            preview_url: false,
        },
        reply_to: None,
        origin: Origin::Bot,
        sender_type: "bot".into(),
        sender_id: None,
        answers: Some(answer),
    };
    let queued = outbox::queue_message(&env.db, send()).await.expect("queue");
    let again = outbox::queue_message(&env.db, send())
        .await
        .expect("queue again");
    assert!(!again.is_new);
    let (evs, mark) = events_after(&env, mark).await;
    assert_eq!(types(&evs), ["message.created"]);
    assert_eq!(evs[0].1["id"], json!(queued.message_id));
    assert_eq!(evs[0].1["status"], "queued");
    assert_eq!(evs[0].1["direction"], "outbound");

    // Its receipt: one message.updated, and none when applied again.
    {
        use sea_orm::sea_query::Expr;
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        use wapipe_shared::entities::messages::{self, MessageStatus};
        messages::Entity::update_many()
            .col_expr(
                messages::Column::ProviderMessageId,
                Expr::value("wamid.out1"),
            )
            .col_expr(messages::Column::Status, Expr::value(MessageStatus::Sent))
            .filter(messages::Column::Id.eq(queued.message_id))
            .exec(&env.db)
            .await
            .expect("sent");
    }
    env.post(&status_event(
        "wamid.out1",
        "delivered",
        1_760_000_030,
        CUSTOMER,
    ))
    .await;
    for _ in 0..2 {
        apply_pending_receipts(&env.db, env.config_id, "wamid.out1")
            .await
            .expect("apply");
    }
    let (evs, _) = events_after(&env, mark).await;
    assert_eq!(types(&evs), ["message.updated"]);
    assert_eq!(evs[0].1["status"], "delivered");
}
both_backends!(workers_write_events_once);
