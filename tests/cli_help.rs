//! `wapipe --help` and every subcommand's help, run through the real binary
//! with secret-bearing environment variables set: no secret value may show,
//! and a subcommand's own flags come before the global settings' headings.

use std::process::Command;

const SECRET: &str = "s3cretpw";

/// Every variable whose value may hold a credential, each set to a value
/// holding [`SECRET`].
const SECRET_ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "postgres://u:s3cretpw@127.0.0.1/db"),
    ("AMQP_URL", "amqp://u:s3cretpw@127.0.0.1/%2f"),
    ("GRAPH_API_BASE", "https://u:s3cretpw@graph.example.com"),
    ("WAPIPE_SECRET_KEY", "s3cretpw-key"),
    ("WAPIPE_ACCESS_TOKEN", "EAAG-s3cretpw"),
    ("WAPIPE_APP_SECRET", "app-s3cretpw"),
    ("WAPIPE_VERIFY_TOKEN", "verify-s3cretpw"),
];

fn help(path: &[&str], flag: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wapipe"))
        .args(path)
        .arg(flag)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(SECRET_ENV.iter().copied())
        .output()
        .expect("run wapipe");
    assert!(
        out.status.success(),
        "wapipe {path:?} {flag} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands a help text lists under "Commands:" (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The root command and every subcommand, found by walking the help itself
/// so a new subcommand is covered without touching this test.
fn every_command_path() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        for sub in subcommands(&help(&args, "--help")) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        out.push(path);
    }
    out
}

#[test]
fn no_help_text_shows_a_secret() {
    let paths = every_command_path();
    // The walk found the nested commands, so the loop below covers them.
    for expected in [
        vec!["config", "add"],
        vec!["config", "update"],
        vec!["dlq", "list"],
        vec!["send"],
        vec!["serve"],
    ] {
        assert!(
            paths.iter().any(|p| p == &expected),
            "{expected:?} not found among {paths:?}"
        );
    }
    for path in &paths {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        for flag in ["--help", "-h"] {
            let text = help(&args, flag);
            assert!(
                !text.contains(SECRET),
                "`wapipe {} {flag}` shows a secret:\n{text}",
                args.join(" ")
            );
            // The variables are still named, only their values are hidden.
            assert!(
                text.contains("DATABASE_URL") && text.contains("AMQP_URL"),
                "`wapipe {} {flag}` should name DATABASE_URL and AMQP_URL:\n{text}",
                args.join(" ")
            );
        }
    }
    let add = help(&["config", "add"], "--help");
    for var in [
        "WAPIPE_ACCESS_TOKEN",
        "WAPIPE_APP_SECRET",
        "WAPIPE_VERIFY_TOKEN",
    ] {
        assert!(add.contains(var), "`config add --help` should name {var}");
    }
}

#[test]
fn a_subcommands_own_flags_come_before_the_global_settings() {
    let text = help(&["config", "add"], "--help");
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{text}"))
    };
    let own = at("--company");
    for heading in ["Database:", "Broker:", "Service settings:"] {
        assert!(
            own < at(heading),
            "--company should come before the {heading} heading:\n{text}"
        );
    }
    // Each global setting sits under its heading.
    assert!(at("Database:") < at("--database-url"));
    assert!(at("Broker:") < at("--amqp-url"));
    assert!(at("Service settings:") < at("--listen"));
}
