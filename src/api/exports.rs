//! The admin exports (SPEC §6.4), each written to the audit trail with who, what, filters,
//! bytes and outcome (`ok`, `failed`, `aborted`, `conflict`):
//!
//! - `GET /api/v1/sessions/{id}/requests/{seq}/export` — one stored request of a session as JSON
//!   (`seq`: 1-based, in the order `GET /api/v1/sessions/{id}` lists the requests);
//! - `GET /api/v1/export/backup?include_log=true|false` — the whole database: PostgreSQL as
//!   `pg_dump --format=custom`, SQLite as an online snapshot of the file; one at a time across
//!   the fleet (`database:backup:lock` in Redis when the live store is Redis, else in process),
//!   a second request gets 409 saying since when the lock is held.
//!
//! A backup is answered only once its first bytes are there (or 5 s passed; 2 s proved too short for a failing `pg_dump` to report on a loaded machine): a `pg_dump` that is
//! missing or fails at once is a JSON error (503 / 500 with its error's gist), never a file. A
//! failure after streaming began aborts the response (the chunked body is not ended cleanly, so
//! no client takes a cut file for a whole one). A client that goes away kills `pg_dump`, frees
//! the lock at once and is audited as `aborted`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::auth::{Access, Auth, Principal};
use crate::api::logs::{bad, params, store_error};
use crate::api::{ApiError, ErrorBody, NotFoundError, QueryErrors};
use crate::clock::now_ms;
use crate::export::backup::{self, BackupConfig, BackupError, Dump, Piece};
use crate::export::session_json;
use crate::store::lock::{Acquired, FleetLock, LockGuard};
use crate::store::sql::{NewAudit, SqlBackend, SqlLog};

/// The Redis key (under the prefix) of the backup lock (SPEC §4).
pub const BACKUP_LOCK: &str = "database:backup:lock";

/// How long a backup waits for its first bytes before it answers 200 and streams.
const FIRST_BYTES: Duration = Duration::from_secs(5);

/// Shared state of the export routes.
#[derive(Clone)]
pub struct ExportApi {
    /// The request log (its database is what a backup dumps).
    pub log: SqlLog,
    /// `backup:` settings.
    pub backup: BackupConfig,
    /// One backup at a time.
    pub lock: FleetLock,
}

/// The routes, admins only.
pub fn routes(api: ExportApi, auth: &Auth) -> OpenApiRouter {
    let admin = OpenApiRouter::new()
        .routes(routes!(session_request))
        .routes(routes!(backup_export))
        .with_state(Arc::new(api));
    auth.guard_documented(admin, Access::Admin)
}

/// Another backup holds the lock.
#[derive(utoipa::IntoResponses)]
#[response(status = 409)]
pub struct BackupBusy(pub ErrorBody<'static>);

/// The dump tool failed before streaming (its error's gist).
#[derive(utoipa::IntoResponses)]
#[response(status = 500)]
pub struct BackupFailed(pub ErrorBody<'static>);

/// Options of the backup.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct BackupParams {
    /// Include the data of the request log and its rollups (`true`, the default, or `false`:
    /// their tables are in the backup, empty).
    include_log: Option<bool>,
}

/// Who asked, what, with which filters: the common part of an audit entry.
struct AuditCtx {
    log: SqlLog,
    ts_ms: i64,
    role: String,
    actor: Option<String>,
    action: &'static str,
    filters: String,
}

impl AuditCtx {
    fn new(
        log: &SqlLog,
        who: &Principal,
        action: &'static str,
        filters: serde_json::Value,
    ) -> Self {
        Self {
            log: log.clone(),
            ts_ms: now_ms(),
            role: who.role().to_string(),
            actor: who.actor(),
            action,
            filters: filters.to_string(),
        }
    }

    fn entry(
        &self,
        rows: i64,
        bytes: Option<u64>,
        outcome: &str,
        detail: Option<String>,
    ) -> NewAudit {
        NewAudit {
            ts_ms: self.ts_ms,
            role: self.role.clone(),
            actor: self.actor.clone(),
            action: self.action.to_string(),
            filters: self.filters.clone(),
            rows,
            bytes: bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            outcome: outcome.to_string(),
            detail,
        }
    }

    async fn write(&self, rows: i64, bytes: Option<u64>, outcome: &str, detail: Option<String>) {
        let entry = self.entry(rows, bytes, outcome, detail);
        if let Err(e) = self.log.audit(&entry).await {
            tracing::error!(error = %e, "Could not record an export in the audit trail.");
        }
    }
}

fn attachment(resp: &mut Response, content_type: &'static str, file: &str) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
}

/// `GET /api/v1/sessions/{id}/requests/{seq}/export` (admins).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/requests/{seq}/export", tag = "exports",
    summary = "One stored request of a session as JSON (admin tokens only; audited)",
    params(("id" = String, Path, min_length = 1, max_length = 2048, description = "Session id"),
        ("seq" = i64, Path, minimum = 1, description = "1-based position in the session's requests, as `GET /api/v1/sessions/{id}` lists them")),
    responses((status = 200, description = "`{sessionId, sequence, meta: {model, provider, timestamp}, headers, body, specialSettings}`, secrets redacted",
        content_type = "application/json", body = Object,
        headers(("Content-Disposition" = String, description = "`attachment; filename=\"session-{first 8 of id}-seq-{n}-request.json\"`"))),
        QueryErrors, NotFoundError))]
pub async fn session_request(
    State(api): State<Arc<ExportApi>>,
    Extension(who): Extension<Principal>,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if id.is_empty() || id.len() > 2048 {
        return Err(bad("id", "must be 1 to 2048 bytes"));
    }
    let seq: i64 = seq
        .parse()
        .ok()
        .filter(|s| (1..=100_000_000).contains(s))
        .ok_or_else(|| bad("seq", format!("{seq:?} is not a position from 1")))?;
    let audit = AuditCtx::new(
        &api.log,
        &who,
        "session_request_json",
        serde_json::json!({"session_id": id, "sequence": seq}),
    );
    let found = api
        .log
        .session_request(&id, seq)
        .await
        .map_err(store_error)?;
    let Some(r) = found else {
        let message = format!("session {id:?} has no request {seq}");
        audit.write(0, None, "failed", Some(message.clone())).await;
        return Err(ApiError::NoSuchRecord { message });
    };
    let Some(json) = session_json::encode(&id, seq, &r) else {
        let message = format!(
            "no request object was stored for request {seq} of session {id:?} \
             (log_store.store_requests was off, or the record had no request_id or request)"
        );
        audit.write(0, None, "failed", Some(message.clone())).await;
        return Err(ApiError::NoSuchRecord { message });
    };
    let body = serde_json::to_vec_pretty(&json).map_err(|e| ApiError::Internal(e.to_string()))?;
    audit.write(1, Some(body.len() as u64), "ok", None).await;
    let mut resp = Response::new(Body::from(body));
    attachment(
        &mut resp,
        "application/json",
        &session_json::file_name(&id, seq),
    );
    Ok(resp)
}

/// `GET /api/v1/export/backup` (admins).
#[utoipa::path(get, path = "/api/v1/export/backup", tag = "exports",
    summary = "The database as a backup file, streamed (admin tokens only; one at a time across the fleet; audited)",
    params(BackupParams),
    responses((status = 200, description = "PostgreSQL: `pg_dump --format=custom` (`backup_YYYY-MM-DDTHH-mm-ss.dump`, restore with `pg_restore`); SQLite: a consistent copy of the database file (`backup_YYYY-MM-DDTHH-mm-ss.db`). A failure while streaming aborts the response.",
        content((Vec<u8> = "application/octet-stream"), (Vec<u8> = "application/vnd.sqlite3")),
        headers(("Content-Disposition" = String, description = "`attachment; filename=\"backup_…\"`"),
            ("X-Gatemeter-Backup-Format" = String, description = "`pg_dump-custom` or `sqlite`"))),
        QueryErrors, BackupBusy, BackupFailed))]
pub async fn backup_export(
    State(api): State<Arc<ExportApi>>,
    Extension(who): Extension<Principal>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p: HashMap<String, String> = params(q, &["include_log"])?;
    let include_log = match p.get("include_log").map(String::as_str) {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(v) => return Err(bad("include_log", format!("{v:?} is not true or false"))),
    };
    let (format, content_type, ext) = match api.log.location() {
        SqlBackend::Postgres { .. } => ("pg_dump-custom", "application/octet-stream", "dump"),
        SqlBackend::Sqlite { .. } => ("sqlite", "application/vnd.sqlite3", "db"),
    };
    let audit = AuditCtx::new(
        &api.log,
        &who,
        "backup",
        serde_json::json!({"include_log": include_log, "format": format}),
    );
    let lock = match api.lock.try_acquire(audit.ts_ms).await {
        Ok(Acquired::Held(guard)) => guard,
        Ok(Acquired::Busy { since_ms }) => {
            let since = crate::export::usage_csv::format_time(since_ms);
            let message = format!("another backup is running (the lock is held since {since})");
            audit
                .write(0, None, "conflict", Some(message.clone()))
                .await;
            return Err(ApiError::Conflict {
                code: "backup_in_progress",
                message,
            });
        }
        Err(e) => {
            let message = format!("the backup lock cannot be taken: {e}");
            audit.write(0, None, "failed", Some(message.clone())).await;
            return Err(ApiError::Unavailable {
                message,
                retry_after_secs: 5,
            });
        }
    };
    let mut dump = match backup::start(&api.log, &api.backup, include_log).await {
        Ok(d) => d,
        Err(e) => {
            audit.write(0, None, "failed", Some(e.to_string())).await;
            return Err(match e {
                BackupError::Missing(message) => ApiError::Unavailable {
                    message,
                    retry_after_secs: 60,
                },
                BackupError::Failed(message) => ApiError::ExportFailed {
                    code: "backup_failed",
                    message,
                },
            });
        }
    };
    // Answer with an error, not a file, when the dump fails at once.
    let first = match tokio::time::timeout(FIRST_BYTES, dump.pieces.recv()).await {
        Ok(Some(Piece::Bytes(b))) => Some(b),
        Ok(other) => {
            let message = match other {
                Some(Piece::End(Err(message))) => message,
                Some(Piece::End(Ok(()))) => "the dump ended without a byte".to_string(),
                _ => "the dump stopped without a word".to_string(),
            };
            audit
                .write(0, Some(0), "failed", Some(message.clone()))
                .await;
            return Err(ApiError::ExportFailed {
                code: "backup_failed",
                message,
            });
        }
        Err(_) => None,
    };
    let file = backup::file_name(audit.ts_ms).replace(".dump", &format!(".{ext}"));
    let state = Streaming {
        dump,
        _lock: lock,
        audit,
        first,
        bytes: 0,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        if let Some(b) = st.first.take() {
            st.bytes += b.len() as u64;
            return Some((Ok(b), st));
        }
        match st.dump.pieces.recv().await {
            Some(Piece::Bytes(b)) => {
                st.bytes += b.len() as u64;
                Some((Ok(b), st))
            }
            Some(Piece::End(Ok(()))) => {
                st.ended = true;
                st.audit.write(0, Some(st.bytes), "ok", None).await;
                None
            }
            end => {
                let message = match end {
                    Some(Piece::End(Err(m))) => m,
                    _ => "the dump stopped without a word".to_string(),
                };
                tracing::warn!(error = %message, bytes = st.bytes, "Backup failed while streaming.");
                st.ended = true;
                st.audit
                    .write(0, Some(st.bytes), "failed", Some(message.clone()))
                    .await;
                // An error item: the response is cut, not ended cleanly.
                Some((Err(std::io::Error::other(message)), st))
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    attachment(&mut resp, content_type, &file);
    resp.headers_mut().insert(
        "x-gatemeter-backup-format",
        HeaderValue::from_static(format),
    );
    Ok(resp.into_response())
}

/// A backup being streamed. Dropped before its end (the client went away): `pg_dump` is
/// killed (the dump's field drops first), the lock released, the export audited `aborted`.
struct Streaming {
    dump: Dump,
    _lock: LockGuard,
    audit: AuditCtx,
    first: Option<Bytes>,
    bytes: u64,
    ended: bool,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let entry = self.audit.entry(
            0,
            Some(self.bytes),
            "aborted",
            Some("the client went away".into()),
        );
        let log = self.audit.log.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = log.audit(&entry).await {
                    tracing::error!(error = %e, "Could not record an export in the audit trail.");
                }
            });
        }
    }
}
