//! WhatsApp Cloud API webhook envelopes, written here from Meta's documented shapes: the load mix and the builders the fake Graph API uses for status callbacks.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The business side of a webhook: which WABA and number it is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Business {
    pub waba_id: String,
    pub phone_number_id: String,
    pub display_phone_number: String,
}

pub const DEFAULT_WABA_ID: &str = "102290129340001";
pub const DEFAULT_PHONE_NUMBER_ID: &str = "106540352240001";
pub const DEFAULT_DISPLAY_PHONE_NUMBER: &str = "15550001111";

impl Default for Business {
    fn default() -> Self {
        Self {
            waba_id: DEFAULT_WABA_ID.into(),
            phone_number_id: DEFAULT_PHONE_NUMBER_ID.into(),
            display_phone_number: DEFAULT_DISPLAY_PHONE_NUMBER.into(),
        }
    }
}

/// What one generated body holds, so the load report can count inbound
/// messages and tests can check the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum PayloadKind {
    Text,
    Image,
    Audio,
    Document,
    Location,
    ButtonReply,
    Reaction,
    Status,
}

impl PayloadKind {
    pub const ALL: [PayloadKind; 8] = [
        PayloadKind::Text,
        PayloadKind::Image,
        PayloadKind::Audio,
        PayloadKind::Document,
        PayloadKind::Location,
        PayloadKind::ButtonReply,
        PayloadKind::Reaction,
        PayloadKind::Status,
    ];

    /// Share of the load mix, in percent. Text dominates, as in real
    /// customer-service traffic; statuses are the second biggest stream.
    fn weight(self) -> u32 {
        match self {
            PayloadKind::Text => 60,
            PayloadKind::Image => 6,
            PayloadKind::Audio => 4,
            PayloadKind::Document => 3,
            PayloadKind::Location => 2,
            PayloadKind::ButtonReply => 4,
            PayloadKind::Reaction => 3,
            PayloadKind::Status => 18,
        }
    }
}

/// One generated webhook body.
#[derive(Debug, Clone)]
pub struct Payload {
    pub body: Vec<u8>,
    pub kind: PayloadKind,
    /// Entries of `messages[]` in the body (0 for status webhooks).
    pub inbound_messages: u32,
}

/// Process-wide source of unique ids. The nonce keeps ids of two runs
/// against the same database apart, since wapipe deduplicates on wamids.
struct IdSource {
    nonce: u64,
    seq: AtomicU64,
}

fn ids() -> &'static IdSource {
    static IDS: OnceLock<IdSource> = OnceLock::new();
    IDS.get_or_init(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        IdSource {
            nonce: t ^ rand::random::<u64>().rotate_left(17),
            seq: AtomicU64::new(1),
        }
    })
}

/// A wamid never handed out before by this process (nor, with overwhelming
/// likelihood, by an earlier run).
pub fn unique_wamid() -> String {
    let ids = ids();
    let seq = ids.seq.fetch_add(1, Ordering::Relaxed);
    format!("wamid.HBgLSIM{:016X}{:010X}", ids.nonce, seq)
}

/// A numeric media id, shaped like Meta's.
pub fn unique_media_id() -> String {
    let ids = ids();
    let seq = ids.seq.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}{:010}",
        10_000 + (ids.nonce % 90_000),
        seq % 10_000_000_000
    )
}

/// Meta's timestamps: unix seconds as a string.
pub fn now_timestamp() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
}

/// `{"object":"whatsapp_business_account","entry":[{"id":WABA,"changes":[{"field":"messages","value":VALUE}]}]}`.
pub fn envelope(waba_id: &str, value: Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": waba_id,
            "changes": [{ "field": "messages", "value": value }]
        }]
    })
}

fn metadata(b: &Business) -> Value {
    json!({
        "display_phone_number": b.display_phone_number,
        "phone_number_id": b.phone_number_id,
    })
}

/// An envelope carrying inbound `messages` from one customer.
pub fn messages_envelope(b: &Business, customer: &Customer, messages: Vec<Value>) -> Value {
    envelope(
        &b.waba_id,
        json!({
            "messaging_product": "whatsapp",
            "metadata": metadata(b),
            "contacts": [{ "profile": { "name": customer.name }, "wa_id": customer.wa_id }],
            "messages": messages,
        }),
    )
}

/// An envelope carrying `statuses`.
pub fn statuses_envelope(b: &Business, statuses: Vec<Value>) -> Value {
    envelope(
        &b.waba_id,
        json!({
            "messaging_product": "whatsapp",
            "metadata": metadata(b),
            "statuses": statuses,
        }),
    )
}

/// One status receipt. Like Meta, `sent` and `delivered` carry the
/// conversation and pricing blocks and `read` does not.
pub fn status(wamid: &str, status: &str, recipient_id: &str, category: &str) -> Value {
    let ts = now_timestamp();
    let mut s = json!({
        "id": wamid,
        "status": status,
        "timestamp": ts,
        "recipient_id": recipient_id,
    });
    if status == "sent" || status == "delivered" {
        let expires = ts.parse::<u64>().unwrap_or(0) + 86_400;
        s["conversation"] = json!({
            "id": conversation_id(recipient_id),
            "expiration_timestamp": expires.to_string(),
            "origin": { "type": category },
        });
        s["pricing"] = json!({
            "billable": category != "service",
            "pricing_model": "PMP",
            "type": if category == "service" { "free_customer_service" } else { "regular" },
            "category": category,
        });
    }
    s
}

/// A `failed` receipt with Meta's error block.
pub fn failed_status(wamid: &str, recipient_id: &str, code: i64, title: &str) -> Value {
    json!({
        "id": wamid,
        "status": "failed",
        "timestamp": now_timestamp(),
        "recipient_id": recipient_id,
        "errors": [{
            "code": code,
            "title": title,
            "message": title,
            "error_data": { "details": title },
        }],
    })
}

/// Stable per recipient, like Meta's conversation ids within a window.
fn conversation_id(recipient_id: &str) -> String {
    let h = recipient_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}{:016x}", h.rotate_left(29))
}

/// A customer of the business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub wa_id: String,
    pub name: String,
}

const FIRST_NAMES: &[&str] = &[
    "Anna", "José", "Mohammed", "Priya", "Lukas", "Zoë", "Chen", "Fatima", "Olu", "Sofía",
    "Hiroshi", "Amélie", "Ivan", "Thandiwe", "Mateus", "Aylin", "Noah", "Ngozi", "Björn", "Mei",
];
const LAST_NAMES: &[&str] = &[
    "Müller", "Silva", "Khan", "Sharma", "Schmidt", "García", "Wang", "Okafor", "Dubois", "Rossi",
    "Tanaka", "Kowalski", "Yılmaz", "Nguyen", "Santos", "Ivanova", "O'Brien", "Mensah",
];
/// Country prefixes of mobile numbers; the numbers are otherwise made up.
const PREFIXES: &[&str] = &["49151", "5511", "91987", "1555", "33612", "234803", "4479"];

/// Customer number `i` (stable for a given `i`).
pub fn customer(i: usize) -> Customer {
    let prefix = PREFIXES[i % PREFIXES.len()];
    let width = 13usize.saturating_sub(prefix.len());
    let first = FIRST_NAMES[i % FIRST_NAMES.len()];
    let last = LAST_NAMES[(i / FIRST_NAMES.len()) % LAST_NAMES.len()];
    Customer {
        wa_id: format!("{prefix}{i:0width$}"),
        name: format!("{first} {last}"),
    }
}

const TEXTS: &[&str] = &[
    "Hi",
    "Hello, is anyone there?",
    "menu",
    "price",
    "What are your opening hours?",
    "I want to order 2 large pizzas 🍕",
    "Where is my order #48213? It was supposed to arrive yesterday.",
    "Bonjour, vous êtes ouverts demain ?",
    "¿Tienen envío gratis a Madrid?",
    "Obrigado! 🙏",
    "Kann ich den Termin auf Freitag verschieben?",
    "help",
    "STOP",
    "ok",
    "Thanks, that worked 👍",
    "Can I talk to a human please",
    "My invoice shows the wrong address. It should be 12 Baker Street, London NW1 6XE. \
     Could you send a corrected one? I need it for my accounts before the end of the month.",
    "नमस्ते, मुझे मदद चाहिए",
    "こんにちは、予約できますか？",
    "yes",
];

const CAPTIONS: &[&str] = &[
    "",
    "Here is the broken part",
    "receipt",
    "Is this the right one?",
];
const REACTIONS: &[&str] = &["👍", "❤️", "😂", "🙏", ""];

/// Generates a realistic mix of webhook bodies. Each generator has its own
/// RNG; all share the process-wide id source, so bodies are unique across
/// generators.
pub struct PayloadGen {
    business: Business,
    customers: usize,
    /// Messages in every message body; 1 keeps Meta's usual one (with the
    /// occasional pair).
    messages_per_body: u32,
    /// The kinds drawn (by their weights); empty: the whole mix.
    kinds: Vec<PayloadKind>,
    rng: StdRng,
}

impl PayloadGen {
    pub fn new(business: Business, customers: usize) -> Self {
        Self {
            business,
            customers: customers.max(1),
            messages_per_body: 1,
            kinds: Vec::new(),
            rng: StdRng::from_os_rng(),
        }
    }

    /// A deterministic mix (ids and timestamps still vary).
    pub fn with_seed(business: Business, customers: usize, seed: u64) -> Self {
        Self {
            business,
            customers: customers.max(1),
            messages_per_body: 1,
            kinds: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Every message body carries `n` messages of one customer (a burst
    /// Meta delivers in one POST), each of a kind drawn from the mix.
    pub fn with_messages_per_body(mut self, n: u32) -> Self {
        self.messages_per_body = n.max(1);
        self
    }

    /// Draws only these kinds, by their weights among themselves (a
    /// benchmark that wants inbound text only, say). Empty: the whole mix.
    pub fn with_kinds(mut self, kinds: &[PayloadKind]) -> Self {
        self.kinds = kinds.to_vec();
        self
    }

    pub fn business(&self) -> &Business {
        &self.business
    }

    /// Picks a kind by the weights of the mix.
    pub fn pick_kind(&mut self) -> PayloadKind {
        let kinds: &[PayloadKind] = if self.kinds.is_empty() {
            &PayloadKind::ALL
        } else {
            &self.kinds
        };
        let total: u32 = kinds.iter().map(|k| k.weight()).sum();
        let mut roll = self.rng.random_range(0..total.max(1));
        for &k in kinds {
            if roll < k.weight() {
                return k;
            }
            roll -= k.weight();
        }
        PayloadKind::Text
    }

    pub fn next_payload(&mut self) -> Payload {
        let kind = self.pick_kind();
        self.payload_of(kind)
    }

    pub fn payload_of(&mut self, kind: PayloadKind) -> Payload {
        let (value, inbound) = self.value_of(kind);
        // Serializing a `Value` we built ourselves cannot fail.
        let body = serde_json::to_vec(&value).unwrap_or_default();
        Payload {
            body,
            kind,
            inbound_messages: inbound,
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn value_of(&mut self, kind: PayloadKind) -> (Value, u32) {
        let customer = customer(self.rng.random_range(0..self.customers));
        if kind == PayloadKind::Status {
            // Meta batches receipts; a fifth of the bodies carry several.
            let n = if self.rng.random_bool(0.2) {
                self.rng.random_range(2..=4)
            } else {
                1
            };
            let statuses = (0..n)
                .map(|_| {
                    let c = customer_for(self, &customer);
                    let roll = self.rng.random_range(0..100);
                    match roll {
                        0..=1 => failed_status(
                            &unique_wamid(),
                            &c.wa_id,
                            131026,
                            "Message undeliverable",
                        ),
                        2..=35 => status(&unique_wamid(), "sent", &c.wa_id, "service"),
                        36..=70 => status(&unique_wamid(), "delivered", &c.wa_id, "service"),
                        _ => status(&unique_wamid(), "read", &c.wa_id, "service"),
                    }
                })
                .collect();
            return (statuses_envelope(&self.business, statuses), 0);
        }
        let (n, messages) = if self.messages_per_body > 1 {
            let n = self.messages_per_body;
            let messages = (0..n)
                .map(|i| {
                    let mut k = if i == 0 { kind } else { self.pick_kind() };
                    if k == PayloadKind::Status {
                        k = PayloadKind::Text;
                    }
                    self.message(k, &customer.wa_id)
                })
                .collect();
            (n, messages)
        } else {
            // A few text bodies hold two messages typed in quick succession.
            let n = if kind == PayloadKind::Text && self.rng.random_bool(0.05) {
                2
            } else {
                1
            };
            let messages = (0..n)
                .map(|_| self.message(kind, &customer.wa_id))
                .collect();
            (n, messages)
        };
        (messages_envelope(&self.business, &customer, messages), n)
    }

    fn message(&mut self, kind: PayloadKind, from: &str) -> Value {
        let mut m = json!({
            "from": from,
            "id": unique_wamid(),
            "timestamp": now_timestamp(),
        });
        match kind {
            PayloadKind::Text | PayloadKind::Status => {
                m["type"] = "text".into();
                m["text"] = json!({ "body": self.pick(TEXTS) });
            }
            PayloadKind::Image => {
                m["type"] = "image".into();
                let mut image = json!({
                    "mime_type": "image/jpeg",
                    "sha256": self.fake_sha256(),
                    "id": unique_media_id(),
                });
                let caption = self.pick(CAPTIONS);
                if !caption.is_empty() {
                    image["caption"] = caption.into();
                }
                m["image"] = image;
            }
            PayloadKind::Audio => {
                m["type"] = "audio".into();
                m["audio"] = json!({
                    "mime_type": "audio/ogg; codecs=opus",
                    "sha256": self.fake_sha256(),
                    "id": unique_media_id(),
                    "voice": true,
                });
            }
            PayloadKind::Document => {
                m["type"] = "document".into();
                m["document"] = json!({
                    "filename": "invoice-2024-117.pdf",
                    "mime_type": "application/pdf",
                    "sha256": self.fake_sha256(),
                    "id": unique_media_id(),
                });
            }
            PayloadKind::Location => {
                m["type"] = "location".into();
                let lat = 52.52 + self.rng.random_range(-0.05..0.05);
                let lon = 13.405 + self.rng.random_range(-0.05..0.05);
                m["location"] = json!({
                    "latitude": lat,
                    "longitude": lon,
                    "name": "Pickup point",
                    "address": "Alexanderplatz 1, 10178 Berlin",
                });
            }
            PayloadKind::ButtonReply => {
                m["type"] = "interactive".into();
                m["context"] = json!({
                    "from": self.business.display_phone_number,
                    "id": unique_wamid(),
                });
                let (id, title) = if self.rng.random_bool(0.5) {
                    ("btn_yes", "Yes, confirm")
                } else {
                    ("btn_later", "Remind me later")
                };
                m["interactive"] = json!({
                    "type": "button_reply",
                    "button_reply": { "id": id, "title": title },
                });
            }
            PayloadKind::Reaction => {
                m["type"] = "reaction".into();
                m["reaction"] = json!({
                    "message_id": unique_wamid(),
                    "emoji": self.pick(REACTIONS),
                });
            }
        }
        m
    }

    fn fake_sha256(&mut self) -> String {
        let bytes: [u8; 32] = self.rng.random();
        hex::encode(bytes)
    }
}

/// Statuses in one batch usually go to different customers.
fn customer_for(g: &mut PayloadGen, first: &Customer) -> Customer {
    if g.rng.random_bool(0.5) {
        first.clone()
    } else {
        customer(g.rng.random_range(0..g.customers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn mix_is_valid_and_unique() {
        let mut g = PayloadGen::with_seed(Business::default(), 50, 7);
        let mut seen = HashSet::new();
        let mut kinds: HashMap<PayloadKind, u32> = HashMap::new();
        for _ in 0..2000 {
            let p = g.next_payload();
            *kinds.entry(p.kind).or_default() += 1;
            let v: Value = serde_json::from_slice(&p.body).expect("valid JSON");
            assert_eq!(v["object"], "whatsapp_business_account");
            let value = &v["entry"][0]["changes"][0]["value"];
            assert_eq!(
                value["metadata"]["phone_number_id"],
                DEFAULT_PHONE_NUMBER_ID
            );
            let ids: Vec<&Value> = match p.kind {
                PayloadKind::Status => value["statuses"].as_array().expect("statuses").iter(),
                _ => value["messages"].as_array().expect("messages").iter(),
            }
            .map(|m| &m["id"])
            .collect();
            if p.kind != PayloadKind::Status {
                assert_eq!(ids.len() as u32, p.inbound_messages);
            }
            for id in ids {
                let id = id.as_str().expect("id").to_owned();
                assert!(id.starts_with("wamid."));
                assert!(seen.insert(id), "wamids must be unique");
            }
        }
        let text = f64::from(kinds[&PayloadKind::Text]) / 2000.0;
        assert!((0.5..0.7).contains(&text), "text share {text}");
        assert_eq!(kinds.len(), PayloadKind::ALL.len(), "every kind appears");
    }

    #[test]
    fn customers_are_distinct() {
        let set: HashSet<String> = (0..1000).map(|i| customer(i).wa_id).collect();
        assert_eq!(set.len(), 1000);
        assert!(customer(0).wa_id.chars().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn read_status_has_no_pricing() {
        let s = status("wamid.X", "read", "4915100000001", "service");
        assert!(s.get("pricing").is_none());
        let s = status("wamid.X", "sent", "4915100000001", "utility");
        assert_eq!(s["pricing"]["category"], "utility");
        assert_eq!(s["pricing"]["billable"], true);
    }
}
