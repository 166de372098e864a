//! `wapipe send`: queues one message from the command line, as an agent's
//! send would be queued, and prints its `messages.id` as the last line.
//!
//! The message row is the durable part; the `outbound.send` job only
//! dispatches it. With RabbitMQ the job is published at once. In embedded
//! mode the queue lives inside the running `wapipe serve`, which this
//! process cannot reach: the row is left for that server's outbound sweep,
//! which picks it up within a few seconds (DESIGN §3).

use anyhow::{Context, Result, anyhow};
use uuid::Uuid;
use wapipe_domain::outbox::content::Template;
use wapipe_domain::outbox::{self as outbound, NewOutbound, OutboundContent, OutboxError};
use wapipe_shared::config::Settings;
use wapipe_shared::entities::messages::Origin;

use crate::{app, serve};

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("body").required(true).args(["text", "template"])
))]
pub struct SendArgs {
    /// The config (WhatsApp number) to send from: its id, as `config list` shows it.
    #[arg(long = "config", value_name = "ID")]
    pub config: String,
    /// The recipient's WhatsApp number (6 to 15 digits, optionally after a
    /// +), or the business-scoped user id of a customer without one
    /// (`US.13491208655302741918`).
    #[arg(long, value_name = "PHONE|BSUID")]
    pub to: String,
    /// A free-form text (only inside the customer's 24-hour window).
    #[arg(long, value_name = "T", conflicts_with = "template")]
    pub text: Option<String>,
    /// Let WhatsApp show a preview of the first link in --text.
    #[arg(long, requires = "text")]
    pub preview_url: bool,
    /// An approved template's name (allowed outside the 24-hour window).
    #[arg(long, value_name = "NAME", requires = "lang")]
    pub template: Option<String>,
    /// The template's language code, e.g. en_US.
    #[arg(long, value_name = "L", requires = "template")]
    pub lang: Option<String>,
    /// A body parameter of the template, in order; repeat for each.
    #[arg(long = "param", value_name = "P", requires = "template")]
    pub params: Vec<String>,
    /// Reply to this customer message (its wamid).
    #[arg(long, value_name = "WAMID")]
    pub reply_to: Option<String>,
}

impl SendArgs {
    fn content(&self) -> Result<OutboundContent> {
        match (&self.text, &self.template, &self.lang) {
            (Some(t), None, _) => Ok(OutboundContent::Text {
                body: t.clone(),
                preview_url: self.preview_url,
            }),
            (None, Some(name), Some(lang)) => Ok(OutboundContent::Template(
                Template::with_body_params(name, lang, &self.params),
            )),
            // clap enforces these; kept as errors rather than panics.
            (None, Some(_), None) => Err(anyhow!("--template needs --lang")),
            (Some(_), Some(_), _) => Err(anyhow!("give either --text or --template, not both")),
            (None, None, _) => Err(anyhow!("give --text or --template")),
        }
    }
}

pub async fn run(settings: &Settings, args: SendArgs) -> Result<()> {
    // Everything that needs no database is checked first, so bad input
    // gets its answer at once.
    let config_id = Uuid::parse_str(args.config.trim()).with_context(|| {
        format!(
            "--config {:?} is not a config id (a UUID, see `wapipe config list`)",
            args.config
        )
    })?;
    let to = outbound::Recipient::parse(&args.to)?.as_str().to_owned();
    let content = args.content()?;
    content.validate().map_err(OutboxError::from)?;

    let db = app::connect_ready(settings).await?;
    let queued = outbound::queue_message(
        &db,
        NewOutbound {
            config_id,
            to,
            content,
            reply_to: args.reply_to.clone().filter(|r| !r.trim().is_empty()),
            origin: Origin::Admin,
            sender_type: "agent".into(),
            sender_id: None,
            answers: None,
        },
    )
    .await?;

    if settings.broker_settings().amqp_url.is_some() {
        let broker = serve::connect_broker(settings, db.clone()).await?;
        if let Err(e) = outbound::enqueue(&db, broker.as_ref(), &queued).await {
            // The row is stored; the outbound sweep publishes it later.
            eprintln!(
                "warning: queued, but the job could not be published yet ({e}); the outbound sweep will send it"
            );
        }
    } else {
        eprintln!("queued; the running `wapipe serve` sends it within a few seconds");
    }
    println!("{}", queued.message_id);
    Ok(())
}

/// `wapipe status MESSAGE_ID [--wait STATUS]`: where a message stands
/// (status, its timestamps, Meta's error), optionally polling until it
/// reaches a status, so a demo or a script can watch a send go through.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The message's id (`messages.id`, as `wapipe send` prints it).
    pub message_id: String,
    /// Poll until the message reaches this status (or fails), up to --timeout-secs.
    #[arg(long, value_name = "STATUS")]
    pub wait: Option<String>,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

pub async fn status(settings: &Settings, args: StatusArgs) -> Result<()> {
    use sea_orm::EntityTrait;
    use wapipe_shared::entities::messages::{self, MessageStatus};

    let id = Uuid::parse_str(args.message_id.trim()).with_context(|| {
        format!(
            "{:?} is not a message id (expected a UUID)",
            args.message_id
        )
    })?;
    let target: Option<MessageStatus> = args
        .wait
        .as_deref()
        .map(|s| s.parse().map_err(|_| anyhow!("unknown status {s:?}")))
        .transpose()?;
    let db = app::connect_ready(settings).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout_secs);
    let mut last: Option<MessageStatus> = None;
    loop {
        let m = messages::Entity::find_by_id(id)
            .one(&db)
            .await?
            .ok_or_else(|| anyhow!("no message with id {id}"))?;
        if last != Some(m.status) {
            let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
            };
            println!(
                "{}  wamid={}  sent={}  delivered={}  read={}{}",
                m.status,
                m.provider_message_id.as_deref().unwrap_or("-"),
                at(m.sent_at),
                at(m.delivered_at),
                at(m.read_at),
                m.error_code
                    .as_deref()
                    .map(|c| format!("  error={c} {}", m.error_title.as_deref().unwrap_or("")))
                    .unwrap_or_default()
            );
            last = Some(m.status);
        }
        let Some(t) = target else { return Ok(()) };
        if m.status == MessageStatus::Failed && t != MessageStatus::Failed {
            return Err(anyhow!("message failed before reaching {t}"));
        }
        if m.status.rank() >= t.rank()
            && (m.status != MessageStatus::Failed || t == MessageStatus::Failed)
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!(
                "message is {} after {} s, not {t}",
                m.status,
                args.timeout_secs
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
