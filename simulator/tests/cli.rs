//! The `wapipe-sim` binary end to end: nowork and graph servers as processes, load's --json output, and argument errors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_wapipe-sim");

/// A server subcommand as a child process, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Server { child, url }
}

#[test]
fn load_json_against_the_nowork_binary() {
    let nowork = start(&["nowork", "--listen", "127.0.0.1:0"]);
    let out = Command::new(BIN)
        .args(["load", "--webhook", &format!("{}/webhook", nowork.url)])
        .args([
            "--app-secret",
            "s",
            "--duration",
            "400ms",
            "--concurrency",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "sent",
        "accepted",
        "rejected",
        "errors",
        "elapsed_secs",
        "accepted_per_sec",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "inbound_messages",
    ] {
        assert!(
            v.get(field).is_some_and(|f| f.is_number()),
            "{field} in {v}"
        );
    }
    assert_eq!(v["accepted"], v["sent"]);
    assert!(v["sent"].as_u64().unwrap() > 10);
}

#[test]
fn graph_binary_serves_sends() {
    let graph = start(&[
        "graph",
        "--listen",
        "127.0.0.1:0",
        "--error",
        "130429:times=1",
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses = rt.block_on(async {
        let client = {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    };
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let resp = client
                .post(format!("{}/v21.0/42/messages", graph.url))
                .header("authorization", "Bearer t")
                .body(r#"{"messaging_product":"whatsapp","to":"1555","type":"text","text":{"body":"hi"}}"#)
                .send()
                .await
                .unwrap();
            statuses.push(resp.status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [400, 200]);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();

    let out = run(&[
        "load",
        "--webhook",
        "http://127.0.0.1:9/",
        "--app-secret",
        "s",
        "--duration",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));

    let out = run(&["graph", "--error", "131047:to"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("131047:to"));

    let out = run(&[
        "load",
        "--webhook",
        "http://10.9.8.7/w",
        "--app-secret",
        "s",
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be loopback"));

    let out = run(&[
        "load",
        "--webhook",
        "not a url",
        "--app-secret",
        "s",
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid webhook URL"));
}
