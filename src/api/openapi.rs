//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of every `/api/v1` route this server
//! serves, generated from the code (utoipa). Each route module registers its routes through
//! utoipa-axum's `OpenApiRouter` and `routes!`, which takes a route's path and method from its
//! handler's `#[utoipa::path]`, so a route cannot be served without being described;
//! [`serve`] adds this route, the bearer-token scheme and the shared error body, and serves the
//! document (serialised once) behind the query role, like the routes it describes.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::{Access, Auth};
use crate::api::{ErrorBody, QueryErrors};

/// The parts of the document no route carries.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gatemeter API",
        description = "Queries of the request log and its analytics. Every route needs a bearer \
            token: an admin token sees everything, a user token only its own requests (unless \
            `analytics.users_see_leaderboards` for leaderboards). With no tokens configured the \
            API is open. Errors answer `{\"error\": \"<code>\", \"message\": \"...\"}`; \
            parameters are strict (an unknown, repeated, empty or malformed one is a 400 naming \
            it). Times are epoch milliseconds, money integer micro-USD (`cost_micros`) and an \
            exact decimal (`cost_usd`)."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "logs", description = "The request log: list, one request, usage CSV, audit trail"),
        (name = "analytics", description = "Leaderboards, sessions, availability, overview, API keys"),
        (name = "probes", description = "The active probes' log"),
        (name = "meta", description = "This document"),
    )
)]
struct Root;

/// The name of the bearer-token security scheme.
pub const BEARER: &str = "bearer";

/// The document of `routes` (every `/api/v1` route but this one), with this route, the bearer
/// scheme and the shared schemas.
fn document(
    routes: utoipa::openapi::OpenApi,
    own: utoipa::openapi::OpenApi,
) -> utoipa::openapi::OpenApi {
    let mut doc = Root::openapi();
    doc.merge(routes);
    doc.merge(own);
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin or user token (`auth.admin_tokens`, `auth.user_tokens`)",
                    ))
                    .build(),
            ),
        );
    doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    doc
}

/// Serves `routes` and, at `/api/v1/openapi.json`, their document (readable by the callers
/// that may query: admin and user tokens, or anyone when the API is open).
pub fn serve(routes: OpenApiRouter, auth: &Auth) -> Router {
    let (router, described) = routes.split_for_parts();
    let (own, own_doc) = OpenApiRouter::<Arc<Bytes>>::new()
        .routes(routes!(openapi_json))
        .split_for_parts();
    let doc = document(described, own_doc);
    // The document is fixed for the process: serialised once.
    let json = match serde_json::to_vec(&doc) {
        Ok(v) => Bytes::from(v),
        // Only a map with non-string keys fails; utoipa's types have none.
        Err(e) => unreachable!("the OpenAPI document does not serialise: {e}"),
    };
    router.merge(auth.guard(own.with_state(Arc::new(json)), Access::Query))
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    summary = "This OpenAPI 3.1 document",
    responses((status = 200, description = "The OpenAPI document of every /api/v1 route",
        content_type = "application/json", body = Object), QueryErrors))]
async fn openapi_json(State(doc): State<Arc<Bytes>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Bytes::clone(&doc),
    )
        .into_response()
}
