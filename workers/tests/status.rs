//! The status worker on PostgreSQL and SQLite (DESIGN invariant 4): receipts
//! in every order end at the highest rank, `failed` never beats a delivery,
//! receipts that arrive before their message wait and apply later, and a
//! duplicate job or receipt changes nothing.

use chrono::{TimeZone, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::json;
use uuid::Uuid;
use wapipe_domain::receipts::{apply_pending_receipts, read_status_of};
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_testkit::both_backends;
use wapipe_testkit::workers::*;
use wapipe_workers::runtime::typed;
use wapipe_workers::status::StatusWorker;

/// An outbound message row with `wamid`, in the chat of `CUSTOMER`.
async fn outbound(env: &Env, wamid: &str, status: MessageStatus) -> Uuid {
    let chat = env
        .chats()
        .await
        .into_iter()
        .next()
        .expect("a chat: post an inbound message first");
    let now = Utc::now();
    let id = Uuid::now_v7();
    messages::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(env.config_id),
        chat_id: Set(chat.id),
        customer_id: Set(chat.customer_id),
        conversation_id: Set(None),
        provider_message_id: Set(Some(wamid.to_owned())),
        direction: Set(Direction::Outbound),
        origin: Set(Origin::Admin),
        sender_type: Set("agent".into()),
        sender_id: Set(None),
        r#type: Set("text".into()),
        text: Set(Some("our reply".into())),
        media: Set(None),
        location: Set(None),
        contacts: Set(None),
        interactive: Set(None),
        template: Set(None),
        reaction: Set(None),
        reactions: Set(None),
        context: Set(None),
        reply_to_provider_id: Set(None),
        is_forwarded: Set(false),
        referral: Set(None),
        payload: Set(None),
        errors: Set(None),
        status: Set(status),
        error_code: Set(None),
        error_title: Set(None),
        error_details: Set(None),
        timestamp: Set(None),
        sent_at: Set(None),
        delivered_at: Set(None),
        read_at: Set(None),
        failed_at: Set(None),
        dispatched_at: Set(None),
        attempt_count: Set(1),
        is_read: Set(false),
        is_edited: Set(false),
        edit_history: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        effect_target: Set(None),
        answers_message_id: Set(None),
        answer_seq: Set(None),
        ..Default::default()
    }
    .insert(&env.db)
    .await
    .expect("outbound message");
    id
}

/// Runs every waiting `status.receipt` job through the real worker.
async fn run_status_jobs(env: &Env) -> usize {
    let worker = typed(StatusWorker { deps: env.deps() });
    env.run_jobs("status", worker.as_ref()).await
}

fn receipt(wamid: &str, status: MessageStatus, ts: i64) -> serde_json::Value {
    let mut s = json!({"id": wamid, "status": status.as_str(), "timestamp": ts.to_string(),
                       "recipient_id": CUSTOMER});
    if status == MessageStatus::Failed {
        s["errors"] = json!([{"code": 131026, "title": "Message undeliverable",
                              "error_data": {"details": "Receiver is incapable"}}]);
    }
    envelope(json!({"metadata": {"phone_number_id": PHONE}, "statuses": [s]}))
}

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.is_empty() {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

/// Where receipts in any order must end: the top of queued < sending <
/// sent < failed < delivered < read.
fn expected(start: MessageStatus, receipts: &[MessageStatus]) -> MessageStatus {
    let order = [
        MessageStatus::Queued,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Failed,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Played,
    ];
    let pos = |s: &MessageStatus| order.iter().position(|o| o == s).unwrap_or(0);
    receipts
        .iter()
        .copied()
        .chain([start])
        .max_by_key(pos)
        .unwrap_or(start)
}

async fn every_order_ends_at_the_highest_rank(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.in", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    let all = [
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
    ];
    let base = 1_760_001_000i64;
    let time_of = |s: MessageStatus| base + all.iter().position(|x| *x == s).unwrap_or(0) as i64;
    let mut case = 0usize;
    for mask in 1u32..16 {
        let subset: Vec<MessageStatus> = (0..4)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| all[i])
            .collect();
        for order in permutations(&subset) {
            case += 1;
            let wamid = format!("wamid.perm.{case}");
            // Every other case: the message exists only after all its
            // receipts came (a status can beat our own send call).
            let late = case.is_multiple_of(2);
            if !late {
                outbound(&env, &wamid, MessageStatus::Sending).await;
            }
            for s in &order {
                env.post(&receipt(&wamid, *s, time_of(*s))).await;
                run_status_jobs(&env).await;
            }
            if late {
                let pending = env.status_events(&wamid).await;
                assert!(
                    pending.iter().all(|r| !r.applied),
                    "{wamid}: nothing to apply to yet"
                );
                outbound(&env, &wamid, MessageStatus::Sending).await;
                let applied = apply_pending_receipts(&env.db, env.config_id, &wamid)
                    .await
                    .expect("apply");
                assert_eq!(applied.pending, order.len());
            }
            let m = env.message(&wamid).await;
            let want = expected(MessageStatus::Sending, &order);
            assert_eq!(m.status, want, "{order:?} (late: {late})");
            // seed 002 `providerStatus` is Meta's string of the status the
            // row reached; `readStatus` the last of sent, delivered, read it
            // reached (a failure after `sent` keeps `sent`). Late receipts
            // apply in Meta's time order, where sent comes before failed.
            assert_eq!(m.provider_status.as_deref(), Some(want.as_str()));
            let at = |s| order.iter().position(|o| *o == s);
            let read = if want == MessageStatus::Failed {
                at(MessageStatus::Sent)
                    .filter(|&sent| late || Some(sent) < at(MessageStatus::Failed))
                    .map(|_| "sent")
            } else {
                read_status_of(want)
            };
            assert_eq!(m.read_status.as_deref(), read, "{order:?} (late: {late})");
            // Each receipt's time is kept, even when a higher one came first.
            for s in &order {
                let at = Some(Utc.timestamp_opt(time_of(*s), 0).single().expect("time"));
                match s {
                    MessageStatus::Sent => assert_eq!(m.sent_at, at, "{order:?}"),
                    MessageStatus::Delivered => assert_eq!(m.delivered_at, at, "{order:?}"),
                    MessageStatus::Read => assert_eq!(m.read_at, at, "{order:?}"),
                    _ => {}
                }
            }
            if want == MessageStatus::Failed {
                assert_eq!(m.error_code.as_deref(), Some("131026"));
                assert_eq!(m.error_title.as_deref(), Some("Message undeliverable"));
                assert_eq!(m.error_details.as_deref(), Some("Receiver is incapable"));
                assert!(m.failed_at.is_some());
            } else {
                assert_eq!(
                    (m.error_code.as_deref(), m.failed_at),
                    (None, None),
                    "{order:?}"
                );
            }
            let events = env.status_events(&wamid).await;
            assert_eq!(events.len(), order.len(), "failed is always recorded");
            assert!(
                events
                    .iter()
                    .all(|e| e.applied && e.message_id == Some(m.id))
            );
        }
    }
    assert_eq!(case, 64);
}
both_backends!(every_order_ends_at_the_highest_rank);

async fn duplicates_and_replays_change_nothing(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.in", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    outbound(&env, "wamid.fx.out-1", MessageStatus::Sent).await;
    outbound(&env, "wamid.fx.out-2", MessageStatus::Sent).await;
    outbound(&env, "wamid.fx.out-3", MessageStatus::Delivered).await;
    let id = env.post(&fixture("statuses.json")).await;
    assert_eq!(run_status_jobs(&env).await, 4);
    let m1 = env.message("wamid.fx.out-1").await;
    assert_eq!(m1.status, MessageStatus::Delivered);
    // Numeric error code, stored as a string.
    let m2 = env.message("wamid.fx.out-2").await;
    assert_eq!(
        (m2.status, m2.error_code.as_deref()),
        (MessageStatus::Failed, Some("131049"))
    );
    assert_eq!(m2.error_details.as_deref(), Some("healthy ecosystem"));
    // Failed after delivered: recorded, not applied.
    let m3 = env.message("wamid.fx.out-3").await;
    assert_eq!((m3.status, m3.error_code), (MessageStatus::Delivered, None));
    let e3 = env.status_events("wamid.fx.out-3").await;
    assert_eq!((e3[0].status.as_str(), e3[0].applied), ("failed", true));
    assert_eq!(e3[0].error_code.as_deref(), Some("130472"));
    // An unknown status is kept and marked considered, changing nothing.
    let before = env.counts().await;

    // Same body again (Meta's duplicate), a replay, and the same jobs twice.
    env.post(&fixture("statuses.json")).await;
    env.reset(id).await;
    env.process(id).await;
    run_status_jobs(&env).await;
    for w in ["wamid.fx.out-1", "wamid.fx.out-2", "wamid.fx.out-3"] {
        let applied = apply_pending_receipts(&env.db, env.config_id, w)
            .await
            .expect("apply");
        assert_eq!((applied.pending, applied.applied), (0, 0));
    }
    assert_eq!(env.counts().await, before);
    assert_eq!(env.message("wamid.fx.out-1").await, m1);
    assert_eq!(env.message("wamid.fx.out-2").await, m2);
}
both_backends!(duplicates_and_replays_change_nothing);

async fn pending_receipts_apply_when_the_wamid_appears(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.in", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    env.post(&receipt(
        "wamid.later",
        MessageStatus::Delivered,
        1_760_000_010,
    ))
    .await;
    env.post(&receipt("wamid.later", MessageStatus::Read, 1_760_000_020))
        .await;
    assert_eq!(run_status_jobs(&env).await, 2);
    let pending = env.status_events("wamid.later").await;
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|e| !e.applied && e.message_id.is_none()));

    // The outbound worker stores the wamid, then calls this.
    let id = outbound(&env, "wamid.later", MessageStatus::Sent).await;
    let applied = apply_pending_receipts(&env.db, env.config_id, "wamid.later")
        .await
        .expect("apply");
    assert_eq!(applied.message_id, Some(id));
    assert_eq!((applied.pending, applied.applied), (2, 2));
    assert_eq!(
        applied.status,
        Some(MessageStatus::Read),
        "highest rank wins"
    );
    let m = env.message("wamid.later").await;
    assert_eq!(m.status, MessageStatus::Read);
    assert!(m.delivered_at.is_some() && m.read_at.is_some());
    assert!(
        env.status_events("wamid.later")
            .await
            .iter()
            .all(|e| e.applied && e.message_id == Some(id))
    );
    // Nothing left the second time.
    let again = apply_pending_receipts(&env.db, env.config_id, "wamid.later")
        .await
        .expect("apply");
    assert_eq!((again.pending, again.applied), (0, 0));

    // Receipts of another config never touch this one's message.
    let other = add_config(&env.db, "15550000002", WABA, "Test Co").await;
    let none = apply_pending_receipts(&env.db, other, "wamid.later")
        .await
        .expect("apply");
    assert_eq!(none.message_id, None);
}
both_backends!(pending_receipts_apply_when_the_wamid_appears);

/// The `pricing` of a message's receipts lands on the message (any
/// receipt, an outranked one too; the latest in Meta's time wins), and a
/// replayed receipt changes nothing more. From our fixture and from Meta's
/// sample (skipped without the corpus).
async fn pricing_is_kept_on_the_message(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.in", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    let priced = |wamid: &str, status: MessageStatus, ts: i64, category: &str| {
        let mut r = receipt(wamid, status, ts);
        r["entry"][0]["changes"][0]["value"]["statuses"][0]["pricing"] = json!({
            "billable": category != "service", "pricing_model": "PMP", "type": "regular",
            "category": category});
        r
    };
    let id = outbound(&env, "wamid.priced", MessageStatus::Sent).await;
    let prices = |m: messages::Model| {
        (
            m.pricing_model,
            m.pricing_type,
            m.pricing_category,
            m.billable,
        )
    };
    let want = (
        Some("PMP".to_owned()),
        Some("regular".to_owned()),
        Some("utility".to_owned()),
        Some(true),
    );
    env.post(&priced(
        "wamid.priced",
        MessageStatus::Delivered,
        1_760_000_020,
        "utility",
    ))
    .await;
    run_status_jobs(&env).await;
    assert_eq!(prices(env.message("wamid.priced").await), want);
    // Older, outranked, and later: its pricing does not replace the newer one.
    let sent = env
        .post(&priced(
            "wamid.priced",
            MessageStatus::Sent,
            1_760_000_010,
            "service",
        ))
        .await;
    run_status_jobs(&env).await;
    let m = env.message("wamid.priced").await;
    assert_eq!(m.id, id);
    assert_eq!(m.status, MessageStatus::Delivered);
    assert_eq!(prices(m), want);
    env.reset(sent).await;
    env.process(sent).await;
    run_status_jobs(&env).await;
    assert_eq!(prices(env.message("wamid.priced").await), want, "replay");

    let Some(dir) = wapipe_testkit::corpus::corpus_dir() else {
        eprintln!("skipped the sample: shared/meta-corpus is not present");
        return;
    };
    let mut body: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("statuses/meta-docs-messages-status-1.json")).expect("read"),
    )
    .expect("json");
    // Onto this test's number, where our message with that wamid lives.
    body["entry"][0]["id"] = json!(WABA);
    body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = json!(PHONE);
    let wamid = body["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
        .as_str()
        .expect("wamid")
        .to_owned();
    outbound(&env, &wamid, MessageStatus::Sending).await;
    let ev = env.post(&body).await;
    run_status_jobs(&env).await;
    let want = (
        Some("PMP".to_owned()),
        Some("regular".to_owned()),
        Some("marketing".to_owned()),
        Some(true),
    );
    assert_eq!(prices(env.message(&wamid).await), want);
    env.reset(ev).await;
    env.process(ev).await;
    run_status_jobs(&env).await;
    assert_eq!(prices(env.message(&wamid).await), want, "replay");
}
both_backends!(pricing_is_kept_on_the_message);

async fn status_worker_publishes_message_status(b: Backend) {
    let env = env(b).await;
    env.post(&text_event("wamid.in", CUSTOMER, 1_760_000_000, "hi"))
        .await;
    outbound(&env, "wamid.rt", MessageStatus::Sent).await;
    let mut rt = env.embedded.subscribe_realtime().await.expect("subscribe");
    env.post(&receipt("wamid.rt", MessageStatus::Read, 1_760_000_030))
        .await;
    run_status_jobs(&env).await;
    let events = Env::drain_realtime(&mut rt).await;
    let st: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "message.status")
        .collect();
    assert_eq!(st.len(), 1, "{events:?}");
    assert_eq!(st[0]["data"]["status"], "read");
    assert_eq!(st[0]["data"]["provider_message_id"], "wamid.rt");
    // A duplicate job: nothing changes, nothing is published.
    env.post(&receipt("wamid.rt", MessageStatus::Read, 1_760_000_030))
        .await;
    run_status_jobs(&env).await;
    let events = Env::drain_realtime(&mut rt).await;
    assert!(events.iter().all(|e| e["event"] != "message.status"));
}
both_backends!(status_worker_publishes_message_status);
