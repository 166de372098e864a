//! API keys of the agents' REST API: creating (the key is shown once; only
//! its sha256 is stored, unique), listing, revoking, and finding the key a
//! request presents. Used by `wapipe apikey` and by the API's auth layer.
//!
//! An admin key acts for every company, or for the companies it names; an
//! agent key acts as its agent, within the agent's company.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wapipe_shared::entities::{agents, api_keys, whatsapp_configs};

use crate::clock;

/// Every key starts with this, so a leaked one is easy to recognise.
pub const KEY_PREFIX: &str = "wpk_";

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("no agent with id {0}")]
    UnknownAgent(Uuid),
    #[error("no company named {name:?}; known: {known}")]
    UnknownCompany { name: String, known: String },
    #[error("no API key with id {0}")]
    UnknownKey(Uuid),
    #[error("API key {0} is already revoked")]
    AlreadyRevoked(Uuid),
    #[error("a key name must not be empty")]
    EmptyName,
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Admin or agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Admin,
    Agent,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin",
            KeyKind::Agent => "agent",
        }
    }
}

/// A key to create.
#[derive(Debug, Clone)]
pub enum NewKey {
    /// Every company when `companies` is empty.
    Admin {
        name: Option<String>,
        companies: Vec<String>,
    },
    Agent {
        agent_id: Uuid,
        name: Option<String>,
    },
}

/// A created key: the row, and the secret, which exists only here.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub row: api_keys::Model,
    pub secret: String,
}

/// The sha256 hex of a presented key: what is stored and looked up.
pub fn hash_key(secret: &str) -> String {
    hex_lower(&Sha256::digest(secret.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// 32 random bytes (a CSPRNG seeded by the OS), hex: 256 bits.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", hex_lower(&bytes))
}

pub async fn create(db: &impl ConnectionTrait, new: NewKey) -> Result<CreatedKey, ApiKeyError> {
    let (kind, agent_id, name, companies) = match new {
        NewKey::Admin { name, companies } => {
            if !companies.is_empty() {
                let known: Vec<String> = whatsapp_configs::Entity::find()
                    .filter(whatsapp_configs::Column::IsDeleted.eq(false))
                    .all(db)
                    .await?
                    .into_iter()
                    .map(|c| c.company)
                    .collect();
                if let Some(bad) = companies.iter().find(|c| !known.contains(c)) {
                    let mut known = known;
                    known.sort();
                    known.dedup();
                    return Err(ApiKeyError::UnknownCompany {
                        name: bad.clone(),
                        known: known.join(", "),
                    });
                }
            }
            let name = name.unwrap_or_else(|| "admin".to_owned());
            let companies = (!companies.is_empty()).then(|| json!(companies));
            (KeyKind::Admin, None, name, companies)
        }
        NewKey::Agent { agent_id, name } => {
            let agent = agents::Entity::find_by_id(agent_id)
                .one(db)
                .await?
                .filter(|a| !a.is_deleted)
                .ok_or(ApiKeyError::UnknownAgent(agent_id))?;
            let name = name.unwrap_or_else(|| agent.name.clone());
            (KeyKind::Agent, Some(agent_id), name, None)
        }
    };
    if name.trim().is_empty() {
        return Err(ApiKeyError::EmptyName);
    }
    let secret = random_secret();
    let now = clock::now();
    let id = Uuid::now_v7();
    api_keys::Entity::insert(api_keys::ActiveModel {
        id: Set(id),
        created_at: Set(now),
        updated_at: Set(now),
        agent_id: Set(agent_id),
        name: Set(name),
        kind: Set(kind.as_str().to_owned()),
        key_prefix: Set(secret.chars().take(12).collect()),
        key_hash: Set(hash_key(&secret)),
        last_used_at: Set(None),
        expires_at: Set(None),
        revoked_at: Set(None),
        companies: Set(companies),
    })
    .exec_without_returning(db)
    .await?;
    let row = api_keys::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(ApiKeyError::UnknownKey(id))?;
    Ok(CreatedKey { row, secret })
}

pub async fn list(db: &impl ConnectionTrait) -> Result<Vec<api_keys::Model>, ApiKeyError> {
    Ok(api_keys::Entity::find()
        .order_by_asc(api_keys::Column::CreatedAt)
        .order_by_asc(api_keys::Column::Id)
        .all(db)
        .await?)
}

pub async fn revoke(db: &impl ConnectionTrait, id: Uuid) -> Result<api_keys::Model, ApiKeyError> {
    let now = clock::now();
    let done = api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(now))
        .col_expr(api_keys::Column::UpdatedAt, Expr::value(now))
        .filter(api_keys::Column::Id.eq(id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    let row = api_keys::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(ApiKeyError::UnknownKey(id))?;
    if done.rows_affected == 0 {
        return Err(ApiKeyError::AlreadyRevoked(id));
    }
    Ok(row)
}

/// The live key whose hash is `hash`: not revoked, not expired.
pub async fn find_live(
    db: &impl ConnectionTrait,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<api_keys::Model>, ApiKeyError> {
    let key = api_keys::Entity::find()
        .filter(api_keys::Column::KeyHash.eq(hash))
        .one(db)
        .await?;
    Ok(key.filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now)))
}

/// Stamps `last_used_at`, at most once a minute per key so that reads
/// do not each write.
pub async fn touch(
    db: &impl ConnectionTrait,
    key: &api_keys::Model,
    now: DateTime<Utc>,
) -> Result<(), ApiKeyError> {
    if key
        .last_used_at
        .is_some_and(|t| now - t < chrono::Duration::seconds(60))
    {
        return Ok(());
    }
    api_keys::Entity::update_many()
        .col_expr(api_keys::Column::LastUsedAt, Expr::value(now))
        .filter(api_keys::Column::Id.eq(key.id))
        .exec(db)
        .await?;
    Ok(())
}

/// The companies a key's `companies` column names (`None`: every company).
pub fn key_companies(key: &api_keys::Model) -> Option<Vec<String>> {
    key.companies.as_ref().and_then(|v| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_hash_to_hex() {
        let a = random_secret();
        let b = random_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        let h = hash_key(&a);
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash_key(&a));
        assert_ne!(h, hash_key(&b));
        // A known vector: sha256("abc").
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
