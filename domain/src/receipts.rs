//! Applying the receipts of one wamid, stored in `message_status_events` by
//! the parse worker, to `messages.status` under DESIGN invariant 4. The
//! status worker runs it for each `status.receipt`; the outbound worker
//! runs it right after storing a wamid, for receipts that came first.
//!
//! - each receipt is one conditional UPDATE, `… WHERE status IN (the
//!   statuses it may replace)` ([`MessageStatus::applies_over`]), so a
//!   status never regresses and the final status does not depend on the
//!   order receipts arrive in;
//! - `failed` applies over queued, sending and sent only, and is always
//!   kept in `message_status_events`;
//! - receipts for a wamid not stored yet stay `applied = false` until
//!   [`apply_pending_receipts`] runs again (the outbound worker calls it
//!   right after storing a wamid);
//! - the UPDATE that moves the status also writes seed 002's
//!   `providerStatus` (Meta's status string as received) and `readStatus`
//!   ([`read_status_of`]), so both follow the status and never regress.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, TransactionSession,
    TransactionTrait,
};
use uuid::Uuid;
use wapipe_shared::entities::message_status_events;
use wapipe_shared::entities::messages::{self, Column as M, MessageStatus};
use wapipe_shared::whatsapp::errors_of;

/// Receipts considered, by outcome: `applied` (the status moved),
/// `outranked` (the message was already further), `unknown` (a status we do
/// not rank), `pending` (no message with that wamid yet).
pub const METRIC_RECEIPTS_TOTAL: &str = "wapipe_status_receipts_total";

/// What [`apply_pending_receipts`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The message, when it exists.
    pub message_id: Option<Uuid>,
    pub chat_id: Option<Uuid>,
    /// Pending receipts found.
    pub pending: usize,
    /// Receipts that moved the status.
    pub applied: usize,
    /// The message's status afterwards.
    pub status: Option<MessageStatus>,
    /// Meta's error code when the message ended `failed`.
    pub error_code: Option<String>,
}

impl Applied {
    pub fn changed(&self) -> bool {
        self.applied > 0
    }
}

/// seed 002 `readStatus` (`sent | delivered | read`) of a status; `None`
/// for statuses it has no value for (queued, sending, failed: a failure
/// leaves the last one reached).
pub fn read_status_of(s: MessageStatus) -> Option<&'static str> {
    match s {
        MessageStatus::Sent => Some("sent"),
        MessageStatus::Delivered => Some("delivered"),
        // A voice note played was read.
        MessageStatus::Read | MessageStatus::Played => Some("read"),
        MessageStatus::Queued | MessageStatus::Sending | MessageStatus::Failed => None,
    }
}

/// The timestamp column a receipt fills.
fn time_column(s: MessageStatus) -> Option<M> {
    match s {
        MessageStatus::Sent => Some(M::SentAt),
        MessageStatus::Delivered => Some(M::DeliveredAt),
        // Played (voice notes) implies read; there is no column of its own.
        MessageStatus::Read | MessageStatus::Played => Some(M::ReadAt),
        MessageStatus::Failed => Some(M::FailedAt),
        MessageStatus::Queued | MessageStatus::Sending => None,
    }
}

/// Applies every pending receipt of (config, wamid) to its message, in one
/// transaction. Without a message it changes nothing and the receipts stay
/// pending. Idempotent, and safe to run concurrently with itself: each
/// status change is a conditional UPDATE.
pub async fn apply_pending_receipts<C>(
    db: &C,
    config_id: Uuid,
    provider_message_id: &str,
) -> Result<Applied, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    use message_status_events::Column as E;
    let txn = wapipe_shared::db::begin_write(db).await?;
    let pending = message_status_events::Entity::find()
        .filter(E::ConfigId.eq(config_id))
        .filter(E::ProviderMessageId.eq(provider_message_id))
        .filter(E::Applied.eq(false))
        .order_by_asc(E::Timestamp)
        .order_by_asc(E::Id)
        .all(&txn)
        .await?;
    let message = messages::Entity::find()
        .filter(M::ConfigId.eq(config_id))
        .filter(M::ProviderMessageId.eq(provider_message_id))
        .one(&txn)
        .await?;
    let Some(message) = message else {
        txn.commit().await?;
        if !pending.is_empty() {
            metrics::counter!(METRIC_RECEIPTS_TOTAL, "outcome" => "pending")
                .increment(pending.len() as u64);
        }
        return Ok(Applied {
            message_id: None,
            chat_id: None,
            pending: pending.len(),
            applied: 0,
            status: None,
            error_code: None,
        });
    };
    let mut out = Applied {
        message_id: Some(message.id),
        chat_id: Some(message.chat_id),
        pending: pending.len(),
        applied: 0,
        status: Some(message.status),
        error_code: message.error_code.clone(),
    };
    if pending.is_empty() {
        txn.commit().await?;
        return Ok(out);
    }

    let now = crate::clock::now();
    let (mut applied, mut outranked, mut unknown) = (0u64, 0u64, 0u64);
    for r in &pending {
        let status = match r.status.parse::<MessageStatus>() {
            Ok(s) if time_column(s).is_some() => s,
            _ => {
                unknown += 1;
                continue;
            }
        };
        if apply_one(&txn, message.id, status, r, now).await? {
            applied += 1;
            out.applied += 1;
            out.status = Some(status);
            out.error_code = if status == MessageStatus::Failed {
                r.error_code.clone()
            } else {
                None
            };
        } else {
            outranked += 1;
            backfill_time(&txn, message.id, status, r.timestamp).await?;
        }
    }
    // Pricing can come on any receipt, outranked ones too (a `sent` after
    // its `delivered`); the latest in Meta's time among all the wamid's
    // receipts wins, whatever order they arrived in. Plain values: a
    // redelivered receipt writes the same ones.
    let latest = if pending
        .iter()
        .any(|r| Pricing::of(r.pricing.as_ref()).is_some())
    {
        message_status_events::Entity::find()
            .filter(E::ConfigId.eq(config_id))
            .filter(E::ProviderMessageId.eq(provider_message_id))
            .filter(E::Pricing.is_not_null())
            .order_by_desc(E::Timestamp)
            .order_by_desc(E::Id)
            .all(&txn)
            .await?
            .iter()
            .find_map(|r| Pricing::of(r.pricing.as_ref()))
    } else {
        None
    };
    if let Some(p) = latest {
        messages::Entity::update_many()
            .col_expr(M::PricingModel, Expr::value(p.model))
            .col_expr(M::PricingType, Expr::value(p.kind))
            .col_expr(M::PricingCategory, Expr::value(p.category))
            .col_expr(M::Billable, Expr::value(p.billable))
            .filter(M::Id.eq(message.id))
            .exec(&txn)
            .await?;
    }
    message_status_events::Entity::update_many()
        .col_expr(E::Applied, Expr::value(true))
        .col_expr(E::MessageId, Expr::value(message.id))
        .col_expr(E::UpdatedAt, Expr::value(now))
        .filter(E::Id.is_in(wapipe_shared::db::pad_pow2(
            pending.iter().map(|r| r.id).collect(),
        )))
        .exec(&txn)
        .await?;
    if applied > 0 {
        // Marked applied in this transaction too: a redelivered job finds
        // nothing pending and writes no second event.
        crate::events::record_messages(&txn, crate::events::MESSAGE_UPDATED, &[message.id]).await?;
    }
    txn.commit().await?;
    for (outcome, n) in [
        ("applied", applied),
        ("outranked", outranked),
        ("unknown", unknown),
    ] {
        if n > 0 {
            metrics::counter!(METRIC_RECEIPTS_TOTAL, "outcome" => outcome).increment(n);
        }
    }
    Ok(out)
}

/// A receipt's `pricing` (Meta's `pricing_model`, `type`, `category`,
/// `billable`), as the message keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    pub model: Option<String>,
    pub kind: Option<String>,
    pub category: Option<String>,
    pub billable: Option<bool>,
}

impl Pricing {
    /// `None` unless `pricing` is an object with at least one of the four.
    pub fn of(pricing: Option<&serde_json::Value>) -> Option<Self> {
        use wapipe_shared::whatsapp::lenient_string;
        let p = pricing.filter(|p| p.is_object())?;
        let text = |k: &str| lenient_string(p.get(k));
        let out = Self {
            model: text("pricing_model"),
            kind: text("type"),
            category: text("category"),
            billable: match p.get("billable") {
                Some(serde_json::Value::Bool(b)) => Some(*b),
                Some(serde_json::Value::String(s)) => s.parse().ok(),
                _ => None,
            },
        };
        let empty = out.model.is_none()
            && out.kind.is_none()
            && out.category.is_none()
            && out.billable.is_none();
        (!empty).then_some(out)
    }
}

/// The one conditional UPDATE of a receipt. Returns whether it applied.
async fn apply_one<C: ConnectionTrait>(
    db: &C,
    message_id: Uuid,
    status: MessageStatus,
    r: &message_status_events::Model,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let mut q = messages::Entity::update_many()
        .col_expr(M::Status, Expr::value(status.as_str()))
        .col_expr(M::ProviderStatus, Expr::value(r.status.as_str()))
        .col_expr(M::UpdatedAt, Expr::value(now));
    if let Some(read) = read_status_of(status) {
        q = q.col_expr(M::ReadStatus, Expr::value(read));
    }
    match status {
        MessageStatus::Failed => {
            let first = errors_of(r.errors.as_ref()).into_iter().next();
            let title = first
                .as_ref()
                .and_then(|e| e.title.clone().or_else(|| e.message.clone()));
            let details = first
                .as_ref()
                .and_then(|e| e.details.clone().or_else(|| e.message.clone()));
            q = q
                .col_expr(M::FailedAt, Expr::value(r.timestamp))
                .col_expr(M::ErrorCode, Expr::value(r.error_code.clone()))
                .col_expr(M::ErrorTitle, Expr::value(title))
                .col_expr(M::ErrorDetails, Expr::value(details));
        }
        other => {
            if matches!(
                other,
                MessageStatus::Delivered | MessageStatus::Read | MessageStatus::Played
            ) {
                // Over a failure (multi-device sends report both), the
                // delivery wins and the row no longer shows an error: the
                // failure stays in `message_status_events`. The same final
                // row whichever receipt came first.
                q = q
                    .col_expr(M::FailedAt, Expr::value(Option::<DateTime<Utc>>::None))
                    .col_expr(M::ErrorCode, Expr::value(Option::<String>::None))
                    .col_expr(M::ErrorTitle, Expr::value(Option::<String>::None))
                    .col_expr(M::ErrorDetails, Expr::value(Option::<String>::None));
            }
            if let Some(col) = time_column(other) {
                // Keep the first time (a read after a played keeps its time).
                q = q.col_expr(
                    col,
                    Func::coalesce([Expr::col(col), Expr::value(r.timestamp)]).into(),
                );
            }
        }
    }
    let res = q
        .filter(M::Id.eq(message_id))
        .filter(M::Status.is_in(status.applies_over()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// A receipt that arrived after a higher one (read before delivered) still
/// tells when it happened: fill its time column if empty. Failures do not
/// backfill: a message that was delivered did not fail.
async fn backfill_time<C: ConnectionTrait>(
    db: &C,
    message_id: Uuid,
    status: MessageStatus,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let Some(col) = time_column(status).filter(|_| status != MessageStatus::Failed) else {
        return Ok(());
    };
    messages::Entity::update_many()
        .col_expr(col, Expr::value(at))
        .filter(M::Id.eq(message_id))
        .filter(col.is_null())
        .exec(db)
        .await?;
    Ok(())
}
