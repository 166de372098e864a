//! The database half of the parse worker: customers, chats, conversations,
//! messages, status receipts and templates, written inside the event's
//! transaction. Uniqueness lives in the database (DESIGN invariant 3): rows
//! are created with `INSERT … ON CONFLICT`, and counters move only when a
//! message row was really inserted, so processing an event twice changes
//! no count.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;
use wapipe_shared::entities::conversations::{self, ConversationStatus};
use wapipe_shared::entities::messages::{self, Direction, MessageStatus, Origin};
use wapipe_shared::entities::{chats, customers, message_status_events, templates};
use wapipe_shared::whatsapp::{Status, lenient_string};

use super::extract::{Effect, Inbound, clean_json, clean_str};

/// The customer-service window Meta grants after each inbound message.
pub const WINDOW: Duration = Duration::hours(24);

/// Who wrote a message: the keys of `customers` and the profile name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub name: Option<String>,
}

impl Sender {
    /// `wa_id`, else `user_id`: the customer half of a lane key.
    pub fn key(&self) -> Option<&str> {
        self.wa_id.as_deref().or(self.user_id.as_deref())
    }
}

/// Finds or creates the customer, then brings its profile up to date.
///
/// The insert comes first, with `ON CONFLICT DO NOTHING` on either unique
/// key, so two writers never both create the same person. The row is then
/// read back by `wa_id` or `user_id`: a user first seen by `user_id` alone
/// (a username user) and later with a phone number stays one customer, and
/// so does one whose number changed but whose `user_id` did not.
pub async fn upsert_customer<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    sender: &Sender,
    seen_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<customers::Model, DbErr> {
    let id = Uuid::now_v7();
    let am = customers::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        wa_id: Set(sender.wa_id.clone()),
        user_id: Set(sender.user_id.clone()),
        phone_number: Set(sender.wa_id.clone()),
        name: Set(sender.name.clone()),
        profile_name: Set(sender.name.clone()),
        email: Set(None),
        profile_picture: Set(None),
        tags: Set(None),
        notes: Set(None),
        is_blocked: Set(false),
        total_chats: Set(0),
        last_seen_at: Set(Some(seen_at)),
        last_inbound_at: Set(Some(seen_at)),
        is_deleted: Set(false),
        deleted_at: Set(None),
    };
    if sender.user_id.is_none() && sender.wa_id.is_some() {
        // The common case (a phone number, no user id): one upsert on the
        // (config, wa_id) key brings the row up to date and returns it.
        return customers::Entity::insert(am)
            .on_conflict(customer_refresh(sender.name.is_some()))
            .exec_with_returning(db)
            .await;
    }
    customers::Entity::insert(am)
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;

    let mut keys = Condition::any();
    if let Some(w) = &sender.wa_id {
        keys = keys.add(customers::Column::WaId.eq(w.as_str()));
    }
    if let Some(u) = &sender.user_id {
        keys = keys.add(customers::Column::UserId.eq(u.as_str()));
    }
    let rows = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(keys)
        .all(db)
        .await?;
    let by_wa = rows
        .iter()
        .find(|r| sender.wa_id.is_some() && r.wa_id == sender.wa_id);
    let by_user = rows
        .iter()
        .find(|r| sender.user_id.is_some() && r.user_id == sender.user_id);
    let Some(row) = by_wa.or(by_user).cloned() else {
        return Err(DbErr::RecordNotFound(format!(
            "customer {:?} of config {config_id} neither inserted nor found",
            sender.key()
        )));
    };
    if row.id == id {
        return Ok(row);
    }

    let mut am = customers::ActiveModel {
        id: Set(row.id),
        updated_at: Set(now),
        ..Default::default()
    };
    let mut out = row.clone();
    if let Some(name) = &sender.name {
        if out.profile_name.as_ref() != Some(name) {
            am.profile_name = Set(Some(name.clone()));
            out.profile_name = Some(name.clone());
        }
        // `name` is the agents' name for the customer: seeded from the
        // profile and kept in step with it while nobody has changed it.
        if out.name.is_none() || out.name == row.profile_name {
            am.name = Set(Some(name.clone()));
            out.name = Some(name.clone());
        }
    }
    // The identity keys a row lacks are filled in only when no other row
    // holds them, so the unique indexes are never violated.
    if let Some(w) = &sender.wa_id
        && out.wa_id.as_ref() != Some(w)
        && by_wa.is_none()
    {
        am.wa_id = Set(Some(w.clone()));
        am.phone_number = Set(Some(w.clone()));
        out.wa_id = Some(w.clone());
        out.phone_number = Some(w.clone());
    }
    if let Some(u) = &sender.user_id
        && out.user_id.is_none()
        && by_user.is_none()
    {
        am.user_id = Set(Some(u.clone()));
        out.user_id = Some(u.clone());
    }
    if out.last_seen_at.is_none_or(|t| t < seen_at) {
        am.last_seen_at = Set(Some(seen_at));
        out.last_seen_at = Some(seen_at);
    }
    if out.last_inbound_at.is_none_or(|t| t < seen_at) {
        am.last_inbound_at = Set(Some(seen_at));
        out.last_inbound_at = Some(seen_at);
    }
    customers::Entity::update_many()
        .set(am)
        .filter(customers::Column::Id.eq(row.id))
        .exec(db)
        .await?;
    Ok(out)
}

/// `ON CONFLICT (config_id, wa_id) DO UPDATE`: the same rules as the
/// general path of [`upsert_customer`], in SQL. Right-hand sides see the
/// row as it was, on both backends.
fn customer_refresh(with_name: bool) -> OnConflict {
    use customers::Column as Cu;
    let new = |c: Cu| Expr::col((Alias::new("excluded"), c));
    let old = |c: Cu| Expr::col((customers::Entity, c));
    let later = |c: Cu| {
        Expr::case(
            Condition::any()
                .add(old(c).is_null())
                .add(old(c).lt(new(c))),
            new(c),
        )
        .finally(old(c))
    };
    let mut oc = OnConflict::columns([Cu::ConfigId, Cu::WaId]);
    oc.value(Cu::UpdatedAt, new(Cu::UpdatedAt))
        .value(Cu::LastSeenAt, later(Cu::LastSeenAt))
        .value(Cu::LastInboundAt, later(Cu::LastInboundAt));
    if with_name {
        oc.value(Cu::ProfileName, new(Cu::ProfileName)).value(
            Cu::Name,
            Expr::case(
                Condition::any()
                    .add(old(Cu::Name).is_null())
                    .add(old(Cu::Name).eq(old(Cu::ProfileName))),
                new(Cu::Name),
            )
            .finally(old(Cu::Name)),
        );
    }
    oc
}

/// The chat of (config, customer), created on first contact. Returns it
/// and whether it was created now.
pub async fn upsert_chat<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    customer: &customers::Model,
    now: DateTime<Utc>,
) -> Result<(chats::Model, bool), DbErr> {
    let id = Uuid::now_v7();
    let am = chats::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
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
    };
    // DO UPDATE (not NOTHING) so RETURNING yields the row either way; the
    // update only refreshes the denormalised customer fields.
    let chat = chats::Entity::insert(am)
        .on_conflict(
            OnConflict::columns([chats::Column::ConfigId, chats::Column::CustomerId])
                .update_columns([chats::Column::CustomerPhone, chats::Column::CustomerName])
                .to_owned(),
        )
        .exec_with_returning(db)
        .await?;
    let created = chat.id == id;
    if created {
        customers::Entity::update_many()
            .col_expr(
                customers::Column::TotalChats,
                Expr::col(customers::Column::TotalChats).add(1),
            )
            .filter(customers::Column::Id.eq(customer.id))
            .exec(db)
            .await?;
    }
    Ok((chat, created))
}

/// What inserting a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub message_id: Uuid,
    /// False when the wamid was already stored for this config.
    pub is_new: bool,
    pub conversation_id: Option<Uuid>,
}

/// Inserts the message unless its wamid is already stored for the config.
pub async fn insert_message<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    chat_id: Uuid,
    customer_id: Uuid,
    m: &Inbound,
    now: DateTime<Utc>,
) -> Result<Stored, DbErr> {
    let id = Uuid::now_v7();
    let am = messages::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        chat_id: Set(chat_id),
        customer_id: Set(customer_id),
        conversation_id: Set(None),
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
    };
    let inserted = messages::Entity::insert(am)
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
    if inserted == 1 {
        return Ok(Stored {
            message_id: id,
            is_new: true,
            conversation_id: None,
        });
    }
    let (message_id, conversation_id): (Uuid, Option<Uuid>) = messages::Entity::find()
        .select_only()
        .column(messages::Column::Id)
        .column(messages::Column::ConversationId)
        .filter(messages::Column::ConfigId.eq(config_id))
        .filter(messages::Column::ProviderMessageId.eq(m.provider_message_id.as_str()))
        .into_tuple()
        .one(db)
        .await?
        .ok_or_else(|| {
            DbErr::RecordNotFound(format!(
                "message {} neither inserted nor found",
                m.provider_message_id
            ))
        })?;
    Ok(Stored {
        message_id,
        is_new: false,
        conversation_id,
    })
}

/// Attaches a new inbound message at `at` to the customer's 24-hour window
/// and returns the conversation's id.
///
/// - Open conversations whose window has passed (by the clock) become
///   `expired` first: the lazy half of [`expire_conversations`].
/// - A conversation covers the message when the message's own window
///   `[at, at + 24h]` overlaps `[opened_at, expires_at]`; it then grows to
///   include the message (`expires_at` = last inbound + 24 h).
/// - Otherwise a new conversation starts at `at`: `open` if its window is
///   still running and no other one is open, else born `expired` (a late
///   message from long ago). So at most one conversation per customer is
///   open, whatever order messages arrive in.
pub async fn attach_conversation<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    customer_id: Uuid,
    chat_id: Uuid,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Uuid, DbErr> {
    use conversations::Column as Cv;
    let mut candidates = conversations::Entity::find()
        .filter(Cv::ConfigId.eq(config_id))
        .filter(Cv::CustomerId.eq(customer_id))
        .filter(
            Condition::any()
                .add(Cv::Status.eq(ConversationStatus::Open))
                .add(
                    Condition::all()
                        .add(Cv::OpenedAt.lte(at + WINDOW))
                        .add(Cv::ExpiresAt.gte(at)),
                ),
        )
        .order_by_desc(Cv::OpenedAt)
        .all(db)
        .await?;
    // The lazy half of the sweep: this customer's open window has passed.
    let stale: Vec<Uuid> = candidates
        .iter()
        .filter(|c| c.status == ConversationStatus::Open && c.expires_at <= now)
        .map(|c| c.id)
        .collect();
    if !stale.is_empty() {
        conversations::Entity::update_many()
            .col_expr(
                Cv::Status,
                Expr::value(ConversationStatus::Expired.as_str()),
            )
            .col_expr(Cv::ClosedAt, Expr::col(Cv::ExpiresAt))
            .col_expr(Cv::UpdatedAt, Expr::value(now))
            .filter(Cv::Id.is_in(stale.iter().copied()))
            .filter(Cv::Status.eq(ConversationStatus::Open))
            .exec(db)
            .await?;
        for c in candidates.iter_mut().filter(|c| stale.contains(&c.id)) {
            c.status = ConversationStatus::Expired;
            c.closed_at = Some(c.expires_at);
        }
    }
    let open_id = candidates
        .iter()
        .find(|c| c.status == ConversationStatus::Open)
        .map(|c| c.id);
    let covering = candidates
        .iter()
        .find(|c| c.opened_at <= at + WINDOW && c.expires_at >= at);

    if let Some(conv) = covering {
        let opened_at = std::cmp::min(conv.opened_at, at);
        let last_inbound_at = std::cmp::max(conv.last_inbound_at, at);
        let expires_at = last_inbound_at + WINDOW;
        // A late message can stretch an expired window past now: it is
        // open again, unless another conversation already is.
        let reopen =
            conv.status == ConversationStatus::Expired && expires_at > now && open_id.is_none();
        let mut q = conversations::Entity::update_many()
            .col_expr(Cv::OpenedAt, Expr::value(opened_at))
            .col_expr(Cv::LastInboundAt, Expr::value(last_inbound_at))
            .col_expr(Cv::ExpiresAt, Expr::value(expires_at))
            .col_expr(Cv::MessageCount, Expr::col(Cv::MessageCount).add(1))
            .col_expr(Cv::UpdatedAt, Expr::value(now));
        if reopen {
            q = q
                .col_expr(Cv::Status, Expr::value(ConversationStatus::Open.as_str()))
                .col_expr(Cv::ClosedAt, Expr::value(Option::<DateTime<Utc>>::None));
        } else if conv.status == ConversationStatus::Expired {
            q = q.col_expr(Cv::ClosedAt, Expr::value(expires_at));
        }
        if conv.chat_id.is_none() {
            q = q.col_expr(Cv::ChatId, Expr::value(chat_id));
        }
        q.filter(Cv::Id.eq(conv.id)).exec(db).await?;
        return Ok(conv.id);
    }

    let expires_at = at + WINDOW;
    let open = expires_at > now && open_id.is_none();
    let id = Uuid::now_v7();
    conversations::Entity::insert(conversations::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        customer_id: Set(customer_id),
        chat_id: Set(Some(chat_id)),
        status: Set(if open {
            ConversationStatus::Open
        } else {
            ConversationStatus::Expired
        }),
        opened_at: Set(at),
        last_inbound_at: Set(at),
        expires_at: Set(expires_at),
        closed_at: Set((!open).then_some(expires_at)),
        provider_conversation_id: Set(None),
        origin_type: Set(None),
        message_count: Set(1),
    })
    .exec_without_returning(db)
    .await?;
    Ok(id)
}

/// Expires every open conversation whose window has passed. Returns how
/// many. The parse worker also does this lazily, per customer, when the
/// next message comes; run this on a timer so the API's view of the window
/// is right for customers who went quiet.
pub async fn expire_conversations<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    use conversations::Column as Cv;
    let now = super::now();
    let res = conversations::Entity::update_many()
        .col_expr(
            Cv::Status,
            Expr::value(ConversationStatus::Expired.as_str()),
        )
        .col_expr(Cv::ClosedAt, Expr::col(Cv::ExpiresAt))
        .col_expr(Cv::UpdatedAt, Expr::value(now))
        .filter(Cv::Status.eq(ConversationStatus::Open))
        .filter(Cv::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Counts a newly inserted inbound message in its chat, in one UPDATE:
/// totals always; unread and the last message only for messages that show
/// on their own, and the last message only if it is not older than the one
/// shown (Meta delivers out of order).
pub async fn count_in_chat<C: ConnectionTrait>(
    db: &C,
    chat_id: Uuid,
    message_id: Uuid,
    m: &Inbound,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use chats::Column as Ch;
    let mut q = chats::Entity::update_many()
        .col_expr(Ch::TotalMessages, Expr::col(Ch::TotalMessages).add(1))
        .col_expr(Ch::CustomerMessages, Expr::col(Ch::CustomerMessages).add(1))
        .col_expr(Ch::UpdatedAt, Expr::value(now));
    if m.is_visible() {
        let newer = Condition::any()
            .add(Ch::LastMessageTime.is_null())
            .add(Ch::LastMessageTime.lte(at));
        q = q
            .col_expr(Ch::UnreadCount, Expr::col(Ch::UnreadCount).add(1))
            .col_expr(
                Ch::LastMessage,
                Expr::case(newer.clone(), Expr::value(m.preview()))
                    .finally(Expr::col(Ch::LastMessage))
                    .into(),
            )
            .col_expr(
                Ch::LastMessageTime,
                Expr::case(newer.clone(), Expr::value(at))
                    .finally(Expr::col(Ch::LastMessageTime))
                    .into(),
            )
            .col_expr(
                Ch::LastMessageId,
                Expr::case(newer, Expr::value(message_id))
                    .finally(Expr::col(Ch::LastMessageId))
                    .into(),
            );
    }
    q.filter(Ch::Id.eq(chat_id)).exec(db).await?;
    Ok(())
}

/// The reaction, edit or revoke message that carries an effect.
#[derive(Debug, Clone, Copy)]
pub struct EffectSource<'a> {
    pub wamid: &'a str,
    /// Its (Meta) time.
    pub at: DateTime<Utc>,
}

/// What applying an effect found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectOutcome {
    Applied,
    /// The target is not stored (yet): the effect stays in the reaction,
    /// edit or revoke row's own columns.
    TargetMissing,
}

/// Applies a reaction, edit or revoke to its target message, once: it runs
/// only when the reaction/edit/revoke message row was newly inserted.
///
/// Edits and revokes apply only to the sender's own inbound messages
/// (nobody else can edit them); reactions to any message of the sender's
/// chat, ours included.
pub async fn apply_effect<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    chat_id: Uuid,
    customer: &customers::Model,
    effect: &Effect,
    source: EffectSource<'_>,
    now: DateTime<Utc>,
) -> Result<EffectOutcome, DbErr> {
    use messages::Column as M;
    let mut q = messages::Entity::find()
        .filter(M::ConfigId.eq(config_id))
        .filter(M::ProviderMessageId.eq(effect.target()));
    q = match effect {
        Effect::React { .. } => q.filter(M::ChatId.eq(chat_id)),
        Effect::Edit { .. } | Effect::Revoke { .. } => q
            .filter(M::CustomerId.eq(customer.id))
            .filter(M::Direction.eq(Direction::Inbound)),
    };
    let Some(target) = q.one(db).await? else {
        return Ok(EffectOutcome::TargetMissing);
    };
    let mut am = messages::ActiveModel {
        id: Set(target.id),
        updated_at: Set(now),
        ..Default::default()
    };
    match effect {
        Effect::React { emoji, .. } => {
            let who = customer
                .wa_id
                .clone()
                .or_else(|| customer.user_id.clone())
                .unwrap_or_else(|| customer.id.to_string());
            let mut map = match target.reactions {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            // An older reaction arriving late must not undo a newer one.
            let newer_known = map
                .get(&who)
                .and_then(|r| r.get("at"))
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .is_some_and(|t| t > source.at);
            if !newer_known {
                match emoji {
                    Some(e) => {
                        map.insert(
                            who,
                            json!({"emoji": e, "at": source.at.to_rfc3339(), "message_id": source.wamid}),
                        );
                    }
                    None => {
                        map.remove(&who);
                    }
                }
                am.reactions = Set((!map.is_empty()).then_some(Value::Object(map)));
            }
        }
        Effect::Edit { text, .. } => {
            let mut history = match target.edit_history {
                Some(Value::Array(h)) => h,
                _ => Vec::new(),
            };
            history.push(json!({
                "text": target.text,
                "edited_at": source.at.to_rfc3339(),
                "edit_message_id": source.wamid,
            }));
            am.edit_history = Set(Some(Value::Array(history)));
            am.text = Set(text.clone());
            am.is_edited = Set(true);
        }
        Effect::Revoke { .. } => {
            // The text and edit history stay: agents keep what they saw,
            // lists hide the row by `is_deleted`.
            am.is_deleted = Set(true);
            am.deleted_at = Set(Some(source.at));
        }
    }
    messages::Entity::update_many()
        .set(am)
        .filter(M::Id.eq(target.id))
        .exec(db)
        .await?;
    Ok(EffectOutcome::Applied)
}

/// Stores one status receipt, once (`ON CONFLICT DO NOTHING` on config,
/// wamid, status and time). A receipt without a timestamp takes the
/// event's arrival time, which is the same on every replay. Returns whether
/// it was new, or `None` when it names no message.
pub async fn insert_status_event<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    st: &Status<'_>,
    event_id: Uuid,
    received_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<bool>, DbErr> {
    let Some(wamid) = &st.id else {
        return Ok(None);
    };
    let errors = (!st.errors.is_empty())
        .then(|| Value::Array(st.errors.iter().map(|e| clean_json(&e.raw)).collect()));
    let am = message_status_events::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        provider_message_id: Set(clean_str(wamid)),
        message_id: Set(None),
        status: Set(clean_str(st.status.as_deref().unwrap_or("unknown"))),
        timestamp: Set(st.timestamp.unwrap_or(received_at)),
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
        webhook_event_id: Set(Some(event_id)),
    };
    let n = message_status_events::Entity::insert(am)
        .on_conflict(
            OnConflict::columns([
                message_status_events::Column::ConfigId,
                message_status_events::Column::ProviderMessageId,
                message_status_events::Column::Status,
                message_status_events::Column::Timestamp,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(Some(n == 1))
}

/// Applies a template change (`message_template_status_update`,
/// `message_template_quality_update`, `template_category_update`) to the
/// config's template, matched by Meta's template id, else by name and
/// language. Returns how many templates changed (0 when unknown to us).
/// Dispatches on the content rather than the field name: Meta's own docs
/// show quality updates under the status field.
pub async fn apply_template_update<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    use templates::Column as T;
    let provider_id = lenient_string(value.get("message_template_id"));
    let name = value.get("message_template_name").and_then(Value::as_str);
    let language = value
        .get("message_template_language")
        .and_then(Value::as_str);
    let upper = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| clean_str(&s.to_ascii_uppercase()))
    };

    let mut matched = Condition::any();
    if let Some(id) = &provider_id {
        matched = matched.add(T::ProviderTemplateId.eq(clean_str(id)));
    }
    if let (Some(name), Some(lang)) = (name, language) {
        // Meta writes `en_US` in some payloads and `en-US` in others.
        let langs = [
            lang.to_owned(),
            lang.replace('-', "_"),
            lang.replace('_', "-"),
        ];
        matched = matched.add(
            Condition::all()
                .add(T::Name.eq(clean_str(name)))
                .add(T::Language.is_in(langs.iter().map(|l| clean_str(l)))),
        );
    }
    if provider_id.is_none() && name.is_none() {
        return Ok(0);
    }
    let found = templates::Entity::find()
        .filter(T::ConfigId.eq(config_id))
        .filter(T::IsDeleted.eq(false))
        .filter(matched)
        .all(db)
        .await?;
    // Prefer the id match: names can be reused after a deletion.
    let target = found
        .iter()
        .find(|t| provider_id.is_some() && t.provider_template_id == provider_id)
        .or_else(|| found.first());
    let Some(t) = target else {
        return Ok(0);
    };

    let mut am = templates::ActiveModel {
        id: Set(t.id),
        updated_at: Set(now),
        ..Default::default()
    };
    let mut changed = false;
    if let Some(q) = upper("new_quality_score") {
        am.quality_score = Set(Some(q));
        changed = true;
    } else if let Some(cat) = upper("new_category") {
        am.previous_category = Set(Some(
            upper("previous_category").unwrap_or_else(|| t.category.clone()),
        ));
        am.category = Set(cat);
        changed = true;
    } else if let Some(event) = upper("event") {
        am.status = Set(event);
        let reason = value
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "NONE")
            .map(clean_str)
            .or_else(|| {
                value
                    .get("rejection_info")
                    .and_then(|r| r.get("reason"))
                    .and_then(Value::as_str)
                    .map(clean_str)
            });
        // A template approved after a rejection loses the old reason.
        am.rejected_reason = Set(reason);
        changed = true;
    }
    if !changed {
        return Ok(0);
    }
    if t.provider_template_id.is_none()
        && let Some(id) = provider_id
    {
        am.provider_template_id = Set(Some(clean_str(&id)));
    }
    let res = templates::Entity::update_many()
        .set(am)
        .filter(T::Id.eq(t.id))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Sets the conversation of a newly inserted message.
pub async fn set_conversation<C: ConnectionTrait>(
    db: &C,
    message_id: Uuid,
    conversation_id: Uuid,
) -> Result<(), DbErr> {
    messages::Entity::update_many()
        .col_expr(
            messages::Column::ConversationId,
            Expr::value(conversation_id),
        )
        .filter(messages::Column::Id.eq(message_id))
        .exec(db)
        .await?;
    Ok(())
}
