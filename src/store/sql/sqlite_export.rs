//! The SQLite side of a usage export: the SELECT is prepared and stepped through SQLite's C
//! API on one of sqlx's pooled connections, on a blocking thread, and every row is handed to
//! the encoder as text borrowed from SQLite's own row buffer.
//!
//! Through sqlx, SQLite runs on the connection's worker thread, which copies every value of
//! every row (`sqlite3_value_dup`) and sends each row over a channel to the async side, where
//! it is decoded with type checks and freed: that per-row allocation and hand-off was most of
//! an export's time. Here nothing is allocated per row.
//!
//! The connection and its statement come from `sqlite_raw.rs`.

use std::ffi::c_int;

use bytes::Bytes;
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::query::{
    ExportEnd, Exported, LogFilter, Param, RowEncoder, USAGE_COLUMNS, UsageRow, filter_terms,
};
use super::sqlite_raw::{Statement, with_handle};
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
    let conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return Ok(failed(encoder, e.to_string())),
    };
    let (sql, params) = export_sql(filter);
    let params: Vec<Owned> = params.into_iter().map(Owned::from).collect();
    with_handle(conn, move |db| {
        let db = match db {
            Ok(db) => db,
            Err(e) => return failed(encoder, e),
        };
        match db.prepare(&sql) {
            Ok(stmt) => run(stmt, &params, limit, encoder, &out),
            Err(e) => failed(encoder, e),
        }
    })
    .await
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
    mut stmt: Statement<'_>,
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
fn usage_row<'s>(s: &'s Statement<'_>) -> Result<UsageRow<'s>, String> {
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
