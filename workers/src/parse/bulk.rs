//! Set-based writes for a batch of events: every inbound message and every
//! status receipt of the batch is stored with a handful of multi-row
//! statements instead of several statements each. Round trips, not rows,
//! are what a worker pays for (measured: at one message per statement the
//! worker and PostgreSQL spent their time in socket wake-ups).
//!
//! The rules are those of DESIGN §4–§5, unchanged: uniqueness lives in the
//! database (`ON CONFLICT`), counters move only for messages really
//! inserted, a customer has at most one open conversation, the chat's last
//! message follows Meta's time. Rows of one batch are handled in batch
//! order, so the result is the one processing the events one by one gives.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::db::{pad_pow2, pow2_chunks, with_values};
use wapipe_shared::entities::conversations::{self, ConversationStatus};
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_shared::entities::{chats, customers, message_status_events};
use wapipe_shared::whatsapp::Status;

use super::extract::{Inbound, clean_json, clean_str, extract_message};
use super::store::{
    self, EffectOutcome, EffectSource, Sender, WINDOW, customer_refresh, new_customer,
};

/// Rows per multi-row INSERT: below PostgreSQL's 65,535 bind parameters and
/// SQLite's 32,766 for the widest table (`messages`, ~45 columns). Batches
/// are split into power-of-two chunks and `IN` lists padded likewise
/// ([`pow2_chunks`], [`pad_pow2`]) so each statement has a few cached shapes.
const CHUNK: usize = 256;
/// Values per `IN (…)` list.
const IN_CHUNK: usize = 1024;

/// `IN (…)` values, padded to a power-of-two count.
fn any_of<T: Clone>(values: impl IntoIterator<Item = T>) -> Vec<T> {
    pad_pow2(values.into_iter().collect())
}

/// One inbound message of the batch, with its resolved sender.
pub struct InboundRow<'a> {
    pub config_id: Uuid,
    pub sender: &'a Sender,
    pub m: &'a Inbound,
    /// Meta's time, never in the future.
    pub at: DateTime<Utc>,
}

/// What storing an inbound message did.
#[derive(Debug, Clone)]
pub struct InboundStored {
    pub customer_id: Uuid,
    pub chat_id: Uuid,
    pub message_id: Uuid,
    /// False when the wamid was already stored (or earlier in the batch).
    pub is_new: bool,
    /// For a new reaction, edit or revoke: whether its target was found.
    pub effect: Option<EffectOutcome>,
    /// Reactions, edits and revokes that came before this (new) message and
    /// were applied to it now.
    pub late_effects: u64,
}

type Who = (Uuid, Option<String>, Option<String>);

fn who(r: &InboundRow<'_>) -> Who {
    (
        r.config_id,
        r.sender.wa_id.clone(),
        r.sender.user_id.clone(),
    )
}

/// Stores the batch's inbound messages: customers, chats, conversations,
/// messages, effects and chat counters. Returns one outcome per row, in
/// order.
pub async fn store_inbound<C: ConnectionTrait>(
    db: &C,
    rows: &[InboundRow<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<InboundStored>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let customers = upsert_customers(db, rows, now).await?;
    let chats = upsert_chats(db, rows, &customers, now).await?;

    // Which wamids are stored already; the first of a wamid in the batch
    // is the new one, later copies are duplicates of it.
    let mut known = existing_messages(db, rows).await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut fresh = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let key = (r.config_id, r.m.provider_message_id.clone());
        match known.get(&key) {
            Some(id) => ids.push((*id, false)),
            None => {
                let id = Uuid::now_v7();
                known.insert(key, id);
                ids.push((id, true));
                fresh.push(i);
            }
        }
    }
    let customer_of = |r: &InboundRow<'_>| -> Result<&customers::Model, DbErr> {
        customers.get(&who(r)).ok_or_else(|| {
            DbErr::RecordNotFound(format!("customer {:?} not stored", r.sender.key()))
        })
    };
    let chat_of = |customer_id: Uuid| -> Result<&chats::Model, DbErr> {
        chats
            .get(&customer_id)
            .ok_or_else(|| DbErr::RecordNotFound(format!("chat of customer {customer_id}")))
    };

    // Conversations first, so each new message is inserted with its own.
    let fresh_rows: Vec<(&InboundRow<'_>, Uuid, Uuid)> = fresh
        .iter()
        .map(|&i| {
            let c = customer_of(&rows[i])?;
            Ok((&rows[i], c.id, chat_of(c.id)?.id))
        })
        .collect::<Result<_, DbErr>>()?;
    let conversation_of = attach_conversations(db, &fresh_rows, now).await?;

    let mut models = Vec::with_capacity(fresh.len());
    for (n, &i) in fresh.iter().enumerate() {
        let (_, customer_id, chat_id) = fresh_rows[n];
        models.push(new_message(
            ids[i].0,
            rows[i].config_id,
            chat_id,
            customer_id,
            conversation_of[n],
            rows[i].m,
            now,
        ));
    }
    let mut inserted = 0;
    for chunk in pow2_chunks(models, CHUNK) {
        inserted += messages::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([
                    messages::Column::ConfigId,
                    messages::Column::ProviderMessageId,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    if inserted != fresh.len() as u64 {
        // Another transaction stored one of these wamids since we looked:
        // our conversation counts would be off by it. Roll back; the retry
        // sees it as a duplicate.
        return Err(DbErr::Custom(format!(
            "{} of {} new messages were stored concurrently; retrying",
            fresh.len() as u64 - inserted,
            fresh.len()
        )));
    }

    // Effects that arrived before their target, oldest first; then the
    // batch's own, in batch order (a reaction to a message earlier in the
    // batch finds it).
    let fresh_keys: Vec<(Uuid, &str)> = fresh
        .iter()
        .map(|&i| (rows[i].config_id, rows[i].m.provider_message_id.as_str()))
        .collect();
    let mut late = apply_late_effects(db, &fresh_keys, now).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut waiting = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let customer = customer_of(r)?;
        let chat_id = chat_of(customer.id)?.id;
        let (message_id, is_new) = ids[i];
        let effect = match (&r.m.effect, is_new) {
            (Some(effect), true) => Some(
                store::apply_effect(
                    db,
                    r.config_id,
                    chat_id,
                    customer,
                    effect,
                    EffectSource {
                        wamid: &r.m.provider_message_id,
                        at: r.at,
                    },
                    now,
                )
                .await?,
            ),
            _ => None,
        };
        if let (Some(EffectOutcome::TargetMissing), Some(e)) = (effect, &r.m.effect) {
            // Kept pending: applied when the target arrives.
            waiting.push((message_id, e.target().to_owned()));
        }
        let late_effects = if is_new {
            late.remove(&(r.config_id, r.m.provider_message_id.clone()))
                .unwrap_or(0)
        } else {
            0
        };
        out.push(InboundStored {
            customer_id: customer.id,
            chat_id,
            message_id,
            is_new,
            effect,
            late_effects,
        });
    }
    wait_for_targets(db, waiting).await?;
    count_in_chats(db, rows, &out, now).await?;
    Ok(out)
}

/// Marks effects whose target is not stored yet with the target's wamid
/// (`effect_target`), to be applied when it arrives: one statement on
/// PostgreSQL, one per effect elsewhere.
async fn wait_for_targets<C: ConnectionTrait>(
    db: &C,
    waiting: Vec<(Uuid, String)>,
) -> Result<(), DbErr> {
    if waiting.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() == DbBackend::Postgres {
        for chunk in waiting.chunks(CHUNK) {
            with_values(
                db,
                "UPDATE messages AS m SET effect_target = v.target FROM {values} WHERE m.id = v.id",
                Vec::new(),
                &[("id", "uuid"), ("target", "text")],
                chunk
                    .iter()
                    .map(|(id, target)| vec![(*id).into(), target.clone().into()])
                    .collect(),
            )
            .await?;
        }
        return Ok(());
    }
    for (id, target) in waiting {
        messages::Entity::update_many()
            .col_expr(messages::Column::EffectTarget, Expr::value(target))
            .filter(messages::Column::Id.eq(id))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Applies the stored reactions, edits and revokes that wait for one of
/// `targets` (config, wamid), oldest first, and clears their
/// `effect_target` (also when the rules refuse them: someone else's edit
/// never applies). Returns how many were applied per target.
async fn apply_late_effects<C: ConnectionTrait>(
    db: &C,
    targets: &[(Uuid, &str)],
    now: DateTime<Utc>,
) -> Result<HashMap<(Uuid, String), u64>, DbErr> {
    use messages::Column as M;
    let mut applied = HashMap::new();
    if targets.is_empty() {
        return Ok(applied);
    }
    let configs: HashSet<Uuid> = targets.iter().map(|t| t.0).collect();
    let wanted: HashSet<(Uuid, &str)> = targets.iter().copied().collect();
    let mut pending = Vec::new();
    for chunk in targets.chunks(IN_CHUNK) {
        pending.extend(
            messages::Entity::find()
                .filter(M::ConfigId.is_in(any_of(configs.iter().copied())))
                .filter(M::EffectTarget.is_in(any_of(chunk.iter().map(|t| t.1))))
                .all(db)
                .await?
                .into_iter()
                .filter(|m| {
                    m.effect_target
                        .as_deref()
                        .is_some_and(|t| wanted.contains(&(m.config_id, t)))
                }),
        );
    }
    if pending.is_empty() {
        return Ok(applied);
    }
    pending.sort_by_key(|m| (m.timestamp.unwrap_or(m.created_at), m.id));
    let authors: HashMap<Uuid, customers::Model> = customers::Entity::find()
        .filter(customers::Column::Id.is_in(any_of(pending.iter().map(|m| m.customer_id))))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    for p in &pending {
        let effect = p
            .payload
            .as_ref()
            .and_then(|raw| extract_message(raw).effect);
        if let (Some(effect), Some(author)) = (effect, authors.get(&p.customer_id)) {
            let outcome = store::apply_effect(
                db,
                p.config_id,
                p.chat_id,
                author,
                &effect,
                EffectSource {
                    wamid: p.provider_message_id.as_deref().unwrap_or_default(),
                    at: std::cmp::min(p.timestamp.unwrap_or(p.created_at), p.created_at),
                },
                now,
            )
            .await?;
            if outcome == EffectOutcome::Applied {
                *applied
                    .entry((p.config_id, effect.target().to_owned()))
                    .or_insert(0) += 1;
            }
        }
        messages::Entity::update_many()
            .col_expr(M::EffectTarget, Expr::value(Option::<String>::None))
            .filter(M::Id.eq(p.id))
            .exec(db)
            .await?;
    }
    Ok(applied)
}

/// Creates or refreshes every sender of the batch. Phone-number senders
/// (the common case) go in one multi-row upsert; senders with a `user_id`
/// take the general path one by one. Keyed by (config, wa_id, user_id).
async fn upsert_customers<C: ConnectionTrait>(
    db: &C,
    rows: &[InboundRow<'_>],
    now: DateTime<Utc>,
) -> Result<HashMap<Who, customers::Model>, DbErr> {
    // One entry per sender: the latest time, the last name given.
    let mut order: Vec<Who> = Vec::new();
    let mut merged: HashMap<Who, Sender> = HashMap::new();
    let mut seen: HashMap<Who, DateTime<Utc>> = HashMap::new();
    for r in rows {
        let k = who(r);
        let at = seen.entry(k.clone()).or_insert(r.at);
        *at = std::cmp::max(*at, r.at);
        let s = merged.entry(k.clone()).or_insert_with(|| {
            order.push(k.clone());
            r.sender.clone()
        });
        if r.sender.name.is_some() {
            s.name = r.sender.name.clone();
        }
    }
    let mut out = HashMap::with_capacity(order.len());
    let (simple, general): (Vec<&Who>, Vec<&Who>) = order
        .iter()
        .partition(|(_, wa_id, user_id)| wa_id.is_some() && user_id.is_none());
    for chunk in pow2_chunks(simple, CHUNK) {
        let models = chunk
            .iter()
            .map(|k| new_customer(Uuid::now_v7(), k.0, &merged[*k], seen[*k], now));
        for c in customers::Entity::insert_many(models)
            .on_conflict(customer_refresh())
            .exec_with_returning(db)
            .await?
        {
            out.insert((c.config_id, c.wa_id.clone(), None), c);
        }
    }
    for k in general {
        let c = store::upsert_customer(db, k.0, &merged[k], seen[k], now).await?;
        out.insert(k.clone(), c);
    }
    Ok(out)
}

/// The chat of each customer of the batch, created on first contact, keyed
/// by customer id. A chat created now counts in the customer's `total_chats`.
async fn upsert_chats<C: ConnectionTrait>(
    db: &C,
    rows: &[InboundRow<'_>],
    customers: &HashMap<Who, customers::Model>,
    now: DateTime<Utc>,
) -> Result<HashMap<Uuid, chats::Model>, DbErr> {
    let mut wanted: Vec<&customers::Model> = Vec::new();
    let mut seen = HashSet::new();
    for r in rows {
        if let Some(c) = customers.get(&who(r))
            && seen.insert(c.id)
        {
            wanted.push(c);
        }
    }
    let mut out = HashMap::with_capacity(wanted.len());
    let mut created = Vec::new();
    for chunk in pow2_chunks(wanted, CHUNK) {
        let mut ids = HashSet::new();
        let models: Vec<_> = chunk
            .iter()
            .map(|c| {
                let id = Uuid::now_v7();
                ids.insert(id);
                new_chat(id, c, now)
            })
            .collect();
        // DO UPDATE (not NOTHING) so RETURNING yields the row either way;
        // the update only refreshes the denormalised customer fields.
        for chat in chats::Entity::insert_many(models)
            .on_conflict(
                OnConflict::columns([chats::Column::ConfigId, chats::Column::CustomerId])
                    .update_columns([chats::Column::CustomerPhone, chats::Column::CustomerName])
                    .to_owned(),
            )
            .exec_with_returning(db)
            .await?
        {
            if ids.contains(&chat.id) {
                created.push(chat.customer_id);
            }
            out.insert(chat.customer_id, chat);
        }
    }
    if !created.is_empty() {
        customers::Entity::update_many()
            .col_expr(
                customers::Column::TotalChats,
                Expr::col(customers::Column::TotalChats).add(1),
            )
            .filter(customers::Column::Id.is_in(any_of(created)))
            .exec(db)
            .await?;
    }
    Ok(out)
}

fn new_chat(id: Uuid, customer: &customers::Model, now: DateTime<Utc>) -> chats::ActiveModel {
    chats::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(customer.config_id),
        customer_id: Set(customer.id),
        customer_phone: Set(customer.wa_id.clone()),
        customer_name: Set(customer.name.clone()),
        status: Set("open".to_owned()),
        priority: Set("normal".to_owned()),
        assigned_agent_id: Set(None),
        unread_count: Set(0),
        last_message: Set(None),
        last_message_time: Set(None),
        last_message_id: Set(None),
        total_messages: Set(0),
        customer_messages: Set(0),
        agent_messages: Set(0),
        bot_messages: Set(0),
        is_archived: Set(false),
        is_pinned: Set(false),
        is_muted: Set(false),
        first_response_at: Set(None),
        resolved_at: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
    }
}

/// The stored messages among a list of (config, wamid): a lateral lookup
/// per pair, which can only be a probe of the unique index. (A plain join
/// is planned from size estimates; on a table never analysed it may still
/// hash-join a full scan.)
const EXISTING_BY_JOIN: &str = "SELECT m.id, m.config_id, m.provider_message_id FROM {values} \
     CROSS JOIN LATERAL (SELECT id, config_id, provider_message_id FROM messages \
       WHERE config_id = v.config_id AND provider_message_id = v.wamid LIMIT 1) AS m";
const WAMID_KEY_COLUMNS: [(&str, &str); 2] = [("config_id", "uuid"), ("wamid", "text")];

/// (config, wamid) -> message id, for the batch's wamids already stored.
async fn existing_messages<C: ConnectionTrait>(
    db: &C,
    rows: &[InboundRow<'_>],
) -> Result<HashMap<(Uuid, String), Uuid>, DbErr> {
    let wamids: Vec<&str> = rows
        .iter()
        .map(|r| r.m.provider_message_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let configs: HashSet<Uuid> = rows.iter().map(|r| r.config_id).collect();
    let mut out = HashMap::new();
    if db.get_database_backend() == DbBackend::Postgres {
        // One lookup per wamid, not `IN (…)`: for an IN list of hundreds
        // of wamids PostgreSQL (without statistics, as on a table never
        // analysed) estimates that it matches everything and scans every
        // message of the config (62 ms at 300k messages); the probes take
        // 1 ms.
        let keys: Vec<(Uuid, &str)> = rows
            .iter()
            .map(|r| (r.config_id, r.m.provider_message_id.as_str()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for chunk in keys.chunks(IN_CHUNK) {
            let found = with_values(
                db,
                EXISTING_BY_JOIN,
                Vec::new(),
                &WAMID_KEY_COLUMNS,
                chunk
                    .iter()
                    .map(|(c, w)| vec![(*c).into(), (*w).to_owned().into()])
                    .collect(),
            )
            .await?;
            for r in found {
                let id: Uuid = r.try_get_by_index(0)?;
                let config_id: Uuid = r.try_get_by_index(1)?;
                let wamid: String = r.try_get_by_index(2)?;
                out.insert((config_id, wamid), id);
            }
        }
        return Ok(out);
    }
    for chunk in wamids.chunks(IN_CHUNK) {
        let found: Vec<(Uuid, Uuid, Option<String>)> = messages::Entity::find()
            .select_only()
            .column(messages::Column::Id)
            .column(messages::Column::ConfigId)
            .column(messages::Column::ProviderMessageId)
            // Both columns, so the unique (config, wamid) index serves it.
            .filter(messages::Column::ConfigId.is_in(any_of(configs.iter().copied())))
            .filter(messages::Column::ProviderMessageId.is_in(any_of(chunk.iter().copied())))
            .into_tuple()
            .all(db)
            .await?;
        for (id, config_id, wamid) in found {
            if let Some(w) = wamid {
                out.insert((config_id, w), id);
            }
        }
    }
    Ok(out)
}

fn new_message(
    id: Uuid,
    config_id: Uuid,
    chat_id: Uuid,
    customer_id: Uuid,
    conversation_id: Uuid,
    m: &Inbound,
    now: DateTime<Utc>,
) -> messages::ActiveModel {
    messages::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        chat_id: Set(chat_id),
        customer_id: Set(customer_id),
        conversation_id: Set(Some(conversation_id)),
        provider_message_id: Set(Some(m.provider_message_id.clone())),
        direction: Set(Direction::Inbound),
        origin: Set(Origin::User),
        sender_type: Set("customer".to_owned()),
        sender_id: Set(None),
        r#type: Set(m.kind.clone()),
        text: Set(m.text.clone()),
        media: Set(m.media.clone()),
        location: Set(m.location.clone()),
        contacts: Set(m.contacts.clone()),
        interactive: Set(m.interactive.clone()),
        template: Set(None),
        reaction: Set(m.reaction.clone()),
        reactions: Set(None),
        context: Set(m.context.clone()),
        reply_to_provider_id: Set(m.reply_to.clone()),
        is_forwarded: Set(m.is_forwarded),
        referral: Set(m.referral.clone()),
        payload: Set(Some(m.payload.clone())),
        errors: Set(m.errors.clone()),
        // Inbound messages have no delivery of ours to track: they are
        // delivered by definition, and `is_read` says whether an agent saw it.
        status: Set(MessageStatus::Delivered),
        error_code: Set(None),
        error_title: Set(None),
        error_details: Set(None),
        timestamp: Set(m.timestamp),
        sent_at: Set(None),
        delivered_at: Set(None),
        read_at: Set(None),
        failed_at: Set(None),
        dispatched_at: Set(None),
        attempt_count: Set(0),
        is_read: Set(false),
        is_edited: Set(false),
        edit_history: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        effect_target: Set(None),
        answers_message_id: Set(None),
        answer_seq: Set(None),
    }
}

/// A conversation as the batch leaves it.
struct Conv {
    model: conversations::Model,
    /// As loaded; `None` for one the batch creates.
    loaded: Option<conversations::Model>,
    added: i32,
}

/// Attaches each new inbound message (customer, chat, Meta time) to its
/// customer's 24-hour window, in order, and returns each one's
/// conversation id.
///
/// - Open conversations whose window has passed (by the clock) become
///   `expired` first: the lazy half of [`store::expire_conversations`].
/// - A conversation covers the message when the message's own window
///   `[at, at + 24h]` overlaps `[opened_at, expires_at]`; it then grows to
///   include the message (`expires_at` = last inbound + 24 h).
/// - Otherwise a new conversation starts at `at`: `open` if its window is
///   still running and no other one is open, else born `expired` (a late
///   message from long ago). So at most one conversation per customer is
///   open, whatever order messages arrive in.
async fn attach_conversations<C: ConnectionTrait>(
    db: &C,
    fresh: &[(&InboundRow<'_>, Uuid, Uuid)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbErr> {
    use conversations::Column as Cv;
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    let customers: Vec<Uuid> = fresh
        .iter()
        .map(|f| f.1)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let configs: HashSet<Uuid> = fresh.iter().map(|f| f.0.config_id).collect();
    let min_at = fresh.iter().map(|f| f.0.at).min().unwrap_or(now);
    let max_at = fresh.iter().map(|f| f.0.at).max().unwrap_or(now);
    let mut convs: Vec<Conv> = Vec::new();
    for chunk in customers.chunks(IN_CHUNK) {
        let loaded = conversations::Entity::find()
            .filter(Cv::ConfigId.is_in(any_of(configs.iter().copied())))
            .filter(Cv::CustomerId.is_in(any_of(chunk.iter().copied())))
            .filter(
                Condition::any()
                    .add(Cv::Status.eq(ConversationStatus::Open))
                    .add(
                        Condition::all()
                            .add(Cv::OpenedAt.lte(max_at + WINDOW))
                            .add(Cv::ExpiresAt.gte(min_at)),
                    ),
            )
            .order_by_desc(Cv::OpenedAt)
            .all(db)
            .await?;
        convs.extend(loaded.into_iter().map(|c| Conv {
            loaded: Some(c.clone()),
            model: c,
            added: 0,
        }));
    }
    // Per customer, newest window first.
    let mut of_customer: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, c) in convs.iter().enumerate() {
        of_customer.entry(c.model.customer_id).or_default().push(i);
    }

    let mut out = Vec::with_capacity(fresh.len());
    for &(row, customer_id, chat_id) in fresh {
        let at = row.at;
        let list = of_customer.entry(customer_id).or_default();
        for &i in list.iter() {
            let c = &mut convs[i].model;
            if c.status == ConversationStatus::Open && c.expires_at <= now {
                c.status = ConversationStatus::Expired;
                c.closed_at = Some(c.expires_at);
            }
        }
        let open = list
            .iter()
            .any(|&i| convs[i].model.status == ConversationStatus::Open);
        let covering = list.iter().copied().find(|&i| {
            let c = &convs[i].model;
            c.opened_at <= at + WINDOW && c.expires_at >= at
        });
        if let Some(i) = covering {
            let conv = &mut convs[i];
            let c = &mut conv.model;
            c.opened_at = std::cmp::min(c.opened_at, at);
            c.last_inbound_at = std::cmp::max(c.last_inbound_at, at);
            c.expires_at = c.last_inbound_at + WINDOW;
            // A late message can stretch an expired window past now: it is
            // open again, unless another conversation already is.
            if c.status == ConversationStatus::Expired {
                if c.expires_at > now && !open {
                    c.status = ConversationStatus::Open;
                    c.closed_at = None;
                } else {
                    c.closed_at = Some(c.expires_at);
                }
            }
            c.chat_id = c.chat_id.or(Some(chat_id));
            c.message_count += 1;
            conv.added += 1;
            out.push(c.id);
            continue;
        }
        let expires_at = at + WINDOW;
        let is_open = expires_at > now && !open;
        let id = Uuid::now_v7();
        convs.push(Conv {
            model: conversations::Model {
                id,
                created_at: now,
                updated_at: now,
                config_id: row.config_id,
                customer_id,
                chat_id: Some(chat_id),
                status: if is_open {
                    ConversationStatus::Open
                } else {
                    ConversationStatus::Expired
                },
                opened_at: at,
                last_inbound_at: at,
                expires_at,
                closed_at: (!is_open).then_some(expires_at),
                provider_conversation_id: None,
                origin_type: None,
                message_count: 1,
            },
            loaded: None,
            added: 1,
        });
        let new = convs.len() - 1;
        // Keep the newest-first order the search above relies on.
        let pos = list
            .iter()
            .position(|&i| convs[i].model.opened_at <= at)
            .unwrap_or(list.len());
        list.insert(pos, new);
        out.push(id);
    }

    let mut created = Vec::new();
    let mut changed = Vec::new();
    for conv in &convs {
        let c = &conv.model;
        let Some(was) = &conv.loaded else {
            created.push(conversations::ActiveModel {
                id: Set(c.id),
                created_at: Set(c.created_at),
                updated_at: Set(c.updated_at),
                config_id: Set(c.config_id),
                customer_id: Set(c.customer_id),
                chat_id: Set(c.chat_id),
                status: Set(c.status),
                opened_at: Set(c.opened_at),
                last_inbound_at: Set(c.last_inbound_at),
                expires_at: Set(c.expires_at),
                closed_at: Set(c.closed_at),
                provider_conversation_id: Set(None),
                origin_type: Set(None),
                message_count: Set(c.message_count),
            });
            continue;
        };
        if conv.added == 0 && c.status == was.status {
            continue;
        }
        changed.push(ConvChange {
            id: c.id,
            added: conv.added,
            opened_at: c.opened_at,
            last_inbound_at: c.last_inbound_at,
            expires_at: c.expires_at,
            status: (c.status != was.status || c.closed_at != was.closed_at)
                .then_some((c.status, c.closed_at)),
            chat_id: if was.chat_id.is_none() {
                c.chat_id
            } else {
                None
            },
        });
    }
    update_conversations(db, &changed, now).await?;
    for chunk in pow2_chunks(created, CHUNK) {
        conversations::Entity::insert_many(chunk)
            .exec_without_returning(db)
            .await?;
    }
    Ok(out)
}

/// What a batch changes in a stored conversation.
struct ConvChange {
    id: Uuid,
    /// New messages in it; the window fields are written only when > 0.
    added: i32,
    opened_at: DateTime<Utc>,
    last_inbound_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// A new status and `closed_at`, when they changed.
    status: Option<(ConversationStatus, Option<DateTime<Utc>>)>,
    /// Set only where the row has none.
    chat_id: Option<Uuid>,
}

/// Writes only what changed, and the count as an increment, so the sweep
/// expiring a row meanwhile is not undone. One statement on PostgreSQL,
/// one per conversation elsewhere.
async fn update_conversations<C: ConnectionTrait>(
    db: &C,
    changed: &[ConvChange],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use conversations::Column as Cv;
    if changed.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() == DbBackend::Postgres {
        let rows = changed
            .iter()
            .map(|c| {
                vec![
                    c.id.into(),
                    c.added.into(),
                    c.opened_at.into(),
                    c.last_inbound_at.into(),
                    c.expires_at.into(),
                    c.status.is_some().into(),
                    c.status.map(|(s, _)| s.as_str().to_owned()).into(),
                    c.status.and_then(|(_, at)| at).into(),
                    c.chat_id.into(),
                ]
            })
            .collect();
        with_values(
            db,
            "UPDATE conversations AS c SET updated_at = $1, \
             opened_at = CASE WHEN v.added > 0 THEN v.opened_at ELSE c.opened_at END, \
             last_inbound_at = CASE WHEN v.added > 0 THEN v.last_inbound_at ELSE c.last_inbound_at END, \
             expires_at = CASE WHEN v.added > 0 THEN v.expires_at ELSE c.expires_at END, \
             message_count = c.message_count + v.added, \
             status = CASE WHEN v.set_status THEN v.status ELSE c.status END, \
             closed_at = CASE WHEN v.set_status THEN v.closed_at ELSE c.closed_at END, \
             chat_id = COALESCE(c.chat_id, v.chat_id) \
             FROM {values} WHERE c.id = v.id",
            vec![now.into()],
            &[
                ("id", "uuid"),
                ("added", "int4"),
                ("opened_at", "timestamptz"),
                ("last_inbound_at", "timestamptz"),
                ("expires_at", "timestamptz"),
                ("set_status", "bool"),
                ("status", "text"),
                ("closed_at", "timestamptz"),
                ("chat_id", "uuid"),
            ],
            rows,
        )
        .await?;
        return Ok(());
    }
    for c in changed {
        let mut q = conversations::Entity::update_many().col_expr(Cv::UpdatedAt, Expr::value(now));
        if c.added > 0 {
            q = q
                .col_expr(Cv::OpenedAt, Expr::value(c.opened_at))
                .col_expr(Cv::LastInboundAt, Expr::value(c.last_inbound_at))
                .col_expr(Cv::ExpiresAt, Expr::value(c.expires_at))
                .col_expr(Cv::MessageCount, Expr::col(Cv::MessageCount).add(c.added));
        }
        if let Some((status, closed_at)) = c.status {
            q = q
                .col_expr(Cv::Status, Expr::value(status.as_str()))
                .col_expr(Cv::ClosedAt, Expr::value(closed_at));
        }
        if let Some(chat_id) = c.chat_id {
            q = q.col_expr(Cv::ChatId, Expr::value(chat_id));
        }
        q.filter(Cv::Id.eq(c.id)).exec(db).await?;
    }
    Ok(())
}

/// Counts the batch's new messages in their chats, one UPDATE per chat:
/// totals always; unread and the last message only for messages that show
/// on their own, and the last message only if it is not older than the one
/// shown (Meta delivers out of order).
async fn count_in_chats<C: ConnectionTrait>(
    db: &C,
    rows: &[InboundRow<'_>],
    stored: &[InboundStored],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use chats::Column as Ch;
    struct Count {
        total: i32,
        visible: i32,
        /// The latest visible message: time, id, preview. On equal times
        /// the later one in the batch wins, as one-by-one processing does.
        last: Option<(DateTime<Utc>, Uuid, String)>,
    }
    let mut order = Vec::new();
    let mut counts: HashMap<Uuid, Count> = HashMap::new();
    for (r, s) in rows.iter().zip(stored).filter(|(_, s)| s.is_new) {
        let c = counts.entry(s.chat_id).or_insert_with(|| {
            order.push(s.chat_id);
            Count {
                total: 0,
                visible: 0,
                last: None,
            }
        });
        c.total += 1;
        if r.m.is_visible() {
            c.visible += 1;
            if c.last.as_ref().is_none_or(|(t, _, _)| *t <= r.at) {
                c.last = Some((r.at, s.message_id, r.m.preview()));
            }
        }
    }
    if db.get_database_backend() == DbBackend::Postgres && !order.is_empty() {
        let rows = order
            .iter()
            .map(|id| {
                let c = &counts[id];
                let (at, message_id, preview) = match &c.last {
                    Some((at, m, p)) => (Some(*at), Some(*m), Some(p.clone())),
                    None => (None, None, None),
                };
                vec![
                    (*id).into(),
                    c.total.into(),
                    c.visible.into(),
                    at.into(),
                    message_id.into(),
                    preview.into(),
                ]
            })
            .collect();
        // Every SET expression sees the row as it was, so `newer` means the
        // same in all three; it is false for a chat with no visible message
        // in the batch (`v.at` NULL): its preview stays as it is.
        let newer =
            "v.at IS NOT NULL AND (c.last_message_time IS NULL OR c.last_message_time <= v.at)";
        with_values(
            db,
            &format!(
                "UPDATE chats AS c SET updated_at = $1, \
                 total_messages = c.total_messages + v.total, \
                 customer_messages = c.customer_messages + v.total, \
                 unread_count = c.unread_count + v.visible, \
                 last_message = CASE WHEN {newer} THEN v.preview ELSE c.last_message END, \
                 last_message_time = CASE WHEN {newer} THEN v.at ELSE c.last_message_time END, \
                 last_message_id = CASE WHEN {newer} THEN v.message_id ELSE c.last_message_id END \
                 FROM {{values}} WHERE c.id = v.id"
            ),
            vec![now.into()],
            &[
                ("id", "uuid"),
                ("total", "int4"),
                ("visible", "int4"),
                ("at", "timestamptz"),
                ("message_id", "uuid"),
                ("preview", "text"),
            ],
            rows,
        )
        .await?;
        return Ok(());
    }
    for chat_id in order {
        let c = &counts[&chat_id];
        let mut q = chats::Entity::update_many()
            .col_expr(Ch::TotalMessages, Expr::col(Ch::TotalMessages).add(c.total))
            .col_expr(
                Ch::CustomerMessages,
                Expr::col(Ch::CustomerMessages).add(c.total),
            )
            .col_expr(Ch::UpdatedAt, Expr::value(now));
        if let Some((at, message_id, preview)) = &c.last {
            let newer = Condition::any()
                .add(Ch::LastMessageTime.is_null())
                .add(Ch::LastMessageTime.lte(*at));
            q = q
                .col_expr(Ch::UnreadCount, Expr::col(Ch::UnreadCount).add(c.visible))
                .col_expr(
                    Ch::LastMessage,
                    Expr::case(newer.clone(), Expr::value(preview.clone()))
                        .finally(Expr::col(Ch::LastMessage))
                        .into(),
                )
                .col_expr(
                    Ch::LastMessageTime,
                    Expr::case(newer.clone(), Expr::value(*at))
                        .finally(Expr::col(Ch::LastMessageTime))
                        .into(),
                )
                .col_expr(
                    Ch::LastMessageId,
                    Expr::case(newer, Expr::value(*message_id))
                        .finally(Expr::col(Ch::LastMessageId))
                        .into(),
                );
        }
        q.filter(Ch::Id.eq(chat_id)).exec(db).await?;
    }
    Ok(())
}

/// One status receipt of the batch.
pub struct StatusRow<'a, 'b> {
    pub config_id: Uuid,
    pub st: &'a Status<'b>,
    pub event_id: Uuid,
    pub received_at: DateTime<Utc>,
}

/// Stores the batch's receipts, each once (`ON CONFLICT DO NOTHING` on
/// config, wamid, status and time), in multi-row INSERTs. A receipt
/// without a timestamp takes its event's arrival time, which is the same
/// on every replay. Returns, per row, whether it was new (`None` when it
/// names no message).
pub async fn store_statuses<C: ConnectionTrait>(
    db: &C,
    rows: &[StatusRow<'_, '_>],
    now: DateTime<Utc>,
) -> Result<Vec<Option<bool>>, DbErr> {
    use message_status_events::Column as S;
    type Key = (Uuid, String, String, DateTime<Utc>);
    let mut out = Vec::with_capacity(rows.len());
    let mut keys: Vec<Option<Key>> = Vec::with_capacity(rows.len());
    let mut models = Vec::new();
    let mut batch_keys = HashSet::new();
    for r in rows {
        let Some(wamid) = &r.st.id else {
            keys.push(None);
            continue;
        };
        let st = r.st;
        let errors = (!st.errors.is_empty())
            .then(|| Value::Array(st.errors.iter().map(|e| clean_json(&e.raw)).collect()));
        let key = (
            r.config_id,
            clean_str(wamid),
            clean_str(st.status.as_deref().unwrap_or("unknown")),
            st.timestamp.unwrap_or(r.received_at),
        );
        if batch_keys.insert(key.clone()) {
            models.push(message_status_events::ActiveModel {
                id: Set(Uuid::now_v7()),
                created_at: Set(now),
                updated_at: Set(now),
                config_id: Set(key.0),
                provider_message_id: Set(key.1.clone()),
                message_id: Set(None),
                status: Set(key.2.clone()),
                timestamp: Set(key.3),
                recipient_id: Set(st
                    .recipient_id
                    .as_deref()
                    .or(st.recipient_user_id.as_deref())
                    .map(clean_str)),
                conversation: Set(st.conversation.map(clean_json)),
                pricing: Set(st.pricing.map(clean_json)),
                errors: Set(errors),
                error_code: Set(st
                    .errors
                    .first()
                    .and_then(|e| e.code.as_deref())
                    .map(clean_str)),
                raw: Set(Some(clean_json(st.raw))),
                applied: Set(false),
                webhook_event_id: Set(Some(r.event_id)),
            });
        }
        keys.push(Some(key));
    }
    // Which of them the database did not have: RETURNING lists only the
    // rows a DO NOTHING insert really wrote.
    let mut new: HashSet<Key> = HashSet::new();
    for chunk in pow2_chunks(models, CHUNK) {
        let written = message_status_events::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([S::ConfigId, S::ProviderMessageId, S::Status, S::Timestamp])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_with_returning(db)
            .await?;
        new.extend(
            written
                .into_iter()
                .map(|w| (w.config_id, w.provider_message_id, w.status, w.timestamp)),
        );
    }
    for key in keys {
        // The first copy of a key in the batch counts as the new one.
        out.push(key.map(|k| new.remove(&k)));
    }
    Ok(out)
}

#[cfg(test)]
mod plan_tests {
    use sea_orm::ConnectionTrait;
    use wapipe_migrations::{Migrator, MigratorTrait};
    use wapipe_shared::db::{self, testing, with_values};

    use super::{EXISTING_BY_JOIN, WAMID_KEY_COLUMNS};

    /// The batch's wamid lookup stays one index probe per wamid on a big
    /// table that was never analysed (autovacuum off, or a fresh restore).
    /// Written as `IN (…)` it scanned every message of the config.
    #[tokio::test]
    async fn wamid_lookup_probes_the_index_per_wamid_on_a_big_unanalysed_table() {
        let url = testing::fresh_postgres_url()
            .await
            .expect("create a test database (is PostgreSQL on 127.0.0.1:5432?)");
        let db = db::connect(&url, 2).await.expect("connect");
        Migrator::up(&db, None).await.expect("migrate");
        let config = "00000000-0000-0000-0000-000000000001";
        // Rows only (no parents): foreign keys are not what is measured.
        db.execute_unprepared(&format!(
            "SET session_replication_role = replica; \
             INSERT INTO messages (id, created_at, updated_at, config_id, chat_id, customer_id, \
               provider_message_id, direction, origin, sender_type, type, status) \
             SELECT gen_random_uuid(), now(), now(), '{config}', gen_random_uuid(), \
               gen_random_uuid(), 'wamid.' || g, 'inbound', 'user', 'customer', 'text', 'received' \
             FROM generate_series(1, 50000) g; \
             SET session_replication_role = origin;"
        ))
        .await
        .expect("fill");
        let config: uuid::Uuid = config.parse().expect("uuid");
        let rows = (0..256)
            .map(|i| {
                let wamid = if i % 2 == 0 {
                    format!("wamid.{}", i + 1)
                } else {
                    format!("wamid.new{i}")
                };
                vec![config.into(), wamid.into()]
            })
            .collect();
        let plan: Vec<String> = with_values(
            &db,
            &format!("EXPLAIN ANALYZE {EXISTING_BY_JOIN}"),
            Vec::new(),
            &WAMID_KEY_COLUMNS,
            rows,
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("plan line"))
        .collect();
        let text = plan.join("\n");
        assert!(text.contains("ux_messages_wamid"), "{text}");
        let cond = plan
            .iter()
            .find(|l| l.contains("Index Cond"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(cond.contains("provider_message_id"), "{text}");
        assert!(!text.contains("Rows Removed by"), "{text}");
        assert!(!text.contains("Seq Scan on messages"), "{text}");
        // 128 of the 256 exist.
        assert!(
            plan.iter()
                .any(|l| l.contains("Nested Loop") && l.contains("rows=128")),
            "{text}"
        );
    }
}
