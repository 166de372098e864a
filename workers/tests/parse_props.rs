//! Property tests (DESIGN §8): arbitrary JSON, and envelope-shaped JSON with
//! random leaves, never panic the parser. Against the database too: such
//! events always end `processed` or `ignored`, never an error, and a replay
//! of each changes no count.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use wapipe_shared::entities::webhook_events::EventStatus;
use wapipe_shared::whatsapp::{self as wa, Status};
use wapipe_testkit::workers::*;
use wapipe_workers::parse::Settled;
use wapipe_workers::parse::extract::extract_message;

/// Keys the parser looks at, so random objects hit real code paths.
const KEYS: &[&str] = &[
    "id",
    "type",
    "from",
    "from_user_id",
    "timestamp",
    "text",
    "body",
    "caption",
    "image",
    "audio",
    "voice",
    "interactive",
    "button_reply",
    "list_reply",
    "nfm_reply",
    "response_json",
    "title",
    "reaction",
    "message_id",
    "emoji",
    "edit",
    "revoke",
    "original_message_id",
    "message",
    "context",
    "forwarded",
    "referral",
    "errors",
    "code",
    "error_data",
    "details",
    "status",
    "recipient_id",
    "conversation",
    "pricing",
    "metadata",
    "phone_number_id",
    "contacts",
    "wa_id",
    "user_id",
    "profile",
    "name",
    "location",
    "order",
    "system",
    "button",
    "payload",
];

const WORDS: &[&str] = &[
    "text",
    "image",
    "interactive",
    "reaction",
    "edit",
    "revoke",
    "button",
    "nfm_reply",
    "button_reply",
    "list_reply",
    "unsupported",
    "sent",
    "delivered",
    "read",
    "failed",
    "1760000000",
    "wamid.A",
    "wamid.B",
    "",
    "\u{0}",
    "é\u{1F44D}",
    CUSTOMER,
    PHONE,
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => ".{0,6}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value that is usually right and sometimes anything.
fn mostly(good: Value) -> impl Strategy<Value = Value> {
    prop_oneof![3 => Just(good), 1 => leaf()]
}

fn arb_message() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![
            prop::sample::select(wa::MESSAGE_TYPES).prop_map(Value::from),
            leaf()
        ]),
        prop::option::of(mostly(json!(CUSTOMER))),
        prop::option::of(prop_oneof![
            prop::sample::select(&["wamid.A", "wamid.B", "wamid.C"][..]).prop_map(Value::from),
            leaf()
        ]),
        prop::option::of(mostly(json!("1760000000"))),
        prop::collection::btree_map(key(), arb_json(), 0..4),
    )
        .prop_map(|(t, from, id, ts, rest)| {
            let mut m: Map<String, Value> = rest.into_iter().collect();
            for (k, v) in [("type", t), ("from", from), ("id", id), ("timestamp", ts)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

fn arb_status() -> impl Strategy<Value = Value> {
    (
        mostly(json!("wamid.A")),
        prop_oneof![
            prop::sample::select(&["sent", "delivered", "read", "failed", "played", "weird"][..])
                .prop_map(Value::from),
            leaf()
        ],
        mostly(json!(1_760_000_001)),
        prop::option::of(arb_json()),
    )
        .prop_map(|(id, status, ts, errors)| {
            let mut s =
                json!({"id": id, "status": status, "timestamp": ts, "recipient_id": CUSTOMER});
            if let Some(e) = errors {
                s["errors"] = e;
            }
            s
        })
}

fn arb_envelope() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(arb_message(), 0..4),
        prop::collection::vec(arb_status(), 0..3),
        prop_oneof![
            Just(json!([{"profile": {"name": "P"}, "wa_id": CUSTOMER}])),
            Just(json!([{"wa_id": "", "user_id": "US.1"}])),
            arb_json()
        ],
        mostly(json!(PHONE)),
        prop_oneof![
            3 => Just(json!("messages")),
            1 => prop::sample::select(&["account_update", "message_template_status_update", "calls"][..])
                .prop_map(Value::from),
            1 => leaf()
        ],
        mostly(json!(WABA)),
        prop::option::of(arb_json()),
    )
        .prop_map(|(messages, statuses, contacts, phone, field, waba, errors)| {
            let mut value = json!({"metadata": {"phone_number_id": phone}, "contacts": contacts,
                                   "messages": messages, "statuses": statuses});
            if let Some(e) = errors {
                value["errors"] = e;
            }
            json!({"object": "whatsapp_business_account",
                   "entry": [{"id": waba, "changes": [{"field": field, "value": value}]}]})
        })
}

/// Everything the parse worker reads out of a body, without a database.
fn parse_everything(v: &Value) {
    for change in wa::changes(v) {
        let _ = (
            change.waba_id(),
            change.phone_number_id(),
            change.is_messages(),
        );
        let _ = (change.contacts(), change.errors());
        for m in change.messages() {
            let x = extract_message(m);
            assert!(!x.provider_message_id.is_empty());
            assert!(!x.payload.to_string().contains("\\u0000"), "NUL kept");
            let _ = (x.preview(), x.is_visible());
        }
        for s in change.statuses() {
            let _ = Status::from_value(s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        parse_everything(&v);
        let _ = extract_message(&v);
    }

    #[test]
    fn envelope_shaped_json_never_panics(v in arb_envelope()) {
        parse_everything(&v);
    }
}

/// Random envelopes through `process_event` on a real database: always
/// settled, never an error, and a replay changes no count.
async fn random_events_settle_and_replay_cleanly(b: Backend) {
    let env = env(b).await;
    let rt = tokio::runtime::Handle::current();
    let cases = match b {
        Backend::Sqlite => 128,
        Backend::Postgres => 96,
    };
    let strategy = arb_envelope();
    let env_ref = &env;
    // proptest's runner is synchronous; run it on a blocking thread and
    // drive each case's database work on this test's runtime.
    tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&strategy, |body| {
                rt.block_on(async {
                    let id = env_ref.store(&body).await;
                    let settled = env_ref.process(id).await;
                    assert!(
                        matches!(settled, Settled::Processed | Settled::Ignored),
                        "{settled:?} for {body}"
                    );
                    let status = env_ref.event(id).await.status;
                    assert!(matches!(
                        status,
                        EventStatus::Processed | EventStatus::Ignored
                    ));
                    let before = env_ref.counts().await;
                    env_ref.reset(id).await;
                    env_ref.process(id).await;
                    assert_eq!(env_ref.counts().await, before, "replay of {body}");
                });
                Ok(())
            })
            .expect("property holds");
    });
    // The cases did reach the tables, not only the routing.
    assert!(env.count_messages().await > 0);
    assert!(!env.customers().await.is_empty());
}

mod random_events {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::random_events_settle_and_replay_cleanly(wapipe_testkit::Backend::Postgres).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::random_events_settle_and_replay_cleanly(wapipe_testkit::Backend::Sqlite).await;
    }
}
