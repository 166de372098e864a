//! The scenario worker end to end on PostgreSQL and SQLite: a webhook is
//! parsed, its `message.inbound` job runs through the `scenario` role (as
//! the registry builds it), and the bot's replies go out through the
//! outbound worker to the fake Graph API (`wapipe-sim`). The same job
//! delivered twice, and the webhook replayed, still make one reply.

use chrono::Utc;
use serde_json::{Value, json};
use wapipe_shared::jobs::MESSAGE_INBOUND;
use wapipe_testkit::both_backends;
use wapipe_testkit::workers::*;

mod common;

fn flow() -> Value {
    json!({
        "scenarios": [{"title": "Accueil", "keywords": ["bonjour"], "items": [
            {"ref": "hello", "type": "button", "label": "Bonjour ! Que voulez-vous ?",
             "children": ["offers", "hours"]},
            {"ref": "offers", "type": "text", "title": "Offres", "label": "Nos offres."},
            {"ref": "hours", "type": "text", "title": "Horaires", "label": "9h-19h."}]}]
    })
}

async fn a_keyword_then_a_button_reach_the_graph_once(backend: Backend) {
    let env = env(backend).await;
    let common::Bot {
        graph,
        scenario,
        outbound,
    } = common::bot(&env, &flow()).await;

    let now = Utc::now().timestamp();
    let event = env
        .post(&text_event("wamid.IN1", CUSTOMER, now, "Bonjour !"))
        .await;
    // The same message.inbound job delivered twice: one reply.
    let jobs = env.deliveries("scenario").await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].event, MESSAGE_INBOUND);
    scenario.handle(&jobs[0]).await.expect("first delivery");
    scenario.handle(&jobs[0]).await.expect("second delivery");
    for d in jobs {
        d.ack().await.expect("ack");
    }
    assert_eq!(env.run_jobs("outbound", outbound.as_ref()).await, 1);
    let sent = graph.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].to, CUSTOMER);
    assert_eq!(sent[0].kind, "interactive");
    let buttons = sent[0].body["interactive"]["action"]["buttons"]
        .as_array()
        .expect("buttons")
        .clone();
    assert_eq!(buttons.len(), 2);

    // The webhook replayed (wapipe replay): parse publishes the message
    // again, the worker finds it consumed.
    env.reset(event).await;
    env.process(event).await;
    assert_eq!(env.run_jobs("scenario", scenario.as_ref()).await, 1);
    assert_eq!(env.run_jobs("outbound", outbound.as_ref()).await, 0);
    assert_eq!(graph.sent().len(), 1);

    // The customer taps "Horaires": the next reply.
    let tap = envelope(messages_value(
        json!([{"profile": {"name": "Erika"}, "wa_id": CUSTOMER}]),
        json!([{"from": CUSTOMER, "id": "wamid.IN2", "timestamp": now.to_string(),
                "type": "interactive", "interactive": {"type": "button_reply",
                "button_reply": {"id": buttons[1]["reply"]["id"], "title": "Horaires"}}}]),
    ));
    env.post(&tap).await;
    assert_eq!(env.run_jobs("scenario", scenario.as_ref()).await, 1);
    assert_eq!(env.run_jobs("outbound", outbound.as_ref()).await, 1);
    let sent = graph.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].body["text"]["body"], "9h-19h.");

    // A message from yesterday (say, after an outage) gets no reply.
    let old = Utc::now().timestamp() - 86_400;
    env.post(&text_event("wamid.IN3", CUSTOMER, old, "bonjour"))
        .await;
    assert_eq!(env.run_jobs("scenario", scenario.as_ref()).await, 1);
    assert_eq!(env.run_jobs("outbound", outbound.as_ref()).await, 0);
    assert_eq!(graph.sent().len(), 2);
}
both_backends!(a_keyword_then_a_button_reach_the_graph_once);
