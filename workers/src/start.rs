//! The workers' entry point: `start` builds the chosen roles from the
//! registry, runs each on the runtime with its background tasks, and stops
//! them all when the token is cancelled.

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wapipe_shared::retry::RetryPolicy;

use crate::registry::{self, BuildError, Deps, Registration};
use crate::runtime;

/// The worker roles a process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Vec<&'static Registration>);

impl PartialEq for Registration {
    fn eq(&self, other: &Self) -> bool {
        self.queue == other.queue
    }
}

impl Eq for Registration {}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A role list that names an unknown worker, or none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolesError {
    #[error("unknown worker role {0:?}; known roles: {known}", known = registry::role_names())]
    Unknown(String),
    #[error("the role list names no worker; known roles: {known}", known = registry::role_names())]
    Empty,
}

impl Roles {
    /// Every registered worker.
    pub fn all() -> Self {
        Self(registry::REGISTRY.iter().collect())
    }

    /// No worker (an ingest- or API-only process).
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// `parse,status`: comma separated role names, each once.
    pub fn parse(list: &str) -> Result<Self, RolesError> {
        let mut out: Vec<&'static Registration> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let reg = registry::find(name).ok_or_else(|| RolesError::Unknown(name.to_owned()))?;
            if !out.contains(&reg) {
                out.push(reg);
            }
        }
        if out.is_empty() {
            return Err(RolesError::Empty);
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.name() == name)
    }

    /// The role names, comma separated.
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Builds every role of `roles` (all or nothing: a role that cannot be
/// built fails the start), then runs them until `shutdown` is cancelled.
/// The returned set ends once every worker and background task stopped.
pub fn start(
    roles: &Roles,
    deps: &Deps,
    policy: RetryPolicy,
    shutdown: CancellationToken,
) -> Result<JoinSet<()>, BuildError> {
    let built = roles
        .0
        .iter()
        .map(|reg| (reg.build)(deps).map(|w| (*reg, w)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tasks = JoinSet::new();
    for (reg, worker) in built {
        for task in (reg.background)(deps, shutdown.clone()) {
            tasks.spawn(task);
        }
        let broker = deps.broker.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = runtime::run(broker, worker, policy, token).await {
                tracing::error!(error = %e, "worker stopped");
            }
        });
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_refuse() {
        let r = Roles::parse(" parse, status,parse ").expect("roles");
        assert_eq!(r.names(), "parse,status");
        assert!(r.contains("status") && !r.contains("outbound"));
        assert_eq!(
            Roles::parse("parse,nope"),
            Err(RolesError::Unknown("nope".into()))
        );
        assert_eq!(Roles::parse(" , "), Err(RolesError::Empty));
        assert_eq!(Roles::all().0.len(), registry::REGISTRY.len());
    }
}
