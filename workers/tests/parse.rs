//! The parse worker against the real schema, on PostgreSQL and SQLite: every
//! message type of `testkit/fixtures/` becomes the right row, customers,
//! chats and conversations follow the rules, reactions/edits/revokes apply
//! to their target, routing and templates work, and processing an event
//! twice changes no count.

use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::json;
use std::collections::HashSet;
use uuid::Uuid;
use wapipe_shared::broker::lane_for;
use wapipe_shared::entities::conversations::ConversationStatus;
use wapipe_shared::entities::messages::{Direction, MessageStatus, Origin};
use wapipe_shared::entities::templates;
use wapipe_shared::entities::webhook_events::EventStatus;
use wapipe_testkit::both_backends;
use wapipe_testkit::workers::*;
use wapipe_workers::parse::{self, Settled};

fn ts(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().expect("valid time")
}

const ALL_TYPES: &[&str] = &[
    "text.json",
    "text-referral.json",
    "image.json",
    "video.json",
    "audio-voice.json",
    "document.json",
    "sticker-animated.json",
    "location.json",
    "contacts.json",
    "button-reply.json",
    "list-reply.json",
    "nfm-reply.json",
    "button.json",
    "order.json",
    "system.json",
    "unsupported.json",
    "unknown-type.json",
    "forwarded-reply.json",
    "product-inquiry.json",
];

async fn every_type_becomes_its_row(b: Backend) {
    let env = env(b).await;
    for f in ALL_TYPES {
        let id = env.post(&fixture(f)).await;
        assert_eq!(env.event(id).await.status, EventStatus::Processed, "{f}");
    }

    let m = env.message("wamid.fx.text").await;
    assert_eq!(m.r#type, "text");
    assert_eq!(
        m.text.as_deref(),
        Some("Hallo, ich hätte gern einen Termin.")
    );
    assert_eq!(m.direction, Direction::Inbound);
    assert_eq!(m.origin, Origin::User);
    assert_eq!(m.sender_type, "customer");
    assert_eq!(m.status, MessageStatus::Delivered);
    assert!(!m.is_read);
    assert_eq!(m.timestamp, Some(ts(1_760_000_000)));
    assert_eq!(
        m.payload.as_ref().map(|p| p["text"]["body"].clone()),
        Some(json!("Hallo, ich hätte gern einen Termin."))
    );
    assert!(m.conversation_id.is_some());

    let m = env.message("wamid.fx.referral").await;
    assert_eq!(
        m.referral.as_ref().map(|r| r["ctwa_clid"].clone()),
        Some(json!("clid-1"))
    );

    let m = env.message("wamid.fx.image").await;
    assert_eq!(m.r#type, "image");
    assert_eq!(m.text.as_deref(), Some("Front door"));
    let media = m.media.expect("media");
    assert_eq!(media["id"], "700000000000001");
    assert_eq!(media["mime_type"], "image/jpeg");
    assert_eq!(media["sha256"], "aW1hZ2Utc2hh");
    assert_eq!(media["caption"], "Front door");
    assert_eq!(media["url"], "https://media.example/img1");

    // A numeric media id is kept as a string.
    let m = env.message("wamid.fx.video").await;
    assert_eq!(m.media.expect("media")["id"], "700000000000002");
    let m = env.message("wamid.fx.voice").await;
    assert_eq!(
        (m.r#type.as_str(), m.media.expect("media")["voice"].clone()),
        ("audio", json!(true))
    );
    let m = env.message("wamid.fx.document").await;
    let media = m.media.expect("media");
    assert_eq!(media["filename"], "invoice-03.pdf");
    assert_eq!(m.text.as_deref(), Some("Invoice March"));
    let m = env.message("wamid.fx.sticker").await;
    assert_eq!(m.media.expect("media")["animated"], true);
    assert_eq!(m.text, None);

    let m = env.message("wamid.fx.location").await;
    let loc = m.location.expect("location");
    assert_eq!(loc["name"], "Fernsehturm");
    assert_eq!(loc["latitude"], 52.520008);
    let m = env.message("wamid.fx.contacts").await;
    assert_eq!(
        m.contacts.expect("contacts")[0]["phones"][0]["wa_id"],
        "49301234567"
    );

    let m = env.message("wamid.fx.button_reply").await;
    assert_eq!(
        m.interactive,
        Some(json!({"type":"button_reply","id":"confirm-yes","title":"Yes, confirm"}))
    );
    assert_eq!(m.text.as_deref(), Some("Yes, confirm"));
    assert_eq!(
        m.reply_to_provider_id.as_deref(),
        Some("wamid.fx.outbound-1")
    );
    let m = env.message("wamid.fx.list_reply").await;
    assert_eq!(
        m.interactive,
        Some(
            json!({"type":"list_reply","id":"slot-0900","title":"09:00","description":"Monday morning"})
        )
    );
    assert_eq!(m.text.as_deref(), Some("09:00"));
    let m = env.message("wamid.fx.nfm_reply").await;
    let i = m.interactive.expect("interactive");
    assert_eq!(
        i["response_json"],
        json!({"flow_token":"ft-42","rating":"5","comment":"great"})
    );
    assert_eq!(i["flow_token"], "ft-42");
    let m = env.message("wamid.fx.button").await;
    assert_eq!(
        m.interactive,
        Some(json!({"type":"button","payload":"STOP_PROMO","text":"Stop promotions"}))
    );
    assert_eq!(m.text.as_deref(), Some("Stop promotions"));
    assert_eq!(
        m.reply_to_provider_id.as_deref(),
        Some("wamid.fx.template-1")
    );

    let m = env.message("wamid.fx.order").await;
    assert_eq!(m.text.as_deref(), Some("Please deliver tomorrow"));
    assert_eq!(m.payload.expect("payload")["order"]["catalog_id"], "880001");
    let m = env.message("wamid.fx.system").await;
    assert_eq!(m.r#type, "system");
    assert!(m.text.expect("text").contains("changed from"));

    let m = env.message("wamid.fx.unsupported").await;
    assert_eq!(m.r#type, "unsupported");
    assert_eq!(m.errors.expect("errors")[0]["code"], "131051");

    // A type nobody has seen: stored with its raw JSON, counted, no failure.
    let m = env.message("wamid.fx.hologram").await;
    assert_eq!(m.r#type, "hologram");
    assert_eq!(m.payload.expect("payload")["hologram"]["frames"], 24);

    let m = env.message("wamid.fx.forwarded").await;
    assert!(m.is_forwarded);
    assert_eq!(m.reply_to_provider_id.as_deref(), Some("wamid.fx.text"));
    let m = env.message("wamid.fx.product").await;
    assert_eq!(
        m.context.expect("context")["referred_product"]["product_retailer_id"],
        "sku-1"
    );

    // All from one customer: one customer, one chat, counters right. The
    // system fixture moved them to their new number; the messages of the
    // other fixtures, from the old one, still land in the same chat.
    let customers = env.customers().await;
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].wa_id.as_deref(), Some("4915187654321"));
    assert_eq!(
        customers[0].whatsapp_name.as_deref(),
        Some("Erika Mustermann")
    );
    assert_eq!(customers[0].total_chats, 1);
    let chats = env.chats().await;
    assert_eq!(chats.len(), 1);
    let n = ALL_TYPES.len() as i32;
    assert_eq!(
        (
            chats[0].total_messages,
            chats[0].customer_messages,
            chats[0].unread_count
        ),
        (n, n, n)
    );
    assert_eq!(env.count_messages().await, n as u64);
}
both_backends!(every_type_becomes_its_row);

async fn replay_and_duplicate_jobs_change_no_count(b: Backend) {
    let env = env(b).await;
    let mut ids = Vec::new();
    for f in ALL_TYPES
        .iter()
        .chain(["username-user.json", "statuses.json", "batch.json"].iter())
    {
        ids.push(env.post(&fixture(f)).await);
    }
    ids.push(env.post(&fixture("reaction.json")).await);
    ids.push(env.post(&fixture("edit.json")).await);
    ids.push(env.post(&fixture("revoke.json")).await);
    let before = env.counts().await;

    // The same job twice: the second finds the event settled.
    for id in &ids {
        assert_eq!(env.process(*id).await, Settled::AlreadyDone);
    }
    // A replay: back to `received` and processed again, in order.
    for id in &ids {
        env.reset(*id).await;
        assert_eq!(env.process(*id).await, Settled::Processed);
    }
    assert_eq!(env.counts().await, before);

    // Meta's duplicate delivery: the same body as a second event.
    let dup = env.post(&fixture("text.json")).await;
    assert_eq!(
        env.event(dup).await.processed_data.expect("data")["messages"]["duplicate"],
        1
    );
    // Two deliveries of one event at once.
    for id in &ids[..3] {
        env.reset(*id).await;
        let (a, c) = tokio::join!(env.process(*id), env.process(*id));
        assert!(
            matches!((&a, &c), (Settled::Processed, _) | (_, Settled::Processed)),
            "{a:?} {c:?}"
        );
    }
    assert_eq!(env.counts().await, before);
}
both_backends!(replay_and_duplicate_jobs_change_no_count);

async fn customers_by_wa_id_or_user_id(b: Backend) {
    let env = env(b).await;
    env.post(&fixture("username-user.json")).await;
    let c = env.customers().await;
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].wa_id.as_deref(), c[0].user_id.as_deref()),
        (None, Some("DE.1122334455"))
    );
    assert_eq!(c[0].name.as_deref(), Some("Nick"));

    // Later the same user shows a phone number too: still one customer.
    let both = envelope(messages_value(
        json!([{"profile": {"name": "Nick R."}, "wa_id": "4917000000001", "user_id": "DE.1122334455"}]),
        json!([text_msg(
            "wamid.u2",
            "4917000000001",
            1_760_000_200,
            "now with a number"
        )]),
    ));
    env.post(&both).await;
    let c = env.customers().await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].wa_id.as_deref(), Some("4917000000001"));
    assert_eq!(c[0].user_id.as_deref(), Some("DE.1122334455"));
    assert_eq!(c[0].whatsapp_name.as_deref(), Some("Nick R."));
    assert_eq!(c[0].name.as_deref(), Some("Nick R."));
    assert_eq!(c[0].last_inbound_at, Some(ts(1_760_000_200)));
    assert_eq!(env.chats().await.len(), 1);

    // An agent renamed the customer: a new profile name no longer overwrites it.
    let mut am: wapipe_shared::entities::customers::ActiveModel = c[0].clone().into();
    am.name = Set(Some("Nick (VIP)".into()));
    am.update(&env.db).await.expect("rename");
    let again = envelope(messages_value(
        json!([{"profile": {"name": "Nicky"}, "wa_id": "4917000000001"}]),
        json!([text_msg(
            "wamid.u3",
            "4917000000001",
            1_760_000_100,
            "older message, late"
        )]),
    ));
    env.post(&again).await;
    let c = env.customers().await;
    assert_eq!(c[0].name.as_deref(), Some("Nick (VIP)"));
    assert_eq!(c[0].whatsapp_name.as_deref(), Some("Nicky"));
    // last_inbound_at never goes back.
    assert_eq!(c[0].last_inbound_at, Some(ts(1_760_000_200)));

    // Number changed, same user id: same customer, new wa_id.
    let moved = envelope(messages_value(
        json!([{"profile": {"name": "Nicky"}, "wa_id": "4917000000002", "user_id": "DE.1122334455"}]),
        json!([text_msg(
            "wamid.u4",
            "4917000000002",
            1_760_000_300,
            "new phone"
        )]),
    ));
    env.post(&moved).await;
    let c = env.customers().await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].wa_id.as_deref(), Some("4917000000002"));
    assert_eq!(env.chats().await[0].total_messages, 4);

    // No wa_id, no user_id, no from: skipped and counted, the event is fine.
    let orphan = envelope(messages_value(
        json!([]),
        json!([{"id": "wamid.orphan", "type": "text", "text": {"body": "?"}}]),
    ));
    let id = env.post(&orphan).await;
    let ev = env.event(id).await;
    assert_eq!(ev.status, EventStatus::Processed);
    assert_eq!(ev.processed_data.expect("data")["messages"]["skipped"], 1);
    assert!(env.message_opt("wamid.orphan").await.is_none());
}
both_backends!(customers_by_wa_id_or_user_id);

async fn chat_counters_and_last_message_follow_meta_time(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.c2", CUSTOMER, 1_760_000_200, "second"))
        .await;
    env.post(&text_event(
        "wamid.c1",
        CUSTOMER,
        1_760_000_100,
        "first, arriving late",
    ))
    .await;
    let chat = &env.chats().await[0];
    assert_eq!(chat.unread_count, 2);
    assert_eq!(chat.total_messages, 2);
    assert_eq!(chat.last_message.as_deref(), Some("second"));
    assert_eq!(chat.last_message_time, Some(ts(1_760_000_200)));
    assert_eq!(chat.last_message_id, Some(env.message("wamid.c2").await.id));
    assert_eq!(chat.customer_name.as_deref(), Some("Erika"));

    // Media without caption shows as [type].
    env.post(&fixture("sticker-animated.json")).await;
    // The fixture's time is older than c2: last message stays.
    assert_eq!(env.chats().await[0].last_message.as_deref(), Some("second"));
    env.post(&envelope(messages_value(
        json!([{"wa_id": CUSTOMER}]),
        json!([{"from": CUSTOMER, "id": "wamid.c3", "timestamp": "1760000300", "type": "sticker",
                "sticker": {"id": "1", "mime_type": "image/webp"}}]),
    )))
    .await;
    let chat = &env.chats().await[0];
    assert_eq!(chat.last_message.as_deref(), Some("[sticker]"));
    assert_eq!(chat.unread_count, 4);
}
both_backends!(chat_counters_and_last_message_follow_meta_time);

async fn conversations_open_extend_and_expire(b: Backend) {
    let env = env(b).await;
    let now = Utc::now().timestamp();
    // Two hours ago, then one hour ago: one open window, extended.
    env.post(&text_event("wamid.w1", CUSTOMER, now - 7200, "a"))
        .await;
    env.post(&text_event("wamid.w2", CUSTOMER, now - 3600, "b"))
        .await;
    let convs = env.conversations().await;
    assert_eq!(convs.len(), 1, "{convs:?}");
    assert_eq!(convs[0].status, ConversationStatus::Open);
    assert_eq!(convs[0].message_count, 2);
    assert_eq!(convs[0].opened_at, ts(now - 7200));
    assert_eq!(convs[0].expires_at, ts(now - 3600) + Duration::hours(24));
    assert_eq!(
        env.message("wamid.w1").await.conversation_id,
        Some(convs[0].id)
    );
    assert_eq!(
        env.message("wamid.w2").await.conversation_id,
        Some(convs[0].id)
    );

    // A message from three days ago arrives late: its own window, long expired.
    env.post(&text_event("wamid.w0", CUSTOMER, now - 3 * 86400, "old"))
        .await;
    let convs = env.conversations().await;
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[0].status, ConversationStatus::Expired);
    assert_eq!(convs[0].message_count, 1);
    assert_eq!(convs[1].status, ConversationStatus::Open);

    // The window passes (simulated by moving it back): the sweep expires it,
    // and the next message opens a new one.
    env.exec(&format!(
        "UPDATE conversations SET expires_at = '{}' WHERE status = 'open'",
        (Utc::now() - Duration::minutes(1)).format("%Y-%m-%d %H:%M:%S+00:00")
    ))
    .await;
    assert_eq!(
        parse::expire_conversations(&env.db).await.expect("sweep"),
        1
    );
    assert_eq!(
        parse::expire_conversations(&env.db).await.expect("sweep"),
        0
    );
    env.post(&text_event("wamid.w3", CUSTOMER, now, "c")).await;
    let convs = env.conversations().await;
    assert_eq!(convs.len(), 3);
    let open: Vec<_> = convs
        .iter()
        .filter(|c| c.status == ConversationStatus::Open)
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(
        env.message("wamid.w3").await.conversation_id,
        Some(open[0].id)
    );

    // Lazy expiry: the window passes with no sweep; the next message expires it.
    env.exec(&format!(
        "UPDATE conversations SET expires_at = '{}' WHERE status = 'open'",
        (Utc::now() - Duration::minutes(1)).format("%Y-%m-%d %H:%M:%S+00:00")
    ))
    .await;
    env.post(&text_event("wamid.w4", CUSTOMER, now + 1, "d"))
        .await;
    let convs = env.conversations().await;
    assert_eq!(convs.len(), 4);
    assert_eq!(
        convs
            .iter()
            .filter(|c| c.status == ConversationStatus::Open)
            .count(),
        1
    );
}
both_backends!(conversations_open_extend_and_expire);

async fn reactions_edits_and_revokes_apply_to_their_target(b: Backend) {
    let env = env(b).await;
    env.post(&fixture("text.json")).await;
    // Effects before their target exists are stored, not applied, not failed.
    let early = env.post(&envelope(messages_value(
        json!([{"wa_id": CUSTOMER}]),
        json!([{"from": CUSTOMER, "id": "wamid.early", "timestamp": "1760000001", "type": "reaction",
                "reaction": {"message_id": "wamid.not-yet", "emoji": "🎉"}}]),
    )))
    .await;
    assert_eq!(
        env.event(early).await.processed_data.expect("data")["effects_target_missing"],
        1
    );

    let r = env.post(&fixture("reaction.json")).await;
    let m = env.message("wamid.fx.text").await;
    assert_eq!(
        m.reactions.as_ref().expect("reactions")[CUSTOMER]["emoji"],
        "👍"
    );
    let reaction = env.message("wamid.fx.reaction").await;
    assert_eq!(reaction.r#type, "reaction");
    assert_eq!(
        reaction.reaction,
        Some(json!({"message_id": "wamid.fx.text", "emoji": "👍"}))
    );
    // A reaction is not an unread message of its own.
    assert_eq!(env.chats().await[0].unread_count, 1);
    assert_eq!(env.chats().await[0].total_messages, 3);
    assert_eq!(env.chats().await[0].last_message_id, Some(m.id));

    // Replaying the reaction changes nothing.
    env.reset(r).await;
    env.process(r).await;
    assert_eq!(env.message("wamid.fx.text").await.reactions, m.reactions);

    env.post(&fixture("reaction-removed.json")).await;
    assert_eq!(env.message("wamid.fx.text").await.reactions, None);

    let e = env.post(&fixture("edit.json")).await;
    let m = env.message("wamid.fx.text").await;
    assert_eq!(
        m.text.as_deref(),
        Some("Hallo, ich hätte gern zwei Termine.")
    );
    assert!(m.is_edited);
    let history = m.edit_history.clone().expect("history");
    assert_eq!(history.as_array().map(Vec::len), Some(1));
    assert_eq!(history[0]["text"], "Hallo, ich hätte gern einen Termin.");
    env.reset(e).await;
    env.process(e).await;
    assert_eq!(
        env.message("wamid.fx.text").await.edit_history,
        m.edit_history,
        "edit applied once"
    );

    let rv = env.post(&fixture("revoke.json")).await;
    let m = env.message("wamid.fx.text").await;
    assert!(m.is_deleted);
    assert_eq!(m.deleted_at, Some(ts(1_760_000_500)));
    assert_eq!(
        m.text.as_deref(),
        Some("Hallo, ich hätte gern zwei Termine."),
        "history kept"
    );
    env.reset(rv).await;
    env.process(rv).await;
    assert_eq!(env.message("wamid.fx.text").await.deleted_at, m.deleted_at);

    // Someone else cannot edit or revoke the customer's message.
    env.post(&envelope(messages_value(
        json!([{"wa_id": "4900000000009"}]),
        json!([{"from": "4900000000009", "id": "wamid.intruder", "timestamp": "1760000900", "type": "edit",
                "edit": {"original_message_id": "wamid.fx.text", "message": {"type": "text", "text": {"body": "pwned"}}}}]),
    )))
    .await;
    assert_ne!(
        env.message("wamid.fx.text").await.text.as_deref(),
        Some("pwned")
    );
}
both_backends!(reactions_edits_and_revokes_apply_to_their_target);

async fn routing_batches_unknowns_and_updates(b: Backend) {
    let env = env(b).await;
    let second = add_config(&env.db, "15550000002", WABA, "Test Co").await;
    // Another company's number: a body signed for ours must not reach it.
    let foreign = add_config(&env.db, "15550000003", "15550008888", "Other Co").await;
    let now = Utc::now();
    templates::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(env.config_id),
        name: Set("order_update".into()),
        language: Set("en_US".into()),
        category: Set("UTILITY".into()),
        status: Set("PENDING".into()),
        components: Set(None),
        whatsapp_template_id: Set(None),
        rejected_reason: Set(None),
        quality_score: Set(None),
        previous_category: Set(None),
        usage_count: Set(0),
        created_by: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        ..Default::default()
    }
    .insert(&env.db)
    .await
    .expect("template");
    templates::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(second),
        name: Set("promo_spring".into()),
        language: Set("de".into()),
        category: Set("UTILITY".into()),
        status: Set("APPROVED".into()),
        components: Set(None),
        whatsapp_template_id: Set(Some("5550002".into())),
        rejected_reason: Set(None),
        quality_score: Set(Some("GREEN".into())),
        previous_category: Set(None),
        usage_count: Set(0),
        created_by: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        ..Default::default()
    }
    .insert(&env.db)
    .await
    .expect("template");

    let id = env.post(&fixture("batch.json")).await;
    let ev = env.event(id).await;
    assert_eq!(ev.status, EventStatus::Processed);
    let data = ev.processed_data.expect("data");
    assert_eq!(data["entries"], 2);
    assert_eq!(data["changes"], 4);
    assert_eq!(data["routed_changes"], 3);
    assert_eq!(data["unroutable_changes"], 1);
    assert_eq!(data["messages"]["new"], 4);
    assert_eq!(data["templates_updated"], 1);
    for (w, cfg) in [
        ("wamid.fx.batch-1", env.config_id),
        ("wamid.fx.batch-2", env.config_id),
        ("wamid.fx.batch-3", env.config_id),
        ("wamid.fx.batch-4", second),
    ] {
        assert_eq!(env.message(w).await.config_id, cfg, "{w}");
    }
    assert!(env.message_opt("wamid.fx.batch-5").await.is_none());
    assert_eq!(env.chats().await.len(), 3);
    let t = templates::Entity::find()
        .all(&env.db)
        .await
        .expect("templates");
    let order = t
        .iter()
        .find(|t| t.name == "order_update")
        .expect("order_update");
    assert_eq!(order.status, "APPROVED");
    assert_eq!(order.whatsapp_template_id.as_deref(), Some("5550001"));

    // By template id, language spelled differently, reason kept.
    env.post(&fixture("template-status-rejected.json")).await;
    let t = templates::Entity::find_by_id(order.id)
        .one(&env.db)
        .await
        .expect("q")
        .expect("t");
    assert_eq!(
        (t.status.as_str(), t.rejected_reason.as_deref()),
        ("REJECTED", Some("INVALID_FORMAT"))
    );
    // Quality and category, on the second config of the same WABA.
    env.post(&fixture("template-quality.json")).await;
    env.post(&fixture("template-category.json")).await;
    let t = templates::Entity::find()
        .all(&env.db)
        .await
        .expect("templates");
    let promo = t.iter().find(|t| t.name == "promo_spring").expect("promo");
    assert_eq!(promo.quality_score.as_deref(), Some("YELLOW"));
    assert_eq!(
        (promo.category.as_str(), promo.previous_category.as_deref()),
        ("MARKETING", Some("UTILITY"))
    );

    // Account and other updates: kept in processed_data, unknown fields counted.
    let id = env.post(&fixture("account-update.json")).await;
    let data = env.event(id).await.processed_data.expect("data");
    let updates = data["updates"].as_array().expect("updates");
    assert_eq!(updates.len(), 3);
    assert_eq!(updates[0]["field"], "account_update");
    assert_eq!(updates[0]["value"]["event"], "VERIFIED_ACCOUNT");
    assert_eq!(
        updates[0]["config_ids"].as_array().map(Vec::len),
        Some(2),
        "both configs of the WABA"
    );
    assert_eq!(data["unknown"]["field"], 1);

    // Value-level errors are recorded; the event is still processed.
    let id = env.post(&fixture("value-errors.json")).await;
    let ev = env.event(id).await;
    assert_eq!(ev.status, EventStatus::Processed);
    let data = ev.processed_data.expect("data");
    assert_eq!(data["errors"][0]["code"], "131000");
    assert_eq!(data["errors"][0]["details"], "Unsupported webhook payload");

    // Nothing routes: ignored.
    let id = env.post(&fixture("unroutable.json")).await;
    let ev = env.event(id).await;
    assert_eq!(ev.status, EventStatus::Ignored);
    assert_eq!(ev.processed_data.expect("data")["unroutable_changes"], 2);

    // The foreign company's number, in a body tied to our config: ignored.
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "15550008888", "changes": [
        {"field": "messages", "value": {"metadata": {"phone_number_id": "15550000003"},
         "contacts": [{"wa_id": "1"}], "messages": [text_msg("wamid.cross", "1", 1_760_000_000, "x")]}}]}]});
    let id = env.post(&body).await;
    assert_eq!(env.event(id).await.status, EventStatus::Ignored);
    assert!(env.message_opt("wamid.cross").await.is_none());
    let _ = foreign;
}
both_backends!(routing_batches_unknowns_and_updates);

async fn statuses_are_stored_in_the_parse_transaction(b: Backend) {
    let env = env(b).await;
    let id = env.post(&fixture("statuses.json")).await;
    let data = env.event(id).await.processed_data.expect("data");
    assert_eq!(data["statuses"]["new"], 5);
    assert_eq!(
        data["unknown"]["status"], 1,
        "`deleted` is not a status we rank"
    );
    let out1 = env.status_events("wamid.fx.out-1").await;
    assert_eq!(out1.len(), 2);
    assert_eq!(out1[0].status, "sent");
    assert_eq!(out1[0].recipient_id.as_deref(), Some(CUSTOMER));
    assert_eq!(
        out1[0].pricing.as_ref().map(|p| p["category"].clone()),
        Some(json!("service"))
    );
    assert_eq!(
        out1[0].conversation.as_ref().map(|c| c["id"].clone()),
        Some(json!("conv-1"))
    );
    assert_eq!(out1[0].webhook_event_id, Some(id));
    assert!(!out1[0].applied);
    assert_eq!(out1[1].timestamp, ts(1_760_000_011), "numeric timestamp");
    // Error codes, number or string, end up as strings.
    assert_eq!(
        env.status_events("wamid.fx.out-2").await[0]
            .error_code
            .as_deref(),
        Some("131049")
    );
    assert_eq!(
        env.status_events("wamid.fx.out-3").await[0]
            .error_code
            .as_deref(),
        Some("130472")
    );

    // One status job per wamid, on the recipient's lane.
    let jobs = env.take_jobs("status").await;
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    let (lane, body) = &jobs
        .iter()
        .find(|(_, b)| b["provider_message_id"] == "wamid.fx.out-1")
        .expect("job");
    assert_eq!(lane, &format!("{PHONE}:{CUSTOMER}"));
    assert_eq!(body["config_id"], json!(env.config_id));

    // A replay stores nothing twice.
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(env.status_events("wamid.fx.out-1").await.len(), 2);
    let data = env.event(id).await.processed_data.expect("data");
    assert_eq!(
        (
            data["statuses"]["new"].clone(),
            data["statuses"]["duplicate"].clone()
        ),
        (json!(0), json!(5))
    );
}
both_backends!(statuses_are_stored_in_the_parse_transaction);

async fn fan_out_jobs_and_realtime(b: Backend) {
    let env = env(b).await;
    add_config(&env.db, "15550000002", WABA, "Test Co").await;
    let mut rt = env.embedded.subscribe_realtime().await.expect("subscribe");
    let id = env.store(&fixture("batch.json")).await;
    env.process(id).await;
    let events = Env::drain_realtime(&mut rt).await;
    let count = |events: &[serde_json::Value], name: &str| {
        events.iter().filter(|e| e["event"] == name).count()
    };
    assert_eq!(count(&events, "message.created"), 4);
    assert_eq!(count(&events, "chat.updated"), 3);
    let created = events
        .iter()
        .find(|e| e["event"] == "message.created")
        .expect("created");
    assert_eq!(created["data"]["text"], "uno");
    assert!(created["chat_id"].is_string() && created["message_id"].is_string());
    let chat = events
        .iter()
        .find(|e| e["event"] == "chat.updated" && e["data"]["customer_name"] == "Ana")
        .expect("chat");
    assert_eq!(chat["data"]["unread_count"], 2);
    assert_eq!(chat["data"]["last_message"], "tres");
    let customers = [
        "15550000001:34600000001",
        "15550000001:34600000002",
        "15550000002:34600000003",
    ];
    let jobs = env.take_jobs("scenario").await;
    if !wapipe_workers::registry::consumes(wapipe_shared::jobs::Queue::Scenario) {
        // No worker reads `message.inbound` in this build: nothing may be
        // left to pile up in its queue.
        assert!(jobs.is_empty(), "{jobs:?}");
        return;
    }
    // One job per lane, each carrying its lane's messages in order.
    let lanes = env.broker.lanes();
    let mut want_lanes: Vec<u16> = customers.iter().map(|k| lane_for(k, lanes)).collect();
    want_lanes.sort_unstable();
    want_lanes.dedup();
    let mut got_lanes: Vec<u16> = jobs.iter().map(|(l, _)| lane_for(l, lanes)).collect();
    got_lanes.sort_unstable();
    assert_eq!(got_lanes, want_lanes, "{jobs:?}");
    assert!(jobs.iter().all(|(l, _)| customers.contains(&l.as_str())));
    let items: Vec<&serde_json::Value> = jobs
        .iter()
        .flat_map(|(_, b)| b["messages"].as_array().expect("a list of messages"))
        .collect();
    assert_eq!(items.len(), 4);
    let mut ids = HashSet::new();
    for item in &items {
        assert_eq!(item["is_new"], true);
        assert!(ids.insert(item["message_id"].as_str().expect("id").to_owned()));
    }
    for (_, body) in &jobs {
        // Within a job, one customer's messages in the order they were stored.
        let list = body["messages"].as_array().expect("list");
        for pair in list.windows(2) {
            if pair[0]["customer_id"] == pair[1]["customer_id"] {
                assert!(pair[0]["message_id"].as_str() < pair[1]["message_id"].as_str());
            }
        }
    }
    // Replayed: published again (consumers are idempotent), marked not new.
    env.reset(id).await;
    env.process(id).await;
    let events = Env::drain_realtime(&mut rt).await;
    assert_eq!(
        count(&events, "message.created"),
        0,
        "nothing new on a replay"
    );
    let jobs = env.take_jobs("scenario").await;
    let items: Vec<&serde_json::Value> = jobs
        .iter()
        .flat_map(|(_, b)| b["messages"].as_array().expect("a list of messages"))
        .collect();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|m| m["is_new"] == false));
}
both_backends!(fan_out_jobs_and_realtime);

async fn hostile_values_never_fail_the_event(b: Backend) {
    let env = env(b).await;
    let weird = envelope(json!({
        "metadata": {"phone_number_id": PHONE},
        "contacts": [{"profile": {"name": "Nul\u{0}Byte"}, "wa_id": CUSTOMER}, "not a contact", 7],
        "messages": [
            {"from": CUSTOMER, "id": "wamid.h1", "timestamp": "never", "type": "text", "text": {"body": "a\u{0}b"}},
            {"from": CUSTOMER, "id": 12345, "timestamp": 1e30, "type": ["text"], "text": "not an object"},
            {"from": CUSTOMER, "id": "wamid.h3", "timestamp": -1, "type": "interactive", "interactive": {"type": "nfm_reply", "nfm_reply": {"response_json": "{not json"}}},
            {"from": CUSTOMER, "id": "wamid.h4", "type": "reaction", "reaction": {"message_id": 5, "emoji": 3}},
            {"from": CUSTOMER, "id": "wamid.h5", "type": "edit", "edit": "nope"},
            "a string message",
            null
        ],
        "statuses": [{"id": "wamid.s1", "status": 5, "timestamp": {}, "errors": "bad"}, {"status": "read"}, 3],
        "errors": [1, {"code": {"nested": true}}]
    }));
    let id = env.post(&weird).await;
    let ev = env.event(id).await;
    assert_eq!(ev.status, EventStatus::Processed, "{:?}", ev.error);
    let m = env.message("wamid.h1").await;
    assert_eq!(m.text.as_deref(), Some("ab"));
    assert_eq!(m.timestamp, None);
    // A type that is no string, and a text that is no object: kept raw.
    let odd = env.message("12345").await;
    assert_eq!(
        (odd.r#type.as_str(), odd.text.as_deref()),
        ("unknown", None)
    );
    assert_eq!(odd.timestamp, None);
    let i = env
        .message("wamid.h3")
        .await
        .interactive
        .expect("interactive");
    assert_eq!(i["response_json"], "{not json");
    assert_eq!(
        env.customers().await[0].whatsapp_name.as_deref(),
        Some("NulByte")
    );
    assert_eq!(env.status_events("wamid.s1").await[0].status, "unknown");

    // A body that is JSON but no envelope: processed as nothing, ignored.
    let id = env.post(&json!({"hello": "world"})).await;
    assert_eq!(env.event(id).await.status, EventStatus::Ignored);
    // Not JSON at all (only a replayed rejected event could get here): rejected.
    let id = env.store_raw(b"{oops").await;
    assert_eq!(env.process(id).await, Settled::Rejected);
}
both_backends!(hostile_values_never_fail_the_event);

async fn missing_event_is_permanent_and_mark_failed_works(b: Backend) {
    let env = env(b).await;
    let err = parse::process_event(&env.db, env.broker.as_ref(), Uuid::now_v7())
        .await
        .expect_err("missing event");
    assert!(matches!(
        err,
        wapipe_workers::runtime::JobError::Permanent(_)
    ));
    let id = env.store(&fixture("text.json")).await;
    parse::mark_failed(&env.db, id, "boom").await.expect("mark");
    let ev = env.event(id).await;
    assert_eq!(
        (ev.status, ev.error.as_deref()),
        (EventStatus::Failed, Some("boom"))
    );
    assert_eq!(env.process(id).await, Settled::AlreadyDone);
}
both_backends!(missing_event_is_permanent_and_mark_failed_works);

/// Ids far longer than Meta's, from a hostile but signed body: indexed
/// columns have a size limit (PostgreSQL B-tree entries), so they are
/// stored as a stable hash and the event still succeeds, twice.
async fn huge_ids_are_bounded(b: Backend) {
    let env = env(b).await;
    let wamid = format!("wamid.{}", "W".repeat(10_000));
    let from = "9".repeat(10_000);
    let body = envelope(json!({
        "metadata": {"phone_number_id": PHONE},
        "contacts": [{"profile": {"name": "N".repeat(10_000)}, "wa_id": from}],
        "messages": [text_msg(&wamid, &from, 1_760_000_000, &"long text ".repeat(10_000))],
        "statuses": [{"id": wamid, "status": "s".repeat(10_000), "timestamp": "1760000000",
                      "recipient_id": from}]
    }));
    let id = env.post(&body).await;
    assert_eq!(env.event(id).await.status, EventStatus::Processed);
    let before = env.counts().await;
    assert_eq!(env.count_messages().await, 1);
    let m = &before["messages"][0];
    assert!(m[1].as_str().is_some_and(|w| w.starts_with("wapipe:long:")));
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(env.counts().await, before);
}
both_backends!(huge_ids_are_bounded);

/// What the parse worker wrote, without ids (which differ between runs):
/// messages by wamid, chats and conversations by customer, customers, the
/// number of receipts, and each event's status and summary.
async fn canonical(env: &Env, events: &[Uuid]) -> serde_json::Value {
    let customers = env.customers().await;
    let customer_key = |id: Uuid| {
        customers
            .iter()
            .find(|c| c.id == id)
            .map(|c| format!("{:?}/{:?}", c.wa_id, c.user_id))
            .unwrap_or_default()
    };
    let mut msgs = Vec::new();
    let all = wapipe_shared::entities::messages::Entity::find()
        .all(&env.db)
        .await
        .expect("messages");
    let wamid_of = |id: Option<Uuid>| {
        all.iter()
            .find(|m| Some(m.id) == id)
            .and_then(|m| m.provider_message_id.clone())
    };
    let convs = env.conversations().await;
    let conv_key = |id: Option<Uuid>| {
        convs
            .iter()
            .position(|c| Some(c.id) == id)
            .map(|i| i as i64)
            .unwrap_or(-1)
    };
    for m in &all {
        msgs.push(json!([
            m.provider_message_id,
            customer_key(m.customer_id),
            m.text,
            m.reactions,
            m.edit_history.as_ref().map(|h| h.as_array().map(Vec::len)),
            m.is_edited,
            m.is_deleted,
            conv_key(m.conversation_id),
        ]));
    }
    msgs.sort_by_key(|v| v[0].to_string());
    let mut chats: Vec<_> = env
        .chats()
        .await
        .into_iter()
        .map(|c| {
            json!([
                customer_key(c.customer_id),
                c.customer_name,
                c.unread_count,
                c.total_messages,
                c.customer_messages,
                c.last_message,
                c.last_message_time,
                wamid_of(c.last_message_id),
            ])
        })
        .collect();
    chats.sort_by_key(|v| v[0].to_string());
    let convs: Vec<_> = convs
        .iter()
        .map(|c| {
            json!([
                customer_key(c.customer_id),
                c.status,
                c.message_count,
                c.opened_at,
                c.expires_at,
                c.closed_at
            ])
        })
        .collect();
    let mut custs: Vec<_> = customers
        .iter()
        .map(|c| {
            json!([
                c.wa_id,
                c.user_id,
                c.name,
                c.whatsapp_name,
                c.total_chats,
                c.last_contact_at
            ])
        })
        .collect();
    custs.sort_by_key(|v| v.to_string());
    let mut evs = Vec::new();
    for id in events {
        let e = env.event(*id).await;
        evs.push(json!([e.status, e.processed_data]));
    }
    let receipts = env.status_events("wamid.b.out").await.len();
    json!({"messages": msgs, "chats": chats, "conversations": convs, "customers": custs,
           "events": evs, "receipts": receipts})
}

/// Events that exercise every rule that spans messages: one customer
/// writing out of order and twice in one body, a reaction and an edit to
/// a message of an earlier event, a wamid sent twice, a username user seen
/// first by user_id, a late message from an old window, duplicate receipts.
fn batch_events(now: i64) -> Vec<serde_json::Value> {
    let other = "4917000000002";
    vec![
        text_event("wamid.b1", CUSTOMER, now - 600, "one"),
        envelope(messages_value(
            json!([{"profile": {"name": "Erika M."}, "wa_id": CUSTOMER}]),
            json!([
                text_msg("wamid.b3", CUSTOMER, now - 300, "three"),
                text_msg("wamid.b2", CUSTOMER, now - 400, "two, late"),
            ]),
        )),
        envelope(messages_value(
            json!([{"wa_id": CUSTOMER}]),
            json!([{"from": CUSTOMER, "id": "wamid.b.react", "timestamp": (now - 200).to_string(),
                    "type": "reaction", "reaction": {"message_id": "wamid.b1", "emoji": "👍"}}]),
        )),
        envelope(messages_value(
            json!([{"wa_id": CUSTOMER}]),
            json!([{"from": CUSTOMER, "id": "wamid.b.edit", "timestamp": (now - 100).to_string(),
                    "type": "edit", "edit": {"original_message_id": "wamid.b3",
                    "message": {"type": "text", "text": {"body": "three, edited"}}}}]),
        )),
        text_event("wamid.b1", CUSTOMER, now - 600, "one"),
        text_event("wamid.b4", other, now - 50, "hello from someone else"),
        envelope(messages_value(
            json!([{"profile": {"name": "Nick"}, "user_id": "US.b.1"}]),
            json!([{"from_user_id": "US.b.1", "id": "wamid.b.user", "timestamp": (now - 40).to_string(),
                    "type": "text", "text": {"body": "username user"}}]),
        )),
        text_event("wamid.b.old", other, now - 5 * 86400, "from an old window"),
        status_event("wamid.b.out", "sent", now - 30, CUSTOMER),
        status_event("wamid.b.out", "delivered", now - 20, CUSTOMER),
        status_event("wamid.b.out", "sent", now - 30, CUSTOMER),
        text_event("wamid.b5", CUSTOMER, now - 10, "five"),
    ]
}

/// A batch (`process_events`, as the runtime hands the worker what has
/// queued up on a lane) writes exactly what processing its events one by
/// one writes, and a replay of the whole batch changes nothing.
async fn a_batch_equals_one_by_one(b: Backend) {
    let now = Utc::now().timestamp();
    let single = env(b).await;
    let mut ids_single = Vec::new();
    for body in batch_events(now) {
        ids_single.push(single.post(&body).await);
    }
    let batch = env(b).await;
    let mut ids_batch = Vec::new();
    for body in batch_events(now) {
        ids_batch.push(batch.store(&body).await);
    }
    // The same event twice in one batch (a redelivery queued behind itself).
    let mut with_dup = ids_batch.clone();
    with_dup.push(ids_batch[0]);
    let settled = parse::process_events(&batch.db, batch.broker.as_ref(), &with_dup)
        .await
        .expect("batch");
    assert_eq!(settled.len(), with_dup.len());
    assert!(
        settled[..ids_batch.len()]
            .iter()
            .all(|s| *s == Settled::Processed),
        "{settled:?}"
    );
    assert_eq!(settled[ids_batch.len()], Settled::AlreadyDone);

    let one_by_one = canonical(&single, &ids_single).await;
    let batched = canonical(&batch, &ids_batch).await;
    assert_eq!(batched, one_by_one);
    // The rules really ran (not two equally empty databases).
    assert_eq!(batched["messages"].as_array().map(Vec::len), Some(9));
    assert_eq!(batched["receipts"], 2);
    let b1 = batch.message("wamid.b1").await;
    assert_eq!(b1.reactions.expect("reaction")[CUSTOMER]["emoji"], "👍");
    assert_eq!(
        batch.message("wamid.b3").await.text.as_deref(),
        Some("three, edited")
    );

    for id in &ids_batch {
        batch.reset(*id).await;
    }
    let before = batch.counts().await;
    parse::process_events(&batch.db, batch.broker.as_ref(), &ids_batch)
        .await
        .expect("replayed batch");
    assert_eq!(
        batch.counts().await,
        before,
        "a replayed batch changes no count"
    );
}
both_backends!(a_batch_equals_one_by_one);

/// Meta delivers out of order: a reaction, an edit and a revoke that come
/// before their target are stored and applied when the target arrives,
/// once (a replay of the target changes nothing); an edit by someone else
/// never applies and stops waiting.
async fn effects_before_their_target_apply_when_it_arrives(b: Backend) {
    let env = env(b).await;
    let intruder = "4900000000009";
    let effect = |id: &str, from: &str, ts: i64, kind: &str, body: serde_json::Value| {
        let mut m = json!({"from": from, "id": id, "timestamp": ts.to_string(), "type": kind});
        m[kind] = body;
        envelope(messages_value(json!([{"wa_id": from}]), json!([m])))
    };
    let early = [
        env.post(&effect(
            "wamid.l.react",
            CUSTOMER,
            1_760_000_010,
            "reaction",
            json!({"message_id": "wamid.l.target", "emoji": "🎉"}),
        ))
        .await,
        env.post(&effect(
            "wamid.l.edit",
            CUSTOMER,
            1_760_000_020,
            "edit",
            json!({"original_message_id": "wamid.l.target",
                   "message": {"type": "text", "text": {"body": "edited before it arrived"}}}),
        ))
        .await,
        env.post(&effect(
            "wamid.l.intruder",
            intruder,
            1_760_000_030,
            "edit",
            json!({"original_message_id": "wamid.l.target",
                   "message": {"type": "text", "text": {"body": "pwned"}}}),
        ))
        .await,
    ];
    for id in early {
        assert_eq!(
            env.event(id).await.processed_data.expect("data")["effects_target_missing"],
            1
        );
    }
    assert_eq!(
        env.message("wamid.l.edit").await.effect_target.as_deref(),
        Some("wamid.l.target"),
        "kept pending"
    );

    let t = env
        .post(&text_event(
            "wamid.l.target",
            CUSTOMER,
            1_760_000_000,
            "original",
        ))
        .await;
    let m = env.message("wamid.l.target").await;
    assert_eq!(
        m.reactions.as_ref().expect("reactions")[CUSTOMER]["emoji"],
        "🎉"
    );
    assert_eq!(m.text.as_deref(), Some("edited before it arrived"));
    assert!(m.is_edited);
    assert_eq!(
        m.edit_history
            .as_ref()
            .and_then(|h| h.as_array())
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        env.event(t).await.processed_data.expect("data")["late_effects_applied"],
        2,
        "the reaction and the author's edit; not the intruder's"
    );
    for w in ["wamid.l.react", "wamid.l.edit", "wamid.l.intruder"] {
        assert_eq!(
            env.message(w).await.effect_target,
            None,
            "{w} no longer pending"
        );
    }

    // A replay of the target applies nothing twice.
    let before = env.counts().await;
    env.reset(t).await;
    env.process(t).await;
    assert_eq!(env.counts().await, before);

    // A revoke before its target: the target arrives deleted.
    env.post(&effect(
        "wamid.l.revoke",
        CUSTOMER,
        1_760_000_110,
        "revoke",
        json!({"original_message_id": "wamid.l.second"}),
    ))
    .await;
    env.post(&text_event(
        "wamid.l.second",
        CUSTOMER,
        1_760_000_100,
        "oops",
    ))
    .await;
    let second = env.message("wamid.l.second").await;
    assert!(second.is_deleted);
    assert_eq!(second.deleted_at, Some(ts(1_760_000_110)));
}
both_backends!(effects_before_their_target_apply_when_it_arrives);

/// On a new, never analysed PostgreSQL database (where a prepared
/// statement's cached generic plan is chosen), looking a message up by
/// (config, wamid) uses the unique index, not an index on the config alone
/// (which scanned every message of the config per status receipt).
#[tokio::test]
async fn wamid_lookup_uses_the_unique_index_on_a_fresh_database() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let env = env(Backend::Postgres).await;
    let txn = env.db.begin().await.expect("begin");
    for sql in [
        "SET LOCAL plan_cache_mode = force_generic_plan",
        "PREPARE by_wamid(uuid, text) AS SELECT * FROM messages WHERE config_id = $1 AND provider_message_id = $2 LIMIT 1",
        "PREPARE conv_window(uuid, uuid, text, timestamptz, timestamptz) AS SELECT * FROM conversations \
         WHERE config_id IN ($1) AND customer_id IN ($2) AND (status = $3 OR (opened_at <= $4 AND expires_at >= $5))",
    ] {
        txn.execute_unprepared(sql).await.expect(sql);
    }
    for (query, index) in [
        (
            "EXPLAIN EXECUTE by_wamid('00000000-0000-0000-0000-000000000000', 'w')",
            "ux_messages_wamid",
        ),
        (
            "EXPLAIN EXECUTE conv_window('00000000-0000-0000-0000-000000000000', \
          '00000000-0000-0000-0000-000000000000', 'open', now(), now())",
            "ix_conversations_window",
        ),
    ] {
        let plan: Vec<String> = txn
            .query_all_raw(sea_orm::Statement::from_string(
                txn.get_database_backend(),
                query,
            ))
            .await
            .expect("explain")
            .iter()
            .map(|r| r.try_get_by_index::<String>(0).expect("plan line"))
            .collect();
        assert!(plan.iter().any(|l| l.contains(index)), "{query}: {plan:#?}");
        // Both key columns in the index condition, not one plus a filter.
        let cond = plan
            .iter()
            .find(|l| l.contains("Index Cond"))
            .unwrap_or_else(|| panic!("{query}: {plan:#?}"));
        assert!(
            cond.contains("provider_message_id") || cond.contains("customer_id"),
            "{query}: {plan:#?}"
        );
    }
    txn.rollback().await.expect("rollback");
}
