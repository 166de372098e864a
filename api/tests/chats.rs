//! The chats endpoints on PostgreSQL and SQLite: auth, the error shape,
//! create/get/update/delete, list filters and stable keyset pages,
//! company and agent visibility, assignment with capacity, transfer,
//! unassign, resolve, and mark read.

mod common;

use common::{Api, minutes_ago, perms};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn id(v: &Value) -> Uuid {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an id")
}

async fn auth_and_errors(api: Api) {
    let r = api.get("", "/api/whatsapp/chats").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    assert!(
        r.body["error"]["fields"].is_object(),
        "one error shape: {r:?}"
    );
    let r = api.get("wpk_nope", "/api/whatsapp/chats").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let admin = api.admin().await;
    let r = api.get(&admin, "/api/whatsapp/chats").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(r.headers.contains_key(h), "{h} on every answer");
    }
    // A revoked key stops working at once.
    let row = wapipe_domain::apikeys::list(&api.db)
        .await
        .expect("keys")
        .pop()
        .expect("key");
    wapipe_domain::apikeys::revoke(&api.db, row.id)
        .await
        .expect("revoke");
    assert_eq!(
        api.get(&admin, "/api/whatsapp/chats").await.status,
        StatusCode::UNAUTHORIZED
    );

    let admin = api.admin().await;
    let r = api
        .post(
            &admin,
            "/api/whatsapp/chats",
            json!({"phoneNumber": "+33612345678", "colour": "red"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "unknown field: {r:?}");
    assert_eq!(r.body["error"]["fields"]["colour"], "unknown field");
    let r = api
        .post(&admin, "/api/whatsapp/chats", json!({"phoneNumber": "12"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["error"]["fields"]["phoneNumber"].is_string(),
        "{r:?}"
    );
    // PostgreSQL stores no NUL in text or jsonb: a 400 here, never a 500
    // from the database (found by the Schemathesis run), on both backends.
    let r = api
        .post(
            &admin,
            "/api/whatsapp/chats",
            json!({"phoneNumber": "+33612345678", "customerName": "A\u{0}B"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "NUL in a body: {r:?}");
    assert_eq!(r.body["error"]["code"], "validation_failed", "{r:?}");
    let r = api.get(&admin, "/api/whatsapp/chats?q=%00").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "NUL in a query: {r:?}");
    let r = api.get(&admin, "/api/whatsapp/chats").await;
    assert_eq!(r.body["data"], json!([]), "nothing was created: {r:?}");
    let r = api.get(&admin, "/api/whatsapp/chats/not-a-uuid").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api.get(&admin, "/api/whatsapp/chats?limit=500").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["error"]["fields"]["limit"].is_string());
    let r = api.get(&admin, "/api/whatsapp/chats?cursor=garbage").await;
    assert!(r.body["error"]["fields"]["cursor"].is_string(), "{r:?}");
    let r = api
        .http
        .post(format!("{}/api/whatsapp/chats", api.base))
        .bearer_auth(&admin)
        .body("phoneNumber=1")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = api.get(&admin, "/api/whatsapp/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"]["code"], "not_found");
}
both!(auth_and_errors_test, auth_and_errors);

async fn create_get_update_delete(api: Api) {
    // Two companies: the operator's key must say which number.
    let admin = api.admin().await;
    let r = api
        .post(
            &admin,
            "/api/whatsapp/chats",
            json!({"phoneNumber": "+33612345678"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert!(r.body["error"]["fields"]["configId"].is_string());

    let acme = api.admin_of(&["Acme"]).await;
    let r = api
        .post(
            &acme,
            "/api/whatsapp/chats",
            json!({"phoneNumber": "+33612345678", "customerName": "Zoé", "priority": "high",
                   "customerInfo": {"email": "z@example.com", "tags": ["vip"]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let chat = id(&r.body);
    assert_eq!(r.body["phoneNumber"], "33612345678");
    assert_eq!(r.body["status"], "unassigned");
    assert_eq!(r.body["priority"], "high");
    assert_eq!(r.body["source"], "api");
    assert_eq!(r.body["customerInfo"]["tags"], json!(["vip"]));
    assert_eq!(r.body["transferHistory"], json!([]));
    assert_eq!(api.audit_actions(chat).await, ["chat.create"]);

    let again = api
        .post(
            &acme,
            "/api/whatsapp/chats",
            json!({"phoneNumber": "33612345678"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");

    let r = api.get(&acme, &format!("/api/whatsapp/chats/{chat}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["customerName"], "Zoé");

    // Another company's key sees nothing of it.
    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.get(&globex, &format!("/api/whatsapp/chats/{chat}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = api.get(&globex, "/api/whatsapp/chats").await;
    assert_eq!(r.body["data"], json!([]));

    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/chats/{chat}"),
            Some(json!({"priority": "urgent"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["priority"], "urgent");
    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/chats/{chat}"),
            Some(json!({"priority": "asap"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["error"]["fields"]["priority"].is_string());

    let r = api
        .delete(&acme, &format!("/api/whatsapp/chats/{chat}"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(
        api.get(&acme, &format!("/api/whatsapp/chats/{chat}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = api.get(&acme, "/api/whatsapp/chats").await;
    assert_eq!(r.body["data"], json!([]), "soft-deleted chats are hidden");
    assert_eq!(
        api.audit_actions(chat).await,
        ["chat.create", "chat.update", "chat.delete"]
    );
}
both!(create_get_update_delete_test, create_get_update_delete);

async fn list_filters_and_stable_pages(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let mut made = Vec::new();
    for i in 0..7 {
        let (chat, _) = api
            .inbound(
                api.config_id,
                &format!("3361234560{i}"),
                &format!("Client {i}"),
                "hi",
                minutes_ago(100 - i),
            )
            .await;
        made.push(chat);
    }
    made.reverse(); // newest first, as listed
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut round = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/whatsapp/chats?limit=3&cursor={c}"),
            None => "/api/whatsapp/chats?limit=3".to_owned(),
        };
        let r = api.get(&admin, &path).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        seen.extend(r.body["data"].as_array().expect("data").iter().map(id));
        // New activity between two pages must not shift the pages.
        api.inbound(
            api.config_id,
            &format!("4915100000{round}"),
            "New",
            "hello",
            minutes_ago(0),
        )
        .await;
        round += 1;
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, made, "every row once, in order, despite inserts");

    let q = |path: &str| {
        let api = &api;
        let admin = admin.clone();
        let path = path.to_owned();
        async move {
            let r = api.get(&admin, &path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {r:?}");
            r.body["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        q("/api/whatsapp/chats?q=%2B336123456").await.len(),
        7,
        "phone prefix with +"
    );
    assert_eq!(
        q("/api/whatsapp/chats?q=client%203").await,
        vec![made[3]],
        "name prefix, any case"
    );
    assert_eq!(
        q("/api/whatsapp/chats?q=%25").await.len(),
        0,
        "wildcards are literal"
    );
    assert_eq!(q("/api/whatsapp/chats?status=assigned").await.len(), 0);
    assert_eq!(
        q("/api/whatsapp/chats?assignedTo=none&q=3361").await.len(),
        7
    );
    assert_eq!(q("/api/whatsapp/chats?unread=true&q=3361").await.len(), 7);
    let from = (minutes_ago(98)).to_rfc3339().replace('+', "%2B");
    let to = (minutes_ago(95)).to_rfc3339().replace('+', "%2B");
    assert_eq!(
        q(&format!("/api/whatsapp/chats?from={from}&to={to}"))
            .await
            .len(),
        3
    );
    assert_eq!(
        api.get(&admin, "/api/whatsapp/chats?status=open")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.get(&admin, "/api/whatsapp/chats?from=yesterday")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // By label (labels are attached by their own endpoints; here directly).
    let label = Uuid::now_v7();
    let now = chrono::Utc::now();
    use sea_orm::{ActiveValue::Set, EntityTrait};
    use wapipe_shared::entities::{chat_labels, labels};
    labels::Entity::insert(labels::ActiveModel {
        id: Set(label),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(api.config_id),
        name: Set("VIP".into()),
        color: Set("#FF0000".into()),
        ..Default::default()
    })
    .exec_without_returning(&api.db)
    .await
    .expect("label");
    chat_labels::Entity::insert(chat_labels::ActiveModel {
        chat_id: Set(made[2]),
        label_id: Set(label),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec_without_returning(&api.db)
    .await
    .expect("chat label");
    assert_eq!(
        q(&format!("/api/whatsapp/chats?label={label}")).await,
        vec![made[2]]
    );
    let r = api
        .get(&admin, &format!("/api/whatsapp/chats/{}", made[2]))
        .await;
    assert_eq!(r.body["labels"], json!([label]));
}
both!(
    list_filters_and_stable_pages_test,
    list_filters_and_stable_pages
);

async fn agents_see_their_chats_and_need_rights(api: Api) {
    let (ana, ana_key) = api.agent("Ana", json!({"canAssignChats": false}), 5).await;
    let (_, boss_key) = api.agent("Boss", perms(true), 5).await;
    let (mine, _) = api
        .inbound(api.config_id, "33600000001", "Mine", "hi", minutes_ago(5))
        .await;
    let (other, _) = api
        .inbound(api.config_id, "33600000002", "Other", "hi", minutes_ago(4))
        .await;
    let r = api
        .post(
            &boss_key,
            &format!("/api/whatsapp/chats/{mine}/assign"),
            json!({"agentId": ana}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    let r = api.get(&ana_key, "/api/whatsapp/chats").await;
    let ids: Vec<Uuid> = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(id)
        .collect();
    assert_eq!(ids, vec![mine], "without canViewAllChats: only their own");
    assert_eq!(
        api.get(&ana_key, &format!("/api/whatsapp/chats/{other}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = api.get(&boss_key, "/api/whatsapp/chats").await;
    assert_eq!(r.body["data"].as_array().expect("data").len(), 2);

    let r = api
        .post(
            &ana_key,
            &format!("/api/whatsapp/chats/{mine}/assign"),
            json!({"agentId": ana}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    let r = api
        .post(
            &ana_key,
            &format!("/api/whatsapp/chats/{mine}/transfer"),
            json!({"toAgentId": ana, "reason": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // An agent may hand back their own chat.
    let r = api
        .put(
            &ana_key,
            &format!("/api/whatsapp/chats/{mine}/unassign"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        api.get(&ana_key, &format!("/api/whatsapp/chats/{mine}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Globex's admin cannot touch Acme's chats or agents.
    let globex = api.admin_of(&["Globex"]).await;
    let r = api
        .post(
            &globex,
            &format!("/api/whatsapp/chats/{other}/assign"),
            json!({"agentId": ana}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (g_chat, _) = api
        .inbound(
            api.other_config_id,
            "33600000009",
            "G",
            "hi",
            minutes_ago(1),
        )
        .await;
    let r = api
        .post(
            &globex,
            &format!("/api/whatsapp/chats/{g_chat}/assign"),
            json!({"agentId": ana}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "another company's agent: {r:?}"
    );
}
both!(
    agents_see_their_chats_and_need_rights_test,
    agents_see_their_chats_and_need_rights
);

async fn assignment_keeps_counts(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let (ana, _) = api.agent("Ana", perms(true), 1).await;
    let (bob, bob_key) = api.agent("Bob", perms(true), 1).await;
    let (a, _) = api
        .inbound(api.config_id, "33600000001", "A", "hi", minutes_ago(5))
        .await;
    let (b, _) = api
        .inbound(api.config_id, "33600000002", "B", "hi", minutes_ago(4))
        .await;

    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{a}/assign"),
            json!({"agentId": ana}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["status"], "assigned");
    assert_eq!(r.body["assignedTo"], json!(ana));
    assert!(r.body["assignedAt"].is_string());
    assert_eq!(api.agent_row(ana).await.current_chat_count, 1);

    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{b}/assign"),
            json!({"agentId": ana}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "at maxConcurrentChats: {r:?}"
    );
    assert_eq!(r.body["error"]["code"], "agent_at_capacity");
    let r = api
        .post(
            &bob_key,
            &format!("/api/whatsapp/chats/{b}/assign"),
            json!({"agentId": ana, "force": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "only admins force");
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{b}/assign"),
            json!({"agentId": ana, "force": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(api.agent_row(ana).await.current_chat_count, 2);

    // Transfer a to Bob: Ana's slot is freed, Bob's taken, history kept.
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{a}/transfer"),
            json!({"toAgentId": bob, "reason": "Spanish speaker"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["assignedTo"], json!(bob));
    let h = &r.body["transferHistory"];
    assert_eq!(h.as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(h[0]["fromAgent"], json!(ana));
    assert_eq!(h[0]["toAgent"], json!(bob));
    assert_eq!(h[0]["reason"], "Spanish speaker");
    assert_eq!(api.agent_row(ana).await.current_chat_count, 1);
    assert_eq!(api.agent_row(bob).await.current_chat_count, 1);
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{b}/transfer"),
            json!({"toAgentId": bob, "reason": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "Bob is full");
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{b}/transfer"),
            json!({"toAgentId": bob}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a reason is required");

    // Resolving frees the slot; unassigning too.
    let r = api
        .put(
            &admin,
            &format!("/api/whatsapp/chats/{a}"),
            Some(json!({"status": "resolved"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["status"], "resolved");
    assert_eq!(r.body["assignedTo"], Value::Null);
    assert_eq!(api.agent_row(bob).await.current_chat_count, 0);
    let r = api
        .put(&admin, &format!("/api/whatsapp/chats/{b}/unassign"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "unassigned");
    assert_eq!(api.agent_row(ana).await.current_chat_count, 0);
    let r = api
        .put(&admin, &format!("/api/whatsapp/chats/{b}/unassign"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "not assigned any more");

    assert_eq!(
        api.audit_actions(a).await,
        ["chat.assign", "chat.transfer", "chat.resolve"]
    );
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use wapipe_shared::entities::chat_assignments;
    let rows = chat_assignments::Entity::find()
        .filter(chat_assignments::Column::ChatId.eq(a))
        .all(&api.db)
        .await
        .expect("assignments");
    let mut states: Vec<(String, String)> = rows
        .into_iter()
        .map(|r| (r.assignment_type, r.status))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("manual".into(), "completed".into()),
            ("transfer".into(), "completed".into())
        ]
    );
}
both!(assignment_keeps_counts_test, assignment_keeps_counts);

async fn mark_chat_read(api: Api) {
    let admin = api.admin_of(&["Acme"]).await;
    let (chat, msg) = api
        .inbound(api.config_id, "33600000001", "A", "hi", minutes_ago(5))
        .await;
    let before = api.outbound_jobs().await;
    let r = api
        .put(&admin, &format!("/api/whatsapp/chats/{chat}/read"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["unreadCount"], 0);
    let m = api
        .get(&admin, &format!("/api/whatsapp/messages/{msg}"))
        .await;
    assert_eq!(m.body["isRead"], true);
    assert_eq!(
        api.outbound_jobs().await,
        before + 1,
        "a mark-as-read job for Meta"
    );
    // Nothing new to read: no second job.
    api.put(&admin, &format!("/api/whatsapp/chats/{chat}/read"), None)
        .await;
    assert_eq!(api.outbound_jobs().await, before + 1);
}
both!(mark_chat_read_test, mark_chat_read);
