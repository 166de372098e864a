//! Customers' preferences (`user_preferences`): a `stop` of the
//! `marketing_messages` category flags the customer
//! (`customers.marketing_opted_out`) and a `resume` (or a `signup`) clears
//! it; MARKETING templates to a flagged customer are then refused locally
//! (`wapipe_domain::templates::check_marketing`). Preferences apply in
//! Meta's time: an older one, late or replayed, changes nothing.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::entities::customers::{self, Column as C};
use wapipe_shared::whatsapp::{array, id_at, meta_timestamp, str_at};

use super::customers::{Sender, customer_without_message};

pub(super) const FIELD: &str = "user_preferences";

/// Applies the change's `user_preferences[]` to the config's customers.
/// Returns how many preferences changed a row. A customer not seen yet is
/// created (without opening a 24-hour window: a preference is no message).
pub(super) async fn apply<D: ConnectionTrait>(
    db: &D,
    config_id: Uuid,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let mut changed = 0;
    for p in array(value, "user_preferences") {
        if !str_at(p, "category").is_some_and(|c| c.eq_ignore_ascii_case("marketing_messages")) {
            continue;
        }
        let opted_out = match str_at(p, "value").map(str::to_ascii_lowercase).as_deref() {
            Some("stop") => true,
            Some("resume" | "signup") => false,
            _ => continue,
        };
        let sender = Sender {
            wa_id: id_at(p.get("wa_id")),
            user_id: id_at(p.get("user_id")),
            name: None,
            username: None,
            parent_user_id: id_at(p.get("parent_user_id")),
        };
        if sender.key().is_none() {
            continue;
        }
        // Without Meta's time, the receipt time orders it.
        let at = meta_timestamp(p.get("timestamp")).unwrap_or(now).min(now);
        customer_without_message(db, config_id, &sender, now).await?;
        // Strictly newer only, so a replay matches no row and changes
        // nothing (not even `updated_at`). At the same second a stop wins
        // over a resume, whatever order they arrive in: when unsure, no
        // marketing.
        let mut newer = Condition::any()
            .add(C::MarketingPreferenceAt.is_null())
            .add(C::MarketingPreferenceAt.lt(at));
        if opted_out {
            newer = newer.add(
                Condition::all()
                    .add(C::MarketingPreferenceAt.eq(at))
                    .add(C::MarketingOptedOut.eq(false)),
            );
        }
        let res = customers::Entity::update_many()
            .col_expr(C::MarketingOptedOut, Expr::value(opted_out))
            .col_expr(C::MarketingPreferenceAt, Expr::value(at))
            .col_expr(C::UpdatedAt, Expr::value(now))
            .filter(C::ConfigId.eq(config_id))
            .filter(sender.rows())
            .filter(newer)
            .exec(db)
            .await?;
        changed += res.rows_affected;
    }
    Ok(changed)
}
