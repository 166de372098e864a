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

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;
use wapipe_domain::followups::{self, CHANNEL_EVENT, CHANNEL_WHATSAPP, Reminded, Status};
use wapipe_domain::outbox::content::Template;
use wapipe_domain::outbox::{self, Answer, NewOutbound, OutboundContent, OutboxError};
use wapipe_shared::broker::Broker;
use wapipe_shared::db::pad_pow2;
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
    remind_all(db, broker, settings, &[id])
        .await?
        .pop()
        .ok_or_else(|| RemindError::Db(sea_orm::DbErr::RecordNotFound("an outcome".into())))
}

/// A follow-up to remind, with what its reminder says.
struct Due {
    fu: follow_ups::Model,
    title: String,
    customer: String,
    channel: Channel,
}

/// Reminds the agents of follow-ups `ids` (see the module doc) with a few
/// statements for the whole batch rather than a dozen per follow-up: one
/// look each at the follow-ups, their agents, customers and chats, and
/// the agents' windows; the WhatsApp messages queued in one transaction
/// ([`outbox::queue_each`]) and published lane by lane at once; one
/// real-time publish; one statement that records them all. Answers one
/// outcome per id, in order. Idempotent like [`remind`]. An error is the
/// database's or the broker's, for the whole batch: running it again is
/// safe.
pub async fn remind_all(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    settings: &FollowupSettings,
    ids: &[Uuid],
) -> Result<Vec<Outcome>, RemindError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let unique: Vec<Uuid> = ids
        .iter()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let found: HashMap<Uuid, follow_ups::Model> = follow_ups::Entity::find()
        .filter(follow_ups::Column::Id.is_in(pad_pow2(unique)))
        .all(db)
        .await?
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    // Each follow-up once, in the order asked; the rest are skipped.
    let mut skipped: HashMap<Uuid, &'static str> = HashMap::new();
    let mut open = Vec::new();
    for id in ids {
        if skipped.contains_key(id) || open.iter().any(|f: &follow_ups::Model| f.id == *id) {
            continue;
        }
        match found.get(id) {
            None => {
                skipped.insert(*id, "gone");
            }
            Some(fu) if fu.reminder_sent => {
                skipped.insert(*id, "already reminded");
            }
            Some(fu)
                if fu.is_deleted || !fu.status.parse::<Status>().is_ok_and(Status::is_open) =>
            {
                skipped.insert(*id, "closed");
            }
            Some(fu) => open.push(fu.clone()),
        }
    }

    let agents = load_agents(db, &open).await?;
    let labels = customer_labels(db, &open).await?;
    let mut due: Vec<Due> = open
        .into_iter()
        .map(|fu| {
            let agent = fu.agent_id.and_then(|a| agents.get(&a));
            let channel = channel(agent);
            Due {
                title: fu.title.clone().unwrap_or_else(|| "follow-up".to_owned()),
                customer: labels
                    .get(&fu.id)
                    .cloned()
                    .unwrap_or_else(|| "a customer".to_owned()),
                fu,
                channel,
            }
        })
        .collect();

    let now = wapipe_domain::clock::now();
    let message_ids = queue_reminders(db, broker, settings, &mut due, now).await?;

    let reminded: Vec<(Uuid, Reminded)> = due
        .iter()
        .zip(&message_ids)
        .map(|(d, message_id)| {
            let (channel, note) = d.channel.recorded();
            (
                d.fu.id,
                Reminded {
                    at: now,
                    channel,
                    message_id: *message_id,
                    note,
                },
            )
        })
        .collect();
    let events: Vec<RealtimeEvent> = due
        .iter()
        .zip(&reminded)
        .map(|(d, (_, r))| event(d, r))
        .collect();
    if !events.is_empty()
        && let Err(e) = broker
            .publish_realtime(RealtimeEvent::encode(&events))
            .await
    {
        tracing::debug!(follow_ups = events.len(), error = %e,
            "real-time reminder events not published");
    }

    let set = followups::mark_reminded_all(db, &reminded).await?;
    let mut outcomes: HashMap<Uuid, Outcome> = skipped
        .into_iter()
        .map(|(id, why)| (id, Outcome::Skipped(why)))
        .collect();
    for (id, r) in &reminded {
        let outcome = if set.contains(id) {
            metrics::counter!(METRIC_REMINDED_TOTAL, "channel" => r.channel).increment(1);
            Outcome::Reminded { channel: r.channel }
        } else {
            // A concurrent run recorded it first.
            Outcome::Skipped("already reminded")
        };
        outcomes.insert(*id, outcome);
    }
    ids.iter()
        .map(|id| {
            outcomes
                .get(id)
                .cloned()
                .ok_or_else(|| RemindError::Db(sea_orm::DbErr::RecordNotFound(id.to_string())))
        })
        .collect()
}

/// Queues the WhatsApp reminders of `due` in one transaction and publishes
/// their sends. Answers each follow-up's message, in order; one whose
/// number cannot send becomes event-only.
async fn queue_reminders(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    settings: &FollowupSettings,
    due: &mut [Due],
    now: DateTime<Utc>,
) -> Result<Vec<Option<Uuid>>, RemindError> {
    let numbers: Vec<(Uuid, String)> = due
        .iter()
        .filter_map(|d| match &d.channel {
            Channel::WhatsApp { to } => Some((d.fu.config_id, to.clone())),
            Channel::EventOnly { .. } => None,
        })
        .collect();
    let windows = agent_windows_open(db, &numbers, now).await?;
    let mut news = Vec::with_capacity(numbers.len());
    for d in due.iter() {
        let Channel::WhatsApp { to } = &d.channel else {
            continue;
        };
        let content = if windows.contains(&(d.fu.config_id, to.clone())) {
            OutboundContent::Text {
                body: reminder_text(&d.title, &d.customer, &d.fu),
                preview_url: false,
            }
        } else {
            OutboundContent::Template(Template::with_body_params(
                &settings.template,
                &settings.template_language,
                &[d.title.clone(), d.customer.clone()],
            ))
        };
        news.push(NewOutbound {
            config_id: d.fu.config_id,
            to: to.clone(),
            content,
            reply_to: None,
            origin: Origin::System,
            sender_type: "system".to_owned(),
            sender_id: None,
            answers: Some(Answer {
                message_id: d.fu.id,
                seq: REMINDER_SEQ,
            }),
        });
    }
    let mut results = outbox::queue_each(db, news)
        .await
        .map_err(RemindError::Outbox)?
        .into_iter();
    let mut queued = Vec::new();
    let mut message_ids = Vec::with_capacity(due.len());
    for d in due.iter_mut() {
        if !matches!(d.channel, Channel::WhatsApp { .. }) {
            message_ids.push(None);
            continue;
        }
        match results.next() {
            Some(Ok(q)) => {
                message_ids.push(Some(q.message_id));
                queued.push(q);
            }
            Some(Err(e)) if is_refused_for_good(&e) => {
                d.channel = Channel::EventOnly {
                    note: format!("cannot send by WhatsApp ({e}): event only"),
                };
                message_ids.push(None);
            }
            Some(Err(e)) => return Err(RemindError::Outbox(e)),
            None => {
                return Err(RemindError::Db(sea_orm::DbErr::RecordNotFound(
                    "a queued reminder".into(),
                )));
            }
        }
    }
    // A message an earlier run queued (`is_new` false) is not published
    // again: that run published it, or died first and left it to the sweep.
    if let Err(e) = outbox::enqueue_all(db, broker, &queued).await {
        // The outbound sweep publishes queued messages whose job is
        // missing: the reminders are safe in the database.
        tracing::warn!(reminders = queued.len(), error = %e,
            "cannot publish some reminders' sends; the sweep will");
    }
    Ok(message_ids)
}

impl Channel {
    /// The channel and note recorded on the follow-up.
    fn recorded(&self) -> (&'static str, Option<String>) {
        match self {
            Channel::WhatsApp { .. } => (CHANNEL_WHATSAPP, None),
            Channel::EventOnly { note } => (CHANNEL_EVENT, Some(note.clone())),
        }
    }
}

/// How the agent is reached, from their phone number.
fn channel(agent: Option<&agents::Model>) -> Channel {
    match agent.map(|a| a.phone_number.clone()) {
        None => Channel::EventOnly {
            note: "no agent to remind: event only".to_owned(),
        },
        Some(None) => Channel::EventOnly {
            note: "agent has no phone number: event only".to_owned(),
        },
        Some(Some(p)) => match outbox::normalize_wa_id(&p) {
            Ok(to) => Channel::WhatsApp { to },
            Err(_) => Channel::EventOnly {
                note: format!("agent phone number {p:?} is not a WhatsApp number: event only"),
            },
        },
    }
}

/// The `followup.reminder` real-time event of one reminder.
fn event(d: &Due, r: &Reminded) -> RealtimeEvent {
    RealtimeEvent {
        event: REALTIME_FOLLOWUP_REMINDER.to_owned(),
        config_id: d.fu.config_id,
        chat_id: Some(d.fu.chat_id),
        message_id: r.message_id,
        data: serde_json::json!({
            "followUpId": d.fu.id,
            "agentId": d.fu.agent_id,
            "title": d.title,
            "notes": d.fu.notes,
            "priority": d.fu.priority,
            "scheduledAt": d.fu.scheduled_at,
            "customer": d.customer,
            "channel": r.channel,
            "note": r.note,
        }),
    }
}

/// The follow-ups' agents still there, by id.
async fn load_agents(
    db: &DatabaseConnection,
    fus: &[follow_ups::Model],
) -> Result<HashMap<Uuid, agents::Model>, sea_orm::DbErr> {
    let ids: Vec<Uuid> = fus
        .iter()
        .filter_map(|f| f.agent_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(agents::Entity::find()
        .filter(agents::Column::Id.is_in(pad_pow2(ids)))
        .filter(agents::Column::IsDeleted.eq(false))
        .all(db)
        .await?
        .into_iter()
        .map(|a| (a.id, a))
        .collect())
}

/// Errors no retry can fix: the reminder goes out as the event only.
fn is_refused_for_good(e: &OutboxError) -> bool {
    matches!(
        e,
        OutboxError::BadPhone(_)
            | OutboxError::Content(_)
            | OutboxError::UnknownConfig(_)
            | OutboxError::InactiveConfig(_)
            | OutboxError::Refused { .. }
    )
}

/// The customer as the agent knows them, by follow-up: their name, else
/// their number (one look at `customers` and one at `chats`).
async fn customer_labels(
    db: &DatabaseConnection,
    fus: &[follow_ups::Model],
) -> Result<HashMap<Uuid, String>, sea_orm::DbErr> {
    if fus.is_empty() {
        return Ok(HashMap::new());
    }
    let customer_ids: Vec<Uuid> = fus
        .iter()
        .filter_map(|f| f.customer_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let customers: HashMap<Uuid, customers::Model> = if customer_ids.is_empty() {
        HashMap::new()
    } else {
        customers::Entity::find()
            .filter(customers::Column::Id.is_in(pad_pow2(customer_ids)))
            .all(db)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect()
    };
    let chat_ids: Vec<Uuid> = fus
        .iter()
        .map(|f| f.chat_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let chats: HashMap<Uuid, chats::Model> = chats::Entity::find()
        .filter(chats::Column::Id.is_in(pad_pow2(chat_ids)))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    Ok(fus
        .iter()
        .map(|f| {
            let customer = f.customer_id.and_then(|c| customers.get(&c));
            let chat = chats.get(&f.chat_id);
            (f.id, customer_label(customer, chat))
        })
        .collect())
}

/// The customer's name, else the chat's, else a number.
fn customer_label(customer: Option<&customers::Model>, chat: Option<&chats::Model>) -> String {
    customer
        .and_then(|c| c.name.clone().or(c.whatsapp_name.clone()))
        .or_else(|| chat.and_then(|c| c.customer_name.clone()))
        .or_else(|| customer.and_then(|c| c.phone_number.clone().or(c.wa_id.clone())))
        .or_else(|| chat.and_then(|c| c.phone_number.clone()))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "a customer".to_owned())
}

/// The `(config, number)` pairs whose agent wrote to that number of ours
/// within 24 hours: free text may go to them.
async fn agent_windows_open(
    db: &DatabaseConnection,
    numbers: &[(Uuid, String)],
    now: DateTime<Utc>,
) -> Result<HashSet<(Uuid, String)>, sea_orm::DbErr> {
    if numbers.is_empty() {
        return Ok(HashSet::new());
    }
    let configs: Vec<Uuid> = numbers
        .iter()
        .map(|(c, _)| *c)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let wa_ids: Vec<String> = numbers
        .iter()
        .map(|(_, w)| w.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let found: Vec<(Uuid, Option<String>, Option<DateTime<Utc>>)> = customers::Entity::find()
        .select_only()
        .column(customers::Column::ConfigId)
        .column(customers::Column::WaId)
        .column(customers::Column::LastInboundAt)
        .filter(customers::Column::ConfigId.is_in(pad_pow2(configs)))
        .filter(customers::Column::WaId.is_in(pad_pow2(wa_ids)))
        .into_tuple()
        .all(db)
        .await?;
    Ok(found
        .into_iter()
        .filter(|(_, _, at)| outbox::window_open(*at, now))
        .filter_map(|(config, wa_id, _)| Some((config, wa_id?)))
        .collect())
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
