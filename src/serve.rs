//! Running roles: `serve` (everything in one process), `ingest` (receiver +
//! relay) and `workers` (consumers), as switches over the roles' entry
//! points (`wapipe_ingest::start`, `wapipe_workers::start`). One code path
//! for embedded and production mode; only the URLs differ. One
//! cancellation token stops everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wapipe_domain::configs::{ConfigCache, DEFAULT_TTL};
use wapipe_ingest::relay::RelaySettings;
use wapipe_ingest::store::BatchSettings;
use wapipe_ingest::{IngestDeps, IngestSettings, ReceiverSettings};
use wapipe_shared::broker::{self, Broker};
use wapipe_shared::config::Settings;

use crate::app;
use crate::metrics_server::{self, Health, METRIC_BUILD_INFO};

/// The roles one process runs.
#[derive(Debug, Clone)]
pub struct Roles {
    pub ingest: bool,
    /// The agents' REST API.
    pub api: bool,
    pub workers: Vec<String>,
}

impl Roles {
    /// Everything: what `wapipe serve` runs.
    pub fn all() -> Self {
        Self {
            ingest: true,
            api: true,
            workers: wapipe_workers::REGISTRY
                .iter()
                .map(|r| r.name().to_owned())
                .collect(),
        }
    }

    /// `--roles parse,status`, checked against the worker registry.
    pub fn parse_workers(list: &str) -> Result<Vec<String>> {
        let roles = wapipe_workers::Roles::parse(list)?;
        Ok(roles.names().split(',').map(str::to_owned).collect())
    }

    fn worker_roles(&self) -> Result<wapipe_workers::Roles> {
        if self.workers.is_empty() {
            return Ok(wapipe_workers::Roles::none());
        }
        Ok(wapipe_workers::Roles::parse(&self.workers.join(","))?)
    }

    /// The process's role for its default metrics port and `build_info`.
    fn kind(&self) -> &'static str {
        match (self.ingest, self.api, self.workers.is_empty()) {
            (true, _, false) => "serve",
            (true, _, true) => "ingest",
            (false, true, true) => "api",
            (false, _, _) => "workers",
        }
    }

    fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.ingest {
            parts.push("ingest".to_owned());
        }
        if self.api {
            parts.push("api".to_owned());
        }
        parts.extend(self.workers.iter().cloned());
        parts.join(",")
    }
}

/// The metrics listener of a process running `roles`: WAPIPE_METRICS_LISTEN
/// when set, else a port per kind of process, so `wapipe ingest` and
/// `wapipe workers` start side by side on one host as the README shows
/// (and `wapipe api` on 9466).
pub fn metrics_listen(settings: &Settings, roles: &Roles) -> SocketAddr {
    if let Some(addr) = settings.metrics_listen {
        return addr;
    }
    let port = match roles.kind() {
        "workers" => 9465,
        "api" => 9466,
        _ => 9464,
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing accepted requests and in-flight jobs");
        t.cancel();
    });
    token
}

/// Connects and declares the topology. RabbitMQ being down is not fatal:
/// ingest must keep accepting (the database is the source of truth), so
/// the declaration is retried in the background until it succeeds.
pub async fn connect_broker(
    settings: &Settings,
    db: sea_orm::DatabaseConnection,
) -> Result<Arc<dyn Broker>> {
    let broker = broker::connect(&settings.broker_settings(), db)
        .await
        .context("cannot set up the broker")?;
    if let Err(e) = broker.declare().await {
        tracing::warn!(error = %e, "cannot declare the broker topology yet; retrying in the background");
        let b = broker.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                tokio::time::sleep(delay).await;
                match b.declare().await {
                    Ok(()) => {
                        tracing::info!("broker topology declared");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "topology declaration failed; retrying"),
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
    }
    Ok(broker)
}

pub async fn serve(settings: Settings) -> Result<()> {
    run_roles(settings, Roles::all()).await
}

/// Runs roles until SIGTERM / Ctrl-C, then shuts down gracefully.
pub async fn run_roles(settings: Settings, roles: Roles) -> Result<()> {
    let running = start(settings, roles, None, shutdown_signal()).await?;
    running.join.await.context("the service task failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Pre-bound listeners (tests bind port 0).
pub struct Listeners {
    pub http: TcpListener,
    pub metrics: TcpListener,
}

/// A started service: where it listens, and a task that ends after a
/// graceful shutdown once `shutdown` is cancelled.
pub struct Running {
    pub addr: Option<SocketAddr>,
    /// Where the API answers (the same as `addr` when they share it).
    pub api_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub db: sea_orm::DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    pub join: tokio::task::JoinHandle<()>,
}

pub async fn start(
    settings: Settings,
    roles: Roles,
    listeners: Option<Listeners>,
    shutdown: CancellationToken,
) -> Result<Running> {
    let worker_roles = roles.worker_roles()?;
    if !roles.ingest && !roles.api && worker_roles.is_empty() {
        bail!("no role to run");
    }
    let handle = metrics_server::install_recorder();
    let key = Arc::new(app::secret_key(&settings)?);
    let db = app::connect_ready(&settings).await?;
    if roles.ingest {
        // A new user's first `make run`: say what to do next.
        app::hint_if_unconfigured(&db).await;
    }
    let broker = connect_broker(&settings, db.clone()).await?;

    let api_at = settings.api_listen.unwrap_or(settings.listen);
    // One listener for both when they run together on the same address.
    let shared = roles.ingest && roles.api && api_at == settings.listen;
    let (http_listener, metrics_listener) = match listeners {
        Some(l) => (Some(l.http), l.metrics),
        None => {
            let at = metrics_listen(&settings, &roles);
            let metrics = TcpListener::bind(at).await.with_context(|| {
                format!(
                    "cannot listen for metrics on {at} (set WAPIPE_METRICS_LISTEN to another \
                     address for each process on one host)"
                )
            })?;
            let at = if roles.ingest {
                settings.listen
            } else {
                api_at
            };
            let http = if roles.ingest || roles.api {
                Some(
                    TcpListener::bind(at)
                        .await
                        .with_context(|| format!("cannot listen on {at}"))?,
                )
            } else {
                None
            };
            (http, metrics)
        }
    };
    // The API's own listener, when it does not share the receiver's.
    let (api_listener, http_listener) = if roles.api && !roles.ingest {
        (http_listener, None)
    } else if roles.api && !shared {
        let l = TcpListener::bind(api_at).await.with_context(|| {
            format!("cannot listen for the API on {api_at} (WAPIPE_API_LISTEN)")
        })?;
        (Some(l), http_listener)
    } else {
        (None, http_listener)
    };
    let metrics_addr = metrics_listener.local_addr()?;
    let addr = match &http_listener {
        Some(l) if roles.ingest => Some(l.local_addr()?),
        _ => None,
    };
    let api_addr = match &api_listener {
        Some(l) => Some(l.local_addr()?),
        None if shared => addr,
        None => None,
    };
    metrics::gauge!(METRIC_BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "mode" => broker.mode(),
        "roles" => roles.label())
    .set(1.0);
    tokio::spawn(metrics_server::serve(
        metrics_listener,
        handle,
        Health {
            db: db.clone(),
            broker: broker.clone(),
        },
        shutdown.clone(),
    ));
    tokio::spawn(broker::report_depths(
        broker.clone(),
        Duration::from_secs(10),
    ));

    let configs = Arc::new(ConfigCache::new(db.clone(), Some(key), DEFAULT_TTL));
    let settings = Arc::new(settings);
    let deps = wapipe_workers::Deps {
        db: db.clone(),
        broker: broker.clone(),
        settings: settings.clone(),
        configs: configs.clone(),
    };
    let mut workers = wapipe_workers::start(
        &worker_roles,
        &deps,
        settings.retry_policy(),
        shutdown.clone(),
    )?;

    let api_deps = wapipe_api::ApiDeps {
        db: db.clone(),
        broker: broker.clone(),
        meta: Some(wapipe_api::MetaAccess {
            configs: configs.clone(),
            graph: wapipe_domain::templates::GraphTarget {
                base: settings.graph_api_base.clone(),
                version: settings.graph_api_version.clone(),
            },
        }),
        secret_key: configs.secret_key().cloned(),
        // Only a process that serves the API opens the store (an ingest
        // process has no use for it); the media worker opens its own.
        media: if shared || api_listener.is_some() {
            Some(Arc::new(
                wapipe_domain::media::MediaStore::from_settings(&settings)
                    .context("the media store (WAPIPE_MEDIA_DIR / WAPIPE_MEDIA_URL)")?,
            ))
        } else {
            None
        },
    };
    let api_settings = wapipe_api::ApiSettings {
        rate_per_s: settings.api_rate_per_s,
        rate_burst: settings.api_rate_burst,
        template_sync_every: (settings.template_sync_s > 0)
            .then(|| Duration::from_secs(settings.template_sync_s)),
        events_retention: Duration::from_secs(
            u64::from(settings.events_retention_days) * 24 * 3600,
        ),
        ws_max_buffer: settings.ws_max_buffer as usize,
        webhooks_allow_private: settings.webhooks_allow_private,
        media_max_bytes: settings.media_max_bytes,
        ..wapipe_api::ApiSettings::default()
    };
    let fallback: Option<wapipe_ingest::Fallback> = if shared {
        Some(wapipe_api::hyper_handler(
            api_deps.clone(),
            api_settings.clone(),
            shutdown.clone(),
        ))
    } else {
        None
    };
    let api = api_listener.map(|listener| {
        tracing::info!(listen = ?listener.local_addr().ok(), "wapipe API listening");
        wapipe_api::start(api_deps, api_settings, listener, shutdown.clone())
    });
    if shared {
        tracing::info!(listen = %settings.listen, "wapipe API on the receiver's listener under /api/");
    }

    let ingest = match (roles.ingest, http_listener) {
        (true, Some(listener)) => {
            configs
                .refresh(Duration::ZERO)
                .await
                .context("cannot load the WhatsApp configs")?;
            tracing::info!(
                listen = %listener.local_addr()?,
                metrics = %metrics_addr,
                broker = broker.mode(),
                database = if settings.is_postgres() { "postgres" } else { "sqlite" },
                "wapipe ingest listening"
            );
            Some(wapipe_ingest::start(
                IngestDeps {
                    db: db.clone(),
                    broker: broker.clone(),
                    configs,
                    fallback,
                },
                IngestSettings {
                    receiver: ReceiverSettings {
                        max_body_bytes: settings.max_body_bytes,
                        body_budget_bytes: settings.body_budget_bytes,
                        max_connections: settings.max_connections,
                        first_request_timeout: Duration::from_secs(
                            settings.first_request_timeout_s.max(1),
                        ),
                        idle_timeout: Duration::from_secs(settings.idle_timeout_s.max(1)),
                        ..ReceiverSettings::default()
                    },
                    batch: BatchSettings {
                        window: Duration::from_millis(settings.batch_window_ms),
                        max: settings.batch_max,
                        in_flight: 4,
                    },
                    relay: RelaySettings::from_grace(Duration::from_secs(
                        settings.relay_grace_secs,
                    )),
                },
                listener,
                shutdown.clone(),
            ))
        }
        _ => None,
    };
    if !worker_roles.is_empty() {
        tracing::info!(roles = %worker_roles.names(), metrics = %metrics_addr, "workers started");
    }

    let join = tokio::spawn(async move {
        if let Some(ingest) = ingest {
            let _ = ingest.await;
        } else {
            shutdown.cancelled().await;
        }
        if let Some(api) = api {
            let _ = api.await;
        }
        while workers.join_next().await.is_some() {}
    });
    Ok(Running {
        addr,
        api_addr,
        metrics_addr,
        db,
        broker,
        join,
    })
}
