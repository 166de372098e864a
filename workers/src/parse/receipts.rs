//! Status receipts: Meta's sent/delivered/read/failed reports, each stored
//! once in `message_status_events` for the status worker to apply.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::db::pow2_chunks;
use wapipe_shared::entities::message_status_events;

use super::batch::CHUNK;
use super::extract::{clean_json, clean_str};
use super::route::PendingStatus;

/// Stores the batch's receipts, each once (`ON CONFLICT DO NOTHING` on
/// config, wamid, status and time), in multi-row INSERTs. A receipt
/// without a timestamp takes its event's arrival time, which is the same
/// on every replay. Returns, per row, whether it was new (`None` when it
/// names no message).
pub(super) async fn store_statuses<C: ConnectionTrait>(
    db: &C,
    rows: &[PendingStatus<'_>],
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
        let st = &r.st;
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
                recipient_user_id: Set(st.recipient_user_id.as_deref().map(clean_str)),
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
