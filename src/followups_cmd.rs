//! `wapipe agents` and `wapipe followups`: add and list agents; schedule,
//! complete, cancel and list follow-ups. The writes are the domain's
//! (`wapipe_domain::{agents, followups}`), shared with the REST API.

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use uuid::Uuid;
use wapipe_domain::agents::{self, NewAgent};
use wapipe_domain::followups::{self, ListFilter, NewFollowUp, Priority, Status};
use wapipe_shared::config::Settings;

use crate::app;

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Add an agent; prints the new agent's id.
    Add {
        /// The agent's name.
        #[arg(long)]
        name: String,
        /// The agent's email address.
        #[arg(long)]
        email: String,
        /// WhatsApp number for follow-up reminders; without one, reminders
        /// are real-time events only.
        #[arg(long)]
        phone: Option<String>,
        /// The company (as in `wapipe config list`); may be left out when
        /// there is only one.
        #[arg(long)]
        company: Option<String>,
    },
    /// List agents.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum FollowupsCommand {
    /// Schedule a follow-up on a chat for an agent; prints its id.
    Add {
        /// The chat's id (a UUID).
        #[arg(long)]
        chat: String,
        /// The agent to remind (a UUID, see `wapipe agents list`).
        #[arg(long)]
        agent: String,
        /// When, as RFC 3339 (e.g. 2026-12-01T09:30:00+01:00); not in the past.
        #[arg(long)]
        at: String,
        /// The follow-up's title (the reminder names it).
        #[arg(long)]
        title: String,
        /// Notes for whoever follows up.
        #[arg(long)]
        notes: Option<String>,
        /// low, medium or high.
        #[arg(long, default_value = "medium")]
        priority: String,
    },
    /// Mark a pending or overdue follow-up completed.
    Complete {
        /// The follow-up's id.
        id: String,
        /// The agent who completed it.
        #[arg(long)]
        by: Option<String>,
    },
    /// Cancel a pending or overdue follow-up: it will not remind.
    Cancel {
        /// The follow-up's id.
        id: String,
    },
    /// List follow-ups, soonest first.
    List {
        /// pending, completed, cancelled or overdue.
        #[arg(long)]
        status: Option<String>,
        /// Only this agent's (a UUID).
        #[arg(long)]
        agent: Option<String>,
        /// Only this chat's (a UUID).
        #[arg(long)]
        chat: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_id(what: &str, id: &str) -> Result<Uuid> {
    Uuid::parse_str(id.trim()).map_err(|_| anyhow!("{id:?} is not a {what} id (expected a UUID)"))
}

fn parse_at(at: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(at.trim())
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| {
            anyhow!("--at {at:?} is not an RFC 3339 date ({e}); e.g. 2026-12-01T09:30:00+01:00")
        })
}

pub async fn agents(settings: &Settings, cmd: AgentsCommand) -> Result<()> {
    let db = app::connect_ready(settings).await?;
    match cmd {
        AgentsCommand::Add {
            name,
            email,
            phone,
            company,
        } => {
            let a = agents::create(
                &db,
                NewAgent {
                    name,
                    email,
                    phone_number: phone,
                    company,
                },
            )
            .await?;
            eprintln!(
                "added agent {} ({})",
                a.name,
                a.company.as_deref().unwrap_or("-")
            );
            println!("{}", a.id);
        }
        AgentsCommand::List { json } => {
            let rows = agents::list(&db).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<36}  {:<20}  {:<28}  {:<16}  {:<16}  STATUS",
                    "ID", "NAME", "EMAIL", "PHONE", "COMPANY"
                );
                for r in &rows {
                    println!(
                        "{:<36}  {:<20}  {:<28}  {:<16}  {:<16}  {}",
                        r.id,
                        r.name,
                        r.email,
                        r.phone_number.as_deref().unwrap_or("-"),
                        r.company.as_deref().unwrap_or("-"),
                        r.status
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn followups(settings: &Settings, cmd: FollowupsCommand) -> Result<()> {
    // Arguments are checked before touching the database, so a typo
    // answers at once with what is wrong.
    match cmd {
        FollowupsCommand::Add {
            chat,
            agent,
            at,
            title,
            notes,
            priority,
        } => {
            let new = NewFollowUp {
                chat_id: parse_id("chat", &chat)?,
                agent_id: parse_id("agent", &agent)?,
                scheduled_at: parse_at(&at)?,
                title,
                notes,
                priority: Some(priority.parse::<Priority>()?.as_str().to_owned()),
                created_by: None,
            };
            let db = app::connect_ready(settings).await?;
            let f = followups::create(&db, new).await?;
            eprintln!("follow-up scheduled for {}", f.scheduled_at.to_rfc3339());
            println!("{}", f.id);
        }
        FollowupsCommand::Complete { id, by } => {
            let id = parse_id("follow-up", &id)?;
            let by = by.map(|b| parse_id("agent", &b)).transpose()?;
            let db = app::connect_ready(settings).await?;
            let f = followups::complete(&db, id, by).await?;
            println!("completed {}", f.id);
        }
        FollowupsCommand::Cancel { id } => {
            let id = parse_id("follow-up", &id)?;
            let db = app::connect_ready(settings).await?;
            let f = followups::cancel(&db, id).await?;
            println!("cancelled {}", f.id);
        }
        FollowupsCommand::List {
            status,
            agent,
            chat,
            json,
        } => {
            let filter = ListFilter {
                status: status
                    .map(|s| s.parse::<Status>())
                    .transpose()
                    .context("--status")?,
                agent_id: agent.map(|a| parse_id("agent", &a)).transpose()?,
                chat_id: chat.map(|c| parse_id("chat", &c)).transpose()?,
                ..ListFilter::default()
            };
            let db = app::connect_ready(settings).await?;
            let rows = followups::list(&db, filter).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<36}  {:<25}  {:<9}  {:<6}  {:<36}  {:<8}  TITLE",
                    "ID", "SCHEDULED_AT", "STATUS", "PRIO", "AGENT", "REMINDED"
                );
                for r in &rows {
                    let reminded = match (r.reminder_sent, r.reminder_channel.as_deref()) {
                        (false, _) => "no",
                        (true, Some(followups::CHANNEL_EVENT)) => "event",
                        (true, _) => "yes",
                    };
                    println!(
                        "{:<36}  {:<25}  {:<9}  {:<6}  {:<36}  {:<8}  {}",
                        r.id,
                        r.scheduled_at.to_rfc3339(),
                        r.status,
                        r.priority,
                        r.agent_id
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "-".into()),
                        reminded,
                        r.title.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}
