//! The configs ingest checks signatures and handshakes against, decrypted
//! once and cached. A miss (unknown signature or token) refreshes the cache
//! at most once a second, so a number added with `wapipe config add` works
//! at once without letting bad requests hammer the database.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;
use tokio::sync::Mutex;
use uuid::Uuid;
use wapipe_shared::crypto::{SecretKey, verify_signature};
use wapipe_shared::error::TenantError;
use wapipe_shared::tenants::{self, ActiveConfig};

const REFRESH_EVERY: Duration = Duration::from_secs(10);
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);

pub struct ConfigCache {
    db: DatabaseConnection,
    key: Arc<SecretKey>,
    current: RwLock<Arc<Vec<ActiveConfig>>>,
    last_refresh: Mutex<Instant>,
}

/// The configs whose app secret verified a body.
pub struct Verified {
    pub configs: Vec<ActiveConfig>,
}

impl ConfigCache {
    pub async fn load(
        db: DatabaseConnection,
        key: Arc<SecretKey>,
    ) -> Result<Arc<Self>, TenantError> {
        let configs = tenants::load_active(&db, &key).await?;
        Ok(Arc::new(Self {
            db,
            key,
            current: RwLock::new(Arc::new(configs)),
            last_refresh: Mutex::new(Instant::now()),
        }))
    }

    pub fn snapshot(&self) -> Arc<Vec<ActiveConfig>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reloads from the database unless that happened less than `gap` ago.
    /// Returns whether a reload happened.
    pub async fn refresh(&self, gap: Duration) -> Result<bool, TenantError> {
        let mut last = self.last_refresh.lock().await;
        if last.elapsed() < gap {
            return Ok(false);
        }
        let configs = tenants::load_active(&self.db, &self.key).await?;
        *last = Instant::now();
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(configs),
            Err(p) => *p.into_inner() = Arc::new(configs),
        }
        Ok(true)
    }

    /// Periodic reload, so removed or deactivated configs stop routing.
    pub async fn run_refresher(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = shutdown.changed() => return,
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
        // Several numbers of one Meta app share its secret: check each distinct
        // secret once, then keep every config that uses it.
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
}
