//! Chats: one per customer and config, created on first contact, and the
//! counters and last-message preview a batch's new messages move.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait,
    QueryFilter,
};
use uuid::Uuid;
use wapipe_shared::db::{pow2_chunks, with_values};
use wapipe_shared::entities::{chats, customers};

use super::batch::{CHUNK, any_of};
use super::groups::{Party, party};
use super::messages::InboundStored;
use super::route::PendingMessage;

/// The chat of each party of the batch (a customer, or a group), created
/// on first contact, keyed by the party's customer id. A chat created now counts in the customer's `total_chats`.
pub(super) async fn upsert_chats<C: ConnectionTrait>(
    db: &C,
    rows: &[PendingMessage],
    parties: &HashMap<Party, customers::Model>,
    now: DateTime<Utc>,
) -> Result<(HashMap<Uuid, chats::Model>, HashSet<Uuid>), DbErr> {
    let mut wanted: Vec<&customers::Model> = Vec::new();
    let mut seen = HashSet::new();
    for r in rows {
        if let Some(c) = parties.get(&party(r))
            && seen.insert(c.id)
        {
            wanted.push(c);
        }
    }
    let mut out = HashMap::with_capacity(wanted.len());
    let mut created = Vec::new();
    let mut created_chats = HashSet::new();
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
                    .update_columns([chats::Column::PhoneNumber, chats::Column::CustomerName])
                    .to_owned(),
            )
            .exec_with_returning(db)
            .await?
        {
            if ids.contains(&chat.id) {
                created.push(chat.customer_id);
                created_chats.insert(chat.id);
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
    Ok((out, created_chats))
}

/// The customer's chat, created if it has none (counted in the customer's
/// `total_chats`, as for a message's chat); `true` when created now.
pub(super) async fn chat_of<C: ConnectionTrait>(
    db: &C,
    customer: &customers::Model,
    now: DateTime<Utc>,
) -> Result<(chats::Model, bool), DbErr> {
    let inserted = chats::Entity::insert(new_chat(Uuid::now_v7(), customer, now))
        .on_conflict(
            OnConflict::columns([chats::Column::ConfigId, chats::Column::CustomerId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    if inserted > 0 {
        customers::Entity::update_many()
            .col_expr(
                customers::Column::TotalChats,
                Expr::col(customers::Column::TotalChats).add(1),
            )
            .filter(customers::Column::Id.eq(customer.id))
            .exec(db)
            .await?;
    }
    let chat = chats::Entity::find()
        .filter(chats::Column::ConfigId.eq(customer.config_id))
        .filter(chats::Column::CustomerId.eq(customer.id))
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("chat of customer {}", customer.id)))?;
    Ok((chat, inserted > 0))
}

fn new_chat(id: Uuid, customer: &customers::Model, now: DateTime<Utc>) -> chats::ActiveModel {
    chats::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(customer.config_id),
        customer_id: Set(customer.id),
        phone_number: Set(customer.wa_id.clone()),
        customer_name: Set(customer.name.clone()),
        status: Set("unassigned".to_owned()),
        priority: Set("medium".to_owned()),
        assigned_to: Set(None),
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
        handoff_at: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        source: Set("whatsapp".to_owned()),
        provider: Set("meta-whatsapp".to_owned()),
        phone_number_id: Set(None),
        // A group's chat is known to Meta by the group's id.
        provider_chat_id: Set(customer.wa_group_id.clone()),
        // The rest of seed 002's fields start empty (the API fills them).
        ..Default::default()
    }
}

/// Counts the batch's new messages in their chats, one UPDATE per chat:
/// totals always; unread and the last message only for messages that show
/// on their own, and the last message only if it is not older than the one
/// shown (Meta delivers out of order).
pub(super) async fn count_in_chats<C: ConnectionTrait>(
    db: &C,
    rows: &[PendingMessage],
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
                 last_message_id = CASE WHEN {newer} THEN v.message_id ELSE c.last_message_id END, \
                 awaiting_reply_since = CASE WHEN v.visible > 0 \
                   THEN COALESCE(c.awaiting_reply_since, $1) ELSE c.awaiting_reply_since END \
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
                )
                .col_expr(
                    Ch::AwaitingReplySince,
                    Func::coalesce([Expr::col(Ch::AwaitingReplySince), Expr::value(now)]).into(),
                );
        }
        q.filter(Ch::Id.eq(chat_id)).exec(db).await?;
    }
    Ok(())
}
