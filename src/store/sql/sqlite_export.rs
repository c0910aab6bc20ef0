//! The SQLite side of a usage export: the SELECT is prepared and stepped through SQLite's C
//! API on one of sqlx's pooled connections, on a blocking thread, and every row is handed to
//! the encoder as text borrowed from SQLite's own row buffer.
//!
//! Through sqlx, SQLite runs on the connection's worker thread, which copies every value of
//! every row (`sqlite3_value_dup`) and sends each row over a channel to the async side, where
//! it is decoded with type checks and freed: that per-row allocation and hand-off was most of
//! an export's time. Here nothing is allocated per row.
//!
//! The connection is taken with sqlx's own [`SqliteConnection::lock_handle`]: while the lock is
//! held, sqlx's worker thread waits for it, so this thread is the connection's only user. The
//! statement is finalized and the lock released before the connection goes back to the pool.
//! All `unsafe` code of the module is in [`Statement`].
//!
//! [`SqliteConnection::lock_handle`]: sqlx::sqlite::SqliteConnection::lock_handle

use std::ffi::{CStr, c_int};
use std::ptr::{self, NonNull};

use bytes::Bytes;
use libsqlite3_sys as ffi;
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::query::{
    ExportEnd, Exported, LogFilter, Param, RowEncoder, USAGE_COLUMNS, UsageRow, filter_terms,
};
use super::unavailable;
use crate::store::StoreError;

/// The SQL of an export: the filter's conditions with `?` placeholders, in
/// [`filter_terms`]'s order, then the limit's.
fn export_sql(filter: &LogFilter) -> (String, Vec<Param<'_>>) {
    let mut sql = format!("SELECT {USAGE_COLUMNS} FROM request_log WHERE 1=1");
    let mut params = Vec::new();
    for (term, p) in filter_terms(filter) {
        sql.push_str(term);
        if p != Param::None {
            sql.push('?');
            params.push(p);
        }
    }
    sql.push_str(" ORDER BY ts_ms DESC, id DESC LIMIT ?");
    (sql, params)
}

/// See [`super::SqlLog::export_usage`].
pub(super) async fn export<E: RowEncoder>(
    pool: &SqlitePool,
    filter: &LogFilter,
    limit: i64,
    encoder: E,
    out: mpsc::Sender<Bytes>,
) -> Result<Exported<E>, StoreError> {
    let failed = |encoder, e: String| Exported {
        encoder,
        rows: 0,
        end: ExportEnd::Failed(e),
    };
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return Ok(failed(encoder, e.to_string())),
    };
    let (sql, params) = export_sql(filter);
    let params: Vec<Owned> = params.into_iter().map(Owned::from).collect();
    let rt = tokio::runtime::Handle::current();
    let job = tokio::task::spawn_blocking(move || {
        // A blocking-pool thread is outside any async context: it may wait for the lock here.
        let mut locked = match rt.block_on(conn.lock_handle()) {
            Ok(l) => l,
            Err(e) => return failed(encoder, e.to_string()),
        };
        let db = locked.as_raw_handle();
        // SAFETY: `db` is the open connection behind `locked`; while `locked` lives, sqlx's
        // worker thread waits for it, and `Statement` is dropped (finalized) before `locked`
        // at the end of this closure.
        let stmt = unsafe { Statement::prepare(db, &sql) };
        let exported = match stmt {
            Ok(stmt) => run(stmt, &params, limit, encoder, &out),
            Err(e) => failed(encoder, e),
        };
        drop(locked);
        // `conn` goes back to the pool here (the statement is finalized, the lock released).
        drop(conn);
        exported
    });
    match job.await {
        Ok(exported) => Ok(exported),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down and never ran the job.
        Err(e) => Err(unavailable(e)),
    }
}

/// A bound value, owned so it can move to the blocking thread.
enum Owned {
    Int(i64),
    Text(String),
}

impl From<Param<'_>> for Owned {
    fn from(p: Param<'_>) -> Self {
        match p {
            Param::Int(v) => Owned::Int(v),
            Param::Text(v) => Owned::Text(v.to_string()),
            // `export_sql` leaves out conditions without a value.
            Param::None => Owned::Int(0),
        }
    }
}

/// Binds, steps and encodes; on the blocking thread.
fn run<E: RowEncoder>(
    mut stmt: Statement,
    params: &[Owned],
    limit: i64,
    mut encoder: E,
    out: &mpsc::Sender<Bytes>,
) -> Exported<E> {
    let mut rows = 0u64;
    let mut bind = || -> Result<(), String> {
        let mut at: c_int = 0;
        for p in params {
            at += 1;
            match p {
                Owned::Int(v) => stmt.bind_int(at, *v)?,
                Owned::Text(v) => stmt.bind_text(at, v)?,
            }
        }
        stmt.bind_int(at + 1, limit)
    };
    if let Err(e) = bind() {
        return Exported {
            encoder,
            rows,
            end: ExportEnd::Failed(e),
        };
    }
    let end = loop {
        match stmt.step() {
            Ok(true) => {}
            Ok(false) => break ExportEnd::Done,
            Err(e) => break ExportEnd::Failed(e),
        }
        let chunk = match usage_row(&stmt) {
            Ok(row) => encoder.row(&row),
            Err(e) => break ExportEnd::Failed(e),
        };
        rows += 1;
        match chunk {
            Ok(None) => {}
            Ok(Some(c)) => {
                if out.blocking_send(c).is_err() {
                    break ExportEnd::ReceiverGone;
                }
            }
            Err(e) => break ExportEnd::Failed(e.to_string()),
        }
    };
    Exported { encoder, rows, end }
}

/// The current row of `SELECT USAGE_COLUMNS` (see [`UsageRow`]'s field order).
fn usage_row(s: &Statement) -> Result<UsageRow<'_>, String> {
    Ok(UsageRow {
        timestamp_ms: s.int(0),
        user: s.text(1)?,
        key: s.text(2)?,
        provider: s.text(3)?.unwrap_or_default(),
        model: s.text(4)?.unwrap_or_default(),
        original_model: s.text(5)?,
        endpoint: s.text(6)?.unwrap_or_default(),
        status: s.int(7),
        tokens: [s.int(8), s.int(9), s.int(10), s.int(11), s.int(12)],
        cost_micros: s.int(13),
        duration_ms: s.int(14),
        session_id: s.text(15)?,
        retry_count: s.int(16),
    })
}

/// A prepared statement on a connection this thread uses exclusively; finalized on drop.
///
/// Column values borrow from `&self` and [`Statement::step`] takes `&mut self`, so no value
/// read from a row outlives that row (SQLite frees or reuses the buffers on the next step).
struct Statement {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
}

impl Statement {
    /// Prepares `sql` (one statement) on `db`.
    ///
    /// # Safety
    ///
    /// `db` must be an open connection that no other thread uses, and that stays open, until
    /// the returned statement is dropped.
    unsafe fn prepare(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Self, String> {
        let len = c_int::try_from(sql.len()).map_err(|_| "statement too long".to_string())?;
        let mut stmt = ptr::null_mut();
        // SAFETY: `db` is valid and exclusively ours (the caller's promise); `sql` is valid for
        // `len` bytes (no NUL terminator needed when the length is given); `stmt` is a valid
        // out-pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Self { db, stmt }),
            Some(stmt) => {
                // SAFETY: a statement SQLite returned, finalized once, never used after.
                unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
                Err(error(db, rc))
            }
            None if rc == ffi::SQLITE_OK => Err("empty statement".into()),
            None => Err(error(db, rc)),
        }
    }

    fn bind_int(&mut self, at: c_int, v: i64) -> Result<(), String> {
        // SAFETY: `self.stmt` is a live statement of `self.db` (see the type's invariant);
        // an out-of-range `at` is reported by SQLite as SQLITE_RANGE.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), at, v) };
        self.check(rc)
    }

    fn bind_text(&mut self, at: c_int, v: &str) -> Result<(), String> {
        let len = c_int::try_from(v.len()).map_err(|_| "bound text too long".to_string())?;
        // SAFETY: as in `bind_int`; `v` is valid for `len` bytes and SQLITE_TRANSIENT makes
        // SQLite copy it before returning, so `v` need not outlive the call.
        let rc = unsafe {
            ffi::sqlite3_bind_text(
                self.stmt.as_ptr(),
                at,
                v.as_ptr().cast(),
                len,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.check(rc)
    }

    /// Advances to the next row: `true` when there is one, `false` when done.
    fn step(&mut self) -> Result<bool, String> {
        // SAFETY: a live statement on a connection this thread uses exclusively.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(error(self.db, rc)),
        }
    }

    /// Column `col` of the current row as an integer (NULL reads as 0).
    fn int(&self, col: c_int) -> i64 {
        // SAFETY: a live statement positioned on a row (only called after `step` returned
        // `true`); an out-of-range column reads as NULL.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), col) }
    }

    /// Column `col` of the current row as text, borrowed until the next step; `None` for NULL.
    fn text(&self, col: c_int) -> Result<Option<&str>, String> {
        let s = self.stmt.as_ptr();
        // SAFETY: as in `int`. The order type → text → bytes is the one SQLite documents for
        // reading a value without conversions invalidating the pointer; the pointer is valid
        // for `len` bytes until the statement is stepped, reset or finalized, all of which
        // take `&mut self` (or `self`), so the borrow of `&self` covers its whole life.
        let bytes = unsafe {
            if ffi::sqlite3_column_type(s, col) == ffi::SQLITE_NULL {
                return Ok(None);
            }
            let p = ffi::sqlite3_column_text(s, col);
            let len = ffi::sqlite3_column_bytes(s, col);
            if p.is_null() {
                // Out of memory while converting (or an empty value): SQLite's errcode says.
                let rc = ffi::sqlite3_errcode(self.db.as_ptr());
                if rc == ffi::SQLITE_NOMEM {
                    return Err(error(self.db, rc));
                }
                return Ok(Some(""));
            }
            std::slice::from_raw_parts(p, usize::try_from(len).unwrap_or(0))
        };
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|e| format!("column {col} is not UTF-8: {e}"))
    }

    fn check(&self, rc: c_int) -> Result<(), String> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db, rc))
        }
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: the statement is live and finalized exactly once, here; nothing borrows from
        // it any more (`&mut self`).
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// SQLite's message for the last failure on `db`, with the result code.
fn error(db: NonNull<ffi::sqlite3>, rc: c_int) -> String {
    // SAFETY: `db` is a live connection this thread uses exclusively; `sqlite3_errmsg` returns a
    // NUL-terminated string owned by SQLite, copied here before any other call on `db`.
    let msg = unsafe {
        let p = ffi::sqlite3_errmsg(db.as_ptr());
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    format!("sqlite error {rc}: {msg}")
}
