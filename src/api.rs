//! HTTP surface shared by every endpoint: the one API error type and its JSON response,
//! plus the orchestration endpoints (`/healthz`, `/readyz`). Submodules: [`auth`] (roles from
//! bearer tokens), [`logs`] (request-log queries, usage CSV export, audit trail), [`analytics`]
//! [`probes`] (the probe log export), [`claude_code`] (Claude Code's telemetry as JSON),
//! [`console`] (the web console's files and `whoami`) and [`openapi`] (the OpenAPI 3.1
//! document of every `/api/v1` route).
//!
//! Client mistakes answer a short, stable `{"error": "<code>", "message": "..."}` and are not
//! logged as errors; internal failures answer a generic 500 and are logged once.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::pipeline::Pipeline;

pub mod analytics;
pub mod auth;
pub mod claude_code;
pub mod console;
pub mod exports;
pub mod logs;
pub mod openapi;
pub mod probes;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read.
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What is wrong, naming the field or part.
        message: String,
    },
    /// 413: too big.
    #[error("{message}")]
    TooLarge {
        /// Stable code.
        code: &'static str,
        /// What exceeded which limit.
        message: String,
    },
    /// 415: wrong Content-Type or Content-Encoding.
    #[error("{message}")]
    UnsupportedMediaType {
        /// Stable code.
        code: &'static str,
        /// What is accepted.
        message: String,
    },
    /// 503 with `Retry-After`: overloaded or shutting down; nothing was taken.
    #[error("{message}")]
    Unavailable {
        /// What is wrong.
        message: String,
        /// Seconds to wait before retrying.
        retry_after_secs: u32,
    },
    /// 404: no such endpoint.
    #[error("no such endpoint")]
    NotFound,
    /// 401 with `WWW-Authenticate: Bearer`: no token, or an unknown one.
    #[error("{message}")]
    Unauthorized {
        /// What is missing (never the token itself).
        message: String,
    },
    /// 403: the token's role may not do this.
    #[error("{message}")]
    Forbidden {
        /// Which role was refused.
        message: String,
    },
    /// 404: no such record (or not the caller's).
    #[error("{message}")]
    NoSuchRecord {
        /// What was looked for.
        message: String,
    },
    /// 501: this deployment cannot answer it (e.g. analytics without a request log).
    #[error("{message}")]
    NotImplemented {
        /// Stable code.
        code: &'static str,
        /// What is missing and how to get it.
        message: String,
    },
    /// 409: the resource is busy (another backup holds the lock).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Who holds it since when.
        message: String,
    },
    /// 500 told to the (admin) caller: an export's tool failed (`pg_dump`'s error gist).
    #[error("{message}")]
    ExportFailed {
        /// Stable code.
        code: &'static str,
        /// What failed, secrets removed.
        message: String,
    },
    /// 500: our fault; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of every error answer: `{"error": "<code>", "message": "..."}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// Stable code, e.g. `invalid_parameter`, `unknown_parameter`, `unauthorized`, `forbidden`,
    /// `not_found`, `needs_request_log`, `unavailable`.
    error: &'a str,
    /// What is wrong, for people (names the parameter at fault).
    message: &'a str,
}

/// The errors every query route may answer (OpenAPI responses).
#[derive(utoipa::IntoResponses)]
pub enum QueryErrors {
    /// A parameter is unknown, repeated, empty or malformed; `message` names it.
    #[response(status = 400)]
    BadRequest(ErrorBody<'static>),
    /// No `Authorization: Bearer` token, or an unknown one.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody<'static>),
    /// The token's role may not use this route (an ingest or metrics token; a user token on
    /// an admin route).
    #[response(status = 403)]
    Forbidden(ErrorBody<'static>),
    /// The request log is unavailable; retry later.
    #[response(status = 503, headers(("Retry-After" = u32, description = "Seconds to wait")))]
    Unavailable(ErrorBody<'static>),
}

/// The record, session or key asked for does not exist (or is not the caller's).
#[derive(utoipa::IntoResponses)]
#[response(status = 404)]
pub struct NotFoundError(pub ErrorBody<'static>);

/// Analytics need the request log with its rollups (`log_store.kind: sqlite | postgres`).
#[derive(utoipa::IntoResponses)]
#[response(status = 501)]
pub struct NeedsLogError(pub ErrorBody<'static>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            Self::BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, *code, message.as_str())
            }
            Self::TooLarge { code, message } => {
                (StatusCode::PAYLOAD_TOO_LARGE, *code, message.as_str())
            }
            Self::UnsupportedMediaType { code, message } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, *code, message.as_str())
            }
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
            Self::Unauthorized { message } => {
                (StatusCode::UNAUTHORIZED, "unauthorized", message.as_str())
            }
            Self::Forbidden { message } => (StatusCode::FORBIDDEN, "forbidden", message.as_str()),
            Self::NoSuchRecord { message } => {
                (StatusCode::NOT_FOUND, "not_found", message.as_str())
            }
            Self::Unavailable { message, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message.as_str(),
            ),
            Self::NotImplemented { code, message } => {
                (StatusCode::NOT_IMPLEMENTED, *code, message.as_str())
            }
            Self::Conflict { code, message } => (StatusCode::CONFLICT, *code, message.as_str()),
            Self::ExportFailed { code, message } => {
                (StatusCode::INTERNAL_SERVER_ERROR, *code, message.as_str())
            }
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "Internal error answering a request.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                error: code,
                message,
            }),
        )
            .into_response();
        if let Self::Unauthorized { .. } = self {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::Unavailable {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    pipeline: bool,
    live_store: &'static str,
    live_store_up: bool,
    /// `sqlite` or `postgres`; absent without a request log.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_store: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_store_up: Option<bool>,
}

/// `GET /readyz`: 200 when the pipeline runs, else 503. The live store's and the request log's
/// reachability are reported but do not gate readiness: a Redis store buffers while Redis is
/// away, the request log holds its records in its bounded queue while its database is away
/// (and writes them when it is back), and taking every replica out of service when a database
/// fails would lose the gateways' records instead.
pub async fn readyz(State(pipeline): State<Pipeline>) -> Response {
    let store = pipeline.store();
    let log = pipeline.health().log_store();
    let r = Readiness {
        pipeline: pipeline.is_running(),
        live_store: store.name(),
        live_store_up: store.is_up(),
        log_store: log.map(|(name, _)| name),
        log_store_up: log.map(|(_, up)| up),
        ready: false,
    };
    let ready = r.pipeline;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, ..r })).into_response()
}
