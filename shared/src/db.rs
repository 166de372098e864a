//! Database connections for both modes (SQLite embedded, PostgreSQL in
//! production). Throwaway databases for tests are the test kit's
//! (`wapipe-testkit`), so none of that ships in the library.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
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
    .sqlx_logging(false)
    // PRAGMAs other than journal_mode hold per connection, so they go in
    // the connect options: sqlx runs them on every connection it opens,
    // including those the pool opens later or reopens after an error.
    .map_sqlx_sqlite_opts(sqlite_pragmas);
    Database::connect(opts).await
}

/// The PRAGMAs every SQLite connection runs with.
fn sqlite_pragmas(opts: SqliteConnectOptions) -> SqliteConnectOptions {
    opts.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true)
}

/// How long a SQLite writer waits for the file lock before `SQLITE_BUSY`.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Splits rows for multi-row statements into chunks whose sizes are powers
/// of two (at most `max`, rounded down to one), largest first.
///
/// Every row count of a multi-row INSERT is a different SQL text, and each
/// new text costs a prepare round trip and a plan, and pushes another out
/// of the per-connection statement cache (sqlx keeps 100). With power-of-two
/// chunks a statement has at most log2(max) + 1 shapes, all of which stay
/// cached; the price is at most that many statements per batch.
pub fn pow2_chunks<T>(items: Vec<T>, max: usize) -> Vec<Vec<T>> {
    let max = if max <= 1 { 1 } else { 1 << max.ilog2() };
    let mut out = Vec::new();
    let mut rest = items.into_iter().peekable();
    let mut left = rest.len();
    while left > 0 {
        let size = std::cmp::min(max, 1 << left.ilog2());
        out.push(rest.by_ref().take(size).collect());
        left -= size;
    }
    out
}

/// Pads an `IN (…)` list to a power-of-two length by repeating its last
/// value (a no-op for the result), for the same reason as [`pow2_chunks`].
pub fn pad_pow2<T: Clone>(mut items: Vec<T>) -> Vec<T> {
    if let Some(last) = items.last().cloned() {
        let want = items.len().next_power_of_two();
        items.resize(want, last);
    }
    items
}

/// Runs a PostgreSQL statement that takes many rows as one `VALUES` list:
/// `UPDATE t SET … FROM {values} WHERE t.id = v.id`, one round trip for
/// rows that would otherwise be one statement each. `{values}` in `sql`
/// becomes `(VALUES (…), …) AS v(col, …)`, each column cast as `columns`
/// says (so NULLs are typed); `shared` values are `$1…$k`, the rows' values
/// follow. Rows are padded to a power of two by repeating the last one
/// ([`pad_pow2`]): PostgreSQL updates a target row once even when several
/// VALUES rows match it, so the padding changes nothing.
pub async fn with_values<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    shared: Vec<sea_orm::Value>,
    columns: &[(&str, &str)],
    rows: Vec<Vec<sea_orm::Value>>,
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    let rows = pad_pow2(rows);
    let mut n = shared.len();
    let mut params = shared;
    let mut tuples = Vec::with_capacity(rows.len());
    for row in rows {
        if row.len() != columns.len() {
            return Err(DbErr::Custom(format!(
                "a VALUES row has {} values for {} columns",
                row.len(),
                columns.len()
            )));
        }
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, cast)| {
                n += 1;
                format!("${n}::{cast}")
            })
            .collect();
        tuples.push(format!("({})", cells.join(", ")));
        params.extend(row);
    }
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let values = format!("(VALUES {}) AS v({})", tuples.join(", "), names.join(", "));
    db.query_all_raw(sea_orm::Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql.replace("{values}", &values),
        params,
    ))
    .await
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
    let path = std::path::Path::new(path);
    // The database holds phone numbers and message texts: its folder is
    // created 0700 and the file 0600 (SQLite gives its -wal and -shm files
    // the database file's mode), whatever the umask. Existing ones keep
    // the mode their owner gave them. Errors surface when SQLite opens it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent);
        }
        // An empty file is a new database to SQLite.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    #[cfg(not(unix))]
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

#[cfg(all(test, unix))]
mod file_mode_tests {
    use std::os::unix::fs::PermissionsExt;

    use sea_orm::ConnectionTrait;

    /// Under umask 000 too (as the issue saw it: data/ 0777, the files
    /// 0644), the folder is 0700 and the database and its WAL files 0600.
    #[tokio::test]
    async fn the_database_and_its_folder_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let file = data.join("wapipe.db");
        // SAFETY of the process-wide umask: this test binary's other tests
        // create no files.
        let old = unsafe { libc::umask(0) };
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = super::connect(&url, 2).await.expect("connect");
        db.execute_unprepared("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
            .await
            .expect("write");
        unsafe { libc::umask(old) };
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
        };
        assert_eq!(mode(&data), 0o700, "data/");
        assert_eq!(mode(&file), 0o600, "the database");
        for ext in ["db-wal", "db-shm"] {
            let p = file.with_extension(ext);
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(db);
    }
}

#[cfg(test)]
mod shape_tests {
    use super::{pad_pow2, pow2_chunks};

    #[test]
    fn chunks_are_powers_of_two_and_keep_every_row_in_order() {
        for n in 0..600usize {
            let chunks = pow2_chunks((0..n).collect(), 256);
            assert!(
                chunks
                    .iter()
                    .all(|c| c.len().is_power_of_two() && c.len() <= 256)
            );
            assert_eq!(chunks.concat(), (0..n).collect::<Vec<_>>());
        }
        assert_eq!(
            pow2_chunks(vec![1; 37], 300)
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>(),
            [32, 4, 1]
        );
        assert_eq!(pow2_chunks(vec![1; 3], 0).len(), 3);
    }

    #[test]
    fn padding_repeats_the_last_value() {
        assert_eq!(pad_pow2(vec![1, 2, 3]), [1, 2, 3, 3]);
        assert_eq!(pad_pow2(vec![1, 2]), [1, 2]);
        assert!(pad_pow2(Vec::<u8>::new()).is_empty());
    }
}

#[cfg(test)]
mod pragma_tests {
    use super::{SQLITE_BUSY_TIMEOUT, connect};
    use sea_orm::sqlx::{self, Row};
    use wapipe_testkit::db::fresh_sqlite_url;

    async fn pragma(conn: &mut sqlx::SqliteConnection, sql: &'static str) -> String {
        let row = sqlx::query(sql)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        // journal_mode answers text, the others integers.
        row.try_get::<String, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v.to_string()))
            .unwrap_or_else(|e| panic!("{sql} value: {e}"))
    }

    /// Every connection of the pool, not only the first, runs with the
    /// PRAGMAs: the pool is held at its size so each one is a distinct
    /// connection, opened after `connect` returned.
    #[tokio::test]
    async fn every_pooled_sqlite_connection_has_the_pragmas() {
        let (url, _dir) = fresh_sqlite_url().expect("temp dir");
        let db = connect(&url, 4).await.expect("connect");
        let pool = db.get_sqlite_connection_pool();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.acquire().await.expect("acquire"));
        }
        assert_eq!(pool.size(), 4, "four distinct connections are open");
        for (i, conn) in held.iter_mut().enumerate() {
            assert_eq!(
                pragma(conn, "PRAGMA journal_mode").await,
                "wal",
                "connection {i}"
            );
            // NORMAL is 1 (the SQLite default is FULL, 2).
            assert_eq!(
                pragma(conn, "PRAGMA synchronous").await,
                "1",
                "connection {i}"
            );
            assert_eq!(
                pragma(conn, "PRAGMA busy_timeout").await,
                SQLITE_BUSY_TIMEOUT.as_millis().to_string(),
                "connection {i}"
            );
            assert_eq!(
                pragma(conn, "PRAGMA foreign_keys").await,
                "1",
                "connection {i}"
            );
        }
    }
}

/// Begins a transaction that writes. On SQLite it is `BEGIN IMMEDIATE`:
/// the write lock is taken up front, waiting up to the busy timeout. A
/// deferred transaction that reads first and writes later fails at once
/// with SQLITE_BUSY (no waiting) when another connection committed in
/// between, because its read snapshot can no longer become a write one;
/// under load that failed CLI sends and requests. PostgreSQL ignores the
/// mode. Inside a transaction it is a savepoint, as `begin` is.
pub async fn begin_write<C>(db: &C) -> Result<C::Transaction, sea_orm::DbErr>
where
    C: sea_orm::TransactionTrait + ?Sized,
{
    db.begin_with_options(sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}
