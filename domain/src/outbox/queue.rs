//! Queueing a send: everything we send becomes a `messages` row first
//! (`direction = outbound`, `status = queued`, Meta's request body in
//! `payload`), created with its customer and chat when they are new, in one
//! transaction. Then [`enqueue`] publishes the `outbound.send` job and
//! stamps `dispatched_at`, which tells the sweep a job is on its way.
//!
//! Used by every producer (`wapipe send`, the API, scenarios, reminders),
//! so the sweep does not re-publish their messages needlessly.

use chrono::{DateTime, Utc};
use sea_orm::ExprTrait;
use sea_orm::sea_query::{Alias, Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait,
};
use uuid::Uuid;
use wapipe_shared::broker::Broker;
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_shared::entities::{chats, customers, whatsapp_configs};
use wapipe_shared::jobs::{Job, OutboundSend, lane_key};

use super::content::OutboundContent;
use super::{Answer, OutboxError};
use crate::clock::now;

/// The column the sweep reads; see the migration `m20261121_000003_outbound`.
pub const DISPATCHED_AT: &str = "dispatched_at";

pub fn dispatched_at() -> Alias {
    Alias::new(DISPATCHED_AT)
}

/// A WhatsApp number as Meta's `wa_id`: an optional `+`, then 6 to 15
/// digits and nothing else (E.164 allows at most 15).
pub fn normalize_wa_id(input: &str) -> Result<String, OutboxError> {
    let s = input.trim();
    let digits = s.strip_prefix('+').unwrap_or(s);
    if (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits.to_owned())
    } else {
        Err(OutboxError::BadPhone(input.to_owned()))
    }
}

/// A send to queue.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub config_id: Uuid,
    /// The recipient: a wa_id, or a phone number in the same form.
    pub to: String,
    pub content: OutboundContent,
    /// Reply to this message of the customer (its wamid).
    pub reply_to: Option<String>,
    /// `admin`, `bot` or `system`.
    pub origin: Origin,
    /// `agent`, `bot` or `system` (seed 002 `senderType`).
    pub sender_type: String,
    pub sender_id: Option<Uuid>,
    /// For a bot reply: what it answers (unique in `messages`).
    pub answers: Option<Answer>,
}

/// A queued message and the lane its job goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub message_id: Uuid,
    pub chat_id: Uuid,
    pub customer_id: Uuid,
    pub config_id: Uuid,
    /// `{phone_number_id}:{wa_id}`.
    pub lane_key: String,
    /// False when the message's [`Answer`] was queued before: nothing new
    /// was written, and its job was (or will be, by the sweep) published.
    pub is_new: bool,
}

/// Creates the message (and its customer and chat when new) as `queued`.
/// Does not publish: call [`enqueue`] after, or let the sweep find it.
pub async fn queue_message(
    db: &DatabaseConnection,
    new: NewOutbound,
) -> Result<QueuedMessage, OutboxError> {
    queue_messages(db, vec![new])
        .await?
        .pop()
        .ok_or_else(|| sea_orm::DbErr::RecordNotInserted.into())
}

/// Creates several messages to one recipient of one config (a bot's
/// replies to one inbound message, say) in one transaction, in order: the
/// customer and chat are resolved once and the chat row updated once, so a
/// reply costs one insert rather than a transaction of its own. Answers in
/// the order given; a message whose [`Answer`] was queued before comes back
/// as that first row with `is_new = false`.
pub async fn queue_messages(
    db: &DatabaseConnection,
    news: Vec<NewOutbound>,
) -> Result<Vec<QueuedMessage>, OutboxError> {
    use messages::Column as M;
    let Some(first) = news.first() else {
        return Ok(Vec::new());
    };
    let (config_id, to) = (first.config_id, first.to.clone());
    if news.iter().any(|n| n.config_id != config_id || n.to != to) {
        return Err(OutboxError::Config(
            "messages queued together go to one recipient of one config".into(),
        ));
    }
    let wa_id = normalize_wa_id(&to)?;
    for new in &news {
        new.content.validate()?;
        if new.origin == Origin::User {
            return Err(OutboxError::Config(
                "an outbound message has origin admin, bot or system, not user".into(),
            ));
        }
    }
    let config = whatsapp_configs::Entity::find_by_id(config_id)
        .one(db)
        .await?
        .ok_or(OutboxError::UnknownConfig(config_id))?;
    if config.is_deleted || !config.is_active {
        return Err(OutboxError::InactiveConfig(config.id));
    }
    let now = now();
    let lane_key = lane_key(&config.phone_number_id, &wa_id);

    let txn = db.begin().await?;
    // Uniqueness lives in the database: insert-or-nothing, then read back
    // whichever row won (ours or a concurrent one).
    customers::Entity::insert(customers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config.id),
        wa_id: Set(Some(wa_id.clone())),
        phone_number: Set(Some(wa_id.clone())),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([customers::Column::ConfigId, customers::Column::WaId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    let customer = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config.id))
        .filter(customers::Column::WaId.eq(&wa_id))
        .one(&txn)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("customer after upsert".into()))?;
    chats::Entity::insert(chats::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config.id),
        customer_id: Set(customer.id),
        phone_number: Set(Some(wa_id.clone())),
        customer_name: Set(customer.name.clone().or(customer.whatsapp_name.clone())),
        // Named, not left to the column defaults: SQLite keeps the defaults
        // the table was created with (`open`, `normal`).
        status: Set("unassigned".to_owned()),
        priority: Set("medium".to_owned()),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([chats::Column::ConfigId, chats::Column::CustomerId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    let chat = chats::Entity::find()
        .filter(chats::Column::ConfigId.eq(config.id))
        .filter(chats::Column::CustomerId.eq(customer.id))
        .one(&txn)
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("chat after upsert".into()))?;

    let queued = |message_id, chat_id, customer_id, is_new| QueuedMessage {
        message_id,
        chat_id,
        customer_id,
        config_id: config.id,
        lane_key: lane_key.clone(),
        is_new,
    };
    let mut out = Vec::with_capacity(news.len());
    // What the chat row counts: the latest new message, and who wrote.
    let mut latest: Option<(Uuid, String)> = None;
    let (mut agent, mut bot) = (0i32, 0i32);
    for new in news {
        let body = new.content.graph_body(&wa_id, new.reply_to.as_deref());
        let fields = new.content.row_fields(&body);
        let message_id = Uuid::now_v7();
        let inserted = messages::Entity::insert(messages::ActiveModel {
            id: Set(message_id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(config.id),
            chat_id: Set(chat.id),
            customer_id: Set(customer.id),
            conversation_id: Set(None),
            provider_message_id: Set(None),
            direction: Set(Direction::Outbound),
            origin: Set(new.origin),
            sender_type: Set(new.sender_type.clone()),
            sender_id: Set(new.sender_id),
            r#type: Set(new.content.graph_type().to_owned()),
            text: Set(fields.text),
            media: Set(fields.media),
            location: Set(fields.location),
            interactive: Set(fields.interactive),
            template: Set(fields.template),
            reaction: Set(fields.reaction),
            context: Set(new
                .reply_to
                .as_ref()
                .map(|id| serde_json::json!({ "message_id": id }))),
            reply_to_provider_id: Set(new.reply_to.clone()),
            payload: Set(Some(body)),
            status: Set(MessageStatus::Queued),
            answers_message_id: Set(new.answers.map(|a| a.message_id)),
            answer_seq: Set(new.answers.map(|a| a.seq)),
            ..Default::default()
        })
        // Rows without an answer have NULLs there, which never conflict.
        .on_conflict(
            OnConflict::columns([M::AnswersMessageId, M::AnswerSeq])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        if inserted == 0 {
            // This reply was queued before (a redelivered inbound message):
            // keep the first, count nothing twice. The insert waited for
            // any concurrent writer of that key, so its row is visible.
            let answer = new
                .answers
                .ok_or_else(|| sea_orm::DbErr::RecordNotInserted)?;
            let first = messages::Entity::find()
                .filter(M::AnswersMessageId.eq(answer.message_id))
                .filter(M::AnswerSeq.eq(answer.seq))
                .one(&txn)
                .await?
                .ok_or_else(|| sea_orm::DbErr::RecordNotFound("the reply queued before".into()))?;
            out.push(queued(first.id, first.chat_id, first.customer_id, false));
            continue;
        }
        match new.origin {
            Origin::Admin => agent += 1,
            Origin::Bot => bot += 1,
            Origin::System | Origin::User => {}
        }
        latest = Some((message_id, new.content.preview()));
        out.push(queued(message_id, chat.id, customer.id, true));
    }

    if let Some((message_id, preview)) = latest {
        let fresh = out.iter().filter(|q| q.is_new).count() as i32;
        // The chat list shows the latest message and counts who wrote.
        chats::Entity::update_many()
            .col_expr(chats::Column::LastMessage, Expr::value(preview))
            .col_expr(chats::Column::LastMessageTime, Expr::value(now))
            .col_expr(chats::Column::LastMessageId, Expr::value(message_id))
            .col_expr(
                chats::Column::TotalMessages,
                Expr::col(chats::Column::TotalMessages).add(fresh),
            )
            .col_expr(
                chats::Column::AgentMessages,
                Expr::col(chats::Column::AgentMessages).add(agent),
            )
            .col_expr(
                chats::Column::BotMessages,
                Expr::col(chats::Column::BotMessages).add(bot),
            )
            .col_expr(chats::Column::UpdatedAt, Expr::value(now))
            .filter(chats::Column::Id.eq(chat.id))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(out)
}

/// Publishes the message's `outbound.send` job, then stamps
/// `dispatched_at`. A failed publish leaves the row to the sweep.
pub async fn enqueue(
    db: &impl ConnectionTrait,
    broker: &dyn Broker,
    queued: &QueuedMessage,
) -> Result<(), OutboxError> {
    enqueue_all(db, broker, std::slice::from_ref(queued)).await
}

/// Publishes the jobs of `queued`'s new messages one after another (they
/// share a lane, whose order is the order the customer reads them in),
/// then stamps `dispatched_at` on all of them at once.
pub async fn enqueue_all(
    db: &impl ConnectionTrait,
    broker: &dyn Broker,
    queued: &[QueuedMessage],
) -> Result<(), OutboxError> {
    let mut published = Vec::with_capacity(queued.len());
    for q in queued.iter().filter(|q| q.is_new) {
        broker
            .publish(OutboundSend::message(q.message_id, q.lane_key.clone()).to_outbound())
            .await?;
        published.push(q.message_id);
    }
    stamp_dispatched(db, &published, now()).await?;
    Ok(())
}

/// Queues the message and publishes its job, unless its [`Answer`] was
/// queued before (then its job was published, or the sweep will).
pub async fn send(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    new: NewOutbound,
) -> Result<QueuedMessage, OutboxError> {
    send_all(db, broker, vec![new])
        .await?
        .pop()
        .ok_or_else(|| sea_orm::DbErr::RecordNotInserted.into())
}

/// [`queue_messages`], then [`enqueue_all`]: one recipient's messages,
/// queued in one transaction and published in order.
pub async fn send_all(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    news: Vec<NewOutbound>,
) -> Result<Vec<QueuedMessage>, OutboxError> {
    let queued = queue_messages(db, news).await?;
    enqueue_all(db, broker, &queued).await?;
    Ok(queued)
}

/// Stamps `dispatched_at` on messages whose job the broker has.
pub async fn stamp_dispatched(
    db: &impl ConnectionTrait,
    ids: &[Uuid],
    at: DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    messages::Entity::update_many()
        .col_expr(dispatched_at(), Expr::value(at))
        .filter(messages::Column::Id.is_in(ids.iter().copied()))
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        assert_eq!(
            normalize_wa_id("+4915112345678").expect("ok"),
            "4915112345678"
        );
        assert_eq!(normalize_wa_id(" 123456 ").expect("ok"), "123456");
        for bad in [
            "",
            "+",
            "12345",
            "1234567890123456",
            "+49 151",
            "49-151-1234",
            "++491511234",
        ] {
            assert!(normalize_wa_id(bad).is_err(), "{bad:?}");
        }
    }
}
