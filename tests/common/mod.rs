//! What several of the binary's end-to-end tests share: the fake Meta
//! Graph API (`wapipe-sim graph`) wired to a running test service.
#![allow(dead_code)]

use std::time::Duration;

pub mod media;

use tokio::net::TcpListener;
use wapipe_sim::payloads::Business;
use wapipe_sim::{GraphConfig, GraphHandle, spawn_graph};
use wapipe_testkit::app::{APP_SECRET, PHONE_NUMBER_ID, TestApp, WABA_ID};

/// reqwest is built with rustls but without a provider of its own: the
/// binary installs ring first thing, and so must every test process before
/// any client (the harness's, the simulator's) is built.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A listener for the fake Graph API, bound before the service starts so
/// its address can go into the service's `GRAPH_API_BASE`.
pub async fn graph_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, base)
}

/// The fake Graph API on `listener`: it accepts sends for the test config's
/// number and token, and posts signed sent/delivered/read webhooks back to
/// `app`'s receiver.
pub async fn fake_graph(listener: TcpListener, app: &TestApp) -> GraphHandle {
    spawn_graph(
        listener,
        GraphConfig {
            webhook: Some(app.url("/api/whatsapp/webhooks")),
            app_secret: APP_SECRET.into(),
            business: Business {
                waba_id: WABA_ID.into(),
                phone_number_id: PHONE_NUMBER_ID.into(),
                display_phone_number: "15550001111".into(),
            },
            phone_number_id: Some(PHONE_NUMBER_ID.into()),
            token: Some("EAAG-test".into()),
            status_delay: Duration::from_millis(20),
            ..GraphConfig::default()
        },
    )
    .await
    .expect("fake graph")
}
