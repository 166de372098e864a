//! Every message of Meta's public payloads (`shared/meta-corpus`, beside the
//! repository; skipped when absent) through `process_event`, one by one, on
//! both backends. The corpus reuses ids such as `wamid.ID` across files, so
//! each message's id is made unique per file first: then every single
//! message must become its own row, with its type, its exact text and its
//! raw JSON, and every receipt must be stored. (The end-to-end conformance
//! test posts the files unchanged through the receiver.)

use std::path::PathBuf;

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::webhook_events::EventStatus;
use wapipe_shared::entities::whatsapp_configs;
use wapipe_testkit::both_backends;
use wapipe_testkit::corpus::corpus_dir;
use wapipe_testkit::workers::*;

fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn items_mut<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// The text the parse worker must store for a message of this type.
fn expected_text(m: &Value, kind: &str) -> Option<Option<String>> {
    let s = |p: &str| m.pointer(p).and_then(Value::as_str).map(str::to_owned);
    Some(match kind {
        "text" => s("/text/body"),
        "image" | "video" | "document" | "audio" | "sticker" => s(&format!("/{kind}/caption")),
        "button" => s("/button/text"),
        "order" => s("/order/text"),
        "system" => s("/system/body"),
        "interactive" => match m.pointer("/interactive/type").and_then(Value::as_str) {
            Some("button_reply") => s("/interactive/button_reply/title"),
            Some("list_reply") => s("/interactive/list_reply/title"),
            Some("nfm_reply") => s("/interactive/nfm_reply/body"),
            _ => return None,
        },
        "edit" => s("/edit/message/text/body").or_else(|| {
            let inner = m.pointer("/edit/message/type").and_then(Value::as_str)?;
            s(&format!("/edit/message/{inner}/caption"))
        }),
        _ => return None,
    })
}

async fn config_for(env: &Env, phone: &str, waba: &str) {
    let key = SecretKey::from_base64(KEY).expect("key");
    let now = Utc::now();
    // Direct insert: the corpus has placeholder ids that `tenants::add`
    // (digits only) refuses.
    let _ = whatsapp_configs::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        company: Set("Test Co".into()),
        name: Set(None),
        phone_number_id: Set(phone.into()),
        waba_id: Set(waba.into()),
        display_phone_number: Set(None),
        access_token_enc: Set(key.encrypt("t").expect("enc")),
        app_secret_enc: Set(key.encrypt("s").expect("enc")),
        verify_token_enc: Set(key.encrypt("v").expect("enc")),
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
    .insert(&env.db)
    .await;
}

async fn every_corpus_message_is_its_own_row(b: Backend) {
    let Some(dir) = corpus_dir() else {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    };
    let env = env(b).await;
    let (mut files, mut checked, mut receipts) = (0usize, 0usize, 0usize);
    let mut problems = Vec::new();
    for folder in ["messages", "statuses", "errors", "other"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join(folder))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(mut body) =
                serde_json::from_slice::<Value>(&std::fs::read(&path).expect("read"))
            else {
                continue;
            };
            files += 1;
            // Unique ids per file, and a config for every number.
            let mut expected = Vec::new();
            let mut statuses = Vec::new();
            let mut n = 0usize;
            for entry in items_mut(&mut body, "entry") {
                let waba = id_of(entry.get("id")).unwrap_or_default();
                for change in items_mut(entry, "changes") {
                    let is_messages =
                        change.get("field").and_then(Value::as_str) == Some("messages");
                    let Some(value) = change.get_mut("value") else {
                        continue;
                    };
                    let Some(phone) = id_of(value.pointer("/metadata/phone_number_id")) else {
                        // Routed by WABA: a config of that WABA.
                        config_for(&env, &format!("waba:{waba}"), &waba).await;
                        continue;
                    };
                    config_for(&env, &phone, &waba).await;
                    if !is_messages {
                        continue;
                    }
                    for m in items_mut(value, "messages") {
                        if let Some(id) = id_of(m.get("id")) {
                            n += 1;
                            m["id"] = Value::String(format!("{name}/{n}/{id}"));
                            expected.push(m.clone());
                        }
                    }
                    for s in items_mut(value, "statuses") {
                        if let Some(id) = id_of(s.get("id")) {
                            n += 1;
                            s["id"] = Value::String(format!("{name}/{n}/{id}"));
                            statuses.push(s.clone());
                        }
                    }
                }
            }
            let id = env.post(&body).await;
            let ev = env.event(id).await;
            if ev.status != EventStatus::Processed {
                problems.push(format!("{folder}/{name}: {:?} {:?}", ev.status, ev.error));
            }
            for m in expected {
                let wamid = m["id"].as_str().unwrap_or_default().to_owned();
                let Some(row) = env.message_opt(&wamid).await else {
                    problems.push(format!("{wamid}: no row"));
                    continue;
                };
                let kind = m.get("type").and_then(Value::as_str);
                match kind {
                    Some(k) if row.r#type != k => {
                        problems.push(format!("{wamid}: type {} != {k}", row.r#type))
                    }
                    None if row.r#type == "unknown" => {
                        problems.push(format!("{wamid}: type not inferred"))
                    }
                    _ => {}
                }
                if let Some(want) = kind.and_then(|k| expected_text(&m, k))
                    && row.text != want
                {
                    problems.push(format!("{wamid}: text {:?} != {want:?}", row.text));
                }
                if row.payload.as_ref() != Some(&m) {
                    problems.push(format!("{wamid}: payload not kept as sent"));
                }
                checked += 1;
            }
            for s in statuses {
                let wamid = s["id"].as_str().unwrap_or_default();
                if env.status_events(wamid).await.is_empty() {
                    problems.push(format!("{wamid}: receipt not stored"));
                }
                receipts += 1;
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        files > 100 && checked > 80 && receipts > 20,
        "{files} {checked} {receipts}"
    );
    eprintln!("{b:?}: {files} files, {checked} messages and {receipts} receipts checked");
}
both_backends!(every_corpus_message_is_its_own_row);
