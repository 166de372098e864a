//! `wapipe apikey create|list|revoke`: keys of the agents' REST API. The
//! key is printed once, at creation; only its sha256 is stored.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use uuid::Uuid;
use wapipe_domain::apikeys::{self, NewKey};
use wapipe_shared::config::Settings;

use crate::app;

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key; prints it once, as the last line.
    Create {
        /// An admin key: every permission.
        #[arg(long, conflicts_with = "agent")]
        admin: bool,
        /// With --admin: limit the key to this company (repeat for several);
        /// without any, the key is the operator's, for every company.
        #[arg(long, requires = "admin")]
        company: Vec<String>,
        /// An agent key acting as this agent (a UUID, see `wapipe agents list`),
        /// with the agent's permissions, in the agent's company.
        #[arg(long)]
        agent: Option<String>,
        /// A name to tell keys apart (default: `admin`, or the agent's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never the keys themselves).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it answers 401 from now on.
    Revoke {
        /// The key's id (from `wapipe apikey list`).
        id: String,
    },
}

pub async fn run(settings: &Settings, cmd: ApikeyCommand) -> Result<()> {
    let db = app::connect_ready(settings).await?;
    match cmd {
        ApikeyCommand::Create {
            admin,
            company,
            agent,
            name,
        } => {
            let new = match (admin, agent) {
                (true, None) => NewKey::Admin {
                    name,
                    companies: company,
                },
                (false, Some(a)) => NewKey::Agent {
                    agent_id: Uuid::parse_str(a.trim())
                        .with_context(|| format!("--agent {a:?} is not an agent id (a UUID)"))?,
                    name,
                },
                _ => bail!("pass --admin [--company NAME]... or --agent ID"),
            };
            let created = apikeys::create(&db, new).await?;
            eprintln!(
                "created {} key {} ({}); it is shown once, keep it safe:",
                created.row.kind, created.row.id, created.row.name
            );
            println!("{}", created.secret);
        }
        ApikeyCommand::List { json } => {
            let rows = apikeys::list(&db).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<36}  {:<6}  {:<14}  {:<20}  {:<20}  STATE",
                    "ID", "KIND", "PREFIX", "NAME", "SCOPE"
                );
                for r in &rows {
                    let scope = match (r.agent_id, apikeys::key_companies(r)) {
                        (Some(a), _) => format!("agent {a}"),
                        (None, Some(c)) => c.join(","),
                        (None, None) => "all companies".to_owned(),
                    };
                    let state = match r.revoked_at {
                        Some(t) => format!("revoked {}", t.format("%Y-%m-%d %H:%M")),
                        None => "active".to_owned(),
                    };
                    println!(
                        "{:<36}  {:<6}  {:<14}  {:<20}  {:<20}  {}",
                        r.id, r.kind, r.key_prefix, r.name, scope, state
                    );
                }
            }
        }
        ApikeyCommand::Revoke { id } => {
            let id = Uuid::parse_str(id.trim())
                .with_context(|| format!("{id:?} is not a key id (a UUID)"))?;
            let row = apikeys::revoke(&db, id).await?;
            eprintln!("revoked key {} ({})", row.id, row.name);
        }
    }
    Ok(())
}
