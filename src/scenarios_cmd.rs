//! The chatbot's operator commands: `wapipe scenarios import|export|list`
//! (the flow file), `wapipe block add|remove|list` (numbers the bot must
//! not answer) and `wapipe customers deny-scenario|allow-scenario`. The
//! rules live in the domain crate; this file parses flags and prints.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use uuid::Uuid;
use wapipe_domain::blocking::{self, Actor};
use wapipe_domain::scenarios::{self, FlowFile};
use wapipe_shared::config::Settings;

use crate::app;

#[derive(Debug, Subcommand)]
pub enum ScenariosCommand {
    /// Validate and import a flow file, replacing the config's scenarios of the same titles.
    Import {
        /// The config (WhatsApp number) the scenarios answer for.
        #[arg(long = "config", value_name = "ID")]
        config: String,
        /// The flow file (JSON; see docs/scenarios.md); `-` reads stdin.
        file: PathBuf,
        /// Check the file and stop: nothing is written.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the config's scenarios as a flow file.
    Export {
        /// The config (WhatsApp number) id.
        #[arg(long = "config", value_name = "ID")]
        config: String,
    },
    /// List the scenarios the config answers with, in matching order.
    List {
        /// The config (WhatsApp number) id.
        #[arg(long = "config", value_name = "ID")]
        config: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BlockCommand {
    /// Block a number: the bot stops answering it (its messages are still stored).
    Add {
        /// The config (WhatsApp number) id.
        #[arg(long = "config", value_name = "ID")]
        config: String,
        /// The customer's WhatsApp number (6 to 15 digits, optional +).
        #[arg(long, value_name = "P")]
        phone: String,
        /// Why it is blocked (kept in the audit log).
        #[arg(long, value_name = "R")]
        reason: Option<String>,
    },
    /// Unblock a number.
    Remove {
        /// The config (WhatsApp number) id.
        #[arg(long = "config", value_name = "ID")]
        config: String,
        /// The customer's WhatsApp number (6 to 15 digits, optional +).
        #[arg(long, value_name = "P")]
        phone: String,
    },
    /// List blocked numbers.
    List {
        /// The config (WhatsApp number) id.
        #[arg(long = "config", value_name = "ID")]
        config: String,
        /// Include numbers that were unblocked.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CustomersCommand {
    /// Never run this scenario for this customer (seed 000 scenario_not_allowed).
    DenyScenario {
        /// The config (WhatsApp number) id.
        #[arg(long = "config", value_name = "ID")]
        config: String,
        /// The customer's WhatsApp number (6 to 15 digits, optional +).
        #[arg(long, value_name = "P")]
        phone: String,
        /// The scenario's title.
        #[arg(long, value_name = "TITLE")]
        scenario: String,
    },
    /// Allow a scenario denied before.
    AllowScenario {
        /// The config (WhatsApp number) id.
        #[arg(long = "config", value_name = "ID")]
        config: String,
        /// The customer's WhatsApp number (6 to 15 digits, optional +).
        #[arg(long, value_name = "P")]
        phone: String,
        /// The scenario's title.
        #[arg(long, value_name = "TITLE")]
        scenario: String,
    },
}

fn config_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s.trim()).map_err(|_| {
        anyhow!("--config {s:?} is not a config id (a UUID, see `wapipe config list`)")
    })
}

fn read_file(path: &PathBuf) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the flow file from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn scenarios(settings: &Settings, cmd: ScenariosCommand) -> Result<()> {
    match cmd {
        ScenariosCommand::Import {
            config,
            file,
            dry_run,
        } => {
            let config = config_id(&config)?;
            let text = read_file(&file)?;
            let flow = FlowFile::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            flow.validate()
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            if dry_run {
                println!(
                    "{}: valid ({} scenarios, {} template scenarios)",
                    file.display(),
                    flow.scenarios.len(),
                    flow.template_scenarios.len()
                );
                return Ok(());
            }
            let db = app::connect_ready(settings).await?;
            let report = scenarios::import(&db, config, &flow)
                .await
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            for (title, id, replaced) in &report.scenarios {
                println!(
                    "{} {id} {title}",
                    if *replaced { "replaced" } else { "created " }
                );
            }
            println!(
                "imported {} scenarios, {} template scenarios{}",
                report.scenarios.len(),
                report.templates,
                if report.settings { ", settings" } else { "" }
            );
            Ok(())
        }
        ScenariosCommand::Export { config } => {
            let config = config_id(&config)?;
            let db = app::connect_ready(settings).await?;
            let flow = scenarios::export(&db, config).await?;
            println!("{}", serde_json::to_string_pretty(&flow)?);
            Ok(())
        }
        ScenariosCommand::List { config, json } => {
            let config = config_id(&config)?;
            let db = app::connect_ready(settings).await?;
            let all = scenarios::list(&db, config).await?;
            if json {
                for s in &all {
                    println!("{}", serde_json::to_string(s)?);
                }
                return Ok(());
            }
            println!(
                "{:<36}  {:<7}  {:<6}  {:>8}  {:>6}  {:>5}  {:>5}  TITLE  KEYWORDS",
                "ID", "TYPE", "ACTIVE", "PRIORITY", "REPEAT", "ITEMS", "RUNS"
            );
            for s in &all {
                println!(
                    "{:<36}  {:<7}  {:<6}  {:>8}  {:>6}  {:>5}  {:>5}  {}  {}",
                    s.id,
                    s.r#type,
                    if s.active { "yes" } else { "no" },
                    s.priority,
                    if s.repeat_count == 0 {
                        "-".to_owned()
                    } else {
                        s.repeat_count.to_string()
                    },
                    s.items,
                    s.runs,
                    s.title,
                    s.keywords.join(", ")
                );
            }
            Ok(())
        }
    }
}

pub async fn block(settings: &Settings, cmd: BlockCommand) -> Result<()> {
    match cmd {
        BlockCommand::Add {
            config,
            phone,
            reason,
        } => {
            let config = config_id(&config)?;
            let db = app::connect_ready(settings).await?;
            let row = blocking::block(&db, config, &phone, reason, Actor::CLI).await?;
            println!("blocked {}", row.phone_number);
        }
        BlockCommand::Remove { config, phone } => {
            let config = config_id(&config)?;
            let db = app::connect_ready(settings).await?;
            let row = blocking::unblock(&db, config, &phone, Actor::CLI).await?;
            println!("unblocked {}", row.phone_number);
        }
        BlockCommand::List { config, all } => {
            let config = config_id(&config)?;
            let db = app::connect_ready(settings).await?;
            for b in blocking::list_blocked(&db, config, all).await? {
                println!(
                    "{}  {}  {}  {}",
                    b.phone_number,
                    if b.is_active { "blocked" } else { "unblocked" },
                    b.created_at.to_rfc3339(),
                    b.reason.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

pub async fn customers(settings: &Settings, cmd: CustomersCommand) -> Result<()> {
    let (config, phone, scenario, deny) = match cmd {
        CustomersCommand::DenyScenario {
            config,
            phone,
            scenario,
        } => (config, phone, scenario, true),
        CustomersCommand::AllowScenario {
            config,
            phone,
            scenario,
        } => (config, phone, scenario, false),
    };
    let config = config_id(&config)?;
    let db = app::connect_ready(settings).await?;
    let access = if deny {
        blocking::deny_scenario(&db, config, &phone, &scenario, Actor::CLI).await?
    } else {
        blocking::allow_scenario(&db, config, &phone, &scenario, Actor::CLI).await?
    };
    let verb = if deny { "denied" } else { "allowed" };
    if access.changed {
        println!("{verb} {scenario:?} for {phone}");
    } else {
        println!("{scenario:?} was already {verb} for {phone}");
    }
    Ok(())
}
