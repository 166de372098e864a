//! The Graph API client: `POST {base}/{version}/{phone_number_id}/messages`
//! with a bearer token, and the reading of Meta's answer. Decisions are
//! taken on Meta's `error.code` (a number or a string), never on the HTTP
//! status (DESIGN §6): Meta answers 400 even for throttling.
//!
//! The one distinction made here on transport grounds is whether the
//! request may have reached Meta: a refused connection did not send
//! anything ([`GraphOutcome::NotSent`]), a timeout or a cut connection may
//! have ([`GraphOutcome::Unknown`]); the worker treats the two differently
//! to avoid double sends.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use wapipe_shared::whatsapp::MetaError;

/// Histogram of Graph call latency, seconds.
pub const METRIC_GRAPH_SECONDS: &str = "wapipe_outbound_graph_seconds";

#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// `GRAPH_API_BASE`, e.g. `https://graph.facebook.com`.
    pub base_url: String,
    /// `GRAPH_API_VERSION`, e.g. `v23.0`; a config may override it.
    pub version: String,
    pub connect_timeout: Duration,
    /// Whole request, answer included. Keep it well under the worker's
    /// `sending_timeout`, after which an unanswered send counts as abandoned.
    pub request_timeout: Duration,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            base_url: "https://graph.facebook.com".into(),
            version: "v23.0".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// Meta's refusal of a call: its error object (the same [`MetaError`]
/// webhooks carry), with the code the decision is made on and the title
/// we store.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `error.code`, kept as a string whether Meta sent a number or a string.
    pub code: String,
    /// `error.title`, else `error.message`.
    pub title: String,
    pub http_status: u16,
    /// The error object; its `raw` is stored in `messages.errors`.
    pub error: MetaError,
}

/// What a call to `/messages` came to.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphOutcome {
    /// A send accepted: `messages[0].id`.
    Accepted { wamid: String },
    /// A call without a message id that succeeded (mark-as-read).
    Success,
    /// Meta refused, with its error object.
    Refused(Refusal),
    /// Nothing reached Meta, or Meta certainly did not act on it (connect
    /// failure, an error status without Meta's error body): safe to resend.
    NotSent(String),
    /// The request may have reached Meta but we have no usable answer
    /// (timeout, connection cut mid-answer, a 2xx without a wamid).
    Unknown(String),
}

/// How to treat a Meta error code (DESIGN §6 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throughput or app/WABA limits (130429, 80007, 4): retry later, and
    /// hold the whole number back briefly.
    NumberLimit,
    /// The pair limit (131056): retry later; hold back this recipient only.
    PairLimit,
    /// Meta-side trouble (131000, 131016, 2, 131057): retry with backoff.
    Transient,
    /// The token or the account is unusable (190, 368, 131031): fail the
    /// message and flag the config.
    FlagConfig,
    /// Anything else, unknown codes included: fail the message.
    Permanent,
}

/// Meta's codes that flag the config ([`ErrorClass::FlagConfig`]).
pub const FLAG_CODES: &[&str] = &["190", "368", "131031"];

pub fn classify(code: &str) -> ErrorClass {
    match code.trim() {
        "130429" | "80007" | "4" => ErrorClass::NumberLimit,
        "131056" => ErrorClass::PairLimit,
        "131000" | "131016" | "2" | "131057" => ErrorClass::Transient,
        c if FLAG_CODES.contains(&c) => ErrorClass::FlagConfig,
        _ => ErrorClass::Permanent,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphClientError {
    #[error("cannot build the Graph API client: {0}")]
    Build(String),
}

/// Reads Meta's error shape `{"error": {...}}` out of an answer body.
pub fn parse_meta_error(http_status: u16, body: &[u8]) -> Option<Refusal> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let error = MetaError::from_value(v.get("error")?);
    let code = error.code.clone()?;
    Some(Refusal {
        title: error.summary(),
        code,
        http_status,
        error,
    })
}

/// Reads an answer (status + body) into an outcome.
pub fn read_answer(http_status: u16, body: &[u8]) -> GraphOutcome {
    if (200..300).contains(&http_status) {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return GraphOutcome::Unknown(format!(
                    "HTTP {http_status} with a body that is not JSON: {e}"
                ));
            }
        };
        if let Some(wamid) = v
            .get("messages")
            .and_then(|m| m.get(0))
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            return GraphOutcome::Accepted {
                wamid: wamid.to_owned(),
            };
        }
        if v.get("success").and_then(Value::as_bool) == Some(true) {
            return GraphOutcome::Success;
        }
        return GraphOutcome::Unknown(format!("HTTP {http_status} without messages[0].id"));
    }
    match parse_meta_error(http_status, body) {
        Some(e) => GraphOutcome::Refused(e),
        None => GraphOutcome::NotSent(format!("HTTP {http_status} without a Meta error body")),
    }
}

/// A pooled HTTP client for the Graph API; cheap to clone.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: String,
    version: String,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.base)
            .field("version", &self.version)
            .finish()
    }
}

impl GraphClient {
    pub fn new(settings: &GraphSettings) -> Result<Self, GraphClientError> {
        // reqwest is built without a rustls provider of its own: the binary
        // installs ring first thing. Libraries used on their own (tests,
        // benches) get the same one here; a provider already installed wins.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(256)
            .user_agent(concat!("wapipe/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphClientError::Build(e.to_string()))?;
        Ok(Self {
            http,
            base: settings.base_url.trim_end_matches('/').to_owned(),
            version: settings.version.trim_matches('/').to_owned(),
        })
    }

    pub fn messages_url(&self, phone_number_id: &str, version: Option<&str>) -> String {
        let version = version
            .map(|v| v.trim_matches('/'))
            .filter(|v| !v.is_empty())
            .unwrap_or(&self.version);
        format!("{}/{version}/{phone_number_id}/messages", self.base)
    }

    /// One POST to `/messages`; never retries by itself (the runtime does).
    pub async fn post_messages(
        &self,
        phone_number_id: &str,
        version: Option<&str>,
        token: &SecretString,
        body: &Value,
    ) -> GraphOutcome {
        let started = Instant::now();
        let outcome = self.post_inner(phone_number_id, version, token, body).await;
        metrics::histogram!(METRIC_GRAPH_SECONDS).record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn post_inner(
        &self,
        phone_number_id: &str,
        version: Option<&str>,
        token: &SecretString,
        body: &Value,
    ) -> GraphOutcome {
        let mut auth = match HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())) {
            Ok(v) => v,
            // Retrying cannot repair a token with control characters; the
            // answer Meta would give (190) is the honest one.
            Err(_) => {
                let title = "the access token is not a valid header value";
                return GraphOutcome::Refused(Refusal {
                    code: "190".into(),
                    title: title.into(),
                    http_status: 0,
                    error: MetaError {
                        code: Some("190".into()),
                        title: Some(title.into()),
                        ..MetaError::default()
                    },
                });
            }
        };
        auth.set_sensitive(true);
        // Serialising a JSON value cannot fail.
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let sent = self
            .http
            .post(self.messages_url(phone_number_id, version))
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            // A connect failure (refused, DNS, connect timeout) sent nothing.
            Err(e) if e.is_connect() => return GraphOutcome::NotSent(format!("connect: {e}")),
            Err(e) if e.is_timeout() => return GraphOutcome::Unknown(format!("timeout: {e}")),
            Err(e) => return GraphOutcome::Unknown(format!("request: {e}")),
        };
        let status = resp.status().as_u16();
        match resp.bytes().await {
            Ok(b) => read_answer(status, &b),
            Err(e) if (200..300).contains(&status) => {
                GraphOutcome::Unknown(format!("HTTP {status}, answer cut: {e}"))
            }
            // An error status means Meta did not act on it, body or not.
            Err(e) => GraphOutcome::NotSent(format!("HTTP {status}, answer cut: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codes_as_numbers_or_strings() {
        let n = json!({"error": {"code": 130429, "message": "(#130429) Rate limit hit",
            "error_data": {"details": "d"}}});
        let e = parse_meta_error(400, &serde_json::to_vec(&n).expect("json")).expect("error");
        assert_eq!(e.code, "130429");
        assert_eq!(e.title, "(#130429) Rate limit hit");
        assert_eq!(e.error.details.as_deref(), Some("d"));
        let s = json!({"error": {"code": "131047", "title": "Re-engagement message"}});
        let e = parse_meta_error(400, &serde_json::to_vec(&s).expect("json")).expect("error");
        assert_eq!(e.code, "131047");
        assert_eq!(e.title, "Re-engagement message");
    }

    #[test]
    fn answers() {
        let ok = br#"{"messaging_product":"whatsapp","messages":[{"id":"wamid.A"}]}"#;
        assert_eq!(
            read_answer(200, ok),
            GraphOutcome::Accepted {
                wamid: "wamid.A".into()
            }
        );
        assert_eq!(
            read_answer(200, br#"{"success":true}"#),
            GraphOutcome::Success
        );
        assert!(matches!(read_answer(200, b"{}"), GraphOutcome::Unknown(_)));
        assert!(matches!(
            read_answer(500, b"oops"),
            GraphOutcome::NotSent(_)
        ));
        // The HTTP status never decides: a throttle in a 200-less 400.
        let t = br#"{"error":{"code":130429,"message":"x"}}"#;
        assert!(matches!(read_answer(400, t), GraphOutcome::Refused(e) if e.code == "130429"));
    }

    #[test]
    fn classes_follow_design_table() {
        for c in ["130429", "80007", "4"] {
            assert_eq!(classify(c), ErrorClass::NumberLimit, "{c}");
        }
        assert_eq!(classify("131056"), ErrorClass::PairLimit);
        for c in ["131000", "131016", "2", "131057"] {
            assert_eq!(classify(c), ErrorClass::Transient, "{c}");
        }
        for c in ["190", "368", "131031"] {
            assert_eq!(classify(c), ErrorClass::FlagConfig, "{c}");
        }
        for c in [
            "131047", "131026", "131048", "131049", "131050", "130472", "100", "131008", "131009",
            "132000", "132001", "132012", "999999",
        ] {
            assert_eq!(classify(c), ErrorClass::Permanent, "{c}");
        }
    }
}
