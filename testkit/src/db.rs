//! Throwaway databases, one per test, so tests run in parallel without
//! sharing state (DESIGN §8).
//!
//! A migrated database is a copy of a template migrated once: on
//! PostgreSQL `CREATE DATABASE … TEMPLATE wapipe_tpl_<hash>`, on SQLite a
//! copy of a migrated file. `<hash>` covers the migrations' names and
//! sources, so a changed migration gets a new template instead of a stale
//! one. Tests of the migrations themselves take an empty database
//! ([`empty_postgres_url`], [`fresh_sqlite_url`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use sea_orm::{DatabaseConnection, DbErr};
use sha2::{Digest, Sha256};
use wapipe_migrations::{Migrator, MigratorTrait};
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::db::connect;
use wapipe_shared::tenants::{self, NewConfig};

pub use tempfile::TempDir;

/// Why a test database could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgreSQL admin connection ({url}): {source}")]
    Admin { url: String, source: sqlx::Error },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("temp file: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} still has other sessions after {1:?}")]
    Busy(String, Duration),
}

/// The two databases wapipe runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The admin URL of the test server; `WAPIPE_TEST_PG` overrides it.
pub fn pg_admin_url() -> String {
    std::env::var("WAPIPE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the admin URL's server.
fn pg_url(name: &str) -> String {
    let admin = pg_admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

async fn admin() -> Result<PgConnection, Error> {
    let url = pg_admin_url();
    PgConnection::connect(&url)
        .await
        .map_err(|source| Error::Admin { url, source })
}

async fn exec(conn: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// `object_in_use`: another session is connected to the database that
/// CREATE DATABASE … TEMPLATE or ALTER DATABASE … RENAME needs alone.
const IN_USE: &str = "55006";
/// `invalid_catalog_name`: the template is gone (`make clean-test-dbs`
/// ran while this process was using it).
const NO_SUCH_DATABASE: &str = "3D000";
/// How long to wait for a closed session to leave the server.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Runs `sql` again while PostgreSQL says the database it needs is in use:
/// a pool we closed can take a moment to leave the server.
async fn exec_when_free(conn: &mut PgConnection, sql: String, what: &str) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        match exec(conn, sql.clone()).await {
            Err(e) if sqlstate(&e).as_deref() == Some(IN_USE) => {
                if start.elapsed() > BUSY_WAIT {
                    return Err(Error::Busy(what.to_owned(), BUSY_WAIT));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other.map_err(Error::from),
        }
    }
}

/// A short hash of the migrations: their names and the hash of their
/// sources taken when they were compiled (`wapipe_migrations::SOURCE_HASH`),
/// so a template is always made by the code its name describes.
pub fn migrations_hash() -> String {
    let mut h = Sha256::new();
    for m in Migrator::migrations() {
        h.update(m.name().as_bytes());
        h.update([0]);
    }
    h.update(wapipe_migrations::SOURCE_HASH.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// The name of this migration set's PostgreSQL template.
pub fn pg_template_name() -> String {
    format!("wapipe_tpl_{}", migrations_hash())
}

/// An arbitrary constant: the advisory lock that serialises template
/// builds across test processes.
const TEMPLATE_LOCK: i64 = 0x7761_7069_7065_7470;

/// The template once this process has seen it exist.
static PG_TEMPLATE: tokio::sync::Mutex<Option<String>> = tokio::sync::Mutex::const_new(None);

async fn pg_template() -> Result<String, Error> {
    let mut known = PG_TEMPLATE.lock().await;
    if let Some(name) = known.as_ref() {
        return Ok(name.clone());
    }
    let name = pg_template_name();
    let mut admin = admin().await?;
    // Session-level, on this one connection: held until the unlock below
    // (or until the connection goes, if this process dies).
    exec(
        &mut admin,
        format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"),
    )
    .await?;
    let built = ensure_pg_template(&mut admin, &name).await;
    let unlocked = exec(
        &mut admin,
        format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"),
    )
    .await;
    let _ = admin.close().await;
    built?;
    unlocked?;
    *known = Some(name.clone());
    Ok(name)
}

/// Builds the template unless it exists: migrated under another name and
/// renamed when complete, so a build cut short never passes for a template.
async fn ensure_pg_template(admin: &mut PgConnection, name: &str) -> Result<(), Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await?;
    if exists {
        return Ok(());
    }
    let building = format!("{name}_new");
    exec(
        admin,
        format!("DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"),
    )
    .await?;
    exec(admin, format!("CREATE DATABASE \"{building}\"")).await?;
    let db = connect(&pg_url(&building), 1).await?;
    let migrated = Migrator::up(&db, None).await;
    db.close().await?;
    migrated?;
    exec_when_free(
        admin,
        format!("ALTER DATABASE \"{building}\" RENAME TO \"{name}\""),
        &building,
    )
    .await
}

/// A new, empty database on the test server (for tests of the migrations
/// themselves). Named `wapipe_t_<uuid>`: `make test` drops what is left.
pub async fn empty_postgres_url() -> Result<String, Error> {
    let name = format!("wapipe_t_{}", uuid::Uuid::now_v7().simple());
    let mut admin = admin().await?;
    exec(&mut admin, format!("CREATE DATABASE \"{name}\"")).await?;
    let _ = admin.close().await;
    Ok(pg_url(&name))
}

/// A new database with the whole schema, cloned from the template.
pub async fn fresh_postgres_url() -> Result<String, Error> {
    let name = format!("wapipe_t_{}", uuid::Uuid::now_v7().simple());
    let mut admin = admin().await?;
    let template = pg_template().await?;
    let create = |template: &str| format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
    match exec_when_free(&mut admin, create(&template), &template).await {
        Err(Error::Postgres(e)) if sqlstate(&e).as_deref() == Some(NO_SUCH_DATABASE) => {
            // Dropped under us: build it again, once.
            PG_TEMPLATE.lock().await.take();
            let template = pg_template().await?;
            exec_when_free(&mut admin, create(&template), &template).await?;
        }
        other => other?,
    }
    let _ = admin.close().await;
    Ok(pg_url(&name))
}

/// An empty SQLite file in a fresh temp folder; the folder lives as long
/// as the returned guard.
pub fn fresh_sqlite_url() -> std::io::Result<(String, TempDir)> {
    let dir = temp_dir()?;
    let url = sqlite_url(&dir.path().join("wapipe.sqlite"));
    Ok((url, dir))
}

/// A temp folder removed on drop.
pub fn temp_dir() -> std::io::Result<TempDir> {
    tempfile::Builder::new().prefix("wapipe-").tempdir()
}

fn sqlite_url(file: &Path) -> String {
    format!("sqlite://{}?mode=rwc", file.display())
}

/// The migrated SQLite file copies start from, in the temp folder and
/// named by the migrations' hash; shared by every test process.
async fn sqlite_template() -> Result<PathBuf, Error> {
    static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let path = std::env::temp_dir().join(format!("wapipe-tpl-{}.sqlite", migrations_hash()));
    if path.is_file() {
        return Ok(path);
    }
    // One build per process; other processes may build theirs meanwhile.
    let _building = BUILDING.lock().await;
    if path.is_file() {
        return Ok(path);
    }
    let dir = temp_dir()?;
    let db = connect(&sqlite_url(&dir.path().join("build.sqlite")), 1).await?;
    Migrator::up(&db, None).await?;
    // VACUUM INTO writes one self-contained file (no WAL beside it); the
    // rename makes it appear whole, whoever else builds it at the same time.
    let part = dir.path().join("template.sqlite");
    sea_orm::ConnectionTrait::execute_unprepared(&db, &format!("VACUUM INTO '{}'", part.display()))
        .await?;
    db.close().await?;
    if std::fs::rename(&part, &path).is_err() {
        // Another file system: copy beside the target, then rename there.
        let beside = path.with_extension(format!("{}.part", uuid::Uuid::now_v7().simple()));
        std::fs::copy(&part, &beside)?;
        std::fs::rename(&beside, &path)?;
    }
    Ok(path)
}

/// A SQLite file with the whole schema (a copy of the template) in a fresh
/// temp folder.
pub async fn fresh_sqlite_migrated_url() -> Result<(String, TempDir), Error> {
    let dir = temp_dir()?;
    let url = migrated_sqlite_in(dir.path()).await?;
    Ok((url, dir))
}

/// Copies the template to `dir/wapipe.sqlite`; returns its URL.
pub async fn migrated_sqlite_in(dir: &Path) -> Result<String, Error> {
    let file = dir.join("wapipe.sqlite");
    std::fs::copy(sqlite_template().await?, &file)?;
    Ok(sqlite_url(&file))
}

/// A migrated database on `backend`: its URL, and the temp folder of a
/// SQLite file (removed on drop).
pub async fn fresh_url(backend: Backend) -> Result<(String, Option<TempDir>), Error> {
    Ok(match backend {
        Backend::Postgres => (fresh_postgres_url().await?, None),
        Backend::Sqlite => {
            let (url, dir) = fresh_sqlite_migrated_url().await?;
            (url, Some(dir))
        }
    })
}

/// A migrated database, connected.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub db: DatabaseConnection,
    /// The SQLite file's folder; `None` on PostgreSQL.
    pub dir: Option<TempDir>,
}

/// A migrated database on `backend` with a pool of `pool` connections;
/// panics with what to check when the server is not there.
pub async fn migrated(backend: Backend, pool: u32) -> TestDb {
    let (url, dir) = fresh_url(backend).await.unwrap_or_else(|e| {
        panic!("a {backend:?} test database (is PostgreSQL on 127.0.0.1:5432?): {e}")
    });
    let db = connect(&url, pool)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    TestDb {
        backend,
        url,
        db,
        dir,
    }
}

/// Adds a config (an encrypted tenant row, keyed by [`crate::KEY`]);
/// returns its id.
pub async fn add_config(
    db: &DatabaseConnection,
    phone: &str,
    waba: &str,
    company: &str,
) -> uuid::Uuid {
    let key = SecretKey::from_base64(crate::KEY).expect("key");
    tenants::add(
        db,
        &key,
        NewConfig {
            company: company.into(),
            name: None,
            phone_number_id: phone.into(),
            waba_id: waba.into(),
            display_phone_number: None,
            app_secret: "secret".into(),
            verify_token: "verify".into(),
            access_token: "EAAG".into(),
            webhook_secret: None,
            max_mps: 80,
        },
    )
    .await
    .expect("add config")
    .id
}

/// A WhatsApp template on `config` as the template sync leaves it
/// (category UTILITY, active, `body` as its BODY component).
pub async fn add_template(
    db: &DatabaseConnection,
    config: uuid::Uuid,
    name: &str,
    language: &str,
    body: &str,
    status: &str,
) -> uuid::Uuid {
    use sea_orm::{ActiveValue::Set, EntityTrait};
    use wapipe_shared::entities::templates;
    let id = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    templates::Entity::insert(templates::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config),
        name: Set(name.to_owned()),
        language: Set(language.to_owned()),
        category: Set("UTILITY".to_owned()),
        status: Set(status.to_owned()),
        components: Set(Some(serde_json::json!([{"type": "BODY", "text": body}]))),
        usage_count: Set(0),
        is_deleted: Set(false),
        is_active: Set(true),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .expect("template");
    id
}

/// Runs the async fn `$name(Backend)` once per backend, as two tests
/// (`$name::postgres` and `$name::sqlite`); extra tokens are passed to
/// `#[tokio::test(…)]`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident $(, $($flavor:tt)*)?) => {
        mod $name {
            #[tokio::test$(($($flavor)*))?]
            async fn postgres() {
                super::$name($crate::db::Backend::Postgres).await;
            }
            #[tokio::test$(($($flavor)*))?]
            async fn sqlite() {
                super::$name($crate::db::Backend::Sqlite).await;
            }
        }
    };
}
