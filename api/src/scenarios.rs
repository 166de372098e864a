//! The chatbot's scenarios (seed 000: scenarios, scenario_items,
//! template_scenarios, under the seed's snake_case names, as in flow
//! files): list, get, create, update, delete, with the same validation as
//! `wapipe scenarios import` (it is the same code: a one-scenario flow
//! file). Reading takes any key; changing takes an admin key, and a
//! generic scenario (every company's) the operator's key.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::EntityTrait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::audit::{self, Entry};
use wapipe_domain::scenarios::flow::FlowFile;
use wapipe_domain::scenarios::store::{self, ScenarioError};
use wapipe_shared::entities::scenarios as rows;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};

/// A scenario as the config sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Scenario {
    pub id: Uuid,
    pub title: String,
    /// `client` (this company's) or `generic` (every company's).
    #[serde(rename = "type")]
    pub kind: String,
    pub active: bool,
    pub keywords: Vec<String>,
    /// Runs one customer may have; 0: unlimited.
    pub repeat_count: i32,
    pub priority: i32,
    /// Items count.
    pub items: u64,
    /// Runs so far.
    pub runs: u64,
}

/// One scenario with its items and the template scenarios it uses, in
/// the flow-file form.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScenarioDetail {
    pub id: Uuid,
    /// `{title, type, description, keywords, active, repeat_count,
    /// priority, items: [{ref, type, label, url, title, children,
    /// template_scenarios}]}`.
    pub scenario: Value,
    /// `[{ref, thumbnail_id, catalog_id, header, body, footer, sections}]`.
    pub template_scenarios: Vec<Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigParam {
    /// Needed when the key has several WhatsApp numbers.
    pub config_id: Option<Uuid>,
}

/// A scenario to write: the flow file's form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioBody {
    #[serde(rename = "configId")]
    pub config_id: Option<Uuid>,
    /// A flow file's scenario.
    pub scenario: Value,
    #[serde(default)]
    pub template_scenarios: Vec<Value>,
}

fn err(e: ScenarioError) -> ApiError {
    match e {
        ScenarioError::Invalid(faults) => {
            let mut err = ApiError::bad_request(format!("invalid scenario: {faults}"));
            for f in faults.0 {
                err.fields.insert(f.path, f.message);
            }
            err
        }
        ScenarioError::UnknownScenario(_) => ApiError::not_found("scenario"),
        ScenarioError::UnknownConfig(_) => ApiError::field("configId", "no such config"),
        ScenarioError::Db(e) => ApiError::internal(e),
    }
}

fn admin_for(who: &Principal, generic: bool) -> ApiResult<()> {
    if !who.is_admin() {
        return Err(ApiError::forbidden("changing scenarios takes an admin key"));
    }
    if generic && who.configs.is_some() {
        return Err(ApiError::forbidden(
            "a generic scenario serves every company: it takes the operator's key",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/whatsapp/scenarios", tag = "scenarios", params(ConfigParam),
    responses((status = 200, body = Vec<Scenario>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ConfigParam>,
) -> ApiResult<axum::Json<Vec<Scenario>>> {
    let config = who.pick_config(&state, p.config_id).await?;
    let all = store::list(&state.db, config.id).await.map_err(err)?;
    Ok(axum::Json(
        all.into_iter()
            .map(|s| Scenario {
                id: s.id,
                title: s.title,
                kind: s.r#type,
                active: s.active,
                keywords: s.keywords,
                repeat_count: s.repeat_count,
                priority: s.priority,
                items: s.items,
                runs: s.runs,
            })
            .collect(),
    ))
}

/// The scenario row and the config it is seen from.
async fn find(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    asked: Option<Uuid>,
) -> ApiResult<(rows::Model, Uuid)> {
    let row = rows::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|s| !s.is_deleted)
        .ok_or_else(|| ApiError::not_found("scenario"))?;
    let config = match row.config_id {
        Some(c) if who.sees_config(c) => c,
        Some(_) => return Err(ApiError::not_found("scenario")),
        None => who.pick_config(state, asked).await?.id,
    };
    Ok((row, config))
}

async fn detail(state: &AppState, row: &rows::Model, config: Uuid) -> ApiResult<ScenarioDetail> {
    let file = store::export(&state.db, config).await.map_err(err)?;
    let scenario = file
        .scenarios
        .iter()
        .find(|s| s.title == row.title)
        .ok_or_else(|| ApiError::not_found("scenario"))?;
    let used: Vec<&String> = scenario
        .items
        .iter()
        .flat_map(|i| i.template_scenarios.iter())
        .collect();
    Ok(ScenarioDetail {
        id: row.id,
        scenario: json!(scenario),
        template_scenarios: file
            .template_scenarios
            .iter()
            .filter(|t| used.contains(&&t.r#ref))
            .map(|t| json!(t))
            .collect(),
    })
}

#[utoipa::path(get, path = "/api/whatsapp/scenarios/{id}", tag = "scenarios",
    params(("id" = Uuid, Path, description = "scenario id"), ConfigParam),
    responses((status = 200, body = ScenarioDetail), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Q(p): Q<ConfigParam>,
) -> ApiResult<axum::Json<ScenarioDetail>> {
    let (row, config) = find(&state, &who, id, p.config_id).await?;
    Ok(axum::Json(detail(&state, &row, config).await?))
}

fn one_scenario_file(b: &ScenarioBody) -> ApiResult<FlowFile> {
    FlowFile::from_value(&json!({
        "scenarios": [b.scenario],
        "template_scenarios": b.template_scenarios,
    }))
    .map_err(|f| err(ScenarioError::from(f)))
}

async fn write(
    state: &AppState,
    who: &Principal,
    config: Uuid,
    file: &FlowFile,
    action: &str,
) -> ApiResult<Uuid> {
    let report = store::import(&state.db, config, file).await.map_err(err)?;
    let (title, id, _) = report
        .scenarios
        .first()
        .cloned()
        .ok_or_else(|| ApiError::internal("an import of one scenario imported none"))?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(config),
            who: who.who(),
            action,
            entity_type: "scenarios",
            entity_id: id.to_string(),
            before: None,
            after: Some(json!({"title": title})),
        },
    )
    .await?;
    Ok(id)
}

#[utoipa::path(post, path = "/api/whatsapp/scenarios", tag = "scenarios", request_body = ScenarioBody,
    responses((status = 201, body = ScenarioDetail), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a scenario of this title exists")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<ScenarioBody>,
) -> ApiResult<impl IntoResponse> {
    let file = one_scenario_file(&b)?;
    let s = file
        .scenarios
        .first()
        .ok_or_else(|| ApiError::field("scenario", "required"))?;
    let generic = s.kind.as_str() == "generic";
    admin_for(&who, generic)?;
    let config = who.pick_config(&state, b.config_id).await?;
    if let Some(existing) = store::find_visible(&state.db, config.id, &s.title).await?
        && existing.config_id.is_some() != generic
    {
        return Err(ApiError::conflict(
            "scenario_exists",
            format!("a scenario titled {:?} exists: update it", s.title),
        ));
    }
    let id = write(&state, &who, config.id, &file, "scenario.create").await?;
    let (row, config) = find(&state, &who, id, Some(config.id)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(detail(&state, &row, config).await?),
    ))
}

#[utoipa::path(put, path = "/api/whatsapp/scenarios/{id}", tag = "scenarios", request_body = ScenarioBody,
    params(("id" = Uuid, Path, description = "scenario id")),
    responses((status = 200, body = ScenarioDetail), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(b): Body<ScenarioBody>,
) -> ApiResult<axum::Json<ScenarioDetail>> {
    let (row, config) = find(&state, &who, id, b.config_id).await?;
    admin_for(&who, row.config_id.is_none())?;
    let file = one_scenario_file(&b)?;
    let s = file
        .scenarios
        .first()
        .ok_or_else(|| ApiError::field("scenario", "required"))?;
    if s.title != row.title || (s.kind.as_str() == "generic") != row.config_id.is_none() {
        return Err(ApiError::field(
            "scenario.title",
            "the title and type stay; create a new scenario to rename one",
        ));
    }
    write(&state, &who, config, &file, "scenario.update").await?;
    let (row, config) = find(&state, &who, id, Some(config)).await?;
    Ok(axum::Json(detail(&state, &row, config).await?))
}

#[utoipa::path(delete, path = "/api/whatsapp/scenarios/{id}", tag = "scenarios",
    params(("id" = Uuid, Path, description = "scenario id"), ConfigParam),
    responses((status = 204, description = "deleted (soft)"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Q(p): Q<ConfigParam>,
) -> ApiResult<StatusCode> {
    let (row, config) = find(&state, &who, id, p.config_id).await?;
    let generic = row.config_id.is_none();
    admin_for(&who, generic)?;
    store::delete(&state.db, config, &row.title, generic)
        .await
        .map_err(err)?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(config),
            who: who.who(),
            action: "scenario.delete",
            entity_type: "scenarios",
            entity_id: id.to_string(),
            before: Some(json!({"title": row.title})),
            after: None,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
