//! Message templates as a send needs them: a template send must name an
//! approved template, in a language it exists in, with exactly the body
//! parameters its components declare, before Meta sees it (Meta would
//! answer 132000 or 132001 late, and misleadingly for a template it does
//! not know yet). And a send that uses a template counts it.

use std::collections::{BTreeSet, HashSet};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter};
use serde_json::Value;
use uuid::Uuid;
use wapipe_shared::entities::{customers, templates};

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
    #[error("template {name:?} ({language}) is {status}, not approved{reason}")]
    NotApproved {
        name: String,
        language: String,
        status: String,
        /// `: <Meta's reason>` when Meta gave one (a pause, a rejection),
        /// else empty.
        reason: String,
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
            reason: t
                .rejected_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
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

/// Our code for an authentication template refused because the customer
/// is known by a business-scoped user id only: Meta delivers those
/// (one-time passwords) to phone numbers only.
pub const CODE_NEEDS_PHONE_NUMBER: &str = "authentication_needs_phone_number";

/// Why a template send is refused locally: Meta's code (or ours) and a
/// sentence for the agent or the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

/// The one rule for every sender (API, scenarios, reminders, the outbound
/// worker): whether template `t` may go to `customer`, sent to a BSUID
/// (`to_user_id`) or to a phone number.
/// - A MARKETING template to a customer who stopped marketing messages
///   (`user_preferences`) is refused with Meta's code 131050; other
///   categories go.
/// - An AUTHENTICATION template needs a phone number: refused when the
///   send would go to a BSUID.
pub fn send_refusal(
    t: &templates::Model,
    customer: Option<&customers::Model>,
    to_user_id: bool,
) -> Option<Refused> {
    if t.category.eq_ignore_ascii_case("marketing")
        && customer.is_some_and(|c| c.marketing_opted_out)
    {
        return Some(Refused {
            code: crate::outbox::CODE_MARKETING_OPTED_OUT,
            message: format!(
                "the customer stopped marketing messages: template {:?} is MARKETING; \
                 send a utility template or wait until they resume",
                t.name
            ),
        });
    }
    if t.category.eq_ignore_ascii_case("authentication") && to_user_id {
        return Some(Refused {
            code: CODE_NEEDS_PHONE_NUMBER,
            message: format!(
                "template {:?} is AUTHENTICATION, which Meta delivers to phone numbers only; \
                 this customer is known by a business-scoped user id only",
                t.name
            ),
        });
    }
    None
}

/// The config's template of that name in that language, if any.
pub fn find_language<'a>(
    all: &'a [templates::Model],
    config_id: Uuid,
    name: &str,
    language: &str,
) -> Option<&'a templates::Model> {
    all.iter().find(|t| {
        t.config_id == config_id && t.name == name && same_language(&t.language, language)
    })
}

/// [`send_refusal`] for one stored send: the template by name and
/// language, the customer by id (two lookups).
pub async fn template_refusal<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    name: &str,
    language: &str,
    customer_id: Uuid,
    to_user_id: bool,
) -> Result<Option<Refused>, sea_orm::DbErr> {
    let all = templates::Entity::find()
        .filter(templates::Column::ConfigId.eq(config_id))
        .filter(templates::Column::Name.eq(name))
        .all(db)
        .await?;
    let Some(t) = find_language(&all, config_id, name, language) else {
        return Ok(None);
    };
    let customer = customers::Entity::find_by_id(customer_id).one(db).await?;
    Ok(send_refusal(t, customer.as_ref(), to_user_id))
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

#[derive(Debug, thiserror::Error)]
pub enum TemplateSyncError {
    #[error("no WhatsApp config with id {0}")]
    UnknownConfig(Uuid),
    #[error("the Graph API answered {status}: {message}")]
    Graph { status: u16, message: String },
    #[error("cannot reach the Graph API: {0}")]
    Http(String),
    #[error("the Graph API sent a page that is not a template list: {0}")]
    Shape(String),
    #[error(transparent)]
    Config(#[from] crate::configs::ConfigError),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub pages: u64,
    /// Templates upserted (one per name and language): those Meta listed,
    /// less those deleted here.
    pub templates: u64,
}

/// Where the Graph API is (`GRAPH_API_BASE`, `GRAPH_API_VERSION`).
#[derive(Debug, Clone)]
pub struct GraphTarget {
    pub base: String,
    pub version: String,
}

/// The predicate of the partial unique index on (config, name, language)
/// (migration 000009): only templates not deleted hold their name. An
/// upsert on those columns names it in its conflict target, written as the
/// index has it, for SQLite to match the two.
pub const LIVE_NAME: &str = "is_deleted = false";

/// Meta ids of the config's templates deleted here and not live again: a
/// sync leaves them deleted.
async fn deleted_here<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    use sea_orm::QuerySelect;
    let rows: Vec<(Option<String>, bool)> = templates::Entity::find()
        .select_only()
        .column(templates::Column::WhatsappTemplateId)
        .column(templates::Column::IsDeleted)
        .filter(templates::Column::ConfigId.eq(config_id))
        .filter(templates::Column::WhatsappTemplateId.is_not_null())
        .into_tuple()
        .all(db)
        .await?;
    let live: HashSet<&str> = rows
        .iter()
        .filter(|(_, deleted)| !deleted)
        .filter_map(|(id, _)| id.as_deref())
        .collect();
    Ok(rows
        .iter()
        .filter(|(_, deleted)| *deleted)
        .filter_map(|(id, _)| id.clone())
        .filter(|id| !live.contains(id.as_str()))
        .collect())
}

/// Fetches every page of the account's templates (`GET
/// /{waba_id}/message_templates`) and upserts each on (config, name,
/// language) among the templates not deleted: Meta's id, status, category,
/// quality and components. A rerun changes only what Meta changed;
/// templates Meta no longer lists are left as they are (their status
/// webhooks keep them right). A template deleted here stays deleted while
/// Meta lists it under the same id; under a new id (recreated at Meta) it
/// is a new template and arrives.
pub async fn sync<C: ConnectionTrait>(
    db: &C,
    configs: &crate::configs::ConfigCache,
    graph: &GraphTarget,
    config_id: Uuid,
) -> Result<SyncReport, TemplateSyncError> {
    use sea_orm::ActiveValue::Set;
    use sea_orm::sea_query::OnConflict;
    use secrecy::ExposeSecret;
    use wapipe_shared::entities::whatsapp_configs;
    let row = whatsapp_configs::Entity::find_by_id(config_id)
        .one(db)
        .await?
        .filter(|c| !c.is_deleted)
        .ok_or(TemplateSyncError::UnknownConfig(config_id))?;
    let send = configs
        .get(db, config_id)
        .await?
        .ok_or(TemplateSyncError::UnknownConfig(config_id))?;
    let version = send
        .graph_api_version
        .clone()
        .unwrap_or_else(|| graph.version.clone());
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| TemplateSyncError::Http(e.to_string()))?;
    let mut url = Some(format!(
        "{}/{}/{}/message_templates?limit=100&fields=id,name,language,status,category,quality_score,components",
        graph.base.trim_end_matches('/'),
        version,
        row.waba_id
    ));
    let mut report = SyncReport::default();
    let skip = deleted_here(db, config_id).await?;
    // A bound on pages, in case a peer keeps sending a `next`.
    while let Some(u) = url.take().filter(|_| report.pages < 10_000) {
        let resp = http
            .get(&u)
            .bearer_auth(send.access_token.expose_secret())
            .send()
            .await
            .map_err(|e| TemplateSyncError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let page: Value = resp
            .json()
            .await
            .map_err(|e| TemplateSyncError::Shape(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(TemplateSyncError::Graph {
                status,
                message: page["error"]["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_owned(),
            });
        }
        let data = page["data"]
            .as_array()
            .ok_or_else(|| TemplateSyncError::Shape("no `data` array".into()))?;
        report.pages += 1;
        let now = clock::now();
        for t in data {
            let (Some(name), Some(language)) = (t["name"].as_str(), t["language"].as_str()) else {
                continue;
            };
            let quality = t["quality_score"]["score"]
                .as_str()
                .or_else(|| t["quality_score"].as_str())
                .map(str::to_owned);
            let meta_id = t["id"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| t["id"].as_u64().map(|n| n.to_string()));
            if meta_id.as_ref().is_some_and(|id| skip.contains(id)) {
                continue;
            }
            use templates::Column as T;
            templates::Entity::insert(templates::ActiveModel {
                id: Set(Uuid::now_v7()),
                created_at: Set(now),
                updated_at: Set(now),
                config_id: Set(config_id),
                name: Set(name.to_owned()),
                language: Set(language.to_owned()),
                category: Set(t["category"]
                    .as_str()
                    .unwrap_or("UTILITY")
                    .to_ascii_uppercase()),
                status: Set(t["status"]
                    .as_str()
                    .unwrap_or("PENDING")
                    .to_ascii_uppercase()),
                components: Set(t.get("components").cloned()),
                whatsapp_template_id: Set(meta_id),
                whatsapp_template_name: Set(Some(name.to_owned())),
                quality_score: Set(quality),
                usage_count: Set(0),
                is_active: Set(true),
                is_deleted: Set(false),
                ..Default::default()
            })
            .on_conflict(
                OnConflict::columns([T::ConfigId, T::Name, T::Language])
                    .target_and_where(Expr::cust(LIVE_NAME))
                    .update_columns([
                        T::UpdatedAt,
                        T::Category,
                        T::Status,
                        T::Components,
                        T::WhatsappTemplateId,
                        T::WhatsappTemplateName,
                        T::QualityScore,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
            report.templates += 1;
        }
        url = page["paging"]["next"].as_str().map(str::to_owned);
    }
    whatsapp_configs::Entity::update_many()
        .col_expr(
            whatsapp_configs::Column::LastSyncAt,
            Expr::value(clock::now()),
        )
        .filter(whatsapp_configs::Column::Id.eq(config_id))
        .exec(db)
        .await?;
    Ok(report)
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
