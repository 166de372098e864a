//! The pure half of the parse worker: one raw `messages[]` object in, the
//! columns of its `messages` row out (plus what it does to another message:
//! a reaction, an edit or a revoke). No I/O, never panics, whatever the
//! JSON: the property tests throw arbitrary values at [`extract_message`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use wapipe_shared::crypto::sha256_hex;
use wapipe_shared::whatsapp::{
    INTERACTIVE_TYPES, MESSAGE_TYPES, id_at, lenient_bool, lenient_string, meta_timestamp, str_at,
    without_nul,
};

/// Media message types: their object becomes the `media` column.
const MEDIA_TYPES: &[&str] = &["image", "video", "audio", "document", "sticker"];

/// Something Meta sent that we do not know, for `wapipe_parse_unknown_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// A `type` outside [`MESSAGE_TYPES`].
    MessageType,
    /// No `type` at all (it was inferred from the keys present).
    MissingType,
    /// An `interactive.type` outside [`INTERACTIVE_TYPES`], or no interactive object.
    InteractiveType,
    /// A message without an `id`: it gets a stable synthetic one.
    MissingId,
}

impl Unknown {
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::MessageType => "message_type",
            Unknown::MissingType => "missing_type",
            Unknown::InteractiveType => "interactive_type",
            Unknown::MissingId => "missing_id",
        }
    }
}

/// What a message does to an earlier one (its target, by wamid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Set (or, with no emoji, remove) the sender's reaction on the target.
    React {
        target: String,
        emoji: Option<String>,
    },
    /// Replace the target's text, keeping the old one in `edit_history`.
    Edit {
        target: String,
        text: Option<String>,
    },
    /// The sender deleted the target for everyone.
    Revoke { target: String },
}

impl Effect {
    pub fn target(&self) -> &str {
        match self {
            Effect::React { target, .. }
            | Effect::Edit { target, .. }
            | Effect::Revoke { target } => target,
        }
    }
}

/// The columns of one inbound message. JSON values and strings are already
/// safe to store: NUL characters (which PostgreSQL refuses in text and
/// jsonb) are removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// Meta's wamid, or `wapipe:<sha256 of the message>` when Meta sent
    /// none, so a replay still finds the same row.
    pub provider_message_id: String,
    /// `from`: the sender's wa_id (may be absent for username users).
    pub from: Option<String>,
    /// `from_user_id`: the sender's business-scoped user id, if given.
    pub from_user_id: Option<String>,
    /// `group_id`: the WhatsApp group it was written in (Meta's Groups
    /// API); `from` is then the member who wrote it.
    pub group_id: Option<String>,
    /// Meta's `type` as sent (inferred from the keys when missing).
    pub kind: String,
    pub text: Option<String>,
    pub media: Option<Value>,
    pub location: Option<Value>,
    pub contacts: Option<Value>,
    pub interactive: Option<Value>,
    pub reaction: Option<Value>,
    pub context: Option<Value>,
    pub reply_to: Option<String>,
    pub is_forwarded: bool,
    pub referral: Option<Value>,
    pub errors: Option<Value>,
    pub timestamp: Option<DateTime<Utc>>,
    /// The raw message object, always kept.
    pub payload: Value,
    pub effect: Option<Effect>,
    pub unknown: Vec<Unknown>,
}

impl Inbound {
    /// Whether the message shows in the chat list as a message of its own
    /// (bumps `unread_count` and `last_message`). Reactions, edits and
    /// revokes change another message instead.
    pub fn is_visible(&self) -> bool {
        !matches!(self.kind.as_str(), "reaction" | "edit" | "revoke")
    }

    /// The chat list's `last_message`: the text, or `[type]` for messages
    /// without one.
    pub fn preview(&self) -> String {
        match &self.text {
            Some(t) if !t.is_empty() => t.clone(),
            _ => format!("[{}]", self.kind),
        }
    }
}

/// A string without NUL characters (PostgreSQL cannot store them).
pub fn clean_str(s: &str) -> String {
    without_nul(s)
}

/// A JSON value without NUL characters in any string or key.
pub fn clean_json(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(clean_str(s)),
        Value::Array(items) => Value::Array(items.iter().map(clean_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (clean_str(k), clean_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn text_at(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(clean_str)
}

/// An object with the listed keys of `src` that are present (cleaned).
fn pick(src: &Value, keys: &[&str]) -> Value {
    let mut out = Map::new();
    for k in keys {
        if let Some(v) = src.get(*k).filter(|v| !v.is_null()) {
            out.insert((*k).to_owned(), clean_json(v));
        }
    }
    Value::Object(out)
}

fn object(v: Option<&Value>) -> Option<&Value> {
    v.filter(|x| x.is_object())
}

/// The `type` of a message without one: the first known type whose object
/// is present (`{"location": {...}}` is a location).
fn infer_type(m: &Value) -> Option<&'static str> {
    MESSAGE_TYPES
        .iter()
        .copied()
        .filter(|t| !matches!(*t, "unknown" | "unsupported"))
        .find(|t| m.get(*t).is_some_and(|v| v.is_object() || v.is_array()))
}

/// `type` as a non-empty string without NULs (a number or list is no type).
fn lenient_type(m: &Value) -> Option<String> {
    m.get("type")
        .and_then(Value::as_str)
        .map(clean_str)
        .filter(|t| !t.is_empty())
}

/// Turns one `messages[]` item into its row. Anything, even a non-object,
/// yields a row: the raw JSON is kept in `payload` and oddities are listed
/// in `unknown`.
pub fn extract_message(m: &Value) -> Inbound {
    let mut unknown = Vec::new();
    let kind = match lenient_type(m) {
        Some(t) => {
            if !MESSAGE_TYPES.contains(&t.as_str()) {
                unknown.push(Unknown::MessageType);
            }
            t
        }
        None => {
            unknown.push(Unknown::MissingType);
            infer_type(m).unwrap_or("unknown").to_owned()
        }
    };
    let provider_message_id = match id_at(m.get("id")) {
        Some(id) => id,
        None => {
            unknown.push(Unknown::MissingId);
            // serde_json's maps are sorted, so the bytes (and the id) are
            // the same each time the event is processed.
            let bytes = serde_json::to_vec(m).unwrap_or_default();
            format!("wapipe:{}", sha256_hex(&bytes))
        }
    };
    let context = object(m.get("context"));
    let mut out = Inbound {
        provider_message_id,
        from: id_at(m.get("from")),
        from_user_id: id_at(m.get("from_user_id")),
        group_id: id_at(m.get("group_id")),
        kind,
        text: None,
        media: None,
        location: None,
        contacts: None,
        interactive: None,
        reaction: None,
        context: context.map(clean_json),
        reply_to: context.and_then(|c| id_at(c.get("id"))),
        is_forwarded: context.is_some_and(|c| {
            lenient_bool(c.get("forwarded")) || lenient_bool(c.get("frequently_forwarded"))
        }),
        referral: object(m.get("referral")).map(clean_json),
        errors: m
            .get("errors")
            .filter(|e| e.is_array() || e.is_object())
            .map(clean_json),
        timestamp: meta_timestamp(m.get("timestamp")),
        payload: clean_json(m),
        effect: None,
        unknown,
    };
    fill_content(&mut out, m);
    out
}

/// The per-type columns.
fn fill_content(out: &mut Inbound, m: &Value) {
    let kind = out.kind.clone();
    let body = m.get(kind.as_str());
    match kind.as_str() {
        "text" => out.text = body.and_then(|b| text_at(b, "body")),
        k if MEDIA_TYPES.contains(&k) => {
            if let Some(b) = object(body) {
                out.media = Some(media_of(b));
                out.text = text_at(b, "caption");
            }
        }
        "location" => out.location = object(body).map(clean_json),
        "contacts" => out.contacts = body.filter(|b| b.is_array()).map(clean_json),
        "interactive" => interactive(out, body),
        "button" => {
            if let Some(b) = object(body) {
                let mut i = pick(b, &["payload", "text"]);
                if let Value::Object(map) = &mut i {
                    map.insert("type".into(), json!("button"));
                }
                out.interactive = Some(i);
                out.text = text_at(b, "text");
            }
        }
        "reaction" => {
            if let Some(b) = object(body) {
                out.reaction = Some(pick(b, &["message_id", "emoji"]));
                if let Some(target) = id_at(b.get("message_id")) {
                    out.effect = Some(Effect::React {
                        target,
                        emoji: text_at(b, "emoji").filter(|e| !e.is_empty()),
                    });
                }
            }
        }
        "order" | "system" => {
            out.text = body.and_then(|b| text_at(b, if kind == "order" { "text" } else { "body" }))
        }
        "edit" => {
            if let Some(b) = object(body) {
                // The new version is a message object of its own; its text
                // (or caption) replaces the target's.
                let inner = b.get("message").map(|inner| {
                    let mut x = extract_message(inner);
                    x.unknown.clear();
                    x
                });
                out.text = inner.as_ref().and_then(|x| x.text.clone());
                out.media = inner.as_ref().and_then(|x| x.media.clone());
                if let Some(target) = id_at(b.get("original_message_id")) {
                    out.effect = Some(Effect::Edit {
                        target,
                        text: out.text.clone(),
                    });
                }
            }
        }
        "revoke" => {
            if let Some(target) = body.and_then(|b| id_at(b.get("original_message_id"))) {
                out.effect = Some(Effect::Revoke { target });
            }
        }
        // unsupported, unknown, request_welcome and types nobody has seen:
        // the payload (and `errors`) say it all.
        _ => {}
    }
}

fn media_of(b: &Value) -> Value {
    let mut media = pick(
        b,
        &["mime_type", "sha256", "caption", "filename", "url", "link"],
    );
    if let Value::Object(map) = &mut media {
        if let Some(id) = lenient_string(b.get("id")) {
            map.insert("id".into(), Value::String(clean_str(&id)));
        }
        for flag in ["voice", "animated"] {
            if b.get(flag).is_some() {
                map.insert(flag.into(), Value::Bool(lenient_bool(b.get(flag))));
            }
        }
    }
    media
}

fn interactive(out: &mut Inbound, body: Option<&Value>) {
    let Some(i) = object(body) else {
        // Meta sends this with a value-level error (131000) when it could
        // not build the payload.
        out.unknown.push(Unknown::InteractiveType);
        return;
    };
    let itype = str_at(i, "type").unwrap_or_default();
    if !INTERACTIVE_TYPES.contains(&itype) {
        out.unknown.push(Unknown::InteractiveType);
        out.interactive = Some(clean_json(i));
        return;
    }
    let reply = i
        .get(itype)
        .filter(|r| r.is_object())
        .unwrap_or(&Value::Null);
    let mut fields = match itype {
        "nfm_reply" => {
            let mut f = pick(reply, &["name", "body"]);
            if let Value::Object(map) = &mut f {
                // Flows answer with a JSON document in a string; keep it
                // parsed so scenarios can read the fields.
                let response = match reply.get("response_json") {
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                        .map(|v| clean_json(&v))
                        .unwrap_or_else(|_| Value::String(clean_str(s))),
                    Some(other) => clean_json(other),
                    None => Value::Null,
                };
                if let Some(token) = response.get("flow_token").cloned() {
                    map.insert("flow_token".into(), token);
                }
                map.insert("response_json".into(), response);
            }
            out.text = text_at(reply, "body");
            f
        }
        _ => {
            let mut f = pick(reply, &["title", "description"]);
            if let (Value::Object(map), Some(id)) = (&mut f, lenient_string(reply.get("id"))) {
                map.insert("id".into(), Value::String(clean_str(&id)));
            }
            out.text = text_at(reply, "title");
            f
        }
    };
    if let Value::Object(map) = &mut fields {
        map.insert("type".into(), Value::String(itype.to_owned()));
    }
    out.interactive = Some(fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_an_id_never_merges_two_ids() {
        let a = extract_message(
            &json!({"from":"336\u{0}1","id":"wamid.a\u{0}","type":"text","text":{"body":"x"}}),
        );
        let b = extract_message(
            &json!({"from":"3361","id":"wamid.a","type":"text","text":{"body":"x"}}),
        );
        assert_ne!(a.from, b.from);
        assert_ne!(a.provider_message_id, b.provider_message_id);
        let from = a.from.expect("an id");
        assert!(from.starts_with("wapipe:nul:"), "{from}");
        assert!(!from.contains('\0'));
        // The same on every replay.
        let again = extract_message(
            &json!({"from":"336\u{0}1","id":"wamid.a\u{0}","type":"text","text":{"body":"x"}}),
        );
        assert_eq!(again.from.as_deref(), Some(from.as_str()));
    }

    #[test]
    fn text_with_referral_and_context() {
        let m = json!({"from":"491","id":"wamid.1","timestamp":1700000000,"type":"text",
            "text":{"body":"hi\u{0}there"},
            "referral":{"source_type":"ad"},
            "context":{"id":"wamid.0","forwarded":true}});
        let x = extract_message(&m);
        assert_eq!(x.kind, "text");
        assert_eq!(x.text.as_deref(), Some("hithere"));
        assert_eq!(x.reply_to.as_deref(), Some("wamid.0"));
        assert!(x.is_forwarded);
        assert!(x.referral.is_some());
        assert!(x.timestamp.is_some());
        assert!(x.unknown.is_empty());
        assert!(!x.payload.to_string().contains("\\u0000"));
    }

    #[test]
    fn missing_id_is_stable_and_missing_type_inferred() {
        let m = json!({"from":"1","location":{"latitude":1.5}});
        let a = extract_message(&m);
        let b = extract_message(&m);
        assert_eq!(a.provider_message_id, b.provider_message_id);
        assert!(a.provider_message_id.starts_with("wapipe:"));
        assert_eq!(a.kind, "location");
        assert_eq!(a.unknown, vec![Unknown::MissingType, Unknown::MissingId]);
    }

    #[test]
    fn non_objects_still_yield_a_row() {
        for v in [json!(null), json!(3), json!("s"), json!([1, 2])] {
            let x = extract_message(&v);
            assert_eq!(x.kind, "unknown");
            assert_eq!(x.payload, v);
        }
    }

    #[test]
    fn interactive_replies() {
        let nfm = json!({"id":"w","type":"interactive","interactive":{"type":"nfm_reply",
            "nfm_reply":{"response_json":"{\"flow_token\":\"T\",\"a\":1}","body":"Sent","name":"flow"}}});
        let x = extract_message(&nfm);
        let i = x.interactive.expect("interactive");
        assert_eq!(i["response_json"]["a"], 1);
        assert_eq!(i["flow_token"], "T");
        assert_eq!(x.text.as_deref(), Some("Sent"));

        let list = json!({"id":"w","type":"interactive","interactive":{"type":"list_reply",
            "list_reply":{"id":7,"title":"T","description":"D"}}});
        let x = extract_message(&list);
        assert_eq!(
            x.interactive,
            Some(json!({"type":"list_reply","id":"7","title":"T","description":"D"}))
        );
        assert_eq!(x.text.as_deref(), Some("T"));
    }

    #[test]
    fn effects() {
        let r = json!({"id":"w","type":"reaction","reaction":{"message_id":"t","emoji":""}});
        assert_eq!(
            extract_message(&r).effect,
            Some(Effect::React {
                target: "t".into(),
                emoji: None
            })
        );
        let e = json!({"id":"w","type":"edit","edit":{"original_message_id":"t",
            "message":{"type":"image","image":{"caption":"new","id":5}}}});
        let x = extract_message(&e);
        assert_eq!(
            x.effect,
            Some(Effect::Edit {
                target: "t".into(),
                text: Some("new".into())
            })
        );
        assert_eq!(x.media.as_ref().map(|m| m["id"].clone()), Some(json!("5")));
        assert!(!x.is_visible());
    }
}
