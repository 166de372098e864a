//! One reminder: what the follow-up worker does with a `followup.due` job.
//!
//! 1. A follow-up already reminded, completed, cancelled or deleted ends
//!    the job (a redelivery, a second claim, a close that came first).
//! 2. The agent's WhatsApp message, through the shared outbox, from the
//!    follow-up's number to the agent's `phone_number`: free text when the
//!    agent's own 24-hour window with that number is open, else the
//!    template `WAPIPE_REMINDER_TEMPLATE` with the title and the customer's
//!    name (or number) as body parameters. It is queued as the answer
//!    `(follow-up id, 0)`, a unique key of `messages`: a second run of this
//!    job finds the first one's message and queues nothing.
//! 3. A `followup.reminder` real-time event (best effort).
//! 4. `reminder_sent`, `reminder_sent_at`, the channel and the message,
//!    set once.
//!
//! An agent without a usable phone number (none, or not a WhatsApp
//! number), or a number that cannot send (removed or inactive config),
//! gets the event only, and the follow-up's `reminder_note` says why.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;
use wapipe_domain::followups::{self, CHANNEL_EVENT, CHANNEL_WHATSAPP, Reminded, Status};
use wapipe_domain::outbox::content::Template;
use wapipe_domain::outbox::{self, Answer, NewOutbound, OutboundContent, OutboxError};
use wapipe_shared::broker::Broker;
use wapipe_shared::entities::messages::Origin;
use wapipe_shared::entities::{agents, chats, customers, follow_ups};
use wapipe_shared::jobs::{REALTIME_FOLLOWUP_REMINDER, RealtimeEvent};

use super::{FollowupSettings, METRIC_REMINDED_TOTAL};

/// The answer sequence of a follow-up's reminder: one per follow-up.
const REMINDER_SEQ: i32 = 0;

/// What became of a `followup.due` job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This run recorded the reminder.
    Reminded { channel: &'static str },
    /// Nothing to do: reminded before, or no longer open, or gone.
    Skipped(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum RemindError {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("follow-up: {0}")]
    FollowUp(#[from] followups::FollowUpError),
    #[error("outbox: {0}")]
    Outbox(OutboxError),
}

/// How the agent is reached.
enum Channel {
    WhatsApp { to: String },
    EventOnly { note: String },
}

/// Reminds the agent of follow-up `id` (see the module doc). Idempotent:
/// any number of runs make one message and set `reminder_sent` once.
pub async fn remind(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    settings: &FollowupSettings,
    id: Uuid,
) -> Result<Outcome, RemindError> {
    let Some(fu) = follow_ups::Entity::find_by_id(id).one(db).await? else {
        return Ok(Outcome::Skipped("gone"));
    };
    if fu.reminder_sent {
        return Ok(Outcome::Skipped("already reminded"));
    }
    let open = fu.status.parse::<Status>().is_ok_and(Status::is_open);
    if fu.is_deleted || !open {
        return Ok(Outcome::Skipped("closed"));
    }
    let agent = match fu.agent_id {
        Some(a) => agents::Entity::find_by_id(a)
            .one(db)
            .await?
            .filter(|a| !a.is_deleted),
        None => None,
    };
    let customer = customer_label(db, &fu).await?;
    let title = fu.title.clone().unwrap_or_else(|| "follow-up".to_owned());

    let mut channel = match agent.as_ref().and_then(|a| a.phone_number.clone()) {
        None if agent.is_none() => Channel::EventOnly {
            note: "no agent to remind: event only".to_owned(),
        },
        None => Channel::EventOnly {
            note: "agent has no phone number: event only".to_owned(),
        },
        Some(p) => match outbox::normalize_wa_id(&p) {
            Ok(to) => Channel::WhatsApp { to },
            Err(_) => Channel::EventOnly {
                note: format!("agent phone number {p:?} is not a WhatsApp number: event only"),
            },
        },
    };

    let now = wapipe_domain::clock::now();
    let mut message_id = None;
    if let Channel::WhatsApp { to } = &channel {
        let content = if agent_window_open(db, fu.config_id, to, now).await? {
            OutboundContent::Text {
                body: reminder_text(&title, &customer, &fu),
                preview_url: false,
            }
        } else {
            OutboundContent::Template(Template::with_body_params(
                &settings.template,
                &settings.template_language,
                &[title.clone(), customer.clone()],
            ))
        };
        let new = NewOutbound {
            config_id: fu.config_id,
            to: to.clone(),
            content,
            reply_to: None,
            origin: Origin::System,
            sender_type: "system".to_owned(),
            sender_id: None,
            answers: Some(Answer {
                message_id: fu.id,
                seq: REMINDER_SEQ,
            }),
        };
        match outbox::queue_message(db, new).await {
            Ok(q) => {
                // Also when an earlier run queued it (`is_new` false): that
                // run may have died before publishing, and the outbound
                // worker's claim makes a second job harmless.
                if let Err(e) = outbox::enqueue(db, broker, &q).await {
                    // The outbound sweep publishes queued messages whose
                    // job is missing: the reminder is safe in the database.
                    tracing::warn!(follow_up = %fu.id, error = %e,
                        "cannot publish the reminder's send; the sweep will");
                }
                message_id = Some(q.message_id);
            }
            Err(e) if is_refused_for_good(&e) => {
                channel = Channel::EventOnly {
                    note: format!("cannot send by WhatsApp ({e}): event only"),
                };
            }
            Err(e) => return Err(RemindError::Outbox(e)),
        }
    }

    let (channel_name, note) = match &channel {
        Channel::WhatsApp { .. } => (CHANNEL_WHATSAPP, None),
        Channel::EventOnly { note } => (CHANNEL_EVENT, Some(note.clone())),
    };
    let event = RealtimeEvent {
        event: REALTIME_FOLLOWUP_REMINDER.to_owned(),
        config_id: fu.config_id,
        chat_id: Some(fu.chat_id),
        message_id,
        data: serde_json::json!({
            "followUpId": fu.id,
            "agentId": fu.agent_id,
            "title": title,
            "notes": fu.notes,
            "priority": fu.priority,
            "scheduledAt": fu.scheduled_at,
            "customer": customer,
            "channel": channel_name,
            "note": note,
        }),
    };
    if let Err(e) = broker
        .publish_realtime(RealtimeEvent::encode(&[event]))
        .await
    {
        tracing::debug!(follow_up = %fu.id, error = %e, "real-time reminder event not published");
    }

    let set = followups::mark_reminded(
        db,
        fu.id,
        &Reminded {
            at: now,
            channel: channel_name,
            message_id,
            note,
        },
    )
    .await?;
    if !set {
        return Ok(Outcome::Skipped("already reminded"));
    }
    metrics::counter!(METRIC_REMINDED_TOTAL, "channel" => channel_name).increment(1);
    Ok(Outcome::Reminded {
        channel: channel_name,
    })
}

/// Errors no retry can fix: the reminder goes out as the event only.
fn is_refused_for_good(e: &OutboxError) -> bool {
    matches!(
        e,
        OutboxError::BadPhone(_)
            | OutboxError::Content(_)
            | OutboxError::UnknownConfig(_)
            | OutboxError::InactiveConfig(_)
    )
}

/// The customer as the agent knows them: their name, else their number.
async fn customer_label(
    db: &DatabaseConnection,
    fu: &follow_ups::Model,
) -> Result<String, sea_orm::DbErr> {
    let customer = match fu.customer_id {
        Some(c) => customers::Entity::find_by_id(c).one(db).await?,
        None => None,
    };
    let chat = chats::Entity::find_by_id(fu.chat_id).one(db).await?;
    let label = customer
        .as_ref()
        .and_then(|c| c.name.clone().or(c.whatsapp_name.clone()))
        .or_else(|| chat.as_ref().and_then(|c| c.customer_name.clone()))
        .or_else(|| {
            customer
                .as_ref()
                .and_then(|c| c.phone_number.clone().or(c.wa_id.clone()))
        })
        .or_else(|| chat.as_ref().and_then(|c| c.phone_number.clone()))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    Ok(label.unwrap_or_else(|| "a customer".to_owned()))
}

/// The agent wrote to this number within 24 hours: free text may go.
async fn agent_window_open(
    db: &DatabaseConnection,
    config_id: Uuid,
    wa_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, sea_orm::DbErr> {
    let me = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(customers::Column::WaId.eq(wa_id))
        .one(db)
        .await?;
    Ok(me.is_some_and(|c| outbox::window_open(c.last_inbound_at, now)))
}

fn reminder_text(title: &str, customer: &str, fu: &follow_ups::Model) -> String {
    let mut s = format!(
        "Follow-up due: {title}\nCustomer: {customer}\nScheduled: {} UTC\nPriority: {}",
        fu.scheduled_at.format("%Y-%m-%d %H:%M"),
        fu.priority
    );
    if let Some(n) = fu.notes.as_deref().filter(|n| !n.is_empty()) {
        s.push_str("\nNotes: ");
        s.push_str(n);
    }
    // Meta's limit for a text body is 4,096 characters.
    if s.chars().count() > 4000 {
        s = s.chars().take(3999).collect();
        s.push('…');
    }
    s
}
