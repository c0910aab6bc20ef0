//! The probe log export (SPEC §6.4), admins only:
//!
//! - `GET /api/v1/export/probe-log?probe=&from=&to=&status=ok|fail&max_lines=` → `text/plain`,
//!   one line per run, newest last (`export/probe_log.rs`), file `probe-logs-YYYY-MM-DD.txt`.
//!
//! Read from `probe_results` (fleet-wide with a shared PostgreSQL) or, without a log store, from
//! this process's in-memory ring. With a log store every export is written to the audit trail
//! (who, filters, lines, outcome).

use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::{Access, Auth, Principal};
use crate::api::logs::{bad, params, parse_num, store_error};
use crate::api::{ApiError, QueryErrors};
use crate::calendar::Zone;
use crate::clock::now_ms;
use crate::export::probe_log::{self, DEFAULT_LINES, MAX_LINES};
use crate::probe::{ProbeLogFilter, Probes};
use crate::store::sql::{NewAudit, SqlLog};

/// Shared state of the probe routes.
#[derive(Clone)]
pub struct ProbeApi {
    /// The request log holding `probe_results` (`None`: the in-memory ring answers).
    pub log: Option<SqlLog>,
    /// This process's probes.
    pub probes: Arc<Probes>,
    /// `analytics.time_zone`: the lines' clock.
    pub zone: Zone,
}

/// The routes, admin only.
pub fn routes(api: ProbeApi, auth: &Auth) -> OpenApiRouter {
    let r = OpenApiRouter::new()
        .routes(routes!(probe_log))
        .with_state(Arc::new(api));
    auth.guard_documented(r, Access::Admin)
}

/// Which runs a probe log holds.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum RunStatus {
    /// Successful runs only.
    Ok,
    /// Failed runs only (unexpected status, timeout, refused, TLS, DNS, error).
    Fail,
}

/// The parameters of `GET /api/v1/export/probe-log` (OpenAPI only: the handler parses the
/// query strictly itself).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ProbeLogParams {
    /// One probe, by name.
    #[param(min_length = 1, max_length = 64)]
    probe: Option<String>,
    /// Runs that started at or after this time (epoch ms).
    #[param(minimum = 0)]
    from: Option<i64>,
    /// Runs that started before this time (epoch ms, exclusive; after `from`).
    #[param(minimum = 0)]
    to: Option<i64>,
    /// `ok` or `fail` (default both).
    #[param(inline)]
    status: Option<RunStatus>,
    /// Lines at most, the newest (default 100).
    #[param(minimum = 1, maximum = 1000)]
    max_lines: Option<u32>,
}

/// `GET /api/v1/export/probe-log` (admins).
#[utoipa::path(get, path = "/api/v1/export/probe-log", tag = "probes",
    summary = "The probe runs as text lines, newest last (admin tokens only; audited)",
    params(ProbeLogParams),
    responses((status = 200, description = "`[HH:mm:ss] OK 200 45ms` / `[HH:mm:ss] FAIL 502 120ms <error>` lines in analytics.time_zone",
        content_type = "text/plain", body = String,
        headers(("Content-Disposition" = String, description = "`attachment; filename=\"probe-logs-YYYY-MM-DD.txt\"`"))),
        QueryErrors))]
pub async fn probe_log(
    State(api): State<Arc<ProbeApi>>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(q, &["probe", "from", "to", "status", "max_lines"])?;
    let from_ms: Option<i64> = parse_num(&p, "from")?;
    let to_ms: Option<i64> = parse_num(&p, "to")?;
    for (name, v) in [("from", from_ms), ("to", to_ms)] {
        if let Some(v) = v.filter(|v| *v < 0) {
            return Err(bad(
                name,
                format!("{v} is before 1970 (epoch milliseconds expected)"),
            ));
        }
    }
    if let (Some(f), Some(t)) = (from_ms, to_ms)
        && t <= f
    {
        return Err(bad("to", format!("{t} is not after from ({f})")));
    }
    let ok = match p.get("status").map(String::as_str) {
        None => None,
        Some("ok") => Some(true),
        Some("fail") => Some(false),
        Some(v) => return Err(bad("status", format!("{v:?} is not ok or fail"))),
    };
    let max_lines: u32 = parse_num(&p, "max_lines")?.unwrap_or(DEFAULT_LINES);
    if max_lines == 0 || max_lines > MAX_LINES {
        return Err(bad(
            "max_lines",
            format!("{max_lines} is not between 1 and {MAX_LINES}"),
        ));
    }
    let probe = match p.get("probe") {
        Some(v) if v.chars().count() > 64 => return Err(bad("probe", "longer than 64 characters")),
        v => v.cloned(),
    };
    let f = ProbeLogFilter {
        probe,
        from_ms,
        to_ms,
        ok,
    };
    let started = now_ms();
    let body = match &api.log {
        Some(log) => {
            let read = log.probe_log(&f, max_lines).await;
            let body = read.as_ref().ok().map(|r| probe_log::render(r, &api.zone));
            let (rows, outcome, detail) = match &read {
                Ok(r) => (r.len(), "ok", None),
                Err(_) => (
                    0,
                    "failed",
                    Some("the request log is unavailable".to_string()),
                ),
            };
            let entry = NewAudit {
                ts_ms: started,
                role: who.role().to_string(),
                actor: who.actor(),
                action: "probe_log".into(),
                filters: serde_json::json!({"filter": &f, "max_lines": max_lines}).to_string(),
                rows: i64::try_from(rows).unwrap_or(i64::MAX),
                bytes: body
                    .as_ref()
                    .map(|b| i64::try_from(b.len()).unwrap_or(i64::MAX)),
                outcome: outcome.to_string(),
                detail,
            };
            if let Err(e) = log.audit(&entry).await {
                tracing::error!(error = %e, "Could not record an export in the audit trail.");
            }
            read.map_err(store_error)?;
            body.unwrap_or_default()
        }
        None => probe_log::render(&api.probes.recent(&f, max_lines as usize), &api.zone),
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let name = probe_log::file_name(started, &api.zone);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
