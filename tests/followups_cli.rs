//! `wapipe agents` and `wapipe followups` through the real binary, against
//! a fresh PostgreSQL database and a fresh SQLite file: the happy paths,
//! and each refusal as one line on stderr with a non-zero exit.

use std::process::{Command, Output};

use chrono::{Duration, SecondsFormat, Utc};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use uuid::Uuid;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::{chats, customers, follow_ups};
use wapipe_shared::tenants::{self, NewConfig};
use wapipe_testkit::db::{Backend, TempDir, TestDb, migrated};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

struct Env {
    url: String,
    db: DatabaseConnection,
    dir: TempDir,
    _sqlite: Option<TempDir>,
}

impl Env {
    async fn new(postgres: bool) -> Env {
        let dir = TempDir::new().expect("dir");
        let backend = if postgres {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let TestDb {
            url,
            db,
            dir: sqlite,
            ..
        } = migrated(backend, 2).await;
        Env {
            url,
            db,
            dir,
            _sqlite: sqlite,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wapipe"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.url)
            .env("WAPIPE_SECRET_KEY", KEY)
            .env("WAPIPE_SECRET_KEY_FILE", self.dir.path().join("secret.key"))
            .env("RUST_LOG", "warn")
            .output()
            .expect("run wapipe")
    }

    async fn add_config(&self, company: &str, phone_number_id: &str) -> Uuid {
        tenants::add(
            &self.db,
            &SecretKey::from_base64(KEY).expect("key"),
            NewConfig {
                company: company.into(),
                name: None,
                phone_number_id: phone_number_id.into(),
                waba_id: "102290129340398".into(),
                display_phone_number: None,
                app_secret: "s".into(),
                verify_token: "v".into(),
                access_token: "t".into(),
                webhook_secret: None,
                max_mps: 80,
            },
        )
        .await
        .expect("config")
        .id
    }

    /// A customer's chat, as the parse worker would have made it.
    async fn add_chat(&self, config_id: Uuid) -> Uuid {
        let now = Utc::now();
        let customer = Uuid::now_v7();
        customers::Entity::insert(customers::ActiveModel {
            id: Set(customer),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(config_id),
            wa_id: Set(Some("4915112345678".into())),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("customer");
        let chat = Uuid::now_v7();
        chats::Entity::insert(chats::ActiveModel {
            id: Set(chat),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(config_id),
            customer_id: Set(customer),
            ..Default::default()
        })
        .exec_without_returning(&self.db)
        .await
        .expect("chat");
        chat
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Succeeds; returns stdout.
fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", out(&o), err(&o));
    out(&o)
}

/// The one id a command prints on stdout.
fn id_of(o: Output) -> Uuid {
    let text = ok(o);
    Uuid::parse_str(text.trim()).unwrap_or_else(|_| panic!("an id on stdout: {text:?}"))
}

/// Fails with one line on stderr that mentions `needle`, nothing on stdout.
fn refused(o: Output, needle: &str) {
    let e = err(&o);
    assert!(!o.status.success(), "should fail: {}", out(&o));
    assert!(e.contains(needle), "stderr {e:?} should mention {needle:?}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e:?}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(out(&o).is_empty(), "nothing on stdout: {}", out(&o));
}

fn rfc3339(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn agents_and_followups(postgres: bool) {
    let env = Env::new(postgres).await;
    refused(
        env.run(&[
            "agents",
            "add",
            "--name",
            "Ana",
            "--email",
            "ana@acme.example",
        ]),
        "wapipe config add",
    );
    let config = env.add_config("Acme", "106540352242922").await;
    let chat = env.add_chat(config).await;

    // Agents: the company may be left out when there is only one.
    let ana = id_of(env.run(&[
        "agents",
        "add",
        "--name",
        "Ana",
        "--email",
        "ana@acme.example",
        "--phone",
        "+33 6 12 34 56 78",
    ]));
    let bo = id_of(env.run(&[
        "agents",
        "add",
        "--name",
        "Bo",
        "--email",
        "bo@acme.example",
        "--company",
        "Acme",
    ]));
    refused(
        env.run(&["agents", "add", "--name", "X", "--email", "not-an-email"]),
        "not an email address",
    );
    refused(
        env.run(&[
            "agents",
            "add",
            "--name",
            "X",
            "--email",
            "x@acme.example",
            "--phone",
            "12ab",
        ]),
        "not a WhatsApp phone number",
    );
    refused(
        env.run(&[
            "agents",
            "add",
            "--name",
            "X",
            "--email",
            "x@acme.example",
            "--company",
            "Initech",
        ]),
        "no company named \"Initech\"",
    );
    let list = ok(env.run(&["agents", "list"]));
    assert!(
        list.contains(&ana.to_string()) && list.contains("+33612345678"),
        "{list}"
    );
    assert!(
        list.contains(&bo.to_string()) && list.contains("Acme"),
        "{list}"
    );
    env.add_config("Globex", "106540352242923").await;
    refused(
        env.run(&["agents", "add", "--name", "X", "--email", "x@acme.example"]),
        "pass --company",
    );

    // Follow-ups.
    let chat_s = chat.to_string();
    let ana_s = ana.to_string();
    let at = rfc3339(Utc::now() + Duration::hours(3));
    let add = |at: &str, extra: &[&str]| {
        let mut args = vec![
            "followups",
            "add",
            "--chat",
            &chat_s,
            "--agent",
            &ana_s,
            "--at",
            at,
            "--title",
            "Call back about the order",
        ];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let f1 = id_of(add(
        &at,
        &["--notes", "wants a discount", "--priority", "high"],
    ));
    let row = follow_ups::Entity::find_by_id(f1)
        .one(&env.db)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(row.priority, "high");
    assert_eq!(row.notes.as_deref(), Some("wants a discount"));
    assert_eq!(rfc3339(row.scheduled_at), at);
    assert_eq!(row.agent_id, Some(ana));
    let f2 = id_of(add(&rfc3339(Utc::now() + Duration::hours(4)), &[]));

    refused(add("tomorrow at noon", &[]), "not an RFC 3339 date");
    refused(add("2026-13-01T10:00:00Z", &[]), "not an RFC 3339 date");
    refused(
        add(&rfc3339(Utc::now() - Duration::hours(1)), &[]),
        "in the past",
    );
    refused(
        add(&at, &["--priority", "urgent"]),
        "not one of low, medium, high",
    );
    refused(
        env.run(&[
            "followups",
            "add",
            "--chat",
            &Uuid::now_v7().to_string(),
            "--agent",
            &ana_s,
            "--at",
            &at,
            "--title",
            "T",
        ]),
        "no chat with id",
    );
    refused(
        env.run(&[
            "followups",
            "add",
            "--chat",
            &chat_s,
            "--agent",
            &Uuid::now_v7().to_string(),
            "--at",
            &at,
            "--title",
            "T",
        ]),
        "no agent with id",
    );
    refused(
        env.run(&[
            "followups",
            "add",
            "--chat",
            "42",
            "--agent",
            &ana_s,
            "--at",
            &at,
            "--title",
            "T",
        ]),
        "not a chat id",
    );

    let listed = ok(env.run(&["followups", "list"]));
    assert!(
        listed.contains(&f1.to_string()) && listed.contains(&f2.to_string()),
        "{listed}"
    );
    assert!(
        listed.find(&f1.to_string()) < listed.find(&f2.to_string()),
        "soonest first: {listed}"
    );
    assert!(
        ok(env.run(&["followups", "list", "--agent", &bo.to_string()]))
            .lines()
            .nth(1)
            .is_none()
    );
    refused(
        env.run(&["followups", "list", "--status", "done"]),
        "not one of pending",
    );

    assert_eq!(
        ok(env.run(&["followups", "complete", &f1.to_string(), "--by", &ana_s])).trim(),
        format!("completed {f1}")
    );
    refused(
        env.run(&["followups", "cancel", &f1.to_string()]),
        "is completed",
    );
    assert_eq!(
        ok(env.run(&["followups", "cancel", &f2.to_string()])).trim(),
        format!("cancelled {f2}")
    );
    refused(
        env.run(&["followups", "complete", &Uuid::now_v7().to_string()]),
        "no follow-up with id",
    );
    let done = ok(env.run(&["followups", "list", "--status", "completed"]));
    assert!(
        done.contains(&f1.to_string()) && !done.contains(&f2.to_string()),
        "{done}"
    );
    let json = ok(env.run(&["followups", "list", "--status", "cancelled", "--json"]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(v["id"], f2.to_string());
    assert_eq!(v["status"], "cancelled");
}

#[tokio::test]
async fn agents_and_followups_postgres() {
    agents_and_followups(true).await;
}

#[tokio::test]
async fn agents_and_followups_sqlite() {
    agents_and_followups(false).await;
}
