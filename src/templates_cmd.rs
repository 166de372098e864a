//! `wapipe templates sync --config ID`: fetches the number's WhatsApp
//! templates from the Graph API (every page) and upserts them
//! (`wapipe_domain::templates::sync`, shared with the API and its periodic
//! job).

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;
use uuid::Uuid;
use wapipe_domain::configs::{ConfigCache, DEFAULT_TTL};
use wapipe_domain::templates::{self, GraphTarget};
use wapipe_shared::config::Settings;

use crate::app;

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Fetch the number's templates from Meta and store them.
    Sync {
        /// The config (WhatsApp number) id, from `wapipe config list`.
        #[arg(long)]
        config: String,
    },
}

pub async fn run(settings: &Settings, cmd: TemplatesCommand) -> Result<()> {
    let TemplatesCommand::Sync { config } = cmd;
    let id = Uuid::parse_str(config.trim())
        .with_context(|| format!("--config {config:?} is not a config id (a UUID)"))?;
    let db = app::connect_ready(settings).await?;
    let key = Arc::new(app::secret_key(settings)?);
    let configs = ConfigCache::new(db.clone(), Some(key), DEFAULT_TTL);
    let report = templates::sync(
        &db,
        &configs,
        &GraphTarget {
            base: settings.graph_api_base.clone(),
            version: settings.graph_api_version.clone(),
        },
        id,
    )
    .await?;
    eprintln!(
        "synced {} template(s) in {} page(s) from Meta",
        report.templates, report.pages
    );
    Ok(())
}
