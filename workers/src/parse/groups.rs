//! WhatsApp groups (Meta's Groups API): a group is a chat of its own.
//!
//! - **The party.** A group is the party of its chat the way a person is
//!   of theirs: a `customers` row keyed by (config, `wa_group_id`), made
//!   with `INSERT … ON CONFLICT DO NOTHING`, and a `groups` row for what
//!   Meta says of it. So one chat per group, and its 24-hour window is the
//!   group's last message.
//! - **Messages** with a `group_id` go to the group's chat; `from` is the
//!   member who wrote it, kept on the message (`participant_id`, `from`,
//!   `sender_name`) and as a `group_participants` row. A member's own row
//!   is created without contact times: writing in a group opens no
//!   one-to-one window.
//! - **The `group_*` fields** (lifecycle, participants, settings, status)
//!   update the `groups` and `group_participants` rows, and create the
//!   group's chat. Each part applies only over an older Meta time, so a
//!   late or replayed update changes nothing and writes no event.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;
use wapipe_domain::events as ev;
use wapipe_shared::entities::group_participants::{self as gp, Column as P};
use wapipe_shared::entities::groups::{self, Column as G};
use wapipe_shared::entities::{chats, customers};
use wapipe_shared::whatsapp::{Contact, array, id_at, meta_timestamp, str_at};

use super::chats::chat_of;
use super::customers::{Sender, Who, customer_without_message, who};
use super::extract::clean_json;
use super::route::PendingMessage;

/// The webhook fields of groups.
pub(super) const FIELDS: &[&str] = &[
    "group_lifecycle_update",
    "group_participants_update",
    "group_settings_update",
    "group_status_update",
];

/// Whose chat a message belongs to: its sender's, or its group's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Party {
    Person(Who),
    Group(Uuid, String),
}

pub(super) fn party(r: &PendingMessage) -> Party {
    match &r.m.group_id {
        Some(g) => Party::Group(r.config_id, g.clone()),
        None => Party::Person(who(r)),
    }
}

/// The group's party row and its `groups` row, created if absent. A
/// message's time (`seen_at`) moves the group's contact times forward.
pub(super) async fn group_of<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    wa_group_id: &str,
    seen_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(customers::Model, groups::Model), DbErr> {
    use customers::Column as Cu;
    customers::Entity::insert(customers::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        wa_group_id: Set(Some(wa_group_id.to_owned())),
        first_contact_at: Set(seen_at),
        last_contact_at: Set(seen_at),
        last_inbound_at: Set(seen_at),
        is_blocked: Set(false),
        total_chats: Set(0),
        is_deleted: Set(false),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([Cu::ConfigId, Cu::WaGroupId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    let this = || {
        Condition::all()
            .add(Cu::ConfigId.eq(config_id))
            .add(Cu::WaGroupId.eq(wa_group_id))
    };
    if let Some(at) = seen_at {
        customers::Entity::update_many()
            .col_expr(Cu::LastInboundAt, Expr::value(at))
            .col_expr(Cu::LastContactAt, Expr::value(at))
            .col_expr(Cu::UpdatedAt, Expr::value(now))
            .filter(this())
            .filter(
                Condition::any()
                    .add(Cu::LastInboundAt.is_null())
                    .add(Cu::LastInboundAt.lt(at)),
            )
            .exec(db)
            .await?;
    }
    let party = customers::Entity::find()
        .filter(this())
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("group {wa_group_id} not stored")))?;
    groups::Entity::insert(groups::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config_id),
        customer_id: Set(party.id),
        wa_group_id: Set(wa_group_id.to_owned()),
        status: Set(groups::ACTIVE.to_owned()),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([G::ConfigId, G::WaGroupId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    let group = groups::Entity::find()
        .filter(G::ConfigId.eq(config_id))
        .filter(G::WaGroupId.eq(wa_group_id))
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("group {wa_group_id} row not stored")))?;
    Ok((party, group))
}

/// Sets a member's status as of Meta's time `at`: a new row, or an older
/// row in another status. `true` when something changed.
async fn set_participant<C: ConnectionTrait>(
    db: &C,
    group: &groups::Model,
    member: &customers::Model,
    status: &str,
    reason: Option<&str>,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let inserted = gp::Entity::insert(gp::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(group.config_id),
        group_id: Set(group.id),
        customer_id: Set(member.id),
        wa_id: Set(member.wa_id.clone()),
        status: Set(status.to_owned()),
        reason: Set(reason.map(str::to_owned)),
        changed_at: Set(at),
    })
    .on_conflict(
        OnConflict::columns([P::GroupId, P::CustomerId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    if inserted > 0 {
        return Ok(true);
    }
    let updated = gp::Entity::update_many()
        .col_expr(P::Status, Expr::value(status))
        .col_expr(P::Reason, Expr::value(reason.map(str::to_owned)))
        .col_expr(P::ChangedAt, Expr::value(at))
        .col_expr(P::UpdatedAt, Expr::value(now))
        .filter(P::GroupId.eq(group.id))
        .filter(P::CustomerId.eq(member.id))
        .filter(P::ChangedAt.lt(at))
        .filter(P::Status.ne(status))
        .exec(db)
        .await?;
    Ok(updated.rows_affected > 0)
}

/// The parties and members of a batch's group messages.
#[derive(Default)]
pub(super) struct GroupRows {
    /// Each group's party row, by [`Party::Group`].
    pub(super) parties: HashMap<Party, customers::Model>,
    /// Each member's own row, by their keys.
    pub(super) members: HashMap<Who, customers::Model>,
}

/// Creates or refreshes the groups the batch's messages were written in
/// (their windows move to the latest message), their members' own rows,
/// and the members' `group_participants` rows.
pub(super) async fn upsert_from_messages<C: ConnectionTrait>(
    db: &C,
    rows: &[PendingMessage],
    now: DateTime<Utc>,
) -> Result<GroupRows, DbErr> {
    let mut out = GroupRows::default();
    let mut latest: BTreeMap<(Uuid, &str), DateTime<Utc>> = BTreeMap::new();
    for r in rows {
        if let Some(g) = &r.m.group_id {
            let at = latest.entry((r.config_id, g.as_str())).or_insert(r.at);
            *at = std::cmp::max(*at, r.at);
        }
    }
    if latest.is_empty() {
        return Ok(out);
    }
    let mut group_rows = HashMap::new();
    for ((config_id, g), at) in latest {
        let (party, group) = group_of(db, config_id, g, Some(at), now).await?;
        out.parties
            .insert(Party::Group(config_id, g.to_owned()), party);
        group_rows.insert((config_id, g.to_owned()), group);
    }
    for r in rows {
        let Some(g) = &r.m.group_id else { continue };
        let k = who(r);
        let member = match out.members.get(&k) {
            Some(m) => m.clone(),
            None => {
                let m = customer_without_message(db, r.config_id, &r.sender, now).await?;
                out.members.insert(k, m.clone());
                m
            }
        };
        if let Some(group) = group_rows.get(&(r.config_id, g.clone())) {
            set_participant(db, group, &member, gp::MEMBER, None, r.at, now).await?;
        }
    }
    Ok(out)
}

/// What one `group_*` change did.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Group updates that changed a row.
    pub(super) changed: u64,
    /// Updates without a group id, or of a type we do not know: kept raw.
    pub(super) skipped: u64,
}

/// `Some(text)` of a settings part Meta applied (`update_successful` not
/// false), its errors otherwise.
fn setting(v: Option<&Value>) -> Option<Result<Option<String>, Value>> {
    let part = v.filter(|p| p.is_object())?;
    if part.get("update_successful") == Some(&Value::Bool(false)) {
        return Some(Err(part
            .get("errors")
            .map(clean_json)
            .unwrap_or(Value::Null)));
    }
    Some(Ok(str_at(part, "text").map(str::to_owned)))
}

/// Writes `col = value` (and `at_col = at`) where `at_col` is older than
/// `at`. `true` when the row changed.
async fn set_if_newer<C: ConnectionTrait>(
    db: &C,
    group: &groups::Model,
    sets: Vec<(G, sea_orm::Value)>,
    at_col: G,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let mut q = groups::Entity::update_many()
        .col_expr(at_col, Expr::value(at))
        .col_expr(G::UpdatedAt, Expr::value(now));
    for (col, v) in sets {
        q = q.col_expr(col, Expr::value(v));
    }
    let r = q
        .filter(G::Id.eq(group.id))
        .filter(
            Condition::any()
                .add(Expr::col(at_col).is_null())
                .add(Expr::col(at_col).lt(at)),
        )
        .exec(db)
        .await?;
    Ok(r.rows_affected > 0)
}

/// The members named under `key` (`added_participants`, …), or the
/// update's own `wa_id` (join requests).
fn people(update: &Value, key: &str) -> Vec<Sender> {
    let listed: Vec<Sender> = array(update, key)
        .iter()
        .map(|p| Sender::from(&Contact::from_value(p)))
        .filter(|s| s.key().is_some())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    let own = Sender::from(&Contact::from_value(update));
    if own.key().is_some() {
        vec![own]
    } else {
        Vec::new()
    }
}

/// Applies a `group_*` change for one config: each `groups[]` update, in
/// order; records `chat.created` for a group's new chat and
/// `chat.updated` for one whose group changed.
pub(super) async fn apply<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<Applied, DbErr> {
    let mut out = Applied::default();
    let mut created = Vec::new();
    let mut touched = Vec::new();
    for update in array(value, "groups") {
        let Some(wa_group_id) = id_at(update.get("group_id")) else {
            out.skipped += 1;
            continue;
        };
        let at = std::cmp::min(meta_timestamp(update.get("timestamp")).unwrap_or(now), now);
        let (party, group) = group_of(db, config_id, &wa_group_id, None, now).await?;
        let status = |s: &str| vec![(G::Status, sea_orm::Value::from(s))];
        let text = |v: Option<&str>| sea_orm::Value::from(v.map(str::to_owned));
        let mut changed = false;
        let mut subject = None;
        match str_at(update, "type").unwrap_or_default() {
            "group_create" => {
                let info = vec![
                    (G::Subject, text(str_at(update, "subject"))),
                    (G::InviteLink, text(str_at(update, "invite_link"))),
                    (
                        G::JoinApprovalMode,
                        text(str_at(update, "join_approval_mode")),
                    ),
                ];
                if set_if_newer(db, &group, info, G::SubjectAt, at, now).await? {
                    changed = true;
                    subject = str_at(update, "subject").map(str::to_owned);
                }
                changed |=
                    set_if_newer(db, &group, status(groups::ACTIVE), G::StatusAt, at, now).await?;
            }
            "group_delete" => {
                changed |=
                    set_if_newer(db, &group, status(groups::DELETED), G::StatusAt, at, now).await?;
            }
            "group_suspend" => {
                changed |=
                    set_if_newer(db, &group, status(groups::SUSPENDED), G::StatusAt, at, now)
                        .await?;
            }
            "group_suspend_cleared" => {
                changed |=
                    set_if_newer(db, &group, status(groups::ACTIVE), G::StatusAt, at, now).await?;
            }
            "group_settings_update" => {
                let mut errors = Vec::new();
                for (key, col, at_col) in [
                    ("group_subject", G::Subject, G::SubjectAt),
                    ("group_description", G::Description, G::DescriptionAt),
                ] {
                    match setting(update.get(key)) {
                        Some(Ok(v)) => {
                            let set = vec![(col, text(v.as_deref()))];
                            if set_if_newer(db, &group, set, at_col, at, now).await? {
                                changed = true;
                                if key == "group_subject" {
                                    subject = v;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            errors.push(serde_json::json!({ "setting": key, "errors": e }))
                        }
                        None => {}
                    }
                }
                if !errors.is_empty() {
                    let set = vec![(G::Errors, sea_orm::Value::from(Value::Array(errors)))];
                    changed |= set_if_newer(db, &group, set, G::ErrorsAt, at, now).await?;
                }
            }
            kind @ ("group_participants_add"
            | "group_participants_remove"
            | "group_join_request_created"
            | "group_join_request_revoked") => {
                let (key, new_status) = match kind {
                    "group_participants_add" => ("added_participants", gp::MEMBER),
                    "group_participants_remove" => ("removed_participants", gp::REMOVED),
                    "group_join_request_created" => ("", gp::REQUESTED),
                    _ => ("", gp::REQUEST_REVOKED),
                };
                let reason = str_at(update, "reason");
                for person in people(update, key) {
                    let member = customer_without_message(db, config_id, &person, now).await?;
                    changed |=
                        set_participant(db, &group, &member, new_status, reason, at, now).await?;
                }
            }
            _ => {
                out.skipped += 1;
            }
        }
        // The chat list names a group by its subject.
        if let Some(s) = subject {
            rename(db, &party, &s, now).await?;
        }
        let party = customers::Entity::find_by_id(party.id)
            .one(db)
            .await?
            .unwrap_or(party);
        let (chat, new_chat) = chat_of(db, &party, now).await?;
        if new_chat {
            created.push(chat.id);
        } else if changed && !touched.contains(&chat.id) {
            touched.push(chat.id);
        }
        out.changed += u64::from(changed);
    }
    let mut events = ev::chat_events(db, ev::CHAT_CREATED, &created).await?;
    events.extend(ev::chat_events(db, ev::CHAT_UPDATED, &touched).await?);
    ev::record(db, &events).await?;
    Ok(out)
}

/// The group's name in the chat list: its party's and its chat's.
async fn rename<C: ConnectionTrait>(
    db: &C,
    party: &customers::Model,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    customers::Entity::update_many()
        .col_expr(customers::Column::Name, Expr::value(subject))
        .col_expr(customers::Column::WhatsappName, Expr::value(subject))
        .col_expr(customers::Column::UpdatedAt, Expr::value(now))
        .filter(customers::Column::Id.eq(party.id))
        .exec(db)
        .await?;
    chats::Entity::update_many()
        .col_expr(chats::Column::CustomerName, Expr::value(subject))
        .filter(chats::Column::CustomerId.eq(party.id))
        .filter(
            chats::Column::CustomerName
                .is_null()
                .or(chats::Column::CustomerName.ne(subject)),
        )
        .exec(db)
        .await?;
    Ok(())
}
