//! The one list of workers. A worker is a module of this crate with one
//! entry, its [`Registration`]: the queue it consumes, how to build it
//! from the process's [`Deps`], and the background tasks that run beside
//! it (the conversation-expiry sweep, the outbound sweep, a scheduler).
//! Adding a worker is its module plus one line in [`REGISTRY`].

use std::sync::Arc;

use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use wapipe_domain::configs::ConfigCache;
use wapipe_shared::broker::Broker;
use wapipe_shared::config::Settings;
use wapipe_shared::jobs::Queue;

use crate::runtime::Worker;

/// What every worker may use: the process's connections, settings and the
/// shared config cache.
#[derive(Clone)]
pub struct Deps {
    pub db: DatabaseConnection,
    pub broker: Arc<dyn Broker>,
    pub settings: Arc<Settings>,
    pub configs: Arc<ConfigCache>,
}

impl Deps {
    /// Deps whose config cache decrypts with `key` and reads the configs
    /// of `db`, with the given process settings.
    pub fn new(
        db: DatabaseConnection,
        broker: Arc<dyn Broker>,
        settings: Settings,
        key: Arc<wapipe_shared::crypto::SecretKey>,
    ) -> Self {
        let configs = Arc::new(ConfigCache::new(
            db.clone(),
            Some(key),
            wapipe_domain::configs::DEFAULT_TTL,
        ));
        Self {
            db,
            broker,
            settings: Arc::new(settings),
            configs,
        }
    }
}

/// Why a worker cannot be built (bad settings); the process refuses to
/// start rather than run without it.
#[derive(Debug, thiserror::Error)]
#[error("worker {worker} cannot start: {reason}")]
pub struct BuildError {
    pub worker: &'static str,
    pub reason: String,
}

/// Tasks to run beside a worker until the token is cancelled.
pub type Background = Vec<BoxFuture<'static, ()>>;

/// One worker, as the registry knows it.
pub struct Registration {
    /// The queue it consumes; its name is the role name.
    pub queue: Queue,
    pub build: fn(&Deps) -> Result<Arc<dyn Worker>, BuildError>,
    pub background: fn(&Deps, CancellationToken) -> Background,
}

impl Registration {
    /// The role name (`wapipe workers --roles …`).
    pub fn name(&self) -> &'static str {
        self.queue.name()
    }
}

/// For workers with nothing running beside them.
pub fn no_background(_: &Deps, _: CancellationToken) -> Background {
    Vec::new()
}

/// Every worker this build runs, in pipeline order.
pub const REGISTRY: &[Registration] = &[
    crate::parse::REGISTRATION,
    crate::status::REGISTRATION,
    crate::scenario::REGISTRATION,
    crate::outbound::REGISTRATION,
    crate::followup::REGISTRATION,
    crate::webhook::REGISTRATION,
    crate::media::REGISTRATION,
];

/// The registration of the role `name`.
pub fn find(name: &str) -> Option<&'static Registration> {
    REGISTRY.iter().find(|r| r.name() == name)
}

/// The role names, comma separated, for messages.
pub fn role_names() -> String {
    REGISTRY
        .iter()
        .map(Registration::name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a registered worker consumes `queue`.
pub fn consumes(queue: Queue) -> bool {
    REGISTRY.iter().any(|r| r.queue == queue)
}

/// Every queue with a registered consumer. A producer publishes to a
/// queue only if it is here, so nothing piles up unread.
pub fn consumed_queues() -> Vec<Queue> {
    REGISTRY.iter().map(|r| r.queue).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_registration_per_queue() {
        let mut queues = consumed_queues();
        let n = queues.len();
        queues.sort();
        queues.dedup();
        assert_eq!(queues.len(), n, "two workers consume one queue");
        assert!(find("parse").is_some());
        assert!(find("nope").is_none());
    }
}

/// DESIGN §2: no worker module imports another. Each worker's sources
/// (`src/<name>.rs` or `src/<name>/…`) may name the runtime, the registry
/// and the domain crate, never another worker's module.
#[cfg(test)]
mod isolation {
    use std::path::{Path, PathBuf};

    fn sources(path: &Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).expect("read dir").flatten() {
                sources(&entry.path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_owned());
        }
    }

    #[test]
    fn no_worker_module_imports_another() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let names: Vec<&str> = super::REGISTRY.iter().map(|r| r.name()).collect();
        let mut faults = Vec::new();
        for name in &names {
            let mut files = Vec::new();
            sources(&src.join(name), &mut files);
            sources(&src.join(format!("{name}.rs")), &mut files);
            assert!(!files.is_empty(), "no sources for worker {name}");
            for file in files {
                let text = std::fs::read_to_string(&file).expect("read source");
                for other in names.iter().filter(|o| *o != name) {
                    for needle in [
                        format!("crate::{other}"),
                        format!("wapipe_workers::{other}"),
                        format!("super::super::{other}"),
                    ] {
                        if text.contains(&needle) {
                            faults.push(format!("{} names {needle}", file.display()));
                        }
                    }
                }
            }
        }
        assert!(
            faults.is_empty(),
            "worker modules import each other: {faults:#?}"
        );
    }
}
