//! Routing: which configs each change of an event is for (by its phone
//! number id, else its WABA), and what the change becomes there. Template
//! updates are written at once; messages and receipts are gathered into
//! [`Collected`] for the batch's set-based writes; anything else is kept
//! in the event's summary as Meta sent it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::db::pad_pow2;
use wapipe_shared::entities::messages::MessageStatus;
use wapipe_shared::entities::{webhook_events, whatsapp_configs};
use wapipe_shared::whatsapp::{self as wa, Change, Contact, MetaError, Status};

use super::customers::Sender;
use super::extract::{Inbound, clean_json, extract_message};
use super::summary::Summary;
use super::{calls, coexistence, groups, health, identity, preferences, templates};

/// The messages and receipts of a batch, gathered change by change and
/// then stored together ([`super::messages`], [`super::receipts`]).
#[derive(Default)]
pub(super) struct Collected<'a> {
    pub(super) messages: Vec<PendingMessage>,
    pub(super) statuses: Vec<PendingStatus<'a>>,
}

pub(super) struct PendingMessage {
    /// Index of the event in the batch (its summary).
    pub(super) event: usize,
    pub(super) event_id: Uuid,
    pub(super) config_id: Uuid,
    /// `{phone_number_id}:{wa_id or user_id}`: the lane of its jobs.
    pub(super) lane_key: String,
    /// The config's number: the message's `to`.
    pub(super) business: String,
    pub(super) sender: Sender,
    pub(super) m: Inbound,
    pub(super) at: DateTime<Utc>,
}

pub(super) struct PendingStatus<'a> {
    pub(super) event: usize,
    pub(super) event_id: Uuid,
    pub(super) received_at: DateTime<Utc>,
    pub(super) config_id: Uuid,
    pub(super) phone: String,
    pub(super) st: Status<'a>,
}

/// The configs an event may write to.
pub(super) struct Routes {
    configs: Vec<whatsapp_configs::Model>,
}

impl Routes {
    /// Loads, in one query for a whole batch, the (not deleted) configs the
    /// events' changes name; one [`Routes`] per event, in order.
    ///
    /// When ingest tied an event to the config whose app secret signed it,
    /// only configs of that config's company are eligible: a company's app
    /// secret must not let it write into another company's inbox by naming
    /// that company's phone number id in a body it signed itself.
    pub(super) async fn load(
        db: &DatabaseConnection,
        events: &[(Option<Uuid>, &[Change<'_>])],
    ) -> Result<Vec<Self>, DbErr> {
        use whatsapp_configs::Column as W;
        let mut phones = HashSet::new();
        let mut wabas = HashSet::new();
        let mut signers = HashSet::new();
        for (signer, changes) in events {
            phones.extend(changes.iter().filter_map(Change::phone_number_id));
            wabas.extend(changes.iter().filter_map(Change::waba_id));
            signers.extend(*signer);
        }
        if phones.is_empty() && wabas.is_empty() {
            return Ok(events
                .iter()
                .map(|_| Self {
                    configs: Vec::new(),
                })
                .collect());
        }
        // Signers are fetched along, to learn their company in the same query.
        let wanted = Condition::any()
            .add(W::PhoneNumberId.is_in(pad_pow2(phones.into_iter().collect())))
            .add(W::WabaId.is_in(pad_pow2(wabas.into_iter().collect())))
            .add(W::Id.is_in(pad_pow2(signers.iter().copied().collect())));
        let mut configs = whatsapp_configs::Entity::find()
            .filter(W::IsDeleted.eq(false))
            .filter(wanted)
            .all(db)
            .await?;
        // Oldest first, so a WABA-routed change picks the same config each time.
        configs.sort_by_key(|c| c.id);
        let mut company: HashMap<Uuid, String> =
            configs.iter().map(|c| (c.id, c.company.clone())).collect();
        let removed: Vec<Uuid> = signers
            .into_iter()
            .filter(|s| !company.contains_key(s))
            .collect();
        if !removed.is_empty() {
            // Removed since ingest: its company still bounds the event.
            for c in whatsapp_configs::Entity::find()
                .filter(W::Id.is_in(removed))
                .all(db)
                .await?
            {
                company.insert(c.id, c.company);
            }
        }
        Ok(events
            .iter()
            .map(|(signer, _)| {
                let bound = signer.and_then(|s| company.get(&s));
                Self {
                    configs: configs
                        .iter()
                        .filter(|c| !c.is_deleted && bound.is_none_or(|b| &c.company == b))
                        .cloned()
                        .collect(),
                }
            })
            .collect())
    }

    /// The configs a change is for: the one owning its phone number id, or,
    /// without one, every config of its WABA.
    fn for_change(&self, change: &Change<'_>) -> Vec<&whatsapp_configs::Model> {
        match change.phone_number_id() {
            Some(p) => self
                .configs
                .iter()
                .filter(|c| c.phone_number_id == p)
                .take(1)
                .collect(),
            None => match change.waba_id() {
                Some(w) => self.configs.iter().filter(|c| c.waba_id == w).collect(),
                None => Vec::new(),
            },
        }
    }
}

/// One of Meta's errors for `processed_data`; `source` is where it sat:
/// `value`, `message` or `status`.
pub(super) fn error_json(
    config_id: Uuid,
    source: &str,
    field: Option<&str>,
    e: &MetaError,
) -> Value {
    json!({
        "config_id": config_id,
        "source": source,
        "field": field,
        "code": e.code,
        "title": e.title,
        "message": e.message,
        "details": e.details,
    })
}

/// Who wrote `m`: `from` / `from_user_id`, completed by the matching
/// `contacts[]` entry (by wa_id or user_id, or the only one there is).
fn sender_of(m: &Inbound, contacts: &[Contact]) -> Sender {
    let contact = contacts
        .iter()
        .find(|c| m.from.is_some() && c.wa_id == m.from)
        .or_else(|| {
            contacts
                .iter()
                .find(|c| m.from_user_id.is_some() && c.user_id == m.from_user_id)
        })
        .or(if contacts.len() == 1 {
            contacts.first()
        } else {
            None
        });
    // Contacts are read without NULs already (`Contact::from_value`).
    Sender {
        wa_id: m
            .from
            .clone()
            .or_else(|| contact.and_then(|c| c.wa_id.clone())),
        user_id: m
            .from_user_id
            .clone()
            .or_else(|| contact.and_then(|c| c.user_id.clone())),
        name: contact.and_then(|c| c.name.clone()),
        username: contact.and_then(|c| c.username.clone()),
        parent_user_id: contact.and_then(|c| c.parent_user_id.clone()),
    }
}

/// Where a change sits: its event (index in the batch, row) and the
/// batch's clock.
#[derive(Clone, Copy)]
pub(super) struct Position<'e> {
    pub(super) event: usize,
    pub(super) ev: &'e webhook_events::Model,
    pub(super) now: DateTime<Utc>,
}

/// Applies one change: templates at once; messages and statuses are
/// gathered into `collected` for the batch's bulk writes.
pub(super) async fn apply_change<'a, C: ConnectionTrait>(
    db: &C,
    routes: &Routes,
    change: &Change<'a>,
    pos: Position<'_>,
    summary: &mut Summary,
    collected: &mut Collected<'a>,
) -> Result<(), DbErr> {
    let targets = routes.for_change(change);
    let messages_like = change.is_messages();
    // Messages belong to exactly one number.
    let targets: Vec<_> = if messages_like && targets.len() > 1 {
        targets.into_iter().take(1).collect()
    } else {
        targets
    };
    if targets.is_empty() {
        summary.unroutable_changes += 1;
        summary.unroutable.push(json!({
            "field": change.field,
            "phone_number_id": change.phone_number_id(),
            "waba_id": change.waba_id(),
        }));
        return Ok(());
    }
    summary.routed_changes += 1;
    if wa::field_label(change.field) == "other" {
        summary.unknown("field");
    }

    for cfg in &targets {
        for e in change.errors() {
            summary
                .errors
                .push(error_json(cfg.id, "value", change.field, &e));
        }
    }

    if messages_like {
        let cfg = targets[0];
        let phone = change
            .phone_number_id()
            .unwrap_or_else(|| cfg.phone_number_id.clone());
        let contacts = change.contacts();
        for m in change.messages() {
            let before = collected.messages.len();
            collect_message(cfg, &phone, &contacts, m, pos, summary, collected);
            // A change of the user's id applies at once, in order: the
            // batch's messages are filed by their sender's ids afterwards
            // (`identity::resolve_previous_ids`).
            if let Some(p) = collected.messages.get(before)
                && let Some(r) = identity::rekey_of(&p.m)
            {
                match identity::apply(db, cfg.id, &r, p.at, &p.m.provider_message_id, pos.now)
                    .await?
                {
                    identity::RekeyOutcome::Rekeyed => summary.identities_changed += 1,
                    identity::RekeyOutcome::Unchanged => {}
                    identity::RekeyOutcome::Conflict => summary.unknown("rekey_conflict"),
                }
            }
        }
        for s in change.statuses() {
            collect_status(cfg.id, &phone, s, pos, summary, collected);
        }
        return Ok(());
    }

    if change.field.is_some_and(|f| templates::FIELDS.contains(&f)) {
        for cfg in &targets {
            summary.templates_updated +=
                templates::apply_template_update(db, cfg.id, change.value, change.time(), pos.now)
                    .await?;
        }
        return Ok(());
    }

    if change.field.is_some_and(|f| health::FIELDS.contains(&f)) {
        let applied = health::apply(db, &targets, change, pos.ev.received_at, pos.now).await?;
        summary.configs_updated += applied.rows;
        summary.health_events.extend(applied.degraded);
        // Also kept as Meta sent it, below: the columns hold the latest state only.
    }
    if let Some(f @ (coexistence::ECHOES | coexistence::HISTORY | coexistence::STATE_SYNC)) =
        change.field
    {
        for cfg in &targets {
            summary.coexistence_applied +=
                coexistence::apply(db, cfg, f, change.value, pos).await?;
        }
        return Ok(());
    }
    if change.field == Some(calls::FIELD) {
        for cfg in &targets {
            let applied = calls::apply(db, cfg.id, change.value, pos.now).await?;
            summary.calls_updated += applied.changed;
            for _ in 0..applied.skipped {
                summary.unknown("call_without_id_or_customer");
            }
        }
        return Ok(());
    }
    if change.field.is_some_and(|f| groups::FIELDS.contains(&f)) {
        for cfg in &targets {
            let applied = groups::apply(db, cfg.id, change.value, pos.now).await?;
            summary.groups_updated += applied.changed;
            for _ in 0..applied.skipped {
                summary.unknown("group_update");
            }
        }
        return Ok(());
    }
    if change.field == Some(preferences::FIELD) {
        for cfg in &targets {
            summary.preferences_applied +=
                preferences::apply(db, cfg.id, change.value, pos.now).await?;
        }
        return Ok(());
    }

    summary.updates.push(json!({
        "field": change.field,
        "config_ids": targets.iter().map(|c| c.id).collect::<Vec<_>>(),
        "value": clean_json(change.value),
    }));
    Ok(())
}

fn collect_message(
    config: &whatsapp_configs::Model,
    phone: &str,
    contacts: &[Contact],
    raw: &Value,
    pos: Position<'_>,
    summary: &mut Summary,
    collected: &mut Collected<'_>,
) {
    summary.messages.total += 1;
    let m = extract_message(raw);
    for u in &m.unknown {
        summary.unknown(u.as_str());
    }
    if let Some(errors) = &m.errors {
        for e in wa::errors_of(Some(errors)) {
            summary
                .errors
                .push(error_json(config.id, "message", Some("messages"), &e));
        }
    }
    let sender = sender_of(&m, contacts);
    let Some(key) = sender.key().map(str::to_owned) else {
        // No wa_id, no user_id: there is no customer to file it under.
        summary.messages.skipped += 1;
        summary.unknown("no_sender");
        return;
    };
    // The window and the chat order follow Meta's time, but never the
    // future: a skewed clock must not keep a window open.
    let at = std::cmp::min(m.timestamp.unwrap_or(pos.now), pos.now);
    // A group's messages share the group's lane: its chat, in order.
    let key = m.group_id.clone().unwrap_or(key);
    collected.messages.push(PendingMessage {
        event: pos.event,
        event_id: pos.ev.id,
        config_id: config.id,
        lane_key: wapipe_shared::jobs::lane_key(phone, &key),
        business: config.business_number().to_owned(),
        sender,
        m,
        at,
    });
}

fn collect_status<'a>(
    config_id: Uuid,
    phone: &str,
    raw: &'a Value,
    pos: Position<'_>,
    summary: &mut Summary,
    collected: &mut Collected<'a>,
) {
    summary.statuses.total += 1;
    let st = Status::from_value(raw);
    if st
        .status
        .as_deref()
        .is_none_or(|s| s.parse::<MessageStatus>().is_err())
    {
        summary.unknown("status");
    }
    if st.id.is_none() {
        summary.statuses.skipped += 1;
        summary.unknown("status_without_id");
        return;
    }
    collected.statuses.push(PendingStatus {
        event: pos.event,
        event_id: pos.ev.id,
        received_at: pos.ev.received_at,
        config_id,
        phone: phone.to_owned(),
        st,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_prefers_from_then_contact() {
        let m = extract_message(&json!({"id":"w","type":"text","text":{"body":"x"}}));
        let contacts = vec![Contact {
            wa_id: None,
            user_id: Some("US.1".into()),
            name: Some("N".into()),
            username: Some("@n".into()),
            parent_user_id: None,
        }];
        let s = sender_of(&m, &contacts);
        assert_eq!(s.key(), Some("US.1"));
        assert_eq!(s.name.as_deref(), Some("N"));
        assert_eq!(s.username.as_deref(), Some("@n"));
        let m = extract_message(&json!({"id":"w","from":"49","type":"text"}));
        assert_eq!(sender_of(&m, &contacts).key(), Some("49"));
        assert_eq!(sender_of(&m, &[]).name, None);
    }
}
