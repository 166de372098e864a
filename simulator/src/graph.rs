//! The fake Meta Graph API (`wapipe-sim graph`): sends, mark-as-read, media, status callbacks, error injection and the `/_sim` control API.
//!
//! Routes:
//! - `POST /{version}/{phone_number_id}/messages`: a send or a mark-as-read;
//! - `POST /{version}/{phone_number_id}/media`: an upload, answers an id;
//! - `GET /{version}/{media_id}`: the media URL object; `GET /media/{id}`: bytes;
//! - `/_sim/errors` (GET, POST replaces), `/_sim/sent`, `/_sim/reads`,
//!   `/_sim/calls`, `/_sim/callbacks`, `/_sim/media` (lookups, downloads,
//!   uploads) (GET) and `/_sim/reset` (POST).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::http::{Body, bytes_response, json_response, serve};
use crate::payloads::{self, Business};
use crate::{SIGNATURE_HEADER, Signer};

/// Send kinds of the Cloud API; the body must hold a field of that name.
const SEND_TYPES: &[&str] = &[
    "text",
    "template",
    "interactive",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "reaction",
    "contacts",
];

/// Largest request body read; Meta's own limits are far below this.
const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct GraphConfig {
    /// Where status webhooks go; `None` sends none.
    pub webhook: Option<String>,
    /// Signs the status webhooks.
    pub app_secret: String,
    /// WABA id and display number put into status webhooks. Their
    /// `phone_number_id` is always the one of the send's path.
    pub business: Business,
    /// When set, sends for any other phone number id fail as Meta fails
    /// them for an unknown object (code 100).
    pub phone_number_id: Option<String>,
    /// When set, only this bearer token is accepted (else any non-empty one).
    pub token: Option<String>,
    /// Wait before each status webhook of a send.
    pub status_delay: Duration,
    /// Post the statuses of a send in random order.
    pub shuffle: bool,
    /// Post each status twice, as Meta's at-least-once delivery may.
    pub duplicate: bool,
    /// Share (0..=1) of status webhooks never posted.
    pub drop_rate: f64,
    /// Error rules in force at start and after a reset.
    pub errors: Vec<ErrorRule>,
    /// Further attempts for a status webhook answered non-2xx.
    pub callback_retries: u32,
    /// Size of the generated file of a media id nobody registered
    /// (`add_media`): distinct bytes per id, JPEG-framed.
    pub media_size: usize,
    /// Expiring-URL mode: a media URL works this long after its lookup,
    /// then its download answers 404, as Meta's do after minutes.
    pub media_url_ttl: Option<Duration>,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            app_secret: String::new(),
            business: Business::default(),
            phone_number_id: None,
            token: None,
            status_delay: Duration::from_millis(50),
            shuffle: false,
            duplicate: false,
            drop_rate: 0.0,
            errors: Vec::new(),
            callback_retries: 3,
            media_size: 512,
            media_url_ttl: None,
        }
    }
}

/// One error-injection rule: `CODE[:share=F][:to=PATTERN][:times=N][:http=STATUS][:webhook]`.
///
/// A send matches when its `to` matches `to` (a glob with `*` and `?`,
/// tried on the raw and the digits-only number), while `times` has not run
/// out, and with probability `share`. The first matching rule decides.
/// With `webhook`, the send is accepted and the error arrives as a `failed`
/// status webhook instead, as Meta does for undeliverable messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<u16>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webhook: bool,
}

impl ErrorRule {
    pub fn new(code: i64) -> Self {
        Self {
            code,
            share: None,
            to: None,
            times: None,
            http: None,
            webhook: false,
        }
    }
}

impl FromStr for ErrorRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let code_text = parts.next().unwrap_or_default().trim();
        let code = code_text
            .parse::<i64>()
            .map_err(|_| format!("error rule {s:?}: {code_text:?} is not a numeric code"))?;
        let mut rule = ErrorRule::new(code);
        for part in parts {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let bad = |what: &str| format!("error rule {s:?}: {key}={value:?} {what}");
            match key.trim() {
                "share" => {
                    let f: f64 = value.parse().map_err(|_| bad("is not a number"))?;
                    if !(0.0..=1.0).contains(&f) {
                        return Err(bad("must be between 0 and 1"));
                    }
                    rule.share = Some(f);
                }
                "to" if !value.is_empty() => rule.to = Some(value.to_owned()),
                "times" => {
                    rule.times = Some(value.parse().map_err(|_| bad("is not a count"))?);
                }
                "http" => {
                    let status: u16 = value.parse().map_err(|_| bad("is not a status"))?;
                    if !(400..=599).contains(&status) {
                        return Err(bad("must be an HTTP error status (400..=599)"));
                    }
                    rule.http = Some(status);
                }
                "webhook" | "async" if value.is_empty() => rule.webhook = true,
                _ => {
                    return Err(format!(
                        "error rule {s:?}: unknown option {part:?} \
                         (use share=F, to=PATTERN, times=N, http=STATUS or webhook)"
                    ));
                }
            }
        }
        Ok(rule)
    }
}

/// `/_sim/errors` takes rules as objects or in the CLI's string form.
#[derive(Deserialize)]
#[serde(untagged)]
enum RuleSpec {
    Text(String),
    Rule(ErrorRule),
}

/// One accepted send, as `/_sim/sent` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SentMessage {
    pub wamid: String,
    pub to: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub phone_number_id: String,
    pub token: String,
    /// Unix milliseconds when it was accepted.
    pub time_ms: u64,
    /// The request body as received.
    pub body: Value,
}

/// One status webhook the simulator posted (or gave up on).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallbackRecord {
    pub wamid: String,
    pub status: String,
    /// The last answer's status, or none after a transport error.
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub delivered: bool,
}

/// A media file the fake Graph serves for an id, with what its lookup
/// claims (wrong claims on purpose make the checks fail).
#[derive(Debug, Clone, PartialEq)]
pub struct SimMedia {
    pub bytes: Bytes,
    pub mime_type: String,
    /// The lookup's `sha256`; `None`: the real one.
    pub claimed_sha256: Option<String>,
    /// The lookup's `file_size`; `None`: the real one.
    pub claimed_size: Option<u64>,
}

impl SimMedia {
    pub fn new(bytes: impl Into<Bytes>, mime_type: &str) -> Self {
        Self {
            bytes: bytes.into(),
            mime_type: mime_type.to_owned(),
            claimed_sha256: None,
            claimed_size: None,
        }
    }
}

/// One upload (`POST /{phone_number_id}/media`), as `/_sim/media` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UploadRecord {
    /// The media id answered.
    pub id: String,
    pub phone_number_id: String,
    /// The form's `type` field.
    pub mime_type: String,
    /// The file part's own type and name.
    pub part_type: Option<String>,
    pub file_name: Option<String>,
    pub size: u64,
    pub sha256: String,
}

/// What the media routes did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MediaCounts {
    pub lookups: u64,
    pub downloads: u64,
    /// Downloads refused because their URL had expired.
    pub expired: u64,
    pub uploads: Vec<UploadRecord>,
}

/// Files larger than this are not kept for later lookups after an upload.
const KEEP_UPLOADED: usize = 16 * 1024 * 1024;
/// Largest upload read (Meta's document limit, and some).
const MAX_UPLOAD: usize = 110 * 1024 * 1024;

struct ActiveRule {
    rule: ErrorRule,
    fired: u32,
}

impl ActiveRule {
    fn new(rule: ErrorRule) -> Self {
        Self { rule, fired: 0 }
    }
}

#[derive(Default)]
struct Inner {
    rules: Vec<ActiveRule>,
    sent: Vec<SentMessage>,
    reads: Vec<Value>,
    calls: u64,
    failed_calls: u64,
    callbacks: Vec<CallbackRecord>,
    /// Bumped by reset, so callbacks of earlier sends are not recorded after it.
    generation: u64,
    /// What `GET /{version}/{waba_id}/message_templates` lists.
    templates: Vec<Value>,
    /// Pages of that list served.
    template_pages: u64,
    /// Files registered by id (and uploads kept).
    media: std::collections::HashMap<String, SimMedia>,
    media_counts: MediaCounts,
    /// Issued media URLs of the expiring mode: number -> (id, issued at).
    issued: std::collections::HashMap<u64, Instant>,
    next_url: u64,
    /// The next this many media URLs are dead on arrival.
    dead_urls: u32,
}

struct State {
    cfg: GraphConfig,
    base_url: String,
    signer: Signer,
    client: reqwest::Client,
    inner: Mutex<Inner>,
    rng: Mutex<StdRng>,
}

impl State {
    /// A poisoned lock only means a handler panicked mid-update; the
    /// recorded data is still the best we have.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn roll(&self, p: f64) -> bool {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.random_bool(p.clamp(0.0, 1.0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("listener has no local address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A running fake Graph API. Dropping it stops the server (status webhooks
/// already scheduled still go out).
pub struct GraphHandle {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl GraphHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: what `GRAPH_API_BASE` should be.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    pub fn sent(&self) -> Vec<SentMessage> {
        self.state.lock().sent.clone()
    }

    /// Sets the account's message templates (Meta's shape: `id`, `name`,
    /// `language`, `status`, `category`, `components`, …).
    pub fn set_templates(&self, templates: Vec<Value>) {
        self.state.lock().templates = templates;
    }

    /// Pages of the template list served so far.
    pub fn template_pages(&self) -> u64 {
        self.state.lock().template_pages
    }

    /// Mark-as-read bodies received.
    pub fn reads(&self) -> Vec<Value> {
        self.state.lock().reads.clone()
    }

    /// Every `POST …/messages`, failed ones included.
    pub fn calls(&self) -> u64 {
        self.state.lock().calls
    }

    pub fn callbacks(&self) -> Vec<CallbackRecord> {
        self.state.lock().callbacks.clone()
    }

    pub fn rules(&self) -> Vec<ErrorRule> {
        self.state
            .lock()
            .rules
            .iter()
            .map(|r| r.rule.clone())
            .collect()
    }

    /// Replaces the error rules (their `times` counts start afresh).
    pub fn set_rules(&self, rules: Vec<ErrorRule>) {
        self.state.lock().rules = rules.into_iter().map(ActiveRule::new).collect();
    }

    /// Serves `media` for the media id `id` (lookups and downloads).
    pub fn add_media(&self, id: &str, media: SimMedia) {
        self.state.lock().media.insert(id.to_owned(), media);
    }

    /// The next `n` media URLs handed out are expired before they are
    /// used: their download answers 404, as an expired Meta URL does.
    pub fn expire_next_urls(&self, n: u32) {
        self.state.lock().dead_urls = n;
    }

    /// Lookups, downloads and uploads so far.
    pub fn media_counts(&self) -> MediaCounts {
        self.state.lock().media_counts.clone()
    }

    /// Forgets sends, reads, calls and callbacks, and restores the start rules.
    pub fn reset(&self) {
        reset(&self.state);
    }

    /// Waits until at least `n` sends were accepted; false on timeout.
    pub async fn wait_for_sent(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |i| i.sent.len() >= n).await
    }

    /// Waits until at least `n` status webhooks were delivered; false on timeout.
    pub async fn wait_for_callbacks(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |i| {
            i.callbacks.iter().filter(|c| c.delivered).count() >= n
        })
        .await
    }

    async fn wait(&self, timeout: Duration, done: impl Fn(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.state.lock()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops serving.
    pub fn shutdown(self) {}
}

impl Drop for GraphHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(state: &State) {
    let mut inner = state.lock();
    let generation = inner.generation + 1;
    *inner = Inner {
        rules: state
            .cfg
            .errors
            .iter()
            .cloned()
            .map(ActiveRule::new)
            .collect(),
        generation,
        ..Inner::default()
    };
}

/// Starts the fake Graph API on `listener`.
pub async fn spawn_graph(
    listener: TcpListener,
    cfg: GraphConfig,
) -> Result<GraphHandle, GraphError> {
    let addr = listener.local_addr()?;
    let client = crate::http_client(Duration::from_secs(10))
        .map_err(|e| GraphError::Client(e.to_string()))?;
    let state = Arc::new(State {
        base_url: format!("http://{addr}"),
        signer: Signer::new(cfg.app_secret.as_bytes()),
        client,
        inner: Mutex::new(Inner::default()),
        rng: Mutex::new(StdRng::from_os_rng()),
        cfg,
    });
    reset(&state);
    let handler_state = state.clone();
    let task = tokio::spawn(serve(listener, move |req| {
        let state = handler_state.clone();
        async move { route(state, req).await }
    }));
    Ok(GraphHandle { addr, state, task })
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (_, ["_sim", what]) => control(&state, &method, what, req).await,
        (&Method::POST, [version, phone_id, "messages"]) if is_version(version) => {
            let phone_id = (*phone_id).to_owned();
            messages(&state, &phone_id, req).await
        }
        (&Method::POST, [version, phone_id, "media"]) if is_version(version) => {
            let phone_id = (*phone_id).to_owned();
            upload(&state, &phone_id, req).await
        }
        (&Method::GET, [version, _waba_id, "message_templates"]) if is_version(version) => {
            message_templates(&state, &path, &req)
        }
        (&Method::GET, [version, media_id]) if is_version(version) => {
            let media_id = (*media_id).to_owned();
            media_object(&state, &media_id, req)
        }
        (&Method::DELETE, [version, _media_id]) if is_version(version) => {
            match bearer(&state, &req) {
                Ok(_) => json_response(StatusCode::OK, &json!({ "success": true })),
                Err(resp) => resp,
            }
        }
        (&Method::GET, ["media", media_id]) => {
            let media_id = (*media_id).to_owned();
            download(&state, &media_id, &req)
        }
        _ => meta_error(
            StatusCode::BAD_REQUEST,
            2500,
            &format!("Unknown path components: {path}"),
            None,
            None,
        ),
    }
}

/// One page of the account's templates, with Meta's cursor paging
/// (`limit`, `after`; `paging.next` while more remain).
fn message_templates<B>(state: &State, path: &str, req: &Request<B>) -> Response<Body> {
    if let Err(resp) = bearer(state, req) {
        return resp;
    }
    let query = req.uri().query().unwrap_or("");
    let param = |k: &str| {
        query.split('&').find_map(|kv| {
            let (key, v) = kv.split_once('=')?;
            (key == k).then(|| v.to_owned())
        })
    };
    let limit = param("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(25)
        .clamp(1, 100);
    let after = param("after")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut inner = state.lock();
    inner.template_pages += 1;
    let all = &inner.templates;
    let end = (after + limit).min(all.len());
    let data: Vec<Value> = all
        .get(after..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut paging = json!({"cursors": {"before": after.to_string(), "after": end.to_string()}});
    if end < all.len() {
        paging["next"] = json!(format!(
            "{}{path}?limit={limit}&after={end}",
            state.base_url
        ));
    }
    json_response(StatusCode::OK, &json!({"data": data, "paging": paging}))
}

/// `v21.0`, `v23`: Graph API versions start with `v` and a digit.
fn is_version(s: &str) -> bool {
    let mut c = s.chars();
    c.next() == Some('v') && c.next().is_some_and(|d| d.is_ascii_digit())
}

fn fbtrace_id() -> String {
    let n: u128 = rand::random();
    format!("A{:022x}", n & ((1u128 << 88) - 1))
}

/// Meta's error shape: `{"error":{"message","type","code","error_data","error_subcode","fbtrace_id"}}`.
fn meta_error(
    status: StatusCode,
    code: i64,
    message: &str,
    details: Option<&str>,
    subcode: Option<i64>,
) -> Response<Body> {
    let mut err = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": fbtrace_id(),
    });
    if let Some(details) = details {
        err["error_data"] = json!({ "messaging_product": "whatsapp", "details": details });
    }
    if let Some(sub) = subcode {
        err["error_subcode"] = sub.into();
    }
    json_response(status, &json!({ "error": err }))
}

/// Message, details and subcode Meta uses for each code we may inject.
fn describe(code: i64) -> (String, String, Option<i64>) {
    let (msg, details, sub): (&str, &str, Option<i64>) = match code {
        130429 => (
            "Rate limit hit",
            "Cloud API message throughput has been reached.",
            Some(2494055),
        ),
        131056 => (
            "(Business Account, Consumer Account) pair rate limit hit",
            "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time.",
            None,
        ),
        4 => (
            "Application request limit reached",
            "The app has reached its API call rate limit.",
            None,
        ),
        80007 => (
            "Rate limit issues",
            "The WhatsApp Business Account has reached its rate limit.",
            None,
        ),
        131000 => (
            "Something went wrong",
            "Message failed to send due to an unknown error.",
            None,
        ),
        131016 => (
            "Service unavailable",
            "A service is temporarily unavailable.",
            None,
        ),
        2 => (
            "Service temporarily unavailable",
            "Temporary due to downtime or due to being overloaded.",
            None,
        ),
        131057 => (
            "Account in maintenance mode",
            "Business Account is in maintenance mode.",
            None,
        ),
        131047 => (
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
            Some(2494010),
        ),
        131026 => ("Message undeliverable", "Unable to deliver message.", None),
        131048 => (
            "Spam rate limit hit",
            "Message failed to send because there are restrictions on how many messages can be sent from this phone number.",
            None,
        ),
        131049 => (
            "This message was not delivered to maintain healthy ecosystem engagement.",
            "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
            None,
        ),
        131050 => (
            "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business",
            "The user has stopped marketing messages.",
            None,
        ),
        130472 => (
            "User's number is part of an experiment",
            "Failed to send message because this user's phone number is part of an experiment.",
            None,
        ),
        100 => ("Invalid parameter", "Invalid parameter.", None),
        131008 => (
            "Required parameter is missing",
            "The request is missing a required parameter.",
            None,
        ),
        131009 => (
            "Parameter value is not valid",
            "One or more parameter values are invalid.",
            None,
        ),
        132000 => (
            "Number of parameters does not match the expected number of params",
            "The number of variable parameter values does not match the number defined in the template.",
            None,
        ),
        132001 => (
            "Template name does not exist in the translation",
            "The template does not exist in the specified language or has not been approved.",
            None,
        ),
        132012 => (
            "Parameter format does not match format in the created template",
            "Variable parameter values formatted incorrectly.",
            None,
        ),
        190 => (
            "Error validating access token: Session has expired.",
            "The access token has expired.",
            Some(463),
        ),
        368 => (
            "Temporarily blocked for policies violations",
            "The WhatsApp Business Account is restricted for policy violations.",
            None,
        ),
        131031 => (
            "Business Account locked",
            "The WhatsApp Business Account has been locked.",
            None,
        ),
        131030 => (
            "Recipient phone number not in allowed list",
            "Recipient phone number not in allowed list: Add recipient phone number to recipient list and try again.",
            None,
        ),
        _ => ("Simulated error", "Error injected by wapipe-sim.", None),
    };
    // Meta prefixes most messages with the code; token errors read plainly.
    let message = if code == 190 {
        msg.to_owned()
    } else {
        format!("(#{code}) {msg}")
    };
    (message, details.to_owned(), sub)
}

fn injected_error(rule: &ErrorRule) -> Response<Body> {
    let (message, details, sub) = describe(rule.code);
    match rule.http {
        // Meta's own 5xx pages are not the JSON error shape; clients must
        // cope with a bare status.
        Some(http) if http >= 500 => bytes_response(
            StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "text/plain",
            format!("simulated upstream failure (rule code {})", rule.code),
        ),
        http => meta_error(
            http.and_then(|h| StatusCode::from_u16(h).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            rule.code,
            &message,
            Some(&details),
            sub,
        ),
    }
}

/// Checks `Authorization: Bearer <token>`; the error answer otherwise.
#[allow(clippy::result_large_err)]
fn bearer<B>(state: &State, req: &Request<B>) -> Result<String, Response<Body>> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(meta_error(
            StatusCode::UNAUTHORIZED,
            190,
            "An active access token must be used to query information about the current user.",
            None,
            None,
        ));
    };
    if let Some(expected) = &state.cfg.token
        && expected != token
    {
        return Err(meta_error(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            None,
            None,
        ));
    }
    Ok(token.to_owned())
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(meta_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                100,
                "(#100) Request body too large",
                None,
                None,
            ));
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| invalid_param(&format!("Request body is not valid JSON: {e}")))
}

fn invalid_param(details: &str) -> Response<Body> {
    meta_error(
        StatusCode::BAD_REQUEST,
        100,
        "(#100) Invalid parameter",
        Some(details),
        None,
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Glob with `*` (any run) and `?` (one character).
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The first rule that fires for a send to `to`, counted as fired.
fn fire_rule(state: &State, to: &str) -> Option<ErrorRule> {
    let to_digits = digits(to);
    let mut inner = state.lock();
    for active in inner.rules.iter_mut() {
        let rule = &active.rule;
        if let Some(pattern) = &rule.to
            && !glob_match(pattern, to)
            && !glob_match(pattern, &to_digits)
        {
            continue;
        }
        if rule.times.is_some_and(|n| active.fired >= n) {
            continue;
        }
        if let Some(share) = rule.share
            && !state.roll(share)
        {
            continue;
        }
        active.fired += 1;
        return Some(active.rule.clone());
    }
    None
}

async fn messages(state: &Arc<State>, phone_id: &str, req: Request<Incoming>) -> Response<Body> {
    let resp = messages_inner(state, phone_id, req).await;
    let mut inner = state.lock();
    inner.calls += 1;
    if !resp.status().is_success() {
        inner.failed_calls += 1;
    }
    resp
}

async fn messages_inner(
    state: &Arc<State>,
    phone_id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let token = match bearer(state, &req) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    if let Some(own) = &state.cfg.phone_number_id
        && own != phone_id
    {
        return meta_error(
            StatusCode::BAD_REQUEST,
            100,
            &format!(
                "Unsupported post request. Object with ID '{phone_id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
            ),
            None,
            Some(33),
        );
    }
    let body = match read_json(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return invalid_param("messaging_product is required and must be \"whatsapp\"");
    }

    // Mark-as-read (optionally with a typing indicator) has no `to`.
    if body.get("status").and_then(Value::as_str) == Some("read") {
        if body.get("message_id").and_then(Value::as_str).is_none() {
            return invalid_param("message_id is required to mark a message as read");
        }
        state.lock().reads.push(body);
        return json_response(StatusCode::OK, &json!({ "success": true }));
    }

    // A phone number in `to`, or a business-scoped user id in `recipient`
    // (a user known by a username only).
    let to_field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    let by_user_id = to_field("to").is_none() && to_field("recipient").is_some();
    let to = match to_field("to").or_else(|| to_field("recipient")) {
        Some(t) => t,
        None => {
            return meta_error(
                StatusCode::BAD_REQUEST,
                131008,
                "(#131008) Required parameter is missing",
                Some("Parameter 'to' is required."),
                None,
            );
        }
    };
    // Meta defaults a missing type to text.
    let kind = match body.get("type") {
        None => "text".to_owned(),
        Some(Value::String(k)) => k.clone(),
        Some(_) => return invalid_param("type must be a string"),
    };
    if !SEND_TYPES.contains(&kind.as_str()) {
        return invalid_param(&format!("Unsupported message type: {kind}"));
    }
    if body.get(&kind).is_none_or(Value::is_null) {
        return meta_error(
            StatusCode::BAD_REQUEST,
            131008,
            "(#131008) Required parameter is missing",
            Some(&format!(
                "Parameter '{kind}' is required for type '{kind}'."
            )),
            None,
        );
    }

    let rule = fire_rule(state, &to);
    if let Some(rule) = &rule
        && !rule.webhook
    {
        return injected_error(rule);
    }

    let wamid = payloads::unique_wamid();
    let wa_id = if by_user_id { to.clone() } else { digits(&to) };
    state.lock().sent.push(SentMessage {
        wamid: wamid.clone(),
        to: to.clone(),
        kind: kind.clone(),
        phone_number_id: phone_id.to_owned(),
        token,
        time_ms: now_ms(),
        body,
    });
    schedule_statuses(state, phone_id, &wamid, &wa_id, by_user_id, &kind, rule);

    let contact = if by_user_id {
        json!({ "input": to, "user_id": wa_id })
    } else {
        json!({ "input": to, "wa_id": wa_id })
    };
    let mut message = json!({ "id": wamid });
    if kind == "template" {
        message["message_status"] = "accepted".into();
    }
    json_response(
        StatusCode::OK,
        &json!({
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [message],
        }),
    )
}

/// Posts the send's status webhooks in the background: sent, delivered and
/// read, or sent and failed when an error rule with `webhook` fired.
fn schedule_statuses(
    state: &Arc<State>,
    phone_id: &str,
    wamid: &str,
    recipient: &str,
    by_user_id: bool,
    kind: &str,
    failure: Option<ErrorRule>,
) {
    let Some(webhook) = state.cfg.webhook.clone() else {
        return;
    };
    let category = if kind == "template" {
        "utility"
    } else {
        "service"
    };
    let mut statuses: Vec<(String, Value)> = match &failure {
        Some(rule) => {
            let (message, _, _) = describe(rule.code);
            vec![
                (
                    "sent".into(),
                    payloads::status(wamid, "sent", recipient, category),
                ),
                (
                    "failed".into(),
                    payloads::failed_status(wamid, recipient, rule.code, &message),
                ),
            ]
        }
        None => ["sent", "delivered", "read"]
            .iter()
            .map(|s| {
                (
                    (*s).to_owned(),
                    payloads::status(wamid, s, recipient, category),
                )
            })
            .collect(),
    };
    if by_user_id {
        // Receipts of a send to a BSUID name it as `recipient_user_id`.
        for (_, s) in &mut statuses {
            if let Some(o) = s.as_object_mut()
                && let Some(r) = o.remove("recipient_id")
            {
                o.insert("recipient_user_id".into(), r);
            }
        }
    }
    statuses.retain(|_| !state.roll(state.cfg.drop_rate));
    if state.cfg.duplicate {
        statuses = statuses.into_iter().flat_map(|s| [s.clone(), s]).collect();
    }
    if state.cfg.shuffle {
        let mut rng = state.rng.lock().unwrap_or_else(|p| p.into_inner());
        statuses.shuffle(&mut *rng);
    }
    let business = Business {
        phone_number_id: phone_id.to_owned(),
        ..state.cfg.business.clone()
    };
    let generation = state.lock().generation;
    let state = state.clone();
    let wamid = wamid.to_owned();
    tokio::spawn(async move {
        for (name, mut status) in statuses {
            tokio::time::sleep(state.cfg.status_delay).await;
            // Stamp the time of posting, as Meta does.
            status["timestamp"] = payloads::now_timestamp().into();
            let envelope = payloads::statuses_envelope(&business, vec![status]);
            let body = serde_json::to_vec(&envelope).unwrap_or_default();
            let record = post_callback(&state, &webhook, body, &wamid, &name).await;
            let mut inner = state.lock();
            if inner.generation == generation {
                inner.callbacks.push(record);
            }
        }
    });
}

async fn post_callback(
    state: &State,
    webhook: &str,
    body: Vec<u8>,
    wamid: &str,
    status: &str,
) -> CallbackRecord {
    let signature = state.signer.sign(&body);
    let mut attempts = 0;
    let mut delay = Duration::from_millis(100);
    loop {
        attempts += 1;
        let answer = state
            .client
            .post(webhook)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .body(body.clone())
            .send()
            .await;
        let http_status = answer.as_ref().ok().map(|r| r.status().as_u16());
        let delivered = http_status.is_some_and(|s| (200..300).contains(&s));
        if delivered || attempts > state.cfg.callback_retries {
            return CallbackRecord {
                wamid: wamid.to_owned(),
                status: status.to_owned(),
                http_status,
                attempts,
                delivered,
            };
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

async fn upload(state: &State, phone_id: &str, req: Request<Incoming>) -> Response<Body> {
    if let Err(resp) = bearer(state, &req) {
        return resp;
    }
    if let Some(own) = &state.cfg.phone_number_id
        && own != phone_id
    {
        return invalid_param(&format!("Unknown phone number id {phone_id}"));
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok());
    let Some(boundary) = boundary else {
        return invalid_param("an upload is multipart/form-data");
    };
    let body = http_body_util::BodyStream::new(Limited::new(req.into_body(), MAX_UPLOAD))
        .filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
            }
        });
    let mut form = multer::Multipart::new(body, boundary);
    let (mut product, mut kind, mut file) = (None, None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return invalid_param(&format!("bad multipart body: {e}")),
        };
        let name = field.name().unwrap_or("").to_owned();
        let part_type = field.content_type().map(|m| m.to_string());
        let file_name = field.file_name().map(str::to_owned);
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return invalid_param(&format!("bad multipart body: {e}")),
        };
        match name.as_str() {
            "messaging_product" => product = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "type" => kind = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "file" => file = Some((bytes, part_type, file_name)),
            _ => {}
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return invalid_param("The parameter messaging_product is required.");
    }
    let (Some(kind), Some((bytes, part_type, file_name))) = (kind, file) else {
        return invalid_param("An upload needs the parameters type and file.");
    };
    let id = payloads::unique_media_id();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let record = UploadRecord {
        id: id.clone(),
        phone_number_id: phone_id.to_owned(),
        mime_type: kind.clone(),
        part_type,
        file_name,
        size: bytes.len() as u64,
        sha256: sha,
    };
    {
        let mut inner = state.lock();
        inner.media_counts.uploads.push(record);
        if bytes.len() <= KEEP_UPLOADED {
            inner.media.insert(id.clone(), SimMedia::new(bytes, &kind));
        }
    }
    json_response(StatusCode::OK, &json!({ "id": id }))
}

/// The registered file of an id, or the generated one.
fn media_of(state: &State, media_id: &str) -> SimMedia {
    state
        .lock()
        .media
        .get(media_id)
        .cloned()
        .unwrap_or_else(|| SimMedia::new(media_bytes(media_id, state.cfg.media_size), "image/jpeg"))
}

fn media_object<B>(state: &State, media_id: &str, req: Request<B>) -> Response<Body> {
    if let Err(resp) = bearer(state, &req) {
        return resp;
    }
    let media = media_of(state, media_id);
    let sha = media.claimed_sha256.clone().unwrap_or_else(|| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&media.bytes))
    });
    let url = {
        let mut inner = state.lock();
        inner.media_counts.lookups += 1;
        if state.cfg.media_url_ttl.is_some() || inner.dead_urls > 0 {
            let n = inner.next_url;
            inner.next_url += 1;
            if inner.dead_urls > 0 {
                inner.dead_urls -= 1;
            } else {
                inner.issued.insert(n, Instant::now());
            }
            format!("{}/media/{}?u={n}", state.base_url, media_id)
        } else {
            format!("{}/media/{}", state.base_url, media_id)
        }
    };
    json_response(
        StatusCode::OK,
        &json!({
            "messaging_product": "whatsapp",
            "url": url,
            "mime_type": media.mime_type,
            "sha256": sha,
            "file_size": media.claimed_size.unwrap_or(media.bytes.len() as u64),
            "id": media_id,
        }),
    )
}

/// `GET /media/{id}[?u=N]`: the bytes, unless the URL expired.
fn download<B>(state: &State, media_id: &str, req: &Request<B>) -> Response<Body> {
    if let Err(resp) = bearer(state, req) {
        return resp;
    }
    let issued = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("u="))
            .and_then(|n| n.parse::<u64>().ok())
    });
    let expired = {
        let mut inner = state.lock();
        inner.media_counts.downloads += 1;
        let expired = match issued {
            None => false,
            Some(n) => match (inner.issued.get(&n), state.cfg.media_url_ttl) {
                (None, _) => true,
                (Some(at), Some(ttl)) => at.elapsed() > ttl,
                (Some(_), None) => false,
            },
        };
        if expired {
            inner.media_counts.expired += 1;
        }
        expired
    };
    if expired {
        return meta_error(
            StatusCode::NOT_FOUND,
            100,
            "This media URL has expired; look the media up again.",
            None,
            None,
        );
    }
    let media = media_of(state, media_id);
    let mut resp = Response::new(http_body_util::Full::new(media.bytes));
    if let Ok(v) = header::HeaderValue::from_str(&media.mime_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// A JPEG-framed blob of `size` bytes (at least the frame), distinct per
/// id, so downloads can be checked against the `sha256` of the lookup.
fn media_bytes(media_id: &str, size: usize) -> Bytes {
    let mut b = vec![
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
    ];
    b.extend_from_slice(b"wapipe-sim media ");
    b.extend_from_slice(media_id.as_bytes());
    let fill = size.saturating_sub(b.len() + 2);
    b.extend(std::iter::repeat_n(0x5Au8, fill));
    b.extend_from_slice(&[0xFF, 0xD9]);
    Bytes::from(b)
}

async fn control(
    state: &Arc<State>,
    method: &Method,
    what: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let inner_json = |v: Value| json_response(StatusCode::OK, &v);
    match (method, what) {
        (&Method::GET, "sent") => inner_json(json!(state.lock().sent)),
        (&Method::GET, "reads") => inner_json(json!(state.lock().reads)),
        (&Method::GET, "media") => inner_json(json!(state.lock().media_counts)),
        (&Method::GET, "callbacks") => inner_json(json!(state.lock().callbacks)),
        (&Method::GET, "calls") => {
            let inner = state.lock();
            inner_json(json!({
                "calls": inner.calls,
                "failed": inner.failed_calls,
                "accepted": inner.sent.len(),
            }))
        }
        (&Method::GET, "errors") => {
            let rules: Vec<ErrorRule> = state.lock().rules.iter().map(|r| r.rule.clone()).collect();
            inner_json(json!(rules))
        }
        (&Method::POST, "errors") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => return control_error("body too large"),
            };
            let specs: Vec<RuleSpec> = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => {
                    return control_error(&format!(
                        "expected a JSON list of rules (objects like {{\"code\":130429,\"times\":2}} or strings like \"130429:times=2\"): {e}"
                    ));
                }
            };
            let mut rules = Vec::with_capacity(specs.len());
            for spec in specs {
                match spec {
                    RuleSpec::Rule(r) => rules.push(r),
                    RuleSpec::Text(t) => match t.parse() {
                        Ok(r) => rules.push(r),
                        Err(e) => return control_error(&e),
                    },
                }
            }
            let n = rules.len();
            state.lock().rules = rules.into_iter().map(ActiveRule::new).collect();
            inner_json(json!({ "rules": n }))
        }
        (&Method::POST, "reset") => {
            reset(state);
            inner_json(json!({ "reset": true }))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no control route {method} /_sim/{what}") }),
        ),
    }
}

fn control_error(msg: &str) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": msg }))
}

/// Hand-written so the app secret and token never reach a log.
impl std::fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphConfig")
            .field("webhook", &self.webhook)
            .field("app_secret", &"<redacted>")
            .field("business", &self.business)
            .field("phone_number_id", &self.phone_number_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("status_delay", &self.status_delay)
            .field("shuffle", &self.shuffle)
            .field("duplicate", &self.duplicate)
            .field("drop_rate", &self.drop_rate)
            .field("errors", &self.errors)
            .field("callback_retries", &self.callback_retries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let r: ErrorRule = "130429:times=2".parse().expect("rule");
        assert_eq!(r.code, 130429);
        assert_eq!(r.times, Some(2));
        let r: ErrorRule = "131047:to=4917*:share=0.5:http=429".parse().expect("rule");
        assert_eq!(r.to.as_deref(), Some("4917*"));
        assert_eq!(r.share, Some(0.5));
        assert_eq!(r.http, Some(429));
        let r: ErrorRule = "131026:webhook".parse().expect("rule");
        assert!(r.webhook);
        for bad in [
            "",
            "abc",
            "1:share=2",
            "1:http=200",
            "1:times=-1",
            "1:color=red",
        ] {
            assert!(bad.parse::<ErrorRule>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("4917*", "491701234567"));
        assert!(!glob_match("4917*", "491601234567"));
        assert!(glob_match("*567", "491701234567"));
        assert!(glob_match("49?7*", "491701234567"));
        assert!(glob_match("*", ""));
        assert!(glob_match("4917*4*7", "491701234567"));
        assert!(!glob_match("4917", "491701234567"));
    }

    #[test]
    fn versions() {
        assert!(is_version("v21.0"));
        assert!(is_version("v3"));
        assert!(!is_version("media"));
        assert!(!is_version("v"));
    }
}
