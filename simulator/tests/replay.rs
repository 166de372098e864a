//! Replay against a real receiver on 127.0.0.1: exact bytes, signatures, retries, wrappers and the CLI's exit codes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use wapipe_testkit::receiver;

use wapipe_sim::replay::{Outcome, ReplayConfig, replay_paths};

const SECRET: &str = "replay-secret";

fn cfg(url: String) -> ReplayConfig {
    ReplayConfig {
        backoff: Duration::from_millis(10),
        ..ReplayConfig::new(url, SECRET)
    }
}

fn write(dir: &std::path::Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

/// Odd spacing and key order on purpose: re-serializing would change the
/// bytes and break the signature.
const RAW: &str = "{ \"object\":\"whatsapp_business_account\",\n  \"entry\": [ {\"id\":\"1\",\"changes\":[]} ] }\n";

#[tokio::test]
async fn retries_a_503_then_delivers_the_exact_bytes() {
    let rx = receiver::spawn_receiver(SECRET, Arc::new(|n, _| if n < 2 { 503 } else { 200 })).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "one.json", RAW);
    let report = replay_paths(&[file], &cfg(rx.url())).await.unwrap();
    assert!(report.success());
    let r = &report.files[0];
    assert_eq!(r.attempts, 3);
    assert_eq!(r.outcome, Outcome::Delivered { status: 200 });
    let got = rx.received();
    assert_eq!(got.len(), 3);
    for g in got {
        assert_eq!(g.body.as_ref(), RAW.as_bytes());
        assert!(g.signature_ok);
    }
}

#[tokio::test]
async fn walks_directories_sorted_unwraps_and_reports_400s() {
    let rx = receiver::spawn_receiver(
        SECRET,
        Arc::new(|_, r| {
            if r.body.windows(9).any(|w| w == b"reject-me") {
                400
            } else {
                200
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.json", RAW);
    write(dir.path(), "a/2.json", RAW);
    write(
        dir.path(),
        "a/1-wrapped.json",
        r#"{"headers":{"x":"y"},"body":{"object":"whatsapp_business_account","entry":[{"id":"wrapped"}]}}"#,
    );
    write(dir.path(), "c.json", r#"{"object":"reject-me","entry":[]}"#);
    write(dir.path(), "notes.txt", "not a payload");

    let report = replay_paths(&[dir.path().to_owned()], &cfg(rx.url()))
        .await
        .unwrap();
    let names: Vec<String> = report
        .files
        .iter()
        .map(|f| {
            f.path
                .strip_prefix(dir.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["a/1-wrapped.json", "a/2.json", "b.json", "c.json"]);
    assert!(report.files[0].unwrapped);
    assert!(matches!(
        report.files[3].outcome,
        Outcome::Rejected { status: 400, .. }
    ));
    assert_eq!(
        report.files[3].attempts, 1,
        "a 400 is an answer, not retried"
    );
    assert_eq!(
        (report.delivered(), report.rejected(), report.failed()),
        (3, 1, 0)
    );
    assert!(report.success());

    let got = rx.received();
    let inner = got[0].json();
    assert_eq!(inner["entry"][0]["id"], "wrapped");
    assert!(inner.get("headers").is_none());
    assert!(got.iter().all(|g| g.signature_ok));
}

#[tokio::test]
async fn gives_up_after_the_retries() {
    let rx = receiver::spawn_receiver(SECRET, Arc::new(|_, _| 500)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "x.json", RAW);
    let report = replay_paths(
        &[file],
        &ReplayConfig {
            retries: 2,
            ..cfg(rx.url())
        },
    )
    .await
    .unwrap();
    assert!(!report.success());
    assert_eq!(report.files[0].attempts, 3);
    assert_eq!(rx.received().len(), 3);
    assert!(report.files[0].to_string().starts_with("FAIL 500 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_each_file_and_sets_the_exit_code() {
    let ok = receiver::spawn_receiver(SECRET, receiver::verifying()).await;
    let down = receiver::spawn_receiver(SECRET, Arc::new(|_, _| 502)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "m.json", RAW);
    let bin = env!("CARGO_BIN_EXE_wapipe-sim");

    let run = |url: String| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .args(["replay", "--webhook", &url, "--app-secret", SECRET])
                .args(["--retries", "1", "--backoff", "10ms"])
                .arg(&file)
                .output()
                .unwrap()
        })
    };
    let out = run(ok.url()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.lines().next().unwrap().starts_with("200 "),
        "{stdout}"
    );
    assert!(stdout.contains("1 files: 1 delivered"), "{stdout}");

    let out = run(down.url()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL 502 "), "{stdout}");

    // A missing path is a clear error, not a panic.
    let out = Command::new(bin)
        .args([
            "replay",
            "--webhook",
            "http://127.0.0.1:9/",
            "--app-secret",
            "s",
            "/no/such/dir",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /no/such/dir"));
}

/// Meta's real signed capture (see the corpus's SOURCES.md): replay must
/// post its exact bytes, so our header equals the one Meta sent. Skipped
/// when the corpus is not beside the repository.
#[tokio::test]
async fn real_signed_capture_gets_metas_own_signature() {
    let Some(file) = wapipe_testkit::corpus::corpus_dir()
        .map(|d| d.join("messages/pywa-real-capture-text-signed.json"))
    else {
        eprintln!("skipped: shared/meta-corpus is not present");
        return;
    };
    let secret = "1222e786b144d0e85b9f365372d93676";
    let rx = receiver::spawn_receiver(secret, receiver::verifying()).await;
    let report = replay_paths(&[file], &ReplayConfig::new(rx.url(), secret))
        .await
        .unwrap();
    assert!(report.success());
    let got = rx.received();
    assert_eq!(
        got[0].signature.as_deref(),
        Some("sha256=54edfa1d7259e0eb13c677cc7d73d1b5c86cfa12433d19156e058ab9251bc441")
    );
}
