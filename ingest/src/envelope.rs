//! The cheap look at a signed body that ingest needs before storing it: is it
//! a webhook envelope at all, and where does it route (config, lane)? Deep
//! parsing is the parse worker's job.

use serde_json::Value;

/// Deeper than any payload Meta sends (about 8 levels); a bound keeps a
/// hostile body from costing stack or time.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    NotUtf8,
    NotJson(String),
    NotObject,
    TooDeep,
}

impl Invalid {
    /// The short reason given in the 400 answer and stored on the event.
    pub fn reason(&self) -> String {
        match self {
            Invalid::NotUtf8 => "body is not valid UTF-8".into(),
            Invalid::NotJson(e) => format!("body is not valid JSON: {e}"),
            Invalid::NotObject => "body is not a JSON object".into(),
            Invalid::TooDeep => format!("body is nested deeper than {MAX_DEPTH} levels"),
        }
    }
}

/// What ingest keeps from the envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub object: Option<String>,
    pub field: Option<String>,
    pub waba_id: Option<String>,
    pub phone_number_id: Option<String>,
    /// The first customer the body is about, for the ordered lane.
    pub customer: Option<String>,
}

impl Routing {
    /// Jobs of one (number, customer) share a lane so they run in order.
    pub fn lane_key(&self, fallback: &str) -> String {
        match (&self.phone_number_id, &self.customer) {
            (Some(p), Some(c)) => wapipe_shared::jobs::lane_key(p, c),
            (Some(p), None) => wapipe_shared::jobs::lane_key(p, fallback),
            _ => fallback.to_owned(),
        }
    }
}

/// Nesting depth of a JSON text without parsing it, skipping strings.
fn depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

pub fn inspect(body: &[u8]) -> Result<Routing, Invalid> {
    if std::str::from_utf8(body).is_err() {
        return Err(Invalid::NotUtf8);
    }
    if depth_exceeds(body, MAX_DEPTH) {
        return Err(Invalid::TooDeep);
    }
    let v =
        wapipe_shared::whatsapp::parse_body(body).map_err(|e| Invalid::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(Invalid::NotObject);
    }
    let mut r = Routing {
        object: v.get("object").and_then(Value::as_str).map(str::to_owned),
        ..Routing::default()
    };
    let entry = v
        .get("entry")
        .and_then(Value::as_array)
        .and_then(|e| e.first());
    if let Some(entry) = entry {
        r.waba_id = str_at(entry, &["id"]).map(str::to_owned);
        let change = entry
            .get("changes")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        if let Some(change) = change {
            r.field = str_at(change, &["field"]).map(str::to_owned);
            if let Some(value) = change.get("value") {
                r.phone_number_id =
                    str_at(value, &["metadata", "phone_number_id"]).map(str::to_owned);
                // wa_id can be empty for users with a username: fall back to user_id.
                let first = |k: &str| {
                    value
                        .get(k)
                        .and_then(Value::as_array)
                        .and_then(|a| a.first())
                };
                r.customer = first("contacts")
                    .and_then(|c| str_at(c, &["wa_id"]).or_else(|| str_at(c, &["user_id"])))
                    .or_else(|| first("messages").and_then(|m| str_at(m, &["from"])))
                    .or_else(|| {
                        first("statuses").and_then(|s| {
                            str_at(s, &["recipient_id"])
                                .or_else(|| str_at(s, &["recipient_user_id"]))
                        })
                    })
                    .map(str::to_owned);
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_a_message() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"102","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1555","phone_number_id":"106"},"contacts":[{"profile":{"name":"A"},"wa_id":"4917"}],"messages":[{"from":"4917","id":"wamid.X","timestamp":"1","type":"text","text":{"body":"hi"}}]}}]}]}"#;
        let r = inspect(body).unwrap();
        assert_eq!(r.phone_number_id.as_deref(), Some("106"));
        assert_eq!(r.waba_id.as_deref(), Some("102"));
        assert_eq!(r.field.as_deref(), Some("messages"));
        assert_eq!(r.customer.as_deref(), Some("4917"));
        assert_eq!(r.lane_key("e"), "106:4917");
    }

    #[test]
    fn username_users_fall_back_to_user_id() {
        let body = br#"{"object":"x","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"9"},"contacts":[{"wa_id":"","user_id":"US.123"}]}}]}]}"#;
        assert_eq!(inspect(body).unwrap().customer.as_deref(), Some("US.123"));
    }

    #[test]
    fn rejects_bad_envelopes() {
        assert_eq!(inspect(&[0xff, 0xfe]), Err(Invalid::NotUtf8));
        assert!(matches!(inspect(b"{\"a\":"), Err(Invalid::NotJson(_))));
        assert_eq!(inspect(b"[1,2]"), Err(Invalid::NotObject));
        assert_eq!(inspect(b"\"s\""), Err(Invalid::NotObject));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(inspect(deep.as_bytes()), Err(Invalid::TooDeep));
        // Brackets inside strings do not count.
        let s = format!("{{\"a\":\"{}\"}}", "[".repeat(100));
        assert!(inspect(s.as_bytes()).is_ok());
    }

    #[test]
    fn wrong_types_inside_still_route_what_they_can() {
        let r = inspect(br#"{"object":1,"entry":"nope"}"#).unwrap();
        assert_eq!(r, Routing::default());
    }
}
