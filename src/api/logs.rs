//! The request-log API (SPEC §6.3 logs, §6.4 usage CSV, export audit):
//!
//! - `GET /api/v1/logs` — filtered list, newest first, keyset pages (`limit`, `cursor`);
//! - `GET /api/v1/logs/{id}` — one record with its provider chain;
//! - `GET /api/v1/export/usage.csv` — the same filters as a streamed CSV, capped;
//! - `GET /api/v1/audit` — the export audit trail (admins only).
//!
//! Parameters are parsed strictly: an unknown, repeated, empty or malformed parameter is a 400
//! naming it. A user token's queries are forced to its own user id whatever it sends (a `user`
//! parameter is overridden, a record of someone else is "not found"); admins see everything.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::{Access, Auth, Principal};
use crate::api::{ApiError, NotFoundError, QueryErrors};
use crate::export::usage_csv;
use crate::store::StoreError;
use crate::store::sql::{
    AuditEntry, Cursor, ExportEnd, LogEntry, LogFilter, LogPage, NewAudit, SqlLog,
};

/// Default and largest page size of the log list.
pub const DEFAULT_PAGE: u32 = 50;
/// Largest page size of the log list and the audit trail.
pub const MAX_PAGE: u32 = 1000;

/// Shared state of the log routes.
#[derive(Clone)]
pub struct LogApi {
    /// The request log.
    pub log: SqlLog,
    /// Row cap of one usage CSV export.
    pub export_max_rows: u64,
}

/// The routes, each behind its role check, with their OpenAPI description (a route is added
/// only through `routes!`, which takes its path from the handler's `#[utoipa::path]`).
pub fn routes(api: LogApi, auth: &Auth) -> OpenApiRouter {
    let state = Arc::new(api);
    let query = OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(detail))
        .routes(routes!(usage_csv))
        .with_state(state.clone());
    let admin = OpenApiRouter::new()
        .routes(routes!(audit))
        .with_state(state);
    auth.guard_documented(query, Access::Query)
        .merge(auth.guard_documented(admin, Access::Admin))
}

/// The filters of the log list and the usage export (OpenAPI only: the handlers parse the
/// query strictly themselves, see [`params`]). Text is at most 2048 bytes (`maxLength` counts
/// characters: a longer text is refused, a shorter one of wide characters may be too).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct FilterParams {
    /// Requests that started at or after this time (epoch ms).
    #[param(minimum = 0)]
    from: Option<i64>,
    /// Requests that started before this time (epoch ms, exclusive; after `from`).
    #[param(minimum = 0)]
    to: Option<i64>,
    /// The user id (or user name of a record without one). A user token always sees its own.
    #[param(min_length = 1, max_length = 2048)]
    user: Option<String>,
    /// Gateway key name.
    #[param(min_length = 1, max_length = 2048)]
    key: Option<String>,
    /// Provider.
    #[param(min_length = 1, max_length = 2048)]
    provider: Option<String>,
    /// Model actually used.
    #[param(min_length = 1, max_length = 2048)]
    model: Option<String>,
    /// API path.
    #[param(min_length = 1, max_length = 2048)]
    endpoint: Option<String>,
    /// Final status code (0: no response).
    #[param(minimum = 0, maximum = 999)]
    status: Option<u16>,
    /// Leave out status 200 (`true`, `false`, `1`, `0`).
    exclude_200: Option<bool>,
    /// Session id.
    #[param(min_length = 1, max_length = 2048)]
    session_id: Option<String>,
    /// At least this many provider switches (a `u32`).
    #[param(minimum = 0, maximum = 4_294_967_295_i64)]
    min_retry_count: Option<i64>,
    /// Trace id (hex): the calls of one trace.
    #[param(min_length = 1, max_length = 2048)]
    trace_id: Option<String>,
    /// Span id (hex): one call.
    #[param(min_length = 1, max_length = 2048)]
    span_id: Option<String>,
    /// The upstream provider's request id (Claude Code's `request_id`, failed calls included).
    #[param(min_length = 1, max_length = 2048)]
    provider_request_id: Option<String>,
}

/// Paging of the log list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PageParams {
    /// Rows per page (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// Paging of the audit trail.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AuditParams {
    /// Entries per page (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Entries older than this id (`next_before` of the previous page).
    before: Option<i64>,
}

/// A page of the audit trail.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Entries, newest first.
    items: Vec<AuditEntry>,
    /// Pass as `before` for the next page; `null` on the last.
    next_before: Option<i64>,
}

pub(crate) fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_parameter",
        message: format!("parameter `{param}`: {message}"),
    }
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Full { .. } | StoreError::Unavailable { .. } => ApiError::Unavailable {
            message: "the request log is unavailable".into(),
            retry_after_secs: 1,
        },
    }
}

/// The query string as a map, refusing repeated and empty parameters and any name outside
/// `allowed`.
pub(crate) fn params(
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(pairs) = q.map_err(|e| ApiError::BadRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    let mut out = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::BadRequest {
                code: "unknown_parameter",
                message: format!(
                    "parameter `{k}` is not known here (accepted: {})",
                    allowed.join(", ")
                ),
            });
        }
        if v.is_empty() {
            return Err(bad(&k, "must not be empty"));
        }
        if out.contains_key(&k) {
            return Err(bad(&k, "given more than once"));
        }
        out.insert(k, v);
    }
    Ok(out)
}

const FILTER_PARAMS: [&str; 14] = [
    "from",
    "to",
    "user",
    "key",
    "provider",
    "model",
    "endpoint",
    "status",
    "exclude_200",
    "session_id",
    "min_retry_count",
    "trace_id",
    "span_id",
    "provider_request_id",
];

pub(crate) fn parse_num<T: std::str::FromStr>(
    p: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    p.get(name)
        .map(|v| v.parse::<T>().map_err(|e| bad(name, format!("{v:?}: {e}"))))
        .transpose()
}

/// The filter of the log list and the export, with the caller's forced user applied.
fn filter(p: &HashMap<String, String>, who: &Principal) -> Result<LogFilter, ApiError> {
    let from_ms: Option<i64> = parse_num(p, "from")?;
    let to_ms: Option<i64> = parse_num(p, "to")?;
    if let Some(v) = from_ms.filter(|v| *v < 0) {
        return Err(bad(
            "from",
            format!("{v} is before 1970 (epoch milliseconds expected)"),
        ));
    }
    if let Some(v) = to_ms.filter(|v| *v < 0) {
        return Err(bad(
            "to",
            format!("{v} is before 1970 (epoch milliseconds expected)"),
        ));
    }
    if let (Some(f), Some(t)) = (from_ms, to_ms)
        && t <= f
    {
        return Err(bad("to", format!("{t} is not after from ({f})")));
    }
    let status: Option<u16> = parse_num(p, "status")?;
    if let Some(s) = status.filter(|s| *s > 999) {
        return Err(bad("status", format!("{s} is not an HTTP status (0-999)")));
    }
    let exclude_200 = match p.get("exclude_200").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(v) => return Err(bad("exclude_200", format!("{v:?} is not true or false"))),
    };
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match p.get(k) {
            Some(v) if v.len() > 2048 => Err(bad(k, "longer than 2048 bytes")),
            v => Ok(v.cloned()),
        }
    };
    let mut f = LogFilter {
        from_ms,
        to_ms,
        user: text("user")?,
        key: text("key")?,
        provider: text("provider")?,
        model: text("model")?,
        endpoint: text("endpoint")?,
        status,
        exclude_200,
        session_id: text("session_id")?,
        min_retry_count: parse_num(p, "min_retry_count")?,
        trace_id: text("trace_id")?,
        span_id: text("span_id")?,
        provider_request_id: text("provider_request_id")?,
    };
    // A user token sees its own rows only, whatever it asked for.
    if let Some(id) = who.forced_user() {
        f.user = Some(id.to_string());
    }
    Ok(f)
}

/// `GET /api/v1/logs`.
#[utoipa::path(get, path = "/api/v1/logs", tag = "logs",
    summary = "Stored requests, newest first, in keyset pages",
    params(FilterParams, PageParams),
    responses((status = 200, description = "A page of requests", body = LogPage), QueryErrors))]
pub async fn list(
    State(api): State<Arc<LogApi>>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut allowed = FILTER_PARAMS.to_vec();
    allowed.extend(["limit", "cursor"]);
    let p = params(q, &allowed)?;
    let f = filter(&p, &who)?;
    let limit: u32 = parse_num(&p, "limit")?.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad(
            "limit",
            format!("{limit} is not between 1 and {MAX_PAGE}"),
        ));
    }
    let cursor = match p.get("cursor") {
        Some(c) => {
            Some(Cursor::decode(c).ok_or_else(|| bad("cursor", "not a cursor from next_cursor"))?)
        }
        None => None,
    };
    let page = api.log.page(&f, cursor, limit).await.map_err(store_error)?;
    Ok(Json(page).into_response())
}

/// `GET /api/v1/logs/{id}`.
#[utoipa::path(get, path = "/api/v1/logs/{id}", tag = "logs",
    summary = "One stored request with its provider chain",
    params(("id" = i64, Path, minimum = 1, description = "Row id (`id` of a listed request)")),
    responses((status = 200, description = "The request", body = LogEntry), QueryErrors, NotFoundError))]
pub async fn detail(
    State(api): State<Arc<LogApi>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| bad("id", format!("{id:?} is not a record id")))?;
    match api
        .log
        .get(id, who.forced_user())
        .await
        .map_err(store_error)?
    {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(ApiError::NoSuchRecord {
            message: format!("no record {id}"),
        }),
    }
}

/// `GET /api/v1/export/usage.csv`: streamed, capped, audited.
#[utoipa::path(get, path = "/api/v1/export/usage.csv", tag = "logs",
    summary = "The filtered requests as a usage CSV (streamed, capped, audited)",
    params(FilterParams),
    responses((status = 200, description = "Usage CSV (SPEC §6.4); a last `# truncated` line when capped",
        content_type = "text/csv", body = String,
        headers(("X-Gatemeter-Truncated" = String, description = "`true` when the row cap was reached"),
            ("X-Gatemeter-Row-Cap" = u64, description = "Rows one export may hold"))),
        QueryErrors))]
pub async fn usage_csv(
    State(api): State<Arc<LogApi>>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(q, &FILTER_PARAMS)?;
    let f = filter(&p, &who)?;
    let cap = api.export_max_rows;
    let started = crate::clock::now_ms();
    let truncated = api.log.more_than(&f, cap).await.map_err(store_error)?;
    let filters_json = serde_json::to_string(&f).unwrap_or_else(|_| "{}".into());
    // A few chunks in flight at most: the export waits for the client (constant memory).
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let log = api.log.clone();
    tokio::spawn(async move {
        let exported = match usage_csv::Encoder::new() {
            Ok(enc) => log.export_usage(&f, cap, enc, tx.clone()).await,
            Err(e) => Err(StoreError::Unavailable {
                store: "usage export",
                message: e.to_string(),
            }),
        };
        let (rows, end, tail, handed_out) = match exported {
            Ok(x) => {
                let handed_out = x.encoder.handed_out();
                match x.encoder.finish() {
                    Ok(tail) => (x.rows, x.end, tail, handed_out),
                    Err(e) => (
                        x.rows,
                        ExportEnd::Failed(e.to_string()),
                        Vec::new(),
                        handed_out,
                    ),
                }
            }
            Err(e) => (0, ExportEnd::Failed(e.to_string()), Vec::new(), 0),
        };
        let mut tail = tail;
        let sent_ok = end != ExportEnd::ReceiverGone;
        let (outcome, detail) = match end {
            ExportEnd::ReceiverGone => ("aborted", Some("the client went away".to_string())),
            ExportEnd::Failed(e) => {
                tracing::warn!(error = %e, rows, "Usage export failed while streaming.");
                tail.extend_from_slice(b"# error: export failed; rows above are incomplete\r\n");
                (
                    "failed",
                    Some("the request log failed while streaming".to_string()),
                )
            }
            ExportEnd::Done if truncated && rows >= cap => {
                tail.extend_from_slice(usage_csv::truncation_line(cap).as_bytes());
                ("ok", Some(format!("truncated at the row cap ({cap})")))
            }
            ExportEnd::Done => ("ok", None),
        };
        // Audit before the last bytes: a client holding the whole file finds its export logged.
        let entry = NewAudit {
            ts_ms: started,
            role: who.role().to_string(),
            actor: who.actor(),
            action: "usage_csv".into(),
            filters: filters_json,
            rows: i64::try_from(rows).unwrap_or(i64::MAX),
            bytes: i64::try_from(handed_out + tail.len() as u64).ok(),
            outcome: outcome.to_string(),
            detail,
        };
        if let Err(e) = log.audit(&entry).await {
            tracing::error!(error = %e, "Could not record an export in the audit trail.");
        }
        if sent_ok {
            let _ = tx.send(Bytes::from(tail)).await;
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let date = usage_csv::format_time(started);
    let filename = format!("usage-{}.csv", &date[..10.min(date.len())]);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-gatemeter-truncated",
        HeaderValue::from_static(if truncated { "true" } else { "false" }),
    );
    h.insert("x-gatemeter-row-cap", HeaderValue::from(cap));
    Ok(resp)
}

/// `GET /api/v1/audit` (admins): newest first; `limit` (default 50, max 1000), `before` (an id).
#[utoipa::path(get, path = "/api/v1/audit", tag = "logs",
    summary = "The export audit trail, newest first (admin tokens only)",
    params(AuditParams),
    responses((status = 200, description = "A page of the audit trail", body = AuditPage), QueryErrors))]
pub async fn audit(
    State(api): State<Arc<LogApi>>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(q, &["limit", "before"])?;
    let limit: u32 = parse_num(&p, "limit")?.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad(
            "limit",
            format!("{limit} is not between 1 and {MAX_PAGE}"),
        ));
    }
    let before: Option<i64> = parse_num(&p, "before")?;
    let items = api
        .log
        .audit_list(before, limit)
        .await
        .map_err(store_error)?;
    let next_before = if items.len() == limit as usize {
        items.last().map(|a| a.id)
    } else {
        None
    };
    Ok(Json(AuditPage { items, next_before }).into_response())
}
