//! Extractors that answer bad input in the API's error shape: a JSON body
//! (unknown fields are refused by each body type's `deny_unknown_fields`),
//! query strings and UUID path segments.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{ApiError, serde_fields};

/// A JSON body.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    e.body_text(),
                ));
            }
            Err(e) => return Err(ApiError::bad_request(e.body_text())),
        };
        // PostgreSQL stores neither text nor jsonb with a NUL in it, so a
        // `\u0000` would pass here and fail at the database as a 500.
        if has_escaped_nul(&bytes) {
            return Err(ApiError::bad_request(NUL_REFUSED));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                let message = e.body_text();
                let mut err = ApiError::bad_request(message.clone());
                err.fields = serde_fields(&message);
                Err(err)
            }
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                e.body_text(),
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

const NUL_REFUSED: &str = "text may not contain the NUL character (\\u0000)";

/// `application/json`, or a `+json` type, as axum's `Json` accepts.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether a JSON text has a string holding NUL. Raw control characters are
/// already invalid JSON, so NUL can only come as the escape `\u0000`; a
/// backslash escaped before `u0000` (`\\u0000`) is ordinary text.
fn has_escaped_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json[i + 1..].starts_with(b"u0000") {
                return true;
            }
            // Skip the escaped character, whatever it is.
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// Query parameters.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(_) if query_has_nul(parts.uri.query()) => Err(ApiError::bad_request(NUL_REFUSED)),
            Ok(Query(v)) => Ok(Q(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let message = e.body_text();
                let mut err = ApiError::bad_request(message.clone());
                err.fields = serde_fields(&message);
                Err(err)
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// NUL in a query string can only come percent-encoded.
fn query_has_nul(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    })
}

/// Path parameters that are all UUIDs (`/chats/{id}`,
/// `/chats/{chatId}/labels/{labelId}`).
pub struct Ids<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Ids<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Ids(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::bad_request(
                format!("an id in the path is not a UUID: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::internal(e.body_text())),
        }
    }
}

/// One UUID in the path.
pub struct Id(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ids::<Uuid>::from_request_parts(parts, state)
            .await
            .map(|Ids(id)| Id(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nul_only_where_json_has_it() {
        assert!(has_escaped_nul(br#"{"a":"x\u0000y"}"#));
        assert!(has_escaped_nul(br#"{"a\u0000":1}"#));
        assert!(
            !has_escaped_nul(br#"{"a":"x\\u0000y"}"#),
            "an escaped backslash"
        );
        assert!(has_escaped_nul(br#"{"a":"x\\\u0000y"}"#));
        assert!(!has_escaped_nul(br#"{"a":"\u0001 \"u0000\""}"#));
        assert!(!has_escaped_nul(b"\\"), "a lone backslash at the end");
    }

    #[test]
    fn finds_nul_in_query_strings() {
        assert!(query_has_nul(Some("q=a%00b")));
        assert!(query_has_nul(Some("q=%00")));
        assert!(!query_has_nul(Some("q=a%2500")), "an encoded percent sign");
        assert!(!query_has_nul(None));
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().expect("header"));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
