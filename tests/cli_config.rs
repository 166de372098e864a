//! `wapipe config` and `wapipe migrate` end to end through the real binary,
//! against a fresh PostgreSQL database and a fresh SQLite file.

use std::process::{Command, Output};

use sea_orm::{ConnectionTrait, Statement};
// `migrate` is under test here: PostgreSQL databases start empty.
use wapipe_testkit::db::{TempDir, empty_postgres_url, fresh_sqlite_url};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // base64 of 32 bytes

struct Env {
    url: String,
    _dir: TempDir,
}

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[("WAPIPE_SECRET_KEY", KEY)])
    }

    fn run_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wapipe"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.url)
            .env(
                "WAPIPE_SECRET_KEY_FILE",
                self._dir.path().join("secret.key"),
            )
            .env("RUST_LOG", "warn");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().expect("run wapipe")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

fn fails_with(o: Output, needle: &str) {
    assert!(!o.status.success(), "should fail: {}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "must not panic: {err}");
}

const ADD: &[&str] = &[
    "config",
    "add",
    "--company",
    "Acme",
    "--phone-number-id",
    "106540352242922",
    "--waba-id",
    "102290129340398",
    "--app-secret",
    "APPSECRET-plain-1",
    "--verify-token",
    "VERIFY-plain-2",
    "--access-token",
    "EAAG-plain-3",
    "--display-phone-number",
    "+15550001111",
    "--max-mps",
    "40",
];

async fn dump_configs(url: &str) -> String {
    let db = wapipe_shared::db::connect(url, 1).await.unwrap();
    let backend = db.get_database_backend();
    let sql = "SELECT company, phone_number_id, access_token_enc, app_secret_enc, verify_token_enc FROM whatsapp_configs";
    let rows = db
        .query_all_raw(Statement::from_string(backend, sql))
        .await
        .unwrap();
    let mut out = String::new();
    for r in rows {
        for i in 0..5 {
            let v: String = r.try_get_by_index(i).unwrap();
            out.push_str(&v);
            out.push('|');
        }
    }
    out
}

async fn config_lifecycle(env: Env, sqlite_file: Option<std::path::PathBuf>) {
    // migrate is idempotent.
    ok(env.run(&["migrate"]));
    ok(env.run(&["migrate"]));

    let out = ok(env.run(ADD));
    let id = out.lines().last().unwrap().trim().to_owned();
    uuid::Uuid::parse_str(&id).expect("last line of stdout is the id");

    let listed = ok(env.run(&["config", "list"]));
    assert!(
        listed.contains(&id) && listed.contains("106540352242922") && listed.contains("active")
    );
    let json = ok(env.run(&["config", "list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["phone_number_id"], "106540352242922");
    assert_eq!(v["max_mps"], 40);
    for secret in ["APPSECRET-plain-1", "VERIFY-plain-2", "EAAG-plain-3"] {
        assert!(
            !listed.contains(secret) && !json.contains(secret),
            "list leaks {secret}"
        );
    }

    // Plaintext is nowhere in the database; the ciphertext decrypts.
    let dump = dump_configs(&env.url).await;
    for secret in ["APPSECRET-plain-1", "VERIFY-plain-2", "EAAG-plain-3"] {
        assert!(!dump.contains(secret), "plaintext {secret} stored");
    }
    if let Some(file) = &sqlite_file {
        let bytes = std::fs::read(file).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains("EAAG-plain-3"),
            "plaintext in the sqlite file"
        );
    }
    let db = wapipe_shared::db::connect(&env.url, 1).await.unwrap();
    let key = wapipe_shared::crypto::SecretKey::from_base64(KEY).unwrap();
    let active = wapipe_shared::tenants::load_active(&db, &key)
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(active[0].access_token.expose_secret(), "EAAG-plain-3");
    assert_eq!(active[0].app_secret.expose_secret(), "APPSECRET-plain-1");

    // Duplicate phone_number_id.
    fails_with(env.run(ADD), "already exists");

    // update
    ok(env.run(&[
        "config",
        "update",
        &id,
        "--max-mps",
        "120",
        "--access-token",
        "EAAG-new-4",
    ]));
    let json = ok(env.run(&["config", "list", "--json"]));
    assert!(json.contains("\"max_mps\":120"), "{json}");
    let active = wapipe_shared::tenants::load_active(&db, &key)
        .await
        .unwrap();
    assert_eq!(active[0].access_token.expose_secret(), "EAAG-new-4");
    assert!(!dump_configs(&env.url).await.contains("EAAG-new-4"));

    // Bad input: each gets its own message and a non-zero exit.
    fails_with(
        env.run(&["config", "update", "not-a-uuid", "--max-mps", "1"]),
        "not a config id",
    );
    fails_with(
        env.run(&[
            "config",
            "update",
            "0190a0a0-0000-7000-8000-000000000000",
            "--max-mps",
            "5",
        ]),
        "no config with id",
    );
    fails_with(
        env.run(&["config", "update", &id, "--max-mps", "0"]),
        "max-mps",
    );
    let mut bad_phone = ADD.to_vec();
    bad_phone[5] = "12ab";
    fails_with(env.run(&bad_phone), "phone-number-id");
    let mut bad_waba = ADD.to_vec();
    bad_waba[5] = "999";
    bad_waba[7] = "";
    fails_with(env.run(&bad_waba), "waba-id");
    let missing: Vec<&str> = ADD
        .iter()
        .copied()
        .filter(|a| *a != "--waba-id" && *a != "102290129340398")
        .collect();
    fails_with(env.run(&missing), "--waba-id");
    fails_with(
        env.run_env(ADD, &[("WAPIPE_SECRET_KEY", "short")]),
        "WAPIPE_SECRET_KEY",
    );

    // remove is a soft delete: hidden from list, kept with --all.
    ok(env.run(&["config", "remove", &id]));
    let listed = ok(env.run(&["config", "list"]));
    assert!(!listed.contains(&id));
    let all = ok(env.run(&["config", "list", "--all"]));
    assert!(all.contains(&id) && all.contains("removed"));
    fails_with(env.run(&["config", "remove", &id]), "no config with id");
    assert!(
        wapipe_shared::tenants::load_active(&db, &key)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn config_lifecycle_postgres() {
    let url = empty_postgres_url().await.unwrap();
    let env = Env {
        url,
        _dir: TempDir::new().unwrap(),
    };
    // Postgres refuses to run without an explicit key.
    fails_with(
        env.run_env(&["config", "list"], &[]),
        "WAPIPE_SECRET_KEY is required",
    );
    config_lifecycle(env, None).await;
}

#[tokio::test]
async fn config_lifecycle_sqlite() {
    let (url, dir) = fresh_sqlite_url().unwrap();
    let file = dir.path().join("wapipe.sqlite");
    config_lifecycle(Env { url, _dir: dir }, Some(file)).await;
}

#[tokio::test]
async fn embedded_mode_generates_its_key_once() {
    let (url, dir) = fresh_sqlite_url().unwrap();
    let env = Env { url, _dir: dir };
    ok(env.run_env(&["config", "list"], &[]));
    let key_file = env._dir.path().join("secret.key");
    let first = std::fs::read_to_string(&key_file).unwrap();
    ok(env.run_env(&["config", "list"], &[]));
    assert_eq!(first, std::fs::read_to_string(&key_file).unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn bad_database_url_is_a_clear_error() {
    let env = Env {
        url: "mysql://x".into(),
        _dir: TempDir::new().unwrap(),
    };
    fails_with(env.run(&["migrate"]), "DATABASE_URL must start with");
}

#[test]
fn help_lists_every_setting_with_its_env_var() {
    let env = Env {
        url: "sqlite::memory:".into(),
        _dir: TempDir::new().unwrap(),
    };
    let help = ok(env.run(&["--help"]));
    for var in [
        "DATABASE_URL",
        "AMQP_URL",
        "WAPIPE_LISTEN",
        "WAPIPE_METRICS_LISTEN",
        "WAPIPE_SECRET_KEY",
        "GRAPH_API_BASE",
        "GRAPH_API_VERSION",
        "WAPIPE_QUEUE_PREFIX",
        "WAPIPE_RETRY_MAX_ATTEMPTS",
    ] {
        assert!(help.contains(var), "--help misses {var}");
    }
}
