//! Who a customer is, over time, on PostgreSQL and SQLite: a `system`
//! message saying the user changed their number (`user_changed_number`)
//! or their business-scoped user id (`user_changed_user_id`) re-keys the
//! customer so the conversation stays one chat, keeps the previous id
//! (a late message from it lands in the same chat), and a replay or an
//! older change changes nothing. Customers keep `parent_user_id`, and
//! receipts keep `recipient_user_id`. From our own fixtures and from the
//! public samples (`shared/meta-corpus`, skipped when absent).

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use wapipe_shared::entities::{chats, customer_previous_ids, customers, messages};
use wapipe_testkit::both_backends;
use wapipe_testkit::corpus::corpus_sample;
use wapipe_testkit::workers::*;

/// Everything re-keying may change: the parse worker's counts, the
/// customers' ids and the previous ids.
async fn state(env: &Env) -> Value {
    let customers: Vec<Value> = env
        .customers()
        .await
        .into_iter()
        .map(|c| {
            json!([
                c.id,
                c.wa_id,
                c.user_id,
                c.parent_user_id,
                c.phone_number,
                c.name
            ])
        })
        .collect();
    let previous: Vec<Value> = customer_previous_ids::Entity::find()
        .order_by_asc(customer_previous_ids::Column::Value)
        .all(&env.db)
        .await
        .expect("query")
        .into_iter()
        .map(|p| json!([p.customer_id, p.kind, p.value, p.changed_at, p.changed_by]))
        .collect();
    let chats: Vec<Value> = env
        .chats()
        .await
        .into_iter()
        .map(|c| json!([c.id, c.customer_id, c.phone_number]))
        .collect();
    json!({"counts": env.counts().await, "customers": customers, "previous": previous,
        "chats": chats})
}

/// Posts `body`, replays it, and checks the replay changed nothing.
/// Returns the event's `processed_data`.
async fn post_and_replay(env: &Env, body: &Value) -> Value {
    let id = env.post(body).await;
    let first = state(env).await;
    let data = env.event(id).await.processed_data.expect("processed data");
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(state(env).await, first, "replay of {body}");
    data
}

fn system(id: &str, from: Value, ts: i64, system: Value) -> Value {
    let mut m = json!({"id": id, "timestamp": ts.to_string(), "type": "system",
        "system": system});
    if let Some(o) = m.as_object_mut()
        && let Some(f) = from.as_object()
    {
        o.extend(f.clone());
    }
    // System messages come without `contacts`.
    envelope(json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
        "messages": [m]}))
}

async fn by_wa_id(env: &Env, wa_id: &str) -> Option<customers::Model> {
    customers::Entity::find()
        .filter(customers::Column::WaId.eq(wa_id))
        .one(&env.db)
        .await
        .expect("query")
}

async fn by_user_id(env: &Env, user_id: &str) -> Option<customers::Model> {
    customers::Entity::find()
        .filter(customers::Column::UserId.eq(user_id))
        .one(&env.db)
        .await
        .expect("query")
}

async fn chat_messages(env: &Env, customer_id: uuid::Uuid) -> Vec<String> {
    messages::Entity::find()
        .filter(messages::Column::CustomerId.eq(customer_id))
        .order_by_asc(messages::Column::Id)
        .all(&env.db)
        .await
        .expect("query")
        .into_iter()
        .filter_map(|m| m.provider_message_id)
        .collect()
}

const OLD: &str = "4915100000001";
const NEW: &str = "4915100000002";

async fn a_new_number_keeps_one_chat(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.n-1", OLD, 1_760_000_000, "hi"))
        .await;
    let before = by_wa_id(&env, OLD).await.expect("customer");

    let changed = system(
        "wamid.n-sys",
        json!({"from": OLD}),
        1_760_000_100,
        json!({"body": "User Erika changed from 4915100000001 to 4915100000002",
            "wa_id": NEW, "type": "user_changed_number"}),
    );
    let data = post_and_replay(&env, &changed).await;
    assert_eq!(data["identities_changed"], 1, "{data}");
    let c = by_wa_id(&env, NEW).await.expect("re-keyed");
    assert_eq!(c.id, before.id);
    assert_eq!(c.phone_number.as_deref(), Some(NEW));
    assert!(by_wa_id(&env, OLD).await.is_none());
    let chats = env.chats().await;
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].phone_number.as_deref(), Some(NEW));
    let previous = customer_previous_ids::Entity::find()
        .all(&env.db)
        .await
        .expect("query");
    assert_eq!(previous.len(), 1);
    assert_eq!(
        (
            previous[0].customer_id,
            previous[0].kind.as_str(),
            previous[0].value.as_str(),
            previous[0].changed_by.as_deref()
        ),
        (c.id, "wa_id", OLD, Some("wamid.n-sys"))
    );

    // From the new number, and late from the old one: the same chat.
    env.post(&text_event("wamid.n-2", NEW, 1_760_000_200, "new phone"))
        .await;
    env.post(&text_event("wamid.n-0", OLD, 1_760_000_050, "late"))
        .await;
    assert_eq!(env.customers().await.len(), 1);
    assert_eq!(env.chats().await.len(), 1);
    assert_eq!(
        chat_messages(&env, c.id).await,
        ["wamid.n-1", "wamid.n-sys", "wamid.n-2", "wamid.n-0"]
    );
    assert!(
        by_wa_id(&env, OLD).await.is_none(),
        "no customer for the old number"
    );

    // An older change (late) changes nothing.
    let older = system(
        "wamid.n-sys-old",
        json!({"from": NEW}),
        1_760_000_090,
        json!({"wa_id": "4915100000003", "type": "user_changed_number"}),
    );
    env.post(&older).await;
    assert_eq!(by_wa_id(&env, NEW).await.map(|c| c.id), Some(c.id));

    // A change to a number another customer has: left apart, counted.
    env.post(&text_event(
        "wamid.o-1",
        "4915100000009",
        1_760_000_300,
        "other",
    ))
    .await;
    let taken = system(
        "wamid.n-sys-taken",
        json!({"from": NEW}),
        1_760_000_400,
        json!({"wa_id": "4915100000009", "type": "user_changed_number"}),
    );
    let id = env.post(&taken).await;
    let data = env.event(id).await.processed_data.expect("data");
    assert_eq!(data["unknown"]["rekey_conflict"], 1, "{data}");
    assert_eq!(by_wa_id(&env, NEW).await.map(|c| c.id), Some(c.id));
    assert_eq!(env.customers().await.len(), 2);
}
both_backends!(a_new_number_keeps_one_chat);

async fn a_new_user_id_keeps_one_chat(b: Backend) {
    let env = env(b).await;
    let from_bsuid = |id: &str, user_id: &str, ts: i64| {
        let mut m = text_msg(id, "", ts, "hello");
        m.as_object_mut().map(|o| o.remove("from"));
        m["from_user_id"] = json!(user_id);
        envelope(messages_value(
            json!([{"profile": {"name": "Nick", "username": "@nick"},
                "user_id": user_id, "parent_user_id": "US.ENT.1"}]),
            json!([m]),
        ))
    };
    post_and_replay(&env, &from_bsuid("wamid.b-1", "US.100", 1_760_000_000)).await;
    let before = by_user_id(&env, "US.100").await.expect("customer");
    assert_eq!(
        (before.wa_id.as_deref(), before.parent_user_id.as_deref()),
        (None, Some("US.ENT.1"))
    );

    let changed = system(
        "wamid.b-sys",
        json!({"from_user_id": "US.100"}),
        1_760_000_100,
        json!({"body": "User changed", "user_id": "US.200", "parent_user_id": "US.ENT.2",
            "type": "user_changed_user_id"}),
    );
    let data = post_and_replay(&env, &changed).await;
    assert_eq!(data["identities_changed"], 1, "{data}");
    let c = by_user_id(&env, "US.200").await.expect("re-keyed");
    assert_eq!(c.id, before.id);
    assert_eq!(c.parent_user_id.as_deref(), Some("US.ENT.2"));
    assert!(by_user_id(&env, "US.100").await.is_none());

    env.post(&from_bsuid("wamid.b-0", "US.100", 1_760_000_050))
        .await;
    assert_eq!(
        by_user_id(&env, "US.200")
            .await
            .and_then(|c| c.parent_user_id),
        Some("US.ENT.2".to_owned()),
        "a late message from the old id keeps the new parent"
    );
    env.post(&from_bsuid("wamid.b-2", "US.200", 1_760_000_200))
        .await;
    assert_eq!(env.customers().await.len(), 1);
    assert_eq!(env.chats().await.len(), 1);
    assert_eq!(
        chat_messages(&env, c.id).await,
        ["wamid.b-1", "wamid.b-sys", "wamid.b-0", "wamid.b-2"]
    );
}
both_backends!(a_new_user_id_keeps_one_chat);

/// A receipt's `recipient_user_id` is kept beside `recipient_id`.
async fn receipts_keep_the_recipient_user_id(b: Backend) {
    let env = env(b).await;
    let mut body = status_event("wamid.r-1", "delivered", 1_760_000_000, CUSTOMER);
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["recipient_user_id"] = json!("US.300");
    let id = env.post(&body).await;
    let counts = env.counts().await;
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(env.counts().await, counts);
    let rows = env.status_events("wamid.r-1").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].recipient_id.as_deref(),
            rows[0].recipient_user_id.as_deref()
        ),
        (Some(CUSTOMER), Some("US.300"))
    );
}
both_backends!(receipts_keep_the_recipient_user_id);

async fn corpus_identities(b: Backend) {
    let Some(system_sample) = corpus_sample("messages", "meta-docs-messages-system.json") else {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    };
    let env = env(b).await;
    add_config(&env.db, PHONE_NUMBER_ID, WABA_ID, "Test Co").await;
    // The user wrote from their old number first.
    let mut first = text_event("wamid.c-1", "16505551234", 1_750_269_000, "hi");
    first["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] =
        json!(PHONE_NUMBER_ID);
    env.post(&first).await;
    let before = by_wa_id(&env, "16505551234").await.expect("customer");
    let data = post_and_replay(&env, &system_sample).await;
    assert_eq!(data["identities_changed"], 1, "{data}");
    let c = by_wa_id(&env, "12195555358").await.expect("re-keyed");
    assert_eq!(c.id, before.id);
    let chats = chats::Entity::find()
        .filter(chats::Column::CustomerId.eq(c.id))
        .all(&env.db)
        .await
        .expect("query");
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].phone_number.as_deref(), Some("12195555358"));

    // The older shape (`new_wa_id`) of another source.
    // The sample's entry id is a placeholder, not a Meta id (which
    // `config add` refuses); the number routes it.
    add_config(&env.db, "1093849293", "2", "Test Co").await;
    let sample =
        corpus_sample("messages", "piusalfred-system-user-changed-number.json").expect("sample");
    post_and_replay(&env, &sample).await;
    assert!(by_wa_id(&env, "15550003333").await.is_some());
    assert!(by_wa_id(&env, "15550002222").await.is_none());

    // Contacts with a parent BSUID, and a receipt naming the BSUID.
    add_config(&env.db, "1122334455667", "1234567890987654321", "Test Co").await;
    let text = corpus_sample("messages", "pywa-message-text.json").expect("sample");
    post_and_replay(&env, &text).await;
    let c = by_wa_id(&env, "972987654321").await.expect("customer");
    assert_eq!(
        (c.user_id.as_deref(), c.parent_user_id.as_deref()),
        (
            Some("US.13491208655302741918"),
            Some("US.ENT.11815799212886844830")
        )
    );
    add_config(&env.db, "123456123", "1", "Test Co").await;
    let sent = corpus_sample("statuses", "whatsapp-api-js-v25-sent.json").expect("sample");
    post_and_replay(&env, &sent).await;
    let rows = env.status_events("ABGGFlA5Fpa").await;
    assert_eq!(
        rows.first().and_then(|r| r.recipient_user_id.as_deref()),
        Some("US.13491208655302741918")
    );
}
both_backends!(corpus_identities);
