//! The API's one error shape, `{"error": {"code", "message", "fields"}}`,
//! and the mapping of every lower error (extractors, domain, database) to
//! it. Internal errors are logged with their cause and answered without it.

use std::collections::BTreeMap;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use wapipe_domain::inbox::InboxError;
use wapipe_domain::outbox::OutboxError;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `validation_failed`, `not_found`, `unauthorized`,
    /// `forbidden`, `conflict`, `rate_limited`, or Meta's code (`131047`).
    pub code: String,
    pub message: String,
    /// Per-field problems (`{"name": "required"}`); empty otherwise.
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            fields: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
    }

    /// A 400 naming one field.
    pub fn field(field: &str, problem: impl Into<String>) -> Self {
        let problem = problem.into();
        let mut e = Self::bad_request(format!("{field}: {problem}"));
        e.fields.insert(field.to_owned(), problem);
        e
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "API request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.clone(),
                message: self.message.clone(),
                fields: self.fields.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        ApiError::internal(e)
    }
}

impl From<InboxError> for ApiError {
    fn from(e: InboxError) -> Self {
        match e {
            InboxError::UnknownAgent(_) => ApiError::field("agentId", "no such agent"),
            InboxError::AgentFull { .. } => ApiError::conflict("agent_at_capacity", e.to_string()),
            InboxError::NotAssigned => ApiError::conflict("not_assigned", e.to_string()),
            InboxError::Changed => ApiError::conflict("conflict", e.to_string()),
            InboxError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::BadPhone(_) => ApiError::field("phoneNumber", e.to_string()),
            OutboxError::Content(c) => ApiError::bad_request(c.to_string()),
            OutboxError::UnknownConfig(_) | OutboxError::InactiveConfig(_) => {
                ApiError::conflict("config_inactive", e.to_string())
            }
            OutboxError::Refused { code, message } => ApiError::unprocessable(code, message),
            other => ApiError::internal(other),
        }
    }
}

/// A serde message as field problems: `unknown field `x`` names `x`.
pub fn serde_fields(message: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for (marker, problem) in [
        ("unknown field `", "unknown field"),
        ("missing field `", "required"),
    ] {
        if let Some(rest) = message.split(marker).nth(1)
            && let Some(name) = rest.split('`').next()
        {
            fields.insert(name.to_owned(), problem.to_owned());
        }
    }
    fields
}
