//! The chatbot of seed 000 (issue 11): keyword-triggered scenarios whose
//! items form a graph, answered through the shared outbox.
//!
//! Owns: keyword matching ([`keywords`]), the flow file and its validation
//! ([`flow`], [`limits`]), scenarios in the database: import, export,
//! list, settings ([`store`]), what an item sends ([`content`]), the
//! engine that answers one inbound message ([`engine`]), the runs'
//! statuses ([`status`]) and the metrics ([`metrics`]).
//! The scenario worker (workers/src/scenario/) and the REST API's scenario
//! routes call into here; neither holds chatbot rules of its own.

pub mod content;
pub mod engine;
pub mod flow;
pub mod keywords;
pub mod limits;
pub mod metrics;
pub mod status;
pub mod store;

pub use flow::{FaultKind, FlowErrors, FlowFault, FlowFile, ItemType, ScenarioType};
pub use store::{
    ChatbotSettings, ImportReport, ScenarioError, ScenarioSummary, export, import, list,
};
