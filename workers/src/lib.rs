//! wapipe's workers: the runtime that consumes, acks, retries and
//! dead-letters jobs, the [`registry`] of workers, and one module per
//! worker. A worker gets a decoded job and answers Ok, a retryable error or
//! a permanent error; it never touches acks or retries itself (DESIGN §2).
//! No worker module imports another: what several need lives in the
//! `wapipe-domain` crate.

pub mod followup;
pub mod media;
pub mod outbound;
pub mod parse;
pub mod registry;
pub mod runtime;
pub mod scenario;
pub mod start;
pub mod status;
pub mod webhook;

pub use registry::{BuildError, Deps, REGISTRY, Registration};
pub use start::{Roles, start};
