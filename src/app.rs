//! What every subcommand needs: logging, the database (migrated or checked),
//! and the secret key, resolved the same way everywhere.

use anyhow::{Context, Result, bail};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use sea_orm_migration::MigratorTrait;
use tracing_subscriber::EnvFilter;
use wapipe_migrations::Migrator;
use wapipe_shared::config::{Settings, redact_url};
use wapipe_shared::crypto::SecretKey;

/// How much a process logs when RUST_LOG does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDefault {
    /// Long-running roles and `migrate`: `info`, migrations included.
    Service,
    /// One-shot commands (`config`, `send`, `status`, …): they print their
    /// own output and their errors, so only warnings and errors are logged
    /// (no "Applying all pending migrations" on every run).
    Command,
}

impl LogDefault {
    fn filter(self) -> &'static str {
        match self {
            LogDefault::Service => "info",
            LogDefault::Command => "warn",
        }
    }
}

pub fn init_logging(json: bool, default: LogDefault) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default.filter()));
    // sea-orm's connect span records its options, the database URL and its
    // password included, at trace level: never enable that level there,
    // whatever RUST_LOG says.
    if let Ok(cap) = "sea_orm::driver=debug".parse() {
        filter = filter.add_directive(cap);
    }
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

/// After `make run` with no number configured the receiver accepts nothing;
/// say once what to do next. A failed count says nothing: this is a hint,
/// and the roles report database trouble themselves.
pub async fn hint_if_unconfigured(db: &DatabaseConnection) {
    use wapipe_shared::entities::whatsapp_configs::{Column, Entity};
    let active = Entity::find()
        .filter(Column::IsDeleted.eq(false))
        .filter(Column::IsActive.eq(true))
        .count(db)
        .await;
    if let Ok(0) = active {
        tracing::info!(
            "no WhatsApp number is configured yet: add one with `wapipe config add` \
             (`--help` lists its flags), or try wapipe against a fake Meta with `make sim`"
        );
    }
}
