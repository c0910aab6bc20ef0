//! The SQLite side of a usage export: the SELECT is prepared and stepped through SQLite's C
//! API on one of sqlx's pooled connections, on a blocking thread, and every row's values are
//! copied straight out of SQLite's row buffer into a batch; a task on the runtime encodes the
//! batches and sends the chunks on.
//!
//! Through sqlx, SQLite runs on the connection's worker thread, which copies every value of
//! every row (`sqlite3_value_dup`) and sends each row over a channel to the async side, where
//! it is decoded with type checks and freed: that per-row allocation and hand-off was most of
//! an export's time. Here nothing is allocated per row.
//!
//! Split in two, because stepping SQLite (its B-trees, the table lookup of every row found in
//! the time index) and encoding CSV cost about the same, and one thread doing both kept one
//! core busy while the other waited for it. Batches of [`BATCH_ROWS`] rows, at most
//! [`BATCHES_QUEUED`] on their way: memory stays constant.
//!
//! The connection and its statement come from `sqlite_raw.rs`.

use std::ffi::c_int;
use std::ops::Range;

use bytes::Bytes;
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::query::{
    ExportEnd, Exported, LogFilter, Param, RowEncoder, USAGE_COLUMN_COUNT, USAGE_COLUMNS,
    USAGE_INT_COLUMNS, USAGE_TEXT_COLUMNS, UsageRow, filter_terms,
};
use super::sqlite_raw::{Statement, with_handle};
use super::sqlite_read::{Owned, bind_all};
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
    let (tx, rx) = mpsc::channel::<Batch>(BATCHES_QUEUED);
    let encoding = tokio::spawn(async move { encode(rx, encoder, &out).await });
    let read_end = with_handle(conn, move |db| {
        let db = db?;
        let stmt = db.prepare(&sql)?;
        read(stmt, &params, limit, &tx)
    })
    .await;
    let exported = match encoding.await {
        Ok(exported) => exported,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => return Err(super::unavailable(e)),
    };
    // The encoder's end first: when it stopped early (the client went away, a row it could not
    // encode) the reader only saw its batches refused.
    let end = match (exported.end, read_end?) {
        (ExportEnd::Done, Err(e)) => ExportEnd::Failed(e),
        (end, _) => end,
    };
    Ok(Exported { end, ..exported })
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

/// Rows per batch handed from the reading thread to the encoding one.
const BATCH_ROWS: usize = 256;
/// Batches filled and not yet encoded, at most.
const BATCHES_QUEUED: usize = 2;

/// The text columns of `SELECT USAGE_COLUMNS` ([`UsageRow`]'s field order), as SQLite
/// numbers them.
const TEXT_COLUMNS: [c_int; 7] = columns(USAGE_TEXT_COLUMNS);
/// Its integer columns.
const INT_COLUMNS: [c_int; 10] = columns(USAGE_INT_COLUMNS);

/// Column indexes as SQLite's C API takes them (all are below [`USAGE_COLUMN_COUNT`]).
const fn columns<const N: usize>(cols: [usize; N]) -> [c_int; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        assert!(cols[i] < USAGE_COLUMN_COUNT);
        out[i] = cols[i] as c_int;
        i += 1;
    }
    out
}

/// Rows copied out of SQLite: every text value's bytes in one buffer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    rows: Vec<Copied>,
}

/// One row of a [`Batch`]: [`INT_COLUMNS`]' values, and where [`TEXT_COLUMNS`]' values are in
/// the batch's bytes (`None`: NULL).
struct Copied {
    ints: [i64; INT_COLUMNS.len()],
    texts: [Option<Range<usize>>; TEXT_COLUMNS.len()],
}

/// Binds and steps; copies rows into batches and sends them to [`encode`]. On a blocking
/// thread. `Err` when SQLite failed; `Ok` also when the encoder stopped taking batches.
fn read(
    mut stmt: Statement<'_>,
    params: &[Owned],
    limit: i64,
    tx: &mpsc::Sender<Batch>,
) -> Result<(), String> {
    let at = bind_all(&mut stmt, params)?;
    stmt.bind_int(at + 1, limit)?;
    let mut batch = Batch::default();
    loop {
        let more = stmt.step()?;
        if more {
            let mut texts: [Option<Range<usize>>; TEXT_COLUMNS.len()] = Default::default();
            for (slot, col) in texts.iter_mut().zip(TEXT_COLUMNS) {
                if let Some(v) = stmt.text_bytes(col)? {
                    let start = batch.bytes.len();
                    batch.bytes.extend_from_slice(v);
                    *slot = Some(start..batch.bytes.len());
                }
            }
            batch.rows.push(Copied {
                ints: INT_COLUMNS.map(|col| stmt.int(col)),
                texts,
            });
        }
        if (batch.rows.len() == BATCH_ROWS || !more) && !batch.rows.is_empty() {
            let full = std::mem::take(&mut batch);
            batch.rows.reserve(BATCH_ROWS);
            batch.bytes.reserve(full.bytes.len());
            if tx.blocking_send(full).is_err() {
                return Ok(());
            }
        }
        if !more {
            return Ok(());
        }
    }
}

/// Encodes the batches [`read`] sends, until it is done; sends each full chunk to `out`. A
/// task on the runtime: a batch is a short burst of work (~0.1 ms).
async fn encode<E: RowEncoder>(
    mut rx: mpsc::Receiver<Batch>,
    mut encoder: E,
    out: &mpsc::Sender<Bytes>,
) -> Exported<E> {
    let mut rows = 0u64;
    let end = 'batches: loop {
        let Some(batch) = rx.recv().await else {
            break ExportEnd::Done;
        };
        for copied in &batch.rows {
            let chunk = match usage_row(&batch.bytes, copied) {
                Ok(row) => encoder.row(&row),
                Err(e) => break 'batches ExportEnd::Failed(e),
            };
            rows += 1;
            match chunk.map_err(|e| e.to_string()) {
                Ok(None) => {}
                Ok(Some(c)) => {
                    if out.send(c).await.is_err() {
                        break 'batches ExportEnd::ReceiverGone;
                    }
                }
                Err(e) => break 'batches ExportEnd::Failed(e),
            }
        }
    };
    Exported { encoder, rows, end }
}

/// A copied row as the encoder takes it.
fn usage_row<'b>(bytes: &'b [u8], row: &Copied) -> Result<UsageRow<'b>, String> {
    let mut texts: [Option<&str>; TEXT_COLUMNS.len()] = [None; TEXT_COLUMNS.len()];
    for ((text, range), col) in texts.iter_mut().zip(&row.texts).zip(TEXT_COLUMNS) {
        if let Some(r) = range {
            *text = Some(
                std::str::from_utf8(&bytes[r.clone()])
                    .map_err(|e| format!("column {col} is not UTF-8: {e}"))?,
            );
        }
    }
    let [
        user,
        key,
        provider,
        model,
        original_model,
        endpoint,
        session_id,
    ] = texts;
    let [ts, status, t0, t1, t2, t3, t4, cost, duration, retry] = row.ints;
    Ok(UsageRow {
        timestamp_ms: ts,
        user,
        key,
        provider: provider.unwrap_or_default(),
        model: model.unwrap_or_default(),
        original_model,
        endpoint: endpoint.unwrap_or_default(),
        status,
        tokens: [t0, t1, t2, t3, t4],
        cost_micros: cost,
        duration_ms: duration,
        session_id,
        retry_count: retry,
    })
}
