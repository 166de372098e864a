//! `GET /api/whatsapp/ws?after=SEQ`: the events log over a WebSocket. It
//! first replays the events after `SEQ` that the key may see, then streams
//! new ones as they commit, with no gap and no duplicate at the seam.
//!
//! One [`Hub`] per API process: a poller task reads the events committed
//! after its high-water mark (woken by the broker's real-time fan-out,
//! which the workers publish to after a commit and the API after a write
//! request ([`wake_layer`]), and by a short timer, which covers the rest:
//! `wapipe send`, a lost wake-up) and routes each, serialised once and
//! shared, to the queue of every client that may see it. An agent who
//! sees only their chats is routed only their chats' events: with a
//! thousand agents connected, each task wakes for its own events, not for
//! every event of the deployment (one shared broadcast made every task
//! step through everything, and at 1,000 events/s most were closed as too
//! slow). A queue holds at most `ws_max_buffer` events, pointers to the
//! shared ones; a client that many events behind is closed with 1013 and
//! resumes with `after`.
//!
//! The seam: the poller routes a batch and moves its mark under one lock,
//! and a client subscribes and reads the mark under the same lock. Every
//! event up to the mark was routed before the client subscribed (it
//! replays those from the table), every later one after (its queue has
//! them). An agent's queue gets every event of its configs until it has
//! read its assigned chats; the hub then applies the ownership changes it
//! routed meanwhile to what was read (see [`Hub::settle`]).
//!
//! Auth: `Authorization: Bearer KEY`, or for browsers (which cannot set
//! headers on a WebSocket) the subprotocols `wapipe.v1` and
//! `wapipe.bearer.KEY`; the server answers `wapipe.v1`.
//!
//! Heartbeats: a ping every `ws_ping_every` (20 s); a client silent for
//! `ws_idle_timeout` (60 s: no pong, no message) is closed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
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

/// A client's place in the hub.
struct Route {
    tx: mpsc::Sender<Arc<Live>>,
    /// Set when the client fell `buffer` events behind (its queue was full).
    lagged: Arc<AtomicBool>,
    configs: Option<Vec<Uuid>>,
    /// For an agent who sees only their chats.
    agent: Option<AgentRoute>,
}

struct AgentRoute {
    agent: Uuid,
    /// The chats the agent sees now.
    chats: HashSet<Uuid>,
    /// While the client reads its assigned chats from the database: every
    /// event of its configs goes to it (it filters them itself), and the
    /// ownership changes seen meanwhile, last one per chat, to apply to
    /// what it read.
    pending: Option<HashMap<Uuid, bool>>,
}

impl Route {
    fn wants_config(&self, config: Uuid) -> bool {
        self.configs.as_ref().is_none_or(|c| c.contains(&config))
    }
}

/// Who gets which event: the hub's state, under one lock with the mark.
#[derive(Default)]
struct Routes {
    /// The poller's mark: every event up to it has been routed.
    mark: i64,
    next_id: u64,
    clients: HashMap<u64, Route>,
    /// Clients that see every chat of their configs.
    wide: Vec<u64>,
    /// Agent clients still reading their chats.
    pending: Vec<u64>,
    /// Agent clients (past pending) by agent and by the chats they see.
    by_agent: HashMap<Uuid, Vec<u64>>,
    by_chat: HashMap<Uuid, Vec<u64>>,
}

fn unlist(list: &mut Vec<u64>, id: u64) {
    list.retain(|&x| x != id);
}

fn unlist_in(map: &mut HashMap<Uuid, Vec<u64>>, key: Uuid, id: u64) {
    if let Some(list) = map.get_mut(&key) {
        unlist(list, id);
        if list.is_empty() {
            map.remove(&key);
        }
    }
}

impl Routes {
    fn remove(&mut self, id: u64) {
        let Some(route) = self.clients.remove(&id) else {
            return;
        };
        match route.agent {
            None => unlist(&mut self.wide, id),
            Some(a) if a.pending.is_some() => unlist(&mut self.pending, id),
            Some(a) => {
                unlist_in(&mut self.by_agent, a.agent, id);
                for chat in a.chats {
                    unlist_in(&mut self.by_chat, chat, id);
                }
            }
        }
    }

    /// Queues `live` for client `id`; a client whose queue is full is
    /// marked too slow and returned for removal.
    fn deliver(&self, id: u64, live: &Arc<Live>, gone: &mut Vec<u64>) {
        let Some(route) = self.clients.get(&id) else {
            return;
        };
        if !route.wants_config(live.config_id) {
            return;
        }
        match route.tx.try_send(live.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                route.lagged.store(true, Ordering::Release);
                gone.push(id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => gone.push(id),
        }
    }

    /// Routes one event: to the wide clients, the pending ones, the agents
    /// who see its chat, and the agent it is given to (see [`Client::sees`]:
    /// the same rule, applied here so that an agent's task wakes only for
    /// its own chats).
    fn route(&mut self, live: &Arc<Live>, gone: &mut Vec<u64>) {
        for &id in &self.wide {
            self.deliver(id, live, gone);
        }
        for &id in &self.pending {
            self.deliver(id, live, gone);
        }
        if let (Some(owner), Some(chat)) = (live.chat_owner, live.chat_id) {
            for &id in &self.pending {
                if let Some(a) = self.clients.get_mut(&id).and_then(|r| r.agent.as_mut())
                    && let Some(changes) = a.pending.as_mut()
                {
                    changes.insert(chat, owner == Some(a.agent));
                }
            }
        }
        let Some(chat) = live.chat_id else {
            return;
        };
        let seeing = self.by_chat.get(&chat).cloned().unwrap_or_default();
        for &id in &seeing {
            self.deliver(id, live, gone);
        }
        let Some(owner) = live.chat_owner else {
            return;
        };
        // The event that takes the chat away is the last its agent sees.
        for &id in &seeing {
            if let Some(a) = self.clients.get_mut(&id).and_then(|r| r.agent.as_mut())
                && owner != Some(a.agent)
            {
                a.chats.remove(&chat);
                unlist_in(&mut self.by_chat, chat, id);
            }
        }
        // The event that gives it brings it and its later events.
        let Some(owner) = owner else {
            return;
        };
        let newly: Vec<u64> = self
            .by_agent
            .get(&owner)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| !seeing.contains(id))
            .collect();
        for id in newly {
            if let Some(a) = self.clients.get_mut(&id).and_then(|r| r.agent.as_mut()) {
                a.chats.insert(chat);
                self.by_chat.entry(chat).or_default().push(id);
            }
            self.deliver(id, live, gone);
        }
    }
}

/// A client's end of the hub.
struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Arc<Live>>,
    lagged: Arc<AtomicBool>,
    /// Every event up to it is in the table; every later one comes on `rx`.
    mark: i64,
}

/// The process's live events (see the module's notes).
pub struct Hub {
    routes: Mutex<Routes>,
    /// Events a client may be behind before it is closed.
    buffer: usize,
    /// Set once the poller has its first mark.
    ready: watch::Sender<bool>,
    /// Cancelled when the process shuts down: clients say goodbye.
    stop: CancellationToken,
}

impl Hub {
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            routes: Mutex::new(Routes::default()),
            buffer: buffer.max(1),
            ready: watch::Sender::new(false),
            stop: CancellationToken::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        // Every change to the routes is completed before the lock is let
        // go, and none panics midway: a poisoned lock holds whole state.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, mark: i64) {
        self.lock().mark = mark;
        self.ready.send_replace(true);
    }

    /// Routes events (in order, after the mark) and moves the mark.
    fn publish(&self, batch: Vec<Live>) {
        let mut routes = self.lock();
        let mut gone = Vec::new();
        for live in batch {
            let seq = live.seq;
            routes.route(&Arc::new(live), &mut gone);
            routes.mark = seq;
            for id in gone.drain(..) {
                routes.remove(id);
            }
        }
    }

    /// A queue of everything after the returned mark that `scope` may see,
    /// once the poller runs. An agent's queue starts pending: call
    /// [`Hub::settle`] with the chats read after this.
    async fn subscribe(&self, scope: &Scope) -> Option<Subscription> {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .ok()?
            .ok()?;
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut routes = self.lock();
        let id = routes.next_id;
        routes.next_id += 1;
        let agent = scope.only_chats_of.map(|agent| AgentRoute {
            agent,
            chats: HashSet::new(),
            pending: Some(HashMap::new()),
        });
        if agent.is_some() {
            routes.pending.push(id);
        } else {
            routes.wide.push(id);
        }
        routes.clients.insert(
            id,
            Route {
                tx,
                lagged: lagged.clone(),
                configs: scope.configs.clone(),
                agent,
            },
        );
        Some(Subscription {
            id,
            rx,
            lagged,
            mark: routes.mark,
        })
    }

    /// An agent client's chats are read: from now on it gets only theirs.
    /// `assigned` was read after [`Hub::subscribe`]; the ownership changes
    /// routed since are applied to it in order, so the hub's view ends as
    /// the client's own.
    fn settle(&self, id: u64, assigned: HashSet<Uuid>) {
        let mut routes = self.lock();
        let Some(a) = routes.clients.get_mut(&id).and_then(|r| r.agent.as_mut()) else {
            return;
        };
        let Some(changes) = a.pending.take() else {
            return;
        };
        let mut chats = assigned;
        for (chat, mine) in changes {
            if mine {
                chats.insert(chat);
            } else {
                chats.remove(&chat);
            }
        }
        a.chats = chats.clone();
        let agent = a.agent;
        unlist(&mut routes.pending, id);
        routes.by_agent.entry(agent).or_default().push(id);
        for chat in chats {
            routes.by_chat.entry(chat).or_default().push(id);
        }
    }

    fn leave(&self, id: u64) {
        self.lock().remove(id);
    }

    /// The poller's mark now.
    pub fn mark(&self) -> i64 {
        self.lock().mark
    }

    /// Connected clients (for tests and the gauge's cross-check).
    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }
}

/// Leaves the hub when the client's task ends, however it ends.
struct Leave<'a>(&'a Hub, u64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
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
            // RFC 6455's closing handshake: send the Close, then read until
            // the client's own Close (or the end) before the TCP close.
            // Closing at once, the client's next bytes (a pong, its Close)
            // meet a closed socket, the kernel answers with a reset, and a
            // reset discards what the client had not read yet, our Close
            // frame and its code included. A slow client may need a while
            // to read up to the Close: it has the idle time to answer.
            // A server shutting down waits no more than a moment.
            let handshake = tokio::time::timeout(self.idle, async {
                if socket.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = socket.recv().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            });
            let stopping = async {
                self.hub.stop.cancelled().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            tokio::select! {
                _ = handshake => {}
                () = stopping => {}
            }
        }
    }

    /// Ok: the client left. Err: the server closes, with this code.
    async fn stream(&self, socket: &mut WebSocket, after: Option<i64>) -> Result<(), Goodbye> {
        let Some(sub) = self.hub.subscribe(&self.scope).await else {
            return Err(Goodbye(
                CLOSE_INTERNAL,
                "the events stream is not ready".into(),
            ));
        };
        let _leave = Leave(&self.hub, sub.id);
        let Subscription {
            id,
            mut rx,
            lagged,
            mark,
        } = sub;
        let db_err = |e: sea_orm::DbErr| {
            tracing::warn!(error = %e, "WebSocket replay failed");
            Goodbye(CLOSE_INTERNAL, "cannot read the events".into())
        };
        // Read after subscribing: every change to the agent's chats after
        // the mark is either in what is read or comes on the queue (both,
        // sometimes: applying one twice is harmless).
        let mut mine = self.assigned_chats().await.map_err(db_err)?;
        if self.scope.only_chats_of.is_some() {
            self.hub.settle(id, mine.clone());
        }
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
                    Some(live) => {
                        if live.seq <= last {
                            continue;
                        }
                        last = live.seq;
                        if self.sees(&live, &mut mine) {
                            self.send(socket, Message::Text(live.text.clone())).await?;
                        }
                    }
                    None if lagged.load(Ordering::Acquire) => {
                        metrics::counter!(wapipe_shared::metrics::WS_TOO_SLOW).increment(1);
                        return Err(Goodbye(
                            CLOSE_TRY_AGAIN_LATER,
                            format!("more than {} events behind; reconnect with after={last}", self.buffer),
                        ));
                    }
                    None => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn live(seq: i64, config: Uuid, chat: Uuid, owner: Option<Option<Uuid>>) -> Live {
        Live {
            seq,
            config_id: config,
            chat_id: Some(chat),
            chat_owner: owner,
            text: Utf8Bytes::from(seq.to_string()),
        }
    }

    fn agent(a: Uuid) -> Scope {
        Scope {
            configs: None,
            only_chats_of: Some(a),
        }
    }

    /// The sequence numbers waiting in a client's queue.
    fn drain(sub: &mut Subscription) -> Vec<i64> {
        let mut got = Vec::new();
        while let Ok(l) = sub.rx.try_recv() {
            got.push(l.seq);
        }
        got
    }

    async fn hub(buffer: usize) -> Arc<Hub> {
        let hub = Hub::new(buffer);
        hub.start(0);
        hub
    }

    #[tokio::test]
    async fn an_agent_is_routed_only_its_chats_and_what_is_given_to_it() {
        let hub = hub(100).await;
        let (cfg, me, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (mine, theirs, given) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut admin = hub.subscribe(&Scope::everything()).await.expect("ready");
        let mut sub = hub.subscribe(&agent(me)).await.expect("ready");
        hub.settle(sub.id, HashSet::from([mine]));
        hub.publish(vec![
            live(1, cfg, mine, None),
            live(2, cfg, theirs, None),
            // Given to me: this event and the chat's later ones.
            live(3, cfg, given, Some(Some(me))),
            live(4, cfg, given, None),
            // Taken away: the last I see of it.
            live(5, cfg, mine, Some(Some(other))),
            live(6, cfg, mine, None),
            live(7, cfg, given, Some(None)),
            live(8, cfg, given, None),
        ]);
        assert_eq!(drain(&mut sub), vec![1, 3, 4, 5, 7]);
        assert_eq!(drain(&mut admin), (1..=8).collect::<Vec<_>>());
        assert_eq!(hub.mark(), 8);
    }

    #[tokio::test]
    async fn a_pending_agent_gets_everything_and_settles_on_the_changes_seen_meanwhile() {
        let hub = hub(100).await;
        let (cfg, me, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut sub = hub.subscribe(&agent(me)).await.expect("ready");
        // While the client reads its chats (it read {a, b} at some point):
        // b is taken away, c given, a taken and given back.
        hub.publish(vec![
            live(1, cfg, b, Some(Some(other))),
            live(2, cfg, c, Some(Some(me))),
            live(3, cfg, a, Some(None)),
            live(4, cfg, a, Some(Some(me))),
        ]);
        assert_eq!(drain(&mut sub), vec![1, 2, 3, 4]);
        hub.settle(sub.id, HashSet::from([a, b]));
        hub.publish(vec![
            live(5, cfg, a, None),
            live(6, cfg, b, None),
            live(7, cfg, c, None),
        ]);
        assert_eq!(drain(&mut sub), vec![5, 7]);
    }

    #[tokio::test]
    async fn configs_limit_every_client() {
        let hub = hub(100).await;
        let (mine, elsewhere, chat) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut sub = hub
            .subscribe(&Scope {
                configs: Some(vec![mine]),
                only_chats_of: None,
            })
            .await
            .expect("ready");
        hub.publish(vec![
            live(1, elsewhere, chat, None),
            live(2, mine, chat, None),
        ]);
        assert_eq!(drain(&mut sub), vec![2]);
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_client_too_slow_and_drops_it() {
        let hub = hub(2).await;
        let (cfg, chat) = (Uuid::now_v7(), Uuid::now_v7());
        let mut slow = hub.subscribe(&Scope::everything()).await.expect("ready");
        let mut fast = hub.subscribe(&Scope::everything()).await.expect("ready");
        for seq in 1..=3 {
            hub.publish(vec![live(seq, cfg, chat, None)]);
            assert_eq!(drain(&mut fast), vec![seq]);
        }
        assert!(slow.lagged.load(Ordering::Acquire));
        assert_eq!(hub.clients(), 1, "the slow client's route is gone");
        // What was queued is still read, then the queue ends.
        assert_eq!(drain(&mut slow), vec![1, 2]);
        assert!(slow.rx.recv().await.is_none());
        // A client that leaves is unrouted.
        hub.leave(fast.id);
        assert_eq!(hub.clients(), 0);
    }
}
