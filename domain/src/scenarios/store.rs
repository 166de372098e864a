//! Scenarios in the database: import a flow file (validated, in one
//! transaction, nothing written on any fault), export one back, list,
//! delete, and read a config's chatbot settings. The CLI and the REST API
//! both go through here.
//!
//! Identity across imports: a scenario is replaced in place by title (its
//! id, runs and deny list stay); an item's id is derived from its
//! scenario and its ref, and a template's from its config and ref, so the
//! same ref keeps the same id after a re-import and the reply ids of a
//! menu sent before still lead to the same step.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wapipe_shared::entities::{
    scenario_items, scenario_runs, scenario_settings, scenarios, template_scenarios,
    whatsapp_configs,
};

use super::flow::{
    FlowErrors, FlowFault, FlowFile, FlowItem, FlowScenario, FlowSection, FlowSettings,
    FlowTemplate, ScenarioType,
};
use crate::clock;

/// Exit keywords when a config sets none.
pub const DEFAULT_EXIT_KEYWORDS: [&str; 2] = ["stop", "menu"];
/// The exit keyword that also starts the default scenario.
pub const MENU_KEYWORD: &str = "menu";
/// The label of a list's button when a config sets none.
pub const DEFAULT_LIST_BUTTON: &str = "Menu";

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("invalid flow file: {0}")]
    Invalid(#[from] FlowErrors),
    #[error("no WhatsApp config with id {0}")]
    UnknownConfig(Uuid),
    #[error("no scenario titled {0:?} for this config")]
    UnknownScenario(String),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

impl From<FlowFault> for ScenarioError {
    fn from(f: FlowFault) -> Self {
        ScenarioError::Invalid(FlowErrors(vec![f]))
    }
}

/// A stable id from a kind and its parts (UUIDv8 over SHA-256).
fn derived_id(kind: &str, owner: Option<Uuid>, r: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"wapipe:");
    h.update(kind.as_bytes());
    h.update(b":");
    h.update(owner.unwrap_or_default().as_bytes());
    h.update(b":");
    h.update(r.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The id of the item `r` of a scenario.
pub fn item_id(scenario_id: Uuid, r: &str) -> Uuid {
    derived_id("item", Some(scenario_id), r)
}

/// The id of the template scenario `r` of a config (`None`: generic).
pub fn template_id(config_id: Option<Uuid>, r: &str) -> Uuid {
    derived_id("template", config_id, r)
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// `(title, id, replaced)` in file order; `replaced` when a scenario of
    /// that title existed.
    pub scenarios: Vec<(String, Uuid, bool)>,
    pub templates: usize,
    pub settings: bool,
}

/// One line of `scenarios list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioSummary {
    pub id: Uuid,
    pub title: String,
    pub r#type: String,
    pub active: bool,
    pub keywords: Vec<String>,
    pub repeat_count: i32,
    pub priority: i32,
    pub items: u64,
    pub runs: u64,
}

/// A config's chatbot settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatbotSettings {
    pub fallback: Option<String>,
    pub exit_keywords: Vec<String>,
    pub default_scenario: Option<String>,
    pub list_button: String,
}

impl Default for ChatbotSettings {
    fn default() -> Self {
        Self {
            fallback: None,
            exit_keywords: DEFAULT_EXIT_KEYWORDS.map(str::to_owned).to_vec(),
            default_scenario: None,
            list_button: DEFAULT_LIST_BUTTON.to_owned(),
        }
    }
}

pub(crate) fn strings(v: &Option<Value>) -> Vec<String> {
    v.as_ref()
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn uuids(v: &Option<Value>) -> Vec<Uuid> {
    strings(v)
        .iter()
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect()
}

fn uuid_array(ids: &[Uuid]) -> Value {
    Value::Array(ids.iter().map(|i| json!(i.to_string())).collect())
}

pub async fn settings<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
) -> Result<ChatbotSettings, sea_orm::DbErr> {
    let row = scenario_settings::Entity::find_by_id(config_id)
        .one(db)
        .await?;
    let mut s = ChatbotSettings::default();
    if let Some(r) = row {
        s.fallback = r.fallback.filter(|f| !f.trim().is_empty());
        if r.exit_keywords.is_some() {
            s.exit_keywords = strings(&r.exit_keywords);
        }
        s.default_scenario = r.default_scenario;
        if let Some(b) = r.list_button.filter(|b| !b.trim().is_empty()) {
            s.list_button = b;
        }
    }
    Ok(s)
}

async fn check_config<C: ConnectionTrait>(db: &C, config_id: Uuid) -> Result<(), ScenarioError> {
    match whatsapp_configs::Entity::find_by_id(config_id)
        .one(db)
        .await?
    {
        Some(c) if !c.is_deleted => Ok(()),
        _ => Err(ScenarioError::UnknownConfig(config_id)),
    }
}

/// The scenario titled `title` that `config_id` sees: its own first, then
/// a generic one. Deleted ones included only when `deleted`.
async fn find_by_title<C: ConnectionTrait>(
    db: &C,
    owner: Option<Uuid>,
    title: &str,
) -> Result<Option<scenarios::Model>, sea_orm::DbErr> {
    let q = scenarios::Entity::find().filter(scenarios::Column::Title.eq(title));
    match owner {
        Some(c) => q.filter(scenarios::Column::ConfigId.eq(c)).one(db).await,
        None => {
            q.filter(scenarios::Column::ConfigId.is_null())
                .one(db)
                .await
        }
    }
}

/// Validates `file` and imports it into `config_id` in one transaction:
/// scenarios of the same titles are replaced (in place), template
/// scenarios of the same refs too, and the settings when the file has
/// them. On any fault nothing is written.
pub async fn import(
    db: &DatabaseConnection,
    config_id: Uuid,
    file: &FlowFile,
) -> Result<ImportReport, ScenarioError> {
    file.validate()?;
    check_config(db, config_id).await?;
    if let Some(d) = file
        .settings
        .as_ref()
        .and_then(|s| s.default_scenario.as_ref())
        && !file.scenarios.iter().any(|s| &s.title == d)
        && find_by_title(db, Some(config_id), d).await?.is_none()
        && find_by_title(db, None, d).await?.is_none()
    {
        return Err(FlowFault {
            path: "settings.default_scenario".into(),
            kind: super::flow::FaultKind::DanglingRef,
            message: format!("no scenario titled {d:?} in the file or for this config"),
        }
        .into());
    }

    let now = clock::now();
    let txn = wapipe_shared::db::begin_write(db).await?;

    // Template scenarios: by (config, ref); the id follows from both.
    let mut template_ids: HashMap<&str, Uuid> = HashMap::new();
    for t in &file.template_scenarios {
        let id = template_id(Some(config_id), &t.r#ref);
        template_ids.insert(t.r#ref.as_str(), id);
        template_scenarios::Entity::delete_many()
            .filter(template_scenarios::Column::ConfigId.eq(config_id))
            .filter(template_scenarios::Column::Ref.eq(&t.r#ref))
            .exec(&txn)
            .await?;
        let sections: Vec<Value> = t
            .sections
            .iter()
            .map(|s| json!({"title": s.title, "product_items": s.product_items}))
            .collect();
        template_scenarios::Entity::insert(template_scenarios::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(Some(config_id)),
            r#ref: Set(t.r#ref.clone()),
            thumbnail_id: Set(t.thumbnail_id.clone()),
            catalog_id: Set(t.catalog_id.clone()),
            header: Set(t.header.clone()),
            body: Set(None),
            footer: Set(t.footer.clone()),
            sections: Set(Some(Value::Array(sections))),
        })
        .exec_without_returning(&txn)
        .await?;
    }

    let mut report = ImportReport {
        scenarios: Vec::new(),
        templates: file.template_scenarios.len(),
        settings: file.settings.is_some(),
    };
    for s in &file.scenarios {
        let owner = match s.kind {
            ScenarioType::Client => Some(config_id),
            ScenarioType::Generic => None,
        };
        let existing = find_by_title(&txn, owner, &s.title).await?;
        let replaced = existing.is_some();
        let id = existing.map(|e| e.id).unwrap_or_else(Uuid::now_v7);
        let keywords = Value::Array(s.keywords.iter().map(|k| json!(k)).collect());
        scenarios::Entity::insert(scenarios::ActiveModel {
            id: Set(id),
            created_at: Set(now),
            updated_at: Set(now),
            config_id: Set(owner),
            title: Set(s.title.clone()),
            r#type: Set(s.kind.as_str().to_owned()),
            description: Set(s.description.clone()),
            keywords: Set(Some(keywords)),
            active: Set(s.active),
            repeat_count: Set(s.repeat_count),
            priority: Set(s.priority),
            is_deleted: Set(false),
            deleted_at: Set(None),
        })
        .on_conflict(
            OnConflict::column(scenarios::Column::Id)
                .update_columns([
                    scenarios::Column::UpdatedAt,
                    scenarios::Column::Type,
                    scenarios::Column::Description,
                    scenarios::Column::Keywords,
                    scenarios::Column::Active,
                    scenarios::Column::RepeatCount,
                    scenarios::Column::Priority,
                    scenarios::Column::IsDeleted,
                    scenarios::Column::DeletedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        write_items(&txn, id, owner, s, &template_ids, now).await?;
        report.scenarios.push((s.title.clone(), id, replaced));
    }

    if let Some(st) = &file.settings {
        scenario_settings::Entity::insert(scenario_settings::ActiveModel {
            config_id: Set(config_id),
            created_at: Set(now),
            updated_at: Set(now),
            fallback: Set(st.fallback.clone()),
            exit_keywords: Set(st
                .exit_keywords
                .as_ref()
                .map(|k| Value::Array(k.iter().map(|x| json!(x)).collect()))),
            default_scenario: Set(st.default_scenario.clone()),
            list_button: Set(st.list_button.clone()),
        })
        .on_conflict(
            OnConflict::column(scenario_settings::Column::ConfigId)
                .update_columns([
                    scenario_settings::Column::UpdatedAt,
                    scenario_settings::Column::Fallback,
                    scenario_settings::Column::ExitKeywords,
                    scenario_settings::Column::DefaultScenario,
                    scenario_settings::Column::ListButton,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(report)
}

async fn write_items<C: ConnectionTrait>(
    db: &C,
    scenario_id: Uuid,
    owner: Option<Uuid>,
    s: &FlowScenario,
    template_ids: &HashMap<&str, Uuid>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sea_orm::DbErr> {
    scenario_items::Entity::delete_many()
        .filter(scenario_items::Column::ScenarioId.eq(scenario_id))
        .exec(db)
        .await?;
    let mut parents: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for it in &s.items {
        for c in &it.children {
            parents
                .entry(c.as_str())
                .or_default()
                .push(item_id(scenario_id, &it.r#ref));
        }
    }
    let rows: Vec<scenario_items::ActiveModel> = s
        .items
        .iter()
        .enumerate()
        .map(|(pos, it)| {
            let children: Vec<Uuid> = it
                .children
                .iter()
                .map(|c| item_id(scenario_id, c))
                .collect();
            let templates: Vec<Uuid> = it
                .template_scenarios
                .iter()
                .filter_map(|t| template_ids.get(t.as_str()).copied())
                .collect();
            let parent_ids = parents.get(it.r#ref.as_str()).cloned().unwrap_or_default();
            scenario_items::ActiveModel {
                id: Set(item_id(scenario_id, &it.r#ref)),
                created_at: Set(now),
                updated_at: Set(now),
                config_id: Set(owner),
                scenario_id: Set(scenario_id),
                r#ref: Set(it.r#ref.clone()),
                r#type: Set(it.kind.clone()),
                label: Set(it.label.clone()),
                url: Set(it.url.clone()),
                title: Set(it.title.clone()),
                parents: Set(Some(uuid_array(&parent_ids))),
                children: Set(Some(uuid_array(&children))),
                template_scenario_ids: Set(if templates.is_empty() {
                    None
                } else {
                    Some(uuid_array(&templates))
                }),
                position: Set(pos as i32),
            }
        })
        .collect();
    for chunk in rows.chunks(100) {
        scenario_items::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The scenarios `config_id` sees (its own, then generic ones), in the
/// order the engine tries them: client before generic, then higher
/// priority, then title.
pub async fn visible<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
) -> Result<Vec<scenarios::Model>, sea_orm::DbErr> {
    let mut all = scenarios::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(scenarios::Column::ConfigId.eq(config_id))
                .add(scenarios::Column::ConfigId.is_null()),
        )
        .filter(scenarios::Column::IsDeleted.eq(false))
        .all(db)
        .await?;
    all.sort_by(|a, b| {
        (a.config_id.is_none(), -a.priority, &a.title).cmp(&(
            b.config_id.is_none(),
            -b.priority,
            &b.title,
        ))
    });
    Ok(all)
}

/// `scenarios list`: what the config sees, in matching order.
pub async fn list(
    db: &DatabaseConnection,
    config_id: Uuid,
) -> Result<Vec<ScenarioSummary>, ScenarioError> {
    check_config(db, config_id).await?;
    let mut out = Vec::new();
    for s in visible(db, config_id).await? {
        let items = scenario_items::Entity::find()
            .filter(scenario_items::Column::ScenarioId.eq(s.id))
            .count(db)
            .await?;
        let mut runs =
            scenario_runs::Entity::find().filter(scenario_runs::Column::ScenarioId.eq(s.id));
        if s.config_id.is_none() {
            runs = runs.filter(scenario_runs::Column::ConfigId.eq(config_id));
        }
        let runs = runs.count(db).await?;
        out.push(ScenarioSummary {
            id: s.id,
            keywords: strings(&s.keywords),
            title: s.title,
            r#type: s.r#type,
            active: s.active,
            repeat_count: s.repeat_count,
            priority: s.priority,
            items,
            runs,
        });
    }
    Ok(out)
}

/// `scenarios export`: the flow file that imports back to what the config
/// sees (its scenarios, the generic ones, the template scenarios they use,
/// its settings).
pub async fn export(db: &DatabaseConnection, config_id: Uuid) -> Result<FlowFile, ScenarioError> {
    check_config(db, config_id).await?;
    let scenario_rows = visible(db, config_id).await?;
    let ids: Vec<Uuid> = scenario_rows.iter().map(|s| s.id).collect();
    let items = if ids.is_empty() {
        Vec::new()
    } else {
        scenario_items::Entity::find()
            .filter(scenario_items::Column::ScenarioId.is_in(ids.clone()))
            .order_by_asc(scenario_items::Column::Position)
            .all(db)
            .await?
    };
    let wanted: HashSet<Uuid> = items
        .iter()
        .flat_map(|i| uuids(&i.template_scenario_ids))
        .collect();
    let mut templates = template_scenarios::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(template_scenarios::Column::ConfigId.eq(config_id))
                .add(template_scenarios::Column::Id.is_in(wanted.iter().copied())),
        )
        .all(db)
        .await?;
    templates.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
    let template_ref: HashMap<Uuid, String> =
        templates.iter().map(|t| (t.id, t.r#ref.clone())).collect();
    let item_ref: HashMap<Uuid, String> = items.iter().map(|i| (i.id, i.r#ref.clone())).collect();

    let scenarios = scenario_rows
        .into_iter()
        .map(|s| FlowScenario {
            kind: ScenarioType::parse(&s.r#type).unwrap_or_default(),
            keywords: strings(&s.keywords),
            description: s.description,
            active: s.active,
            repeat_count: s.repeat_count,
            priority: s.priority,
            items: items
                .iter()
                .filter(|i| i.scenario_id == s.id)
                .map(|i| FlowItem {
                    r#ref: i.r#ref.clone(),
                    kind: i.r#type.clone(),
                    label: i.label.clone(),
                    url: i.url.clone(),
                    title: i.title.clone(),
                    children: uuids(&i.children)
                        .iter()
                        .filter_map(|c| item_ref.get(c).cloned())
                        .collect(),
                    template_scenarios: uuids(&i.template_scenario_ids)
                        .iter()
                        .filter_map(|t| template_ref.get(t).cloned())
                        .collect(),
                })
                .collect(),
            title: s.title,
        })
        .collect();
    let template_scenarios = templates
        .into_iter()
        .map(|t| FlowTemplate {
            sections: t
                .sections
                .as_ref()
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .map(|s| FlowSection {
                            title: s["title"].as_str().unwrap_or_default().to_owned(),
                            product_items: strings(&Some(s["product_items"].clone())),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            r#ref: t.r#ref,
            thumbnail_id: t.thumbnail_id,
            catalog_id: t.catalog_id,
            header: t.header,
            footer: t.footer,
        })
        .collect();
    let settings = scenario_settings::Entity::find_by_id(config_id)
        .one(db)
        .await?
        .map(|r| FlowSettings {
            fallback: r.fallback,
            exit_keywords: r.exit_keywords.as_ref().map(|_| strings(&r.exit_keywords)),
            default_scenario: r.default_scenario,
            list_button: r.list_button,
        });
    Ok(FlowFile {
        settings,
        scenarios,
        template_scenarios,
    })
}

/// Soft-deletes the scenario `title` of `config_id` (or the generic one
/// when `generic`). Its runs stay, for history and repeat limits; an
/// import of the same title brings it back.
pub async fn delete(
    db: &DatabaseConnection,
    config_id: Uuid,
    title: &str,
    generic: bool,
) -> Result<Uuid, ScenarioError> {
    check_config(db, config_id).await?;
    let owner = if generic { None } else { Some(config_id) };
    let s = find_by_title(db, owner, title)
        .await?
        .filter(|s| !s.is_deleted)
        .ok_or_else(|| ScenarioError::UnknownScenario(title.to_owned()))?;
    let now = clock::now();
    scenarios::Entity::update(scenarios::ActiveModel {
        id: Set(s.id),
        is_deleted: Set(true),
        deleted_at: Set(Some(now)),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(db)
    .await?;
    Ok(s.id)
}

/// The scenario `title` that `config_id` sees (its own before a generic
/// one), deleted ones excluded.
pub async fn find_visible<C: ConnectionTrait>(
    db: &C,
    config_id: Uuid,
    title: &str,
) -> Result<Option<scenarios::Model>, sea_orm::DbErr> {
    for owner in [Some(config_id), None] {
        if let Some(s) = find_by_title(db, owner, title).await?
            && !s.is_deleted
        {
            return Ok(Some(s));
        }
    }
    Ok(None)
}
