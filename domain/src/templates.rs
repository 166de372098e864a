//! Message templates as a send needs them: a template send must name an
//! approved template, in a language it exists in, with exactly the body
//! parameters its components declare, before Meta sees it (Meta would
//! answer 132000 or 132001 late, and misleadingly for a template it does
//! not know yet). And a send that uses a template counts it.

use std::collections::BTreeSet;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::entities::templates;

use crate::clock;

#[derive(Debug, thiserror::Error)]
pub enum TemplateCheckError {
    #[error("no template {name:?} on this number{langs}")]
    Unknown { name: String, langs: String },
    #[error("template {name:?} has no language {language:?}; it exists in {available}")]
    NoLanguage {
        name: String,
        language: String,
        available: String,
    },
    #[error("template {name:?} ({language}) is {status}, not approved")]
    NotApproved {
        name: String,
        language: String,
        status: String,
    },
    #[error("template {name:?} ({language}) takes {expected} body parameter(s); {given} given")]
    Parameters {
        name: String,
        language: String,
        expected: usize,
        given: usize,
    },
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// The `{{n}}` placeholders of a text.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find("}}") else { break };
        let inner = rest[..end].trim();
        if !inner.is_empty() {
            out.insert(inner.to_owned());
        }
        rest = &rest[end + 2..];
    }
    out
}

/// How many parameters the template's BODY declares (Meta's components),
/// or, for a local quick reply, its content.
pub fn body_parameters(t: &templates::Model) -> usize {
    let from_components = t.components.as_ref().and_then(Value::as_array).map(|cs| {
        cs.iter()
            .filter(|c| {
                c.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.eq_ignore_ascii_case("body"))
            })
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .map(|text| placeholders(text).len())
            .sum()
    });
    from_components
        .or_else(|| t.content.as_deref().map(|c| placeholders(c).len()))
        .unwrap_or(0)
}

fn same_language(a: &str, b: &str) -> bool {
    a.replace('-', "_")
        .eq_ignore_ascii_case(&b.replace('-', "_"))
}

/// The approved template a send may use, or why not.
pub async fn check_send<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    name: &str,
    language: &str,
    given: usize,
) -> Result<templates::Model, TemplateCheckError> {
    let all = templates::Entity::find()
        .filter(templates::Column::ConfigId.eq(config_id))
        .filter(templates::Column::Name.eq(name))
        .filter(templates::Column::IsDeleted.eq(false))
        .all(db)
        .await?;
    if all.is_empty() {
        return Err(TemplateCheckError::Unknown {
            name: name.to_owned(),
            langs: String::new(),
        });
    }
    let Some(t) = all.iter().find(|t| same_language(&t.language, language)) else {
        return Err(TemplateCheckError::NoLanguage {
            name: name.to_owned(),
            language: language.to_owned(),
            available: all
                .iter()
                .map(|t| t.language.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if !t.status.eq_ignore_ascii_case("approved") || !t.is_active {
        return Err(TemplateCheckError::NotApproved {
            name: name.to_owned(),
            language: t.language.clone(),
            status: if t.is_active {
                t.status.to_ascii_lowercase()
            } else {
                "inactive".to_owned()
            },
        });
    }
    let expected = body_parameters(t);
    if expected != given {
        return Err(TemplateCheckError::Parameters {
            name: name.to_owned(),
            language: t.language.clone(),
            expected,
            given,
        });
    }
    Ok(t.clone())
}

/// Counts a use of the template (`usageCount`, `lastUsedAt`).
pub async fn record_use<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<(), sea_orm::DbErr> {
    let now = clock::now();
    templates::Entity::update_many()
        .col_expr(
            templates::Column::UsageCount,
            Expr::col(templates::Column::UsageCount).add(1),
        )
        .col_expr(templates::Column::LastUsedAt, Expr::value(now))
        .filter(templates::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_placeholders() {
        assert_eq!(placeholders("Hi {{1}}, order {{2}} ({{1}})").len(), 2);
        assert_eq!(placeholders("no params").len(), 0);
        assert_eq!(placeholders("broken {{1").len(), 0);
        assert_eq!(placeholders("{{ name }} and {{order}}").len(), 2);
    }
}
