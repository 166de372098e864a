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

use crate::{
    AppState, agents, blocked, chats, directory, eventlog, events, followups, groups, labels,
    media, messages, notes, scenarios, stats, templates, webhook_endpoints, ws,
};

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
        (name = "messages", description = "Messages of a chat; sends"),
        (name = "agents", description = "Agents, their permissions and presence"),
        (name = "labels", description = "Labels and a chat's labels"),
        (name = "notes", description = "Team notes on a chat"),
        (name = "follow-ups", description = "Scheduled follow-ups"),
        (name = "blocked numbers", description = "Numbers nobody may message"),
        (name = "webhooks", description = "Webhook deliveries as received"),
        (name = "events", description = "What happened, in one order: the events log and its WebSocket"),
        (name = "templates", description = "Quick replies and WhatsApp templates"),
        (name = "stats", description = "Reports"),
        (name = "customers", description = "Customers' profiles"),
        (name = "configs", description = "The WhatsApp numbers"),
        (name = "scenarios", description = "The chatbot's scenarios (seed 000)"),
        (name = "webhook endpoints", description = "Outgoing webhooks: events delivered to your URLs, signed per Standard Webhooks")
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
        .routes(routes!(groups::participants))
        .routes(routes!(messages::list, messages::send))
        .routes(routes!(messages::get))
        .routes(routes!(messages::mark_read))
        .routes(routes!(media::file))
        .routes(routes!(media::thumbnail))
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::online))
        .routes(routes!(agents::get, agents::update))
        .routes(routes!(agents::status))
        .routes(routes!(labels::list, labels::create))
        .routes(routes!(labels::update, labels::delete))
        .routes(routes!(labels::add_to_chat, labels::remove_from_chat))
        .routes(routes!(notes::list, notes::create))
        .routes(routes!(notes::update, notes::delete))
        .routes(routes!(followups::list, followups::create))
        .routes(routes!(followups::of_chat))
        .routes(routes!(followups::update, followups::delete))
        .routes(routes!(blocked::list, blocked::block))
        .routes(routes!(blocked::unblock))
        .routes(routes!(events::list))
        .routes(routes!(eventlog::list))
        .routes(routes!(ws::connect))
        .routes(routes!(templates::list, templates::create))
        .routes(routes!(templates::update, templates::delete))
        .routes(routes!(templates::sync))
        .routes(routes!(stats::admin))
        .routes(routes!(stats::agent))
        .routes(routes!(directory::customer))
        .routes(routes!(directory::assignments))
        .routes(routes!(directory::configs))
        .routes(routes!(scenarios::list, scenarios::create))
        .routes(routes!(
            scenarios::get,
            scenarios::update,
            scenarios::delete
        ))
        .routes(routes!(webhook_endpoints::list, webhook_endpoints::create))
        .routes(routes!(webhook_endpoints::get, webhook_endpoints::delete))
        .routes(routes!(webhook_endpoints::deliveries))
        .routes(routes!(webhook_endpoints::retry))
}

/// The routes and their document, with the answers every route can give
/// added to each operation (see [`add_common_responses`]).
pub fn split() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = routes().split_for_parts();
    add_common_responses(&mut doc);
    (router, doc)
}

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    split().1
}

/// Answers that come from the layers in front of every handler, not from
/// the handler, so its annotation does not list them: the key (401), the
/// rate limit (429), a query or path that does not parse (400); for a body,
/// its size (413), its type (415) and its JSON (400); for a create, the
/// `Idempotency-Key` reused with another body (422) or still in flight
/// (409). Without them a client generated from the document would treat
/// these documented-nowhere answers as protocol errors.
fn add_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, HttpMethod, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let ops = [
            (HttpMethod::Get, item.get.as_mut()),
            (HttpMethod::Post, item.post.as_mut()),
            (HttpMethod::Put, item.put.as_mut()),
            (HttpMethod::Patch, item.patch.as_mut()),
            (HttpMethod::Delete, item.delete.as_mut()),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let mut common = vec![
                ("400", "bad_request: a parameter does not parse"),
                ("401", "unauthorized: no key, or an unknown or revoked one"),
                ("429", "rate_limited: over the key's rate; see Retry-After"),
            ];
            if op.request_body.is_some() {
                common.push(("413", "payload_too_large"));
                common.push(("415", "unsupported_media_type: send JSON"));
            }
            if method == HttpMethod::Post {
                common.push((
                    "409",
                    "conflict, or the same Idempotency-Key still in flight",
                ));
                common.push((
                    "422",
                    "the Idempotency-Key was used with another body, or the request is refused",
                ));
            }
            for (code, description) in common {
                op.responses
                    .responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
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
