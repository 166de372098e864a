//! wapipe's test kit, a dev-dependency only: nothing here ships in a
//! library.
//!
//! - [`db`]: throwaway PostgreSQL databases and SQLite files, migrated ones
//!   cloned from a template;
//! - [`app`] (feature `app`): `TestApp::spawn`, the whole service in-process;
//! - [`workers`] (feature `workers`): the worker-level `Env`;
//! - [`build`]: webhook and message builders, JSON fixtures;
//! - [`corpus`]: Meta's public payloads beside the repository, when present;
//! - [`receiver`]: a webhook receiver that checks signatures on its own;
//! - [`s3`]: a local S3-compatible server (moto) for the media store.
//!
//! A crate's unit tests see a second copy of that crate through this kit,
//! so only plain values (URLs, paths, connections) cross from here into
//! them.

#[cfg(feature = "app")]
pub mod app;
pub mod build;
pub mod corpus;
pub mod db;
pub mod receiver;
pub mod s3;
#[cfg(feature = "workers")]
pub mod workers;

pub use db::{Backend, TempDir};

/// The secret key every harness encrypts config secrets with.
pub const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The RabbitMQ of the tests; `WAPIPE_TEST_AMQP` overrides it.
pub fn amqp_url() -> String {
    std::env::var("WAPIPE_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `RUST_LOG=wapipe=debug cargo test …` shows the logs; installs ring as
/// the TLS provider (reqwest is built without one, like the binary).
pub fn init_logs() {
    #[cfg(feature = "app")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
