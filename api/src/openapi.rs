//! The OpenAPI 3.1 document, generated from the handlers' annotations by
//! utoipa (each route is registered with its documentation, so a route
//! cannot be served undocumented), served at `/api/openapi.json`, and a
//! reference page at `/api/docs` that needs nothing from the internet.

use std::sync::Arc;

use axum::Router;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{AppState, chats, messages};

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`wapipe apikey create` prints a key once"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wapipe agents' API",
        description = "Chats, messages, assignment and more for agents of a WhatsApp Business number (seed 002 model). Every route under /api/whatsapp needs `Authorization: Bearer KEY`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerKey),
    security(("apiKey" = [])),
    tags(
        (name = "chats", description = "Conversations with customers"),
        (name = "messages", description = "Messages of a chat; sends")
    )
)]
pub struct ApiDoc;

/// Every documented route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(chats::list, chats::create))
        .routes(routes!(chats::get, chats::update, chats::delete))
        .routes(routes!(chats::assign))
        .routes(routes!(chats::unassign))
        .routes(routes!(chats::transfer))
        .routes(routes!(chats::mark_read))
        .routes(routes!(messages::list, messages::send))
        .routes(routes!(messages::get))
        .routes(routes!(messages::mark_read))
}

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

const DOCS_PAGE: &str = include_str!("docs.html");

/// `/api/openapi.json` and `/api/docs`, open to all (no key).
pub fn public(doc: Arc<utoipa::openapi::OpenApi>) -> Router {
    Router::new()
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()).into_response() }
            }),
        )
        .route("/api/docs", get(|| async { Html(DOCS_PAGE) }))
}
