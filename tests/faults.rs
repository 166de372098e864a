//! Faults around the broker: a process killed between commit and publish,
//! and a poison job through the dead-letter queue and `wapipe dlq`.

use std::process::{Command, Stdio};
use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use wapipe::serve::Roles;
use wapipe_shared::broker::OutboundJob;
use wapipe_shared::crypto::sign_body;
use wapipe_shared::entities::webhook_events::{self, EventStatus};
use wapipe_testkit::app::*;

fn wapipe(settings: &wapipe_shared::config::Settings) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wapipe"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &settings.database_url)
        .env("WAPIPE_SECRET_KEY", KEY)
        .env("WAPIPE_SECRET_KEY_FILE", &settings.secret_key_file)
        .env("WAPIPE_QUEUE_PREFIX", &settings.queue_prefix)
        .env("WAPIPE_LANES", settings.lanes.to_string())
        .env("RUST_LOG", "warn");
    if let Some(a) = &settings.amqp_url {
        cmd.env("AMQP_URL", a);
    }
    cmd
}

/// Runs `wapipe ARGS` to the end without blocking the runtime. The app
/// under test runs on this test's only thread; a blocking wait would freeze
/// it, and a task of it frozen inside a write transaction would hold
/// SQLite's lock until the CLI gave up ("database is locked").
async fn cli(settings: &wapipe_shared::config::Settings, args: &[&str]) -> std::process::Output {
    let mut cmd = wapipe(settings);
    cmd.args(args);
    tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("run wapipe")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `wapipe ingest` commits events but cannot publish (its broker is
/// unreachable / has no consumer), then is killed with SIGKILL. A new
/// process's relay re-publishes them at startup and they are processed.
async fn kill_between_commit_and_publish(mode: Mode) {
    let (settings, dir) = settings_for(mode).await;
    let (db, config_id) = prepare_db(&settings).await;
    let port = free_port();
    let mut cmd = wapipe(&settings);
    if mode == Mode::Production {
        // Nothing listens there: every publish fails after commit.
        cmd.env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f");
    }
    let mut child = cmd
        .env("WAPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "WAPIPE_METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("WAPIPE_RELAY_GRACE_SECS", "3600")
        .arg("ingest")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/whatsapp/webhooks");
    let mut up = false;
    for _ in 0..100 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "wapipe ingest started");
    for i in 0..20 {
        let body = text_webhook(&format!("k{i}"), "4917333", &format!("k {i}"));
        let r = client
            .post(&url)
            .header(
                "x-hub-signature-256",
                sign_body(APP_SECRET.as_bytes(), &body),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    child.kill().unwrap(); // SIGKILL: no graceful anything.
    let _ = child.wait();
    let pending = webhook_events::Entity::find()
        .filter(webhook_events::Column::Status.eq(EventStatus::Received))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(pending.len(), 20, "committed, not processed");
    if mode == Mode::Production {
        assert!(
            pending.iter().all(|e| e.published_at.is_none()),
            "nothing was published"
        );
    }
    let app = TestApp::start(mode, settings, dir, Roles::all(), db, config_id).await;
    app.wait_settled(20, Duration::from_secs(30)).await;
    assert_eq!(app.count_events(Some(EventStatus::Processed)).await, 20);
    assert!(
        app.metrics()
            .await
            .contains("wapipe_relay_republished_total")
    );
    app.stop().await;
}

#[tokio::test]
async fn kill_between_commit_and_publish_embedded() {
    kill_between_commit_and_publish(Mode::Embedded).await;
}
#[tokio::test]
async fn kill_between_commit_and_publish_production() {
    kill_between_commit_and_publish(Mode::Production).await;
}

/// A job the parse worker can never handle lands in the dead-letter queue;
/// `wapipe dlq list` shows it, `redrive` brings it back (and it dies again),
/// `purge` empties the queue.
async fn poison_job_through_the_cli(mode: Mode) {
    let app = TestApp::spawn(mode).await;
    app.broker
        .publish(OutboundJob {
            event: "webhook.received".into(),
            lane_key: "poison".into(),
            message_id: "poison-1".into(),
            body: b"{\"not\":\"a job\"}".to_vec(),
        })
        .await
        .unwrap();
    let dlq_count = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("poison-1"))
            .count()
    };
    let run = async |args: &[&str]| {
        let out = cli(&app.settings, args).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let mut listed = 0;
    for _ in 0..100 {
        listed = dlq_count(&run(&["dlq", "list", "--queue", "parse"]).await);
        if listed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, 1, "the poison job is in the dead-letter queue");
    let out = run(&["dlq", "list", "--queue", "parse"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not a webhook.received job"),
        "last error shown"
    );

    let out = run(&["dlq", "redrive", "--queue", "parse"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("redrove 1"));
    // It goes back to the work queue, fails again, and returns to the DLQ.
    let mut back = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        back = dlq_count(&run(&["dlq", "list", "--queue", "parse"]).await);
        if back == 1 {
            break;
        }
    }
    assert_eq!(back, 1);
    let m = app.metrics().await;
    assert!(m.contains("outcome=\"dead\""), "dead jobs are counted");
    let out = run(&["dlq", "purge", "--queue", "parse"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 1"));
    assert_eq!(
        dlq_count(&run(&["dlq", "list", "--queue", "parse"]).await),
        0
    );

    let bad = cli(&app.settings, &["dlq", "list", "--queue", "nope"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown queue"));
    app.stop().await;
}

#[tokio::test]
async fn poison_job_through_the_cli_embedded() {
    poison_job_through_the_cli(Mode::Embedded).await;
}
#[tokio::test]
async fn poison_job_through_the_cli_production() {
    poison_job_through_the_cli(Mode::Production).await;
}

/// `wapipe replay` puts rejected/failed events back through the parser.
#[tokio::test]
async fn replay_cli() {
    let app = TestApp::spawn(Mode::Embedded).await;
    assert_eq!(app.post(b"[\"not an envelope\"]").await.0, 400);
    assert_eq!(app.post(&text_webhook("r1", "4917", "x")).await.0, 200);
    app.wait_settled(1, Duration::from_secs(20)).await;
    let ev = webhook_events::Entity::find()
        .filter(webhook_events::Column::Status.eq(EventStatus::Processed))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let run = async |args: &[&str]| cli(&app.settings, args).await;
    let out = run(&["replay", "--event", &ev.id.to_string()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-published 1"));
    let out = run(&[
        "replay",
        "--status",
        "rejected",
        "--since",
        "2020-01-01T00:00:00Z",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-published 1"));
    for (args, needle) in [
        (vec!["replay", "--event", "zzz"], "not an event id"),
        (
            vec!["replay", "--event", "0190a0a0-0000-7000-8000-000000000000"],
            "no webhook event",
        ),
        (
            vec!["replay", "--status", "processed"],
            "only rejected or failed",
        ),
        (vec!["replay", "--status", "bogus"], "unknown status"),
        (
            vec!["replay", "--status", "failed", "--since", "yesterday"],
            "RFC 3339",
        ),
    ] {
        let out = run(&args).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    app.stop().await;
}

/// `wapipe status` shows where a message stands and `--wait` gives up with a
/// clear message; bad ids are refused.
#[tokio::test]
async fn status_cli() {
    let app = TestApp::spawn(Mode::Embedded).await;
    let run = async |args: &[&str]| cli(&app.settings, args).await;
    let out = run(&[
        "send",
        "--config",
        &app.config_id.to_string(),
        "--to",
        "15550001234",
        "--template",
        "hello",
        "--lang",
        "en_US",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let out = run(&["status", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        ["queued", "sending", "failed"]
            .iter()
            .any(|s| line.starts_with(s)),
        "a status line: {line}"
    );
    // No reachable Meta here: it cannot become `read`.
    let out = run(&["status", &id, "--wait", "read", "--timeout-secs", "1"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not read") || err.contains("failed before reaching read"),
        "{err}"
    );
    for (args, needle) in [
        (vec!["status", "nope"], "not a message id"),
        (
            vec!["status", "0190a0a0-0000-7000-8000-000000000000"],
            "no message with id",
        ),
        (vec!["status", &id, "--wait", "bogus"], "unknown status"),
    ] {
        let out = run(&args).await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}"
        );
    }
    app.stop().await;
}
