//! Meta's webhook fields beyond messages and statuses, applied by the
//! parse worker on PostgreSQL and SQLite: template status, quality,
//! components and category updates change the `templates` row, and
//! `user_preferences` flags customers who stopped marketing messages. Each
//! kind from our own fixture and from its public sample
//! (`shared/meta-corpus`, skipped when absent), and a replay of each
//! changes nothing more.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_domain::templates::body_parameters;
use wapipe_shared::entities::{calls, customers, events, templates, whatsapp_configs};
use wapipe_testkit::both_backends;
use wapipe_testkit::corpus::corpus_sample;
use wapipe_testkit::workers::*;

async fn template(env: &Env, id: Uuid) -> templates::Model {
    templates::Entity::find_by_id(id)
        .one(&env.db)
        .await
        .expect("query")
        .expect("template")
}

/// Posts `body`, then replays it (what `wapipe replay` does) and checks the
/// row `read` returns is the same after the replay as after the first run.
/// Returns the first run's `processed_data` and the row.
async fn post_and_replay<T, F, Fut>(env: &Env, body: &Value, read: F) -> (Value, T)
where
    T: serde::Serialize,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let id = env.post(body).await;
    let first = read().await;
    let data = env.event(id).await.processed_data.expect("processed data");
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(
        without_updated_at(&read().await),
        without_updated_at(&first),
        "replay of {body}"
    );
    (data, first)
}

/// A template known to Meta by `meta_id`, as the sync leaves it.
async fn meta_template(env: &Env, config: Uuid, meta_id: &str, name: &str, lang: &str) -> Uuid {
    let id = add_template(&env.db, config, name, lang, "Hello", "PENDING").await;
    templates::Entity::update_many()
        .col_expr(
            templates::Column::WhatsappTemplateId,
            sea_orm::sea_query::Expr::value(meta_id),
        )
        .filter(templates::Column::Id.eq(id))
        .exec(&env.db)
        .await
        .expect("meta id");
    id
}

fn tpl_value(extra: Value) -> Value {
    let mut v = json!({"message_template_id": 777, "message_template_name": "order_confirmation",
        "message_template_language": "en_US"});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

async fn template_updates_apply_once(b: Backend) {
    let env = env(b).await;
    let id = meta_template(&env, env.config_id, "777", "order_confirmation", "en_US").await;
    let read = || template(&env, id);
    let status = "message_template_status_update";

    let approved = field_event(
        WABA,
        1_760_000_100,
        status,
        tpl_value(json!({"event": "APPROVED", "reason": "NONE"})),
    );
    let (_, t) = post_and_replay(&env, &approved, read).await;
    assert_eq!((t.status.as_str(), t.rejected_reason), ("APPROVED", None));

    // Paused, with Meta's reason; an older update (late, or replayed) does
    // not undo it.
    let paused = field_event(
        WABA,
        1_760_000_200,
        status,
        tpl_value(
            json!({"event": "PAUSED", "other_info": {"title": "FIRST_PAUSE",
            "description": "Paused for 3 hours: low quality"}}),
        ),
    );
    let (_, t) = post_and_replay(&env, &paused, read).await;
    assert_eq!(t.status, "PAUSED");
    assert_eq!(
        t.rejected_reason.as_deref(),
        Some("FIRST_PAUSE: Paused for 3 hours: low quality")
    );
    env.post(&approved).await;
    assert_eq!(read().await.status, "PAUSED", "older update ignored");

    let (_, t) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_000_300,
            "message_template_quality_update",
            tpl_value(json!({"previous_quality_score": "GREEN", "new_quality_score": "RED"})),
        ),
        read,
    )
    .await;
    assert_eq!(t.quality_score.as_deref(), Some("RED"));

    // New components: the send check then counts the new body's parameters.
    let (_, t) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_000_400,
            "message_template_components_update",
            tpl_value(json!({"message_template_title": "Order",
                "message_template_element": "Hi {{1}}, order {{2}} is confirmed.",
                "message_template_footer": "Shop",
                "message_template_buttons": [{"message_template_button_type": "URL",
                    "message_template_button_text": "Track", "message_template_button_url": "https://x.test/t"}]})),
        ),
        read,
    )
    .await;
    let components = t.components.clone().expect("components");
    assert_eq!(components[0]["type"], "HEADER");
    assert_eq!(components[1]["text"], "Hi {{1}}, order {{2}} is confirmed.");
    assert_eq!(components[2]["text"], "Shop");
    assert_eq!(components[3]["buttons"][0]["url"], "https://x.test/t");
    assert_eq!(body_parameters(&t), 2);

    // A category change announced: pending, the category stays.
    let category = "template_category_update";
    let (_, t) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_000_500,
            category,
            tpl_value(
                json!({"new_category": "UTILITY", "correct_category": "MARKETING",
                "category_update_timestamp": 1_760_086_900}),
            ),
        ),
        read,
    )
    .await;
    assert_eq!(t.category, "UTILITY");
    assert_eq!(t.pending_category.as_deref(), Some("MARKETING"));
    assert_eq!(
        t.pending_category_at.map(|d| d.timestamp()),
        Some(1_760_086_900)
    );
    // Done: the category moves and the announcement is cleared.
    let (_, t) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_086_900,
            category,
            tpl_value(json!({"previous_category": "UTILITY", "new_category": "MARKETING"})),
        ),
        read,
    )
    .await;
    assert_eq!(
        (t.category.as_str(), t.previous_category.as_deref()),
        ("MARKETING", Some("UTILITY"))
    );
    assert_eq!((t.pending_category, t.pending_category_at), (None, None));
}
both_backends!(template_updates_apply_once);

/// Meta's public samples of every template field, each on a template of
/// the sample's id: each changes its row, and a replay changes nothing.
async fn corpus_template_updates(b: Backend) {
    let files = [
        (
            "meta-docs-message_template_status_update.json",
            "1689556908129832",
        ),
        (
            "pywa-template-status-update-rejected.json",
            "1689556908129835",
        ),
        (
            "meta-docs-message_template_quality_update.json",
            "806312974732579",
        ),
        (
            "meta-docs-message_template_components_update.json",
            "1315502779341834",
        ),
        (
            "meta-docs-template_category_update-1.json",
            "278077987957091",
        ),
        (
            "meta-docs-template_category_update-2.json",
            "278077987957091",
        ),
    ];
    if corpus_sample("other", files[0].0).is_none() {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    }
    let env = env(b).await;
    let config = add_config(&env.db, PHONE_NUMBER_ID, WABA_ID, "Test Co").await;
    for (file, meta_id) in files {
        let body = corpus_sample("other", file).expect("sample");
        let id = match templates::Entity::find()
            .filter(templates::Column::WhatsappTemplateId.eq(meta_id))
            .one(&env.db)
            .await
            .expect("query")
        {
            Some(t) => t.id,
            None => meta_template(&env, config, meta_id, meta_id, "xx").await,
        };
        let before = template(&env, id).await;
        let (data, after) = post_and_replay(&env, &body, || template(&env, id)).await;
        assert_eq!(data["templates_updated"], 1, "{file}");
        assert_ne!(
            without_updated_at(&after),
            without_updated_at(&before),
            "{file} changed nothing"
        );
        match file {
            f if f.contains("status_update") => assert_eq!(after.status, "APPROVED"),
            f if f.contains("rejected") => assert_eq!(
                (after.status.as_str(), after.rejected_reason.as_deref()),
                ("REJECTED", Some("INVALID_FORMAT"))
            ),
            f if f.contains("quality") => {
                assert_eq!(after.quality_score.as_deref(), Some("YELLOW"))
            }
            f if f.contains("components") => assert_eq!(body_parameters(&after), 2),
            f if f.ends_with("-1.json") => {
                assert_eq!(after.pending_category.as_deref(), Some("MARKETING"))
            }
            _ => assert_eq!(
                (after.category.as_str(), after.pending_category),
                ("MARKETING", None)
            ),
        }
    }
}
both_backends!(corpus_template_updates);

fn preference(wa_id: &str, value: &str, ts: i64) -> Value {
    json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
        "contacts": [{"wa_id": wa_id}],
        "user_preferences": [{"wa_id": wa_id, "detail": "User requested it",
            "category": "marketing_messages", "value": value, "timestamp": ts}]})
}

async fn customer(env: &Env, wa_id: &str) -> customers::Model {
    customers::Entity::find()
        .filter(customers::Column::WaId.eq(wa_id))
        .one(&env.db)
        .await
        .expect("query")
        .expect("customer")
}

async fn marketing_preferences_flag_the_customer(b: Backend) {
    let env = env(b).await;
    // A customer we know: stop flags them, without touching their window.
    env.post(&text_event("wamid.pref-1", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    let known = customer(&env, CUSTOMER).await;
    let stop = field_event(
        WABA,
        1_760_000_100,
        "user_preferences",
        preference(CUSTOMER, "stop", 1_760_000_100),
    );
    let (_, c) = post_and_replay(&env, &stop, || customer(&env, CUSTOMER)).await;
    assert!(c.marketing_opted_out);
    assert_eq!(
        c.marketing_preference_at.map(|t| t.timestamp()),
        Some(1_760_000_100)
    );
    assert_eq!(c.last_inbound_at, known.last_inbound_at, "no window opened");

    // Resume clears it; the older stop, replayed, does not set it again.
    let resume = field_event(
        WABA,
        1_760_000_200,
        "user_preferences",
        preference(CUSTOMER, "resume", 1_760_000_200),
    );
    let (_, c) = post_and_replay(&env, &resume, || customer(&env, CUSTOMER)).await;
    assert!(!c.marketing_opted_out);
    env.post(&stop).await;
    assert!(!customer(&env, CUSTOMER).await.marketing_opted_out);

    // A customer not seen yet is created, flagged, with no window.
    let (_, c) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_000_300,
            "user_preferences",
            preference("4915199999999", "stop", 1_760_000_300),
        ),
        || customer(&env, "4915199999999"),
    )
    .await;
    assert!(c.marketing_opted_out);
    assert_eq!(c.last_inbound_at, None);
    assert_eq!(env.count_messages().await, 1, "a preference is no message");

    // Meta's samples (resume, signup): a customer who had stopped (at an
    // older time) may get marketing again.
    if corpus_sample("other", "meta-docs-user_preferences.json").is_none() {
        eprintln!("skipped the samples: shared/meta-corpus is not present");
        return;
    }
    add_config(&env.db, PHONE_NUMBER_ID, WABA_ID, "Test Co").await;
    let mut stop = preference("16505551234", "stop", 1_731_705_000);
    stop["metadata"]["phone_number_id"] = json!(PHONE_NUMBER_ID);
    env.post(&field_event(
        WABA_ID,
        1_731_705_000,
        "user_preferences",
        stop,
    ))
    .await;
    for file in [
        "meta-docs-user_preferences.json",
        "pywa-user-marketing-preferences-signup.json",
        "pywa-user-marketing-preferences-resume.json",
    ] {
        let body = corpus_sample("other", file).expect("sample");
        customers::Entity::update_many()
            .col_expr(
                customers::Column::MarketingOptedOut,
                sea_orm::sea_query::Expr::value(true),
            )
            .col_expr(
                customers::Column::MarketingPreferenceAt,
                sea_orm::sea_query::Expr::value(chrono::DateTime::from_timestamp(1_731_705_000, 0)),
            )
            .filter(customers::Column::WaId.eq("16505551234"))
            .exec(&env.db)
            .await
            .expect("flag");
        let (data, c) = post_and_replay(&env, &body, || customer(&env, "16505551234")).await;
        assert!(!c.marketing_opted_out, "{file}");
        assert_eq!(data["preferences_applied"], 1, "{file}");
    }
}
both_backends!(marketing_preferences_flag_the_customer);

async fn config(env: &Env, id: Uuid) -> whatsapp_configs::Model {
    whatsapp_configs::Entity::find_by_id(id)
        .one(&env.db)
        .await
        .expect("query")
        .expect("config")
}

/// The degradations an event's first run reported (`processed_data`).
fn degraded(data: &Value) -> Value {
    data["health_events"].clone()
}

async fn account_and_number_health(b: Backend) {
    let env = env(b).await;
    let other = add_config(&env.db, "15550000002", WABA, "Test Co").await;
    for (id, display) in [(env.config_id, "+1 555-000-0001"), (other, "15550000002")] {
        whatsapp_configs::Entity::update_many()
            .col_expr(
                whatsapp_configs::Column::DisplayPhoneNumber,
                sea_orm::sea_query::Expr::value(display),
            )
            .filter(whatsapp_configs::Column::Id.eq(id))
            .exec(&env.db)
            .await
            .expect("display number");
    }
    let ours = || config(&env, env.config_id);
    let quality = |time: i64, event: &str, limit: &str| {
        field_event(
            WABA,
            time,
            "phone_number_quality_update",
            json!({"display_phone_number": "15550000001", "event": event, "current_limit": limit}),
        )
    };

    // Flagged: only the number named, counted once (not on the replay).
    let (data, c) =
        post_and_replay(&env, &quality(1_760_000_100, "FLAGGED", "TIER_1K"), ours).await;
    assert_eq!(
        (
            c.quality_rating.as_deref(),
            c.messaging_limit_tier.as_deref()
        ),
        (Some("RED"), Some("TIER_1K"))
    );
    assert_eq!(degraded(&data), json!(["quality_flagged"]));
    assert_eq!(data["configs_updated"], 1);
    assert_eq!(
        config(&env, other).await.quality_rating,
        None,
        "not its number"
    );
    let id = env
        .post(&quality(1_760_000_100, "FLAGGED", "TIER_1K"))
        .await;
    let again = env.event(id).await.processed_data.expect("data");
    assert_eq!(
        degraded(&again),
        json!([]),
        "already flagged: not counted again"
    );

    let (data, c) =
        post_and_replay(&env, &quality(1_760_000_200, "DOWNGRADE", "TIER_250"), ours).await;
    assert_eq!(c.messaging_limit_tier.as_deref(), Some("TIER_250"));
    assert_eq!(degraded(&data), json!(["limit_downgraded"]));
    // An older update, arriving late, changes nothing.
    let id = env
        .post(&quality(1_760_000_150, "UPGRADE", "TIER_10K"))
        .await;
    assert_eq!(
        ours().await.messaging_limit_tier.as_deref(),
        Some("TIER_250")
    );
    assert_eq!(
        env.event(id).await.processed_data.expect("data")["configs_updated"],
        0
    );
    let (data, c) =
        post_and_replay(&env, &quality(1_760_000_300, "UNFLAGGED", "TIER_1K"), ours).await;
    assert_eq!(c.quality_rating.as_deref(), Some("GREEN"));
    assert_eq!(degraded(&data), json!([]));

    let name = |time: i64, decision: &str| {
        field_event(
            WABA,
            time,
            "phone_number_name_update",
            json!({"display_phone_number": "15550000001", "decision": decision,
                "requested_verified_name": "Erika's Shop", "rejection_reason": null}),
        )
    };
    let (data, c) = post_and_replay(&env, &name(1_760_000_400, "REJECTED"), ours).await;
    assert_eq!(
        (c.name_status.as_deref(), c.verified_name),
        (Some("REJECTED"), None)
    );
    assert_eq!(degraded(&data), json!(["name_rejected"]));
    let (_, c) = post_and_replay(&env, &name(1_760_000_500, "APPROVED"), ours).await;
    assert_eq!(
        (c.name_status.as_deref(), c.verified_name.as_deref()),
        (Some("APPROVED"), Some("Erika's Shop"))
    );

    // Account-wide: every config of the WABA.
    let restriction = json!([{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1_760_086_000}]);
    let (data, c) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_000_600,
            "account_update",
            json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": restriction}),
        ),
        ours,
    )
    .await;
    assert_eq!(c.account_status.as_deref(), Some("ACCOUNT_RESTRICTION"));
    assert_eq!(c.restrictions, Some(restriction.clone()));
    assert_eq!(config(&env, other).await.restrictions, Some(restriction));
    assert_eq!(degraded(&data), json!(["account_restricted"]));
    assert_eq!(data["configs_updated"], 2);
    let (_, c) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_000_700,
            "account_update",
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "REINSTATE"}}),
        ),
        ours,
    )
    .await;
    assert_eq!(
        (c.account_status.as_deref(), c.restrictions),
        (Some("REINSTATED"), None)
    );
    // A notice with no state: the status stays.
    env.post(&field_event(
        WABA,
        1_760_000_800,
        "account_update",
        json!({"event": "BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE", "country": "DE"}),
    ))
    .await;
    assert_eq!(ours().await.account_status.as_deref(), Some("REINSTATED"));

    let alert = json!({"entity_type": "WABA", "entity_id": WABA, "alert_info": {"alert_severity": "CRITICAL",
        "alert_status": "ACTIVE", "alert_type": "OBA_APPROVED", "alert_description": "x"}});
    let (data, c) = post_and_replay(
        &env,
        &field_event(WABA, 1_760_000_900, "account_alerts", alert.clone()),
        ours,
    )
    .await;
    assert_eq!(c.last_alert, Some(alert));
    assert_eq!(degraded(&data), json!(["alert_active"]));
    let caps =
        json!({"max_daily_conversation_per_phone": 1000, "max_phone_numbers_per_business": 2});
    let (_, c) = post_and_replay(
        &env,
        &field_event(
            WABA,
            1_760_001_000,
            "business_capability_update",
            caps.clone(),
        ),
        ours,
    )
    .await;
    assert_eq!(c.business_capabilities, Some(caps));
}
both_backends!(account_and_number_health);

/// Meta's samples of each health field, on a config of the sample's WABA.
async fn corpus_account_and_number_health(b: Backend) {
    if corpus_sample("other", "meta-docs-account_alerts.json").is_none() {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    }
    let env = env(b).await;
    let id = add_config(&env.db, PHONE_NUMBER_ID, WABA_ID, "Test Co").await;
    let caps = add_config(&env.db, "15550000007", "524126980791429", "Test Co").await;
    let read = || config(&env, id);
    let sample = |f: &str| corpus_sample("other", f).expect("sample");

    let (_, c) = post_and_replay(
        &env,
        &sample("meta-docs-phone_number_quality_update.json"),
        read,
    )
    .await;
    assert_eq!(c.messaging_limit_tier.as_deref(), Some("TIER_UNLIMITED"));
    let (_, c) = post_and_replay(
        &env,
        &sample("meta-docs-phone_number_name_update.json"),
        read,
    )
    .await;
    assert_eq!(
        (c.name_status.as_deref(), c.verified_name.as_deref()),
        (Some("APPROVED"), Some("Lucky Shrub"))
    );
    let (data, c) = post_and_replay(
        &env,
        &sample("pywa-account-update-account-restriction.json"),
        read,
    )
    .await;
    assert_eq!(c.account_status.as_deref(), Some("ACCOUNT_RESTRICTION"));
    assert_eq!(
        c.restrictions
            .as_ref()
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(degraded(&data), json!(["account_restricted"]));
    let (data, c) = post_and_replay(
        &env,
        &sample("meta-docs-account_update-account-violation.json"),
        read,
    )
    .await;
    assert_eq!(c.account_status.as_deref(), Some("ACCOUNT_VIOLATION"));
    assert_eq!(degraded(&data), json!(["account_violation"]));
    let (_, c) = post_and_replay(
        &env,
        &sample("meta-docs-account_update-disabled-update.json"),
        read,
    )
    .await;
    assert_eq!(
        (c.account_status.as_deref(), c.restrictions),
        (Some("REINSTATED"), None)
    );
    let (data, c) = post_and_replay(&env, &sample("meta-docs-account_alerts.json"), read).await;
    assert_eq!(
        c.last_alert
            .as_ref()
            .map(|a| a["alert_info"]["alert_type"].clone()),
        Some(json!("INCREASED_CAPABILITIES_ELIGIBILITY_DEFERRED"))
    );
    assert_eq!(degraded(&data), json!(["alert_active"]));
    let (_, c) = post_and_replay(
        &env,
        &sample("meta-docs-business_capability_update.json"),
        || config(&env, caps),
    )
    .await;
    assert_eq!(
        c.business_capabilities
            .map(|v| v["max_phone_numbers_per_waba"].clone()),
        Some(json!(25))
    );
}
both_backends!(corpus_account_and_number_health);

async fn call(env: &Env, call_id: &str) -> calls::Model {
    calls::Entity::find()
        .filter(calls::Column::CallId.eq(call_id))
        .one(&env.db)
        .await
        .expect("query")
        .expect("call")
}

/// `call.updated` events of the log.
async fn call_events(env: &Env) -> Vec<events::Model> {
    events::Entity::find()
        .filter(events::Column::Type.eq("call.updated"))
        .all(&env.db)
        .await
        .expect("events")
}

fn calls_value(calls: Value, statuses: Value) -> Value {
    json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
        "contacts": [{"profile": {"name": "Erika"}, "wa_id": CUSTOMER}],
        "calls": calls, "statuses": statuses})
}

async fn calls_land_in_the_chat(b: Backend) {
    let env = env(b).await;
    let connect = field_event(
        WABA,
        1_760_000_100,
        "calls",
        calls_value(
            json!([{"id": "wacid.in-1", "from": CUSTOMER, "to": PHONE, "event": "connect",
                "timestamp": "1760000100", "direction": "USER_INITIATED",
                "session": {"sdp": "v=0", "sdp_type": "offer"}}]),
            json!([]),
        ),
    );
    let (data, c) = post_and_replay(&env, &connect, || call(&env, "wacid.in-1")).await;
    assert_eq!(data["calls_updated"], 1);
    assert_eq!(
        (
            c.direction.as_deref(),
            c.from.as_deref(),
            c.to.as_deref(),
            c.status.as_str()
        ),
        (Some("inbound"), Some(CUSTOMER), Some(PHONE), "connected")
    );
    assert_eq!(c.started_at.map(|t| t.timestamp()), Some(1_760_000_100));
    let chats = env.chats().await;
    assert_eq!(chats.len(), 1);
    assert_eq!(
        (c.chat_id, chats[0].total_messages),
        (chats[0].id, 0),
        "no message counted"
    );
    let customer = customer(&env, CUSTOMER).await;
    assert_eq!(
        (c.customer_id, customer.last_inbound_at),
        (customer.id, None),
        "no window"
    );
    let events = call_events(&env).await;
    assert_eq!(events.len(), 1, "the replay wrote no second event");
    let created = events::Entity::find()
        .filter(events::Column::Type.eq("chat.created"))
        .all(&env.db)
        .await
        .expect("events");
    assert_eq!(created.len(), 1, "the chat the call created, once");
    assert_eq!(events[0].chat_id, Some(c.chat_id));
    assert_eq!(events[0].payload["status"], "connected");

    let terminate = field_event(
        WABA,
        1_760_000_230,
        "calls",
        calls_value(
            json!([{"id": "wacid.in-1", "from": CUSTOMER, "to": PHONE, "event": "terminate",
                "timestamp": "1760000230", "direction": "USER_INITIATED", "status": "COMPLETED",
                "start_time": "1760000105", "end_time": "1760000225", "duration": 120}]),
            json!([]),
        ),
    );
    let (_, c) = post_and_replay(&env, &terminate, || call(&env, "wacid.in-1")).await;
    assert_eq!(c.status, "completed");
    assert_eq!(
        (
            c.started_at.map(|t| t.timestamp()),
            c.ended_at.map(|t| t.timestamp()),
            c.duration
        ),
        (Some(1_760_000_105), Some(1_760_000_225), Some(120))
    );
    assert_eq!(call_events(&env).await.len(), 2);
    // The connect again, late: the call stays ended.
    env.post(&connect).await;
    assert_eq!(call(&env, "wacid.in-1").await.status, "completed");
    assert_eq!(call_events(&env).await.len(), 2);

    // A call we placed: its statuses, out of order, never regress.
    let status = |s: &str, ts: i64| {
        field_event(
            WABA,
            ts,
            "calls",
            calls_value(
                json!([]),
                json!([{"id": "wacid.out-1", "timestamp": ts.to_string(), "type": "call",
                    "status": s, "recipient_id": CUSTOMER}]),
            ),
        )
    };
    let (_, c) = post_and_replay(&env, &status("RINGING", 1_760_000_300), || {
        call(&env, "wacid.out-1")
    })
    .await;
    assert_eq!(
        (c.direction.as_deref(), c.status.as_str()),
        (Some("outbound"), "ringing")
    );
    assert_eq!(c.chat_id, env.chats().await[0].id, "the same chat");
    env.post(&status("REJECTED", 1_760_000_320)).await;
    env.post(&status("ACCEPTED", 1_760_000_310)).await;
    let c = call(&env, "wacid.out-1").await;
    assert_eq!(c.status, "rejected");
    assert!(c.ended_at.is_some());
    assert_eq!(call_events(&env).await.len(), 4);
}
both_backends!(calls_land_in_the_chat);

async fn corpus_calls(b: Backend) {
    if corpus_sample("other", "pywa-call-connect-user-initiated.json").is_none() {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    }
    let env = env(b).await;
    for (phone, waba) in [
        ("743897493242", "100293269804676"),
        ("37489742", "47389759353"),
        ("5483758353", "487439753"),
    ] {
        add_config(&env.db, phone, waba, "Test Co").await;
    }
    let sample = |f: &str| corpus_sample("other", f).expect("sample");
    let (_, c) = post_and_replay(
        &env,
        &sample("pywa-call-connect-user-initiated.json"),
        || call(&env, "wacid.xxxx="),
    )
    .await;
    assert_eq!(
        (c.direction.as_deref(), c.from.as_deref(), c.status.as_str()),
        (Some("inbound"), Some("972987654321"), "connected")
    );
    let (_, c) = post_and_replay(
        &env,
        &sample("pywa-call-terminate-call-terminate.json"),
        || call(&env, "wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh"),
    )
    .await;
    assert_eq!((c.status.as_str(), c.duration), ("completed", Some(120)));
    assert_eq!(
        c.errors.as_ref().map(|e| e[0]["code"].clone()),
        Some(json!(12455))
    );
    let (_, c) = post_and_replay(&env, &sample("pywa-call-status-call-status.json"), || {
        call(&env, "wacid.ABGGFjFVU2AfAgo6V")
    })
    .await;
    assert_eq!(
        (c.direction.as_deref(), c.status.as_str()),
        (Some("outbound"), "ringing")
    );
    assert_eq!(call_events(&env).await.len(), 3);
}
both_backends!(corpus_calls);

async fn chat_of(env: &Env, customer_id: Uuid) -> wapipe_shared::entities::chats::Model {
    env.chats()
        .await
        .into_iter()
        .find(|c| c.customer_id == customer_id)
        .expect("chat")
}

fn coexistence_value(key: &str, items: Value) -> Value {
    let mut v = json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE}});
    v[key] = items;
    v
}

async fn coexistence_with_the_business_app(b: Backend) {
    use wapipe_domain::scenarios::engine::{Refusal, in_human_hands};
    use wapipe_shared::entities::messages::{Direction, MessageStatus, Origin};
    let env = env(b).await;
    env.post(&text_event(
        "wamid.co-in",
        CUSTOMER,
        1_760_000_000,
        "Is it in stock?",
    ))
    .await;
    env.take_jobs("scenario").await;
    let erika = customer(&env, CUSTOMER).await;
    assert!(in_human_hands(&chat_of(&env, erika.id).await).is_none());

    // The owner answers from the app: an outbound message, the bot paused.
    let echo = field_event(
        WABA,
        1_760_000_060,
        "smb_message_echoes",
        coexistence_value(
            "message_echoes",
            json!([{"from": PHONE, "to": CUSTOMER, "id": "wamid.co-echo", "timestamp": "1760000060",
                "type": "text", "text": {"body": "Yes, two left"}}]),
        ),
    );
    let id = env.post(&echo).await;
    let counts = env.counts().await;
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(env.counts().await, counts, "replay");
    let m = env.message("wamid.co-echo").await;
    assert_eq!(
        (m.direction, m.origin, m.sender_type.as_str(), m.status),
        (
            Direction::Outbound,
            Origin::Admin,
            "phone",
            MessageStatus::Sent
        )
    );
    assert_eq!(m.text.as_deref(), Some("Yes, two left"));
    let chat = chat_of(&env, erika.id).await;
    assert_eq!(
        (
            chat.total_messages,
            chat.unread_count,
            chat.last_message.as_deref()
        ),
        (2, 1, Some("Yes, two left"))
    );
    assert_eq!(chat.handoff_at.map(|t| t.timestamp()), Some(1_760_000_060));
    assert_eq!(
        in_human_hands(&chat),
        Some(Refusal::HandedOff),
        "bot paused"
    );
    assert!(
        env.take_jobs("scenario").await.is_empty(),
        "no scenario for an echo"
    );

    // History: past messages of a new customer, in Meta's order, quietly.
    let past = "4915100000077";
    let history = field_event(
        WABA,
        1_760_000_100,
        "history",
        coexistence_value(
            "history",
            json!([{"metadata": {"phase": 0, "chunk_order": 1, "progress": 100}, "threads": [{"id": past, "messages": [
                {"from": PHONE, "id": "wamid.h-3", "timestamp": "1750000300", "type": "text",
                 "text": {"body": "See you"}, "history_context": {"status": "READ"}},
                {"from": past, "id": "wamid.h-2", "timestamp": "1750000200", "type": "text",
                 "text": {"body": "Thanks"}, "history_context": {"status": "READ"}},
                {"from": PHONE, "id": "wamid.h-1", "timestamp": "1750000100", "type": "text",
                 "text": {"body": "Welcome"}, "history_context": {"status": "DELIVERED"}}]}]}]),
        ),
    );
    let id = env.post(&history).await;
    let counts = env.counts().await;
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(env.counts().await, counts, "replay");
    let c = customer(&env, past).await;
    assert_eq!(c.last_inbound_at, None, "no window opened");
    let chat = chat_of(&env, c.id).await;
    assert_eq!(
        (
            chat.total_messages,
            chat.unread_count,
            chat.last_message.as_deref()
        ),
        (3, 0, Some("See you"))
    );
    assert_eq!(chat.handoff_at, None, "history pauses no bot");
    let h1 = env.message("wamid.h-1").await;
    let h2 = env.message("wamid.h-2").await;
    let h3 = env.message("wamid.h-3").await;
    assert!(
        h1.created_at < h2.created_at && h2.created_at < h3.created_at,
        "in order"
    );
    assert_eq!(
        (h1.direction, h1.status),
        (Direction::Outbound, MessageStatus::Delivered)
    );
    assert_eq!(
        (h2.direction, h2.origin),
        (Direction::Inbound, Origin::User)
    );
    assert_eq!(h3.status, MessageStatus::Read);
    assert!(
        env.take_jobs("scenario").await.is_empty(),
        "no scenario runs"
    );
    assert!(env.take_jobs("outbound").await.is_empty(), "nothing sent");

    // The app's contacts name the customer.
    let sync = field_event(
        WABA,
        1_760_000_200,
        "smb_app_state_sync",
        coexistence_value(
            "state_sync",
            json!([{"type": "contact", "action": "edit", "contact": {"full_name": "Erika Mustermann",
                "first_name": "Erika", "phone_number": format!("+{CUSTOMER}")}, "metadata": {"timestamp": "1760000200"}}]),
        ),
    );
    let (data, c) = post_and_replay(&env, &sync, || customer(&env, CUSTOMER)).await;
    assert_eq!(c.name.as_deref(), Some("Erika Mustermann"));
    assert_eq!(data["coexistence_applied"], 1);
}
both_backends!(coexistence_with_the_business_app);

async fn corpus_coexistence(b: Backend) {
    if corpus_sample("other", "meta-docs-history-1.json").is_none() {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    }
    let env = env(b).await;
    add_config(&env.db, PHONE_NUMBER_ID, WABA_ID, "Test Co").await;
    add_config(&env.db, "1122334455667", "1234567890987654321", "Test Co").await;
    let sample = |f: &str| corpus_sample("other", f).expect("sample");
    for f in ["meta-docs-history-1.json", "meta-docs-history-2.json"] {
        let id = env.post(&sample(f)).await;
        let counts = env.counts().await;
        env.reset(id).await;
        env.process(id).await;
        assert_eq!(env.counts().await, counts, "replay of {f}");
    }
    let read = env
        .message("wamid.HBgLMTY0NjcwNDM1OTUVAgARGBIyNDlBOEI5QUQ4NDc0N0FCNjMA")
        .await;
    assert_eq!(read.sender_type, "phone");
    let thanks = env
        .message("wamid.N0FCNjMAHBgLMTY0NjcwNDM1OTUVAgARGBIyNDlBOEI5QUQ4NDc0")
        .await;
    assert_eq!(thanks.text.as_deref(), Some("Thanks!"));
    let pablo = customer(&env, "16505551234").await;
    assert_eq!(chat_of(&env, pablo.id).await.unread_count, 0);
    assert_eq!(pablo.last_inbound_at, None);

    let (_, c) = post_and_replay(&env, &sample("meta-docs-smb_app_state_sync.json"), || {
        customer(&env, "16505551234")
    })
    .await;
    assert_eq!(c.name.as_deref(), Some("Pablo Morales"));

    let id = env.post(&sample("pywa-outgoing-message-text.json")).await;
    let m = env.message("<WHATSAPP_MESSAGE_ID>").await;
    assert_eq!(
        (m.sender_type.as_str(), m.text.as_deref()),
        ("phone", Some("Test message"))
    );
    assert!(chat_of(&env, m.customer_id).await.handoff_at.is_some());
    let counts = env.counts().await;
    env.reset(id).await;
    env.process(id).await;
    assert_eq!(env.counts().await, counts, "replay");
}
both_backends!(corpus_coexistence);

/// A user's `@username` (contacts' `profile.username`) is kept on the
/// customer, for phone-number senders and BSUID-only ones, and a later
/// message without it keeps it.
async fn usernames_are_kept(b: Backend) {
    let env = env(b).await;
    let from = |wa_id: &str, user_id: Option<&str>, username: Option<&str>, id: &str, ts: i64| {
        let mut contact = json!({"profile": {"name": "Nick"}, "wa_id": wa_id});
        if let Some(u) = user_id {
            contact["user_id"] = json!(u);
        }
        if let Some(u) = username {
            contact["profile"]["username"] = json!(u);
        }
        let mut m = text_msg(id, wa_id, ts, "hi");
        if wa_id.is_empty() {
            m.as_object_mut().map(|o| o.remove("from"));
            m["from_user_id"] = json!(user_id);
        }
        envelope(messages_value(json!([contact]), json!([m])))
    };
    let user = |key: (&'static str, String)| {
        let env = &env;
        async move {
            customers::Entity::find()
                .filter(match key.0 {
                    "wa_id" => customers::Column::WaId.eq(key.1),
                    _ => customers::Column::UserId.eq(key.1),
                })
                .one(&env.db)
                .await
                .expect("query")
                .expect("customer")
        }
    };
    let (_, c) = post_and_replay(
        &env,
        &from(CUSTOMER, None, Some("@nick"), "wamid.u-1", 1_760_000_000),
        || user(("wa_id", CUSTOMER.to_owned())),
    )
    .await;
    assert_eq!(c.username.as_deref(), Some("@nick"));
    env.post(&from(CUSTOMER, None, None, "wamid.u-2", 1_760_000_010))
        .await;
    assert_eq!(
        user(("wa_id", CUSTOMER.to_owned()))
            .await
            .username
            .as_deref(),
        Some("@nick"),
        "kept"
    );
    let (_, c) = post_and_replay(
        &env,
        &from(
            "",
            Some("DE.77"),
            Some("@only_bsuid"),
            "wamid.u-3",
            1_760_000_020,
        ),
        || user(("user_id", "DE.77".to_owned())),
    )
    .await;
    assert_eq!(
        (c.wa_id, c.username.as_deref()),
        (None, Some("@only_bsuid"))
    );

    let Some(body) = corpus_sample("messages", "whatsapp-api-js-v25-incoming.json") else {
        eprintln!("skipped the sample: shared/meta-corpus is not present");
        return;
    };
    add_config(&env.db, "123456123", "1", "Test Co").await;
    let (_, c) = post_and_replay(&env, &body, || user(("wa_id", "16315551181".to_owned()))).await;
    assert_eq!(
        (c.username.as_deref(), c.user_id.as_deref()),
        (Some("@testusername"), Some("US.13491208655302741918"))
    );
}
both_backends!(usernames_are_kept);
