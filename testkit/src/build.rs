//! Builders of what Meta posts (webhook envelopes, messages, statuses) and
//! the JSON fixtures of `testkit/fixtures/`.

use serde_json::{Value, json};

/// The config `TestApp` registers (the ids of Meta's own examples).
pub const PHONE_NUMBER_ID: &str = "106540352242922";
pub const WABA_ID: &str = "102290129340398";

/// The config the worker `Env` registers, and its usual customer.
pub const PHONE: &str = "15550000001";
pub const WABA: &str = "15550009999";
pub const CUSTOMER: &str = "4915112345678";

/// A signed-ready webhook body for `TestApp`'s config: one inbound text
/// message from `customer`, its wamid made unique by `tag`.
pub fn text_webhook(tag: &str, customer: &str, text: &str) -> Vec<u8> {
    text_webhook_at(tag, customer, "Test User", text, 1_730_231_903)
}

/// [`text_webhook`] from a customer named `name`, sent at `ts` (Unix
/// seconds): a recent `ts` opens the 24-hour window for free-form replies.
pub fn text_webhook_at(tag: &str, customer: &str, name: &str, text: &str, ts: i64) -> Vec<u8> {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
                    "contacts": [{"profile": {"name": name}, "wa_id": customer}],
                    "messages": [{
                        "from": customer,
                        "id": format!("wamid.{tag}"),
                        "timestamp": ts.to_string(),
                        "type": "text",
                        "text": {"body": text}
                    }]
                }
            }]
        }]
    })
    .to_string()
    .into_bytes()
}

/// A fixture of `testkit/fixtures/`; panics naming the file when it is
/// missing or not JSON.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An envelope with one `messages` change for the worker env's number.
pub fn envelope(value: Value) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [
        {"field": "messages", "value": value}]}]})
}

/// An envelope with one change of `field` for `waba`, sent at Unix time
/// `time` (`entry[].time`), as Meta sends account, template and preference
/// updates.
pub fn field_event(waba: &str, time: i64, field: &str, value: Value) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": time, "changes": [
        {"field": field, "value": value}]}]})
}

/// The `value` of a `messages` change for the worker env's number.
pub fn messages_value(contacts: Value, messages: Value) -> Value {
    json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
        "contacts": contacts, "messages": messages})
}

/// A text message from `from`, as Meta sends it.
pub fn text_msg(id: &str, from: &str, ts: i64, body: &str) -> Value {
    json!({"from": from, "id": id, "timestamp": ts.to_string(), "type": "text", "text": {"body": body}})
}

/// A whole webhook with one text message from `from` (named Erika).
pub fn text_event(id: &str, from: &str, ts: i64, body: &str) -> Value {
    envelope(messages_value(
        json!([{"profile": {"name": "Erika"}, "wa_id": from}]),
        json!([text_msg(id, from, ts, body)]),
    ))
}

/// A whole webhook with one status of `wamid`.
pub fn status_event(wamid: &str, status: &str, ts: i64, recipient: &str) -> Value {
    envelope(json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": PHONE, "phone_number_id": PHONE},
        "statuses": [{"id": wamid, "status": status, "timestamp": ts.to_string(), "recipient_id": recipient}]}))
}
