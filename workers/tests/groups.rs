//! WhatsApp groups (Meta's Groups API) on PostgreSQL and SQLite: a group's
//! messages make one chat of their own and keep who wrote them; the
//! `group_*` webhooks keep the group and its members; the bot stays out of
//! groups while an agent's reply goes to the group (`recipient_type:
//! group`) and its receipts apply. From our own fixtures and from the
//! public samples (`shared/meta-corpus`, skipped when absent); a replay of
//! each changes nothing more.

use chrono::Utc;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use wapipe_domain::outbox::{NewOutbound, OutboundContent};
use wapipe_shared::entities::messages::Origin;
use wapipe_shared::entities::{customers, events, group_participants, groups};
use wapipe_testkit::both_backends;
use wapipe_testkit::corpus::corpus_sample;
use wapipe_testkit::workers::*;

mod common;

const GROUP: &str = "120363025246125486@g.us";
const ANNA: &str = "4915100000001";
const BEA: &str = "4915100000002";

/// A message written in `GROUP` by `from`.
fn group_msg(id: &str, from: &str, name: &str, ts: i64, body: &str) -> Value {
    let mut m = text_msg(id, from, ts, body);
    m["group_id"] = json!(GROUP);
    envelope(messages_value(
        json!([{"profile": {"name": name}, "wa_id": from}]),
        json!([m]),
    ))
}

/// A `group_*` change about `GROUP`.
fn group_update(field: &str, update: Value) -> Value {
    field_event(
        WABA,
        1_760_000_000,
        field,
        json!({"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
            "groups": [update]}),
    )
}

async fn group(env: &Env) -> groups::Model {
    groups::Entity::find()
        .filter(groups::Column::WaGroupId.eq(GROUP))
        .one(&env.db)
        .await
        .expect("query")
        .expect("group")
}

async fn customer(env: &Env, wa_id: &str) -> customers::Model {
    customers::Entity::find()
        .filter(customers::Column::WaId.eq(wa_id))
        .one(&env.db)
        .await
        .expect("query")
        .expect("customer")
}

/// (wa_id, status, reason) of the group's members, by wa_id.
async fn members(env: &Env) -> Vec<(Option<String>, String, Option<String>)> {
    group_participants::Entity::find()
        .order_by_asc(group_participants::Column::WaId)
        .all(&env.db)
        .await
        .expect("members")
        .into_iter()
        .map(|p| (p.wa_id, p.status, p.reason))
        .collect()
}

async fn count_events(env: &Env, kind: &str) -> usize {
    events::Entity::find()
        .filter(events::Column::Type.eq(kind))
        .all(&env.db)
        .await
        .expect("events")
        .len()
}

async fn group_messages_make_one_chat_with_their_senders(b: Backend) {
    let env = env(b).await;
    let now = Utc::now().timestamp();
    env.post(&group_msg(
        "wamid.G1",
        ANNA,
        "Anna",
        now - 20,
        "Hallo zusammen",
    ))
    .await;
    let second = env
        .post(&group_msg("wamid.G2", BEA, "Bea", now - 10, "Hi!"))
        .await;
    // Anna also writes to the business on her own.
    env.post(&text_event("wamid.A1", ANNA, now - 5, "Und privat?"))
        .await;

    let party = group(&env).await;
    let chats = env.chats().await;
    assert_eq!(chats.len(), 2, "the group's chat and Anna's own");
    let group_chat = chats
        .iter()
        .find(|c| c.customer_id == party.customer_id)
        .expect("the group's chat");
    assert_eq!(group_chat.provider_chat_id.as_deref(), Some(GROUP));
    assert_eq!(group_chat.phone_number, None);
    assert_eq!((group_chat.total_messages, group_chat.unread_count), (2, 2));
    let (anna, bea) = (customer(&env, ANNA).await, customer(&env, BEA).await);
    for (wamid, author, name) in [("wamid.G1", &anna, "Anna"), ("wamid.G2", &bea, "Bea")] {
        let m = env.message(wamid).await;
        assert_eq!(m.chat_id, group_chat.id, "{wamid} is in the group's chat");
        assert_eq!(m.customer_id, party.customer_id);
        assert_eq!(
            m.participant_id,
            Some(author.id),
            "{wamid} keeps its sender"
        );
        assert_eq!(m.from.as_deref(), author.wa_id.as_deref());
        assert_eq!(m.sender_name.as_deref(), Some(name));
    }
    let own = env.message("wamid.A1").await;
    assert_ne!(own.chat_id, group_chat.id);
    assert_eq!((own.customer_id, own.participant_id), (anna.id, None));
    // Writing in a group opens no one-to-one window; the group's opens.
    assert_eq!(bea.last_inbound_at, None);
    assert_eq!(anna.last_inbound_at.map(|t| t.timestamp()), Some(now - 5));
    let party_row = customers::Entity::find_by_id(party.customer_id)
        .one(&env.db)
        .await
        .expect("query")
        .expect("party");
    assert_eq!(
        party_row.last_inbound_at.map(|t| t.timestamp()),
        Some(now - 10)
    );
    assert_eq!((party_row.wa_id, party_row.user_id), (None, None));
    assert_eq!(
        members(&env).await,
        vec![
            (Some(ANNA.into()), "member".into(), None),
            (Some(BEA.into()), "member".into(), None)
        ]
    );
    // The group's messages share one lane: the group's.
    let lanes: Vec<String> = env
        .take_jobs("scenario")
        .await
        .into_iter()
        .map(|(lane, _)| lane)
        .collect();
    let group_lane = wapipe_shared::jobs::lane_key(PHONE, GROUP);
    assert_eq!(
        lanes.iter().filter(|l| **l == group_lane).count(),
        2,
        "{lanes:?}"
    );

    // A replay changes nothing.
    let before = env.counts().await;
    let members_before = members(&env).await;
    env.reset(second).await;
    env.process(second).await;
    assert_eq!(env.counts().await, before);
    assert_eq!(members(&env).await, members_before);
}
both_backends!(group_messages_make_one_chat_with_their_senders);

async fn group_updates_apply_once(b: Backend) {
    let env = env(b).await;
    let post_twice = |body: Value| {
        let env = &env;
        async move {
            let id = env.post(&body).await;
            let data = env.event(id).await.processed_data.expect("data");
            let (g, m) = (without_updated_at(&group(env).await), members(env).await);
            env.reset(id).await;
            env.process(id).await;
            assert_eq!(without_updated_at(&group(env).await), g, "replay of {body}");
            assert_eq!(members(env).await, m, "replay of {body}");
            data
        }
    };
    let data = post_twice(group_update(
        "group_lifecycle_update",
        json!({"timestamp": "1760000100", "group_id": GROUP, "type": "group_create",
            "request_id": "REQ_1", "subject": "Kunden Berlin",
            "invite_link": "https://chat.whatsapp.com/ABC", "join_approval_mode": "approval_required"}),
    ))
    .await;
    assert_eq!(data["groups_updated"], 1);
    let g = group(&env).await;
    assert_eq!(
        (
            g.subject.as_deref(),
            g.invite_link.as_deref(),
            g.join_approval_mode.as_deref(),
            g.status.as_str()
        ),
        (
            Some("Kunden Berlin"),
            Some("https://chat.whatsapp.com/ABC"),
            Some("approval_required"),
            "active"
        )
    );
    let chats = env.chats().await;
    assert_eq!(chats.len(), 1, "the group has its chat from the start");
    assert_eq!(chats[0].customer_name.as_deref(), Some("Kunden Berlin"));
    assert_eq!(count_events(&env, "chat.created").await, 1);

    // A new subject applies, a refused description does not (its errors
    // are kept); the same change with an older time changes nothing.
    post_twice(group_update(
        "group_settings_update",
        json!({"timestamp": "1760000200", "group_id": GROUP, "type": "group_settings_update",
            "group_subject": {"text": "Kunden Berlin-Mitte", "update_successful": true},
            "group_description": {"text": "x", "update_successful": false,
                "errors": [{"code": 100, "title": "Update Failed"}]}}),
    ))
    .await;
    let g = group(&env).await;
    assert_eq!(g.subject.as_deref(), Some("Kunden Berlin-Mitte"));
    assert_eq!(g.description, None);
    assert_eq!(
        g.errors.as_ref().map(|e| e[0]["errors"][0]["code"].clone()),
        Some(json!(100))
    );
    assert_eq!(
        env.chats().await[0].customer_name.as_deref(),
        Some("Kunden Berlin-Mitte")
    );
    env.post(&group_update(
        "group_settings_update",
        json!({"timestamp": "1760000150", "group_id": GROUP, "type": "group_settings_update",
            "group_subject": {"text": "Old", "update_successful": true}}),
    ))
    .await;
    assert_eq!(
        group(&env).await.subject.as_deref(),
        Some("Kunden Berlin-Mitte"),
        "an older subject never wins"
    );

    // Members: added, a join request, then removed; an older add after
    // the removal changes nothing.
    post_twice(group_update(
        "group_participants_update",
        json!({"timestamp": "1760000300", "group_id": GROUP, "type": "group_participants_add",
            "reason": "invite_link", "added_participants": [{"wa_id": ANNA}, {"wa_id": BEA}]}),
    ))
    .await;
    post_twice(group_update(
        "group_participants_update",
        json!({"timestamp": "1760000310", "group_id": GROUP,
            "type": "group_join_request_created", "wa_id": "4915100000003"}),
    ))
    .await;
    post_twice(group_update(
        "group_participants_update",
        json!({"timestamp": "1760000400", "group_id": GROUP, "type": "group_participants_remove",
            "removed_participants": [{"wa_id": BEA}]}),
    ))
    .await;
    env.post(&group_update(
        "group_participants_update",
        json!({"timestamp": "1760000350", "group_id": GROUP, "type": "group_participants_add",
            "added_participants": [{"wa_id": BEA}]}),
    ))
    .await;
    assert_eq!(
        members(&env).await,
        vec![
            (
                Some(ANNA.into()),
                "member".into(),
                Some("invite_link".into())
            ),
            (Some(BEA.into()), "removed".into(), None),
            (Some("4915100000003".into()), "requested".into(), None)
        ]
    );
    // Members are customers of their own, with no window and no chat.
    assert_eq!(customer(&env, ANNA).await.last_inbound_at, None);
    assert_eq!(env.chats().await.len(), 1);

    // Suspended, then cleared; a late suspension stays ignored.
    post_twice(group_update(
        "group_status_update",
        json!({"timestamp": "1760000500", "group_id": GROUP, "type": "group_suspend"}),
    ))
    .await;
    assert_eq!(group(&env).await.status, "suspended");
    post_twice(group_update(
        "group_status_update",
        json!({"timestamp": "1760000600", "group_id": GROUP, "type": "group_suspend_cleared"}),
    ))
    .await;
    env.post(&group_update(
        "group_status_update",
        json!({"timestamp": "1760000550", "group_id": GROUP, "type": "group_suspend"}),
    ))
    .await;
    assert_eq!(group(&env).await.status, "active");
    // Each change that applied is one chat.updated; replays wrote none.
    assert_eq!(count_events(&env, "chat.updated").await, 6);

    // An update without a group id, or of a type we do not know, is kept
    // raw and counted.
    let data = post_twice(group_update(
        "group_lifecycle_update",
        json!({"timestamp": "1760000700", "group_id": GROUP, "type": "group_renamed_by_moon"}),
    ))
    .await;
    assert_eq!(data["unknown"]["group_update"], 1);
}
both_backends!(group_updates_apply_once);

async fn the_bot_stays_out_and_agents_reply_to_the_group(b: Backend) {
    let env = env(b).await;
    let flow = json!({"scenarios": [{"title": "Accueil", "keywords": ["bonjour"], "items": [
        {"ref": "hello", "type": "text", "label": "Bonjour !"}]}]});
    let common::Bot {
        graph,
        scenario,
        outbound,
    } = common::bot(&env, &flow).await;

    // A keyword in the group: the bot stays silent.
    let now = Utc::now().timestamp();
    env.post(&group_msg("wamid.G1", ANNA, "Anna", now, "bonjour"))
        .await;
    assert_eq!(env.run_jobs("scenario", scenario.as_ref()).await, 1);
    assert_eq!(env.run_jobs("outbound", outbound.as_ref()).await, 0);
    assert!(graph.sent().is_empty());

    // An agent answers in the group's chat: Meta gets the group's id.
    let q = wapipe_domain::outbox::send(
        &env.db,
        env.broker.as_ref(),
        NewOutbound {
            config_id: env.config_id,
            to: format!("group:{GROUP}"),
            content: OutboundContent::Text {
                body: "Hallo Anna!".into(),
                preview_url: false,
            },
            reply_to: None,
            origin: Origin::Admin,
            sender_type: "agent".into(),
            sender_id: None,
            answers: None,
        },
    )
    .await
    .expect("send");
    let party = group(&env).await;
    assert_eq!(q.customer_id, party.customer_id, "the group's chat");
    assert_eq!(env.run_jobs("outbound", outbound.as_ref()).await, 1);
    let sent = graph.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0].to.as_str(), &sent[0].body["recipient_type"]),
        (GROUP, &json!("group"))
    );
    // Meta's receipt for a group send names the group and the member.
    let wamid = sent[0].wamid.clone();
    env.post(&envelope(json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
        "statuses": [{"id": wamid, "status": "read", "timestamp": now.to_string(),
            "recipient_id": GROUP, "recipient_type": "group",
            "recipient_participant_id": ANNA}]})))
        .await;
    let status = env
        .run_jobs(
            "status",
            (wapipe_workers::status::REGISTRATION.build)(&env.deps())
                .expect("status")
                .as_ref(),
        )
        .await;
    assert!(status >= 1);
    let m = env.message(&wamid).await;
    assert_eq!(m.status.to_string(), "read");
    assert_eq!(m.chat_id, env.message("wamid.G1").await.chat_id);
}
both_backends!(the_bot_stays_out_and_agents_reply_to_the_group);

async fn corpus_groups(b: Backend) {
    if corpus_sample("other", "piusalfred-group-lifecycle-update.json").is_none() {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    }
    let env = env(b).await;
    add_config(&env.db, PHONE_NUMBER_ID, WABA_ID, "Test Co").await;
    let sample = |f: &str| corpus_sample("other", f).expect("sample");
    let by_id = |id: &'static str| {
        let env = &env;
        async move {
            groups::Entity::find()
                .filter(groups::Column::WaGroupId.eq(id))
                .one(&env.db)
                .await
                .expect("query")
                .expect("group")
        }
    };
    for (file, id) in [
        ("piusalfred-group-lifecycle-update.json", "GROUP_ID_123"),
        ("piusalfred-group-participants-update.json", "GROUP_ID_456"),
        ("piusalfred-group-settings-update.json", "GROUP_ID_789"),
        ("piusalfred-group-status-update.json", "GROUP_ID_999"),
    ] {
        let event = env.post(&sample(file)).await;
        let before = without_updated_at(&by_id(id).await);
        let data = env.event(event).await.processed_data.expect("data");
        assert_eq!(data["groups_updated"], 1, "{file}: {data}");
        env.reset(event).await;
        env.process(event).await;
        assert_eq!(
            without_updated_at(&by_id(id).await),
            before,
            "replay of {file}"
        );
    }
    assert_eq!(
        by_id("GROUP_ID_123").await.subject.as_deref(),
        Some("SDK Test Group")
    );
    let g = by_id("GROUP_ID_789").await;
    assert_eq!(
        (g.subject.as_deref(), g.description.as_deref()),
        (Some("New Subject"), None)
    );
    assert_eq!(by_id("GROUP_ID_999").await.status, "suspended");
    let added = group_participants::Entity::find()
        .filter(group_participants::Column::GroupId.eq(by_id("GROUP_ID_456").await.id))
        .all(&env.db)
        .await
        .expect("members");
    assert_eq!(added.len(), 1);
    assert_eq!(
        (added[0].wa_id.as_deref(), added[0].status.as_str()),
        (Some("16505551234"), "member")
    );
}
both_backends!(corpus_groups);
