//! The messages endpoints on PostgreSQL and SQLite: sends of each kind
//! become queued rows and outbound jobs (202), an Idempotency-Key sends
//! once (another body under it is a 422), the 24-hour window (422 with
//! 131047 before anything is queued), blocked numbers (409), the newest-first
//! list with stable pages, get, and mark read; plus the per-key rate limit.

mod common;

use common::{Api, Backend, minutes_ago};
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_api::ApiSettings;
use wapipe_shared::entities::messages;

fn id(v: &Value) -> Uuid {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an id")
}

async fn outbound_rows(api: &Api, chat: Uuid) -> u64 {
    messages::Entity::find()
        .filter(messages::Column::ChatId.eq(chat))
        .filter(messages::Column::Direction.eq(messages::Direction::Outbound))
        .count(&api.db)
        .await
        .expect("count")
}

async fn sends(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let (ana, ana_key) = api.agent("Ana", common::perms(true), 5).await;
    let (chat, inbound) = api
        .inbound(
            api.config_id,
            "33612345678",
            "Zoé",
            "hello",
            minutes_ago(30),
        )
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/messages");
    let order_update = api
        .template(
            api.config_id,
            "order_update",
            "fr",
            "Commande {{1}} expédiée",
            "APPROVED",
        )
        .await;

    let r = api
        .post(
            &ana_key,
            &path,
            json!({"type": "text", "text": "Bonjour !"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["direction"], "outbound");
    assert_eq!(r.body["text"], "Bonjour !");
    assert_eq!(r.body["senderType"], "agent");
    assert_eq!(r.body["senderId"], json!(ana));
    assert_eq!(r.body["senderName"], "Ana");
    assert_eq!(r.body["to"], "33612345678");
    assert_eq!(api.outbound_jobs().await, 1, "one outbound.send job");

    for (body, kind) in [
        (
            json!({"type": "interactive", "interactive": {"body": "Choose", "buttons": [{"id": "a", "title": "A"}, {"id": "b", "title": "B"}]}}),
            "interactive",
        ),
        (
            json!({"type": "interactive", "interactive": {"body": "Menu", "button": "Open", "sections": [{"title": "S", "rows": [{"id": "r1", "title": "Row"}]}]}}),
            "interactive",
        ),
        (
            json!({"type": "image", "media": {"url": "https://example.com/a.jpg", "caption": "look"}}),
            "image",
        ),
        (
            json!({"type": "document", "media": {"mediaId": "1234", "fileName": "a.pdf"}}),
            "document",
        ),
        (
            json!({"type": "location", "location": {"latitude": 48.85, "longitude": 2.35, "name": "Paris"}}),
            "location",
        ),
        (
            json!({"type": "template", "template": {"name": "order_update", "language": "fr", "parameters": ["42"]}}),
            "template",
        ),
    ] {
        let r = api.post(&admin, &path, body.clone()).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{body}: {r:?}");
        assert_eq!(r.body["type"], kind);
    }
    let wamid = api
        .get(&admin, &format!("/api/whatsapp/messages/{inbound}"))
        .await
        .body["providerMessageId"]
        .as_str()
        .expect("wamid")
        .to_owned();
    let r = api
        .post(
            &admin,
            &path,
            json!({"type": "reaction", "reaction": {"messageId": wamid, "emoji": "👍"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let r = api
        .post(
            &admin,
            &path,
            json!({"type": "text", "text": "re", "replyTo": wamid}),
        )
        .await;
    assert_eq!(r.body["context"]["messageId"], json!(wamid));
    assert_eq!(outbound_rows(&api, chat).await, 9);

    // Bad sends are refused before anything is queued.
    for (body, field) in [
        (json!({"type": "text"}), "text"),
        (json!({"type": "fax", "text": "x"}), "type"),
        (
            json!({"type": "image", "media": {"url": "https://x/a.jpg", "mediaId": "1"}}),
            "media",
        ),
        (json!({"type": "text", "text": "x", "bold": true}), "bold"),
    ] {
        let r = api.post(&admin, &path, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {r:?}");
        assert!(
            r.body["error"]["fields"][field].is_string(),
            "{body}: {r:?}"
        );
    }
    let t = wapipe_shared::entities::templates::Entity::find_by_id(order_update)
        .one(&api.db)
        .await
        .expect("read")
        .expect("template");
    assert_eq!(t.usage_count, 1, "a send counts its template");
    assert!(t.last_used_at.is_some());

    // Checked before Meta sees it: name, language, approval, parameters.
    api.template(api.config_id, "promo", "en_US", "Hi {{1}}", "PENDING")
        .await;
    for (template, says) in [
        (json!({"name": "nope", "language": "fr"}), "no template"),
        (
            json!({"name": "order_update", "language": "de", "parameters": ["1"]}),
            "no language",
        ),
        (
            json!({"name": "order_update", "language": "fr"}),
            "takes 1 body parameter",
        ),
        (
            json!({"name": "order_update", "language": "fr", "parameters": ["1", "2"]}),
            "2 given",
        ),
        (
            json!({"name": "promo", "language": "en_US", "parameters": ["1"]}),
            "not approved",
        ),
    ] {
        let r = api
            .post(
                &admin,
                &path,
                json!({"type": "template", "template": template.clone()}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{template}: {r:?}"
        );
        assert_eq!(r.body["error"]["code"], "template_invalid");
        let msg = r.body["error"]["message"].as_str().expect("message");
        assert!(msg.contains(says), "{template}: {msg}");
    }
    assert_eq!(outbound_rows(&api, chat).await, 9, "nothing queued");

    let r = api
        .post(&admin, &path, json!({"type": "text", "text": "   "}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "empty text: {r:?}");
    let r = api
        .post(
            &admin,
            &path,
            json!({"type": "interactive", "interactive": {"body": "x", "buttons": []}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "no buttons: {r:?}");
    assert_eq!(outbound_rows(&api, chat).await, 9);

    // Another company's key, and an agent who may not see the chat: 404.
    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.post(&globex, &path, json!({"type": "text", "text": "x"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let (_, blind) = api.agent("Blind", json!({}), 5).await;
    assert_eq!(
        api.post(&blind, &path, json!({"type": "text", "text": "x"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(outbound_rows(&api, chat).await, 9);
}
both!(sends_test, sends);

async fn idempotent_send(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let (chat, _) = api
        .inbound(
            api.config_id,
            "33612345678",
            "Zoé",
            "hello",
            minutes_ago(30),
        )
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/messages");
    let body = json!({"type": "text", "text": "once"});
    let first = api
        .call_h(
            &admin,
            Method::POST,
            &path,
            Some(body.clone()),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    let second = api
        .call_h(
            &admin,
            Method::POST,
            &path,
            Some(body.clone()),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(second.body, first.body, "the first answer, replayed");
    assert_eq!(outbound_rows(&api, chat).await, 1, "sent once");
    assert_eq!(api.outbound_jobs().await, 1, "one job");

    let other = api
        .call_h(
            &admin,
            Method::POST,
            &path,
            Some(json!({"type": "text", "text": "twice?"})),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{other:?}");
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(outbound_rows(&api, chat).await, 1);

    // Keys are per API key: another key's k-1 is its own.
    let admin2 = api.admin_of(&["Acme"]).await;
    let r = api
        .call_h(
            &admin2,
            Method::POST,
            &path,
            Some(body.clone()),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_ne!(r.body["id"], first.body["id"]);
    assert_eq!(outbound_rows(&api, chat).await, 2);

    // Concurrent duplicates: the unique key lets exactly one through.
    let calls = (0..6).map(|_| {
        api.call_h(
            &admin,
            Method::POST,
            &path,
            Some(json!({"type": "text", "text": "race"})),
            &[("Idempotency-Key", "k-race")],
        )
    });
    let results = futures::future::join_all(calls).await;
    let accepted: Vec<&Value> = results
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .map(|r| &r.body["id"])
        .collect();
    assert!(!accepted.is_empty());
    assert!(
        accepted.iter().all(|i| *i == accepted[0]),
        "one message id for all"
    );
    assert!(
        results
            .iter()
            .all(|r| r.status == StatusCode::ACCEPTED || r.status == StatusCode::CONFLICT)
    );
    assert_eq!(outbound_rows(&api, chat).await, 3);

    // A failed validation is answered the same way again (and sends nothing).
    let bad = json!({"type": "text"});
    let a = api
        .call_h(
            &admin,
            Method::POST,
            &path,
            Some(bad.clone()),
            &[("Idempotency-Key", "k-bad")],
        )
        .await;
    let b = api
        .call_h(
            &admin,
            Method::POST,
            &path,
            Some(bad),
            &[("Idempotency-Key", "k-bad")],
        )
        .await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST)
    );
    assert_eq!(a.body, b.body);
}
both!(idempotent_send_test, idempotent_send);

async fn window_and_blocked(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let (chat, _) = api
        .inbound(
            api.config_id,
            "33612345678",
            "Old",
            "hello",
            minutes_ago(25 * 60),
        )
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/messages");
    api.template(api.config_id, "hello_world", "en_US", "Hello!", "APPROVED")
        .await;
    let r = api
        .post(&admin, &path, json!({"type": "text", "text": "late"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.body["error"]["code"], "131047");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("template")
    );
    assert_eq!(outbound_rows(&api, chat).await, 0, "nothing queued");
    assert_eq!(api.outbound_jobs().await, 0, "no call to Meta");
    let r = api
        .post(
            &admin,
            &path,
            json!({"type": "template", "template": {"name": "hello_world", "language": "en_US"}}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "templates go outside the window: {r:?}"
    );

    wapipe_domain::blocking::block(
        &api.db,
        api.config_id,
        "+33612345678",
        Some("spam".into()),
        wapipe_domain::blocking::Actor::CLI,
    )
    .await
    .expect("block");
    let r = api
        .post(
            &admin,
            &path,
            json!({"type": "template", "template": {"name": "hello_world", "language": "en_US"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert_eq!(r.body["error"]["code"], "number_blocked");
    assert_eq!(outbound_rows(&api, chat).await, 1);
}
both!(window_and_blocked_test, window_and_blocked);

/// What Meta's webhooks set is checked before a send: a paused template is
/// refused with Meta's reason, a MARKETING template to a customer who
/// stopped marketing messages with 131050 (other categories go), and
/// nothing reaches Meta. The admin report counts priced messages by
/// category and type per day.
async fn meta_state_refusals_and_pricing(api: Api) {
    use sea_orm::sea_query::Expr;
    use wapipe_shared::entities::{chats, customers, templates};
    let admin = api.admin_of(&["Acme"]).await;
    let (chat, inbound) = api
        .inbound(api.config_id, "33612345678", "Zoé", "hello", minutes_ago(5))
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/messages");
    let paused = api
        .template(api.config_id, "winter", "fr", "Soldes", "APPROVED")
        .await;
    let promo = api
        .template(api.config_id, "promo", "fr", "Promo", "APPROVED")
        .await;
    api.template(api.config_id, "receipt", "fr", "Reçu", "APPROVED")
        .await;
    // As the parse worker leaves them after Meta's webhooks.
    templates::Entity::update_many()
        .col_expr(templates::Column::Status, Expr::value("PAUSED"))
        .col_expr(
            templates::Column::RejectedReason,
            Expr::value("FIRST_PAUSE: low quality"),
        )
        .filter(templates::Column::Id.eq(paused))
        .exec(&api.db)
        .await
        .expect("pause");
    templates::Entity::update_many()
        .col_expr(templates::Column::Category, Expr::value("MARKETING"))
        .filter(templates::Column::Id.eq(promo))
        .exec(&api.db)
        .await
        .expect("marketing");
    let send =
        |name: &str| json!({"type": "template", "template": {"name": name, "language": "fr"}});

    let r = api.post(&admin, &path, send("winter")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.body["error"]["code"], "template_invalid");
    let msg = r.body["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("paused") && msg.contains("FIRST_PAUSE: low quality"),
        "{msg}"
    );

    // Before the opt-out, marketing goes.
    let r = api.post(&admin, &path, send("promo")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let customer = chats::Entity::find_by_id(chat)
        .one(&api.db)
        .await
        .expect("read")
        .expect("chat")
        .customer_id;
    customers::Entity::update_many()
        .col_expr(customers::Column::MarketingOptedOut, Expr::value(true))
        .filter(customers::Column::Id.eq(customer))
        .exec(&api.db)
        .await
        .expect("opt out");
    let r = api
        .get(&admin, &format!("/api/whatsapp/customers/{customer}"))
        .await;
    assert_eq!(r.body["marketingOptedOut"], true, "{r:?}");
    let r = api.post(&admin, &path, send("promo")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.body["error"]["code"], "131050");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("marketing")),
        "{r:?}"
    );
    assert_eq!(outbound_rows(&api, chat).await, 1, "refusals queue nothing");
    assert_eq!(api.outbound_jobs().await, 1, "no call to Meta for refusals");
    let r = api.post(&admin, &path, send("receipt")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "utility goes: {r:?}");

    // Pricing, as the status worker copies it from the receipts.
    for (id, category, kind, billable) in [
        (inbound, "service", "free_customer_service", false),
        (id(&r.body), "utility", "regular", true),
    ] {
        messages::Entity::update_many()
            .col_expr(messages::Column::PricingCategory, Expr::value(category))
            .col_expr(messages::Column::PricingType, Expr::value(kind))
            .col_expr(messages::Column::Billable, Expr::value(billable))
            .filter(messages::Column::Id.eq(id))
            .exec(&api.db)
            .await
            .expect("pricing");
    }
    let r = api.get(&admin, "/api/whatsapp/stats/admin").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let created = minutes_ago(5).format("%Y-%m-%d").to_string();
    let mut want = vec![
        json!({"date": created, "category": "service", "pricingType": "free_customer_service",
            "messages": 1, "billable": 0}),
        json!({"date": today, "category": "utility", "pricingType": "regular",
            "messages": 1, "billable": 1}),
    ];
    want.sort_by_key(|v| (v["date"].to_string(), v["category"].to_string()));
    assert_eq!(r.body["pricingPerDay"], json!(want));
}
both!(
    meta_state_refusals_and_pricing_test,
    meta_state_refusals_and_pricing
);

/// A customer known by a business-scoped user id only (a username user)
/// is written to by it: Meta's `recipient` instead of `to`. An
/// AUTHENTICATION template, which Meta delivers to phone numbers only, is
/// refused with a clear 422 and queues nothing.
async fn sends_to_a_bsuid(api: Api) {
    use sea_orm::sea_query::Expr;
    use wapipe_shared::entities::{chats, customers, templates};
    let admin = api.admin_of(&["Acme"]).await;
    let (chat, _) = api
        .inbound(
            api.config_id,
            "33600000077",
            "Nick",
            "hello",
            minutes_ago(5),
        )
        .await;
    let customer = chats::Entity::find_by_id(chat)
        .one(&api.db)
        .await
        .expect("read")
        .expect("chat")
        .customer_id;
    customers::Entity::update_many()
        .col_expr(customers::Column::WaId, Expr::value(Option::<String>::None))
        .col_expr(
            customers::Column::PhoneNumber,
            Expr::value(Option::<String>::None),
        )
        .col_expr(customers::Column::UserId, Expr::value("US.7777"))
        .filter(customers::Column::Id.eq(customer))
        .exec(&api.db)
        .await
        .expect("bsuid only");
    chats::Entity::update_many()
        .col_expr(
            chats::Column::PhoneNumber,
            Expr::value(Option::<String>::None),
        )
        .filter(chats::Column::Id.eq(chat))
        .exec(&api.db)
        .await
        .expect("no number");
    let path = format!("/api/whatsapp/chats/{chat}/messages");

    let r = api
        .post(&admin, &path, json!({"type": "text", "text": "hi Nick"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let sent = messages::Entity::find_by_id(id(&r.body))
        .one(&api.db)
        .await
        .expect("read")
        .expect("message");
    let body = sent.payload.expect("graph body");
    assert_eq!(body["recipient"], "US.7777", "{body}");
    assert!(body.get("to").is_none(), "{body}");
    assert_eq!(sent.customer_id, customer);

    let otp = api
        .template(api.config_id, "otp", "en_US", "Code {{1}}", "APPROVED")
        .await;
    templates::Entity::update_many()
        .col_expr(templates::Column::Category, Expr::value("AUTHENTICATION"))
        .filter(templates::Column::Id.eq(otp))
        .exec(&api.db)
        .await
        .expect("authentication");
    let r = api
        .post(
            &admin,
            &path,
            json!({"type": "template", "template": {"name": "otp", "language": "en_US",
                "parameters": ["123456"]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.body["error"]["code"], "authentication_needs_phone_number");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("phone number")),
        "{r:?}"
    );
    assert_eq!(
        outbound_rows(&api, chat).await,
        1,
        "the refusal queued nothing"
    );
}
both!(sends_to_a_bsuid_test, sends_to_a_bsuid);

async fn list_get_and_read(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let (chat, inbound) = api
        .inbound(
            api.config_id,
            "33612345678",
            "Zoé",
            "hello",
            minutes_ago(30),
        )
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/messages");
    let mut sent = Vec::new();
    for i in 0..5 {
        let r = api
            .post(
                &admin,
                &path,
                json!({"type": "text", "text": format!("m{i}")}),
            )
            .await;
        sent.push(id(&r.body));
    }
    let mut want: Vec<Uuid> = sent.iter().rev().copied().collect();
    want.push(inbound);
    let mut seen = Vec::new();
    let mut cursor = None::<String>;
    loop {
        let p = match &cursor {
            Some(c) => format!("{path}?limit=2&cursor={c}"),
            None => format!("{path}?limit=2"),
        };
        let r = api.get(&admin, &p).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        seen.extend(r.body["data"].as_array().expect("data").iter().map(id));
        // A newer message between pages does not shift them.
        api.post(&admin, &path, json!({"type": "text", "text": "meanwhile"}))
            .await;
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, want, "newest first, each once");

    let r = api
        .get(&admin, &format!("/api/whatsapp/messages/{inbound}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["direction"], "inbound");
    assert_eq!(r.body["from"], "33612345678");
    assert_eq!(r.body["isRead"], false);
    let jobs = api.outbound_jobs().await;
    let r = api
        .put(
            &admin,
            &format!("/api/whatsapp/messages/{inbound}/read"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["isRead"], true);
    assert_eq!(
        api.outbound_jobs().await,
        jobs + 1,
        "mark-as-read queued for Meta"
    );
    let chat_now = api
        .get(&admin, &format!("/api/whatsapp/chats/{chat}"))
        .await;
    assert_eq!(chat_now.body["unreadCount"], 0);
    let r = api
        .put(
            &admin,
            &format!("/api/whatsapp/messages/{}/read", sent[0]),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "our own message");

    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.get(&globex, &format!("/api/whatsapp/messages/{inbound}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.get(&globex, &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(
            &admin,
            &format!("/api/whatsapp/messages/{}", Uuid::now_v7())
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // A deleted chat's messages are gone with it.
    api.delete(&admin, &format!("/api/whatsapp/chats/{chat}"))
        .await;
    assert_eq!(api.get(&admin, &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(&admin, &format!("/api/whatsapp/messages/{inbound}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
both!(list_get_and_read_test, list_get_and_read);

#[tokio::test]
async fn rate_limit_per_key() {
    let api = Api::start_with(
        Backend::Sqlite,
        ApiSettings {
            rate_per_s: 1,
            rate_burst: 3,
            ..ApiSettings::default()
        },
    )
    .await;
    let key = api.admin().await;
    let other = api.admin().await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(api.get(&key, "/api/whatsapp/chats").await);
    }
    assert!(statuses[..3].iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(statuses[0].headers["ratelimit-limit"], "3");
    assert_eq!(statuses[0].headers["ratelimit-remaining"], "2");
    let limited = &statuses[3];
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{limited:?}");
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(limited.headers["ratelimit-remaining"], "0");
    // Per key: another key is not limited.
    assert_eq!(
        api.get(&other, "/api/whatsapp/chats").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        api.get(&key, "/api/whatsapp/chats").await.status,
        StatusCode::OK
    );
}
