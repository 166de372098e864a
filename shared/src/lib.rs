//! wapipe's shared library: configuration, error types, SeaORM entities, the
//! broker (RabbitMQ and embedded), crypto for secrets and signatures, and the
//! metric names every stage exports. Depends on no other crate of ours.

pub mod broker;
pub mod config;
pub mod crypto;
pub mod db;
pub mod entities;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod retry;
pub mod tenants;
pub mod whatsapp;
