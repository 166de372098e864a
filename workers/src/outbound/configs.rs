//! The configs the outbound worker sends for, cached for a few seconds:
//! reading the row and decrypting the token on every send would cost a
//! query and an AES-GCM open per message at thousands of sends per second.
//! A flag the worker sets itself is applied to the cache at once; changes
//! by an operator (new token, cleared flag) show within the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use secrecy::SecretString;
use uuid::Uuid;
use wapipe_shared::crypto::SecretKey;
use wapipe_shared::entities::whatsapp_configs::{self, Column as W};

use super::OutboundError;

/// What a send needs of its config.
#[derive(Clone)]
pub struct SendConfig {
    pub id: Uuid,
    pub phone_number_id: String,
    pub access_token: SecretString,
    pub max_mps: u32,
    /// The config's own Graph API version, overriding the default.
    pub graph_api_version: Option<String>,
    /// Active and not removed.
    pub usable: bool,
    /// `(code, reason)` while the config is flagged.
    pub flag: Option<(String, String)>,
}

impl std::fmt::Debug for SendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendConfig")
            .field("id", &self.id)
            .field("phone_number_id", &self.phone_number_id)
            .field("max_mps", &self.max_mps)
            .field("usable", &self.usable)
            .field("flag", &self.flag)
            .finish_non_exhaustive()
    }
}

pub struct ConfigCache {
    key: Option<Arc<SecretKey>>,
    ttl: Duration,
    map: Mutex<HashMap<Uuid, (Instant, Arc<SendConfig>)>>,
}

impl ConfigCache {
    pub fn new(key: Option<Arc<SecretKey>>, ttl: Duration) -> Self {
        Self {
            key,
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, id: Uuid) -> Option<Arc<SendConfig>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, c)| c.clone())
    }

    /// The config, or `None` when no row has that id.
    pub async fn get<C: ConnectionTrait>(
        &self,
        db: &C,
        id: Uuid,
    ) -> Result<Option<Arc<SendConfig>>, OutboundError> {
        if let Some(c) = self.cached(id) {
            return Ok(Some(c));
        }
        let Some(m) = whatsapp_configs::Entity::find_by_id(id).one(db).await? else {
            return Ok(None);
        };
        let key = self.key.as_ref().ok_or_else(|| OutboundError::Secret {
            config: id,
            reason: "the outbound role was started without WAPIPE_SECRET_KEY".into(),
        })?;
        let access_token = key
            .decrypt(&m.access_token_enc)
            .map_err(|e| OutboundError::Secret {
                config: id,
                reason: e.to_string(),
            })?;
        let flag = m.flagged_at.map(|_| {
            (
                m.flagged_code.clone().unwrap_or_else(|| "flagged".into()),
                m.flagged_reason.clone().unwrap_or_default(),
            )
        });
        let c = Arc::new(SendConfig {
            id,
            phone_number_id: m.phone_number_id,
            access_token,
            max_mps: u32::try_from(m.max_mps).unwrap_or(1).max(1),
            graph_api_version: m.graph_api_version.filter(|v| !v.trim().is_empty()),
            usable: m.is_active && !m.is_deleted,
            flag,
        });
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (Instant::now(), c.clone()));
        Ok(Some(c))
    }

    /// Flags the config in the database (the first flag stays until an
    /// operator clears it) and in the cache. Returns whether this call set it.
    pub async fn flag<C: ConnectionTrait>(
        &self,
        db: &C,
        id: Uuid,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, OutboundError> {
        let res = whatsapp_configs::Entity::update_many()
            .col_expr(W::FlaggedCode, Expr::value(code))
            .col_expr(W::FlaggedReason, Expr::value(reason))
            .col_expr(W::FlaggedAt, Expr::value(now))
            .col_expr(W::UpdatedAt, Expr::value(now))
            .filter(W::Id.eq(id))
            .filter(W::FlaggedAt.is_null())
            .exec(db)
            .await?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = map.get_mut(&id) {
            let mut updated = (**c).clone();
            updated.flag = Some((code.to_owned(), reason.to_owned()));
            *c = Arc::new(updated);
        }
        Ok(res.rows_affected == 1)
    }
}
