//! Read-only resources around the inbox: a customer's profile (seed 002
//! Customer, with seed 000's `scenario_not_allowed`), a chat's assignment
//! history (seed 002 ChatAssignment) and the WhatsApp numbers (seed 002
//! WhatsAppConfig, secrets masked: they are never returned).

use axum::Extension;
use axum::extract::State;
use sea_orm::{ColumnTrait, Condition, EntityTrait, Order, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use wapipe_shared::entities::{
    chat_assignments, chats, customer_blocked_scenarios, customers, scenarios, whatsapp_configs,
};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Id;

/// seed 002 `address`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub street: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub country: Option<String>,
    pub zip_code: Option<String>,
}

/// seed 002 Customer (seed 000 whatsapp_users).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: Uuid,
    pub config_id: Uuid,
    pub phone_number: Option<String>,
    /// Meta's id of the customer; the business-scoped `userId` when Meta sends no number.
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar: Option<String>,
    pub alternate_phone_numbers: Vec<String>,
    pub address: Option<Address>,
    pub tags: Vec<String>,
    pub notes: Option<String>,
    pub language: Option<String>,
    pub whatsapp_name: Option<String>,
    /// The user's WhatsApp `@username`, when they set one.
    pub username: Option<String>,
    /// The customer stopped marketing messages (MARKETING templates are
    /// refused with 131050 until they resume).
    pub marketing_opted_out: bool,
    /// Meta's group id when this is a WhatsApp group (the party of the
    /// group's chat) rather than a person.
    pub wa_group_id: Option<String>,
    pub whatsapp_profile_picture: Option<String>,
    pub is_verified: bool,
    pub total_chats: i32,
    pub total_messages: i32,
    pub first_contact_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_contact_at: Option<chrono::DateTime<chrono::Utc>>,
    pub preferred_agent: Option<Uuid>,
    pub preferred_contact_time: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub is_active: bool,
    pub is_deleted: bool,
    pub is_blocked: bool,
    /// seed 000: titles of the scenarios this customer may not run.
    #[serde(rename = "scenario_not_allowed")]
    pub scenario_not_allowed: Vec<String>,
}

fn strings(v: Option<Value>) -> Vec<String> {
    v.and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

#[utoipa::path(get, path = "/api/whatsapp/customers/{id}", tag = "customers",
    params(("id" = Uuid, Path, description = "customer id")),
    responses((status = 200, body = Customer), (status = 404, body = ErrorBody)))]
pub async fn customer(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
) -> ApiResult<axum::Json<Customer>> {
    let c = customers::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .filter(|c| !c.is_deleted && who.sees_config(c.config_id))
        .ok_or_else(|| ApiError::not_found("customer"))?;
    // Seen through a chat the caller may see.
    let chat = chats::Entity::find()
        .filter(chats::Column::CustomerId.eq(c.id))
        .one(&state.db)
        .await?;
    if !chat.as_ref().is_some_and(|ch| who.sees_chat(ch)) && !who.is_admin() {
        return Err(ApiError::not_found("customer"));
    }
    let denied: Vec<String> = customer_blocked_scenarios::Entity::find()
        .filter(customer_blocked_scenarios::Column::CustomerId.eq(c.id))
        .find_also_related(scenarios::Entity)
        .all(&state.db)
        .await?
        .into_iter()
        .filter_map(|(_, s)| s.map(|s| s.title))
        .collect();
    Ok(axum::Json(Customer {
        alternate_phone_numbers: strings(c.alternate_phone_numbers),
        tags: strings(c.tags),
        address: c.address.and_then(|a| serde_json::from_value(a).ok()),
        id: c.id,
        config_id: c.config_id,
        phone_number: c.phone_number,
        wa_id: c.wa_id,
        user_id: c.user_id,
        name: c.name,
        email: c.email,
        avatar: c.avatar,
        notes: c.notes,
        language: c.language,
        whatsapp_name: c.whatsapp_name,
        username: c.username,
        marketing_opted_out: c.marketing_opted_out,
        wa_group_id: c.wa_group_id,
        whatsapp_profile_picture: c.whatsapp_profile_picture,
        is_verified: c.is_verified,
        total_chats: c.total_chats,
        total_messages: c.total_messages,
        first_contact_at: c.first_contact_at,
        last_contact_at: c.last_contact_at,
        preferred_agent: c.preferred_agent,
        preferred_contact_time: c.preferred_contact_time,
        created_at: c.created_at,
        updated_at: c.updated_at,
        is_active: c.is_active,
        is_deleted: c.is_deleted,
        is_blocked: c.is_blocked,
        scenario_not_allowed: denied,
    }))
}

/// seed 002 ChatAssignment.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatAssignment {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub assigned_to: Uuid,
    pub assigned_by: Option<Uuid>,
    /// `manual | auto | transfer`.
    pub assignment_type: String,
    pub transferred_from: Option<Uuid>,
    pub transfer_reason: Option<String>,
    /// `active | completed | cancelled`.
    pub status: String,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub assigned_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A chat's assignments, oldest first (a short list: not paged).
#[utoipa::path(get, path = "/api/whatsapp/chats/{chatId}/assignments", tag = "chats",
    params(("chatId" = Uuid, Path, description = "chat id")),
    responses((status = 200, body = Vec<ChatAssignment>), (status = 404, body = ErrorBody)))]
pub async fn assignments(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(chat_id): Id,
) -> ApiResult<axum::Json<Vec<ChatAssignment>>> {
    let chat = crate::chats::visible(&state, &who, chat_id).await?;
    let rows = chat_assignments::Entity::find()
        .filter(chat_assignments::Column::ChatId.eq(chat.id))
        .order_by(chat_assignments::Column::AssignedAt, Order::Asc)
        .order_by(chat_assignments::Column::Id, Order::Asc)
        .all(&state.db)
        .await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|a| ChatAssignment {
                id: a.id,
                chat_id: a.chat_id,
                assigned_to: a.assigned_to,
                assigned_by: a.assigned_by,
                assignment_type: a.assignment_type,
                transferred_from: a.transferred_from,
                transfer_reason: a.transfer_reason,
                status: a.status,
                completed_at: a.completed_at,
                assigned_at: a.assigned_at,
                created_at: a.created_at,
                updated_at: a.updated_at,
            })
            .collect(),
    ))
}

const MASK: &str = "********";

/// seed 002 WhatsAppConfig. Secret fields say only whether they are set.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppConfig {
    pub id: Uuid,
    /// seed 000 `company`: the tenant.
    pub company: String,
    pub name: Option<String>,
    pub provider: String,
    pub is_active: bool,
    /// Masked (`********`) when set; never returned.
    pub access_token: Option<String>,
    pub phone_number_id: String,
    pub display_phone_number: Option<String>,
    pub business_account_id: String,
    pub api_version: Option<String>,
    /// Masked when set.
    pub webhook_verify_token: Option<String>,
    /// Masked when set.
    pub webhook_secret: Option<String>,
    pub account_sid: Option<String>,
    /// Masked when set.
    pub auth_token: Option<String>,
    pub instance_id: Option<String>,
    /// Masked when set.
    pub api_key: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_status: Option<String>,
    pub business_profile: Option<Value>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub last_sync_at: Option<chrono::DateTime<chrono::Utc>>,
    pub is_deleted: bool,
    /// The number's health as Meta's webhooks last reported it
    /// (`GREEN`/`RED` quality, `TIER_…` limit, display name review, the
    /// account's status and restrictions, the last alert).
    pub quality_rating: Option<String>,
    pub messaging_limit_tier: Option<String>,
    pub name_status: Option<String>,
    pub verified_name: Option<String>,
    pub account_status: Option<String>,
    pub restrictions: Option<Value>,
    pub last_alert: Option<Value>,
    pub business_capabilities: Option<Value>,
}

/// The WhatsApp numbers of the key's companies (admin keys).
#[utoipa::path(get, path = "/api/whatsapp/configs", tag = "configs",
    responses((status = 200, body = Vec<WhatsAppConfig>), (status = 403, body = ErrorBody)))]
pub async fn configs(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<axum::Json<Vec<WhatsAppConfig>>> {
    if !who.is_admin() {
        return Err(ApiError::forbidden(
            "the numbers' settings take an admin key",
        ));
    }
    let rows = whatsapp_configs::Entity::find()
        .filter(
            Condition::all()
                .add(whatsapp_configs::Column::IsDeleted.eq(false))
                .add(who.config_scope(whatsapp_configs::Column::Id)),
        )
        .order_by(whatsapp_configs::Column::CreatedAt, Order::Asc)
        .all(&state.db)
        .await?;
    let mask = |set: bool| set.then(|| MASK.to_owned());
    Ok(axum::Json(
        rows.into_iter()
            .map(|c| WhatsAppConfig {
                access_token: mask(!c.access_token_enc.is_empty()),
                webhook_verify_token: mask(!c.verify_token_enc.is_empty()),
                webhook_secret: mask(c.webhook_secret_enc.is_some()),
                auth_token: mask(c.auth_token_enc.is_some()),
                api_key: mask(c.api_key_enc.is_some()),
                id: c.id,
                company: c.company,
                name: c.name,
                provider: c.provider,
                is_active: c.is_active,
                phone_number_id: c.phone_number_id,
                display_phone_number: c.display_phone_number,
                business_account_id: c.waba_id,
                api_version: c.graph_api_version,
                account_sid: c.account_sid,
                instance_id: c.instance_id,
                webhook_url: c.webhook_url,
                webhook_status: c.webhook_status,
                business_profile: c.business_profile,
                created_at: c.created_at,
                updated_at: c.updated_at,
                last_sync_at: c.last_sync_at,
                is_deleted: c.is_deleted,
                quality_rating: c.quality_rating,
                messaging_limit_tier: c.messaging_limit_tier,
                name_status: c.name_status,
                verified_name: c.verified_name,
                account_status: c.account_status,
                restrictions: c.restrictions,
                last_alert: c.last_alert,
                business_capabilities: c.business_capabilities,
            })
            .collect(),
    ))
}
