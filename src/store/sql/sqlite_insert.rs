//! The SQLite writer's inner loop on SQLite's C API, on the writer's own `sqlx` connection.
//!
//! `sqlx` opens, configures and migrates the connection and owns it in its pool; for a batch
//! the writer borrows it, locks the raw handle (`SqliteConnection::lock_handle`, which parks
//! sqlx's worker thread) and, on a blocking thread, runs one transaction: one prepared
//! single-row `INSERT … ON CONFLICT (request_id) DO NOTHING`, bound and stepped per row.
//!
//! Why not `sqlx::query`: every `sqlx` statement is a round trip to the connection's worker
//! thread, and a multi-row `VALUES` list (36 parameters a row, ~900 rows per statement) makes
//! SQLite parse a huge statement and keep a statement journal for it. Binding borrowed text to a
//! prepared statement costs a few hundred nanoseconds a row (issue #4: see ARCHITECTURE.md for
//! the figures).

use std::ffi::{CStr, c_int};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use libsqlite3_sys as ffi;
use sqlx::SqlitePool;

use super::columns::{self, COLUMNS, Value};
use super::unavailable;
use crate::record::ValidRecord;
use crate::store::StoreError;

/// Writes `batch` in one transaction; rows whose `request_id` is already stored are skipped.
/// On any error the transaction is rolled back (nothing of the batch is stored).
#[allow(clippy::vec_box)]
pub(crate) async fn write(
    pool: &SqlitePool,
    batch: Arc<Vec<Box<ValidRecord>>>,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(unavailable)?;
    let rt = tokio::runtime::Handle::current();
    let (conn, result) = tokio::task::spawn_blocking(move || {
        let result = match rt.block_on(conn.lock_handle()) {
            Ok(mut locked) => {
                let db = locked.as_raw_handle();
                // SAFETY: `db` is the open connection sqlx hands out while `locked` is held;
                // its worker thread is parked, so nothing else uses the handle meanwhile, and
                // `insert_batch` leaves no transaction or statement open behind it.
                unsafe { insert_batch(db, &batch) }
            }
            Err(e) => Err(unavailable(e)),
        };
        (conn, result)
    })
    .await
    .map_err(unavailable)?;
    drop(conn);
    result
}

/// # Safety
/// `db` must be an open connection that nothing else uses until this returns.
unsafe fn insert_batch(
    db: NonNull<ffi::sqlite3>,
    batch: &[Box<ValidRecord>],
) -> Result<(), StoreError> {
    let db = db.as_ptr();
    // SAFETY (all calls below): `db` is valid and ours for the duration (caller's contract).
    unsafe { exec(db, c"BEGIN IMMEDIATE") }?;
    let result = (|| {
        let stmt = unsafe { Statement::prepare(db, &insert_one_sql()) }?;
        let mut chain = String::new();
        for r in batch {
            stmt.bind_row(r, &mut chain)?;
            stmt.step()?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => match unsafe { exec(db, c"COMMIT") } {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = unsafe { exec(db, c"ROLLBACK") };
                Err(e)
            }
        },
        Err(e) => {
            let _ = unsafe { exec(db, c"ROLLBACK") };
            Err(e)
        }
    }
}

/// `INSERT INTO request_log (…) VALUES (?1, …, ?36) ON CONFLICT (request_id) DO NOTHING`.
fn insert_one_sql() -> String {
    let mut sql = format!(
        "INSERT INTO request_log ({}) VALUES (",
        columns::column_list()
    );
    for i in 1..=COLUMNS {
        if i > 1 {
            sql.push_str(", ");
        }
        sql.push('?');
        sql.push_str(&i.to_string());
    }
    sql.push_str(") ON CONFLICT (request_id) DO NOTHING");
    sql
}

/// The connection's last error as a [`StoreError`].
///
/// # Safety
/// `db` must be a valid connection.
unsafe fn last_error(db: *mut ffi::sqlite3, what: &str) -> StoreError {
    // SAFETY: sqlite3_errmsg returns a NUL-terminated string owned by the connection, valid
    // until the next call on it; it is copied at once.
    let msg = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) };
    unavailable(format!("sqlite {what}: {}", msg.to_string_lossy()))
}

/// Runs one SQL statement without results.
///
/// # Safety
/// `db` must be a valid connection.
unsafe fn exec(db: *mut ffi::sqlite3, sql: &CStr) -> Result<(), StoreError> {
    // SAFETY: valid connection and NUL-terminated SQL; no callback, no error string wanted.
    let rc = unsafe { ffi::sqlite3_exec(db, sql.as_ptr(), None, ptr::null_mut(), ptr::null_mut()) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(unsafe { last_error(db, &sql.to_string_lossy()) })
    }
}

/// A prepared statement, finalized on drop.
struct Statement {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
}

impl Statement {
    /// # Safety
    /// `db` must be a valid connection that outlives the statement.
    unsafe fn prepare(db: *mut ffi::sqlite3, sql: &str) -> Result<Self, StoreError> {
        let mut stmt = ptr::null_mut();
        let len = c_int::try_from(sql.len()).map_err(unavailable)?;
        // SAFETY: `sql` is valid for `len` bytes; `stmt` receives the statement or NULL.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(db, sql.as_ptr().cast(), len, &mut stmt, ptr::null_mut())
        };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            // SAFETY: finalize accepts NULL.
            unsafe { ffi::sqlite3_finalize(stmt) };
            return Err(unsafe { last_error(db, "prepare") });
        }
        Ok(Self { db, stmt })
    }

    fn check(&self, rc: c_int, what: &str) -> Result<(), StoreError> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            // SAFETY: the connection is valid while the statement lives.
            Err(unsafe { last_error(self.db, what) })
        }
    }

    /// Binds borrowed text as `SQLITE_STATIC`: the caller keeps it alive and unchanged until
    /// the statement has been stepped.
    fn text(&self, i: c_int, v: Option<&str>) -> Result<(), StoreError> {
        let rc = match v {
            // SAFETY: the statement is valid; `s` outlives the step that reads it (every row
            // is bound from the batch, which outlives the loop, or from `chain`, which is
            // rewritten only after the step).
            Some(s) => unsafe {
                ffi::sqlite3_bind_text(
                    self.stmt,
                    i,
                    s.as_ptr().cast(),
                    c_int::try_from(s.len()).map_err(unavailable)?,
                    ffi::SQLITE_STATIC(),
                )
            },
            // SAFETY: the statement is valid.
            None => unsafe { ffi::sqlite3_bind_null(self.stmt, i) },
        };
        self.check(rc, "bind")
    }

    fn int(&self, i: c_int, v: Option<i64>) -> Result<(), StoreError> {
        // SAFETY: the statement is valid.
        let rc = unsafe {
            match v {
                Some(v) => ffi::sqlite3_bind_int64(self.stmt, i, v),
                None => ffi::sqlite3_bind_null(self.stmt, i),
            }
        };
        self.check(rc, "bind")
    }

    /// Binds one record (`chain`: a buffer for its provider chain's JSON text).
    fn bind_row(&self, r: &ValidRecord, chain: &mut String) -> Result<(), StoreError> {
        columns::provider_chain(r, chain);
        for (i, v) in (1..).zip(columns::values(r, chain)) {
            match v {
                Value::Text(t) => self.text(i, t)?,
                Value::Int8(n) => self.int(i, n)?,
                Value::Bool(b) => self.int(i, Some(i64::from(b)))?,
            }
        }
        Ok(())
    }

    /// Runs the bound row and resets the statement for the next one.
    fn step(&self) -> Result<(), StoreError> {
        // SAFETY: the statement is valid and fully bound.
        let rc = unsafe { ffi::sqlite3_step(self.stmt) };
        // The message is read before the reset, which may replace it.
        let result = if rc == ffi::SQLITE_DONE {
            Ok(())
        } else {
            Err(unsafe { last_error(self.db, "insert") })
        };
        // SAFETY: as above; reset keeps the bindings, which the next row overwrites.
        unsafe { ffi::sqlite3_reset(self.stmt) };
        result
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared on `db` and is finalized exactly once.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use sqlx::Row;
    use sqlx::migrate::Migrator;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;
    use crate::price::PriceTable;
    use crate::record::{Event, Validation, parse_event};

    fn record(json: Value) -> Box<ValidRecord> {
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: crate::pipeline::now_ms(),
            prices: &prices,
        };
        match parse_event(&json.to_string(), &v).expect("valid") {
            Event::Finish(r) => r,
            Event::Start(_) => panic!("not a start marker"),
        }
    }

    async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("log.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .expect("open");
        Migrator::new(super::super::Embedded(super::super::SQLITE_MIGRATIONS))
            .await
            .expect("migrations")
            .run(&pool)
            .await
            .expect("migrate");
        pool
    }

    #[tokio::test]
    async fn text_nulls_and_numbers_are_stored_as_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        let full = record(json!({
            "request_id": "r-1", "timestamp": 1_700_000_000_123_i64, "namespace": "ns",
            "user": "Zoë \"quoted\", =SUM(1)", "key": "k\u{1F600}", "provider": "anthropic",
            "model": "claude", "status": 529, "duration_ms": 1234, "ttfb_ms": 56,
            "input_tokens": 1, "output_tokens": 2, "cache_creation_5m_tokens": 3,
            "cache_creation_1h_tokens": 4, "cache_read_tokens": 5, "cost_usd": 99_999.123457, "session_id": "s", "retry_count": 2,
            "provider_chain": ["p1", "p2"], "error": "überlastet\nline 2"
        }));
        let bare = record(json!({"timestamp": 1_700_000_000_000_i64, "model": "m",
                                 "status": 200, "duration_ms": 1}));
        write(&pool, Arc::new(vec![full, bare]))
            .await
            .expect("write");
        let rows = sqlx::query(
            "SELECT request_id, ts_ms, user_ref, key_name, status, ttfb_ms, cache_read_tokens, \
             cost_micros, provider_chain, error, session_id, messages_count \
             FROM request_log ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("read");
        let r = &rows[0];
        assert_eq!(r.get::<String, _>("request_id"), "r-1");
        assert_eq!(r.get::<i64, _>("ts_ms"), 1_700_000_000_123);
        assert_eq!(r.get::<String, _>("user_ref"), "Zoë \"quoted\", =SUM(1)");
        assert_eq!(r.get::<String, _>("key_name"), "k\u{1F600}");
        assert_eq!(r.get::<i64, _>("status"), 529);
        assert_eq!(r.get::<Option<i64>, _>("ttfb_ms"), Some(56));
        assert_eq!(r.get::<i64, _>("cache_read_tokens"), 5);
        assert_eq!(r.get::<i64, _>("cost_micros"), 99_999_123_457);
        assert_eq!(r.get::<String, _>("provider_chain"), r#"["p1","p2"]"#);
        assert_eq!(r.get::<String, _>("error"), "überlastet\nline 2");
        let r = &rows[1];
        assert_eq!(r.get::<Option<String>, _>("request_id"), None);
        assert_eq!(r.get::<Option<String>, _>("user_ref"), None);
        assert_eq!(r.get::<Option<i64>, _>("ttfb_ms"), None);
        assert_eq!(r.get::<Option<String>, _>("session_id"), None);
        assert_eq!(r.get::<String, _>("provider_chain"), "[]");
    }

    #[tokio::test]
    async fn a_failing_row_rolls_back_its_whole_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir).await;
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON request_log WHEN NEW.request_id = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
        )
        .execute(&pool)
        .await
        .expect("trigger");
        let r = |id: &str| {
            record(json!({"request_id": id, "model": "m", "status": 200, "duration_ms": 1}))
        };
        let err = write(&pool, Arc::new(vec![r("a"), r("boom"), r("c")]))
            .await
            .expect_err("the trigger refuses a row");
        assert!(err.to_string().contains("refused by test"), "{err}");
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM request_log")
                .fetch_one(&pool)
                .await
                .expect("count")
        };
        assert_eq!(count().await, 0, "nothing of the failed batch is kept");
        // The connection is usable again (no transaction left open), and ids stay unique.
        write(&pool, Arc::new(vec![r("a"), r("c"), r("a")]))
            .await
            .expect("write");
        write(&pool, Arc::new(vec![r("c")])).await.expect("write");
        assert_eq!(count().await, 2);
    }
}
