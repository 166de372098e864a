//! Re-keying customers: a `system` message saying the user's phone number
//! (`user_changed_number`, or `customer_changed_number` in older payloads)
//! or business-scoped user id (`user_changed_user_id`) changed moves the
//! customer to the new id, so the conversation stays one chat. The old id
//! is kept in `customer_previous_ids`: a message Meta still writes from it
//! (late, or out of order) is filed under the same customer
//! ([`resolve_previous_ids`]).
//!
//! A change is applied once: Meta's time of the newest change applied to a
//! customer is kept with its previous ids, and an older one (late, or a
//! replay) changes nothing. When the new id already belongs to another
//! customer, nothing is merged: the change is counted as a conflict and
//! the two stay apart.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;
use wapipe_shared::entities::customer_previous_ids::{self as previous, KIND_USER_ID, KIND_WA_ID};
use wapipe_shared::entities::{chats, customers};
use wapipe_shared::jobs::{lane_key, split_lane_key};
use wapipe_shared::whatsapp::{id_at, str_at};

use super::batch::any_of;
use super::customers::{Sender, customer_without_message};
use super::extract::Inbound;
use super::route::PendingMessage;

/// Which id a change replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    WaId,
    UserId,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::WaId => KIND_WA_ID,
            Kind::UserId => KIND_USER_ID,
        }
    }
}

/// A change of id announced by a `system` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rekey {
    pub kind: Kind,
    /// The new phone number (for [`Kind::WaId`]) or BSUID.
    pub new: String,
    /// A new BSUID given with a new number (a new number brings one).
    pub new_user_id: Option<String>,
    pub parent_user_id: Option<String>,
    /// The user as the message names them (old ids).
    pub from: Sender,
}

/// What applying a [`Rekey`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RekeyOutcome {
    /// The customer now has the new id.
    Rekeyed,
    /// Nothing to do: already applied, or older than the last change.
    Unchanged,
    /// Another customer already has the new id: left apart.
    Conflict,
}

fn first_id(v: &serde_json::Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| id_at(v.get(*k)))
}

/// The change a message announces, if it is a re-keying `system` message.
pub(super) fn rekey_of(m: &Inbound) -> Option<Rekey> {
    if m.kind != "system" {
        return None;
    }
    let sys = m.payload.get("system")?;
    let kind = match str_at(sys, "type")?.to_ascii_lowercase().as_str() {
        "user_changed_number" | "customer_changed_number" => Kind::WaId,
        "user_changed_user_id" => Kind::UserId,
        _ => return None,
    };
    let mut from = Sender {
        wa_id: m.from.clone(),
        user_id: m.from_user_id.clone(),
        ..Sender::default()
    };
    let new = match kind {
        // `wa_id` in today's payloads, `new_wa_id` in older ones; `customer`
        // names the old number when `from` does not.
        Kind::WaId => {
            if from.wa_id.is_none() {
                from.wa_id = first_id(sys, &["customer"]);
            }
            first_id(sys, &["wa_id", "new_wa_id"])?
        }
        Kind::UserId => {
            if from.user_id.is_none() {
                from.user_id = first_id(sys, &["previous_user_id", "old_user_id"]);
            }
            first_id(sys, &["user_id", "new_user_id"])?
        }
    };
    let new_user_id = match kind {
        Kind::WaId => first_id(sys, &["user_id", "new_user_id"]),
        Kind::UserId => None,
    };
    // Without an old id there is nobody to move.
    from.key()?;
    Some(Rekey {
        kind,
        new,
        new_user_id,
        parent_user_id: first_id(sys, &["parent_user_id"]),
        from,
    })
}

/// The customer a sender is, by its current ids or a previous one.
async fn find<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    who: &Sender,
) -> Result<Option<customers::Model>, DbErr> {
    let current = customers::Entity::find()
        .filter(customers::Column::ConfigId.eq(config_id))
        .filter(who.rows())
        .one(db)
        .await?;
    if current.is_some() {
        return Ok(current);
    }
    let mut keys = Condition::any();
    if let Some(w) = &who.wa_id {
        keys = keys.add(
            Condition::all()
                .add(previous::Column::Kind.eq(KIND_WA_ID))
                .add(previous::Column::Value.eq(w.as_str())),
        );
    }
    if let Some(u) = &who.user_id {
        keys = keys.add(
            Condition::all()
                .add(previous::Column::Kind.eq(KIND_USER_ID))
                .add(previous::Column::Value.eq(u.as_str())),
        );
    }
    let Some(p) = previous::Entity::find()
        .filter(previous::Column::ConfigId.eq(config_id))
        .filter(keys)
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    customers::Entity::find_by_id(p.customer_id).one(db).await
}

/// Applies a change of id to the customer it names (created if new, so
/// the old id is remembered either way). `at` is Meta's time of the
/// change, `wamid` the system message's.
pub(super) async fn apply<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    r: &Rekey,
    at: DateTime<Utc>,
    wamid: &str,
    now: DateTime<Utc>,
) -> Result<RekeyOutcome, DbErr> {
    use customers::Column as Cu;
    let c = match find(db, config_id, &r.from).await? {
        Some(c) => c,
        None => customer_without_message(db, config_id, &r.from, now).await?,
    };
    let current = match r.kind {
        Kind::WaId => c.wa_id.as_deref(),
        Kind::UserId => c.user_id.as_deref(),
    };
    if current == Some(r.new.as_str()) {
        return Ok(RekeyOutcome::Unchanged);
    }
    // A newer change was applied already: this one is late or replayed.
    let newest = previous::Entity::find()
        .filter(previous::Column::CustomerId.eq(c.id))
        .order_by_desc(previous::Column::ChangedAt)
        .one(db)
        .await?;
    if newest.is_some_and(|p| p.changed_at >= at) {
        return Ok(RekeyOutcome::Unchanged);
    }
    let key_col = match r.kind {
        Kind::WaId => Cu::WaId,
        Kind::UserId => Cu::UserId,
    };
    let taken = customers::Entity::find()
        .filter(Cu::ConfigId.eq(config_id))
        .filter(key_col.eq(r.new.as_str()))
        .filter(Cu::Id.ne(c.id))
        .one(db)
        .await?;
    if taken.is_some() {
        return Ok(RekeyOutcome::Conflict);
    }

    let mut replaced: Vec<(Kind, String)> = current
        .map(|old| (r.kind, old.to_owned()))
        .into_iter()
        .collect();
    let mut update = customers::Entity::update_many()
        .col_expr(Cu::UpdatedAt, Expr::value(now))
        .col_expr(key_col, Expr::value(r.new.clone()));
    if r.kind == Kind::WaId {
        update = update.col_expr(Cu::PhoneNumber, Expr::value(r.new.clone()));
        if let Some(u) = &r.new_user_id
            && c.user_id.as_ref() != Some(u)
            && customers::Entity::find()
                .filter(Cu::ConfigId.eq(config_id))
                .filter(Cu::UserId.eq(u.as_str()))
                .one(db)
                .await?
                .is_none()
        {
            update = update.col_expr(Cu::UserId, Expr::value(u.clone()));
            replaced.extend(c.user_id.clone().map(|old| (Kind::UserId, old)));
        }
    }
    if let Some(p) = &r.parent_user_id {
        update = update.col_expr(Cu::ParentUserId, Expr::value(p.clone()));
    }
    update.filter(Cu::Id.eq(c.id)).exec(db).await?;

    // The new ids are current now; the old ones point here.
    let mut now_current = vec![(r.kind, r.new.clone())];
    if r.kind == Kind::WaId {
        now_current.extend(r.new_user_id.clone().map(|u| (Kind::UserId, u)));
    }
    for (kind, value) in now_current {
        previous::Entity::delete_many()
            .filter(previous::Column::ConfigId.eq(config_id))
            .filter(previous::Column::Kind.eq(kind.as_str()))
            .filter(previous::Column::Value.eq(value))
            .exec(db)
            .await?;
    }
    if replaced.is_empty() {
        // The customer had no such id before: remember the time anyway, so
        // an older change cannot apply after this one.
        replaced.push((r.kind, format!("wapipe:none:{}", c.id)));
    }
    for (kind, value) in replaced {
        previous::Entity::insert(previous::ActiveModel {
            id: Set(Uuid::now_v7()),
            created_at: Set(now),
            config_id: Set(config_id),
            customer_id: Set(c.id),
            kind: Set(kind.as_str().to_owned()),
            value: Set(value),
            changed_at: Set(at),
            changed_by: Set(Some(wamid.to_owned())),
        })
        .on_conflict(
            OnConflict::columns([
                previous::Column::ConfigId,
                previous::Column::Kind,
                previous::Column::Value,
            ])
            .update_columns([
                previous::Column::CustomerId,
                previous::Column::ChangedAt,
                previous::Column::ChangedBy,
            ])
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    }
    if r.kind == Kind::WaId {
        // The chat list shows the number: it follows.
        chats::Entity::update_many()
            .col_expr(chats::Column::PhoneNumber, Expr::value(r.new.clone()))
            .col_expr(chats::Column::UpdatedAt, Expr::value(now))
            .filter(chats::Column::CustomerId.eq(c.id))
            .exec(db)
            .await?;
    }
    Ok(RekeyOutcome::Rekeyed)
}

/// Files messages written from a previous id under the customer that id
/// moved to: their senders take the customer's current ids (and lane).
/// One lookup for the batch.
pub(super) async fn resolve_previous_ids<C: ConnectionTrait>(
    db: &C,
    rows: &mut [PendingMessage],
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let configs: HashSet<Uuid> = rows.iter().map(|r| r.config_id).collect();
    let values: HashSet<&str> = rows
        .iter()
        .flat_map(|r| [r.sender.wa_id.as_deref(), r.sender.user_id.as_deref()])
        .flatten()
        .collect();
    let found = previous::Entity::find()
        .filter(previous::Column::ConfigId.is_in(any_of(configs)))
        .filter(previous::Column::Value.is_in(any_of(values.into_iter().map(str::to_owned))))
        .all(db)
        .await?;
    if found.is_empty() {
        return Ok(());
    }
    let moved: HashMap<(Uuid, &str, &str), Uuid> = found
        .iter()
        .map(|p| {
            (
                (p.config_id, p.kind.as_str(), p.value.as_str()),
                p.customer_id,
            )
        })
        .collect();
    let now_known: HashMap<Uuid, customers::Model> = customers::Entity::find()
        .filter(customers::Column::Id.is_in(any_of(found.iter().map(|p| p.customer_id))))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    for r in rows.iter_mut() {
        let by = |kind: &str, v: &Option<String>| {
            v.as_deref()
                .and_then(|v| moved.get(&(r.config_id, kind, v)).copied())
        };
        let Some(c) = by(KIND_WA_ID, &r.sender.wa_id)
            .or_else(|| by(KIND_USER_ID, &r.sender.user_id))
            .and_then(|id| now_known.get(&id))
        else {
            continue;
        };
        if c.wa_id.is_some() {
            r.sender.wa_id = c.wa_id.clone();
        }
        if c.user_id.is_some() {
            r.sender.user_id = c.user_id.clone();
        }
        // The contact's parent BSUID described the old id: the customer's
        // (set by the change) stays.
        r.sender.parent_user_id = None;
        if let (Some((phone, _)), Some(key)) = (split_lane_key(&r.lane_key), r.sender.key()) {
            r.lane_key = lane_key(phone, key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::extract::extract_message;
    use serde_json::json;

    #[test]
    fn changes_of_number_and_of_user_id() {
        let m = extract_message(&json!({"from": "111", "id": "w", "type": "system",
            "system": {"body": "changed", "wa_id": "222", "type": "user_changed_number"}}));
        let r = rekey_of(&m).expect("rekey");
        assert_eq!((r.kind, r.new.as_str()), (Kind::WaId, "222"));
        assert_eq!(r.from.wa_id.as_deref(), Some("111"));

        let m = extract_message(&json!({"id": "w", "type": "system",
            "system": {"new_wa_id": "222", "customer": "111", "type": "customer_changed_number"}}));
        let r = rekey_of(&m).expect("older shape");
        assert_eq!(
            (r.new.as_str(), r.from.wa_id.as_deref()),
            ("222", Some("111"))
        );

        let m = extract_message(&json!({"from_user_id": "US.1", "id": "w", "type": "system",
            "system": {"user_id": "US.2", "parent_user_id": "US.ENT.9",
                "type": "user_changed_user_id"}}));
        let r = rekey_of(&m).expect("bsuid");
        assert_eq!((r.kind, r.new.as_str()), (Kind::UserId, "US.2"));
        assert_eq!(r.parent_user_id.as_deref(), Some("US.ENT.9"));

        // Not a change of id, or no new id: nothing.
        for v in [
            json!({"from": "1", "id": "w", "type": "system",
                "system": {"type": "customer_identity_changed"}}),
            json!({"from": "1", "id": "w", "type": "system",
                "system": {"type": "user_changed_number"}}),
            json!({"from": "1", "id": "w", "type": "text", "text": {"body": "x"}}),
        ] {
            assert_eq!(rekey_of(&extract_message(&v)), None, "{v}");
        }
    }
}
