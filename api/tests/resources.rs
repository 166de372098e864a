//! Agents, labels, team notes, follow-ups, blocked numbers and webhook
//! events on PostgreSQL and SQLite: happy paths, validation, permissions
//! (agents without the right, another company's key), soft deletes hidden,
//! pages, and the audit rows.

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

fn ids(v: &Value) -> Vec<Uuid> {
    v["data"].as_array().expect("data").iter().map(id).collect()
}

async fn agents(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let r = api
        .post(
            &acme,
            "/api/whatsapp/agents",
            json!({"name": "Ana", "email": "ana@acme.example", "maxConcurrentChats": 3,
                   "permissions": {"canViewAllChats": true},
                   "workingHours": {"timezone": "Europe/Paris", "schedule": [{"day": "monday", "start": "09:00", "end": "17:00"}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let ana = id(&r.body);
    assert_eq!(r.body["maxConcurrentChats"], 3);
    assert_eq!(r.body["currentChatCount"], 0);
    assert_eq!(r.body["company"], "Acme");
    assert_eq!(r.body["permissions"]["canViewAllChats"], true);
    assert_eq!(r.body["permissions"]["canAssignChats"], false);
    assert_eq!(r.body["workingHours"]["schedule"][0]["enabled"], true);
    assert_eq!(r.body["status"], "offline");
    let dup = api
        .post(
            &acme,
            "/api/whatsapp/agents",
            json!({"name": "Ana 2", "email": "ana@acme.example"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{dup:?}");
    for (body, field) in [
        (json!({"name": "B", "email": "nope"}), "email"),
        (
            json!({"name": "B", "email": "b@acme.example", "maxConcurrentChats": 0}),
            "maxConcurrentChats",
        ),
        (
            json!({"name": "B", "email": "b@acme.example", "permissions": {"canFly": true}}),
            "canFly",
        ),
        (
            json!({"name": "B", "email": "b@acme.example", "workingHours": {"timezone": "UTC", "schedule": [{"day": "funday", "start": "9", "end": "5"}]}}),
            "workingHours",
        ),
    ] {
        let r = api.post(&acme, "/api/whatsapp/agents", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {r:?}");
        assert!(
            r.body["error"]["fields"][field].is_string(),
            "{body}: {r:?}"
        );
    }

    let (_, ana_key) = {
        let key = wapipe_domain::apikeys::create(
            &api.db,
            wapipe_domain::apikeys::NewKey::Agent {
                agent_id: ana,
                name: None,
            },
        )
        .await
        .expect("key")
        .secret;
        (ana, key)
    };
    // Agents may not manage agents, but set their own status.
    let r = api
        .post(
            &ana_key,
            "/api/whatsapp/agents",
            json!({"name": "X", "email": "x@acme.example"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .put(
            &ana_key,
            &format!("/api/whatsapp/agents/{ana}"),
            Some(json!({"maxConcurrentChats": 50})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .put(
            &ana_key,
            &format!("/api/whatsapp/agents/{ana}/status"),
            Some(json!({"status": "online"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["isOnline"], true);
    assert_eq!(r.body["availability"], "available");
    assert!(r.body["lastSeen"].is_string());
    let r = api
        .put(
            &ana_key,
            &format!("/api/whatsapp/agents/{ana}/status"),
            Some(json!({"status": "asleep"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let (bob, _) = api.agent("Bob", perms(false), 5).await;
    let r = api
        .put(
            &ana_key,
            &format!("/api/whatsapp/agents/{bob}/status"),
            Some(json!({"status": "online"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "not their own");
    let online = api.get(&acme, "/api/whatsapp/agents/online").await;
    assert_eq!(ids(&online.body), vec![ana]);
    let all = api.get(&acme, "/api/whatsapp/agents?limit=1").await;
    assert_eq!(all.body["data"].as_array().map(Vec::len), Some(1));
    let next = all.body["nextCursor"].as_str().expect("a second page");
    let page2 = api
        .get(
            &acme,
            &format!("/api/whatsapp/agents?limit=1&cursor={next}"),
        )
        .await;
    assert_eq!(ids(&page2.body), vec![bob]);

    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/agents/{ana}"),
            Some(json!({"maxConcurrentChats": 8, "isActive": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["maxConcurrentChats"], 8);
    assert_eq!(
        api.audit_actions(ana).await,
        ["agent.create", "agent.update"]
    );
    // Inactive: the agent's key stops working.
    assert_eq!(
        api.get(&ana_key, "/api/whatsapp/agents").await.status,
        StatusCode::UNAUTHORIZED
    );

    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.get(&globex, &format!("/api/whatsapp/agents/{bob}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&globex, "/api/whatsapp/agents").await.body["data"],
        json!([])
    );
}
both!(agents_test, agents);

async fn labels(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let r = api
        .post(
            &acme,
            "/api/whatsapp/labels",
            json!({"name": "VIP", "color": "#ff5733"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let vip = id(&r.body);
    assert_eq!(r.body["color"], "#FF5733");
    assert_eq!(r.body["usageCount"], 0);
    let dup = api
        .post(
            &acme,
            "/api/whatsapp/labels",
            json!({"name": "vip", "color": "#000000"}),
        )
        .await;
    assert_eq!(
        dup.status,
        StatusCode::CONFLICT,
        "names ignore case: {dup:?}"
    );
    let bad = api
        .post(
            &acme,
            "/api/whatsapp/labels",
            json!({"name": "X", "color": "red"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["error"]["fields"]["color"].is_string());

    let (_, no_rights) = api.agent("Ana", json!({"canViewAllChats": true}), 5).await;
    let r = api
        .post(
            &no_rights,
            "/api/whatsapp/labels",
            json!({"name": "Mine", "color": "#000000"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let (chat, _) = api
        .inbound(api.config_id, "33600000001", "A", "hi", minutes_ago(3))
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/labels/{vip}");
    let r = api.post(&no_rights, &path, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "tagging a visible chat: {r:?}");
    assert_eq!(r.body["labels"], json!([vip]));
    api.post(&acme, &path, json!({})).await; // twice: counted once
    let l = api.get(&acme, "/api/whatsapp/labels").await;
    assert_eq!(l.body["data"][0]["usageCount"], 1);
    let r = api
        .get(&acme, &format!("/api/whatsapp/chats?label={vip}"))
        .await;
    assert_eq!(ids(&r.body), vec![chat]);
    let r = api.delete(&acme, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["labels"], json!([]));
    assert_eq!(
        api.get(&acme, "/api/whatsapp/labels").await.body["data"][0]["usageCount"],
        0
    );

    // Another company's label cannot go on this chat, nor be seen.
    let globex = api.admin_of(&["Globex"]).await;
    let g = api
        .post(
            &globex,
            "/api/whatsapp/labels",
            json!({"name": "VIP", "color": "#111111"}),
        )
        .await;
    assert_eq!(g.status, StatusCode::CREATED, "per config: {g:?}");
    let g = id(&g.body);
    assert_eq!(
        api.post(
            &acme,
            &format!("/api/whatsapp/chats/{chat}/labels/{g}"),
            json!({})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.put(
            &globex,
            &format!("/api/whatsapp/labels/{vip}"),
            Some(json!({"name": "x"}))
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/labels/{vip}"),
            Some(json!({"name": "Gold", "color": "#00ff00"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["name"], "Gold");
    assert_eq!(
        api.delete(&acme, &format!("/api/whatsapp/labels/{vip}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get(&acme, "/api/whatsapp/labels").await.body["data"],
        json!([]),
        "deleted labels are hidden"
    );
    let again = api
        .post(
            &acme,
            "/api/whatsapp/labels",
            json!({"name": "gold", "color": "#000000"}),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::CREATED,
        "a deleted label's name is free again"
    );
    assert_eq!(
        api.audit_actions(vip).await,
        ["label.create", "label.update", "label.delete"]
    );
}
both!(labels_test, labels);

async fn notes(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let (ana, ana_key) = api.agent("Ana", perms(true), 5).await;
    let (_, bob_key) = api.agent("Bob", perms(true), 5).await;
    let (chat, _) = api
        .inbound(api.config_id, "33600000001", "A", "hi", minutes_ago(3))
        .await;
    let path = format!("/api/whatsapp/chats/{chat}/notes");
    let r = api
        .post(&ana_key, &path, json!({"note": "Called, no answer"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let note = id(&r.body);
    assert_eq!(r.body["authorId"], json!(ana));
    assert_eq!(r.body["authorName"], "Ana");
    assert_eq!(
        api.post(&ana_key, &path, json!({"note": "  "}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.post(&ana_key, &path, json!({"content": "x"}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let np = format!("/api/whatsapp/notes/{note}");
    assert_eq!(
        api.put(&bob_key, &np, Some(json!({"note": "mine now"})))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = api
        .put(&ana_key, &np, Some(json!({"note": "Called twice"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["note"], "Called twice");
    assert_eq!(r.body["editedBy"], json!(ana));
    assert_eq!(r.body["editHistory"][0]["note"], "Called, no answer");
    assert_eq!(r.body["editHistory"][0]["editedBy"], json!(ana));
    let r = api.put(&acme, &np, Some(json!({"note": "Third"}))).await;
    assert_eq!(r.body["editHistory"].as_array().map(Vec::len), Some(2));

    for i in 0..3 {
        api.post(&bob_key, &path, json!({"note": format!("n{i}")}))
            .await;
    }
    let first = api.get(&ana_key, &format!("{path}?limit=2")).await;
    let cursor = first.body["nextCursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let second = api
        .get(&ana_key, &format!("{path}?limit=2&cursor={cursor}"))
        .await;
    let mut all = ids(&first.body);
    all.extend(ids(&second.body));
    assert_eq!(all.len(), 4);
    assert_eq!(all[3], note, "newest first");

    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(api.get(&globex, &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.delete(&globex, &np).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.delete(&ana_key, &np).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(
        !ids(&api.get(&ana_key, &path).await.body).contains(&note),
        "deleted notes are hidden"
    );
    assert_eq!(
        api.put(&ana_key, &np, Some(json!({"note": "x"})))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.audit_actions(note).await,
        ["note.update", "note.update", "note.delete"]
    );
}
both!(notes_test, notes);

async fn followups(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let (ana, ana_key) = api.agent("Ana", json!({"canViewAllChats": true}), 5).await;
    let (bob, _) = api.agent("Bob", perms(true), 5).await;
    let (chat, _) = api
        .inbound(api.config_id, "33600000001", "A", "hi", minutes_ago(3))
        .await;
    let at = |h: i64| (chrono::Utc::now() + chrono::Duration::hours(h)).to_rfc3339();
    let r = api
        .post(
            &ana_key,
            "/api/whatsapp/followups",
            json!({"chatId": chat, "title": "Call back", "scheduledAt": at(2)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let f1 = id(&r.body);
    assert_eq!(r.body["agentId"], json!(ana), "the caller by default");
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["priority"], "medium");
    let r = api
        .post(
            &ana_key,
            "/api/whatsapp/followups",
            json!({"chatId": chat, "agentId": bob, "title": "x", "scheduledAt": at(1)}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "for another agent needs canAssignChats"
    );
    let r = api
        .post(&acme, "/api/whatsapp/followups", json!({"chatId": chat, "agentId": bob, "title": "Quote", "scheduledAt": at(1), "priority": "high"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let f2 = id(&r.body);
    for (body, field) in [
        (
            json!({"chatId": chat, "agentId": bob, "title": "x", "scheduledAt": at(-1)}),
            "scheduledAt",
        ),
        (
            json!({"chatId": chat, "agentId": bob, "title": "", "scheduledAt": at(1)}),
            "title",
        ),
        (
            json!({"chatId": chat, "agentId": bob, "title": "x", "scheduledAt": at(1), "priority": "asap"}),
            "priority",
        ),
        (
            json!({"chatId": chat, "title": "x", "scheduledAt": at(1)}),
            "agentId",
        ),
    ] {
        let r = api
            .post(&acme, "/api/whatsapp/followups", body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {r:?}");
        assert!(
            r.body["error"]["fields"][field].is_string(),
            "{body}: {r:?}"
        );
    }

    assert_eq!(
        ids(&api.get(&acme, "/api/whatsapp/followups").await.body),
        vec![f2, f1],
        "soonest first"
    );
    assert_eq!(
        ids(&api
            .get(&acme, &format!("/api/whatsapp/followups?agentId={ana}"))
            .await
            .body),
        vec![f1]
    );
    assert_eq!(
        ids(&api
            .get(&acme, &format!("/api/whatsapp/chats/{chat}/followups"))
            .await
            .body)
        .len(),
        2
    );
    let to = (chrono::Utc::now() + chrono::Duration::minutes(90))
        .to_rfc3339()
        .replace('+', "%2B");
    assert_eq!(
        ids(&api
            .get(&acme, &format!("/api/whatsapp/followups?to={to}"))
            .await
            .body),
        vec![f2]
    );
    assert_eq!(
        api.get(&acme, "/api/whatsapp/followups?status=later")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/followups/{f2}"),
            Some(json!({"status": "completed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["status"], "completed");
    assert!(r.body["completedAt"].is_string());
    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/followups/{f2}"),
            Some(json!({"status": "cancelled"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "closed already");
    assert_eq!(
        ids(&api
            .get(&acme, "/api/whatsapp/followups?status=completed")
            .await
            .body),
        vec![f2]
    );
    let r = api
        .put(
            &ana_key,
            &format!("/api/whatsapp/followups/{f1}"),
            Some(json!({"title": "Call back (2)", "scheduledAt": at(5)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["title"], "Call back (2)");

    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.delete(&globex, &format!("/api/whatsapp/followups/{f1}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&acme, &format!("/api/whatsapp/followups/{f1}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ids(&api.get(&acme, "/api/whatsapp/followups").await.body),
        vec![f2],
        "deleted are hidden"
    );
    assert_eq!(
        api.audit_actions(f1).await,
        ["followup.create", "followup.update", "followup.delete"]
    );
}
both!(followups_test, followups);

async fn blocked_numbers(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let (_, ana_key) = api.agent("Ana", perms(false), 5).await;
    let r = api
        .post(
            &ana_key,
            "/api/whatsapp/blocked-numbers",
            json!({"phoneNumber": "+33600000001"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .post(
            &acme,
            "/api/whatsapp/blocked-numbers",
            json!({"phoneNumber": "+33600000001", "reason": "spam", "notes": "3 reports"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let b = id(&r.body);
    assert_eq!(r.body["phoneNumber"], "33600000001");
    assert_eq!(r.body["isActive"], true);
    assert_eq!(r.body["blockedByName"], "admin");
    assert!(r.body["blockedAt"].is_string());
    let bad = api
        .post(
            &acme,
            "/api/whatsapp/blocked-numbers",
            json!({"phoneNumber": "abc"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["error"]["fields"]["phoneNumber"].is_string());

    let list = api.get(&acme, "/api/whatsapp/blocked-numbers").await;
    assert_eq!(ids(&list.body), vec![b]);
    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.get(&globex, "/api/whatsapp/blocked-numbers").await.body["data"],
        json!([])
    );
    assert_eq!(
        api.delete(&globex, &format!("/api/whatsapp/blocked-numbers/{b}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&ana_key, &format!("/api/whatsapp/blocked-numbers/{b}"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let r = api
        .delete(&acme, &format!("/api/whatsapp/blocked-numbers/{b}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["isActive"], false);
    assert!(r.body["unblockedAt"].is_string());
    assert_eq!(
        api.get(&acme, "/api/whatsapp/blocked-numbers").await.body["data"],
        json!([])
    );
    assert_eq!(
        ids(&api
            .get(&acme, "/api/whatsapp/blocked-numbers?all=true")
            .await
            .body),
        vec![b]
    );
    assert_eq!(
        api.delete(&acme, &format!("/api/whatsapp/blocked-numbers/{b}"))
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.audit_actions(b).await,
        ["number.block", "number.unblock"]
    );
}
both!(blocked_numbers_test, blocked_numbers);

async fn webhook_events(api: Api) {
    use sea_orm::{ActiveValue::Set, EntityTrait};
    use wapipe_shared::entities::webhook_events::{self as ev, EventStatus};
    let now = chrono::Utc::now();
    let mut made = Vec::new();
    for (i, (config, field, status)) in [
        (Some(api.config_id), "messages", EventStatus::Processed),
        (
            Some(api.config_id),
            "message_template_status_update",
            EventStatus::Processed,
        ),
        (Some(api.config_id), "messages", EventStatus::Failed),
        (
            Some(api.other_config_id),
            "messages",
            EventStatus::Processed,
        ),
        (None, "messages", EventStatus::Rejected),
    ]
    .into_iter()
    .enumerate()
    {
        let id = Uuid::now_v7();
        let at = now - chrono::Duration::minutes(10 - i as i64);
        let body = json!({"object": "whatsapp_business_account", "n": i}).to_string();
        ev::Entity::insert(ev::ActiveModel {
            id: Set(id),
            created_at: Set(at),
            updated_at: Set(at),
            config_id: Set(config),
            body_sha256: Set(format!("{i:064}")),
            raw_body: Set(body.into_bytes()),
            field: Set(Some(field.into())),
            status: Set(status),
            received_at: Set(at),
            ..Default::default()
        })
        .exec_without_returning(&api.db)
        .await
        .expect("event");
        made.push(id);
    }
    let acme = api.admin_of(&["Acme"]).await;
    let r = api.get(&acme, "/api/whatsapp/webhooks/events").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        ids(&r.body),
        vec![made[2], made[1], made[0]],
        "Acme's, newest first"
    );
    assert_eq!(
        r.body["data"][0]["rawData"],
        Value::Null,
        "no raw payload unless asked"
    );
    let r = api
        .get(
            &acme,
            "/api/whatsapp/webhooks/events?includeRaw=true&limit=1",
        )
        .await;
    assert_eq!(r.body["data"][0]["rawData"]["n"], 2);
    assert!(r.body["nextCursor"].is_string());
    let r = api
        .get(
            &acme,
            "/api/whatsapp/webhooks/events?eventType=messages&status=processed",
        )
        .await;
    assert_eq!(ids(&r.body), vec![made[0]]);
    assert_eq!(r.body["data"][0]["eventType"], "messages");
    let from = (now - chrono::Duration::minutes(9) - chrono::Duration::seconds(30))
        .to_rfc3339()
        .replace('+', "%2B");
    let r = api
        .get(&acme, &format!("/api/whatsapp/webhooks/events?from={from}"))
        .await;
    assert_eq!(ids(&r.body), vec![made[2], made[1]]);
    assert_eq!(
        api.get(&acme, "/api/whatsapp/webhooks/events?status=done")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // The operator's key sees every event, unrouted ones too.
    let all = api.admin().await;
    assert_eq!(
        ids(&api.get(&all, "/api/whatsapp/webhooks/events").await.body).len(),
        5
    );
}
both!(webhook_events_test, webhook_events);

async fn templates(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let r = api
        .post(&acme, "/api/whatsapp/templates", json!({"name": "Greeting", "content": "Hello {{name}}!", "variables": ["name"], "category": "greeting"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let quick = id(&r.body);
    assert_eq!(r.body["status"], "local");
    assert_eq!(r.body["variables"], json!(["name"]));
    let dup = api
        .post(
            &acme,
            "/api/whatsapp/templates",
            json!({"name": "Greeting", "content": "x"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let bad = api
        .post(
            &acme,
            "/api/whatsapp/templates",
            json!({"name": "X", "content": ""}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["error"]["fields"]["content"].is_string());
    let (_, no_rights) = api.agent("Ana", json!({"canViewAllChats": true}), 5).await;
    assert_eq!(
        api.post(
            &no_rights,
            "/api/whatsapp/templates",
            json!({"name": "Y", "content": "y"})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    // A synced WhatsApp template: listed with Meta's status, text not editable here.
    let synced = api
        .template(
            api.config_id,
            "order_update",
            "fr",
            "Commande {{1}}",
            "APPROVED",
        )
        .await;
    let r = api
        .get(&no_rights, "/api/whatsapp/templates?status=approved")
        .await;
    assert_eq!(ids(&r.body), vec![synced]);
    assert_eq!(r.body["data"][0]["content"], "Commande {{1}}");
    assert_eq!(r.body["data"][0]["whatsappTemplateName"], "order_update");
    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/templates/{synced}"),
            Some(json!({"content": "new"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/templates/{synced}"),
            Some(json!({"isActive": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["isActive"], false);
    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/templates/{quick}"),
            Some(json!({"content": "Hi {{name}}"})),
        )
        .await;
    assert_eq!(r.body["content"], "Hi {{name}}");

    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.get(&globex, "/api/whatsapp/templates").await.body["data"],
        json!([])
    );
    assert_eq!(
        api.delete(&globex, &format!("/api/whatsapp/templates/{quick}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&acme, &format!("/api/whatsapp/templates/{quick}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ids(&api.get(&acme, "/api/whatsapp/templates").await.body),
        vec![synced],
        "deleted are hidden"
    );
    assert_eq!(
        api.audit_actions(quick).await,
        ["template.create", "template.update", "template.delete"]
    );
}
both!(templates_test, templates);

async fn stats(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let (ana, ana_key) = api.agent("Ana", perms(true), 5).await;
    let (_, blind_key) = api
        .agent("Blind", json!({"canViewAllChats": true}), 5)
        .await;
    let (a, _) = api
        .inbound(api.config_id, "33600000001", "A", "hi", minutes_ago(10))
        .await;
    let (b, _) = api
        .inbound(api.config_id, "33600000002", "B", "hi", minutes_ago(9))
        .await;
    api.post(
        &acme,
        &format!("/api/whatsapp/chats/{a}/assign"),
        json!({"agentId": ana}),
    )
    .await;
    let r = api
        .post(
            &ana_key,
            &format!("/api/whatsapp/chats/{a}/messages"),
            json!({"type": "text", "text": "hello"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    api.put(
        &acme,
        &format!("/api/whatsapp/chats/{b}"),
        Some(json!({"status": "resolved"})),
    )
    .await;

    let r = api.get(&acme, "/api/whatsapp/stats/admin").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["chatsByStatus"]["assigned"], 1);
    assert_eq!(r.body["chatsByStatus"]["resolved"], 1);
    assert_eq!(r.body["chatsByStatus"]["closed"], 0);
    assert_eq!(r.body["resolutionRate"], 0.5);
    let days = r.body["messagesPerDay"].as_array().expect("days");
    let (inb, out): (u64, u64) = days.iter().fold((0, 0), |(i, o), d| {
        (
            i + d["inbound"].as_u64().unwrap_or(0),
            o + d["outbound"].as_u64().unwrap_or(0),
        )
    });
    assert_eq!((inb, out), (2, 1));
    let first = r.body["firstResponseTime"]
        .as_f64()
        .expect("a response time");
    assert!((590.0..700.0).contains(&first), "about 10 minutes: {first}");
    assert_eq!(
        api.get(&blind_key, "/api/whatsapp/stats/admin")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get(
            &acme,
            "/api/whatsapp/stats/admin?from=2026-01-10&to=2026-01-01"
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    let globex = api.admin_of(&["Globex"]).await;
    let g = api.get(&globex, "/api/whatsapp/stats/admin").await;
    assert_eq!(
        g.body["messagesPerDay"],
        json!([]),
        "another company's numbers"
    );

    // The roll-up is idempotent: twice, one row with the same numbers.
    let today = chrono::Utc::now().date_naive();
    let agent = api.agent_row(ana).await;
    let one = wapipe_domain::stats::rollup_agent_day(&api.db, &agent, today)
        .await
        .expect("rollup");
    let two = wapipe_domain::stats::rollup_agent_day(&api.db, &agent, today)
        .await
        .expect("rollup");
    assert_eq!(one.id, two.id);
    assert_eq!(
        (two.chats_assigned, two.messages_sent, two.messages_received),
        (1, 1, 1)
    );
    assert!(two.avg_response_time.is_some());
    let r = api
        .get(&ana_key, &format!("/api/whatsapp/stats/agents/{ana}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "their own: {r:?}");
    // The API's own roll-up loop ticks at start and may also have written
    // yesterday's row for Ana (all zeros) if it ran after she was created.
    let days = r.body["days"].as_array().expect("days");
    let busy: Vec<_> = days
        .iter()
        .filter(|d| d["messagesSent"] != 0 || d["chatsAssigned"] != 0)
        .collect();
    assert_eq!(busy.len(), 1, "one day with work: {days:?}");
    assert_eq!(busy[0]["date"], today.to_string(), "{days:?}");
    assert!(
        days.len() <= 2,
        "today, and at most yesterday's empty row: {days:?}"
    );
    assert_eq!(r.body["messagesSent"], 1);
    assert_eq!(r.body["chatsAssigned"], 1);
    let r = api
        .get(&blind_key, &format!("/api/whatsapp/stats/agents/{ana}"))
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "another's without canViewReports"
    );
    assert_eq!(
        api.get(&globex, &format!("/api/whatsapp/stats/agents/{ana}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
both!(stats_test, stats);

async fn directory(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let (ana, ana_key) = api.agent("Ana", json!({}), 5).await;
    let (chat, _) = api
        .inbound(api.config_id, "33600000001", "Zoé", "hi", minutes_ago(3))
        .await;
    let c = api.get(&acme, &format!("/api/whatsapp/chats/{chat}")).await;
    let customer = c.body["customerId"]
        .as_str()
        .expect("customer id")
        .to_owned();
    let r = api
        .get(&acme, &format!("/api/whatsapp/customers/{customer}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["phoneNumber"], "33600000001");
    assert_eq!(r.body["name"], "Zoé");
    assert_eq!(r.body["scenario_not_allowed"], json!([]));
    assert_eq!(
        api.get(&ana_key, &format!("/api/whatsapp/customers/{customer}"))
            .await
            .status,
        StatusCode::NOT_FOUND,
        "not their chat"
    );
    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.get(&globex, &format!("/api/whatsapp/customers/{customer}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    api.post(
        &acme,
        &format!("/api/whatsapp/chats/{chat}/assign"),
        json!({"agentId": ana}),
    )
    .await;
    let r = api
        .get(&ana_key, &format!("/api/whatsapp/chats/{chat}/assignments"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body[0]["assignedTo"], json!(ana));
    assert_eq!(r.body[0]["assignmentType"], "manual");
    assert_eq!(r.body[0]["status"], "active");
    assert_eq!(
        api.get(&ana_key, &format!("/api/whatsapp/customers/{customer}"))
            .await
            .status,
        StatusCode::OK,
        "now their chat"
    );

    let r = api.get(&acme, "/api/whatsapp/configs").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let list = r.body.as_array().expect("list");
    assert_eq!(list.len(), 1, "Acme's number only");
    assert_eq!(list[0]["company"], "Acme");
    assert_eq!(list[0]["accessToken"], "********", "never the secret");
    assert!(!r.body.to_string().contains("v1:"), "no ciphertext either");
    // The health Meta's webhooks keep on the row is shown.
    {
        use sea_orm::EntityTrait;
        use wapipe_shared::entities::whatsapp_configs as wc;
        wc::Entity::update_many()
            .col_expr(
                wc::Column::MessagingLimitTier,
                sea_orm::sea_query::Expr::value("TIER_1K"),
            )
            .exec(&api.db)
            .await
            .expect("tier");
    }
    let r = api.get(&acme, "/api/whatsapp/configs").await;
    assert_eq!(r.body[0]["messagingLimitTier"], "TIER_1K");
    assert_eq!(r.body[0]["qualityRating"], Value::Null);
    assert_eq!(
        api.get(&ana_key, "/api/whatsapp/configs").await.status,
        StatusCode::FORBIDDEN
    );
}
both!(directory_test, directory);

async fn scenarios(api: Api) {
    let acme = api.admin_of(&["Acme"]).await;
    let (_, ana_key) = api.agent("Ana", perms(true), 5).await;
    let scenario = json!({
        "title": "Accueil", "keywords": ["bonjour"], "repeat_count": 2,
        "items": [
            {"ref": "accueil", "type": "button", "label": "Bonjour ! Que souhaitez-vous ?", "children": ["offres", "horaires"]},
            {"ref": "offres", "type": "product_list", "title": "Nos offres", "label": "Les offres", "template_scenarios": ["ete"]},
            {"ref": "horaires", "type": "text", "title": "Horaires", "label": "9 h à 19 h."}
        ]
    });
    let templates = json!([{"ref": "ete", "thumbnail_id": "sku-101", "catalog_id": "1537358196820123",
        "header": "Collection été", "sections": [{"title": "Robes", "product_items": ["sku-101"]}]}]);
    let body = json!({"scenario": scenario, "template_scenarios": templates});
    assert_eq!(
        api.post(&ana_key, "/api/whatsapp/scenarios", body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = api
        .post(&acme, "/api/whatsapp/scenarios", body.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let sid = id(&r.body);
    assert_eq!(r.body["scenario"]["title"], "Accueil");
    assert_eq!(r.body["scenario"]["repeat_count"], 2, "seed 000 names");
    assert_eq!(
        r.body["scenario"]["items"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(r.body["template_scenarios"][0]["ref"], "ete");
    assert_eq!(
        api.post(&acme, "/api/whatsapp/scenarios", body.clone())
            .await
            .status,
        StatusCode::CONFLICT
    );

    // The import's validation: a dangling child, with its path.
    let bad = json!({"scenario": {"title": "Cassé", "items": [{"ref": "a", "type": "button", "label": "x", "children": ["nowhere"]}]}});
    let r = api.post(&acme, "/api/whatsapp/scenarios", bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("nowhere"),
        "{r:?}"
    );
    assert!(
        !r.body["error"]["fields"]
            .as_object()
            .expect("fields")
            .is_empty()
    );
    let r = api
        .post(
            &acme,
            "/api/whatsapp/scenarios",
            json!({"scenario": {"title": "X", "colour": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "unknown field: {r:?}");

    let list = api.get(&ana_key, "/api/whatsapp/scenarios").await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert_eq!(list.body[0]["title"], "Accueil");
    assert_eq!(list.body[0]["items"], 3);
    let r = api
        .get(&ana_key, &format!("/api/whatsapp/scenarios/{sid}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let mut changed = body.clone();
    changed["scenario"]["keywords"] = json!(["bonjour", "salut"]);
    let r = api
        .put(
            &acme,
            &format!("/api/whatsapp/scenarios/{sid}"),
            Some(changed),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["scenario"]["keywords"], json!(["bonjour", "salut"]));
    assert_eq!(id(&r.body), sid, "replaced in place");
    let mut renamed = body.clone();
    renamed["scenario"]["title"] = json!("Autre");
    assert_eq!(
        api.put(
            &acme,
            &format!("/api/whatsapp/scenarios/{sid}"),
            Some(renamed)
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );

    let globex = api.admin_of(&["Globex"]).await;
    assert_eq!(
        api.get(&globex, &format!("/api/whatsapp/scenarios/{sid}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&globex, &format!("/api/whatsapp/scenarios/{sid}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete(&acme, &format!("/api/whatsapp/scenarios/{sid}"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get(&acme, "/api/whatsapp/scenarios").await.body,
        json!([]),
        "deleted are hidden"
    );
    assert_eq!(
        api.get(&acme, &format!("/api/whatsapp/scenarios/{sid}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.audit_actions(sid).await,
        ["scenario.create", "scenario.update", "scenario.delete"]
    );
}
both!(scenarios_test, scenarios);
