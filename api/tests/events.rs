//! The events log through the API: `GET /events` (pages, scopes, bad
//! input, pruning) and the WebSocket (replay then live with no gap or
//! duplicate while events are written, resuming with `after`, an agent's
//! view, the browser's subprotocol, and two API processes on RabbitMQ
//! both delivering), on PostgreSQL and SQLite. A slow client is in
//! `ws_memory.rs`, alone in its process so its memory can be measured.

mod common;

use std::time::Duration;

use common::ws::{connect, next, ns, quick, take, write, write_one, ws_url};
use common::{Api, Backend, perms};
use futures::StreamExt;
use sea_orm::TransactionTrait;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;
use wapipe_api::ApiSettings;
use wapipe_domain::events::{self, Event};

async fn page_scope_and_bad_input(api: Api) {
    let admin = api.admin().await;
    let (agent, agent_key) = api.agent("Ana", perms(false), 5).await;
    let globex = api.admin_of(&["Globex"]).await;
    let (mine, _) = api
        .inbound(
            api.config_id,
            "33600000001",
            "Zoé",
            "hi",
            common::minutes_ago(5),
        )
        .await;
    let (theirs, _) = api
        .inbound(
            api.config_id,
            "33600000002",
            "Yann",
            "yo",
            common::minutes_ago(4),
        )
        .await;

    // Assigning writes chat.updated; a note writes note.created.
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{mine}/assign"),
            json!({"agentId": agent}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{theirs}/notes"),
            json!({"note": "VIP"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let note_id = r.body["id"].clone();
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{mine}/notes"),
            json!({"note": "call back"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");

    // On PostgreSQL an event shows once no older transaction of the
    // cluster still runs (another test's may, for a moment): wait for the
    // three before paging, so an empty page means the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = api
            .get(&admin, "/api/whatsapp/events?after=0&limit=10")
            .await;
        let n = r.body["data"].as_array().map_or(0, Vec::len);
        if n >= 3 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Pages of one, chained by nextAfter.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let r = api
            .get(
                &admin,
                &format!("/api/whatsapp/events?after={after}&limit=1"),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let data = r.body["data"].as_array().expect("data").clone();
        let next_after = r.body["nextAfter"].as_i64().expect("nextAfter");
        if data.is_empty() {
            assert_eq!(next_after, after, "an empty page keeps the cursor");
            assert_eq!(r.body["hasMore"], false);
            break;
        }
        assert_eq!(data.len(), 1);
        assert!(data[0]["seq"].as_i64().expect("seq") > after);
        after = next_after;
        seen.push(data[0].clone());
    }
    let types: Vec<&str> = seen
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["chat.updated", "note.created", "note.created"]);
    let assigned = &seen[0];
    assert_eq!(assigned["chatId"], json!(mine));
    assert_eq!(assigned["configId"], json!(api.config_id));
    assert_eq!(
        assigned["data"]["assignedTo"],
        json!(agent),
        "the chat as the API shows it"
    );
    assert_eq!(assigned["data"]["status"], "assigned");
    assert!(assigned["occurredAt"].is_string());
    assert_eq!(
        seen[1]["data"]["id"], note_id,
        "the note as the API shows it"
    );
    assert_eq!(seen[1]["data"]["note"], "VIP");

    // The agent sees only the events of the chat assigned to them.
    let r = api.get(&agent_key, "/api/whatsapp/events").await;
    let chats: Vec<&Value> = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| &e["chatId"])
        .collect();
    assert_eq!(chats, [&json!(mine), &json!(mine)], "{r:?}");
    // Another company's key sees nothing.
    let r = api.get(&globex, "/api/whatsapp/events").await;
    assert_eq!(r.body["data"], json!([]), "{r:?}");

    for bad in ["after=-1", "after=x", "limit=0", "limit=201", "cursor=abc"] {
        let r = api
            .get(&admin, &format!("/api/whatsapp/events?{bad}"))
            .await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(
            r.body["error"].is_object() || r.body["message"].is_string(),
            "{bad}: {r:?}"
        );
    }
    let r = api.get("nope", "/api/whatsapp/events").await;
    assert_eq!(r.status, 401);
}
both!(page_scope_and_bad_input, page_scope_and_bad_input);

async fn pruned_by_the_api(backend: Backend) {
    let api = Api::start_with(
        backend,
        ApiSettings {
            events_retention: Duration::from_secs(3600),
            prune_every: Duration::from_millis(100),
            ..quick()
        },
    )
    .await;
    let admin = api.admin().await;
    let (chat, _) = api
        .inbound(
            api.config_id,
            "33600000003",
            "Old",
            "hi",
            common::minutes_ago(200),
        )
        .await;
    let txn = api.db.begin().await.expect("begin");
    let mut old = Event::new(
        events::NOTE_CREATED,
        api.config_id,
        Some(chat),
        json!({"n": 0}),
    );
    old.occurred_at = wapipe_domain::clock::now() - chrono::Duration::hours(2);
    let fresh = Event::new(
        events::NOTE_CREATED,
        api.config_id,
        Some(chat),
        json!({"n": 1}),
    );
    events::record(&txn, &[old, fresh]).await.expect("record");
    txn.commit().await.expect("commit");
    let mut left = Value::Null;
    for _ in 0..100 {
        left = api.get(&admin, "/api/whatsapp/events").await.body;
        if left["data"].as_array().is_some_and(|d| d.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ns(left["data"].as_array().expect("data")),
        vec![1],
        "{left}"
    );
}
mod pruned_by_the_api {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::pruned_by_the_api(super::Backend::Postgres).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::pruned_by_the_api(super::Backend::Sqlite).await;
    }
}

/// A client connects with `after=0` while a writer is adding events one
/// transaction at a time: it gets every event exactly once, in order,
/// across the seam between replay and live. A second client resumes with
/// `after` where the first stopped.
async fn replay_then_live_then_resume(backend: Backend) {
    let api = Api::start_with(backend, quick()).await;
    let admin = api.admin().await;
    let (chat, _) = api
        .inbound(
            api.config_id,
            "33600000004",
            "Zoé",
            "hi",
            common::minutes_ago(5),
        )
        .await;
    const TOTAL: u64 = 300;
    write(&api.db, api.config_id, chat, 0, 100).await;
    let writer = {
        let db = api.db.clone();
        let config = api.config_id;
        tokio::spawn(async move { write(&db, config, chat, 100, TOTAL - 100).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut ws = connect(&api.base, &admin, "?after=0").await;
    let got = take(&mut ws, 200).await;
    writer.await.expect("writer");
    assert_eq!(
        ns(&got),
        (0..200).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let seqs: Vec<i64> = got
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    ws.close(None).await.expect("close");

    // Resume after the last one seen: the rest, and nothing else.
    let last = seqs[seqs.len() - 1];
    let mut ws = connect(&api.base, &admin, &format!("?after={last}")).await;
    let rest = take(&mut ws, (TOTAL - 200) as usize).await;
    assert_eq!(ns(&rest), (200..TOTAL).collect::<Vec<_>>());
    assert!(
        next(&mut ws, Duration::from_millis(500)).await.is_none(),
        "nothing twice"
    );
    // Live after the replay.
    write(&api.db, api.config_id, chat, TOTAL, 3).await;
    assert_eq!(
        ns(&take(&mut ws, 3).await),
        vec![TOTAL, TOTAL + 1, TOTAL + 2]
    );

    // Without `after`: only what happens from now on.
    let mut live = connect(&api.base, &admin, "").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(&api.db, api.config_id, chat, 1000, 1).await;
    assert_eq!(ns(&take(&mut live, 1).await), vec![1000]);
}
mod replay_then_live_then_resume {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::replay_then_live_then_resume(super::Backend::Postgres).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::replay_then_live_then_resume(super::Backend::Sqlite).await;
    }
}

/// An agent without canViewAllChats gets only its chats' events; an
/// assignment to them brings the chat's later events, live. Another
/// company's key gets nothing. A browser's subprotocol key works and the
/// server answers `wapipe.v1`.
async fn permissions_and_browser_auth(backend: Backend) {
    let api = Api::start_with(backend, quick()).await;
    let admin = api.admin().await;
    let globex = api.admin_of(&["Globex"]).await;
    let (agent, agent_key) = api.agent("Ana", perms(false), 5).await;
    let (a, _) = api
        .inbound(
            api.config_id,
            "33600000005",
            "A",
            "hi",
            common::minutes_ago(5),
        )
        .await;
    let (b, _) = api
        .inbound(
            api.config_id,
            "33600000006",
            "B",
            "hi",
            common::minutes_ago(5),
        )
        .await;
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{a}/assign"),
            json!({"agentId": agent}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // The agent, by the browser's subprotocols.
    let mut req = ws_url(&api.base, "?after=0")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("wapipe.v1, wapipe.bearer.{agent_key}")
            .parse()
            .expect("header"),
    );
    let (mut agent_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().expect("ascii")),
        Some("wapipe.v1")
    );
    let mut other = connect(&api.base, &globex, "?after=0").await;

    let replayed = take(&mut agent_ws, 1).await;
    assert_eq!(replayed[0]["type"], "chat.updated");
    assert_eq!(replayed[0]["chatId"], json!(a));

    write(&api.db, api.config_id, b, 0, 1).await; // not theirs
    write(&api.db, api.config_id, a, 1, 1).await; // theirs
    let got = take(&mut agent_ws, 1).await;
    assert_eq!(ns(&got), vec![1], "only the assigned chat's event");
    // Chat b is given to them: that event and b's later ones come.
    let r = api
        .post(
            &admin,
            &format!("/api/whatsapp/chats/{b}/assign"),
            json!({"agentId": agent}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = take(&mut agent_ws, 1).await;
    assert_eq!(
        (got[0]["type"].as_str(), &got[0]["chatId"]),
        (Some("chat.updated"), &json!(b))
    );
    write(&api.db, api.config_id, b, 2, 1).await;
    assert_eq!(ns(&take(&mut agent_ws, 1).await), vec![2]);
    // Unassigned: the event that takes it away, then nothing of it.
    let r = api
        .put(&admin, &format!("/api/whatsapp/chats/{b}/unassign"), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = take(&mut agent_ws, 1).await;
    assert_eq!(got[0]["data"]["assignedTo"], Value::Null);
    write(&api.db, api.config_id, b, 3, 1).await;
    write(&api.db, api.config_id, a, 4, 1).await;
    assert_eq!(ns(&take(&mut agent_ws, 1).await), vec![4]);

    assert!(
        next(&mut other, Duration::from_millis(500)).await.is_none(),
        "another company's key sees nothing"
    );

    // No key, a wrong key, not an upgrade, a bad after.
    for (key, query) in [
        (None, ""),
        (Some("wrong"), ""),
        (Some(admin.as_str()), "?after=-5"),
    ] {
        let mut req = ws_url(&api.base, query)
            .into_client_request()
            .expect("request");
        if let Some(k) = key {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {k}").parse().expect("header"),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert!(
                    resp.status() == 401 || resp.status() == 400,
                    "{:?}",
                    resp.status()
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let r = api.get(&admin, "/api/whatsapp/ws").await;
    assert_eq!(r.status, 426, "{r:?}");
}
mod permissions_and_browser_auth {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::permissions_and_browser_auth(super::Backend::Postgres).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::permissions_and_browser_auth(super::Backend::Sqlite).await;
    }
}

/// Two API processes on one database and RabbitMQ, polling only every
/// 30 s: an event recorded and announced on the real-time exchange (as the
/// workers do) reaches the clients of both processes at once, and so does
/// one written through either API process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_on_rabbitmq_both_deliver() {
    use std::sync::Arc;
    use wapipe_shared::broker::{self, Broker, BrokerSettings};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = ApiSettings {
        events_poll_every: Duration::from_secs(30),
        ..ApiSettings::default()
    };
    let first = Api::start_with(Backend::Postgres, settings.clone()).await;
    let admin = first.admin().await;
    let (chat, _) = first
        .inbound(
            first.config_id,
            "33600000008",
            "Z",
            "hi",
            common::minutes_ago(5),
        )
        .await;
    let prefix = format!("t{}", Uuid::now_v7().simple());
    // One lane: the test needs the real-time exchange, not the work queues.
    let amqp = || BrokerSettings {
        amqp_url: Some(wapipe_testkit::amqp_url()),
        prefix: prefix.clone(),
        lanes: 1,
        ..BrokerSettings::default()
    };
    let mut bases = Vec::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut brokers: Vec<Arc<dyn Broker>> = Vec::new();
    for i in 0..2 {
        let b = broker::connect(&amqp(), first.db.clone())
            .await
            .expect("RabbitMQ");
        if i == 0 {
            b.declare().await.expect("declare");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        bases.push(format!("http://{}", listener.local_addr().expect("addr")));
        wapipe_api::start(
            wapipe_api::ApiDeps {
                db: first.db.clone(),
                broker: b.clone(),
                meta: None,
                secret_key: None,
                media: None,
            },
            settings.clone(),
            listener,
            shutdown.clone(),
        );
        brokers.push(b);
    }
    let _stop = scopeguard(shutdown);
    // Let both pollers take their first mark and subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a = connect(&bases[0], &admin, "").await;
    let mut b = connect(&bases[1], &admin, "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&first.db, first.config_id, chat, 7, 1).await;
    let publisher = broker::connect(&amqp(), first.db.clone())
        .await
        .expect("RabbitMQ");
    publisher
        .publish_realtime(wapipe_shared::jobs::RealtimeEvent::encode(&[]))
        .await
        .expect("publish");
    for ws in [&mut a, &mut b] {
        let got = next(ws, Duration::from_secs(5))
            .await
            .expect("the event, well before the 30 s poll");
        assert_eq!(got["data"]["n"], 7);
    }

    // A write through one API process wakes both.
    let r = reqwest::Client::new()
        .post(format!("{}/api/whatsapp/chats/{chat}/notes", bases[0]))
        .bearer_auth(&admin)
        .json(&json!({"note": "both see me"}))
        .send()
        .await
        .expect("note");
    assert_eq!(r.status(), 201);
    for ws in [&mut a, &mut b] {
        let got = next(ws, Duration::from_secs(5))
            .await
            .expect("the note, well before the 30 s poll");
        assert_eq!(got["type"], "note.created");
        assert_eq!(got["data"]["note"], "both see me");
    }
}

/// Cancels the token when dropped.
fn scopeguard(t: tokio_util::sync::CancellationToken) -> impl Drop {
    struct Guard(tokio_util::sync::CancellationToken);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
    Guard(t)
}

/// Pings keep a client that answers them open; a client that answers
/// nothing is closed once it has been silent for the idle time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_close_a_silent_client() {
    let api = Api::start_with(
        Backend::Sqlite,
        ApiSettings {
            ws_ping_every: Duration::from_millis(100),
            ws_idle_timeout: Duration::from_millis(400),
            ..quick()
        },
    )
    .await;
    let admin = api.admin().await;
    // Reading answers pings (tungstenite queues the pong and sends it on
    // the next read or write).
    let mut alive = connect(&api.base, &admin, "").await;
    let silent = connect(&api.base, &admin, "").await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), alive.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(c)))) => panic!("a client answering pings was closed: {c:?}"),
            Ok(Some(Ok(_))) | Err(_) => {}
            other => panic!("the stream ended: {other:?}"),
        }
    }
    assert!(pings >= 5, "pings every 100 ms, got {pings}");

    // The silent one, read only now: pings, then the server's close (or,
    // when the client's queued pongs hit the closed socket first, the
    // connection's end), never a connection still open.
    let mut silent = silent;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), silent.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                assert_eq!(f.map(|f| f.code), Some(CloseCode::Normal));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break,
            Err(_) => panic!("a silent client is still connected"),
        }
    }
}

/// A client closed for falling behind gets its 1013 even when it wakes up
/// late and writes before it reads (a ping, as tungstenite's queued pongs
/// do). Its socket buffers are full, so the server's Close waits behind
/// megabytes of events; the server must keep the connection until the
/// client has read up to the Close and answered it. Closing the socket
/// earlier, the client's bytes meet a closed socket, the kernel resets the
/// connection, and the events and Close not yet delivered are thrown away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_that_writes_first_still_reads_its_1013() {
    let api = Api::start_with(
        Backend::Sqlite,
        ApiSettings {
            ws_max_buffer: 4,
            ..quick()
        },
    )
    .await;
    let admin = api.admin().await;
    let (chat, _) = api
        .inbound(
            api.config_id,
            "33600000008",
            "Y",
            "hi",
            common::minutes_ago(5),
        )
        .await;
    let mut slow = connect(&api.base, &admin, "").await;
    let mut fast = connect(&api.base, &admin, "").await;
    // 200 events of 64 KiB: more than both sockets' buffers hold.
    let pad = "x".repeat(64 * 1024);
    for i in 0..200u64 {
        write_one(&api.db, api.config_id, chat, json!({"n": i, "pad": pad})).await;
        assert_eq!(ns(&take(&mut fast, 1).await), vec![i]);
    }
    // Longer than the server once waited to hand its Close to the socket.
    tokio::time::sleep(Duration::from_secs(6)).await;
    futures::SinkExt::send(&mut slow, Message::Ping(vec![7].into()))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                assert_eq!(f.code, CloseCode::Again);
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected the 1013 close, got {other:?}"),
        }
    }
}
