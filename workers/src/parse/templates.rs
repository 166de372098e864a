//! Templates: Meta's status, quality and category updates applied to the
//! config's `templates` rows.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::entities::templates;
use wapipe_shared::whatsapp::lenient_string;

use super::extract::clean_str;

/// Change fields whose value updates `templates`.
pub(super) const FIELDS: &[&str] = &[
    "message_template_status_update",
    "message_template_quality_update",
    "template_category_update",
];

/// Applies a template change (`message_template_status_update`,
/// `message_template_quality_update`, `template_category_update`) to the
/// config's template, matched by Meta's template id, else by name and
/// language. Returns how many templates changed (0 when unknown to us).
/// Dispatches on the content rather than the field name: Meta's own docs
/// show quality updates under the status field.
pub(super) async fn apply_template_update<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    value: &Value,
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
    } else if let Some(cat) = upper("new_category") {
        am.previous_category = Set(Some(
            upper("previous_category").unwrap_or_else(|| t.category.clone()),
        ));
        am.category = Set(cat);
        changed = true;
    } else if let Some(event) = upper("event") {
        am.status = Set(event);
        let reason = value
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "NONE")
            .map(clean_str)
            .or_else(|| {
                value
                    .get("rejection_info")
                    .and_then(|r| r.get("reason"))
                    .and_then(Value::as_str)
                    .map(clean_str)
            });
        // A template approved after a rejection loses the old reason.
        am.rejected_reason = Set(reason);
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
