//! The built-in web console (SPEC §6.5): `GET /` and `/ui/…` serve the single page, its ES
//! modules and style sheet from `assets/console/`, embedded in the binary (nothing is loaded from
//! the internet, no Node.js at build or run time); and `GET /api/v1/whoami`, which tells the
//! console who its token is (role, user id; `none` before sign-in), the analytics time zone
//! and which parts of the API this deployment serves.
//!
//! Every asset answer carries a strict Content-Security-Policy (`default-src 'self'`, no inline
//! script or style), `nosniff`, `no-referrer`, and `Cache-Control: no-cache` with a strong ETag
//! (the content's hash), so a browser revalidates with a cheap 304 and never runs stale modules
//! after an upgrade. The console holds no data of its own: every page is a client of the
//! `/api/v1` routes with the caller's bearer token, which the server checks as for any client;
//! the page only hides what the role may not use.

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::{Access, Auth, Principal};
use crate::api::{ApiError, QueryErrors};

/// The Content-Security-Policy of every console answer: same origin only; images may also be
/// `data:` (none are today, but an SVG icon as a data URL is not a script).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its name under `/ui/assets/`, media type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ct:literal) => {
        Asset {
            name: $name,
            content_type: $ct,
            body: include_bytes!(concat!("../../assets/console/", $name)),
        }
    };
}

/// The page every console path answers.
const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// The files under `/ui/assets/`.
const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("charts.js", "text/javascript; charset=utf-8"),
    asset!("format.js", "text/javascript; charset=utf-8"),
    asset!("pages.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The names and bytes of every embedded file (`index.html` first), for tests that read them.
pub fn embedded() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    std::iter::once(&INDEX)
        .chain(ASSETS)
        .map(|a| (a.name, a.body))
}

/// FNV-1a, 64 bits: the ETag of a file (a cache validator, not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The ETags, computed once (index first, then [`ASSETS`] in order).
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    std::iter::once(&INDEX)
        .chain(ASSETS)
        .map(|a| {
            HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(a.body)))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// The security and cache headers every console answer carries.
fn headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `asset` with its ETag, or a bodiless 304 when the browser holds the same bytes.
fn answer(asset: &Asset, etag: &HeaderValue, req: &HeaderMap) -> Response {
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().as_bytes() == etag.as_bytes()));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    if !fresh {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    h.insert(header::ETAG, etag.clone());
    headers(h);
    resp
}

/// `GET /`, `/ui`, `/ui/`: the page (the console routes by the URL's fragment).
async fn index(req: HeaderMap) -> Response {
    match ETAGS.first() {
        Some(etag) => answer(&INDEX, etag, &req),
        None => ApiError::NotFound.into_response(),
    }
}

/// `GET /ui/assets/{name}`.
async fn asset(Path(name): Path<String>, req: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => match ETAGS.get(i + 1) {
            Some(etag) => answer(&ASSETS[i], etag, &req),
            None => ApiError::NotFound.into_response(),
        },
        None => {
            let mut resp = ApiError::NoSuchRecord {
                message: format!("no console asset {name:?}"),
            }
            .into_response();
            headers(resp.headers_mut());
            resp
        }
    }
}

/// The console's pages and files (no token needed: they hold no data; every API call the page
/// makes carries the token the user signed in with). Deep links (`/ui/logs`) are not routes:
/// the router's fallback serves them ([`deep_link`]), so that an OTLP client whose path prefix
/// happens to be `/ui` (`POST /ui/v1/logs`) still reaches the receiver.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/assets/{name}", get(asset))
}

/// The page, for a `GET` of a deep link under `/ui/` (not an OTLP path); `None` for any other
/// request (the fallback goes on with it).
pub async fn deep_link(
    method: &axum::http::Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let page = method == axum::http::Method::GET
        && path.starts_with("/ui/")
        && !path.starts_with("/ui/assets/")
        && crate::health::otlp::Signal::from_path(path).is_none();
    if page {
        Some(index(headers.clone()).await)
    } else {
        None
    }
}

/// What the console needs to know of the deployment.
#[derive(Clone, Debug)]
pub struct WhoamiApi {
    /// The token table: `whoami` checks the token itself (see [`whoami`]).
    pub auth: Auth,
    /// `analytics.time_zone`'s IANA name.
    pub time_zone: String,
    /// Whether a request log is configured (logs, usage CSV, audit, exports).
    pub request_log: bool,
    /// Whether the log keeps rollups (leaderboards, sessions, availability, overview).
    pub analytics: bool,
    /// Whether stored requests are kept (`log_store.store_requests`): the session request JSON.
    pub stored_requests: bool,
    /// `analytics.session_active_secs`.
    pub session_active_secs: u64,
}

/// The caller's role.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Role {
    /// No token was sent and tokens are configured: sign in first.
    None,
    /// No tokens are configured: everything is open.
    Open,
    /// An admin token: everything.
    Admin,
    /// A user token: its own rows only.
    User,
}

/// Who the caller is and what this deployment answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Whoami {
    /// `none` (no token sent; every other route answers 401), `open`, `admin` or `user`.
    #[schema(inline, value_type = Role)]
    role: &'static str,
    /// A user token's user id (`null` otherwise): every answer is forced to it.
    user: Option<String>,
    /// Whether admin-only routes (audit trail, backup, probe log, session request JSON) answer.
    admin: bool,
    /// `analytics.time_zone` (IANA): today, this week and this month begin there.
    time_zone: String,
    /// A request log is configured (`/api/v1/logs`, usage CSV, audit trail, exports).
    request_log: bool,
    /// The log keeps rollups (leaderboards, sessions, availability, overview).
    analytics: bool,
    /// Requests are stored (`log_store.store_requests`): a session's request JSON exists.
    stored_requests: bool,
    /// A session is active when its last request started this many seconds ago at most.
    session_active_secs: u64,
}

/// `GET /api/v1/whoami`: open to every caller, as it is how a client learns whether it must
/// sign in; it checks the token itself.
pub fn whoami_routes(api: WhoamiApi) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(whoami))
        .with_state(Arc::new(api))
}

/// `GET /api/v1/whoami`.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "meta",
    summary = "The caller's role and user, the analytics time zone and what this server answers",
    description = "Answers without a token too (`role: none` when tokens are configured), so a \
        client learns whether to sign in without a failed request; an unknown token is a 401, \
        an ingest or metrics token a 403, as on every query route.",
    security((), ("bearer" = [])),
    responses((status = 200, description = "Who the token is", body = Whoami), QueryErrors))]
pub async fn whoami(
    State(api): State<Arc<WhoamiApi>>,
    headers: HeaderMap,
    q: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response, ApiError> {
    crate::api::logs::params(q, &[])?;
    let who = if headers.contains_key(header::AUTHORIZATION) {
        Some(api.auth.check(&headers, Access::Query)?)
    } else {
        match api.auth.check(&headers, Access::Query) {
            Ok(who) => Some(who),
            Err(ApiError::Unauthorized { .. }) => None,
            Err(e) => return Err(e),
        }
    };
    let role = match &who {
        None => "none",
        Some(Principal::Open) => "open",
        Some(Principal::Admin(_)) => "admin",
        // `check` lets only admins, users and (open) anyone through the query role.
        Some(_) => "user",
    };
    Ok(Json(Whoami {
        role,
        user: who
            .as_ref()
            .and_then(Principal::forced_user)
            .map(str::to_string),
        admin: matches!(who, Some(Principal::Open | Principal::Admin(_))),
        time_zone: api.time_zone.clone(),
        request_log: api.request_log,
        analytics: api.analytics,
        stored_requests: api.stored_requests,
        session_active_secs: api.session_active_secs,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_listed_once_and_has_an_etag() {
        let names: Vec<&str> = embedded().map(|(n, _)| n).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        assert_eq!(ETAGS.len(), names.len());
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }

    #[test]
    fn etag_match_answers_not_modified() {
        let etag = HeaderValue::from_static("\"abc\"");
        let mut req = HeaderMap::new();
        req.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", \"abc\""),
        );
        let resp = answer(&INDEX, &etag, &req);
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(resp.headers()[header::ETAG], etag);
        let resp = answer(&INDEX, &etag, &HeaderMap::new());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }
}
