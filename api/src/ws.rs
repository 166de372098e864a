//! `GET /api/whatsapp/ws?after=SEQ`: the events log over a WebSocket. It
//! first replays the events after `SEQ` that the key may see, then streams
//! new ones as they commit, with no gap and no duplicate at the seam.
//!
//! One [`Hub`] per API process: a poller task reads the events committed
//! after its high-water mark (woken by the broker's real-time fan-out,
//! which the workers publish to after a commit and the API after a write
//! request ([`wake_layer`]), and by a short timer, which covers the rest:
//! `wapipe send`, a lost wake-up) and sends each on a
//! broadcast channel of `ws_max_buffer` events, shared by every client. So
//! the server's memory is that buffer whatever the number of clients; a
//! client more than that many events behind is closed with 1013 and
//! resumes with `after`.
//!
//! The seam: the poller sends a batch and moves its mark under one lock,
//! and a client subscribes and reads the mark under the same lock. Every
//! event up to the mark was sent before the client subscribed (it replays
//! those from the table), every later one after (its receiver has them).
//!
//! Auth: `Authorization: Bearer KEY`, or for browsers (which cannot set
//! headers on a WebSocket) the subprotocols `wapipe.v1` and
//! `wapipe.bearer.KEY`; the server answers `wapipe.v1`.
//!
//! Heartbeats: a ping every `ws_ping_every` (20 s); a client silent for
//! `ws_idle_timeout` (60 s: no pong, no message) is closed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use uuid::Uuid;
use wapipe_domain::events::{self, CHAT_CREATED, CHAT_UPDATED, Envelope, Scope};
use wapipe_shared::broker::RealtimeSubscription;
use wapipe_shared::entities::{chats, events as ev};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::eventlog;
use crate::extract::Q;

/// The subprotocol the server speaks.
pub const PROTOCOL: &str = "wapipe.v1";
/// A browser's key travels as the subprotocol `wapipe.bearer.KEY`.
pub const BEARER_PROTOCOL_PREFIX: &str = "wapipe.bearer.";

/// Close code: the client fell too far behind; retry later with `after`.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_INTERNAL: u16 = 1011;

/// Events one poll or replay query reads at most.
const READ_BATCH: u64 = 500;
/// How soon the poller looks again when events are held back (see
/// `wapipe_domain::events::unsettled_after`).
const RECHECK: Duration = Duration::from_millis(20);
/// How long a client waits for the poller's first mark before giving up.
const READY_WAIT: Duration = Duration::from_secs(10);

/// An event as every client of the process gets it, serialised once.
#[derive(Debug)]
pub struct Live {
    pub seq: i64,
    pub config_id: Uuid,
    pub chat_id: Option<Uuid>,
    /// For `chat.*` events, the chat's agent now (`None`: nobody, or the
    /// chat is deleted): it moves the chat in or out of an agent's view.
    pub chat_owner: Option<Option<Uuid>>,
    pub text: Utf8Bytes,
}

impl Live {
    fn new(e: ev::Model) -> Self {
        let chat_owner = (e.r#type == CHAT_CREATED || e.r#type == CHAT_UPDATED).then(|| {
            let deleted = e
                .payload
                .get("isDeleted")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            e.payload
                .get("assignedTo")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
                .filter(|_| !deleted)
        });
        let (seq, config_id, chat_id) = (e.seq, e.config_id, e.chat_id);
        // An envelope of plain data always serialises.
        let text = serde_json::to_string(&Envelope::from(e)).unwrap_or_default();
        Self {
            seq,
            config_id,
            chat_id,
            chat_owner,
            text: Utf8Bytes::from(text),
        }
    }
}

/// The process's live events (see the module's notes).
pub struct Hub {
    tx: broadcast::Sender<Arc<Live>>,
    /// The poller's mark: every event up to it has been sent on `tx`.
    mark: Mutex<i64>,
    /// Set once the poller has its first mark.
    ready: watch::Sender<bool>,
    /// Cancelled when the process shuts down: clients say goodbye.
    stop: CancellationToken,
}

impl Hub {
    pub fn new(buffer: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Arc::new(Self {
            tx,
            mark: Mutex::new(0),
            ready: watch::Sender::new(false),
            stop: CancellationToken::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, i64> {
        // The lock guards a plain number: a panic elsewhere cannot leave it
        // half-written.
        self.mark.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, mark: i64) {
        *self.lock() = mark;
        self.ready.send_replace(true);
    }

    /// Sends events (in order, after the mark) and moves the mark.
    fn publish(&self, batch: Vec<Live>) {
        let mut mark = self.lock();
        for live in batch {
            let seq = live.seq;
            // No receiver is fine: nobody is connected.
            let _ = self.tx.send(Arc::new(live));
            *mark = seq;
        }
    }

    /// A receiver of everything after the returned mark, once the poller
    /// runs.
    async fn subscribe(&self) -> Option<(broadcast::Receiver<Arc<Live>>, i64)> {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .ok()?
            .ok()?;
        let mark = self.lock();
        Some((self.tx.subscribe(), *mark))
    }

    /// The poller's mark now.
    pub fn mark(&self) -> i64 {
        *self.lock()
    }
}

/// The next real-time wake-up; never, without a subscription.
async fn woken(sub: &mut Option<RealtimeSubscription>) -> bool {
    match sub {
        Some(s) => s.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

/// The process's poller (see the module's notes).
pub fn spawn_poller(state: &AppState, shutdown: CancellationToken) {
    let hub = state.hub.clone();
    let db = state.db.clone();
    let broker = state.broker.clone();
    let every = state.settings.events_poll_every;
    tokio::spawn(async move {
        let mut sub = match broker.subscribe_realtime().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no real-time wake-ups; WebSocket events come by polling only");
                None
            }
        };
        let mut mark = loop {
            match events::high_water(&db).await {
                Ok(m) => break m,
                Err(e) => tracing::warn!(error = %e, "events poller cannot start; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => {
                    hub.stop.cancel();
                    return;
                }
            }
        };
        hub.start(mark);
        let mut soon = false;
        loop {
            let wait = if soon { RECHECK } else { every };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                alive = woken(&mut sub) => {
                    if !alive {
                        sub = None;
                    }
                    // One read serves every wake-up that came meanwhile.
                    while let Some(s) = sub.as_mut() {
                        if s.try_recv().is_none() {
                            break;
                        }
                    }
                }
                () = shutdown.cancelled() => {
                    hub.stop.cancel();
                    return;
                }
            }
            mark = poll(&db, &hub, mark).await;
            // Events written but held back by an older transaction still
            // running: look again shortly rather than at the next tick.
            soon = events::unsettled_after(&db, mark).await.unwrap_or(false);
        }
    });
}

/// Reads and sends everything settled after `mark`; answers the new mark.
async fn poll(db: &DatabaseConnection, hub: &Hub, mut mark: i64) -> i64 {
    loop {
        match events::read_after(db, mark, READ_BATCH, &Scope::everything()).await {
            Ok(rows) => {
                let full = rows.len() as u64 == READ_BATCH;
                if let Some(last) = rows.last() {
                    mark = last.seq;
                    hub.publish(rows.into_iter().map(Live::new).collect());
                }
                if !full {
                    return mark;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "events poll failed; next tick retries");
                return mark;
            }
        }
    }
}

/// After a write request that succeeded, wakes the events pollers of
/// every API process (through the broker's real-time fan-out) so the
/// events it wrote reach WebSocket clients now rather than at the next
/// poll. Best effort and off the request's path.
pub async fn wake_layer(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let write = req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD;
    let resp = next.run(req).await;
    if write && resp.status().is_success() {
        let broker = state.broker.clone();
        tokio::spawn(async move {
            let wake = wapipe_shared::jobs::RealtimeEvent::encode(&[]);
            if let Err(e) = broker.publish_realtime(wake).await {
                tracing::debug!(error = %e, "events wake-up not published");
            }
        });
    }
    resp
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Connect {
    /// Replay the events after this sequence number first. Without it,
    /// only events from now on.
    pub after: Option<i64>,
}

/// The bearer subprotocol a browser offered, if any.
fn offered_bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with(BEARER_PROTOCOL_PREFIX))
        .map(str::to_owned)
}

/// The key in a browser's subprotocols, for the auth layer: only on a
/// WebSocket upgrade.
pub fn protocol_key(headers: &HeaderMap) -> Option<&str> {
    let upgrade = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
        .filter(|k| !k.is_empty())
}

#[utoipa::path(get, path = "/api/whatsapp/ws", tag = "events", params(Connect),
    description = "A WebSocket (RFC 6455) of events: text frames, each one event as `GET /events` gives it (`type`, `seq`, `configId`, `chatId`, `occurredAt`, `data`). The key: `Authorization: Bearer KEY`, or the subprotocols `wapipe.v1` and `wapipe.bearer.KEY`. A ping every 20 s; a client silent 60 s is closed; a client too far behind is closed with 1013 (resume with `after`).",
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = ErrorBody), (status = 426, body = ErrorBody, description = "not a WebSocket upgrade")))]
pub async fn connect(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<Connect>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let after = match p.after.map(|a| eventlog::after(Some(a))).transpose() {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                format!("connect with a WebSocket upgrade ({})", e.body_text()),
            )
            .into_response();
        }
    };
    let mut protocols = vec![PROTOCOL.to_owned()];
    protocols.extend(offered_bearer(&headers));
    let client = Client {
        scope: eventlog::scope(&who),
        db: state.db.clone(),
        hub: state.hub.clone(),
        ping_every: state.settings.ws_ping_every,
        idle: state.settings.ws_idle_timeout,
        buffer: state.settings.ws_max_buffer,
    };
    upgrade
        .protocols(protocols)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| client.run(socket, after))
}

/// One connected client.
struct Client {
    scope: Scope,
    db: DatabaseConnection,
    hub: Arc<Hub>,
    ping_every: Duration,
    idle: Duration,
    buffer: usize,
}

/// Why a client's stream ended, when it was the server's call.
struct Goodbye(u16, String);

impl Client {
    async fn run(self, mut socket: WebSocket, after: Option<i64>) {
        metrics::gauge!(wapipe_shared::metrics::WS_CLIENTS).increment(1.0);
        let end = self.stream(&mut socket, after).await;
        metrics::gauge!(wapipe_shared::metrics::WS_CLIENTS).decrement(1.0);
        if let Err(Goodbye(code, reason)) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                socket.send(Message::Close(Some(frame))),
            )
            .await;
        }
    }

    /// Ok: the client left. Err: the server closes, with this code.
    async fn stream(&self, socket: &mut WebSocket, after: Option<i64>) -> Result<(), Goodbye> {
        let Some((mut rx, mark)) = self.hub.subscribe().await else {
            return Err(Goodbye(
                CLOSE_INTERNAL,
                "the events stream is not ready".into(),
            ));
        };
        let db_err = |e: sea_orm::DbErr| {
            tracing::warn!(error = %e, "WebSocket replay failed");
            Goodbye(CLOSE_INTERNAL, "cannot read the events".into())
        };
        let mut mine = self.assigned_chats().await.map_err(db_err)?;
        let mut last = after.unwrap_or(mark);
        // Replay what came before the mark; the receiver has the rest.
        while last < mark {
            let rows = events::read_after(&self.db, last, READ_BATCH, &self.scope)
                .await
                .map_err(db_err)?;
            let full = rows.len() as u64 == READ_BATCH;
            for e in rows {
                if e.seq > mark {
                    break;
                }
                last = e.seq;
                let live = Live::new(e);
                self.send(socket, Message::Text(live.text)).await?;
            }
            if !full {
                break;
            }
        }
        last = last.max(mark);

        let mut ping = tokio::time::interval(self.ping_every);
        ping.tick().await;
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(live) => {
                        if live.seq <= last {
                            continue;
                        }
                        last = live.seq;
                        if self.sees(&live, &mut mine) {
                            self.send(socket, Message::Text(live.text.clone())).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        metrics::counter!(wapipe_shared::metrics::WS_TOO_SLOW).increment(1);
                        return Err(Goodbye(
                            CLOSE_TRY_AGAIN_LATER,
                            format!("more than {} events behind; reconnect with after={last}", self.buffer),
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Goodbye(CLOSE_GOING_AWAY, "server shutting down".into()));
                    }
                },
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if heard.elapsed() >= self.idle {
                        return Err(Goodbye(CLOSE_NORMAL, "no pong or message for too long".into()));
                    }
                    self.send(socket, Message::Ping(Default::default())).await?;
                }
                () = self.hub.stop.cancelled() => {
                    return Err(Goodbye(CLOSE_GOING_AWAY, "server shutting down".into()));
                }
            }
        }
    }

    /// A send that cannot hang: a client that takes no bytes for the idle
    /// time is gone.
    async fn send(&self, socket: &mut WebSocket, msg: Message) -> Result<(), Goodbye> {
        match tokio::time::timeout(self.idle, socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Goodbye(CLOSE_GOING_AWAY, "connection lost".into())),
            Err(_) => Err(Goodbye(
                CLOSE_TRY_AGAIN_LATER,
                "the client takes no data; reconnect with after".into(),
            )),
        }
    }

    /// For an agent who sees only their chats: the chats assigned to them
    /// now (later `chat.*` events keep it current).
    async fn assigned_chats(&self) -> Result<HashSet<Uuid>, sea_orm::DbErr> {
        let Some(agent) = self.scope.only_chats_of else {
            return Ok(HashSet::new());
        };
        Ok(chats::Entity::find()
            .select_only()
            .column(chats::Column::Id)
            .filter(chats::Column::AssignedTo.eq(agent))
            .filter(chats::Column::IsDeleted.eq(false))
            .into_tuple::<Uuid>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect())
    }

    /// Whether this client may see a live event. A chat given to the agent
    /// brings its later events; the event that takes it away is the last
    /// they see of it.
    fn sees(&self, live: &Live, mine: &mut HashSet<Uuid>) -> bool {
        if let Some(configs) = &self.scope.configs
            && !configs.contains(&live.config_id)
        {
            return false;
        }
        let Some(me) = self.scope.only_chats_of else {
            return true;
        };
        let Some(chat) = live.chat_id else {
            return false;
        };
        let was = mine.contains(&chat);
        match live.chat_owner {
            Some(owner) => {
                let is = owner == Some(me);
                if is {
                    mine.insert(chat);
                } else {
                    mine.remove(&chat);
                }
                was || is
            }
            None => was,
        }
    }
}
