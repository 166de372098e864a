//! The database half of the parse worker: customers, chats, conversations,
//! messages, status receipts and templates, written inside the event's
//! transaction. Uniqueness lives in the database (DESIGN invariant 3): rows
//! are created with `INSERT … ON CONFLICT`, and counters move only when a
//! message row was really inserted, so processing an event twice changes
//! no count.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;
use wapipe_shared::entities::conversations::{self, ConversationStatus};
use wapipe_shared::entities::messages::{self, Direction};
use wapipe_shared::entities::{customers, templates};
use wapipe_shared::whatsapp::lenient_string;

use super::extract::{Effect, clean_str};

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

/// A new customer row for `sender`, first and last seen at `seen_at`.
pub(super) fn new_customer(
    id: Uuid,
    config_id: Uuid,
    sender: &Sender,
    seen_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> customers::ActiveModel {
    customers::ActiveModel {
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
    }
}

/// Finds or creates the customer, then brings its profile up to date: the
/// general path, for senders with a `user_id` ([`store_inbound`] upserts
/// the common phone-number-only senders in one statement).
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
    let am = new_customer(id, config_id, sender, seen_at, now);
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
/// general path of [`upsert_customer`], in SQL, for one row or many (a
/// row without a name keeps the stored one). Right-hand sides see the row
/// as it was, on both backends.
pub(super) fn customer_refresh() -> OnConflict {
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
        .value(Cu::LastInboundAt, later(Cu::LastInboundAt))
        .value(
            Cu::ProfileName,
            Func::coalesce([new(Cu::ProfileName), old(Cu::ProfileName)]),
        )
        .value(
            Cu::Name,
            Expr::case(
                Condition::any()
                    .add(old(Cu::Name).is_null())
                    .add(old(Cu::Name).eq(old(Cu::ProfileName))),
                Func::coalesce([new(Cu::Name), old(Cu::Name)]),
            )
            .finally(old(Cu::Name)),
        );
    oc
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
        // A literal, so the partial index `ix_conversations_open_expiry`
        // (whose predicate the planner matches only against constants) serves it.
        .filter(Expr::cust("status = 'open'"))
        .filter(Cv::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
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
