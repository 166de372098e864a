//! What became of an event: its [`Summary`] (stored as the event's
//! `processed_data`) and the parse metrics counted from it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use wapipe_shared::whatsapp::{self as wa, Change};

use super::effects::EffectOutcome;
use super::messages::InboundStored;
use super::route::{PendingStatus, error_json};

/// Events settled, by final status.
pub const METRIC_EVENTS_TOTAL: &str = "wapipe_parse_events_total";
/// Changes seen, by field (known names, else `other`).
pub const METRIC_CHANGES_TOTAL: &str = "wapipe_parse_changes_total";
/// Things nobody has seen before, by kind.
pub const METRIC_UNKNOWN_TOTAL: &str = "wapipe_parse_unknown_total";
/// Inbound messages, by outcome: new, duplicate, skipped (no sender).
pub const METRIC_MESSAGES_TOTAL: &str = "wapipe_parse_messages_total";
/// Status receipts, by outcome: new, duplicate, skipped (no wamid).
pub const METRIC_STATUSES_TOTAL: &str = "wapipe_parse_statuses_total";
/// Meta's error objects seen, by where: value, message, status.
pub const METRIC_META_ERRORS_TOTAL: &str = "wapipe_parse_meta_errors_total";
/// Changes no config routes.
pub const METRIC_UNROUTABLE_TOTAL: &str = "wapipe_parse_unroutable_changes_total";
/// End to end: Meta's message timestamp to the committed row (DESIGN §7).
pub const METRIC_MESSAGE_LAG_SECONDS: &str = "wapipe_message_end_to_end_seconds";

/// The kinds [`METRIC_UNKNOWN_TOTAL`] counts, for dashboards and tests.
pub const UNKNOWN_KINDS: &[&str] = &[
    "message_type",
    "missing_type",
    "interactive_type",
    "missing_id",
    "no_sender",
    "status",
    "status_without_id",
    "field",
    "call_without_id_or_customer",
    "rekey_conflict",
    "group_update",
];

/// Per-outcome counts, for `processed_data`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Tally {
    pub(super) total: u64,
    new: u64,
    duplicate: u64,
    pub(super) skipped: u64,
}

/// What an event held and what became of it: stored as the event's
/// `processed_data`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Summary {
    entries: usize,
    changes: usize,
    fields: Vec<String>,
    pub(super) routed_changes: u64,
    pub(super) unroutable_changes: u64,
    pub(super) messages: Tally,
    pub(super) statuses: Tally,
    effects_applied: u64,
    effects_target_missing: u64,
    /// Earlier reactions, edits and revokes applied to this event's new
    /// messages (they had arrived before their target).
    late_effects_applied: u64,
    pub(super) templates_updated: u64,
    /// Customers' marketing preferences that changed a row.
    pub(super) preferences_applied: u64,
    /// Messages imported (echoes, history) and customers renamed
    /// (coexistence with the WhatsApp Business app).
    pub(super) coexistence_applied: u64,
    /// Calls created or changed (`calls` field).
    pub(super) calls_updated: u64,
    /// Group updates (`group_*` fields) that changed a group or a member.
    pub(super) groups_updated: u64,
    /// Customers moved to a new phone number or BSUID (`system` messages).
    pub(super) identities_changed: u64,
    /// Config rows account and number health updates wrote.
    pub(super) configs_updated: u64,
    /// Degradations reported ([`super::health::HEALTH_EVENTS`]).
    pub(super) health_events: Vec<&'static str>,
    unknown: BTreeMap<&'static str, u64>,
    /// Value-level `errors[]`, with the config they came for.
    pub(super) errors: Vec<Value>,
    /// Changes we have no table for (account, phone number, calls, …),
    /// kept as Meta sent them.
    pub(super) updates: Vec<Value>,
    pub(super) unroutable: Vec<Value>,
}

impl Tally {
    /// Its outcomes, as metric labels, with their counts.
    fn outcomes(&self) -> [(&'static str, u64); 3] {
        [
            ("new", self.new),
            ("duplicate", self.duplicate),
            ("skipped", self.skipped),
        ]
    }
}

impl Summary {
    /// An event's summary before its changes are applied: what it holds.
    pub(super) fn new(root: &Value, changes: &[Change<'_>]) -> Self {
        let mut summary = Summary {
            entries: wa::array(root, "entry").len(),
            changes: changes.len(),
            ..Summary::default()
        };
        for c in changes {
            let f = c.field.unwrap_or("").to_owned();
            if !summary.fields.contains(&f) {
                summary.fields.push(f);
            }
        }
        summary
    }

    pub(super) fn unknown(&mut self, kind: &'static str) {
        *self.unknown.entry(kind).or_default() += 1;
    }

    /// Counts an inbound message of the event as [`super::messages::store_inbound`] stored it.
    pub(super) fn count_message(&mut self, s: &InboundStored) {
        if !s.is_new {
            self.messages.duplicate += 1;
            return;
        }
        self.messages.new += 1;
        self.late_effects_applied += s.late_effects;
        match s.effect {
            Some(EffectOutcome::Applied(_)) => self.effects_applied += 1,
            Some(EffectOutcome::TargetMissing) => self.effects_target_missing += 1,
            None => {}
        }
    }

    /// Counts a receipt of the event as [`super::receipts::store_statuses`]
    /// stored it (`new`; `None` when it names no message), with the errors
    /// Meta reported in it.
    pub(super) fn count_status(&mut self, p: &PendingStatus<'_>, new: Option<bool>) {
        match new {
            Some(true) => self.statuses.new += 1,
            Some(false) => self.statuses.duplicate += 1,
            None => return,
        }
        for e in &p.st.errors {
            self.errors
                .push(error_json(p.config_id, "status", Some("messages"), e));
        }
    }
}

/// Counts an event's changes and outcomes in the metrics, once its rows
/// are committed.
pub(super) fn record_metrics(changes: &[Change<'_>], summary: &Summary) {
    for c in changes {
        metrics::counter!(METRIC_CHANGES_TOTAL, "field" => wa::field_label(c.field)).increment(1);
    }
    for (kind, n) in &summary.unknown {
        metrics::counter!(METRIC_UNKNOWN_TOTAL, "kind" => *kind).increment(*n);
    }
    for (metric, tally) in [
        (METRIC_MESSAGES_TOTAL, &summary.messages),
        (METRIC_STATUSES_TOTAL, &summary.statuses),
    ] {
        for (outcome, n) in tally.outcomes() {
            if n > 0 {
                metrics::counter!(metric, "outcome" => outcome).increment(n);
            }
        }
    }
    for e in &summary.errors {
        let source = match e.get("source").and_then(Value::as_str) {
            Some("status") => "status",
            Some("message") => "message",
            _ => "value",
        };
        metrics::counter!(METRIC_META_ERRORS_TOTAL, "source" => source).increment(1);
    }
    if summary.unroutable_changes > 0 {
        metrics::counter!(METRIC_UNROUTABLE_TOTAL).increment(summary.unroutable_changes);
    }
    for event in &summary.health_events {
        metrics::counter!(super::health::METRIC_HEALTH_EVENTS_TOTAL, "event" => *event)
            .increment(1);
    }
}

/// Records the end-to-end lag of a batch's new messages, once committed.
pub(super) fn record_lags(lags: &[f64]) {
    for lag in lags {
        metrics::histogram!(METRIC_MESSAGE_LAG_SECONDS).record(*lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::extract::Unknown;

    #[test]
    fn unknown_kinds_are_listed() {
        for u in [
            Unknown::MessageType,
            Unknown::MissingType,
            Unknown::InteractiveType,
            Unknown::MissingId,
        ] {
            assert!(UNKNOWN_KINDS.contains(&u.as_str()));
        }
    }
}
