//! Conformance against Meta's public payloads (`../shared/meta-corpus`, see
//! its SOURCES.md; skipped when absent): every payload under `messages/`,
//! `statuses/`, `errors/` and `other/` goes through the real receiver,
//! signed, in both modes. Then: no event ends `failed`, every inbound
//! message of a routed number is a `messages` row with the right `type`,
//! texts are exact, and every status receipt is stored.
//!
//! The corpus carries its own phone number ids (some are placeholders such
//! as `PHONE_NUMBER_ID`), so a config is created for each distinct number
//! and WABA first, all of the harness's company and app secret.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::webhook_events::{self, EventStatus};
use wapipe_shared::entities::{message_status_events, messages, whatsapp_configs};
use wapipe_testkit::app::*;

const FOLDERS: &[&str] = &["messages", "statuses", "errors", "other"];

/// A string or number id, as Meta sends them.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn arr<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// What the corpus says must be stored for one (number, wamid).
/// Several files reuse ids like `wamid.ID`: the first one processed is
/// stored, the rest are duplicates. So the row must be one of the
/// candidates, exactly: its payload, type and text.
#[derive(Debug, Default)]
struct Expect {
    candidates: Vec<Value>,
    files: BTreeSet<String>,
}

/// The text a message of this type carries (the rule the parse worker
/// follows), for the types whose text we check.
fn expected_text(m: &Value, kind: &str) -> Option<Option<String>> {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match kind {
        "text" => Some(s(m.pointer("/text/body"))),
        "image" | "video" | "document" => Some(s(m.get(kind).and_then(|b| b.get("caption")))),
        "button" => Some(s(m.pointer("/button/text"))),
        "interactive" => match m.pointer("/interactive/type").and_then(Value::as_str) {
            Some("button_reply") => Some(s(m.pointer("/interactive/button_reply/title"))),
            Some("list_reply") => Some(s(m.pointer("/interactive/list_reply/title"))),
            Some("nfm_reply") => Some(s(m.pointer("/interactive/nfm_reply/body"))),
            _ => None,
        },
        _ => None,
    }
}

struct Corpus {
    /// (folder/file, bytes)
    files: Vec<(String, Vec<u8>)>,
    /// phone number id -> first WABA seen with it
    numbers: BTreeMap<String, String>,
    /// WABAs seen on changes without a phone number id
    wabas: BTreeSet<String>,
    messages: HashMap<(String, String), Expect>,
    /// (phone number id, wamid, status)
    statuses: BTreeSet<(String, String, String)>,
    /// wamids that an edit in the corpus targets (their text may change)
    edited: BTreeSet<String>,
    skipped_messages: Vec<String>,
    total_messages: usize,
}

fn load(dir: &Path) -> Corpus {
    let mut c = Corpus {
        files: Vec::new(),
        numbers: BTreeMap::new(),
        wabas: BTreeSet::new(),
        messages: HashMap::new(),
        statuses: BTreeSet::new(),
        edited: BTreeSet::new(),
        skipped_messages: Vec::new(),
        total_messages: 0,
    };
    for folder in FOLDERS {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(folder))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for path in names {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let name = format!("{folder}/{}", path.file_name().unwrap().to_string_lossy());
            let bytes = std::fs::read(&path).unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            for entry in arr(&v, "entry") {
                let waba = id_of(entry.get("id"));
                for change in arr(entry, "changes") {
                    let value = change.get("value").unwrap_or(&Value::Null);
                    let phone = id_of(value.pointer("/metadata/phone_number_id"));
                    match (&phone, &waba) {
                        (Some(p), w) => {
                            c.numbers
                                .entry(p.clone())
                                .or_insert_with(|| w.clone().unwrap_or_else(|| "1".into()));
                        }
                        (None, Some(w)) => {
                            c.wabas.insert(w.clone());
                        }
                        (None, None) => {}
                    }
                    let is_messages =
                        change.get("field").and_then(Value::as_str) == Some("messages");
                    let Some(phone) = phone.filter(|_| is_messages) else {
                        continue;
                    };
                    let contacts = arr(value, "contacts");
                    let contact_key = contacts.iter().any(|k| {
                        id_of(k.get("wa_id")).is_some() || id_of(k.get("user_id")).is_some()
                    });
                    for m in arr(value, "messages") {
                        let Some(wamid) = id_of(m.get("id")) else {
                            c.skipped_messages
                                .push(format!("{name}: message without id"));
                            continue;
                        };
                        let has_sender = id_of(m.get("from")).is_some()
                            || id_of(m.get("from_user_id")).is_some()
                            || contact_key;
                        if !has_sender {
                            c.skipped_messages
                                .push(format!("{name}: {wamid} has no sender"));
                            continue;
                        }
                        let Some(kind) = m.get("type").and_then(Value::as_str) else {
                            c.skipped_messages
                                .push(format!("{name}: {wamid} has no type"));
                            continue;
                        };
                        if let Some(target) = m
                            .pointer("/edit/original_message_id")
                            .and_then(Value::as_str)
                        {
                            c.edited.insert(target.to_owned());
                        }
                        let _ = kind;
                        c.total_messages += 1;
                        let e = c.messages.entry((phone.clone(), wamid)).or_default();
                        e.candidates.push(m.clone());
                        e.files.insert(name.clone());
                    }
                    for s in arr(value, "statuses") {
                        if let (Some(w), Some(st)) =
                            (id_of(s.get("id")), s.get("status").and_then(Value::as_str))
                        {
                            c.statuses
                                .insert((phone.clone(), w, st.to_ascii_lowercase()));
                        }
                    }
                }
            }
            c.files.push((name, bytes));
        }
    }
    c
}

/// A config for `phone` under `waba`, with the harness's company and app
/// secret. Written directly: `wapipe config add` accepts only digits, and
/// the corpus uses placeholders like `PHONE_NUMBER_ID`.
async fn add_config(db: &DatabaseConnection, phone: &str, waba: &str) -> Uuid {
    let key = SecretKey::from_base64(KEY).unwrap();
    let now = Utc::now();
    let id = Uuid::now_v7();
    whatsapp_configs::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        company: Set("Test Co".into()),
        name: Set(Some(format!("corpus {phone}"))),
        phone_number_id: Set(phone.into()),
        waba_id: Set(waba.into()),
        display_phone_number: Set(None),
        access_token_enc: Set(key.encrypt("EAAG-corpus").unwrap()),
        app_secret_enc: Set(key.encrypt(APP_SECRET).unwrap()),
        verify_token_enc: Set(key.encrypt("corpus-verify").unwrap()),
        webhook_secret_enc: Set(None),
        max_mps: Set(80),
        graph_api_version: Set(None),
        is_active: Set(true),
        flagged_reason: Set(None),
        flagged_code: Set(None),
        flagged_at: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    id
}

async fn conformance(mode: Mode) {
    let Some(dir) = corpus_dir() else {
        eprintln!("skipped: ../shared/meta-corpus is not present");
        return;
    };
    let corpus = load(&dir);
    assert!(corpus.files.len() > 100, "corpus looks incomplete");

    let app = TestApp::spawn(mode).await;

    let mut config_of: HashMap<String, Uuid> = HashMap::new();
    config_of.insert(PHONE_NUMBER_ID.to_owned(), app.config_id);
    let mut wabas_with_config: BTreeSet<String> = [WABA_ID.to_owned()].into();
    for (phone, waba) in &corpus.numbers {
        if !config_of.contains_key(phone) {
            config_of.insert(phone.clone(), add_config(&app.db, phone, waba).await);
            wabas_with_config.insert(waba.clone());
        }
    }
    for (i, waba) in corpus.wabas.iter().enumerate() {
        if !wabas_with_config.contains(waba) {
            // A number of its own, so WABA-only changes (templates, account
            // updates) route too.
            add_config(&app.db, &format!("99000000{i:05}"), waba).await;
        }
    }

    let started = std::time::Instant::now();
    let mut accepted = 0u64;
    let mut not_envelopes = Vec::new();
    for (name, bytes) in &corpus.files {
        let (status, body) = app.post(bytes).await;
        match status {
            200 if body.contains("duplicate") => {}
            200 => accepted += 1,
            400 => not_envelopes.push(format!("{name}: {body}")),
            other => panic!("{name}: {other} {body}"),
        }
    }
    eprintln!(
        "{mode:?}: {} files, {accepted} events accepted, {} answered 400: {not_envelopes:?}",
        corpus.files.len(),
        not_envelopes.len()
    );
    assert!(not_envelopes.is_empty(), "every corpus file is an envelope");
    let posted = started.elapsed();
    app.wait_settled(accepted, Duration::from_secs(120)).await;
    eprintln!(
        "{mode:?}: posted in {posted:?}, all settled after {:?}",
        started.elapsed()
    );

    let events = webhook_events::Entity::find().all(&app.db).await.unwrap();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.status == EventStatus::Failed || e.status == EventStatus::Received)
        .map(|e| (e.id, e.status, e.error.clone()))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let ignored = events
        .iter()
        .filter(|e| e.status == EventStatus::Ignored)
        .count();
    assert_eq!(
        ignored, 0,
        "every corpus number has a config, so every event routes"
    );

    let mut problems = Vec::new();
    let mut checked = 0usize;
    for ((phone, wamid), expect) in &corpus.messages {
        let Some(cfg) = config_of.get(phone) else {
            continue;
        };
        let row = messages::Entity::find()
            .filter(messages::Column::ConfigId.eq(*cfg))
            .filter(messages::Column::ProviderMessageId.eq(wamid.as_str()))
            .one(&app.db)
            .await
            .unwrap();
        let Some(row) = row else {
            problems.push(format!("{phone}/{wamid} ({:?}): no row", expect.files));
            continue;
        };
        let Some(source) = expect
            .candidates
            .iter()
            .find(|c| row.payload.as_ref() == Some(*c))
        else {
            problems.push(format!(
                "{phone}/{wamid}: raw payload not kept as sent ({:?})",
                expect.files
            ));
            continue;
        };
        let kind = source
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if row.r#type != kind {
            problems.push(format!("{phone}/{wamid}: type {} != {kind}", row.r#type));
        }
        // Texts are exact, unless an edit in the corpus changed them.
        if !corpus.edited.contains(wamid)
            && let Some(want) = expected_text(source, kind)
            && row.text != want
        {
            problems.push(format!("{phone}/{wamid}: text {:?} != {want:?}", row.text));
        }
        checked += 1;
    }
    for (phone, wamid, status) in &corpus.statuses {
        let Some(cfg) = config_of.get(phone) else {
            continue;
        };
        let found = message_status_events::Entity::find()
            .filter(message_status_events::Column::ConfigId.eq(*cfg))
            .filter(message_status_events::Column::ProviderMessageId.eq(wamid.as_str()))
            .filter(message_status_events::Column::Status.eq(status.as_str()))
            .one(&app.db)
            .await
            .unwrap();
        if found.is_none() {
            problems.push(format!("{phone}/{wamid}: receipt {status} not stored"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(checked, corpus.messages.len());
    eprintln!(
        "{mode:?}: {} inbound messages in the corpus, {} distinct (number, wamid) rows checked, \
         {} receipts checked; not checked: {:?}",
        corpus.total_messages,
        checked,
        corpus.statuses.len(),
        corpus.skipped_messages
    );
    app.stop().await;
}

#[tokio::test]
async fn conformance_embedded() {
    conformance(Mode::Embedded).await;
}

#[tokio::test]
async fn conformance_production() {
    conformance(Mode::Production).await;
}
