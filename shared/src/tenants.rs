//! Tenants: the WhatsApp numbers a company runs through wapipe (seed 002
//! WhatsAppConfig, seed 000 credentials). Owns validation, encryption of the
//! secrets on the way in, and decryption for the roles that need them.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    SqlErr,
};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::crypto::SecretKey;
use crate::entities::whatsapp_configs::{self, ActiveModel, Column, Entity, Model};
use crate::error::TenantError;

/// Input of `wapipe config add`.
#[derive(Debug, Clone)]
pub struct NewConfig {
    pub company: String,
    pub name: Option<String>,
    pub phone_number_id: String,
    pub waba_id: String,
    pub display_phone_number: Option<String>,
    pub app_secret: String,
    pub verify_token: String,
    pub access_token: String,
    pub webhook_secret: Option<String>,
    pub max_mps: i32,
}

/// Input of `wapipe config update`: only the fields given change.
#[derive(Debug, Clone, Default)]
pub struct ConfigPatch {
    pub company: Option<String>,
    pub name: Option<String>,
    pub waba_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub app_secret: Option<String>,
    pub verify_token: Option<String>,
    pub access_token: Option<String>,
    pub max_mps: Option<i32>,
    pub is_active: Option<bool>,
    /// Clears a flag set by the outbound worker (dead token, locked account).
    pub clear_flag: bool,
}

/// A config with its secrets decrypted, for the roles that use them
/// (ingest checks signatures and tokens, outbound sends).
#[derive(Clone)]
pub struct ActiveConfig {
    pub id: Uuid,
    pub company: String,
    pub phone_number_id: String,
    pub waba_id: String,
    pub app_secret: SecretString,
    pub verify_token: SecretString,
    pub access_token: SecretString,
    pub max_mps: i32,
}

impl std::fmt::Debug for ActiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveConfig")
            .field("id", &self.id)
            .field("phone_number_id", &self.phone_number_id)
            .field("waba_id", &self.waba_id)
            .finish_non_exhaustive()
    }
}

/// Meta's ids (phone number id, WABA id) are decimal strings.
fn meta_id(field: &'static str, v: &str) -> Result<String, TenantError> {
    let v = v.trim();
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TenantError::Invalid {
            field,
            reason: format!("{v:?} is not a Meta id (digits only, 1 to 32 of them)"),
        });
    }
    Ok(v.to_owned())
}

fn non_empty(field: &'static str, v: &str) -> Result<String, TenantError> {
    if v.trim().is_empty() {
        return Err(TenantError::Invalid {
            field,
            reason: "must not be empty".into(),
        });
    }
    Ok(v.to_owned())
}

fn mps(v: i32) -> Result<i32, TenantError> {
    if !(1..=10_000).contains(&v) {
        return Err(TenantError::Invalid {
            field: "max-mps",
            reason: format!("{v} is outside 1..=10000 messages per second"),
        });
    }
    Ok(v)
}

pub async fn add(
    db: &DatabaseConnection,
    key: &SecretKey,
    new: NewConfig,
) -> Result<Model, TenantError> {
    let now = Utc::now();
    let phone_number_id = meta_id("phone-number-id", &new.phone_number_id)?;
    let am = ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        updated_at: Set(now),
        company: Set(non_empty("company", &new.company)?),
        name: Set(new.name),
        phone_number_id: Set(phone_number_id.clone()),
        waba_id: Set(meta_id("waba-id", &new.waba_id)?),
        display_phone_number: Set(new.display_phone_number),
        access_token_enc: Set(key.encrypt(&non_empty("access-token", &new.access_token)?)?),
        app_secret_enc: Set(key.encrypt(&non_empty("app-secret", &new.app_secret)?)?),
        verify_token_enc: Set(key.encrypt(&non_empty("verify-token", &new.verify_token)?)?),
        webhook_secret_enc: Set(new.webhook_secret.map(|s| key.encrypt(&s)).transpose()?),
        max_mps: Set(mps(new.max_mps)?),
        graph_api_version: Set(None),
        is_active: Set(true),
        flagged_reason: Set(None),
        flagged_code: Set(None),
        flagged_at: Set(None),
        is_deleted: Set(false),
        deleted_at: Set(None),
        provider: Set("meta-whatsapp".to_owned()),
        // The other providers' fields (seed 002) stay empty for a Meta number.
        ..Default::default()
    };
    match am.insert(db).await {
        Ok(m) => Ok(m),
        // Uniqueness lives in the database; on a conflict, say which row holds it.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            let existing = Entity::find()
                .filter(Column::PhoneNumberId.eq(&phone_number_id))
                .one(db)
                .await?;
            let (existing, removed) = match existing {
                Some(m) => (m.id, if m.is_deleted { ", removed" } else { "" }),
                None => (Uuid::nil(), ""),
            };
            Err(TenantError::Duplicate {
                phone_number_id,
                existing,
                removed,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Every config that is not removed, oldest first. Models carry only
/// ciphertext, and their `Serialize` skips it.
pub async fn list(
    db: &DatabaseConnection,
    include_removed: bool,
) -> Result<Vec<Model>, TenantError> {
    let mut q = Entity::find().order_by_asc(Column::CreatedAt);
    if !include_removed {
        q = q.filter(Column::IsDeleted.eq(false));
    }
    Ok(q.all(db).await?)
}

async fn find_live(db: &DatabaseConnection, id: Uuid) -> Result<Model, TenantError> {
    Entity::find_by_id(id)
        .filter(Column::IsDeleted.eq(false))
        .one(db)
        .await?
        .ok_or(TenantError::NotFound(id))
}

pub async fn update(
    db: &DatabaseConnection,
    key: &SecretKey,
    id: Uuid,
    patch: ConfigPatch,
) -> Result<Model, TenantError> {
    let current = find_live(db, id).await?;
    let mut am: ActiveModel = current.into();
    if let Some(v) = patch.company {
        am.company = Set(non_empty("company", &v)?);
    }
    if let Some(v) = patch.name {
        am.name = Set(Some(v));
    }
    if let Some(v) = patch.waba_id {
        am.waba_id = Set(meta_id("waba-id", &v)?);
    }
    if let Some(v) = patch.display_phone_number {
        am.display_phone_number = Set(Some(v));
    }
    if let Some(v) = patch.app_secret {
        am.app_secret_enc = Set(key.encrypt(&non_empty("app-secret", &v)?)?);
    }
    if let Some(v) = patch.verify_token {
        am.verify_token_enc = Set(key.encrypt(&non_empty("verify-token", &v)?)?);
    }
    if let Some(v) = patch.access_token {
        am.access_token_enc = Set(key.encrypt(&non_empty("access-token", &v)?)?);
    }
    if let Some(v) = patch.max_mps {
        am.max_mps = Set(mps(v)?);
    }
    if let Some(v) = patch.is_active {
        am.is_active = Set(v);
    }
    if patch.clear_flag {
        am.flagged_reason = Set(None);
        am.flagged_code = Set(None);
        am.flagged_at = Set(None);
    }
    am.updated_at = Set(Utc::now());
    Ok(am.update(db).await?)
}

/// Soft delete: the row stays for history and foreign keys, but the config
/// no longer routes webhooks or sends.
pub async fn remove(db: &DatabaseConnection, id: Uuid) -> Result<(), TenantError> {
    let now = Utc::now();
    let res = Entity::update_many()
        .col_expr(Column::IsDeleted, Expr::value(true))
        .col_expr(Column::IsActive, Expr::value(false))
        .col_expr(Column::DeletedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::IsDeleted.eq(false))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(TenantError::NotFound(id));
    }
    Ok(())
}

fn decrypt_config(
    key: &SecretKey,
    m: whatsapp_configs::Model,
) -> Result<ActiveConfig, TenantError> {
    Ok(ActiveConfig {
        id: m.id,
        app_secret: key.decrypt(&m.app_secret_enc)?,
        verify_token: key.decrypt(&m.verify_token_enc)?,
        access_token: key.decrypt(&m.access_token_enc)?,
        company: m.company,
        phone_number_id: m.phone_number_id,
        waba_id: m.waba_id,
        max_mps: m.max_mps,
    })
}

/// Active, non-removed configs with decrypted secrets.
pub async fn load_active(
    db: &DatabaseConnection,
    key: &SecretKey,
) -> Result<Vec<ActiveConfig>, TenantError> {
    Entity::find()
        .filter(Column::IsDeleted.eq(false))
        .filter(Column::IsActive.eq(true))
        .order_by_asc(Column::CreatedAt)
        .all(db)
        .await?
        .into_iter()
        .map(|m| decrypt_config(key, m))
        .collect()
}

/// True if `token` is the verify token of any of `configs`, in constant time
/// per comparison.
pub fn verify_token_matches(configs: &[ActiveConfig], token: &str) -> bool {
    configs.iter().any(|c| {
        crate::crypto::constant_time_eq(c.verify_token.expose_secret().as_bytes(), token.as_bytes())
    })
}
