//! What the bot's tests share: the fake Graph API (`wapipe-sim`), a flow
//! imported for the test config, and the scenario and outbound roles as
//! the registry builds them.
#![allow(dead_code)]

use std::sync::Arc;

use serde_json::Value;
use wapipe_domain::scenarios::{self, FlowFile};
use wapipe_sim::{GraphConfig, GraphHandle, spawn_graph};
use wapipe_testkit::workers::{Env, PHONE};
use wapipe_workers::outbound::{OutboundSettings, OutboundWorker};
use wapipe_workers::runtime::{self, Worker};

pub struct Bot {
    pub graph: GraphHandle,
    pub scenario: Arc<dyn Worker>,
    pub outbound: Arc<dyn Worker>,
}

/// The fake Graph API for the test config's number and token, `flow`
/// imported, the two roles built.
pub async fn bot(env: &Env, flow: &Value) -> Bot {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let graph = spawn_graph(
        listener,
        GraphConfig {
            token: Some("EAAG".into()),
            phone_number_id: Some(PHONE.into()),
            ..GraphConfig::default()
        },
    )
    .await
    .expect("sim");
    scenarios::import(
        &env.db,
        env.config_id,
        &FlowFile::from_value(flow).expect("flow"),
    )
    .await
    .expect("import");
    let deps = env.deps();
    let scenario = (wapipe_workers::scenario::REGISTRATION.build)(&deps).expect("scenario role");
    let outbound = runtime::typed(
        OutboundWorker::new(deps, OutboundSettings::new(&graph.base_url(), "v23.0"))
            .expect("outbound role"),
    );
    Bot {
        graph,
        scenario,
        outbound,
    }
}
