//! Meta's WhatsApp Cloud API webhook payloads, read leniently: the envelope
//! (`entry[].changes[]`), contacts, status receipts and error objects, plus
//! the list of message types and change fields we know.
//!
//! Meta's payloads drift: ids and error codes come as numbers or strings,
//! timestamps as `"1700000000"` or `1700000000`, objects go missing, new
//! fields appear. So nothing here deserializes into rigid structs that a
//! single wrong type would reject: every accessor takes a
//! [`serde_json::Value`] and returns `None` (or an empty list) for what it
//! cannot read. A wrong type in one message never costs the rest of the
//! event.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;

/// Message types Meta documents for `messages[].type`.
pub const MESSAGE_TYPES: &[&str] = &[
    "text",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "edit",
    "revoke",
    "unsupported",
    "unknown",
    "request_welcome",
];

/// `interactive.type` values we turn into columns.
pub const INTERACTIVE_TYPES: &[&str] = &["button_reply", "list_reply", "nfm_reply"];

/// Change fields we know by name. Anything else is still stored and counted,
/// under the label `other` (a label per unknown name would let any signed
/// body grow the metric's cardinality without bound).
pub const KNOWN_FIELDS: &[&str] = &[
    "messages",
    "statuses",
    "account_alerts",
    "account_review_update",
    "account_settings_update",
    "account_update",
    "business_capability_update",
    "calls",
    "group_lifecycle_update",
    "group_participants_update",
    "group_settings_update",
    "group_status_update",
    "history",
    "message_echoes",
    "message_template_components_update",
    "message_template_quality_update",
    "message_template_status_update",
    "partner_solutions",
    "payment_configuration_update",
    "phone_number_name_update",
    "phone_number_quality_update",
    "security",
    "smb_app_state_sync",
    "smb_message_echoes",
    "template_category_update",
    "user_preferences",
];

/// The metric label for a change field: its name if known, else `other`.
pub fn field_label(field: Option<&str>) -> &'static str {
    match field {
        None => "none",
        Some(f) => KNOWN_FIELDS
            .iter()
            .find(|k| **k == f)
            .copied()
            .unwrap_or("other"),
    }
}

/// A webhook body as JSON. A lone surrogate escape (`"\ud800"`: valid
/// JSON syntax, as when a client cuts an emoji in half) is read as U+FFFD
/// rather than refused: refused, its event would be answered 400 and Meta
/// would retry it for 7 days without it ever being processed. The body is
/// parsed as sent first, so only such bodies pay for the repair.
pub fn parse_body(body: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) => match repair_surrogates(body) {
            Some(fixed) => serde_json::from_slice(&fixed),
            None => Err(e),
        },
    }
}

/// `body` with every unpaired `\uD800`-`\uDFFF` escape replaced by
/// `\uFFFD` (same length); `None` when it has none.
fn repair_surrogates(body: &[u8]) -> Option<Vec<u8>> {
    fn unit(b: &[u8], at: usize) -> Option<u16> {
        // `\uXXXX` at `at`.
        let hex = b.get(at + 2..at + 6)?;
        if b.get(at) != Some(&b'\\') || b.get(at + 1) != Some(&b'u') {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }
    let is_high = |u: u16| (0xD800..0xDC00).contains(&u);
    let is_low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(body, i) {
            Some(u) if is_high(u) && unit(body, i + 6).is_some_and(is_low) => i += 12,
            Some(u) if is_high(u) || is_low(u) => {
                let o = out.get_or_insert_with(|| body.to_vec());
                o[i..i + 6].copy_from_slice(b"\\uFFFD");
                i += 6;
            }
            // Any other escape, `\\` included, is two bytes or more that
            // cannot start another escape.
            _ => i += 2,
        }
    }
    out
}

/// `s` without NUL characters: PostgreSQL stores none in text or jsonb, so
/// every string read here is cleaned before anything can write it.
pub fn without_nul(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_owned()
    }
}

/// A non-empty string at `v`, without NUL characters.
fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(without_nul)
        .filter(|s| !s.is_empty())
}

/// Longest id (wamid, wa_id, user_id, status) stored as sent. Ids are
/// indexed, and a B-tree entry has a size limit (about 2.7 kB on
/// PostgreSQL): a longer id from a hostile body would fail its event on
/// every attempt. Real ones are under 128 bytes.
pub const MAX_ID_BYTES: usize = 256;

/// `id` as stored: itself, or `wapipe:long:<sha256>` when longer than
/// [`MAX_ID_BYTES`], or `wapipe:nul:<sha256>` when it holds NUL characters
/// (which PostgreSQL cannot store): the same on every replay, and never
/// another id's. Dropping the NULs would make `"336\u00001"` and `"3361"`
/// one customer.
pub fn bounded_id(id: String) -> String {
    if id.contains('\0') {
        format!("wapipe:nul:{}", crate::crypto::sha256_hex(id.as_bytes()))
    } else if id.len() <= MAX_ID_BYTES {
        id
    } else {
        format!("wapipe:long:{}", crate::crypto::sha256_hex(id.as_bytes()))
    }
}

/// An id (wamid, wa_id, user_id, …) at `v`: a string or a number written
/// as one, as stored ([`bounded_id`]). Empty counts as absent.
pub fn id_at(v: Option<&Value>) -> Option<String> {
    let raw = match v? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Some(bounded_id(raw))
}

/// A string, or a number written as a string (Meta sends ids and error codes
/// both ways), without NUL characters. Empty strings count as absent.
pub fn lenient_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(without_nul(s)).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integer given as a number (integral float too) or a numeric string.
pub fn lenient_i64(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// `true`, `"true"` or `1`; anything else is false.
pub fn lenient_bool(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true") || s == "1",
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// Latest Unix time we accept (9999-12-31T23:59:59Z): both databases store
/// it, and anything later is garbage rather than a date.
const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// Meta's Unix timestamp in seconds (string or number), truncated to
/// microseconds so PostgreSQL and SQLite store the same value. Zero,
/// negative and far-future values are treated as absent.
pub fn meta_timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let secs = lenient_i64(v)?;
    if !(1..=MAX_UNIX_SECS).contains(&secs) {
        return None;
    }
    DateTime::from_timestamp(secs, 0).map(|t| t.trunc_subsecs(6))
}

/// `v[key]` as an array, or an empty slice when absent or not an array.
pub fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A non-empty string at `v[key]`, as sent (NULs included).
pub fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// One `entry[].changes[]` item.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// `entry[].id`: the WABA id.
    pub entry_id: Option<&'a Value>,
    /// `entry[].time`: when Meta emitted the entry (account and template
    /// updates carry no other time).
    pub entry_time: Option<&'a Value>,
    pub field: Option<&'a str>,
    /// `value`, or `Null` when missing.
    pub value: &'a Value,
}

static NULL: Value = Value::Null;

/// Every change of an envelope, in order. A body without `entry` (or with
/// wrong types there) has none.
pub fn changes(root: &Value) -> Vec<Change<'_>> {
    let mut out = Vec::new();
    for entry in array(root, "entry") {
        for change in array(entry, "changes") {
            out.push(Change {
                entry_id: entry.get("id"),
                entry_time: entry.get("time"),
                field: change.get("field").and_then(Value::as_str),
                value: change.get("value").unwrap_or(&NULL),
            });
        }
    }
    out
}

impl<'a> Change<'a> {
    /// The WABA id, from `entry[].id`.
    pub fn waba_id(&self) -> Option<String> {
        lenient_string(self.entry_id)
    }

    /// Meta's time of the entry (`entry[].time`), if it sent one.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        meta_timestamp(self.entry_time)
    }

    /// `value.metadata.phone_number_id`: which number the change is about.
    pub fn phone_number_id(&self) -> Option<String> {
        lenient_string(
            self.value
                .get("metadata")
                .and_then(|m| m.get("phone_number_id")),
        )
    }

    pub fn contacts(&self) -> Vec<Contact> {
        array(self.value, "contacts")
            .iter()
            .map(Contact::from_value)
            .collect()
    }

    pub fn messages(&self) -> &'a [Value] {
        array(self.value, "messages")
    }

    pub fn statuses(&self) -> &'a [Value] {
        array(self.value, "statuses")
    }

    /// Value-level `errors[]` (e.g. a rate limit hit while Meta built the
    /// webhook).
    pub fn errors(&self) -> Vec<MetaError> {
        errors_of(self.value.get("errors"))
    }

    /// Whether this change carries messages and statuses: `field=messages`,
    /// or no field at all with a value that looks like one.
    pub fn is_messages(&self) -> bool {
        match self.field {
            Some(f) => f == "messages",
            None => self.value.get("messages").is_some() || self.value.get("statuses").is_some(),
        }
    }
}

/// `contacts[]`: who wrote. `wa_id` may be empty for users with a username;
/// `user_id` is the business-scoped user id (BSUID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub name: Option<String>,
    /// `profile.username` (`@name`) of a user who set one.
    pub username: Option<String>,
    /// `parent_user_id`: the parent BSUID of linked business portfolios.
    pub parent_user_id: Option<String>,
}

impl Contact {
    pub fn from_value(v: &Value) -> Self {
        Self {
            wa_id: id_at(v.get("wa_id")),
            user_id: id_at(v.get("user_id")),
            name: text(v.get("profile").and_then(|p| p.get("name"))),
            username: text(v.get("profile").and_then(|p| p.get("username"))).map(bounded_id),
            parent_user_id: id_at(v.get("parent_user_id")),
        }
    }
}

/// One of Meta's error objects: in webhooks (`errors[]` of a value, a
/// message or a status) and in Graph API answers (`{"error": {...}}`), the
/// one type for both. `code` is kept as a string whatever Meta sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaError {
    pub code: Option<String>,
    pub title: Option<String>,
    pub message: Option<String>,
    /// `error_data.details`, or a top-level `details` (older payloads),
    /// or the `error_user_msg` of Graph answers.
    pub details: Option<String>,
    /// `error_subcode` (Graph answers).
    pub subcode: Option<String>,
    /// The object as received.
    pub raw: Value,
}

impl MetaError {
    pub fn from_value(v: &Value) -> Self {
        Self {
            code: lenient_string(v.get("code")),
            title: text(v.get("title")),
            message: text(v.get("message")),
            details: text(v.get("error_data").and_then(|d| d.get("details")))
                .or_else(|| text(v.get("details")))
                .or_else(|| text(v.get("error_user_msg"))),
            subcode: lenient_string(v.get("error_subcode")),
            raw: v.clone(),
        }
    }

    /// `title`, else `message`, else a generic line naming the code.
    pub fn summary(&self) -> String {
        self.title
            .clone()
            .or_else(|| self.message.clone())
            .unwrap_or_else(|| format!("Meta error {}", self.code.as_deref().unwrap_or("?")))
    }
}

/// `errors` as a list: an array of error objects, or a lone object.
pub fn errors_of(v: Option<&Value>) -> Vec<MetaError> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|i| i.is_object())
            .map(MetaError::from_value)
            .collect(),
        Some(o @ Value::Object(_)) => vec![MetaError::from_value(o)],
        _ => Vec::new(),
    }
}

/// A status receipt (`statuses[]`): what happened to a message we sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Status<'a> {
    /// The wamid of our message.
    pub id: Option<String>,
    /// `sent`, `delivered`, `read`, `played`, `failed`, or anything newer.
    pub status: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    pub recipient_id: Option<String>,
    pub recipient_user_id: Option<String>,
    pub conversation: Option<&'a Value>,
    pub pricing: Option<&'a Value>,
    pub errors: Vec<MetaError>,
    pub raw: &'a Value,
}

impl<'a> Status<'a> {
    pub fn from_value(v: &'a Value) -> Self {
        let obj = |k: &str| v.get(k).filter(|x| x.is_object());
        Self {
            id: id_at(v.get("id")),
            status: text(v.get("status")).map(|s| bounded_id(s.to_ascii_lowercase())),
            timestamp: meta_timestamp(v.get("timestamp")),
            recipient_id: id_at(v.get("recipient_id")),
            recipient_user_id: id_at(v.get("recipient_user_id")),
            conversation: obj("conversation"),
            pricing: obj("pricing"),
            errors: errors_of(v.get("errors")),
            raw: v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let cut = br#"{"text":"ok \ud83d","id":"\udc00x","pair":"\ud83d\ude00","esc":"\\ud800"}"#;
        let v = parse_body(cut).expect("repaired");
        assert_eq!(v["text"], "ok \u{FFFD}");
        assert_eq!(v["id"], "\u{FFFD}x");
        // A real pair stays the emoji; an escaped backslash is no escape.
        assert_eq!(v["pair"], "\u{1F600}");
        assert_eq!(v["esc"], "\\ud800");
        // What is not JSON stays an error.
        assert!(parse_body(br#"{"text": "\ud800"#).is_err());
        assert!(parse_body(b"[1,").is_err());
        // A body without the problem is parsed as is.
        assert_eq!(
            parse_body(br#"{"a":"\u00e9"}"#).expect("json")["a"],
            "\u{e9}"
        );
    }
    use serde_json::json;

    #[test]
    fn lenient_scalars() {
        assert_eq!(lenient_string(Some(&json!(131049))), Some("131049".into()));
        assert_eq!(
            lenient_string(Some(&json!("131049"))),
            Some("131049".into())
        );
        assert_eq!(lenient_string(Some(&json!(""))), None);
        assert_eq!(lenient_string(Some(&json!("\u{0}"))), None);
        assert_eq!(lenient_string(Some(&json!("a\u{0}b"))), Some("ab".into()));
        assert_eq!(lenient_string(Some(&json!([1]))), None);
        assert_eq!(bounded_id("wamid.1".into()), "wamid.1");
        let long = bounded_id("x".repeat(5000));
        assert!(long.starts_with("wapipe:long:") && long.len() < 100);
        assert_eq!(long, bounded_id("x".repeat(5000)));
        assert_eq!(lenient_i64(Some(&json!("17"))), Some(17));
        assert_eq!(lenient_i64(Some(&json!(17.0))), Some(17));
        assert_eq!(lenient_i64(Some(&json!(17.5))), None);
        assert_eq!(lenient_i64(Some(&json!(1e300))), None);
        assert!(lenient_bool(Some(&json!("true"))));
        assert!(!lenient_bool(Some(&json!({}))));
    }

    #[test]
    fn timestamps_string_or_number() {
        let a = meta_timestamp(Some(&json!("1700000000")));
        let b = meta_timestamp(Some(&json!(1700000000)));
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(meta_timestamp(Some(&json!(-5))), None);
        assert_eq!(meta_timestamp(Some(&json!(0))), None);
        assert_eq!(meta_timestamp(Some(&json!(i64::MAX))), None);
        assert_eq!(meta_timestamp(Some(&json!("soon"))), None);
    }

    #[test]
    fn envelope_and_parts() {
        let v = json!({"object":"whatsapp_business_account","entry":[
            {"id": 102, "changes":[
                {"field":"messages","value":{"metadata":{"phone_number_id": 106},
                  "contacts":[{"profile":{"name":"A"},"wa_id":"","user_id":"US.1"}],
                  "messages":[{"id":"wamid.1"}],
                  "statuses":[{"id":"wamid.2","status":"READ","timestamp":1700000000,
                               "errors":[{"code":"131049","error_data":{"details":"d"}}]}],
                  "errors": {"code": 130429, "title": "Rate limit hit"}}},
                {"field":"account_update","value":{"event":"X"}},
                "not an object"
            ]},
            {"changes": "wrong"}
        ]});
        let cs = changes(&v);
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0].waba_id().as_deref(), Some("102"));
        assert_eq!(cs[0].phone_number_id().as_deref(), Some("106"));
        assert!(cs[0].is_messages());
        assert!(!cs[1].is_messages());
        assert_eq!(
            cs[0].contacts(),
            vec![Contact {
                wa_id: None,
                user_id: Some("US.1".into()),
                name: Some("A".into()),
                username: None,
                parent_user_id: None,
            }]
        );
        let st = Status::from_value(&cs[0].statuses()[0]);
        assert_eq!(st.status.as_deref(), Some("read"));
        assert_eq!(st.errors[0].code.as_deref(), Some("131049"));
        assert_eq!(st.errors[0].details.as_deref(), Some("d"));
        assert_eq!(cs[0].errors()[0].code.as_deref(), Some("130429"));
        assert_eq!(cs[2].value, &Value::Null);
        assert_eq!(field_label(Some("account_update")), "account_update");
        assert_eq!(field_label(Some("made_up")), "other");
    }
}
