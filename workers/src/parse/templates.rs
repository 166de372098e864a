//! Templates: Meta's status, quality and category updates applied to the
//! config's `templates` rows.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
};
use serde_json::{Value, json};
use uuid::Uuid;
use wapipe_shared::entities::templates;
use wapipe_shared::whatsapp::{array, lenient_string, meta_timestamp, str_at};

use super::extract::clean_str;

/// Change fields whose value updates `templates`.
pub(super) const FIELDS: &[&str] = &[
    "message_template_status_update",
    "message_template_quality_update",
    "message_template_components_update",
    "template_category_update",
];

/// Applies a template change (`message_template_status_update`,
/// `message_template_quality_update`, `message_template_components_update`,
/// `template_category_update`) to the config's template, matched by Meta's
/// template id, else by name and language. Returns how many templates
/// changed (0 when unknown to us). Dispatches on the content rather than
/// the field name: Meta's own docs show quality updates under the status
/// field. `sent_at` is the entry's time: a status update older than the
/// one applied is ignored. Every write sets values (no increments), so a
/// replay changes nothing more.
pub(super) async fn apply_template_update<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    value: &Value,
    sent_at: Option<DateTime<Utc>>,
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
        matched = matched.add(T::WhatsappTemplateId.eq(clean_str(id)));
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
        .find(|t| provider_id.is_some() && t.whatsapp_template_id == provider_id)
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
    } else if let Some(correct) = upper("correct_category") {
        // Announced, not done: the category changes at the given time, and
        // a second webhook (with `previous_category`) says when it did.
        am.pending_category = Set(Some(correct));
        am.pending_category_at = Set(meta_timestamp(value.get("category_update_timestamp")));
        changed = true;
    } else if let Some(cat) = upper("new_category") {
        if t.category != cat {
            am.previous_category = Set(Some(
                upper("previous_category").unwrap_or_else(|| t.category.clone()),
            ));
            am.category = Set(cat);
        } else if let Some(prev) = upper("previous_category") {
            am.previous_category = Set(Some(prev));
        }
        am.pending_category = Set(None);
        am.pending_category_at = Set(None);
        changed = true;
    } else if let Some(components) = components_of(value) {
        am.components = Set(Some(components));
        changed = true;
    } else if let Some(event) = upper("event") {
        if t.status_at
            .is_some_and(|applied| sent_at.is_some_and(|at| at < applied))
        {
            // An older update, late or replayed: the newer status stands.
            return Ok(0);
        }
        am.status = Set(event);
        am.status_at = Set(sent_at.or(t.status_at));
        // A template approved after a rejection or a pause loses the old
        // reason.
        am.rejected_reason = Set(reason_of(value));
        changed = true;
    }
    if !changed {
        return Ok(0);
    }
    if t.whatsapp_template_id.is_none()
        && let Some(id) = provider_id
    {
        am.whatsapp_template_id = Set(Some(clean_str(&id)));
    }
    let res = templates::Entity::update_many()
        .set(am)
        .filter(T::Id.eq(t.id))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Why Meta gave the status: `reason` (unless `NONE`), else
/// `rejection_info.reason`, else a pause's `other_info` (title and
/// description).
fn reason_of(value: &Value) -> Option<String> {
    if let Some(r) = str_at(value, "reason").filter(|r| *r != "NONE") {
        return Some(clean_str(r));
    }
    if let Some(r) = value
        .get("rejection_info")
        .and_then(|r| str_at(r, "reason"))
    {
        return Some(clean_str(r));
    }
    let other = value.get("other_info")?;
    let parts: Vec<&str> = ["title", "description"]
        .iter()
        .filter_map(|k| str_at(other, k))
        .collect();
    (!parts.is_empty()).then(|| clean_str(&parts.join(": ")))
}

/// A components update as the template's `components`, in the shape Meta's
/// template API lists them (HEADER, BODY, FOOTER, BUTTONS), so the send
/// check counts the new body's parameters. `None` without a body.
fn components_of(value: &Value) -> Option<Value> {
    let body = str_at(value, "message_template_element")?;
    let mut out = Vec::new();
    if let Some(title) = str_at(value, "message_template_title") {
        out.push(json!({"type": "HEADER", "format": "TEXT", "text": clean_str(title)}));
    }
    out.push(json!({"type": "BODY", "text": clean_str(body)}));
    if let Some(footer) = str_at(value, "message_template_footer") {
        out.push(json!({"type": "FOOTER", "text": clean_str(footer)}));
    }
    let buttons: Vec<Value> = array(value, "message_template_buttons")
        .iter()
        .map(|b| {
            let mut button = serde_json::Map::new();
            for (from, to) in [
                ("message_template_button_type", "type"),
                ("message_template_button_text", "text"),
                ("message_template_button_url", "url"),
                ("message_template_button_phone_number", "phone_number"),
            ] {
                if let Some(v) = str_at(b, from) {
                    button.insert(to.to_owned(), Value::String(clean_str(v)));
                }
            }
            Value::Object(button)
        })
        .collect();
    if !buttons.is_empty() {
        out.push(json!({"type": "BUTTONS", "buttons": buttons}));
    }
    Some(Value::Array(out))
}
