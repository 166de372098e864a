//! Queueing a send: everything we send becomes a `messages` row first
//! (`direction = outbound`, `status = queued`, Meta's request body in
//! `payload`), created with its customer and chat when they are new, in one
//! transaction. Then [`enqueue`] publishes the `outbound.send` job and
//! stamps `dispatched_at`, which tells the sweep a job is on its way.
//!
//! Used by every producer (`wapipe send`, the API, scenarios, reminders),
//! so the sweep does not re-publish their messages needlessly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::ExprTrait;
use sea_orm::sea_query::{Alias, Expr, Func, LockType, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;
use wapipe_shared::broker::Broker;
use wapipe_shared::db::{pad_pow2, pow2_chunks, with_values};
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_shared::entities::{chats, customers, templates, whatsapp_configs};
use wapipe_shared::jobs::{Job, OutboundSend, lane_key};

use super::content::OutboundContent;
use super::{Answer, OutboxError};
use crate::clock::now;
use crate::events;
use crate::stats::ChatResponse;

/// The column the sweep reads; see the migration `m20261121_000003_outbound`.
pub const DISPATCHED_AT: &str = "dispatched_at";

/// Rows per multi-row INSERT: well below both databases' bind-parameter
/// limits for `messages` (~45 columns).
const CHUNK: usize = 256;

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

/// Who a send goes to: a phone number (Meta's `to`), or, for a user known
/// by no number (a username user), their business-scoped user id (Meta's
/// `recipient`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Recipient {
    Phone(String),
    UserId(String),
    /// A WhatsApp group, by Meta's group id (Meta's `to`, with
    /// `recipient_type: group`). Written `group:<id>` wherever a recipient
    /// is a string (the CLI's `--to`, [`NewOutbound::to`]).
    Group(String),
}

/// How a group is written as a recipient string: `group:<Meta's id>`.
pub const GROUP_PREFIX: &str = "group:";

/// The `customers` column of each kind of recipient, unique per config.
const KEY_COLUMNS: [customers::Column; 3] = [
    customers::Column::WaId,
    customers::Column::UserId,
    customers::Column::WaGroupId,
];

impl Recipient {
    /// A phone number (as [`normalize_wa_id`]), else a BSUID: two ASCII
    /// letters (the country), a dot, then up to 128 letters, digits or
    /// dots (`US.13491208655302741918`).
    pub fn parse(input: &str) -> Result<Self, OutboxError> {
        if let Some(id) = input.trim().strip_prefix(GROUP_PREFIX) {
            // Meta's group ids are opaque: anything printable and short.
            let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
            return if ok {
                Ok(Recipient::Group(id.to_owned()))
            } else {
                Err(OutboxError::BadPhone(input.to_owned()))
            };
        }
        if let Ok(wa_id) = normalize_wa_id(input) {
            return Ok(Recipient::Phone(wa_id));
        }
        let s = input.trim();
        let bsuid = s.len() > 3
            && s.len() <= 131
            && s.as_bytes()[..2].iter().all(u8::is_ascii_alphabetic)
            && s.as_bytes()[2] == b'.'
            && s.as_bytes()[3..]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'.');
        if bsuid {
            Ok(Recipient::UserId(s.to_owned()))
        } else {
            Err(OutboxError::BadPhone(input.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Phone(s) | Recipient::UserId(s) | Recipient::Group(s) => s,
        }
    }

    /// Which of [`KEY_COLUMNS`] holds this kind of recipient.
    fn kind(&self) -> usize {
        match self {
            Recipient::Phone(_) => 0,
            Recipient::UserId(_) => 1,
            Recipient::Group(_) => 2,
        }
    }

    /// The recipients a customer row answers to.
    pub fn of_customer(c: &customers::Model) -> impl Iterator<Item = Recipient> {
        [
            c.wa_id.clone().map(Recipient::Phone),
            c.user_id.clone().map(Recipient::UserId),
            c.wa_group_id.clone().map(Recipient::Group),
        ]
        .into_iter()
        .flatten()
    }

    pub fn is_user_id(&self) -> bool {
        matches!(self, Recipient::UserId(_))
    }
}

/// How a send addresses a customer row ([`NewOutbound::to`]): its number,
/// else its business-scoped user id, else, for a group, `group:<id>`.
pub fn address_of(c: &customers::Model) -> Option<String> {
    c.wa_id
        .clone()
        .or_else(|| c.phone_number.clone())
        .or_else(|| c.user_id.clone())
        .or_else(|| c.wa_group_id.as_ref().map(|g| format!("{GROUP_PREFIX}{g}")))
}

/// A send to queue.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub config_id: Uuid,
    /// The recipient: a wa_id (or a phone number in the same form), or the
    /// business-scoped user id of a customer who has no number.
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
/// as that first row with `is_new = false`. A message refused (bad number
/// or content, unknown or inactive config) refuses them all: nothing is
/// written.
pub async fn queue_messages(
    db: &DatabaseConnection,
    news: Vec<NewOutbound>,
) -> Result<Vec<QueuedMessage>, OutboxError> {
    let Some(first) = news.first() else {
        return Ok(Vec::new());
    };
    let (config_id, to) = (first.config_id, first.to.clone());
    if news.iter().any(|n| n.config_id != config_id || n.to != to) {
        return Err(OutboxError::Config(
            "messages queued together go to one recipient of one config".into(),
        ));
    }
    let checked = check(db, news)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    write(db, checked).await
}

/// Creates messages to any number of recipients, of any configs (a batch
/// of reminders to different agents, say), in one transaction: customers,
/// chats and messages are each written with a few multi-row statements,
/// and each chat row is updated once. Answers one result per message, in
/// the order given: a message refused for good (bad number or content,
/// unknown or inactive config) is that message's error and is not written;
/// the others are. Messages to one recipient keep their order. The outer
/// error is the database's, and then nothing was written.
pub async fn queue_each(
    db: &DatabaseConnection,
    news: Vec<NewOutbound>,
) -> Result<Vec<Result<QueuedMessage, OutboxError>>, OutboxError> {
    let checked = check(db, news).await?;
    let mut accepted = Vec::with_capacity(checked.len());
    let mut out: Vec<Option<Result<QueuedMessage, OutboxError>>> =
        Vec::with_capacity(checked.len());
    for c in checked {
        match c {
            Ok(c) => {
                accepted.push(c);
                out.push(None);
            }
            Err(e) => out.push(Some(Err(e))),
        }
    }
    let mut written = write(db, accepted).await?.into_iter();
    Ok(out
        .into_iter()
        .map(|slot| match slot {
            Some(refused) => refused,
            None => written
                .next()
                .ok_or_else(|| sea_orm::DbErr::RecordNotInserted.into()),
        })
        .collect())
}

/// A message that passed [`check`]: its recipient and the lane its job
/// goes to.
struct Checked {
    new: NewOutbound,
    to: Recipient,
    lane_key: String,
    /// The config's number: the message's `from`.
    business: String,
}

/// What no retry can fix, per message: the number, the content, the
/// origin, the config (one look at `whatsapp_configs` for all), and, for
/// templates, whether this customer may get it
/// ([`crate::templates::send_refusal`]: two more looks, only for batches
/// with templates).
async fn check(
    db: &DatabaseConnection,
    news: Vec<NewOutbound>,
) -> Result<Vec<Result<Checked, OutboxError>>, OutboxError> {
    let config_ids: Vec<Uuid> = news
        .iter()
        .map(|n| n.config_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let configs: HashMap<Uuid, whatsapp_configs::Model> = if config_ids.is_empty() {
        HashMap::new()
    } else {
        whatsapp_configs::Entity::find()
            .filter(whatsapp_configs::Column::Id.is_in(pad_pow2(config_ids)))
            .all(db)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect()
    };
    let known = TemplateSends::load(db, &news).await?;
    let one = |new: NewOutbound| -> Result<Checked, OutboxError> {
        let to = Recipient::parse(&new.to)?;
        new.content.validate()?;
        if new.origin == Origin::User {
            return Err(OutboxError::Config(
                "an outbound message has origin admin, bot or system, not user".into(),
            ));
        }
        let config = configs
            .get(&new.config_id)
            .ok_or(OutboxError::UnknownConfig(new.config_id))?;
        if config.is_deleted || !config.is_active {
            return Err(OutboxError::InactiveConfig(config.id));
        }
        if let Some(r) = known.refusal(&new, &to) {
            return Err(OutboxError::Refused {
                code: r.code,
                message: r.message,
            });
        }
        Ok(Checked {
            lane_key: lane_key(&config.phone_number_id, to.as_str()),
            business: config.business_number().to_owned(),
            to,
            new,
        })
    };
    Ok(news.into_iter().map(one).collect())
}

/// The templates a batch sends and the customers it sends them to, for
/// [`crate::templates::send_refusal`].
#[derive(Default)]
struct TemplateSends {
    templates: Vec<templates::Model>,
    customers: HashMap<(Uuid, Recipient), customers::Model>,
}

impl TemplateSends {
    async fn load(db: &DatabaseConnection, news: &[NewOutbound]) -> Result<Self, OutboxError> {
        let sends: Vec<(&NewOutbound, &str, Recipient)> = news
            .iter()
            .filter_map(|n| match &n.content {
                OutboundContent::Template(t) => {
                    Some((n, t.name.as_str(), Recipient::parse(&n.to).ok()?))
                }
                _ => None,
            })
            .collect();
        if sends.is_empty() {
            return Ok(Self::default());
        }
        let configs: BTreeSet<Uuid> = sends.iter().map(|(n, _, _)| n.config_id).collect();
        let names: BTreeSet<String> = sends.iter().map(|(_, t, _)| (*t).to_owned()).collect();
        let templates = templates::Entity::find()
            .filter(templates::Column::ConfigId.is_in(pad_pow2(configs.iter().copied().collect())))
            .filter(templates::Column::Name.is_in(pad_pow2(names.into_iter().collect())))
            .all(db)
            .await?;
        let customers = customers_of(
            db,
            configs.into_iter().collect(),
            sends.iter().map(|(_, _, to)| to),
            |_| true,
        )
        .await?;
        Ok(Self {
            templates,
            customers,
        })
    }

    fn refusal(&self, new: &NewOutbound, to: &Recipient) -> Option<crate::templates::Refused> {
        let OutboundContent::Template(t) = &new.content else {
            return None;
        };
        let template =
            crate::templates::find_language(&self.templates, new.config_id, &t.name, &t.language)?;
        let customer = self.customers.get(&(new.config_id, to.clone()));
        crate::templates::send_refusal(template, customer, to.is_user_id())
    }
}

/// The customer rows of `recipients` in `configs`, by (config,
/// recipient), keeping the pairs `wanted` accepts (config ids × keys may
/// match a few rows beyond the pairs asked for).
async fn customers_of<'r, C: ConnectionTrait>(
    db: &C,
    configs: Vec<Uuid>,
    recipients: impl Iterator<Item = &'r Recipient>,
    wanted: impl Fn(&(Uuid, Recipient)) -> bool,
) -> Result<HashMap<(Uuid, Recipient), customers::Model>, sea_orm::DbErr> {
    // Phone numbers, BSUIDs, groups: each kind is looked up in its column.
    let mut keys: [BTreeSet<String>; 3] = Default::default();
    for to in recipients {
        keys[to.kind()].insert(to.as_str().to_owned());
    }
    let mut any = sea_orm::Condition::any();
    for (col, values) in KEY_COLUMNS.into_iter().zip(keys) {
        if !values.is_empty() {
            any = any.add(col.is_in(pad_pow2(values.into_iter().collect())));
        }
    }
    let mut out = HashMap::new();
    for c in customers::Entity::find()
        .filter(customers::Column::ConfigId.is_in(pad_pow2(configs)))
        .filter(any)
        .all(db)
        .await?
    {
        for to in Recipient::of_customer(&c) {
            let k = (c.config_id, to);
            if wanted(&k) {
                out.insert(k, c.clone());
            }
        }
    }
    Ok(out)
}

/// Writes checked messages in one transaction (see [`queue_each`]).
///
/// Rows are written in key order (customers by config and number, chats
/// locked by id) so that two batches sharing recipients wait for each
/// other instead of deadlocking.
async fn write(
    db: &DatabaseConnection,
    checked: Vec<Checked>,
) -> Result<Vec<QueuedMessage>, OutboxError> {
    use messages::Column as M;
    if checked.is_empty() {
        return Ok(Vec::new());
    }
    let now = now();
    let recipients: BTreeSet<(Uuid, Recipient)> = checked
        .iter()
        .map(|c| (c.new.config_id, c.to.clone()))
        .collect();
    let configs: Vec<Uuid> = recipients
        .iter()
        .map(|(c, _)| *c)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let txn = wapipe_shared::db::begin_write(db).await?;
    // Uniqueness lives in the database: insert-or-nothing, then read back
    // whichever rows won (ours or a concurrent transaction's).
    // Numbers, BSUIDs and groups each insert-or-nothing on their own
    // unique key.
    for (kind, column) in KEY_COLUMNS.into_iter().enumerate() {
        let new_customers: Vec<customers::ActiveModel> = recipients
            .iter()
            .filter(|(_, to)| to.kind() == kind)
            .map(|(config_id, to)| {
                let key = |want: usize| (want == kind).then(|| to.as_str().to_owned());
                customers::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    created_at: Set(now),
                    updated_at: Set(now),
                    config_id: Set(*config_id),
                    phone_number: Set(key(0)),
                    wa_id: Set(key(0)),
                    user_id: Set(key(1)),
                    wa_group_id: Set(key(2)),
                    ..Default::default()
                }
            })
            .collect();
        for chunk in pow2_chunks(new_customers, CHUNK) {
            customers::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::columns([customers::Column::ConfigId, column])
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
    }
    let customer_of = customers_of(
        &txn,
        configs.clone(),
        recipients.iter().map(|(_, to)| to),
        |k| recipients.contains(k),
    )
    .await?;
    let customer = |config_id: Uuid, to: &Recipient| {
        customer_of
            .get(&(config_id, to.clone()))
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("customer after upsert".into()))
    };

    let mut new_chats = Vec::with_capacity(recipients.len());
    let mut new_chat_ids = HashSet::with_capacity(recipients.len());
    let mut customer_ids = Vec::with_capacity(recipients.len());
    for (config_id, to) in &recipients {
        let c = customer(*config_id, to)?;
        customer_ids.push(c.id);
        let id = Uuid::now_v7();
        new_chat_ids.insert(id);
        new_chats.push(chats::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(*config_id),
            customer_id: Set(c.id),
            phone_number: Set(c.wa_id.clone()),
            customer_name: Set(c.name.clone().or(c.whatsapp_name.clone())),
            // A group's chat is known to Meta by the group's id.
            provider_chat_id: Set(c.wa_group_id.clone()),
            // Named, not left to the column defaults: SQLite keeps the
            // defaults the table was created with (`open`, `normal`).
            status: Set("unassigned".to_owned()),
            priority: Set("medium".to_owned()),
            ..Default::default()
        });
    }
    for chunk in pow2_chunks(new_chats, CHUNK) {
        chats::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([chats::Column::ConfigId, chats::Column::CustomerId])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    let mut chat_query = chats::Entity::find()
        .filter(chats::Column::ConfigId.is_in(pad_pow2(configs)))
        .filter(chats::Column::CustomerId.is_in(pad_pow2(customer_ids)))
        .order_by_asc(chats::Column::Id);
    if txn.get_database_backend() == DbBackend::Postgres {
        // The counters below update these rows: lock them now, in id
        // order. NO KEY UPDATE does not block the messages' foreign keys.
        chat_query = chat_query.lock(LockType::NoKeyUpdate);
    }
    let chat_of: HashMap<(Uuid, Uuid), chats::Model> = chat_query
        .all(&txn)
        .await?
        .into_iter()
        .map(|c| ((c.config_id, c.customer_id), c))
        .collect();

    // The messages, in the order given (their v7 ids too).
    let mut rows = Vec::with_capacity(checked.len());
    let mut models = Vec::with_capacity(checked.len());
    for c in &checked {
        let customer = customer(c.new.config_id, &c.to)?;
        let chat = chat_of
            .get(&(c.new.config_id, customer.id))
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("chat after upsert".into()))?;
        let new = &c.new;
        let body = new.content.graph_body(&c.to, new.reply_to.as_deref());
        let fields = new.content.row_fields(&body);
        let message_id = Uuid::now_v7();
        models.push(messages::ActiveModel {
            id: Set(message_id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(new.config_id),
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
            from: Set(Some(c.business.clone())),
            to: Set(Some(c.to.as_str().to_owned())),
            ..Default::default()
        });
        rows.push(QueuedMessage {
            message_id,
            chat_id: chat.id,
            customer_id: customer.id,
            config_id: new.config_id,
            lane_key: c.lane_key.clone(),
            is_new: true,
        });
    }
    let mut inserted = 0;
    for chunk in pow2_chunks(models, CHUNK) {
        // Rows without an answer have NULLs there, which never conflict.
        inserted += messages::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([M::AnswersMessageId, M::AnswerSeq])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    if inserted < rows.len() as u64 {
        // Some answers were queued before (a redelivered job): keep the
        // first of each, count nothing twice. The insert waited for any
        // concurrent writer of those keys, so their rows are visible.
        let answered: Vec<Uuid> = checked
            .iter()
            .filter_map(|c| c.new.answers.map(|a| a.message_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let winners: HashMap<Answer, messages::Model> = messages::Entity::find()
            .filter(M::AnswersMessageId.is_in(pad_pow2(answered)))
            .all(&txn)
            .await?
            .into_iter()
            .filter_map(|m| {
                let answer = Answer {
                    message_id: m.answers_message_id?,
                    seq: m.answer_seq?,
                };
                Some((answer, m))
            })
            .collect();
        for (c, q) in checked.iter().zip(rows.iter_mut()) {
            let Some(answer) = c.new.answers else {
                continue;
            };
            let first = winners
                .get(&answer)
                .ok_or_else(|| sea_orm::DbErr::RecordNotFound("the answer queued before".into()))?;
            if first.id != q.message_id {
                q.message_id = first.id;
                q.chat_id = first.chat_id;
                q.customer_id = first.customer_id;
                q.is_new = false;
            }
        }
    }

    // The chat list shows each chat's latest message and counts who wrote;
    // a human reply to a waiting customer is a response. Only new rows
    // count: a reply queued before (a redelivered job) counted then.
    let chat_by_id: HashMap<Uuid, &chats::Model> = chat_of.values().map(|c| (c.id, c)).collect();
    let mut counts: BTreeMap<Uuid, ChatCount> = BTreeMap::new();
    for (c, q) in checked.iter().zip(&rows) {
        if !q.is_new {
            continue;
        }
        let n = counts.entry(q.chat_id).or_default();
        n.total += 1;
        match c.new.origin {
            Origin::Admin => n.agent += 1,
            Origin::Bot => n.bot += 1,
            Origin::System | Origin::User => {}
        }
        n.latest = Some((q.message_id, c.new.content.preview()));
        if n.response.is_none() && crate::stats::is_human_reply(&c.new.sender_type) {
            // The chat row is locked (PostgreSQL) or the database is
            // (SQLite): what it says of the wait is current.
            n.response = chat_by_id
                .get(&q.chat_id)
                .and_then(|chat| crate::stats::chat_response(chat, now));
        }
    }
    update_chat_counts(&txn, counts, now).await?;
    // Our chat ids are the chats this transaction created; only new
    // messages are events, so a replayed answer writes none.
    let mut created: Vec<Uuid> = chat_of
        .values()
        .map(|c| c.id)
        .filter(|id| new_chat_ids.contains(id))
        .collect();
    created.sort();
    let new_messages: Vec<Uuid> = rows
        .iter()
        .filter(|q| q.is_new)
        .map(|q| q.message_id)
        .collect();
    let mut events = events::chat_events(&txn, events::CHAT_CREATED, &created).await?;
    events.extend(events::message_events(&txn, events::MESSAGE_CREATED, &new_messages).await?);
    events::record(&txn, &events).await?;
    txn.commit().await?;
    Ok(rows)
}

/// What one transaction adds to a chat row.
#[derive(Default)]
struct ChatCount {
    total: i32,
    agent: i32,
    bot: i32,
    /// The latest new message and its preview.
    latest: Option<(Uuid, String)>,
    /// The chat's response figures after the first human reply of the
    /// transaction, when a customer was waiting.
    response: Option<ChatResponse>,
}

/// One statement on PostgreSQL (a `VALUES` list); one per chat on SQLite,
/// whose statements cost no round trip.
async fn update_chat_counts(
    txn: &impl ConnectionTrait,
    counts: BTreeMap<Uuid, ChatCount>,
    now: DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    let counts: Vec<(Uuid, ChatCount, Uuid, String)> = counts
        .into_iter()
        .filter_map(|(chat, n)| {
            let (message_id, preview) = n.latest.clone()?;
            Some((chat, n, message_id, preview))
        })
        .collect();
    if counts.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        let rows = counts
            .into_iter()
            .map(|(chat, n, message_id, preview)| {
                let r = n.response;
                vec![
                    chat.into(),
                    preview.into(),
                    message_id.into(),
                    n.total.into(),
                    n.agent.into(),
                    n.bot.into(),
                    r.is_some().into(),
                    r.map(|r| r.first_response_time).into(),
                    r.map(|r| r.avg_response_time).into(),
                    r.map(|r| r.response_count).into(),
                ]
            })
            .collect();
        // `v.answered`: this transaction answered a waiting customer.
        with_values(
            txn,
            "UPDATE chats AS c SET last_message = v.preview, last_message_time = $1, \
             last_message_id = v.message_id, total_messages = c.total_messages + v.total, \
             agent_messages = c.agent_messages + v.agent, bot_messages = c.bot_messages + v.bot, \
             first_response_time = CASE WHEN v.answered THEN v.first_rt ELSE c.first_response_time END, \
             first_response_at = CASE WHEN v.answered THEN COALESCE(c.first_response_at, $1) \
               ELSE c.first_response_at END, \
             avg_response_time = CASE WHEN v.answered THEN v.avg_rt ELSE c.avg_response_time END, \
             response_count = CASE WHEN v.answered THEN v.responses ELSE c.response_count END, \
             awaiting_reply_since = CASE WHEN v.answered THEN NULL ELSE c.awaiting_reply_since END, \
             updated_at = $1 FROM {values} WHERE c.id = v.id",
            vec![now.into()],
            &[
                ("id", "uuid"),
                ("preview", "text"),
                ("message_id", "uuid"),
                ("total", "int4"),
                ("agent", "int4"),
                ("bot", "int4"),
                ("answered", "bool"),
                ("first_rt", "float8"),
                ("avg_rt", "float8"),
                ("responses", "int4"),
            ],
            rows,
        )
        .await?;
        return Ok(());
    }
    for (chat, n, message_id, preview) in counts {
        let mut q = chats::Entity::update_many();
        if let Some(r) = n.response {
            q = q
                .col_expr(
                    chats::Column::FirstResponseTime,
                    Expr::value(r.first_response_time),
                )
                .col_expr(
                    chats::Column::FirstResponseAt,
                    Func::coalesce([Expr::col(chats::Column::FirstResponseAt), Expr::value(now)])
                        .into(),
                )
                .col_expr(
                    chats::Column::AvgResponseTime,
                    Expr::value(r.avg_response_time),
                )
                .col_expr(chats::Column::ResponseCount, Expr::value(r.response_count))
                .col_expr(
                    chats::Column::AwaitingReplySince,
                    Expr::value(Option::<DateTime<Utc>>::None),
                );
        }
        q.col_expr(chats::Column::LastMessage, Expr::value(preview))
            .col_expr(chats::Column::LastMessageTime, Expr::value(now))
            .col_expr(chats::Column::LastMessageId, Expr::value(message_id))
            .col_expr(
                chats::Column::TotalMessages,
                Expr::col(chats::Column::TotalMessages).add(n.total),
            )
            .col_expr(
                chats::Column::AgentMessages,
                Expr::col(chats::Column::AgentMessages).add(n.agent),
            )
            .col_expr(
                chats::Column::BotMessages,
                Expr::col(chats::Column::BotMessages).add(n.bot),
            )
            .col_expr(chats::Column::UpdatedAt, Expr::value(now))
            .filter(chats::Column::Id.eq(chat))
            .exec(txn)
            .await?;
    }
    Ok(())
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

/// Publishes the jobs of `queued`'s new messages, then stamps
/// `dispatched_at` on all that were published at once. Messages of one lane
/// are published one after another, in order (the order the customer
/// reads them in); different lanes at once. A failed publish leaves its
/// message, and those after it in its lane, to the sweep.
pub async fn enqueue_all(
    db: &impl ConnectionTrait,
    broker: &dyn Broker,
    queued: &[QueuedMessage],
) -> Result<(), OutboxError> {
    let mut lanes: Vec<(&str, Vec<Uuid>)> = Vec::new();
    for q in queued.iter().filter(|q| q.is_new) {
        match lanes.iter_mut().find(|(lane, _)| *lane == q.lane_key) {
            Some((_, ids)) => ids.push(q.message_id),
            None => lanes.push((&q.lane_key, vec![q.message_id])),
        }
    }
    let results = futures::future::join_all(lanes.into_iter().map(|(lane, ids)| async move {
        let mut published = Vec::with_capacity(ids.len());
        for id in ids {
            if let Err(e) = broker
                .publish(OutboundSend::message(id, lane.to_owned()).to_outbound())
                .await
            {
                return (published, Some(e));
            }
            published.push(id);
        }
        (published, None)
    }))
    .await;
    let mut published = Vec::with_capacity(queued.len());
    let mut failed = None;
    for (ids, err) in results {
        published.extend(ids);
        failed = failed.or(err);
    }
    stamp_dispatched(db, &published, now()).await?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
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

    #[test]
    fn recipients() {
        assert_eq!(
            Recipient::parse("+4915112345678").expect("ok"),
            Recipient::Phone("4915112345678".into())
        );
        assert_eq!(
            Recipient::parse(" US.13491208655302741918 ").expect("ok"),
            Recipient::UserId("US.13491208655302741918".into())
        );
        assert_eq!(
            Recipient::parse("group:GROUP_ID_123").expect("ok"),
            Recipient::Group("GROUP_ID_123".into())
        );
        for bad in ["group:", "group:a b"] {
            assert!(Recipient::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["US.", "U.123", "12.345", "US-123", "US.12 3", "", "hello"] {
            assert!(Recipient::parse(bad).is_err(), "{bad:?}");
        }
    }
}
