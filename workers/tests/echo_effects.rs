//! Coexistence with the WhatsApp Business app, beyond plain echoes, on
//! PostgreSQL and SQLite: an echoed edit, reaction or revoke applies to
//! the message it points at (edits and revokes only to the business's own
//! messages), an echoed effect that comes before its target waits for it,
//! and a rename in the app (`smb_app_state_sync`) also renames the chat.
//! A replay of each changes nothing more. From our own fixtures and from
//! the public samples (`shared/meta-corpus`, skipped when absent).

use serde_json::{Value, json};
use wapipe_shared::entities::messages::Direction;
use wapipe_testkit::both_backends;
use wapipe_testkit::corpus::corpus_sample;
use wapipe_testkit::workers::*;

fn echoes(items: Value) -> Value {
    field_event(
        WABA,
        1_760_000_000,
        "smb_message_echoes",
        json!({"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
            "message_echoes": items}),
    )
}

/// An echo from the business to the test customer.
fn echo(id: &str, ts: i64, kind: &str, body: Value) -> Value {
    let mut m = json!({"from": PHONE, "to": CUSTOMER, "id": id, "timestamp": ts.to_string(),
        "type": kind});
    m[kind] = body;
    echoes(json!([m]))
}

/// Posts `body`, replays it, and checks the replay changed nothing.
async fn post_and_replay(env: &Env, body: &Value) {
    let id = env.post(body).await;
    let counts = env.counts().await;
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(env.counts().await, counts, "replay of {body}");
}

async fn echoed_edits_reactions_and_revokes(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.x-in", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    post_and_replay(
        &env,
        &echo("wamid.x-1", 1_760_000_010, "text", json!({"body": "Helo"})),
    )
    .await;

    // The owner fixes a typo in the app.
    post_and_replay(
        &env,
        &echo(
            "wamid.x-edit",
            1_760_000_020,
            "edit",
            json!({"original_message_id": "wamid.x-1",
                "message": {"type": "text", "text": {"body": "Hello"}}}),
        ),
    )
    .await;
    let m = env.message("wamid.x-1").await;
    assert_eq!(m.text.as_deref(), Some("Hello"));
    assert!(m.is_edited);
    assert_eq!(m.edit_history.expect("history")[0]["text"], "Helo");

    // …reacts to the customer's message…
    post_and_replay(
        &env,
        &echo(
            "wamid.x-react",
            1_760_000_030,
            "reaction",
            json!({"message_id": "wamid.x-in", "emoji": "👍"}),
        ),
    )
    .await;
    let reactions = env.message("wamid.x-in").await.reactions.expect("reacted");
    let mine: Vec<&Value> = reactions.as_object().expect("map").values().collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["emoji"], "👍");

    // …cannot revoke the customer's message, but revokes its own.
    env.post(&echo(
        "wamid.x-revoke-theirs",
        1_760_000_040,
        "revoke",
        json!({"original_message_id": "wamid.x-in"}),
    ))
    .await;
    assert!(!env.message("wamid.x-in").await.is_deleted);
    post_and_replay(
        &env,
        &echo(
            "wamid.x-revoke",
            1_760_000_050,
            "revoke",
            json!({"original_message_id": "wamid.x-1"}),
        ),
    )
    .await;
    let m = env.message("wamid.x-1").await;
    assert!(m.is_deleted);
    assert_eq!(
        m.text.as_deref(),
        Some("Hello"),
        "agents keep what they saw"
    );

    // An edit that comes before its message waits for it.
    env.post(&echo(
        "wamid.x-edit-early",
        1_760_000_070,
        "edit",
        json!({"original_message_id": "wamid.x-2",
            "message": {"type": "text", "text": {"body": "Fixed"}}}),
    ))
    .await;
    assert_eq!(
        env.message("wamid.x-edit-early")
            .await
            .effect_target
            .as_deref(),
        Some("wamid.x-2")
    );
    post_and_replay(
        &env,
        &echo("wamid.x-2", 1_760_000_060, "text", json!({"body": "Fixd"})),
    )
    .await;
    let m = env.message("wamid.x-2").await;
    assert_eq!((m.text.as_deref(), m.is_edited), (Some("Fixed"), true));
    assert_eq!(env.message("wamid.x-edit-early").await.effect_target, None);
}
both_backends!(echoed_edits_reactions_and_revokes);

/// A rename in the app renames the customer and the chat list's copy.
async fn a_rename_renames_the_chat(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.r-in", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    assert_eq!(env.chats().await[0].customer_name.as_deref(), Some("Erika"));
    let sync = field_event(
        WABA,
        1_760_000_100,
        "smb_app_state_sync",
        json!({"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
            "state_sync": [{"type": "contact", "action": "edit",
                "contact": {"full_name": "Erika Mustermann", "first_name": "Erika",
                    "phone_number": CUSTOMER},
                "metadata": {"timestamp": "1760000100"}}]}),
    );
    post_and_replay(&env, &sync).await;
    let chat = &env.chats().await[0];
    assert_eq!(chat.customer_name.as_deref(), Some("Erika Mustermann"));
    assert_eq!(
        env.customers().await[0].name.as_deref(),
        Some("Erika Mustermann")
    );
}
both_backends!(a_rename_renames_the_chat);

async fn corpus_echoed_effects(b: Backend) {
    let Some(edit) = corpus_sample("other", "pywa-outgoing-message-edit.json") else {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    };
    let env = env(b).await;
    add_config(&env.db, "1122334455667", "1234567890987654321", "Test Co").await;
    // Its target is not in the sample: the edit waits for it, filed under
    // the customer (this source swaps `from` and `to`).
    post_and_replay(&env, &edit).await;
    let m = env.message("wamid.yyyyyy").await;
    assert_eq!(m.direction, Direction::Outbound);
    assert_eq!(m.effect_target.as_deref(), Some("wamid.zzzzzz"));
    let customers = env.customers().await;
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].wa_id.as_deref(), Some("972987654321"));
}
both_backends!(corpus_echoed_effects);
