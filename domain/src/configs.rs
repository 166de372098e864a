//! The one cache of decrypted configs (WhatsApp numbers), for every role:
//! - ingest checks signatures and handshakes against the active configs,
//!   held as one snapshot ([`ConfigCache::verify`], [`ConfigCache::verify_token`]).
//!   A miss (unknown signature or token) reloads it at most once a second,
//!   so a number added with `wapipe config add` works at once without
//!   letting bad requests hammer the database; a periodic reload
//!   ([`ConfigCache::run_refresher`]) drops removed or deactivated ones.
//! - senders (outbound, API) read one config by id ([`ConfigCache::get`]),
//!   cached for a TTL: reading the row and decrypting the token on every
//!   send would cost a query and an AES-GCM open per message at thousands
//!   of sends per second. A flag the outbound worker sets is applied to the
//!   cache at once; an operator's changes (new token, cleared flag) show
//!   within the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    TransactionSession, TransactionTrait,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wapipe_shared::crypto::{SecretKey, verify_signature};
use wapipe_shared::entities::whatsapp_configs::{self, Column as W};
use wapipe_shared::error::TenantError;
use wapipe_shared::tenants::{self, ActiveConfig};

/// How often the active snapshot is reloaded in the background.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// The shortest gap between two reloads caused by misses.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);
/// How long a config read by id stays cached by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// Why a config cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot decrypt the access token of config {config}: {reason}")]
    Secret { config: Uuid, reason: String },
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Tenant(#[from] TenantError),
}

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
    db: DatabaseConnection,
    key: Option<Arc<SecretKey>>,
    ttl: Duration,
    /// By id, for senders.
    map: Mutex<HashMap<Uuid, (Instant, Arc<SendConfig>)>>,
    /// Every active config, for ingest; empty until [`refresh`](Self::refresh).
    active: RwLock<Arc<Vec<ActiveConfig>>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// The configs whose app secret verified a body.
pub struct Verified {
    pub configs: Vec<ActiveConfig>,
}

impl ConfigCache {
    /// An empty cache. Without a key, reads fail with
    /// [`ConfigError::Secret`] (a role started without WAPIPE_SECRET_KEY).
    pub fn new(db: DatabaseConnection, key: Option<Arc<SecretKey>>, ttl: Duration) -> Self {
        Self {
            db,
            key,
            ttl,
            map: Mutex::new(HashMap::new()),
            active: RwLock::new(Arc::new(Vec::new())),
            last_refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// A cache with the active snapshot loaded, as ingest needs it.
    pub async fn load(
        db: DatabaseConnection,
        key: Arc<SecretKey>,
    ) -> Result<Arc<Self>, ConfigError> {
        let cache = Arc::new(Self::new(db, Some(key), DEFAULT_TTL));
        cache.refresh(Duration::ZERO).await?;
        Ok(cache)
    }

    fn key_for(&self, config: Uuid) -> Result<&SecretKey, ConfigError> {
        self.key.as_deref().ok_or_else(|| ConfigError::Secret {
            config,
            reason: "this role was started without WAPIPE_SECRET_KEY".into(),
        })
    }

    /// The key that decrypts secrets at rest, for the other secrets a
    /// worker reads (outgoing webhook secrets).
    pub fn secret_key(&self) -> Option<&Arc<SecretKey>> {
        self.key.as_ref()
    }

    /// The active configs as last loaded.
    pub fn snapshot(&self) -> Arc<Vec<ActiveConfig>> {
        match self.active.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reloads the active configs unless that happened less than `gap`
    /// ago. Returns whether a reload happened.
    pub async fn refresh(&self, gap: Duration) -> Result<bool, ConfigError> {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < gap) {
            return Ok(false);
        }
        let key = self.key_for(Uuid::nil())?;
        let configs = tenants::load_active(&self.db, key).await?;
        *last = Some(Instant::now());
        match self.active.write() {
            Ok(mut g) => *g = Arc::new(configs),
            Err(p) => *p.into_inner() = Arc::new(configs),
        }
        Ok(true)
    }

    /// Periodic reload, so removed or deactivated configs stop routing.
    pub async fn run_refresher(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(e) = self.refresh(MIN_REFRESH_GAP).await {
                tracing::warn!(error = %e, "config refresh failed; keeping the cached configs");
            }
        }
    }

    fn verify_in(
        configs: &[ActiveConfig],
        pinned: Option<Uuid>,
        body: &[u8],
        sig: &[u8; 32],
    ) -> Vec<ActiveConfig> {
        // Several numbers of one Meta app share its secret: check each
        // distinct secret once, then keep every config that uses it.
        let mut ok_secrets: Vec<&str> = Vec::new();
        let mut bad_secrets: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for c in configs.iter().filter(|c| pinned.is_none_or(|p| p == c.id)) {
            let secret = c.app_secret.expose_secret();
            let ok = if ok_secrets.contains(&secret) {
                true
            } else if bad_secrets.contains(&secret) {
                false
            } else if verify_signature(secret.as_bytes(), body, sig) {
                ok_secrets.push(secret);
                true
            } else {
                bad_secrets.push(secret);
                false
            };
            if ok {
                out.push(c.clone());
            }
        }
        out
    }

    /// The configs whose app secret signed `body`; empty if none did.
    pub async fn verify(&self, pinned: Option<Uuid>, body: &[u8], sig: &[u8; 32]) -> Verified {
        let found = Self::verify_in(&self.snapshot(), pinned, body, sig);
        if !found.is_empty() {
            return Verified { configs: found };
        }
        match self.refresh(MIN_REFRESH_GAP).await {
            Ok(true) => Verified {
                configs: Self::verify_in(&self.snapshot(), pinned, body, sig),
            },
            _ => Verified { configs: found },
        }
    }

    /// Whether `token` is the verify token of an active config (of the
    /// pinned one, when given).
    pub async fn verify_token(&self, pinned: Option<Uuid>, token: &str) -> bool {
        let check = |cs: &[ActiveConfig]| {
            let cs: Vec<ActiveConfig> = cs
                .iter()
                .filter(|c| pinned.is_none_or(|p| p == c.id))
                .cloned()
                .collect();
            tenants::verify_token_matches(&cs, token)
        };
        if check(&self.snapshot()) {
            return true;
        }
        matches!(self.refresh(MIN_REFRESH_GAP).await, Ok(true)) && check(&self.snapshot())
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
    ) -> Result<Option<Arc<SendConfig>>, ConfigError> {
        if let Some(c) = self.cached(id) {
            return Ok(Some(c));
        }
        let Some(m) = whatsapp_configs::Entity::find_by_id(id).one(db).await? else {
            return Ok(None);
        };
        let key = self.key_for(id)?;
        let access_token = key
            .decrypt(&m.access_token_enc)
            .map_err(|e| ConfigError::Secret {
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
    /// operator clears it) and in the cache, with its `config.flagged`
    /// event in the same transaction. Returns whether this call set it.
    pub async fn flag<C: ConnectionTrait + TransactionTrait>(
        &self,
        db: &C,
        id: Uuid,
        code: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, ConfigError> {
        let txn = wapipe_shared::db::begin_write(db).await?;
        let set = whatsapp_configs::Entity::update_many()
            .col_expr(W::FlaggedCode, Expr::value(code))
            .col_expr(W::FlaggedReason, Expr::value(reason))
            .col_expr(W::FlaggedAt, Expr::value(now))
            .col_expr(W::UpdatedAt, Expr::value(now))
            .filter(W::Id.eq(id))
            .filter(W::FlaggedAt.is_null())
            .exec_with_returning(&txn)
            .await?;
        let events: Vec<_> = set.iter().map(crate::events::flagged_event).collect();
        crate::events::record(&txn, &events).await?;
        txn.commit().await?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = map.get_mut(&id) {
            let mut updated = (**c).clone();
            updated.flag = Some((code.to_owned(), reason.to_owned()));
            *c = Arc::new(updated);
        }
        Ok(set.len() == 1)
    }
}
