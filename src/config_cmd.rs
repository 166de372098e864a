//! `wapipe config`: add, list, update and remove WhatsApp numbers. Secrets go
//! in through flags or env vars and never come out.

use anyhow::{Context, Result};
use clap::Subcommand;
use uuid::Uuid;
use wapipe_shared::config::Settings;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::tenants::{self, ConfigPatch, NewConfig};

use crate::app;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Add a WhatsApp number; prints the new config's id as the last line.
    Add {
        /// The business this number belongs to (shown in `config list`).
        #[arg(long)]
        company: String,
        /// Meta's phone number id (digits).
        #[arg(long)]
        phone_number_id: String,
        /// The WhatsApp Business Account id (digits).
        #[arg(long)]
        waba_id: String,
        /// The Meta app secret that signs webhooks.
        #[arg(long, env = "WAPIPE_APP_SECRET", hide_env_values = true)]
        app_secret: String,
        /// The token Meta echoes in the verification handshake.
        #[arg(long, env = "WAPIPE_VERIFY_TOKEN", hide_env_values = true)]
        verify_token: String,
        /// The Graph API access token used for sends.
        #[arg(long, env = "WAPIPE_ACCESS_TOKEN", hide_env_values = true)]
        access_token: String,
        /// The number as customers see it, e.g. +15550001111 (informational).
        #[arg(long)]
        display_phone_number: Option<String>,
        /// A label for this number, e.g. "Support" (informational).
        #[arg(long)]
        name: Option<String>,
        /// Messages per second Meta allows this number.
        #[arg(long, default_value_t = 80)]
        max_mps: i32,
    },
    /// List configs (never prints a secret).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Include removed configs.
        #[arg(long)]
        all: bool,
    },
    /// Change a config; only the flags given change.
    Update {
        /// The config's id (a UUID).
        id: String,
        /// New business name.
        #[arg(long)]
        company: Option<String>,
        /// New label for the number.
        #[arg(long)]
        name: Option<String>,
        /// New WhatsApp Business Account id (digits).
        #[arg(long)]
        waba_id: Option<String>,
        /// New display form of the number, e.g. +15550001111.
        #[arg(long)]
        display_phone_number: Option<String>,
        /// New Meta app secret (stored encrypted).
        #[arg(long)]
        app_secret: Option<String>,
        /// New verification-handshake token (stored encrypted).
        #[arg(long)]
        verify_token: Option<String>,
        /// New Graph API access token (stored encrypted).
        #[arg(long)]
        access_token: Option<String>,
        /// New messages-per-second limit.
        #[arg(long)]
        max_mps: Option<i32>,
        /// Stop routing webhooks and sends for this number without removing it.
        #[arg(long, conflicts_with = "activate")]
        deactivate: bool,
        /// Route webhooks and sends for this number again.
        #[arg(long)]
        activate: bool,
        /// Clear a flag set after Meta refused the token or locked the account.
        #[arg(long)]
        clear_flag: bool,
    },
    /// Remove a config (soft delete: history stays).
    Remove {
        /// The config's id (a UUID).
        id: String,
    },
    /// Print a new random WAPIPE_SECRET_KEY.
    GenKey,
}

fn parse_id(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id.trim())
        .with_context(|| format!("{id:?} is not a config id (expected a UUID)"))
}

pub async fn run(settings: &Settings, cmd: ConfigCommand) -> Result<()> {
    if let ConfigCommand::GenKey = cmd {
        println!("{}", SecretKey::generate().to_base64());
        return Ok(());
    }
    let key = app::secret_key(settings)?;
    let db = app::connect_ready(settings).await?;
    match cmd {
        ConfigCommand::Add {
            company,
            phone_number_id,
            waba_id,
            app_secret,
            verify_token,
            access_token,
            display_phone_number,
            name,
            max_mps,
        } => {
            let m = tenants::add(
                &db,
                &key,
                NewConfig {
                    company,
                    name,
                    phone_number_id,
                    waba_id,
                    display_phone_number,
                    app_secret,
                    verify_token,
                    access_token,
                    webhook_secret: None,
                    max_mps,
                },
            )
            .await?;
            eprintln!("added config for {} ({})", m.phone_number_id, m.company);
            println!("{}", m.id);
        }
        ConfigCommand::List { json, all } => {
            let rows = tenants::list(&db, all).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<36}  {:<20}  {:<17}  {:<17}  {:>7}  {:<8}  FLAG",
                    "ID", "COMPANY", "PHONE_NUMBER_ID", "WABA_ID", "MAX_MPS", "STATE"
                );
                for r in &rows {
                    let state = if r.is_deleted {
                        "removed"
                    } else if r.is_active {
                        "active"
                    } else {
                        "inactive"
                    };
                    println!(
                        "{:<36}  {:<20}  {:<17}  {:<17}  {:>7}  {:<8}  {}",
                        r.id,
                        r.company,
                        r.phone_number_id,
                        r.waba_id,
                        r.max_mps,
                        state,
                        r.flagged_reason.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        ConfigCommand::Update {
            id,
            company,
            name,
            waba_id,
            display_phone_number,
            app_secret,
            verify_token,
            access_token,
            max_mps,
            deactivate,
            activate,
            clear_flag,
        } => {
            let id = parse_id(&id)?;
            let is_active = match (activate, deactivate) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let m = tenants::update(
                &db,
                &key,
                id,
                ConfigPatch {
                    company,
                    name,
                    waba_id,
                    display_phone_number,
                    app_secret,
                    verify_token,
                    access_token,
                    max_mps,
                    is_active,
                    clear_flag,
                },
            )
            .await?;
            println!("updated {}", m.id);
        }
        ConfigCommand::Remove { id } => {
            let id = parse_id(&id)?;
            tenants::remove(&db, id).await?;
            println!("removed {id}");
        }
        ConfigCommand::GenKey => {}
    }
    Ok(())
}
