//! The chatbot's rules (issue 11) against the real schema on PostgreSQL
//! and SQLite: import and validation, keyword matching, runs, choices,
//! fallbacks, exit keywords, handoff, the silences (blocked, assigned,
//! not allowed, too old) and idempotency per inbound message. Replies are
//! read back from the outbox (`messages` answering the inbound message);
//! the worker tests carry them on to the fake Graph.

use std::sync::Arc;

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_domain::blocking::{self, Actor};
use wapipe_domain::scenarios::engine::{self, Action, EngineSettings, Outcome, Refusal};
use wapipe_domain::scenarios::{self, FaultKind, FlowFile, ScenarioError, store};
use wapipe_shared::broker::{Broker, BrokerSettings, EmbeddedBroker};
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::messages::{Direction, MessageStatus, Origin};
use wapipe_shared::entities::{
    audit_log, chats, customers, messages, scenario_items, scenario_runs,
};
use wapipe_shared::tenants::{self, NewConfig};
use wapipe_testkit::both_backends;
use wapipe_testkit::db::{Backend, TempDir, TestDb, migrated};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

struct Env {
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    embedded: EmbeddedBroker,
    config_id: Uuid,
    settings: EngineSettings,
    _dir: Option<TempDir>,
}

async fn add_config(db: &DatabaseConnection, phone: &str) -> Uuid {
    let key = SecretKey::from_base64(KEY).expect("key");
    tenants::add(
        db,
        &key,
        NewConfig {
            company: "Boutique".into(),
            name: None,
            phone_number_id: phone.into(),
            waba_id: "15550009999".into(),
            display_phone_number: None,
            app_secret: "secret".into(),
            verify_token: "verify".into(),
            access_token: "EAAG".into(),
            webhook_secret: None,
            max_mps: 80,
        },
    )
    .await
    .expect("add config")
    .id
}

async fn env(backend: Backend) -> Env {
    let TestDb { db, dir, .. } = migrated(backend, 4).await;
    let embedded = EmbeddedBroker::new(
        &BrokerSettings {
            amqp_url: None,
            prefix: "t".into(),
            lanes: 2,
            prefetch: 8,
        },
        db.clone(),
    );
    let config_id = add_config(&db, "15550000001").await;
    Env {
        broker: Arc::new(embedded.clone()),
        embedded,
        db,
        config_id,
        settings: EngineSettings::default(),
        _dir: dir,
    }
}

/// The flow of most tests (French, as seed 000's customers write).
fn flow() -> Value {
    let rayons: Vec<Value> = (1..=7)
        .map(|i| {
            let mut it = json!({"ref": format!("r{i}"), "type": "text",
                "title": format!("Rayon {i}"), "label": format!("Bienvenue au rayon {i}.")});
            if i == 3 {
                it = json!({"ref": "r3", "type": "button", "title": "Rayon 3",
                    "label": "Homme ou femme ?", "children": ["r3h", "r3f"]});
            }
            it
        })
        .collect();
    let mut items = vec![
        json!({"ref": "hello", "type": "button", "label": "Bonjour ! Que voulez-vous ?",
               "children": ["offers", "shop", "human"]}),
        json!({"ref": "offers", "type": "text", "title": "Offres", "label": "Nos offres du moment."}),
        json!({"ref": "shop", "type": "button", "title": "Boutique", "label": "Quel rayon ?",
               "children": ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]}),
        json!({"ref": "human", "type": "handoff", "title": "Un conseiller",
               "label": "Un conseiller vous répond bientôt."}),
        json!({"ref": "r3h", "type": "text", "title": "Homme", "label": "Rayon homme."}),
        json!({"ref": "r3f", "type": "text", "title": "Femme", "label": "Rayon femme."}),
    ];
    items.extend(rayons);
    json!({
        "settings": {"fallback": "Je n'ai pas compris, choisissez une option.",
                     "exit_keywords": ["stop", "menu"], "default_scenario": "Accueil"},
        "scenarios": [
            {"title": "Accueil", "keywords": ["bonjour", "salut"], "priority": 10, "items": items},
            {"title": "Été", "keywords": ["été", "offres d'été"], "repeat_count": 1,
             "items": [
                {"ref": "summer", "type": "text", "label": "Nos offres d'été !", "children": ["pic"]},
                {"ref": "pic", "type": "image", "url": "https://example.com/ete.jpg",
                 "label": "Collection été"}]},
            {"title": "Aide", "type": "generic", "keywords": ["aide", "help"],
             "items": [{"ref": "help", "type": "text", "label": "Tapez bonjour pour commencer."}]}
        ]
    })
}

impl Env {
    async fn import(&self, v: &Value) -> scenarios::ImportReport {
        let f = FlowFile::from_value(v).expect("parse");
        scenarios::import(&self.db, self.config_id, &f)
            .await
            .expect("import")
    }

    /// A customer and their chat.
    async fn customer(&self, config_id: Uuid, wa_id: &str) -> (Uuid, Uuid) {
        let now = Utc::now();
        let customer = Uuid::now_v7();
        customers::Entity::insert(customers::ActiveModel {
            id: Set(customer),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(config_id),
            wa_id: Set(Some(wa_id.into())),
            phone_number: Set(Some(wa_id.into())),
            last_inbound_at: Set(Some(now)),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("customer");
        let chat = Uuid::now_v7();
        chats::Entity::insert(chats::ActiveModel {
            id: Set(chat),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(config_id),
            customer_id: Set(customer),
            status: Set("open".into()),
            priority: Set("normal".into()),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("chat");
        (customer, chat)
    }

    /// An inbound message as the parse worker stores it.
    async fn inbound(
        &self,
        who: (Uuid, Uuid),
        kind: &str,
        text: Option<&str>,
        interactive: Option<Value>,
        age: chrono::Duration,
    ) -> Uuid {
        let config_id = customers::Entity::find_by_id(who.0)
            .one(&self.db)
            .await
            .expect("query")
            .expect("customer")
            .config_id;
        let now = Utc::now();
        let id = Uuid::now_v7();
        messages::Entity::insert(messages::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(config_id),
            chat_id: Set(who.1),
            customer_id: Set(who.0),
            provider_message_id: Set(Some(format!("wamid.{id}"))),
            direction: Set(Direction::Inbound),
            origin: Set(Origin::User),
            sender_type: Set("customer".into()),
            r#type: Set(kind.into()),
            text: Set(text.map(str::to_owned)),
            interactive: Set(interactive),
            status: Set(MessageStatus::Delivered),
            timestamp: Set(Some(now - age)),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("inbound");
        id
    }

    async fn text(&self, who: (Uuid, Uuid), text: &str) -> Uuid {
        self.inbound(who, "text", Some(text), None, chrono::Duration::zero())
            .await
    }

    /// A tap on a reply button or list row of ours.
    async fn choose(&self, who: (Uuid, Uuid), reply_id: &str, list: bool) -> Uuid {
        let t = if list { "list_reply" } else { "button_reply" };
        self.inbound(
            who,
            "interactive",
            Some("option"),
            Some(json!({"type": t, "id": reply_id, "title": "option"})),
            chrono::Duration::zero(),
        )
        .await
    }

    async fn handle(&self, msg: Uuid) -> Outcome {
        engine::handle(&self.db, self.broker.as_ref(), msg, &self.settings)
            .await
            .expect("handle")
    }

    /// The bot's replies to `msg`, in order, as Meta's request bodies.
    async fn replies(&self, msg: Uuid) -> Vec<Value> {
        messages::Entity::find()
            .filter(messages::Column::AnswersMessageId.eq(msg))
            .order_by_asc(messages::Column::AnswerSeq)
            .all(&self.db)
            .await
            .expect("query")
            .into_iter()
            .map(|m| {
                assert_eq!(m.origin, Origin::Bot);
                m.payload.expect("payload")
            })
            .collect()
    }

    async fn bot_messages(&self) -> u64 {
        messages::Entity::find()
            .filter(messages::Column::Origin.eq(Origin::Bot))
            .count(&self.db)
            .await
            .expect("count")
    }

    async fn runs(&self, customer: Uuid) -> Vec<scenario_runs::Model> {
        scenario_runs::Entity::find()
            .filter(scenario_runs::Column::CustomerId.eq(customer))
            .order_by_asc(scenario_runs::Column::StartedAt)
            .all(&self.db)
            .await
            .expect("query")
    }
}

/// The reply ids offered by an interactive reply (buttons or list rows).
fn option_ids(body: &Value) -> Vec<String> {
    let i = &body["interactive"];
    match i["type"].as_str() {
        Some("button") => i["action"]["buttons"]
            .as_array()
            .expect("buttons")
            .iter()
            .map(|b| b["reply"]["id"].as_str().expect("id").to_owned())
            .collect(),
        Some("list") => i["action"]["sections"][0]["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect(),
        other => panic!("not an interactive reply: {other:?} {body}"),
    }
}

fn text_of(body: &Value) -> &str {
    body["text"]["body"]
        .as_str()
        .unwrap_or_else(|| panic!("not a text: {body}"))
}

fn done(o: &Outcome) -> (Action, usize) {
    match o {
        Outcome::Done {
            action, replies, ..
        } => (*action, *replies),
        other => panic!("expected replies, got {other:?}"),
    }
}

// ------------------------------------------------------------------ tests

async fn keywords_start_scenarios(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;
    let who = env.customer(env.config_id, "33612345678").await;

    // Accents, case and apostrophes: "l'ETE" is the keyword "été".
    let m = env.text(who, "Des offres pour l'ETE ?").await;
    assert_eq!(done(&env.handle(m).await), (Action::Started, 2));
    let r = env.replies(m).await;
    assert_eq!(text_of(&r[0]), "Nos offres d'été !");
    assert_eq!(r[1]["type"], "image");
    assert_eq!(r[1]["image"]["link"], "https://example.com/ete.jpg");
    assert_eq!(r[1]["image"]["caption"], "Collection été");
    let runs = env.runs(who.0).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "finished");
    assert!(runs[0].ended_at.is_some());

    // Whole words only.
    let m = env.text(who, "bonjourno").await;
    assert_eq!(env.handle(m).await, Outcome::NoMatch);
    assert!(env.replies(m).await.is_empty());

    // "Bonjour !" starts Accueil: its root, a button item with 3 options.
    let m = env.text(who, "Bonjour !").await;
    assert_eq!(done(&env.handle(m).await), (Action::Started, 1));
    let r = env.replies(m).await;
    assert_eq!(r[0]["interactive"]["type"], "button");
    assert_eq!(
        r[0]["interactive"]["body"]["text"],
        "Bonjour ! Que voulez-vous ?"
    );
    assert_eq!(option_ids(&r[0]).len(), 3);
    let runs = env.runs(who.0).await;
    assert_eq!(runs[1].status, "waiting");

    // A generic scenario answers too (after the config's own).
    let m = env.text(who, "help").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);
    assert_eq!(
        text_of(&env.replies(m).await[0]),
        "Tapez bonjour pour commencer."
    );
    // The waiting Accueil run gave way.
    let runs = env.runs(who.0).await;
    assert_eq!(runs[1].status, "replaced");
}
both_backends!(keywords_start_scenarios);

async fn repeat_limit(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;
    let who = env.customer(env.config_id, "33612345678").await;
    let m = env.text(who, "été").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);
    // repeat_count 1: the second run is refused, silently.
    let m = env.text(who, "Encore l'été ?").await;
    assert_eq!(env.handle(m).await, Outcome::Refused(Refusal::RepeatLimit));
    assert!(env.replies(m).await.is_empty());
    // Another customer still gets it; 0 means unlimited.
    let other = env.customer(env.config_id, "33698765432").await;
    let m = env.text(other, "été").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);
    for _ in 0..3 {
        let m = env.text(who, "salut").await;
        assert_eq!(done(&env.handle(m).await).0, Action::Started);
    }
}
both_backends!(repeat_limit);

async fn button_walk_three_levels_and_a_list_of_seven(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;
    let who = env.customer(env.config_id, "33612345678").await;
    let m = env.text(who, "bonjour").await;
    env.handle(m).await;
    let level1 = option_ids(&env.replies(m).await[0]);

    // Level 1: "Boutique", a button item with 7 options, goes out as a list.
    let m = env.choose(who, &level1[1], false).await;
    assert_eq!(done(&env.handle(m).await), (Action::Continued, 1));
    let r = env.replies(m).await;
    assert_eq!(r[0]["interactive"]["type"], "list");
    assert_eq!(r[0]["interactive"]["action"]["button"], "Menu");
    let rows = r[0]["interactive"]["action"]["sections"][0]["rows"]
        .as_array()
        .expect("rows");
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[6]["title"], "Rayon 7");
    let level2 = option_ids(&r[0]);

    // Level 2: "Rayon 3", a button item with 2 options.
    let m = env.choose(who, &level2[2], true).await;
    assert_eq!(done(&env.handle(m).await), (Action::Continued, 1));
    let r = env.replies(m).await;
    assert_eq!(r[0]["interactive"]["type"], "button");
    assert_eq!(r[0]["interactive"]["body"]["text"], "Homme ou femme ?");
    let level3 = option_ids(&r[0]);
    assert_eq!(level3.len(), 2);

    // Level 3: "Femme", a text leaf: the run finishes.
    let m = env.choose(who, &level3[1], false).await;
    assert_eq!(done(&env.handle(m).await), (Action::Continued, 1));
    assert_eq!(text_of(&env.replies(m).await[0]), "Rayon femme.");
    let runs = env.runs(who.0).await;
    assert_eq!(runs.len(), 1, "one run for the whole walk");
    assert_eq!(runs[0].status, "finished");

    // An old menu still works later: row 7 of the list.
    let m = env.choose(who, &level2[6], true).await;
    assert_eq!(done(&env.handle(m).await).0, Action::Continued);
    assert_eq!(text_of(&env.replies(m).await[0]), "Bienvenue au rayon 7.");
    assert_eq!(env.runs(who.0).await.len(), 1, "no new run for an old menu");

    // And after a re-import, the same refs keep the same ids.
    env.import(&flow()).await;
    let m = env.choose(who, &level3[0], false).await;
    assert_eq!(done(&env.handle(m).await).0, Action::Continued);
    assert_eq!(text_of(&env.replies(m).await[0]), "Rayon homme.");
}
both_backends!(button_walk_three_levels_and_a_list_of_seven);

async fn fallback_twice_then_the_end(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;
    let who = env.customer(env.config_id, "33612345678").await;
    let m = env.text(who, "bonjour").await;
    env.handle(m).await;
    let menu = option_ids(&env.replies(m).await[0]);
    for n in 1..=2 {
        let m = env.text(who, "euh… je sais pas").await;
        assert_eq!(
            done(&env.handle(m).await),
            (Action::Fallback, 2),
            "fallback {n}"
        );
        let r = env.replies(m).await;
        assert_eq!(
            text_of(&r[0]),
            "Je n'ai pas compris, choisissez une option."
        );
        assert_eq!(option_ids(&r[1]), menu, "the same options again");
        assert_eq!(env.runs(who.0).await[0].fallback_count, n);
    }
    // A photo is no answer either: the third time ends the run, silently.
    let m = env
        .inbound(who, "image", None, None, chrono::Duration::zero())
        .await;
    assert_eq!(done(&env.handle(m).await), (Action::Ended, 0));
    assert!(env.replies(m).await.is_empty());
    assert_eq!(env.runs(who.0).await[0].status, "abandoned");
    // Nothing waits any more: another unknown text gets nothing.
    let m = env.text(who, "allo ?").await;
    assert_eq!(env.handle(m).await, Outcome::NoMatch);
}
both_backends!(fallback_twice_then_the_end);

async fn exit_keywords(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;
    let who = env.customer(env.config_id, "33612345678").await;
    let m = env.text(who, "bonjour").await;
    env.handle(m).await;
    let m = env.text(who, "STOP !").await;
    assert_eq!(done(&env.handle(m).await), (Action::Ended, 0));
    assert_eq!(env.runs(who.0).await[0].status, "exited");
    // "stop" inside a sentence is not the exit keyword (nor a keyword).
    let m = env.text(who, "bonjour").await;
    env.handle(m).await;
    let m = env.text(who, "je veux pas stop").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Fallback);
    // "menu" ends the waiting run and starts the default scenario.
    let m = env.text(who, "Menu").await;
    assert_eq!(done(&env.handle(m).await), (Action::Started, 1));
    let runs = env.runs(who.0).await;
    assert_eq!(runs[1].status, "exited");
    assert_eq!(runs[2].status, "waiting");
    assert_eq!(
        env.replies(m).await[0]["interactive"]["body"]["text"],
        "Bonjour ! Que voulez-vous ?"
    );
}
both_backends!(exit_keywords);

async fn handoff(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;
    let mut rt = env.embedded.subscribe_realtime().await.expect("subscribe");
    let who = env.customer(env.config_id, "33612345678").await;
    let m = env.text(who, "bonjour").await;
    env.handle(m).await;
    let menu = option_ids(&env.replies(m).await[0]);
    let m = env.choose(who, &menu[2], false).await;
    assert_eq!(done(&env.handle(m).await), (Action::Continued, 1));
    assert_eq!(
        text_of(&env.replies(m).await[0]),
        "Un conseiller vous répond bientôt."
    );
    let chat = chats::Entity::find_by_id(who.1)
        .one(&env.db)
        .await
        .expect("query")
        .expect("chat");
    let at = chat.handoff_at.expect("handed off");
    assert_eq!(env.runs(who.0).await[0].status, "handoff");
    let audit = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("chat.handoff"))
        .all(&env.db)
        .await
        .expect("query");
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit[0].entity_id.as_deref(),
        Some(who.1.to_string().as_str())
    );
    let events: Vec<Value> =
        serde_json::from_slice(&rt.try_recv().expect("a real-time event")).expect("json");
    assert_eq!(events[0]["event"], "chat.updated");
    assert_eq!(events[0]["chat_id"], who.1.to_string());
    assert_eq!(events[0]["data"]["handoff"], true);
    let handoffs = || async {
        let mut found = Vec::new();
        for _ in 0..200 {
            found = wapipe_domain::events::read_after(
                &env.db,
                0,
                1000,
                &wapipe_domain::events::Scope::default(),
            )
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.r#type == "chat.updated" && !e.payload["handoffAt"].is_null())
            .collect::<Vec<_>>();
            if !found.is_empty() {
                break;
            }
            // PostgreSQL shows events once older transactions have ended.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        found
    };
    let logged = handoffs().await;
    assert_eq!(logged.len(), 1, "one chat.updated for the handoff");
    assert_eq!(logged[0].chat_id, Some(who.1));

    // No more bot replies until an agent resolves the chat.
    let m = env.text(who, "bonjour").await;
    assert_eq!(env.handle(m).await, Outcome::Refused(Refusal::HandedOff));
    assert_eq!(handoffs().await.len(), 1, "a refused message writes none");
    chats::Entity::update_many()
        .col_expr(
            chats::Column::ResolvedAt,
            Expr::value(at + chrono::Duration::seconds(1)),
        )
        .col_expr(chats::Column::Status, Expr::value("resolved"))
        .filter(chats::Column::Id.eq(who.1))
        .exec(&env.db)
        .await
        .expect("resolve");
    let m = env.text(who, "bonjour").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);
}
both_backends!(handoff);

async fn silences(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;

    // Blocked: no reply (the message is still stored, by parse).
    let blocked = env.customer(env.config_id, "33600000001").await;
    blocking::block(
        &env.db,
        env.config_id,
        "+33600000001",
        Some("spam".into()),
        Actor::CLI,
    )
    .await
    .expect("block");
    let m = env.text(blocked, "bonjour").await;
    assert_eq!(env.handle(m).await, Outcome::Refused(Refusal::Blocked));
    assert!(env.replies(m).await.is_empty());
    blocking::unblock(&env.db, env.config_id, "33600000001", Actor::CLI)
        .await
        .expect("unblock");
    let m = env.text(blocked, "bonjour").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);

    // Assigned to an agent.
    let assigned = env.customer(env.config_id, "33600000002").await;
    let agent = Uuid::now_v7();
    let now = Utc::now();
    wapipe_shared::entities::agents::Entity::insert(wapipe_shared::entities::agents::ActiveModel {
        id: Set(agent),
        created_at: Set(now),
        updated_at: Set(now),
        name: Set("Agathe".into()),
        email: Set("agathe@example.com".into()),
        role: Set("agent".into()),
        status: Set("online".into()),
        ..Default::default()
    })
    .exec_without_returning(&env.db)
    .await
    .expect("agent");
    chats::Entity::update_many()
        .col_expr(chats::Column::AssignedTo, Expr::value(agent))
        .filter(chats::Column::Id.eq(assigned.1))
        .exec(&env.db)
        .await
        .expect("assign");
    let m = env.text(assigned, "bonjour").await;
    assert_eq!(env.handle(m).await, Outcome::Refused(Refusal::Assigned));

    // Not allowed: that scenario only; others still answer.
    let denied = env.customer(env.config_id, "33600000003").await;
    blocking::deny_scenario(&env.db, env.config_id, "33600000003", "Accueil", Actor::CLI)
        .await
        .expect("deny");
    let m = env.text(denied, "bonjour").await;
    assert_eq!(env.handle(m).await, Outcome::Refused(Refusal::NotAllowed));
    let m = env.text(denied, "aide").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);
    blocking::allow_scenario(&env.db, env.config_id, "33600000003", "Accueil", Actor::CLI)
        .await
        .expect("allow");
    let m = env.text(denied, "bonjour").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);

    // Older than the maximum age when processed.
    let late = env.customer(env.config_id, "33600000004").await;
    let m = env
        .inbound(
            late,
            "text",
            Some("bonjour"),
            None,
            chrono::Duration::seconds(301),
        )
        .await;
    assert_eq!(env.handle(m).await, Outcome::Refused(Refusal::TooOld));
    let m = env
        .inbound(
            late,
            "text",
            Some("bonjour"),
            None,
            chrono::Duration::seconds(200),
        )
        .await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);

    // Every block change is in the audit log.
    let actions: Vec<String> = audit_log::Entity::find()
        .order_by_asc(audit_log::Column::CreatedAt)
        .all(&env.db)
        .await
        .expect("query")
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(
        actions,
        [
            "number.block",
            "number.unblock",
            "customer.deny_scenario",
            "customer.allow_scenario"
        ]
    );
}
both_backends!(silences);

async fn one_reply_per_inbound_message(b: Backend) {
    let env = env(b).await;
    env.import(&flow()).await;
    let who = env.customer(env.config_id, "33612345678").await;
    let m = env.text(who, "été").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);
    assert_eq!(env.bot_messages().await, 2);
    // The same job again (redelivery, replayed webhook): nothing more.
    assert_eq!(env.handle(m).await, Outcome::AlreadyConsumed);
    assert_eq!(env.bot_messages().await, 2);

    // A crash after the replies were queued but before the run was
    // written: the retry finds no run, decides the same replies, and the
    // unique key on (answers_message_id, answer_seq) keeps them single.
    scenario_runs::Entity::delete_many()
        .filter(scenario_runs::Column::CustomerId.eq(who.0))
        .exec(&env.db)
        .await
        .expect("forget the run");
    match env.handle(m).await {
        Outcome::Done { replies, sent, .. } => {
            assert_eq!(replies, 2);
            assert_eq!(sent, 0, "nothing new queued");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.bot_messages().await, 2);
    assert_eq!(env.runs(who.0).await.len(), 1);

    // A message overtaken by a later one of the customer is not answered.
    let first = env.text(who, "bonjour").await;
    let second = env.text(who, "salut").await;
    env.handle(second).await;
    assert_eq!(env.handle(first).await, Outcome::AlreadyConsumed);
}
both_backends!(one_reply_per_inbound_message);

async fn import_validation_and_replacement(b: Backend) {
    let env = env(b).await;
    let first = env.import(&flow()).await;
    assert_eq!(first.scenarios.len(), 3);
    assert!(first.scenarios.iter().all(|(_, _, replaced)| !replaced));

    // One file per fault kind: refused with the path, nothing written.
    let before = scenario_items::Entity::find()
        .count(&env.db)
        .await
        .expect("count");
    type Break = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(FaultKind, &str, Break)> = vec![
        (
            FaultKind::DanglingRef,
            "scenarios[0].items[0].children[2]",
            Box::new(|v: &mut Value| v["scenarios"][0]["items"][0]["children"][2] = json!("nope")),
        ),
        (
            FaultKind::Cycle,
            "scenarios[0].items[4].children[0]",
            Box::new(|v: &mut Value| v["scenarios"][0]["items"][4]["children"] = json!(["hello"])),
        ),
        (
            FaultKind::UnknownType,
            "scenarios[1].items[1].type",
            Box::new(|v: &mut Value| v["scenarios"][1]["items"][1]["type"] = json!("sticker")),
        ),
        (
            FaultKind::TooLong,
            "scenarios[0].items[1].title",
            Box::new(|v: &mut Value| {
                v["scenarios"][0]["items"][1]["title"] = json!("Nos offres du moment !")
            }),
        ),
        (
            FaultKind::TooManyOptions,
            "scenarios[0].items[2].children",
            Box::new(|v: &mut Value| {
                let items = v["scenarios"][0]["items"].as_array_mut().expect("items");
                let mut refs = Vec::new();
                for i in 0..4 {
                    refs.push(format!("x{i}"));
                    items.push(json!({"ref": format!("x{i}"), "type": "text",
                        "title": format!("X {i}"), "label": "x"}));
                }
                let kids = items[2]["children"].as_array_mut().expect("children");
                kids.extend(refs.into_iter().map(Value::from));
            }),
        ),
    ];
    for (kind, path, edit) in cases {
        let mut v = flow();
        v["scenarios"][0]["title"] = json!("Accueil v2");
        edit(&mut v);
        let f = FlowFile::from_value(&v).expect("parses");
        match scenarios::import(&env.db, env.config_id, &f).await {
            Err(ScenarioError::Invalid(e)) => {
                assert!(
                    e.0.iter().any(|f| f.kind == kind && f.path == path),
                    "{kind:?} at {path}: {e}"
                );
                assert!(e.to_string().contains(path), "{e}");
            }
            other => panic!("{kind:?}: expected a refusal, got {other:?}"),
        }
    }
    assert!(
        store::find_visible(&env.db, env.config_id, "Accueil v2")
            .await
            .expect("query")
            .is_none(),
        "nothing imported"
    );
    assert_eq!(
        scenario_items::Entity::find()
            .count(&env.db)
            .await
            .expect("count"),
        before
    );

    // Re-import: same titles replaced in place (same ids), export round trips.
    let again = env.import(&flow()).await;
    assert!(again.scenarios.iter().all(|(_, _, replaced)| *replaced));
    assert_eq!(
        again.scenarios.iter().map(|s| s.1).collect::<Vec<_>>(),
        first.scenarios.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    let exported = scenarios::export(&env.db, env.config_id)
        .await
        .expect("export");
    let original = FlowFile::from_value(&flow()).expect("parse");
    assert_eq!(exported.settings, original.settings);
    let titles = |f: &FlowFile| {
        let mut t: Vec<String> = f.scenarios.iter().map(|s| s.title.clone()).collect();
        t.sort();
        t
    };
    assert_eq!(titles(&exported), titles(&original));
    for s in &original.scenarios {
        let e = exported
            .scenarios
            .iter()
            .find(|x| x.title == s.title)
            .expect("exported");
        assert_eq!(e, s, "scenario {} round trips", s.title);
    }
    // The list shows them in matching order: the config's, then generic.
    let list = scenarios::list(&env.db, env.config_id).await.expect("list");
    assert_eq!(
        list.iter().map(|s| s.title.as_str()).collect::<Vec<_>>(),
        ["Accueil", "Été", "Aide"]
    );
    assert_eq!(list[2].r#type, "generic");

    // A generic scenario serves another config too; a client one does not.
    let other = add_config(&env.db, "15550000002").await;
    let who = env.customer(other, "33612345678").await;
    let m = env.text(who, "aide").await;
    assert_eq!(done(&env.handle(m).await).0, Action::Started);
    let m = env.text(who, "bonjour").await;
    assert_eq!(env.handle(m).await, Outcome::NoMatch);
}
both_backends!(import_validation_and_replacement);
