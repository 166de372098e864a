//! The JSON resources: the views the REST API and the events log share
//! live in `wapipe_domain::views`; here only what the API alone answers.

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

pub use wapipe_domain::views::*;

/// An answer with nothing more to say than that it worked.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Done {
    pub ok: bool,
}

pub fn done() -> Value {
    json!({"ok": true})
}
