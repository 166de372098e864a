//! The 24-hour customer-service window (DESIGN invariant 7): free-form
//! messages may go to a customer whose last inbound message is less than
//! 24 hours old, or who has an open conversation ahead of its end;
//! templates may always go.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;
use wapipe_shared::db::pad_pow2;
use wapipe_shared::entities::conversations::{self, ConversationStatus};
use wapipe_shared::entities::customers;

use crate::clock::WINDOW;

/// Whether a customer whose last inbound message came at `last_inbound_at`
/// is inside the window at `now`.
pub fn window_open(last_inbound_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_inbound_at.is_some_and(|t| t > now - WINDOW)
}

/// The customers among `(config_id, customer_id)` pairs whose window is
/// open now: one look at `customers`, then one at the open conversations
/// for those the first did not settle.
pub async fn open_windows<C: ConnectionTrait>(
    db: &C,
    pairs: &[(Uuid, Uuid)],
) -> Result<HashSet<Uuid>, DbErr> {
    let now = Utc::now();
    let customer_ids: Vec<Uuid> = pairs
        .iter()
        .map(|(_, c)| *c)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if customer_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let last: Vec<(Uuid, Option<DateTime<Utc>>)> = customers::Entity::find()
        .select_only()
        .column(customers::Column::Id)
        .column(customers::Column::LastInboundAt)
        .filter(customers::Column::Id.is_in(pad_pow2(customer_ids.clone())))
        .into_tuple()
        .all(db)
        .await?;
    let mut open: HashSet<Uuid> = last
        .into_iter()
        .filter(|(_, at)| window_open(*at, now))
        .map(|(id, _)| id)
        .collect();
    let unknown: Vec<Uuid> = customer_ids
        .into_iter()
        .filter(|c| !open.contains(c))
        .collect();
    if unknown.is_empty() {
        return Ok(open);
    }
    // Config and customer lead `ix_conversations_window`.
    let configs: Vec<Uuid> = pairs
        .iter()
        .map(|(c, _)| *c)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let by_conversation: Vec<Uuid> = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::CustomerId)
        .filter(conversations::Column::ConfigId.is_in(pad_pow2(configs)))
        .filter(conversations::Column::CustomerId.is_in(pad_pow2(unknown)))
        .filter(conversations::Column::Status.eq(ConversationStatus::Open))
        .filter(conversations::Column::ExpiresAt.gt(now))
        .into_tuple()
        .all(db)
        .await?;
    // Customers are per config: the customer id says whose window it is.
    open.extend(by_conversation);
    Ok(open)
}

/// Whether one customer's window is open now.
pub async fn customer_window_open<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    customer_id: Uuid,
) -> Result<bool, DbErr> {
    Ok(open_windows(db, &[(config_id, customer_id)])
        .await?
        .contains(&customer_id))
}
