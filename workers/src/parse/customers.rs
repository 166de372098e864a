//! Customers: who wrote a message ([`Sender`]) and the `customers` rows of
//! a batch's senders, created on first contact and brought up to date
//! (profile name, last seen) after. Uniqueness lives in the database
//! (DESIGN invariant 3): rows are created with `INSERT … ON CONFLICT`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
};
use uuid::Uuid;
use wapipe_shared::db::pow2_chunks;
use wapipe_shared::entities::customers;

use super::batch::CHUNK;
use super::route::PendingMessage;

/// Who wrote a message: the keys of `customers` and the profile name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Sender {
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub name: Option<String>,
    /// The user's `@username`, when the contact shows one.
    pub username: Option<String>,
    /// The parent BSUID (`parent_user_id`), when the contact shows one.
    pub parent_user_id: Option<String>,
}

impl From<&wapipe_shared::whatsapp::Contact> for Sender {
    fn from(c: &wapipe_shared::whatsapp::Contact) -> Self {
        Sender {
            wa_id: c.wa_id.clone(),
            user_id: c.user_id.clone(),
            name: c.name.clone(),
            username: c.username.clone(),
            parent_user_id: c.parent_user_id.clone(),
        }
    }
}

impl Sender {
    /// `wa_id`, else `user_id`: the customer half of a lane key.
    pub fn key(&self) -> Option<&str> {
        self.wa_id.as_deref().or(self.user_id.as_deref())
    }

    /// The rows of this person: by `wa_id` or by `user_id`.
    pub fn rows(&self) -> Condition {
        let mut keys = Condition::any();
        if let Some(w) = &self.wa_id {
            keys = keys.add(customers::Column::WaId.eq(w.as_str()));
        }
        if let Some(u) = &self.user_id {
            keys = keys.add(customers::Column::UserId.eq(u.as_str()));
        }
        keys
    }
}

/// Inserts `am` unless its person exists (either unique key): two writers
/// never both create the same customer.
pub(super) async fn insert_if_absent<C: ConnectionTrait>(
    db: &C,
    am: customers::ActiveModel,
) -> Result<(), DbErr> {
    customers::Entity::insert(am)
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    Ok(())
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
        whatsapp_name: Set(sender.name.clone()),
        username: Set(sender.username.clone()),
        parent_user_id: Set(sender.parent_user_id.clone()),
        email: Set(None),
        whatsapp_profile_picture: Set(None),
        tags: Set(None),
        notes: Set(None),
        is_blocked: Set(false),
        total_chats: Set(0),
        last_contact_at: Set(Some(seen_at)),
        last_inbound_at: Set(Some(seen_at)),
        is_deleted: Set(false),
        deleted_at: Set(None),
        first_contact_at: Set(Some(seen_at)),
        // seed 002's profile fields (address, language, ...) are the API's.
        ..Default::default()
    }
}

/// Finds or creates a customer met without a message (a preference, a
/// call): a new row opens no 24-hour window and sets no contact times.
pub(super) async fn customer_without_message<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    sender: &Sender,
    now: DateTime<Utc>,
) -> Result<customers::Model, DbErr> {
    let mut am = new_customer(Uuid::now_v7(), config_id, sender, now, now);
    am.last_contact_at = Set(None);
    am.last_inbound_at = Set(None);
    am.first_contact_at = Set(None);
    insert_if_absent(db, am).await?;
    customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(sender.rows())
        .one(db)
        .await?
        .ok_or_else(|| {
            DbErr::RecordNotFound(format!(
                "customer {:?} of config {config_id} neither inserted nor found",
                sender.key()
            ))
        })
}

/// Finds or creates the customer, then brings its profile up to date: the
/// general path, for senders with a `user_id` ([`upsert_customers`] upserts
/// the common phone-number-only senders in one statement).
///
/// The insert comes first, with `ON CONFLICT DO NOTHING` on either unique
/// key, so two writers never both create the same person. The row is then
/// read back by `wa_id` or `user_id`: a user first seen by `user_id` alone
/// (a username user) and later with a phone number stays one customer, and
/// so does one whose number changed but whose `user_id` did not.
pub(super) async fn upsert_customer<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    sender: &Sender,
    seen_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<customers::Model, DbErr> {
    let id = Uuid::now_v7();
    insert_if_absent(db, new_customer(id, config_id, sender, seen_at, now)).await?;

    let rows = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(sender.rows())
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
        if out.whatsapp_name.as_ref() != Some(name) {
            am.whatsapp_name = Set(Some(name.clone()));
            out.whatsapp_name = Some(name.clone());
        }
        // `name` is the agents' name for the customer: seeded from the
        // profile and kept in step with it while nobody has changed it.
        if out.name.is_none() || out.name == row.whatsapp_name {
            am.name = Set(Some(name.clone()));
            out.name = Some(name.clone());
        }
    }
    if let Some(u) = &sender.username
        && out.username.as_ref() != Some(u)
    {
        am.username = Set(Some(u.clone()));
        out.username = Some(u.clone());
    }
    if let Some(p) = &sender.parent_user_id
        && out.parent_user_id.as_ref() != Some(p)
    {
        am.parent_user_id = Set(Some(p.clone()));
        out.parent_user_id = Some(p.clone());
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
    if out.last_contact_at.is_none_or(|t| t < seen_at) {
        am.last_contact_at = Set(Some(seen_at));
        out.last_contact_at = Some(seen_at);
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
fn customer_refresh() -> OnConflict {
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
        .value(Cu::LastContactAt, later(Cu::LastContactAt))
        .value(Cu::LastInboundAt, later(Cu::LastInboundAt))
        .value(
            Cu::WhatsappName,
            Func::coalesce([new(Cu::WhatsappName), old(Cu::WhatsappName)]),
        )
        .value(
            Cu::Username,
            Func::coalesce([new(Cu::Username), old(Cu::Username)]),
        )
        .value(
            Cu::ParentUserId,
            Func::coalesce([new(Cu::ParentUserId), old(Cu::ParentUserId)]),
        )
        .value(
            Cu::Name,
            Expr::case(
                Condition::any()
                    .add(old(Cu::Name).is_null())
                    .add(old(Cu::Name).eq(old(Cu::WhatsappName))),
                Func::coalesce([new(Cu::Name), old(Cu::Name)]),
            )
            .finally(old(Cu::Name)),
        );
    oc
}

/// A customer's keys: config, wa_id, user_id.
pub(super) type Who = (Uuid, Option<String>, Option<String>);

pub(super) fn who(r: &PendingMessage) -> Who {
    (
        r.config_id,
        r.sender.wa_id.clone(),
        r.sender.user_id.clone(),
    )
}

/// Creates or refreshes every sender of the batch. Phone-number senders
/// (the common case) go in one multi-row upsert; senders with a `user_id`
/// take the general path one by one. Keyed by (config, wa_id, user_id).
pub(super) async fn upsert_customers<C: ConnectionTrait>(
    db: &C,
    rows: &[PendingMessage],
    now: DateTime<Utc>,
) -> Result<HashMap<Who, customers::Model>, DbErr> {
    // One entry per sender: the latest time, the last name given.
    let mut order: Vec<Who> = Vec::new();
    let mut merged: HashMap<Who, Sender> = HashMap::new();
    let mut seen: HashMap<Who, DateTime<Utc>> = HashMap::new();
    // A group's members are not customers in a chat of their own: their
    // rows are made without contact times (`super::groups`).
    for r in rows.iter().filter(|r| r.m.group_id.is_none()) {
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
        if r.sender.username.is_some() {
            s.username = r.sender.username.clone();
        }
        if r.sender.parent_user_id.is_some() {
            s.parent_user_id = r.sender.parent_user_id.clone();
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
        let c = upsert_customer(db, k.0, &merged[k], seen[k], now).await?;
        out.insert(k.clone(), c);
    }
    Ok(out)
}
