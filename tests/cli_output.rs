//! What the binary writes besides its results, run as a user would run it
//! (no RUST_LOG): one-shot commands print only their output and errors,
//! and `wapipe serve` says what to do when no number is configured.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// `migrate` is under test here: PostgreSQL databases start empty.
use wapipe_testkit::db::{TempDir, empty_postgres_url, fresh_sqlite_url};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // base64 of 32 bytes

struct Env {
    url: String,
    dir: TempDir,
}

impl Env {
    fn fresh() -> Self {
        let (url, dir) = fresh_sqlite_url().expect("temp dir");
        Self { url, dir }
    }

    /// The binary with a user's environment: no RUST_LOG, so the default
    /// log level of the command applies.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wapipe"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.url)
            .env("WAPIPE_SECRET_KEY", KEY)
            .env("WAPIPE_SECRET_KEY_FILE", self.dir.path().join("secret.key"));
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run wapipe")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn config_list_on_a_fresh_database_writes_nothing_on_stderr() {
    let env = Env::fresh();
    // The first command on a fresh file applies every migration.
    let out = env.run(&["config", "list"]);
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ID"),
        "the table header is the output"
    );
    assert_eq!(
        text(&out.stderr),
        "",
        "a command prints only its output and its errors"
    );
    // And the next one, with nothing pending.
    let out = env.run(&["config", "list", "--json"]);
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

/// Even at RUST_LOG=trace, no log line shows the database password (the
/// test server trusts 127.0.0.1, so the password is carried but unused).
#[tokio::test]
async fn trace_logs_never_show_the_database_password() {
    let url = empty_postgres_url().await.expect("test database");
    let url = url.replacen("postgres://postgres@", "postgres://postgres:s3cretpw@", 1);
    assert!(
        url.contains("s3cretpw"),
        "WAPIPE_TEST_PG is postgres://postgres@…"
    );
    let env = Env {
        url,
        dir: TempDir::new().expect("temp dir"),
    };
    for args in [&["migrate"][..], &["config", "list"]] {
        let out = env
            .command(args)
            .env("RUST_LOG", "trace")
            .output()
            .expect("run");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        for stream in [&out.stdout, &out.stderr] {
            let t = text(stream);
            assert!(!t.contains("s3cretpw"), "{args:?} leaked the password");
        }
        assert!(
            text(&out.stderr).contains("TRACE"),
            "trace logging is on, so the check means something"
        );
    }
}

#[test]
fn migrate_still_reports_its_work() {
    let env = Env::fresh();
    let out = env.run(&["migrate"]);
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("pending: 0"));
    assert!(
        text(&out.stderr).contains("database schema is up to date"),
        "migrate logs at info by default: {}",
        text(&out.stderr)
    );
}

/// Runs `wapipe serve` on free ports until it says it listens (or 60 s),
/// then stops it; returns its stderr lines up to that point.
fn serve_until_listening(env: &Env) -> Vec<String> {
    let mut child = env
        .command(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wapipe serve");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("listening");
                lines.push(line);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("listening")),
        "serve did not start: {lines:#?}"
    );
    lines
}

fn hints(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains("wapipe config add"))
        .collect()
}

#[test]
fn serve_without_a_number_says_what_to_do_next() {
    let env = Env::fresh();
    let lines = serve_until_listening(&env);
    let hint = hints(&lines);
    assert_eq!(hint.len(), 1, "one hint line: {lines:#?}");
    assert!(hint[0].contains("make sim"), "{}", hint[0]);
    assert!(hint[0].contains("INFO"), "{}", hint[0]);

    // Once a number is configured, the hint is gone.
    let out = env.run(&[
        "config",
        "add",
        "--company",
        "Acme",
        "--phone-number-id",
        "106540352242922",
        "--waba-id",
        "102290129340398",
        "--app-secret",
        "a",
        "--verify-token",
        "v",
        "--access-token",
        "t",
    ]);
    assert!(out.status.success(), "config add: {}", text(&out.stderr));
    let lines = serve_until_listening(&env);
    assert!(hints(&lines).is_empty(), "no hint: {lines:#?}");
}
