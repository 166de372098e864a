//! Replays payload files to a webhook the way Meta delivers them: signed over the exact bytes, retried on failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{SIGNATURE_HEADER, Signer};

#[derive(Clone)]
pub struct ReplayConfig {
    pub webhook: String,
    pub app_secret: String,
    /// Further attempts after the first one fails.
    pub retries: u32,
    /// First retry delay; it doubles on each further retry.
    pub backoff: Duration,
    pub request_timeout: Duration,
}

impl ReplayConfig {
    pub fn new(webhook: impl Into<String>, app_secret: impl Into<String>) -> Self {
        Self {
            webhook: webhook.into(),
            app_secret: app_secret.into(),
            retries: 5,
            backoff: Duration::from_millis(250),
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Walk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no *.json files under {0}")]
    Empty(PathBuf),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// How one file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// A 400: the receiver refused the payload. That is an answer about
    /// the payload, not a delivery failure.
    Rejected { status: u16, answer: String },
    /// Any other final answer, a transport error, or an unreadable file.
    Failed { status: Option<u16>, answer: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileResult {
    pub path: PathBuf,
    pub attempts: u32,
    /// True when the file was a wrapper and its inner envelope was posted.
    pub unwrapped: bool,
    pub outcome: Outcome,
}

impl std::fmt::Display for FileResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.path.display();
        match &self.outcome {
            Outcome::Delivered { status } => write!(f, "{status} {p}"),
            Outcome::Rejected { status, answer } => write!(f, "FAIL {status} {p}: {answer}"),
            Outcome::Failed {
                status: Some(status),
                answer,
            } => write!(f, "FAIL {status} {p}: {answer}"),
            Outcome::Failed {
                status: None,
                answer,
            } => write!(f, "FAIL error {p}: {answer}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    pub files: Vec<FileResult>,
}

impl ReplayReport {
    pub fn delivered(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Delivered { .. }))
    }
    pub fn rejected(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Rejected { .. }))
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed { .. }))
    }
    /// The CLI exits 1 when this is false.
    pub fn success(&self) -> bool {
        self.failed() == 0
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.files.iter().filter(|r| f(&r.outcome)).count()
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files: {} delivered, {} rejected (400), {} failed",
            self.files.len(),
            self.delivered(),
            self.rejected(),
            self.failed()
        )
    }
}

/// Expands the arguments into the files to post: a directory gives every
/// `*.json` below it, recursively; a file is taken as named. Sorted within
/// each directory so runs are reproducible.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| ReplayError::Walk {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            out[before..].sort();
            if out.len() == before {
                return Err(ReplayError::Empty(p.clone()));
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReplayError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReplayError::Walk {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ReplayError::Walk {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let ty = entry.file_type().map_err(|source| ReplayError::Walk {
            path: path.clone(),
            source,
        })?;
        if ty.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// The body Meta would have sent for this file. Usually the file's exact
/// bytes; but when the file wraps the envelope in a `body` or `payload` key
/// (as captures from some tools do), the inner envelope. A wrapper holding
/// the envelope as a string gives that string's bytes, which keeps a
/// captured raw body (and so its signature) exact.
pub fn body_for_file(bytes: &[u8]) -> (Vec<u8>, bool) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
        return (bytes.to_vec(), false);
    };
    if is_envelope(&Value::Object(map.clone())) {
        return (bytes.to_vec(), false);
    }
    for key in ["body", "payload"] {
        match map.get(key) {
            Some(inner @ Value::Object(_)) if is_envelope(inner) => {
                if let Ok(b) = serde_json::to_vec(inner) {
                    return (b, true);
                }
            }
            Some(Value::String(s))
                if serde_json::from_str::<Value>(s).is_ok_and(|v| is_envelope(&v)) =>
            {
                return (s.as_bytes().to_vec(), true);
            }
            _ => {}
        }
    }
    (bytes.to_vec(), false)
}

fn is_envelope(v: &Value) -> bool {
    v.get("object").is_some() && v.get("entry").is_some()
}

/// Posts every file, one after another, and reports each.
pub async fn replay_paths(
    paths: &[PathBuf],
    cfg: &ReplayConfig,
) -> Result<ReplayReport, ReplayError> {
    replay_paths_with(paths, cfg, |_| {}).await
}

/// Like [`replay_paths`], calling `on_file` as each file finishes (the CLI
/// prints from it, so long replays show progress).
pub async fn replay_paths_with(
    paths: &[PathBuf],
    cfg: &ReplayConfig,
    mut on_file: impl FnMut(&FileResult),
) -> Result<ReplayReport, ReplayError> {
    let files = collect_files(paths)?;
    let client =
        crate::http_client(cfg.request_timeout).map_err(|e| ReplayError::Client(e.to_string()))?;
    let signer = Signer::new(cfg.app_secret.as_bytes());
    let mut report = ReplayReport::default();
    for path in files {
        let result = replay_one(&client, &signer, cfg, &path).await;
        on_file(&result);
        report.files.push(result);
    }
    Ok(report)
}

async fn replay_one(
    client: &reqwest::Client,
    signer: &Signer,
    cfg: &ReplayConfig,
    path: &Path,
) -> FileResult {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => {
            return FileResult {
                path: path.to_owned(),
                attempts: 0,
                unwrapped: false,
                outcome: Outcome::Failed {
                    status: None,
                    answer: format!("cannot read: {e}"),
                },
            };
        }
    };
    let (body, unwrapped) = body_for_file(&bytes);
    let signature = signer.sign(&body);
    let mut attempts = 0;
    let mut delay = cfg.backoff;
    let outcome = loop {
        attempts += 1;
        let sent = client
            .post(&cfg.webhook)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .body(body.clone())
            .send()
            .await;
        let (outcome, retryable) = match sent {
            Ok(resp) => {
                let status = resp.status();
                let answer = resp.text().await.unwrap_or_default();
                let answer = shorten(answer.trim());
                if status.is_success() {
                    (
                        Outcome::Delivered {
                            status: status.as_u16(),
                        },
                        false,
                    )
                } else if status.as_u16() == 400 {
                    (
                        Outcome::Rejected {
                            status: 400,
                            answer,
                        },
                        false,
                    )
                } else {
                    // Meta retries anything but 200. We stop early on the
                    // other 4xx (bad signature, too large...): the same bytes
                    // get the same answer, and retrying only slows replays.
                    let retry = status.is_server_error()
                        || status.as_u16() == 408
                        || status.as_u16() == 429;
                    (
                        Outcome::Failed {
                            status: Some(status.as_u16()),
                            answer,
                        },
                        retry,
                    )
                }
            }
            Err(e) => (
                Outcome::Failed {
                    status: None,
                    answer: error_chain(&e),
                },
                true,
            ),
        };
        if !retryable || attempts > cfg.retries {
            break outcome;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    };
    FileResult {
        path: path.to_owned(),
        attempts,
        unwrapped,
        outcome,
    }
}

/// reqwest's top-level message alone ("error sending request") hides the
/// cause, such as "connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn shorten(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Hand-written so the app secret never reaches a log.
impl std::fmt::Debug for ReplayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayConfig")
            .field("webhook", &self.webhook)
            .field("app_secret", &"<redacted>")
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bodies_stay_byte_exact() {
        let raw = b"{\"object\":\"whatsapp_business_account\",  \"entry\":[]}\n";
        assert_eq!(body_for_file(raw), (raw.to_vec(), false));
        let not_json = b"\xff\xfe garbage";
        assert_eq!(body_for_file(not_json), (not_json.to_vec(), false));
        let graph_request = br#"{"messaging_product":"whatsapp","to":"1","type":"text"}"#;
        assert!(!body_for_file(graph_request).1);
    }

    #[test]
    fn wrappers_are_unwrapped() {
        let wrapped =
            br#"{"headers":{},"body":{"object":"whatsapp_business_account","entry":[{"id":"1"}]}}"#;
        let (body, unwrapped) = body_for_file(wrapped);
        assert!(unwrapped);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1"}]})
        );
        let as_string = br#"{"payload":"{\"object\": \"x\", \"entry\": []}"}"#;
        assert_eq!(
            body_for_file(as_string),
            (br#"{"object": "x", "entry": []}"#.to_vec(), true)
        );
        // A "body" that is not an envelope is not a wrapper.
        let other = br#"{"body":{"text":"hi"}}"#;
        assert_eq!(body_for_file(other), (other.to_vec(), false));
    }
}
