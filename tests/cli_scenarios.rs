//! `wapipe scenarios`, `wapipe block` and `wapipe customers` through the
//! real binary, on a fresh PostgreSQL database and a fresh SQLite file:
//! the flow file's import/export round trip, and bad input answered with
//! one clear line on stderr and a non-zero exit.

use std::process::{Command, Output};

use sea_orm::{ConnectionTrait, Statement};
use wapipe_domain::scenarios::FlowFile;
use wapipe_testkit::db::{TempDir, fresh_postgres_url, fresh_sqlite_url};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

struct Env {
    url: String,
    dir: TempDir,
}

impl Env {
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

    fn file(&self, name: &str, content: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        p.display().to_string()
    }

    fn add_config(&self) -> String {
        let out = ok(self.run(&[
            "config",
            "add",
            "--company",
            "Boutique",
            "--phone-number-id",
            "106540352242922",
            "--waba-id",
            "102290129340398",
            "--app-secret",
            "s",
            "--verify-token",
            "v",
            "--access-token",
            "EAAG",
        ]));
        out.lines().last().expect("id").trim().to_owned()
    }

    async fn count(&self, sql: &str) -> i64 {
        let db = wapipe_shared::db::connect(&self.url, 1)
            .await
            .expect("connect");
        let row = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .expect("query")
            .expect("row");
        row.try_get_by_index::<i64>(0).expect("count")
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

/// Fails with one line on stderr that mentions `needle`.
fn fails_with(o: Output, needle: &str) {
    assert!(!o.status.success(), "should fail: {}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
}

const FLOW: &str = r#"{
  "settings": {"fallback": "Je n'ai pas compris.", "exit_keywords": ["stop", "menu"],
               "default_scenario": "Accueil"},
  "scenarios": [
    {"title": "Accueil", "keywords": ["bonjour", "hello"], "priority": 5,
     "items": [
       {"ref": "hello", "type": "button", "label": "Bonjour ! / Hello!",
        "children": ["offers", "human"]},
       {"ref": "offers", "type": "product_list", "title": "Offres / Offers",
        "label": "Nos offres / Our offers", "template_scenarios": ["summer"]},
       {"ref": "human", "type": "handoff", "title": "Conseiller / Agent",
        "label": "Un conseiller arrive. / An agent is coming."}
     ]},
    {"title": "Aide", "type": "generic", "keywords": ["aide", "help"], "repeat_count": 3,
     "items": [{"ref": "help", "type": "text", "label": "Tapez bonjour. / Type hello."}]}
  ],
  "template_scenarios": [
    {"ref": "summer", "thumbnail_id": "sku-1", "catalog_id": "1537358196820123",
     "header": "Été / Summer",
     "sections": [{"title": "Été", "product_items": ["sku-1", "sku-2"]}]}
  ]
}"#;

async fn round_trip_and_errors(env: Env) {
    let config = env.add_config();
    let flow = env.file("flow.json", FLOW);

    let out = ok(env.run(&["scenarios", "import", "--config", &config, &flow]));
    assert!(out.contains("created"), "{out}");
    assert!(
        out.contains("imported 2 scenarios, 1 template scenarios, settings"),
        "{out}"
    );
    let list = ok(env.run(&["scenarios", "list", "--config", &config]));
    let accueil = list.find("Accueil").expect("Accueil listed");
    let aide = list.find("Aide").expect("Aide listed");
    assert!(accueil < aide, "the config's own first: {list}");

    // Export, import the export back, export again: the same file.
    let first = ok(env.run(&["scenarios", "export", "--config", &config]));
    assert_eq!(
        FlowFile::parse(&first).expect("the export parses"),
        FlowFile::parse(FLOW).expect("parses")
    );
    let again = env.file("exported.json", &first);
    let out = ok(env.run(&["scenarios", "import", "--config", &config, &again]));
    assert!(out.contains("replaced"), "{out}");
    let second = ok(env.run(&["scenarios", "export", "--config", &config]));
    assert_eq!(first, second);
    assert_eq!(env.count("SELECT COUNT(*) FROM scenarios").await, 2);

    // Bad input: one line, non-zero exit, nothing written.
    let broken = FLOW.replace(
        r#""children": ["offers", "human"]"#,
        r#""children": ["offers", "nobody"]"#,
    );
    let broken = env.file("broken.json", &broken);
    fails_with(
        env.run(&["scenarios", "import", "--config", &config, &broken]),
        "scenarios[0].items[0].children[1]",
    );
    let cyclic = FLOW.replace(
        r#""title": "Conseiller / Agent","#,
        r#""title": "Conseiller / Agent", "children": ["hello"],"#,
    );
    let cyclic = env.file("cyclic.json", &cyclic);
    fails_with(
        env.run(&["scenarios", "import", "--config", &config, &cyclic]),
        "scenarios[0].items[2].children[0]",
    );
    let unknown = env.file(
        "unknown.json",
        &FLOW.replace(r#""type": "handoff""#, r#""type": "human""#),
    );
    fails_with(
        env.run(&["scenarios", "import", "--config", &config, &unknown]),
        "scenarios[0].items[2].type",
    );
    let extra = env.file(
        "extra.json",
        &FLOW.replace(r#""priority": 5,"#, r#""priority": 5, "colour": "red","#),
    );
    fails_with(
        env.run(&["scenarios", "import", "--config", &config, &extra]),
        "scenarios[0].colour",
    );
    let long = env.file(
        "long.json",
        &FLOW.replace("Offres / Offers", "Offres spéciales / Offers"),
    );
    fails_with(
        env.run(&["scenarios", "import", "--config", &config, &long]),
        "scenarios[0].items[1].title",
    );
    fails_with(
        env.run(&[
            "scenarios",
            "import",
            "--config",
            &config,
            &env.file("x.json", "{not json"),
        ]),
        "not JSON",
    );
    fails_with(
        env.run(&[
            "scenarios",
            "import",
            "--config",
            &config,
            "/nonexistent/flow.json",
        ]),
        "cannot read",
    );
    fails_with(
        env.run(&["scenarios", "import", "--config", "nope", &flow]),
        "is not a config id",
    );
    fails_with(
        env.run(&[
            "scenarios",
            "export",
            "--config",
            "0190a0a0-0000-7000-8000-000000000000",
        ]),
        "no WhatsApp config",
    );
    assert_eq!(
        second,
        ok(env.run(&["scenarios", "export", "--config", &config]))
    );

    // Blocked numbers, each change in the audit log.
    ok(env.run(&[
        "block",
        "add",
        "--config",
        &config,
        "--phone",
        "+33612345678",
        "--reason",
        "spam",
    ]));
    let list = ok(env.run(&["block", "list", "--config", &config]));
    assert!(
        list.contains("33612345678") && list.contains("spam"),
        "{list}"
    );
    ok(env.run(&[
        "block",
        "remove",
        "--config",
        &config,
        "--phone",
        "33612345678",
    ]));
    assert!(!ok(env.run(&["block", "list", "--config", &config])).contains("33612345678"));
    fails_with(
        env.run(&[
            "block",
            "remove",
            "--config",
            &config,
            "--phone",
            "33612345678",
        ]),
        "is not blocked",
    );
    fails_with(
        env.run(&["block", "add", "--config", &config, "--phone", "12-34"]),
        "is not a WhatsApp number",
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM audit_log WHERE action LIKE 'number.%'")
            .await,
        2
    );

    // Deny and allow a scenario.
    let out = ok(env.run(&[
        "customers",
        "deny-scenario",
        "--config",
        &config,
        "--phone",
        "33612345678",
        "--scenario",
        "Accueil",
    ]));
    assert!(out.contains("denied"), "{out}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM customer_blocked_scenarios")
            .await,
        1
    );
    ok(env.run(&[
        "customers",
        "allow-scenario",
        "--config",
        &config,
        "--phone",
        "33612345678",
        "--scenario",
        "Accueil",
    ]));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM customer_blocked_scenarios")
            .await,
        0
    );
    fails_with(
        env.run(&[
            "customers",
            "deny-scenario",
            "--config",
            &config,
            "--phone",
            "33612345678",
            "--scenario",
            "Nope",
        ]),
        "no scenario titled \"Nope\"",
    );
}

#[tokio::test]
async fn scenarios_cli_postgres() {
    let url = fresh_postgres_url().await.expect("postgres");
    let dir = TempDir::new().expect("dir");
    // PostgreSQL needs an explicit migration step.
    let env = Env { url, dir };
    ok(env.run(&["migrate"]));
    round_trip_and_errors(env).await;
}

#[tokio::test]
async fn scenarios_cli_sqlite() {
    let (url, dir) = fresh_sqlite_url().expect("sqlite");
    round_trip_and_errors(Env { url, dir }).await;
}
