//! Account and number health: `account_update`, `account_alerts`,
//! `phone_number_quality_update`, `phone_number_name_update` and
//! `business_capability_update` keep the latest state on the config rows
//! (`whatsapp_configs`: quality rating, messaging limit tier, name status,
//! account status and restrictions, capabilities, the last alert).
//!
//! - Each group of columns carries Meta's time it was set at
//!   (`entry[].time`, else the event's receipt time): an update older than
//!   the one applied, late or replayed, changes nothing, in one
//!   conditional UPDATE.
//! - A downgrade or restriction counts in
//!   [`METRIC_HEALTH_EVENTS_TOTAL`] (once: a replay finds the state already
//!   there), for the `WapipeNumberHealthDegraded` alert.
//! - Account events that carry no state we keep (pricing tiers, partner
//!   and terms notices, …) are left as they are, kept raw like every change.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use serde_json::Value;
use wapipe_shared::entities::whatsapp_configs::{self, Column as W};
use wapipe_shared::whatsapp::{Change, str_at};

use super::extract::{clean_json, clean_str};

/// Change fields applied here.
pub(super) const FIELDS: &[&str] = &[
    "account_update",
    "account_alerts",
    "phone_number_quality_update",
    "phone_number_name_update",
    "business_capability_update",
];

/// Degradations of a number or account, by `event`
/// ([`HEALTH_EVENTS`]): quality flagged low, messaging limit lowered,
/// account restricted, policy violation, account disabled or scheduled for
/// disabling, display name rejected, an active alert.
pub const METRIC_HEALTH_EVENTS_TOTAL: &str = "wapipe_number_health_events_total";

/// The `event` labels of [`METRIC_HEALTH_EVENTS_TOTAL`].
pub const HEALTH_EVENTS: &[&str] = &[
    "quality_flagged",
    "limit_downgraded",
    "account_restricted",
    "account_violation",
    "account_disabled",
    "name_rejected",
    "alert_active",
];

/// Registers the health metric at zero, so the alert rule finds it before
/// the first degradation.
pub fn describe_metrics() {
    for event in HEALTH_EVENTS {
        metrics::counter!(METRIC_HEALTH_EVENTS_TOTAL, "event" => *event).increment(0);
    }
}

/// What a health change did: config rows changed, and the degradation it
/// reported (counted only when it changed a row's state).
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub(super) rows: u64,
    pub(super) degraded: Option<&'static str>,
}

/// The configs a phone-number change is about: those whose display number
/// is the change's, else the WABA's only config. `None` of several
/// unnamed ones: better unapplied than applied to the wrong number.
fn number_targets<'c>(
    targets: &[&'c whatsapp_configs::Model],
    value: &Value,
) -> Vec<&'c whatsapp_configs::Model> {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let Some(number) = str_at(value, "display_phone_number").map(digits) else {
        return if targets.len() == 1 {
            targets.to_vec()
        } else {
            Vec::new()
        };
    };
    let named: Vec<_> = targets
        .iter()
        .copied()
        .filter(|c| c.display_phone_number.as_deref().map(digits) == Some(number.clone()))
        .collect();
    if named.is_empty() && targets.len() == 1 {
        targets.to_vec()
    } else {
        named
    }
}

fn upper(value: &Value, key: &str) -> Option<String> {
    str_at(value, key).map(|s| clean_str(&s.to_ascii_uppercase()))
}

/// Sets `sets` on `configs` unless the group (`time_col`) holds a newer
/// update. Equal times apply again (same values), so a replay changes
/// nothing but `updated_at`.
async fn set_if_newer<C: ConnectionTrait>(
    db: &C,
    configs: &[&whatsapp_configs::Model],
    time_col: W,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    sets: Vec<(W, SimpleExpr)>,
) -> Result<u64, DbErr> {
    if configs.is_empty() || sets.is_empty() {
        return Ok(0);
    }
    let mut q = whatsapp_configs::Entity::update_many()
        .col_expr(time_col, Expr::value(at))
        .col_expr(W::UpdatedAt, Expr::value(now));
    for (col, v) in sets {
        q = q.col_expr(col, v);
    }
    let res = q
        .filter(W::Id.is_in(configs.iter().map(|c| c.id)))
        .filter(
            Condition::any()
                .add(time_col.is_null())
                .add(time_col.lte(at)),
        )
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

fn json_or_null(v: Option<&Value>) -> SimpleExpr {
    Expr::value(sea_orm::Value::Json(
        v.filter(|v| !v.is_null()).map(|v| Box::new(clean_json(v))),
    ))
}

/// Applies one health change to the configs it routes to (every config of
/// the change's WABA). `received_at` orders changes without `entry[].time`.
pub(super) async fn apply<C: ConnectionTrait>(
    db: &C,
    targets: &[&whatsapp_configs::Model],
    change: &Change<'_>,
    received_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Applied, DbErr> {
    let value = change.value;
    let at = change.time().unwrap_or(received_at);
    let mut out = Applied::default();
    let configs = match change.field {
        Some("phone_number_quality_update" | "phone_number_name_update") => {
            number_targets(targets, value)
        }
        _ => targets.to_vec(),
    };
    // Degradations count only when some config did not show them yet: a
    // replay (the configs are read before each batch) counts nothing.
    let mut degraded = |event: &'static str, already: &dyn Fn(&whatsapp_configs::Model) -> bool| {
        if configs.iter().any(|c| !already(c)) {
            out.degraded = Some(event);
        }
    };
    let (time_col, sets): (W, Vec<(W, SimpleExpr)>) = match change.field {
        Some("phone_number_quality_update") => {
            let event = upper(value, "event");
            let tier = upper(value, "current_limit");
            let mut sets = Vec::new();
            // FLAGGED: the quality rating dropped to low; UNFLAGGED: it
            // recovered. Other events move the limit only.
            let quality = match event.as_deref() {
                Some("FLAGGED") => Some("RED"),
                Some("UNFLAGGED") => Some("GREEN"),
                _ => None,
            };
            if let Some(q) = quality {
                sets.push((W::QualityRating, Expr::value(q)));
                if q == "RED" {
                    degraded("quality_flagged", &|c| {
                        c.quality_rating.as_deref() == Some("RED")
                    });
                }
            }
            if let Some(t) = &tier {
                sets.push((W::MessagingLimitTier, Expr::value(t.as_str())));
                if event.as_deref() == Some("DOWNGRADE") {
                    degraded("limit_downgraded", &|c| {
                        c.messaging_limit_tier.as_ref() == Some(t)
                    });
                }
            }
            (W::QualityUpdatedAt, sets)
        }
        Some("phone_number_name_update") => {
            let mut sets = Vec::new();
            if let Some(decision) = upper(value, "decision") {
                if decision == "APPROVED"
                    && let Some(name) = str_at(value, "requested_verified_name")
                {
                    sets.push((W::VerifiedName, Expr::value(clean_str(name))));
                }
                if decision == "REJECTED" {
                    degraded("name_rejected", &|c| {
                        c.name_status.as_deref() == Some("REJECTED")
                    });
                }
                sets.push((W::NameStatus, Expr::value(decision)));
            }
            (W::NameUpdatedAt, sets)
        }
        Some("account_update") => {
            let event = upper(value, "event");
            let mut sets = Vec::new();
            let same =
                |c: &whatsapp_configs::Model, e: &str| c.account_status.as_deref() == Some(e);
            match event.as_deref() {
                Some(e @ "ACCOUNT_RESTRICTION") => {
                    let info = value.get("restriction_info");
                    degraded("account_restricted", &|c| {
                        same(c, e) && c.restrictions.as_ref() == info
                    });
                    sets.push((W::Restrictions, json_or_null(info)));
                    sets.push((W::AccountStatus, Expr::value(e)));
                }
                Some(e @ "ACCOUNT_VIOLATION") => {
                    degraded("account_violation", &|c| same(c, e));
                    sets.push((W::AccountStatus, Expr::value(e)));
                }
                Some("DISABLED_UPDATE") => {
                    let ban = value.get("ban_info");
                    let state = ban
                        .and_then(|b| str_at(b, "waba_ban_state"))
                        .map(str::to_ascii_uppercase);
                    // REINSTATE lifts the ban; DISABLE and
                    // SCHEDULE_FOR_DISABLE restrict the account.
                    let status = match state.as_deref() {
                        Some("REINSTATE") => {
                            sets.push((W::Restrictions, json_or_null(None)));
                            "REINSTATED"
                        }
                        _ => {
                            degraded("account_disabled", &|c| c.restrictions.as_ref() == ban);
                            sets.push((W::Restrictions, json_or_null(ban)));
                            "DISABLED"
                        }
                    };
                    sets.push((W::AccountStatus, Expr::value(status)));
                }
                Some(
                    e @ ("ACCOUNT_DELETED"
                    | "ACCOUNT_OFFBOARDED"
                    | "ACCOUNT_RECONNECTED"
                    | "VERIFIED_ACCOUNT"),
                ) => sets.push((W::AccountStatus, Expr::value(e))),
                _ => {}
            }
            (W::AccountUpdatedAt, sets)
        }
        Some("account_alerts") => {
            let active = value
                .get("alert_info")
                .and_then(|a| str_at(a, "alert_status"))
                .is_some_and(|s| s.eq_ignore_ascii_case("active"));
            let cleaned = clean_json(value);
            if active {
                degraded("alert_active", &|c| c.last_alert.as_ref() == Some(&cleaned));
            }
            let sets = vec![(W::LastAlert, json_or_null(Some(value)))];
            (W::AlertUpdatedAt, sets)
        }
        Some("business_capability_update") => {
            let sets = vec![(W::BusinessCapabilities, json_or_null(Some(value)))];
            (W::CapabilitiesUpdatedAt, sets)
        }
        _ => return Ok(out),
    };
    out.rows = set_if_newer(db, &configs, time_col, at, now, sets).await?;
    if out.rows == 0 {
        // Older than what is applied, or for no config: nothing to count.
        out.degraded = None;
    }
    Ok(out)
}
