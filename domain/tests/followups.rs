//! Follow-ups in the domain, on PostgreSQL and SQLite: creation and its
//! refusals, closing, listing, the atomic claim (two claimers racing over
//! the same 1,000 due rows), the lease, and overdue marking.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use serde_json::json;
use uuid::Uuid;
use wapipe_domain::agents::{self, AgentError, NewAgent};
use wapipe_domain::followups::{self, FollowUpError, ListFilter, NewFollowUp, Reminded, Status};
use wapipe_domain::{clock, events};
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::{chats, customers, follow_ups};
use wapipe_shared::tenants::{self, NewConfig};
use wapipe_testkit::both_backends;
use wapipe_testkit::db::{Backend, TempDir, TestDb, migrated};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

struct Env {
    db: DatabaseConnection,
    url: String,
    config_id: Uuid,
    chat_id: Uuid,
    agent_id: Uuid,
    _dir: Option<TempDir>,
}

async fn add_config(db: &DatabaseConnection, phone: &str, company: &str) -> Uuid {
    let key = SecretKey::from_base64(KEY).expect("key");
    tenants::add(
        db,
        &key,
        NewConfig {
            company: company.into(),
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

async fn add_chat(db: &DatabaseConnection, config_id: Uuid, wa_id: &str) -> Uuid {
    let now = clock::now();
    let customer = Uuid::now_v7();
    customers::Entity::insert(customers::ActiveModel {
        id: Set(customer),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        wa_id: Set(Some(wa_id.to_owned())),
        phone_number: Set(Some(wa_id.to_owned())),
        name: Set(Some("Zoë".to_owned())),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .expect("customer");
    let chat = Uuid::now_v7();
    chats::Entity::insert(chats::ActiveModel {
        id: Set(chat),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        customer_id: Set(customer),
        phone_number: Set(Some(wa_id.to_owned())),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .expect("chat");
    chat
}

async fn env(backend: Backend) -> Env {
    let TestDb { url, db, dir, .. } = migrated(backend, 8).await;
    let config_id = add_config(&db, "15550000001", "Acme").await;
    let chat_id = add_chat(&db, config_id, "4915112345678").await;
    let agent_id = agents::create(
        &db,
        NewAgent {
            name: "Ana".into(),
            email: "ana@acme.example".into(),
            phone_number: Some("+33 6 12 34 56 78".into()),
            company: None,
        },
    )
    .await
    .expect("agent")
    .id;
    Env {
        db,
        url,
        config_id,
        chat_id,
        agent_id,
        _dir: dir,
    }
}

impl Env {
    fn new_follow_up(&self, at: DateTime<Utc>) -> NewFollowUp {
        NewFollowUp {
            chat_id: self.chat_id,
            agent_id: self.agent_id,
            scheduled_at: at,
            title: "Call back about the order".into(),
            notes: Some("  asked for a discount ".into()),
            priority: None,
            created_by: None,
        }
    }

    /// `n` follow-ups due at `at` (inserted directly: `create` refuses the past).
    async fn insert_due(&self, n: usize, at: DateTime<Utc>) -> Vec<Uuid> {
        let now = clock::now();
        let mut ids = Vec::with_capacity(n);
        let rows: Vec<follow_ups::ActiveModel> = (0..n)
            .map(|i| {
                let id = Uuid::now_v7();
                ids.push(id);
                follow_ups::ActiveModel {
                    id: Set(id),
                    created_at: Set(now),
                    updated_at: Set(now),
                    config_id: Set(self.config_id),
                    chat_id: Set(self.chat_id),
                    agent_id: Set(Some(self.agent_id)),
                    title: Set(Some(format!("due {i}"))),
                    scheduled_at: Set(at),
                    status: Set("pending".into()),
                    priority: Set("medium".into()),
                    ..Default::default()
                }
            })
            .collect();
        for chunk in rows.chunks(200) {
            follow_ups::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&self.db)
                .await
                .expect("insert follow-ups");
        }
        ids
    }

    async fn row(&self, id: Uuid) -> follow_ups::Model {
        followups::get(&self.db, id).await.expect("row")
    }
}

async fn create_and_refuse(backend: Backend) {
    let e = env(backend).await;
    let at = clock::now() + Duration::hours(2);
    let f = followups::create(&e.db, e.new_follow_up(at))
        .await
        .expect("create");
    assert_eq!(f.status, "pending");
    assert_eq!(f.priority, "medium");
    assert_eq!(f.scheduled_at, at);
    assert_eq!(f.config_id, e.config_id);
    assert_eq!(f.notes.as_deref(), Some("asked for a discount"));
    assert!(f.customer_id.is_some());
    assert!(!f.reminder_sent && f.claimed_at.is_none());

    let mut bad = e.new_follow_up(at);
    bad.chat_id = Uuid::now_v7();
    assert!(matches!(
        followups::create(&e.db, bad).await,
        Err(FollowUpError::UnknownChat(_))
    ));
    let mut bad = e.new_follow_up(at);
    bad.agent_id = Uuid::now_v7();
    assert!(matches!(
        followups::create(&e.db, bad).await,
        Err(FollowUpError::UnknownAgent(_))
    ));
    let bad = e.new_follow_up(clock::now() - Duration::minutes(1));
    assert!(matches!(
        followups::create(&e.db, bad).await,
        Err(FollowUpError::InPast { .. })
    ));
    let mut bad = e.new_follow_up(at);
    bad.priority = Some("urgent".into());
    assert!(matches!(
        followups::create(&e.db, bad).await,
        Err(FollowUpError::BadPriority(p)) if p == "urgent"
    ));
    let mut bad = e.new_follow_up(at);
    bad.title = "   ".into();
    assert!(matches!(
        followups::create(&e.db, bad).await,
        Err(FollowUpError::EmptyTitle)
    ));

    // An agent of another company may not follow up this company's chats.
    add_config(&e.db, "15550000002", "Globex").await;
    let other = agents::create(
        &e.db,
        NewAgent {
            name: "Gil".into(),
            email: "gil@globex.example".into(),
            phone_number: None,
            company: Some("Globex".into()),
        },
    )
    .await
    .expect("agent of Globex");
    let mut bad = e.new_follow_up(at);
    bad.agent_id = other.id;
    assert!(matches!(
        followups::create(&e.db, bad).await,
        Err(FollowUpError::AgentOfOtherCompany { .. })
    ));
    // With two companies, an agent needs one named.
    assert!(matches!(
        agents::create(
            &e.db,
            NewAgent {
                name: "Nobody".into(),
                email: "n@x.example".into(),
                phone_number: None,
                company: None,
            },
        )
        .await,
        Err(AgentError::CompanyNeeded(_))
    ));
    assert_eq!(
        followups::list(&e.db, ListFilter::default())
            .await
            .expect("list")
            .len(),
        1,
        "nothing refused was written"
    );
}
both_backends!(create_and_refuse);

async fn close_and_list(backend: Backend) {
    let e = env(backend).await;
    let at = clock::now() + Duration::hours(1);
    let a = followups::create(&e.db, e.new_follow_up(at))
        .await
        .expect("a");
    let b = followups::create(&e.db, e.new_follow_up(at + Duration::minutes(5)))
        .await
        .expect("b");
    let c = followups::create(&e.db, e.new_follow_up(at + Duration::minutes(10)))
        .await
        .expect("c");

    let done = followups::complete(&e.db, a.id, Some(e.agent_id))
        .await
        .expect("complete");
    assert_eq!(done.status, "completed");
    assert_eq!(done.completed_by, Some(e.agent_id));
    assert!(done.completed_at.is_some());
    assert!(matches!(
        followups::cancel(&e.db, a.id).await,
        Err(FollowUpError::NotOpen { status, .. }) if status == "completed"
    ));
    let cancelled = followups::cancel(&e.db, b.id).await.expect("cancel");
    assert_eq!(cancelled.status, "cancelled");
    assert!(matches!(
        followups::complete(&e.db, b.id, None).await,
        Err(FollowUpError::NotOpen { .. })
    ));
    assert!(matches!(
        followups::cancel(&e.db, Uuid::now_v7()).await,
        Err(FollowUpError::NotFound(_))
    ));

    let all = followups::list(&e.db, ListFilter::default())
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![a.id, b.id, c.id],
        "soonest first"
    );
    let pending = followups::list(
        &e.db,
        ListFilter {
            status: Some(Status::Pending),
            ..ListFilter::default()
        },
    )
    .await
    .expect("list pending");
    assert_eq!(pending.iter().map(|f| f.id).collect::<Vec<_>>(), vec![c.id]);
    let nobody = followups::list(
        &e.db,
        ListFilter {
            agent_id: Some(Uuid::now_v7()),
            ..ListFilter::default()
        },
    )
    .await
    .expect("list by agent");
    assert!(nobody.is_empty());
    let mine = followups::list(
        &e.db,
        ListFilter {
            agent_id: Some(e.agent_id),
            status: Some(Status::Completed),
            ..ListFilter::default()
        },
    )
    .await
    .expect("list by agent");
    assert_eq!(mine.iter().map(|f| f.id).collect::<Vec<_>>(), vec![a.id]);
}
both_backends!(close_and_list);

/// Only open, unreminded, due rows are claimed; a claim holds for the
/// lease, then a row still not reminded is claimed again.
async fn claim_rules(backend: Backend) {
    let e = env(backend).await;
    let now = clock::now();
    let due = e.insert_due(4, now - Duration::minutes(1)).await;
    let later = e.insert_due(1, now + Duration::minutes(1)).await;
    followups::complete(&e.db, due[1], None)
        .await
        .expect("complete");
    followups::cancel(&e.db, due[2]).await.expect("cancel");
    let reminded = Reminded {
        at: now,
        channel: followups::CHANNEL_EVENT,
        message_id: None,
        note: None,
    };
    assert!(
        followups::mark_reminded(&e.db, due[3], &reminded)
            .await
            .expect("mark")
    );
    assert!(
        !followups::mark_reminded(&e.db, due[3], &reminded)
            .await
            .expect("mark"),
        "set once"
    );
    // One followup.reminder event, written with the reminder, not twice.
    let mut evs = Vec::new();
    for _ in 0..200 {
        evs = wapipe_domain::events::read_after(
            &e.db,
            0,
            10,
            &wapipe_domain::events::Scope::default(),
        )
        .await
        .expect("events");
        if !evs.is_empty() {
            break;
        }
        // PostgreSQL shows an event once older transactions of other
        // tests on the server have ended.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].r#type, "followup.reminder");
    assert_eq!(evs[0].chat_id, Some(e.chat_id));
    assert_eq!(evs[0].payload["id"], serde_json::json!(due[3]));
    assert_eq!(evs[0].payload["reminderSent"], true);
    assert_eq!(evs[0].payload["reminderChannel"], followups::CHANNEL_EVENT);

    let first = followups::claim_due(&e.db, now, 100).await.expect("claim");
    assert_eq!(first.iter().map(|c| c.id).collect::<Vec<_>>(), vec![due[0]]);
    assert_eq!(first[0].claim_count, 1);
    assert!(
        followups::claim_due(&e.db, now, 100)
            .await
            .expect("claim")
            .is_empty(),
        "held by the first claim"
    );
    let within = now + followups::LEASE - Duration::seconds(1);
    assert!(
        followups::claim_due(&e.db, within, 100)
            .await
            .expect("claim")
            .len()
            == 1
    );
    // That claim at `within` (the later row fell due) renewed nothing else:
    let after = within + followups::LEASE + Duration::seconds(1);
    let again = followups::claim_due(&e.db, after, 100)
        .await
        .expect("claim");
    let mut ids: Vec<Uuid> = again.iter().map(|c| c.id).collect();
    ids.sort();
    let mut want = vec![due[0], later[0]];
    want.sort();
    assert_eq!(ids, want, "leases ran out, rows not reminded");
    let d0 = again.iter().find(|c| c.id == due[0]).expect("due[0]");
    assert_eq!(d0.claim_count, 2);

    // A released claim is claimable at once.
    assert_eq!(
        followups::release_claims(&e.db, followups::Release::Ids(&[due[0]]))
            .await
            .expect("release"),
        1
    );
    let back = followups::claim_due(&e.db, after, 100)
        .await
        .expect("claim");
    assert_eq!(back.iter().map(|c| c.id).collect::<Vec<_>>(), vec![due[0]]);
    // Batches: the limit holds.
    let more = e.insert_due(5, now - Duration::minutes(1)).await;
    let batch = followups::claim_due(&e.db, after, 3).await.expect("claim");
    assert_eq!(batch.len(), 3);
    assert!(batch.iter().all(|c| more.contains(&c.id)));
}
both_backends!(claim_rules);

/// Two claimers on their own pools (as two processes) over the same 1,000
/// due follow-ups: every one is claimed exactly once.
async fn two_claimers_race(backend: Backend) {
    let e = env(backend).await;
    let now = clock::now();
    let ids: HashSet<Uuid> = e
        .insert_due(1000, now - Duration::seconds(5))
        .await
        .into_iter()
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let db = Arc::new(
            wapipe_shared::db::connect(&e.url, 4)
                .await
                .expect("second pool"),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut empty_passes = 0;
            let mut errors = 0;
            while empty_passes < 3 {
                match followups::claim_due(db.as_ref(), now, 37).await {
                    Ok(c) if c.is_empty() => empty_passes += 1,
                    Ok(c) => {
                        empty_passes = 0;
                        mine.extend(c.into_iter().map(|c| c.id));
                    }
                    // SQLite's single writer may answer "busy": the
                    // scheduler tries again on its next pass, and so do we.
                    Err(_) if errors < 200 => {
                        errors += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    Err(err) => panic!("claim keeps failing: {err}"),
                }
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut per_claimer = Vec::new();
    for t in tasks {
        let mine = t.await.expect("claimer");
        per_claimer.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len(), 1000, "claims per claimer: {per_claimer:?}");
    assert_eq!(unique, ids, "each follow-up claimed once");
    let rows = follow_ups::Entity::find().all(&e.db).await.expect("rows");
    assert!(
        rows.iter()
            .all(|r| r.claim_count == 1 && r.claimed_at == Some(now))
    );
}
both_backends!(two_claimers_race);

async fn overdue_marking(backend: Backend) {
    let e = env(backend).await;
    let now = clock::now();
    let hour = Duration::seconds(3600);
    let old = e.insert_due(2, now - Duration::minutes(61)).await;
    let recent = e.insert_due(1, now - Duration::minutes(59)).await;
    followups::complete(&e.db, old[1], None)
        .await
        .expect("complete");

    assert_eq!(
        followups::mark_overdue(&e.db, now, hour)
            .await
            .expect("mark"),
        1
    );
    assert_eq!(e.row(old[0]).await.status, "overdue");
    assert_eq!(
        e.row(old[1]).await.status,
        "completed",
        "closed ones stay closed"
    );
    assert_eq!(e.row(recent[0]).await.status, "pending");
    assert_eq!(
        followups::mark_overdue(&e.db, now, hour)
            .await
            .expect("mark"),
        0
    );
    // One `followup.overdue` event, for the one that turned overdue, even
    // though marking ran twice. (PostgreSQL shows an event once no older
    // transaction of the cluster still runs: other tests' may, briefly.)
    let mut overdue_events = Vec::new();
    for _ in 0..100 {
        overdue_events = events::read_after(&e.db, 0, 100, &events::Scope::everything())
            .await
            .expect("events")
            .into_iter()
            .filter(|ev| ev.r#type == events::FOLLOWUP_OVERDUE)
            .collect();
        if !overdue_events.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(overdue_events.len(), 1, "{overdue_events:?}");
    assert_eq!(overdue_events[0].payload["id"], json!(old[0]));
    assert_eq!(overdue_events[0].payload["status"], json!("overdue"));

    // Overdue and never reminded (fell due during a long outage): still
    // reminded; overdue is still open, so it can be completed.
    let claimed: HashSet<Uuid> = followups::claim_due(&e.db, now, 10)
        .await
        .expect("claim")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(claimed, HashSet::from([old[0], recent[0]]));
    let (overdue, age) = followups::backlog(&e.db, now).await.expect("backlog");
    assert_eq!(overdue, 1);
    assert!(age >= 61.0 * 60.0 - 1.0, "{age}");
    assert_eq!(
        followups::complete(&e.db, old[0], None)
            .await
            .expect("complete")
            .status,
        "completed"
    );
}
both_backends!(overdue_marking);
