//! The built-in agent inbox: a small page at `/` and its assets under
//! `/inbox/`, plain HTML, CSS and JavaScript compiled into the binary (no
//! build step). The page is only a client of the public REST API and the
//! WebSocket, so it is outside `/api` and outside the OpenAPI document,
//! and needs no key to load: the agent pastes one into it.
//!
//! Every answer carries a strict Content-Security-Policy (this origin
//! only, no inline script or style), so text from customers that slipped
//! into the markup could still not run.

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page itself; its files are under `/inbox/`.
pub const PAGE_PATH: &str = "/";

/// `'self'` also covers `ws:`/`wss:` to the same host (CSP Level 3), which
/// the live updates need; nothing inline, nothing from elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: PAGE_PATH,
        content_type: "text/html; charset=utf-8",
        body: include_str!("../assets/inbox/index.html"),
    },
    Asset {
        path: "/inbox/inbox.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/inbox/inbox.js"),
    },
    Asset {
        path: "/inbox/inbox.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/inbox/inbox.css"),
    },
    Asset {
        path: "/inbox/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../assets/inbox/icon.svg"),
    },
];

fn answer(asset: &'static Asset) -> Response {
    let mut resp = (StatusCode::OK, asset.body).into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Small files that change with the binary: always revalidated, so an
    // upgrade never serves an old script with a new page.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /` and `GET /inbox/*`, open to all (the page holds no data).
pub fn routes() -> Router {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { answer(asset) }))
    })
}
