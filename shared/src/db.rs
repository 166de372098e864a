//! Database connections for both modes (SQLite embedded, PostgreSQL in
//! production), and throwaway databases for tests.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

/// Opens a pool. SQLite gets WAL and a busy timeout because `serve` runs every
/// role against one file; Postgres gets a pool large enough for group commit,
/// the relay and the workers side by side.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite:");
    if sqlite {
        ensure_sqlite_dir(url);
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(if sqlite {
        max_connections.min(8)
    } else {
        max_connections
    })
    .min_connections(1)
    .connect_timeout(Duration::from_secs(5))
    .acquire_timeout(Duration::from_secs(5))
    .sqlx_logging(false);
    let db = Database::connect(opts).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA busy_timeout = 5000",
            "PRAGMA foreign_keys = ON",
        ] {
            db.execute_unprepared(pragma).await?;
        }
    }
    Ok(db)
}

/// `sqlite://./data/wapipe.sqlite?mode=rwc` creates the file but not its
/// folder; create the folder so `make run` works on a fresh clone.
fn ensure_sqlite_dir(url: &str) {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return;
    }
    if let Some(parent) = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        let _ = std::fs::create_dir_all(parent);
    }
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Throwaway databases, one per test, so tests run in parallel without
/// sharing state (DESIGN §8).
pub mod testing {
    use super::*;

    /// The admin URL of the test server; `WAPIPE_TEST_PG` overrides it.
    pub fn pg_admin_url() -> String {
        std::env::var("WAPIPE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// A test database on the server: its URL and a guard-free name (tests
    /// are short-lived; `make test` drops leftovers named `wapipe_t_*`).
    pub async fn fresh_postgres_url() -> Result<String, DbErr> {
        let admin_url = pg_admin_url();
        let name = format!("wapipe_t_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect(admin_url.as_str()).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        admin.close().await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin_url);
        Ok(format!("{base}/{name}"))
    }

    /// A SQLite file in a fresh temp folder; the folder lives as long as the
    /// returned guard.
    pub fn fresh_sqlite_url() -> std::io::Result<(String, TempDir)> {
        let dir = TempDir::new()?;
        let url = format!("sqlite://{}/wapipe.sqlite?mode=rwc", dir.path().display());
        Ok((url, dir))
    }

    /// A temp folder removed on drop (kept dependency-free on purpose).
    pub struct TempDir(std::path::PathBuf);
    impl TempDir {
        pub fn new() -> std::io::Result<Self> {
            let p = std::env::temp_dir().join(format!("wapipe-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&p)?;
            Ok(Self(p))
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
