//! `/api/whatsapp/templates`: list, create, update, delete. Quick replies
//! are created here (`status = local`); WhatsApp templates arrive from
//! Meta (their status, quality and category kept fresh by the template
//! webhooks) and only their `isActive` is changed here. Changes take
//! `canManageTemplates`. A send that uses one counts it (`usageCount`,
//! `lastUsedAt`).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, SqlErr};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wapipe_domain::audit::{self, Entry};
use wapipe_shared::entities::templates;

use crate::AppState;
use crate::auth::{Perm, Principal};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Body, Id, Q};
use crate::page::{Keyset, Page};

/// seed 002 Template.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub id: Uuid,
    pub config_id: Uuid,
    pub name: String,
    /// A quick reply's text, or the WhatsApp template's body.
    pub content: Option<String>,
    pub category: String,
    pub variables: Vec<String>,
    pub whatsapp_template_id: Option<String>,
    pub whatsapp_template_name: Option<String>,
    pub language: String,
    /// `pending | approved | rejected | paused | local | …` (Meta's, lower case).
    pub status: String,
    /// Meta's components, as synced.
    pub components: Option<Value>,
    pub quality_score: Option<String>,
    pub usage_count: i32,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub created_by: Option<Uuid>,
    pub is_active: bool,
    pub is_deleted: bool,
}

fn body_text(components: &Option<Value>) -> Option<String> {
    components.as_ref()?.as_array()?.iter().find_map(|c| {
        c.get("type")
            .and_then(Value::as_str)
            .filter(|k| k.eq_ignore_ascii_case("body"))
            .and_then(|_| c.get("text").and_then(Value::as_str))
            .map(str::to_owned)
    })
}

impl From<templates::Model> for Template {
    fn from(t: templates::Model) -> Self {
        let local = t.status == "local";
        Self {
            content: t.content.clone().or_else(|| body_text(&t.components)),
            variables: t
                .variables
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
            whatsapp_template_name: t
                .whatsapp_template_name
                .or_else(|| (!local).then(|| t.name.clone())),
            status: t.status.to_ascii_lowercase(),
            id: t.id,
            config_id: t.config_id,
            name: t.name,
            category: t.category,
            whatsapp_template_id: t.whatsapp_template_id,
            language: t.language,
            components: t.components,
            quality_score: t.quality_score,
            usage_count: t.usage_count,
            last_used_at: t.last_used_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
            created_by: t.created_by,
            is_active: t.is_active,
            is_deleted: t.is_deleted,
        }
    }
}

async fn visible(state: &AppState, who: &Principal, id: Uuid) -> ApiResult<templates::Model> {
    templates::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|t| !t.is_deleted && who.sees_config(t.config_id))
        .ok_or_else(|| ApiError::not_found("template"))
}

fn unique_or(e: sea_orm::DbErr) -> ApiError {
    if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        ApiError::conflict(
            "template_exists",
            "a template with this name and language exists",
        )
    } else {
        ApiError::internal(e)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTemplates {
    /// `local`, `approved`, `pending`, …
    pub status: Option<String>,
    pub category: Option<String>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/whatsapp/templates", tag = "templates", params(ListTemplates),
    responses((status = 200, body = Page<Template>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Q(p): Q<ListTemplates>,
) -> ApiResult<axum::Json<Page<Template>>> {
    let mut cond = Condition::all()
        .add(templates::Column::IsDeleted.eq(false))
        .add(who.config_scope(templates::Column::ConfigId));
    if let Some(s) = &p.status {
        // Synced rows keep Meta's upper case; quick replies are `local`.
        cond = cond.add(
            Condition::any()
                .add(templates::Column::Status.eq(s.to_ascii_uppercase()))
                .add(templates::Column::Status.eq(s.to_ascii_lowercase())),
        );
    }
    if let Some(c) = &p.category {
        cond = cond.add(templates::Column::Category.eq(c.as_str()));
    }
    let by = Keyset::asc(templates::Column::CreatedAt, templates::Column::Id);
    let q = templates::Entity::find().filter(cond);
    let page = by.page(&state.db, q, p.cursor.as_deref(), p.limit, Template::from);
    Ok(axum::Json(page.await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTemplate {
    pub name: String,
    pub content: String,
    /// Free text (`greeting`, `support`, …).
    pub category: Option<String>,
    #[serde(default)]
    pub variables: Vec<String>,
    /// Default `en`.
    pub language: Option<String>,
    pub config_id: Option<Uuid>,
}

fn check(name: &str, content: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.chars().count() > 512 {
        return Err(ApiError::field("name", "1 to 512 characters"));
    }
    if content.trim().is_empty() || content.chars().count() > 4096 {
        return Err(ApiError::field(
            "content",
            "1 to 4096 characters (Meta's text limit)",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/whatsapp/templates", tag = "templates", request_body = NewTemplate,
    responses((status = 201, body = Template), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(new): Body<NewTemplate>,
) -> ApiResult<impl IntoResponse> {
    who.require(Perm::ManageTemplates)?;
    check(&new.name, &new.content)?;
    let config = who.pick_config(&state, new.config_id).await?;
    let now = wapipe_domain::clock::now();
    let id = Uuid::now_v7();
    templates::Entity::insert(templates::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        config_id: Set(config.id),
        name: Set(new.name.trim().to_owned()),
        language: Set(new.language.unwrap_or_else(|| "en".to_owned())),
        category: Set(new.category.unwrap_or_else(|| "general".to_owned())),
        status: Set("local".to_owned()),
        content: Set(Some(new.content)),
        variables: Set(Some(json!(new.variables))),
        usage_count: Set(0),
        created_by: Set(who.agent_id()),
        is_active: Set(true),
        is_deleted: Set(false),
        ..Default::default()
    })
    .exec_without_returning(&state.db)
    .await
    .map_err(unique_or)?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(config.id),
            who: who.who(),
            action: "template.create",
            entity_type: "templates",
            entity_id: id.to_string(),
            before: None,
            after: Some(json!({"name": new.name})),
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Template::from(visible(&state, &who, id).await?)),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTemplate {
    pub name: Option<String>,
    pub content: Option<String>,
    pub category: Option<String>,
    pub variables: Option<Vec<String>>,
    pub is_active: Option<bool>,
}

#[utoipa::path(put, path = "/api/whatsapp/templates/{id}", tag = "templates", request_body = UpdateTemplate,
    params(("id" = Uuid, Path, description = "template id")),
    responses((status = 200, body = Template), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "a WhatsApp template's text is Meta's")))]
pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    Body(up): Body<UpdateTemplate>,
) -> ApiResult<axum::Json<Template>> {
    let before = visible(&state, &who, id).await?;
    who.require(Perm::ManageTemplates)?;
    let text_change = up.name.is_some()
        || up.content.is_some()
        || up.category.is_some()
        || up.variables.is_some();
    if text_change && before.status != "local" {
        return Err(ApiError::conflict(
            "synced_template",
            "a WhatsApp template is edited at Meta; only isActive changes here",
        ));
    }
    check(
        up.name.as_deref().unwrap_or(&before.name),
        up.content
            .as_deref()
            .or(before.content.as_deref())
            .unwrap_or("-"),
    )?;
    let mut q = templates::Entity::update_many()
        .col_expr(
            templates::Column::UpdatedAt,
            Expr::value(wapipe_domain::clock::now()),
        )
        .filter(templates::Column::Id.eq(id));
    if let Some(v) = &up.name {
        q = q.col_expr(templates::Column::Name, Expr::value(v.trim()));
    }
    if let Some(v) = &up.content {
        q = q.col_expr(templates::Column::Content, Expr::value(v.as_str()));
    }
    if let Some(v) = &up.category {
        q = q.col_expr(templates::Column::Category, Expr::value(v.as_str()));
    }
    if let Some(v) = &up.variables {
        q = q.col_expr(templates::Column::Variables, Expr::value(json!(v)));
    }
    if let Some(v) = up.is_active {
        q = q.col_expr(templates::Column::IsActive, Expr::value(v));
    }
    q.exec(&state.db).await.map_err(unique_or)?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(before.config_id),
            who: who.who(),
            action: "template.update",
            entity_type: "templates",
            entity_id: id.to_string(),
            before: Some(json!({"name": before.name, "content": before.content, "isActive": before.is_active})),
            after: Some(json!({"name": up.name, "content": up.content, "isActive": up.is_active})),
        },
    )
    .await?;
    Ok(axum::Json(Template::from(visible(&state, &who, id).await?)))
}

#[utoipa::path(delete, path = "/api/whatsapp/templates/{id}", tag = "templates",
    params(("id" = Uuid, Path, description = "template id")),
    responses((status = 204, description = "deleted (soft)"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    let before = visible(&state, &who, id).await?;
    who.require(Perm::ManageTemplates)?;
    let now = wapipe_domain::clock::now();
    templates::Entity::update_many()
        .col_expr(templates::Column::IsDeleted, Expr::value(true))
        .col_expr(templates::Column::DeletedAt, Expr::value(now))
        .col_expr(templates::Column::UpdatedAt, Expr::value(now))
        .filter(templates::Column::Id.eq(id))
        .exec(&state.db)
        .await?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(before.config_id),
            who: who.who(),
            action: "template.delete",
            entity_type: "templates",
            entity_id: id.to_string(),
            before: Some(json!({"name": before.name})),
            after: None,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncBody {
    /// Needed when the key has several WhatsApp numbers.
    pub config_id: Option<Uuid>,
}

/// What a sync did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    pub config_id: Uuid,
    pub pages: u64,
    pub templates: u64,
}

#[utoipa::path(post, path = "/api/whatsapp/templates/sync", tag = "templates", request_body = SyncBody,
    responses((status = 200, body = SyncResult), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "no access to Meta configured"),
        (status = 502, body = ErrorBody, description = "Meta refused or could not be reached")))]
pub async fn sync(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(b): Body<SyncBody>,
) -> ApiResult<axum::Json<SyncResult>> {
    who.require(Perm::ManageTemplates)?;
    let config = who.pick_config(&state, b.config_id).await?;
    let meta = state.meta.as_ref().ok_or_else(|| {
        ApiError::conflict(
            "sync_unavailable",
            "this process has no access to Meta configured",
        )
    })?;
    use wapipe_domain::templates::TemplateSyncError as E;
    let report = wapipe_domain::templates::sync(&state.db, &meta.configs, &meta.graph, config.id)
        .await
        .map_err(|e| match e {
            E::Graph { .. } | E::Http(_) | E::Shape(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "meta_error", e.to_string())
            }
            E::UnknownConfig(_) => ApiError::not_found("config"),
            other => ApiError::internal(other),
        })?;
    audit::record(
        &state.db,
        Entry {
            config_id: Some(config.id),
            who: who.who(),
            action: "template.sync",
            entity_type: "whatsapp_configs",
            entity_id: config.id.to_string(),
            before: None,
            after: Some(json!({"templates": report.templates})),
        },
    )
    .await?;
    Ok(axum::Json(SyncResult {
        config_id: config.id,
        pages: report.pages,
        templates: report.templates,
    }))
}
