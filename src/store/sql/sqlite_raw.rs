//! SQLite's C API on a connection that sqlx owns: the request log's two hot paths (the
//! writer's inserts, `sqlite_insert.rs`, and the usage export, `sqlite_export.rs`) step their
//! statements here instead of through sqlx.
//!
//! Through sqlx, SQLite runs on the connection's worker thread, which copies every value it
//! binds or reads and hands each statement and row over a channel to the async side: that per-row
//! work was most of an export's time and a third of the writer's.
//!
//! [`with_handle`] takes a pooled connection and runs a job on a blocking thread with the raw
//! handle, locked through sqlx's own [`SqliteConnection::lock_handle`]: while the lock is held,
//! sqlx's worker thread waits for it, so the job's thread is the connection's only user. The
//! job's statements are finalized and the lock released before the connection goes back to the
//! pool. All `unsafe` code of the crate is in this module but for one ASCII fast path in
//! `otlp/scan.rs`: `unsafe_code` is denied everywhere else (Cargo.toml), and every block says
//! why it is sound (`undocumented_unsafe_blocks`).
//!
//! [`SqliteConnection::lock_handle`]: sqlx::sqlite::SqliteConnection::lock_handle

#![allow(unsafe_code)]

use std::ffi::{CStr, c_int};
use std::ptr::{self, NonNull};

use libsqlite3_sys as ffi;
use sqlx::Sqlite;
use sqlx::pool::PoolConnection;

use super::unavailable;
use crate::store::StoreError;

/// An open connection, lent to a [`with_handle`] job for the length of the call.
///
/// Not `Send` (it holds a raw pointer), so neither it nor a [`Statement`] made from it can leave
/// the job through its `Send` result.
#[derive(Clone, Copy)]
pub(super) struct Handle<'a> {
    db: NonNull<ffi::sqlite3>,
    _lent: std::marker::PhantomData<&'a mut ()>,
}

/// Runs `job` on a blocking thread with `conn`'s raw handle (or why it could not be locked),
/// then gives the connection back to the pool. A panic in `job` is resumed here; the error is
/// only for a runtime shutting down before the job ran.
pub(super) async fn with_handle<T, F>(
    mut conn: PoolConnection<Sqlite>,
    job: F,
) -> Result<T, StoreError>
where
    F: for<'a> FnOnce(Result<Handle<'a>, String>) -> T + Send + 'static,
    T: Send + 'static,
{
    let rt = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        // A blocking-pool thread is outside any async context: it may wait for the lock here.
        let out = match rt.block_on(conn.lock_handle()) {
            Ok(mut locked) => {
                let db = locked.as_raw_handle();
                // The job's statements borrow the handle and are gone when it returns.
                let out = job(Ok(Handle {
                    db,
                    _lent: std::marker::PhantomData,
                }));
                drop(locked);
                out
            }
            Err(e) => job(Err(e.to_string())),
        };
        drop(conn);
        out
    });
    match task.await {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(unavailable(e)),
    }
}

impl Handle<'_> {
    /// Runs SQL without results (e.g. `BEGIN`, `COMMIT`).
    pub(super) fn exec(&self, sql: &CStr) -> Result<(), String> {
        // SAFETY: `db` is the open connection lent to this job (see `with_handle`); the SQL is
        // NUL-terminated; no callback, no error string wanted (read below with errmsg).
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db.as_ptr(),
                sql.as_ptr(),
                None,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db, rc))
        }
    }

    /// Rows changed by the last `INSERT`, `UPDATE` or `DELETE` on this connection (rows an
    /// `INSERT OR IGNORE` skipped are not counted; statements that only read leave it as is).
    pub(super) fn changes(&self) -> i64 {
        // SAFETY: `db` is the open connection lent to this job (see `with_handle`).
        unsafe { ffi::sqlite3_changes64(self.db.as_ptr()) }
    }

    /// Prepares `sql` (one statement).
    pub(super) fn prepare<'h>(&'h self, sql: &str) -> Result<Statement<'h>, String> {
        // SAFETY: the handle is open and this thread's alone while the job runs, and the
        // statement cannot outlive the handle (its lifetime).
        unsafe { Statement::prepare(self.db, sql) }
    }
}

/// A value for [`Statement::run_once`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Bind<'v> {
    /// Text, bound without a copy for the length of the call.
    Text(&'v str),
    /// A 16-byte blob (a UUID), copied.
    Blob16([u8; 16]),
    /// A blob of any length, copied.
    Bytes(&'v [u8]),
    /// An integer.
    Int(i64),
    /// SQL NULL.
    Null,
}

/// A prepared statement on a connection this thread uses exclusively; finalized on drop.
///
/// Column values borrow from `&self` and [`Statement::step`] takes `&mut self`, so no value
/// read from a row outlives that row (SQLite frees or reuses the buffers on the next step).
pub(super) struct Statement<'h> {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    _handle: std::marker::PhantomData<&'h Handle<'h>>,
}

impl Statement<'_> {
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
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Self {
                db,
                stmt,
                _handle: std::marker::PhantomData,
            }),
            Some(stmt) => {
                // SAFETY: a statement SQLite returned, finalized once, never used after.
                unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
                Err(error(db, rc))
            }
            None if rc == ffi::SQLITE_OK => Err("empty statement".into()),
            None => Err(error(db, rc)),
        }
    }

    pub(super) fn bind_int(&mut self, at: c_int, v: i64) -> Result<(), String> {
        // SAFETY: `self.stmt` is a live statement of `self.db` (see the type's invariant);
        // an out-of-range `at` is reported by SQLite as SQLITE_RANGE.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), at, v) };
        self.check(rc)
    }

    pub(super) fn bind_text(&mut self, at: c_int, v: &str) -> Result<(), String> {
        // SAFETY: SQLITE_TRANSIENT makes SQLite copy `v` before returning, so `v` need not
        // outlive the call.
        unsafe { self.bind_text_with(at, v, ffi::SQLITE_TRANSIENT()) }
    }

    /// # Safety
    ///
    /// With `SQLITE_STATIC`, `v` must stay valid and unchanged until the statement has been
    /// stepped for the last time with this binding; with `SQLITE_TRANSIENT`, none.
    unsafe fn bind_text_with(
        &mut self,
        at: c_int,
        v: &str,
        destructor: ffi::sqlite3_destructor_type,
    ) -> Result<(), String> {
        let len = c_int::try_from(v.len()).map_err(|_| "bound text too long".to_string())?;
        // SAFETY: as in `bind_int`; `v` is valid for `len` bytes, for as long as `destructor`
        // requires (the caller's promise).
        let rc = unsafe {
            ffi::sqlite3_bind_text(self.stmt.as_ptr(), at, v.as_ptr().cast(), len, destructor)
        };
        self.check(rc)
    }

    /// Binds a copy of `v` (`SQLITE_TRANSIENT`).
    pub(super) fn bind_blob(&mut self, at: c_int, v: &[u8]) -> Result<(), String> {
        let len = c_int::try_from(v.len()).map_err(|_| "bound blob too long".to_string())?;
        // SAFETY: as in `bind_int`; `v` is valid for `len` bytes, and SQLITE_TRANSIENT makes
        // SQLite copy it before returning.
        let rc = unsafe {
            ffi::sqlite3_bind_blob(
                self.stmt.as_ptr(),
                at,
                v.as_ptr().cast(),
                len,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.check(rc)
    }

    /// Binds a copy of `v` to parameter `at`.
    pub(super) fn bind(&mut self, at: c_int, v: Bind<'_>) -> Result<(), String> {
        match v {
            Bind::Text(t) => self.bind_text(at, t),
            Bind::Blob16(b) => self.bind_blob(at, &b),
            Bind::Bytes(b) => self.bind_blob(at, b),
            Bind::Int(n) => self.bind_int(at, n),
            Bind::Null => self.bind_null(at),
        }
    }

    pub(super) fn bind_null(&mut self, at: c_int) -> Result<(), String> {
        // SAFETY: as in `bind_int`.
        let rc = unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), at) };
        self.check(rc)
    }

    /// Binds `values` to parameters 1, 2, … (text without a copy), runs the statement to its end
    /// once, and clears every binding again: no borrowed text is bound after the call returns,
    /// which is what makes borrowing safe. For writes (`INSERT`), whose rows are not read.
    pub(super) fn run_once<'v>(
        &mut self,
        values: impl IntoIterator<Item = Bind<'v>>,
    ) -> Result<(), String> {
        let bound = (1..).zip(values).try_for_each(|(at, v)| match v {
            // SAFETY: `t` is borrowed for longer than this call, and the bindings are cleared
            // below before it returns: SQLite reads `t` only in this call's step.
            Bind::Text(t) => unsafe { self.bind_text_with(at, t, ffi::SQLITE_STATIC()) },
            other => self.bind(at, other),
        });
        let stepped = bound.and_then(|()| self.step());
        self.reset();
        // SAFETY: a live statement, not running (just reset).
        unsafe { ffi::sqlite3_clear_bindings(self.stmt.as_ptr()) };
        stepped.map(drop)
    }

    /// Rewinds the statement to run again (its bindings stay).
    pub(super) fn reset(&mut self) {
        // SAFETY: a live statement; the result repeats the last step's, already reported.
        unsafe { ffi::sqlite3_reset(self.stmt.as_ptr()) };
    }

    /// Advances to the next row: `true` when there is one, `false` when done.
    pub(super) fn step(&mut self) -> Result<bool, String> {
        // SAFETY: a live statement on a connection this thread uses exclusively.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(error(self.db, rc)),
        }
    }

    /// Column `col` of the current row as an integer (NULL reads as 0).
    pub(super) fn int(&self, col: c_int) -> i64 {
        // SAFETY: a live statement positioned on a row (only called after `step` returned
        // `true`); an out-of-range column reads as NULL.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), col) }
    }

    /// Column `col` of the current row as text bytes (UTF-8 unless the database holds
    /// otherwise: not checked here), borrowed until the next step; `None` for NULL.
    pub(super) fn text_bytes(&self, col: c_int) -> Result<Option<&[u8]>, String> {
        self.bytes(col, false)
    }

    /// Column `col` of the current row as blob bytes, borrowed until the next step; `None`
    /// for NULL.
    pub(super) fn blob_bytes(&self, col: c_int) -> Result<Option<&[u8]>, String> {
        self.bytes(col, true)
    }

    /// Column `col` as bytes: its text (`blob` false) or blob representation.
    fn bytes(&self, col: c_int, blob: bool) -> Result<Option<&[u8]>, String> {
        let s = self.stmt.as_ptr();
        // SAFETY: as in `int`. The order type → text (or blob) → bytes is the one SQLite
        // documents for reading a value without conversions invalidating the pointer; the
        // pointer is valid for `len` bytes until the statement is stepped, reset or finalized,
        // all of which take `&mut self` (or `self`), so the borrow of `&self` covers its whole life.
        unsafe {
            if ffi::sqlite3_column_type(s, col) == ffi::SQLITE_NULL {
                return Ok(None);
            }
            let p: *const u8 = if blob {
                ffi::sqlite3_column_blob(s, col).cast()
            } else {
                ffi::sqlite3_column_text(s, col)
            };
            let len = ffi::sqlite3_column_bytes(s, col);
            if p.is_null() {
                // Out of memory while converting (or an empty value): SQLite's errcode says.
                let rc = ffi::sqlite3_errcode(self.db.as_ptr());
                if rc == ffi::SQLITE_NOMEM {
                    return Err(error(self.db, rc));
                }
                return Ok(Some(b""));
            }
            Ok(Some(std::slice::from_raw_parts(
                p,
                usize::try_from(len).unwrap_or(0),
            )))
        }
    }

    fn check(&self, rc: c_int) -> Result<(), String> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db, rc))
        }
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and finalized exactly once, here; nothing borrows from
        // it any more (`&mut self`).
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// Whether a SQLite result code (primary or extended) says the database cannot work for now —
/// busy, locked, out of memory, read-only, I/O error, disk full, cannot open — rather than that
/// it refuses what was sent.
pub(super) fn is_outage_code(rc: c_int) -> bool {
    matches!(
        rc & 0xff,
        ffi::SQLITE_BUSY
            | ffi::SQLITE_LOCKED
            | ffi::SQLITE_NOMEM
            | ffi::SQLITE_READONLY
            | ffi::SQLITE_IOERR
            | ffi::SQLITE_FULL
            | ffi::SQLITE_CANTOPEN
    )
}

/// [`is_outage_code`] of a message made by [`error`]; a failure that did not come from a
/// statement (the connection's worker) counts as an outage.
pub(super) fn is_outage_message(message: &str) -> bool {
    message
        .strip_prefix(ERROR_PREFIX)
        .and_then(|rest| rest.split(':').next())
        .and_then(|rc| rc.parse().ok())
        .is_none_or(is_outage_code)
}

const ERROR_PREFIX: &str = "sqlite error ";

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
    format!("{ERROR_PREFIX}{rc}: {msg}")
}
