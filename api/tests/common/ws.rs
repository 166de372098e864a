//! WebSocket helpers of the events tests: connect with a key, read events,
//! write numbered ones.

use std::time::Duration;

use futures::StreamExt;
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;
use wapipe_api::ApiSettings;
use wapipe_domain::events::{self, Event};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Settings for quick tests: the poller looks every 50 ms.
pub fn quick() -> ApiSettings {
    ApiSettings {
        events_poll_every: Duration::from_millis(50),
        ..ApiSettings::default()
    }
}

/// Writes `n` `note.created` events on `chat`, one transaction each
/// (`data.n` = `first`, `first + 1`, …).
pub async fn write(db: &DatabaseConnection, config: Uuid, chat: Uuid, first: u64, n: u64) {
    for i in first..first + n {
        write_one(db, config, chat, json!({ "n": i })).await;
    }
}

/// Writes one `note.created` event with `data` on `chat`, in its own
/// transaction.
pub async fn write_one(db: &DatabaseConnection, config: Uuid, chat: Uuid, data: Value) {
    let txn = db.begin().await.expect("begin");
    events::record(
        &txn,
        &[Event::new(events::NOTE_CREATED, config, Some(chat), data)],
    )
    .await
    .expect("record");
    txn.commit().await.expect("commit");
}

pub fn ws_url(base: &str, query: &str) -> String {
    format!("{}/api/whatsapp/ws{query}", base.replacen("http", "ws", 1))
}

pub async fn connect(base: &str, key: &str, query: &str) -> Ws {
    let mut req = ws_url(base, query).into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket connect")
        .0
}

/// The next event, or None when nothing comes within `wait`. Panics on a
/// close.
pub async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        let msg = match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the stream ended"),
            Ok(Some(m)) => m.expect("frame"),
        };
        match msg {
            Message::Text(t) => return Some(serde_json::from_str(&t).expect("an event as JSON")),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// `n` events, each within 10 s.
pub async fn take(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next(ws, Duration::from_secs(10)).await {
            Some(e) => out.push(e),
            None => panic!("only {} of {n} events came", out.len()),
        }
    }
    out
}

pub fn ns(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["data"]["n"].as_u64().expect("n"))
        .collect()
}
