//! What every subcommand needs: logging, the database (migrated or checked),
//! and the secret key, resolved the same way everywhere.

use anyhow::{Context, Result, bail};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use tracing_subscriber::EnvFilter;
use wapipe_migrations::Migrator;
use wapipe_shared::config::Settings;
use wapipe_shared::crypto::SecretKey;

pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr so stdout stays for results (`config add` prints an id).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The URL with any password masked, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub async fn connect(settings: &Settings) -> Result<DatabaseConnection> {
    let url = &settings.database_url;
    if !(url.starts_with("sqlite:") || wapipe_shared::db::is_postgres(url)) {
        bail!(
            "DATABASE_URL must start with sqlite:// or postgres:// (got {})",
            redact_url(url)
        );
    }
    wapipe_shared::db::connect(url, settings.db_pool)
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact_url(url)))
}

pub async fn migrate(settings: &Settings) -> Result<()> {
    let db = connect(settings).await?;
    Migrator::up(&db, None).await.context("migration failed")?;
    let applied = Migrator::get_applied_migrations(&db).await?.len();
    tracing::info!(applied, "database schema is up to date");
    println!("migrations applied: {applied}, pending: 0");
    Ok(())
}

/// Embedded mode migrates by itself; with Postgres, schema changes are an
/// explicit operator step, so a pending migration stops the process.
pub async fn connect_ready(settings: &Settings) -> Result<DatabaseConnection> {
    let db = connect(settings).await?;
    if settings.is_postgres() {
        let pending = Migrator::get_pending_migrations(&db).await?.len();
        if pending > 0 {
            bail!("{pending} database migration(s) pending: run `wapipe migrate` first");
        }
    } else {
        Migrator::up(&db, None).await.context("migration failed")?;
    }
    Ok(db)
}

pub fn secret_key(settings: &Settings) -> Result<SecretKey> {
    if let Some(k) = settings
        .secret_key
        .as_deref()
        .filter(|k| !k.trim().is_empty())
    {
        return Ok(SecretKey::from_base64(k)?);
    }
    if settings.is_postgres() {
        bail!(
            "WAPIPE_SECRET_KEY is required with PostgreSQL (base64 of 32 random bytes; \
             create one with `wapipe config gen-key`)"
        );
    }
    SecretKey::load_or_create(&settings.secret_key_file).with_context(|| {
        format!(
            "cannot load or create the secret key at {}",
            settings.secret_key_file.display()
        )
    })
}
