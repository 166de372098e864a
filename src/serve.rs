//! Running roles: `serve` (everything in one process), `ingest` (receiver +
//! relay) and `workers` (consumers). One code path for embedded and
//! production mode; only the URLs differ.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wapipe_ingest::configs::ConfigCache;
use wapipe_ingest::publisher::Publisher;
use wapipe_ingest::relay::{self, RelaySettings};
use wapipe_ingest::store::BatchSettings;
use wapipe_ingest::{ReceiverSettings, metrics_server};
use wapipe_shared::broker::{self, Broker};
use wapipe_shared::config::Settings;

use crate::app;

#[derive(Debug, Clone)]
pub struct Roles {
    pub ingest: bool,
    pub workers: Vec<String>,
}

impl Roles {
    pub fn all() -> Self {
        Self {
            ingest: true,
            workers: wapipe_workers::ALL_ROLES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    pub fn parse_workers(list: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            if !wapipe_workers::ALL_ROLES.contains(&r) {
                bail!(
                    "unknown worker role {r:?}; known roles: {}",
                    wapipe_workers::ALL_ROLES.join(", ")
                );
            }
            if !out.iter().any(|o| o == r) {
                out.push(r.to_owned());
            }
        }
        if out.is_empty() {
            bail!("--roles names no worker");
        }
        Ok(out)
    }
}

/// Flips to true on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing accepted requests and in-flight jobs");
        let _ = tx.send(true);
    });
    rx
}

/// The worker runtime stops on a cancellation token; tie one to the signal.
fn cancel_on(mut shutdown: watch::Receiver<bool>) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
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
    app::hint_if_unconfigured_at(&settings).await;
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
/// graceful shutdown once `shutdown` flips.
pub struct Running {
    pub addr: Option<std::net::SocketAddr>,
    pub metrics_addr: std::net::SocketAddr,
    pub db: sea_orm::DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    pub join: tokio::task::JoinHandle<()>,
}

pub async fn start(
    settings: Settings,
    roles: Roles,
    listeners: Option<Listeners>,
    shutdown: watch::Receiver<bool>,
) -> Result<Running> {
    let handle = metrics_server::install_recorder();
    let key = Arc::new(app::secret_key(&settings)?);
    let db = app::connect_ready(&settings).await?;
    let broker = connect_broker(&settings, db.clone()).await?;

    let (http_listener, metrics_listener) = match listeners {
        Some(l) => (Some(l.http), l.metrics),
        None => {
            let metrics = TcpListener::bind(settings.metrics_listen)
                .await
                .with_context(|| {
                    format!("cannot listen for metrics on {}", settings.metrics_listen)
                })?;
            let http = if roles.ingest {
                Some(
                    TcpListener::bind(settings.listen)
                        .await
                        .with_context(|| format!("cannot listen on {}", settings.listen))?,
                )
            } else {
                None
            };
            (http, metrics)
        }
    };
    let metrics_addr = metrics_listener.local_addr()?;
    let addr = match &http_listener {
        Some(l) if roles.ingest => Some(l.local_addr()?),
        _ => None,
    };
    tokio::spawn(metrics_server::serve(
        metrics_listener,
        handle,
        shutdown.clone(),
    ));
    tokio::spawn(broker::report_depths(
        broker.clone(),
        Duration::from_secs(10),
    ));

    let mut tasks = tokio::task::JoinSet::new();
    let worker_ctx = wapipe_workers::Context {
        db: db.clone(),
        broker: broker.clone(),
    };
    let outbound =
        wapipe_workers::outbound::OutboundSettings::from_settings(&settings, key.clone());
    for role in &roles.workers {
        let worker = wapipe_workers::make_with(role, worker_ctx.clone(), &outbound)
            .with_context(|| format!("unknown worker role {role}"))?;
        for task in wapipe_workers::background_tasks(
            role,
            &worker_ctx,
            &outbound,
            cancel_on(shutdown.clone()),
        ) {
            tokio::spawn(task);
        }
        let broker = broker.clone();
        let policy = settings.retry_policy();
        let token = cancel_on(shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = wapipe_workers::runtime::run(broker, worker, policy, token).await {
                tracing::error!(error = %e, "worker stopped");
            }
        });
    }
    if roles.workers.iter().any(|r| r == "parse") {
        // Windows close by the clock, not only when the next message comes.
        let db = db.clone();
        let mut rx = shutdown.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = wapipe_workers::parse::expire_conversations(&db).await {
                    tracing::debug!(error = %e, "conversation expiry sweep failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = rx.changed() => return,
                }
            }
        });
    }

    let ingest = match (roles.ingest, http_listener) {
        (true, Some(listener)) => {
            let (publisher, stamp_task) = Publisher::start(db.clone(), broker.clone());
            let (store, store_task) = wapipe_ingest::start_store(
                db.clone(),
                publisher.clone(),
                BatchSettings {
                    window: Duration::from_millis(settings.batch_window_ms),
                    max: settings.batch_max,
                    in_flight: 4,
                },
            );
            let configs = ConfigCache::load(db.clone(), key.clone()).await?;
            tokio::spawn(configs.clone().run_refresher(shutdown.clone()));
            tokio::spawn(relay::run(
                db.clone(),
                broker.clone(),
                RelaySettings::from_grace(Duration::from_secs(settings.relay_grace_secs)),
                shutdown.clone(),
            ));
            let receiver = Arc::new(wapipe_ingest::Receiver {
                db: db.clone(),
                broker: broker.clone(),
                configs,
                store,
                settings: ReceiverSettings {
                    max_body_bytes: settings.max_body_bytes,
                    ..ReceiverSettings::default()
                },
            });
            tracing::info!(
                listen = %listener.local_addr()?,
                metrics = %metrics_addr,
                broker = broker.mode(),
                database = if settings.is_postgres() { "postgres" } else { "sqlite" },
                "wapipe ingest listening"
            );
            Some((listener, receiver, publisher, stamp_task, store_task))
        }
        _ => None,
    };

    let join = tokio::spawn(async move {
        if let Some((listener, receiver, publisher, stamp_task, store_task)) = ingest {
            wapipe_ingest::serve(listener, receiver, shutdown.clone()).await;
            // The receiver is gone, so its store handle is dropped: the batcher
            // commits what it holds and ends; then publishes get a moment to confirm.
            let _ = tokio::time::timeout(Duration::from_secs(10), store_task).await;
            publisher.drain(Duration::from_secs(5)).await;
            drop(publisher);
            let _ = tokio::time::timeout(Duration::from_secs(2), stamp_task).await;
        } else {
            let mut rx = shutdown.clone();
            let _ = rx.wait_for(|s| *s).await;
        }
        while tasks.join_next().await.is_some() {}
    });
    Ok(Running {
        addr,
        metrics_addr,
        db,
        broker,
        join,
    })
}
