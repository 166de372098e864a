//! Meta's media endpoints, as the Graph API serves them: the lookup of a
//! media id (`GET /{version}/{media-id}`: a short-lived URL, its type,
//! sha256 and size), the download of that URL with the number's token,
//! and the upload of a file (`POST /{version}/{phone_number_id}/media`,
//! multipart) that answers a media id to send by.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// What a media id resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    pub url: String,
    pub mime_type: Option<String>,
    /// Lower-case hex.
    pub sha256: Option<String>,
    pub file_size: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaGraphError {
    /// Meta answered with its error object: `code` decides.
    #[error("Meta refused (HTTP {http_status}, code {code}): {message}")]
    Refused {
        http_status: u16,
        code: String,
        message: String,
    },
    /// The media URL no longer works (Meta's URLs last minutes): ask
    /// for it again.
    #[error("the media URL expired (HTTP {0})")]
    Expired(u16),
    /// No usable answer: a timeout, a cut connection, a 5xx.
    #[error("{0}")]
    Transport(String),
}

impl MediaGraphError {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            MediaGraphError::Refused {
                http_status, code, ..
            } => {
                *http_status >= 500
                    || matches!(
                        code.as_str(),
                        "4" | "2" | "80007" | "130429" | "131000" | "131016"
                    )
            }
            MediaGraphError::Expired(_) | MediaGraphError::Transport(_) => true,
        }
    }
}

/// The Graph API's media endpoints at one base URL.
#[derive(Clone)]
pub struct MediaGraph {
    http: reqwest::Client,
    base: String,
    version: String,
}

impl MediaGraph {
    /// A client of `base` (`GRAPH_API_BASE`) at `version` by default.
    /// `read_timeout` bounds each read, not the whole transfer: a 100 MB
    /// file may take minutes, a stalled one must not hold a worker.
    pub fn new(base: &str, version: &str, read_timeout: Duration) -> Result<Self, reqwest::Error> {
        // reqwest brings rustls without a provider; the binary installs
        // ring, but a client built alone (tests, tools) must not panic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(read_timeout)
            .user_agent(concat!("wapipe-media/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            version: version.to_owned(),
        })
    }

    fn url(&self, version: Option<&str>, path: &str) -> String {
        format!("{}/{}/{path}", self.base, version.unwrap_or(&self.version))
    }

    /// `GET /{version}/{media_id}`: the URL and Meta's checks of a media.
    pub async fn lookup(
        &self,
        version: Option<&str>,
        media_id: &str,
        token: &SecretString,
    ) -> Result<MediaInfo, MediaGraphError> {
        if media_id.is_empty()
            || !media_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(MediaGraphError::Refused {
                http_status: 400,
                code: "100".into(),
                message: format!("{media_id:?} is not a media id"),
            });
        }
        let body = answer(
            self.http.get(self.url(version, media_id)),
            token,
            "media lookup",
        )
        .await?;
        let url = body
            .get("url")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| MediaGraphError::Transport("the media lookup has no url".into()))?;
        let size = body.get("file_size").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        });
        Ok(MediaInfo {
            url: url.to_owned(),
            mime_type: body
                .get("mime_type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            sha256: body
                .get("sha256")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase),
            file_size: size,
        })
    }

    /// Starts the download of a looked-up URL; the answer's body is then
    /// read as a stream. 401, 403 and 404 mean the URL expired.
    pub async fn download(
        &self,
        url: &str,
        token: &SecretString,
    ) -> Result<reqwest::Response, MediaGraphError> {
        let resp = self
            .http
            .get(url)
            .header(AUTHORIZATION, format!("Bearer {}", token.expose_secret()))
            .send()
            .await
            .map_err(|e| MediaGraphError::Transport(e.to_string()))?;
        let status = resp.status();
        match status {
            s if s.is_success() => Ok(resp),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                Err(MediaGraphError::Expired(status.as_u16()))
            }
            s => Err(MediaGraphError::Transport(format!(
                "the media download answered HTTP {s}"
            ))),
        }
    }

    /// `POST /{version}/{phone_number_id}/media`: uploads the `len` bytes
    /// of `body` (a stream: never the whole file in memory) and answers
    /// Meta's media id.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload(
        &self,
        version: Option<&str>,
        phone_number_id: &str,
        token: &SecretString,
        mime_type: &str,
        file_name: &str,
        body: reqwest::Body,
        len: u64,
    ) -> Result<String, MediaGraphError> {
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(file_name.to_owned())
            .mime_str(mime_type)
            .map_err(|e| MediaGraphError::Refused {
                http_status: 400,
                code: "100".into(),
                message: format!("bad type {mime_type:?}: {e}"),
            })?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_owned())
            .part("file", part);
        let body = answer(
            self.http
                .post(self.url(version, &format!("{phone_number_id}/media")))
                .multipart(form),
            token,
            "upload",
        )
        .await?;
        body.get("id")
            .and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
            .ok_or_else(|| MediaGraphError::Transport("the upload answer has no id".into()))
    }
}

/// Sends a Graph API call with the number's token; its JSON answer, or
/// Meta's refusal.
async fn answer(
    req: reqwest::RequestBuilder,
    token: &SecretString,
    what: &str,
) -> Result<Value, MediaGraphError> {
    let resp = req
        .header(AUTHORIZATION, format!("Bearer {}", token.expose_secret()))
        .send()
        .await
        .map_err(|e| MediaGraphError::Transport(e.to_string()))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| MediaGraphError::Transport(format!("{what} answer: {e}")))?;
    if !status.is_success() {
        return Err(refusal(status, &body));
    }
    Ok(body)
}

/// Meta's `{"error": {...}}` as a refusal; anything else from a 5xx is
/// transport trouble.
fn refusal(status: StatusCode, body: &Value) -> MediaGraphError {
    let Some(err) = body.get("error") else {
        return MediaGraphError::Transport(format!("HTTP {status} without Meta's error"));
    };
    let code = match err.get("code") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "unknown".into(),
    };
    let message = err
        .get("error_data")
        .and_then(|d| d.get("details"))
        .or_else(|| err.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    MediaGraphError::Refused {
        http_status: status.as_u16(),
        code,
        message,
    }
}
