//! The events log in the domain: the commit-order property on PostgreSQL
//! (two transactions committing out of order; many writers racing a
//! reader), recording and reading on both backends, scopes, and pruning.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Duration;
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;
use wapipe_domain::events::{self, Event, Scope};
use wapipe_shared::entities::events as ev;
use wapipe_testkit::both_backends;
use wapipe_testkit::db::{Backend, add_config, migrated};

fn event(config: Uuid, n: u64) -> Event {
    Event::new(events::NOTE_CREATED, config, None, json!({ "n": n }))
}

fn n_of(e: &ev::Model) -> u64 {
    e.payload["n"].as_u64().expect("n")
}

async fn all(db: &DatabaseConnection) -> Vec<ev::Model> {
    events::read_after(db, 0, 100_000, &Scope::everything())
        .await
        .expect("read")
}

/// The highest seq in the table, settled or not.
async fn table_max(db: &DatabaseConnection) -> i64 {
    use sea_orm::{ColumnTrait, QuerySelect};
    ev::Entity::find()
        .select_only()
        .column_as(ev::Column::Seq.max(), "m")
        .into_tuple::<Option<i64>>()
        .one(db)
        .await
        .expect("max")
        .flatten()
        .unwrap_or(0)
}

/// Every committed event, once readers may see them all: transactions of
/// other tests on the same server may hold the horizon back a moment.
async fn settled(db: &DatabaseConnection) -> Vec<ev::Model> {
    let want = table_max(db).await;
    for _ in 0..200 {
        let rows = all(db).await;
        if rows.last().map_or(0, |e| e.seq) == want {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("events up to {want} never became readable");
}

/// T1 gets its transaction id first but writes its event after T2 wrote
/// and committed its own. A reader must not see T2's event while T1 may
/// still add one before it; once T1 commits, T1's event comes first. (A
/// `bigserial` filtered by the writer's xid returns T2's event early and
/// T1's, numbered lower, after it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readers_never_see_a_lower_seq_appear_later() {
    let t = migrated(Backend::Postgres, 4).await;
    let config = add_config(&t.db, "15550001111", "1555000111", "Acme").await;

    let t1 = t.db.begin().await.expect("t1");
    // The first write of T1 takes its transaction id.
    t1.execute_unprepared("SELECT pg_current_xact_id()")
        .await
        .expect("xid");
    let t2 = t.db.begin().await.expect("t2");
    events::record(&t2, &[event(config, 2)])
        .await
        .expect("t2 writes");
    t2.commit().await.expect("t2 commits");

    assert!(
        all(&t.db).await.is_empty(),
        "T2's event must wait while T1, older, can still write"
    );
    assert_eq!(events::high_water(&t.db).await.expect("hw"), 0);

    events::record(&t1, &[event(config, 1), event(config, 11)])
        .await
        .expect("t1 writes");
    t1.commit().await.expect("t1 commits");

    let seen = settled(&t.db).await;
    assert_eq!(
        seen.iter().map(n_of).collect::<Vec<_>>(),
        vec![1, 11, 2],
        "T1's events (older transaction) come first, in their order"
    );
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        events::high_water(&t.db).await.expect("hw"),
        seen[2].seq,
        "the high-water mark is the last readable seq"
    );
}

/// Eight writers commit transactions of 1–5 events (some rolled back,
/// some waiting mid-transaction) while a reader polls after the last seq
/// it saw. The reader's incremental view must be exactly the final table:
/// nothing it skipped ever appears later, nothing rolled back appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_polling_reader_sees_every_event_once_in_final_order() {
    let t = migrated(Backend::Postgres, 16).await;
    let config = add_config(&t.db, "15550001112", "1555000111", "Acme").await;
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let db = t.db.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut last = 0;
            loop {
                // Once the writers are done, read until the table's end.
                let end = if done.load(Ordering::SeqCst) {
                    Some(table_max(&db).await)
                } else {
                    None
                };
                let rows = events::read_after(&db, last, 50, &Scope::everything())
                    .await
                    .expect("read");
                for r in &rows {
                    assert!(r.seq > last, "a lower seq appeared after {last}");
                    last = r.seq;
                    got.push(n_of(r));
                }
                if end.is_some_and(|end| last >= end) {
                    return got;
                }
                tokio::task::yield_now().await;
            }
        })
    };

    let mut writers = Vec::new();
    for w in 0..8u64 {
        let db = t.db.clone();
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..25u64 {
                let txn = db.begin().await.expect("begin");
                // Some take their xid early, then let others pass.
                if (w + i) % 3 == 0 {
                    txn.execute_unprepared("SELECT pg_current_xact_id()")
                        .await
                        .expect("xid");
                    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                }
                let k = 1 + (w * 7 + i) % 5;
                let batch: Vec<Event> = (0..k)
                    .map(|j| event(config, w * 1_000_000 + i * 100 + j))
                    .collect();
                events::record(&txn, &batch).await.expect("record");
                if (w + i) % 4 == 1 {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                if (w * 3 + i) % 11 == 0 {
                    txn.rollback().await.expect("rollback");
                } else {
                    txn.commit().await.expect("commit");
                    committed.extend(batch.iter().map(|e| e.data["n"].as_u64().expect("n")));
                }
            }
            committed
        }));
    }
    let mut expected = BTreeSet::new();
    for w in writers {
        expected.extend(w.await.expect("writer"));
    }
    done.store(true, Ordering::SeqCst);
    let got = reader.await.expect("reader");

    let table: Vec<u64> = settled(&t.db).await.iter().map(n_of).collect();
    assert_eq!(got, table, "the reader's view is the table, in order");
    assert_eq!(
        got.iter().copied().collect::<BTreeSet<_>>(),
        expected,
        "every committed event, none rolled back"
    );
    assert_eq!(got.len(), expected.len(), "no event twice");
}

async fn records_reads_scopes_and_prunes(backend: Backend) {
    let t = migrated(backend, 4).await;
    let acme = add_config(&t.db, "15550001113", "1555000111", "Acme").await;
    let globex = add_config(&t.db, "15550001114", "1555000112", "Globex").await;

    let txn = t.db.begin().await.expect("begin");
    let mut batch: Vec<Event> = (0..300).map(|n| event(acme, n)).collect();
    batch.push(event(globex, 300));
    events::record(&txn, &batch).await.expect("record");
    txn.commit().await.expect("commit");

    let rows = settled(&t.db).await;
    assert_eq!(rows.len(), 301);
    assert_eq!(
        rows.iter().map(n_of).collect::<Vec<_>>(),
        (0..301).collect::<Vec<_>>(),
        "one call's events keep their order across chunks"
    );
    let env = events::Envelope::from(rows[0].clone());
    assert_eq!(env.kind, "note.created");
    let v = serde_json::to_value(&env).expect("json");
    assert_eq!(v["type"], "note.created");
    assert_eq!(v["configId"], json!(acme));
    assert_eq!(v["data"]["n"], 0);

    // Paging by seq.
    let page = events::read_after(&t.db, rows[9].seq, 5, &Scope::everything())
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(n_of).collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14]
    );

    // A company's scope.
    let only_globex = Scope {
        configs: Some(vec![globex]),
        only_chats_of: None,
    };
    let g = events::read_after(&t.db, 0, 1000, &only_globex)
        .await
        .expect("scoped");
    assert_eq!(g.iter().map(n_of).collect::<Vec<_>>(), vec![300]);
    let nobody = Scope {
        configs: Some(Vec::new()),
        only_chats_of: None,
    };
    assert!(
        events::read_after(&t.db, 0, 1000, &nobody)
            .await
            .expect("none")
            .is_empty()
    );

    // A second transaction continues after the first.
    let txn = t.db.begin().await.expect("begin");
    events::record(&txn, &[event(acme, 301)])
        .await
        .expect("record");
    txn.commit().await.expect("commit");
    settled(&t.db).await;
    let last = events::read_after(&t.db, rows[300].seq, 10, &Scope::everything())
        .await
        .expect("after");
    assert_eq!(last.iter().map(n_of).collect::<Vec<_>>(), vec![301]);

    // Pruning by age; numbers are never given again after a prune.
    let old = wapipe_domain::clock::now() - Duration::days(8);
    let txn = t.db.begin().await.expect("begin");
    let mut stale = event(acme, 999);
    stale.occurred_at = old;
    events::record(&txn, &[stale]).await.expect("record");
    txn.commit().await.expect("commit");
    let before = ev::Entity::find().count(&t.db).await.expect("count");
    let pruned = events::prune(&t.db, wapipe_domain::clock::now() - Duration::days(7))
        .await
        .expect("prune");
    assert_eq!(pruned, 1);
    assert_eq!(
        ev::Entity::find().count(&t.db).await.expect("count"),
        before - 1
    );
    settled(&t.db).await;
    let high = events::high_water(&t.db).await.expect("hw");
    events::prune(&t.db, wapipe_domain::clock::now() + Duration::days(1))
        .await
        .expect("prune all");
    let txn = t.db.begin().await.expect("begin");
    events::record(&txn, &[event(acme, 1000)])
        .await
        .expect("record");
    txn.commit().await.expect("commit");
    let fresh = settled(&t.db).await;
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].seq > high, "a seq is never given twice");
}
both_backends!(
    records_reads_scopes_and_prunes,
    flavor = "multi_thread",
    worker_threads = 2
);
