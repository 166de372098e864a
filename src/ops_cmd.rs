//! Operator commands that talk to the broker: `wapipe replay` and
//! `wapipe dlq`. They work in both modes; in embedded mode the dead letters
//! live in the database, and a redrive is picked up by the running `serve`.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use uuid::Uuid;
use wapipe_ingest::relay;
use wapipe_shared::broker;
use wapipe_shared::config::Settings;
use wapipe_shared::entities::webhook_events::EventStatus;

use crate::{app, serve};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Re-publish one event by id.
    #[arg(long, conflicts_with_all = ["status", "since"], required_unless_present = "status")]
    pub event: Option<String>,
    /// Re-publish every event in this status: rejected or failed.
    #[arg(long)]
    pub status: Option<String>,
    /// With --status: only events received at or after this time (RFC 3339, e.g. 2026-11-21T08:00:00Z).
    #[arg(long, requires = "status")]
    pub since: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show the jobs in a worker's dead-letter queue.
    List {
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Move every job of a dead-letter queue back to its work queue.
    Redrive {
        #[arg(long)]
        queue: String,
    },
    /// Delete every job of a dead-letter queue.
    Purge {
        #[arg(long)]
        queue: String,
    },
}

pub async fn replay(settings: &Settings, args: ReplayArgs) -> Result<()> {
    let db = app::connect_ready(settings).await?;
    let broker = serve::connect_broker(settings, db.clone()).await?;
    let n = if let Some(id) = args.event {
        let id = Uuid::parse_str(id.trim())
            .with_context(|| format!("{id:?} is not an event id (expected a UUID)"))?;
        relay::replay_event(&db, &broker, id).await?
    } else {
        let status: EventStatus = args
            .status
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let since = args
            .since
            .as_deref()
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .with_context(|| {
                        format!("--since {s:?} is not an RFC 3339 time (e.g. 2026-11-21T08:00:00Z)")
                    })
            })
            .transpose()?;
        relay::replay_status(&db, &broker, status, since).await?
    };
    println!("re-published {n} event(s)");
    Ok(())
}

fn check_queue(queue: &str) -> Result<broker::Queue> {
    match broker::Queue::from_name(queue) {
        Some(q) => Ok(q),
        None => bail!(
            "unknown queue {queue:?}; queues are: {}",
            broker::Queue::names()
        ),
    }
}

pub async fn dlq(settings: &Settings, cmd: DlqCommand) -> Result<()> {
    let db = app::connect_ready(settings).await?;
    let broker = serve::connect_broker(settings, db.clone()).await?;
    match cmd {
        DlqCommand::List { queue, limit } => {
            let items = broker.dlq_list(check_queue(&queue)?, limit).await?;
            println!(
                "{:<40}  {:<18}  {:>8}  {:<25}  LAST ERROR",
                "MESSAGE_ID", "EVENT", "ATTEMPTS", "DEAD SINCE"
            );
            for d in &items {
                println!(
                    "{:<40}  {:<18}  {:>8}  {:<25}  {}",
                    d.message_id,
                    d.event,
                    d.attempts,
                    d.dead_lettered_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into()),
                    d.last_error.as_deref().unwrap_or("-")
                );
            }
            eprintln!(
                "{} job(s) in {queue}'s dead-letter queue (showing at most {limit})",
                items.len()
            );
        }
        DlqCommand::Redrive { queue } => {
            let q = check_queue(&queue)?;
            let n = if broker.mode() == "embedded" {
                // The queue lives in the `serve` process; it picks this up within a second.
                broker::request_embedded_redrive(&db, q).await?
            } else {
                broker.dlq_redrive(q).await?
            };
            println!("redrove {n} job(s) to {queue}");
        }
        DlqCommand::Purge { queue } => {
            let n = broker.dlq_purge(check_queue(&queue)?).await?;
            println!("purged {n} job(s) from {queue}'s dead-letter queue");
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare the exchanges and queues (idempotent; every role does it at start).
    Declare,
    /// Delete this prefix's exchanges and queues from RabbitMQ (jobs in them are lost).
    Delete,
}

pub async fn topology(settings: &Settings, cmd: TopologyCommand) -> Result<()> {
    let broker_settings = settings.broker_settings();
    if broker_settings.amqp_url.is_none() {
        bail!("the embedded queue has no topology to manage: set AMQP_URL");
    }
    let amqp = broker::AmqpBroker::new(&broker_settings)?;
    match cmd {
        TopologyCommand::Declare => {
            broker::Broker::declare(&amqp).await?;
            println!("declared the topology of prefix {}", broker_settings.prefix);
        }
        TopologyCommand::Delete => {
            amqp.delete_topology().await?;
            println!("deleted the topology of prefix {}", broker_settings.prefix);
        }
    }
    amqp.close().await;
    Ok(())
}
