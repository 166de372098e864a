//! Coexistence: a number also used in the WhatsApp Business app.
//!
//! - `smb_message_echoes`: what the business wrote from the app (the
//!   phone) becomes an outbound message (`origin = admin`, `sender_type =
//!   phone`, status `sent`) in the customer's chat, and pauses the bot for
//!   that chat (`handoff_at`, which the scenario worker honours): a person
//!   is answering. An echoed edit, reaction or revoke applies to the
//!   message it points at (an edit or revoke only to the business's own
//!   messages of that chat), or waits for it, as the customer's do.
//! - `history`: past messages (`history[].threads[].messages[]`, or
//!   `messages[]`), imported in Meta-time order, either way, with the
//!   status `history_context` gives. Nothing else happens: no scenario
//!   runs (no `message.inbound` job), no unread count moves, no 24-hour
//!   window opens, nothing is sent.
//! - `smb_app_state_sync`: the app's contacts (`add`, `edit`) set the
//!   customer's name (`name`, the business's name for them), and the
//!   chat list's copy of it.
//!
//! Messages are inserted with `ON CONFLICT DO NOTHING` on the wamid, and
//! counters and events follow only rows inserted now, so a replay changes
//! nothing.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;
use wapipe_domain::events as ev;
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_shared::entities::{chats, customers, whatsapp_configs};
use wapipe_shared::whatsapp::{array, bounded_id, id_at, lenient_string, str_at};

use super::chats::chat_of;
use super::customers::{Sender, customer_without_message};
use super::effects::{
    Author, EffectOutcome, EffectSource, apply_effect, apply_late_effects, wait_for_targets,
};
use super::extract::{Inbound, clean_str, extract_message};
use super::messages::{new_message, wamid_stored};
use super::route::{PendingMessage, Position};

pub(super) const ECHOES: &str = "smb_message_echoes";
pub(super) const HISTORY: &str = "history";
pub(super) const STATE_SYNC: &str = "smb_app_state_sync";

/// A past or echoed message and whose chat it belongs to.
struct Past {
    m: Inbound,
    customer: Sender,
    outbound: bool,
    status: MessageStatus,
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Applies one coexistence change to its config. Returns the messages
/// inserted and the customers renamed.
pub(super) async fn apply<C: ConnectionTrait>(
    db: &C,
    cfg: &whatsapp_configs::Model,
    field: &str,
    value: &Value,
    pos: Position<'_>,
) -> Result<u64, DbErr> {
    // The business's own messages come from its number: as this change
    // names it, or as the config knows it.
    let ours: Vec<String> = [
        value
            .get("metadata")
            .and_then(|m| str_at(m, "display_phone_number")),
        Some(cfg.business_number()),
    ]
    .into_iter()
    .flatten()
    .map(digits)
    .filter(|d| !d.is_empty())
    .collect();
    match field {
        ECHOES => {
            let past: Vec<Past> = array(value, "message_echoes")
                .iter()
                .map(|raw| {
                    let m = extract_message(raw);
                    // The customer is `to`; some senders swap the two, so
                    // a `to` that is our own number means `from`.
                    let to = id_at(raw.get("to"));
                    let to_is_ours = to.as_deref().is_some_and(|t| ours.contains(&digits(t)));
                    let customer = Sender {
                        wa_id: if to_is_ours { m.from.clone() } else { to },
                        user_id: id_at(raw.get("to_user_id")),
                        name: None,
                        username: None,
                        parent_user_id: None,
                    };
                    Past {
                        m,
                        customer,
                        outbound: true,
                        status: MessageStatus::Sent,
                    }
                })
                .collect();
            store(db, cfg, past, true, pos).await
        }
        HISTORY => {
            let mut past = Vec::new();
            let mut add = |raw: &Value, thread: Option<&str>| {
                let m = extract_message(raw);
                let from = digits(m.from.as_deref().unwrap_or_default());
                let outbound = ours.contains(&from);
                let customer = Sender {
                    wa_id: if outbound {
                        thread.map(|t| bounded_id(t.to_owned()))
                    } else {
                        m.from.clone()
                    },
                    user_id: None,
                    name: None,
                    username: None,
                    parent_user_id: None,
                };
                let status = raw
                    .get("history_context")
                    .and_then(|h| str_at(h, "status"))
                    .and_then(|s| s.to_ascii_lowercase().parse().ok())
                    .unwrap_or(if outbound {
                        MessageStatus::Sent
                    } else {
                        MessageStatus::Delivered
                    });
                past.push(Past {
                    m,
                    customer,
                    outbound,
                    status,
                });
            };
            for chunk in array(value, "history") {
                for thread in array(chunk, "threads") {
                    let id = str_at(thread, "id");
                    for raw in array(thread, "messages") {
                        add(raw, id);
                    }
                }
            }
            for raw in array(value, "messages") {
                add(raw, None);
            }
            // Oldest first: the chats' last message ends at the newest.
            past.sort_by_key(|p| p.m.timestamp);
            store(db, cfg, past, false, pos).await
        }
        STATE_SYNC => rename(db, cfg.id, value, pos.now).await,
        _ => Ok(0),
    }
}

/// Inserts the messages not stored yet, counts them in their chats (never
/// as unread), pauses the bot for echoes, and writes their events.
async fn store<C: ConnectionTrait>(
    db: &C,
    cfg: &whatsapp_configs::Model,
    past: Vec<Past>,
    pause_bot: bool,
    pos: Position<'_>,
) -> Result<u64, DbErr> {
    let now = pos.now;
    let mut created = Vec::new();
    let mut chats_touched = Vec::new();
    let mut new_chats = Vec::new();
    let mut targets = Vec::new();
    for p in past {
        if p.customer.key().is_none() || p.m.provider_message_id.is_empty() {
            continue;
        }
        let customer = customer_without_message(db, cfg.id, &p.customer, now).await?;
        let (chat, new_chat) = chat_of(db, &customer, now).await?;
        let at = std::cmp::min(p.m.timestamp.unwrap_or(now), now);
        let id = Uuid::now_v7();
        let pending = PendingMessage {
            event: pos.event,
            event_id: pos.ev.id,
            config_id: cfg.id,
            lane_key: String::new(),
            business: cfg.business_number().to_owned(),
            sender: p.customer.clone(),
            m: p.m,
            at,
        };
        let mut am = new_message(id, chat.id, customer.id, None, &pending, now);
        am.created_at = Set(at);
        am.status = Set(p.status);
        am.read_status = Set(wapipe_domain::receipts::read_status_of(p.status).map(str::to_owned));
        if p.outbound {
            am.direction = Set(Direction::Outbound);
            am.origin = Set(Origin::Admin);
            am.sender_type = Set("phone".to_owned());
            am.from = Set(Some(cfg.business_number().to_owned()));
            am.to = Set(customer.wa_id.clone());
            am.is_read = Set(true);
        } else {
            // Past messages were seen in the app: nothing for agents to read.
            am.is_read = Set(true);
        }
        let inserted = messages::Entity::insert(am)
            .on_conflict(wamid_stored())
            .exec_without_returning(db)
            .await?;
        if inserted == 0 {
            continue;
        }
        created.push(id);
        // An edit, reaction or revoke from the app applies to the message
        // it points at, as the customer's own do (or waits for it); and
        // those that came before this message apply to it now.
        if let Some(effect) = &pending.m.effect {
            let author = if p.outbound {
                Author::Business(cfg.business_number())
            } else {
                Author::Customer(&customer)
            };
            let source = EffectSource {
                wamid: &pending.m.provider_message_id,
                at,
            };
            match apply_effect(db, cfg.id, chat.id, author, effect, source, now).await? {
                EffectOutcome::Applied(target) => targets.push(target),
                EffectOutcome::TargetMissing => {
                    wait_for_targets(db, vec![(id, effect.target().to_owned())]).await?;
                }
            }
        }
        apply_late_effects(db, &[(cfg.id, pending.m.provider_message_id.as_str())], now).await?;
        if new_chat {
            new_chats.push(chat.id);
        } else if !chats_touched.contains(&chat.id) {
            chats_touched.push(chat.id);
        }
        count(db, &chat, id, &pending.m, p.outbound, at, pause_bot).await?;
    }
    let n = created.len() as u64;
    let mut events = ev::chat_events(db, ev::CHAT_CREATED, &new_chats).await?;
    events.extend(ev::chat_events(db, ev::CHAT_UPDATED, &chats_touched).await?);
    events.extend(ev::message_events(db, ev::MESSAGE_CREATED, &created).await?);
    events.extend(ev::message_events(db, ev::MESSAGE_UPDATED, &targets).await?);
    ev::record(db, &events).await?;
    Ok(n)
}

/// Counts one new message in its chat: totals, the last message if it is
/// the newest, never the unread count; an echo pauses the bot from its
/// time on.
async fn count<C: ConnectionTrait>(
    db: &C,
    chat: &chats::Model,
    message_id: Uuid,
    m: &Inbound,
    outbound: bool,
    at: DateTime<Utc>,
    pause_bot: bool,
) -> Result<(), DbErr> {
    use chats::Column as Ch;
    let side = if outbound {
        Ch::AgentMessages
    } else {
        Ch::CustomerMessages
    };
    chats::Entity::update_many()
        .col_expr(Ch::TotalMessages, Expr::col(Ch::TotalMessages).add(1))
        .col_expr(side, Expr::col(side).add(1))
        .filter(Ch::Id.eq(chat.id))
        .exec(db)
        .await?;
    if pause_bot {
        // Paused from the business's latest own message on; resolving the
        // chat after it hands it back to the bot, as for a handoff.
        chats::Entity::update_many()
            .col_expr(Ch::HandoffAt, Expr::value(at))
            .filter(Ch::Id.eq(chat.id))
            .filter(
                Condition::any()
                    .add(Ch::HandoffAt.is_null())
                    .add(Ch::HandoffAt.lt(at)),
            )
            .exec(db)
            .await?;
    }
    if m.is_visible() {
        chats::Entity::update_many()
            .col_expr(Ch::LastMessage, Expr::value(clean_str(&m.preview())))
            .col_expr(Ch::LastMessageTime, Expr::value(at))
            .col_expr(Ch::LastMessageId, Expr::value(message_id))
            .filter(Ch::Id.eq(chat.id))
            .filter(
                Condition::any()
                    .add(Ch::LastMessageTime.is_null())
                    .add(Ch::LastMessageTime.lte(at)),
            )
            .exec(db)
            .await?;
    }
    Ok(())
}

/// `smb_app_state_sync` contacts: `add` and `edit` set the customer's
/// name (created if new, without a window); `remove` keeps the customer.
async fn rename<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let mut n = 0;
    let mut renamed = Vec::new();
    for s in array(value, "state_sync") {
        let action = str_at(s, "action").map(str::to_ascii_lowercase);
        if !matches!(action.as_deref(), Some("add" | "edit")) {
            continue;
        }
        let Some(contact) = s.get("contact") else {
            continue;
        };
        let (Some(phone), Some(name)) = (
            lenient_string(contact.get("phone_number")).map(|p| bounded_id(digits(&p))),
            str_at(contact, "full_name").or_else(|| str_at(contact, "first_name")),
        ) else {
            continue;
        };
        let sender = Sender {
            wa_id: Some(phone),
            user_id: None,
            name: None,
            username: None,
            parent_user_id: None,
        };
        let c = customer_without_message(db, config_id, &sender, now).await?;
        let name = clean_str(name);
        if c.name.as_deref() != Some(name.as_str()) {
            customers::Entity::update_many()
                .col_expr(customers::Column::Name, Expr::value(name.clone()))
                .col_expr(customers::Column::UpdatedAt, Expr::value(now))
                .filter(customers::Column::Id.eq(c.id))
                .exec(db)
                .await?;
            n += 1;
        }
        // The chat list keeps its own copy of the name: it follows (also
        // when only the chat's copy lags, as after an earlier version).
        let stale: Vec<Uuid> = chats::Entity::find()
            .filter(chats::Column::CustomerId.eq(c.id))
            .filter(
                Condition::any()
                    .add(chats::Column::CustomerName.is_null())
                    .add(chats::Column::CustomerName.ne(name.as_str())),
            )
            .all(db)
            .await?
            .into_iter()
            .map(|ch| ch.id)
            .collect();
        if !stale.is_empty() {
            chats::Entity::update_many()
                .col_expr(chats::Column::CustomerName, Expr::value(name))
                .col_expr(chats::Column::UpdatedAt, Expr::value(now))
                .filter(chats::Column::Id.is_in(stale.clone()))
                .exec(db)
                .await?;
            renamed.extend(stale);
        }
    }
    if !renamed.is_empty() {
        ev::record_chats(db, ev::CHAT_UPDATED, &renamed).await?;
    }
    Ok(n)
}
