//! The media worker: consumes `media.fetch` and brings an inbound
//! message's file from Meta into the media store. It asks the Graph API
//! for the media's URL (`GET /{version}/{media-id}` with the number's
//! token), skips the download when the store already holds a file with
//! Meta's sha256 (the same file twice is stored once), else streams the
//! download into the store, which checks Meta's `sha256` and `file_size`.
//! An expired URL (401, 403 or 404 on the download) is asked for again.
//! A file over `WAPIPE_MEDIA_MAX_BYTES`, or one Meta no longer has, is
//! refused for good and the message says why; anything else is retried by
//! the runtime and dead-lettered after the last attempt. Thumbnails are
//! not made here but on first request (the API), so a burst of photos
//! costs downloads only. Beside the worker runs the retention pass
//! (`WAPIPE_MEDIA_RETENTION_DAYS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio_util::sync::CancellationToken;
use wapipe_domain::configs::{ConfigCache, SendConfig};
use wapipe_domain::media::{
    self, Expect, MediaGraph, MediaGraphError, MediaInfo, MediaStore, Outcome, PutError,
};
use wapipe_shared::broker::Delivery;
use wapipe_shared::config::Settings;
use wapipe_shared::entities::messages;
use wapipe_shared::jobs::{MediaFetch, Queue};

use crate::registry::{Background, BuildError, Deps, Registration};
use crate::runtime::{JobError, JobWorker, Worker, typed};

pub const REGISTRATION: Registration = Registration {
    queue: Queue::Media,
    build,
    background,
};

/// Files fetched, by outcome (`stored`, `deduplicated`, `failed`, `refused`).
pub const METRIC_FETCHES_TOTAL: &str = "wapipe_media_fetches_total";
/// Time from the job's start to the file stored, seconds.
pub const METRIC_FETCH_SECONDS: &str = "wapipe_media_fetch_seconds";
/// Bytes downloaded from Meta.
pub const METRIC_DOWNLOADED_BYTES_TOTAL: &str = "wapipe_media_downloaded_bytes_total";
/// Media URLs that expired before the download and were asked for again.
pub const METRIC_URL_RENEWALS_TOTAL: &str = "wapipe_media_url_renewals_total";
/// Files removed by the retention pass.
pub const METRIC_PRUNED_TOTAL: &str = "wapipe_media_pruned_total";

/// Lookups per job when the URL keeps expiring.
const URL_TRIES: usize = 3;

/// What the media role needs besides the database.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub graph_base: String,
    pub graph_version: String,
    /// `WAPIPE_MEDIA_MAX_BYTES`.
    pub max_bytes: u64,
    /// Longest wait for the next bytes of a download.
    pub read_timeout: Duration,
    /// `WAPIPE_MEDIA_RETENTION_DAYS`; `None` keeps files forever.
    pub retention: Option<chrono::Duration>,
    /// Time between two retention passes.
    pub prune_every: Duration,
}

impl MediaSettings {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            graph_base: s.graph_api_base.clone(),
            graph_version: s.graph_api_version.clone(),
            max_bytes: s.media_max_bytes,
            read_timeout: Duration::from_secs(30),
            retention: s
                .media_retention_days
                .map(|d| chrono::Duration::days(i64::from(d))),
            prune_every: Duration::from_secs(3600),
        }
    }
}

fn build_error(reason: impl std::fmt::Display) -> BuildError {
    BuildError {
        worker: Queue::Media.name(),
        reason: reason.to_string(),
    }
}

fn build(deps: &Deps) -> Result<Arc<dyn Worker>, BuildError> {
    describe_metrics();
    let store = MediaStore::from_settings(&deps.settings).map_err(build_error)?;
    let settings = MediaSettings::from_settings(&deps.settings);
    Ok(typed(
        MediaWorker::new(
            deps.db.clone(),
            deps.configs.clone(),
            Arc::new(store),
            settings,
        )
        .map_err(build_error)?,
    ))
}

/// The retention pass runs beside the worker when a retention is set.
fn background(deps: &Deps, shutdown: CancellationToken) -> Background {
    let settings = MediaSettings::from_settings(&deps.settings);
    let Some(retention) = settings.retention else {
        return Vec::new();
    };
    let store = match MediaStore::from_settings(&deps.settings) {
        Ok(s) => s,
        // The worker's build fails on the same error and says so.
        Err(_) => return Vec::new(),
    };
    vec![Box::pin(run_retention(
        deps.db.clone(),
        store,
        retention,
        settings.prune_every,
        shutdown,
    ))]
}

/// Registers the media metrics at zero, so dashboards find them before
/// the first file.
pub fn describe_metrics() {
    for outcome in ["stored", "deduplicated", "failed", "refused"] {
        metrics::counter!(METRIC_FETCHES_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(METRIC_DOWNLOADED_BYTES_TOTAL).increment(0);
    metrics::counter!(METRIC_URL_RENEWALS_TOTAL).increment(0);
    metrics::counter!(METRIC_PRUNED_TOTAL).increment(0);
}

/// Every `every`, prunes the files stored more than `retention` ago.
/// Several processes may run it at once: marking is one conditional
/// UPDATE, and removing a file twice is no error.
pub async fn run_retention(
    db: DatabaseConnection,
    store: MediaStore,
    retention: chrono::Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match prune_once(&db, &store, retention).await {
            Ok(p) if p.messages > 0 => {
                tracing::info!(messages = p.messages, objects = p.objects, "media pruned")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "media retention pass failed"),
        }
    }
}

/// One retention pass: files stored more than `retention` ago.
pub async fn prune_once(
    db: &DatabaseConnection,
    store: &MediaStore,
    retention: chrono::Duration,
) -> Result<media::Pruned, media::PruneError> {
    let reason = format!(
        "removed after {} days (WAPIPE_MEDIA_RETENTION_DAYS)",
        retention.num_days()
    );
    let pruned = media::prune(db, store, wapipe_domain::clock::now() - retention, &reason).await?;
    metrics::counter!(METRIC_PRUNED_TOTAL).increment(pruned.objects);
    Ok(pruned)
}

/// The `media` role.
pub struct MediaWorker {
    db: DatabaseConnection,
    configs: Arc<ConfigCache>,
    store: Arc<MediaStore>,
    graph: MediaGraph,
    settings: MediaSettings,
}

/// Why a fetch stopped.
enum Stop {
    Failed(String),
    Refused(String),
}

impl From<MediaGraphError> for Stop {
    fn from(e: MediaGraphError) -> Self {
        match &e {
            MediaGraphError::Refused { code, .. } if !e.is_retryable() => {
                Stop::Refused(format!("Meta cannot give this media (code {code}): {e}"))
            }
            _ => Stop::Failed(e.to_string()),
        }
    }
}

impl MediaWorker {
    pub fn new(
        db: DatabaseConnection,
        configs: Arc<ConfigCache>,
        store: Arc<MediaStore>,
        settings: MediaSettings,
    ) -> Result<Self, reqwest::Error> {
        let graph = MediaGraph::new(
            &settings.graph_base,
            &settings.graph_version,
            settings.read_timeout,
        )?;
        Ok(Self {
            db,
            configs,
            store,
            graph,
            settings,
        })
    }

    fn too_large(&self, size: u64) -> Stop {
        Stop::Refused(format!(
            "the file is {size} bytes, over WAPIPE_MEDIA_MAX_BYTES ({} bytes)",
            self.settings.max_bytes
        ))
    }

    /// Looks the media up, then stores it (or finds it stored): the file
    /// and its type.
    async fn fetch(
        &self,
        config: &SendConfig,
        media_id: &str,
    ) -> Result<(media::Stored, Option<String>, bool), Stop> {
        let version = config.graph_api_version.as_deref();
        let token = &config.access_token;
        let mut info: MediaInfo = self.graph.lookup(version, media_id, token).await?;
        if let Some(size) = info.file_size
            && size > self.settings.max_bytes
        {
            return Err(self.too_large(size));
        }
        if let Some(sha) = info.sha256.as_deref()
            && let Some(size) = self
                .store
                .size_of(sha)
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?
        {
            let stored = media::Stored {
                sha256: sha.to_owned(),
                size,
            };
            return Ok((stored, info.mime_type, true));
        }
        for attempt in 1..=URL_TRIES {
            let resp = match self.graph.download(&info.url, token).await {
                Ok(r) => r,
                Err(MediaGraphError::Expired(_)) if attempt < URL_TRIES => {
                    metrics::counter!(METRIC_URL_RENEWALS_TOTAL).increment(1);
                    info = self.graph.lookup(version, media_id, token).await?;
                    continue;
                }
                Err(e) => return Err(Stop::Failed(e.to_string())),
            };
            if let Some(len) = resp.content_length()
                && len > self.settings.max_bytes
            {
                return Err(self.too_large(len));
            }
            let counted = futures::StreamExt::inspect(resp.bytes_stream(), |c| {
                if let Ok(b) = c {
                    metrics::counter!(METRIC_DOWNLOADED_BYTES_TOTAL).increment(b.len() as u64);
                }
            });
            let expect = Expect {
                sha256: info.sha256.as_deref(),
                size: info.file_size,
                max: self.settings.max_bytes,
            };
            return match self.store.put_stream(counted, expect).await {
                Ok(stored) => Ok((stored, info.mime_type, false)),
                Err(PutError::TooLarge { .. }) => Err(Stop::Refused(format!(
                    "the file is over WAPIPE_MEDIA_MAX_BYTES ({} bytes)",
                    self.settings.max_bytes
                ))),
                Err(e) => Err(Stop::Failed(e.to_string())),
            };
        }
        Err(Stop::Failed("the media URL kept expiring".into()))
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(METRIC_FETCHES_TOTAL, "outcome" => outcome).increment(1);
}

#[async_trait]
impl JobWorker for MediaWorker {
    type Job = MediaFetch;

    async fn handle(&self, job: MediaFetch, _: &Delivery) -> Result<(), JobError> {
        let started = Instant::now();
        if messages::Entity::find_by_id(job.message_id)
            .one(&self.db)
            .await?
            .is_none()
        {
            return Err(JobError::permanent(format!(
                "no message {}",
                job.message_id
            )));
        }
        let row = media::begin(&self.db, job.message_id, job.config_id, &job.media_id).await?;
        if media::is_settled(&row) {
            return Ok(());
        }
        let config = self
            .configs
            .get(&self.db, job.config_id)
            .await
            .map_err(|e| match e {
                wapipe_domain::configs::ConfigError::Db(e) => JobError::from(e),
                other => JobError::permanent(other),
            })?
            .ok_or_else(|| JobError::permanent(format!("no config {}", job.config_id)))?;
        let outcome = match self.fetch(&config, &job.media_id).await {
            Ok((stored, mime, deduplicated)) => {
                let mime = mime.or(row.mime_type);
                count(if deduplicated {
                    "deduplicated"
                } else {
                    "stored"
                });
                metrics::histogram!(METRIC_FETCH_SECONDS).record(started.elapsed().as_secs_f64());
                Outcome::Stored {
                    sha256: stored.sha256,
                    size: stored.size,
                    mime_type: mime,
                    // Made when first asked for (`media::thumbnail_of`).
                    thumbnail_sha256: None,
                }
            }
            Err(Stop::Refused(reason)) => {
                count("refused");
                Outcome::Refused(reason)
            }
            Err(Stop::Failed(reason)) => {
                count("failed");
                Outcome::Failed(reason)
            }
        };
        media::settle(&self.db, job.message_id, &outcome).await?;
        match outcome {
            Outcome::Failed(reason) => Err(JobError::Retryable(reason)),
            _ => Ok(()),
        }
    }

    /// The last attempt failed: the file stays `failed` with that error.
    async fn on_dead_letter(&self, job: MediaFetch, error: &str) -> Result<(), JobError> {
        media::settle(
            &self.db,
            job.message_id,
            &Outcome::Failed(format!("gave up: {error}")),
        )
        .await?;
        Ok(())
    }
}
